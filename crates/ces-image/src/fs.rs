//! Removing a directory tree that someone else may be changing meanwhile.
//!
//! ces removes, as root, trees that users own: a run's scratch directory in
//! their home, a rootfs a container wrote to. A walk by path follows whatever
//! a user puts in its way: a directory swapped for a symlink between the
//! check and the removal makes root remove files elsewhere (the pattern of
//! CVE-2022-21658). Here every step is relative to a directory fd opened with
//! `O_NOFOLLOW`: a symlink is removed, never followed, whenever it appears.
//! The walk stays on the tree's own mount (a directory on another mount, or
//! a bind mount of the same file system, stops it, and nothing there is
//! touched), and it is iterative with a bounded number of open fds: a tree
//! deeper than `PATH_MAX`, or than the fd limit, is removed too. Levels whose
//! fd was let go are found again through `..`, checked to be the directory
//! left (device and inode), so that a directory moved away meanwhile does
//! not lead the walk out of the tree.
//!
//! Also here: [`open_lock`], the lock files only their owner may take.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

/// How many levels keep their directory open while deeper ones are walked:
/// deeper trees reopen a level (through `..`) when they come back up to it.
const HELD_LEVELS: usize = 64;

/// How many times a directory found not empty (a writer adding entries while
/// it is removed) is read again before the removal gives up.
const MAX_REREADS: usize = 1000;

/// Why a tree could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// A file system is mounted in the tree (nothing on it was touched).
    #[error("a file system is still mounted at {}", path.display())]
    Mounted {
        /// The mount point.
        path: PathBuf,
    },
    /// The tree was changed under the removal in a way it does not follow
    /// (a directory moved out of it, entries added without end).
    #[error("{} changed while it was being removed", path.display())]
    Changed {
        /// The directory.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("cannot remove {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl From<RemoveError> for io::Error {
    fn from(error: RemoveError) -> io::Error {
        let kind = match &error {
            RemoveError::Io { source, .. } => source.kind(),
            RemoveError::Mounted { .. } | RemoveError::Changed { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

/// Removes `path` (a file, a link, or a directory tree) without following a
/// symlink anywhere in the tree and without leaving the tree's mount (see
/// the module's documentation). Missing: nothing to do. Directories that deny
/// their owner access are opened up first (a rootfs unpacked without root
/// keeps the image's 0555 modes). The directories above `path` are resolved
/// as usual: they are the caller's.
pub fn remove_tree(path: &Path) -> Result<(), RemoveError> {
    let io = |source: io::Error| RemoveError::Io { path: path.to_owned(), source };
    let Some(name) = path.file_name() else {
        return Err(io(io::Error::new(io::ErrorKind::InvalidInput, "not a removable path")));
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let parent = match rustix::fs::open(parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io(e.into())),
    };
    remove_tree_at(parent.as_fd(), name, path)
}

/// Removes the entry `name` of the directory `parent` as [`remove_tree`]
/// does; `shown` is its path in messages.
pub fn remove_tree_at(parent: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<(), RemoveError> {
    Walk { shown, names: Vec::new() }.run(parent, name)
}

/// One directory of the walk, from the top down.
struct Level {
    /// Its name in the level above.
    name: CString,
    /// Device and inode, to know it again through `..`.
    dev: u64,
    ino: u64,
    /// Its open stream, while held.
    dir: Option<Dir>,
}

/// A removal in progress: the names below the top, for messages.
struct Walk<'a> {
    shown: &'a Path,
    names: Vec<CString>,
}

impl Walk<'_> {
    /// The path of the current level (or of `name` in it), for messages.
    fn path(&self, name: Option<&CStr>) -> PathBuf {
        let mut path = self.shown.to_owned();
        for part in self.names.iter().map(CString::as_c_str).chain(name) {
            path.push(OsStr::from_bytes(part.to_bytes()));
        }
        path
    }

    fn io(&self, name: Option<&CStr>, source: impl Into<io::Error>) -> RemoveError {
        RemoveError::Io { path: self.path(name), source: source.into() }
    }

    fn run(mut self, parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), RemoveError> {
        let name =
            CString::new(name.as_bytes()).map_err(|e| self.io(None, io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let top = match rustix::fs::statat(parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.io(None, e)),
        };
        if FileType::from_raw_mode(top.st_mode) != FileType::Directory {
            // (The caller's directory is never opened up.)
            return match rustix::fs::unlinkat(parent, &name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(self.io(None, e)),
            };
        }
        let fd = match open_dir(parent, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Swapped for something else since the stat: not ours to chase.
            Err(Errno::NOTDIR | Errno::LOOP) => return Err(RemoveError::Changed { path: self.path(None) }),
            Err(e) => return Err(self.io(None, e)),
        };
        let mount = mount_id(parent.as_fd()).map_err(|e| self.io(None, e))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| self.io(None, e))?;
        if stat.st_dev != top.st_dev || mount_id(fd.as_fd()).map_err(|e| self.io(None, e))? != mount {
            return Err(RemoveError::Mounted { path: self.path(None) });
        }
        let dev = stat.st_dev;
        let dir = Dir::new(fd).map_err(|e| self.io(None, e))?;
        let mut levels = vec![Level { name, dev, ino: stat.st_ino, dir: Some(dir) }];
        let mut rereads = 0;
        loop {
            let Some((level, above)) = levels.split_last_mut() else { return Ok(()) };
            let Some(dir) = level.dir.as_mut() else {
                // Unreachable: the deepest level always holds its stream.
                return Err(RemoveError::Changed { path: self.path(None) });
            };
            let entry = match dir.read() {
                Some(Ok(entry)) => Some(entry),
                Some(Err(e)) => return Err(self.io(None, e)),
                None => None,
            };
            let Some(entry) = entry else {
                // Read to the end: now empty, unless written to meanwhile.
                let fd = dir.fd().map_err(|e| self.io(None, e))?;
                let Some(expected) = above.last() else {
                    match rustix::fs::unlinkat(parent, &level.name, AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT) => return Ok(()),
                        Err(Errno::NOTEMPTY) if rereads < MAX_REREADS => {
                            rereads += 1;
                            dir.rewind();
                            continue;
                        }
                        Err(Errno::NOTEMPTY) => return Err(RemoveError::Changed { path: self.path(None) }),
                        Err(e) => return Err(self.io(None, e)),
                    }
                };
                let up = match &expected.dir {
                    Some(_) => None,
                    None => {
                        let up = open_dir(fd, c"..").map_err(|e| self.io(None, e))?;
                        let stat = rustix::fs::fstat(&up).map_err(|e| self.io(None, e))?;
                        if (stat.st_dev, stat.st_ino) != (expected.dev, expected.ino) {
                            // Moved out of the tree: its `..` is not ours.
                            return Err(RemoveError::Changed { path: self.path(None) });
                        }
                        Some(Dir::new(up).map_err(|e| self.io(None, e))?)
                    }
                };
                let Some(done) = levels.pop() else { return Ok(()) };
                self.names.pop();
                let Some(above) = levels.last_mut() else { return Ok(()) };
                if let Some(up) = up {
                    above.dir = Some(up);
                }
                let Some(above_dir) = above.dir.as_ref() else { continue };
                let above_fd = above_dir.fd().map_err(|e| self.io(None, e))?;
                // Only the directory emptied, not one put at its name since.
                let same = rustix::fs::statat(above_fd, &done.name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| (s.st_dev, s.st_ino) == (done.dev, done.ino));
                if same {
                    match unlink(above_fd, &done.name, AtFlags::REMOVEDIR) {
                        // Not empty (written to meanwhile), or replaced: the
                        // level above finds it when it is read again.
                        Ok(()) | Err(Errno::NOENT | Errno::NOTEMPTY) => {}
                        Err(e) => return Err(self.io(Some(&done.name), e)),
                    }
                }
                continue;
            };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let name = name.to_owned();
            let fd = dir.fd().map_err(|e| self.io(None, e))?;
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
                _ => false,
            };
            if !is_dir {
                match unlink(fd, &name, AtFlags::empty()) {
                    // Became a directory: the directory is read again once
                    // at its end (not empty), and then it is walked.
                    Ok(()) | Err(Errno::NOENT | Errno::ISDIR) => {}
                    Err(e) => return Err(self.io(Some(&name), e)),
                }
                continue;
            }
            let child = match open_dir(fd, &name) {
                Ok(child) => child,
                Err(Errno::NOENT) => continue,
                // Swapped for a link or a file: removed, never followed.
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    match unlink(fd, &name, AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT | Errno::ISDIR) => {}
                        Err(e) => return Err(self.io(Some(&name), e)),
                    }
                    continue;
                }
                Err(e) => return Err(self.io(Some(&name), e)),
            };
            let stat = rustix::fs::fstat(&child).map_err(|e| self.io(Some(&name), e))?;
            if stat.st_dev != dev || mount_id(child.as_fd()).map_err(|e| self.io(Some(&name), e))? != mount {
                return Err(RemoveError::Mounted { path: self.path(Some(&name)) });
            }
            let dir = Dir::new(child).map_err(|e| self.io(Some(&name), e))?;
            // Bounded fds: let go of the level that is now `HELD_LEVELS` up.
            if levels.len() >= HELD_LEVELS {
                let index = levels.len() - HELD_LEVELS;
                levels[index].dir = None;
            }
            self.names.push(name.clone());
            levels.push(Level { name, dev, ino: stat.st_ino, dir: Some(dir) });
        }
    }
}

/// `unlinkat`, opening up `dir` once if it denies its owner write access.
fn unlink(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, flags) {
        Err(Errno::ACCESS) => {
            open_up(dir)?;
            rustix::fs::unlinkat(dir, name, flags)
        }
        other => other,
    }
}

/// Opens the directory `name` of `dir` for reading, never through a link;
/// opens it up first if it denies its owner access.
fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Err(Errno::ACCESS) => {
            let path = rustix::fs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            open_up(path.as_fd())?;
            rustix::fs::openat(&path, c".", flags, Mode::empty())
        }
        other => other,
    }
}

/// Gives a directory's owner full access to it. By `/proc/self/fd`, which
/// names this very directory (an `O_PATH` fd cannot be `fchmod`ed).
fn open_up(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    match rustix::fs::fchmod(dir, Mode::from_raw_mode(0o700)) {
        Err(Errno::BADF) => {
            let proc = format!("/proc/self/fd/{}", dir.as_raw_fd());
            rustix::fs::chmodat(CWD, proc.as_str(), Mode::from_raw_mode(0o700), AtFlags::empty())
        }
        other => other,
    }
}

/// Opens the lock file `path` (made if missing), for its owner only.
///
/// Anyone who can open a file may `flock` it, read-only too. A lock file
/// others can open, in a directory they can search (root's store is `0711`,
/// so is a run's directory), lets any local user hold it for ever: every
/// `sudo ces` that needs it would wait. So it is made `0600`, and one made
/// `0644` by an earlier version is closed on open. The last component is
/// not followed (a link there is refused).
pub fn open_lock(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// The id of the mount `fd` is on (0 where the kernel does not say).
fn mount_id(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let statx = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    Ok(if statx.stx_mask & StatxFlags::MNT_ID.bits() != 0 { statx.stx_mnt_id } else { 0 })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn removes_files_links_and_trees_but_never_what_a_link_points_to() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b/c")).unwrap();
        fs::write(tree.join("a/b/c/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), tree.join("file-link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&tree).unwrap();

        // A link at the top is removed itself.
        std::os::unix::fs::symlink(&outside, &tree).unwrap();
        remove_tree(&tree).unwrap();
        assert!(tree.symlink_metadata().is_err() && outside.join("keep").exists());
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        remove_tree(&file).unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn directories_that_deny_their_owner_are_opened_up() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("ro/none")).unwrap();
        fs::write(tree.join("ro/none/f"), "x").unwrap();
        fs::set_permissions(tree.join("ro/none"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }

    /// Deeper than PATH_MAX (4096) and than the fds held (64): made and
    /// checked through fds, as no path reaches the bottom.
    #[test]
    fn a_tree_deeper_than_path_max_is_removed() {
        const DEPTH: usize = 5000;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("deep");
        fs::create_dir(&tree).unwrap();
        let mut fd = rustix::fs::open(&tree, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for level in 0..DEPTH {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            if level % 100 == 0 {
                drop(rustix::fs::openat(&fd, "f", OFlags::CREATE | OFlags::WRONLY, Mode::RUSR).unwrap());
            }
            fd = rustix::fs::openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        drop(fd);
        remove_tree(&tree).unwrap();
        assert!(tree.symlink_metadata().is_err(), "the whole tree is gone");
    }

    /// The CVE-2022-21658 pattern: while the tree is removed, its directory
    /// `d` is moved away and a link to a sentinel directory (holding files of
    /// the same names) put in its place, again and again. A removal that
    /// walks by path deletes the sentinel's files; this one never does.
    #[test]
    fn a_directory_swapped_for_a_link_during_removal_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let sentinel = dir.path().join("sentinel");
        fs::create_dir(&sentinel).unwrap();
        let names: Vec<String> = (0..400).map(|i| format!("f{i}")).collect();
        for name in &names {
            fs::write(sentinel.join(name), "precious").unwrap();
        }
        for round in 0..40 {
            let tree = dir.path().join(format!("scratch_{round}"));
            let d = tree.join("d");
            fs::create_dir_all(&d).unwrap();
            for name in &names {
                fs::write(d.join(name), "scratch").unwrap();
            }
            let stop = Arc::new(AtomicBool::new(false));
            let attacker = {
                let (stop, tree, sentinel) = (stop.clone(), tree.clone(), sentinel.clone());
                std::thread::spawn(move || {
                    let (d, moved) = (tree.join("d"), tree.join("moved"));
                    while !stop.load(Ordering::Relaxed) {
                        if fs::rename(&d, &moved).is_ok() {
                            let _ = std::os::unix::fs::symlink(&sentinel, &d);
                            std::thread::yield_now();
                            let _ = fs::remove_file(&d);
                            let _ = fs::rename(&moved, &d);
                        }
                    }
                })
            };
            // May fail (the tree changed under it); must never reach the sentinel.
            let _ = remove_tree(&tree);
            stop.store(true, Ordering::Relaxed);
            attacker.join().unwrap();
            let left: Vec<_> = names.iter().filter(|n| !sentinel.join(n).exists()).collect();
            assert!(left.is_empty(), "round {round}: the sentinel lost {} files", left.len());
            remove_tree(&tree).unwrap();
            assert!(tree.symlink_metadata().is_err());
        }
    }

    /// Needs root (to mount in the test's temp dir).
    #[test]
    fn removal_stops_at_a_mount_point_even_a_bind_mount_of_the_same_file_system() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("inside"), "x").unwrap();
        for how in [&["-t", "tmpfs", "tmpfs"][..], &["--bind", elsewhere.to_str().unwrap()][..]] {
            let tree = dir.path().join("tree");
            let mnt = tree.join("a/mnt");
            fs::create_dir_all(&mnt).unwrap();
            let mounted = std::process::Command::new("mount").args(how).arg(&mnt).status().unwrap();
            assert!(mounted.success());
            fs::write(mnt.join("inside"), "x").unwrap();
            let result = remove_tree(&tree);
            let inside = mnt.join("inside").exists();
            let _ = std::process::Command::new("umount").arg(&mnt).status();
            let error = result.unwrap_err();
            assert!(matches!(&error, RemoveError::Mounted { path } if *path == mnt), "{how:?}: {error}");
            assert!(inside, "{how:?}: nothing on the mounted file system was removed");
            remove_tree(&tree).unwrap();
        }
        assert!(elsewhere.join("inside").exists());
    }
}
