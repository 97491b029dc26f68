//! `ces run` (and `ces-run`, `ces-gpu-run`): run a pulled image with the TRE
//! directories, no network and limits. Options (with option files) are
//! resolved, the plan is built from the stored image and the TRE policy, and
//! handed to a backend; `--dry-run` prints the plan instead, creating nothing.

pub(crate) mod host;
pub mod k8s;
mod manifest;
pub(crate) mod ports;
pub mod record;
pub mod slurm;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use ces_image::{Provenance, Store};
use ces_runtime::native::NativeRuntime;
use ces_runtime::plan::{self, ImageDefaults, PlanRequest, ProcessRequest, RunDirs, SafeData, TmpfsRequest};
use ces_runtime::podman::PodmanRuntime;
use ces_runtime::{Access, Exit, Limits, MountKind, RunSpec, Runtime};

use crate::cli::RunArgs;
use crate::commands::audit;
use crate::commands::pull::unpack;
use crate::printer::{Printer, gib, human_bytes};
use crate::run_options::{self, Place, RunOptions};
use crate::settings::{SafeDataMode, Settings};

use self::record::{ActiveRun, RunPaths};

/// A failure of `ces run` itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A parent directory of the contract is missing.
    #[error("the {what} directory {} does not exist", path.display())]
    MissingParent {
        /// `outputs` or `scratch`.
        what: &'static str,
        /// The parent.
        path: PathBuf,
    },
    /// Neither `$HOME` nor the config names where a directory goes.
    #[error("HOME is not set, so there is nowhere to put the {what} directory")]
    NoHome {
        /// `outputs` or `scratch`.
        what: &'static str,
    },
    /// `--name`.
    #[error("invalid --name {0:?}: use letters, digits, _ . - (at most 128, starting with a letter or digit)")]
    BadName(String),
    /// `--wait` for a run on this machine.
    #[error("--wait is for runs handed to a scheduler (--runtime slurm or k8s)")]
    WaitWithoutScheduler,
    /// `--entrypoint` given as JSON that is not a list of strings.
    #[error("invalid --entrypoint {value:?}: a value starting with [ must be a JSON list of strings")]
    BadEntrypoint {
        /// The value as given.
        value: String,
        /// Why it is not a list of strings.
        #[source]
        source: serde_json::Error,
    },
    /// The image argument is a path pair (`-v /etc:/etc IMG` parses as
    /// `--verbose` and an image called `/etc:/etc`).
    #[error("{0:?} is not an image name: it looks like a bind mount, and -v is --verbose on this command line")]
    LooksLikeMount(String),
    /// `-t` with no terminal on ces's stdin.
    #[error("-t needs a terminal, and ces's standard input is not one")]
    NoTerminal,
    /// More cores than the host has.
    #[error("cannot give {asked} cores: this machine has {available}")]
    TooManyCores {
        /// Asked for.
        asked: f64,
        /// Available.
        available: usize,
    },
}

/// Runs `ces run` and returns the container's exit code. A run refused or
/// failed before its container started is recorded in the audit log too.
pub fn run(settings: &Settings, printer: &Printer, args: RunArgs) -> anyhow::Result<ExitCode> {
    let image = args.command.first().cloned();
    let mut started = false;
    match run_container(settings, printer, args, None, &mut started) {
        Err(error) if !started => Err(audit::record_not_started(settings, image, error)),
        other => other,
    }
}

/// `ces slurm-job FILE`: on a Slurm node, the run submitted with
/// `--runtime slurm`, if its plan is still the one submitted.
pub fn slurm_job(settings: &Settings, printer: &Printer, file: &Path) -> anyhow::Result<ExitCode> {
    let (job, record, array_index) = match slurm::job(file) {
        Ok(found) => found,
        Err(error) => return Err(audit::record_not_started(settings, None, error)),
    };
    let image = job.command.first().cloned();
    let link = Some((job.run_id.clone(), record.clone()));
    let node = NodeJob { run_id: job.run_id, plan: job.plan, key: job.key, job: record, array_index };
    // What the node does, whatever the file says: the run, here, natively.
    let mut options = job.options;
    options.runtime = None;
    options.dry_run = false;
    options.wait = false;
    let args = RunArgs { options, command: job.command };
    let mut started = false;
    match run_container(settings, printer, args, Some(node), &mut started) {
        Err(error) if !started => Err(audit::record_job_not_started(settings, image, link, error)),
        other => other,
    }
}

/// A submitted run, on its node.
struct NodeJob {
    run_id: String,
    plan: String,
    key: String,
    job: ces_audit::Job,
    /// An array task's index.
    array_index: Option<u32>,
}

/// The run; `started` is set once the container is handed to the runtime
/// (from then on, the run's own record says how it ended).
fn run_container(
    settings: &Settings,
    printer: &Printer,
    args: RunArgs,
    node: Option<NodeJob>,
    started: &mut bool,
) -> anyhow::Result<ExitCode> {
    let mut options = args.options;
    run_options::settle_gpu(&mut options);
    let command_line = options.clone();
    let mut options = run_options::with_opt_files(options)?;
    let mut node_gpus = None;
    if node.is_some() {
        // An option file's --wait, read again on the node.
        options.wait = false;
        // The GPUs are the ones Slurm gave the job, given after the plan is
        // checked (the submitting host planned none).
        node_gpus = slurm::node_gpus(&mut options)?;
        // The task's run: its index in its environment, as submitted.
        options.array = None;
        if let Some(index) = node.as_ref().and_then(|n| n.array_index) {
            options.env.push(format!("{}={index}", slurm::ARRAY_VAR));
        }
    }
    let Some((image, command)) = args.command.split_first() else {
        anyhow::bail!("no image given");
    };
    // The container's terminal takes its size (and with -i, its keys) from
    // ces's: refused before anything is created (a dry run needs none).
    if options.tty && !options.dry_run && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(RunError::NoTerminal.into());
    }
    let slurm = options.runtime.as_deref() == Some("slurm");
    let k8s = options.runtime.as_deref() == Some("k8s");
    if options.wait && !slurm && !k8s {
        return Err(RunError::WaitWithoutScheduler.into());
    }
    if let Some(array) = options.array.clone() {
        if !slurm {
            return Err(slurm::SlurmError::ArrayWithoutSlurm.into());
        }
        return slurm::submit_array(settings, printer, &options, &command_line, image, command, &array);
    }
    // A native run: the wait of its first cgroup move (an RCU grace period,
    // 7-20 ms here) is paid while the run is planned and prepared, from the
    // start (as root: ces_runtime::native::warm_cgroup_migration moves a
    // helper of its own, never ces), and ends with the run if no container
    // took it.
    let _warmup = (!options.dry_run && options.runtime.as_deref().is_none_or(|r| r == "native"))
        .then(ces_runtime::native::warm_cgroup_migration);
    let placement = Placement { run_id: node.as_ref().map(|n| n.run_id.clone()), ..Placement::default() };
    let mut prepared = prepare(settings, printer, &options, image, command, &placement)?;
    if k8s {
        k8s::place(settings, &mut prepared)?;
        if options.dry_run {
            let backend_lines = k8s::describe(settings, &prepared)?;
            print_plan(&prepared.spec, "k8s", &prepared.safe_data, &backend_lines, options.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        return k8s::submit(settings, printer, &prepared, options.wait, options.json, started);
    }
    if slurm {
        if options.dry_run {
            let backend_lines = slurm::describe(settings, &prepared, options.wait)?;
            print_plan(&prepared.spec, "slurm", &prepared.safe_data, &backend_lines, options.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        return slurm::submit(settings, printer, &prepared, &command_line, options.wait, options.json);
    }
    if let Some(node) = node {
        let now = slurm::plan_digest(settings, &prepared.spec, &node.key)?;
        if now != node.plan {
            return Err(slurm::SlurmError::PlanChanged { submitted: node.plan, now }.into());
        }
        prepared.job = Some(node.job);
        if let Some(selector) = node_gpus {
            let request = crate::cdi::Request { gpu: Some(selector), devices: Vec::new() };
            let resolved = resolve_devices(settings, printer, &request)?;
            resolved.apply_env(&mut prepared.spec.process.env);
            prepared.spec.devices = resolved.devices.clone();
            prepared.devices = Some(resolved);
        }
    }
    let runtime = backend(settings, options.runtime.as_deref().unwrap_or("native"), prepared.store.root());
    if runtime.name() == "podman"
        && let Some(devices) = &prepared.devices
    {
        devices.check_podman(&settings.gpu)?;
    }
    // What the backend cannot do here is refused before anything is printed
    // or created (a dry run says so too).
    runtime.check(&prepared.spec).with_context(|| not_run(&prepared.spec))?;

    // `apptainer` is the native runtime as the user: recorded by its word.
    let runtime_name = if options.runtime.as_deref() == Some("apptainer") { "apptainer" } else { runtime.name() };
    if options.dry_run {
        let backend_lines = runtime.describe(&prepared.spec)?;
        print_plan(&prepared.spec, runtime_name, &prepared.safe_data, &backend_lines, options.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Bound before anything is created: a port in use stops the run here.
    let mut listeners = ports::open(&prepared.spec.ports)?;
    let native = native_runtime(settings, prepared.store.root());
    let executed = execute(settings, printer, &prepared, runtime_name, options.json, started, |spec| {
        if listeners.is_empty() { runtime.run(spec) } else { native.run_published(spec, &listeners) }
    });
    ports::close(printer, &mut listeners);
    let (result, outputs) = executed?;
    let exit = result.with_context(|| not_run(&prepared.spec))?;
    announce_end(printer, &prepared.spec, exit, &outputs, options.json)?;
    Ok(ExitCode::from(u8::try_from(exit.code()).unwrap_or(255)))
}

/// Where a run's directories come from, when not from the TRE's settings
/// (`ces test`: its own data and a fresh place for outputs and scratch).
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// `/safe_data` from this directory (read-only).
    pub safe_data: Option<PathBuf>,
    /// The parent of `outputs_<id>` and `scratch_<id>`.
    pub parent: Option<PathBuf>,
    /// The run id, when given (a Slurm job runs the run planned at submission).
    pub run_id: Option<String>,
}

/// A run planned from the options, the stored image and the TRE policy; the
/// store stays locked (shared) while this lives.
pub(crate) struct Prepared {
    /// The plan.
    pub spec: RunSpec,
    /// Where `/safe_data` comes from, and why.
    pub safe_data: SafeData,
    /// The image's manifest.
    pub manifest: oci_spec::image::ImageManifest,
    /// Its configuration.
    pub config: oci_spec::image::ImageConfiguration,
    /// Where it came from (from the manifest and config), for the audit record.
    pub provenance: Provenance,
    /// The store.
    pub store: Store,
    /// A readiness test (`ces test`): its audit record says so.
    pub test: bool,
    /// The devices, as podman would apply them (see
    /// [`crate::cdi::Resolved::check_podman`]).
    pub devices: Option<crate::cdi::Resolved>,
    /// The scheduler's job this run is (on a Slurm node), if any.
    pub job: Option<ces_audit::Job>,
    /// How many GPUs a run handed to a scheduler asks it for (`--gpu`).
    pub gpus: usize,
    /// The names of the variables the user set (`-e`, `--env-file`): a dry
    /// run does not show their values.
    pub user_env: Vec<String>,
    /// The command's arguments (after the image), as given.
    pub args: Vec<String>,
    outputs_parent: PathBuf,
    scratch_parent: PathBuf,
    runs: PathBuf,
    dirs: RunDirs,
    invoker: host::Invoker,
    // Held for the whole run: `ces rmi`/`ces gc` wait rather than delete the
    // root filesystem under a running container.
    _store_lock: ces_image::store::StoreLock,
}

/// Plans the run of `image` with `command` (unpacking the image if needed).
pub(crate) fn prepare(
    settings: &Settings,
    printer: &Printer,
    options: &RunOptions,
    image: &str,
    command: &[String],
    placement: &Placement,
) -> anyhow::Result<Prepared> {
    let limits = limits(options, settings)?;
    let process = process_request(options, command)?;
    let user_env = process.env_file.iter().chain(&process.env).map(|v| v.name.clone()).collect();
    let (tmpfs, binds) = mount_requests(options)?;
    let name = options.name.clone().map(checked_name).transpose()?;

    if looks_like_mount(image) {
        return Err(RunError::LooksLikeMount(image.to_owned()).into());
    }
    let store = settings.store()?;
    let store_lock = store.lock_shared()?;
    let record = store.lookup(image)?;
    let manifest = store.manifest(&record.digest)?;
    let config = store.config(&manifest)?;
    // From the content-addressed blobs, not the index's copy.
    let provenance = Provenance::of(&manifest, &config);
    crate::policy::check_run(settings, image, &record, &provenance)?;
    let mut rootfs = match store.unpacked(&record.digest) {
        Some(rootfs) => rootfs,
        None => {
            unpack(&store, printer, &record.digest)?;
            let gone = || format!("the root filesystem of {} went as it was unpacked", record.digest);
            store.unpacked(&record.digest).with_context(gone)?
        }
    };
    let rootless_podman = ces_runtime::podman::Mode::current() == ces_runtime::podman::Mode::Rootless;
    if rootfs.tree().is_none() && options.runtime.as_deref() == Some("podman") && rootless_podman {
        // Rootless podman takes one directory (`--rootfs DIR:O`).
        let options = ces_image::unpack::UnpackOptions::for_current_user();
        rootfs = ces_image::rootfs::Rootfs::Tree(store.tree(&record.digest, &options, &mut |_, _| {})?);
    }
    let image_config = config.config().clone().unwrap_or_default();
    let user = plan::resolve_user(image_config.user().as_deref(), &rootfs)?;
    let defaults = ImageDefaults {
        entrypoint: image_config.entrypoint().clone().unwrap_or_default(),
        cmd: image_config.cmd().clone().unwrap_or_default(),
        env: image_config.env().clone().unwrap_or_default(),
        workdir: image_config.working_dir().clone(),
    };

    let invoker = host::invoker()?;
    let (safe_data, safe_data_access) = match &placement.safe_data {
        Some(path) => {
            (SafeData { path: path.clone(), project: None, reason: "--data".to_owned(), link: None }, Access::Ro)
        }
        None => {
            let safe_data = find_safe_data(settings, &invoker)?;
            let access = match settings.tre.safe_data_mode(safe_data.project.as_deref()) {
                SafeDataMode::Ro => Access::Ro,
                SafeDataMode::Rw => Access::Rw,
            };
            (safe_data, access)
        }
    };
    let id = placement.run_id.clone().unwrap_or_else(plan::new_run_id);
    let (outputs_parent, scratch_parent) = match &placement.parent {
        Some(parent) => (parent.clone(), parent.clone()),
        None => (
            parent_dir("outputs", settings.tre.outputs_parent.as_ref(), &invoker)?,
            parent_dir("scratch", settings.tre.scratch_parent.as_ref(), &invoker)?,
        ),
    };
    let runs = record::runs_dir(store.root());
    let dirs = RunDirs {
        safe_data: safe_data.path.clone(),
        safe_data_access,
        outputs: outputs_parent.join(format!("outputs_{id}")),
        scratch: scratch_parent.join(format!("scratch_{id}")),
        state: runs.join(&id).join("state"),
    };
    // `apptainer`: as apptainer runs, the user's own uid and the project's
    // gid inside (not the image's user), HOME in /scratch (no home mount).
    let user = match options.runtime.as_deref() {
        Some("apptainer" | "k8s") => {
            let gid = safe_data.project.as_deref().and_then(crate::identity::group_gid);
            plan::ResolvedUser {
                user: ces_runtime::ContainerUser {
                    uid: invoker.identity.host_uid,
                    gid: gid.unwrap_or(invoker.identity.host_gid),
                },
                home: plan::SCRATCH.to_owned(),
            }
        }
        _ => user,
    };
    let mut spec = plan::build(PlanRequest {
        id,
        name,
        image: ces_runtime::ImageSpec {
            reference: record.reference.to_string(),
            digest: record.digest.clone(),
            rootfs,
        },
        defaults,
        user,
        process,
        dirs: dirs.clone(),
        tmpfs,
        limits,
        identity: invoker.identity,
    })?;
    if matches!(options.runtime.as_deref(), Some("apptainer" | "k8s")) {
        // Whatever the image's ENV says: there is no home directory mount.
        spec.process.env.retain(|v| v.name != "HOME");
        spec.process.env.push(ces_runtime::EnvVar::new("HOME", plan::SCRATCH));
    }
    spec.pins.add(safe_data.path.clone(), pin_safe_data(&safe_data)?);
    let cwd = std::env::current_dir().context("cannot tell the current directory (for relative bind sources)")?;
    for (bind, pin) in crate::binds::resolve(&binds, &settings.run.bind_roots, &invoker, &cwd)? {
        if spec.mounts.iter().any(|m| m.destination == bind.destination) {
            let source = match &bind.kind {
                MountKind::Bind { source } => source.display().to_string(),
                MountKind::Tmpfs { .. } => String::new(),
            };
            let (destination, problem) = (bind.destination.clone(), crate::binds::Problem::Taken);
            return Err(crate::policy::PolicyError::Bind { bind: source, destination, problem }.into());
        }
        if let MountKind::Bind { source } = &bind.kind {
            spec.pins.add(source.clone(), pin);
        }
        spec.mounts.push(bind);
    }
    spec.ports = ports::requests(settings, options)?;
    let request = crate::cdi::Request {
        gpu: options.gpu.clone().map(|g| if g.is_empty() { "all".to_owned() } else { g }),
        devices: options.device.clone(),
    };
    let mut devices = None;
    let mut gpus = 0;
    if matches!(options.runtime.as_deref(), Some("slurm" | "k8s")) {
        // The scheduler picks the GPUs: asked for by count, under this
        // host's policy.
        let (user, host_root) = device_user()?;
        let groups = || crate::identity::policy_groups(&user);
        gpus = crate::cdi::scheduled_gpus(&settings.gpu, &request, &user, host_root, &groups)?;
    } else if !request.is_empty() {
        let resolved = resolve_devices(settings, printer, &request)?;
        resolved.apply_env(&mut spec.process.env);
        spec.devices = resolved.devices.clone();
        devices = Some(resolved);
    }
    Ok(Prepared {
        spec,
        safe_data,
        manifest,
        config,
        provenance,
        store,
        test: false,
        devices,
        job: None,
        gpus,
        user_env,
        args: command.to_vec(),
        outputs_parent,
        scratch_parent,
        runs,
        dirs,
        invoker,
        _store_lock: store_lock,
    })
}

/// Who asks for devices, as `[gpu]`'s policy sees them, and whether that is
/// root of the host itself (the operator, who may use every device).
fn device_user() -> anyhow::Result<(ces_audit::User, bool)> {
    let user = crate::identity::policy_user()?;
    let host_root = crate::identity::caller() == crate::identity::Caller::HostRoot && user.uid == 0;
    Ok((user, host_root))
}

/// The devices a run asked for, from this host's CDI specs, as the
/// policy allows them to this user. Specs that could not be read are
/// warned about when the devices were found without them.
fn resolve_devices(
    settings: &Settings,
    printer: &Printer,
    request: &crate::cdi::Request,
) -> anyhow::Result<crate::cdi::Resolved> {
    let registry = crate::cdi::Registry::read(&settings.gpu.spec_dirs);
    let (user, host_root) = device_user()?;
    let groups = || crate::identity::policy_groups(&user);
    let resolved = crate::cdi::resolve(&settings.gpu, &registry, request, &user, host_root, &groups)?;
    for (path, problem) in &registry.problems {
        printer.status(format!("warning: CDI spec {} not used: {problem}", ces_image::quote::quote_path(path)));
    }
    Ok(resolved)
}

/// Runs a prepared plan with `run`: creates the run's directories, records
/// the run's start in the audit log (nothing runs that could not be
/// recorded), runs it, records its end, removes what must not outlive it.
/// Returns the runtime's result and the outputs directory.
pub(crate) fn execute(
    settings: &Settings,
    printer: &Printer,
    prepared: &Prepared,
    runtime: &str,
    json: bool,
    started: &mut bool,
    run: impl FnOnce(&RunSpec) -> Result<Exit, ces_runtime::RuntimeError>,
) -> anyhow::Result<(Result<Exit, ces_runtime::RuntimeError>, PathBuf)> {
    let spec = &prepared.spec;
    for (what, parent) in [("outputs", &prepared.outputs_parent), ("scratch", &prepared.scratch_parent)] {
        if !parent.is_dir() {
            return Err(RunError::MissingParent { what, path: parent.clone() }.into());
        }
    }
    let invoker = &prepared.invoker;
    let owner = (crate::identity::is_host_root() && invoker.identity.host_uid != 0).then_some(invoker.identity);
    let paths = RunPaths {
        id: spec.id.clone(),
        runtime: runtime.to_owned(),
        outputs: prepared.dirs.outputs.clone(),
        scratch: prepared.dirs.scratch.clone(),
        state: prepared.dirs.state.clone(),
    };
    // A name is unique among the user's running runs: checked, and held
    // until this run's note says its name, before anything is created.
    let user = audit::current_user();
    let reservation = crate::running::reserve_name(&prepared.runs, spec.name.as_deref(), user.uid)?;
    let mut active = ActiveRun::start(&prepared.runs, paths, owner)?;
    // The start, before the container, and nothing runs that could not be
    // recorded: a log that cannot take it stops the run here (its
    // directories go with `active`). A ces that dies from now on (SIGKILL,
    // a crash) leaves a record whose run the next start closes ("supervisor
    // lost"); noted in the record first, so that no start goes unclosed.
    let info = crate::running::RunInfo {
        name: spec.name.clone(),
        image: spec.image.reference.clone(),
        digest: spec.image.digest.to_string(),
        runtime: runtime.to_owned(),
        started: jiff::Timestamp::now().to_string(),
        pid_start: crate::running::start_ticks(std::process::id()).unwrap_or_default(),
        limits: audit::limits_of(spec),
        ports: spec.ports.iter().map(ToString::to_string).collect(),
        outputs: active.paths().outputs.clone(),
        host: Some(ces_runtime::host::id().to_owned()),
    };
    let opened = record::Opened { user, pid: std::process::id(), run: Some(info) };
    let recorded = record::mark_opened(&prepared.runs, &spec.id, &opened).and_then(|()| {
        audit::record_start(
            settings,
            audit::RunStarting {
                spec,
                runtime,
                safe_data: &prepared.safe_data,
                provenance: &prepared.provenance,
                outputs: &active.paths().outputs,
                test: prepared.test,
                job: prepared.job.as_ref(),
            },
        )
    });
    drop(reservation);
    if let Err(error) = recorded {
        active.discard_outputs_if_empty();
        return Err(error);
    }
    // From here on the run's own records say how it ended, not a run_not_started.
    *started = true;
    if let Err(error) = announce_start(printer, spec, runtime, &prepared.safe_data, active.paths(), json) {
        active.discard_outputs_if_empty();
        audit::record_not_run(settings, spec, &active.paths().outputs, &error)?;
        record::mark_closed(&prepared.runs, &spec.id)?;
        return Err(error);
    }

    // The outputs and scratch directories from what was made, held open.
    let mut pinned = spec.clone();
    for path in [&active.paths().outputs, &active.paths().scratch] {
        if let Some(dir) = active.pin(path) {
            pinned.pins.add(path.clone(), dir);
        }
    }
    let start_time = jiff::Timestamp::now();
    // The time limit runs from the container's start; at it, ces stops the
    // run as a SIGTERM to ces would (see crate::time_limit).
    let timer = spec.limits.time_limit.map(crate::time_limit::Timer::start).transpose();
    let result = match timer {
        Ok(timer) => {
            let result = run(&pinned);
            match (timer.map(crate::time_limit::Timer::stop), result) {
                (Some(true), Ok(exit)) => Ok(Exit::TimeLimit(exit.code())),
                (_, result) => result,
            }
        }
        Err(error) => {
            Err(ces_runtime::RuntimeError::Start { stage: "starting the time limit", source: Box::new(error) })
        }
    };

    if result.is_err() {
        active.discard_outputs_if_empty();
    }
    let outputs = active.paths().outputs.clone();
    let mut end = audit::RunEnd {
        spec,
        runtime,
        safe_data: &prepared.safe_data,
        provenance: &prepared.provenance,
        started: start_time,
        result: &result,
        outputs: &outputs,
        outputs_manifest: None,
        test: prepared.test,
        job: prepared.job.as_ref(),
    };
    // After the container's exit, whatever its end: the manifest and the ACRO
    // metadata, then the run's end, while its record still says it is open.
    end.outputs_manifest = manifest::seal_outputs(printer, &settings.outputs, &end, owner);
    audit::record_run(settings, end)?;
    if let Err(error) = record::mark_closed(&prepared.runs, &spec.id) {
        printer.status(format!("warning: {}", crate::diagnostics::message(&error)));
    }
    for problem in active.finish() {
        printer.status(format!("warning: {problem}"));
    }
    Ok((result, outputs))
}

/// Removes what runs of a ces that died left behind, and records the end of
/// their runs (best effort; problems are logged, and the next start tries
/// again). The native runtime's leftovers go first: it stops the container
/// and unmounts its root filesystem, which would otherwise keep the run's
/// state directory, and its record, from being removed.
pub fn clean_stale(settings: &Settings) {
    native_cleanup_stale(&settings.storage_root);
    let runs = record::runs_dir(&settings.storage_root);
    if !runs.is_dir() {
        return;
    }
    let close = |run: &record::Unclosed<'_>| {
        let (user, pid) = match &run.opened {
            Some(opened) => (opened.user.clone(), Some(opened.pid)),
            None => (audit::current_user(), None),
        };
        let lost = audit::LostRun { user, run_id: run.id, pid, outputs: run.outputs };
        match audit::record_lost(settings, lost) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(id = run.id, error = %crate::diagnostics::message(&error), "cannot record the end of an interrupted run");
                false
            }
        }
    };
    // A container still there keeps its scratch: the next start tries again.
    let cleanup_state = |state: &Path| ces_runtime::podman::cleanup_stale(state);
    let cleaned = record::clean_stale(&runs, &cleanup_state, &close);
    for id in cleaned {
        tracing::info!(id, "removed the scratch and state of an interrupted run");
    }
}

/// The backend called `name` (clap allows only [`crate::cli::RUNTIMES`]).
fn backend(settings: &Settings, name: &str, store_root: &Path) -> Box<dyn Runtime> {
    match name {
        "podman" => Box::new(PodmanRuntime { allow_host_root: settings.podman.allow_host_root, ..Default::default() }),
        _ => Box::new(native_runtime(settings, store_root)),
    }
}

/// The native backend, its state kept in the store.
pub(crate) fn native_runtime(settings: &Settings, store_root: &Path) -> NativeRuntime {
    let mut runtime = NativeRuntime::new(native_state_root(store_root));
    if let Some(base) = settings.run.root_id_base {
        runtime.root_id_base = base;
    }
    runtime
}

/// libcontainer's state root: `<store>/containers`.
fn native_state_root(store_root: &Path) -> PathBuf {
    store_root.join("containers")
}

/// The context of a runtime's failure to run the container: which run, which image.
pub(crate) fn not_run(spec: &RunSpec) -> String {
    format!("the container of run {} ({}) could not be run", spec.id, spec.image.reference)
}

/// What the native backend left from runs of a ces that died.
fn native_cleanup_stale(store_root: &Path) {
    match ces_runtime::native::cleanup_stale(&native_state_root(store_root)) {
        Ok(0) => {}
        Ok(n) => tracing::info!(containers = n, "removed containers of interrupted runs"),
        Err(error) => tracing::warn!(%error, "cannot clean up after interrupted runs"),
    }
}

fn limits(options: &RunOptions, settings: &Settings) -> anyhow::Result<Limits> {
    let memory = options.memory.as_deref().map(plan::parse_memory).transpose()?.unwrap_or(plan::DEFAULT_MEMORY);
    let cpus = options.cores.as_deref().map(plan::parse_cores).transpose()?;
    // A scheduler's node is not this host: its own cores are checked there.
    if let Some(asked) = cpus.filter(|_| !matches!(options.runtime.as_deref(), Some("slurm" | "k8s"))) {
        let available = std::thread::available_parallelism().map_or(1, usize::from);
        if asked > available as f64 {
            return Err(RunError::TooManyCores { asked, available }.into());
        }
    }
    let shm_size = options
        .shm_size
        .as_deref()
        .map(|s| plan::parse_size("shm-size", s))
        .transpose()?
        .unwrap_or(plan::DEFAULT_SHM_SIZE);
    let time_limit = crate::time_limit::effective(options.time_limit.as_deref(), settings.run.max_time_limit)?;
    let rootfs_writes = settings.run.max_rootfs_writes;
    Ok(Limits { memory, cpus, pids: Some(plan::DEFAULT_PIDS), shm_size, time_limit, rootfs_writes })
}

/// The container's process as asked. The env and arg files are read as the
/// user ces runs for (under sudo, not as root: see
/// [`crate::identity::as_invoker`]); their errors name the file and line only.
fn process_request(options: &RunOptions, command: &[String]) -> anyhow::Result<ProcessRequest> {
    let host = |name: &str| std::env::var(name).ok();
    let read = |what: &str, path: &Path| {
        crate::identity::read_as_invoker(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display()))
    };
    let mut env_file = Vec::new();
    for path in &options.env_file {
        env_file.extend(plan::parse_env_file(&read("env", path)?, path, &host)?);
    }
    let mut arg_file = Vec::new();
    for path in &options.arg_file {
        arg_file.extend(plan::parse_arg_file(&read("arg", path)?, path)?);
    }
    let mut env = Vec::new();
    for arg in &options.env {
        env.extend(plan::parse_env_arg(arg, &host)?);
    }
    let entrypoint = options.entrypoint.as_deref().map(parse_entrypoint).transpose()?;
    Ok(ProcessRequest {
        entrypoint,
        args: command.to_vec(),
        arg_file,
        env_file,
        env,
        workdir: options.workdir.clone(),
        terminal: options.tty,
        interactive: options.interactive,
    })
}

/// `--entrypoint`: one word, `""` for none, or a JSON list (as podman takes it).
fn parse_entrypoint(value: &str) -> Result<Vec<String>, RunError> {
    if value.trim_start().starts_with('[') {
        return serde_json::from_str(value)
            .map_err(|source| RunError::BadEntrypoint { value: value.to_owned(), source });
    }
    Ok(if value.is_empty() { Vec::new() } else { vec![value.to_owned()] })
}

/// The tmpfs mounts and the binds asked for (`--mount`, `--volume`).
fn mount_requests(options: &RunOptions) -> anyhow::Result<(Vec<TmpfsRequest>, Vec<crate::binds::BindRequest>)> {
    let mut tmpfs = Vec::new();
    let mut binds = Vec::new();
    for value in &options.mount {
        match run_options::parse_mount(value, &Place::CommandLine)? {
            run_options::MountRequest::Tmpfs(destination, size) => {
                let size = size.map(|s| plan::parse_size("tmpfs-size", &s)).transpose()?;
                tmpfs.push(TmpfsRequest { destination, size });
            }
            run_options::MountRequest::Bind(bind) => binds.push(bind),
        }
    }
    for value in &options.volume {
        binds.push(run_options::parse_volume(value, &Place::CommandLine)?);
    }
    Ok((tmpfs, binds))
}

/// `SRC:DST` with a path on either side: what users coming from docker type
/// after `-v`. No image reference starts with `/`, `.` or `~`.
fn looks_like_mount(image: &str) -> bool {
    image.starts_with(['/', '.', '~']) || image.split_once(':').is_some_and(|(_, dst)| dst.starts_with('/'))
}

fn checked_name(name: String) -> Result<String, RunError> {
    let ok = name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok { Ok(name) } else { Err(RunError::BadName(name)) }
}

/// Where `/safe_data` comes from. Under sudo every path is looked at as the
/// user (their `~/safe_data` link, the project's directory): root must not
/// find, through a link of theirs, a directory they could not reach.
fn find_safe_data(settings: &Settings, invoker: &host::Invoker) -> anyhow::Result<SafeData> {
    use crate::identity::as_invoker as as_user;
    let home_has_it = as_user(|| invoker.home.as_ref().is_some_and(|h| h.join("safe_data").is_dir()))?;
    let groups = if home_has_it || settings.tre.project.is_some() { Vec::new() } else { host::groups(invoker)? };
    let query = plan::SafeDataQuery {
        user: invoker.name.clone(),
        home: invoker.home.clone(),
        root: settings.tre.safe_data_root.clone(),
        project: settings.tre.project.clone(),
        groups,
        group_prefix: settings.tre.group_prefix.clone(),
    };
    Ok(as_user(|| plan::find_safe_data(&query, &|path| path.is_dir()))??)
}

/// `/safe_data`'s directory as it was found, held open (`O_PATH`, as the
/// user): root mounts that one, not what the path leads to later (see
/// [`ces_runtime::Pins`]). Found from `$HOME/safe_data`, its path has no
/// link left in it (resolved when judged): one there now was put there
/// since, and is refused rather than followed.
fn pin_safe_data(safe_data: &SafeData) -> anyhow::Result<std::sync::Arc<rustix::fd::OwnedFd>> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags};
    let path = &safe_data.path;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = if safe_data.reason.starts_with("home") { ResolveFlags::NO_SYMLINKS } else { ResolveFlags::empty() };
    let fd = crate::identity::as_invoker(|| rustix::fs::openat2(CWD, path, flags, Mode::empty(), resolve))?
        .with_context(|| format!("cannot open {} (/safe_data) as it was found", path.display()))?;
    Ok(std::sync::Arc::new(fd))
}

fn parent_dir(what: &'static str, configured: Option<&PathBuf>, invoker: &host::Invoker) -> anyhow::Result<PathBuf> {
    match configured.or(invoker.home.as_ref()) {
        Some(dir) => Ok(dir.clone()),
        None => Err(RunError::NoHome { what }.into()),
    }
}

fn mount_lines(spec: &RunSpec) -> Vec<String> {
    spec.mounts
        .iter()
        .map(|m| {
            let what = match &m.kind {
                MountKind::Bind { source } => source.display().to_string(),
                MountKind::Tmpfs { size: Some(size) } => format!("tmpfs ({})", human_bytes(*size)),
                MountKind::Tmpfs { size: None } => "tmpfs".to_owned(),
            };
            let note = match m.destination.as_str() {
                plan::SAFE_OUTPUTS => "  (created empty, kept)",
                plan::SCRATCH => "  (created empty, removed at exit)",
                _ => "",
            };
            format!("{:<14} {} {what}{note}", m.destination, m.access)
        })
        .collect()
}

/// `--dry-run`: the whole plan on stdout (env names only; no values).
/// The dry run's lines for the devices: every node, mount, variable and
/// hook their specs add.
fn device_lines(devices: &ces_runtime::Devices) -> Vec<String> {
    if devices.is_empty() {
        return Vec::new();
    }
    let mut lines = vec!["devices:".to_owned()];
    for d in &devices.requested {
        let uuid = d.uuid.as_deref().map(|u| format!(", {u}")).unwrap_or_default();
        lines.push(format!("  {} (spec {}{uuid})", d.name, d.spec.display()));
    }
    for n in &devices.nodes {
        let kind = match n.kind {
            ces_runtime::DeviceType::Char => 'c',
            ces_runtime::DeviceType::Block => 'b',
        };
        lines.push(format!(
            "  node   {} <- {} ({kind} {}:{}, access {})",
            n.path,
            n.host_path.display(),
            n.major,
            n.minor,
            n.access
        ));
    }
    for m in &devices.mounts {
        lines.push(format!("  mount  {} <- {} (ro, nosuid, nodev)", m.container_path, m.host_path.display()));
    }
    for m in &devices.left_out {
        lines.push(format!("  left out: {m}"));
    }
    if !devices.env.is_empty() {
        lines.push(format!("  env    {}", devices.env.join(" ")));
    }
    for h in &devices.hooks {
        let stage = match h.stage {
            ces_runtime::HookStage::CreateContainer => "createContainer",
        };
        let args: Vec<String> = h.args.iter().skip(1).map(|a| ces_runtime::podman::shell_quote(a)).collect();
        lines.push(format!("  hook   {stage}: {} {}", h.path.display(), args.join(" ")).trim_end().to_owned());
    }
    if !devices.additional_gids.is_empty() {
        let gids: Vec<String> = devices.additional_gids.iter().map(u32::to_string).collect();
        lines.push(format!(
            "  groups {} (root's runs; rootless and sudo runs keep the user's own groups)",
            gids.join(" ")
        ));
    }
    lines
}

fn print_plan(
    spec: &RunSpec,
    runtime: &str,
    safe_data: &SafeData,
    backend: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "dry_run": true,
            "runtime": runtime,
            "safe_data": safe_data,
            "spec": spec,
            "backend": backend,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    let limits = &spec.limits;
    let names: Vec<&str> = spec.process.env.iter().map(|v| v.name.as_str()).collect();
    let quoted: Vec<String> = spec.process.args.iter().map(|a| ces_runtime::podman::shell_quote(a)).collect();
    writeln!(out, "Plan for run {} (dry run: nothing was created)", spec.id)?;
    writeln!(out, "image:      {}", spec.image.reference)?;
    writeln!(out, "digest:     {}", spec.image.digest)?;
    writeln!(out, "rootfs:     {} (read-only; writes go to a per-run copy-on-write layer)", spec.image.rootfs)?;
    writeln!(out, "runtime:    {runtime}")?;
    if let Some(name) = &spec.name {
        writeln!(out, "name:       {name}")?;
    }
    writeln!(out, "command:    {}", quoted.join(" "))?;
    writeln!(out, "workdir:    {}", spec.process.cwd)?;
    writeln!(
        out,
        "user:       {}:{} in the container, host user {}:{}",
        spec.process.user.uid, spec.process.user.gid, spec.identity.host_uid, spec.identity.host_gid
    )?;
    writeln!(out, "env:        {} (values not shown)", names.join(" "))?;
    let why = match &safe_data.project {
        Some(project) => format!("project {project}, found by {}", safe_data.reason),
        None => "$HOME/safe_data".to_owned(),
    };
    writeln!(out, "safe_data:  {why}")?;
    writeln!(out, "mounts:")?;
    for line in mount_lines(spec) {
        writeln!(out, "  {line}")?;
    }
    for line in device_lines(&spec.devices) {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "limits:     memory {}, cpus {}, pids {}, /dev/shm {}",
        gib(limits.memory),
        limits.cpus.map_or("unlimited".to_owned(), |c| c.to_string()),
        limits.pids.map_or("unlimited".to_owned(), |p| p.to_string()),
        human_bytes(limits.shm_size)
    )?;
    if let Some(limit) = limits.time_limit {
        writeln!(
            out,
            "time limit: {} (then SIGTERM, SIGKILL {} later; exit code 124)",
            crate::time_limit::show(limit),
            crate::time_limit::show(spec.process.stop_timeout)
        )?;
    }
    writeln!(out, "network:    none (loopback only)")?;
    for port in &spec.ports {
        writeln!(out, "port:       {port} (relayed to the container's loopback; nothing else reachable)")?;
    }
    writeln!(
        out,
        "terminal:   {}, stdin {}",
        spec.process.terminal,
        if spec.process.interactive { "open" } else { "closed" }
    )?;
    writeln!(out, "{runtime}:")?;
    for line in backend {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn announce_start(
    printer: &Printer,
    spec: &RunSpec,
    runtime: &str,
    safe_data: &SafeData,
    paths: &RunPaths,
    json: bool,
) -> anyhow::Result<()> {
    printer.status(format!("Running {} ({}) with {runtime}", spec.image.reference, spec.image.digest));
    let access = spec.mounts.first().map_or(Access::Ro, |m| m.access);
    printer.status(format!("Run {}: /safe_data is {} ({access})", spec.id, safe_data.path.display()));
    printer.status(format!("Run {}: outputs in {}", spec.id, paths.outputs.display()));
    if json {
        let line = serde_json::json!({
            "event": "start",
            "id": spec.id,
            "image": spec.image.reference,
            "digest": spec.image.digest,
            "runtime": runtime,
            "outputs": paths.outputs,
            "scratch": paths.scratch,
            "safe_data": safe_data.path,
            "safe_data_access": access,
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

fn announce_end(printer: &Printer, spec: &RunSpec, exit: Exit, outputs: &Path, json: bool) -> anyhow::Result<()> {
    let how = match exit {
        Exit::Code(code) => format!("exited with code {code}"),
        Exit::Signal(signal) => format!("was killed by signal {signal} (exit code {})", exit.code()),
        Exit::OutOfMemory => {
            format!("was killed: out of memory (the limit is {}; exit code {})", gib(spec.limits.memory), exit.code())
        }
        Exit::TimeLimit(code) => format!(
            "was stopped at its time limit of {} (it ended with code {code}; exit code {})",
            spec.limits.time_limit.map(crate::time_limit::show).unwrap_or_default(),
            exit.code()
        ),
    };
    printer.status(format!("Run {} {how}: outputs kept in {}", spec.id, outputs.display()));
    if json {
        let line = serde_json::json!({
            "event": "end",
            "id": spec.id,
            "outputs": outputs,
            "exit_code": exit.code(),
            "exit": exit,
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entrypoint_forms() {
        assert_eq!(parse_entrypoint("/bin/sh").unwrap(), ["/bin/sh"]);
        assert!(parse_entrypoint("").unwrap().is_empty());
        assert_eq!(parse_entrypoint(r#"["/bin/sh", "-c"]"#).unwrap(), ["/bin/sh", "-c"]);
        let error = parse_entrypoint("[1, 2]").unwrap_err().to_string();
        assert!(error.starts_with("invalid --entrypoint \"[1, 2]\": "), "{error}");
    }

    #[test]
    fn path_pairs_are_not_images() {
        for mount in ["/etc:/etc", "./data:/data", "~/x:/x", "data:/data", "/"] {
            assert!(looks_like_mount(mount), "{mount}");
        }
        for image in ["busybox", "ghcr.io/ns/app:1.0", "127.0.0.1:5000/app@sha256:ab", "localhost:5000/a/b:tag"] {
            assert!(!looks_like_mount(image), "{image}");
        }
    }

    #[test]
    fn names() {
        assert!(checked_name("job-1.a_b".into()).is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(129)] {
            assert!(checked_name(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_from_options() {
        let settings =
            Settings::load_as(None, Path::new("/nonexistent/ces.toml"), crate::settings::Reader::User).unwrap();
        let limits = |o: &RunOptions| limits(o, &settings);
        let l = limits(&RunOptions::default()).unwrap();
        assert_eq!((l.memory, l.cpus, l.pids, l.shm_size), (4 << 30, None, Some(4096), 64 << 20));
        let o = RunOptions {
            memory: Some("0.5".into()),
            cores: Some("1".into()),
            shm_size: Some("1g".into()),
            ..Default::default()
        };
        let l = limits(&o).unwrap();
        assert_eq!((l.memory, l.cpus, l.shm_size), (512 << 20, Some(1.0), 1 << 30));
        assert!(limits(&RunOptions { cores: Some("100000".into()), ..Default::default() }).is_err());
    }
}
