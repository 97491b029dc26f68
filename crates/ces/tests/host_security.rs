//! What another local user can reach of what a root ces unpacks and mounts
//! (issue 9, "Local root through the store and root-mode runs"): the tests
//! play that user with the test kit's unprivileged account and try to run a
//! setuid-root file from the store's cache and from a running container's
//! root filesystem, as root and with ces run through sudo.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ces_testkit::ImageSpec;
use ces_testkit::layer::{Entry, Layer, busybox_entries};
use common::{TEST_USER, TestUser, TreWorld, require_root, test_user};

/// busybox plus `/usr/local/bin/rootsh`, a copy of it that is setuid and
/// setgid root (as `su` or `passwd` are in real images).
fn image_with_a_setuid_shell() -> ImageSpec {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    ImageSpec::new(vec![
        Layer::new(busybox_entries()),
        Layer::new(vec![Entry::dir("usr/local/bin"), Entry::file_mode("usr/local/bin/rootsh", busybox, 0o6755)]),
    ])
    .env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    .cmd(&["sh"])
}

/// A world whose directories the test user can search (as on a real host,
/// where the store's own modes are all that stands in the way).
fn world(repo: &str) -> TreWorld {
    require_root("pulls as root and switches to the test user");
    let w = TreWorld::with(repo, &image_with_a_setuid_shell(), "");
    w.for_another_user();
    w
}

/// Runs `argv` as the test user; returns (exit code, stdout).
fn as_user(user: &TestUser, argv: &[&str]) -> (Option<i32>, String) {
    let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
    let mut full = vec!["--reuid", &uid, "--regid", &gid, "--init-groups", "--"];
    full.extend_from_slice(argv);
    let out = Command::new("setpriv").args(&full).stdin(Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Every file under `dir` (not following links) with a setuid or setgid bit.
fn setid_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && meta.mode() & 0o6000 != 0 {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn a_root_pull_leaves_nothing_another_user_can_run_as_root() {
    let w = world("host/setuid-pull");
    let user = test_user();
    let rootfs = w.sb.rootfs(&w.digest);
    let rootsh = rootfs.join("usr/local/bin/rootsh");
    assert!(rootsh.is_file(), "the image was unpacked into the cache");
    assert_eq!(setid_files(&rootfs), Vec::<PathBuf>::new(), "no setuid/setgid file in the cache");

    let (code, out) = as_user(&user, &[rootsh.to_str().unwrap(), "-c", "id -u"]);
    assert_ne!(out, "0", "{TEST_USER} became root through the store's cache");
    assert_ne!(code, Some(0), "{TEST_USER} could run a file in the store's cache");
    let (code, _) = as_user(&user, &["ls", w.sb.store.join("rootfs").to_str().unwrap()]);
    assert_ne!(code, Some(0), "{TEST_USER} can list the cached root filesystems");
    for private in ["oci", "rootfs", "tmp", "locks"] {
        let mode = std::fs::metadata(w.sb.store.join(private)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "{private}");
    }
}

/// Starts `ces run` (as root, or for the test user through sudo) of a
/// container that makes a setuid-root copy of busybox in its own root
/// filesystem, then waits.
fn start_container(w: &TreWorld, sudo_for: Option<&TestUser>) -> Child {
    let script = "cp /bin/busybox /made-by-container && chmod 6755 /made-by-container; \
                  touch /safe_outputs/ready; trap 'exit 0' TERM; sleep 60 & wait";
    let mut cmd = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "-q", &w.image, "sh", "-c", script]);
    if let Some(user) = sudo_for {
        cmd.env("SUDO_UID", user.uid.to_string()).env("SUDO_GID", user.gid.to_string()).env("SUDO_USER", TEST_USER);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn wait_for_ready(w: &TreWorld, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::fs::read_dir(&w.home)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("outputs_") && e.path().join("ready").exists());
        if ready {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("ces ended before the container was ready ({status}): {stderr}");
        }
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut child: Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "ces run ended with {status}");
}

/// While a root-mode container runs, its root filesystem is mounted where
/// no other process on the host sees it: not in the host's mount table, not
/// under the run's state directory, so a file the container makes setuid
/// root is out of every local user's reach.
fn a_running_container_is_out_of_reach(repo: &str, sudo: bool) {
    let w = world(repo);
    let user = test_user();
    let mut child = start_container(&w, sudo.then_some(&user));
    wait_for_ready(&w, &mut child);

    let store = w.sb.store.canonicalize().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(store.to_str().unwrap())).collect();
    let runs = store.join("runs");
    let made: Vec<PathBuf> =
        std::fs::read_dir(&runs).unwrap().flatten().map(|e| e.path().join("state/rootfs/made-by-container")).collect();
    let visible: Vec<&PathBuf> = made.iter().filter(|p| p.exists()).collect();
    let attempts: Vec<(Option<i32>, String)> =
        made.iter().map(|p| as_user(&user, &[p.to_str().unwrap(), "-c", "id -u"])).collect();
    stop(child);

    assert_eq!(leaked, Vec::<&str>::new(), "the container's mounts show in the host's mount table");
    assert_eq!(visible, Vec::<&PathBuf>::new(), "the container's root filesystem is reachable on the host");
    for (code, out) in attempts {
        assert!(code != Some(0) && out != "0", "{TEST_USER} ran the container's setuid file: {out}");
    }
}

#[test]
fn a_root_run_mounts_nothing_the_host_can_reach() {
    a_running_container_is_out_of_reach("host/running-root", false);
}

#[test]
fn a_sudo_run_mounts_nothing_the_host_can_reach() {
    a_running_container_is_out_of_reach("host/running-sudo", true);
}
