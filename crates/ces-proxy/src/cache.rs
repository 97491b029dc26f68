//! The proxy's cache, on disk:
//!
//! ```text
//! <cache>/store/              a ces image store: every blob and manifest,
//!                             content-addressed, verified (digest and size)
//!                             before it is named
//! <cache>/types/<hex>         a manifest's media type
//! <cache>/repos/<upstream>/<repository>/
//!     tags/<tag>              the digest a tag named, when, and how it was fetched
//!     blobs/<hex>             a blob or manifest this repository has (its size
//!                             and how it was fetched): only these are served
//!                             under this repository's name
//! ```
//!
//! A blob is served under a repository's name only if a manifest of that
//! repository named it: a cached blob of a private repository is not
//! reachable through a public one. Blobs go least recently used first (their
//! modification time is touched when served) once the store weighs more
//! than the cache's size.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ces_image::{Digest, Store};

/// How an object was fetched, which says who may have it from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anonymously: anyone enabled.
    Public,
    /// With the operator's shared credential: anyone enabled (the operator
    /// named the repository for it).
    Shared,
    /// With a client's own credentials: only clients whose credentials the
    /// upstream accepts for the repository.
    Private,
}

/// A tag as last fetched.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Tag {
    /// The manifest's digest.
    pub digest: String,
    /// When (Unix seconds).
    pub fetched: u64,
    /// How.
    pub access: Access,
}

/// A blob or manifest a repository has: named by one of its manifests,
/// and (`fetched`) downloaded from it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Its size.
    pub size: u64,
    /// How the repository's manifest (or, once fetched, the object itself)
    /// was fetched.
    pub access: Access,
    /// Whether its bytes were downloaded from this repository (not only
    /// named by a manifest of it: a manifest may name any digest).
    #[serde(default)]
    pub fetched: bool,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    /// The content-addressed store.
    pub store: Store,
    max_size: u64,
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

impl Cache {
    /// The cache in `dir` (made if missing), at most `max_size` bytes of blobs.
    pub fn open(dir: &Path, max_size: u64) -> Result<Cache, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let store = Store::open(dir.join("store")).map_err(|e| e.to_string())?;
        Ok(Cache { dir: dir.to_owned(), store, max_size })
    }

    fn repo_dir(&self, upstream: &str, repository: &str) -> PathBuf {
        // Both checked before: a host[:port] and a repository path, whose
        // parts never start with `_` (so never `_tags`, `_blobs`).
        self.dir.join("repos").join(upstream).join(repository)
    }

    /// The most open access with which the object's bytes were downloaded
    /// from any upstream: `Public` means anyone could have them anyway.
    pub fn origin(&self, digest: &Digest) -> Option<Access> {
        let text = std::fs::read_to_string(self.dir.join("origins").join(digest.hex())).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records a download of the object's bytes with `access`.
    pub fn add_origin(&self, digest: &Digest, access: Access) -> std::io::Result<()> {
        if self.origin(digest).is_some_and(|old| open_rank(old) >= open_rank(access)) {
            return Ok(());
        }
        write_atomic(&self.dir.join("origins").join(digest.hex()), &serde_json::to_vec(&access).unwrap_or_default())
    }

    /// The tag, if it was fetched before.
    pub fn tag(&self, upstream: &str, repository: &str, tag: &str) -> Option<Tag> {
        let bytes = std::fs::read(self.repo_dir(upstream, repository).join("_tags").join(tag)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records what `tag` names now.
    pub fn set_tag(&self, upstream: &str, repository: &str, tag: &str, value: &Tag) -> std::io::Result<()> {
        let path = self.repo_dir(upstream, repository).join("_tags").join(tag);
        write_atomic(&path, &serde_json::to_vec(value).unwrap_or_default())
    }

    /// What the repository has of `digest`, if a manifest of it named it.
    pub fn member(&self, upstream: &str, repository: &str, digest: &Digest) -> Option<Member> {
        let bytes = std::fs::read(self.repo_dir(upstream, repository).join("_blobs").join(digest.hex())).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records that the repository has `digest` (named by a manifest of it,
    /// or fetched from it).
    pub fn add_member(
        &self,
        upstream: &str,
        repository: &str,
        digest: &Digest,
        member: &Member,
    ) -> std::io::Result<()> {
        // The most open access seen stands; once fetched from it, it stays fetched.
        let kept = match self.member(upstream, repository, digest) {
            Some(old) if old.size == member.size => {
                let merged = Member {
                    size: old.size,
                    access: if open_rank(old.access) >= open_rank(member.access) { old.access } else { member.access },
                    fetched: old.fetched || member.fetched,
                };
                if merged.access == old.access && merged.fetched == old.fetched {
                    return Ok(());
                }
                merged
            }
            _ => member.clone(),
        };
        let path = self.repo_dir(upstream, repository).join("_blobs").join(digest.hex());
        write_atomic(&path, &serde_json::to_vec(&kept).unwrap_or_default())
    }

    /// A cached manifest (at most `max` bytes): its bytes and media type;
    /// `None` for anything else the store has under the digest (a layer).
    pub fn manifest(&self, digest: &Digest, max: u64) -> Option<(Vec<u8>, String)> {
        let media_type = std::fs::read_to_string(self.dir.join("types").join(digest.hex())).ok()?;
        let path = self.store.blob_path(digest);
        (std::fs::metadata(&path).ok()?.len() <= max).then_some(())?;
        let bytes = std::fs::read(path).ok()?;
        // Verified when written; checked again, as it is small.
        (Digest::of(&bytes) == *digest).then_some(())?;
        Some((bytes, media_type))
    }

    /// Stores a manifest (its bytes hash to `digest`) and its media type.
    pub fn put_manifest(&self, digest: &Digest, bytes: &[u8], media_type: &str) -> Result<(), String> {
        let mut writer = self.store.blob_writer(digest, Some(bytes.len() as u64)).map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut writer, bytes).map_err(|e| e.to_string())?;
        writer.commit().map_err(|e| e.to_string())?;
        // The same bytes are the same manifest: its type, once known, stays.
        let path = self.dir.join("types").join(digest.hex());
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, media_type.as_bytes()).map_err(|e| e.to_string())
    }

    /// Whether the blob is here, whole.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        self.store.has_blob(digest, size)
    }

    /// Marks a blob as used now (least recently used goes first).
    pub fn touch(&self, digest: &Digest) {
        if let Ok(file) = std::fs::File::options().write(true).open(self.store.blob_path(digest)) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Removes least recently used blobs until the store weighs at most
    /// nine tenths of the cache's size; `keep` are not removed (in use).
    /// Returns how many went.
    pub fn evict(&self, keep: &[String]) -> usize {
        let blobs = self.store.blob_path(&Digest::of(b"")).parent().map(Path::to_owned).unwrap_or_default();
        let Ok(entries) = std::fs::read_dir(&blobs) else { return 0 };
        let mut files: Vec<(SystemTime, u64, PathBuf, String)> = entries
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                (meta.is_file() && name.len() == 64)
                    .then(|| (meta.modified().unwrap_or(UNIX_EPOCH), meta.len(), e.path(), name))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if total <= self.max_size {
            return 0;
        }
        files.sort();
        let target = self.max_size - self.max_size / 10;
        let mut removed = 0;
        for (_, size, path, name) in files {
            if total <= target {
                break;
            }
            if keep.iter().any(|k| k.ends_with(&name)) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= size;
                removed += 1;
            }
        }
        removed
    }
}

fn open_rank(access: Access) -> u8 {
    match access {
        Access::Private => 0,
        Access::Shared => 1,
        Access::Public => 2,
    }
}

/// The descriptors a manifest or index names: (digest, size).
pub fn children(bytes: &[u8]) -> Vec<(Digest, u64)> {
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
        size: u64,
    }
    #[derive(serde::Deserialize)]
    struct Any {
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let Ok(any) = serde_json::from_slice::<Any>(bytes) else { return Vec::new() };
    any.config
        .into_iter()
        .chain(any.layers)
        .chain(any.manifests)
        .filter_map(|d| Some((d.digest.parse::<Digest>().ok()?, d.size)))
        .collect()
}

/// A manifest's media type, from its `mediaType` (or its shape).
pub fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Head>(bytes) {
        Ok(Head { media_type: Some(t), .. }) => t,
        Ok(Head { manifests: Some(_), .. }) => "application/vnd.oci.image.index.v1+json".to_owned(),
        _ => "application/vnd.oci.image.manifest.v1+json".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn members_keep_the_most_open_access_and_eviction_goes_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 25).unwrap();
        let d = Digest::of(b"abc");
        let member = |access, fetched| Member { size: 3, access, fetched };
        cache.add_member("r", "a/b", &d, &member(Access::Private, true)).unwrap();
        cache.add_member("r", "a/b", &d, &member(Access::Public, false)).unwrap();
        cache.add_member("r", "a/b", &d, &member(Access::Private, false)).unwrap();
        let kept = cache.member("r", "a/b", &d).unwrap();
        assert_eq!((kept.access, kept.fetched), (Access::Public, true));
        assert!(cache.member("r", "a/c", &d).is_none(), "another repository has not got it");

        let (old, used, new) = (b"0123456789".to_vec(), b"9876543210".to_vec(), b"abcdefghij".to_vec());
        for bytes in [&old, &used, &new] {
            cache.put_manifest(&Digest::of(bytes), bytes, "x").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Served since: the oldest untouched one goes; one in use stays.
        cache.touch(&Digest::of(&used));
        assert_eq!(cache.evict(&[]), 1);
        assert!(!cache.has_blob(&Digest::of(&old), 10) && cache.has_blob(&Digest::of(&used), 10));
        assert!(cache.has_blob(&Digest::of(&new), 10));
        assert_eq!(cache.manifest(&Digest::of(&new), 100).unwrap().1, "x");
        assert!(cache.manifest(&Digest::of(&new), 5).is_none(), "larger than a manifest may be");
    }

    #[test]
    fn children_of_manifests_and_indexes() {
        let h = "a".repeat(64);
        let manifest =
            format!(r#"{{"config":{{"digest":"sha256:{h}","size":7}},"layers":[{{"digest":"sha256:{h}","size":9}}]}}"#);
        assert_eq!(children(manifest.as_bytes()).iter().map(|c| c.1).collect::<Vec<_>>(), [7, 9]);
        assert_eq!(media_type_of(br#"{"manifests":[]}"#), "application/vnd.oci.image.index.v1+json");
    }
}
