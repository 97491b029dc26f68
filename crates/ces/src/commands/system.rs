//! `ces system setup`: the operator step (as root) that prepares what rootless
//! runs need: a cgroup per user, delegated to that user, so that `-m`/`-c`
//! limits can be enforced without root. `ces system gpus`: the devices this
//! host's CDI specs offer, and which the user may use.

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

/// `ces system gpus`: every CDI device of this host's specs, whether the
/// user may use it, and the specs that could not be used.
pub fn gpus(settings: &crate::settings::Settings, json: bool) -> anyhow::Result<()> {
    let config = &settings.gpu;
    let registry = crate::cdi::Registry::read(&config.spec_dirs);
    let user = crate::identity::policy_user()?;
    let host_root = crate::identity::caller() == crate::identity::Caller::HostRoot && user.uid == 0;
    let groups = || crate::identity::policy_groups(&user);
    let usable = crate::cdi::usable(config, &registry, &user, host_root, &groups)?;
    let mut out = std::io::stdout().lock();
    use std::io::Write as _;
    if json {
        let devices: Vec<serde_json::Value> = usable
            .iter()
            .map(|(name, yours)| {
                serde_json::json!({
                    "name": name,
                    "uuid": registry.uuid_of(name),
                    "spec": registry.spec_of(name),
                    "usable": yours,
                    "gpu": registry.of_kind(&config.kind).contains(name),
                })
            })
            .collect();
        let problems: Vec<serde_json::Value> =
            registry.problems.iter().map(|(path, why)| serde_json::json!({"path": path, "problem": why})).collect();
        let value = serde_json::json!({
            "enabled": config.enabled,
            "kind": config.kind,
            "max_per_run": config.max_per_run,
            "spec_dirs": config.spec_dirs,
            "user": user.name,
            "devices": devices,
            "problems": problems,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    let dirs: Vec<String> = config.spec_dirs.iter().map(|d| d.display().to_string()).collect();
    if config.enabled {
        let max = config.max_per_run.map(|m| format!(", at most {m} per run")).unwrap_or_default();
        writeln!(out, "Devices are enabled; --gpu means {}{max}. Specs from {}.", config.kind, dirs.join(", "))?;
    } else {
        writeln!(out, "Devices are not enabled on this host ([gpu] enabled). Specs from {}.", dirs.join(", "))?;
    }
    if usable.is_empty() {
        writeln!(out, "No CDI device found.")?;
    } else {
        let width = usable.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(6);
        writeln!(
            out,
            "{:width$}  {:5}  {:40}  SPEC",
            "DEVICE",
            format!("{}?", user.name).chars().take(5).collect::<String>(),
            "UUID"
        )?;
        for (name, yours) in &usable {
            let uuid = registry.uuid_of(name).unwrap_or_else(|| "-".to_owned());
            let spec = registry.spec_of(name).map(|p| p.display().to_string()).unwrap_or_default();
            writeln!(out, "{name:width$}  {:5}  {uuid:40}  {spec}", if *yours { "yes" } else { "no" })?;
        }
    }
    for (path, problem) in &registry.problems {
        writeln!(out, "not used: {}: {problem}", ces_image::quote::quote_path(path))?;
    }
    Ok(())
}
