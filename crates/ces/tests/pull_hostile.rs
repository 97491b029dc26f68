//! `ces pull` against the test kit's misbehaving registry: credentials only
//! where they belong (no challenge taken after a redirect, no downgrade from
//! https to plain http unless the host is listed insecure), what real
//! registries do (rate limits, bad gateways, connections dropped mid-blob)
//! survived and reported, and what cannot be stored refused before the
//! download (`[storage] max_image_size`, free space).
//!
//! The waits between tries are ces's own (0.5 s, doubling): a test here
//! takes a few seconds, and no assertion depends on time.
//!
//! `CES_BIN_UNDER_TEST=<path to a ces binary>` runs these tests against
//! another build (how they were checked against the code before the fix).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ces_testkit::misbehave::{Answer, Misbehaving, TestCa, noise};
use ces_testkit::{BuiltImage, Compression, Entry, ImageSpec, Layer};
use common::{Run, Sandbox, require_root};

const TOKEN: &str = "ghp_the-users-own-token";

fn ces_bin() -> String {
    std::env::var("CES_BIN_UNDER_TEST").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ces").to_owned())
}

/// `ces ARGS` in the sandbox, with `SSL_CERT_FILE` set to `ca` (if any) and
/// the user's token on stdin (if any).
fn ces(sb: &Sandbox, args: &[&str], ca: Option<&TestCa>, token: Option<&str>) -> Run {
    let mut cmd: Command = sb.command(&ces_bin(), args);
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca.ca_pem());
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(token) = token {
        let _ = writeln!(stdin, "{token}");
    }
    drop(stdin);
    Run::from(child.wait_with_output().unwrap())
}

fn pull_as_user(sb: &Sandbox, reference: &str, ca: Option<&TestCa>) -> Run {
    ces(sb, &["pull", "--no-unpack", "--user", "alice", "--password-stdin", reference], ca, Some(TOKEN))
}

fn pull(sb: &Sandbox, reference: &str, ca: Option<&TestCa>) -> Run {
    ces(sb, &["pull", "--no-unpack", reference], ca, None)
}

/// An image with one layer of `size` incompressible bytes (a plain tar).
fn image_of(size: usize, seed: u64) -> BuiltImage {
    ImageSpec::new(vec![Layer::new(vec![Entry::file("data", noise(size, seed))]).compressed(Compression::None)]).build()
}

/// Whether any request to `server` carried credentials of any kind.
fn leaked(server: &Misbehaving) -> bool {
    server.seen().iter().any(|s| s.authorization.is_some())
}

/// No layer blob and no image in the store.
fn assert_no_layers(sb: &Sandbox, image: &BuiltImage) {
    for digest in &image.layer_digests {
        assert!(!sb.has_blob(digest), "{digest} stored");
    }
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
    let images = ces(sb, &["images", "--json"], None, None);
    assert_eq!(images.ok().trim(), "[]");
}

/// As GHCR does, the registry redirects the blob to a CDN; the CDN answers
/// 401 with a Bearer realm on a third server. Before, ces took that
/// challenge and sent `Basic alice:<token>` to the third server.
#[test]
fn a_challenge_from_where_a_blob_was_redirected_never_gets_the_token() {
    let (reg, cdn, thief) = (Misbehaving::http(), Misbehaving::http(), Misbehaving::http());
    let image = image_of(4096, 11);
    reg.serve(&image, "hostile/cdn", "1");
    reg.require_bearer(&reg.url("/token"));
    let layer = Misbehaving::blob_path("hostile/cdn", &image.layer_digests[0]);
    reg.always(&layer, Answer::Redirect(cdn.url("/blob")));
    cdn.always("/blob", Answer::Challenge(format!("Bearer realm=\"{}\",service=\"x\"", thief.url("/token"))));
    let sb = Sandbox::with_hosts(&[reg.host()], &[reg.host()]);

    let run = pull_as_user(&sb, &format!("{}/hostile/cdn:1", reg.host()), None);

    assert!(!leaked(&thief), "the token went to {}: {:?}", thief.host(), thief.seen());
    assert!(!leaked(&cdn), "the token went to the CDN: {:?}", cdn.seen());
    let realm = reg.seen_at("/token");
    assert!(realm.iter().all(|s| s.authorization.as_deref().is_some_and(|a| a.starts_with("Basic "))), "{realm:?}");
    let stderr = run.fails();
    assert!(stderr.contains(&format!("redirected to {}, which answered 401", cdn.host())), "{stderr}");
    assert_no_layers(&sb, &image);
}

/// An https registry points its token realm to plain http: the user's
/// token would travel in clear. Refused, and nothing sent there.
#[test]
fn an_https_registry_cannot_send_the_token_to_a_plain_http_realm() {
    let ca = TestCa::new();
    let (reg, thief) = (Misbehaving::https(&ca), Misbehaving::http());
    let image = image_of(4096, 12);
    reg.serve(&image, "hostile/realm", "1");
    reg.require_bearer(&thief.url("/token"));
    let sb = Sandbox::with_hosts(&[reg.host()], &[]);

    let run = pull_as_user(&sb, &format!("{}/hostile/realm:1", reg.host()), Some(&ca));

    assert_eq!(thief.seen(), [], "nothing went to the plain-http realm");
    let stderr = run.fails();
    assert!(
        stderr.contains(&format!("refusing the downgrade from https to plain http at {}", thief.host())),
        "{stderr}"
    );
    assert!(stderr.contains("hint: ") && stderr.contains("[registries] insecure"), "{stderr}");
    assert_no_layers(&sb, &image);
}

/// An https registry redirects the tag's manifest to plain http, where
/// anyone on the way can swap it. Refused, unless the operator lists that
/// host as insecure.
#[test]
fn an_https_registry_cannot_redirect_a_manifest_to_plain_http_unless_listed_insecure() {
    let ca = TestCa::new();
    let (reg, plain) = (Misbehaving::https(&ca), Misbehaving::http());
    let (image, swapped) = (image_of(4096, 13), image_of(4096, 14));
    reg.serve(&image, "hostile/swap", "1");
    plain.serve(&swapped, "hostile/swap", "1");
    // The swapped image's blobs are in the registry too: only the manifest
    // comes over the plain leg.
    reg.serve(&swapped, "hostile/swap", "other");
    let manifest = Misbehaving::manifest_path("hostile/swap", "1");
    reg.always(&manifest, Answer::Redirect(plain.url(&manifest)));
    let reference = format!("{}/hostile/swap:1", reg.host());

    let sb = Sandbox::with_hosts(&[reg.host()], &[]);
    let stderr = pull(&sb, &reference, Some(&ca)).fails().to_owned();
    assert!(stderr.contains(&format!("downgrade from https to plain http at {}", plain.host())), "{stderr}");
    assert_eq!(plain.seen(), []);
    assert_no_layers(&sb, &swapped);

    let sb = Sandbox::with_hosts(&[reg.host()], &[plain.host()]);
    let run = pull(&sb, &reference, Some(&ca));
    assert!(run.ok().contains(&swapped.digest), "listed insecure: the operator's choice");
}

/// Real registries' ordinary failures: 429 with Retry-After and a 503 are
/// tried again, each retry shown, and the summary counts them.
#[test]
fn rate_limits_and_bad_gateways_are_retried_and_shown() {
    let reg = Misbehaving::http();
    let image = image_of(10_000, 15);
    reg.serve(&image, "busy/app", "1");
    reg.script(
        &Misbehaving::manifest_path("busy/app", "1"),
        [Answer::StatusWith(429, vec![("Retry-After".into(), "0".into())])],
    );
    reg.script(&Misbehaving::blob_path("busy/app", &image.layer_digests[0]), [Answer::Status(503)]);
    let sb = Sandbox::with_hosts(&[reg.host()], &[reg.host()]);

    let run = pull(&sb, &format!("{}/busy/app:1", reg.host()), None);

    run.ok();
    assert!(run.stderr.contains("(try 2 of 5) in 0.0s: the registry answered 429 Too Many Requests"), "{}", run.stderr);
    assert!(
        run.stderr.contains("(try 2 of 5) in 0.5s: the registry answered 503 Service Unavailable"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("2 retries, 0 B fetched again"), "{}", run.stderr);
    assert!(sb.has_blob(&image.layer_digests[0]));
}

/// A registry that keeps failing: the error says how many tries were made
/// and what the last one got; a redirect loop says it is one.
#[test]
fn the_final_error_counts_the_tries_and_a_redirect_loop_is_named() {
    let reg = Misbehaving::http();
    let image = image_of(1000, 16);
    reg.serve(&image, "failing/app", "1");
    reg.always(&Misbehaving::blob_path("failing/app", &image.layer_digests[0]), Answer::Status(502));
    let manifest = Misbehaving::manifest_path("failing/loop", "1");
    reg.always(&manifest, Answer::Redirect(reg.url(&format!("{manifest}?again"))));
    let sb = Sandbox::with_hosts(&[reg.host()], &[reg.host()]);

    let stderr = pull(&sb, &format!("{}/failing/app:1", reg.host()), None).fails().to_owned();
    assert!(stderr.contains("after 5 tries: registry"), "{stderr}");
    assert!(stderr.contains("answered 502 Bad Gateway"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
    assert_no_layers(&sb, &image);

    let stderr = pull(&sb, &format!("{}/failing/loop:1", reg.host()), None).fails().to_owned();
    assert!(stderr.contains("error: redirect loop: "), "{stderr}");
}

/// The issue's own case: a 200 MB blob through 3 dropped connections. With
/// Range, the pull resumes each time and fetches nothing twice; without, it
/// starts again each time and says how much it fetched twice.
#[test]
fn a_200_mb_blob_through_three_resets_is_pulled_and_the_refetch_reported() {
    let reg = Misbehaving::http();
    let image = image_of(200_000_000, 17);
    reg.serve(&image, "big/app", "1");
    let layer = Misbehaving::blob_path("big/app", &image.layer_digests[0]);
    let resets = || (1..=3).map(|_| Answer::CloseAfter(50_000_000));
    let reference = format!("{}/big/app:1", reg.host());

    reg.script(&layer, resets());
    let sb = Sandbox::with_hosts(&[reg.host()], &[reg.host()]);
    let run = pull(&sb, &reference, None);
    run.ok();
    for kept in ["50.0 MB", "100.0 MB", "150.0 MB"] {
        assert!(run.stderr.contains(&format!("the connection broke off; resuming at {kept}")), "{}", run.stderr);
    }
    assert!(run.stderr.contains("3 retries, 0 B fetched again"), "{}", run.stderr);
    assert!(sb.has_blob(&image.layer_digests[0]));

    reg.ranges(false);
    reg.script(&layer, resets());
    let sb = Sandbox::with_hosts(&[reg.host()], &[reg.host()]);
    let run = pull(&sb, &reference, None);
    run.ok();
    assert_eq!(
        run.stderr.matches("starts again from its first byte (50.0 MB fetched again").count(),
        3,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("3 retries, 150.0 MB fetched again"), "{}", run.stderr);
    assert!(sb.has_blob(&image.layer_digests[0]));
}

/// `[storage] max_image_size`: refused on the manifest's word, before any
/// layer is asked for, with a hint; nothing stored.
#[test]
fn an_image_over_max_image_size_is_refused_before_download() {
    let reg = Misbehaving::http();
    let image = image_of(300_000, 18);
    reg.serve(&image, "limit/app", "1");
    let sb = Sandbox::with_hosts(&[reg.host()], &[reg.host()]);
    let config = std::fs::read_to_string(&sb.config).unwrap();
    std::fs::write(&sb.config, config.replace("[storage]\n", "[storage]\nmax_image_size = 100000\n")).unwrap();

    let stderr = pull(&sb, &format!("{}/limit/app:1", reg.host()), None).fails().to_owned();

    assert!(stderr.contains("more than the limit of 100000 bytes"), "{stderr}");
    assert!(stderr.contains("hint: [storage] max_image_size"), "{stderr}");
    assert_eq!(reg.seen_at(&Misbehaving::blob_path("limit/app", &image.layer_digests[0])), []);
    assert!(!sb.has_blob(&image.config_digest));
    assert_no_layers(&sb, &image);
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn small_tmpfs(dir: &Path, size: &str) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "ces-test-small", dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs on {}", dir.display());
    Mount(dir.to_owned())
}

/// A store on a file system without room for the image: refused before
/// the download (not at ENOSPC halfway), with a hint; no layer stored.
#[test]
fn a_store_without_room_is_refused_before_download() {
    require_root("mounts a small tmpfs for the store");
    let reg = Misbehaving::http();
    let image = image_of(2 << 20, 19);
    reg.serve(&image, "room/app", "1");
    let sb = Sandbox::with_hosts(&[reg.host()], &[reg.host()]);
    let small = sb.dir.path().join("small");
    let _mount = small_tmpfs(&small, "1m");
    let store = small.join("store");
    let config = std::fs::read_to_string(&sb.config).unwrap();
    let root = format!("root = {:?}", sb.store.display().to_string());
    std::fs::write(&sb.config, config.replace(&root, &format!("root = {:?}", store.display().to_string()))).unwrap();

    let stderr = pull(&sb, &format!("{}/room/app:1", reg.host()), None).fails().to_owned();

    assert!(stderr.contains(&format!("not enough free space in {}", store.display())), "{stderr}");
    assert!(stderr.contains("hint: free space"), "{stderr}");
    assert_eq!(reg.seen_at(&Misbehaving::blob_path("room/app", &image.layer_digests[0])), []);
    let blob = store.join("oci/blobs/sha256").join(image.layer_digests[0].strip_prefix("sha256:").unwrap());
    assert!(!blob.exists());
}
