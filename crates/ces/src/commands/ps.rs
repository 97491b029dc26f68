//! `ces ps`: the runs in progress (see [`crate::running`]): the user's own
//! (under sudo, the user who ran sudo); root's, everyone's.

use std::io::Write as _;

use crate::commands::audit;
use crate::commands::run::record;
use crate::printer::{gib, human_bytes};
use crate::running::{self, Running};
use crate::settings::Settings;

/// Lists the running runs: a table, or with `json` one JSON array.
pub fn ps(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let runs = running::list(&record::runs_dir(&settings.storage_root), visible_to());
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&runs)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<26} {:<16} {:<8} {:>8} {:<20} {:<28} LIMITS / PORTS",
        "RUN", "NAME", "USER", "PID", "STARTED", "IMAGE"
    )?;
    for run in &runs {
        writeln!(
            out,
            "{:<26} {:<16} {:<8} {:>8} {:<20} {:<28} {}",
            run.id,
            run.info.name.as_deref().unwrap_or("-"),
            run.user.name,
            run.pid,
            run.info.started.get(..19).unwrap_or(&run.info.started),
            run.info.image,
            limits(run),
        )?;
    }
    Ok(())
}

/// Whose runs the caller sees: root of the host (not through sudo), all.
pub(crate) fn visible_to() -> Option<u32> {
    let user = audit::current_user();
    let root = crate::identity::caller() == crate::identity::Caller::HostRoot && user.uid == 0;
    (!root).then_some(user.uid)
}

fn limits(run: &Running) -> String {
    let l = &run.info.limits;
    let mut parts = vec![format!("mem {}", gib(l.memory))];
    if let Some(cpus) = l.cpus {
        parts.push(format!("cpus {cpus}"));
    }
    if let Some(limit) = l.time_limit {
        parts.push(format!("time {}", crate::time_limit::show(std::time::Duration::from_secs(limit))));
    }
    parts.push(format!("shm {}", human_bytes(l.shm_size)));
    if !run.info.ports.is_empty() {
        parts.push(format!("ports {}", run.info.ports.join(",")));
    }
    parts.join(", ")
}
