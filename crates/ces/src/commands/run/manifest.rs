//! The outputs manifest and ACRO metadata, written once the container has
//! exited (see `ces_outputs` and docs/governance.md).

use ces_runtime::Identity;

use crate::commands::audit::{self, RunEnd};
use crate::printer::Printer;

/// Seals the run's outputs directory, if it is still there, and returns the
/// manifest's digest for the audit record. A failure is a warning: the
/// container's exit code still passes through, and the audit record then
/// has no manifest digest.
///
/// SIGINT, SIGTERM, SIGHUP and SIGQUIT are still blocked here (they were for the
/// container): the seal reads them from a signalfd between chunks and stops
/// hashing, so ces stays interruptible however large the outputs.
pub fn seal_outputs(
    printer: &Printer,
    budget: &ces_outputs::Budget,
    end: &RunEnd<'_>,
    owner: Option<Identity>,
) -> Option<String> {
    if !end.outputs.is_dir() {
        return None;
    }
    let user = audit::current_user();
    let spec = end.spec;
    let (exit, error) = match end.result {
        Ok(exit) => {
            let (signal, oom) = audit::signal_and_oom(*exit);
            (Some(ces_outputs::Exit { code: exit.code(), signal, oom }), None)
        }
        Err(error) => (None, Some(error.to_string())),
    };
    let run = ces_outputs::RunIdentity {
        id: spec.id.clone(),
        name: spec.name.clone(),
        user: ces_outputs::User { name: user.name, uid: user.uid },
        project: end.safe_data.project.clone(),
        image: ces_outputs::Image { reference: spec.image.reference.clone(), digest: spec.image.digest.to_string() },
        runtime: end.runtime.to_owned(),
        argv: spec.process.args.clone(),
        started: end.started,
        ended: jiff::Timestamp::now(),
        exit,
        error,
    };
    let owner = owner.map(|o| ces_outputs::Owner { uid: o.host_uid, gid: o.host_gid });
    let watch = ces_runtime::native::ForwardedSignals::new().map(Signals);
    if let Err(error) = &watch {
        printer.status(format!("warning: the seal cannot watch for signals: {error}"));
    }
    let interrupt: &dyn ces_outputs::Interrupt = match &watch {
        Ok(watch) => watch,
        Err(_) => &ces_outputs::NoInterrupt,
    };
    let options = ces_outputs::SealOptions { owner, budget: *budget, interrupt };
    match ces_outputs::seal(end.outputs, run, &options) {
        Ok(sealed) => {
            for warning in &sealed.warnings {
                printer.status(format!("warning: {warning}"));
            }
            if let Some(line) = summary(&sealed.report) {
                printer.status(format!("Outputs sealed: {line}"));
            }
            Some(sealed.manifest_digest)
        }
        Err(error) => {
            let message = crate::diagnostics::one_line(&error);
            printer.status(format!("warning: no outputs manifest was written: {message}"));
            None
        }
    }
}

/// What the run's end should say about the seal, when it did more than list
/// and hash: files not hashed, privileges removed.
fn summary(report: &ces_outputs::SealReport) -> Option<String> {
    let files = |n: usize| crate::printer::counted(n as u64, "file");
    let mut parts = Vec::new();
    if report.files_not_hashed > 0 {
        let why = match report.interrupted_by_signal {
            Some(signal) => format!("interrupted by signal {signal}"),
            None => "see ces-manifest.json".to_owned(),
        };
        parts.push(format!("{} not hashed ({why})", files(report.files_not_hashed)));
    }
    if report.files_privileges_removed > 0 {
        parts.push(format!("{} had setuid/setgid/capabilities removed", files(report.files_privileges_removed)));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The signals ces forwards to a container (blocked, so pending until read)
/// cut a seal short.
struct Signals(ces_runtime::native::ForwardedSignals);

impl ces_outputs::Interrupt for Signals {
    fn signal(&self) -> Option<i32> {
        self.0.pending()
    }
}
