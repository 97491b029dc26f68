//! Who runs ces, as the host sees it. Root means root of the host: effective
//! uid 0 in the initial user namespace. A user who is uid 0 in a user
//! namespace of their own (`unshare -r`) is that user, neither root nor able
//! to vouch for `SUDO_UID`: every decision that depends on root (a user's
//! config in place of the system's, the user the audit records, pull
//! enablement, the owner of a run's outputs) asks [`caller`].
//!
//! The namespace is told by `/proc/self/uid_map`, read so that a user
//! cannot stand in a file of their own (a tmpfs over `/proc` in their mount
//! namespace, a bind mount over the map): `/proc` must be procfs's root and
//! the path must cross no mount point. Where it cannot be read so, ces is
//! not root and does not know who the user is.
//!
//! Root under sudo (`SUDO_UID` set) acts for the user who ran sudo, and must
//! not lend them root's reach: every path they name is opened with their own
//! credentials ([`as_invoker`]), on a thread of its own that drops root for
//! the user's uid, gid and groups and ends with the work (the rest of ces
//! keeps root; the switch cannot leak past the work).

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};

use anyhow::Context as _;
use rustix::fs::{Mode, OFlags, ResolveFlags};

/// The uid the kernel shows for a user it cannot map (`overflowuid`), which
/// the audit records for a caller it cannot name.
pub const UNKNOWN_UID: u32 = 65534;

/// Who runs ces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Effective uid 0 in the initial user namespace: the operator, or a
    /// user through sudo (whose `SUDO_*` variables sudo set).
    HostRoot,
    /// A user in the initial user namespace, by real uid.
    HostUser {
        /// The real uid.
        uid: u32,
    },
    /// A process in a user namespace (`unshare -r`, a rootless container),
    /// whatever uid it has there; or one whose namespace cannot be read.
    Namespaced {
        /// The real uid as the enclosing namespace sees it, when it can be
        /// told: not when the map cannot be read, nor when that uid is 0 (root
        /// that entered a namespace cannot be told from a user two namespaces
        /// deep).
        uid: Option<u32>,
    },
}

/// Who runs this process. Told once, then remembered: ces never changes
/// its uids or user namespace (the runtime does that in its children), and
/// the settings, the run's plan and every audit record ask.
pub fn caller() -> Caller {
    static CALLER: OnceLock<Caller> = OnceLock::new();
    *CALLER.get_or_init(|| {
        let euid = rustix::process::geteuid().as_raw();
        let ruid = rustix::process::getuid().as_raw();
        match read_uid_map() {
            Some(map) => Caller::of(&map, euid, ruid),
            None => Caller::Namespaced { uid: None },
        }
    })
}

/// Whether this process is root of the host (see [`Caller::HostRoot`]).
pub fn is_host_root() -> bool {
    caller() == Caller::HostRoot
}

impl Caller {
    /// The caller with effective uid `euid` and real uid `ruid` in the user
    /// namespace whose `uid_map` is `map`.
    fn of(map: &str, euid: u32, ruid: u32) -> Caller {
        if is_initial(map) {
            return if euid == 0 { Caller::HostRoot } else { Caller::HostUser { uid: ruid } };
        }
        Caller::Namespaced { uid: outside(map, ruid).filter(|&uid| uid != 0) }
    }
}

/// The user root acts for under sudo: the one `SUDO_UID` names, as the user
/// database knows them (not as `$HOME` or `$USER` say, which the caller sets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SudoUser {
    /// `SUDO_UID`.
    pub uid: u32,
    /// `SUDO_GID`.
    pub gid: u32,
    /// The uid's name in the user database; else `SUDO_USER`; else the uid.
    pub name: String,
    /// The uid's home in the user database, if it has an entry.
    pub home: Option<PathBuf>,
    /// The user's groups in the group database (`id -G`), `gid` first.
    pub groups: Vec<u32>,
}

/// `SUDO_UID` is set for root, but does not say who.
#[derive(Debug, Clone, thiserror::Error)]
#[error("SUDO_UID is set but SUDO_GID is not a group id")]
pub struct SudoError;

/// Under sudo (root of the host with `SUDO_UID` set), the user who ran it;
/// `None` otherwise (`SUDO_*` is not trusted from anyone but root). Told
/// once, then remembered.
pub fn sudo_user() -> Result<Option<&'static SudoUser>, SudoError> {
    static SUDO: OnceLock<Result<Option<SudoUser>, SudoError>> = OnceLock::new();
    let told = SUDO.get_or_init(|| {
        let id = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
        let Some(uid) = id("SUDO_UID").filter(|_| is_host_root()) else { return Ok(None) };
        let gid = id("SUDO_GID").ok_or(SudoError)?;
        let entry = passwd_entry(uid);
        let name = entry
            .as_ref()
            .map(|(name, _)| name.clone())
            .or_else(|| std::env::var("SUDO_USER").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| uid.to_string());
        let home = entry.map(|(_, home)| home);
        let mut groups = vec![gid];
        // A uid the database lacks has no groups but its own.
        if home.is_some() {
            groups.extend(group_ids(&name).into_iter().filter(|g| *g != gid));
        }
        Ok(Some(SudoUser { uid, gid, name, home, groups }))
    });
    told.as_ref().map(Option::as_ref).map_err(Clone::clone)
}

/// Runs `work` with the credentials of the user ces runs for: under sudo,
/// on a thread of its own that has dropped root for the user's uid, gid and
/// groups (real, effective and saved: it cannot get root back, and it has no
/// capabilities), so that the kernel checks what the user may open;
/// otherwise here (ces is that user already).
pub fn as_invoker<T: Send>(work: impl FnOnce() -> T + Send) -> io::Result<T> {
    match sudo_user().map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))? {
        Some(user) if user.uid != 0 => as_user(user, work),
        _ => Ok(work()),
    }
}

/// [`as_invoker`] when `user_named` (the path the work reads was named by
/// the user), else the work as ces itself (the operator's own files).
pub fn as_invoker_if<T: Send>(user_named: bool, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    if user_named { as_invoker(work) } else { Ok(work()) }
}

/// Opens `path` for reading as the user ces runs for (see [`as_invoker`]).
pub fn open_as_invoker(path: &Path) -> io::Result<std::fs::File> {
    as_invoker(|| std::fs::File::open(path))?
}

/// Reads the text file `path` as the user ces runs for (see [`as_invoker`]):
/// opened and read there, so that no file that checks at read time (in
/// `/proc`) answers root.
pub fn read_as_invoker(path: &Path) -> io::Result<String> {
    as_invoker(|| std::fs::read_to_string(path))?
}

/// [`read_as_invoker`], the bytes as they are (text that may not be UTF-8).
pub fn read_bytes_as_invoker(path: &Path) -> io::Result<Vec<u8>> {
    as_invoker(|| std::fs::read(path))?
}

/// [`as_invoker`] for `user`.
fn as_user<T: Send>(user: &SudoUser, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    use rustix::process::{DumpableBehavior, dumpable_behavior, set_dumpable_behavior};
    // Changing a thread's euid makes the whole process non-dumpable (the
    // kernel's rule for set-id programs), and it must stay so while any
    // thread with the user's uid exists: the user could open that thread's
    // `/proc/<pid>/task/<tid>/mem`, which is the whole process's memory. So
    // one such thread at a time, and dumpable again only once it is gone.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let dumpable = dumpable_behavior().ok();
    let (tid, result) = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("ces-as-user".into())
            .spawn_scoped(scope, || (rustix::thread::gettid(), become_user(user).map(|()| work())))?;
        io::Result::Ok(thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })?;
    if let Some(DumpableBehavior::Dumpable) = dumpable
        && released(tid)
    {
        set_dumpable_behavior(DumpableBehavior::Dumpable)?;
    }
    result
}

/// Waits for this process's thread `tid`, joined, to be released by the
/// kernel: `join` returns when the kernel wakes it, before the exiting thread
/// has let go of the process's memory. False where `/proc` cannot tell.
fn released(tid: rustix::thread::Pid) -> bool {
    let tasks = Path::new("/proc/self/task");
    let task = tasks.join(tid.as_raw_nonzero().to_string());
    loop {
        match task.symlink_metadata() {
            // Exiting: a matter of microseconds.
            Ok(_) => std::thread::yield_now(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return tasks.is_dir(),
            Err(_) => return false,
        }
    }
}

/// Drops this thread's credentials for `user`'s (groups first: changing
/// them needs the root that the uid change gives up).
fn become_user(user: &SudoUser) -> io::Result<()> {
    use rustix::thread::{Gid, Uid, set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let groups: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    set_thread_groups(&groups)?;
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    set_thread_res_gid(gid, gid, gid)?;
    set_thread_res_uid(uid, uid, uid)?;
    // The raw syscalls answer for this thread.
    if rustix::process::geteuid() != uid || rustix::process::getegid() != gid {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "cannot take the user's credentials"));
    }
    Ok(())
}

/// `uid`'s name and home in the user database (NSS included), by `getent`.
fn passwd_entry(uid: u32) -> Option<(String, PathBuf)> {
    let getent = getent()?;
    let output = Command::new(getent).args(["passwd", &uid.to_string()]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let line = String::from_utf8(output.stdout).ok()?;
    let fields: Vec<&str> = line.trim_end().split(':').collect();
    let (name, home) = (fields.first()?, fields.get(5)?);
    (fields.get(2) == Some(&uid.to_string().as_str()) && !name.is_empty() && home.starts_with('/'))
        .then(|| ((*name).to_owned(), PathBuf::from(home)))
}

/// Who a policy decides for: under sudo the user who ran it, in a user
/// namespace the real uid outside it where that can be told, otherwise the
/// real uid; named as the user database names that uid (never as `$USER`
/// or `SUDO_USER` say, which the caller sets), else by the number. A
/// `SUDO_UID` that does not say who is an error, not root.
pub fn policy_user() -> Result<ces_audit::User, SudoError> {
    let uid = policy_uid()?;
    let name = passwd_entry(uid).map(|(name, _)| name).unwrap_or_else(|| uid.to_string());
    Ok(ces_audit::User { name, uid })
}

/// The uid of [`policy_user`], without the user database.
pub fn policy_uid() -> Result<u32, SudoError> {
    Ok(match (sudo_user()?, caller()) {
        (Some(user), _) => user.uid,
        (None, Caller::Namespaced { uid: Some(uid) }) => uid,
        (None, _) => rustix::process::getuid().as_raw(),
    })
}

/// The groups of [`policy_user`] (names, as `id -Gn` lists them): from the
/// group database by name; for a uid the database lacks, this process's own
/// (rootless: the kernel's) or, under sudo, none.
pub fn policy_groups(user: &ces_audit::User) -> anyhow::Result<Vec<String>> {
    if user.name != user.uid.to_string() {
        return groups(Some(&user.name));
    }
    match sudo_user() {
        Ok(Some(_)) => Ok(Vec::new()),
        _ => groups(None),
    }
}

/// `getent`, by absolute path where it is.
fn getent() -> Option<&'static str> {
    ["/usr/bin/getent", "/bin/getent"].into_iter().find(|p| Path::new(p).exists())
}

/// The gid of the group `name` in the group database (NSS), if it has one.
pub fn group_gid(name: &str) -> Option<u32> {
    let getent = getent()?;
    let output = Command::new(getent).args(["group", "--", name]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let line = String::from_utf8(output.stdout).ok()?;
    let fields: Vec<&str> = line.trim_end().split(':').collect();
    (fields.first() == Some(&name)).then_some(())?;
    fields.get(2)?.parse().ok()
}

/// `user`'s group ids in the group database (`id -G`); none if it cannot tell.
fn group_ids(user: &str) -> Vec<u32> {
    let Ok(output) = id_command().args(["-G", "--", user]).output() else { return Vec::new() };
    if !output.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|g| g.parse().ok()).collect()
}

/// `id`, by absolute path where it is (a `PATH` of the user's cannot stand in).
pub(crate) fn id_command() -> Command {
    let path = ["/usr/bin/id", "/bin/id"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("id");
    Command::new(path)
}

/// Groups as `id -Gn` lists them (primary first, the order users see):
/// `user`'s in the group database (NSS included: what IG has approved now,
/// not what a login session had), or with `None` this process's own.
pub fn groups(user: Option<&str>) -> anyhow::Result<Vec<String>> {
    let whose = || user.map_or_else(|| "the user's groups".to_owned(), |user| format!("the groups of {user}"));
    let mut command = id_command();
    command.arg("-Gn");
    if let Some(user) = user {
        command.arg("--").arg(user);
    }
    let output = command.output().with_context(|| format!("cannot list {} (id -Gn)", whose()))?;
    if !output.status.success() {
        anyhow::bail!("cannot list {}: id -Gn failed: {}", whose(), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect())
}

/// `/proc/self/uid_map`, where it is the kernel's (`None` where it cannot be
/// read, or `/proc` may be the user's own).
fn read_uid_map() -> Option<String> {
    let proc = rustix::fs::open("/proc", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    // procfs's root directory (inode 1), not a directory of the user's.
    let is_proc =
        |fd: &rustix::fd::OwnedFd| rustix::fs::fstatfs(fd).is_ok_and(|fs| fs.f_type == rustix::fs::PROC_SUPER_MAGIC);
    if !is_proc(&proc) || rustix::fs::fstat(&proc).ok()?.st_ino != 1 {
        return None;
    }
    // No mount point on the way (one over /proc/<pid> or the map itself).
    let map = rustix::fs::openat2(
        &proc,
        "self/uid_map",
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::NO_XDEV | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    if !is_proc(&map) {
        return None;
    }
    let mut text = String::new();
    std::fs::File::from(map).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The lines of a uid map: (first uid inside, first uid outside, count).
fn ranges(map: &str) -> impl Iterator<Item = Option<(u32, u32, u32)>> + '_ {
    map.lines().filter(|line| !line.trim().is_empty()).map(|line| {
        let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
        let range = (fields.next()??, fields.next()??, fields.next()??);
        fields.next().is_none().then_some(range)
    })
}

/// Whether `map` is the initial namespace's: 0 to 0 over the full range,
/// which no namespace a user can make has.
fn is_initial(map: &str) -> bool {
    let ranges: Vec<_> = ranges(map).collect();
    ranges == [Some((0, 0, u32::MAX))]
}

/// The uid that `uid` maps to outside the namespace (`None` when it is not
/// mapped, or the map does not parse).
fn outside(map: &str, uid: u32) -> Option<u32> {
    let ranges: Option<Vec<_>> = ranges(map).collect();
    ranges?.into_iter().find_map(|(inside, outside, count)| {
        let offset = uid.checked_sub(inside).filter(|&offset| offset < count)?;
        outside.checked_add(offset)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const INITIAL: &str = "         0          0 4294967295\n";

    #[test]
    fn only_the_full_identity_map_is_the_initial_namespace() {
        assert!(is_initial(INITIAL));
        assert!(is_initial("0 0 4294967295"));
        for not in [
            "         0        999          1\n",
            "0 0 1\n",
            "0 0 4294967294\n",
            "0 1 4294967295\n",
            "0 0 4294967295\n0 0 4294967295\n",
            "0 0 4294967295 7\n",
            "",
            "garbage",
        ] {
            assert!(!is_initial(not), "{not:?}");
        }
    }

    #[test]
    fn a_uid_maps_through_the_range_that_holds_it() {
        let map = "         0       1000          1\n         1     100000      65536\n";
        assert_eq!(outside(map, 0), Some(1000));
        assert_eq!(outside(map, 1), Some(100000));
        assert_eq!(outside(map, 65536), Some(165535));
        assert_eq!(outside(map, 65537), None, "past the last range");
        assert_eq!(outside("0 4294967295 1", 0), Some(u32::MAX));
        assert_eq!(outside("0 4294967295 2", 1), None, "no uid past u32::MAX");
        assert_eq!(outside("0 1000 x", 0), None);
        assert_eq!(outside("", 0), None);
    }

    #[test]
    fn root_is_root_only_in_the_initial_namespace() {
        assert_eq!(Caller::of(INITIAL, 0, 0), Caller::HostRoot);
        assert_eq!(Caller::of(INITIAL, 0, 1000), Caller::HostRoot, "a setuid-root program");
        assert_eq!(Caller::of(INITIAL, 1000, 1000), Caller::HostUser { uid: 1000 });
        // `unshare -r` as uid 999.
        assert_eq!(Caller::of("0 999 1\n", 0, 0), Caller::Namespaced { uid: Some(999) });
        // Root that entered a namespace, or a user two deep: uid 0 outside cannot be trusted.
        assert_eq!(Caller::of("0 0 1\n", 0, 0), Caller::Namespaced { uid: None });
        assert_eq!(Caller::of("0 999 1\n", 5, 5), Caller::Namespaced { uid: None }, "unmapped");
    }

    #[test]
    fn this_process_reads_its_own_map() {
        let map = read_uid_map().expect("/proc/self/uid_map, as procfs's");
        assert_eq!(map, std::fs::read_to_string("/proc/self/uid_map").unwrap());
        if is_initial(&map) && rustix::process::geteuid().is_root() {
            assert!(is_host_root());
        }
    }

    // The test kit's unprivileged user (made if missing).
    use ces_testkit::{TEST_USER as ROOTLESS, test_user as rootless_user};

    /// Held by the tests that look at whether ces is dumpable (a process-wide
    /// flag that every [`as_user`] changes for a while).
    static DUMPABLE: Mutex<()> = Mutex::new(());

    /// As root (CI): while a thread with the user's uid exists, ces is not
    /// dumpable, or the user could open `/proc/<pid>/task/<tid>/mem` with
    /// that thread's credentials and write root's memory. `pthread_join`
    /// returns before the kernel has let go of an exiting thread (it wakes
    /// the joiner first): dumpable comes back only once the thread is gone.
    #[test]
    fn ces_is_dumpable_again_only_once_the_users_thread_is_gone() {
        use rustix::process::{DumpableBehavior, dumpable_behavior};
        if !is_host_root() {
            return;
        }
        let (uid, gid) = rootless_user();
        let user = SudoUser { uid, gid, name: ROOTLESS.into(), home: None, groups: vec![gid] };
        let _dumpable = DUMPABLE.lock().unwrap_or_else(PoisonError::into_inner);
        for round in 0..20_000 {
            let tid = as_user(&user, || rustix::thread::gettid().as_raw_nonzero()).unwrap();
            let alive = Path::new(&format!("/proc/self/task/{tid}")).exists();
            assert!(!alive, "round {round}: as_user returned while the user's thread {tid} was still there");
            assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::Dumpable, "round {round}");
        }
    }

    /// As root (CI): work done for a user is done with their credentials
    /// (and their groups), on a thread that leaves ces's own root untouched.
    #[test]
    fn work_for_a_user_is_done_as_the_user_and_root_stays_root() {
        use std::os::unix::fs::PermissionsExt as _;
        if !is_host_root() {
            return;
        }
        let (uid, gid) = rootless_user();
        let _dumpable = DUMPABLE.lock().unwrap_or_else(PoisonError::into_inner);
        // A supplementary group only the user's thread has.
        let extra = 4_000_000_u32 + (std::process::id() % 1000);
        let user = SudoUser { uid, gid, name: ROOTLESS.into(), home: None, groups: vec![gid, extra] };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root:$y$SECRET").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let shared = dir.path().join("group-readable");
        std::fs::write(&shared, "for the group").unwrap();
        std::os::unix::fs::chown(&shared, Some(0), Some(extra)).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();

        let denied = as_user(&user, || std::fs::read_to_string(&secret)).unwrap().unwrap_err();
        assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(as_user(&user, || std::fs::read_to_string(&shared)).unwrap().unwrap(), "for the group");
        let ids = as_user(&user, || (rustix::process::getuid().as_raw(), rustix::process::geteuid().as_raw()));
        assert_eq!(ids.unwrap(), (uid, uid), "real and effective: root cannot be taken back");
        // This thread, and the process, are root as before.
        assert_eq!(rustix::process::geteuid().as_raw(), 0);
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root:$y$SECRET");
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::Dumpable,
            "ces stays dumpable, as it was"
        );
    }

    /// Run by [`as_an_unprivileged_user_in_a_user_namespace`] in its child:
    /// asserts what `CES_IDENTITY_EXPECT` says (a uid, or `unknown`).
    #[test]
    fn child_in_a_user_namespace() {
        let Ok(expected) = std::env::var("CES_IDENTITY_EXPECT") else { return };
        assert_eq!(rustix::process::geteuid().as_raw(), 0, "uid 0 in the namespace");
        let uid = expected.parse::<u32>().ok();
        assert_eq!(caller(), Caller::Namespaced { uid });
        assert!(!is_host_root());
    }

    /// As root (CI): this test binary, as `ces-test-rootless` in a user
    /// namespace where it is uid 0, is not root; nor when it hides `/proc`
    /// under a tmpfs with a map of its own.
    #[test]
    fn as_an_unprivileged_user_in_a_user_namespace() {
        if !is_host_root() {
            return;
        }
        let (uid, gid) = rootless_user();
        let (uid, gid) = (uid.to_string(), gid.to_string());
        // A copy the user can reach, wherever the checkout is (/root: 0700).
        let exe = ces_testkit::exe::for_all_users(std::env::current_exe().unwrap());
        let forged = "mount -t tmpfs forged /proc && mkdir /proc/self && echo '0 0 4294967295' > /proc/self/uid_map \
                      && cat /proc/self/uid_map | grep -q 4294967295 && exec \"$0\" \"$@\"";
        for (expect, wrap) in [(uid.as_str(), vec![]), ("unknown", vec!["--mount", "sh", "-c", forged])] {
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid", &uid, "--regid", &gid, "--init-groups", "--", "unshare", "--user", "--map-root-user"])
                .args(wrap)
                .arg(&exe)
                .args(["--exact", "identity::tests::child_in_a_user_namespace", "--nocapture", "--test-threads=1"])
                .env("CES_IDENTITY_EXPECT", expect);
            let output = command.output().unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{expect}: {text}");
            assert!(text.contains("1 passed"), "{expect}: the child ran the test: {text}");
        }
    }
}
