//! What a crashed ces leaves behind, and how the next one removes it.
//!
//! Before it creates anything, a run writes a record,
//! `<state_root>/.ces-runs/<id>.json`: which ces process owns the run (pid
//! and start time, so that a recycled pid is not mistaken for it), the run's
//! state directory, the overlay ces mounted, the cgroup. The record goes
//! away after the run has been cleaned up. [`cleanup_stale`] treats a record
//! whose owner is no longer running as stale and removes everything it
//! names: the container (libcontainer's `delete`, which kills what is left
//! and removes the cgroup), the overlay mount, the state directory's
//! contents. Records of live owners are left alone, so that it is safe while
//! other ces processes run containers; two cleaners never work on the same
//! record at once (an exclusive `flock` on it).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libcontainer::container::Container;

use crate::RuntimeError;

use super::cgroups::{ContainerCgroup, Hierarchy};
use super::rootfs::{self, RunDirs};

/// The directory of run records inside the state root (not a valid
/// container id, so never a container's state directory).
const RECORDS: &str = ".ces-runs";

/// Who owns a run and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    pub id: String,
    pub pid: i32,
    pub start_time: u64,
    pub state_dir: PathBuf,
    /// The overlay ces mounted in its own mount namespace (root only).
    pub rootfs_mount: Option<PathBuf>,
    pub cgroup_path: PathBuf,
    pub rootless: bool,
    /// The host whose ces owns the run ([`crate::host::id`]); absent from
    /// the records of an older ces.
    #[serde(default)]
    pub host: Option<String>,
}

impl Record {
    /// A record for run `id`, owned by this process.
    pub(crate) fn for_this_process(
        id: &str,
        state_dir: &Path,
        rootfs_mount: Option<PathBuf>,
        cgroup_path: &Path,
        rootless: bool,
    ) -> io::Result<Record> {
        let pid = std::process::id() as i32;
        let start_time = start_time(pid)?.ok_or_else(|| io::Error::other("cannot read this process's start time"))?;
        Ok(Record {
            id: id.to_owned(),
            pid,
            start_time,
            state_dir: state_dir.to_owned(),
            rootfs_mount,
            cgroup_path: cgroup_path.to_owned(),
            rootless,
            host: Some(crate::host::id().to_owned()),
        })
    }

    /// Writes the record (atomically) and returns the guard that removes it.
    pub(crate) fn write(&self, state_root: &Path) -> Result<RecordFile, RuntimeError> {
        let dir = state_root.join(RECORDS);
        fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io { path: dir.clone(), source })?;
        let path = dir.join(format!("{}.json", self.id));
        let temp = dir.join(format!(".{}.json.{}", self.id, self.pid));
        let bytes = serde_json::to_vec(self).map_err(|e| RuntimeError::Io { path: path.clone(), source: e.into() })?;
        fs::write(&temp, bytes).map_err(|source| RuntimeError::Io { path: temp.clone(), source })?;
        fs::rename(&temp, &path).map_err(|source| {
            let _ = fs::remove_file(&temp);
            RuntimeError::Io { path: path.clone(), source }
        })?;
        Ok(RecordFile { path })
    }

    fn owner_alive(&self) -> bool {
        matches!(start_time(self.pid), Ok(Some(t)) if t == self.start_time)
    }
}

/// A written record; [`RecordFile::remove`] once the run is cleaned up.
#[derive(Debug)]
pub(crate) struct RecordFile {
    path: PathBuf,
}

impl RecordFile {
    pub(crate) fn remove(self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The start time of process `pid` (clock ticks after boot, `/proc/<pid>/stat`
/// field 22), or `None` if there is no such process.
fn start_time(pid: i32) -> io::Result<Option<u64>> {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    // Fields after the command name start at field 3.
    Ok(fields.split_whitespace().nth(19).and_then(|t| t.parse().ok()))
}

/// Removes the containers (and their cgroups, overlay mounts and state
/// directories' contents) left by ces processes that are gone. Returns how
/// many it removed. Called at every ces start; safe while other ces
/// processes run containers.
pub fn cleanup_stale(state_root: &Path) -> Result<usize, RuntimeError> {
    let records_dir = state_root.join(RECORDS);
    let entries = match fs::read_dir(&records_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(RuntimeError::Io { path: records_dir, source }),
    };
    let mut removed = 0;
    let mut hierarchy = None;
    for entry in entries {
        let entry = entry.map_err(|source| RuntimeError::Io { path: records_dir.clone(), source })?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            remove_abandoned_temp(&path, &name);
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let Ok(file) = File::open(&path) else { continue };
        // Another cleaner holds it: leave it to that one.
        if !try_lock(&file) {
            continue;
        }
        let record: Record = match fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            Some(record) => record,
            None => {
                tracing::warn!(record = %path.display(), "ignoring an unreadable run record");
                continue;
            }
        };
        // Another host's run (a store shared by a cluster's hosts): its pid,
        // cgroup and mounts are that host's, whether it lives or not.
        if !crate::host::is_this(record.host.as_deref()) || record.owner_alive() {
            continue;
        }
        if hierarchy.is_none() {
            hierarchy = Some(Hierarchy::detect()?);
        }
        let hierarchy = hierarchy.clone().unwrap_or(Hierarchy::V2 { root: PathBuf::new() });
        match clean(state_root, &record, hierarchy) {
            Ok(()) => {
                let _ = fs::remove_file(&path);
                removed += 1;
                tracing::info!(id = %record.id, "removed a container left by a ces process that is gone");
            }
            Err(e) => tracing::warn!(id = %record.id, error = %e, "cannot remove a stale container"),
        }
    }
    Ok(removed)
}

fn clean(state_root: &Path, record: &Record, hierarchy: Hierarchy) -> io::Result<()> {
    let cgroup = ContainerCgroup::at(hierarchy, record.cgroup_path.clone());
    let container_dir = state_root.join(&record.id);
    let deleted = container_dir.join("state.json").exists()
        && Container::load(container_dir.clone()).and_then(|mut c| c.delete(true)).is_ok();
    if !deleted {
        // No state, or libcontainer gave up (its processes may still be
        // dying, just after their ces was killed): do it ourselves. Only
        // processes in the container's own cgroup are signalled.
        cgroup.kill_all();
    }
    // The overlay before anything that can fail: left mounted, it keeps the
    // state directory (and the run's record around it) from being removed.
    unmount_rootfs(record)?;
    if !cgroup.remove_leftovers() {
        return Err(io::Error::other(format!("cgroup {} is still in use", record.cgroup_path.display())));
    }
    if container_dir.exists() {
        ces_image::fs::remove_tree(&container_dir)?;
    }
    if record.state_dir.is_absolute() && record.state_dir.parent().is_some() {
        RunDirs::new(&record.state_dir).remove()?;
    }
    if record.rootfs_mount.is_some() && super::check_id(&record.id).is_ok() {
        super::idmap::remove_leftovers(&record.id)?;
    }
    Ok(())
}

/// Unmounts what a root run mounted at `<state_dir>/rootfs` (lazily: a
/// process still inside does not keep it attached). Only that path is acted
/// on, reached through the state directory opened without following a
/// link, and `rootfs` itself is not followed either: a record, or a tree,
/// that points elsewhere unmounts nothing outside the state directory.
fn unmount_rootfs(record: &Record) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::mount::MntFlags;

    let Some(mount) = &record.rootfs_mount else { return Ok(()) };
    if !record.state_dir.is_absolute() || *mount != record.state_dir.join("rootfs") {
        return Err(io::Error::other(format!(
            "the run record names {} as its root filesystem, outside {}",
            mount.display(),
            record.state_dir.display()
        )));
    }
    let state = match nix::fcntl::open(
        &record.state_dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Gone (nothing mounted in it), or not a directory (a link): nothing to unmount.
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(()),
        Err(e) => return Err(rootfs::annotate(e.into(), &record.state_dir)),
    };
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    let state = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(state) };
    let target = PathBuf::from(format!("/proc/self/fd/{}/rootfs", state.as_raw_fd()));
    // Mounted more than once (stacked), each layer comes off in turn.
    for _ in 0..16 {
        match nix::mount::umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => tracing::info!(path = %mount.display(), "unmounted the root filesystem of a stale run"),
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(rootfs::annotate(e.into(), mount)),
        }
    }
    Err(io::Error::other(format!("{} is still mounted", mount.display())))
}

/// A temp record (`.<id>.json.<pid>`) whose writer is gone.
fn remove_abandoned_temp(path: &Path, name: &str) {
    let pid = name.rsplit('.').next().and_then(|p| p.parse::<i32>().ok());
    if let Some(pid) = pid
        && matches!(start_time(pid), Ok(None))
    {
        let _ = fs::remove_file(path);
    }
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own; released when `file` is closed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_tmpfs(at: &Path) {
        nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    }

    /// Needs root (to mount): the stale clean-up unmounts `<state>/rootfs`,
    /// stacked mounts too, and nothing that a link or the record points to.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn the_rootfs_of_a_stale_run_is_unmounted_and_nothing_else() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // Its own mount namespace: nothing mounted here reaches the host.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_PRIVATE | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let rootfs = state.join("rootfs");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(&rootfs).unwrap();
        fs::create_dir(&elsewhere).unwrap();
        mount_tmpfs(&rootfs);
        mount_tmpfs(&rootfs);
        mount_tmpfs(&elsewhere);
        let record = |rootfs_mount: PathBuf| Record {
            id: "x".into(),
            pid: 1,
            start_time: 1,
            state_dir: state.clone(),
            rootfs_mount: Some(rootfs_mount),
            cgroup_path: PathBuf::from("/nonexistent"),
            rootless: false,
            host: None,
        };
        // A record that names another path is refused.
        assert!(unmount_rootfs(&record(elsewhere.clone())).is_err());
        assert!(rootfs::is_mount_point(&elsewhere).unwrap());
        unmount_rootfs(&record(rootfs.clone())).unwrap();
        assert!(!rootfs::is_mount_point(&rootfs).unwrap(), "both layers are off");
        // `rootfs` swapped for a link to a mount point: not followed.
        fs::remove_dir(&rootfs).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &rootfs).unwrap();
        unmount_rootfs(&record(rootfs.clone())).unwrap();
        assert!(rootfs::is_mount_point(&elsewhere).unwrap(), "the link's target is still mounted");
        // The state directory itself a link: not followed either.
        let real_state = dir.path().join("real-state");
        fs::create_dir_all(real_state.join("rootfs")).unwrap();
        mount_tmpfs(&real_state.join("rootfs"));
        fs::remove_file(&rootfs).unwrap();
        fs::remove_dir(&state).unwrap();
        std::os::unix::fs::symlink(&real_state, &state).unwrap();
        unmount_rootfs(&record(rootfs.clone())).unwrap();
        assert!(rootfs::is_mount_point(&real_state.join("rootfs")).unwrap());
        rootfs::unmount(&real_state.join("rootfs")).unwrap();
        rootfs::unmount(&elsewhere).unwrap();
    }

    /// In a store hosts share, another host's record is never judged here:
    /// its pid (dead here, or another process) and cgroup are that host's.
    #[test]
    fn another_hosts_runs_are_left_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir_all(&state).unwrap();
        let theirs = Record {
            id: "theirs".into(),
            pid: i32::MAX,
            start_time: 1,
            state_dir: state.clone(),
            rootfs_mount: None,
            cgroup_path: PathBuf::from("/nonexistent"),
            rootless: true,
            host: Some("elsewhere/0123456789abcdef0123456789abcdef".into()),
        };
        let file = theirs.write(dir.path()).unwrap();
        assert!(!theirs.owner_alive(), "dead, as far as this host can tell");
        assert_eq!(cleanup_stale(dir.path()).unwrap(), 0);
        assert!(dir.path().join(RECORDS).join("theirs.json").is_file(), "the record stays");
        assert!(state.is_dir(), "and its state");
        file.remove().unwrap();
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let record = Record::for_this_process("x", Path::new("/tmp/x"), None, Path::new("/ces/x"), false).unwrap();
        assert!(record.owner_alive());
        let recycled = Record { start_time: record.start_time + 1, ..record };
        assert!(!recycled.owner_alive());
    }
}
