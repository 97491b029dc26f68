//! The outputs manifest and ACRO metadata, written once the container has
//! exited (see `ces_outputs` and docs/governance.md).

use ces_runtime::Identity;

use crate::commands::audit::{self, RunEnd};
use crate::printer::Printer;

/// Seals the run's outputs directory, if it is still there, and returns the
/// manifest's digest for the audit record. A failure is a warning: the
/// container's exit code still passes through, and the audit record then
/// has no manifest digest.
pub fn seal_outputs(printer: &Printer, end: &RunEnd<'_>, owner: Option<Identity>) -> Option<String> {
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
    match ces_outputs::seal(end.outputs, run, owner) {
        Ok(sealed) => {
            for warning in &sealed.warnings {
                printer.status(format!("warning: {warning}"));
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
