//! `ces ps` and `ces stop`: a running run is listed (id, name, image, its
//! ces's pid) until its ces ends, even by `kill -9`; `ces stop` by id or name
//! ends it as a `SIGTERM` to its ces would (exit 143, the end recorded); a
//! user sees and stops only their own runs, root anyone's in its store; a
//! second `ces run -n NAME` while NAME runs is refused before anything starts.
//! As root, as root for another user (sudo), and rootless.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mode, Run, World};
use serde_json::Value;

fn world(test: &str, mode: Mode) -> World {
    World::new(&mode.repo("ps-stop", test), mode)
}

/// `ces ps --json` in `w`'s mode, parsed.
fn ps(w: &World) -> Vec<Value> {
    ps_of(&w.sb.run(w.command(&["ps", "--json"])))
}

fn ps_of(run: &Run) -> Vec<Value> {
    serde_json::from_str(run.ok()).unwrap_or_else(|e| panic!("ces ps --json: {e}: {}", run.stdout))
}

/// Starts `ces run -n NAME` of a workload that only a signal ends, and
/// waits (generously) until `ces ps` lists it and the workload runs.
fn start(w: &World, name: &str) -> (Child, Value) {
    let script = "touch /safe_outputs/ready; exec sleep 1000";
    let mut child =
        w.run_with(&["-n", name], &["sh", "-c", script]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child.stderr.as_mut().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("ces run -n {name} ended before its workload was ready ({status}): {stderr}");
        }
        let listed = ps(w).into_iter().find(|r| r["name"] == name);
        if let Some(run) = listed {
            let ready = std::path::Path::new(run["outputs"].as_str().unwrap()).join("ready");
            if ready.exists() {
                return (child, run);
            }
        }
        assert!(Instant::now() < deadline, "run {name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `ces run` to end (the workload only ends of a signal).
fn exit_code(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The end record of run `id`.
fn end_record(w: &World, id: &str) -> Value {
    let records = w.sb.audit_records();
    records.into_iter().find(|r| r["event"] == "run" && r["run_id"] == id).unwrap_or_else(|| panic!("no end of {id}"))
}

/// The run ended as for a SIGTERM to its ces: exit 143, recorded, cleaned up.
#[track_caller]
fn stopped(w: &World, child: Child, id: &str) {
    let (code, stderr) = exit_code(child);
    assert_eq!(code, Some(143), "{stderr}");
    let end = end_record(w, id);
    assert_eq!((&end["exit"]["code"], &end["exit"]["signal"]), (&143.into(), &15.into()), "{end}");
    assert_ne!(end["exit"]["time_limit"], true, "{end}");
    assert_eq!(w.scratch_left(), Vec::<String>::new());
    assert!(ps(w).iter().all(|r| r["id"] != id), "a stopped run is not listed");
}

fn ps_lists_until_the_ces_dies(mode: Mode) {
    let w = world("ps", mode);
    assert_eq!(ps(&w), Vec::<Value>::new());
    let (mut child, run) = start(&w, "job");
    let id = run["id"].as_str().unwrap().to_owned();
    assert_eq!(run["image"], w.image.as_str(), "{run}");
    assert_eq!(run["pid"], child.id(), "{run}");
    assert_eq!(run["user"]["uid"], w.uid(), "{run}");
    let table = w.ces(&["ps"]).ok().to_owned();
    let row = table.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(" job ") && row.contains(&w.image), "{table}");

    // kill -9: the record stays, but no ces holds it any more.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ps(&w), Vec::<Value>::new(), "a run whose ces died is not listed");
    assert!(!w.ces(&["ps"]).ok().contains(&id));
    // What the dead ces left is cleaned up (and its end recorded) by gc.
    w.ces(&["gc"]).ok();
    let lost = w.sb.audit_records().into_iter().find(|r| r["event"] == "run_end" && r["run_id"] == id.as_str());
    assert_eq!(lost.unwrap()["result"], "supervisor_lost");
}

#[test]
fn ps_lists_a_run_until_its_ces_is_killed_as_root() {
    ps_lists_until_the_ces_dies(Mode::Root);
}

#[test]
fn ps_lists_a_run_until_its_ces_is_killed_under_sudo() {
    ps_lists_until_the_ces_dies(Mode::Sudo);
}

#[test]
fn ps_lists_a_run_until_its_ces_is_killed_rootless() {
    ps_lists_until_the_ces_dies(Mode::Rootless);
}

fn stop_by_id_and_by_name(mode: Mode) {
    let w = world("stop", mode);
    let (child, run) = start(&w, "first");
    let id = run["id"].as_str().unwrap();
    w.ces(&["stop", id]).ok();
    stopped(&w, child, id);

    let (child, run) = start(&w, "second");
    w.ces(&["stop", "second"]).ok();
    stopped(&w, child, run["id"].as_str().unwrap());
    let err = w.ces(&["stop", "second"]).fails().to_owned();
    assert!(err.contains("no run \"second\" is running"), "{err}");
}

#[test]
fn stop_by_id_and_by_name_as_root() {
    stop_by_id_and_by_name(Mode::Root);
}

#[test]
fn stop_by_id_and_by_name_under_sudo() {
    stop_by_id_and_by_name(Mode::Sudo);
}

#[test]
fn stop_by_id_and_by_name_rootless() {
    stop_by_id_and_by_name(Mode::Rootless);
}

/// `ces ARGS` as the test user under sudo, in `w`'s store.
fn as_the_user_under_sudo(w: &World, args: &[&str]) -> Command {
    let cmd = w.sb.command(env!("CARGO_BIN_EXE_ces"), args);
    w.user.sudo(&w.sb, cmd)
}

/// Root's run in the system store: the test user (through sudo, where ces
/// runs as root) neither sees nor stops it, by id or by name.
#[test]
fn another_user_cannot_stop_my_run() {
    let w = world("others", Mode::Root);
    let (child, run) = start(&w, "mine");
    let id = run["id"].as_str().unwrap();
    assert_eq!(ps_of(&w.sb.run(as_the_user_under_sudo(&w, &["ps", "--json"]))), Vec::<Value>::new());
    for query in [id, "mine"] {
        let attempt = w.sb.run(as_the_user_under_sudo(&w, &["stop", query]));
        let err = attempt.fails();
        assert!(err.contains(&format!("no run {query:?} is running")), "{err}");
    }
    assert!(ps(&w).iter().any(|r| r["id"] == id), "still running");
    w.ces(&["stop", "mine"]).ok();
    stopped(&w, child, id);
}

/// The test user's run (under sudo, in the system store): root sees it and
/// stops it by name.
#[test]
fn root_can_stop_anyones_run() {
    let w = world("root-stops", Mode::Sudo);
    let (child, run) = start(&w, "theirs");
    assert_eq!(run["user"]["uid"], w.user.uid, "{run}");
    let id = run["id"].as_str().unwrap();
    let as_root = |args: &[&str]| w.sb.ces(args);
    assert!(ps_of(&as_root(&["ps", "--json"])).iter().any(|r| r["id"] == id));
    as_root(&["stop", "theirs"]).ok();
    stopped(&w, child, id);
}

/// `ces run -n x` while a run named x runs: refused (and recorded so)
/// before anything is created; once x has ended, the name is free.
fn a_name_is_unique_among_running_runs(mode: Mode) {
    let w = world("names", mode);
    let (child, run) = start(&w, "x");
    let id = run["id"].as_str().unwrap();
    let second = w.sb.run(w.run_with(&["-n", "x"], &["touch", "/safe_outputs/second"]));
    let err = second.fails();
    assert!(err.contains(&format!("a run named \"x\" is running already ({id})")), "{err}");
    assert_eq!(w.outputs_dirs().len(), 1, "nothing created: {:?}", w.outputs_dirs());
    let refused = w.sb.audit_records().into_iter().rev().find(|r| r["event"] == "run_not_started").unwrap();
    assert_eq!(refused["result"], "refused", "{refused}");
    assert_eq!(w.sb.audit_records().iter().filter(|r| r["event"] == "run_start").count(), 1);
    w.ces(&["stop", "x"]).ok();
    stopped(&w, child, id);
    w.sb.run(w.run_with(&["-n", "x"], &["true"])).ok();
}

#[test]
fn a_name_is_unique_among_running_runs_as_root() {
    a_name_is_unique_among_running_runs(Mode::Root);
}

#[test]
fn a_name_is_unique_among_running_runs_under_sudo() {
    a_name_is_unique_among_running_runs(Mode::Sudo);
}

#[test]
fn a_name_is_unique_among_running_runs_rootless() {
    a_name_is_unique_among_running_runs(Mode::Rootless);
}

/// In a store several hosts share (a cluster's nodes and its login host), a
/// run recorded by another host's ces is that host's: not listed, not
/// stopped and not cleaned up here, whatever its pid means on this host.
/// (The other host is played by rewriting the host in this run's record.)
#[test]
fn another_hosts_runs_are_left_to_it() {
    let w = world("hosts", Mode::Root);
    let (mut child, run) = start(&w, "theirs");
    let id = run["id"].as_str().unwrap().to_owned();
    let dir = w.sb.store.join("runs").join(&id);
    // Sets the host `file` names (at `pointer`), returning what it was.
    let set_host = |file: &str, pointer: &str, host: Value| -> Value {
        let path = dir.join(file);
        let mut json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let slot = json.pointer_mut(pointer).unwrap_or_else(|| panic!("{file}: no {pointer}"));
        let was = std::mem::replace(slot, host);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        was
    };
    let elsewhere = Value::from("elsewhere/0123456789abcdef0123456789abcdef");

    let ours = set_host("audit.json", "/run/host", elsewhere.clone());
    assert!(ours.as_str().is_some_and(|h| !h.is_empty()), "the note names its host: {ours}");
    assert!(ps(&w).iter().all(|r| r["id"] != id.as_str()), "another host's run is not listed");
    let err = w.ces(&["stop", &id]).fails().to_owned();
    assert!(err.contains("is running"), "{err}");
    assert!(child.try_wait().unwrap().is_none(), "its ces was not signalled");
    set_host("audit.json", "/run/host", ours.clone());
    assert!(ps(&w).iter().any(|r| r["id"] == id.as_str()));

    // Its ces dies: only its own host cleans up after it.
    child.kill().unwrap();
    child.wait().unwrap();
    let ours = set_host("record.json", "/host", elsewhere);
    w.ces(&["gc"]).ok();
    let lost =
        |w: &World| w.sb.audit_records().into_iter().any(|r| r["event"] == "run_end" && r["run_id"] == id.as_str());
    assert!(!lost(&w), "its end is not this host's to record");
    assert_eq!(w.scratch_left(), [format!("scratch_{id}")], "its scratch stays");
    assert!(dir.is_dir());
    set_host("record.json", "/host", ours);
    w.ces(&["gc"]).ok();
    assert!(lost(&w), "this host's own run is cleaned up");
    assert_eq!(w.scratch_left(), Vec::<String>::new());
}
