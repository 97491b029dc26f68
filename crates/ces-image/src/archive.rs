//! Loading images from archive files, the way a TRE's airlock brings them
//! in: OCI archives (a tar of an OCI image layout, as `skopeo copy ...
//! oci-archive:FILE`, `podman save --format oci-archive` and `docker save`
//! 25+ write them) and legacy `docker save` tarballs, plain or compressed
//! with gzip or zstd (recognised by their first bytes).
//!
//! # One streaming pass
//!
//! The archive is read once, front to back, since it may arrive on a pipe.
//! Its entries come in any order (`index.json` often after the blobs it
//! names), so nothing is decided while reading:
//!
//! - `blobs/sha256/<hex>` streams into the store through
//!   [`Store::blob_writer`], so it is verified against its name on the way;
//! - `index.json`, `oci-layout` and `manifest.json` are kept in memory (at
//!   most [`MAX_JSON_BYTES`] each);
//! - every other regular file (a `docker save` layer or config) streams into
//!   the store under the digest computed as it goes
//!   ([`Store::computed_blob_writer`]), and its name is remembered;
//! - symbolic and hard links are remembered as aliases of the name they
//!   point to (`docker save` links a layer it has already written).
//!
//! Entry names are only keys into that table, never paths: nothing but
//! blobs in the store is ever written, and a name that climbs out of the
//! archive (`..`, an absolute path) is refused.
//!
//! Once the archive is read, its images are resolved (an index to the
//! wanted platform, a `docker save` entry to an OCI manifest written here),
//! every blob they need is checked to have come in the archive, and only
//! then are they named in the store. The blobs are written to a directory
//! of the load's own in the store's `tmp/` ([`Store::staged`]), read from
//! there while the images are resolved, and only the blobs of those images
//! are moved into the store: whatever else an archive holds (files outside
//! `blobs/`, blobs no image names) never stays, and a load that fails names
//! nothing and keeps nothing.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;

use oci_spec::image::{Descriptor, ImageIndex};

use crate::digest::{Digest, HashingWriter};
use crate::manifest::{self, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest, ManifestError, Platform};
use crate::provenance::Provenance;
use crate::quota::Shortfall;
use crate::quote::quote;
use crate::reference::{ImageReference, ReferenceError};
use crate::store::{BlobWriter, ImageRecord, REF_NAME, Store, StoreError, StoreLock};
use crate::tar_limits::{Bounded, ExtensionTooLarge};
use crate::unpack::{self, Compression};

/// The largest `index.json`, `oci-layout` or `manifest.json` read from an archive.
pub const MAX_JSON_BYTES: u64 = 4 << 20;
/// The most entries an archive may have (a `docker save` of a 100-layer image has about 400).
pub const MAX_ENTRIES: u64 = 100_000;
/// The annotation containerd, BuildKit and `docker save` put the full image name in,
/// when `org.opencontainers.image.ref.name` holds only the tag.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The media type of the image config in manifests written for `docker save` tarballs.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

const INDEX_JSON: &str = "index.json";
const OCI_LAYOUT: &str = "oci-layout";
const MANIFEST_JSON: &str = "manifest.json";
/// How many indexes deep an image may be nested below `index.json`.
const MAX_INDEX_DEPTH: usize = 4;
/// How many links one name may go through.
const MAX_LINK_DEPTH: usize = 16;
/// The most names one load gives images (`docker save` of many tags, an
/// index naming many): each is an entry of the store's `index.json`, which
/// every later command reads.
pub const MAX_NAMES: usize = 256;
/// The most bytes of entry names and link targets an archive may have, all
/// together (they are kept in memory until its end; real archives have
/// kilobytes).
pub const MAX_NAME_BYTES: u64 = 16 << 20;
/// Size of the buffer entry data is copied through.
const COPY_BUFFER_LEN: usize = 256 << 10;

/// Why an archive cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The input could not be read at all.
    #[error("cannot read the archive")]
    Read {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The input is not a tar archive (nor a gzip or zstd compressed one).
    #[error("the input is not a tar archive (plain, gzip or zstd compressed)")]
    NotATar {
        /// What the tar reader said about the first block.
        #[source]
        source: io::Error,
    },
    /// The archive has no entries.
    #[error("the archive is empty")]
    Empty,
    /// The archive stops early.
    #[error("the archive is truncated: it ends {}", match entry {
        Some(entry) => format!("in the middle of entry {}", quote(entry)),
        None => "early".to_owned(),
    })]
    Truncated {
        /// The entry being read when it stopped.
        entry: Option<String>,
    },
    /// The archive cannot be read past some point.
    #[error("the archive is corrupt{}", entry.as_ref().map(|e| format!(" after entry {}", quote(e))).unwrap_or_default())]
    Corrupt {
        /// The last entry read whole, if any.
        entry: Option<String>,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry's name, or a link's target, is not a name inside the archive.
    #[error("archive entry {:?} {reason}", quote(entry))]
    UnsafeEntry {
        /// The entry's name, as written in the archive.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A tar extension header (a GNU long name or link, a PAX header) is
    /// larger than its limit; it was refused before it was read.
    #[error(transparent)]
    ExtensionTooLarge(#[from] ExtensionTooLarge),
    /// The archive has more entries than any image archive needs.
    #[error("the archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// The store's file system, or the disk quota that holds ces there, has
    /// no room for an entry: refused before it was written.
    #[error("{}", no_room(path, entry, *needed, shortfall))]
    NoRoom {
        /// The store's root.
        path: std::path::PathBuf,
        /// The entry.
        entry: String,
        /// Its size.
        needed: u64,
        /// What lacks room.
        shortfall: Shortfall,
    },
    /// The archive's entry names and link targets are longer, all
    /// together, than any image archive's.
    #[error("the archive's entry names and link targets take more than {limit} bytes")]
    NamesTooLong {
        /// The limit.
        limit: u64,
    },
    /// The archive names more images than one load may.
    #[error("the archive gives {count} names, more than the {limit} one load may")]
    TooManyNames {
        /// The names given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// `index.json`, `oci-layout` or `manifest.json` is too large to be real.
    #[error("{} is larger than the {limit}-byte limit", quote(entry))]
    JsonTooLarge {
        /// The entry.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// A JSON document of the archive cannot be read.
    #[error("{} in the archive is not valid", quote(entry))]
    InvalidJson {
        /// The entry (or the document) that is invalid.
        entry: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The `oci-layout` file names a layout version ces does not read.
    #[error("the archive's OCI image layout version {:?} is not supported (1.x is)", quote(version))]
    UnsupportedLayout {
        /// The `imageLayoutVersion`.
        version: String,
    },
    /// The archive is a tar, but of neither known layout.
    #[error("the archive holds neither an OCI image layout (index.json) nor a docker save manifest (manifest.json)")]
    Unrecognized,
    /// The archive's `index.json` or `manifest.json` lists no images.
    #[error("the archive holds no images")]
    NoImages,
    /// A blob of the archive could not be stored, or is not what its name says.
    #[error("cannot store {} from the archive", quote(entry))]
    Blob {
        /// The entry.
        entry: String,
        /// The cause (a digest mismatch names the digest).
        #[source]
        source: StoreError,
    },
    /// A blob an image needs is not in the archive.
    #[error("the archive does not hold {digest}, which {needed_by} needs")]
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// What needs it (`index.json`, `manifest sha256:...`).
        needed_by: String,
    },
    /// A file `manifest.json` names is not in the archive.
    #[error("manifest.json names {}, which the archive does not hold", quote(path))]
    MissingFile {
        /// The path, as `manifest.json` has it.
        path: String,
    },
    /// A blob is not the size its descriptor says.
    #[error("{digest} is {actual} bytes in the archive, but {needed_by} says {expected}")]
    BlobSize {
        /// The blob.
        digest: Digest,
        /// The size in the descriptor.
        expected: u64,
        /// The size in the archive.
        actual: u64,
        /// The document holding the descriptor.
        needed_by: String,
    },
    /// A manifest of the archive cannot be used.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Indexes nested deeper than any real image has them.
    #[error("index {digest} is nested more than {MAX_INDEX_DEPTH} deep")]
    IndexTooDeep {
        /// The index.
        digest: Digest,
    },
    /// An index of the archive has no image for the platform.
    #[error("the archive has no image for {platform}{}", if available.is_empty() {
        String::new()
    } else {
        format!(" (it has {})", quote(&available.join(", ")))
    })]
    NoPlatform {
        /// The wanted platform.
        platform: String,
        /// The platforms offered.
        available: Vec<String>,
    },
    /// An image has no name to store it under.
    #[error("the archive does not name image {digest}{}", tag.as_ref().map(|t| format!(" (only by the tag {:?})", quote(t))).unwrap_or_default())]
    NoName {
        /// The image manifest.
        digest: Digest,
        /// The bare tag the archive gives it (`1.0`), if any.
        tag: Option<String>,
    },
    /// A name in the archive is not an image reference.
    #[error("the archive's name for image {digest} is not usable")]
    BadName {
        /// The image manifest.
        digest: Digest,
        /// Why.
        #[source]
        source: ReferenceError,
    },
    /// One name was given, for an archive of several images.
    #[error("one name was given, but the archive holds {count} images")]
    SeveralImages {
        /// How many distinct images the archive holds.
        count: usize,
    },
    /// A name pins a digest other than the image's.
    #[error("{reference} pins another digest than the image's {digest}")]
    NameDigest {
        /// The name.
        reference: ImageReference,
        /// The image manifest.
        digest: Digest,
    },
    /// The config and `manifest.json` disagree on the number of layers.
    #[error("image config {config} lists {diff_ids} layers, but manifest.json lists {layers}")]
    LayerCount {
        /// The config blob.
        config: Digest,
        /// Layers in `manifest.json`.
        layers: usize,
        /// `rootfs.diff_ids` in the config.
        diff_ids: usize,
    },
    /// A layer of a `docker save` tarball is not the one its config names.
    #[error("layer {} is {actual} uncompressed, but the image config says {}", quote(layer), quote(expected))]
    DiffId {
        /// The layer's path in the archive.
        layer: String,
        /// The config's `diff_id`.
        expected: String,
        /// The digest of the uncompressed layer.
        actual: Digest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = LoadError> = std::result::Result<T, E>;

/// The message of [`LoadError::NoRoom`].
fn no_room(path: &Path, entry: &str, needed: u64, shortfall: &Shortfall) -> String {
    shortfall.message(path, Some(&quote(entry).to_string()), needed, "load")
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The name to store the image under, instead of the archive's own
    /// (needed when the archive names none, or only by a bare tag).
    pub name: Option<ImageReference>,
    /// The platform to pick from an index.
    pub platform: Platform,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { name: None, platform: Platform::host() }
    }
}

/// The kind of archive that was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ArchiveFormat {
    /// A tar of an OCI image layout.
    Oci,
    /// A legacy `docker save` tarball.
    DockerSave,
}

impl std::fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveFormat::Oci => "OCI archive",
            ArchiveFormat::DockerSave => "docker save tarball",
        })
    }
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// The kind of archive.
    pub format: ArchiveFormat,
    /// The images as now named in the store, one record per name.
    pub images: Vec<ImageRecord>,
    /// Files of the archive stored as blobs.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Loads the images of an archive (OCI archive or `docker save` tarball,
/// plain, gzip or zstd) from `input` into `store`, in one pass, and names
/// them ([`read`], then [`Loaded::name`]).
///
/// Nothing is named unless every image resolved and every blob it needs came
/// in the archive and verified.
pub fn load(store: &Store, input: impl Read, options: &LoadOptions) -> Result<LoadOutcome> {
    read(store, input, options)?.name(store)
}

/// An archive's images, verified but not yet named, their blobs still
/// staged ([`Store::staged`]): a caller that unpacks them first (as `ces
/// load` does, so that an image whose layers cannot be unpacked is never
/// named) unpacks them from [`Loaded::store`], then names them, which
/// moves their blobs into the store; dropped unnamed, it keeps none. The
/// store stays locked (shared) meanwhile, so that no `gc` runs.
pub struct Loaded {
    /// The kind of archive.
    pub format: ArchiveFormat,
    /// The images, one record per name they will get.
    pub images: Vec<ImageRecord>,
    blobs: usize,
    bytes: u64,
    /// The blobs the images need.
    needed: Vec<Digest>,
    /// The store as the load sees it, and its staged blobs (dropped before
    /// the lock).
    staging: Store,
    staged: crate::store::Staged,
    _lock: StoreLock,
}

/// Reads an archive into `store` without naming anything (see [`load`]).
pub fn read(store: &Store, input: impl Read, options: &LoadOptions) -> Result<Loaded> {
    let lock = store.lock_shared()?;
    // The archive's blobs are kept apart until its images are known: only
    // theirs are moved into the store.
    let (staging, staged) = store.staged()?;
    let contents = read_archive(&staging, input)?;
    let (format, images) = if contents.json.contains_key(INDEX_JSON) {
        (ArchiveFormat::Oci, contents.resolve_oci(&staging, &options.platform)?)
    } else if contents.json.contains_key(MANIFEST_JSON) {
        (ArchiveFormat::DockerSave, contents.resolve_docker_save(&staging)?)
    } else if contents.entries == 0 {
        return Err(LoadError::Empty);
    } else {
        return Err(LoadError::Unrecognized);
    };
    let needed = images.iter().flat_map(|image| image.blobs.iter().cloned()).collect();
    Ok(Loaded {
        format,
        images: name_images(images, options.name.as_ref(), store.user())?,
        blobs: contents.files.len(),
        bytes: contents.files.values().map(|f| f.size).sum(),
        needed,
        staging,
        staged,
        _lock: lock,
    })
}

impl Loaded {
    /// The store as this load sees it: its images' blobs are read from
    /// where they are staged until they are named.
    pub fn store(&self) -> &Store {
        &self.staging
    }

    /// Moves the images' blobs into `store`, then names the images there.
    pub fn name(self, store: &Store) -> Result<LoadOutcome> {
        // Refused before any blob moves in (and checked again as they are named).
        store.check_names(&self.images)?;
        self.staged.keep(&self.needed)?;
        store.add_refs(&self.images)?;
        tracing::debug!(format = %self.format, images = self.images.len(), blobs = self.blobs, "loaded");
        Ok(LoadOutcome { format: self.format, images: self.images, blobs: self.blobs, bytes: self.bytes })
    }
}

/// A regular file of the archive, as stored.
#[derive(Debug, Clone)]
struct Stored {
    digest: Digest,
    size: u64,
}

/// What the pass over the archive found.
#[derive(Debug, Default)]
struct Contents {
    /// Regular files stored as blobs, by name.
    files: HashMap<String, Stored>,
    /// Links, by name, to the name they point to.
    links: HashMap<String, String>,
    /// The layout's JSON documents.
    json: HashMap<&'static str, Vec<u8>>,
    /// Entries read.
    entries: u64,
    /// Bytes of the entries' names and link targets.
    name_bytes: u64,
}

/// An image found in the archive, before it is named.
#[derive(Debug)]
struct Resolved {
    digest: Digest,
    media_type: String,
    size: u64,
    index_digest: Option<Digest>,
    /// Full references the archive names it by.
    names: Vec<String>,
    /// A bare tag the archive names it by (kept for the error).
    tag: Option<String>,
    /// Its labels and base annotations, read from its manifest and config.
    provenance: Provenance,
    /// Every blob it needs: its indexes, manifest, config and layers.
    blobs: Vec<Digest>,
}

/// What the tar reader's stream did: ran dry (which a tar that ends with its
/// end-of-archive marker never does), or failed (the decompressor, or the
/// input itself, rather than the tar format).
#[derive(Debug, Default)]
struct StreamState {
    eof: Cell<bool>,
    failed: Cell<bool>,
}

/// The (decompressed) tar stream under the tar reader, watched.
struct Watched<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.state.eof.set(true);
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// The error for a failed read of the archive, after `entry`.
fn read_error(entry: Option<&str>, state: &StreamState, source: io::Error) -> LoadError {
    if state.eof.get() || source.kind() == io::ErrorKind::UnexpectedEof {
        LoadError::Truncated { entry: entry.map(str::to_owned) }
    } else {
        LoadError::Corrupt { entry: entry.map(str::to_owned), source }
    }
}

fn read_archive(store: &Store, input: impl Read) -> Result<Contents> {
    let stream = unpack::decompress(BufReader::with_capacity(COPY_BUFFER_LEN, input))
        .map_err(|source| LoadError::Read { source })?;
    let state = Rc::new(StreamState::default());
    let mut archive = tar::Archive::new(Bounded::new(Watched { inner: stream, state: Rc::clone(&state) }));
    let mut contents = Contents::default();
    let mut buf = vec![0u8; COPY_BUFFER_LEN];
    let mut last: Option<String> = None;
    let entries = archive.entries().map_err(|source| LoadError::NotATar { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| {
            if let Some(limit) = ExtensionTooLarge::find(&source) {
                return LoadError::ExtensionTooLarge(limit);
            }
            match &last {
                // The first header is not one, and not because the stream broke.
                None if !state.failed.get() => LoadError::NotATar { source },
                last => read_error(last.as_deref(), &state, source),
            }
        })?;
        contents.entries += 1;
        if contents.entries > MAX_ENTRIES {
            return Err(LoadError::TooManyEntries { limit: MAX_ENTRIES });
        }
        let link_bytes = entry.link_name_bytes().map_or(0, |target| target.len());
        contents.name_bytes += (entry.path_bytes().len() + link_bytes) as u64;
        if contents.name_bytes > MAX_NAME_BYTES {
            return Err(LoadError::NamesTooLong { limit: MAX_NAME_BYTES });
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        contents.add(store, &mut entry, &name, &state, &mut buf)?;
        last = Some(name);
    }
    let mut rest = archive.into_inner();
    if state.eof.get() {
        return Err(if contents.entries == 0 { LoadError::Empty } else { LoadError::Truncated { entry: None } });
    }
    // Read what follows the end-of-archive marker (padding), so that a
    // compressed stream's checksum at its very end is verified too.
    io::copy(&mut rest, &mut io::sink()).map_err(|source| read_error(None, &state, source))?;
    Ok(contents)
}

/// The name of an archive entry (or a link target) as a key: relative, with
/// `.` and empty components dropped and `..` applied. `Ok(None)` for the
/// archive's root itself.
fn clean_key(name: &str) -> Result<Option<String>, &'static str> {
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("climbs out of the archive with `..`");
                }
            }
            part => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// The digest a `blobs/sha256/<hex>` name announces.
fn blob_name(key: &str) -> Option<Digest> {
    key.strip_prefix("blobs/sha256/").and_then(|hex| format!("sha256:{hex}").parse().ok())
}

/// Which kept JSON document a name is.
fn json_slot(key: &str) -> Option<&'static str> {
    [INDEX_JSON, OCI_LAYOUT, MANIFEST_JSON].into_iter().find(|slot| *slot == key)
}

/// Whether a name is metadata of legacy `docker save` tarballs that ces does
/// not need: `repositories`, and each layer's `<id>/json` and `<id>/VERSION`.
fn is_legacy_metadata(key: &str) -> bool {
    key == "repositories"
        || key.split_once('/').is_some_and(|(dir, file)| !dir.is_empty() && matches!(file, "json" | "VERSION"))
}

/// Copies an entry's `size` bytes of data to `out`; `write_error` says what a
/// failed write means.
fn copy_entry<W: Write>(
    entry: &mut impl Read,
    key: &str,
    size: u64,
    out: &mut W,
    write_error: impl FnOnce(&W, io::Error) -> LoadError,
    buf: &mut [u8],
    state: &StreamState,
) -> Result<()> {
    let mut copied = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(Some(key), state, e)),
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            return Err(write_error(out, e));
        }
        copied += n as u64;
    }
    if copied != size {
        return Err(LoadError::Truncated { entry: Some(key.to_owned()) });
    }
    Ok(())
}

impl Contents {
    fn add<R: Read>(
        &mut self,
        store: &Store,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        state: &StreamState,
        buf: &mut [u8],
    ) -> Result<()> {
        let unsafe_entry = |reason| LoadError::UnsafeEntry { entry: name.to_owned(), reason };
        let Some(key) = clean_key(name).map_err(unsafe_entry)? else { return Ok(()) };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => self.add_file(store, key, entry, state, buf),
            kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                let target =
                    entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                if target.starts_with('/') {
                    return Err(unsafe_entry("links to an absolute path"));
                }
                // A symbolic link is relative to its directory, a hard link to the archive's root.
                let joined = match (kind, key.rsplit_once('/')) {
                    (tar::EntryType::Symlink, Some((dir, _))) => format!("{dir}/{target}"),
                    _ => target,
                };
                let target = clean_key(&joined).map_err(|_| unsafe_entry("links outside the archive"))?;
                self.files.remove(&key);
                match target {
                    Some(target) => {
                        self.links.insert(key, target);
                    }
                    None => {
                        self.links.remove(&key);
                    }
                }
                Ok(())
            }
            tar::EntryType::Directory => Ok(()),
            kind => {
                tracing::debug!(
                    entry = name,
                    ?kind,
                    "ignoring an archive entry that is neither file, directory nor link"
                );
                Ok(())
            }
        }
    }

    fn add_file<R: Read>(
        &mut self,
        store: &Store,
        key: String,
        entry: &mut tar::Entry<'_, R>,
        state: &StreamState,
        buf: &mut [u8],
    ) -> Result<()> {
        let size = entry.size();
        self.links.remove(&key);
        if let Some(slot) = json_slot(&key) {
            if size > MAX_JSON_BYTES {
                return Err(LoadError::JsonTooLarge { entry: key, limit: MAX_JSON_BYTES });
            }
            let mut bytes = Vec::with_capacity(size as usize);
            copy_entry(entry, &key, size, &mut bytes, |_, source| LoadError::Read { source }, buf, state)?;
            self.json.insert(slot, bytes);
            return Ok(());
        }
        if is_legacy_metadata(&key) {
            // The tar reader skips the data.
            return Ok(());
        }
        let blob_error = |key: &str, source| LoadError::Blob { entry: key.to_owned(), source };
        let stored = match blob_name(&key) {
            Some(expected) if store.has_blob(&expected, size) => {
                // Stored before (and verified then): check the archive's copy
                // all the same, so that a damaged archive never loads.
                let mut sink = HashingWriter::new(io::sink());
                copy_entry(entry, &key, size, &mut sink, |_, source| LoadError::Read { source }, buf, state)?;
                let (_, actual, _) = sink.finish();
                if actual != expected {
                    return Err(blob_error(&key, StoreError::DigestMismatch { expected, actual }));
                }
                Stored { digest: expected, size }
            }
            expected => {
                // Refused before it fills the disk or the quota (and fails
                // there, with the rest of the archive unread).
                if let Some(shortfall) = crate::quota::shortfall(store.root(), size) {
                    let path = store.root().to_owned();
                    return Err(LoadError::NoRoom { path, entry: key, needed: size, shortfall });
                }
                // Named blobs are checked against their name; others (docker
                // save layers) are stored under the digest they turn out to have.
                let writer = match expected {
                    Some(expected) => store.blob_writer(&expected, Some(size)),
                    None => store.computed_blob_writer(),
                };
                let mut writer = writer.map_err(|e| blob_error(&key, e))?;
                let write_error = |w: &_, source| blob_error(&key, BlobWriter::write_error(w, source));
                copy_entry(entry, &key, size, &mut writer, write_error, buf, state)?;
                let (digest, size) = writer.commit().map_err(|e| blob_error(&key, e))?;
                Stored { digest, size }
            }
        };
        tracing::debug!(entry = key, digest = %stored.digest, size = stored.size, "stored");
        self.files.insert(key, stored);
        Ok(())
    }

    /// The stored file a name refers to, through links.
    fn lookup(&self, name: &str) -> Option<(&str, &Stored)> {
        let mut key = clean_key(name).ok()??;
        for _ in 0..MAX_LINK_DEPTH {
            if let Some((key, stored)) = self.files.get_key_value(&key) {
                return Some((key.as_str(), stored));
            }
            key = self.links.get(&key)?.clone();
        }
        None
    }

    /// Checks that the blob `digest` of `size` bytes came in the archive.
    fn require(&self, digest: &Digest, size: u64, needed_by: &str) -> Result<()> {
        let missing = || LoadError::MissingBlob { digest: digest.clone(), needed_by: needed_by.to_owned() };
        let (key, stored) = self.lookup(&format!("blobs/sha256/{}", digest.hex())).ok_or_else(missing)?;
        if stored.digest != *digest {
            // Only a link can get here: `blobs/sha256/<a>` pointing to a file that is not `<a>`.
            let source = StoreError::DigestMismatch { expected: digest.clone(), actual: stored.digest.clone() };
            return Err(LoadError::Blob { entry: key.to_owned(), source });
        }
        if stored.size != size {
            return Err(LoadError::BlobSize {
                digest: digest.clone(),
                expected: size,
                actual: stored.size,
                needed_by: needed_by.to_owned(),
            });
        }
        Ok(())
    }

    fn parse_json<T: serde::de::DeserializeOwned>(&self, slot: &'static str) -> Result<Option<T>> {
        self.json
            .get(slot)
            .map(|bytes| {
                serde_json::from_slice(bytes)
                    .map_err(|source| LoadError::InvalidJson { entry: slot.to_owned(), source })
            })
            .transpose()
    }

    /// The images of an OCI layout: each `index.json` entry, an index resolved
    /// to the platform's image. Entries under the same name (or all unnamed)
    /// that carry platforms are an index themselves.
    fn resolve_oci(&self, store: &Store, platform: &Platform) -> Result<Vec<Resolved>> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Layout {
            image_layout_version: String,
        }
        if let Some(layout) = self.parse_json::<Layout>(OCI_LAYOUT)?
            && !layout.image_layout_version.starts_with("1.")
        {
            return Err(LoadError::UnsupportedLayout { version: layout.image_layout_version });
        }
        let Some(index) = self.parse_json::<ImageIndex>(INDEX_JSON)? else { return Err(LoadError::Unrecognized) };

        let mut groups: Vec<(Option<&str>, Vec<Descriptor>)> = Vec::new();
        for descriptor in index.manifests() {
            let name = annotation(descriptor, CONTAINERD_NAME).or_else(|| annotation(descriptor, REF_NAME));
            match groups.iter_mut().find(|(n, _)| *n == name) {
                Some((_, group)) => group.push(descriptor.clone()),
                None => groups.push((name, vec![descriptor.clone()])),
            }
        }
        let mut images = Vec::new();
        for (name, group) in groups {
            let chosen = match group.as_slice() {
                [one] => one.clone(),
                _ => {
                    let mut sub = index.clone();
                    sub.set_manifests(group);
                    manifest::select_platform(&sub, platform).cloned().ok_or_else(|| LoadError::NoPlatform {
                        platform: platform.to_string(),
                        available: manifest::platforms(&sub),
                    })?
                }
            };
            let mut image = self.resolve_descriptor(store, &chosen, platform, INDEX_JSON.to_owned(), None, 0)?;
            match name {
                // A bare tag (`1.0`, as the OCI spec has it) names no repository.
                Some(name) if name.contains(['/', ':', '@']) => image.names.push(name.to_owned()),
                Some(tag) => image.tag = Some(tag.to_owned()),
                None => {}
            }
            images.push(image);
        }
        Ok(images)
    }

    fn resolve_descriptor(
        &self,
        store: &Store,
        descriptor: &Descriptor,
        platform: &Platform,
        needed_by: String,
        index_digest: Option<Digest>,
        depth: usize,
    ) -> Result<Resolved> {
        let digest = manifest::descriptor_digest(descriptor).map_err(StoreError::from)?;
        self.require(&digest, descriptor.size(), &needed_by)?;
        let bytes = store.read_blob(&digest, MAX_MANIFEST_BYTES)?;
        let media_type = descriptor.media_type().to_string();
        match Manifest::parse(&bytes, Some(&media_type))? {
            Manifest::Image(image) => {
                let needed_by = format!("manifest {digest}");
                let mut blobs = vec![digest.clone()];
                for part in std::iter::once(image.config()).chain(image.layers()) {
                    let part_digest = manifest::descriptor_digest(part).map_err(StoreError::from)?;
                    self.require(&part_digest, part.size(), &needed_by)?;
                    blobs.push(part_digest);
                }
                Ok(Resolved {
                    blobs,
                    media_type: image.media_type().as_ref().map_or(media_type, ToString::to_string),
                    size: bytes.len() as u64,
                    provenance: Provenance::of(&image, &store.config(&image)?),
                    digest,
                    index_digest,
                    names: Vec::new(),
                    tag: None,
                })
            }
            Manifest::Index(index) => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(LoadError::IndexTooDeep { digest });
                }
                let chosen = manifest::select_platform(&index, platform).ok_or_else(|| LoadError::NoPlatform {
                    platform: platform.to_string(),
                    available: manifest::platforms(&index),
                })?;
                let needed_by = format!("index {digest}");
                let index = Some(index_digest.unwrap_or_else(|| digest.clone()));
                let mut image = self.resolve_descriptor(store, chosen, platform, needed_by, index, depth + 1)?;
                image.blobs.push(digest);
                Ok(image)
            }
        }
    }

    /// The images of a legacy `docker save` tarball: for each `manifest.json`
    /// entry, an OCI manifest of its config and layers, written to the store.
    fn resolve_docker_save(&self, store: &Store) -> Result<Vec<Resolved>> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            #[serde(default)]
            layers: Vec<String>,
        }
        #[derive(serde::Deserialize)]
        struct Config {
            rootfs: RootFs,
        }
        #[derive(serde::Deserialize)]
        struct RootFs {
            #[serde(default)]
            diff_ids: Vec<String>,
        }
        let Some(entries) = self.parse_json::<Vec<Entry>>(MANIFEST_JSON)? else { return Err(LoadError::Unrecognized) };
        let mut images = Vec::new();
        for entry in entries {
            let missing = |path: &str| LoadError::MissingFile { path: path.to_owned() };
            let (_, config) = self.lookup(&entry.config).ok_or_else(|| missing(&entry.config))?;
            let config_bytes = store.read_blob(&config.digest, MAX_CONFIG_BYTES)?;
            let parsed: Config = serde_json::from_slice(&config_bytes)
                .map_err(|source| LoadError::InvalidJson { entry: entry.config.clone(), source })?;
            let diff_ids = parsed.rootfs.diff_ids;
            if diff_ids.len() != entry.layers.len() {
                return Err(LoadError::LayerCount {
                    config: config.digest.clone(),
                    layers: entry.layers.len(),
                    diff_ids: diff_ids.len(),
                });
            }
            let mut layers = Vec::new();
            for (path, expected) in entry.layers.iter().zip(diff_ids) {
                let (_, layer) = self.lookup(path).ok_or_else(|| missing(path))?;
                let (media_type, actual) = diff_id(store, &layer.digest)?;
                if actual.to_string() != expected {
                    return Err(LoadError::DiffId { layer: path.clone(), expected, actual });
                }
                layers.push(OciDescriptor { media_type, digest: layer.digest.clone(), size: layer.size });
            }
            let manifest = OciManifest {
                schema_version: 2,
                media_type: manifest::OCI_MANIFEST,
                config: OciDescriptor { media_type: OCI_CONFIG, digest: config.digest.clone(), size: config.size },
                layers,
            };
            let bytes = serde_json::to_vec(&manifest).map_err(|source| LoadError::InvalidJson {
                entry: "the manifest written for manifest.json".to_owned(),
                source,
            })?;
            let digest = Digest::of(&bytes);
            store.write_blob(&digest, &bytes)?;
            let mut blobs = vec![digest.clone(), config.digest.clone()];
            blobs.extend(manifest.layers.iter().map(|layer| layer.digest.clone()));
            images.push(Resolved {
                blobs,
                provenance: store.provenance(&digest)?,
                digest,
                media_type: manifest::OCI_MANIFEST.to_owned(),
                size: bytes.len() as u64,
                index_digest: None,
                names: entry.repo_tags.unwrap_or_default(),
                tag: None,
            });
        }
        Ok(images)
    }
}

/// An OCI image manifest, as written for a `docker save` image.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest {
    schema_version: u32,
    media_type: &'static str,
    config: OciDescriptor,
    layers: Vec<OciDescriptor>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OciDescriptor {
    media_type: &'static str,
    digest: Digest,
    size: u64,
}

fn annotation<'a>(descriptor: &'a Descriptor, key: &str) -> Option<&'a str> {
    descriptor.annotations().as_ref()?.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// The media type of a stored layer blob and the digest of its tar (its
/// `diff_id`): the blob's own digest for a plain tar, else computed by
/// decompressing it.
fn diff_id(store: &Store, layer: &Digest) -> Result<(&'static str, Digest)> {
    let read_err = |source| StoreError::LayerRead { layer: layer.clone(), source };
    let blob = BufReader::with_capacity(COPY_BUFFER_LEN, store.open_blob(layer)?);
    let (compression, mut tar) = unpack::detect(blob).map_err(read_err)?;
    let media_type = match compression {
        Compression::None => return Ok(("application/vnd.oci.image.layer.v1.tar", layer.clone())),
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let mut hashing = HashingWriter::new(io::sink());
    io::copy(&mut tar, &mut hashing).map_err(read_err)?;
    Ok((media_type, hashing.finish().1))
}

/// One record per name: `name` (for a single image) or the archive's own
/// names, loaded by the user `loaded_by` (see [`Store::acting_for`]).
fn name_images(images: Vec<Resolved>, name: Option<&ImageReference>, loaded_by: u32) -> Result<Vec<ImageRecord>> {
    let now = jiff::Timestamp::now();
    let record = |image: &Resolved, reference: ImageReference| {
        if let Some(pinned) = reference.digest()
            && *pinned != image.digest
        {
            return Err(LoadError::NameDigest { reference, digest: image.digest.clone() });
        }
        Ok(ImageRecord {
            reference,
            digest: image.digest.clone(),
            media_type: image.media_type.clone(),
            manifest_size: image.size,
            pulled_at: Some(now),
            index_digest: image.index_digest.clone(),
            provenance: image.provenance.clone(),
            loaded_by: Some(loaded_by),
        })
    };
    if let Some(name) = name {
        let mut distinct: Vec<&Resolved> = Vec::new();
        for image in &images {
            if !distinct.iter().any(|d| d.digest == image.digest) {
                distinct.push(image);
            }
        }
        return match distinct.as_slice() {
            [one] => Ok(vec![record(one, name.clone())?]),
            [] => Err(LoadError::NoImages),
            many => Err(LoadError::SeveralImages { count: many.len() }),
        };
    }
    let mut records: Vec<ImageRecord> = Vec::new();
    for image in &images {
        if image.names.is_empty() {
            return Err(LoadError::NoName { digest: image.digest.clone(), tag: image.tag.clone() });
        }
        for name in &image.names {
            let reference = name
                .parse::<ImageReference>()
                .map_err(|source| LoadError::BadName { digest: image.digest.clone(), source })?;
            records.retain(|r| r.reference != reference);
            records.push(record(image, reference)?);
            if records.len() > MAX_NAMES {
                let count = images.iter().map(|i| i.names.len()).sum();
                return Err(LoadError::TooManyNames { count, limit: MAX_NAMES });
            }
        }
    }
    if records.is_empty() {
        return Err(LoadError::NoImages);
    }
    Ok(records)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MAX_LOADED_NAMES;
    use ces_testkit::image::marker_image;
    use ces_testkit::{BuiltImage, Compression, Entry, ImageSpec, Layer, Style, busybox_image, index};
    use std::path::Path;

    fn amd64() -> Platform {
        Platform { os: "linux".into(), architecture: "amd64".into() }
    }

    fn arm64() -> Platform {
        Platform { os: "linux".into(), architecture: "arm64".into() }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        store: Store,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            // Assembled trees (see `layered` for images kept as their layers).
            let store = Store::open(dir.path().join("store")).unwrap().with_layered(false);
            Fixture { dir, store }
        }

        fn layered() -> Fixture {
            let f = Fixture::new();
            Fixture { store: f.store.with_layered(true), ..f }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn load(&self, bytes: &[u8], name: Option<&str>, platform: Platform) -> Result<LoadOutcome> {
            let options = LoadOptions { name: name.map(|n| n.parse().unwrap()), platform };
            load(&self.store, bytes, &options)
        }

        fn load_file(&self, path: &Path, name: Option<&str>) -> Result<LoadOutcome> {
            self.load(&std::fs::read(path).unwrap(), name, amd64())
        }

        fn oci_archive(&self, image: &BuiltImage, ref_name: &str) -> Vec<u8> {
            let path = self.path("image.tar");
            image.write_oci_archive(&path, ref_name);
            std::fs::read(path).unwrap()
        }
    }

    fn digest(s: &str) -> Digest {
        s.parse().unwrap()
    }

    /// A tar of `files` (name, data), and of `links` (name, target, symbolic?).
    fn tar_of(files: &[(&str, &[u8])], links: &[(&str, &str, bool)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        for (name, target, symbolic) in links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(if *symbolic { tar::EntryType::Symlink } else { tar::EntryType::Link });
            header.set_size(0);
            builder.append_link(&mut header, name, target).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// The entries of a tar, as (name, data) pairs, regular files only.
    /// A name resolves to the image pulled under it or to the user's own
    /// load, never to another user's ([`Store::acting_for`]), nor does a
    /// digest; each keeps its own.
    #[test]
    fn a_name_resolves_to_its_pull_or_to_the_users_own_load() {
        let f = Fixture::new();
        let name = "ghcr.io/lab/model:1";
        let as_user = |uid| f.store.clone().acting_for(uid);
        let (alice, bob, carol) = (as_user(1001), as_user(1002), as_user(1003));
        let load_as = |store: &Store, marker: &str| {
            let image = marker_image(marker).build();
            let bytes = f.oci_archive(&image, name);
            load(store, bytes.as_slice(), &LoadOptions::default()).unwrap().images.remove(0)
        };
        // What a pull would have named (no loader).
        let mut pulled = load_as(&carol, "pulled");
        let lock = f.store.lock_exclusive().unwrap();
        f.store.remove_ref(&pulled, &lock).unwrap();
        drop(lock);
        pulled.loaded_by = None;
        f.store.add_ref(&pulled).unwrap();
        let alices = load_as(&alice, "alice");
        let bobs = load_as(&bob, "bob");
        assert_eq!((alices.loaded_by, bobs.loaded_by), (Some(1001), Some(1002)));

        assert_eq!(alice.lookup(name).unwrap(), alices, "her own load");
        assert_eq!(bob.lookup(name).unwrap(), bobs);
        assert_eq!(carol.lookup(name).unwrap(), pulled, "not another user's load");
        let names = |store: &Store| store.own_images().unwrap().into_iter().map(|r| r.digest).collect::<Vec<_>>();
        assert_eq!(names(&alice), [pulled.digest.clone(), alices.digest.clone()]);
        assert_eq!(names(&carol), [pulled.digest.clone()]);
        assert_eq!(f.store.images().unwrap().len(), 3, "the store keeps all three");
        // Nor by a digest: `NAME@sha256:...` of another user's load under NAME
        // would otherwise find it.
        assert!(carol.lookup(&bobs.digest.hex()[..12]).is_err(), "by digest");
        assert!(carol.lookup(&format!("{name}@{}", bobs.digest)).is_err(), "pinned");
        assert_eq!(bob.lookup(&bobs.digest.hex()[..12]).unwrap(), bobs);

        // A load again replaces that user's own name only; a removal removes it only.
        let bobs_again = load_as(&bob, "bob again");
        assert_eq!(bob.lookup(name).unwrap(), bobs_again);
        assert_eq!(alice.lookup(name).unwrap(), alices);
        assert_eq!(f.store.images().unwrap().len(), 3);
        let lock = f.store.lock_exclusive().unwrap();
        alice.remove_ref(&alices, &lock).unwrap();
        assert_eq!(alice.lookup(name).unwrap(), pulled);
        assert_eq!(bob.lookup(name).unwrap(), bobs_again);
    }

    /// Only the blobs of the images a load names enter the store: a file
    /// outside `blobs/` and a blob no image needs (what a hostile archive
    /// could fill the disk with) do not stay, nor anything of a failed
    /// load; nothing is left in `tmp/`.
    #[test]
    fn a_load_keeps_only_the_blobs_of_its_images() {
        let f = Fixture::new();
        let image = marker_image("kept").build();
        let mut files = files_of(&f.oci_archive(&image, "ghcr.io/ns/kept:1"));
        let extra = b"a blob that no image names".to_vec();
        let extra_digest = Digest::of(&extra);
        files.push((format!("blobs/sha256/{}", extra_digest.hex()), extra));
        files.push(("junk/data".to_owned(), vec![7; 4096]));
        let stored = |f: &Fixture| {
            let mut names: Vec<String> = std::fs::read_dir(f.store.root().join("oci/blobs/sha256"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let tmp_left = |f: &Fixture| std::fs::read_dir(f.store.root().join("tmp")).unwrap().count();
        let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let outcome = f.load(&tar_of(&borrowed, &[]), None, amd64()).unwrap();
        let manifest = f.store.manifest(&outcome.images[0].digest).unwrap();
        let mut expected: Vec<String> = std::iter::once(outcome.images[0].digest.hex().to_owned())
            .chain(
                std::iter::once(manifest.config())
                    .chain(manifest.layers())
                    .map(|d| manifest::descriptor_digest(d).unwrap().hex().to_owned()),
            )
            .collect();
        expected.sort();
        assert_eq!(stored(&f), expected, "the image's blobs, and only those");
        assert_eq!(tmp_left(&f), 0);

        // A load that fails (its layer is missing) keeps nothing.
        let f = Fixture::new();
        let layer = manifest::descriptor_digest(&manifest.layers()[0]).unwrap();
        let without: Vec<(&str, &[u8])> =
            borrowed.iter().copied().filter(|(name, _)| !name.ends_with(layer.hex())).collect();
        let error = f.load(&tar_of(&without, &[]), None, amd64()).unwrap_err();
        assert!(matches!(error, LoadError::MissingBlob { .. }), "{error}");
        assert_eq!(stored(&f), Vec::<String>::new(), "nothing of a failed load");
        assert_eq!(tmp_left(&f), 0);

        // Read, unpacked from where its blobs are staged, and never named
        // (as when a later layer fails to unpack): nothing kept.
        let f = Fixture::new();
        let loaded = read(&f.store, tar_of(&borrowed, &[]).as_slice(), &LoadOptions::default()).unwrap();
        loaded
            .store()
            .unpack(&loaded.images[0].digest, &unpack::UnpackOptions::for_current_user(), &mut |_, _| {})
            .unwrap();
        assert_eq!(stored(&f), Vec::<String>::new(), "staged until named");
        drop(loaded);
        assert_eq!(stored(&f), Vec::<String>::new(), "nothing of a load never named");
        assert_eq!(tmp_left(&f), 0);
    }

    /// An archive that names more images than one load may is refused
    /// before any is named (each name is an entry of `index.json`).
    #[test]
    fn more_names_than_a_load_or_a_user_may_give_are_refused() {
        let f = Fixture::new();
        let image = marker_image("many").build();
        let mut files = files_of(&f.oci_archive(&image, "ghcr.io/ns/many:0"));
        let at = files.iter().position(|(name, _)| name == "index.json").unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&files[at].1).unwrap();
        let entry = json["manifests"][0].clone();
        let named = |n: usize| {
            let mut e = entry.clone();
            e["annotations"][crate::store::REF_NAME] = format!("ghcr.io/ns/many:{n}").into();
            e
        };
        let mut archive_of = |names: std::ops::Range<usize>| {
            json["manifests"] = names.map(named).collect();
            files[at].1 = serde_json::to_vec(&json).unwrap();
            let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            tar_of(&borrowed, &[])
        };
        assert_eq!(f.load(&archive_of(0..MAX_NAMES), None, amd64()).unwrap().images.len(), MAX_NAMES);
        let error = f.load(&archive_of(0..MAX_NAMES + 1), None, amd64()).unwrap_err();
        assert!(matches!(error, LoadError::TooManyNames { count: 257, limit: 256 }), "{error}");

        // Across loads, one user's names are bounded too: `index.json`
        // stays bounded (nothing is refused that adds no name).
        let step = MAX_NAMES;
        for start in (step..MAX_LOADED_NAMES).step_by(step) {
            f.load(&archive_of(start..start + step), None, amd64()).unwrap();
        }
        assert_eq!(f.store.own_images().unwrap().len(), MAX_LOADED_NAMES);
        let error = f.load(&archive_of(MAX_LOADED_NAMES..MAX_LOADED_NAMES + 1), None, amd64()).unwrap_err();
        assert!(
            matches!(error, LoadError::Store(StoreError::TooManyLoaded { count: 1025, limit: MAX_LOADED_NAMES })),
            "{error}"
        );
        assert_eq!(f.store.own_images().unwrap().len(), MAX_LOADED_NAMES, "nothing named");
        f.load(&archive_of(0..3), None, amd64()).expect("a reload under names already held");
        // Another user's loads are counted on their own.
        let other = f.store.clone().acting_for(4242);
        load(&other, archive_of(0..1).as_slice(), &LoadOptions { name: None, platform: amd64() }).unwrap();
    }

    /// Entry names and link targets are kept until the archive's end: past
    /// a bound, all together, the archive is refused.
    #[test]
    fn names_longer_than_any_archives_are_refused() {
        let f = Fixture::new();
        let long = |i: usize| format!("{i:04}{}", "n".repeat(4000));
        let names: Vec<(String, String)> = (0..2200).map(|i| (long(i), long(i + 10_000))).collect();
        let links: Vec<(&str, &str, bool)> = names.iter().map(|(n, t)| (n.as_str(), t.as_str(), true)).collect();
        let error = f.load(&tar_of(&[], &links), None, amd64()).unwrap_err();
        assert!(matches!(error, LoadError::NamesTooLong { limit: MAX_NAME_BYTES }), "{error}");
        // Fewer are read to the end (and then found to hold no image).
        let error = f.load(&tar_of(&[], &links[..100]), None, amd64()).unwrap_err();
        assert!(matches!(error, LoadError::Unrecognized), "{error}");
    }

    fn files_of(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .filter(|e| e.header().entry_type().is_file())
            .map(|mut e| {
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn clean_key_keeps_names_inside_the_archive() {
        assert_eq!(clean_key("./blobs//sha256/./ab").unwrap().as_deref(), Some("blobs/sha256/ab"));
        assert_eq!(clean_key("a/../b").unwrap().as_deref(), Some("b"));
        assert_eq!(clean_key("./").unwrap(), None);
        assert!(clean_key("../etc/passwd").is_err());
        assert!(clean_key("a/../../b").is_err());
        assert!(clean_key("/etc/passwd").is_err());
    }

    #[test]
    fn legacy_metadata_is_recognised() {
        assert!(is_legacy_metadata("abc/json"));
        assert!(is_legacy_metadata("abc/VERSION"));
        assert!(is_legacy_metadata("repositories"));
        assert!(!is_legacy_metadata("manifest.json"));
        assert!(!is_legacy_metadata("abc/layer.tar"));
        assert!(!is_legacy_metadata("abc.json"));
    }

    #[test]
    fn oci_archive_with_a_full_name_loads_and_unpacks() {
        let f = Fixture::new();
        let image = busybox_image().build();
        let outcome = f.load(&f.oci_archive(&image, "ghcr.io/ns/busybox:1"), None, amd64()).unwrap();
        assert_eq!(outcome.format, ArchiveFormat::Oci);
        let [record] = outcome.images.as_slice() else { panic!("{:?}", outcome.images) };
        assert_eq!(record.reference.to_string(), "ghcr.io/ns/busybox:1");
        assert_eq!(record.digest, digest(&image.digest));
        assert_eq!(record.index_digest, None);
        assert_eq!(f.store.images().unwrap(), outcome.images);
        let rootfs =
            f.store.unpack(&record.digest, &unpack::UnpackOptions::for_current_user(), &mut |_, _| {}).unwrap().rootfs;
        assert!(rootfs.resolve("bin/busybox").is_some_and(|(_, meta)| meta.is_file()));
    }

    /// Two images on one base layer (`/etc/base`, `/gone`): `a` adds `/a`
    /// and whites out `/gone`, `b` adds `/b`.
    fn two_images_sharing_a_layer() -> (BuiltImage, BuiltImage) {
        let base = Layer::new(vec![Entry::dir("etc"), Entry::file("etc/base", "shared"), Entry::file("gone", "g")]);
        let a = ImageSpec::new(vec![base.clone(), Layer::new(vec![Entry::file("a", "a"), Entry::whiteout("gone")])])
            .build();
        let b = ImageSpec::new(vec![base, Layer::new(vec![Entry::file("b", "b")])]).build();
        (a, b)
    }

    /// Two images with a layer in common: it is unpacked once, and both
    /// root filesystems hold its files as hard links of one inode. Removing
    /// one image frees its own layer and root filesystem, not the other's.
    #[test]
    fn images_that_share_a_layer_share_its_files() {
        use std::os::unix::fs::MetadataExt as _;
        let f = Fixture::new();
        let (a, b) = two_images_sharing_a_layer();
        let options = unpack::UnpackOptions::for_current_user();
        let mut unpacked = Vec::new();
        for (image, name) in [(&a, "ghcr.io/ns/a:1"), (&b, "ghcr.io/ns/b:1")] {
            let record = f.load(&f.oci_archive(image, name), None, amd64()).unwrap().images.remove(0);
            let mut started = Vec::new();
            let done = f.store.unpack(&record.digest, &options, &mut |i, _| started.push(i)).unwrap();
            unpacked.push((record, done.rootfs.tree().expect("assembled").to_owned(), started));
        }
        let (rootfs_a, rootfs_b) = (&unpacked[0].1, &unpacked[1].1);
        let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
        assert_eq!(ino(&rootfs_a.join("etc/base")), ino(&rootfs_b.join("etc/base")), "one inode for both");
        assert!(!rootfs_a.join("gone").exists() && rootfs_b.join("gone").is_file(), "a's whiteout is a's alone");
        assert!(rootfs_a.join("a").is_file() && !rootfs_a.join("b").exists() && rootfs_b.join("b").is_file());
        assert_eq!(unpacked[0].2.len(), 2, "a unpacked both its layers");
        assert_eq!(unpacked[1].2, [1], "b unpacked only the layer a did not have");
        let layers = |f: &Fixture| std::fs::read_dir(f.store.root().join("layers")).unwrap().count();
        assert_eq!(layers(&f), 6, "three layers, each a directory and a record");

        let lock = f.store.lock_exclusive().unwrap();
        f.store.remove_ref(&unpacked[0].0, &lock).unwrap();
        let stats = f.store.gc(&lock).unwrap();
        assert_eq!((stats.rootfs, stats.layers), (1, 1));
        assert_eq!(layers(&f), 4);
        assert_eq!(std::fs::read_to_string(rootfs_b.join("etc/base")).unwrap(), "shared");
    }

    /// Images whose layers can be an overlay's lower layers are kept as
    /// them: no tree is assembled, two images share their common layer's
    /// directory, a whiteout is overlay's own (the merged view hides what it
    /// hides), and gc frees what only a removed image used.
    #[test]
    fn images_kept_as_their_layers_share_them() {
        use crate::rootfs::Rootfs;
        let f = Fixture::layered();
        let (a, b) = two_images_sharing_a_layer();
        let options = unpack::UnpackOptions::for_current_user();
        let mut kept = Vec::new();
        for (image, name) in [(&a, "ghcr.io/ns/a:1"), (&b, "ghcr.io/ns/b:1")] {
            let record = loaded(&f, image, name);
            let done = f.store.unpack(&record.digest, &options, &mut |_, _| {}).unwrap();
            assert_eq!(Some(&done.rootfs), f.store.unpacked(&record.digest).as_ref());
            let Rootfs::Layers(layers) = &done.rootfs else { panic!("assembled: {:?}", done.rootfs) };
            let expected: Vec<_> = image
                .diff_ids
                .iter()
                .map(|d| f.store.root().join("layers").join(d.strip_prefix("sha256:").unwrap()))
                .collect();
            assert_eq!(layers.dirs, expected, "the image's layers, bottom first");
            let short: Vec<_> = image
                .diff_ids
                .iter()
                .map(|d| f.store.root().join("l").join(&d.strip_prefix("sha256:").unwrap()[..12]))
                .collect();
            assert_eq!(layers.mount, short, "mounted by their short links");
            for (link, dir) in short.iter().zip(&expected) {
                assert_eq!(std::fs::canonicalize(link).unwrap(), std::fs::canonicalize(dir).unwrap());
            }
            assert!(!f.store.rootfs_path(&record.digest).exists(), "no tree");
            kept.push((record, done.rootfs));
        }
        let (rootfs_a, rootfs_b) = (&kept[0].1, &kept[1].1);
        let read = |r: &Rootfs, p: &str| r.read_to_string(p, 100);
        assert_eq!(read(rootfs_a, "etc/base").as_deref(), Some("shared"));
        assert_eq!(read(rootfs_b, "etc/base").as_deref(), Some("shared"));
        assert_eq!((read(rootfs_a, "gone"), read(rootfs_b, "gone").as_deref()), (None, Some("g")));
        assert_eq!((read(rootfs_a, "a").as_deref(), read(rootfs_a, "b")), (Some("a"), None));
        let layers = |f: &Fixture| std::fs::read_dir(f.store.root().join("layers")).unwrap().count();
        assert_eq!(layers(&f), 6, "three layers, each a directory and a record");

        let lock = f.store.lock_exclusive().unwrap();
        f.store.remove_ref(&kept[0].0, &lock).unwrap();
        let stats = f.store.gc(&lock).unwrap();
        assert_eq!((stats.rootfs, stats.layers), (1, 1));
        assert_eq!(layers(&f), 4);
        assert_eq!(std::fs::read_dir(f.store.root().join("l")).unwrap().count(), 2, "the gone layer's link went");
        assert!(f.store.unpacked(&kept[0].0.digest).is_none());
        assert_eq!(read(rootfs_b, "etc/base").as_deref(), Some("shared"));
        drop(lock);

        // A runtime that cannot mount layers gets a tree, made from them.
        let tree = f.store.tree(&kept[1].0.digest, &options, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("b")).unwrap(), "b");
        assert_eq!(f.store.unpacked(&kept[1].0.digest), Some(Rootfs::Tree(tree)));
    }

    /// An image of more layers than their directories' paths fit in an
    /// overlay's mount options (one page) is kept as its layers all the
    /// same: they are mounted by their short links (`l/`). A link that names
    /// another layer (two diff_ids that start alike), or a layer that went,
    /// is not used for this one, until gc removes a link left so.
    #[test]
    fn many_layers_are_mounted_by_their_short_links() {
        use crate::rootfs::Rootfs;
        let f = Fixture::layered();
        let n = 60;
        let image =
            ImageSpec::new((0..n).map(|i| Layer::new(vec![Entry::file(&format!("f{i}"), "x")])).collect()).build();
        let hexes: Vec<&str> = image.diff_ids.iter().map(|d| d.strip_prefix("sha256:").unwrap()).collect();
        let long: usize = hexes.iter().map(|h| f.store.root().join("layers").join(h).as_os_str().len() + 1).sum();
        assert!(long > crate::store::MAX_LOWERDIR_BYTES, "the directories' paths alone would not fit: {long}");
        let links = f.store.root().join("l");
        // Another layer's link on this image's first layer's name, and a
        // link left to a layer since removed on its second one's.
        let other = format!("{}{}", &hexes[0][..12], "0".repeat(52));
        std::os::unix::fs::symlink(format!("../layers/{other}"), links.join(&hexes[0][..12])).unwrap();
        std::fs::create_dir(f.store.root().join("layers").join(&other)).unwrap();
        let gone = format!("{}{}", &hexes[1][..12], "1".repeat(52));
        std::os::unix::fs::symlink(format!("../layers/{gone}"), links.join(&hexes[1][..12])).unwrap();

        let record = loaded(&f, &image, "ghcr.io/ns/many:1");
        let options = unpack::UnpackOptions::for_current_user();
        let done = f.store.unpack(&record.digest, &options, &mut |_, _| {}).unwrap();
        let Rootfs::Layers(layers) = &done.rootfs else { panic!("assembled: {:?}", done.rootfs) };
        assert_eq!(layers.mount.len(), n);
        let done_dirs = layers.dirs.clone();
        assert_eq!(layers.mount[0], f.store.root().join("layers").join(hexes[0]), "another layer's link: not used");
        assert_eq!(layers.mount[1], f.store.root().join("layers").join(hexes[1]), "a link left: not changed");
        assert!(layers.mount[2..].iter().all(|m| m.starts_with(&links)));
        assert_eq!(done.rootfs.read_to_string("f0", 10).as_deref(), Some("x"));
        assert_eq!(done.rootfs.read_to_string(&format!("f{}", n - 1), 10).as_deref(), Some("x"));
        for (mount, dir) in layers.mount.iter().zip(&layers.dirs) {
            assert_eq!(std::fs::canonicalize(mount).unwrap(), std::fs::canonicalize(dir).unwrap());
        }
        // A gc removes the left link (and the other layer's, whose layer no
        // image has), and gives the names to the layers they belong to.
        let lock = f.store.lock_exclusive().unwrap();
        f.store.gc(&lock).unwrap();
        drop(lock);
        assert!(!f.store.root().join("layers").join(&other).exists(), "no image has it");
        let Some(Rootfs::Layers(layers)) = f.store.unpacked(&record.digest) else { panic!("not unpacked") };
        assert!(layers.mount.iter().all(|m| m.starts_with(&links)), "{:?}", layers.mount);
        assert_eq!(layers.dirs, done_dirs);
    }

    /// An image kept as its layers, one of which went (a store mended by
    /// hand, a gc of another store's copy): it is no longer unpacked, and
    /// unpacking it again brings the layer back.
    #[test]
    fn an_image_whose_layer_went_is_unpacked_again() {
        let f = Fixture::layered();
        let (_, b) = two_images_sharing_a_layer();
        let record = loaded(&f, &b, "ghcr.io/ns/b:1");
        let options = unpack::UnpackOptions::for_current_user();
        f.store.unpack(&record.digest, &options, &mut |_, _| {}).unwrap();
        let top = f.store.root().join("layers").join(b.diff_ids[1].strip_prefix("sha256:").unwrap());
        std::fs::remove_dir_all(&top).unwrap();
        assert!(f.store.unpacked(&record.digest).is_none(), "a list naming a missing layer is not an image");
        let again = f.store.unpack(&record.digest, &options, &mut |_, _| {}).unwrap().rootfs;
        assert_eq!(again.read_to_string("b", 10).as_deref(), Some("b"));
        assert!(top.is_dir());
    }

    /// An image with a layer that only implies a directory (`x/y` without
    /// `x/`) is assembled: an overlay would show the layer's own `x`, where
    /// applying it keeps the lower layer's.
    #[test]
    fn an_image_whose_layer_implies_a_directory_is_assembled() {
        let f = Fixture::layered();
        let image = ImageSpec::new(vec![
            Layer::new(vec![Entry::Dir { path: "x".into(), mode: 0o700 }]),
            Layer::new(vec![Entry::file("x/y", "y")]),
        ])
        .build();
        let record = loaded(&f, &image, "ghcr.io/ns/implied:1");
        let options = unpack::UnpackOptions::for_current_user();
        let rootfs = f.store.unpack(&record.digest, &options, &mut |_, _| {}).unwrap().rootfs;
        let tree = rootfs.tree().expect("assembled");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(tree.join("x")).unwrap().permissions().mode() & 0o777, 0o700);
    }

    /// An image's layers as a pull tells them: blob and diff_id, in order.
    fn layers_of(image: &BuiltImage) -> Vec<(Digest, String)> {
        image.layer_digests.iter().zip(&image.diff_ids).map(|(blob, diff_id)| (digest(blob), diff_id.clone())).collect()
    }

    /// Layer `i` of `image` unpacked alone, as a pull does while fetching.
    fn unpack_layer(f: &Fixture, image: &BuiltImage, i: usize) {
        let options = unpack::UnpackOptions::for_current_user();
        let budget = f.store.layer_budget();
        f.store.unpack_layer_ahead(&digest(&image.layer_digests[i]), &image.diff_ids[i], &options, &budget).unwrap();
    }

    fn temp_dirs(f: &Fixture) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(f.store.root().join("tmp")).unwrap().map(|e| e.unwrap().path()).collect()
    }

    fn temp_entries(f: &Fixture) -> usize {
        temp_dirs(f).len()
    }

    /// `image` loaded as `name`: its record.
    fn loaded(f: &Fixture, image: &BuiltImage, name: &str) -> ImageRecord {
        f.load(&f.oci_archive(image, name), None, amd64()).unwrap().images.remove(0)
    }

    /// The root filesystem of `record` begun, with `layers` as a pull tells
    /// them, and what the store has of them linked.
    fn begun(store: &Store, record: &ImageRecord, layers: &[(Digest, String)]) -> crate::store::RootfsAhead {
        let mut ahead = store.assemble_ahead(&record.digest, layers).expect("begun");
        store.link_ready(&mut ahead, &unpack::UnpackOptions::for_current_user());
        ahead
    }

    /// What was begun, finished by the unpack.
    fn finished(
        store: &Store,
        record: &ImageRecord,
        ahead: crate::store::RootfsAhead,
    ) -> std::result::Result<std::path::PathBuf, StoreError> {
        let options = unpack::UnpackOptions::for_current_user();
        store
            .unpack_assembled(&record.digest, ahead, &options, &mut |_, _| {})
            .map(|unpacked| unpacked.rootfs.tree().expect("assembled").to_owned())
    }

    /// A root filesystem begun while its image is pulled links the layers
    /// the store has, in order, up to the first it lacks; the unpack links
    /// the rest (a whiteout of the lower layer's file too), and names it.
    #[test]
    fn a_root_filesystem_begun_ahead_is_finished_by_the_unpack() {
        use std::os::unix::fs::MetadataExt as _;
        let f = Fixture::new();
        let image = ImageSpec::new(vec![
            Layer::new(vec![Entry::file("base", "b"), Entry::file("gone", "g")]),
            Layer::new(vec![Entry::file("top", "t"), Entry::whiteout("gone")]),
        ])
        .build();
        let record = loaded(&f, &image, "ghcr.io/ns/ahead:1");
        unpack_layer(&f, &image, 0);
        let mut ahead = begun(&f.store, &record, &layers_of(&image));
        assert_eq!(ahead.linked(), 1, "the first layer linked, the second not unpacked yet");
        unpack_layer(&f, &image, 1);
        f.store.link_ready(&mut ahead, &unpack::UnpackOptions::for_current_user());
        assert_eq!(ahead.linked(), 2);
        assert!(f.store.unpacked(&record.digest).is_none(), "named only by the unpack");
        let [tree] = temp_dirs(&f).try_into().unwrap();
        let tree = std::fs::metadata(tree).unwrap().ino();
        let rootfs = finished(&f.store, &record, ahead).unwrap();
        assert_eq!(rootfs, f.store.rootfs_path(&record.digest));
        assert_eq!(std::fs::metadata(&rootfs).unwrap().ino(), tree, "what was begun is the root filesystem");
        assert_eq!(std::fs::read_to_string(rootfs.join("base")).unwrap(), "b");
        assert_eq!(std::fs::read_to_string(rootfs.join("top")).unwrap(), "t");
        assert!(!rootfs.join("gone").exists(), "the second layer's whiteout applied");
        let layer = f.store.root().join("layers").join(image.diff_ids[0].strip_prefix("sha256:").unwrap());
        let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
        assert_eq!(ino(&rootfs.join("base")), ino(&layer.join("base")), "linked from the layer");
        assert_eq!(temp_entries(&f), 0, "nothing left in tmp/");
    }

    /// A layer the store has, from another blob than the image's, is not
    /// linked ahead: the config's word is not proof that the image's blob
    /// makes it (another image's private layer would be had by naming its
    /// diff_id). The unpack reads the image's own blob first.
    #[test]
    fn a_layer_named_over_another_blob_is_not_linked_ahead() {
        let f = Fixture::new();
        let layer = Layer::new(vec![Entry::file("secret", "s")]);
        let theirs = ImageSpec::new(vec![layer.clone()]).build();
        let ours = ImageSpec::new(vec![layer.compressed(Compression::Zstd)]).build();
        assert_eq!(theirs.diff_ids, ours.diff_ids);
        assert_ne!(theirs.layer_digests, ours.layer_digests);
        f.load(&f.oci_archive(&theirs, "ghcr.io/ns/theirs:1"), None, amd64()).unwrap();
        let record = loaded(&f, &ours, "ghcr.io/ns/ours:1");
        unpack_layer(&f, &theirs, 0);
        let ahead = begun(&f.store, &record, &layers_of(&ours));
        assert_eq!(ahead.linked(), 0, "not linked on the config's word");
        let rootfs = finished(&f.store, &record, ahead).unwrap();
        assert_eq!(std::fs::read_to_string(rootfs.join("secret")).unwrap(), "s", "its own blob made it");
    }

    /// What was linked ahead for other layers than the image's manifest
    /// and config name (here only its second layer) is not finished: the
    /// root filesystem is assembled anew, every layer in order.
    #[test]
    fn a_root_filesystem_begun_for_other_layers_is_assembled_anew() {
        let f = Fixture::new();
        let image = ImageSpec::new(vec![
            Layer::new(vec![Entry::file("lower", "l")]),
            Layer::new(vec![Entry::file("upper", "u")]),
        ])
        .build();
        let record = loaded(&f, &image, "ghcr.io/ns/other:1");
        unpack_layer(&f, &image, 0);
        unpack_layer(&f, &image, 1);
        let ahead = begun(&f.store, &record, &layers_of(&image)[1..]);
        assert_eq!(ahead.linked(), 1);
        let rootfs = finished(&f.store, &record, ahead).unwrap();
        assert!(rootfs.join("lower").is_file() && rootfs.join("upper").is_file());
        assert_eq!(temp_entries(&f), 0, "nothing left in tmp/");
    }

    /// Two pulls of one image at once may each begin its root filesystem
    /// (no lock is held while they download): the first to finish names
    /// its own, the second drops its. Dropped (a pull failed), what was
    /// linked is removed; once unpacked, nothing is begun.
    #[test]
    fn a_root_filesystem_begun_twice_is_named_once() {
        use std::os::unix::fs::MetadataExt as _;
        let f = Fixture::new();
        let image = ImageSpec::new(vec![Layer::new(vec![Entry::file("a", "a")])]).build();
        let record = loaded(&f, &image, "ghcr.io/ns/one:1");
        unpack_layer(&f, &image, 0);
        let failed = begun(&f.store, &record, &layers_of(&image));
        drop(failed);
        assert_eq!(temp_entries(&f), 0, "what a failed pull began is removed");
        let first = begun(&f.store, &record, &layers_of(&image));
        let second = begun(&f.store, &record, &layers_of(&image));
        assert_eq!((first.linked(), second.linked()), (1, 1));
        let rootfs = finished(&f.store, &record, second).unwrap();
        let named = std::fs::metadata(&rootfs).unwrap().ino();
        let again = finished(&f.store, &record, first).unwrap();
        assert_eq!((again, std::fs::metadata(&rootfs).unwrap().ino()), (rootfs.clone(), named), "named once");
        assert_eq!(std::fs::read_to_string(rootfs.join("a")).unwrap(), "a");
        assert_eq!(temp_entries(&f), 0, "the second dropped");
        assert!(f.store.assemble_ahead(&record.digest, &layers_of(&image)).is_none(), "unpacked already");
    }

    /// Layers are linked ahead in order only: the second layer unpacked
    /// first waits for the first. A layer that cannot be linked alone (two
    /// of its entries land on one file through the lower layer's symbolic
    /// link: their order decides) ends the linking ahead, and the unpack
    /// does it the old way.
    #[test]
    fn layers_are_linked_ahead_in_order_and_a_failure_leaves_it_to_the_unpack() {
        let f = Fixture::new();
        let image = ImageSpec::new(vec![
            Layer::new(vec![Entry::dir("usr/bin"), Entry::symlink("bin", "usr/bin")]),
            Layer::new(vec![Entry::file("usr/bin/sh", "usr-version"), Entry::file("bin/sh", "bin-version")]),
        ])
        .build();
        let record = loaded(&f, &image, "ghcr.io/ns/order:1");
        unpack_layer(&f, &image, 1);
        let mut ahead = begun(&f.store, &record, &layers_of(&image));
        assert_eq!(ahead.linked(), 0, "the second layer waits for the first");
        unpack_layer(&f, &image, 0);
        f.store.link_ready(&mut ahead, &unpack::UnpackOptions::for_current_user());
        assert_eq!(ahead.linked(), 0, "the second layer could not be linked: nothing kept");
        assert_eq!(temp_entries(&f), 0, "what was linked is removed");
        let rootfs = finished(&f.store, &record, ahead).unwrap();
        assert_eq!(std::fs::read_to_string(rootfs.join("usr/bin/sh")).unwrap(), "bin-version", "the later wins");
    }

    /// Linked ahead, the layers an image already had in the store count
    /// against `[storage] max_image_size` as they are linked: past it,
    /// nothing more is linked, and the unpack refuses the image.
    #[test]
    fn linking_ahead_stops_past_the_size_limit() {
        let f = Fixture::new();
        let layer = Layer::new(vec![Entry::file("big", vec![1u8; 100_000])]);
        let image = ImageSpec::new(vec![layer.clone(), Layer::new(vec![Entry::file("x", "x")]), layer]).build();
        let record = loaded(&f, &image, "ghcr.io/ns/size:1");
        unpack_layer(&f, &image, 0);
        unpack_layer(&f, &image, 1);
        let store = f.store.clone().with_max_unpacked(Some(150_000));
        let ahead = begun(&store, &record, &layers_of(&image));
        assert_eq!(ahead.linked(), 0, "stopped at the third layer, past the limit");
        assert_eq!(temp_entries(&f), 0);
        let refused = finished(&store, &record, ahead);
        assert!(matches!(refused, Err(StoreError::UnpackedTooLarge { .. })), "{refused:?}");
    }

    /// A hard link to a lower layer's file cannot be unpacked alone: the
    /// image is unpacked the old way, every layer applied in order.
    #[test]
    fn a_hard_link_across_layers_unpacks_the_old_way() {
        let f = Fixture::new();
        let image = ImageSpec::new(vec![
            Layer::new(vec![Entry::file("x", "data")]),
            Layer::new(vec![Entry::hardlink("y", "x")]),
        ])
        .build();
        let record = loaded(&f, &image, "ghcr.io/ns/links:1");
        let options = unpack::UnpackOptions::for_current_user();
        let unpacked = f.store.unpack(&record.digest, &options, &mut |_, _| {}).unwrap();
        let rootfs = unpacked.rootfs.tree().expect("a hard link across layers: assembled");
        assert_eq!(std::fs::read_to_string(rootfs.join("y")).unwrap(), "data");
        assert_eq!(std::fs::read_to_string(rootfs.join("x")).unwrap(), "data");
    }

    #[test]
    fn a_bare_tag_needs_a_name() {
        let f = Fixture::new();
        let image = marker_image("bare tag").build();
        let archive = f.oci_archive(&image, "1.0");
        let err = f.load(&archive, None, amd64()).unwrap_err();
        assert!(matches!(&err, LoadError::NoName { tag: Some(t), .. } if t == "1.0"), "{err}");
        assert!(f.store.images().unwrap().is_empty());
        let outcome = f.load(&archive, Some("ghcr.io/ns/app:1.0"), amd64()).unwrap();
        assert_eq!(outcome.images[0].reference.to_string(), "ghcr.io/ns/app:1.0");
    }

    #[test]
    fn the_containerd_name_wins_over_a_bare_ref_name() {
        let f = Fixture::new();
        let image = marker_image("containerd").build();
        let layout = f.path("layout");
        image.write_oci_layout(&layout, "latest");
        let index_path = layout.join("index.json");
        let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        index["manifests"][0]["annotations"][CONTAINERD_NAME] = "docker.io/library/app:latest".into();
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        let tar = tar_dir(&layout);
        let outcome = f.load(&tar, None, amd64()).unwrap();
        assert_eq!(outcome.images[0].reference.to_string(), "docker.io/library/app:latest");
    }

    /// A tar of a directory's files (for layouts written with `write_oci_layout`).
    fn tar_dir(dir: &Path) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_dir_all(".", dir).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_multi_arch_index_resolves_to_the_platform_not_the_first_entry() {
        let arm = marker_image("multi").arch("arm64").build();
        let amd = marker_image("multi").build();
        let both = index(&[arm.clone(), amd.clone()], Style::Oci);
        for (platform, want) in [(amd64(), &amd), (arm64(), &arm)] {
            let f = Fixture::new();
            let outcome = f.load(&f.oci_archive(&both, "ghcr.io/ns/multi:1"), None, platform).unwrap();
            assert_eq!(outcome.images[0].digest, digest(&want.digest));
            assert_eq!(outcome.images[0].index_digest, Some(digest(&both.digest)));
        }
        let f = Fixture::new();
        let s390x = Platform { os: "linux".into(), architecture: "s390x".into() };
        let err = f.load(&f.oci_archive(&both, "ghcr.io/ns/multi:1"), None, s390x).unwrap_err();
        assert!(
            matches!(&err, LoadError::NoPlatform { available, .. } if available == &["linux/arm64", "linux/amd64"]),
            "{err}"
        );
        assert!(err.to_string().contains("linux/arm64, linux/amd64"), "{err}");
    }

    #[test]
    fn platform_manifests_listed_in_index_json_itself_are_chosen_from() {
        let f = Fixture::new();
        let arm = marker_image("flat").arch("arm64").build();
        let amd = marker_image("flat").build();
        let layout = f.path("layout");
        arm.write_oci_layout(&layout, "ghcr.io/ns/flat:1");
        amd.write_oci_layout(&layout, "placeholder");
        // Both under one name, with platforms: as an index would list them.
        let index_path = layout.join("index.json");
        let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        for (i, arch) in ["arm64", "amd64"].iter().enumerate() {
            index["manifests"][i]["annotations"][REF_NAME] = "ghcr.io/ns/flat:1".into();
            index["manifests"][i]["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        }
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        let outcome = f.load(&tar_dir(&layout), None, amd64()).unwrap();
        let [record] = outcome.images.as_slice() else { panic!("{:?}", outcome.images) };
        assert_eq!(record.digest, digest(&amd.digest));
    }

    #[test]
    fn one_name_for_several_images_is_refused() {
        let f = Fixture::new();
        let layout = f.path("layout");
        marker_image("several a").build().write_oci_layout(&layout, "ghcr.io/ns/a:1");
        marker_image("several b").build().write_oci_layout(&layout, "ghcr.io/ns/b:1");
        let tar = tar_dir(&layout);
        let err = f.load(&tar, Some("ghcr.io/ns/c:1"), amd64()).unwrap_err();
        assert!(matches!(err, LoadError::SeveralImages { count: 2 }), "{err}");
        let outcome = f.load(&tar, None, amd64()).unwrap();
        let names: Vec<String> = outcome.images.iter().map(|r| r.reference.to_string()).collect();
        assert_eq!(names, ["ghcr.io/ns/a:1", "ghcr.io/ns/b:1"]);
    }

    #[test]
    fn docker_save_becomes_an_oci_manifest_of_the_same_config_and_layers() {
        let f = Fixture::new();
        let image = busybox_image().build();
        let path = f.path("save.tar");
        image.write_docker_save(&path, "busybox:1");
        let outcome = f.load_file(&path, None).unwrap();
        assert_eq!(outcome.format, ArchiveFormat::DockerSave);
        let [record] = outcome.images.as_slice() else { panic!("{:?}", outcome.images) };
        assert_eq!(record.reference.to_string(), "docker.io/library/busybox:1");
        let manifest = f.store.manifest(&record.digest).unwrap();
        assert_eq!(manifest.config().digest().to_string(), image.config_digest);
        assert_eq!(manifest.config().media_type().to_string(), OCI_CONFIG);
        let layers: Vec<String> = manifest.layers().iter().map(|l| l.digest().to_string()).collect();
        assert_eq!(layers, image.diff_ids);
        assert_eq!(manifest.layers()[0].media_type().to_string(), "application/vnd.oci.image.layer.v1.tar");
        let rootfs =
            f.store.unpack(&record.digest, &unpack::UnpackOptions::for_current_user(), &mut |_, _| {}).unwrap().rootfs;
        assert!(rootfs.resolve("bin/busybox").is_some_and(|(_, meta)| meta.is_file()));
        // The legacy per-layer metadata is not stored.
        assert!(outcome.blobs == 2, "{outcome:?}");
    }

    #[test]
    fn docker_save_follows_a_layer_symlink() {
        let f = Fixture::new();
        let layer = Layer::new(vec![Entry::file("same", "twice")]);
        let image = ImageSpec::new(vec![layer.clone(), layer]).build();
        let path = f.path("save.tar");
        image.write_docker_save(&path, "ghcr.io/ns/twice:1");
        let files = files_of(&std::fs::read(&path).unwrap());
        let manifest: serde_json::Value =
            serde_json::from_slice(&files.iter().find(|(n, _)| n == "manifest.json").unwrap().1).unwrap();
        let first = manifest[0]["Layers"][0].as_str().unwrap().to_owned();
        let second = manifest[0]["Layers"][1].as_str().unwrap().to_owned();
        let kept: Vec<(&str, &[u8])> =
            files.iter().filter(|(n, _)| *n != second).map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let (first_dir, _) = first.split_once('/').unwrap();
        let target = format!("../{first_dir}/layer.tar");
        let tar = tar_of(&kept, &[(&second, &target, true)]);
        let outcome = f.load(&tar, None, amd64()).unwrap();
        let manifest = f.store.manifest(&outcome.images[0].digest).unwrap();
        assert_eq!(manifest.layers().len(), 2);
        assert_eq!(manifest.layers()[0].digest(), manifest.layers()[1].digest());
    }

    #[test]
    fn docker_save_compressed_layers_are_checked_decompressed_and_typed_so() {
        let image = marker_image("docker save compressed").build();
        for (compression, media_type) in [
            (Compression::Gzip, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (Compression::Zstd, "application/vnd.oci.image.layer.v1.tar+zstd"),
        ] {
            let f = Fixture::new();
            let path = f.path("save.tar");
            image.write_docker_save(&path, "ghcr.io/ns/z:1");
            let files: Vec<(String, Vec<u8>)> = files_of(&std::fs::read(&path).unwrap())
                .into_iter()
                .map(|(n, d)| {
                    let d = if n.ends_with("/layer.tar") { ces_testkit::layer::compress(&d, compression) } else { d };
                    (n, d)
                })
                .collect();
            let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            let outcome = f.load(&tar_of(&borrowed, &[]), None, amd64()).unwrap();
            let manifest = f.store.manifest(&outcome.images[0].digest).unwrap();
            assert_eq!(manifest.layers()[0].media_type().to_string(), media_type, "{compression:?}");
            assert_ne!(
                manifest.layers()[0].digest().to_string(),
                image.diff_ids[0],
                "the compressed blob's own digest"
            );
        }
    }

    #[test]
    fn docker_save_layers_must_match_the_configs_diff_ids() {
        let f = Fixture::new();
        let image = marker_image("diff ids").build();
        let path = f.path("save.tar");
        image.write_docker_save(&path, "ghcr.io/ns/d:1");
        let files = files_of(&std::fs::read(&path).unwrap());
        let other = Layer::new(vec![Entry::file("marker", "something else")]).tar();
        let swapped: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, d)| (n.as_str(), if n.ends_with("/layer.tar") { other.as_slice() } else { d.as_slice() }))
            .collect();
        let err = f.load(&tar_of(&swapped, &[]), None, amd64()).unwrap_err();
        assert!(matches!(err, LoadError::DiffId { .. }), "{err}");
        assert!(f.store.images().unwrap().is_empty());
    }

    #[test]
    fn docker_25_archives_are_read_as_oci() {
        let f = Fixture::new();
        let image = marker_image("docker 25").build();
        let mut files = files_of(&f.oci_archive(&image, "docker.io/library/new:1"));
        let manifest = serde_json::json!([{
            "Config": format!("blobs/sha256/{}", &image.config_digest[7..]),
            "RepoTags": ["new:1"],
            "Layers": image.layer_digests.iter().map(|d| format!("blobs/sha256/{}", &d[7..])).collect::<Vec<_>>(),
        }]);
        files.push(("manifest.json".into(), serde_json::to_vec(&manifest).unwrap()));
        let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let outcome = f.load(&tar_of(&borrowed, &[]), None, amd64()).unwrap();
        assert_eq!(outcome.format, ArchiveFormat::Oci);
        assert_eq!(outcome.images[0].digest, digest(&image.digest));
    }

    #[test]
    fn compressed_archives_load() {
        let image = marker_image("compressed").build();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let f = Fixture::new();
            let tar = f.oci_archive(&image, "ghcr.io/ns/c:1");
            let compressed = ces_testkit::layer::compress(&tar, compression);
            let outcome = f.load(&compressed, None, amd64()).unwrap();
            assert_eq!(outcome.images[0].digest, digest(&image.digest), "{compression:?}");
        }
    }

    #[test]
    fn a_corrupt_blob_is_named_and_nothing_is_named() {
        let image = marker_image("corrupt blob").build();
        let layer = image.layer_digests[0].clone();
        let f = Fixture::new();
        let mut files = files_of(&f.oci_archive(&image, "ghcr.io/ns/c:1"));
        let hex = &layer[7..];
        let (_, data) = files.iter_mut().find(|(n, _)| n.ends_with(hex)).unwrap();
        let middle = data.len() / 2;
        data[middle] ^= 0xff;
        let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let tar = tar_of(&borrowed, &[]);
        let err = f.load(&tar, None, amd64()).unwrap_err();
        assert!(
            matches!(&err, LoadError::Blob { source: StoreError::DigestMismatch { expected, .. }, .. } if expected.to_string() == layer),
            "{err}"
        );
        assert!(f.store.images().unwrap().is_empty());
        assert!(!f.store.has_blob(&digest(&layer), data_len(&image, &layer)));

        // A blob already in the store is checked all the same.
        let good = f.oci_archive(&image, "ghcr.io/ns/c:1");
        f.load(&good, None, amd64()).unwrap();
        let err = f.load(&tar, Some("ghcr.io/ns/other:1"), amd64()).unwrap_err();
        assert!(matches!(&err, LoadError::Blob { .. }), "{err}");
    }

    fn data_len(image: &BuiltImage, digest: &str) -> u64 {
        image.blob(digest).len() as u64
    }

    #[test]
    fn a_missing_blob_is_named() {
        let f = Fixture::new();
        let image = marker_image("missing").build();
        let files = files_of(&f.oci_archive(&image, "ghcr.io/ns/m:1"));
        let layer = &image.layer_digests[0];
        let kept: Vec<(&str, &[u8])> =
            files.iter().filter(|(n, _)| !n.ends_with(&layer[7..])).map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let err = f.load(&tar_of(&kept, &[]), None, amd64()).unwrap_err();
        assert!(matches!(&err, LoadError::MissingBlob { digest, .. } if digest.to_string() == *layer), "{err}");
        assert!(err.to_string().contains(&image.digest), "{err}");
    }

    #[test]
    fn both_formats_record_the_images_provenance_under_each_name() {
        let source = "https://github.com/ces-tre/fixtures";
        let image = marker_image("provenance").label(crate::provenance::SOURCE, source).build();
        let f = Fixture::new();
        let save = f.path("save.tar");
        image.write_docker_save(&save, "ghcr.io/ns/saved:1");
        let layout = f.path("layout");
        image.write_oci_layout(&layout, "ghcr.io/ns/a:1");
        image.write_oci_layout(&layout, "ghcr.io/ns/b:1");
        for outcome in [f.load_file(&save, None).unwrap(), f.load(&tar_dir(&layout), None, amd64()).unwrap()] {
            assert!(!outcome.images.is_empty());
            for record in &outcome.images {
                assert_eq!(record.provenance.source.as_deref(), Some(source), "{}", record.reference);
            }
        }
        assert_eq!(f.store.images().unwrap().len(), 3);
        assert!(f.store.images().unwrap().iter().all(|r| r.provenance.source.as_deref() == Some(source)));
    }

    #[test]
    fn a_blob_of_another_size_than_its_descriptor_is_refused() {
        let f = Fixture::new();
        let image = marker_image("descriptor size").build();
        let layout = f.path("layout");
        image.write_oci_layout(&layout, "ghcr.io/ns/s:1");
        let index_path = layout.join("index.json");
        let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        let size = index["manifests"][0]["size"].as_u64().unwrap();
        index["manifests"][0]["size"] = (size + 1).into();
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        let err = f.load(&tar_dir(&layout), None, amd64()).unwrap_err();
        assert!(
            matches!(&err, LoadError::BlobSize { digest, expected, actual, .. }
                if digest.to_string() == image.digest && *expected == size + 1 && *actual == size),
            "{err}"
        );
        assert!(err.to_string().contains(&image.digest), "{err}");
        assert!(f.store.images().unwrap().is_empty());
    }

    #[test]
    fn a_docker_save_layer_missing_from_the_archive_is_named() {
        let f = Fixture::new();
        let image = marker_image("docker save missing layer").build();
        let path = f.path("save.tar");
        image.write_docker_save(&path, "ghcr.io/ns/m:1");
        let files = files_of(&std::fs::read(&path).unwrap());
        let kept: Vec<(&str, &[u8])> =
            files.iter().filter(|(n, _)| !n.ends_with("/layer.tar")).map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let err = f.load(&tar_of(&kept, &[]), None, amd64()).unwrap_err();
        assert!(matches!(&err, LoadError::MissingFile { path } if path.ends_with("/layer.tar")), "{err}");
        assert!(err.to_string().contains("/layer.tar"), "{err}");
        assert!(f.store.images().unwrap().is_empty());
    }

    #[test]
    fn truncated_archives_are_reported_as_such() {
        let f = Fixture::new();
        let image = marker_image("truncated").build();
        let tar = f.oci_archive(&image, "ghcr.io/ns/t:1");
        let err = f.load(&tar[..tar.len() / 2], None, amd64()).unwrap_err();
        assert!(matches!(err, LoadError::Truncated { .. }), "{err}");
        // Cut between two entries: only the missing end-of-archive marker tells.
        let mut at_boundary = tar_of(&[("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)], &[]);
        at_boundary.truncate(1024);
        let err = f.load(&at_boundary, None, amd64()).unwrap_err();
        assert!(matches!(err, LoadError::Truncated { entry: None }), "{err}");
        // And a compressed one.
        let gz = ces_testkit::layer::compress(&tar, Compression::Gzip);
        let err = f.load(&gz[..gz.len() - 10], None, amd64()).unwrap_err();
        assert!(matches!(err, LoadError::Truncated { .. } | LoadError::Corrupt { .. }), "{err}");
        assert!(f.store.images().unwrap().is_empty());
        assert!(std::fs::read_dir(f.store.root().join("tmp")).unwrap().next().is_none());
    }

    #[test]
    fn what_is_not_an_image_archive_says_so() {
        let f = Fixture::new();
        assert!(matches!(f.load(b"", None, amd64()), Err(LoadError::Empty)));
        assert!(matches!(f.load(&[b'x'; 2048], None, amd64()), Err(LoadError::NotATar { .. })));
        assert!(matches!(
            f.load(b"hello", None, amd64()),
            Err(LoadError::Truncated { .. } | LoadError::NotATar { .. })
        ));
        let other = tar_of(&[("README", b"hi")], &[]);
        assert!(matches!(f.load(&other, None, amd64()), Err(LoadError::Unrecognized)));
        let bad = tar_of(&[("index.json", b"{not json")], &[]);
        assert!(matches!(f.load(&bad, None, amd64()), Err(LoadError::InvalidJson { .. })));
        let v2 = tar_of(&[("oci-layout", br#"{"imageLayoutVersion":"2.0.0"}"#), ("index.json", b"{}")], &[]);
        assert!(matches!(f.load(&v2, None, amd64()), Err(LoadError::UnsupportedLayout { .. })));
    }

    #[test]
    fn names_that_leave_the_archive_are_refused() {
        let f = Fixture::new();
        for name in ["../escape", "a/../../escape"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_entry_type(tar::EntryType::Regular);
            let raw = &mut header.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            let mut tar = header.as_bytes().to_vec();
            tar.extend_from_slice(&[b'x'; 512]);
            tar.extend_from_slice(&[0; 1024]);
            let err = f.load(&tar, None, amd64()).unwrap_err();
            assert!(matches!(err, LoadError::UnsafeEntry { .. }), "{name}: {err}");
        }
        let link = tar_of(&[], &[("layer.tar", "/etc/passwd", true)]);
        assert!(matches!(f.load(&link, None, amd64()), Err(LoadError::UnsafeEntry { .. })));
        let link = tar_of(&[], &[("a/layer.tar", "../../etc/passwd", true)]);
        assert!(matches!(f.load(&link, None, amd64()), Err(LoadError::UnsafeEntry { .. })));
        assert!(std::fs::read_dir(f.store.root().join("tmp")).unwrap().next().is_none());
    }

    #[test]
    fn oversized_json_is_refused_before_it_is_read() {
        let f = Fixture::new();
        let big = vec![b' '; MAX_JSON_BYTES as usize + 1];
        let tar = tar_of(&[("index.json", &big)], &[]);
        assert!(matches!(f.load(&tar, None, amd64()), Err(LoadError::JsonTooLarge { .. })));
    }

    #[test]
    fn a_name_pinning_another_digest_is_refused() {
        let f = Fixture::new();
        let image = marker_image("pinned").build();
        let other = format!("ghcr.io/ns/p@sha256:{}", "0".repeat(64));
        let err = f.load(&f.oci_archive(&image, "1"), Some(&other), amd64()).unwrap_err();
        assert!(matches!(err, LoadError::NameDigest { .. }), "{err}");
    }
}
