//! `ces run` / `ces-run` / `ces-gpu-run` with the real binary: the plan
//! (`--dry-run`), the refusals, the directory contract, and real runs with
//! podman (and the native backend) as root. Every directory a test creates is
//! under its own temp dir: HOME, the data root, the outputs and scratch
//! parents and the store.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ces_testkit::layer::Entry;
use ces_testkit::{AuthMode, Registry, busybox_image};
use common::{RootlessWorld, Run, TEST_USER, TreWorld, primary_group, require_root};

fn registry() -> &'static Registry {
    Registry::shared(AuthMode::Anonymous)
}

/// Root and podman are part of the test environment (scripts/setup, CI as
/// root): a test that needs them fails loudly rather than passing unrun.
fn require_root_and_podman() {
    require_root("needs root");
    let podman = Command::new("podman").arg("--version").stdout(Stdio::null()).status();
    assert!(podman.is_ok_and(|s| s.success()), "podman is missing: run scripts/setup");
}

/// A [`TreWorld`] whose image sets `FROM_IMAGE=1`, whose project data holds
/// `input.csv`, and whose `[tre]` table has `tre` too.
fn world(repo: &str, tre: &str) -> TreWorld {
    let image =
        busybox_image().env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=1"]);
    let w = TreWorld::with(repo, &image, tre);
    std::fs::write(w.project_dir.join("input.csv"), "a,b\n1,2\n").unwrap();
    w
}

/// What these tests add to a [`TreWorld`].
impl TreWorld {
    /// What is in HOME (outputs_*, scratch_*...).
    fn home_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.home)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Run records left in the store.
    fn run_records(&self) -> Vec<String> {
        match std::fs::read_dir(self.sb.store.join("runs")) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until the running container has written `/safe_outputs/NAME`.
    fn wait_for_output(&self, name: &str) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found =
                self.home_entries().iter().find(|n| n.starts_with("outputs_")).map(|n| self.home.join(n).join(name));
            if let Some(path) = found.filter(|p| p.exists()) {
                return path;
            }
            assert!(Instant::now() < deadline, "the container did not write /safe_outputs/{name}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_nothing_created(&self) {
        assert_eq!(self.home_entries(), Vec::<String>::new(), "nothing in HOME");
        assert_eq!(self.run_records(), Vec::<String>::new(), "no run record");
    }
}

#[test]
fn dry_run_prints_the_whole_plan_and_creates_nothing() {
    let w = world("run/dry", "");
    let env_file = w.sb.dir.path().join("env.txt");
    std::fs::write(&env_file, "# secrets\nFILE_SECRET=file-value-123\n").unwrap();
    let out = w.ces(&[
        "run",
        "--runtime",
        "podman",
        "--dry-run",
        "-e",
        "FLAG_SECRET=flag-value-456",
        "--env-file",
        env_file.to_str().unwrap(),
        "-m",
        "0.5",
        "-c",
        "1",
        "--mount",
        "type=tmpfs,destination=/cache,tmpfs-size=16m",
        &w.image,
        "sh",
        "-c",
        "echo hi > /safe_outputs/x",
    ]);
    let plan = out.ok();
    assert!(plan.contains(&format!("image:      {}", w.image)), "{plan}");
    assert!(plan.contains(&format!("digest:     {}", w.digest)), "{plan}");
    assert!(plan.contains("runtime:    podman"), "{plan}");
    assert!(plan.contains("command:    sh -c 'echo hi > /safe_outputs/x'"), "{plan}");
    let safe_data = format!("/safe_data     ro {}", w.project_dir.display());
    assert!(plan.contains(&safe_data), "{plan}");
    assert!(plan.contains(&format!("/safe_outputs  rw {}/outputs_", w.home.display())), "{plan}");
    assert!(plan.contains(&format!("/scratch       rw {}/scratch_", w.home.display())), "{plan}");
    assert!(plan.contains("/cache         rw tmpfs (16.8 MB)"), "{plan}");
    assert!(plan.contains("memory 0.5 GiB, cpus 1, pids 4096"), "{plan}");
    assert!(plan.contains(&format!("safe_data:  project {}, found by group {}", primary_group(), primary_group())));
    assert!(
        plan.contains("env:        PATH FROM_IMAGE HOME TMPDIR FILE_SECRET FLAG_SECRET (values not shown)"),
        "{plan}"
    );
    // The exact command, podman by absolute path (as root, from the system's directories).
    assert!(plan.contains("/podman --hooks-dir "), "{plan}");
    assert!(plan.contains("/hooks.d run --runtime runc "), "no hooks but an empty directory's: {plan}");
    assert!(plan.contains(" --network none "), "{plan}");
    assert!(plan.contains("/podman.env --workdir / "), "values go through a file: {plan}");
    for secret in ["file-value-123", "flag-value-456"] {
        assert!(!plan.contains(secret) && !out.stderr.contains(secret), "{secret} leaked:\n{plan}\n{}", out.stderr);
    }
    w.assert_nothing_created();

    // --json: the same plan for scripts.
    let out = w.ces(&["run", "--runtime", "podman", "--dry-run", "--json", "-e", "S=v-secret", &w.image]);
    let plan: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(plan["spec"]["image"]["digest"], w.digest.as_str());
    assert_eq!(plan["spec"]["process"]["args"], serde_json::json!(["sh"]));
    assert_eq!(plan["spec"]["mounts"][0]["destination"], "/safe_data");
    assert_eq!(plan["spec"]["mounts"][0]["access"], "ro");
    assert_eq!(plan["spec"]["limits"]["memory"], 4u64 << 30);
    assert_eq!(plan["runtime"], "podman");
    assert!(!out.stdout.contains("v-secret"));
    w.assert_nothing_created();
}

#[test]
fn compatible_forms_and_policy_from_the_config() {
    let w = world("run/compat", "[tre.projects.proj-rw]\nsafe_data_mode = \"rw\"\n");
    // `ces-run <runtime> ...`; the project's override makes /safe_data writable.
    std::fs::create_dir_all(w.data_root.join("proj-rw")).unwrap();
    let config = std::fs::read_to_string(&w.sb.config).unwrap();
    std::fs::write(&w.sb.config, config.replace("[tre]\n", "[tre]\nproject = \"proj-rw\"\n")).unwrap();
    let out = w.sb.run(w.command(env!("CARGO_BIN_EXE_ces-run"), &["podman", "--dry-run", &w.image, "ls"]));
    let plan = out.ok();
    assert!(plan.contains("runtime:    podman"), "{plan}");
    assert!(plan.contains(&format!("/safe_data     rw {}", w.data_root.join("proj-rw").display())), "{plan}");
    assert!(plan.contains("found by config"), "{plan}");

    // $HOME/safe_data wins over everything.
    std::fs::create_dir(w.home.join("safe_data")).unwrap();
    let out = w.sb.run(w.command(env!("CARGO_BIN_EXE_ces-run"), &["--runtime", "podman", "--dry-run", &w.image]));
    assert!(out.ok().contains(&format!("/safe_data     ro {}/safe_data", w.home.display())), "{}", out.stdout);
    std::fs::remove_dir(w.home.join("safe_data")).unwrap();

    // ces-gpu-run: parsed, then refused where the operator has not enabled
    // devices (docs/gpu.md); a host device path is never taken.
    let out = w.sb.run(w.command(env!("CARGO_BIN_EXE_ces-gpu-run"), &["podman", "-m", "2", &w.image, "nvidia-smi"]));
    let err = out.fails();
    assert!(err.contains("error: devices (--gpu, --device) are not enabled on this host"), "{err}");
    assert!(err.contains("hint: an operator enables them in the system config: [gpu] enabled = true"), "{err}");
    let out = w.ces(&["run", "--device", "/dev/sda", &w.image]);
    let err = out.fails();
    assert!(err.contains("error: \"/dev/sda\" is not a CDI device name"), "{err}");
    w.assert_nothing_created();
}

#[test]
fn missing_image_fails_with_a_pull_hint() {
    let w = world("run/missing", "");
    let out = w.ces(&["run", "--runtime", "podman", &format!("{}/run/never-pulled:1", registry().host())]);
    let err = out.fails();
    assert!(err.contains("hint: pull it first (ces pull "), "{err}");
    w.assert_nothing_created();
}

#[test]
fn widening_options_are_refused_on_the_command_line() {
    let w = world("run/refused", "");
    for (args, option) in [
        (vec!["--privileged"], "--privileged"),
        (vec!["--network", "host"], "--network"),
        (vec!["--net=host"], "--net"),
        (vec!["-P"], "-P"),
        (vec!["--cap-add", "SYS_ADMIN"], "--cap-add"),
        (vec!["--device-cgroup-rule", "c 8:* rwm"], "--device-cgroup-rule"),
        (vec!["--security-opt", "seccomp=unconfined"], "--security-opt"),
        (vec!["-u", "0"], "-u"),
        (vec!["--userns=host"], "--userns"),
        (vec!["--pid", "host"], "--pid"),
    ] {
        let mut full = vec!["run", "--runtime", "podman"];
        full.extend(args.iter().copied());
        full.push(&w.image);
        let out = w.ces(&full);
        let err = out.fails();
        assert!(
            err.contains(&format!(
                "error: option {option} on the command line is not allowed: it would widen what the container can reach"
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains("hint: every ces container runs with no network"), "{err}");
    }
    // Binds are the policy's ([run] bind_roots), refused here where it allows none.
    for args in [
        vec!["--volume", "/:/host"],
        vec!["--mount", "type=bind,src=/etc,dst=/etc"],
        // Regression: said "unknown option -/" (-v is --verbose, then `/`).
        vec!["-v/:/host"],
    ] {
        let mut full = vec!["run", "--runtime", "podman"];
        full.extend(args.iter().copied());
        full.push(&w.image);
        let err = w.ces(&full).fails().to_owned();
        assert!(err.contains("bind mounts are not allowed on this machine"), "{args:?}: {err}");
        assert!(err.contains("hint: the operator can allow binds of users' own directories"), "{err}");
    }
    let out = w.sb.run(w.command(env!("CARGO_BIN_EXE_ces-run"), &["--frobnicate", &w.image]));
    assert!(out.fails().contains("error: unknown option --frobnicate on the command line"), "{}", out.stderr);
    // After the image, everything is the container's.
    let out = w.ces(&["run", "--runtime", "podman", "--dry-run", &w.image, "--privileged", "-p", "80"]);
    assert!(out.ok().contains("command:    --privileged -p 80"), "{}", out.stdout);
    w.assert_nothing_created();
}

#[test]
fn widening_options_are_refused_in_an_opt_file_with_the_line() {
    let w = world("run/optfile", "");
    let opts = w.sb.dir.path().join("opts.txt");
    std::fs::write(&opts, "# run options\n-e A=1 -w /tmp\n--cap-add SYS_ADMIN\n").unwrap();
    let out = w.ces(&["run", "--runtime", "podman", "--opt-file", opts.to_str().unwrap(), &w.image]);
    let err = out.fails();
    assert!(
        err.contains(&format!(
            "error: option --cap-add in {} line 3 is not allowed: it would widen what the container can reach",
            opts.display()
        )),
        "{err}"
    );
    std::fs::write(&opts, "-e A=1\n--runtime native\n").unwrap();
    let out = w.ces(&["run", "--runtime", "podman", "--opt-file", opts.to_str().unwrap(), &w.image]);
    assert!(out.fails().contains(&format!("option --runtime in {} line 2 is not allowed", opts.display())));
    // Allowed options apply; the command line wins for single values.
    std::fs::write(&opts, "-e FROM_OPTS=1 -w /tmp -m 2\n--mount type=tmpfs,destination=/t\n").unwrap();
    let out =
        w.ces(&["run", "--runtime", "podman", "--dry-run", "-m", "1", "--opt-file", opts.to_str().unwrap(), &w.image]);
    let plan = out.ok();
    assert!(
        plan.contains("workdir:    /tmp") && plan.contains("memory 1.0 GiB") && plan.contains(" FROM_OPTS "),
        "{plan}"
    );
    assert!(plan.contains("/t             rw tmpfs"), "{plan}");
    w.assert_nothing_created();
}

#[test]
fn safe_data_not_found_is_a_clear_error_and_nothing_is_created() {
    let w = world("run/nodata", "");
    std::fs::remove_dir_all(&w.project_dir).unwrap();
    let out = w.ces(&["run", "--runtime", "podman", &w.image, "true"]);
    let err = out.fails();
    assert!(err.contains("error: no safe_data directory found for "), "{err}");
    assert!(err.contains(&format!("{}/safe_data", w.home.display())), "{err}");
    assert!(err.contains(&w.project_dir.display().to_string()), "{err}");
    assert!(err.contains("hint: ask the TRE operator"), "{err}");
    w.assert_nothing_created();
}

#[test]
fn env_and_arg_file_errors_name_the_line() {
    let w = world("run/files", "");
    let env_file = w.sb.dir.path().join("bad.env");
    std::fs::write(&env_file, "GOOD=1\n=hidden-value\n").unwrap();
    let out = w.ces(&["run", "--runtime", "podman", "--env-file", env_file.to_str().unwrap(), &w.image]);
    let err = out.fails();
    assert!(err.contains(&format!("error: {}, line 2: no variable name before '='", env_file.display())), "{err}");
    assert!(!err.contains("hidden-value"), "{err}");
    let arg_file = w.sb.dir.path().join("args.txt");
    std::fs::write(&arg_file, "--one\n\ntwo words\n").unwrap();
    let out =
        w.ces(&["run", "--runtime", "podman", "--dry-run", "--arg-file", arg_file.to_str().unwrap(), &w.image, "echo"]);
    assert!(out.ok().contains("command:    echo --one 'two words'"), "{}", out.stdout);
    w.assert_nothing_created();
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Root only (podman rootful), like CI.
#[test]
fn podman_run_keeps_outputs_removes_scratch_and_passes_the_exit_code() {
    require_root_and_podman();
    let w = world("run/podman", "");
    let script = "echo hi > /safe_outputs/x; echo \"$TOKEN\" > /safe_outputs/token; echo \"$SPACED\" > /safe_outputs/spaced; echo $TMPDIR > /safe_outputs/tmpdir; \
                  cat /safe_data/input.csv > /safe_outputs/copy; touch /scratch/s; \
                  (echo no > /safe_data/w) 2>/dev/null || echo ro > /safe_outputs/ro; \
                  ip -o link | wc -l > /safe_outputs/links; exit 3";
    let out = w.ces(&[
        "run",
        "--runtime",
        "podman",
        "--json",
        "-e",
        "TOKEN=s3cret-token",
        "-e",
        "SPACED= a 'b' \"c\" $d ",
        // In podman's own environment, this would make ld.so complain (and
        // podman, as root, load it).
        "-e",
        "LD_PRELOAD=/nonexistent/ces-test.so",
        &w.image,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.code, 3, "the container's code passes through:\n{}\n{}", out.stdout, out.stderr);
    let events = json_lines(&out.stdout);
    assert_eq!(events.len(), 2, "{}", out.stdout);
    assert_eq!((events[0]["event"].as_str(), events[1]["event"].as_str()), (Some("start"), Some("end")));
    assert_eq!(events[0]["digest"], w.digest.as_str());
    assert_eq!(events[1]["exit_code"], 3);
    let id = events[0]["id"].as_str().unwrap();
    let outputs = PathBuf::from(events[1]["outputs"].as_str().unwrap());
    assert_eq!(outputs, w.home.join(format!("outputs_{id}")));
    let read = |name: &str| std::fs::read_to_string(outputs.join(name)).unwrap();
    assert_eq!(read("x"), "hi\n");
    assert_eq!(read("token"), "s3cret-token\n", "env values reach the container");
    assert_eq!(read("spaced"), " a 'b' \"c\" $d \n");
    assert!(!out.stderr.contains("ces-test.so"), "LD_PRELOAD reached podman: {}", out.stderr);
    assert_eq!(read("tmpdir"), "/scratch\n");
    assert_eq!(read("copy"), "a,b\n1,2\n");
    assert_eq!(read("ro"), "ro\n", "/safe_data is read-only");
    assert_eq!(read("links").trim(), "1", "only loopback");
    assert!(!w.project_dir.join("w").exists());
    assert_eq!(w.home_entries(), [format!("outputs_{id}")], "scratch removed, outputs kept");
    assert!(w.run_records().is_empty(), "{:?}", w.run_records());
    assert!(out.stderr.contains(&format!("Running {} ({})", w.image, w.digest)), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("Run {id} exited with code 3: outputs kept in {}", outputs.display())));
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
}

/// As root for another user (sudo): what the container writes is theirs.
#[test]
fn podman_run_for_a_sudo_user_gives_them_the_outputs() {
    require_root_and_podman();
    let w = world("run/podman-sudo", "");
    w.for_another_user();
    let cmd = w.command(
        env!("CARGO_BIN_EXE_ces"),
        &[
            "run",
            "--runtime",
            "podman",
            "--json",
            &w.image,
            "sh",
            "-c",
            "id -u > /safe_outputs/uid; mkdir /safe_outputs/d",
        ],
    );
    let cmd = w.sb.as_sudo(cmd, 4242, 4343, "nobody-here");
    let out = w.sb.run(cmd);
    out.ok();
    let outputs = PathBuf::from(json_lines(&out.stdout)[1]["outputs"].as_str().unwrap().to_owned());
    for path in [outputs.clone(), outputs.join("uid"), outputs.join("d")] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "{}", path.display());
    }
    assert_eq!(std::fs::read_to_string(outputs.join("uid")).unwrap(), "0\n", "root in the container");
    assert_eq!(w.home_entries().len(), 1, "{:?}", w.home_entries());
}

/// SIGTERM to ces reaches the container; ces outlives it and cleans up.
#[test]
fn sigterm_to_ces_is_passed_on_and_scratch_is_still_removed() {
    require_root_and_podman();
    let w = world("run/podman-term", "");
    let mut child = w
        .command(
            env!("CARGO_BIN_EXE_ces"),
            // The trap makes it hold whether or not sh is PID 1 (podman's --init
            // needs catatonit): PID 1 ignores signals it has no handler for.
            &[
                "run",
                "--runtime",
                "podman",
                &w.image,
                "sh",
                "-c",
                "trap 'exit 143' TERM; touch /safe_outputs/started; sleep 60 & wait",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = w.wait_for_output("started");
    let scratch = w.home_entries().into_iter().find(|n| n.starts_with("scratch_")).unwrap();
    nix_kill(child.id(), 15);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "128 + SIGTERM");
    assert!(started.exists(), "outputs kept");
    assert!(!w.home.join(scratch).exists(), "scratch removed");
    assert!(w.run_records().is_empty());
}

fn nix_kill(pid: u32, signal: i32) {
    let ok = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(ok.success());
}

/// What a crashed ces left (a record whose lock is free) is removed by the
/// next start of a run, and by `ces gc`; outputs are kept.
#[test]
fn leftovers_of_a_crashed_run_are_removed_by_the_next_start() {
    require_root("needs root");
    let w = world("run/stale", "");
    let id = "20200101-000000-0badc0de";
    for next in [vec!["run", w.image.as_str(), "true"], vec!["gc"]] {
        let scratch = w.home.join(format!("scratch_{id}"));
        let outputs = w.home.join(format!("outputs_{id}"));
        std::fs::create_dir_all(scratch.join("deep")).unwrap();
        std::fs::create_dir_all(&outputs).unwrap();
        std::fs::write(outputs.join("result"), "kept").unwrap();
        let record = w.sb.store.join("runs").join(id);
        std::fs::create_dir_all(record.join("state")).unwrap();
        std::fs::write(record.join("lock"), "").unwrap();
        let json = serde_json::json!({"id": id, "pid": 1, "runtime": "podman", "outputs": outputs, "scratch": scratch});
        std::fs::write(record.join("record.json"), json.to_string()).unwrap();
        w.ces(&next).ok();
        assert!(!scratch.exists(), "scratch removed");
        assert!(!record.exists(), "record removed");
        assert_eq!(std::fs::read_to_string(outputs.join("result")).unwrap(), "kept");
    }
}

/// The native backend, for real (root).
#[test]
fn native_run_smoke() {
    require_root("needs root");
    let w = world("run/native", "");
    let out = w.ces(&["run", "--json", &w.image, "sh", "-c", "echo hi > /safe_outputs/x; test -d /scratch"]);
    out.ok();
    let outputs = json_lines(&out.stdout)[1]["outputs"].as_str().unwrap().to_owned();
    assert_eq!(std::fs::read_to_string(Path::new(&outputs).join("x")).unwrap(), "hi\n");
    assert_eq!(w.home_entries().len(), 1, "scratch removed: {:?}", w.home_entries());
    assert!(w.run_records().is_empty());
}

#[test]
fn image_user_is_resolved_from_the_image() {
    let reg = registry();
    let mut entries = ces_testkit::layer::busybox_entries();
    entries.retain(|e| !matches!(e, Entry::File { path, .. } if path == "etc/passwd" || path == "etc/group"));
    entries.push(Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"));
    entries.push(Entry::file("etc/group", "root:x:0:\napp:x:1001:\n"));
    let image = ces_testkit::ImageSpec::new(vec![ces_testkit::layer::Layer::new(entries)])
        .user("app")
        .workdir("/home/app")
        .cmd(&["sh"])
        .build();
    reg.push(&image, "run/user", "1");
    let w = world("run/user-base", "");
    let reference = format!("{}/run/user:1", reg.host());
    w.sb.ces(&["pull", "--quiet", &reference]).ok();
    let out = w.ces(&["run", "--runtime", "podman", "--dry-run", &reference]);
    let plan = out.ok();
    assert!(plan.contains("user:       1000:1001 in the container"), "{plan}");
    assert!(plan.contains("workdir:    /home/app"), "{plan}");
    assert!(plan.contains("--user 1000:1001 "), "{plan}");
}

// ----- the native runtime, end to end through the binary -----

/// The outputs dir of a run, from its `--json` lines.
fn outputs_of(out: &Run) -> PathBuf {
    PathBuf::from(json_lines(&out.stdout)[0]["outputs"].as_str().unwrap())
}

#[test]
fn native_exit_codes_pass_through_and_scratch_goes_whatever_the_end() {
    require_root("needs root");
    let w = world("run/native-ends", "");
    let failed = w.ces(&["run", "--json", &w.image, "sh", "-c", "echo partial > /safe_outputs/r; exit 3"]);
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    assert_eq!(std::fs::read_to_string(outputs_of(&failed).join("r")).unwrap(), "partial\n", "outputs kept on failure");

    // -m takes GB: 0.03 GB is about 32 MB; dd's 64 MB buffer cannot fit.
    let oom = w.ces(&[
        "run",
        "--json",
        "-m",
        "0.03",
        &w.image,
        "sh",
        "-c",
        "echo before > /safe_outputs/r; dd if=/dev/zero of=/dev/null bs=64M count=1",
    ]);
    assert_eq!(oom.code, 137, "{}", oom.stderr);
    assert!(oom.stderr.contains("out of memory"), "the message says it was the memory limit: {}", oom.stderr);
    assert_eq!(std::fs::read_to_string(outputs_of(&oom).join("r")).unwrap(), "before\n", "outputs kept after OOM");

    let signalled = w.ces(&["run", &w.image, "sh", "-c", "kill -KILL $$"]);
    assert_eq!(signalled.code, 137, "128 + SIGKILL: {}", signalled.stderr);

    let scratch: Vec<_> = w.home_entries().into_iter().filter(|n| n.starts_with("scratch_")).collect();
    assert!(scratch.is_empty(), "every scratch dir removed: {scratch:?}");
    assert!(w.run_records().is_empty(), "no run record left");
}

#[test]
fn native_sigterm_to_ces_reaches_the_container_and_cleans_up() {
    require_root("needs root");
    let w = world("run/native-term", "");
    let mut child = w
        .command(env!("CARGO_BIN_EXE_ces"), &["run", &w.image, "sh", "-c", "touch /safe_outputs/started; sleep 60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = w.wait_for_output("started");
    nix_kill(child.id(), 15);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "128 + SIGTERM: the workload got it (ces-init forwards it)");
    assert!(started.exists(), "outputs kept");
    assert!(!w.home_entries().iter().any(|n| n.starts_with("scratch_")), "scratch removed: {:?}", w.home_entries());
    assert!(w.run_records().is_empty());
}

/// An image of two layers, the upper one hiding a file (whiteout) and a
/// directory's lower content (opaque directory) of the lower one, is kept
/// as its layers, and a run sees them merged. With `[storage]
/// layered_rootfs = false`, the next run assembles the image's tree and
/// sees the same.
#[test]
fn an_image_kept_as_its_layers_runs_merged_and_the_setting_assembles_it() {
    require_root("needs root");
    use ces_testkit::layer::{Layer, busybox_entries};
    let mut lower = busybox_entries();
    lower.extend([Entry::dir("data"), Entry::file("data/a", "a"), Entry::file("gone", "g")]);
    let upper = vec![Entry::dir("data"), Entry::opaque("data"), Entry::file("data/b", "b"), Entry::whiteout("gone")];
    let image = ces_testkit::ImageSpec::new(vec![Layer::new(lower), Layer::new(upper)]);
    let w = TreWorld::with("run/layered", &image, "");
    assert!(w.sb.rootfs(&w.digest).is_layered(), "kept as its layers");
    assert!(!w.sb.tree(&w.digest).exists(), "no tree assembled");
    let inspect = |w: &TreWorld| -> serde_json::Value {
        serde_json::from_str(w.ces(&["inspect", "--json", &w.image]).ok()).unwrap()
    };
    let json = inspect(&w);
    assert_eq!(json["rootfs"], serde_json::Value::Null, "no tree: {json}");
    let layers: Vec<PathBuf> =
        json["rootfs_layers"].as_array().unwrap().iter().map(|d| PathBuf::from(d.as_str().unwrap())).collect();
    assert_eq!(layers.len(), 2, "{json}");
    assert!(layers[0].join("data/a").is_file() && layers[1].join("data/b").is_file(), "bottom first: {layers:?}");
    let script = "ls /data > /safe_outputs/data; test -e /gone && echo visible > /safe_outputs/gone; true";
    let seen = |w: &TreWorld| {
        let out = w.ces(&["run", "--json", &w.image, "sh", "-c", script]);
        out.ok();
        let outputs = outputs_of(&out);
        (std::fs::read_to_string(outputs.join("data")).unwrap(), outputs.join("gone").exists())
    };
    assert_eq!(seen(&w), ("b\n".to_owned(), false), "the upper layer hides /gone and /data/a");
    let config = std::fs::read_to_string(&w.sb.config).unwrap();
    std::fs::write(&w.sb.config, config.replacen("[storage]\n", "[storage]\nlayered_rootfs = false\n", 1)).unwrap();
    assert_eq!(seen(&w), ("b\n".to_owned(), false));
    assert!(w.sb.tree(&w.digest).join("data/b").is_file(), "assembled for the run");
    let json = inspect(&w);
    assert_eq!(json["rootfs"].as_str().map(PathBuf::from), Some(w.sb.tree(&w.digest)), "{json}");
    assert_eq!(json["rootfs_layers"], serde_json::Value::Null, "{json}");
}

/// An image that has one layer twice (legacy builders repeat the empty
/// layer) runs from its layers: overlayfs refuses a directory twice among
/// its lower layers, so the lower copy is left out (the upper shows all it
/// would).
#[test]
fn an_image_with_a_layer_twice_runs_from_its_layers() {
    require_root("needs root");
    use ces_testkit::layer::{Layer, busybox_entries};
    let mut base = busybox_entries();
    base.push(Entry::file("x", "x"));
    let base = Layer::new(base);
    let hide = Layer::new(vec![Entry::whiteout("x"), Entry::file("y", "y")]);
    let image = ces_testkit::ImageSpec::new(vec![base.clone(), hide, base]);
    let w = TreWorld::with("run/twice", &image, "");
    assert!(w.sb.rootfs(&w.digest).is_layered(), "kept as its layers");
    let out = w.ces(&["run", "--json", &w.image, "sh", "-c", "cat /x /y > /safe_outputs/seen"]);
    out.ok();
    assert_eq!(std::fs::read_to_string(outputs_of(&out).join("seen")).unwrap(), "xy");
}

/// A working directory that is a link in the image to `/proc/self/fd/N`:
/// libcontainer enters it after pivot_root, when its init still holds
/// descriptors it inherited from ces (close-on-exec, not yet closed), some
/// directories of the host. The workload would then start on the host,
/// outside the container's root (runc's CVE-2024-21626), and reach any host
/// file through `..`. As root (and under sudo), ces's own creation of the
/// working directory in the image (resolved inside it) fails first;
/// rootless, libcontainer refuses a working directory `getcwd` cannot name. A path through
/// `/proc` or `/dev` is refused by the plan, with a clear error.
#[test]
fn a_working_directory_through_an_inherited_descriptor_is_refused() {
    require_root("needs root");
    use ces_testkit::layer::{Layer, busybox_entries};
    let fds = 3..40;
    let mut entries = busybox_entries();
    entries.push(Entry::dir("fd"));
    entries.extend(fds.clone().map(|n| Entry::symlink(&format!("fd/{n}"), &format!("/proc/self/fd/{n}"))));
    let w = TreWorld::with("run/workdir-fd", &ces_testkit::ImageSpec::new(vec![Layer::new(entries)]), "");
    let rootless = RootlessWorld::new("run/workdir-fd-rootless");
    rootless.ces(&["pull", "--quiet", &w.image]).ok();
    rootless.sb.ces(&["system", "setup", "--user", TEST_USER]).ok();
    // A host file any user could read, had the workload a way to it.
    let marker = w.sb.dir.path().join("host-marker");
    std::fs::write(&marker, "host file").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(w.sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cat = rootless.user.setpriv(&rootless.sb, &["cat", &marker.display().to_string()]);
    cat.current_dir("/");
    assert_eq!(rootless.sb.run(cat).ok(), "host file", "the marker is readable");
    let up = "../".repeat(40);
    let script = format!("cat {up}{} > /safe_outputs/seen", marker.display().to_string().trim_start_matches('/'));
    w.for_another_user();
    let mut refused = 0;
    for n in fds {
        let args = ["run", "--json", "-w", &format!("/fd/{n}"), &w.image, "sh", "-c", &script];
        let as_root = w.ces(&args);
        // Under sudo, root runs for the user with the pinned /safe_data's
        // descriptor open.
        let under_sudo = w.sb.run(rootless.user.sudo(&w.sb, w.command(env!("CARGO_BIN_EXE_ces"), &args)));
        // As root, ces creates the working directory inside the image
        // (resolved in it, where /proc is not mounted yet): that fails.
        for out in [&as_root, &under_sudo] {
            let refusal = format!("/fd/{n}: open newly created directory failed");
            assert!(out.fails().contains(&refusal), "{}", out.stderr);
        }
        for out in [as_root, under_sudo, rootless.ces(&args)] {
            let end = out.stdout.lines().any(|l| l.contains("\"event\":\"end\""));
            let read = if end {
                std::fs::read_to_string(outputs_of(&out).join("seen")).unwrap_or_default()
            } else {
                String::new()
            };
            assert_ne!(read, "host file", "/fd/{n}: the workload read a host file: {}", out.stderr);
            if out.stderr.contains("failed to verify if current working directory is safe") {
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no descriptor of a directory reached: the test proves nothing");
    for kernel in ["/proc/self/fd/5", "/dev/fd/5"] {
        let out = w.ces(&["run", "-w", kernel, &w.image, "true"]);
        assert!(out.fails().contains("is in /proc or /dev, the kernel's"), "{}", out.stderr);
    }
}

/// An image of more layers than their directories' paths fit in one page
/// of mount options runs from its layers, mounted by their short links:
/// as root (each layer idmapped) and rootless (the overlay mounted inside
/// the container's namespaces).
#[test]
fn an_image_of_many_layers_runs_from_them() {
    require_root("needs root");
    let n = 60;
    let image = ces_testkit::many_layers_image(n);
    let script = format!("cat /f1 /f{} > /safe_outputs/seen", n - 1);
    let w = TreWorld::with("run/many-layers", &image, "");
    assert!(w.sb.rootfs(&w.digest).is_layered(), "kept as its layers");
    let out = w.ces(&["run", "--json", &w.image, "sh", "-c", &script]);
    out.ok();
    assert_eq!(std::fs::read_to_string(outputs_of(&out).join("seen")).unwrap(), format!("1{}", n - 1));

    let rootless = RootlessWorld::new("run/many-layers-rootless");
    rootless.ces(&["pull", "--quiet", &w.image]).ok();
    assert!(rootless.sb.rootfs(&w.digest).is_layered(), "kept as its layers");
    rootless.sb.ces(&["system", "setup", "--user", TEST_USER]).ok();
    let out = rootless.ces(&["run", "--json", &w.image, "sh", "-c", &script]);
    out.ok();
    assert_eq!(std::fs::read_to_string(outputs_of(&out).join("seen")).unwrap(), format!("1{}", n - 1));
}

#[test]
fn native_writes_outside_safe_outputs_are_gone_and_the_cache_is_untouched() {
    require_root("needs root");
    let w = world("run/native-cow", "");
    let rootfs = w.sb.rootfs(&w.digest);
    w.ces(&[
        "run",
        &w.image,
        "sh",
        "-c",
        "echo x > /etc/marker; echo y > /tmp/marker; rm /bin/ls; test \"$TMPDIR\" = /scratch",
    ])
    .ok();
    assert!(!rootfs.join("etc/marker").exists() && !rootfs.join("tmp/marker").exists());
    assert!(rootfs.join("bin/ls").is_symlink(), "the cached rootfs is never written");
    let second =
        w.ces(&["run", &w.image, "sh", "-c", "test ! -e /etc/marker && test ! -e /tmp/marker && test -e /bin/ls"]);
    second.ok();
}

#[test]
fn native_only_loopback_and_the_hosts_loopback_is_unreachable() {
    require_root("needs root");
    let w = world("run/native-net", "");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let script = format!(
        "ip -o link | cut -d: -f2 | tr -d ' ' > /safe_outputs/links; \
         (nc -l -p 7000 -e echo inside & sleep 0.3; nc -w 1 127.0.0.1 7000 > /safe_outputs/inside); \
         if nc -w 1 127.0.0.1 {port} </dev/null; then echo reached > /safe_outputs/host; fi; true"
    );
    let out = w.ces(&["run", "--json", &w.image, "sh", "-c", &script]);
    out.ok();
    let outputs = outputs_of(&out);
    assert_eq!(std::fs::read_to_string(outputs.join("links")).unwrap(), "lo\n", "only lo");
    assert_eq!(std::fs::read_to_string(outputs.join("inside")).unwrap(), "inside\n", "127.0.0.1 works inside");
    assert!(!outputs.join("host").exists(), "the host's 127.0.0.1:{port} was reached");
    assert!(listener.accept().is_err(), "no connection reached the host listener");
}

#[test]
fn ten_concurrent_native_runs_of_one_image_have_separate_outputs() {
    require_root("needs root");
    let w = world("run/native-ten", "");
    let children: Vec<_> = (0..10)
        .map(|i| {
            w.command(
                env!("CARGO_BIN_EXE_ces"),
                &["run", "--json", &w.image, "sh", "-c", &format!("echo {i} > /safe_outputs/n")],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let outputs = PathBuf::from(json_lines(&stdout)[0]["outputs"].as_str().unwrap());
        seen.push((outputs.clone(), std::fs::read_to_string(outputs.join("n")).unwrap()));
    }
    let mut dirs: Vec<_> = seen.iter().map(|(d, _)| d.clone()).collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), 10, "ten distinct outputs dirs");
    let mut numbers: Vec<_> = seen.iter().map(|(_, n)| n.trim().parse::<u32>().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, (0..10).collect::<Vec<_>>());
    assert!(!w.home_entries().iter().any(|n| n.starts_with("scratch_")));
    assert!(w.run_records().is_empty());
}

/// Rootless: an unprivileged user, after the operator's `ces system setup`,
/// pulls and runs with limits; what the container writes is theirs.
#[test]
fn rootless_run_after_system_setup() {
    let w = RootlessWorld::new("run/rootless");
    w.sb.ces(&["system", "setup", "--user", TEST_USER]).ok();
    let out = w.ces(&[
        "run",
        "--json",
        "-m",
        "0.25",
        "-c",
        "1",
        &w.image,
        "sh",
        "-c",
        "id -u > /safe_outputs/uid; ip -o link | wc -l > /safe_outputs/links",
    ]);
    out.ok();
    let outputs = outputs_of(&out);
    assert_eq!(std::fs::read_to_string(outputs.join("uid")).unwrap(), "0\n", "root in the container");
    assert_eq!(std::fs::read_to_string(outputs.join("links")).unwrap().trim(), "1", "only lo");
    let meta = std::fs::metadata(outputs.join("uid")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (w.user.uid, w.user.gid), "owned by the user on the host");
    assert!(
        !std::fs::read_dir(&w.home).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("scratch_"))
    );
}

/// Rootless, an image whose directories are closed to writing (Fedora's
/// and Rocky's `0555` `/usr/bin`, `0550` `/root`) is kept as its layers,
/// with those modes on disk: a run sees them, the container's root still
/// writes there (to its own layer), and the user's `rmi` and `gc` remove
/// the layers.
#[test]
fn rootless_an_image_with_read_only_directories_is_kept_as_its_layers() {
    use ces_testkit::layer::{Layer, busybox_entries};
    let w = RootlessWorld::new("run/rootless-0555");
    let mut entries = busybox_entries();
    entries.extend([
        Entry::Dir { path: "usr".into(), mode: 0o755 },
        Entry::Dir { path: "usr/bin".into(), mode: 0o555 },
        Entry::file_mode("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755),
        Entry::Dir { path: "root".into(), mode: 0o550 },
    ]);
    let reg = Registry::shared(AuthMode::Anonymous);
    let digest =
        reg.push(&ces_testkit::ImageSpec::new(vec![Layer::new(entries)]).build(), "run/rootless-0555-img", "1");
    let image = format!("{}/run/rootless-0555-img:1", reg.host());
    w.ces(&["pull", "--quiet", &image]).ok();
    let rootfs = w.sb.rootfs(&digest);
    assert!(rootfs.is_layered(), "kept as its layers");
    assert!(!w.sb.tree(&digest).exists(), "no tree assembled");
    w.sb.ces(&["system", "setup", "--user", TEST_USER]).ok();
    let script = "stat -c %a /usr/bin /root > /safe_outputs/modes; /usr/bin/tool > /safe_outputs/tool; \
                  echo x > /usr/bin/new && cat /usr/bin/new > /safe_outputs/new";
    let out = w.ces(&["run", "--json", &image, "sh", "-c", script]);
    out.ok();
    let outputs = outputs_of(&out);
    assert_eq!(std::fs::read_to_string(outputs.join("modes")).unwrap(), "555\n550\n");
    assert_eq!(std::fs::read_to_string(outputs.join("tool")).unwrap(), "tool\n");
    assert_eq!(std::fs::read_to_string(outputs.join("new")).unwrap(), "x\n", "written to the run's layer");
    let layers = w.sb.store.join("layers");
    let layer_dirs =
        || std::fs::read_dir(&layers).unwrap().filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir()).count();
    assert_eq!(layer_dirs(), 2, "busybox's layer and this image's");
    w.ces(&["rmi", &image]).ok();
    w.ces(&["gc"]).ok();
    assert_eq!(layer_dirs(), 1, "the user's gc removed the layer with read-only directories");
}

/// The reference service's runtime words: `ces-run apptainer` runs as
/// apptainer does, as the user's own uid (the project's gid, or theirs)
/// with HOME in /scratch, on the native runtime, and is recorded as such;
/// `k8s` reaches the Kubernetes backend (`slurm`: tests/slurm.rs; `k8s`: tests/k8s.rs).
#[test]
fn the_runtime_words() {
    let w = common::World::new(&common::Mode::Rootless.repo("run", "words"), common::Mode::Rootless);
    let bin = common::user_bin(env!("CARGO_BIN_EXE_ces-run"));
    let ces_run = |args: &[&str]| {
        let mut argv = vec![bin];
        argv.extend_from_slice(args);
        let mut cmd = w.user.setpriv(&w.sb, &argv);
        cmd.env("HOME", &w.home);
        w.sb.run(cmd)
    };
    let out = ces_run(&["apptainer", "-q", &w.image, "sh", "-c", "echo $(id -u) $(id -g) $HOME"]);
    assert_eq!(out.ok().trim(), format!("{} {} /scratch", w.user.uid, w.user.gid));
    let start = w.sb.audit_records().into_iter().rfind(|r| r["event"] == "run_start").unwrap();
    assert_eq!(start["runtime"], "apptainer", "{start}");
    // The image's own user otherwise (busybox's: root).
    let out = ces_run(&["native", "-q", &w.image, "id", "-u"]);
    assert_eq!(out.ok().trim(), "0");
    // Here /safe_data is the user's own, and [k8s]'s default namespace is the project's.
    let out = ces_run(&["k8s", "--dry-run", &w.image, "true"]);
    let err = out.fails();
    assert!(err.contains("error: [k8s] namespace names the project, and this run has none"), "{err}");
    assert!(err.contains("hint: run it from a project"), "{err}");
}
