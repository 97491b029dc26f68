//! Bind mounts that the operator's policy allows (`-v SRC:DST[:ro|rw]`,
//! `--mount type=bind,src=SRC,dst=DST[,ro]`).
//!
//! None without `[run] bind_roots`. With it, a user may bind a directory of
//! their own (owned by them) that lies under one of the roots, at any path of
//! the container but `/`, the TRE contract's directories and the kernel's
//! file systems. The source is resolved as the user (under sudo, with their
//! credentials: root must not find, through a link of theirs, a directory
//! they could not reach): its real path must lie under a root's real path,
//! and it is then opened again from that root with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so that no link, however
//! placed, leads outside the roots at the time of the check. The real path
//! is what the plan, the audit record and the backend get.
//!
//! Known gap (as for `/safe_data`): the backend mounts the real path by
//! name, later; a user who swaps one of its directories for a link in
//! between is not stopped. Rootless, the mount is made with the user's own
//! credentials (nothing they could not reach anyway); as root, with the
//! container user's (the same user).

use std::path::{Component, Path, PathBuf};

use ces_runtime::{Access, MountKind, MountSpec};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use crate::commands::run::host::Invoker;
use crate::policy::PolicyError;

/// A bind mount as asked for (not yet checked against the policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    /// The host directory, as given (relative: to the current directory).
    pub source: String,
    /// The path in the container.
    pub destination: String,
    /// Read-only (`:ro`, `,ro`) or read-write (the default).
    pub access: Access,
}

/// Why a bind is refused (a [`PolicyError::Bind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// `[run] bind_roots` is empty.
    NotAllowed,
    /// The source is not a directory that exists (for the user).
    Missing,
    /// Its real path is not under any root.
    OutsideRoots,
    /// A link leads out of the roots (or one was swapped in while checked).
    Link,
    /// The user does not own it.
    NotOwned,
    /// Not a directory.
    NotDirectory,
    /// The destination is `/`, the contract's, or the kernel's.
    Destination,
    /// Something else is mounted there already.
    Taken,
}

impl Problem {
    /// The reason, as the error says it.
    pub fn reason(self) -> &'static str {
        match self {
            Problem::NotAllowed => "bind mounts are not allowed on this machine",
            Problem::Missing => "the source directory does not exist (or you cannot reach it)",
            Problem::OutsideRoots => "the source is not under a directory that [run] bind_roots allows",
            Problem::Link => "a symbolic link in the source leads outside the allowed directories",
            Problem::NotOwned => "the source directory is not yours",
            Problem::NotDirectory => "the source is not a directory",
            Problem::Destination => {
                "it cannot go at /, /safe_data, /safe_outputs, /scratch, /proc, /sys or /dev (or under them)"
            }
            Problem::Taken => "something is already mounted there",
        }
    }
}

/// `-v SRC:DST[:ro|rw]`: the docker/podman form (`z`, `Z` and other
/// podman options are refused: none of them is needed here).
pub fn parse_volume(value: &str) -> Result<BindRequest, &'static str> {
    let mut parts = value.splitn(3, ':');
    let (Some(source), Some(destination)) = (parts.next(), parts.next()) else {
        return Err("give SRC:DST[:ro|rw] (a named volume is not allowed)");
    };
    let access = match parts.next() {
        None | Some("rw") => Access::Rw,
        Some("ro") => Access::Ro,
        Some(_) => return Err("the only options are ro and rw"),
    };
    bind_request(source, destination, access)
}

/// `--mount type=bind,...`'s fields other than `type`: `source`/`src`,
/// `destination`/`dst`/`target`, `ro`/`readonly` (`=true`/`=false`), `rw`.
pub fn parse_mount_fields<'a>(fields: impl Iterator<Item = &'a str>) -> Result<BindRequest, &'static str> {
    let (mut source, mut destination, mut access) = (None, None, Access::Rw);
    for field in fields {
        let (key, val) = field.split_once('=').map_or((field, None), |(k, v)| (k, Some(v)));
        match (key, val) {
            ("type", _) => {}
            ("source" | "src", Some(v)) => source = Some(v),
            ("destination" | "dst" | "target", Some(v)) => destination = Some(v),
            ("ro" | "readonly", None | Some("true" | "1")) => access = Access::Ro,
            ("ro" | "readonly", Some("false" | "0")) | ("rw", None) => access = Access::Rw,
            _ => return Err("a bind takes only source, destination and ro"),
        }
    }
    let (Some(source), Some(destination)) = (source, destination) else {
        return Err("a bind needs a source and a destination");
    };
    bind_request(source, destination, access)
}

fn bind_request(source: &str, destination: &str, access: Access) -> Result<BindRequest, &'static str> {
    if source.is_empty() || destination.is_empty() {
        return Err("the source and the destination cannot be empty");
    }
    if !source.contains('/') && !source.starts_with('.') {
        return Err("a named volume is not allowed: give a directory's path (./NAME for one here)");
    }
    Ok(BindRequest { source: source.to_owned(), destination: destination.to_owned(), access })
}

/// The policy's roots, as real paths (found as the user; a root that does
/// not exist for them is left out). `$HOME` is the user's home (from the
/// user database under sudo).
fn roots(configured: &[String], invoker: &Invoker) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for root in configured {
        let path = match root.strip_prefix("$HOME") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => match &invoker.home {
                Some(home) => PathBuf::from(format!("{}{rest}", home.display())),
                None => continue,
            },
            _ => PathBuf::from(root),
        };
        if !path.is_absolute() {
            continue;
        }
        if let Ok(Ok(real)) = crate::identity::as_invoker(|| std::fs::canonicalize(&path)) {
            roots.push(real);
        }
    }
    roots
}

/// Checks each bind against the policy and resolves its source (see the
/// module's doc); `cwd` is where relative sources start. Each comes with the
/// source directory as it was checked, held open (`O_PATH`): root mounts
/// that one (see [`ces_runtime::Pins`]).
pub fn resolve(
    requests: &[BindRequest],
    bind_roots: &[String],
    invoker: &Invoker,
    cwd: &Path,
) -> Result<Vec<(MountSpec, std::sync::Arc<rustix::fd::OwnedFd>)>, PolicyError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let roots = roots(bind_roots, invoker);
    let mut mounts: Vec<(MountSpec, std::sync::Arc<rustix::fd::OwnedFd>)> = Vec::new();
    for request in requests {
        let refuse = |problem| PolicyError::Bind {
            bind: request.source.clone(),
            destination: request.destination.clone(),
            problem,
        };
        if bind_roots.is_empty() {
            return Err(refuse(Problem::NotAllowed));
        }
        let destination = ces_runtime::plan::check_tmpfs_destination(&request.destination)
            .map_err(|_| refuse(Problem::Destination))?;
        if mounts.iter().any(|(m, _)| m.destination == destination) {
            return Err(refuse(Problem::Taken));
        }
        let source = cwd.join(&request.source);
        let uid = invoker.identity.host_uid;
        let (real, pin) = crate::identity::as_invoker(|| check_source(&source, &roots, uid))
            .map_err(|_| refuse(Problem::Missing))?
            .map_err(refuse)?;
        mounts.push((
            MountSpec { destination, kind: MountKind::Bind { source: real }, access: request.access },
            std::sync::Arc::new(pin),
        ));
    }
    Ok(mounts)
}

/// As the user: the source's real path, checked to lie under a root, opened
/// from that root without following any link, and owned by `uid`; with it,
/// the directory so opened.
fn check_source(source: &Path, roots: &[PathBuf], uid: u32) -> Result<(PathBuf, rustix::fd::OwnedFd), Problem> {
    let real = std::fs::canonicalize(source).map_err(|_| Problem::Missing)?;
    let (root, relative) = roots
        .iter()
        .find_map(|root| real.strip_prefix(root).ok().map(|rel| (root, rel)))
        .ok_or(Problem::OutsideRoots)?;
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Problem::Link);
    }
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root_fd = rustix::fs::open(root, flags, Mode::empty()).map_err(|_| Problem::Missing)?;
    let relative = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let fd = rustix::fs::openat2(
        &root_fd,
        relative,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::XDEV { Problem::Link } else { Problem::Missing }
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|_| Problem::Missing)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err(Problem::NotDirectory);
    }
    if stat.st_uid != uid {
        return Err(Problem::NotOwned);
    }
    Ok((real, fd))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn volume_forms() {
        let b = parse_volume("./pgdata:/var/lib/postgresql").unwrap();
        assert_eq!(
            (b.source.as_str(), b.destination.as_str(), b.access),
            ("./pgdata", "/var/lib/postgresql", Access::Rw)
        );
        assert_eq!(parse_volume("/d:/x:ro").unwrap().access, Access::Ro);
        for bad in ["/d", "named:/x", "/d:/x:z", "/d:/x:ro,z", ":/x", "/d:"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        let m = parse_mount_fields("type=bind,src=/d,dst=/x,readonly".split(',')).unwrap();
        assert_eq!((m.source.as_str(), m.destination.as_str(), m.access), ("/d", "/x", Access::Ro));
        assert!(parse_mount_fields("type=bind,src=/d,dst=/x,bind-propagation=shared".split(',')).is_err());
        assert!(parse_mount_fields("type=bind,dst=/x".split(',')).is_err());
    }

    fn invoker(home: &Path) -> Invoker {
        let uid = rustix::process::getuid().as_raw();
        Invoker {
            identity: ces_runtime::Identity { host_uid: uid, host_gid: rustix::process::getgid().as_raw() },
            name: "me".into(),
            home: Some(home.to_owned()),
            via_sudo: false,
        }
    }

    fn problem(e: PolicyError) -> Problem {
        match e {
            PolicyError::Bind { problem, .. } => problem,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn sources_must_be_under_a_root_and_reached_without_leaving_it() {
        let dir = tempfile::tempdir().unwrap();
        let (home, outside) = (dir.path().join("home"), dir.path().join("outside"));
        std::fs::create_dir_all(home.join("data/sub")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, home.join("escape")).unwrap();
        std::os::unix::fs::symlink(home.join("data"), home.join("inside")).unwrap();
        std::fs::write(home.join("file"), "x").unwrap();
        let me = invoker(&home);
        let roots = vec!["$HOME".to_owned()];
        let req =
            |src: &str, dst: &str| BindRequest { source: src.into(), destination: dst.into(), access: Access::Rw };
        let ok = resolve(&[req("data", "/data"), req("inside/sub", "/sub")], &roots, &me, &home).unwrap();
        assert_eq!(ok[0].0.kind, MountKind::Bind { source: std::fs::canonicalize(home.join("data")).unwrap() });
        assert_eq!(ok[1].0.kind, MountKind::Bind { source: std::fs::canonicalize(home.join("data/sub")).unwrap() });
        for (request, expected) in [
            (req("escape", "/x"), Problem::OutsideRoots),
            (req(outside.to_str().unwrap(), "/x"), Problem::OutsideRoots),
            (req("nope", "/x"), Problem::Missing),
            (req("file", "/x"), Problem::NotDirectory),
            (req("data", "/safe_outputs"), Problem::Destination),
            (req("data", "/scratch/x"), Problem::Destination),
            (req("data", "/"), Problem::Destination),
            (req("data", "/proc/x"), Problem::Destination),
            (req("data", "relative"), Problem::Destination),
        ] {
            let e = resolve(std::slice::from_ref(&request), &roots, &me, &home).unwrap_err();
            assert_eq!(problem(e), expected, "{request:?}");
        }
        let e = resolve(&[req("data", "/x")], &[], &me, &home).unwrap_err();
        assert_eq!(problem(e), Problem::NotAllowed);
        let e = resolve(&[req("data", "/x"), req("data/sub", "/x/")], &roots, &me, &home).unwrap_err();
        assert_eq!(problem(e), Problem::Taken);
    }
}
