//! What another local user can reach of what a root ces unpacks and mounts
//! (issue 9, "Local root through the store and root-mode runs"): the tests
//! play that user with the test kit's unprivileged account and try to run a
//! setuid-root file from the store's cache and from a running container's
//! root filesystem, as root and with ces run through sudo; and to put an
//! image of their own under the name of one root pulled, in the store they
//! share through sudo.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    common::regular_files(dir).into_iter().filter(|(_, meta)| meta.mode() & 0o6000 != 0).map(|(path, _)| path).collect()
}

#[test]
fn a_root_pull_leaves_nothing_another_user_can_run_as_root() {
    let w = world("host/setuid-pull");
    let user = test_user();
    let rootfs = w.sb.rootfs(&w.digest);
    let rootsh = rootfs.join("usr/local/bin/rootsh");
    assert!(rootsh.is_file(), "the image was unpacked into the cache");
    assert_eq!(setid_files(&w.sb.store), Vec::<PathBuf>::new(), "no setuid/setgid file in the store");

    // (busybox drops a setuid bit itself, so running it would prove nothing:
    // reaching the file is what a real `su` in the image would need.)
    let (code, out) = as_user(&user, &["stat", "-c", "%u %a", rootsh.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{TEST_USER} reaches a file in the store's cache (owner and mode {out})");
    for cache in ["rootfs", "layers", "layered", "l"] {
        let (code, _) = as_user(&user, &["ls", w.sb.store.join(cache).to_str().unwrap()]);
        assert_ne!(code, Some(0), "{TEST_USER} can list the store's {cache}/");
    }
    // Nor through the layers' short links.
    let links: Vec<PathBuf> = std::fs::read_dir(w.sb.store.join("l")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!links.is_empty(), "the image's layers have short links");
    for link in links {
        let through = link.join("usr/local/bin/rootsh");
        let (code, out) = as_user(&user, &["stat", "-c", "%u %a", through.to_str().unwrap()]);
        assert_ne!(code, Some(0), "{TEST_USER} reaches a file through {}: {out}", link.display());
    }
    for private in ["oci", "rootfs", "layers", "layered", "l", "tmp", "locks"] {
        let mode = std::fs::metadata(w.sb.store.join(private)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "{private}");
    }

    // The store's lock: anyone who can open it may `flock` it and hold it,
    // and every root ces would wait. One left `0644` by an earlier version
    // is closed when the store is next locked.
    let lock = w.sb.store.join("lock");
    let openable = |user: &TestUser| as_user(user, &["sh", "-c", ": < \"$1\"", "sh", lock.to_str().unwrap()]).0;
    assert_eq!(std::fs::metadata(&lock).unwrap().mode() & 0o777, 0o600);
    assert_ne!(openable(&user), Some(0), "{TEST_USER} can open the store's lock");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(openable(&user), Some(0), "the probe opens a lock it may read");
    let gc = w.command(env!("CARGO_BIN_EXE_ces"), &["gc"]).output().unwrap();
    assert!(gc.status.success(), "ces gc: {}", String::from_utf8_lossy(&gc.stderr));
    assert_eq!(std::fs::metadata(&lock).unwrap().mode() & 0o777, 0o600, "closed by the next lock");
    assert_ne!(openable(&user), Some(0), "{TEST_USER} can open the store's lock");
}

/// The reference and digest of each image `ces images --json` lists.
fn listed(out: &str) -> Vec<(String, String, Option<u64>)> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(out).unwrap();
    rows.iter()
        .map(|r| {
            (
                r["reference"].as_str().unwrap().to_owned(),
                r["digest"].as_str().unwrap().to_owned(),
                r["loaded_by"].as_u64(),
            )
        })
        .collect()
}

/// A name is a promise about where an image came from. Through sudo (one
/// store for everyone), the test user loads an archive of their making
/// under the name of the image root pulled: root's runs, as every other
/// user's, still get the pulled image; the name resolves to the load for
/// the user who loaded it only. Before, the load replaced the pulled
/// image's name for everyone.
#[test]
fn a_load_through_sudo_cannot_take_the_name_of_a_pulled_image() {
    let w = world("host/load-takeover");
    let user = test_user();
    let ces = env!("CARGO_BIN_EXE_ces");
    let mut entries = busybox_entries();
    entries.push(Entry::file("loaded-by-the-user", "x"));
    let theirs = ImageSpec::new(vec![Layer::new(entries)]).cmd(&["sh"]).build();
    let archive = w.sb.dir.path().join("theirs.tar");
    theirs.write_oci_archive(&archive, &w.image);
    user.chown(&archive);
    let load = w.sb.run(user.sudo(&w.sb, w.command(ces, &["load", "-q", archive.to_str().unwrap()])));
    load.ok();
    assert_ne!(theirs.digest, w.digest);

    let which = "if [ -e /loaded-by-the-user ]; then echo loaded; else echo pulled; fi";
    let mine = listed(w.ces(&["images", "--json"]).ok());
    assert_eq!(mine, vec![(w.image.clone(), w.digest.clone(), None)], "root's names");
    assert_eq!(w.ces(&["run", "-q", &w.image, "sh", "-c", which]).ok().trim(), "pulled", "root's run");

    let sudo = |args: &[&str]| w.sb.run(user.sudo(&w.sb, w.command(ces, args)));
    let theirs_listed = listed(sudo(&["images", "--json"]).ok());
    assert_eq!(
        theirs_listed.iter().rev().find(|(r, _, _)| *r == w.image),
        Some(&(w.image.clone(), theirs.digest.clone(), Some(u64::from(user.uid)))),
        "the user's own name: {theirs_listed:?}"
    );
    assert_eq!(sudo(&["run", "-q", &w.image, "sh", "-c", which]).ok().trim(), "loaded", "the user's run");
}

/// Run in the mount namespace ces starts in (the test's own, or for sudo
/// the host that [`common::Sandbox::as_sudo`] makes): starts `"$@"` (ces
/// run), waits for the container's `/safe_outputs/ready`, then looks as a
/// local user would: the mount table, each run's `state/rootfs`, and, as
/// the test user, the files the container made setuid root in its root
/// filesystem and in `/safe_outputs` (before the seal removes the bits).
/// Also tries, as the test user, to open the store's lock and the run's
/// (anyone who can open a file may `flock` it, and hold it for ever).
/// Writes what it saw under `$PROBE_OUT`, then stops ces.
const PROBE: &str = r#"
"$@" 2> "$PROBE_OUT/stderr" & ces=$!
i=0
until ls "$PROBE_HOME"/outputs_*/ready >/dev/null 2>&1; do
  i=$((i + 1))
  if [ $i -gt 3000 ] || ! kill -0 $ces 2>/dev/null; then echo "not ready" > "$PROBE_OUT/error"; break; fi
  sleep 0.02
done
grep -F "$PROBE_STORE" /proc/self/mountinfo > "$PROBE_OUT/mounts"
for f in "$PROBE_STORE"/runs/*/state/rootfs/made-by-container; do
  if [ -e "$f" ]; then echo "$f" >> "$PROBE_OUT/visible"; fi
done
for f in "$PROBE_STORE"/runs/*/state/rootfs/made-by-container "$PROBE_HOME"/outputs_*/made-by-container; do
  setpriv --reuid "$PROBE_UID" --regid "$PROBE_GID" --init-groups -- stat -c '%u %a %n' "$f" \
    >> "$PROBE_OUT/reachable" 2>/dev/null
done
for f in "$PROBE_STORE"/lock "$PROBE_STORE"/runs/*/lock; do
  [ -e "$f" ] || echo "missing $f" >> "$PROBE_OUT/error"
  if setpriv --reuid "$PROBE_UID" --regid "$PROBE_GID" --init-groups -- sh -c ': < "$1"' sh "$f" 2>/dev/null; then
    echo "$f" >> "$PROBE_OUT/openable"
  fi
done
kill -TERM $ces
wait $ces
echo $? > "$PROBE_OUT/status"
"#;

/// While a root-mode container runs (as root, or for the test user through
/// sudo), its root filesystem is mounted where no other process on the host
/// sees it: not in the host's mount table, not under the run's state
/// directory, so a file the container makes setuid root is out of every
/// local user's reach.
fn a_running_container_is_out_of_reach(repo: &str, sudo: bool) {
    let w = world(repo);
    let user = test_user();
    let script = "for f in /made-by-container /safe_outputs/made-by-container; do \
                  cp /bin/busybox $f && chmod 6755 $f; done; \
                  touch /safe_outputs/ready; trap 'exit 0' TERM; sleep 60 & wait";
    let ces = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "-q", &w.image, "sh", "-c", script]);
    let out = w.sb.dir.path().join("probe");
    std::fs::create_dir(&out).unwrap();
    let mut probe = Command::new("sh");
    probe.args(["-c", PROBE, "sh"]).arg(ces.get_program()).args(ces.get_args());
    for (key, value) in ces.get_envs() {
        if let Some(value) = value {
            probe.env(key, value);
        }
    }
    let store = w.sb.store.canonicalize().unwrap();
    probe
        .env("PROBE_OUT", &out)
        .env("PROBE_HOME", &w.home)
        .env("PROBE_STORE", &store)
        .env("PROBE_UID", user.uid.to_string())
        .env("PROBE_GID", user.gid.to_string());
    if sudo {
        probe = user.sudo(&w.sb, probe);
    }
    let status = probe.stdout(Stdio::null()).status().unwrap();
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    assert!(status.success(), "the probe failed: {status}");
    assert_eq!(read("error"), "", "ces: {}", read("stderr"));
    assert_eq!(read("status").trim(), "0", "ces run ended badly: {}", read("stderr"));

    assert_eq!(read("mounts"), "", "the container's mounts show in the host's mount table");
    assert_eq!(read("visible"), "", "the container's root filesystem is reachable on the host");
    assert_eq!(read("openable"), "", "{TEST_USER} can open (so flock, and hold) these locks");
    // `UID MODE PATH` of each file the test user reached: none may be a
    // setuid or setgid file of root's (in sudo mode the outputs are theirs).
    let reachable = read("reachable");
    let setuid_root = |line: &str| {
        let mut fields = line.split(' ');
        let (uid, mode) = (fields.next(), fields.next().and_then(|m| u32::from_str_radix(m, 8).ok()));
        uid == Some("0") && mode.is_some_and(|m| m & 0o6000 != 0)
    };
    assert!(
        !reachable.lines().any(setuid_root),
        "{TEST_USER} reaches a setuid-root file of the container: {reachable}"
    );
}

#[test]
fn a_root_run_mounts_nothing_the_host_can_reach() {
    a_running_container_is_out_of_reach("host/running-root", false);
}

#[test]
fn a_sudo_run_mounts_nothing_the_host_can_reach() {
    a_running_container_is_out_of_reach("host/running-sudo", true);
}

/// A rootless store, the test user's own, is theirs alone (`0700` inside and
/// out), also when it was left `0755` by an earlier version.
#[test]
fn a_rootless_store_is_its_owners_only() {
    require_root("switches to the test user");
    let user = test_user();
    let sb = common::Sandbox::new(&[]);
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&sb.store).unwrap();
    user.chown(&sb.store);
    std::fs::set_permissions(&sb.store, std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.run(user.setpriv(&sb, &[common::user_bin(env!("CARGO_BIN_EXE_ces")), "images"])).ok();
    for sub in ["", "oci", "rootfs", "tmp", "locks"] {
        let meta = std::fs::metadata(sb.store.join(sub)).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (user.uid, 0o700), "{sub}");
    }
}

/// Root mode (root runs ces for itself): the container's processes are not
/// host root but ids of an unprivileged block (`[run] root_id_base`,
/// 0x70000000 by default) with no host group, seen from the host, and the
/// container's own map says so; the image's user (1000) is the block's
/// 1000, still writes `/safe_outputs` (root's on the host, as before), and
/// still gets the stop signal ces passes on. Before, the container's root
/// was host uid 0 (`0 0 1`).
#[test]
fn a_root_mode_container_runs_as_unprivileged_host_ids() {
    require_root("runs a root-mode container");
    let image = ces_testkit::busybox_image().user("1000:1000");
    let w = TreWorld::with("host/root-ids", &image, "");
    let script = "cat /proc/self/uid_map /proc/self/gid_map > /safe_outputs/maps; exec sleep 3137";
    let mut ces = w.command(env!("CARGO_BIN_EXE_ces"), &["run", "-q", &w.image, "sh", "-c", script]);
    let child = ces.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // The workload, found by its arguments once it runs: its real,
    // effective, saved and file-system uids, gids and groups on the host.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let found: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let dir = e.ok()?.path();
                (std::fs::read(dir.join("cmdline")).ok()? == b"sleep\x003137\x00")
                    .then(|| std::fs::read_to_string(dir.join("status")).unwrap_or_default())
            })
            .collect();
        if let [status] = &found[..] {
            break status.clone();
        }
        assert!(found.is_empty(), "one workload process: {found:?}");
        assert!(std::time::Instant::now() < deadline, "the container did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        line.split_whitespace().skip(1).map(|id| id.parse().unwrap()).collect()
    };
    assert_eq!(field("Uid:"), [0x7000_0000 + 1000; 4], "{status}");
    assert_eq!(field("Gid:"), [0x7000_0000 + 1000; 4], "{status}");
    assert_eq!(field("Groups:"), Vec::<u32>::new(), "no host group: {status}");
    assert_eq!(out.status.code(), Some(143), "SIGTERM reached the workload: {stderr}");
    let outputs = w.home.join(
        std::fs::read_dir(&w.home)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .find(|n| n.to_string_lossy().starts_with("outputs_"))
            .unwrap(),
    );
    let maps = std::fs::read_to_string(outputs.join("maps")).unwrap();
    let maps: Vec<String> = maps.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(maps, ["0 1879048192 65536", "0 1879048192 65536"], "{stderr}");
    let meta = std::fs::metadata(outputs.join("maps")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the outputs are root's on the host");
}

/// Root mode refuses a block of host ids that someone uses (here a group the
/// user database knows at the block's last id): the container's files would
/// be theirs. The run is refused before anything of it is made: the
/// container is never created, and the workload never runs.
#[test]
fn a_root_mode_block_in_use_is_refused_before_the_container_exists() {
    require_root("runs a root-mode container");
    const BASE: u32 = 0x7300_0000;
    let last = (BASE + 65_535).to_string();
    struct Group(&'static str);
    impl Drop for Group {
        fn drop(&mut self) {
            Command::new("groupdel").arg(self.0).status().ok();
        }
    }
    let group = Group("ces-test-block");
    Command::new("groupdel").arg(group.0).stderr(Stdio::null()).status().ok();
    let added = Command::new("groupadd").args(["-g", &last, group.0]).status().unwrap();
    assert!(added.success(), "groupadd -g {last} {}", group.0);
    let w =
        TreWorld::with("host/block-in-use", &ces_testkit::busybox_image(), &format!("[run]\nroot_id_base = {BASE}\n"));
    let run = w.ces(&["run", "-q", &w.image, "sh", "-c", "touch /safe_outputs/ran"]);
    let err = run.fails();
    let expected = format!("group {} ({last}) uses them; hint: set [run] root_id_base to a free block", group.0);
    assert!(err.contains(&expected), "{err}");
    let ran: Vec<PathBuf> =
        w.sb.dir.path().join("home").read_dir().unwrap().map(|e| e.unwrap().path().join("ran")).collect();
    assert!(ran.iter().all(|p| !p.exists()), "the workload ran: {ran:?}");
    drop(group);
}

/// Root mode: the image's files keep their owners in the container, so the
/// image's user (1000, as `USER analyst` makes it) may write its home; before,
/// root mode showed it as nobody's (65534) and every write failed.
#[test]
fn a_root_mode_image_user_owns_its_home() {
    require_root("runs a root-mode container");
    let image = ImageSpec::new(vec![
        Layer::new(busybox_entries()),
        Layer::new(vec![Entry::dir("home"), Entry::dir("home/analyst").owned(1000, 1000)]),
    ])
    .env(&["PATH=/bin", "HOME=/home/analyst"])
    .user("1000:1000");
    let w = TreWorld::with("host/root-home", &image, "");
    let script = "touch \"$HOME/.cache\" && ls -ldn \"$HOME\" /etc/passwd | while read -r mode links uid gid rest; \
                  do echo \"$uid:$gid\"; done; echo x >> /etc/passwd || echo refused";
    let run = w.ces(&["run", "-q", &w.image, "sh", "-c", script]);
    assert_eq!(run.ok().lines().collect::<Vec<_>>(), ["0:0", "1000:1000", "refused"], "{}", run.stderr);
}

/// `[run] max_rootfs_writes`: what a root-mode run writes to its own
/// filesystem (outside its mounts) stops at the limit with "no space left",
/// instead of filling the store's file system for every later pull and run;
/// `/safe_outputs` is not counted. The plan says so.
#[test]
fn a_root_run_cannot_write_more_than_the_limit_to_its_own_filesystem() {
    require_root("runs a root-mode container");
    let w = TreWorld::with("host/cow-limit", &ces_testkit::busybox_image(), "[run]\nmax_rootfs_writes = \"8m\"");
    let plan = w.ces(&["run", "--dry-run", &w.image]);
    assert!(plan.ok().contains("its writes limited to 8 MiB"), "{}", plan.stdout);
    let script = "dd if=/dev/zero of=/tmp/big bs=1M count=16 2>/dev/null; echo \"rootfs=$?\"; \
                  dd if=/dev/zero of=/safe_outputs/big bs=1M count=16 2>/dev/null; echo \"outputs=$?\"";
    let run = w.ces(&["run", "-q", &w.image, "sh", "-c", script]);
    assert_eq!(run.ok().lines().collect::<Vec<_>>(), ["rootfs=1", "outputs=0"], "{}", run.stderr);
}

/// A container cannot make a setuid or setgid file, anywhere: in root mode
/// root's files in a read-write bind are the container user's, so before,
/// `chmod 6755` in a `-v` directory left a setuid-root file on the host for
/// any local user who could reach it. Now the mode is refused (EPERM), in
/// the bind, the outputs and its own filesystem alike; other modes pass.
#[test]
fn a_root_mode_container_cannot_leave_a_setuid_file_in_a_read_write_bind() {
    require_root("runs a root-mode container");
    let w = TreWorld::new("host/setuid-bind");
    let work = w.home.join("work");
    std::fs::create_dir(&work).unwrap();
    // A setuid-root file already there: writing to it must clear the bit
    // (no CAP_FSETID), as it would for any unprivileged writer.
    std::fs::write(work.join("existing"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(work.join("existing"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    w.sb.configure(&format!("[run]\nbind_roots = [{:?}]\n", w.home.display().to_string()));
    let script = "for d in /work /safe_outputs /tmp; do busybox cp /bin/busybox $d/sh; \
                  busybox chmod 6755 $d/sh 2>/dev/null && echo \"$d: setuid\"; busybox chmod 4755 $d/sh 2>/dev/null && echo \"$d: setuid\"; \
                  busybox chmod 2755 $d/sh 2>/dev/null && echo \"$d: setgid\"; busybox chmod 750 $d/sh || echo \"$d: no chmod\"; done; echo true >> /work/existing; echo done";
    let bind = format!("{}:/work", work.display());
    let run = w.ces(&["run", "-q", "-v", &bind, &w.image, "sh", "-c", script]);
    assert_eq!(run.ok().trim(), "done", "{}", run.stderr);
    let meta = std::fs::metadata(work.join("sh")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o750), "root's on the host, and no s bit");
    let existing = std::fs::metadata(work.join("existing")).unwrap();
    assert_eq!(existing.mode() & 0o7777, 0o755, "written by the container: the s bits are gone");
}
