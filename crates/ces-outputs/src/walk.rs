//! A walk of a directory the container controlled. Everything is opened
//! relative to an already open parent (`openat`) with `O_NOFOLLOW`: a
//! symbolic link is recorded with its target and never followed, a FIFO or
//! device is recorded by type and never opened, a regular file is opened
//! non-blocking and checked (same inode, still regular) before it is read,
//! and files are hashed as they stream, whatever their size.

use std::ffi::CStr;
use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use crate::OutputsError;
use crate::manifest::{Entry, Kind, text_of};
use crate::table::{self, Counter};

/// Directories deeper than this are recorded but not listed (one file
/// descriptor is held per level).
pub const MAX_DEPTH: usize = 256;

const BUFFER: usize = 1 << 20;

/// Opens a directory without following a symbolic link at its last component.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd, OutputsError> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| OutputsError::Open { path: path.to_owned(), source: e.into() })
}

/// Every entry under the open directory `root`, sorted by path, leaving out
/// the top-level names in `skip`.
pub(crate) fn walk(root: &OwnedFd, root_path: &Path, skip: &[&str]) -> Result<Vec<Entry>, OutputsError> {
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
    let mut buffer = vec![0u8; BUFFER];
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
        let mode = stat.st_mode;
        let kind = match FileType::from_raw_mode(mode) {
            FileType::RegularFile => file(&frame.fd, &name, &stat, &mut buffer),
            FileType::Directory => {
                let depth = stack.len();
                let child = (depth < MAX_DEPTH)
                    .then(|| {
                        rustix::fs::openat(
                            &stack[depth - 1].fd,
                            name.as_slice(),
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .and_then(|fd| names(&fd).map(|n| (fd, n)))
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

/// A regular file: size, sha256, and for a CSV/TSV its shape. A file that
/// cannot be read is recorded with the reason.
fn file(dir: &OwnedFd, name: &[u8], stat: &rustix::fs::Stat, buffer: &mut [u8]) -> Kind {
    let size = stat.st_size as u64;
    let mut counter = table::delimiter_for(name).map(Counter::new);
    match hash(dir, name, stat, buffer, counter.as_mut()) {
        Ok((sha256, size)) => {
            Kind::File { size, sha256: Some(sha256), table: counter.map(Counter::finish), unreadable: None }
        }
        Err(e) => Kind::File { size, sha256: None, table: None, unreadable: Some(e.to_string()) },
    }
}

fn hash(
    dir: &OwnedFd,
    name: &[u8],
    stat: &rustix::fs::Stat,
    buffer: &mut [u8],
    mut counter: Option<&mut Counter>,
) -> std::io::Result<(String, u64)> {
    // O_NONBLOCK: should a FIFO have taken the file's place, opening it does
    // not wait for a writer (and the check below refuses it).
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let opened = rustix::fs::fstat(fd.as_fd())?;
    if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile
        || opened.st_ino != stat.st_ino
        || opened.st_dev != stat.st_dev
    {
        return Err(std::io::Error::other("it was replaced while ces read the directory"));
    }
    let mut file = std::fs::File::from(fd);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        if let Some(counter) = counter.as_deref_mut() {
            counter.feed(&buffer[..n]);
        }
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}
