//! `-p` and `--publish-socket`: parsed, checked against the operator's policy
//! (loopback only, unless `[run] publish_addresses` allows another address),
//! and bound before anything of the run is created, so that a port in use
//! stops the run with nothing started. The native runtime relays them (see
//! `ces_runtime::native::ports`); the podman backend refuses them.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ces_runtime::native::ports::{self, Listeners, MAX_SOCKET_PATH};
use ces_runtime::{HostEndpoint, Publish};

use crate::printer::Printer;
use crate::run_options::RunOptions;
use crate::settings::Settings;

/// A `-p` or `--publish-socket` value ces cannot take.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A malformed `-p`.
    #[error("invalid -p {value}: {problem}")]
    Publish {
        /// The value, quoted (or "(not shown)" when it holds other characters).
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A malformed `--publish-socket`.
    #[error("invalid --publish-socket {value}: {problem}")]
    Socket {
        /// The value, quoted.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The same host address or socket twice.
    #[error("{host} is published twice")]
    Twice {
        /// The host end.
        host: String,
    },
}

/// The ports `options` publish, checked against the policy.
pub(crate) fn requests(settings: &Settings, options: &RunOptions) -> anyhow::Result<Vec<Publish>> {
    let mut ports = Vec::new();
    for value in &options.publish {
        let port = parse_publish(value)?;
        if let HostEndpoint::Tcp { address } = &port.host {
            crate::policy::check_publish_address(settings, address.ip())?;
        }
        ports.push(port);
    }
    for value in &options.publish_socket {
        let cwd = std::env::current_dir()?;
        ports.push(parse_socket(value, &cwd)?);
    }
    let mut seen = HashSet::new();
    for port in &ports {
        let host = match &port.host {
            HostEndpoint::Tcp { address } => address.to_string(),
            HostEndpoint::Unix { path } => path.display().to_string(),
        };
        // A port on every address (0.0.0.0) overlaps the others: the bind says so.
        if !seen.insert(host.clone()) {
            return Err(PublishError::Twice { host }.into());
        }
    }
    Ok(ports)
}

/// `[ADDR:]HOSTPORT:CONTAINERPORT[/tcp]`; ADDR `127.0.0.1` when not given,
/// an IPv6 address in brackets.
pub(crate) fn parse_publish(value: &str) -> Result<Publish, PublishError> {
    let shown = if value.len() <= 64 && value.chars().all(|c| c.is_ascii_alphanumeric() || ".:[]/-".contains(c)) {
        format!("{value:?}")
    } else {
        "(not shown)".to_owned()
    };
    let bad = |problem| PublishError::Publish { value: shown.clone(), problem };
    let (rest, protocol) = value.rsplit_once('/').unwrap_or((value, "tcp"));
    if protocol != "tcp" {
        return Err(bad("only TCP ports can be published (/tcp)"));
    }
    let (rest, container) =
        rest.rsplit_once(':').ok_or_else(|| bad("give the host port too: HOSTPORT:CONTAINERPORT"))?;
    let (address, host_port) = match rest.rsplit_once(':') {
        Some((address, port)) if !address.ends_with(':') => (address, port),
        _ if rest.contains(':') => return Err(bad("write an IPv6 address in brackets: [::1]:HOSTPORT:CONTAINERPORT")),
        _ => ("", rest),
    };
    let port = |text: &str| {
        if text.contains('-') {
            return Err(bad("port ranges are not supported: one -p per port"));
        }
        text.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("a port is a number from 1 to 65535"))
    };
    let (host_port, container_port) = (port(host_port)?, port(container)?);
    let ip: IpAddr = match address {
        "" | "localhost" => Ipv4Addr::LOCALHOST.into(),
        bracketed if bracketed.starts_with('[') && bracketed.ends_with(']') => bracketed[1..bracketed.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address in the brackets"))?
            .into(),
        address => address.parse::<Ipv4Addr>().map_err(|_| bad("the address is not an IPv4 address or [IPv6]"))?.into(),
    };
    Ok(Publish { host: HostEndpoint::Tcp { address: SocketAddr::new(ip, host_port) }, container_port })
}

/// `PATH:CONTAINERPORT`; a relative PATH starts at `cwd`.
pub(crate) fn parse_socket(value: &str, cwd: &Path) -> Result<Publish, PublishError> {
    let bad = |problem| PublishError::Socket { value: format!("{value:?}"), problem };
    let (path, port) = value.rsplit_once(':').ok_or_else(|| bad("write PATH:CONTAINERPORT"))?;
    let container_port =
        port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("a port is a number from 1 to 65535"))?;
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    let path: PathBuf = cwd.join(path);
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(bad("the socket's path is too long (at most 107 bytes, after the current directory)"));
    }
    Ok(Publish { host: HostEndpoint::Unix { path }, container_port })
}

/// Binds the host's ends of `ports` (Unix sockets as the user ces runs for).
pub(crate) fn open(ports: &[Publish]) -> anyhow::Result<Listeners> {
    let bind_unix = |path: &Path| crate::identity::as_invoker(|| ports::bind_unix(path)).and_then(|bound| bound);
    Ok(Listeners::bind(ports, &bind_unix)?)
}

/// Removes the Unix sockets of `listeners` (as the user ces runs for).
pub(crate) fn close(printer: &Printer, listeners: &mut Listeners) {
    let failed = match crate::identity::as_invoker(|| listeners.remove_sockets()) {
        Ok(failed) => failed,
        Err(e) => {
            printer.status(format!("warning: cannot remove the published sockets: {e}"));
            return;
        }
    };
    for (path, e) in failed {
        printer.status(format!("warning: cannot remove the published socket {}: {e}", path.display()));
    }
}

/// Hints for a port ces could not publish.
pub(crate) fn hints(error: &ports::PortError) -> Vec<String> {
    match error {
        ports::PortError::InUse { address } => vec![format!(
            "choose another host port (-p {}:OTHERPORT:PORT), or stop what listens there (ss -ltnp)",
            ip(address)
        )],
        ports::PortError::SocketExists { .. } => {
            vec!["choose another path, or remove the old socket if no run of yours uses it".into()]
        }
        ports::PortError::Listen { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            vec!["ports below 1024 need privileges: choose a host port from 1024 up (-p 8080:80)".into()]
        }
        ports::PortError::Listen { source, .. } if source.kind() == std::io::ErrorKind::AddrNotAvailable => {
            vec!["the address is not one of this host's: publish on 127.0.0.1".into()]
        }
        _ => Vec::new(),
    }
}

fn ip(address: &SocketAddr) -> String {
    match address {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(value: &str) -> (SocketAddr, u16) {
        match parse_publish(value).unwrap() {
            Publish { host: HostEndpoint::Tcp { address }, container_port } => (address, container_port),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_values() {
        assert_eq!(tcp("8787:8787"), ("127.0.0.1:8787".parse().unwrap(), 8787));
        assert_eq!(tcp("8080:80/tcp"), ("127.0.0.1:8080".parse().unwrap(), 80));
        assert_eq!(tcp("127.0.0.1:5432:5432"), ("127.0.0.1:5432".parse().unwrap(), 5432));
        assert_eq!(tcp("[::1]:8888:8888"), ("[::1]:8888".parse().unwrap(), 8888));
        assert_eq!(tcp("0.0.0.0:80:8080"), ("0.0.0.0:80".parse().unwrap(), 8080));
        for bad in ["80", "0:80", "80:0", "80:70000", "8000-8010:8000-8010", "80:80/udp", "::1:80:80", "host:80:80", ""]
        {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        let e = parse_publish("\u{1b}[31m:80:80").unwrap_err().to_string();
        assert!(e.contains("(not shown)"), "{e}");
    }

    #[test]
    fn socket_values() {
        let p = parse_socket("app.sock:8888", Path::new("/home/u")).unwrap();
        assert_eq!(p.host, HostEndpoint::Unix { path: "/home/u/app.sock".into() });
        assert_eq!(p.container_port, 8888);
        let p = parse_socket("/run/user/1/a:b.sock:80", Path::new("/x")).unwrap();
        assert_eq!(p.host, HostEndpoint::Unix { path: "/run/user/1/a:b.sock".into() });
        for bad in ["app.sock", ":80", "a:0", &format!("/{}:80", "x".repeat(120))] {
            assert!(parse_socket(bad, Path::new("/")).is_err(), "{bad}");
        }
    }
}
