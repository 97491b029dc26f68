//! A GHCR-like bearer token server for the test registry.
//!
//! `GET /token?service=..&scope=repository:<name>:pull[,push]` answers with a
//! JWT signed RS256 whose header carries the certificate in `x5c`, which is how
//! Docker Distribution 2.8 finds the key when it is configured with a
//! `rootcertbundle`. Without an `Authorization` header the token grants `pull`
//! on repositories under `public/` only; with the right Basic credentials it
//! grants what was asked; wrong credentials get 401 and a JSON error body.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;

/// The `service` the registry is configured with (the token's audience).
pub const SERVICE: &str = "ces-test-registry";
/// The `issuer` the registry is configured with.
pub const ISSUER: &str = "ces-test-issuer";
/// Lifetime of the tokens issued, in seconds.
pub const EXPIRES_IN: u64 = 300;
/// Anonymous tokens grant `pull` on repositories whose name starts with this.
pub const PUBLIC_PREFIX: &str = "public/";

/// A running token server (a `tiny_http` server on 127.0.0.1 in a background
/// thread). Stopped on drop.
pub struct TokenServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    port: u16,
    cert_pem: PathBuf,
    requests: Arc<AtomicUsize>,
}

/// What the server needs to answer a request; shared with its thread.
struct Issuer {
    key: RsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
    rng: SystemRandom,
    next_id: AtomicU64,
}

/// One access entry of a token: `{type, name, actions}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// Parses a scope such as `repository:public/busybox:pull,push`. The name
    /// may itself contain `:` (a registry with a port), so the type is the
    /// first field and the actions the last.
    pub fn parse_scope(scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        let actions = actions.split(',').filter(|a| !a.is_empty()).map(String::from).collect();
        Some(Access { kind: kind.into(), name: name.into(), actions })
    }
}

impl TokenServer {
    /// Generates a key and self-signed certificate (with the `openssl` CLI)
    /// in `dir`, and starts serving on 127.0.0.1:<free port>.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        let key_pem = dir.join("token-key.pem");
        let cert_pem = dir.join("token-cert.pem");
        let key_der = dir.join("token-key.pk8.der");
        let cert_der = dir.join("token-cert.der");
        // Our own config, so that the host's openssl.cnf (absent, or with
        // other defaults) does not matter.
        let config = dir.join("openssl.cnf");
        std::fs::write(&config, OPENSSL_CNF).unwrap();
        openssl(&[
            "req",
            "-config",
            path_str(&config),
            "-extensions",
            "v3_ca",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            path_str(&key_pem),
            "-out",
            path_str(&cert_pem),
            "-days",
            "2",
            "-subj",
            "/CN=ces-test-token",
        ]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            path_str(&key_pem),
            "-outform",
            "DER",
            "-out",
            path_str(&key_der),
        ]);
        openssl(&["x509", "-in", path_str(&cert_pem), "-outform", "DER", "-out", path_str(&cert_der)]);
        let key = RsaKeyPair::from_pkcs8(&std::fs::read(&key_der).unwrap())
            .unwrap_or_else(|e| panic!("ring refuses the PKCS#8 key openssl wrote: {e}"));
        let issuer = Issuer {
            key,
            cert_der: std::fs::read(&cert_der).unwrap(),
            user: user.into(),
            password: password.into(),
            rng: SystemRandom::new(),
            next_id: AtomicU64::new(1),
        };

        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0").unwrap_or_else(|e| panic!("token server: cannot listen: {e}")),
        );
        let port = server.server_addr().to_ip().expect("token server listens on IP").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let server = Arc::clone(&server);
            let requests = Arc::clone(&requests);
            std::thread::Builder::new()
                .name(format!("ces-token-server-{port}"))
                .spawn(move || {
                    // recv() fails once unblock() is called on drop.
                    while let Ok(request) = server.recv() {
                        requests.fetch_add(1, Ordering::SeqCst);
                        issuer.answer(request);
                    }
                })
                .unwrap()
        };
        TokenServer { server, thread: Some(thread), port, cert_pem, requests }
    }

    /// The realm to configure in the registry: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate bundle to configure as the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &Path {
        &self.cert_pem
    }

    /// How many HTTP requests this server has received (any path, any outcome).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Issuer {
    fn answer(&self, request: tiny_http::Request) {
        let (status, body, basic_challenge) = self.decide(&request);
        let mut response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", "application/json"));
        if basic_challenge {
            response = response.with_header(header("WWW-Authenticate", "Basic realm=\"ces-test-token\""));
        }
        // The client may have gone away; nothing to do about it.
        let _ = request.respond(response);
    }

    /// Returns (status, JSON body, whether to send a Basic challenge).
    fn decide(&self, request: &tiny_http::Request) -> (u16, String, bool) {
        let error = |code: &str, message: &str| json!({"errors": [{"code": code, "message": message}]}).to_string();
        if *request.method() != tiny_http::Method::Get {
            return (405, error("UNSUPPORTED", "only GET /token is served"), false);
        }
        let Ok(url) = reqwest::Url::parse(&format!("http://token{}", request.url())) else {
            return (400, error("BAD_REQUEST", "unparsable request target"), false);
        };
        if url.path() != "/token" {
            return (404, error("NOT_FOUND", "only /token is served"), false);
        }
        let mut scopes = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "service" if value != SERVICE => {
                    return (
                        400,
                        error("BAD_REQUEST", &format!("unknown service {value:?}, expected {SERVICE:?}")),
                        false,
                    );
                }
                // Scopes may be repeated, or space-separated in one parameter.
                "scope" => {
                    for scope in value.split(' ').filter(|s| !s.is_empty()) {
                        match Access::parse_scope(scope) {
                            Some(access) => scopes.push(access),
                            None => return (400, error("BAD_REQUEST", &format!("malformed scope {scope:?}")), false),
                        }
                    }
                }
                _ => {}
            }
        }

        let authorization =
            request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_owned());
        let subject = match authorization {
            None => None,
            Some(value) => match self.check_basic(&value) {
                Some(user) => Some(user),
                None => return (401, error("UNAUTHORIZED", "authentication required: wrong user or password"), true),
            },
        };

        let granted: Vec<Access> = scopes
            .into_iter()
            .filter_map(|mut access| {
                if subject.is_none() {
                    let public = access.kind == "repository" && access.name.starts_with(PUBLIC_PREFIX);
                    access.actions.retain(|a| public && a == "pull");
                }
                (!access.actions.is_empty()).then_some(access)
            })
            .collect();
        let token = self.sign(subject.as_deref().unwrap_or(""), &granted);
        let now = now_secs();
        let body = json!({
            "token": token,
            "access_token": token,
            "expires_in": EXPIRES_IN,
            "issued_at": rfc3339(now),
        });
        (200, body.to_string(), false)
    }

    /// Returns the user name when `value` is `Basic` with the right credentials.
    fn check_basic(&self, value: &str) -> Option<String> {
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (user, password) = decoded.split_once(':')?;
        (user == self.user && password == self.password).then(|| user.to_owned())
    }

    fn sign(&self, subject: &str, access: &[Access]) -> String {
        let now = now_secs();
        let header = json!({
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let access: Vec<_> =
            access.iter().map(|a| json!({"type": a.kind, "name": a.name, "actions": a.actions})).collect();
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + EXPIRES_IN,
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": format!("ces-test-{}-{}", now, self.next_id.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &self.rng, signing_input.as_bytes(), &mut signature).expect("RSA signing");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// Decodes the claims of a JWT without checking the signature (for tests that
/// want to look at what was granted).
pub fn decode_claims(token: &str) -> serde_json::Value {
    let claims = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url claims")).expect("JSON claims")
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

/// Just enough for `openssl req -x509`: a CA certificate, as the default
/// Debian config makes it.
pub(crate) const OPENSSL_CNF: &str = "[req]
distinguished_name = dn
prompt = no
[dn]
CN = ces-test-token
[v3_ca]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer
basicConstraints = critical,CA:true
";

/// Runs the `openssl` CLI; panics with its stderr if it fails.
pub(crate) fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (install the openssl package): {e}"));
    assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2024-05-01T12:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let at = i64::try_from(secs).ok().and_then(|s| jiff::Timestamp::from_second(s).ok());
    at.unwrap_or(jiff::Timestamp::MAX).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn scope_parsing() {
        assert_eq!(
            Access::parse_scope("repository:public/busybox:pull,push"),
            Some(Access {
                kind: "repository".into(),
                name: "public/busybox".into(),
                actions: vec!["pull".into(), "push".into()]
            })
        );
        assert_eq!(Access::parse_scope("registry:catalog:*").unwrap().actions, vec!["*"]);
        assert_eq!(Access::parse_scope("repository:localhost:5000/x:pull").unwrap().name, "localhost:5000/x");
        assert_eq!(Access::parse_scope("repository"), None);
        assert_eq!(Access::parse_scope("repository::pull"), None);
    }
}
