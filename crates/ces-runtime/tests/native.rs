//! The native runtime, for real: containers run with youki's libcontainer
//! in namespaces, as root and as an unprivileged user.
//!
//! Each test runs its scenario in a child process: the test binary again,
//! filtered to one `#[ignore]`d `scenario_*` test, with one test thread
//! (libcontainer clones the calling process: with other tests running in
//! threads of the same process, a clone could inherit a lock held by one of
//! them). Rootless scenarios run as `ces-test-rootless`, a system user the
//! tests create once (`useradd`; it stays), through `setpriv`.
//!
//! Every scenario works in its own temp directory and checks, at the end,
//! that it left no mount, no cgroup and no container state behind. Cgroups
//! are shared between tests (`/sys/fs/cgroup/<controller>/ces`): tests hold
//! a shared lock while they run containers, and the last one out removes
//! the `ces` parents and the test user's delegation.
#![allow(missing_docs, clippy::unwrap_used)]

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ces_image::rootfs::{Layers, Rootfs};
use ces_image::unpack::{UnpackOptions, apply_layer, unpack_layer};
use ces_runtime::native::{NativeRuntime, cleanup_stale, remove_delegation, setup_delegation};
use ces_runtime::{
    Access, ContainerUser, EnvVar, Exit, Identity, ImageSpec, Limits, MountKind, MountSpec, ProcessSpec, RunSpec,
    Runtime, RuntimeError,
};
use ces_testkit::layer::{Entry, Layer, busybox_entries};
use ces_testkit::mountinfo::{self, ROOT_MOUNT_LINE};
#[cfg(target_arch = "x86_64")]
use ces_testkit::probe;

use ces_testkit::test_user;
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Who runs a scenario, and the child-process plumbing.
// ---------------------------------------------------------------------------

/// Who runs the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// root, the container's user mapped to host root.
    Root,
    /// root, the container's user mapped to the test user (`sudo ces run`).
    Sudo,
    /// The test user, rootless.
    Rootless,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::Sudo => "sudo",
            Who::Rootless => "rootless",
        }
    }

    fn from_env() -> Who {
        match std::env::var("CES_NATIVE_WHO").as_deref() {
            Ok("sudo") => Who::Sudo,
            Ok("rootless") => Who::Rootless,
            _ => Who::Root,
        }
    }
}

/// Runs scenario `name` in a child process as `who`; panics with its output
/// if it fails.
fn scenario(name: &str, who: Who) -> Output {
    scenario_with(name, who, &[])
}

/// As [`scenario`], for a test that already holds the cgroup lock exclusively.
fn scenario_unlocked(name: &str, who: Who) -> Output {
    run_child(name, who, &[])
}

fn scenario_with(name: &str, who: Who, env: &[(&str, &str)]) -> Output {
    let _cgroups = CgroupUse::shared();
    // Rootless runs need the test user's delegated cgroup (under the lock:
    // the last test out removes it).
    if who == Who::Rootless {
        let (uid, gid) = test_user();
        setup_delegation(uid, gid).unwrap();
    }
    run_child(name, who, env)
}

fn run_child(name: &str, who: Who, env: &[(&str, &str)]) -> Output {
    let (uid, gid) = test_user();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if who == Who::Rootless {
        let mut c = Command::new("setpriv");
        // A copy and a working directory the user can reach, wherever the
        // checkout is (/root: 0700); the runtime returns to the directory.
        let exe = ces_testkit::exe::for_all_users(&exe);
        c.args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--init-groups", "--"]).arg(&exe);
        c.current_dir("/");
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"])
        .env("CES_NATIVE_WHO", who.name())
        .env("CES_TEST_UID", uid.to_string())
        .env("CES_TEST_GID", gid.to_string())
        .env("TMPDIR", "/tmp");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "scenario {name} as {}: {}\n--- stdout\n{}\n--- stderr\n{}",
        who.name(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "the scenario did not run\n{text}");
    eprintln!("{text}");
    out
}

/// Coordinates the shared `ces` cgroup parents between concurrent tests.
struct CgroupUse {
    lock: File,
}

const CGROUP_LOCK: &str = "/tmp/.ces-native-tests-cgroups.lock";

impl CgroupUse {
    fn shared() -> CgroupUse {
        Self::take(libc::LOCK_SH)
    }

    fn exclusive() -> CgroupUse {
        Self::take(libc::LOCK_EX)
    }

    fn take(op: libc::c_int) -> CgroupUse {
        let lock = File::options().create(true).append(true).open(CGROUP_LOCK).unwrap();
        assert!(flock(&lock, op));
        CgroupUse { lock }
    }
}

fn flock(file: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

impl Drop for CgroupUse {
    fn drop(&mut self) {
        flock(&self.lock, libc::LOCK_UN);
        // The last user out removes the shared parents.
        if flock(&self.lock, libc::LOCK_EX | libc::LOCK_NB) {
            remove_shared_cgroups();
            flock(&self.lock, libc::LOCK_UN);
        }
    }
}

fn remove_shared_cgroups() {
    let (uid, _) = test_user();
    let _ = remove_delegation(uid);
    for dir in cgroup_dirs("/ces") {
        let _ = fs::remove_dir(dir);
    }
}

/// `path` (like `/ces/x`) in every cgroup hierarchy mounted here.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter(|l| l.split(" - ").nth(1).is_some_and(|s| s.starts_with("cgroup ") || s.starts_with("cgroup2 ")))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mount| Path::new(mount).join(path.trim_start_matches('/')))
        .collect()
}

// ---------------------------------------------------------------------------
// The fixture: a busybox rootfs, host directories, a state root.
// ---------------------------------------------------------------------------

/// A fixture's directory: its own (removed at the end), or another
/// process's.
enum FxDir {
    Owned(tempfile::TempDir),
    Borrowed(PathBuf),
}

impl FxDir {
    fn path(&self) -> &Path {
        match self {
            FxDir::Owned(t) => t.path(),
            FxDir::Borrowed(p) => p,
        }
    }
}

struct Fx {
    who: Who,
    dir: FxDir,
    /// Run state directories are `<dir>/<run_prefix>-<n>`.
    run_prefix: &'static str,
    rootfs: PathBuf,
    state_root: PathBuf,
    data: PathBuf,
    out: PathBuf,
    host_uid: u32,
    host_gid: u32,
    runs: AtomicU32,
}

fn busybox_rootfs_entries() -> Vec<Entry> {
    let mut entries = busybox_entries();
    for applet in ["mkfifo", "seq", "grep", "stat", "kill", "unshare", "mount", "cut", "tr", "readlink"] {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    entries.push(Entry::dir("root"));
    entries.push(Entry::dir("mnt"));
    entries
}

/// `RUST_LOG=debug` shows libcontainer's own account of a failure.
fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

impl Fx {
    fn new() -> Fx {
        init_logging();
        let who = Who::from_env();
        let (test_uid, test_gid) = (env_u32("CES_TEST_UID"), env_u32("CES_TEST_GID"));
        let dir = FxDir::Owned(tempfile::Builder::new().prefix("ces-native-").tempdir().unwrap());
        // As root with the user mapped to the test user, the container's
        // processes must be able to reach the run directories.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let layer = Layer::new(busybox_rootfs_entries()).tar();
        apply_layer(&rootfs, &layer[..], &UnpackOptions::for_current_user()).unwrap();
        let data = dir.path().join("safe_data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("hello.txt"), "hello from the safe data\n").unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        let out = dir.path().join("outputs");
        fs::create_dir(&out).unwrap();
        let (host_uid, host_gid) = match who {
            Who::Root => (0, 0),
            Who::Sudo | Who::Rootless => (test_uid, test_gid),
        };
        std::os::unix::fs::chown(&out, Some(host_uid), Some(host_gid)).unwrap();
        let state_root = dir.path().join("containers");
        Fx { who, rootfs, state_root, data, out, host_uid, host_gid, dir, run_prefix: "run", runs: AtomicU32::new(0) }
    }

    /// The fixture another process made in `dir`; runs go to `<dir>/held-<n>`.
    fn borrowed(dir: PathBuf) -> Fx {
        init_logging();
        let who = Who::from_env();
        let (host_uid, host_gid) = match who {
            Who::Root => (0, 0),
            Who::Sudo | Who::Rootless => (env_u32("CES_TEST_UID"), env_u32("CES_TEST_GID")),
        };
        Fx {
            who,
            rootfs: dir.join("rootfs"),
            state_root: dir.join("containers"),
            data: dir.join("safe_data"),
            out: dir.join("outputs"),
            host_uid,
            host_gid,
            dir: FxDir::Borrowed(dir),
            run_prefix: "held",
            runs: AtomicU32::new(0),
        }
    }

    fn runtime(&self) -> NativeRuntime {
        NativeRuntime::new(self.state_root.clone())
    }

    /// A run of `args` with the standard mounts: /safe_data (ro), /safe_outputs (rw).
    fn spec(&self, args: &[&str]) -> RunSpec {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let id = format!("t{}-{n}", std::process::id());
        let state_dir = self.dir.path().join(format!("{}-{n}", self.run_prefix));
        fs::create_dir(&state_dir).unwrap();
        RunSpec {
            id,
            name: None,
            image: ImageSpec {
                reference: "busybox:test".to_owned(),
                digest: ces_image::Digest::of(b"busybox"),
                rootfs: Rootfs::Tree(self.rootfs.clone()),
            },
            process: ProcessSpec {
                args: args.iter().map(|a| a.to_string()).collect(),
                env: vec![EnvVar::new("PATH", "/bin"), EnvVar::new("HOME", "/root")],
                cwd: "/".to_owned(),
                user: ContainerUser { uid: 0, gid: 0 },
                terminal: false,
                interactive: false,
                stop_timeout: ProcessSpec::DEFAULT_STOP_TIMEOUT,
            },
            mounts: vec![
                MountSpec {
                    destination: "/safe_data".to_owned(),
                    kind: MountKind::Bind { source: self.data.clone() },
                    access: Access::Ro,
                },
                MountSpec {
                    destination: "/safe_outputs".to_owned(),
                    kind: MountKind::Bind { source: self.out.clone() },
                    access: Access::Rw,
                },
            ],
            limits: Limits {
                memory: 512 * MIB,
                cpus: None,
                pids: None,
                shm_size: 64 * MIB,
                time_limit: None,
                rootfs_writes: None,
            },
            ports: Vec::new(),
            devices: Default::default(),
            identity: Identity { host_uid: self.host_uid, host_gid: self.host_gid },
            state_dir,
            pins: Default::default(),
        }
    }

    fn sh(&self, script: &str) -> RunSpec {
        self.spec(&["sh", "-c", script])
    }

    fn run(&self, spec: &RunSpec) -> Exit {
        let started = Instant::now();
        let exit = self.runtime().run(spec).unwrap_or_else(|e| panic!("run {:?}: {}", spec.process.args, chain(&e)));
        eprintln!("{:?} -> {exit:?} in {:?}", spec.process.args, started.elapsed());
        exit
    }

    fn output(&self, name: &str) -> String {
        fs::read_to_string(self.out.join(name)).unwrap_or_default()
    }

    /// Nothing left: no mount under the temp dir, no container state, no
    /// run record, no cgroup of a run of this fixture, state dirs removed.
    fn assert_clean(&self) {
        let root = self.dir.path().to_string_lossy().into_owned();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let leaked: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&root)).collect();
        assert!(leaked.is_empty(), "mounts left behind: {leaked:#?}");
        if self.state_root.exists() {
            let left: Vec<_> = fs::read_dir(&self.state_root)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                // Run records are checked below; compiled seccomp profiles are kept on purpose.
                .filter(|n| n != ".ces-runs" && n != ces_runtime::native::SECCOMP_CACHE_DIR)
                .collect();
            assert!(left.is_empty(), "container state left behind: {left:?}");
            let records = self.state_root.join(".ces-runs");
            if records.exists() {
                let left: Vec<_> = fs::read_dir(&records).unwrap().collect();
                assert!(left.is_empty(), "run records left behind: {left:?}");
            }
        }
        for n in 0..self.runs.load(Ordering::SeqCst) {
            let state_dir = self.dir.path().join(format!("{}-{n}", self.run_prefix));
            assert!(!state_dir.exists(), "{} left behind", state_dir.display());
            let id = format!("t{}-{n}", std::process::id());
            for dir in cgroup_dirs(&cgroup_path(self.who, &id)) {
                assert!(!dir.exists(), "cgroup left behind: {}", dir.display());
            }
            let mounts = Path::new("/run/ces").join(&id);
            assert!(!mounts.exists(), "{} left behind", mounts.display());
        }
    }
}

fn cgroup_path(who: Who, id: &str) -> String {
    match who {
        Who::Rootless => format!("/ces/user-{}/{id}", nix::unistd::geteuid()),
        _ => format!("/ces/{id}"),
    }
}

fn env_u32(name: &str) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn run_as(who: Who, name: &str) {
    scenario(name, who);
}

// ---------------------------------------------------------------------------
// Scenarios (each runs in a child process started by a test below; the
// container's findings go to files in /safe_outputs, read back here).
// ---------------------------------------------------------------------------

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_exit_codes() {
    let fx = Fx::new();
    assert_eq!(fx.run(&fx.spec(&["true"])), Exit::Code(0));
    assert_eq!(fx.run(&fx.spec(&["echo", "hello from the container"])), Exit::Code(0));
    assert_eq!(fx.run(&fx.sh("exit 3")), Exit::Code(3));
    let killed = fx.run(&fx.sh("kill -TERM $$"));
    assert_eq!(killed, Exit::Signal(15));
    assert_eq!(killed.code(), 143);
    assert_eq!(fx.run(&fx.spec(&["no-such-command"])), Exit::Code(127));
    // Start-to-exit of `true`, for the record (no threshold).
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let spec = fx.spec(&["true"]);
            let started = Instant::now();
            assert_eq!(fx.runtime().run(&spec).unwrap(), Exit::Code(0));
            started.elapsed()
        })
        .collect();
    times.sort();
    eprintln!("start-to-exit of `true`: median {:?} (of {times:?})", times[2]);
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_non_root_user() {
    let fx = Fx::new();
    let script = r#"
        echo "$(id -u):$(id -g)" > /safe_outputs/id
        pwd > /safe_outputs/cwd
        touch /safe_outputs/mine
        grep -E '^(NoNewPrivs|Seccomp|CapEff|CapPrm):' /proc/self/status > /safe_outputs/status
        cat /proc/self/uid_map | tr -s ' ' > /safe_outputs/uid_map
        cat /proc/self/gid_map | tr -s ' ' > /safe_outputs/gid_map
        cat /proc/self/setgroups > /safe_outputs/setgroups
        unshare -U true 2>/dev/null; echo "unshare=$?" >> /safe_outputs/result
        echo more >> /etc/passwd 2>/dev/null; echo "etc_write=$?" >> /safe_outputs/result
        cat /safe_data/hello.txt > /dev/null; echo "data_read=$?" >> /safe_outputs/result
    "#;
    let mut spec = fx.sh(script);
    spec.process.user = ContainerUser { uid: 1000, gid: 1000 };
    // A working directory the image lacks is created, as docker does.
    spec.process.cwd = "/home/user/work".to_owned();
    assert_eq!(fx.run(&spec), Exit::Code(0));
    assert_eq!(fx.output("id"), "1000:1000\n");
    assert_eq!(fx.output("cwd"), "/home/user/work\n");
    let meta = fs::metadata(fx.out.join("mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (fx.host_uid, fx.host_gid));
    let status = fx.output("status");
    for expected in ["NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000"] {
        assert!(status.contains(expected), "{expected} not in {status}");
    }
    // Root mode: the container's ids are a block of unprivileged host ids,
    // the user among them; otherwise the user is mapped onto the
    // container's root (one host id).
    let uid_map = if fx.who == Who::Root { "0 1879048192 65536" } else { "1000 0 1" };
    assert_eq!(fx.output("uid_map").trim(), uid_map);
    let gid_map = if fx.who == Who::Root { "0 1879048192 65536" } else { "1000 0 1" };
    assert_eq!(fx.output("gid_map").trim(), gid_map);
    // Root mode's namespace (made by ces) lets its root set groups, as
    // libcontainer's did: the devices' groups, the user's in ces-init.
    if fx.who == Who::Root {
        assert_eq!(fx.output("setgroups"), "allow\n");
    }
    let result = fx.output("result");
    // Rootless, the image's files belong to the container's user (the
    // invoking user unpacked them): it may change them, in its
    // copy-on-write layer. In root mode they keep the image's owners (root
    // owns /etc/passwd, not uid 1000); for a sudo user, they are nobody's.
    let etc_write = if fx.who == Who::Rootless { "etc_write=0" } else { "etc_write=1" };
    for expected in ["unshare=1", etc_write, "data_read=0"] {
        assert!(result.lines().any(|l| l == expected), "{expected} not in\n{result}");
    }
    fx.assert_clean();
}

/// A bind source pinned when it was checked: as root (root mode, and root
/// for a sudo user) the container gets the pinned directory, not what the
/// path leads to by the time of the mount (a user who swapped a directory
/// of theirs for a link in between). Rootless, ces cannot mount from a
/// descriptor: the path is mounted (it can only reach what the user can).
#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_pinned_binds() {
    let fx = Fx::new();
    let checked = fx.dir.path().join("checked");
    fs::create_dir(&checked).unwrap();
    fs::write(checked.join("checked.txt"), "the directory that was checked\n").unwrap();
    fs::set_permissions(&checked, fs::Permissions::from_mode(0o755)).unwrap();
    let pin = fs::File::open(&checked).unwrap();
    let mut spec = fx.sh("ls /safe_data > /safe_outputs/list");
    // The path now leads elsewhere (to the fixture's data).
    spec.pins.add(fx.data.clone(), std::sync::Arc::new(pin.into()));
    assert_eq!(fx.run(&spec), Exit::Code(0));
    let expected = if fx.who == Who::Rootless { "hello.txt\n" } else { "checked.txt\n" };
    assert_eq!(fx.output("list"), expected);
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_mounts() {
    let fx = Fx::new();
    let script = r#"
        cat /safe_data/hello.txt > /safe_outputs/read
        touch /safe_data/new 2>/dev/null; echo "data_write=$?" >> /safe_outputs/result
        echo out > /safe_outputs/written; echo "out_write=$?" >> /safe_outputs/result
        mkdir /safe_outputs/sub && touch /safe_outputs/sub/f; echo "out_mkdir=$?" >> /safe_outputs/result
        touch /sys/kernel/x 2>/dev/null; echo "sys_write=$?" >> /safe_outputs/result
        echo 1 > /proc/sys/kernel/domainname 2>/dev/null; echo "proc_sys_write=$?" >> /safe_outputs/result
        echo "timer_list=$(cat /proc/timer_list | wc -c)" >> /safe_outputs/result
        echo "keys=$(cat /proc/keys | wc -c)" >> /safe_outputs/result
        echo "acpi=$(ls /proc/acpi | wc -l)" >> /safe_outputs/result
        ls /dev > /safe_outputs/dev
        grep -E ' /dev/shm | /scratch ' /proc/mounts > /safe_outputs/tmpfs
        head -c 100000 /dev/zero > /scratch/f; echo "scratch_write=$?" >> /safe_outputs/result
        id -u > /safe_outputs/uid
    "#;
    let mut spec = fx.sh(script);
    spec.mounts.push(MountSpec {
        destination: "/scratch".to_owned(),
        kind: MountKind::Tmpfs { size: Some(8 * MIB) },
        access: Access::Rw,
    });
    assert_eq!(fx.run(&spec), Exit::Code(0));
    assert_eq!(fx.output("read"), "hello from the safe data\n");
    let result = fx.output("result");
    for expected in [
        "data_write=1",
        "out_write=0",
        "out_mkdir=0",
        "sys_write=1",
        "proc_sys_write=1",
        "timer_list=0",
        "keys=0",
        "acpi=0",
        "scratch_write=0",
    ] {
        assert!(result.lines().any(|l| l == expected), "{expected} not in\n{result}");
    }
    assert!(!fx.data.join("new").exists(), "the read-only bind mount was written");
    // Files the container creates on the host belong to the invoking user.
    for created in ["written", "sub", "sub/f"] {
        let meta = fs::metadata(fx.out.join(created)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (fx.host_uid, fx.host_gid), "owner of {created}");
    }
    assert_eq!(fx.output("uid"), "0\n");
    let dev: Vec<String> = fx.output("dev").lines().map(str::to_owned).collect();
    for node in ["null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "mqueue"] {
        assert!(dev.iter().any(|d| d == node), "/dev/{node} missing: {dev:?}");
    }
    for absent in ["sda", "mem", "kmsg", "fuse"] {
        assert!(!dev.iter().any(|d| d == absent), "/dev/{absent} present: {dev:?}");
    }
    let tmpfs = fx.output("tmpfs");
    assert!(tmpfs.contains("/dev/shm tmpfs") && tmpfs.contains("size=65536k"), "{tmpfs}");
    assert!(tmpfs.contains("/scratch tmpfs") && tmpfs.contains("size=8192k"), "{tmpfs}");
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_failed_start_leaves_nothing() {
    let fx = Fx::new();
    // A missing source is refused up front, naming it.
    let mut spec = fx.spec(&["true"]);
    let missing = fx.dir.path().join("no-such-dir");
    spec.mounts.push(MountSpec {
        destination: "/missing".to_owned(),
        kind: MountKind::Bind { source: missing.clone() },
        access: Access::Ro,
    });
    match fx.runtime().run(&spec) {
        Err(RuntimeError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an error about {}, got {other:?}", missing.display()),
    }
    fs::remove_dir(&spec.state_dir).unwrap();
    // A mount point the image makes impossible (under a file) fails while
    // the container is being set up: the overlay, the cgroup, the
    // container's state and the record are removed all the same.
    let mut spec = fx.spec(&["true"]);
    spec.mounts.push(MountSpec {
        destination: "/bin/busybox/x".to_owned(),
        kind: MountKind::Bind { source: fx.data.clone() },
        access: Access::Ro,
    });
    match fx.runtime().run(&spec) {
        Err(e @ RuntimeError::Start { .. }) => eprintln!("refused: {}", chain(&e)),
        other => panic!("expected a start error, got {other:?}"),
    }
    fx.assert_clean();
}

/// A manifest of a tree: every path with its type, mode, owner, size and content.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                format!("{:x}", fs::read(&path).unwrap().iter().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(*b)))
            } else if meta.file_type().is_symlink() {
                fs::read_link(&path).unwrap().display().to_string()
            } else {
                String::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {} {content}",
                path.strip_prefix(root).unwrap().display(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.len()
            ));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_rootfs_is_copy_on_write() {
    let fx = Fx::new();
    let before = tree(&fx.rootfs);
    let script = format!(
        r#"
        echo changed > /etc/passwd; echo "etc_write=$?" >> /safe_outputs/result
        rm /bin/true; echo "rm=$?" >> /safe_outputs/result
        mkdir /newdir && echo new > /newdir/file; echo "new=$?" >> /safe_outputs/result
        echo tmp > /tmp/file; echo "tmp=$?" >> /safe_outputs/result
        cat /etc/passwd >> /safe_outputs/passwd
        sync /etc/passwd; echo "sync=$?" >> /safe_outputs/result
        {ROOT_MOUNT_LINE} >> /safe_outputs/root_mount
    "#
    );
    assert_eq!(fx.run(&fx.sh(&script)), Exit::Code(0));
    let result = fx.output("result");
    // Its own layer is thrown away: never synced, even when asked.
    let root_mount = fx.output("root_mount");
    assert_eq!(mountinfo::fs_and_options(&root_mount).map(|(fs, _)| fs), Some("overlay"), "{root_mount}");
    if ces_image::rootfs::overlay_volatile() {
        assert!(mountinfo::is_volatile_overlay(&root_mount), "{root_mount}");
    }
    assert!(result.lines().any(|l| l == "sync=0"), "{result}");
    match fx.who {
        // The container's root owns the image's files: it may change them,
        // in its own copy-on-write layer.
        Who::Root | Who::Rootless => {
            for expected in ["etc_write=0", "rm=0", "new=0", "tmp=0"] {
                assert!(result.lines().any(|l| l == expected), "{expected} not in\n{result}");
            }
            assert_eq!(fx.output("passwd"), "changed\n");
        }
        // Mapped to another user, it cannot write root's files at all.
        Who::Sudo => {
            assert!(result.lines().any(|l| l == "etc_write=1"), "{result}");
            assert!(result.lines().any(|l| l == "rm=1"), "{result}");
        }
    }
    assert_eq!(tree(&fx.rootfs), before, "the cached rootfs changed");
    // A second run sees the image as it was.
    assert_eq!(fx.run(&fx.sh("test -x /bin/true && ! test -e /newdir && grep -q root: /etc/passwd")), Exit::Code(0));
    fx.assert_clean();
}

/// An image kept as its layers (unpacked alone, as the store does, by the
/// user who runs it): the container sees them merged (a whiteout and an
/// opaque directory of the upper layer hide the lower layer's), its writes
/// go to its own layer, and no layer changes.
#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_layers_are_mounted_as_an_overlay() {
    let fx = Fx::new();
    let mut lower = busybox_rootfs_entries();
    lower.extend([
        Entry::file("etc/old", "old\n"),
        Entry::dir("data"),
        Entry::file("data/a", "a\n"),
        Entry::file("gone", "gone\n"),
        Entry::dir("tmp/x"),
    ]);
    let upper = vec![
        Entry::dir("etc"),
        Entry::file("etc/new", "new\n"),
        Entry::whiteout("gone"),
        Entry::dir("data"),
        Entry::opaque("data"),
        Entry::file("data/b", "b\n"),
    ];
    let mut dirs = Vec::new();
    let mut trusted = true;
    for (i, entries) in [lower, upper].into_iter().enumerate() {
        let dir = fx.dir.path().join(format!("layer{i}"));
        fs::create_dir(&dir).unwrap();
        let made = unpack_layer(&dir, &Layer::new(entries).tar()[..], &UnpackOptions::for_current_user()).unwrap();
        assert!(made.overlay && made.implicit_dirs.is_empty(), "{made:?}");
        trusted &= made.trusted;
        dirs.push(dir);
    }
    assert_eq!(trusted, fx.who != Who::Rootless, "root marks opaque directories for its own overlays");
    let before: Vec<_> = dirs.iter().map(|d| tree(d)).collect();
    let layered = Rootfs::Layers(Layers { dirs: dirs.clone(), mount: dirs.clone(), trusted });
    let script = r#"
        test ! -e /gone && echo "gone=hidden" >> /safe_outputs/result
        ls /data >> /safe_outputs/data
        cat /etc/old /etc/new >> /safe_outputs/etc
        echo changed > /etc/old; echo "write=$?" >> /safe_outputs/result
        rm /bin/true; echo "rm=$?" >> /safe_outputs/result
    "#;
    let mut spec = fx.sh(script);
    spec.image.rootfs = layered.clone();
    assert_eq!(fx.run(&spec), Exit::Code(0));
    let result = fx.output("result");
    assert!(result.contains("gone=hidden"), "the upper layer's whiteout hides /gone:\n{result}");
    assert_eq!(fx.output("data"), "b\n", "the opaque /data shows the upper layer's entries only");
    assert_eq!(fx.output("etc"), "old\nnew\n", "/etc merges both layers");
    if fx.who != Who::Sudo {
        assert!(result.contains("write=0") && result.contains("rm=0"), "{result}");
    }
    let after: Vec<_> = dirs.iter().map(|d| tree(d)).collect();
    assert_eq!(after, before, "a layer changed");
    let mut again = fx.sh("test -x /bin/true && grep -qx old /etc/old");
    again.image.rootfs = layered;
    assert_eq!(fx.run(&again), Exit::Code(0), "a second run sees the image as it was");
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_network() {
    let fx = Fx::new();
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let script = format!(
        r#"
        cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' > /safe_outputs/interfaces
        ip link show lo > /safe_outputs/lo
        nc -w 2 127.0.0.1 {port} </dev/null; echo "host_connect=$?" >> /safe_outputs/result
        # The listener's stdin must not end first: busybox nc would hang up.
        sleep 60 | nc -l -p 9000 > /safe_outputs/received &
        for i in $(seq 200); do echo over-loopback | nc 127.0.0.1 9000 && break; sleep 0.05; done
        for i in $(seq 200); do [ -s /safe_outputs/received ] && break; sleep 0.05; done
        nc -w 2 1.1.1.1 80 </dev/null 2>/dev/null; echo "outside=$?" >> /safe_outputs/result
        "#
    );
    assert_eq!(fx.run(&fx.sh(&script)), Exit::Code(0));
    assert_eq!(fx.output("interfaces"), "lo\n", "interfaces other than lo");
    let lo = fx.output("lo");
    assert!(lo.contains("UP") && lo.contains("LOOPBACK"), "{lo}");
    assert_eq!(fx.output("received"), "over-loopback\n");
    let result = fx.output("result");
    assert!(result.lines().any(|l| l == "host_connect=1"), "{result}");
    assert!(result.lines().any(|l| l == "outside=1"), "{result}");
    // Nothing reached the host's listener.
    host.set_nonblocking(true).unwrap();
    assert!(host.accept().is_err(), "the container reached the host's 127.0.0.1");
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_init() {
    let fx = Fx::new();
    // An orphan (its parent shell exits at once) is re-parented to PID 1;
    // once it exits, only PID 1 can reap it.
    let script = r#"
        tr '\0' ' ' < /proc/1/cmdline > /safe_outputs/pid1_cmdline
        cat /proc/1/comm > /safe_outputs/pid1_comm
        echo $$ > /safe_outputs/workload_pid
        grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/self/status > /safe_outputs/status
        grep -E '^(CapEff|CapBnd):' /proc/1/status > /safe_outputs/pid1_status
        readlink /proc/1/fd/1 2>/dev/null; echo "pid1_fd=$?" >> /safe_outputs/result
        cat /proc/1/environ > /dev/null 2>&1; echo "pid1_environ=$?" >> /safe_outputs/result
        ls /proc/1/root/ > /dev/null 2>&1; echo "pid1_root=$?" >> /safe_outputs/result
        mkfifo /tmp/go
        sh -c "sh -c 'echo \$\$ > /tmp/orphan; read x < /tmp/go' &"
        while [ ! -s /tmp/orphan ]; do sleep 0.01; done
        orphan=$(cat /tmp/orphan)
        grep PPid /proc/$orphan/status | tr -d '\t ' > /safe_outputs/orphan_ppid_before
        echo go > /tmp/go
        for i in $(seq 500); do [ -e /proc/$orphan ] || break; sleep 0.02; done
        if [ -e /proc/$orphan ]; then echo "orphan=$(cut -d' ' -f3 /proc/$orphan/stat)" >> /safe_outputs/result; else echo "orphan=reaped" >> /safe_outputs/result; fi
        sh -c 'exec sleep 3143' > /dev/null 2>&1 &
    "#;
    // The workload ends with a process of its own still running (the
    // kernel kills it with the init): the container's removal meets a cgroup
    // that may not be empty yet (assert_clean: its cgroups were removed).
    assert_eq!(fx.run(&fx.sh(script)), Exit::Code(0));
    assert_eq!(fx.output("pid1_cmdline").trim(), "ces-init");
    assert_eq!(fx.output("pid1_comm"), "ces-init\n");
    assert_ne!(fx.output("workload_pid").trim(), "1");
    assert_eq!(fx.output("orphan_ppid_before"), "PPid:1\n", "the orphan was not re-parented to PID 1");
    let result = fx.output("result");
    assert!(result.lines().any(|l| l == "orphan=reaped"), "{result}");
    // PID 1 is not dumpable: the workload cannot look into it.
    for expected in ["pid1_fd=1", "pid1_environ=1", "pid1_root=1"] {
        assert!(result.lines().any(|l| l == expected), "{expected} not in\n{result}");
    }
    let status = fx.output("status");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    // Root in the container: docker's set minus MKNOD, NET_RAW, AUDIT_WRITE,
    // SETFCAP, SYS_CHROOT; CAP_NET_ADMIN (bit 12) is gone from every set. In
    // root mode FSETID (bit 4) too: writes clear setuid bits in binds.
    let caps = if fx.who == Who::Root { "00000000000005eb" } else { "00000000000005fb" };
    assert!(status.contains(&format!("CapEff:\t{caps}")), "{status}");
    assert!(status.contains(&format!("CapBnd:\t{caps}")), "{status}");
    let pid1 = fx.output("pid1_status");
    assert!(pid1.contains("CapEff:\t0000000000000020"), "PID 1 keeps only CAP_KILL: {pid1}");
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_seccomp() {
    let fx = Fx::new();
    // unshare(CLONE_NEWUSER) needs no capability: only seccomp stops it.
    let script = r#"
        unshare -U true 2>/safe_outputs/unshare_err; echo "unshare=$?" >> /safe_outputs/result
        unshare -r true 2>/dev/null; echo "unshare_r=$?" >> /safe_outputs/result
        mount -t tmpfs none /mnt 2>/dev/null; echo "mount=$?" >> /safe_outputs/result
        sh -c 'exit 0'; echo "fork=$?" >> /safe_outputs/result
    "#;
    assert_eq!(fx.run(&fx.sh(script)), Exit::Code(0));
    let result = fx.output("result");
    for expected in ["unshare=1", "unshare_r=1", "mount=1", "fork=0"] {
        assert!(result.lines().any(|l| l == expected), "{expected} not in\n{result}");
    }
    assert!(fx.output("unshare_err").contains("Operation not permitted"), "{}", fx.output("unshare_err"));
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
#[cfg(target_arch = "x86_64")]
fn scenario_foreign_abis() {
    let fx = Fx::new();
    for (name, executable) in probe::probes() {
        let path = fx.rootfs.join("bin").join(name);
        fs::write(&path, executable).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The probe works: the native socket call succeeds.
    assert_eq!(fx.run(&fx.spec(&["/bin/inet"])), Exit::Code(probe::SUCCEEDED));
    assert_eq!(fx.run(&fx.spec(&["/bin/vsock"])), Exit::Code(libc::EPERM));
    // No 32-bit or x32 system call gets through (old profile: the i386
    // socketcall made a vsock socket, exit 100).
    for name in ["i386-socketcall", "i386-socket", "x32-getpid"] {
        let exit = fx.run(&fx.spec(&[&format!("/bin/{name}")]));
        assert_eq!(exit, Exit::Signal(libc::SIGSYS), "{name}");
    }
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_out_of_memory() {
    let fx = Fx::new();
    let mut spec = fx.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    spec.limits.memory = 32 * MIB;
    let exit = fx.run(&spec);
    assert_eq!(exit, Exit::OutOfMemory);
    assert_eq!(exit.code(), 137);
    // Under the limit, the same works.
    let mut spec = fx.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=8M", "count=1"]);
    spec.limits.memory = 32 * MIB;
    assert_eq!(fx.run(&spec), Exit::Code(0));
    fx.assert_clean();
}

/// Two runs, one after the other on one thread, each get a user namespace
/// of their own (root mode's is made by ces, which keeps namespaces for its
/// idmapped mounts: never one run's for the next). The first is held open
/// here while the second runs: a freed namespace's inode number is reused.
#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_each_run_its_own_user_namespace() {
    let fx = Arc::new(Fx::new());
    let wait = "echo ready > /safe_outputs/ready-$0; while [ ! -e /safe_outputs/go-$0 ]; do sleep 0.02; done";
    // Named apart from the other modes' runs of this test, which may run now.
    let names = ["a", "b"].map(|n| format!("{}-{n}", std::process::id()));
    let specs = names.clone().map(|name| fx.spec(&["sh", "-c", wait, &name]));
    let ids = specs.clone().map(|spec| spec.id);
    let fx2 = fx.clone();
    let runs = std::thread::spawn(move || specs.map(|spec| fx2.run(&spec)));
    // The user namespace of run `name`'s workload (found by its command
    // line), held open.
    let namespace_of = |name: &str| -> File {
        let cmdline = ["sh", "-c", wait, name].map(|a| format!("{a}\0")).concat().into_bytes();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|p| fs::read(p.path().join("cmdline")).is_ok_and(|c| c == cmdline))
            .find_map(|p| File::open(p.path().join("ns/user")).ok())
            .unwrap_or_else(|| panic!("no workload of run {name} to open"))
    };
    let mut held = Vec::new();
    for (name, id) in names.iter().zip(&ids) {
        wait_for_file(&fx.out.join(format!("ready-{name}")));
        // As root, the run's mounts and their mount points are on a tmpfs
        // in ces's own mount namespace: this thread, in the host's, sees an
        // empty directory.
        let run_dir = Path::new("/run/ces").join(id);
        if fx.who == Who::Root {
            let seen: Vec<_> = fs::read_dir(&run_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(seen.is_empty(), "the host sees {seen:?} in {}", run_dir.display());
        }
        held.push(namespace_of(name));
        fs::write(fx.out.join(format!("go-{name}")), "").unwrap();
    }
    assert_eq!(runs.join().unwrap(), [Exit::Code(0), Exit::Code(0)]);
    let [a, b] = [&held[0], &held[1]].map(|f| f.metadata().unwrap().ino());
    assert_ne!(a, b, "the second run joined the first's user namespace");
    let own = fs::metadata("/proc/self/ns/user").unwrap().ino();
    assert!(a != own && b != own, "a container in the host's user namespace");
    drop(held);
    fx.assert_clean();
}

/// Runs `spec` in a thread; returns the thread's handle and its tid once it
/// has started.
fn run_in_thread(fx: &Arc<Fx>, spec: RunSpec) -> (std::thread::JoinHandle<Exit>, i32) {
    let tid = Arc::new(AtomicI32::new(0));
    let (fx2, tid2) = (fx.clone(), tid.clone());
    let handle = std::thread::spawn(move || {
        tid2.store(nix::unistd::gettid().as_raw(), Ordering::SeqCst);
        fx2.run(&spec)
    });
    while tid.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    (handle, tid.load(Ordering::SeqCst))
}

/// Sends `signal` to thread `tid` of this process (as a signal for the
/// `ces` process would reach its only thread).
fn tgkill(tid: i32, signal: libc::c_int) {
    // SAFETY: signalling a thread of this process, which blocks the signal
    // while it runs a container.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    assert_eq!(rc, 0);
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_signals_are_forwarded() {
    let fx = Arc::new(Fx::new());
    // SIGTERM to the thread running the container (as the `ces` binary's
    // only thread would get it): the workload gets it, through PID 1.
    let (handle, tid) = run_in_thread(&fx, fx.sh("echo ready > /safe_outputs/ready1; exec sleep 1000"));
    wait_for_file(&fx.out.join("ready1"));
    tgkill(tid, libc::SIGTERM);
    assert_eq!(handle.join().unwrap(), Exit::Signal(libc::SIGTERM));

    // A workload that handles SIGINT decides how it ends.
    let script = "trap 'echo got INT > /safe_outputs/trapped; exit 7' INT; echo ready > /safe_outputs/ready2; \
                  while true; do sleep 0.05; done";
    let (handle, tid) = run_in_thread(&fx, fx.sh(script));
    wait_for_file(&fx.out.join("ready2"));
    tgkill(tid, libc::SIGINT);
    assert_eq!(handle.join().unwrap(), Exit::Code(7));
    assert_eq!(fx.output("trapped"), "got INT\n");
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_stop_timeout() {
    let fx = Arc::new(Fx::new());
    // A workload that ignores SIGTERM (and whose shell waits in a child that
    // never gets it): once the stop timeout has run out, the container is
    // killed, all of it.
    let mut spec =
        fx.sh("trap '' TERM; echo ready > /safe_outputs/ready1; sleep 1000; echo survived > /safe_outputs/x");
    spec.process.stop_timeout = Duration::from_millis(300);
    let (handle, tid) = run_in_thread(&fx, spec);
    wait_for_file(&fx.out.join("ready1"));
    tgkill(tid, libc::SIGTERM);
    let exit = handle.join().unwrap();
    assert_eq!(exit, Exit::Signal(libc::SIGKILL));
    assert_eq!(exit.code(), 137);
    assert!(!fx.out.join("x").exists());

    // SIGQUIT is passed on too (it used to end the test process, as it
    // ended ces, with no clean-up).
    let (handle, tid) = run_in_thread(&fx, fx.sh("echo ready > /safe_outputs/ready2; exec sleep 1000"));
    wait_for_file(&fx.out.join("ready2"));
    tgkill(tid, libc::SIGQUIT);
    assert_eq!(handle.join().unwrap(), Exit::Signal(libc::SIGQUIT));

    // A workload that stops in time is not killed: it decides its exit.
    let mut spec = fx.sh("trap 'exit 3' HUP; echo ready > /safe_outputs/ready3; while true; do sleep 0.05; done");
    spec.process.stop_timeout = Duration::from_secs(600);
    let (handle, tid) = run_in_thread(&fx, spec);
    wait_for_file(&fx.out.join("ready3"));
    tgkill(tid, libc::SIGHUP);
    assert_eq!(handle.join().unwrap(), Exit::Code(3));
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_stdio_is_relayed() {
    let fx = Fx::new();
    // The container's stdout and stderr are pipes of its own, never this
    // process's (whatever they are), and its stdin is /dev/null.
    // (`$(...)` runs in a subshell: /proc/$$ is the shell, its fds unredirected.)
    let script = "for fd in 0 1 2; do l=$(readlink /proc/$$/fd/$fd); echo \"$l\" > /safe_outputs/fd$fd; done; \
                  seq 1 20000; echo to-stderr >&2; echo via-dev-stdout > /dev/stdout; echo via-dev-stderr > /dev/stderr";
    let ours = |fd: i32| fs::read_link(format!("/proc/self/fd/{fd}")).unwrap().to_string_lossy().into_owned();
    assert_eq!(fx.run(&fx.sh(script)), Exit::Code(0));
    assert_eq!(fx.output("fd0"), "/dev/null\n");
    for (fd, name) in [(1, "fd1"), (2, "fd2")] {
        let theirs = fx.output(name);
        assert!(theirs.starts_with("pipe:["), "{name}: {theirs}");
        assert_ne!(theirs.trim(), ours(fd), "{name} is this process's own");
    }
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_limits_in_cgroup() {
    let fx = Arc::new(Fx::new());
    // What the workload sees of its own limits, at /sys/fs/cgroup (read-only).
    let seen = "for f in memory.max memory.swap.max cpu.max pids.max memory/memory.limit_in_bytes \
                cpu/cpu.cfs_quota_us pids/pids.max; do \
                  [ -e /sys/fs/cgroup/$f ] && echo \"$f=$(cat /sys/fs/cgroup/$f)\"; done > /safe_outputs/seen; \
                mkdir /sys/fs/cgroup/x 2>/dev/null && echo mkdir-allowed >> /safe_outputs/seen; \
                for f in memory.max memory/memory.limit_in_bytes; do [ -e /sys/fs/cgroup/$f ] && \
                  (echo 999999999 > /sys/fs/cgroup/$f) 2>/dev/null && echo raised >> /safe_outputs/seen; done; grep -v '^0::/$' /proc/self/cgroup | grep ':/.' >> /safe_outputs/seen;";
    let mut spec = fx
        .sh(&format!("{seen} echo ready > /safe_outputs/ready; while [ ! -e /safe_outputs/go ]; do sleep 0.02; done"));
    spec.limits.memory = 48 * MIB;
    spec.limits.cpus = Some(0.5);
    spec.limits.pids = Some(64);
    let path = cgroup_path(fx.who, &spec.id);
    let (handle, _) = run_in_thread(&fx, spec);
    wait_for_file(&fx.out.join("ready"));
    let dirs = cgroup_dirs(&path);
    let read = |file: &str| {
        let dir = dirs.iter().find(|d| d.join(file).exists()).unwrap_or_else(|| panic!("no {file} under {path}"));
        fs::read_to_string(dir.join(file)).unwrap().trim().to_owned()
    };
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("memory.limit_in_bytes"), (48 * MIB).to_string());
        assert_eq!(read("cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu.cfs_period_us"), "100000");
    } else {
        assert_eq!(read("memory.max"), (48 * MIB).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
    }
    assert_eq!(read("pids.max"), "64");
    let seen = fs::read_to_string(fx.out.join("seen")).unwrap();
    let expected: &[&str] = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        &["memory.max=50331648", "cpu.max=50000 100000", "pids.max=64", "memory.swap.max=0"]
    } else {
        &["memory/memory.limit_in_bytes=50331648", "cpu/cpu.cfs_quota_us=50000", "pids/pids.max=64"]
    };
    for line in expected {
        assert!(seen.lines().any(|l| l == *line), "{line} not seen in the container:\n{seen}");
    }
    assert!(!seen.contains("mkdir-allowed"), "the container could write its cgroup:\n{seen}");
    assert!(!seen.contains("raised"), "the container could raise its own memory limit:\n{seen}");
    // In its cgroup namespace, every hierarchy's root is its own cgroup.
    assert!(!seen.contains(":/"), "the container sees cgroup paths outside its own:\n{seen}");
    // A process host root puts into the container's cgroup, outside its pid
    // namespace: it goes with the container, and so does the cgroup.
    let intruder = (fx.who == Who::Root).then(|| {
        let child = Command::new("sleep").arg("3600").spawn().unwrap();
        let moved = dirs.iter().filter(|d| fs::write(d.join("cgroup.procs"), child.id().to_string()).is_ok()).count();
        assert!(moved > 0, "moved into none of {dirs:?}");
        child
    });
    fs::write(fx.out.join("go"), "").unwrap();
    assert_eq!(handle.join().unwrap(), Exit::Code(0));
    if let Some(mut intruder) = intruder {
        use std::os::unix::process::ExitStatusExt;
        // A bound on the wait, not a measure.
        let ended = (0..500).find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            intruder.try_wait().unwrap()
        });
        if ended.is_none() {
            let _ = intruder.kill();
            let _ = intruder.wait();
        }
        assert_eq!(ended.and_then(|s| s.signal()), Some(libc::SIGKILL), "the intruder outlived the run");
    }
    fx.assert_clean();
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_limits_refused_without_delegation() {
    let fx = Fx::new();
    let spec = fx.spec(&["true"]);
    match fx.runtime().run(&spec) {
        Err(e @ RuntimeError::Limit { .. }) => {
            let message = chain(&e);
            assert!(message.contains("ces system setup"), "{message}");
            eprintln!("refused: {message}");
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    // Nothing was created.
    assert!(!fx.state_root.exists() || fs::read_dir(&fx.state_root).unwrap().count() == 0);
    assert_eq!(fs::read_dir(&spec.state_dir).unwrap().count(), 0);
}

/// `CES_NATIVE_STATE_ROOT=<dir> cargo test ... helper_cleanup_stale -- --ignored`:
/// removes what crashed runs left in a state root (as its owner).
#[test]
#[ignore = "a tool, not a test"]
fn helper_cleanup_stale() {
    let Ok(root) = std::env::var("CES_NATIVE_STATE_ROOT") else { return };
    init_logging();
    eprintln!("removed {}", cleanup_stale(Path::new(&root)).unwrap());
}

/// Holds a container for `scenario_cleanup_stale` until it is killed.
#[test]
#[ignore = "run by scenario_cleanup_stale in a child process"]
fn helper_hold_container() {
    let Ok(dir) = std::env::var("CES_NATIVE_HOLD_DIR") else { return };
    // The parent scenario's fixture; this run's state goes to <dir>/held-0.
    let fx = Fx::borrowed(PathBuf::from(dir));
    let mut spec = fx.sh("echo ready > /safe_outputs/held; exec sleep 1000");
    spec.id = std::env::var("CES_NATIVE_HOLD_ID").unwrap();
    fx.run(&spec);
    unreachable!("the holder is killed while its container runs");
}

/// Creates a file when dropped (a container waiting for it then ends).
struct ReleaseOnDrop(PathBuf);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, "");
    }
}

#[test]
#[ignore = "run by the tests in a child process"]
fn scenario_cleanup_stale() {
    let fx = Arc::new(Fx::new());
    let held_id = format!("held-{}", std::process::id());
    // A ces that dies (SIGKILL) while its container runs.
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_hold_container", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CES_NATIVE_HOLD_DIR", fx.dir.path())
        .env("CES_NATIVE_HOLD_ID", &held_id)
        .spawn()
        .unwrap();
    wait_for_file(&fx.out.join("held"));
    // A live container of another ces (this process) meanwhile.
    let (live, _) = run_in_thread(
        &fx,
        fx.sh("echo ready > /safe_outputs/live; while [ ! -e /safe_outputs/go ]; do sleep 0.02; done"),
    );
    wait_for_file(&fx.out.join("live"));
    // Whatever happens below, let the live container end.
    let _release = ReleaseOnDrop(fx.out.join("go"));
    // Only the holder's run is stale while the holder lives... none is.
    assert_eq!(cleanup_stale(&fx.state_root).unwrap(), 0);
    holder.kill().unwrap();
    holder.wait().unwrap();

    let held_state = fx.dir.path().join("held-0");
    assert!(fx.state_root.join(&held_id).exists(), "the crashed run left no state?");
    assert!(held_state.join("bundle").exists());
    let held_cgroups: Vec<PathBuf> =
        cgroup_dirs(&cgroup_path(fx.who, &held_id)).into_iter().filter(|d| d.exists()).collect();
    assert!(!held_cgroups.is_empty(), "the crashed run left no cgroup?");
    let rootfs_mount = held_state.join("rootfs");
    let mounted = |p: &Path| {
        fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split(' ').nth(4) == p.to_str())
    };
    // As root the overlay was mounted in a mount namespace of the dead ces's
    // own (the container still holds its copy): never on the host.
    assert!(!mounted(&rootfs_mount), "the crashed run's overlay is mounted on the host");

    assert_eq!(cleanup_stale(&fx.state_root).unwrap(), 1);
    assert!(!fx.state_root.join(&held_id).exists(), "container state left");
    assert!(!held_state.exists(), "state dir left");
    assert!(!mounted(&rootfs_mount), "overlay left mounted");
    for dir in &held_cgroups {
        assert!(!dir.exists(), "cgroup left: {}", dir.display());
    }
    // Idempotent, and the live container was not touched.
    assert_eq!(cleanup_stale(&fx.state_root).unwrap(), 0);
    assert!(!live.is_finished(), "the live container was stopped");
    fs::write(fx.out.join("go"), "").unwrap();
    assert_eq!(live.join().unwrap(), Exit::Code(0));
    fx.assert_clean();
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

#[test]
fn layers_are_mounted_as_an_overlay_as_root() {
    run_as(Who::Root, "scenario_layers_are_mounted_as_an_overlay");
}

#[test]
fn layers_are_mounted_as_an_overlay_for_a_user() {
    run_as(Who::Sudo, "scenario_layers_are_mounted_as_an_overlay");
}

#[test]
fn layers_are_mounted_as_an_overlay_rootless() {
    run_as(Who::Rootless, "scenario_layers_are_mounted_as_an_overlay");
}

#[test]
fn exit_codes_as_root() {
    let out = scenario("scenario_exit_codes", Who::Root);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the container"));
}

#[test]
fn exit_codes_rootless() {
    let out = scenario("scenario_exit_codes", Who::Rootless);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the container"));
}

#[test]
fn non_root_user_as_root() {
    run_as(Who::Root, "scenario_non_root_user");
}

#[test]
fn non_root_user_as_root_for_a_user() {
    run_as(Who::Sudo, "scenario_non_root_user");
}

#[test]
fn non_root_user_rootless() {
    run_as(Who::Rootless, "scenario_non_root_user");
}

#[test]
fn each_run_its_own_user_namespace_as_root() {
    run_as(Who::Root, "scenario_each_run_its_own_user_namespace");
}

#[test]
fn each_run_its_own_user_namespace_as_root_for_a_user() {
    run_as(Who::Sudo, "scenario_each_run_its_own_user_namespace");
}

#[test]
fn each_run_its_own_user_namespace_rootless() {
    run_as(Who::Rootless, "scenario_each_run_its_own_user_namespace");
}

#[test]
fn pinned_binds_as_root() {
    run_as(Who::Root, "scenario_pinned_binds");
}

#[test]
fn pinned_binds_as_root_for_a_user() {
    run_as(Who::Sudo, "scenario_pinned_binds");
}

#[test]
fn pinned_binds_rootless() {
    run_as(Who::Rootless, "scenario_pinned_binds");
}

#[test]
fn mounts_as_root() {
    run_as(Who::Root, "scenario_mounts");
}

#[test]
fn mounts_as_root_for_a_user() {
    run_as(Who::Sudo, "scenario_mounts");
}

#[test]
fn mounts_rootless() {
    run_as(Who::Rootless, "scenario_mounts");
}

#[test]
fn failed_start_leaves_nothing_as_root() {
    run_as(Who::Root, "scenario_failed_start_leaves_nothing");
}

#[test]
fn failed_start_leaves_nothing_rootless() {
    run_as(Who::Rootless, "scenario_failed_start_leaves_nothing");
}

#[test]
fn rootfs_is_copy_on_write_as_root() {
    run_as(Who::Root, "scenario_rootfs_is_copy_on_write");
}

#[test]
fn rootfs_is_copy_on_write_as_root_for_a_user() {
    run_as(Who::Sudo, "scenario_rootfs_is_copy_on_write");
}

#[test]
fn rootfs_is_copy_on_write_rootless() {
    run_as(Who::Rootless, "scenario_rootfs_is_copy_on_write");
}

#[test]
fn only_loopback_as_root() {
    run_as(Who::Root, "scenario_network");
}

#[test]
fn only_loopback_rootless() {
    run_as(Who::Rootless, "scenario_network");
}

#[test]
fn init_reaps_and_is_pid_1_as_root() {
    run_as(Who::Root, "scenario_init");
}

#[test]
fn init_reaps_and_is_pid_1_rootless() {
    run_as(Who::Rootless, "scenario_init");
}

#[test]
fn seccomp_is_enforced_as_root() {
    run_as(Who::Root, "scenario_seccomp");
}

#[test]
fn seccomp_is_enforced_rootless() {
    run_as(Who::Rootless, "scenario_seccomp");
}

#[test]
#[cfg(target_arch = "x86_64")]
fn foreign_abis_are_killed_as_root() {
    run_as(Who::Root, "scenario_foreign_abis");
}

#[test]
#[cfg(target_arch = "x86_64")]
fn foreign_abis_are_killed_as_root_for_a_user() {
    run_as(Who::Sudo, "scenario_foreign_abis");
}

#[test]
#[cfg(target_arch = "x86_64")]
fn foreign_abis_are_killed_rootless() {
    run_as(Who::Rootless, "scenario_foreign_abis");
}

#[test]
fn out_of_memory_as_root() {
    run_as(Who::Root, "scenario_out_of_memory");
}

#[test]
fn out_of_memory_rootless_with_delegation() {
    run_as(Who::Rootless, "scenario_out_of_memory");
}

#[test]
fn signals_are_forwarded_as_root() {
    run_as(Who::Root, "scenario_signals_are_forwarded");
}

#[test]
fn signals_are_forwarded_rootless() {
    run_as(Who::Rootless, "scenario_signals_are_forwarded");
}

#[test]
fn stop_timeout_kills_the_container_as_root() {
    run_as(Who::Root, "scenario_stop_timeout");
}

#[test]
fn stop_timeout_kills_the_container_as_root_for_a_user() {
    run_as(Who::Sudo, "scenario_stop_timeout");
}

#[test]
fn stop_timeout_kills_the_container_rootless() {
    run_as(Who::Rootless, "scenario_stop_timeout");
}

/// What the container wrote reached this process's stdout and stderr, all of it.
fn stdio_is_relayed(who: Who) {
    let out = scenario("scenario_stdio_is_relayed", who);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // (The first follows the test harness's `test scenario_... ... ` on its line.)
    let numbers: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.rsplit(' ').next())
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let expected: Vec<String> = (1..=20000).map(|n| n.to_string()).collect();
    assert!(numbers == expected, "the container's stdout arrived incomplete: {} lines", numbers.len());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l == "to-stderr"), "{stderr}");
    // `/dev/stdout` reopens the pipe: it is the container's user's.
    assert!(stdout.lines().any(|l| l == "via-dev-stdout"), "{stderr}");
    assert!(stderr.lines().any(|l| l == "via-dev-stderr"), "{stderr}");
}

#[test]
fn stdio_is_relayed_as_root() {
    stdio_is_relayed(Who::Root);
}

#[test]
fn stdio_is_relayed_as_root_for_a_user() {
    stdio_is_relayed(Who::Sudo);
}

#[test]
fn stdio_is_relayed_rootless() {
    stdio_is_relayed(Who::Rootless);
}

#[test]
fn limits_in_cgroup_as_root() {
    run_as(Who::Root, "scenario_limits_in_cgroup");
}

#[test]
fn limits_in_cgroup_rootless_with_delegation() {
    run_as(Who::Rootless, "scenario_limits_in_cgroup");
}

#[test]
fn rootless_limits_refused_without_delegation() {
    let (uid, _) = test_user();
    // No other test may hold the delegation meanwhile.
    let _exclusive = CgroupUse::exclusive();
    remove_delegation(uid).unwrap();
    let out = scenario_unlocked("scenario_limits_refused_without_delegation", Who::Rootless);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ces system setup"));
}

#[test]
fn cleanup_stale_as_root() {
    run_as(Who::Root, "scenario_cleanup_stale");
}

#[test]
fn cleanup_stale_rootless() {
    run_as(Who::Rootless, "scenario_cleanup_stale");
}

/// `-t` without a terminal on ces's stdin is refused before anything is
/// made (stdin is /dev/null here, whatever the test was started from).
#[test]
fn a_terminal_needs_one_on_stdin() {
    let fx = Fx::new();
    let mut spec = fx.spec(&["true"]);
    spec.process.terminal = true;
    let null = fs::File::open("/dev/null").unwrap();
    // SAFETY: fd 0 is swapped for /dev/null and back; no test reads stdin.
    let saved = unsafe { libc::dup(0) };
    assert!(saved >= 0);
    // SAFETY: both are open descriptors.
    unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) };
    let result = fx.runtime().run(&spec);
    // SAFETY: restores the saved descriptor.
    unsafe {
        libc::dup2(saved, 0);
        libc::close(saved);
    }
    let message = chain(&result.expect_err("a run with -t and no terminal"));
    assert!(message.contains("needs ces's standard input to be a terminal"), "{message}");
    assert_eq!(fs::read_dir(&spec.state_dir).unwrap().count(), 0);
}

#[test]
fn describe_tells_the_plan_and_creates_nothing() {
    let fx = Fx::new();
    let mut spec = fx.spec(&["true"]);
    spec.process.env.push(EnvVar::new("SECRET_TOKEN", "hunter2"));
    spec.limits.cpus = Some(1.5);
    let lines = fx.runtime().describe(&spec).unwrap();
    let text = lines.join("\n");
    eprintln!("{text}");
    let user = match fx.who {
        Who::Root => "container 0:0 is host 1879048192:1879048192 (root mode: container ids 0-65535 are host ids \
                      1879048192-1879113727, unprivileged"
            .to_owned(),
        Who::Sudo | Who::Rootless => format!("container 0:0 is host {}:{} (single-ID", fx.host_uid, fx.host_gid),
    };
    for expected in [
        "user, mount, pid, ipc, uts, network and cgroup",
        "loopback only",
        user.as_str(),
        "copy-on-write overlay",
        "mount: /safe_data <- ",
        "(bind, ro)",
        "mount: /safe_outputs <- ",
        "(bind, rw)",
        "memory 512 MiB",
        "cpus 1.5 (CFS quota 150000 us per 100000 us)",
        "no_new_privileges",
        "seccomp default profile",
        "/proc/kcore",
        "/proc/sys",
        "ces-init is PID 1",
        "x86_64 system calls only, any other ABI kills the process",
        "AF_VSOCK sockets denied",
        "killed 10 seconds after the first",
        "stdin /dev/null; stdout and stderr are pipes relayed by ces",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
    assert!(!text.contains("hunter2"));
    assert!(!fx.state_root.exists());
    assert_eq!(fs::read_dir(&spec.state_dir).unwrap().count(), 0);
}
