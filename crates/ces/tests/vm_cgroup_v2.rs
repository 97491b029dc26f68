//! The native runtime on a systemd host with pure cgroup v2, the kind TREs
//! run (this project's machines are hybrid v1 without systemd): one Debian 12
//! VM boot per test binary (`ces_testkit::vm`), in which `tests/vm/run` runs
//! `tests/vm/scenarios.sh` as root, as the user `analyst` from a login
//! session (`machinectl shell`) and as analyst's systemd user service
//! (`systemd-run --user`), with no `ces system setup`. The VM records each
//! scenario (exit status, stdout, stderr, host-side checks); the tests here
//! assert, one scenario and context each, and print the record on failure.
//!
//! Slow (a few minutes cold: it builds and caches the VM image; about two
//! warm) and needs root and qemu: see docs/testing.md. A host without qemu
//! fails here with what to install; it never passes by skipping.
#![allow(clippy::unwrap_used)]

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ces_testkit::registry::{AuthMode, Registry};
use ces_testkit::vm::{Boot, Image, last_lines};
use ces_testkit::{BuiltImage, Compression, Entry, ImageSpec, Layer, busybox_image};

/// The image the scenarios load (`ces load`) and run.
const IMAGE: &str = "ghcr.io/ces-tre/busybox:1.0";
/// An image of [`MANY_LAYERS`] layers (busybox, then a file `/fN` each).
const MANY: &str = "ghcr.io/ces-tre/many:1.0";
const MANY_LAYERS: usize = 40;

/// Against a hung VM: far beyond a normal run, which takes minutes.
const VM_TIMEOUT: Duration = Duration::from_secs(1200);

/// The VM's results, booted once for the whole binary.
fn vm() -> &'static Boot {
    static VM: OnceLock<Result<Boot, String>> = OnceLock::new();
    match VM.get_or_init(boot) {
        Ok(boot) => boot,
        Err(why) => panic!("the systemd + cgroup v2 VM did not run its scenarios: {why}"),
    }
}

fn boot() -> Result<Boot, String> {
    let started = Instant::now();
    let image = Image::get()?;
    let ready = started.elapsed();
    let payload = tempfile::tempdir().map_err(|e| format!("the payload directory: {e}"))?;
    write_payload(payload.path()).map_err(|e| format!("writing the payload: {e}"))?;
    let boot = image.boot(payload.path(), VM_TIMEOUT)?;
    if let Some(keep) = std::env::var_os("CES_TEST_VM_RESULTS") {
        boot.save(Path::new(&keep)).map_err(|e| format!("saving the results: {e}"))?;
        eprintln!("vm_cgroup_v2: results saved in {}", Path::new(&keep).display());
    }
    eprintln!(
        "vm_cgroup_v2: image ready in {ready:.1?}, boot + scenarios + power-off in {:.1?}, total {:.1?}",
        boot.elapsed,
        started.elapsed()
    );
    Ok(boot)
}

/// The payload: the built `ces`, the scripts, and the busybox image as an OCI
/// archive, all readable by the VM's user.
fn write_payload(dir: &Path) -> std::io::Result<()> {
    let mode = |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    mode(dir, 0o755)?;
    std::fs::copy(env!("CARGO_BIN_EXE_ces"), dir.join("ces"))?;
    for (name, text) in [("run", include_str!("vm/run")), ("scenarios.sh", include_str!("vm/scenarios.sh"))] {
        std::fs::write(dir.join(name), text)?;
        mode(&dir.join(name), 0o755)?;
    }
    let archive = dir.join("busybox.tar");
    busybox_image().build().write_oci_archive(&archive, IMAGE);
    mode(&archive, 0o644)?;
    let archive = dir.join("many.tar");
    ces_testkit::many_layers_image(MANY_LAYERS).build().write_oci_archive(&archive, MANY);
    mode(&archive, 0o644)?;
    // For a store over its quota (1 MiB): a layer of 2 MiB that does not
    // compress, and one of 8 MiB of zeros (a few KiB compressed).
    let (_, noise) = &pull_images()[0];
    let zeros = single_file_image("zeros", vec![0; 8 << 20]);
    for (name, image) in [("noise", noise), ("zeros", &zeros)] {
        let archive = dir.join(format!("{name}.tar"));
        image.write_oci_archive(&archive, &format!("ghcr.io/ces-tre/{name}:1.0"));
        mode(&archive, 0o644)?;
    }
    // The VM's registry (tests/vm/run): the storage of one on this host,
    // with the images to pull pushed to it. (The kit panics where it fails:
    // an error here, so that the boot is not tried again by every test.)
    let registry = std::panic::catch_unwind(|| {
        let registry = Registry::start(AuthMode::Anonymous);
        for (name, image) in pull_images() {
            registry.push(image, &format!("quota/{name}"), "1");
        }
        registry
    })
    .map_err(|_| std::io::Error::other("a docker-registry on this host, to push to (scripts/setup installs it)"))?;
    let copied =
        std::process::Command::new("cp").arg("-a").arg(registry.storage_dir()).arg(dir.join("registry")).status()?;
    if !copied.success() {
        return Err(std::io::Error::other(format!("cp -a of the registry's storage: {copied}")));
    }
    Ok(())
}

/// An image of one layer holding one file.
fn single_file_image(name: &str, content: Vec<u8>) -> BuiltImage {
    let layer = Layer::new(vec![Entry::file(name, content)]).compressed(Compression::Gzip);
    ImageSpec::new(vec![layer]).build()
}

/// The images the VM's registry has (`127.0.0.1:5055/quota/NAME:1`): `noise`,
/// a layer of 2 MiB that does not compress (more than analyst's quota), and
/// `small`, one of 64 KiB (which fits).
fn pull_images() -> &'static [(&'static str, BuiltImage); 2] {
    static IMAGES: OnceLock<[(&str, BuiltImage); 2]> = OnceLock::new();
    IMAGES.get_or_init(|| {
        [
            ("noise", single_file_image("noise", ces_testkit::misbehave::noise(2 << 20, 7))),
            ("small", single_file_image("small", ces_testkit::misbehave::noise(64 << 10, 8))),
        ]
    })
}

/// Where a scenario ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// As root, from the VM's payload service.
    Root,
    /// As `analyst`, from a login session (`machinectl shell analyst@.host`).
    Login,
    /// As `analyst`'s systemd user service (`systemd-run --user -M analyst@.host`).
    UserService,
}

impl Ctx {
    fn dir(self) -> &'static str {
        match self {
            Ctx::Root => "root",
            Ctx::Login => "login",
            Ctx::UserService => "user-service",
        }
    }

    /// The uid and gid the scenarios run as.
    fn ids(self) -> (u32, u32) {
        match self {
            Ctx::Root => (0, 0),
            Ctx::Login | Ctx::UserService => (1000, 1000),
        }
    }
}

/// One scenario's record from the VM.
struct Scenario {
    ctx: Ctx,
    name: &'static str,
    rc: Option<i32>,
    out: String,
    err: String,
    /// What the script checked on the VM's host side after the run.
    host: String,
    /// The context's script log and the payload's log, for when it is missing.
    log: String,
}

fn scenario(ctx: Ctx, name: &'static str) -> Scenario {
    let vm = vm();
    let file = |ext: &str| vm.text(&format!("{}/{name}.{ext}", ctx.dir()));
    let log = format!(
        "--- {0}/scenarios.log ---\n{1}\n--- {0}.log ---\n{2}\n--- run.log ---\n{3}",
        ctx.dir(),
        last_lines(&vm.text(&format!("{}/scenarios.log", ctx.dir())).unwrap_or_default(), 40),
        last_lines(&vm.text(&format!("{}.log", ctx.dir())).unwrap_or_default(), 20),
        last_lines(&vm.text("run.log").unwrap_or_default(), 20),
    );
    Scenario {
        ctx,
        name,
        rc: file("rc").and_then(|rc| rc.trim().parse().ok()),
        out: file("out").unwrap_or_default(),
        err: file("err").unwrap_or_default(),
        host: file("host").unwrap_or_default(),
        log,
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\nscenario {} ({:?}): exit {:?}", self.name, self.ctx, self.rc)?;
        writeln!(f, "--- stdout ---\n{}", last_lines(&self.out, 40))?;
        writeln!(f, "--- stderr ---\n{}", last_lines(&self.err, 40))?;
        if !self.host.is_empty() {
            writeln!(f, "--- checked on the VM host ---\n{}", self.host)?;
        }
        if self.rc.is_none() && self.host.is_empty() {
            writeln!(f, "(no record: the script did not get this far)\n{}", self.log)?;
        }
        Ok(())
    }
}

impl Scenario {
    /// The value of the first `key=value` line in `text`.
    fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    #[track_caller]
    fn assert_exit(&self, code: i32) {
        assert_eq!(self.rc, Some(code), "{self}");
    }
}

/// The `NAME=...` lines of a cgroup read: cpu.max as cores (quota / period).
fn cores(cpu_max: &str) -> Option<f64> {
    let (quota, period) = cpu_max.trim().split_once(' ')?;
    Some(quota.parse::<f64>().ok()? / period.parse::<f64>().ok()?)
}

/// Asserts the limits of a `-c 1 -m 0.5` run in `text` (lines `file=value`),
/// swap aside.
#[track_caller]
fn assert_limits(s: &Scenario, text: &str) {
    let cpu = Scenario::value(text, "cpu.max").unwrap_or_default();
    assert_eq!(cores(cpu), Some(1.0), "cpu.max for -c 1: {s}");
    assert_eq!(Scenario::value(text, "memory.max"), Some("536870912"), "memory.max for -m 0.5: {s}");
    assert_eq!(Scenario::value(text, "pids.max"), Some("4096"), "pids.max: {s}");
}

fn context(ctx: Ctx) {
    let text = vm().text(&format!("{}/context.txt", ctx.dir())).unwrap_or_default();
    let shown = format!("{ctx:?} context.txt:\n{text}\n{}", scenario(ctx, "load"));
    let (uid, _) = ctx.ids();
    assert_eq!(Scenario::value(&text, "uid"), Some(uid.to_string().as_str()), "{shown}");
    let cgroup = Scenario::value(&text, "cgroup").unwrap_or_default();
    match ctx {
        Ctx::Root => {}
        Ctx::Login => {
            assert_eq!(Scenario::value(&text, "XDG_RUNTIME_DIR"), Some("/run/user/1000"), "{shown}");
            let session = cgroup.strip_prefix("0::/user.slice/user-1000.slice/session-");
            assert!(session.is_some_and(|s| s.ends_with(".scope")), "not in a login session's scope: {shown}");
        }
        Ctx::UserService => {
            let prefix = "0::/user.slice/user-1000.slice/user@1000.service/";
            assert!(cgroup.starts_with(prefix), "not in analyst's user manager: {shown}");
        }
    }
}

fn load(ctx: Ctx) {
    let s = scenario(ctx, "load");
    s.assert_exit(0);
    assert!(s.out.contains(&format!("{}@sha256:", IMAGE.trim_end_matches(":1.0"))), "{s}");
}

fn exit_code(ctx: Ctx) {
    scenario(ctx, "exit-code").assert_exit(7);
}

fn directory_contract(ctx: Ctx) {
    let s = scenario(ctx, "contract");
    s.assert_exit(0);
    for line in ["1,42", "SAFE_DATA_READONLY", "OUTPUTS_WRITTEN", "SCRATCH_WRITTEN", "TMPDIR=/scratch"] {
        assert!(s.out.lines().any(|l| l.trim() == line), "expected {line:?} from the container: {s}");
    }
    let (uid, gid) = ctx.ids();
    let owner = format!("{uid}:{gid}");
    assert_eq!(Scenario::value(&s.host, "result.txt owner"), Some(owner.as_str()), "outputs owned by the user: {s}");
    assert_eq!(Scenario::value(&s.host, "result.txt"), Some("kept"), "{s}");
    assert_eq!(Scenario::value(&s.host, "safe_data entries").map(str::trim), Some("data.csv"), "{s}");
    assert_eq!(Scenario::value(&s.host, "scratch left").map(str::trim), Some(""), "scratch removed: {s}");
    // The container's own layer: an overlay never synced (Debian 12's 6.1 takes `volatile`).
    let root = Scenario::value(&s.out, "root_mount").unwrap_or_default();
    assert!(ces_testkit::mountinfo::is_volatile_overlay(root), "{s}");
}

fn out_of_memory_with_swap_on(ctx: Ctx) {
    let host = vm().text("host.txt").unwrap_or_default();
    let swaps = host.lines().skip_while(|l| *l != "swaps:").skip(2).take_while(|l| l.starts_with('/')).count();
    assert!(swaps > 0, "the VM has no swap on, so this would prove nothing:\n{host}");
    let control = scenario(ctx, "oom-control");
    control.assert_exit(0);
    assert!(control.out.contains("ALLOCATED"), "the workload must fit in 1 GiB: {control}");
    let s = scenario(ctx, "oom");
    s.assert_exit(137);
    assert!(!s.out.contains("ALLOCATED"), "200 MiB held under -m 0.1: {s}");
}

fn limits_inside(ctx: Ctx) {
    let s = scenario(ctx, "limits-inside");
    s.assert_exit(0);
    assert_limits(&s, &s.out);
    let mount = Scenario::value(&s.out, "mount").unwrap_or_default();
    let options = mount.split(' ').nth(5).unwrap_or_default();
    assert!(options.split(',').any(|o| o == "ro"), "/sys/fs/cgroup mounted read-only: {s}");
    assert!(s.out.lines().any(|l| l == "CGROUP_WRITE_DENIED"), "{s}");
    let entries = Scenario::value(&s.out, "entries").unwrap_or_default();
    for other in ["user.slice", "system.slice", "init.scope"] {
        assert!(!entries.split(' ').any(|e| e == other), "the container sees the host's {other}: {s}");
    }
}

fn limits_from_the_host(ctx: Ctx) {
    let s = scenario(ctx, "limits-host");
    assert_limits(&s, &s.host);
}

fn swap_is_limited(ctx: Ctx) {
    let host = scenario(ctx, "limits-host");
    assert_eq!(Scenario::value(&host.host, "memory.swap.max"), Some("0"), "no swap beyond -m: {host}");
    let inside = scenario(ctx, "limits-inside");
    assert_eq!(Scenario::value(&inside.out, "memory.swap.max"), Some("0"), "no swap beyond -m: {inside}");
}

fn sigterm_ends_the_run(ctx: Ctx) {
    let s = scenario(ctx, "sigterm");
    assert!(s.out.contains("ready"), "the container never started: {s}");
    s.assert_exit(143);
    assert_eq!(Scenario::value(&s.host, "still running").map(str::trim), Some(""), "{s}");
    assert_eq!(Scenario::value(&s.host, "scratch left").map(str::trim), Some(""), "{s}");
}

fn ces_test_says_ready(ctx: Ctx) {
    let s = scenario(ctx, "ces-test");
    s.assert_exit(0);
    assert!(s.out.contains("Verdict: READY"), "{s}");
}

fn gpu_devices(ctx: Ctx) {
    let s = scenario(ctx, "gpu");
    s.assert_exit(0);
    assert_eq!(Scenario::value(&s.out, "devices").map(str::trim), Some("examplegpu1"), "{s}");
    for line in ["GPU_OPENED", "env=1.2.3", "hook ran"] {
        assert!(s.out.lines().any(|l| l.trim() == line), "expected {line:?} from the container: {s}");
    }
}

/// As root, the start's cgroup warm-up moves its helper (never ces) within
/// the cgroup ces started in, from the start of the run until the
/// container is built, on cgroup v2 under systemd as on v1.
#[test]
fn the_cgroup_warm_up_moves_its_helper_within_the_cgroup_ces_started_in() {
    let s = scenario(Ctx::Root, "warmup");
    s.assert_exit(0);
    let started_in = Scenario::value(&s.host, "started in").unwrap_or_default();
    assert!(started_in.starts_with('/'), "{s}");
    let procs = format!("/sys/fs/cgroup{}/cgroup.procs", started_in.trim_end_matches('/'));
    let moves: Vec<&str> = s.err.lines().filter(|l| l.contains("cgroup warm-up: helper")).collect();
    assert_eq!(moves.len(), 1, "one warm-up, ended with the run: {s}");
    let moved = moves[0].contains(&format!(" moved into {procs} ")) && moves[0].ends_with(" times");
    assert!(moved, "moved, within ces's own cgroup: {}\n{s}", moves[0]);
}

/// As root on cgroup v2, a process host root puts into a running
/// container's cgroup is killed when the container ends (ces writes
/// `cgroup.kill` when the cgroup cannot be removed), and the cgroup goes.
#[test]
fn a_process_put_into_a_containers_cgroup_ends_with_it() {
    let s = scenario(Ctx::Root, "intruder");
    s.assert_exit(143);
    let cgroup = Scenario::value(&s.host, "container cgroup").unwrap_or_default();
    assert!(cgroup.starts_with('/') && cgroup.len() > 1, "{s}");
    assert_eq!(Scenario::value(&s.host, "moved in"), Some("yes"), "{s}");
    assert_eq!(Scenario::value(&s.host, "intruder cgroup"), Some(cgroup), "{s}");
    assert!(matches!(Scenario::value(&s.host, "intruder state"), Some("Z" | "gone")), "the intruder lives on: {s}");
    assert_eq!(Scenario::value(&s.host, "cgroup left"), Some("no"), "{s}");
}

/// An image of 40 layers is kept as them and runs from them: as root, ces
/// mounts its overlay; rootless, libcontainer does, through fsconfig, whose
/// values have at most 255 bytes and which takes no `lowerdir+` before
/// Linux 6.8: the layers are named by numbered links the run makes.
fn many_layers(ctx: Ctx) {
    let s = scenario(ctx, "many-layers");
    s.assert_exit(0);
    assert_eq!(s.out.trim(), format!("1{}", MANY_LAYERS - 1), "the bottom and top layers' files: {s}");
    let rootfs = Scenario::value(&s.host, "rootfs").unwrap_or_default();
    assert!(rootfs.starts_with(&format!("{MANY_LAYERS} layers in ")), "kept as its layers: {s}");
    let kernel = Scenario::value(&s.host, "kernel").unwrap_or_default();
    assert!(
        !ces_image::rootfs::version_at_least(kernel, (6, 8)),
        "a kernel without lowerdir+, where the numbered links are needed: {s}"
    );
}

/// Rootless, over the disk quota of the store's file system: the blob of a
/// layer that does not compress is refused before it is written (the load
/// reads the quota: its size, what is left, the limit, and that only a
/// larger quota will do), and a layer that inflates past it fails saying
/// the quota ran out (not a bare `os error 122`, nor a full disk), with what
/// to do; each leaves no image and nothing in the store's `tmp/`. (Root is
/// not held to quotas.)
fn over_quota(ctx: Ctx) {
    let host = vm().text("host.txt").unwrap_or_default();
    let setup = vm().text("quota-setup.log").unwrap_or_default();
    let shown = format!("host.txt:\n{host}\nquota-setup.log:\n{setup}");
    assert_eq!(Scenario::value(&host, "quota setup"), Some("ok"), "{shown}");
    let mount = Scenario::value(&host, "quota mount").unwrap_or_default();
    assert!(mount.starts_with("ext4 ") && mount.contains("usrquota"), "{shown}");
    let quota = Scenario::value(&host, "analyst's quota").unwrap_or_default();
    assert_eq!(quota.split_whitespace().nth(3), Some("1024"), "the hard limit, in KiB: {shown}");
    for name in ["quota-blob", "quota-unpack"] {
        let s = scenario(ctx, name);
        s.assert_exit(125);
        let store = format!("/srv/quota/analyst/{}/ces", ctx.dir());
        if name == "quota-blob" {
            let said = format!("not enough disk quota left on the file system holding {store} for blobs/sha256/");
            assert!(s.err.contains(&said) && s.err.contains(" bytes to load, "), "refused before it is written: {s}");
            assert!(s.err.contains(" left of your quota of 1048576"), "{s}");
            assert!(s.err.contains("hint: the image is larger than the whole quota"), "{s}");
        } else {
            let holding = format!("disk quota exceeded on the file system holding {store}");
            assert!(s.err.contains(&holding) && s.err.contains("/tmp/layer-"), "what ran out, and where: {s}");
            assert!(s.err.contains("hint: free some of your quota (ces images --disk"), "{s}");
        }
        let index = Scenario::value(&s.host, "index").unwrap_or_default();
        assert!(index.contains(r#""manifests":[]"#), "no image named: {s}");
        assert_eq!(Scenario::value(&s.host, "tmp left"), Some(""), "{s}");
    }
    // A pull of the first is refused before its layer is downloaded, with
    // what it needs and what is left; one of an image that fits is not.
    assert_eq!(Scenario::value(&host, "registry"), Some("up"), "{shown}");
    let s = scenario(ctx, "quota-pull");
    s.assert_exit(125);
    let store = format!("/srv/quota/analyst/{}/ces", ctx.dir());
    let said = format!("not enough disk quota left on the file system holding {store}: ");
    let figures =
        s.err.lines().find_map(|l| l.split_once(&said)).map(|(_, rest)| rest).unwrap_or_else(|| panic!("{s}"));
    let number = |word: &str| {
        let at = figures.find(word).unwrap_or_else(|| panic!("{word:?} in {figures:?}"));
        figures[..at].split_whitespace().last().and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| panic!("{s}"))
    };
    let (noise, small) = (&pull_images()[0].1, &pull_images()[1].1);
    let layer = &noise.layer_digests[0];
    assert_eq!(number(" bytes to download"), noise.blob(layer).len() as u64, "the layer's size: {s}");
    let left = number(" left of your quota");
    assert!(left > 512 << 10 && left < 1 << 20, "what the 1 MiB quota leaves after the loads: {s}");
    assert!(figures.trim_end().ends_with(" left of your quota of 1048576"), "{s}");
    // (Freeing some of it would not do.)
    assert!(s.err.contains("hint: the image is larger than the whole quota"), "{s}");
    let index = Scenario::value(&s.host, "index").unwrap_or_default();
    assert!(index.contains(r#""manifests":[]"#), "no image named: {s}");
    assert_eq!(Scenario::value(&s.host, "tmp left"), Some(""), "{s}");
    let log = vm().text("registry.log").unwrap_or_default();
    let fetched = |digest: &str| log.contains(&format!("/blobs/{digest}"));
    assert!(!fetched(layer), "the layer was downloaded:\n{log}");
    assert!(fetched(&small.layer_digests[0]), "the registry's log names the blobs it serves:\n{log}");
    let s = scenario(ctx, "quota-pull-fits");
    s.assert_exit(0);
    let index = Scenario::value(&s.host, "index").unwrap_or_default();
    assert!(index.contains("127.0.0.1:5055/quota/small:1"), "the image named: {s}");
    quota_as_quota_says(&scenario(ctx, "quota-disk"), "user", 1 << 20);
    // Where analyst's group has a quota (512 KiB), and analyst one of 64 KiB
    // that is kept but not enforced (the small image's pull goes past it).
    let mount = Scenario::value(&host, "group quota mount").unwrap_or_default();
    assert!(mount.starts_with("ext4 ") && mount.contains("grpquota") && !mount.contains("usrquota"), "{shown}");
    let group = Scenario::value(&host, "analyst's group quota").unwrap_or_default();
    assert_eq!(group.split_whitespace().nth(3), Some("512"), "the group's hard limit, in KiB: {shown}");
    let unenforced = Scenario::value(&host, "analyst's unenforced quota").unwrap_or_default();
    assert_eq!(unenforced.split_whitespace().nth(3), Some("64"), "the user's hard limit there, in KiB: {shown}");
    let s = scenario(ctx, "quota-group-pull");
    s.assert_exit(125);
    let store = format!("/srv/gquota/analyst/{}/ces", ctx.dir());
    let said = format!("not enough disk quota left on the file system holding {store}: ");
    assert!(s.err.contains(&said) && s.err.contains(" left of your group's quota of 524288"), "{s}");
    scenario(ctx, "quota-group-pull-fits").assert_exit(0);
    quota_as_quota_says(&scenario(ctx, "quota-group-disk"), "group", 512 << 10);
}

/// `ces images --disk --json` (`s`) says what the quota of `holder` holds as
/// quota(1) does (`quota` in its host record: `/dev/loopN USED SOFT HARD ...`,
/// in KiB), with the store's one small image in it.
fn quota_as_quota_says(s: &Scenario, holder: &str, limit: u64) {
    s.assert_exit(0);
    let said: serde_json::Value = serde_json::from_str(&s.out).unwrap_or_else(|e| panic!("{e}: {s}"));
    let quota = Scenario::value(&s.host, "quota").unwrap_or_default();
    let blocks: Vec<u64> = quota.split_whitespace().skip(1).take(3).filter_map(|n| n.parse().ok()).collect();
    assert_eq!(blocks.len(), 3, "quota -w's line: {s}");
    assert_eq!(said["quota"]["holder"], holder, "{s}");
    assert_eq!(said["quota"]["limit"], limit, "{s}");
    assert_eq!(blocks[2] * 1024, limit, "{s}");
    let used = said["quota"]["used"].as_u64().unwrap_or_else(|| panic!("{s}"));
    assert_eq!(used.div_ceil(1024), blocks[0], "{s}");
    assert_eq!(said["quota"]["left"], limit - used, "{s}");
    assert!(used > 128 << 10, "the small image's layer and blob at least: {s}");
}

mod over_quota {
    #[test]
    fn rootless_login_session() {
        super::over_quota(super::Ctx::Login)
    }
    #[test]
    fn rootless_user_service() {
        super::over_quota(super::Ctx::UserService)
    }
}

/// One test per check and context, so a failure names both.
macro_rules! in_every_context {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[test]
            fn as_root() {
                super::$check(super::Ctx::Root)
            }
            #[test]
            fn rootless_login_session() {
                super::$check(super::Ctx::Login)
            }
            #[test]
            fn rootless_user_service() {
                super::$check(super::Ctx::UserService)
            }
        }
    )*};
}

in_every_context!(
    context,
    load,
    exit_code,
    directory_contract,
    out_of_memory_with_swap_on,
    limits_inside,
    limits_from_the_host,
    swap_is_limited,
    sigterm_ends_the_run,
    ces_test_says_ready,
    gpu_devices,
    many_layers,
);

#[test]
fn the_vm_is_systemd_with_pure_cgroup_v2_and_delegates_to_the_user() {
    let host = vm().text("host.txt").unwrap_or_default();
    let shown = format!("host.txt:\n{host}\n{}", vm().diagnostics(20));
    assert!(host.lines().any(|l| l == "cgroupfs: cgroup2fs"), "{shown}");
    let controllers = host.lines().find_map(|l| l.strip_prefix("user@1000 controllers: ")).unwrap_or_default();
    for controller in ["cpu", "memory", "pids"] {
        assert!(controllers.split(' ').any(|c| c == controller), "{shown}");
    }
    assert!(host.lines().any(|l| l.starts_with("systemd 252")), "{shown}");
}
