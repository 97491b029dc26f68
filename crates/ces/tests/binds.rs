//! Bind mounts that `[run] bind_roots` allows (`-v`, `--mount type=bind`):
//! a directory of the user's under a root is bound (rw or ro, relative
//! sources from the current directory) and listed in the plan and the audit
//! record; outside the roots, through a link leading out, someone else's
//! directory, or over the TRE contract's directories, it is refused before
//! anything runs. As root, as root for another user (sudo), and rootless.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use common::{Mode, World, test_user};

/// A world whose config allows binds under its HOME.
fn world(test: &str, mode: Mode) -> World {
    let w = World::new(&mode.repo("binds", test), mode);
    w.sb.configure(&format!("[run]\nbind_roots = [{:?}]\n", w.home.display().to_string()));
    w
}

/// A new directory at `path`, the user's.
fn dir(w: &World, path: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&path).unwrap();
    if w.mode != Mode::Root {
        w.user.chown(&path);
    }
    path
}

fn allowed_and_written(mode: Mode) {
    let w = world("allowed", mode);
    let data = dir(&w, w.home.join("pgdata"));
    let ro = dir(&w, w.home.join("ref"));
    std::fs::write(ro.join("in"), "reference").unwrap();
    let ro_mount = format!("type=bind,src={},dst=/ref,ro", ro.display());
    let script = "echo row > /var/lib/db/table && cat /ref/in && ! touch /ref/x 2>/dev/null";
    let options = ["-v", "./pgdata:/var/lib/db", "--mount", &ro_mount];
    let mut args = vec!["run", "-q"];
    args.extend(options);
    args.extend([w.image.as_str(), "sh", "-c", script]);
    let out = w.ces(&args).ok().to_owned();
    assert_eq!(out.trim(), "reference");
    let written = data.join("table");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "row\n");
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), w.uid(), "written as the user");
    assert!(!ro.join("x").exists());

    // The plan and the audit record list both, by real path.
    let mut dry = vec!["run", "--dry-run"];
    dry.extend(options);
    dry.extend([w.image.as_str(), "true"]);
    let plan = w.ces(&dry).ok().to_owned();
    let real = std::fs::canonicalize(&data).unwrap();
    assert!(
        plan.lines()
            .any(|l| l.trim_start().starts_with("/var/lib/db ") && l.ends_with(&format!("rw {}", real.display()))),
        "{plan}"
    );
    assert!(plan.contains("/ref"), "{plan}");
    let start = w.sb.audit_records().into_iter().find(|r| r["event"] == "run_start").unwrap();
    let mounts = start["mounts"].as_array().unwrap();
    let bind = mounts.iter().find(|m| m["destination"] == "/var/lib/db").unwrap();
    assert_eq!((bind["source"].as_str().unwrap(), &bind["mode"]), (real.to_str().unwrap(), &"rw".into()));
    assert!(mounts.iter().any(|m| m["destination"] == "/ref" && m["mode"] == "ro"), "{mounts:?}");
}

#[test]
fn a_bind_under_a_root_is_written_by_the_container_as_root() {
    allowed_and_written(Mode::Root);
}

#[test]
fn a_bind_under_a_root_is_written_by_the_container_under_sudo() {
    allowed_and_written(Mode::Sudo);
}

#[test]
fn a_bind_under_a_root_is_written_by_the_container_rootless() {
    allowed_and_written(Mode::Rootless);
}

fn refused(mode: Mode) {
    let w = world("refused", mode);
    let outside = dir(&w, w.sb.dir.path().join("outside"));
    std::fs::write(outside.join("secret"), "s").unwrap();
    std::os::unix::fs::symlink(&outside, w.home.join("escape")).unwrap();
    let data = dir(&w, w.home.join("data"));
    // Someone else's: root's for a user, the test user's for root.
    let foreign = w.home.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    if mode == Mode::Root {
        test_user().chown(&foreign);
    }
    let (outside, data, foreign) =
        (outside.display().to_string(), data.display().to_string(), foreign.display().to_string());
    for (volume, reason) in [
        (format!("{outside}:/x"), "is not under a directory that [run] bind_roots allows"),
        ("./escape:/x".to_owned(), "is not under a directory that [run] bind_roots allows"),
        (format!("{foreign}:/x"), "the source directory is not yours"),
        (format!("{data}:/safe_outputs"), "it cannot go at /, /safe_data, /safe_outputs"),
        (format!("{data}:/"), "it cannot go at /"),
        ("./missing:/x".to_owned(), "the source directory does not exist"),
    ] {
        let run = w.ces(&["run", "-q", "-v", &volume, &w.image, "cat", "/x/secret"]);
        let err = run.fails();
        assert!(err.contains(reason), "{volume}: {err}");
        assert!(err.contains("hint:") || reason.starts_with("it cannot"), "{volume}: {err}");
    }
    // Without bind_roots, no bind at all; refused runs are recorded as refused.
    let config = std::fs::read_to_string(&w.sb.config).unwrap();
    std::fs::write(&w.sb.config, config.replace("bind_roots", "# bind_roots")).unwrap();
    let err = w.ces(&["run", "-q", "-v", &format!("{data}:/x"), &w.image, "true"]).fails().to_owned();
    assert!(err.contains("bind mounts are not allowed on this machine"), "{err}");
    let records = w.sb.audit_records();
    assert!(records.iter().all(|r| r["event"] != "run_start"), "nothing ran");
    assert!(records.iter().filter(|r| r["result"] == "refused").count() >= 7, "{records:?}");
    assert!(!w.home.read_dir().unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("outputs_")));
}

#[test]
fn binds_outside_the_roots_are_refused_as_root() {
    refused(Mode::Root);
}

#[test]
fn binds_outside_the_roots_are_refused_under_sudo() {
    refused(Mode::Sudo);
}

#[test]
fn binds_outside_the_roots_are_refused_rootless() {
    refused(Mode::Rootless);
}
