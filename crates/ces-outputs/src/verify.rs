//! Checking an outputs directory against the manifest its run left.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};

use crate::manifest::{Entry, Kind, Manifest};
use crate::walk::{Hashing, Visit, open_dir, walk};
use crate::{MANIFEST_NAME, OutputsError, RESERVED};

/// Manifests larger than this are refused (a million entries take ~300 MB).
const MAX_MANIFEST: u64 = 1 << 30;

/// A path whose entry differs from the manifest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The path.
    pub path: String,
    /// What differs: `type`, `content`, `mode`, `target`.
    pub what: Vec<&'static str>,
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The manifest as read.
    pub manifest: Manifest,
    /// `sha256:<hex>` of the manifest file's bytes.
    pub manifest_digest: String,
    /// Paths there now that the manifest does not list.
    pub added: Vec<String>,
    /// Paths the manifest lists that are gone.
    pub removed: Vec<String>,
    /// Paths whose type, content, mode or link target changed.
    pub changed: Vec<Change>,
    /// Files the manifest has no sha256 for (the seal's budget, a signal, a
    /// read error), so their content cannot be checked: with the reason.
    pub unverified: Vec<(String, String)>,
}

impl Verification {
    /// Whether nothing was added, changed or removed (see also
    /// [`Verification::unverified`]).
    pub fn matches(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Reads `dir/ces-manifest.json` (never through a symbolic link) and returns
/// it with its bytes' digest.
pub fn read_manifest(dir: &Path) -> Result<(Manifest, String), OutputsError> {
    let root = open_dir(dir)?;
    read_manifest_at(&root, dir)
}

fn read_manifest_at(root: &std::os::fd::OwnedFd, dir: &Path) -> Result<(Manifest, String), OutputsError> {
    let path = dir.join(MANIFEST_NAME);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(root, MANIFEST_NAME, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(OutputsError::NoManifest { dir: dir.to_owned() }),
        Err(e) => return Err(OutputsError::ReadManifest { path, source: e.into() }),
    };
    let stat =
        rustix::fs::fstat(&fd).map_err(|e| OutputsError::ReadManifest { path: path.clone(), source: e.into() })?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_size as u64 > MAX_MANIFEST {
        let source = std::io::Error::other("not a regular file of at most 1 GiB");
        return Err(OutputsError::ReadManifest { path, source });
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_MANIFEST)
        .read_to_end(&mut bytes)
        .map_err(|source| OutputsError::ReadManifest { path: path.clone(), source })?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| OutputsError::BadManifest { path, source })?;
    Ok((manifest, crate::sha256_digest(&bytes)))
}

/// Walks `dir` again and compares it with its manifest, entry by entry
/// (ces's own files, the reserved names, are left out of both).
pub fn verify(dir: &Path) -> Result<Verification, OutputsError> {
    let root = open_dir(dir)?;
    let (manifest, manifest_digest) = read_manifest_at(&root, dir)?;
    let then: BTreeMap<Vec<u8>, &Entry> = manifest.entries.iter().map(|e| (e.path_bytes(), e)).collect();
    // Only what the seal hashed, at the size it saw, is hashed again: a file
    // the seal left unhashed (a 16 TiB sparse one) is not hashed here either.
    let wanted = |path: &[u8], size: u64| matches!(then.get(path).map(|e| &e.kind), Some(Kind::File { size: s, sha256: Some(_), .. }) if *s == size);
    let mut visit = Visit { strip: false, hashing: Hashing::only(&wanted) };
    let now = walk(&root, dir, &RESERVED, &mut visit)?;
    let now: BTreeMap<Vec<u8>, &Entry> = now.iter().map(|e| (e.path_bytes(), e)).collect();
    let added = now.iter().filter(|(k, _)| !then.contains_key(*k)).map(|(_, e)| e.path.clone()).collect();
    let removed = then.iter().filter(|(k, _)| !now.contains_key(*k)).map(|(_, e)| e.path.clone()).collect();
    let changed: BTreeMap<&Vec<u8>, Change> = then
        .iter()
        .filter_map(|(k, old)| {
            let new = now.get(k)?;
            let what = differences(old, new);
            (!what.is_empty()).then(|| (k, Change { path: old.path.clone(), what }))
        })
        .collect();
    let unverified = then
        .iter()
        .filter(|(k, _)| now.contains_key(*k) && !changed.contains_key(k))
        .filter_map(|(_, e)| match &e.kind {
            Kind::File { sha256: None, not_hashed, unreadable, .. } => {
                let why = not_hashed.clone().or_else(|| unreadable.clone()).unwrap_or_else(|| "no sha256".to_owned());
                Some((e.path.clone(), why))
            }
            _ => None,
        })
        .collect();
    let changed = changed.into_values().collect();
    Ok(Verification { manifest, manifest_digest, added, removed, changed, unverified })
}

fn differences(old: &Entry, new: &Entry) -> Vec<&'static str> {
    let mut what = Vec::new();
    if old.kind.word() != new.kind.word() {
        return vec!["type"];
    }
    match (&old.kind, &new.kind) {
        (Kind::File { size: s1, sha256: h1, .. }, Kind::File { size: s2, sha256: h2, .. }) if s1 != s2 || h1 != h2 => {
            what.push("content");
        }
        (Kind::Symlink { target: t1, target_hex: x1 }, Kind::Symlink { target: t2, target_hex: x2 })
            if t1 != t2 || x1 != x2 =>
        {
            what.push("target");
        }
        _ => {}
    }
    if old.mode != new.mode {
        what.push("mode");
    }
    what
}
