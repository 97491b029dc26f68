//! `ces outputs verify DIR`: is a run's outputs directory still what the run
//! left? The directory is walked again and compared with its
//! `ces-manifest.json`, and the manifest's digest with the one the audit
//! log recorded for that run (see docs/governance.md).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use ces_audit::{AuditLog, Event};

use crate::cli::OutputsVerifyArgs;
use crate::settings::Settings;

/// Exit code when the directory or its manifest changed (ces's own failures are 125).
pub const EXIT_CHANGED: u8 = 1;

/// What the audit log says about the manifest.
enum Logged {
    /// The digest recorded for the run matches (record seq).
    Matches(u64),
    /// The digest recorded differs (record seq, recorded digest).
    Differs(u64, Option<String>),
    /// No record of this run (or the log cannot be read: why).
    Unknown(String),
}

/// `ces outputs verify`: 0 when the directory matches its manifest (and the
/// manifest the audit log), [`EXIT_CHANGED`] naming each difference.
pub fn verify(settings: &Settings, args: &OutputsVerifyArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let check = ces_outputs::verify(dir)?;
    let run_id = &check.manifest.run.id;
    let log_path: PathBuf = args.audit_file.clone().unwrap_or_else(|| settings.audit_path.clone());
    let logged = logged(&log_path, run_id, &check.manifest_digest);

    let mut out = std::io::stdout().lock();
    for path in &check.added {
        writeln!(out, "added:   {path}")?;
    }
    for change in &check.changed {
        writeln!(out, "changed: {} ({})", change.path, change.what.join(", "))?;
    }
    for path in &check.removed {
        writeln!(out, "removed: {path}")?;
    }
    let mut broken = false;
    if !check.matches() {
        broken = true;
        eprintln!(
            "error: {} changed since run {run_id}: {} added, {} changed, {} removed",
            dir.display(),
            check.added.len(),
            check.changed.len(),
            check.removed.len()
        );
    }
    match logged {
        Logged::Matches(seq) => writeln!(
            out,
            "the manifest ({}) is the one the audit log {} recorded for run {run_id} (record seq {seq})",
            check.manifest_digest,
            log_path.display()
        )?,
        Logged::Differs(seq, recorded) => {
            broken = true;
            eprintln!(
                "error: the manifest was changed since run {run_id}: its digest is {}, the audit log {} (record seq {seq}) recorded {}",
                check.manifest_digest,
                log_path.display(),
                recorded.as_deref().unwrap_or("no manifest")
            );
        }
        Logged::Unknown(why) => {
            writeln!(out, "note: {why}: the manifest itself ({}) could not be checked", check.manifest_digest)?
        }
    }
    if broken {
        return Ok(ExitCode::from(EXIT_CHANGED));
    }
    let entries = check.manifest.entries.len();
    let plural = if entries == 1 { "entry" } else { "entries" };
    writeln!(out, "{} matches its manifest: run {run_id}, {entries} {plural}", dir.display())?;
    Ok(ExitCode::SUCCESS)
}

/// Looks up the run's record (the last one, should there be several).
fn logged(path: &std::path::Path, run_id: &str, digest: &str) -> Logged {
    let records = match AuditLog::new(path).records() {
        Ok(records) => records,
        Err(error) => {
            let message = crate::diagnostics::one_line(&error);
            return Logged::Unknown(format!("cannot read the audit log {}: {message}", path.display()));
        }
    };
    let found = records.iter().rev().find_map(|r| match &r.event {
        Event::Run(run) if run.run_id == run_id => Some((r.seq, run.outputs_manifest.clone())),
        _ => None,
    });
    match found {
        Some((seq, Some(recorded))) if recorded == digest => Logged::Matches(seq),
        Some((seq, recorded)) => Logged::Differs(seq, recorded),
        None => Logged::Unknown(format!("the audit log {} has no record of run {run_id}", path.display())),
    }
}
