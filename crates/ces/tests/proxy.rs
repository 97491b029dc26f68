//! `ces proxy` in front of the test kit's real registries (docker-registry:
//! anonymous, and token auth for private repositories): `ces pull` through
//! it by `[registries] mirror`, and skopeo; one upstream fetch per blob for
//! concurrent pulls; cached tags served when the upstream is gone; eviction;
//! the refusals (credentials, enablement, repositories not allowed, path
//! tricks, an odd Host); private content kept to the clients the upstream
//! accepts; TLS with a test CA. Raw HTTP requests are written by hand, so
//! that nothing normalises the paths tried.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ces_testkit::image::busybox_image;
use ces_testkit::registry::{AuthMode, Registry};
use common::{Sandbox, TEST_USER};

const PASSWORD: &str = "proxy-pw";

/// A running `ces proxy`, stopped on drop.
struct Proxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts `ces proxy` for `upstreams` (registry, repository patterns);
    /// users alice, bob and carol (all with [`PASSWORD`]); `[pull]` enables
    /// alice and carol; `extra` is more of the proxy's TOML (top level).
    fn start(upstreams: &[(&Registry, &str)], extra: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let mut htpasswd = String::new();
        for user in ["alice", "bob", "carol"] {
            let out =
                Command::new("htpasswd").args(["-Bbn", user, PASSWORD]).output().expect("htpasswd (apache2-utils)");
            htpasswd.push_str(String::from_utf8(out.stdout).unwrap().trim());
            htpasswd.push('\n');
        }
        std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
        let d = dir.path().display();
        let mut toml = format!(
            "listen = \"127.0.0.1:0\"\ncache_dir = \"{d}/cache\"\naudit_log = \"{d}/audit.jsonl\"\nhtpasswd = \"{d}/htpasswd\"\nces_config = \"{d}/ces.toml\"\n{extra}\n"
        );
        for (registry, repositories) in upstreams {
            // The token service is the only other host the registry may send the proxy to.
            let realm = registry.token_server().map(|t| t.realm()).unwrap_or_default();
            let realm_host = realm.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default();
            toml.push_str(&format!(
                "\n[[upstream]]\nname = \"{h}\"\nalias = \"local\"\nurl = \"http://{h}\"\nrepositories = [{repositories}]\nredirect_hosts = [{}]\n",
                if realm_host.is_empty() { String::new() } else { format!("{realm_host:?}") },
                h = registry.host()
            ));
        }
        std::fs::write(dir.path().join("proxy.toml"), toml).unwrap();
        // (anonymous: the name clients without credentials have, where a proxy allows them)
        std::fs::write(dir.path().join("ces.toml"), "[pull]\nallowed_users = [\"alice\", \"carol\", \"anonymous\"]\n")
            .unwrap();
        Proxy::spawn(dir)
    }

    fn spawn(dir: tempfile::TempDir) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ces"))
            .args(["proxy", "--config"])
            .arg(dir.path().join("proxy.toml"))
            .env_remove("CES_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("ces proxy: listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("ces proxy did not start: {line}"));
        // Keep reading its log, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = stderr.read_to_string(&mut sink);
        });
        Proxy { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's audit records, parsed.
    fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// A counter of `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let (_, _, body) = self.get("/metrics", &[]);
        body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0, |v| v.trim().parse().unwrap())
    }

    /// A raw `GET path` with `headers` (and Host, unless given): status,
    /// headers (lower-case), body.
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
        raw_get(self.port, path, headers)
    }
}

fn raw_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().split_whitespace().nth(1).unwrap_or("0").parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    // Bodies here are small: a chunked one is read whole (sizes and all).
    (status, headers, body.to_owned())
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// A ces sandbox that allows `registry` and pulls through `mirror`.
fn client(registry: &Registry, mirror: &str) -> Sandbox {
    let sb = Sandbox::with_hosts(&[registry.host()], &[]);
    let config = std::fs::read_to_string(&sb.config).unwrap();
    let config = config.replacen("[registries]\n", &format!("[registries]\nmirror = {mirror:?}\n"), 1);
    std::fs::write(&sb.config, config).unwrap();
    sb
}

/// `ces pull` in `sb` through the proxy as `user` (and `upstream`
/// credentials for the registry, passed on by the proxy).
fn pull(sb: &Sandbox, image: &str, user: &str, upstream: Option<(&str, &str)>) -> common::Run {
    let mut args = vec!["pull"];
    if let Some((u, _)) = upstream {
        args.extend_from_slice(&["--user", u]);
    }
    args.push(image);
    let mut cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &args);
    cmd.env("CES_PROXY_USER", user).env("CES_PROXY_PASSWORD", PASSWORD);
    if let Some((_, token)) = upstream {
        cmd.env("CES_REGISTRY_TOKEN", token);
    }
    sb.run(cmd)
}

/// Pushes the busybox image as `repo:tag`: its digest and how many blobs
/// it has (config and layers).
fn pushed(registry: &Registry, repo: &str, tag: &str) -> (String, usize) {
    let image = busybox_image().build();
    let digest = registry.push(&image, repo, tag);
    (digest, image.blobs.len())
}

#[test]
fn ces_pull_and_skopeo_go_through_the_proxy() {
    let registry = Registry::shared(AuthMode::Anonymous);
    let (digest, _) = pushed(registry, "proxy/app", "1");
    let proxy = Proxy::start(&[(registry, "\"proxy/**\"")], "");
    let image = format!("{}/proxy/app:1", registry.host());

    let sb = client(registry, &proxy.url());
    let out = pull(&sb, &image, "alice", None);
    assert!(out.ok().contains(&digest), "{out:?}");
    let images = sb.images();
    assert_eq!(images[0]["reference"], image.as_str(), "the image keeps its registry's name: {images:?}");
    let record = sb.audit_records().into_iter().rfind(|r| r["event"] == "pull").unwrap();
    assert_eq!(record["endpoint"], proxy.url(), "the audit says which endpoint served it: {record}");
    assert_eq!(record["registry"], registry.host());

    let served = proxy.audit();
    let manifest = served.iter().find(|r| r["object"] == "manifest").expect("the manifest's record");
    assert_eq!((manifest["client"].as_str(), manifest["cache"].as_str()), (Some("alice"), Some("miss")), "{manifest}");
    assert_eq!(manifest["digest"], digest.as_str());
    assert_eq!(manifest["upstream"], registry.host());
    assert!(served.iter().any(|r| r["object"] == "blob" && r["cache"] == "miss"), "{served:?}");
    assert_eq!(served[0]["event"], "proxy_pull");
    // The proxy's log is a ces audit log: its chain verifies.
    let log = ces_audit::AuditLog::new(proxy.dir.path().join("audit.jsonl"));
    assert!(log.verify().is_ok());

    // Again, from another store: from the cache.
    let again = client(registry, &proxy.url());
    pull(&again, &image, "alice", None).ok();
    let hits = proxy.audit().into_iter().filter(|r| r["cache"] == "hit").count();
    assert!(hits >= 2, "manifest and blobs from the cache: {:?}", proxy.audit());
    let (_, blobs) = (digest.clone(), busybox_image().build().blobs.len());
    assert_eq!(proxy.metric("ces_proxy_upstream_blob_fetches_total"), blobs as u64, "each blob fetched once");

    // skopeo, with the proxy's credentials.
    let out_dir = tempfile::tempdir().unwrap();
    let status = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--src-creds", &format!("alice:{PASSWORD}")])
        // By the upstream's alias: an image name cannot hold a second port.
        .arg(format!("docker://127.0.0.1:{}/local/proxy/app:1", proxy.port))
        .arg(format!("oci:{}:x", out_dir.path().display()))
        .output()
        .unwrap();
    assert!(status.status.success(), "skopeo: {}", String::from_utf8_lossy(&status.stderr));
    let index = std::fs::read_to_string(out_dir.path().join("index.json")).unwrap();
    assert!(index.contains(&digest), "{index}");
}

#[test]
fn what_the_proxy_refuses_it_never_fetches() {
    let registry = Registry::shared(AuthMode::Anonymous);
    pushed(registry, "proxy/allowed", "1");
    pushed(registry, "secret/other", "1");
    let proxy = Proxy::start(&[(registry, "\"proxy/**\"")], "server_names = [\"127.0.0.1\"]");
    let host = registry.host();
    let alice = basic("alice", PASSWORD);
    let manifest = |repo: &str| format!("/v2/{host}/{repo}/manifests/1");
    let error_code = |body: &str| -> String {
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        json["errors"][0]["code"].as_str().unwrap().to_owned()
    };

    // Credentials: none, a wrong password, a user [pull] does not enable.
    let (status, headers, body) = proxy.get(&manifest("proxy/allowed"), &[]);
    assert_eq!((status, error_code(&body).as_str()), (401, "UNAUTHORIZED"));
    assert!(headers.iter().any(|(n, v)| n == "www-authenticate" && v.starts_with("Basic")), "{headers:?}");
    let (status, _, _) = proxy.get(&manifest("proxy/allowed"), &[("Authorization", &basic("alice", "wrong"))]);
    assert_eq!(status, 401);
    let (status, _, body) = proxy.get(&manifest("proxy/allowed"), &[("Authorization", &basic("bob", PASSWORD))]);
    assert_eq!((status, error_code(&body).as_str()), (403, "DENIED"));
    assert!(body.contains("user bob is not enabled to pull"), "{body}");

    // A repository the config does not list: refused, and never asked of the registry.
    let logged = registry.log().len();
    let (status, _, body) = proxy.get(&manifest("secret/other"), &[("Authorization", &alice)]);
    assert_eq!((status, error_code(&body).as_str()), (403, "DENIED"), "{body}");
    assert!(!registry.log()[logged..].contains("secret/other"), "the registry was asked for it");
    // Path tricks, an odd Host, a blob no manifest named.
    for path in [
        format!("/v2/{host}/proxy/../secret/other/manifests/1"),
        format!("/v2/{host}/proxy%2F..%2Fsecret/other/manifests/1"),
        format!("/v2/{host}//secret/other/manifests/1"),
        format!("/v2/{host}/proxy/allowed/manifests/1%00"),
    ] {
        let (status, _, body) = proxy.get(&path, &[("Authorization", &alice)]);
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, _, _) = proxy.get(&manifest("proxy/allowed"), &[("Authorization", &alice), ("Host", "evil.example")]);
    assert_eq!(status, 400, "an odd Host");
    let blob = format!("/v2/{host}/proxy/allowed/blobs/sha256:{}", "0".repeat(64));
    let (status, _, body) = proxy.get(&blob, &[("Authorization", &alice)]);
    assert_eq!((status, error_code(&body).as_str()), (404, "BLOB_UNKNOWN"));
    let (status, _, _) = proxy.get(&manifest("proxy/allowed"), &[("Authorization", &alice)]);
    assert_eq!(status, 200, "and what is allowed is served");
    // Refusals are audited too.
    let refused = proxy.audit().into_iter().filter(|r| r["result"] == "refused").count();
    assert!(refused >= 2, "{:?}", proxy.audit());
    assert!(proxy.metric("ces_proxy_upstream_errors_total") == 0);
    let (status, _, body) = proxy.get("/healthz", &[]);
    assert_eq!((status, body.trim()), (200, "ok"));
}

#[test]
fn concurrent_pulls_fetch_each_blob_once() {
    let registry = Registry::shared(AuthMode::Anonymous);
    let (_, blobs) = pushed(registry, "proxy/many", "1");
    let proxy = Proxy::start(&[(registry, "\"proxy/**\"")], "");
    let image = format!("{}/proxy/many:1", registry.host());
    let sandboxes: Vec<Sandbox> = (0..6).map(|_| client(registry, &proxy.url())).collect();
    std::thread::scope(|scope| {
        let pulls: Vec<_> = sandboxes.iter().map(|sb| scope.spawn(|| pull(sb, &image, "alice", None))).collect();
        for pull in pulls {
            pull.join().unwrap().ok();
        }
    });
    // One fetch per blob (the config and the layers), whoever asked first.
    assert_eq!(proxy.metric("ces_proxy_upstream_blob_fetches_total"), blobs as u64);
    let served: Vec<_> = proxy.audit().into_iter().filter(|r| r["object"] == "blob" && r["result"] == "ok").collect();
    assert_eq!(served.len(), 6 * blobs, "every pull got every blob: {served:?}");
    // The ones that waited for another's download had it from the cache.
    assert_eq!(served.iter().filter(|r| r["cache"] == "miss").count(), blobs, "{served:?}");
}

#[test]
fn cached_tags_are_served_when_the_upstream_is_gone() {
    let registry = Registry::start(AuthMode::Anonymous);
    pushed(&registry, "proxy/kept", "1");
    let proxy = Proxy::start(&[(&registry, "\"proxy/**\"")], "tag_ttl_seconds = 0");
    let host = registry.host();
    let first = client(&registry, &proxy.url());
    pull(&first, &format!("{host}/proxy/kept:1"), "alice", None).ok();
    let sb = client(&registry, &proxy.url());
    drop(registry);

    // The tag is asked of the upstream again (its time is 0), which is
    // gone: the cached one is served, and says so.
    let (status, headers, _) =
        proxy.get(&format!("/v2/{host}/proxy/kept/manifests/1"), &[("Authorization", &basic("alice", PASSWORD))]);
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(n, v)| n == "x-ces-cache" && v == "stale"), "{headers:?}");
    pull(&sb, &format!("{host}/proxy/kept:1"), "alice", None).ok();
    assert!(proxy.audit().iter().any(|r| r["cache"] == "stale"));
    // A tag it never had: a clear error.
    let out = pull(&sb, &format!("{host}/proxy/kept:2"), "alice", None);
    let err = out.fails();
    assert!(err.contains("the pull proxy 127.0.0.1:"), "{err}");
    assert!(err.contains("the cache has not got 2"), "{err}");
    assert!(!err.contains("Retrying"), "the proxy tried its upstream already: {err}");
}

#[test]
fn the_cache_evicts_least_recently_used_blobs() {
    use ces_testkit::image::ImageSpec;
    use ces_testkit::layer::{Entry, Layer};
    let registry = Registry::shared(AuthMode::Anonymous);
    // Two images of one layer each, with nothing in common.
    let image = |name: &str| {
        let noise: Vec<u8> =
            (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ name.as_bytes()[0]).collect();
        ImageSpec::new(vec![Layer::new(vec![Entry::file(&format!("data/{name}"), noise)])]).build()
    };
    let (a, b) = (image("a"), image("b"));
    registry.push(&a, "proxy/evict-a", "1");
    registry.push(&b, "proxy/evict-b", "1");
    let weight = |i: &ces_testkit::image::BuiltImage| i.blobs.iter().map(|(_, bytes)| bytes.len() as u64).sum::<u64>();
    // Room for one image, not two.
    let room = weight(&a).max(weight(&b)) * 3 / 2;
    let proxy = Proxy::start(&[(registry, "\"proxy/**\"")], &format!("cache_max_size = {room}"));
    let host = registry.host();
    let alice = basic("alice", PASSWORD);
    let fetch_all = |repo: &str, image: &ces_testkit::image::BuiltImage| {
        let (status, _, _) = proxy.get(&format!("/v2/{host}/{repo}/manifests/1"), &[("Authorization", &alice)]);
        assert_eq!(status, 200);
        for (digest, _) in &image.blobs {
            let (status, _, _) = proxy.get(&format!("/v2/{host}/{repo}/blobs/{digest}"), &[("Authorization", &alice)]);
            assert_eq!(status, 200, "{repo} {digest}");
        }
    };
    fetch_all("proxy/evict-a", &a);
    fetch_all("proxy/evict-b", &b);
    let blobs = proxy.dir.path().join("cache/store/oci/blobs/sha256");
    let kept = |digest: &str| blobs.join(digest.trim_start_matches("sha256:")).exists();
    let total = || -> u64 { std::fs::read_dir(&blobs).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum() };
    // The proxy evicts once the download is stored, which the client's
    // last bytes may reach first: a bound on the wait, not a measure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while total() > room && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let total = total();
    assert!(total <= room, "{total} bytes kept, {room} allowed");
    assert!(!kept(&a.layer_digests[0]), "a's layer, the least recently used, went");
    assert!(kept(&b.layer_digests[0]), "b's stays");
    // Asked again, it comes from the upstream again (with a's config, if that went too).
    let before = proxy.metric("ces_proxy_upstream_blob_fetches_total");
    fetch_all("proxy/evict-a", &a);
    assert!(proxy.metric("ces_proxy_upstream_blob_fetches_total") > before);
    assert!(kept(&a.layer_digests[0]));
}

#[test]
fn private_content_is_kept_to_clients_the_registry_accepts() {
    let registry = Registry::shared(AuthMode::Token);
    let (digest, _) = pushed(registry, "private/app", "1");
    let proxy = Proxy::start(&[(registry, "\"private/**\"")], "");
    let host = registry.host();
    let (user, token) = registry.credentials();

    // Without credentials for the registry: refused by it.
    let sb = client(registry, &proxy.url());
    let out = pull(&sb, &format!("{host}/private/app:1"), "alice", None);
    let err = out.fails();
    assert!(err.contains("the pull proxy 127.0.0.1:") && err.contains("DENIED"), "{err}");
    assert!(err.contains("hint: the pull proxy decides who may pull what"), "{err}");
    // With them, passed on for this request only.
    let out = pull(&sb, &format!("{host}/private/app:1"), "alice", Some((user, token)));
    assert!(out.ok().contains(&digest), "{out:?}");
    assert!(
        !std::fs::read_to_string(proxy.dir.path().join("audit.jsonl")).unwrap().contains(token),
        "the token is never recorded"
    );

    // carol is enabled, but brings no credentials for the registry: the
    // cached manifest and blobs are not hers.
    let carol = basic("carol", PASSWORD);
    let (status, _, body) =
        proxy.get(&format!("/v2/{host}/private/app/manifests/{digest}"), &[("Authorization", &carol)]);
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = proxy.get(&format!("/v2/{host}/private/app/manifests/1"), &[("Authorization", &carol)]);
    assert_eq!(status, 403);
    // With wrong ones, neither.
    let wrong = basic(user, "not-the-token");
    let (status, _, _) = proxy.get(
        &format!("/v2/{host}/private/app/manifests/{digest}"),
        &[("Authorization", &carol), ("X-Ces-Upstream-Authorization", &wrong)],
    );
    assert_eq!(status, 403);
    // With right ones, she may.
    let right = basic(user, token);
    let (status, _, _) = proxy.get(
        &format!("/v2/{host}/private/app/manifests/{digest}"),
        &[("Authorization", &carol), ("X-Ces-Upstream-Authorization", &right)],
    );
    assert_eq!(status, 200);
}

/// A CA and a certificate for 127.0.0.1 signed by it (openssl).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ces test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "proxy.key",
        "-out",
        "proxy.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "proxy.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "proxy.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("proxy.pem"), dir.join("proxy.key"))
}

#[test]
fn tls_with_the_operators_certificate() {
    let registry = Registry::shared(AuthMode::Anonymous);
    let (digest, _) = pushed(registry, "proxy/tls", "1");
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(certs.path());
    let tls = format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.display().to_string(), key.display().to_string());
    // [tls] must come after the top-level keys and before [[upstream]].
    let proxy = Proxy::start(&[(registry, "\"proxy/**\"")], &tls);
    let url = format!("https://127.0.0.1:{}", proxy.port);
    let sb = client(registry, &url);
    let mut cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", &format!("{}/proxy/tls:1", registry.host())]);
    cmd.env("CES_PROXY_USER", "alice").env("CES_PROXY_PASSWORD", PASSWORD).env("SSL_CERT_FILE", &ca);
    let out = sb.run(cmd);
    assert!(out.ok().contains(&digest), "{out:?}");
    // Without the CA, the proxy's certificate is not trusted.
    let sb = client(registry, &url);
    let out = pull(&sb, &format!("{}/proxy/tls:1", registry.host()), "alice", None);
    assert_ne!(out.code, 0, "{out:?}");
    // Plain HTTP to the TLS port: no answer a client would take.
    let (status, _, _) = proxy.get("/v2/", &[]);
    assert_ne!(status, 200);
}

#[test]
fn a_config_without_tls_off_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        "listen = \"0.0.0.0:5000\"\ncache_dir = \"/tmp/x\"\naudit_log = \"/tmp/x/a\"\nallow_anonymous = true\n[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nrepositories = [\"**\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ces"))
        .args(["proxy", "--config"])
        .arg(dir.path().join("proxy.toml"))
        .env_remove("CES_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not a loopback address, and there is no [tls]"), "{err}");
}

/// A registry of an attacker's: its one manifest names whatever layer it is
/// told (another repository's private one), and it has no blobs.
fn hostile_upstream(layer: &str, size: u64) -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = format!("sha256:{}", "c".repeat(64));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{size}}}]}}"#
    );
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let n = stream.read(&mut request).unwrap_or(0);
            let line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or_default().to_owned();
            let (status, body) = if line.starts_with("GET /v2/ ") {
                ("200 OK", "{}".to_owned())
            } else if line.contains("/manifests/") {
                ("200 OK", manifest.clone())
            } else {
                ("404 Not Found", r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}"#.to_owned())
            };
            let content_type = if line.contains("/manifests/") {
                "application/vnd.oci.image.manifest.v1+json"
            } else {
                "application/json"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, handle)
}

/// Private content stays private: not through another repository whose
/// manifest names it (an attacker's registry), not for anonymous clients
/// once one anonymous client brought credentials; failed logins are
/// limited; every request is recorded, HEAD too, and nothing is served
/// that cannot be.
#[test]
fn private_content_does_not_leak_and_every_request_is_recorded() {
    let registry = Registry::shared(AuthMode::Token);
    let image = busybox_image().build();
    registry.push(&image, "private/leak", "1");
    let (layer, bytes) = image.blobs.iter().find(|(d, _)| *d == image.layer_digests[0]).unwrap().clone();
    let (hostile_port, _hostile) = hostile_upstream(&layer, bytes.len() as u64);
    let proxy = {
        let realm = registry.token_server().unwrap().realm();
        let realm_host = realm.split("://").nth(1).unwrap().split('/').next().unwrap().to_owned();
        let extra = format!(
            "allow_anonymous = true\n\n[[upstream]]\nname = \"127.0.0.1:{hostile_port}\"\nurl = \"http://127.0.0.1:{hostile_port}\"\nrepositories = [\"evil/**\"]\n\n[[upstream]]\nname = {:?}\nurl = \"http://{}\"\nrepositories = [\"private/**\"]\nredirect_hosts = [{realm_host:?}]\n",
            registry.host(),
            registry.host()
        );
        Proxy::start(&[], &extra)
    };
    let host = registry.host();
    let (user, token) = registry.credentials();
    let alice = basic("alice", PASSWORD);
    let carol = basic("carol", PASSWORD);
    let theirs = basic(user, token);
    // alice pulls the private image with her registry credentials: cached.
    let (status, _, _) = proxy.get(
        &format!("/v2/{host}/private/leak/manifests/1"),
        &[("Authorization", &alice), ("X-Ces-Upstream-Authorization", &theirs)],
    );
    assert_eq!(status, 200);
    let (status, headers, _) = proxy.get(
        &format!("/v2/{host}/private/leak/blobs/{layer}"),
        &[("Authorization", &alice), ("X-Ces-Upstream-Authorization", &theirs)],
    );
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(n, v)| n == "content-length" && *v == bytes.len().to_string()), "{headers:?}");

    // Through the attacker's repository, whose manifest names that layer.
    let evil = format!("/v2/127.0.0.1:{hostile_port}/evil/x");
    let (status, _, _) = proxy.get(&format!("{evil}/manifests/1"), &[("Authorization", &carol)]);
    assert_eq!(status, 200, "the attacker's manifest is public");
    let (status, _, body) = proxy.get(&format!("{evil}/blobs/{layer}"), &[("Authorization", &carol)]);
    assert_ne!(status, 200, "a private layer through another repository: {body}");

    // Anonymous clients: one brings credentials, the next does not.
    let (status, _, _) =
        proxy.get(&format!("/v2/{host}/private/leak/blobs/{layer}"), &[("X-Ces-Upstream-Authorization", &theirs)]);
    assert_eq!(status, 200);
    let (status, _, _) = proxy.get(&format!("/v2/{host}/private/leak/blobs/{layer}"), &[]);
    assert_eq!(status, 403, "another anonymous client without credentials");

    // HEAD is recorded too; so is a refusal before authentication.
    let before = proxy.audit().len();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    write!(stream, "HEAD /v2/{host}/private/leak/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {alice}\r\nX-Ces-Upstream-Authorization: {theirs}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (status, _, _) =
        proxy.get(&format!("/v2/{host}/private/leak/manifests/1"), &[("Authorization", &basic("alice", "wrong"))]);
    assert_eq!(status, 401);
    let records = proxy.audit();
    let new = &records[before..];
    assert!(new.iter().any(|r| r["object"] == "manifest (HEAD)"), "{new:?}");
    assert!(new.iter().any(|r| r["result"] == "refused" && r["client"] == "(not authenticated)"), "{new:?}");

    // Nothing is served that is not recorded: the audit log made unwritable.
    let log = proxy.dir.path().join("audit.jsonl");
    std::fs::rename(&log, proxy.dir.path().join("audit.saved")).unwrap();
    std::fs::create_dir(&log).unwrap();
    let (status, _, body) = proxy.get(
        &format!("/v2/{host}/private/leak/manifests/1"),
        &[("Authorization", &carol), ("X-Ces-Upstream-Authorization", &theirs)],
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("audit log"), "{body}");
    // Failed logins from one address are limited.
    let statuses: Vec<u16> =
        (0..25).map(|_| proxy.get("/v2/", &[("Authorization", &basic("alice", "guess"))]).0).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// An upstream with Basic auth (docker-registry's htpasswd): the user's own
/// credentials, passed on by the proxy, are what it takes.
#[test]
fn a_basic_auth_upstream_takes_the_users_own_credentials() {
    let registry = Registry::shared(AuthMode::Basic);
    let (digest, _) = pushed(registry, "basic/app", "1");
    let proxy = Proxy::start(&[(registry, "\"basic/**\"")], "");
    let image = format!("{}/basic/app:1", registry.host());
    let sb = client(registry, &proxy.url());
    let out = pull(&sb, &image, "alice", None);
    assert!(out.fails().contains("the pull proxy 127.0.0.1:"), "{out:?}");
    let (user, password) = registry.credentials();
    let out = pull(&sb, &image, "alice", Some((user, password)));
    assert!(out.ok().contains(&digest), "{out:?}");
    let audit = std::fs::read_to_string(proxy.dir.path().join("audit.jsonl")).unwrap();
    assert!(!audit.contains(password), "the password is in no record");
}

/// An upstream of the test's own that sends a blob's first half, then
/// holds the rest until told: what a slow registry does to a large layer.
struct SlowUpstream {
    port: u16,
    release: std::sync::mpsc::Sender<()>,
    blob_requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn slow_upstream(blob: Vec<u8>) -> SlowUpstream {
    use sha2::Digest as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&blob));
    let config = b"{}".to_vec();
    let config_digest = format!("sha256:{:x}", sha2::Sha256::digest(&config));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{digest}","size":{}}}]}}"#,
        blob.len()
    );
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Arc::new(std::sync::Mutex::new(released));
    let blob_requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = blob_requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (manifest, blob, released, counter) =
                (manifest.clone(), blob.clone(), released.clone(), counter.clone());
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let n = stream.read(&mut request).unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or_default().to_owned();
                if line.contains("/blobs/") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let half = blob.len() / 2;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        blob.len()
                    );
                    let _ = stream.write_all(&blob[..half]);
                    let _ = stream.flush();
                    let _ = released.lock().unwrap().recv();
                    let _ = stream.write_all(&blob[half..]);
                    return;
                }
                let (status, body, kind) = if line.contains("/manifests/") {
                    ("200 OK", manifest, "application/vnd.oci.image.manifest.v1+json")
                } else {
                    ("200 OK", "{}".to_owned(), "application/json")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    SlowUpstream { port, release, blob_requests }
}

/// Clients are sent a blob's bytes while the proxy still downloads it, all
/// from one download: the first half arrives (to two clients) while the
/// upstream holds the rest.
#[test]
fn blobs_are_streamed_to_every_client_while_they_download() {
    use sha2::Digest as _;
    let blob: Vec<u8> = (0..4_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&blob));
    let slow = slow_upstream(blob.clone());
    let extra = format!(
        "\n[[upstream]]\nname = \"127.0.0.1:{p}\"\nurl = \"http://127.0.0.1:{p}\"\nrepositories = [\"slow/**\"]\n",
        p = slow.port
    );
    let proxy = Proxy::start(&[], &extra);
    let alice = basic("alice", PASSWORD);
    let (status, _, _) =
        proxy.get(&format!("/v2/127.0.0.1:{}/slow/x/manifests/1", slow.port), &[("Authorization", &alice)]);
    assert_eq!(status, 200);
    let open = || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        // Not a timing condition: a proxy that waited for the whole blob
        // would never send the first half while the upstream holds the rest.
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        write!(
            stream,
            "GET /v2/127.0.0.1:{}/slow/x/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {alice}\r\nConnection: close\r\n\r\n",
            slow.port
        )
        .unwrap();
        stream
    };
    // Reads until `want` body bytes (after the headers) have arrived.
    let read_body = |stream: &mut std::net::TcpStream, have: &mut Vec<u8>, want: usize| {
        let mut chunk = [0u8; 65536];
        loop {
            let body = have.windows(4).position(|w| w == b"\r\n\r\n").map(|i| have.len() - i - 4);
            if body.is_some_and(|b| b >= want) {
                return;
            }
            let n = stream.read(&mut chunk).expect("the proxy sent nothing more");
            assert!(n > 0, "the connection ended early");
            have.extend_from_slice(&chunk[..n]);
        }
    };
    let (mut first, mut second) = (open(), open());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    read_body(&mut first, &mut a, blob.len() / 4);
    read_body(&mut second, &mut b, blob.len() / 4);
    // Both have a quarter; the upstream still holds half of the blob.
    slow.release.send(()).unwrap();
    read_body(&mut first, &mut a, blob.len());
    read_body(&mut second, &mut b, blob.len());
    for got in [&a, &b] {
        let start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(got.starts_with(b"HTTP/1.1 200"));
        assert_eq!(&got[start..], &blob[..], "the whole blob");
    }
    assert_eq!(slow.blob_requests.load(std::sync::atomic::Ordering::SeqCst), 1, "one download for both");
    // Stored, verified: the next client has it from the cache.
    let (status, headers, _) =
        proxy.get(&format!("/v2/127.0.0.1:{}/slow/x/blobs/{digest}", slow.port), &[("Authorization", &alice)]);
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(n, v)| n == "content-length" && *v == blob.len().to_string()));
    assert_eq!(slow.blob_requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Through sudo, root would read, write and connect where the user's
/// config says (a token file, the audit log's path): refused, and before
/// the config is read.
#[test]
fn ces_proxy_does_not_run_through_sudo() {
    common::require_root("plays sudo");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let written = dir.path().join("written-as-root");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ncache_dir = {:?}\naudit_log = {:?}\nallow_anonymous = true\n[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\nrepositories = [\"**\"]\n",
            written.display().to_string(),
            written.join("audit.jsonl").display().to_string()
        ),
    )
    .unwrap();
    let user = common::test_user();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ces"))
        .args(["proxy", "--config"])
        .arg(&config)
        .env_remove("CES_CONFIG")
        .env("SUDO_UID", user.uid.to_string())
        .env("SUDO_GID", user.gid.to_string())
        .env("SUDO_USER", TEST_USER)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A proxy that started would serve until stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ces proxy started through sudo");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ces proxy is an operator's service: it does not run through sudo"), "{err}");
    assert!(!written.exists(), "nothing made as root");
}
