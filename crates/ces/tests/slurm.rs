//! `--runtime slurm` against a live one-node Slurm cluster (the test kit's:
//! Debian's munged, slurmctld and slurmd): the run is planned here, submitted
//! with sbatch, and run on the node by ces as submitted; `--wait` prints the
//! job's output and ends with its code; the audit log has the submission and
//! the run with its job and node; a plan that changed in between (the config)
//! is refused on the node. As root and rootless.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use ces_testkit::slurm::Cluster;
use common::{Mode, World};

fn world(test: &str, mode: Mode) -> World {
    Cluster::shared();
    World::new(&mode.repo("slurm", test), mode)
}

/// `ces ARGS` for `w`, talking to the test cluster.
fn ces(w: &World, args: &[&str]) -> common::Run {
    let mut cmd: Command = w.command(args);
    cmd.env("SLURM_CONF", Cluster::shared().conf());
    w.sb.run(cmd)
}

fn runs_and_waits(mode: Mode) {
    let w = world("wait", mode);
    let script = "echo from-the-job; echo kept > /safe_outputs/result.txt; exit 7";
    let out = ces(&w, &["run", "--runtime", "slurm", "--wait", "-m", "0.5", &w.image, "sh", "-c", script]);
    assert_eq!(out.code, 7, "the job's code: {out:?}\n{}", Cluster::shared().logs());
    assert!(out.stdout.lines().any(|l| l == "from-the-job"), "the job's output: {out:?}");
    assert!(out.stderr.contains("Submitted run "), "{out:?}");
    assert_eq!(std::fs::read_to_string(w.outputs().join("result.txt")).unwrap(), "kept\n");

    let records = w.sb.audit_records();
    let submitted = records.iter().find(|r| r["event"] == "run_submitted").expect("the submission");
    let run_id = submitted["run_id"].as_str().unwrap();
    let job_id = submitted["job"]["id"].as_str().unwrap();
    assert_eq!(submitted["job"]["scheduler"], "slurm");
    assert_eq!(submitted["runtime"], "slurm");
    assert!(submitted["plan"].as_str().unwrap().starts_with("sha256:"), "{submitted}");
    let run = records.iter().find(|r| r["event"] == "run").expect("the run, recorded on the node");
    assert_eq!(run["run_id"], run_id, "the same run");
    assert_eq!(run["job"]["id"], job_id);
    assert_eq!(run["job"]["node"], Cluster::shared().node());
    assert_eq!(run["exit"]["code"], 7);
    assert_eq!(w.outputs().file_name().unwrap().to_string_lossy(), format!("outputs_{run_id}"));

    // The compatible form: `ces-run slurm` (the node runs `ces`: the
    // rootless user's copy of it is where [slurm] ces says).
    if mode == Mode::Rootless {
        w.sb.configure(&format!("[slurm]\nces = {:?}\n", common::user_bin(env!("CARGO_BIN_EXE_ces"))));
    }
    let args = ["slurm", "--wait", "-q", &w.image, "echo", "compat"];
    let mut cmd = match mode {
        Mode::Rootless => {
            let mut argv = vec![common::user_bin(env!("CARGO_BIN_EXE_ces-run"))];
            argv.extend_from_slice(&args);
            w.user.setpriv(&w.sb, &argv)
        }
        _ => w.sb.command(env!("CARGO_BIN_EXE_ces-run"), &args),
    };
    cmd.env("HOME", &w.home).current_dir(&w.home).env("SLURM_CONF", Cluster::shared().conf());
    let out = w.sb.run(cmd);
    assert!(out.ok().lines().any(|l| l == "compat"), "{out:?}");
}

#[test]
fn a_run_is_submitted_and_waited_for_as_root() {
    runs_and_waits(Mode::Root);
}

#[test]
fn a_run_is_submitted_and_waited_for_rootless() {
    runs_and_waits(Mode::Rootless);
}

/// The job sits in a partition that is down while the config changes: on
/// the node, the run's plan is not the one submitted, and it is refused.
#[test]
fn a_plan_that_changed_after_submission_is_refused_on_the_node() {
    let w = world("changed", Mode::Root);
    let cluster = Cluster::shared();
    let partition = |state: &str| {
        let status =
            cluster.command("scontrol").args(["update", "PartitionName=ces", &format!("State={state}")]).status();
        assert!(status.unwrap().success());
    };
    partition("DOWN");
    let out = ces(&w, &["run", "--runtime", "slurm", "--json", &w.image, "echo", "ran"]);
    let submitted: serde_json::Value = serde_json::from_str(out.ok().lines().next().unwrap()).unwrap();
    let job_id = submitted["job_id"].as_str().unwrap().to_owned();
    w.sb.configure("# changed after the submission");
    partition("UP");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let queued = cluster.command("squeue").args(["-h", "-j", &job_id]).output().unwrap();
        if String::from_utf8_lossy(&queued.stdout).trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "job {job_id} did not end:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    let records = w.sb.audit_records();
    let refused = records.iter().find(|r| r["event"] == "run_not_started").expect("the node's refusal");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains("the run's plan changed since it was submitted"), "{refused}");
    // Linked to its submission: the run id and the job.
    assert_eq!(refused["run_id"], submitted["run_id"], "{refused}");
    assert_eq!(refused["job"]["id"], job_id.as_str(), "{refused}");
    assert_eq!(refused["job"]["node"], cluster.node(), "{refused}");
    assert!(!records.iter().any(|r| r["event"] == "run_start"), "nothing ran");
    assert!(w.outputs_dirs().is_empty(), "no outputs");
}

#[test]
fn what_the_slurm_backend_does_not_take_is_refused_before_submitting() {
    let w = world("refused", Mode::Root);
    let out = ces(&w, &["run", "--runtime", "slurm", "-p", "127.0.0.1:18080:80", &w.image, "true"]);
    assert!(out.fails().contains("--runtime slurm does not take published ports"), "{out:?}");
    let out = ces(&w, &["run", "--wait", &w.image, "true"]);
    assert!(out.fails().contains("--wait is for runs handed to a scheduler"), "{out:?}");
    // The dry run shows the plan and the sbatch command, and submits nothing.
    let out = ces(&w, &["run", "--runtime", "slurm", "--dry-run", "-c", "2", "-m", "1", &w.image, "true"]);
    let plan = out.ok();
    assert!(plan.contains("runtime:    slurm"), "{plan}");
    // The container's limit, and 256 MiB for ces on the node.
    assert!(plan.contains(" --cpus-per-task=2 --mem=1280M "), "{plan}");
    assert!(!w.sb.audit_records().iter().any(|r| r["event"] == "run_submitted"));
}

/// Polls `f` for up to two minutes.
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} did not happen:\n{}", Cluster::shared().logs());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `ces jobs` lists a submitted run while it runs and how it ended; `ces
/// cancel` ends it as a SIGTERM ends a run (the container stopped, scratch
/// removed, outputs kept, the run recorded); `ces logs` prints its output.
#[test]
fn jobs_logs_and_cancel() {
    let w = world("cancel", Mode::Root);
    let script = "echo started > /safe_outputs/started; echo running; exec sleep 300";
    let out = ces(&w, &["run", "--runtime", "slurm", "--json", "-n", "long", &w.image, "sh", "-c", script]);
    let submitted: serde_json::Value = serde_json::from_str(out.ok().lines().next().unwrap()).unwrap();
    let (run_id, job_id) = (submitted["run_id"].as_str().unwrap(), submitted["job_id"].as_str().unwrap());
    until("the run's start on the node", || {
        w.sb.audit_records().iter().any(|r| r["event"] == "run_start" && r["run_id"] == run_id).then_some(())
    });
    let jobs: serde_json::Value = serde_json::from_str(ces(&w, &["jobs", "--json"]).ok()).unwrap();
    let job = jobs.as_array().unwrap().iter().find(|j| j["run_id"] == run_id).unwrap().clone();
    assert_eq!((job["job_id"].as_str(), job["state"].as_str()), (Some(job_id), Some("RUNNING")), "{jobs}");
    assert_eq!(job["node"], Cluster::shared().node());
    let table = ces(&w, &["jobs"]).ok().to_owned();
    assert!(table.lines().any(|l| l.starts_with(run_id) && l.contains(" RUNNING ")), "{table}");

    ces(&w, &["cancel", job_id]).ok();
    let run = until("the run's end on the node", || {
        w.sb.audit_records().into_iter().find(|r| r["event"] == "run" && r["run_id"] == run_id)
    });
    assert_eq!(run["exit"]["code"], 143, "{run}");
    assert_eq!(run["exit"]["signal"], 15, "{run}");
    assert!(w.scratch_left().is_empty(), "scratch removed: {:?}", w.scratch_left());
    assert_eq!(std::fs::read_to_string(w.outputs().join("started")).unwrap(), "started\n");
    until("the job's end", || {
        let jobs: serde_json::Value = serde_json::from_str(ces(&w, &["jobs", "--json"]).ok()).unwrap();
        let job = jobs.as_array().unwrap().iter().find(|j| j["run_id"] == run_id).unwrap().clone();
        (job["state"] == "ENDED").then_some(job)
    });
    let logs = ces(&w, &["logs", run_id]).ok().to_owned();
    assert!(logs.lines().any(|l| l == "running"), "{logs}");
    let again = ces(&w, &["cancel", run_id]);
    assert!(again.fails().contains("has ended"), "{again:?}");
    let unknown = ces(&w, &["logs", "12345678-000000-deadbeef"]);
    assert!(unknown.fails().contains("no run or job"), "{unknown:?}");
}

/// A job file is the user's: one whose run id is not one ces makes (it
/// names directories) is refused, as is `ces slurm-job` outside a job.
#[test]
fn a_forged_job_file_is_refused_on_the_node() {
    let w = world("forged", Mode::Root);
    let file = w.sb.dir.path().join("forged.json");
    let plan = format!("sha256:{}", "0".repeat(64));
    let job = serde_json::json!({"options": {}, "command": [w.image, "true"], "run_id": "x/../../y", "plan": plan, "key": "k"});
    std::fs::write(&file, job.to_string()).unwrap();
    let path = file.display().to_string();
    let mut cmd = w.command(&["slurm-job", &path]);
    cmd.env("SLURM_JOB_ID", "42");
    let out = w.sb.run(cmd);
    assert!(out.fails().contains("names no run id ces would make"), "{out:?}");
    let out = ces(&w, &["slurm-job", &path]);
    assert!(out.fails().contains("SLURM_JOB_ID is not set"), "{out:?}");
    assert!(w.outputs_dirs().is_empty());
}

/// Under sudo, sbatch would submit as root (the job and the node's ces
/// root's, not the user's): refused until submissions run as the user.
#[test]
fn under_sudo_a_slurm_run_is_refused() {
    let w = world("sudo", Mode::Sudo);
    let out = ces(&w, &["run", "--runtime", "slurm", &w.image, "true"]);
    assert!(out.fails().contains("--runtime slurm does not take a run under sudo yet"), "{out:?}");
    assert!(!w.sb.audit_records().iter().any(|r| r["event"] == "run_submitted"));
}

/// Out of memory on the node: the run ends as it would here (137), and
/// `--wait` says so.
#[test]
fn out_of_memory_on_the_node_is_137() {
    let w = world("oom", Mode::Root);
    let alloc = "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null && echo ALLOCATED";
    let out = ces(&w, &["run", "--runtime", "slurm", "--wait", "-q", "-m", "0.1", &w.image, "sh", "-c", alloc]);
    assert_eq!(out.code, 137, "{out:?}");
    assert!(!out.stdout.contains("ALLOCATED"), "{out:?}");
    let run = w.sb.audit_records().into_iter().find(|r| r["event"] == "run").unwrap();
    assert_eq!(run["exit"]["oom"], true, "{run}");
}

/// Two users' jobs are kept apart: each store lists and cancels its own.
#[test]
fn two_users_jobs_are_kept_apart() {
    let theirs = world("apart-user", Mode::Rootless);
    let mine = world("apart-root", Mode::Root);
    let out = ces(&theirs, &["run", "--runtime", "slurm", "--json", &theirs.image, "sleep", "300"]);
    let submitted: serde_json::Value = serde_json::from_str(out.ok().lines().next().unwrap()).unwrap();
    let (run_id, job_id) = (submitted["run_id"].as_str().unwrap(), submitted["job_id"].as_str().unwrap());
    until("their run's start on the node", || {
        theirs.sb.audit_records().iter().any(|r| r["event"] == "run_start" && r["run_id"] == run_id).then_some(())
    });
    let listed = ces(&mine, &["jobs"]).ok().to_owned();
    assert!(!listed.contains(run_id) && !listed.contains(&format!(" {job_id} ")), "{listed}");
    let refused = ces(&mine, &["cancel", job_id]);
    assert!(refused.fails().contains("no run or job"), "{refused:?}");
    let listed = ces(&theirs, &["jobs"]).ok().to_owned();
    assert!(listed.lines().any(|l| l.starts_with(run_id)), "{listed}");
    ces(&theirs, &["cancel", run_id]).ok();
    until("their job's end", || {
        let jobs: serde_json::Value = serde_json::from_str(ces(&theirs, &["jobs", "--json"]).ok()).unwrap();
        jobs.as_array().unwrap().iter().any(|j| j["run_id"] == run_id && j["state"] == "ENDED").then_some(())
    });
}

/// `--dry-run` prints the same plan for every backend but its own section
/// (and the run id, which is each plan's own).
#[test]
fn the_plan_is_the_same_for_every_backend() {
    let w = world("plans", Mode::Root);
    let plan = |runtime: &str| {
        let out = ces(&w, &["run", "--dry-run", "--runtime", runtime, "-c", "1", "-m", "2", &w.image, "echo", "hi"]);
        let text = out.ok().to_owned();
        let id = text.lines().next().unwrap().split(' ').nth(3).unwrap().to_owned();
        let body: Vec<String> = text
            .lines()
            .skip(1)
            .take_while(|l| *l != format!("{runtime}:"))
            .filter(|l| !l.starts_with("runtime:"))
            .map(|l| l.replace(&id, "<id>"))
            .collect();
        assert!(text.lines().any(|l| l == format!("{runtime}:")), "{text}");
        body
    };
    let native = plan("native");
    assert!(native.len() > 10, "{native:?}");
    assert_eq!(plan("podman"), native);
    assert_eq!(plan("slurm"), native);
}

/// A root-owned CDI spec directory (outside /tmp, as ces requires) naming
/// the cluster's fake GPUs `example.com/gpu=0` and `=1`; removed on drop.
fn gpu_specs(w: &World) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new().prefix("ces-test-slurm-cdi-").tempdir_in("/var/lib").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = "cdiVersion: \"0.7.0\"\nkind: example.com/gpu\ndevices:\n".to_owned();
    for (i, node) in Cluster::shared().gpus().iter().enumerate() {
        spec.push_str(&format!(
            "  - name: \"{i}\"\n    containerEdits:\n      deviceNodes:\n        - path: /dev/examplegpu{i}\n          hostPath: {}\n",
            node.display()
        ));
    }
    std::fs::write(dir.path().join("example.yaml"), spec).unwrap();
    std::fs::set_permissions(dir.path().join("example.yaml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    w.sb.configure(&format!(
        "[gpu]\nenabled = true\nkind = \"example.com/gpu\"\nspec_dirs = [{:?}]\n",
        dir.path().display().to_string()
    ));
    dir
}

/// `--gpu` becomes `--gres=gpu:N`; on the node the container gets exactly
/// the GPUs Slurm gave the job (SLURM_JOB_GPUS), from the node's CDI specs
/// and under its policy, and the run's record names them.
fn gpus_are_the_ones_slurm_gave(mode: Mode) {
    let w = world("gpus", mode);
    if mode == Mode::Rootless {
        w.sb.configure(&format!("[slurm]\nces = {:?}\n", common::user_bin(env!("CARGO_BIN_EXE_ces"))));
    }
    let _specs = gpu_specs(&w);
    let look = "echo gpus: $(ls /dev | grep examplegpu)";
    let dry = ces(&w, &["run", "--runtime", "slurm", "--dry-run", "--gpu=0,1", &w.image, "true"]);
    assert!(dry.ok().contains(" --gres=gpu:2 "), "{dry:?}");

    let out = ces(&w, &["run", "--runtime", "slurm", "--wait", "-q", "--gpu=0,1", &w.image, "sh", "-c", look]);
    let gpus =
        |out: &common::Run| out.ok().lines().find_map(|l| l.strip_prefix("gpus: ")).unwrap_or_default().to_owned();
    assert_eq!(gpus(&out), "examplegpu0 examplegpu1", "{out:?}\n{}", Cluster::shared().logs());
    // One GPU: the one Slurm picked, and only it.
    let out = ces(&w, &["run", "--runtime", "slurm", "--wait", "-q", "--gpu", &w.image, "sh", "-c", look]);
    let given = gpus(&out);
    assert!(given == "examplegpu0" || given == "examplegpu1", "{out:?}");
    let runs: Vec<serde_json::Value> = w.sb.audit_records().into_iter().filter(|r| r["event"] == "run").collect();
    let names = |run: &serde_json::Value| -> Vec<String> {
        run["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&runs[0]), ["example.com/gpu=0", "example.com/gpu=1"], "{:?}", runs[0]);
    assert_eq!(names(&runs[1]), [format!("example.com/gpu={}", &given["examplegpu".len()..])], "{:?}", runs[1]);
    assert!(runs[1]["job"]["id"].as_str().is_some(), "{:?}", runs[1]);

    // More than the cluster has: sbatch says so, nothing is recorded as submitted.
    let before = w.sb.audit_records().iter().filter(|r| r["event"] == "run_submitted").count();
    let out = ces(&w, &["run", "--runtime", "slurm", "--gpu=0,1,2", &w.image, "true"]);
    assert!(out.fails().contains("sbatch failed: "), "{out:?}");
    let after = w.sb.audit_records().iter().filter(|r| r["event"] == "run_submitted").count();
    assert_eq!(before, after);
    // A GPU named by UUID, or a device, is not a count.
    let out = ces(&w, &["run", "--runtime", "slurm", "--gpu=GPU-0123abcd", &w.image, "true"]);
    assert!(out.fails().contains("a run on a cluster asks for a number of GPUs"), "{out:?}");
}

#[test]
fn gpus_are_the_ones_slurm_gave_as_root() {
    gpus_are_the_ones_slurm_gave(Mode::Root);
}

#[test]
fn gpus_are_the_ones_slurm_gave_rootless() {
    gpus_are_the_ones_slurm_gave(Mode::Rootless);
}

/// On the node, a job whose GPUs are not what the run asks for (a job file
/// or an option file changed, a node's gres.conf) is not run.
#[test]
fn a_job_without_its_gpus_is_not_run() {
    let w = world("gpus-missing", Mode::Root);
    let _specs = gpu_specs(&w);
    let out = ces(&w, &["run", "--runtime", "slurm", "--json", "--gpu", &w.image, "true"]);
    let submitted: serde_json::Value = serde_json::from_str(out.ok().lines().next().unwrap()).unwrap();
    let run_id = submitted["run_id"].as_str().unwrap();
    let file = w.sb.store.join("jobs").join(format!("{run_id}.json"));
    until("the job's end", || {
        w.sb.audit_records().into_iter().find(|r| r["run_id"] == run_id && r["event"] != "run_submitted")
    });
    // The same job file, run by hand in a "job" Slurm gave no GPU.
    let mut cmd = w.command(&["slurm-job", &file.display().to_string()]);
    cmd.env("SLURM_JOB_ID", "4242").env_remove("SLURM_JOB_GPUS");
    let out = w.sb.run(cmd);
    assert!(out.fails().contains("the job asked for 1 GPUs and Slurm gave it \"\""), "{out:?}");
    let mut cmd = w.command(&["slurm-job", &file.display().to_string()]);
    cmd.env("SLURM_JOB_ID", "4243").env("SLURM_JOB_GPUS", "0,1");
    let out = w.sb.run(cmd);
    assert!(out.fails().contains("the job asked for 1 GPUs and Slurm gave it \"0,1\""), "{out:?}");
}

/// `--array`: one sbatch, each task a run of its own (its run id, outputs,
/// records), told its index in CES_ARRAY_TASK_ID; `ces jobs` and `ces logs`
/// show each task. As root and rootless.
fn an_array_is_one_run_per_task(mode: Mode) {
    let w = world("array", mode);
    if mode == Mode::Rootless {
        w.sb.configure(&format!("[slurm]\nces = {:?}\n", common::user_bin(env!("CARGO_BIN_EXE_ces"))));
    }
    let script = "echo task=$CES_ARRAY_TASK_ID; echo $CES_ARRAY_TASK_ID > /safe_outputs/index";
    let args = ["run", "--runtime", "slurm", "--wait", "--json", "--array", "0,2-3%2", &w.image, "sh", "-c", script];
    let out = ces(&w, &args);
    assert_eq!(out.code, 0, "{out:?}\n{}", Cluster::shared().logs());
    let submitted: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "submitted")
        .collect();
    assert_eq!(submitted.len(), 3, "{out:?}");
    for index in [0, 2, 3] {
        assert!(out.stdout.lines().any(|l| l == format!("task={index}")), "{out:?}");
    }
    let array_id = submitted[0]["job_id"].as_str().unwrap().split('_').next().unwrap().to_owned();
    let records = w.sb.audit_records();
    for (task, index) in submitted.iter().zip([0, 2, 3]) {
        let run_id = task["run_id"].as_str().unwrap();
        assert_eq!(task["job_id"], format!("{array_id}_{index}"), "{task}");
        let run = records.iter().find(|r| r["event"] == "run" && r["run_id"] == run_id).expect("the task's run");
        assert_eq!(run["job"]["id"], format!("{array_id}_{index}"), "{run}");
        assert_eq!(run["exit"]["code"], 0, "{run}");
        let outputs = w.home.join(format!("outputs_{run_id}"));
        assert_eq!(std::fs::read_to_string(outputs.join("index")).unwrap(), format!("{index}\n"));
        let logs = ces(&w, &["logs", run_id]).ok().to_owned();
        assert!(logs.lines().any(|l| l == format!("task={index}")), "{logs}");
        assert!(!logs.lines().any(|l| l.starts_with("task=") && l != format!("task={index}")), "{logs}");
    }
    assert_eq!(records.iter().filter(|r| r["event"] == "run_submitted").count(), 3);
    let jobs: serde_json::Value = serde_json::from_str(ces(&w, &["jobs", "--json"]).ok()).unwrap();
    let ended: Vec<&serde_json::Value> = jobs.as_array().unwrap().iter().filter(|j| j["state"] == "ENDED").collect();
    assert_eq!(ended.len(), 3, "{jobs}");
    assert!(ended.iter().all(|j| j["exit_code"] == 0 && j["image"].as_str().unwrap().starts_with("sha256:")), "{jobs}");
}

#[test]
fn an_array_is_one_run_per_task_as_root() {
    an_array_is_one_run_per_task(Mode::Root);
}

#[test]
fn an_array_is_one_run_per_task_rootless() {
    an_array_is_one_run_per_task(Mode::Rootless);
}

#[test]
fn arrays_are_checked_before_anything_is_submitted() {
    let w = world("array-refused", Mode::Root);
    w.sb.configure("[slurm]\nmax_array_tasks = 4\n");
    let refused = |args: &[&str], message: &str| {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[&w.image, "true"]);
        let out = ces(&w, &all);
        assert!(out.fails().contains(message), "{args:?}: {out:?}");
        assert!(out.stderr.contains("hint: "), "{out:?}");
    };
    refused(&["--array", "0-3"], "--array is for runs submitted to Slurm");
    refused(&["--runtime", "slurm", "--array", "3-1"], "invalid --array \"3-1\"");
    refused(&["--runtime", "slurm", "--array", "0-9"], "--array asks for 5 tasks, and at most 4 are allowed");
    assert!(!w.sb.store.join("jobs").exists(), "nothing written");
    // The dry run lists each task's run.
    let out = ces(&w, &["run", "--runtime", "slurm", "--dry-run", "--array", "1-2", &w.image, "true"]);
    let plan = out.ok();
    assert!(plan.contains("--array=1-2: 2 runs:"), "{plan}");
    assert!(plan.contains("  task 1: run ") && plan.contains("  task 2: run "), "{plan}");
    assert!(!w.sb.store.join("jobs").exists(), "a dry run writes nothing");
}
