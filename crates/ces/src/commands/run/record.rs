//! Run records, so that nothing a run creates outlives it by accident.
//!
//! ```text
//! <store>/runs/<id>/lock          flock'ed by the ces process running it
//! <store>/runs/<id>/record.json   what to clean: the scratch directory
//! <store>/runs/<id>/audit.json    while the run's start is in the audit log
//!                                 and its end is not: who it is for
//! <store>/runs/<id>/state/        the backend's state (bundle, overlay)
//! ```
//!
//! A run's record is written (under a temporary name, locked, then renamed)
//! before its directories are created, and removed after they are. A ces that
//! dies in between leaves a record whose lock is free: the next `ces run` or
//! `ces gc` removes its scratch and state directories, records the run's end
//! (`supervisor_lost`) in the audit log if its start is there, then removes
//! the record. Outputs are never removed.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use ces_image::fs::RemoveError;
use ces_runtime::Identity;
use rustix::fd::{AsFd as _, OwnedFd};
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};

/// Records older than this without a lock file are leftovers of a crash
/// between `mkdir` and the lock (a live one gets its lock at once).
const ORPHAN_AGE: Duration = Duration::from_secs(3600);
/// The prefix of a record being written.
const NEW_PREFIX: &str = ".new-";

/// Where run records live in a store.
pub fn runs_dir(store_root: &Path) -> PathBuf {
    store_root.join("runs")
}

/// What a record says (never an environment value).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Record {
    id: String,
    pid: u32,
    runtime: String,
    outputs: PathBuf,
    scratch: PathBuf,
    /// The host whose ces runs it ([`ces_runtime::host::id`]); absent from
    /// the records of an older ces.
    #[serde(default)]
    host: Option<String>,
}

/// The directories of one run.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The run id.
    pub id: String,
    /// The backend's name.
    pub runtime: String,
    /// `outputs_<id>`: created empty, kept.
    pub outputs: PathBuf,
    /// `scratch_<id>`: created empty, removed at the end.
    pub scratch: PathBuf,
    /// The backend's state directory: created empty, removed at the end.
    pub state: PathBuf,
}

/// A run in progress: its record is locked; dropping it (or [`ActiveRun::finish`])
/// removes the scratch and state directories and the record.
#[derive(Debug)]
pub struct ActiveRun {
    dir: PathBuf,
    paths: RunPaths,
    lock: Option<File>,
    created: Vec<Created>,
    finished: bool,
}

/// A directory the run made, with its parent held open since: it is removed
/// where it was made, not wherever its path leads by then.
#[derive(Debug)]
struct Created {
    path: PathBuf,
    parent: OwnedFd,
    name: OsString,
    /// The directory itself, as made: what root mounts (see [`ActiveRun::pin`]).
    dir: std::sync::Arc<OwnedFd>,
}

impl ActiveRun {
    /// Writes the record, then creates the run's directories (`owner`, when
    /// given, gets the outputs and scratch directories).
    pub fn start(runs: &Path, paths: RunPaths, owner: Option<Identity>) -> anyhow::Result<ActiveRun> {
        // Searchable, not listable: a run's directory is found by its id only.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(runs)
            .with_context(|| format!("cannot create {}", runs.display()))?;
        let dir = runs.join(&paths.id);
        let new = runs.join(format!("{NEW_PREFIX}{}", paths.id));
        // Searchable (not listable) by others: as root, the container's user
        // on the host must reach the root filesystem under `state/`.
        fs::DirBuilder::new().mode(0o711).create(&new).with_context(|| format!("cannot create {}", new.display()))?;
        let lock = (|| {
            let lock = ces_image::fs::open_lock(&new.join("lock"))?;
            rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
            let record = Record {
                id: paths.id.clone(),
                pid: std::process::id(),
                runtime: paths.runtime.clone(),
                outputs: paths.outputs.clone(),
                scratch: paths.scratch.clone(),
                host: Some(ces_runtime::host::id().to_owned()),
            };
            fs::write(new.join("record.json"), serde_json::to_vec_pretty(&record)?)?;
            fs::rename(&new, &dir)?;
            Ok::<File, io::Error>(lock)
        })();
        let lock = match lock {
            Ok(lock) => lock,
            Err(error) => {
                let _ = remove_tree_one_fs(&new);
                return Err(error).with_context(|| format!("cannot write the run record {}", dir.display()));
            }
        };
        let mut run = ActiveRun { dir, paths, lock: Some(lock), created: Vec::new(), finished: false };
        run.create(&run.paths.state.clone(), 0o711, None)?;
        // Owner only: while the container runs, what it writes there (a file
        // made setuid, before the seal removes the bit) is nobody else's to run.
        run.create(&run.paths.outputs.clone(), 0o700, owner)?;
        run.create(&run.paths.scratch.clone(), 0o700, owner)?;
        Ok(run)
    }

    /// Makes the directory `path` (for `owner`, when given: in their
    /// directory, as root). Relative to its parent's fd, opened without
    /// following a link at its last component (for `owner`, found with their
    /// credentials: no further than they reach); the new directory is opened
    /// without following a link, checked to be the one made, and given away
    /// by that fd. A user who swaps the parent or the new name for a link
    /// meanwhile cannot make root create or chown anything elsewhere.
    fn create(&mut self, path: &Path, mode: u32, owner: Option<Identity>) -> anyhow::Result<()> {
        let context = || format!("cannot create {}", path.display());
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            anyhow::bail!("cannot create {}: not a directory's path", path.display());
        };
        let open_parent = || {
            rustix::fs::open(
                parent,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let parent = match owner {
            Some(_) => crate::identity::as_invoker(open_parent).with_context(context)??,
            None => open_parent().with_context(context)?,
        };
        rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(mode)).with_context(context)?;
        let dir = rustix::fs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(context)?;
        let stat = rustix::fs::fstat(&dir).with_context(context)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory
            || stat.st_uid != rustix::process::geteuid().as_raw()
        {
            anyhow::bail!("{} was replaced while it was being created", path.display());
        }
        if let Some(owner) = owner {
            let (uid, gid) = (rustix::fs::Uid::from_raw(owner.host_uid), rustix::fs::Gid::from_raw(owner.host_gid));
            rustix::fs::fchown(&dir, Some(uid), Some(gid))
                .with_context(|| format!("cannot give {} to uid {}", path.display(), owner.host_uid))?;
        }
        let dir = std::sync::Arc::new(dir);
        self.created.push(Created { path: path.to_owned(), parent, name: name.to_owned(), dir });
        Ok(())
    }

    /// The directory the run made at `path` (outputs, scratch), held open
    /// since: root mounts it, not what `path` leads to by then (a user who
    /// swaps it for a link meanwhile mounts nothing of anyone else's).
    pub fn pin(&self, path: &Path) -> Option<std::sync::Arc<OwnedFd>> {
        self.created.iter().find(|c| c.path == path).map(|c| c.dir.clone())
    }

    /// The run's directories.
    pub fn paths(&self) -> &RunPaths {
        &self.paths
    }

    /// Removes the outputs directory if the container never wrote to it (for
    /// a run that could not start).
    pub fn discard_outputs_if_empty(&mut self) {
        let Some(index) = self.created.iter().position(|c| c.path == self.paths.outputs) else { return };
        let created = &self.created[index];
        if rustix::fs::unlinkat(&created.parent, &created.name, AtFlags::REMOVEDIR).is_ok() {
            self.created.remove(index);
        }
    }

    /// Removes the scratch and state directories, then the record; returns
    /// what could not be removed.
    pub fn finish(mut self) -> Vec<String> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Vec<String> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut problems = Vec::new();
        for path in [&self.paths.scratch, &self.paths.state] {
            if let Some(created) = self.created.iter().find(|c| c.path == *path)
                && let Err(error) = ces_image::fs::remove_tree_at(created.parent.as_fd(), &created.name, path)
            {
                problems.push(format!("cannot remove {}: {}", path.display(), removal_error(error)));
            }
        }
        if problems.is_empty()
            && let Err(error) = remove_tree_one_fs(&self.dir)
        {
            problems.push(format!("cannot remove the run record {}: {error}", self.dir.display()));
        }
        // Until now the lock said "in use"; left behind, the record is stale
        // and the next ces start tries again.
        self.lock.take();
        problems
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        for problem in self.cleanup() {
            tracing::warn!("{problem}");
        }
    }
}

/// The file in a run's record that says its start is in the audit log and
/// its end is not yet: written before the start record, removed once the
/// end is written. A stale record that has it gets a `supervisor_lost` end.
const OPENED: &str = "audit.json";

/// What [`OPENED`] holds: who the run's audit records are for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Opened {
    /// Who the run is for (its start record's user).
    pub user: ces_audit::User,
    /// The ces process running it.
    pub pid: u32,
    /// What `ces ps` shows of it, and how `ces stop` finds its ces (absent
    /// from the records of an older ces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::running::RunInfo>,
}

/// Notes, in run `id`'s record, that its start goes to the audit log: from
/// now on, a ces that dies leaves a run the next start closes.
pub fn mark_opened(runs: &Path, id: &str, opened: &Opened) -> anyhow::Result<()> {
    let dir = runs.join(id);
    let (temp, path) = (dir.join(format!("{OPENED}.new")), dir.join(OPENED));
    (|| {
        fs::write(&temp, serde_json::to_vec(opened)?)?;
        fs::rename(&temp, &path)
    })()
    .with_context(|| format!("cannot write {}", path.display()))
}

/// Notes that run `id`'s end is in the audit log.
pub fn mark_closed(runs: &Path, id: &str) -> anyhow::Result<()> {
    let path = runs.join(id).join(OPENED);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// A stale run whose end the audit log lacks (its ces died while it ran).
#[derive(Debug)]
pub struct Unclosed<'a> {
    /// The run id.
    pub id: &'a str,
    /// Its outputs directory, as its record says.
    pub outputs: Option<&'a Path>,
    /// Who it was for; `None` when the note cannot be read.
    pub opened: Option<Opened>,
}

/// Removes what runs of a ces that died left behind: for each record whose
/// lock is free, `cleanup_state` on its state directory (to stop and unmount
/// what a backend left; false: not yet, the run is left for the next start),
/// its scratch directory (only a directory named
/// `scratch_<id>`), the state directory, then `close` for a run whose start
/// is in the audit log without its end (it records the end, and says whether
/// it could), then the record. Until all of that is done the record (and its
/// lock file) stays, so the next start tries again. Returns the runs cleaned.
pub fn clean_stale(
    runs: &Path,
    cleanup_state: &dyn Fn(&Path) -> bool,
    close: &dyn Fn(&Unclosed<'_>) -> bool,
) -> Vec<String> {
    let Ok(entries) = fs::read_dir(runs) else { return Vec::new() };
    let mut cleaned = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let old = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > ORPHAN_AGE)
        };
        if name.starts_with(NEW_PREFIX) {
            if old() {
                let _ = remove_tree_one_fs(&dir);
            }
            continue;
        }
        if !ces_runtime::plan::is_run_id(&name) {
            continue;
        }
        let Ok(lock) = File::open(dir.join("lock")) else {
            if old() {
                let _ = remove_tree_one_fs(&dir);
            }
            continue;
        };
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // a live run
        }
        let record: Option<Record> =
            fs::read(dir.join("record.json")).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let record = record.filter(|r| r.id == name);
        // Another host's run (a store shared by a cluster's hosts): only its
        // own host can tell whether it lives, and clean up after it.
        if record.as_ref().is_some_and(|r| !ces_runtime::host::is_this(r.host.as_deref())) {
            continue;
        }
        // The backend first: what still runs is stopped, what is mounted
        // unmounted. Until it is, the scratch stays: the container may use it.
        let state = dir.join("state");
        if !cleanup_state(&state) {
            continue;
        }
        if let Some(record) = &record {
            let expected = format!("scratch_{name}");
            if record.scratch.file_name().is_some_and(|f| *f == *expected)
                && let Err(error) = remove_tree_one_fs(&record.scratch)
            {
                tracing::warn!(path = %record.scratch.display(), %error, "cannot remove a stale scratch directory");
                continue;
            }
        }
        if let Err(error) = remove_tree_one_fs(&state) {
            tracing::warn!(path = %state.display(), %error, "cannot remove the state of a stale run");
            continue;
        }
        match fs::read(dir.join(OPENED)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            read => {
                let opened = read.ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
                let outputs = record.as_ref().map(|r| r.outputs.as_path());
                if !close(&Unclosed { id: &name, outputs, opened }) {
                    continue; // its end is not recorded yet: the next start tries again
                }
                let _ = fs::remove_file(dir.join(OPENED));
            }
        }
        match remove_tree_one_fs(&dir) {
            Ok(()) => cleaned.push(name),
            Err(error) => tracing::warn!(path = %dir.display(), %error, "cannot remove a stale run record"),
        }
    }
    cleaned
}

/// Removes a directory tree without leaving its file system and without
/// following a link, even one swapped in during the removal (see
/// [`ces_image::fs`]): a directory that is a mount point is an error, and
/// nothing on the other side is touched. Directories that deny their owner
/// write access are opened up first.
pub fn remove_tree_one_fs(path: &Path) -> io::Result<()> {
    ces_image::fs::remove_tree(path).map_err(removal_error)
}

/// A removal's error as one message, the failing file and its cause
/// included (the callers name the tree).
fn removal_error(error: RemoveError) -> io::Error {
    match error {
        RemoveError::Io { path, source } => io::Error::new(source.kind(), format!("{}: {source}", path.display())),
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn paths(base: &Path, id: &str) -> RunPaths {
        RunPaths {
            id: id.into(),
            runtime: "podman".into(),
            outputs: base.join(format!("outputs_{id}")),
            scratch: base.join(format!("scratch_{id}")),
            state: base.join("runs").join(id).join("state"),
        }
    }

    #[test]
    fn a_run_creates_then_removes_all_but_its_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let id = "20231114-221320-deadbeef";
        let run = ActiveRun::start(&runs, paths(dir.path(), id), None).unwrap();
        let p = run.paths().clone();
        for d in [&p.outputs, &p.scratch, &p.state] {
            assert!(d.is_dir(), "{}", d.display());
        }
        fs::write(p.outputs.join("result"), "kept").unwrap();
        fs::create_dir_all(p.scratch.join("deep/er")).unwrap();
        fs::write(p.scratch.join("deep/er/f"), "x").unwrap();
        fs::set_permissions(p.scratch.join("deep"), fs::Permissions::from_mode(0o500)).unwrap();
        // Live: not stale.
        assert!(clean_stale(&runs, &|_| true, &|_| true).is_empty());
        assert!(p.scratch.is_dir());
        assert!(run.finish().is_empty());
        assert!(!p.scratch.exists() && !p.state.exists() && !runs.join(id).exists());
        assert_eq!(fs::read_to_string(p.outputs.join("result")).unwrap(), "kept");
    }

    #[test]
    fn stale_records_are_cleaned_and_only_their_scratch_goes() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let id = "20231114-221320-0000abcd";
        let mut run = ActiveRun::start(&runs, paths(dir.path(), id), None).unwrap();
        let p = run.paths().clone();
        fs::write(p.scratch.join("tmp"), "x").unwrap();
        fs::write(p.outputs.join("result"), "kept").unwrap();
        // A crash: the lock goes with the process, the directories stay.
        run.lock.take();
        std::mem::forget(run);

        // A record whose scratch path points elsewhere is not followed.
        let other = "20231114-221320-0000beef";
        let decoy = dir.path().join("precious");
        fs::create_dir(&decoy).unwrap();
        fs::create_dir_all(runs.join(other)).unwrap();
        fs::write(runs.join(other).join("lock"), "").unwrap();
        let record = Record {
            id: other.into(),
            pid: 1,
            runtime: "podman".into(),
            outputs: dir.path().join("o"),
            scratch: decoy.clone(),
            host: None,
        };
        fs::write(runs.join(other).join("record.json"), serde_json::to_vec(&record).unwrap()).unwrap();
        // Another host's run, in a store hosts share: its lock free here
        // says nothing about it, and its scratch is in use there.
        let theirs = "20231114-221320-0000cafe";
        let their_scratch = dir.path().join(format!("scratch_{theirs}"));
        fs::create_dir_all(runs.join(theirs).join("state")).unwrap();
        fs::create_dir(&their_scratch).unwrap();
        fs::write(runs.join(theirs).join("lock"), "").unwrap();
        let record = Record {
            id: theirs.into(),
            pid: 1,
            runtime: "native".into(),
            outputs: dir.path().join(format!("outputs_{theirs}")),
            scratch: their_scratch.clone(),
            host: Some("elsewhere/0123456789abcdef0123456789abcdef".into()),
        };
        fs::write(runs.join(theirs).join("record.json"), serde_json::to_vec(&record).unwrap()).unwrap();
        // And a live one is left alone.
        let live = ActiveRun::start(&runs, paths(dir.path(), "20231114-221321-00000001"), None).unwrap();

        let seen = std::cell::RefCell::new(Vec::new());
        let cleanup = |state: &Path| {
            seen.borrow_mut().push(state.to_owned());
            true
        };
        let mut cleaned = clean_stale(&runs, &cleanup, &|_| true);
        cleaned.sort();
        assert_eq!(cleaned, [id.to_owned(), other.to_owned()]);
        assert!(!p.scratch.exists() && !p.state.exists() && !runs.join(id).exists());
        assert_eq!(fs::read_to_string(p.outputs.join("result")).unwrap(), "kept", "outputs are never removed");
        assert!(decoy.is_dir(), "a scratch path not named scratch_<id> is never removed");
        assert!(their_scratch.is_dir() && runs.join(theirs).join("state").is_dir(), "another host's run is left to it");
        let mut seen = seen.into_inner();
        seen.sort();
        assert_eq!(seen, [runs.join(id).join("state"), runs.join(other).join("state")]);
        assert!(live.paths().scratch.is_dir() && live.paths().state.is_dir());
        assert!(live.finish().is_empty());
    }

    /// A run whose start is in the audit log gets its end from the clean-up,
    /// once; if the end cannot be recorded, the record (with its lock) stays
    /// for the next start.
    #[test]
    fn a_stale_run_with_an_open_start_is_closed_once() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let (opened_id, plain_id) = ("20231114-221320-0000aaaa", "20231114-221320-0000bbbb");
        let opened = Opened { user: ces_audit::User { name: "alice".into(), uid: 1000 }, pid: 4242, run: None };
        for id in [opened_id, plain_id] {
            let mut run = ActiveRun::start(&runs, paths(dir.path(), id), None).unwrap();
            if id == opened_id {
                mark_opened(&runs, id, &opened).unwrap();
            }
            run.lock.take();
            std::mem::forget(run);
        }
        let closed = std::cell::RefCell::new(Vec::new());
        let refuse = |u: &Unclosed<'_>| {
            closed.borrow_mut().push((u.id.to_owned(), u.outputs.map(Path::to_owned), u.opened.clone()));
            false
        };
        assert_eq!(clean_stale(&runs, &|_| true, &refuse), [plain_id.to_owned()]);
        let expected = (opened_id.to_owned(), Some(dir.path().join(format!("outputs_{opened_id}"))), Some(opened));
        assert_eq!(closed.take(), std::slice::from_ref(&expected));
        assert!(runs.join(opened_id).join("lock").is_file(), "kept, lock and all, for the next start");
        assert!(
            !runs.join(opened_id).join("state").exists() && !dir.path().join(format!("scratch_{opened_id}")).exists()
        );

        let accept = |u: &Unclosed<'_>| {
            closed.borrow_mut().push((u.id.to_owned(), u.outputs.map(Path::to_owned), u.opened.clone()));
            true
        };
        assert_eq!(clean_stale(&runs, &|_| true, &accept), [opened_id.to_owned()]);
        assert_eq!(closed.take(), [expected]);
        assert!(!runs.join(opened_id).exists());
        assert!(clean_stale(&runs, &|_| true, &accept).is_empty());
        assert!(closed.take().is_empty(), "closed once");

        // A run that ended normally (its end recorded) is not closed again.
        let id = "20231114-221320-0000cccc";
        let mut run = ActiveRun::start(&runs, paths(dir.path(), id), None).unwrap();
        mark_opened(&runs, id, &Opened { user: ces_audit::User { name: "bob".into(), uid: 1 }, pid: 1, run: None })
            .unwrap();
        mark_closed(&runs, id).unwrap();
        run.lock.take();
        std::mem::forget(run);
        assert_eq!(clean_stale(&runs, &|_| true, &accept), [id.to_owned()]);
        assert!(closed.take().is_empty());
    }

    /// Needs root (to mount). A stale run whose state cannot be removed yet
    /// (something still mounted in it) keeps its record and lock: the next
    /// start tries again, rather than an orphan being left for an hour.
    #[test]
    fn a_stale_run_whose_state_stays_mounted_keeps_its_lock() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let id = "20231114-221320-0000dddd";
        let mut run = ActiveRun::start(&runs, paths(dir.path(), id), None).unwrap();
        let mnt = run.paths().state.join("rootfs");
        run.lock.take();
        std::mem::forget(run);
        fs::create_dir(&mnt).unwrap();
        let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&mnt).status().unwrap();
        assert!(mounted.success());
        let cleaned = clean_stale(&runs, &|_| true, &|_| true);
        let lock = runs.join(id).join("lock").is_file();
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        assert!(cleaned.is_empty());
        assert!(lock, "the lock stays with the record");
        assert_eq!(clean_stale(&runs, &|_| true, &|_| true), [id.to_owned()]);
        assert!(!runs.join(id).exists());
    }

    /// Needs root (to give the directories away). The user swaps the
    /// directory that holds `outputs_<id>` and `scratch_<id>` (theirs) for a
    /// link to a directory of root's, again and again, while runs make
    /// them: nothing is ever made, nor given to the user, through the link.
    #[test]
    fn a_parent_swapped_for_a_link_while_the_run_is_made_is_never_followed() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (runs, home, sentinel) = (dir.path().join("runs"), dir.path().join("home"), dir.path().join("sentinel"));
        fs::create_dir(&home).unwrap();
        fs::create_dir(&sentinel).unwrap();
        let owner = Identity { host_uid: 4242, host_gid: 4343 };
        for round in 0..200_u32 {
            let stop = Arc::new(AtomicBool::new(false));
            let attacker = {
                let (stop, home, sentinel) = (stop.clone(), home.clone(), sentinel.clone());
                let moved = dir.path().join("moved");
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if fs::rename(&home, &moved).is_ok() {
                            let _ = std::os::unix::fs::symlink(&sentinel, &home);
                            std::thread::yield_now();
                            let _ = fs::remove_file(&home);
                            let _ = fs::rename(&moved, &home);
                        }
                    }
                })
            };
            let id = format!("20231114-221320-{round:08x}");
            let mut paths = paths(dir.path(), &id);
            paths.state = runs.join(&id).join("state");
            (paths.outputs, paths.scratch) = (home.join(format!("outputs_{id}")), home.join(format!("scratch_{id}")));
            // May fail (the parent was a link when it was opened).
            let run = ActiveRun::start(&runs, paths, Some(owner));
            stop.store(true, Ordering::Relaxed);
            attacker.join().unwrap();
            drop(run);
            let made: Vec<_> = fs::read_dir(&sentinel).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(made.is_empty(), "round {round}: made through the link: {made:?}");
        }
    }

    #[test]
    fn removal_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), tree.join("file-link")).unwrap();
        remove_tree_one_fs(&tree).unwrap();
        assert!(outside.join("keep").exists());
        assert!(!tree.exists());
        remove_tree_one_fs(&tree).unwrap();
    }

    /// Needs root (to mount a tmpfs in the test's temp dir).
    #[test]
    fn removal_stops_at_a_mount_point() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let mnt = tree.join("a/mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&mnt).status().unwrap();
        assert!(mounted.success());
        fs::write(mnt.join("inside"), "x").unwrap();
        let result = remove_tree_one_fs(&tree);
        let inside = mnt.join("inside").exists();
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        assert!(result.unwrap_err().to_string().contains("still mounted"));
        assert!(inside, "nothing on the mounted file system was removed");
        remove_tree_one_fs(&tree).unwrap();
    }
}
