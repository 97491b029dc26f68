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
    /// The registry sent a request to another host, which asked for
    /// credentials: they are the registry's, not that host's, so none are sent.
    #[error("{what} on {registry} was redirected to {host}, which answered {status}; ces sends no credentials there")]
    RedirectDenied {
        /// The registry.
        registry: String,
        /// What was asked.
        what: String,
        /// The host that answered (`host[:port]`).
        host: String,
        /// Its status (401 or 403).
        status: reqwest::StatusCode,
    },
    /// The pull proxy refused or could not serve the request, and said why.
    #[error("the pull proxy {endpoint} answered {status}: {code}: {message}")]
    Proxy {
        /// The proxy (`host[:port]`).
        endpoint: String,
        /// Its status.
        status: reqwest::StatusCode,
        /// The OCI error code.
        code: String,
        /// Its message (escaped).
        message: String,
    },
    /// The registry redirected to a host it may not send requests to.
    #[error("{what} on {registry} was redirected to {host}, which is not a host it may redirect to")]
    RedirectOff {
        /// The registry.
        registry: String,
        /// What was asked.
        what: String,
        /// Where it redirected (`host[:port]`).
        host: String,
    },
    /// The registry sent a request to another host, which has nothing there.
    #[error("{what} on {registry} was redirected to {host}, which answered 404 Not Found")]
    NotFoundAt {
        /// The registry.
        registry: String,
        /// What was asked.
        what: String,
        /// The host that answered (`host[:port]`).
        host: String,
    },
    /// Redirects that come back where they were, or never end.
    #[error("redirect loop: {what} on {registry} was redirected {redirects} times without an answer")]
    RedirectLoop {
        /// The registry.
        registry: String,
        /// What was asked.
        what: String,
        /// Redirects followed before ces stopped.
        redirects: usize,
    },
    /// A redirect ces cannot follow (no usable `Location`, not `http(s)`).
    #[error("{what} on {registry} was redirected to a location ces cannot follow")]
    BadRedirect {
        /// The registry.
        registry: String,
        /// What was asked.
        what: String,
    },
    /// An `https` registry pointed ces (a redirect, its token realm) to plain
    /// `http` on a host not listed as insecure.
    #[error("{what} on {registry}: refusing the downgrade from https to plain http at {host}")]
    Downgrade {
        /// The registry.
        registry: String,
        /// What was asked.
        what: String,
        /// The plain-http host (`host[:port]`).
        host: String,
    },
    /// A `206` answer that is not the rest of the blob asked for.
    #[error("{what} on {registry}: the registry answered a range request with another range")]
    BadRange {
        /// The host that answered.
        registry: String,
        /// What was asked.
        what: String,
    },
    /// A body ended before its end.
    #[error("{what} on {registry} ended after {received} of {expected} bytes")]
    ShortBody {
        /// The host that answered.
        registry: String,
        /// What was asked.
        what: String,
        /// Bytes received (all tries together for a resumed blob).
        received: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// Every try failed; the source is the last failure.
    #[error("gave up on {what} from {registry} after {tries} tries")]
    GaveUp {
        /// The registry.
        registry: String,
        /// What was asked.
        what: String,
        /// Tries made.
        tries: u32,
        /// Why the last try failed.
        #[source]
        last: Box<RegistryError>,
    },
    /// The image's layers add up to more than the limit set; refused
    /// before any layer was fetched.
    #[error("image {reference} is {size} bytes to download, more than the limit of {limit} bytes")]
    ImageTooLarge {
        /// The reference.
        reference: String,
        /// Its config and layers, compressed, as the manifest says.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The store's file system, or the user's (or group's) disk quota on
    /// it, lacks the room for the blobs to download; refused before any
    /// layer was fetched.
    #[error("{}", no_room(path, *needed, shortfall))]
    NoRoom {
        /// The store's root.
        path: std::path::PathBuf,
        /// Bytes of the blobs still to fetch.
        needed: u64,
        /// What lacks the room.
        shortfall: crate::quota::Shortfall,
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

/// The message of [`RegistryError::NoRoom`].
fn no_room(path: &std::path::Path, needed: u64, shortfall: &crate::quota::Shortfall) -> String {
    shortfall.message(path, None, needed, "download")
}
