//! `--runtime k8s`: a run planned here becomes a NetworkPolicy and a
//! `batch/v1` Job. No Kubernetes API server runs on these machines, so the
//! manifests `--dry-run` prints are checked against the Kubernetes OpenAPI
//! schemas of the oldest and newest versions ces supports (PyPI's
//! kubernetes-validate, strict: no field the API would drop), compared with
//! golden files, and read for what the TRE needs (no network, the user's
//! uid, nothing privileged, the claims). The client side is run with a real
//! kubectl against an address where no cluster listens: nothing is recorded
//! as submitted. The refusals are tried as root, under sudo and rootless.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{RootlessWorld, TEST_USER};

/// The oldest and newest Kubernetes versions ces's manifests are checked for.
const VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

fn validator() -> PathBuf {
    let path = PathBuf::from("/opt/ces-test/k8s-venv/bin/kubernetes-validate");
    assert!(path.exists(), "{} is missing: run scripts/setup --tests", path.display());
    path
}

/// The project group the test user is a member of (not their primary
/// group: the pod's gid must be the project's).
const PROJECT: &str = "ces-k8s-proj";

/// The project's gid (the group made, and the user added, if missing).
fn project_gid() -> u32 {
    let _ = Command::new("groupadd").args(["-f", PROJECT]).status();
    let _ = Command::new("gpasswd").args(["-a", TEST_USER, PROJECT]).stdout(std::process::Stdio::null()).status();
    let out = Command::new("getent").args(["group", PROJECT]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split(':').nth(2).unwrap().trim().parse().unwrap()
}

/// The test user, with a project: `/safe_data` from `data/<project>`.
fn world(test: &str, k8s: &str) -> RootlessWorld {
    project_gid();
    let w = RootlessWorld::new(&format!("k8s/{test}"));
    let user = common::test_user();
    std::fs::remove_dir(w.home.join("safe_data")).unwrap();
    let data = w.sb.dir.path().join("data");
    std::fs::create_dir_all(data.join(PROJECT)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    user.chown(&data.join(PROJECT));
    w.sb.configure(&format!(
        "[tre]\nsafe_data_root = {:?}\nproject = {PROJECT:?}\n\n[k8s]\nregistry = \"registry.tre.example\"\n{k8s}",
        data.display().to_string(),
    ));
    w
}

/// The dry run's plan (JSON) and manifests (YAML).
fn dry_run(w: &RootlessWorld, options: &[&str], command: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec!["run", "--runtime", "k8s", "--dry-run", "--json"];
    args.extend_from_slice(options);
    args.push(&w.image);
    args.extend_from_slice(command);
    let out = w.ces(&args);
    let plan: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    let lines: Vec<String> =
        plan["backend"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect();
    (plan, lines.join("\n") + "\n")
}

/// kubernetes-validate's verdict on `yaml` for `version`, strict. The tool
/// names each object by `metadata.name`, which a Job made with
/// `generateName` has only once created: the name the API server would
/// give is added, as it would (the prefix and five characters).
fn validate(yaml: &str, version: &str) -> (bool, String) {
    let named: Vec<String> = yaml
        .lines()
        .flat_map(|line| match line.strip_prefix("  generateName: ") {
            Some(prefix) => vec![line.to_owned(), format!("  name: {prefix}x7k2q")],
            None => vec![line.to_owned()],
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, named.join("\n") + "\n").unwrap();
    let out = Command::new(validator()).args(["--strict", "-k", version]).arg(&file).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && !text.contains("ERROR"), text)
}

/// `yaml` with what differs between runs and machines named instead.
fn normalised(yaml: &str, plan: &serde_json::Value) -> String {
    let user = common::test_user();
    let spec = &plan["spec"];
    let text = yaml
        .replace(spec["id"].as_str().unwrap(), "RUN_ID")
        .replace(spec["image"]["digest"].as_str().unwrap(), "DIGEST")
        .replace(&format!("runAsUser: {}\n", user.uid), "runAsUser: UID\n")
        .replace(&format!("runAsGroup: {}\n", project_gid()), "runAsGroup: GID\n")
        .replace(&format!("fsGroup: {}\n", project_gid()), "fsGroup: GID\n");
    let reference = spec["image"]["reference"].as_str().unwrap();
    let host = reference.split('/').next().unwrap();
    text.replace(host, "REGISTRY")
}

/// `actual` against the golden file `name` (rewritten with CES_UPDATE_GOLDEN=1).
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("CES_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "the manifests differ from {} (CES_UPDATE_GOLDEN=1 rewrites it)", path.display());
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    yaml.split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(d).unwrap()).unwrap())
        .collect()
}

#[test]
fn the_manifests_are_valid_for_the_oldest_and_newest_kubernetes() {
    let w = world("valid", "");
    let (plan, yaml) =
        dry_run(&w, &["-c", "2", "-m", "3", "--time-limit", "90m", "--name", "Train_v2"], &["python", "train.py"]);
    for version in VERSIONS {
        let (ok, text) = validate(&yaml, version);
        assert!(ok, "Kubernetes {version}: {text}\n{yaml}");
    }
    golden("k8s-run.yaml", &normalised(&yaml, &plan));

    // The check can fail: a field the API does not have, or a wrong type.
    let extra = yaml.replace("restartPolicy: Never", "restartPolicy: Never\n      hostNetwrok: true");
    assert_ne!(extra, yaml);
    let wrong = yaml.replace("backoffLimit: 0", "backoffLimit: none");
    assert_ne!(wrong, yaml);
    for (broken, what) in [(extra, "an unknown field"), (wrong, "a wrong type")] {
        for version in VERSIONS {
            assert!(!validate(&broken, version).0, "{what} passed for {version}");
        }
    }
}

#[test]
fn the_job_runs_as_the_user_with_no_network_and_no_privilege() {
    let w = world("policy", "");
    let user = common::test_user();
    let (plan, yaml) = dry_run(
        &w,
        &[
            "-e",
            "TOKEN=secret-value",
            "-e",
            "NVIDIA_VISIBLE_DEVICES=all",
            "--mount",
            "type=tmpfs,destination=/cache,tmpfs-size=64m",
        ],
        &["sh", "-c", "id; echo $HOME $(id -u)"],
    );
    assert!(!yaml.contains("secret-value"), "a dry run shows no value of the environment:\n{yaml}");
    let docs = documents(&yaml);
    let [policy, job] = &docs[..] else { panic!("two objects: {yaml}") };
    let run_id = plan["spec"]["id"].as_str().unwrap();

    // Nothing in, nothing out, for exactly this run's pods.
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert!(policy["spec"].get("ingress").is_none() && policy["spec"].get("egress").is_none(), "{policy}");
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"]["ces.tre/run-id"], run_id);
    let template = &job["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["ces.tre/run-id"], run_id, "the policy selects the Job's pods");
    assert_eq!(policy["metadata"]["namespace"], job["metadata"]["namespace"]);

    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["namespace"], PROJECT, "the project's namespace");
    assert_eq!(job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"], format!("{PROJECT}-user-queue"));
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 604800);
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 432000, "the default deadline");
    let pod = &template["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["enableServiceLinks"], false);
    assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none() && pod.get("hostIPC").is_none());
    let security = &pod["securityContext"];
    assert_eq!(security["runAsUser"], user.uid);
    assert_ne!(project_gid(), user.gid);
    assert_eq!(security["runAsGroup"], project_gid(), "the project's gid, not the user's own");
    assert_eq!(security["fsGroup"], project_gid());
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["privileged"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let digest = plan["spec"]["image"]["digest"].as_str().unwrap();
    assert_eq!(
        container["image"],
        format!("registry.tre.example/k8s/policy@{digest}"),
        "by digest, from the TRE's registry"
    );
    // Kubernetes would expand $(...) and read $$ as $: the command is the plan's, literally.
    assert_eq!(container["command"], serde_json::json!(["sh", "-c", "id; echo $$HOME $$(id -u)"]));
    assert_eq!(container["resources"]["requests"], container["resources"]["limits"], "requests equal limits");
    assert_eq!(container["resources"]["limits"]["memory"], "4096Mi", "the default 4 GB");
    assert!(container["env"].as_array().unwrap().iter().any(|v| v["name"] == "TOKEN"));
    let env = container["env"].as_array().unwrap();
    assert!(env.iter().any(|v| v["name"] == "TOKEN" && v["value"] == "(not shown)"), "{env:?}");
    assert!(env.iter().any(|v| v["name"] == "HOME" && v["value"] == "/scratch"), "no home but scratch: {env:?}");
    // No GPU asked: none given, whatever the image or the user says.
    let nvidia: Vec<_> = env.iter().filter(|v| v["name"] == "NVIDIA_VISIBLE_DEVICES").collect();
    assert_eq!(nvidia, [&serde_json::json!({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})], "{env:?}");

    // The TRE's directories: the project's data read-only, this run's own
    // outputs directory, and nothing of the host's.
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(volumes.iter().all(|v| v.get("hostPath").is_none()), "{volumes:?}");
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap().clone();
    let data = volume("safe-data");
    assert_eq!(data["persistentVolumeClaim"]["claimName"], format!("{PROJECT}-safe-data"));
    assert_eq!(data["persistentVolumeClaim"]["readOnly"], true);
    assert_eq!(volume("safe-outputs")["persistentVolumeClaim"]["claimName"], format!("{TEST_USER}-outputs"));
    assert_eq!(volume("dev-shm")["emptyDir"]["medium"], "Memory");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| mounts.iter().find(|m| m["mountPath"] == path).unwrap().clone();
    assert_eq!(mount("/safe_data")["readOnly"], true);
    assert_eq!(mount("/safe_outputs")["subPath"], format!("outputs_{run_id}"));
    let cache = mount("/cache");
    assert_eq!(volume(cache["name"].as_str().unwrap())["emptyDir"]["sizeLimit"], "64Mi");

    // The plan names the cluster's places, not this host's.
    let lines = plan["spec"]["mounts"].to_string();
    assert!(lines.contains(&format!("pvc:{PROJECT}/{PROJECT}-safe-data")), "{lines}");
    assert!(!lines.contains(w.sb.dir.path().to_str().unwrap()), "{lines}");
}

#[test]
fn gpus_are_asked_for_by_count_under_the_gpu_policy() {
    let w = world("gpus", "");
    let run = |gpu: &str| w.ces(&["run", "--runtime", "k8s", "--dry-run", gpu, &w.image, "true"]);
    let out = run("--gpu");
    assert!(out.fails().contains("devices (--gpu, --device) are not enabled on this host"), "{out:?}");
    w.sb.configure("[gpu]\nenabled = true\nmax_per_run = 2\n");
    let (_, yaml) = dry_run(&w, &["--gpu=0,1"], &["true"]);
    let job = &documents(&yaml)[1];
    let limits = &job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["nvidia.com/gpu"], "2", "{yaml}");
    let env = job["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(!env.iter().any(|v| v["name"] == "NVIDIA_VISIBLE_DEVICES"), "the device plugin's: {env:?}");
    for version in VERSIONS {
        let (ok, text) = validate(&yaml, version);
        assert!(ok, "{version}: {text}");
    }
    let (_, yaml) = dry_run(&w, &["--gpu"], &["true"]);
    assert_eq!(
        documents(&yaml)[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    let out = run("--gpu=0,1,2");
    assert!(out.fails().contains("3 devices asked for, and this host allows at most 2 per run"), "{out:?}");
    let out = run("--gpu=GPU-0123abcd");
    assert!(out.fails().contains("a run on a cluster asks for a number of GPUs"), "{out:?}");
    assert!(out.stderr.contains("hint: --gpu asks the scheduler for one GPU"), "{out:?}");
}

#[test]
fn what_a_job_cannot_be_is_refused_before_anything_is_made() {
    let w = world("refused", "");
    let refused = |options: &[&str], message: &str| {
        let mut args = vec!["run", "--runtime", "k8s"];
        args.extend_from_slice(options);
        args.extend_from_slice(&[&w.image, "true"]);
        let out = w.ces(&args);
        assert!(out.fails().contains(message), "{options:?}: {out:?}");
        assert!(out.stderr.contains("hint: "), "{out:?}");
    };
    refused(&["-p", "8080:8080"], "--runtime k8s does not take published ports");
    w.sb.configure(&format!("[run]\nbind_roots = [{:?}]\n", w.home.display().to_string()));
    refused(&["--volume", &format!("{}:/host", w.home.display())], "does not take bind mounts");
    refused(&["--device", "nvidia.com/gpu=0"], "asks for a number of GPUs");
    // No record of a submission, and no job file.
    assert!(!w.sb.store.join("jobs").exists());
    let audit = std::fs::read_to_string(w.sb.store.join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains("run_submitted"), "{audit}");

    // A name the config makes that Kubernetes would not take.
    w.sb.configure("");
    let config =
        std::fs::read_to_string(&w.sb.config).unwrap().replace("[k8s]\n", "[k8s]\nnamespace = \"TRE_{project}\"\n");
    std::fs::write(&w.sb.config, config).unwrap();
    refused(&[], "[k8s] namespace gives \"TRE_");
}

#[test]
fn root_and_sudo_are_refused() {
    common::require_root("runs ces as root and under sudo");
    let w = common::World::new("k8s/root-refused-root", common::Mode::Root);
    let out = w.ces(&["run", "--runtime", "k8s", &w.image, "true"]);
    assert!(out.fails().contains("--runtime k8s does not take a run as root"), "{out:?}");
    let w = common::World::new("k8s/root-refused-sudo", common::Mode::Sudo);
    let out = w.ces(&["run", "--runtime", "k8s", &w.image, "true"]);
    assert!(out.fails().contains("--runtime k8s does not take a run under sudo"), "{out:?}");
}

#[test]
fn a_cluster_that_cannot_be_reached_leaves_nothing_recorded() {
    let w = world("unreachable", "");
    // A kubeconfig of the user's naming a port where nothing listens.
    let port = common::free_port();
    let kubeconfig = w.home.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let user = common::test_user();
    user.chown(&kubeconfig);
    let mut cmd = w.command(&["run", "--runtime", "k8s", &w.image, "true"]);
    cmd.env("KUBECONFIG", &kubeconfig);
    let out = w.sb.run(cmd);
    let stderr = out.fails();
    assert!(stderr.contains("error: kubectl create networkpolicy failed: "), "{out:?}");
    assert!(stderr.contains("hint: check your cluster credentials"), "{out:?}");
    assert!(std::fs::read_dir(w.sb.store.join("jobs")).map(|d| d.count()).unwrap_or(0) == 0, "no job kept");
    let audit = std::fs::read_to_string(w.sb.store.join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains("run_submitted"), "{audit}");
    assert!(audit.contains("run_not_started"), "the refusal is recorded: {audit}");
    // ces jobs has nothing to show.
    let out = w.ces(&["jobs", "--json"]);
    assert_eq!(out.ok().trim(), "[]");
}

/// A stand-in for kubectl (a shell script, not a cluster): it logs each
/// call, keeps what it is sent, and answers as kubectl does. It shows what
/// ces asks of kubectl, in which order, and what it does with the answers.
const STAND_IN: &str = r#"#!/bin/sh
d=$(dirname "$0")
echo "$*" >> "$d/calls"
case "$*" in
  *"config view"*) echo "https://cluster.example:6443" ;;
  *"create -f - -o name"*) cat > "$d/policy.json"; echo "networkpolicy.networking.k8s.io/x" ;;
  *"create -f - -o jsonpath"*)
    cat > "$d/job.json"
    if [ -e "$d/refuse" ]; then echo 'Error from server (Forbidden): jobs.batch is forbidden' >&2; exit 1; fi
    printf 'train-x7k2q 0a1b2c3d-0000-4000-8000-000000000000' ;;
  *"patch "*) echo patched ;;
  *"get job/"*) cat "$d/state" ;;
  *"get pods"*) printf 3 ;;
  *"logs job/"*) echo "hello from the pod" ;;
  *"delete "*) echo deleted ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#;

#[test]
fn the_client_side_with_a_stand_in_kubectl() {
    let w = world("client", "");
    let user = common::test_user();
    let dir = w.sb.dir.path().join("kubectl");
    std::fs::create_dir(&dir).unwrap();
    user.chown(&dir);
    let stub = dir.join("kubectl");
    std::fs::write(&stub, STAND_IN).unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.join("state");
    std::fs::write(&state, "True|||||").unwrap();
    user.chown(&state);
    // The last table of the config is [k8s].
    w.sb.configure(&format!("kubectl = {:?}\n", stub.display().to_string()));
    let calls = || std::fs::read_to_string(dir.join("calls")).unwrap_or_default();

    let out = w.ces(&["run", "--runtime", "k8s", "--wait", "-e", "TOKEN=s3cret", &w.image, "sh", "-c", "echo $HOME"]);
    assert_eq!(out.code, 3, "the container's exit code: {out:?}\n{}", calls());
    assert!(out.stdout.lines().any(|l| l == "hello from the pod"), "{out:?}");
    assert!(
        out.stderr.contains("as Kubernetes job ces-k8s-proj/train-x7k2q on https://cluster.example:6443"),
        "{out:?}"
    );
    let log = calls();
    let lines: Vec<&str> = log.lines().collect();
    let expected = [
        "config view",
        "create -f - -o name",
        "create -f - -o jsonpath",
        "patch networkpolicy/ces-deny-",
        "get job/train-x7k2q",
    ];
    assert!(lines.len() >= expected.len(), "{log}");
    for (line, what) in lines.iter().zip(expected) {
        assert!(line.contains(what), "{what:?} expected, {line:?} called:\n{log}");
    }
    // What the cluster was sent: the policy before the Job, the Job valid,
    // with the real values of the environment and the command literal.
    let policy: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("policy.json")).unwrap()).unwrap();
    assert_eq!(policy["kind"], "NetworkPolicy");
    let job: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert!(container["env"].as_array().unwrap().iter().any(|v| v["name"] == "TOKEN" && v["value"] == "s3cret"));
    assert_eq!(container["command"], serde_json::json!(["sh", "-c", "echo $$HOME"]));
    let yaml = format!("---\n{}---\n{}", serde_yaml::to_string(&policy).unwrap(), serde_yaml::to_string(&job).unwrap());
    for version in VERSIONS {
        let (ok, text) = validate(&yaml, version);
        assert!(ok, "{version}: {text}");
    }
    let records = w.sb.audit_records();
    let submitted = records.iter().find(|r| r["event"] == "run_submitted").expect("the submission");
    assert_eq!(submitted["job"]["id"], "ces-k8s-proj/train-x7k2q");
    assert_eq!(submitted["job"]["scheduler"], "k8s");
    let run_id = submitted["run_id"].as_str().unwrap().to_owned();
    assert!(calls().contains(&format!("patch networkpolicy/ces-deny-{run_id} ")), "{}", calls());

    // ces jobs, then ces cancel: the pod first, waited for, then the Job.
    let jobs: serde_json::Value = serde_json::from_str(w.ces(&["jobs", "--json"]).ok()).unwrap();
    assert_eq!(jobs[0]["state"], "SUCCEEDED", "{jobs}");
    assert_eq!(jobs[0]["job_id"], "ces-k8s-proj/train-x7k2q");
    std::fs::write(&state, "|||1|1|false").unwrap();
    let jobs: serde_json::Value = serde_json::from_str(w.ces(&["jobs", "--json"]).ok()).unwrap();
    assert_eq!(jobs[0]["state"], "RUNNING", "{jobs}");
    w.ces(&["cancel", &run_id]).ok();
    let log = calls();
    let pods = log.find("delete pods -l job-name=train-x7k2q --wait=true").expect("the pods deleted");
    let job_deleted = log.find("delete job/train-x7k2q").expect("the job deleted");
    assert!(pods < job_deleted, "{log}");

    // A Job the cluster refuses: its policy goes again, nothing is kept.
    std::fs::write(dir.join("refuse"), "").unwrap();
    let out = w.ces(&["run", "--runtime", "k8s", &w.image, "true"]);
    assert!(out.fails().contains("kubectl create job failed: Error from server (Forbidden)"), "{out:?}");
    assert!(calls().lines().last().unwrap().contains("delete networkpolicy/ces-deny-"), "{}", calls());
    let records = w.sb.audit_records();
    assert_eq!(records.iter().filter(|r| r["event"] == "run_submitted").count(), 1);
    assert_eq!(records.last().unwrap()["event"], "run_not_started");
    let kept = std::fs::read_dir(w.sb.store.join("jobs")).unwrap().count();
    assert_eq!(kept, 1, "only the first run's record");

    // A record of the store's that names what ces would not have made
    // (its words go to kubectl) is not used.
    let forged = w.sb.store.join("jobs").join("20261206-000000-0000beef.k8s");
    let record = serde_json::json!({"namespace": "kube-system", "name": "--all", "context": null, "image": "x"});
    std::fs::write(&forged, record.to_string()).unwrap();
    let before = calls().lines().count();
    let jobs: serde_json::Value = serde_json::from_str(w.ces(&["jobs", "--json"]).ok()).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    let refused = w.ces(&["cancel", "20261206-000000-0000beef"]);
    assert!(refused.fails().contains("no run or job"), "{refused:?}");
    assert!(!calls().lines().skip(before).any(|l| l.contains("--all")), "{}", calls());
}

/// Evaluates every rule of the example ValidatingAdmissionPolicy (CEL, with
/// PyPI's cel-python) on the pod in argv[2]; prints the rules it breaks.
const CEL_CHECK: &str = r#"
import json, sys, yaml, celpy
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
pod = celpy.json_to_cel(json.load(open(sys.argv[2])))
env = celpy.Environment()
for rule in policy["spec"]["validations"]:
    if not env.program(env.compile(rule["expression"])).evaluate({"object": pod}):
        print(rule["message"])
"#;

/// The rules of the example policy `pod` breaks.
fn broken_rules(pod: &serde_json::Value) -> Vec<String> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/k8s-project-namespace.yaml");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pod.json"), pod.to_string()).unwrap();
    let python = validator().with_file_name("python");
    let out =
        Command::new(python).args(["-c", CEL_CHECK]).arg(&example).arg(dir.path().join("pod.json")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// The operators' side (docs/examples/k8s-project-namespace.yaml): valid
/// for Kubernetes 1.30 and 1.37, and its admission rules let ces's pods
/// through and stop pods that are not as ces makes them.
#[test]
fn the_example_cluster_policy_is_valid_and_admits_only_pods_like_ces_makes() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/k8s-project-namespace.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    for version in ["1.30.0", "1.37.0"] {
        let (ok, out) = validate(&text, version);
        assert!(ok, "{version}: {out}");
    }
    let w = world("admission", "");
    let (_, yaml) = dry_run(&w, &["-c", "2"], &["true"]);
    let template = documents(&yaml)[1]["spec"]["template"].clone();
    let pod = serde_json::json!({ "metadata": template["metadata"], "spec": template["spec"] });
    assert_eq!(broken_rules(&pod), Vec::<String>::new(), "ces's pod is admitted");
    let changed = |pointer: &str, value: serde_json::Value| {
        let mut pod = pod.clone();
        match pod.pointer_mut(pointer) {
            Some(slot) => *slot = value,
            None => {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                pod.pointer_mut(parent).unwrap()[key] = value;
            }
        }
        broken_rules(&pod)
    };
    let cases = [
        ("/spec/hostNetwork", serde_json::json!(true), "no host network"),
        ("/spec/securityContext/runAsUser", serde_json::json!(0), "pods run as a user's uid, never root"),
        (
            "/spec/containers/0/securityContext/privileged",
            serde_json::json!(true),
            "no privilege: allowPrivilegeEscalation false, every capability dropped",
        ),
        (
            "/spec/containers/0/image",
            serde_json::json!("docker.io/library/busybox:latest"),
            "images from the TRE's registry, by digest",
        ),
        ("/spec/volumes/0", serde_json::json!({"name": "host", "hostPath": {"path": "/"}}), "no host paths"),
        ("/metadata/labels", serde_json::json!({}), "pods are ces runs"),
        ("/spec/automountServiceAccountToken", serde_json::json!(true), "no service account token"),
    ];
    for (pointer, value, rule) in cases {
        assert_eq!(changed(pointer, value), [rule], "{pointer}");
    }
}
