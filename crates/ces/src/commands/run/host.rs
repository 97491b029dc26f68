//! Who ces runs for: the invoking user (under sudo, the user who ran sudo),
//! their groups in `id -Gn` order, and their home.

use std::path::PathBuf;

use ces_runtime::Identity;

/// The invoking user.
#[derive(Debug, Clone)]
pub struct Invoker {
    /// Host uid and gid the container's user is mapped to.
    pub identity: Identity,
    /// Their name (for messages and `id -Gn`).
    pub name: String,
    /// Their home: under sudo, the user database's; otherwise `$HOME`, if set.
    pub home: Option<PathBuf>,
    /// Whether ces runs as root for them (`SUDO_UID`).
    pub via_sudo: bool,
}

/// The invoking user: as root of the host with `SUDO_UID` (and `SUDO_GID`)
/// set, that user, named and homed by the user database (not by `$HOME`,
/// which the caller sets: `[tre] outputs_parent` and `scratch_parent` can
/// name the directories instead); otherwise the real uid and gid (in a user
/// namespace, its own ids, which are what its kernel maps; `SUDO_*` is
/// ignored there, as anyone can set it) and `$HOME`.
pub fn invoker() -> anyhow::Result<Invoker> {
    if let Some(user) = crate::identity::sudo_user()? {
        return Ok(Invoker {
            identity: Identity { host_uid: user.uid, host_gid: user.gid },
            name: user.name.clone(),
            home: user.home.clone(),
            via_sudo: true,
        });
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| uid.to_string());
    Ok(Invoker { identity: Identity { host_uid: uid, host_gid: gid }, name, home, via_sudo: false })
}

/// The user's groups, as `id -Gn` lists them (primary first): under sudo,
/// the database's groups of the user who ran it; otherwise this process's.
pub fn groups(invoker: &Invoker) -> anyhow::Result<Vec<String>> {
    crate::identity::groups(invoker.via_sudo.then_some(invoker.name.as_str()))
}
