//! The writers' lock of a log: `<log>.lock`, beside it.
//!
//! Anyone who can open a file may `flock` it, read-only too. Those who may
//! read the log (its group: Information Governance's reviewers) must not be
//! able to stop its writers, so writers lock a file of their own, which only
//! those who may write the log can open: made with the log's write bits as
//! read and write bits (`0600` for a `0640` log), its last component never
//! followed. A lock file that someone else made in the log's directory is
//! trusted only when it belongs to the log's owner, to root, to this user,
//! or (for a group-writable log) to the log's group.
//!
//! Earlier versions locked the log itself. Writers still take that lock
//! too, so that a ces started before an upgrade (a run that records its end
//! hours later) never writes at the same time; but they wait for it
//! [`OLD_WRITER_WAIT`] at most, and then go on, saying so: a writer holds
//! it for milliseconds, and a reader who holds it longer can delay, not stop,
//! the writers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

use crate::log::{AuditError, AuditLog};

/// How long a writer waits for the lock on the log itself (see the module).
pub const OLD_WRITER_WAIT: Duration = Duration::from_secs(2);

/// The mode of the lock (and of the open-attempt marks) of a log of mode
/// `log_mode`: read and write for those who may write the log, and no one
/// else.
pub(crate) fn writers_mode(log_mode: u32) -> u32 {
    let mut mode = 0o600;
    if log_mode & 0o020 != 0 {
        mode |= 0o060;
    }
    if log_mode & 0o002 != 0 {
        mode |= 0o006;
    }
    mode
}

impl AuditLog {
    /// The writers' lock file.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.path().file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        self.path().with_file_name(name)
    }

    /// Takes the writers' lock of the open `log`: exclusive to append, and
    /// then the log's own `flock` for writers of earlier versions (see the
    /// module); shared to check the log's end (no wait for the log's own:
    /// a check writes nothing). Held until the returned file is closed (and
    /// the log's, until `log` is).
    pub(crate) fn hold(&self, log: &File, exclusive: bool) -> Result<File, AuditError> {
        let path = self.lock_path();
        let failed = |source| AuditError::Lock { path: path.clone(), source };
        let log_meta = log.metadata().map_err(self.io("read"))?;
        let group_writers = log_meta.mode() & 0o020 != 0;
        // Made for its owner only; opened to the log's other writers below,
        // once it is theirs to open.
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32)
            .open(&path)
            .map_err(failed)?;
        let meta = lock.metadata().map_err(failed)?;
        // Never a file that is also elsewhere (a hard link to one of root's).
        let plain = meta.is_file() && meta.nlink() == 1;
        if meta.uid() == rustix::process::geteuid().as_raw() && plain {
            let mut mode = writers_mode(log_meta.mode());
            if group_writers && meta.gid() != log_meta.gid() {
                // The log's other writers open it through the log's group:
                // the group bits only once it is that group's.
                let gid = rustix::fs::Gid::from_raw(log_meta.gid());
                if rustix::fs::fchown(&lock, None, Some(gid)).is_err() {
                    mode &= !0o060;
                }
            }
            if meta.mode() & 0o777 != mode {
                lock.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(failed)?;
            }
        } else {
            let trusted = meta.uid() == log_meta.uid()
                || meta.uid() == 0
                || (group_writers && meta.gid() == log_meta.gid() && meta.mode() & 0o002 == 0);
            if !trusted || !plain {
                return Err(AuditError::ForeignLock { path, uid: meta.uid() });
            }
        }
        if !exclusive {
            rustix::fs::flock(&lock, FlockOperation::LockShared).map_err(|e| failed(e.into()))?;
            return Ok(lock);
        }
        rustix::fs::flock(&lock, FlockOperation::LockExclusive).map_err(|e| failed(e.into()))?;
        let since = Instant::now();
        loop {
            match rustix::fs::flock(log, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if since.elapsed() < OLD_WRITER_WAIT => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    tracing::warn!(
                        log = %self.path().display(),
                        "another process has held a lock on the audit log for {} s (a reader that can delay \
                         writers; ces's own lock is {}): going on",
                        OLD_WRITER_WAIT.as_secs(),
                        path.display()
                    );
                    break;
                }
                Err(e) => return Err(self.io("lock")(io::Error::from(e))),
            }
        }
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::{Event, PullStartEvent, User};

    fn event() -> Event {
        Event::PullStart(PullStartEvent {
            pull_id: "p".into(),
            pid: 1,
            reference: "r".into(),
            registry: None,
            registry_user: None,
        })
    }

    fn user() -> User {
        User { name: "alice".into(), uid: 1000 }
    }

    #[test]
    fn the_lock_is_for_the_logs_writers_only() {
        assert_eq!(writers_mode(0o640), 0o600);
        assert_eq!(writers_mode(0o600), 0o600);
        assert_eq!(writers_mode(0o664), 0o660);
        assert_eq!(writers_mode(0o666), 0o666);
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("audit.jsonl"));
        log.append(user(), event()).unwrap();
        let mode = std::fs::metadata(log.lock_path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A lock left wider (as by hand) is closed by the next writer.
        std::fs::set_permissions(log.lock_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        log.append(user(), event()).unwrap();
        assert_eq!(std::fs::metadata(log.lock_path()).unwrap().mode() & 0o777, 0o600);
        // A link in its place is not followed.
        std::fs::remove_file(log.lock_path()).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), log.lock_path()).unwrap();
        let error = log.append(user(), event()).unwrap_err();
        assert!(error.to_string().contains("cannot use the audit log's lock"), "{error}");
        assert!(std::error::Error::source(&error).unwrap().to_string().contains("symbolic links"), "{error}");
        assert!(!dir.path().join("elsewhere").exists());
        // Nor a file that is also elsewhere: a hard link is neither
        // changed nor locked.
        let other = dir.path().join("other");
        std::fs::write(&other, "").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(log.lock_path()).unwrap();
        std::fs::hard_link(&other, log.lock_path()).unwrap();
        let error = log.append(user(), event()).unwrap_err();
        assert!(error.to_string().contains("is not one the log's writers made"), "{error}");
        assert_eq!(std::fs::metadata(&other).unwrap().mode() & 0o777, 0o644);
        assert_eq!(log.verify().unwrap().records, 2);
    }

    /// A process that holds a lock on the log itself (a reader, or a ces of
    /// an earlier version) delays a writer by [`OLD_WRITER_WAIT`] at most;
    /// one that holds the writers' lock makes it wait.
    #[test]
    fn a_lock_held_on_the_log_itself_delays_a_writer_and_does_not_stop_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("audit.jsonl"));
        log.append(user(), event()).unwrap();
        let held = File::open(log.path()).unwrap();
        rustix::fs::flock(&held, FlockOperation::LockExclusive).unwrap();
        let clock = Instant::now();
        log.append(user(), event()).unwrap();
        assert!(clock.elapsed() >= OLD_WRITER_WAIT, "it waited for the log's own lock first");
        assert_eq!(log.verify().unwrap().records, 2);
        drop(held);

        let writers = File::open(log.lock_path()).unwrap();
        rustix::fs::flock(&writers, FlockOperation::LockExclusive).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let writer = log.clone();
        let thread = std::thread::spawn(move || sender.send(writer.append(user(), event()).map(|r| r.seq)).unwrap());
        assert!(receiver.recv_timeout(Duration::from_millis(300)).is_err(), "it waits for the writers' lock");
        drop(writers);
        assert_eq!(receiver.recv().unwrap().unwrap(), 2);
        thread.join().unwrap();
    }
}
