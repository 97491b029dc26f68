//! Attempts whose start is in the log and whose end is not yet.
//!
//! A command that writes a start record (`pull_start`) first leaves a mark
//! beside the log, `<log>.open/<id>.json`, saying who it runs for, and holds
//! an exclusive `flock` on it until it has written its end and removed the
//! mark ([`OpenMark::close`]). A process that dies (`kill -9`, a crash, a
//! power cut) drops its lock but leaves the mark: the next writer
//! ([`AuditLog::close_lost`]) finds a mark whose lock it can take, writes
//! the end the dead process could not (`supervisor_lost`), and removes it.
//! The mark is written under a temporary name, locked, then renamed, so that
//! no one ever sees a live attempt's mark unlocked.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::log::{AuditError, AuditLog};
use crate::record::{Event, Record, User};

/// The largest mark read back (a mark is a few hundred bytes).
const MAX_MARK_BYTES: u64 = 64 << 10;
/// The prefix of a mark being written.
const NEW_PREFIX: &str = ".new-";

/// What a mark says about the attempt it stands for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Opened {
    /// The attempt's id (a `pull_id`).
    pub id: String,
    /// Who it runs for (its end is recorded for the same user).
    pub user: User,
    /// The process that runs it.
    pub pid: u32,
    /// The image reference, as given.
    pub reference: String,
}

/// The mark of an attempt in progress: locked while it lives.
#[derive(Debug)]
pub struct OpenMark {
    path: PathBuf,
    _lock: File,
}

impl OpenMark {
    /// Removes the mark, once the attempt's end is in the log.
    pub fn close(self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

impl AuditLog {
    /// The directory of the marks of attempts in progress.
    fn open_dir(&self) -> PathBuf {
        let mut name = self.path().file_name().unwrap_or_default().to_os_string();
        name.push(".open");
        self.path().with_file_name(name)
    }

    /// Leaves a mark for `opened`, then appends `start` (its start record)
    /// for its user. Nothing is marked if the record cannot be written.
    pub fn append_open(&self, opened: &Opened, start: Event) -> Result<(Record, OpenMark), AuditError> {
        let dir = self.open_dir();
        let io = |action| move |source| AuditError::Io { action, path: self.path().to_owned(), source };
        std::fs::create_dir_all(&dir).map_err(io("create the directory of open records of"))?;
        // Openable by the log's writers only: anyone who can open a mark can hold its lock.
        let mode = std::fs::metadata(self.path()).map_or(0o600, |m| crate::lock::writers_mode(m.mode()));
        let mark = write_mark(&dir, opened, mode).map_err(io("mark an open record of"))?;
        match self.append(opened.user.clone(), start) {
            Ok(record) => Ok((record, mark)),
            Err(error) => {
                let _ = mark.close();
                Err(error)
            }
        }
    }

    /// Closes the attempts whose process died: for each mark nobody holds,
    /// appends `end(opened)` and removes the mark. Returns how many were
    /// closed; a mark that cannot be read is left for the next writer.
    pub fn close_lost(&self, end: impl Fn(&Opened) -> Event) -> Result<usize, AuditError> {
        let dir = self.open_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(AuditError::Io { action: "read the open records of", path: dir, source }),
        };
        let mut closed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(NEW_PREFIX) || path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some((file, opened)) = take_lost(&path) else { continue };
            self.append(opened.user.clone(), end(&opened))?;
            // Removed while still locked: a writer that opened it meanwhile
            // finds it gone once it gets the lock.
            let _ = std::fs::remove_file(&path);
            drop(file);
            closed += 1;
        }
        Ok(closed)
    }
}

/// Writes `opened` to `<dir>/<id>.json`, locked before anyone can see it.
fn write_mark(dir: &Path, opened: &Opened, mode: u32) -> io::Result<OpenMark> {
    let temp = dir.join(format!("{NEW_PREFIX}{}", opened.id));
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).mode(mode).open(&temp)?;
    rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
    let result = (|| {
        file.write_all(&serde_json::to_vec(opened)?)?;
        let path = dir.join(format!("{}.json", opened.id));
        std::fs::rename(&temp, &path)?;
        Ok(path)
    })();
    match result {
        Ok(path) => Ok(OpenMark { path, _lock: file }),
        Err(error) => {
            let _ = std::fs::remove_file(&temp);
            Err(error)
        }
    }
}

/// The mark at `path`, locked, when its process is gone (nobody holds its
/// lock) and it is still there once locked.
fn take_lost(path: &Path) -> Option<(File, Opened)> {
    let file = File::open(path).ok()?;
    rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).ok()?;
    let (held, now) = (file.metadata().ok()?, std::fs::symlink_metadata(path).ok()?);
    if (held.dev(), held.ino()) != (now.dev(), now.ino()) {
        return None;
    }
    let mut text = Vec::new();
    (&file).take(MAX_MARK_BYTES).read_to_end(&mut text).ok()?;
    let opened = serde_json::from_slice(&text).ok()?;
    Some((file, opened))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::{Outcome, PullEndEvent, PullStartEvent};

    fn opened(id: &str) -> Opened {
        Opened { id: id.into(), user: User { name: "alice".into(), uid: 1000 }, pid: 42, reference: "r".into() }
    }

    fn start(id: &str) -> Event {
        Event::PullStart(PullStartEvent {
            pull_id: id.into(),
            pid: 42,
            reference: "r".into(),
            registry: None,
            registry_user: None,
        })
    }

    fn lost(opened: &Opened) -> Event {
        Event::PullEnd(PullEndEvent {
            pull_id: opened.id.clone(),
            pid: Some(opened.pid),
            reference: opened.reference.clone(),
            outcome: Outcome::SupervisorLost { error: "gone".into() },
        })
    }

    #[test]
    fn a_live_attempt_is_left_alone_and_a_dead_one_closed_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("audit.jsonl"));
        let (_, live) = log.append_open(&opened("live"), start("live")).unwrap();
        let (_, dead) = log.append_open(&opened("dead"), start("dead")).unwrap();
        // A process that dies drops its lock and leaves its mark.
        let OpenMark { path, _lock } = dead;
        drop(_lock);
        assert!(path.exists());
        assert_eq!(log.close_lost(lost).unwrap(), 1);
        assert_eq!(log.close_lost(lost).unwrap(), 0);
        let kinds: Vec<_> = log.records().unwrap().iter().map(|r| (r.event.kind(), r.user.uid)).collect();
        assert_eq!(kinds, [("pull_start", 1000), ("pull_start", 1000), ("pull_end", 1000)]);
        live.close().unwrap();
        assert_eq!(log.close_lost(lost).unwrap(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("audit.jsonl.open")).unwrap().count(), 0);
    }
}
