//! `--runtime k8s`: the run is planned and checked here exactly as a local
//! run, then becomes a `batch/v1` Job and a NetworkPolicy that denies its
//! pods all traffic, created with `kubectl` and the user's own kubeconfig.
//! The Job runs the image by digest as the user's uid and the project's
//! gid, with no privilege, `/safe_data` from the project's claim (read-only),
//! `/safe_outputs` a per-run directory on the user's claim, and the same
//! limits as requests. The cluster, not ces, runs it: see docs/cluster.md
//! for what this does and does not give.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;
use ces_runtime::{MountKind, RunSpec};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::Prepared;
use crate::commands::audit;
use crate::printer::Printer;
use crate::settings::{K8sConfig, Settings};

/// The variable NVIDIA's container runtime reads for which GPUs to give.
const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// `text` as Kubernetes takes it literally in a command or a variable's
/// value: it expands `$(NAME)` there, and reads `$$` as `$`.
fn literal(text: &str) -> String {
    text.replace('$', "$$")
}

/// The label every object ces makes carries, with the run id.
pub const RUN_LABEL: &str = "ces.tre/run-id";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The container's name in the pod.
const CONTAINER: &str = "run";

/// A failure of the Kubernetes backend.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// What the backend does not take.
    #[error("--runtime k8s does not take {0}")]
    Unsupported(&'static str),
    /// A `[k8s]` name needs the project, and the run has none.
    #[error("[k8s] {setting} names the project, and this run has none (its /safe_data is not a project's)")]
    NoProject {
        /// The setting.
        setting: &'static str,
    },
    /// A name made from `[k8s]` is not one Kubernetes takes.
    #[error("[k8s] {setting} gives {value:?}, which is not a valid {what}")]
    BadName {
        /// The setting.
        setting: &'static str,
        /// What it gave (escaped, cut short).
        value: String,
        /// What it must be.
        what: &'static str,
    },
    /// kubectl failed.
    #[error("kubectl {what} failed: {why}")]
    Kubectl {
        /// What it was asked.
        what: &'static str,
        /// Its last line of error, escaped.
        why: String,
    },
}

/// Hints for a Kubernetes error.
pub fn hints(error: &K8sError) -> Vec<String> {
    match error {
        K8sError::Unsupported(_) => vec!["run it on this machine: --runtime native".to_owned()],
        K8sError::NoProject { .. } => {
            vec![
                "run it from a project (its group or directory), or ask the operator to name the claims in [k8s]"
                    .to_owned(),
            ]
        }
        K8sError::BadName { .. } => {
            vec!["an operator sets the [k8s] names in the system config (docs/cluster.md)".to_owned()]
        }
        K8sError::Kubectl { .. } => vec![
            "check your cluster credentials with: kubectl auth can-i create jobs".to_owned(),
            "kubectl reads your kubeconfig ($KUBECONFIG or ~/.kube/config)".to_owned(),
        ],
    }
}

/// The names a run's objects use, from `[k8s]`.
#[derive(Debug, Clone)]
struct Names {
    namespace: String,
    queue: Option<String>,
    data_claim: String,
    outputs_claim: String,
}

impl Names {
    fn of(config: &K8sConfig, project: Option<&str>, user: &str) -> Result<Names, K8sError> {
        let fill = |setting: &'static str, template: &str, namespace: &str| -> Result<String, K8sError> {
            if template.contains("{project}") && project.is_none() {
                return Err(K8sError::NoProject { setting });
            }
            Ok(template
                .replace("{project}", project.unwrap_or_default())
                .replace("{user}", user)
                .replace("{namespace}", namespace))
        };
        let namespace = fill("namespace", &config.namespace, "")?;
        check_name("namespace", &namespace, 63)?;
        let queue = fill("queue", &config.queue, &namespace)?;
        let queue = if queue.is_empty() {
            None
        } else {
            check_label_value("queue", &queue)?;
            Some(queue)
        };
        let data_claim = fill("data_claim", &config.data_claim, &namespace)?;
        check_name("data_claim", &data_claim, 253)?;
        let outputs_claim = fill("outputs_claim", &config.outputs_claim, &namespace)?;
        check_name("outputs_claim", &outputs_claim, 253)?;
        Ok(Names { namespace, queue, data_claim, outputs_claim })
    }
}

fn bad(setting: &'static str, value: &str, what: &'static str) -> K8sError {
    K8sError::BadName { setting, value: ces_image::quote::escape_message(value, 100), what }
}

/// A DNS-1123 label (`max` 63) or subdomain (`max` 253): lower-case
/// letters, digits, `-` (and `.` in a subdomain), starting and ending with
/// a letter or digit.
fn check_name(setting: &'static str, value: &str, max: usize) -> Result<(), K8sError> {
    let what = if max == 63 { "Kubernetes name (a DNS label)" } else { "Kubernetes name" };
    let ok = !value.is_empty()
        && value.len() <= max
        && value.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
        && (max > 63 || !value.contains('.'));
    if ok { Ok(()) } else { Err(bad(setting, value, what)) }
}

/// A label value: at most 63 letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter or digit.
fn check_label_value(setting: &'static str, value: &str) -> Result<(), K8sError> {
    let b = value.as_bytes();
    let ok = b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok { Ok(()) } else { Err(bad(setting, value, "label value")) }
}

/// The Job's name prefix (`generateName`) from the run's name: a DNS label
/// with room for the five characters Kubernetes adds.
fn job_prefix(name: Option<&str>) -> String {
    let mut prefix: String = name
        .unwrap_or("ces")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    prefix = prefix.trim_matches('-').to_owned();
    if prefix.is_empty() {
        prefix = "ces".to_owned();
    }
    format!("{prefix}-")
}

/// A memory quantity: whole MiB where it is, else bytes.
fn memory_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) { format!("{}Mi", bytes >> 20) } else { bytes.to_string() }
}

/// A CPU quantity in millicores (whole cores as a number).
fn cpu_quantity(cores: f64) -> String {
    let milli = (cores * 1000.0).ceil().max(1.0) as u64;
    if milli.is_multiple_of(1000) { (milli / 1000).to_string() } else { format!("{milli}m") }
}

/// The image as the cluster pulls it: its repository under `[k8s]
/// registry` (or its own registry), by digest.
fn cluster_image(config: &K8sConfig, spec: &RunSpec) -> anyhow::Result<String> {
    let reference: ces_image::ImageReference = spec.image.reference.parse()?;
    let registry = config.registry.as_deref().unwrap_or(reference.registry()).trim_end_matches('/');
    Ok(format!("{registry}/{}@{}", reference.repository(), spec.image.digest))
}

/// What the backend refuses, before anything is made.
fn check(prepared: &Prepared) -> Result<(), K8sError> {
    // kubectl would use root's kubeconfig, and the pod would run as the user
    // on root's word.
    if prepared.invoker.via_sudo {
        return Err(K8sError::Unsupported("a run under sudo: submit it with ces as yourself"));
    }
    let spec = &prepared.spec;
    if spec.process.user.uid == 0 {
        return Err(K8sError::Unsupported("a run as root: pods run as the user who submits them"));
    }
    if !spec.ports.is_empty() {
        return Err(K8sError::Unsupported("published ports (-p): a pod's node is not this host"));
    }
    if spec.process.terminal || spec.process.interactive {
        return Err(K8sError::Unsupported("a terminal or stdin (-t, -i): a Job has neither"));
    }
    if !spec.devices.is_empty() {
        return Err(K8sError::Unsupported("host devices (--device): ask for GPUs with --gpu"));
    }
    if spec.limits.rootfs_writes.is_some() {
        // Not ephemeral-storage: that counts scratch and the logs too.
        return Err(K8sError::Unsupported("[run] max_rootfs_writes: a pod's writes are the cluster's to limit"));
    }
    for mount in &spec.mounts {
        if mount.destination.contains(':') {
            return Err(K8sError::Unsupported("a mount path with a colon (Kubernetes refuses it)"));
        }
        if matches!(mount.kind, MountKind::Bind { .. })
            && !["/safe_data", "/safe_outputs", "/scratch"].contains(&mount.destination.as_str())
        {
            return Err(K8sError::Unsupported("bind mounts (-v): a pod sees no directory of this host"));
        }
    }
    Ok(())
}

/// The run's NetworkPolicy (unless `[k8s] network_policy` is off) and Job. With `show_env`, the environment's
/// values; else `(not shown)` in place of those the user set (a dry run).
fn manifests(
    settings: &Settings,
    prepared: &Prepared,
    show_env: bool,
) -> anyhow::Result<(Names, Option<Value>, Value)> {
    check(prepared)?;
    let config = &settings.k8s;
    let spec = &prepared.spec;
    let names = Names::of(config, prepared.safe_data.project.as_deref(), &prepared.invoker.name)?;
    let run_labels = json!({ MANAGED_BY: "ces", RUN_LABEL: spec.id });

    let policy = settings.k8s.network_policy.then(|| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": format!("ces-deny-{}", spec.id), "namespace": names.namespace, "labels": run_labels },
            // No rule: nothing in, nothing out (DNS included).
            "spec": { "podSelector": { "matchLabels": { RUN_LABEL: spec.id } }, "policyTypes": ["Ingress", "Egress"] },
        })
    });

    let mut job_labels = run_labels.clone();
    if let Some(queue) = &names.queue {
        job_labels[config.queue_label.as_str()] = json!(queue);
    }
    let cpu = cpu_quantity(spec.limits.cpus.unwrap_or(1.0));
    let memory = memory_quantity(spec.limits.memory);
    let mut limits = json!({ "cpu": cpu, "memory": memory });
    if prepared.gpus > 0 {
        limits[config.gpu_resource.as_str()] = json!(prepared.gpus.to_string());
    }
    // NVIDIA's runtime gives a container every GPU of its node when its
    // environment asks (CUDA images set NVIDIA_VISIBLE_DEVICES=all): the
    // device plugin sets it for the GPUs the pod asked for, and a pod that
    // asked for none gets none.
    let mut env: Vec<Value> = spec
        .process
        .env
        .iter()
        .filter(|v| v.name != NVIDIA_VISIBLE_DEVICES)
        .map(|v| {
            let shown = show_env || !prepared.user_env.contains(&v.name);
            json!({ "name": v.name, "value": if shown { literal(v.value()) } else { "(not shown)".to_owned() } })
        })
        .collect();
    if prepared.gpus == 0 {
        env.push(json!({ "name": NVIDIA_VISIBLE_DEVICES, "value": "void" }));
    }
    // As the project's policy says (`[tre] safe_data_mode`): read-only by default.
    let data_read_only =
        !spec.mounts.iter().any(|m| m.destination == "/safe_data" && m.access == ces_runtime::Access::Rw);
    let mut volumes = vec![
        json!({ "name": "safe-data", "persistentVolumeClaim": { "claimName": names.data_claim, "readOnly": data_read_only } }),
        json!({ "name": "safe-outputs", "persistentVolumeClaim": { "claimName": names.outputs_claim } }),
        json!({ "name": "scratch", "emptyDir": {} }),
        json!({ "name": "dev-shm", "emptyDir": { "medium": "Memory", "sizeLimit": memory_quantity(spec.limits.shm_size) } }),
    ];
    let mut mounts = vec![
        json!({ "name": "safe-data", "mountPath": "/safe_data", "readOnly": data_read_only }),
        json!({ "name": "safe-outputs", "mountPath": "/safe_outputs", "subPath": format!("outputs_{}", spec.id) }),
        json!({ "name": "scratch", "mountPath": "/scratch" }),
        json!({ "name": "dev-shm", "mountPath": "/dev/shm" }),
    ];
    for (i, mount) in spec.mounts.iter().enumerate() {
        if let MountKind::Tmpfs { size } = mount.kind {
            let name = format!("tmpfs-{i}");
            let mut dir = json!({ "medium": "Memory" });
            if let Some(size) = size {
                dir["sizeLimit"] = json!(memory_quantity(size));
            }
            volumes.push(json!({ "name": name, "emptyDir": dir }));
            let read_only = mount.access == ces_runtime::Access::Ro;
            mounts.push(json!({ "name": name, "mountPath": mount.destination, "readOnly": read_only }));
        }
    }
    let user = &spec.process.user;
    let deadline = spec.limits.time_limit.map_or(config.active_deadline_seconds, |t| t.as_secs().max(1));
    let mut pod = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": spec.process.stop_timeout.as_secs(),
        "securityContext": {
            "runAsUser": user.uid,
            "runAsGroup": user.gid,
            "fsGroup": user.gid,
            "fsGroupChangePolicy": "OnRootMismatch",
            "runAsNonRoot": true,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "containers": [{
            "name": CONTAINER,
            "image": cluster_image(config, spec)?,
            "imagePullPolicy": "IfNotPresent",
            "command": spec.process.args.iter().map(|a| literal(a)).collect::<Vec<_>>(),
            "workingDir": spec.process.cwd,
            "env": env,
            "resources": { "requests": limits.clone(), "limits": limits },
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "capabilities": { "drop": ["ALL"] },
                "runAsNonRoot": true,
            },
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    if !config.node_selector.is_empty() {
        pod["nodeSelector"] = json!(config.node_selector);
    }
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "generateName": job_prefix(spec.name.as_deref()),
            "namespace": names.namespace,
            "labels": job_labels,
            "annotations": { "ces.tre/image": spec.image.reference, "ces.tre/user": prepared.invoker.name },
        },
        "spec": {
            "backoffLimit": config.backoff_limit,
            "ttlSecondsAfterFinished": config.ttl_seconds_after_finished,
            "activeDeadlineSeconds": deadline,
            "template": { "metadata": { "labels": run_labels }, "spec": pod },
        },
    });
    Ok((names, policy, job))
}

/// The plan as it runs on the cluster: its directories are the claims, not
/// this host's (for the dry run's plan and the audit record).
pub(crate) fn place(settings: &Settings, prepared: &mut Prepared) -> anyhow::Result<()> {
    let names = Names::of(&settings.k8s, prepared.safe_data.project.as_deref(), &prepared.invoker.name)?;
    let id = prepared.spec.id.clone();
    for mount in &mut prepared.spec.mounts {
        let source = match mount.destination.as_str() {
            "/safe_data" => format!("pvc:{}/{}", names.namespace, names.data_claim),
            "/safe_outputs" => format!("pvc:{}/{}/outputs_{id}", names.namespace, names.outputs_claim),
            "/scratch" => "emptyDir".to_owned(),
            _ => continue,
        };
        if let MountKind::Bind { source: old } = &mut mount.kind {
            *old = PathBuf::from(source);
        }
    }
    prepared.spec.image.rootfs =
        ces_image::rootfs::Rootfs::Tree(PathBuf::from(cluster_image(&settings.k8s, &prepared.spec)?));
    // What the Job asks for, as the plan and the audit record show it: a
    // core unless -c says, and the cluster's pids limit (the kubelet's).
    prepared.spec.limits.cpus.get_or_insert(1.0);
    prepared.spec.limits.pids = None;
    Ok(())
}

/// The dry run's backend section: the manifests, as YAML.
pub(crate) fn describe(settings: &Settings, prepared: &Prepared) -> anyhow::Result<Vec<String>> {
    let (_, policy, job) = manifests(settings, prepared, false)?;
    let mut lines = Vec::new();
    for object in policy.into_iter().chain([job]) {
        lines.push("---".to_owned());
        lines.extend(serde_yaml::to_string(&object)?.lines().map(str::to_owned));
    }
    Ok(lines)
}

/// What `<store>/jobs/<run id>.k8s` keeps of a Job.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The namespace.
    pub namespace: String,
    /// The Job's name (generated).
    pub name: String,
    /// The kubeconfig context, if `[k8s]` named one.
    pub context: Option<String>,
    /// The image, by digest, as the cluster pulls it.
    pub image: String,
    /// The API server the Job went to (from the kubeconfig), if known.
    #[serde(default)]
    pub server: Option<String>,
}

impl Record {
    /// Whether the record names what ces would have made (it is the user's
    /// file: its words go to kubectl).
    fn is_sound(&self) -> bool {
        check_name("namespace", &self.namespace, 63).is_ok()
            && check_name("name", &self.name, 63).is_ok()
            && self.context.as_deref().is_none_or(|c| !c.is_empty() && !c.starts_with('-') && c.len() <= 253)
    }
}

/// `kubectl` with the context and namespace.
fn kubectl(config: &K8sConfig, context: Option<&str>, namespace: &str) -> Command {
    let program = match &config.kubectl {
        Some(path) => path.clone(),
        None => super::slurm::program("kubectl"),
    };
    let mut command = Command::new(program);
    if let Some(context) = context {
        command.arg(format!("--context={context}"));
    }
    command.arg(format!("--namespace={namespace}"));
    command
}

/// Runs `command`, with `input` on its stdin; its stdout. What kubectl says
/// on stderr is passed on as it comes (a login plugin's prompt, a warning),
/// and its last line names the failure.
fn output(mut command: Command, what: &'static str, input: Option<Vec<u8>>) -> Result<String, K8sError> {
    let failed = |why: String| K8sError::Kubectl { what, why: ces_image::quote::escape_message(&why, 400) };
    let mut child = command
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run {:?}: {e}", command.get_program())))?;
    // Written beside the reads: kubectl may answer (and end) before it has
    // read it all.
    let writer = match (input, child.stdin.take()) {
        (Some(input), Some(mut stdin)) => Some(std::thread::spawn(move || stdin.write_all(&input))),
        _ => None,
    };
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut last = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
                eprintln!("kubectl: {}", ces_image::quote::escape_message(&line, 400));
                if !line.trim().is_empty() {
                    last = line;
                }
            }
            last
        })
    });
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).map_err(|e| failed(e.to_string()))?;
    }
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    let last = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if !status.success() {
        return Err(failed(if last.is_empty() { status.to_string() } else { last }));
    }
    Ok(stdout.trim().to_owned())
}

/// The API server the kubeconfig's (or `context`'s) cluster names.
fn server(config: &K8sConfig, context: Option<&str>, namespace: &str) -> Option<String> {
    let mut view = kubectl(config, context, namespace);
    view.args(["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"]);
    output(view, "config view", None).ok().filter(|s| !s.is_empty()).map(|s| ces_image::quote::escape_message(&s, 200))
}

/// Creates the run's NetworkPolicy, then its Job, and ties the policy to
/// the Job (deleted with it); with `wait`, waits for it to end, prints its
/// output and returns the container's exit code. `started` is set once
/// the Job exists: from then on, a failure is not a run that never started.
pub(crate) fn submit(
    settings: &Settings,
    printer: &Printer,
    prepared: &Prepared,
    wait: bool,
    json_out: bool,
    started: &mut bool,
) -> anyhow::Result<ExitCode> {
    let (names, policy, job) = manifests(settings, prepared, true)?;
    // What the audit record names: the manifests as a dry run shows them
    // (the environment's values left out).
    let (_, shown_policy, shown_job) = manifests(settings, prepared, false)?;
    let plan = format!("sha256:{:x}", sha2::Sha256::digest(serde_json::to_vec(&(shown_policy, shown_job))?));
    let config = &settings.k8s;
    let context = config.context.as_deref();
    let spec = &prepared.spec;
    let jobs = prepared.store.root().join("jobs");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&jobs)
        .with_context(|| format!("cannot create {}", jobs.display()))?;
    // With --wait, a ^C ends the waiting (the Job goes on: ces cancel ends it).
    ces_runtime::native::unblock_forwarded_signals().context("cannot unblock signals")?;
    let server = server(config, context, &names.namespace);

    // The policy first: the pods are denied all traffic from their start.
    let policy_name = format!("ces-deny-{}", spec.id);
    if let Some(policy) = &policy {
        let mut create = kubectl(config, context, &names.namespace);
        create.args(["create", "-f", "-", "-o", "name"]);
        output(create, "create networkpolicy", Some(serde_json::to_vec(policy)?))?;
    }
    let mut create = kubectl(config, context, &names.namespace);
    create.args(["create", "-f", "-", "-o", "jsonpath={.metadata.name} {.metadata.uid}"]);
    let created = match output(create, "create job", Some(serde_json::to_vec(&job)?)) {
        Ok(created) => created,
        Err(error) => {
            if policy.is_some() {
                let mut delete = kubectl(config, context, &names.namespace);
                delete.args(["delete", &format!("networkpolicy/{policy_name}"), "--wait=false"]);
                output(delete, "delete networkpolicy", None).ok();
            }
            return Err(error.into());
        }
    };
    // From here the Job exists: it is a run, whatever fails next.
    *started = true;
    let (name, uid) = created.split_once(' ').unwrap_or((created.as_str(), ""));
    let name = name.to_owned();
    let record = ces_audit::Job { scheduler: "k8s".to_owned(), id: format!("{}/{name}", names.namespace), node: None };
    let image = cluster_image(config, spec)?;
    let outputs = PathBuf::from(format!("pvc:{}/{}/outputs_{}", names.namespace, names.outputs_claim, spec.id));
    let recorded = audit::record_submitted(
        settings,
        audit::RunStarting {
            spec,
            runtime: "k8s",
            safe_data: &prepared.safe_data,
            provenance: &prepared.provenance,
            outputs: &outputs,
            test: false,
            job: Some(&record),
        },
        &plan,
    );
    if let Err(error) = recorded {
        // Nothing runs that is not recorded: the Job goes again.
        let mut delete = kubectl(config, context, &names.namespace);
        delete.args(["delete", &format!("job/{name}"), "--wait=false"]);
        if policy.is_some() {
            delete.arg(format!("networkpolicy/{policy_name}"));
        }
        output(delete, "delete job", None).ok();
        return Err(error);
    }
    if check_name("name", &name, 63).is_err() {
        anyhow::bail!("kubectl create job printed no job name ({:?})", ces_image::quote::escape_message(&created, 100));
    }
    let owner = json!({ "metadata": { "ownerReferences": [{
        "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
    }] } });
    if policy.is_some() {
        let mut patch = kubectl(config, context, &names.namespace);
        patch.args(["patch", &format!("networkpolicy/{policy_name}"), "--type=merge", "-p", &owner.to_string()]);
        if let Err(error) = output(patch, "patch networkpolicy", None) {
            printer.status(format!("warning: the NetworkPolicy {policy_name} stays after the Job: {error}"));
        }
    }
    let kept = Record {
        namespace: names.namespace.clone(),
        name: name.clone(),
        context: context.map(str::to_owned),
        image,
        server: server.clone(),
    };
    let file = jobs.join(format!("{}.k8s", spec.id));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    out.write_all(&serde_json::to_vec_pretty(&kept)?)?;
    let at = server.map(|s| format!(" on {s}")).unwrap_or_default();
    printer.status(format!("Submitted run {} as Kubernetes job {}/{name}{at}", spec.id, names.namespace));
    if json_out {
        println!("{}", json!({"event": "submitted", "run_id": spec.id, "job_id": record.id}));
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let code = wait_for(config, &kept)?;
    let mut logs = kubectl(config, context, &kept.namespace);
    logs.args(["logs", &format!("job/{}", kept.name), "--container", CONTAINER]);
    // Straight to ces's stdout, as it comes.
    let status = logs.stdin(Stdio::null()).status();
    if !status.is_ok_and(|s| s.success()) {
        printer.status(format!("warning: kubectl logs job/{} failed", kept.name));
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// A Job's state, from its conditions (a Job that never got a pod fails at
/// its deadline with no failed pod) and its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Queued,
    Pending,
    Running,
    Succeeded,
    Failed { deadline: bool },
}

impl State {
    fn word(&self) -> &'static str {
        match self {
            State::Queued => "QUEUED",
            State::Pending => "PENDING",
            State::Running => "RUNNING",
            State::Succeeded => "SUCCEEDED",
            State::Failed { .. } => "FAILED",
        }
    }
}

/// `kubectl get job -o jsonpath=` of what [`state_of`] reads, `|`-separated.
const STATE_PATH: &str = "jsonpath={.status.conditions[?(@.type==\"Complete\")].status}|\
{.status.conditions[?(@.type==\"Failed\")].status}|{.status.conditions[?(@.type==\"Failed\")].reason}|\
{.status.ready}|{.status.active}|{.spec.suspend}";

fn state_of(line: &str) -> State {
    let fields: Vec<&str> = line.split('|').collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or_default().trim();
    let some = |n: &str| n.parse::<u32>().unwrap_or(0) > 0;
    if field(0) == "True" {
        State::Succeeded
    } else if field(1) == "True" {
        State::Failed { deadline: field(2) == "DeadlineExceeded" }
    } else if some(field(3)) {
        State::Running
    } else if field(5) == "true" {
        State::Queued
    } else {
        // Pods not yet scheduled (or not ready) count as active: pending.
        State::Pending
    }
}

/// Waits for the Job to end; the container's exit code (124 at the
/// deadline, as ces's own time limit). A failed look is tried again, for
/// a few minutes, before waiting gives up.
fn wait_for(config: &K8sConfig, job: &Record) -> anyhow::Result<i32> {
    let mut failures = 0;
    let state = loop {
        let mut get = kubectl(config, job.context.as_deref(), &job.namespace);
        get.args(["get", &format!("job/{}", job.name), "--request-timeout=30s", "-o", STATE_PATH]);
        match output(get, "get job", None) {
            Ok(line) => {
                failures = 0;
                if let done @ (State::Succeeded | State::Failed { .. }) = state_of(&line) {
                    break done;
                }
            }
            Err(error) => {
                failures += 1;
                if failures >= 90 {
                    return Err(error.into());
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    let mut pods = kubectl(config, job.context.as_deref(), &job.namespace);
    pods.args([
        "get",
        "pods",
        "-l",
        &format!("job-name={}", job.name),
        "-o",
        &format!(
            "jsonpath={{.items[0].status.containerStatuses[?(@.name==\"{CONTAINER}\")].state.terminated.exitCode}}"
        ),
    ]);
    let code = output(pods, "get pods", None).ok().and_then(|c| c.trim().parse::<i32>().ok());
    Ok(match (state, code) {
        (State::Failed { deadline: true }, _) => 124,
        (_, Some(code)) => code,
        (State::Succeeded, None) => 0,
        // Failed with no container that ended (never started, evicted).
        (_, None) => 1,
    })
}

/// This store's Kubernetes jobs: run id and what was kept (records that
/// name what ces would not have made are left out).
pub(crate) fn records(jobs: &Path) -> Vec<(String, Record)> {
    let Ok(entries) = std::fs::read_dir(jobs) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let run_id = name.strip_suffix(".k8s").filter(|id| ces_runtime::plan::is_run_id(id))?.to_owned();
            let record: Record = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
            record.is_sound().then_some((run_id, record))
        })
        .collect()
}

/// The cluster's state of `job`: `ENDED` when it no longer has it (its
/// time after finishing is up, or it was cancelled).
pub(crate) fn state(config: &K8sConfig, job: &Record) -> String {
    let mut get = kubectl(config, job.context.as_deref(), &job.namespace);
    get.args(["get", &format!("job/{}", job.name), "--ignore-not-found", "--request-timeout=30s", "-o", STATE_PATH]);
    match output(get, "get job", None) {
        Ok(line) if line.is_empty() => "ENDED".to_owned(),
        Ok(line) => state_of(&line).word().to_owned(),
        Err(_) => "UNKNOWN".to_owned(),
    }
}

/// `ces logs` for a Kubernetes job.
pub(crate) fn logs(config: &K8sConfig, job: &Record, follow: bool) -> anyhow::Result<()> {
    let mut logs = kubectl(config, job.context.as_deref(), &job.namespace);
    logs.args(["logs", &format!("job/{}", job.name), "--container", CONTAINER]);
    if follow {
        logs.arg("--follow");
    }
    let status = logs.stdin(Stdio::null()).status().context("cannot run kubectl")?;
    anyhow::ensure!(status.success(), K8sError::Kubectl { what: "logs", why: status.to_string() });
    Ok(())
}

/// `ces cancel` for a Kubernetes job: its pod is deleted first (SIGTERM,
/// then SIGKILL after the stop timeout) and waited for, then the Job, with
/// the NetworkPolicy it owns: the policy outlives the container.
pub(crate) fn cancel(config: &K8sConfig, job: &Record) -> anyhow::Result<()> {
    let mut pods = kubectl(config, job.context.as_deref(), &job.namespace);
    pods.args(["delete", "pods", "-l", &format!("job-name={}", job.name), "--wait=true"]);
    output(pods, "delete pods", None)?;
    let mut delete = kubectl(config, job.context.as_deref(), &job.namespace);
    delete.args(["delete", &format!("job/{}", job.name), "--wait=false"]);
    output(delete, "delete job", None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_from_the_config() {
        let config = K8sConfig::default();
        let names = Names::of(&config, Some("p0123"), "alice").unwrap();
        assert_eq!(names.namespace, "p0123");
        assert_eq!(names.queue.as_deref(), Some("p0123-user-queue"));
        assert_eq!(names.data_claim, "p0123-safe-data");
        assert_eq!(names.outputs_claim, "alice-outputs");
        let e = Names::of(&config, None, "alice").unwrap_err();
        assert_eq!(
            e.to_string(),
            "[k8s] namespace names the project, and this run has none (its /safe_data is not a project's)"
        );
        let e = Names::of(&config, Some("p1"), "Alice_B").unwrap_err();
        assert!(e.to_string().starts_with("[k8s] outputs_claim gives \"Alice_B-outputs\""), "{e}");
        let e = Names::of(&config, Some("a.b"), "alice").unwrap_err();
        assert!(e.to_string().contains("DNS label"), "{e}");
        let fixed = K8sConfig { namespace: "tre".to_owned(), queue: String::new(), ..K8sConfig::default() };
        let names = Names::of(&fixed, Some("p1"), "bob").unwrap();
        assert_eq!((names.namespace.as_str(), names.queue), ("tre", None));
    }

    #[test]
    fn quantities_and_prefixes() {
        assert_eq!(memory_quantity(4 << 30), "4096Mi");
        assert_eq!(memory_quantity(1_000_000_001), "1000000001");
        assert_eq!(cpu_quantity(8.0), "8");
        assert_eq!(cpu_quantity(0.5), "500m");
        assert_eq!(cpu_quantity(0.0001), "1m");
        assert_eq!(job_prefix(None), "ces-");
        assert_eq!(job_prefix(Some("Train_Model.v2")), "train-model-v2-");
        assert_eq!(job_prefix(Some("__")), "ces-");
        assert_eq!(job_prefix(Some(&"x".repeat(128))).len(), 41);
        assert_eq!(state_of("||||1|false"), State::Pending, "active but not ready: not scheduled yet");
        assert_eq!(state_of("|||1|1|false"), State::Running);
        assert_eq!(state_of("|||||true"), State::Queued);
        assert_eq!(state_of("True|||||"), State::Succeeded);
        assert_eq!(state_of("|True|BackoffLimitExceeded|||"), State::Failed { deadline: false });
        assert_eq!(state_of("|True|DeadlineExceeded|||"), State::Failed { deadline: true });
        assert_eq!(literal("echo $HOME $(X) $$"), "echo $$HOME $$(X) $$$$");
    }
}
