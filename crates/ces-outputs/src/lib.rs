//! Output manifests: the hand-off of a run's outputs to output checking.
//!
//! After a run's container has exited, [`seal`] walks the outputs directory
//! (which the container controlled: it may hold symbolic links to host
//! paths, FIFOs, devices, huge files, deep nesting) without following or
//! opening anything it should not, and writes three things into it:
//!
//! ```text
//! outputs_<id>/
//!   ces-manifest.json      every entry (path, type, size, sha256, mode, CSV/TSV shape) + the run's identity
//!   results.json           ACRO metadata: every regular file as a custom output awaiting review
//!   checksums/<path>.txt   the sha256 of each of those files, as ACRO and SACRO-Viewer read them
//! ```
//!
//! Those names are reserved: whatever the container left there is moved
//! aside (`<name>.from-container-<random>`, a name it could not take
//! beforehand), listed like any other output, and recorded in the manifest.
//! A directory the container made read-only gets its owner's permissions
//! back first. Setuid/setgid bits and file capabilities are removed (and
//! recorded), so nothing the container made runs with more privileges on
//! the host than its reader. Hashing is bounded ([`Budget`]) and stops on
//! SIGINT/SIGTERM/SIGHUP/SIGQUIT (an [`Interrupt`]): files left unhashed are listed
//! with `"sha256": null` and the reason.
//!
//! The manifest's own sha256 goes into the audit log, so [`verify`] can tell
//! a changed directory, and a changed manifest, from the one the run left.

pub mod acro;
mod interrupt;
pub mod manifest;
mod seal;
pub mod table;
mod verify;
mod walk;

use std::path::PathBuf;
use std::time::Duration;

pub use interrupt::{Interrupt, NoInterrupt};
pub use manifest::{Entry, Exit, Image, Kind, Manifest, MovedAside, RunIdentity, SealReport, User};
pub use seal::{Owner, SealOptions, Sealed, seal};
pub use verify::{Change, Verification, read_manifest, verify};
pub use walk::{MAX_DEPTH, list};

/// The manifest's file name.
pub const MANIFEST_NAME: &str = "ces-manifest.json";
/// ACRO's results file.
pub const RESULTS_NAME: &str = "results.json";
/// ACRO's checksums directory.
pub const CHECKSUMS_NAME: &str = "checksums";
/// The top-level names ces writes (and moves aside if the container used them).
pub const RESERVED: [&str; 3] = [MANIFEST_NAME, RESULTS_NAME, CHECKSUMS_NAME];
/// What a reserved name the container used is renamed with (followed by
/// `-<random>`).
pub const FROM_CONTAINER: &str = ".from-container";

/// How much a seal hashes at most. Files beyond it are listed with their
/// size and the reason, without a sha256: a container can make a file of
/// any size (a 16 TiB sparse file takes a second to make and hours to hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes read, all files together.
    pub bytes: u64,
    /// Time spent hashing, from the start of the seal.
    pub time: Duration,
}

impl Budget {
    /// 64 GiB.
    pub const DEFAULT_BYTES: u64 = 64 << 30;
    /// Five minutes.
    pub const DEFAULT_TIME: Duration = Duration::from_secs(300);
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { bytes: Budget::DEFAULT_BYTES, time: Budget::DEFAULT_TIME }
    }
}

/// A failure to seal or verify an outputs directory.
#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    /// The directory itself could not be opened (or is a symbolic link).
    #[error("cannot open the outputs directory {}", path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An entry could not be examined.
    #[error("cannot examine {} in the outputs directory {}", ces_image::quote::quote(path), dir.display())]
    Walk {
        /// The outputs directory.
        dir: PathBuf,
        /// The entry, relative to the directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A reserved name the container used could not be moved aside.
    #[error("cannot move the container's {name} aside in the outputs directory {}", dir.display())]
    MoveAside {
        /// The outputs directory.
        dir: PathBuf,
        /// The reserved name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The outputs directory's owner permissions could not be restored.
    #[error("cannot give the outputs directory {} its owner's permissions back", dir.display())]
    Restore {
        /// The outputs directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// One of ces's files could not be written.
    #[error("cannot write {name} in the outputs directory {}", dir.display())]
    Write {
        /// The outputs directory.
        dir: PathBuf,
        /// The file, relative to the directory.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// JSON encoding failed.
    #[error("cannot encode {name}")]
    Encode {
        /// The file.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The directory has no manifest.
    #[error("{} has no {MANIFEST_NAME}", dir.display())]
    NoManifest {
        /// The directory.
        dir: PathBuf,
    },
    /// The manifest could not be read (not a regular file, too large, I/O).
    #[error("cannot read {}", path.display())]
    ReadManifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not a ces manifest.
    #[error("{} is not a ces outputs manifest", path.display())]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// `sha256:<hex>` of some bytes (how the audit log records the manifest).
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
