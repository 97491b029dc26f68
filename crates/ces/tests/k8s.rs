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

/// The test user, with a project: `/safe_data` from `data/<their group>`.
fn world(test: &str, k8s: &str) -> RootlessWorld {
    let w = RootlessWorld::new(&format!("k8s/{test}"));
    let user = common::test_user();
    std::fs::remove_dir(w.home.join("safe_data")).unwrap();
    let data = w.sb.dir.path().join("data");
    std::fs::create_dir_all(data.join(&user.group)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    user.chown(&data.join(&user.group));
    w.sb.configure(&format!(
        "[tre]\nsafe_data_root = {:?}\nproject = {:?}\n\n[k8s]\nregistry = \"registry.tre.example\"\n{k8s}",
        data.display().to_string(),
        user.group
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
    let mut text = yaml
        .replace(spec["id"].as_str().unwrap(), "RUN_ID")
        .replace(spec["image"]["digest"].as_str().unwrap(), "DIGEST")
        .replace(&format!(": {}\n", user.uid), ": UID\n");
    if user.gid != user.uid {
        text = text.replace(&format!(": {}\n", user.gid), ": GID\n");
    } else {
        text = text.replace("runAsGroup: UID", "runAsGroup: GID").replace("fsGroup: UID", "fsGroup: GID");
    }
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
        &["-e", "TOKEN=secret-value", "--mount", "type=tmpfs,destination=/cache,tmpfs-size=64m"],
        &["sh", "-c", "id"],
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
    assert_eq!(job["metadata"]["namespace"], user.group, "the project's namespace");
    assert_eq!(job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"], format!("{}-user-queue", user.group));
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
    assert_eq!(security["runAsGroup"], user.gid, "the project's gid");
    assert_eq!(security["fsGroup"], user.gid);
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
    assert_eq!(container["command"], serde_json::json!(["sh", "-c", "id"]));
    assert_eq!(container["resources"]["requests"], container["resources"]["limits"], "requests equal limits");
    assert_eq!(container["resources"]["limits"]["memory"], "4096Mi", "the default 4 GB");
    assert!(container["env"].as_array().unwrap().iter().any(|v| v["name"] == "TOKEN"));
    let env = container["env"].as_array().unwrap();
    assert!(env.iter().any(|v| v["name"] == "TOKEN" && v["value"] == "(not shown)"), "{env:?}");
    assert!(env.iter().any(|v| v["name"] == "HOME" && v["value"] == "/scratch"), "no home but scratch: {env:?}");

    // The TRE's directories: the project's data read-only, this run's own
    // outputs directory, and nothing of the host's.
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(volumes.iter().all(|v| v.get("hostPath").is_none()), "{volumes:?}");
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap().clone();
    let data = volume("safe-data");
    assert_eq!(data["persistentVolumeClaim"]["claimName"], format!("{}-safe-data", user.group));
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
    assert!(lines.contains(&format!("pvc:{}/{}-safe-data", user.group, user.group)), "{lines}");
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
