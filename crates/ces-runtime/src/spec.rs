//! The run plan: everything a backend needs to run one container, resolved
//! once (image digest, mounts, limits, env, argv, identity). Every backend
//! renders this same plan; none adds policy of its own.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ces_image::Digest;

/// One run, fully resolved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSpec {
    /// The unique run id (also in the outputs and scratch directory names).
    pub id: String,
    /// The name the user gave (`--name`), if any.
    pub name: Option<String>,
    /// The image, pinned.
    pub image: ImageSpec,
    /// The process to start.
    pub process: ProcessSpec,
    /// Mounts, in order, on top of the image's root filesystem.
    pub mounts: Vec<MountSpec>,
    /// Resource limits.
    pub limits: Limits,
    /// Container ports published on the host (`-p`, `--publish-socket`).
    pub ports: Vec<Publish>,
    /// Devices (`--gpu`, `--device`): CDI edits, resolved and checked.
    pub devices: Devices,
    /// Who the container's user is on the host.
    pub identity: Identity,
    /// A private directory for the backend's per-run state (bundle, the
    /// copy-on-write layer...); it exists, is empty, and is removed after the run.
    pub state_dir: PathBuf,
    /// The bind sources as they were checked: open descriptors that the
    /// native runtime, as root, mounts from instead of the paths.
    #[serde(skip)]
    pub pins: Pins,
}

/// Bind sources held open since they were checked (`O_PATH`): as root, the
/// native runtime mounts exactly these, never what a path leads to by the
/// time of the mount (a user who swaps a directory of theirs for a link in
/// between gets the directory that was checked).
#[derive(Debug, Clone, Default)]
pub struct Pins(Vec<(PathBuf, std::sync::Arc<std::os::fd::OwnedFd>)>);

impl Pins {
    /// Pins `source` to `fd` (the directory it named when checked).
    pub fn add(&mut self, source: PathBuf, fd: std::sync::Arc<std::os::fd::OwnedFd>) {
        self.0.retain(|(path, _)| *path != source);
        self.0.push((source, fd));
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The descriptor `source` was pinned to, if any.
    pub fn get(&self, source: &std::path::Path) -> Option<&std::os::fd::OwnedFd> {
        self.0.iter().find(|(path, _)| path == source).map(|(_, fd)| fd.as_ref())
    }
}

/// The image a run uses.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSpec {
    /// The reference as the user named it.
    pub reference: String,
    /// The manifest digest the store resolved it to.
    pub digest: Digest,
    /// The cached, unpacked root filesystem: a tree or the image's layers
    /// (read-only to runs: each run writes to its own copy-on-write layer
    /// over it).
    pub rootfs: ces_image::rootfs::Rootfs,
}

/// The process to start in the container.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessSpec {
    /// argv (entrypoint + command + arguments), at least one element.
    pub args: Vec<String>,
    /// The environment.
    pub env: Vec<EnvVar>,
    /// The working directory (absolute, inside the container).
    pub cwd: String,
    /// The user inside the container.
    pub user: ContainerUser,
    /// Allocate a terminal (`-t`).
    pub terminal: bool,
    /// Keep stdin open (`-i`).
    pub interactive: bool,
    /// How long a workload may outlive a stop signal (SIGTERM, SIGINT,
    /// SIGHUP, SIGQUIT) passed on to it before the container is killed.
    #[serde(serialize_with = "seconds")]
    pub stop_timeout: Duration,
}

impl ProcessSpec {
    /// The default [`ProcessSpec::stop_timeout`] (docker's).
    pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
}

fn seconds<S: serde::Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(d.as_secs_f64())
}

/// A variable of the container's environment. Its value is never shown: not
/// in `Debug`, not in the dry-run plan, not in logs (it may be a secret).
#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The name.
    pub name: String,
    value: String,
}

impl EnvVar {
    /// A variable.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar { name: name.into(), value: value.into() }
    }

    /// The value, for the one place that hands it to the container.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// `NAME=value`, for the container's environment block.
    pub fn to_env_string(&self) -> String {
        format!("{}={}", self.name, self.value)
    }
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=<redacted>", self.name)
    }
}

impl serde::Serialize for EnvVar {
    /// Serialized as its name only.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

/// The user a process runs as, inside the container's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ContainerUser {
    /// uid inside the container.
    pub uid: u32,
    /// gid inside the container.
    pub gid: u32,
}

/// The host user the container's user is mapped to: files the container
/// creates in bind mounts are owned by this user on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// Host uid (the invoking user: `SUDO_UID` or the real uid).
    pub host_uid: u32,
    /// Host gid.
    pub host_gid: u32,
}

/// A mount in the container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub destination: String,
    /// What is mounted.
    pub kind: MountKind,
    /// Read-only or read-write.
    pub access: Access,
}

/// What a mount is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum MountKind {
    /// A host directory.
    Bind {
        /// The host path.
        source: PathBuf,
    },
    /// A tmpfs (in memory; gone at exit).
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
}

/// Whether a mount can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read-only.
    Ro,
    /// Read-write.
    Rw,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Ro => "ro",
            Access::Rw => "rw",
        })
    }
}

/// A container port published on the host (`-p`, `--publish-socket`): ces
/// listens at `host` and relays each connection to `container_port` on the
/// container's own loopback. No interface or route is added to the
/// container's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Publish {
    /// Where ces listens on the host.
    pub host: HostEndpoint,
    /// The TCP port on the container's loopback (`127.0.0.1`).
    pub container_port: u16,
}

/// Where a published port listens on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum HostEndpoint {
    /// A TCP address: loopback, unless the operator's policy allows another.
    Tcp {
        /// The address and port.
        address: std::net::SocketAddr,
    },
    /// A Unix socket, mode 0600 and the invoking user's, removed at exit.
    Unix {
        /// Its absolute path.
        path: PathBuf,
    },
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostEndpoint::Tcp { address } => write!(f, "{address}"),
            HostEndpoint::Unix { path } => write!(f, "unix:{}", path.display()),
        }?;
        write!(f, " -> {}/tcp", self.container_port)
    }
}

/// Resource limits.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Limits {
    /// Memory limit in bytes (`-m`, GB on the command line; default 4 GB).
    pub memory: u64,
    /// CPU limit in cores (`-c`), if any.
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    pub pids: Option<i64>,
    /// Size of `/dev/shm` in bytes.
    pub shm_size: u64,
    /// The wall-clock limit (`--time-limit`), if any: enforced by ces, which
    /// stops the run at it as a `SIGTERM` to ces would.
    #[serde(serialize_with = "optional_seconds")]
    pub time_limit: Option<Duration>,
    /// The most the container may write to its own filesystem (the
    /// copy-on-write layer, outside its mounts), in bytes, if limited
    /// (`[run] max_rootfs_writes`; root only: see the native runtime).
    pub rootfs_writes: Option<u64>,
}

fn names_only<S: serde::Serializer>(env: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(env.iter().map(|v| v.split_once('=').map_or(v.as_str(), |(name, _)| name)))
}

fn optional_seconds<S: serde::Serializer>(d: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serializer.serialize_some(&d.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It was killed for exceeding its memory limit.
    OutOfMemory,
    /// It was stopped at its time limit; the value is the code it ended
    /// with then (143 for the `SIGTERM`, 137 when killed after the stop
    /// timeout, its own code if it exited on the `SIGTERM`).
    TimeLimit(i32),
}

impl Exit {
    /// The exit code of a run stopped at its time limit (`timeout(1)`'s).
    pub const TIME_LIMIT_CODE: i32 = 124;

    /// The exit code ces passes on: the code, or 128 + the signal (137 for
    /// out of memory, as the kernel's SIGKILL; 124 for the time limit).
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
            Exit::OutOfMemory => 128 + 9,
            Exit::TimeLimit(_) => Exit::TIME_LIMIT_CODE,
        }
    }
}

/// The devices a run is given: the edits of the CDI devices it asked for
/// (`--gpu`, `--device`), read, checked against the operator's policy and
/// merged by ces (see `docs/gpu.md`). Empty for a run without devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Devices {
    /// The CDI devices asked for, as resolved.
    pub requested: Vec<RequestedDevice>,
    /// Device nodes in the container's `/dev`.
    pub nodes: Vec<DeviceNode>,
    /// Host files and directories (driver libraries) bound read-only.
    pub mounts: Vec<DeviceMount>,
    /// Programs the spec has run in the container's namespaces before the
    /// workload starts.
    pub hooks: Vec<DeviceHook>,
    /// Supplementary groups for the workload (container ids).
    pub additional_gids: Vec<u32>,
    /// The names of the environment variables the specs set (their values
    /// are in the process's environment).
    pub env: Vec<String>,
    /// The specs' mounts ces leaves out, and why.
    pub left_out: Vec<String>,
}

impl Devices {
    /// Whether the run has no device.
    pub fn is_empty(&self) -> bool {
        self.requested.is_empty()
    }
}

/// A CDI device a run asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestedDevice {
    /// Its fully qualified name, `vendor/class=name`.
    pub name: String,
    /// Its UUID, where the spec says (a `GPU-...` or `MIG-...` name of the
    /// same device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The spec file it came from.
    pub spec: PathBuf,
}

/// Block or character device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    /// A character device (`c`).
    Char,
    /// A block device (`b`).
    Block,
}

/// A device node of a run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceNode {
    /// Its path in the container (under `/dev`).
    pub path: String,
    /// The host node it stands for (checked: a device of this type and numbers).
    pub host_path: PathBuf,
    /// Character or block.
    #[serde(rename = "type")]
    pub kind: DeviceType,
    /// Its major number.
    pub major: i64,
    /// Its minor number.
    pub minor: i64,
    /// Its permission bits where ces makes the node (as root).
    pub file_mode: u32,
    /// The access the device cgroup allows (`r`, `w`, `m`), where ces
    /// writes it (as root).
    pub access: String,
}

/// A host path a device needs in the container (driver libraries), bound
/// read-only, without devices or set-id bits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceMount {
    /// The host path.
    pub host_path: PathBuf,
    /// Where it appears in the container.
    pub container_path: String,
}

/// When a device's hook runs (OCI's names). Only `createContainer` is
/// taken: the other stages run outside the container's namespaces with the
/// runtime's privileges, or (`startContainer`) run a program of the image
/// before the workload's own restrictions are in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HookStage {
    /// After the mounts, before the root is changed: a host program, in the
    /// container's namespaces, as its root.
    CreateContainer,
}

/// A hook of a device spec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceHook {
    /// When it runs.
    pub stage: HookStage,
    /// The program (absolute).
    pub path: PathBuf,
    /// Its argv (the first is argv\[0\]).
    pub args: Vec<String>,
    /// Its environment (`NAME=value`; only the names are serialised).
    #[serde(serialize_with = "names_only")]
    pub env: Vec<String>,
    /// Seconds it may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}
