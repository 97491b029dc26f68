//! `ces audit show` and `ces audit verify`, and the records `ces pull`,
//! `ces load`, `ces run` and `ces test` leave in the audit log (see
//! docs/governance.md).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use ces_audit::{AuditLog, Event, Outcome, Provenance, Record, User};
use ces_runtime::plan::SafeData;
use ces_runtime::{Exit, MountKind, RunSpec, RuntimeError};
use jiff::Timestamp;

use crate::cli::{AuditShowArgs, AuditVerifyArgs};
use crate::diagnostics;
use crate::identity::{self, Caller};
use crate::settings::Settings;

/// Exit code of `ces audit verify` for a broken chain (ces's own failures are 125).
pub const EXIT_BROKEN: u8 = 1;

/// The log the settings name.
pub fn log(settings: &Settings) -> AuditLog {
    let log = AuditLog::new(&settings.audit_path);
    if settings.audit_syslog { log.with_syslog(ces_audit::SYSLOG_SOCKET) } else { log }
}

/// Who ces runs for, as the audit records it: the real uid (as root of the
/// host under sudo, the user who ran sudo), named from the password database
/// rather than from `$USER`, which the user controls. In a user namespace
/// (`unshare -r`), the user outside it, and `SUDO_*` is not trusted; where
/// that user cannot be told, [`identity::UNKNOWN_UID`], named `unknown`.
pub fn current_user() -> User {
    let named = |uid: u32| {
        passwd_name(uid)
            .or_else(|| std::env::var("USER").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| uid.to_string())
    };
    match identity::caller() {
        Caller::HostRoot => {
            let sudo_uid = std::env::var("SUDO_UID").ok().and_then(|v| v.parse::<u32>().ok());
            if let Some(uid) = sudo_uid {
                let name = std::env::var("SUDO_USER").ok().filter(|n| !n.is_empty());
                return User { name: name.or_else(|| passwd_name(uid)).unwrap_or_else(|| uid.to_string()), uid };
            }
            let uid = rustix::process::getuid().as_raw();
            User { name: named(uid), uid }
        }
        Caller::HostUser { uid } => User { name: named(uid), uid },
        // Not `$USER`: inside the namespace it may name anyone.
        Caller::Namespaced { uid: Some(uid) } => {
            User { name: passwd_name(uid).unwrap_or_else(|| uid.to_string()), uid }
        }
        Caller::Namespaced { uid: None } => User { name: "unknown".to_owned(), uid: identity::UNKNOWN_UID },
    }
}

/// The name of `uid` in /etc/passwd.
fn passwd_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// A pull whose start is in the log: its mark stays until its end is too.
#[derive(Debug)]
pub struct PullStarted {
    /// The pull id, which its end record repeats.
    pub id: String,
    mark: ces_audit::OpenMark,
}

impl PullStarted {
    /// Says the pull's end is in the log (a mark that cannot be removed is
    /// only logged: the next pull would close it twice, never lose it).
    pub fn close(self) {
        if let Err(error) = self.mark.close() {
            tracing::warn!(%error, id = self.id, "cannot remove the open mark of a pull");
        }
    }
}

/// Appends a pull's start, before the registry is contacted, and marks it
/// open until [`record_pull`] writes its end.
pub fn record_pull_start(
    settings: &Settings,
    reference: &ces_image::ImageReference,
    registry_user: Option<&str>,
) -> anyhow::Result<PullStarted> {
    let pid = std::process::id();
    let id = format!("{:x}-{pid}", jiff::Timestamp::now().as_nanosecond());
    let opened = ces_audit::Opened { id: id.clone(), user: current_user(), pid, reference: reference.to_string() };
    let event = Event::PullStart(ces_audit::PullStartEvent {
        pull_id: id.clone(),
        pid,
        reference: reference.to_string(),
        registry: Some(reference.registry().to_owned()),
        registry_user: registry_user.map(str::to_owned),
    });
    let (_, mark) = log(settings)
        .append_open(&opened, event)
        .context("the pull could not be recorded, so the registry was not contacted")?;
    Ok(PullStarted { id, mark })
}

/// Appends the end (`pull_end`, outcome `supervisor_lost`) of each pull
/// whose ces died before writing its own (best effort: a failure is logged,
/// and the next pull tries again).
pub fn close_lost_pulls(settings: &Settings) {
    let end = |opened: &ces_audit::Opened| {
        Event::PullEnd(ces_audit::PullEndEvent {
            pull_id: opened.id.clone(),
            pid: Some(opened.pid),
            reference: opened.reference.clone(),
            outcome: Outcome::SupervisorLost {
                error: "ces ended before the pull did (interrupted, killed or crashed): blobs it verified stay in the store until ces gc".to_owned(),
            },
        })
    };
    match log(settings).close_lost(end) {
        Ok(0) => {}
        Ok(closed) => tracing::info!(closed, "recorded the end of interrupted pulls"),
        Err(error) => tracing::warn!(%error, "cannot record the end of interrupted pulls"),
    }
}

/// What a pull asked for, for its record.
#[derive(Debug)]
pub struct PullAttempt<'a> {
    /// The pull id of its start record, when it got that far.
    pub pull_id: Option<&'a str>,
    /// The reference as given.
    pub reference: &'a str,
    /// The registry, when the reference parsed.
    pub registry: Option<String>,
    /// The registry user, if any.
    pub registry_user: Option<&'a str>,
    /// Where the pulled image came from (on success).
    pub provenance: Option<&'a Provenance>,
    /// The pull proxy it went through, if any.
    pub endpoint: Option<String>,
}

/// Appends a pull's record: `result` is the pulled manifest digest, or the
/// failure (a refused registry is recorded as `refused`).
pub fn record_pull(
    settings: &Settings,
    attempt: PullAttempt<'_>,
    result: Result<Option<&ces_image::Digest>, &anyhow::Error>,
) -> anyhow::Result<()> {
    let (digest, outcome) = match result {
        Ok(digest) => (digest.map(ToString::to_string), Outcome::Ok),
        Err(error) => (None, outcome_of(error)),
    };
    let event = Event::Pull(ces_audit::PullEvent {
        pull_id: attempt.pull_id.map(str::to_owned),
        reference: attempt.reference.to_owned(),
        registry: attempt.registry,
        registry_user: attempt.registry_user.map(str::to_owned),
        digest,
        provenance: attempt.provenance.and_then(recorded_provenance),
        endpoint: attempt.endpoint,
        outcome,
    });
    append(settings, event)
}

/// What a load read, for its record.
#[derive(Debug)]
pub struct LoadAttempt<'a> {
    /// The archive's path as given (`-` for standard input).
    pub path: &'a Path,
    /// Its size, when known.
    pub size: Option<u64>,
    /// The sha256 (hex) of its bytes, when read to the end.
    pub sha256: Option<String>,
}

/// Appends a load's record: `result` is the images the load named (each
/// with its provenance, when it says), or the failure with the images named
/// before it (a load fails after naming only when an image cannot be unpacked).
pub fn record_load(
    settings: &Settings,
    attempt: LoadAttempt<'_>,
    result: Result<&[ces_image::ImageRecord], (&anyhow::Error, &[ces_image::ImageRecord])>,
) -> anyhow::Result<()> {
    let (named, outcome) = match result {
        Ok(named) => (named, Outcome::Ok),
        Err((error, named)) => (named, outcome_of(error)),
    };
    let images = named
        .iter()
        .map(|image| ces_audit::LoadedImage {
            reference: image.reference.to_string(),
            digest: image.digest.to_string(),
            provenance: recorded_provenance(&image.provenance),
        })
        .collect();
    let archive = ces_audit::Archive { path: attempt.path.to_owned(), size: attempt.size, sha256: attempt.sha256 };
    append(settings, Event::Load(ces_audit::LoadEvent { archive, images, outcome }))
}

/// An image's provenance as the audit records it (`None` when it says nothing).
fn recorded_provenance(provenance: &Provenance) -> Option<Box<Provenance>> {
    (!provenance.is_empty()).then(|| Box::new(provenance.clone()))
}

fn outcome_of(error: &anyhow::Error) -> Outcome {
    let message = diagnostics::message(error);
    let refused = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ces_registry::RegistryError>(),
            Some(ces_registry::RegistryError::NotAllowed { .. } | ces_registry::RegistryError::MissingLabel { .. })
        ) || cause.downcast_ref::<crate::run_options::OptionError>().is_some()
            || cause.downcast_ref::<crate::policy::PolicyError>().is_some()
            || cause.downcast_ref::<crate::time_limit::TooLong>().is_some()
            || matches!(
                cause.downcast_ref::<crate::cdi::DeviceError>(),
                Some(
                    crate::cdi::DeviceError::Disabled
                        | crate::cdi::DeviceError::UserNamespace
                        | crate::cdi::DeviceError::Refused { .. }
                        | crate::cdi::DeviceError::TooMany { .. }
                        | crate::cdi::DeviceError::Podman { .. }
                )
            )
            || matches!(
                cause.downcast_ref::<crate::running::StopError>(),
                Some(crate::running::StopError::NameTaken { .. })
            )
    });
    if refused { Outcome::Refused { error: message } } else { Outcome::Error { error: message } }
}

/// A run about to start its container, for its start record.
#[derive(Debug)]
pub struct RunStarting<'a> {
    /// The plan.
    pub spec: &'a RunSpec,
    /// The backend's name.
    pub runtime: &'a str,
    /// Where `/safe_data` came from.
    pub safe_data: &'a SafeData,
    /// Where its image came from.
    pub provenance: &'a Provenance,
    /// The outputs directory.
    pub outputs: &'a Path,
    /// A readiness test (`ces test`), not a run on the TRE's data.
    pub test: bool,
    /// The scheduler's job the run is, if any.
    pub job: Option<&'a ces_audit::Job>,
}

impl RunStarting<'_> {
    /// What the run is, as both its start and its end record it.
    fn setup(&self) -> ces_audit::RunSetup {
        let spec = self.spec;
        ces_audit::RunSetup {
            test: self.test,
            name: spec.name.clone(),
            project: self.safe_data.project.clone(),
            safe_data: safe_data_of(spec, self.safe_data),
            image: ces_audit::Image { reference: spec.image.reference.clone(), digest: spec.image.digest.to_string() },
            provenance: recorded_provenance(self.provenance),
            runtime: self.runtime.to_owned(),
            mounts: mounts_of(spec),
            limits: limits_of(spec),
            env: spec.process.env.iter().map(|v| v.name.clone()).collect(),
            argv: spec.process.args.clone(),
            ports: spec.ports.iter().map(ToString::to_string).collect(),
            job: self.job.cloned(),
            devices: spec
                .devices
                .requested
                .iter()
                .map(|d| ces_audit::Device {
                    name: d.name.clone(),
                    uuid: d.uuid.clone(),
                    spec: d.spec.display().to_string(),
                })
                .collect(),
        }
    }
}

/// Appends a run's start record, before its container starts: the run does
/// not start if this fails. Returns the record.
pub fn record_start(settings: &Settings, start: RunStarting<'_>) -> anyhow::Result<Record> {
    let event = Event::RunStart(Box::new(ces_audit::RunStartEvent {
        run_id: start.spec.id.clone(),
        pid: std::process::id(),
        setup: start.setup(),
        outputs: start.outputs.to_owned(),
    }));
    let record = log(settings)
        .append(current_user(), event)
        .context("the run could not be recorded, so its container was not started")?;
    Ok(record)
}

/// Appends the record of a run handed to a scheduler (`start` says what
/// it is, its `job` the job), with the plan's digest.
pub fn record_submitted(settings: &Settings, start: RunStarting<'_>, plan: &str) -> anyhow::Result<()> {
    let event = Event::RunSubmitted(Box::new(ces_audit::RunSubmittedEvent {
        run_id: start.spec.id.clone(),
        setup: start.setup(),
        plan: plan.to_owned(),
        outcome: Outcome::Ok,
    }));
    append(settings, event).context("the submitted run could not be recorded")
}

/// A run that reached the runtime, for its record.
#[derive(Debug)]
pub struct RunEnd<'a> {
    /// The plan.
    pub spec: &'a RunSpec,
    /// The backend's name.
    pub runtime: &'a str,
    /// Where `/safe_data` came from.
    pub safe_data: &'a SafeData,
    /// When the container was started.
    pub started: Timestamp,
    /// Where its image came from (read from the image's manifest and config
    /// when the run was planned).
    pub provenance: &'a Provenance,
    /// How it ended.
    pub result: &'a Result<Exit, RuntimeError>,
    /// The outputs directory (recorded if it is still there).
    pub outputs: &'a Path,
    /// `sha256:<hex>` of the outputs manifest ces wrote, if it wrote one.
    pub outputs_manifest: Option<String>,
    /// A readiness test (`ces test`), not a run on the TRE's data.
    pub test: bool,
    /// The scheduler's job the run is, if any.
    pub job: Option<&'a ces_audit::Job>,
}

/// Appends a run's record (environment variables by name only): the end of
/// the run whose start [`record_start`] wrote.
pub fn record_run(settings: &Settings, end: RunEnd<'_>) -> anyhow::Result<()> {
    let spec = end.spec;
    let (exit, outcome) = match end.result {
        Ok(exit) => {
            let (signal, oom) = signal_and_oom(*exit);
            let time_limit = matches!(exit, Exit::TimeLimit(_));
            (Some(ces_audit::Exit { code: exit.code(), signal, oom, time_limit }), Outcome::Ok)
        }
        Err(error) => (None, Outcome::Error { error: diagnostics::one_line(error) }),
    };
    let start = RunStarting {
        spec,
        runtime: end.runtime,
        safe_data: end.safe_data,
        provenance: end.provenance,
        outputs: end.outputs,
        test: end.test,
        job: end.job,
    };
    let event = Event::Run(Box::new(ces_audit::RunEvent {
        run_id: spec.id.clone(),
        setup: start.setup(),
        started: end.started,
        ended: Timestamp::now(),
        exit,
        outputs: end.outputs.is_dir().then(|| end.outputs.to_owned()),
        outputs_manifest: end.outputs_manifest,
        outcome,
    }));
    append(settings, event)
}

/// A run whose ces died before it ended, as the next ces start found it.
#[derive(Debug)]
pub struct LostRun<'a> {
    /// Who the run was for (as its start record says).
    pub user: User,
    /// The run id.
    pub run_id: &'a str,
    /// The ces process that ran it, when known.
    pub pid: Option<u32>,
    /// Its outputs directory, when known.
    pub outputs: Option<&'a Path>,
}

/// Appends the end of a run whose ces died (outcome `supervisor_lost`),
/// for the user the run was for.
pub fn record_lost(settings: &Settings, lost: LostRun<'_>) -> anyhow::Result<()> {
    let event = Event::RunEnd(ces_audit::RunEndEvent {
        run_id: lost.run_id.to_owned(),
        pid: lost.pid,
        outputs: lost.outputs.filter(|o| o.is_dir()).map(Path::to_owned),
        outputs_manifest: None,
        outcome: Outcome::SupervisorLost {
            error: "ces ended before the run did (killed or crashed): how its container ended is not known".to_owned(),
        },
    });
    log(settings).append(lost.user, event).context("the end of an interrupted run could not be recorded")?;
    Ok(())
}

/// Appends the end of a run whose start is recorded but whose container
/// was never started (ces failed in between): a `run_end` with the error.
pub fn record_not_run(
    settings: &Settings,
    spec: &RunSpec,
    outputs: &Path,
    error: &anyhow::Error,
) -> anyhow::Result<()> {
    let event = Event::RunEnd(ces_audit::RunEndEvent {
        run_id: spec.id.clone(),
        pid: Some(std::process::id()),
        outputs: outputs.is_dir().then(|| outputs.to_owned()),
        outputs_manifest: None,
        outcome: Outcome::Error { error: format!("the container was not started: {}", diagnostics::message(error)) },
    });
    append(settings, event)
}

/// `/safe_data` as mounted: its real path, mode, and the link it was found through.
fn safe_data_of(spec: &RunSpec, safe_data: &SafeData) -> ces_audit::SafeData {
    let mode = spec
        .mounts
        .iter()
        .find(|m| m.destination == ces_runtime::plan::SAFE_DATA)
        .map_or("ro".to_owned(), |m| m.access.to_string());
    ces_audit::SafeData { path: safe_data.path.clone(), mode, link: safe_data.link.clone() }
}

fn mounts_of(spec: &RunSpec) -> Vec<ces_audit::Mount> {
    spec.mounts
        .iter()
        .map(|m| {
            let (kind, source) = match &m.kind {
                MountKind::Bind { source } => ("bind", Some(source.clone())),
                MountKind::Tmpfs { .. } => ("tmpfs", None),
            };
            ces_audit::Mount {
                destination: m.destination.clone(),
                source,
                kind: kind.to_owned(),
                mode: m.access.to_string(),
            }
        })
        .collect()
}

pub(crate) fn limits_of(spec: &RunSpec) -> ces_audit::Limits {
    let limits = spec.limits;
    ces_audit::Limits {
        memory: limits.memory,
        cpus: limits.cpus,
        pids: limits.pids,
        shm_size: limits.shm_size,
        time_limit: limits.time_limit.map(|d| d.as_secs()),
        rootfs_writes: limits.rootfs_writes,
    }
}

/// Records a run that did not start (refused, or failed before its
/// container was started), and returns the error to report: `error` itself,
/// or, when even the record failed, that failure.
pub fn record_not_started(settings: &Settings, image: Option<String>, error: anyhow::Error) -> anyhow::Error {
    record_job_not_started(settings, image, None, error)
}

/// [`record_not_started`] for a submitted run on its node: with its run id
/// and job, which link the refusal to the submission.
pub fn record_job_not_started(
    settings: &Settings,
    image: Option<String>,
    job: Option<(String, ces_audit::Job)>,
    error: anyhow::Error,
) -> anyhow::Error {
    if error.chain().any(|cause| cause.downcast_ref::<ces_audit::AuditError>().is_some()) {
        return error; // the log itself is the problem
    }
    let (run_id, job) = job.map_or((None, None), |(id, job)| (Some(id), Some(job)));
    let event = Event::RunNotStarted(ces_audit::RunNotStarted { image, run_id, job, outcome: outcome_of(&error) });
    match append(settings, event) {
        Ok(()) => error,
        Err(audit) => audit.context(format!("the run did not start ({})", diagnostics::message(&error))),
    }
}

/// How a container ended, as the audit record and the outputs manifest say
/// it: the signal that killed it (the OOM killer's is SIGKILL), and whether
/// that was for memory.
pub(crate) fn signal_and_oom(exit: Exit) -> (Option<i32>, bool) {
    match exit {
        Exit::Code(_) => (None, false),
        Exit::Signal(signal) => (Some(signal), false),
        Exit::OutOfMemory => (Some(9), true),
        // The signal the workload ended by, after the limit's SIGTERM.
        Exit::TimeLimit(code) => ((code > 128).then_some(code - 128), false),
    }
}

fn append(settings: &Settings, event: Event) -> anyhow::Result<()> {
    log(settings).append(current_user(), event).context("the attempt could not be recorded")?;
    Ok(())
}

/// `ces audit show`: a table, or the records as JSON lines.
pub fn show(settings: &Settings, args: &AuditShowArgs) -> anyhow::Result<()> {
    let log = AuditLog::new(args.file.clone().unwrap_or_else(|| settings.audit_path.clone()));
    let since = args.since.as_deref().map(parse_since).transpose()?;
    // A file the user names is read as the user (under sudo).
    let all = crate::identity::as_invoker_if(args.file.is_some(), || log.records())
        .with_context(|| format!("cannot read {}", log.path().display()))??;
    // Which runs and pulls have ended, from the whole log (the filters may hide an end).
    let ended: std::collections::HashSet<String> = all
        .iter()
        .filter_map(|r| match &r.event {
            Event::Run(_) | Event::RunEnd(_) => r.event.run_id().map(str::to_owned),
            Event::Pull(pull) => pull.pull_id.clone(),
            Event::PullEnd(end) => Some(end.pull_id.clone()),
            _ => None,
        })
        .collect();
    let records: Vec<Record> = all
        .into_iter()
        .filter(|r| args.user.as_deref().is_none_or(|u| r.user.name == u || r.user.uid.to_string() == u))
        .filter(|r| since.is_none_or(|since| r.time >= since))
        .filter(|r| args.image.as_deref().is_none_or(|image| matches_image(&r.event, image)))
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        for record in &records {
            writeln!(out, "{}", serde_json::to_string(record)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<5} {:<20} {:<12} {:<6} {:<40} {:<19} OUTCOME",
        "SEQ", "TIME", "USER", "EVENT", "IMAGE", "DIGEST"
    )?;
    for r in &records {
        let time = r.time.strftime("%Y-%m-%d %H:%M:%S").to_string();
        let digest = r.event.digest().map_or("-".to_owned(), |d| d.chars().take(19).collect());
        writeln!(
            out,
            "{:<5} {time:<20} {:<12} {:<6} {:<40} {digest:<19} {}",
            r.seq,
            r.user.name,
            event_word(&r.event),
            ces_image::quote::escape_message(&image_text(&r.event), ces_audit::MAX_ERROR_TEXT),
            outcome_text(&r.event, &ended)
        )?;
    }
    Ok(())
}

/// The EVENT column: a run that did not start says so in its outcome; a
/// readiness test (`ces test`) is `test`; a run's start is `start`, its end
/// `run` (or `end`, written for it when its ces died).
fn event_word(event: &Event) -> &'static str {
    match event {
        Event::PullStart(_) => "start",
        Event::Pull(_) => "pull",
        Event::PullEnd(_) => "end",
        Event::Load(_) => "load",
        Event::RunStart(_) => "start",
        Event::Run(run) if run.setup.test => "test",
        Event::Run(_) | Event::RunNotStarted(_) => "run",
        Event::RunEnd(_) => "end",
        Event::RunSubmitted(_) => "submit",
        Event::ProxyPull(_) => "proxy",
    }
}

/// The IMAGE column: the reference; for a load, the first image named (and
/// how many more), or the archive when it named none.
fn image_text(event: &Event) -> String {
    match event {
        Event::Load(load) => match load.images.as_slice() {
            [] => format!("archive {}", load.archive.path.display()),
            [one] => one.reference.clone(),
            [first, rest @ ..] => format!("{} (+{} more)", first.reference, rest.len()),
        },
        _ => Some(event.reference()).filter(|s| !s.is_empty()).unwrap_or("-").to_owned(),
    }
}

/// The OUTCOME column; a start says its run id, and whether the log has
/// its end (`ended`: the run ids that have one).
fn outcome_text(event: &Event, ended: &std::collections::HashSet<String>) -> String {
    match (event, event.outcome()) {
        (Event::RunStart(start), _) => {
            let what = if start.setup.test { "test" } else { "run" };
            if ended.contains(&start.run_id) {
                format!("{what} {} started", start.run_id)
            } else {
                format!("{what} {} started: running or lost", start.run_id)
            }
        }
        (Event::Run(run), Outcome::Ok) => match run.exit {
            Some(ces_audit::Exit { oom: true, .. }) => "out of memory".to_owned(),
            Some(ces_audit::Exit { time_limit: true, .. }) => "time limit".to_owned(),
            Some(ces_audit::Exit { signal: Some(signal), .. }) => format!("signal {signal}"),
            Some(exit) => format!("exit {}", exit.code),
            None => "ok".to_owned(),
        },
        (Event::RunEnd(end), outcome) => format!("run {} {}", end.run_id, outcome.word()),
        (Event::PullStart(start), _) => {
            if ended.contains(&start.pull_id) {
                format!("pull {} started", start.pull_id)
            } else {
                format!("pull {} started: running or lost", start.pull_id)
            }
        }
        (Event::PullEnd(end), outcome) => format!("pull {} {}", end.pull_id, outcome.word()),
        (_, Outcome::Ok) => "ok".to_owned(),
        (_, Outcome::Refused { error } | Outcome::Error { error } | Outcome::SupervisorLost { error }) => {
            // Records written before ces bounded them may hold raw control characters.
            let error = ces_image::quote::escape_message(error, ces_audit::MAX_ERROR_TEXT);
            format!("{}: {error}", event.outcome().word())
        }
    }
}

/// `--image`: the reference as given, its repository (any tag), or a digest
/// (prefix); a load matches when any image it named does.
fn matches_image(event: &Event, image: &str) -> bool {
    event.images().into_iter().any(|(reference, digest)| {
        let digest = digest.unwrap_or_default();
        reference == image
            || reference.strip_prefix(image).is_some_and(|rest| rest.starts_with([':', '@']))
            || (image.len() >= 6
                && (digest.starts_with(image) || digest.strip_prefix("sha256:").is_some_and(|d| d.starts_with(image))))
    })
}

/// `--since`: an RFC 3339 time, a date (midnight UTC), or a span back from now (`2h`, `3 days`).
fn parse_since(text: &str) -> anyhow::Result<Timestamp> {
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(time);
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        return Ok(date.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp());
    }
    if let Ok(span) = text.parse::<jiff::Span>() {
        return Ok(Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).checked_sub(span)?.timestamp());
    }
    anyhow::bail!(
        "invalid --since {text:?}: give a time (2026-01-31T09:00:00Z), a date (2026-01-31) or a span (2h, 3 days)"
    )
}

/// `ces audit verify`: 0 when the chain is whole, [`EXIT_BROKEN`] naming the first broken record.
pub fn verify(settings: &Settings, args: &AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    let path: PathBuf = args.file.clone().unwrap_or_else(|| settings.audit_path.clone());
    let report = crate::identity::as_invoker_if(args.file.is_some(), || AuditLog::new(&path).verify())
        .with_context(|| format!("cannot read {}", path.display()))??;
    match report.broken {
        None => {
            println!("{}: {} records, the chain is whole", path.display(), report.records);
            Ok(ExitCode::SUCCESS)
        }
        Some(broken) => {
            eprintln!("error: the audit log {} is broken: {broken}", path.display());
            Ok(ExitCode::from(EXIT_BROKEN))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn since_takes_times_dates_and_spans() {
        assert_eq!(parse_since("2026-01-31T09:00:00Z").unwrap().to_string(), "2026-01-31T09:00:00Z");
        assert_eq!(parse_since("2026-01-31").unwrap().to_string(), "2026-01-31T00:00:00Z");
        let two_hours_ago = parse_since("2h").unwrap();
        let diff = Timestamp::now().duration_since(two_hours_ago).as_secs();
        assert!((7199..=7260).contains(&diff), "{diff}");
        assert!(parse_since("3 days").is_ok());
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn image_filter_matches_reference_repository_and_digest() {
        let event = Event::Pull(ces_audit::PullEvent {
            pull_id: None,
            reference: "ghcr.io/a/b:1".into(),
            registry: Some("ghcr.io".into()),
            registry_user: None,
            digest: Some(format!("sha256:{}", "ab12".repeat(16))),
            provenance: None,
            endpoint: None,
            outcome: Outcome::Ok,
        });
        for yes in ["ghcr.io/a/b:1", "ghcr.io/a/b", "sha256:ab12ab", "ab12ab12"] {
            assert!(matches_image(&event, yes), "{yes}");
        }
        for no in ["ghcr.io/a", "ghcr.io/a/b:2", "ab", "cd12cd12"] {
            assert!(!matches_image(&event, no), "{no}");
        }
    }
}
