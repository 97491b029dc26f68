//! `--runtime slurm`: the run is planned and checked here exactly as a local
//! run, then submitted with `sbatch` as a job that runs ces on the node
//! (`ces slurm-job FILE`) with the same options and the image by digest. The
//! node plans the run again, under the same run id, and refuses it unless
//! its plan is the one submitted (the digest of the plan, the environment's
//! values and the config): a config, an option file or an image changed in
//! between stops it there. See docs/cluster.md.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::Context as _;
use ces_runtime::RunSpec;
use sha2::Digest as _;

use super::Prepared;
use crate::commands::audit;
use crate::printer::Printer;
use crate::run_options::RunOptions;
use crate::settings::Settings;

/// What a job runs: the command line's options (option files are read
/// again on the node), the image by digest and the command, the run id,
/// and the plan's digest.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct JobFile {
    /// The command line's options (`--runtime` left out: the node runs natively).
    pub options: RunOptions,
    /// The image, by digest, then the command.
    pub command: Vec<String>,
    /// The run id the run has on the node.
    pub run_id: String,
    /// See [`plan_digest`].
    pub plan: String,
    /// The digest's key: random, kept here only (the job file is the
    /// user's, mode 0600), so that the audit log's digest cannot be used to
    /// test guesses of the environment's values.
    pub key: String,
    /// A job array's tasks (`--array`), each a run of its own; empty for a
    /// single run (then `run_id` and `plan` are its).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub array: Vec<ArrayTask>,
}

/// One task of a job array: its index, its run, its plan's digest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArrayTask {
    /// `SLURM_ARRAY_TASK_ID`.
    pub index: u32,
    /// The task's run id.
    pub run_id: String,
    /// Its plan's digest (see [`plan_digest`]).
    pub plan: String,
}

/// The variable that tells an array task's container its index.
pub const ARRAY_VAR: &str = "CES_ARRAY_TASK_ID";

/// The largest index Slurm takes in an array (its absolute limit; a
/// cluster's `MaxArraySize` is usually lower, and sbatch says so).
const MAX_ARRAY_INDEX: u32 = 4_000_000;

/// A failure of the Slurm backend.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// The node planned another run than the one submitted.
    #[error("the run's plan changed since it was submitted ({submitted} then, {now} now): not run")]
    PlanChanged {
        /// The submitted plan's digest.
        submitted: String,
        /// The node's.
        now: String,
    },
    /// `ces slurm-job` outside a job.
    #[error("ces slurm-job runs a submitted run inside its Slurm job (SLURM_JOB_ID is not set)")]
    NotInJob,
    /// What the backend does not do (yet).
    #[error("--runtime slurm does not take {0}")]
    Unsupported(&'static str),
    /// `sbatch` failed.
    #[error("sbatch failed: {0}")]
    Sbatch(String),
    /// `--array` that is not a list of indexes.
    #[error(
        "invalid --array {0:?}: give indexes as Slurm does (0-9, 1,3,5, 0-99:10, with %N to run at most N at once)"
    )]
    BadArray(String),
    /// More tasks than `[slurm] max_array_tasks`.
    #[error("--array asks for {asked} tasks, and at most {max} are allowed")]
    TooManyTasks {
        /// How many.
        asked: usize,
        /// The most.
        max: usize,
    },
    /// `--array` for a run that is not submitted to Slurm.
    #[error("--array is for runs submitted to Slurm (--runtime slurm)")]
    ArrayWithoutSlurm,
    /// The job's GPUs are not the ones it asked for.
    #[error("the job asked for {asked} GPUs and Slurm gave it {given:?} (SLURM_JOB_GPUS): not run")]
    GpusNotGiven {
        /// How many the run asks for.
        asked: usize,
        /// What Slurm said (escaped, cut short).
        given: String,
    },
}

/// Hints for a Slurm error.
pub fn hints(error: &SlurmError) -> Vec<String> {
    match error {
        SlurmError::PlanChanged { .. } => vec![
            "the config, an option or env file, or the image changed after `ces run --runtime slurm`: submit it again"
                .to_owned(),
        ],
        SlurmError::NotInJob => vec!["submit runs with: ces run --runtime slurm ...".to_owned()],
        SlurmError::Unsupported(_) => vec!["run it on this machine: --runtime native".to_owned()],
        SlurmError::Sbatch(_) => {
            vec!["check the cluster with: sinfo; the operator's [slurm] settings name the partition".to_owned()]
        }
        SlurmError::BadArray(_) => vec!["e.g. --array 0-9%2: ten tasks, two at a time".to_owned()],
        SlurmError::TooManyTasks { .. } => {
            vec!["submit fewer tasks, or ask the operator ([slurm] max_array_tasks)".to_owned()]
        }
        SlurmError::ArrayWithoutSlurm => vec!["add --runtime slurm (or use ces-run slurm)".to_owned()],
        SlurmError::GpusNotGiven { .. } => vec![
            "an operator checks the nodes' gres.conf and [slurm] gres; an option file changed since submission would do it too".to_owned(),
        ],
    }
}

/// The digest the node checks: the plan, the environment's values (which
/// the plan does not show) and the config it was made under.
pub fn plan_digest(settings: &Settings, spec: &RunSpec, key: &str) -> anyhow::Result<String> {
    let mut hash = sha2::Sha256::new();
    hash.update(key.as_bytes());
    hash.update([0]);
    // The image by digest: the name the store finds it under may be another
    // of its tags.
    let mut spec = spec.clone();
    spec.image.reference.clear();
    // How the store keeps the image (a tree, its layers) is the store's
    // business: the digest pins what the image holds.
    spec.image.rootfs = ces_image::rootfs::Rootfs::Tree(std::path::PathBuf::new());
    hash.update(serde_json::to_vec(&spec)?);
    for var in &spec.process.env {
        hash.update(var.to_env_string().as_bytes());
        hash.update([0]);
    }
    if let Some(config) = &settings.config_path {
        hash.update(std::fs::read(config).with_context(|| format!("cannot read {}", config.display()))?);
    }
    Ok(format!("sha256:{:x}", hash.finalize()))
}

/// What a job asks beyond its container's limits, for ces on the node.
const NODE_MEMORY_MIB: u64 = 256;
const NODE_SECONDS: u64 = 300;

/// `sbatch`'s arguments for `spec` (before the script): name, output, the
/// limits, the operator's partition, account and QOS.
fn sbatch_args(settings: &Settings, prepared: &Prepared, output: &Path, wait: bool) -> Vec<String> {
    let spec = &prepared.spec;
    // Not the run id: `squeue` shows every user's job names.
    let name = spec.name.clone().unwrap_or_else(|| "ces".to_owned());
    let mut args = vec![
        "--parsable".to_owned(),
        // A requeued job would be the same run again (its outputs exist).
        "--no-requeue".to_owned(),
        format!("--job-name={name}"),
        format!("--output={}", output.display()),
    ];
    let cpus = spec.limits.cpus.map_or(1, |c| c.ceil().max(1.0) as u64);
    args.push(format!("--cpus-per-task={cpus}"));
    // The container's limit, and room for ces itself on the node.
    args.push(format!("--mem={}M", spec.limits.memory.div_ceil(1 << 20) + NODE_MEMORY_MIB));
    if let Some(limit) = spec.limits.time_limit {
        // The container's limit, then its stop timeout, then ces's sealing
        // of the outputs: Slurm's own end comes after ces's.
        let seconds = limit.as_secs() + spec.process.stop_timeout.as_secs() + NODE_SECONDS;
        args.push(format!("--time={}", seconds.div_ceil(60).max(1)));
    }
    let slurm = &settings.slurm;
    if prepared.gpus > 0 {
        args.push(format!("--gres={}:{}", slurm.gres, prepared.gpus));
    }
    for (flag, value) in [("partition", &slurm.partition), ("account", &slurm.account), ("qos", &slurm.qos)] {
        if let Some(value) = value {
            args.push(format!("--{flag}={value}"));
        }
    }
    if wait {
        args.push("--wait".to_owned());
    }
    args
}

/// What the backend refuses, before anything is written.
fn check(prepared: &Prepared) -> Result<(), SlurmError> {
    // Under sudo, sbatch would submit as root: the job, and the node's ces,
    // would be root's, not the user's.
    if prepared.invoker.via_sudo {
        return Err(SlurmError::Unsupported("a run under sudo yet: submit it with ces as yourself (rootless)"));
    }
    if !prepared.spec.ports.is_empty() {
        return Err(SlurmError::Unsupported("published ports (-p): a job's node is not this host"));
    }
    if !prepared.spec.devices.is_empty() {
        return Err(SlurmError::Unsupported("host devices (--device): ask for GPUs with --gpu"));
    }
    if prepared.spec.process.terminal || prepared.spec.process.interactive {
        return Err(SlurmError::Unsupported("a terminal or stdin (-t, -i): a batch job has neither"));
    }
    Ok(())
}

/// The dry run's backend section: the `sbatch` command.
pub(crate) fn describe(settings: &Settings, prepared: &Prepared, wait: bool) -> anyhow::Result<Vec<String>> {
    check(prepared)?;
    let jobs = jobs_dir(prepared);
    let mut words = vec![program("sbatch").display().to_string()];
    words.extend(sbatch_args(settings, prepared, &jobs.join(format!("{}.out", prepared.spec.id)), wait));
    words.push(jobs.join(format!("{}.sh", prepared.spec.id)).display().to_string());
    Ok(vec![words.iter().map(|w| ces_runtime::podman::shell_quote(w)).collect::<Vec<_>>().join(" ")])
}

fn jobs_dir(prepared: &Prepared) -> PathBuf {
    prepared.store.root().join("jobs")
}

/// Submits the planned run; with `wait`, waits for the job, prints its
/// output and returns its exit code.
pub(crate) fn submit(
    settings: &Settings,
    printer: &Printer,
    prepared: &Prepared,
    command_line: &RunOptions,
    wait: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    check(prepared)?;
    let spec = &prepared.spec;
    let key = random_key()?;
    let plan = plan_digest(settings, spec, &key)?;
    let jobs = jobs_dir(prepared);
    let job = job_file(prepared, command_line, key, plan.clone(), Vec::new());
    let script = write_job(settings, &jobs, &job)?;
    let output = jobs.join(format!("{}.out", spec.id));
    let (child, job_id) = sbatch(sbatch_args(settings, prepared, &output, wait), &script)?;
    let record = ces_audit::Job { scheduler: "slurm".to_owned(), id: job_id.clone(), node: None };
    record_submitted(settings, &Task::of(prepared, plan.clone()), &record)?;
    write_new(&jobs.join(format!("{}.job", spec.id)), job_id.as_bytes(), 0o600)?;
    printer.status(format!("Submitted run {} as Slurm job {job_id}", spec.id));
    if json {
        let line = serde_json::json!({"event": "submitted", "run_id": spec.id, "job_id": job_id, "plan": plan});
        println!("{line}");
    }
    finish(child, wait, &[output])
}

/// What a task (or a single run) records of its plan at submission.
struct Task {
    index: Option<u32>,
    spec: RunSpec,
    safe_data: ces_runtime::plan::SafeData,
    provenance: ces_image::Provenance,
    outputs: PathBuf,
    plan: String,
}

impl Task {
    fn of(prepared: &Prepared, plan: String) -> Task {
        let mut spec = prepared.spec.clone();
        // Held open for the run on this host: none runs here.
        spec.pins = ces_runtime::Pins::default();
        Task {
            index: None,
            spec,
            safe_data: prepared.safe_data.clone(),
            provenance: prepared.provenance.clone(),
            outputs: prepared.dirs.outputs.clone(),
            plan,
        }
    }
}

fn record_submitted(settings: &Settings, task: &Task, job: &ces_audit::Job) -> anyhow::Result<()> {
    let start = audit::RunStarting {
        spec: &task.spec,
        runtime: "slurm",
        safe_data: &task.safe_data,
        provenance: &task.provenance,
        outputs: &task.outputs,
        test: false,
        job: Some(job),
    };
    audit::record_submitted(settings, start, &task.plan)
}

/// The job file for `prepared`'s run (or, with `array`, for an array whose
/// first task it is).
fn job_file(
    prepared: &Prepared,
    command_line: &RunOptions,
    key: String,
    plan: String,
    array: Vec<ArrayTask>,
) -> JobFile {
    let mut options = command_line.clone();
    options.runtime = None;
    options.wait = false;
    options.array = None;
    let mut command = vec![prepared.spec.image.digest.to_string()];
    command.extend(prepared.args.iter().cloned());
    JobFile { options, command, run_id: prepared.spec.id.clone(), plan, key, array }
}

/// Writes the job file and the job's script in `jobs`; the script's path.
fn write_job(settings: &Settings, jobs: &Path, job: &JobFile) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(jobs)
        .with_context(|| format!("cannot create {}", jobs.display()))?;
    let file = jobs.join(format!("{}.json", job.run_id));
    write_new(&file, &serde_json::to_vec_pretty(job)?, 0o600)?;
    let ces = match &settings.slurm.ces {
        Some(ces) => ces.clone(),
        // `ces`, beside this program (which may be `ces-run`).
        None => std::env::current_exe().context("cannot tell where this ces is")?.with_file_name("ces"),
    };
    let script = jobs.join(format!("{}.sh", job.run_id));
    let quote = |p: &Path| ces_runtime::podman::shell_quote(&p.display().to_string());
    // The same config on the node (the digest covers it).
    let config = settings.config_path.as_deref().map(|c| format!(" --config {}", quote(c))).unwrap_or_default();
    let line = format!("#!/bin/sh\nexec {}{config} slurm-job {}\n", quote(&ces), quote(&file));
    write_new(&script, line.as_bytes(), 0o700)?;
    Ok(script)
}

/// Runs `sbatch ARGS SCRIPT`: the child (still running with `--wait`) and
/// the job id it printed.
fn sbatch(args: Vec<String>, script: &Path) -> anyhow::Result<(std::process::Child, String)> {
    let mut sbatch = std::process::Command::new(program("sbatch"));
    // The job gets the submitter's environment (sbatch's default), but no
    // registry token, and sbatch takes no option of the user's from it
    // (`SBATCH_PARTITION`, `SBATCH_GRES`...): the operator's [slurm] decides.
    sbatch.env_remove("CES_REGISTRY_TOKEN").env_remove("CES_REGISTRY_USER");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("SBATCH_")) {
            sbatch.env_remove(name);
        }
    }
    // With --wait, a ^C ends this ces and sbatch (the job goes on).
    ces_runtime::native::unblock_forwarded_signals().context("cannot unblock signals")?;
    let mut child = sbatch
        .args(args)
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SlurmError::Sbatch(format!("cannot run sbatch: {e}")))?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        BufReader::new(stdout).read_line(&mut line).ok();
    }
    let job_id = line.trim().split(';').next().unwrap_or_default().to_owned();
    if job_id.is_empty() || !job_id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        let status = child.wait();
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut stderr).ok();
        }
        let why = stderr.lines().last().unwrap_or("no job id").to_owned();
        let why = ces_image::quote::escape_message(&format!("{why} ({status:?})"), 400);
        return Err(SlurmError::Sbatch(why).into());
    }
    Ok((child, job_id))
}

/// Ends a submission: without `wait`, sbatch's status; with it, the job's
/// `outputs` printed, then its exit code.
fn finish(mut child: std::process::Child, wait: bool, outputs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let status = child.wait().context("sbatch")?;
    if !wait {
        return Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::from(crate::diagnostics::EXIT_ERROR) });
    }
    // The job's output (the container's, and the node's ces's), then its code.
    let mut out = std::io::stdout().lock();
    for output in outputs {
        if let Ok(mut file) = std::fs::File::open(output) {
            std::io::copy(&mut file, &mut out)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)))
}

/// `--array SPEC`: the indexes (sorted, once each) and the most to run at
/// once (`%N`), as Slurm reads them: `0-9`, `1,3,5`, `0-99:10`, `0-9%2`.
pub(crate) fn parse_array(spec: &str, max_tasks: usize) -> Result<(Vec<u32>, Option<u32>), SlurmError> {
    let bad = || SlurmError::BadArray(ces_image::quote::escape_message(spec, 100));
    let number = |s: &str| -> Result<u32, SlurmError> {
        let n: u32 = (!s.is_empty() && s.len() <= 7 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
            .ok_or_else(bad)?;
        if n > MAX_ARRAY_INDEX { Err(bad()) } else { Ok(n) }
    };
    let (list, throttle) = match spec.split_once('%') {
        Some((list, n)) => (list, Some(number(n)?).filter(|n| *n > 0).ok_or_else(bad).map(Some)?),
        None => (spec, None),
    };
    let mut indexes = std::collections::BTreeSet::new();
    for item in list.split(',') {
        let (range, step) = match item.split_once(':') {
            Some((range, step)) => (range, number(step)?),
            None => (item, 1),
        };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None if step == 1 || item.contains(':') => (number(range)?, number(range)?),
            None => return Err(bad()),
        };
        if first > last || step == 0 {
            return Err(bad());
        }
        let mut i = first;
        while i <= last {
            indexes.insert(i);
            if indexes.len() > max_tasks {
                return Err(SlurmError::TooManyTasks { asked: indexes.len(), max: max_tasks });
            }
            i += step;
        }
    }
    if indexes.is_empty() {
        return Err(bad());
    }
    Ok((indexes.into_iter().collect(), throttle))
}

/// `indexes` as `--array`'s value, consecutive ones as ranges.
fn array_value(indexes: &[u32], throttle: Option<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indexes.len() {
        let mut j = i;
        while j + 1 < indexes.len() && indexes[j + 1] == indexes[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { indexes[i].to_string() } else { format!("{}-{}", indexes[i], indexes[j]) });
        i = j + 1;
    }
    let throttle = throttle.map(|n| format!("%{n}")).unwrap_or_default();
    format!("{}{throttle}", parts.join(","))
}

/// `--runtime slurm --array SPEC`: each task planned and checked here as
/// a run of its own (its run id, its directories, `CES_ARRAY_TASK_ID` in
/// its environment), then one `sbatch --array` whose job file lists them;
/// each task's node plans its run again and checks it against its digest.
#[allow(clippy::too_many_arguments)]
pub(crate) fn submit_array(
    settings: &Settings,
    printer: &Printer,
    options: &RunOptions,
    command_line: &RunOptions,
    image: &str,
    command: &[String],
    spec_text: &str,
) -> anyhow::Result<ExitCode> {
    let (indexes, throttle) = parse_array(spec_text, settings.slurm.max_array_tasks)?;
    let key = random_key()?;
    let mut tasks: Vec<Task> = Vec::with_capacity(indexes.len());
    let mut first: Option<Prepared> = None;
    for index in &indexes {
        let mut task_options = options.clone();
        task_options.env.push(format!("{ARRAY_VAR}={index}"));
        let prepared = super::prepare(settings, printer, &task_options, image, command, &super::Placement::default())?;
        check(&prepared)?;
        let plan = plan_digest(settings, &prepared.spec, &key)?;
        tasks.push(Task { index: Some(*index), ..Task::of(&prepared, plan) });
        if first.is_none() {
            first = Some(prepared);
        }
    }
    let Some(first) = first else { return Err(SlurmError::BadArray(String::new()).into()) };
    let array: Vec<ArrayTask> = tasks
        .iter()
        .map(|t| ArrayTask { index: t.index.unwrap_or_default(), run_id: t.spec.id.clone(), plan: t.plan.clone() })
        .collect();
    let (wait, json) = (options.wait, options.json);
    if options.dry_run {
        let mut lines = describe(settings, &first, wait)?;
        lines.push(format!("--array={}: {} runs:", array_value(&indexes, throttle), array.len()));
        lines.extend(array.iter().map(|t| format!("  task {}: run {}", t.index, t.run_id)));
        super::print_plan(&first.spec, "slurm", &first.safe_data, &lines, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = jobs_dir(&first);
    let job = job_file(&first, command_line, key, tasks[0].plan.clone(), array);
    let script = write_job(settings, &jobs, &job)?;
    let pattern = jobs.join(format!("{}_%a.out", first.spec.id));
    let mut args = sbatch_args(settings, &first, &pattern, wait);
    args.push(format!("--array={}", array_value(&indexes, throttle)));
    drop(first);
    let (child, job_id) = sbatch(args, &script)?;
    let mut outputs = Vec::new();
    for task in &tasks {
        let index = task.index.unwrap_or_default();
        let record = ces_audit::Job { scheduler: "slurm".to_owned(), id: format!("{job_id}_{index}"), node: None };
        record_submitted(settings, task, &record)?;
        let output = format!("{}_{index}.out", job.run_id);
        let kept = format!("{}\nout={output}\nimage={}\n", record.id, task.spec.image.digest);
        write_new(&jobs.join(format!("{}.job", task.spec.id)), kept.as_bytes(), 0o600)?;
        outputs.push(jobs.join(output));
        if json {
            let line = serde_json::json!({"event": "submitted", "run_id": task.spec.id, "job_id": record.id, "plan": task.plan});
            println!("{line}");
        }
    }
    printer.status(format!(
        "Submitted {} runs as Slurm job array {job_id} (tasks {})",
        tasks.len(),
        array_value(&indexes, throttle)
    ));
    finish(child, wait, &outputs)
}

/// 32 random bytes, as hex.
fn random_key() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key).context("/dev/urandom")?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a new file (never through what is there) with `mode`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// On the node: the GPUs Slurm gave the job (`SLURM_JOB_GPUS`, their
/// indexes), as a `--gpu` selector, if the run asks for GPUs; the run's own
/// `--gpu` and `--device` are taken out of `options` (the node gives the
/// job's GPUs, after the plan is checked).
pub(crate) fn node_gpus(options: &mut RunOptions) -> anyhow::Result<Option<String>> {
    let asked = options.gpu.take();
    if !options.device.is_empty() {
        return Err(SlurmError::Unsupported("host devices (--device): ask for GPUs with --gpu").into());
    }
    let Some(asked) = asked else { return Ok(None) };
    let count = crate::cdi::gpu_count(&asked)?;
    let given = std::env::var("SLURM_JOB_GPUS").unwrap_or_default();
    let valid = !given.is_empty() && given.split(',').all(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
    if !valid || given.split(',').count() != count {
        let given = ces_image::quote::escape_message(&given, 100);
        return Err(SlurmError::GpusNotGiven { asked: count, given }.into());
    }
    Ok(Some(given))
}

/// `ces slurm-job FILE`, on the node: the job's run, as submitted.
pub fn job(file: &Path) -> anyhow::Result<(JobFile, ces_audit::Job, Option<u32>)> {
    // Root for a user would read the user's file as root, and run as root.
    if crate::identity::sudo_user()?.is_some() {
        return Err(SlurmError::Unsupported("a run under sudo yet").into());
    }
    let id = std::env::var("SLURM_JOB_ID")
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_digit() || b == b'_'))
        .ok_or(SlurmError::NotInJob)?;
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut job: JobFile =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a ces job file", file.display()))?;
    // An array's task: its own run, as listed for its index.
    let mut array_index = None;
    let mut id = id;
    if !job.array.is_empty() {
        let index: u32 = std::env::var("SLURM_ARRAY_TASK_ID").ok().and_then(|v| v.parse().ok()).ok_or_else(|| {
            anyhow::anyhow!("{} is a job array's, and SLURM_ARRAY_TASK_ID is not set", file.display())
        })?;
        let task = job
            .array
            .iter()
            .find(|t| t.index == index)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{} lists no task {index}", file.display()))?;
        job.run_id = task.run_id;
        job.plan = task.plan;
        array_index = Some(index);
        // The task as submission recorded it: <array job id>_<index>.
        if let Some(array_id) = std::env::var("SLURM_ARRAY_JOB_ID")
            .ok()
            .filter(|v| v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() && v.len() <= 32)
        {
            id = format!("{array_id}_{index}");
        }
    }
    // It names directories (outputs_<id>, the run's state): only an id ces makes.
    if !ces_runtime::plan::is_run_id(&job.run_id) {
        anyhow::bail!("{} names no run id ces would make", file.display());
    }
    if !(job.plan.len() == 71
        && job.plan.starts_with("sha256:")
        && job.plan[7..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        anyhow::bail!("{} holds no plan digest", file.display());
    }
    let node = std::env::var("SLURMD_NODENAME")
        .ok()
        .filter(|n| !n.is_empty())
        .map(|n| ces_image::quote::escape_message(&n, 255));
    Ok((job, ces_audit::Job { scheduler: "slurm".to_owned(), id, node }, array_index))
}

/// A submitted run, as `<store>/jobs` keeps it.
#[derive(Debug, serde::Serialize)]
pub struct Submitted {
    /// The run id.
    pub run_id: String,
    /// `slurm` or `k8s`.
    pub scheduler: &'static str,
    /// The job id (Slurm's; for Kubernetes, `namespace/name`).
    pub job_id: String,
    /// The image, by digest.
    pub image: String,
    /// `PENDING`, `RUNNING`... while the scheduler has the job; then `ENDED`.
    pub state: String,
    /// The node it runs on, while it runs.
    pub node: Option<String>,
    /// The container's exit code, once the node recorded the run's end.
    pub exit_code: Option<i32>,
    /// An array task's output file (in the jobs directory).
    #[serde(skip)]
    output: Option<String>,
    /// A Kubernetes job's record.
    #[serde(skip)]
    k8s: Option<super::k8s::Record>,
}

/// The store's jobs directory (`ces jobs`, `logs`, `cancel`): this user's.
fn store_jobs(settings: &Settings) -> PathBuf {
    settings.storage_root.join("jobs")
}

/// Every run submitted from this store, newest first.
fn submitted(settings: &Settings) -> anyhow::Result<Vec<Submitted>> {
    let jobs = store_jobs(settings);
    let mut found: Vec<Submitted> = Vec::new();
    let entries = match std::fs::read_dir(&jobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", jobs.display())),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(run_id) = name.strip_suffix(".job").filter(|id| ces_runtime::plan::is_run_id(id)) else { continue };
        // The job id; an array task's also its output and image.
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut lines = text.lines();
        let job_id = lines.next().unwrap_or_default().trim().to_owned();
        let field = |key: &str| text.lines().skip(1).find_map(|l| l.strip_prefix(key)).map(str::to_owned);
        // Only a file of the jobs directory, by its plain name.
        let output =
            field("out=").filter(|o| o.ends_with(".out") && !o.contains('/') && !o.starts_with('.') && o.len() <= 64);
        let image = field("image=").unwrap_or_else(|| {
            std::fs::read(jobs.join(format!("{run_id}.json")))
                .ok()
                .and_then(|text| serde_json::from_slice::<JobFile>(&text).ok())
                .and_then(|job| job.command.first().cloned())
                .unwrap_or_default()
        });
        found.push(Submitted {
            run_id: run_id.to_owned(),
            scheduler: "slurm",
            job_id,
            image,
            state: "ENDED".to_owned(),
            node: None,
            exit_code: None,
            output,
            k8s: None,
        });
    }
    // Slurm's view of those it still has (an array's tasks one by one).
    if !found.is_empty() {
        let mut ids: Vec<&str> = found.iter().map(|s| s.job_id.split('_').next().unwrap_or_default()).collect();
        ids.sort_unstable();
        ids.dedup();
        let out = std::process::Command::new(program("squeue"))
            .args(["-h", "-r", "-o", "%i|%T|%N", "-j", &ids.join(",")])
            .stdin(Stdio::null())
            .output();
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut fields = line.split('|');
                let (Some(id), Some(state), node) = (fields.next(), fields.next(), fields.next()) else { continue };
                if let Some(job) = found.iter_mut().find(|s| s.job_id == id.trim()) {
                    job.state = state.trim().to_owned();
                    job.node = node.map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned);
                }
            }
        }
    }
    // The cluster's view of the Kubernetes ones.
    for (run_id, record) in super::k8s::records(&jobs) {
        found.push(Submitted {
            run_id,
            scheduler: "k8s",
            job_id: format!("{}/{}", record.namespace, record.name),
            image: record.image.rsplit_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default(),
            state: super::k8s::state(&settings.k8s, &record),
            node: None,
            exit_code: None,
            output: None,
            k8s: Some(record),
        });
    }
    found.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    // How the ended Slurm ones ended, as the node recorded it.
    if found.iter().any(|s| s.state == "ENDED" && s.scheduler == "slurm") {
        let log = ces_audit::AuditLog::new(settings.audit_path.clone());
        for record in log.records().unwrap_or_default() {
            if let ces_audit::Event::Run(run) = &record.event
                && let Some(job) = found.iter_mut().find(|s| s.run_id == run.run_id)
            {
                job.exit_code = run.exit.as_ref().map(|e| e.code);
                job.node = run.setup.job.as_ref().and_then(|j| j.node.clone());
            }
        }
    }
    Ok(found)
}

/// A Slurm program from the system's directories (never a `PATH` of the
/// user's under sudo).
pub(crate) fn program(name: &str) -> PathBuf {
    ["/usr/local/bin", "/usr/bin", "/bin"]
        .into_iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `ces jobs`.
pub fn jobs(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let found = submitted(settings)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?;
        return Ok(());
    }
    writeln!(out, "{:24}  {:>8}  {:10}  {:12}  {:>4}  IMAGE", "RUN", "JOB", "STATE", "NODE", "EXIT")?;
    for job in &found {
        let exit = job.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".to_owned());
        let node = job.node.as_deref().unwrap_or("-");
        let image = job.image.get(..19).unwrap_or(&job.image);
        writeln!(out, "{:24}  {:>8}  {:10}  {:12}  {:>4}  {image}", job.run_id, job.job_id, job.state, node, exit)?;
    }
    Ok(())
}

/// The submitted run `which` names (its run id or job id).
fn find(settings: &Settings, which: &str) -> anyhow::Result<Submitted> {
    submitted(settings)?.into_iter().find(|s| s.run_id == which || s.job_id == which).ok_or_else(|| {
        anyhow::anyhow!("no run or job {:?} submitted from this store", ces_image::quote::escape_message(which, 100))
    })
}

/// `ces logs`: the job's output so far; with `follow`, until it ends.
pub fn logs(settings: &Settings, which: &str, follow: bool) -> anyhow::Result<()> {
    let job = find(settings, which)?;
    if let Some(record) = &job.k8s {
        return super::k8s::logs(&settings.k8s, record, follow);
    }
    let path = store_jobs(settings).join(job.output.clone().unwrap_or_else(|| format!("{}.out", job.run_id)));
    let mut out = std::io::stdout().lock();
    let mut offset = 0u64;
    loop {
        if let Ok(mut file) = std::fs::File::open(&path) {
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
            offset += std::io::copy(&mut file, &mut out)?;
            out.flush()?;
        }
        if !follow {
            return Ok(());
        }
        let still = find(settings, &job.run_id).map(|j| j.state != "ENDED").unwrap_or(false);
        if !still {
            // What was written last.
            if let Ok(mut file) = std::fs::File::open(&path) {
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
                std::io::copy(&mut file, &mut out)?;
            }
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// `ces cancel`: scancel; the node's ces ends the run as a SIGTERM does
/// (the container stopped, scratch removed, outputs kept, the run recorded).
pub fn cancel(settings: &Settings, printer: &Printer, which: &str) -> anyhow::Result<()> {
    let job = find(settings, which)?;
    if ["ENDED", "SUCCEEDED", "FAILED"].contains(&job.state.as_str()) {
        anyhow::bail!("run {} (job {}) has ended", job.run_id, job.job_id);
    }
    if let Some(record) = &job.k8s {
        super::k8s::cancel(&settings.k8s, record)?;
        printer.status(format!("Cancelled run {} (Kubernetes job {})", job.run_id, job.job_id));
        return Ok(());
    }
    // A job that has not started is simply taken off the queue; a running
    // one gets SIGTERM, which its ces turns into the run's clean end.
    let signal: &[&str] = if job.state == "PENDING" { &[] } else { &["--signal=TERM", "--full"] };
    let status = std::process::Command::new(program("scancel"))
        .args(signal)
        .arg(&job.job_id)
        .stdin(Stdio::null())
        .status()
        .context("cannot run scancel")?;
    if !status.success() {
        return Err(SlurmError::Sbatch(format!("scancel {} failed ({status})", job.job_id)).into());
    }
    printer.status(format!("Cancelled run {} (Slurm job {})", job.run_id, job.job_id));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn array_indexes_as_slurm_reads_them() {
        let parse = |s: &str| parse_array(s, 1000);
        assert_eq!(parse("0-3").unwrap(), (vec![0, 1, 2, 3], None));
        assert_eq!(parse("5,1,3,1").unwrap(), (vec![1, 3, 5], None));
        assert_eq!(parse("0-20:10").unwrap(), (vec![0, 10, 20], None));
        assert_eq!(parse("0-9%2").unwrap().1, Some(2));
        assert_eq!(parse("7").unwrap(), (vec![7], None));
        for bad in ["", "-1", "3-1", "a", "1-", "0-9%0", "0-9%", "1,,2", "0-4:0", "99999999", "0-9%2%3", "1 2"] {
            assert!(matches!(parse(bad), Err(SlurmError::BadArray(_))), "{bad:?}");
        }
        assert!(matches!(parse("0-1000"), Err(SlurmError::TooManyTasks { asked: 1001, max: 1000 })));
        assert!(matches!(parse_array("0-3", 2), Err(SlurmError::TooManyTasks { .. })));
        assert_eq!(array_value(&[0, 1, 2, 5, 7, 8], Some(3)), "0-2,5,7-8%3");
        assert_eq!(array_value(&[4], None), "4");
    }
}
