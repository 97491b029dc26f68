//! `ces system setup`: the operator step (as root) that prepares what rootless
//! runs need: a cgroup per user, delegated to that user, so that `-m`/`-c`
//! limits can be enforced without root.

use anyhow::{Context as _, bail};

use crate::printer::Printer;

/// Delegates cgroups to each user (names or numeric ids).
pub fn setup(printer: &Printer, users: &[String]) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("ces system setup must run as root (it creates and delegates cgroups)");
    }
    if users.is_empty() {
        bail!("name the users to prepare: ces system setup --user NAME [--user NAME...]");
    }
    for user in users {
        let (uid, gid) = resolve(user)?;
        let delegation = ces_runtime::native::setup_delegation(uid, gid)
            .with_context(|| format!("cannot prepare rootless limits for {user}"))?;
        printer.status(format!("Prepared rootless limits for {user} (uid {uid}) on {}:", delegation.hierarchy));
        for cgroup in &delegation.cgroups {
            println!("{}", cgroup.display());
        }
    }
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && std::path::Path::new("/run/systemd/system").exists()
    {
        printer.status(
            "note: this host runs systemd with cgroup v2: rootless runs get their cgroups from each user's \
             systemd (user@UID.service) without this step; what it prepared serves only a ces started inside it",
        );
    }
    Ok(())
}

/// uid and primary gid of a user name or numeric id, as `id` reports them.
fn resolve(user: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = crate::identity::id_command().args([flag, "--", user]).output().context("cannot run id")?;
        if !out.status.success() {
            bail!("no such user {user:?}");
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("id printed no number for {user:?}"))
    };
    Ok((id("-u")?, id("-g")?))
}
