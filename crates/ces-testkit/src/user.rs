//! The unprivileged account the rootless tests run as, made on first use.

use std::fs::File;
use std::process::Command;
use std::sync::OnceLock;

/// Its name.
pub const TEST_USER: &str = "ces-test-rootless";

/// [`TEST_USER`]'s uid and gid, the user made first where it is missing
/// (as root; `useradd`, package passwd). Made once, under a lock held
/// across processes (test binaries, or nextest's one process per test):
/// two `useradd`s of a user that is not there yet, started together, both
/// pass its check, and the second makes the user again under the next free
/// uid, so that the first caller's uid is gone (seen on a fresh machine:
/// "setpriv: uid 999 not found").
pub fn test_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        // (Where the lock cannot be had, a user who is not root cannot
        // make the user either: the lookup says whether it is there.)
        let lock = File::options().create(true).truncate(false).write(true).open("/tmp/ces-test-user.lock");
        let _held = lock.ok().filter(|file| file.lock().is_ok());
        if let Some(ids) = lookup(TEST_USER) {
            return ids;
        }
        let status = Command::new("useradd")
            .args(["--system", "--create-home", "--shell", "/bin/sh", TEST_USER])
            .status()
            .expect("useradd (package passwd) is needed for the rootless tests");
        // 9: made meanwhile by a process that did not take the lock.
        assert!(status.success() || status.code() == Some(9), "useradd {TEST_USER}: {status}");
        lookup(TEST_USER).expect("the test user exists after useradd")
    })
}

/// `name`'s uid and gid in the user database.
fn lookup(name: &str) -> Option<(u32, u32)> {
    let out = Command::new("getent").args(["passwd", name]).output().ok()?;
    let line = String::from_utf8(out.stdout).ok()?;
    let fields: Vec<&str> = line.trim().split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}
