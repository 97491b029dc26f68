//! What `ces-manifest.json` holds: the run's identity and one entry per
//! thing the outputs directory held when the container had exited.
//!
//! The top level has no `version` or `results` key on purpose: SACRO-Viewer
//! takes any JSON file in the directory with both for ACRO metadata.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::table::Table;

/// The value of [`Manifest::format`].
pub const FORMAT: &str = "ces-outputs-manifest/1";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Which run produced the outputs.
    pub run: RunIdentity,
    /// When ces wrote the manifest (after the container exited).
    pub sealed: Timestamp,
    /// Files or directories the container left at names ces reserves, and
    /// where ces moved them (they are listed in `entries` there).
    pub moved_aside: Vec<MovedAside>,
    /// What the seal did besides listing: its hashing budget, what it left
    /// unhashed, what it repaired (absent from manifests of older ces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<SealReport>,
    /// Everything in the directory, sorted by path (ces's own files excluded).
    pub entries: Vec<Entry>,
}

/// Who ran what, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// The run id (also in the directory's name, `outputs_<id>`).
    pub id: String,
    /// `--name`, if given.
    pub name: Option<String>,
    /// The user the run was for.
    pub user: User,
    /// The project whose data was mounted (none for `$HOME/safe_data`).
    pub project: Option<String>,
    /// The image, pinned.
    pub image: Image,
    /// The backend (`native`, `podman`).
    pub runtime: String,
    /// The container's argv.
    pub argv: Vec<String>,
    /// When the container was started.
    pub started: Timestamp,
    /// When ces saw it end.
    pub ended: Timestamp,
    /// How it ended, if it ran.
    pub exit: Option<Exit>,
    /// Why it could not be run, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The name.
    pub name: String,
    /// The host uid.
    pub uid: u32,
}

/// An image, pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference as the user named it.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code ces passed on (128 + signal for a signal).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Whether it was killed for exceeding its memory limit.
    pub oom: bool,
}

/// What the seal did besides listing the entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealReport {
    /// At most this many bytes were read to hash files.
    pub hash_budget_bytes: u64,
    /// Hashing stopped after this many seconds.
    pub hash_budget_seconds: u64,
    /// How many regular files have no sha256 (`not_hashed` or `unreadable`).
    pub files_not_hashed: usize,
    /// How many regular files had setuid/setgid bits or file capabilities
    /// removed (see each entry's `removed`).
    pub files_privileges_removed: usize,
    /// The signal that stopped the hashing, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_by_signal: Option<i32>,
    /// The outputs directory's own mode, in octal, when the container had
    /// taken the owner's permissions away and ces restored them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_mode_restored: Option<String>,
}

/// A reserved name the container used, moved out of the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedAside {
    /// The reserved name (`results.json`, `checksums`, `ces-manifest.json`).
    pub name: String,
    /// Where it is now: `<name>.from-container-<random>` (a name the
    /// container could not have taken beforehand).
    pub moved_to: String,
}

/// One thing in the outputs directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The path relative to the outputs directory, `/`-separated (invalid
    /// UTF-8 replaced by U+FFFD; see `path_hex`).
    pub path: String,
    /// The exact bytes of the path, in hex, only when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// The permission bits, in octal (`0644`).
    pub mode: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: Kind,
}

impl Entry {
    /// The exact path bytes (the key entries are compared by).
    pub fn path_bytes(&self) -> Vec<u8> {
        self.path_hex.as_deref().and_then(|h| hex::decode(h).ok()).unwrap_or_else(|| self.path.as_bytes().to_vec())
    }

    pub(crate) fn new(path: &[u8], mode: u32, kind: Kind) -> Entry {
        let (path, path_hex) = text_of(path);
        Entry { path, path_hex, mode: format!("{:04o}", mode & 0o7777), kind }
    }
}

/// A name as text, and its bytes in hex when it is not UTF-8.
pub(crate) fn text_of(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(hex::encode(bytes))),
    }
}

/// The kinds of entry (`type` in the JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    /// A regular file.
    File {
        /// Its size in bytes.
        size: u64,
        /// The bytes the filesystem holds for it, only when fewer than
        /// `size` (a sparse file: its size says little about its content).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allocated: Option<u64>,
        /// The sha256 (hex) of its bytes; none when it could not be read or
        /// was not hashed.
        sha256: Option<String>,
        /// For `.csv` and `.tsv`: rows and columns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table: Option<Table>,
        /// Why it could not be read, if so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unreadable: Option<String>,
        /// Why it was not hashed (the seal's budget, a signal), if so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_hashed: Option<String>,
        /// What the seal removed from it: `setuid`, `setgid`,
        /// `security.capability` (`mode` is the mode after).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<String>,
        /// Why a setuid/setgid bit or capability could not be removed, if so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_removed: Option<String>,
    },
    /// A directory.
    Directory {
        /// Why its contents are not listed, if they are not (too deep, unreadable).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_listed: Option<String>,
    },
    /// A symbolic link: recorded, never followed.
    Symlink {
        /// What it points to, as written (lossy UTF-8).
        target: String,
        /// The exact target bytes in hex, only when they are not UTF-8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_hex: Option<String>,
    },
    /// A named pipe (never opened).
    Fifo,
    /// A socket.
    Socket,
    /// A character device (never opened).
    CharDevice,
    /// A block device (never opened).
    BlockDevice,
}

impl Kind {
    /// The `type` word.
    pub fn word(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Directory { .. } => "directory",
            Kind::Symlink { .. } => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "char_device",
            Kind::BlockDevice => "block_device",
        }
    }
}
