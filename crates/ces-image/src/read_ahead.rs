//! A reader run on a thread of its own, its bytes handed over in chunks:
//! while the caller works on one chunk (writes a layer's files, hashes it),
//! the thread makes the next ones (decompresses). Two cores for one stream.
//!
//! The thread never outlives its [`ReadAhead`]: dropping it closes the
//! channel and joins the thread (a process that forks later has no thread
//! left holding a lock). Errors of the thread's reader come through
//! [`Read::read`] in the stream's place, and again on every later read.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

/// Bytes per chunk.
const CHUNK: usize = 256 << 10;
/// Chunks made ahead of the reader (at most this many, plus the one being
/// read and the one being made, are in memory).
const AHEAD: usize = 8;

/// See the module documentation.
pub struct ReadAhead {
    chunks: Option<Receiver<io::Result<Vec<u8>>>>,
    /// Chunks read to their end go back to the thread, to be filled again.
    spent: Option<SyncSender<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
    /// The first error read, returned from then on.
    failed: Option<(io::ErrorKind, String)>,
    worker: Option<JoinHandle<()>>,
    /// The reader itself, read on this thread, when no thread could be
    /// started (a task limit reached: `pids.max`, `TasksMax`).
    inline: Option<Box<dyn Read>>,
}

impl ReadAhead {
    /// Starts a thread that makes a reader with `open` and reads it to its
    /// end, ahead of the caller. `open` is called on that thread: what it
    /// makes need not be `Send`. Returns `open`'s error, once the thread is
    /// gone, if it fails. Where no thread can be started, the reader is made
    /// and read on the caller's thread instead.
    pub fn start<F>(open: F) -> io::Result<ReadAhead>
    where
        F: FnOnce() -> io::Result<Box<dyn Read>> + Send + 'static,
    {
        let (sender, chunks) = sync_channel::<io::Result<Vec<u8>>>(AHEAD);
        let (spent, recycled) = sync_channel::<Vec<u8>>(AHEAD + 2);
        let (opened_tx, opened) = sync_channel::<io::Result<()>>(1);
        // Taken back should the thread not start (`spawn` drops its closure).
        let open = std::sync::Arc::new(std::sync::Mutex::new(Some(open)));
        let taken = open.clone();
        let spawned = std::thread::Builder::new().name("ces-read-ahead".to_owned()).spawn(move || {
            let open = taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            let Some(open) = open else { return };
            let mut reader = match open() {
                Ok(reader) => {
                    let _ = opened_tx.send(Ok(()));
                    reader
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            drop(opened_tx);
            loop {
                let mut chunk = match recycled.try_recv() {
                    Ok(chunk) => chunk,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => Vec::with_capacity(CHUNK),
                };
                // Zeroes only what was never filled: a recycled chunk is
                // mostly its own length already.
                chunk.resize(CHUNK, 0);
                let message = loop {
                    match reader.read(&mut chunk) {
                        Ok(0) => return,
                        Ok(n) => {
                            chunk.truncate(n);
                            break Ok(chunk);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                let failed = message.is_err();
                // The reader is gone (dropped): nothing more to do.
                if sender.send(message).is_err() || failed {
                    return;
                }
            }
        });
        let mut this = ReadAhead {
            chunks: Some(chunks),
            spent: Some(spent),
            current: Vec::new(),
            at: 0,
            failed: None,
            worker: None,
            inline: None,
        };
        match spawned {
            Ok(worker) => this.worker = Some(worker),
            Err(e) => {
                let open = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                let open = open.ok_or(e)?;
                let _ = this.stop();
                this.inline = Some(open()?);
                return Ok(this);
            }
        }
        match opened.recv() {
            Ok(Ok(())) => Ok(this),
            Ok(Err(e)) => {
                let _ = this.stop();
                Err(e)
            }
            // The thread ended without a word: it panicked.
            Err(_) => Err(this.stop().err().unwrap_or_else(|| io::Error::other("the decompressing thread failed"))),
        }
    }

    /// Closes the channels and waits for the thread: an error if it
    /// panicked.
    fn stop(&mut self) -> io::Result<()> {
        self.chunks = None;
        self.spent = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(io::Error::other("the decompressing thread failed")),
            _ => Ok(()),
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.failed = Some((e.kind(), e.to_string()));
        e
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        if let Some(reader) = &mut self.inline {
            return reader.read(buf);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        while self.at == self.current.len() {
            let Some(chunks) = &self.chunks else { return Ok(0) };
            match chunks.recv() {
                Ok(Ok(chunk)) => {
                    let spent = std::mem::replace(&mut self.current, chunk);
                    self.at = 0;
                    if spent.capacity() == CHUNK
                        && let Some(back) = &self.spent
                    {
                        let _ = back.try_send(spent);
                    }
                }
                Ok(Err(e)) => {
                    // An error ends the thread; its own end is not news.
                    let _ = self.stop();
                    return Err(self.fail(e));
                }
                // The thread read its reader to the end, or panicked.
                Err(_) => {
                    return match self.stop() {
                        Ok(()) => Ok(0),
                        Err(e) => Err(self.fail(e)),
                    };
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of `len` bytes (`i % 251`), read a few bytes at a time, that
    /// fails after `fail_at` bytes if set.
    struct Pattern {
        at: usize,
        len: usize,
        fail_at: Option<usize>,
    }

    impl Read for Pattern {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.fail_at.is_some_and(|f| self.at >= f) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "broken at the end"));
            }
            let n = buf.len().min(self.len - self.at).min(7919);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((self.at + i) % 251) as u8;
            }
            self.at += n;
            Ok(n)
        }
    }

    fn pattern(len: usize, fail_at: Option<usize>) -> io::Result<Box<dyn Read>> {
        Ok(Box::new(Pattern { at: 0, len, fail_at }))
    }

    #[test]
    fn every_byte_arrives_in_order() {
        let len = 3 * CHUNK * AHEAD + 12345;
        let mut out = Vec::new();
        ReadAhead::start(move || pattern(len, None)).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), len);
        assert!(out.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }

    #[test]
    fn an_error_of_the_reader_comes_in_its_place_and_stays() {
        let mut ahead = ReadAhead::start(|| pattern(10 * CHUNK, Some(CHUNK + 5))).unwrap();
        let mut out = Vec::new();
        let e = ahead.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(out.len() <= CHUNK + 5 + 7919, "{}", out.len());
        let again = ahead.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!((again.kind(), again.to_string()), (e.kind(), e.to_string()));
    }

    /// A reader that panics after `at` bytes.
    struct Panics(usize);

    impl Read for Panics {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(self.0 > 0, "a decompressor's bug");
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_panic_of_the_reader_is_an_error_not_an_end() {
        let mut ahead = ReadAhead::start(|| Ok(Box::new(Panics(1000)) as Box<dyn Read>)).unwrap();
        let mut out = Vec::new();
        let e = ahead.read_to_end(&mut out).unwrap_err();
        assert_eq!(out.len(), 1000);
        assert!(e.to_string().contains("thread failed"), "{e}");
        assert!(ahead.read(&mut [0u8; 4]).is_err(), "and stays an error");
        // Before the first chunk, too: the start fails.
        let Err(e) = ReadAhead::start(|| -> io::Result<Box<dyn Read>> { panic!("cannot make it") }) else {
            panic!("started")
        };
        assert!(e.to_string().contains("thread failed"), "{e}");
    }

    #[test]
    fn a_reader_that_cannot_be_made_fails_the_start() {
        let Err(e) = ReadAhead::start(|| Err(io::Error::new(io::ErrorKind::NotFound, "no such blob"))) else {
            panic!("started without a reader")
        };
        assert_eq!(e.to_string(), "no such blob");
    }

    /// A reader that never ends and says when it is dropped.
    struct Endless(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(1);
            Ok(buf.len())
        }
    }

    impl Drop for Endless {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn dropped_half_read_it_stops_its_thread_before_returning() {
        let gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = gone.clone();
        let mut ahead = ReadAhead::start(move || Ok(Box::new(Endless(flag)) as Box<dyn Read>)).unwrap();
        let mut first = [0u8; 100];
        ahead.read_exact(&mut first).unwrap();
        assert!(!gone.load(std::sync::atomic::Ordering::SeqCst));
        drop(ahead);
        // The thread (and its reader) ended before the drop returned.
        assert!(gone.load(std::sync::atomic::Ordering::SeqCst));
    }
}
