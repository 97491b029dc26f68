//! Waiting for the container while passing on SIGINT, SIGTERM, SIGHUP and
//! SIGQUIT, and relaying its standard streams.
//!
//! The signals are blocked in the thread that runs the container from before
//! the build until after the cleanup ([`SignalBlock`]), and read from a
//! `signalfd` next to a pidfd of the container's init: one `poll` wakes for
//! either, with no handler and no polling interval. A signal sent to the ces
//! process (rather than to this thread) reaches the signalfd only if every
//! other thread blocks it too: the `ces` binary runs containers from a
//! single-threaded process.
//!
//! A forwarded signal starts the stop timeout: a workload still running when
//! it runs out is killed, with the whole container (SIGKILL to its PID 1
//! ends its PID namespace), as `docker stop` does.
//!
//! The container never holds ces's own stdin, stdout or stderr: those are
//! file descriptions of the host (a log file, a terminal) that it could
//! reopen through `/proc/self/fd` to read, truncate or type into. It gets
//! pipes, and the same `poll` relays them ([`Streams`]): its output to ces's
//! stdout and stderr, and (with `-i`) ces's stdin to it, closed at end of
//! file. Writes go out only when `poll` says the destination takes them, so
//! a slow reader holds back the container, never the signal forwarding.
//! Once the init has ended (and with it, every process of the container),
//! what is left in the pipes is drained.
//!
//! With `-t` the container's stdio is a pty of its own instead ([`super::tty`]):
//! the same pumps copy the pty master to ces's stdout and (with `-i`) ces's
//! stdin to the master, and the `poll` also wakes for `SIGWINCH` to pass the
//! host terminal's new size on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// The signals ces forwards to the container (each ends a process by
/// default, and so starts the stop timeout).
pub(crate) const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT in the calling thread for good. A
/// program that runs containers and has (or will have) other threads calls
/// this first thing in `main`, before any thread exists: threads inherit the
/// mask, so a signal sent to the process can only be taken by the thread
/// that runs a container, which forwards it; otherwise the kernel may hand
/// it to another thread, and its default action ends the process, leaving
/// the container to [`cleanup_stale`](super::cleanup_stale).
///
/// SIGCHLD gets its default action back too: ignored (as a parent may leave
/// it, across `exec`), the kernel would reap ces's helper children itself,
/// and their pids could be another process's by the time ces signals or
/// moves them.
pub fn block_forwarded_signals() -> io::Result<()> {
    // SAFETY: setting a standard disposition; no handler is installed.
    if unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    // Leaks the guard on purpose: the mask stays.
    std::mem::forget(SignalBlock::new()?);
    Ok(())
}

/// Unblocks what [`block_forwarded_signals`] blocked, in the calling thread
/// (and the programs it starts from now on): for a ces that runs no
/// container itself (a Slurm submission it waits for), where a `^C` must
/// simply end it.
pub fn unblock_forwarded_signals() -> io::Result<()> {
    let set = super::init::signal_set(FORWARDED.into_iter());
    // SAFETY: pthread_sigmask with a valid set; no old mask asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// The forwarded signals pending for a process that blocks them
/// ([`block_forwarded_signals`]), for work ces does after its container has
/// ended (sealing the outputs) that a signal should cut short. A signal read
/// is consumed.
#[derive(Debug)]
pub struct ForwardedSignals {
    fd: OwnedFd,
}

impl ForwardedSignals {
    /// Watches [`FORWARDED`] through a non-blocking signalfd.
    pub fn new() -> io::Result<ForwardedSignals> {
        let set = super::init::signal_set(FORWARDED.into_iter());
        Ok(ForwardedSignals { fd: signalfd(&set)? })
    }

    /// The next pending signal, if one has arrived (an error reading the
    /// signalfd cannot mean one did).
    pub fn pending(&self) -> Option<i32> {
        read_signal(&self.fd).ok().flatten()
    }
}

/// The signals of a set blocked in the calling thread, besides those it
/// blocked already, while this lives; its mask as it was after.
pub(crate) struct MaskGuard {
    old: libc::sigset_t,
}

impl MaskGuard {
    pub(crate) fn block(set: &libc::sigset_t) -> io::Result<MaskGuard> {
        // SAFETY: sigset_t is plain data, filled in by pthread_sigmask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; affects the calling thread only.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, &mut old) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(MaskGuard { old })
    }
}

impl Drop for MaskGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the mask saved in block().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// [`FORWARDED`] blocked in the calling thread while this lives; what
/// arrived meanwhile is consumed before the mask is restored.
pub(crate) struct SignalBlock {
    set: libc::sigset_t,
    /// Restores the mask, after `drop` has drained (fields drop last).
    _mask: MaskGuard,
}

impl SignalBlock {
    pub(crate) fn new() -> io::Result<SignalBlock> {
        let set = super::init::signal_set(FORWARDED.into_iter());
        let mask = MaskGuard::block(&set)?;
        Ok(SignalBlock { set, _mask: mask })
    }

    /// A non-blocking signalfd for the blocked signals.
    pub(crate) fn signalfd(&self) -> io::Result<OwnedFd> {
        signalfd(&self.set)
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
        // Still blocked: `_mask` restores the mask once this has run.
        self.drain();
    }
}

/// How the init process ended, and what ces forwarded to it meanwhile.
pub(crate) struct Ended {
    pub status: WaitStatus,
    pub forwarded: Vec<i32>,
    /// The container outlived the stop timeout and was killed.
    pub killed: bool,
}

/// The size of one read from a stream.
const CHUNK: usize = 64 * 1024;

/// One stream being copied from `from` to `to`.
struct Pump {
    from: RawFd,
    to: RawFd,
    /// Our end of the container's pipe (`from` or `to`): closed when the
    /// pump is dropped (the container then sees end of file on stdin, or a
    /// broken pipe).
    _pipe: OwnedFd,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written.
    written: usize,
    /// At most this much per write: a pipe or socket that `poll` says is
    /// writable takes `PIPE_BUF` bytes without blocking.
    write_max: usize,
    /// Nothing more to read.
    eof: bool,
    /// Stopped (end of file and all written, or a failed write).
    done: bool,
    /// ces's stdin to the container (stops when the container ends).
    is_stdin: bool,
}

impl Pump {
    fn new(from: RawFd, to: RawFd, owned: OwnedFd, is_stdin: bool) -> Pump {
        // SAFETY: stat is plain data, filled in by fstat.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of a descriptor, into a buffer we own.
        let kind = if unsafe { libc::fstat(to, &mut stat) } == 0 { stat.st_mode & libc::S_IFMT } else { 0 };
        let write_max = if matches!(kind, libc::S_IFIFO | libc::S_IFSOCK) { libc::PIPE_BUF } else { CHUNK };
        Pump { from, to, _pipe: owned, buffer: Vec::new(), written: 0, write_max, eof: false, done: false, is_stdin }
    }

    fn pending(&self) -> bool {
        self.written < self.buffer.len()
    }

    /// The descriptor and event to wait for, if any.
    fn interest(&self) -> Option<(RawFd, libc::c_short)> {
        match (self.done, self.pending(), self.eof) {
            (true, _, _) | (false, false, true) => None,
            (false, true, _) => Some((self.to, libc::POLLOUT)),
            (false, false, false) => Some((self.from, libc::POLLIN)),
        }
    }

    /// Reads once into the empty buffer; `false`: nothing to read now.
    fn fill(&mut self) -> bool {
        self.buffer.resize(CHUNK, 0);
        self.written = 0;
        // SAFETY: reading into a buffer of CHUNK bytes we own.
        let n = unsafe { libc::read(self.from, self.buffer.as_mut_ptr().cast(), CHUNK) };
        if n < 0 {
            self.buffer.clear();
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => return false,
                // A source that fails (ces's stdin closed) ends its stream.
                _ => self.eof = true,
            }
        } else {
            self.buffer.truncate(n as usize);
            self.eof = n == 0;
        }
        true
    }

    /// Writes once from the buffer.
    fn flush(&mut self) {
        let end = self.buffer.len().min(self.written + self.write_max);
        let chunk = &self.buffer[self.written..end];
        // SAFETY: writing a slice of our buffer.
        let n = unsafe { libc::write(self.to, chunk.as_ptr().cast(), chunk.len()) };
        if n >= 0 {
            self.written += n as usize;
            return;
        }
        let e = io::Error::last_os_error();
        if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
            // The destination is gone (EPIPE: ces's reader closed it, or the
            // container closed its stdin): the rest is dropped.
            self.done = true;
        }
    }

    /// Moves the stream on after `poll` reported `revents` for [`Self::interest`].
    fn step(&mut self, revents: libc::c_short) {
        if revents == 0 || self.done {
            return;
        }
        if self.pending() {
            if revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
                self.flush();
            }
        } else {
            self.fill();
        }
        if self.eof && !self.pending() {
            self.done = true;
        }
    }
}

/// The container's standard streams, relayed while it runs.
pub(crate) struct Streams {
    pumps: Vec<Pump>,
    /// The container has ended: what is left in the pipes is read without
    /// waiting for more.
    ended: bool,
    /// With a terminal: its size kept to the host terminal's.
    resize: Option<super::tty::Resize>,
}

impl Streams {
    /// `stdout` and `stderr`: the read ends of the container's output pipes
    /// (made non-blocking here), relayed to `out` and `err`; `stdin`: ces's
    /// input and the write end of the container's stdin pipe.
    pub(crate) fn new(
        stdout: (OwnedFd, RawFd),
        stderr: (OwnedFd, RawFd),
        stdin: Option<(RawFd, OwnedFd)>,
    ) -> io::Result<Streams> {
        let mut pumps = Vec::with_capacity(3);
        for (read, to) in [stdout, stderr] {
            set_nonblocking(&read)?;
            pumps.push(Pump::new(read.as_raw_fd(), to, read, false));
        }
        if let Some((from, write)) = stdin {
            set_nonblocking(&write)?;
            pumps.push(Pump::new(from, write.as_raw_fd(), write, true));
        }
        Ok(Streams { pumps, ended: false, resize: None })
    }

    /// A terminal's streams: the pty `master` to `out`, and (`input`) ces's
    /// stdin to the master, which follows the host terminal's size.
    pub(crate) fn terminal(master: OwnedFd, out: RawFd, input: Option<RawFd>) -> io::Result<Streams> {
        // Non-blocking for every descriptor of the master (one open file).
        set_nonblocking(&master)?;
        let resize = super::tty::Resize::new(master.try_clone()?)?;
        let mut pumps = Vec::with_capacity(2);
        if let Some(from) = input {
            let write = master.try_clone()?;
            pumps.push(Pump::new(from, write.as_raw_fd(), write, true));
        }
        pumps.push(Pump::new(master.as_raw_fd(), out, master, false));
        Ok(Streams { pumps, ended: false, resize: Some(resize) })
    }

    /// The container has ended: stdin stops, outputs are read to their end
    /// without waiting for more (every writer in the container is gone; a
    /// copy held outside must not keep ces waiting).
    fn container_ended(&mut self) {
        self.ended = true;
        for pump in &mut self.pumps {
            pump.done |= pump.is_stdin;
        }
    }

    /// After the end: refills every empty buffer, or ends its stream.
    fn drain(&mut self) {
        for pump in self.pumps.iter_mut().filter(|p| !p.done && !p.pending()) {
            if !pump.fill() {
                pump.eof = true;
            }
            pump.done = pump.eof && !pump.pending();
        }
    }

    /// Closes the pipes of the streams that have stopped; true when none is left.
    fn close_finished(&mut self) -> bool {
        self.pumps.retain(|p| !p.done);
        self.pumps.is_empty()
    }
}

/// Waits for `init` (a child of this process) to end, forwarding every
/// signal read from `signals` to it, killing it `stop_timeout` after the
/// first, and relaying `streams`. Returns once the init has ended and its
/// output is relayed (or, after it ended, on a signal: ces is being stopped).
pub(crate) fn wait_for_exit(
    init: Pid,
    signals: &OwnedFd,
    mut streams: Streams,
    stop_timeout: Duration,
) -> io::Result<Ended> {
    let pidfd = pidfd_open(init)?;
    let mut forwarded = Vec::new();
    let mut deadline: Option<Instant> = None;
    let mut killed = false;
    let mut status: Option<WaitStatus> = None;
    loop {
        if streams.ended {
            streams.drain();
        }
        if streams.close_finished()
            && let Some(status) = status
        {
            return Ok(Ended { status, forwarded, killed });
        }
        let mut fds = vec![libc::pollfd { fd: signals.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if status.is_none() {
            fds.push(libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        let resize_slot = streams.resize.as_ref().map(|resize| {
            fds.push(libc::pollfd { fd: resize.fd(), events: libc::POLLIN, revents: 0 });
            fds.len() - 1
        });
        let first_pump = fds.len();
        let watched: Vec<usize> = streams
            .pumps
            .iter()
            .enumerate()
            .filter_map(|(i, pump)| {
                let (fd, events) = pump.interest()?;
                fds.push(libc::pollfd { fd, events, revents: 0 });
                Some(i)
            })
            .collect();
        let timeout = match (deadline, status, killed) {
            (Some(at), None, false) => {
                let left = at.saturating_duration_since(Instant::now());
                i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX)
            }
            _ => -1,
        };
        // SAFETY: a valid array of pollfds of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            while let Some(signal) = read_signal(signals)? {
                if let Some(status) = status {
                    // The container is gone; ces is asked to stop: the
                    // output not yet relayed is dropped.
                    return Ok(Ended { status, forwarded, killed });
                }
                // The init blocks and forwards these; ESRCH means it just ended.
                // SAFETY: signalling our own child.
                unsafe { libc::kill(init.as_raw(), signal) };
                forwarded.push(signal);
                deadline.get_or_insert_with(|| Instant::now() + stop_timeout);
            }
        }
        if let (Some(slot), Some(resize)) = (resize_slot, &streams.resize)
            && fds[slot].revents & libc::POLLIN != 0
        {
            resize.on_signal();
        }
        for (slot, &i) in watched.iter().enumerate() {
            streams.pumps[i].step(fds[first_pump + slot].revents);
        }
        if !killed && status.is_none() && deadline.is_some_and(|at| Instant::now() >= at) {
            // SIGKILL to the PID namespace's init kills every process in it.
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(init.as_raw(), libc::SIGKILL) };
            killed = true;
        }
        if status.is_none() && fds[1].revents & libc::POLLIN != 0 {
            // The init was cloned with no exit signal: only __WALL waits for it.
            let ended = loop {
                match waitpid(init, Some(WaitPidFlag::__WALL)) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other.map_err(io::Error::from)?,
                }
            };
            status = Some(ended);
            streams.container_ended();
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; only this end's file
    // description changes (a pipe's two ends have one each).
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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

/// A non-blocking signalfd for `set`.
pub(super) fn signalfd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: valid set pointer; a new descriptor is returned or -1.
    let fd = unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn read_signal(fd: &OwnedFd) -> io::Result<Option<i32>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocked SIGTERM raised in this thread is seen once (it is consumed),
    /// and nothing before it.
    #[test]
    fn a_pending_forwarded_signal_is_seen_once() {
        let block = SignalBlock::new().expect("block");
        let watch = ForwardedSignals::new().expect("signalfd");
        assert_eq!(watch.pending(), None);
        // SAFETY: raising a signal this thread blocks: it stays pending.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert_eq!(watch.pending(), Some(libc::SIGTERM));
        assert_eq!(watch.pending(), None, "consumed");
        drop(block);
    }
}
