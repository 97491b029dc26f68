//! `ces outputs verify DIR`: is a run's outputs directory still what the run
//! left? The directory is walked again and compared with its
//! `ces-manifest.json`; the manifest must be the one of the run the
//! directory is named after (`outputs_<id>`), and its digest the one the
//! audit log recorded for that run (see docs/governance.md).

use std::io::Write as _;

use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

use ces_audit::{AuditLog, Event};
use ces_image::quote::{quote, quote_path};

use crate::cli::OutputsVerifyArgs;
use crate::settings::Settings;

/// Exit code when the directory or its manifest changed, or cannot be
/// vouched for (ces's own failures are 125).
pub const EXIT_CHANGED: u8 = 1;

/// What the audit log says about the manifest.
enum Logged {
    /// A record of the run carries this digest (record seq).
    Matches(u64),
    /// The run's records carry another digest (last record seq, its digest).
    Differs(u64, Option<String>),
    /// No record of this run.
    NoRecord,
}

/// `ces outputs verify`: 0 when the directory matches its manifest, every
/// file was hashed, the manifest is its directory's run's, and the audit log
/// recorded it; [`EXIT_CHANGED`] naming each difference otherwise.
pub fn verify(settings: &Settings, args: &OutputsVerifyArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    // A path the user names: under sudo, read with their credentials.
    let check = crate::identity::as_invoker(|| ces_outputs::verify(dir))
        .with_context(|| format!("cannot verify {}", quote_path(dir)))??;
    // Every name below comes from the container or the manifest file (which
    // the container could have written): an escape sequence in one could
    // erase or rewrite the very lines a reviewer reads, so each is quoted.
    let run_id = &check.manifest.run.id;
    let shown_id = quote(run_id);
    let shown_dir = quote_path(dir);

    let mut out = std::io::stdout().lock();
    for path in &check.added {
        writeln!(out, "added:   {}", quote(path))?;
    }
    for change in &check.changed {
        writeln!(out, "changed: {} ({})", quote(&change.path), change.what.join(", "))?;
    }
    for path in &check.removed {
        writeln!(out, "removed: {}", quote(path))?;
    }
    for (path, why) in &check.unverified {
        writeln!(out, "unverified: {} ({})", quote(path), quote(why))?;
    }
    out.flush()?;
    // The manifest names its run; the directory must be that run's.
    let expected = format!("outputs_{run_id}");
    // Its own name, also when given as `.` or `..` (verify has opened it:
    // the last component is no link, so resolving it names that directory).
    let name = std::fs::canonicalize(dir).ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    if name.as_deref() != Some(expected.as_str()) {
        eprintln!(
            "error: {} holds the manifest of run {shown_id}, whose outputs directory is named {}",
            shown_dir,
            quote(&expected)
        );
        eprintln!(
            "hint: verify a run's outputs under their own name; a manifest copied from another run proves nothing"
        );
        return Ok(ExitCode::from(EXIT_CHANGED));
    }
    if !check.matches() {
        eprintln!(
            "error: {} changed since run {shown_id}: {} added, {} changed, {} removed",
            shown_dir,
            check.added.len(),
            check.changed.len(),
            check.removed.len()
        );
        return Ok(ExitCode::from(EXIT_CHANGED));
    }
    if !check.unverified.is_empty() {
        eprintln!(
            "error: {} files in {} cannot be verified: run {shown_id}'s seal did not hash them (see ces-manifest.json)",
            check.unverified.len(),
            shown_dir
        );
        eprintln!("hint: an operator can raise [outputs] hash_budget_bytes and hash_budget_seconds for later runs");
        return Ok(ExitCode::from(EXIT_CHANGED));
    }

    let entries = check.manifest.entries.len();
    let plural = if entries == 1 { "entry" } else { "entries" };
    if args.no_audit {
        writeln!(out, "note: the audit log was not read (--no-audit): nothing vouches for the manifest itself")?;
        writeln!(out, "{} matches its manifest: run {shown_id}, {entries} {plural}", shown_dir)?;
        return Ok(ExitCode::SUCCESS);
    }
    // The operator's log as ces itself; a copy the user names, as the user.
    let log_path: PathBuf = args.audit_file.clone().unwrap_or_else(|| settings.audit_path.clone());
    let read = || AuditLog::new(&log_path).records().map_err(anyhow::Error::from);
    let records =
        crate::identity::as_invoker_if(args.audit_file.is_some(), read).map_err(anyhow::Error::from).and_then(|r| r);
    let records = match records {
        Ok(records) => records,
        Err(error) => {
            let message = crate::diagnostics::one_line(error.as_ref());
            eprintln!(
                "error: cannot read the audit log {} to check run {shown_id}'s manifest: {message}",
                quote_path(&log_path)
            );
            eprintln!(
                "hint: pass --audit-file with a copy of the log, or --no-audit to check the directory against its manifest only"
            );
            return Ok(ExitCode::from(EXIT_CHANGED));
        }
    };
    match logged(&records, run_id, &check.manifest_digest) {
        Logged::Matches(seq) => writeln!(
            out,
            "the manifest ({}) is the one the audit log {} recorded for run {shown_id} (record seq {seq})",
            check.manifest_digest,
            quote_path(&log_path)
        )?,
        Logged::Differs(seq, recorded) => {
            eprintln!(
                "error: the manifest was changed since run {shown_id}: its digest is {}, the audit log {} (record seq {seq}) recorded {}",
                check.manifest_digest,
                quote_path(&log_path),
                recorded.as_deref().map_or_else(|| "no manifest".to_owned(), |r| quote(r).to_string())
            );
            return Ok(ExitCode::from(EXIT_CHANGED));
        }
        Logged::NoRecord => {
            eprintln!(
                "error: the audit log {} has no record of run {shown_id}: nothing vouches for its manifest",
                quote_path(&log_path)
            );
            eprintln!("hint: pass --audit-file with the log the run was recorded in (see [audit] path in the config)");
            return Ok(ExitCode::from(EXIT_CHANGED));
        }
    }
    writeln!(out, "{} matches its manifest: run {shown_id}, {entries} {plural}", shown_dir)?;
    Ok(ExitCode::SUCCESS)
}

/// Looks for a run record of `run_id` carrying `digest` (any of them, should
/// there be several records of the run).
fn logged(records: &[ces_audit::Record], run_id: &str, digest: &str) -> Logged {
    let mut last = None;
    for record in records {
        if let Event::Run(run) = &record.event
            && run.run_id == run_id
        {
            if run.outputs_manifest.as_deref() == Some(digest) {
                return Logged::Matches(record.seq);
            }
            last = Some((record.seq, run.outputs_manifest.clone()));
        }
    }
    match last {
        Some((seq, recorded)) => Logged::Differs(seq, recorded),
        None => Logged::NoRecord,
    }
}
