//! A blob read while it is still being downloaded: its layer is unpacked as
//! its bytes arrive, instead of after the last one.
//!
//! The downloader writes the blob to a file and says how it goes through a
//! [`Feed`]: more bytes ([`Feed::progressed`]), the blob whole and verified
//! ([`Feed::complete`]), or no more bytes will come to this file
//! ([`Feed::end`]: the download failed, was cancelled, or started again in
//! another file). A [`FollowReader`] reads the file up to the blob's size,
//! waiting at its current end for more, and hashes every byte it hands on.
//!
//! What was read is trusted only through its own hash: [`FollowCheck::finish`]
//! reads what the decompressor left unread, and returns the digest of all
//! `size` bytes the reader saw. The caller names nothing made from them
//! unless that is the blob's digest, whatever the downloader did to its file.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::digest::{Digest, HashingReader};

/// How long a reader at the file's end waits before it looks again, should
/// a notification be missed.
const RECHECK: Duration = Duration::from_millis(100);

/// What the writer of a blob's file says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedState {
    /// Bytes are still being written.
    Writing,
    /// The blob is whole in the file, and was verified.
    Complete,
    /// No more bytes will be written to this file.
    Ended,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Feed {
    /// The state, and a count of changes (so that a reader that saw no new
    /// bytes waits only if nothing happened since it looked).
    state: Mutex<(FeedState, u64)>,
    changed: Condvar,
}

impl Feed {
    /// A feed for a file being written.
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed { state: Mutex::new((FeedState::Writing, 0)), changed: Condvar::new() })
    }

    fn set(&self, change: impl FnOnce(&mut FeedState)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut state.0);
        state.1 = state.1.wrapping_add(1);
        self.changed.notify_all();
    }

    /// More bytes were received (they may still be buffered).
    pub fn progressed(&self) {
        self.set(|_| {});
    }

    /// The blob is whole and verified in the file.
    pub fn complete(&self) {
        self.set(|state| {
            if *state == FeedState::Writing {
                *state = FeedState::Complete;
            }
        });
    }

    /// No more bytes will come to this file (unless it is complete already).
    pub fn end(&self) {
        self.set(|state| {
            if *state == FeedState::Writing {
                *state = FeedState::Ended;
            }
        });
    }

    fn now(&self) -> (FeedState, u64) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the blob is whole and verified (stored by now).
    pub fn is_complete(&self) -> bool {
        self.now().0 == FeedState::Complete
    }

    /// Whether no more bytes will come, the blob not whole.
    pub fn has_ended(&self) -> bool {
        self.now().0 == FeedState::Ended
    }

    /// Waits until the state is no longer `seen` (or a while has passed).
    fn wait_change(&self, seen: u64) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.1 == seen {
            let _ = self.changed.wait_timeout(state, RECHECK);
        }
    }
}

/// The blob's file, read up to the blob's size, waiting at its end for more.
struct Tail {
    file: File,
    feed: Arc<Feed>,
    size: u64,
    at: u64,
}

impl Read for Tail {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.size - self.at;
            if left == 0 || buf.is_empty() {
                return Ok(0);
            }
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let (state, seen) = self.feed.now();
            let n = match self.file.read_at(&mut buf[..want], self.at) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n > 0 {
                self.at += n as u64;
                return Ok(n);
            }
            // At the file's end: the state was read before it, so a blob
            // completed since is read again before it is called short.
            match state {
                FeedState::Writing => self.feed.wait_change(seen),
                FeedState::Complete => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the blob's file ends at {} of its {} bytes", self.at, self.size),
                    ));
                }
                FeedState::Ended => {
                    return Err(io::Error::other(format!(
                        "the download stopped at {} of the blob's {} bytes",
                        self.at, self.size
                    )));
                }
            }
        }
    }
}

/// The blob's file, hashed as it is read: shared by the reader and its
/// check (`None` once checked).
type Shared = Arc<Mutex<Option<HashingReader<Tail>>>>;

/// Reads a blob's file as it is written; see the module documentation.
pub struct FollowReader(Shared);

/// Finishes what a [`FollowReader`] started: see [`FollowCheck::finish`].
pub struct FollowCheck {
    tail: Shared,
    feed: Arc<Feed>,
}

/// A reader of `file`, which is being written with a blob of `size` bytes
/// (as `feed` tells), and the check of what it read.
pub fn follow(file: File, size: u64, feed: Arc<Feed>) -> (FollowReader, FollowCheck) {
    let tail = Tail { file, feed: feed.clone(), size, at: 0 };
    let shared = Arc::new(Mutex::new(Some(HashingReader::new(tail))));
    (FollowReader(shared.clone()), FollowCheck { tail: shared, feed })
}

/// Dropped armed, it tells the reader that no more bytes will come: a
/// reader waiting at the file's end returns an error at once.
pub struct Abandon(Option<Arc<Feed>>);

impl Abandon {
    /// The reading went to its end: nothing to stop.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(feed) = self.0.take() {
            feed.end();
        }
    }
}

impl Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(tail) => tail.read(buf),
            None => Ok(0),
        }
    }
}

impl FollowCheck {
    /// What the downloader says of the blob's file.
    pub fn feed(&self) -> Arc<Feed> {
        self.feed.clone()
    }

    /// What stops the reader if the reading ends early (an unpacking
    /// error): see [`Abandon`].
    pub fn abandon_on_drop(&self) -> Abandon {
        Abandon(Some(self.feed.clone()))
    }

    /// Reads the bytes the reader was not asked for (waiting for them if
    /// need be), and returns the digest of all the blob's bytes as read.
    pub fn finish(self) -> io::Result<Digest> {
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner).take();
        let tail = tail.ok_or_else(|| io::Error::other("the blob's bytes were checked already"))?;
        tail.drain().map(|(digest, _)| digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Writes `data` to `path` in pieces on a thread, telling `feed`, then
    /// `finally` (complete or end).
    fn writer(
        path: std::path::PathBuf,
        data: Vec<u8>,
        feed: Arc<Feed>,
        finally: fn(&Feed),
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            for piece in data.chunks(10_000) {
                file.write_all(piece).unwrap();
                feed.progressed();
                std::thread::sleep(Duration::from_millis(2));
            }
            finally(&feed);
        })
    }

    fn setup(len: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>, Arc<Feed>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        File::create(&path).unwrap();
        (dir, path, blob(len), Feed::new())
    }

    #[test]
    fn reads_every_byte_as_it_is_written_and_hashes_them() {
        let (_dir, path, data, feed) = setup(123_457);
        let (mut reader, check) = follow(File::open(&path).unwrap(), data.len() as u64, feed.clone());
        let writing = writer(path, data.clone(), feed, Feed::complete);
        let mut first = vec![0; 1000];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(first, data[..1000]);
        // The rest is read by the check, as a decompressor that stops
        // before the blob's end leaves it.
        assert_eq!(check.finish().unwrap(), Digest::of(&data));
        writing.join().unwrap();
    }

    #[test]
    fn a_whole_read_ends_at_the_blobs_size() {
        let (_dir, path, data, feed) = setup(50_001);
        let (mut reader, check) = follow(File::open(&path).unwrap(), data.len() as u64, feed.clone());
        let writing = writer(path, data.clone(), feed, Feed::complete);
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        assert_eq!(read, data);
        assert_eq!(check.finish().unwrap(), Digest::of(&data));
        writing.join().unwrap();
    }

    #[test]
    fn a_download_that_ends_short_is_an_error_not_an_end() {
        let (_dir, path, data, feed) = setup(40_000);
        let (mut reader, check) = follow(File::open(&path).unwrap(), 50_000, feed.clone());
        let writing = writer(path, data, feed, Feed::end);
        let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("stopped at 40000 of the blob's 50000 bytes"), "{error}");
        assert!(check.finish().is_err());
        writing.join().unwrap();
    }

    #[test]
    fn a_blob_said_complete_but_short_in_its_file_is_an_error() {
        let (_dir, path, data, feed) = setup(30_000);
        let (mut reader, _check) = follow(File::open(&path).unwrap(), 30_001, feed.clone());
        writer(path, data, feed, Feed::complete).join().unwrap();
        let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }

    #[test]
    fn bytes_past_the_size_are_never_read() {
        let (_dir, path, data, feed) = setup(20_000);
        let (mut reader, check) = follow(File::open(&path).unwrap(), 15_000, feed.clone());
        writer(path, data.clone(), feed, Feed::complete).join().unwrap();
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        assert_eq!(read, data[..15_000]);
        assert_eq!(check.finish().unwrap(), Digest::of(&data[..15_000]));
    }

    #[test]
    fn other_bytes_than_the_blobs_give_another_digest() {
        let (_dir, path, mut data, feed) = setup(20_000);
        let (mut reader, check) = follow(File::open(&path).unwrap(), 20_000, feed.clone());
        let good = Digest::of(&data);
        data[19_999] ^= 1;
        writer(path, data, feed, Feed::complete).join().unwrap();
        reader.read_to_end(&mut Vec::new()).unwrap();
        assert_ne!(check.finish().unwrap(), good);
    }

    #[test]
    fn a_feed_ends_or_completes_once() {
        let feed = Feed::new();
        feed.progressed();
        assert_eq!(feed.now().0, FeedState::Writing);
        assert!(!feed.is_complete());
        feed.complete();
        // Ended after completion changes nothing.
        feed.end();
        assert!(feed.is_complete());
        let ended = Feed::new();
        ended.end();
        ended.complete();
        assert_eq!(ended.now().0, FeedState::Ended);
    }

    #[test]
    fn an_abandoned_reader_stops_waiting_at_once() {
        let (_dir, path, data, feed) = setup(10_000);
        let (mut reader, check) = follow(File::open(&path).unwrap(), 20_000, feed.clone());
        std::fs::write(&path, &data).unwrap();
        let waiting = std::thread::spawn(move || reader.read_to_end(&mut Vec::new()));
        std::thread::sleep(Duration::from_millis(50));
        let abandon = check.abandon_on_drop();
        let mut disarmed = check.abandon_on_drop();
        disarmed.disarm();
        drop(disarmed);
        assert!(!waiting.is_finished(), "a disarmed guard stops nothing");
        drop(abandon);
        let error = waiting.join().unwrap().unwrap_err();
        assert!(error.to_string().contains("stopped at 10000"), "{error}");
    }
}
