//! `ces run`'s options, wherever they come from: the command line, and
//! `--opt-file` files parsed with the same clap definitions, line by line.
//!
//! Policy, not a back door: the options ces takes cannot widen what a
//! container reaches. The podman/docker options that would (`--privileged`,
//! `--network`, `-v`, a bind `--mount`...) are refused by name wherever they
//! appear, naming the file and line; options ces does not know are refused
//! too. An error about a file names the file, the line and the word, never
//! the text: the file may hold what its reader must not print (read as root,
//! `/etc/shadow` is refused for not being options, not printed). Under sudo
//! the files are read with the user's own credentials. On the command line `-v` is `--verbose` (the reference service's
//! meaning); in an option file, which holds podman options, it is `--volume`.

use std::path::{Path, PathBuf};

use clap::{Args, Parser};

/// The options of `ces run` and `ces-run` that an option file may carry too.
#[derive(Debug, Clone, Default, Args, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RunOptions {
    /// CPU limit, in cores (decimals allowed).
    #[arg(short = 'c', long = "cores", value_name = "N")]
    pub cores: Option<String>,
    /// Memory limit in GiB (decimals allowed), or a size such as 512m [default: 4]
    #[arg(short = 'm', long = "memory", value_name = "GB")]
    pub memory: Option<String>,
    /// A name for the run (shown with it; letters, digits, _ . -).
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
    /// Read environment variables from FILE (NAME=value lines, docker format).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Append FILE's lines to the command, one argument per line.
    #[arg(long = "arg-file", value_name = "FILE")]
    pub arg_file: Vec<PathBuf>,
    /// Read more run options from FILE (shell-quoted, any number per line).
    #[arg(long = "opt-file", value_name = "FILE")]
    pub opt_file: Vec<PathBuf>,
    /// Print the complete plan and exit; nothing is created or run.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// The runtime backend [default: native]
    #[arg(long = "runtime", value_name = "RUNTIME", value_parser = crate::cli::RUNTIMES)]
    pub runtime: Option<String>,
    /// Give the container GPUs: every one the policy lets you use, or some by index or UUID (--gpu 0,1).
    #[arg(long = "gpu", value_name = "GPUS", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub gpu: Option<String>,
    /// Give the container a device by its CDI name (e.g. nvidia.com/gpu=0; `ces system gpus` lists them).
    #[arg(long = "device", value_name = "CDI-NAME")]
    pub device: Vec<String>,
    /// Set an environment variable (NAME alone takes ces's own value).
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// The working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Replace the image's entrypoint (a JSON array for several words; "" for none).
    #[arg(long = "entrypoint", value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Size of /dev/shm (e.g. 256m) [default: 64m]
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Add a tmpfs (type=tmpfs,destination=PATH[,tmpfs-size=SIZE]) or, where [run] bind_roots allows, a bind (type=bind,src=DIR,dst=PATH[,ro]).
    #[arg(long = "mount", value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Bind a directory of yours, where [run] bind_roots allows it: SRC:DST[:ro|rw] (in option files, -v).
    #[arg(long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// Stop the run after this long (e.g. 90s, 30m, 6h, 1h30m), as a SIGTERM to ces would; exit code 124.
    #[arg(long = "time-limit", value_name = "DURATION")]
    pub time_limit: Option<String>,
    /// Allocate a terminal.
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Keep standard input open.
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Publish a container port on the host's loopback: [127.0.0.1:|[::1]:]HOSTPORT:CONTAINERPORT[/tcp].
    #[arg(short = 'p', long = "publish", value_name = "[ADDR:]HOSTPORT:PORT")]
    pub publish: Vec<String>,
    /// Publish a container port as a Unix socket (mode 0600, yours): PATH:CONTAINERPORT.
    #[arg(long = "publish-socket", value_name = "PATH:PORT")]
    pub publish_socket: Vec<String>,
    /// Machine-readable output: a JSON line on stdout before the container
    /// starts and one after it ends (with --dry-run, the plan as JSON).
    #[arg(long = "json")]
    pub json: bool,
    /// With --runtime slurm: wait for the job, print its output and exit with its code.
    #[arg(long = "wait")]
    pub wait: bool,
    /// With --runtime slurm: a job array, one run per index (0-9, 1,3,5, 0-99:10; %N at most N at once);
    /// each container gets its index in CES_ARRAY_TASK_ID.
    #[arg(long = "array", value_name = "INDEXES")]
    pub array: Option<String>,
}

impl RunOptions {
    /// These options, then `later`'s over them: a value given later wins;
    /// lists (env, files, mounts) add up; a flag set anywhere stays set.
    pub fn then(self, later: RunOptions) -> RunOptions {
        fn cat<T>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
            a.extend(b);
            a
        }
        RunOptions {
            cores: later.cores.or(self.cores),
            memory: later.memory.or(self.memory),
            name: later.name.or(self.name),
            env_file: cat(self.env_file, later.env_file),
            arg_file: cat(self.arg_file, later.arg_file),
            opt_file: cat(self.opt_file, later.opt_file),
            dry_run: self.dry_run || later.dry_run,
            runtime: later.runtime.or(self.runtime),
            gpu: later.gpu.or(self.gpu),
            device: cat(self.device, later.device),
            env: cat(self.env, later.env),
            workdir: later.workdir.or(self.workdir),
            entrypoint: later.entrypoint.or(self.entrypoint),
            shm_size: later.shm_size.or(self.shm_size),
            mount: cat(self.mount, later.mount),
            volume: cat(self.volume, later.volume),
            time_limit: later.time_limit.or(self.time_limit),
            tty: self.tty || later.tty,
            interactive: self.interactive || later.interactive,
            publish: cat(self.publish, later.publish),
            publish_socket: cat(self.publish_socket, later.publish_socket),
            json: self.json || later.json,
            wait: self.wait || later.wait,
            array: later.array.or(self.array),
        }
    }
}

/// One line of an option file, parsed with the same definitions.
#[derive(Debug, Parser)]
#[command(no_binary_name = true, disable_help_flag = true, disable_version_flag = true)]
struct OptFileLine {
    #[command(flatten)]
    options: RunOptions,
}

/// The podman/docker options that would let a container reach more than the
/// TRE allows (devices, the network, host paths, other namespaces, privileges,
/// other users or groups, higher limits, other policy). Refused by name.
/// (`--mount` is refused by its value: every type but `tmpfs`.)
pub const WIDENING: &[&str] = &[
    "--privileged",
    "--volumes-from",
    "--network",
    "--net",
    "--network-alias",
    "-P",
    "--publish-all",
    "--expose",
    "--add-host",
    "--dns",
    "--dns-search",
    "--dns-option",
    "--dns-opt",
    "--ip",
    "--ip6",
    "--mac-address",
    "--http-proxy",
    "--cap-add",
    "--device-cgroup-rule",
    "--gpus",
    "--security-opt",
    "--seccomp-policy",
    "--userns",
    "--uidmap",
    "--gidmap",
    "--subuidname",
    "--subgidname",
    "--pid",
    "--ipc",
    "--uts",
    "--cgroupns",
    "--cgroup-parent",
    "--cgroups",
    "--group-add",
    "-u",
    "--user",
    "--sysctl",
    "--ulimit",
    "--pids-limit",
    "--oom-kill-disable",
    "--oom-score-adj",
    "--env-host",
    "--hooks-dir",
    "--rootfs",
    "--secret",
    "--init-path",
    "--systemd",
];

/// Where an option came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The command line.
    CommandLine,
    /// A line of an option file.
    File {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::CommandLine => f.write_str("on the command line"),
            Place::File { path, line } => write!(f, "in {} line {line}", path.display()),
        }
    }
}

/// An option that ces does not take, or takes only elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// An option that would widen what the container can reach.
    #[error("option {option} {place} is not allowed: it would widen what the container can reach")]
    Widening {
        /// The option as given (`--privileged`, `--mount type=bind`).
        option: String,
        /// Where.
        place: Place,
    },
    /// An option that an option file may not carry.
    #[error("option {option} {place} is not allowed: {reason}")]
    NotInFile {
        /// The option.
        option: String,
        /// Where.
        place: Place,
        /// Why.
        reason: &'static str,
    },
    /// An option ces does not know.
    #[error("unknown option {option} {place}")]
    Unknown {
        /// The option as given; in a file, which word of the line it is.
        option: String,
        /// Where.
        place: Place,
    },
    /// A word that is not an option in an option file.
    #[error("unexpected argument {word} {place}: an option file holds options only")]
    NotAnOption {
        /// The word, quoted; in a file, which word of the line it is.
        word: String,
        /// Where.
        place: Place,
    },
    /// Quotes that do not close.
    #[error("unbalanced quotes {place}")]
    Quotes {
        /// Where.
        place: Place,
    },
    /// Any other mistake clap found (a missing value, a bad runtime name).
    #[error("{message} {place}")]
    Invalid {
        /// clap's message; in a file, what kind of mistake, and for which option.
        message: String,
        /// Where.
        place: Place,
    },
    /// A malformed `--mount`.
    #[error("invalid --mount {value} {place}: {problem}")]
    Mount {
        /// The value, quoted; in a file, which word of the line it is.
        value: String,
        /// Where.
        place: Place,
        /// What is wrong.
        problem: &'static str,
    },
    /// A malformed `--volume` (`-v` in an option file).
    #[error("invalid --volume {value} {place}: {problem}")]
    Volume {
        /// The value, quoted; in a file, which word of the line it is.
        value: String,
        /// Where.
        place: Place,
        /// What is wrong.
        problem: &'static str,
    },
    /// An option file that cannot be read.
    #[error("cannot read the option file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl OptionError {
    /// Where the option was.
    pub fn place(&self) -> Option<&Place> {
        match self {
            OptionError::Widening { place, .. }
            | OptionError::NotInFile { place, .. }
            | OptionError::Unknown { place, .. }
            | OptionError::NotAnOption { place, .. }
            | OptionError::Quotes { place }
            | OptionError::Invalid { place, .. }
            | OptionError::Mount { place, .. }
            | OptionError::Volume { place, .. } => Some(place),
            OptionError::Read { .. } => None,
        }
    }
}

/// Turns clap's "unexpected argument" into ces's refusal: a widening option by
/// name, else an unknown option (or, in a file, a stray word). `None` for
/// other kinds of error.
pub fn refusal(error: &clap::Error, place: &Place) -> Option<OptionError> {
    if error.kind() != clap::error::ErrorKind::UnknownArgument {
        return None;
    }
    let clap::error::ContextValue::String(arg) = error.get(clap::error::ContextKind::InvalidArg)? else {
        return None;
    };
    let option = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
    // A cluster of short options (`-p80`, `-uroot`): its first letter.
    let option = match option.strip_prefix('-') {
        Some(rest) if !rest.starts_with('-') && rest.len() > 1 => &option[..2],
        _ => option,
    };
    let place = place.clone();
    // `-v/:/host` parses as `-v` (--verbose) then an unknown `-/`: no option
    // starts with a path character, so it is a bind mount docker-style.
    if matches!(option, "-/" | "-." | "-~") && place == Place::CommandLine {
        return Some(OptionError::Widening { option: "-v (a bind mount)".to_owned(), place });
    }
    Some(if WIDENING.contains(&option) {
        OptionError::Widening { option: option.to_owned(), place }
    } else if option.starts_with('-') {
        OptionError::Unknown { option: option.to_owned(), place }
    } else {
        OptionError::NotAnOption { word: format!("{arg:?}"), place }
    })
}

/// `error`, found in an option file at `place` on a line split into
/// `words`, without the file's text: the words it quoted become their
/// place in the line ("word 2"); clap's message, what kind of mistake it is.
fn without_file_text(error: OptionError, words: &[String], clap: Option<&clap::Error>) -> OptionError {
    let word_of = |text: &str| {
        let index = words.iter().position(|w| w == text || w.split_once('=').is_some_and(|(name, _)| name == text));
        index.map_or_else(|| "(not shown)".to_owned(), |i| format!("(word {})", i + 1))
    };
    match error {
        // Options ces names itself (its own list) are shown.
        OptionError::Widening { option, place } if WIDENING.contains(&option.as_str()) => {
            OptionError::Widening { option, place }
        }
        OptionError::Widening { option, place } => {
            let kind = option.strip_prefix("--mount type=").filter(|kind| MOUNT_TYPES.contains(kind));
            let option = kind.map_or_else(|| "--mount (not of type tmpfs)".to_owned(), |k| format!("--mount type={k}"));
            OptionError::Widening { option, place }
        }
        OptionError::Unknown { option, place } => {
            let word = words.iter().position(|w| w.starts_with(&option)).map(|i| format!("(word {})", i + 1));
            OptionError::Unknown { option: word.unwrap_or_else(|| "(not shown)".to_owned()), place }
        }
        OptionError::NotAnOption { place, .. } => {
            let word = clap.and_then(|e| match e.get(clap::error::ContextKind::InvalidArg) {
                Some(clap::error::ContextValue::String(arg)) => Some(word_of(arg)),
                _ => None,
            });
            OptionError::NotAnOption { word: word.unwrap_or_else(|| "(not shown)".to_owned()), place }
        }
        OptionError::Mount { value, place, problem } => {
            // `value` is quoted (`"type=tmpfs"`): the word, or `--mount=` and the word.
            let quoted = |w: &String| format!("{:?}", w.strip_prefix("--mount=").unwrap_or(w)) == value;
            let word = words.iter().position(quoted).map(|i| format!("(word {})", i + 1));
            OptionError::Mount { value: word.unwrap_or_else(|| "(not shown)".to_owned()), place, problem }
        }
        OptionError::Volume { value, place, problem } => {
            let quoted = |w: &String| {
                let w = w.strip_prefix("--volume=").unwrap_or(w);
                format!("{w:?}") == value
            };
            let word = words.iter().position(quoted).map(|i| format!("(word {})", i + 1));
            OptionError::Volume { value: word.unwrap_or_else(|| "(not shown)".to_owned()), place, problem }
        }
        OptionError::Invalid { place, .. } => {
            let kind = clap.and_then(|e| e.kind().as_str()).unwrap_or("invalid option");
            let message = match clap.and_then(|e| e.get(clap::error::ContextKind::InvalidArg)) {
                // The argument as ces defines it (`--env <NAME[=VALUE]>`), not as written.
                Some(clap::error::ContextValue::String(arg)) => format!("{kind}: {arg}"),
                _ => kind.to_owned(),
            };
            OptionError::Invalid { message, place }
        }
        other => other,
    }
}

/// Mount types named in refusals from files (any other is not shown).
const MOUNT_TYPES: &[&str] = &["bind", "volume", "image", "devpts", "glob", "artifact", "ramfs", "cache"];

/// The first line of clap's message, without its `error: ` prefix.
pub fn clap_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// Checks what clap cannot: each `--mount` is a tmpfs or a bind (see
/// [`parse_mount`]), each `--volume` a bind (the policy decides later
/// whether it is allowed).
pub fn check(options: &RunOptions, place: &Place) -> Result<(), OptionError> {
    for value in &options.mount {
        parse_mount(value, place)?;
    }
    for value in &options.volume {
        parse_volume(value, place)?;
    }
    Ok(())
}

/// A `--volume` (`-v` in an option file): `SRC:DST[:ro|rw]`.
pub fn parse_volume(value: &str, place: &Place) -> Result<crate::binds::BindRequest, OptionError> {
    crate::binds::parse_volume(value).map_err(|problem| OptionError::Volume {
        value: format!("{value:?}"),
        place: place.clone(),
        problem,
    })
}

/// Parses an option file: each line is split like a shell command line
/// (quotes, backslashes; `#` starts a comment) and parsed with the command
/// line's definitions. Lines are applied in order (a later value wins, lists
/// add up). An option file may not name a runtime, another option file, or
/// a config file.
pub fn parse_opt_file(text: &str, path: &Path) -> Result<RunOptions, OptionError> {
    let mut merged = RunOptions::default();
    for (i, line) in text.lines().enumerate() {
        let place = Place::File { path: path.to_owned(), line: i + 1 };
        let words = shlex::split(line).ok_or_else(|| OptionError::Quotes { place: place.clone() })?;
        if words.is_empty() {
            continue;
        }
        if let Some(word) = words.iter().find(|w| *w == "--config" || w.starts_with("--config=")) {
            let option = word.split('=').next().unwrap_or(word).to_owned();
            return Err(OptionError::NotInFile { option, place, reason: "the config file is the operator's policy" });
        }
        // In an option file (podman options), `-v` is `--volume`; with no
        // image after them, `--gpu 0` is `--gpu=0`.
        let words: Vec<String> = join_gpu_values(words)
            .into_iter()
            .map(|w| match w.strip_prefix("-v") {
                Some("") => "--volume".to_owned(),
                Some(value) if value.starts_with(['/', '.', '~', '=']) => {
                    format!("--volume={}", value.strip_prefix('=').unwrap_or(value))
                }
                _ => w,
            })
            .collect();
        let parsed = OptFileLine::try_parse_from(&words).map_err(|e| {
            let error = refusal(&e, &place)
                .unwrap_or_else(|| OptionError::Invalid { message: clap_message(&e), place: place.clone() });
            without_file_text(error, &words, Some(&e))
        })?;
        let options = parsed.options;
        if options.runtime.is_some() {
            return Err(OptionError::NotInFile {
                option: "--runtime".into(),
                place,
                reason: "the runtime is chosen on the command line",
            });
        }
        if !options.opt_file.is_empty() {
            return Err(OptionError::NotInFile {
                option: "--opt-file".into(),
                place,
                reason: "option files cannot include other option files",
            });
        }
        check(&options, &place).map_err(|e| without_file_text(e, &words, None))?;
        merged = merged.then(options);
    }
    Ok(merged)
}

/// Reads and parses the option files `options` names (as the user ces runs
/// for: see [`crate::identity::as_invoker`]), and returns everything
/// together: the files' options in order, then the command line's over them.
pub fn with_opt_files(command_line: RunOptions) -> Result<RunOptions, OptionError> {
    check(&command_line, &Place::CommandLine)?;
    let mut merged = RunOptions::default();
    for path in &command_line.opt_file {
        let text = crate::identity::read_as_invoker(path)
            .map_err(|source| OptionError::Read { path: path.clone(), source })?;
        merged = merged.then(parse_opt_file(&text, path)?);
    }
    Ok(merged.then(command_line))
}

/// `--gpu X` as `--gpu=X` where `X` can only be GPUs (see
/// [`crate::cdi::is_selector`]).
fn join_gpu_values(words: Vec<String>) -> Vec<String> {
    let mut joined: Vec<String> = Vec::with_capacity(words.len());
    for word in words {
        match joined.last_mut() {
            Some(last) if last == "--gpu" && crate::cdi::is_selector(&word) => *last = format!("--gpu={word}"),
            _ => joined.push(word),
        }
    }
    joined
}

/// `--gpu 0 IMAGE ...`: clap takes `--gpu` without a value (it takes one
/// only after `=`) and `0` as the image, with everything after it, options
/// included, as the command. When the image it found can only be GPUs and
/// the command goes on, these are the arguments again with `--gpu=0`, to be
/// parsed once more.
pub fn gpu_word_as_value(
    args: &[std::ffi::OsString],
    gpu: Option<&str>,
    command: &[String],
) -> Option<Vec<std::ffi::OsString>> {
    let word = command.first().filter(|w| gpu == Some("") && command.len() >= 2 && crate::cdi::is_selector(w))?;
    // Where clap found the image: the word right after a `--gpu`, and
    // nothing but the command after it.
    let at = args.len().checked_sub(command.len())?;
    let i = at.checked_sub(1).filter(|i| args[*i] == "--gpu" && args[at] == word.as_str())?;
    let mut fixed = args.to_vec();
    fixed[i] = format!("--gpu={word}").into();
    fixed.remove(i + 1);
    Some(fixed)
}

/// `--gpu` alone (no value): every GPU (`all`).
pub fn settle_gpu(options: &mut RunOptions) {
    if options.gpu.as_deref() == Some("") {
        options.gpu = Some("all".to_owned());
    }
}

/// A `--mount` ces takes: a tmpfs, or a bind (which the policy may refuse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRequest {
    /// `type=tmpfs`: the destination, and the size as given.
    Tmpfs(String, Option<String>),
    /// `type=bind`.
    Bind(crate::binds::BindRequest),
}

/// A `--mount` ces takes: `type=tmpfs`, `destination=` (or `dst=`,
/// `target=`), optional `tmpfs-size=`; or `type=bind` (see
/// [`crate::binds::parse_mount_fields`]).
pub fn parse_mount(value: &str, place: &Place) -> Result<MountRequest, OptionError> {
    let err = |problem| OptionError::Mount { value: format!("{value:?}"), place: place.clone(), problem };
    let mut kind = None;
    let mut destination = None;
    let mut size = None;
    for field in value.split(',') {
        let (key, val) = field.split_once('=').unwrap_or((field, ""));
        match key {
            "type" => kind = Some(val),
            "destination" | "dst" | "target" => destination = Some(val.to_owned()),
            "tmpfs-size" => size = Some(val.to_owned()),
            _ => {}
        }
    }
    match kind {
        Some("tmpfs") => {}
        Some("bind") => return crate::binds::parse_mount_fields(value.split(',')).map(MountRequest::Bind).map_err(err),
        Some(other) => {
            return Err(OptionError::Widening { option: format!("--mount type={other}"), place: place.clone() });
        }
        None => return Err(err("give type=tmpfs or type=bind")),
    }
    for field in value.split(',') {
        let key = field.split_once('=').map_or(field, |(k, _)| k);
        if !matches!(key, "type" | "destination" | "dst" | "target" | "tmpfs-size") {
            return Err(err("only type, destination and tmpfs-size can be given"));
        }
    }
    let destination = destination.filter(|d| !d.is_empty()).ok_or_else(|| err("no destination"))?;
    Ok(MountRequest::Tmpfs(destination, size))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(text: &str) -> Result<RunOptions, OptionError> {
        parse_opt_file(text, Path::new("opts.txt"))
    }

    #[test]
    fn opt_file_lines_are_tokenized_like_a_shell() {
        let o = file(
            "# comment\n\n-e A=1 --env 'B=two words'  # trailing comment\n-w \"/work dir\" -t\n--shm-size=256m -m 2 -c 1.5\n--mount type=tmpfs,destination=/cache,tmpfs-size=64m\n-e C=\\$HOME --entrypoint '[\"/bin/sh\", \"-c\"]' -n job1\n",
        )
        .unwrap();
        assert_eq!(o.env, ["A=1", "B=two words", "C=$HOME"]);
        assert_eq!(o.workdir.as_deref(), Some("/work dir"));
        assert!(o.tty && !o.interactive);
        assert_eq!(
            (o.shm_size.as_deref(), o.memory.as_deref(), o.cores.as_deref()),
            (Some("256m"), Some("2"), Some("1.5"))
        );
        assert_eq!(o.mount, ["type=tmpfs,destination=/cache,tmpfs-size=64m"]);
        assert_eq!(o.entrypoint.as_deref(), Some("[\"/bin/sh\", \"-c\"]"));
        assert_eq!(o.name.as_deref(), Some("job1"));
    }

    #[test]
    fn later_values_win_and_lists_add_up() {
        let o = file("-m 2 -e A=1\n-m 3 -e A=2 -i\n").unwrap();
        assert_eq!(
            (o.memory.as_deref(), o.env.as_slice(), o.interactive),
            (Some("3"), &["A=1".to_owned(), "A=2".to_owned()][..], true)
        );
        let command_line = RunOptions { memory: Some("8".into()), env: vec!["B=3".into()], ..Default::default() };
        let merged = o.then(command_line);
        assert_eq!(merged.memory.as_deref(), Some("8"), "the command line wins");
        assert_eq!(merged.env, ["A=1", "A=2", "B=3"]);
        assert!(merged.interactive);
    }

    /// Every refused option, in a file, on line 3, with and without a value.
    #[test]
    fn every_widening_option_is_refused_with_its_line() {
        for option in WIDENING {
            for line in [option.to_string(), format!("{option} x"), format!("{option}=x")] {
                if option.len() == 2 && line.contains('=') {
                    continue;
                }
                let e = file(&format!("-e A=1\n\n{line}\n")).unwrap_err();
                assert_eq!(
                    e.to_string(),
                    format!(
                        "option {option} in opts.txt line 3 is not allowed: it would widen what the container can reach"
                    ),
                    "{line}"
                );
            }
        }
        for kind in ["volume", "image", "devpts", "glob"] {
            let e = file(&format!("-e A=1\n\n--mount type={kind},src=/,dst=/host\n")).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "option --mount type={kind} in opts.txt line 3 is not allowed: it would widen what the container can reach"
                )
            );
        }
        // Short clusters: -uroot, -Pt (-p is published ports, checked by policy).
        for line in ["-uroot", "-Pt"] {
            let e = file(line).unwrap_err();
            assert!(matches!(e, OptionError::Widening { .. }), "{line}: {e}");
        }
    }

    #[test]
    fn file_only_refusals_and_unknown_options() {
        for (text, expected) in [
            (
                "--runtime podman",
                "option --runtime in opts.txt line 1 is not allowed: the runtime is chosen on the command line",
            ),
            (
                "--opt-file other.txt",
                "option --opt-file in opts.txt line 1 is not allowed: option files cannot include other option files",
            ),
            (
                "--config=/tmp/x.toml",
                "option --config in opts.txt line 1 is not allowed: the config file is the operator's policy",
            ),
            ("\n-e A=1 --frobnicate", "unknown option (word 3) in opts.txt line 2"),
            ("--rm", "unknown option (word 1) in opts.txt line 1"),
            (
                "-v host",
                "invalid --volume (word 2) in opts.txt line 1: give SRC:DST[:ro|rw] (a named volume is not allowed)",
            ),
            ("-e A=1 image", "unexpected argument (word 3) in opts.txt line 1: an option file holds options only"),
            ("-e 'A=1", "unbalanced quotes in opts.txt line 1"),
            ("--mount type=tmpfs", "invalid --mount (word 2) in opts.txt line 1: no destination"),
            ("--mount destination=/x", "invalid --mount (word 2) in opts.txt line 1: give type=tmpfs or type=bind"),
            (
                "--mount type=tmpfs,dst=/x,tmpfs-mode=777",
                "invalid --mount (word 2) in opts.txt line 1: only type, destination and tmpfs-size can be given",
            ),
            (
                "--mount type=volume,src=v,dst=/x",
                "option --mount type=volume in opts.txt line 1 is not allowed: it would widen what the container can reach",
            ),
        ] {
            assert_eq!(file(text).unwrap_err().to_string(), expected, "{text}");
        }
        let e = file("-e").unwrap_err().to_string();
        assert_eq!(e, "one of the values isn't valid for an argument: --env <NAME[=VALUE]> in opts.txt line 1");
        // On the command line, the text is the user's own: shown.
        let e = refusal(&OptFileLine::try_parse_from(["--frobnicate"]).unwrap_err(), &Place::CommandLine).unwrap();
        assert_eq!(e.to_string(), "unknown option --frobnicate on the command line");
        let e = parse_mount("type=tmpfs", &Place::CommandLine).unwrap_err();
        assert_eq!(e.to_string(), "invalid --mount \"type=tmpfs\" on the command line: no destination");
    }

    /// A file that holds no options (a password file, a key) is refused by
    /// line and word: none of its text is in the error.
    #[test]
    fn a_file_of_secrets_is_refused_without_quoting_it() {
        for secret in [
            "root:$y$j9T$SECRETSALT$SECRETHASH:19000:0:99999:7:::",
            "--SECRET-TOKEN-1234",
            "-e A=1 --tty=SECRETVALUE",
            "--mount type=SECRET,dst=/x",
            "--mount type=tmpfs,SECRET=1",
            "-e A=1 'unbalanced SECRET",
        ] {
            let e = file(&format!("# comment\n{secret}\n")).unwrap_err().to_string();
            assert!(!e.contains("SECRET") && !e.contains("$y$"), "{secret}: {e}");
            assert!(e.contains("in opts.txt line 2"), "{secret}: {e}");
        }
    }

    #[test]
    fn opt_files_are_read_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        std::fs::write(&a, "-m 2 -e A=a\n").unwrap();
        std::fs::write(&b, "-m 3 -w /b\n").unwrap();
        let cli = RunOptions { opt_file: vec![a.clone(), b], workdir: Some("/cli".into()), ..Default::default() };
        let o = with_opt_files(cli).unwrap();
        assert_eq!(
            (o.memory.as_deref(), o.workdir.as_deref(), o.env.as_slice()),
            (Some("3"), Some("/cli"), &["A=a".to_owned()][..])
        );
        let missing = RunOptions { opt_file: vec![dir.path().join("nope")], ..Default::default() };
        assert!(matches!(with_opt_files(missing), Err(OptionError::Read { .. })));
        // Binds parse here; the policy ([run] bind_roots) decides later.
        std::fs::write(&a, "-v ./pgdata:/var/lib/postgresql/data\n--mount type=bind,src=/d,dst=/e,ro -v/x:/y:ro\n")
            .unwrap();
        let o = with_opt_files(RunOptions { opt_file: vec![a], ..Default::default() }).unwrap();
        assert_eq!(
            (o.volume.as_slice(), o.mount.len()),
            (&["./pgdata:/var/lib/postgresql/data".to_owned(), "/x:/y:ro".to_owned()][..], 1)
        );
    }
}
