//! `ces load`: OCI archives and `docker save` tarballs, written to real files
//! by the test kit (or by GNU tar), loaded by the real binary into a store of
//! each test's own; then read back with `ces images`/`ces inspect`, the
//! unpacked rootfs, and skopeo and umoci on the store's OCI layout.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use ces_testkit::image::marker_image;
use ces_testkit::layer::{Compression, compress};
use ces_testkit::{Style, busybox_image, index};
use common::{Run, Sandbox};

fn sandbox() -> Sandbox {
    Sandbox::new(&[])
}

fn path(sb: &Sandbox, name: &str) -> String {
    sb.dir.path().join(name).display().to_string()
}

/// The manifest stored as `digest`, as JSON.
fn stored_manifest(sb: &Sandbox, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(sb.blob_path(digest)).unwrap()).unwrap()
}

/// `skopeo inspect oci:<store>/oci:<reference>`, parsed.
fn skopeo_inspect(sb: &Sandbox, reference: &str) -> serde_json::Value {
    let layout = sb.store.join("oci");
    let out =
        Command::new("skopeo").arg("inspect").arg(format!("oci:{}:{reference}", layout.display())).output().unwrap();
    assert!(out.status.success(), "skopeo inspect {reference}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Flips a byte in the middle of blob `digest` of the OCI layout `layout`.
fn damage_blob(layout: &Path, digest: &str) {
    let blob = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
}

/// Packs `layout` into `archive` with GNU tar, as an operator would (`./`
/// prefixes, directory entries).
fn tar_layout(layout: &Path, archive: &str) {
    let status = Command::new("tar").arg("-cf").arg(archive).arg("-C").arg(layout).arg(".").status().unwrap();
    assert!(status.success());
}

fn assert_error_with_hint(out: &Run) -> &str {
    let err = out.fails();
    assert!(err.lines().any(|l| l.starts_with("hint: ")), "expected a hint:\n{err}");
    err
}

#[test]
fn oci_archive_with_a_full_name_is_stored_named_and_unpacked() {
    let sb = sandbox();
    let image = busybox_image().label("org.opencontainers.image.source", "https://github.com/ces-tre/fixtures").build();
    let archive = path(&sb, "busybox.tar");
    image.write_oci_archive(Path::new(&archive), "ghcr.io/ces-tre/busybox:1.0");

    let out = sb.ces(&["load", &archive]);
    assert_eq!(out.ok().trim(), format!("ghcr.io/ces-tre/busybox@{}", image.digest), "stdout is the pinned reference");
    assert!(out.stderr.contains("Loaded ghcr.io/ces-tre/busybox:1.0"), "{}", out.stderr);

    let images = sb.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["reference"], "ghcr.io/ces-tre/busybox:1.0");
    assert_eq!(images[0]["digest"], image.digest.as_str());
    let inspect: serde_json::Value =
        serde_json::from_str(sb.ces(&["inspect", "--json", "ghcr.io/ces-tre/busybox:1.0"]).ok()).unwrap();
    assert_eq!(inspect["cmd"], serde_json::json!(["sh"]));
    assert_eq!(inspect["labels"]["org.opencontainers.image.source"], "https://github.com/ces-tre/fixtures");
    assert_eq!(inspect["layers"][0]["digest"], image.layer_digests[0].as_str());

    let rootfs = sb.rootfs(&image.digest);
    assert_eq!(std::fs::read(rootfs.join("bin/busybox")).unwrap(), std::fs::read("/bin/busybox").unwrap());
    assert_eq!(std::fs::read_link(rootfs.join("bin/sh")).unwrap().to_str(), Some("busybox"));
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());

    let info = skopeo_inspect(&sb, "ghcr.io/ces-tre/busybox:1.0");
    assert_eq!(info["Digest"], image.digest.as_str());
    let umoci = Command::new("umoci").args(["ls", "--layout"]).arg(sb.store.join("oci")).output().unwrap();
    assert!(umoci.status.success(), "{}", String::from_utf8_lossy(&umoci.stderr));
    assert_eq!(String::from_utf8_lossy(&umoci.stdout).trim(), "ghcr.io/ces-tre/busybox:1.0");

    // Loading again reuses what is there and names the same image.
    let again = sb.ces(&["load", &archive]);
    assert_eq!(again.ok().trim(), format!("ghcr.io/ces-tre/busybox@{}", image.digest));
    assert_eq!(sb.images().len(), 1);
}

#[test]
fn a_bare_tag_in_the_archive_needs_tag_and_tag_names_it() {
    let sb = sandbox();
    let image = marker_image("load bare tag").build();
    let archive = path(&sb, "app.tar");
    image.write_oci_archive(Path::new(&archive), "1.0");

    let out = sb.ces(&["load", &archive]);
    let err = assert_error_with_hint(&out);
    assert!(err.contains(&format!("does not name image {}", image.digest)) && err.contains("\"1.0\""), "{err}");
    assert!(err.contains("--tag"), "{err}");
    assert!(out.stdout.is_empty());
    assert!(sb.images().is_empty());

    let out = sb.ces(&["load", "--tag", "ghcr.io/ns/app:1.0", &archive]);
    assert_eq!(out.ok().trim(), format!("ghcr.io/ns/app@{}", image.digest));
    assert_eq!(sb.images()[0]["reference"], "ghcr.io/ns/app:1.0");
}

#[test]
fn a_multi_arch_archive_loads_the_host_platform_not_the_first_entry() {
    let sb = sandbox();
    let host = ces_image::manifest::Platform::host().architecture;
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let foreign = marker_image("load multi").arch(other).build();
    let native = marker_image("load multi").arch(&host).build();
    let both = index(&[foreign.clone(), native.clone()], Style::Oci);
    let archive = path(&sb, "multi.tar");
    both.write_oci_archive(Path::new(&archive), "ghcr.io/ns/multi:1");

    let out = sb.ces(&["load", &archive]);
    assert_eq!(out.ok().trim(), format!("ghcr.io/ns/multi@{}", native.digest));
    let images = sb.images();
    assert_eq!(images[0]["digest"], native.digest.as_str());
    assert_eq!(images[0]["index_digest"], both.digest.as_str());
    assert!(sb.rootfs(&native.digest).join("marker").is_file());
}

#[test]
fn an_archive_without_the_host_platform_lists_what_it_has() {
    let sb = sandbox();
    let image = marker_image("load s390x").arch("s390x").build();
    let archive = path(&sb, "s390x.tar");
    index(&[image], Style::Oci).write_oci_archive(Path::new(&archive), "ghcr.io/ns/s390x:1");
    let out = sb.ces(&["load", &archive]);
    let err = assert_error_with_hint(&out);
    assert!(err.contains("no image for linux/") && err.contains("(it has linux/s390x)"), "{err}");
    assert!(sb.images().is_empty());
}

#[test]
fn docker_save_tarball_keeps_its_config_and_unpacks_its_layers() {
    let sb = sandbox();
    let image = busybox_image().build();
    let archive = path(&sb, "save.tar");
    image.write_docker_save(Path::new(&archive), "busybox:1.36");

    let out = sb.ces(&["load", &archive]);
    let pinned = out.ok().trim().to_owned();
    let (name, digest) = pinned.split_once('@').unwrap();
    assert_eq!(name, "docker.io/library/busybox");
    assert!(out.stderr.contains("Loaded docker.io/library/busybox:1.36"), "{}", out.stderr);

    let manifest = stored_manifest(&sb, digest);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    // docker save layers are the uncompressed tars: their digests are the diff_ids.
    assert_eq!(manifest["layers"][0]["digest"], image.diff_ids[0].as_str());
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar");

    assert_eq!(sb.images()[0]["reference"], "docker.io/library/busybox:1.36");
    let rootfs = sb.rootfs(digest);
    assert_eq!(std::fs::read(rootfs.join("bin/busybox")).unwrap(), std::fs::read("/bin/busybox").unwrap());
    let inspect: serde_json::Value = serde_json::from_str(sb.ces(&["inspect", "--json", "busybox:1.36"]).ok()).unwrap();
    assert_eq!(inspect["cmd"], serde_json::json!(["sh"]));

    let info = skopeo_inspect(&sb, "docker.io/library/busybox:1.36");
    assert_eq!(info["Digest"], digest);
    assert_eq!(info["Layers"][0], image.diff_ids[0].as_str());
}

#[test]
fn compressed_archives_and_standard_input_load() {
    let image = marker_image("load compressed").build();
    for compression in [Compression::Gzip, Compression::Zstd] {
        let sb = sandbox();
        let tar = path(&sb, "plain.tar");
        image.write_oci_archive(Path::new(&tar), "ghcr.io/ns/compressed:1");
        let compressed = compress(&std::fs::read(&tar).unwrap(), compression);
        let archive = path(&sb, "archive.tar.z");
        std::fs::write(&archive, &compressed).unwrap();

        let out = sb.ces(&["load", &archive]);
        assert_eq!(out.ok().trim(), format!("ghcr.io/ns/compressed@{}", image.digest), "{compression:?}");

        // The same, piped in: `-`, and no FILE at all.
        let sb = sandbox();
        let out = sb.ces_stdin(&["load", "-t", "ghcr.io/ns/piped:1", "-"], &compressed);
        assert_eq!(out.ok().trim(), format!("ghcr.io/ns/piped@{}", image.digest), "{compression:?}");
        assert!(out.stderr.contains("Loading standard input"), "{}", out.stderr);
        let out = sb.ces_stdin(&["load"], &compressed);
        assert_eq!(out.ok().trim(), format!("ghcr.io/ns/compressed@{}", image.digest), "{compression:?}");
        let names: Vec<_> = sb.images().iter().map(|i| i["reference"].as_str().unwrap().to_owned()).collect();
        assert_eq!(names, ["ghcr.io/ns/piped:1", "ghcr.io/ns/compressed:1"]);
    }
}

#[test]
fn no_unpack_leaves_the_rootfs_for_later() {
    let sb = sandbox();
    let image = marker_image("load no unpack").build();
    let archive = path(&sb, "app.tar");
    image.write_oci_archive(Path::new(&archive), "ghcr.io/ns/later:1");
    sb.ces(&["load", "--no-unpack", &archive]).ok();
    assert_eq!(sb.images().len(), 1);
    assert!(!sb.rootfs(&image.digest).exists());
}

#[test]
fn a_corrupt_blob_names_its_digest_and_names_nothing() {
    let sb = sandbox();
    let image = marker_image("load corrupt").build();
    let layout = sb.dir.path().join("layout");
    image.write_oci_layout(&layout, "ghcr.io/ns/corrupt:1");
    let layer = &image.layer_digests[0];
    damage_blob(&layout, layer);
    let archive = path(&sb, "corrupt.tar");
    tar_layout(&layout, &archive);

    let out = sb.ces(&["load", &archive]);
    let err = assert_error_with_hint(&out);
    assert!(err.contains(&format!("content of {layer} does not match its digest")), "{err}");
    assert!(out.stdout.is_empty());
    assert!(sb.images().is_empty());
    assert!(!sb.has_blob(layer));
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
    assert!(std::fs::read_dir(sb.store.join("rootfs")).unwrap().next().is_none());

    // The undamaged layout, packed the same way, loads.
    image.write_oci_layout(&layout, "ghcr.io/ns/corrupt:1");
    let good = path(&sb, "good.tar");
    tar_layout(&layout, &good);
    assert_eq!(sb.ces(&["load", &good]).ok().trim(), format!("ghcr.io/ns/corrupt@{}", image.digest));
}

#[test]
fn a_truncated_archive_is_a_clean_error() {
    let sb = sandbox();
    let image = busybox_image().build();
    let tar = path(&sb, "full.tar");
    image.write_oci_archive(Path::new(&tar), "ghcr.io/ns/truncated:1");
    let bytes = std::fs::read(&tar).unwrap();
    for (name, cut) in [("half.tar", &bytes[..bytes.len() / 2]), ("tail.tar", &bytes[..bytes.len() - 1024])] {
        let archive = path(&sb, name);
        std::fs::write(&archive, cut).unwrap();
        let out = sb.ces(&["load", &archive]);
        let err = assert_error_with_hint(&out);
        assert!(err.contains("truncated"), "{err}");
    }
    let gz = compress(&bytes, Compression::Gzip);
    let out = sb.ces_stdin(&["load"], &gz[..gz.len() * 2 / 3]);
    assert!(assert_error_with_hint(&out).contains("truncated"), "{}", out.stderr);
    assert!(sb.images().is_empty());
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
}

#[test]
fn what_is_not_an_image_archive_is_refused_with_the_formats_ces_reads() {
    let sb = sandbox();
    let text = path(&sb, "notes.txt");
    std::fs::write(&text, "these are not the layers you are looking for\n".repeat(40)).unwrap();
    let err = assert_error_with_hint(&sb.ces(&["load", &text])).to_owned();
    assert!(err.contains("not a tar archive") && err.contains("oci-archive"), "{err}");

    let err = assert_error_with_hint(&sb.ces_stdin(&["load"], b"")).to_owned();
    assert!(err.contains("the archive is empty"), "{err}");

    let out = sb.ces(&["load", &path(&sb, "missing.tar")]);
    assert!(out.fails().contains("cannot open"), "{}", out.stderr);
    assert!(sb.images().is_empty());
}

#[test]
fn archives_written_by_skopeo_load() {
    let source = sandbox();
    let image = busybox_image().build();
    let archive = path(&source, "busybox.tar");
    image.write_oci_archive(Path::new(&archive), "ghcr.io/ces-tre/busybox:1.0");
    source.ces(&["load", "--no-unpack", &archive]).ok();
    let layout = format!("oci:{}:ghcr.io/ces-tre/busybox:1.0", source.store.join("oci").display());

    // skopeo's oci-archive (ref.name as given) and docker-archive (a legacy docker save tarball).
    for (transport, name) in
        [("oci-archive", "ghcr.io/ces-tre/skopeo:oci"), ("docker-archive", "ghcr.io/ces-tre/skopeo:docker")]
    {
        let sb = sandbox();
        let file = path(&sb, "skopeo.tar");
        let out = Command::new("skopeo")
            .args(["copy", "-q", &layout, &format!("{transport}:{file}:{name}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy to {transport}: {}", String::from_utf8_lossy(&out.stderr));
        let out = sb.ces(&["load", &file]);
        let pinned = out.ok().trim().to_owned();
        let (loaded, digest) = pinned.split_once('@').unwrap();
        assert_eq!(loaded, name.rsplit_once(':').unwrap().0, "{transport}");
        let manifest = stored_manifest(&sb, digest);
        assert_eq!(manifest["config"]["digest"], image.config_digest.as_str(), "{transport}");
        assert!(sb.rootfs(digest).join("bin/busybox").is_file(), "{transport}");
        assert_eq!(skopeo_inspect(&sb, name)["Digest"], digest, "{transport}");
    }
}

// ----- the audit log -----

#[test]
fn loads_are_recorded_whatever_their_outcome() {
    let sb = sandbox();
    let image = marker_image("load audited")
        .label("org.opencontainers.image.source", "https://github.com/ces-tre/fixtures")
        .label("org.opencontainers.image.revision", "0a1b2c3d")
        .build();
    let archive = path(&sb, "audited.tar");
    image.write_oci_archive(Path::new(&archive), "ghcr.io/ns/audited:1");
    let bytes = std::fs::read(&archive).unwrap();
    sb.ces(&["load", &archive]).ok();
    // From standard input, under another name.
    sb.ces_stdin(&["load", "--no-unpack", "-t", "ghcr.io/ns/piped:2"], &bytes).ok();

    // A corrupt blob: the load fails and names nothing.
    let layout = sb.dir.path().join("layout");
    image.write_oci_layout(&layout, "ghcr.io/ns/corrupt:1");
    let layer = &image.layer_digests[0];
    damage_blob(&layout, layer);
    let corrupt = path(&sb, "corrupt.tar");
    tar_layout(&layout, &corrupt);
    let damaged = std::fs::read(&corrupt).unwrap();
    let err = sb.ces(&["load", &corrupt]).fails().to_owned();
    assert!(err.contains("does not match its digest"), "{err}");
    let missing = path(&sb, "missing.tar");
    sb.ces(&["load", &missing]).fails();
    assert_eq!(sb.images().len(), 2);

    let records = sb.audit_records();
    assert_eq!(records.len(), 4, "{records:#?}");
    for (seq, record) in records.iter().enumerate() {
        assert_eq!(record["seq"], seq);
        assert_eq!(record["event"], "load");
        assert_eq!(record["user"]["uid"], rustix::process::getuid().as_raw());
    }
    let sha256 = ces_audit::sha256_hex(&bytes);
    let ok = &records[0];
    assert_eq!(ok["result"], "ok");
    assert!(ok.get("error").is_none());
    assert_eq!(ok["archive"], serde_json::json!({"path": archive, "size": bytes.len(), "sha256": sha256}));
    assert_eq!(ok["images"].as_array().unwrap().len(), 1);
    assert_eq!(ok["images"][0]["reference"], "ghcr.io/ns/audited:1");
    assert_eq!(ok["images"][0]["digest"], image.digest.as_str());
    assert_eq!(
        ok["images"][0]["provenance"],
        serde_json::json!({"source": "https://github.com/ces-tre/fixtures", "revision": "0a1b2c3d"})
    );
    let piped = &records[1];
    assert_eq!(piped["result"], "ok");
    assert_eq!(piped["archive"], serde_json::json!({"path": "-", "size": bytes.len(), "sha256": sha256}));
    assert_eq!(piped["images"][0]["reference"], "ghcr.io/ns/piped:2");
    assert_eq!(piped["images"][0]["digest"], image.digest.as_str());

    let failed = &records[2];
    assert_eq!(failed["result"], "error");
    assert!(failed["error"].as_str().unwrap().contains(&format!("content of {layer} does not match")), "{failed}");
    assert_eq!(failed["images"], serde_json::json!([]), "nothing named");
    assert_eq!(failed["archive"]["path"], corrupt.as_str());
    assert_eq!(failed["archive"]["size"], damaged.len());
    assert_eq!(failed["archive"]["sha256"], ces_audit::sha256_hex(&damaged).as_str());
    let unopened = &records[3];
    assert_eq!(unopened["result"], "error");
    assert!(unopened["error"].as_str().unwrap().contains("cannot open"), "{unopened}");
    assert_eq!(unopened["archive"], serde_json::json!({"path": missing, "size": null, "sha256": null}));

    assert!(sb.ces(&["audit", "verify"]).ok().contains("4 records, the chain is whole"));
    // --image finds loads by reference, repository and digest; the table says `load`.
    let shown = |image: &str| sb.ces(&["audit", "show", "--json", "--image", image]).ok().lines().count();
    assert_eq!(shown("ghcr.io/ns/audited:1"), 1);
    assert_eq!(shown("ghcr.io/ns/piped"), 1);
    assert_eq!(shown(&image.digest["sha256:".len()..][..12]), 2);
    let table = sb.ces(&["audit", "show"]);
    let lines: Vec<&str> = table.ok().lines().collect();
    assert_eq!(lines.len(), 5, "{}", table.stdout);
    assert!(lines[1].contains(" load ") && lines[1].contains("ghcr.io/ns/audited:1"), "{}", lines[1]);
    assert!(lines[1].contains(&image.digest[..19]) && lines[1].trim_end().ends_with("ok"), "{}", lines[1]);
    assert!(lines[3].contains(" load ") && lines[3].contains(&format!("archive {corrupt}")), "{}", lines[3]);
    assert!(lines[3].contains("error: "), "{}", lines[3]);
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_the_load() {
    let sb = sandbox();
    let image = marker_image("load unrecorded").build();
    let archive = path(&sb, "app.tar");
    image.write_oci_archive(Path::new(&archive), "ghcr.io/ns/unrecorded:1");
    let not_a_dir = sb.dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    sb.configure(&format!("[audit]\npath = {:?}", not_a_dir.join("audit.jsonl").display().to_string()));
    let out = sb.ces(&["load", &archive]);
    assert!(out.fails().contains("cannot create the directory of the audit log"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(!sb.store.exists(), "nothing was loaded");
}

#[test]
fn an_image_whose_layer_escapes_is_never_named_and_the_failure_is_recorded() {
    let sb = sandbox();
    // The sentinel the layer aims at, in the test's own directory.
    let sentinel = sb.dir.path().join("escape");
    let evil = ces_testkit::ImageSpec::new(vec![ces_testkit::Layer::new(vec![ces_testkit::Entry::file(
        &format!("../../../../../../../../../../../../../..{}", sentinel.display()),
        "pwned",
    )])])
    .build();
    let archive = path(&sb, "evil.tar");
    evil.write_oci_archive(Path::new(&archive), "ghcr.io/ns/evil:1");

    let err = sb.ces(&["load", &archive]).fails().to_owned();
    assert!(err.contains("outside"), "{err}");
    assert!(!sentinel.exists(), "the layer wrote outside the root filesystem");
    assert_eq!(sb.images(), Vec::<serde_json::Value>::new(), "nothing is named");
    let records = sb.audit_records();
    let last = records.last().unwrap();
    assert_eq!((last["event"].as_str(), last["result"].as_str()), (Some("load"), Some("error")), "{last}");
    assert_eq!(last["images"], serde_json::json!([]), "{last}");
    sb.ces(&["audit", "verify"]).ok();
}

/// A load stores each blob only where there is room for it: one larger than
/// the store's file system has free is refused before it is written, with
/// its size, what is free and what to do; nothing is named, and nothing is
/// left in `tmp/`. (Rootless, the same check reads the disk quota: the
/// cgroup v2 VM's `over_quota` test.) Before, the blob was written until the
/// disk was full, then failed.
#[test]
fn a_blob_larger_than_the_free_space_is_refused_before_it_is_written() {
    common::require_root("mounts a small tmpfs for the store");
    let sb = sandbox();
    std::fs::create_dir_all(&sb.store).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&sb.store).status();
    assert!(mounted.unwrap().success());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&sb.store);
    let layer =
        ces_testkit::Layer::new(vec![ces_testkit::Entry::file("noise", ces_testkit::misbehave::noise(2 << 20, 3))]);
    let image = ces_testkit::ImageSpec::new(vec![layer.compressed(Compression::Gzip)]).build();
    let archive = path(&sb, "noise.tar");
    image.write_oci_archive(Path::new(&archive), "ghcr.io/ns/noise:1");
    let err = assert_error_with_hint(&sb.ces(&["load", &archive])).to_owned();
    let said = format!("not enough free space in {} for blobs/sha256/", sb.store.display());
    assert!(err.contains(&said) && err.contains(" bytes to load, "), "{err}");
    assert!(err.contains("hint: free space (ces rmi IMAGE"), "{err}");
    let index = std::fs::read_to_string(sb.store.join("oci/index.json")).unwrap();
    assert!(!index.contains("noise"), "nothing named: {index}");
    assert_eq!(std::fs::read_dir(sb.store.join("tmp")).unwrap().count(), 0, "nothing left in tmp/");
    // One that fits loads.
    let small = path(&sb, "small.tar");
    marker_image("fits").build().write_oci_archive(Path::new(&small), "ghcr.io/ns/small:1");
    sb.ces(&["load", &small]).ok();
}
