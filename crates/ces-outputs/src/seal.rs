//! Writing the manifest and the ACRO metadata into an outputs directory,
//! after its container has exited.

use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use crate::manifest::{FORMAT, Kind, Manifest, MovedAside, RunIdentity};
use crate::walk::{open_dir, walk};
use crate::{CHECKSUMS_NAME, FROM_CONTAINER, MANIFEST_NAME, OutputsError, RESERVED, RESULTS_NAME, acro};

/// Who ces's files should belong to (as root for a sudo user: that user,
/// like the outputs directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

/// What [`seal`] did.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The manifest written.
    pub manifest: Manifest,
    /// `sha256:<hex>` of `ces-manifest.json`'s bytes.
    pub manifest_digest: String,
    /// Things the user should know (a reserved name moved aside, a file
    /// without a checksum, entries ACRO metadata does not list).
    pub warnings: Vec<String>,
}

/// Seals the outputs directory `dir` of the run `run`: moves aside what the
/// container left at reserved names, walks the directory, then writes
/// `checksums/`, `results.json` and, last, `ces-manifest.json` (each
/// atomically, owned by `owner` when given).
pub fn seal(dir: &Path, run: RunIdentity, owner: Option<Owner>) -> Result<Sealed, OutputsError> {
    let root = open_dir(dir)?;
    let mut warnings = Vec::new();
    let mut moved_aside = Vec::new();
    for name in RESERVED {
        let moved = move_aside(&root, name).map_err(|source| OutputsError::MoveAside {
            dir: dir.to_owned(),
            name: name.to_owned(),
            source,
        })?;
        if let Some(moved_to) = moved {
            warnings.push(format!(
                "the container left its own {name} in the outputs; ces moved it to {moved_to} and wrote its own"
            ));
            moved_aside.push(MovedAside { name: name.to_owned(), moved_to });
        }
    }
    let entries = walk(&root, dir, &RESERVED)?;

    let listed = acro::listed(&entries);
    let not_listed: Vec<&str> = entries
        .iter()
        .filter(|e| !matches!(e.kind, Kind::File { .. } | Kind::Directory { .. }) || e.path_hex.is_some())
        .map(|e| e.path.as_str())
        .collect();
    if !not_listed.is_empty() {
        warnings.push(format!(
            "{} entries are not regular files with UTF-8 names and are not in {RESULTS_NAME} (see {MANIFEST_NAME}): {}",
            not_listed.len(),
            abbreviate(&not_listed)
        ));
    }
    for entry in &entries {
        if let Kind::File { unreadable: Some(why), .. } = &entry.kind {
            warnings.push(format!("cannot read {} to hash it: {why}", entry.path));
        }
        if let Kind::Directory { not_listed: Some(why) } = &entry.kind {
            warnings.push(format!("the contents of {} are not in the manifest: {why}", entry.path));
        }
    }

    let write_error =
        |name: &'static str| move |source| OutputsError::Write { dir: dir.to_owned(), name: name.to_owned(), source };
    let checksums = create_dir(&root, CHECKSUMS_NAME, owner).map_err(write_error(CHECKSUMS_NAME))?;
    for file in &listed {
        let Some(sha256) = &file.sha256 else { continue };
        let name = acro::checksum_name(&file.name);
        if let Err(error) = write_nested(&checksums, &name, sha256.as_bytes(), owner) {
            warnings.push(format!("cannot write {CHECKSUMS_NAME}/{name}: {error}"));
        }
    }
    let results = acro::to_bytes(&acro::results(&listed, &run))
        .map_err(|source| OutputsError::Encode { name: RESULTS_NAME.to_owned(), source })?;
    write_file(&root, RESULTS_NAME, &results, owner).map_err(write_error(RESULTS_NAME))?;

    let manifest = Manifest { format: FORMAT.to_owned(), run, sealed: jiff::Timestamp::now(), moved_aside, entries };
    let mut bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| OutputsError::Encode { name: MANIFEST_NAME.to_owned(), source })?;
    bytes.push(b'\n');
    write_file(&root, MANIFEST_NAME, &bytes, owner).map_err(write_error(MANIFEST_NAME))?;
    Ok(Sealed { manifest, manifest_digest: crate::sha256_digest(&bytes), warnings })
}

fn abbreviate(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut text = names.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// Renames `name` (anything: file, directory, link) to the first free
/// `<name>.from-container[.N]`, never replacing anything.
fn move_aside(root: &OwnedFd, name: &str) -> std::io::Result<Option<String>> {
    match rustix::fs::statat(root, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    for n in 0..1000 {
        let to = if n == 0 { format!("{name}{FROM_CONTAINER}") } else { format!("{name}{FROM_CONTAINER}.{n}") };
        match rustix::fs::renameat_with(root, name, root, to.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(Some(to)),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other("no free name to move it to"))
}

/// Creates a directory (it must not exist) and opens it.
fn create_dir(parent: &OwnedFd, name: &str, owner: Option<Owner>) -> std::io::Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => {}
        // A directory ces made a moment ago for another checksum.
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    chown(&fd, owner)?;
    Ok(fd)
}

/// Writes `dir/a/b/c` creating `a/b` as needed.
fn write_nested(dir: &OwnedFd, path: &str, bytes: &[u8], owner: Option<Owner>) -> std::io::Result<()> {
    let mut parts: Vec<&str> = path.split('/').collect();
    let Some(file) = parts.pop() else { return Ok(()) };
    let mut current: Option<OwnedFd> = None;
    for part in parts {
        let next = create_dir(current.as_ref().unwrap_or(dir), part, owner)?;
        current = Some(next);
    }
    write_file(current.as_ref().unwrap_or(dir), file, bytes, owner)
}

/// Writes a file atomically: a new temporary file, its owner set, then
/// renamed over `name`. Not synced: the outputs it describes are not either
/// (the container's writes are the page cache's until the kernel writes
/// them back); the audit log, which holds the manifest's digest, is synced.
/// After a crash, `ces outputs verify` says what is missing.
fn write_file(dir: &OwnedFd, name: &str, bytes: &[u8], owner: Option<Owner>) -> std::io::Result<()> {
    let (temp, fd) = create_temp(dir, name)?;
    let written = (|| {
        chown(&fd, owner)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        rustix::fs::renameat(dir, temp.as_str(), dir, name)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
    }
    written
}

/// A new file beside `name` with a name the container could not have
/// guessed: a file it left at a predictable name would otherwise stop the
/// seal (the name is taken with `O_EXCL`, never opened if it exists).
fn create_temp(dir: &OwnedFd, name: &str) -> std::io::Result<(String, OwnedFd)> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut tries = 0;
    loop {
        // Seeded from the OS's random source (see `RandomState`).
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let temp = format!(".{name}.ces-{:016x}.tmp", hasher.finish());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => return Ok((temp, fd)),
            Err(rustix::io::Errno::EXIST) if tries < 16 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

fn chown(fd: &OwnedFd, owner: Option<Owner>) -> std::io::Result<()> {
    if let Some(owner) = owner {
        rustix::fs::fchown(
            fd.as_fd(),
            Some(rustix::fs::Uid::from_raw(owner.uid)),
            Some(rustix::fs::Gid::from_raw(owner.gid)),
        )?;
    }
    Ok(())
}
