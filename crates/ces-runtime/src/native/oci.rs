//! The OCI runtime spec (`config.json`) for a [`RunSpec`]: a pure function
//! of the plan and of how the container is set up ([`Layout`]), so that it can
//! be tested without running anything.
//!
//! What goes in, and why:
//!
//! - namespaces: user, mount, PID, IPC, UTS, network and cgroup, all new;
//! - a single-ID user mapping: the container's user is the invoking host
//!   user. libcontainer sets the container up as uid 0 of the user
//!   namespace, so that uid is the one mapped, and the init runs as it;
//!   a non-root workload user gets a nested user namespace of its own,
//!   mapping its uid to that one (see `init`). In root mode (root for
//!   itself), a block of 65536 unprivileged host ids instead, the user
//!   among them ([`super::idmap`]);
//! - the root filesystem: the copy-on-write overlay (mounted by ces before the
//!   build as root, or as the first mount of the spec when rootless, where
//!   only the container's own user namespace may mount it);
//! - standard mounts as runc and docker make them (`/proc`, a minimal `/dev`,
//!   `/sys` read-only), the plan's mounts, masked and read-only `/proc` paths;
//! - no new privileges and a small capability set (the default seccomp
//!   profile is loaded by `ces-init`, after the nested user namespace);
//! - cgroup limits when libcontainer applies them (root); rootless, ces
//!   writes them itself into a delegated cgroup (see `cgroups`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, Hook, HookBuilder, Hooks, HooksBuilder, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::spec::{Access, DeviceHook, DeviceType, HookStage, MountKind, RunSpec};

/// The capabilities a container's root user keeps (with their numbers):
/// docker's default set without `MKNOD` (devices cannot be used in a user
/// namespace anyway), `NET_RAW` (no network), `AUDIT_WRITE`, `SETFCAP` and
/// `SYS_CHROOT`.
pub(crate) const CAPABILITIES: [(Capability, u32); 9] = [
    (Capability::Chown, 0),
    (Capability::DacOverride, 1),
    (Capability::Fowner, 3),
    (Capability::Fsetid, 4),
    (Capability::Kill, 5),
    (Capability::Setgid, 6),
    (Capability::Setuid, 7),
    (Capability::Setpcap, 8),
    (Capability::NetBindService, 10),
];

/// `CAP_NET_ADMIN`, which `ces-init` needs to bring `lo` up.
pub(crate) const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SETFCAP`, which a non-root workload needs when it creates its user
/// namespace (to map the container's root in it).
pub(crate) const CAP_SETFCAP: u32 = 31;
/// `CAP_SETGID` and `CAP_SETUID`, which switch a workload to its user where
/// the container maps it (root mode's block).
pub(crate) const CAP_SETGID: u32 = 6;
pub(crate) const CAP_SETUID: u32 = 7;
/// `CAP_KILL`, with which PID 1 passes signals on to a workload of another
/// uid (root mode's block).
pub(crate) const CAP_KILL: u32 = 5;
/// The capabilities PID 1 holds only to set the container up: dropped from
/// every set, bounding included, before the workload runs.
pub(crate) const SETUP_CAPABILITIES: [u32; 2] = [CAP_NET_ADMIN, CAP_SETFCAP];

/// The capabilities the workload keeps, as a bit mask: the set above for
/// root, none for another user (it would lose them at `exec` anyway).
pub(crate) fn workload_capabilities(uid: u32) -> u64 {
    if uid == 0 { CAPABILITIES.iter().fold(0, |mask, (_, bit)| mask | 1 << bit) } else { 0 }
}

/// `/proc` and `/sys` paths hidden from the container (as docker does).
pub(crate) const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// `/proc` paths the container may read but not write (as docker does).
pub(crate) const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The CFS period cpu limits are expressed in, in microseconds.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// The TUN device's node, and its numbers.
pub(crate) const TUN_PATH: &str = "/dev/net/tun";
pub(crate) const TUN_MAJOR: i64 = 10;
pub(crate) const TUN_MINOR: i64 = 200;

/// How the container's root filesystem and cgroup are set up on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The directory that becomes `/`: the overlay mounted by ces (root), or
    /// an empty directory the overlay is mounted on inside the container's
    /// namespaces (rootless).
    pub rootfs: PathBuf,
    /// Rootless: the overlay to mount as the spec's first mount.
    pub overlay_mount: Option<Overlay>,
    /// The cgroup path (absolute: under each v1 controller, or under the v2 root).
    pub cgroup_path: PathBuf,
    /// Whether libcontainer applies the limits (root) or ces does (rootless).
    pub limits_in_spec: bool,
    /// Whether the kernel has swap accounting (`memory.memsw.*`): then swap
    /// is limited to nothing beyond the memory limit.
    pub swap_accounting: bool,
    /// The mounts libcontainer makes for `/sys/fs/cgroup` (the v2 one; on v1
    /// a tmpfs and one per hierarchy), each made read-only after it: its
    /// own mount of v1 hierarchies is writable, and a rootless container's
    /// root owns its cgroup's files (it could raise its own limits).
    pub cgroup_mounts: Vec<String>,
    /// `ces test`: `/dev/net/tun` in the container, bound from this node
    /// (the host's, or in root mode a copy the container's root owns), and
    /// allowed by the device cgroup, for `ces-init` to create the observed
    /// device with.
    pub tun: Option<PathBuf>,
    /// The run's device nodes (`--gpu`, `--device`): where each is in the
    /// container, and the node bound there (the host's rootless; as root, a
    /// node ces made for the run, which only its container can reach).
    pub device_nodes: Vec<(String, PathBuf)>,
    /// The host uid and gid of the container's root, and how many ids from
    /// there the container has (1, or root mode's block: see
    /// [`super::idmap`]).
    pub ids: (u32, u32, u32),
    /// Root mode: the user namespace the container joins, by path (one ces
    /// made with the container's maps: see [`super::idmap::joinable`]),
    /// rather than one libcontainer makes and ces maps in a round trip
    /// with its intermediate process.
    pub user_namespace: Option<PathBuf>,
}

/// An overlay's directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlay {
    /// The lower layers, top first: the cached tree, or the image's layers
    /// (never written).
    pub lower: Vec<PathBuf>,
    /// Where the run's writes go.
    pub upper: PathBuf,
    /// overlayfs' scratch directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Whether the lower layers mark opaque directories with `user.overlay.*`
    /// attributes only (`userxattr`, even as root).
    pub user_xattrs: bool,
    /// Whether each lower layer is its own `lowerdir+` option (Linux 6.8),
    /// not one of a `lowerdir` list: a rootless run's overlay, which
    /// libcontainer mounts through `fsconfig(2)`, whose values have at most
    /// 255 bytes (see [`super::rootfs::fsconfig_lowers`]).
    pub each_lower: bool,
    /// Whether the upper layer is never synced (`volatile`, see
    /// [`ces_image::rootfs::overlay_volatile`]).
    pub volatile: bool,
}

impl Overlay {
    /// The mount options, as `key=value` strings.
    pub fn options(&self, in_user_namespace: bool) -> Vec<String> {
        let lower: Vec<String> = self.lower.iter().map(|l| l.display().to_string()).collect();
        let mut options = Vec::with_capacity(4);
        if in_user_namespace || self.user_xattrs {
            // trusted.* xattrs need CAP_SYS_ADMIN in the initial namespace.
            // First: the kernel would cut mount data longer than a page at
            // its end (ces refuses such data: OverlayMount::mount).
            options.push("userxattr".to_owned());
        }
        if self.volatile {
            options.push("volatile".to_owned());
        }
        if self.each_lower {
            options.extend(lower.iter().map(|l| format!("lowerdir+={l}")));
        } else {
            options.push(format!("lowerdir={}", lower.join(":")));
        }
        options.extend([format!("upperdir={}", self.upper.display()), format!("workdir={}", self.work.display())]);
        options
    }
}

/// The OCI spec for `spec`, laid out as `layout` says.
pub(crate) fn build(spec: &RunSpec, layout: &Layout) -> Result<Spec, OciSpecError> {
    // ces-init (PID 1, root in the user namespace) starts with the setup
    // capabilities as well, and drops them before the workload exists; a
    // non-root workload loses the rest when it switches to its user.
    let mut caps: HashSet<Capability> = CAPABILITIES.iter().map(|(c, _)| *c).collect();
    caps.insert(Capability::NetAdmin);
    caps.insert(Capability::Setfcap);
    if layout.ids.2 > 1 {
        // Root mode's block: root's files in a read-write bind are the
        // container's; writing to a setuid or setgid one must clear the bit
        // (Linux >= 6.2 does it anyway for a user namespace's root).
        caps.remove(&Capability::Fsetid);
    }
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    // The devices' groups: only where the container has them (root mode's
    // block); a single-id namespace cannot have supplementary groups.
    let mut user = UserBuilder::default().uid(0u32).gid(0u32);
    if layout.ids.2 > 1 && !spec.devices.additional_gids.is_empty() {
        user = user.additional_gids(spec.devices.additional_gids.clone());
    }
    let mut process = ProcessBuilder::default()
        // With `-t`, libcontainer makes a pty in the container's devpts and
        // hands the master to ces (see `tty`).
        .terminal(spec.process.terminal)
        .user(user.build()?)
        .args(spec.process.args.clone())
        .env(spec.process.env.iter().map(|var| var.to_env_string()).collect::<Vec<_>>())
        .cwd(spec.process.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()?;
    // The builders start from oci-spec's defaults (runc's `spec`): no rlimit
    // of theirs (NOFILE 1024), the container inherits ces's.
    process.set_rlimits(None);

    let namespaces = [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| match (typ, &layout.user_namespace) {
        (LinuxNamespaceType::User, Some(path)) => LinuxNamespaceBuilder::default().typ(typ).path(path.clone()).build(),
        _ => LinuxNamespaceBuilder::default().typ(typ).build(),
    })
    .collect::<Result<Vec<_>, _>>()?;
    let (uid, gid, count) = layout.ids;
    let uid_map = LinuxIdMappingBuilder::default().container_id(0u32).host_id(uid).size(count).build()?;
    let gid_map = LinuxIdMappingBuilder::default().container_id(0u32).host_id(gid).size(count).build()?;

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .uid_mappings(vec![uid_map])
        .gid_mappings(vec![gid_map])
        .cgroups_path(layout.cgroup_path.clone())
        .masked_paths(MASKED_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .chain(layout.cgroup_mounts.iter().cloned())
                .collect::<Vec<_>>(),
        )
        .rootfs_propagation("private");
    let mut linux = linux.build()?;
    // None, not the builder's default (empty resources, which libcontainer
    // would still apply, writing the device allow-list).
    linux.set_resources(if layout.limits_in_spec { Some(resources(spec, layout)?) } else { None });

    let mut built = SpecBuilder::default()
        .version("1.0.2")
        .hostname(hostname(&spec.id))
        .root(RootBuilder::default().path(layout.rootfs.clone()).readonly(false).build()?)
        .process(process)
        .mounts(mounts(spec, layout)?)
        .linux(linux)
        .build()?;
    built.set_hooks(hooks(&spec.devices.hooks)?);
    Ok(built)
}

/// The devices' hooks, for libcontainer to run at their stage (in the
/// container's namespaces, as its root, with the container's state on
/// stdin), or none.
fn hooks(hooks: &[DeviceHook]) -> Result<Option<Hooks>, OciSpecError> {
    if hooks.is_empty() {
        return Ok(None);
    }
    let at = |stage: HookStage| -> Result<Vec<Hook>, OciSpecError> {
        hooks
            .iter()
            .filter(|h| h.stage == stage)
            .map(|h| {
                let mut hook = HookBuilder::default().path(h.path.clone()).args(h.args.clone()).env(h.env.clone());
                if let Some(timeout) = h.timeout {
                    hook = hook.timeout(timeout);
                }
                hook.build()
            })
            .collect()
    };
    let built = HooksBuilder::default().create_container(at(HookStage::CreateContainer)?).build()?;
    Ok(Some(built))
}

/// The cgroup resources: memory (and swap, when accounted, to the same
/// total: no swap), CPU quota, pids, and no device but the default ones.
fn resources(spec: &RunSpec, layout: &Layout) -> Result<LinuxResources, OciSpecError> {
    let limits = &spec.limits;
    let memory = i64::try_from(limits.memory).unwrap_or(i64::MAX);
    let mut mem = LinuxMemoryBuilder::default().limit(memory);
    if layout.swap_accounting {
        mem = mem.swap(memory);
    }
    // Deny every device; libcgroups adds the standard ones (null, zero,
    // full, random, urandom, tty, ptmx, pts) after this rule.
    let mut devices = vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?];
    if layout.tun.is_some() {
        devices.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(oci_spec::runtime::LinuxDeviceType::C)
                .major(TUN_MAJOR)
                .minor(TUN_MINOR)
                .access("rw")
                .build()?,
        );
    }
    for node in &spec.devices.nodes {
        let typ = match node.kind {
            DeviceType::Char => oci_spec::runtime::LinuxDeviceType::C,
            DeviceType::Block => oci_spec::runtime::LinuxDeviceType::B,
        };
        devices.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(node.major)
                .minor(node.minor)
                .access(node.access.clone())
                .build()?,
        );
    }
    let mut resources = LinuxResourcesBuilder::default().memory(mem.build()?).devices(devices);
    if let Some(quota) = cpu_quota(limits.cpus) {
        resources = resources.cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build()?);
    }
    if let Some(pids) = limits.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(pids).build()?);
    }
    resources.build()
}

/// The CFS quota for `cpus` cores, per [`CPU_PERIOD_US`].
pub(crate) fn cpu_quota(cpus: Option<f64>) -> Option<i64> {
    let cpus = cpus.filter(|c| c.is_finite() && *c > 0.0)?;
    // At least 1 ms per period: the kernel's minimum.
    Some(((cpus * CPU_PERIOD_US as f64).round() as i64).max(1000))
}

/// The standard mounts, then the plan's.
fn mounts(spec: &RunSpec, layout: &Layout) -> Result<Vec<Mount>, OciSpecError> {
    let mut mounts = Vec::new();
    if let Some(overlay) = &layout.overlay_mount {
        mounts.push(mount("/", "overlay", "overlay", overlay.options(true))?);
    }
    mounts.push(mount("/proc", "proc", "proc", opts(&["nosuid", "noexec", "nodev"]))?);
    mounts.push(mount("/dev", "tmpfs", "tmpfs", opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]))?);
    // No `gid=5`: the tty group is not mapped in a single-ID user namespace.
    mounts.push(mount(
        "/dev/pts",
        "devpts",
        "devpts",
        opts(&["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
    )?);
    let mut shm = opts(&["nosuid", "noexec", "nodev", "mode=1777"]);
    shm.push(format!("size={}", spec.limits.shm_size.max(4096)));
    mounts.push(mount("/dev/shm", "tmpfs", "shm", shm)?);
    mounts.push(mount("/dev/mqueue", "mqueue", "mqueue", opts(&["nosuid", "noexec", "nodev"]))?);
    mounts.push(mount("/sys", "sysfs", "sysfs", opts(&["nosuid", "noexec", "nodev", "ro"]))?);
    // The container's own cgroup (its root in the cgroup namespace), so
    // that runtimes size heaps and thread pools from their limits.
    mounts.push(mount("/sys/fs/cgroup", "cgroup", "cgroup", opts(&["nosuid", "noexec", "nodev", "relatime", "ro"]))?);
    if let Some(node) = &layout.tun {
        mounts.push(bind(TUN_PATH, node, opts(&["bind", "nosuid", "noexec", "rw", "private"]))?);
    }
    // Devices: their nodes (a bind, so never `nodev`), then what they need
    // from the host, read-only, without devices or set-id bits.
    for (path, node) in &layout.device_nodes {
        mounts.push(bind(path, node, opts(&["bind", "nosuid", "noexec", "rw", "private"]))?);
    }
    for m in &spec.devices.mounts {
        mounts.push(bind(&m.container_path, &m.host_path, opts(&["bind", "nosuid", "nodev", "ro", "private"]))?);
    }

    for m in &spec.mounts {
        let access = match m.access {
            Access::Ro => "ro",
            Access::Rw => "rw",
        };
        match &m.kind {
            MountKind::Bind { source } => {
                let mut options = opts(&["bind", "nosuid", "nodev", access]);
                options.push("private".to_owned());
                mounts.push(bind(&m.destination, source, options)?);
            }
            MountKind::Tmpfs { size } => {
                let mut options = opts(&["nosuid", "nodev", "mode=1777", access]);
                if let Some(size) = size {
                    options.push(format!("size={size}"));
                }
                mounts.push(mount(&m.destination, "tmpfs", "tmpfs", options)?);
            }
        }
    }
    Ok(mounts)
}

fn opts(options: &[&str]) -> Vec<String> {
    options.iter().map(|o| o.to_string()).collect()
}

fn mount(destination: &str, typ: &str, source: &str, options: Vec<String>) -> Result<Mount, OciSpecError> {
    MountBuilder::default().destination(destination).typ(typ).source(source).options(options).build()
}

fn bind(destination: &str, source: &Path, options: Vec<String>) -> Result<Mount, OciSpecError> {
    MountBuilder::default().destination(destination).typ("bind").source(source).options(options).build()
}

/// A hostname from the run id: letters, digits and `-`, at most 63 characters.
pub(crate) fn hostname(id: &str) -> String {
    let name: String = id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(63).collect();
    let name = name.trim_matches('-');
    if name.is_empty() { "ces".to_owned() } else { name.to_owned() }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use oci_spec::runtime::LinuxNamespaceType;

    use super::*;
    use crate::spec::{ContainerUser, EnvVar, Identity, ImageSpec, Limits, MountSpec, ProcessSpec, RunSpec};

    fn run_spec() -> RunSpec {
        RunSpec {
            id: "r1".to_owned(),
            name: None,
            image: ImageSpec {
                reference: "x".to_owned(),
                digest: ces_image::Digest::of(b"x"),
                rootfs: ces_image::rootfs::Rootfs::Tree(PathBuf::from("/store/rootfs/abc")),
            },
            process: ProcessSpec {
                args: vec!["python".to_owned(), "run.py".to_owned()],
                env: vec![EnvVar::new("TMPDIR", "/scratch")],
                cwd: "/work".to_owned(),
                user: ContainerUser { uid: 1000, gid: 1000 },
                terminal: false,
                interactive: false,
                stop_timeout: ProcessSpec::DEFAULT_STOP_TIMEOUT,
            },
            mounts: vec![
                MountSpec {
                    destination: "/safe_data".to_owned(),
                    kind: MountKind::Bind { source: PathBuf::from("/data/p1") },
                    access: Access::Ro,
                },
                MountSpec {
                    destination: "/tmp".to_owned(),
                    kind: MountKind::Tmpfs { size: Some(1 << 20) },
                    access: Access::Rw,
                },
            ],
            limits: Limits {
                memory: 1 << 30,
                cpus: Some(2.0),
                pids: Some(100),
                shm_size: 1 << 26,
                time_limit: None,
                rootfs_writes: None,
            },
            ports: Vec::new(),
            devices: Default::default(),
            identity: Identity { host_uid: 1001, host_gid: 1002 },
            state_dir: PathBuf::from("/run/ces/r1"),
            pins: Default::default(),
        }
    }

    fn layout(rootless: bool) -> Layout {
        Layout {
            rootfs: PathBuf::from("/run/ces/r1/rootfs"),
            overlay_mount: rootless.then(|| Overlay {
                lower: vec![PathBuf::from("/store/layers/b"), PathBuf::from("/store/layers/a")],
                upper: PathBuf::from("/run/ces/r1/overlay/upper"),
                work: PathBuf::from("/run/ces/r1/overlay/work"),
                user_xattrs: false,
                each_lower: false,
                volatile: true,
            }),
            cgroup_path: PathBuf::from("/ces/r1"),
            limits_in_spec: !rootless,
            swap_accounting: true,
            cgroup_mounts: vec!["/sys/fs/cgroup".to_owned()],
            tun: None,
            device_nodes: Vec::new(),
            ids: (1001, 1002, 1),
            user_namespace: None,
        }
    }

    #[test]
    fn namespaces_and_a_single_id_mapping_of_the_containers_root() {
        let oci = build(&run_spec(), &layout(false)).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        let types: Vec<_> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        for t in [
            LinuxNamespaceType::User,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Network,
        ] {
            assert!(types.contains(&t), "{t:?}");
        }
        let uid = &linux.uid_mappings().as_ref().unwrap()[..];
        assert_eq!((uid.len(), uid[0].container_id(), uid[0].host_id(), uid[0].size()), (1, 0, 1001, 1));
        let gid = &linux.gid_mappings().as_ref().unwrap()[..];
        assert_eq!((gid.len(), gid[0].container_id(), gid[0].host_id(), gid[0].size()), (1, 0, 1002, 1));
        // The init runs as the mapped root; ces-init switches to 1000.
        let process = oci.process().as_ref().unwrap();
        assert_eq!((process.user().uid(), process.user().gid()), (0, 0));
        assert_eq!(process.no_new_privileges(), Some(true));
        assert!(process.rlimits().is_none());
        assert_eq!(process.env().as_ref().unwrap(), &["TMPDIR=/scratch".to_owned()]);
        assert!(linux.seccomp().is_none(), "ces-init loads the profile");
        assert!(linux.masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_owned()));
        assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sysrq-trigger".to_owned()));
    }

    #[test]
    fn root_modes_block_maps_the_containers_ids_to_the_block() {
        let layout = Layout { ids: (0x7000_0000, 0x7000_0000, 65_536), ..layout(false) };
        let oci = build(&run_spec(), &layout).unwrap();
        let bounding = oci.process().as_ref().unwrap().capabilities().as_ref().unwrap().bounding().clone().unwrap();
        assert!(!bounding.contains(&Capability::Fsetid), "writes clear setuid bits: {bounding:?}");
        let linux = oci.linux().as_ref().unwrap();
        for map in [linux.uid_mappings(), linux.gid_mappings()] {
            let map = &map.as_ref().unwrap()[..];
            assert_eq!(
                (map.len(), map[0].container_id(), map[0].host_id(), map[0].size()),
                (1, 0, 0x7000_0000, 65_536)
            );
        }
    }

    #[test]
    fn root_puts_limits_in_the_spec_and_rootless_does_not() {
        let oci = build(&run_spec(), &layout(false)).unwrap();
        let resources = oci.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let memory = resources.memory().as_ref().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(1 << 30), Some(1 << 30)));
        let cpu = resources.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(200_000), Some(CPU_PERIOD_US)));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 100);
        let rootless = build(&run_spec(), &layout(true)).unwrap();
        assert!(rootless.linux().as_ref().unwrap().resources().is_none());
    }

    #[test]
    fn rootless_mounts_the_overlay_first() {
        let oci = build(&run_spec(), &layout(true)).unwrap();
        let mounts = oci.mounts().as_ref().unwrap();
        assert_eq!(mounts[0].destination(), Path::new("/"));
        assert_eq!(mounts[0].typ().as_deref(), Some("overlay"));
        let options = mounts[0].options().as_ref().unwrap();
        assert!(options.contains(&"lowerdir=/store/layers/b:/store/layers/a".to_owned()));
        assert!(options.contains(&"userxattr".to_owned()));
        // A flag (fsconfig's FSCONFIG_SET_FLAG): the upper layer is never synced.
        assert!(options.contains(&"volatile".to_owned()));
        // One option per layer, top first, where the kernel takes them so.
        let mut each = layout(true);
        each.overlay_mount.as_mut().unwrap().each_lower = true;
        let oci = build(&run_spec(), &each).unwrap();
        let options = oci.mounts().as_ref().unwrap()[0].options().clone().unwrap();
        let lowers: Vec<&str> = options.iter().filter(|o| o.starts_with("lowerdir")).map(String::as_str).collect();
        assert_eq!(lowers, ["lowerdir+=/store/layers/b", "lowerdir+=/store/layers/a"]);
        let rooted = build(&run_spec(), &layout(false)).unwrap();
        assert!(rooted.mounts().as_ref().unwrap().iter().all(|m| m.typ().as_deref() != Some("overlay")));
    }

    #[test]
    fn plan_mounts_keep_their_modes() {
        let oci = build(&run_spec(), &layout(false)).unwrap();
        let mounts = oci.mounts().as_ref().unwrap();
        let data = mounts.iter().find(|m| m.destination() == Path::new("/safe_data")).unwrap();
        assert_eq!(data.typ().as_deref(), Some("bind"));
        assert!(data.options().as_ref().unwrap().contains(&"ro".to_owned()));
        let tmp = mounts.iter().find(|m| m.destination() == Path::new("/tmp")).unwrap();
        assert_eq!(tmp.typ().as_deref(), Some("tmpfs"));
        assert!(tmp.options().as_ref().unwrap().contains(&"size=1048576".to_owned()));
        let shm = mounts.iter().find(|m| m.destination() == Path::new("/dev/shm")).unwrap();
        assert!(shm.options().as_ref().unwrap().contains(&"size=67108864".to_owned()));
        let sys = mounts.iter().find(|m| m.destination() == Path::new("/sys")).unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_owned()));
    }

    #[test]
    fn capabilities_are_a_small_set_plus_the_setup_ones_for_pid_1() {
        let oci = build(&run_spec(), &layout(false)).unwrap();
        let caps = oci.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), CAPABILITIES.len() + 2);
        for absent in [Capability::SysAdmin, Capability::NetRaw, Capability::Mknod, Capability::SysPtrace] {
            assert!(!bounding.contains(&absent), "{absent:?}");
        }
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert_eq!(workload_capabilities(0), 0x5fb);
        assert_eq!(workload_capabilities(1000), 0);
    }

    #[test]
    fn hostnames_from_ids() {
        assert_eq!(hostname("run_2024.01-x"), "run-2024-01-x");
        assert_eq!(hostname("___"), "ces");
    }
}
