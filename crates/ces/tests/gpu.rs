//! Devices through CDI specs (`--gpu`, `--device`, `ces system gpus`,
//! `ces test --gpu`), with a spec the tests write (kind `example.com/gpu`):
//! real character devices standing for GPUs (made with `mknod`, with
//! `/dev/null`'s, `/dev/zero`'s and `/dev/full`'s numbers), a fake driver
//! library, environment, an additional group and a createContainer hook
//! that leaves a mark in the container's root. Inside the container there
//! are exactly the devices asked for; a bad spec, a missing device and a
//! refused user give one clear error and run nothing. As root, under sudo
//! and rootless, native and podman.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{Mode, World, require_root};

/// The UUID name the spec gives GPU 0 too.
const UUID0: &str = "GPU-0c1ea5e0-0000-4000-8000-000000000000";

/// The fake GPUs' nodes: `/dev/null`'s numbers, FUSE's (which no container
/// may open unless its device cgroup allows it: a GPU's stand-in for that
/// check; opening it alone does nothing), and `/dev/full`'s for the control
/// node.
/// The control node is root's alone on the host (mode `0600`): root's and
/// sudo runs get a node of their own, rootless runs only what the user may
/// open on the host.
const NODES: [(&str, &str, &str); 3] = [("gpu0", "1", "3"), ("gpu1", "10", "229"), ("ctl", "1", "7")];

/// Where the host side of the fake GPUs and the worlds' spec directories
/// are: root's, under directories only root can change.
const TEST_ROOT: &str = "/var/lib/ces-test-cdi";

/// A world's own directory under [`TEST_ROOT`] (its specs).
fn cdi_root(w: &World) -> PathBuf {
    host();
    let dir = Path::new(TEST_ROOT).join(w.sb.dir.path().file_name().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The host side of the fake GPUs: nodes, driver, hook, root's and
/// `0755` (as an operator installs them), made once per test binary.
struct Host {
    dir: PathBuf,
    _socket: std::os::unix::net::UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        require_root("makes device nodes");
        // One place, made again by each run of this binary (nothing in it is
        // a secret or a run's), where only root can change anything: not in
        // /tmp, whose paths ces never takes from a spec.
        let _ = std::fs::remove_dir_all(TEST_ROOT);
        std::fs::create_dir_all(TEST_ROOT).unwrap();
        std::fs::set_permissions(TEST_ROOT, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = Path::new(TEST_ROOT).join("host");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, major, minor) in NODES {
            let node = dir.join(name);
            let made = std::process::Command::new("mknod").args(["-m", "0666"]).arg(&node).args(["c", major, minor]).status();
            assert!(made.unwrap().success(), "mknod {}", node.display());
        }
        std::fs::set_permissions(dir.join("ctl"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(dir.join("driver")).unwrap();
        std::fs::write(dir.join("driver/libexample.so.1"), "fake driver 1.2.3\n").unwrap();
        let hook = dir.join("hook");
        // The container's state on stdin; its root from the bundle's
        // config.json, as nvidia-cdi-hook finds it.
        std::fs::write(
            &hook,
            "#!/bin/sh\nstate=$(cat)\n\
             bundle=$(echo \"$state\" | tr -d ' \\n' | sed -n 's/.*\"bundle\":\"\\([^\"]*\\)\".*/\\1/p')\n\
             root=$(tr -d ' \\n' < \"$bundle/config.json\" | sed -n 's/.*\"root\":{\"path\":\"\\([^\"]*\\)\".*/\\1/p')\n\
             case \"$root\" in /*) ;; *) root=\"$bundle/$root\" ;; esac\n\
             echo \"hook $1\" > \"$root/dev/cdi-hook-mark\"\n\
             echo \"hook $1\" > \"$root/cdi-hook-mark\" 2>/dev/null || true\n",
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A host daemon's socket, as NVIDIA's specs mount persistenced's.
        let socket = std::os::unix::net::UnixListener::bind(dir.join("daemon.sock")).unwrap();
        Host { dir, _socket: socket }
    })
}

/// The spec for `kind`, for the fake GPUs of `host`.
fn spec_text(kind: &str, host: &Host) -> String {
    let d = host.dir.display();
    format!(
        r#"cdiVersion: "0.7.0"
kind: {kind}
devices:
  - name: "0"
    containerEdits:
      deviceNodes:
        - path: /dev/examplegpu0
          hostPath: {d}/gpu0
  - name: "{UUID0}"
    containerEdits:
      deviceNodes:
        - path: /dev/examplegpu0
          hostPath: {d}/gpu0
  - name: "1"
    containerEdits:
      deviceNodes:
        - path: /dev/examplegpu1
          hostPath: {d}/gpu1
containerEdits:
  env:
    - EXAMPLE_DRIVER=1.2.3
  deviceNodes:
    - path: /dev/examplegpuctl
      hostPath: {d}/ctl
  mounts:
    - hostPath: {d}/driver/libexample.so.1
      containerPath: /usr/lib/libexample.so.1
      options: [ro, nosuid, nodev, bind]
  hooks:
    - hookName: createContainer
      path: {d}/hook
      args: [example-hook, marked]
      env: [PATH=/usr/bin:/bin]
  additionalGids: [44]
"#
    )
}

/// A root-owned spec directory (in the world's sandbox) holding `files`.
fn spec_dir(w: &World, files: &[(&str, &str)]) -> PathBuf {
    let dir = cdi_root(w).join("cdi");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}

/// A world whose config enables devices from a spec of the fake GPUs.
fn world(test: &str, mode: Mode, gpu: &str) -> World {
    let w = World::new(&mode.repo("gpu", test), mode);
    let dir = spec_dir(&w, &[("example.yaml", &spec_text("example.com/gpu", host()))]);
    w.sb.configure(&format!(
        "[gpu]\nenabled = true\nkind = \"example.com/gpu\"\nspec_dirs = [{:?}]\n{gpu}",
        dir.display().to_string()
    ));
    w
}

/// Runs `options IMAGE sh -c script`.
fn run(w: &World, options: &[&str], script: &str) -> common::Run {
    w.sb.run(w.run_with(options, &["sh", "-c", script]))
}

const LOOK: &str = "ls /dev | grep examplegpu | tr '\\n' ' '; echo; cat /usr/lib/libexample.so.1; \
     echo \"env=$EXAMPLE_DRIVER\"; cat /dev/cdi-hook-mark; cat /cdi-hook-mark 2>/dev/null || echo no-root-mark; \
     echo \"groups=$(id -G)\"; \
     echo x > /dev/examplegpu0 && echo wrote; head -c 4 /dev/examplegpuctl | wc -c; \
     if echo x >> /usr/lib/libexample.so.1; then echo LIB_WRITTEN; else echo lib-read-only; fi 2>/dev/null";

fn exactly_the_requested_devices(mode: Mode) {
    let w = world("exact", mode, "");
    let out = run(&w, &["--gpu", "0"], LOOK).ok().to_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "examplegpu0 examplegpuctl", "{out}");
    assert_eq!(lines[1], "fake driver 1.2.3", "{out}");
    assert_eq!(lines[2], "env=1.2.3", "{out}");
    assert_eq!(lines[3], "hook marked", "{out}");
    // The hook runs as the container's root: under sudo that is the user,
    // who cannot write the image's root-owned directories (docs/gpu.md).
    let root_mark = if mode == Mode::Sudo { "no-root-mark" } else { "hook marked" };
    assert_eq!(lines[4], root_mark, "{out}");
    let groups: Vec<&str> = lines[5].trim_start_matches("groups=").split(' ').collect();
    // The container's 44 where the container has supplementary groups
    // (root mode's block); rootless and sudo runs have a single id.
    assert_eq!(groups.contains(&"44"), mode == Mode::Root, "{out}");
    assert_eq!(lines[6], "wrote", "{out}");
    let ctl = if mode == Mode::Rootless { "0" } else { "4" };
    assert_eq!(lines[7].trim(), ctl, "{out}");
    assert_eq!(lines[8], "lib-read-only", "{out}");
    assert_eq!(lines.len(), 9, "{out}");

    // The second GPU alone, by its CDI name: the device cgroup (as root)
    // lets the container open it.
    let script = "ls /dev | grep examplegpu | tr '\\n' ' '; exec 3<>/dev/examplegpu1 && echo opened";
    let out = run(&w, &["--device", "example.com/gpu=1"], script).ok().to_owned();
    assert_eq!(out.trim(), "examplegpu1 examplegpuctl opened");
    // All of them: not the UUID name twice.
    let out = run(&w, &["--gpu"], "ls /dev | grep examplegpu | tr '\\n' ' '").ok().to_owned();
    assert_eq!(out.trim(), "examplegpu0 examplegpu1 examplegpuctl");
    // None asked, none given.
    let out =
        run(&w, &[], "ls /dev | grep -c examplegpu; test -e /usr/lib/libexample.so.1 || echo no-lib").ok().to_owned();
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "no-lib"]);

    // The rest of the container is as for any run: the same capabilities,
    // seccomp, and no network but loopback.
    let same = "grep -E '^(CapBnd|CapEff|Seccomp|NoNewPrivs)' /proc/self/status; ls /sys/class/net";
    let with = run(&w, &["--gpu", "0"], same).ok().to_owned();
    let without = run(&w, &[], same).ok().to_owned();
    assert_eq!(with, without);
    assert!(with.contains("Seccomp:\t2"), "{with}");
    assert_eq!(with.lines().last(), Some("lo"), "{with}");

    // The audit record lists the devices, with the UUID the spec gives.
    let records = w.sb.audit_records();
    let start = records.iter().find(|r| r["event"] == "run_start").unwrap();
    let devices = start["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{start}");
    assert_eq!(devices[0]["name"], "example.com/gpu=0");
    assert_eq!(devices[0]["uuid"], UUID0);
    assert!(devices[0]["spec"].as_str().unwrap().ends_with("/cdi/example.yaml"), "{start}");
}

#[test]
fn exactly_the_requested_devices_as_root() {
    exactly_the_requested_devices(Mode::Root);
}

#[test]
fn exactly_the_requested_devices_under_sudo() {
    exactly_the_requested_devices(Mode::Sudo);
}

/// Under sudo, nothing of a running run's devices is within the user's reach
/// on the host: the bundle stays root's alone, and the nodes ces made and the
/// bundle its hooks read are in ces's own mount namespace.
#[test]
fn under_sudo_the_runs_bundle_and_nodes_are_out_of_the_users_reach() {
    use std::io::BufRead as _;
    use std::os::unix::fs::MetadataExt as _;
    let w = world("reach", Mode::Sudo, "");
    let mut cmd = w.run_with(&["--gpu", "0"], &["sh", "-c", "echo up; exec sleep 30"]);
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "up");
    let runs = w.sb.store.join("runs");
    let id = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("state/bundle").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("the run's state");
    let bundle = runs.join(&id).join("state/bundle");
    let meta = std::fs::metadata(&bundle).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o700), "the bundle is root's alone");
    // ces's own view (its mount namespace, through /proc as root): the
    // node it made and the hooks' bundle.
    let private = format!("/run/ces/{id}/private");
    let inside = format!("/proc/{}/root{private}", child.id());
    let mut there: Vec<String> =
        std::fs::read_dir(&inside).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    there.sort();
    assert_eq!(there, ["bundle", "device-0", "device-1"], "what ces made for the run");
    let script = format!(
        "cat {0}/config.json && echo READ; ls {0} && echo LISTED; ls -A {private}; ls {inside} && echo ENTERED; \
         echo x > {inside}/bundle/config.json && echo WROTE; echo PROBED",
        bundle.display()
    );
    let probe = w.user.setpriv(&w.sb, &["sh", "-c", &script]);
    let seen = w.sb.run(probe);
    assert_eq!(seen.code, 0, "{seen:?}");
    assert_eq!(seen.stdout.trim(), "PROBED", "the user reached the run's devices: {seen:?}");
    // The run's mounts are on a tmpfs in ces's namespace: the host sees an
    // empty directory.
    let on_host: Vec<_> =
        std::fs::read_dir(format!("/run/ces/{id}")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(on_host.is_empty(), "the host sees {on_host:?} in /run/ces/{id}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    child.wait().unwrap();
}

#[test]
fn exactly_the_requested_devices_rootless() {
    exactly_the_requested_devices(Mode::Rootless);
}

/// `--gpu 0 IMAGE` (the value as a word of its own), `--gpu=0,1`, and
/// `ces-gpu-run`, which is `ces-run --gpu`.
#[test]
fn gpu_values_and_the_compatible_command() {
    let w = world("forms", Mode::Root, "");
    let ls = "ls /dev | grep examplegpu | tr '\\n' ' '";
    let out = w.ces(&["run", "-q", "--gpu", "1", &w.image, "sh", "-c", ls]).ok().to_owned();
    assert_eq!(out.trim(), "examplegpu1 examplegpuctl");
    // Options after the value are options, not the command.
    let script = format!("echo $X; {ls}");
    let out = w.ces(&["run", "--gpu", "1", "-q", "-e", "X=set", &w.image, "sh", "-c", &script]).ok().to_owned();
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["set", "examplegpu1", "examplegpuctl"]);
    let run = w.ces(&["run", "-q", "--gpu", "all", &w.image, "sh", "-c", ls]);
    assert_eq!(run.ok().trim(), "examplegpu0 examplegpu1 examplegpuctl");
    // After the image, --gpu is the container's.
    let out = w.ces(&["run", "-q", &w.image, "echo", "--gpu", "0"]).ok().to_owned();
    assert_eq!(out.trim(), "--gpu 0");
    let out = w.ces(&["run", "-q", "--gpu", &w.image, "echo", "--gpu", "0"]).ok().to_owned();
    assert_eq!(out.trim(), "--gpu 0");
    let out = w.ces(&["run", "-q", "--gpu=0,1", &w.image, "sh", "-c", ls]).ok().to_owned();
    assert_eq!(out.trim(), "examplegpu0 examplegpu1 examplegpuctl");
    let out = w.ces(&["run", "-q", &format!("--gpu={UUID0}"), &w.image, "sh", "-c", ls]).ok().to_owned();
    assert_eq!(out.trim(), "examplegpu0 examplegpuctl");
    let mut gpu_run = w.sb.command(env!("CARGO_BIN_EXE_ces-gpu-run"), &[&w.image, "sh", "-c", ls]);
    gpu_run.env("HOME", &w.home).current_dir(&w.home);
    let out = w.sb.run(gpu_run).ok().to_owned();
    assert!(out.trim().ends_with("examplegpu0 examplegpu1 examplegpuctl"), "{out}");
    // In an option file too.
    let opts = w.home.join("gpu.opts");
    std::fs::write(&opts, "--gpu 1\n").unwrap();
    let opt_file = opts.display().to_string();
    let out = w.ces(&["run", "-q", "--opt-file", &opt_file, &w.image, "sh", "-c", ls]).ok().to_owned();
    assert_eq!(out.trim(), "examplegpu1 examplegpuctl");
}

#[test]
fn the_dry_run_shows_every_node_mount_variable_and_hook() {
    let w = world("dry", Mode::Root, "");
    let plan = w.ces(&["run", "--dry-run", "--gpu", "0", &w.image, "true"]).ok().to_owned();
    let d = host().dir.display();
    for line in [
        format!("  example.com/gpu=0 (spec {}/cdi/example.yaml, {UUID0})", cdi_root(&w).display()),
        format!("  node   /dev/examplegpu0 <- {d}/gpu0 (c 1:3, access rwm)"),
        format!("  node   /dev/examplegpuctl <- {d}/ctl (c 1:7, access rwm)"),
        format!("  mount  /usr/lib/libexample.so.1 <- {d}/driver/libexample.so.1 (ro, nosuid, nodev)"),
        "  env    EXAMPLE_DRIVER".to_owned(),
        format!("  hook   createContainer: {d}/hook marked"),
    ] {
        assert!(plan.lines().any(|l| l == line), "{line:?} not in:\n{plan}");
    }
    assert!(plan.contains("EXAMPLE_DRIVER"), "{plan}");
    assert!(!plan.contains("1.2.3"), "values are not shown:\n{plan}");
    let json = w.ces(&["run", "--dry-run", "--json", "--gpu", "0", &w.image, "true"]).ok().to_owned();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let devices = &json["spec"]["devices"];
    assert_eq!(devices["requested"][0]["name"], "example.com/gpu=0");
    assert_eq!(devices["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(devices["hooks"][0]["stage"], "createContainer");
    assert_eq!(devices["additional_gids"][0], 44);
    assert!(w.outputs_dirs().is_empty(), "a dry run creates nothing");

    // A socket (a way to a host daemon, even through a read-only bind) is
    // left out, and said to be.
    let sock = spec_text("example.com/sock", host()).replace(
        "  hooks:",
        &format!(
            "    - hostPath: {d}/daemon.sock\n      containerPath: /run/daemon.sock\n      options: [bind]\n  hooks:"
        ),
    );
    spec_dir(&w, &[("sock.yaml", &sock)]);
    let plan = w.ces(&["run", "--dry-run", "--device", "example.com/sock=0", &w.image, "true"]).ok().to_owned();
    assert!(
        plan.lines().any(|l| l == "  left out: /run/daemon.sock (a socket or FIFO, or a directory holding one)"),
        "{plan}"
    );
    let out = run(&w, &["--device", "example.com/sock=0"], "test -e /run/daemon.sock && echo THERE || echo absent");
    assert_eq!(out.ok().trim(), "absent");
    // podman would mount it, and reads other directories: refused.
    let stderr = run(&w, &["--runtime", "podman", "--gpu", "0"], "true").fails().to_owned();
    assert!(stderr.contains("the podman backend cannot give the container example.com/gpu=0: podman reads its specs from /etc/cdi and /var/run/cdi"), "{stderr}");
}

/// Refusals: one error line, a hint, nothing run (no outputs directory).
#[track_caller]
fn refused(w: &World, options: &[&str], error: &str, hint: &str) {
    let before = w.outputs_dirs().len();
    let run = run(w, options, "echo ran");
    let stderr = run.fails().to_owned();
    assert!(stderr.contains(error), "{error:?} not in:\n{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("hint: ") && l.contains(hint)), "{hint:?} not in:\n{stderr}");
    assert!(!run.stdout.contains("ran"));
    assert_eq!(w.outputs_dirs().len(), before, "nothing created");
}

#[test]
fn missing_devices_bad_specs_and_bad_names_are_refused_clearly() {
    let w = world("missing", Mode::Root, "");
    refused(&w, &["--gpu", "7"], "error: no CDI device example.com/gpu=7 on this host", "ces system gpus");
    refused(&w, &["--device", "other.com/fpga=0"], "no CDI device other.com/fpga=0", "nvidia-ctk cdi generate");
    refused(&w, &["--device", "/dev/sda"], "\"/dev/sda\" is not a CDI device name", "ces system gpus");
    refused(&w, &["--gpu=0;rm"], "--gpu \"0;rm\"", "ces system gpus");

    // A spec that does not parse: named, with why, when it may have had the device.
    let dir = spec_dir(&w, &[("broken.json", "{\"cdiVersion\": \"0.7.0\", \"kind\": ")]);
    refused(&w, &["--device", "other.com/fpga=0"], "(and the spec", "broken.json");
    // ... and a warning when the device was found anyway (not with -q).
    let out = w.ces(&["run", "--gpu", "0", &w.image, "echo", "ran"]);
    assert_eq!(out.stdout.trim(), "ran");
    assert!(out.stderr.contains("warning: CDI spec") && out.stderr.contains("broken.json"), "{}", out.stderr);
    std::fs::remove_file(dir.join("broken.json")).unwrap();

    // A spec whose device node is not on this host (stale).
    let stale = spec_text("example.com/stale", host()).replace("/gpu1", "/gpu9");
    spec_dir(&w, &[("stale.yaml", &stale)]);
    refused(&w, &["--device", "example.com/stale=1"], "is not on this host", "regenerates");
    // A spec whose node numbers are not the host's.
    let wrong = spec_text("example.com/wrong", host())
        .replace("          hostPath: /var", "          major: 9\n          hostPath: /var");
    assert!(wrong.contains("major: 9"), "{wrong}");
    spec_dir(&w, &[("wrong.yaml", &wrong)]);
    refused(&w, &["--device", "example.com/wrong=1"], "its spec says", "regenerates");
    // Hooks that would run outside the container's namespaces, mounts
    // over the TRE's directories: refused.
    let prestart = spec_text("example.com/prestart", host()).replace("hookName: createContainer", "hookName: prestart");
    spec_dir(&w, &[("prestart.yaml", &prestart)]);
    refused(&w, &["--device", "example.com/prestart=0"], "\"prestart\" hook", "regenerates");
    let over = spec_text("example.com/over", host()).replace("/usr/lib/libexample.so.1", "/safe_outputs/x");
    spec_dir(&w, &[("over.yaml", &over)]);
    refused(&w, &["--device", "example.com/over=0"], "over the TRE's /safe_outputs", "regenerates");
}

#[test]
fn specs_that_others_can_change_are_not_used() {
    let w = world("unsafe", Mode::Root, "");
    let dir = cdi_root(&w).join("cdi");
    std::fs::set_permissions(dir.join("example.yaml"), std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(&w, &["--gpu", "0"], "no CDI device example.com/gpu=0", "can be changed by users other than root");
    std::fs::set_permissions(dir.join("example.yaml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&w, &["--gpu", "0"], "no CDI device example.com/gpu=0", "can be changed by users other than root");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    run(&w, &["--gpu", "0"], "true").ok();

    // A host path through a directory a user owns (who could swap the link
    // in it between ces's check and the mount): refused.
    let theirs = cdi_root(&w).join("users-dir");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::symlink(host().dir.join("driver"), theirs.join("driver")).unwrap();
    common::test_user().chown(&theirs);
    let through = spec_text("example.com/through", host())
        .replace(&format!("{}/driver/", host().dir.display()), &format!("{}/driver/", theirs.display()));
    spec_dir(&w, &[("through.yaml", &through)]);
    refused(
        &w,
        &["--device", "example.com/through=0"],
        "users-dir can be changed by users other than root",
        "regenerates",
    );
}

#[test]
fn the_policy_decides_who_gets_which_devices() {
    // Off by default.
    let w = World::new(&Mode::Rootless.repo("gpu", "policy"), Mode::Rootless);
    refused(&w, &["--gpu"], "devices (--gpu, --device) are not enabled on this host", "[gpu] enabled = true");
    let dir = spec_dir(&w, &[("example.yaml", &spec_text("example.com/gpu", host()))]);
    let base =
        format!("[gpu]\nenabled = true\nkind = \"example.com/gpu\"\nspec_dirs = [{:?}]\n", dir.display().to_string());
    let config = std::fs::read_to_string(&w.sb.config).unwrap();
    let with = |policy: &str| std::fs::write(&w.sb.config, format!("{config}\n{base}{policy}")).unwrap();

    // Another user's rule: nothing for this one, whatever $USER says.
    with("[[gpu.allow]]\nusers = [\"someone-else\"]\n");
    refused(&w, &["--gpu", "0"], "user ces-test-rootless may not use example.com/gpu=0", "[[gpu.allow]]");
    let mut spoofed = w.run_with(&["--gpu", "0"], &["true"]);
    spoofed.env("USER", "someone-else").env("LOGNAME", "someone-else");
    let stderr = w.sb.run(spoofed).fails().to_owned();
    assert!(stderr.contains("user ces-test-rootless may not use example.com/gpu=0"), "{stderr}");
    // GPU 1 only, through a group of theirs.
    with(&format!("[[gpu.allow]]\ngroups = [{:?}]\ndevices = [\"example.com/gpu=1\"]\n", w.user.group));
    refused(&w, &["--gpu", "0"], "may not use example.com/gpu=0", "[[gpu.allow]]");
    let out = run(&w, &["--gpu"], "ls /dev | grep examplegpu | tr '\\n' ' '").ok().to_owned();
    assert_eq!(out.trim(), "examplegpu1 examplegpuctl", "--gpu is every GPU this user may use");
    let listed = w.ces(&["system", "gpus"]).ok().to_owned();
    let row = |name: &str| listed.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap().to_owned();
    assert!(row("example.com/gpu=0").contains(" no "), "{listed}");
    assert!(row("example.com/gpu=1").contains(" yes "), "{listed}");
    // At most one per run.
    with(&format!("max_per_run = 1\n[[gpu.allow]]\nusers = [\"{}\"]\n", common::TEST_USER));
    refused(&w, &["--gpu"], "2 devices asked for, and this host allows at most 1 per run", "--gpu 0");
    run(&w, &["--gpu", "1"], "true").ok();
}

#[test]
fn system_gpus_lists_the_devices_and_the_specs_not_used() {
    let w = world("list", Mode::Root, "");
    // One device in two files of a directory: neither is used there; a
    // later directory's still is.
    let dup = |d: &str| {
        spec_text("example.com/dup", host())
            .replace(&format!("{d}/gpu1"), &format!("{d}/gpu0"))
            .replace("\"1\"", "\"9\"")
    };
    let d = host().dir.display().to_string();
    // JSON is read as well as YAML.
    let json = format!(
        r#"{{"cdiVersion": "0.5.0", "kind": "example.com/json", "devices": [{{"name": "a", "containerEdits": {{"deviceNodes": [{{"path": "/dev/examplejson", "hostPath": "{d}/gpu0"}}]}}}}]}}"#
    );
    spec_dir(&w, &[("broken.yaml", "kind: ["), ("dup1.yaml", &dup(&d)), ("dup2.yaml", &dup(&d)), ("j.json", &json)]);
    let later = cdi_root(&w).join("cdi-later");
    std::fs::create_dir(&later).unwrap();
    std::fs::set_permissions(&later, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(later.join("dup.yaml"), dup(&d).replace("\"9\"", "\"8\"")).unwrap();
    let config = std::fs::read_to_string(&w.sb.config).unwrap();
    let first = cdi_root(&w).join("cdi").display().to_string();
    let both = format!("spec_dirs = [{first:?}, {:?}]", later.display().to_string());
    std::fs::write(&w.sb.config, config.replace(&format!("spec_dirs = [{first:?}]"), &both)).unwrap();
    let out = w.ces(&["system", "gpus"]).ok().to_owned();
    assert!(out.lines().any(|l| l.starts_with("not used: ") && l.contains("example.com/dup=9 is also in")), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("example.com/dup=9 ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("example.com/dup=8 ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("example.com/dup=0 ")), "{out}");
    // Another kind: listed (root may use every kind).
    assert!(out.lines().any(|l| l.starts_with("example.com/json=a ") && l.contains(" yes ")), "root may: {out}");
    let out = w.ces(&["system", "gpus"]).ok().to_owned();
    assert!(out.starts_with("Devices are enabled; --gpu means example.com/gpu."), "{out}");
    for name in ["example.com/gpu=0 ", "example.com/gpu=1 ", &format!("example.com/gpu={UUID0} ")] {
        assert!(out.lines().any(|l| l.starts_with(name) && l.contains(" yes ")), "{name} in:\n{out}");
    }
    assert!(out.lines().any(|l| l.starts_with("not used: ") && l.contains("broken.yaml")), "{out}");
    let json: serde_json::Value = serde_json::from_str(w.ces(&["system", "gpus", "--json"]).ok()).unwrap();
    let gpus: Vec<&str> = json["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["gpu"] == true)
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(gpus, ["example.com/gpu=0", "example.com/gpu=1"]);
    assert_eq!(json["devices"][0]["uuid"], UUID0);
}

/// `ces test ARGS`; rootless in a mount namespace of its own whose
/// `/dev/net/tun` is open to all (as `ces test` needs it rootless), the
/// host's own node left as it is.
fn ces_test(w: &World, args: &[&str]) -> common::Run {
    let mut full = vec!["test"];
    full.extend_from_slice(args);
    if w.mode != Mode::Rootless {
        return w.ces(&full);
    }
    let wrapper = "set -e; d=$(mktemp -d -p \"$SANDBOX\"); mknod -m 0666 \"$d/tun\" c 10 200; \
                   mount --bind \"$d/tun\" /dev/net/tun; exec setpriv --reuid \"$U\" --regid \"$G\" --init-groups -- \"$@\"";
    let mut argv = vec!["--mount", "--propagation", "private", "--", "sh", "-c", wrapper, "sh"];
    argv.push(common::user_bin(env!("CARGO_BIN_EXE_ces")));
    argv.extend(full);
    let mut cmd = w.sb.command("unshare", &argv);
    cmd.current_dir("/")
        .env("SANDBOX", w.sb.dir.path())
        .env("U", w.user.uid.to_string())
        .env("G", w.user.gid.to_string())
        .env("HOME", &w.home)
        .env("USER", common::TEST_USER);
    w.sb.run(cmd)
}

fn test_reports_use(mode: Mode) {
    let w = world("test", mode, "");
    let used = ces_test(&w, &["--gpu", "0", &w.image, "sh", "-c", "echo x > /dev/examplegpu0"]);
    let out = used.ok().to_owned();
    assert!(out.contains("Verdict: READY"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Devices:  used: opened /dev/examplegpu0")), "{out}");
    let unused = ces_test(&w, &["--gpu", "0", &w.image, "true"]);
    assert_eq!(unused.code, 1, "{unused:?}");
    assert!(unused.stdout.contains("Verdict: NOT READY"), "{}", unused.stdout);
    assert!(unused.stdout.contains("was given example.com/gpu=0 but never opened"), "{}", unused.stdout);
    assert!(unused.stdout.contains("Devices:  not used"), "{}", unused.stdout);
}

#[test]
fn ces_test_reports_whether_the_gpu_was_used_as_root() {
    test_reports_use(Mode::Root);
}

#[test]
fn ces_test_reports_whether_the_gpu_was_used_rootless() {
    test_reports_use(Mode::Rootless);
}

/// The podman backend: `--device NAME`, podman reading the spec itself
/// (from `/var/run/cdi`, where podman 4 looks), after ces's own checks.
/// Podman 4.3 (Debian 12) reads CDI up to 0.5.0: no additional groups, and
/// no `hostPath` (a node is bound from its container path on the host), so
/// this spec's nodes are made in the host's `/dev`, and removed after.
fn podman_devices(mode: Mode) {
    let w = World::new(&mode.repo("gpu", "podman"), mode);
    let tag = format!("{}{}", std::process::id(), format!("{mode:?}").to_lowercase());
    let kind = format!("example.com/gpu{tag}");
    struct Remove(Vec<PathBuf>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for path in &self.0 {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let mut made = Remove(Vec::new());
    let mut spec = spec_text(&kind, host()).replace("\"0.7.0\"", "\"0.5.0\"").replace("  additionalGids: [44]\n", "");
    for (name, major, minor) in NODES {
        let node = PathBuf::from(format!("/dev/ces-test-{tag}-{name}"));
        let status =
            std::process::Command::new("mknod").args(["-m", "0666"]).arg(&node).args(["c", major, minor]).status();
        assert!(status.unwrap().success());
        made.0.push(node.clone());
        let container = match name {
            "ctl" => "/dev/examplegpuctl".to_owned(),
            other => format!("/dev/example{other}"),
        };
        spec = spec.replace(
            &format!("path: {container}\n          hostPath: {}/{name}\n", host().dir.display()),
            &format!("path: {}\n", node.display()),
        );
        spec = spec.replace(
            &format!("path: {container}\n      hostPath: {}/{name}\n", host().dir.display()),
            &format!("path: {}\n", node.display()),
        );
    }
    assert!(!spec.contains(&format!("hostPath: {}/gpu", host().dir.display())), "{spec}");
    // Under sudo podman maps the container's root to the user, who cannot
    // read podman's own bundle, where the hook finds the container's root:
    // podman fails such hooks itself (docs/gpu.md); this spec has none.
    if mode == Mode::Sudo {
        let hooks = spec.find("  hooks:").unwrap();
        spec.truncate(hooks);
    }
    let cdi = Path::new("/var/run/cdi");
    std::fs::create_dir_all(cdi).unwrap();
    let file = cdi.join(format!("ces-test-{tag}.yaml"));
    std::fs::write(&file, spec).unwrap();
    made.0.push(file);
    w.sb.configure(&format!("[gpu]\nenabled = true\nkind = {kind:?}\n"));
    let look = format!(
        "ls /dev | grep ces-test-{tag} | tr '\\n' ' '; echo; cat /usr/lib/libexample.so.1; echo \"env=$EXAMPLE_DRIVER\"; cat /cdi-hook-mark 2>/dev/null || echo no-hook"
    );
    let out = run(&w, &["--runtime", "podman", "--gpu", "0"], &look).ok().to_owned();
    let lines: Vec<&str> = out.lines().collect();
    let nodes = format!("ces-test-{tag}-ctl ces-test-{tag}-gpu0 ");
    let hook = if mode == Mode::Sudo { "no-hook" } else { "hook marked" };
    assert_eq!(lines, [nodes.as_str(), "fake driver 1.2.3", "env=1.2.3", hook], "{out}");
    refused(&w, &["--runtime", "podman", "--gpu", "5"], &format!("no CDI device {kind}=5"), "ces system gpus");
}

#[test]
fn podman_gets_the_devices_by_name_as_root() {
    podman_devices(Mode::Root);
}

#[test]
fn podman_gets_the_devices_by_name_under_sudo() {
    podman_devices(Mode::Sudo);
}
