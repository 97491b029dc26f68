//! The operator's policy on what may be pulled and run, and by whom (see
//! docs/governance.md): `[policy] require_digest`, `[policy]
//! require_source_label` and `[pull] allowed_users` / `allowed_groups`.
//!
//! Every refusal is a [`PolicyError`] (or, for a missing label found during a
//! pull, [`ces_registry::RegistryError::MissingLabel`]), which the audit
//! records as `refused` and the diagnostics follow with a hint.

use anyhow::Context as _;
use ces_image::provenance::SOURCE;
use ces_image::{ImageRecord, ImageReference, Provenance};
use ces_registry::PullOptions;

use crate::identity::{self, Caller};
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
    /// `[pull]` lists are set, and ces runs in a user namespace, where the
    /// names and groups it sees may be the user's own.
    #[error(
        "ces runs in a user namespace{}, where it cannot check who may pull images on this machine",
        uid.map(|uid| format!(" (as uid {uid} outside it)")).unwrap_or_default()
    )]
    UserNamespace {
        /// The user outside the namespace, when known.
        uid: Option<u32>,
    },
    /// `-p` on a host address other than loopback, not in `[run] publish_addresses`.
    #[error("cannot publish a port on {address}: this machine's policy allows only the host's loopback")]
    PublishAddress {
        /// The address asked for.
        address: std::net::IpAddr,
    },
    /// A bind mount the policy does not allow (`[run] bind_roots`).
    #[error("cannot bind {bind:?} at {destination:?}: {}", problem.reason())]
    Bind {
        /// The source as given.
        bind: String,
        /// The destination as given.
        destination: String,
        /// Why not.
        problem: crate::binds::Problem,
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
        PolicyError::Bind { problem, .. } => bind_hints(*problem),
        PolicyError::PublishAddress { .. } => vec![
            "publish on loopback (-p 127.0.0.1:HOSTPORT:PORT, or just -p HOSTPORT:PORT) and reach it from this machine"
                .into(),
            "the operator can allow other addresses with [run] publish_addresses in /etc/ces/config.toml".into(),
        ],
        PolicyError::UserNamespace { .. } => {
            vec!["run ces outside the user namespace (not under `unshare` or in a rootless container)".into()]
        }
    }
}

fn bind_hints(problem: crate::binds::Problem) -> Vec<String> {
    use crate::binds::Problem;
    match problem {
        Problem::NotAllowed => vec!["the operator can allow binds of users' own directories with [run] bind_roots in /etc/ces/config.toml (see docs/config.md)".into()],
        Problem::OutsideRoots | Problem::Link => {
            vec!["bind a directory of yours under a directory that [run] bind_roots lists (see `ces run --dry-run` and docs/run.md)".into()]
        }
        Problem::NotOwned => vec!["bind a directory you own (create one, e.g. mkdir ./pgdata)".into()],
        Problem::Missing => vec!["create it first (e.g. mkdir ./pgdata); relative paths start at the current directory".into()],
        _ => Vec::new(),
    }
}

/// Before a run: `-p` listens on the host's loopback, or on an address the
/// operator allows (`[run] publish_addresses`).
pub fn check_publish_address(settings: &Settings, address: std::net::IpAddr) -> Result<(), PolicyError> {
    if address.is_loopback() || settings.run.publish_addresses.contains(&address) {
        return Ok(());
    }
    Err(PolicyError::PublishAddress { address })
}

/// The pull options the policy asks for (the labels a pull must find).
pub fn pull_options(settings: &Settings) -> PullOptions {
    let mut options = PullOptions { max_image_size: settings.max_image_size, ..PullOptions::default() };
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
/// `provenance` is the image's, read from its content-addressed manifest and
/// config (not the index's copy, which could be edited).
pub fn check_run(
    settings: &Settings,
    query: &str,
    record: &ImageRecord,
    provenance: &Provenance,
) -> Result<(), PolicyError> {
    if settings.policy.require_digest && !is_pinned(query) {
        let pinned = record.reference.with_digest(record.digest.clone()).to_string();
        return Err(PolicyError::DigestRequired { reference: query.to_owned(), pinned: Some(pinned) });
    }
    if settings.policy.require_source_label && provenance.source.is_none() {
        return Err(PolicyError::SourceLabelRequired { reference: record.reference.to_string() });
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
/// set, everyone may; root of the host (the operator) always may; otherwise
/// the user (under sudo, the one who ran sudo) must be listed, or be a member
/// of a listed group (primary or supplementary, as the system's group
/// database says now, through NSS: `id -Gn USER`). In a user namespace
/// (`unshare -r`) no one may: the password and group files, and `id`, that
/// ces would see there may be the user's own (bind mounts in a mount
/// namespace of theirs).
pub fn check_pull_enabled(settings: &Settings) -> anyhow::Result<()> {
    let pull = &settings.pull;
    if pull.open() {
        return Ok(());
    }
    let caller = identity::caller();
    if let Caller::Namespaced { uid } = caller {
        return Err(PolicyError::UserNamespace { uid }.into());
    }
    // The real uid, or under sudo the user who ran it, named by the user
    // database (never by `$USER`).
    let user = identity::policy_user()?;
    if caller == Caller::HostRoot && user.uid == 0 {
        return Ok(());
    }
    let users = pull.allowed_users.as_deref().unwrap_or_default();
    if users.iter().any(|u| *u == user.name || *u == user.uid.to_string()) {
        return Ok(());
    }
    let groups = pull.allowed_groups.as_deref().unwrap_or_default();
    if !groups.is_empty() {
        let member_of = identity::policy_groups(&user).context("cannot check [pull] allowed_groups")?;
        if groups.iter().any(|g| member_of.contains(g)) {
            return Ok(());
        }
    }
    Err(PolicyError::PullNotEnabled { user: user.name, uid: user.uid }.into())
}

/// Whether a client of the pull proxy, `name` (a user of its htpasswd
/// file), may pull under `[pull]`: listed by name, or a member of a listed
/// group as the system's user database says (a name it does not know is in
/// no group).
pub fn proxy_client_enabled(settings: &Settings, name: &str) -> Result<(), String> {
    let pull = &settings.pull;
    if pull.open() || pull.allowed_users.as_deref().unwrap_or_default().iter().any(|u| u == name) {
        return Ok(());
    }
    let groups = pull.allowed_groups.as_deref().unwrap_or_default();
    if !groups.is_empty() && name != "anonymous" {
        let member_of = identity::groups(Some(name)).unwrap_or_default();
        if groups.iter().any(|g| member_of.contains(g)) {
            return Ok(());
        }
    }
    Err(format!(
        "user {} is not enabled to pull ([pull] in {})",
        ces_image::quote::escape_message(name, 100),
        settings.config_shown()
    ))
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
    fn a_run_is_refused_by_the_policy_it_breaks() {
        let mut settings = Settings::load_with(None, std::path::Path::new("/nonexistent/ces.toml"), true).unwrap();
        let digest: ces_image::Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let record = ImageRecord {
            reference: "ghcr.io/lab/model:1".parse().unwrap(),
            digest: digest.clone(),
            media_type: String::new(),
            manifest_size: 0,
            pulled_at: None,
            index_digest: None,
            provenance: Provenance::default(),
            loaded_by: None,
        };
        let unlabelled = Provenance::default();
        let labelled = Provenance { source: Some("https://github.com/lab/model".into()), ..Default::default() };
        assert!(check_run(&settings, "ghcr.io/lab/model:1", &record, &unlabelled).is_ok(), "no policy");

        settings.policy.require_digest = true;
        let refused = check_run(&settings, "ghcr.io/lab/model:1", &record, &labelled).unwrap_err();
        let PolicyError::DigestRequired { reference, pinned: Some(pinned) } = &refused else { panic!("{refused}") };
        assert_eq!(
            (reference.as_str(), pinned.as_str()),
            ("ghcr.io/lab/model:1", &*format!("ghcr.io/lab/model@{digest}"))
        );
        assert!(check_run(&settings, &digest.to_string(), &record, &labelled).is_ok(), "pinned");

        settings.policy.require_source_label = true;
        let refused = check_run(&settings, &digest.to_string(), &record, &unlabelled).unwrap_err();
        assert!(
            matches!(&refused, PolicyError::SourceLabelRequired { reference } if reference == "ghcr.io/lab/model:1")
        );
        assert!(check_run(&settings, &digest.to_string(), &record, &labelled).is_ok(), "labelled");
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
}
