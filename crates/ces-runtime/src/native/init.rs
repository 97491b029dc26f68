//! `ces-init`: the container's PID 1.
//!
//! libcontainer runs an [`Executor`] in the container's init process once it
//! is fully set up (inside every namespace, user switched, capabilities
//! dropped, seccomp loaded) instead of `exec`ing the workload there. Ours
//! forks: the child `exec`s the workload, and the parent stays PID 1, the way
//! `tini` or `docker run --init` do:
//!
//! - first it brings the loopback interface up (a new network namespace
//!   starts with `lo` down), with the `CAP_NET_ADMIN` the spec grants it for
//!   that alone, then drops that capability and `CAP_SETFCAP` (for the
//!   nested user namespace below) from the bounding set, and from the others
//!   before the workload exists (ces itself cannot bring `lo` up rootless:
//!   the init is not dumpable, so its `/proc/<pid>/ns` stays closed to an
//!   unprivileged ces);
//! - it starts the workload as the container's user: root of the
//!   container's user namespace as it is, any other user in a nested user
//!   namespace of its own that maps that user's id to the container's root
//!   (which is the invoking host user: a single id maps the whole way down),
//!   then switched to it, then under the default seccomp profile (loaded
//!   here, after the nested namespace, since the profile forbids creating
//!   one);
//! - with a terminal (`-t`), it hands the pty (its stdio, made its
//!   controlling terminal by libcontainer) to the workload: PID 1 gives it up
//!   (`TIOCNOTTY`), the workload makes a session of its own (`setsid`) and
//!   takes it (`TIOCSCTTY`), so that its process group is the terminal's
//!   foreground: `^C` on the terminal is its `SIGINT` (and PID 1's never);
//! - it reaps every process re-parented to it (no zombies pile up);
//! - it forwards SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1 and SIGUSR2 to the
//!   workload (a PID 1 with no handler would ignore them);
//! - when the workload ends it reports how on a pipe to ces (exit code or
//!   signal, which an exit status alone cannot tell apart: PID 1 cannot die
//!   of a signal it raises itself) and exits with the code, or 128 + the
//!   signal; the kernel then kills whatever is left in the PID namespace.
//!
//! PID 1 is a copy of the ces process that never `exec`s, so it hides what it
//! inherited: it closes every file descriptor but the report pipe, makes
//! itself non-dumpable (its memory and `/proc/1/{fd,exe,environ}` stay out of
//! the workload's reach), keeps only `CAP_KILL`, and overwrites its command
//! line (`/proc/1/cmdline` is readable by all) with `ces-init`.
//!
//! Signals forwarded by ces before PID 1 is ready are not lost: ces blocks
//! them in the thread that builds the container, so the init process starts
//! with them blocked and they wait, pending, until PID 1 collects them.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// The signals PID 1 passes on to the workload.
pub(crate) const FORWARDED: [libc::c_int; 6] =
    [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2];

/// How the workload ended, as PID 1 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
    /// It could not be executed (`errno`); it then exits 126 or 127.
    ExecFailed(i32),
    /// The loopback interface could not be brought up (`errno`); the
    /// workload was not started.
    LoopbackFailed(i32),
    /// The workload could not switch to the container's user, or load the
    /// seccomp profile (`errno`); it was not started.
    UserFailed(i32),
    /// The workload could not take the terminal (`errno`); it was not started.
    TerminalFailed(i32),
}

impl Report {
    const LEN: usize = 5;

    fn encode(self) -> [u8; Self::LEN] {
        let (kind, value) = match self {
            Report::Exited(code) => (1u8, code),
            Report::Signaled(signal) => (2, signal),
            Report::ExecFailed(errno) => (3, errno),
            Report::LoopbackFailed(errno) => (4, errno),
            Report::UserFailed(errno) => (5, errno),
            Report::TerminalFailed(errno) => (6, errno),
        };
        let v = value.to_le_bytes();
        [kind, v[0], v[1], v[2], v[3]]
    }

    /// Every report in `bytes`, in order.
    pub(crate) fn decode_all(bytes: &[u8]) -> Vec<Report> {
        bytes
            .chunks_exact(Self::LEN)
            .filter_map(|c| {
                let value = i32::from_le_bytes([c[1], c[2], c[3], c[4]]);
                match c[0] {
                    1 => Some(Report::Exited(value)),
                    2 => Some(Report::Signaled(value)),
                    3 => Some(Report::ExecFailed(value)),
                    4 => Some(Report::LoopbackFailed(value)),
                    5 => Some(Report::UserFailed(value)),
                    6 => Some(Report::TerminalFailed(value)),
                    _ => None,
                }
            })
            .collect()
    }
}

/// The executor.
#[derive(Clone)]
pub(crate) struct CesInit {
    /// The write end of the report pipe, inherited (close-on-exec) from ces
    /// through libcontainer's clones.
    report_fd: RawFd,
    /// The workload's user, if not root.
    user: Option<(u32, u32)>,
    /// The effective and permitted capabilities a root workload keeps.
    workload_capabilities: u64,
    /// The seccomp profile, compiled (see [`super::seccomp::compiled`]).
    seccomp: Vec<libc::sock_filter>,
    /// `ces test`: the socket to hand the observed network device to ces on
    /// (see [`super::observe`]).
    tun_socket: Option<RawFd>,
    /// Published ports: the socket to send the namespaces to ces on (see
    /// [`super::ports`]).
    ports_socket: Option<RawFd>,
    /// Whether the container's user namespace maps the workload's user
    /// (root mode's block, see [`super::idmap`]): the workload then switches
    /// to it directly, instead of in a user namespace of its own.
    user_mapped: bool,
}

impl CesInit {
    pub(crate) fn new(
        report_fd: RawFd,
        user: (u32, u32),
        workload_capabilities: u64,
        seccomp: Vec<libc::sock_filter>,
        tun_socket: Option<RawFd>,
    ) -> CesInit {
        let user = (user != (0, 0)).then_some(user);
        CesInit { report_fd, user, workload_capabilities, seccomp, tun_socket, ports_socket: None, user_mapped: false }
    }

    /// Sends the container's user and network namespaces on `socket` before
    /// the workload exists (published ports).
    pub(crate) fn with_ports_socket(mut self, socket: Option<RawFd>) -> CesInit {
        self.ports_socket = socket;
        self
    }

    /// The workload's user is mapped in the container (root mode's block).
    pub(crate) fn with_user_mapped(mut self, mapped: bool) -> CesInit {
        self.user_mapped = mapped;
        self
    }
}

impl Executor for CesInit {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec.process().as_ref().and_then(|p| p.args().as_ref()).ok_or(ExecutorError::InvalidArg)?;
        let argv: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        if argv.is_empty() {
            return Err(ExecutorError::InvalidArg);
        }
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());

        if let Err(e) = loopback_up() {
            write_report(self.report_fd, Report::LoopbackFailed(e.raw_os_error().unwrap_or(libc::EIO)));
            return Err(ExecutorError::Other(format!("cannot bring up the loopback interface: {e}")));
        }
        // With CAP_NET_ADMIN still held; the workload never sees the socket
        // (closed below) nor the device (handed over, then closed here).
        if let Some(socket) = self.tun_socket {
            super::observe::hand_over_tun(socket)
                .map_err(|e| ExecutorError::Other(format!("cannot create the observed network device: {e}")))?;
        }
        if let Some(socket) = self.ports_socket {
            super::ports::hand_over_namespaces(socket)
                .map_err(|e| ExecutorError::Other(format!("cannot hand over the network namespace: {e}")))?;
        }
        // A root workload keeps the container's capabilities (without the
        // setup ones); another user keeps only CAP_SETFCAP until it has its
        // own user namespace, and has none once it switches to its user.
        // Mapped here (root mode's block), it switches with CAP_SETUID and
        // CAP_SETGID, and PID 1 keeps CAP_KILL to pass signals on to it (it
        // is another uid than PID 1's).
        let keep = match self.user {
            None => self.workload_capabilities,
            // Root with another group: as root (the group alone changes).
            Some((0, _)) if self.user_mapped => self.workload_capabilities,
            Some(_) if self.user_mapped => {
                1 << super::oci::CAP_SETUID | 1 << super::oci::CAP_SETGID | 1 << super::oci::CAP_KILL
            }
            Some(_) => 1 << super::oci::CAP_SETFCAP,
        };
        drop_setup_capabilities(keep)
            .map_err(|e| ExecutorError::Other(format!("cannot drop the setup capabilities: {e}")))?;
        if self.user.is_none() {
            // Loaded once, here, and inherited by the workload (`ces test`:
            // its notifications go to ces's watcher).
            load_workload_seccomp(&self.seccomp, self.tun_socket)
                .map_err(|e| ExecutorError::Other(format!("seccomp: {e}")))?;
        }

        // Before the workload exists, so that it never sees ces's arguments
        // or descriptors in PID 1. `ces test` with a user to switch to: the
        // observe socket stays until the workload has sent its filter's
        // listener on it (closed in both processes then).
        let observe_socket = self.tun_socket.filter(|_| self.user.is_some());
        hide_from_workload(self.report_fd, observe_socket);

        let waited = signal_set(FORWARDED.iter().copied().chain([libc::SIGCHLD]));
        // SAFETY: sigprocmask with valid pointers; the init process has one thread.
        if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &waited, std::ptr::null_mut()) } != 0 {
            return Err(ExecutorError::Other(format!("sigprocmask: {}", io::Error::last_os_error())));
        }
        let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        // The devices' groups (root mode's block only: see `oci`).
        let groups: Vec<libc::gid_t> =
            spec.process().as_ref().and_then(|p| p.user().additional_gids().clone()).unwrap_or_default();
        if terminal && let Err(e) = release_terminal() {
            write_report(self.report_fd, Report::TerminalFailed(e.raw_os_error().unwrap_or(libc::EIO)));
            return Err(ExecutorError::Other(format!("cannot hand the terminal to the workload: {e}")));
        }
        // Die with ces: a workload must not outlive the process that
        // accounts for it (ces's parent thread is our parent).
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };

        // SAFETY: the init process is single-threaded, so the child may do
        // anything before it execs.
        match unsafe { libc::fork() } {
            -1 => Err(ExecutorError::Other(format!("fork: {}", io::Error::last_os_error()))),
            0 => {
                if terminal && let Err(e) = take_terminal() {
                    write_report(self.report_fd, Report::TerminalFailed(e.raw_os_error().unwrap_or(libc::EPERM)));
                    // SAFETY: see run_workload.
                    unsafe { libc::_exit(126) }
                }
                if let Some((uid, gid)) = self.user
                    && let Err(e) = if self.user_mapped {
                        switch_user(uid, gid, &groups, &self.seccomp, observe_socket)
                    } else {
                        become_user(uid, gid, &self.seccomp, observe_socket)
                    }
                {
                    write_report(self.report_fd, Report::UserFailed(e.raw_os_error().unwrap_or(libc::EPERM)));
                    // SAFETY: see run_workload.
                    unsafe { libc::_exit(126) }
                }
                run_workload(&argv_ptrs, self.report_fd)
            }
            child => {
                if let Some(socket) = observe_socket {
                    // SAFETY: closing our copy of the inherited socket.
                    unsafe { libc::close(socket) };
                }
                if self.user.is_some() {
                    // PID 1 runs under the profile too; failing that, it
                    // must not go on without it.
                    if load_seccomp(&self.seccomp).is_err() {
                        // SAFETY: killing our own child, then exiting.
                        unsafe {
                            libc::kill(child, libc::SIGKILL);
                            libc::_exit(126)
                        }
                    }
                }
                supervise(child, self.report_fd, &waited)
            }
        }
    }

    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        // A missing command is reported by the workload's exec (exit 127,
        // as docker and podman do), not as a failure to create the container.
        Ok(())
    }
}

/// PID 1 gives up its controlling terminal (the pty), so that the workload
/// can take it. The kernel then sends `SIGHUP` to PID 1's process group (PID
/// 1 alone: the workload does not exist yet); blocked here, it is pending,
/// and consumed: it is not for the workload. One sent by ces (from outside
/// the PID namespace: `si_pid` 0) is raised again, to be passed on.
fn release_terminal() -> io::Result<()> {
    // SAFETY: TIOCNOTTY takes no argument.
    if unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCNOTTY) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hup = signal_set(std::iter::once(libc::SIGHUP));
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: siginfo_t is plain data, filled in by sigtimedwait.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; a zero timeout polls.
    if unsafe { libc::sigtimedwait(&hup, &mut info, &zero) } == libc::SIGHUP
        // SAFETY: si_pid is valid for a signal sent by kill() or the kernel's pgrp kill.
        && unsafe { info.si_pid() } != std::process::id() as libc::pid_t
    {
        // SAFETY: raising a signal this process blocks: it stays pending.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    }
    Ok(())
}

/// The workload (forked, not yet a process group leader) makes a session of
/// its own and takes the pty on its stdin as its controlling terminal.
fn take_terminal() -> io::Result<()> {
    // SAFETY: plain setsid and TIOCSCTTY (0: never steal a terminal).
    unsafe {
        if libc::setsid() < 0 || libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Moves the calling (forked, single-threaded) process into a new user
/// namespace where `uid`:`gid` is the only id, mapped to this namespace's
/// root, switches to it, and loads the seccomp profile.
fn become_user(uid: u32, gid: u32, seccomp: &[libc::sock_filter], observe: Option<RawFd>) -> io::Result<()> {
    // Non-dumpable (inherited from PID 1), our /proc files would belong to
    // the host's root, and the id maps could not be written; the workload's
    // exec sets this again anyway.
    // SAFETY: plain prctl and unshare calls.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        if libc::unshare(libc::CLONE_NEWUSER) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Writing our own maps: one id each, our own ids outside (0).
    // Mapping the parent namespace's root needs CAP_SETFCAP at unshare
    // time (Linux >= 5.12), which PID 1 left us for this.
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/gid_map", format!("{gid} 0 1"))?;
    std::fs::write("/proc/self/uid_map", format!("{uid} 0 1"))?;
    // SAFETY: plain set*id calls; single-threaded process.
    unsafe {
        if libc::setresgid(gid, gid, gid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    load_workload_seccomp(seccomp, observe)
}

/// Switches the calling (forked, single-threaded) process to `uid`:`gid`,
/// mapped in the container's user namespace, with no supplementary group
/// but `groups` (the devices'; none of root's: the container's root keeps
/// none of the host's either), and loads the seccomp profile. Leaving uid 0
/// drops every capability.
fn switch_user(
    uid: u32,
    gid: u32,
    groups: &[libc::gid_t],
    seccomp: &[libc::sock_filter],
    observe: Option<RawFd>,
) -> io::Result<()> {
    // SAFETY: plain set*id calls with a valid slice; single-threaded process.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    load_workload_seccomp(seccomp, observe)
}

/// Loads the workload's profile; for `ces test` (`observe`: the socket to
/// ces), with a listener for its user notifications, sent to ces's watcher
/// (see [`super::observe`]), then the socket closed.
fn load_workload_seccomp(program: &[libc::sock_filter], observe: Option<RawFd>) -> io::Result<()> {
    let Some(socket) = observe else { return load_seccomp(program) };
    let listener = seccomp_filter(program, SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
    // SAFETY: the kernel returned a new descriptor, owned here.
    let listener = unsafe { OwnedFd::from_raw_fd(listener) };
    let sent = super::observe::hand_over_listener(socket, &listener);
    // SAFETY: the socket is not needed any more (nor seen by the workload).
    unsafe { libc::close(socket) };
    sent
}

/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`: the filter's user notifications go to
/// a descriptor seccomp(2) returns.
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;

/// Loads the compiled profile into the calling thread (no_new_privs is set
/// by then, as seccomp(2) requires without CAP_SYS_ADMIN).
fn load_seccomp(program: &[libc::sock_filter]) -> io::Result<()> {
    seccomp_filter(program, 0).map(drop)
}

/// seccomp(SECCOMP_SET_MODE_FILTER, `flags`, `program`): its result.
fn seccomp_filter(program: &[libc::sock_filter], flags: libc::c_ulong) -> io::Result<RawFd> {
    let len = u16::try_from(program.len()).map_err(|_| io::Error::other("seccomp program too long"))?;
    let prog = libc::sock_fprog { len, filter: program.as_ptr().cast_mut() };
    // SAFETY: `prog` points to `program`, which outlives the call; the kernel
    // copies the filter and does not keep the pointer.
    let rc = unsafe {
        libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &prog as *const libc::sock_fprog)
    };
    if rc >= 0 { Ok(rc as RawFd) } else { Err(io::Error::last_os_error()) }
}

/// The set of `signals`.
pub(super) fn signal_set(signals: impl Iterator<Item = libc::c_int>) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in signals {
        // SAFETY: valid pointer, valid signal number.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
}

/// The workload: default signal dispositions and an empty mask (both survive
/// `exec`: ces ignores SIGPIPE, and PID 1 blocks what it waits for), then exec.
fn run_workload(argv: &[*const libc::c_char], report_fd: RawFd) -> ! {
    for signal in 1..32 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: resetting a disposition to the default is always valid.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    let empty = signal_set(std::iter::empty());
    // SAFETY: valid pointers; single-threaded process.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
    // SAFETY: argv is a null-terminated array of pointers to C strings that
    // live until exec replaces the process (or we exit).
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOENT);
    write_report(report_fd, Report::ExecFailed(errno));
    // SAFETY: argv[0] is a valid C string.
    let name = unsafe { std::ffi::CStr::from_ptr(argv[0]) }.to_string_lossy();
    let message = format!("ces-init: cannot execute {name}: {}\n", io::Error::from_raw_os_error(errno));
    // SAFETY: writing a buffer we own to stderr.
    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
    let code = if errno == libc::ENOENT || errno == libc::ENOTDIR { 127 } else { 126 };
    // SAFETY: _exit never returns; no destructors or atexit handlers of the
    // ces process image must run here.
    unsafe { libc::_exit(code) }
}

/// PID 1's loop: reap, forward, report, exit.
fn supervise(workload: libc::pid_t, report_fd: RawFd, waited: &libc::sigset_t) -> ! {
    keep_only_cap_kill();
    let mut ended: Option<Report> = None;
    while ended.is_none() {
        // SAFETY: siginfo_t is plain data filled in by the kernel.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers.
        let signal = unsafe { libc::sigwaitinfo(waited, &mut info) };
        if signal == libc::SIGCHLD {
            ended = reap(workload);
        } else if signal > 0 {
            // SAFETY: kill with a pid we forked.
            unsafe { libc::kill(workload, signal) };
        }
    }
    let report = ended.unwrap_or(Report::Exited(0));
    write_report(report_fd, report);
    let code = match report {
        Report::Exited(code) => code,
        Report::Signaled(signal) => 128 + signal,
        Report::ExecFailed(_) | Report::LoopbackFailed(_) | Report::UserFailed(_) | Report::TerminalFailed(_) => 127,
    };
    // SAFETY: see run_workload.
    unsafe { libc::_exit(code) }
}

/// Reaps every child that has ended; returns how the workload ended, if it has.
fn reap(workload: libc::pid_t) -> Option<Report> {
    let mut ended = None;
    loop {
        let mut status = 0;
        // SAFETY: valid pointer; reaping any child of ours.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
        if pid <= 0 {
            return ended;
        }
        if pid == workload {
            if libc::WIFEXITED(status) {
                ended = Some(Report::Exited(libc::WEXITSTATUS(status)));
            } else if libc::WIFSIGNALED(status) {
                ended = Some(Report::Signaled(libc::WTERMSIG(status)));
            }
        }
    }
}

fn write_report(fd: RawFd, report: Report) {
    let bytes = report.encode();
    // SAFETY: writing a buffer we own; a failed write (ces gone) is ignored.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// Leaves PID 1 with nothing the workload could use (its capabilities go
/// after the fork: the workload inherits them): see the module docs.
fn hide_from_workload(report_fd: RawFd, also_keep: Option<RawFd>) {
    let mut keep: Vec<RawFd> = std::iter::once(report_fd).chain(also_keep).filter(|fd| *fd >= 3).collect();
    keep.sort_unstable();
    let mut from = 3;
    for fd in keep {
        if fd > from {
            // SAFETY: close_range on a range of our own descriptors.
            unsafe { libc::syscall(libc::SYS_close_range, from as u32, (fd - 1) as u32, 0u32) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: close_range on the rest of our own descriptors.
    unsafe {
        libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0u32);
    }
    // SAFETY: plain prctl calls.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"ces-init".as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    overwrite_cmdline();
}

/// Sets `lo` up in the (new) network namespace this process is in.
fn loopback_up() -> io::Result<()> {
    interface_up(&inet_socket()?, "lo")
}

/// An `AF_INET` datagram socket, for the interface ioctls (`ifconfig`'s).
pub(super) fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call, checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` naming interface `name` (shorter than `IFNAMSIZ`), all else zero.
pub(super) fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request
}

/// Sets interface `name` up and running, through `socket` ([`inet_socket`]).
pub(super) fn interface_up(socket: &OwnedFd, name: &str) -> io::Result<()> {
    let mut request = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The capability sets of this process (v3 ABI: two 32-bit words each).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn capget() -> io::Result<u64> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header and two data structs, as the ABI says.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32)
}

/// Sets the effective and permitted sets to `mask` (and no inheritable).
fn capset(mask: u64) -> io::Result<()> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let low = mask as u32;
    let high = (mask >> 32) as u32;
    let data = [
        CapData { effective: low, permitted: low, inheritable: 0 },
        CapData { effective: high, permitted: high, inheritable: 0 },
    ];
    // SAFETY: as in capget; only ever drops capabilities.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops the setup capabilities (`CAP_NET_ADMIN`, `CAP_SETFCAP`) from the
/// bounding set, and everything but `keep` from the effective and permitted
/// sets.
fn drop_setup_capabilities(keep: u64) -> io::Result<()> {
    for cap in super::oci::SETUP_CAPABILITIES {
        // SAFETY: plain prctl; needs CAP_SETPCAP, which the spec grants PID 1.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    capset(capget()? & keep)
}

/// PID 1 keeps only `CAP_KILL` (to signal a workload that changed its uid).
fn keep_only_cap_kill() {
    if let Ok(permitted) = capget() {
        let _ = capset(permitted & 1 << super::oci::CAP_KILL);
    }
}

/// Replaces the inherited command line (ces's own arguments) with `ces-init`.
fn overwrite_cmdline() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    let Some((_, fields)) = stat.rsplit_once(')') else { return };
    // Fields after the command name start at field 3; arg_start and arg_end
    // are fields 48 and 49 (proc(5)).
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let (Some(start), Some(end)) = (fields.get(45), fields.get(46)) else { return };
    let (Ok(start), Ok(end)) = (start.parse::<usize>(), end.parse::<usize>()) else { return };
    if start == 0 || end <= start {
        return;
    }
    let title = b"ces-init";
    let len = end - start;
    // SAFETY: [arg_start, arg_end) is this process's own argument area on its
    // initial stack, mapped read-write for its whole life; nothing in PID 1
    // reads the old arguments after this point.
    unsafe {
        std::ptr::write_bytes(start as *mut u8, 0, len);
        std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, title.len().min(len - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let mut bytes = Vec::new();
        let reports = [Report::ExecFailed(2), Report::Exited(3), Report::Signaled(15), Report::LoopbackFailed(1)];
        for r in reports {
            bytes.extend_from_slice(&r.encode());
        }
        assert_eq!(Report::decode_all(&bytes), reports);
    }
}
