//! What `ces test` observes of a run, beyond its exit: every network attempt
//! (a TUN device as the only route of the container's network namespace,
//! read by a watcher process that answers with [`crate::netwatch::Stub`]),
//! the peak memory (from the cgroup) and the files written to the
//! container's own filesystem (the overlay's upper layer), which are lost at
//! exit.
//!
//! The device is made inside the container: `ces-init`, in the container's
//! network namespace with the `CAP_NET_ADMIN` it holds during setup, opens
//! `/dev/net/tun` (bound into the container for `ces test` only, and allowed
//! by its device cgroup), creates `ces0`, addresses it, routes everything to
//! it, and hands the descriptor to ces over a socket before the workload
//! exists ([`hand_over_tun`]); it fails the start if any of that fails. ces
//! (root or not: nothing here needs `/proc/<pid>/ns`, closed to an
//! unprivileged ces since the init is not dumpable) then forks the watcher,
//! which reads the device until ces has seen the container end ([`Watcher`]).
//! Packets sent meanwhile wait in the device's queue. The watcher dies with
//! ces (`PR_SET_PDEATHSIG`) and the device with the namespace; it never sends
//! a packet anywhere but back into the container: it has no other interface
//! to send one to.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::netwatch::{Attempt, CONTAINER_ADDR, CONTAINER_ADDR6, Stub};

use super::init::{ifreq, inet_socket, interface_up};
use super::oci::TUN_PATH;

/// The device's name in the container.
pub const DEVICE: &str = "ces0";
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// The network attempts of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    /// Each distinct attempt, first seen first.
    pub attempts: Vec<Attempt>,
    /// Attempts not kept (beyond the bound on distinct attempts).
    pub dropped: u64,
    /// Sockets of other families than local, IP and netlink the workload
    /// asked for (a way out that is not the network: `AF_VSOCK` to a
    /// hypervisor, raw packets...), by family, first asked first.
    #[serde(default)]
    pub sockets: Vec<SocketAttempt>,
}

/// `socket(FAMILY, ...)` of a family the network watcher cannot see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketAttempt {
    /// The address family's number.
    pub family: u64,
    /// Its name (`AF_VSOCK`), or the number.
    pub name: String,
    /// How many times.
    pub count: u64,
    /// Whether ces refused it (EPERM: `AF_VSOCK`); otherwise the kernel
    /// answered as in any run.
    pub refused: bool,
}

/// `AF_VSOCK`: refused in every run (see [`super::seccomp`]).
const AF_VSOCK: u64 = 40;

/// The name of address family `family`.
fn family_name(family: u64) -> String {
    let name = match family {
        0 => "AF_UNSPEC",
        3 => "AF_AX25",
        4 => "AF_IPX",
        5 => "AF_APPLETALK",
        9 => "AF_X25",
        15 => "AF_KEY",
        17 => "AF_PACKET",
        29 => "AF_CAN",
        30 => "AF_TIPC",
        31 => "AF_BLUETOOTH",
        38 => "AF_ALG",
        AF_VSOCK => "AF_VSOCK",
        41 => "AF_KCM",
        42 => "AF_QIPCRTR",
        44 => "AF_XDP",
        _ => return family.to_string(),
    };
    name.to_owned()
}

/// A file the container wrote to its own filesystem (lost at exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrite {
    /// The path in the container.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Why the network could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The watcher failed at `stage`.
    #[error("cannot observe the container's network ({stage})")]
    Setup {
        /// What it was doing.
        stage: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The forked watcher.
pub(crate) struct Watcher {
    pid: Pid,
    /// Closed to tell the watcher the container has ended.
    stop: OwnedFd,
    results: OwnedFd,
}

/// Stages `ces-init` reports, by number, with an errno.
const STAGES: [&str; 5] = [
    "opening /dev/net/tun",
    "creating the ces0 device",
    "addressing the ces0 device",
    "routing to the ces0 device",
    "handing the device to ces",
];

/// The socket pair the device travels on: ces's end, and the end the
/// container's init inherits (both close-on-exec).
pub(crate) fn tun_channel() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).map_err(io::Error::from)
}

/// In `ces-init`: creates and configures the device in this (the
/// container's) network namespace and sends it to ces on `socket`; on
/// failure, sends the stage and errno instead, and returns the error.
pub(crate) fn hand_over_tun(socket: RawFd) -> Result<(), String> {
    send_device(socket, set_up())
}

/// In the workload (or, for a root workload, `ces-init`), before it runs:
/// sends its seccomp filter's user-notification listener to ces's watcher
/// on `socket` (after the device: see [`Watcher::start`]).
pub(crate) fn hand_over_listener(socket: RawFd, listener: &OwnedFd) -> io::Result<()> {
    let status = encode_status(0, 0);
    let fds = [listener.as_raw_fd()];
    sendmsg::<()>(socket, &[IoSlice::new(&status)], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .map(drop)
        .map_err(io::Error::from)
}

/// Sends `device` on `socket` with a status of 0, or, when setting it up
/// failed, the stage (see [`STAGES`]) and the errno.
fn send_device(socket: RawFd, device: Result<OwnedFd, (u32, io::Error)>) -> Result<(), String> {
    let status = match &device {
        Ok(_) => encode_status(0, 0),
        Err((stage, e)) => encode_status(*stage, e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let fds: Vec<RawFd> = device.iter().map(AsRawFd::as_raw_fd).collect();
    let control: Vec<ControlMessage<'_>> =
        if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&fds)] };
    let sent = sendmsg::<()>(socket, &[IoSlice::new(&status)], &control, MsgFlags::empty(), None);
    match (device, sent) {
        (Ok(_), Ok(_)) => Ok(()),
        (Ok(_), Err(e)) => Err(format!("{}: {e}", STAGES[4])),
        (Err((stage, e)), _) => Err(format!("{}: {e}", stage_name(stage))),
    }
}

/// The status sent with the device: the failed stage (1-based, 0 for none)
/// and the errno, little-endian.
fn encode_status(stage: u32, errno: i32) -> [u8; 8] {
    let mut status = [0u8; 8];
    status[..4].copy_from_slice(&stage.to_le_bytes());
    status[4..].copy_from_slice(&errno.to_le_bytes());
    status
}

fn decode_status(status: [u8; 8]) -> (u32, i32) {
    let [s0, s1, s2, s3, e0, e1, e2, e3] = status;
    (u32::from_le_bytes([s0, s1, s2, s3]), i32::from_le_bytes([e0, e1, e2, e3]))
}

/// The name of failed stage `n` (1-based).
fn stage_name(n: u32) -> &'static str {
    n.checked_sub(1).and_then(|i| STAGES.get(i as usize)).copied().unwrap_or("setting up")
}

impl Watcher {
    /// Receives the device from the container's init on `socket` and forks
    /// the watcher to serve it.
    pub(crate) fn start(socket: OwnedFd) -> Result<Watcher, ObserveError> {
        let setup = |stage, source| ObserveError::Setup { stage, source };
        let mut status = [0u8; 8];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let (bytes, tun) = {
            let mut iov = [IoSliceMut::new(&mut status)];
            let message = loop {
                match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other.map_err(|e| setup("receiving the device", e.into()))?,
                }
            };
            let mut tun = None;
            for cmsg in message.cmsgs().map_err(|e| setup("receiving the device", e.into()))? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for fd in fds {
                        // SAFETY: a descriptor the kernel just gave us.
                        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                        tun.get_or_insert(owned);
                    }
                }
            }
            (message.bytes, tun)
        };
        let (stage, errno) = decode_status(status);
        let tun = match (bytes, stage, tun) {
            (8, 0, Some(tun)) => tun,
            (8, n, _) if n != 0 => return Err(setup(stage_name(n), io::Error::from_raw_os_error(errno))),
            _ => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the container's init sent no device");
                return Err(setup("receiving the device", e));
            }
        };
        let (stop_read, stop_write) = super::pipe().map_err(|e| setup("creating pipes", e))?;
        let (results_read, results_write) = super::pipe().map_err(|e| setup("creating pipes", e))?;
        // SAFETY: ces is single-threaded here (libcontainer needs it too);
        // the child only makes system calls and allocates.
        match unsafe { libc::fork() } {
            -1 => Err(setup("forking the watcher", io::Error::last_os_error())),
            0 => {
                drop(stop_write);
                drop(results_read);
                // Kept: the workload's seccomp listener comes on it.
                let code = child(&tun, &socket, stop_read.as_raw_fd(), results_write.as_raw_fd());
                // SAFETY: leaving the forked child without running the
                // parent's destructors or atexit handlers.
                unsafe { libc::_exit(code) }
            }
            pid => Ok(Watcher { pid: Pid::from_raw(pid), stop: stop_write, results: results_read }),
        }
    }

    /// Stops the watcher once the container has ended; returns what it saw.
    pub(crate) fn finish(self) -> io::Result<NetworkReport> {
        let Watcher { pid, stop, results } = self;
        drop(stop);
        let mut bytes = Vec::new();
        let read = File::from(results).read_to_end(&mut bytes);
        let _ = nix::sys::wait::waitpid(pid, None);
        read?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }
}

/// The watcher: serve until told to stop, then report.
fn child(tun: &OwnedFd, socket: &OwnedFd, stop: RawFd, results: RawFd) -> i32 {
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut stub = Stub::new();
    let mut sockets = Vec::new();
    serve(tun, socket, stop, &mut stub, &mut sockets);
    let report = NetworkReport { attempts: stub.attempts(), dropped: stub.dropped, sockets };
    match serde_json::to_vec(&report) {
        Ok(bytes) => {
            // SAFETY: the descriptor stays open for the child's life;
            // ManuallyDrop keeps this File from closing it.
            let mut file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(results) });
            if file.write_all(&bytes).is_ok() { 0 } else { 1 }
        }
        Err(_) => 1,
    }
}

/// Opens the TUN device and brings `ces0` up; on failure, the stage number
/// (1-based, see [`STAGES`]) and the error.
fn set_up() -> Result<OwnedFd, (u32, io::Error)> {
    let tun = OwnedFd::from(OpenOptions::new().read(true).write(true).open(TUN_PATH).map_err(|e| (1, e))?);
    let mut request = ifreq(DEVICE);
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes an ifreq.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
        return Err((2, io::Error::last_os_error()));
    }
    configure()?;
    Ok(tun)
}

/// Address, netmask, up, default route: the ioctls `ifconfig` and `route`
/// use (no netlink library needed for four settings).
fn configure() -> Result<(), (u32, io::Error)> {
    let socket = inet_socket().map_err(|e| (3, e))?;
    let ioctl = |request: libc::c_ulong, arg: *mut libc::c_void, stage: u32| {
        // SAFETY: each request below is given the structure it takes.
        if unsafe { libc::ioctl(socket.as_raw_fd(), request, arg) } < 0 {
            return Err((stage, io::Error::last_os_error()));
        }
        Ok(())
    };
    let mut request = ifreq(DEVICE);
    request.ifr_ifru.ifru_addr = sockaddr(CONTAINER_ADDR);
    ioctl(libc::SIOCSIFADDR, (&raw mut request).cast(), 3)?;
    request.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::new(255, 255, 255, 0));
    ioctl(libc::SIOCSIFNETMASK, (&raw mut request).cast(), 3)?;
    interface_up(&socket, DEVICE).map_err(|e| (3, e))?;

    let mut device = *b"ces0\0";
    // SAFETY: rtentry is plain data; zero is "unset" for every field.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_flags = libc::RTF_UP;
    route.rt_dev = device.as_mut_ptr().cast();
    ioctl(libc::SIOCADDRT, (&raw mut route).cast(), 4)?;
    configure_ipv6();
    Ok(())
}

/// `struct in6_rtmsg` (linux/ipv6_route.h; the libc crate's has private fields).
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

/// The same for IPv6, where the kernel has it: without it (no IPv6 in this
/// kernel, or disabled in the namespace) no program can send IPv6 either,
/// so a failure here leaves nothing unobserved and is not one.
fn configure_ipv6() {
    // SAFETY: a new socket, checked.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: a new descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = c"ces0";
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    let Ok(index) = libc::c_int::try_from(index) else { return };
    if index == 0 {
        return;
    }
    let address = libc::in6_addr { s6_addr: CONTAINER_ADDR6.octets() };
    let mut request = libc::in6_ifreq { ifr6_addr: address, ifr6_prefixlen: 64, ifr6_ifindex: index };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket takes an in6_ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFADDR, &raw mut request) } < 0 {
        return;
    }
    let unspecified = libc::in6_addr { s6_addr: [0; 16] };
    let mut route = In6Rtmsg {
        dst: unspecified,
        src: unspecified,
        gateway: unspecified,
        kind: 0,
        dst_len: 0,
        src_len: 0,
        metric: 1,
        info: 0,
        flags: u32::from(libc::RTF_UP),
        ifindex: index,
    };
    // SAFETY: SIOCADDRT on an AF_INET6 socket takes an in6_rtmsg.
    unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCADDRT, &raw mut route) };
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(address.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // the family first.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

/// Reads packets and writes the stub's replies until `stop` closes (ces has
/// seen the container end); then takes what is still queued. Meanwhile,
/// receives the workload's seccomp listener on `socket` and answers its
/// notifications (see [`socket_notification`]).
fn serve(tun: &OwnedFd, socket: &OwnedFd, stop: RawFd, stub: &mut Stub, sockets: &mut Vec<SocketAttempt>) {
    let mut buffer = vec![0u8; 65536];
    let mut socket = Some(socket.as_raw_fd());
    let mut listener: Option<OwnedFd> = None;
    loop {
        // -1: poll ignores the entry.
        let mut fds = [
            libc::pollfd { fd: tun.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: socket.unwrap_or(-1), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: listener.as_ref().map_or(-1, AsRawFd::as_raw_fd), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: four valid pollfds, no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 4, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[2].revents != 0 {
            // The listener, or the init's end closed without one.
            listener = socket.and_then(receive_listener);
            socket = None;
        }
        if fds[3].revents & libc::POLLIN != 0 {
            if let Some(fd) = &listener {
                socket_notification(fd, sockets);
            }
        } else if fds[3].revents != 0 {
            // No process under the filter is left.
            listener = None;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            packet(tun, &mut buffer, stub);
        }
        if fds[1].revents != 0 {
            // The stop pipe closed: drain without waiting.
            set_nonblocking(tun);
            while packet(tun, &mut buffer, stub) {}
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return;
        }
    }
}

/// The listener [`hand_over_listener`] sent on `socket`, if any.
fn receive_listener(socket: RawFd) -> Option<OwnedFd> {
    let mut status = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut status)];
    let message = recvmsg::<()>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let mut received = None;
    for cmsg in message.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: a descriptor the kernel just gave us.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(owned);
            }
        }
    }
    received
}

/// Answers one user notification on `listener` (a `socket` call of a family
/// the profile hands over): recorded in `sockets`, then refused as any run
/// refuses it (`AF_VSOCK`: EPERM) or let go on (the kernel decides). The
/// bound on distinct families is the families' count (a `u64`, few).
fn socket_notification(listener: &OwnedFd, sockets: &mut Vec<SocketAttempt>) {
    use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
    let Ok(request) = ScmpNotifReq::receive(listener.as_raw_fd()) else { return };
    let family = request.data.args[0];
    let refused = family == AF_VSOCK;
    if let Some(seen) = sockets.iter_mut().find(|s| s.family == family) {
        seen.count += 1;
    } else if sockets.len() < 64 {
        sockets.push(SocketAttempt { family, name: family_name(family), count: 1, refused });
    }
    let response = if refused {
        ScmpNotifResp::new_error(request.id, -libc::EPERM, ScmpNotifRespFlags::empty())
    } else {
        ScmpNotifResp::new_continue(request.id, ScmpNotifRespFlags::empty())
    };
    // A process that died meanwhile is no error.
    let _ = response.respond(listener.as_raw_fd());
}

/// One packet in, one reply out; false when there was none to read.
fn packet(tun: &OwnedFd, buffer: &mut [u8], stub: &mut Stub) -> bool {
    // SAFETY: reading into our buffer.
    let n = unsafe { libc::read(tun.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
    if n <= 0 {
        return false;
    }
    if let Some(reply) = stub.handle(&buffer[..n as usize]) {
        // SAFETY: writing our reply; a failure only loses the reply.
        unsafe { libc::write(tun.as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
    }
    true
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on our descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// The regular files and symbolic links in the overlay's upper layer (what
/// the container wrote to its own filesystem), but for the mount points ces
/// itself created (`ignore`: paths in the container).
pub(crate) fn lost_writes(upper: &Path, ignore: &[&str]) -> Vec<LostWrite> {
    let mut found = Vec::new();
    let mut stack = vec![(upper.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{prefix}/{name}");
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push((entry.path(), path));
            } else if (kind.is_file() || kind.is_symlink()) && !ignore.contains(&path.as_str()) {
                found.push(LostWrite { path, size: meta.len() });
            }
            // Anything else (a whiteout: a deletion; a fifo or a socket)
            // holds no data.
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// Which of a run's device nodes get opened (`ces test --gpu`): an
/// inotify watch on each node bound into the container (opens through a
/// bind mount are opens of the same inode).
pub(crate) struct DeviceOpens {
    inotify: Option<nix::sys::inotify::Inotify>,
    watches: Vec<(nix::sys::inotify::WatchDescriptor, String)>,
}

impl DeviceOpens {
    /// Watches each `(path in the container, node)`.
    pub(crate) fn watch(nodes: &[(String, std::path::PathBuf)]) -> io::Result<DeviceOpens> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        if nodes.is_empty() {
            return Ok(DeviceOpens { inotify: None, watches: Vec::new() });
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut watches = Vec::new();
        for (path, node) in nodes {
            match inotify.add_watch(node, AddWatchFlags::IN_OPEN) {
                Ok(wd) => watches.push((wd, path.clone())),
                // Rootless, a host node the user may not read: nor can the
                // container open it.
                Err(nix::errno::Errno::EACCES) => {}
                Err(e) => return Err(super::rootfs::annotate(e.into(), node)),
            }
        }
        Ok(DeviceOpens { inotify: Some(inotify), watches })
    }

    /// The container paths of the nodes opened since the watch began.
    pub(crate) fn opened(self) -> Vec<String> {
        let Some(inotify) = self.inotify else { return Vec::new() };
        let mut opened: Vec<String> = Vec::new();
        while let Ok(events) = inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in events {
                if let Some((_, path)) = self.watches.iter().find(|(wd, _)| *wd == event.wd)
                    && !opened.contains(path)
                {
                    opened.push(path.clone());
                }
            }
        }
        opened.sort();
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Watcher::start after `init` (the container's end) did `send`.
    fn start_error(send: impl FnOnce(RawFd)) -> (&'static str, io::Error) {
        let (ces, init) = tun_channel().unwrap();
        send(init.as_raw_fd());
        drop(init);
        match Watcher::start(ces) {
            Err(ObserveError::Setup { stage, source }) => (stage, source),
            Ok(_) => panic!("a watcher started without a device"),
        }
    }

    #[test]
    fn a_stage_that_failed_in_the_container_is_named_with_its_errno() {
        let (stage, source) = start_error(|init| {
            let failed = Err((2, io::Error::from_raw_os_error(libc::EBUSY)));
            let message = send_device(init, failed).unwrap_err();
            assert!(message.starts_with("creating the ces0 device: "), "{message}");
        });
        assert_eq!(stage, "creating the ces0 device");
        assert_eq!(source.raw_os_error(), Some(libc::EBUSY));
    }

    #[test]
    fn an_init_gone_before_sending_is_an_error_not_a_hang() {
        let (stage, source) = start_error(|_| {});
        assert_eq!(stage, "receiving the device");
        assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_success_status_without_a_device_is_an_error() {
        let (stage, source) = start_error(|init| {
            sendmsg::<()>(init, &[IoSlice::new(&encode_status(0, 0))], &[], MsgFlags::empty(), None).unwrap();
        });
        assert_eq!(stage, "receiving the device");
        assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn stage_numbers_are_one_based_and_unknown_ones_named_generically() {
        assert_eq!(decode_status(encode_status(4, -3)), (4, -3));
        assert_eq!(stage_name(1), "opening /dev/net/tun");
        assert_eq!(stage_name(5), "handing the device to ces");
        assert_eq!(stage_name(0), "setting up");
        assert_eq!(stage_name(6), "setting up");
    }

    #[test]
    fn lost_writes_are_files_and_links_but_not_mount_points_or_whiteouts() {
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(upper.path().join("etc/app")).unwrap();
        std::fs::write(upper.path().join("etc/app/state"), b"12345").unwrap();
        std::fs::write(upper.path().join("etc/resolv.conf"), b"").unwrap();
        std::os::unix::fs::symlink("state", upper.path().join("etc/app/link")).unwrap();
        nix::unistd::mkfifo(&upper.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let found = lost_writes(upper.path(), &["/etc/resolv.conf"]);
        let paths: Vec<&str> = found.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["/etc/app/link", "/etc/app/state"]);
        assert_eq!(found[1].size, 5);
    }
}
