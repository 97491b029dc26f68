//! Sealing and verifying real directories: nested directories, empty and
//! large files, symbolic links (recorded, never followed), FIFOs, CSV and
//! TSV shapes, reserved names the container used, and changes afterwards.
//! Everything is under a temp dir; links point at read-only host files and
//! nothing is ever written through them.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use ces_outputs::{
    Budget, Entry, Image, Interrupt, Kind, Manifest, NoInterrupt, Owner, RunIdentity, SealOptions, User, seal, verify,
};
use sha2::Digest as _;

fn run() -> RunIdentity {
    RunIdentity {
        id: "20260102-030405-abcdef".into(),
        name: Some("job".into()),
        user: User { name: "alice".into(), uid: 1000 },
        project: Some("proj".into()),
        image: Image { reference: "ghcr.io/a/b:1".into(), digest: format!("sha256:{}", "ab".repeat(32)) },
        runtime: "native".into(),
        argv: vec!["sh".into(), "-c".into(), "true".into()],
        started: "2026-01-02T03:04:05Z".parse().unwrap(),
        ended: "2026-01-02T03:04:09Z".parse().unwrap(),
        exit: Some(ces_outputs::Exit { code: 0, signal: None, oom: false }),
        error: None,
    }
}

/// The default budget, never interrupted, files owned by the caller.
fn options() -> SealOptions<'static> {
    SealOptions { owner: None, budget: Budget::default(), interrupt: &NoInterrupt }
}

fn entry<'a>(manifest: &'a Manifest, path: &str) -> &'a Entry {
    manifest.entries.iter().find(|e| e.path == path).unwrap_or_else(|| panic!("no entry {path}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
        .unwrap();
}

#[test]
fn every_kind_of_entry_is_recorded_and_nothing_is_followed_or_opened() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    fs::create_dir_all(out.join("a/b/c")).unwrap();
    fs::write(out.join("a/b/c/deep.txt"), "deep\n").unwrap();
    fs::write(out.join("empty"), "").unwrap();
    fs::create_dir(out.join("empty-dir")).unwrap();
    fs::write(out.join("script.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(out.join("script.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", out.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("/etc", out.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("missing", out.join("dangling")).unwrap();
    // A FIFO nobody writes to: opening it would hang the walk.
    mkfifo(&out.join("pipe"));
    // A 64 MiB sparse file, hashed as it streams.
    let big = fs::File::create(out.join("big.bin")).unwrap();
    big.set_len(64 << 20).unwrap();
    drop(big);

    let sealed = seal(out, run(), &options()).unwrap();
    let m = &sealed.manifest;
    assert_eq!(m.format, "ces-outputs-manifest/1");
    assert_eq!(m.run, run());
    let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "a",
            "a/b",
            "a/b/c",
            "a/b/c/deep.txt",
            "big.bin",
            "dangling",
            "empty",
            "empty-dir",
            "etc-link",
            "passwd-link",
            "pipe",
            "script.sh"
        ],
        "sorted, ces's own files left out"
    );
    let file = |path: &str| match &entry(m, path).kind {
        Kind::File { size, sha256, table, unreadable, not_hashed, removed, .. } => {
            assert!(unreadable.is_none() && table.is_none() && not_hashed.is_none() && removed.is_empty());
            (*size, sha256.clone().unwrap())
        }
        other => panic!("{path} is {other:?}"),
    };
    assert_eq!(file("a/b/c/deep.txt"), (5, sha256_hex(b"deep\n")));
    assert_eq!(file("empty"), (0, sha256_hex(b"")));
    assert_eq!(file("big.bin"), (64 << 20, sha256_hex(&vec![0u8; 64 << 20])));
    assert_eq!(entry(m, "script.sh").mode, "0750");
    assert_eq!(entry(m, "a/b").kind, Kind::Directory { not_listed: None });
    assert_eq!(entry(m, "empty-dir").kind.word(), "directory");
    let target = |path: &str| match &entry(m, path).kind {
        Kind::Symlink { target, .. } => target.clone(),
        other => panic!("{path} is {other:?}"),
    };
    assert_eq!(target("passwd-link"), "/etc/passwd");
    assert_eq!(target("etc-link"), "/etc");
    assert_eq!(target("dangling"), "missing");
    assert!(!paths.iter().any(|p| p.starts_with("etc-link/")), "a link to a directory is not walked");
    assert_eq!(entry(m, "pipe").kind, Kind::Fifo);

    // The manifest on disk is what seal returned, and its digest is of its bytes.
    let bytes = fs::read(out.join("ces-manifest.json")).unwrap();
    assert_eq!(sealed.manifest_digest, format!("sha256:{}", sha256_hex(&bytes)));
    let on_disk: Manifest = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(&on_disk, m);
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(json.get("version").is_none() && json.get("results").is_none(), "SACRO must not take it for ACRO's");
    assert_eq!(json["entries"][0]["type"], "directory");

    // ACRO metadata: regular files only, checksums beside.
    let results: serde_json::Value = serde_json::from_slice(&fs::read(out.join("results.json")).unwrap()).unwrap();
    let names: Vec<&str> =
        results["results"].as_object().unwrap().values().map(|o| o["files"][0]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a/b/c/deep.txt", "big.bin", "empty", "script.sh"]);
    assert_eq!(fs::read_to_string(out.join("checksums/a/b/c/deep.txt.txt")).unwrap(), sha256_hex(b"deep\n"));
    assert_eq!(fs::read_to_string(out.join("checksums/empty.txt")).unwrap(), sha256_hex(b""));
    assert!(!out.join("checksums/passwd-link.txt").exists());
    assert!(sealed.warnings.iter().any(|w| w.contains("not in results.json") && w.contains("passwd-link")));

    // Nothing was written through the links.
    assert!(fs::symlink_metadata(out.join("etc-link")).unwrap().file_type().is_symlink());
    assert!(!Path::new("/etc/checksums").exists() && !Path::new("/etc/results.json").exists());

    // Unchanged, it verifies.
    let check = verify(out).unwrap();
    assert!(check.matches(), "{:?} {:?} {:?}", check.added, check.removed, check.changed);
    assert_eq!(check.manifest_digest, sealed.manifest_digest);
}

#[test]
fn csv_and_tsv_files_get_rows_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    fs::write(out.join("plain.csv"), "id,age\n1,34\n2,51\n").unwrap();
    fs::write(out.join("quoted.CSV"), "name,comment\r\n\"Smith, J\",\"line one\r\nline \"\"two\"\"\"\r\nLee,ok\r\n")
        .unwrap();
    fs::write(out.join("table.tsv"), "a\tb\tc\n1\t2\t3\n4\t5\n").unwrap();
    fs::write(out.join("empty.csv"), "").unwrap();
    fs::write(out.join("notes.txt"), "a,b\n").unwrap();
    let m = seal(out, run(), &options()).unwrap().manifest;
    let table = |path: &str| match &entry(&m, path).kind {
        Kind::File { table, .. } => table.clone(),
        _ => None,
    };
    let t = table("plain.csv").unwrap();
    assert_eq!((t.delimiter.as_str(), t.rows_including_header, t.columns, t.ragged), (",", 3, 2, false));
    let t = table("quoted.CSV").unwrap();
    assert_eq!((t.rows_including_header, t.columns, t.ragged, t.unclosed_quote), (3, 2, false, false));
    let t = table("table.tsv").unwrap();
    assert_eq!((t.delimiter.as_str(), t.rows_including_header, t.columns, t.ragged), ("\t", 3, 3, true));
    let t = table("empty.csv").unwrap();
    assert_eq!((t.rows_including_header, t.columns), (0, 0));
    assert_eq!(table("notes.txt"), None);
    let json: serde_json::Value = serde_json::from_slice(&fs::read(out.join("ces-manifest.json")).unwrap()).unwrap();
    let plain = json["entries"].as_array().unwrap().iter().find(|e| e["path"] == "plain.csv").unwrap();
    assert_eq!(plain["table"]["rows_including_header"], 3);
}

#[test]
fn what_the_container_left_at_reserved_names_is_moved_aside_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    fs::write(out.join("results.json"), r#"{"version": "forged"}"#).unwrap();
    fs::create_dir(out.join("checksums")).unwrap();
    fs::write(out.join("checksums/x.txt"), "forged").unwrap();
    // A link at a reserved name: ces must not write through it.
    std::os::unix::fs::symlink("/etc/passwd", out.join("ces-manifest.json")).unwrap();
    fs::write(out.join("results.json.from-container"), "taken").unwrap();
    let passwd = fs::read("/etc/passwd").unwrap();

    let sealed = seal(out, run(), &options()).unwrap();
    let moved: Vec<(&str, &str)> =
        sealed.manifest.moved_aside.iter().map(|m| (m.name.as_str(), m.moved_to.as_str())).collect();
    let names: Vec<&str> = moved.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["ces-manifest.json", "results.json", "checksums"]);
    let moved_to = |name: &str| {
        let to = moved.iter().find(|(n, _)| *n == name).unwrap().1.to_owned();
        let random = to.strip_prefix(&format!("{name}.from-container-")).unwrap_or_else(|| panic!("{to}"));
        assert!(random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()), "{to}");
        to
    };
    let (manifest_to, results_to, checksums_to) =
        (moved_to("ces-manifest.json"), moved_to("results.json"), moved_to("checksums"));
    assert_eq!(sealed.warnings.iter().filter(|w| w.contains("moved it to")).count(), 3);
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd, "nothing written through the link");
    assert_eq!(fs::read_link(out.join(&manifest_to)).unwrap(), Path::new("/etc/passwd"), "the link moved as a link");
    assert_eq!(fs::read_to_string(out.join(&results_to)).unwrap(), r#"{"version": "forged"}"#);
    assert_eq!(fs::read_to_string(out.join(format!("{checksums_to}/x.txt"))).unwrap(), "forged");
    assert_eq!(fs::read_to_string(out.join("results.json.from-container")).unwrap(), "taken", "untouched");
    assert!(!fs::symlink_metadata(out.join("ces-manifest.json")).unwrap().file_type().is_symlink());
    let mut paths: Vec<&str> = sealed.manifest.entries.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    let mut expected = vec![
        manifest_to.clone(),
        checksums_to.clone(),
        format!("{checksums_to}/x.txt"),
        "results.json.from-container".to_owned(),
        results_to.clone(),
    ];
    expected.sort();
    assert_eq!(paths, expected);
    // The moved files are outputs like any other, for review.
    let results = fs::read_to_string(out.join("results.json")).unwrap();
    assert!(results.contains(&format!("\"{checksums_to}/x.txt\"")), "{results}");
    assert!(!results.contains("forged"));
    assert!(out.join(format!("checksums/{checksums_to}/x.txt.txt")).is_file());
}

#[test]
fn verify_names_what_was_added_changed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    for name in ["keep", "edit", "gone", "chmod", "retype"] {
        fs::write(out.join(name), name).unwrap();
    }
    fs::create_dir(out.join("d")).unwrap();
    fs::write(out.join("d/inner"), "x").unwrap();
    std::os::unix::fs::symlink("keep", out.join("link")).unwrap();
    seal(out, run(), &options()).unwrap();

    fs::write(out.join("edit"), "edited").unwrap();
    fs::remove_file(out.join("gone")).unwrap();
    fs::remove_file(out.join("d/inner")).unwrap();
    fs::set_permissions(out.join("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(out.join("retype")).unwrap();
    fs::create_dir(out.join("retype")).unwrap();
    fs::remove_file(out.join("link")).unwrap();
    std::os::unix::fs::symlink("edit", out.join("link")).unwrap();
    fs::write(out.join("new"), "new").unwrap();
    // ces's own files are not outputs: rewriting checksums/ is not a change.
    fs::write(out.join("checksums/keep.txt"), "0").unwrap();

    let check = verify(out).unwrap();
    assert!(!check.matches());
    assert_eq!(check.added, ["new"]);
    assert_eq!(check.removed, ["d/inner", "gone"]);
    let changed: Vec<(&str, Vec<&str>)> = check.changed.iter().map(|c| (c.path.as_str(), c.what.clone())).collect();
    assert_eq!(
        changed,
        [("chmod", vec!["mode"]), ("edit", vec!["content"]), ("link", vec!["target"]), ("retype", vec!["type"])]
    );
}

#[test]
fn a_missing_or_unreadable_manifest_and_a_linked_directory_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let err = verify(&out).unwrap_err();
    assert!(matches!(err, ces_outputs::OutputsError::NoManifest { .. }), "{err}");
    fs::write(out.join("ces-manifest.json"), "{not json").unwrap();
    assert!(matches!(verify(&out).unwrap_err(), ces_outputs::OutputsError::BadManifest { .. }));
    fs::remove_file(out.join("ces-manifest.json")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", out.join("ces-manifest.json")).unwrap();
    assert!(matches!(verify(&out).unwrap_err(), ces_outputs::OutputsError::ReadManifest { .. }));
    // The outputs directory itself must not be a link.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    assert!(matches!(seal(&link, run(), &options()).unwrap_err(), ces_outputs::OutputsError::Open { .. }));
}

#[test]
fn nesting_deeper_than_the_limit_is_recorded_not_walked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let mut path = out.to_path_buf();
    for _ in 0..ces_outputs::MAX_DEPTH + 3 {
        path.push("d");
    }
    fs::create_dir_all(&path).unwrap();
    fs::write(path.join("f"), "x").unwrap();
    let sealed = seal(out, run(), &options()).unwrap();
    let dirs = sealed.manifest.entries.iter().filter(|e| e.kind.word() == "directory").count();
    assert_eq!(dirs, ces_outputs::MAX_DEPTH);
    let last = sealed.manifest.entries.last().unwrap();
    assert!(matches!(&last.kind, Kind::Directory { not_listed: Some(why) } if why.contains("deeper than")), "{last:?}");
    assert!(sealed.warnings.iter().any(|w| w.contains("are not in the manifest")));
}

#[test]
fn for_another_user_ces_files_are_theirs() {
    assert!(rustix::process::geteuid().is_root(), "this test chowns files: run the suite as root (CI does)");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    fs::create_dir(out.join("sub")).unwrap();
    fs::write(out.join("sub/a.csv"), "a\n1\n").unwrap();
    seal(out, run(), &SealOptions { owner: Some(Owner { uid: 4242, gid: 4343 }), ..options() }).unwrap();
    for path in ["ces-manifest.json", "results.json", "checksums", "checksums/sub", "checksums/sub/a.csv.txt"] {
        let meta = fs::symlink_metadata(out.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "{path}");
    }
    let leftovers: Vec<_> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn names_that_are_not_utf8_are_kept_exactly_but_not_listed_for_acro() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let name = OsStr::from_bytes(b"caf\xe9.csv");
    fs::write(out.join(name), "a,b\n1,2\n").unwrap();
    fs::create_dir(out.join(OsStr::from_bytes(b"d\xff"))).unwrap();
    fs::write(out.join(OsStr::from_bytes(b"d\xff/inner")), "x").unwrap();
    fs::write(out.join("plain"), "p").unwrap();

    let sealed = seal(out, run(), &options()).unwrap();
    let hex: Vec<(&str, Option<&str>)> =
        sealed.manifest.entries.iter().map(|e| (e.path.as_str(), e.path_hex.as_deref())).collect();
    assert_eq!(
        hex,
        [
            ("caf\u{fffd}.csv", Some("636166e92e637376")),
            ("d\u{fffd}", Some("64ff")),
            ("d\u{fffd}/inner", Some("64ff2f696e6e6572")),
            ("plain", None)
        ]
    );
    assert_eq!(sealed.manifest.entries[0].path_bytes(), b"caf\xe9.csv");
    assert!(matches!(&sealed.manifest.entries[0].kind, Kind::File { table: Some(_), .. }), "hashed and counted");
    let results = fs::read_to_string(out.join("results.json")).unwrap();
    assert!(results.contains("\"plain\"") && !results.contains("inner"), "{results}");
    assert!(sealed.warnings.iter().any(|w| w.contains("not in results.json") && w.contains("d\u{fffd}/inner")));

    // The exact bytes are compared: the same names verify, a removed one is named.
    assert!(verify(out).unwrap().matches());
    fs::remove_file(out.join(name)).unwrap();
    assert_eq!(verify(out).unwrap().removed, ["caf\u{fffd}.csv"]);
}

/// Regression: with numbered names (`.from-container`, `.1` ... `.999`), a
/// container that took all of them stopped the seal, and its forged files
/// stayed where ces's belong.
#[test]
fn names_the_container_took_beforehand_do_not_stop_moving_reserved_names_aside() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    for name in ["results.json", "ces-manifest.json", "checksums"] {
        fs::write(out.join(name), "forged").unwrap();
        fs::write(out.join(format!("{name}.from-container")), "").unwrap();
        for n in 1..1000 {
            fs::write(out.join(format!("{name}.from-container.{n}")), "").unwrap();
        }
    }
    let sealed = seal(out, run(), &options()).unwrap();
    assert_eq!(sealed.manifest.moved_aside.len(), 3);
    assert_eq!(sealed.manifest.entries.len(), 3003);
    assert!(fs::read_to_string(out.join("ces-manifest.json")).unwrap().contains("ces-outputs-manifest/1"));
    assert!(out.join("checksums").is_dir());
    assert!(verify(out).unwrap().matches());
}

#[test]
fn files_the_container_left_at_the_old_fixed_temp_names_do_not_stop_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    // The names a temp file of this process would have had with a fixed,
    // pid-based scheme: a container can guess those.
    let pid = std::process::id();
    for name in ["ces-manifest.json", "results.json", "x.txt.txt"] {
        fs::write(out.join(format!(".{name}.ces-{pid}.tmp")), "planted").unwrap();
    }
    fs::write(out.join("x.txt"), "x").unwrap();
    let sealed = seal(out, run(), &options()).unwrap();
    assert!(out.join("ces-manifest.json").is_file() && out.join("results.json").is_file());
    assert!(out.join("checksums/x.txt.txt").is_file());
    // The planted files are outputs like any other, untouched.
    assert_eq!(fs::read_to_string(out.join(format!(".results.json.ces-{pid}.tmp"))).unwrap(), "planted");
    assert!(sealed.manifest.entries.iter().any(|e| e.path == format!(".results.json.ces-{pid}.tmp")));
}

/// Regression: the seal hashed every byte, so a sparse file of terabytes
/// (made in a second with `truncate`) kept ces busy for hours. Past the
/// byte budget a file is listed with its size, its allocated size and the
/// reason, without a sha256; what fits is still hashed; verify does not
/// hash it either, and reports it as unverified.
#[test]
fn files_over_the_byte_budget_are_listed_not_hashed_and_verify_calls_them_unverified() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    fs::File::create(out.join("huge.bin")).unwrap().set_len(1 << 40).unwrap();
    fs::write(out.join("small.txt"), "small\n").unwrap();
    fs::write(out.join("data.csv"), "a,b\n1,2\n").unwrap();
    let budget = Budget { bytes: 1 << 20, time: Budget::DEFAULT_TIME };
    let sealed = seal(out, run(), &SealOptions { budget, ..options() }).unwrap();
    match &entry(&sealed.manifest, "huge.bin").kind {
        Kind::File { size, allocated, sha256: None, not_hashed: Some(why), table: None, .. } => {
            assert_eq!((*size, *allocated), (1 << 40, Some(0)));
            assert!(why.contains("over the seal's budget"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&entry(&sealed.manifest, "small.txt").kind, Kind::File { sha256: Some(_), allocated: None, .. }));
    assert!(matches!(&entry(&sealed.manifest, "data.csv").kind, Kind::File { sha256: Some(_), table: Some(_), .. }));
    let report = sealed.manifest.seal.as_ref().unwrap();
    assert_eq!((report.files_not_hashed, report.hash_budget_bytes, report.interrupted_by_signal), (1, 1 << 20, None));
    assert!(sealed.warnings.iter().any(|w| w.starts_with("1 files were not hashed") && w.contains("huge.bin")));
    assert!(!out.join("checksums/huge.bin.txt").exists() && out.join("checksums/small.txt.txt").exists());
    let json = fs::read_to_string(out.join("ces-manifest.json")).unwrap();
    assert!(json.contains("\"sha256\": null") && json.contains("\"not_hashed\": \"over the seal's budget"), "{json}");

    let check = verify(out).unwrap();
    assert!(check.matches());
    assert_eq!(check.unverified.len(), 1);
    assert_eq!(check.unverified[0].0, "huge.bin");
    // A file grown since is a change, not merely unverified.
    fs::OpenOptions::new().write(true).open(out.join("huge.bin")).unwrap().set_len((1 << 40) + 1).unwrap();
    let check = verify(out).unwrap();
    assert_eq!(check.changed.len(), 1);
    assert!(check.unverified.is_empty());
}

#[test]
fn with_no_time_left_nothing_is_hashed_and_each_file_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    fs::write(out.join("a"), "a").unwrap();
    fs::write(out.join("b"), "").unwrap();
    let budget = Budget { bytes: Budget::DEFAULT_BYTES, time: std::time::Duration::ZERO };
    let sealed = seal(out, run(), &SealOptions { budget, ..options() }).unwrap();
    for path in ["a", "b"] {
        assert!(
            matches!(&entry(&sealed.manifest, path).kind, Kind::File { sha256: None, not_hashed: Some(why), .. } if why.contains("time budget")),
            "{path}: {:?}",
            entry(&sealed.manifest, path)
        );
    }
    assert_eq!(sealed.manifest.seal.unwrap().files_not_hashed, 2);
}

/// Says a signal arrived from the `after`-th question on.
struct SignalAfter {
    after: usize,
    asked: std::cell::Cell<usize>,
}

impl Interrupt for SignalAfter {
    fn signal(&self) -> Option<i32> {
        self.asked.set(self.asked.get() + 1);
        (self.asked.get() >= self.after).then_some(15)
    }
}

/// ces blocks SIGINT/SIGTERM/SIGHUP while it seals: the seal asks between
/// chunks, and stops hashing (midway through a file too) when one came.
#[test]
fn a_signal_stops_the_hashing_midway_and_the_rest_is_listed_unhashed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    fs::write(out.join("a-first"), "first").unwrap();
    fs::File::create(out.join("b-big")).unwrap().set_len(64 << 20).unwrap();
    fs::write(out.join("c-last"), "last").unwrap();
    let interrupt = SignalAfter { after: 4, asked: std::cell::Cell::new(0) };
    let sealed = seal(out, run(), &SealOptions { interrupt: &interrupt, ..options() }).unwrap();
    assert!(matches!(&entry(&sealed.manifest, "a-first").kind, Kind::File { sha256: Some(_), .. }));
    for path in ["b-big", "c-last"] {
        assert!(
            matches!(&entry(&sealed.manifest, path).kind, Kind::File { sha256: None, not_hashed: Some(why), .. } if why == "ces was interrupted by signal 15"),
            "{path}: {:?}",
            entry(&sealed.manifest, path)
        );
    }
    assert!(interrupt.asked.get() < 64, "stopped within b-big: asked {} times", interrupt.asked.get());
    let report = sealed.manifest.seal.unwrap();
    assert_eq!((report.files_not_hashed, report.interrupted_by_signal), (2, Some(15)));
    assert!(out.join("ces-manifest.json").is_file() && out.join("results.json").is_file());
}

/// Regression: a 6755 file (or one with file capabilities) written to the
/// outputs reached the host as it was: a root-owned one ran as root for any
/// local user. The bits and `security.capability` are removed and recorded;
/// a link to such a file outside is never followed.
#[test]
fn setuid_setgid_and_capabilities_are_removed_and_recorded_never_through_a_link() {
    assert!(rustix::process::geteuid().is_root(), "this test sets file capabilities: run the suite as root (CI does)");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outputs");
    fs::create_dir(&out).unwrap();
    let outside = dir.path().join("outside-suid");
    fs::write(&outside, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o6755)).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
    for (name, mode) in [("suid", 0o4755), ("sgid", 0o2711), ("both-unreadable", 0o6000), ("plain", 0o755)] {
        fs::write(out.join(name), "x").unwrap();
        fs::set_permissions(out.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::create_dir(out.join("sgid-dir")).unwrap();
    fs::set_permissions(out.join("sgid-dir"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(out.join("sgid-dir/caps"), "x").unwrap();
    let setcap = std::process::Command::new("setcap").arg("cap_net_raw+ep").arg(out.join("sgid-dir/caps")).status();
    assert!(setcap.unwrap().success(), "setcap (package libcap2-bin)");

    let sealed = seal(&out, run(), &options()).unwrap();
    let removed = |path: &str| match &entry(&sealed.manifest, path).kind {
        Kind::File { removed, not_removed: None, .. } => removed.clone(),
        other => panic!("{path}: {other:?}"),
    };
    assert_eq!(removed("suid"), ["setuid"]);
    assert_eq!(removed("sgid"), ["setgid"]);
    assert_eq!(removed("both-unreadable"), ["setuid", "setgid"]);
    assert_eq!(removed("sgid-dir/caps"), ["security.capability"]);
    assert!(removed("plain").is_empty());
    for (path, mode) in [("suid", 0o755), ("sgid", 0o711), ("both-unreadable", 0o000), ("plain", 0o755)] {
        assert_eq!(fs::metadata(out.join(path)).unwrap().mode() & 0o7777, mode, "{path}");
        assert_eq!(entry(&sealed.manifest, path).mode, format!("{mode:04o}"), "the mode after");
    }
    assert_eq!(
        rustix::fs::getxattr_query(out.join("sgid-dir/caps"), "security.capability"),
        Err(rustix::io::Errno::NODATA)
    );
    assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o7777, 0o6755, "the link was not followed");
    assert_eq!(fs::metadata(out.join("sgid-dir")).unwrap().mode() & 0o7777, 0o2775, "directories keep setgid");
    assert_eq!(sealed.manifest.seal.as_ref().unwrap().files_privileges_removed, 4);
    assert!(sealed.warnings.iter().any(|w| w.starts_with("4 files had setuid/setgid/capabilities removed")));
    let json = fs::read_to_string(out.join("ces-manifest.json")).unwrap();
    assert!(json.contains("\"removed\": [\n        \"setuid\""), "{json}");
    assert!(verify(&out).unwrap().matches(), "verify sees the modes the seal left");
}

/// A container that made the outputs directory read-only: ces gives the
/// owner's permissions back first and records the mode it found.
#[test]
fn a_read_only_outputs_directory_gets_its_owner_permissions_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outputs");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("x"), "x").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o555)).unwrap();
    let sealed = seal(&out, run(), &options()).unwrap();
    assert_eq!(sealed.manifest.seal.unwrap().directory_mode_restored.as_deref(), Some("0555"));
    assert_eq!(fs::metadata(&out).unwrap().mode() & 0o7777, 0o755);
    assert!(sealed.warnings.iter().any(|w| w.contains("mode 0555")));
}
