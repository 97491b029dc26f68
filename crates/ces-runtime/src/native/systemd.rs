//! A transient systemd scope for a rootless ces, asked of the user's own
//! service manager (`systemd --user`, in `user@UID.service`) over D-Bus, as
//! podman and crun do.
//!
//! On a systemd host with cgroup v2, a user's processes live in cgroups the
//! user does not own (`session-N.scope` for a login) and may not move
//! processes out of; only the subtree of `user@UID.service` is delegated to
//! the user. The user manager can start a scope there with any of the
//! user's processes in it, moving them itself (asking PID 1 where the
//! kernel wants more than the user has): ces asks for a scope holding ces
//! itself, with `Delegate=yes`, and then creates its containers' cgroups
//! inside it. systemd removes the scope (and what ces left in it) once ces
//! has exited.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zbus::Variant;

/// How long the D-Bus call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long systemd gets to start the scope and move ces into it.
const SCOPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no scope could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScopeError {
    /// No user manager to ask (no session bus): not a systemd login, no
    /// lingering user manager, or no `dbus-user-session`.
    #[error("no systemd user manager is reachable ({0})")]
    NoManager(String),
    /// The manager refused or failed.
    #[error("systemd could not start the scope {unit}: {reason}")]
    Failed { unit: String, reason: String },
    /// The scope started but ces is not in it.
    #[error("systemd started the scope {unit}, but ces was not moved into it within {0:?}", SCOPE_TIMEOUT)]
    NotMoved { unit: String },
}

/// The user's session bus, through which the user manager is reached. Its
/// private socket (`$XDG_RUNTIME_DIR/systemd/private`) needs no bus daemon,
/// but systemd signs replies there with its well-known name, which zbus
/// refuses as a sender.
fn session_bus() -> Option<String> {
    if let Some(address) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
        return Some(address.to_string_lossy().into_owned());
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")?;
    let path = Path::new(&dir).join("bus");
    path.exists().then(|| format!("unix:path={}", path.display()))
}

/// Whether a user manager looks reachable (for the dry-run plan: nothing is
/// asked of it).
pub(crate) fn manager_reachable() -> bool {
    session_bus().is_some()
}

/// Starts `unit` (a `.scope` name) with this process in it and
/// `Delegate=yes`, and waits until the kernel shows this process in it.
/// Returns this process's new cgroup (v2 path, like `/user.slice/.../unit`).
pub(crate) fn start_scope(unit: &str, description: &str) -> Result<PathBuf, ScopeError> {
    let failed = |reason: String| ScopeError::Failed { unit: unit.to_owned(), reason };
    let pid = std::process::id();
    // A runtime of its own, on a thread of its own: the caller may or may
    // not be inside one.
    let call = {
        let (unit, description) = (unit.to_owned(), description.to_owned());
        std::thread::spawn(move || -> Result<(), ScopeError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ScopeError::NoManager(format!("cannot start an async runtime: {e}")))?;
            // Connecting and authenticating are not under zbus's method
            // timeout: a bus that accepts and never answers must not hang ces.
            // (The timer is made inside the runtime, which it needs.)
            let call =
                async { tokio::time::timeout(CALL_TIMEOUT, call_start_transient_unit(&unit, &description, pid)).await };
            runtime.block_on(call).unwrap_or_else(|_| {
                Err(ScopeError::Failed { unit: unit.clone(), reason: format!("no answer within {CALL_TIMEOUT:?}") })
            })
        })
    };
    call.join().map_err(|_| failed("the D-Bus call panicked".to_owned()))??;
    let deadline = Instant::now() + SCOPE_TIMEOUT;
    loop {
        if let Ok(own) = super::cgroups::own_v2_cgroup()
            && own.file_name().is_some_and(|name| name == unit)
        {
            return Ok(own);
        }
        if Instant::now() > deadline {
            return Err(ScopeError::NotMoved { unit: unit.to_owned() });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn connect() -> Result<zbus::Connection, ScopeError> {
    let Some(address) = session_bus() else {
        return Err(ScopeError::NoManager(
            "no session bus: neither $DBUS_SESSION_BUS_ADDRESS nor $XDG_RUNTIME_DIR/bus (package dbus-user-session)"
                .to_owned(),
        ));
    };
    // The user's own bus is a Unix socket; anything else (tcp:, a launcher)
    // is not where a user manager listens.
    if !address.starts_with("unix:") {
        return Err(ScopeError::NoManager(format!("the session bus {address} is not a Unix socket")));
    }
    zbus::connection::Builder::address(address.as_str())
        .method_timeout(Duration::from_secs(20))
        .build()
        .await
        .map_err(|e| ScopeError::NoManager(format!("the session bus {address}: {e}")))
}

async fn call_start_transient_unit(unit: &str, description: &str, pid: u32) -> Result<(), ScopeError> {
    let connection = connect().await?;
    let properties: Vec<(&str, Variant)> = vec![
        ("Description", Variant::from(description)),
        ("PIDs", Variant::from(vec![pid])),
        ("Delegate", Variant::from(true)),
        // Gone once empty, failed or not: no unit is left behind per run.
        ("CollectMode", Variant::from("inactive-or-failed")),
    ];
    let auxiliary: Vec<(&str, Vec<(&str, Variant)>)> = Vec::new();
    connection
        .call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "StartTransientUnit",
            &(unit, "fail", properties, auxiliary),
        )
        .await
        .map(drop)
        .map_err(|e| ScopeError::Failed { unit: unit.to_owned(), reason: e.to_string() })
}
