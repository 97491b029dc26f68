//! What can go wrong talking to a registry.

use ces_image::{Digest, StoreError};

/// A failed registry operation. Every variant names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry is not in the allowlist; nothing was sent.
    #[error("registry {registry} is not allowed (allowed: {})", if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") })]
    NotAllowed {
        /// The registry asked for.
        registry: String,
        /// The allowlist.
        allowed: Vec<String>,
    },
    /// The registry could not be reached (DNS, connection, TLS, timeout).
    #[error("cannot reach registry {registry}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry or its token service rejected the credentials.
    #[error("registry {registry} rejected the credentials of user {user}")]
    BadCredentials {
        /// The registry.
        registry: String,
        /// The user whose token was rejected.
        user: String,
    },
    /// Access denied to the repository.
    #[error("not authorized to pull {repository} from {registry}{}", if *anonymous { " anonymously" } else { "" })]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// Whether the pull was anonymous (a private image then needs credentials).
        anonymous: bool,
    },
    /// The manifest (repository, tag or digest) does not exist.
    #[error("image {reference} not found in the registry")]
    NotFound {
        /// The reference.
        reference: String,
    },
    /// The index offers no manifest for this platform.
    #[error("image {reference} has no manifest for {platform} (it offers: {})", if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform wanted.
        platform: String,
        /// The platforms on offer.
        available: Vec<String>,
    },
    /// A manifest fetched by digest does not hash to that digest.
    #[error("manifest of {reference} does not match its digest {expected} (got {actual})")]
    ManifestDigestMismatch {
        /// The reference.
        reference: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what came.
        actual: Digest,
    },
    /// A manifest or config is larger than ces accepts.
    #[error("{what} of {reference} is larger than the {limit}-byte limit")]
    TooLarge {
        /// `manifest` or `config`.
        what: &'static str,
        /// The reference.
        reference: String,
        /// The limit.
        limit: u64,
    },
    /// The image config is not valid JSON of the OCI shape.
    #[error("the config of {reference} is not a valid image config")]
    BadConfig {
        /// The reference.
        reference: String,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The image lacks a label the pull requires (refused after reading the
    /// config, before any layer was fetched; nothing was stored).
    #[error("image {reference} has no {label} label")]
    MissingLabel {
        /// The reference.
        reference: String,
        /// The label required.
        label: String,
    },
    /// The registry answered with an unexpected status.
    #[error("registry {registry} answered {status} to {what}")]
    Status {
        /// The registry.
        registry: String,
        /// What was asked (e.g. `GET manifest ns/app:tag`).
        what: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
    },
    /// The registry's auth challenge or token answer could not be used.
    #[error("registry {registry} sent an authentication answer ces cannot use: {detail}")]
    BadAuth {
        /// The registry.
        registry: String,
        /// What was wrong with it.
        detail: &'static str,
    },
    /// A transfer broke off.
    #[error("download of {what} from {registry} failed")]
    Transfer {
        /// The registry.
        registry: String,
        /// The blob or manifest.
        what: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// A manifest could not be used.
    #[error(transparent)]
    Manifest(#[from] ces_image::manifest::ManifestError),
    /// The store refused what arrived (digest or size mismatch, disk full...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
}
