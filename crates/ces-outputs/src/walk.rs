//! A walk of a directory the container controlled. Everything is opened
//! relative to an already open parent (`openat`) with `O_NOFOLLOW`: a
//! symbolic link is recorded with its target and never followed, a FIFO or
//! device is recorded by type and never opened, a regular file is opened
//! non-blocking and checked (same inode, still regular) before it is read,
//! and files are hashed as they stream, within a budget of bytes and time
//! and until a signal arrives (see [`Hashing`]). In a seal, setuid/setgid
//! bits and file capabilities are removed as files are met.

use std::ffi::CStr;
use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use crate::manifest::{Entry, Kind, text_of};
use crate::table::{self, Counter};
use crate::{Budget, Interrupt, OutputsError};

/// Directories deeper than this are recorded but not listed (one file
/// descriptor is held per level).
pub const MAX_DEPTH: usize = 256;

const BUFFER: usize = 1 << 20;

/// How every directory of an outputs tree is opened: to read, never
/// through a symbolic link.
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Opens a directory without following a symbolic link at its last component.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd, OutputsError> {
    rustix::fs::open(path, DIR_FLAGS, Mode::empty())
        .map_err(|e| OutputsError::Open { path: path.to_owned(), source: e.into() })
}

/// Opens the directory `name` of `parent`, never through a symbolic link.
pub(crate) fn open_dir_at(parent: &OwnedFd, name: impl rustix::path::Arg) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())
}

/// Every entry under the directory `dir`, sorted by path, leaving out the
/// top-level names in `skip`: walked as a seal walks it (by file
/// descriptor, never through a symbolic link), with no file opened, hashed
/// or changed. For reports of what a container left where its user can
/// still rename things (a directory swapped for a link while ces lists it
/// as root is listed as the link).
pub fn list(dir: &Path, skip: &[&str]) -> Result<Vec<Entry>, OutputsError> {
    let root = open_dir(dir)?;
    let none = |_: &[u8], _: u64| false;
    let mut visit = Visit { strip: false, hashing: Hashing::only(&none) };
    walk(&root, dir, skip, &mut visit)
}

/// Every entry under the open directory `root`, sorted by path, leaving out
/// the top-level names in `skip`.
pub(crate) fn walk(
    root: &OwnedFd,
    root_path: &Path,
    skip: &[&str],
    visit: &mut Visit<'_>,
) -> Result<Vec<Entry>, OutputsError> {
    struct Frame {
        fd: OwnedFd,
        prefix: Vec<u8>,
        names: std::vec::IntoIter<Vec<u8>>,
    }
    let top = names(root).map_err(|e| OutputsError::Open { path: root_path.to_owned(), source: e.into() })?;
    let top: Vec<Vec<u8>> = top.into_iter().filter(|n| !skip.iter().any(|s| s.as_bytes() == n.as_slice())).collect();
    let root = root.try_clone().map_err(|e| OutputsError::Open { path: root_path.to_owned(), source: e })?;
    let mut stack = vec![Frame { fd: root, prefix: Vec::new(), names: top.into_iter() }];
    let mut entries = Vec::new();
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.next() else {
            stack.pop();
            continue;
        };
        let mut path = frame.prefix.clone();
        path.extend_from_slice(&name);
        let stat = match rustix::fs::statat(&frame.fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Gone already (nothing else should be writing here): not an entry.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                let (shown, _) = text_of(&path);
                return Err(OutputsError::Walk { dir: root_path.to_owned(), path: shown, source: e.into() });
            }
        };
        let mut mode = stat.st_mode;
        let kind = match FileType::from_raw_mode(mode) {
            FileType::RegularFile => {
                let (now, kind) = file(&frame.fd, &path, &name, &stat, visit);
                mode = now;
                kind
            }
            FileType::Directory => {
                let depth = stack.len();
                let child = (depth < MAX_DEPTH)
                    .then(|| {
                        open_dir_at(&stack[depth - 1].fd, name.as_slice()).and_then(|fd| names(&fd).map(|n| (fd, n)))
                    })
                    .transpose();
                let not_listed = match child {
                    Ok(Some((fd, children))) => {
                        let mut prefix = path.clone();
                        prefix.push(b'/');
                        entries.push(Entry::new(&path, mode, Kind::Directory { not_listed: None }));
                        stack.push(Frame { fd, prefix, names: children.into_iter() });
                        continue;
                    }
                    Ok(None) => format!("deeper than {MAX_DEPTH} levels"),
                    Err(e) => std::io::Error::from(e).to_string(),
                };
                Kind::Directory { not_listed: Some(not_listed) }
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&frame.fd, name.as_slice(), Vec::new())
                    .map(|t| t.into_bytes())
                    .unwrap_or_default();
                let (target, target_hex) = text_of(&target);
                Kind::Symlink { target, target_hex }
            }
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            FileType::Unknown => Kind::Fifo,
        };
        entries.push(Entry::new(&path, mode, kind));
    }
    // The key is built (hex-decoded for a non-UTF-8 name) once per entry, not per comparison.
    entries.sort_by_cached_key(Entry::path_bytes);
    Ok(entries)
}

/// The names in a directory (without `.` and `..`), sorted.
fn names(dir: &OwnedFd) -> rustix::io::Result<Vec<Vec<u8>>> {
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(bytes.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// A regular file: size, sha256 (within the hashing budget), and for a
/// CSV/TSV its shape; in a seal, its setuid/setgid bits and capabilities
/// removed first. A file that cannot be read is recorded with the reason.
fn file(dir: &OwnedFd, path: &[u8], name: &[u8], stat: &rustix::fs::Stat, visit: &mut Visit<'_>) -> (u32, Kind) {
    let size = stat.st_size as u64;
    let allocated = (stat.st_blocks as u64).saturating_mul(512);
    let allocated = (allocated < size).then_some(allocated);
    let mut mode = stat.st_mode;
    let (mut removed, mut not_removed) = (Vec::new(), None);
    if visit.strip {
        match strip_privileges(dir, name, stat) {
            Ok(Stripped { removed: r, mode: m }) => (removed, mode) = (r, m),
            Err(e) => not_removed = Some(e.to_string()),
        }
    }
    let mut counter = table::delimiter_for(name).map(Counter::new);
    let (sha256, unreadable, not_hashed) = match visit.hashing.admit(path, size) {
        Err(why) => (None, None, Some(why)),
        Ok(()) => match hash(dir, name, stat, &mut visit.hashing, counter.as_mut()) {
            Ok(Hashed::Whole(sha256)) => (Some(sha256), None, None),
            Ok(Hashed::Stopped(why)) => (None, None, Some(why)),
            Err(e) => (None, Some(e.to_string()), None),
        },
    };
    let table = sha256.is_some().then(|| counter.map(Counter::finish)).flatten();
    (mode, Kind::File { size, allocated, sha256, table, unreadable, not_hashed, removed, not_removed })
}

/// The privilege bits ces removes from outputs.
const PRIVILEGE_BITS: u32 = 0o6000;
/// The extended attribute holding a file's capabilities.
const CAPABILITY_XATTR: &str = "security.capability";

struct Stripped {
    removed: Vec<String>,
    mode: u32,
}

/// Removes setuid/setgid and `security.capability` from the regular file
/// `name` in `dir`, so that nothing the container made runs with more
/// privileges on the host than the user who runs it. The file is opened
/// with `O_PATH | O_NOFOLLOW` (no read permission needed, a link never
/// followed) and changed through `/proc/self/fd`, which names that inode and
/// nothing else.
fn strip_privileges(dir: &OwnedFd, name: &[u8], stat: &rustix::fs::Stat) -> std::io::Result<Stripped> {
    let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let opened = rustix::fs::fstat(&fd)?;
    if !same_file(&opened, stat) {
        return Err(std::io::Error::other("it was replaced while ces read the directory"));
    }
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let mut removed = Vec::new();
    let has_capabilities = match rustix::fs::getxattr_query(proc.as_str(), CAPABILITY_XATTR) {
        Ok(_) => true,
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => false,
        Err(e) => return Err(e.into()),
    };
    if has_capabilities {
        rustix::fs::removexattr(proc.as_str(), CAPABILITY_XATTR)?;
        removed.push(CAPABILITY_XATTR.to_owned());
    }
    let mut mode = opened.st_mode;
    if mode & PRIVILEGE_BITS != 0 {
        rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(mode & 0o1777))?;
        let now = rustix::fs::fstat(&fd)?;
        if now.st_mode & PRIVILEGE_BITS != 0 {
            return Err(std::io::Error::other("the bits are still set after chmod"));
        }
        for (bit, word) in [(0o4000, "setuid"), (0o2000, "setgid")] {
            if mode & bit != 0 {
                removed.push(word.to_owned());
            }
        }
        mode = now.st_mode;
    }
    Ok(Stripped { removed, mode })
}

fn same_file(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(a.st_mode) == FileType::RegularFile && a.st_ino == b.st_ino && a.st_dev == b.st_dev
}

/// How hashing a file ended (other than with an I/O error).
enum Hashed {
    /// Every byte: the sha256 in hex.
    Whole(String),
    /// Stopped partway: why.
    Stopped(String),
}

fn hash(
    dir: &OwnedFd,
    name: &[u8],
    stat: &rustix::fs::Stat,
    hashing: &mut Hashing<'_>,
    mut counter: Option<&mut Counter>,
) -> std::io::Result<Hashed> {
    // O_NONBLOCK: should a FIFO have taken the file's place, opening it does
    // not wait for a writer (and the check below refuses it).
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let opened = rustix::fs::fstat(fd.as_fd())?;
    if !same_file(&opened, stat) {
        return Err(std::io::Error::other("it was replaced while ces read the directory"));
    }
    let mut file = std::fs::File::from(fd);
    let mut hasher = Sha256::new();
    loop {
        let n = match file.read(&mut hashing.buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&hashing.buffer[..n]);
        if let Some(counter) = counter.as_deref_mut() {
            counter.feed(&hashing.buffer[..n]);
        }
        // Between chunks: the budget, the clock, and a pending signal.
        if let Err(why) = hashing.consume(n as u64) {
            return Ok(Hashed::Stopped(why));
        }
    }
    Ok(Hashed::Whole(hex::encode(hasher.finalize())))
}

/// What a walk does with the regular files it meets.
pub(crate) struct Visit<'a> {
    /// Remove setuid/setgid bits and file capabilities (a seal; never a verify).
    pub strip: bool,
    /// What may be hashed.
    pub hashing: Hashing<'a>,
}

/// Whether to hash the file at this path, of this size.
pub(crate) type Wanted<'a> = dyn Fn(&[u8], u64) -> bool + 'a;

/// The hashing budget of a walk: bytes, time, and a way to be interrupted.
/// Once time runs out or a signal arrives, no further file is hashed.
pub(crate) struct Hashing<'a> {
    budget: Budget,
    bytes_left: u64,
    deadline: Option<Instant>,
    interrupt: &'a dyn Interrupt,
    /// Only these files (path, size) are hashed, if given (verify: those
    /// the seal hashed, at the size it saw).
    wanted: Option<&'a Wanted<'a>>,
    stopped: Option<Stop>,
    buffer: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Time,
    Signal(i32),
}

impl<'a> Hashing<'a> {
    /// A budget that starts now.
    pub(crate) fn new(budget: Budget, interrupt: &'a dyn Interrupt) -> Hashing<'a> {
        Hashing {
            budget,
            bytes_left: budget.bytes,
            deadline: Instant::now().checked_add(budget.time),
            interrupt,
            wanted: None,
            stopped: None,
            buffer: vec![0u8; BUFFER],
        }
    }

    /// Hashes only the files `wanted` accepts, with no budget.
    pub(crate) fn only(wanted: &'a Wanted<'a>) -> Hashing<'a> {
        let mut hashing = Hashing::new(Budget { bytes: u64::MAX, time: Duration::MAX }, &crate::NoInterrupt);
        hashing.wanted = Some(wanted);
        hashing
    }

    /// The signal that stopped the hashing, if one did.
    pub(crate) fn interrupted_by(&self) -> Option<i32> {
        match self.stopped {
            Some(Stop::Signal(signal)) => Some(signal),
            _ => None,
        }
    }

    /// Whether a file of `size` bytes may be hashed, or why not.
    fn admit(&mut self, path: &[u8], size: u64) -> Result<(), String> {
        if let Some(wanted) = self.wanted
            && !wanted(path, size)
        {
            return Err("not hashed by verify (the seal did not, or the size differs)".to_owned());
        }
        self.check()?;
        if size > self.bytes_left {
            return Err(format!("over the seal's budget (it hashes at most {} bytes)", self.budget.bytes));
        }
        Ok(())
    }

    /// Counts `n` bytes read, then checks the clock and for a signal.
    fn consume(&mut self, n: u64) -> Result<(), String> {
        match self.bytes_left.checked_sub(n) {
            Some(left) => self.bytes_left = left,
            None => {
                self.bytes_left = 0;
                return Err(format!("over the seal's budget (it hashes at most {} bytes)", self.budget.bytes));
            }
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), String> {
        if self.stopped.is_none() {
            if let Some(signal) = self.interrupt.signal() {
                self.stopped = Some(Stop::Signal(signal));
            } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.stopped = Some(Stop::Time);
            }
        }
        match self.stopped {
            None => Ok(()),
            Some(Stop::Signal(signal)) => Err(format!("ces was interrupted by signal {signal}")),
            Some(Stop::Time) => {
                Err(format!("the seal's time budget ran out (it hashes for at most {} s)", self.budget.time.as_secs()))
            }
        }
    }
}
