//! The kit checked against real parts: images it builds and pushes must be
//! what `skopeo` and `umoci` read back, and the registry's auth modes must
//! behave as a client of GHCR or a basic-auth registry would see them.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ces_testkit::image::{docker, marker_image, oci};
use ces_testkit::registry::{BearerChallenge, alive};
use ces_testkit::token::{TokenServer, decode_claims};
use ces_testkit::{AuthMode, Compression, Entry, ImageSpec, Layer, Registry, Style, busybox_image, index};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use serde_json::Value;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

fn skopeo(args: &[&str]) -> String {
    let output = Command::new("skopeo").args(args).output().expect("skopeo is installed");
    assert!(output.status.success(), "skopeo {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn skopeo_json(args: &[&str]) -> Value {
    serde_json::from_str(&skopeo(args)).unwrap()
}

fn http() -> Client {
    Client::builder().no_proxy().build().unwrap()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// Follows a registry's 401 by hand: parses the challenge, asks the realm for
/// a token (with `authorization`, if any); returns the token server's status
/// and body.
fn token_for(challenge: &str, authorization: Option<&str>) -> (StatusCode, Value) {
    let challenge = BearerChallenge::parse(challenge).unwrap_or_else(|| panic!("not a bearer challenge: {challenge}"));
    let mut request = http()
        .get(&challenge.realm)
        .query(&[("service", challenge.service.unwrap()), ("scope", challenge.scope.unwrap())]);
    if let Some(authorization) = authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    let response = request.send().unwrap();
    let status = response.status();
    (status, serde_json::from_str(&response.text().unwrap()).unwrap())
}

fn get_manifest(
    registry: &Registry,
    repo: &str,
    tag: &str,
    authorization: Option<&str>,
) -> reqwest::blocking::Response {
    let mut request =
        http().get(format!("{}/v2/{repo}/manifests/{tag}", registry.base_url())).header(ACCEPT, MANIFEST_TYPES);
    if let Some(authorization) = authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    request.send().unwrap()
}

fn challenge_of(response: &reqwest::blocking::Response) -> String {
    response.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_owned()
}

#[test]
fn anonymous_push_is_what_skopeo_reads() {
    let registry = Registry::shared(AuthMode::Anonymous);
    for (style, repo) in [(Style::Oci, "kit/busybox-oci"), (Style::Docker, "kit/busybox-docker")] {
        let image = busybox_image().style(style).build();
        let digest = registry.push(&image, repo, "1");
        assert_eq!(digest, image.digest);
        let reference = format!("docker://{}/{repo}:1", registry.host());
        let inspect = skopeo_json(&["inspect", "--tls-verify=false", &reference]);
        assert_eq!(inspect["Digest"], digest);
        assert_eq!(inspect["Architecture"], "amd64");
        assert_eq!(inspect["Layers"], serde_json::json!(image.layer_digests));
        assert_eq!(inspect["Env"][0], "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &reference]);
        assert_eq!(raw.as_bytes(), image.manifest);
        let config = skopeo(&["inspect", "--tls-verify=false", "--raw", "--config", &reference]);
        assert_eq!(config.as_bytes(), image.blob(&image.config_digest));
    }
}

#[test]
fn token_mode_follows_the_ghcr_flow() {
    let registry = Registry::shared(AuthMode::Token);
    let (user, password) = registry.credentials();
    let image = busybox_image().build();
    registry.push(&image, "public/busybox", "latest");
    registry.push(&image, "private/busybox", "latest");

    // Public repository, anonymous: 401 → anonymous token granting pull → 200.
    let response = get_manifest(registry, "public/busybox", "latest", None);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = challenge_of(&response);
    let parsed = BearerChallenge::parse(&challenge).unwrap();
    assert_eq!(parsed.scope.as_deref(), Some("repository:public/busybox:pull"));
    assert_eq!(parsed.service.as_deref(), Some("ces-test-registry"));
    let (status, body) = token_for(&challenge, None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let token = body["token"].as_str().unwrap();
    let claims = decode_claims(token);
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "public/busybox", "actions": ["pull"]}])
    );
    let response = get_manifest(registry, "public/busybox", "latest", Some(&format!("Bearer {token}")));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().unwrap().as_ref(), image.manifest.as_slice());

    // Private repository, anonymous: the token grants nothing, the registry refuses it.
    let response = get_manifest(registry, "private/busybox", "latest", None);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = challenge_of(&response);
    let (status, body) = token_for(&challenge, None);
    assert_eq!(status, StatusCode::OK);
    let token = body["token"].as_str().unwrap();
    assert_eq!(decode_claims(token)["access"], serde_json::json!([]));
    let response = get_manifest(registry, "private/busybox", "latest", Some(&format!("Bearer {token}")));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge_of(&response).contains("insufficient_scope"), "{}", challenge_of(&response));

    // Wrong password: the token server says 401 with a JSON error.
    let (status, body) = token_for(&challenge, Some(&basic(user, "wrong")));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // Right credentials: a token for the private repository, and 200.
    let (status, body) = token_for(&challenge, Some(&basic(user, password)));
    assert_eq!(status, StatusCode::OK);
    let token = body["token"].as_str().unwrap();
    assert_eq!(decode_claims(token)["sub"], user);
    let response = get_manifest(registry, "private/busybox", "latest", Some(&format!("Bearer {token}")));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().unwrap().as_ref(), image.manifest.as_slice());

    // A third-party client through the same flow.
    let host = registry.host();
    let public = format!("docker://{host}/public/busybox:latest");
    let private = format!("docker://{host}/private/busybox:latest");
    assert_eq!(skopeo_json(&["inspect", "--tls-verify=false", "--no-creds", &public])["Digest"], image.digest);
    let creds = format!("{user}:{password}");
    assert_eq!(skopeo_json(&["inspect", "--tls-verify=false", "--creds", &creds, &private])["Digest"], image.digest);
    let denied =
        Command::new("skopeo").args(["inspect", "--tls-verify=false", "--no-creds", &private]).output().unwrap();
    assert!(!denied.status.success());
}

#[test]
fn token_mode_anonymous_push_is_refused() {
    let registry = Registry::shared(AuthMode::Token);
    let response = http().post(format!("{}/v2/public/anon-push/blobs/uploads/", registry.base_url())).send().unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = challenge_of(&response);
    // Distribution lists the actions in no fixed order ("pull,push" or "push,pull").
    let scope = BearerChallenge::parse(&challenge).unwrap().scope.unwrap();
    let mut actions: Vec<&str> = scope.strip_prefix("repository:public/anon-push:").unwrap().split(',').collect();
    actions.sort_unstable();
    assert_eq!(actions, ["pull", "push"], "{challenge}");
    let (_, body) = token_for(&challenge, None);
    let token = body["token"].as_str().unwrap();
    // Anonymous users get pull on public repositories, never push.
    assert_eq!(decode_claims(token)["access"][0]["actions"], serde_json::json!(["pull"]));
    let response = http()
        .post(format!("{}/v2/public/anon-push/blobs/uploads/", registry.base_url()))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(registry.token_requests() > 0);
}

#[test]
fn token_mode_registry_checks_the_signature() {
    let registry = Registry::shared(AuthMode::Token);
    let (user, password) = registry.credentials();
    registry.push(&busybox_image().build(), "private/forged", "latest");
    // A token server with another key, same issuer, service and user.
    let dir = tempfile::tempdir().unwrap();
    let forger = TokenServer::start(dir.path(), user, password);
    let response = get_manifest(registry, "private/forged", "latest", None);
    let challenge = challenge_of(&response).replace(&registry.token_server().unwrap().realm(), &forger.realm());
    let (status, body) = token_for(&challenge, Some(&basic(user, password)));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decode_claims(body["token"].as_str().unwrap())["access"][0]["actions"], serde_json::json!(["pull"]));
    let forged = format!("Bearer {}", body["token"].as_str().unwrap());
    let response = get_manifest(registry, "private/forged", "latest", Some(&forged));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "a token signed by an unknown key is refused");
    assert_eq!(forger.requests(), 1);
}

#[tokio::test]
async fn usable_from_async_tests() {
    let registry = Registry::shared(AuthMode::Token);
    let image = marker_image("pushed from an async test").build();
    assert_eq!(registry.push(&image, "kit/async", "1"), image.digest);
    let fresh = Registry::start(AuthMode::Anonymous);
    assert_eq!(fresh.push(&image, "kit/async", "1"), image.digest);
}

#[test]
fn basic_mode_checks_the_password() {
    let registry = Registry::shared(AuthMode::Basic);
    let (user, password) = registry.credentials();
    let image = busybox_image().build();
    registry.push(&image, "basic/busybox", "latest");
    let response = get_manifest(registry, "basic/busybox", "latest", None);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge_of(&response).starts_with("Basic "), "{}", challenge_of(&response));
    let response = get_manifest(registry, "basic/busybox", "latest", Some(&basic(user, "wrong")));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = get_manifest(registry, "basic/busybox", "latest", Some(&basic(user, password)));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().unwrap().as_ref(), image.manifest.as_slice());
    let reference = format!("docker://{}/basic/busybox:latest", registry.host());
    let creds = format!("{user}:{password}");
    assert_eq!(skopeo_json(&["inspect", "--tls-verify=false", "--creds", &creds, &reference])["Digest"], image.digest);
}

fn two_arch(style: Style) -> (ces_testkit::BuiltImage, ces_testkit::BuiltImage) {
    let amd64 = busybox_image().style(style).build();
    let arm64 = ImageSpec::new(vec![Layer::new(vec![Entry::file("arch", "arm64")])])
        .style(style)
        .arch("arm64")
        .variant("v8")
        .cmd(&["sh"])
        .build();
    (amd64, arm64)
}

#[test]
fn multi_arch_index_pushes_as_built() {
    let registry = Registry::shared(AuthMode::Anonymous);
    for (style, media_type, repo) in
        [(Style::Oci, oci::INDEX, "kit/multi-oci"), (Style::Docker, docker::MANIFEST_LIST, "kit/multi-docker")]
    {
        let (amd64, arm64) = two_arch(style);
        let list = index(&[amd64.clone(), arm64.clone()], style);
        assert_eq!(list.media_type, media_type);
        assert_eq!(registry.push(&list, repo, "multi"), list.digest);
        let reference = format!("docker://{}/{repo}:multi", registry.host());
        let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &reference]);
        assert_eq!(raw.as_bytes(), list.manifest);
        // skopeo resolves the index to the platform asked for.
        for (arch, child) in [("amd64", &amd64), ("arm64", &arm64)] {
            let inspect =
                skopeo_json(&["--override-arch", arch, "inspect", "--tls-verify=false", "--config", &reference]);
            assert_eq!(inspect, child.config(), "{arch}");
        }
    }
}

#[test]
fn zstd_layers_push() {
    let registry = Registry::shared(AuthMode::Anonymous);
    let image = ImageSpec::new(vec![
        Layer::new(vec![Entry::file("a", "gzip layer")]),
        Layer::new(vec![Entry::file("b", "zstd layer")]).compressed(Compression::Zstd),
    ])
    .build();
    registry.push(&image, "kit/zstd", "1");
    let inspect = skopeo_json(&["inspect", "--tls-verify=false", &format!("docker://{}/kit/zstd:1", registry.host())]);
    assert_eq!(inspect["Digest"], image.digest);
    assert_eq!(inspect["Layers"], serde_json::json!(image.layer_digests));
    // skopeo 1.9 has no LayersData: read the media type from the raw manifest.
    let raw =
        skopeo_json(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{}/kit/zstd:1", registry.host())]);
    assert_eq!(raw["layers"][1]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
    let blob = registry.client().get(&format!("kit/zstd/blobs/{}", image.layer_digests[1]), &[]);
    assert_eq!(blob.status(), StatusCode::OK);
    let blob = blob.bytes().unwrap();
    assert!(blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd magic");
    assert_eq!(blob.as_ref(), image.blob(&image.layer_digests[1]));
}

#[test]
fn oci_layout_and_archive_are_readable() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = busybox_image().build();
    let (amd64, arm64) = two_arch(Style::Oci);
    let list = index(&[amd64, arm64], Style::Oci);
    image.write_oci_layout(&layout, "busybox");
    list.write_oci_layout(&layout, "multi");

    let umoci = Command::new("umoci").args(["ls", "--layout"]).arg(&layout).output().unwrap();
    assert!(umoci.status.success(), "umoci ls: {}", String::from_utf8_lossy(&umoci.stderr));
    let refs = String::from_utf8(umoci.stdout).unwrap();
    assert_eq!(refs.lines().collect::<Vec<_>>(), ["busybox", "multi"]);

    let layout = layout.to_str().unwrap();
    let inspect = skopeo_json(&["inspect", &format!("oci:{layout}:busybox")]);
    assert_eq!(inspect["Digest"], image.digest);
    assert_eq!(inspect["Layers"], serde_json::json!(image.layer_digests));
    let raw = skopeo(&["inspect", "--raw", &format!("oci:{layout}:multi")]);
    assert_eq!(raw.as_bytes(), list.manifest);
    // umoci checks the blobs it reads against their digests.
    let stat = Command::new("umoci").args(["stat", "--image", &format!("{layout}:busybox")]).output().unwrap();
    assert!(stat.status.success(), "umoci stat: {}", String::from_utf8_lossy(&stat.stderr));

    let archive = dir.path().join("busybox.oci.tar");
    image.write_oci_archive(&archive, "latest");
    let inspect = skopeo_json(&["inspect", &format!("oci-archive:{}:latest", archive.display())]);
    assert_eq!(inspect["Digest"], image.digest);
}

#[test]
fn docker_save_tarball_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let image = ImageSpec::new(vec![
        Layer::new(vec![Entry::dir("etc"), Entry::file("etc/one", "1")]),
        Layer::new(vec![Entry::file("two", "2")]),
    ])
    .style(Style::Docker)
    .cmd(&["/two"])
    .build();
    let archive = dir.path().join("saved.tar");
    image.write_docker_save(&archive, "ces/saved:v1");
    let reference = format!("docker-archive:{}", archive.display());
    let inspect = skopeo_json(&["inspect", &reference]);
    assert_eq!(inspect["Layers"], serde_json::json!(image.diff_ids));
    let raw: Value = serde_json::from_str(&skopeo(&["inspect", "--raw", &reference])).unwrap();
    assert_eq!(raw["config"]["digest"], image.config_digest);
    // skopeo's manifest for a docker archive lists the uncompressed layers.
    let layers: Vec<&str> = raw["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(layers, image.diff_ids);
    // A full copy reads every layer.tar and checks it against the diff_ids.
    let out = dir.path().join("copied");
    // --insecure-policy: no dependence on the host's /etc/containers/policy.json.
    skopeo(&["--insecure-policy", "copy", &reference, &format!("oci:{}:copied", out.display())]);
}

#[test]
fn corrupted_blob_is_served_as_is() {
    let registry = Registry::shared(AuthMode::Anonymous);
    // A blob no other test shares, since storage is per registry.
    let image = marker_image("corrupt me, only me").build();
    registry.push(&image, "kit/corrupt", "1");
    let layer = &image.layer_digests[0];
    let original = image.blob(layer).to_vec();
    let path = registry.blob_data_path(layer);
    assert_eq!(std::fs::read(&path).unwrap(), original, "blob_data_path points at the stored blob");
    let get = || {
        let response = registry.client().get(&format!("kit/corrupt/blobs/{layer}"), &[]);
        assert_eq!(response.status(), StatusCode::OK);
        let header = response.headers()["Docker-Content-Digest"].to_str().unwrap().to_owned();
        (header, response.bytes().unwrap().to_vec())
    };

    // Same length, different bytes: served as they are, still under the old digest.
    let mut tampered = original.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&path, &tampered).unwrap();
    let (digest, body) = get();
    assert_eq!(body, tampered, "Distribution 2.8 does not re-verify blobs it serves");
    assert_eq!(digest, *layer);

    // Truncated: the shorter file is served, with its shorter length.
    std::fs::write(&path, &original[..original.len() / 2]).unwrap();
    let (_, body) = get();
    assert_eq!(body, original[..original.len() / 2]);
}

/// Not a test on its own: the child process of `shared_registry_dies_with_the_test_binary`.
#[test]
#[ignore = "helper run by shared_registry_dies_with_the_test_binary"]
fn helper_start_shared_registry_and_hang() {
    if std::env::var_os("CES_TESTKIT_HELPER").is_none() {
        return;
    }
    let registry = Registry::shared(AuthMode::Token);
    println!("REGISTRY_DIR={}", registry.storage_dir().parent().unwrap().display());
    println!("REGISTRY_PID={}", registry.pid());
    std::thread::sleep(Duration::from_secs(60));
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn shared_registry_dies_with_the_test_binary() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_start_shared_registry_and_hang", "--nocapture"])
        .env("CES_TESTKIT_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut pid, mut dir) = (None, None);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(value) = line.strip_prefix("REGISTRY_DIR=") {
            dir = Some(std::path::PathBuf::from(value));
        }
        if let Some(value) = line.strip_prefix("REGISTRY_PID=") {
            pid = Some(value.parse::<u32>().unwrap());
            break;
        }
    }
    let dir = dir.expect("the helper printed the registry dir");
    assert!(dir.join("config.yml").exists());
    let pid = pid.expect("the helper printed the registry pid");
    assert!(alive(pid));
    // SIGKILL: no destructor, no atexit, only the kernel closing the pipe.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_gone(pid), "docker-registry {pid} outlived the test binary that started it");
    // Statics never drop: the wrapper removes the registry's directory.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn dropped_registry_is_stopped() {
    let registry = Registry::start(AuthMode::Basic);
    let pid = registry.pid();
    let storage = registry.storage_dir();
    assert!(alive(pid));
    drop(registry);
    assert!(!alive(pid), "stopped before drop returns");
    assert!(!storage.exists());
}

#[test]
fn annotations_go_in_the_oci_manifest_and_docker_style_refuses_them() {
    let image = busybox_image().annotation("org.opencontainers.image.base.name", "docker.io/library/debian:12").build();
    let manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
    assert_eq!(
        manifest["annotations"],
        serde_json::json!({"org.opencontainers.image.base.name": "docker.io/library/debian:12"})
    );
    let docker = std::panic::catch_unwind(|| busybox_image().style(Style::Docker).annotation("a", "b").build());
    assert!(docker.is_err(), "a Docker schema 2 manifest has no annotations");
}

/// The live Slurm cluster runs a batch job as the user who submitted it,
/// and `sbatch --wait` ends with the job's exit code.
#[test]
fn slurm_runs_jobs_as_their_users() {
    use std::os::unix::fs::PermissionsExt as _;
    assert!(is_root(), "the Slurm cluster needs root: run the suite as root (CI does)");
    let cluster = ces_testkit::slurm::Cluster::shared();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = dir.path().join("job.out");
    let submit = |as_nobody: bool, script: &str| {
        let mut command = if as_nobody {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"]).arg("sbatch");
            c.env("SLURM_CONF", cluster.conf());
            c
        } else {
            cluster.command("sbatch")
        };
        let status = command
            .arg("--wait")
            .arg("--quiet")
            .arg("-D")
            .arg(dir.path())
            .arg("-o")
            .arg(&out)
            .args(["--wrap", script])
            .status()
            .unwrap();
        (status.code(), std::fs::read_to_string(&out).unwrap_or_default())
    };
    assert_eq!(submit(false, "id -u; exit 3"), (Some(3), "0\n".to_owned()), "{}", cluster.logs());
    std::fs::remove_file(&out).unwrap();
    assert_eq!(submit(true, "id -u"), (Some(0), "65534\n".to_owned()), "{}", cluster.logs());

    // The node's fake GPUs: a job asks for some and is told which.
    assert_eq!(cluster.gpus().len(), 2);
    for gpu in cluster.gpus() {
        let kind = std::fs::metadata(&gpu).unwrap().file_type();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&kind), "{}", gpu.display());
    }
    std::fs::remove_file(&out).unwrap();
    let status = cluster
        .command("sbatch")
        .args(["--wait", "--quiet", "--gres=gpu:2", "-o"])
        .arg(&out)
        .args(["--wrap", "echo $SLURM_JOB_GPUS"])
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!((status.code(), text.as_str()), (Some(0), "0,1\n"), "{}", cluster.logs());
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0")
}
