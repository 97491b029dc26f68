//! Built binaries that the tests' unprivileged users can run, wherever the
//! checkout is.
//!
//! Tests run `ces` (and their own test binary) as another user, but cargo
//! builds them under the checkout's `target/`, which that user may not reach:
//! a checkout under `/root` (mode 0700) is the usual case. [`for_all_users`]
//! copies a binary once per content into `/tmp/ces-test-bin/<sha256>/NAME`, a
//! root-owned tree that every user can read and search but only root can
//! change, so the copy cannot be swapped under a test by the user it runs as.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

/// Where the copies live: in `/tmp` itself rather than `$TMPDIR`, which may be
/// a private directory of the user running the tests.
pub const BIN_ROOT: &str = "/tmp/ces-test-bin";

/// Copies not used for this long are removed by the next test binary that
/// copies one, so that rebuilds do not fill `/tmp` (a debug `ces` is ~200 MB).
/// Longer than any test binary runs: each touches the copies it uses when it
/// first takes them.
const KEEP_UNUSED: Duration = Duration::from_secs(3600);

/// `binary` (e.g. `env!("CARGO_BIN_EXE_ces")` or the running test binary) as
/// a path every user can execute: a copy, with the same file name, in a
/// root-owned directory named by the sha256 of its content. Made once per
/// binary and process, atomically (a temp file renamed into place), so test
/// binaries running at the same time share it.
///
/// Panics (test code) when not root, or when [`BIN_ROOT`] exists but is not a
/// directory owned by root that only root can write.
pub fn for_all_users(binary: impl AsRef<Path>) -> PathBuf {
    static COPIES: Mutex<Option<HashMap<PathBuf, PathBuf>>> = Mutex::new(None);
    let binary = binary.as_ref();
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    let copies = copies.get_or_insert_with(HashMap::new);
    if let Some(copy) = copies.get(binary) {
        return copy.clone();
    }
    let copy = copy_for_all_users(binary);
    copies.insert(binary.to_owned(), copy.clone());
    copy
}

fn copy_for_all_users(binary: &Path) -> PathBuf {
    let name = binary.file_name().unwrap_or_else(|| panic!("{} has no file name", binary.display()));
    let root = Path::new(BIN_ROOT);
    root_owned_dir(root);
    // Copy to a temp name while hashing, so that the key is the content of
    // the copy itself even if cargo replaces `binary` meanwhile.
    let temp = root.join(format!(".copy-{}-{}", std::process::id(), name.to_string_lossy()));
    let digest = copy_hashing(binary, &temp);
    let dir = root.join(&digest);
    root_owned_dir(&dir);
    // A use keeps the copy: the clean-up below goes by the directory's mtime.
    let now = std::fs::FileTimes::new().set_modified(SystemTime::now());
    if let Ok(handle) = std::fs::File::open(&dir) {
        let _ = handle.set_times(now);
    }
    let copy = dir.join(name);
    std::fs::rename(&temp, &copy).unwrap_or_else(|e| panic!("rename {} to {}: {e}", temp.display(), copy.display()));
    remove_unused(root, &digest);
    copy
}

/// Copies `from` to a new file `to` (mode 0755), returning the sha256 (hex)
/// of what it wrote.
fn copy_hashing(from: &Path, to: &Path) -> String {
    let mut source = std::fs::File::open(from).unwrap_or_else(|e| panic!("open {}: {e}", from.display()));
    let _ = std::fs::remove_file(to);
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(to)
        .unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = source.read(&mut buffer).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        target.write_all(&buffer[..n]).unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
    }
    // The umask may have taken bits off the mode given at creation.
    target.set_permissions(std::fs::Permissions::from_mode(0o755)).unwrap();
    target.sync_all().unwrap();
    hex::encode(hasher.finalize())
}

/// Makes `dir` (mode 0755) if missing, and checks that it is a directory (not
/// a link) owned by root that no one else can write.
fn root_owned_dir(dir: &Path) {
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap(),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("mkdir {}: {e}", dir.display()),
    }
    let meta = std::fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(
        meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o022 == 0 && meta.mode() & 0o555 == 0o555,
        "{} must be a directory owned by root, mode 0755 (it is {} owned by uid {}, mode {:o}): run the tests \
         as root, and remove it if someone else made it",
        dir.display(),
        if meta.is_dir() { "a directory" } else { "not a directory" },
        meta.uid(),
        meta.mode() & 0o7777,
    );
}

/// Removes the copies under `root` unused for [`KEEP_UNUSED`] but `keep`,
/// and temp files that old (left by a test binary killed while copying).
fn remove_unused(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let digest = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if name == keep || !(digest || name.starts_with(".copy-")) {
            continue;
        }
        let unused = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if unused.is_some_and(|age| age > KEEP_UNUSED) {
            let _ = if digest { std::fs::remove_dir_all(entry.path()) } else { std::fs::remove_file(entry.path()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As every test that needs root: fail, not skip (the suite runs as root).
    fn require_root() {
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        assert!(root, "this test makes root-owned directories: run the suite as root (CI does)");
    }

    #[test]
    fn copies_unused_for_an_hour_are_removed_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let [old, recent, kept] = ["a", "b", "c"].map(|c| c.repeat(64));
        let hour_ago = SystemTime::now() - KEEP_UNUSED - Duration::from_secs(60);
        for (name, age) in [(&old, hour_ago), (&recent, SystemTime::now()), (&kept, hour_ago)] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            let handle = std::fs::File::open(dir.path().join(name)).unwrap();
            handle.set_times(std::fs::FileTimes::new().set_modified(age)).unwrap();
        }
        let stale_temp = dir.path().join(".copy-1-ces");
        std::fs::write(&stale_temp, "").unwrap();
        std::fs::File::options().write(true).open(&stale_temp).unwrap().set_modified(hour_ago).unwrap();
        let other = dir.path().join("not-ours");
        std::fs::create_dir(&other).unwrap();
        std::fs::File::open(&other).unwrap().set_times(std::fs::FileTimes::new().set_modified(hour_ago)).unwrap();
        remove_unused(dir.path(), &kept);
        assert!(!dir.path().join(&old).exists() && !stale_temp.exists(), "unused for over an hour");
        assert!(dir.path().join(&recent).exists() && dir.path().join(&kept).exists() && other.exists());
    }

    #[test]
    fn copies_are_keyed_by_content_and_kept_once() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a/tool"), dir.path().join("b/tool"));
        for (path, content) in [(&a, "one"), (&b, "two")] {
            std::fs::create_dir(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let (copy_a, copy_b) = (for_all_users(&a), for_all_users(&b));
        assert_ne!(copy_a, copy_b, "different content, different copies");
        assert_eq!(for_all_users(&a), copy_a, "made once");
        assert_eq!(copy_a.file_name().unwrap(), "tool");
        assert_eq!(std::fs::read_to_string(&copy_a).unwrap(), "one");
        assert_eq!(std::fs::metadata(&copy_a).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(
            copy_hashing(&a, &dir.path().join("again")),
            copy_a.parent().unwrap().file_name().unwrap().to_str().unwrap()
        );
    }

    #[test]
    fn a_bin_root_that_someone_else_could_write_is_refused() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let refused = std::panic::catch_unwind(|| root_owned_dir(&open));
        assert!(refused.is_err(), "a world-writable directory is refused");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/", &link).unwrap();
        assert!(std::panic::catch_unwind(|| root_owned_dir(&link)).is_err(), "a link is refused");
        let owned = dir.path().join("owned");
        std::fs::create_dir(&owned).unwrap();
        std::os::unix::fs::chown(&owned, Some(65534), Some(65534)).unwrap();
        assert!(std::panic::catch_unwind(|| root_owned_dir(&owned)).is_err(), "another user's is refused");
        root_owned_dir(&dir.path().join("fresh"));
    }
}
