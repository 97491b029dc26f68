//! The content-addressed image store: an OCI image layout on disk, plus a cache
//! of unpacked root filesystems keyed by manifest digest.
//!
//! ```text
//! <root>/oci/            OCI image layout (oci-layout, index.json, blobs/sha256/<hex>)
//! <root>/rootfs/<hex>/   the unpacked rootfs of manifest sha256:<hex>, assembled
//! <root>/layered/<hex>    or, instead, the diff_ids of its layers (a JSON list),
//!                        each in layers/, to be mounted as an overlay's lowers
//! <root>/layers/<hex>/   a layer unpacked alone (keyed by diff_id), its record
//!                        in layers/<hex>.json
//! <root>/tmp/            downloads and unpacks in progress
//! <root>/lock            shared by writers (pull, load), exclusive for rmi/gc
//! <root>/locks/          index.json, per-rootfs and per-layer locks (a layer's
//!                        naming lock, `.lock`, and its unpacking turn, `.unpacking`)
//! ```
//!
//! Consistency rests on three habits: every blob is written to `tmp/`, verified
//! (size and sha256) and only then renamed to its content address; `index.json`
//! is rewritten whole and renamed, under a lock; a rootfs is unpacked in `tmp/`
//! and renamed into the cache. A process killed at any moment leaves only files
//! in `tmp/`, which the next writer that finds the store idle removes. Blobs
//! already in place were verified before they got there, so they are reused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageConfiguration, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType,
};
use rustix::fs::FlockOperation;

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::manifest::{self, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest};
use crate::provenance::Provenance;
use crate::read_ahead::ReadAhead;
use crate::reference::ImageReference;
use crate::rootfs::{Layers, Rootfs};
use crate::unpack::{self, UnpackError, UnpackOptions};

/// The annotation that names an image in `index.json` (read by skopeo and umoci).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// When ces stored the image (RFC 3339).
pub const PULLED_AT: &str = "io.ces.pulled-at";
/// The digest of the index a tag resolved to, when it was an index.
pub const INDEX_DIGEST: &str = "io.ces.index-digest";
/// The uid of the user who named the image with `ces load` (absent for a
/// pull): see [`Store::acting_for`].
pub const LOADED_BY: &str = "io.ces.loaded-by";
/// The most names one user's loads may hold in a store: `index.json`, which
/// every command reads, stays bounded however many archives a user loads
/// (each under names of their choosing).
pub const MAX_LOADED_NAMES: usize = 1024;

/// Something went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image's layers hold more than [`Store::with_max_unpacked`] allows.
    #[error("the image is larger unpacked than the limit of {limit} bytes ([storage] max_image_size)")]
    UnpackedTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// A load would give its user more names than [`MAX_LOADED_NAMES`].
    #[error("your loads would name {count} images in the store, more than the {limit} one user's loads may")]
    TooManyLoaded {
        /// The names the user's loads would hold.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The disk holding the store is full.
    #[error("no space left on the device holding {}", path.display())]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// The user's (or group's) disk quota on the file system holding the
    /// store is used up, whatever room the disk has.
    #[error("disk quota exceeded on the file system holding {}", path.display())]
    QuotaExceeded {
        /// The file being written.
        path: PathBuf,
    },
    /// Content does not hash to the digest it was announced with.
    #[error("content of {expected} does not match its digest (got {actual})")]
    DigestMismatch {
        /// The digest announced.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// Content is not the size its descriptor says.
    #[error("{digest} is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size in the descriptor.
        expected: u64,
        /// The size that arrived (or more than expected, when cut off early).
        actual: u64,
    },
    /// More bytes arrived than the descriptor said (the download is cut off there).
    #[error("{digest} is larger than its descriptor's {expected} bytes")]
    TooLong {
        /// The blob.
        digest: Digest,
        /// The size in the descriptor.
        expected: u64,
    },
    /// A manifest or config is larger than ces accepts.
    #[error("{digest} is larger than the {limit}-byte limit for manifests and configs")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// The limit.
        limit: u64,
    },
    /// A blob that the store's index needs is missing.
    #[error("blob {digest} is missing from the store")]
    MissingBlob {
        /// The blob.
        digest: Digest,
    },
    /// An image needs a layer blob to unpack (it cannot be unpacked from
    /// its layers alone) that the store dropped (`keep_layer_blobs = false`).
    #[error(
        "the image can only be unpacked from its layer blobs, and the store dropped blob {digest} once its layer was unpacked ([storage] keep_layer_blobs = false)"
    )]
    LayerBlobDropped {
        /// The blob.
        digest: Digest,
    },
    /// No stored image matches.
    #[error("no image {query} in the store")]
    ImageNotFound {
        /// What was asked for.
        query: String,
    },
    /// A short digest matches several images.
    #[error("{query} matches several images: {}", matches.join(", "))]
    Ambiguous {
        /// What was asked for.
        query: String,
        /// What it matches.
        matches: Vec<String>,
    },
    /// A JSON document of the store cannot be read.
    #[error("{} is not valid", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A stored manifest cannot be used.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// A stored manifest is an index, where an image manifest was needed.
    #[error("{digest} is an index, not an image manifest")]
    NotAnImage {
        /// The manifest.
        digest: Digest,
    },
    /// A stored layer blob could not be read or decompressed.
    #[error("cannot read layer {layer}")]
    LayerRead {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A layer could not be unpacked.
    #[error("cannot unpack layer {layer}")]
    Unpack {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        #[source]
        source: UnpackError,
    },
    /// The uncompressed layer does not match the config's `diff_ids`.
    #[error("layer {layer} uncompresses to {actual}, but the image config says {}", crate::quote::quote(expected))]
    DiffIdMismatch {
        /// The layer blob.
        layer: Digest,
        /// The diff_id in the config.
        expected: String,
        /// The digest of the uncompressed tar.
        actual: Digest,
    },
    /// A descriptor names a digest that is not sha256.
    #[error(transparent)]
    BadDigest(#[from] crate::digest::DigestError),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Maps an I/O error to a [`StoreError`] about `path` (`ENOSPC` becomes
/// [`StoreError::DiskFull`], `EDQUOT` [`StoreError::QuotaExceeded`]).
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| space_error(source.raw_os_error(), path).unwrap_or(StoreError::Io { path: path.to_owned(), source })
}

/// The error for a write to `path` that failed with `errno`, if it is one
/// of running out of space (the disk's or the quota's).
fn space_error(errno: Option<i32>, path: &Path) -> Option<StoreError> {
    use rustix::io::Errno;
    match errno? {
        code if code == Errno::NOSPC.raw_os_error() => Some(StoreError::DiskFull { path: path.to_owned() }),
        code if code == Errno::DQUOT.raw_os_error() => Some(StoreError::QuotaExceeded { path: path.to_owned() }),
        _ => None,
    }
}

/// An image the store holds under a name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageRecord {
    /// The name it is stored under (`ref.name`): the reference as pulled.
    pub reference: ImageReference,
    /// The image manifest digest.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
    /// When it was stored.
    pub pulled_at: Option<jiff::Timestamp>,
    /// The index the reference resolved to, when it was one.
    pub index_digest: Option<Digest>,
    /// Where the image came from (its OCI labels and base annotations),
    /// kept as annotations of its `index.json` entry.
    pub provenance: Provenance,
    /// The uid of the user who loaded it under this name (`ces load`);
    /// `None` for an image pulled from the registry its name says.
    pub loaded_by: Option<u32>,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcStats {
    /// Blobs deleted.
    pub blobs: u64,
    /// What all it deleted took on disk (the leftovers of interrupted
    /// writes that taking the store alone removed included), as du counts
    /// blocks, but a file with several links only when its last link goes.
    /// ([`Store::disk_use`] counts such a file once wherever it is: the two
    /// differ only where a file is linked from outside the store.)
    pub freed: u64,
    /// Files and directories deleted that could not be counted (where not
    /// 0, `freed` is a lower bound).
    pub unreadable: u64,
    /// Unpacked root filesystems deleted.
    pub rootfs: u64,
    /// Unpacked layers deleted (no image has them).
    pub layers: u64,
}

/// What a named image keeps in the store ([`Store::kept_by`]): blobs and
/// unpacked layers, by hex.
struct Kept {
    blobs: Vec<String>,
    layers: Vec<String>,
}

/// One thing of the store's data, by kind and hex: a blob, an unpacked
/// layer (its directory and record), or an image's root filesystem (its
/// tree, `layered/` list and `merged/` mark).
type Part = (PartKind, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PartKind {
    Blob,
    Layer,
    Image,
}

/// What the store's data takes on disk ([`Store::disk_use`]), in bytes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DiskUse {
    /// Each name in the store.
    pub images: Vec<ImageDiskUse>,
    /// The blobs, unpacked layers (with their records and short names) and
    /// root filesystems of the store.
    pub total: u64,
    /// What no named image keeps: what `ces gc` deletes.
    pub reclaimable: u64,
    /// Files and directories that could not be read: where not 0, the
    /// figures are lower bounds.
    pub unreadable: u64,
}

/// One name's share of [`DiskUse`], in bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageDiskUse {
    /// The name, as `ces images` shows it.
    pub reference: String,
    /// The image manifest's digest.
    pub digest: String,
    /// How many names the store has for this image (this one included).
    pub names: usize,
    /// Its manifest, config, layer blobs (where kept), unpacked layers and
    /// root filesystem.
    pub disk: u64,
    /// What no other named image keeps: what `ces rmi` of this name frees,
    /// besides what no image keeps ([`DiskUse::reclaimable`], which its
    /// `ces gc` frees too); nothing while another name has the image.
    pub unique: u64,
}

/// A file with several links, met in a tree whose removal is counted.
struct Linked {
    /// Its links met in the tree.
    met: u64,
    /// Its links in all.
    links: u64,
}

/// A walk that counts blocks as `du` does ([`Walk::bytes_at`]).
#[derive(Default)]
struct Walk {
    /// The file system walked: directories on another (a mount) are not
    /// entered.
    dev: u64,
    /// Files with more than one link, counted already.
    seen: HashSet<(u64, u64)>,
    /// While counting what removing a tree frees ([`Walk::freed_at`]): its
    /// files with more than one link, by device and inode.
    linked: Option<HashMap<(u64, u64), Linked>>,
    /// Entries that could not be read (counted as nothing).
    unreadable: u64,
}

impl Walk {
    /// The blocks of `name` in `dir` and, for a directory, of everything
    /// under it (nothing followed; each file with several links once).
    /// Each directory is read by its fd, its names whole before going
    /// down: no path length limits the walk, one fd per level is open
    /// (a tree deeper than the open-file limit is counted in part, the
    /// rest as unreadable), and the levels are kept on the heap.
    fn bytes_at(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> u64 {
        let mut bytes = 0;
        // The directories being read, each with the names left in it.
        let mut stack: Vec<(OwnedFd, std::vec::IntoIter<CString>)> = Vec::new();
        stack.extend(self.visit(dir, name, &mut bytes));
        while let Some((fd, names)) = stack.last_mut() {
            let Some(child) = names.next() else {
                stack.pop();
                continue;
            };
            let below = self.visit(fd.as_fd(), &child, &mut bytes);
            stack.extend(below);
        }
        bytes
    }

    /// What removing `name` in `dir` (a whole tree) would free, as du counts
    /// blocks: a file with several links only if they are all in the tree.
    /// (A file whose other links went with trees removed before is down to
    /// one link by then, and counts.)
    fn freed_at(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> u64 {
        self.linked = Some(HashMap::new());
        let bytes = self.bytes_at(dir, name);
        self.linked = None;
        bytes
    }

    /// [`Walk::freed_at`] for a path (its parent resolved as usual: the
    /// store's own directories).
    fn freed(&mut self, path: &Path) -> u64 {
        use rustix::fs::{Mode, OFlags};
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return 0 };
        let Ok(name) = CString::new(name.as_bytes()) else { return 0 };
        match rustix::fs::open(parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => self.freed_at(fd.as_fd(), &name),
            Err(e) => self.failed(e).unwrap_or(0),
        }
    }

    /// Counts `name` in `dir` into `bytes`; a directory to go into comes
    /// back open, with its names. Something gone meanwhile counts as
    /// nothing; something that cannot be read, as unreadable.
    fn visit(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        bytes: &mut u64,
    ) -> Option<(OwnedFd, std::vec::IntoIter<CString>)> {
        use rustix::fs::{AtFlags, FileType};
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(e) => return self.failed(e),
        };
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        let blocks = u64::try_from(stat.st_blocks).unwrap_or(0) * 512;
        if !is_dir && stat.st_nlink > 1 {
            if let Some(linked) = &mut self.linked {
                // Counted when its last link is met.
                let key = (stat.st_dev, stat.st_ino);
                #[allow(clippy::unnecessary_cast)] // (`nlink_t` is narrower on some targets)
                let links = stat.st_nlink as u64;
                let file = linked.entry(key).or_insert(Linked { met: 0, links });
                file.met += 1;
                if file.met >= file.links {
                    linked.remove(&key);
                    *bytes += blocks;
                }
                return None;
            }
            if !self.seen.insert((stat.st_dev, stat.st_ino)) {
                return None;
            }
        }
        *bytes += blocks;
        if !is_dir || stat.st_dev != self.dev {
            return None;
        }
        match names_at(dir, name) {
            // The directory read is the one counted, not one put in its
            // place meanwhile.
            Ok((fd, names)) => match rustix::fs::fstat(&fd) {
                Ok(opened) if (opened.st_dev, opened.st_ino) == (stat.st_dev, stat.st_ino) => {
                    Some((fd, names.into_iter()))
                }
                _ => self.failed(rustix::io::Errno::STALE),
            },
            Err(e) => self.failed(e),
        }
    }

    /// Counts an entry that could not be read, unless it is gone.
    fn failed<T>(&mut self, error: rustix::io::Errno) -> Option<T> {
        if error != rustix::io::Errno::NOENT {
            self.unreadable += 1;
        }
        None
    }
}

/// Directory `name` in `dir` (not followed), open, and the names in it.
fn names_at(dir: impl AsFd, name: &CStr) -> rustix::io::Result<(OwnedFd, Vec<CString>)> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    Ok((fd, names))
}

/// A lock on the whole store, released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    exclusive: bool,
    /// What removing the leftovers of interrupted writes freed (taken
    /// exclusively), and what could not be counted, until a gc reports it.
    cleaned: Mutex<(u64, u64)>,
}

/// The image store at a root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The most an image's layers may hold uncompressed ([`Store::unpack`]).
    max_unpacked: Option<u64>,
    /// Whether a layer's compressed blob is kept once the layer is unpacked
    /// ([`Store::with_layer_blobs`]).
    keep_layer_blobs: bool,
    /// Whether an image whose layers can be an overlay's lower layers is
    /// kept as them, without an assembled tree ([`Store::with_layered`]).
    layered: bool,
    /// The user ces acts for ([`Store::acting_for`]).
    user: u32,
    /// Where this view of the store writes the blobs it is given, and reads
    /// them first ([`Store::staged`]).
    staging: Option<PathBuf>,
}

/// The blobs a load brought, kept apart until its images are known
/// ([`Store::staged`]); what is not moved into the store is removed with it.
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    blobs: PathBuf,
}

impl Staged {
    /// Moves the blobs `digests` (those that were brought: the others are in
    /// the store already) into the store.
    pub fn keep<'d>(&self, digests: impl IntoIterator<Item = &'d Digest>) -> Result<()> {
        for digest in digests {
            let staged = self.dir.join(digest.hex());
            match fs::rename(&staged, self.blobs.join(digest.hex())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&staged)(e)),
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(error) = crate::fs::remove_tree(&self.dir) {
            tracing::warn!(path = %self.dir.display(), %error, "cannot remove a load's staged blobs");
        }
    }
}

/// The most bytes the layers' paths (with their separators) and the run's
/// upper and work directories may take in the overlay's mount options, of
/// an image kept as its layers: the options must fit in one page (4096
/// bytes), flags included. An image whose layers' paths take more gets an
/// assembled tree.
pub const MAX_LOWERDIR_BYTES: usize = 3584;
/// The longest path of a run's upper or work directory below the store's
/// root (`/runs/<id>/state/overlay/upper`, with a 32-byte id), and its
/// option's name.
const RUN_OVERLAY_PATH_BYTES: usize = 80;
/// The longest path by which root mode mounts a layer, idmapped, as an
/// overlay's lower layer: `/run/ces/<id>/lower<i>`, with a 32-byte id and
/// up to 500 layers.
const IDMAPPED_LOWER_PATH_BYTES: usize = "/run/ces/".len() + 32 + "/lower".len() + 3;
/// How many hex digits of a layer's diff_id name its short link
/// (`l/<digits>`, see [`Store::mount_path`]).
const LINK_HEX: usize = 12;

/// `records` (an image's layers, bottom first) with each layer once, at
/// its top-most place: overlayfs refuses a directory twice among its lower
/// layers, and the top-most copy shows all a lower one would.
fn top_most<'r>(records: impl IntoIterator<Item = &'r LayerRecord>) -> Vec<&'r LayerRecord> {
    let records: Vec<&LayerRecord> = records.into_iter().collect();
    let above = |i: usize, record: &LayerRecord| records[i + 1..].iter().any(|r| r.hex == record.hex);
    records.iter().enumerate().filter(|(i, record)| !above(*i, record)).map(|(_, record)| *record).collect()
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The same store, refusing to unpack an image whose layers hold more
    /// than `limit` bytes uncompressed (tar headers included): a gzip bomb
    /// stops there, and nothing of it is kept.
    pub fn with_max_unpacked(self, limit: Option<u64>) -> Store {
        Store { max_unpacked: limit, ..self }
    }

    /// The same store, keeping (the default) or dropping the compressed
    /// blobs of layers once they are unpacked (`[storage] keep_layer_blobs`).
    /// Dropped, an image takes about what its files take (a quarter less
    /// for typical analysis images), but the OCI layout no longer holds its
    /// layers: skopeo and umoci cannot read it. A pull then counts a layer
    /// the store has unpacked from the same blob as present
    /// ([`Store::has_layer`]).
    pub fn with_layer_blobs(self, keep: bool) -> Store {
        Store { keep_layer_blobs: keep, ..self }
    }

    /// The same store, keeping an image as its layers (the default) or
    /// always assembling its root filesystem (`[storage] layered_rootfs`).
    /// Kept as its layers, an image takes no more room than they do: runs
    /// mount them as the lower layers of an overlay. An image whose layers
    /// cannot be (see [`Rootfs`]) gets an assembled tree either way.
    pub fn with_layered(self, layered: bool) -> Store {
        Store { layered, ..self }
    }

    /// The same store, acting for the user `uid` (by default the effective
    /// uid; under sudo, the user who ran it). A name is a promise about
    /// where an image came from, and one store may serve several users
    /// (root's, under sudo): a name resolves to the image pulled under it
    /// (from the registry it names), or to one this user loaded under it,
    /// never to another user's load. Anyone's `ces load` of an archive of
    /// their making could otherwise put any image under the name of one
    /// pulled from an approved registry, for every other user's next run. A
    /// load by this user names images as theirs ([`ImageRecord::loaded_by`]).
    /// A digest finds only those too (`NAME@sha256:...` must not find
    /// another user's load under NAME); `ces images --disk` shows another
    /// user's load without its name.
    pub fn acting_for(self, uid: u32) -> Store {
        Store { user: uid, ..self }
    }

    /// The user ces acts for ([`Store::acting_for`]).
    pub fn user(&self) -> u32 {
        self.user
    }

    /// Whether a name of `record` resolves for the user ces acts for.
    fn names_for_user(&self, record: &ImageRecord) -> bool {
        record.loaded_by.is_none_or(|uid| uid == self.user)
    }

    /// Opens the store at `root`, creating its layout if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let user = rustix::process::geteuid().as_raw();
        let store =
            Store { root: root.into(), max_unpacked: None, keep_layer_blobs: true, layered: true, user, staging: None };
        // The blobs' directory is the layout's, made with it.
        for dir in std::iter::once(store.blobs_dir()).chain(store.private_dirs()) {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        store.restrict_access()?;
        let layout = store.layout_dir().join("oci-layout");
        let index = store.index_path();
        if !layout.exists() || !index.exists() {
            // A new store: its files are written through tmp/, which a
            // process taking the store lock when no one holds it empties.
            // Held shared, the lock keeps another ces starting at the same
            // moment from removing them mid-write.
            let _lock = store.lock_shared()?;
            if !layout.exists() {
                write_atomic(&store, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            }
            let _guard = store.index_lock()?;
            if !index.exists() {
                store.write_index(&[])?;
            }
        }
        Ok(store)
    }

    /// The store's directories only its owner may list: the OCI layout, the
    /// root filesystems, the merged-image marks, the layers, temp and locks.
    fn private_dirs(&self) -> [PathBuf; 8] {
        [
            self.layout_dir(),
            self.root.join("rootfs"),
            self.layered_dir(),
            self.merged_dir(),
            self.layers_dir(),
            self.links_dir(),
            self.tmp_dir(),
            self.root.join("locks"),
        ]
    }

    /// Makes the store reachable by its owner only: the layout, the cached
    /// root filesystems, downloads and locks `0700`. The root itself is
    /// `0711` when root owns it (a container that root runs for another user
    /// runs as that user, and must reach its run's directory under `runs/`
    /// by path; nothing in the root can be listed), else `0700`. Stores made
    /// by earlier versions (`0755`) are closed on the next open. A directory
    /// someone else owns is left as it is (ces cannot change it, and does
    /// not fail for it).
    fn restrict_access(&self) -> Result<()> {
        let euid = rustix::process::geteuid().as_raw();
        let root_mode = if euid == 0 { 0o711 } else { 0o700 };
        for (dir, mode) in
            std::iter::once((self.root.clone(), root_mode)).chain(self.private_dirs().into_iter().map(|d| (d, 0o700)))
        {
            let meta = fs::symlink_metadata(&dir).map_err(io_err(&dir))?;
            if meta.uid() == euid && meta.permissions().mode() & 0o7777 != mode {
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_err(&dir))?;
            }
        }
        Ok(())
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The OCI image layout directory (`umoci ls --layout` and `skopeo ... oci:` read it).
    pub fn layout_dir(&self) -> PathBuf {
        self.root.join("oci")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.layout_dir().join("blobs").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.layout_dir().join("index.json")
    }

    /// A fresh path in the store's temp directory: this process's id, a
    /// random number drawn once per process (two hosts sharing the store, or
    /// two PID namespaces, may have the same process ids), and a count. Files
    /// there are made `O_EXCL` all the same: never another writer's.
    fn temp_path(&self, what: &str) -> PathBuf {
        static TOKEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let token = TOKEN.get_or_init(|| {
            use std::hash::BuildHasher as _;
            // std's hasher keys are random per process (the OS's generator).
            std::collections::hash_map::RandomState::new().hash_one(std::process::id()) & 0xffff_ffff
        });
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir().join(format!("{what}-{}-{token:08x}-{n}", std::process::id()))
    }

    fn flock(&self, path: &Path, op: FlockOperation) -> Result<File> {
        let file = crate::fs::open_lock(path).map_err(io_err(path))?;
        rustix::fs::flock(&file, op).map_err(|e| io_err(path)(e.into()))?;
        Ok(file)
    }

    /// Takes the store lock shared, as writers (pull, load) do. When no one
    /// else holds it, the leftovers of killed writers in `tmp/` are removed first.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let file = crate::fs::open_lock(&path).map_err(io_err(&path))?;
        if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            self.clean_tmp()?;
        }
        rustix::fs::flock(&file, FlockOperation::LockShared).map_err(|e| io_err(&path)(e.into()))?;
        Ok(StoreLock { _file: file, exclusive: false, cleaned: Mutex::default() })
    }

    /// Takes the store lock exclusively (waits for writers), for `rmi` and `gc`.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        self.lock_exclusive_saying(|| {})
    }

    /// [`Store::lock_exclusive`], calling `waiting` first where it must wait
    /// (for runs, which hold the lock shared until they end, pulls and
    /// loads: and for as long as new ones keep taking it, since `flock`
    /// gives a waiting exclusive lock no priority).
    pub fn lock_exclusive_saying(&self, waiting: impl FnOnce()) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let file = crate::fs::open_lock(&path).map_err(io_err(&path))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK) => {
                waiting();
                rustix::fs::flock(&file, FlockOperation::LockExclusive)
            }
            other => other,
        }
        .map_err(|e| io_err(&path)(e.into()))?;
        let cleaned = self.clean_tmp()?;
        Ok(StoreLock { _file: file, exclusive: true, cleaned: Mutex::new(cleaned) })
    }

    /// Removes what interrupted writes left; what that freed, and what
    /// could not be counted.
    fn clean_tmp(&self) -> Result<(u64, u64)> {
        let tmp = self.tmp_dir();
        // Made at the first leftover: `tmp/` is empty at nearly every
        // start of a run, which takes the store this way.
        let mut walk: Option<Walk> = None;
        let mut freed = 0;
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            tracing::debug!(path = %path.display(), "removing leftover of an interrupted write");
            let walk = match &mut walk {
                Some(walk) => walk,
                None => walk.insert(Walk { dev: fs::metadata(&tmp).map_err(io_err(&tmp))?.dev(), ..Walk::default() }),
            };
            freed += walk.freed(&path);
            remove_tree(&path)?;
        }
        Ok((freed, walk.map_or(0, |walk| walk.unreadable)))
    }

    fn index_lock(&self) -> Result<File> {
        self.flock(&self.root.join("locks").join("index.lock"), FlockOperation::LockExclusive)
    }

    /// Where the blob `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        if let Some(staged) = self.staging.as_ref().map(|dir| dir.join(digest.hex()))
            && fs::symlink_metadata(&staged).is_ok()
        {
            return staged;
        }
        self.blobs_dir().join(digest.hex())
    }

    /// A view of the store that writes the blobs it is given to a directory
    /// of its own in `tmp/`, and reads blobs there first; and that directory,
    /// from which [`Staged::keep`] moves blobs into the store, and which is
    /// removed with what is left when it is dropped. A load stores an
    /// archive's blobs so, and keeps only those of the images it resolves:
    /// the archive's other files (anything a hostile one holds) never stay,
    /// and a failed load leaves nothing. (A load killed meanwhile leaves the
    /// directory in `tmp/`, emptied by the next ces that takes the store
    /// while no one else holds it.)
    pub fn staged(&self) -> Result<(Store, Staged)> {
        let dir = self.temp_path("load");
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io_err(&dir))?;
        let staged = Staged { dir: dir.clone(), blobs: self.blobs_dir() };
        Ok((Store { staging: Some(dir), ..self.clone() }, staged))
    }

    /// Whether the blob is stored with the expected size. Blobs are verified
    /// before they are stored, so a present blob of the right size is reused.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Starts writing a blob that must hash to `expected` (and be `size` bytes, when known).
    pub fn blob_writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter> {
        self.new_blob_writer(Some(expected.clone()), size)
    }

    /// Starts writing a blob whose digest is learnt only as it is written (a
    /// `docker save` layer, whose file name says nothing of its content).
    pub fn computed_blob_writer(&self) -> Result<BlobWriter> {
        self.new_blob_writer(None, None)
    }

    fn new_blob_writer(&self, expected: Option<Digest>, size: Option<u64>) -> Result<BlobWriter> {
        let label = expected.as_ref().map_or("computed", Digest::short);
        let temp = self.temp_path(&format!("blob-{label}"));
        let file = File::create_new(&temp).map_err(io_err(&temp))?;
        Ok(BlobWriter {
            out: Some(HashingWriter::new(BufWriter::with_capacity(256 << 10, file))),
            temp,
            blobs: self.staging.clone().unwrap_or_else(|| self.blobs_dir()),
            expected,
            size,
        })
    }

    /// Stores `bytes` as the blob `expected`, after checking they hash to it.
    pub fn write_blob(&self, expected: &Digest, bytes: &[u8]) -> Result<()> {
        let mut writer = self.blob_writer(expected, Some(bytes.len() as u64))?;
        writer.write_all(bytes).map_err(|e| writer.write_error(e))?;
        writer.commit().map(drop)
    }

    /// Whether the store holds the layer whose blob is `digest` and whose
    /// uncompressed tar is `diff_id` (as the image's config says): its blob,
    /// or, when blobs are not kept, the layer unpacked from that very blob
    /// (a layer with that diff_id made from another blob does not count:
    /// the config's word is not proof that this blob makes it).
    pub fn has_layer(&self, digest: &Digest, size: u64, diff_id: Option<&str>) -> bool {
        self.has_blob(digest, size)
            || (!self.keep_layer_blobs && diff_id.and_then(|d| self.layer_record(d)).is_some_and(|r| r.made_by(digest)))
    }

    /// The directory of the layer with this diff_id, when the store has it
    /// unpacked from the blob `blob` (see [`Store::has_layer`]): its files
    /// as the layer's tar holds them, whiteouts as the tar's own `.wh.`
    /// files.
    pub fn layer_dir(&self, blob: &Digest, diff_id: &str) -> Option<PathBuf> {
        self.layer_record(diff_id).filter(|r| r.made_by(blob)).map(|record| self.layers_dir().join(record.hex))
    }

    /// Opens a stored blob.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob { digest: digest.clone() },
            _ => StoreError::Io { path, source },
        })
    }

    /// Reads a stored blob of at most `limit` bytes (manifests, configs).
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).map_err(io_err(&self.blob_path(digest)))?;
        if bytes.len() as u64 > limit {
            return Err(StoreError::TooLarge { digest: digest.clone(), limit });
        }
        Ok(bytes)
    }

    /// The image manifest stored as `digest`.
    pub fn manifest(&self, digest: &Digest) -> Result<ImageManifest> {
        match Manifest::parse(&self.read_blob(digest, MAX_MANIFEST_BYTES)?, None)? {
            Manifest::Image(m) => Ok(*m),
            Manifest::Index(_) => Err(StoreError::NotAnImage { digest: digest.clone() }),
        }
    }

    /// The config of an image manifest.
    pub fn config(&self, manifest: &ImageManifest) -> Result<ImageConfiguration> {
        let digest = manifest::descriptor_digest(manifest.config())?;
        let bytes = self.read_blob(&digest, MAX_CONFIG_BYTES)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path: self.blob_path(&digest), source })
    }

    /// The provenance of the image manifest `digest`, read from its manifest
    /// and config (content-addressed, so bound to the digest, unlike the copy
    /// in `index.json`).
    pub fn provenance(&self, digest: &Digest) -> Result<Provenance> {
        let manifest = self.manifest(digest)?;
        Ok(Provenance::of(&manifest, &self.config(&manifest)?))
    }

    fn read_index(&self) -> Result<ImageIndex> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path, source })
    }

    fn write_index(&self, manifests: &[Descriptor]) -> Result<()> {
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests.to_vec())
            .build()
            .map_err(|e| StoreError::Io { path: self.index_path(), source: io::Error::other(e) })?;
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|source| StoreError::Corrupt { path: self.index_path(), source })?;
        write_atomic(self, &self.index_path(), &bytes)
    }

    /// Names an image: adds (or replaces) the `index.json` entry for
    /// `record.reference` (a pull's, or that user's load's: see
    /// [`Store::acting_for`]).
    pub fn add_ref(&self, record: &ImageRecord) -> Result<()> {
        self.add_refs(std::slice::from_ref(record))
    }

    /// Names several images at once: all of them, or (on an error) none.
    pub fn add_refs(&self, records: &[ImageRecord]) -> Result<()> {
        let _guard = self.index_lock()?;
        let manifests = self.named_with(records)?;
        self.write_index(&manifests)
    }

    /// Checks that [`Store::add_refs`] of `records` would not be refused
    /// for the number of names (before a load moves its blobs in).
    pub fn check_names(&self, records: &[ImageRecord]) -> Result<()> {
        self.named_with(records).map(drop)
    }

    /// `index.json`'s entries once `records` are named: refused when a
    /// user's loads would hold more than [`MAX_LOADED_NAMES`] names, and
    /// more than they hold now.
    fn named_with(&self, records: &[ImageRecord]) -> Result<Vec<Descriptor>> {
        let index = self.read_index()?;
        let before = index.manifests();
        let mut manifests: Vec<Descriptor> =
            before.iter().filter(|d| !records.iter().any(|r| same_name(d, r))).cloned().collect();
        for record in records {
            manifests.push(self.descriptor_of(record)?);
        }
        // By the annotation itself: an entry that no longer reads as a
        // record (from an earlier version) still counts.
        let loaded_by = |entries: &[Descriptor], uid: &str| {
            entries
                .iter()
                .filter(|d| d.annotations().as_ref().and_then(|a| a.get(LOADED_BY)).is_some_and(|t| t == uid))
                .count()
        };
        let loaders: std::collections::BTreeSet<u32> = records.iter().filter_map(|r| r.loaded_by).collect();
        for uid in loaders.iter().map(u32::to_string) {
            let count = loaded_by(&manifests, &uid);
            if count > MAX_LOADED_NAMES && count > loaded_by(before, &uid) {
                return Err(StoreError::TooManyLoaded { count, limit: MAX_LOADED_NAMES });
            }
        }
        Ok(manifests)
    }

    /// The `index.json` entry of `record`.
    fn descriptor_of(&self, record: &ImageRecord) -> Result<Descriptor> {
        let mut annotations = BTreeMap::new();
        annotations.insert(REF_NAME.to_owned(), record.reference.to_string());
        if let Some(at) = record.pulled_at {
            annotations.insert(PULLED_AT.to_owned(), at.to_string());
        }
        if let Some(index) = &record.index_digest {
            annotations.insert(INDEX_DIGEST.to_owned(), index.to_string());
        }
        if let Some(uid) = record.loaded_by {
            annotations.insert(LOADED_BY.to_owned(), uid.to_string());
        }
        for (key, value) in record.provenance.annotations() {
            annotations.insert(key.to_owned(), value.to_owned());
        }
        DescriptorBuilder::default()
            .media_type(MediaType::from(record.media_type.as_str()))
            .digest(oci_digest(&record.digest))
            .size(record.manifest_size)
            .annotations(annotations.into_iter().collect::<std::collections::HashMap<_, _>>())
            .build()
            .map_err(|e| StoreError::Io { path: self.index_path(), source: io::Error::other(e) })
    }

    /// Every named image, in the order they were stored: all users' (what
    /// the store keeps).
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.read_index()?.manifests().iter().filter_map(record_of).collect())
    }

    /// The named images whose names resolve for the user ces acts for (see
    /// [`Store::acting_for`]), in the order they were stored.
    pub fn own_images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.images()?.into_iter().filter(|r| self.names_for_user(r)).collect())
    }

    /// Finds an image by reference (`ghcr.io/ns/app:1`, or short forms that
    /// normalize to it) or by a digest prefix of at least 4 hex digits.
    pub fn lookup(&self, query: &str) -> Result<ImageRecord> {
        // Only what this user may see under its name: by a digest too, so
        // that `NAME@sha256:...` never finds another user's load under NAME,
        // nor a prefix removes or lists one.
        let images = self.own_images()?;
        if let Ok(reference) = query.parse::<ImageReference>() {
            // The one stored last, of a pull's and this user's load's.
            let exact = images.iter().rev().find(|r| r.reference == reference && self.names_for_user(r));
            let by_digest = reference
                .digest()
                .and_then(|d| images.iter().find(|r| &r.digest == d && r.reference.name() == reference.name()));
            if let Some(found) = exact.or(by_digest) {
                return Ok(found.clone());
            }
        }
        let prefix = query.strip_prefix("sha256:").unwrap_or(query);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let prefix = prefix.to_ascii_lowercase();
            let mut matches: Vec<&ImageRecord> =
                images.iter().filter(|r| r.digest.hex().starts_with(&prefix)).collect();
            matches.dedup_by(|a, b| a.digest == b.digest);
            match matches.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                many => {
                    return Err(StoreError::Ambiguous {
                        query: query.to_owned(),
                        matches: many.iter().map(|r| r.reference.to_string()).collect(),
                    });
                }
            }
        }
        Err(StoreError::ImageNotFound { query: query.to_owned() })
    }

    /// Removes the name of `record` (a pull's, or one user's load's); the
    /// caller should then [`Store::gc`].
    pub fn remove_ref(&self, record: &ImageRecord, _lock: &StoreLock) -> Result<()> {
        let _guard = self.index_lock()?;
        let index = self.read_index()?;
        let before = index.manifests().len();
        let manifests: Vec<Descriptor> = index.manifests().iter().filter(|d| !same_name(d, record)).cloned().collect();
        if manifests.len() == before {
            return Err(StoreError::ImageNotFound { query: record.reference.to_string() });
        }
        self.write_index(&manifests)
    }

    /// Deletes blobs and root filesystems no named image needs (and, when
    /// layer blobs are not kept, the blobs of layers unpacked). Needs the
    /// exclusive lock, so that no pull is between writing a blob and naming it.
    pub fn gc(&self, lock: &StoreLock) -> Result<GcStats> {
        debug_assert!(lock.exclusive, "gc needs the exclusive store lock");
        let mut live_blobs = HashSet::new();
        let mut live_manifests = HashSet::new();
        // Layers a named image has (a root filesystem made from one keeps
        // its files anyway: they are hard links).
        let mut live_layers = HashSet::new();
        for record in self.images()? {
            let kept = self.kept_by(&record.digest);
            live_blobs.extend(kept.blobs);
            live_layers.extend(kept.layers);
            live_manifests.insert(record.digest.hex().to_owned());
        }
        // What each thing takes is counted just before it goes.
        let (cleaned, uncounted) = std::mem::take(&mut *lock.cleaned.lock().unwrap_or_else(PoisonError::into_inner));
        let mut stats = GcStats { freed: cleaned, ..GcStats::default() };
        let mut walk = Walk { dev: fs::metadata(&self.root).map_err(io_err(&self.root))?.dev(), ..Walk::default() };
        let blobs = self.blobs_dir();
        for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let entry = entry.map_err(io_err(&blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live_blobs.contains(&name) {
                stats.freed += walk.freed(&entry.path());
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                stats.blobs += 1;
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs).map_err(io_err(&rootfs))? {
            let entry = entry.map_err(io_err(&rootfs))?;
            if !live_manifests.contains(&*entry.file_name().to_string_lossy()) {
                stats.freed += walk.freed(&entry.path());
                remove_tree(&entry.path())?;
                stats.rootfs += 1;
            }
        }
        let merged = self.merged_dir();
        for entry in fs::read_dir(&merged).map_err(io_err(&merged))? {
            let entry = entry.map_err(io_err(&merged))?;
            if !live_manifests.contains(&*entry.file_name().to_string_lossy()) {
                stats.freed += walk.freed(&entry.path());
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        let layered = self.layered_dir();
        for entry in fs::read_dir(&layered).map_err(io_err(&layered))? {
            let entry = entry.map_err(io_err(&layered))?;
            if !live_manifests.contains(&*entry.file_name().to_string_lossy()) {
                stats.freed += walk.freed(&entry.path());
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                stats.rootfs += 1;
            }
        }
        let layers = self.layers_dir();
        let mut dead = std::collections::BTreeSet::new();
        for entry in fs::read_dir(&layers).map_err(io_err(&layers))? {
            let name = entry.map_err(io_err(&layers))?.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".json").unwrap_or(&name).to_owned();
            if !live_layers.contains(&hex) {
                dead.insert(hex);
            }
        }
        for hex in dead {
            // The record first, then the directory moved out of the way: a
            // gc stopped half-way leaves no record naming a half-deleted layer.
            let record = layers.join(format!("{hex}.json"));
            stats.freed += walk.freed(&record);
            match fs::remove_file(&record) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&record)(e)),
            }
            let dir = layers.join(&hex);
            if dir.exists() {
                stats.freed += walk.freed(&dir);
                let doomed = self.temp_path("gc-layer");
                fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
                remove_tree(&doomed)?;
                stats.layers += 1;
            }
            let _ = fs::remove_file(self.root.join("locks").join(format!("layer-{hex}.lock")));
        }
        // Short links to layers that are gone (just now, or by a gc stopped
        // half-way); then every live layer gets its own where the name is
        // free (a layer unpacked by an earlier version, or whose name was
        // taken by one of these).
        let links = self.links_dir();
        for entry in fs::read_dir(&links).map_err(io_err(&links))?.flatten() {
            if fs::read_link(entry.path()).is_ok_and(|target| !links.join(target).exists()) {
                stats.freed += walk.freed(&entry.path());
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        for hex in &live_layers {
            if layers.join(hex).is_dir() {
                self.make_link(hex);
            }
        }
        // No turn is held while the store is held exclusively: every turn's
        // file goes (those of layers never named too).
        let locks = self.root.join("locks");
        for entry in fs::read_dir(&locks).map_err(io_err(&locks))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".unpacking") {
                let _ = fs::remove_file(entry.path());
            }
        }
        stats.unreadable = uncounted + walk.unreadable;
        Ok(stats)
    }

    /// What the named image `digest` keeps in the store, as `ces gc` sees
    /// it: its root filesystem (under its own hex: `rootfs/`, `layered/`,
    /// `merged/`), these blobs and these unpacked layers.
    fn kept_by(&self, digest: &Digest) -> Kept {
        let mut kept = Kept { blobs: vec![digest.hex().to_owned()], layers: Vec::new() };
        // A manifest that cannot be read keeps nothing else alive; its
        // name stays, and `ces pull` mends it.
        let Ok(manifest) = self.manifest(digest) else { return kept };
        kept.blobs.push(manifest.config().digest().digest().to_owned());
        let config = self.config(&manifest);
        let diff_ids = config.as_ref().map(|c| c.rootfs().diff_ids().as_slice()).unwrap_or_default();
        // Blobs not kept: an image whose root filesystem and layers are all
        // unpacked needs its layer blobs no more.
        let unpacked = !self.keep_layer_blobs
            && self.unpacked(digest).is_some()
            && !self.merged_dir().join(digest.hex()).exists()
            && diff_ids.len() == manifest.layers().len()
            && manifest.layers().iter().zip(diff_ids).all(|(layer, d)| {
                manifest::descriptor_digest(layer).is_ok_and(|blob| self.layer_dir(&blob, d).is_some())
            });
        if !unpacked {
            kept.blobs.extend(manifest.layers().iter().map(|layer| layer.digest().digest().to_owned()));
        }
        kept.layers.extend(diff_ids.iter().filter_map(|d| diff_id_hex(d)).map(str::to_owned));
        kept
    }

    /// What the store's data takes on disk (blocks, as `du` counts them:
    /// a file with several links once; nothing followed, no other file
    /// system entered), per named image and in all. An unpacked layer is counted
    /// as its directory, record and short name (`l/`); an image's root
    /// filesystem as what its tree adds to its layers (directories, and
    /// files that are not links to a layer's), with its `layered/` list.
    /// What a name keeps is what [`Store::gc`] keeps for it
    /// ([`Store::kept_by`]). Read without a lock: what a pull is writing
    /// (`tmp/`) is not counted, and what changes meanwhile may be counted
    /// or not. What cannot be read (a directory the caller may not list)
    /// is counted as nothing, and counted in [`DiskUse::unreadable`].
    pub fn disk_use(&self) -> Result<DiskUse> {
        let records = self.images()?;
        let mut sizes: HashMap<Part, u64> = HashMap::new();
        let mut walk = Walk { dev: fs::metadata(&self.root).map_err(io_err(&self.root))?.dev(), ..Walk::default() };
        // Layers first: the files of an assembled tree are their links.
        for (dir, kind) in [
            (self.layers_dir(), PartKind::Layer),
            (self.links_dir(), PartKind::Layer),
            (self.root.join("rootfs"), PartKind::Image),
            (self.layered_dir(), PartKind::Image),
            (self.merged_dir(), PartKind::Image),
            (self.blobs_dir(), PartKind::Blob),
        ] {
            let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else { continue };
            let (fd, names) = match names_at(rustix::fs::CWD, &path) {
                Ok(read) => read,
                Err(e) => {
                    walk.failed::<()>(e);
                    continue;
                }
            };
            for name in names {
                let hex = if dir == self.links_dir() {
                    // A short name: its layer's, which `ces gc` removes with
                    // the layer (and, dangling, at once: nobody's); a link
                    // elsewhere, or not a link, `ces gc` leaves.
                    let Ok(target) = fs::read_link(dir.join(OsStr::from_bytes(name.as_bytes()))) else { continue };
                    let hex = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    match (dir.join(&target).exists(), target == Self::link_target(&hex)) {
                        (false, _) => String::new(),
                        (true, true) => hex,
                        (true, false) => continue,
                    }
                } else {
                    let name = String::from_utf8_lossy(name.as_bytes()).into_owned();
                    match kind {
                        // A layer's record goes with its directory.
                        PartKind::Layer => name.strip_suffix(".json").map(str::to_owned).unwrap_or(name),
                        _ => name,
                    }
                };
                let bytes = walk.bytes_at(fd.as_fd(), &name);
                *sizes.entry((kind, hex)).or_default() += bytes;
            }
        }
        let mut users: HashMap<&Part, HashSet<&str>> = HashMap::new();
        let mut parts_of = Vec::with_capacity(records.len());
        for record in &records {
            let kept = self.kept_by(&record.digest);
            let mut parts: HashSet<Part> = kept.blobs.into_iter().map(|hex| (PartKind::Blob, hex)).collect();
            parts.extend(kept.layers.into_iter().map(|hex| (PartKind::Layer, hex)));
            parts.insert((PartKind::Image, record.digest.hex().to_owned()));
            parts_of.push(parts);
        }
        for (record, parts) in records.iter().zip(&parts_of) {
            for part in parts {
                users.entry(part).or_default().insert(record.digest.hex());
            }
        }
        let size = |part: &Part| sizes.get(part).copied().unwrap_or(0);
        let images = records
            .iter()
            .zip(&parts_of)
            .map(|(record, parts)| {
                let names = records.iter().filter(|r| r.digest == record.digest).count();
                let only_this = |part: &&Part| users.get(part).is_some_and(|u| u.len() == 1);
                // Another user's load is not shown under its name: a name is a
                // promise that only a pull, or this user's own load, keeps.
                let reference = match record.loaded_by {
                    Some(uid) if !self.names_for_user(record) => format!("(another user's load, uid {uid})"),
                    _ => record.reference.to_string(),
                };
                ImageDiskUse {
                    reference,
                    digest: record.digest.to_string(),
                    names,
                    disk: parts.iter().map(size).sum(),
                    unique: if names > 1 { 0 } else { parts.iter().filter(only_this).map(size).sum() },
                }
            })
            .collect();
        Ok(DiskUse {
            images,
            total: sizes.values().sum(),
            reclaimable: sizes.iter().filter(|(part, _)| !users.contains_key(part)).map(|(_, n)| n).sum(),
            unreadable: walk.unreadable,
        })
    }

    /// Where layers are unpacked, each alone, keyed by the digest of the
    /// uncompressed tar (the config's `diff_id`).
    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// Where images kept as their layers list them (`layered/<hex>`).
    fn layered_dir(&self) -> PathBuf {
        self.root.join("layered")
    }

    /// Where images unpacked the old way are marked (`merged/<hex>`, empty
    /// files): their layer blobs are kept whatever `keep_layer_blobs` says,
    /// since only they can unpack such an image again.
    fn merged_dir(&self) -> PathBuf {
        self.root.join("merged")
    }

    /// The layer blobs of the images unpacked the old way (marked in
    /// [`Store::merged_dir`]) that are in the store's index or being
    /// unpacked.
    fn blobs_of_merged_images(&self) -> HashSet<String> {
        let mut blobs = HashSet::new();
        let Ok(entries) = fs::read_dir(self.merged_dir()) else { return blobs };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else { continue };
            if let Ok(manifest) = self.manifest(&digest) {
                blobs.extend(manifest.layers().iter().map(|l| l.digest().digest().to_owned()));
            }
        }
        blobs
    }

    /// Deletes the layer blobs of an image whose layers are all unpacked
    /// and whose root filesystem is whole (`keep_layer_blobs = false`), but
    /// not those an image unpacked the old way needs. A blob that cannot be
    /// deleted is left (with a warning) for `ces gc`.
    fn drop_layer_blobs(&self, manifest: &oci_spec::image::ImageManifest) {
        let needed = self.blobs_of_merged_images();
        for layer in manifest.layers() {
            if needed.contains(layer.digest().digest()) {
                continue;
            }
            let Ok(blob) = manifest::descriptor_digest(layer) else { continue };
            let path = self.blob_path(&blob);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete an unpacked layer's blob"),
            }
        }
    }

    /// Where the rootfs of manifest `digest` is cached.
    pub fn rootfs_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("rootfs").join(digest.hex())
    }

    /// The root filesystem of manifest `digest`, if it has been unpacked:
    /// its assembled tree, or its layers.
    pub fn unpacked(&self, digest: &Digest) -> Option<Rootfs> {
        let path = self.rootfs_path(digest);
        if path.is_dir() {
            return Some(Rootfs::Tree(path));
        }
        // `[storage] layered_rootfs = false`: only trees count.
        self.layered.then(|| self.layered(digest).map(Rootfs::Layers)).flatten()
    }

    /// The layers of manifest `digest`, when it is kept as them and every
    /// one is in the store.
    fn layered(&self, digest: &Digest) -> Option<Layers> {
        let json = fs::read(self.layered_dir().join(digest.hex())).ok()?;
        let diff_ids: Vec<String> = serde_json::from_slice(&json).ok()?;
        let mut records = Vec::with_capacity(diff_ids.len());
        for diff_id in &diff_ids {
            records.push(self.layer_record(diff_id).filter(LayerRecord::mountable)?);
        }
        let records = top_most(&records);
        Some(Layers {
            mount: self.layer_mounts(&records)?,
            dirs: records.iter().map(|r| self.layers_dir().join(&r.hex)).collect(),
            trusted: records.iter().all(|r| r.trusted),
        })
    }

    /// The paths a run mounts the layers of `records` by (bottom first, each
    /// once: see [`top_most`]), when they can be kept as the image: each can
    /// be an overlay's lower layer, and a run can name them all when it
    /// mounts the overlay.
    fn layer_mounts(&self, records: &[&LayerRecord]) -> Option<Vec<PathBuf>> {
        let possible = self.layered
            && !records.is_empty()
            && records.len() <= crate::rootfs::MAX_LOWER_LAYERS
            && records.iter().all(|r| r.mountable());
        let mount: Vec<PathBuf> = possible.then(|| records.iter().map(|r| self.mount_path(&r.hex)).collect())?;
        let root = rustix::process::geteuid().is_root();
        self.mount_options_fit(&mount, root, crate::rootfs::lowerdir_plus()).then_some(mount)
    }

    /// Whether an overlay of the layers named by `mount` fits in its mount
    /// options, with the run's upper and work directories (in the store
    /// too). Root's runs mount it with `mount(2)`: its options, the layers'
    /// paths among them (idmapped in root mode, each at a path of its own),
    /// fit in one page. A rootless run's overlay is
    /// mounted by libcontainer through `fsconfig(2)`, whose every value has
    /// at most 255 bytes: one `lowerdir+` per layer where the kernel takes
    /// it (`plus`), else all of them in one `lowerdir`, as numbered links
    /// the run makes ([`crate::rootfs::numbered_lowerdir`]).
    pub fn mount_options_fit(&self, mount: &[PathBuf], root: bool, plus: bool) -> bool {
        let run_dir = self.root.as_os_str().len() + RUN_OVERLAY_PATH_BYTES;
        if root {
            let named = |path: &PathBuf| path.as_os_str().len().max(IDMAPPED_LOWER_PATH_BYTES);
            let lowerdir: usize = mount.iter().map(|path| named(path) + 1).sum();
            return lowerdir + 2 * run_dir <= MAX_LOWERDIR_BYTES;
        }
        let value = crate::rootfs::FSCONFIG_VALUE_MAX;
        run_dir <= value
            && match plus {
                true => mount.iter().all(|path| path.as_os_str().len() <= value),
                false => crate::rootfs::numbered_lowerdir(mount.len()).len() <= value,
            }
    }

    /// Where layers have short names (`l/<first 12 hex digits>`, symbolic
    /// links to `../layers/<hex>`), as podman's overlay store has: an
    /// overlay of many layers must name them all within one page of mount
    /// options.
    fn links_dir(&self) -> PathBuf {
        self.root.join("l")
    }

    /// The target of layer `hex`'s short link.
    fn link_target(hex: &str) -> PathBuf {
        Path::new("..").join("layers").join(hex)
    }

    /// The path an overlay names layer `hex` by: its short link, when the
    /// link names this layer, else its directory (another layer whose
    /// diff_id starts with the same digits has the link: made on purpose,
    /// that costs the image its short paths, never its content).
    fn mount_path(&self, hex: &str) -> PathBuf {
        let Some(short) = hex.get(..LINK_HEX) else { return self.layers_dir().join(hex) };
        let link = self.links_dir().join(short);
        match fs::read_link(&link) {
            Ok(target) if target == Self::link_target(hex) => link,
            _ => self.layers_dir().join(hex),
        }
    }

    /// Gives layer `hex` its short link, unless the name is taken (by a
    /// layer whose diff_id starts alike, or by a link left to a layer since
    /// removed, which only `ces gc`, holding the store alone, removes: a
    /// link is never changed under a run that checked it). Where none can
    /// be made (a file system without symbolic links), the layer is mounted
    /// by its directory.
    fn make_link(&self, hex: &str) {
        let Some(short) = hex.get(..LINK_HEX) else { return };
        let link = self.links_dir().join(short);
        match std::os::unix::fs::symlink(Self::link_target(hex), &link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                tracing::debug!(link = %link.display(), error = %e, "no short link for a layer");
            }
            _ => {}
        }
    }

    /// The assembled tree of manifest `digest`, for a runtime that cannot
    /// mount layers (rootless podman): made from the layers now when the
    /// image is kept as them, as [`Store::unpack`] would make it.
    pub fn tree(
        &self,
        digest: &Digest,
        options: &UnpackOptions,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<PathBuf> {
        let tree = self.clone().with_layered(false);
        tree.unpack_image(digest, options, on_layer, None).map_err(|e| self.blob_dropped(e))?;
        Ok(self.rootfs_path(digest))
    }

    /// Unpacks the image's root filesystem into the rootfs cache (once: a
    /// rootfs already there is reused). Each layer the store lacks is
    /// unpacked alone into `layers/<diff_id>/` (several at once, one per
    /// core), its uncompressed tar checked against the config's `diff_ids`;
    /// then the root filesystem is assembled from the layers, in order, by
    /// hard links ([`unpack::link_layer`]): images that share layers share
    /// their files. An image with a hard link across layers (which no layer
    /// alone can hold) is unpacked the old way, each layer applied in order.
    /// `on_layer(i, n)` is called as layer `i` of `n` starts.
    pub fn unpack(
        &self,
        digest: &Digest,
        options: &UnpackOptions,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Unpacked> {
        self.unpack_image(digest, options, on_layer, None).map_err(|e| self.blob_dropped(e))
    }

    /// [`Store::unpack`], of an image whose root filesystem was begun while
    /// it was pulled ([`Store::assemble_ahead`]): the layers linked then
    /// are not linked again (what was begun for another image is dropped).
    pub fn unpack_assembled(
        &self,
        digest: &Digest,
        ahead: RootfsAhead,
        options: &UnpackOptions,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Unpacked> {
        let ahead = Some(ahead).filter(|ahead| ahead.digest == *digest);
        self.unpack_image(digest, options, on_layer, ahead).map_err(|e| self.blob_dropped(e))
    }

    /// A blob missing from a store that drops layer blobs was dropped.
    fn blob_dropped(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::MissingBlob { digest } if !self.keep_layer_blobs => StoreError::LayerBlobDropped { digest },
            e => e,
        }
    }

    /// Begins the root filesystem of manifest `digest`, whose layers are
    /// `layers` (blob and diff_id, in order), in `tmp/` before the image is
    /// pulled whole: [`Store::link_ready`] links each layer into it as the
    /// store has it, and [`Store::unpack_assembled`] finishes it. No lock
    /// is taken until then (a download may stall, and another process
    /// unpacking the image would wait for it): two pulls of one image may
    /// each begin it, and the second to finish drops its own. `None` when
    /// the image is unpacked already.
    pub fn assemble_ahead(&self, digest: &Digest, layers: &[(Digest, String)]) -> Option<RootfsAhead> {
        if self.rootfs_path(digest).is_dir() {
            return None;
        }
        let temp = self.temp_path(&format!("rootfs-{}", digest.short()));
        fs::create_dir(&temp).ok()?;
        Some(RootfsAhead {
            digest: digest.clone(),
            layers: layers.to_vec(),
            linked: 0,
            size: 0,
            temp: Some(TempTree(temp)),
        })
    }

    /// Links into `ahead`'s root filesystem, in order, the next layers the
    /// store has whole (each shown to be made by the image's blob), up to
    /// the first it lacks. After a failure, or past `[storage]
    /// max_image_size`, nothing more is linked: the image's unpack does it
    /// all again, and reports what fails.
    pub fn link_ready(&self, ahead: &mut RootfsAhead, options: &UnpackOptions) {
        while let (Some(temp), Some((blob, diff_id))) = (&ahead.temp, ahead.layers.get(ahead.linked)) {
            let Some(record) = self.layer_record(diff_id).filter(|record| record.made_by(blob)) else { return };
            if self.layer_mounts(&[&record]).is_some() {
                // The image is likely kept as its layers: no tree to begin.
                ahead.temp = None;
                return;
            }
            ahead.size = ahead.size.saturating_add(record.size);
            if self.max_unpacked.is_some_and(|limit| ahead.size > limit) {
                ahead.temp = None;
                return;
            }
            if let Err(e) = self.link_recorded_layer(&temp.0, &record, blob, options) {
                tracing::debug!(layer = %blob, error = %e, "not linked ahead");
                ahead.temp = None;
                return;
            }
            ahead.linked += 1;
        }
    }

    fn rootfs_lock_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("locks").join(format!("rootfs-{}.lock", digest.hex()))
    }

    /// Links the unpacked layer of `record` (made by `blob`) onto the tree
    /// being assembled at `root`.
    fn link_recorded_layer(
        &self,
        root: &Path,
        record: &LayerRecord,
        blob: &Digest,
        options: &UnpackOptions,
    ) -> Result<()> {
        let dir = self.layers_dir().join(&record.hex);
        let made = unpack::LayerDir {
            implicit_dirs: record.implicit.clone(),
            dir_modes: record.dir_modes.clone(),
            ..Default::default()
        };
        unpack::link_layer(root, &dir, &made, options).map(drop).map_err(|source| {
            space_error(source.out_of_space(), root).unwrap_or(StoreError::Unpack { layer: blob.clone(), source })
        })
    }

    fn unpack_image(
        &self,
        digest: &Digest,
        options: &UnpackOptions,
        on_layer: &mut dyn FnMut(usize, usize),
        ahead: Option<RootfsAhead>,
    ) -> Result<Unpacked> {
        // Unpacked already: its tree, or its layers where the store keeps
        // images so.
        if let Some(rootfs) = self.unpacked(digest) {
            return Ok(Unpacked { rootfs, layers: Vec::new() });
        }
        let _guard = self.flock(&self.rootfs_lock_path(digest), FlockOperation::LockExclusive)?;
        if let Some(rootfs) = self.unpacked(digest) {
            return Ok(Unpacked { rootfs, layers: Vec::new() });
        }
        let manifest = self.manifest(digest)?;
        let config = self.config(&manifest)?;
        let diff_ids = config.rootfs().diff_ids();
        // Layers that cannot be unpacked alone (a hard link into a lower
        // layer), and anything else that fails in the layered way, are
        // unpacked the old way, which is the reference: its error is the one
        // reported. A limit reached, a disk full or a blob that cannot be
        // read fail as they are.
        let layers = match self.unpack_layers(&manifest, diff_ids, options, on_layer) {
            Err(StoreError::Unpack { .. }) => {
                drop(ahead);
                return self.unpack_merged(digest, &manifest, diff_ids, options, on_layer);
            }
            result => result?,
        };
        let total = layers.iter().fold(0u64, |sum, (record, _)| sum.saturating_add(record.size));
        if let Some(limit) = self.max_unpacked.filter(|limit| total > *limit) {
            return Err(StoreError::UnpackedTooLarge { limit });
        }
        let blobs = manifest.layers().iter().map(manifest::descriptor_digest).collect::<Result<Vec<_>, _>>()?;
        let records = top_most(layers.iter().map(|(record, _)| record));
        for record in &records {
            self.make_link(&record.hex);
        }
        let rootfs = if self.layer_mounts(&records).is_some() {
            drop(ahead);
            self.name_layered(digest, layers.iter().map(|(record, _)| record))?
        } else {
            match self.assemble(digest, ahead, &layers, &blobs, diff_ids, options)? {
                Some(tree) => Rootfs::Tree(tree),
                // Linking failed (entries of one layer that land on one
                // place, a store split across file systems, a file's link
                // limit): the old way.
                None => return self.unpack_merged(digest, &manifest, diff_ids, options, on_layer),
            }
        };
        if !self.keep_layer_blobs {
            // Every layer is in `layers/` and the image is whole (its
            // layers named, or its tree): the blobs are no longer needed
            // to run it.
            self.drop_layer_blobs(&manifest);
        }
        let stats = layers.into_iter().map(|(_, stats)| stats.unwrap_or_default()).collect();
        Ok(Unpacked { rootfs, layers: stats })
    }

    /// Names the image `digest` as kept as its layers (`layered/<hex>`,
    /// their diff_ids in order), as renaming its tree into place would.
    fn name_layered<'r>(&self, digest: &Digest, records: impl Iterator<Item = &'r LayerRecord>) -> Result<Rootfs> {
        let list = records.map(|record| format!("sha256:{}", record.hex)).collect::<Vec<_>>();
        let path = self.layered_dir().join(digest.hex());
        let json = serde_json::to_vec(&list).map_err(|e| io_err(&path)(io::Error::other(e)))?;
        write_atomic(self, &path, &json)?;
        self.unpacked(digest).ok_or_else(|| StoreError::Io {
            path,
            source: io::Error::other("a layer of the image went as it was named"),
        })
    }

    /// Assembles the image's tree from its unpacked `layers` into
    /// `rootfs/`, going on from what was linked ahead (`ahead`) if it was
    /// for these layers. `None` when linking fails: the image must be
    /// unpacked the old way.
    fn assemble(
        &self,
        digest: &Digest,
        ahead: Option<RootfsAhead>,
        layers: &[(LayerRecord, Option<unpack::UnpackStats>)],
        blobs: &[Digest],
        diff_ids: &[String],
        options: &UnpackOptions,
    ) -> Result<Option<PathBuf>> {
        // What was linked ahead is kept if it was this image's layers, as
        // its manifest and config name them, in order.
        let begun = ahead.and_then(|RootfsAhead { temp, linked, layers, .. }| Some((temp?, linked, layers)));
        let named: Vec<(Digest, String)> = blobs.iter().cloned().zip(diff_ids.iter().cloned()).collect();
        let (temp, linked) = match begun.filter(|(_, _, layers)| *layers == named) {
            Some((temp, linked, _)) => (temp, linked),
            None => {
                let temp = self.temp_path(&format!("rootfs-{}", digest.short()));
                fs::create_dir(&temp).map_err(io_err(&temp))?;
                (TempTree(temp), 0)
            }
        };
        let assembled = layers
            .iter()
            .zip(blobs)
            .skip(linked)
            .try_for_each(|((record, _), blob)| self.link_recorded_layer(&temp.0, record, blob, options));
        match assembled {
            Ok(()) => {}
            Err(StoreError::Unpack { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let dest = self.rootfs_path(digest);
        fs::rename(&temp.0, &dest).map_err(io_err(&dest))?;
        temp.keep();
        Ok(Some(dest))
    }

    /// Each layer of the image unpacked alone (those the store has are
    /// reused), with what unpacking did for those unpacked now, in order.
    fn unpack_layers(
        &self,
        manifest: &oci_spec::image::ImageManifest,
        diff_ids: &[String],
        options: &UnpackOptions,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<(LayerRecord, Option<unpack::UnpackStats>)>> {
        let layers = manifest.layers();
        let n = layers.len();
        let mut found: Vec<Option<(LayerRecord, Option<unpack::UnpackStats>)>> = Vec::with_capacity(n);
        let mut missing = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let Some(diff_id) = diff_ids.get(i) else {
                let layer = manifest::descriptor_digest(layer)?;
                let actual = layer.clone();
                return Err(StoreError::DiffIdMismatch { layer, expected: "nothing".to_owned(), actual });
            };
            // Reused only for a blob shown to make it (else checked, by
            // `unpack_one_layer`).
            let blob = manifest::descriptor_digest(layer)?;
            let record = self.layer_record(diff_id).filter(|r| r.made_by(&blob));
            if record.is_none() {
                missing.push(i);
            }
            found.push(record.map(|r| (r, None)));
        }
        // What is left of the budget for the layers unpacked now.
        let reused = found.iter().flatten().fold(0u64, |sum, (r, _)| sum.saturating_add(r.size));
        let budget = self.max_unpacked.map(|max| std::sync::Arc::new(AtomicU64::new(max.saturating_sub(reused))));
        // One per core, at most 4: each decompressor may hold a large window.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4).min(missing.len()).max(1);
        let next = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let sender = sender.clone();
                let (missing, next, failed, budget) = (&missing, &next, &failed, &budget);
                scope.spawn(move || {
                    while !failed.load(Ordering::Relaxed) {
                        let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(&i) = missing.get(k) else { break };
                        let _ = sender.send((i, None));
                        let result = self.unpack_one_layer(&layers[i], &diff_ids[i], options, budget.clone());
                        failed.fetch_or(result.is_err(), Ordering::Relaxed);
                        let _ = sender.send((i, Some(result)));
                    }
                });
            }
            drop(sender);
            let mut first_error = None;
            for (i, result) in receiver {
                match result {
                    None => on_layer(i, n),
                    Some(Ok(done)) => found[i] = Some(done),
                    Some(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        })?;
        Ok(found.into_iter().flatten().collect())
    }

    /// The record of the layer with this diff_id, if the store has it whole.
    fn layer_record(&self, diff_id: &str) -> Option<LayerRecord> {
        let hex = diff_id_hex(diff_id)?;
        let dir = self.layers_dir().join(hex);
        let json = fs::read(self.layers_dir().join(format!("{hex}.json"))).ok()?;
        let record: LayerRecord = serde_json::from_slice(&json).ok()?;
        (dir.is_dir() && record.hex == hex).then_some(record)
    }

    /// Writes a layer's record (`layers/<hex>.json`, atomically); under the
    /// layer's lock.
    fn write_layer_record(&self, record: &LayerRecord) -> Result<()> {
        let path = self.layers_dir().join(format!("{}.json", record.hex));
        let json = serde_json::to_vec(record).map_err(|e| io_err(&path)(io::Error::other(e)))?;
        write_atomic(self, &path, &json)
    }

    /// Unpacks one layer alone into `layers/<diff_id>/` (under its lock:
    /// another process may be unpacking it), checking its diff_id.
    fn unpack_one_layer(
        &self,
        layer: &oci_spec::image::Descriptor,
        diff_id: &str,
        options: &UnpackOptions,
        budget: Option<std::sync::Arc<AtomicU64>>,
    ) -> Result<(LayerRecord, Option<unpack::UnpackStats>)> {
        self.unpack_layer_blob(&manifest::descriptor_digest(layer)?, diff_id, options, budget, None)
    }

    /// Unpacks the stored layer blob `layer_digest` alone into
    /// `layers/<diff_id>/`, as [`Store::unpack`] would, ahead of it: while
    /// a pull is still fetching the image's other layers. What unpacking
    /// did, when it was done now (not when the store had the layer). All
    /// the layers unpacked ahead for one image share `budget`
    /// ([`Store::layer_budget`]); [`Store::unpack`] checks the whole again.
    pub fn unpack_layer_ahead(
        &self,
        layer_digest: &Digest,
        diff_id: &str,
        options: &UnpackOptions,
        budget: &LayerBudget,
    ) -> Result<Option<unpack::UnpackStats>> {
        self.unpack_layer_blob(layer_digest, diff_id, options, budget.0.clone(), None).map(|(_, stats)| stats)
    }

    /// [`Store::unpack_layer_ahead`], from the layer blob's bytes as they are
    /// downloaded ([`follow`](crate::follow)) rather than from the stored
    /// blob: nothing made from them is named unless all of them hash to
    /// `layer_digest`.
    pub fn unpack_layer_following(
        &self,
        layer_digest: &Digest,
        diff_id: &str,
        options: &UnpackOptions,
        budget: &LayerBudget,
        source: (crate::follow::FollowReader, crate::follow::FollowCheck),
    ) -> Result<Option<unpack::UnpackStats>> {
        self.unpack_layer_blob(layer_digest, diff_id, options, budget.0.clone(), Some(source)).map(|(_, stats)| stats)
    }

    /// What an image's layers may hold uncompressed, for
    /// [`Store::unpack_layer_ahead`]: `[storage] max_image_size`.
    pub fn layer_budget(&self) -> LayerBudget {
        LayerBudget(self.max_unpacked.map(|max| std::sync::Arc::new(AtomicU64::new(max))))
    }

    fn unpack_layer_blob(
        &self,
        layer_digest: &Digest,
        diff_id: &str,
        options: &UnpackOptions,
        budget: Option<std::sync::Arc<AtomicU64>>,
        following: Option<(crate::follow::FollowReader, crate::follow::FollowCheck)>,
    ) -> Result<(LayerRecord, Option<unpack::UnpackStats>)> {
        let layer_digest = layer_digest.clone();
        let mismatch = |actual: Digest| StoreError::DiffIdMismatch {
            layer: layer_digest.clone(),
            expected: diff_id.to_owned(),
            actual,
        };
        let Some(hex) = diff_id_hex(diff_id) else {
            return Err(mismatch(layer_digest.clone()));
        };
        let lock =
            || self.flock(&self.root.join("locks").join(format!("layer-{hex}.lock")), FlockOperation::LockExclusive);
        // One process at a time unpacks a layer the store lacks (its turn,
        // [`Store::unpack_turn`]): the others wait while it makes progress,
        // and reuse what it names. One whose download stalls holds back no
        // one for long. The layer's lock is taken only to name what was
        // made.
        let (reader, check) = following.unzip();
        let made_by = |record: &LayerRecord| record.made_by(&layer_digest);
        let mut had = self.layer_record(diff_id);
        if let Some(record) = had.as_ref().filter(|record| made_by(record)) {
            return Ok((record.clone(), None));
        }
        let source: Box<dyn Read + Send> = match reader {
            Some(reader) => Box::new(reader),
            None => Box::new(self.open_blob(&layer_digest)?),
        };
        // The downloader's word on a blob being followed (none: stored).
        let feed = check.as_ref().map(crate::follow::FollowCheck::feed);
        let turn = match had {
            // Only this blob is read and hashed: no turn needed.
            Some(_) => None,
            None => {
                let turn = self.unpack_turn(hex, diff_id, &layer_digest, feed.as_deref())?;
                had = self.layer_record(diff_id);
                if let Some(record) = had.as_ref().filter(|record| made_by(record)) {
                    return Ok((record.clone(), None));
                }
                turn
            }
        };
        let mut refund = None;
        let result = (|| {
            let mut stream = self.layer_stream_from(&layer_digest, source, budget)?;
            refund = Some(stream.refund());
            // Should this end early, the reader stops waiting for bytes (or
            // the stream, dropped after it, would wait for the download).
            let mut abandon = check.as_ref().map(crate::follow::FollowCheck::abandon_on_drop);
            // The store has a layer with this diff_id, but this image's blob
            // was never shown to make it: the config's word is not enough
            // (another user's private layer would be had by naming its
            // digest). The blob is read through and hashed (no file of it
            // written), and named in the record if it makes the layer.
            // Otherwise the layer is unpacked into a directory of its own.
            let temp = match had {
                Some(_) => None,
                None => {
                    let temp = self.temp_path(&format!("layer-{}", &hex[..12]));
                    fs::create_dir(&temp).map_err(io_err(&temp))?;
                    Some(TempTree(temp))
                }
            };
            let unpacked = match &temp {
                Some(temp) => {
                    // Those waiting for this turn are told how far it got.
                    let mut tar = Reporting {
                        source: &mut stream.hashing,
                        turn: turn.as_ref(),
                        feed: feed.clone(),
                        read: 0,
                        told: None,
                    };
                    let unpacked = unpack::unpack_layer(&temp.0, &mut tar, options);
                    tar.tell();
                    Some(unpacked.map_err(|e| stream.unpack_error(e, &temp.0))?)
                }
                None => None,
            };
            let (actual, size) = stream.finish()?;
            // Bytes read as they were downloaded count only if they were the
            // blob's, all of them.
            if let Some(abandon) = &mut abandon {
                abandon.disarm();
            }
            if let Some(check) = check {
                let read =
                    check.finish().map_err(|source| StoreError::LayerRead { layer: layer_digest.clone(), source })?;
                if read != layer_digest {
                    return Err(StoreError::DigestMismatch { expected: layer_digest.clone(), actual: read });
                }
            }
            if actual.to_string() != diff_id {
                return Err(mismatch(actual));
            }
            Ok((temp, unpacked, size))
        })();
        let give_back = |_: &StoreError| refund.iter().for_each(Refund::give_back);
        let (temp, unpacked, size) = result.inspect_err(give_back)?;
        let guard = lock().inspect_err(give_back)?;
        // Under the lock: named by another since it was looked at, this
        // blob is added to its record (it was shown to make the layer).
        if let Some(mut record) = self.layer_record(diff_id) {
            if !record.made_by(&layer_digest) {
                record.blobs.push(layer_digest.to_string());
                self.write_layer_record(&record)?;
            }
            // What this one unpacked goes once the others may name theirs.
            drop(guard);
            drop(temp);
            return Ok((record, None));
        }
        let (Some(temp), Some(unpacked)) = (temp, unpacked) else {
            // Its record went while this blob was read (nothing else removes
            // one during a pull): unpacked again, with the image.
            let error = StoreError::LayerRead {
                layer: layer_digest.clone(),
                source: io::Error::other("the layer's record went while its blob was read"),
            };
            give_back(&error);
            return Err(error);
        };
        let record = LayerRecord {
            hex: hex.to_owned(),
            size,
            implicit: unpacked.implicit_dirs,
            dir_modes: unpacked.dir_modes,
            blobs: vec![layer_digest.to_string()],
            overlay: unpacked.overlay,
            trusted: unpacked.trusted,
        };
        let dir = self.layers_dir().join(hex);
        let named = (|| {
            if dir.exists() {
                // Left without its record: replaced.
                remove_tree(&dir)?;
            }
            // The record first: a layer directory is whole once it is in place.
            self.write_layer_record(&record)?;
            fs::rename(&temp.0, &dir).map_err(io_err(&dir))
        })();
        named.inspect_err(give_back)?;
        temp.keep();
        drop(guard);
        drop(turn);
        Ok((record, Some(unpacked.stats)))
    }

    /// Waits for this process's turn to unpack the layer `hex` from the
    /// blob `digest` (`locks/layer-<hex>.unpacking`, an exclusive flock),
    /// downloading as `feed` says (`None`: stored). `None` when there is
    /// nothing, or no more, to wait for: the layer was named meanwhile; this
    /// blob's download ended; the process whose turn it is unpacks another
    /// blob (its bytes would prove nothing of this one); it unpacked nothing
    /// more for [`UNPACK_STALL`] (its download stalls, say); or this blob is
    /// whole and verified, and the other's was not for [`UNPACK_STALL`] (a
    /// download that only claims the digest holds back no one who has the
    /// blob for longer). This process then unpacks the layer too, and
    /// whichever names it first is kept.
    fn unpack_turn(
        &self,
        hex: &str,
        diff_id: &str,
        digest: &Digest,
        feed: Option<&crate::follow::Feed>,
    ) -> Result<Option<UnpackTurn>> {
        let path = self.root.join("locks").join(format!("layer-{hex}.unpacking"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let whole = || feed.is_none_or(crate::follow::Feed::is_complete);
        let mut progress_seen: Option<(u64, std::time::Instant)> = None;
        let mut unverified_since = None;
        let mut other_seen = false;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    let turn = UnpackTurn(file);
                    turn.announce(digest, whole());
                    return Ok(Some(turn));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {}
                Err(e) => return Err(io_err(&path)(e.into())),
            }
            if self.layer_record(diff_id).is_some() || feed.is_some_and(crate::follow::Feed::has_ended) {
                return Ok(None);
            }
            let mut told = [0u8; TURN_TOLD];
            let read = std::os::unix::fs::FileExt::read_at(&file, &mut told, 0).unwrap_or(0);
            let mut unpacked = [0u8; 8];
            unpacked.copy_from_slice(&told[..8]);
            let (progress, verified, blob) = (u64::from_le_bytes(unpacked), told[8] == 1, &told[9..]);
            // Another blob, seen twice (a new turn may not have told its
            // own yet; nor may a file just made, which the stall ends).
            let other = read == TURN_TOLD && blob != digest.hex().as_bytes();
            if other && std::mem::replace(&mut other_seen, true) {
                return Ok(None);
            }
            other_seen &= other;
            let now = std::time::Instant::now();
            match progress_seen {
                Some((before, since)) if before == progress => {
                    if now.duration_since(since) >= UNPACK_STALL {
                        return Ok(None);
                    }
                }
                _ => progress_seen = Some((progress, now)),
            }
            if whole() && !verified {
                if now.duration_since(*unverified_since.get_or_insert(now)) >= UNPACK_STALL {
                    return Ok(None);
                }
            } else {
                unverified_since = None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A layer blob's uncompressed tar, decompressed and counted against
    /// `budget` on a thread of its own ([`ReadAhead`]) and hashed on this one
    /// as it is read: the decompression runs beside the unpacking, on the
    /// other core.
    fn layer_stream(&self, layer_digest: &Digest, budget: Option<std::sync::Arc<AtomicU64>>) -> Result<LayerStream> {
        let blob = self.open_blob(layer_digest)?;
        self.layer_stream_from(layer_digest, Box::new(blob), budget)
    }

    /// [`Store::layer_stream`] of the blob's bytes read from `blob`.
    fn layer_stream_from(
        &self,
        layer_digest: &Digest,
        blob: Box<dyn Read + Send>,
        budget: Option<std::sync::Arc<AtomicU64>>,
    ) -> Result<LayerStream> {
        let exceeded = std::sync::Arc::new(AtomicBool::new(false));
        let taken = std::sync::Arc::new(AtomicU64::new(0));
        let (flag, left, counted) = (exceeded.clone(), budget.clone(), taken.clone());
        let stream = ReadAhead::start(move || {
            let tar = unpack::decompress(io::BufReader::with_capacity(256 << 10, blob))?;
            Ok(Box::new(Budgeted { inner: tar, left, taken: counted, exceeded: flag }) as Box<dyn Read>)
        })
        .map_err(|source| StoreError::LayerRead { layer: layer_digest.clone(), source })?;
        Ok(LayerStream {
            hashing: HashingReader::new(stream),
            budget,
            taken,
            exceeded,
            layer: layer_digest.clone(),
            limit: self.max_unpacked.unwrap_or_default(),
        })
    }

    /// The old way, for an image no layer of which can be unpacked alone:
    /// each layer applied in order onto one root filesystem.
    fn unpack_merged(
        &self,
        digest: &Digest,
        manifest: &oci_spec::image::ImageManifest,
        diff_ids: &[String],
        options: &UnpackOptions,
        on_layer: &mut dyn FnMut(usize, usize),
    ) -> Result<Unpacked> {
        let dest = self.rootfs_path(digest);
        // Marked first: from now on its layer blobs are kept (also while it
        // is being unpacked).
        let mark = self.merged_dir().join(digest.hex());
        File::create(&mark).map_err(io_err(&mark))?;
        let temp = self.temp_path(&format!("rootfs-{}", digest.short()));
        fs::create_dir(&temp).map_err(io_err(&temp))?;
        let mut stats = Vec::new();
        let budget = self.max_unpacked.map(|max| std::sync::Arc::new(AtomicU64::new(max)));
        let result = (|| {
            let layers = manifest.layers();
            for (i, layer) in layers.iter().enumerate() {
                on_layer(i, layers.len());
                let layer_digest = manifest::descriptor_digest(layer)?;
                let mut stream = self.layer_stream(&layer_digest, budget.clone())?;
                let layer_stats = unpack::apply_layer(&temp, &mut stream.hashing, options)
                    .map_err(|e| stream.unpack_error(e, &temp))?;
                let (actual, _) = stream.finish()?;
                match diff_ids.get(i) {
                    Some(expected) if *expected == actual.to_string() => {}
                    expected => {
                        return Err(StoreError::DiffIdMismatch {
                            layer: layer_digest.clone(),
                            expected: expected.cloned().unwrap_or_else(|| "nothing".to_owned()),
                            actual,
                        });
                    }
                }
                stats.push(layer_stats);
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = remove_tree(&temp);
            return Err(e);
        }
        fs::rename(&temp, &dest).map_err(io_err(&dest))?;
        Ok(Unpacked { rootfs: Rootfs::Tree(dest), layers: stats })
    }
}

/// The hex of a `sha256:` diff_id, the name of its layer's directory; `None`
/// for anything else (a config names it: it is not trusted as a path).
fn diff_id_hex(diff_id: &str) -> Option<&str> {
    diff_id.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The uncompressed bytes left to the layers of one image unpacked ahead
/// ([`Store::unpack_layer_ahead`]), shared by them.
#[derive(Debug, Clone)]
pub struct LayerBudget(Option<std::sync::Arc<AtomicU64>>);

/// A layer unpacked alone (`layers/<hex>.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LayerRecord {
    /// The hex of its diff_id.
    hex: String,
    /// Bytes of its uncompressed tar.
    size: u64,
    /// The directories it only implies ([`unpack::LayerDir::implicit_dirs`]).
    /// Written as `implied`: a ces from before layers in overlay's format
    /// cannot read the record, and unpacks the layer anew in its own
    /// format, instead of assembling trees from this one that it would
    /// read wrongly (it knows no opaque attribute).
    #[serde(rename = "implied", alias = "implicit")]
    implicit: Vec<Vec<u8>>,
    /// The modes its directories keep off disk ([`unpack::LayerDir::dir_modes`]).
    #[serde(default)]
    dir_modes: Vec<(Vec<u8>, u32)>,
    /// The layer blobs (compressed digests) read and shown to make this
    /// layer: only an image with one of them reuses it.
    #[serde(default)]
    blobs: Vec<String>,
    /// Whether its whiteouts and opaque directories are overlayfs' own
    /// ([`unpack::LayerDir::overlay`]; layers unpacked before ces kept
    /// images as layers have `.wh.` files).
    #[serde(default)]
    overlay: bool,
    /// Whether its opaque directories carry `trusted.overlay.opaque` too.
    #[serde(default)]
    trusted: bool,
}

impl LayerRecord {
    /// Whether the layer can be an overlay's lower layer as it is on disk:
    /// in overlay's format, with no directory it only implies (an overlay
    /// would show that directory as the layer made it, where applying the
    /// layer keeps a lower layer's, or makes none), none whose mode it
    /// keeps off disk.
    fn mountable(&self) -> bool {
        self.overlay && self.implicit.is_empty() && self.dir_modes.is_empty()
    }

    /// Whether the blob `digest` was shown to make this layer.
    fn made_by(&self, digest: &Digest) -> bool {
        let digest = digest.to_string();
        self.blobs.contains(&digest)
    }
}

/// A layer blob's uncompressed tar as [`Store::layer_stream`] reads it, and
/// what its errors mean.
struct LayerStream {
    /// The tar, hashed as it is read.
    hashing: HashingReader<ReadAhead>,
    /// The budget it counts against, and what it took of it.
    budget: Option<std::sync::Arc<AtomicU64>>,
    taken: std::sync::Arc<AtomicU64>,
    /// Set when the image's size budget ran out.
    exceeded: std::sync::Arc<AtomicBool>,
    /// The blob.
    layer: Digest,
    /// `[storage] max_image_size`, for the error.
    limit: u64,
}

impl LayerStream {
    /// What gives back what this stream takes of its budget.
    fn refund(&self) -> Refund {
        Refund { left: self.budget.clone(), taken: self.taken.clone() }
    }

    /// An error of unpacking the stream into `dest`, as the store reports
    /// it: the budget ran out, the disk is full, or the layer is refused.
    fn unpack_error(&self, source: UnpackError, dest: &Path) -> StoreError {
        if self.exceeded.load(Ordering::Relaxed) {
            StoreError::UnpackedTooLarge { limit: self.limit }
        } else {
            space_error(source.out_of_space(), dest).unwrap_or(StoreError::Unpack { layer: self.layer.clone(), source })
        }
    }

    /// Reads what is left (the tar's end blocks and any padding after them
    /// count too): the digest and size of the whole tar.
    fn finish(self) -> Result<(Digest, u64)> {
        let (exceeded, limit, layer) = (self.exceeded, self.limit, self.layer);
        self.hashing.drain().map_err(|source| {
            if exceeded.load(Ordering::Relaxed) {
                StoreError::UnpackedTooLarge { limit }
            } else {
                StoreError::LayerRead { layer, source }
            }
        })
    }
}

/// A layer's uncompressed stream, cut off with an error (and `exceeded`
/// set) past what is `left` of the image's budget (shared by the layers
/// unpacked at once).
struct Budgeted<R> {
    inner: R,
    left: Option<std::sync::Arc<AtomicU64>>,
    /// What this stream took of it.
    taken: std::sync::Arc<AtomicU64>,
    exceeded: std::sync::Arc<AtomicBool>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(left) = &self.left {
            if left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(n as u64)).is_err() {
                self.exceeded.store(true, Ordering::Relaxed);
                return Err(io::Error::other("the image's layers hold more than the unpacked size limit"));
            }
            self.taken.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Gives back to the budget what a stream took, for a layer that was not
/// made after all (another try reads it again).
struct Refund {
    left: Option<std::sync::Arc<AtomicU64>>,
    taken: std::sync::Arc<AtomicU64>,
}

impl Refund {
    fn give_back(&self) {
        if let Some(left) = &self.left {
            left.fetch_add(self.taken.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// How long a process unpacking a layer may read nothing of its blob before
/// another that needs the layer stops waiting for it ([`Store::unpack_turn`]).
const UNPACK_STALL: std::time::Duration = std::time::Duration::from_secs(3);

/// What a process tells in its [`UnpackTurn`], at the start of the locked
/// file: the bytes of the layer's tar unpacked so far (8, little-endian),
/// whether its blob is whole and verified (1: stored, or its download
/// done), and the blob's digest (64 hex digits).
const TURN_TOLD: usize = 8 + 1 + 64;

/// A process's turn to unpack a layer ([`Store::unpack_turn`]): the locked
/// file. The turn ends when it is dropped.
struct UnpackTurn(File);

impl UnpackTurn {
    /// Tells the blob unpacked, and that nothing is yet.
    fn announce(&self, digest: &Digest, verified: bool) {
        let mut told = Vec::with_capacity(TURN_TOLD);
        told.extend_from_slice(&0u64.to_le_bytes());
        told.push(u8::from(verified));
        told.extend_from_slice(digest.hex().as_bytes());
        let _ = std::os::unix::fs::FileExt::write_at(&self.0, &told, 0);
    }

    fn tell(&self, unpacked: u64, verified: bool) {
        let mut told = [0u8; 9];
        told[..8].copy_from_slice(&unpacked.to_le_bytes());
        told[8] = u8::from(verified);
        let _ = std::os::unix::fs::FileExt::write_at(&self.0, &told, 0);
    }
}

/// A layer's tar as it is unpacked, in its [`UnpackTurn`] (if any): those
/// waiting are told how much of it was unpacked every 256 KiB, and at once
/// when the blob (`feed`: downloading; none: stored) becomes whole and
/// verified.
struct Reporting<'t, R> {
    source: R,
    turn: Option<&'t UnpackTurn>,
    feed: Option<std::sync::Arc<crate::follow::Feed>>,
    read: u64,
    /// What was last told: bytes, and whether verified.
    told: Option<(u64, bool)>,
}

impl<R> Reporting<'_, R> {
    fn verified(&self) -> bool {
        self.feed.as_ref().is_none_or(|feed| feed.is_complete())
    }

    /// Tells how far it got now.
    fn tell(&mut self) {
        if let Some(turn) = self.turn {
            let verified = self.verified();
            turn.tell(self.read, verified);
            self.told = Some((self.read, verified));
        }
    }
}

impl<R: Read> Read for Reporting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.source.read(buf)?;
        self.read += n as u64;
        if self.turn.is_some() {
            let (told, verified) = self.told.unwrap_or((0, false));
            if n == 0 || self.read - told >= 256 << 10 || (!verified && self.verified()) {
                self.tell();
            }
        }
        Ok(n)
    }
}

/// A directory in the store's `tmp/`, removed when dropped unless kept.
struct TempTree(PathBuf);

impl TempTree {
    /// The directory stays (it was renamed into place).
    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = remove_tree(&self.0);
        }
    }
}

/// A root filesystem begun while its image is pulled
/// ([`Store::assemble_ahead`]). Dropped, what it linked is removed.
pub struct RootfsAhead {
    digest: Digest,
    /// The image's layers, in order: blob and diff_id.
    layers: Vec<(Digest, String)>,
    /// How many of them are linked.
    linked: usize,
    /// Their uncompressed size.
    size: u64,
    /// The tree; `None` once linking failed.
    temp: Option<TempTree>,
}

impl RootfsAhead {
    /// How many layers are linked (none after a failure).
    #[cfg(test)]
    pub(crate) fn linked(&self) -> usize {
        if self.temp.is_some() { self.linked } else { 0 }
    }
}

/// What [`Store::unpack`] made.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// The image's root filesystem: an assembled tree, or its layers.
    pub rootfs: Rootfs,
    /// What each layer's unpacking did, in order (none when the cached
    /// root filesystem was already there).
    pub layers: Vec<unpack::UnpackStats>,
}

/// A blob being written: hashed as it goes, and renamed to its content
/// address by [`BlobWriter::commit`]. When the digest (and size) were known in
/// advance, commit first checks them. Dropped uncommitted, it removes its temp file.
pub struct BlobWriter {
    out: Option<HashingWriter<BufWriter<File>>>,
    temp: PathBuf,
    blobs: PathBuf,
    expected: Option<Digest>,
    size: Option<u64>,
}

impl BlobWriter {
    /// Where the blob is being written (in the store's `tmp/`); it becomes
    /// the blob, same file, when committed.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// The store error for a failed write into this blob: more bytes than the
    /// descriptor said, a full disk, another I/O error.
    pub fn write_error(&self, error: io::Error) -> StoreError {
        match (&self.expected, self.size) {
            (Some(digest), Some(expected)) if error.kind() == io::ErrorKind::InvalidData => {
                StoreError::TooLong { digest: digest.clone(), expected }
            }
            _ => io_err(&self.temp)(error),
        }
    }

    /// Checks the size and digest expected (if any), then moves the blob to
    /// its content address; returns its digest and size.
    pub fn commit(mut self) -> Result<(Digest, u64)> {
        let Some(out) = self.out.take() else { unreachable!("a BlobWriter is committed once, by value") };
        let (buffered, actual, written) = out.finish();
        buffered.into_inner().map_err(|e| io_err(&self.temp)(e.into_error()))?;
        if let Some(expected) = &self.expected {
            if let Some(size) = self.size.filter(|size| *size != written) {
                return Err(StoreError::SizeMismatch { digest: expected.clone(), expected: size, actual: written });
            }
            if actual != *expected {
                return Err(StoreError::DigestMismatch { expected: expected.clone(), actual });
            }
        }
        let dest = self.blobs.join(actual.hex());
        fs::rename(&self.temp, &dest).map_err(io_err(&dest))?;
        Ok((actual, written))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self.out.as_mut().ok_or_else(|| io::Error::other("blob already committed"))?;
        // Stop a registry that sends more than the descriptor said before it
        // fills the disk.
        if let Some(size) = self.size.filter(|size| out.written() + buf.len() as u64 > *size) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("more than the descriptor's {size} bytes")));
        }
        out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the temp file has been renamed away, so
        // this removes only what an abandoned or failed write left.
        let _ = fs::remove_file(&self.temp);
    }
}

/// Writes `bytes` to `path` through a temp file in the store, synced, then renamed.
fn write_atomic(store: &Store, path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = store.temp_path("file");
    let result = (|| {
        let mut file = File::create_new(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&temp);
        io_err(path)(e)
    })
}

/// Removes a file or a whole tree, even one with read-only directories (a
/// rootfs unpacked without root keeps the image's 0555 modes), by directory
/// fds that never follow a link nor cross a mount (see [`crate::fs`]).
pub fn remove_tree(path: &Path) -> Result<()> {
    crate::fs::remove_tree(path).map_err(|e| io_err(path)(e.into()))
}

fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

fn record_of(descriptor: &Descriptor) -> Option<ImageRecord> {
    let annotations = descriptor.annotations().as_ref()?;
    Some(ImageRecord {
        reference: annotations.get(REF_NAME)?.parse().ok()?,
        digest: manifest::descriptor_digest(descriptor).ok()?,
        media_type: descriptor.media_type().to_string(),
        manifest_size: descriptor.size(),
        pulled_at: annotations.get(PULLED_AT).and_then(|t| t.parse().ok()),
        index_digest: annotations.get(INDEX_DIGEST).and_then(|d| d.parse().ok()),
        provenance: Provenance::from_annotations(annotations),
        // One that cannot be read is no one's.
        loaded_by: annotations.get(LOADED_BY).map(|uid| uid.parse().unwrap_or(u32::MAX)),
    })
}

/// Whether the `index.json` entry `descriptor` is `record`'s name: the same
/// reference, pulled or loaded by the same user.
fn same_name(descriptor: &Descriptor, record: &ImageRecord) -> bool {
    ref_name(descriptor) == Some(record.reference.to_string().as_str())
        && record_of(descriptor).is_some_and(|stored| stored.loaded_by == record.loaded_by)
}

/// A ces digest as an oci-spec one.
pub fn oci_digest(digest: &Digest) -> oci_spec::image::Digest {
    // A ces Digest is always a valid sha256 digest, which oci-spec accepts.
    digest.to_string().parse().unwrap_or_else(|_| unreachable!("sha256 digests are valid OCI digests"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ces_testkit::misbehave::noise;

    /// A write that fails for want of room says which room: the disk's or
    /// the quota's; any other failure stays what it was.
    #[test]
    fn running_out_of_room_is_told_apart_from_other_write_errors() {
        let failed = |errno: rustix::io::Errno| {
            io_err(Path::new("/s/tmp/f"))(io::Error::from_raw_os_error(errno.raw_os_error()))
        };
        assert!(matches!(failed(rustix::io::Errno::NOSPC), StoreError::DiskFull { .. }));
        assert!(matches!(failed(rustix::io::Errno::DQUOT), StoreError::QuotaExceeded { .. }));
        assert!(matches!(failed(rustix::io::Errno::IO), StoreError::Io { .. }));
        let unpacking = |errno: rustix::io::Errno| unpack::UnpackError::Io {
            path: "x".into(),
            source: io::Error::from_raw_os_error(errno.raw_os_error()),
        };
        assert_eq!(unpacking(rustix::io::Errno::DQUOT).out_of_space(), Some(rustix::io::Errno::DQUOT.raw_os_error()));
        assert_eq!(unpacking(rustix::io::Errno::ACCESS).out_of_space(), None);
    }

    /// A tree whose paths are longer than `PATH_MAX` (300 levels of 20
    /// bytes) with a file at the bottom and a link to it at the top: the
    /// walk counts what GNU du counts, the linked file once, and a symbolic
    /// link to the top directory is not followed.
    #[test]
    fn the_walk_counts_what_du_counts_past_path_max() {
        use rustix::fs::{Mode, OFlags};
        let top = tempfile::tempdir().unwrap();
        let mut dir = rustix::fs::open(top.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..300 {
            rustix::fs::mkdirat(&dir, "d".repeat(20), Mode::from_raw_mode(0o755)).unwrap();
            dir = rustix::fs::openat(&dir, "d".repeat(20), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        let file =
            rustix::fs::openat(&dir, "data", OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o644)).unwrap();
        rustix::io::write(&file, &noise(100 << 10, 9)).unwrap();
        rustix::fs::linkat(&dir, "data", rustix::fs::CWD, top.path().join("link"), rustix::fs::AtFlags::empty())
            .unwrap();
        std::os::unix::fs::symlink(top.path(), top.path().join("up")).unwrap();
        rustix::fs::sync();
        let du = std::process::Command::new("du").arg("-sB1").arg(top.path()).output().unwrap();
        assert!(du.status.success(), "{}", String::from_utf8_lossy(&du.stderr));
        let du: u64 = String::from_utf8(du.stdout).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        let mut walk = Walk { dev: fs::metadata(top.path()).unwrap().dev(), ..Walk::default() };
        let path = CString::new(top.path().as_os_str().as_bytes()).unwrap();
        assert_eq!(walk.bytes_at(rustix::fs::CWD, &path), du);
        assert_eq!(walk.unreadable, 0);
        assert!((100 << 10..2 * (100 << 10) + 301 * 8192).contains(&du), "the file once: {du}");
    }

    /// How many layers an image kept as them may have: as many as fit in a
    /// page of `mount(2)` options (root's runs), or in `fsconfig(2)`'s
    /// 255-byte values (rootless runs, which libcontainer mounts): each
    /// layer a value of its own where the kernel has `lowerdir+`, else all
    /// of them numbered in one value.
    #[test]
    fn the_layers_a_run_can_mount() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let links =
            |n: usize| -> Vec<PathBuf> { (0..n).map(|i| store.links_dir().join(format!("{i:012x}"))).collect() };
        let dirs =
            |n: usize| -> Vec<PathBuf> { (0..n).map(|i| store.layers_dir().join(format!("{i:064x}"))).collect() };
        let most = |paths: &dyn Fn(usize) -> Vec<PathBuf>, root: bool, plus: bool| {
            (1..=crate::rootfs::MAX_LOWER_LAYERS).take_while(|n| store.mount_options_fit(&paths(*n), root, plus)).last()
        };
        let path = store.root.as_os_str().len();
        let run_dir = path + RUN_OVERLAY_PATH_BYTES;
        // Root: the page, less the run's two directories.
        let page = |each: usize| Some((MAX_LOWERDIR_BYTES - 2 * run_dir) / (each + 1));
        let idmapped = IDMAPPED_LOWER_PATH_BYTES;
        assert_eq!(most(&links, true, false), page((path + "/l/".len() + 12).max(idmapped)));
        assert_eq!(most(&dirs, true, false), page(path + "/layers/".len() + 64));
        assert!(most(&links, true, false) > most(&dirs, true, false), "short links: more layers");
        // Rootless: numbered, whatever the paths; one value each with lowerdir+.
        assert_eq!(most(&dirs, false, false), Some(88));
        assert_eq!(most(&links, false, true), Some(crate::rootfs::MAX_LOWER_LAYERS));
        // A store whose run directories' paths cannot be fsconfig values.
        let deep = tempfile::tempdir().unwrap();
        let store = Store::open(deep.path().join("d".repeat(200))).unwrap();
        assert!(!store.mount_options_fit(&[store.links_dir().join("0")], false, true));
        assert!(store.mount_options_fit(&[store.links_dir().join("0")], true, true));
    }

    /// A store made by an earlier version (every directory 0755) is closed
    /// to other users when it is next opened: the owner's alone, and as root
    /// its root searchable but not listable.
    #[test]
    fn an_open_store_is_reachable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        for sub in ["oci/blobs/sha256", "rootfs/abc", "tmp", "locks"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        for sub in ["", "oci", "rootfs", "tmp", "locks"] {
            fs::set_permissions(root.join(sub), fs::Permissions::from_mode(0o755)).unwrap();
        }
        Store::open(&root).unwrap();
        let mode = |sub: &str| fs::metadata(root.join(sub)).unwrap().permissions().mode() & 0o7777;
        let expected_root = if rustix::process::geteuid().is_root() { 0o711 } else { 0o700 };
        assert_eq!(mode(""), expected_root);
        for sub in ["oci", "rootfs", "layers", "layered", "l", "tmp", "locks"] {
            assert_eq!(mode(sub), 0o700, "{sub}");
        }
    }

    /// `rmi` and `gc` say they wait where the store is held (by a run, a
    /// pull, a load), and only then; the lock file is its owner's alone.
    #[test]
    fn a_removal_says_it_waits_for_the_stores_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let said = std::sync::atomic::AtomicBool::new(false);
        drop(store.lock_exclusive_saying(|| said.store(true, Ordering::SeqCst)).unwrap());
        assert!(!said.load(Ordering::SeqCst), "nothing held the store");
        let mode = fs::metadata(store.root().join("lock")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let held = store.lock_shared().unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| store.lock_exclusive_saying(|| said.store(true, Ordering::SeqCst)).unwrap());
            while !said.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(!waiter.is_finished(), "took the lock while a run held it");
            drop(held);
            assert!(waiter.join().unwrap().exclusive);
        });
    }

    /// Several ces starting at once on a store that does not exist yet: each
    /// opens it and takes the lock (as a pull does). None may lose a file
    /// another is writing (the first to take the lock empties `tmp/`).
    #[test]
    fn a_new_store_opened_by_several_at_once_is_whole_for_each() {
        for _ in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("store");
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let root = root.clone();
                    std::thread::spawn(move || {
                        let store = Store::open(&root)?;
                        let _lock = store.lock_shared()?;
                        store.images().map(|images| images.len())
                    })
                })
                .collect();
            for thread in threads {
                assert_eq!(thread.join().unwrap().unwrap(), 0);
            }
            assert!(root.join("oci/oci-layout").is_file());
        }
    }

    /// A layer read as its blob is downloaded is unpacked as far as its
    /// bytes go, and named only once all of them are there: here its files
    /// are all written while the blob's last bytes (the gzip trailer) have
    /// not come, and the layer is not named until they do. (That the bytes
    /// must hash to the blob's digest: the next tests.)
    #[test]
    fn a_layer_followed_while_downloading_is_named_only_once_its_blob_is_whole() {
        use ces_testkit::{Entry, Layer};
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let layer = Layer::new(vec![Entry::file("a", "first"), Entry::file("b", vec![7u8; 300_000])]);
        let (blob, diff_id) = (layer.blob(), Digest::of(&layer.tar()).to_string());
        let digest = Digest::of(&blob);
        let path = dir.path().join("partial");
        let mut file = File::create(&path).unwrap();
        file.write_all(&blob[..blob.len() - 4]).unwrap();
        let feed = crate::follow::Feed::new();
        let source = crate::follow::follow(File::open(&path).unwrap(), blob.len() as u64, feed.clone());
        let options = UnpackOptions::for_current_user();
        let unpacking = std::thread::scope(|scope| {
            let unpacking = scope
                .spawn(|| store.unpack_layer_following(&digest, &diff_id, &options, &store.layer_budget(), source));
            // Every file written (a bound on the wait, not a measure)...
            let written = || {
                fs::read_dir(store.tmp_dir()).unwrap().flatten().any(|e| {
                    fs::metadata(e.path().join("b")).is_ok_and(|m| m.len() == 300_000) && e.path().join("a").exists()
                })
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !written() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(written(), "the layer's files are written before its blob's last bytes come");
            std::thread::sleep(std::time::Duration::from_millis(50));
            // ...but nothing named.
            assert!(store.layer_record(&diff_id).is_none() && !unpacking.is_finished());
            file.write_all(&blob[blob.len() - 4..]).unwrap();
            feed.complete();
            unpacking.join().unwrap()
        });
        assert!(unpacking.unwrap().is_some(), "unpacked now");
        let record = store.layer_record(&diff_id).expect("named once the blob is whole");
        assert!(record.made_by(&digest));
        assert_eq!(fs::read(store.layers_dir().join(digest_hex(&diff_id)).join("a")).unwrap(), b"first");
    }

    /// `blob` as a whole downloaded file, followed.
    fn downloaded(dir: &Path, blob: &[u8]) -> (crate::follow::FollowReader, crate::follow::FollowCheck) {
        let path = dir.join(format!("downloaded-{}", Digest::of(blob).short()));
        fs::write(&path, blob).unwrap();
        let feed = crate::follow::Feed::new();
        feed.complete();
        crate::follow::follow(File::open(&path).unwrap(), blob.len() as u64, feed)
    }

    /// A store with a budget of `max` bytes, and that budget.
    fn budgeted(dir: &Path, max: u64) -> (Store, LayerBudget) {
        let store = Store::open(dir.join("store")).unwrap().with_max_unpacked(Some(max));
        let budget = store.layer_budget();
        (store, budget)
    }

    fn left(budget: &LayerBudget) -> u64 {
        budget.0.as_ref().unwrap().load(Ordering::Relaxed)
    }

    #[test]
    fn bytes_downloaded_that_are_not_the_blobs_make_no_layer() {
        use ces_testkit::{Entry, Layer};
        let dir = tempfile::tempdir().unwrap();
        let (store, budget) = budgeted(dir.path(), 10 << 20);
        // A valid layer (the tar is the diff_id), under another blob's digest.
        let layer = Layer::new(vec![Entry::file("data", noise(100_000, 7))]);
        let diff_id = Digest::of(&layer.tar()).to_string();
        let claimed = Digest::of(b"another blob");
        let options = UnpackOptions::for_current_user();
        let result =
            store.unpack_layer_following(&claimed, &diff_id, &options, &budget, downloaded(dir.path(), &layer.blob()));
        assert!(matches!(result, Err(StoreError::DigestMismatch { .. })), "{result:?}");
        assert!(store.layer_record(&diff_id).is_none(), "nothing named");
        assert!(fs::read_dir(store.tmp_dir()).unwrap().next().is_none(), "nothing left");
        assert_eq!(left(&budget), 10 << 20, "what it took of the budget given back");
    }

    #[test]
    fn a_layer_that_is_not_its_diff_id_gives_its_budget_back() {
        use ces_testkit::{Entry, Layer};
        let dir = tempfile::tempdir().unwrap();
        let (store, budget) = budgeted(dir.path(), 10 << 20);
        let blob = Layer::new(vec![Entry::file("big", noise(1_000_000, 7))]).blob();
        let wrong = Digest::of(b"not this layer").to_string();
        let options = UnpackOptions::for_current_user();
        let result =
            store.unpack_layer_following(&Digest::of(&blob), &wrong, &options, &budget, downloaded(dir.path(), &blob));
        assert!(matches!(result, Err(StoreError::DiffIdMismatch { .. })), "{result:?}");
        assert_eq!(left(&budget), 10 << 20);
    }

    #[test]
    fn an_unpacking_error_while_the_download_stalls_ends_at_once() {
        use ces_testkit::{Entry, Layer};
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let (store, budget) = budgeted(dir.path(), 100 << 20);
        // Refused at its first entry; only the blob's first 4 KiB come, and
        // the download never ends: the reader must stop waiting, or the
        // read-ahead thread it runs on could not be joined.
        let layer = Layer::new(vec![Entry::file("../escape", "x"), Entry::file("big", noise(2_000_000, 7))]);
        let (blob, diff_id) = (layer.blob(), Digest::of(&layer.tar()).to_string());
        let path = dir.path().join("partial");
        File::create(&path).unwrap().write_all(&blob[..4096]).unwrap();
        let feed = crate::follow::Feed::new();
        let source = crate::follow::follow(File::open(&path).unwrap(), blob.len() as u64, feed.clone());
        let options = UnpackOptions::for_current_user();
        let (done, result) = std::sync::mpsc::channel();
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                let result = store.unpack_layer_following(&Digest::of(&blob), &diff_id, &options, &budget, source);
                done.send(result.map(|_| ())).unwrap();
            });
            // A bound on the wait, not a measure.
            let result = result.recv_timeout(std::time::Duration::from_secs(10));
            // Should it hang, the download ends so that the scope can.
            feed.end();
            result.expect("the unpacking ended while the download stalled")
        });
        assert!(matches!(result, Err(StoreError::Unpack { .. })), "{result:?}");
        assert_eq!(left(&budget), 100 << 20);
        assert!(fs::read_dir(store.tmp_dir()).unwrap().next().is_none(), "nothing left");
    }

    /// Two blobs followed and one stored, all of one layer (gzip, plain,
    /// zstd), unpacked at once: one layer, its record naming all three
    /// blobs, nothing left in `tmp/`.
    #[test]
    fn three_blobs_of_one_layer_unpacked_at_once_name_it_once() {
        use ces_testkit::{Compression, Entry, Layer};
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("store")).unwrap();
            let layer = Layer::new(vec![Entry::file("a", "first"), Entry::file("big", noise(300_000, 7))]);
            let diff_id = Digest::of(&layer.tar()).to_string();
            let blobs: Vec<Vec<u8>> = [Compression::Gzip, Compression::None, Compression::Zstd]
                .into_iter()
                .map(|c| layer.clone().compressed(c).blob())
                .collect();
            let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
            store.write_blob(&digests[2], &blobs[2]).unwrap();
            let options = UnpackOptions::for_current_user();
            let barrier = std::sync::Barrier::new(3);
            let made: Vec<bool> = std::thread::scope(|scope| {
                let (store, options, barrier, diff_id) = (&store, &options, &barrier, &diff_id);
                let mut unpacking: Vec<_> = (0..2)
                    .map(|i| {
                        let (digest, source) = (&digests[i], downloaded(dir.path(), &blobs[i]));
                        scope.spawn(move || {
                            barrier.wait();
                            store.unpack_layer_following(digest, diff_id, options, &store.layer_budget(), source)
                        })
                    })
                    .collect();
                unpacking.push(scope.spawn(|| {
                    barrier.wait();
                    store.unpack_layer_ahead(&digests[2], diff_id, options, &store.layer_budget())
                }));
                unpacking.into_iter().map(|u| u.join().unwrap().unwrap().is_some()).collect()
            });
            assert!(made.contains(&true), "round {round}: {made:?}");
            let record = store.layer_record(&diff_id).expect("named");
            assert!(digests.iter().all(|d| record.made_by(d)), "round {round}: {:?}", record.blobs);
            assert!(fs::read_dir(store.tmp_dir()).unwrap().next().is_none(), "round {round}: nothing left");
            assert_eq!(fs::read_dir(store.layers_dir()).unwrap().count(), 2, "round {round}: one layer and its record");
            assert_eq!(fs::read(store.layers_dir().join(digest_hex(&diff_id)).join("a")).unwrap(), b"first");
        }
    }

    /// `blob` written into a file `step` bytes every 10 ms by a thread, as a
    /// download would, and followed; `None` for `step`: only its first 4
    /// KiB, and no more until the feed ends.
    fn arriving<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        dir: &Path,
        blob: &'s [u8],
        step: Option<usize>,
    ) -> ((crate::follow::FollowReader, crate::follow::FollowCheck), std::sync::Arc<crate::follow::Feed>) {
        use std::io::Write as _;
        let path = dir.join(format!("arriving-{}-{}", Digest::of(blob).short(), step.unwrap_or(0)));
        let mut file = File::create(&path).unwrap();
        let feed = crate::follow::Feed::new();
        let source = crate::follow::follow(File::open(&path).unwrap(), blob.len() as u64, feed.clone());
        match step {
            Some(step) => {
                let feeding = feed.clone();
                scope.spawn(move || {
                    for chunk in blob.chunks(step) {
                        file.write_all(chunk).unwrap();
                        feeding.progressed();
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    feeding.complete();
                });
            }
            None => file.write_all(&blob[..4096]).unwrap(),
        }
        (source, feed)
    }

    type Unpacking<'s> = std::thread::ScopedJoinHandle<'s, Result<Option<unpack::UnpackStats>>>;

    /// A layer of a test: the store, its blob's digest and its diff_id.
    struct Turns {
        dir: tempfile::TempDir,
        store: Store,
        digest: Digest,
        diff_id: String,
    }

    impl Turns {
        /// A store, and a layer of `layer` (its blob stored if `stored`).
        fn new(layer: &ces_testkit::Layer, stored: bool) -> Turns {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("store")).unwrap();
            let blob = layer.blob();
            let digest = Digest::of(&blob);
            if stored {
                store.write_blob(&digest, &blob).unwrap();
            }
            Turns { dir, store, digest, diff_id: Digest::of(&layer.tar()).to_string() }
        }

        /// The layer unpacked on a thread of `scope` from `blob` as it
        /// arrives ([`arriving`]), said to be the layer's blob; returned once
        /// its unpacking has begun (a bound on the wait, not a measure).
        fn arriving<'s>(
            &'s self,
            scope: &'s std::thread::Scope<'s, '_>,
            blob: &'s [u8],
            step: Option<usize>,
        ) -> (Unpacking<'s>, std::sync::Arc<crate::follow::Feed>) {
            let (source, feed) = arriving(scope, self.dir.path(), blob, step);
            let unpacking = self.following(scope, source);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while fs::read_dir(self.store.tmp_dir()).unwrap().next().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (unpacking, feed)
        }

        /// The layer unpacked on a thread of `scope` as `source` reads it.
        fn following<'s>(
            &'s self,
            scope: &'s std::thread::Scope<'s, '_>,
            source: (crate::follow::FollowReader, crate::follow::FollowCheck),
        ) -> Unpacking<'s> {
            let options = UnpackOptions::for_current_user();
            let budget = self.store.layer_budget();
            scope.spawn(move || {
                self.store.unpack_layer_following(&self.digest, &self.diff_id, &options, &budget, source)
            })
        }

        /// The layer unpacked from its stored blob.
        fn unpack_stored(&self) -> Result<Option<unpack::UnpackStats>> {
            let options = UnpackOptions::for_current_user();
            self.store.unpack_layer_ahead(&self.digest, &self.diff_id, &options, &self.store.layer_budget())
        }

        fn named(&self) -> bool {
            self.store.layer_record(&self.diff_id).is_some_and(|record| record.made_by(&self.digest))
        }
    }

    /// One process at a time unpacks a layer: another that needs it (here
    /// from the stored blob) waits while the first, following its
    /// download, makes progress, and reuses the layer it names.
    #[test]
    fn a_layer_being_unpacked_is_waited_for_not_unpacked_twice() {
        use ces_testkit::{Entry, Layer};
        let layer = Layer::new(vec![Entry::file("a", "first"), Entry::file("big", noise(4_000_000, 7))]);
        let (t, blob) = (Turns::new(&layer, true), layer.blob());
        let (first, second) = std::thread::scope(|scope| {
            let (first, _) = t.arriving(scope, &blob, Some(256 << 10));
            let second = t.unpack_stored();
            (first.join().unwrap().unwrap(), second.unwrap())
        });
        assert!(first.is_some(), "the first unpacked it");
        assert!(second.is_none(), "the second reused it");
        assert!(t.named());
        assert!(fs::read_dir(t.store.tmp_dir()).unwrap().next().is_none(), "nothing left");
    }

    /// A process whose download stalls in the middle of a layer holds back
    /// another that needs the layer only for [`UNPACK_STALL`]: that one then
    /// unpacks it, and names it. (The other's download has all the bytes
    /// but is not said to be done: only the stall ends the wait.)
    #[test]
    fn a_layer_whose_unpacking_stalls_is_unpacked_by_another() {
        use ces_testkit::{Entry, Layer};
        let layer = Layer::new(vec![Entry::file("a", "first"), Entry::file("big", noise(1_000_000, 7))]);
        let (t, blob) = (Turns::new(&layer, false), layer.blob());
        let (stalled, second) = std::thread::scope(|scope| {
            let (stalled, feed) = t.arriving(scope, &blob, None);
            let path = t.dir.path().join("all-bytes");
            fs::write(&path, &blob).unwrap();
            let bytes_come = crate::follow::Feed::new();
            let source = crate::follow::follow(File::open(&path).unwrap(), blob.len() as u64, bytes_come.clone());
            let started = std::time::Instant::now();
            let second = t.following(scope, source);
            // A bound on the wait, not a measure.
            while !second.is_finished() && started.elapsed() < UNPACK_STALL * 5 {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let waited = started.elapsed();
            // Both downloads end, so that the scope can.
            feed.end();
            bytes_come.end();
            let second = second.join().unwrap();
            assert!(waited >= UNPACK_STALL && waited < UNPACK_STALL * 5, "waited {waited:?}");
            (stalled.join().unwrap(), second)
        });
        assert!(second.unwrap().is_some(), "the second unpacked it");
        assert!(stalled.is_err(), "the stalled download ended short: {stalled:?}");
        assert!(t.named());
    }

    /// A process following a download that only claims a layer's blob
    /// (another tar, under the blob's digest: found out only at its end)
    /// holds back one that has the blob stored and verified for
    /// [`UNPACK_STALL`] at most, however steadily its bytes come.
    #[test]
    fn a_download_that_only_claims_the_blob_holds_back_one_that_has_it_briefly() {
        use ces_testkit::{Entry, Layer};
        let layer = Layer::new(vec![Entry::file("a", "the real layer")]);
        let t = Turns::new(&layer, true);
        // 20 MB that do not compress, 32 KiB every 10 ms: about 6 s, twice
        // the longest a process that has the blob waits.
        let bogus = Layer::new(vec![Entry::file("big", noise(20_000_000, 7))]).blob();
        let (held_back, claimed_done) = std::thread::scope(|scope| {
            let (claimed, _) = t.arriving(scope, &bogus, Some(32 << 10));
            let started = std::time::Instant::now();
            let own = t.unpack_stored();
            let (held_back, claimed_done) = (started.elapsed(), claimed.is_finished());
            assert!(held_back >= UNPACK_STALL, "it waited for the other: {held_back:?}");
            assert!(own.unwrap().is_some(), "unpacked from its own blob");
            assert!(claimed.join().unwrap().is_err(), "the claimed blob was not the blob");
            (held_back, claimed_done)
        });
        assert!(!claimed_done, "named before the other's download ended (held back {held_back:?})");
        assert!(t.named());
        assert_eq!(fs::read(t.store.layers_dir().join(digest_hex(&t.diff_id)).join("a")).unwrap(), b"the real layer");
    }

    /// A layer record is written so that a ces from before layers in
    /// overlay's format cannot read it (its `implicit` field is `implied`),
    /// and a record that ces wrote is still read.
    #[test]
    fn layer_records_are_unreadable_to_ces_before_overlay_layers() {
        let record = LayerRecord {
            hex: "ab".repeat(32),
            size: 1,
            implicit: vec![b"x".to_vec()],
            dir_modes: Vec::new(),
            blobs: Vec::new(),
            overlay: true,
            trusted: true,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert!(json.get("implied").is_some() && json.get("implicit").is_none(), "{json}");
        let old = serde_json::json!({ "hex": "ab".repeat(32), "size": 1, "implicit": [[120]] });
        let read: LayerRecord = serde_json::from_value(old).unwrap();
        assert_eq!(read.implicit, [b"x".to_vec()]);
        assert!(!read.overlay && !read.trusted, "an old layer is in the `.wh.` format");
    }

    /// `ces gc` removes the files of the layers' turns (no turn is held
    /// while it holds the store), those of layers it keeps too.
    #[test]
    fn gc_removes_the_turn_files() {
        use ces_testkit::{Entry, Layer};
        let layer = Layer::new(vec![Entry::file("a", "a")]);
        let t = Turns::new(&layer, true);
        assert!(t.unpack_stored().unwrap().is_some());
        let turns = || {
            fs::read_dir(t.store.root().join("locks"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".unpacking"))
                .count()
        };
        assert_eq!(turns(), 1, "the layer's turn file");
        let lock = t.store.lock_exclusive().unwrap();
        t.store.gc(&lock).unwrap();
        assert_eq!(turns(), 0);
    }

    /// A process waiting for its turn to unpack a layer whose download
    /// ends (the pull failed) stops waiting at once.
    #[test]
    fn a_download_that_ends_stops_the_wait_for_its_turn() {
        use ces_testkit::{Entry, Layer};
        // 12 MB that do not compress, 64 KiB every 10 ms: about 2 s.
        let layer = Layer::new(vec![Entry::file("big", noise(12_000_000, 7))]);
        let (t, blob) = (Turns::new(&layer, false), layer.blob());
        let (waiter, holder_done) = std::thread::scope(|scope| {
            let (holder, _) = t.arriving(scope, &blob, Some(64 << 10));
            let (source, feed) = arriving(scope, t.dir.path(), &blob, None);
            feed.end();
            let waiter = t.following(scope, source).join().unwrap();
            let holder_done = holder.is_finished();
            assert!(holder.join().unwrap().unwrap().is_some(), "the first unpacked it");
            (waiter, holder_done)
        });
        assert!(waiter.is_err(), "the ended download is an error: {waiter:?}");
        assert!(!holder_done, "it stopped waiting before the other was done");
    }

    /// The hex digits of a `sha256:` diff_id.
    fn digest_hex(diff_id: &str) -> &str {
        diff_id.strip_prefix("sha256:").unwrap()
    }
}
