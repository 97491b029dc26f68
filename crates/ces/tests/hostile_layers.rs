//! Hostile layers and image metadata through the real binary (`ces load`,
//! `ces inspect`): tar extension headers over their limits, entry names and
//! labels with terminal escapes, extended attributes, a full disk. Each
//! archive is written here, byte by byte where the test kit's builders would
//! clean what the attack needs.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use ces_testkit::ImageSpec;
use ces_testkit::image::sha256_digest;
use ces_testkit::layer::{Compression, Entry, Layer, compress};
use common::{Sandbox, require_root};
use serde_json::json;

const REFERENCE: &str = "ghcr.io/ces-tre/hostile:1";
/// An OSC 8 hyperlink: a terminal that gets it raw shows a live link.
const OSC8: &str = "\x1b]8;;http://x\x07";

/// One raw tar entry: a GNU header of `kind` for `name` (cut to 100 bytes),
/// then `data`, padded to the block.
fn raw_entry(out: &mut Vec<u8>, kind: tar::EntryType, name: &[u8], data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    let len = name.len().min(100);
    header.as_gnu_mut().unwrap().name[..len].copy_from_slice(&name[..len]);
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// A regular file whose name comes in a GNU long name entry.
fn long_named_file(out: &mut Vec<u8>, name: &[u8], data: &[u8]) {
    let mut long = name.to_vec();
    long.push(0);
    raw_entry(out, tar::EntryType::GNULongName, b"././@LongLink", &long);
    raw_entry(out, tar::EntryType::Regular, name, data);
}

/// One PAX record, `<len> <key>=<value>\n`, its length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, `=`, newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// The end of a tar.
fn end(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0; 1024]);
    tar
}

/// Writes an OCI archive of one image with these (uncompressed or gzip)
/// layer tars, named [`REFERENCE`].
fn write_archive(path: &Path, layers: &[(Vec<u8>, Compression)]) {
    let diff_ids: Vec<String> = layers.iter().map(|(tar, _)| sha256_digest(tar)).collect();
    write_archive_claiming(path, layers, &diff_ids, REFERENCE);
}

/// [`write_archive`], its config claiming `diff_ids` (whatever the layers
/// hold), named `reference`.
fn write_archive_claiming(path: &Path, layers: &[(Vec<u8>, Compression)], diff_ids: &[String], reference: &str) {
    let mut blobs = Vec::new();
    let mut descriptors = Vec::new();
    for (tar, compression) in layers {
        let blob = compress(tar, *compression);
        descriptors.push(
            json!({"mediaType": compression.oci_media_type(), "digest": sha256_digest(&blob), "size": blob.len()}),
        );
        blobs.push(blob);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256_digest(&manifest), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": reference},
        }],
    }))
    .unwrap();
    blobs.push(config);
    blobs.push(manifest);
    let mut archive = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: String, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &index);
    for blob in &blobs {
        add(format!("blobs/sha256/{}", &sha256_digest(blob)["sha256:".len()..]), blob);
    }
    archive.finish().unwrap();
}

/// `ces load` of an archive of these layers, in a fresh sandbox.
fn load(layers: &[(Vec<u8>, Compression)]) -> (Sandbox, common::Run) {
    let sb = Sandbox::new(&[]);
    let archive = sb.dir.path().join("hostile.tar");
    write_archive(&archive, layers);
    let run = sb.ces(&["load", &archive.display().to_string()]);
    (sb, run)
}

/// The audit log's bytes.
fn audit_bytes(sb: &Sandbox) -> Vec<u8> {
    std::fs::read(sb.store.join("audit.jsonl")).unwrap()
}

/// The error text of the last audit record.
fn last_audit_error(sb: &Sandbox) -> String {
    let records = sb.audit_records();
    let last = records.last().unwrap();
    assert_eq!(last["result"], "error", "{last}");
    last["error"].as_str().unwrap().to_owned()
}

fn has_control(text: &[u8]) -> bool {
    text.iter().any(|b| *b == 0x1b || *b == 0x07 || *b == 0x9b)
}

#[test]
fn a_layer_with_a_huge_gnu_long_name_is_refused_naming_the_limit() {
    // 4 MiB of name, most of it escape sequences.
    let name = format!("{OSC8}{}", "\x1b[2J".repeat(1 << 20));
    let mut tar = Vec::new();
    long_named_file(&mut tar, name.as_bytes(), b"x");
    let (sb, run) = load(&[(end(tar), Compression::Gzip)]);
    let stderr = run.fails();
    assert!(stderr.contains("GNU long name of 4194319 bytes is larger than the 4096-byte limit"), "{stderr}");
    assert!(stderr.len() < 2000 && !has_control(stderr.as_bytes()), "{} bytes", stderr.len());
    assert!(last_audit_error(&sb).contains("4096-byte limit"));
    assert!(audit_bytes(&sb).len() < 4096, "{} bytes of audit log", audit_bytes(&sb).len());
    assert!(sb.images().is_empty());
}

#[test]
fn a_layer_with_a_huge_pax_header_is_refused_naming_the_limit() {
    let mut tar = Vec::new();
    let comment = pax_record("comment", &vec![b'a'; 8 << 20]);
    raw_entry(&mut tar, tar::EntryType::XHeader, b"PaxHeaders/f", &comment);
    raw_entry(&mut tar, tar::EntryType::Regular, b"f", b"x");
    let (sb, run) = load(&[(end(tar), Compression::Gzip)]);
    let stderr = run.fails();
    assert!(stderr.contains("PAX extended header of 8388625 bytes is larger than the 65536-byte limit"), "{stderr}");
    assert!(sb.images().is_empty());
}

#[test]
fn an_escaping_entry_name_with_terminal_escapes_is_quoted_short_everywhere() {
    // Under the long name limit, but still far longer than a line.
    let name = format!("../{OSC8}{}", "b".repeat(3000));
    let mut tar = Vec::new();
    long_named_file(&mut tar, name.as_bytes(), b"x");
    let (sb, run) = load(&[(end(tar), Compression::Gzip)]);
    let stderr = run.fails();
    assert!(stderr.contains("layer entry ../\\x1b]8;;http://x\\x07bbb"), "{stderr}");
    assert!(stderr.contains("would escape the root filesystem"), "{stderr}");
    assert!(stderr.contains("bytes in all)"), "{stderr}");
    assert!(stderr.len() < 1500 && !has_control(stderr.as_bytes()), "{stderr}");
    let recorded = last_audit_error(&sb);
    assert!(recorded.contains("../\\x1b]8;;http://x\\x07bbb") && recorded.len() < 1500, "{recorded}");
    assert!(!has_control(&audit_bytes(&sb)) && !String::from_utf8_lossy(&audit_bytes(&sb)).contains("\\u001b"));
}

#[test]
fn inspect_shows_a_label_with_an_osc8_link_escaped() {
    let sb = Sandbox::new(&[]);
    let archive = sb.dir.path().join("label.tar");
    let image = ImageSpec::new(vec![Layer::new(vec![Entry::file("f", "x")])])
        .label("org.example.note", &format!("{OSC8}click me\x1b]8;;\x07"))
        .label(&format!("key{OSC8}"), "v");
    image.build().write_oci_archive(&archive, REFERENCE);
    sb.ces(&["load", &archive.display().to_string()]).ok();
    let shown = sb.ces(&["inspect", REFERENCE]);
    let stdout = shown.ok();
    assert!(stdout.contains("org.example.note=\\x1b]8;;http://x\\x07click me\\x1b]8;;\\x07"), "{stdout}");
    assert!(stdout.contains("key\\x1b]8;;http://x\\x07=v"), "{stdout}");
    assert!(!has_control(stdout.as_bytes()), "{stdout:?}");
}

/// Regression: `ces inspect` printed Entrypoint and Cmd as JSON, which
/// escapes only C0 controls: a C1 CSI (U+009B) drove the terminal and a
/// right-to-left override (U+202E) reordered the command a reviewer reads.
#[test]
fn inspect_shows_a_cmd_with_c1_controls_and_bidi_overrides_escaped() {
    let sb = Sandbox::new(&[]);
    let archive = sb.dir.path().join("cmd.tar");
    let image = ImageSpec::new(vec![Layer::new(vec![Entry::file("f", "x")])])
        .entrypoint(&["/bin/sh\u{9b}2J", "-c"])
        .cmd(&["echo \u{202e}gpj.exe", "x\x7fy", "a\\u{9b}\"b"]);
    image.build().write_oci_archive(&archive, REFERENCE);
    sb.ces(&["load", &archive.display().to_string()]).ok();
    let shown = sb.ces(&["inspect", REFERENCE]);
    let stdout = shown.ok();
    assert!(stdout.contains("Entrypoint:  [\"/bin/sh\\u{9b}2J\",\"-c\"]"), "{stdout}");
    // The element's own backslash stays JSON's (doubled): no confusion with an escape.
    assert!(stdout.contains("Cmd:         [\"echo \\u{202e}gpj.exe\",\"x\\x7fy\",\"a\\\\u{9b}\\\"b\"]"), "{stdout}");
    assert!(!stdout.contains(['\u{9b}', '\u{202e}', '\x7f']), "{stdout:?}");
}

/// A file capability (`cap_net_raw+ep`), as `setcap` writes it (VFS_CAP_REVISION_2).
fn file_capability() -> Vec<u8> {
    let mut value = 0x0200_0001u32.to_le_bytes().to_vec(); // revision 2, effective
    value.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted: CAP_NET_RAW
    value.extend_from_slice(&[0; 12]); // inheritable, and the high words
    value
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// A layer whose file carries `user.note`, a file capability and a
/// `trusted.*` attribute, whose directory carries `user.dir`, and a second
/// file with only a capability.
fn xattr_layer() -> Vec<u8> {
    let mut tar = Vec::new();
    let mut pax = pax_record("SCHILY.xattr.user.note", b"hello");
    pax.extend(pax_record("SCHILY.xattr.security.capability", &file_capability()));
    pax.extend(pax_record("SCHILY.xattr.trusted.secret", b"x"));
    raw_entry(&mut tar, tar::EntryType::XHeader, b"PaxHeaders/ping", &pax);
    raw_entry(&mut tar, tar::EntryType::Regular, b"ping", b"binary");
    // overlayfs' own attributes are not the image's to set.
    let mut pax = pax_record("SCHILY.xattr.user.dir", b"yes");
    pax.extend(pax_record("SCHILY.xattr.user.overlay.opaque", b"y"));
    raw_entry(&mut tar, tar::EntryType::XHeader, b"PaxHeaders/d", &pax);
    raw_entry(&mut tar, tar::EntryType::Directory, b"d/", b"");
    let pax = pax_record("SCHILY.xattr.security.capability", &file_capability());
    raw_entry(&mut tar, tar::EntryType::XHeader, b"PaxHeaders/d/sh", &pax);
    raw_entry(&mut tar, tar::EntryType::Regular, b"d/sh", b"shell");
    end(tar)
}

/// Loads [`xattr_layer`] with `command` (`ces load ARCHIVE` as someone)
/// and checks what reached the root filesystem and what was said.
fn check_xattrs(sb: &Sandbox, command: impl FnOnce(&str) -> std::process::Command) {
    let archive = sb.dir.path().join("xattrs.tar");
    write_archive(&archive, &[(xattr_layer(), Compression::Gzip)]);
    let run = sb.run(command(&archive.display().to_string()));
    run.ok();
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("extended attributes")).collect();
    assert_eq!(
        warnings,
        [
            "warning: layer 1/1: extended attributes not set: security.capability (2 entries), trusted.secret (1 entry), user.overlay.opaque (1 entry) (only user.* is kept, not user.overlay.*, where the file system takes it)"
        ],
        "{}",
        run.stderr
    );
    // The pinned reference the load printed (its image is the loader's:
    // another user's `ces images` does not list it).
    let digest = run.stdout.trim().rsplit_once('@').unwrap().1.to_owned();
    let rootfs = sb.rootfs(&digest);
    assert_eq!(xattr(&rootfs.join("ping"), "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(xattr(&rootfs.join("d"), "user.dir").as_deref(), Some(&b"yes"[..]));
    let dropped = [
        ("ping", "security.capability"),
        ("d/sh", "security.capability"),
        ("ping", "trusted.secret"),
        ("d", "user.overlay.opaque"),
    ];
    for (path, name) in dropped {
        assert_eq!(xattr(&rootfs.join(path), name), None, "{path} {name}");
    }
}

#[test]
fn user_xattrs_are_kept_and_file_capabilities_dropped_with_one_line_per_layer() {
    let sb = Sandbox::new(&[]);
    check_xattrs(&sb, |archive| sb.command(env!("CARGO_BIN_EXE_ces"), &["load", archive]));
}

#[test]
fn rootless_user_xattrs_are_kept_and_file_capabilities_dropped() {
    require_root("creates the unprivileged test user");
    let user = common::test_user();
    let sb = Sandbox::new(&[]);
    std::fs::create_dir_all(&sb.store).unwrap();
    std::fs::set_permissions(sb.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    user.chown(&sb.store);
    check_xattrs(&sb, |archive| user.setpriv(&sb, &[common::user_bin(env!("CARGO_BIN_EXE_ces")), "load", archive]));
}

#[test]
fn under_sudo_user_xattrs_are_kept_and_file_capabilities_dropped() {
    require_root("runs as root under sudo");
    let user = common::test_user();
    let sb = Sandbox::new(&[]);
    std::fs::set_permissions(sb.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    check_xattrs(&sb, |archive| user.sudo(&sb, sb.command(env!("CARGO_BIN_EXE_ces"), &["load", archive])));
}

/// A tmpfs of `size` mounted on `path` until dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", path.display());
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fills_while_unpacking_gets_a_hint() {
    require_root("mounts a small tmpfs as the store");
    let sb = Sandbox::new(&[]);
    let _store = Tmpfs::mount(&sb.store, "1m");
    // 8 MiB of zeros: a few KiB compressed, so only the unpacking fills the disk.
    let tar = Layer::new(vec![Entry::file("big", vec![0u8; 8 << 20])]).tar();
    let archive = sb.dir.path().join("big.tar");
    write_archive(&archive, &[(tar, Compression::Gzip)]);
    let run = sb.ces(&["load", &archive.display().to_string()]);
    let stderr = run.fails();
    // The layer is unpacked alone first (into tmp/layer-...).
    assert!(stderr.contains("no space left on the device holding") && stderr.contains("/tmp/layer-"), "{stderr}");
    assert!(stderr.contains("hint: free some space"), "{stderr}");
    assert!(sb.images().is_empty());
}

#[test]
fn an_image_that_claims_another_images_layer_gets_nothing_of_it() {
    // A layer the store has (another project's image), and an image whose
    // config names that layer's diff_id over a blob of its own: the store's
    // layer is not lent on the config's word.
    let sb = Sandbox::new(&[]);
    let secret = Layer::new(vec![Entry::file("secret.txt", "another project's data")]).tar();
    let claimed = [sha256_digest(&secret)];
    let victim = sb.dir.path().join("victim.tar");
    write_archive_claiming(&victim, &[(secret, Compression::Gzip)], &claimed, "ghcr.io/ces-tre/victim:1");
    sb.ces(&["load", &victim.display().to_string()]).ok();

    let own = Layer::new(vec![Entry::file("x", "mine")]).tar();
    let thief = sb.dir.path().join("thief.tar");
    write_archive_claiming(&thief, &[(own, Compression::Gzip)], &claimed, "ghcr.io/ces-tre/thief:1");
    let run = sb.ces(&["load", &thief.display().to_string()]);
    let error = run.fails();
    assert!(error.contains("but the image config says"), "{error}");
    let images = sb.images();
    assert_eq!(images.len(), 1, "only the victim is named: {images:?}");
    let named = |dir: &str| std::fs::read_dir(sb.store.join(dir)).unwrap().count();
    assert_eq!(named("rootfs") + named("layered"), 1, "only the victim is unpacked");
}
