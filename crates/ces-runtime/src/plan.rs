//! The run plan's rules: how `ces run`'s inputs (the image config, option
//! files, options, the TRE policy) become one [`RunSpec`]. Pure functions where
//! possible; where the OS must be asked (does a directory exist, what is in the
//! image's `/etc/passwd`), the question is a parameter, so that every rule is
//! unit-tested without a container.
//!
//! The directory contract:
//!
//! | host | container | access |
//! | --- | --- | --- |
//! | `$HOME/safe_data`, else `<safe_data_root>/<project>` | `/safe_data` | policy (`ro` default) |
//! | `<outputs_parent>/outputs_<id>` (new, empty, kept) | `/safe_outputs` | rw |
//! | `<scratch_parent>/scratch_<id>` (new, removed at exit) | `/scratch` | rw |

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ces_image::rootfs::Rootfs;

use crate::spec::{
    Access, ContainerUser, EnvVar, Identity, ImageSpec, Limits, MountKind, MountSpec, ProcessSpec, RunSpec,
};

/// Where the project data is mounted.
pub const SAFE_DATA: &str = "/safe_data";
/// Where the kept outputs are mounted.
pub const SAFE_OUTPUTS: &str = "/safe_outputs";
/// Where the per-run scratch directory is mounted.
pub const SCRATCH: &str = "/scratch";
/// The `PATH` a container gets when its image sets none (as docker and podman).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The memory limit when none is given: 4 GiB (`-m 4`).
pub const DEFAULT_MEMORY: u64 = 4 << 30;
/// The size of `/dev/shm` when none is given (as docker and podman): 64 MiB.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;
/// The process limit when none is given.
pub const DEFAULT_PIDS: i64 = 4096;
/// The capabilities a container keeps (all others are dropped): what a
/// root workload needs to manage its own files and processes, nothing that
/// reaches beyond them (no `NET_RAW`, `MKNOD`, `SYS_CHROOT`, `SETFCAP`...).
/// In a user namespace they apply to the container's own ids only.
pub const CAPABILITIES: &[&str] = &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"];
/// The smallest memory limit a container can start with (as podman: 6 MiB).
pub const MIN_MEMORY: u64 = 6 << 20;

/// A rule of the plan was broken. Messages name the file and line where the
/// input came from one; environment values never appear in them.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A line of an option file is malformed.
    #[error("{}, line {line}: {problem}", file.display())]
    FileLine {
        /// The file.
        file: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong (never the value of a variable).
        problem: String,
    },
    /// An `-e` value is malformed.
    #[error("invalid --env {name:?}: {problem}")]
    EnvArg {
        /// The name part.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A size or a number is malformed.
    #[error("invalid {what} {value:?}: {problem}")]
    Value {
        /// Which option.
        what: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// The image's `USER` cannot be resolved.
    #[error("cannot resolve the image's user {user:?}: {problem}")]
    User {
        /// The `USER` as the image has it.
        user: String,
        /// What is missing.
        problem: String,
    },
    /// No `/safe_data` directory for this user.
    #[error("no safe_data directory found for {who} (looked for: {})", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    SafeDataNotFound {
        /// The user, and the project if one was configured.
        who: String,
        /// Every path looked at, in order.
        looked: Vec<PathBuf>,
    },
    /// A project name that cannot be a directory name.
    #[error("invalid project name {0:?}")]
    BadProject(String),
    /// `$HOME/safe_data` is a directory whose real path cannot be resolved.
    #[error("cannot resolve {}", path.display())]
    SafeDataLink {
        /// `$HOME/safe_data`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Nothing to run.
    #[error("no command: the image sets no entrypoint or cmd, and none was given after the image")]
    NoCommand,
    /// A mount ces cannot allow.
    #[error("cannot mount a tmpfs at {destination:?}: {problem}")]
    Tmpfs {
        /// The destination asked for.
        destination: String,
        /// Why not.
        problem: &'static str,
    },
    /// A working directory that cannot be the container's.
    #[error("the working directory {workdir:?} {problem}")]
    Workdir {
        /// As the image or the command line gave it.
        workdir: String,
        /// Why not.
        problem: &'static str,
    },
}

// ---------------------------------------------------------------------------
// Run ids

/// A new run id: `YYYYMMDD-HHMMSS-xxxxxxxx` (UTC time, then 32 random bits as
/// hex). Sorts by start time, is safe in a file name, and is unique in
/// practice; callers that create a directory named after it use `create_dir`,
/// which fails rather than reuses on the rare collision, and try a new id.
pub fn new_run_id() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // `RandomState` is seeded from the OS's random source once per process
    // and then incremented, so two ids of one process differ too.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    format_run_id(now.as_secs(), hasher.finish() as u32)
}

/// The id of a run started at `unix_secs` with `random` bits.
pub fn format_run_id(unix_secs: u64, random: u32) -> String {
    let start = i64::try_from(unix_secs).ok().and_then(|s| jiff::Timestamp::from_second(s).ok());
    let start = start.unwrap_or(jiff::Timestamp::MAX);
    format!("{}-{random:08x}", start.strftime("%Y%m%d-%H%M%S"))
}

/// Whether `id` has the shape [`format_run_id`] gives (and so is safe to join
/// to a directory: no `/`, no `..`).
pub fn is_run_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 15 => *c == b'-',
            0..=14 => c.is_ascii_digit(),
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

// ---------------------------------------------------------------------------
// Environment and argument files

/// Whether `name` can be an environment variable name: letters, digits, `_`,
/// `.` and `-`, not starting with a digit (what shells and most programs can
/// read back; `=`, whitespace and NUL can never be part of one).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One `NAME=value` or `NAME` entry, as `-e` and env files have it. `NAME`
/// alone takes the value from `host` (ces's own environment), and is dropped
/// when it is not set there, as docker does. Errors never contain the value.
fn env_entry(entry: &str, host: &dyn Fn(&str) -> Option<String>) -> Result<Option<EnvVar>, (String, &'static str)> {
    let (name, value) = match entry.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (entry, None),
    };
    if name.is_empty() {
        return Err((String::new(), "no variable name before '='"));
    }
    if !is_env_name(name) {
        return Err((name.to_owned(), "not a valid variable name (letters, digits, _ . -; not starting with a digit)"));
    }
    if value.is_some_and(|v| v.contains('\0')) {
        return Err((name.to_owned(), "the value contains a NUL byte"));
    }
    Ok(match value {
        Some(value) => Some(EnvVar::new(name, value)),
        None => host(name).map(|value| EnvVar::new(name, value)),
    })
}

/// An `-e NAME[=VALUE]` option.
pub fn parse_env_arg(arg: &str, host: &dyn Fn(&str) -> Option<String>) -> Result<Option<EnvVar>, PlanError> {
    env_entry(arg, host).map_err(|(name, problem)| PlanError::EnvArg { name, problem })
}

/// An env file in the docker/podman format: one `NAME=value` per line, the
/// value taken literally to the end of the line (no quotes, no escapes, no
/// expansion); `NAME` alone takes ces's own value (dropped if unset); lines
/// whose first non-blank character is `#`, and blank lines, are skipped;
/// leading blanks are ignored; a trailing `\r` is dropped.
pub fn parse_env_file(
    text: &str,
    file: &Path,
    host: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<EnvVar>, PlanError> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match env_entry(line, host) {
            Ok(var) => vars.extend(var),
            // Not the name: a line that is no `NAME=value` may be anything
            // (read as an env file, a password file's line is a "name").
            Err((_, problem)) => {
                return Err(PlanError::FileLine { file: file.to_owned(), line: i + 1, problem: problem.to_owned() });
            }
        }
    }
    Ok(vars)
}

/// An argument file: each line is one argument, taken literally (blanks,
/// quotes, `#` and backslashes included); only empty lines are skipped, and a
/// trailing `\r` is dropped. The arguments are appended to the command.
pub fn parse_arg_file(text: &str, file: &Path) -> Result<Vec<String>, PlanError> {
    let mut args = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.contains('\0') {
            return Err(PlanError::FileLine {
                file: file.to_owned(),
                line: i + 1,
                problem: "contains a NUL byte".into(),
            });
        }
        if !line.is_empty() {
            args.push(line.to_owned());
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------
// Sizes

/// A size as docker and podman take it: a number with an optional unit `b`,
/// `k`, `m`, `g` or `t` (powers of 1024; `kb`, `mib`... accepted too); no
/// unit means bytes.
pub fn parse_size(what: &'static str, value: &str) -> Result<u64, PlanError> {
    parse_scaled(what, value, 1)
}

/// A memory limit as `-m` takes it: a number of GiB (`4`, `0.5`), or a size
/// with a unit as podman takes it (`512m`, `2g`).
pub fn parse_memory(value: &str) -> Result<u64, PlanError> {
    let bytes = parse_scaled("memory", value, 1 << 30)?;
    if bytes < MIN_MEMORY {
        return Err(PlanError::Value {
            what: "memory",
            value: value.to_owned(),
            problem: "below the 6 MiB a container needs".into(),
        });
    }
    Ok(bytes)
}

/// A CPU limit in cores (`-c 2`, `-c 0.5`).
pub fn parse_cores(value: &str) -> Result<f64, PlanError> {
    let bad = |problem: &str| PlanError::Value { what: "cores", value: value.to_owned(), problem: problem.into() };
    let cores: f64 = value.trim().parse().map_err(|_| bad("not a number"))?;
    if !cores.is_finite() || cores < 0.01 {
        return Err(bad("must be at least 0.01"));
    }
    Ok(cores)
}

fn parse_scaled(what: &'static str, value: &str, default_unit: u64) -> Result<u64, PlanError> {
    let bad = |problem: &str| PlanError::Value { what, value: value.to_owned(), problem: problem.into() };
    let text = value.trim().to_ascii_lowercase();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" if unit.is_empty() => default_unit,
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad("unknown unit (use b, k, m, g or t)")),
    };
    let number: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let bytes = number * unit as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(bad("out of range"));
    }
    Ok(bytes as u64)
}

// ---------------------------------------------------------------------------
// The image's user

/// The container user, and the home directory its passwd entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid and gid inside the container.
    pub user: ContainerUser,
    /// The home directory from the image's `/etc/passwd` (`/` if none).
    pub home: String,
}

/// Resolves the image's `USER` (`uid`, `uid:gid`, `name`, `name:group`, ...)
/// against the image's own `/etc/passwd` and `/etc/group`, read inside
/// `rootfs` (symbolic links resolved within it, never on the host). Empty:
/// root. A uid alone gets its passwd entry's gid, or 0 without one (docker's rule).
pub fn resolve_user(spec: Option<&str>, rootfs: &Rootfs) -> Result<ResolvedUser, PlanError> {
    /// The largest `/etc/passwd` or `/etc/group` read.
    const MAX_BYTES: u64 = 4 << 20;
    let passwd = rootfs.read_to_string("etc/passwd", MAX_BYTES);
    let group = rootfs.read_to_string("etc/group", MAX_BYTES);
    resolve_user_from(spec.unwrap_or(""), passwd.as_deref().unwrap_or(""), group.as_deref().unwrap_or(""))
}

/// [`resolve_user`] on the text of `/etc/passwd` and `/etc/group`.
pub fn resolve_user_from(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, PlanError> {
    let spec = spec.trim();
    let err = |problem: String| PlanError::User { user: spec.to_owned(), problem };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // name, uid, gid, home
    let entries: Vec<(&str, u32, u32, &str)> = passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some((*f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?, f.get(5).copied().unwrap_or("/")))
        })
        .collect();
    let (uid, passwd_gid, home) = if user_part.is_empty() {
        (0, Some(0), entries.iter().find(|e| e.1 == 0).map_or("/", |e| e.3))
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let entry = entries.iter().find(|e| e.1 == uid);
        (uid, entry.map(|e| e.2), entry.map_or("/", |e| e.3))
    } else {
        let entry = entries
            .iter()
            .find(|e| e.0 == user_part)
            .ok_or_else(|| err(format!("no user {user_part:?} in /etc/passwd")))?;
        (entry.1, Some(entry.2), entry.3)
    };
    let gid = match group_part {
        None | Some("") => passwd_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    (f.first() == Some(&g)).then(|| f.get(2)?.parse::<u32>().ok()).flatten()
                })
                .ok_or_else(|| err(format!("no group {g:?} in /etc/group")))?,
        },
    };
    let home = if home.starts_with('/') { home } else { "/" };
    Ok(ResolvedUser { user: ContainerUser { uid, gid }, home: home.to_owned() })
}

// ---------------------------------------------------------------------------
// /safe_data

/// What [`find_safe_data`] is given.
#[derive(Debug, Clone, Default)]
pub struct SafeDataQuery {
    /// The invoking user's name (for messages).
    pub user: String,
    /// `$HOME`, if set: `$HOME/safe_data` wins when it exists.
    pub home: Option<PathBuf>,
    /// `tre.safe_data_root`: where project directories live.
    pub root: PathBuf,
    /// `tre.project`: the project, when the operator names it.
    pub project: Option<String>,
    /// The user's groups, in `id -Gn` order (primary first).
    pub groups: Vec<String>,
    /// `tre.group_prefix`: groups named `<prefix>-<project>` mean `<project>`.
    /// Without one, any `<word>-<project>` group is tried (after the group's
    /// own name), the prefix being what comes before the first `-`.
    pub group_prefix: Option<String>,
}

/// How `/safe_data` was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SafeData {
    /// The host directory (for `$HOME/safe_data`, its real path: every
    /// symbolic link resolved, so what is mounted is what was judged).
    pub path: PathBuf,
    /// The project, when the directory is a project's: under the data root
    /// (also when `$HOME/safe_data` leads there), not a user's own.
    pub project: Option<String>,
    /// Why this one: `home`, `config` (tre.project) or `group <name>`.
    pub reason: String,
    /// `$HOME/safe_data` when it led elsewhere (a symbolic link in it or above it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<PathBuf>,
}

/// Whether `name` is usable as one directory name under the data root.
pub fn is_project_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Finds the host directory for `/safe_data`: `$HOME/safe_data` if it is a
/// directory; else `<root>/<project>` for the configured project; else the
/// first of the user's groups (in order) that has `<root>/<group>`, or, for a
/// group named `<prefix>-<project>`, `<root>/<project>`. `is_dir` is asked
/// about each candidate; the error lists every one, in order.
pub fn find_safe_data(query: &SafeDataQuery, is_dir: &dyn Fn(&Path) -> bool) -> Result<SafeData, PlanError> {
    let mut looked = Vec::new();
    if let Some(home) = &query.home {
        let path = home.join("safe_data");
        if is_dir(&path) {
            return home_safe_data(path, &query.root);
        }
        looked.push(path);
    }
    if let Some(project) = &query.project {
        if !is_project_name(project) {
            return Err(PlanError::BadProject(project.clone()));
        }
        let path = query.root.join(project);
        if is_dir(&path) {
            return Ok(SafeData { path, project: Some(project.clone()), reason: "config".into(), link: None });
        }
        looked.push(path);
        return Err(PlanError::SafeDataNotFound { who: format!("{} in project {project}", query.user), looked });
    }
    for group in &query.groups {
        let mut candidates = vec![group.as_str()];
        let stripped = match &query.group_prefix {
            Some(prefix) => group.strip_prefix(prefix.as_str()).and_then(|rest| rest.strip_prefix('-')),
            None => group.split_once('-').map(|(_, rest)| rest),
        };
        candidates.extend(stripped);
        for project in candidates {
            if !is_project_name(project) {
                continue;
            }
            let path = query.root.join(project);
            if looked.contains(&path) {
                continue;
            }
            if is_dir(&path) {
                let reason = format!("group {group}");
                return Ok(SafeData { path, project: Some(project.to_owned()), reason, link: None });
            }
            looked.push(path);
        }
    }
    Err(PlanError::SafeDataNotFound { who: format!("{} (groups: {})", query.user, query.groups.join(" ")), looked })
}

/// `$HOME/safe_data`, resolved: a symbolic link to a project's directory
/// (`~/safe_data -> /safe_data/p1`) is that project's data, attributed to it
/// (and given its mode); one that leads anywhere else is no project's. The
/// real path is what gets mounted, so changing the link afterwards changes
/// nothing; but a directory on that path that the user owns (the home
/// itself, for a plain `~/safe_data`) can still be swapped for a link before
/// the runtime mounts it, which the mount follows. A path that does not
/// exist is kept as it is (`is_dir` said it was there: a test's view of the
/// file system). Resolved with ces's credentials: as root, links the user
/// could not follow are followed too.
fn home_safe_data(path: PathBuf, root: &Path) -> Result<SafeData, PlanError> {
    let unchanged = |path| Ok(SafeData { path, project: None, reason: "home".into(), link: None });
    let resolved = match std::fs::canonicalize(&path) {
        Ok(resolved) => resolved,
        Err(_) if std::fs::symlink_metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {
            return unchanged(path);
        }
        Err(source) => return Err(PlanError::SafeDataLink { path, source }),
    };
    if resolved == path {
        return unchanged(path);
    }
    // The root resolved too, so that a data root reached through a link
    // (`/safe_data -> /mnt/tre/data`) still names its projects.
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let project = match resolved.strip_prefix(&root).ok().and_then(|rest| rest.components().next()) {
        Some(Component::Normal(name)) => name.to_str().filter(|name| is_project_name(name)).map(str::to_owned),
        _ => None,
    };
    Ok(SafeData { path: resolved, project, reason: "home link".into(), link: Some(path) })
}

// ---------------------------------------------------------------------------
// The plan

/// What the image's config says about the process.
#[derive(Debug, Clone, Default)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`NAME=value` entries).
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
}

/// What the user asked for about the process (options, option files).
#[derive(Debug, Clone, Default)]
pub struct ProcessRequest {
    /// `--entrypoint`: replaces the image's entrypoint (and, as docker, its
    /// cmd); an empty list clears it.
    pub entrypoint: Option<Vec<String>>,
    /// The arguments after the image: replace the image's cmd when given.
    pub args: Vec<String>,
    /// `--arg-file` lines, appended to the command.
    pub arg_file: Vec<String>,
    /// `--env-file` variables (over the image's).
    pub env_file: Vec<EnvVar>,
    /// `-e` variables (over everything else).
    pub env: Vec<EnvVar>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-t`.
    pub terminal: bool,
    /// `-i`.
    pub interactive: bool,
}

/// The host directories of the contract, already decided (not yet created).
#[derive(Debug, Clone)]
pub struct RunDirs {
    /// The `/safe_data` host directory.
    pub safe_data: PathBuf,
    /// Its access, as policy says.
    pub safe_data_access: Access,
    /// The new `outputs_<id>` directory.
    pub outputs: PathBuf,
    /// The new `scratch_<id>` directory.
    pub scratch: PathBuf,
    /// The backend's private state directory.
    pub state: PathBuf,
}

/// A tmpfs the user asked for (`--mount type=tmpfs,destination=...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsRequest {
    /// Where, inside the container.
    pub destination: String,
    /// Its size limit in bytes.
    pub size: Option<u64>,
}

/// Everything [`build`] needs.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// The run id.
    pub id: String,
    /// `--name`.
    pub name: Option<String>,
    /// The image, pinned.
    pub image: ImageSpec,
    /// Its config.
    pub defaults: ImageDefaults,
    /// The container user, resolved from the image.
    pub user: ResolvedUser,
    /// What the user asked for.
    pub process: ProcessRequest,
    /// The contract's directories.
    pub dirs: RunDirs,
    /// Extra tmpfs mounts.
    pub tmpfs: Vec<TmpfsRequest>,
    /// Limits.
    pub limits: Limits,
    /// The invoking user.
    pub identity: Identity,
}

/// Builds the plan: argv, env (image, then `TMPDIR=/scratch` unless the image
/// sets it, then the env file, then `-e`; a later value wins, the first place
/// a name appeared keeps its position), cwd, and the mounts in order
/// (`/safe_data`, `/safe_outputs`, `/scratch`, then the tmpfs mounts).
pub fn build(request: PlanRequest) -> Result<RunSpec, PlanError> {
    let PlanRequest { id, name, image, defaults, user, process, dirs, tmpfs, limits, identity } = request;

    let (entrypoint, cmd) = match process.entrypoint {
        Some(entrypoint) => (entrypoint, Vec::new()),
        None => (defaults.entrypoint, defaults.cmd),
    };
    let mut args = entrypoint;
    args.extend(if process.args.is_empty() { cmd } else { process.args });
    args.extend(process.arg_file);
    if args.is_empty() {
        return Err(PlanError::NoCommand);
    }

    let image_env: Vec<EnvVar> = defaults
        .env
        .iter()
        .filter_map(|entry| entry.split_once('=').map(|(n, v)| EnvVar::new(n, v)))
        .filter(|var| is_env_name(&var.name))
        .collect();
    let mut defaults_env = Vec::new();
    // With a terminal, `TERM` as docker and podman set it: without one,
    // readline programs (bash, R, python) fall back to a dumb terminal.
    let term = process.terminal.then_some(("TERM", "xterm"));
    for (name, value) in
        [("PATH", DEFAULT_PATH), ("HOME", user.home.as_str()), ("TMPDIR", SCRATCH)].into_iter().chain(term)
    {
        if !image_env.iter().any(|v| v.name == name) {
            defaults_env.push(EnvVar::new(name, value));
        }
    }
    let mut env: Vec<EnvVar> = Vec::new();
    for var in image_env.into_iter().chain(defaults_env).chain(process.env_file).chain(process.env) {
        match env.iter_mut().find(|v| v.name == var.name) {
            Some(existing) => *existing = var,
            None => env.push(var),
        }
    }

    let cwd = process.workdir.or(defaults.workdir.filter(|w| !w.is_empty())).unwrap_or_else(|| "/".to_owned());
    check_workdir(&cwd)?;

    let bind = |destination: &str, source: PathBuf, access| MountSpec {
        destination: destination.to_owned(),
        kind: MountKind::Bind { source },
        access,
    };
    let mut mounts = vec![
        bind(SAFE_DATA, dirs.safe_data, dirs.safe_data_access),
        bind(SAFE_OUTPUTS, dirs.outputs, Access::Rw),
        bind(SCRATCH, dirs.scratch, Access::Rw),
    ];
    for request in tmpfs {
        let destination = check_tmpfs_destination(&request.destination)?;
        if mounts.iter().any(|m| m.destination == destination) {
            return Err(PlanError::Tmpfs { destination, problem: "something is already mounted there" });
        }
        mounts.push(MountSpec { destination, kind: MountKind::Tmpfs { size: request.size }, access: Access::Rw });
    }

    Ok(RunSpec {
        id,
        name,
        image,
        process: ProcessSpec {
            args,
            env,
            cwd,
            user: user.user,
            terminal: process.terminal,
            interactive: process.interactive,
            stop_timeout: ProcessSpec::DEFAULT_STOP_TIMEOUT,
        },
        mounts,
        limits,
        ports: Vec::new(),
        devices: Default::default(),
        identity,
        state_dir: dirs.state,
        pins: Default::default(),
    })
}

/// Refuses a working directory that is not absolute, or that is in `/proc`
/// or `/dev`: `/proc/self/fd/N` (or `/dev/fd/N`, a link to it) would be a
/// descriptor the container's init inherited, a directory of the host
/// (runc's CVE-2024-21626). `..` counts as the kernel takes it. (Links in
/// the image are not resolved here: libcontainer refuses a working
/// directory `getcwd` cannot name, and as root ces's own creation of it,
/// inside the image, fails first.)
fn check_workdir(workdir: &str) -> Result<(), PlanError> {
    let refuse = |problem| Err(PlanError::Workdir { workdir: workdir.to_owned(), problem });
    if !workdir.starts_with('/') {
        return refuse("is not an absolute path");
    }
    let mut parts = Vec::new();
    for component in Path::new(workdir).components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => drop(parts.pop()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if parts.first().is_some_and(|top| *top == "proc" || *top == "dev") {
        return refuse("is in /proc or /dev, the kernel's");
    }
    Ok(())
}

/// A tmpfs may go anywhere but over the contract's directories (it would hide
/// the data or swallow the outputs), the root, or the kernel's `/proc`,
/// `/sys` and `/dev`. Returns the normalized destination.
pub fn check_tmpfs_destination(destination: &str) -> Result<String, PlanError> {
    let err = |problem| PlanError::Tmpfs { destination: destination.to_owned(), problem };
    let path = Path::new(destination);
    if !path.is_absolute() {
        return Err(err("the destination must be an absolute path"));
    }
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_str().ok_or_else(|| err("not UTF-8"))?),
            Component::ParentDir | Component::Prefix(_) => return Err(err("'..' is not allowed")),
        }
    }
    let Some(first) = parts.first() else { return Err(err("it would hide the whole image")) };
    let top = format!("/{first}");
    if [SAFE_DATA, SAFE_OUTPUTS, SCRATCH].contains(&top.as_str()) {
        return Err(err("it would hide a directory of the TRE contract"));
    }
    if ["/proc", "/sys", "/dev"].contains(&top.as_str()) {
        return Err(err("the kernel's file systems are set up by ces"));
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn no_host(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn run_ids_sort_by_time_and_are_safe_names() {
        assert_eq!(format_run_id(0, 0), "19700101-000000-00000000");
        assert_eq!(format_run_id(1_700_000_000, 0xdead_beef), "20231114-221320-deadbeef");
        assert_eq!(format_run_id(951_782_400, 1), "20000229-000000-00000001", "leap day");
        assert!(format_run_id(1_700_000_000, 9) < format_run_id(1_700_000_001, 0));
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(is_run_id(id), "{id}");
        }
        for bad in ["", "../../etc", "20231114-221320-DEADBEEF", "20231114-221320-deadbee/", "20231114_221320-deadbeef"]
        {
            assert!(!is_run_id(bad), "{bad}");
        }
        let many: std::collections::HashSet<String> = (0..1000).map(|_| new_run_id()).collect();
        assert_eq!(many.len(), 1000);
    }

    #[test]
    fn env_file_forms() {
        let host = |name: &str| (name == "FROM_HOST").then(|| "host value".to_owned());
        let text = "# comment\n\n  A=1\nB=two words \"quoted\" 'x'\nC=\nD==x=\nFROM_HOST\nUNSET_ON_HOST\n  # indented comment\nE=x\r\nX.y-z=1\n";
        let vars = parse_env_file(text, Path::new("env.txt"), &host).unwrap();
        let got: Vec<(String, String)> = vars.iter().map(|v| (v.name.clone(), v.value().to_owned())).collect();
        let want = [
            ("A", "1"),
            ("B", "two words \"quoted\" 'x'"),
            ("C", ""),
            ("D", "=x="),
            ("FROM_HOST", "host value"),
            ("E", "x"),
            ("X.y-z", "1"),
        ];
        assert_eq!(got, want.map(|(n, v)| (n.to_owned(), v.to_owned())));
    }

    #[test]
    fn env_file_bad_lines_name_file_and_line_but_not_the_value() {
        for (text, line, needle) in [
            ("A=1\n=secret\n", 2, "no variable name"),
            ("A=1\n\n# c\n1A=secret\n", 4, "not a valid variable name"),
            // A password file's line: no `=`, all of it would be the "name".
            ("root:$y$j9T$secret:19000:0:99999:7:::\n", 1, "not a valid variable name"),
            ("A B=secret\n", 1, "not a valid variable name"),
            ("A=1\nfoo bar\n", 2, "not a valid variable name"),
            ("A=sec\0ret\n", 1, "NUL"),
        ] {
            let e = parse_env_file(text, Path::new("/x/env.txt"), &no_host).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("/x/env.txt, line {line}: ")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
            assert!(!msg.contains("secret") && !msg.contains("sec") && !msg.contains("1A"), "text leaked: {msg}");
        }
    }

    #[test]
    fn env_args() {
        let host = |name: &str| (name == "H").then(|| "hv".to_owned());
        assert_eq!(parse_env_arg("A=b=c", &no_host).unwrap().unwrap().value(), "b=c");
        assert_eq!(parse_env_arg("H", &host).unwrap().unwrap().value(), "hv");
        assert!(parse_env_arg("NOPE", &host).unwrap().is_none());
        let e = parse_env_arg("=secret", &no_host).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(parse_env_arg("9X=1", &no_host).is_err());
    }

    #[test]
    fn arg_file_lines_are_literal() {
        let text = "--flag\n\ntwo words\n  'quoted' \"x\" \\n # not a comment\n#hash\nlast\r\n";
        assert_eq!(
            parse_arg_file(text, Path::new("a")).unwrap(),
            ["--flag", "two words", "  'quoted' \"x\" \\n # not a comment", "#hash", "last"]
        );
        let e = parse_arg_file("ok\nb\0d\n", Path::new("args.txt")).unwrap_err().to_string();
        assert_eq!(e, "args.txt, line 2: contains a NUL byte");
    }

    #[test]
    fn sizes_and_limits() {
        assert_eq!(parse_memory("4").unwrap(), 4 << 30);
        assert_eq!(parse_memory("0.5").unwrap(), 512 << 20);
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("2G").unwrap(), 2 << 30);
        assert_eq!(parse_memory("1.5gb").unwrap(), 3 << 29);
        for bad in ["", "x", "-1", "0", "0.001", "4q", "1e400"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("shm-size", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("shm-size", "1000").unwrap(), 1000);
        assert_eq!(parse_size("shm-size", "1k").unwrap(), 1024);
        assert_eq!(parse_size("shm-size", "2MiB").unwrap(), 2 << 20);
        assert!(parse_size("shm-size", "m").is_err());
        assert_eq!(parse_cores("1.5").unwrap(), 1.5);
        assert!(parse_cores("0").is_err());
        assert!(parse_cores("NaN").is_err());
        assert!(parse_cores("two").is_err());
    }

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\nnohome:x:1002:1002::relative:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1001:\nstaff:x:50:app\n";

    #[test]
    fn image_user_forms() {
        let user = |spec: &str| resolve_user_from(spec, PASSWD, GROUP).map(|r| (r.user.uid, r.user.gid, r.home));
        assert_eq!(user("").unwrap(), (0, 0, "/root".into()));
        assert_eq!(user("app").unwrap(), (1000, 1001, "/home/app".into()));
        assert_eq!(user("1000").unwrap(), (1000, 1001, "/home/app".into()));
        assert_eq!(user("1000:50").unwrap(), (1000, 50, "/home/app".into()));
        assert_eq!(user("app:staff").unwrap(), (1000, 50, "/home/app".into()));
        assert_eq!(user("4242").unwrap(), (4242, 0, "/".into()), "unknown uid: gid 0, home /");
        assert_eq!(user("4242:7").unwrap(), (4242, 7, "/".into()));
        assert_eq!(user("nohome").unwrap(), (1002, 1002, "/".into()));
        assert!(user("ghost").unwrap_err().to_string().contains("no user \"ghost\" in /etc/passwd"));
        assert!(user("app:ghosts").unwrap_err().to_string().contains("no group \"ghosts\""));
    }

    #[test]
    fn image_user_is_read_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/passwd"), PASSWD).unwrap();
        // An absolute link resolves inside the rootfs, not on the host.
        std::os::unix::fs::symlink("/real/passwd", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../real/../etc/group-host", root.join("etc/group")).unwrap();
        std::fs::write(dir.path().join("etc-group-host"), "app:x:77:\n").unwrap();
        let tree = Rootfs::Tree(root.clone());
        let read_in_root = |path: &str| tree.read_to_string(path, 4 << 20);
        let r = resolve_user(Some("app"), &tree).unwrap();
        assert_eq!((r.user.uid, r.user.gid), (1000, 1001));
        assert!(resolve_user(Some("app:app"), &tree).is_err(), "group file outside the rootfs was not read");
        // A link to a host path that exists on the host only.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("etc/passwd")).unwrap();
        assert!(read_in_root("etc/passwd").is_none());
        // Link loops end.
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(read_in_root("loop").is_none());
        assert_eq!(resolve_user(None, &tree).unwrap().user, ContainerUser { uid: 0, gid: 0 });
    }

    fn query(home: Option<&str>, project: Option<&str>, groups: &[&str], prefix: Option<&str>) -> SafeDataQuery {
        SafeDataQuery {
            user: "alice".into(),
            home: home.map(PathBuf::from),
            root: PathBuf::from("/data"),
            project: project.map(str::to_owned),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            group_prefix: prefix.map(str::to_owned),
        }
    }

    fn existing(dirs: &'static [&'static str]) -> impl Fn(&Path) -> bool {
        move |p: &Path| dirs.iter().any(|d| Path::new(d) == p)
    }

    #[test]
    fn safe_data_home_wins() {
        let found = find_safe_data(
            &query(Some("/home/alice"), Some("p1"), &["p1"], None),
            &existing(&["/home/alice/safe_data", "/data/p1"]),
        )
        .unwrap();
        assert_eq!(
            found,
            SafeData { path: "/home/alice/safe_data".into(), project: None, reason: "home".into(), link: None }
        );
    }

    #[test]
    fn safe_data_first_group_in_order_with_a_directory() {
        let q = query(Some("/home/alice"), None, &["alice", "users", "p2", "p1"], None);
        let found = find_safe_data(&q, &existing(&["/data/p1", "/data/p2"])).unwrap();
        assert_eq!(found.path, Path::new("/data/p2"));
        assert_eq!(found.project.as_deref(), Some("p2"));
        assert_eq!(found.reason, "group p2");
    }

    #[test]
    fn safe_data_prefix_forms() {
        // Without a configured prefix: the group's own name, then what follows its first '-'.
        let q = query(None, None, &["alice", "tre-p7", "x"], None);
        let found = find_safe_data(&q, &existing(&["/data/p7"])).unwrap();
        assert_eq!((found.path.as_path(), found.reason.as_str()), (Path::new("/data/p7"), "group tre-p7"));
        let q = query(None, None, &["tre-p7"], None);
        assert_eq!(
            find_safe_data(&q, &existing(&["/data/tre-p7", "/data/p7"])).unwrap().path,
            Path::new("/data/tre-p7")
        );
        let q = query(None, None, &["a-b-c"], None);
        assert_eq!(find_safe_data(&q, &existing(&["/data/b-c"])).unwrap().path, Path::new("/data/b-c"));
        // With one: only that prefix is stripped.
        let q = query(None, None, &["other-p7", "tre-p8"], Some("tre"));
        let found = find_safe_data(&q, &existing(&["/data/p7", "/data/p8"])).unwrap();
        assert_eq!(found.path, Path::new("/data/p8"));
    }

    /// `~/safe_data -> <root>/<project>[/sub]` is that project's data;
    /// a link anywhere else is no project's. Either way the real path is
    /// what is mounted, and the link is named.
    #[test]
    fn safe_data_home_link_is_attributed_to_the_project_it_leads_to() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let (root, home, elsewhere) = (base.join("data"), base.join("home"), base.join("elsewhere"));
        for d in [root.join("p1/sub"), home.clone(), elsewhere.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        let link = home.join("safe_data");
        let find = || {
            let q = SafeDataQuery { home: Some(home.clone()), root: root.clone(), ..Default::default() };
            find_safe_data(&q, &|p: &Path| p.is_dir()).unwrap()
        };
        for (target, project) in [(root.join("p1"), "p1"), (root.join("p1/sub"), "p1")] {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let found = find();
            let expected = SafeData {
                path: target.clone(),
                project: Some(project.into()),
                reason: "home link".into(),
                link: Some(link.clone()),
            };
            assert_eq!(found, expected);
        }
        // Relative, and through `..`: still resolved against the real tree.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("../data/./p1", &link).unwrap();
        assert_eq!(find().project.as_deref(), Some("p1"));
        // Outside the root (and the root itself): no project, the real path named.
        for target in [elsewhere.clone(), root.clone()] {
            std::fs::remove_file(&link).unwrap();
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let found = find();
            assert_eq!((found.path, found.project, found.link), (target, None, Some(link.clone())));
        }
        // A name under the root that only looks like it (`data-other`) is not in it.
        let sibling = base.join("data-p1");
        std::fs::create_dir(&sibling).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&sibling, &link).unwrap();
        assert_eq!(find().project, None);
        // A real directory stays as it was.
        std::fs::remove_file(&link).unwrap();
        std::fs::create_dir(&link).unwrap();
        assert_eq!(find(), SafeData { path: link, project: None, reason: "home".into(), link: None });
    }

    #[test]
    fn safe_data_configured_project() {
        let q = query(Some("/home/alice"), Some("p9"), &["p1"], None);
        let found = find_safe_data(&q, &existing(&["/data/p1", "/data/p9"])).unwrap();
        assert_eq!((found.path.as_path(), found.reason.as_str()), (Path::new("/data/p9"), "config"));
        // The configured project is the only one tried.
        let e = find_safe_data(&q, &existing(&["/data/p1"])).unwrap_err().to_string();
        assert_eq!(
            e,
            "no safe_data directory found for alice in project p9 (looked for: /home/alice/safe_data, /data/p9)"
        );
        assert!(matches!(
            find_safe_data(&query(None, Some("../etc"), &[], None), &existing(&[])),
            Err(PlanError::BadProject(_))
        ));
    }

    #[test]
    fn safe_data_not_found_lists_every_place() {
        let q = query(Some("/home/alice"), None, &["alice", "tre-p1", "..", "alice"], None);
        let e = find_safe_data(&q, &existing(&[])).unwrap_err().to_string();
        assert_eq!(
            e,
            "no safe_data directory found for alice (groups: alice tre-p1 .. alice) (looked for: /home/alice/safe_data, /data/alice, /data/tre-p1, /data/p1)"
        );
    }

    fn request() -> PlanRequest {
        PlanRequest {
            id: "20231114-221320-deadbeef".into(),
            name: None,
            image: ImageSpec {
                reference: "ghcr.io/a/b:1".into(),
                digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
                rootfs: ces_image::rootfs::Rootfs::Tree("/store/rootfs/aaaa".into()),
            },
            defaults: ImageDefaults {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["default-cmd".into()],
                env: vec!["PATH=/img/bin".into(), "A=image".into(), "B=image".into(), "broken".into()],
                workdir: Some("/work".into()),
            },
            user: ResolvedUser { user: ContainerUser { uid: 1000, gid: 1000 }, home: "/home/app".into() },
            process: ProcessRequest::default(),
            dirs: RunDirs {
                safe_data: "/data/p1".into(),
                safe_data_access: Access::Ro,
                outputs: "/home/alice/outputs_x".into(),
                scratch: "/home/alice/scratch_x".into(),
                state: "/store/runs/x/state".into(),
            },
            tmpfs: Vec::new(),
            limits: Limits {
                memory: DEFAULT_MEMORY,
                cpus: None,
                pids: Some(DEFAULT_PIDS),
                shm_size: DEFAULT_SHM_SIZE,
                time_limit: None,
                rootfs_writes: None,
            },
            identity: Identity { host_uid: 1000, host_gid: 1000 },
        }
    }

    fn env_of(spec: &RunSpec) -> Vec<String> {
        spec.process.env.iter().map(EnvVar::to_env_string).collect()
    }

    #[test]
    fn argv_rules() {
        let spec = build(request()).unwrap();
        assert_eq!(spec.process.args, ["/entry", "default-cmd"]);
        assert_eq!(spec.process.cwd, "/work");

        let mut r = request();
        r.process.args = vec!["x".into(), "-y".into()];
        r.process.arg_file = vec!["from file".into()];
        assert_eq!(build(r).unwrap().process.args, ["/entry", "x", "-y", "from file"]);

        let mut r = request();
        r.process.entrypoint = Some(vec!["/bin/sh".into()]);
        assert_eq!(build(r).unwrap().process.args, ["/bin/sh"], "--entrypoint drops the image's cmd (docker)");

        let mut r = request();
        r.process.entrypoint = Some(Vec::new());
        r.process.args = vec!["ls".into()];
        r.process.workdir = Some("/tmp".into());
        let spec = build(r).unwrap();
        assert_eq!((spec.process.args, spec.process.cwd.as_str()), (vec!["ls".to_owned()], "/tmp"));

        let mut r = request();
        r.defaults = ImageDefaults::default();
        assert!(matches!(build(r.clone()), Err(PlanError::NoCommand)));
        r.process.arg_file = vec!["only-from-file".into()];
        let spec = build(r).unwrap();
        assert_eq!((spec.process.args, spec.process.cwd.as_str()), (vec!["only-from-file".to_owned()], "/"));

        let mut r = request();
        r.process.workdir = Some("relative".into());
        assert!(matches!(build(r), Err(PlanError::Workdir { problem: "is not an absolute path", .. })));
        for kernel in
            ["/proc/self/fd/7", "/dev/fd/3", "/proc", "/a/../proc/1/cwd", "/./dev//fd/3", "/../../proc/self/fd/4"]
        {
            let mut r = request();
            r.process.workdir = Some(kernel.into());
            let err = build(r).unwrap_err();
            assert!(err.to_string().contains("is in /proc or /dev, the kernel's"), "{kernel}: {err}");
        }
        for fine in ["/work", "/procedures", "/data/proc", "/devices/../work", "/sys/kernel"] {
            let mut r = request();
            r.process.workdir = Some(fine.into());
            assert_eq!(build(r).unwrap().process.cwd, fine);
        }
    }

    #[test]
    fn env_precedence_image_then_file_then_flags() {
        let mut r = request();
        r.process.env_file = vec![EnvVar::new("B", "file"), EnvVar::new("C", "file"), EnvVar::new("TMPDIR", "/f")];
        r.process.env = vec![EnvVar::new("C", "flag"), EnvVar::new("D", "flag")];
        let spec = build(r).unwrap();
        assert_eq!(
            env_of(&spec),
            ["PATH=/img/bin", "A=image", "B=file", "HOME=/home/app", "TMPDIR=/f", "C=flag", "D=flag"]
        );
        let spec = build(request()).unwrap();
        assert_eq!(env_of(&spec), ["PATH=/img/bin", "A=image", "B=image", "HOME=/home/app", "TMPDIR=/scratch"]);
        let mut r = request();
        r.defaults.env = vec!["TMPDIR=/var/tmp".into(), "HOME=/h".into()];
        assert_eq!(env_of(&build(r).unwrap()), ["TMPDIR=/var/tmp", "HOME=/h", format!("PATH={DEFAULT_PATH}").as_str()]);
    }

    #[test]
    fn a_terminal_gets_term_unless_the_image_or_user_sets_it() {
        let mut r = request();
        r.process.terminal = true;
        assert!(env_of(&build(r).unwrap()).contains(&"TERM=xterm".to_owned()));
        let mut r = request();
        r.process.terminal = true;
        r.process.env = vec![EnvVar::new("TERM", "screen")];
        let env = env_of(&build(r).unwrap());
        assert!(env.contains(&"TERM=screen".to_owned()) && !env.contains(&"TERM=xterm".to_owned()), "{env:?}");
        assert!(!env_of(&build(request()).unwrap()).iter().any(|v| v.starts_with("TERM=")));
    }

    #[test]
    fn mounts_in_order_with_modes() {
        let mut r = request();
        r.dirs.safe_data_access = Access::Rw;
        r.tmpfs = vec![TmpfsRequest { destination: "/cache//x/".into(), size: Some(1 << 20) }];
        let spec = build(r).unwrap();
        let got: Vec<(String, String, Access)> = spec
            .mounts
            .iter()
            .map(|m| {
                let what = match &m.kind {
                    MountKind::Bind { source } => source.display().to_string(),
                    MountKind::Tmpfs { size } => format!("tmpfs {size:?}"),
                };
                (m.destination.clone(), what, m.access)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/safe_data".into(), "/data/p1".into(), Access::Rw),
                ("/safe_outputs".into(), "/home/alice/outputs_x".into(), Access::Rw),
                ("/scratch".into(), "/home/alice/scratch_x".into(), Access::Rw),
                ("/cache/x".into(), "tmpfs Some(1048576)".into(), Access::Rw),
            ]
        );
        assert_eq!(spec.state_dir, Path::new("/store/runs/x/state"));
    }

    #[test]
    fn tmpfs_cannot_cover_the_contract_or_the_kernel() {
        for bad in ["/", "relative", "/safe_data", "/safe_outputs/x", "/scratch", "/proc", "/sys/fs", "/dev", "/a/../b"]
        {
            assert!(check_tmpfs_destination(bad).is_err(), "{bad}");
        }
        assert_eq!(check_tmpfs_destination("/tmp/./x/").unwrap(), "/tmp/x");
        assert_eq!(check_tmpfs_destination("/safe_data_copy").unwrap(), "/safe_data_copy");
        let mut r = request();
        r.tmpfs = vec![
            TmpfsRequest { destination: "/t".into(), size: None },
            TmpfsRequest { destination: "/t/".into(), size: None },
        ];
        assert!(matches!(build(r), Err(PlanError::Tmpfs { .. })));
    }
}
