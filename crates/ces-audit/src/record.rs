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
    /// A pull, whatever its outcome.
    Pull(PullEvent),
    /// A load of an image archive (`ces load`), whatever its outcome.
    Load(LoadEvent),
    /// A run that got as far as the runtime, whatever its end.
    Run(Box<RunEvent>),
    /// A run refused or failed before the container was started (the
    /// command line is not recorded: it may hold environment values).
    RunNotStarted(RunNotStarted),
}

impl Event {
    /// `pull`, `load`, `run` or `run_not_started`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Pull(_) => "pull",
            Event::Load(_) => "load",
            Event::Run(_) => "run",
            Event::RunNotStarted(_) => "run_not_started",
        }
    }

    /// The image reference the event is about (for a load, the first image
    /// named; see [`Event::images`]).
    pub fn reference(&self) -> &str {
        match self {
            Event::Pull(pull) => &pull.reference,
            Event::Load(load) => load.images.first().map_or("", |image| image.reference.as_str()),
            Event::Run(run) => &run.image.reference,
            Event::RunNotStarted(run) => run.image.as_deref().unwrap_or_default(),
        }
    }

    /// The image's manifest digest, when known (for a load, the first image's).
    pub fn digest(&self) -> Option<&str> {
        match self {
            Event::Pull(pull) => pull.digest.as_deref(),
            Event::Load(load) => load.images.first().map(|image| image.digest.as_str()),
            Event::Run(run) => Some(&run.image.digest),
            Event::RunNotStarted(_) => None,
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

    /// The outcome.
    pub fn outcome(&self) -> &Outcome {
        match self {
            Event::Pull(pull) => &pull.outcome,
            Event::Load(load) => &load.outcome,
            Event::Run(run) => &run.outcome,
            Event::RunNotStarted(run) => &run.outcome,
        }
    }
}

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
}

impl Outcome {
    /// `ok`, `refused` or `error`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused { .. } => "refused",
            Outcome::Error { .. } => "error",
        }
    }
}

/// `ces pull`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullEvent {
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

/// `ces run`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunEvent {
    /// The run id (also in the outputs directory's name).
    pub run_id: String,
    /// Whether the run was a readiness test (`ces test`) rather than a
    /// run on the TRE's data (absent when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
    /// `--name`, if given.
    pub name: Option<String>,
    /// The project whose data was mounted (none for `$HOME/safe_data`).
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

/// `ces run` that did not start a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunNotStarted {
    /// The image as the user named it, if the command line got that far.
    pub image: Option<String>,
    /// Why not (never `ok`).
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `/safe_data`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SafeData {
    /// The host path.
    pub path: PathBuf,
    /// `ro` or `rw`.
    pub mode: String,
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
                reference: "ghcr.io/a/b:1".into(),
                registry: Some("ghcr.io".into()),
                registry_user: None,
                digest: None,
                provenance: None,
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

    fn user() -> User {
        User { name: "alice".into(), uid: 1000 }
    }
}
