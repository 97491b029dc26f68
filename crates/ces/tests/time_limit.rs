//! `--time-limit` and `[run] max_time_limit`: at the limit the run ends as
//! for a `SIGTERM` to ces (exit 124, `time_limit` in the audit record,
//! outputs sealed, scratch removed); a request over the maximum is refused
//! before anything starts; with none asked, the maximum applies. As root, as
//! root for another user (sudo), and rootless.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{Mode, World};

fn world(test: &str, mode: Mode) -> World {
    World::new(&mode.repo("time-limit", test), mode)
}

/// `ces run -q OPTIONS IMAGE sh -c '...; sleep 100'`, which only the limit ends.
fn sleeper(w: &World, options: &[&str]) -> common::Run {
    let script = "touch /safe_outputs/started; sleep 100; touch /safe_outputs/survived";
    w.sb.run(w.run_with(options, &["sh", "-c", script]))
}

/// The run ended at its limit and everything after was a normal end.
#[track_caller]
fn ended_at_the_limit(w: &World, run: &common::Run, limit_s: u64) {
    assert_eq!(run.code, 124, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    let outputs = w.outputs();
    assert!(outputs.join("started").exists(), "the workload ran");
    assert!(!outputs.join("survived").exists(), "the workload was stopped");
    assert!(outputs.join("ces-manifest.json").is_file(), "outputs sealed");
    assert_eq!(w.scratch_left(), Vec::<String>::new(), "scratch removed");
    let records = w.sb.audit_records();
    let end = records.iter().rev().find(|r| r["event"] == "run").unwrap();
    assert_eq!(end["exit"]["code"], 124, "{end}");
    assert_eq!(end["exit"]["time_limit"], true, "{end}");
    assert_eq!(end["limits"]["time_limit"], limit_s, "{end}");
    assert_eq!(end["user"]["uid"], w.uid(), "{end}");
    assert!(end["outputs_manifest"].is_string(), "{end}");
}

fn time_limit_ends_the_run(mode: Mode) {
    let w = world("ends", mode);
    let run = sleeper(&w, &["--time-limit", "2s"]);
    ended_at_the_limit(&w, &run, 2);
}

#[test]
fn time_limit_ends_the_run_as_root() {
    time_limit_ends_the_run(Mode::Root);
}

#[test]
fn time_limit_ends_the_run_under_sudo() {
    time_limit_ends_the_run(Mode::Sudo);
}

#[test]
fn time_limit_ends_the_run_rootless() {
    time_limit_ends_the_run(Mode::Rootless);
}

/// `[run] max_time_limit = "2s"`: `--time-limit 1h` is refused (nothing
/// started, the refusal recorded), and a run that asks for none gets 2 s.
fn the_maximum_refuses_and_defaults(mode: Mode) {
    let w = world("max", mode);
    w.sb.configure("[run]\nmax_time_limit = \"2s\"\n");
    let run = sleeper(&w, &["--time-limit", "1h"]);
    let err = run.fails();
    assert!(err.contains("--time-limit 1h is longer than this machine's maximum (2s)"), "{err}");
    assert_eq!(w.outputs_dirs(), Vec::<std::path::PathBuf>::new(), "nothing started");
    assert_eq!(w.scratch_left(), Vec::<String>::new());
    let records = w.sb.audit_records();
    assert!(records.iter().all(|r| r["event"] != "run_start"), "nothing started: {records:?}");
    let refused = records.last().unwrap();
    assert_eq!(refused["result"], "refused", "{refused}");

    let run = sleeper(&w, &[]);
    ended_at_the_limit(&w, &run, 2);
}

#[test]
fn the_maximum_refuses_longer_and_is_the_default_as_root() {
    the_maximum_refuses_and_defaults(Mode::Root);
}

#[test]
fn the_maximum_refuses_longer_and_is_the_default_under_sudo() {
    the_maximum_refuses_and_defaults(Mode::Sudo);
}

#[test]
fn the_maximum_refuses_longer_and_is_the_default_rootless() {
    the_maximum_refuses_and_defaults(Mode::Rootless);
}
