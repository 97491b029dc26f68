//! A real Docker Distribution registry (`docker-registry` 2.8) on 127.0.0.1,
//! anonymous, with htpasswd basic auth, or with bearer tokens from our
//! [`TokenServer`](crate::token::TokenServer), and a small blocking client to
//! push fixture images to it.
//!
//! The registry runs under a shell wrapper that reads our end of a pipe and
//! kills the registry when it reads end-of-file, so the registry dies with the
//! test binary even when it was started by [`Registry::shared`] (statics are
//! never dropped) or the binary is killed.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};

use crate::image::{BuiltImage, digest_hex};
use crate::token::{self, TokenServer};

/// The user that can push and pull everything (Basic and Token modes).
pub const USER: &str = "ces-test";
/// Its password (for the token server: the "personal access token").
pub const PASSWORD: &str = "s3cret-token";
/// How long to wait for the registry to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Response header carrying a per-instance marker, so that we know the
/// registry answering on our port is ours and not another test binary's.
const INSTANCE_HEADER: &str = "X-Ces-Testkit-Instance";

/// How clients authenticate to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMode {
    /// No `auth` section: anyone can push and pull.
    Anonymous,
    /// htpasswd (bcrypt) basic auth.
    Basic,
    /// Bearer tokens from our token server (the GHCR-like flow).
    Token,
}

/// A running registry. Stopped (and its storage removed) on drop.
pub struct Registry {
    mode: AuthMode,
    host: String,
    dir: tempfile::TempDir,
    process: Mutex<Option<RegistryProcess>>,
    token_server: Option<TokenServer>,
}

struct RegistryProcess {
    wrapper: Child,
    pid: u32,
}

impl Registry {
    /// Starts `docker-registry` on 127.0.0.1:<free port> with filesystem storage
    /// in a temp dir (and, in Token mode, a token server of its own).
    pub fn start(mode: AuthMode) -> Registry {
        let dir = tempfile::Builder::new().prefix("ces-test-registry-").tempdir().unwrap();
        let token_server = (mode == AuthMode::Token).then(|| TokenServer::start(dir.path(), USER, PASSWORD));
        if mode == AuthMode::Basic {
            write_htpasswd(&dir.path().join("htpasswd"));
        }
        let log_path = dir.path().join("registry.log");
        let mut last_log = String::new();
        for attempt in 0..5 {
            let port = free_port();
            let instance = format!("{}-{port}-{attempt}", std::process::id());
            let config = config_yaml(mode, dir.path(), port, &instance, token_server.as_ref());
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let process = spawn(&config_path, dir.path(), &log_path);
            let host = format!("127.0.0.1:{port}");
            match off_runtime(|| wait_ready(&host, &instance, process.pid)) {
                Ok(()) => {
                    return Registry { mode, host, dir, process: Mutex::new(Some(process)), token_server };
                }
                Err(reason) => {
                    stop(process);
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    // Someone took the port between our probe and the registry's
                    // bind: try another one. Anything else is fatal.
                    if !(last_log.contains("address already in use") || reason == Failure::NotOurs) {
                        panic!("docker-registry did not start ({reason:?}); its log:\n{last_log}");
                    }
                }
            }
        }
        panic!("docker-registry did not start after 5 ports; its last log:\n{last_log}");
    }

    /// One registry per mode per test binary, started on first use.
    pub fn shared(mode: AuthMode) -> &'static Registry {
        static SHARED: [OnceLock<Registry>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let slot = match mode {
            AuthMode::Anonymous => &SHARED[0],
            AuthMode::Basic => &SHARED[1],
            AuthMode::Token => &SHARED[2],
        };
        slot.get_or_init(|| Registry::start(mode))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// How clients authenticate to this registry.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The user/password that can push and pull everything (Basic and Token
    /// modes; an Anonymous registry ignores them).
    pub fn credentials(&self) -> (&str, &str) {
        (USER, PASSWORD)
    }

    /// The token server (Token mode only).
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// Requests received by the token server so far (0 outside Token mode).
    pub fn token_requests(&self) -> usize {
        self.token_server.as_ref().map_or(0, TokenServer::requests)
    }

    /// The pid of the `docker-registry` process (for tests of the kit itself).
    pub fn pid(&self) -> u32 {
        self.process.lock().unwrap().as_ref().map_or(0, |p| p.pid)
    }

    /// The registry's storage root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Path of a blob's data file in the registry's storage, so tests can
    /// corrupt or truncate what the registry serves. Blobs are stored once per
    /// registry, whatever the repository: corrupt only blobs no other test
    /// uses (see [`marker_image`](crate::image::marker_image)).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest_hex(digest);
        self.storage_dir().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// The registry's log so far (stderr and stdout).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// A client that authenticates as the kit's user (in any mode). It is
    /// `reqwest::blocking`: don't create or use it on an async runtime's thread
    /// (wrap the calls in [`off_runtime`]).
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(self.base_url(), Some((USER.into(), PASSWORD.into())))
    }

    /// Pushes `image` as `<repo>:<tag>`: blobs (skipping those the registry
    /// has), then the manifest; an index pushes its child manifests by digest
    /// first. Returns the top-level manifest digest, checked against the
    /// `Docker-Content-Digest` the registry answers.
    ///
    /// Callable from async tests: the blocking HTTP client runs on a thread of
    /// its own, outside any runtime of the caller.
    pub fn push(&self, image: &BuiltImage, repo: &str, tag: &str) -> String {
        off_runtime(|| self.client().push_image(image, repo, tag));
        image.digest.clone()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(process) = self.process.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            stop(process);
        }
    }
}

/// Runs `f` on a thread of its own and waits for it, so that blocking HTTP
/// (`reqwest::blocking` panics inside an async runtime) works from async tests.
/// A panic in `f` is resumed in the caller.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Exited,
    Timeout,
    NotOurs,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_htpasswd(path: &Path) {
    let output = Command::new("htpasswd")
        .args(["-Bbn", USER, PASSWORD])
        .output()
        .unwrap_or_else(|e| panic!("cannot run htpasswd (install apache2-utils): {e}"));
    assert!(output.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::write(path, output.stdout).unwrap();
}

fn config_yaml(mode: AuthMode, dir: &Path, port: u16, instance: &str, token_server: Option<&TokenServer>) -> String {
    let mut config = format!(
        "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: ces-test-http-secret
  headers:
    {INSTANCE_HEADER}: [\"{instance}\"]
",
        storage = dir.join("storage").display(),
    );
    match mode {
        AuthMode::Anonymous => {}
        AuthMode::Basic => {
            write!(
                config,
                "auth:\n  htpasswd:\n    realm: ces-test-registry\n    path: {}\n",
                dir.join("htpasswd").display()
            )
            .unwrap();
        }
        AuthMode::Token => {
            let token_server = token_server.expect("Token mode has a token server");
            write!(
                config,
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token_server.realm(),
                token::SERVICE,
                token::ISSUER,
                token_server.cert_pem().display()
            )
            .unwrap();
        }
    }
    config
}

/// The registry's wrapper: starts `docker-registry serve $1`, prints its pid,
/// waits for a line or end-of-file on stdin, then kills the registry. On
/// end-of-file (the test binary exited, however it exited) it also removes the
/// registry's directory `$2`: statics never drop, so nobody else would. On
/// `keep` (from [`stop`]) the `TempDir` owner removes it.
const WRAPPER: &str = r#"docker-registry serve "$1" </dev/null >&2 & pid=$!
echo $pid
read line
kill $pid 2>/dev/null
wait $pid
[ "$line" = keep ] || case "$2" in /*/ces-test-registry-*) rm -rf -- "$2" ;; esac"#;

/// Starts the registry in `dir` under [`WRAPPER`].
fn spawn(config: &Path, dir: &Path, log: &Path) -> RegistryProcess {
    let log = std::fs::File::create(log).unwrap();
    let mut wrapper = Command::new("sh")
        .args(["-c", WRAPPER, "sh"])
        .arg(config)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
    let mut line = String::new();
    BufReader::new(wrapper.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid = line.trim().parse().unwrap_or_else(|_| panic!("registry wrapper printed {line:?}, not a pid"));
    RegistryProcess { wrapper, pid }
}

/// Tells the wrapper to kill the registry (and wait for it) but keep the
/// directory, and reaps the wrapper; kills both if that takes too long.
fn stop(mut process: RegistryProcess) {
    if let Some(mut stdin) = process.wrapper.stdin.take() {
        // A wrapper that is gone already cannot read it; the kill below covers that.
        let _ = stdin.write_all(b"keep\n");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = process.wrapper.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill").args(["-KILL", &process.pid.to_string()]).status();
    let _ = process.wrapper.kill();
    let _ = process.wrapper.wait();
}

/// Whether `pid` is a live process (not gone, not a zombie waiting for the wrapper).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn wait_ready(host: &str, instance: &str, pid: u32) -> Result<(), Failure> {
    let client = Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if !alive(pid) {
            return Err(Failure::Exited);
        }
        if let Ok(response) = client.get(format!("http://{host}/v2/")).send() {
            let status = response.status();
            if status == StatusCode::OK || status == StatusCode::UNAUTHORIZED {
                let marker = response.headers().get(INSTANCE_HEADER).and_then(|v| v.to_str().ok());
                return if marker == Some(instance) { Ok(()) } else { Err(Failure::NotOurs) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Failure::Timeout)
}

/// A `WWW-Authenticate: Bearer realm=..,service=..,scope=..` challenge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
    pub error: Option<String>,
}

impl BearerChallenge {
    /// Parses a `Bearer` challenge (quoted or bare parameter values, commas
    /// inside quotes as in `scope="repository:x:pull,push"`). `None` for
    /// other schemes or a challenge without a realm.
    pub fn parse(header: &str) -> Option<BearerChallenge> {
        let header = header.trim_start();
        let (scheme, params) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut challenge = BearerChallenge::default();
        let mut rest = params.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end?..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            match key.as_str() {
                "realm" => challenge.realm = value,
                "service" => challenge.service = Some(value),
                "scope" => challenge.scope = Some(value),
                "error" => challenge.error = Some(value),
                _ => {}
            }
            rest = remaining.trim_start().trim_start_matches(',').trim_start();
        }
        (!challenge.realm.is_empty()).then_some(challenge)
    }
}

/// A small blocking Distribution client that answers Basic and Bearer
/// challenges: what [`Registry::push`] uses, and what tests can use to read
/// back what the registry serves.
pub struct RegistryClient {
    http: Client,
    base_url: String,
    credentials: Option<(String, String)>,
    /// The `Authorization` value that worked last (Basic, or the last bearer
    /// token), sent up front until a 401 asks for another.
    authorization: Mutex<Option<String>>,
}

impl RegistryClient {
    /// A client for `base_url` (`http://host:port`), with optional credentials.
    pub fn new(base_url: String, credentials: Option<(String, String)>) -> RegistryClient {
        let http = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        RegistryClient { http, base_url, credentials, authorization: Mutex::new(None) }
    }

    fn basic_header(&self) -> Option<String> {
        self.credentials
            .as_ref()
            .map(|(user, password)| format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))))
    }

    /// Sends the request built by `build`, answering one auth challenge:
    /// Basic → retry with the credentials; Bearer → fetch a token for the
    /// challenge's scope from its realm, retry with it.
    pub fn send(&self, build: impl Fn(&Client) -> RequestBuilder) -> Response {
        let with_auth = |request: RequestBuilder| match self.authorization.lock().unwrap().clone() {
            Some(value) => request.header(AUTHORIZATION, value),
            None => request,
        };
        let response = with_auth(build(&self.http)).send().unwrap();
        if response.status() != StatusCode::UNAUTHORIZED {
            return response;
        }
        let challenge =
            response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let authorization = if challenge.to_ascii_lowercase().starts_with("basic") {
            match self.basic_header() {
                Some(basic) => basic,
                None => return response,
            }
        } else {
            match BearerChallenge::parse(&challenge) {
                Some(bearer) => format!("Bearer {}", self.fetch_token(&bearer)),
                None => return response,
            }
        };
        *self.authorization.lock().unwrap() = Some(authorization.clone());
        build(&self.http).header(AUTHORIZATION, authorization).send().unwrap()
    }

    /// Gets a token from the challenge's realm (with our credentials, if any).
    pub fn fetch_token(&self, challenge: &BearerChallenge) -> String {
        let mut query = Vec::new();
        if let Some(service) = &challenge.service {
            query.push(("service", service.as_str()));
        }
        if let Some(scope) = &challenge.scope {
            query.extend(scope.split(' ').filter(|s| !s.is_empty()).map(|s| ("scope", s)));
        }
        let mut request = self.http.get(&challenge.realm).query(&query);
        if let Some(basic) = self.basic_header() {
            request = request.header(AUTHORIZATION, basic);
        }
        let response = request.send().unwrap();
        let status = response.status();
        let body = response.text().unwrap();
        assert!(status.is_success(), "token server {} answered {status}: {body}", challenge.realm);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        value["token"]
            .as_str()
            .or_else(|| value["access_token"].as_str())
            .unwrap_or_else(|| panic!("token response without a token: {body}"))
            .to_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Whether the registry has `digest` in `repo` (HEAD on the blob).
    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let response = self.send(|c| c.head(&url));
        match response.status() {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            status => panic!("HEAD {url}: {status}"),
        }
    }

    /// Uploads a blob monolithically (POST for an upload URL, then PUT with the digest).
    pub fn push_blob(&self, repo: &str, digest: &str, data: &[u8]) {
        if self.blob_exists(repo, digest) {
            return;
        }
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let response = self.send(|c| c.post(&url).header(reqwest::header::CONTENT_LENGTH, "0"));
        assert_eq!(response.status(), StatusCode::ACCEPTED, "POST {url}: {}", describe(response));
        let location = response.headers().get(LOCATION).expect("upload Location").to_str().unwrap().to_owned();
        let mut upload = reqwest::Url::parse(&self.base_url).unwrap().join(&location).unwrap();
        upload.query_pairs_mut().append_pair("digest", digest);
        let response =
            self.send(|c| c.put(upload.clone()).header(CONTENT_TYPE, "application/octet-stream").body(data.to_vec()));
        assert_eq!(response.status(), StatusCode::CREATED, "PUT {upload}: {}", describe(response));
    }

    /// Puts a manifest under `reference` (a tag or its digest).
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, manifest: &[u8]) -> String {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let response = self.send(|c| c.put(&url).header(CONTENT_TYPE, media_type).body(manifest.to_vec()));
        assert_eq!(response.status(), StatusCode::CREATED, "PUT {url}: {}", describe(response));
        response.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }

    /// Pushes an image or index (children by digest first) as `repo:tag`.
    pub fn push_image(&self, image: &BuiltImage, repo: &str, tag: &str) {
        for child in &image.children {
            self.push_image(child, repo, &child.digest);
        }
        for (digest, data) in &image.blobs {
            self.push_blob(repo, digest, data);
        }
        let answered = self.push_manifest(repo, tag, &image.media_type, &image.manifest);
        assert_eq!(answered, image.digest, "the registry computed another digest for the manifest of {repo}:{tag}");
    }

    /// GETs `/v2/<path>` (with auth), e.g. `repo/manifests/tag` or `repo/blobs/<digest>`.
    pub fn get(&self, path: &str, accept: &[&str]) -> Response {
        let url = self.url(&format!("/v2/{path}"));
        let accept = accept.join(", ");
        self.send(|c| {
            let request = c.get(&url);
            if accept.is_empty() { request } else { request.header(reqwest::header::ACCEPT, &accept) }
        })
    }
}

fn describe(response: Response) -> String {
    let status = response.status();
    format!("{status}: {}", response.text().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let c = BearerChallenge::parse(
            r#"Bearer realm="http://127.0.0.1:1/token",service="ces-test-registry",scope="repository:a/b:pull,push",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(c.realm, "http://127.0.0.1:1/token");
        assert_eq!(c.service.as_deref(), Some("ces-test-registry"));
        assert_eq!(c.scope.as_deref(), Some("repository:a/b:pull,push"));
        assert_eq!(c.error.as_deref(), Some("insufficient_scope"));
    }

    #[test]
    fn bearer_challenge_bare_values_and_other_schemes() {
        let c = BearerChallenge::parse("bearer realm=http://x/token, service=svc").unwrap();
        assert_eq!((c.realm.as_str(), c.service.as_deref()), ("http://x/token", Some("svc")));
        assert_eq!(BearerChallenge::parse(r#"Basic realm="x""#), None);
        assert_eq!(BearerChallenge::parse(r#"Bearer service="x""#), None);
    }
}
