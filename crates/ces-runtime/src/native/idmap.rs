//! Root mode's id mapping: the container's ids `0..RANGE` are an
//! unprivileged block of host ids (`base..base + RANGE`), so that its root
//! never holds host root's powers over host files, and the image's files
//! keep their owners (the image user's home is its own).
//!
//! The image's unpacked files keep the owners of the image (root's files are
//! host uid 0 on disk), so the container would see them all as `nobody`.
//! ces shows them through an *idmapped mount* instead (Linux >= 5.12;
//! overlayfs over idmapped layers, >= 5.19): a clone of the image's root
//! filesystem on which on-disk id `n` reads as host id `base + n`, which the
//! container's user namespace maps back to `n`. The overlay's upper layer
//! then holds host ids of the block, and the store is never written.
//!
//! The bind mounts (`/safe_data`, `/safe_outputs`, `/scratch`, `-v`) are
//! idmapped the other way: what the invoking user (root) owns on disk reads
//! as owned by the workload's user, and what the workload creates there is
//! owned by the invoking user on disk, as in the other modes.
//!
//! All of it is done in ces's private mount namespace
//! ([`super::rootfs::private_mount_namespace`]): the host never sees these
//! mounts, and they end with ces.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The number of ids a root-mode container has (`0..65536`, as podman and
/// containerd give a user namespace).
pub const RANGE: u32 = 65_536;

/// The default first host id of root mode's block: the start of the range
/// systemd documents as unused (`0x70000000`, after the container ranges
/// `systemd-nspawn` picks from).
pub const DEFAULT_BASE: u32 = 0x7000_0000;

/// Whether `base..base + RANGE` is a block root mode can use: no host root,
/// no id of the usual system and regular users (below 65536), and no
/// `-1` (`(uid_t) -1` means "unchanged" to chown).
pub fn valid_base(base: u32) -> bool {
    base >= RANGE && base.checked_add(RANGE).is_some_and(|end| end < u32::MAX)
}

/// Who already uses ids of the block `base..base + RANGE`, if anyone can be
/// found: a subordinate range of `/etc/subuid` or `/etc/subgid` (rootless
/// podman's, or another engine's), or a user or group the system's user
/// database knows at the block's first or last id. (A directory service
/// that maps ids into the block, such as SSSD's AD id mapping with its
/// default range, is found only when it names those two: choose the
/// block outside its range.)
pub(crate) fn block_user(base: u32) -> Option<String> {
    let (start, end) = (u64::from(base), u64::from(base) + u64::from(RANGE));
    for file in ["/etc/subuid", "/etc/subgid"] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        if let Some(range) = overlapping_range(&text, start, end) {
            return Some(format!("{range} in {file}"));
        }
    }
    for id in [base, base + (RANGE - 1)] {
        if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id)) {
            return Some(format!("user {} ({id})", user.name));
        }
        if let Ok(Some(group)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id)) {
            return Some(format!("group {} ({id})", group.name));
        }
    }
    None
}

/// The first range of a subordinate id file (`name:first:count` lines)
/// that meets `start..end`.
fn overlapping_range(text: &str, start: u64, end: u64) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (name, first, count) =
            (fields.next()?, fields.next()?.parse::<u64>().ok()?, fields.next()?.parse::<u64>().ok()?);
        (count > 0 && first < end && start < first + count)
            .then(|| format!("{name}'s range {first}-{}", first + count - 1))
    })
}

/// One line of a `uid_map` or `gid_map`: ids `inside..inside + count` of
/// the namespace are host ids `outside..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

impl Extent {
    fn line(&self) -> String {
        format!("{} {} {}\n", self.inside, self.outside, self.count)
    }
}

/// A user namespace with `uids` and `gids` and no process in it, held by
/// its descriptor (for `mount_setattr`'s `userns_fd`).
pub(crate) fn user_namespace(uids: Extent, gids: Extent) -> io::Result<OwnedFd> {
    reap_helpers(false);
    // A child is born in a new user namespace (`clone(CLONE_NEWUSER)`): ces
    // writes its maps and opens the namespace as soon as `clone` returns,
    // without waiting for the child to run, then kills it and reaps it later
    // ([`reap_helpers`]). With every core busy, each wait for a new process
    // to be scheduled costs a time slice on the start's path. The child only
    // makes system calls (ces may have other threads: nothing that
    // allocates or locks): it waits, should it run before it is killed.
    let (child, done_write) = waiting_child(libc::CLONE_NEWUSER)?;
    let result = (|| {
        fs::write(format!("/proc/{child}/uid_map"), uids.line())?;
        fs::write(format!("/proc/{child}/gid_map"), gids.line())?;
        let path = CString::new(format!("/proc/{child}/ns/user")).expect("no NUL");
        // SAFETY: a valid C string; the descriptor is owned below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })();
    drop(done_write);
    kill_helper(child);
    reap_helpers(false);
    result
}

/// A child of ces that waits until the descriptor returned with it is
/// written to or closed, then exits; made by `clone(flags | SIGCHLD)`, it
/// makes only system calls (ces may have other threads: nothing that
/// allocates or locks). It closes every other descriptor it was born with
/// first: a pipe another thread of ces made for a child of its own (a
/// `Command`'s output) must not stay open in it, or whoever reads that pipe
/// waits for the helper's end. End it with [`kill_helper`].
///
/// Where it can ([`shares_memory`]), the helper shares ces's memory
/// (`CLONE_VM`) and runs [`helper`] on a stack of its own ([`HelperStack`],
/// unmapped once it has been reaped): making it then copies none of ces's
/// memory. A fork of ces copied its page tables, and then each page either
/// process wrote: a run made 21% fewer page faults (1110 to 878) without.
/// Sharing ces's memory, it also shares the calling thread's `errno`, so it
/// makes only system calls that cannot fail, with every signal blocked that
/// glibc lets a thread block (not its own two, whose handlers act only on
/// signals a process sends itself). While it lives, its `/proc/<pid>/mem`
/// is ces's memory: no process of a container can reach it (the container
/// has a pid namespace of its own, and no `CAP_SYS_PTRACE`), and it is
/// killed before the container is built. Elsewhere, it is a fork
/// ([`copying_child`]).
pub(crate) fn waiting_child(flags: libc::c_int) -> io::Result<(libc::pid_t, OwnedFd)> {
    make_helper(flags, shares_memory())
}

/// [`waiting_child`], sharing ces's memory or not.
fn make_helper(flags: libc::c_int, share: bool) -> io::Result<(libc::pid_t, OwnedFd)> {
    let (done_read, done_write) = super::pipe()?;
    if !share {
        return Ok((copying_child(flags, &done_read)?, done_write));
    }
    let stack = HelperStack::new()?;
    let keep = done_read.as_raw_fd();
    // SAFETY: sigset_t is plain data; sigfillset fills it.
    let all = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        all
    };
    let blocked = super::wait::MaskGuard::block(&all)?;
    // Held from `clone` to the stack's record: a pid reaped and reused by a
    // new helper meanwhile would otherwise free the new one's stack.
    let mut stacks = STACKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: the child runs `helper` on its own stack, mapped until it has
    // been reaped ([`reap_helpers`]); its argument is passed by value (in the
    // pointer); `helper` makes only system calls that succeed, with every
    // signal blocked (inherited from this thread, as blocked just above).
    let child = unsafe {
        libc::clone(helper, stack.top(), flags | libc::CLONE_VM | libc::SIGCHLD, keep as usize as *mut libc::c_void)
    };
    let error = io::Error::last_os_error();
    drop(blocked);
    if child < 0 {
        return Err(error);
    }
    stacks.push((child, stack));
    Ok((child, done_write))
}

/// Whether helpers can share ces's memory: the kernel lets this process
/// call `close_range` (Linux 5.9, and no filter refuses it: the call closes
/// nothing), so that the helper's calls all succeed; and glibc's `clone`
/// leaves the calling thread's cached ids alone (2.25).
fn shares_memory() -> bool {
    static SHARES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SHARES.get_or_init(|| {
        // SAFETY: closes descriptors from u32::MAX on: none.
        let close_range = unsafe {
            libc::syscall(libc::SYS_close_range, libc::c_uint::MAX, libc::c_uint::MAX, 0 as libc::c_uint) == 0
        };
        // SAFETY: glibc's static version string.
        let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        close_range && ces_image::rootfs::version_at_least(&version.to_string_lossy(), (2, 25))
    })
}

/// A sharing helper's life ([`waiting_child`]), on its own stack, in ces's
/// memory and with its `errno`: it closes every descriptor but `keep`
/// (`close_range`, which [`shares_memory`] found working, on valid ranges),
/// then waits on it (a read that ends with a byte or at EOF: no signal can
/// interrupt it, all that can be blocked), then returns to glibc's `clone`
/// wrapper, which ends the process (`exit`). Each call succeeds, so none
/// writes `errno`; `libc::syscall` touches nothing else.
extern "C" fn helper(keep: *mut libc::c_void) -> libc::c_int {
    let keep = keep as usize as libc::c_uint;
    let mut byte = 0u8;
    // SAFETY: closing this process's own descriptors (its table is its own:
    // no `CLONE_FILES`), then reading one byte into a buffer on this stack.
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, keep - 1, 0 as libc::c_uint);
        }
        libc::syscall(libc::SYS_close_range, keep.wrapping_add(1), libc::c_uint::MAX, 0 as libc::c_uint);
        libc::syscall(libc::SYS_read, keep as libc::c_long, (&mut byte as *mut u8).cast::<libc::c_void>(), 1usize);
    }
    0
}

/// A helper's stack ([`waiting_child`]): mapped for it, its lowest page a
/// guard, unmapped once the helper has been reaped.
struct HelperStack {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: a mapping owned by this value alone; nothing reads through it here.
unsafe impl Send for HelperStack {}

impl HelperStack {
    /// What the helper's frames need, with room to spare (a few hundred bytes).
    const ROOM: usize = 64 * 1024;

    fn new() -> io::Result<HelperStack> {
        // SAFETY: no arguments; the page size, or -1.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0).max(4096);
        // The guard page, then at least one page of stack.
        let len = page + Self::ROOM.max(page);
        // SAFETY: a new private anonymous mapping, owned by the value made.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack =
            HelperStack { base: std::ptr::NonNull::new(base).ok_or_else(|| io::Error::other("mmap: null"))?, len };
        // SAFETY: the first page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Where the stack begins (it grows down): the mapping's end, page-aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is what `clone` takes.
        unsafe { self.base.as_ptr().cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for HelperStack {
    fn drop(&mut self) {
        // SAFETY: the mapping this value owns; its helper is gone (reaped),
        // or was never made.
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}

/// The stacks of the sharing helpers not yet reaped, by pid.
static STACKS: std::sync::Mutex<Vec<(libc::pid_t, HelperStack)>> = std::sync::Mutex::new(Vec::new());

/// A helper that is a fork of ces (where it cannot share its memory: see
/// [`shares_memory`]), waiting on `done_read`.
fn copying_child(flags: libc::c_int, done_read: &OwnedFd) -> io::Result<libc::pid_t> {
    // The flags come first, but on s390x (the new stack first); the other
    // arguments are all zero.
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    #[cfg(not(target_arch = "s390x"))]
    // SAFETY: as fork (no new stack: the child runs on a copy of this one);
    // the child only calls async-signal-safe functions, then _exit.
    let child = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    #[cfg(target_arch = "s390x")]
    // SAFETY: as above.
    let child = unsafe { libc::syscall(libc::SYS_clone, 0usize, flags, 0usize, 0usize, 0usize) };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: raw system calls on descriptors this process owns (all but
        // its end of `done` closed first: ces's end too, or `done` never
        // reads EOF).
        unsafe {
            let keep = done_read.as_raw_fd() as libc::c_uint;
            let close_range = |first: libc::c_uint, last: libc::c_uint| {
                libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) == 0
            };
            let below = keep == 0 || close_range(0, keep - 1);
            if !(below && close_range(keep + 1, libc::c_uint::MAX)) {
                // Before Linux 5.9: one by one, up to the descriptor limit.
                let mut limit = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    libc::RLIMIT_NOFILE,
                    std::ptr::null::<libc::rlimit>(),
                    &mut limit,
                );
                let last = limit.rlim_cur.min(1 << 20) as libc::c_int;
                for fd in (0..last).filter(|fd| *fd != keep as libc::c_int) {
                    libc::close(fd);
                }
            }
            let mut byte = 0u8;
            libc::read(keep as libc::c_int, (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0)
        }
    }
    Ok(child as libc::pid_t)
}

/// Ends a [`waiting_child`]: killed rather than trusted to see EOF (another
/// thread's fork may hold a copy of its descriptor), and reaped by
/// [`reap_helpers`].
pub(crate) fn kill_helper(child: libc::pid_t) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child, libc::SIGKILL) };
    UNREAPED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(child);
}

/// The helpers ([`waiting_child`]) killed and not yet reaped.
static UNREAPED: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

/// Reaps the helpers [`kill_helper`] killed: those already gone, or,
/// with `wait`, all of them (each was sent `SIGKILL`: it ends as soon as it
/// is scheduled). Called with `wait` once the container runs, off the
/// start's path. It holds the stacks' lock while it waits: a helper made
/// meanwhile by another thread waits too (in a run, the warm-up's thread has
/// been joined by then).
pub(crate) fn reap_helpers(wait: bool) {
    // STACKS first (as `waiting_child` holds it), so that a pid reaped here
    // is not a new helper's before its old stack is gone.
    let mut stacks = STACKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut unreaped = UNREAPED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    unreaped.retain(|&pid| {
        loop {
            // SAFETY: reaping our own child, by its pid.
            let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), if wait { 0 } else { libc::WNOHANG }) };
            match rc {
                0 => break true,
                rc if rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                // Reaped, or not ours to reap (ECHILD: gone all the same):
                // its stack, if it had one, now that nothing runs on it.
                _ => {
                    stacks.retain(|(stacked, _)| *stacked != pid);
                    break false;
                }
            }
        }
    });
}

/// A detached clone of the mount at `source` (not its submounts): of the
/// directory `pin` holds open when given (the one that was checked, whatever
/// the path leads to now), else of `source`'s; with ids read as `userns`
/// maps them, if given, and the mount attributes `attrs` ([`READ_ONLY`],
/// [`NO_SUID_DEV`]: set here, they are locked in the container, whose mount
/// namespace is less privileged); attached by [`attach`].
pub(crate) fn clone_tree(
    source: &Path,
    pin: Option<&OwnedFd>,
    userns: Option<&OwnedFd>,
    attrs: u64,
) -> io::Result<OwnedFd> {
    let path = CString::new(source.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let empty = c"";
    let (dirfd, name, flags) = match pin {
        Some(fd) => (fd.as_raw_fd(), empty.as_ptr(), libc::AT_EMPTY_PATH as libc::c_uint),
        None => (libc::AT_FDCWD, path.as_ptr(), 0),
    };
    // SAFETY: a valid C string and descriptor; the new one is owned below.
    let tree = unsafe {
        libc::syscall(libc::SYS_open_tree, dirfd, name, OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | flags)
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tree` was just opened and is owned by nothing else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let attr = MountAttr {
        attr_set: attrs | if userns.is_some() { MOUNT_ATTR_IDMAP } else { 0 },
        attr_clr: 0,
        // Not a peer of the host mount it is cloned from.
        propagation: MS_PRIVATE,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    // SAFETY: the struct is the kernel's `mount_attr` (size passed), alive
    // for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches the detached mount `tree` on `target`.
pub(crate) fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let target = CString::new(target.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let empty = c"";
    // SAFETY: valid C strings and descriptors.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A detached clone of `source` (or of what `pin` holds: see
/// [`clone_tree`]), with ids mapped as `ids` says if given, and `attrs`;
/// errors name `source`. A pinned directory is cloned before ces enters its
/// private mount namespace (a mount of another namespace cannot be cloned),
/// and attached after.
pub(crate) fn clone(
    source: &Path,
    pin: Option<&OwnedFd>,
    ids: Option<(Extent, Extent)>,
    attrs: u64,
) -> io::Result<OwnedFd> {
    let named = |e: io::Error| {
        let hint = match (e.raw_os_error(), ids) {
            (Some(libc::EINVAL | libc::EPERM | libc::ENOSYS), Some(_)) => {
                " (its filesystem or this kernel cannot idmap a mount: root mode needs Linux >= 5.19 \
                 and a local filesystem such as ext4, xfs or btrfs (tmpfs: Linux >= 6.3); or run ces rootless \
                 or under sudo)"
            }
            _ => "",
        };
        io::Error::new(e.kind(), format!("cannot mount a clone of {}: {e}{hint}", source.display()))
    };
    let Some(ids) = ids else { return clone_tree(source, pin, None, attrs).map_err(named) };
    with_namespace(ids, |userns| clone_tree(source, pin, Some(userns), attrs)).map_err(named)
}

/// Root mode: a user namespace with the maps `ids` for the container to
/// join by path ([`namespace_path`]): the one this run's idmapped mounts
/// were made with, taken out of the cache (a later run of this thread, such
/// as `ces test`'s next, gets one of its own, as from libcontainer), or a
/// new one. Keep it open until the container is built. libcontainer's
/// intermediate process then joins it instead of making one and waiting
/// for ces to write its maps: two hand-offs between processes fewer on the
/// start's path (each a time slice when every core is busy). It is the
/// namespace libcontainer would make: owned by host root, a child of the
/// initial one, with the same maps and `setgroups` allowed.
pub(crate) fn joinable(ids: (Extent, Extent)) -> io::Result<OwnedFd> {
    let cached = USER_NAMESPACES.with(|made| {
        let mut made = made.borrow_mut();
        made.iter().position(|(key, _)| *key == ids).map(|i| made.remove(i).1)
    });
    cached.map_or_else(|| user_namespace(ids.0, ids.1), Ok)
}

/// Root mode's maps, uids and gids alike: the container's `0..RANGE` are
/// the host's `base..`.
pub(crate) fn block_maps(base: u32) -> (Extent, Extent) {
    let block = Extent { inside: 0, outside: base, count: RANGE };
    (block, block)
}

/// The path a child of this process (cloned, not exec'd) opens `fd` by.
pub(crate) fn namespace_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `f` of the cached user namespace with the maps `ids`, made first if
/// there is none.
fn with_namespace<T>(ids: (Extent, Extent), f: impl FnOnce(&OwnedFd) -> io::Result<T>) -> io::Result<T> {
    USER_NAMESPACES.with(|made| {
        let mut made = made.borrow_mut();
        if !made.iter().any(|(key, _)| *key == ids) {
            let userns = user_namespace(ids.0, ids.1)?;
            if made.len() >= 8 {
                made.clear();
            }
            made.push((ids, userns));
        }
        let (_, userns) = made.iter().find(|(key, _)| *key == ids).expect("just made");
        f(userns)
    })
}

thread_local! {
    /// The user namespaces made for idmapped mounts, by their maps: a run's
    /// binds share one (each costs a helper process), and later runs of this thread
    /// reuse them. A few at most.
    static USER_NAMESPACES: std::cell::RefCell<Vec<((Extent, Extent), OwnedFd)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Where root mode's mounts of a run are made: `/run/ces/<id>`. The
/// container's root (an id of the block) must reach its root filesystem and
/// its bind mounts' sources by path, and the run's state directory may lie
/// under directories only root can search (a store in a `0700` directory);
/// `/run` is root's and searchable on every host.
pub(crate) const MOUNTS_ROOT: &str = "/run/ces";

/// The name under a run's directory in [`MOUNTS_ROOT`] of its overlay's
/// lower layer `i`, idmapped: short, so that many fit in the overlay's
/// mount options (the store's budget counts `/run/ces/<id>/lower<i>`).
pub(crate) fn lower_name(i: usize) -> String {
    format!("lower{i}")
}

/// The mounts of one root-mode run, in `/run/ces/<id>`: on a tmpfs of ces's
/// own there, in ces's private mount namespace, with their mount points
/// (the host sees an empty directory). One lazy unmount of that tmpfs ends
/// them all at once ([`Mounts::unmount`], or, failing that, on drop), and
/// the directory is removed, never recursively: still mounted, its removal
/// fails and leaves the image's or the user's files under it untouched.
/// (Each mount and mount point on its own took 2 ms at a run's end.)
#[derive(Debug)]
pub(crate) struct Mounts {
    dir: PathBuf,
    /// Whether the tmpfs on `dir` is still mounted.
    mounted: bool,
    /// ces's own tmpfs for device nodes, once mounted (see [`Mounts::private`]).
    private: Option<PathBuf>,
}

impl Mounts {
    /// Makes `/run/ces/<id>` (`0711`, as `/run/ces`), removing an empty one
    /// a killed run left, and mounts the run's tmpfs on it (in ces's
    /// private mount namespace: [`super::rootfs::private_mount_namespace`]).
    pub(crate) fn create(id: &str, _: &super::rootfs::PrivateNamespace) -> io::Result<Mounts> {
        let root = Path::new(MOUNTS_ROOT);
        make_dir(root).or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })?;
        check_root_dir(root)?;
        let dir = root.join(id);
        if let Err(e) = make_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            fs::remove_dir(&dir).map_err(|e| super::rootfs::annotate(e, &dir))?;
            make_dir(&dir)?;
        }
        let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC;
        // Mount points only: empty directories and files (up to 500 layers,
        // the binds, the devices).
        let options = "mode=0711,size=64k,nr_inodes=4096";
        if let Err(e) = nix::mount::mount(Some("ces-run"), &dir, Some("tmpfs"), flags, Some(options)) {
            let _ = fs::remove_dir(&dir);
            return Err(super::rootfs::annotate(e.into(), &dir));
        }
        Ok(Mounts { dir, mounted: true, private: None })
    }

    /// An empty directory (or file) `<dir>/<name>` to mount on, in the
    /// run's tmpfs.
    pub(crate) fn mount_point(&mut self, name: &str, is_dir: bool) -> io::Result<PathBuf> {
        let target = self.dir.join(name);
        let created = if is_dir { fs::create_dir(&target) } else { fs::File::create_new(&target).map(drop) };
        created.map_err(|e| super::rootfs::annotate(e, &target))?;
        Ok(target)
    }

    /// Mounts a clone of `source` (a directory or a file), idmapped as `ids`
    /// says if given, on `<dir>/<name>`, and returns that path.
    pub(crate) fn mount(
        &mut self,
        source: &Path,
        name: &str,
        ids: Option<(Extent, Extent)>,
        attrs: u64,
    ) -> io::Result<PathBuf> {
        let tree = clone(source, None, ids, attrs)?;
        self.attach(&tree, source, name)
    }

    /// Attaches the detached mount `tree` (a clone of `source`) on
    /// `<dir>/<name>`, and returns that path.
    pub(crate) fn attach(&mut self, tree: &OwnedFd, source: &Path, name: &str) -> io::Result<PathBuf> {
        let is_dir = nix::sys::stat::fstat(tree.as_raw_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(|e| super::rootfs::annotate(e.into(), source))?;
        let target = self.mount_point(name, is_dir)?;
        attach(tree, &target).map_err(|e| super::rootfs::annotate(e, source))?;
        Ok(target)
    }

    /// `<dir>/private`: a small tmpfs of ces's own, root's (mode `0711`),
    /// mounted once, in ces's private mount namespace: no host user reaches
    /// what is in it, and it is not `nodev` (which `/run` and the store's
    /// file system may well be).
    pub(crate) fn private(&mut self) -> io::Result<PathBuf> {
        if let Some(dir) = &self.private {
            return Ok(dir.clone());
        }
        let dir = self.mount_point("private", true)?;
        nix::mount::mount(
            Some("ces-private"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NOEXEC,
            // Room for the hooks' copy of the spec with a large environment.
            Some("mode=0711,size=64m,nr_inodes=256"),
        )
        .map_err(|e| super::rootfs::annotate(e.into(), &dir))?;
        Ok(self.private.insert(dir).clone())
    }

    /// A device node `major`:`minor` (block or character) owned by
    /// `owner`, with permissions `mode`, made as `<private>/<name>` (see
    /// [`Mounts::private`]), whose path is returned: the host's node may be
    /// root's alone, and a device file cannot be idmapped.
    pub(crate) fn device(
        &mut self,
        name: &str,
        kind: crate::spec::DeviceType,
        (major, minor): (i64, i64),
        (uid, gid): (u32, u32),
        mode: u32,
    ) -> io::Result<PathBuf> {
        let node = self.private()?.join(name);
        let annotate = |e: nix::Error| super::rootfs::annotate(e.into(), &node);
        let kind = match kind {
            crate::spec::DeviceType::Char => nix::sys::stat::SFlag::S_IFCHR,
            crate::spec::DeviceType::Block => nix::sys::stat::SFlag::S_IFBLK,
        };
        let (Ok(major), Ok(minor)) = (u64::try_from(major), u64::try_from(minor)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative device number"));
        };
        // Made with no permission at all, then given to its owner, then
        // opened to them: never a moment when another id can open it.
        nix::sys::stat::mknod(&node, kind, nix::sys::stat::Mode::empty(), nix::sys::stat::makedev(major, minor))
            .map_err(annotate)?;
        nix::unistd::fchownat(
            None,
            &node,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(annotate)?;
        nix::sys::stat::fchmodat(
            None,
            &node,
            nix::sys::stat::Mode::from_bits_truncate(mode & 0o777),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .map_err(annotate)?;
        Ok(node)
    }

    /// Unmounts the run's tmpfs (lazily), and with it every mount on it,
    /// then removes the directory.
    pub(crate) fn unmount(&mut self) -> io::Result<()> {
        if self.mounted {
            super::rootfs::unmount(&self.dir)?;
            self.mounted = false;
        }
        match fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(super::rootfs::annotate(e, &self.dir)),
            _ => Ok(()),
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot unmount the run's idmapped mounts");
        }
    }
}

/// Removes what a killed root-mode run `id` left in `/run/ces/<id>`: its
/// mounts ended with its ces (they were in its private mount namespace),
/// leaving an empty directory (or, from a ces before the run's tmpfs,
/// empty mount points: each is removed on its own, never recursively).
pub(crate) fn remove_leftovers(id: &str) -> io::Result<()> {
    let root = Path::new(MOUNTS_ROOT);
    match check_root_dir(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        checked => checked?,
    }
    let dir = root.join(id);
    if fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
        // Not ces's (a link or a file): removed, never followed.
        return fs::remove_file(&dir).map_err(|e| super::rootfs::annotate(e, &dir));
    }
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(super::rootfs::annotate(e, &dir)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| super::rootfs::annotate(e, &dir))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir { fs::remove_dir(&path) } else { fs::remove_file(&path) }
            .map_err(|e| super::rootfs::annotate(e, &path))?;
    }
    fs::remove_dir(&dir).map_err(|e| super::rootfs::annotate(e, &dir))
}

/// `/run/ces` must be root's own directory (no link), writable by root
/// alone: ces mounts and removes under it as root.
fn check_root_dir(root: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(root).map_err(|e| super::rootfs::annotate(e, root))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} must be a directory of root's that no one else may write to", root.display()),
        ));
    }
    Ok(())
}

/// Makes directory `path`, `0711` whatever the umask.
fn make_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o711).create(path).map_err(|e| super::rootfs::annotate(e, path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o711)).map_err(|e| super::rootfs::annotate(e, path))
}

/// `MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV`.
pub(crate) const READ_ONLY: u64 = 0x1 | NO_SUID_DEV;
/// `MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV`.
pub(crate) const NO_SUID_DEV: u64 = 0x2 | 0x4;

// The mount API's constants (linux/mount.h), which the libc crate lacks.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MS_PRIVATE: u64 = 1 << 18;

/// The kernel's `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (10 s at most) until `done` says yes.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn state(pid: libc::pid_t) -> Option<char> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
    }

    fn has_stack(pid: libc::pid_t) -> bool {
        STACKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(|(p, _)| *p == pid)
    }

    /// A helper keeps only the descriptor it waits on (an open pipe of ces's
    /// would otherwise stay open in it), ends when told through it, leaves
    /// its maker's signal mask as it was, and its stack is unmapped once it
    /// has been reaped, not before; both kinds (sharing ces's memory where
    /// this host allows it, and forks).
    #[test]
    fn a_helper_keeps_one_descriptor_ends_when_told_and_frees_its_stack() {
        if shares_memory() {
            a_helper_waits_and_ends(true);
        }
        a_helper_waits_and_ends(false);
    }

    /// This thread's signal mask.
    fn mask() -> Vec<bool> {
        // SAFETY: sigset_t is plain data; pthread_sigmask only reads the mask here.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set), 0);
            (1..64).map(|n| libc::sigismember(&set, n) == 1).collect()
        }
    }

    /// Whether `pid` blocks signal `n` (`SigBlk` in its status).
    fn blocks(pid: libc::pid_t, n: u32) -> bool {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hex = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap_or("0").trim();
        u64::from_str_radix(hex, 16).unwrap_or(0) >> (n - 1) & 1 == 1
    }

    fn a_helper_waits_and_ends(share: bool) {
        let before = mask();
        let (pid, done) = make_helper(0, share).unwrap();
        assert_eq!(mask(), before, "the caller's signal mask is restored");
        let fds = || fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(usize::MAX);
        eventually("the helper closed all but one descriptor", || fds() == 1);
        eventually("the helper waits", || state(pid) == Some('S'));
        if share {
            // It shares this thread's errno: no signal may interrupt its read.
            for n in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD, libc::SIGHUP] {
                assert!(blocks(pid, n as u32), "the sharing helper blocks signal {n}");
            }
        }
        // A byte ends its wait (its pipe's EOF would too, once no other
        // process holds a copy of this end).
        // SAFETY: writes one byte from a valid buffer to a descriptor we own.
        assert_eq!(unsafe { libc::write(done.as_raw_fd(), [1u8].as_ptr().cast(), 1) }, 1);
        eventually("the helper ended when told", || state(pid) == Some('Z'));
        drop(done);
        assert_eq!(has_stack(pid), share, "a stack is kept until its helper is reaped");
        kill_helper(pid);
        reap_helpers(true);
        assert_eq!(state(pid), None, "reaped");
        assert!(!has_stack(pid), "the stack of a reaped helper is unmapped");
        // Killed while it waits, as the runs end theirs.
        let (pid, _done) = make_helper(0, share).unwrap();
        kill_helper(pid);
        reap_helpers(true);
        assert!(state(pid).is_none() && !has_stack(pid));
    }

    #[test]
    fn bases_that_would_reach_root_users_or_minus_one_are_refused() {
        assert!(valid_base(DEFAULT_BASE));
        assert!(valid_base(RANGE));
        assert!(!valid_base(0));
        assert!(!valid_base(1000));
        assert!(!valid_base(RANGE - 1));
        assert!(!valid_base(u32::MAX - RANGE));
        assert!(valid_base(u32::MAX - RANGE - 1));
    }

    #[test]
    fn subordinate_ranges_that_meet_the_block() {
        let text = "alice:100000:65536\n# a comment\nbob:1879113727:10\n";
        let (start, end) = (u64::from(DEFAULT_BASE), u64::from(DEFAULT_BASE) + u64::from(RANGE));
        assert_eq!(overlapping_range(text, start, end).as_deref(), Some("bob's range 1879113727-1879113736"));
        assert_eq!(overlapping_range("alice:100000:65536\ncarol:1879113728:5\n", start, end), None);
        assert_eq!(overlapping_range("dave:1879048191:1\n", start, end), None);
        assert_eq!(
            overlapping_range("erin:1879048191:2\n", start, end).as_deref(),
            Some("erin's range 1879048191-1879048192")
        );
    }

    #[test]
    fn map_lines() {
        assert_eq!(Extent { inside: 0, outside: DEFAULT_BASE, count: RANGE }.line(), "0 1879048192 65536\n");
    }
}
