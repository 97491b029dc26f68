//! GPUs and other devices through CDI (Container Device Interface) specs:
//! `--gpu`, `--device`, `ces system gpus` (see docs/gpu.md).
//!
//! The specs are the operator's: read only from root's directories
//! (`[gpu] spec_dirs`), each file root's and written by root alone, since a
//! spec says what host paths a container gets and what programs run for it.
//! Each is parsed and validated by the `container-device-interface` crate
//! (the CDI 1.1 schema, names, versions), then checked by ces for what it
//! takes (device nodes that are on this host with the numbers the spec
//! says, mounts away from the TRE's directories, only the hooks that run in
//! the container's namespaces). The devices a run asks for are checked
//! against `[gpu]`'s policy, then their edits are merged into the plan as
//! [`ces_runtime::Devices`]: the native runtime applies them itself, the
//! podman backend names the devices and podman reads the same specs.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ces_image::quote::{escape_message, quote_path};
use ces_runtime::{DeviceHook, DeviceMount, DeviceNode, DeviceType, Devices, EnvVar, HookStage, RequestedDevice};

use crate::settings::GpuConfig;

/// The command that writes NVIDIA's spec.
pub const GENERATE_HINT: &str =
    "an operator generates the spec with: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml";

/// The most a spec file may weigh.
const MAX_SPEC_BYTES: u64 = 4 << 20;

/// At most this many characters of a spec's own text in a message.
const MAX_QUOTED: usize = 200;

/// A device request that cannot be met.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `[gpu] enabled` is off.
    #[error("devices (--gpu, --device) are not enabled on this host")]
    Disabled,
    /// ces runs in a user namespace, where it cannot tell who the user is.
    #[error("ces runs in a user namespace, where it cannot check who may use devices on this host")]
    UserNamespace,
    /// Not `vendor/class=name`.
    #[error("{0:?} is not a CDI device name (vendor.example/class=name)")]
    BadName(Short),
    /// `--gpu` with a value that names no GPU.
    #[error("--gpu {0:?}: name GPUs by index or UUID, separated by commas (e.g. --gpu 0,1), or all")]
    BadSelector(Short),
    /// A cluster's run names GPUs, or other devices, rather than a count.
    #[error("a run on a cluster asks for a number of GPUs, and {0:?} names a device")]
    NotACount(Short),
    /// The device is in no spec.
    #[error("no CDI device {name} on this host{}", match broken {
        Some((path, _)) => format!(" (and the spec {} could not be read)", quote_path(path)),
        None => String::new(),
    })]
    NotFound {
        /// The fully qualified name.
        name: String,
        /// A spec that could not be read, which may have had it.
        broken: Option<(PathBuf, String)>,
    },
    /// The podman backend would apply what ces does not.
    #[error("the podman backend cannot give the container {device}: {problem}")]
    Podman {
        /// The device.
        device: String,
        /// What podman would do otherwise than ces.
        problem: String,
    },
    /// `--gpu` (all) on a host with no device of the kind.
    #[error("no {kind} device on this host")]
    NoneOfKind {
        /// The kind.
        kind: String,
        /// A spec that could not be read, which may have had some.
        broken: Option<(PathBuf, String)>,
    },
    /// The policy does not let this user have the device.
    #[error("user {user} may not use {device} on this host")]
    Refused {
        /// The user (under sudo, the one who ran it).
        user: String,
        /// The device.
        device: String,
    },
    /// `[gpu] max_per_run`.
    #[error("{asked} devices asked for, and this host allows at most {max} per run")]
    TooMany {
        /// How many.
        asked: usize,
        /// The most.
        max: usize,
    },
    /// A device whose spec asks for what ces does not do, or that is not
    /// on this host as its spec says.
    #[error("cannot give the container {device} (spec {}): {problem}", quote_path(spec))]
    Unusable {
        /// The device.
        device: String,
        /// Its spec.
        spec: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// A user's word, cut to a length a message can quote; shown quoted and
/// escaped (`{:?}`).
pub struct Short(String);

impl Short {
    fn of(word: &str) -> Short {
        Short(word.chars().take(MAX_QUOTED).collect())
    }
}

impl std::fmt::Debug for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

/// Hints for a device error.
pub fn hints(error: &DeviceError) -> Vec<String> {
    match error {
        DeviceError::Disabled => vec![
            "an operator enables them in the system config: [gpu] enabled = true (see docs/gpu.md)".to_owned(),
            "or run without --gpu and --device".to_owned(),
        ],
        DeviceError::UserNamespace => vec!["run ces from the host, outside the user namespace".to_owned()],
        DeviceError::BadName(_) => vec![
            "a host device is never given by its path: the operator's CDI specs say which devices there are".to_owned(),
            "`ces system gpus` lists the devices of this host and their names".to_owned(),
        ],
        DeviceError::BadSelector(_) => {
            vec!["`ces system gpus` lists the devices of this host and their names".to_owned()]
        }
        DeviceError::NotFound { broken, .. } | DeviceError::NoneOfKind { broken, .. } => {
            let mut hints = Vec::new();
            if let Some((path, why)) = broken {
                hints.push(format!("{}: {why}", quote_path(path)));
            }
            hints.push("`ces system gpus` lists the devices of this host and their names".to_owned());
            hints.push(GENERATE_HINT.to_owned());
            hints
        }
        DeviceError::Refused { .. } => {
            vec!["ask the operator to allow it ([[gpu.allow]] in the system config); `ces system gpus` shows which devices you may use".to_owned()]
        }
        DeviceError::TooMany { max, .. } => vec![format!("name at most {max}: --gpu 0 or --gpu 0,1 ...")],
        DeviceError::NotACount(_) => vec![
            "--gpu asks the scheduler for one GPU, --gpu=0,1 for two: it picks which (see docs/cluster.md)".to_owned(),
        ],
        DeviceError::Podman { .. } => {
            vec!["use the native runtime (the default), which applies what it checked".to_owned()]
        }
        DeviceError::Unusable { .. } => vec![
            "the spec may be stale (a driver update, a GPU added or removed): an operator regenerates it".to_owned(),
            GENERATE_HINT.to_owned(),
        ],
    }
}

/// What a run asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `--gpu`: `None` when not given; `all`, or indexes and UUIDs.
    pub gpu: Option<String>,
    /// `--device`: fully qualified CDI names.
    pub devices: Vec<String>,
}

impl Request {
    /// Whether the run asked for no device.
    pub fn is_empty(&self) -> bool {
        self.gpu.is_none() && self.devices.is_empty()
    }
}

/// Whether `word` can only be a `--gpu` selector (`0`, `0,1`, `GPU-<uuid>`,
/// `MIG-<uuid>`, `all`): `--gpu 0 IMAGE` then means `--gpu=0 IMAGE`.
pub fn is_selector(word: &str) -> bool {
    !word.is_empty()
        && word.split(',').all(|part| {
            part == "all"
                || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit() || b == b':'))
                || ((part.starts_with("GPU-") || part.starts_with("MIG-"))
                    && part.len() > 4
                    && part[4..].bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'/'))
        })
}

/// A spec's container edits, as ces reads them (from the crate's validated
/// spec, through its own serialisation: the crate keeps the fields private).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Edits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<NodeEdit>,
    #[serde(default)]
    mounts: Vec<MountEdit>,
    #[serde(default)]
    hooks: Vec<HookEdit>,
    #[serde(default)]
    additional_gids: Vec<u32>,
    #[serde(default)]
    net_devices: Vec<serde_json::Value>,
    #[serde(default)]
    intel_rdt: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeEdit {
    path: String,
    host_path: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    permissions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MountEdit {
    host_path: String,
    container_path: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct HookEdit {
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    timeout: Option<i64>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecView {
    kind: String,
    devices: Vec<DeviceView>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceView {
    name: String,
    #[serde(default)]
    container_edits: Edits,
}

/// A spec file read.
#[derive(Debug)]
struct SpecFile {
    path: PathBuf,
    edits: Edits,
}

/// A device of a spec.
#[derive(Debug)]
pub struct Found {
    /// Index into [`Registry::specs`].
    spec: usize,
    /// The kind (`vendor/class`).
    kind: String,
    /// The name in its spec.
    name: String,
    edits: Edits,
}

/// The devices this host's specs offer.
#[derive(Debug, Default)]
pub struct Registry {
    specs: Vec<SpecFile>,
    /// By fully qualified name.
    devices: BTreeMap<String, Found>,
    /// The spec directories and files that could not be used, and why.
    pub problems: Vec<(PathBuf, String)>,
}

impl Registry {
    /// Reads every spec in `dirs` (missing directories are skipped).
    pub fn read(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry::default();
        for (priority, dir) in dirs.iter().enumerate() {
            // Same name in two files of one directory: neither is used (a
            // later directory may still name it).
            let mut conflicts: Vec<String> = Vec::new();
            let dir = match trusted_dir(dir) {
                Ok(Some(dir)) => dir,
                Ok(None) => continue,
                Err(problem) => {
                    registry.problems.push((dir.clone(), problem));
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
                    .collect(),
                Err(e) => {
                    registry.problems.push((dir.clone(), format!("cannot list it: {e}")));
                    continue;
                }
            };
            files.sort();
            let mut seen_here: BTreeMap<String, PathBuf> = BTreeMap::new();
            for path in files {
                let view = match read_spec(&path, priority) {
                    Ok(view) => view,
                    Err(problem) => {
                        registry.problems.push((path, problem));
                        continue;
                    }
                };
                let index = registry.specs.len();
                for device in view.devices {
                    let qualified = format!("{}={}", view.kind, device.name);
                    if let Some(other) = seen_here.insert(qualified.clone(), path.clone())
                        && other != path
                    {
                        registry.problems.push((
                            path.clone(),
                            format!("{qualified} is also in {}: neither is used", quote_path(&other)),
                        ));
                        conflicts.push(qualified.clone());
                    }
                    let found = Found {
                        spec: index,
                        kind: view.kind.clone(),
                        name: device.name,
                        edits: device.container_edits,
                    };
                    // A later directory's replaces an earlier one's.
                    registry.devices.insert(qualified, found);
                }
                registry.specs.push(SpecFile { path, edits: view.container_edits });
            }
            for name in conflicts {
                registry.devices.remove(&name);
            }
        }
        registry
    }

    /// Every device, by fully qualified name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.devices.keys().map(String::as_str)
    }

    /// The spec file a device is in.
    pub fn spec_of(&self, name: &str) -> Option<&Path> {
        self.devices.get(name).map(|d| self.specs[d.spec].path.as_path())
    }

    /// The UUID of a device: its name if that is one, or the name of a
    /// device of the same spec with the same edits that is one.
    pub fn uuid_of(&self, name: &str) -> Option<String> {
        let found = self.devices.get(name)?;
        if is_uuid(&found.name) {
            return Some(found.name.clone());
        }
        self.devices
            .values()
            .find(|other| other.spec == found.spec && is_uuid(&other.name) && other.edits == found.edits)
            .map(|other| other.name.clone())
    }

    /// Every name of the device `name` (itself included): the devices of
    /// its spec with the same edits (an index name and a UUID name).
    pub fn aliases<'a>(&'a self, name: &'a str) -> Vec<&'a str> {
        let Some(found) = self.devices.get(name) else { return vec![name] };
        self.devices
            .iter()
            .filter(|(_, other)| other.spec == found.spec && other.edits == found.edits)
            .map(|(other, _)| other.as_str())
            .collect()
    }

    /// The devices of `kind`, one name per device: not the `all` device,
    /// and not a UUID name for a device that has an index name too.
    pub fn of_kind(&self, kind: &str) -> Vec<&str> {
        let of_kind: Vec<(&String, &Found)> = self.devices.iter().filter(|(_, d)| d.kind == kind).collect();
        of_kind
            .iter()
            .filter(|(_, d)| d.name != "all")
            .filter(|(_, d)| {
                !is_uuid(&d.name)
                    || !of_kind.iter().any(|(_, o)| !is_uuid(&o.name) && o.name != "all" && o.edits == d.edits)
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The first spec that could not be read, for a device that was not found.
    fn broken(&self) -> Option<(PathBuf, String)> {
        self.problems.first().cloned()
    }
}

fn is_uuid(name: &str) -> bool {
    name.starts_with("GPU-") || name.starts_with("MIG-")
}

/// `dir`, resolved, if it exists and only root can change what is in it or
/// what leads to it (see [`resolve_root_alone`]); `None` if it does not exist.
fn trusted_dir(dir: &Path) -> Result<Option<PathBuf>, String> {
    let (resolved, meta) = match resolve_root_alone(dir, true) {
        Ok(found) => found,
        Err(Unsafe::Missing) => return Ok(None),
        Err(Unsafe::Problem(problem)) => return Err(format!("{problem}: its specs are not used")),
    };
    if !meta.is_dir() {
        return Err("it is not a directory".to_owned());
    }
    Ok(Some(resolved))
}

/// Why a host path is not taken.
enum Unsafe {
    /// It is not there.
    Missing,
    /// Something on the way could be changed by others, or could not be read.
    Problem(String),
}

/// The most links a path may go through (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// `path` resolved one component at a time, as the kernel would, and its
/// metadata, if only root can change what it leads to: every directory
/// passed through is root's and not writable by group or others (not even a
/// sticky one such as `/tmp`, where a user may plant a link, a directory or
/// a FUSE mount under a name a spec expects), every link passed through is
/// root's, and so is what it ends at, which (with `check_mode`) is not
/// writable by others either (a device node's mode says who may use the
/// device, not who may change the node).
fn resolve_root_alone(path: &Path, check_mode: bool) -> Result<(PathBuf, std::fs::Metadata), Unsafe> {
    use std::collections::VecDeque;
    use std::path::Component;
    let changeable =
        |path: &Path| Unsafe::Problem(format!("{} can be changed by users other than root", quote_path(path)));
    let unreadable = |path: &Path, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Unsafe::Missing
        } else {
            Unsafe::Problem(format!("cannot read {}: {e}", quote_path(path)))
        }
    };
    if !path.is_absolute() {
        return Err(Unsafe::Problem(format!("{} is not an absolute path", quote_path(path))));
    }
    let mut current = PathBuf::from("/");
    let mut meta = std::fs::symlink_metadata(&current).map_err(|e| unreadable(&current, e))?;
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    let push_front = |pending: &mut VecDeque<std::ffi::OsString>, path: &Path| {
        for component in path.components().rev() {
            match component {
                Component::Normal(name) => pending.push_front(name.to_owned()),
                Component::ParentDir => pending.push_front("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    push_front(&mut pending, path);
    let mut links = 0;
    loop {
        // `current` is a directory here unless it is the end.
        if meta.is_dir() && (meta.uid() != 0 || meta.mode() & 0o022 != 0) {
            return Err(changeable(&current));
        }
        let Some(name) = pending.pop_front() else { break };
        if !meta.is_dir() {
            return Err(Unsafe::Problem(format!("{} is not a directory", quote_path(&current))));
        }
        if name == ".." {
            current.pop();
            meta = std::fs::symlink_metadata(&current).map_err(|e| unreadable(&current, e))?;
            continue;
        }
        let next = current.join(&name);
        let next_meta = std::fs::symlink_metadata(&next).map_err(|e| unreadable(&next, e))?;
        if next_meta.uid() != 0 {
            return Err(changeable(&next));
        }
        if next_meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(Unsafe::Problem(format!("{}: too many links", quote_path(path))));
            }
            let target = std::fs::read_link(&next).map_err(|e| unreadable(&next, e))?;
            if target.is_absolute() {
                current = PathBuf::from("/");
                meta = std::fs::symlink_metadata(&current).map_err(|e| unreadable(&current, e))?;
            }
            push_front(&mut pending, &target);
            continue;
        }
        current = next;
        meta = next_meta;
    }
    if meta.uid() != 0 || (check_mode && meta.mode() & 0o022 != 0) {
        return Err(changeable(&current));
    }
    Ok((current, meta))
}

/// `path` resolved, with its metadata, if it exists and only root can
/// change it or what leads to it (see [`resolve_root_alone`]); `what` names
/// it in errors.
fn trusted_host_path(path: &Path, what: &str, check_mode: bool) -> Result<(PathBuf, std::fs::Metadata), String> {
    resolve_root_alone(path, check_mode).map_err(|problem| match problem {
        Unsafe::Missing => format!("its {what} {} is not on this host", quote_path(path)),
        Unsafe::Problem(problem) => format!("its {what}: {problem}"),
    })
}

/// Reads and validates one spec file (root's, written by root alone).
fn read_spec(path: &Path, priority: usize) -> Result<SpecView, String> {
    let file = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::NOCTTY
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("cannot open it: {e}"))?;
    let file = std::fs::File::from(file);
    let meta = file.metadata().map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".to_owned());
    }
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err("it can be changed by users other than root: not used".to_owned());
    }
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        return Err(format!("it is larger than {} MiB", MAX_SPEC_BYTES >> 20));
    }
    // YAML, of which JSON is a subset (the crate reads both so too).
    let raw: container_device_interface::specs::config::Spec = serde_yaml::from_slice(&bytes)
        .map_err(|e| format!("not a CDI spec: {}", escape_message(&e.to_string(), MAX_QUOTED)))?;
    let priority = i32::try_from(priority).unwrap_or(i32::MAX);
    container_device_interface::spec::new_spec(&raw, &path.to_path_buf(), priority)
        .map_err(|e| format!("invalid CDI spec: {}", escape_message(&format!("{e:#}"), MAX_QUOTED)))?;
    let value = serde_json::to_value(&raw).map_err(|e| format!("cannot read it: {e}"))?;
    serde_json::from_value(value).map_err(|e| format!("cannot read it: {e}"))
}

/// The devices of a run, and the environment their specs set.
#[derive(Debug, Default)]
pub struct Resolved {
    /// What the runtime applies.
    pub devices: Devices,
    /// `NAME=value`, in order (the specs' values: the operator's).
    pub env: Vec<String>,
    /// What podman, which reads the specs itself, would do otherwise than
    /// ces: the device, and what.
    pub podman_problems: Vec<(String, String)>,
}

impl Resolved {
    /// Refuses the podman backend where it would apply what ces does not
    /// (a spec's mount without `ro`, a socket ces leaves out), or read specs
    /// from elsewhere than ces (`spec_dirs` other than podman's own).
    pub fn check_podman(&self, config: &GpuConfig) -> Result<(), DeviceError> {
        let Some(first) = self.devices.requested.first() else { return Ok(()) };
        let podman_dirs = [PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")];
        if config.spec_dirs != podman_dirs {
            let problem =
                "podman reads its specs from /etc/cdi and /var/run/cdi, and [gpu] spec_dirs names others".to_owned();
            return Err(DeviceError::Podman { device: first.name.clone(), problem });
        }
        match self.podman_problems.first() {
            Some((device, problem)) => Err(DeviceError::Podman { device: device.clone(), problem: problem.clone() }),
            None => Ok(()),
        }
    }
}

impl Resolved {
    /// Sets the devices' environment in `env` (replacing variables of the
    /// same name: a device's edits are applied last, as other runtimes do).
    pub fn apply_env(&self, env: &mut Vec<EnvVar>) {
        for var in &self.env {
            let (name, value) = var.split_once('=').unwrap_or((var.as_str(), ""));
            env.retain(|v| v.name != name);
            env.push(EnvVar::new(name, value));
        }
    }
}

/// The devices `request` names, each checked against the policy, and their
/// edits merged and checked. `user` is who asks (under sudo, the user who
/// ran it); `host_root` when that is root itself (the operator, who may use
/// every device); `groups` lists their groups, asked only when a rule needs it.
pub fn resolve(
    config: &GpuConfig,
    registry: &Registry,
    request: &Request,
    user: &ces_audit::User,
    host_root: bool,
    groups: &dyn Fn() -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Resolved> {
    if request.is_empty() {
        return Ok(Resolved::default());
    }
    if let Some(selector) = request.gpu.as_ref().filter(|s| !is_selector(s)) {
        return Err(DeviceError::BadSelector(Short::of(selector)).into());
    }
    if let Some(name) = request.devices.iter().find(|n| split_name(n).is_none()) {
        return Err(DeviceError::BadName(Short::of(name)).into());
    }
    if !config.enabled {
        return Err(DeviceError::Disabled.into());
    }
    let allowed = Allowed::new(config, user, host_root, groups)?;
    let mut names: Vec<String> = Vec::new();
    // One name per device: `0` and its `GPU-<uuid>` count once.
    let mut add = |name: String| {
        if !registry.aliases(&name).iter().any(|alias| names.iter().any(|n| n == alias)) {
            names.push(name);
        }
    };
    if let Some(selector) = &request.gpu {
        for part in selector.split(',') {
            for name in expand(registry, &config.kind, part, &allowed, user)? {
                add(name);
            }
        }
    }
    for name in &request.devices {
        let Some((kind, device)) = split_name(name) else {
            return Err(DeviceError::BadName(Short::of(name)).into());
        };
        for name in expand(registry, kind, device, &allowed, user)? {
            add(name);
        }
    }
    if let Some(max) = config.max_per_run
        && names.len() > max
    {
        return Err(DeviceError::TooMany { asked: names.len(), max }.into());
    }
    merge(registry, &names)
}

/// How many GPUs a run handed to a scheduler asks for (`--gpu` or `all`:
/// one; `--gpu=0,1`: two), checked against the same policy as a run here:
/// devices enabled, a rule that gives the user some GPU, `max_per_run`. The
/// scheduler picks the GPUs; the node's ces gives the container those.
pub fn scheduled_gpus(
    config: &GpuConfig,
    request: &Request,
    user: &ces_audit::User,
    host_root: bool,
    groups: &dyn Fn() -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<usize> {
    if let Some(name) = request.devices.first() {
        return Err(DeviceError::NotACount(Short::of(name)).into());
    }
    let Some(selector) = &request.gpu else { return Ok(0) };
    if !is_selector(selector) {
        return Err(DeviceError::BadSelector(Short::of(selector)).into());
    }
    let count = gpu_count(selector)?;
    if !config.enabled {
        return Err(DeviceError::Disabled.into());
    }
    let may = match Allowed::new(config, user, host_root, groups)? {
        Allowed::Everything => true,
        Allowed::Patterns(patterns) => {
            let any_gpu = format!("{}=x", config.kind);
            patterns.iter().any(|p| glob(p, &any_gpu) || p.starts_with(&format!("{}=", config.kind)))
        }
    };
    if !may {
        let user = escape_message(&user.name, MAX_QUOTED);
        return Err(DeviceError::Refused { user, device: format!("any {} device", config.kind) }.into());
    }
    if let Some(max) = config.max_per_run
        && count > max
    {
        return Err(DeviceError::TooMany { asked: count, max }.into());
    }
    Ok(count)
}

/// How many GPUs a `--gpu` selector asks a scheduler for: `--gpu` (`""`)
/// or `all`, one; a list of indexes, as many (named GPUs are refused: the
/// scheduler picks them).
pub fn gpu_count(selector: &str) -> Result<usize, DeviceError> {
    match selector {
        "" | "all" => Ok(1),
        list => match list.split(',').find(|part| part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit())) {
            Some(named) => Err(DeviceError::NotACount(Short::of(named))),
            None => Ok(list.split(',').count()),
        },
    }
}

/// `kind=device`'s fully qualified names: one, or for `all` every device of
/// the kind the user may use (`--gpu` alone, `--device kind=all`).
fn expand(
    registry: &Registry,
    kind: &str,
    device: &str,
    allowed: &Allowed,
    user: &ces_audit::User,
) -> anyhow::Result<Vec<String>> {
    if device == "all" {
        let all = registry.of_kind(kind);
        if all.is_empty() {
            return Err(DeviceError::NoneOfKind { kind: kind.to_owned(), broken: registry.broken() }.into());
        }
        let mine: Vec<String> =
            all.iter().filter(|name| allowed.may_use(registry, name)).map(|n| (*n).to_owned()).collect();
        if mine.is_empty() {
            let user = escape_message(&user.name, MAX_QUOTED);
            return Err(DeviceError::Refused { user, device: format!("any {kind} device") }.into());
        }
        return Ok(mine);
    }
    let mut name = format!("{kind}={device}");
    // nvidia-ctk's "type-index" names: gpu0, mig0:1.
    if !registry.devices.contains_key(&name) && !device.is_empty() {
        let prefix = if device.contains(':') { "mig" } else { "gpu" };
        let typed = format!("{kind}={prefix}{device}");
        if device.bytes().all(|b| b.is_ascii_digit() || b == b':') && registry.devices.contains_key(&typed) {
            name = typed;
        }
    }
    if !registry.devices.contains_key(&name) {
        return Err(DeviceError::NotFound { name: escape_message(&name, MAX_QUOTED), broken: registry.broken() }.into());
    }
    if !allowed.may_use(registry, &name) {
        return Err(DeviceError::Refused { user: escape_message(&user.name, MAX_QUOTED), device: name }.into());
    }
    Ok(vec![name])
}

/// `vendor/class=name`, split into kind and name, if it is one.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let (kind, device) = name.split_once('=')?;
    let (vendor, class) = kind.split_once('/')?;
    let word = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    (word(vendor, b"_.-") && word(class, b"_-") && word(device, b"_.-:")).then_some((kind, device))
}

/// Which of `names` the user may use (none while devices are disabled).
pub fn usable<'a>(
    config: &GpuConfig,
    registry: &'a Registry,
    user: &ces_audit::User,
    host_root: bool,
    groups: &dyn Fn() -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Vec<(&'a str, bool)>> {
    let allowed = if config.enabled { Some(Allowed::new(config, user, host_root, groups)?) } else { None };
    Ok(registry.names().map(|n| (n, allowed.as_ref().is_some_and(|a| a.may_use(registry, n)))).collect())
}

/// Which devices the user may use.
enum Allowed {
    Everything,
    Patterns(Vec<String>),
}

impl Allowed {
    fn new(
        config: &GpuConfig,
        user: &ces_audit::User,
        host_root: bool,
        groups: &dyn Fn() -> anyhow::Result<Vec<String>>,
    ) -> anyhow::Result<Allowed> {
        if host_root {
            return Ok(Allowed::Everything);
        }
        // Other kinds (a network adapter's, a disk's) only by a rule's name.
        let of_kind = || vec![format!("{}=*", config.kind)];
        if config.allow.is_empty() {
            return Ok(Allowed::Patterns(of_kind()));
        }
        if let crate::identity::Caller::Namespaced { .. } = crate::identity::caller() {
            return Err(DeviceError::UserNamespace.into());
        }
        let mut member_of: Option<Vec<String>> = None;
        let mut patterns = Vec::new();
        for rule in &config.allow {
            let listed = rule.users.iter().any(|u| *u == user.name || *u == user.uid.to_string());
            let in_group = !listed && !rule.groups.is_empty() && {
                if member_of.is_none() {
                    member_of = Some(groups().context("cannot check [[gpu.allow]] groups")?);
                }
                let member_of = member_of.as_deref().unwrap_or_default();
                rule.groups.iter().any(|g| member_of.contains(g))
            };
            if listed || in_group {
                patterns.extend(rule.devices.clone().unwrap_or_else(of_kind));
            }
        }
        Ok(Allowed::Patterns(patterns))
    }

    /// Whether a rule names the device, by any of its names.
    fn may_use(&self, registry: &Registry, name: &str) -> bool {
        match self {
            Allowed::Everything => true,
            Allowed::Patterns(patterns) => {
                registry.aliases(name).iter().any(|alias| patterns.iter().any(|p| glob(p, alias)))
            }
        }
    }
}

/// Whether `text` matches `pattern`, where `*` matches any characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(text) = text.strip_prefix(head) else { return false };
            (0..=text.len()).filter(|&i| text.is_char_boundary(i)).any(|i| glob(rest, &text[i..]))
        }
    }
}

/// The edits of `names` merged: each spec's own edits once, then each
/// device's, checked.
fn merge(registry: &Registry, names: &[String]) -> anyhow::Result<Resolved> {
    let mut devices = Devices::default();
    let mut specs_done: Vec<usize> = Vec::new();
    let mut env: Vec<String> = Vec::new();
    let mut podman_problems: Vec<(String, String)> = Vec::new();
    for name in names {
        let found = &registry.devices[name];
        let spec = &registry.specs[found.spec];
        devices.requested.push(RequestedDevice {
            name: name.clone(),
            uuid: registry.uuid_of(name),
            spec: spec.path.clone(),
        });
        let unusable =
            |problem: String| DeviceError::Unusable { device: name.clone(), spec: spec.path.clone(), problem };
        let mut apply = |edits: &Edits| -> Result<(), DeviceError> {
            check_edits(edits).map_err(unusable)?;
            for var in &edits.env {
                let key = var.split_once('=').map_or(var.as_str(), |(k, _)| k);
                env.retain(|v| v.split_once('=').map_or(v.as_str(), |(k, _)| k) != key);
                env.push(var.clone());
            }
            for node in &edits.device_nodes {
                if node.host_path.as_ref().is_some_and(|host| *host != node.path) {
                    let problem = format!(
                        "its spec puts the host's {} at {}, and podman 4 binds a node from its own path",
                        short(node.host_path.as_deref().unwrap_or_default()),
                        short(&node.path)
                    );
                    podman_problems.push((name.clone(), problem));
                }
                let node = host_node(node).map_err(unusable)?;
                match devices.nodes.iter().find(|n| n.path == node.path) {
                    Some(same) if *same == node => {}
                    Some(_) => return Err(unusable(format!("two devices put different nodes at {}", node.path))),
                    None => devices.nodes.push(node),
                }
            }
            for mount in &edits.mounts {
                if !mount.options.iter().any(|o| o == "ro") {
                    let problem =
                        format!("its spec mounts {} without ro, as podman would", short(&mount.container_path));
                    podman_problems.push((name.clone(), problem));
                }
                let Some(mount) = host_mount(mount).map_err(unusable)? else {
                    let problem = format!(
                        "its spec mounts a socket or FIFO (or a directory holding one) at {}, as podman would",
                        short(&mount.container_path)
                    );
                    podman_problems.push((name.clone(), problem));
                    let left_out =
                        format!("{} (a socket or FIFO, or a directory holding one)", short(&mount.container_path));
                    if !devices.left_out.contains(&left_out) {
                        devices.left_out.push(left_out);
                    }
                    continue;
                };
                match devices.mounts.iter().find(|m| m.container_path == mount.container_path) {
                    Some(same) if *same == mount => {}
                    Some(_) => {
                        return Err(unusable(format!("two devices mount different paths at {}", mount.container_path)));
                    }
                    None => devices.mounts.push(mount),
                }
            }
            for hook in &edits.hooks {
                let hook = DeviceHook {
                    stage: HookStage::CreateContainer,
                    // What was checked, not what the spec's path may lead
                    // to by the time the hook runs.
                    path: check_hook_program(&hook.path).map_err(unusable)?,
                    args: hook.args.clone(),
                    env: hook.env.clone(),
                    timeout: hook.timeout,
                };
                if !devices.hooks.contains(&hook) {
                    devices.hooks.push(hook);
                }
            }
            for gid in &edits.additional_gids {
                if *gid != 0 && !devices.additional_gids.contains(gid) {
                    devices.additional_gids.push(*gid);
                }
            }
            Ok(())
        };
        if !specs_done.contains(&found.spec) {
            specs_done.push(found.spec);
            apply(&spec.edits)?;
        }
        apply(&found.edits)?;
    }
    devices.env = env.iter().map(|v| v.split_once('=').map_or(v.clone(), |(k, _)| k.to_owned())).collect();
    Ok(Resolved { devices, env, podman_problems })
}

/// The directories of the TRE contract, which no device may cover.
const CONTRACT: [&str; 3] = ["/safe_data", "/safe_outputs", "/scratch"];

/// The `/dev` entries every container has, which no device may replace.
const STANDARD_DEV: [&str; 13] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/console",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/dev/net",
    "/dev/fd",
];

/// Checks what ces takes from a spec's edits (beyond the crate's validation).
fn check_edits(edits: &Edits) -> Result<(), String> {
    if !edits.net_devices.is_empty() {
        return Err("it moves network devices into the container, which ces never does".to_owned());
    }
    if edits.intel_rdt.is_some() {
        return Err("it sets Intel RDT, which ces does not support".to_owned());
    }
    for var in &edits.env {
        let name = var.split_once('=').map_or(var.as_str(), |(k, _)| k);
        if !ces_runtime::plan::is_env_name(name) {
            return Err(format!(
                "it sets an environment variable with an invalid name {:?}",
                escape_message(name, MAX_QUOTED)
            ));
        }
    }
    for node in &edits.device_nodes {
        let path = clean_path(&node.path)
            .ok_or_else(|| format!("device node path {:?} is not a clean absolute path", short(&node.path)))?;
        if !path.starts_with("/dev/") {
            return Err(format!("device node {:?} is not under /dev", short(&node.path)));
        }
        if STANDARD_DEV.iter().any(|d| path == *d || path.starts_with(&format!("{d}/"))) {
            return Err(format!("device node {path} would replace the container's own"));
        }
        if let Some(access) = &node.permissions
            && (access.is_empty() || !access.chars().all(|c| "rwm".contains(c)))
        {
            return Err(format!("device node {path} has permissions {:?} (r, w, m)", short(access)));
        }
    }
    for mount in &edits.mounts {
        if mount.kind.as_deref().is_some_and(|t| t != "bind") {
            return Err(format!(
                "mount type {:?} (ces binds host paths only)",
                short(mount.kind.as_deref().unwrap_or_default())
            ));
        }
        if !Path::new(&mount.host_path).is_absolute() {
            return Err(format!("mount source {:?} is not an absolute path", short(&mount.host_path)));
        }
        let path = clean_path(&mount.container_path)
            .ok_or_else(|| format!("mount path {:?} is not a clean absolute path", short(&mount.container_path)))?;
        let covers = |dir: &str| path == dir || dir.starts_with(&format!("{path}/")) || path == "/";
        let inside = |dir: &str| path.starts_with(&format!("{dir}/"));
        for dir in CONTRACT {
            if covers(dir) || inside(dir) {
                return Err(format!("it mounts {path}, over the TRE's {dir}"));
            }
        }
        for dir in ["/proc", "/sys", "/dev"] {
            if covers(dir) || inside(dir) {
                return Err(format!("it mounts {path}, over the container's {dir}"));
            }
        }
    }
    for hook in &edits.hooks {
        match hook.hook_name.as_str() {
            "createContainer" => drop(check_hook_program(&hook.path)?),
            "startContainer" => {
                return Err("it has a \"startContainer\" hook, which would run a program of the image before the \
                            workload's restrictions are in place (ces runs only createContainer hooks)"
                    .to_owned());
            }
            other => {
                return Err(format!(
                    "it has a {:?} hook, which would run outside the container's namespaces (ces runs only createContainer hooks)",
                    short(other)
                ));
            }
        }
    }
    if let Some(gid) = edits.additional_gids.iter().find(|g| **g >= 65_536) {
        return Err(format!("additional gid {gid} is outside the container's ids (0-65535)"));
    }
    Ok(())
}

/// A createContainer hook is a host program run in the container's
/// namespaces: it must be root's and written by root alone.
fn check_hook_program(path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("hook {:?} is not an absolute path", short(path)));
    }
    let (resolved, meta) = trusted_host_path(Path::new(path), "hook", true)?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return Err(format!("hook {:?} is not an executable file", short(path)));
    }
    Ok(resolved)
}

/// A mount's host path, resolved: root's, under directories only root can
/// change; `None` for a socket or a FIFO, which a read-only bind would still
/// let the container write to (a way to a host daemon or another user).
fn host_mount(mount: &MountEdit) -> Result<Option<DeviceMount>, String> {
    let (host_path, meta) = trusted_host_path(Path::new(&mount.host_path), "mount source", true)?;
    let kind = meta.file_type();
    if is_channel(&kind) || (kind.is_dir() && holds_a_channel(&host_path)?) {
        return Ok(None);
    }
    if !kind.is_file() && !kind.is_dir() {
        return Err(format!("its mount source {} is not a file or a directory", quote_path(&host_path)));
    }
    Ok(Some(DeviceMount { host_path, container_path: mount.container_path.clone() }))
}

/// A socket or a FIFO: what a read-only bind still lets a container write to.
fn is_channel(kind: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    kind.is_socket() || kind.is_fifo()
}

/// The most entries a directory mount may have for ces to look through.
const MAX_ENTRIES: usize = 10_000;

/// Whether a socket or FIFO is anywhere under `dir` (links not followed:
/// in the container they lead into the container's own tree).
fn holds_a_channel(dir: &Path) -> Result<bool, String> {
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", quote_path(&dir)))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", quote_path(&dir)))?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(format!(
                    "its mount source {} has more than {MAX_ENTRIES} entries to check",
                    quote_path(&dir)
                ));
            }
            let kind = entry.file_type().map_err(|e| format!("cannot read {}: {e}", quote_path(&entry.path())))?;
            if is_channel(&kind) {
                return Ok(true);
            }
            if kind.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(false)
}

/// A device node as its host has it: the host node (the spec's `hostPath`,
/// or its `path`) must be a device of the type and numbers the spec says.
fn host_node(node: &NodeEdit) -> Result<DeviceNode, String> {
    let (host_path, meta) =
        trusted_host_path(Path::new(node.host_path.as_deref().unwrap_or(&node.path)), "device node", false)?;
    use std::os::unix::fs::FileTypeExt as _;
    let kind = if meta.file_type().is_char_device() {
        DeviceType::Char
    } else if meta.file_type().is_block_device() {
        DeviceType::Block
    } else {
        return Err(format!("{} is not a device node", quote_path(&host_path)));
    };
    let (major, minor) = (i64::from(rustix::fs::major(meta.rdev())), i64::from(rustix::fs::minor(meta.rdev())));
    let says = |what: &str| {
        format!(
            "its spec says {} is {what}, but on this host it is {}",
            quote_path(&host_path),
            describe(kind, major, minor)
        )
    };
    match node.kind.as_deref() {
        None | Some("") => {}
        Some("c" | "u") if kind == DeviceType::Char => {}
        Some("b") if kind == DeviceType::Block => {}
        Some(other) => return Err(says(&format!("of type {:?}", short(other)))),
    }
    if node.major.is_some_and(|m| m != major) || node.minor.is_some_and(|m| m != minor) {
        return Err(says(&format!("{}:{}", node.major.unwrap_or(major), node.minor.unwrap_or(minor))));
    }
    Ok(DeviceNode {
        path: clean_path(&node.path).unwrap_or_else(|| node.path.clone()),
        host_path,
        kind,
        major,
        minor,
        file_mode: node.file_mode.unwrap_or(meta.mode()) & 0o777,
        access: node.permissions.clone().unwrap_or_else(|| "rwm".to_owned()),
    })
}

fn describe(kind: DeviceType, major: i64, minor: i64) -> String {
    let kind = match kind {
        DeviceType::Char => "a character device",
        DeviceType::Block => "a block device",
    };
    format!("{kind} {major}:{minor}")
}

/// `path` if it is absolute and has no `.`, `..` or empty component.
fn clean_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some("/".to_owned());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..").then(|| format!("/{rest}"))
}

fn short(text: &str) -> String {
    escape_message(text, MAX_QUOTED)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::GpuAllow;

    fn node(path: &str, host: &str) -> NodeEdit {
        NodeEdit {
            path: path.to_owned(),
            host_path: Some(host.to_owned()),
            kind: None,
            major: None,
            minor: None,
            file_mode: None,
            permissions: None,
        }
    }

    fn edits_with_node(path: &str, host: &str) -> Edits {
        Edits { device_nodes: vec![node(path, host)], ..Edits::default() }
    }

    /// A registry of `example.com/gpu` with GPUs 0 (also by UUID) and 1,
    /// `/dev/null` and `/dev/zero` standing for them, and a spec-wide node
    /// and variable.
    fn registry() -> Registry {
        let spec = SpecFile {
            path: PathBuf::from("/etc/cdi/example.yaml"),
            edits: Edits {
                env: vec!["DRIVER=1".to_owned()],
                device_nodes: vec![node("/dev/examplectl", "/dev/full")],
                ..Edits::default()
            },
        };
        let mut devices = BTreeMap::new();
        for (name, host) in [("0", "/dev/null"), ("GPU-1234-abcd", "/dev/null"), ("1", "/dev/zero")] {
            let path = if host == "/dev/null" { "/dev/example0" } else { "/dev/example1" };
            let found = Found {
                spec: 0,
                kind: "example.com/gpu".to_owned(),
                name: name.to_owned(),
                edits: edits_with_node(path, host),
            };
            devices.insert(format!("example.com/gpu={name}"), found);
        }
        let all = Edits {
            device_nodes: vec![node("/dev/example0", "/dev/null"), node("/dev/example1", "/dev/zero")],
            ..Edits::default()
        };
        let found = Found { spec: 0, kind: "example.com/gpu".to_owned(), name: "all".to_owned(), edits: all };
        devices.insert("example.com/gpu=all".to_owned(), found);
        Registry { specs: vec![spec], devices, problems: Vec::new() }
    }

    fn config(allow: Vec<GpuAllow>, max: Option<usize>) -> GpuConfig {
        GpuConfig { enabled: true, kind: "example.com/gpu".to_owned(), max_per_run: max, allow, ..GpuConfig::default() }
    }

    fn user() -> ces_audit::User {
        ces_audit::User { name: "alice".to_owned(), uid: 1234 }
    }

    fn resolve_as(config: &GpuConfig, request: Request, groups: &[&str]) -> anyhow::Result<Resolved> {
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        resolve(config, &registry(), &request, &user(), false, &|| Ok(groups.clone()))
    }

    fn gpu(selector: &str) -> Request {
        Request { gpu: Some(selector.to_owned()), devices: Vec::new() }
    }

    fn names(resolved: &Resolved) -> Vec<&str> {
        resolved.devices.requested.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn selectors_are_indexes_uuids_and_all() {
        for yes in ["0", "0,1", "all", "GPU-0c1ea5e0-0000-4000", "MIG-0c1ea5e0-1234", "1:0", "0,GPU-ab"] {
            assert!(is_selector(yes), "{yes}");
        }
        for no in ["", "busybox", "0;rm", "GPU-", "./x", "0,", "ghcr.io/a/b", "all,x", "1a"] {
            assert!(!is_selector(no), "{no}");
        }
    }

    #[test]
    fn cdi_names_and_patterns() {
        assert_eq!(split_name("nvidia.com/gpu=0"), Some(("nvidia.com/gpu", "0")));
        assert_eq!(split_name("example.com/gpu=GPU-1:2"), Some(("example.com/gpu", "GPU-1:2")));
        for bad in ["/dev/sda", "nvidia.com/gpu", "gpu=0", "nvidia.com/gpu=", "a/b=c d", "-a/b=c", "a/b.c=d"] {
            assert_eq!(split_name(bad), None, "{bad}");
        }
        assert!(glob("*", "nvidia.com/gpu=0"));
        assert!(glob("nvidia.com/gpu=*", "nvidia.com/gpu=10"));
        assert!(!glob("nvidia.com/gpu=*", "nvidia.com/gpux=1"));
        assert!(glob("nvidia.com/gpu=1*", "nvidia.com/gpu=12"));
        assert!(!glob("nvidia.com/gpu=1", "nvidia.com/gpu=12"));
        assert!(glob("*/gpu=0", "amd.com/gpu=0"));
    }

    #[test]
    fn clean_paths_only() {
        assert_eq!(clean_path("/dev/nvidia0").as_deref(), Some("/dev/nvidia0"));
        assert_eq!(clean_path("/usr/lib/").as_deref(), Some("/usr/lib"));
        assert_eq!(clean_path("/").as_deref(), Some("/"));
        for bad in ["dev/x", "/dev/../etc", "/dev//x", "/dev/./x", ""] {
            assert_eq!(clean_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn what_ces_does_not_take_from_a_spec() {
        let mount = |path: &str| Edits {
            mounts: vec![MountEdit {
                host_path: "/usr/lib/x".to_owned(),
                container_path: path.to_owned(),
                kind: None,
                options: Vec::new(),
            }],
            ..Edits::default()
        };
        let hook = |name: &str, path: &str| Edits {
            hooks: vec![HookEdit {
                hook_name: name.to_owned(),
                path: path.to_owned(),
                args: Vec::new(),
                env: Vec::new(),
                timeout: None,
            }],
            ..Edits::default()
        };
        let refused = [
            (Edits { net_devices: vec![serde_json::json!({})], ..Edits::default() }, "network devices"),
            (Edits { intel_rdt: Some(serde_json::json!({})), ..Edits::default() }, "Intel RDT"),
            (Edits { env: vec!["1BAD=x".to_owned()], ..Edits::default() }, "invalid name"),
            (edits_with_node("/etc/shadow", "/dev/null"), "not under /dev"),
            (edits_with_node("/dev/../etc/x", "/dev/null"), "clean absolute path"),
            (edits_with_node("/dev/pts/0", "/dev/null"), "container's own"),
            (edits_with_node("/dev/null", "/dev/zero"), "container's own"),
            (mount("/"), "over the TRE's /safe_data"),
            (mount("/safe_outputs"), "over the TRE's /safe_outputs"),
            (mount("/safe_data/x"), "over the TRE's /safe_data"),
            (mount("/proc/1"), "over the container's /proc"),
            (mount("/usr/../safe_data"), "clean absolute path"),
            (hook("prestart", "/bin/true"), "\"prestart\" hook"),
            (hook("createRuntime", "/bin/true"), "\"createRuntime\" hook"),
            (hook("poststop", "/bin/true"), "\"poststop\" hook"),
            (hook("createContainer", "bin/true"), "not an absolute path"),
            (hook("createContainer", "/nonexistent/hook"), "/nonexistent/hook"),
            (hook("startContainer", "/usr/bin/in-image"), "\"startContainer\" hook"),
            (Edits { additional_gids: vec![70_000], ..Edits::default() }, "outside the container's ids"),
        ];
        for (edits, why) in refused {
            let problem = check_edits(&edits).unwrap_err();
            assert!(problem.contains(why), "{why:?} not in {problem:?}");
        }
        let mut tmpfs = mount("/usr/lib/x");
        tmpfs.mounts[0].kind = Some("tmpfs".to_owned());
        assert!(check_edits(&tmpfs).unwrap_err().contains("binds host paths only"));
        let mut bad_access = edits_with_node("/dev/x", "/dev/null");
        bad_access.device_nodes[0].permissions = Some("rwx".to_owned());
        assert!(check_edits(&bad_access).unwrap_err().contains("permissions"));
        assert!(check_edits(&mount("/safe_data_x")).is_ok(), "a sibling of the TRE's directories");
    }

    #[test]
    fn host_paths_only_root_can_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, "x").unwrap();
        let mount = MountEdit {
            host_path: lib.display().to_string(),
            container_path: "/usr/lib/libx.so".to_owned(),
            kind: None,
            options: vec!["ro".to_owned()],
        };
        let e = host_mount(&mount).unwrap_err();
        assert!(e.contains("can be changed by users other than root"), "{e}");
        let e = host_mount(&MountEdit { host_path: "/nonexistent/lib".to_owned(), ..mount.clone() }).unwrap_err();
        assert!(e.contains("is not on this host"), "{e}");
        let etc = host_mount(&MountEdit { host_path: "/etc/hostname".to_owned(), ..mount.clone() }).unwrap();
        assert_eq!(etc.unwrap().host_path, Path::new("/etc/hostname"));
        let e = check_hook_program(&lib.display().to_string()).unwrap_err();
        assert!(e.contains("can be changed by users other than root"), "{e}");
        // Not even under a sticky directory such as /tmp.
        assert_eq!(dir.path().parent(), Some(std::env::temp_dir().as_path()));
        let resolved = |path: &str| resolve_root_alone(Path::new(path), true).map(|(p, _)| p);
        assert_eq!(resolved("/etc/../etc/./hostname").ok().as_deref(), Some(Path::new("/etc/hostname")));
        assert!(matches!(resolved("/nonexistent/x"), Err(Unsafe::Missing)));
        assert!(matches!(resolved("etc/hostname"), Err(Unsafe::Problem(_))));
        assert!(matches!(resolved("/etc/hostname/x"), Err(Unsafe::Problem(_))), "not a directory");
        assert!(resolve_root_alone(Path::new("/dev/null"), false).is_ok(), "a device's mode is who may use it");
    }

    #[test]
    fn a_gpu_word_is_a_value_only_where_clap_took_it_for_the_image() {
        let words = |s: &str| s.split(' ').map(std::ffi::OsString::from).collect::<Vec<_>>();
        let command = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let fixed = crate::run_options::gpu_word_as_value(
            &words("ces run --gpu 0 -e X=1 img sh"),
            Some(""),
            &command("0 -e X=1 img sh"),
        );
        assert_eq!(fixed, Some(words("ces run --gpu=0 -e X=1 img sh")));
        // Given with =, or no value: nothing to do.
        let given =
            crate::run_options::gpu_word_as_value(&words("ces run --gpu=0 img sh"), Some("0"), &command("img sh"));
        assert_eq!(given, None);
        // An image, then the container's own --gpu 0: left alone.
        let theirs = crate::run_options::gpu_word_as_value(
            &words("ces run --gpu img x --gpu 0 y"),
            Some(""),
            &command("img x --gpu 0 y"),
        );
        assert_eq!(theirs, None);
        // The selector is the last word: it is the image.
        assert_eq!(crate::run_options::gpu_word_as_value(&words("ces run --gpu 0"), Some(""), &command("0")), None);
    }

    #[test]
    fn nodes_are_checked_against_the_host() {
        let null = host_node(&node("/dev/example0", "/dev/null")).unwrap();
        assert_eq!((null.kind, null.major, null.minor, null.access.as_str()), (DeviceType::Char, 1, 3, "rwm"));
        assert_eq!(null.host_path, Path::new("/dev/null"));
        let mut wrong = node("/dev/example0", "/dev/null");
        wrong.major = Some(195);
        assert!(host_node(&wrong).unwrap_err().contains("its spec says /dev/null is 195:3"));
        let mut block = node("/dev/example0", "/dev/null");
        block.kind = Some("b".to_owned());
        assert!(host_node(&block).unwrap_err().contains("of type"));
        assert!(host_node(&node("/dev/example0", "/nonexistent/nvidia0")).unwrap_err().contains("not on this host"));
        assert!(host_node(&node("/dev/example0", "/etc/hostname")).unwrap_err().contains("not a device node"));
        let mut moded = node("/dev/example0", "/dev/null");
        moded.file_mode = Some(0o4660);
        assert_eq!(host_node(&moded).unwrap().file_mode, 0o660, "no set-id bits");
    }

    #[test]
    fn one_name_per_gpu_and_its_uuid() {
        let registry = registry();
        assert_eq!(registry.of_kind("example.com/gpu"), ["example.com/gpu=0", "example.com/gpu=1"]);
        assert_eq!(registry.uuid_of("example.com/gpu=0").as_deref(), Some("GPU-1234-abcd"));
        assert_eq!(registry.uuid_of("example.com/gpu=GPU-1234-abcd").as_deref(), Some("GPU-1234-abcd"));
        assert_eq!(registry.uuid_of("example.com/gpu=1"), None);
        assert!(registry.of_kind("nvidia.com/gpu").is_empty());
    }

    #[test]
    fn requests_merge_the_specs_edits_once() {
        let open = config(Vec::new(), None);
        let all = resolve_as(&open, gpu("all"), &[]).unwrap();
        assert_eq!(names(&all), ["example.com/gpu=0", "example.com/gpu=1"]);
        let paths: Vec<&str> = all.devices.nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["/dev/examplectl", "/dev/example0", "/dev/example1"]);
        assert_eq!(all.env, ["DRIVER=1"]);
        assert_eq!(all.devices.env, ["DRIVER"]);
        // By index and UUID at once: one device, counted once.
        let capped = config(Vec::new(), Some(1));
        let both = resolve_as(&capped, gpu("0,GPU-1234-abcd"), &[]).unwrap();
        assert_eq!(names(&both), ["example.com/gpu=0"]);
        assert_eq!(both.devices.nodes.len(), 2);
        assert_eq!(both.devices.requested[0].uuid.as_deref(), Some("GPU-1234-abcd"));
        // --device kind=all is every device of the kind, as --gpu.
        let by_name = Request { gpu: None, devices: vec!["example.com/gpu=all".to_owned()] };
        assert_eq!(names(&resolve_as(&open, by_name, &[]).unwrap()), ["example.com/gpu=0", "example.com/gpu=1"]);
        let mut env = vec![EnvVar::new("DRIVER", "image's"), EnvVar::new("OTHER", "x")];
        all.apply_env(&mut env);
        let env: Vec<String> = env.iter().map(EnvVar::to_env_string).collect();
        assert_eq!(env, ["OTHER=x", "DRIVER=1"], "the spec's value replaces the image's");
    }

    #[test]
    fn a_scheduler_is_asked_for_a_count_under_the_same_policy() {
        let none = || Ok(Vec::new());
        let count = |config: &GpuConfig, gpu: Option<&str>, devices: &[&str]| {
            let request =
                Request { gpu: gpu.map(str::to_owned), devices: devices.iter().map(|d| (*d).to_owned()).collect() };
            scheduled_gpus(config, &request, &user(), false, &none)
        };
        let open = config(Vec::new(), Some(2));
        assert_eq!(count(&open, None, &[]).unwrap(), 0);
        assert_eq!(count(&open, Some("all"), &[]).unwrap(), 1);
        assert_eq!(count(&open, Some("0,1"), &[]).unwrap(), 2);
        assert_eq!(gpu_count("").unwrap(), 1, "--gpu alone, as a job file keeps it");
        assert!(matches!(gpu_count("0,,1"), Err(DeviceError::NotACount(_))));
        let e = count(&open, Some("0,1,2"), &[]).unwrap_err();
        assert!(matches!(e.downcast_ref(), Some(DeviceError::TooMany { asked: 3, max: 2 })), "{e}");
        for (gpu, devices) in [(Some("GPU-1234-abcd"), &[][..]), (None, &["example.com/gpu=0"][..])] {
            let e = count(&open, gpu, devices).unwrap_err();
            assert!(matches!(e.downcast_ref(), Some(DeviceError::NotACount(_))), "{e}");
        }
        let e = count(&GpuConfig { enabled: false, ..open.clone() }, Some("all"), &[]).unwrap_err();
        assert!(matches!(e.downcast_ref(), Some(DeviceError::Disabled)), "{e}");
        let rule = |users: &[&str], devices: &[&str]| GpuAllow {
            users: users.iter().map(|s| (*s).to_owned()).collect(),
            groups: Vec::new(),
            devices: Some(devices.iter().map(|s| (*s).to_owned()).collect()),
        };
        // A rule that gives alice one GPU gives her a GPU of the scheduler's.
        assert_eq!(count(&config(vec![rule(&["alice"], &["example.com/gpu=1"])], None), Some("all"), &[]).unwrap(), 1);
        for refused in [rule(&["bob"], &["*"]), rule(&["alice"], &["example.com/nic=*"])] {
            let e = count(&config(vec![refused], None), Some("all"), &[]).unwrap_err();
            assert!(matches!(e.downcast_ref(), Some(DeviceError::Refused { .. })), "{e}");
        }
    }

    #[test]
    fn the_policy_and_its_refusals() {
        let disabled = GpuConfig { enabled: false, ..config(Vec::new(), None) };
        let e = resolve_as(&disabled, gpu("0"), &[]).unwrap_err();
        assert!(matches!(e.downcast_ref(), Some(DeviceError::Disabled)), "{e}");
        assert!(resolve_as(&disabled, Request::default(), &[]).unwrap().devices.is_empty(), "nothing asked");

        let rule = |users: &[&str], groups: &[&str], devices: &[&str]| GpuAllow {
            users: users.iter().map(|s| (*s).to_owned()).collect(),
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            devices: Some(devices.iter().map(|s| (*s).to_owned()).collect()),
        };
        let only_one = config(vec![rule(&[], &["ml"], &["example.com/gpu=1"]), rule(&["bob"], &[], &["*"])], None);
        let e = resolve_as(&only_one, gpu("0"), &["ml"]).unwrap_err();
        assert_eq!(e.to_string(), "user alice may not use example.com/gpu=0 on this host");
        assert_eq!(names(&resolve_as(&only_one, gpu("all"), &["ml"]).unwrap()), ["example.com/gpu=1"]);
        let e = resolve_as(&only_one, gpu("all"), &["other"]).unwrap_err();
        assert_eq!(e.to_string(), "user alice may not use any example.com/gpu device on this host");
        let by_uid = config(vec![rule(&["1234"], &[], &["example.com/gpu=*"])], None);
        assert_eq!(names(&resolve_as(&by_uid, gpu("0"), &[]).unwrap()), ["example.com/gpu=0"]);
        // A rule may name a GPU by its UUID: --gpu (all) finds it by its index name.
        let by_uuid = config(vec![rule(&["alice"], &[], &["example.com/gpu=GPU-1234-abcd"])], None);
        assert_eq!(names(&resolve_as(&by_uuid, gpu("all"), &[]).unwrap()), ["example.com/gpu=0"]);
        // Without rules, only the devices of [gpu] kind; other kinds by a rule.
        let mut with_nic = registry();
        let nic = Found {
            spec: 0,
            kind: "example.com/nic".to_owned(),
            name: "0".to_owned(),
            edits: edits_with_node("/dev/examplenic", "/dev/zero"),
        };
        with_nic.devices.insert("example.com/nic=0".to_owned(), nic);
        let nic_request = Request { gpu: None, devices: vec!["example.com/nic=0".to_owned()] };
        let none = || Ok(Vec::new());
        let e = resolve(&config(Vec::new(), None), &with_nic, &nic_request, &user(), false, &none).unwrap_err();
        assert_eq!(e.to_string(), "user alice may not use example.com/nic=0 on this host");
        let nic_rule = config(vec![rule(&["alice"], &[], &["example.com/nic=*"])], None);
        assert!(resolve(&nic_rule, &with_nic, &nic_request, &user(), false, &none).is_ok());
        let default_devices = GpuAllow { devices: None, ..rule(&["alice"], &[], &[]) };
        let e = resolve(&config(vec![default_devices], None), &with_nic, &nic_request, &user(), false, &none);
        assert!(matches!(e.unwrap_err().downcast_ref(), Some(DeviceError::Refused { .. })));
        assert!(resolve(&config(Vec::new(), None), &with_nic, &nic_request, &user(), true, &none).is_ok(), "root");

        let capped = config(Vec::new(), Some(1));
        let e = resolve_as(&capped, gpu("all"), &[]).unwrap_err();
        assert_eq!(e.to_string(), "2 devices asked for, and this host allows at most 1 per run");
        let e = resolve_as(&capped, Request { gpu: Some("0".into()), devices: vec!["example.com/gpu=1".into()] }, &[]);
        assert!(matches!(e.unwrap_err().downcast_ref(), Some(DeviceError::TooMany { asked: 2, max: 1 })));

        let open = config(Vec::new(), None);
        let e = resolve_as(&open, gpu("7"), &[]).unwrap_err();
        assert_eq!(e.to_string(), "no CDI device example.com/gpu=7 on this host");
        let e = resolve_as(&open, gpu("x;y"), &[]).unwrap_err();
        assert!(matches!(e.downcast_ref(), Some(DeviceError::BadSelector(_))), "{e}");
        let e = resolve_as(&open, Request { gpu: None, devices: vec!["/dev/sda".into()] }, &[]).unwrap_err();
        assert!(matches!(e.downcast_ref(), Some(DeviceError::BadName(_))), "{e}");
        let other = GpuConfig { kind: "nvidia.com/gpu".to_owned(), ..open };
        let e = resolve_as(&other, gpu("all"), &[]).unwrap_err();
        assert_eq!(e.to_string(), "no nvidia.com/gpu device on this host");
    }
}
