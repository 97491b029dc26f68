//! What one line of the audit log holds: the chain fields (`seq`, `prev`),
//! who and when, and the event. Nothing here can hold a secret: registry
//! tokens have no field, and environment variables are recorded by name.

use std::path::PathBuf;

use jiff::Timestamp;

/// One audit record (one line of the log).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// 0 for the first record, then one more than the record before.
    pub seq: u64,
    /// The sha256 (hex) of the previous line's exact bytes (without its
    /// newline), or [`GENESIS`] for the first record.
    pub prev: String,
    /// When the record was written.
    pub time: Timestamp,
    /// Who the command ran for.
    pub user: User,
    /// What happened (its `event` key says which kind).
    #[serde(flatten)]
    pub event: Event,
}

/// The `prev` of the first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The user a command ran for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The host uid.
    pub uid: u32,
}

/// What a record is about.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A pull about to contact the registry: written first, so that a pull
    /// is in the log even when its ces dies. Its end is the [`Event::Pull`]
    /// (or [`Event::PullEnd`]) with the same `pull_id`.
    PullStart(PullStartEvent),
    /// A pull, whatever its outcome.
    Pull(PullEvent),
    /// The end of a pull whose ces died (killed, interrupted) before it
    /// could write the pull's own record: written by the next pull.
    PullEnd(PullEndEvent),
    /// A load of an image archive (`ces load`), whatever its outcome.
    Load(LoadEvent),
    /// A run about to start its container: written before the container
    /// starts, so that a run is in the log even when its ces dies. Its end
    /// is the [`Event::Run`] (or [`Event::RunEnd`]) with the same `run_id`.
    RunStart(Box<RunStartEvent>),
    /// A run that got as far as the runtime, whatever its end.
    Run(Box<RunEvent>),
    /// The end of a run whose ces process died before it could write the
    /// run's own record: written by the next ces start's clean-up.
    RunEnd(RunEndEvent),
    /// A run refused or failed before the container was started (the
    /// command line is not recorded: it may hold environment values).
    RunNotStarted(RunNotStarted),
    /// A run handed to a scheduler (`--runtime slurm`): its plan and its
    /// job. The run itself is recorded where it runs (its start and its
    /// end, with the same run id, and the job).
    RunSubmitted(Box<RunSubmittedEvent>),
    /// A request the pull proxy (`ces proxy`) answered or refused: a
    /// manifest, a blob or a tag list, for an authenticated client.
    ProxyPull(ProxyPullEvent),
}

/// What the pull proxy served (or refused) to whom.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyPullEvent {
    /// The client, as it authenticated to the proxy (`anonymous` if it may not).
    pub client: String,
    /// Its address.
    pub peer: String,
    /// The upstream registry (the proxy's name for it).
    pub upstream: String,
    /// The repository in it.
    pub repository: String,
    /// `manifest`, `blob` or `tags`.
    pub object: String,
    /// The tag or digest asked for.
    pub reference: String,
    /// The digest served, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `hit` (from the cache), `miss` (fetched upstream), `stale` (from the
    /// cache, upstream unreachable), or `none` (refused before either).
    pub cache: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Event {
    /// `pull_start`, `pull`, `pull_end`, `load`, `run_start`, `run`, `run_end`, `run_not_started` or `run_submitted`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::PullStart(_) => "pull_start",
            Event::Pull(_) => "pull",
            Event::PullEnd(_) => "pull_end",
            Event::Load(_) => "load",
            Event::RunStart(_) => "run_start",
            Event::Run(_) => "run",
            Event::RunEnd(_) => "run_end",
            Event::RunNotStarted(_) => "run_not_started",
            Event::RunSubmitted(_) => "run_submitted",
            Event::ProxyPull(_) => "proxy_pull",
        }
    }

    /// The run id, for the records of a run that started (its start and its end).
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Event::RunStart(start) => Some(&start.run_id),
            Event::Run(run) => Some(&run.run_id),
            Event::RunEnd(end) => Some(&end.run_id),
            Event::PullStart(_)
            | Event::Pull(_)
            | Event::PullEnd(_)
            | Event::Load(_)
            | Event::RunNotStarted(_)
            | Event::RunSubmitted(_)
            | Event::ProxyPull(_) => None,
        }
    }

    /// The image reference the event is about (for a load, the first image
    /// named; see [`Event::images`]).
    pub fn reference(&self) -> &str {
        match self {
            Event::Pull(pull) => &pull.reference,
            Event::PullStart(start) => &start.reference,
            Event::PullEnd(end) => &end.reference,
            Event::Load(load) => load.images.first().map_or("", |image| image.reference.as_str()),
            Event::RunStart(start) => &start.setup.image.reference,
            Event::Run(run) => &run.setup.image.reference,
            Event::RunEnd(_) => "",
            Event::RunNotStarted(run) => run.image.as_deref().unwrap_or_default(),
            Event::RunSubmitted(run) => &run.setup.image.reference,
            Event::ProxyPull(pull) => &pull.repository,
        }
    }

    /// The image's manifest digest, when known (for a load, the first image's).
    pub fn digest(&self) -> Option<&str> {
        match self {
            Event::Pull(pull) => pull.digest.as_deref(),
            Event::Load(load) => load.images.first().map(|image| image.digest.as_str()),
            Event::RunStart(start) => Some(&start.setup.image.digest),
            Event::Run(run) => Some(&run.setup.image.digest),
            Event::RunSubmitted(run) => Some(&run.setup.image.digest),
            Event::ProxyPull(pull) => pull.digest.as_deref(),
            Event::PullStart(_) | Event::PullEnd(_) | Event::RunEnd(_) | Event::RunNotStarted(_) => None,
        }
    }

    /// Every image the event is about, as (reference, digest when known):
    /// one for a pull or a run, each image named for a load.
    pub fn images(&self) -> Vec<(&str, Option<&str>)> {
        match self {
            Event::Load(load) => {
                load.images.iter().map(|image| (image.reference.as_str(), Some(image.digest.as_str()))).collect()
            }
            _ => vec![(self.reference(), self.digest())],
        }
    }

    /// Bounds the text others control before it is recorded: the outcome's
    /// error and the reference as given are cut short, their control
    /// characters escaped (a 1 GiB entry name must not become a 1 GiB record).
    pub fn bound_text(&mut self) {
        let outcome = match self {
            Event::Pull(pull) => {
                pull.reference = ces_image::quote::escape_message(&pull.reference, MAX_ERROR_TEXT);
                &mut pull.outcome
            }
            Event::PullStart(start) => {
                start.reference = ces_image::quote::escape_message(&start.reference, MAX_ERROR_TEXT);
                return;
            }
            Event::PullEnd(end) => {
                end.reference = ces_image::quote::escape_message(&end.reference, MAX_ERROR_TEXT);
                &mut end.outcome
            }
            Event::Load(load) => &mut load.outcome,
            Event::RunStart(_) => return,
            Event::Run(run) => &mut run.outcome,
            Event::RunEnd(end) => &mut end.outcome,
            Event::RunNotStarted(run) => &mut run.outcome,
            Event::RunSubmitted(run) => &mut run.outcome,
            Event::ProxyPull(pull) => {
                for text in [&mut pull.client, &mut pull.repository, &mut pull.reference, &mut pull.peer] {
                    *text = ces_image::quote::escape_message(text, MAX_ERROR_TEXT);
                }
                &mut pull.outcome
            }
        };
        outcome.bound();
    }

    /// The outcome (a start's is `ok`: the run was recorded and handed to the runtime).
    pub fn outcome(&self) -> &Outcome {
        const STARTED: &Outcome = &Outcome::Ok;
        match self {
            Event::PullStart(_) => STARTED,
            Event::Pull(pull) => &pull.outcome,
            Event::PullEnd(end) => &end.outcome,
            Event::Load(load) => &load.outcome,
            Event::RunStart(_) => STARTED,
            Event::Run(run) => &run.outcome,
            Event::RunEnd(end) => &end.outcome,
            Event::RunNotStarted(run) => &run.outcome,
            Event::RunSubmitted(run) => &run.outcome,
            Event::ProxyPull(pull) => &pull.outcome,
        }
    }
}

/// The most bytes of error text a record keeps (see [`Event::bound_text`]).
pub const MAX_ERROR_TEXT: usize = 2048;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// It did what was asked (for a run: the container ran, whatever its exit code).
    Ok,
    /// Policy refused it (a registry not allowed, an option refused...).
    Refused {
        /// The refusal, on one line.
        error: String,
    },
    /// It failed.
    Error {
        /// The error, on one line.
        error: String,
    },
    /// The ces process that ran it died (killed, crashed) before the run
    /// ended: how the container ended is not known.
    SupervisorLost {
        /// What is known, on one line.
        error: String,
    },
}

impl Outcome {
    /// Cuts the error text to [`MAX_ERROR_TEXT`] bytes and escapes its
    /// control characters: it may quote what a registry or an image said.
    fn bound(&mut self) {
        match self {
            Outcome::Ok => {}
            Outcome::Refused { error } | Outcome::Error { error } | Outcome::SupervisorLost { error } => {
                *error = ces_image::quote::escape_message(error, MAX_ERROR_TEXT);
            }
        }
    }

    /// `ok`, `refused`, `error` or `supervisor lost`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused { .. } => "refused",
            Outcome::Error { .. } => "error",
            Outcome::SupervisorLost { .. } => "supervisor lost",
        }
    }
}

/// The start of `ces pull`, before the registry is contacted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullStartEvent {
    /// The pull id: its end record carries the same.
    pub pull_id: String,
    /// The ces process that pulls.
    pub pid: u32,
    /// The reference as given.
    pub reference: String,
    /// The registry (`host[:port]`).
    pub registry: Option<String>,
    /// The registry user, if any (never the token).
    pub registry_user: Option<String>,
}

/// The end of a pull whose ces died before writing the pull's own record
/// (outcome [`Outcome::SupervisorLost`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullEndEvent {
    /// The pull id of its [`PullStartEvent`].
    pub pull_id: String,
    /// The ces process that pulled, which is gone.
    pub pid: Option<u32>,
    /// The reference, as its start says.
    pub reference: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `ces pull`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullEvent {
    /// The pull id of its [`PullStartEvent`], when the pull got that far
    /// (a pull refused before contacting the registry has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_id: Option<String>,
    /// The reference as given.
    pub reference: String,
    /// The registry (`host[:port]`), when the reference could be parsed.
    pub registry: Option<String>,
    /// The registry user, if any (never the token).
    pub registry_user: Option<String>,
    /// The manifest digest the pull resolved to (on success).
    pub digest: Option<String>,
    /// Where the image came from, as its labels and annotations say (on
    /// success; absent when the image says nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Box<Provenance>>,
    /// The pull proxy the pull went through (`[registries] mirror`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `ces load`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadEvent {
    /// The archive read.
    pub archive: Archive,
    /// The images the load named in the store, one per name (none when it
    /// failed before naming any).
    pub images: Vec<LoadedImage>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The archive of a load.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Archive {
    /// The path as given (`-` for standard input).
    pub path: PathBuf,
    /// Its size in bytes (as stored, compressed or not), when known: a
    /// regular file's, or the bytes read from standard input to its end.
    pub size: Option<u64>,
    /// The sha256 (hex) of its bytes, as read once by the load, when ces
    /// read it to the end (always on success).
    pub sha256: Option<String>,
}

/// An image a load named.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadedImage {
    /// The name it was stored under.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// Where the image came from, as its labels and annotations say (absent
    /// when the image says nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Box<Provenance>>,
}

/// What a run is: the same in its start record and in its end record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSetup {
    /// Whether the run is a readiness test (`ces test`) rather than a run
    /// on the TRE's data (absent when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
    /// `--name`, if given.
    pub name: Option<String>,
    /// The project whose data is mounted (none when it is no project's).
    pub project: Option<String>,
    /// The host directory mounted at `/safe_data`, and how.
    pub safe_data: SafeData,
    /// The image, pinned.
    pub image: Image,
    /// The image's provenance, as its pull (or load) recorded it: the same
    /// object as the pull record of `image.digest` (absent when the image
    /// says nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Box<Provenance>>,
    /// The backend (`native`, `podman`).
    pub runtime: String,
    /// Every mount, with its mode.
    pub mounts: Vec<Mount>,
    /// The resource limits.
    pub limits: Limits,
    /// The names of the container's environment variables (values may be secrets).
    pub env: Vec<String>,
    /// The container's argv.
    pub argv: Vec<String>,
    /// The published ports (`-p`, `--publish-socket`), as
    /// `HOST -> CONTAINERPORT/tcp` (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// The devices given to the container (`--gpu`, `--device`; absent
    /// when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// The scheduler's job the run is (absent for a run started here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
}

/// A scheduler's job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// The scheduler (`slurm`).
    pub scheduler: String,
    /// The job id it gave.
    pub id: String,
    /// The node the run ran on (absent in the submission's record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A run handed to a scheduler.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSubmittedEvent {
    /// The run id the run will have where it runs.
    pub run_id: String,
    /// What the run will be, as planned here.
    #[serde(flatten)]
    pub setup: RunSetup,
    /// The plan's digest: the node refuses a run whose plan is not this.
    pub plan: String,
    /// `ok` (submitted), or why not.
    pub outcome: Outcome,
}

/// A device a run was given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// Its fully qualified CDI name (`vendor/class=name`).
    pub name: String,
    /// Its UUID, where the device's spec says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The CDI spec file it came from.
    pub spec: String,
}

/// `ces run` (or `ces test`) that got as far as the runtime: its end.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunEvent {
    /// The run id (also in the outputs directory's name).
    pub run_id: String,
    /// What the run was.
    #[serde(flatten)]
    pub setup: RunSetup,
    /// When the container was started.
    pub started: Timestamp,
    /// When it ended.
    pub ended: Timestamp,
    /// How the container ended, if it ran.
    pub exit: Option<Exit>,
    /// The outputs directory (`/safe_outputs` on the host), if kept.
    pub outputs: Option<PathBuf>,
    /// The sha256 of the outputs manifest, once ces writes one.
    pub outputs_manifest: Option<String>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The start of `ces run` (or `ces test`): what the run will be, written
/// before its container starts. A run that cannot write it does not start.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunStartEvent {
    /// The run id: its end record carries the same.
    pub run_id: String,
    /// The ces process that runs it (its supervisor).
    pub pid: u32,
    /// What the run will be.
    #[serde(flatten)]
    pub setup: RunSetup,
    /// The outputs directory (`/safe_outputs` on the host).
    pub outputs: PathBuf,
}

/// The end of a run whose ces died before writing the run's own record
/// (outcome [`Outcome::SupervisorLost`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunEndEvent {
    /// The run id of its [`RunStartEvent`].
    pub run_id: String,
    /// The ces process that ran it, which is gone.
    pub pid: Option<u32>,
    /// The outputs directory, if it is still there.
    pub outputs: Option<PathBuf>,
    /// The sha256 of the outputs manifest, if one was written when the run was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs_manifest: Option<String>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `ces run` that did not start a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunNotStarted {
    /// The image as the user named it, if the command line got that far.
    pub image: Option<String>,
    /// The run id, for a submitted run refused where it was to run (its
    /// submission's `run_submitted` has the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The scheduler's job, for a submitted run refused on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    /// Why not (never `ok`).
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `/safe_data`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SafeData {
    /// The host path mounted (with every symbolic link resolved).
    pub path: PathBuf,
    /// `ro` or `rw`.
    pub mode: String,
    /// The symbolic link the path was found through (`$HOME/safe_data`),
    /// when it was one (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<PathBuf>,
}

/// An image, pinned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// The reference as the user named it.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
}

/// Where an image came from: its OCI labels (`org.opencontainers.image.*`)
/// and base-image annotations, as the image store reads them. Every field is
/// the builder's claim, bound to the image digest (labels and annotations
/// are part of the hashed content).
pub use ces_image::Provenance;

/// A mount in the container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// The path in the container.
    pub destination: String,
    /// The host path (none for a tmpfs).
    pub source: Option<PathBuf>,
    /// `bind` or `tmpfs`.
    pub kind: String,
    /// `ro` or `rw`.
    pub mode: String,
}

/// Resource limits.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory, bytes.
    pub memory: u64,
    /// CPU cores, if limited.
    pub cpus: Option<f64>,
    /// Processes, if limited.
    pub pids: Option<i64>,
    /// `/dev/shm`, bytes.
    pub shm_size: u64,
    /// The wall-clock limit, seconds, if any (`--time-limit`, `[run] max_time_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<u64>,
    /// The most the container may write to its own filesystem, bytes, if
    /// limited (`[run] max_rootfs_writes`, root runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_writes: Option<u64>,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    /// The exit code ces passed on (128 + signal for a signal).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Whether it was killed for exceeding its memory limit.
    pub oom: bool,
    /// Whether it was stopped at its time limit (`code` is then 124).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub time_limit: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pull_record_is_flat_json() {
        let record = Record {
            seq: 3,
            prev: GENESIS.into(),
            time: "2026-01-02T03:04:05Z".parse().unwrap(),
            user: User { name: "alice".into(), uid: 1000 },
            event: Event::Pull(PullEvent {
                pull_id: None,
                reference: "ghcr.io/a/b:1".into(),
                registry: Some("ghcr.io".into()),
                registry_user: None,
                digest: None,
                provenance: None,
                endpoint: None,
                outcome: Outcome::Refused { error: "not allowed".into() },
            }),
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["event"], "pull");
        assert_eq!(json["result"], "refused");
        assert_eq!(json["error"], "not allowed");
        assert_eq!(json["time"], "2026-01-02T03:04:05Z");
        assert_eq!(json["user"], serde_json::json!({"name": "alice", "uid": 1000}));
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn a_load_record_names_its_archive_and_images() {
        let event = Event::Load(LoadEvent {
            archive: Archive { path: "-".into(), size: Some(2048), sha256: Some("ab".repeat(32)) },
            images: vec![LoadedImage {
                reference: "ghcr.io/a/b:1".into(),
                digest: format!("sha256:{}", "cd".repeat(32)),
                provenance: None,
            }],
            outcome: Outcome::Ok,
        });
        let record =
            Record { seq: 0, prev: GENESIS.into(), time: "2026-01-02T03:04:05Z".parse().unwrap(), user: user(), event };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["event"], "load");
        assert_eq!(json["result"], "ok");
        assert_eq!(json["archive"], serde_json::json!({"path": "-", "size": 2048, "sha256": "ab".repeat(32)}));
        assert_eq!(json["images"][0]["reference"], "ghcr.io/a/b:1");
        assert!(json["images"][0].get("provenance").is_none());
        assert_eq!(record.event.images(), [("ghcr.io/a/b:1", Some(format!("sha256:{}", "cd".repeat(32)).as_str()))]);
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn a_run_start_and_a_lost_end_pair_by_run_id() {
        let start = Event::RunStart(Box::new(RunStartEvent {
            run_id: "20260102-030405-0000abcd".into(),
            pid: 77,
            setup: RunSetup {
                test: false,
                name: None,
                project: Some("p1".into()),
                safe_data: SafeData {
                    path: "/data/p1".into(),
                    mode: "rw".into(),
                    link: Some("/home/a/safe_data".into()),
                },
                image: Image { reference: "ghcr.io/a/b:1".into(), digest: format!("sha256:{}", "ab".repeat(32)) },
                provenance: None,
                runtime: "native".into(),
                mounts: Vec::new(),
                limits: Limits {
                    memory: 1 << 30,
                    cpus: None,
                    pids: Some(4096),
                    shm_size: 64 << 20,
                    time_limit: None,
                    rootfs_writes: None,
                },
                env: vec!["PATH".into()],
                argv: vec!["sleep".into(), "60".into()],
                ports: Vec::new(),
                devices: Vec::new(),
                job: None,
            },
            outputs: "/home/a/outputs_20260102-030405-0000abcd".into(),
        }));
        let json = serde_json::to_value(&start).unwrap();
        assert_eq!(
            (json["event"].as_str(), json["run_id"].as_str()),
            (Some("run_start"), Some("20260102-030405-0000abcd"))
        );
        assert_eq!(json["safe_data"]["link"], "/home/a/safe_data");
        assert!(json.get("result").is_none() && json.get("test").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), start);
        let end = Event::RunEnd(RunEndEvent {
            run_id: "20260102-030405-0000abcd".into(),
            pid: Some(77),
            outputs: None,
            outputs_manifest: None,
            outcome: Outcome::SupervisorLost { error: "gone".into() },
        });
        let json = serde_json::to_value(&end).unwrap();
        assert_eq!((json["event"].as_str(), json["result"].as_str()), (Some("run_end"), Some("supervisor_lost")));
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), end);
        assert_eq!(
            (start.run_id(), end.run_id(), end.outcome().word()),
            (end.run_id(), start.run_id(), "supervisor lost")
        );
    }

    /// Records written before starts were recorded (no `link` in
    /// `safe_data`, no start before a run) still read.
    #[test]
    fn a_run_record_of_an_older_ces_still_reads() {
        let line = r#"{"seq":1,"prev":"00","time":"2026-01-02T03:04:05Z","user":{"name":"alice","uid":1000},"event":"run","run_id":"20260102-030405-0000abcd","name":null,"project":null,"safe_data":{"path":"/home/alice/safe_data","mode":"ro"},"image":{"reference":"r","digest":"sha256:00"},"runtime":"native","mounts":[],"limits":{"memory":1,"cpus":null,"pids":null,"shm_size":1},"env":[],"argv":["true"],"started":"2026-01-02T03:04:05Z","ended":"2026-01-02T03:04:06Z","exit":{"code":0,"signal":null,"oom":false},"outputs":null,"outputs_manifest":null,"result":"ok"}"#;
        let record: Record = serde_json::from_str(line).unwrap();
        let Event::Run(run) = &record.event else { panic!("{record:?}") };
        assert_eq!(
            (run.setup.safe_data.link.as_ref(), record.event.run_id()),
            (None, Some("20260102-030405-0000abcd"))
        );
    }

    /// A run's start and end share their description ([`RunSetup`]), and
    /// their lines keep the one flat shape, field for field and in order.
    #[test]
    fn run_records_keep_their_flat_shape() {
        let start = r#"{"seq":1,"prev":"00","time":"2026-01-02T03:04:05Z","user":{"name":"alice","uid":1000},"event":"run_start","run_id":"20260102-030405-0000abcd","pid":77,"test":true,"name":"n","project":"p1","safe_data":{"path":"/data/p1","mode":"rw","link":"/home/a/safe_data"},"image":{"reference":"r","digest":"sha256:00"},"runtime":"native","mounts":[{"destination":"/safe_data","source":"/data/p1","kind":"bind","mode":"rw"}],"limits":{"memory":1,"cpus":0.5,"pids":4096,"shm_size":1},"env":["PATH"],"argv":["true"],"outputs":"/home/a/outputs_20260102-030405-0000abcd"}"#;
        let end = r#"{"seq":1,"prev":"00","time":"2026-01-02T03:04:05Z","user":{"name":"alice","uid":1000},"event":"run","run_id":"20260102-030405-0000abcd","name":null,"project":null,"safe_data":{"path":"/home/alice/safe_data","mode":"ro"},"image":{"reference":"r","digest":"sha256:00"},"runtime":"native","mounts":[],"limits":{"memory":1,"cpus":null,"pids":null,"shm_size":1},"env":[],"argv":["true"],"started":"2026-01-02T03:04:05Z","ended":"2026-01-02T03:04:06Z","exit":{"code":0,"signal":null,"oom":false},"outputs":null,"outputs_manifest":null,"result":"ok"}"#;
        for line in [start, end] {
            let record: Record = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&record).unwrap(), line);
        }
        let (Event::RunStart(start), Event::Run(end)) =
            (serde_json::from_str::<Record>(start).unwrap().event, serde_json::from_str::<Record>(end).unwrap().event)
        else {
            panic!("not a start and an end")
        };
        assert_eq!((start.setup.test, start.setup.limits.cpus, end.setup.test), (true, Some(0.5), false));
    }

    fn user() -> User {
        User { name: "alice".into(), uid: 1000 }
    }
}
