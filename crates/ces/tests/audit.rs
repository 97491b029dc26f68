//! The audit log through the real binary: `ces pull` and `ces run` leave
//! records (on success, failure and refusal) with no secrets in them;
//! concurrent processes keep one chain; `ces audit verify` names tampering;
//! `ces audit show` filters.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use ces_testkit::{AuthMode, Registry, busybox_image};
use common::{Sandbox, TreWorld, primary_group, require_root};

fn audit_path(sb: &Sandbox) -> PathBuf {
    sb.store.join("audit.jsonl")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn pulls_are_recorded_whatever_their_outcome_and_without_the_token() {
    let reg = Registry::shared(AuthMode::Token);
    let (user, password) = reg.credentials();
    let image = busybox_image().build();
    let digest = reg.push(&image, "audit/private", "1");
    let private = format!("{}/audit/private:1", reg.host());
    let sb = Sandbox::new(&[reg]);

    // Unauthorized (anonymous), refused registry, then a pull with a token.
    sb.ces(&["pull", &private]).fails();
    sb.ces(&["pull", "elsewhere.example.org/a/b:1"]).fails();
    let mut cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", "--user", user, &private]);
    cmd.env("CES_REGISTRY_TOKEN", password);
    sb.run(cmd).ok();

    let path = audit_path(&sb);
    let all = sb.audit_records();
    // A pull that gets as far as the registry records its start first.
    let starts: Vec<_> = all.iter().filter(|r| r["event"] == "pull_start").collect();
    assert_eq!((starts.len(), all[0]["event"].as_str()), (2, Some("pull_start")), "{all:#?}");
    assert_eq!(starts[0]["pull_id"], all[1]["pull_id"]);
    assert_eq!(starts[1]["pull_id"], all[4]["pull_id"]);
    let records: Vec<_> = all.iter().filter(|r| r["event"] != "pull_start").cloned().collect();
    assert_eq!(records.len(), 3, "{records:#?}");
    for (seq, record) in all.iter().enumerate() {
        assert_eq!(record["seq"], seq);
    }
    for record in &records {
        assert_eq!(record["event"], "pull");
        assert_eq!(record["user"]["uid"], rustix::process::getuid().as_raw());
        assert!(record["time"].as_str().unwrap().parse::<jiff::Timestamp>().is_ok());
    }
    assert_eq!(all[0]["prev"], "0".repeat(64));
    assert_eq!(records[0]["result"], "error");
    assert!(records[0]["error"].as_str().unwrap().contains("not authorized"), "{}", records[0]);
    assert_eq!(records[0]["reference"], private.as_str());
    assert_eq!(records[0]["registry"], reg.host().as_str());
    assert_eq!(records[1]["result"], "refused");
    assert_eq!(records[1]["registry"], "elsewhere.example.org");
    assert!(records[1]["error"].as_str().unwrap().contains("elsewhere.example.org"), "{}", records[1]);
    assert_eq!(records[2]["result"], "ok");
    assert_eq!(records[2]["digest"], digest.as_str());
    assert_eq!(records[2]["registry_user"], user);
    assert!(records[2].get("error").is_none());

    assert!(!contains(&std::fs::read(&path).unwrap(), password), "the token is in the audit log");
    let verify = sb.ces(&["audit", "verify"]);
    assert!(verify.ok().contains("5 records, the chain is whole"), "{}", verify.stdout);
}

#[test]
fn twenty_concurrent_processes_keep_one_chain() {
    let sb = Sandbox::with_hosts(&["ghcr.io".to_owned()], &[]);
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", &format!("refused.example.org/ns/img:{i}")]);
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            cmd.spawn().unwrap()
        })
        .collect();
    for mut child in children {
        assert_eq!(child.wait().unwrap().code(), Some(125));
    }
    let records = sb.audit_records();
    assert_eq!(records.len(), 20);
    let mut tags: Vec<String> = records.iter().map(|r| r["reference"].as_str().unwrap().to_owned()).collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 20, "each process left its own record");
    assert!(sb.ces(&["audit", "verify"]).ok().contains("20 records, the chain is whole"));
}

/// Those who may read the log (its group: IG's reviewers) cannot stop its
/// writers: the test user, in the log's group, holds a `flock` on the log
/// while root, and then root through sudo, pull. Each pull is recorded (it
/// waits for the lock on the log itself a moment, for writers of earlier
/// versions, then goes on), and the writers' own lock is out of the user's
/// reach. Before, every writer waited for as long as the reader held it.
#[test]
fn a_reader_of_the_log_cannot_stop_its_writers() {
    require_root("a second user reads root's log");
    let user = common::test_user();
    let sb = Sandbox::with_hosts(&["ghcr.io".to_owned()], &[]);
    sb.ces(&["pull", "refused.example.org/ns/img:0"]).fails();
    let log = audit_path(&sb);
    for dir in [sb.dir.path(), &sb.store] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    }
    let gid = rustix::fs::Gid::from_raw(user.gid);
    rustix::fs::chown(&log, None, Some(gid)).unwrap();
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();

    let mut reader = user.setpriv(&sb, &["flock", "--exclusive", log.to_str().unwrap(), "sleep", "600"]);
    let mut reader = reader.stdin(std::process::Stdio::null()).spawn().unwrap();
    // Until the reader holds it.
    loop {
        let probe = std::fs::File::open(&log).unwrap();
        match rustix::fs::flock(&probe, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Err(rustix::io::Errno::WOULDBLOCK) => break,
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
        assert!(reader.try_wait().unwrap().is_none(), "the reader could not lock the log");
    }
    let lock = log.with_file_name("audit.jsonl.lock");
    let open = sb.run(user.setpriv(&sb, &["flock", "--nonblock", lock.to_str().unwrap(), "true"]));
    assert!(open.code != 0 && open.stderr.contains("Permission denied"), "{}", open.stderr);

    let pulls = [
        sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", "refused.example.org/ns/img:1"]),
        user.sudo(&sb, sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", "refused.example.org/ns/img:2"])),
    ];
    for mut pull in pulls {
        let mut child = pull.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "still waiting after 60 s: {stderr}");
        assert!(stderr.contains("refused.example.org is not allowed"), "{stderr}");
        assert!(stderr.contains("held a lock on the audit log"), "{stderr}");
    }
    let _ = reader.kill();
    reader.wait().unwrap();
    let records = sb.audit_records();
    let users: Vec<_> = records.iter().map(|r| r["user"]["uid"].as_u64().unwrap()).collect();
    assert_eq!(users, [0, 0, u64::from(user.uid)]);
    assert!(sb.ces(&["audit", "verify"]).ok().contains("3 records, the chain is whole"));
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&lock).unwrap().mode() & 0o777, 0o600);
}

/// A sandbox with four refused pulls in its log; returns the log's lines.
fn refused_pulls(sb: &Sandbox) -> Vec<String> {
    for i in 0..4 {
        sb.ces(&["pull", &format!("refused.example.org/ns/img:{i}")]).fails();
    }
    std::fs::read_to_string(audit_path(sb)).unwrap().split_inclusive('\n').map(str::to_owned).collect()
}

fn verify_fails(sb: &Sandbox, lines: &[String]) -> String {
    std::fs::write(audit_path(sb), lines.concat()).unwrap();
    let out = sb.ces(&["audit", "verify"]);
    assert_eq!(out.code, 1, "{out:?}");
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 1, "one line: {}", out.stderr);
    errors[0].to_owned()
}

#[test]
fn verify_names_the_first_tampered_record() {
    let sb = Sandbox::with_hosts(&["ghcr.io".to_owned()], &[]);
    let lines = refused_pulls(&sb);

    let mut edited = lines.clone();
    edited[1] = edited[1].replace("img:1", "img:X");
    let line = verify_fails(&sb, &edited);
    assert!(line.contains("record seq 1 (line 2) was edited"), "{line}");

    let mut removed = lines.clone();
    removed.remove(2);
    assert!(verify_fails(&sb, &removed).contains("line 3 has record seq 3 where seq 2 belongs"));

    let mut swapped = lines.clone();
    swapped.swap(0, 1);
    assert!(verify_fails(&sb, &swapped).contains("line 1 has record seq 1 where seq 0 belongs"));

    let mut inserted = lines.clone();
    inserted.insert(2, lines[1].clone());
    assert!(verify_fails(&sb, &inserted).contains("line 3 has record seq 1 where seq 2 belongs"));

    let mut forged = lines.clone();
    let mut record: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    record["seq"] = 4.into();
    record["prev"] = "0".repeat(64).into();
    forged.push(format!("{record}\n"));
    assert!(verify_fails(&sb, &forged).contains("record seq 4 (line 5) does not chain"));

    let mut truncated = lines.concat();
    truncated.truncate(truncated.len() - 5);
    let line = verify_fails(&sb, &[truncated]);
    assert!(line.contains("line 4 (record seq 3) is cut short"), "{line}");
    // Nothing is appended to a damaged log, and the pull is not done.
    let out = sb.ces(&["pull", "refused.example.org/ns/img:9"]);
    assert!(out.fails().contains("ends with a damaged record (line 4)"), "{}", out.stderr);
    assert!(out.stderr.contains("hint: ces audit verify names the first damaged record"), "{}", out.stderr);

    std::fs::write(audit_path(&sb), lines.concat()).unwrap();
    sb.ces(&["audit", "verify"]).ok();
}

/// A disk or quota that fills up in the middle of a record takes part of
/// it: the part goes again, and the log, whole, takes the next record once
/// there is room (it was damaged for good, every pull, load and run refused).
/// A file size limit just past the log's end cuts the write short as a full
/// disk does.
#[test]
fn a_record_cut_short_leaves_the_log_whole() {
    let sb = Sandbox::with_hosts(&["ghcr.io".to_owned()], &[]);
    refused_pulls(&sb);
    let len = std::fs::metadata(audit_path(&sb)).unwrap().len();
    let limit = format!("--fsize={}", len + 10);
    let cut =
        sb.run(sb.command("prlimit", &[&limit, env!("CARGO_BIN_EXE_ces"), "pull", "refused.example.org/ns/img:8"]));
    assert!(cut.fails().contains("took 10 of"), "{}", cut.stderr);
    assert!(cut.stderr.contains("hint: the file system holding the audit log, or your disk quota"), "{}", cut.stderr);
    assert_eq!(std::fs::metadata(audit_path(&sb)).unwrap().len(), len, "the part is gone");
    let next = sb.ces(&["pull", "refused.example.org/ns/img:9"]);
    assert!(next.fails().contains("refused.example.org is not allowed"), "{}", next.stderr);
    let lines = std::fs::read_to_string(audit_path(&sb)).unwrap().lines().count();
    assert_eq!(lines, 5, "recorded again, after the four");
    sb.ces(&["audit", "verify"]).ok();
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_the_pull() {
    let sb = Sandbox::with_hosts(&["ghcr.io".to_owned()], &[]);
    let not_a_dir = sb.dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    sb.configure(&format!("[audit]\npath = {:?}", not_a_dir.join("audit.jsonl").display().to_string()));
    let out = sb.ces(&["pull", "ghcr.io/a/b:1"]);
    assert!(out.fails().contains("cannot create the directory of the audit log"), "{}", out.stderr);
    assert!(out.stderr.contains("hint: every pull, load and run is recorded in the audit log"), "{}", out.stderr);
    assert!(!sb.store.exists(), "nothing was done");
}

#[test]
fn show_filters_by_user_time_and_image() {
    let sb = Sandbox::with_hosts(&["ghcr.io".to_owned()], &[]);
    refused_pulls(&sb);
    // Two more records of another user, a day earlier, written with the library.
    let log = ces_audit::AuditLog::new(audit_path(&sb));
    for reference in ["ghcr.io/other/img:1", "ghcr.io/other/img:2"] {
        let event = ces_audit::Event::Pull(ces_audit::PullEvent {
            pull_id: None,
            reference: reference.into(),
            registry: Some("ghcr.io".into()),
            registry_user: None,
            digest: Some(format!("sha256:{}", "cd".repeat(32))),
            provenance: None,
            endpoint: None,
            outcome: ces_audit::Outcome::Ok,
        });
        log.append(ces_audit::User { name: "bob".into(), uid: 4242 }, event).unwrap();
    }
    let shown = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "show", "--json"];
        all.extend_from_slice(args);
        sb.ces(&all).ok().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert_eq!(shown(&[]).len(), 6);
    assert_eq!(shown(&["--user", "bob"]).len(), 2);
    assert_eq!(shown(&["--user", "4242"]).len(), 2);
    let me = rustix::process::getuid().as_raw().to_string();
    assert_eq!(shown(&["--user", &me]).len(), 4);
    assert_eq!(shown(&["--image", "refused.example.org/ns/img:2"]).len(), 1);
    assert_eq!(shown(&["--image", "refused.example.org/ns/img"]).len(), 4);
    assert_eq!(shown(&["--image", "cdcdcdcd"]).len(), 2);
    assert_eq!(shown(&["--since", "1h"]).len(), 6);
    assert_eq!(shown(&["--since", "2999-01-01"]).len(), 0);
    // The JSON lines are the records as written.
    assert_eq!(shown(&[]), sb.audit_records());

    let table = sb.ces(&["audit", "show", "--user", "bob"]);
    let lines: Vec<&str> = table.ok().lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.stdout);
    assert!(lines[0].starts_with("SEQ") && lines[0].ends_with("OUTCOME"), "{}", lines[0]);
    assert!(
        lines[1].contains("bob") && lines[1].contains("ghcr.io/other/img:1") && lines[1].contains("sha256:cdcdcdcdcd")
    );
    assert!(lines[1].trim_end().ends_with("ok"), "{}", lines[1]);
    let refused = sb.ces(&["audit", "show", "--image", "refused.example.org/ns/img:0"]);
    assert!(refused.ok().contains("refused: "), "{}", refused.stdout);
    assert!(sb.ces(&["audit", "show", "--since", "soon"]).fails().contains("invalid --since"));
}

// ----- runs (the native runtime, as root) -----

#[test]
fn a_run_is_recorded_with_names_of_env_variables_only() {
    require_root("needs root");
    let w = TreWorld::new("audit/run");
    let (sb, image, digest) = (&w.sb, &w.image, &w.digest);
    let env_file = sb.dir.path().join("env.txt");
    std::fs::write(&env_file, "FILE_SECRET=file-value-7f3a\n").unwrap();

    let out = w.ces(&[
        "run",
        "-c",
        "1",
        "-e",
        "SECRET=hunter2-value-9c1e",
        "--env-file",
        env_file.to_str().unwrap(),
        "--name",
        "audited",
        image,
        "sh",
        "-c",
        "echo hi > /safe_outputs/x; exit 3",
    ]);
    assert_eq!(out.code, 3, "{}", out.stderr);

    let path = audit_path(sb);
    let bytes = std::fs::read(&path).unwrap();
    for secret in ["hunter2-value-9c1e", "file-value-7f3a"] {
        assert!(!contains(&bytes, secret), "{secret} is in the audit log");
    }
    let records = sb.audit_records();
    assert_eq!(records.len(), 4, "the pull's start and end, then the run's start and its end");
    assert_eq!(records[2]["event"], "run_start");
    let run = &records[3];
    assert_eq!(run["event"], "run");
    assert_eq!(run["result"], "ok");
    assert!(run.get("test").is_none(), "a real run is not marked as a test: {run}");
    assert_eq!(run["image"]["reference"], image.as_str());
    assert_eq!(run["image"]["digest"], digest.as_str());
    assert_eq!(run["runtime"], "native");
    assert_eq!(run["name"], "audited");
    assert_eq!(run["project"], primary_group().as_str());
    assert_eq!(run["safe_data"]["path"], w.data_root.join(primary_group()).to_str().unwrap());
    assert_eq!(run["safe_data"]["mode"], "ro");
    assert_eq!(run["exit"], serde_json::json!({"code": 3, "signal": null, "oom": false}));
    assert_eq!(run["limits"]["cpus"], 1.0);
    assert_eq!(run["limits"]["memory"], 4u64 << 30);
    let env: Vec<&str> = run["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&"SECRET") && env.contains(&"FILE_SECRET"), "{env:?}");
    assert_eq!(run["argv"], serde_json::json!(["sh", "-c", "echo hi > /safe_outputs/x; exit 3"]));
    let outputs = PathBuf::from(run["outputs"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(outputs.join("x")).unwrap(), "hi\n");
    assert!(outputs.file_name().unwrap().to_str().unwrap().ends_with(run["run_id"].as_str().unwrap()));
    let destinations: Vec<(&str, &str)> = run["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["destination"].as_str().unwrap(), m["mode"].as_str().unwrap()))
        .collect();
    for mount in [("/safe_data", "ro"), ("/safe_outputs", "rw"), ("/scratch", "rw")] {
        assert!(destinations.contains(&mount), "{mount:?} in {destinations:?}");
    }
    let started: jiff::Timestamp = run["started"].as_str().unwrap().parse().unwrap();
    let ended: jiff::Timestamp = run["ended"].as_str().unwrap().parse().unwrap();
    assert!(started <= ended);
    let table = sb.ces(&["audit", "show", "--image", image]);
    assert!(table.ok().lines().any(|l| l.contains(" run ") && l.trim_end().ends_with("exit 3")), "{}", table.stdout);
    sb.ces(&["audit", "verify"]).ok();
}

#[test]
fn runs_refused_or_failed_before_the_start_are_recorded_without_the_command_line() {
    let sb = Sandbox::with_hosts(&["ghcr.io".to_owned()], &[]);
    let opt_file = sb.dir.path().join("opts");
    std::fs::write(&opt_file, "--network host\n").unwrap();
    sb.ces(&["run", "--privileged", "-e", "SECRET=cmdline-value-51d2", "img"]).fails();
    sb.ces(&["run", "--opt-file", opt_file.to_str().unwrap(), "img"]).fails();
    let missing = sb.ces(&["run", "-e", "SECRET=cmdline-value-51d2", "ghcr.io/none/such:1", "sh"]);
    assert!(missing.fails().contains("hint: pull it first"), "{}", missing.stderr);

    let path = audit_path(&sb);
    assert!(!contains(&std::fs::read(&path).unwrap(), "cmdline-value-51d2"), "an env value is in the audit log");
    let records = sb.audit_records();
    assert_eq!(records.len(), 3, "{records:#?}");
    assert!(records.iter().all(|r| r["event"] == "run_not_started"), "{records:#?}");
    assert_eq!((&records[0]["result"], &records[0]["image"]), (&"refused".into(), &serde_json::Value::Null));
    assert!(records[0]["error"].as_str().unwrap().contains("--privileged"), "{}", records[0]);
    assert_eq!((&records[1]["result"], &records[1]["image"]), (&"refused".into(), &"img".into()));
    assert!(records[1]["error"].as_str().unwrap().contains("--network"), "{}", records[1]);
    assert_eq!((&records[2]["result"], &records[2]["image"]), (&"error".into(), &"ghcr.io/none/such:1".into()));
    sb.ces(&["audit", "verify"]).ok();
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_the_run_before_the_container() {
    require_root("needs root");
    let w = TreWorld::new("audit/unrecorded-run");
    let not_a_dir = w.sb.dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    w.sb.configure(&format!("[audit]\npath = {:?}", not_a_dir.join("audit.jsonl").display().to_string()));
    let out = w.ces(&["run", &w.image, "sh", "-c", "echo ran > /safe_outputs/ran"]);
    assert!(out.fails().contains("cannot create the directory of the audit log"), "{}", out.stderr);
    let home: Vec<_> = std::fs::read_dir(&w.home).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(home.is_empty(), "no outputs or scratch: the container never ran: {home:?}");
}

/// Like the pull (see `verify_names_the_first_tampered_record`): a log that
/// ends with a damaged record takes no more records, so no container starts.
#[test]
fn a_damaged_audit_log_stops_the_run_before_the_container() {
    require_root("needs root");
    let w = TreWorld::new("audit/damaged-run");
    let mut text = std::fs::read_to_string(audit_path(&w.sb)).unwrap();
    text.truncate(text.len() - 5);
    std::fs::write(audit_path(&w.sb), text).unwrap();
    let out = w.ces(&["run", &w.image, "sh", "-c", "echo ran > /safe_outputs/ran"]);
    assert!(out.fails().contains("ends with a damaged record (line 2)"), "{}", out.stderr);
    let home: Vec<_> = std::fs::read_dir(&w.home).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(home.is_empty(), "no outputs or scratch: the container never ran: {home:?}");
}

// ----- every run is recorded: its start before its container, its end after -----

/// The workload of the interrupted runs below: it marks its outputs once it
/// runs, then sleeps (an argument no other process has, to find it).
const MARK_AND_SLEEP: &str = "touch /safe_outputs/up; exec sleep 6127";

/// Starts `cmd` (a `ces run --json ... sh -c MARK_AND_SLEEP`) and waits until
/// its container runs; returns ces, the run id and the outputs directory.
fn start_sleeper(mut cmd: std::process::Command) -> (std::process::Child, String, PathBuf) {
    use std::io::BufRead as _;
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let Some(line) = std::io::BufReader::new(stdout).lines().next() else {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        panic!("no start line: {stderr}");
    };
    let line = line.unwrap();
    let start: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(start["event"], "start", "{start}");
    let outputs = PathBuf::from(start["outputs"].as_str().unwrap());
    // A bound for a hung run only; nothing here measures time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !outputs.join("up").exists() {
        assert!(std::time::Instant::now() < deadline, "the container never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, start["id"].as_str().unwrap().to_owned(), outputs)
}

/// `ces run --json IMAGE sh -c MARK_AND_SLEEP`, as root, with the world's HOME.
fn sleeper(w: &TreWorld) -> std::process::Command {
    w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--json", &w.image, "sh", "-c", MARK_AND_SLEEP])
}

/// Sends `signal` to ces and waits for it to end.
fn signal_and_wait(child: &mut std::process::Child, signal: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), signal).unwrap();
    child.wait().unwrap();
}

/// The records of run `id`, as (event, result) in order.
fn events_of(records: &[serde_json::Value], id: &str) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r["run_id"] == id)
        .map(|r| (r["event"].as_str().unwrap().to_owned(), r["result"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Whether a process runs the interrupted runs' workload.
/// The tests that start a sleeper take turns: `sleeper_alive` looks at every
/// process on the host, so another test's sleeper would answer for theirs
/// (tests of one binary run in parallel).
static SLEEPERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the turn of a test that starts a sleeper.
fn sleepers_turn() -> std::sync::MutexGuard<'static, ()> {
    SLEEPERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sleeper_alive() -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.windows(11).any(|w| w == b"sleep\x006127\x00"))
    })
}

/// Nothing of the store's runs is left: no record, no native run record, no mount.
fn assert_no_run_left(store: &std::path::Path) {
    let entries = |dir: PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .map_or(Vec::new(), |d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
    };
    assert_eq!(entries(store.join("runs")), Vec::<String>::new(), "run records left");
    assert_eq!(entries(store.join("containers/.ces-runs")), Vec::<String>::new(), "native run records left");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let store = store.to_str().unwrap();
    assert!(!mountinfo.lines().any(|l| l.contains(store)), "still mounted under {store}:\n{mountinfo}");
}

#[test]
fn a_run_records_its_start_before_the_container_and_its_end_with_the_same_run_id() {
    require_root("runs a container");
    let w = TreWorld::new("audit/start-end");
    let out = w.ces(&["run", "--json", &w.image, "sh", "-c", "exit 4"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let records = w.sb.audit_records();
    assert_eq!(records.len(), 4, "the pull's start and end, the run's start and end: {records:#?}");
    let (start, end) = (&records[2], &records[3]);
    assert_eq!((start["event"].as_str(), end["event"].as_str()), (Some("run_start"), Some("run")));
    assert_eq!(start["run_id"], end["run_id"]);
    for field in ["image", "runtime", "project", "safe_data", "mounts", "limits", "env", "argv", "user", "outputs"] {
        assert_eq!(start[field], end[field], "{field}");
    }
    assert_eq!(start["pid"].as_u64().map(|p| p > 1), Some(true), "{start}");
    assert!(start.get("result").is_none() && start.get("exit").is_none(), "{start}");
    assert_eq!(end["exit"]["code"], 4);
    let table = w.sb.ces(&["audit", "show"]);
    let id = start["run_id"].as_str().unwrap();
    let lines: Vec<&str> = table.ok().lines().collect();
    assert!(
        lines[3].contains(" start ") && lines[3].trim_end().ends_with(&format!("run {id} started")),
        "{}",
        lines[3]
    );
    assert!(lines[4].contains(" run ") && lines[4].trim_end().ends_with("exit 4"), "{}", lines[4]);
    assert!(w.sb.ces(&["audit", "verify"]).ok().contains("4 records, the chain is whole"));
}

/// A run whose start is recorded but whose container never starts (here,
/// `--json` on a closed stdout) is closed at once with the error, not left
/// looking like a run that is still going.
#[test]
fn a_recorded_start_whose_container_never_starts_is_closed_with_the_error() {
    require_root("runs a container");
    let w = TreWorld::new("audit/closed-stdout");
    let mut cmd =
        w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--json", &w.image, "sh", "-c", "touch /safe_outputs/ran"]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let out = common::Run::from(child.wait_with_output().unwrap());
    assert_eq!(out.code, 125, "{}", out.stderr);
    let records = w.sb.audit_records();
    let id = records[2]["run_id"].as_str().unwrap();
    assert_eq!(
        events_of(&records, id),
        [("run_start".to_owned(), String::new()), ("run_end".to_owned(), "error".to_owned())],
        "{records:#?}"
    );
    assert!(records[3]["error"].as_str().unwrap().starts_with("the container was not started: "), "{}", records[3]);
    assert_eq!(records.len(), 4, "no run_not_started besides: {records:#?}");
    let home: Vec<_> = std::fs::read_dir(&w.home).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(home.is_empty(), "the container never ran: {home:?}");
    assert_no_run_left(&w.sb.store);
}

/// `kill -9` of ces (as root, the native runtime): the start is in the log;
/// `ces audit show` says the run is running or lost; the next `ces gc` stops
/// the container, unmounts and removes what the run left (no warning, no
/// record kept for later) and closes the run: "supervisor lost", once.
#[test]
fn a_run_whose_ces_is_killed_keeps_its_start_and_the_next_start_closes_it() {
    let _turn = sleepers_turn();
    require_root("runs a container");
    let w = TreWorld::new("audit/killed");
    let (mut child, id, outputs) = start_sleeper(sleeper(&w));
    let pid = child.id();
    signal_and_wait(&mut child, rustix::process::Signal::KILL);

    let records = w.sb.audit_records();
    assert_eq!(events_of(&records, &id), [("run_start".to_owned(), String::new())], "{records:#?}");
    let start = records.last().unwrap();
    assert_eq!((start["pid"].as_u64(), start["image"]["digest"].as_str()), (Some(pid.into()), Some(w.digest.as_str())));
    assert_eq!(start["outputs"], outputs.to_str().unwrap());
    let shown = w.sb.ces(&["audit", "show"]);
    assert!(
        shown.ok().lines().any(|l| l.trim_end().ends_with(&format!("run {id} started: running or lost"))),
        "{}",
        shown.stdout
    );

    let gc = w.ces(&["gc"]);
    gc.ok();
    assert!(!gc.stderr.contains("WARN") && !gc.stderr.contains("still mounted"), "{}", gc.stderr);
    assert_no_run_left(&w.sb.store);
    assert!(!std::path::Path::new("/run/ces").join(&id).exists(), "the run's mount points are removed");
    assert!(!sleeper_alive(), "the container was stopped");
    assert!(outputs.join("up").is_file(), "outputs are kept");

    let records = w.sb.audit_records();
    assert_eq!(
        events_of(&records, &id),
        [("run_start".to_owned(), String::new()), ("run_end".to_owned(), "supervisor_lost".to_owned())]
    );
    let end = records.last().unwrap();
    assert_eq!((&end["user"], &end["pid"], &end["outputs"]), (&start["user"], &start["pid"], &start["outputs"]));
    // Closed once: the next start finds nothing to close.
    w.ces(&["gc"]).ok();
    assert_eq!(w.sb.audit_records().len(), records.len());
    let shown = w.sb.ces(&["audit", "show"]);
    let table = shown.ok();
    assert!(!table.contains("running or lost"), "{table}");
    assert!(
        table.lines().any(|l| l.contains(" end ") && l.trim_end().ends_with(&format!("run {id} supervisor lost"))),
        "{table}"
    );
    w.sb.ces(&["audit", "verify"]).ok();
}

/// SIGQUIT to ces: whether ces passes it on (the container then ends and
/// ces records it) or dies of it, the start is in the log, and after the
/// next start the run has exactly one end.
#[test]
fn a_run_whose_ces_gets_sigquit_is_recorded_and_closed_once() {
    let _turn = sleepers_turn();
    require_root("runs a container");
    let w = TreWorld::new("audit/sigquit");
    let (mut child, id, _outputs) = start_sleeper(sleeper(&w));
    signal_and_wait(&mut child, rustix::process::Signal::QUIT);
    assert_eq!(events_of(&w.sb.audit_records(), &id)[0].0, "run_start");
    w.ces(&["run", &w.image, "true"]).ok();
    let events = events_of(&w.sb.audit_records(), &id);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(events[1].0.as_str(), "run" | "run_end"), "{events:?}");
    assert!(!sleeper_alive());
    assert_no_run_left(&w.sb.store);
    w.sb.ces(&["audit", "verify"]).ok();
}

/// Root under sudo: the start is the sudo user's, and so is the end that a
/// later `ces gc` by root itself (no `SUDO_*`) writes for it. The note the
/// close-out trusts for that (`runs/<id>/audit.json`) is root's: the user
/// can neither write it nor put another in its place.
#[test]
fn under_sudo_a_killed_run_is_closed_for_the_sudo_user_not_the_cleaner() {
    let _turn = sleepers_turn();
    require_root("runs a container");
    let user = common::test_user();
    let w = TreWorld::new("audit/sudo-killed");
    w.for_another_user();
    let (mut child, id, _outputs) = start_sleeper(user.sudo(&w.sb, sleeper(&w)));
    let note = w.sb.store.join("runs").join(&id).join("audit.json");
    let before = std::fs::read(&note).unwrap();
    let forge = r#"{"user":{"name":"root","uid":0},"pid":1}"#;
    for script in ["printf %s \"$1\" > \"$2\"", "printf %s \"$1\" > \"$2.new\" && mv \"$2.new\" \"$2\""] {
        let argv = ["sh", "-c", script, "sh", forge, note.to_str().unwrap()];
        let out = w.sb.run(user.setpriv(&w.sb, &argv));
        assert!(out.code != 0 && out.stderr.contains("Permission denied"), "{script}: {}", out.stderr);
    }
    assert_eq!(std::fs::read(&note).unwrap(), before);
    signal_and_wait(&mut child, rustix::process::Signal::KILL);
    w.ces(&["gc"]).ok();
    let records = w.sb.audit_records();
    assert_eq!(events_of(&records, &id).len(), 2, "{records:#?}");
    let (start, end) = (&records[records.len() - 2], &records[records.len() - 1]);
    let sudo_user = serde_json::json!({"name": common::TEST_USER, "uid": user.uid});
    assert_eq!((&start["user"], &end["user"]), (&sudo_user, &sudo_user));
    assert_eq!(end["result"], "supervisor_lost");
    assert!(!sleeper_alive());
    assert_no_run_left(&w.sb.store);
}

/// Rootless: the unprivileged user's own store and log; `kill -9` of their
/// ces, then their next `ces run` closes the run in their log.
#[test]
fn a_rootless_run_whose_ces_is_killed_is_closed_in_the_users_own_log() {
    let _turn = sleepers_turn();
    require_root("creates a user and delegates cgroups");
    let user = common::test_user();
    let w = TreWorld::new("audit/rootless-killed");
    std::fs::create_dir_all(w.home.join("safe_data")).unwrap();
    std::fs::set_permissions(w.sb.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The user's own store (and log in it): pulled again, as the user.
    let store = w.sb.dir.path().join("user-store");
    std::fs::create_dir_all(&store).unwrap();
    for dir in [&w.home, &w.home.join("safe_data"), &store] {
        user.chown(dir);
    }
    let config =
        std::fs::read_to_string(&w.sb.config).unwrap().replace(w.sb.store.to_str().unwrap(), store.to_str().unwrap());
    std::fs::write(&w.sb.config, config).unwrap();
    w.sb.ces(&["system", "setup", "--user", common::TEST_USER]).ok();
    let as_user = |args: &[&str]| {
        let mut argv = vec![common::user_bin(env!("CARGO_BIN_EXE_ces"))];
        argv.extend_from_slice(args);
        let mut cmd = user.setpriv(&w.sb, &argv);
        cmd.env("HOME", &w.home);
        cmd
    };
    w.sb.run(as_user(&["pull", "--quiet", &w.image])).ok();
    let (mut child, id, _outputs) =
        start_sleeper(as_user(&["run", "--json", "-m", "0.25", &w.image, "sh", "-c", MARK_AND_SLEEP]));
    signal_and_wait(&mut child, rustix::process::Signal::KILL);
    let log = store.join("audit.jsonl");
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert_eq!(events_of(&read(), &id), [("run_start".to_owned(), String::new())]);

    let next = w.sb.run(as_user(&["run", &w.image, "true"]));
    next.ok();
    assert!(!next.stderr.contains("WARN"), "{}", next.stderr);
    let records = read();
    let events = events_of(&records, &id);
    assert_eq!(events[1], ("run_end".to_owned(), "supervisor_lost".to_owned()), "{events:?}");
    let end = records.iter().find(|r| r["event"] == "run_end").unwrap();
    assert_eq!(end["user"]["uid"], user.uid);
    assert!(!sleeper_alive());
    assert_no_run_left(&store);
    let verify = user.setpriv(&w.sb, &[common::user_bin(env!("CARGO_BIN_EXE_ces")), "audit", "verify"]);
    w.sb.run(verify).ok();
}

// ----- /safe_data through a link -----

/// `~/safe_data -> <safe_data_root>/<project>` is that project's data: the
/// record names the project and the real path, and the project's mode
/// applies (rw here, where the global mode is ro). A link anywhere else is no
/// project's: global mode, the real path recorded.
#[test]
fn a_home_safe_data_link_is_attributed_to_the_project_it_leads_to() {
    require_root("runs a container");
    let other = "linked-project";
    let tre = format!("safe_data_mode = \"ro\"\n\n[tre.projects.{other}]\nsafe_data_mode = \"rw\"");
    let w = TreWorld::with("audit/safe-data-link", &ces_testkit::busybox_image(), &tre);
    let project = w.data_root.join(other);
    std::fs::create_dir_all(&project).unwrap();
    let link = w.home.join("safe_data");
    std::os::unix::fs::symlink(&project, &link).unwrap();

    let out = w.ces(&["run", &w.image, "sh", "-c", "echo written > /safe_data/mark"]);
    out.ok();
    assert_eq!(std::fs::read_to_string(project.join("mark")).unwrap(), "written\n", "the project's rw mode applied");
    let records = w.sb.audit_records();
    for record in &records[records.len() - 2..] {
        assert_eq!(record["project"], other, "{record}");
        let real = std::fs::canonicalize(&project).unwrap();
        assert_eq!(record["safe_data"], serde_json::json!({"path": real, "mode": "rw", "link": link}), "{record}");
    }

    // Outside the data root: no project, the global (ro) mode, the real path.
    let elsewhere = w.sb.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let out = w.ces(&["run", &w.image, "sh", "-c", "echo x > /safe_data/mark"]);
    assert_ne!(out.code, 0, "read-only: {}", out.stderr);
    assert!(!elsewhere.join("mark").exists());
    let run = w.sb.audit_records().pop().unwrap();
    assert_eq!(run["project"], serde_json::Value::Null, "{run}");
    let real = std::fs::canonicalize(&elsewhere).unwrap();
    assert_eq!(run["safe_data"], serde_json::json!({"path": real, "mode": "ro", "link": link}), "{run}");
}
