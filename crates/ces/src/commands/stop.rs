//! `ces stop RUN|NAME`: stops a run as a `SIGTERM` to its ces would (passed
//! on to the workload, which is killed after the stop timeout if it still
//! runs), then waits for the run to end: its outputs sealed, its scratch
//! removed, its end recorded. A user stops their own runs; root, any.

use std::fs::File;

use anyhow::Context as _;
use rustix::fs::FlockOperation;

use crate::commands::run::record;
use crate::printer::Printer;
use crate::running;
use crate::settings::Settings;

/// Stops the run `query` names (an id, or a name) and waits for its end.
pub fn stop(settings: &Settings, printer: &Printer, query: &str) -> anyhow::Result<()> {
    let runs = record::runs_dir(&settings.storage_root);
    let run = running::find(&runs, query, super::ps::visible_to())?;
    // Opened first: the wait below needs the record, which the run removes as it ends.
    let lock = File::open(runs.join(&run.id).join("lock")).ok();
    running::stop(&run)?;
    printer.status(format!("Stopping run {} (SIGTERM to its ces, pid {})", run.id, run.pid));
    if let Some(lock) = lock {
        // Free once the run's ces has sealed, cleaned up and recorded it.
        rustix::fs::flock(&lock, FlockOperation::LockShared)
            .with_context(|| format!("cannot wait for run {} to end", run.id))?;
    }
    printer.status(format!("Run {} stopped: outputs kept in {}", run.id, run.info.outputs.display()));
    Ok(())
}
