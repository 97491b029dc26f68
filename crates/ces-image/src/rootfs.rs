//! An image's root filesystem as the store keeps it, and a read-only view of
//! what a container would see in it, without mounting anything.
//!
//! The store keeps a root filesystem either as one assembled tree, or as a
//! stack of layer directories in overlayfs' own format that the runtime
//! mounts as the lower layers of an overlay: a whiteout is a character device
//! 0/0 named like the entry it deletes, and an opaque directory (one that
//! hides what the layers below hold under its name) carries the extended
//! attribute `user.overlay.opaque` with the value `y`. [`Rootfs::resolve`]
//! and the functions beside it look a path up the way the kernel would in
//! the container: the layers merged by overlay's rules, and symbolic links
//! resolved inside the image (an absolute target starts again at the image's
//! root, `..` never climbs above it, at most 40 links are followed). This
//! works without privileges, for planning a run before anything is mounted.
//!
//! # Containment
//!
//! Images are hostile: a layer may hold `etc/passwd -> /etc/shadow`, or
//! `lib -> ../../../..`. No symbolic link is ever followed by the kernel.
//! Every lookup is one `openat(O_PATH | O_NOFOLLOW)` of one name relative to
//! a directory file descriptor, and the descriptor's own `fstat` says what
//! was opened; a link is read (`readlinkat`) and its target resolved here.
//! A merged directory's parts are descriptors of directories opened so in
//! the parts of its parent (a directory's layers are always a subset of its
//! parent's), so every step stays inside the layer it started in.
//!
//! What overlay would also show and this view does not: an upper (writable)
//! layer, and the `redirect_dir`, `metacopy` and xattr-whiteout features,
//! which the store does not write.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// How many symbolic links one resolution follows before it gives up (the
/// kernel's own limit, `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// The extended attribute that marks a directory opaque. Only the `user.`
/// one is read: it is always written, and `trusted.` ones cannot be read
/// without privileges.
const OPAQUE: &str = crate::unpack::USER_OPAQUE;

/// The longest string `fsconfig(2)` takes as one option's value (256 bytes
/// with its NUL). libcontainer mounts a rootless container's overlay so: all
/// its lower layers must fit in one `lowerdir` value, unless the kernel
/// takes them one at a time ([`lowerdir_plus`]).
pub const FSCONFIG_VALUE_MAX: usize = 255;

/// The most bytes of `mount(2)` data the kernel reads (one page, with the
/// final NUL, on every architecture's smallest page): it cuts what is longer
/// without a word, and an overlay's options cut short could mount fewer
/// layers, or none writable.
pub const MOUNT_DATA_MAX: usize = 4095;

/// The most lower layers overlayfs stacks (its `OVL_MAX_STACK`).
pub const MAX_LOWER_LAYERS: usize = 500;

/// Whether this kernel's overlayfs takes lower layers one at a time, each
/// its own `lowerdir+` value (Linux 6.8), so that a mount through
/// `fsconfig(2)` may have as many as [`MAX_LOWER_LAYERS`].
pub fn lowerdir_plus() -> bool {
    static PLUS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLUS.get_or_init(|| version_at_least(&rustix::system::uname().release().to_string_lossy(), (6, 8)))
}

/// Whether this kernel's overlayfs takes the `volatile` option (Linux
/// 5.10): an `fsync` or `syncfs` through the overlay, and its unmount, no
/// longer sync its upper layer (the kernel's own writeback, and a `sync(2)`
/// of every file system, still reach it). A run's upper layer is thrown
/// away at its end (what is kept is written to `/safe_outputs`, a bind
/// mount, synced as asked), so nothing it holds has to reach the disk: a
/// run that wrote 300 MB to its own filesystem ended in 0.2 s against 0.5 s
/// (the unmount wrote it all first). After a crash, overlayfs refuses to
/// mount such an upper layer again; none is ever mounted again.
///
/// libcontainer mounts a rootless run's overlay, and tries a failed mount
/// once more (on `EINVAL`): the second try then meets the `incompat`
/// directory the first left in the work directory and fails too, with the
/// kernel's log naming `volatile` rather than the first failure's cause.
pub fn overlay_volatile() -> bool {
    static VOLATILE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VOLATILE.get_or_init(|| version_at_least(&rustix::system::uname().release().to_string_lossy(), (5, 10)))
}

/// Whether a version (a kernel's release, `6.1.0-28-amd64`; glibc's,
/// `2.36`) is at least `version` (major, minor).
pub fn version_at_least(release: &str, version: (u32, u32)) -> bool {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= version
}

/// The `lowerdir` value of an overlay of `n` lower layers named by number
/// (`0:1:...:n-1`, top first), relative to a directory of links of those
/// names: how a rootless run without [`lowerdir_plus`] fits many layers in
/// [`FSCONFIG_VALUE_MAX`] bytes.
pub fn numbered_lowerdir(n: usize) -> String {
    (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(":")
}

/// An image's root filesystem, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Rootfs {
    /// One assembled tree (`<store>/rootfs/<hex>`).
    Tree(PathBuf),
    /// Layer directories in overlayfs' own format, to be mounted as the lower
    /// layers of an overlay.
    Layers(Layers),
}

impl std::fmt::Display for Rootfs {
    /// The tree's path, or how many layers and where.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rootfs::Tree(tree) => write!(f, "{}", tree.display()),
            Rootfs::Layers(layers) => {
                let n = layers.dirs.len();
                let place = layers.dirs.first().and_then(|d| d.parent()).unwrap_or(Path::new(""));
                write!(f, "{n} layer{} in {}", if n == 1 { "" } else { "s" }, place.display())
            }
        }
    }
}

/// A stack of layer directories; see [`Rootfs::Layers`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Layers {
    /// The layers' directories, bottom (the image's first layer) first.
    pub dirs: Vec<PathBuf>,
    /// The same layers as an overlay names them, bottom first: their short
    /// links in the store (`l/`), where they have them, so that many fit in
    /// the mount options.
    pub mount: Vec<PathBuf>,
    /// Whether every layer's opaque directories carry `trusted.overlay.opaque`
    /// (written when the store was unpacked by root), so that an overlay
    /// mounted by root without `userxattr` reads them. `user.overlay.opaque`
    /// is always there.
    pub trusted: bool,
}

/// What a path names, its last component not followed: see
/// [`Rootfs::kind_nofollow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Nothing, or nothing that could be resolved (a link loop, a directory
    /// that cannot be read).
    Missing,
    /// A directory.
    Directory,
    /// Anything else: a file, a symbolic link, a device, a socket, a FIFO.
    Other,
}

impl Rootfs {
    /// The lower layers of an overlay of this root filesystem, top first (as
    /// `lowerdir` takes them): the tree, or the layers.
    pub fn lower_dirs(&self) -> Vec<PathBuf> {
        match self {
            Rootfs::Tree(tree) => vec![tree.clone()],
            Rootfs::Layers(layers) => layers.mount.iter().rev().cloned().collect(),
        }
    }

    /// Whether an overlay of these layers must read `user.overlay.*`
    /// attributes (`userxattr`) even when root mounts it: some layer's
    /// opaque directories lack the `trusted.` ones.
    pub fn needs_user_xattrs(&self) -> bool {
        matches!(self, Rootfs::Layers(layers) if !layers.trusted)
    }

    /// The assembled tree, when the root filesystem is one.
    pub fn tree(&self) -> Option<&Path> {
        match self {
            Rootfs::Tree(tree) => Some(tree),
            Rootfs::Layers(_) => None,
        }
    }

    /// The directory whose metadata (mode, owner) the root of the image has:
    /// the tree, or the top layer, as an overlay shows it (an empty path for
    /// a stack without layers).
    pub fn root_dir(&self) -> &Path {
        match self {
            Rootfs::Tree(tree) => tree,
            Rootfs::Layers(layers) => layers.dirs.last().map_or(Path::new(""), PathBuf::as_path),
        }
    }

    /// The real path, on the host, of what `path` (inside the image,
    /// `/etc/passwd` or `etc/passwd`) names, symbolic links resolved within
    /// the image, and its metadata (that of the host path, which is never a
    /// symbolic link after resolution); `None` when it does not exist, or
    /// resolution fails or loops. A directory merged from several layers is
    /// its top-most layer's directory, whose attributes overlay shows.
    pub fn resolve(&self, path: &str) -> Option<(PathBuf, Metadata)> {
        self.resolved(path, true)
    }

    /// [`Rootfs::resolve`] without following the last component (as `lstat`
    /// does): a symbolic link is the link itself.
    pub fn resolve_nofollow(&self, path: &str) -> Option<(PathBuf, Metadata)> {
        self.resolved(path, false)
    }

    fn resolved(&self, path: &str, follow_last: bool) -> Option<(PathBuf, Metadata)> {
        match self.find(path, follow_last)? {
            Found::Missing => None,
            Found::Directory(dir) => {
                let top = dir.top()?;
                Some((top.path.clone(), metadata(&top.fd)?))
            }
            Found::Leaf(leaf) => Some((leaf.path(), metadata(&leaf.fd)?)),
        }
    }

    /// [`Rootfs::resolve`], then, if it is a regular file of at most `max`
    /// bytes, its contents as UTF-8.
    pub fn read_to_string(&self, path: &str, max: u64) -> Option<String> {
        let Found::Leaf(leaf) = self.find(path, true)? else {
            return None;
        };
        if !is_regular_within(&leaf.stat, max) {
            return None;
        }
        // Opened again by name for reading (an O_PATH descriptor reads
        // nothing), and checked to be the same file: nothing else may have
        // taken its place meanwhile. O_NONBLOCK: should it be a FIFO now,
        // the open must not wait for a writer.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let file = rustix::fs::openat(&*leaf.parent.fd, leaf.name.as_slice(), flags, Mode::empty()).ok()?;
        let stat = rustix::fs::fstat(&file).ok()?;
        if (stat.st_dev, stat.st_ino) != (leaf.stat.st_dev, leaf.stat.st_ino) || !is_regular_within(&stat, max) {
            return None;
        }
        // The file may grow while it is read.
        let mut bytes = Vec::new();
        File::from(file).take(max.saturating_add(1)).read_to_end(&mut bytes).ok()?;
        if u64::try_from(bytes.len()).ok()? > max {
            return None;
        }
        String::from_utf8(bytes).ok()
    }

    /// Whether `path` resolves to a directory.
    pub fn is_dir(&self, path: &str) -> bool {
        matches!(self.find(path, true), Some(Found::Directory(_)))
    }

    /// How `path` resolves without following its last component (as `lstat`
    /// would): whether the image has a plain directory there, something else
    /// (a symbolic link included), or nothing.
    pub fn kind_nofollow(&self, path: &str) -> EntryKind {
        match self.find(path, false) {
            Some(Found::Directory(_)) => EntryKind::Directory,
            Some(Found::Leaf(_)) => EntryKind::Other,
            Some(Found::Missing) | None => EntryKind::Missing,
        }
    }

    /// The layers' roots, top first, and whether overlay's rules apply.
    fn view(&self) -> Option<View> {
        let (dirs, layered): (Vec<&Path>, bool) = match self {
            Rootfs::Tree(tree) => (vec![tree.as_path()], false),
            Rootfs::Layers(layers) => (layers.dirs.iter().rev().map(PathBuf::as_path).collect(), true),
        };
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let parts = dirs
            .into_iter()
            .map(|dir| {
                let fd = rustix::fs::open(dir, flags, Mode::empty())?;
                Ok(Part { fd: Rc::new(fd), path: dir.to_owned() })
            })
            .collect::<rustix::io::Result<Vec<_>>>()
            .ok()?;
        if parts.is_empty() {
            return None;
        }
        Some(View { root: Merged { parts }, layered })
    }

    /// Resolves `path` inside the image, its last component followed when it
    /// is a symbolic link and `follow_last` says so. `None`: it cannot be
    /// resolved (a loop, something unreadable on the way).
    fn find(&self, path: &str, follow_last: bool) -> Option<Found> {
        let view = self.view()?;
        // Components still to resolve, the next one last.
        let mut pending = components(path.as_bytes());
        // The merged directories from the root to `dir`'s parent: what `..`
        // goes back through (a pop, not a walk from the root again).
        let mut parents: Vec<Merged> = Vec::new();
        let mut dir = view.root.clone();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            match name.as_slice() {
                b"." => continue,
                b".." => {
                    // At the root, `..` is the root.
                    if let Some(parent) = parents.pop() {
                        dir = parent;
                    }
                    continue;
                }
                _ => {}
            }
            let last = pending.is_empty();
            match view.lookup(&dir, &name).ok()? {
                Entry::Missing => return Some(Found::Missing),
                Entry::Directory(child) => parents.push(std::mem::replace(&mut dir, child)),
                Entry::Leaf(leaf) if leaf.is_symlink() && (follow_last || !last) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return None;
                    }
                    let target = rustix::fs::readlinkat(&leaf.fd, c"", Vec::new()).ok()?.into_bytes();
                    if target.is_empty() {
                        return Some(Found::Missing);
                    }
                    if target.starts_with(b"/") {
                        parents.clear();
                        dir = view.root.clone();
                    }
                    pending.extend(components(&target));
                }
                // Something that is not a directory, with more to resolve
                // below it: the kernel's ENOTDIR.
                Entry::Leaf(_) if !last => return Some(Found::Missing),
                Entry::Leaf(leaf) => return Some(Found::Leaf(leaf)),
            }
        }
        Some(Found::Directory(dir))
    }
}

/// The components of a path, reversed (the first one last, to be popped). A
/// trailing slash adds a `.`: what it names must be a directory.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    let mut components: Vec<Vec<u8>> =
        path.split(|b| *b == b'/').filter(|c| !c.is_empty()).map(<[u8]>::to_vec).collect();
    if path.ends_with(b"/") {
        components.push(b".".to_vec());
    }
    components.reverse();
    components
}

/// Whether `stat` is a regular file of at most `max` bytes.
fn is_regular_within(stat: &Stat, max: u64) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
        && u64::try_from(stat.st_size).is_ok_and(|size| size <= max)
}

/// The metadata of what `fd` (an `O_PATH` descriptor) is.
fn metadata(fd: &OwnedFd) -> Option<Metadata> {
    File::from(fd.try_clone().ok()?).metadata().ok()
}

/// One layer's directory in a merged directory.
#[derive(Debug, Clone)]
struct Part {
    /// The directory, opened with `O_PATH`.
    fd: Rc<OwnedFd>,
    /// Its path on the host (for the caller; never opened).
    path: PathBuf,
}

/// A directory of the merged view: the directories of the layers that
/// contribute to it, top first (never empty).
#[derive(Debug, Clone)]
struct Merged {
    parts: Vec<Part>,
}

impl Merged {
    /// The top-most layer's directory: the one whose attributes overlay shows.
    fn top(&self) -> Option<&Part> {
        self.parts.first()
    }
}

/// Anything but a directory, found in one layer.
#[derive(Debug)]
struct Leaf {
    /// The directory it is in.
    parent: Part,
    /// Its name there.
    name: Vec<u8>,
    /// It, opened with `O_PATH | O_NOFOLLOW`.
    fd: OwnedFd,
    /// Its `fstat`.
    stat: Stat,
}

impl Leaf {
    fn is_symlink(&self) -> bool {
        FileType::from_raw_mode(self.stat.st_mode) == FileType::Symlink
    }

    /// Its path on the host.
    fn path(&self) -> PathBuf {
        self.parent.path.join(OsStr::from_bytes(&self.name))
    }
}

/// What a name is in a merged directory.
#[derive(Debug)]
enum Entry {
    /// Absent, or hidden by a whiteout.
    Missing,
    /// A (merged) directory.
    Directory(Merged),
    /// Anything else.
    Leaf(Leaf),
}

/// What a whole path resolved to.
#[derive(Debug)]
enum Found {
    /// Nothing.
    Missing,
    /// A (merged) directory.
    Directory(Merged),
    /// Anything else.
    Leaf(Leaf),
}

/// The layers' roots, and how names are looked up in them.
struct View {
    /// The image's root: every layer, top first.
    root: Merged,
    /// Whether overlay's rules apply: in a tree, a character device 0/0 is
    /// a device and no directory is opaque.
    layered: bool,
}

impl View {
    /// Looks `name` up in `dir`, by overlay's rules: the top-most layer that
    /// has it decides what it is; a directory merges with the same name's
    /// directories in the layers below, down to an opaque one, or to a layer
    /// where the name is anything but a directory.
    fn lookup(&self, dir: &Merged, name: &[u8]) -> rustix::io::Result<Entry> {
        for (i, part) in dir.parts.iter().enumerate() {
            let Some((fd, stat)) = open_entry(part, name)? else {
                continue;
            };
            if self.layered && is_whiteout(&stat) {
                return Ok(Entry::Missing);
            }
            if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                return Ok(Entry::Leaf(Leaf { parent: part.clone(), name: name.to_vec(), fd, stat }));
            }
            let mut parts = vec![Part { fd: Rc::new(fd), path: part.path.join(OsStr::from_bytes(name)) }];
            if self.layered {
                for lower in &dir.parts[i + 1..] {
                    let Some((fd, stat)) = open_entry(lower, name)? else {
                        continue;
                    };
                    // A whiteout or a non-directory ends the merge (it is
                    // hidden, and so is all below it), and so does an opaque
                    // directory above (asked only now: it matters only when
                    // there is a directory below).
                    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                        break;
                    }
                    if parts.last().map_or(Ok(true), |above| is_opaque(&above.fd))? {
                        break;
                    }
                    parts.push(Part { fd: Rc::new(fd), path: lower.path.join(OsStr::from_bytes(name)) });
                }
            }
            return Ok(Entry::Directory(Merged { parts }));
        }
        Ok(Entry::Missing)
    }
}

/// Opens the entry `name` of one layer's directory without following it,
/// and says what it is; `None` when the layer has no such entry.
fn open_entry(dir: &Part, name: &[u8]) -> rustix::io::Result<Option<(OwnedFd, Stat)>> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(&*dir.fd, name, flags, Mode::empty()) {
        Ok(fd) => {
            let stat = rustix::fs::fstat(&fd)?;
            Ok(Some((fd, stat)))
        }
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `stat` is an overlay whiteout: a character device 0/0.
fn is_whiteout(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == rustix::fs::makedev(0, 0)
}

/// Whether the directory `fd` (opened with `O_PATH`) is opaque. User xattrs
/// cannot be read through an `O_PATH` descriptor: the directory is opened
/// again for reading through it (`.`), which cannot land anywhere else. An
/// attribute that cannot be read is an error, not a "no": the view would
/// show what overlay hides.
fn is_opaque(fd: &OwnedFd) -> rustix::io::Result<bool> {
    let dir = rustix::fs::openat(fd, c".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut value = [0u8; 1];
    match rustix::fs::fgetxattr(&dir, OPAQUE, &mut value) {
        // Overlay's own test: exactly one byte, `y`.
        Ok(len) => Ok(len == 1 && value == *b"y"),
        // Absent, longer than `y`, or a file system without user xattrs.
        Err(Errno::NODATA | Errno::RANGE | Errno::NOTSUP) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::os::unix::fs::symlink;

    use rustix::fs::{CWD, XattrFlags};

    #[test]
    fn versions() {
        assert!(!version_at_least("6.1.0-28-amd64", (6, 8)));
        assert!(!version_at_least("5.14.0-427.el9.x86_64", (6, 8)));
        assert!(version_at_least("6.8.0-31-generic", (6, 8)));
        assert!(version_at_least("6.18.44-fc-v1272", (6, 8)));
        assert!(version_at_least("7.0", (6, 8)));
        assert!(!version_at_least("", (6, 8)));
        // glibc's
        assert!(version_at_least("2.36", (2, 25)));
        assert!(version_at_least("2.25", (2, 25)));
        assert!(version_at_least("3.0", (2, 25)));
        assert!(!version_at_least("2.17", (2, 25)));
        assert!(!version_at_least("2.9", (2, 25)));
        assert!(!version_at_least("", (2, 25)));
    }

    #[test]
    fn numbered_lower_layers() {
        assert_eq!(numbered_lowerdir(1), "0");
        assert_eq!(numbered_lowerdir(12), "0:1:2:3:4:5:6:7:8:9:10:11");
        // As many as fit in one fsconfig value.
        assert!(numbered_lowerdir(88).len() <= FSCONFIG_VALUE_MAX);
        assert!(numbered_lowerdir(89).len() > FSCONFIG_VALUE_MAX);
    }

    /// A stack of `n` empty layers in `tmp`, bottom first.
    fn layers(tmp: &Path, n: usize) -> (Rootfs, Vec<PathBuf>) {
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.join(format!("layer{i}"))).collect();
        for dir in &dirs {
            fs::create_dir_all(dir).unwrap();
        }
        (Rootfs::Layers(Layers { mount: dirs.clone(), dirs: dirs.clone(), trusted: false }), dirs)
    }

    /// Writes `contents` to `path`, creating its parents.
    fn write(path: &Path, contents: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    /// A symbolic link at `path` to `target`, creating its parents.
    fn link(target: impl AsRef<Path>, path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    /// An overlay whiteout at `path`.
    fn whiteout(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        rustix::fs::mknodat(CWD, path, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0)).unwrap();
    }

    /// Marks the directory `path` opaque (created if missing).
    fn opaque(path: &Path) {
        fs::create_dir_all(path).unwrap();
        rustix::fs::setxattr(path, "user.overlay.opaque", b"y", XattrFlags::empty()).unwrap();
    }

    fn read(rootfs: &Rootfs, path: &str) -> Option<String> {
        rootfs.read_to_string(path, 1 << 20)
    }

    #[test]
    fn lower_file_is_visible_and_upper_file_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 3);
        write(&dirs[0].join("etc/os-release"), "bottom");
        write(&dirs[0].join("etc/passwd"), "bottom");
        write(&dirs[2].join("etc/passwd"), "top");
        assert_eq!(read(&rootfs, "/etc/os-release").as_deref(), Some("bottom"));
        assert_eq!(read(&rootfs, "etc/passwd").as_deref(), Some("top"));
        let (path, meta) = rootfs.resolve("/etc/passwd").unwrap();
        assert_eq!(path, dirs[2].join("etc/passwd"));
        assert!(meta.is_file());
    }

    #[test]
    fn whiteout_hides_lower_file_and_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 3);
        write(&dirs[0].join("etc/passwd"), "bottom");
        write(&dirs[0].join("opt/tool/bin"), "bottom");
        whiteout(&dirs[1].join("etc/passwd"));
        whiteout(&dirs[1].join("opt/tool"));
        assert_eq!(read(&rootfs, "/etc/passwd"), None);
        assert!(rootfs.resolve("/etc/passwd").is_none());
        assert_eq!(rootfs.kind_nofollow("/etc/passwd"), EntryKind::Missing);
        assert!(!rootfs.is_dir("/opt/tool"));
        assert_eq!(rootfs.kind_nofollow("/opt/tool"), EntryKind::Missing);
        assert_eq!(read(&rootfs, "/opt/tool/bin"), None);
        // A layer above the whiteout brings the name back, new.
        write(&dirs[2].join("opt/tool/other"), "top");
        assert!(rootfs.is_dir("/opt/tool"));
        assert_eq!(read(&rootfs, "/opt/tool/other").as_deref(), Some("top"));
        assert_eq!(read(&rootfs, "/opt/tool/bin"), None);
    }

    #[test]
    fn whiteout_or_file_between_directories_ends_the_merge() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 5);
        write(&dirs[0].join("d/bottom"), "bottom");
        whiteout(&dirs[1].join("d"));
        write(&dirs[2].join("d/middle"), "middle");
        write(&dirs[3].join("d"), "file");
        write(&dirs[4].join("d/top"), "top");
        assert_eq!(read(&rootfs, "/d/top").as_deref(), Some("top"));
        assert_eq!(read(&rootfs, "/d/middle"), None);
        assert_eq!(read(&rootfs, "/d/bottom"), None);
        // Without the file, the middle layer merges, not the bottom one.
        fs::remove_file(dirs[3].join("d")).unwrap();
        assert_eq!(read(&rootfs, "/d/middle").as_deref(), Some("middle"));
        assert_eq!(read(&rootfs, "/d/bottom"), None);
    }

    #[test]
    fn opaque_directory_hides_lower_entries_but_shows_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 3);
        write(&dirs[0].join("etc/bottom"), "bottom");
        write(&dirs[1].join("etc/middle"), "middle");
        opaque(&dirs[1].join("etc"));
        write(&dirs[2].join("etc/top"), "top");
        assert_eq!(read(&rootfs, "/etc/top").as_deref(), Some("top"));
        assert_eq!(read(&rootfs, "/etc/middle").as_deref(), Some("middle"));
        assert_eq!(read(&rootfs, "/etc/bottom"), None);
        assert_eq!(rootfs.kind_nofollow("/etc/bottom"), EntryKind::Missing);
    }

    #[test]
    fn directories_merge_across_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 3);
        for (i, dir) in dirs.iter().enumerate() {
            write(&dir.join(format!("d/e/file{i}")), &format!("layer{i}"));
        }
        for i in 0..3 {
            assert_eq!(read(&rootfs, &format!("/d/e/file{i}")), Some(format!("layer{i}")));
        }
        assert!(rootfs.is_dir("/d/e"));
        assert_eq!(rootfs.kind_nofollow("/d"), EntryKind::Directory);
        // A merged directory is its top-most layer's.
        assert_eq!(rootfs.resolve("/d").unwrap().0, dirs[2].join("d"));
        assert_eq!(rootfs.resolve("/").unwrap().0, dirs[2]);
        assert_eq!(rootfs.root_dir(), dirs[2], "the top layer's, as overlay shows it");
    }

    #[test]
    fn relative_link_in_lower_layer_leads_to_upper_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 2);
        link("usr/lib", &dirs[0].join("lib"));
        write(&dirs[1].join("usr/lib/x"), "upper");
        assert_eq!(read(&rootfs, "/lib/x").as_deref(), Some("upper"));
        assert_eq!(rootfs.resolve("/lib/x").unwrap().0, dirs[1].join("usr/lib/x"));
        assert!(rootfs.is_dir("/lib"));
        assert_eq!(rootfs.kind_nofollow("/lib"), EntryKind::Other);
        // Not followed: the link itself, in the layer that has it.
        let (path, meta) = rootfs.resolve_nofollow("/lib").unwrap();
        assert_eq!(path, dirs[0].join("lib"));
        assert!(meta.file_type().is_symlink());
        assert_eq!(rootfs.resolve("/lib").unwrap().0, dirs[1].join("usr/lib"));
    }

    /// Links that would reach `decoy` (holding "host") if followed on the
    /// host, in the image whose root is `root`.
    fn escaping_links(tmp: &Path, root: &Path) {
        let decoy = tmp.join("host/passwd");
        write(&decoy, "host");
        // Absolute: to a file of the image, and to the decoy's host path.
        link("/srv/passwd", &root.join("etc/passwd"));
        link(&decoy, &root.join("etc/shadow"));
        // Relative, climbing out of the root (to the decoy, on the host):
        // `..` stops at the root.
        assert_eq!(root.parent(), Some(tmp));
        link("../../host/passwd", &root.join("etc/group"));
        // A directory link to the decoy's directory.
        link(tmp.join("host"), &root.join("etc/hostdir"));
    }

    /// The checks on what [`escaping_links`] made.
    fn check_escaping_links(rootfs: &Rootfs, root: &Path) {
        assert_eq!(read(rootfs, "/etc/passwd").as_deref(), Some("image"));
        assert_eq!(rootfs.resolve("/etc/passwd").unwrap().0, root.join("srv/passwd"));
        assert_eq!(read(rootfs, "/etc/shadow"), None);
        assert_eq!(read(rootfs, "/etc/group"), None);
        assert_eq!(read(rootfs, "/etc/hostdir/passwd"), None);
        assert!(!rootfs.is_dir("/etc/hostdir"));
        // Where the image has the file, the link finds that one.
        write(&root.join("host/passwd"), "inside");
        assert_eq!(read(rootfs, "/etc/group").as_deref(), Some("inside"));
    }

    #[test]
    fn links_resolve_inside_the_image_never_on_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 2);
        write(&dirs[0].join("srv/passwd"), "image");
        escaping_links(tmp.path(), &dirs[1]);
        check_escaping_links(&rootfs, &dirs[0]);
    }

    #[test]
    fn lower_link_under_upper_directory_is_hidden() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 2);
        let host = tmp.path().join("hostdir");
        write(&host.join("secret"), "host");
        link(&host, &dirs[0].join("a"));
        write(&dirs[1].join("a/mine"), "upper");
        assert_eq!(read(&rootfs, "/a/secret"), None);
        assert_eq!(rootfs.kind_nofollow("/a/secret"), EntryKind::Missing);
        assert_eq!(read(&rootfs, "/a/mine").as_deref(), Some("upper"));
        assert_eq!(rootfs.resolve("/a").unwrap().0, dirs[1].join("a"));
        // A lower directory under an upper file is hidden too.
        write(&dirs[0].join("b/below"), "lower");
        write(&dirs[1].join("b"), "upper");
        assert_eq!(read(&rootfs, "/b/below"), None);
        assert_eq!(read(&rootfs, "/b").as_deref(), Some("upper"));
    }

    #[test]
    fn dotdot_at_root_stays_at_root() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 1);
        write(&dirs[0].join("etc/passwd"), "image");
        // On the host, `../../etc/passwd` from the layer is the tempdir's.
        write(&tmp.path().join("etc/passwd"), "host");
        assert_eq!(read(&rootfs, "../../etc/passwd").as_deref(), Some("image"));
        assert_eq!(read(&rootfs, "/etc/../../../etc/passwd").as_deref(), Some("image"));
        assert_eq!(rootfs.resolve("/..").unwrap().0, dirs[0]);
    }

    #[test]
    fn dotdot_after_link_goes_up_from_where_the_link_led() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 2);
        link("usr/lib", &dirs[0].join("lib"));
        write(&dirs[0].join("usr/share/x"), "share");
        write(&dirs[1].join("usr/lib/.keep"), "");
        assert_eq!(read(&rootfs, "/lib/../share/x").as_deref(), Some("share"));
    }

    #[test]
    fn link_loop_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 2);
        link("b", &dirs[0].join("a"));
        link("/a", &dirs[1].join("b"));
        link("self/x", &dirs[1].join("self"));
        assert_eq!(read(&rootfs, "/a"), None);
        assert!(rootfs.resolve("/a").is_none());
        assert!(rootfs.resolve("/self").is_none());
        // Not following the last one, the link itself is there.
        assert_eq!(rootfs.kind_nofollow("/a"), EntryKind::Other);
    }

    #[test]
    fn forty_links_are_followed_not_more() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 1);
        write(&dirs[0].join("l0"), "end");
        for i in 1..=41 {
            link(format!("l{}", i - 1), &dirs[0].join(format!("l{i}")));
        }
        assert_eq!(read(&rootfs, "/l40").as_deref(), Some("end"));
        assert_eq!(read(&rootfs, "/l41"), None);
    }

    #[test]
    fn file_over_max_is_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 1);
        write(&dirs[0].join("big"), "0123456789");
        assert_eq!(rootfs.read_to_string("/big", 10).as_deref(), Some("0123456789"));
        assert_eq!(rootfs.read_to_string("/big", 9), None);
        // Directories and devices are not read either.
        assert_eq!(read(&rootfs, "/"), None);
    }

    #[test]
    fn a_file_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, dirs) = layers(tmp.path(), 1);
        write(&dirs[0].join("f"), "f");
        link("f", &dirs[0].join("l"));
        assert!(rootfs.resolve("/f/").is_none());
        assert!(rootfs.resolve("/f/.").is_none());
        assert!(rootfs.resolve("/l/").is_none());
        assert_eq!(rootfs.kind_nofollow("/l"), EntryKind::Other);
        assert_eq!(rootfs.kind_nofollow("/f/x"), EntryKind::Missing);
        assert!(!rootfs.is_dir("/f"));
    }

    #[test]
    fn empty_stack_has_nothing() {
        let rootfs = Rootfs::Layers(Layers { dirs: Vec::new(), mount: Vec::new(), trusted: false });
        assert!(rootfs.resolve("/").is_none());
        assert_eq!(rootfs.kind_nofollow("/"), EntryKind::Missing);
        assert_eq!(rootfs.root_dir(), Path::new(""));
    }

    #[test]
    fn tree_links_resolve_inside_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        write(&tree.join("srv/passwd"), "image");
        escaping_links(tmp.path(), &tree);
        let rootfs = Rootfs::Tree(tree.clone());
        check_escaping_links(&rootfs, &tree);
        assert_eq!(rootfs.root_dir(), tree);
        assert_eq!(rootfs.resolve("/").unwrap().0, tree);
    }

    #[test]
    fn tree_loops_and_dotdot() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        write(&tree.join("etc/passwd"), "image");
        write(&tmp.path().join("etc/passwd"), "host");
        link("loop", &tree.join("loop"));
        let rootfs = Rootfs::Tree(tree);
        assert_eq!(read(&rootfs, "../etc/passwd").as_deref(), Some("image"));
        assert_eq!(read(&rootfs, "loop"), None);
        assert_eq!(rootfs.read_to_string("etc/passwd", 4), None);
    }

    #[test]
    fn character_device_0_0_is_a_whiteout_only_in_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        whiteout(&tree.join("dev/null0"));
        let rootfs = Rootfs::Tree(tree.clone());
        assert_eq!(rootfs.kind_nofollow("/dev/null0"), EntryKind::Other);
        let (path, meta) = rootfs.resolve("/dev/null0").unwrap();
        assert_eq!(path, tree.join("dev/null0"));
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()));
        let layered = Rootfs::Layers(Layers { dirs: vec![tree.clone()], mount: vec![tree], trusted: false });
        assert_eq!(layered.kind_nofollow("/dev/null0"), EntryKind::Missing);
    }

    #[test]
    fn tree_directory_is_never_opaque() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        opaque(&tree.join("etc"));
        write(&tree.join("etc/passwd"), "image");
        let rootfs = Rootfs::Tree(tree);
        assert_eq!(read(&rootfs, "/etc/passwd").as_deref(), Some("image"));
    }
}
