//! Output manifests through the real binary, as root with the native
//! runtime: every run (success, failure, out of memory, signal) leaves
//! `ces-manifest.json`, `results.json` and `checksums/` in its outputs, with
//! the manifest's digest in the audit record; a container cannot forge them;
//! the `acro` package's own loader reads what ces wrote; `ces outputs
//! verify` names what changed. Every path a test touches is in its temp dir.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Run, TreWorld, primary_group, require_root};
use sha2::Digest as _;

/// The venv scripts/setup creates, with a pinned `acro`.
const ACRO_PYTHON: &str = "/opt/ces-test/acro-venv/bin/python";

/// What these tests add to a [`TreWorld`] (busybox pulled, a HOME, project data).
impl TreWorld {
    /// `ces run --json IMAGE sh -c SCRIPT` (with `extra` options first).
    fn run_script(&self, extra: &[&str], script: &str) -> Run {
        let mut args = vec!["run", "--json"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&self.image, "sh", "-c", script]);
        self.ces(&args)
    }

    /// The audit record of the run whose outputs are `outputs`.
    fn run_record(&self, outputs: &Path) -> serde_json::Value {
        let records = self.sb.audit_records();
        records.into_iter().find(|r| r["event"] == "run" && r["outputs"] == outputs.to_str().unwrap()).unwrap()
    }
}

fn outputs_of(out: &Run) -> PathBuf {
    let start = out.stdout.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON: {out:?}"));
    let line: serde_json::Value = serde_json::from_str(start).unwrap();
    PathBuf::from(line["outputs"].as_str().unwrap())
}

fn manifest_of(outputs: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(outputs.join("ces-manifest.json")).unwrap()).unwrap()
}

fn digest_of(path: &Path) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap())))
}

/// The manifest's entries by path.
fn entries(manifest: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

const OUTPUTS_SCRIPT: &str = r#"set -e
cd /safe_outputs
mkdir -p tables/by-year empty-dir
printf 'id,name,comment\n1,"Smith, J","said ""hi""\nthen left"\n2,Lee,ok\n' > tables/people.csv
printf 'year\tcount\n2020\t5\n2021\t7\n2022\t9\n' > tables/by-year/counts.tsv
printf 'a,b\n1,2\n' > summary.csv
: > empty.txt
echo 'model fit' > report.txt
ln -s /etc/passwd passwd-link
mkfifo pipe
"#;

#[test]
fn a_run_leaves_a_manifest_acro_metadata_and_the_digest_in_the_audit_log() {
    require_root("needs root");
    let w = TreWorld::new("outputs/ok");
    let out = w.run_script(&["--name", "sealed"], OUTPUTS_SCRIPT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let outputs = outputs_of(&out);
    let manifest = manifest_of(&outputs);

    let run = &manifest["run"];
    assert_eq!(manifest["format"], "ces-outputs-manifest/1");
    assert!(outputs.to_str().unwrap().ends_with(run["id"].as_str().unwrap()));
    assert_eq!(run["name"], "sealed");
    assert_eq!(run["user"]["uid"], rustix::process::getuid().as_raw());
    assert_eq!(run["project"], primary_group().as_str());
    assert_eq!(run["image"], serde_json::json!({"reference": w.image, "digest": w.digest}));
    assert_eq!(run["runtime"], "native");
    assert_eq!(run["argv"], serde_json::json!(["sh", "-c", OUTPUTS_SCRIPT]));
    assert_eq!(run["exit"], serde_json::json!({"code": 0, "signal": null, "oom": false}));
    let started: jiff::Timestamp = run["started"].as_str().unwrap().parse().unwrap();
    let ended: jiff::Timestamp = run["ended"].as_str().unwrap().parse().unwrap();
    assert!(started <= ended);

    let e = entries(&manifest);
    let paths: Vec<&str> = e.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "empty-dir",
            "empty.txt",
            "passwd-link",
            "pipe",
            "report.txt",
            "summary.csv",
            "tables",
            "tables/by-year",
            "tables/by-year/counts.tsv",
            "tables/people.csv"
        ]
    );
    assert_eq!(e["passwd-link"]["type"], "symlink");
    assert_eq!(e["passwd-link"]["target"], "/etc/passwd");
    assert_eq!(e["pipe"]["type"], "fifo");
    assert_eq!(e["tables"]["type"], "directory");
    assert_eq!(e["empty.txt"]["size"], 0);
    assert_eq!(e["report.txt"]["sha256"], hex::encode(sha2::Sha256::digest(b"model fit\n")));
    assert_eq!(e["report.txt"]["mode"], "0644");
    let people = &e["tables/people.csv"]["table"];
    assert_eq!((&people["rows_including_header"], &people["columns"]), (&3.into(), &3.into()));
    let counts = &e["tables/by-year/counts.tsv"]["table"];
    assert_eq!((&counts["delimiter"], &counts["rows_including_header"]), (&"\t".into(), &4.into()));
    assert!(out.stderr.contains("passwd-link"), "entries not in results.json are named: {}", out.stderr);

    // The audit record holds the manifest's digest; verify agrees.
    let record = w.run_record(&outputs);
    assert_eq!(record["outputs_manifest"], digest_of(&outputs.join("ces-manifest.json")).as_str());
    let verify = w.ces(&["outputs", "verify", outputs.to_str().unwrap()]);
    let text = verify.ok();
    assert!(text.contains(&format!("record seq {}", record["seq"])), "{text}");
    assert!(text.contains("matches its manifest"), "{text}");

    // THE ACRO TEST: the acro package's own loader reads what ces wrote.
    let acro = acro_load(&outputs);
    let records = acro["records"].as_object().unwrap();
    assert_eq!(records.len(), 5, "one custom output per regular file: {acro:#}");
    for record in records.values() {
        assert_eq!((&record["status"], &record["type"]), (&"review".into(), &"custom".into()), "{record}");
    }
    let outputs_loaded: Vec<&serde_json::Value> = records.values().map(|r| &r["output"][0]).collect();
    for name in ["empty.txt", "report.txt", "tables/by-year/counts.tsv"] {
        assert!(outputs_loaded.contains(&&serde_json::Value::from(name)), "{name} in {outputs_loaded:?}");
    }
    // acro loads CSVs with pandas: its shape agrees with ces's counts (pandas takes a header row).
    for csv in ["summary.csv", "tables/people.csv"] {
        let table = &e[csv]["table"];
        let shape = serde_json::json!({
            "rows": table["rows_including_header"].as_u64().unwrap() - 1,
            "columns": table["columns"],
        });
        assert!(outputs_loaded.contains(&&shape), "{csv}: {shape} in {outputs_loaded:?}");
    }
    // acro's own checksums of the top-level files equal ces's checksums/ and the manifest's.
    let acro_sums = acro["acro_checksums"].as_object().unwrap();
    for name in ["empty.txt", "report.txt", "summary.csv"] {
        let ces_sum = std::fs::read_to_string(outputs.join("checksums").join(format!("{name}.txt"))).unwrap();
        assert_eq!(acro_sums[name], ces_sum.as_str(), "{name}");
        assert_eq!(e[name]["sha256"], ces_sum.as_str(), "{name}");
    }
    // Nested files: checksums/<path>.txt, as SACRO-Viewer looks them up.
    let nested = std::fs::read_to_string(outputs.join("checksums/tables/people.csv.txt")).unwrap();
    assert_eq!(e["tables/people.csv"]["sha256"], nested.as_str());
    assert_eq!(acro["sha256"]["tables/people.csv"], nested.as_str());
}

/// Loads `dir` with `acro.record.load_records` in the pinned venv, and
/// reports what it loaded, acro's own checksums of the top-level files (on a
/// copy, so ces's checksums/ is not overwritten), and hashlib's sha256 of
/// every listed file.
fn acro_load(dir: &Path) -> serde_json::Value {
    assert!(
        Path::new(ACRO_PYTHON).is_file(),
        "{ACRO_PYTHON} is missing: run scripts/setup (it creates the venv with the pinned acro)"
    );
    const SCRIPT: &str = r#"
import hashlib, json, os, shutil, sys, tempfile
from acro.record import load_records
out = sys.argv[1]
records = load_records(out)
report = {"records": {}, "sha256": {}}
for uid, rec in records.results.items():
    loaded = [o if isinstance(o, str) else {"rows": o.shape[0], "columns": o.shape[1]} for o in rec.output]
    report["records"][uid] = {"status": rec.status, "type": rec.output_type, "output": loaded}
with open(os.path.join(out, "results.json")) as f:
    for result in json.load(f)["results"].values():
        for file in result["files"]:
            with open(os.path.join(out, file["name"]), "rb") as g:
                report["sha256"][file["name"]] = hashlib.sha256(g.read()).hexdigest()
copy = tempfile.mkdtemp()
for name in os.listdir(out):
    path = os.path.join(out, name)
    if not os.path.islink(path) and os.path.isfile(path):
        shutil.copy(path, copy)
records.write_checksums(copy)
sums = os.path.join(copy, "checksums")
report["acro_checksums"] = {n[:-4]: open(os.path.join(sums, n)).read() for n in os.listdir(sums)}
shutil.rmtree(copy)
print(json.dumps(report))
"#;
    let out = Command::new(ACRO_PYTHON).arg("-c").arg(SCRIPT).arg(dir).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "acro could not load {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn failed_out_of_memory_and_signalled_runs_are_sealed_too() {
    require_root("needs root");
    let w = TreWorld::new("outputs/ends");
    let failed = w.run_script(&[], "echo partial > /safe_outputs/r; exit 3");
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    // -m takes GB: 0.03 GB is about 32 MB; dd's 64 MB buffer cannot fit.
    let oom =
        w.run_script(&["-m", "0.03"], "echo before > /safe_outputs/r; dd if=/dev/zero of=/dev/null bs=64M count=1");
    assert_eq!(oom.code, 137, "{}", oom.stderr);
    let signalled = w.run_script(&[], "echo killed > /safe_outputs/r; kill -KILL $$");
    assert_eq!(signalled.code, 137, "{}", signalled.stderr);

    for (run, exit) in [
        (&failed, serde_json::json!({"code": 3, "signal": null, "oom": false})),
        (&oom, serde_json::json!({"code": 137, "signal": 9, "oom": true})),
        (&signalled, serde_json::json!({"code": 137, "signal": 9, "oom": false})),
    ] {
        let outputs = outputs_of(run);
        let manifest = manifest_of(&outputs);
        assert_eq!(manifest["run"]["exit"], exit, "{}", run.stderr);
        assert_eq!(manifest["entries"][0]["path"], "r");
        assert!(outputs.join("results.json").is_file() && outputs.join("checksums/r.txt").is_file());
        let record = w.run_record(&outputs);
        assert_eq!(record["exit"], exit);
        assert_eq!(record["outputs_manifest"], digest_of(&outputs.join("ces-manifest.json")).as_str());
        w.ces(&["outputs", "verify", outputs.to_str().unwrap()]).ok();
    }
    w.sb.ces(&["audit", "verify"]).ok();
}

/// What a container leaves to pass its own files off as ces's: a forged
/// manifest, ACRO metadata and checksums at the reserved names, and every
/// numbered name ces once moved them to (`.from-container`, `.1` ... `.999`).
const FORGE_SCRIPT: &str = r#"cd /safe_outputs
echo '{"version": "1.0.2", "results": {}}' > results.json
mkdir checksums && echo 0000 > checksums/data.csv.txt
echo '{"format": "ces-outputs-manifest/1", "entries": []}' > ces-manifest.json
printf 'x\n1\n' > data.csv
for name in ces-manifest.json results.json checksums; do
  : > $name.from-container
  i=1; while [ $i -lt 1000 ]; do : > $name.from-container.$i; i=$((i+1)); done
done"#;

/// Checks that `outputs` holds ces's own manifest, ACRO metadata and
/// checksums after [`FORGE_SCRIPT`] (and `extra` entries), the container's
/// forgeries moved aside, and that the audit log and verify vouch for it.
fn assert_forgery_moved_aside(w: &TreWorld, out: &Run, outputs: &Path, sb_ces: impl Fn(&[&str]) -> Run) {
    let manifest = manifest_of(outputs);
    assert_eq!(manifest["run"]["image"]["digest"], w.digest.as_str(), "ces's manifest, not the container's");
    assert!(outputs.ends_with(format!("outputs_{}", manifest["run"]["id"].as_str().unwrap())));
    let moved: BTreeMap<&str, &str> = manifest["moved_aside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["moved_to"].as_str().unwrap()))
        .collect();
    assert_eq!(moved.keys().copied().collect::<Vec<_>>(), ["ces-manifest.json", "checksums", "results.json"]);
    for (name, to) in &moved {
        assert!(to.starts_with(&format!("{name}.from-container-")), "{to}");
        assert!(
            out.stderr
                .contains(&format!("warning: the container left its own {name} in the outputs; ces moved it to {to}")),
            "{name}: {}",
            out.stderr
        );
    }
    assert_eq!(
        std::fs::read_to_string(outputs.join(moved["results.json"])).unwrap(),
        "{\"version\": \"1.0.2\", \"results\": {}}\n"
    );
    assert_eq!(std::fs::read_to_string(outputs.join(moved["checksums"]).join("data.csv.txt")).unwrap(), "0000\n");
    let e = entries(&manifest);
    assert!(
        e.contains_key("data.csv") && e.contains_key("results.json.from-container.999"),
        "the forgeries are outputs"
    );
    let real_sum = std::fs::read_to_string(outputs.join("checksums/data.csv.txt")).unwrap();
    assert_eq!(real_sum, hex::encode(sha2::Sha256::digest(b"x\n1\n")));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["tool"]["name"], "ces", "ces's results.json");
    let records = w.sb.audit_records();
    let record = records.iter().rev().find(|r| r["event"] == "run" && r["run_id"] == manifest["run"]["id"]).unwrap();
    assert_eq!(record["outputs_manifest"], digest_of(&outputs.join("ces-manifest.json")).as_str());
    sb_ces(&["outputs", "verify", outputs.to_str().unwrap()]).ok();
}

/// Regression: with the numbered names all taken the seal failed, leaving
/// the container's manifest and results.json where ces's belong.
#[test]
fn a_container_cannot_forge_ces_files_and_loses_nothing_by_trying() {
    require_root("needs root");
    let w = TreWorld::new("outputs/forge");
    let out = w.run_script(&[], FORGE_SCRIPT);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let outputs = outputs_of(&out);
    assert_forgery_moved_aside(&w, &out, &outputs, |args| w.ces(args));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["results"].as_object().unwrap().len(), 3004, "data.csv, the three moved and 3000 taken names");
}

#[test]
fn verify_names_added_changed_and_removed_files_and_a_tampered_manifest() {
    require_root("needs root");
    let w = TreWorld::new("outputs/verify");
    let out =
        w.run_script(&[], "cd /safe_outputs; mkdir d; echo 1 > keep; echo 2 > edit; echo 3 > d/gone; echo 4 > chmod");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let outputs = outputs_of(&out);
    let dir = outputs.to_str().unwrap();
    let manifest_path = outputs.join("ces-manifest.json");
    let original_manifest = std::fs::read(&manifest_path).unwrap();

    std::fs::write(outputs.join("edit"), "changed\n").unwrap();
    std::fs::remove_file(outputs.join("d/gone")).unwrap();
    std::fs::write(outputs.join("d/new"), "added\n").unwrap();
    std::fs::set_permissions(outputs.join("chmod"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = w.ces(&["outputs", "verify", dir]);
    assert_eq!(check.code, 1, "{check:?}");
    let lines: Vec<&str> = check.stdout.lines().collect();
    assert_eq!(lines[..4], ["added:   d/new", "changed: chmod (mode)", "changed: edit (content)", "removed: d/gone"]);
    assert!(check.stderr.contains("error: ") && check.stderr.contains("1 added, 2 changed, 1 removed"), "{check:?}");

    // Put the files back: it matches again.
    std::fs::write(outputs.join("edit"), "2\n").unwrap();
    std::fs::write(outputs.join("d/gone"), "3\n").unwrap();
    std::fs::remove_file(outputs.join("d/new")).unwrap();
    std::fs::set_permissions(outputs.join("chmod"), std::fs::Permissions::from_mode(0o644)).unwrap();
    w.ces(&["outputs", "verify", dir]).ok();

    // Edit a file and the manifest to match: the audit log tells.
    std::fs::write(outputs.join("edit"), "forged\n").unwrap();
    let forged_sha = hex::encode(sha2::Sha256::digest(b"forged\n"));
    let mut manifest: serde_json::Value = serde_json::from_slice(&original_manifest).unwrap();
    for entry in manifest["entries"].as_array_mut().unwrap() {
        if entry["path"] == "edit" {
            entry["sha256"] = forged_sha.clone().into();
            entry["size"] = 7.into();
        }
    }
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let check = w.ces(&["outputs", "verify", dir]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stdout.lines().all(|l| !l.starts_with("changed:")), "the files match the forged manifest");
    assert!(check.stderr.contains("error: the manifest was changed since run"), "{}", check.stderr);

    // With a log that has no record of the run, nothing vouches for the manifest: it fails.
    std::fs::write(&manifest_path, &original_manifest).unwrap();
    std::fs::write(outputs.join("edit"), "2\n").unwrap();
    let empty_log = w.sb.dir.path().join("empty.jsonl");
    std::fs::write(&empty_log, "").unwrap();
    let check = w.ces(&["outputs", "verify", "--audit-file", empty_log.to_str().unwrap(), dir]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(
        check.stderr.contains("error: the audit log") && check.stderr.contains("has no record of run"),
        "{}",
        check.stderr
    );
    assert!(check.stderr.contains("hint: pass --audit-file"), "{}", check.stderr);
    // A log that cannot be read: said so, and a failure unless --no-audit.
    let garbage = w.sb.dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "not a record\n").unwrap();
    let check = w.ces(&["outputs", "verify", "--audit-file", garbage.to_str().unwrap(), dir]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stderr.contains("error: cannot read the audit log"), "{}", check.stderr);
    assert!(check.stderr.contains("--no-audit"), "{}", check.stderr);
    let check = w.ces(&["outputs", "verify", "--no-audit", dir]);
    assert!(check.ok().contains("not read (--no-audit)") && check.stdout.contains("matches its manifest"), "{check:?}");

    // No manifest: ces's own error.
    std::fs::remove_file(&manifest_path).unwrap();
    let check = w.ces(&["outputs", "verify", dir]);
    assert!(check.fails().contains("has no ces-manifest.json"), "{}", check.stderr);
}

#[test]
fn twenty_concurrent_runs_leave_twenty_records_with_manifests_in_one_chain() {
    require_root("needs root");
    let w = TreWorld::new("outputs/twenty");
    let children: Vec<_> = (0..20)
        .map(|i| {
            w.command(
                env!("CARGO_BIN_EXE_ces"),
                &["run", "--json", &w.image, "sh", "-c", &format!("echo {i} > /safe_outputs/n")],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut outputs = Vec::new();
    for child in children {
        let run = Run::from(child.wait_with_output().unwrap());
        run.ok();
        outputs.push(outputs_of(&run));
    }
    let runs: Vec<serde_json::Value> = w.sb.audit_records().into_iter().filter(|r| r["event"] == "run").collect();
    assert_eq!(runs.len(), 20);
    for dir in &outputs {
        let record = runs.iter().find(|r| r["outputs"] == dir.to_str().unwrap()).unwrap();
        assert_eq!(record["outputs_manifest"], digest_of(&dir.join("ces-manifest.json")).as_str());
        assert_eq!(manifest_of(dir)["run"]["id"], record["run_id"]);
    }
    let verify = w.sb.ces(&["audit", "verify"]);
    assert!(
        verify.ok().contains("42 records, the chain is whole"),
        "the pull's start and end, 20 run starts and 20 ends: {}",
        verify.stdout
    );
}

/// As root for another user (sudo): ces's files are theirs, like the outputs.
#[test]
fn for_a_sudo_user_the_manifest_and_acro_files_are_theirs() {
    use std::os::unix::fs::MetadataExt as _;
    require_root("needs root");
    let w = TreWorld::new("outputs/sudo");
    w.for_another_user();
    let cmd = w.command(
        env!("CARGO_BIN_EXE_ces"),
        &["run", "--json", &w.image, "sh", "-c", "mkdir /safe_outputs/d; echo 1 > /safe_outputs/d/x"],
    );
    let cmd = w.sb.as_sudo(cmd, 4242, 4343, "nobody-here");
    let out = w.sb.run(cmd);
    out.ok();
    let outputs = outputs_of(&out);
    for path in ["", "d/x", "ces-manifest.json", "results.json", "checksums", "checksums/d", "checksums/d/x.txt"] {
        let meta = std::fs::symlink_metadata(outputs.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "{path}");
    }
    assert_eq!(manifest_of(&outputs)["run"]["user"]["uid"], 4242);
}

/// A container makes a copy of busybox in /safe_outputs and tries to make it
/// setuid and setgid (in root mode seccomp refuses; rootless and under sudo
/// the bits are the user's own; the host then sets them either way: see
/// [`run_with_setid_outputs`]).
const SUID_SCRIPT: &str = "busybox cp /bin/busybox /safe_outputs/sh-suid && busybox chmod 755 /safe_outputs/sh-suid; \
                           busybox chmod 6755 /safe_outputs/sh-suid 2>/dev/null; true";

/// Runs `cmd`, a `ces run` of `script` that then waits; while it waits, the
/// host (root) adds the setuid and setgid bits to the outputs `setid`
/// picks: a container cannot (seccomp), so the seal is tried on files that
/// reached the outputs some other way (a bind, a kernel without the filter).
fn run_with_setid_outputs(w: &TreWorld, cmd: Command, setid: &dyn Fn(&Path) -> Vec<PathBuf>) -> Run {
    let mut cmd = cmd;
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let outputs = loop {
        let ready = std::fs::read_dir(&w.home)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("outputs_") && p.join(".ready").exists());
        if let Some(dir) = ready {
            break dir;
        }
        assert!(std::time::Instant::now() < deadline, "the container did not get ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for file in setid(&outputs) {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode | 0o6000)).unwrap();
    }
    std::fs::write(outputs.join(".go"), "").unwrap();
    Run::from(child.wait_with_output().unwrap())
}

/// Ready, then wait for the host's go (see [`run_with_setid_outputs`]).
const WAIT: &str = "touch /safe_outputs/.ready; while [ ! -e /safe_outputs/.go ]; do busybox sleep 0.1; done";

/// `script`, then [`WAIT`].
fn waiting(script: &str) -> String {
    format!("{script}; {WAIT}")
}

fn assert_setuid_removed(out: &Run) {
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let outputs = outputs_of(out);
    let mode = std::fs::symlink_metadata(outputs.join("sh-suid")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755, "no s bits on the host: {mode:o}");
    let e = entries(&manifest_of(&outputs));
    assert_eq!(e["sh-suid"]["removed"], serde_json::json!(["setuid", "setgid"]));
    assert_eq!(e["sh-suid"]["mode"], "0755");
    assert_eq!(manifest_of(&outputs)["seal"]["files_privileges_removed"], 1);
    assert!(
        out.stderr.contains("Outputs sealed: 1 file had setuid/setgid/capabilities removed"),
        "the run's end says so: {}",
        out.stderr
    );
}

/// Regression: a 6755 file the container wrote reached the host as it was
/// (in a root-mode run, owned by root: root for any local user).
#[test]
fn a_setuid_file_written_to_the_outputs_reaches_the_host_without_its_bits() {
    require_root("needs root");
    let w = TreWorld::new("outputs/suid");
    let cmd = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--json", &w.image, "sh", "-c", &waiting(SUID_SCRIPT)]);
    let out = run_with_setid_outputs(&w, cmd, &|outputs| vec![outputs.join("sh-suid")]);
    assert_setuid_removed(&out);
    w.ces(&["outputs", "verify", outputs_of(&out).to_str().unwrap()]).ok();
}

/// The same as root for a sudo user: the file is theirs, setuid to them.
#[test]
fn under_sudo_a_setuid_file_written_to_the_outputs_reaches_the_host_without_its_bits() {
    require_root("needs root");
    let user = common::test_user();
    let w = TreWorld::new("outputs/suid-sudo");
    w.for_another_user();
    let cmd = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--json", &w.image, "sh", "-c", &waiting(SUID_SCRIPT)]);
    let out = run_with_setid_outputs(&w, user.sudo(&w.sb, cmd), &|outputs| vec![outputs.join("sh-suid")]);
    assert_setuid_removed(&out);
}

/// Regression: a sparse file of terabytes (15 TiB by `truncate`, a second
/// to make) kept the seal hashing for hours. Past the budget it is listed with
/// its size, allocated size and the reason; the run's end and verify say so.
#[test]
fn a_huge_sparse_output_is_listed_not_hashed_and_verify_does_not_pass_it() {
    require_root("needs root");
    let w = TreWorld::new("outputs/sparse");
    w.sb.configure("[outputs]\nhash_budget_bytes = 1048576");
    let out = w.run_script(&[], "busybox truncate -s 16492674416640 /safe_outputs/huge; echo hi > /safe_outputs/small");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let outputs = outputs_of(&out);
    let manifest = manifest_of(&outputs);
    let e = entries(&manifest);
    assert_eq!(e["huge"]["size"], 15u64 << 40);
    assert_eq!(e["huge"]["allocated"], 0);
    assert_eq!(e["huge"]["sha256"], serde_json::Value::Null);
    assert!(e["huge"]["not_hashed"].as_str().unwrap().contains("over the seal's budget"), "{}", e["huge"]);
    assert_eq!(e["small"]["sha256"], hex::encode(sha2::Sha256::digest(b"hi\n")));
    assert_eq!(manifest["seal"]["files_not_hashed"], 1);
    assert!(out.stderr.contains("Outputs sealed: 1 file not hashed"), "{}", out.stderr);
    assert!(!outputs.join("checksums/huge.txt").exists());

    let check = w.ces(&["outputs", "verify", outputs.to_str().unwrap()]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stdout.contains("unverified: huge (over the seal's budget"), "{}", check.stdout);
    assert!(
        check.stderr.contains("error: 1 files in") && check.stderr.contains("cannot be verified"),
        "{}",
        check.stderr
    );
    assert!(!check.stdout.contains("matches its manifest"), "{}", check.stdout);
}

/// ces blocks SIGINT/SIGTERM/SIGHUP/SIGQUIT for the container and still holds them
/// while it seals: a SIGTERM that arrives while it hashes a huge file stops
/// the hashing; the run is still sealed and recorded, the file unhashed.
#[test]
fn sigterm_during_the_seal_stops_the_hashing_and_the_run_is_still_recorded() {
    require_root("needs root");
    let w = TreWorld::new("outputs/sealsignal");
    // A budget that would take hours to spend.
    w.sb.configure("[outputs]\nhash_budget_bytes = 18446744073709551615\nhash_budget_seconds = 86400");
    let mut child = w
        .command(
            env!("CARGO_BIN_EXE_ces"),
            &["run", "--json", &w.image, "sh", "-c", "busybox truncate -s 16492674416640 /safe_outputs/huge"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The seal is hashing once ces holds the file open.
    let hashing = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.ends_with("huge") && t.starts_with(&w.home)))
    };
    while !hashing() {
        assert!(child.try_wait().unwrap().is_none(), "ces ended before hashing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::TERM)
        .unwrap();
    // A guard against a hang (hours without the fix), not a timing check.
    let mut waited = 0;
    while child.try_wait().unwrap().is_none() {
        if waited > 6000 {
            let _ = child.kill();
            panic!("ces still hashing 10 minutes after SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    let out = Run::from(child.wait_with_output().unwrap());
    assert_eq!(out.code, 0, "the container's code: {}", out.stderr);
    let outputs = outputs_of(&out);
    let manifest = manifest_of(&outputs);
    assert_eq!(manifest["seal"]["interrupted_by_signal"], 15);
    assert_eq!(entries(&manifest)["huge"]["not_hashed"], "ces was interrupted by signal 15");
    assert!(out.stderr.contains("1 file not hashed (interrupted by signal 15)"), "{}", out.stderr);
    assert_eq!(w.run_record(&outputs)["outputs_manifest"], digest_of(&outputs.join("ces-manifest.json")).as_str());
}

/// Regression: verify vouched for a directory holding another run's
/// manifest (renamed, or copied into another run's directory).
#[test]
fn verify_fails_when_the_manifest_is_not_the_directorys_runs() {
    require_root("needs root");
    let w = TreWorld::new("outputs/runid");
    let first = outputs_of(&w.run_script(&[], "echo a > /safe_outputs/a"));
    let second = outputs_of(&w.run_script(&[], "echo b > /safe_outputs/b"));
    let run_id = manifest_of(&first)["run"]["id"].as_str().unwrap().to_owned();

    let renamed = first.with_file_name("outputs_20990101-000000-renamed");
    std::fs::rename(&first, &renamed).unwrap();
    let check = w.ces(&["outputs", "verify", renamed.to_str().unwrap()]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(
        check.stderr.contains(&format!(
            "holds the manifest of run {run_id}, whose outputs directory is named outputs_{run_id}"
        )),
        "{}",
        check.stderr
    );
    assert!(check.stderr.contains("hint: "), "{}", check.stderr);

    // The first run's files and manifest copied over the second run's.
    for name in ["b", "ces-manifest.json", "results.json"] {
        std::fs::remove_file(second.join(name)).unwrap();
    }
    std::fs::remove_dir_all(second.join("checksums")).unwrap();
    let copy = Command::new("cp").arg("-a").arg(format!("{}/.", renamed.display())).arg(&second).status().unwrap();
    assert!(copy.success());
    let check = w.ces(&["outputs", "verify", second.to_str().unwrap()]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stderr.contains(&format!("holds the manifest of run {run_id}")), "{}", check.stderr);

    std::fs::rename(&renamed, &first).unwrap();
    w.ces(&["outputs", "verify", first.to_str().unwrap()]).ok();
    // Regression: from inside the directory, `.` has no name of its own and
    // was taken for a directory of another run.
    let mut inside = w.command(env!("CARGO_BIN_EXE_ces"), &["outputs", "verify", "."]);
    inside.current_dir(&first);
    w.sb.run(inside).ok();
}

/// Rootless (ces runs as the user, without root's powers over the outputs):
/// the container forges ces's files, takes every numbered name, makes a
/// reserved directory and another directory unreadable or unwritable, makes
/// a setuid copy of busybox, and makes /safe_outputs read-only. Regression:
/// the seal could not write there, and the forgeries stood as ces's.
#[test]
fn rootless_a_read_only_outputs_directory_and_forged_files_do_not_stop_the_seal() {
    require_root("creates a user and delegates cgroups");
    let user = common::test_user();
    let w = TreWorld::new("outputs/rootless-forge");
    std::fs::set_permissions(w.sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(w.home.join("safe_data")).unwrap();
    for path in common::all_paths(&w.sb.store).into_iter().chain([w.home.clone(), w.home.join("safe_data")]) {
        user.chown(&path);
    }
    w.sb.ces(&["system", "setup", "--user", common::TEST_USER]).ok();
    let as_user = |args: &[&str]| {
        let mut argv = vec![common::user_bin(env!("CARGO_BIN_EXE_ces"))];
        argv.extend_from_slice(args);
        let mut cmd = user.setpriv(&w.sb, &argv);
        cmd.env("HOME", &w.home);
        w.sb.run(cmd)
    };
    let script = everything_script();
    let mut cmd = user
        .setpriv(&w.sb, &[common::user_bin(env!("CARGO_BIN_EXE_ces")), "run", "--json", &w.image, "sh", "-c", &script]);
    cmd.env("HOME", &w.home);
    let out = run_with_setid_outputs(&w, cmd, &|outputs| vec![outputs.join("sh-suid")]);
    assert_sealed_despite_everything(&w, &out, as_user);
}

/// The same as root: ces's files are written, the forgeries moved aside.
#[test]
fn as_root_a_read_only_outputs_directory_and_forged_files_do_not_stop_the_seal() {
    require_root("needs root");
    let w = TreWorld::new("outputs/root-forge");
    let script = everything_script();
    let cmd = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--json", &w.image, "sh", "-c", &script]);
    let out = run_with_setid_outputs(&w, cmd, &|outputs| vec![outputs.join("sh-suid")]);
    assert_sealed_despite_everything(&w, &out, |args| w.ces(args));
}

/// The same as root for a sudo user: ces's files are written, and theirs.
#[test]
fn under_sudo_a_read_only_outputs_directory_and_forged_files_do_not_stop_the_seal() {
    use std::os::unix::fs::MetadataExt as _;
    require_root("needs root");
    let user = common::test_user();
    let w = TreWorld::new("outputs/sudo-forge");
    w.for_another_user();
    let script = everything_script();
    let cmd = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--json", &w.image, "sh", "-c", &script]);
    let out = run_with_setid_outputs(&w, user.sudo(&w.sb, cmd), &|outputs| vec![outputs.join("sh-suid")]);
    assert_sealed_despite_everything(&w, &out, |args| w.ces(args));
    let outputs = outputs_of(&out);
    for path in ["", "ces-manifest.json", "results.json", "checksums", "checksums/data.csv.txt"] {
        let meta = std::fs::symlink_metadata(outputs.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{path}");
    }
}

/// [`FORGE_SCRIPT`], a directory made read-only and a reserved one
/// unreadable, [`SUID_SCRIPT`] (the host then makes its file setuid: see
/// [`run_with_setid_outputs`]), and last `/safe_outputs` made read-only.
fn everything_script() -> String {
    format!(
        "{FORGE_SCRIPT}\nmkdir sub && echo s > sub/f && busybox chmod 0500 sub\nbusybox chmod 0000 checksums\n{SUID_SCRIPT}\n{WAIT}\nbusybox chmod 0555 /safe_outputs"
    )
}

/// What the seal must have done after [`everything_script`]: the directory's
/// mode restored and said so, every file hashed, the forgeries moved aside
/// (verified with `sb_ces`), the setuid copy stripped.
fn assert_sealed_despite_everything(w: &TreWorld, out: &Run, sb_ces: impl Fn(&[&str]) -> Run) {
    assert_eq!(out.code, 0, "{}", out.stderr);
    let outputs = outputs_of(out);
    let manifest = manifest_of(&outputs);
    assert_eq!(manifest["seal"]["directory_mode_restored"], "0555", "{}", out.stderr);
    assert!(out.stderr.contains("the container had made the outputs directory mode 0555"), "{}", out.stderr);
    assert_eq!(entries(&manifest)["sub/f"]["sha256"], hex::encode(sha2::Sha256::digest(b"s\n")));
    assert_forgery_moved_aside(w, out, &outputs, sb_ces);
    assert_setuid_removed(out);
}

/// Whether `text` holds a character that drives a terminal or reorders what
/// it shows (a newline apart).
fn has_raw_control(text: &str) -> bool {
    text.chars()
        .any(|c| (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
}

/// Regression: `ces outputs verify` printed the names the container chose as
/// they were, so a file named with `ESC[1A ESC[2K` erased the line before it:
/// the very `changed:` line a reviewer reads. Every name, the run's warnings
/// and a forged manifest's run id are shown escaped.
#[test]
fn verify_and_the_seal_show_file_names_with_terminal_escapes_escaped() {
    require_root("needs root");
    let w = TreWorld::new("outputs/escapes");
    // a<ESC>[1A<ESC>[2Kok, and b<U+202E>txt<U+009B>2J (setuid: the seal warns about it).
    let script = r#"cd /safe_outputs
printf 1 > "$(printf 'a\033[1A\033[2Kok')"
busybox cp /bin/busybox "$(printf 'b\342\200\256txt\302\2332J')""#;
    let cmd = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--json", &w.image, "sh", "-c", &waiting(script)]);
    let setid = |outputs: &Path| -> Vec<PathBuf> {
        let names = std::fs::read_dir(outputs).unwrap().map(|e| e.unwrap().path());
        names.filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('b')).collect()
    };
    let out = run_with_setid_outputs(&w, cmd, &setid);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!has_raw_control(&out.stderr), "{:?}", out.stderr);
    assert!(out.stderr.contains("removed (see ces-manifest.json): b\\u{202e}txt\\u{9b}2J"), "{}", out.stderr);
    let outputs = outputs_of(&out);
    let edited = "a\x1b[1A\x1b[2Kok";
    let gone = "b\u{202e}txt\u{9b}2J";
    let seal = std::fs::read_to_string(outputs.join("ces-manifest.json")).unwrap();
    assert!(seal.contains("\\u001b[1A") && entries(&manifest_of(&outputs)).contains_key(gone), "{seal}");

    std::fs::write(outputs.join(edited), "2").unwrap();
    std::fs::remove_file(outputs.join(gone)).unwrap();
    std::fs::write(outputs.join("c\x1b]8;;x\x07"), "3").unwrap();
    let check = w.ces(&["outputs", "verify", outputs.to_str().unwrap()]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(!has_raw_control(&check.stdout) && !has_raw_control(&check.stderr), "{check:?}");
    let lines: Vec<&str> = check.stdout.lines().collect();
    assert_eq!(
        lines,
        ["added:   c\\x1b]8;;x\\x07", "changed: a\\x1b[1A\\x1b[2Kok (content)", "removed: b\\u{202e}txt\\u{9b}2J"],
        "{check:?}"
    );

    // A manifest copied in with a forged run id: the id is shown escaped too.
    let mut manifest = manifest_of(&outputs);
    manifest["run"]["id"] = "x\x1b[2K\u{9b}1A".into();
    std::fs::write(outputs.join("ces-manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let check = w.ces(&["outputs", "verify", outputs.to_str().unwrap()]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(!has_raw_control(&check.stdout) && !has_raw_control(&check.stderr), "{check:?}");
    assert!(check.stderr.contains("holds the manifest of run x\\x1b[2K\\u{9b}1A,"), "{}", check.stderr);
}
