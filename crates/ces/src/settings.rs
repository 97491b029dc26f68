//! Settings: the config file (`--config`, else `$CES_CONFIG`, else
//! `/etc/ces/config.toml`) merged with the command line, resolved once here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The system-wide config file.
pub const SYSTEM_CONFIG: &str = "/etc/ces/config.toml";

/// The config file, as written (see docs/config.md).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[registries]`.
    #[serde(default)]
    pub registries: RegistriesConfig,
    /// `[storage]`.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[tre]`.
    #[serde(default)]
    pub tre: TreConfig,
    /// `[policy]`.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[pull]`.
    #[serde(default)]
    pub pull: PullConfig,
    /// `[audit]`.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[outputs]`.
    #[serde(default)]
    pub outputs: OutputsConfig,
    /// `[run]`.
    #[serde(default)]
    pub run: RunConfig,
    /// `[podman]`.
    #[serde(default)]
    pub podman: PodmanConfig,
    /// `[gpu]`: devices through CDI specs.
    #[serde(default)]
    pub gpu: GpuConfig,
    /// `[slurm]`: the Slurm backend.
    #[serde(default)]
    pub slurm: SlurmConfig,
    /// `[k8s]`: the Kubernetes backend.
    #[serde(default)]
    pub k8s: K8sConfig,
}

/// `[k8s]`: how `--runtime k8s` turns a run into a Job (see
/// docs/cluster.md). Names may hold `{project}`, `{user}` and `{namespace}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct K8sConfig {
    /// The namespace runs go to.
    pub namespace: String,
    /// The Kueue queue (the value of `queue_label`); empty for none.
    pub queue: String,
    /// The label that names the queue.
    pub queue_label: String,
    /// The registry the cluster pulls from (`host[:port][/prefix]`): the
    /// image's repository under it, by digest [default: the image's own].
    pub registry: Option<String>,
    /// The claim mounted read-only at `/safe_data`.
    pub data_claim: String,
    /// The claim whose `outputs_<run id>` directory is `/safe_outputs`.
    pub outputs_claim: String,
    /// `ttlSecondsAfterFinished`.
    pub ttl_seconds_after_finished: u32,
    /// `activeDeadlineSeconds` when the run has no `--time-limit`.
    pub active_deadline_seconds: u64,
    /// `backoffLimit`.
    pub backoff_limit: u32,
    /// The resource a GPU is.
    pub gpu_resource: String,
    /// The pods' `nodeSelector`.
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Whether ces makes a deny-all NetworkPolicy for each run's pods (off
    /// where the namespace's own deny, which users may not change, is the
    /// guarantee and users may not create policies: see docs/cluster.md).
    pub network_policy: bool,
    /// The kubectl to run [default: kubectl from the system's directories].
    #[serde(deserialize_with = "absolute_path")]
    pub kubectl: Option<PathBuf>,
    /// The kubeconfig context to use [default: the user's current one].
    pub context: Option<String>,
}

impl Default for K8sConfig {
    fn default() -> Self {
        K8sConfig {
            namespace: "{project}".to_owned(),
            queue: "{namespace}-user-queue".to_owned(),
            queue_label: "kueue.x-k8s.io/queue-name".to_owned(),
            registry: None,
            data_claim: "{project}-safe-data".to_owned(),
            outputs_claim: "{user}-outputs".to_owned(),
            ttl_seconds_after_finished: 604_800,
            active_deadline_seconds: 432_000,
            backoff_limit: 0,
            gpu_resource: "nvidia.com/gpu".to_owned(),
            node_selector: std::collections::BTreeMap::new(),
            network_policy: true,
            kubectl: None,
            context: None,
        }
    }
}

/// `[slurm]`: where `--runtime slurm` sends runs (see docs/cluster.md).
/// Partition, account and QOS are the operator's, never the user's.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// `sbatch --partition`.
    pub partition: Option<String>,
    /// `sbatch --account`.
    pub account: Option<String>,
    /// `sbatch --qos`.
    pub qos: Option<String>,
    /// The generic resource a GPU is (`--gres=<gres>:N` for `--gpu`; a
    /// type may follow: `gpu:a100`).
    #[serde(default = "default_gres")]
    pub gres: String,
    /// The most tasks one `--array` may have.
    #[serde(default = "default_max_array_tasks")]
    pub max_array_tasks: usize,
    /// The ces the nodes run (the same build, on a file system they share
    /// with this host) [default: this ces].
    #[serde(default, deserialize_with = "absolute_path")]
    pub ces: Option<PathBuf>,
}

fn default_gres() -> String {
    "gpu".to_owned()
}

fn default_max_array_tasks() -> usize {
    1000
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: None,
            account: None,
            qos: None,
            gres: default_gres(),
            max_array_tasks: default_max_array_tasks(),
            ces: None,
        }
    }
}

/// `[gpu]`: GPUs (and other devices) through CDI specs (see docs/gpu.md).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// Whether runs may have devices at all (off by default).
    #[serde(default)]
    pub enabled: bool,
    /// Where CDI specs are read from, in increasing priority (a device
    /// named in a later directory replaces one of the same name in an
    /// earlier one). Each must be root's and written by root alone.
    #[serde(default = "default_cdi_dirs", deserialize_with = "absolute_paths")]
    pub spec_dirs: Vec<PathBuf>,
    /// The CDI kind `--gpu` means.
    #[serde(default = "default_gpu_kind")]
    pub kind: String,
    /// The most devices one run may have.
    #[serde(default)]
    pub max_per_run: Option<usize>,
    /// Who may use which devices; with none, every user may use every
    /// device of `kind` (once `enabled`).
    #[serde(default)]
    pub allow: Vec<GpuAllow>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            enabled: false,
            spec_dirs: default_cdi_dirs(),
            kind: default_gpu_kind(),
            max_per_run: None,
            allow: Vec::new(),
        }
    }
}

/// One `[[gpu.allow]]` rule: these users, and the members of these groups,
/// may use the devices whose fully qualified names match these patterns
/// (`*` matches any characters: `nvidia.com/gpu=*`; by default every
/// device of `[gpu] kind`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuAllow {
    /// User names or numeric uids.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Device patterns [default: every device of `[gpu] kind`].
    #[serde(default)]
    pub devices: Option<Vec<String>>,
}

fn default_cdi_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
}

fn default_gpu_kind() -> String {
    "nvidia.com/gpu".to_owned()
}

fn absolute_paths<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<PathBuf>, D::Error> {
    let paths = <Vec<PathBuf> as serde::Deserialize>::deserialize(deserializer)?;
    match paths.iter().find(|p| !p.is_absolute()) {
        Some(path) => Err(serde::de::Error::custom(format!(
            "{:?} is not an absolute path (it must start with /)",
            ces_image::quote::quote_path(path)
        ))),
        None => Ok(paths),
    }
}

/// `[podman]`: the podman backend (see docs/config.md).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodmanConfig {
    /// Whether root may run podman for itself (no `SUDO_UID`): its container's
    /// root is then host root (podman maps it so), which the native runtime
    /// never allows. Off: refused.
    #[serde(default)]
    pub allow_host_root: bool,
}

/// `[run]`: what `ces run` may add to the TRE contract (see docs/config.md).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Directories under which a user may bind a directory of their own
    /// (`-v`, `--mount type=bind`): absolute paths, or `$HOME` (the
    /// invoking user's home, from the user database under sudo) and paths
    /// under it. Empty: no bind mounts.
    #[serde(default)]
    pub bind_roots: Vec<String>,
    /// Host addresses other than loopback that `-p` may listen on (e.g.
    /// `0.0.0.0`). Empty: loopback only.
    #[serde(default)]
    pub publish_addresses: Vec<std::net::IpAddr>,
    /// The longest `--time-limit` a run may ask for; a run that asks for
    /// none gets this one.
    #[serde(default, deserialize_with = "duration")]
    pub max_time_limit: Option<std::time::Duration>,
    /// Root mode (ces run by root for itself): the first of the 65536 host
    /// ids a container's ids are, a block no host user or other program
    /// uses [default: 1879048192, `0x70000000`].
    #[serde(default, deserialize_with = "root_id_base")]
    pub root_id_base: Option<u32>,
    /// The most a root-mode or sudo run may write to the container's own
    /// filesystem (outside its mounts), as `--shm-size` sizes are written
    /// (`"8g"`): that layer is then a tmpfs of this size, counted in the
    /// run's memory. None: unlimited, on the store's file system.
    #[serde(default, deserialize_with = "size")]
    pub max_rootfs_writes: Option<u64>,
}

/// A size as `--shm-size` takes it (`512m`, `8g`).
fn size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    ces_runtime::plan::parse_size("max_rootfs_writes", &text).map(Some).map_err(serde::de::Error::custom)
}

/// `[run] root_id_base`: a block that holds neither host root nor the ids of
/// the usual users, nor `-1`.
fn root_id_base<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let base = <u32 as serde::Deserialize>::deserialize(deserializer)?;
    if ces_runtime::native::idmap::valid_base(base) {
        Ok(Some(base))
    } else {
        Err(serde::de::Error::custom(format!(
            "{base}..{} cannot be root mode's ids: the block of 65536 must start at 65536 or above and end below 4294967295",
            u64::from(base) + 65_536
        )))
    }
}

/// A duration as `--time-limit` takes it (`90s`, `30m`, `6h`, `1h30m`).
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<std::time::Duration>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    crate::time_limit::parse(&text).map(Some).map_err(serde::de::Error::custom)
}

/// `[outputs]`: how much the seal of a run's outputs hashes at most (see
/// docs/governance.md); files beyond it are listed without a sha256.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// Bytes hashed, all files together [default: 64 GiB].
    pub hash_budget_bytes: Option<u64>,
    /// Seconds spent hashing [default: 300].
    pub hash_budget_seconds: Option<u64>,
}

impl OutputsConfig {
    /// The budget, with the defaults where the config names none.
    pub fn budget(&self) -> ces_outputs::Budget {
        let default = ces_outputs::Budget::default();
        ces_outputs::Budget {
            bytes: self.hash_budget_bytes.unwrap_or(default.bytes),
            time: self.hash_budget_seconds.map_or(default.time, std::time::Duration::from_secs),
        }
    }
}

/// `[audit]`: the audit log (see docs/governance.md).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The log file [default: `<storage root>/audit.jsonl`]; absolute.
    #[serde(default, deserialize_with = "absolute_path")]
    pub path: Option<PathBuf>,
    /// Also send each record to syslog (journald).
    #[serde(default)]
    pub syslog: bool,
}

/// `[policy]`: what the operator allows users to change.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Whether users other than root of the host (not root in a user
    /// namespace: see [`crate::identity`]) may replace this (system) config with
    /// their own (`--config`, `$CES_CONFIG`). Off: the system config is the
    /// TRE's policy, and a user's file must not widen it.
    #[serde(default)]
    pub allow_user_config: bool,
    /// Only references pinned by digest (`name@sha256:...`) may be pulled or run.
    #[serde(default)]
    pub require_digest: bool,
    /// Images without an `org.opencontainers.image.source` label are
    /// refused, at pull and at run.
    #[serde(default)]
    pub require_source_label: bool,
}

/// `[pull]`: who may pull (IG enables accounts one by one). With neither
/// list set, everyone may; with either set, only the users listed and the
/// members of the groups listed (and root, the operator).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// User names (or numeric uids) enabled to pull.
    pub allowed_users: Option<Vec<String>>,
    /// Groups whose members are enabled to pull.
    pub allowed_groups: Option<Vec<String>>,
}

impl PullConfig {
    /// Whether pulls are open to everyone (neither list set).
    pub fn open(&self) -> bool {
        self.allowed_users.is_none() && self.allowed_groups.is_none()
    }
}

/// A user asked for another config where the system config is the policy.
#[derive(Debug, thiserror::Error)]
#[error("{} is this machine's policy: only root may use another config ({})", system.display(), asked.display())]
pub struct UserConfigRefused {
    /// The system config.
    pub system: PathBuf,
    /// The config asked for.
    pub asked: PathBuf,
}

/// A user under sudo asked for another config: root acts for them, and the
/// config says where root writes (the audit log, the store) and what it
/// trusts (registries, `[tre]` directories), so only the system's is read.
#[derive(Debug, thiserror::Error)]
#[error("ces runs as root through sudo: {} is the only config it reads, not {}", system.display(), asked.display())]
pub struct SudoConfigRefused {
    /// The system config.
    pub system: PathBuf,
    /// The config asked for (`--config`, `$CES_CONFIG`).
    pub asked: PathBuf,
}

/// Who reads the config, as far as the choice of config goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// Root of the host, for itself: may read any config.
    Root,
    /// Root of the host through sudo, for a user: the system config only.
    Sudo,
    /// Anyone else: another config only where the system's allows it.
    User,
}

/// `[registries]`: where images may come from.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Registries that may be pulled from (`host[:port]`).
    #[serde(default = "default_allowed")]
    pub allowed: Vec<String>,
    /// Of those, the ones reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// The TRE's pull proxy (`ces proxy`), `http[s]://host[:port]`: every
    /// pull goes through it (the image keeps its registry's name).
    #[serde(default, deserialize_with = "mirror_url")]
    pub mirror: Option<String>,
}

impl Default for RegistriesConfig {
    fn default() -> Self {
        RegistriesConfig { allowed: default_allowed(), insecure: Vec::new(), mirror: None }
    }
}

fn mirror_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    let rest = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://"));
    let host = rest.map(|r| r.trim_end_matches('/'));
    match host {
        Some(host) if !host.is_empty() && !host.contains(['/', '@', '?', '#', ' ']) => {
            Ok(Some(text.trim_end_matches('/').to_owned()))
        }
        _ => Err(serde::de::Error::custom(format!(
            "{:?} is not a proxy address: http[s]://host[:port], nothing after",
            ces_image::quote::escape_message(&text, 100)
        ))),
    }
}

fn default_allowed() -> Vec<String> {
    vec!["ghcr.io".to_owned()]
}

/// `[storage]`: where the image store lives.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The store root, absolute; a per-user default when not set.
    #[serde(default, deserialize_with = "absolute_path")]
    pub root: Option<PathBuf>,
    /// The most an image may weigh to download, in bytes (config and
    /// layers, compressed, as its manifest says); no limit when not set.
    pub max_image_size: Option<u64>,
    /// Whether a layer's compressed blob is kept once the layer is unpacked
    /// (default true): see docs/config.md.
    pub keep_layer_blobs: Option<bool>,
    /// Whether an image is kept as its layers, mounted as an overlay's lower
    /// layers at run time (default true), rather than as an assembled tree.
    pub layered_rootfs: Option<bool>,
}

/// `[tre]`: the directory contract of `ces run` (see docs/config.md).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreConfig {
    /// Where the project data directories live: `<safe_data_root>/<project>`.
    #[serde(default = "default_safe_data_root")]
    pub safe_data_root: PathBuf,
    /// The project, when the operator names it (else inferred from groups).
    pub project: Option<String>,
    /// Groups named `<group_prefix>-<project>` mean `<project>`; without it,
    /// any `<word>-<project>` group does.
    pub group_prefix: Option<String>,
    /// How `/safe_data` is mounted unless a project says otherwise.
    #[serde(default)]
    pub safe_data_mode: SafeDataMode,
    /// Where `outputs_<id>` directories are created [default: `$HOME`].
    pub outputs_parent: Option<PathBuf>,
    /// Where `scratch_<id>` directories are created [default: `$HOME`].
    pub scratch_parent: Option<PathBuf>,
    /// `[tre.projects.<name>]`: per-project policy.
    #[serde(default)]
    pub projects: BTreeMap<String, ProjectConfig>,
}

impl Default for TreConfig {
    fn default() -> Self {
        TreConfig {
            safe_data_root: default_safe_data_root(),
            project: None,
            group_prefix: None,
            safe_data_mode: SafeDataMode::default(),
            outputs_parent: None,
            scratch_parent: None,
            projects: BTreeMap::new(),
        }
    }
}

impl TreConfig {
    /// The `/safe_data` mode for `project` (its override, else the default).
    pub fn safe_data_mode(&self, project: Option<&str>) -> SafeDataMode {
        project.and_then(|p| self.projects.get(p)).and_then(|p| p.safe_data_mode).unwrap_or(self.safe_data_mode)
    }
}

/// A path that must be absolute: an empty or relative `[storage] root` or
/// `[audit] path` would put the store or the audit log in whatever directory
/// ces happens to be started from.
fn absolute_path<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    let path = <PathBuf as serde::Deserialize>::deserialize(deserializer)?;
    if path.is_absolute() {
        Ok(Some(path))
    } else {
        Err(serde::de::Error::custom(format!(
            "{:?} is not an absolute path (it must start with /)",
            ces_image::quote::quote_path(&path)
        )))
    }
}

fn default_safe_data_root() -> PathBuf {
    PathBuf::from("/safe_data")
}

/// `[tre.projects.<name>]`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// This project's `/safe_data` mode (as its IG approval says).
    pub safe_data_mode: Option<SafeDataMode>,
}

/// Read-only or read-write `/safe_data`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafeDataMode {
    /// Read-only (the default).
    #[default]
    Ro,
    /// Read-write.
    Rw,
}

/// Everything a command needs to know, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file read, if any.
    pub config_path: Option<PathBuf>,
    /// The registry policy.
    pub registries: RegistriesConfig,
    /// The store root.
    pub storage_root: PathBuf,
    /// `[storage] max_image_size`: the most an image may weigh to download.
    pub max_image_size: Option<u64>,
    /// `[storage] keep_layer_blobs`: layer blobs kept once unpacked.
    pub keep_layer_blobs: bool,
    /// `[storage] layered_rootfs`: images kept as their layers.
    pub layered_rootfs: bool,
    /// The directory contract of `ces run`.
    pub tre: TreConfig,
    /// The audit log every pull, load and run appends to.
    pub audit_path: PathBuf,
    /// Whether records are also sent to syslog.
    pub audit_syslog: bool,
    /// The image policy (digest pinning, source label).
    pub policy: PolicyConfig,
    /// Who may pull.
    pub pull: PullConfig,
    /// The seal's hashing budget (`[outputs]`).
    pub outputs: ces_outputs::Budget,
    /// `[run]`: bind roots, the longest time limit.
    pub run: RunConfig,
    /// `[podman]`: the podman backend.
    pub podman: PodmanConfig,
    /// `[gpu]`: devices through CDI specs.
    pub gpu: GpuConfig,
    /// `[slurm]`: the Slurm backend.
    pub slurm: SlurmConfig,
    /// `[k8s]`: the Kubernetes backend.
    pub k8s: K8sConfig,
}

/// A config file error, with the place it is about.
#[derive(Debug, thiserror::Error)]
#[error("invalid config {}{}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default(), key.as_ref().map(|k| format!(", key {k}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The dotted key, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Settings {
    /// The image store, with the limits and the blob policy of `[storage]`,
    /// acting for the user the audit records (under sudo, the one who ran
    /// it): whose loads its names resolve to ([`ces_image::Store::acting_for`]).
    pub fn store(&self) -> Result<ces_image::Store, ces_image::StoreError> {
        // (A `SUDO_UID` that does not say who was refused when the settings
        // were read; should it fail here, no one's loads resolve.)
        let user = crate::identity::policy_uid().unwrap_or(crate::identity::UNKNOWN_UID);
        Ok(ces_image::Store::open(&self.storage_root)?
            .with_max_unpacked(self.max_image_size)
            .with_layer_blobs(self.keep_layer_blobs)
            .with_layered(self.layered_rootfs)
            .acting_for(user))
    }

    /// Reads the config: `explicit` (from `--config` or `$CES_CONFIG`) must
    /// exist; the system file is used only if present.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Settings> {
        let reader = match crate::identity::sudo_user()? {
            Some(_) => Reader::Sudo,
            None if crate::identity::is_host_root() => Reader::Root,
            None => Reader::User,
        };
        Settings::load_as(explicit, Path::new(SYSTEM_CONFIG), reader)
    }

    /// [`Settings::load`] with the system config's path and the caller's
    /// privilege given (a seam for tests).
    #[cfg(test)]
    pub(crate) fn load_with(explicit: Option<&Path>, system: &Path, root: bool) -> anyhow::Result<Settings> {
        Settings::load_as(explicit, system, if root { Reader::Root } else { Reader::User })
    }

    /// [`Settings::load`] for `reader`.
    pub(crate) fn load_as(explicit: Option<&Path>, system: &Path, reader: Reader) -> anyhow::Result<Settings> {
        // Under sudo, only the system config's own name is taken (and the
        // system path is what is read): not a link of the user's to it, which
        // they could point elsewhere between a check and the read.
        let explicit = match explicit {
            Some(asked) if reader == Reader::Sudo && asked != system => {
                return Err(SudoConfigRefused { system: system.to_owned(), asked: asked.to_owned() }.into());
            }
            Some(_) if reader == Reader::Sudo => Some(system),
            other => other,
        };
        let replaces_policy = |asked: &&Path| reader == Reader::User && *asked != system && system.exists();
        if let Some(asked) = explicit.filter(replaces_policy) {
            // Read only to learn whether users may bring their own config.
            let allowed = read_config(system)?.policy.allow_user_config;
            anyhow::ensure!(allowed, UserConfigRefused { system: system.to_owned(), asked: asked.to_owned() });
        }
        let (path, config) = match explicit {
            Some(path) => (Some(path.to_owned()), read_config(path)?),
            None if system.exists() => (Some(system.to_owned()), read_config(system)?),
            None => (None, ConfigFile::default()),
        };
        let storage_root = match config.storage.root {
            Some(root) => root,
            None => default_storage_root()?,
        };
        let audit_path = config.audit.path.unwrap_or_else(|| storage_root.join("audit.jsonl"));
        Ok(Settings {
            config_path: path,
            registries: config.registries,
            storage_root,
            max_image_size: config.storage.max_image_size,
            keep_layer_blobs: config.storage.keep_layer_blobs.unwrap_or(true),
            layered_rootfs: config.storage.layered_rootfs.unwrap_or(true),
            tre: config.tre,
            audit_path,
            audit_syslog: config.audit.syslog,
            policy: config.policy,
            pull: config.pull,
            outputs: config.outputs.budget(),
            run: config.run,
            podman: config.podman,
            gpu: config.gpu,
            slurm: config.slurm,
            k8s: config.k8s,
        })
    }

    /// The config file to name in hints.
    pub fn config_shown(&self) -> String {
        self.config_path.as_deref().unwrap_or(Path::new(SYSTEM_CONFIG)).display().to_string()
    }
}

fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    parse_config(path, &text).map_err(Into::into)
}

/// Parses config text, naming the line and key of any error.
pub fn parse_config(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let located = |error: &toml::de::Error, key: Option<String>| ConfigError {
        path: path.to_owned(),
        line: error.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1),
        key,
        message: error.message().trim().to_owned(),
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| located(&e, None))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        located(e.inner(), (key != ".").then_some(key))
    })
}

/// `/var/lib/ces` for root of the host; `$XDG_DATA_HOME/ces` or
/// `~/.local/share/ces` for others (root in a user namespace included).
fn default_storage_root() -> anyhow::Result<PathBuf> {
    if crate::identity::is_host_root() {
        return Ok(PathBuf::from("/var/lib/ces"));
    }
    // The XDG spec: a relative $XDG_DATA_HOME is invalid and ignored.
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Ok(PathBuf::from(data).join("ces"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| Path::new(h).is_absolute())
        .context("HOME is not set to an absolute path, and [storage] root is not set")?;
    Ok(PathBuf::from(home).join(".local/share/ces"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        parse_config(Path::new("/etc/ces/config.toml"), text)
    }

    #[test]
    fn only_root_may_replace_the_system_config_unless_it_allows_users_to() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.toml");
        let mine = dir.path().join("mine.toml");
        std::fs::write(&system, "[registries]\nallowed = [\"ghcr.io\"]\n[storage]\nroot = \"/srv/ces\"\n").unwrap();
        std::fs::write(&mine, "[registries]\nallowed = [\"docker.io\"]\n[storage]\nroot = \"/tmp/x\"\n").unwrap();

        let refused = Settings::load_with(Some(&mine), &system, false).unwrap_err();
        assert!(refused.downcast_ref::<UserConfigRefused>().is_some(), "{refused}");
        assert_eq!(
            Settings::load_with(Some(&mine), &system, true).unwrap().registries.allowed,
            ["docker.io"],
            "root may"
        );
        assert_eq!(Settings::load_with(None, &system, false).unwrap().registries.allowed, ["ghcr.io"]);
        assert_eq!(Settings::load_with(Some(&system), &system, false).unwrap().registries.allowed, ["ghcr.io"]);

        std::fs::write(&system, "[policy]\nallow_user_config = true\n").unwrap();
        assert_eq!(Settings::load_with(Some(&mine), &system, false).unwrap().registries.allowed, ["docker.io"]);
        // No system config (a researcher's laptop, CI): anyone's config is used.
        let absent = dir.path().join("absent.toml");
        assert_eq!(Settings::load_with(Some(&mine), &absent, false).unwrap().registries.allowed, ["docker.io"]);
    }

    /// Root under sudo acts for a user: the system config is the only one,
    /// whatever it allows users, and even where there is none.
    #[test]
    fn under_sudo_the_system_config_is_the_only_config() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.toml");
        let mine = dir.path().join("mine.toml");
        std::fs::write(&system, "[policy]\nallow_user_config = true\n[registries]\nallowed = [\"ghcr.io\"]\n").unwrap();
        std::fs::write(&mine, "[registries]\nallowed = [\"evil.example\"]\n[audit]\npath = \"/etc/profile.d/x.sh\"\n")
            .unwrap();
        for system_exists in [true, false] {
            let system = if system_exists { system.clone() } else { dir.path().join("absent.toml") };
            let refused = Settings::load_as(Some(&mine), &system, Reader::Sudo).unwrap_err();
            let refused = refused.downcast_ref::<SudoConfigRefused>().unwrap();
            assert_eq!((refused.system.as_path(), refused.asked.as_path()), (system.as_path(), mine.as_path()));
        }
        // A link to the system config is not its name.
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&system, &link).unwrap();
        assert!(Settings::load_as(Some(&link), &system, Reader::Sudo).is_err());
        // Its own name, or none: the system config.
        for explicit in [Some(system.as_path()), None] {
            assert_eq!(Settings::load_as(explicit, &system, Reader::Sudo).unwrap().registries.allowed, ["ghcr.io"]);
        }
        // Root for itself still may; a user may here, as the system config allows it.
        for reader in [Reader::Root, Reader::User] {
            assert_eq!(Settings::load_as(Some(&mine), &system, reader).unwrap().registries.allowed, ["evil.example"]);
        }
    }

    #[test]
    fn outputs_budget_defaults_where_the_config_names_none() {
        let c = parse("[outputs]\nhash_budget_seconds = 7\n").unwrap();
        let budget = c.outputs.budget();
        assert_eq!(budget.bytes, ces_outputs::Budget::DEFAULT_BYTES);
        assert_eq!(budget.time, std::time::Duration::from_secs(7));
        assert_eq!(parse("").unwrap().outputs.budget(), ces_outputs::Budget::default());
        assert!(parse("[outputs]\nhash_budget = 1\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn root_id_base_and_max_rootfs_writes_are_checked_when_read() {
        let c = parse("[run]\nroot_id_base = 2000000000\nmax_rootfs_writes = \"8g\"\n").unwrap();
        assert_eq!((c.run.root_id_base, c.run.max_rootfs_writes), (Some(2_000_000_000), Some(8 << 30)));
        for (toml, said) in [
            ("[run]\nroot_id_base = 0\n", "cannot be root mode's ids"),
            ("[run]\nroot_id_base = 1000\n", "cannot be root mode's ids"),
            ("[run]\nroot_id_base = 4294967295\n", "cannot be root mode's ids"),
            ("[run]\nmax_rootfs_writes = \"lots\"\n", "max_rootfs_writes"),
        ] {
            let e = format!("{:#}", parse(toml).unwrap_err());
            assert!(e.contains(said), "{toml}: {e}");
        }
        assert!(parse("[podman]\nallow_host_root = true\n").unwrap().podman.allow_host_root);
        assert!(!parse("").unwrap().podman.allow_host_root, "refused unless allowed");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.registries.allowed, ["ghcr.io"]);
        assert!(c.registries.insecure.is_empty());
        assert!(c.storage.root.is_none());
        assert!(c.audit.path.is_none());
    }

    #[test]
    fn audit_path_defaults_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.toml");
        let absent = dir.path().join("absent.toml");
        std::fs::write(&config, "[storage]\nroot = \"/srv/ces\"\n").unwrap();
        let settings = Settings::load_with(Some(&config), &absent, false).unwrap();
        assert_eq!(settings.audit_path, Path::new("/srv/ces/audit.jsonl"));
        assert!(!settings.audit_syslog);
        std::fs::write(&config, "[audit]\npath = \"/var/log/ces/audit.jsonl\"\nsyslog = true\n").unwrap();
        let settings = Settings::load_with(Some(&config), &absent, false).unwrap();
        assert_eq!(settings.audit_path, Path::new("/var/log/ces/audit.jsonl"));
        assert!(settings.audit_syslog);
        let e = parse("[audit]\nfile = \"x\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("audit.file")), "{e}");
    }

    #[test]
    fn store_root_and_audit_path_must_be_absolute() {
        for (text, key) in [
            ("[storage]\nroot = \"\"\n", "storage.root"),
            ("[storage]\nroot = \"store\"\n", "storage.root"),
            ("[storage]\nroot = \"./ces\"\n", "storage.root"),
            ("[audit]\npath = \"\"\n", "audit.path"),
            ("[audit]\npath = \"logs/audit.jsonl\"\n", "audit.path"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(2), Some(key)), "{e}");
            assert!(e.to_string().contains("is not an absolute path"), "{e}");
        }
        let ok = parse("[storage]\nroot = \"/srv/ces\"\n[audit]\npath = \"/var/log/ces/a.jsonl\"\n").unwrap();
        assert_eq!(ok.storage.root.as_deref(), Some(Path::new("/srv/ces")));
        assert_eq!(ok.audit.path.as_deref(), Some(Path::new("/var/log/ces/a.jsonl")));
    }

    #[test]
    fn full_file_parses() {
        let c = parse("[registries]\nallowed = [\"ghcr.io\", \"127.0.0.1:5000\"]\ninsecure = [\"127.0.0.1:5000\"]\n\n[storage]\nroot = \"/srv/ces\"\n").unwrap();
        assert_eq!(c.registries.allowed, ["ghcr.io", "127.0.0.1:5000"]);
        assert_eq!(c.registries.insecure, ["127.0.0.1:5000"]);
        assert_eq!(c.storage.root.as_deref(), Some(Path::new("/srv/ces")));
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let e = parse("[registries]\n\nallowed = 5\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("registries.allowed"), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("invalid config /etc/ces/config.toml, line 3, key registries.allowed: "), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = parse("[registries]\nalowed = [\"ghcr.io\"]\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().contains("alowed"), "{e}");
    }

    #[test]
    fn tre_section_with_project_overrides() {
        let c = parse("").unwrap();
        assert_eq!(c.tre.safe_data_root, Path::new("/safe_data"));
        assert_eq!(c.tre.safe_data_mode(Some("p1")), SafeDataMode::Ro);
        let c = parse(
            "[tre]\nsafe_data_root = \"/srv/data\"\nproject = \"p1\"\ngroup_prefix = \"tre\"\noutputs_parent = \"/o\"\nscratch_parent = \"/s\"\n\n[tre.projects.p2]\nsafe_data_mode = \"rw\"\n",
        )
        .unwrap();
        assert_eq!(c.tre.project.as_deref(), Some("p1"));
        assert_eq!(c.tre.group_prefix.as_deref(), Some("tre"));
        assert_eq!(c.tre.outputs_parent.as_deref(), Some(Path::new("/o")));
        assert_eq!(c.tre.scratch_parent.as_deref(), Some(Path::new("/s")));
        assert_eq!(c.tre.safe_data_mode(Some("p1")), SafeDataMode::Ro);
        assert_eq!(c.tre.safe_data_mode(Some("p2")), SafeDataMode::Rw);
        assert_eq!(c.tre.safe_data_mode(None), SafeDataMode::Ro);
        let e = parse("[tre]\nsafe_data_mode = \"write\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("tre.safe_data_mode")), "{e}");
        let e = parse("[tre.projects.p1]\nmode = \"rw\"\n").unwrap_err();
        assert!(e.to_string().contains("mode"), "{e}");
    }

    #[test]
    fn policy_and_pull_sections() {
        let c = parse("").unwrap();
        assert!(!c.policy.require_digest && !c.policy.require_source_label);
        assert!(c.pull.open(), "everyone may pull by default");
        let c = parse(
            "[policy]\nrequire_digest = true\nrequire_source_label = true\n\n[pull]\nallowed_users = [\"alice\"]\nallowed_groups = [\"tre-users\"]\n",
        )
        .unwrap();
        assert!(c.policy.require_digest && c.policy.require_source_label);
        assert_eq!(c.pull.allowed_users.as_deref(), Some(&["alice".to_owned()][..]));
        assert_eq!(c.pull.allowed_groups.as_deref(), Some(&["tre-users".to_owned()][..]));
        assert!(!c.pull.open());
        assert!(!parse("[pull]\nallowed_users = []\n").unwrap().pull.open(), "an empty list enables no one");
        let e = parse("[pull]\nallowed_user = [\"alice\"]\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("pull.allowed_user")), "{e}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = parse("[storage]\nroot = \"/x\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }
}
