//! ACRO metadata, so that the outputs directory opens in SACRO-Viewer as it
//! is: `results.json` in the format `acro` 1.0.x writes from
//! `Records.finalise(path, "json")` (every file as a `custom` output with
//! status `review`, as `acro.add_custom` makes them), and `checksums/`, one
//! `<file name>.txt` holding the file's sha256 in hex (no newline), as
//! `Records.write_checksums` writes them and SACRO-Viewer reads them.
//!
//! `acro.record.load_records` refuses a `version` other than its own, so
//! [`ACRO_VERSION`] names the release whose format this is (SACRO-Viewer
//! takes any version from 0.4 on).
//!
//! Only regular files with UTF-8 names are listed: SACRO-Viewer reads a
//! listed path with `read_bytes()`, which would follow a symbolic link to
//! the host; links and special files are in `ces-manifest.json` only.

use jiff::Timestamp;
use serde::Serialize;
use serde::ser::SerializeMap as _;

use crate::manifest::{Entry, Kind, RunIdentity};

/// The `acro` release whose `results.json` format ces writes.
pub const ACRO_VERSION: &str = "1.0.2";

/// `results.json`.
#[derive(Debug, Serialize)]
pub struct Results {
    /// [`ACRO_VERSION`].
    pub version: String,
    /// The program that wrote it (RO-Crate style, as ACRO records itself).
    pub tool: Tool,
    /// `output_0`, `output_1`, ... in path order.
    pub results: Outputs,
}

/// The outputs, written as an object keyed by uid, in order.
#[derive(Debug)]
pub struct Outputs(pub Vec<Output>);

impl Serialize for Outputs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for output in &self.0 {
            map.serialize_entry(&output.uid, output)?;
        }
        map.end()
    }
}

/// One output, its keys in the order ACRO's `finalise_json` writes them.
#[derive(Debug, Serialize)]
pub struct Output {
    /// `output_N`.
    pub uid: String,
    /// `review`: awaiting an output checker.
    pub status: String,
    /// `custom`: not an analysis ACRO checked.
    #[serde(rename = "type")]
    pub kind: String,
    /// `{}`.
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// The one file, with an empty `sdc`.
    pub files: Vec<File>,
    /// `{}` (ACRO's empty outcome table).
    pub outcome: serde_json::Map<String, serde_json::Value>,
    /// `custom`.
    pub command: String,
    /// `review`.
    pub summary: String,
    /// When the run ended.
    pub timestamp: String,
    /// Where the output came from.
    pub comments: Vec<String>,
    /// `""`: no exception requested.
    pub exception: String,
    /// `{}`.
    pub fair: serde_json::Map<String, serde_json::Value>,
}

/// A file of an output.
#[derive(Debug, Serialize)]
pub struct File {
    /// The path relative to the directory.
    pub name: String,
    /// `{}`: no disclosure checks.
    pub sdc: serde_json::Map<String, serde_json::Value>,
}

/// The `tool` object.
#[derive(Debug, Serialize)]
pub struct Tool {
    /// `SoftwareApplication`.
    #[serde(rename = "@type")]
    pub kind: String,
    /// `ces`.
    pub name: String,
    /// Where ces comes from.
    pub url: String,
    /// ces's version.
    pub version: String,
}

/// A file ACRO lists: its path relative to the directory, and its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The path, `/`-separated.
    pub name: String,
    /// The sha256 in hex (none if it could not be read).
    pub sha256: Option<String>,
}

/// The files ACRO metadata lists: regular files with UTF-8 names.
pub fn listed(entries: &[Entry]) -> Vec<Listed> {
    entries
        .iter()
        .filter(|e| e.path_hex.is_none())
        .filter_map(|e| match &e.kind {
            Kind::File { sha256, .. } => Some(Listed { name: e.path.clone(), sha256: sha256.clone() }),
            _ => None,
        })
        .collect()
}

/// The `results.json` for these files of this run.
pub fn results(files: &[Listed], run: &RunIdentity) -> Results {
    // ACRO writes Python's `datetime.isoformat()`; this is one with an offset.
    let timestamp = timestamp(run.ended);
    let comment = format!(
        "Written by run {} of {} ({}) for {}; listed by ces for review, not checked by ACRO",
        run.id, run.image.reference, run.image.digest, run.user.name
    );
    let empty = serde_json::Map::new;
    let results = files
        .iter()
        .enumerate()
        .map(|(i, file)| Output {
            uid: format!("output_{i}"),
            status: "review".to_owned(),
            kind: "custom".to_owned(),
            properties: empty(),
            files: vec![File { name: file.name.clone(), sdc: empty() }],
            outcome: empty(),
            command: "custom".to_owned(),
            summary: "review".to_owned(),
            timestamp: timestamp.clone(),
            comments: vec![comment.clone()],
            exception: String::new(),
            fair: empty(),
        })
        .collect();
    Results {
        version: ACRO_VERSION.to_owned(),
        tool: Tool {
            kind: "SoftwareApplication".to_owned(),
            name: "ces".to_owned(),
            url: "https://github.com/ces-tre/ces".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        results: Outputs(results),
    }
}

/// `results.json` as ACRO writes it (`json.dump(..., indent=4)`).
pub fn to_bytes(results: &Results) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    results.serialize(&mut serializer)?;
    Ok(out)
}

/// The checksum file of a listed file, relative to `checksums/`.
pub fn checksum_name(file: &str) -> String {
    format!("{file}.txt")
}

fn timestamp(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::manifest::{Image, User};
    use serde_json::{Value, json};

    #[test]
    fn results_have_acros_shape() {
        let run = RunIdentity {
            id: "r1".into(),
            name: None,
            user: User { name: "alice".into(), uid: 1000 },
            project: None,
            image: Image { reference: "ghcr.io/a/b:1".into(), digest: "sha256:ab".into() },
            runtime: "native".into(),
            argv: vec![],
            started: "2026-01-02T03:04:05Z".parse().unwrap(),
            ended: "2026-01-02T03:04:06.5Z".parse().unwrap(),
            exit: None,
            error: None,
        };
        let files = [Listed { name: "d/t.csv".into(), sha256: Some("00".into()) }];
        let bytes = to_bytes(&results(&files, &run)).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["version"], "1.0.2");
        let output = &value["results"]["output_0"];
        assert_eq!(output["files"], json!([{"name": "d/t.csv", "sdc": {}}]));
        assert_eq!((&output["status"], &output["type"]), (&json!("review"), &json!("custom")));
        assert_eq!(output["timestamp"], "2026-01-02T03:04:06.500000+00:00");
        let text = String::from_utf8(bytes).unwrap();
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap();
        assert!(at("uid") < at("status") && at("status") < at("type") && at("comments") < at("fair"), "{text}");
        assert!(text.contains("\n    \"tool\": {"), "indented by four");
    }
}
