//! The native backend: runs a [`RunSpec`] in-process with youki's
//! libcontainer, as root or rootless (an unprivileged user, no setuid helper).
//!
//! One run, in order:
//!
//! 1. Checks that need nothing created: the id, the user mapping, rootless
//!    cgroup delegation ([`cgroups`]: refused early with
//!    [`RuntimeError::Limit`] when limits cannot be enforced).
//! 2. A run record in the state root ([`stale`]), so that whatever a crash
//!    leaves behind is removed by the next ces start ([`cleanup_stale`]).
//! 3. The copy-on-write root filesystem over the cached rootfs ([`rootfs`])
//!    and the OCI spec ([`oci`], [`seccomp`]) in `<state_dir>/bundle`.
//! 4. `build()` (libcontainer clones the container's processes from this
//!    one: the process must be single-threaded, or at least hold no lock
//!    another thread could be holding: no tokio runtime alive), with
//!    SIGINT, SIGTERM, SIGHUP and SIGQUIT blocked in this thread ([`wait`]) and the
//!    container's PID 1 being `ces-init` ([`init`]).
//! 5. Between build and start, rootless: the limits written into the
//!    delegated cgroup. (`ces-init` brings the loopback interface up.)
//! 6. `start()`, then wait for the init while forwarding signals; how the
//!    workload ended comes from `ces-init`'s report, out-of-memory from the
//!    cgroup's OOM-kill counter.
//! 7. `delete(true)`, unmount, remove the state directory's contents and
//!    the record.

pub(crate) mod cgroups;
pub mod idmap;
mod init;
mod observe;
mod oci;
pub mod ports;
mod rootfs;
pub(crate) mod seccomp;
mod stale;
mod systemd;
mod tty;
mod wait;

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Uid};
use oci_spec::OciSpecError;

pub use cgroups::{
    Delegation, EarlyWarmup, PARENT as CGROUP_PARENT, remove_delegation, setup_delegation, warm_cgroup_migration,
};
pub use observe::{DEVICE as OBSERVED_DEVICE, LostWrite, NetworkReport, ObserveError};
pub use seccomp::CACHE_DIR as SECCOMP_CACHE_DIR;
pub use stale::cleanup_stale;
pub(crate) use wait::FORWARDED;
pub use wait::{ForwardedSignals, block_forwarded_signals, unblock_forwarded_signals};

use crate::spec::{Access, DeviceType, Exit, MountKind, RunSpec};
use crate::{Runtime, RuntimeError};

use cgroups::{ContainerCgroup, Hierarchy};
use idmap::Extent;
use init::{CesInit, Report};
use oci::{Layout, Overlay};
use rootfs::{OverlayMount, RunDirs};
use wait::SignalBlock;

/// The native runtime.
#[derive(Debug, Clone)]
pub struct NativeRuntime {
    /// libcontainer's state root (one per user), e.g. `<store>/containers`:
    /// a directory per running container, and ces's run records.
    pub state_root: PathBuf,
    /// Root mode (ces is root for itself, not for a sudo user): the first
    /// of the host ids the container's ids `0..`[`idmap::RANGE`] are
    /// ([`idmap`]); [`idmap::DEFAULT_BASE`] unless configured.
    pub root_id_base: u32,
}

impl NativeRuntime {
    /// The runtime with state root `state_root` and the default id block.
    pub fn new(state_root: PathBuf) -> NativeRuntime {
        NativeRuntime { state_root, root_id_base: idmap::DEFAULT_BASE }
    }
}

/// What to observe of a run besides its exit (`ces test`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Observe {
    /// Route the container's network to a watcher that answers DNS with
    /// its own addresses, refuses every connection at once and records each
    /// attempt (see [`crate::netwatch`]). Needs `/dev/net/tun`.
    pub network: bool,
}

/// A run's exit and what was observed of it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// How the container ended.
    pub exit: Exit,
    /// The container's peak memory use, from its cgroup, when the kernel
    /// keeps it.
    pub peak_memory: Option<u64>,
    /// The network attempts, when [`Observe::network`] was asked.
    pub network: Option<NetworkReport>,
    /// Files written to the container's own filesystem (lost at exit).
    pub lost_writes: Vec<LostWrite>,
    /// The run's device nodes (their paths in the container) that were
    /// opened while it ran. As root each node is the run's own; rootless
    /// it is the host's, which another process may have opened.
    pub devices_opened: Vec<String>,
}

/// Why the native runtime could not start a container (the source of
/// [`RuntimeError::Start`]).
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// The run id cannot name a container.
    #[error("the run id {0:?} cannot name a container (letters, digits, `_`, `.`, `-`, at most 128)")]
    InvalidId(String),
    /// Rootless, the container's user can only be the invoking user.
    #[error(
        "a rootless container's user can only map to the invoking user ({uid}:{gid}), not to {host_uid}:{host_gid}"
    )]
    ForeignIdentity {
        /// The invoking user.
        uid: u32,
        /// Its group.
        gid: u32,
        /// The requested host user.
        host_uid: u32,
        /// The requested host group.
        host_gid: u32,
    },
    /// As root, the container's user (the mapped host user) must be able to
    /// reach the run's state directory.
    #[error("{path} is not searchable by uid {uid}, the container's user on the host")]
    NotSearchable {
        /// The first directory that is not.
        path: PathBuf,
        /// The host user.
        uid: u32,
    },
    /// Root mode's id block is not usable.
    #[error(
        "host ids {0}.. cannot be the ids of a root-mode container (the block must start at 65536 or above and end below 4294967295)"
    )]
    IdBase(u32),
    /// Root mode's id block is someone's.
    #[error(
        "host ids {base}..{} cannot be a root-mode container's: {user} uses them; hint: set [run] root_id_base to a free block",
        u64::from(*base) + 65_535
    )]
    IdBlockInUse {
        /// The block's first id.
        base: u32,
        /// Who uses it.
        user: String,
    },
    /// Root mode maps the container's ids 0..65536 only.
    #[error("the container's user {uid}:{gid} is beyond the ids a root-mode container has (0-65535)")]
    UserBeyondRange {
        /// The user's uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// The run's state directory must exist, be empty and not be `/`: ces
    /// creates (and removes) fixed names in it.
    #[error("the run's state directory {0} must be an existing, empty directory other than /")]
    StateDir(PathBuf),
    /// overlayfs cannot take this path.
    #[error("{0} cannot be an overlay layer (it must be absolute and hold no `:` or `,`)")]
    OverlayPath(PathBuf),
    /// libcontainer did not record the init process.
    #[error("the container has no init process")]
    NoInit,
    /// `-t` needs ces's stdin to be a terminal.
    #[error("a terminal (-t) needs ces's standard input to be a terminal")]
    NoTerminal,
    /// libcontainer failed.
    #[error(transparent)]
    Libcontainer(#[from] LibcontainerError),
    /// The OCI spec could not be built or saved.
    #[error(transparent)]
    Spec(#[from] OciSpecError),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The network could not be observed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// A port could not be published.
    #[error(transparent)]
    Ports(#[from] ports::PortError),
    /// libseccomp could not compile the profile.
    #[error("cannot compile the seccomp profile")]
    Seccomp(#[source] libseccomp::error::SeccompError),
}

fn start_error(stage: &'static str) -> impl FnOnce(NativeError) -> RuntimeError {
    move |e| RuntimeError::Start { stage, source: Box::new(e) }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io { path: path.to_owned(), source }
}

/// Root or rootless, decided by the effective uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Privilege {
    Root,
    Rootless { uid: u32, gid: u32 },
}

impl Privilege {
    fn current() -> Privilege {
        let uid = Uid::effective().as_raw();
        if uid == 0 { Privilege::Root } else { Privilege::Rootless { uid, gid: Gid::effective().as_raw() } }
    }
}

/// How the container's ids are host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// One id: the container's root is `spec.identity` (rootless, and
    /// root for a sudo user); its user is mapped onto it (see [`init`]).
    Single,
    /// Root mode: the container's ids `0..RANGE` are the host's
    /// `base..base + RANGE` ([`idmap`]).
    Block { base: u32 },
}

impl Mapping {
    fn for_run(privilege: Privilege, spec: &RunSpec, base: u32) -> Result<Mapping, NativeError> {
        if privilege != Privilege::Root || spec.identity.host_uid != 0 {
            return Ok(Mapping::Single);
        }
        if !idmap::valid_base(base) {
            return Err(NativeError::IdBase(base));
        }
        if let Some(user) = idmap::block_user(base) {
            return Err(NativeError::IdBlockInUse { base, user });
        }
        let user = spec.process.user;
        if user.uid >= idmap::RANGE || user.gid >= idmap::RANGE {
            return Err(NativeError::UserBeyondRange { uid: user.uid, gid: user.gid });
        }
        Ok(Mapping::Block { base })
    }

    /// Whether the container may give a file a setuid or setgid bit: not in
    /// root mode, where root's files in a read-write bind are its user's
    /// (see [`seccomp::SetIdModes`]).
    fn set_id_modes(&self) -> seccomp::SetIdModes {
        match self {
            Mapping::Single => seccomp::SetIdModes::Allowed,
            Mapping::Block { .. } => seccomp::SetIdModes::Refused,
        }
    }

    /// The host uid and gid of the container's root, and how many ids the
    /// container has from there.
    fn ids(&self, spec: &RunSpec) -> (u32, u32, u32) {
        match *self {
            Mapping::Single => (spec.identity.host_uid, spec.identity.host_gid, 1),
            Mapping::Block { base } => (base, base, idmap::RANGE),
        }
    }

    /// The host ids of the container's user (the workload).
    fn user(&self, spec: &RunSpec) -> (u32, u32) {
        match *self {
            Mapping::Single => (spec.identity.host_uid, spec.identity.host_gid),
            Mapping::Block { base } => (base + spec.process.user.uid, base + spec.process.user.gid),
        }
    }
}

impl Runtime for NativeRuntime {
    fn name(&self) -> &'static str {
        "native"
    }

    fn describe(&self, spec: &RunSpec) -> Result<Vec<String>, RuntimeError> {
        Ok(describe(spec, Privilege::current(), self.root_id_base, Hierarchy::detect().ok().as_ref()))
    }

    fn run(&self, spec: &RunSpec) -> Result<Exit, RuntimeError> {
        let mut listeners = ports::Listeners::bind(&spec.ports, &ports::bind_unix)
            .map_err(|e| start_error("publishing the ports")(e.into()))?;
        let result = self.run_published(spec, &listeners);
        for (path, e) in listeners.remove_sockets() {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the published socket");
        }
        result
    }
}

impl NativeRuntime {
    /// Runs the container as [`Runtime::run`] does, observing what `observe` asks.
    pub fn run_observed(&self, spec: &RunSpec, observe: Observe) -> Result<Observed, RuntimeError> {
        if !spec.ports.is_empty() {
            return Err(RuntimeError::Unsupported { backend: "native", what: "publishing ports while observing" });
        }
        self.run_with(spec, Some(observe), None)
    }

    /// Runs the container as [`Runtime::run`] does, relaying the published
    /// ports from `listeners` (bound by the caller from `spec.ports`, before
    /// anything of the run was created: see [`ports`]). The caller removes
    /// their Unix sockets afterwards.
    pub fn run_published(&self, spec: &RunSpec, listeners: &ports::Listeners) -> Result<Exit, RuntimeError> {
        // Nothing but the exit: no walk of the upper layer, no cgroup
        // statistics after the container has ended.
        let listeners = (!listeners.is_empty()).then_some(listeners);
        self.run_with(spec, None, listeners).map(|observed| observed.exit)
    }

    /// Runs the container; `observe`: `None` for the exit alone.
    fn run_with(
        &self,
        spec: &RunSpec,
        observe: Option<Observe>,
        listeners: Option<&ports::Listeners>,
    ) -> Result<Observed, RuntimeError> {
        if spec.process.terminal && !tty::host_has_terminal() {
            return Err(start_error("checking the run")(NativeError::NoTerminal));
        }
        check_id(&spec.id).map_err(start_error("checking the run"))?;
        let privilege = Privilege::current();
        if let Privilege::Rootless { uid, gid } = privilege
            && (spec.identity.host_uid != uid || spec.identity.host_gid != gid)
        {
            let e = NativeError::ForeignIdentity {
                uid,
                gid,
                host_uid: spec.identity.host_uid,
                host_gid: spec.identity.host_gid,
            };
            return Err(start_error("mapping the container's user")(e));
        }
        let hierarchy = Hierarchy::detect()?;
        // The wait of the first cgroup move, paid while the run is prepared.
        let warmup = if privilege == Privilege::Root {
            Some(cgroups::MigrationWarmup::early_or_start(&hierarchy))
        } else {
            cgroups::MigrationWarmup::forget_early();
            None
        };
        let cgroup = match privilege {
            Privilege::Root => ContainerCgroup::for_root(hierarchy, &spec.id),
            Privilege::Rootless { uid, .. } => ContainerCgroup::for_rootless(hierarchy, &spec.id, uid)?,
        };
        check_state_dir(&spec.state_dir).map_err(start_error("checking the run"))?;
        let mount_points = mount_points(spec)?;
        let dirs = RunDirs::new(&spec.state_dir);
        let overlay = dirs.overlay_for(&spec.image.rootfs);
        for path in overlay.lower.iter().chain([&overlay.upper, &overlay.work]) {
            rootfs::check_overlay_path(path)
                .map_err(|p| start_error("preparing the root filesystem")(NativeError::OverlayPath(p)))?;
        }
        let mapping = Mapping::for_run(privilege, spec, self.root_id_base)
            .map_err(start_error("mapping the container's user"))?;
        // As root, the container's processes are the mapped host user: they
        // must be able to reach the rootfs, and they keep that user's groups.
        let groups = match mapping {
            // Root mode: the block's root reaches what it needs under
            // `/run/ces/<id>` ([`idmap::Mounts`]), with none of root's groups.
            Mapping::Block { .. } => Some(Vec::new()),
            Mapping::Single if privilege == Privilege::Root && spec.identity.host_uid != 0 => {
                let groups = user_groups(spec.identity.host_uid, spec.identity.host_gid);
                fs::set_permissions(&spec.state_dir, fs::Permissions::from_mode(0o711))
                    .map_err(io_error(&spec.state_dir))?;
                let binds = spec.mounts.iter().filter_map(|m| match &m.kind {
                    MountKind::Bind { source } => Some(source.as_path()),
                    MountKind::Tmpfs { .. } => None,
                });
                for path in std::iter::once(dirs.rootfs.as_path()).chain(binds) {
                    rootfs::check_searchable(path, spec.identity.host_uid, &groups).map_err(|path| {
                        start_error("preparing the mounts")(NativeError::NotSearchable {
                            path,
                            uid: spec.identity.host_uid,
                        })
                    })?;
                }
                Some(groups)
            }
            _ => None,
        };

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_root)
            .map_err(io_error(&self.state_root))?;
        let rootfs_mount = (privilege == Privilege::Root).then(|| dirs.rootfs.clone());
        let record = stale::Record::for_this_process(
            &spec.id,
            &spec.state_dir,
            rootfs_mount,
            &cgroup.path,
            privilege != Privilege::Root,
        )
        .map_err(|e| start_error("recording the run")(e.into()))?
        .write(&self.state_root)?;

        let run = Run {
            runtime: self,
            spec,
            dirs: &dirs,
            overlay,
            mount_points,
            cgroup: &cgroup,
            privilege,
            mapping,
            groups: groups.as_deref(),
            observe,
            listeners,
            ports_channel: RefCell::new(None),
            hook_bundle: RefCell::new(None),
            warmup: RefCell::new(warmup),
        };
        let (result, container_removed) = run.prepare_and_run();
        // The helpers of the idmapped mounts and the warm-up, whatever
        // became of the run (a warm-up not finished ends here).
        drop(run.warmup.take());
        idmap::reap_helpers(true);
        let dirs_removed = match dirs.remove() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(state_dir = %dirs.state_dir.display(), error = %e, "cannot remove the run's state");
                false
            }
        };
        if container_removed
            && dirs_removed
            && let Err(e) = record.remove()
        {
            tracing::warn!(error = %e, "cannot remove the run record");
        }
        result
    }
}

/// One run's context.
struct Run<'a> {
    runtime: &'a NativeRuntime,
    spec: &'a RunSpec,
    dirs: &'a RunDirs,
    overlay: Overlay,
    /// See [`mount_points`].
    mount_points: Vec<(&'a str, bool)>,
    cgroup: &'a ContainerCgroup,
    privilege: Privilege,
    mapping: Mapping,
    groups: Option<&'a [u32]>,
    /// `None`: the exit alone (not even the peak memory and the lost writes).
    observe: Option<Observe>,
    /// The published ports' host listeners, if any.
    listeners: Option<&'a ports::Listeners>,
    /// ces's end of the socket the init sends its namespaces on (made by
    /// `build` when ports are published).
    ports_channel: RefCell<Option<OwnedFd>>,
    /// As root, with devices' createContainer hooks: the bundle as they see
    /// it (see [`Run::bundle_for_hooks`]).
    hook_bundle: RefCell<Option<PathBuf>>,
    /// Stopped once the container is built ([`cgroups::MigrationWarmup`]).
    warmup: RefCell<Option<cgroups::MigrationWarmup>>,
}

impl Run<'_> {
    /// Returns the result and whether the container (and its mounts) are gone.
    fn prepare_and_run(&self) -> (Result<Observed, RuntimeError>, bool) {
        let mut overlay = self.overlay.clone();
        let root = self.privilege == Privilege::Root;
        let owner_shift = match self.mapping {
            Mapping::Block { base } => Some(base),
            Mapping::Single => root.then_some(0),
        };
        // Pinned bind sources are cloned in the namespace they are in.
        let mut trees = match root.then(|| self.clone_pinned()).transpose() {
            Ok(trees) => trees.unwrap_or_default(),
            Err(e) => return (Err(start_error("preparing the mounts")(e.into())), true),
        };
        // As root, everything ces mounts is in a mount namespace of its own.
        let private = match root.then(rootfs::private_mount_namespace).transpose() {
            Ok(private) => private,
            Err(e) => return (Err(start_error("mounting the root filesystem")(e.into())), true),
        };
        let layer_size = self.spec.limits.rootfs_writes.filter(|_| root);
        // Dropped last: the overlay goes before its upper layer.
        let layer = match self.dirs.create(self.spec.image.rootfs.root_dir(), owner_shift, layer_size) {
            Ok(layer) => layer,
            Err(e) => return (Err(start_error("preparing the root filesystem")(e.into())), true),
        };
        // Dropped after `mount`: the overlay goes before its lower layer.
        let mut idmapped = None;
        let mut spec = std::borrow::Cow::Borrowed(self.spec);
        let mut rootfs = self.dirs.rootfs.clone();
        let mut tun = self.observe_network().then(|| PathBuf::from(oci::TUN_PATH));
        // Rootless, the host's nodes (the user's own access to them applies).
        let mut device_nodes: Vec<(String, PathBuf)> =
            self.spec.devices.nodes.iter().map(|n| (n.path.clone(), n.host_path.clone())).collect();
        let mut mount = None;
        // Root mode: the container's user namespace, open until it is built.
        let mut user_namespace = None;
        if let Some(private) = &private {
            if let Mapping::Block { base } = self.mapping {
                let mounts = idmapped.insert(match idmap::Mounts::create(&self.spec.id, private) {
                    Ok(mounts) => mounts,
                    Err(e) => return (Err(start_error("mapping the container's ids")(e.into())), true),
                });
                match self.idmap(base, mounts, &mut trees) {
                    Ok((lower, mapped, mapped_rootfs)) => {
                        overlay.lower = lower;
                        spec = std::borrow::Cow::Owned(mapped);
                        rootfs = mapped_rootfs;
                    }
                    Err(e) => return (Err(start_error("mapping the container's ids")(e.into())), true),
                }
                match idmap::joinable(idmap::block_maps(base)) {
                    Ok(userns) => user_namespace = Some(userns),
                    Err(e) => return (Err(start_error("mapping the container's ids")(e.into())), true),
                }
                if tun.is_some() {
                    let numbers = (oci::TUN_MAJOR, oci::TUN_MINOR);
                    match mounts.device("tun", DeviceType::Char, numbers, (base, base), 0o600) {
                        Ok(path) => tun = Some(path),
                        Err(e) => return (Err(start_error("observing the network")(e.into())), true),
                    }
                }
            }
            if self.mapping == Mapping::Single && !self.spec.pins.is_empty() {
                // Root for a sudo user: the binds from what was checked.
                let mounts = idmapped.insert(match idmap::Mounts::create(&self.spec.id, private) {
                    Ok(mounts) => mounts,
                    Err(e) => return (Err(start_error("preparing the mounts")(e.into())), true),
                });
                match self.pinned_binds(mounts, &mut trees) {
                    Ok(pinned) => spec = std::borrow::Cow::Owned(pinned),
                    Err(e) => return (Err(start_error("preparing the mounts")(e.into())), true),
                }
            }
            if !self.spec.devices.is_empty() {
                let prepared = match &mut idmapped {
                    Some(mounts) => Ok(mounts),
                    None => idmap::Mounts::create(&self.spec.id, private).map(|mounts| idmapped.insert(mounts)),
                }
                .and_then(|mounts| self.prepare_devices(mounts));
                match prepared {
                    Ok(nodes) => device_nodes = nodes,
                    Err(e) => return (Err(start_error("preparing the devices")(e.into())), true),
                }
            }
            match OverlayMount::mount(&overlay, &rootfs) {
                Ok(m) => mount = Some(m),
                Err(e) => return (Err(start_error("mounting the root filesystem")(e.into())), true),
            }
            let owner = match self.mapping {
                Mapping::Block { base } => Some((base, base)),
                Mapping::Single => None,
            };
            if let Err(e) = rootfs::create_mount_points(&rootfs, &self.mount_points, owner) {
                return (Err(start_error("preparing the root filesystem")(e.into())), true);
            }
        } else if let Err(e) = rootfs::create_in_upper(&overlay, &self.spec.image.rootfs, &self.spec.process.cwd) {
            return (Err(start_error("preparing the root filesystem")(e.into())), true);
        }
        // Rootless, libcontainer mounts the overlay (through fsconfig).
        let mut overlay_mount = (!root).then(|| overlay.clone());
        let mut mount_from = None;
        if let Some(overlay) = &mut overlay_mount {
            let plus = ces_image::rootfs::lowerdir_plus();
            match rootfs::fsconfig_lowers(overlay, &self.dirs.numbered_lowers(), plus) {
                Ok(dir) => mount_from = dir,
                Err(e) => return (Err(start_error("preparing the root filesystem")(e.into())), true),
            }
        }
        let layout = Layout {
            rootfs,
            overlay_mount,
            cgroup_path: self.cgroup.path.clone(),
            limits_in_spec: root,
            swap_accounting: self.cgroup.swap_accounting(),
            cgroup_mounts: self.cgroup.hierarchy.container_mounts(),
            tun,
            device_nodes,
            ids: self.mapping.ids(self.spec),
            user_namespace: user_namespace.as_ref().map(idmap::namespace_path),
        };
        let hook_bundle = self.hook_bundle.borrow().clone();
        let written = oci::build(&spec, &layout)
            .and_then(|oci| {
                oci.save(self.dirs.bundle.join("config.json"))?;
                match &hook_bundle {
                    Some(bundle) => write_hook_spec(&oci, bundle),
                    None => Ok(()),
                }
            })
            .map_err(|e| start_error("writing the OCI spec")(e.into()));
        let opens = match self.observe {
            Some(_) => match observe::DeviceOpens::watch(&layout.device_nodes) {
                Ok(opens) => Some(opens),
                Err(e) => return (Err(start_error("observing the devices")(e.into())), true),
            },
            None => None,
        };
        let (mut result, mut removed) = match written {
            Ok(()) => self.run_container(mount_from.as_deref()),
            Err(e) => (Err(e), true),
        };
        if self.observe.is_some()
            && let Ok(observed) = &mut result
        {
            let ignore: Vec<&str> = self.mount_points.iter().map(|(path, _)| *path).collect();
            observed.lost_writes = observe::lost_writes(&overlay.upper, &ignore);
            observed.devices_opened = opens.map(|o| o.opened()).unwrap_or_default();
        }
        if let Some(mut mount) = mount
            && let Err(e) = mount.unmount()
        {
            tracing::warn!(error = %e, "cannot unmount the container's root filesystem");
            removed = false;
        }
        if let Some(mut mounts) = idmapped
            && let Err(e) = mounts.unmount()
        {
            tracing::warn!(error = %e, "cannot unmount the container's idmapped mounts");
            removed = false;
        }
        if let Some(mut layer) = layer
            && let Err(e) = layer.unmount()
        {
            tracing::warn!(error = %e, "cannot unmount the container's copy-on-write layer");
            removed = false;
        }
        (result, removed)
    }

    /// The spec with each bind mount's source (or, if given, what it was
    /// pinned to: see [`crate::spec::Pins`]) cloned under `mounts`, idmapped
    /// as `ids` says if given, read-only mounts read-only, all `nosuid` and
    /// `nodev` (root only).
    fn pinned_binds(&self, mounts: &mut idmap::Mounts, trees: &mut [Option<OwnedFd>]) -> io::Result<RunSpec> {
        let mut spec = self.spec.clone();
        for (i, m) in spec.mounts.iter_mut().enumerate() {
            let attrs = bind_attrs(m.access);
            if let MountKind::Bind { source } = &mut m.kind {
                let name = format!("bind-{i}");
                *source = match trees.get_mut(i).and_then(Option::take) {
                    Some(tree) => mounts.attach(&tree, source, &name)?,
                    None => mounts.mount(source, &name, self.bind_ids(), attrs)?,
                };
            }
        }
        Ok(spec)
    }

    /// How the bind mounts' ids are mapped: in root mode, what the invoking
    /// user owns is the workload's, both ways ([`idmap`]); otherwise as
    /// they are.
    fn bind_ids(&self) -> Option<(Extent, Extent)> {
        let Mapping::Block { .. } = self.mapping else { return None };
        let (uid, gid) = self.mapping.user(self.spec);
        let uids = Extent { inside: self.spec.identity.host_uid, outside: uid, count: 1 };
        let gids = Extent { inside: self.spec.identity.host_gid, outside: gid, count: 1 };
        Some((uids, gids))
    }

    /// As root: the devices' nodes (see [`Run::device_copies`]), and the
    /// bundle where their hooks can read it, if they have any.
    fn prepare_devices(&self, mounts: &mut idmap::Mounts) -> io::Result<Vec<(String, PathBuf)>> {
        let nodes = self.device_copies(mounts)?;
        if self.spec.devices.hooks.iter().any(|h| h.stage == crate::spec::HookStage::CreateContainer) {
            *self.hook_bundle.borrow_mut() = Some(self.bundle_for_hooks(mounts)?);
        }
        Ok(nodes)
    }

    /// As root: a bundle for the devices' createContainer hooks, which run
    /// as the container's root and read the container's spec from the
    /// bundle their state names (as `nvidia-cdi-hook` does): the run's own
    /// is root's alone. This one is root's too (`0755`, its `config.json`
    /// `0644`, written after the run's), in ces's private tmpfs: only the
    /// container's processes, before its root is changed, can see it, and
    /// none can change it.
    fn bundle_for_hooks(&self, mounts: &mut idmap::Mounts) -> io::Result<PathBuf> {
        let bundle = mounts.private()?.join("bundle");
        fs::DirBuilder::new().mode(0o700).create(&bundle).map_err(|e| rootfs::annotate(e, &bundle))?;
        fs::set_permissions(&bundle, fs::Permissions::from_mode(0o755)).map_err(|e| rootfs::annotate(e, &bundle))?;
        Ok(bundle)
    }

    /// As root: a node of its own for each of the run's devices, given to
    /// the workload's host ids (mode `0660`: the host's node may be root's
    /// alone), under `mounts` (see [`idmap::Mounts::device`]); only this
    /// container can reach them there, and the device cgroup allows exactly
    /// their numbers. Returns where each goes and its node.
    fn device_copies(&self, mounts: &mut idmap::Mounts) -> io::Result<Vec<(String, PathBuf)>> {
        let owner = self.mapping.user(self.spec);
        let mut copies = Vec::new();
        for (i, node) in self.spec.devices.nodes.iter().enumerate() {
            let name = format!("device-{i}");
            let target = mounts.device(&name, node.kind, (node.major, node.minor), owner, 0o660)?;
            copies.push((node.path.clone(), target));
        }
        Ok(copies)
    }

    /// A detached clone of each pinned bind source (by the mount's index),
    /// made before ces leaves the namespace the pins' mounts are in.
    fn clone_pinned(&self) -> io::Result<Vec<Option<OwnedFd>>> {
        let ids = self.bind_ids();
        self.spec
            .mounts
            .iter()
            .map(|m| match &m.kind {
                MountKind::Bind { source } => match self.spec.pins.get(source) {
                    Some(pin) => idmap::clone(source, Some(pin), ids, bind_attrs(m.access)).map(Some),
                    None => Ok(None),
                },
                MountKind::Tmpfs { .. } => Ok(None),
            })
            .collect()
    }

    /// Root mode: the image's root filesystem and the bind mounts' sources,
    /// idmapped in `/run/ces/<id>` ([`idmap`]). Returns the overlay's lower
    /// layer, the spec with the binds' new sources, and where the overlay
    /// goes.
    fn idmap(
        &self,
        base: u32,
        mounts: &mut idmap::Mounts,
        trees: &mut [Option<OwnedFd>],
    ) -> io::Result<(Vec<PathBuf>, RunSpec, PathBuf)> {
        let lower = (self.overlay.lower.iter().enumerate())
            .map(|(i, layer)| {
                mounts.mount(layer, &idmap::lower_name(i), Some(idmap::block_maps(base)), idmap::READ_ONLY)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let spec = self.pinned_binds(mounts, trees)?;
        let rootfs = mounts.mount_point("rootfs", true)?;
        rootfs::check_searchable(&rootfs, base, &[]).map_err(|path| {
            io::Error::new(io::ErrorKind::PermissionDenied, NativeError::NotSearchable { path, uid: base }.to_string())
        })?;
        Ok((lower, spec, rootfs))
    }

    fn observe_network(&self) -> bool {
        self.observe.is_some_and(|o| o.network)
    }

    /// Builds, starts and waits for the container; `mount_from` is the
    /// working directory its rootless overlay is mounted from
    /// ([`rootfs::fsconfig_lowers`]).
    fn run_container(&self, mount_from: Option<&Path>) -> (Result<Observed, RuntimeError>, bool) {
        let (report_read, report_write) = match pipe() {
            Ok(p) => p,
            Err(e) => return (Err(start_error("creating the report pipe")(e.into())), true),
        };
        let signals = match SignalBlock::new() {
            Ok(s) => s,
            Err(e) => return (Err(start_error("blocking signals")(e.into())), true),
        };
        let tun_channel = match self.observe_network().then(observe::tun_channel).transpose() {
            Ok(channel) => channel,
            Err(e) => return (Err(start_error("observing the network")(e.into())), true),
        };
        let (tun_socket, init_tun_socket) = tun_channel.unzip();
        let (container_io, relay) = match self.stdio() {
            Ok(stdio) => stdio,
            Err(e) => return (Err(start_error("creating the container's stdio")(e.into())), true),
        };
        // The warm-up's thread allocates nothing while the container's
        // processes are cloned from this one; stopped once they are.
        if let Some(warmup) = self.warmup.borrow_mut().as_mut() {
            warmup.before_clone();
        }
        // The container's processes are cloned from this one in build():
        // they start in this working directory.
        let entered = match mount_from.map(rootfs::WorkingDir::enter).transpose() {
            Ok(entered) => entered,
            Err(e) => return (Err(start_error("preparing the root filesystem")(e.into())), true),
        };
        let built =
            self.build(report_write.as_raw_fd(), init_tun_socket.as_ref().map(AsRawFd::as_raw_fd), container_io);
        // Stopped now, waited for once the container has started (off the
        // start's path; before anything here needs ces single-threaded:
        // the ports' forwarder, the network watcher).
        if let Some(warmup) = self.warmup.borrow_mut().as_mut() {
            warmup.stop();
        }
        drop(entered);
        drop(report_write);
        drop(init_tun_socket);
        let mut container = match built {
            Ok(c) => c,
            // libcontainer removes its state when build() fails, and tries
            // to remove the cgroup while the processes it created may still
            // be in it.
            Err(e) => return (Err(start_error("creating the container")(e)), self.cgroup.remove_leftovers()),
        };

        // Set once the init has been waited for: the container has no
        // process left (the init was its pid namespace's first process).
        let init_reaped = std::cell::Cell::new(false);
        let outcome = (|| {
            let pid = container.pid().ok_or(NativeError::NoInit).map_err(start_error("creating the container"))?;
            if self.privilege != Privilege::Root {
                self.cgroup.apply_limits(pid, &self.spec.limits)?;
            } else {
                self.cgroup.no_swap()?;
            }
            // Before the workload starts: the terminal's size is set, and
            // no key is lost or echoed by the host. The raw mode ends
            // (dropped) on every way out of here, at the latest.
            let (streams, raw_mode) = relay
                .streams(self.spec.process.interactive)
                .map_err(|e| start_error("connecting the container's stdio")(e.into()))?;
            container.start().map_err(|e| start_error("starting the container")(e.into()))?;
            drop(self.warmup.take());
            // The helpers, killed before the container was built, are gone
            // by now: no zombie for the length of the run.
            idmap::reap_helpers(true);
            let _forwarder = self.forward_ports()?;
            let watcher = match tun_socket {
                Some(socket) => {
                    Some(observe::Watcher::start(socket).map_err(|e| start_error("observing the network")(e.into()))?)
                }
                None => None,
            };
            let waiting = |e: io::Error| start_error("waiting for the container")(e.into());
            let signalfd = signals.signalfd().map_err(waiting)?;
            let ended =
                wait::wait_for_exit(pid, &signalfd, streams, self.spec.process.stop_timeout).map_err(waiting)?;
            init_reaped.set(true);
            // Cooked again before anything more is said (a warning in raw
            // mode would not start at the left margin).
            drop(raw_mode);
            if !ended.forwarded.is_empty() {
                tracing::debug!(signals = ?ended.forwarded, "forwarded signals to the container");
            }
            if ended.killed {
                tracing::warn!(
                    id = %self.spec.id,
                    timeout = ?self.spec.process.stop_timeout,
                    "the container did not stop within the stop timeout of the signal passed on to it: killed"
                );
            }
            let reports = read_reports(report_read);
            let failed = reports.iter().find_map(|report| match report {
                Report::LoopbackFailed(errno) => Some(("bringing up the loopback interface", *errno)),
                Report::UserFailed(errno) => Some(("switching to the container's user", *errno)),
                Report::TerminalFailed(errno) => Some(("giving the workload its terminal", *errno)),
                _ => None,
            });
            if let Some((stage, errno)) = failed {
                return Err(start_error(stage)(io::Error::from_raw_os_error(errno).into()));
            }
            let network = match watcher {
                Some(watcher) => {
                    Some(watcher.finish().map_err(|e| start_error("reading the network observations")(e.into()))?)
                }
                None => None,
            };
            Ok(Observed {
                exit: decide(ended.status, &reports, self.cgroup.oom_kills().unwrap_or(0)),
                peak_memory: self.observe.and_then(|_| self.cgroup.peak_memory()),
                network,
                lost_writes: Vec::new(),
                devices_opened: Vec::new(),
            })
        })();

        let removed = if init_reaped.get() {
            remove_ended(&container, self.cgroup)
        } else {
            match container.delete(true) {
                Ok(()) => self.cgroup.remove_leftovers(),
                Err(e) => {
                    tracing::warn!(id = %self.spec.id, error = %e, "cannot remove the container; the next ces start will");
                    false
                }
            }
        };
        drop(signals);
        (outcome, removed)
    }

    fn build(
        &self,
        report_fd: i32,
        tun_socket: Option<i32>,
        io: ContainerIo,
    ) -> Result<libcontainer::container::Container, NativeError> {
        let _groups = match self.groups {
            Some(groups) => Some(ThreadGroups::set(groups)?),
            None => None,
        };
        // The init's end lives until the init has been cloned (below).
        let ports_socket = self.ports_channel()?;
        let builder = ContainerBuilder::new(self.spec.id.clone(), SyscallType::default())
            .with_executor(
                CesInit::new(
                    report_fd,
                    (self.spec.process.user.uid, self.spec.process.user.gid),
                    oci::workload_capabilities(self.spec.process.user.uid),
                    seccomp::compiled(
                        &self.runtime.state_root.join(seccomp::CACHE_DIR),
                        self.mapping.set_id_modes(),
                        self.observe_network(),
                    )?,
                    tun_socket,
                )
                .with_ports_socket(ports_socket.as_ref().map(AsRawFd::as_raw_fd))
                .with_user_mapped(matches!(self.mapping, Mapping::Block { .. })),
            )
            .with_root_path(&self.runtime.state_root)?;
        // Never ces's own: see `wait`. libcontainer takes a console socket
        // only for a "detached" container (its one use of the flag: it
        // never detaches an in-process init).
        let (builder, detach) = match io {
            ContainerIo::Pipes(stdio) => {
                (builder.with_stdin(stdio.stdin).with_stdout(stdio.stdout).with_stderr(stdio.stderr), false)
            }
            ContainerIo::Terminal(socket) => (builder.with_console_socket(Some(socket)), true),
        };
        let bundle = self.hook_bundle.borrow().clone().unwrap_or_else(|| self.dirs.bundle.clone());
        Ok(builder.as_init(&bundle).with_systemd(false).with_detach(detach).build()?)
    }

    /// The container's standard streams and ces's side of them: pipes, or
    /// with `-t` a console socket for the pty (see `tty`).
    fn stdio(&self) -> io::Result<(ContainerIo, Relay)> {
        if self.spec.process.terminal {
            // libcontainer's console socket setup panics without a working
            // directory (it changes to its state directory and back).
            std::env::current_dir()?;
            let socket = tty::ConsoleSocket::bind(&self.dirs.bundle)?;
            return Ok((ContainerIo::Terminal(socket.path().to_owned()), Relay::Terminal(socket)));
        }
        let (stdout, stdout_write) = pipe()?;
        let (stderr, stderr_write) = pipe()?;
        let (stdin, stdin_write) = if self.spec.process.interactive {
            let (read, write) = pipe()?;
            (read, Some(write))
        } else {
            (File::open("/dev/null")?.into(), None)
        };
        // As root, the pipes are the container's user's, as a rootless
        // run's are: `/dev/stdout` (a reopen through /proc/self/fd) works.
        if self.privilege == Privilege::Root {
            let ids = self.mapping.user(self.spec);
            [Some(&stdout), Some(&stderr), stdin_write.as_ref()]
                .into_iter()
                .flatten()
                .try_for_each(|fd| fchown(fd, ids))?;
        }
        let stdio = ContainerStdio { stdin, stdout: stdout_write, stderr: stderr_write };
        Ok((ContainerIo::Pipes(stdio), Relay::Pipes { stdout, stderr, stdin: stdin_write }))
    }
}

impl Run<'_> {
    /// With published ports: a new channel for the init's namespaces; ces's
    /// end is kept for [`Self::forward_ports`], the init's returned.
    fn ports_channel(&self) -> io::Result<Option<OwnedFd>> {
        if self.listeners.is_none() {
            return Ok(None);
        }
        let (ours, init) = ports::namespace_channel()?;
        *self.ports_channel.borrow_mut() = Some(ours);
        Ok(Some(init))
    }

    /// After the start: the forwarder of the published ports, in the
    /// container's network namespace (see [`ports`]); it stops when dropped.
    fn forward_ports(&self) -> Result<Option<ports::Forwarder>, RuntimeError> {
        let (Some(listeners), Some(channel)) = (self.listeners, self.ports_channel.borrow_mut().take()) else {
            return Ok(None);
        };
        ports::Forwarder::start(listeners, &channel)
            .map(Some)
            .map_err(|e| start_error("publishing the ports")(e.into()))
    }
}

/// Removes a container whose init ces has waited for: its cgroups and
/// libcontainer's state directory. What libcontainer's `delete` does for a
/// stopped container (no poststop hook is ever given), without its reading
/// the state and the configuration back and finding the cgroup hierarchy
/// again (on cgroup v1, `/proc/self/mountinfo` and `/proc/self/cgroup` once
/// per controller: about 500 system calls, at the end of every run). No
/// process of the container can be left: the init was the first of its pid
/// namespace, whose other processes the kernel kills and reaps before the
/// init can be waited for (one put into its cgroup from outside is killed
/// by [`ContainerCgroup::remove_leftovers`]). Whether both are gone.
fn remove_ended(container: &libcontainer::container::Container, cgroup: &ContainerCgroup) -> bool {
    let cgroups_removed = cgroup.remove_leftovers();
    match fs::remove_dir_all(&container.root) {
        Ok(()) => cgroups_removed,
        Err(e) if e.kind() == io::ErrorKind::NotFound => cgroups_removed,
        Err(e) => {
            tracing::warn!(state = %container.root.display(), error = %e, "cannot remove the container's state; the next ces start will");
            false
        }
    }
}

/// The attributes of a bind mount's clone (locked in the container).
fn bind_attrs(access: Access) -> u64 {
    match access {
        Access::Ro => idmap::READ_ONLY,
        Access::Rw => idmap::NO_SUID_DEV,
    }
}

fn fchown(fd: &OwnedFd, (uid, gid): (u32, u32)) -> io::Result<()> {
    // SAFETY: fchown of a descriptor we own.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The container's ends of its standard streams: a pipe from ces for stdin
/// with `-i`, else `/dev/null`; pipes to ces for stdout and stderr.
struct ContainerStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// What the container's standard streams are.
enum ContainerIo {
    /// Pipes.
    Pipes(ContainerStdio),
    /// A pty made inside, its master sent to this console socket.
    Terminal(PathBuf),
}

/// ces's side of the container's standard streams.
enum Relay {
    /// The read ends of the output pipes, and with `-i` the write end of stdin's.
    Pipes { stdout: OwnedFd, stderr: OwnedFd, stdin: Option<OwnedFd> },
    /// Where the pty master arrives.
    Terminal(tty::ConsoleSocket),
}

impl Relay {
    /// The streams to relay once the container is built; with a terminal
    /// and `interactive`, the host terminal in raw mode too.
    fn streams(self, interactive: bool) -> io::Result<(wait::Streams, Option<tty::RawMode>)> {
        match self {
            Relay::Pipes { stdout, stderr, stdin } => {
                let streams = wait::Streams::new(
                    (stdout, libc::STDOUT_FILENO),
                    (stderr, libc::STDERR_FILENO),
                    stdin.map(|write| (libc::STDIN_FILENO, write)),
                )?;
                Ok((streams, None))
            }
            Relay::Terminal(socket) => {
                let master = socket.receive_master()?;
                let input = interactive.then_some(libc::STDIN_FILENO);
                let streams = wait::Streams::terminal(master, libc::STDOUT_FILENO, input)?;
                let raw = if interactive { Some(tty::RawMode::enable()?) } else { None };
                Ok((streams, raw))
            }
        }
    }
}

/// How the container ended: `ces-init`'s report (exact even for a signal),
/// else the init's own status; a SIGKILL (or 137) with an OOM kill recorded
/// in the container's cgroup is the memory limit.
fn decide(status: WaitStatus, reports: &[Report], oom_kills: u64) -> Exit {
    let reported = reports.iter().rev().find(|r| matches!(r, Report::Exited(_) | Report::Signaled(_)));
    let exit = match (reported, status) {
        (Some(Report::Exited(code)), _) => Exit::Code(*code),
        (Some(Report::Signaled(signal)), _) => Exit::Signal(*signal),
        (_, WaitStatus::Exited(_, code)) => Exit::Code(code),
        (_, WaitStatus::Signaled(_, signal, _)) => Exit::Signal(signal as i32),
        _ => Exit::Signal(libc::SIGKILL),
    };
    match exit {
        Exit::Signal(libc::SIGKILL) | Exit::Code(137) if oom_kills > 0 => Exit::OutOfMemory,
        other => other,
    }
}

fn read_reports(read: OwnedFd) -> Vec<Report> {
    // Every writer is gone (the init has been reaped): this cannot block.
    let mut bytes = Vec::new();
    let _ = File::from(read).read_to_end(&mut bytes);
    Report::decode_all(&bytes)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `config.json` in the hooks' bundle (see [`Run::bundle_for_hooks`]):
/// made new (never through what is there), root's, `0644`.
fn write_hook_spec(oci: &oci_spec::runtime::Spec, bundle: &Path) -> Result<(), oci_spec::OciSpecError> {
    let path = bundle.join("config.json");
    let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    // Whatever ces's umask.
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    let json = serde_json::to_vec(oci).map_err(|e| oci_spec::OciSpecError::Other(e.to_string()))?;
    io::Write::write_all(&mut &file, &json)?;
    Ok(())
}

/// Where the container's mounts go, and whether each is a directory (the
/// working directory too: docker creates it when the image lacks it). A bind
/// source that cannot be reached is an error naming it.
fn mount_points(spec: &RunSpec) -> Result<Vec<(&str, bool)>, RuntimeError> {
    let mut points = vec![("/proc", true), ("/dev", true), ("/sys", true), (spec.process.cwd.as_str(), true)];
    for m in &spec.mounts {
        let is_dir = match &m.kind {
            MountKind::Bind { source } => fs::metadata(source).map_err(io_error(source))?.is_dir(),
            MountKind::Tmpfs { .. } => true,
        };
        points.push((m.destination.as_str(), is_dir));
    }
    for m in &spec.devices.mounts {
        let is_dir = fs::metadata(&m.host_path).map_err(io_error(&m.host_path))?.is_dir();
        points.push((m.container_path.as_str(), is_dir));
    }
    Ok(points)
}

fn check_state_dir(dir: &Path) -> Result<(), NativeError> {
    let empty = dir.is_absolute()
        && dir.parent().is_some()
        && fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
        && fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    if empty { Ok(()) } else { Err(NativeError::StateDir(dir.to_owned())) }
}

fn check_id(id: &str) -> Result<(), NativeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(NativeError::InvalidId(id.to_owned())) }
}

/// The groups of host user `uid` (from the user database), or just `gid`.
fn user_groups(uid: u32, gid: u32) -> Vec<u32> {
    let user = nix::unistd::User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let groups = user.and_then(|u| {
        let name = std::ffi::CString::new(u.name).ok()?;
        nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).ok()
    });
    let mut groups: Vec<u32> = groups.unwrap_or_default().into_iter().map(Gid::as_raw).collect();
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    groups
}

/// The calling thread's supplementary groups, set for as long as this lives
/// (as root, so that the container's processes, cloned from this thread,
/// carry the mapped user's groups and not root's). The raw system call
/// changes this thread only; libc's wrapper would change every thread.
struct ThreadGroups {
    saved: Vec<libc::gid_t>,
}

impl ThreadGroups {
    fn set(groups: &[u32]) -> io::Result<ThreadGroups> {
        // SAFETY: querying the count with a null buffer.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut saved = vec![0; n as usize];
        // SAFETY: the buffer holds n entries.
        let n = unsafe { libc::getgroups(n, saved.as_mut_ptr()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        saved.truncate(n as usize);
        set_thread_groups(groups)?;
        Ok(ThreadGroups { saved })
    }
}

impl Drop for ThreadGroups {
    fn drop(&mut self) {
        if let Err(e) = set_thread_groups(&self.saved) {
            tracing::warn!(error = %e, "cannot restore this thread's groups");
        }
    }
}

fn set_thread_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the buffer holds groups.len() gids; the raw syscall affects
    // only the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn describe(spec: &RunSpec, privilege: Privilege, root_id_base: u32, hierarchy: Option<&Hierarchy>) -> Vec<String> {
    let user = spec.process.user;
    let mapping = Mapping::for_run(privilege, spec, root_id_base);
    let set_id = mapping.as_ref().map_or(seccomp::SetIdModes::Allowed, Mapping::set_id_modes);
    let user_line = match mapping {
        Ok(Mapping::Single) => format!(
            "user: container {}:{} is host {}:{} (single-ID mapping{})",
            user.uid,
            user.gid,
            spec.identity.host_uid,
            spec.identity.host_gid,
            if (user.uid, user.gid) == (0, 0) { "" } else { ", through a nested user namespace" }
        ),
        Ok(mapping @ Mapping::Block { base }) => {
            let (uid, gid) = mapping.user(spec);
            format!(
                "user: container {}:{} is host {uid}:{gid} (root mode: container ids 0-{} are host ids {base}-{}, \
                 unprivileged; the image's files idmapped to keep their owners; in the bind mounts, host {}:{}'s \
                 files are the user's)",
                user.uid,
                user.gid,
                idmap::RANGE - 1,
                base + (idmap::RANGE - 1),
                spec.identity.host_uid,
                spec.identity.host_gid,
            )
        }
        Err(e) => format!("user: cannot be mapped: {e}"),
    };
    let mut lines = vec![
        format!(
            "runtime: native (libcontainer, in-process), {}",
            if privilege == Privilege::Root { "as root" } else { "rootless" }
        ),
        "namespaces: new user, mount, pid, ipc, uts, network and cgroup namespaces".to_owned(),
        "network: loopback only (lo up: 127.0.0.1 inside; nothing else reachable)".to_owned(),
        user_line,
        format!(
            "rootfs: {} (cached, never written) + copy-on-write overlay in {}, discarded at exit; {}",
            spec.image.rootfs,
            spec.state_dir.join("overlay").display(),
            match (spec.limits.rootfs_writes, privilege) {
                (None, _) => "its writes not limited".to_owned(),
                (Some(size), Privilege::Root) => {
                    format!("its writes limited to {} (a tmpfs, counted in the memory limit)", bytes(size))
                }
                (Some(_), Privilege::Rootless { .. }) => {
                    "its writes NOT limited: [run] max_rootfs_writes needs root (or sudo)".to_owned()
                }
            }
        ),
        format!(
            "standard mounts: /proc, /dev (null zero full random urandom tty, pts), /dev/shm (tmpfs, {}), \
             /dev/mqueue, /sys (ro), /sys/fs/cgroup (ro: the container's own cgroup, in a cgroup namespace)",
            bytes(spec.limits.shm_size)
        ),
    ];
    lines.extend(ports::describe(&spec.ports));
    for m in &spec.mounts {
        let mode = match m.access {
            Access::Ro => "ro",
            Access::Rw => "rw",
        };
        lines.push(match &m.kind {
            MountKind::Bind { source } => format!("mount: {} <- {} (bind, {mode})", m.destination, source.display()),
            MountKind::Tmpfs { size: Some(size) } => {
                format!("mount: {} (tmpfs, {}, {mode})", m.destination, bytes(*size))
            }
            MountKind::Tmpfs { size: None } => format!("mount: {} (tmpfs, {mode})", m.destination),
        });
    }
    let swap = match hierarchy {
        Some(h) if !h.swap_accounting() && cgroups::swap_is_on() => {
            "swap NOT limited: swap is on and this kernel does not account it"
        }
        _ => "no swap",
    };
    let mut limits = vec![format!("memory {} ({swap})", bytes(spec.limits.memory))];
    if let Some(quota) = oci::cpu_quota(spec.limits.cpus) {
        limits.push(format!(
            "cpus {} (CFS quota {quota} us per {} us)",
            spec.limits.cpus.unwrap_or_default(),
            oci::CPU_PERIOD_US
        ));
    }
    if let Some(pids) = spec.limits.pids {
        limits.push(format!("pids {pids}"));
    }
    let enforcement = match (privilege, hierarchy) {
        (_, None) => "cgroups: cannot read this host's cgroup setup".to_owned(),
        (Privilege::Root, Some(h)) => format!("{}, cgroup /{CGROUP_PARENT}/{}", h.describe(), spec.id),
        (Privilege::Rootless { uid, .. }, Some(h)) => {
            format!("{}, {}", h.describe(), cgroups::describe_rootless(h, &spec.id, uid))
        }
    };
    lines.push(format!("limits: {}; {enforcement}", limits.join(", ")));
    // Root mode drops FSETID (see `oci::build`).
    let caps: Vec<String> = oci::CAPABILITIES
        .iter()
        .filter(|(c, _)| set_id == seccomp::SetIdModes::Allowed || *c != oci_spec::runtime::Capability::Fsetid)
        .map(|(c, _)| c.to_string().trim_start_matches("CAP_").to_owned())
        .collect();
    lines.push(format!(
        "security: no_new_privileges; capabilities {} ({}); seccomp default profile ({} syscalls allowed, \
         namespaces/mount/keyring/bpf/module syscalls and AF_VSOCK sockets denied{}; {} system calls only, \
         any other ABI kills the process)",
        caps.join(" "),
        if user.uid == 0 { "bounding and effective" } else { "bounding only: the user is not root" },
        seccomp::allowed_count(set_id),
        if set_id == seccomp::SetIdModes::Refused { ", setuid/setgid modes refused" } else { "" },
        seccomp::native_abi(),
    ));
    lines.push(format!("masked paths: {}", oci::MASKED_PATHS.join(" ")));
    lines.push(format!("read-only paths: {}", oci::READONLY_PATHS.join(" ")));
    lines.push(
        "init: ces-init is PID 1 (reaps zombies; forwards SIGHUP SIGINT SIGQUIT SIGTERM SIGUSR1 SIGUSR2)".to_owned(),
    );
    lines.push(format!(
        "signals: SIGHUP SIGINT SIGQUIT SIGTERM to ces are passed on; the container is killed {} after the first \
         if still running",
        seconds(spec.process.stop_timeout)
    ));
    lines.push(format!(
        "process: cwd {}; {}",
        spec.process.cwd,
        match (spec.process.terminal, spec.process.interactive) {
            (true, true) => "a pty of the container's own (-t), relayed by ces to and from its terminal (raw mode, -i)",
            (true, false) => "a pty of the container's own (-t), its output relayed by ces; no input",
            (false, true) => "stdin a pipe from ces's stdin (-i); stdout and stderr are pipes relayed by ces (never ces's own descriptors)",
            (false, false) => "stdin /dev/null; stdout and stderr are pipes relayed by ces (never ces's own descriptors)",
        }
    ));
    lines
}

fn seconds(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s == 1.0 { "1 second".to_owned() } else { format!("{s} seconds") }
}

fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    if n >= 1 << 20 { format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64) } else { format!("{n} bytes") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("run-20240101-abc.1_x").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exit_from_report_status_and_oom() {
        let status = WaitStatus::Exited(nix::unistd::Pid::from_raw(1), 143);
        assert_eq!(decide(status, &[Report::Signaled(15)], 0), Exit::Signal(15));
        assert_eq!(decide(status, &[], 0), Exit::Code(143));
        assert_eq!(decide(status, &[Report::Exited(3)], 0), Exit::Code(3));
        assert_eq!(decide(status, &[Report::ExecFailed(2), Report::Exited(127)], 0), Exit::Code(127));
        assert_eq!(decide(status, &[Report::Signaled(9)], 1), Exit::OutOfMemory);
        assert_eq!(decide(status, &[Report::Exited(137)], 1), Exit::OutOfMemory);
        assert_eq!(decide(status, &[Report::Exited(0)], 1), Exit::Code(0));
        let killed = WaitStatus::Signaled(nix::unistd::Pid::from_raw(1), nix::sys::signal::Signal::SIGKILL, false);
        assert_eq!(decide(killed, &[], 2), Exit::OutOfMemory);
        assert_eq!(decide(killed, &[], 0), Exit::Signal(9));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(4 << 30), "4 GiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1000), "1000 bytes");
    }
}
