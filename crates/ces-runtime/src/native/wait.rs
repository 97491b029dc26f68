//! Waiting for the container while passing on SIGINT, SIGTERM and SIGHUP.
//!
//! The signals are blocked in the thread that runs the container from before
//! the build until after the cleanup ([`SignalBlock`]), and read from a
//! `signalfd` next to a pidfd of the container's init: one `poll` wakes for
//! either, with no handler and no polling interval. A signal sent to the ces
//! process (rather than to this thread) reaches the signalfd only if every
//! other thread blocks it too: the `ces` binary runs containers from a
//! single-threaded process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// The signals ces forwards to the container.
pub(crate) const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread for good. A
/// program that runs containers and has (or will have) other threads calls
/// this first thing in `main`, before any thread exists: threads inherit the
/// mask, so a signal sent to the process can only be taken by the thread
/// that runs a container, which forwards it; otherwise the kernel may hand
/// it to another thread, and its default action ends the process, leaving
/// the container to [`cleanup_stale`](super::cleanup_stale).
pub fn block_forwarded_signals() -> io::Result<()> {
    // Leaks the guard on purpose: the mask stays.
    std::mem::forget(SignalBlock::new()?);
    Ok(())
}

/// [`FORWARDED`] blocked in the calling thread while this lives.
pub(crate) struct SignalBlock {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl SignalBlock {
    pub(crate) fn new() -> io::Result<SignalBlock> {
        let set = super::init::signal_set(FORWARDED.into_iter());
        // SAFETY: sigset_t is plain data, filled in by pthread_sigmask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; affects the calling thread only.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(SignalBlock { set, old })
    }

    /// A non-blocking signalfd for the blocked signals.
    pub(crate) fn signalfd(&self) -> io::Result<OwnedFd> {
        // SAFETY: valid set pointer; a new descriptor is returned or -1.
        let fd = unsafe { libc::signalfd(-1, &self.set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Consumes the signals pending for this thread, so that restoring the
    /// mask does not deliver them: they were meant for the container, which
    /// has ended.
    fn drain(&self) {
        // SAFETY: a zero timeout polls; valid pointers.
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: as above.
        while unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &zero) } > 0 {}
    }
}

impl Drop for SignalBlock {
    fn drop(&mut self) {
        self.drain();
        // SAFETY: restoring the mask saved in new().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// How the init process ended, and what ces forwarded to it meanwhile.
pub(crate) struct Ended {
    pub status: WaitStatus,
    pub forwarded: Vec<i32>,
}

/// Waits for `init` (a child of this process) to end, forwarding every
/// signal read from `signals` to it.
pub(crate) fn wait_for_exit(init: Pid, signals: &OwnedFd) -> io::Result<Ended> {
    let pidfd = pidfd_open(init)?;
    let mut forwarded = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: signals.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: valid array of two pollfds; no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            while let Some(signal) = read_signal(signals)? {
                // The init blocks and forwards these; ESRCH means it just ended.
                // SAFETY: signalling our own child.
                unsafe { libc::kill(init.as_raw(), signal) };
                forwarded.push(signal);
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // The init was cloned with no exit signal: only __WALL waits for it.
            let status = loop {
                match waitpid(init, Some(WaitPidFlag::__WALL)) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other.map_err(io::Error::from)?,
                }
            };
            return Ok(Ended { status, forwarded });
        }
    }
}

fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn read_signal(fd: &OwnedFd) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading into a buffer of the right size.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    if n as usize != size {
        return Ok(None);
    }
    Ok(Some(info.ssi_signo as i32))
}
