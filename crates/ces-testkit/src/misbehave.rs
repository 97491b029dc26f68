//! A misbehaving registry: a small server on 127.0.0.1 that speaks enough of
//! the distribution API (`/v2/`, manifests and blobs by path) to be pulled
//! from, and misbehaves as each test scripts it: redirects anywhere (another
//! port, `http` or `https`), `401` challenges with a realm anywhere, `429`
//! with `Retry-After`, `502`/`503`/`504`, connections closed after N bytes of
//! a body, delays, `Range` requests honoured or not, endless bodies. It
//! records every request it gets (with its `Authorization` header), so tests
//! can assert where credentials went.
//!
//! One thread per connection, one request per connection (`Connection:
//! close`), plain blocking I/O; `https` through rustls with a certificate of a
//! test CA ([`TestCa`]) that clients are told to trust (`SSL_CERT_FILE`).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::image::BuiltImage;
use crate::token::{OPENSSL_CNF, openssl};

/// The token the server's own `/token` endpoint hands out, and the only
/// bearer token it accepts when [`Misbehaving::require_bearer`] is on.
pub const TOKEN: &str = "misbehaving-test-token";

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// What the registry holds for the path (200 with the bytes, `Range`
    /// honoured when on; 404 when it holds nothing there).
    Content,
    /// This status with an empty body.
    Status(u16),
    /// This status with these headers and an empty body (e.g. `429` with
    /// `Retry-After`).
    StatusWith(u16, Vec<(String, String)>),
    /// This status, these headers and this body, whatever was asked (e.g. a
    /// `206` with other bytes than the blob's).
    Raw(u16, Vec<(String, String)>, Vec<u8>),
    /// `307 Temporary Redirect` to this URL.
    Redirect(String),
    /// `401` with this `WWW-Authenticate` value.
    Challenge(String),
    /// The content, announced whole (or as the range asked for), but the
    /// connection closes after this many bytes of the body.
    CloseAfter(u64),
    /// `200` with no length, then bytes for ever (until the client hangs up,
    /// or 4 GiB).
    Endless,
    /// Waits, then answers.
    Delayed(Duration, Box<Answer>),
}

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `HEAD`...
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

impl Seen {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// A running misbehaving registry. Stopped on drop.
pub struct Misbehaving {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the server holds at a path: content type and bytes.
type Held = (String, Arc<Vec<u8>>);

#[derive(Default)]
struct State {
    /// Path → (content type, bytes).
    content: Mutex<HashMap<String, Held>>,
    /// Path → answers to give, in order; [`Answer::Content`] once used up.
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
    /// Path → the answer given every time (after any script).
    always: Mutex<HashMap<String, Answer>>,
    no_ranges: AtomicBool,
    /// The realm of the challenge to send without our bearer token.
    bearer_realm: Mutex<Option<String>>,
    seen: Mutex<Vec<Seen>>,
}

impl Misbehaving {
    /// A plain-HTTP registry on 127.0.0.1:<free port>.
    pub fn http() -> Misbehaving {
        Misbehaving::start(None)
    }

    /// An `https` registry on 127.0.0.1:<free port>, with a certificate for
    /// `127.0.0.1` and `localhost` signed by `ca`.
    pub fn https(ca: &TestCa) -> Misbehaving {
        Misbehaving::start(Some(ca.server_config()))
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Misbehaving {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let is_tls = tls.is_some();
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("ces-misbehaving-{}", addr.port()))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let state = Arc::clone(&state);
                        let tls = tls.clone();
                        std::thread::spawn(move || serve_connection(stream, tls, &state));
                    }
                })
                .unwrap()
        };
        Misbehaving { addr, tls: is_tls, state, stop, thread: Some(thread) }
    }

    /// `127.0.0.1:PORT`, as a registry is named in a reference and a config.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http[s]://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// The path of a blob: `/v2/<repo>/blobs/<digest>`.
    pub fn blob_path(repo: &str, digest: &str) -> String {
        format!("/v2/{repo}/blobs/{digest}")
    }

    /// The path of a manifest: `/v2/<repo>/manifests/<tag or digest>`.
    pub fn manifest_path(repo: &str, reference: &str) -> String {
        format!("/v2/{repo}/manifests/{reference}")
    }

    /// Serves `image` as `<repo>:<tag>` (and by digest), with its blobs (and
    /// an index's children).
    pub fn serve(&self, image: &BuiltImage, repo: &str, tag: &str) {
        for child in &image.children {
            self.serve(child, repo, &child.digest);
        }
        let manifest = Arc::new(image.manifest.clone());
        let mut content = self.state.content.lock().unwrap();
        for reference in [tag, image.digest.as_str()] {
            content.insert(Self::manifest_path(repo, reference), (image.media_type.clone(), Arc::clone(&manifest)));
        }
        for (digest, bytes) in &image.blobs {
            content.insert(
                Self::blob_path(repo, digest),
                ("application/octet-stream".to_owned(), Arc::new(bytes.clone())),
            );
        }
    }

    /// Serves `bytes` at `path` (any path: a token endpoint, a CDN's blob URL).
    pub fn put(&self, path: &str, content_type: &str, bytes: Vec<u8>) {
        self.state.content.lock().unwrap().insert(path.to_owned(), (content_type.to_owned(), Arc::new(bytes)));
    }

    /// Answers the next requests for `path` with `answers`, in order; then
    /// as usual.
    pub fn script(&self, path: &str, answers: impl IntoIterator<Item = Answer>) {
        self.state.scripts.lock().unwrap().entry(path.to_owned()).or_default().extend(answers);
    }

    /// Answers every request for `path` (after any script) with `answer`.
    pub fn always(&self, path: &str, answer: Answer) {
        self.state.always.lock().unwrap().insert(path.to_owned(), answer);
    }

    /// Whether `Range` requests are honoured (on by default).
    pub fn ranges(&self, on: bool) {
        self.state.no_ranges.store(!on, Ordering::SeqCst);
    }

    /// From now on, every `/v2/` request without `Authorization: Bearer
    /// <TOKEN>` gets `401` with `Bearer realm="<realm>",service="misbehaving"`.
    /// The server's own `/token` hands out [`TOKEN`] to anyone.
    pub fn require_bearer(&self, realm: &str) {
        *self.state.bearer_realm.lock().unwrap() = Some(realm.to_owned());
    }

    /// Every request so far, in the order they arrived.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The requests so far for `path` (query ignored).
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path() == path).collect()
    }
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn serve_connection(stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, state: &State) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut stream: Box<dyn Stream> = match tls {
        None => Box::new(stream),
        Some(config) => match rustls::ServerConnection::new(config) {
            Ok(connection) => Box::new(rustls::StreamOwned::new(connection, stream)),
            Err(_) => return,
        },
    };
    let Some(request) = read_request(&mut stream) else { return };
    state.seen.lock().unwrap().push(request.clone());
    let answer = state.answer_for(&request);
    // The client may have hung up; nothing to do about it.
    let _ = respond(&mut stream, state, &request, answer);
}

/// Reads the request line and headers (no body: the client only GETs).
fn read_request(stream: &mut dyn Stream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let (mut authorization, mut range) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_owned()),
                "range" => range = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    Some(Seen { method, target, authorization, range })
}

impl State {
    fn answer_for(&self, request: &Seen) -> Answer {
        let path = request.path().to_owned();
        if let Some(answer) = self.scripts.lock().unwrap().get_mut(&path).and_then(VecDeque::pop_front) {
            return answer;
        }
        if let Some(answer) = self.always.lock().unwrap().get(&path) {
            return answer.clone();
        }
        if let Some(realm) = self.bearer_realm.lock().unwrap().clone()
            && path.starts_with("/v2/")
            && request.authorization.as_deref() != Some(&format!("Bearer {TOKEN}"))
        {
            return Answer::Challenge(format!("Bearer realm=\"{realm}\",service=\"misbehaving\""));
        }
        Answer::Content
    }
}

fn respond(stream: &mut dyn Stream, state: &State, request: &Seen, answer: Answer) -> std::io::Result<()> {
    match answer {
        Answer::Delayed(delay, then) => {
            std::thread::sleep(delay);
            respond(stream, state, request, *then)
        }
        Answer::Status(code) => head(stream, code, &[], Some(0)),
        Answer::StatusWith(code, headers) => {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            head(stream, code, &headers, Some(0))
        }
        Answer::Raw(code, headers, body) => {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            head(stream, code, &headers, Some(body.len() as u64))?;
            stream.write_all(&body)?;
            stream.flush()
        }
        Answer::Redirect(location) => head(stream, 307, &[("Location", &location)], Some(0)),
        Answer::Challenge(challenge) => head(stream, 401, &[("WWW-Authenticate", &challenge)], Some(0)),
        Answer::Endless => {
            head(stream, 200, &[("Content-Type", "application/octet-stream")], None)?;
            let chunk = vec![0x5a; 64 << 10];
            for _ in 0..(4u64 << 30) / chunk.len() as u64 {
                stream.write_all(&chunk)?;
            }
            stream.flush()
        }
        Answer::Content => content(stream, state, request, None),
        Answer::CloseAfter(bytes) => content(stream, state, request, Some(bytes)),
    }
}

/// Serves what the server holds for the path, or 404; `/v2/` is `{}` and
/// `/token` a token. `close_after`: bytes of the body sent before hanging up.
fn content(stream: &mut dyn Stream, state: &State, request: &Seen, close_after: Option<u64>) -> std::io::Result<()> {
    let path = request.path();
    let held = state.content.lock().unwrap().get(path).cloned();
    let (content_type, bytes) = match held {
        Some(held) => held,
        None if path == "/v2/" => ("application/json".to_owned(), Arc::new(b"{}".to_vec())),
        None if path == "/token" => {
            ("application/json".to_owned(), Arc::new(format!("{{\"token\":\"{TOKEN}\"}}").into_bytes()))
        }
        None => {
            let body = br#"{"errors":[{"code":"NOT_FOUND","message":"not held here"}]}"#;
            head(stream, 404, &[("Content-Type", "application/json")], Some(body.len() as u64))?;
            return stream.write_all(body);
        }
    };
    let total = bytes.len() as u64;
    let start = match request.range.as_deref().and_then(range_start) {
        Some(start) if !state.no_ranges.load(Ordering::SeqCst) && start < total => Some(start),
        _ => None,
    };
    let body = &bytes[start.unwrap_or(0) as usize..];
    let content_range = start.map(|s| format!("bytes {s}-{}/{total}", total - 1));
    let mut headers = vec![("Content-Type", content_type.as_str()), ("Accept-Ranges", "bytes")];
    if let Some(range) = &content_range {
        headers.push(("Content-Range", range));
    }
    head(stream, if start.is_some() { 206 } else { 200 }, &headers, Some(body.len() as u64))?;
    if request.method == "HEAD" {
        return stream.flush();
    }
    let send = close_after.map_or(body.len(), |n| (n as usize).min(body.len()));
    stream.write_all(&body[..send])?;
    stream.flush()
}

/// `bytes=N-` → N (the only form ces sends).
fn range_start(range: &str) -> Option<u64> {
    range.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

fn head(stream: &mut dyn Stream, code: u16, headers: &[(&str, &str)], length: Option<u64>) -> std::io::Result<()> {
    let mut text = format!("HTTP/1.1 {code} {}\r\nConnection: close\r\n", reason(code));
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(length) = length {
        text.push_str(&format!("Content-Length: {length}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes())
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Whatever",
    }
}

/// A throw-away certificate authority (made with the `openssl` CLI) and a
/// server certificate it signed for `127.0.0.1` and `localhost`. Clients
/// trust it through `SSL_CERT_FILE=<ca_pem>`.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Makes the CA and the server certificate (EC P-256: fast to make).
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new().prefix("ces-test-ca-").tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        std::fs::write(dir.path().join("openssl.cnf"), OPENSSL_CNF).unwrap();
        std::fs::write(
            dir.path().join("server.ext"),
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let cnf = p("openssl.cnf");
        let mut ca = vec!["req", "-config", &cnf];
        ca.extend(["-extensions", "v3_ca", "-x509", "-days", "2", "-subj", "/CN=ces-test-ca"]);
        let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
        ca.extend(ec);
        ca.extend(["-keyout", &ca_key, "-out", &ca_pem]);
        openssl(&ca);
        let (key, csr) = (p("server.key"), p("server.csr"));
        let mut req = vec!["req", "-config", &cnf, "-subj", "/CN=127.0.0.1"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("server.ext"),
            "-outform",
            "DER",
            "-out",
            &p("server.der"),
        ]);
        openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER", "-out", &p("server.key.der")]);
        TestCa { dir }
    }

    /// The CA certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let read = |name: &str| std::fs::read(self.dir.path().join(name)).unwrap();
        let cert = rustls::pki_types::CertificateDer::from(read("server.der"));
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(read("server.key.der").into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// `n` bytes that do not compress (xorshift), for big blobs made fast.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(n);
    out
}
