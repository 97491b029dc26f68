//! Runs in progress, as `ces ps` lists them and `ces stop` stops them.
//!
//! Nothing new is kept for this: a run's record (`<store>/runs/<id>/`, see
//! `commands/run/record.rs`) is locked by its ces for the run's whole life,
//! and holds, from just before the container starts until its end is in the
//! audit log, `audit.json` ([`Opened`]: who the run is for, its ces's pid and
//! [`RunInfo`]). A run is running when its lock is held, that note is there,
//! and the process it names is alive and is the one that wrote it (same
//! start time: a pid reused after a `kill -9` is not the run's).
//!
//! `ces stop` sends `SIGTERM` to that ces, through a pidfd opened before the
//! start time is checked (the process cannot be swapped after the check):
//! ces passes it on to the container and ends the run as for any `SIGTERM`.
//! A user sees and stops their own runs (under sudo, the user who ran sudo);
//! root of the host, everyone's.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rustix::fs::FlockOperation;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::commands::run::record::Opened;

/// What `ces ps` shows of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// `--name`.
    pub name: Option<String>,
    /// The image as named.
    pub image: String,
    /// Its digest.
    pub digest: String,
    /// The backend.
    pub runtime: String,
    /// When the run started (RFC 3339, UTC).
    pub started: String,
    /// The start time of the ces process, in clock ticks since boot
    /// (`/proc/<pid>/stat`), which tells it from a later process of the same pid.
    pub pid_start: u64,
    /// The run's limits.
    pub limits: ces_audit::Limits,
    /// Published ports (`-p`), as `HOST_ADDRESS:HOST_PORT->CONTAINER_PORT/tcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// The outputs directory.
    pub outputs: PathBuf,
    /// The host whose ces runs it ([`ces_runtime::host::id`]): only there
    /// does its pid name it (absent from the notes of an older ces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A running run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Running {
    /// The run id.
    pub id: String,
    /// Who it is for.
    pub user: ces_audit::User,
    /// Its ces process.
    pub pid: u32,
    /// What it is.
    #[serde(flatten)]
    pub info: RunInfo,
}

/// Why a run cannot be stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// No running run of this user has that id or name.
    #[error("no run {0:?} is running (see ces ps)")]
    NotFound(String),
    /// Root: several users' runs have that name.
    #[error("several running runs are named {0:?}: give the run id (see ces ps)")]
    Ambiguous(String),
    /// `-n NAME` again while a run of that name runs.
    #[error("a run named {name:?} is running already ({id}): names are unique among running runs")]
    NameTaken {
        /// The name.
        name: String,
        /// The run that has it.
        id: String,
    },
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The runs in `runs` that are running, and that `uid` may see (`None`:
/// everyone's, for root).
pub fn list(runs: &Path, uid: Option<u32>) -> Vec<Running> {
    let Ok(entries) = fs::read_dir(runs) else { return Vec::new() };
    let mut found: Vec<Running> = entries
        .flatten()
        .filter_map(|entry| {
            let id = entry.file_name().to_str()?.to_owned();
            ces_runtime::plan::is_run_id(&id).then_some(())?;
            running(&entry.path(), id)
        })
        .filter(|run| uid.is_none_or(|uid| run.user.uid == uid))
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// Run `id`'s record at `dir`, if the run is running.
fn running(dir: &Path, id: String) -> Option<Running> {
    let lock = File::open(dir.join("lock")).ok()?;
    if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockShared).is_ok() {
        return None; // no ces holds it: the run is over, or its ces died
    }
    let opened: Opened = serde_json::from_slice(&fs::read(dir.join("audit.json")).ok()?).ok()?;
    let info = opened.run?;
    // Another host's run, in a store hosts share: its pid is not this host's.
    ces_runtime::host::is_this(info.host.as_deref()).then_some(())?;
    (start_ticks(opened.pid) == Some(info.pid_start)).then_some(())?;
    Some(Running { id, user: opened.user, pid: opened.pid, info })
}

/// The running run that `query` names (an id, or a name) among those `uid`
/// may see (`None`: everyone's).
pub fn find(runs: &Path, query: &str, uid: Option<u32>) -> Result<Running, StopError> {
    let mut matches: Vec<Running> =
        list(runs, uid).into_iter().filter(|r| r.id == query || r.info.name.as_deref() == Some(query)).collect();
    if let Some(i) = matches.iter().position(|r| r.id == query) {
        return Ok(matches.swap_remove(i));
    }
    match matches.len() {
        0 => Err(StopError::NotFound(query.to_owned())),
        1 => Ok(matches.remove(0)),
        _ => Err(StopError::Ambiguous(query.to_owned())),
    }
}

/// Sends `SIGTERM` to the ces running `run`: the run ends as for a
/// `SIGTERM` to ces (passed on, then a kill after the stop timeout).
pub fn stop(run: &Running) -> anyhow::Result<()> {
    let gone = || StopError::NotFound(run.id.clone());
    let pid = Pid::from_raw(i32::try_from(run.pid).map_err(|_| gone())?).ok_or_else(gone)?;
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(|_| gone())?;
    // Checked after the pidfd is open: the process it holds is the run's.
    if start_ticks(run.pid) != Some(run.info.pid_start) {
        return Err(gone().into());
    }
    rustix::process::pidfd_send_signal(&pidfd, Signal::TERM)
        .with_context(|| format!("cannot signal the ces process {} of run {}", run.pid, run.id))?;
    Ok(())
}

/// Held from the check that a run's name is free until the run's note
/// ([`Opened`]) is written: two `ces run -n x` cannot both pass.
#[derive(Debug)]
pub struct NameReservation {
    _lock: Option<File>,
}

/// Refuses `name` when a running run of user `uid` has it; the reservation
/// holds the check until dropped.
pub fn reserve_name(runs: &Path, name: Option<&str>, uid: u32) -> anyhow::Result<NameReservation> {
    let Some(name) = name else { return Ok(NameReservation { _lock: None }) };
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(runs)
        .with_context(|| format!("cannot create {}", runs.display()))?;
    let path = runs.join(".names.lock");
    let lock = ces_image::fs::open_lock(&path).with_context(|| format!("cannot open {}", path.display()))?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive)
        .with_context(|| format!("cannot lock {}", path.display()))?;
    if let Some(run) = list(runs, Some(uid)).into_iter().find(|r| r.info.name.as_deref() == Some(name)) {
        return Err(StopError::NameTaken { name: name.to_owned(), id: run.id }.into());
    }
    Ok(NameReservation { _lock: Some(lock) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn this_process_has_a_start_time() {
        let mine = start_ticks(std::process::id()).unwrap();
        assert_eq!(start_ticks(std::process::id()), Some(mine));
        assert_eq!(start_ticks(u32::MAX), None);
    }
}
