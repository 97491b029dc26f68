//! Writing the manifest and the ACRO metadata into an outputs directory,
//! after its container has exited.

use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use ces_image::quote::quote;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use crate::manifest::{FORMAT, Kind, Manifest, MovedAside, RunIdentity, SealReport};
use crate::walk::{Hashing, Visit, open_dir, open_dir_at, walk};
use crate::{
    Budget, CHECKSUMS_NAME, FROM_CONTAINER, Interrupt, MANIFEST_NAME, OutputsError, RESERVED, RESULTS_NAME, acro,
};

/// Who ces's files should belong to (as root for a sudo user: that user,
/// like the outputs directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

/// How to seal.
#[derive(Clone, Copy)]
pub struct SealOptions<'a> {
    /// Who ces's files should belong to, if not the caller.
    pub owner: Option<Owner>,
    /// How much to hash at most.
    pub budget: Budget,
    /// Asked between chunks: stop hashing when it says so.
    pub interrupt: &'a dyn Interrupt,
}

impl std::fmt::Debug for SealOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealOptions").field("owner", &self.owner).field("budget", &self.budget).finish_non_exhaustive()
    }
}

/// What [`seal`] did.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The manifest written.
    pub manifest: Manifest,
    /// `sha256:<hex>` of `ces-manifest.json`'s bytes.
    pub manifest_digest: String,
    /// The counts for the run's end line (also in the manifest).
    pub report: SealReport,
    /// Things the user should know (a reserved name moved aside, a file
    /// without a checksum, entries ACRO metadata does not list).
    pub warnings: Vec<String>,
}

/// Seals the outputs directory `dir` of the run `run`: gives the directory
/// its owner's permissions back, moves aside what the container left at
/// reserved names, walks the directory (removing setuid/setgid bits and
/// file capabilities, hashing within the budget), then writes `checksums/`,
/// `results.json` and, last, `ces-manifest.json` (each atomically, owned by
/// `options.owner` when given). Everything is done relative to the
/// directory's descriptor, never through a link.
pub fn seal(dir: &Path, run: RunIdentity, options: &SealOptions<'_>) -> Result<Sealed, OutputsError> {
    let owner = options.owner;
    let root = open_dir(dir)?;
    let directory_mode_restored =
        restore_owner_permissions(&root).map_err(|source| OutputsError::Restore { dir: dir.to_owned(), source })?;
    let mut warnings = Vec::new();
    if let Some(mode) = &directory_mode_restored {
        warnings.push(format!(
            "the container had made the outputs directory mode {mode}; ces gave its owner read, write and search back"
        ));
    }
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
    let mut visit = Visit { strip: true, hashing: Hashing::new(options.budget, options.interrupt) };
    let entries = walk(&root, dir, &RESERVED, &mut visit)?;
    let report = report(&entries, options, visit.hashing.interrupted_by(), directory_mode_restored);

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
    let mut not_hashed = Vec::new();
    let mut stripped = Vec::new();
    for entry in &entries {
        match &entry.kind {
            Kind::File { unreadable: Some(why), .. } => {
                warnings.push(format!("cannot read {} to hash it: {why}", quote(&entry.path_bytes())));
            }
            Kind::Directory { not_listed: Some(why) } => {
                warnings.push(format!("the contents of {} are not in the manifest: {why}", quote(&entry.path_bytes())));
            }
            _ => {}
        }
        if let Kind::File { not_hashed: Some(_), .. } = &entry.kind {
            not_hashed.push(entry.path.as_str());
        }
        if let Kind::File { removed, .. } = &entry.kind
            && !removed.is_empty()
        {
            stripped.push(entry.path.as_str());
        }
        if let Kind::File { not_removed: Some(why), .. } = &entry.kind {
            warnings
                .push(format!("cannot remove setuid/setgid/capabilities from {}: {why}", quote(&entry.path_bytes())));
        }
    }
    if !not_hashed.is_empty() {
        let why = match report.interrupted_by_signal {
            Some(signal) => format!("ces was interrupted by signal {signal}"),
            None => "over the seal's budget".to_owned(),
        };
        warnings.push(format!(
            "{} files were not hashed ({why}; see {MANIFEST_NAME}): {}",
            not_hashed.len(),
            abbreviate(&not_hashed)
        ));
    }
    if !stripped.is_empty() {
        warnings.push(format!(
            "{} files had setuid/setgid/capabilities removed (see {MANIFEST_NAME}): {}",
            stripped.len(),
            abbreviate(&stripped)
        ));
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

    let manifest = Manifest {
        format: FORMAT.to_owned(),
        run,
        sealed: jiff::Timestamp::now(),
        moved_aside,
        seal: Some(report.clone()),
        entries,
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| OutputsError::Encode { name: MANIFEST_NAME.to_owned(), source })?;
    bytes.push(b'\n');
    write_file(&root, MANIFEST_NAME, &bytes, owner).map_err(write_error(MANIFEST_NAME))?;
    Ok(Sealed { manifest, manifest_digest: crate::sha256_digest(&bytes), report, warnings })
}

fn report(
    entries: &[crate::Entry],
    options: &SealOptions<'_>,
    interrupted_by_signal: Option<i32>,
    directory_mode_restored: Option<String>,
) -> SealReport {
    let files = || entries.iter().filter_map(|e| if let Kind::File { .. } = &e.kind { Some(&e.kind) } else { None });
    SealReport {
        hash_budget_bytes: options.budget.bytes,
        hash_budget_seconds: options.budget.time.as_secs(),
        files_not_hashed: files().filter(|k| matches!(k, Kind::File { sha256: None, .. })).count(),
        files_privileges_removed: files()
            .filter(|k| matches!(k, Kind::File { removed, .. } if !removed.is_empty()))
            .count(),
        interrupted_by_signal,
        directory_mode_restored,
    }
}

/// Gives the outputs directory its owner's read, write and search
/// permissions back if the container took them (`chmod 0555
/// /safe_outputs`): ces must be able to write its files, also when it is
/// not root. Returns the mode it had, if it changed it.
fn restore_owner_permissions(root: &OwnedFd) -> std::io::Result<Option<String>> {
    let mode = rustix::fs::fstat(root)?.st_mode & 0o7777;
    if mode & 0o700 == 0o700 {
        return Ok(None);
    }
    rustix::fs::fchmod(root, Mode::from_raw_mode(mode | 0o700))?;
    Ok(Some(format!("{mode:04o}")))
}

/// The first few of `names`, quoted: the container chose them, and a warning
/// reaches the terminal of whoever started the run.
fn abbreviate(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut text = names.iter().take(SHOWN).map(|n| quote(n).to_string()).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// Renames `name` (anything: file, directory, link) to
/// `<name>.from-container-<random>`, never replacing anything. The rename
/// stays in the same directory, so a directory the container made
/// unwritable moves too; the name is unguessable, so no number of names the
/// container took beforehand can stop it.
fn move_aside(root: &OwnedFd, name: &str) -> std::io::Result<Option<String>> {
    match rustix::fs::statat(root, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut tries = 0;
    loop {
        let to = format!("{name}{FROM_CONTAINER}-{}", random_hex());
        match rustix::fs::renameat_with(root, name, root, to.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(Some(to)),
            Err(rustix::io::Errno::EXIST) if tries < 16 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// 64 bits from the OS's random source (through `RandomState`'s seed), in hex.
fn random_hex() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// Creates a directory (it must not exist) and opens it.
fn create_dir(parent: &OwnedFd, name: &str, owner: Option<Owner>) -> std::io::Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => {}
        // A directory ces made a moment ago for another checksum.
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = open_dir_at(parent, name)?;
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
    let mut tries = 0;
    loop {
        let temp = format!(".{name}.ces-{}.tmp", random_hex());
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
