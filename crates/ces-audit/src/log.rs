//! The log file: appending under a lock, reading, and verifying the chain.
//!
//! A writer opens the log with `O_APPEND`, takes the writers' lock (see
//! [`crate::lock`]), reads the last line (backwards from the end, so the cost does not grow
//! with the log) for its `seq` and hash, and writes the new line with one
//! `write` call. Concurrent writers (other processes, other users) wait for
//! the lock, so records never interleave and the chain stays whole.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ces_image::Digest;

use crate::record::{Event, GENESIS, Record, User};

/// A failure to use the log (not a broken chain: see [`Break`]).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log (or its directory) cannot be opened, locked, read or written.
    #[error("cannot {action} the audit log {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The log.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The write did not take the whole record at once.
    #[error("the audit log {} took {written} of {len} bytes of a record", path.display())]
    ShortWrite {
        /// The log.
        path: PathBuf,
        /// Bytes written.
        written: usize,
        /// Bytes in the record.
        len: usize,
    },
    /// The last line is not a whole record: nothing is appended to a damaged log.
    #[error("the audit log {} ends with a damaged record (line {line}), so nothing more is appended", path.display())]
    DamagedTail {
        /// The log.
        path: PathBuf,
        /// The 1-based line.
        line: u64,
    },
    /// A line is not a record (`ces audit verify` says more).
    #[error("line {line} of the audit log {} is not an audit record", path.display())]
    NotARecord {
        /// The log.
        path: PathBuf,
        /// The 1-based line.
        line: u64,
    },
    /// A record could not be encoded.
    #[error("cannot encode an audit record")]
    Encode(#[source] serde_json::Error),
    /// The writers' lock beside the log cannot be opened or taken.
    #[error("cannot use the audit log's lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The writers' lock beside the log is not one its writers made: its
    /// owner may not write the log (and could hold it for ever), or it is
    /// not a plain file of its own.
    #[error("the audit log's lock {} is not one the log's writers made (it is uid {uid}'s, or not a plain file)", path.display())]
    ForeignLock {
        /// The lock file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
}

/// The system logger's socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// The append-only, hash-chained audit log at a path.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    syslog: Option<PathBuf>,
}

impl AuditLog {
    /// The log at `path` (created, with its directory, on the first append).
    pub fn new(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog { path: path.into(), syslog: None }
    }

    /// Also sends each record appended, as written, to the syslog socket at
    /// `socket` (usually [`SYSLOG_SOCKET`]): a copy where the user cannot edit it.
    pub fn with_syslog(mut self, socket: impl Into<PathBuf>) -> AuditLog {
        self.syslog = Some(socket.into());
        self
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> AuditError + '_ {
        move |source| AuditError::Io { action, path: self.path.clone(), source }
    }

    /// Checks that a record could be appended now: the log (and its
    /// directory) can be opened for appending, created if missing, and it
    /// does not end with a damaged record (which [`AuditLog::append`]
    /// refuses to chain to). A command calls this to refuse to start when it
    /// could not leave its record.
    pub fn check_writable(&self) -> Result<(), AuditError> {
        let mut file = self.open()?;
        let _lock = self.hold(&file, false)?;
        self.next_link(&mut file).map(drop)
    }

    /// The sequence number and `prev` hash of the record to append after the
    /// log's last (the caller holds the lock).
    fn next_link(&self, file: &mut File) -> Result<(u64, String), AuditError> {
        match last_line(file).map_err(self.io("read"))? {
            Tail::Empty => Ok((0, GENESIS.to_owned())),
            Tail::Partial { line } => Err(AuditError::DamagedTail { path: self.path.clone(), line }),
            Tail::Line { bytes } => match serde_json::from_slice::<Record>(&bytes) {
                Ok(last) => Ok((last.seq + 1, sha256_hex(&bytes))),
                Err(_) => {
                    let line = count_lines(file).map_err(self.io("read"))?;
                    Err(AuditError::DamagedTail { path: self.path.clone(), line })
                }
            },
        }
    }

    fn open(&self) -> Result<File, AuditError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(self.io("create the directory of"))?;
        }
        OpenOptions::new().read(true).append(true).create(true).mode(0o640).open(&self.path).map_err(self.io("open"))
    }

    /// Appends one record for `user` and `event`, chained to the last one,
    /// and returns it.
    pub fn append(&self, user: User, mut event: Event) -> Result<Record, AuditError> {
        event.bound_text();
        let mut file = self.open()?;
        // Released when they are closed, whatever happens below.
        let lock = self.hold(&file, true)?;
        let (seq, prev) = self.next_link(&mut file)?;
        let record = Record { seq, prev, time: jiff::Timestamp::now(), user, event };
        let mut bytes = serde_json::to_vec(&record).map_err(AuditError::Encode)?;
        bytes.push(b'\n');
        // One write: with O_APPEND and the lock, the record lands whole, after the last.
        let before = file.metadata().map_err(self.io("read"))?.len();
        let written = file.write(&bytes);
        if !written.as_ref().is_ok_and(|&n| n == bytes.len()) {
            // A disk or a quota that fills up takes part of the record: the
            // part goes (the lock is still held), so that the log still
            // ends with its last whole record and takes the next once there
            // is room, rather than being damaged for good.
            let _ = file.set_len(before);
            let written = written.map_err(self.io("write"))?;
            return Err(AuditError::ShortWrite { path: self.path.clone(), written, len: bytes.len() });
        }
        file.sync_data().map_err(self.io("sync"))?;
        drop((file, lock));
        tracing::debug!(seq, path = %self.path.display(), "audit record appended");
        if let Some(socket) = &self.syslog {
            // The log file is the record; the copy is best effort, and said when it fails.
            if let Err(error) = send_syslog(socket, &bytes[..bytes.len() - 1]) {
                tracing::warn!(socket = %socket.display(), %error, seq, "cannot send the audit record to syslog");
            }
        }
        Ok(record)
    }

    /// Reads every record (for `ces audit show`), streaming; a line that is
    /// not a record is an error (`verify` says more).
    pub fn records(&self) -> Result<Vec<Record>, AuditError> {
        let Some(mut reader) = self.reader()? else { return Ok(Vec::new()) };
        let mut records = Vec::new();
        let mut text = Vec::new();
        let mut line = 0u64;
        loop {
            text.clear();
            if reader.read_until(b'\n', &mut text).map_err(self.io("read"))? == 0 {
                return Ok(records);
            }
            line += 1;
            match serde_json::from_slice(text.strip_suffix(b"\n").unwrap_or(&text)) {
                Ok(record) => records.push(record),
                Err(_) => return Err(AuditError::NotARecord { path: self.path.clone(), line }),
            }
        }
    }

    /// Walks the whole log, streaming, and recomputes the chain.
    pub fn verify(&self) -> Result<Report, AuditError> {
        match self.reader()? {
            Some(reader) => verify_reader(reader).map_err(self.io("read")),
            None => Ok(Report { records: 0, broken: None }),
        }
    }

    /// The log, buffered; `None` when there is none yet.
    fn reader(&self) -> Result<Option<BufReader<File>>, AuditError> {
        match File::open(&self.path) {
            Ok(file) => Ok(Some(BufReader::with_capacity(1 << 16, file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("open")(e)),
        }
    }
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The records checked before the first break (all of them when whole).
    pub records: u64,
    /// The first break in the chain, if any.
    pub broken: Option<Break>,
}

/// The first place the chain breaks. Lines are 1-based; `seq` is the
/// sequence number expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    /// The log ends in the middle of a line: it was cut, or a write broke off.
    #[error("line {line} (record seq {seq}) is cut short: the log was truncated")]
    Truncated {
        /// The line.
        line: u64,
        /// The seq expected.
        seq: u64,
    },
    /// A line is not a record.
    #[error("line {line} (record seq {seq}) is not an audit record: it was edited or inserted")]
    Malformed {
        /// The line.
        line: u64,
        /// The seq expected.
        seq: u64,
    },
    /// The sequence jumps.
    #[error("line {line} has record seq {found} where seq {seq} belongs: records were removed, inserted or reordered")]
    Sequence {
        /// The line.
        line: u64,
        /// The seq expected.
        seq: u64,
        /// The seq found.
        found: u64,
    },
    /// A record does not carry the hash of the line before it.
    #[error(
        "record seq {seq} (line {line}) does not chain to the line before it: record seq {} (line {}) was edited, or seq {seq} was forged",
        seq.saturating_sub(1), line.saturating_sub(1)
    )]
    Chain {
        /// The line.
        line: u64,
        /// The seq.
        seq: u64,
    },
}

/// Verifies a log read from `reader`, line by line.
fn verify_reader(mut reader: impl BufRead) -> io::Result<Report> {
    let mut prev = GENESIS.to_owned();
    let mut seq = 0u64;
    let mut line = 0u64;
    let mut text = Vec::new();
    loop {
        text.clear();
        if reader.read_until(b'\n', &mut text)? == 0 {
            return Ok(Report { records: seq, broken: None });
        }
        line += 1;
        let broken = |broken| Ok(Report { records: seq, broken: Some(broken) });
        let Some(whole) = text.strip_suffix(b"\n") else {
            return broken(Break::Truncated { line, seq });
        };
        let Ok(record) = serde_json::from_slice::<Record>(whole) else {
            // A last line of JSON that is cut short is a truncation too.
            let last = reader.fill_buf()?.is_empty();
            let truncated = last && serde_json::from_slice::<serde_json::Value>(whole).is_err();
            return broken(if truncated { Break::Truncated { line, seq } } else { Break::Malformed { line, seq } });
        };
        if record.seq != seq {
            return broken(Break::Sequence { line, seq, found: record.seq });
        }
        if record.prev != prev {
            return broken(Break::Chain { line, seq });
        }
        prev = sha256_hex(whole);
        seq += 1;
    }
}

/// Sends one line to syslog: facility authpriv, severity info, tag `ces-audit`.
fn send_syslog(socket: &Path, line: &[u8]) -> io::Result<()> {
    const AUTHPRIV_INFO: u8 = 10 * 8 + 6;
    let mut message = format!("<{AUTHPRIV_INFO}>ces-audit[{}]: ", std::process::id()).into_bytes();
    message.extend_from_slice(line);
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    sender.send_to(&message, socket)?;
    Ok(())
}

/// sha256 of `bytes`, in hex: what `prev` holds for the line `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Digest::of(bytes).hex().to_owned()
}

/// The end of the log.
enum Tail {
    Empty,
    /// The last line lacks its newline.
    Partial {
        line: u64,
    },
    /// The last whole line (without its newline).
    Line {
        bytes: Vec<u8>,
    },
}

/// Reads the last line, from the end backwards, in blocks (lines are only
/// counted, from the start, when the tail is damaged, to name it).
fn last_line(file: &mut File) -> io::Result<Tail> {
    const BLOCK: u64 = 8192;
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(Tail::Empty);
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] != b'\n' {
        return Ok(Tail::Partial { line: count_lines(file)? + 1 });
    }
    // Search backwards for the newline before the last one.
    let end = len - 1;
    let mut start = end;
    let mut line = Vec::new();
    loop {
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0u8; usize::try_from(start - from).unwrap_or(0)];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        if let Some(pos) = block.iter().rposition(|b| *b == b'\n') {
            block.drain(..=pos);
            block.extend_from_slice(&line);
            line = block;
            break;
        }
        block.extend_from_slice(&line);
        line = block;
        start = from;
        if from == 0 {
            break;
        }
    }
    if line.is_empty() {
        return Ok(Tail::Partial { line: count_lines(file)? });
    }
    Ok(Tail::Line { bytes: line })
}

fn count_lines(file: &mut File) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut count = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(count);
        }
        count += buffer[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::{Outcome, PullEvent};

    fn user() -> User {
        User { name: "alice".into(), uid: 1000 }
    }

    fn pull(n: usize) -> Event {
        Event::Pull(PullEvent {
            pull_id: None,
            reference: format!("ghcr.io/a/b:{n}"),
            registry: Some("ghcr.io".into()),
            registry_user: None,
            digest: None,
            provenance: None,
            endpoint: None,
            outcome: Outcome::Ok,
        })
    }

    /// A log of `n` records, and its lines (each with its newline).
    fn log_of(n: usize) -> (tempfile::TempDir, AuditLog, Vec<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("sub/audit.jsonl"));
        for i in 0..n {
            assert_eq!(log.append(user(), pull(i)).unwrap().seq, i as u64);
        }
        let lines = std::fs::read(log.path())
            .unwrap_or_default()
            .split_inclusive(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        (dir, log, lines)
    }

    /// Verifies a whole log's bytes.
    fn verify_bytes(bytes: &[u8]) -> Report {
        verify_reader(bytes).unwrap()
    }

    fn broken(lines: &[Vec<u8>]) -> Option<Break> {
        verify_bytes(&lines.concat()).broken
    }

    #[test]
    fn appended_records_chain_and_verify() {
        let (_dir, log, lines) = log_of(5);
        assert_eq!(lines.len(), 5);
        assert_eq!(log.verify().unwrap(), Report { records: 5, broken: None });
        let records = log.records().unwrap();
        assert_eq!(records[0].prev, GENESIS);
        assert_eq!(records[3].prev, sha256_hex(lines[2].strip_suffix(b"\n").unwrap()));
        assert_eq!(records[4].event, pull(4));
        // An absent log is an empty, whole one.
        let absent = AuditLog::new(log.path().with_file_name("absent"));
        assert_eq!(absent.verify().unwrap(), Report { records: 0, broken: None });
        assert!(absent.records().unwrap().is_empty());
    }

    #[test]
    fn attacker_text_is_recorded_short_and_escaped() {
        let (_dir, log, _) = log_of(0);
        let name = format!("evil\x1b]8;;http://x\x07{}", "a".repeat(1 << 20));
        let mut event = pull(0);
        if let Event::Pull(pull) = &mut event {
            pull.outcome = Outcome::Error { error: format!("cannot apply layer entry {name}") };
        }
        let record = log.append(user(), event).unwrap();
        let Outcome::Error { error } = record.event.outcome() else { panic!("{record:?}") };
        assert!(error.starts_with("cannot apply layer entry evil\\x1b]8;;http://x\\x07aaa"), "{error}");
        assert!(error.len() < 2 * crate::record::MAX_ERROR_TEXT, "{}", error.len());
        let line = std::fs::read(log.path()).unwrap();
        assert!(line.len() < 3 * crate::record::MAX_ERROR_TEXT, "{}", line.len());
        assert!(!line.contains(&0x1b) && !line.windows(6).any(|w| w == b"\\u001b"));
    }

    #[test]
    fn an_edited_field_is_named_by_the_next_records_chain() {
        let (_dir, _log, mut lines) = log_of(5);
        let text = String::from_utf8(lines[2].clone()).unwrap().replace("\"alice\"", "\"mallory\"");
        lines[2] = text.into_bytes();
        assert_eq!(broken(&lines), Some(Break::Chain { line: 4, seq: 3 }));
        let message = broken(&lines).unwrap().to_string();
        assert!(message.contains("record seq 2 (line 3) was edited"), "{message}");
    }

    #[test]
    fn a_removed_record_is_a_sequence_gap() {
        let (_dir, _log, mut lines) = log_of(5);
        lines.remove(1);
        assert_eq!(broken(&lines), Some(Break::Sequence { line: 2, seq: 1, found: 2 }));
        let (_dir, _log, mut lines) = log_of(3);
        lines.remove(0);
        assert_eq!(broken(&lines), Some(Break::Sequence { line: 1, seq: 0, found: 1 }));
    }

    #[test]
    fn swapped_records_are_out_of_sequence() {
        let (_dir, _log, mut lines) = log_of(5);
        lines.swap(2, 3);
        assert_eq!(broken(&lines), Some(Break::Sequence { line: 3, seq: 2, found: 3 }));
    }

    #[test]
    fn an_inserted_record_breaks_the_sequence_or_the_chain() {
        let (_dir, _log, mut lines) = log_of(4);
        // A copy of a record, inserted.
        let copy = lines[1].clone();
        lines.insert(2, copy);
        assert_eq!(broken(&lines), Some(Break::Sequence { line: 3, seq: 2, found: 1 }));
        // A forged record with the right seq and renumbered followers: the chain breaks.
        let (_dir, _log, mut lines) = log_of(3);
        let mut forged: Record = serde_json::from_slice(&lines[1]).unwrap();
        forged.user.name = "mallory".into();
        let mut bytes = serde_json::to_vec(&forged).unwrap();
        bytes.push(b'\n');
        lines.insert(1, bytes);
        // It chains to the record before it, but the original now follows out of sequence.
        assert_eq!(broken(&lines), Some(Break::Sequence { line: 3, seq: 2, found: 1 }));
        // Renumbering what follows does not help: the chain breaks after the forgery.
        let mut renumbered: Record = serde_json::from_slice(&lines[2]).unwrap();
        renumbered.seq = 2;
        let mut bytes = serde_json::to_vec(&renumbered).unwrap();
        bytes.push(b'\n');
        lines[2] = bytes;
        assert_eq!(broken(&lines), Some(Break::Chain { line: 3, seq: 2 }));
        // Garbage inserted.
        let (_dir, _log, mut lines) = log_of(3);
        lines.insert(1, b"{\"hello\": 1}\n".to_vec());
        assert_eq!(broken(&lines), Some(Break::Malformed { line: 2, seq: 1 }));
    }

    #[test]
    fn an_appended_record_without_the_chain_is_caught() {
        let (_dir, log, mut lines) = log_of(3);
        let mut forged: Record = serde_json::from_slice(&lines[2]).unwrap();
        forged.seq = 3;
        forged.prev = GENESIS.into();
        let mut bytes = serde_json::to_vec(&forged).unwrap();
        bytes.push(b'\n');
        lines.push(bytes);
        assert_eq!(broken(&lines), Some(Break::Chain { line: 4, seq: 3 }));
        std::fs::write(log.path(), lines.concat()).unwrap();
        assert_eq!(log.verify().unwrap(), Report { records: 3, broken: Some(Break::Chain { line: 4, seq: 3 }) });
    }

    #[test]
    fn a_truncated_log_is_caught_and_not_appended_to() {
        let (_dir, log, lines) = log_of(3);
        let mut bytes = lines.concat();
        bytes.truncate(bytes.len() - 10);
        assert_eq!(verify_bytes(&bytes).broken, Some(Break::Truncated { line: 3, seq: 2 }));
        std::fs::write(log.path(), &bytes).unwrap();
        let error = log.append(user(), pull(9)).unwrap_err();
        assert!(matches!(error, AuditError::DamagedTail { line: 3, .. }), "{error}");
        assert_eq!(std::fs::read(log.path()).unwrap(), bytes, "nothing appended");
        // Cut at a newline, with the last line's JSON unfinished.
        let mut bytes = lines[..2].concat();
        bytes.extend_from_slice(b"{\"seq\":2,\"prev\n");
        assert_eq!(verify_bytes(&bytes).broken, Some(Break::Truncated { line: 3, seq: 2 }));
    }

    #[test]
    fn records_name_a_line_that_is_not_one() {
        let (_dir, log, mut lines) = log_of(3);
        lines.insert(1, b"not json\n".to_vec());
        std::fs::write(log.path(), lines.concat()).unwrap();
        let error = log.records().unwrap_err();
        assert!(matches!(error, AuditError::NotARecord { line: 2, .. }), "{error}");
        assert!(error.to_string().contains(&format!("line 2 of the audit log {}", log.path().display())), "{error}");
    }

    #[test]
    fn a_whole_last_line_that_is_not_a_record_is_not_appended_to() {
        let (_dir, log, mut lines) = log_of(3);
        lines[2] = b"{\"hello\": 1}\n".to_vec();
        let bytes = lines.concat();
        std::fs::write(log.path(), &bytes).unwrap();
        let error = log.append(user(), pull(9)).unwrap_err();
        assert!(matches!(error, AuditError::DamagedTail { line: 3, .. }), "{error}");
        assert!(error.to_string().contains(&log.path().display().to_string()), "{error}");
        assert_eq!(std::fs::read(log.path()).unwrap(), bytes, "nothing appended");
        // An empty last line is damage too.
        let mut bytes = lines[..2].concat();
        bytes.push(b'\n');
        std::fs::write(log.path(), &bytes).unwrap();
        let error = log.append(user(), pull(9)).unwrap_err();
        assert!(matches!(error, AuditError::DamagedTail { line: 3, .. }), "{error}");
    }

    #[test]
    fn a_log_that_cannot_be_created_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let log = AuditLog::new(dir.path().join("file/audit.jsonl"));
        let error = log.check_writable().unwrap_err();
        assert!(matches!(error, AuditError::Io { action: "create the directory of", .. }), "{error}");
        assert!(error.to_string().contains(&log.path().display().to_string()), "{error}");
        assert!(matches!(log.append(user(), pull(0)), Err(AuditError::Io { .. })));
    }

    #[test]
    fn the_last_line_is_found_past_block_boundaries() {
        // A record longer than the read block.
        let long = || {
            Event::Pull(PullEvent {
                pull_id: None,
                reference: "x".repeat(20_000),
                registry: None,
                registry_user: None,
                digest: None,
                provenance: None,
                endpoint: None,
                outcome: Outcome::Error { error: "y".repeat(9000) },
            })
        };
        let (_dir, log, _lines) = log_of(1);
        log.append(user(), long()).unwrap();
        log.append(user(), pull(2)).unwrap();
        log.append(user(), pull(3)).unwrap();
        assert_eq!(log.verify().unwrap(), Report { records: 4, broken: None });
        // The first line, read back to the start of the file.
        let (_dir, log, _lines) = log_of(0);
        log.append(user(), long()).unwrap();
        assert_eq!(log.append(user(), pull(1)).unwrap().seq, 1);
        assert_eq!(log.verify().unwrap(), Report { records: 2, broken: None });
    }

    #[test]
    fn records_are_copied_to_syslog_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("log.sock");
        let receiver = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
        let log = AuditLog::new(dir.path().join("audit.jsonl")).with_syslog(&socket);
        log.append(user(), pull(1)).unwrap();
        let mut buffer = vec![0u8; 65536];
        let n = receiver.recv(&mut buffer).unwrap();
        let message = String::from_utf8(buffer[..n].to_vec()).unwrap();
        let line = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(message, format!("<86>ces-audit[{}]: {}", std::process::id(), line.trim_end()));
        // No syslog listening: the record is still appended.
        drop(receiver);
        log.append(user(), pull(2)).unwrap();
        assert_eq!(log.verify().unwrap().records, 2);
    }

    #[test]
    fn concurrent_writers_keep_one_chain() {
        let (_dir, log, _lines) = log_of(0);
        std::thread::scope(|scope| {
            for t in 0..20 {
                let log = log.clone();
                scope.spawn(move || {
                    for i in 0..10 {
                        log.append(user(), pull(t * 100 + i)).unwrap();
                    }
                });
            }
        });
        assert_eq!(log.verify().unwrap(), Report { records: 200, broken: None });
    }
}
