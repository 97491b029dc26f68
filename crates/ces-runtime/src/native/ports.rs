//! Published ports (`-p`, `--publish-socket`) without a network: ces listens
//! on the host and relays each connection to the container's own loopback.
//! Nothing is added to the container's network namespace (no interface, no
//! route, no NAT): it keeps only `lo`, so the workload can still open no
//! connection out, and a connection in exists only because ces made it.
//!
//! How a socket gets inside the container's network namespace, root and
//! rootless:
//!
//! 1. Before the container exists, ces binds the host's listeners
//!    ([`Listeners::bind`]): a port in use, or a socket path taken, stops the
//!    run before anything starts. (The container's init inherits them from
//!    libcontainer's clone; `ces-init` closes every descriptor before the
//!    workload exists.)
//! 2. `ces-init`, still holding nothing of the workload, opens its own
//!    `/proc/self/ns/user` and `/proc/self/ns/net` and sends them to ces over a
//!    socket pair (SCM_RIGHTS, [`hand_over_namespaces`]). ces cannot open
//!    them itself: the init is not dumpable, so its `/proc/<pid>/ns` is closed
//!    to an unprivileged ces.
//! 3. ces forks the forwarder ([`Forwarder::start`]): a single-threaded copy
//!    of ces, outside the container's PID namespace (the workload cannot see,
//!    signal or trace it), that keeps only the listeners and the two
//!    namespace descriptors, enters the container's user namespace (rootless
//!    ces owns it, so it gets every capability there; root has them anyway),
//!    then its network namespace (which needs `CAP_SYS_ADMIN` in the user
//!    namespace the caller is in, hence the user namespace first), switches
//!    to the container's root (the invoking user on the host), drops every
//!    capability and sets no-new-privileges. It reports ready (or the errno
//!    of the step that failed) on a pipe before ces goes on.
//! 4. The forwarder accepts on the host's listeners (made in the host's
//!    namespace, they stay there), and for each connection creates a socket
//!    (in the container's namespace, where it now is) connected to
//!    `127.0.0.1:PORT` (then `[::1]:PORT`), and relays both ways: a thread per
//!    direction moving data with `splice(2)` through a pipe, so the bytes
//!    never enter user space. A connection the container refuses is closed.
//!
//! The forwarder dies with ces (`PR_SET_PDEATHSIG`) and is killed when the
//! container has ended. A Unix socket (`--publish-socket`) is made with mode
//! 0600 (by the umask, so it is never more open), owned by the user it is
//! made as (under sudo the caller binds it with the user's credentials), and
//! removed at the end of the run if it is still the one ces made.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use nix::unistd::Pid;

use crate::spec::{HostEndpoint, Publish};

/// Why a port could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Something on the host listens there already.
    #[error("port {address} is already in use on this host")]
    InUse {
        /// The host address.
        address: SocketAddr,
    },
    /// The host address cannot be listened on.
    #[error("cannot listen on {address}")]
    Listen {
        /// The host address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something exists at the socket's path (ces never replaces it).
    #[error("{} already exists", path.display())]
    SocketExists {
        /// The path.
        path: PathBuf,
    },
    /// The Unix socket could not be made.
    #[error("cannot create the socket {}", path.display())]
    Socket {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The forwarder could not be started.
    #[error("cannot reach the container's network namespace ({stage})")]
    Forwarder {
        /// What failed.
        stage: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// One bound, listening host endpoint.
#[derive(Debug)]
struct Listener {
    fd: OwnedFd,
    container_port: u16,
    /// A Unix socket: its path and the device and inode ces made there.
    socket_file: Option<(PathBuf, u64, u64)>,
}

/// The host's ends of a run's published ports, bound and listening.
#[derive(Debug, Default)]
pub struct Listeners {
    listeners: Vec<Listener>,
}

impl Listeners {
    /// Binds and listens on every host endpoint of `ports`, in order: TCP
    /// here; Unix sockets with `bind_unix` (so that the caller can make them
    /// with the user's credentials; [`bind_unix`] itself otherwise). The
    /// first failure undoes the rest (sockets made are removed).
    pub fn bind(
        ports: &[Publish],
        bind_unix: &dyn Fn(&Path) -> io::Result<UnixListener>,
    ) -> Result<Listeners, PortError> {
        let mut bound = Listeners::default();
        for port in ports {
            let listener = match &port.host {
                HostEndpoint::Tcp { address } => {
                    let listener = TcpListener::bind(address).map_err(|source| match source.kind() {
                        io::ErrorKind::AddrInUse => PortError::InUse { address: *address },
                        _ => PortError::Listen { address: *address, source },
                    })?;
                    Listener { fd: listener.into(), container_port: port.container_port, socket_file: None }
                }
                HostEndpoint::Unix { path } => {
                    let listener = bind_unix(path).map_err(|source| match source.kind() {
                        io::ErrorKind::AddrInUse => PortError::SocketExists { path: path.clone() },
                        _ => PortError::Socket { path: path.clone(), source },
                    })?;
                    let made = std::fs::symlink_metadata(path)
                        .map_err(|source| PortError::Socket { path: path.clone(), source })?;
                    let file = Some((path.clone(), made.dev(), made.ino()));
                    Listener { fd: listener.into(), container_port: port.container_port, socket_file: file }
                }
            };
            bound.listeners.push(listener);
        }
        Ok(bound)
    }

    /// Whether nothing is published.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Removes the Unix sockets ces made, each only if the path still names
    /// the socket ces made there, once. Not on drop: under sudo the caller
    /// runs this with the user's credentials (the path is in the user's
    /// directories). Returns the paths that could not be removed.
    pub fn remove_sockets(&mut self) -> Vec<(PathBuf, io::Error)> {
        let mut failed = Vec::new();
        for (path, dev, ino) in self.listeners.iter_mut().filter_map(|l| l.socket_file.take()) {
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.dev() == dev && m.ino() == ino => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        failed.push((path, e));
                    }
                }
                // Gone, or replaced by someone else's file: not ours to remove.
                _ => {}
            }
        }
        failed
    }
}

/// Binds a Unix stream socket at `path` with mode 0600 (the umask is 0177
/// while it is made, so it never exists more open) and listens on it. A
/// path that exists (a file, a symlink, a stale socket) is refused by the
/// kernel with `AddrInUse`: nothing is followed or replaced.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask only swaps the process's mask; restored below. ces has
    // no thread creating files meanwhile.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    bound
}

/// A socket pair for the init to send the namespaces on: ces's end, the init's end.
pub(crate) fn namespace_channel() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).map_err(io::Error::from)
}

/// In `ces-init`: sends this process's user and network namespaces to ces on
/// `socket`, before any workload exists.
pub(crate) fn hand_over_namespaces(socket: RawFd) -> io::Result<()> {
    let open = |path: &std::ffi::CStr| {
        // SAFETY: opening a NUL-terminated path; a new descriptor or -1.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let user = open(c"/proc/self/ns/user")?;
    let net = open(c"/proc/self/ns/net")?;
    let fds = [user.as_raw_fd(), net.as_raw_fd()];
    sendmsg::<()>(socket, &[IoSlice::new(b"ns")], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

/// In ces: the user and network namespaces the init sent on `socket` (an
/// error if it sent none: it failed before).
fn receive_namespaces(socket: &OwnedFd) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut tag = [0u8; 2];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(&mut tag)];
    let message = loop {
        match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: descriptors the kernel just gave us.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next()) {
        (Some(user), Some(net)) => Ok((user, net)),
        _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the container's init sent no namespaces")),
    }
}

/// The forked process that relays the published ports.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pid: Pid,
    /// Closed to tell the forwarder the container has ended.
    stop: Option<OwnedFd>,
}

impl Forwarder {
    /// Receives the container's namespaces on `socket` and forks the
    /// forwarder into them with `listeners`; returns once it is ready.
    pub(crate) fn start(listeners: &Listeners, socket: &OwnedFd) -> Result<Forwarder, PortError> {
        let failed = |stage| move |source| PortError::Forwarder { stage, source };
        let (user, net) = receive_namespaces(socket).map_err(failed("receiving the namespaces"))?;
        let (ready_read, ready_write) = super::pipe().map_err(failed("creating a pipe"))?;
        let (stop_read, stop_write) = super::pipe().map_err(failed("creating a pipe"))?;
        let mut keep: Vec<RawFd> = listeners.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
        keep.extend([user.as_raw_fd(), net.as_raw_fd(), ready_write.as_raw_fd(), stop_read.as_raw_fd()]);
        let routes: Vec<(RawFd, u16)> =
            listeners.listeners.iter().map(|l| (l.fd.as_raw_fd(), l.container_port)).collect();
        // SAFETY: ces runs containers from a single-threaded process (see the
        // native module), so the child may allocate and spawn threads.
        match unsafe { libc::fork() } {
            -1 => Err(failed("forking")(io::Error::last_os_error())),
            0 => {
                let code = child(&keep, &user, &net, &ready_write, &routes, &stop_read);
                // SAFETY: leaving the forked child without running ces's exit handlers.
                unsafe { libc::_exit(code) }
            }
            pid => {
                let forwarder = Forwarder { pid: Pid::from_raw(pid), stop: Some(stop_write) };
                drop((ready_write, stop_read));
                let mut status = [0u8; 4];
                let n = nix::unistd::read(ready_read.as_raw_fd(), &mut status).unwrap_or(0);
                match (n, i32::from_le_bytes(status)) {
                    (4, 0) => Ok(forwarder),
                    (4, errno) => Err(failed("entering the namespaces")(io::Error::from_raw_os_error(errno))),
                    _ => Err(failed("entering the namespaces")(io::Error::from(io::ErrorKind::UnexpectedEof))),
                }
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // The container has ended (or failed): the forwarder stops
        // accepting, relays what the container sent before it ended, and
        // exits (within DRAIN); killed if it cannot.
        drop(self.stop.take());
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The forwarder: set up, report, then serve until killed.
fn child(
    keep: &[RawFd],
    user: &OwnedFd,
    net: &OwnedFd,
    ready: &OwnedFd,
    routes: &[(RawFd, u16)],
    stop: &OwnedFd,
) -> i32 {
    let report = |errno: i32| {
        let _ = nix::unistd::write(ready, &errno.to_le_bytes());
    };
    if let Err(e) = enter(keep, user, net) {
        report(e.raw_os_error().unwrap_or(libc::EIO));
        return 1;
    }
    report(0);
    // SAFETY: closing the pipe's write end, which nothing else uses.
    unsafe { libc::close(ready.as_raw_fd()) };
    for &(fd, port) in routes {
        // SAFETY: a listening socket this process keeps for its whole life.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        // Without the thread, that port is not served (its clients wait).
        let _ = std::thread::Builder::new().stack_size(STACK).spawn(move || serve(listener, port));
    }
    // Until ces closes the pipe (or dies: then PR_SET_PDEATHSIG).
    let mut byte = [0u8; 1];
    while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(stop.as_raw_fd(), &mut byte) {}
    ACTIVE.drain(DRAIN);
    0
}

/// How long the forwarder goes on relaying once the container has ended:
/// what the container wrote before it ended still reaches the client (its
/// sockets are closed, the data already sent waits in ours); a client that
/// keeps its end open is not waited for longer.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The connections being relayed.
static ACTIVE: Active = Active { count: std::sync::Mutex::new(0), changed: std::sync::Condvar::new() };

struct Active {
    count: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
}

impl Active {
    fn add(&self, n: isize) {
        let mut count = self.count.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *count = count.saturating_add_signed(n);
        self.changed.notify_all();
    }

    /// Waits until no connection is left, or `limit` has passed.
    fn drain(&self, limit: std::time::Duration) {
        let count = self.count.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self.changed.wait_timeout_while(count, limit, |n| *n > 0);
    }
}

/// Counts a connection for as long as it lives.
struct Counted;

impl Counted {
    fn new() -> Counted {
        ACTIVE.add(1);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        ACTIVE.add(-1);
    }
}

const STACK: usize = 256 * 1024;

/// Leaves everything of ces behind but `keep`, enters the container's user
/// and network namespaces, becomes the container's root and drops every
/// privilege.
fn enter(keep: &[RawFd], user: &OwnedFd, net: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain prctl; then die with ces (the parent thread).
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    close_all_but(keep);
    let check = |rc: libc::c_long| if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    if nix::unistd::geteuid().is_root() {
        // Root's groups must not follow it in: dropped while it may.
        // SAFETY: an empty list; this process has one thread.
        check(unsafe { libc::setgroups(0, std::ptr::null()) } as libc::c_long)?;
    }
    // SAFETY: setns on descriptors we own; this process has one thread and
    // shares no fs information (as joining a user namespace requires).
    check(unsafe { libc::setns(user.as_raw_fd(), libc::CLONE_NEWUSER) } as libc::c_long)?;
    // SAFETY: as above.
    check(unsafe { libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) } as libc::c_long)?;
    // The container's root: the invoking user on the host.
    // SAFETY: plain id changes in a single-threaded process.
    check(unsafe { libc::setresgid(0, 0, 0) } as libc::c_long)?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(0, 0, 0) } as libc::c_long)?;
    drop_capabilities()?;
    // SAFETY: plain prctl calls.
    unsafe {
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"ces-ports".as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    // SAFETY: the namespace descriptors are no longer needed.
    unsafe {
        libc::close(user.as_raw_fd());
        libc::close(net.as_raw_fd());
    }
    Ok(())
}

/// Closes every descriptor above stderr that is not in `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    let mut from: u32 = 3;
    for fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd > from {
            // SAFETY: close_range on descriptors this process owns.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

/// Clears the effective, permitted and inheritable capability sets.
fn drop_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset with a version-3 header and two data structures.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts connections on `listener` and relays each to `port` on the
/// container's loopback.
fn serve(listener: OwnedFd, port: u16) {
    loop {
        // SAFETY: accept4 on a listening socket; a new descriptor or -1.
        let fd = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Passing trouble: the listener is still good.
                Some(
                    libc::EINTR
                    | libc::ECONNABORTED
                    | libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOBUFS
                    | libc::ENOMEM
                    | libc::EPROTO
                    | libc::EPERM,
                ) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    continue;
                }
                _ => return,
            }
        }
        // SAFETY: a new descriptor we own.
        let client = unsafe { OwnedFd::from_raw_fd(fd) };
        let spawned = std::thread::Builder::new().stack_size(STACK).spawn(move || connect_and_relay(client, port));
        // Without a thread the connection is dropped (closed), nothing else.
        drop(spawned);
    }
}

/// Connects to the container's `port` (IPv4 loopback, then IPv6) and
/// relays; a refused connection closes the client's.
fn connect_and_relay(client: OwnedFd, port: u16) {
    let _counted = Counted::new();
    let server =
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).or_else(|_| TcpStream::connect((Ipv6Addr::LOCALHOST, port)));
    let Ok(server) = server else { return };
    let _ = server.set_nodelay(true);
    set_nodelay(&client);
    let server = OwnedFd::from(server);
    relay(client, server);
}

fn set_nodelay(fd: &OwnedFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid int option on our socket; fails harmlessly on a Unix socket.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Relays `a` and `b` both ways until both directions have ended: one
/// direction on another thread, one here. An end of file is passed on as a
/// half-close; an error ends both directions.
pub(crate) fn relay(a: OwnedFd, b: OwnedFd) {
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    let other = std::thread::Builder::new().stack_size(STACK).spawn(move || pump(&b2, &a2));
    if let Ok(other) = other {
        pump(&a, &b);
        let _ = other.join();
    }
}

/// The size of each splice, and of the pipe it goes through.
const PIPE_SIZE: usize = 1 << 20;

/// Moves bytes from `from` to `to` until the end of `from`, then half-closes
/// `to`; on an error, shuts both sockets down (the other direction stops too).
fn pump(from: &OwnedFd, to: &OwnedFd) {
    if splice_all(from, to).is_ok() {
        // SAFETY: shutdown of our socket.
        unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
        return;
    }
    // SAFETY: shutdown of our sockets.
    unsafe {
        libc::shutdown(from.as_raw_fd(), libc::SHUT_RDWR);
        libc::shutdown(to.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// `splice(2)` from `from` into a pipe and from the pipe to `to`, until `from` ends.
fn splice_all(from: &OwnedFd, to: &OwnedFd) -> io::Result<()> {
    let (pipe_read, pipe_write) = super::pipe()?;
    // A larger pipe moves more per call; the default (64 KiB) where refused.
    // SAFETY: F_SETPIPE_SZ on our pipe.
    let size = unsafe { libc::fcntl(pipe_write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
    let chunk = if size > 0 { size as usize } else { 64 * 1024 };
    let splice = |input: &OwnedFd, output: &OwnedFd, len: usize| loop {
        // SAFETY: splice between descriptors we own, no offsets.
        let n = unsafe {
            libc::splice(
                input.as_raw_fd(),
                std::ptr::null_mut(),
                output.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    loop {
        let mut buffered = splice(from, &pipe_write, chunk)?;
        if buffered == 0 {
            return Ok(());
        }
        while buffered > 0 {
            let n = splice(&pipe_read, to, buffered)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buffered -= n;
        }
    }
}

/// What the plan says about `ports`, one line each.
pub(crate) fn describe(ports: &[Publish]) -> Vec<String> {
    ports
        .iter()
        .map(|port| {
            format!(
                "port: {port} (ces listens on the host and relays each connection to 127.0.0.1:{} in the \
                 container's network namespace; no interface or route is added)",
                port.container_port
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};

    /// Both directions, a half-close passed on, and bytes intact.
    #[test]
    fn relay_copies_both_ways_and_passes_on_the_end() {
        let (client_near, client_far) = std::os::unix::net::UnixStream::pair().unwrap();
        let (server_near, server_far) = std::os::unix::net::UnixStream::pair().unwrap();
        let relaying = std::thread::spawn(move || relay(client_far.into(), server_far.into()));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            let mut client = client_near.try_clone().unwrap();
            std::thread::spawn(move || {
                client.write_all(&data).unwrap();
                client.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let mut server = server_near;
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == data, "the bytes arrived changed ({} of {})", got.len(), data.len());
        server.write_all(b"reply").unwrap();
        drop(server);
        let mut client = client_near;
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"reply");
        relaying.join().unwrap();
    }

    #[test]
    fn a_unix_socket_is_private_and_an_existing_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let port = Publish { host: HostEndpoint::Unix { path: path.clone() }, container_port: 80 };
        let mut listeners = Listeners::bind(std::slice::from_ref(&port), &bind_unix).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let again = Listeners::bind(std::slice::from_ref(&port), &bind_unix).unwrap_err();
        assert!(matches!(again, PortError::SocketExists { .. }), "{again:?}");
        assert!(listeners.remove_sockets().is_empty());
        assert!(!path.exists(), "removed at the end");

        // A symlink at the path is neither followed nor replaced.
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let refused = Listeners::bind(std::slice::from_ref(&port), &bind_unix).unwrap_err();
        assert!(matches!(refused, PortError::SocketExists { .. }), "{refused:?}");
        assert!(!target.exists());
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = taken.local_addr().unwrap();
        let port = Publish { host: HostEndpoint::Tcp { address }, container_port: 80 };
        let error = Listeners::bind(&[port], &bind_unix).unwrap_err();
        assert!(matches!(error, PortError::InUse { address: a } if a == address), "{error:?}");
    }
}
