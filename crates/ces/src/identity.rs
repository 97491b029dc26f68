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

use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

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
        use std::process::Command;
        if !is_host_root() {
            return;
        }
        const USER: &str = "ces-test-rootless";
        let _ = Command::new("useradd")
            .args(["--system", "--create-home", "--shell", "/bin/sh", USER])
            .stderr(std::process::Stdio::null())
            .status();
        let id =
            |flag: &str| String::from_utf8(Command::new("id").args([flag, USER]).output().unwrap().stdout).unwrap();
        let uid = id("-u").trim().to_owned();
        let gid = id("-g").trim().to_owned();
        let exe = std::env::current_exe().unwrap();
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
