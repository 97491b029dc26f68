//! The operator's policy on what may be pulled and run, and by whom (see
//! docs/governance.md): `[policy] require_digest`, `[policy]
//! require_source_label` and `[pull] allowed_users` / `allowed_groups`.
//!
//! Every refusal is a [`PolicyError`] (or, for a missing label found during a
//! pull, [`ces_registry::RegistryError::MissingLabel`]), which the audit
//! records as `refused` and the diagnostics follow with a hint.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;
use ces_image::provenance::SOURCE;
use ces_image::{Digest, ImageRecord, ImageReference, Provenance, Store};
use ces_registry::PullOptions;

use crate::commands::audit;
use crate::settings::Settings;

/// A refusal by the operator's policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `[policy] require_digest`: a tag (or a short digest) was given.
    #[error("{reference} is not pinned by digest, and this machine's policy allows only images pinned by digest")]
    DigestRequired {
        /// The reference as given.
        reference: String,
        /// The pinned form of the stored image it names, when known.
        pinned: Option<String>,
    },
    /// `[policy] require_source_label`: the image does not say where its source is.
    #[error("image {reference} has no {SOURCE} label, and this machine's policy requires one")]
    SourceLabelRequired {
        /// The image.
        reference: String,
    },
    /// `[pull] allowed_users` / `allowed_groups`: this account is not enabled.
    #[error("user {user} (uid {uid}) is not enabled to pull images on this machine")]
    PullNotEnabled {
        /// The user checked (under sudo, the user who ran sudo).
        user: String,
        /// Their uid.
        uid: u32,
    },
}

/// The hint for an image without the source label (pull or run).
pub const SOURCE_LABEL_HINT: &str = "add the label where the image is built, then push and pull it again: `LABEL org.opencontainers.image.source=https://github.com/<owner>/<repo>` in the Dockerfile, or `docker build --label org.opencontainers.image.source=https://github.com/<owner>/<repo> ...`";

/// Hints for a policy refusal.
pub fn hints(error: &PolicyError) -> Vec<String> {
    match error {
        PolicyError::DigestRequired { pinned: Some(pinned), .. } => {
            vec![format!("name the image by its digest: ces run {pinned} ...")]
        }
        PolicyError::DigestRequired { reference, pinned: None } => {
            let name = reference.split('@').next().unwrap_or(reference);
            let name = name.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(name, |(name, _)| name);
            vec![
                format!("name the image by its digest: {name}@sha256:<digest>"),
                "the digest is printed by `docker push` and shown on the registry's page for the image".into(),
            ]
        }
        PolicyError::SourceLabelRequired { .. } => vec![SOURCE_LABEL_HINT.into()],
        PolicyError::PullNotEnabled { .. } => {
            vec!["ask your research coordinator to request CES access for your account".into()]
        }
    }
}

/// The pull options the policy asks for (the labels a pull must find).
pub fn pull_options(settings: &Settings) -> PullOptions {
    let mut options = PullOptions::default();
    if settings.policy.require_source_label {
        options.required_labels.push(SOURCE.to_owned());
    }
    options
}

/// Before a pull: whether the reference is pinned, when the policy requires it.
pub fn check_pull_reference(settings: &Settings, reference: &ImageReference) -> Result<(), PolicyError> {
    if settings.policy.require_digest && reference.digest().is_none() {
        return Err(PolicyError::DigestRequired { reference: reference.to_string(), pinned: None });
    }
    Ok(())
}

/// Before a run: the reference as given must be pinned (when required), and
/// the stored image must carry the source label (when required).
pub fn check_run(settings: &Settings, store: &Store, query: &str, record: &ImageRecord) -> anyhow::Result<()> {
    if settings.policy.require_digest && !is_pinned(query) {
        let pinned = record.reference.with_digest(record.digest.clone()).to_string();
        return Err(PolicyError::DigestRequired { reference: query.to_owned(), pinned: Some(pinned) }.into());
    }
    // From the content-addressed blobs, not the index's copy.
    if settings.policy.require_source_label && store.provenance(&record.digest)?.source.is_none() {
        return Err(PolicyError::SourceLabelRequired { reference: record.reference.to_string() }.into());
    }
    Ok(())
}

/// Whether `query` names an image by its full digest: `name@sha256:<hex>`,
/// `sha256:<hex>` or the 64 hex digits. A digest prefix is not a pin.
fn is_pinned(query: &str) -> bool {
    let hex = query.strip_prefix("sha256:").unwrap_or(query);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    query.parse::<ImageReference>().is_ok_and(|r| r.digest().is_some())
}

/// Before a pull: whether this account may pull. With neither `[pull]` list
/// set, everyone may; host root (the operator) always may; otherwise the
/// user (under sudo, the one who ran sudo) must be listed, or be a member of
/// a listed group (primary or supplementary, as the system's group database
/// says now, through NSS: `id -Gn USER`).
pub fn check_pull_enabled(settings: &Settings) -> anyhow::Result<()> {
    let pull = &settings.pull;
    if pull.open() {
        return Ok(());
    }
    let account = Account::current();
    if account.host_root {
        return Ok(());
    }
    let users = pull.allowed_users.as_deref().unwrap_or_default();
    if users.iter().any(|u| *u == account.name || *u == account.uid.to_string()) {
        return Ok(());
    }
    let groups = pull.allowed_groups.as_deref().unwrap_or_default();
    if !groups.is_empty() {
        let member_of = groups_of(&account.name)?;
        if groups.iter().any(|g| member_of.contains(g)) {
            return Ok(());
        }
    }
    Err(PolicyError::PullNotEnabled { user: account.name, uid: account.uid }.into())
}

/// The account a pull is checked for.
#[derive(Debug)]
struct Account {
    name: String,
    uid: u32,
    /// Root of the host (not root in a user namespace, not a user via sudo).
    host_root: bool,
}

impl Account {
    fn current() -> Account {
        let euid_root = rustix::process::geteuid().is_root();
        match outer_uid_of_root() {
            // Root in a user namespace (`unshare -r`) is the user who made it:
            // neither root nor able to vouch for SUDO_UID.
            Some(uid) if euid_root && uid != 0 => {
                let name = name_of(uid).unwrap_or_else(|| uid.to_string());
                Account { name, uid, host_root: false }
            }
            _ => {
                // As the audit records it: the real uid, or under sudo the user who ran it.
                let user = audit::current_user();
                Account { host_root: user.uid == 0 && euid_root, name: user.name, uid: user.uid }
            }
        }
    }
}

/// The host uid that this user namespace's uid 0 maps to (`None` when uid 0
/// is not mapped or the map cannot be read).
fn outer_uid_of_root() -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    map.lines().find_map(|line| {
        let mut fields = line.split_whitespace().map(|f| f.parse::<u32>());
        match (fields.next()?, fields.next()?) {
            (Ok(0), Ok(outside)) => Some(outside),
            _ => None,
        }
    })
}

/// `id`, by absolute path where it is (a `PATH` of the user's cannot stand in).
fn id_command() -> Command {
    let path = ["/usr/bin/id", "/bin/id"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("id");
    Command::new(path)
}

fn name_of(uid: u32) -> Option<String> {
    let output = id_command().arg("-nu").arg("--").arg(uid.to_string()).output().ok()?;
    let name = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !name.is_empty()).then_some(name)
}

/// `user`'s groups in the group database (primary and supplementary, NSS
/// included): what IG has approved now, not what the login session had.
fn groups_of(user: &str) -> anyhow::Result<Vec<String>> {
    let output = id_command()
        .arg("-Gn")
        .arg("--")
        .arg(user)
        .output()
        .context("cannot list the user's groups (id -Gn) to check [pull] allowed_groups")?;
    if !output.status.success() {
        anyhow::bail!(
            "cannot list the groups of {user} to check [pull] allowed_groups: id -Gn failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect())
}

/// An image's provenance as the audit records it (`None` when it says nothing).
pub fn audit_provenance(provenance: &Provenance) -> Option<Box<ces_audit::Provenance>> {
    if provenance.is_empty() {
        return None;
    }
    let p = provenance.clone();
    Some(Box::new(ces_audit::Provenance {
        source: p.source,
        revision: p.revision,
        created: p.created,
        version: p.version,
        base_name: p.base_name,
        base_digest: p.base_digest,
    }))
}

/// The provenance of a stored image, for a run's record (`None` when the
/// image says nothing, or its blobs cannot be read: the run happened, and its
/// record must still be written).
pub fn stored_provenance(settings: &Settings, digest: &Digest) -> Option<Box<ces_audit::Provenance>> {
    let provenance = Store::open(&settings.storage_root).and_then(|store| store.provenance(digest));
    match provenance {
        Ok(provenance) => audit_provenance(&provenance),
        Err(error) => {
            tracing::warn!(%error, %digest, "cannot read the image's provenance for the audit record");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_full_digests_are_pins() {
        let hex = "ab".repeat(32);
        for yes in [
            format!("ghcr.io/a/b@sha256:{hex}"),
            format!("ghcr.io/a/b:1@sha256:{hex}"),
            format!("sha256:{hex}"),
            hex.clone(),
        ] {
            assert!(is_pinned(&yes), "{yes}");
        }
        for no in ["ghcr.io/a/b:1", "ghcr.io/a/b", "sha256:abab", &hex[..12], "busybox"] {
            assert!(!is_pinned(no), "{no}");
        }
    }

    #[test]
    fn the_generic_digest_hint_drops_the_tag_but_not_the_port() {
        let hint = |reference: &str| {
            hints(&PolicyError::DigestRequired { reference: reference.into(), pinned: None }).remove(0)
        };
        assert_eq!(hint("ghcr.io/lab/model:1.2"), "name the image by its digest: ghcr.io/lab/model@sha256:<digest>");
        assert_eq!(
            hint("127.0.0.1:5000/lab/model"),
            "name the image by its digest: 127.0.0.1:5000/lab/model@sha256:<digest>"
        );
    }

    #[test]
    fn the_uid_map_of_this_process_maps_root() {
        // On the host (an identity map) or in a user namespace that maps root.
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
        if map.split_whitespace().next() == Some("0") {
            assert!(outer_uid_of_root().is_some(), "{map}");
        }
    }
}
