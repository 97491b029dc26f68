//! The default seccomp profile: the well-known container default (docker's,
//! also used by podman and containerd), resolved for the capability set ces
//! grants (see [`super::oci::CAPABILITIES`]): none of `CAP_SYS_ADMIN`,
//! `CAP_SYS_PTRACE`, `CAP_SYS_MODULE`, `CAP_SYS_TIME`... so every rule that
//! the default profile only grants with one of those is left out, and the
//! syscalls they cover fail with `EPERM`:
//!
//! - no `mount`, `umount2`, `pivot_root`, `unshare`, `setns`, new mount API,
//!   `clone` with namespace flags (and `clone3` fails with `ENOSYS` so that
//!   libc falls back to `clone`, whose flags can be checked);
//! - no `keyctl`, `add_key`, `request_key` (the kernel keyring is not
//!   namespaced), no `bpf`, `perf_event_open`, `userfaultfd`, `kexec_*`,
//!   `init_module`, `reboot`, `swapon`, `acct`, `quotactl`, `syslog`...;
//! - `socket` for every family but `AF_VSOCK`; `personality` only for the
//!   harmless personas;
//! - in root mode, no setuid or setgid bit on any file: `chmod`, `fchmod`,
//!   `fchmodat(2)`, `open`, `openat`, `creat`, `mknod(at)` with `S_ISUID` or
//!   `S_ISGID` in their mode fail with `EPERM` (`openat2`, whose mode is out
//!   of reach in a struct, with `ENOSYS`: libc falls back to `openat`).
//!   Inside, no new privileges makes such a bit meaningless; on the host,
//!   through a read-write bind, it would not be (in root mode, root's files
//!   in a bind are the container user's: a setuid-root file left in a
//!   read-write `/safe_data` would be root for any local user reaching it).
//!   See [`SetIdModes`].
//!
//! Only the native system call ABI is allowed: on x86_64 the i386 entry
//! points (`int 0x80`, `sysenter`, 32-bit `syscall`) and x32 (numbers with
//! `__X32_SYSCALL_BIT`) kill the process with `SIGSYS`. Their tables are a
//! second, differently shaped way into the kernel (`socketcall` multiplexes
//! every socket call behind one number and a pointer, out of reach of the
//! argument checks above), and no workload of an x86_64 image needs them.
//! Likewise 32-bit Arm on aarch64.
//!
//! libseccomp resolves names per architecture; names it does not know for
//! this one are skipped by libcontainer.

use std::io;
use std::path::Path;

use oci_spec::OciSpecError;

use super::NativeError;
use super::rootfs::annotate;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder,
};

/// Syscalls allowed with any arguments.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Allowed by the default profile on kernels >= 4.8, where seccomp can no
    // longer be bypassed through ptrace: debuggers and profilers work.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
];

/// Allowed on this architecture only.
#[cfg(target_arch = "x86_64")]
const ALLOWED_ARCH: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
const ALLOWED_ARCH: &[&str] =
    &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ALLOWED_ARCH: &[&str] = &[];

/// The personas `personality(2)` may select: `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, `PER_LINUX32|UNAME26`, and the query `0xffffffff`.
const PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`: flags `clone` may not carry.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The system calls that set a file's mode, and the index of their mode
/// argument: allowed only without `S_ISUID` and `S_ISGID`.
const MODE_SETTERS: [(&str, usize); 9] = [
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("fchmodat2", 2),
    ("creat", 1),
    ("open", 2),
    ("openat", 3),
    ("mknod", 1),
    ("mknodat", 2),
];

/// `S_ISUID | S_ISGID`.
const SET_ID_BITS: u64 = 0o6000;

/// `AF_VSOCK`: a channel to the hypervisor, not the container's loopback.
const AF_VSOCK: u64 = 40;

/// What a system call of another ABI than the native one gets: the whole
/// process is killed (`SIGSYS`, exit 159), loudly, rather than a silent
/// error a probing program could step around. libseccomp applies it to
/// x32 numbers on x86_64 too, when x32 is not among the profile's
/// architectures. Part of the cache key (the OCI profile cannot hold it).
const BAD_ARCH: &str = "kill-process";

/// `EPERM`, what a denied syscall returns.
const EPERM: u32 = 1;
/// `ENOSYS`, what `clone3` and `openat2` return (libc then uses `clone`,
/// `openat`).
const ENOSYS: u32 = 38;

/// Whether the profile lets a file's mode have a setuid or setgid bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetIdModes {
    /// As any container profile does: the files are the invoking user's
    /// (rootless, or root for a sudo user), who could set those bits
    /// anyway; refusing them would break `tar -x` of setgid directories.
    Allowed,
    /// Root mode: root's files in a read-write bind are the container
    /// user's, and a setuid or setgid bit would reach the host as root's.
    Refused,
}

/// The profile, for the OCI spec (and podman's, rendered), with `set_id`
/// modes allowed or refused.
pub(crate) fn profile(set_id: SetIdModes) -> Result<LinuxSeccomp, OciSpecError> {
    profile_with(set_id, false)
}

/// The families `socket` may make without a word in `ces test`: local
/// (`AF_UNIX`), IP and netlink.
const REPORTED_EXCEPT: [u64; 4] = [1, 2, 10, 16];

/// [`profile`]; with `report_sockets` (`ces test`), a socket of any other
/// family than [`REPORTED_EXCEPT`] is handed to ces's watcher (a user
/// notification), which records it and lets it go on as [`profile`] would:
/// refused for `AF_VSOCK` (EPERM), left to the kernel otherwise.
fn profile_with(set_id: SetIdModes, report_sockets: bool) -> Result<LinuxSeccomp, OciSpecError> {
    let mut syscalls = vec![allow(ALLOWED.iter().chain(ALLOWED_ARCH).copied())?];
    for persona in PERSONAS {
        syscalls.push(allow_if("personality", 0, persona, None, LinuxSeccompOperator::ScmpCmpEq)?);
    }
    if report_sockets {
        for family in REPORTED_EXCEPT {
            syscalls.push(allow_if("socket", 0, family, None, LinuxSeccompOperator::ScmpCmpEq)?);
        }
        let last = *REPORTED_EXCEPT.iter().max().unwrap_or(&0);
        for family in (0..last).filter(|f| !REPORTED_EXCEPT.contains(f)) {
            syscalls.push(notify_if("socket", family, LinuxSeccompOperator::ScmpCmpEq)?);
        }
        syscalls.push(notify_if("socket", last, LinuxSeccompOperator::ScmpCmpGt)?);
    } else {
        syscalls.push(allow_if("socket", 0, AF_VSOCK, None, LinuxSeccompOperator::ScmpCmpNe)?);
    }
    match set_id {
        SetIdModes::Allowed => syscalls.push(allow(MODE_SETTERS.iter().map(|(name, _)| *name).chain(["openat2"]))?),
        SetIdModes::Refused => {
            // `(mode & (S_ISUID | S_ISGID)) == 0`, written for libcontainer
            // (see `clone` below); openat2's mode is in a struct: ENOSYS,
            // and libc uses openat.
            for (name, mode_arg) in MODE_SETTERS {
                syscalls.push(allow_if(name, mode_arg, 0, Some(SET_ID_BITS), LinuxSeccompOperator::ScmpCmpMaskedEq)?);
            }
            syscalls.push(enosys("openat2")?);
        }
    }
    #[cfg(target_arch = "s390x")]
    let clone_flags_arg = 1;
    #[cfg(not(target_arch = "s390x"))]
    let clone_flags_arg = 0;
    // `(flags & CLONE_NAMESPACE_FLAGS) == 0`. libcontainer 0.7 reads the
    // mask from `valueTwo` and the datum from `value`, the other way round
    // from runc (and from docker's profile file): written for libcontainer.
    syscalls.push(allow_if(
        "clone",
        clone_flags_arg,
        0,
        Some(CLONE_NAMESPACE_FLAGS),
        LinuxSeccompOperator::ScmpCmpMaskedEq,
    )?);
    syscalls.push(enosys("clone3")?);
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

/// Where, under the runtime's state root, compiled profiles are kept.
pub const CACHE_DIR: &str = ".ces-cache";

/// The profile as a BPF program, ready for `seccomp(2)`.
///
/// Compiling it with libseccomp costs ~9 ms, the largest part of a run's
/// start (bench/start), and it never changes: it is compiled once per profile
/// and libseccomp version, and cached as `<cache_dir>/seccomp-<digest>.bpf`
/// (written atomically). The cache lives in the runtime's state root, which
/// belongs to whoever runs ces: rootless, only that user could alter it, and
/// only to weaken the sandbox of code they chose to run themselves.
pub(crate) fn compiled(
    cache_dir: &Path,
    set_id: SetIdModes,
    report_sockets: bool,
) -> Result<Vec<libc::sock_filter>, NativeError> {
    let profile = profile_with(set_id, report_sockets)?;
    let path = cache_dir.join(cache_name(&profile)?);
    if let Some(program) = std::fs::read(&path).ok().and_then(|bytes| parse_bpf(&bytes)) {
        return Ok(program);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| annotate(e, cache_dir))?;
    let temp = cache_dir.join(format!(".seccomp-{}.tmp", std::process::id()));
    let result = (|| {
        let file = std::fs::File::create(&temp).map_err(|e| annotate(e, &temp))?;
        filter_context(&profile)?.export_bpf(&file).map_err(NativeError::Seccomp)?;
        drop(file);
        let bytes = std::fs::read(&temp).map_err(|e| annotate(e, &temp))?;
        let program = parse_bpf(&bytes).ok_or_else(|| io::Error::other("libseccomp exported no program"))?;
        std::fs::rename(&temp, &path).map_err(|e| annotate(e, &path))?;
        Ok(program)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// The cache file's name: a digest of everything the program is compiled
/// from (the profile, what the OCI profile cannot say, libseccomp's version).
fn cache_name(profile: &LinuxSeccomp) -> Result<String, NativeError> {
    let version = libseccomp::ScmpVersion::current().map_err(NativeError::Seccomp)?;
    let key = serde_json::to_vec(&(profile, BAD_ARCH, (version.major, version.minor, version.micro)))
        .map_err(|e| NativeError::Io(io::Error::other(e)))?;
    Ok(format!("seccomp-{}.bpf", ces_image::Digest::of(&key).short()))
}

/// `struct sock_filter` records (8 bytes each, native byte order).
fn parse_bpf(bytes: &[u8]) -> Option<Vec<libc::sock_filter>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) || bytes.len() / 8 > usize::from(u16::MAX) {
        return None;
    }
    let field = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: field(&c[4..8]),
            })
            .collect(),
    )
}

/// The libseccomp filter for an OCI profile, as libcontainer would build it,
/// for the subset our profile uses (allow and errno actions; ==, != and
/// masked == on one argument); anything else is refused rather than guessed.
fn filter_context(profile: &LinuxSeccomp) -> Result<libseccomp::ScmpFilterContext, NativeError> {
    use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
    let unsupported = |what: &str| NativeError::Io(io::Error::other(format!("seccomp profile: unsupported {what}")));
    let action = |action: LinuxSeccompAction, errno: Option<u32>| match action {
        LinuxSeccompAction::ScmpActAllow => Ok(ScmpAction::Allow),
        LinuxSeccompAction::ScmpActErrno => Ok(ScmpAction::Errno(errno.unwrap_or(EPERM) as i32)),
        LinuxSeccompAction::ScmpActNotify => Ok(ScmpAction::Notify),
        other => Err(unsupported(&format!("action {other:?}"))),
    };
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(NativeError::Seccomp)?;
    ctx.set_act_badarch(ScmpAction::KillProcess).map_err(NativeError::Seccomp)?;
    for arch in profile.architectures().iter().flatten() {
        let arch = match arch {
            Arch::ScmpArchX86_64 => ScmpArch::X8664,
            Arch::ScmpArchX86 => ScmpArch::X86,
            Arch::ScmpArchX32 => ScmpArch::X32,
            Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
            Arch::ScmpArchArm => ScmpArch::Arm,
            Arch::ScmpArchNative => ScmpArch::Native,
            other => return Err(unsupported(&format!("architecture {other:?}"))),
        };
        ctx.add_arch(arch).map_err(NativeError::Seccomp)?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        let compare = match rule.args().as_deref() {
            None | Some([]) => None,
            Some([arg]) => {
                let op = match arg.op() {
                    LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                    LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                    // libcontainer's reading: the mask in valueTwo, the datum in value.
                    LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(arg.value_two().unwrap_or(0)),
                    other => return Err(unsupported(&format!("operator {other:?}"))),
                };
                Some(ScmpArgCompare::new(arg.index() as u32, op, arg.value()))
            }
            Some(_) => return Err(unsupported("rule with several argument comparisons")),
        };
        for name in rule.names() {
            // Names libseccomp does not know on this architecture are
            // skipped, as libcontainer does.
            let Ok(syscall) = ScmpSyscall::from_name(name) else { continue };
            match &compare {
                None => ctx.add_rule(act, syscall),
                Some(compare) => ctx.add_rule_conditional(act, syscall, std::slice::from_ref(compare)),
            }
            .map_err(NativeError::Seccomp)?;
        }
    }
    Ok(ctx)
}

/// How many syscall names the profile allows (for `--dry-run`).
pub(crate) fn allowed_count(set_id: SetIdModes) -> usize {
    // personality, socket and clone (conditional), the mode setters, and
    // openat2 where set-id modes are allowed.
    ALLOWED.len() + ALLOWED_ARCH.len() + 3 + MODE_SETTERS.len() + usize::from(set_id == SetIdModes::Allowed)
}

/// The one ABI the profile allows (for `--dry-run`).
pub(crate) fn native_abi() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "x86_64"
    } else if cfg!(target_arch = "aarch64") {
        "aarch64"
    } else {
        "native"
    }
}

/// The native ABI alone: any other (i386, x32, 32-bit Arm) gets [`BAD_ARCH`].
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

fn allow<'a>(names: impl Iterator<Item = &'a str>) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(names.map(str::to_owned).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
}

/// `name` fails with ENOSYS (libc then falls back to an older call whose
/// arguments the profile can check).
fn enosys(name: &str) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(vec![name.to_owned()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(ENOSYS)
        .build()
}

/// A user notification for `name` when its first argument compares to
/// `value` by `op`.
fn notify_if(name: &str, value: u64, op: LinuxSeccompOperator) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(vec![name.to_owned()])
        .action(LinuxSeccompAction::ScmpActNotify)
        .args(vec![LinuxSeccompArgBuilder::default().index(0usize).value(value).op(op).build()?])
        .build()
}

fn allow_if(
    name: &str,
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> Result<LinuxSyscall, OciSpecError> {
    let mut arg = LinuxSeccompArgBuilder::default().index(index).value(value).op(op);
    if let Some(two) = value_two {
        arg = arg.value_two(two);
    }
    LinuxSyscallBuilder::default()
        .names(vec![name.to_owned()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg.build()?])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(program: &[libc::sock_filter]) -> Vec<(u16, u8, u8, u32)> {
        program.iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect()
    }

    #[test]
    fn profile_is_compiled_once_then_read_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let first = compiled(dir.path(), SetIdModes::Allowed, false).unwrap();
        assert!(first.len() > 50, "a real program: {} instructions", first.len());
        let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(cached.len(), 1, "one cache file, no temp left: {cached:?}");
        // The second call reads the file: prove it by altering it (same length).
        let mut bytes = std::fs::read(&cached[0]).unwrap();
        bytes[4] ^= 1;
        std::fs::write(&cached[0], &bytes).unwrap();
        let second = compiled(dir.path(), SetIdModes::Allowed, false).unwrap();
        assert_ne!(raw(&second), raw(&first), "read from the cache, not recompiled");
        // A cache file that is not a program is compiled anew.
        std::fs::write(&cached[0], b"junk").unwrap();
        assert_eq!(raw(&compiled(dir.path(), SetIdModes::Allowed, false).unwrap()), raw(&first));
    }

    #[test]
    fn bpf_files_of_the_wrong_shape_are_rejected() {
        assert!(parse_bpf(b"").is_none());
        assert!(parse_bpf(&[0u8; 12]).is_none());
        assert_eq!(parse_bpf(&[0u8; 16]).unwrap().len(), 2);
    }

    #[test]
    fn denies_namespace_mount_and_keyring_syscalls() {
        for denied in ["mount", "umount2", "unshare", "setns", "pivot_root", "keyctl", "add_key", "bpf", "reboot"] {
            assert!(!ALLOWED.contains(&denied), "{denied} must not be allowed");
            assert!(!ALLOWED_ARCH.contains(&denied), "{denied} must not be allowed");
        }
    }

    /// Runs a classic BPF seccomp program on one `seccomp_data` (the
    /// instructions libseccomp emits), as the kernel would; returns the
    /// action (`SECCOMP_RET_*` with its data).
    fn evaluate(program: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for arg in args {
            data.extend_from_slice(&arg.to_ne_bytes());
        }
        let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
        loop {
            let f = program[pc];
            pc += 1;
            let k = f.k;
            let jump = |cond: bool| if cond { usize::from(f.jt) } else { usize::from(f.jf) };
            match f.code {
                0x20 => {
                    let at = k as usize;
                    a = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x00 => a = k,
                0x01 => x = k,
                0x60 => a = mem[k as usize],
                0x61 => x = mem[k as usize],
                0x02 => mem[k as usize] = a,
                0x03 => mem[k as usize] = x,
                0x07 => x = a,
                0x87 => a = x,
                0x54 => a &= k,
                0x05 => pc += k as usize,
                0x15 => pc += jump(a == k),
                0x25 => pc += jump(a > k),
                0x35 => pc += jump(a >= k),
                0x45 => pc += jump(a & k != 0),
                0x1d => pc += jump(a == x),
                0x2d => pc += jump(a > x),
                0x3d => pc += jump(a >= x),
                0x4d => pc += jump(a & x != 0),
                0x06 => return k,
                other => panic!("BPF instruction {other:#x} not interpreted"),
            }
        }
    }

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_EPERM: u32 = 0x0005_0000 | EPERM;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn only_the_native_abi_gets_through() {
        let dir = tempfile::tempdir().unwrap();
        let program = compiled(dir.path(), SetIdModes::Allowed, false).unwrap();
        let vsock = [AF_VSOCK, 1, 0, 0, 0, 0];
        let inet = [2, 1, 0, 0, 0, 0];
        // x86_64: socket(2) for IP, not for vsock; getpid(39).
        assert_eq!(evaluate(&program, AUDIT_ARCH_X86_64, 41, inet), RET_ALLOW);
        assert_eq!(evaluate(&program, AUDIT_ARCH_X86_64, 41, vsock), RET_EPERM);
        assert_eq!(evaluate(&program, AUDIT_ARCH_X86_64, 39, [0; 6]), RET_ALLOW);
        // i386: socket (359), socketcall (102), getpid (20): all killed.
        for nr in [359, 102, 20] {
            for args in [vsock, inet] {
                assert_eq!(evaluate(&program, AUDIT_ARCH_I386, nr, args), RET_KILL_PROCESS, "i386 {nr}");
            }
        }
        // x32: the x86_64 audit arch with the x32 bit: socket, getpid killed.
        for nr in [41, 39] {
            let action = evaluate(&program, AUDIT_ARCH_X86_64, nr | X32_SYSCALL_BIT, inet);
            assert_eq!(action, RET_KILL_PROCESS, "x32 {nr}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn no_mode_with_setuid_or_setgid_gets_through() {
        const RET_ENOSYS: u32 = 0x0005_0000 | ENOSYS;
        let dir = tempfile::tempdir().unwrap();
        let program = compiled(dir.path(), SetIdModes::Refused, false).unwrap();
        let allowing = compiled(dir.path(), SetIdModes::Allowed, false).unwrap();
        // (name, x86_64 number, mode argument index)
        let setters = [
            ("chmod", 90, 1),
            ("fchmod", 91, 1),
            ("fchmodat", 268, 2),
            ("fchmodat2", 452, 2),
            ("creat", 85, 1),
            ("open", 2, 2),
            ("openat", 257, 3),
            ("mknod", 133, 1),
            ("mknodat", 259, 2),
        ];
        for (name, nr, index) in setters {
            for (mode, allowed) in [(0o755, true), (0o1777, true), (0o4755, false), (0o2775, false), (0o6755, false)] {
                let mut args = [0u64; 6];
                // The upper half of the register is not the mode's.
                args[index] = mode | 0xdead_0000_0000;
                let want = if allowed { RET_ALLOW } else { RET_EPERM };
                assert_eq!(evaluate(&program, AUDIT_ARCH_X86_64, nr, args), want, "{name} {mode:o}");
                assert_eq!(evaluate(&allowing, AUDIT_ARCH_X86_64, nr, args), RET_ALLOW, "{name} {mode:o}");
            }
        }
        // openat2's mode is in a struct: ENOSYS, and libc uses openat.
        assert_eq!(evaluate(&program, AUDIT_ARCH_X86_64, 437, [0; 6]), RET_ENOSYS);
        assert_eq!(evaluate(&allowing, AUDIT_ARCH_X86_64, 437, [0; 6]), RET_ALLOW);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn ces_test_hands_non_ip_sockets_to_its_watcher() {
        const RET_USER_NOTIF: u32 = 0x7fc0_0000;
        let dir = tempfile::tempdir().unwrap();
        let observed = compiled(dir.path(), SetIdModes::Allowed, true).unwrap();
        let plain = compiled(dir.path(), SetIdModes::Allowed, false).unwrap();
        for (family, reported) in [(1, false), (2, false), (10, false), (16, false), (0, true), (3, true), (15, true)] {
            let want = if reported { RET_USER_NOTIF } else { RET_ALLOW };
            assert_eq!(evaluate(&observed, AUDIT_ARCH_X86_64, 41, [family, 1, 0, 0, 0, 0]), want, "{family}");
        }
        for family in [17, 38, AF_VSOCK, 0xffff_ffff] {
            let args = [family, 1, 0, 0, 0, 0];
            assert_eq!(evaluate(&observed, AUDIT_ARCH_X86_64, 41, args), RET_USER_NOTIF, "{family}");
            let plain_want = if family == AF_VSOCK { RET_EPERM } else { RET_ALLOW };
            assert_eq!(evaluate(&plain, AUDIT_ARCH_X86_64, 41, args), plain_want, "{family}");
        }
    }

    #[test]
    fn the_cache_key_follows_the_profile() {
        let profile = profile(SetIdModes::Allowed).unwrap();
        let name = cache_name(&profile).unwrap();
        assert_eq!(cache_name(&super::profile(SetIdModes::Allowed).unwrap()).unwrap(), name, "stable");
        // Another architecture list (the old profile's i386 and x32) or
        // another rule is another program, under another name.
        let mut wider = profile.clone();
        wider.set_architectures(Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]));
        assert_ne!(cache_name(&wider).unwrap(), name);
        let mut fewer = profile.clone();
        fewer.set_syscalls(profile.syscalls().as_ref().map(|s| s[1..].to_vec()));
        assert_ne!(cache_name(&fewer).unwrap(), name);
    }

    #[test]
    fn clone_may_not_create_namespaces() {
        let profile = profile(SetIdModes::Allowed).unwrap();
        let syscalls = profile.syscalls().as_ref().unwrap();
        let clone = syscalls.iter().find(|s| s.names() == &["clone".to_owned()]).unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value(), 0);
        assert_eq!(arg.value_two(), Some(CLONE_NAMESPACE_FLAGS));
        let clone3 = syscalls.iter().find(|s| s.names() == &["clone3".to_owned()]).unwrap();
        assert_eq!(clone3.errno_ret(), Some(ENOSYS));
    }
}
