//! The HTTP side: the OCI distribution API's pull side under
//! `/v2/<upstream>/<repository>/...`, `/healthz` and `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ces_audit::{AuditLog, Event, Outcome, ProxyPullEvent};
use ces_image::Digest;
use ces_registry::{Client as RegistryClient, ClientConfig, Credentials, PullReporter, Quiet, RegistryError, Session};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::auth::{Client, Users};
use crate::cache::{Access, Cache, Member, Tag, children, media_type_of, now};
use crate::config::{Config, UpstreamConfig, glob};

/// The most a manifest may weigh.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// How long a client whose credentials the upstream accepted for a
/// repository may have its private blobs from the cache.
const AUTHORIZED_FOR: Duration = Duration::from_secs(3600);
/// How long an upstream session (and its token) is kept.
const SESSION_FOR: Duration = Duration::from_secs(240);
/// The header that says the cache served what the upstream could not confirm.
pub const CACHE_HEADER: &str = "x-ces-cache";

/// Whether a client is enabled to pull (the ces config's `[pull]`): `Err`
/// says why not.
pub type Enablement = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A response body.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// One upstream, ready.
struct Upstream {
    config: UpstreamConfig,
    host: String,
    client: RegistryClient,
    shared: Option<Credentials>,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(&'static str, &'static str), u64>>,
    bytes_sent: AtomicU64,
    upstream_fetches: AtomicU64,
    upstream_blob_fetches: AtomicU64,
    upstream_errors: AtomicU64,
    seconds_micros: AtomicU64,
    count: AtomicU64,
}

impl Metrics {
    fn count(&self, object: &'static str, result: &'static str) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((object, result)).or_default() += 1;
    }

    fn text(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP ces_proxy_requests_total Requests answered, by object and result.\n# TYPE ces_proxy_requests_total counter\n");
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut rows: Vec<_> = requests.into_iter().collect();
        rows.sort();
        for ((object, result), n) in rows {
            out.push_str(&format!("ces_proxy_requests_total{{object=\"{object}\",result=\"{result}\"}} {n}\n"));
        }
        for (name, help, value) in [
            ("ces_proxy_bytes_sent_total", "Bytes of blobs and manifests sent to clients.", &self.bytes_sent),
            ("ces_proxy_upstream_fetches_total", "Manifests and blobs fetched from upstreams.", &self.upstream_fetches),
            ("ces_proxy_upstream_blob_fetches_total", "Blobs fetched from upstreams.", &self.upstream_blob_fetches),
            ("ces_proxy_upstream_errors_total", "Upstream requests that failed.", &self.upstream_errors),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP ces_proxy_request_seconds Time to answer a request.\n# TYPE ces_proxy_request_seconds summary\nces_proxy_request_seconds_sum {:.6}\nces_proxy_request_seconds_count {}\n",
            self.seconds_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed)
        ));
        out
    }
}

/// An upstream session's key: the upstream, the repository, who.
type SessionKey = (String, String, String);

/// Everything a request needs.
pub struct State {
    config: Config,
    upstreams: Vec<Upstream>,
    users: Option<Arc<Users>>,
    /// Password checks at once (each is bcrypt's time on a blocking thread).
    checks: tokio::sync::Semaphore,
    /// Failed logins by address: (count, since).
    failures: Mutex<HashMap<std::net::IpAddr, (u32, Instant)>>,
    enablement: Enablement,
    cache: Cache,
    audit: AuditLog,
    /// Blob downloads in progress: one per digest, the others wait for it.
    inflight: Mutex<HashMap<String, Flight>>,
    /// (client, upstream, repository) whose credentials the upstream accepted.
    authorized: Mutex<HashMap<(String, String, String), Instant>>,
    sessions: Mutex<HashMap<SessionKey, (Arc<Session>, Instant)>>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    _lock: ces_image::store::StoreLock,
}

impl State {
    /// The state for `config`; `enablement` is the per-user check.
    pub fn new(config: Config, enablement: Enablement) -> Result<State, String> {
        let users = config.htpasswd.as_deref().map(Users::read).transpose()?.map(Arc::new);
        let mut upstreams = Vec::new();
        for upstream in &config.upstreams {
            let (scheme, host) = match upstream.url.split_once("://") {
                Some((scheme, rest)) => (scheme, rest.trim_end_matches('/').to_owned()),
                None => return Err(format!("upstream {}: no scheme in its url", upstream.name)),
            };
            let insecure = if scheme == "http" { vec![host.clone()] } else { Vec::new() };
            let mut redirect_hosts = upstream.redirect_hosts.clone();
            redirect_hosts.push(host.clone());
            // Clients try again themselves: one quick retry here.
            let retry = ces_registry::RetryPolicy {
                tries: 2,
                first_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(1),
                max_retry_after: Duration::from_secs(2),
            };
            let client = RegistryClient::new(ClientConfig {
                allowed: vec![host.clone()],
                insecure,
                redirect_hosts: Some(redirect_hosts),
                mirror: None,
            })
            .map_err(|e| e.to_string())?
            .with_retry(retry);
            let shared = match &upstream.shared_credentials {
                Some(shared) => {
                    let token = std::fs::read_to_string(&shared.token_file)
                        .map_err(|e| format!("cannot read {}: {e}", shared.token_file.display()))?;
                    Some(Credentials::from_parts(
                        Some(shared.user.clone()),
                        Some(ces_registry::Secret::new(token.trim().to_owned())),
                    ))
                }
                None => None,
            };
            upstreams.push(Upstream { config: upstream.clone(), host, client, shared });
        }
        let cache = Cache::open(&config.cache_dir, config.cache_max_size)?;
        let lock = cache.store.lock_shared().map_err(|e| e.to_string())?;
        let audit = AuditLog::new(config.audit_log.clone());
        audit.check_writable().map_err(|e| e.to_string())?;
        Ok(State {
            config,
            upstreams,
            users,
            checks: tokio::sync::Semaphore::new(2),
            failures: Mutex::default(),
            enablement,
            cache,
            audit,
            inflight: Mutex::default(),
            authorized: Mutex::default(),
            sessions: Mutex::default(),
            metrics: Metrics::default(),
            _lock: lock,
        })
    }
}

/// A refusal or failure, in the OCI error format.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { status, code, message: message.into() }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn error_response(error: &ApiError) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": error.code, "message": error.message, "detail": null}]});
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = error.status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if error.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ces proxy\""));
    }
    response
}

/// What a path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Base,
    Manifest { upstream: String, repository: String, reference: String },
    Blob { upstream: String, repository: String, digest: Digest },
    Tags { upstream: String, repository: String },
}

/// A repository path as OCI names them: lower-case parts of letters and
/// digits joined by `.`, `_`, `__` or dashes, separated by `/`.
fn is_repository(name: &str) -> bool {
    name.len() <= 255
        && name.split('/').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && !part.contains("..")
                && !part.contains("___")
        })
}

fn is_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// The route of `path` (raw, as sent): nothing encoded, no `.` or `..`
/// parts, no empty parts.
fn route(path: &str) -> Result<Route, ApiError> {
    let bad = || api_error(StatusCode::BAD_REQUEST, "NAME_INVALID", "not a path of the registry API");
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or_else(|| api_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "not found"))?;
    if path.contains('%') || path.contains("//") || rest.split('/').any(|p| p == "." || p == "..") {
        return Err(bad());
    }
    enum Kind {
        Manifest(String),
        Blob(Digest),
        Tags,
    }
    let (name, kind) = if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        if !(is_tag(reference) || reference.parse::<Digest>().is_ok()) {
            return Err(api_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "not a tag or digest"));
        }
        (name, Kind::Manifest(reference.to_owned()))
    } else if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let digest =
            digest.parse().map_err(|_| api_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "not a digest"))?;
        (name, Kind::Blob(digest))
    } else if let Some(name) = rest.strip_suffix("/tags/list") {
        (name, Kind::Tags)
    } else {
        return Err(api_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "not a pull request of the registry API"));
    };
    let (upstream, repository) = name.split_once('/').ok_or_else(bad)?;
    if !crate::config::is_host(upstream) || !is_repository(repository) {
        return Err(api_error(StatusCode::BAD_REQUEST, "NAME_INVALID", "not a repository name"));
    }
    let (upstream, repository) = (upstream.to_owned(), repository.to_owned());
    Ok(match kind {
        Kind::Manifest(reference) => Route::Manifest { upstream, repository, reference },
        Kind::Blob(digest) => Route::Blob { upstream, repository, digest },
        Kind::Tags => Route::Tags { upstream, repository },
    })
}

/// Whether `host` (a `Host` header) is one the proxy answers to.
fn host_ok(host: &str, names: &[String]) -> bool {
    let name =
        host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    let well_formed = !host.is_empty()
        && host.len() <= 260
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    well_formed && (names.is_empty() || names.iter().any(|n| n == name))
}

/// One request, as its handlers need it.
#[derive(Clone, Copy)]
struct Ask<'a> {
    state: &'a Arc<State>,
    upstream: &'a Upstream,
    client: &'a Client,
    repository: &'a str,
    credentials: &'a (Credentials, Access),
    request: &'a Request<hyper::body::Incoming>,
    head: bool,
}

/// What one request did, for its audit record and the counters.
struct Served {
    upstream: String,
    repository: String,
    object: &'static str,
    reference: String,
    digest: Option<String>,
    cache: &'static str,
}

/// Answers one request.
pub async fn handle(state: Arc<State>, peer: SocketAddr, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let started = Instant::now();
    let response = answer(&state, peer, &request).await;
    state.metrics.count.fetch_add(1, Ordering::Relaxed);
    state.metrics.seconds_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    match response {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

async fn answer(
    state: &Arc<State>,
    peer: SocketAddr,
    request: &Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path();
    if path == "/healthz" {
        return Ok(Response::new(full("ok\n")));
    }
    if path == "/metrics" {
        let mut response = Response::new(full(state.metrics.text()));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        return Ok(response);
    }
    // Refused before it is known who asks, or for what: recorded too (but
    // the challenge every client meets first, on /v2/ without credentials).
    let early = async {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return Err(api_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "the proxy serves pulls only"));
        }
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        if !host_ok(host, &state.config.server_names) {
            return Err(api_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", "not a name this proxy answers to"));
        }
        let route = route(path)?;
        let client = authenticate(state, peer, request).await?;
        Ok((route, client))
    };
    let (route, client) = match early.await {
        Ok(found) => found,
        Err(error) => {
            let challenge =
                path.trim_end_matches('/') == "/v2" && request.headers().get(header::AUTHORIZATION).is_none();
            if !challenge {
                let served = Served {
                    upstream: String::new(),
                    repository: path.to_owned(),
                    object: "request",
                    reference: request.method().to_string(),
                    digest: None,
                    cache: "none",
                };
                record(state, &Client::User("(not authenticated)".to_owned()), peer, &served, Some(&error)).await;
            }
            return Err(error);
        }
    };
    let (upstream_name, repository) = match &route {
        Route::Base => return Ok(json_response(StatusCode::OK, "{}")),
        Route::Manifest { upstream, repository, .. }
        | Route::Blob { upstream, repository, .. }
        | Route::Tags { upstream, repository } => (upstream.clone(), repository.clone()),
    };
    let (object, reference) = match &route {
        Route::Manifest { reference, .. } => ("manifest", reference.clone()),
        Route::Blob { digest, .. } => ("blob", digest.to_string()),
        _ => ("tags", "list".to_owned()),
    };
    let mut served = Served {
        upstream: upstream_name.clone(),
        repository: repository.clone(),
        object,
        reference,
        digest: None,
        cache: "none",
    };
    let head = request.method() == Method::HEAD;
    let result = async {
        (state.enablement)(client.name()).map_err(|why| api_error(StatusCode::FORBIDDEN, "DENIED", why))?;
        let upstream = state
            .upstreams
            .iter()
            .find(|u| u.config.name == upstream_name || u.config.alias.as_deref() == Some(upstream_name.as_str()))
            .ok_or_else(|| {
                api_error(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    format!("the proxy serves no registry {upstream_name}"),
                )
            })?;
        // Known by its name from here on (the cache, the audit log).
        served.upstream = upstream.config.name.clone();
        if !upstream.config.repositories.iter().any(|p| glob(p, &repository)) {
            return Err(api_error(
                StatusCode::FORBIDDEN,
                "DENIED",
                format!("{upstream_name}/{repository} is not a repository this proxy serves"),
            ));
        }
        let credentials = upstream_credentials(upstream, &repository, request)?;
        let ask =
            Ask { state, upstream, client: &client, repository: &repository, credentials: &credentials, request, head };
        match &route {
            Route::Manifest { reference, .. } => manifest(&ask, reference, &mut served).await,
            Route::Blob { digest, .. } => blob(&ask, digest, &mut served).await,
            Route::Tags { .. } => tags(&ask).await,
            Route::Base => unreachable!(),
        }
    }
    .await;
    let result_word = match &result {
        Ok(_) => served.cache,
        Err(e) if e.status == StatusCode::FORBIDDEN || e.status == StatusCode::UNAUTHORIZED => "refused",
        Err(_) => "error",
    };
    state.metrics.count(served.object, result_word);
    if head {
        served.object = match served.object {
            "manifest" => "manifest (HEAD)",
            "blob" => "blob (HEAD)",
            other => other,
        };
    }
    // Nothing is served that is not recorded.
    if !record(state, &client, peer, &served, result.as_ref().err()).await && result.is_ok() {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the proxy's audit log cannot be written",
        ));
    }
    result
}

fn json_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    response
}

/// Failed logins an address may make in [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The client: a user whose password is right, or anonymous where allowed.
/// Passwords are checked off the async thread, two at a time; an address
/// that fails too often is refused for a minute without a check.
async fn authenticate(
    state: &State,
    peer: SocketAddr,
    request: &Request<hyper::body::Incoming>,
) -> Result<Client, ApiError> {
    let unauthorized = || api_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
    let Some(value) = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return if state.config.allow_anonymous { Ok(Client::Anonymous) } else { Err(unauthorized()) };
    };
    let users = state.users.clone().ok_or_else(unauthorized)?;
    {
        let mut failures = state.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        if failures.get(&peer.ip()).is_some_and(|(n, _)| *n >= MAX_FAILURES) {
            return Err(api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "too many failed logins: wait a minute",
            ));
        }
    }
    let _permit = state.checks.acquire().await.map_err(|_| unauthorized())?;
    let value = value.to_owned();
    let user = tokio::task::spawn_blocking(move || users.check(&value)).await.ok().flatten();
    match user {
        Some(user) => Ok(Client::User(user)),
        None => {
            let mut failures = state.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.entry(peer.ip()).or_insert((0, Instant::now())).0 += 1;
            Err(unauthorized())
        }
    }
}

/// The credentials for the upstream: the client's own (passed along, never
/// kept), else the operator's shared one where it names the repository,
/// else none; and how what they fetch may be shared.
fn upstream_credentials(
    upstream: &Upstream,
    repository: &str,
    request: &Request<hyper::body::Incoming>,
) -> Result<(Credentials, Access), ApiError> {
    if let Some(value) = request.headers().get(ces_registry::UPSTREAM_AUTHORIZATION) {
        use base64::Engine as _;
        let bad =
            || api_error(StatusCode::BAD_REQUEST, "UNAUTHORIZED", "the upstream credentials are not Basic user:token");
        let text = value.to_str().map_err(|_| bad())?;
        let encoded = text.strip_prefix("Basic ").ok_or_else(bad)?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
        let pair = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, token) = pair.split_once(':').ok_or_else(bad)?;
        let credentials =
            Credentials::from_parts(Some(user.to_owned()), Some(ces_registry::Secret::new(token.to_owned())));
        return Ok((credentials, Access::Private));
    }
    if let (Some(shared), Some(config)) = (&upstream.shared, &upstream.config.shared_credentials)
        && config.repositories.iter().any(|p| glob(p, repository))
    {
        return Ok((shared.clone(), Access::Shared));
    }
    Ok((Credentials::Anonymous, Access::Public))
}

/// A session with the upstream for `repository` with `credentials`, kept
/// for a few minutes.
async fn session(
    state: &State,
    upstream: &Upstream,
    repository: &str,
    credentials: &Credentials,
) -> Result<Arc<Session>, ApiError> {
    use sha2::Digest as _;
    let who = match credentials {
        Credentials::Anonymous => String::new(),
        Credentials::Basic { user, secret } => format!("{user}:{:x}", sha2::Sha256::digest(secret.expose().as_bytes())),
    };
    let key = (upstream.host.clone(), repository.to_owned(), who);
    {
        let mut sessions = state.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, (_, at)| at.elapsed() < SESSION_FOR);
        if let Some((session, _)) = sessions.get(&key) {
            return Ok(session.clone());
        }
    }
    let reference: ces_image::ImageReference = format!("{}/{repository}", upstream.host)
        .parse()
        .map_err(|_| api_error(StatusCode::BAD_REQUEST, "NAME_INVALID", "not a repository name"))?;
    let session =
        upstream.client.session(&reference, credentials, &Quiet).await.map_err(|e| upstream_error(state, &e))?;
    let session = Arc::new(session);
    state.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (session.clone(), Instant::now()));
    Ok(session)
}

/// An upstream failure, as the client sees it.
fn upstream_error(state: &State, error: &RegistryError) -> ApiError {
    state.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
    let message = format!("upstream: {}", ces_image::quote::escape_message(&error.to_string(), 300));
    match error {
        RegistryError::NotFound { .. } | RegistryError::NotFoundAt { .. } => {
            api_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message)
        }
        RegistryError::Unauthorized { .. } | RegistryError::BadCredentials { .. } => {
            api_error(StatusCode::FORBIDDEN, "DENIED", message)
        }
        RegistryError::TooLarge { .. } => api_error(StatusCode::BAD_GATEWAY, "MANIFEST_INVALID", message),
        RegistryError::RedirectOff { .. } | RegistryError::Downgrade { .. } => {
            api_error(StatusCode::BAD_GATEWAY, "DENIED", message)
        }
        _ => api_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message),
    }
}

/// Whether the upstream could not be reached (or did not answer well):
/// what the cache has may be served instead.
fn upstream_down(error: &RegistryError) -> bool {
    matches!(
        error,
        RegistryError::Unreachable { .. }
            | RegistryError::GaveUp { .. }
            | RegistryError::Transfer { .. }
            | RegistryError::Status { .. }
    )
}

/// Who asks, for the memory of what the upstream accepted: the client and
/// the credentials it brings (none, the shared one, or a hash of its own).
fn asker(client: &Client, credentials: &(Credentials, Access)) -> String {
    use sha2::Digest as _;
    let with = match (&credentials.0, credentials.1) {
        (Credentials::Basic { user, secret }, Access::Private) => {
            format!("own:{:x}", sha2::Sha256::digest(format!("{user}:{}", secret.expose()).as_bytes()))
        }
        (_, Access::Shared) => "shared".to_owned(),
        _ => "none".to_owned(),
    };
    format!("{}\n{with}", client.name())
}

fn mark_authorized(ask: &Ask<'_>) {
    let key = (asker(ask.client, ask.credentials), ask.upstream.config.name.clone(), ask.repository.to_owned());
    ask.state.authorized.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Instant::now());
}

fn is_authorized(ask: &Ask<'_>) -> bool {
    let key = (asker(ask.client, ask.credentials), ask.upstream.config.name.clone(), ask.repository.to_owned());
    ask.state
        .authorized
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .is_some_and(|at| at.elapsed() < AUTHORIZED_FOR)
}

/// What the proxy does with a cached object for this request.
enum Decision {
    /// Serve it from the cache.
    Serve,
    /// Download it from this repository first (with the client's credentials).
    Fetch,
}

/// Whether the cache may serve the object to this client under this
/// repository's name. Bytes anyone could download anonymously: yes. Bytes
/// downloaded from this repository with the operator's shared credential:
/// yes. Bytes downloaded from it with a client's own credentials: only to a
/// client whose credentials the upstream accepts for it (asked now, or
/// within the hour). Bytes downloaded from elsewhere (a manifest may name
/// any digest): downloaded from this repository first.
async fn decide(ask: &Ask<'_>, digest: &Digest, member: &Member, manifest: bool) -> Result<Decision, ApiError> {
    let Ask { state, upstream, repository, credentials, .. } = *ask;
    if state.cache.origin(digest) == Some(Access::Public) {
        return Ok(Decision::Serve);
    }
    if !member.fetched {
        return Ok(Decision::Fetch);
    }
    if member.access != Access::Private || is_authorized(ask) {
        return Ok(Decision::Serve);
    }
    // Ask the upstream with the client's own credentials (or none).
    let session = session(state, upstream, repository, &credentials.0).await?;
    let accepted = if manifest {
        match session.manifest(&digest.to_string(), MAX_MANIFEST, &Quiet).await {
            Ok(_) => true,
            Err(
                RegistryError::NotFound { .. }
                | RegistryError::Unauthorized { .. }
                | RegistryError::BadCredentials { .. },
            ) => false,
            Err(error) => return Err(upstream_error(state, &error)),
        }
    } else {
        match session.has_blob(digest, &Quiet).await {
            Ok(found) => found,
            Err(RegistryError::Unauthorized { .. } | RegistryError::BadCredentials { .. }) => false,
            Err(error) => return Err(upstream_error(state, &error)),
        }
    };
    if !accepted {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "this repository needs your own credentials for the registry",
        ));
    }
    mark_authorized(ask);
    if credentials.1 == Access::Public {
        // Anyone may have it: it is public after all.
        let _ = state.cache.add_origin(digest, Access::Public);
    }
    Ok(Decision::Serve)
}

/// Stores a manifest fetched from the repository, and the claims of what it
/// names (fetched from it only once downloaded from it).
fn keep_manifest(
    state: &State,
    upstream: &str,
    repository: &str,
    fetched: &ces_registry::client::FetchedManifest,
    access: Access,
) -> Result<String, ApiError> {
    // The manifest's own mediaType first (the bytes say what they are),
    // then the registry's Content-Type.
    let header = fetched.content_type.clone().filter(|t| t.contains("manifest") || t.contains("index"));
    let declared = serde_json::from_slice::<serde_json::Value>(&fetched.bytes)
        .ok()
        .and_then(|v| v.get("mediaType").and_then(|t| t.as_str()).map(str::to_owned));
    let media_type = declared.or(header).unwrap_or_else(|| media_type_of(&fetched.bytes));
    let failed = |e: String| api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("the cache: {e}"));
    state.cache.put_manifest(&fetched.digest, &fetched.bytes, &media_type).map_err(failed)?;
    let own = Member { size: fetched.bytes.len() as u64, access, fetched: true };
    state.cache.add_member(upstream, repository, &fetched.digest, &own).map_err(|e| failed(e.to_string()))?;
    state.cache.add_origin(&fetched.digest, access).map_err(|e| failed(e.to_string()))?;
    for (child, size) in children(&fetched.bytes) {
        let claim = Member { size, access, fetched: false };
        state.cache.add_member(upstream, repository, &child, &claim).map_err(|e| failed(e.to_string()))?;
    }
    Ok(media_type)
}

async fn manifest(ask: &Ask<'_>, reference: &str, served: &mut Served) -> Result<Response<Body>, ApiError> {
    let Ask { state, upstream, repository, credentials, head, .. } = *ask;
    let name = upstream.config.name.as_str();
    let by_digest = reference.parse::<Digest>().ok();
    // From the cache: a digest this repository has, or a tag fetched less
    // than the tag time ago.
    let cached = match &by_digest {
        Some(digest) => Some(digest.clone()),
        None => state
            .cache
            .tag(name, repository, reference)
            .filter(|t| now().saturating_sub(t.fetched) < state.config.tag_ttl_seconds)
            .and_then(|t| t.digest.parse::<Digest>().ok()),
    };
    if let Some(digest) = cached
        && let Some(member) = state.cache.member(name, repository, &digest)
        && let Some((bytes, media_type)) = state.cache.manifest(&digest, MAX_MANIFEST)
        && let Decision::Serve = decide(ask, &digest, &member, true).await?
    {
        served.cache = "hit";
        served.digest = Some(digest.to_string());
        return Ok(manifest_response(state, bytes, &media_type, &digest, head, None));
    }
    // From the upstream.
    let fetched = match session(state, upstream, repository, &credentials.0).await {
        Ok(session) => session.manifest(reference, MAX_MANIFEST, &Quiet).await,
        Err(error) if error.status == StatusCode::SERVICE_UNAVAILABLE => {
            return stale_or(ask, reference, served, error);
        }
        Err(error) => return Err(error),
    };
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(error) if upstream_down(&error) => {
            let error = upstream_error(state, &error);
            return stale_or(ask, reference, served, error);
        }
        Err(error) => return Err(upstream_error(state, &error)),
    };
    state.metrics.upstream_fetches.fetch_add(1, Ordering::Relaxed);
    let media_type = keep_manifest(state, name, repository, &fetched, credentials.1)?;
    if by_digest.is_none() {
        let tag = Tag { digest: fetched.digest.to_string(), fetched: now(), access: credentials.1 };
        state
            .cache
            .set_tag(name, repository, reference, &tag)
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))?;
    }
    mark_authorized(ask);
    served.cache = "miss";
    served.digest = Some(fetched.digest.to_string());
    Ok(manifest_response(state, fetched.bytes, &media_type, &fetched.digest, head, None))
}

/// The upstream cannot be reached: a tag the cache has (however old) is
/// served, and says so, to a client that could have it anyway (it cannot
/// be asked of the upstream now); otherwise the failure.
fn stale_or(ask: &Ask<'_>, reference: &str, served: &mut Served, error: ApiError) -> Result<Response<Body>, ApiError> {
    let Ask { state, upstream, repository, head, .. } = *ask;
    let name = upstream.config.name.as_str();
    let missing = |error: ApiError| {
        api_error(error.status, error.code, format!("{} (and the cache has not got {reference})", error.message))
    };
    let Some(tag) = state.cache.tag(name, repository, reference) else { return Err(missing(error)) };
    let Some(digest) = tag.digest.parse::<Digest>().ok() else { return Err(missing(error)) };
    let Some((bytes, media_type)) = state.cache.manifest(&digest, MAX_MANIFEST) else { return Err(missing(error)) };
    let open = state.cache.origin(&digest) == Some(Access::Public) || tag.access != Access::Private;
    if !open && !is_authorized(ask) {
        return Err(error);
    }
    tracing::warn!(upstream = name, repository, reference, "the upstream cannot be reached: serving the cached tag");
    served.cache = "stale";
    served.digest = Some(digest.to_string());
    Ok(manifest_response(state, bytes, &media_type, &digest, head, Some("stale")))
}

fn manifest_response(
    state: &State,
    bytes: Vec<u8>,
    media_type: &str,
    digest: &Digest,
    head: bool,
    cache: Option<&'static str>,
) -> Response<Body> {
    let length = bytes.len();
    if !head {
        state.metrics.bytes_sent.fetch_add(length as u64, Ordering::Relaxed);
    }
    let mut response = Response::new(if head { full(Bytes::new()) } else { full(bytes) });
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(media_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", value);
    }
    if let Some(cache) = cache {
        headers.insert(CACHE_HEADER, HeaderValue::from_static(cache));
    }
    response
}

/// A download's end, as those waiting for it hear it.
type Ended = Option<Result<(), (StatusCode, &'static str, String)>>;

/// How far a download is: the file its bytes go to (a new one, with a new
/// generation, when it starts again from its first byte), and how many were
/// received.
#[derive(Debug, Clone, Default)]
struct Progress {
    path: Option<std::path::PathBuf>,
    generation: u32,
    written: u64,
}

/// A blob download in progress, as its followers see it.
#[derive(Clone)]
struct Flight {
    progress: tokio::sync::watch::Receiver<Progress>,
    ended: tokio::sync::watch::Receiver<Ended>,
    /// How it is downloaded (with whose credentials).
    access: Access,
}

/// Tells a download's followers where its bytes are.
struct FlightReporter {
    progress: tokio::sync::watch::Sender<Progress>,
}

impl PullReporter for FlightReporter {
    fn blob_file(&self, _digest: &Digest, path: &std::path::Path) {
        self.progress.send_modify(|p| {
            p.path = Some(path.to_owned());
            p.generation += 1;
            p.written = 0;
        });
    }

    fn layer_progress(&self, _digest: &Digest, bytes: u64) {
        self.progress.send_modify(|p| p.written += bytes);
    }
}

async fn blob(ask: &Ask<'_>, digest: &Digest, served: &mut Served) -> Result<Response<Body>, ApiError> {
    let Ask { state, upstream, repository, credentials, request, head, .. } = *ask;
    let name = upstream.config.name.as_str();
    served.digest = Some(digest.to_string());
    let member = state.cache.member(name, repository, digest).ok_or_else(|| {
        api_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "no manifest of this repository that the proxy served names this blob",
        )
    })?;
    if member.size > state.config.cache_max_size {
        return Err(api_error(StatusCode::FORBIDDEN, "DENIED", "the blob is larger than the proxy's cache"));
    }
    let cached = state.cache.has_blob(digest, member.size);
    if cached && matches!(decide(ask, digest, &member, false).await?, Decision::Serve) {
        served.cache = "hit";
        state.cache.touch(digest);
        return serve_file(state, digest, member.size, request, head).await;
    }
    // One download per blob of a repository at a time, run on its own (a
    // client that goes away does not end it); every client that asks for
    // it meanwhile is sent its bytes as they arrive.
    let key = format!("{name}/{repository}@{digest}");
    let (flight, leader) = {
        let mut inflight = state.inflight.lock().unwrap_or_else(|p| p.into_inner());
        match inflight.get(&key) {
            Some(flight) => (flight.clone(), false),
            None => {
                let (ended_tx, ended) = tokio::sync::watch::channel::<Ended>(None);
                let (progress_tx, progress) = tokio::sync::watch::channel(Progress::default());
                let flight = Flight { progress, ended, access: credentials.1 };
                inflight.insert(key.clone(), flight.clone());
                let task = Download {
                    state: state.clone(),
                    key: key.clone(),
                    upstream: name.to_owned(),
                    repository: repository.to_owned(),
                    credentials: credentials.clone(),
                    asker: asker(ask.client, credentials),
                    digest: digest.clone(),
                    size: member.size,
                };
                tokio::task::spawn_local(async move {
                    let reporter = FlightReporter { progress: progress_tx };
                    let _ = ended_tx.send(Some(task.run(&reporter).await));
                });
                (flight, true)
            }
        }
    };
    // Another's download, with its credentials: a private one only for a
    // client whose own credentials the upstream accepts too.
    if !leader && flight.access == Access::Private && !is_authorized(ask) {
        let session = session(state, upstream, repository, &credentials.0).await?;
        match session.has_blob(digest, &Quiet).await {
            Ok(true) => mark_authorized(ask),
            Ok(false) | Err(RegistryError::Unauthorized { .. } | RegistryError::BadCredentials { .. }) => {
                return Err(api_error(
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    "this repository needs your own credentials for the registry",
                ));
            }
            Err(error) => return Err(upstream_error(state, &error)),
        }
    }
    served.cache = if leader { "miss" } else { "hit" };
    if head || request.headers().contains_key(header::RANGE) {
        // A part, or none, of it: once it is whole.
        wait_for(&flight).await?;
        state.cache.touch(digest);
        return serve_file(state, digest, member.size, request, head).await;
    }
    // The answer's status once the upstream has sent something (or failed):
    // a refusal or a missing blob is still said as such.
    first_bytes(&flight).await?;
    Ok(follow_flight(state, digest, member.size, flight))
}

/// Waits until the download has received bytes, or ended.
async fn first_bytes(flight: &Flight) -> Result<(), ApiError> {
    let mut progress = flight.progress.clone();
    let mut ended = flight.ended.clone();
    loop {
        if let Some(outcome) = ended.borrow_and_update().clone() {
            return outcome.map_err(|(status, code, message)| api_error(status, code, message));
        }
        if progress.borrow_and_update().written > 0 {
            return Ok(());
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { return wait_for(flight).await },
            changed = ended.changed() => if changed.is_err() {
                return Err(api_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "the download ended"));
            },
        }
    }
}

/// Waits for a download's end.
async fn wait_for(flight: &Flight) -> Result<(), ApiError> {
    let mut ended = flight.ended.clone();
    loop {
        if let Some(outcome) = ended.borrow_and_update().clone() {
            return outcome.map_err(|(status, code, message)| api_error(status, code, message));
        }
        if ended.changed().await.is_err() {
            return Err(api_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "the download ended"));
        }
    }
}

/// The blob, sent as its download writes it: each read is of what the file
/// has (a MiB at most) and, at its end, waits for more; the download's
/// failure ends the body with an error (the client's digest check would
/// refuse what it got anyway). Once the download is committed, the same
/// file is the stored blob.
fn follow_flight(state: &Arc<State>, digest: &Digest, size: u64, flight: Flight) -> Response<Body> {
    struct Reader {
        flight: Flight,
        file: Option<(u32, std::fs::File)>,
        at: u64,
        size: u64,
        /// Where the blob is once committed.
        stored: std::path::PathBuf,
    }
    state.metrics.bytes_sent.fetch_add(size, Ordering::Relaxed);
    let reader = Reader { flight, file: None, at: 0, size, stored: state.cache.store.blob_path(digest) };
    let stream = futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        loop {
            if reader.at >= reader.size {
                return None;
            }
            let progress = reader.flight.progress.borrow().clone();
            let ended = reader.flight.ended.borrow().clone();
            if let Some(Err((_, _, message))) = &ended {
                return Some((Err(std::io::Error::other(message.clone())), None));
            }
            // The file of the download's current try.
            if let Some(path) = &progress.path
                && reader.file.as_ref().is_none_or(|(generation, _)| *generation != progress.generation)
            {
                // Committed meanwhile: the stored blob is that file, renamed.
                let opened = std::fs::File::open(path).or_else(|_| std::fs::File::open(&reader.stored));
                match opened {
                    Ok(file) => reader.file = Some((progress.generation, file)),
                    // Between two tries (a new file is on its way), or gone.
                    Err(_) if ended.is_none() => {}
                    Err(e) => return Some((Err(e), None)),
                }
            }
            let want = (reader.size - reader.at).min(1 << 20) as usize;
            let read = match reader.file.take() {
                Some((generation, file)) => match read_at(file, reader.at, want).await {
                    Ok((file, buffer)) => {
                        reader.file = Some((generation, file));
                        buffer
                    }
                    Err(e) => return Some((Err(e), None)),
                },
                None => Vec::new(),
            };
            if !read.is_empty() {
                reader.at += read.len() as u64;
                return Some((Ok(Frame::data(Bytes::from(read))), Some(reader)));
            }
            if ended.is_some() && reader.file.is_none() {
                return Some((Err(std::io::Error::other("the downloaded blob is not where it was")), None));
            }
            if matches!(ended, Some(Ok(()))) {
                // Whole and committed, and still short: not the blob.
                return Some((Err(std::io::Error::other("the blob ended early")), None));
            }
            // Nothing new yet: wait for the download to go on (or end).
            let mut progress = reader.flight.progress.clone();
            let mut ended = reader.flight.ended.clone();
            tokio::select! {
                _ = progress.changed() => {}
                _ = ended.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
    blob_response(StreamBody::new(stream).boxed(), digest, size)
}

/// A blob's answer: `length` bytes of `body`, with the blob's headers.
fn blob_response(body: Body, digest: &Digest, length: u64) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", value);
    }
    response
}

/// A blob download from one repository, owned by no request.
struct Download {
    state: Arc<State>,
    key: String,
    upstream: String,
    repository: String,
    credentials: (Credentials, Access),
    /// Who started it: the upstream accepting their credentials is worth remembering.
    asker: String,
    digest: Digest,
    size: u64,
}

/// The longest a blob download may take.
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(3600);

impl Download {
    async fn run(self, reporter: &FlightReporter) -> Result<(), (StatusCode, &'static str, String)> {
        let result = self.fetch(reporter).await;
        // Done, whatever the outcome: the next request starts afresh.
        self.state.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        result
    }

    async fn fetch(&self, reporter: &FlightReporter) -> Result<(), (StatusCode, &'static str, String)> {
        let state = &self.state;
        let failed = |e: ApiError| (e.status, e.code, e.message);
        let upstream = state.upstreams.iter().find(|u| u.config.name == self.upstream).ok_or((
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such upstream".to_owned(),
        ))?;
        let session = session(state, upstream, &self.repository, &self.credentials.0).await.map_err(failed)?;
        let download = session.blob(&self.digest, self.size, &state.cache.store, reporter);
        match tokio::time::timeout(DOWNLOAD_DEADLINE, download).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(failed(upstream_error(state, &error))),
            Err(_) => {
                return Err((StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", "the upstream took too long".to_owned()));
            }
        }
        state.metrics.upstream_fetches.fetch_add(1, Ordering::Relaxed);
        state.metrics.upstream_blob_fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = Member { size: self.size, access: self.credentials.1, fetched: true };
        let stored = state
            .cache
            .add_member(&self.upstream, &self.repository, &self.digest, &fetched)
            .and_then(|()| state.cache.add_origin(&self.digest, self.credentials.1));
        stored.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("the cache: {e}")))?;
        let key = (self.asker.clone(), self.upstream.clone(), self.repository.clone());
        state.authorized.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Instant::now());
        // Off the async thread: it lists the store.
        let cache_state = state.clone();
        let keep = self.digest.to_string();
        let evicted = tokio::task::spawn_blocking(move || cache_state.cache.evict(&[keep])).await.unwrap_or(0);
        if evicted > 0 {
            tracing::info!(evicted, "cache over its size: least recently used blobs removed");
        }
        Ok(())
    }
}

/// Up to `want` bytes of `file` from `at`, read off the async thread
/// straight into the buffer that is sent (one copy, from the page cache).
async fn read_at(file: std::fs::File, at: u64, want: usize) -> std::io::Result<(std::fs::File, Vec<u8>)> {
    tokio::task::spawn_blocking(move || {
        let mut buffer = Vec::with_capacity(want);
        // Into the vector's spare capacity, which it then holds.
        rustix::io::pread(&file, rustix::buffer::spare_capacity(&mut buffer), at)?;
        Ok((file, buffer))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The blob's bytes (or the `Range` asked for: one range of bytes).
async fn serve_file(
    state: &State,
    digest: &Digest,
    size: u64,
    request: &Request<hyper::body::Incoming>,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let range = request.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (start, end) = match range.as_deref().map(|r| parse_range(r, size)) {
        None => (0, size),
        Some(Some(range)) => range,
        Some(None) => {
            let mut response = error_response(&api_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                "a range the blob has not got",
            ));
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let length = end - start;
    let body = if head {
        full(Bytes::new())
    } else {
        let file = std::fs::File::open(state.cache.store.blob_path(digest))
            .map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", format!("the cache: {e}")))?;
        state.metrics.bytes_sent.fetch_add(length, Ordering::Relaxed);
        // Read off the async thread, a MiB at a time, each straight into the
        // buffer that is sent (one copy, from the page cache).
        let stream = futures_util::stream::unfold((Some(file), start, length), |(file, at, left)| async move {
            let file = file?;
            if left == 0 {
                return None;
            }
            let want = left.min(1 << 20) as usize;
            match read_at(file, at, want).await {
                Ok((_, buffer)) if buffer.is_empty() => None,
                Ok((file, buffer)) => {
                    let n = buffer.len() as u64;
                    Some((Ok(Frame::data(Bytes::from(buffer))), (Some(file), at + n, left - n)))
                }
                Err(e) => Some((Err(e), (None, at, 0))),
            }
        });
        StreamBody::new(stream).boxed()
    };
    let mut response = blob_response(body, digest, length);
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` of a `size`-byte blob, as [start, end).
fn parse_range(range: &str, size: u64) -> Option<(u64, u64)> {
    let spec = range.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().ok()?, size),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.checked_add(1)?.min(size)),
    };
    (start < end && start < size).then_some((start, end))
}

/// The repository's tags, from the upstream (never cached).
async fn tags(ask: &Ask<'_>) -> Result<Response<Body>, ApiError> {
    let Ask { state, upstream, repository, credentials, request, .. } = *ask;
    let query: String = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| {
            (p.starts_with("n=") || p.starts_with("last="))
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"=._-".contains(&b))
        })
        .collect::<Vec<_>>()
        .join("&");
    let session = session(state, upstream, repository, &credentials.0).await?;
    let bytes = session.tags(&query, 1 << 20, &Quiet).await.map_err(|e| upstream_error(state, &e))?;
    let mut response = Response::new(full(bytes));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Appends the request's audit record (off the async threads: it syncs).
async fn record(
    state: &Arc<State>,
    client: &Client,
    peer: SocketAddr,
    served: &Served,
    error: Option<&ApiError>,
) -> bool {
    let outcome = match error {
        None => Outcome::Ok,
        Some(e) if e.status.is_client_error() => Outcome::Refused { error: e.message.clone() },
        Some(e) => Outcome::Error { error: e.message.clone() },
    };
    let event = Event::ProxyPull(ProxyPullEvent {
        client: client.name().to_owned(),
        peer: peer.ip().to_string(),
        upstream: served.upstream.clone(),
        repository: served.repository.clone(),
        object: served.object.to_owned(),
        reference: served.reference.clone(),
        digest: served.digest.clone(),
        cache: served.cache.to_owned(),
        outcome,
    });
    let log = state.audit.clone();
    let written = tokio::task::spawn_blocking(move || log.append(crate::service_user(), event)).await;
    match written {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => {
            tracing::error!(%error, "cannot append to the audit log");
            false
        }
        Err(error) => {
            tracing::error!(%error, "cannot append to the audit log");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn routes_and_the_paths_refused() {
        let h = "a".repeat(64);
        assert_eq!(route("/v2/").unwrap(), Route::Base);
        assert!(
            matches!(route("/v2/ghcr.io/org/img/manifests/1.0").unwrap(), Route::Manifest { ref upstream, ref repository, ref reference } if upstream == "ghcr.io" && repository == "org/img" && reference == "1.0")
        );
        assert!(matches!(route(&format!("/v2/127.0.0.1:5000/a/blobs/sha256:{h}")).unwrap(), Route::Blob { .. }));
        assert!(matches!(route("/v2/ghcr.io/a/b/tags/list").unwrap(), Route::Tags { .. }));
        for bad in [
            "/v2/ghcr.io/../etc/manifests/1",
            "/v2/ghcr.io/a%2Fb/manifests/1",
            "/v2/ghcr.io//a/manifests/1",
            "/v2/ghcr.io/A/manifests/1",
            "/v2/ghcr.io/a/manifests/../../x",
            "/v2/ghcr.io/a/blobs/sha256:xyz",
            "/v2/a/manifests/1",
            "/v2/ghcr.io/a/./b/manifests/1",
            "/v3/x",
        ] {
            assert!(route(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert!(host_ok("proxy.tre.local:5000", &["proxy.tre.local".to_owned()]));
        assert!(!host_ok("evil.example", &["proxy.tre.local".to_owned()]));
        assert!(!host_ok("a b", &[]) && !host_ok("", &[]) && host_ok("127.0.0.1:5000", &[]));
    }
}
