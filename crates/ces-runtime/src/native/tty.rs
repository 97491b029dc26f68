//! The container's terminal (`-t`).
//!
//! The pty is made inside the container, from its own `devpts` instance
//! (libcontainer's console socket, as `runc --console-socket` does): the
//! init opens `/dev/pts/ptmx` after `pivot_root`, makes the slave its
//! stdio and `/dev/console`, and sends the master to ces over a Unix
//! socket (`SCM_RIGHTS`). The workload never sees a host terminal: ces's
//! own stdin and stdout stay ces's, and ces relays between them and the
//! master (see [`super::wait`]) as it relays pipes without `-t`.
//!
//! - [`ConsoleSocket`]: where the master arrives. The socket is in the run's
//!   bundle directory (mode 0700), and ces takes the one connection from its
//!   own process (libcontainer connects from it), checked by `SO_PEERCRED`.
//! - [`RawMode`]: with `-i`, the host terminal in raw mode while the
//!   container runs (keys, `^C` included, go to the workload as bytes; the
//!   pty's line discipline turns `^C` into its `SIGINT`), restored when the
//!   guard drops: on every return of the run, error or signal included (the
//!   signals ces forwards never end ces: it waits for the container, then
//!   returns).
//! - [`Resize`]: the host terminal's size on the master at the start and
//!   after each `SIGWINCH` (the kernel then sends `SIGWINCH` to the
//!   workload).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// The console socket's name in the bundle directory.
const SOCKET_NAME: &str = "console.sock";

/// Whether ces's stdin is a terminal (what `-t` needs: its size, and with
/// `-i` its keys).
pub(crate) fn host_has_terminal() -> bool {
    // SAFETY: isatty on a descriptor number; no memory is touched.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// A listening Unix socket that receives the pty master from the container.
pub(crate) struct ConsoleSocket {
    listener: OwnedFd,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on `<dir>/console.sock` (`dir`: the bundle directory, mode 0700).
    pub(crate) fn bind(dir: &Path) -> io::Result<ConsoleSocket> {
        let path = dir.join(SOCKET_NAME);
        // Bound through the directory's descriptor: a long state directory
        // would not fit in `sun_path` (108 bytes).
        let dir_fd = open_path(dir)?;
        let short = format!("/proc/self/fd/{}/{SOCKET_NAME}", dir_fd.as_raw_fd());
        // SAFETY: plain socket call, checked.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_un is plain data.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        if short.len() >= addr.sun_path.len() {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(short.bytes()) {
            *dst = src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: a valid sockaddr_un of the given length; listen on our socket.
        unsafe {
            if libc::bind(listener.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) != 0
                || libc::listen(listener.as_raw_fd(), 1) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(ConsoleSocket { listener, path })
    }

    /// The socket's path, for libcontainer's `with_console_socket`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master, once libcontainer has built the container (its init
    /// sent the master before `build()` returned; an init that died before
    /// closes the connection, which ends the wait). Only a connection from
    /// this process is taken, and only a pty master from it.
    pub(crate) fn receive_master(self) -> io::Result<OwnedFd> {
        let _ = std::fs::remove_file(&self.path);
        // SAFETY: accept4 on our listening socket; no address wanted.
        let fd = unsafe {
            libc::accept4(self.listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        if peer_pid(&conn)? != std::process::id() as libc::pid_t {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the console socket's peer is not ces"));
        }
        let master = receive_fd(&conn)?;
        check_master(&master)?;
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn open_path(dir: &Path) -> io::Result<OwnedFd> {
    let c =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string; a new descriptor is returned or -1.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn peer_pid(conn: &OwnedFd) -> io::Result<libc::pid_t> {
    // SAFETY: ucred is plain data, filled in by getsockopt.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED into a ucred of the given length.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}

/// One descriptor passed with `SCM_RIGHTS` on `conn` (blocking).
fn receive_fd(conn: &OwnedFd) -> io::Result<OwnedFd> {
    let mut data = [0u8; 64];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // Room for a few descriptors: more than one is refused (all closed).
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: msg points to buffers we own, of the sizes given.
        let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 && fds.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the container sent no terminal"));
    }
    match (fds.pop(), fds.is_empty()) {
        (Some(fd), true) => Ok(fd),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "the container sent no terminal, or more than one")),
    }
}

/// A pty master answers `TIOCGPTN` (its slave's number); nothing else does.
fn check_master(fd: &OwnedFd) -> io::Result<()> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the container's terminal is not a pty master"));
    }
    Ok(())
}

/// The host terminal (ces's stdin) in raw mode while this lives.
pub(crate) struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on ces's stdin, a terminal.
    pub(crate) fn enable() -> io::Result<RawMode> {
        // SAFETY: termios is plain data, filled in by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr into a termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr from a termios we own.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // After what was already written has gone out (TCSADRAIN), so that
        // the container's last output is shown as it meant it.
        // SAFETY: tcsetattr from the termios saved in enable().
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSADRAIN, &self.saved) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot restore the terminal (run `stty sane`)");
        }
    }
}

/// Copies the host terminal's window size to the pty, now and on every
/// `SIGWINCH` (blocked in this thread while this lives, and read from a
/// signalfd in the wait's `poll`).
pub(crate) struct Resize {
    signals: OwnedFd,
    master: OwnedFd,
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl Resize {
    /// Watches `SIGWINCH` for `master` (a descriptor of the pty master) and
    /// sets its size now.
    pub(crate) fn new(master: OwnedFd) -> io::Result<Resize> {
        let set = super::init::signal_set(std::iter::once(libc::SIGWINCH));
        // SAFETY: sigset_t is plain data, filled in by pthread_sigmask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; affects the calling thread only.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // Built before the fallible steps, so that its Drop restores the mask.
        let signals = match super::wait::signalfd(&set) {
            Ok(fd) => fd,
            Err(e) => {
                // SAFETY: restoring the mask saved above.
                unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
                return Err(e);
            }
        };
        let resize = Resize { signals, master, set, old };
        resize.copy_size();
        Ok(resize)
    }

    /// The signalfd to poll.
    pub(crate) fn fd(&self) -> RawFd {
        self.signals.as_raw_fd()
    }

    /// After `poll` said [`Self::fd`] is readable: consumes the signals and
    /// copies the size once.
    pub(crate) fn on_signal(&self) {
        while let Ok(Some(_)) = super::wait::read_signal(&self.signals) {}
        self.copy_size();
    }

    /// The host terminal's size onto the pty (nothing if it has none).
    fn copy_size(&self) {
        // SAFETY: winsize is plain data, filled in by TIOCGWINSZ.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ into a winsize we own; TIOCSWINSZ from it.
        unsafe {
            if libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_row > 0 && size.ws_col > 0 {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size);
            }
        }
    }
}

impl Drop for Resize {
    fn drop(&mut self) {
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: consuming pending SIGWINCHs (a zero timeout polls), then
        // restoring the mask saved in new().
        unsafe {
            while libc::sigtimedwait(&self.set, std::ptr::null_mut(), &zero) > 0 {}
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The master arrives from this process; a plain file is refused.
    #[test]
    fn a_pty_master_passes_and_a_file_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        for pty in [true, false] {
            let socket = ConsoleSocket::bind(dir.path()).expect("bind");
            let client = std::os::unix::net::UnixStream::connect(socket.path()).expect("connect");
            let sent: OwnedFd = if pty {
                // SAFETY: a new descriptor (checked), which we own.
                let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_CLOEXEC) };
                assert!(fd >= 0, "posix_openpt");
                // SAFETY: as above.
                unsafe { OwnedFd::from_raw_fd(fd) }
            } else {
                std::fs::File::open("/dev/null").expect("null").into()
            };
            let fds = [sent.as_raw_fd()];
            let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
            let iov = [io::IoSlice::new(b"/dev/ptmx")];
            nix::sys::socket::sendmsg::<()>(client.as_raw_fd(), &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
                .expect("sendmsg");
            let got = socket.receive_master();
            assert_eq!(got.is_ok(), pty, "{got:?}");
            assert!(!dir.path().join(SOCKET_NAME).exists(), "the socket file is removed");
        }
    }

    /// A closed connection (an init that died) ends the wait with an error.
    #[test]
    fn no_master_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = ConsoleSocket::bind(dir.path()).expect("bind");
        drop(std::os::unix::net::UnixStream::connect(socket.path()).expect("connect"));
        assert!(socket.receive_master().is_err());
    }
}
