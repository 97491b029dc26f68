//! What `ces test` makes of the packets a container sends when its only
//! route leads to ces: a stub DNS that answers every `A` query with an
//! address of its own (from 198.18.0.0/15, the benchmarking range, so that a
//! later connection can be named), an immediate refusal of every connection
//! (TCP reset, ICMP port or host unreachable), and a record of each attempt.
//!
//! Nothing here forwards a packet anywhere: the replies are built from the
//! packets themselves, and the container experiences a network that fails
//! at once, as the TRE's does (with a name resolving first).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The container's address on the observed interface.
pub const CONTAINER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// Its IPv6 address (unique local), so that IPv6 attempts are routed and seen too.
pub const CONTAINER_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xce5, 0, 0, 0, 0, 0, 0x100);
/// The stub resolver's address (the container's `resolv.conf` names it; a
/// query to any other address on port 53 is answered too).
pub const RESOLVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The first address handed out for a name.
const FIRST_NAME_ADDR: u32 = u32::from_be_bytes([198, 18, 0, 1]);
/// One past the last (198.19.255.255 is the range's broadcast).
const END_NAME_ADDR: u32 = u32::from_be_bytes([198, 19, 255, 255]);
/// Distinct attempts kept (a program in a retry loop must not exhaust memory).
const MAX_ATTEMPTS: usize = 1000;

/// One kind of network attempt and how often it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// What was tried.
    #[serde(flatten)]
    pub what: AttemptKind,
    /// How many times (retries and repeated queries included).
    pub count: u32,
}

/// A DNS query or a connection attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttemptKind {
    /// A name looked up.
    Dns {
        /// The name asked, lower case, without the final dot.
        name: String,
        /// The query types asked (`A`, `AAAA`, or the number), first asked first.
        queries: Vec<String>,
    },
    /// A connection (TCP), a datagram (UDP) or another packet to an address.
    Connect {
        /// `tcp`, `udp`, `icmp`, or `ip-proto-N`.
        protocol: String,
        /// The address the packet went to.
        address: IpAddr,
        /// The port (TCP and UDP).
        port: Option<u16>,
        /// The name that resolved to `address`, when the stub answered it.
        name: Option<String>,
    },
}

impl std::fmt::Display for AttemptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptKind::Dns { name, queries } => write!(f, "looked up {name} ({})", queries.join(", ")),
            AttemptKind::Connect { protocol, address, port, name } => {
                let host = match (name, address) {
                    (Some(name), _) => name.clone(),
                    (None, IpAddr::V6(v6)) if port.is_some() => format!("[{v6}]"),
                    (None, address) => address.to_string(),
                };
                match port {
                    Some(port) => write!(f, "tried to reach {host}:{port} ({protocol})")?,
                    None => write!(f, "sent {protocol} to {host}")?,
                }
                if name.is_some() {
                    write!(f, " [{address} given by the stub resolver]")?;
                }
                Ok(())
            }
        }
    }
}

/// The stub: answers and records.
#[derive(Debug, Default)]
pub struct Stub {
    names: BTreeMap<String, Ipv4Addr>,
    addresses: BTreeMap<IpAddr, String>,
    attempts: Vec<Attempt>,
    /// Where each attempt is in `attempts`: DNS by name, the rest by all
    /// their fields.
    index: HashMap<String, usize>,
    /// Attempts not kept once [`MAX_ATTEMPTS`] distinct ones were.
    pub dropped: u64,
}

impl Stub {
    /// A stub that has seen nothing.
    pub fn new() -> Stub {
        Stub::default()
    }

    /// The attempts, first seen first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.clone()
    }

    fn record(&mut self, what: AttemptKind) {
        let key = match &what {
            AttemptKind::Dns { name, .. } => format!("dns {name}"),
            AttemptKind::Connect { protocol, address, port, .. } => format!("{protocol} {address} {port:?}"),
        };
        if let Some(&at) = self.index.get(&key) {
            let attempt = &mut self.attempts[at];
            attempt.count = attempt.count.saturating_add(1);
            if let (AttemptKind::Dns { queries, .. }, AttemptKind::Dns { queries: new, .. }) = (&mut attempt.what, what)
            {
                for query in new {
                    if !queries.contains(&query) {
                        queries.push(query);
                    }
                }
            }
        } else if self.attempts.len() < MAX_ATTEMPTS {
            self.index.insert(key, self.attempts.len());
            self.attempts.push(Attempt { what, count: 1 });
        } else {
            self.dropped += 1;
        }
    }

    /// The address handed out for `name` (the same one each time).
    fn address_for(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(address) = self.names.get(name) {
            return Some(*address);
        }
        let next = FIRST_NAME_ADDR.checked_add(u32::try_from(self.names.len()).ok()?)?;
        if next >= END_NAME_ADDR {
            return None;
        }
        let address = Ipv4Addr::from(next);
        self.names.insert(name.to_owned(), address);
        self.addresses.insert(IpAddr::V4(address), name.to_owned());
        Some(address)
    }

    /// Takes one IP packet (v4 or v6) the container sent; returns the
    /// reply to give it, if any.
    pub fn handle(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        let ip = Ip::parse(packet)?;
        if ip.destination.is_multicast() || ip.protocol == IGMP || !ip.first_fragment {
            // Group membership and neighbour discovery are the kernel's own;
            // later fragments: the first one was recorded and answered.
            return None;
        }
        if ip.protocol == TCP {
            return self.tcp(&ip);
        }
        if ip.protocol == UDP {
            return self.udp(&ip);
        }
        let echo = match ip.destination {
            IpAddr::V4(_) if ip.protocol == ICMP => Some(ICMP_ECHO_REQUEST),
            IpAddr::V6(_) if ip.protocol == ICMPV6 => Some(ICMPV6_ECHO_REQUEST),
            _ => None,
        };
        match echo {
            // Echo requests (ping): host unreachable. Other ICMP: nothing.
            Some(request) if ip.payload.first() == Some(&request) => {
                self.record_connect("icmp", ip.destination, None);
                Some(unreachable(&ip, Unreachable::Host))
            }
            Some(_) => None,
            None => {
                self.record_connect(&format!("ip-proto-{}", ip.protocol), ip.destination, None);
                Some(unreachable(&ip, Unreachable::Protocol))
            }
        }
    }

    fn record_connect(&mut self, protocol: &str, address: IpAddr, port: Option<u16>) {
        let name = self.addresses.get(&address).cloned();
        self.record(AttemptKind::Connect { protocol: protocol.to_owned(), address, port, name });
    }

    fn tcp(&mut self, ip: &Ip<'_>) -> Option<Vec<u8>> {
        let tcp = ip.payload;
        if tcp.len() < 20 {
            return None;
        }
        let destination_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        let flags = tcp[13];
        if flags & TCP_RST != 0 {
            return None;
        }
        // A SYN is a connection attempt; anything else (there should be
        // nothing else) is reset as well, without being counted.
        let (reply_seq, reply_ack, reply_flags) = if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
            self.record_connect("tcp", ip.destination, Some(destination_port));
            (0, seq.wrapping_add(1), TCP_RST | TCP_ACK)
        } else {
            (ack, 0, TCP_RST)
        };
        let header = [5 << 4, reply_flags, 0, 0, 0, 0, 0, 0];
        Some(reply_to(ip, TCP, &[&reply_seq.to_be_bytes(), &reply_ack.to_be_bytes(), &header], 16))
    }

    fn udp(&mut self, ip: &Ip<'_>) -> Option<Vec<u8>> {
        let udp = ip.payload;
        if udp.len() < 8 {
            return None;
        }
        let destination_port = u16::from_be_bytes([udp[2], udp[3]]);
        let length = usize::from(u16::from_be_bytes([udp[4], udp[5]])).clamp(8, udp.len());
        if destination_port == DNS_PORT
            && let Some(answer) = self.dns(&udp[8..length])
        {
            let total = u16::try_from(8 + answer.len()).ok()?;
            return Some(reply_to(ip, UDP, &[&total.to_be_bytes(), &[0, 0], &answer], 6));
        }
        self.record_connect("udp", ip.destination, Some(destination_port));
        Some(unreachable(ip, Unreachable::Port))
    }

    /// Answers a DNS query: `A` with the name's own address, anything else
    /// with no data. `None` for what is not a query.
    fn dns(&mut self, message: &[u8]) -> Option<Vec<u8>> {
        if message.len() < 12 || message[2] & 0x80 != 0 {
            return None;
        }
        let opcode = (message[2] >> 3) & 0x0f;
        let questions = u16::from_be_bytes([message[4], message[5]]);
        if opcode != 0 || questions != 1 {
            return Some(dns_reply_header(message, DNS_NOT_IMPLEMENTED, 0));
        }
        let (labels, end) = parse_question_name(message)?;
        let qtype = u16::from_be_bytes([*message.get(end)?, *message.get(end + 1)?]);
        let question = message.get(12..end + 4)?;
        let name = labels.join(".").to_ascii_lowercase();
        let query = match qtype {
            1 => "A".to_owned(),
            28 => "AAAA".to_owned(),
            other => other.to_string(),
        };
        self.record(AttemptKind::Dns { name: name.clone(), queries: vec![query] });
        let address = if qtype == 1 && !name.is_empty() { self.address_for(&name) } else { None };
        let mut reply = dns_reply_header(message, 0, u16::from(address.is_some()));
        reply.extend_from_slice(question);
        if let Some(address) = address {
            // The name by pointer to the question, IN A, a short TTL.
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
            reply.extend_from_slice(&address.octets());
        }
        Some(reply)
    }
}

const ICMP: u8 = 1;
const IGMP: u8 = 2;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const DNS_PORT: u16 = 53;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const DNS_NOT_IMPLEMENTED: u8 = 4;
/// The most of an offending packet an ICMPv6 error quotes (1280, the
/// minimum MTU, less the error's own headers).
const ICMPV6_QUOTE: usize = 1280 - 40 - 8;

/// What an ICMP error says is unreachable.
#[derive(Debug, Clone, Copy)]
enum Unreachable {
    Host,
    Protocol,
    Port,
}

/// The header fields of an IPv4 or IPv6 packet that ces needs, and its payload.
struct Ip<'a> {
    /// The whole header (quoted by ICMP errors) or, for IPv6, the packet.
    quoted: &'a [u8],
    protocol: u8,
    source: IpAddr,
    destination: IpAddr,
    first_fragment: bool,
    payload: &'a [u8],
}

impl<'a> Ip<'a> {
    fn parse(packet: &'a [u8]) -> Option<Ip<'a>> {
        match packet.first()? >> 4 {
            4 => Ip::parse_v4(packet),
            6 => Ip::parse_v6(packet),
            _ => None,
        }
    }

    fn parse_v4(packet: &'a [u8]) -> Option<Ip<'a>> {
        if packet.len() < 20 {
            return None;
        }
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
        if header_len < 20 || total < header_len {
            return None;
        }
        let octets = |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
        Some(Ip {
            quoted: &packet[..header_len],
            protocol: packet[9],
            source: IpAddr::V4(octets(12)),
            destination: IpAddr::V4(octets(16)),
            first_fragment: u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff == 0,
            payload: &packet[header_len..total],
        })
    }

    /// IPv6 with no extension headers (what a program's socket sends; a
    /// packet with them is taken as its first header's protocol).
    fn parse_v6(packet: &'a [u8]) -> Option<Ip<'a>> {
        if packet.len() < 40 {
            return None;
        }
        let total = (40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]))).min(packet.len());
        let address = |at: usize| {
            let bytes: [u8; 16] = packet[at..at + 16].try_into().unwrap_or([0; 16]);
            IpAddr::V6(Ipv6Addr::from(bytes))
        };
        Some(Ip {
            quoted: &packet[..total.min(ICMPV6_QUOTE)],
            protocol: packet[6],
            source: address(8),
            destination: address(24),
            first_fragment: true,
            payload: &packet[40..total],
        })
    }
}

/// A TCP or UDP reply to `ip`, from its destination: the ports of its
/// segment swapped, then `rest`, with the checksum written at `checksum_at`.
fn reply_to(ip: &Ip<'_>, protocol: u8, rest: &[&[u8]], checksum_at: usize) -> Vec<u8> {
    let mut segment = Vec::with_capacity(4 + rest.iter().map(|part| part.len()).sum::<usize>());
    segment.extend_from_slice(&ip.payload[2..4]);
    segment.extend_from_slice(&ip.payload[..2]);
    for part in rest {
        segment.extend_from_slice(part);
    }
    let sum = match transport_checksum(ip.destination, ip.source, protocol, &segment) {
        // A zero UDP checksum means "none": a computed zero is sent as all ones.
        0 if protocol == UDP => 0xffff,
        sum => sum,
    };
    segment[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    ip_packet(ip.destination, ip.source, protocol, &segment)
}

/// An ICMP (v4) or ICMPv6 destination-unreachable reply to `ip`, from its
/// destination.
fn unreachable(ip: &Ip<'_>, what: Unreachable) -> Vec<u8> {
    let (protocol, kind, code) = match (ip.destination, what) {
        (IpAddr::V4(_), Unreachable::Host) => (ICMP, 3, 1),
        (IpAddr::V4(_), Unreachable::Protocol) => (ICMP, 3, 2),
        (IpAddr::V4(_), Unreachable::Port) => (ICMP, 3, 3),
        (IpAddr::V6(_), Unreachable::Host) => (ICMPV6, 1, 3),
        // A parameter problem at the next-header field is IPv6's
        // "protocol unreachable"; pointer 6.
        (IpAddr::V6(_), Unreachable::Protocol) => (ICMPV6, 4, 1),
        (IpAddr::V6(_), Unreachable::Port) => (ICMPV6, 1, 4),
    };
    let mut message = vec![kind, code, 0, 0, 0, 0, 0, 0];
    if protocol == ICMPV6 && kind == 4 {
        message[7] = 6;
    }
    message.extend_from_slice(ip.quoted);
    if protocol == ICMP {
        message.extend_from_slice(&ip.payload[..ip.payload.len().min(8)]);
    }
    let sum = match protocol {
        ICMP => checksum(&[&message]),
        _ => transport_checksum(ip.destination, ip.source, ICMPV6, &message),
    };
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    ip_packet(ip.destination, ip.source, protocol, &message)
}

/// An IP packet around `payload` (both addresses of one family).
fn ip_packet(source: IpAddr, destination: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(40 + payload.len());
    match (source, destination) {
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(u16::MAX).to_be_bytes());
            packet.extend_from_slice(&[protocol, 64]);
            packet.extend_from_slice(&source.octets());
            packet.extend_from_slice(&destination.octets());
        }
        _ => {
            let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&total.to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
            packet.extend_from_slice(&octets(source));
            packet.extend_from_slice(&octets(destination));
            let sum = checksum(&[&packet]);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
        }
    }
    packet.extend_from_slice(payload);
    packet
}

fn octets(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The TCP/UDP/ICMPv6 checksum over the pseudo-header (IPv4's or IPv6's)
/// and `segment`.
fn transport_checksum(source: IpAddr, destination: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let (source, destination) = (octets(source), octets(destination));
    if source.len() == 16 {
        let length = u32::try_from(segment.len()).unwrap_or(u32::MAX).to_be_bytes();
        let pseudo = [length[0], length[1], length[2], length[3], 0, 0, 0, protocol];
        return checksum(&[&source, &destination, &pseudo, segment]);
    }
    let length = u16::try_from(segment.len()).unwrap_or(u16::MAX).to_be_bytes();
    let pseudo = [0, protocol, length[0], length[1]];
    checksum(&[&source, &destination, &pseudo, segment])
}

/// The labels of the question's name and the offset just after it. Queries
/// carry no compression; a pointer or a bad length ends the parse.
fn parse_question_name(message: &[u8]) -> Option<(Vec<String>, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            return Some((labels, at));
        }
        if len > 63 || labels.len() > 127 {
            return None;
        }
        let label = message.get(at..at + len)?;
        labels.push(label.iter().map(|&b| if b.is_ascii_graphic() { char::from(b) } else { '?' }).collect());
        at += len;
    }
}

/// A reply header for `query` with `rcode` and `answers` answer records
/// (recursion desired copied, recursion available set).
fn dns_reply_header(query: &[u8], rcode: u8, answers: u16) -> Vec<u8> {
    let mut header = Vec::with_capacity(512);
    header.extend_from_slice(&query[..2]);
    header.push(0x80 | (query[2] & 0x79));
    header.push(0x80 | rcode);
    let questions = if rcode == 0 { 1u16 } else { 0 };
    header.extend_from_slice(&questions.to_be_bytes());
    header.extend_from_slice(&answers.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    header
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts` (each
/// but the last of even length).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for pair in &mut chunks {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(u16::from_be_bytes([*last, 0]));
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CONTAINER: IpAddr = IpAddr::V4(CONTAINER_ADDR);
    const CONTAINER6: IpAddr = IpAddr::V6(CONTAINER_ADDR6);

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn from(destination: IpAddr) -> IpAddr {
        if destination.is_ipv4() { CONTAINER } else { CONTAINER6 }
    }

    fn udp_packet(destination: IpAddr, port: u16, payload: &[u8]) -> Vec<u8> {
        let mut datagram = vec![0x9c, 0x40];
        datagram.extend_from_slice(&port.to_be_bytes());
        datagram.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(payload);
        let sum = transport_checksum(from(destination), destination, UDP, &datagram);
        datagram[6..8].copy_from_slice(&sum.to_be_bytes());
        ip_packet(from(destination), destination, UDP, &datagram)
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut message = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            message.push(u8::try_from(label.len()).unwrap());
            message.extend_from_slice(label.as_bytes());
        }
        message.push(0);
        message.extend_from_slice(&qtype.to_be_bytes());
        message.extend_from_slice(&[0, 1]);
        message
    }

    fn syn(destination: IpAddr, port: u16) -> Vec<u8> {
        let mut segment = vec![0xa0, 0x00];
        segment.extend_from_slice(&port.to_be_bytes());
        segment.extend_from_slice(&1000u32.to_be_bytes());
        segment.extend_from_slice(&[0, 0, 0, 0, 5 << 4, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]);
        let sum = transport_checksum(from(destination), destination, TCP, &segment);
        segment[16..18].copy_from_slice(&sum.to_be_bytes());
        ip_packet(from(destination), destination, TCP, &segment)
    }

    /// A reply, parsed; for IPv4 its header checksum is checked (a packet
    /// with a correct checksum sums, with it, to zero).
    fn valid_ip(packet: &[u8]) -> Ip<'_> {
        let ip = Ip::parse(packet).unwrap();
        if ip.source.is_ipv4() {
            assert_eq!(checksum(&[ip.quoted]), 0, "IP header checksum");
        }
        ip
    }

    #[test]
    fn a_query_is_answered_and_the_later_connection_named() {
        let mut stub = Stub::new();
        let resolver = IpAddr::V4(RESOLVER_ADDR);
        let reply = stub.handle(&udp_packet(resolver, 53, &query("HuggingFace.co", 1))).unwrap();
        let ip = valid_ip(&reply);
        assert_eq!((ip.source, ip.destination, ip.protocol), (resolver, CONTAINER, UDP));
        assert_eq!(transport_checksum(ip.source, ip.destination, UDP, ip.payload), 0, "UDP checksum");
        assert_eq!(&ip.payload[..4], &[0, 53, 0x9c, 0x40], "from port 53 back to the asking port");
        let dns = &ip.payload[8..];
        assert_eq!(&dns[..2], &[0x12, 0x34]);
        assert_eq!(dns[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([dns[6], dns[7]]), 1, "one answer");
        assert_eq!(&dns[dns.len() - 4..], &[198, 18, 0, 1]);

        let aaaa = stub.handle(&udp_packet(resolver, 53, &query("huggingface.co", 28))).unwrap();
        let dns = &Ip::parse(&aaaa).unwrap().payload[8..];
        assert_eq!(u16::from_be_bytes([dns[6], dns[7]]), 0, "no AAAA data");

        let reset = stub.handle(&syn(v4(198, 18, 0, 1), 443)).unwrap();
        let ip = valid_ip(&reset);
        assert_eq!(transport_checksum(ip.source, ip.destination, TCP, ip.payload), 0, "TCP checksum");
        assert_eq!(&ip.payload[..4], &[1, 187, 0xa0, 0x00], "from port 443 back to the connecting port");
        assert_eq!(ip.payload[13], TCP_RST | TCP_ACK);
        assert_eq!(u32::from_be_bytes(ip.payload[8..12].try_into().unwrap()), 1001);

        let attempts = stub.attempts();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].what.to_string(), "looked up huggingface.co (A, AAAA)");
        assert_eq!(attempts[0].count, 2);
        assert_eq!(
            attempts[1].what.to_string(),
            "tried to reach huggingface.co:443 (tcp) [198.18.0.1 given by the stub resolver]"
        );
    }

    #[test]
    fn literal_addresses_udp_and_ping_are_refused_and_counted() {
        let mut stub = Stub::new();
        let target = v4(1, 1, 1, 1);
        for _ in 0..3 {
            stub.handle(&syn(target, 80)).unwrap();
        }
        let unreachable = stub.handle(&udp_packet(target, 123, b"ntp")).unwrap();
        let ip = valid_ip(&unreachable);
        assert_eq!((ip.protocol, ip.payload[0], ip.payload[1]), (ICMP, 3, 3));
        assert_eq!(checksum(&[ip.payload]), 0, "ICMP checksum");
        let mut ping = vec![ICMP_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1];
        let sum = checksum(&[&ping]);
        ping[2..4].copy_from_slice(&sum.to_be_bytes());
        assert!(stub.handle(&ip_packet(CONTAINER, target, ICMP, &ping)).is_some());

        let shown: Vec<String> = stub.attempts().iter().map(|a| format!("{} x{}", a.what, a.count)).collect();
        assert_eq!(
            shown,
            ["tried to reach 1.1.1.1:80 (tcp) x3", "tried to reach 1.1.1.1:123 (udp) x1", "sent icmp to 1.1.1.1 x1"]
        );
    }

    #[test]
    fn ipv6_attempts_are_refused_and_counted_and_neighbour_discovery_ignored() {
        let mut stub = Stub::new();
        let target: IpAddr = "2001:db8::10".parse().unwrap();
        let reset = stub.handle(&syn(target, 443)).unwrap();
        let ip = valid_ip(&reset);
        assert_eq!((ip.source, ip.destination, ip.protocol), (target, CONTAINER6, TCP));
        assert_eq!(transport_checksum(ip.source, ip.destination, TCP, ip.payload), 0, "TCP checksum over v6");
        assert_eq!(ip.payload[13], TCP_RST | TCP_ACK);

        let unreachable = stub.handle(&udp_packet(target, 123, b"ntp")).unwrap();
        let ip = valid_ip(&unreachable);
        assert_eq!((ip.protocol, ip.payload[0], ip.payload[1]), (ICMPV6, 1, 4), "ICMPv6 port unreachable");
        assert_eq!(transport_checksum(ip.source, ip.destination, ICMPV6, ip.payload), 0, "ICMPv6 checksum");
        assert_eq!(&ip.payload[8..48], &udp_packet(target, 123, b"ntp")[..40], "the offending header is quoted");

        // A router solicitation to ff02::2: the kernel's, not the program's.
        let solicit = [133, 0, 0, 0, 0, 0, 0, 0];
        assert!(stub.handle(&ip_packet(CONTAINER6, "ff02::2".parse().unwrap(), ICMPV6, &solicit)).is_none());

        let shown: Vec<String> = stub.attempts().iter().map(|a| a.what.to_string()).collect();
        assert_eq!(shown, ["tried to reach [2001:db8::10]:443 (tcp)", "tried to reach [2001:db8::10]:123 (udp)"]);
    }

    #[test]
    fn garbage_is_ignored_and_memory_is_bounded() {
        let mut stub = Stub::new();
        for bad in [&[][..], &[0x45; 10], &[0x60; 39], &[0x4f; 19], &[0x10; 40]] {
            assert!(stub.handle(bad).is_none());
        }
        let mut truncated = udp_packet(IpAddr::V4(RESOLVER_ADDR), 53, &query("example.org", 1));
        truncated.truncate(truncated.len() - 6);
        let _ = stub.handle(&truncated);
        for port in 0..1500u16 {
            stub.handle(&syn(v4(10, 9, 8, 7), port));
        }
        assert_eq!(stub.attempts().len(), MAX_ATTEMPTS);
        assert!(stub.dropped > 0);
    }

    #[test]
    fn the_same_name_gets_the_same_address() {
        let mut stub = Stub::new();
        let a = stub.address_for("a.example").unwrap();
        let b = stub.address_for("b.example").unwrap();
        assert_ne!(a, b);
        assert_eq!(stub.address_for("a.example").unwrap(), a);
    }
}
