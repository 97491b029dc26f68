//! The podman backend's sandbox, with the real binary and real podman (as
//! root, as CI runs; the rootless refusal as the test kit's unprivileged
//! user): ces's seccomp profile, out-of-memory kills, a container that does
//! not outlive a killed ces, and refusals before anything is created.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ces_testkit::layer::{Entry, Layer, busybox_entries};
use ces_testkit::mountinfo;
#[cfg(target_arch = "x86_64")]
use ces_testkit::probe;
use ces_testkit::{ImageSpec, busybox_image};
use common::{RootlessWorld, Run, TreWorld, require_root, test_user};

/// Root and podman are part of the test environment (scripts/setup, CI as
/// root): a test that needs them fails loudly rather than passing unrun.
fn require_root_and_podman() {
    require_root("runs podman as root");
    let podman = Command::new("podman").arg("--version").stdout(Stdio::null()).status();
    assert!(podman.is_ok_and(|s| s.success()), "podman is missing: run scripts/setup");
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// podman's containers named `name` (running or not).
fn containers_named(name: &str) -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "--all", "--format", "{{.Names}} {{.State}}", "--filter", &format!("name=^{name}$")])
        .output()
        .unwrap();
    assert!(out.status.success(), "podman ps: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// Removes the container `name` when dropped, so that a failed test leaves
/// nothing running.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", "--ignore", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What `dir` holds.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn run_records(w: &TreWorld) -> Vec<String> {
    match std::fs::read_dir(w.sb.store.join("runs")) {
        Ok(_) => entries(&w.sb.store.join("runs")),
        Err(_) => Vec::new(),
    }
}

/// Waits (up to a minute: podman is slow to start on a busy machine) for
/// `done`, polling.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Under podman, the container gets ces's seccomp profile, not podman's
/// default: no user namespaces, no kernel keyring, no vsock, no 32-bit
/// entry points; forks (clone without namespace flags) still work. With
/// podman's default profile (the old code) `unshare -U`, keyctl, vsock and
/// the i386 socketcall all succeed. Its root filesystem is ces's overlay,
/// never synced (`volatile`: thrown away at the run's end).
#[test]
#[cfg(target_arch = "x86_64")]
fn podman_runs_with_ces_seccomp_profile() {
    require_root_and_podman();
    let mut layer = busybox_entries();
    for (name, executable) in probe::probes() {
        layer.push(Entry::file_mode(&format!("bin/probe-{name}"), executable, 0o755));
    }
    let image = ImageSpec::new(vec![Layer::new(layer)])
        .env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        .cmd(&["sh"]);
    let w = TreWorld::with("podman/seccomp", &image, "");
    let script = "for p in inet vsock keyctl i386-socket i386-socketcall x32-getpid; \
                  do /bin/probe-$p; echo \"$p=$?\" >> /safe_outputs/r; done; \
                  unshare -U true 2>/dev/null; echo \"unshare=$?\" >> /safe_outputs/r; \
                  sh -c 'exit 7'; echo \"fork=$?\" >> /safe_outputs/r; ";
    let script = format!("{script}{} > /safe_outputs/root", mountinfo::ROOT_MOUNT_LINE);
    let out = w.ces(&["run", "--runtime", "podman", "--json", &w.image, "sh", "-c", &script]);
    out.ok();
    let outputs = PathBuf::from(json_lines(&out.stdout)[1]["outputs"].as_str().unwrap());
    let result = std::fs::read_to_string(outputs.join("r")).unwrap();
    // 100: the call worked; 1: EPERM; 159: killed by SIGSYS (runc's
    // answer to an architecture the profile does not list).
    for expected in [
        "inet=100",
        "vsock=1",
        "keyctl=1",
        "i386-socket=159",
        "i386-socketcall=159",
        "x32-getpid=159",
        "unshare=1",
        "fork=7",
    ] {
        assert!(result.lines().any(|l| l == expected), "{expected} not in\n{result}");
    }
    let root = std::fs::read_to_string(outputs.join("root")).unwrap();
    assert_eq!(mountinfo::fs_and_options(&root).map(|(fs, _)| fs), Some("overlay"), "{root}");
    if ces_image::rootfs::overlay_volatile() {
        assert!(mountinfo::is_volatile_overlay(&root), "{root}");
    }
}

/// An out-of-memory kill is reported as one (end line, JSON, audit record,
/// outputs manifest), and conmon's `oom` file does not land in the caller's
/// directory; the container is removed after it was inspected.
#[test]
fn podman_out_of_memory_is_reported_and_leaves_nothing_behind() {
    require_root_and_podman();
    let w = TreWorld::with("podman/oom", &busybox_image(), "");
    let cwd = w.sb.dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let mut cmd = w.command(
        env!("CARGO_BIN_EXE_ces"),
        &[
            "run",
            "--runtime",
            "podman",
            "--json",
            "-m",
            "0.1",
            &w.image,
            "sh",
            "-c",
            // One line of 300 MiB: tail must hold it all.
            "dd if=/dev/zero bs=1M count=300 2>/dev/null | tail > /dev/null",
        ],
    );
    cmd.current_dir(&cwd);
    let out = w.sb.run(cmd);
    assert_eq!(out.code, 137, "{}\n{}", out.stdout, out.stderr);
    let events = json_lines(&out.stdout);
    let id = events[0]["id"].as_str().unwrap();
    assert_eq!(events[1]["exit"]["kind"], "out_of_memory", "{}", out.stdout);
    assert!(out.stderr.contains(&format!("Run {id} was killed: out of memory")), "{}", out.stderr);
    let record = w.sb.audit_records().into_iter().rev().find(|r| r["run_id"] == id && r["exit"].is_object()).unwrap();
    assert_eq!(record["exit"]["oom"], true, "{record}");
    let outputs = PathBuf::from(events[1]["outputs"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs.join("ces-manifest.json")).unwrap()).unwrap();
    assert_eq!(find_key(&manifest, "oom"), Some(&serde_json::Value::Bool(true)), "{manifest}");
    assert_eq!(entries(&cwd), Vec::<String>::new(), "nothing in the caller's directory");
    assert_eq!(containers_named(&format!("ces-{id}")), Vec::<String>::new(), "the container is removed");
    assert!(run_records(&w).is_empty());
}

/// The first value of `key` anywhere in `value`.
fn find_key<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map.get(key).or_else(|| map.values().find_map(|v| find_key(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// A container that writes `/safe_outputs/started`, then keeps checking that
/// its scratch file is there (writing `saw-scratch-removed` if it is not).
const WATCH_SCRATCH: &str = "touch /scratch/keep /safe_outputs/started; \
                             while sleep 0.05; do test -e /scratch/keep || touch /safe_outputs/saw-scratch-removed; done";

/// A podman run of `script` (which writes `/safe_outputs/started`), started
/// in the background. Returns ces and the run id once the file is there.
fn start_long_run(w: &TreWorld, sudo: bool, script: &str) -> (Child, String, Removed) {
    let mut cmd = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--runtime", "podman", &w.image, "sh", "-c", script]);
    if sudo {
        w.for_another_user();
        let user = test_user();
        cmd = user.sudo(&w.sb, cmd);
    }
    let log = w.sb.dir.path().join("ces.log");
    let mut child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let mut outputs = None;
    wait_until("the container's first write", || {
        outputs = entries(&w.home).into_iter().find(|n| n.starts_with("outputs_"));
        let ended = child.try_wait().unwrap();
        assert!(ended.is_none(), "ces ended ({ended:?}): {}", std::fs::read_to_string(&log).unwrap());
        outputs.as_ref().is_some_and(|o| w.home.join(o).join("started").exists())
    });
    let id = outputs.unwrap().strip_prefix("outputs_").unwrap().to_owned();
    let removed = Removed(format!("ces-{id}"));
    assert_eq!(containers_named(&removed.0).len(), 1, "running");
    (child, id, removed)
}

fn kill9(pid: u32) {
    let ok = Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    assert!(ok.success());
}

/// `kill -9` of ces: its watchdog removes the container at once, with no
/// other ces start (the old code left it running, unsupervised, for good);
/// the next start removes the scratch; outputs are kept. As root, and as
/// root through sudo for the test user.
#[test]
fn a_killed_ces_takes_its_podman_container_with_it() {
    require_root_and_podman();
    for sudo in [false, true] {
        let w = TreWorld::with("podman/kill", &busybox_image(), "");
        let (mut ces, id, _removed) = start_long_run(&w, sudo, WATCH_SCRATCH);
        kill9(ces.id());
        ces.wait().unwrap();
        let name = format!("ces-{id}");
        wait_until("the watchdog removes the container", || containers_named(&name).is_empty());
        w.ces(&["gc"]).ok();
        assert_eq!(entries(&w.home), [format!("outputs_{id}")], "scratch removed, outputs kept (sudo: {sudo})");
        assert!(run_records(&w).is_empty(), "{:?}", run_records(&w));
    }
}

/// A container that ignores the stop signal passed on to it is killed once
/// the stop timeout (10 s) has run out, as under the native runtime: ces
/// exits 137 and cleans up. It used to wait for ever. As root, and as root
/// through sudo for the test user.
#[test]
fn podman_kills_a_container_that_ignores_sigterm_after_the_stop_timeout() {
    require_root_and_podman();
    for sudo in [false, true] {
        let w = TreWorld::with("podman/stop", &busybox_image(), "");
        let script = "trap '' TERM; touch /safe_outputs/started; sleep 1000; touch /safe_outputs/survived";
        let (mut ces, id, _removed) = start_long_run(&w, sudo, script);
        let signalled = Instant::now();
        assert!(Command::new("kill").args(["-TERM", &ces.id().to_string()]).status().unwrap().success());
        let mut status = None;
        wait_until("ces ends after the stop timeout", || {
            status = ces.try_wait().unwrap();
            status.is_some()
        });
        assert_eq!(status.unwrap().code(), Some(137), "sudo: {sudo}");
        assert!(signalled.elapsed() >= Duration::from_secs(9), "killed before the stop timeout");
        assert!(!w.home.join(format!("outputs_{id}/survived")).exists());
        assert_eq!(containers_named(&format!("ces-{id}")), Vec::<String>::new(), "the container is removed");
        assert_eq!(entries(&w.home), [format!("outputs_{id}")], "scratch removed (sudo: {sudo})");
    }
}

/// A rootful podman run (root for itself, and through sudo for the test
/// user) keeps its root filesystem out of every other local user's reach,
/// as the native runtime does. `nobody` plays that user: the overlay's
/// upper directory is named in the host's mount table, and its merged tree
/// is where podman's command line says. The container makes a setuid copy
/// of busybox and a file every user may read (0644), where they would be
/// reached through the merged tree or the upper directory: neither may be.
/// The overlay is mounted `nosuid,nodev`. Before, both were in directories
/// anyone could search, and the mount was not `nosuid`: another user ran
/// the container's setuid file as the container's user.
#[test]
fn a_rootful_podman_run_is_out_of_other_users_reach() {
    require_root_and_podman();
    let script = "cp /bin/busybox /tmp/made-setuid && chmod 4755 /tmp/made-setuid; \
                  echo secret > /tmp/readable && chmod 644 /tmp/readable; \
                  touch /safe_outputs/started; sleep 1000";
    for sudo in [false, true] {
        let w = TreWorld::with("podman/reach", &busybox_image(), "");
        if !sudo {
            // (Through sudo, start_long_run does it.) The directories above
            // the store searchable by all, as on a real host.
            w.for_another_user();
        }
        let (mut ces, id, _removed) = start_long_run(&w, sudo, script);
        let state = w.sb.store.canonicalize().unwrap().join("runs").join(&id).join("state");
        // As seen in ces's mount namespace (through sudo, the test's host is
        // one of its own: see `Sandbox::as_sudo`).
        let in_ces_namespace = |argv: &[&str]| {
            let mut cmd = Command::new("nsenter");
            cmd.args(["-t", &ces.id().to_string(), "-m", "--"]).args(argv);
            cmd.stderr(Stdio::null()).output().unwrap()
        };
        let state_str = state.to_str().unwrap();
        let found = in_ces_namespace(&["find", state_str, "-name", "made-setuid", "-o", "-name", "readable"]);
        let found: Vec<String> = String::from_utf8(found.stdout).unwrap().lines().map(str::to_owned).collect();
        assert!(found.len() >= 4, "the files, merged and upper (sudo: {sudo}): {found:?}");
        for path in &found {
            let nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--", "stat", path];
            assert!(!in_ces_namespace(&nobody).status.success(), "nobody reaches {path} (sudo: {sudo})");
        }
        // The overlay's own options: the sixth field of its mountinfo line.
        let table = String::from_utf8(in_ces_namespace(&["cat", "/proc/self/mountinfo"]).stdout).unwrap();
        let options = table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let overlay = mountinfo::fs_and_options(line).is_some_and(|(fs, _)| fs == "overlay");
            (overlay && fields.get(4).is_some_and(|at| Path::new(at).starts_with(&state))).then(|| fields[5].to_owned())
        });
        let options = options.unwrap_or_else(|| panic!("the overlay under {} (sudo: {sudo})", state.display()));
        for flag in ["nosuid", "nodev"] {
            assert!(options.split(',').any(|o| o == flag), "{flag} (sudo: {sudo}): {options}");
        }
        assert!(Command::new("kill").args(["-TERM", &ces.id().to_string()]).status().unwrap().success());
        ces.wait().unwrap();
    }
}

/// Through sudo, the user cannot swap the merged tree podman is given for a
/// link of their choosing (which would run podman on any directory, past
/// every check of the image). The attack: a mount namespace of the user's
/// own, made before ces mounts the overlay, does not have that mount; there
/// its mount point is an empty directory, which its parent's owner may
/// remove (the kernel then detaches the mount everywhere) and replace. The
/// parent is root's, and lets the user only enter it.
#[test]
fn through_sudo_the_user_cannot_swap_the_podman_root_filesystem() {
    require_root_and_podman();
    let w = TreWorld::with("podman/swap", &busybox_image(), "");
    let user = test_user();
    // The user's own directory (the sandbox's is root's).
    let dir = w.sb.dir.path().join("attacker");
    std::fs::create_dir(&dir).unwrap();
    user.chown(&dir);
    let (target, said, done) = (dir.join("target"), dir.join("said"), dir.join("done"));
    let script = r#"while [ ! -s "$1" ]; do sleep 0.05; done; p=$(cat "$1")
        if rmdir "$p" 2> "$2" && ln -s / "$p"; then echo swapped >> "$2"; fi; echo > "$3""#;
    let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
    let mut attacker = Command::new("setpriv")
        .args(["--reuid", &uid, "--regid", &gid, "--init-groups", "--", "unshare", "-Urm", "sh", "-c", script, "sh"])
        .args([&target, &said, &done])
        .spawn()
        .unwrap();
    let (mut ces, id, _removed) = start_long_run(&w, true, "touch /safe_outputs/started; sleep 1000");
    let state = w.sb.store.canonicalize().unwrap().join("runs").join(&id).join("state");
    let merged = state.join("rootfs/merged");
    std::fs::write(&target, merged.to_str().unwrap()).unwrap();
    wait_until("the attempt", || done.exists());
    attacker.wait().unwrap();
    let said = std::fs::read_to_string(&said).unwrap();
    assert!(!said.contains("swapped"), "the user swapped the root filesystem: {said}");
    assert!(said.contains("Permission denied"), "{said}");
    assert!(std::fs::symlink_metadata(&merged).unwrap().is_dir(), "still the mount point");
    assert!(Command::new("kill").args(["-TERM", &ces.id().to_string()]).status().unwrap().success());
    ces.wait().unwrap();
}

/// The watchdog's PIDs: forked from ces, so the same command line, but not
/// ces itself.
fn watchdogs_of(ces: u32) -> Vec<u32> {
    let cmdline = |pid: &str| std::fs::read(format!("/proc/{pid}/cmdline")).ok();
    let ours = cmdline(&ces.to_string()).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != ces && cmdline(&pid.to_string()).as_ref() == Some(&ours))
        .collect()
}

/// ces and its watchdog both killed (the old code had no watchdog): the
/// next ces start (`ces gc`, or a run) stops and removes the container
/// before it removes the scratch directory under it, and leaves every other
/// container alone.
#[test]
fn the_next_start_removes_a_lost_container_before_its_scratch() {
    require_root_and_podman();
    for next in ["gc", "run"] {
        let w = TreWorld::with("podman/lost", &busybox_image(), "");
        let rootfs = w.sb.rootfs(&w.digest);
        let decoy = format!("ces-decoy-{}", std::process::id());
        let _decoy_removed = Removed(decoy.clone());
        let started = Command::new("podman")
            .args(["run", "-d", "--name", &decoy, "--runtime", "runc", "--network", "none"])
            .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--rootfs"])
            .arg(format!("{}:O", rootfs.dir().display()))
            .args(["sleep", "600"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(started.success());
        let (mut ces, id, _removed) = start_long_run(&w, false, WATCH_SCRATCH);
        // One (none in the old code).
        for watchdog in watchdogs_of(ces.id()) {
            kill9(watchdog);
        }
        kill9(ces.id());
        ces.wait().unwrap();
        let name = format!("ces-{id}");
        assert_eq!(containers_named(&name).len(), 1, "still there: nothing removed it yet");

        let out: Run = match next {
            "gc" => w.ces(&["gc"]),
            _ => w.ces(&["run", "--runtime", "podman", &w.image, "true"]),
        };
        out.ok();
        assert_eq!(containers_named(&name), Vec::<String>::new(), "the lost container is removed");
        let outputs = w.home.join(format!("outputs_{id}"));
        assert!(outputs.join("started").exists(), "outputs kept");
        assert!(!outputs.join("saw-scratch-removed").exists(), "the container was gone before its scratch");
        assert!(!w.home.join(format!("scratch_{id}")).exists(), "scratch removed");
        assert_eq!(containers_named(&decoy).len(), 1, "another container is left alone");
    }
}

/// A value podman cannot take (an environment value with a newline) is
/// refused before anything is printed or created.
#[test]
fn podman_refusals_come_before_the_run_starts() {
    require_root_and_podman();
    let w = TreWorld::with("podman/refuse", &busybox_image(), "");
    let out = w.ces(&["run", "--runtime", "podman", "-e", "X=a\nb", &w.image, "true"]);
    let err = out.fails();
    assert!(err.contains("an environment value with a line break"), "{err}");
    assert!(!err.contains("Running ") && !err.contains("outputs in"), "{err}");
    assert_eq!(entries(&w.home), Vec::<String>::new(), "nothing in HOME");
    assert!(run_records(&w).is_empty());
}

/// Root for itself: podman would map the container's root to host root
/// (ces's unprivileged block needs idmapped mounts podman cannot make here),
/// so it is refused, before anything is created, unless the operator allows
/// it (`[podman] allow_host_root`, which the other tests set). Before, it
/// just ran. Root for a sudo user is not concerned (the user is the root).
#[test]
fn root_for_itself_runs_podman_only_where_the_operator_allows_host_root() {
    require_root("runs ces as root");
    let w = TreWorld::with("podman/host-root", &busybox_image(), "");
    let config = std::fs::read_to_string(&w.sb.config).unwrap();
    std::fs::write(&w.sb.config, config.replace("allow_host_root = true", "allow_host_root = false")).unwrap();
    let out = w.ces(&["run", "--runtime", "podman", &w.image, "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("[podman] allow_host_root = true allows it"), "{}", out.stderr);
    assert_eq!(entries(&w.home), Vec::<String>::new(), "nothing in HOME");
    let plan = w.ces(&["run", "--dry-run", "--runtime", "podman", &w.image, "true"]);
    assert_ne!(plan.code, 0, "the plan says so too: {plan:?}");
}

/// Root (for itself, and through sudo, which may pass a user's `PATH` on)
/// never runs a `podman` found in `PATH`: only the system's own.
#[test]
fn root_never_runs_a_podman_from_the_users_path() {
    require_root_and_podman();
    let w = TreWorld::with("podman/path", &busybox_image(), "");
    w.for_another_user();
    let user = test_user();
    let evil = w.sb.dir.path().join("evil-bin");
    std::fs::create_dir(&evil).unwrap();
    let marker = w.sb.dir.path().join("ran-as-root");
    let fake = format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display());
    std::fs::write(evil.join("podman"), fake).unwrap();
    std::fs::set_permissions(evil.join("podman"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", evil.display(), std::env::var("PATH").unwrap());
    for sudo in [false, true] {
        let mut cmd = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "--runtime", "podman", &w.image, "true"]);
        cmd.env("PATH", &path);
        if sudo {
            cmd = user.sudo(&w.sb, cmd);
        }
        let out = w.sb.run(cmd);
        out.ok();
        assert!(!marker.exists(), "sudo {sudo}: the podman in PATH ran as root");
    }
}

/// Rootless podman on cgroup v1 runs without the limits (it only warns):
/// refused, before anything is created, with the way out. On cgroup v2 the
/// same plan is accepted.
#[test]
fn rootless_podman_without_limits_is_refused() {
    let w = RootlessWorld::new("podman/rootless");
    let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for dry_run in [false, true] {
        let mut args = vec!["run", "--runtime", "podman", "-m", "0.25"];
        if dry_run {
            args.push("--dry-run");
        }
        args.extend([w.image.as_str(), "true"]);
        let out = w.ces(&args);
        if cgroup_v2 {
            if dry_run {
                out.ok();
            }
            continue;
        }
        let err = out.fails();
        assert!(err.contains("rootless podman ignores memory and CPU limits on cgroup v1"), "{err}");
        assert!(err.contains("ces system setup"), "{err}");
        assert!(!err.contains("outputs in"), "{err}");
        assert_eq!(entries(&w.home), ["safe_data"], "nothing created");
        assert!(!w.sb.store.join("runs").exists() || entries(&w.sb.store.join("runs")).is_empty());
    }
}

/// Rootless podman takes one directory (`--rootfs DIR:O`): an image the
/// store keeps as its layers gets its tree assembled for it, by the user,
/// in the user's store, and the plan names that tree.
#[test]
fn rootless_podman_gets_an_assembled_tree() {
    let w = RootlessWorld::new("podman/rootless-tree");
    let images: Vec<serde_json::Value> = serde_json::from_str(w.ces(&["images", "--json"]).ok()).unwrap();
    let digest = images[0]["digest"].as_str().unwrap().to_owned();
    assert!(w.sb.rootfs(&digest).is_layered(), "kept as its layers by the pull");
    let plan = w.ces(&["run", "--runtime", "podman", "--dry-run", &w.image, "true"]);
    let tree = w.sb.tree(&digest);
    assert!(tree.join("bin/busybox").is_file(), "assembled for the run");
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(plan.ok().contains(&tree.display().to_string()), "{}", plan.stdout);
    } else {
        // Refused once planned: rootless podman ignores limits on cgroup v1.
        assert!(plan.fails().contains("rootless podman ignores memory and CPU limits"), "{}", plan.stderr);
    }
}
