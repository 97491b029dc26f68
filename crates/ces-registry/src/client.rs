//! The distribution API client: authentication (Basic, and the Bearer token
//! flow GHCR and Docker Hub use), manifests with a size limit, and blobs
//! streamed into the store.
//!
//! Redirects are followed here, by hand, rather than by reqwest, so that
//! each hop is judged: credentials go only to the registry's own origin (and
//! Basic only to the token realm's), a challenge is taken only from the
//! registry itself, `https` never falls back to `http` unless that host is
//! listed as insecure, and a loop is called a loop.
//!
//! Real registries rate-limit (`429`), have bad gateways (`502`–`504`) and
//! drop connections: every request is tried again with backoff a bounded
//! number of times, and a blob broken off resumes with a `Range` request
//! where the registry honours one (the bytes already written stay, and the
//! digest is still checked over the whole blob when it is committed).

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ces_image::store::BlobWriter;
use ces_image::{Digest, ImageReference, Store};
use futures_util::StreamExt;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LOCATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{StatusCode, Url};

use crate::auth::{Challenge, Credentials};
use crate::error::RegistryError;
use crate::pull::{PullReporter, Retry};

/// Redirects followed for one request before it is called a loop (as
/// browsers and reqwest do).
const MAX_REDIRECTS: usize = 10;

/// Where ces may pull from, and how.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Registries that may be pulled from (`host[:port]`). Anything else is
    /// refused before a single packet is sent.
    pub allowed: Vec<String>,
    /// Hosts (`host[:port]`) reached over plain HTTP: registries of the
    /// allowlist, and the only hosts an `https` registry may send ces to
    /// over `http` (a token realm, a redirect).
    pub insecure: Vec<String>,
    /// Where a registry may redirect a request (`host[:port]`; its own host
    /// always): `None` for anywhere (over `https`).
    pub redirect_hosts: Option<Vec<String>>,
    /// A pull proxy (`ces proxy`) that every request goes through instead
    /// of the registry itself: the registry stays the one allowed and named.
    pub mirror: Option<Mirror>,
}

/// A pull proxy, and the credentials for it (the user's own, for the
/// registry, go along in [`UPSTREAM_AUTHORIZATION`]).
#[derive(Debug, Clone)]
pub struct Mirror {
    /// `http[s]://host[:port]`.
    pub url: Url,
    /// Who the user is to the proxy.
    pub credentials: Credentials,
}

/// The header that carries the user's credentials for the registry through
/// a pull proxy (`Basic ...`): the proxy uses them for this request only.
pub const UPSTREAM_AUTHORIZATION: &str = "x-ces-upstream-authorization";

/// How often, and how patiently, a failed request is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per request, the first included (at least 1).
    pub tries: u32,
    /// The wait before the second try; it doubles before each next one.
    pub first_delay: Duration,
    /// The longest wait between tries.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured: a registry asking for more gets this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, waiting 0.5, 1, 2 and 4 s (or what `Retry-After` says, up
    /// to a minute): as patient as docker's and skopeo's pulls.
    fn default() -> Self {
        RetryPolicy {
            tries: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed try `attempt` (1-based): `Retry-After` when the
    /// registry said (capped), else exponential backoff.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(asked) => asked.min(self.max_retry_after),
            None => self.first_delay.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(self.max_delay),
        }
    }
}

/// A registry client bound to an allowlist.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    config: ClientConfig,
    retry: RetryPolicy,
}

impl Client {
    /// A client with ces's timeouts, user agent and [`RetryPolicy::default`].
    pub fn new(config: ClientConfig) -> Result<Client, RegistryError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("ces/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            // Followed by hand: see the module's doc.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(RegistryError::Client)?;
        Ok(Client { http, config, retry: RetryPolicy::default() })
    }

    /// The same client, retrying as `retry` says.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Client {
        self.retry = RetryPolicy { tries: retry.tries.max(1), ..retry };
        self
    }

    /// Checks the allowlist; the only way to a [`Session`].
    pub fn check_allowed(&self, registry: &str) -> Result<(), RegistryError> {
        if self.config.allowed.iter().any(|a| a == registry) {
            Ok(())
        } else {
            Err(RegistryError::NotAllowed { registry: registry.to_owned(), allowed: self.config.allowed.clone() })
        }
    }

    /// Opens an authenticated session for pulling `reference`'s repository.
    /// Credentials are checked here, so a wrong token is reported as such
    /// rather than as a missing image.
    pub async fn session(
        &self,
        reference: &ImageReference,
        credentials: &Credentials,
        reporter: &dyn PullReporter,
    ) -> Result<Session, RegistryError> {
        self.check_allowed(reference.registry())?;
        let registry = reference.registry().to_owned();
        let scheme = if self.config.insecure.contains(&registry) { "http" } else { "https" };
        // Docker Hub's API lives on another host than its name.
        let host = if registry == "docker.io" { "registry-1.docker.io" } else { registry.as_str() };
        let bad_host =
            || RegistryError::BadAuth { registry: registry.clone(), detail: "the registry name is not a host" };
        // Through a proxy: its /v2/<registry>/<repository>, as its user, the
        // user's own credentials for the registry alongside.
        let (base, repository, session_credentials, upstream) = match &self.config.mirror {
            Some(mirror) => (
                mirror.url.join("/v2/").map_err(|_| bad_host())?,
                format!("{registry}/{}", reference.repository()),
                mirror.credentials.clone(),
                credentials.basic_header(),
            ),
            None => (
                Url::parse(&format!("{scheme}://{host}/v2/")).map_err(|_| bad_host())?,
                reference.repository().to_owned(),
                credentials.clone(),
                None,
            ),
        };
        let session = Session {
            http: self.http.clone(),
            base,
            registry,
            repository,
            upstream,
            proxy: self.config.mirror.is_some(),
            redirect_hosts: self.config.redirect_hosts.clone(),
            credentials: session_credentials,
            authorization: Mutex::new(None),
            insecure: self.config.insecure.clone(),
            retry: self.retry.clone(),
            retries: AtomicU32::new(0),
            refetched: AtomicU64::new(0),
        };
        session.authenticate(reporter).await?;
        Ok(session)
    }
}

/// An authenticated conversation with one repository of one registry.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    /// `<scheme>://<host>/v2/`: its origin is the registry's, the only one
    /// that gets the session's `Authorization`.
    base: Url,
    registry: String,
    repository: String,
    /// Through a proxy: the user's credentials for the registry, sent to
    /// the proxy alone.
    upstream: Option<String>,
    /// Whether the session goes through a pull proxy.
    proxy: bool,
    /// See [`ClientConfig::redirect_hosts`].
    redirect_hosts: Option<Vec<String>>,
    credentials: Credentials,
    authorization: Mutex<Option<String>>,
    insecure: Vec<String>,
    retry: RetryPolicy,
    retries: AtomicU32,
    refetched: AtomicU64,
}

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes (their digest is the manifest's identity).
    pub bytes: Vec<u8>,
    /// The `Content-Type` the registry sent.
    pub content_type: Option<String>,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// Why one try failed: worth another (after the wait the registry asked
/// for, if it did), or not.
enum TryError {
    Again { error: RegistryError, retry_after: Option<Duration> },
    Fatal(RegistryError),
}

impl From<RegistryError> for TryError {
    fn from(error: RegistryError) -> Self {
        TryError::Fatal(error)
    }
}

impl From<ces_image::StoreError> for TryError {
    fn from(error: ces_image::StoreError) -> Self {
        TryError::Fatal(error.into())
    }
}

/// Credentials for one request, sent only to `origin`.
struct Auth<'a> {
    origin: &'a Url,
    value: String,
}

/// `host[:port]` of a URL, as the allowlist and insecure list name hosts.
fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Statuses that say "not now" rather than "no".
fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504)
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// Why a try failed, in ces's words (never text the registry chose).
fn reason(error: &RegistryError) -> String {
    match error {
        RegistryError::Status { status, .. } => format!("the registry answered {status}"),
        RegistryError::Transfer { .. } => "the connection broke off".to_owned(),
        RegistryError::ShortBody { received, .. } => format!("the body ended after {received} bytes"),
        RegistryError::Unreachable { .. } => "the connection failed".to_owned(),
        other => other.to_string(),
    }
}

impl Session {
    /// The registry this session talks to.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Where its requests go (`host[:port]`): the registry, or the proxy.
    pub fn endpoint(&self) -> String {
        host_of(&self.base)
    }

    /// Tries made again so far, all requests together.
    pub fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Bytes of blobs downloaded and thrown away so far (a download
    /// restarted from its first byte because the registry ignored `Range`).
    pub fn refetched(&self) -> u64 {
        self.refetched.load(Ordering::Relaxed)
    }

    fn unauthorized(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            anonymous: self.credentials == Credentials::Anonymous,
        }
    }

    fn bad_credentials(&self) -> RegistryError {
        RegistryError::BadCredentials {
            registry: self.registry.clone(),
            user: self.credentials.user().unwrap_or_default().to_owned(),
        }
    }

    fn transfer(&self, what: &str) -> impl FnOnce(reqwest::Error) -> TryError {
        let (registry, what) = (self.registry.clone(), what.to_owned());
        move |source| TryError::Again { error: RegistryError::Transfer { registry, what, source }, retry_after: None }
    }

    fn set_authorization(&self, value: Option<String>) {
        *self.authorization.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = value;
    }

    fn registry_auth(&self) -> Option<Auth<'_>> {
        let value = self.authorization.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()?;
        Some(Auth { origin: &self.base, value })
    }

    /// Whether `url` is the registry itself (its scheme, host and port).
    fn is_registry(&self, url: &Url) -> bool {
        same_origin(url, &self.base)
    }

    /// Refuses a step from `https` to plain `http`, unless that host is
    /// listed as insecure: credentials would travel in clear, and a
    /// manifest could be swapped on the way.
    fn check_downgrade(&self, from: &Url, to: &Url, what: &str) -> Result<(), RegistryError> {
        match (from.scheme(), to.scheme()) {
            ("https", "http") if !self.insecure.contains(&host_of(to)) => Err(RegistryError::Downgrade {
                registry: self.registry.clone(),
                what: what.to_owned(),
                host: host_of(to),
            }),
            (_, "http" | "https") => Ok(()),
            _ => Err(RegistryError::BadRedirect { registry: self.registry.clone(), what: what.to_owned() }),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or has been tried
    /// [`RetryPolicy::tries`] times, waiting between tries and telling the
    /// reporter why.
    async fn retrying<T>(
        &self,
        what: &str,
        reporter: &dyn PullReporter,
        mut attempt: impl AsyncFnMut() -> Result<T, TryError>,
    ) -> Result<T, RegistryError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (error, retry_after) = match attempt().await {
                Ok(value) => return Ok(value),
                Err(TryError::Fatal(error)) => return Err(error),
                Err(TryError::Again { error, retry_after }) => (error, retry_after),
            };
            self.pause(what, None, 0, tries, error, retry_after, reporter).await?;
        }
    }

    /// After failed try `tries`: gives up (the error says how many tries
    /// were made), or tells the reporter and waits.
    #[allow(clippy::too_many_arguments)]
    async fn pause(
        &self,
        what: &str,
        blob: Option<&Digest>,
        kept: u64,
        tries: u32,
        error: RegistryError,
        retry_after: Option<Duration>,
        reporter: &dyn PullReporter,
    ) -> Result<(), RegistryError> {
        if tries >= self.retry.tries {
            return Err(RegistryError::GaveUp {
                registry: self.registry.clone(),
                what: what.to_owned(),
                tries,
                last: Box::new(error),
            });
        }
        let wait = self.retry.wait(tries, retry_after);
        tracing::debug!(what, tries, ?wait, error = %error, "retrying");
        reporter.retrying(&Retry {
            what,
            blob,
            attempt: tries,
            tries: self.retry.tries,
            reason: reason(&error),
            wait,
            kept,
        });
        self.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// One GET of `url`, following redirects by hand (see the module's doc);
    /// returns the answer and the URL that gave it.
    async fn follow(
        &self,
        url: Url,
        what: &str,
        headers: &[(reqwest::header::HeaderName, String)],
        auth: Option<&Auth<'_>>,
    ) -> Result<(reqwest::Response, Url), TryError> {
        let mut url = url;
        let mut visited: Vec<Url> = Vec::new();
        loop {
            let mut request = self.http.get(url.clone());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            // Never to another origin: a CDN, another port, the same host
            // over another scheme.
            if let Some(auth) = auth.filter(|auth| same_origin(&url, auth.origin)) {
                request = request.header(AUTHORIZATION, &auth.value);
            }
            if let Some(upstream) = self.upstream.as_ref().filter(|_| self.is_registry(&url)) {
                request = request.header(UPSTREAM_AUTHORIZATION, upstream);
            }
            let response = request.send().await.map_err(|source| TryError::Again {
                error: RegistryError::Unreachable { registry: host_of(&url), source },
                retry_after: None,
            })?;
            if !is_redirect(response.status()) {
                return Ok((response, url));
            }
            let next = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| RegistryError::BadRedirect { registry: self.registry.clone(), what: what.to_owned() })?;
            self.check_downgrade(&url, &next, what)?;
            if let Some(hosts) = &self.redirect_hosts
                && !self.is_registry(&next)
                && !hosts.contains(&host_of(&next))
            {
                return Err(TryError::Fatal(RegistryError::RedirectOff {
                    registry: self.registry.clone(),
                    what: what.to_owned(),
                    host: host_of(&next),
                }));
            }
            visited.push(url);
            if visited.contains(&next) || visited.len() > MAX_REDIRECTS {
                return Err(TryError::Fatal(RegistryError::RedirectLoop {
                    registry: self.registry.clone(),
                    what: what.to_owned(),
                    redirects: visited.len(),
                }));
            }
            url = next;
        }
    }

    /// One try of a GET on the registry: redirects followed, one auth
    /// challenge answered (an expired token, or a scope it wants spelled
    /// differently) if it came from the registry itself, transient statuses
    /// turned into [`TryError::Again`].
    async fn fetch(
        &self,
        url: &Url,
        what: &str,
        headers: &[(reqwest::header::HeaderName, String)],
        reporter: &dyn PullReporter,
    ) -> Result<(reqwest::Response, Url), TryError> {
        for round in 0..2 {
            let auth = self.registry_auth();
            let (response, at) = self.follow(url.clone(), what, headers, auth.as_ref()).await?;
            let status = response.status();
            if !self.is_registry(&at) && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                // Not the registry: its challenge is not ours to answer, and
                // the user's credentials are not for it.
                return Err(TryError::Fatal(RegistryError::RedirectDenied {
                    registry: self.registry.clone(),
                    what: what.to_owned(),
                    host: host_of(&at),
                    status,
                }));
            }
            if status == StatusCode::UNAUTHORIZED {
                match challenge_of(response.headers()) {
                    Some(challenge) if round == 0 => {
                        self.answer(&challenge, reporter).await?;
                        continue;
                    }
                    _ => return Err(TryError::Fatal(self.unauthorized())),
                }
            }
            if self.proxy && self.is_registry(&at) && !status.is_success() && status != StatusCode::UNAUTHORIZED {
                // The pull proxy (ces's own) says why, and has tried its
                // upstream already: its answer stands.
                let message =
                    read_limited(response, 16 << 10).await.ok().flatten().and_then(|body| proxy_message(&body));
                if let Some((code, message)) = message {
                    return Err(TryError::Fatal(RegistryError::Proxy {
                        endpoint: host_of(&at),
                        status,
                        code,
                        message,
                    }));
                }
                return Err(TryError::Fatal(RegistryError::Status {
                    registry: host_of(&at),
                    what: what.to_owned(),
                    status,
                }));
            }
            if is_transient(status) {
                return Err(TryError::Again {
                    retry_after: retry_after(response.headers()),
                    error: RegistryError::Status { registry: host_of(&at), what: what.to_owned(), status },
                });
            }
            return Ok((response, at));
        }
        Err(TryError::Fatal(self.unauthorized()))
    }

    /// Probes `/v2/` and answers its challenge: Basic credentials, or a
    /// Bearer token for `repository:<repo>:pull` from the token service.
    async fn authenticate(&self, reporter: &dyn PullReporter) -> Result<(), RegistryError> {
        let what = "GET /v2/";
        let response = self
            .retrying(what, reporter, async || {
                match self.follow(self.base.clone(), what, &[], None).await {
                    // A registry that cannot be reached at all is most likely
                    // misnamed (or plain HTTP): say so now, not after minutes.
                    Err(TryError::Again { error: error @ RegistryError::Unreachable { .. }, .. }) => {
                        Err(TryError::Fatal(error))
                    }
                    Err(error) => Err(error),
                    Ok((response, at)) if is_transient(response.status()) => Err(TryError::Again {
                        retry_after: retry_after(response.headers()),
                        error: RegistryError::Status {
                            registry: host_of(&at),
                            what: what.to_owned(),
                            status: response.status(),
                        },
                    }),
                    Ok(answer) => Ok(answer),
                }
            })
            .await;
        let (response, at) = response?;
        if response.status() != StatusCode::UNAUTHORIZED {
            // Open registry (or an odd one): proceed, requests will tell.
            return Ok(());
        }
        if !self.is_registry(&at) {
            return Err(RegistryError::RedirectDenied {
                registry: self.registry.clone(),
                what: what.to_owned(),
                host: host_of(&at),
                status: response.status(),
            });
        }
        let challenge = challenge_of(response.headers()).ok_or(RegistryError::BadAuth {
            registry: self.registry.clone(),
            detail: "401 without a usable WWW-Authenticate challenge",
        })?;
        self.answer(&challenge, reporter).await
    }

    async fn answer(&self, challenge: &Challenge, reporter: &dyn PullReporter) -> Result<(), RegistryError> {
        match challenge {
            Challenge::Basic => {
                let Some(basic) = self.credentials.basic_header() else {
                    return Err(self.unauthorized());
                };
                let auth = Auth { origin: &self.base, value: basic.clone() };
                let what = "GET /v2/ with Basic credentials";
                let status = self
                    .retrying(what, reporter, async || {
                        let (response, at) = self.follow(self.base.clone(), what, &[], Some(&auth)).await?;
                        let status = response.status();
                        if is_transient(status) {
                            return Err(TryError::Again {
                                retry_after: retry_after(response.headers()),
                                error: RegistryError::Status { registry: host_of(&at), what: what.to_owned(), status },
                            });
                        }
                        Ok(status)
                    })
                    .await?;
                if status == StatusCode::UNAUTHORIZED {
                    return Err(self.bad_credentials());
                }
                self.set_authorization(Some(basic));
                Ok(())
            }
            Challenge::Bearer { realm, service, .. } => {
                let token = self.fetch_token(realm, service.as_deref(), reporter).await?;
                self.set_authorization(Some(format!("Bearer {token}")));
                Ok(())
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        reporter: &dyn PullReporter,
    ) -> Result<String, RegistryError> {
        let scope = format!("repository:{}:pull", self.repository);
        let what = format!("token request for {scope}");
        let mut url = Url::parse(realm).ok().filter(|url| url.has_host()).ok_or(RegistryError::BadAuth {
            registry: self.registry.clone(),
            detail: "the token realm is not a URL",
        })?;
        // The realm is where the user's Basic credentials go.
        self.check_downgrade(&self.base, &url, &what)?;
        if let Some(hosts) = &self.redirect_hosts
            && !self.is_registry(&url)
            && !hosts.contains(&host_of(&url))
        {
            return Err(RegistryError::RedirectOff {
                registry: self.registry.clone(),
                what: what.clone(),
                host: host_of(&url),
            });
        }
        url.query_pairs_mut().append_pair("scope", &scope);
        if let Some(service) = service {
            url.query_pairs_mut().append_pair("service", service);
        }
        let auth = self.credentials.basic_header().map(|value| Auth { origin: &url, value });
        let bytes = self
            .retrying(&what, reporter, async || {
                let (response, at) = self.follow(url.clone(), &what, &[], auth.as_ref()).await?;
                match response.status() {
                    s if s.is_success() => {}
                    s if is_transient(s) => {
                        return Err(TryError::Again {
                            retry_after: retry_after(response.headers()),
                            error: RegistryError::Status { registry: host_of(&at), what: what.clone(), status: s },
                        });
                    }
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if self.credentials != Credentials::Anonymous => {
                        return Err(TryError::Fatal(self.bad_credentials()));
                    }
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(TryError::Fatal(self.unauthorized()));
                    }
                    status => {
                        return Err(TryError::Fatal(RegistryError::Status {
                            registry: host_of(&at),
                            what: what.clone(),
                            status,
                        }));
                    }
                }
                read_limited(response, 1 << 20).await.map_err(self.transfer("token"))
            })
            .await?
            .ok_or(RegistryError::BadAuth { registry: self.registry.clone(), detail: "token answer too large" })?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| RegistryError::BadAuth {
            registry: self.registry.clone(),
            detail: "token answer is not JSON",
        })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or(RegistryError::BadAuth { registry: self.registry.clone(), detail: "token answer has no token" })
    }

    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base.join(path).map_err(|_| RegistryError::BadAuth {
            registry: self.registry.clone(),
            detail: "the repository name does not make a URL",
        })
    }

    /// A 404 from the registry, or from where it redirected to (named).
    fn not_found(&self, at: &Url, what: &str, reference: String) -> RegistryError {
        if self.is_registry(at) {
            RegistryError::NotFound { reference }
        } else {
            RegistryError::NotFoundAt { registry: self.registry.clone(), what: what.to_owned(), host: host_of(at) }
        }
    }

    /// Fetches a manifest by tag or digest, reading at most `limit` bytes.
    /// Fetched by digest, the bytes must hash to it.
    pub async fn manifest(
        &self,
        reference: &str,
        limit: u64,
        reporter: &dyn PullReporter,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = self.url(&format!("{}/manifests/{}", self.repository, reference))?;
        let shown = format!(
            "{}/{}{}{}",
            self.registry,
            self.repository,
            if reference.contains(':') { "@" } else { ":" },
            reference
        );
        let what = format!("GET manifest {shown}");
        let accept = [(ACCEPT, ces_image::manifest::ACCEPT.to_owned())];
        let (bytes, content_type) = self
            .retrying(&what, reporter, async || {
                let (response, at) = self.fetch(&url, &what, &accept, reporter).await?;
                match response.status() {
                    s if s.is_success() => {}
                    StatusCode::NOT_FOUND => return Err(self.not_found(&at, &what, shown.clone()).into()),
                    StatusCode::FORBIDDEN => return Err(self.unauthorized().into()),
                    status => {
                        return Err(RegistryError::Status { registry: host_of(&at), what: what.clone(), status }.into());
                    }
                }
                let content_type =
                    response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let bytes = read_limited(response, limit).await.map_err(self.transfer(&format!("manifest {shown}")))?;
                Ok((bytes, content_type))
            })
            .await?;
        let bytes = bytes.ok_or(RegistryError::TooLarge { what: "manifest", reference: shown.clone(), limit })?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = reference.parse::<Digest>().ok().filter(|expected| *expected != digest) {
            return Err(RegistryError::ManifestDigestMismatch { reference: shown, expected, actual: digest });
        }
        Ok(FetchedManifest { bytes, content_type, digest })
    }

    /// Streams blob `digest` into `store` and commits it there, verified:
    /// `size` bytes that hash to `digest`. A transfer that breaks off is
    /// tried again (see [`RetryPolicy`]), resuming where it stopped when
    /// the registry honours `Range`.
    pub async fn blob(
        &self,
        digest: &Digest,
        size: u64,
        store: &Store,
        reporter: &dyn PullReporter,
    ) -> Result<(), RegistryError> {
        let url = self.url(&format!("{}/blobs/{digest}", self.repository))?;
        let what = format!("GET blob {digest}");
        let mut download = Download { writer: store.blob_writer(digest, Some(size))?, have: 0, ranges: true };
        reporter.blob_file(digest, download.writer.path());
        let mut tries = 0;
        loop {
            tries += 1;
            let (error, retry_after) =
                match self.blob_try(&url, &what, digest, size, store, &mut download, reporter).await {
                    Ok(()) => break,
                    Err(TryError::Fatal(error)) => return Err(error),
                    Err(TryError::Again { error, retry_after }) => (error, retry_after),
                };
            let kept = if download.ranges { download.have } else { 0 };
            self.pause(&what, Some(digest), kept, tries, error, retry_after, reporter).await?;
        }
        download.writer.commit()?;
        Ok(())
    }

    /// One try of a blob download, from `download.have` on.
    #[allow(clippy::too_many_arguments)]
    async fn blob_try(
        &self,
        url: &Url,
        what: &str,
        digest: &Digest,
        size: u64,
        store: &Store,
        download: &mut Download,
        reporter: &dyn PullReporter,
    ) -> Result<(), TryError> {
        let from = if download.ranges { download.have } else { 0 };
        let headers: Vec<_> = (from > 0).then(|| (RANGE, format!("bytes={from}-"))).into_iter().collect();
        let (response, at) = self.fetch(url, what, &headers, reporter).await?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT if from > 0 => {
                let expected = format!("bytes {from}-{}/{size}", size - 1);
                let range = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
                if range.map(str::trim) != Some(expected.as_str()) {
                    // Not the rest of this blob: start again from its first
                    // byte, without asking for ranges any more.
                    download.ranges = false;
                    return Err(TryError::Again {
                        error: RegistryError::BadRange { registry: host_of(&at), what: what.to_owned() },
                        retry_after: Some(Duration::ZERO),
                    });
                }
            }
            s if s.is_success() && s != StatusCode::PARTIAL_CONTENT => {
                if download.have > 0 {
                    // The whole blob again (no Range asked, or the registry
                    // ignores it): what was written goes.
                    reporter.layer_restarted(digest, download.have);
                    self.refetched.fetch_add(download.have, Ordering::Relaxed);
                    download.writer = store.blob_writer(digest, Some(size))?;
                    reporter.blob_file(digest, download.writer.path());
                    download.have = 0;
                    download.ranges = false;
                }
                if let Some(length) = response.content_length().filter(|l| *l != size) {
                    let error =
                        ces_image::StoreError::SizeMismatch { digest: digest.clone(), expected: size, actual: length };
                    return Err(error.into());
                }
            }
            StatusCode::NOT_FOUND => {
                let reference = format!("{}/{}@{digest} (blob)", self.registry, self.repository);
                return Err(self.not_found(&at, what, reference).into());
            }
            StatusCode::FORBIDDEN => return Err(self.unauthorized().into()),
            status => {
                return Err(RegistryError::Status { registry: host_of(&at), what: what.to_owned(), status }.into());
            }
        }
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.transfer(&digest.to_string()))?;
            if let Err(e) = download.writer.write_all(&chunk) {
                return Err(download.writer.write_error(e).into());
            }
            download.have += chunk.len() as u64;
            reporter.layer_progress(digest, chunk.len() as u64);
        }
        if download.have < size {
            return Err(TryError::Again {
                error: RegistryError::ShortBody {
                    registry: host_of(&at),
                    what: what.to_owned(),
                    received: download.have,
                    expected: size,
                },
                retry_after: None,
            });
        }
        Ok(())
    }

    /// Whether the registry gives this session blob `digest` of the
    /// repository (it answers a request for its first byte): the
    /// repository has it, and these credentials may read it.
    pub async fn has_blob(&self, digest: &Digest, reporter: &dyn PullReporter) -> Result<bool, RegistryError> {
        let url = self.url(&format!("{}/blobs/{digest}", self.repository))?;
        let what = format!("GET blob {digest} (its first byte)");
        let headers = [(RANGE, "bytes=0-0".to_owned())];
        self.retrying(&what, reporter, async || {
            let (response, at) = self.fetch(&url, &what, &headers, reporter).await?;
            match response.status() {
                s if s.is_success() => Ok(true),
                StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(false),
                status => Err(RegistryError::Status { registry: host_of(&at), what: what.clone(), status }.into()),
            }
        })
        .await
    }

    /// The repository's tag list (`tags/list`, its JSON as sent), at most
    /// `limit` bytes; `query` is passed on (`n=...&last=...`).
    pub async fn tags(&self, query: &str, limit: u64, reporter: &dyn PullReporter) -> Result<Vec<u8>, RegistryError> {
        let mut url = self.url(&format!("{}/tags/list", self.repository))?;
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        let what = format!("GET tags of {}/{}", self.registry, self.repository);
        self.retrying(&what, reporter, async || {
            let (response, at) = self.fetch(&url, &what, &[], reporter).await?;
            match response.status() {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND => {
                    return Err(self.not_found(&at, &what, format!("{}/{}", self.registry, self.repository)).into());
                }
                StatusCode::FORBIDDEN => return Err(self.unauthorized().into()),
                status => {
                    return Err(RegistryError::Status { registry: host_of(&at), what: what.clone(), status }.into());
                }
            }
            read_limited(response, limit).await.map_err(self.transfer("tags"))
        })
        .await?
        .ok_or(RegistryError::TooLarge { what: "tag list", reference: what.clone(), limit })
    }

    /// Fetches a small blob (a config) into memory, at most `limit` bytes.
    /// The bytes must be `size` long and hash to `digest` (as a streamed
    /// blob must be when committed), so that no caller reads a blob the
    /// registry altered.
    pub async fn small_blob(
        &self,
        digest: &Digest,
        size: u64,
        limit: u64,
        reporter: &dyn PullReporter,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = self.url(&format!("{}/blobs/{digest}", self.repository))?;
        let what = format!("GET blob {digest}");
        let bytes = self
            .retrying(&what, reporter, async || {
                let (response, at) = self.fetch(&url, &what, &[], reporter).await?;
                match response.status() {
                    s if s.is_success() => {}
                    StatusCode::NOT_FOUND => {
                        let reference = format!("{}/{}@{digest} (blob)", self.registry, self.repository);
                        return Err(self.not_found(&at, &what, reference).into());
                    }
                    StatusCode::FORBIDDEN => return Err(self.unauthorized().into()),
                    status => {
                        return Err(RegistryError::Status { registry: host_of(&at), what: what.clone(), status }.into());
                    }
                }
                read_limited(response, limit).await.map_err(self.transfer(&digest.to_string()))
            })
            .await?
            .ok_or(RegistryError::TooLarge { what: "config", reference: digest.to_string(), limit })?;
        if bytes.len() as u64 != size {
            let actual = bytes.len() as u64;
            return Err(ces_image::StoreError::SizeMismatch { digest: digest.clone(), expected: size, actual }.into());
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(ces_image::StoreError::DigestMismatch { expected: digest.clone(), actual }.into());
        }
        Ok(bytes)
    }
}

/// A blob download in progress, across tries.
struct Download {
    writer: BlobWriter,
    /// Bytes written (and hashed) so far.
    have: u64,
    /// Whether to resume with `Range` (off once the registry got it wrong).
    ranges: bool,
}

/// The first error of an OCI error body (`{"errors":[{"code","message"}]}`),
/// escaped and cut short.
fn proxy_message(body: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        message: Option<String>,
    }
    let first = serde_json::from_slice::<Errors>(body).ok()?.errors.into_iter().next()?;
    let escape = |s: &str| ces_image::quote::escape_message(s, 300);
    Some((escape(&first.code), escape(first.message.as_deref().unwrap_or_default())))
}

fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).find_map(Challenge::parse)
}

/// Reads a body of at most `limit` bytes; `None` if it is longer.
async fn read_limited(response: reqwest::Response, limit: u64) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|l| l > limit) {
        return Ok(None);
    }
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_retry_after_is_capped() {
        let policy = RetryPolicy::default();
        let waits: Vec<_> = (1..=6).map(|n| policy.wait(n, None).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000]);
        assert_eq!(policy.wait(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(policy.wait(1, Some(Duration::from_secs(86_400))), policy.max_retry_after);
        assert_eq!(policy.wait(40, None), policy.max_delay, "no overflow");
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a date in the past: now");
        headers.insert(RETRY_AFTER, "soon".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn origins_and_hosts() {
        let base = Url::parse("https://ghcr.io/v2/").unwrap_or_else(|_| unreachable!());
        let same = Url::parse("https://ghcr.io:443/v2/x/blobs/y").unwrap_or_else(|_| unreachable!());
        let cdn = Url::parse("https://pkg-containers.githubusercontent.com/x").unwrap_or_else(|_| unreachable!());
        let plain = Url::parse("http://ghcr.io/v2/").unwrap_or_else(|_| unreachable!());
        assert!(same_origin(&base, &same));
        assert!(!same_origin(&base, &cdn));
        assert!(!same_origin(&base, &plain), "another scheme is another origin");
        assert_eq!(
            host_of(&Url::parse("http://127.0.0.1:5000/x").unwrap_or_else(|_| unreachable!())),
            "127.0.0.1:5000"
        );
        assert_eq!(host_of(&base), "ghcr.io");
    }
}
