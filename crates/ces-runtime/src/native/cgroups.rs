//! Limits with cgroups, v1 (legacy or hybrid hosts, such as ces's build
//! machines) or v2.
//!
//! Every container gets its own cgroup under a `ces` parent in each
//! hierarchy: `/ces/<id>` as root, `/ces/user-<uid>/<id>` rootless.
//!
//! - As root, libcontainer creates it and writes the limits from the OCI
//!   spec (memory without swap, CFS quota, pids, the device allow-list).
//! - Rootless, a process may only create cgroups under a directory it owns:
//!   [`setup_delegation`] (`ces system setup`, as root) creates
//!   `/ces/user-<uid>` in every hierarchy and gives it to the user.
//!   libcontainer then creates the container's cgroup there, but its spec
//!   carries no resources (libcontainer would also write `devices.allow`,
//!   which only root may): ces writes the memory, CPU and pids files itself,
//!   after the build and before the start, and checks that the container's
//!   init really is in that cgroup (libcontainer leaves a rootless process
//!   where it was when it cannot move it). Without delegation the run is
//!   refused with [`RuntimeError::Limit`] naming `ces system setup`.
//!
//! cgroup v2 also forbids moving a process between cgroups unless its owner
//! may write the `cgroup.procs` of their common ancestor: a rootless ces must
//! itself run inside its delegated subtree (or a user-owned one), which is
//! checked up front. Only the v1 paths have been exercised on a real host.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupSetup, DEFAULT_CGROUP_ROOT};
use nix::unistd::{AccessFlags, Pid, access};

use crate::RuntimeError;
use crate::spec::Limits;

use super::oci;

/// The directory under each hierarchy's root that holds ces's cgroups.
pub const PARENT: &str = "ces";

/// The controllers a delegated v2 subtree enables for its children.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The cgroup hierarchy layout of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hierarchy {
    /// One mount point per controller (legacy, or hybrid: v1 controllers
    /// plus an empty v2 hierarchy).
    V1 {
        hybrid: bool,
        controllers: BTreeMap<String, PathBuf>,
        /// Every `cgroup` mount point, named hierarchies too.
        mounts: Vec<PathBuf>,
    },
    /// The unified hierarchy.
    V2 { root: PathBuf },
}

impl Hierarchy {
    /// The host's hierarchy, found once per process, from one read of
    /// `/proc/self/mountinfo` (libcgroups reads it once per v1 controller,
    /// each through a checked procfs handle: about 300 system calls).
    pub(crate) fn detect() -> Result<Hierarchy, RuntimeError> {
        static FOUND: std::sync::OnceLock<Hierarchy> = std::sync::OnceLock::new();
        if let Some(found) = FOUND.get() {
            return Ok(found.clone());
        }
        let found = Hierarchy::find()?;
        Ok(FOUND.get_or_init(|| found).clone())
    }

    fn find() -> Result<Hierarchy, RuntimeError> {
        let setup = libcgroups::common::get_cgroup_setup().map_err(|e| limit_error("memory", &e))?;
        match setup {
            CgroupSetup::Unified => Ok(Hierarchy::V2 { root: PathBuf::from(DEFAULT_CGROUP_ROOT) }),
            CgroupSetup::Legacy | CgroupSetup::Hybrid => {
                let mountinfo = fs::read("/proc/self/mountinfo").map_err(|e| limit_error("memory", &e))?;
                Hierarchy::v1(&mountinfo, matches!(setup, CgroupSetup::Hybrid))
            }
        }
    }

    /// The v1 hierarchy a `/proc/self/mountinfo` describes. A controller
    /// mounted at a path the kernel escapes (a space, tab, newline or
    /// backslash) is refused: libcgroups would look for it at the escaped
    /// text.
    fn v1(mountinfo: &[u8], hybrid: bool) -> Result<Hierarchy, RuntimeError> {
        let mounts = v1_mount_points(mountinfo);
        let controllers = v1_controllers(&mounts);
        if let Some(escaped) = controllers.values().find(|m| m.as_os_str().as_bytes().contains(&b'\\')) {
            let e = io::Error::other(format!(
                "{}: a cgroup mount point with a space, tab, newline or backslash is not supported",
                escaped.display()
            ));
            return Err(limit_error("memory", &e));
        }
        Ok(Hierarchy::V1 { hybrid, controllers, mounts })
    }

    /// The directories of cgroup `path` (absolute, like `/ces/x`): one per
    /// v1 controller, or the single v2 one.
    fn dirs(&self, path: &Path) -> Vec<(String, PathBuf)> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        match self {
            Hierarchy::V1 { controllers, .. } => {
                controllers.iter().map(|(name, mount)| (name.clone(), mount.join(relative))).collect()
            }
            Hierarchy::V2 { root } => vec![("unified".to_owned(), root.join(relative))],
        }
    }

    fn controller_dir(&self, controller: &str, path: &Path) -> Option<PathBuf> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        match self {
            Hierarchy::V1 { controllers, .. } => controllers.get(controller).map(|m| m.join(relative)),
            Hierarchy::V2 { root } => Some(root.join(relative)),
        }
    }

    /// Where the container sees its cgroups: `/sys/fs/cgroup` (v2), or on
    /// v1 a tmpfs there with each of the host's hierarchies under it, as
    /// libcontainer mounts them (every `cgroup` mount under the host's
    /// `/sys/fs/cgroup`, by name).
    pub(crate) fn container_mounts(&self) -> Vec<String> {
        let mut mounts = vec![DEFAULT_CGROUP_ROOT.to_owned()];
        if let Hierarchy::V1 { mounts: host, .. } = self {
            mounts.extend(
                host.iter()
                    .filter(|m| m.parent() == Some(Path::new(DEFAULT_CGROUP_ROOT)))
                    .filter_map(|m| m.file_name()?.to_str())
                    .map(|name| format!("{DEFAULT_CGROUP_ROOT}/{name}")),
            );
        }
        mounts
    }

    /// Whether the kernel accounts swap (then swap is limited too).
    pub(crate) fn swap_accounting(&self) -> bool {
        match self {
            Hierarchy::V1 { controllers, .. } => {
                controllers.get("memory").is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists())
            }
            // The root cgroup has no swap files: look at its children.
            Hierarchy::V2 { root } => fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .any(|entry| entry.path().join("memory.swap.max").exists()),
        }
    }

    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Hierarchy::V1 { hybrid: true, .. } => "cgroup v1 (hybrid host)",
            Hierarchy::V1 { hybrid: false, .. } => "cgroup v1",
            Hierarchy::V2 { .. } => "cgroup v2",
        }
    }
}

fn limit_error(limit: &'static str, cause: &dyn std::fmt::Display) -> RuntimeError {
    RuntimeError::Limit { limit, reason: format!("cannot read the cgroup setup of this host: {cause}") }
}

/// The parent cgroup of a rootless user's containers.
pub(crate) fn user_parent(uid: u32) -> PathBuf {
    Path::new("/").join(PARENT).join(format!("user-{uid}"))
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub(crate) struct ContainerCgroup {
    pub hierarchy: Hierarchy,
    /// Absolute cgroup path, as in the OCI spec.
    pub path: PathBuf,
}

/// The leaf a rootless ces moves itself into, in a delegated cgroup it
/// makes its containers' cgroups in (cgroup v2 lets no process live in a
/// cgroup whose controllers are enabled for its children). Run ids start
/// with a letter or digit, so no container's cgroup has this name.
const SUPERVISOR_LEAF: &str = "_ces";

/// The delegated cgroup this process already moved itself under (one per
/// process: `ces test` runs several containers).
static DELEGATED_BASE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

impl ContainerCgroup {
    /// A cgroup at a known path (a stale run's, from its record).
    pub(crate) fn at(hierarchy: Hierarchy, path: PathBuf) -> ContainerCgroup {
        ContainerCgroup { hierarchy, path }
    }

    /// Root: `/ces/<id>`, which libcontainer creates and limits.
    pub(crate) fn for_root(hierarchy: Hierarchy, id: &str) -> ContainerCgroup {
        let path = Path::new("/").join(PARENT).join(id);
        ContainerCgroup { hierarchy, path }
    }

    /// Rootless: a cgroup this user may create, fill and limit, found (and
    /// on cgroup v2 prepared) before the container is built, or a refusal
    /// naming what the host lacks. In order:
    ///
    /// 1. v2, ces alone in a cgroup its user owns (a `systemd-run --user`
    ///    service, a unit with `Delegate=yes`, a scope ces asked for
    ///    earlier): ces moves itself into a leaf and makes containers'
    ///    cgroups beside it.
    /// 2. `/ces/user-<uid>`, prepared by `ces system setup` (cgroup v1; on
    ///    v2 ces must already run inside it).
    /// 3. v2 with a systemd user manager (every login on a systemd host):
    ///    ces asks it for a transient scope with `Delegate=yes` holding
    ///    ces, then as in 1.
    pub(crate) fn for_rootless(hierarchy: Hierarchy, id: &str, uid: u32) -> Result<ContainerCgroup, RuntimeError> {
        let Hierarchy::V2 { root } = &hierarchy else {
            check_setup_delegation(&hierarchy, uid)?;
            let path = user_parent(uid).join(id);
            return Ok(ContainerCgroup { hierarchy, path });
        };
        let own = own_v2_cgroup().map_err(|e| RuntimeError::Limit {
            limit: "memory",
            reason: format!("cannot read this process's cgroup: {e}"),
        })?;
        let mut base = DELEGATED_BASE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = base.as_ref()
            && own == dir.join(SUPERVISOR_LEAF)
        {
            let path = dir.join(id);
            return Ok(ContainerCgroup { hierarchy, path });
        }
        // A service of ces's own may lack a controller (systemd enables `cpu`
        // only for units that ask): then a scope, which gets them all.
        let own_usable = user_owned(root, &own) && alone_in(root, &own);
        let dir = if own_usable && has_controllers(root, &own, &V2_CONTROLLERS) {
            own
        } else if setup_delegation_usable(root, &own, uid) {
            let path = user_parent(uid).join(id);
            return Ok(ContainerCgroup { hierarchy, path });
        } else {
            match super::systemd::start_scope(&format!("ces-{id}.scope"), &format!("ces run {id}")) {
                Ok(scope) => Ok(scope),
                // A limit on a missing controller is refused when written.
                Err(_) if own_usable => Ok(own.clone()),
                Err(e) => Err(e),
            }
            .map_err(|e| RuntimeError::Limit {
                limit: "memory",
                reason: format!(
                    "rootless containers need a cgroup delegated to uid {uid}: ces runs in {}, which it may \
                         not manage, and {e}; on a systemd host run ces from a login session (ssh, `machinectl \
                         shell`) or give the user a lingering user manager (`loginctl enable-linger USER`); \
                         without systemd see `ces system setup` in docs/run.md",
                    own.display()
                ),
            })?
        };
        enter_leaf(root, &dir)?;
        *base = Some(dir.clone());
        let path = dir.join(id);
        Ok(ContainerCgroup { hierarchy, path })
    }

    /// Whether the kernel accounts swap (then swap is limited too).
    pub(crate) fn swap_accounting(&self) -> bool {
        self.hierarchy.swap_accounting()
    }

    /// Root, cgroup v2: `memory.swap.max = 0`. libcgroups writes nothing for
    /// a swap limit of 0 (the spec's memory+swap equal to the memory
    /// limit), which leaves `max`: swap on, `-m` did not hold.
    pub(crate) fn no_swap(&self) -> Result<(), RuntimeError> {
        let Hierarchy::V2 { root } = &self.hierarchy else { return Ok(()) };
        let path = in_root(root, &self.path).join("memory.swap.max");
        if !path.exists() {
            return Ok(());
        }
        fs::write(&path, "0").map_err(|e| RuntimeError::Limit {
            limit: "memory",
            reason: format!("cannot write {}: {e}", path.display()),
        })
    }

    /// Rootless: checks that `init` is in this cgroup, then writes `limits`.
    pub(crate) fn apply_limits(&self, init: Pid, limits: &Limits) -> Result<(), RuntimeError> {
        let fail = |limit: &'static str, what: String| RuntimeError::Limit { limit, reason: what };
        for (controller, dir) in self.hierarchy.dirs(&self.path) {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if !procs.lines().any(|l| l.trim() == init.as_raw().to_string()) {
                return Err(fail(
                    "memory",
                    format!("the container could not be placed in its cgroup {} ({controller})", dir.display()),
                ));
            }
        }
        let write = |limit: &'static str, controller: &str, file: &str, value: String| -> Result<(), RuntimeError> {
            let Some(dir) = self.hierarchy.controller_dir(controller, &self.path) else {
                return Err(fail(limit, format!("the {controller} controller is not available")));
            };
            let path = dir.join(file);
            fs::write(&path, &value).map_err(|e| fail(limit, format!("cannot write {}: {e}", path.display())))
        };
        match &self.hierarchy {
            Hierarchy::V1 { .. } => {
                write("memory", "memory", "memory.limit_in_bytes", limits.memory.to_string())?;
                if self.swap_accounting() {
                    write("memory", "memory", "memory.memsw.limit_in_bytes", limits.memory.to_string())?;
                }
                if let Some(quota) = oci::cpu_quota(limits.cpus) {
                    write("cpu", "cpu", "cpu.cfs_period_us", oci::CPU_PERIOD_US.to_string())?;
                    write("cpu", "cpu", "cpu.cfs_quota_us", quota.to_string())?;
                }
                if let Some(pids) = limits.pids {
                    write("pids", "pids", "pids.max", pids.to_string())?;
                }
            }
            Hierarchy::V2 { .. } => {
                write("memory", "memory", "memory.max", limits.memory.to_string())?;
                let dir = self.hierarchy.controller_dir("memory", &self.path).unwrap_or_default();
                if dir.join("memory.swap.max").exists() {
                    write("memory", "memory", "memory.swap.max", "0".to_owned())?;
                }
                if let Some(quota) = oci::cpu_quota(limits.cpus) {
                    write("cpu", "cpu", "cpu.max", format!("{quota} {}", oci::CPU_PERIOD_US))?;
                }
                if let Some(pids) = limits.pids {
                    write("pids", "pids", "pids.max", pids.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// How many processes the kernel killed for exceeding the memory limit.
    pub(crate) fn oom_kills(&self) -> Option<u64> {
        let dir = self.hierarchy.controller_dir("memory", &self.path)?;
        let file = match self.hierarchy {
            Hierarchy::V1 { .. } => "memory.oom_control",
            Hierarchy::V2 { .. } => "memory.events",
        };
        let text = fs::read_to_string(dir.join(file)).ok()?;
        text.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
    }

    /// The container's peak memory use (v1 `memory.max_usage_in_bytes`, v2
    /// `memory.peak`, which kernels before 5.19 lack).
    pub(crate) fn peak_memory(&self) -> Option<u64> {
        let dir = self.hierarchy.controller_dir("memory", &self.path)?;
        let file = match self.hierarchy {
            Hierarchy::V1 { .. } => "memory.max_usage_in_bytes",
            Hierarchy::V2 { .. } => "memory.peak",
        };
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// SIGKILLs every process in the container's cgroup.
    /// On v2 (Linux 5.14+) in one step (`cgroup.kill`); else in rounds, so
    /// that what was forked between reading and killing goes too.
    pub(crate) fn kill_all(&self) {
        for (_, dir) in self.hierarchy.dirs(&self.path) {
            if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            for _ in 0..100 {
                let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else { break };
                let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    // SAFETY: signalling a process of this container's cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// Removes what is left of the cgroup (after libcontainer's own removal,
    /// after a failed build, or for a container whose state is gone). Only
    /// empty cgroups can be removed; processes that are still exiting (a
    /// killed container's may take a while on a loaded host) get up to five
    /// seconds. Returns whether none is left.
    pub(crate) fn remove_leftovers(&self) -> bool {
        let mut left = false;
        let mut killed = false;
        for (_, dir) in self.hierarchy.dirs(&self.path) {
            let mut attempts = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts < 250 => {
                        // A process the container's pid namespace did not
                        // hold (put there from outside): it goes too.
                        if !killed {
                            self.kill_all();
                            killed = true;
                        }
                        attempts += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a cgroup");
                        left = true;
                        break;
                    }
                }
            }
        }
        !left
    }
}

/// The v1 controllers libcgroups knows (its `CONTROLLERS`, not exported).
const V1_CONTROLLERS: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// The mount points of the `cgroup` (v1) file systems a
/// `/proc/self/mountinfo` lists, in its order, as it writes them: with the
/// kernel's octal escapes (`\040` for a space) left in, as libcgroups (the
/// container's libcontainer) reads them (a chosen one with an escape is
/// refused: see [`Hierarchy::v1`]). Bytes, not text: another mount's
/// path need not be UTF-8 (any user can mount a FUSE file system on a
/// directory of theirs).
fn v1_mount_points(mountinfo: &[u8]) -> Vec<PathBuf> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let separator = line.windows(3).position(|w| w == b" - ")?;
            let (fields, rest) = (&line[..separator], &line[separator + 3..]);
            (rest.split(|&b| b == b' ').next() == Some(b"cgroup")).then_some(())?;
            let point = fields.split(|&b| b == b' ').nth(4)?;
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(point)))
        })
        .collect()
}

/// Each v1 controller's mount point, chosen as libcgroups chooses it (its
/// `get_subsystem_mount_point`: the first `cgroup` mount whose last
/// component is the controller's name, or a co-mount of `cpu` and
/// `cpuacct`, or of `net_cls` and `net_prio`), so that ces and the
/// container's libcontainer agree on every cgroup directory.
fn v1_controllers(mounts: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    V1_CONTROLLERS
        .iter()
        .filter_map(|&name| {
            let names: &[&str] = match name {
                "net_cls" => &["net_cls,net_prio", "net_prio,net_cls", "net_cls"],
                "net_prio" => &["net_cls,net_prio", "net_prio,net_cls", "net_prio"],
                "cpu" => &["cpu,cpuacct", "cpu"],
                "cpuacct" => &["cpu,cpuacct", "cpuacct"],
                _ => &[name],
            };
            let point = mounts.iter().find(|m| names.iter().any(|n| m.ends_with(n)))?;
            Some((name.to_owned(), point.clone()))
        })
        .collect()
}

/// Whether the host has swap space in use (`/proc/swaps` lists any).
pub(crate) fn swap_is_on() -> bool {
    fs::read_to_string("/proc/swaps").is_ok_and(|text| text.lines().skip(1).any(|l| !l.trim().is_empty()))
}

/// Where [`ContainerCgroup::for_rootless`] would put container `id`, for
/// the dry-run plan: nothing is created or asked of systemd.
pub(crate) fn describe_rootless(hierarchy: &Hierarchy, id: &str, uid: u32) -> String {
    let setup = || format!("delegated cgroup {} (prepared by `ces system setup`)", user_parent(uid).join(id).display());
    let Hierarchy::V2 { root } = hierarchy else { return setup() };
    let Ok(own) = own_v2_cgroup() else { return "cannot read this process's cgroup".to_owned() };
    if let Some(dir) = DELEGATED_BASE.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        && own == dir.join(SUPERVISOR_LEAF)
    {
        return format!("delegated cgroup {}", dir.join(id).display());
    }
    if user_owned(root, &own) && alone_in(root, &own) && has_controllers(root, &own, &V2_CONTROLLERS) {
        format!("cgroup {} (in ces's own delegated cgroup)", own.join(id).display())
    } else if setup_delegation_usable(root, &own, uid) {
        setup()
    } else if super::systemd::manager_reachable() {
        format!("cgroup {id} in a transient systemd scope ces-{id}.scope (Delegate=yes) of the user's systemd")
    } else {
        "no cgroup delegated to this user (the run would be refused)".to_owned()
    }
}

/// Rootless, without `ces system setup`'s cgroup: refused, naming the
/// command that prepares it.
fn check_setup_delegation(hierarchy: &Hierarchy, uid: u32) -> Result<(), RuntimeError> {
    for (controller, dir) in hierarchy.dirs(&user_parent(uid)) {
        if access(&dir, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
            return Err(RuntimeError::Limit {
                limit: "memory",
                reason: format!(
                    "rootless containers need a cgroup delegated by root, and {} is missing or not writable \
                     by uid {uid} ({controller}); as root, run `ces system setup --user {uid}` to prepare it",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// v2: whether `ces system setup`'s `/ces/user-<uid>` is there and ces, in
/// `own`, may move processes into it (cgroup v2 wants the mover to be able
/// to write the `cgroup.procs` of the two cgroups' common ancestor).
fn setup_delegation_usable(root: &Path, own: &Path, uid: u32) -> bool {
    let parent = user_parent(uid);
    let ancestor = common_ancestor(own, &parent.join("x"));
    user_owned(root, &parent) && access(&in_root(root, &ancestor).join("cgroup.procs"), AccessFlags::W_OK).is_ok()
}

/// The directory of v2 cgroup `path` under the hierarchy's `root`.
fn in_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// v2: whether this process may make cgroups in `cgroup`, move processes
/// into and out of it, and enable controllers for its children.
/// Owned, not merely writable: a cgroup another user may also write (group-
/// or world-writable) would let them move, limit or kill what ces puts there.
fn user_owned(root: &Path, cgroup: &Path) -> bool {
    let dir = in_root(root, cgroup);
    owned_by_me(&dir) && ["cgroup.procs", "cgroup.subtree_control"].iter().all(|file| owned_by_me(&dir.join(file)))
}

/// Whether `path` (not followed if a link) belongs to this process's
/// effective user and no one else may write it.
fn owned_by_me(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::symlink_metadata(path).is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0)
}

/// v2: whether all of `controllers` are available in `cgroup`.
fn has_controllers(root: &Path, cgroup: &Path, controllers: &[&str]) -> bool {
    let available = fs::read_to_string(in_root(root, cgroup).join("cgroup.controllers")).unwrap_or_default();
    controllers.iter().all(|c| available.split_whitespace().any(|a| a == *c))
}

/// v2: whether this process is the only one in `cgroup` (its threads are
/// one entry of `cgroup.procs`).
fn alone_in(root: &Path, cgroup: &Path) -> bool {
    let me = std::process::id().to_string();
    fs::read_to_string(in_root(root, cgroup).join("cgroup.procs"))
        .is_ok_and(|procs| procs.lines().all(|pid| pid.trim() == me))
}

/// v2: moves this process into `<cgroup>/_ces` and enables the controllers
/// ces limits for `cgroup`'s children (the containers' cgroups).
fn enter_leaf(root: &Path, cgroup: &Path) -> Result<(), RuntimeError> {
    let fail = |what: String| RuntimeError::Limit { limit: "memory", reason: what };
    let dir = in_root(root, cgroup);
    let leaf = dir.join(SUPERVISOR_LEAF);
    create_cgroup_dir(&leaf)?;
    if !owned_by_me(&leaf) {
        return Err(fail(format!("{} is not this user's own cgroup", leaf.display())));
    }
    let procs = leaf.join("cgroup.procs");
    let move_in = || {
        fs::write(&procs, std::process::id().to_string())
            .map_err(|e| fail(format!("cannot move ces into {}: {e}", leaf.display())))
    };
    move_in()?;
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    if !available.split_whitespace().any(|c| c == "memory") {
        return Err(fail(format!(
            "the memory controller is not delegated to {} (it has: {}); ask the operator to delegate \
             `memory pids cpu` to user@.service (systemd's default)",
            dir.display(),
            if available.trim().is_empty() { "none" } else { available.trim() }
        )));
    }
    // A thread that was exiting while the process moved stays behind until
    // it is gone (the kernel migrates no exiting task), and a populated
    // cgroup cannot enable controllers for its children (EBUSY): a thread
    // of the D-Bus call can be such a one. Move again and retry, briefly.
    let mut tries = 0;
    loop {
        match enable_v2_controllers(&dir) {
            Err(RuntimeError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) && tries < 250 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
                move_in()?;
            }
            Err(RuntimeError::Io { path, source }) => {
                let left = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let left: Vec<&str> = left.split_whitespace().collect();
                return Err(fail(format!(
                    "cannot write {}: {source} (processes still in {}: {})",
                    path.display(),
                    dir.display(),
                    if left.is_empty() { "none".to_owned() } else { left.join(" ") }
                )));
            }
            other => return other,
        }
    }
}

/// The first move of a process into a cgroup after a quiet while waits for
/// an RCU grace period (the kernel's `cgroup_threadgroup_rwsem`, one for all
/// hierarchies: 7-25 ms here, more with every core busy); moves within the
/// next grace period or so do not. As root, [`MigrationWarmup::start`] pays
/// that wait on a thread of its own while the run is being prepared, by
/// moving a helper into the cgroup it is already in: a child of ces, born
/// in ces's cgroups, that does nothing ([`idmap::waiting_child`]). Then it
/// moves the helper again every few milliseconds (less than the shortest
/// grace period: the window stays open), until the container has been
/// built (and so moved into its cgroup): [`MigrationWarmup::stop`]. The run
/// never waits for it: [`MigrationWarmup::before_clone`] only waits for the
/// thread to have made its helper (it then allocates nothing until
/// stopped), and a container built while the first wait is
/// still running waits for what is left of that same grace period in its
/// own move. ces itself is never moved: whoever places it (a scope, an
/// operator's tools, even during the wait) keeps it where they put it; and
/// the helper is moved only as long as it stays in the cgroup it was first
/// found in (a scope that empties ces's cgroup is not filled again; as
/// before, a move by someone else between the check and a move, such as
/// while the first move waits for the grace period, is undone by it).
/// Nothing changes if a move fails: the container's own move pays the wait
/// as before. The helper shares ces's memory (where it can: see
/// [`idmap::waiting_child`]): a move that undoes someone else's, out of a
/// cpuset with other memory nodes, also rebinds ces's memory policy to its
/// own cgroup's nodes, and on cgroup v2 moves its pages there (where they
/// were). Rootless runs have none (ces moves itself into a scope of its
/// own there).
///
/// [`idmap::waiting_child`]: super::idmap::waiting_child
pub(crate) struct MigrationWarmup {
    thread: Option<std::thread::JoinHandle<Option<Helper>>>,
    /// The moves made so far (the thread counts them).
    moves: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// The thread writes a byte here once it allocates nothing more until
    /// stopped, or closes it without one if it ends (nothing to move).
    ready: Option<OwnedFd>,
    /// Written to stop the moves ([`MigrationWarmup::stop`]).
    stop: Option<OwnedFd>,
}

/// How long a warm-up keeps the window open at most (a run that pulls or
/// unpacks an image first goes on without it): each move takes the
/// kernel's `cgroup_mutex` and, briefly, the lock every fork and exit on
/// the host takes to read.
const KEEP_OPEN_AT_MOST: std::time::Duration = std::time::Duration::from_secs(3);

/// How often the warm-up moves its helper: within the shortest grace period
/// measured here (6-8 ms for a bare move), after which the window closes.
const MOVE_EVERY_MS: libc::c_int = 3;

/// The helper a [`MigrationWarmup`] moves, in `hierarchy`; ended when
/// dropped.
struct Helper {
    pid: libc::pid_t,
    /// Kept open while it lives (it waits for this to close).
    _done: OwnedFd,
    hierarchy: Hierarchy,
    /// The `cgroup.procs` it is moved by, once its [`Mover`] is made.
    procs: Option<PathBuf>,
}

/// Moves a helper into the cgroup it was in when this was made, with
/// everything opened and formatted beforehand: [`Mover::keep_moving`]
/// makes system calls only.
struct Mover {
    /// The helper's `/proc/<pid>/cgroup`, and its text when this was made.
    cgroup: File,
    seen: Vec<u8>,
    scratch: Vec<u8>,
    /// The `cgroup.procs` it is written to, and what is written.
    procs: File,
    pid: Vec<u8>,
    moves: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Helper {
    /// A [`Mover`] for the helper, in the cgroup it is in now (where it was
    /// born, in ces's, unless something moved it since).
    fn mover(&mut self, moves: std::sync::Arc<std::sync::atomic::AtomicU32>) -> Option<Mover> {
        let pid = self.pid;
        let mut cgroup = File::open(format!("/proc/{pid}/cgroup")).ok()?;
        let mut seen = Vec::new();
        cgroup.read_to_end(&mut seen).ok()?;
        let path = procs_file(&self.hierarchy, std::str::from_utf8(&seen).ok()?)?;
        let procs = fs::OpenOptions::new().write(true).open(&path).ok()?;
        self.procs = Some(path);
        let scratch = vec![0; seen.len() + 64];
        Some(Mover { cgroup, seen, scratch, procs, pid: pid.to_string().into_bytes(), moves })
    }
}

impl Mover {
    /// Whether the helper is still in the cgroups it was in.
    fn unchanged(&mut self) -> bool {
        // SAFETY: reads into a buffer of that length.
        let n =
            unsafe { libc::pread(self.cgroup.as_raw_fd(), self.scratch.as_mut_ptr().cast(), self.scratch.len(), 0) };
        usize::try_from(n).is_ok_and(|n| self.scratch[..n] == self.seen[..])
    }

    /// One move: whether the kernel took it.
    fn move_once(&mut self) -> bool {
        // SAFETY: writes from a buffer of that length.
        let n = unsafe { libc::write(self.procs.as_raw_fd(), self.pid.as_ptr().cast(), self.pid.len()) };
        usize::try_from(n).is_ok_and(|n| n == self.pid.len())
    }

    /// Moves the helper at once (unless already stopped), then every
    /// [`MOVE_EVERY_MS`] while it stays where it was, for
    /// [`KEEP_OPEN_AT_MOST`], and returns when `stop` can be read (never
    /// before: the thread's end frees memory, and ces may be cloning a
    /// process that allocates). System calls only: no allocation, no lock.
    fn keep_moving(&mut self, stop: &OwnedFd) {
        let deadline = std::time::Instant::now() + KEEP_OPEN_AT_MOST;
        let stopped = |timeout| {
            let mut fd = libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut fd, 1, timeout) };
            rc > 0 || (rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
        };
        // A run refused early: no move (the first may wait a grace period).
        if stopped(0) {
            return;
        }
        let mut moving = true;
        loop {
            if moving {
                moving = self.unchanged() && self.move_once();
                if moving {
                    self.moves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                moving = moving && std::time::Instant::now() < deadline;
            }
            if stopped(if moving { MOVE_EVERY_MS } else { -1 }) {
                return;
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        super::idmap::kill_helper(self.pid);
    }
}

/// A warm-up started early ([`warm_cgroup_migration`]), for the run's
/// container to finish.
static EARLY_WARMUP: std::sync::Mutex<Option<MigrationWarmup>> = std::sync::Mutex::new(None);

/// Starts paying the wait of the first cgroup move ([`MigrationWarmup`]) now,
/// as a native run as root starts (before it is planned): the container
/// built later finishes it. Keep what it returns for the run: dropped, it
/// ends a warm-up no container took (a refused run) and its helper.
/// Nothing without root.
pub fn warm_cgroup_migration() -> EarlyWarmup {
    if nix::unistd::geteuid().is_root() {
        // The hierarchy is found on the thread too.
        let warmup = MigrationWarmup::start(None);
        let old = EARLY_WARMUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace(warmup);
        drop(old);
    }
    EarlyWarmup(())
}

/// See [`warm_cgroup_migration`].
#[must_use = "dropped, it ends the warm-up at once"]
pub struct EarlyWarmup(());

impl Drop for EarlyWarmup {
    fn drop(&mut self) {
        MigrationWarmup::forget_early();
    }
}

impl MigrationWarmup {
    /// The warm-up [`warm_cgroup_migration`] started, if any, else a new one.
    pub(crate) fn early_or_start(hierarchy: &Hierarchy) -> MigrationWarmup {
        let early = EARLY_WARMUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        early.unwrap_or_else(|| MigrationWarmup::start(Some(hierarchy.clone())))
    }

    /// Drops a warm-up [`warm_cgroup_migration`] started (a rootless run
    /// has none), waiting for its thread.
    pub(crate) fn forget_early() {
        let early = EARLY_WARMUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        drop(early);
    }

    /// Starts the thread; it finds the hierarchy itself when not given it.
    pub(crate) fn start(hierarchy: Option<Hierarchy>) -> MigrationWarmup {
        let moves = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let none = MigrationWarmup { thread: None, moves: moves.clone(), ready: None, stop: None };
        let (Ok((ready, ready_write)), Ok((stop_read, stop))) = (super::pipe(), super::pipe()) else { return none };
        // The thread allocates while it makes its helper and its mover, and
        // when it ends: see `before_clone`. The helper only makes system
        // calls.
        let counted = moves.clone();
        let thread = std::thread::Builder::new()
            .name("ces-cgroup-warm".to_owned())
            .spawn(move || {
                let hierarchy = match hierarchy {
                    Some(hierarchy) => hierarchy,
                    None => Hierarchy::detect().ok()?,
                };
                let (pid, done) = super::idmap::waiting_child(0).ok()?;
                let mut helper = Helper { pid, _done: done, hierarchy, procs: None };
                let mut mover = helper.mover(counted)?;
                // Nothing below allocates or frees until `stop` is written.
                // SAFETY: writes one byte from a valid buffer.
                if unsafe { libc::write(ready_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
                    // The run sees the end of the pipe and waits for this
                    // thread before it clones.
                    return None;
                }
                mover.keep_moving(&stop_read);
                drop(ready_write);
                Some(helper)
            })
            .ok();
        match thread {
            Some(thread) => MigrationWarmup { thread: Some(thread), moves, ready: Some(ready), stop: Some(stop) },
            None => none,
        }
    }

    /// Call it before anything clones a process that allocates
    /// (libcontainer's): waits until the thread allocates nothing more
    /// (it has made its helper; typically long done by then), or has ended.
    /// Not for its moves: the first may still be waiting for the grace
    /// period, which the container's own move then waits for the rest of.
    pub(crate) fn before_clone(&mut self) {
        let Some(ready) = self.ready.take() else { return };
        let mut byte = 0u8;
        let got = loop {
            // SAFETY: reads one byte into a valid buffer.
            let n = unsafe { libc::read(ready.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n == 1;
            }
        };
        if !got {
            // It ended without moving anything: done with before the clone.
            self.stop = None;
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Stops the moves (the container has been built): the thread ends;
    /// the drop waits for it.
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // SAFETY: writes one byte from a valid buffer.
            unsafe { libc::write(stop.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    /// Stops the moves and waits for the thread: what it left. Stopped by
    /// a byte, not by closing: the container's processes, cloned from ces,
    /// hold copies of the pipe's end until they exec.
    fn end(&mut self) -> Option<Helper> {
        self.stop();
        self.thread.take()?.join().ok().flatten()
    }
}

impl Drop for MigrationWarmup {
    fn drop(&mut self) {
        if let Some(helper) = self.end()
            && let Some(procs) = &helper.procs
        {
            let (pid, procs) = (helper.pid, procs.display());
            match self.moves.load(std::sync::atomic::Ordering::Relaxed) {
                0 => tracing::debug!("cgroup warm-up: helper {pid} not moved into {procs}"),
                moves => tracing::debug!("cgroup warm-up: helper {pid} moved into {procs} {moves} times"),
            }
        }
    }
}

/// The `cgroup.procs` of the cgroup this process is in, in one hierarchy:
/// the unified one if it has it, else the first v1 controller's.
#[cfg(test)]
fn own_procs_file(hierarchy: &Hierarchy) -> Option<PathBuf> {
    procs_file(hierarchy, &fs::read_to_string("/proc/self/cgroup").ok()?)
}

/// [`own_procs_file`] from the text of `/proc/self/cgroup`.
fn procs_file(hierarchy: &Hierarchy, text: &str) -> Option<PathBuf> {
    let (mount, path) = match hierarchy {
        Hierarchy::V2 { root } => (root.clone(), text.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned()),
        Hierarchy::V1 { controllers, .. } => text.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, names, path) = (fields.next()?, fields.next()?, fields.next()?);
            let mount = names.split(',').find_map(|name| controllers.get(name))?;
            Some((mount.clone(), path.to_owned()))
        })?,
    };
    let relative = Path::new(&path).strip_prefix("/").ok()?.to_owned();
    if relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return None;
    }
    Some(mount.join(relative).join("cgroup.procs"))
}

/// This process's cgroup v2 path (`/user.slice/...`).
pub(crate) fn own_v2_cgroup() -> io::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
        .ok_or_else(|| io::Error::other("no cgroup v2 entry in /proc/self/cgroup"))
}

fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for (x, y) in a.components().zip(b.components()) {
        if x != y {
            break;
        }
        out.push(x);
    }
    if out.as_os_str().is_empty() { PathBuf::from("/") } else { out }
}

/// What [`setup_delegation`] prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The user.
    pub uid: u32,
    /// `cgroup v1 (hybrid host)`, `cgroup v2`...
    pub hierarchy: &'static str,
    /// The directories now owned by the user.
    pub cgroups: Vec<PathBuf>,
}

fn setup_error(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io { path: path.to_owned(), source }
}

/// `ces system setup` (as root): gives user `uid` a cgroup of its own in
/// every hierarchy, `/ces/user-<uid>`, under which its rootless containers'
/// cgroups (and limits) go. Idempotent.
pub fn setup_delegation(uid: u32, gid: u32) -> Result<Delegation, RuntimeError> {
    let hierarchy = Hierarchy::detect()?;
    let user = user_parent(uid);
    let mut cgroups = Vec::new();
    match &hierarchy {
        Hierarchy::V1 { controllers, .. } => {
            for (controller, mount) in controllers {
                let top = mount.join(PARENT);
                let dir = mount.join(user.strip_prefix("/").unwrap_or(&user));
                for d in [&top, &dir] {
                    create_cgroup_dir(d)?;
                }
                if controller == "cpuset" {
                    // A new cpuset is empty, and no task may join an empty
                    // one; the user cannot fill in the levels it does not own.
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        inherit_if_empty(mount, &top, file)?;
                        inherit_if_empty(&top, &dir, file)?;
                    }
                }
                give(&dir, uid, gid, &["cgroup.procs", "tasks"])?;
                cgroups.push(dir);
            }
        }
        Hierarchy::V2 { root } => {
            let top = root.join(PARENT);
            let dir = root.join(user.strip_prefix("/").unwrap_or(&user));
            enable_v2_controllers(root)?;
            create_cgroup_dir(&top)?;
            enable_v2_controllers(&top)?;
            create_cgroup_dir(&dir)?;
            give(&dir, uid, gid, &["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"])?;
            enable_v2_controllers(&dir)?;
            cgroups.push(dir);
        }
    }
    Ok(Delegation { uid, hierarchy: hierarchy.describe(), cgroups })
}

/// Undoes [`setup_delegation`] for `uid`: removes `/ces/user-<uid>` (which
/// must hold no container any more) in every hierarchy.
pub fn remove_delegation(uid: u32) -> Result<(), RuntimeError> {
    let hierarchy = Hierarchy::detect()?;
    for (_, dir) in hierarchy.dirs(&user_parent(uid)) {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::Io { path: dir, source: e }),
        }
    }
    Ok(())
}

fn create_cgroup_dir(dir: &Path) -> Result<(), RuntimeError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(setup_error(dir)(e)),
    }
}

fn inherit_if_empty(parent: &Path, child: &Path, file: &str) -> Result<(), RuntimeError> {
    let target = child.join(file);
    let current = fs::read_to_string(&target).map_err(setup_error(&target))?;
    if current.trim().is_empty() {
        let source = parent.join(file);
        let value = fs::read_to_string(&source).map_err(setup_error(&source))?;
        fs::write(&target, value.trim()).map_err(setup_error(&target))?;
    }
    Ok(())
}

fn give(dir: &Path, uid: u32, gid: u32, files: &[&str]) -> Result<(), RuntimeError> {
    chown(dir, Some(uid), Some(gid)).map_err(setup_error(dir))?;
    for file in files {
        let path = dir.join(file);
        if path.exists() {
            chown(&path, Some(uid), Some(gid)).map_err(setup_error(&path))?;
        }
    }
    Ok(())
}

fn enable_v2_controllers(dir: &Path) -> Result<(), RuntimeError> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).map_err(setup_error(dir))?;
    let path = dir.join("cgroup.subtree_control");
    for controller in V2_CONTROLLERS {
        if available.split_whitespace().any(|c| c == controller) {
            fs::write(&path, format!("+{controller}")).map_err(setup_error(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that move this process (all its threads) between cgroups,
    /// one at a time.
    static MOVES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The warm-up's helper, once it has been moved and the thread is done.
    fn helper_of(mut warmup: MigrationWarmup) -> Helper {
        warmup.before_clone();
        wait_for_moves(&warmup, 1);
        warmup.end().expect("a helper made")
    }

    /// Waits until the warm-up has made `n` moves (a bound on the wait, not
    /// a measure).
    fn wait_for_moves(warmup: &MigrationWarmup, n: u32) {
        for _ in 0..1000 {
            if warmup.moves.load(std::sync::atomic::Ordering::Relaxed) >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("fewer than {n} moves in 10 s");
    }

    #[test]
    fn the_warmup_moves_a_helper_born_in_this_process_s_cgroups_and_never_this_process() {
        assert!(nix::unistd::geteuid().is_root(), "this test moves a process: run the suite as root (CI does)");
        let _one = MOVES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hierarchy = Hierarchy::detect().unwrap();
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        let helper = helper_of(MigrationWarmup::start(Some(hierarchy.clone())));
        let pid = helper.pid;
        assert_ne!(pid, nix::unistd::getpid().as_raw());
        let procs = own_procs_file(&hierarchy).unwrap();
        assert!(
            fs::read_to_string(&procs).unwrap().lines().any(|l| l == pid.to_string()),
            "the helper is in {procs:?}"
        );
        assert_eq!(fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap(), before, "in this process's cgroups");
        drop(helper);
        super::super::idmap::reap_helpers(true);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the helper is gone, and reaped");
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before, "this process stayed where it was");
    }

    /// The helper is cloned on the warm-up's thread while others work: a
    /// pipe made meanwhile for a `Command` must still end for its reader
    /// once the child it was made for is done (the helper keeps none of
    /// the descriptors it is born with).
    #[test]
    fn a_pipe_open_when_the_helper_is_born_still_ends_for_its_reader() {
        use std::io::Read as _;
        assert!(nix::unistd::geteuid().is_root(), "this test moves a process: run the suite as root (CI does)");
        let _one = MOVES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (read, write) = super::super::pipe().unwrap();
        let helper = helper_of(MigrationWarmup::start(Some(Hierarchy::detect().unwrap())));
        drop(write);
        let mut read = std::fs::File::from(read);
        let (ended, reader) = std::sync::mpsc::channel();
        std::thread::spawn(move || ended.send(read.read(&mut [0u8; 1]).map_err(|e| e.kind())));
        // A bound on the wait, not a measure.
        let end = reader.recv_timeout(std::time::Duration::from_secs(10));
        let pid = helper.pid;
        drop(helper);
        super::super::idmap::reap_helpers(true);
        assert_eq!(end, Ok(Ok(0)), "end of file while the helper {pid} lived");
    }

    /// The window is kept open until the container is built: the helper is
    /// moved again and again meanwhile (not once at the start only).
    #[test]
    fn an_early_warmup_finds_the_hierarchy_itself_and_keeps_moving_until_the_run_stops_it() {
        assert!(nix::unistd::geteuid().is_root(), "this test moves a process: run the suite as root (CI does)");
        let _one = MOVES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        let _early = warm_cgroup_migration();
        let mut warmup = MigrationWarmup::early_or_start(&Hierarchy::detect().unwrap());
        warmup.before_clone();
        assert!(warmup.thread.as_ref().is_some_and(|t| !t.is_finished()), "still moving");
        wait_for_moves(&warmup, 3);
        let helper = warmup.end().expect("a helper made");
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
        drop(helper);
        super::super::idmap::reap_helpers(true);
    }

    #[test]
    fn a_warmup_no_container_took_ends_with_the_run() {
        assert!(nix::unistd::geteuid().is_root(), "this test moves a process: run the suite as root (CI does)");
        let _one = MOVES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let early = warm_cgroup_migration();
        let taken = || EARLY_WARMUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none();
        assert!(!taken(), "started");
        // A refused run: no container took it.
        drop(early);
        assert!(taken(), "ended, its thread joined");
        super::super::idmap::reap_helpers(true);
    }

    #[test]
    fn the_warmup_leaves_this_process_where_another_moved_it() {
        assert!(nix::unistd::geteuid().is_root(), "this test creates a cgroup: run the suite as root (CI does)");
        let _one = MOVES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hierarchy = Hierarchy::detect().unwrap();
        let procs = own_procs_file(&hierarchy).unwrap();
        let home = procs.parent().unwrap().to_owned();
        let elsewhere = home.join(format!("ces-warmup-test-{}", std::process::id()));
        fs::create_dir(&elsewhere).unwrap();
        let mut warmup = MigrationWarmup::start(Some(hierarchy.clone()));
        warmup.before_clone();
        // Its helper born and moved in this process's cgroup; then this
        // process is moved by someone else (a scope, an operator) while the
        // moves go on.
        wait_for_moves(&warmup, 1);
        fs::write(elsewhere.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        let moved = fs::read_to_string("/proc/self/cgroup").unwrap();
        let so_far = warmup.moves.load(std::sync::atomic::Ordering::Relaxed);
        wait_for_moves(&warmup, so_far + 3);
        let after = fs::read_to_string("/proc/self/cgroup").unwrap();
        drop(warmup.end());
        fs::write(&procs, std::process::id().to_string()).unwrap();
        super::super::idmap::reap_helpers(true);
        fs::remove_dir(&elsewhere).unwrap();
        assert_ne!(moved, fs::read_to_string("/proc/self/cgroup").unwrap(), "the test moved this process");
        assert_eq!(after, moved, "left where it was moved to");
    }

    /// A warm-up that cannot move its helper (here: a hierarchy that is not
    /// there) ends at once: the run neither waits for it nor clones while it
    /// ends.
    #[test]
    fn a_warmup_that_cannot_move_ends_before_the_clone() {
        let mut warmup = MigrationWarmup::start(Some(Hierarchy::V2 { root: PathBuf::from("/nonexistent-ces-test") }));
        warmup.before_clone();
        assert!(warmup.thread.is_none() && warmup.stop.is_none(), "joined");
        assert!(warmup.end().is_none());
        assert_eq!(warmup.moves.load(std::sync::atomic::Ordering::Relaxed), 0);
        super::super::idmap::reap_helpers(true);
    }

    /// Something else (a scope that empties ces's cgroup) moves the helper:
    /// the warm-up moves it within its new cgroup, not back into ces's.
    #[test]
    fn the_warmup_moves_its_helper_within_the_cgroup_it_is_in_now() {
        assert!(nix::unistd::geteuid().is_root(), "this test creates a cgroup: run the suite as root (CI does)");
        let _one = MOVES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hierarchy = Hierarchy::detect().unwrap();
        let home = own_procs_file(&hierarchy).unwrap().parent().unwrap().to_owned();
        let elsewhere = home.join(format!("ces-warmup-helper-test-{}", std::process::id()));
        fs::create_dir(&elsewhere).unwrap();
        let mut warmup = MigrationWarmup::start(Some(hierarchy.clone()));
        warmup.before_clone();
        // After its first move (which would undo a move made while it
        // waits for the grace period).
        wait_for_moves(&warmup, 1);
        // The helper's pid, from its cgroup: ces's (it is this process's child).
        let pid = || {
            fs::read_to_string(home.join("cgroup.procs"))
                .unwrap()
                .lines()
                .map(|l| l.parse::<libc::pid_t>().unwrap())
                .find(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "ces-cgroup-warm\n"))
        };
        let helper = pid().expect("the helper, in this process's cgroup");
        fs::write(elsewhere.join("cgroup.procs"), helper.to_string()).unwrap();
        // A bound on the wait, not a measure: the moves would go on.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let there = fs::read_to_string(elsewhere.join("cgroup.procs")).unwrap();
        drop(warmup.end().expect("a helper made"));
        super::super::idmap::reap_helpers(true);
        fs::remove_dir(&elsewhere).unwrap();
        assert!(there.lines().any(|l| l == helper.to_string()), "still where it was moved to: {there:?}");
    }

    #[test]
    fn the_procs_file_is_found_in_either_hierarchy_and_never_above_it() {
        let v2 = Hierarchy::V2 { root: PathBuf::from("/sys/fs/cgroup") };
        let text = "0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(
            procs_file(&v2, text),
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/cgroup.procs"))
        );
        let controllers = [("cpu", "/sys/fs/cgroup/cpu,cpuacct"), ("cpuacct", "/sys/fs/cgroup/cpu,cpuacct")]
            .into_iter()
            .map(|(c, p)| (c.to_owned(), PathBuf::from(p)))
            .collect();
        let v1 = Hierarchy::V1 { hybrid: true, controllers, mounts: Vec::new() };
        let text = "12:name=systemd:/\n4:cpu,cpuacct:/ces/x\n0::/\n";
        assert_eq!(procs_file(&v1, text), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/ces/x/cgroup.procs")));
        assert_eq!(procs_file(&v2, "0::/../../etc\n"), None);
        assert_eq!(procs_file(&v2, "0::relative\n"), None);
        assert_eq!(procs_file(&v1, "1:name=systemd:/\n"), None);
    }

    #[test]
    fn v1_hierarchies_from_one_mountinfo() {
        let text = r"
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 22 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
27 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,xattr,name=systemd
28 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu,cpuacct
29 25 0:25 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,net_cls,net_prio
30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,pids
32 22 0:28 / /mnt/a\040b/freezer rw,relatime - cgroup cgroup rw,freezer
33 22 0:29 / /mnt/cgroup\040-\040x rw,relatime - tmpfs tmpfs rw
";
        // A mount on a directory whose name is not UTF-8 (a user's FUSE mount).
        let mountinfo = [text.as_bytes(), b"34 22 0:30 / /home/u/\xff rw - fuse.x x rw\n"].concat();
        let mounts = v1_mount_points(&mountinfo);
        let expected_mounts = [
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/net_cls,net_prio",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
            r"/mnt/a\040b/freezer",
        ];
        assert_eq!(mounts, expected_mounts.map(PathBuf::from));
        // As libcgroups reads them (procfs, the crate it parses with).
        let theirs: Vec<PathBuf> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| procfs::process::MountInfo::from_line(l).unwrap())
            .filter(|m| m.fs_type == "cgroup")
            .map(|m| m.mount_point)
            .collect();
        assert_eq!(mounts, theirs);
        let controllers = v1_controllers(&mounts);
        let expected: BTreeMap<String, PathBuf> = [
            ("cpu", "/sys/fs/cgroup/cpu,cpuacct"),
            ("cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
            ("net_cls", "/sys/fs/cgroup/net_cls,net_prio"),
            ("net_prio", "/sys/fs/cgroup/net_cls,net_prio"),
            ("memory", "/sys/fs/cgroup/memory"),
            ("pids", "/sys/fs/cgroup/pids"),
            ("freezer", r"/mnt/a\040b/freezer"),
        ]
        .into_iter()
        .map(|(c, p)| (c.to_owned(), PathBuf::from(p)))
        .collect();
        assert_eq!(controllers, expected);
        let refused = Hierarchy::v1(&mountinfo, true).unwrap_err().to_string();
        assert!(refused.contains(r"/mnt/a\040b/freezer: a cgroup mount point with a space"), "{refused}");
        let without =
            mountinfo.split(|&b| b == b'\n').filter(|l| !l.starts_with(b"32 ")).collect::<Vec<_>>().join(&b'\n');
        let Ok(Hierarchy::V1 { controllers, .. }) = Hierarchy::v1(&without, true) else { panic!() };
        assert!(!controllers.contains_key("freezer") && controllers.contains_key("memory"), "{controllers:?}");
    }

    /// ces finds each controller where libcgroups (the container's
    /// libcontainer) does: otherwise it would look for, and remove, cgroups
    /// elsewhere than where they were made.
    #[test]
    fn the_hierarchy_is_where_libcgroups_finds_it() {
        let found = Hierarchy::find().unwrap();
        match libcgroups::common::get_cgroup_setup().unwrap() {
            CgroupSetup::Unified => assert_eq!(found, Hierarchy::V2 { root: PathBuf::from(DEFAULT_CGROUP_ROOT) }),
            CgroupSetup::Legacy | CgroupSetup::Hybrid => {
                let Hierarchy::V1 { controllers, mounts, .. } = found else { panic!("{found:?}") };
                let theirs: BTreeMap<String, PathBuf> = libcgroups::v1::util::list_supported_mount_points()
                    .unwrap()
                    .into_iter()
                    .map(|(ctrl, path)| (ctrl.to_string(), path))
                    .collect();
                assert!(!theirs.is_empty());
                assert_eq!(controllers, theirs);
                assert_eq!(mounts, libcgroups::v1::util::list_subsystem_mount_points().unwrap());
            }
        }
    }

    #[test]
    fn common_ancestor_of_cgroup_paths() {
        assert_eq!(common_ancestor(Path::new("/a/b/c"), Path::new("/a/b/d")), PathBuf::from("/a/b"));
        assert_eq!(common_ancestor(Path::new("/x"), Path::new("/ces/user-1/y")), PathBuf::from("/"));
    }

    #[test]
    fn container_cgroup_paths() {
        let h = Hierarchy::V2 { root: PathBuf::from("/sys/fs/cgroup") };
        assert_eq!(ContainerCgroup::for_root(h, "r1").path, PathBuf::from("/ces/r1"));
        let v1 = Hierarchy::V1 { hybrid: true, controllers: BTreeMap::new(), mounts: Vec::new() };
        assert_eq!(ContainerCgroup::for_rootless(v1, "r1", 1000).unwrap().path, PathBuf::from("/ces/user-1000/r1"));
    }
}
