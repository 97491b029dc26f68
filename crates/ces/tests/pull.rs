//! `ces pull` / `ces-pull` against a real Docker Distribution registry: auth
//! flows, allowlist, platform selection, media types, verification, store
//! consistency and interoperability. One registry per mode for the binary;
//! every test uses repositories of its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::process::Command;

use ces_testkit::layer::{Compression, Entry, Layer, busybox_entries};
use ces_testkit::misbehave::noise;
use ces_testkit::{AuthMode, ImageSpec, Registry, Style, busybox_image, index};
use common::{Sandbox, require_root};

const TOKEN_PUBLIC: &str = "public/";

fn anon() -> &'static Registry {
    Registry::shared(AuthMode::Anonymous)
}

fn pinned(registry: &Registry, repo: &str, digest: &str) -> String {
    format!("{}/{repo}@{digest}", registry.host())
}

#[test]
fn anonymous_pull_stores_names_and_unpacks_the_image() {
    let reg = anon();
    let image = busybox_image().label("org.opencontainers.image.source", "https://github.com/ces-tre/fixtures").build();
    let digest = reg.push(&image, "pull/busybox", "1.0");
    let sb = Sandbox::new(&[reg]);
    let reference = format!("{}/pull/busybox:1.0", reg.host());

    let out = sb.ces(&["pull", &reference]);
    assert_eq!(out.ok().trim(), pinned(reg, "pull/busybox", &digest), "stdout is the pinned reference");

    let images = sb.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["reference"], reference.as_str());
    assert_eq!(images[0]["digest"], digest.as_str());
    assert!(images[0]["pulled_at"].as_str().is_some());
    for blob in image.layer_digests.iter().chain([&image.config_digest, &image.digest]) {
        assert!(sb.has_blob(blob), "blob {blob} stored");
    }
    let rootfs = sb.rootfs(&digest);
    assert_eq!(std::fs::read(rootfs.join("bin/busybox")).unwrap(), std::fs::read("/bin/busybox").unwrap());
    assert_eq!(std::fs::read_link(rootfs.join("bin/sh")).unwrap().to_str(), Some("busybox"));
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());

    let inspect: serde_json::Value = serde_json::from_str(sb.ces(&["inspect", "--json", &reference]).ok()).unwrap();
    assert_eq!(inspect["digest"], digest.as_str());
    assert_eq!(inspect["cmd"], serde_json::json!(["sh"]));
    assert_eq!(inspect["platform"], "linux/amd64");
    assert_eq!(inspect["labels"]["org.opencontainers.image.source"], "https://github.com/ces-tre/fixtures");
    assert_eq!(inspect["layers"][0]["digest"], image.layer_digests[0].as_str());
    // Short forms find it too: a digest prefix.
    let by_prefix = sb.ces(&["inspect", "--json", &digest["sha256:".len().."sha256:".len() + 12]]);
    assert!(by_prefix.ok().contains(&digest));
}

#[test]
fn pull_by_digest_and_second_pull_reuses_verified_blobs() {
    let reg = anon();
    let image =
        ImageSpec::new(vec![Layer::new(busybox_entries()), Layer::new(vec![Entry::file("data/x", "reuse")])]).build();
    let digest = reg.push(&image, "pull/reuse", "v1");
    let sb = Sandbox::new(&[reg]);
    let by_digest = pinned(reg, "pull/reuse", &digest);
    sb.ces(&["pull", &by_digest]).ok();
    let layer = sb.blob_path(&image.layer_digests[0]);
    let before = std::fs::metadata(&layer).unwrap().modified().unwrap();

    let again = sb.ces(&["pull", &format!("{}/pull/reuse:v1", reg.host())]);
    again.ok();
    assert!(again.stderr.contains("(0 new"), "both layers reused: {}", again.stderr);
    assert_eq!(std::fs::metadata(&layer).unwrap().modified().unwrap(), before, "layer not rewritten");
    let refs: Vec<_> = sb.images().iter().map(|i| i["reference"].as_str().unwrap().to_owned()).collect();
    assert_eq!(refs, [by_digest, format!("{}/pull/reuse:v1", reg.host())]);
}

#[test]
fn multi_arch_index_picks_the_host_platform_not_the_first_entry() {
    let reg = anon();
    let arm = busybox_image().arch("arm64").label("arch", "arm64").build();
    let amd = busybox_image().arch("amd64").label("arch", "amd64").build();
    for style in [Style::Oci, Style::Docker] {
        let list = index(&[arm.clone(), amd.clone()], style);
        let repo = format!("pull/multiarch-{style:?}").to_lowercase();
        let top = reg.push(&list, &repo, "latest");
        let sb = Sandbox::new(&[reg]);
        sb.ces(&["pull", &format!("{}/{repo}", reg.host())]).ok();
        let images = sb.images();
        assert_eq!(images[0]["digest"], amd.digest.as_str(), "{style:?}: the amd64 manifest");
        assert_eq!(images[0]["index_digest"], top.as_str(), "{style:?}: the index is recorded");
        assert!(!sb.has_blob(&arm.config_digest), "{style:?}: nothing of arm64 fetched");
    }
}

#[test]
fn index_without_the_host_platform_is_refused_naming_what_it_offers() {
    let reg = anon();
    let list = index(&[busybox_image().arch("arm64").build(), busybox_image().arch("s390x").build()], Style::Oci);
    reg.push(&list, "pull/armonly", "latest");
    let sb = Sandbox::new(&[reg]);
    let out = sb.ces(&["pull", &format!("{}/pull/armonly", reg.host())]);
    let err = out.fails();
    assert!(err.contains("no manifest for linux/amd64"), "{err}");
    assert!(err.contains("linux/arm64, linux/s390x"), "{err}");
    assert!(err.contains("hint: build and push the image for linux/amd64"), "{err}");
    assert!(sb.images().is_empty());
}

#[test]
fn docker_media_types_zstd_and_plain_layers_pull_and_unpack() {
    let reg = anon();
    let cases = [
        ("pull/docker-style", busybox_image().style(Style::Docker)),
        ("pull/zstd", ImageSpec::new(vec![Layer::new(busybox_entries()).compressed(Compression::Zstd)])),
        ("pull/plain", ImageSpec::new(vec![Layer::new(busybox_entries()).compressed(Compression::None)])),
    ];
    for (repo, spec) in cases {
        let image = spec.build();
        let digest = reg.push(&image, repo, "1");
        let sb = Sandbox::new(&[reg]);
        sb.ces(&["pull", &format!("{}/{repo}:1", reg.host())]).ok();
        assert!(sb.rootfs(&digest).join("bin/busybox").is_file(), "{repo} unpacked");
    }
}

#[test]
fn whiteouts_across_layers_are_applied_in_the_cache() {
    let reg = anon();
    let image = ImageSpec::new(vec![
        Layer::new(vec![
            Entry::dir("etc"),
            Entry::file("etc/keep", "1"),
            Entry::file("etc/gone", "2"),
            Entry::dir("opt/app"),
            Entry::file("opt/app/old", "3"),
        ]),
        Layer::new(vec![Entry::whiteout("etc/gone"), Entry::opaque("opt/app"), Entry::file("opt/app/new", "4")]),
    ])
    .build();
    let digest = reg.push(&image, "pull/whiteouts", "1");
    let sb = Sandbox::new(&[reg]);
    sb.ces(&["pull", &format!("{}/pull/whiteouts:1", reg.host())]).ok();
    let root = sb.rootfs(&digest);
    assert!(root.join("etc/keep").exists());
    assert!(!root.join("etc/gone").exists());
    assert!(!root.join("etc/.wh.gone").exists());
    assert!(!root.join("opt/app/old").exists());
    assert!(root.join("opt/app/new").exists());
}

#[test]
fn token_flow_anonymous_public_private_right_and_wrong_token() {
    let reg = Registry::shared(AuthMode::Token);
    let (user, password) = reg.credentials();
    let image = busybox_image().build();
    reg.push(&image, &format!("{TOKEN_PUBLIC}tok"), "1");
    reg.push(&image, "private/tok", "1");
    let public = format!("{}/{TOKEN_PUBLIC}tok:1", reg.host());
    let private = format!("{}/private/tok:1", reg.host());

    // Public repository, no credentials: the anonymous token suffices.
    let sb = Sandbox::new(&[reg]);
    sb.ces(&["pull", &public]).ok();

    // Private repository without credentials.
    let err = sb.ces(&["pull", &private]);
    let err = err.fails();
    assert!(err.contains("not authorized to pull private/tok from") && err.contains("anonymously"), "{err}");
    assert!(err.contains("hint: if the image is private, give a user and token"), "{err}");

    // Wrong token: said plainly, and never echoed.
    let mut cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", "--user", user, &private]);
    cmd.env("CES_REGISTRY_TOKEN", "wrong-token-123");
    let out = sb.run(cmd);
    let err = out.fails();
    assert!(err.contains(&format!("rejected the credentials of user {user}")), "{err}");
    assert!(!format!("{}{}", out.stdout, out.stderr).contains("wrong-token-123"));

    // Right token from the environment, then from stdin.
    let mut cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", "--user", user, &private]);
    cmd.env("CES_REGISTRY_TOKEN", password);
    let out = sb.run(cmd);
    out.ok();
    let sb2 = Sandbox::new(&[reg]);
    sb2.ces_stdin(&["pull", "--user", user, "--password-stdin", &private], format!("{password}\n")).ok();

    // The token reaches no output and no file of the store.
    for (path, bytes) in common::all_file_bytes(&sb.store).into_iter().chain(common::all_file_bytes(&sb2.store)) {
        assert!(!bytes.windows(password.len()).any(|w| w == password.as_bytes()), "token found in {}", path.display());
    }
    assert!(!out.stderr.contains(password) && !out.stdout.contains(password));
}

#[test]
fn basic_auth_registry_with_right_and_wrong_password() {
    let reg = Registry::shared(AuthMode::Basic);
    let (user, password) = reg.credentials();
    reg.push(&busybox_image().build(), "basic/app", "1");
    let reference = format!("{}/basic/app:1", reg.host());
    let sb = Sandbox::new(&[reg]);

    let err = sb.ces(&["pull", &reference]);
    assert!(err.fails().contains("not authorized"), "{}", err.stderr);
    let bad = sb.ces_stdin(&["pull", "-u", user, "--password-stdin", &reference], "nope\n");
    assert!(bad.fails().contains(&format!("rejected the credentials of user {user}")), "{}", bad.stderr);
    sb.ces_stdin(&["pull", "-u", user, "--password-stdin", &reference], format!("{password}\n")).ok();
}

#[test]
fn ces_pull_compatible_form_anonymous_and_with_runtime_and_token() {
    let reg = Registry::shared(AuthMode::Token);
    let (user, password) = reg.credentials();
    let image = busybox_image().build();
    reg.push(&image, &format!("{TOKEN_PUBLIC}compat"), "2");
    reg.push(&image, "private/compat", "2");
    let sb = Sandbox::new(&[reg]);
    let ces_pull = env!("CARGO_BIN_EXE_ces-pull");

    let out = sb.run(sb.command(ces_pull, &["", "", &format!("{}/{TOKEN_PUBLIC}compat:2", reg.host())]));
    assert_eq!(out.ok().trim(), pinned(reg, &format!("{TOKEN_PUBLIC}compat"), &image.digest));
    sb.run(sb.command(ces_pull, &["native", user, password, &format!("{}/private/compat:2", reg.host())])).ok();
    assert_eq!(sb.images().len(), 2);
    let bad = sb.run(sb.command(ces_pull, &["docker", user, password, "x/y"]));
    assert_eq!(bad.code, 2, "usage error: {}", bad.stderr);
    assert!(bad.stderr.contains("unknown runtime \"docker\""), "{}", bad.stderr);
}

#[test]
fn registry_outside_the_allowlist_is_refused_before_any_traffic() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let sb = Sandbox::with_hosts(&["ghcr.io".into()], &[]);
    let out = sb.ces(&["pull", &format!("{host}/ns/app:1")]);
    let err = out.fails();
    assert!(err.contains(&format!("registry {host} is not allowed (allowed: ghcr.io)")), "{err}");
    assert!(err.contains("hint: only approved registries"), "{err}");
    assert!(listener.accept().is_err(), "no connection reached the listener");
    // The store was not even opened: its directory holds only the audit log
    // (the refusal is recorded) and the log's writers' lock.
    let mut entries: Vec<_> = std::fs::read_dir(&sb.store).unwrap().map(|e| e.unwrap().file_name()).collect();
    entries.sort();
    assert_eq!(entries, ["audit.jsonl", "audit.jsonl.lock"], "the store was not opened");
}

#[test]
fn malformed_reference_unreachable_and_unknown_tag_are_clear_errors() {
    let sb = Sandbox::new(&[anon()]);
    let bad = sb.ces(&["pull", "Ghcr.io/NS/App"]);
    assert!(bad.fails().contains("invalid image reference \"Ghcr.io/NS/App\""), "{}", bad.stderr);
    assert!(bad.stderr.contains("hint: references look like"), "{}", bad.stderr);

    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let sb2 = Sandbox::with_hosts(std::slice::from_ref(&closed), std::slice::from_ref(&closed));
    let down = sb2.ces(&["pull", &format!("{closed}/ns/app:1")]);
    assert!(down.fails().contains(&format!("cannot reach registry {closed}")), "{}", down.stderr);
    assert!(down.stderr.contains("hint: check the name"), "{}", down.stderr);

    let unknown = sb.ces(&["pull", &format!("{}/pull/does-not-exist:nope", anon().host())]);
    assert!(unknown.fails().contains("not found in the registry"), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("hint: check the repository name and the tag"), "{}", unknown.stderr);
}

#[test]
fn corrupt_blob_served_by_the_registry_fails_naming_the_digest_and_stores_nothing() {
    let reg = anon();
    let image = ImageSpec::new(vec![
        Layer::new(vec![Entry::file("payload", vec![7u8; 300_000])]).compressed(Compression::None),
    ])
    .build();
    reg.push(&image, "pull/corrupt", "1");
    let layer = &image.layer_digests[0];
    let data = reg.blob_data_path(layer);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[200_000] ^= 0xff; // same size, different content
    std::fs::write(&data, &bytes).unwrap();

    let sb = Sandbox::new(&[reg]);
    let out = sb.ces(&["pull", &format!("{}/pull/corrupt:1", reg.host())]);
    let err = out.fails();
    assert!(err.contains(&format!("content of {layer} does not match its digest")), "{err}");
    assert!(err.contains("hint: the registry served corrupt data"), "{err}");
    assert!(!sb.has_blob(layer), "corrupt layer not stored");
    assert!(sb.images().is_empty(), "nothing named");
    assert!(sb.tmp_leftovers().is_empty(), "temp file removed: {:?}", sb.tmp_leftovers());
}

#[test]
fn truncated_blob_served_by_the_registry_is_a_size_mismatch() {
    let reg = anon();
    let image = ImageSpec::new(vec![
        Layer::new(vec![Entry::file("payload", vec![9u8; 100_000])]).compressed(Compression::None),
    ])
    .build();
    reg.push(&image, "pull/truncated", "1");
    let layer = &image.layer_digests[0];
    let data = reg.blob_data_path(layer);
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();

    let sb = Sandbox::new(&[reg]);
    let out = sb.ces(&["pull", &format!("{}/pull/truncated:1", reg.host())]);
    let err = out.fails();
    assert!(err.contains(&layer.to_string()) && err.contains("its descriptor says"), "{err}");
    assert!(sb.images().is_empty());
    assert!(sb.tmp_leftovers().is_empty());
}

#[test]
fn layer_that_escapes_the_rootfs_fails_the_pull_and_leaves_nothing_named() {
    let reg = anon();
    let image = ImageSpec::new(vec![Layer::new(vec![Entry::file("../../escaped-by-ces-test", "pwned")])]).build();
    reg.push(&image, "pull/escape", "1");
    let sb = Sandbox::new(&[reg]);
    let out = sb.ces(&["pull", &format!("{}/pull/escape:1", reg.host())]);
    let err = out.fails();
    assert!(err.contains(&format!("cannot unpack layer {}", image.layer_digests[0])), "{err}");
    assert!(err.contains("hint: the layer tries to write outside"), "{err}");
    assert!(sb.images().is_empty(), "not named");
    assert!(!sb.rootfs(&image.digest).exists());
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
    for dir in [sb.store.clone(), sb.store.join("tmp"), sb.dir.path().to_owned()] {
        assert!(!dir.join("escaped-by-ces-test").exists());
    }
}

#[test]
fn two_concurrent_pulls_of_one_image_both_succeed_with_one_consistent_copy() {
    let reg = anon();
    let image = ImageSpec::new(vec![
        Layer::new(busybox_entries()),
        Layer::new(vec![Entry::file("big", (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>())]),
    ])
    .build();
    reg.push(&image, "pull/concurrent", "1");
    let sb = Sandbox::new(&[reg]);
    let reference = format!("{}/pull/concurrent:1", reg.host());
    let children: Vec<_> = (0..2)
        .map(|_| {
            sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", &reference])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let images = sb.images();
    assert_eq!(images.len(), 1, "one entry: {images:?}");
    assert_eq!(images[0]["digest"], image.digest.as_str());
    assert!(sb.rootfs(&image.digest).join("big").is_file());
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
    let named = |dir: &str| std::fs::read_dir(sb.store.join(dir)).unwrap().count();
    assert_eq!(named("rootfs") + named("layered"), 1, "one copy named");
}

#[test]
fn pull_killed_mid_download_leaves_a_consistent_store_and_the_next_pull_completes() {
    let reg = anon();
    // Incompressible, so the download takes long enough to be caught in flight.
    let image = ImageSpec::new(vec![
        Layer::new(vec![Entry::file("noise", noise(64_000_000, 0x2545_f491))]).compressed(Compression::None),
    ])
    .build();
    reg.push(&image, "pull/killed", "1");
    let sb = Sandbox::new(&[reg]);
    let reference = format!("{}/pull/killed:1", reg.host());

    let mut child = sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", &reference]).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let caught = loop {
        let partial = std::fs::read_dir(sb.store.join("tmp"))
            .map(|d| {
                d.filter_map(Result::ok).any(|e| {
                    e.file_name().to_string_lossy().starts_with("blob-") && e.metadata().is_ok_and(|m| m.len() > 0)
                })
            })
            .unwrap_or(false);
        if partial || std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break partial;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(caught, "the pull was killed while a blob was half-written");

    // Consistent: nothing named, no half blob under a content address.
    assert!(sb.images().is_empty());
    assert!(!sb.has_blob(&image.layer_digests[0]));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.store.join("oci/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]));

    sb.ces(&["pull", &reference]).ok();
    assert!(sb.tmp_leftovers().is_empty(), "leftovers cleaned: {:?}", sb.tmp_leftovers());
    assert_eq!(sb.images()[0]["digest"], image.digest.as_str());
}

#[test]
fn rmi_removes_the_name_and_only_blobs_no_other_image_uses() {
    let reg = anon();
    let shared = Layer::new(busybox_entries());
    let a = ImageSpec::new(vec![shared.clone(), Layer::new(vec![Entry::file("a", "only in a")])]).build();
    let b = ImageSpec::new(vec![shared, Layer::new(vec![Entry::file("b", "only in b")])]).build();
    reg.push(&a, "pull/rmi-a", "1");
    reg.push(&b, "pull/rmi-b", "1");
    let sb = Sandbox::new(&[reg]);
    let ref_a = format!("{}/pull/rmi-a:1", reg.host());
    sb.ces(&["pull", &ref_a]).ok();
    sb.ces(&["pull", &format!("{}/pull/rmi-b:1", reg.host())]).ok();

    assert_eq!(sb.ces(&["rmi", &ref_a]).ok().trim(), format!("Untagged: {ref_a}"));
    let images = sb.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["digest"], b.digest.as_str());
    assert!(sb.has_blob(&a.layer_digests[0]), "shared layer kept");
    assert!(!sb.has_blob(&a.layer_digests[1]), "a's own layer deleted");
    assert!(!sb.has_blob(&a.digest) && !sb.has_blob(&a.config_digest));
    assert!(!sb.rootfs(&a.digest).exists() && sb.rootfs(&b.digest).exists());

    let missing = sb.ces(&["rmi", &ref_a]);
    assert!(missing.fails().contains("no image"), "{}", missing.stderr);
    assert!(missing.stderr.contains("hint: pull it first"), "{}", missing.stderr);
}

/// Flushes the store's file system, so that what it says of blocks is
/// settled (some file systems count a new file's blocks only then).
fn sync_store(sb: &Sandbox) {
    assert!(Command::new("sync").arg("-f").arg(&sb.store).status().unwrap().success());
}

/// What `du` (GNU coreutils, not ces) says the store's data takes, in
/// bytes: its blobs, unpacked layers (with their short names) and root
/// filesystems, each file with several links once.
fn du_of_store_data(sb: &Sandbox) -> u64 {
    sync_store(sb);
    let mut paths = Vec::new();
    for dir in ["oci/blobs/sha256", "layers", "l", "rootfs", "layered", "merged"] {
        for entry in std::fs::read_dir(sb.store.join(dir)).unwrap() {
            paths.push(entry.unwrap().path());
        }
    }
    du_of(&paths)
}

/// What `du` says `paths` take together, in bytes.
fn du_of(paths: &[std::path::PathBuf]) -> u64 {
    let out = Command::new("du").args(["-scB1", "--"]).args(paths).output().unwrap();
    assert!(out.status.success(), "du: {}", String::from_utf8_lossy(&out.stderr));
    let total = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_owned();
    total.split_whitespace().next().unwrap().parse().unwrap()
}

/// Checks that `ces rmi` or `ces gc` said it freed `dropped` bytes of disk
/// (du's drop), to its rounding (`412.3 kB`: within 50 bytes; the cases
/// stay under a megabyte, so that the rounding stays that fine).
fn says_it_freed(run: &common::Run, dropped: u64) {
    let line = run.stderr.lines().find(|l| l.starts_with("Deleted ")).unwrap_or_default();
    assert!(!line.contains("at least"), "everything was counted: {line}");
    let said = line.rsplit(": ").next().and_then(|s| s.strip_suffix(" of disk freed")).unwrap_or_default();
    let (value, unit) = said.split_once(' ').unwrap_or_default();
    let unit: f64 = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        other => panic!("no size under a megabyte said ({other:?}): {}", run.stderr),
    };
    let value: f64 = value.parse().unwrap_or_else(|_| panic!("no size said: {}", run.stderr));
    assert!((value * unit - dropped as f64).abs() <= unit / 20.0, "du freed {dropped} bytes: {}", run.stderr);
}

#[test]
fn images_disk_counts_shared_layers_for_each_and_unique_is_what_rmi_frees() {
    disk_use_is_what_du_sees("disk", None);
}

/// The same, with every image's root filesystem assembled as a tree of
/// hard links to its layers' files (counted once, as du counts them).
#[test]
fn images_disk_counts_an_assembled_trees_links_once() {
    disk_use_is_what_du_sees("disk-tree", Some("layered_rootfs = false"));
}

/// The same, in a store that keeps no layer blobs once unpacked.
#[test]
fn images_disk_counts_a_store_without_layer_blobs() {
    disk_use_is_what_du_sees("disk-noblobs", Some("keep_layer_blobs = false"));
}

/// `ces images --disk` on two images that share a layer (one of them under
/// two names), checked against du: in all, for each image, what `ces rmi`
/// frees and what `ces gc` frees (and what each says it freed); images pushed as `pull/NAME-a` and
/// `pull/NAME-b`, `storage` added to the store's settings. (Where the
/// sandbox is on a tmpfs, as in `scripts/check-fresh`, directories and
/// short symbolic links take no blocks: there the checks cover files only.)
fn disk_use_is_what_du_sees(name: &str, storage: Option<&str>) {
    let reg = anon();
    let shared = Layer::new(busybox_entries());
    // Own files of different sizes, so that one image's share cannot pass for the other's.
    let a = ImageSpec::new(vec![shared.clone(), Layer::new(vec![Entry::file("a", noise(300 << 10, 1))])]).build();
    let b = ImageSpec::new(vec![shared, Layer::new(vec![Entry::file("b", noise(40 << 10, 3))])]).build();
    reg.push(&a, &format!("pull/{name}-a"), "1");
    reg.push(&a, &format!("pull/{name}-a"), "2");
    reg.push(&b, &format!("pull/{name}-b"), "1");
    let sb = Sandbox::new(&[reg]);
    if let Some(storage) = storage {
        // The sandbox's config ends with its [storage] table.
        sb.configure(storage);
    }
    let (ref_a, ref_a2, ref_b) = (
        format!("{}/pull/{name}-a:1", reg.host()),
        format!("{}/pull/{name}-a:2", reg.host()),
        format!("{}/pull/{name}-b:1", reg.host()),
    );
    for reference in [&ref_a, &ref_b] {
        sb.ces(&["pull", reference]).ok();
    }
    let tree = sb.store.join("rootfs").join(a.digest.strip_prefix("sha256:").unwrap());
    assert_eq!(tree.is_dir(), storage == Some("layered_rootfs = false"), "a tree only when asked for");
    let disk = |sb: &Sandbox| -> serde_json::Value {
        sync_store(sb);
        serde_json::from_str(sb.ces(&["images", "--disk", "--json"]).ok()).unwrap()
    };
    let field = |usage: &serde_json::Value, key: &str| usage[key].as_u64().unwrap();
    let row = |usage: &serde_json::Value, reference: &str| -> (u64, u64) {
        let images = usage["images"].as_array().unwrap();
        let image = images.iter().find(|i| i["reference"] == reference).unwrap();
        (image["disk"].as_u64().unwrap(), image["unique"].as_u64().unwrap())
    };
    let usage = disk(&sb);
    assert_eq!(field(&usage, "total"), du_of_store_data(&sb), "{usage}");
    assert_eq!((field(&usage, "reclaimable"), field(&usage, "unreadable")), (0, 0), "{usage}");
    let ((disk_a, unique_a), (disk_b, unique_b)) = (row(&usage, &ref_a), row(&usage, &ref_b));
    assert!(unique_a > 300 << 10 && unique_b > 40 << 10 && unique_a > unique_b, "{usage}");
    assert!(disk_a - unique_a > 500 << 10, "busybox (its layer) counts for both: {usage}");
    // Nothing is left out or counted twice: one image's DISK and the
    // other's UNIQUE make the store.
    let total = field(&usage, "total");
    assert_eq!((disk_a + unique_b, disk_b + unique_a), (total, total), "{usage}");
    let table = sb.ces(&["images", "--disk"]);
    assert!(table.ok().starts_with("REFERENCE"), "{}", table.stdout);
    assert!(table.stdout.contains(&ref_a) && table.stdout.contains("UNIQUE"), "{}", table.stdout);

    // Another name for the same image: removing either frees nothing.
    sb.ces(&["pull", &ref_a2]).ok();
    let usage = disk(&sb);
    let names = |usage: &serde_json::Value| -> Vec<u64> {
        usage["images"].as_array().unwrap().iter().map(|i| i["names"].as_u64().unwrap()).collect()
    };
    assert_eq!((row(&usage, &ref_a), row(&usage, &ref_a2)), ((disk_a, 0), (disk_a, 0)), "{usage}");
    assert_eq!(names(&usage), [2, 1, 2], "{usage}");
    assert!(sb.ces(&["images", "--disk"]).ok().contains("0 (2 names)"));
    let before = du_of_store_data(&sb);
    let removed = sb.ces(&["rmi", &ref_a2]);
    removed.ok();
    assert_eq!(du_of_store_data(&sb), before);
    says_it_freed(&removed, 0);

    // What `ces rmi` frees: the image's UNIQUE, and what no image kept (a
    // leftover blob), which its gc frees too.
    let stray = sb.store.join("oci/blobs/sha256").join("ab".repeat(32));
    std::fs::write(&stray, noise(64 << 10, 3)).unwrap();
    let usage = disk(&sb);
    let (_, unique_a) = row(&usage, &ref_a);
    let before = du_of_store_data(&sb);
    assert_eq!(field(&usage, "total"), before, "{usage}");
    assert!(field(&usage, "reclaimable") >= 64 << 10, "{usage}");
    let removed = sb.ces(&["rmi", &ref_a]);
    removed.ok();
    let dropped = before - du_of_store_data(&sb);
    assert_eq!(dropped, unique_a + field(&usage, "reclaimable"), "{usage}");
    says_it_freed(&removed, dropped);
    assert!(!stray.exists());
    // b alone: all of the store's data is b's.
    let usage = disk(&sb);
    let left = du_of_store_data(&sb);
    assert_eq!((row(&usage, &ref_b), field(&usage, "total")), ((left, left), left), "{usage}");

    // What `ces gc` frees: a leftover blob and a leftover layer.
    std::fs::write(&stray, noise(64 << 10, 4)).unwrap();
    let layer = sb.store.join("layers").join("cd".repeat(32));
    std::fs::create_dir(&layer).unwrap();
    std::fs::write(layer.join("x"), noise(20 << 10, 5)).unwrap();
    // A file linked twice, both links in what goes: it is freed, once.
    std::fs::hard_link(layer.join("x"), layer.join("y")).unwrap();
    // And what an interrupted write left, which taking the store removes.
    let leftover = sb.store.join("tmp").join("blob-leftover");
    std::fs::write(&leftover, noise(12 << 10, 6)).unwrap();
    let usage = disk(&sb);
    let before = du_of_store_data(&sb);
    let left = du_of(std::slice::from_ref(&leftover));
    assert!(field(&usage, "reclaimable") >= 84 << 10 && left >= 12 << 10, "{usage}");
    let collected = sb.ces(&["gc"]);
    collected.ok();
    assert!(!stray.exists() && !layer.exists() && !leftover.exists());
    let dropped = before - du_of_store_data(&sb);
    assert_eq!(dropped, field(&usage, "reclaimable"), "{usage}");
    says_it_freed(&collected, dropped + left);
    assert_eq!(field(&disk(&sb), "reclaimable"), 0);
}

/// Rootless, a directory of the user's store that the user cannot read (its
/// mode changed by hand) is counted as nothing, and said to be: the figures
/// are lower bounds, never passed off as the whole.
#[test]
fn images_disk_as_a_user_says_what_it_could_not_read() {
    use std::os::unix::fs::PermissionsExt;
    require_root("switches to an unprivileged uid");
    let reg = anon();
    let image = ImageSpec::new(vec![Layer::new(busybox_entries())]).build();
    reg.push(&image, "pull/disk-nobody", "1");
    let sb = Sandbox::new(&[reg]);
    pull_as_nobody(&sb, &format!("{}/pull/disk-nobody:1", reg.host())).ok();
    let json = |run: common::Run| -> serde_json::Value { serde_json::from_str(run.ok()).unwrap() };
    let whole = json(ces_as_nobody(&sb, &["images", "--disk", "--json"]));
    assert_eq!(whole["unreadable"], 0, "{whole}");
    let layer = sb.store.join("layers").join(&unpacked_layers(&sb)[0]);
    std::fs::set_permissions(layer.join("bin"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let part = json(ces_as_nobody(&sb, &["images", "--disk", "--json"]));
    std::fs::set_permissions(layer.join("bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(part["unreadable"], 1, "{part}");
    assert!(part["total"].as_u64().unwrap() < whole["total"].as_u64().unwrap(), "{part} {whole}");
    std::fs::set_permissions(layer.join("bin"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let table = ces_as_nobody(&sb, &["images", "--disk"]);
    std::fs::set_permissions(layer.join("bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        table.ok().contains("1 files or directories could not be read: the figures are lower bounds."),
        "{}",
        table.stdout
    );
    // Removed, the layer is freed all the same, and the figure said to be
    // a lower bound.
    std::fs::set_permissions(layer.join("bin"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let removed = ces_as_nobody(&sb, &["rmi", &format!("{}/pull/disk-nobody:1", reg.host())]);
    removed.ok();
    assert!(!layer.exists(), "{}", removed.stderr);
    assert!(
        removed.stderr.contains(": at least ") && removed.stderr.contains("(1 file or directory could not be counted)"),
        "{}",
        removed.stderr
    );
}

#[test]
fn store_is_an_oci_layout_that_umoci_and_skopeo_read() {
    let reg = anon();
    let image = busybox_image().build();
    let digest = reg.push(&image, "pull/interop", "3.1");
    let sb = Sandbox::new(&[reg]);
    let reference = format!("{}/pull/interop:3.1", reg.host());
    sb.ces(&["pull", &reference]).ok();
    let layout = sb.store.join("oci");

    let umoci = Command::new("umoci").args(["ls", "--layout"]).arg(&layout).output().unwrap();
    assert!(umoci.status.success(), "{}", String::from_utf8_lossy(&umoci.stderr));
    assert_eq!(String::from_utf8_lossy(&umoci.stdout).trim(), reference);

    let skopeo =
        Command::new("skopeo").arg("inspect").arg(format!("oci:{}:{reference}", layout.display())).output().unwrap();
    assert!(skopeo.status.success(), "{}", String::from_utf8_lossy(&skopeo.stderr));
    let info: serde_json::Value = serde_json::from_slice(&skopeo.stdout).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(info["Layers"][0], image.layer_digests[0].as_str());
}

#[test]
fn bad_config_file_names_file_line_and_key() {
    let sb = Sandbox::new(&[]);
    std::fs::write(&sb.config, "[registries]\nallowed = \"ghcr.io\"\n").unwrap();
    let out = sb.ces(&["images"]);
    let err = out.fails();
    assert!(err.contains(&format!("invalid config {}, line 2, key registries.allowed", sb.config.display())), "{err}");
    let missing = sb.run({
        let mut c = sb.command(env!("CARGO_BIN_EXE_ces"), &["images"]);
        c.env("CES_CONFIG", sb.dir.path().join("nope.toml"));
        c
    });
    assert!(missing.fails().contains("cannot read config"), "{}", missing.stderr);
}

#[test]
fn disk_full_mid_pull_is_reported_and_leaves_the_store_consistent() {
    require_root("mounts a small tmpfs");
    let reg = anon();
    // Compressible: the download fits (the free-space check passes), the
    // unpacked file does not, so the disk fills up in the middle of the pull.
    let image =
        ImageSpec::new(vec![Layer::new(vec![Entry::file("big", vec![1u8; 3_000_000])]).compressed(Compression::Gzip)])
            .build();
    reg.push(&image, "pull/diskfull", "1");
    let sb = Sandbox::new(&[reg]);
    std::fs::create_dir_all(&sb.store).unwrap();
    let mount = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&sb.store).status().unwrap();
    assert!(mount.success());
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&sb.store);

    let out = sb.ces(&["pull", &format!("{}/pull/diskfull:1", reg.host())]);
    let err = out.fails();
    assert!(err.contains("no space left on the device"), "{err}");
    assert!(err.contains("hint: free some space"), "{err}");
    assert!(sb.images().is_empty());
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
}

#[test]
fn rootless_pull_skips_device_nodes_with_a_warning_and_owns_its_files() {
    use std::os::unix::fs::MetadataExt;
    require_root("switches to an unprivileged uid");
    let reg = anon();
    let image = ImageSpec::new(vec![Layer::new({
        let mut entries = busybox_entries();
        entries.push(Entry::dir("dev"));
        entries.push(Entry::CharDevice { path: "dev/null".into(), major: 1, minor: 3 });
        entries.push(Entry::file_mode("usr/bin/tool", "#!/bin/sh\n", 0o4755));
        entries
    })])
    .build();
    let digest = reg.push(&image, "pull/rootless", "1");
    let sb = Sandbox::new(&[reg]);
    let out = pull_as_nobody(&sb, &format!("{}/pull/rootless:1", reg.host()));
    out.ok();
    assert!(out.stderr.contains("skipping a device node") && out.stderr.contains("dev/null"), "{}", out.stderr);
    let rootfs = sb.rootfs(&digest);
    assert!(!rootfs.join("dev/null").exists(), "no device created");
    let tool = std::fs::metadata(rootfs.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.uid(), NOBODY, "files belong to the user who pulled");
    assert_eq!(tool.mode() & 0o4000, 0, "no setuid bit on a file the user owns");
    assert_eq!(std::fs::metadata(rootfs.join("bin/busybox")).unwrap().uid(), NOBODY);
}

const NOBODY: u32 = 65534;

/// `ces pull REFERENCE` as `nobody`, into a store of theirs (made on the
/// first call).
fn pull_as_nobody(sb: &Sandbox, reference: &str) -> common::Run {
    ces_as_nobody(sb, &["pull", reference])
}

/// `ces ARGS` as the unprivileged user, with a store of its own (made, and
/// given to it, if there is none yet).
fn ces_as_nobody(sb: &Sandbox, args: &[&str]) -> common::Run {
    use std::os::unix::fs::PermissionsExt;
    // The unprivileged user needs to read the config and own its store.
    if !sb.store.exists() {
        std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(&sb.store).unwrap();
        rustix::fs::chown(&sb.store, Some(rustix::fs::Uid::from_raw(NOBODY)), Some(rustix::fs::Gid::from_raw(NOBODY)))
            .unwrap();
    }
    let nobody = NOBODY.to_string();
    let argv = ["--reuid", &nobody, "--regid", &nobody, "--clear-groups", "--"];
    let mut cmd = sb.command("setpriv", &argv);
    cmd.arg(common::user_bin(env!("CARGO_BIN_EXE_ces"))).args(args);
    cmd.env("HOME", sb.dir.path());
    sb.run(cmd)
}

/// A gzip bomb under `[storage] max_image_size`: 64 MB of zeros is a small
/// download but more than the limit unpacked. The unpack stops at the limit
/// with a hint, and no image or root filesystem is left.
#[test]
fn a_gzip_bomb_stops_at_max_image_size_unpacked() {
    let reg = anon();
    let image =
        ImageSpec::new(vec![Layer::new(vec![Entry::file("zeros", vec![0u8; 64 << 20])]).compressed(Compression::Gzip)])
            .build();
    reg.push(&image, "pull/bomb", "1");
    let sb = Sandbox::new(&[reg]);
    let config = std::fs::read_to_string(&sb.config).unwrap();
    std::fs::write(&sb.config, config.replace("[storage]\n", "[storage]\nmax_image_size = 8000000\n")).unwrap();

    let out = sb.ces(&["pull", &format!("{}/pull/bomb:1", reg.host())]);
    let err = out.fails();
    assert!(err.contains("larger unpacked than the limit of 8000000 bytes"), "{err}");
    assert!(err.contains("hint: nothing of it was kept"), "{err}");
    assert!(sb.images().is_empty());
    let rootfs = sb.store.join("rootfs");
    assert_eq!(std::fs::read_dir(&rootfs).map(|d| d.count()).unwrap_or(0), 0, "a root filesystem was left");
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
}

/// The layer directories of the sandbox's store (`layers/<diff_id hex>`).
fn unpacked_layers(sb: &Sandbox) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sb.store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// Two images whose first layer (busybox) is one, each with a file of its
/// own (`a`, `b`), pushed as `pull/NAME-a:1` and `pull/NAME-b:1`; a sandbox
/// whose store keeps no layer blobs; and the two references.
fn sharing_a_layer_without_blobs(
    name: &str,
) -> (Sandbox, ces_testkit::BuiltImage, ces_testkit::BuiltImage, String, String) {
    let reg = anon();
    let shared = Layer::new(busybox_entries());
    let a = ImageSpec::new(vec![shared.clone(), Layer::new(vec![Entry::file("a", "only in a")])]).build();
    let b = ImageSpec::new(vec![shared, Layer::new(vec![Entry::file("b", "only in b")])]).build();
    reg.push(&a, &format!("pull/{name}-a"), "1");
    reg.push(&b, &format!("pull/{name}-b"), "1");
    let sb = Sandbox::new(&[reg]);
    // The sandbox's config ends with its [storage] table.
    sb.configure("keep_layer_blobs = false");
    let (ref_a, ref_b) = (format!("{}/pull/{name}-a:1", reg.host()), format!("{}/pull/{name}-b:1", reg.host()));
    (sb, a, b, ref_a, ref_b)
}

#[test]
fn without_layer_blobs_an_image_keeps_its_files_only_and_shared_layers_are_not_fetched_again() {
    let (sb, a, b, ref_a, ref_b) = sharing_a_layer_without_blobs("noblobs");

    let pulled = sb.ces(&["pull", &ref_a]);
    pulled.ok();
    assert!(pulled.stderr.contains("(2 new"), "{}", pulled.stderr);
    for layer in &a.layer_digests {
        assert!(!sb.has_blob(layer), "layer blob {layer} dropped once unpacked");
    }
    assert!(sb.has_blob(&a.digest) && sb.has_blob(&a.config_digest), "the manifest and config stay");
    assert_eq!(std::fs::read(sb.rootfs(&a.digest).join("a")).unwrap(), b"only in a");
    assert_eq!(unpacked_layers(&sb).len(), 2);

    // b shares the busybox layer, which the store has unpacked: only b's own
    // layer is fetched, and its blob is dropped too.
    let pulled = sb.ces(&["pull", &ref_b]);
    pulled.ok();
    assert!(pulled.stderr.contains("(1 new"), "the shared layer is not fetched again: {}", pulled.stderr);
    assert!(b.layer_digests.iter().all(|l| !sb.has_blob(l)));
    assert_eq!(std::fs::read(sb.rootfs(&b.digest).join("b")).unwrap(), b"only in b");
    assert_eq!(unpacked_layers(&sb).len(), 3);
    let again = sb.ces(&["pull", &ref_a]);
    again.ok();
    assert!(again.stderr.contains("(0 new"), "{}", again.stderr);

    // `ces test`'s inspection and gc work without the blobs.
    let inspect: serde_json::Value = serde_json::from_str(sb.ces(&["inspect", "--json", &ref_a]).ok()).unwrap();
    assert_eq!(inspect["layers"][1]["digest"], a.layer_digests[1].as_str());
    sb.ces(&["rmi", &ref_a]).ok();
    assert_eq!(unpacked_layers(&sb).len(), 2, "a's own layer freed, the shared one kept");
    assert!(!sb.has_blob(&a.digest) && sb.rootfs(&b.digest).exists());
    assert_eq!(
        std::fs::read(sb.rootfs(&b.digest).join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
}

#[test]
fn a_rootless_store_without_layer_blobs_shares_layers_it_unpacked_as_they_arrived() {
    use std::os::unix::fs::MetadataExt;
    require_root("switches to an unprivileged uid");
    let (sb, a, b, ref_a, ref_b) = sharing_a_layer_without_blobs("rootless-noblobs");

    let pulled = pull_as_nobody(&sb, &ref_a);
    pulled.ok();
    assert!(a.layer_digests.iter().all(|l| !sb.has_blob(l)), "layer blobs dropped once unpacked");
    let file = sb.rootfs(&a.digest).join("a");
    assert_eq!(std::fs::read(&file).unwrap(), b"only in a");
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), NOBODY, "the user's own files");
    let pulled = pull_as_nobody(&sb, &ref_b);
    pulled.ok();
    assert!(pulled.stderr.contains("(1 new"), "the shared layer is not fetched again: {}", pulled.stderr);
    assert_eq!(std::fs::read(sb.rootfs(&b.digest).join("b")).unwrap(), b"only in b");
    assert_eq!(unpacked_layers(&sb).len(), 3);
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
}

#[test]
fn a_pull_under_sudo_unpacks_its_layers_as_they_arrive_into_the_root_store() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_root("runs ces as sudo would");
    let user = common::test_user();
    let reg = anon();
    let image = ImageSpec::new(vec![Layer::new(busybox_entries()), Layer::new(vec![Entry::file("x", "x")])]).build();
    reg.push(&image, "pull/sudo", "1");
    let sb = Sandbox::new(&[reg]);
    let cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", &format!("{}/pull/sudo:1", reg.host())]);
    sb.run(user.sudo(&sb, cmd)).ok();
    let busybox = std::fs::metadata(sb.rootfs(&image.digest).join("bin/busybox")).unwrap();
    assert_eq!(busybox.uid(), 0, "the root store keeps the image's owners, not the user's");
    assert_eq!(unpacked_layers(&sb).len(), 2);
    for private in ["tmp", "layers"] {
        let mode = std::fs::metadata(sb.store.join(private)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{private} is root's alone");
    }
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
}

#[test]
fn a_store_told_to_drop_layer_blobs_drops_those_it_kept_at_gc() {
    let reg = anon();
    let image = ImageSpec::new(vec![Layer::new(busybox_entries()), Layer::new(vec![Entry::file("x", "x")])]).build();
    reg.push(&image, "pull/noblobs-later", "1");
    let sb = Sandbox::new(&[reg]);
    sb.ces(&["pull", &format!("{}/pull/noblobs-later:1", reg.host())]).ok();
    assert!(image.layer_digests.iter().all(|l| sb.has_blob(l)), "kept by default");

    sb.configure("keep_layer_blobs = false");
    sb.ces(&["gc"]).ok();
    assert!(image.layer_digests.iter().all(|l| !sb.has_blob(l)), "dropped at gc");
    assert!(sb.has_blob(&image.digest) && sb.has_blob(&image.config_digest));
    assert_eq!(std::fs::read(sb.rootfs(&image.digest).join("x")).unwrap(), b"x");
}

#[test]
fn without_layer_blobs_an_image_that_needs_them_to_unpack_fetches_them_again() {
    let reg = anon();
    // A hard link into a lower layer: no layer alone can hold it, so the
    // image is unpacked from its blobs, layer after layer, and the blob of
    // the base (unpacked, dropped) is needed again.
    let base = Layer::new(busybox_entries());
    let first = ImageSpec::new(vec![base.clone()]).build();
    let linked =
        ImageSpec::new(vec![base, Layer::new(vec![Entry::hardlink("bin/busybox-again", "bin/busybox")])]).build();
    reg.push(&first, "pull/noblobs-base", "1");
    reg.push(&linked, "pull/noblobs-linked", "1");
    let sb = Sandbox::new(&[reg]);
    sb.configure("keep_layer_blobs = false");
    sb.ces(&["pull", &format!("{}/pull/noblobs-base:1", reg.host())]).ok();
    assert!(!sb.has_blob(&first.layer_digests[0]));

    let pulled = sb.ces(&["pull", &format!("{}/pull/noblobs-linked:1", reg.host())]);
    pulled.ok();
    let rootfs = sb.rootfs(&linked.digest);
    assert_eq!(std::fs::read(rootfs.join("bin/busybox-again")).unwrap(), std::fs::read("/bin/busybox").unwrap());
    // Unpacked from its blobs: they stay (the image needs them to unpack),
    // also when another image with its base layer is unpacked, and at gc.
    assert!(linked.layer_digests.iter().all(|l| sb.has_blob(l)), "{}", pulled.stderr);
    let other = ImageSpec::new(vec![Layer::new(busybox_entries()), Layer::new(vec![Entry::file("o", "o")])]).build();
    reg.push(&other, "pull/noblobs-other", "1");
    sb.ces(&["pull", &format!("{}/pull/noblobs-other:1", reg.host())]).ok();
    assert!(!sb.has_blob(&other.layer_digests[1]), "the other image's own blob is dropped");
    sb.ces(&["gc"]).ok();
    assert!(linked.layer_digests.iter().all(|l| sb.has_blob(l)), "the linked image's blobs are kept");
}

#[test]
fn without_layer_blobs_an_image_whose_layers_cannot_be_linked_keeps_its_blobs() {
    let reg = anon();
    // Every layer unpacks alone, but linking cannot tell which of two
    // entries of the second layer, one through the first layer's `lib`
    // link, lands last: the image is unpacked the old way.
    let mut base = busybox_entries();
    base.extend([Entry::dir("usr/lib"), Entry::symlink("lib", "usr/lib")]);
    let image = ImageSpec::new(vec![
        Layer::new(base),
        Layer::new(vec![Entry::file("lib/x", "via the link"), Entry::file("usr/lib/x", "direct")]),
    ])
    .build();
    reg.push(&image, "pull/noblobs-unlinkable", "1");
    let sb = Sandbox::new(&[reg]);
    sb.configure("keep_layer_blobs = false");
    sb.ces(&["pull", &format!("{}/pull/noblobs-unlinkable:1", reg.host())]).ok();
    assert_eq!(unpacked_layers(&sb).len(), 2, "both layers unpacked alone");
    assert!(image.layer_digests.iter().all(|l| sb.has_blob(l)), "unpacked the old way: its blobs are kept");
    sb.ces(&["gc"]).ok();
    assert!(image.layer_digests.iter().all(|l| sb.has_blob(l)), "and kept by gc");
}
