//! Applying OCI image layers to a root filesystem, without ever writing
//! outside it.
//!
//! A layer is a tar stream of changes to the layers below it (OCI image spec,
//! "Image Layer Filesystem Changeset"): files, directories, links and special
//! files to add or replace, `.wh.<name>` whiteouts that delete `<name>`, and
//! `.wh..wh..opq` markers that hide everything a directory held in lower
//! layers. [`apply_layer`] reads the entries with the `tar` crate and applies
//! each one itself, the way containerd does; `tar`'s own `unpack` gets these
//! semantics wrong (see docs/facts.md, "Layer unpacking").
//!
//! # Containment
//!
//! Layers come from registries and are hostile until proven otherwise. Every
//! entry is applied relative to a directory file descriptor:
//!
//! - entry names are cleaned lexically; a name whose `..` components climb
//!   above the root is refused ([`UnpackError::Escape`]), and absolute names
//!   are taken relative to the root;
//! - the parent directory is opened with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)`, so that symbolic links on the way (`lib ->
//!   /usr/lib`, or a malicious `evil -> ../../..`) resolve the way they would
//!   inside the container: within the root, never on the host;
//! - the final component is never followed: whatever is in the way is unlinked
//!   first and the new entry is created with `O_EXCL`, `mkdirat`, `symlinkat`,
//!   `mknodat` or `linkat` (without `AT_SYMLINK_FOLLOW`), and metadata is set
//!   through the new file descriptor or with `AT_SYMLINK_NOFOLLOW`.
//!
//! This needs Linux 5.6 or later (`openat2`).
//!
//! # Unprivileged unpacking
//!
//! Setuid and setgid bits of files are always dropped (see
//! `Applier::permissions`). Without root, entries belong to the unpacking
//! user, directories lose their setgid bit too, and device nodes are skipped ([`UnpackOptions::for_current_user`]).
//! Directories from lower layers may have no write permission for their
//! owner (Fedora's `0555` `/usr/bin`); such a directory is made writable while
//! the layer changes it and gets its mode back when the layer is done.
//!
//! A layer that fails half-way leaves the root filesystem half-changed: unpack
//! into a scratch directory and move it into place only on success.
//!
//! # Layers shared between images
//!
//! [`unpack_layer`] unpacks one layer alone into a directory of its own:
//! whiteouts and opaque markers are kept as the plain `.wh.` files they are
//! in the tar, and the directories the layer only implies (it has `a/b` but
//! no `a/`) are listed, so that they do not overwrite a lower layer's. Then
//! [`link_layer`] applies that directory onto a root filesystem exactly as
//! [`apply_layer`] applies the tar (the same containment, whiteouts and type
//! changes), hard-linking files instead of writing them: images that share
//! a layer share its files on disk. A root filesystem assembled so must only
//! be read (it is the read-only lower layer of each run's overlay): a write
//! to one of its files would change the shared layer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::quote::quote_path;
use crate::tar_limits::{Bounded, ExtensionTooLarge};

/// The name prefix of a whiteout entry.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the opaque-directory marker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// aufs' own metadata (`.wh..wh.plnk`, `.wh..wh.aufs`), never part of the image.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
/// How many dangling symbolic links one missing parent path may go through,
/// as the kernel's own limit for a path lookup.
const MAX_SYMLINK_EXPANSIONS: usize = 40;
/// Size of the buffer file data is copied through.
const COPY_BUFFER_LEN: usize = 128 * 1024;

/// What to do with ownership and device nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Give every entry the numeric owner recorded in the layer, and keep the
    /// setgid bit of directories (needs root). When false, entries belong to
    /// the unpacking user. Setuid and setgid bits of files are dropped either
    /// way: on the host, a setuid file would let anyone who reaches it run it
    /// as its owner (root, or the unpacking user).
    pub preserve_ownership: bool,
    /// Create character and block device nodes (needs `CAP_MKNOD`). When
    /// false they are skipped, logged, and listed in
    /// [`UnpackStats::skipped_devices`]. Fifos are always created.
    pub create_devices: bool,
}

impl UnpackOptions {
    /// Everything the current user is allowed to do: as root (effective uid
    /// 0), preserve ownership and create devices; otherwise neither.
    pub fn for_current_user() -> Self {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions { preserve_ownership: root, create_devices: root }
    }
}

/// What applying a layer did, for the caller's progress report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries created or updated: files, directories, links, fifos and
    /// devices (not whiteouts, not skipped devices).
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes skipped because [`UnpackOptions::create_devices`] is off,
    /// as absolute paths inside the root (`/dev/null`).
    pub skipped_devices: Vec<String>,
    /// Bytes of regular-file data written.
    pub bytes: u64,
    /// Extended attributes set (`user.*` on files and directories).
    pub xattrs: u64,
    /// Extended attributes the layer carried but ces did not set, by name
    /// (quoted, at most [`MAX_DROPPED_XATTR_NAMES`] names, the rest counted
    /// under `(others)`), with how many entries had each: every namespace
    /// but `user.*` (`security.capability` would grant privileges on the
    /// host, `trusted.*` and ACLs mean nothing in the store), and `user.*`
    /// where the file system or the file type takes none.
    pub dropped_xattrs: BTreeMap<String, u64>,
}

/// How many distinct dropped extended attribute names [`UnpackStats`] lists.
pub const MAX_DROPPED_XATTR_NAMES: usize = 16;
/// The PAX record prefix of an extended attribute, as GNU tar, BuildKit and
/// the `tar` crate write them.
const PAX_XATTR: &[u8] = b"SCHILY.xattr.";
/// The only namespace of extended attributes kept: the user's own data.
const KEPT_XATTR_NAMESPACE: &[u8] = b"user.";

/// An extended attribute to set: name and value.
type Xattr = (Vec<u8>, Vec<u8>);

/// Why an entry was refused as an escape from the root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EscapeReason {
    /// The entry's name climbs above the root with `..` components.
    NameAboveRoot,
    /// The hard link's target climbs above the root with `..` components.
    LinkTargetAboveRoot,
    /// The whiteout names `.`, `..` or nothing, instead of an entry of its
    /// directory (`.wh..` would delete the directory holding it).
    WhiteoutName,
}

impl fmt::Display for EscapeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EscapeReason::NameAboveRoot => "its name climbs above the root with `..`",
            EscapeReason::LinkTargetAboveRoot => "its hard link target climbs above the root with `..`",
            EscapeReason::WhiteoutName => "its whiteout does not name an entry of its directory",
        })
    }
}

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// The root filesystem directory could not be opened.
    #[error("cannot open the root filesystem directory {}", quote_path(root))]
    Root {
        /// The directory given to [`apply_layer`].
        root: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation failed while applying an entry.
    #[error("cannot apply layer entry {}", quote_path(path))]
    Io {
        /// The entry's name, as written in the layer.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry tried to reach outside the root filesystem; nothing of it was
    /// applied.
    #[error("layer entry {} would escape the root filesystem: {reason}", quote_path(entry))]
    Escape {
        /// The entry's name, as written in the layer.
        entry: PathBuf,
        /// What gave it away.
        reason: EscapeReason,
    },
    /// A hard link's target could not be linked to (missing, a directory).
    #[error("cannot hard link layer entry {} to {}", quote_path(entry), quote_path(target))]
    Link {
        /// The hard link's name, as written in the layer.
        entry: PathBuf,
        /// Its target, as written in the layer.
        target: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The layer is not a complete, valid tar stream: a bad header, data cut
    /// short, or a compressed stream that is truncated or fails its checksum.
    #[error("the layer is not a complete, valid tar stream{}", in_entry(.entry.as_deref()))]
    Corrupt {
        /// The entry being read, when the damage is inside one.
        entry: Option<PathBuf>,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tar extension header (a GNU long name or link, a PAX header) is
    /// larger than its limit; it was refused before it was read.
    #[error(transparent)]
    ExtensionTooLarge(#[from] ExtensionTooLarge),
    /// An entry of a tar type that has no meaning in an image layer.
    #[error("layer entry {} has unsupported tar entry type {}", quote_path(entry), kind.escape_default())]
    Unsupported {
        /// The entry's name, as written in the layer.
        entry: PathBuf,
        /// The tar type flag.
        kind: char,
    },
}

impl UnpackError {
    /// The error number, where the file system (`ENOSPC`) or the user's
    /// quota (`EDQUOT`) ran out of space while the layer was written: the
    /// layer is fine, the disk is not.
    pub fn out_of_space(&self) -> Option<i32> {
        let source = match self {
            UnpackError::Io { source, .. } | UnpackError::Link { source, .. } | UnpackError::Root { source, .. } => {
                source
            }
            _ => return None,
        };
        source.raw_os_error().filter(|&code| code == Errno::NOSPC.raw_os_error() || code == Errno::DQUOT.raw_os_error())
    }
}

fn in_entry(entry: Option<&Path>) -> String {
    entry.map(|entry| format!(" (in entry {})", quote_path(entry))).unwrap_or_default()
}

/// How a layer blob (or an archive) is compressed, as its first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one member or several).
    Gzip,
    /// zstd.
    Zstd,
}

/// Wraps a layer blob reader in the decompressor its first bytes call for:
/// gzip (every member, as `MultiGzDecoder`), zstd, or none for a plain tar.
///
/// The media type is not consulted: registries and old tools mislabel
/// layers. Errors are the reader's own, while peeking at the first bytes.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    detect(reader).map(|(_, stream)| stream)
}

/// [`decompress`], also saying which compression the first bytes showed.
/// Only those bytes have been read when it returns.
pub fn detect<'a, R: Read + 'a>(mut reader: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
    const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        match reader.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let magic = &magic[..filled];
    let stream = io::Cursor::new(magic.to_vec()).chain(reader);
    Ok(if magic.starts_with(GZIP_MAGIC) {
        (Compression::Gzip, Box::new(flate2::read::MultiGzDecoder::new(stream)))
    } else if magic.starts_with(ZSTD_MAGIC) {
        let mut decoder = zstd::stream::read::Decoder::new(stream)?;
        // At most an 8 MiB window (what zstd's levels up to 19 and the Go
        // encoder image builders use), not the library's 128 MiB: a pull
        // unpacks up to four layers at once within its memory bound. A
        // frame that needs more is refused as corrupt.
        decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
        (Compression::Zstd, Box::new(decoder))
    } else {
        (Compression::None, Box::new(stream))
    })
}

/// The largest zstd window a layer may use: 2^23 bytes.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Applies one (already decompressed, see [`decompress`]) layer tar on top of
/// the root filesystem directory `root`.
///
/// The whole stream is read, to its end, so that a compressed stream's
/// checksum is verified and a truncated one is reported as
/// [`UnpackError::Corrupt`]. On error, the root filesystem is left partly
/// changed.
pub fn apply_layer(root: &Path, layer: impl Read, options: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
    apply_stream(root, layer, options, false).map(|done| done.stats)
}

/// What [`unpack_layer`] made, besides the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerDir {
    /// What unpacking did.
    pub stats: UnpackStats,
    /// The directories the layer only implies (made as parents of its
    /// entries, with no entry of their own), by path: [`link_layer`] leaves
    /// a lower layer's directory there as it is.
    pub implicit_dirs: Vec<Vec<u8>>,
    /// Unpacked without root: the directories whose mode would keep their
    /// owner from reading or searching them (`0311`, `0000`), by path, with
    /// that mode. On disk they are open to their owner, for [`link_layer`]
    /// to read; it gives the root filesystem these modes. (A directory
    /// closed only to writing, `0555`, has its mode on disk.)
    pub dir_modes: Vec<(Vec<u8>, u32)>,
    /// Whether every whiteout and opaque marker is in overlayfs' own format
    /// (see [`unpack_layer`]), so that the directory can be an overlay's
    /// lower layer.
    pub overlay: bool,
    /// Whether its opaque directories carry [`TRUSTED_OPAQUE`] too (written
    /// by root), for an overlay root mounts without `userxattr`.
    pub trusted: bool,
}

/// Unpacks one layer alone into the empty directory `dir` (see the module's
/// "Layers shared between images"). A hard link to a file of a lower layer
/// cannot be made there: it fails with [`UnpackError::Link`].
///
/// Whiteouts and opaque markers end in overlayfs' own format where they
/// can ([`LayerDir::overlay`]): a whiteout as a character device 0/0 of the
/// name it hides (any user may make one since Linux 5.8), an opaque
/// directory (and a directory the layer whited out and made anew) with the
/// [`USER_OPAQUE`] attribute, and as root [`TRUSTED_OPAQUE`] too. What
/// cannot be (the file system refuses, an opaque layer root, a whiteout of
/// a directory the layer only implies) stays a `.wh.` file; [`link_layer`]
/// reads both.
pub fn unpack_layer(dir: &Path, layer: impl Read, options: &UnpackOptions) -> Result<LayerDir, UnpackError> {
    apply_stream(dir, layer, options, true)
}

/// The `user.*` extended attributes of `path` (not followed), as a layer
/// directory's directory has them: what [`Applier::set_xattrs`] takes.
fn user_xattrs(path: &Path) -> Vec<Xattr> {
    // A long list is read whole: the buffer grows while it is too small.
    let mut names = vec![0u8; 4096];
    loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(len) => {
                names.truncate(len);
                break;
            }
            Err(Errno::RANGE) if names.len() < 1 << 20 => names.resize(names.len() * 4, 0),
            Err(_) => return Vec::new(),
        }
    }
    let mut xattrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| n.starts_with(b"user.") && !n.starts_with(OVERLAY_XATTR_PREFIX)) {
        let Ok(c_name) = std::ffi::CString::new(name) else { continue };
        let mut value = vec![0u8; 64 << 10];
        if let Ok(len) = rustix::fs::lgetxattr(path, c_name.as_c_str(), &mut value) {
            value.truncate(len);
            xattrs.push((name.to_vec(), value));
        }
    }
    xattrs
}

fn open_root(root: &Path) -> Result<OwnedFd, UnpackError> {
    rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| UnpackError::Root { root: root.to_path_buf(), source: e.into() })
}

fn apply_stream(
    root: &Path,
    layer: impl Read,
    options: &UnpackOptions,
    layer_mode: bool,
) -> Result<LayerDir, UnpackError> {
    let mut applier = Applier::new(open_root(root)?, options);
    applier.layer_mode = layer_mode;
    let mut archive = tar::Archive::new(Bounded::new(layer));

    let mut result = applier.apply_entries(&mut archive);
    if result.is_ok() {
        // The tar ends at its first zero block; what follows (the rest of the
        // end marker, a gzip trailer with its CRC) must still be read for a
        // truncated or damaged blob to be noticed.
        result = io::copy(&mut archive.into_inner(), &mut io::sink())
            .map(drop)
            .map_err(|source| UnpackError::Corrupt { entry: None, source });
    }
    let restored = applier.restore_locked_dirs();
    result?;
    restored?;
    // Before the directories get their times: converting changes them.
    let (overlay, trusted) = if layer_mode { applier.overlay_format(root)? } else { (false, false) };
    applier.finish_directories()?;
    Ok(LayerDir {
        stats: applier.stats,
        implicit_dirs: std::mem::take(&mut applier.implicit).into_iter().collect(),
        dir_modes: applier.dir_modes,
        overlay,
        trusted,
    })
}

/// The attribute overlayfs mounted with `userxattr` (as rootless runs mount
/// it) reads on an opaque directory.
pub const USER_OPAQUE: &str = "user.overlay.opaque";
/// The attribute overlayfs mounted by root (without `userxattr`) reads on
/// an opaque directory.
pub const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
/// Extended attributes a layer may not set: overlayfs' own, read from
/// lower layers mounted with `userxattr`.
const OVERLAY_XATTR_PREFIX: &[u8] = b"user.overlay.";

/// Whether `path` (a directory, not followed) is opaque to overlayfs.
fn is_opaque(path: &Path) -> bool {
    let mut value = [0u8; 2];
    [USER_OPAQUE, TRUSTED_OPAQUE]
        .into_iter()
        .any(|name| rustix::fs::lgetxattr(path, name, &mut value).is_ok_and(|len| &value[..len] == b"y"))
}

/// Whether `entry` (of a layer's directory) is an overlay whiteout: a
/// character device 0/0.
fn is_whiteout(entry: &std::fs::DirEntry) -> bool {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    entry.file_type().is_ok_and(|t| t.is_char_device()) && entry.metadata().is_ok_and(|m| m.rdev() == 0)
}

/// Applies the layer that [`unpack_layer`] unpacked into `layer` (and
/// described in `made`) onto `root`, as [`apply_layer`] applies its tar:
/// whiteouts and opaque markers hide what lower layers put there,
/// directories get the layer's metadata (not those it only implies), and
/// every other entry (file, symbolic link, fifo, device) is hard-linked from
/// `layer` into place: the two share it.
pub fn link_layer(
    root: &Path,
    layer: &Path,
    made: &LayerDir,
    options: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let mut applier = Applier::new(open_root(root)?, options);
    applier.linking = true;
    let implicit: HashSet<&[u8]> = made.implicit_dirs.iter().map(Vec::as_slice).collect();
    let modes: HashMap<&[u8], u32> = made.dir_modes.iter().map(|(path, mode)| (path.as_slice(), *mode)).collect();
    let result = applier.link_tree(layer, &implicit, &modes);
    let restored = applier.restore_locked_dirs();
    result?;
    restored?;
    applier.finish_directories()?;
    Ok(applier.stats)
}

/// A directory's identity: device and inode.
type DirId = (u64, u64);

/// An open parent directory (an `O_PATH` descriptor) and its identity.
struct Parent {
    fd: OwnedFd,
    id: DirId,
}

/// Whether [`Applier::set_metadata_at`] sets the mode, and of what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chmod {
    /// A symbolic link: it has none.
    No,
    /// A file, fifo or device node.
    File,
    /// A directory.
    Directory,
}

/// Ownership, permissions and modification time from a tar header.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Meta {
    fn from_header(header: &tar::Header) -> io::Result<Meta> {
        Ok(Meta {
            mode: header.mode()?,
            uid: owner_id(header.uid()?)?,
            gid: owner_id(header.gid()?)?,
            mtime: i64::try_from(header.mtime()?).unwrap_or(i64::MAX),
        })
    }

    fn timestamps(&self) -> Timestamps {
        let time = Timespec { tv_sec: self.mtime, tv_nsec: 0 };
        Timestamps { last_access: time, last_modification: time }
    }
}

/// A numeric owner as the kernel takes it: `u32::MAX` means "unchanged" to
/// `chown`, so it is as invalid as anything larger.
fn owner_id(id: u64) -> io::Result<u32> {
    u32::try_from(id)
        .ok()
        .filter(|id| *id != u32::MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "owner id out of range"))
}

/// A directory of this layer, whose metadata is set once the layer is done:
/// a read-only directory must stay writable while its entries are created,
/// and creating them would change its modification time.
struct PendingDir {
    shown: PathBuf,
    parent: Vec<u8>,
    name: Vec<u8>,
    meta: Meta,
}

/// What a removal spares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing: the entry is being replaced.
    Nothing,
    /// What this layer wrote (a whiteout or opaque marker only hides the
    /// layers below).
    Written,
}

/// What an entry creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    Regular,
    Symlink,
    Hardlink,
    /// A fifo or a device node.
    Special(FileType),
}

/// Whether there is room for a new entry, or a directory to update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Free,
    Directory,
}

/// The state of one [`apply_layer`] call.
struct Applier<'o> {
    root: OwnedFd,
    options: &'o UnpackOptions,
    euid: u32,
    /// Every directory entry this layer created, as (parent directory, name):
    /// an opaque marker removes everything else. Keyed by the parent's inode
    /// rather than by path, so that an entry written through a symbolic link
    /// (`lib/x`, with `lib -> usr/lib`) is recognised under its real parent.
    written: HashSet<(DirId, Vec<u8>)>,
    pending_dirs: Vec<PendingDir>,
    /// Lower-layer directories made writable for their owner, with their
    /// original mode and the entry that needed it.
    locked_dirs: HashMap<DirId, (OwnedFd, u32, PathBuf)>,
    /// The entry being applied, for errors found after the fact.
    current: PathBuf,
    stats: UnpackStats,
    buf: Vec<u8>,
    /// [`unpack_layer`]: whiteouts are kept as files, and the directories
    /// made only as parents are listed in `implicit`.
    layer_mode: bool,
    /// The directories made only as parents of entries, by where they
    /// are (symbolic links on the way resolved).
    implicit: std::collections::BTreeSet<Vec<u8>>,
    /// [`link_layer`]: linking a layer's directory, not applying a tar.
    linking: bool,
    /// [`unpack_layer`] without root: directories whose mode would keep
    /// their owner from reading or searching them (`0311`, `0000`), by path,
    /// with that mode; on disk they stay open to their owner, so that
    /// linking can read them.
    dir_modes: Vec<(Vec<u8>, u32)>,
}

fn io_error<E: Into<io::Error>>(path: &Path) -> impl FnOnce(E) -> UnpackError + '_ {
    move |source| UnpackError::Io { path: path.to_path_buf(), source: source.into() }
}

fn corrupt(entry: Option<&Path>) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Corrupt { entry: entry.map(Path::to_path_buf), source }
}

/// Cleans an entry name: empty and `.` components dropped, `..` applied, a
/// leading `/` ignored (absolute names are relative to the root). `None` when
/// `..` climbs above the root.
fn normalize(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut components = Vec::new();
    for component in raw.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                components.pop()?;
            }
            name => components.push(name),
        }
    }
    Some(components)
}

fn join(components: &[&[u8]]) -> Vec<u8> {
    components.join(&b'/')
}

fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

fn dir_id(fd: impl AsFd) -> rustix::io::Result<DirId> {
    let stat = rustix::fs::fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

impl<'o> Applier<'o> {
    fn new(root: OwnedFd, options: &'o UnpackOptions) -> Self {
        Applier {
            root,
            options,
            euid: rustix::process::geteuid().as_raw(),
            written: HashSet::new(),
            pending_dirs: Vec::new(),
            locked_dirs: HashMap::new(),
            current: PathBuf::new(),
            stats: UnpackStats::default(),
            buf: vec![0; COPY_BUFFER_LEN],
            layer_mode: false,
            linking: false,
            implicit: std::collections::BTreeSet::new(),
            dir_modes: Vec::new(),
        }
    }

    fn apply_entries<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<(), UnpackError> {
        for entry in archive.entries().map_err(corrupt(None))? {
            let mut entry = entry.map_err(|e| match ExtensionTooLarge::find(&e) {
                Some(limit) => UnpackError::ExtensionTooLarge(limit),
                None => corrupt(None)(e),
            })?;
            self.apply_entry(&mut entry)?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let shown = PathBuf::from(OsStr::from_bytes(&raw));
        self.current.clone_from(&shown);
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            tracing::debug!(entry = %quote_path(&shown), "ignoring a pax global header");
            return Ok(());
        }
        let components = normalize(&raw)
            .ok_or_else(|| UnpackError::Escape { entry: shown.clone(), reason: EscapeReason::NameAboveRoot })?;
        let Some((name, parent)) = components.split_last() else {
            tracing::debug!(entry = %quote_path(&shown), "ignoring an entry for the root itself");
            return Ok(());
        };
        if name.starts_with(WHITEOUT_PREFIX) {
            if self.layer_mode {
                // Kept as an empty file whatever its type (a device, a link):
                // linking reads it by its name only.
                return self.marker(&shown, parent, name);
            }
            return self.whiteout(&shown, parent, name);
        }

        use tar::EntryType as T;
        let kind = match kind {
            T::Directory => Kind::Directory,
            // Pre-POSIX tars mark directories with a trailing slash only.
            T::Regular | T::Continuous if raw.ends_with(b"/") => Kind::Directory,
            T::Regular | T::Continuous | T::GNUSparse => Kind::Regular,
            T::Symlink => Kind::Symlink,
            T::Link => Kind::Hardlink,
            T::Fifo => Kind::Special(FileType::Fifo),
            T::Char => Kind::Special(FileType::CharacterDevice),
            T::Block => Kind::Special(FileType::BlockDevice),
            other => return Err(UnpackError::Unsupported { entry: shown, kind: char::from(other.as_byte()) }),
        };
        let meta = Meta::from_header(entry.header()).map_err(corrupt(Some(&shown)))?;
        let link_target = entry.link_name_bytes().map(|target| target.into_owned()).unwrap_or_default();
        let xattrs = self.xattrs(entry, kind);
        match kind {
            Kind::Directory => self.directory(&shown, parent, name, meta, &xattrs),
            Kind::Regular => self.regular(entry, &shown, parent, name, meta, &xattrs),
            Kind::Symlink => self.symlink(&shown, parent, name, &link_target, meta),
            Kind::Hardlink => self.hardlink(&shown, parent, name, &link_target),
            Kind::Special(FileType::Fifo) => self.special(&shown, parent, name, FileType::Fifo, 0, meta),
            Kind::Special(file_type) => {
                let header = entry.header();
                let major = header.device_major().map_err(corrupt(Some(&shown)))?.unwrap_or(0);
                let minor = header.device_minor().map_err(corrupt(Some(&shown)))?.unwrap_or(0);
                if !self.options.create_devices {
                    tracing::warn!(entry = %quote_path(&shown), major, minor, "skipping a device node: creating devices is off");
                    self.stats.skipped_devices.push(format!("/{}", crate::quote::quote(&join(&components))));
                    return Ok(());
                }
                self.special(&shown, parent, name, file_type, rustix::fs::makedev(major, minor), meta)
            }
        }
    }

    /// [`link_layer`]'s walk: directories before what they hold, nothing
    /// followed (only real directories of the layer are entered).
    fn link_tree(
        &mut self,
        layer: &Path,
        implicit: &HashSet<&[u8]>,
        modes: &HashMap<&[u8], u32>,
    ) -> Result<(), UnpackError> {
        let mut pending: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(dir) = pending.pop() {
            let on_disk = layer.join(OsStr::from_bytes(&dir));
            if !dir.is_empty() && is_opaque(&on_disk) {
                // As its marker would: before anything the layer puts there.
                let shown = PathBuf::from(OsStr::from_bytes(&dir));
                let components: Vec<&[u8]> = dir.split(|b| *b == b'/').collect();
                self.whiteout(&shown, &components, OPAQUE_MARKER)?;
            }
            let entries = std::fs::read_dir(&on_disk)
                .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
                .map_err(|e| io_error(&on_disk)(e))?;
            // The tar's order is gone: whiteouts and opaque markers first, as
            // in a tar sorted by name (`.wh.` sorts before the names it
            // hides), then the rest by name.
            let mut entries: Vec<_> = entries.into_iter().map(|e| (is_whiteout(&e), e)).collect();
            entries.sort_by_key(|(whiteout, e)| {
                let name = e.file_name().as_bytes().to_vec();
                (!(*whiteout || name.starts_with(WHITEOUT_PREFIX)), name)
            });
            for (whiteout, entry) in entries {
                let name = entry.file_name().as_bytes().to_vec();
                let mut path = dir.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(&name);
                let shown = PathBuf::from(OsStr::from_bytes(&path));
                self.current.clone_from(&shown);
                let components: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
                let Some((_, parent)) = components.split_last() else { continue };
                if whiteout {
                    self.whiteout(&shown, parent, &[WHITEOUT_PREFIX, &name].concat())?;
                    continue;
                }
                if name.starts_with(AUFS_META_PREFIX) && name != OPAQUE_MARKER {
                    tracing::debug!(entry = %quote_path(&shown), "ignoring aufs metadata");
                    continue;
                }
                if name.starts_with(WHITEOUT_PREFIX) {
                    self.whiteout(&shown, parent, &name)?;
                    continue;
                }
                let source = entry.path();
                let kind = entry.file_type().map_err(|e| io_error(&source)(e))?;
                if kind.is_dir() {
                    if !implicit.contains(path.as_slice()) {
                        let stat = rustix::fs::lstat(&source).map_err(io_error(&source))?;
                        let meta = Meta {
                            mode: modes.get(path.as_slice()).copied().unwrap_or(stat.st_mode & 0o7777),
                            uid: stat.st_uid,
                            gid: stat.st_gid,
                            mtime: stat.st_mtime,
                        };
                        let xattrs = user_xattrs(&source);
                        self.directory(&shown, parent, &name, meta, &xattrs)?;
                    }
                    pending.push(path);
                } else {
                    self.linked(&shown, parent, &name, &source)?;
                }
            }
        }
        Ok(())
    }

    /// [`link_layer`]: two entries of the layer that land on one place
    /// (through a lower layer's symbolic link) are decided by the tar's
    /// order, which a layer's directory no longer has. Refused, so that the
    /// caller applies the tar itself.
    fn not_written(&self, dir: &Parent, name: &[u8], shown: &Path) -> Result<(), UnpackError> {
        if self.linking && self.written.contains(&(dir.id, name.to_vec())) {
            let source = io::Error::other("two entries of the layer land on one place: their order decides");
            return Err(UnpackError::Link { entry: shown.to_path_buf(), target: shown.to_path_buf(), source });
        }
        Ok(())
    }

    /// An entry of [`link_layer`]'s layer other than a directory: linked.
    fn linked(&mut self, shown: &Path, parent: &[&[u8]], name: &[u8], source: &Path) -> Result<(), UnpackError> {
        let dir = self.parent(parent).map_err(io_error(shown))?;
        self.not_written(&dir, name, shown)?;
        self.make_room(&dir, name, false).map_err(io_error(shown))?;
        // No AT_SYMLINK_FOLLOW: a symbolic link is linked itself.
        self.unlocking(&dir.fd, || rustix::fs::linkat(rustix::fs::CWD, source, &dir.fd, name, AtFlags::empty()))
            .map_err(io_error(shown))?;
        self.written.insert((dir.id, name.to_vec()));
        self.stats.entries += 1;
        Ok(())
    }

    /// [`unpack_layer`]: a whiteout or opaque marker, kept as an empty file.
    fn marker(&mut self, shown: &Path, parent: &[&[u8]], name: &[u8]) -> Result<(), UnpackError> {
        let dir = self.parent(parent).map_err(io_error(shown))?;
        self.make_room(&dir, name, false).map_err(io_error(shown))?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        self.unlocking(&dir.fd, || rustix::fs::openat(&dir.fd, name, flags, Mode::RUSR | Mode::WUSR))
            .map_err(io_error(shown))?;
        self.written.insert((dir.id, name.to_vec()));
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// Where `name` in the directory `dir` is, relative to the root, with
    /// every symbolic link on the way resolved (the directories' paths from
    /// `/proc`). An error (no `/proc`) fails the layer: unpacked alone, it
    /// could not say which directories it only implies, and the store then
    /// applies the image the old way.
    fn real_path_of(&self, dir: impl AsFd, name: &[u8]) -> rustix::io::Result<Vec<u8>> {
        let at = |fd: std::os::fd::BorrowedFd<'_>| {
            use std::os::fd::AsRawFd as _;
            rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new()).map(|p| p.into_bytes())
        };
        let root = at(self.root.as_fd())?;
        let dir = at(dir.as_fd())?;
        let mut path = match dir.strip_prefix(root.as_slice()) {
            Some(b"") => Vec::new(),
            Some(rest) => rest.strip_prefix(b"/").ok_or(Errno::NOENT)?.to_vec(),
            None => return Err(Errno::NOENT),
        };
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        Ok(path)
    }

    // ----- entry kinds -----

    fn directory(
        &mut self,
        shown: &Path,
        parent: &[&[u8]],
        name: &[u8],
        meta: Meta,
        xattrs: &[Xattr],
    ) -> Result<(), UnpackError> {
        let dir = self.parent(parent).map_err(io_error(shown))?;
        if self.linking
            && self.written.contains(&(dir.id, name.to_vec()))
            && !rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|s| is_dir(&s))
        {
            self.not_written(&dir, name, shown)?;
        }
        if self.make_room(&dir, name, true).map_err(io_error(shown))? == Room::Free {
            // Owner-only until the layer is done (see `PendingDir`).
            self.unlocking(&dir.fd, || rustix::fs::mkdirat(&dir.fd, name, Mode::RWXU)).map_err(io_error(shown))?;
        }
        self.written.insert((dir.id, name.to_vec()));
        if self.layer_mode && !self.implicit.is_empty() {
            let path = self.real_path_of(&dir.fd, name).map_err(io_error(shown))?;
            self.implicit.remove(&path);
        }
        if !xattrs.is_empty() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(&dir.fd, name, flags, Mode::empty()).map_err(io_error(shown))?;
            self.set_xattrs(&fd, xattrs).map_err(io_error(shown))?;
        }
        self.pending_dirs.push(PendingDir {
            shown: shown.to_path_buf(),
            parent: join(parent),
            name: name.to_vec(),
            meta,
        });
        self.stats.entries += 1;
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown: &Path,
        parent: &[&[u8]],
        name: &[u8],
        meta: Meta,
        xattrs: &[Xattr],
    ) -> Result<(), UnpackError> {
        let dir = self.parent(parent).map_err(io_error(shown))?;
        self.make_room(&dir, name, false).map_err(io_error(shown))?;
        // A fresh inode: an existing file may be a hard link shared with
        // another path, and O_EXCL never follows a symbolic link.
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = self
            .unlocking(&dir.fd, || rustix::fs::openat(&dir.fd, name, flags, Mode::RUSR | Mode::WUSR))
            .map_err(io_error(shown))?;
        self.written.insert((dir.id, name.to_vec()));
        let mut file = File::from(fd);

        let mut copied = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(Some(shown))(e)),
            };
            file.write_all(&self.buf[..n]).map_err(io_error(shown))?;
            copied += n as u64;
        }
        // The tar crate ends an entry's data quietly where the stream ends.
        if copied < entry.size() {
            let cut = io::Error::new(io::ErrorKind::UnexpectedEof, "entry data cut short");
            return Err(corrupt(Some(shown))(cut));
        }

        if self.options.preserve_ownership {
            // Before the mode: chown clears setuid and setgid.
            rustix::fs::fchown(&file, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
                .map_err(io_error(shown))?;
        }
        rustix::fs::fchmod(&file, self.permissions(meta.mode, false)).map_err(io_error(shown))?;
        self.set_xattrs(&file, xattrs).map_err(io_error(shown))?;
        rustix::fs::futimens(&file, &meta.timestamps()).map_err(io_error(shown))?;
        self.stats.entries += 1;
        self.stats.bytes += copied;
        Ok(())
    }

    fn symlink(
        &mut self,
        shown: &Path,
        parent: &[&[u8]],
        name: &[u8],
        target: &[u8],
        meta: Meta,
    ) -> Result<(), UnpackError> {
        let dir = self.parent(parent).map_err(io_error(shown))?;
        self.make_room(&dir, name, false).map_err(io_error(shown))?;
        // The target is stored as given: it is only ever resolved inside the
        // root (or by the container, inside its own root).
        self.unlocking(&dir.fd, || rustix::fs::symlinkat(target, &dir.fd, name)).map_err(io_error(shown))?;
        self.written.insert((dir.id, name.to_vec()));
        self.set_metadata_at(&dir.fd, name, meta, Chmod::No).map_err(io_error(shown))?;
        self.stats.entries += 1;
        Ok(())
    }

    fn hardlink(&mut self, shown: &Path, parent: &[&[u8]], name: &[u8], target: &[u8]) -> Result<(), UnpackError> {
        let target_shown = PathBuf::from(OsStr::from_bytes(target));
        let link_error =
            |source: io::Error| UnpackError::Link { entry: shown.to_path_buf(), target: target_shown.clone(), source };
        let target_components = normalize(target).ok_or_else(|| UnpackError::Escape {
            entry: shown.to_path_buf(),
            reason: EscapeReason::LinkTargetAboveRoot,
        })?;
        // Linking to the root would be linking to a directory.
        let (target_name, target_parent) =
            target_components.split_last().ok_or_else(|| link_error(Errno::PERM.into()))?;
        let target_dir = self.open_in_root(&join(target_parent), OFlags::PATH).map_err(|e| link_error(e.into()))?;
        let target_stat = rustix::fs::statat(&target_dir, *target_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| link_error(e.into()))?;
        if is_dir(&target_stat) {
            return Err(link_error(Errno::PERM.into()));
        }

        let dir = self.parent(parent).map_err(io_error(shown))?;
        let already_linked = matches!(
            rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW),
            Ok(stat) if (stat.st_dev, stat.st_ino) == (target_stat.st_dev, target_stat.st_ino)
        );
        if !already_linked {
            self.make_room(&dir, name, false).map_err(io_error(shown))?;
            // No AT_SYMLINK_FOLLOW: a link to a symbolic link is a link to
            // the symbolic link itself, wherever it points.
            self.unlocking(&dir.fd, || rustix::fs::linkat(&target_dir, *target_name, &dir.fd, name, AtFlags::empty()))
                .map_err(|e| link_error(e.into()))?;
        }
        self.written.insert((dir.id, name.to_vec()));
        self.stats.entries += 1;
        Ok(())
    }

    fn special(
        &mut self,
        shown: &Path,
        parent: &[&[u8]],
        name: &[u8],
        file_type: FileType,
        device: rustix::fs::Dev,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        let dir = self.parent(parent).map_err(io_error(shown))?;
        self.make_room(&dir, name, false).map_err(io_error(shown))?;
        self.unlocking(&dir.fd, || rustix::fs::mknodat(&dir.fd, name, file_type, Mode::RUSR | Mode::WUSR, device))
            .map_err(io_error(shown))?;
        self.written.insert((dir.id, name.to_vec()));
        self.set_metadata_at(&dir.fd, name, meta, Chmod::File).map_err(io_error(shown))?;
        self.stats.entries += 1;
        Ok(())
    }

    fn whiteout(&mut self, shown: &Path, parent: &[&[u8]], name: &[u8]) -> Result<(), UnpackError> {
        if name == OPAQUE_MARKER {
            match self.open_in_root(&join(parent), OFlags::RDONLY) {
                Ok(dir) => {
                    let id = dir_id(&dir).map_err(io_error(shown))?;
                    self.clear(&dir, id, Keep::Written).map_err(io_error(shown))?;
                }
                Err(Errno::NOENT | Errno::NOTDIR) => {
                    tracing::debug!(entry = %quote_path(shown), "opaque marker for a missing directory");
                }
                Err(e) => return Err(io_error(shown)(e)),
            }
        } else if name.starts_with(AUFS_META_PREFIX) {
            tracing::debug!(entry = %quote_path(shown), "ignoring aufs metadata");
            return Ok(());
        } else {
            let victim = &name[WHITEOUT_PREFIX.len()..];
            if matches!(victim, b"" | b"." | b"..") {
                return Err(UnpackError::Escape { entry: shown.to_path_buf(), reason: EscapeReason::WhiteoutName });
            }
            match self.open_in_root(&join(parent), OFlags::PATH) {
                Ok(dir) => {
                    let id = dir_id(&dir).map_err(io_error(shown))?;
                    self.prune(&dir, id, victim, Keep::Written).map_err(io_error(shown))?;
                }
                // Nothing there to hide.
                Err(Errno::NOENT | Errno::NOTDIR) => {}
                Err(e) => return Err(io_error(shown)(e)),
            }
        }
        self.stats.whiteouts += 1;
        Ok(())
    }

    // ----- extended attributes -----

    /// The extended attributes of an entry (its `SCHILY.xattr.*` PAX
    /// records) that ces sets: `user.*` on files and directories. The
    /// others are counted as dropped. Malformed records are ignored, as
    /// they were before ces read any.
    fn xattrs<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, kind: Kind) -> Vec<Xattr> {
        let mut kept = Vec::new();
        let Ok(Some(records)) = entry.pax_extensions() else { return kept };
        for record in records {
            let Ok(record) = record else { break };
            let Some(name) = record.key_bytes().strip_prefix(PAX_XATTR) else { continue };
            if name.starts_with(KEPT_XATTR_NAMESPACE)
                && !name.starts_with(OVERLAY_XATTR_PREFIX)
                && matches!(kind, Kind::Regular | Kind::Directory)
            {
                kept.push((name.to_vec(), record.value_bytes().to_vec()));
            } else {
                self.dropped_xattr(name);
            }
        }
        kept
    }

    fn dropped_xattr(&mut self, name: &[u8]) {
        let dropped = &mut self.stats.dropped_xattrs;
        let key = crate::quote::quote(name).limit(64).to_string();
        let key = if dropped.contains_key(&key) || dropped.len() < MAX_DROPPED_XATTR_NAMES {
            key
        } else {
            "(others)".to_owned()
        };
        *dropped.entry(key).or_default() += 1;
    }

    /// Sets `xattrs` on the open file or directory `fd`. One the file system
    /// refuses (no user xattrs there, a value too large) is counted as
    /// dropped; running out of space is an error.
    fn set_xattrs(&mut self, fd: impl AsFd, xattrs: &[Xattr]) -> rustix::io::Result<()> {
        for (name, value) in xattrs {
            let Ok(c_name) = std::ffi::CString::new(name.as_slice()) else {
                self.dropped_xattr(name);
                continue;
            };
            match rustix::fs::fsetxattr(&fd, c_name.as_c_str(), value, rustix::fs::XattrFlags::empty()) {
                Ok(()) => self.stats.xattrs += 1,
                Err(e @ (Errno::NOSPC | Errno::DQUOT | Errno::IO)) => return Err(e),
                Err(_) => self.dropped_xattr(name),
            }
        }
        Ok(())
    }

    // ----- paths inside the root -----

    /// Opens a directory by its path inside the root, resolving every symbolic
    /// link on the way inside the root.
    fn open_in_root(&self, path: &[u8], flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let path: &[u8] = if path.is_empty() { b"." } else { path };
        let flags = flags | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        // openat2 asks to be retried when a rename elsewhere raced a `..`.
        let mut attempts = 0;
        loop {
            match rustix::fs::openat2(&self.root, path, flags, Mode::empty(), resolve) {
                Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
                result => return result,
            }
        }
    }

    /// Opens the parent directory of an entry, creating what is missing.
    fn parent(&mut self, components: &[&[u8]]) -> rustix::io::Result<Parent> {
        let fd = match self.open_in_root(&join(components), OFlags::PATH) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => self.create_dirs(components)?,
            Err(e) => return Err(e),
        };
        let id = dir_id(&fd)?;
        Ok(Parent { fd, id })
    }

    /// `mkdir -p` inside the root. A dangling symbolic link on the way has its
    /// target created, resolved inside the root as the kernel would.
    fn create_dirs(&mut self, components: &[&[u8]]) -> rustix::io::Result<OwnedFd> {
        let mut components: Vec<Vec<u8>> = components.iter().map(|c| c.to_vec()).collect();
        let mut expansions = 0;
        'restart: loop {
            let mut current = self.open_in_root(b"", OFlags::PATH)?;
            let mut prefix = Vec::new();
            for i in 0..components.len() {
                if !prefix.is_empty() {
                    prefix.push(b'/');
                }
                prefix.extend_from_slice(&components[i]);
                match self.open_in_root(&prefix, OFlags::PATH) {
                    Ok(fd) => {
                        current = fd;
                        continue;
                    }
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                }
                let name = components[i].as_slice();
                match self.unlocking(&current, || rustix::fs::mkdirat(&current, name, Mode::from_raw_mode(0o755))) {
                    Ok(()) => {
                        // Exactly 0755, whatever the umask: the rootfs must not
                        // depend on who unpacked it.
                        rustix::fs::chmodat(&current, name, Mode::from_raw_mode(0o755), AtFlags::empty())?;
                        self.written.insert((dir_id(&current)?, name.to_vec()));
                        if self.layer_mode {
                            let path = self.real_path_of(&current, name)?;
                            self.implicit.insert(path);
                        }
                        current = self.open_in_root(&prefix, OFlags::PATH)?;
                    }
                    Err(Errno::EXIST) => {
                        // It exists but does not resolve: a dangling symbolic
                        // link (readlinkat fails on anything else).
                        let target = rustix::fs::readlinkat(&current, name, Vec::new())?.into_bytes();
                        expansions += 1;
                        if expansions > MAX_SYMLINK_EXPANSIONS {
                            return Err(Errno::LOOP);
                        }
                        let mut next: Vec<Vec<u8>> =
                            if target.starts_with(b"/") { Vec::new() } else { components[..i].to_vec() };
                        next.extend(
                            target.split(|b| *b == b'/').filter(|c| !matches!(*c, b"" | b".")).map(<[u8]>::to_vec),
                        );
                        next.extend_from_slice(&components[i + 1..]);
                        components = next;
                        continue 'restart;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(current);
        }
    }

    /// Clears the way for a new entry `name` in `dir`: an existing directory
    /// stays when a directory is coming (its metadata is updated), anything
    /// else goes, a directory with all it holds. A symbolic link is removed
    /// itself, never followed.
    fn make_room(&mut self, dir: &Parent, name: &[u8], directory: bool) -> rustix::io::Result<Room> {
        match rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(Room::Free),
            Err(e) => Err(e),
            Ok(stat) if is_dir(&stat) => {
                if directory {
                    return Ok(Room::Directory);
                }
                self.prune(&dir.fd, dir.id, name, Keep::Nothing)?;
                Ok(Room::Free)
            }
            Ok(_) => {
                self.unlocking(&dir.fd, || rustix::fs::unlinkat(&dir.fd, name, AtFlags::empty()))?;
                Ok(Room::Free)
            }
        }
    }

    /// Removes `name` from `dir` (`dir_id` is `dir`'s identity), recursively.
    /// With [`Keep::Written`], entries this layer wrote stay, and so do the
    /// directories holding them. Returns whether anything stayed.
    fn prune(&mut self, dir: &OwnedFd, dir_id: DirId, name: &[u8], keep: Keep) -> rustix::io::Result<bool> {
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e),
        };
        let written = keep == Keep::Written && self.written.contains(&(dir_id, name.to_vec()));
        if is_dir(&stat) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let child = rustix::fs::openat(dir, name, flags, Mode::empty())?;
            let kept = self.clear(&child, (stat.st_dev, stat.st_ino), keep)?;
            if written || kept {
                return Ok(true);
            }
            self.unlocking(dir, || rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR))?;
        } else {
            if written {
                return Ok(true);
            }
            self.unlocking(dir, || rustix::fs::unlinkat(dir, name, AtFlags::empty()))?;
        }
        Ok(false)
    }

    /// Removes everything in the directory `dir` (readable, not `O_PATH`), as
    /// [`Applier::prune`] would. Returns whether anything stayed.
    fn clear(&mut self, dir: &OwnedFd, dir_id: DirId, keep: Keep) -> rustix::io::Result<bool> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        let mut kept = false;
        for name in names {
            kept |= self.prune(dir, dir_id, &name, keep)?;
        }
        Ok(kept)
    }

    // ----- permissions and metadata -----

    /// The mode to give an entry. Setuid and setgid bits of files are
    /// always dropped: the cached root filesystem sits on the host, where a
    /// setuid-root file would be root for whoever reaches it, while inside
    /// a container (`no_new_privileges`) the bits grant nothing anyway. A
    /// directory keeps its setgid bit as root (it only chooses the group
    /// of new files).
    fn permissions(&self, mode: u32, directory: bool) -> Mode {
        let mask = if directory && self.options.preserve_ownership { 0o3777 } else { 0o1777 };
        Mode::from_raw_mode(mode & mask)
    }

    /// Sets owner, mode (unless `chmod` is [`Chmod::No`]: symbolic links have
    /// none) and modification time of `name` in `dir`, never following a
    /// symbolic link at `name`.
    fn set_metadata_at(&self, dir: &OwnedFd, name: &[u8], meta: Meta, chmod: Chmod) -> rustix::io::Result<()> {
        if self.options.preserve_ownership {
            let (uid, gid) = (Uid::from_raw(meta.uid), Gid::from_raw(meta.gid));
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        if chmod != Chmod::No {
            // fchmodat cannot refuse to follow a symbolic link (before Linux
            // 6.6), but `name` is a node this applier just created or checked
            // and nothing else writes into the root while it runs.
            rustix::fs::chmodat(dir, name, self.permissions(meta.mode, chmod == Chmod::Directory), AtFlags::empty())?;
        }
        rustix::fs::utimensat(dir, name, &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
    }

    /// Runs `op`, a change to the directory `dir`; if that is refused for
    /// want of permission and the unpacking user owns `dir`, makes `dir`
    /// writable for its owner until the end of the layer and tries again.
    fn unlocking<T>(&mut self, dir: &OwnedFd, mut op: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
        match op() {
            Err(Errno::ACCESS) if self.unlock(dir)? => op(),
            result => result,
        }
    }

    fn unlock(&mut self, dir: &OwnedFd) -> rustix::io::Result<bool> {
        let stat = rustix::fs::fstat(dir)?;
        let id = (stat.st_dev, stat.st_ino);
        if stat.st_uid != self.euid || stat.st_mode & 0o300 == 0o300 || self.locked_dirs.contains_key(&id) {
            return Ok(false);
        }
        // `dir` may be an O_PATH descriptor, which fchmod refuses.
        let readable =
            rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let mode = stat.st_mode & 0o7777;
        rustix::fs::fchmod(&readable, Mode::from_raw_mode(mode | 0o300))?;
        self.locked_dirs.insert(id, (readable, mode, self.current.clone()));
        Ok(true)
    }

    /// [`unpack_layer`]: turns the layer's `.wh.` files into overlayfs'
    /// whiteouts and opaque directories, where it can. Returns whether every
    /// one was, and whether opaque directories carry [`TRUSTED_OPAQUE`] too.
    /// Paths are the layer's own real directories (only those are entered),
    /// so nothing is followed.
    fn overlay_format(&mut self, layer: &Path) -> Result<(bool, bool), UnpackError> {
        let root = self.euid == 0;
        let (mut complete, mut trusted) = (true, true);
        // What the file system refuses leaves the layer in the `.wh.` format
        // (assembled, not mounted); a disk or quota out of room is an error,
        // as for any other write of the layer.
        let refused = |path: &Path, result: rustix::io::Result<()>| match result {
            Err(e @ (Errno::NOSPC | Errno::DQUOT)) => Err(io_error(path)(e)),
            other => Ok(other.is_ok()),
        };
        let opaque = |dir: &Path, trusted: &mut bool| -> Result<bool, UnpackError> {
            let set = |name: &str| rustix::fs::lsetxattr(dir, name, b"y", rustix::fs::XattrFlags::empty());
            if !refused(dir, set(USER_OPAQUE))? {
                return Ok(false);
            }
            if !root || !refused(dir, set(TRUSTED_OPAQUE))? {
                *trusted = false;
            }
            Ok(true)
        };
        let mut pending: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(dir) = pending.pop() {
            let on_disk = layer.join(OsStr::from_bytes(&dir));
            let mut markers = Vec::new();
            for entry in std::fs::read_dir(&on_disk).map_err(io_error(&on_disk))? {
                let entry = entry.map_err(io_error(&on_disk))?;
                let kind = entry.file_type().map_err(io_error(&entry.path()))?;
                let name = entry.file_name().as_bytes().to_vec();
                if kind.is_dir() {
                    pending.push(if dir.is_empty() { name } else { [dir.as_slice(), b"/", &name].concat() });
                } else if kind.is_file() && name.starts_with(WHITEOUT_PREFIX) {
                    markers.push(name);
                }
            }
            for marker in markers {
                let marker_path = on_disk.join(OsStr::from_bytes(&marker));
                let victim = &marker[WHITEOUT_PREFIX.len()..];
                let converted = if marker == OPAQUE_MARKER {
                    // An opaque root hides nothing in an overlay.
                    !dir.is_empty() && opaque(&on_disk, &mut trusted)?
                } else if marker.starts_with(AUFS_META_PREFIX) {
                    true
                } else if matches!(victim, b"" | b"." | b"..") {
                    false
                } else {
                    let target = on_disk.join(OsStr::from_bytes(victim));
                    let path = if dir.is_empty() { victim.to_vec() } else { [dir.as_slice(), b"/", victim].concat() };
                    match rustix::fs::lstat(&target) {
                        // Whited out, then made anew: nothing below shows.
                        Ok(stat) if is_dir(&stat) => !self.implicit.contains(&path) && opaque(&target, &mut trusted)?,
                        // Whited out, then replaced: it hides what was below.
                        Ok(_) => true,
                        Err(Errno::NOENT) => refused(
                            &target,
                            rustix::fs::mknodat(
                                rustix::fs::CWD,
                                &target,
                                FileType::CharacterDevice,
                                Mode::empty(),
                                rustix::fs::makedev(0, 0),
                            ),
                        )?,
                        Err(e) => return Err(io_error(&target)(e)),
                    }
                };
                if converted {
                    rustix::fs::unlink(&marker_path).map_err(io_error(&marker_path))?;
                } else {
                    complete = false;
                }
            }
        }
        Ok((complete, trusted))
    }

    /// Gives the directories [`Applier::unlock`] changed their modes back.
    fn restore_locked_dirs(&mut self) -> Result<(), UnpackError> {
        let mut first_error = None;
        for (_, (fd, mode, entry)) in self.locked_dirs.drain() {
            if let Err(e) = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)) {
                first_error.get_or_insert(UnpackError::Io { path: entry, source: e.into() });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sets the metadata of this layer's directories, deepest and latest
    /// first, so that a read-only directory is still reachable and a
    /// directory listed twice ends as its last entry says.
    fn finish_directories(&mut self) -> Result<(), UnpackError> {
        let pending = std::mem::take(&mut self.pending_dirs);
        let mut done = HashSet::new();
        for dir in pending.iter().rev() {
            if !done.insert((dir.parent.as_slice(), dir.name.as_slice())) {
                continue;
            }
            let parent = match self.open_in_root(&dir.parent, OFlags::PATH) {
                Ok(fd) => fd,
                // Replaced or removed later in the layer.
                Err(Errno::NOENT | Errno::NOTDIR) => continue,
                Err(e) => return Err(io_error(&dir.shown)(e)),
            };
            match rustix::fs::statat(&parent, dir.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if is_dir(&stat) => {}
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(io_error(&dir.shown)(e)),
            }
            let mut meta = dir.meta;
            // Unpacked without root, a directory that would keep its owner
            // from reading or searching it (`0311`, `0000`) stays open to
            // them, its mode kept off disk for `link_layer`. One closed only
            // to writing (Fedora's `0555` `/usr/bin`) gets its mode: a layer
            // is read, never written, once named, and stays an overlay's.
            if self.layer_mode && self.euid != 0 && meta.mode & 0o500 != 0o500 {
                let path = self.real_path_of(&parent, &dir.name).map_err(io_error(&dir.shown))?;
                self.dir_modes.push((path, meta.mode));
                meta.mode |= 0o700;
            }
            self.set_metadata_at(&parent, &dir.name, meta, Chmod::Directory).map_err(io_error(&dir.shown))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` as one zstd frame of unknown size (streamed) with a window
    /// of 2^`log` bytes.
    fn zstd_with_window(bytes: &[u8], log: u32) -> Vec<u8> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(log).unwrap();
        encoder.long_distance_matching(log > 23).unwrap();
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_zstd_layer_that_needs_more_than_an_8_mib_window_is_refused() {
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut out = Vec::new();
        decompress(&zstd_with_window(&data, ZSTD_WINDOW_LOG_MAX)[..]).unwrap().read_to_end(&mut out).unwrap();
        assert!(out == data, "an 8 MiB window is read");
        let e = decompress(&zstd_with_window(&data, 27)[..]).unwrap().read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().to_lowercase().contains("memory") || e.to_string().contains("window"), "{e}");
    }

    fn names(raw: &str) -> Option<Vec<&str>> {
        normalize(raw.as_bytes()).map(|c| c.into_iter().map(|c| std::str::from_utf8(c).unwrap_or("?")).collect())
    }

    #[test]
    fn normalize_cleans_names_and_refuses_climbing_above_the_root() {
        assert_eq!(names("a/b/c"), Some(vec!["a", "b", "c"]));
        assert_eq!(names("./a//b/./c/"), Some(vec!["a", "b", "c"]));
        assert_eq!(names("/etc/passwd"), Some(vec!["etc", "passwd"]));
        assert_eq!(names("a/../b"), Some(vec!["b"]));
        assert_eq!(names("./"), Some(vec![]));
        assert_eq!(names("../escape"), None);
        assert_eq!(names("a/../../escape"), None);
        assert_eq!(names("/../escape"), None);
    }

    #[test]
    fn owner_ids_out_of_range_are_refused() {
        assert_eq!(owner_id(1234).ok(), Some(1234));
        assert!(owner_id(u64::from(u32::MAX)).is_err());
        assert!(owner_id(1 << 40).is_err());
    }

    #[test]
    fn escape_errors_name_the_entry_without_repeating_a_cause() {
        let err = UnpackError::Escape { entry: "../x".into(), reason: EscapeReason::NameAboveRoot };
        assert_eq!(
            err.to_string(),
            "layer entry ../x would escape the root filesystem: its name climbs above the root with `..`"
        );
        let err = UnpackError::Corrupt { entry: Some("a".into()), source: io::ErrorKind::UnexpectedEof.into() };
        assert_eq!(err.to_string(), "the layer is not a complete, valid tar stream (in entry a)");
    }
}
