//! The command line: `ces <command>`, and the compatible `ces-pull`,
//! `ces-run` and `ces-gpu-run` forms.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::run_options::RunOptions;

/// `ces --version`: the version and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CES_GIT_REVISION"), ")");

/// ces: run researchers' containers in a Trusted Research Environment.
#[derive(Debug, Parser)]
#[command(name = "ces", version = VERSION, about, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// The config file [default: /etc/ces/config.toml]
    #[arg(long, global = true, env = "CES_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Show debug logs (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// No progress bars or status lines.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The commands.
// Parsed once per process: the size of the largest (`run`) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Operator tasks (as root).
    #[command(subcommand)]
    System(SystemCommand),
    /// Pull an image from an allowed registry into the local store.
    Pull(PullArgs),
    /// List the images in the store.
    Images(ImagesArgs),
    /// Show an image's config, layers and provenance.
    Inspect(InspectArgs),
    /// Check a Dockerfile against TRE advice (rules CES001..., see docs/lint.md).
    Lint(LintArgs),
    /// Run an image as the TRE would and report whether it is ready: network attempts, outputs, findings.
    #[command(override_usage = "ces test [OPTIONS] IMAGE [ARGS]...", after_help = TEST_AFTER_HELP)]
    Test(TestArgs),
    /// Remove images from the store (what no image uses any more is deleted, and the disk freed said).
    Rmi(RmiArgs),
    /// Import an OCI archive or a `docker save` tarball (images brought in through an airlock).
    Load(LoadArgs),
    /// Delete blobs, unpacked layers and unpacked filesystems that no image uses, and say the disk freed.
    Gc,
    /// Read and check the audit log of pulls, loads and runs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check a run's outputs directory against the manifest ces wrote after the run.
    #[command(subcommand)]
    Outputs(OutputsCommand),
    /// List your running runs (root: everyone's).
    Ps(PsArgs),
    /// Stop a running run cleanly (as SIGTERM to its ces would), by id or name.
    Stop(StopArgs),
    /// Run a pulled image with the TRE directories, no network, and limits.
    #[command(override_usage = "ces run [OPTIONS] IMAGE [ARGS]...", after_help = RUN_AFTER_HELP)]
    Run(RunArgs),
    /// Serve the TRE's pull proxy (an operator's service; here --config names
    /// the proxy's config [default: /etc/ces/proxy.toml]: see docs/proxy.md).
    Proxy,
    /// Your runs submitted to Slurm or Kubernetes (--runtime slurm|k8s): run, job, state, node.
    Jobs {
        /// Print JSON.
        #[arg(long = "json")]
        json: bool,
    },
    /// The output of a run submitted to Slurm or Kubernetes, by run id or job id.
    Logs {
        /// The run id or the job id.
        #[arg(value_name = "RUN|JOB")]
        run: String,
        /// Follow it until the job ends.
        #[arg(short = 'f', long = "follow")]
        follow: bool,
    },
    /// Cancel a submitted run (scancel; kubectl delete job): it ends as a SIGTERM ends a run.
    Cancel {
        /// The run id or the job id.
        #[arg(value_name = "RUN|JOB")]
        run: String,
    },
    /// (Inside a Slurm job) run the run `ces run --runtime slurm` submitted.
    #[command(hide = true)]
    SlurmJob {
        /// The job file ces wrote at submission.
        file: PathBuf,
    },
    /// (For packaging) write man pages and shell completions under DIR.
    #[command(hide = true)]
    GenerateDocs {
        /// Where `man1/` and `completions/` go.
        dir: PathBuf,
    },
}

/// What `ces run --help` ends with.
pub const RUN_AFTER_HELP: &str = "Options stop at IMAGE: everything after it goes to the container as it is. \
The container gets /safe_data (project data), /safe_outputs (a new outputs_<id>, kept) and /scratch \
(a new scratch_<id>, removed at exit), and no network. Options that would widen what it reaches \
(--privileged, --network, --volume, a bind --mount, --cap-add, --device, --user, ...) are refused, \
on the command line and in option files. See docs/run.md.";

/// What `ces test --help` ends with.
pub const TEST_AFTER_HELP: &str = "The image runs as `ces run` would run it (same mounts, limits and policy; \
native runtime), with /safe_data from --data (read-only; empty without it) and fresh outputs. Its network \
fails at once, as in the TRE, and every DNS query and connection attempt is reported. Exit status: 0 ready, \
1 not ready, 125 ces's own error. See docs/testing-images.md.";

/// `ces test`: `ces run`'s options, the test's own, then the image and its command.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The directory to mount at /safe_data (read-only): test data shaped like the TRE's.
    #[arg(long = "data", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Network attempts do not make the image "not ready" (they are still reported).
    #[arg(long = "allow-network-attempts")]
    pub allow_network_attempts: bool,
    /// Run options, as for `ces run` (--json prints the report as JSON).
    #[command(flatten)]
    pub options: RunOptions,
    /// The image as pulled, then the command and its arguments.
    #[arg(value_name = "IMAGE [ARGS]", required = true, num_args = 1.., trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// `ces run` (and `ces-run`): options, then the image, then the container's
/// command; everything after the image goes to the container as it is.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run options.
    #[command(flatten)]
    pub options: RunOptions,
    /// The image as pulled (a reference or a digest prefix), then the command
    /// and its arguments (they replace the image's cmd).
    #[arg(value_name = "IMAGE [ARGS]", required = true, num_args = 1.., trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// `ces system ...`.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Prepare what rootless runs need to enforce -m/-c: a cgroup delegated to each user (run as root).
    Setup {
        /// A user (name or uid) who will run ces without root; repeat for several.
        #[arg(long = "user", short = 'u', value_name = "USER", required = true)]
        users: Vec<String>,
    },
    /// List the GPUs and other CDI devices of this host, and which you may use.
    Gpus {
        /// Print JSON.
        #[arg(long = "json")]
        json: bool,
    },
}

/// `ces audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show the records: a table, or JSON lines.
    Show(AuditShowArgs),
    /// Check the whole hash chain; exit 1 naming the first record edited, removed, inserted or reordered.
    Verify(AuditVerifyArgs),
}

/// `ces audit show`.
#[derive(Debug, Args)]
pub struct AuditShowArgs {
    /// Only this user's records (a name or a uid).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only records since then: a time (2026-01-31T09:00:00Z), a date (2026-01-31, UTC) or a span back from now (2h, 3 days).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only records about this image: a reference, a repository (any tag) or a digest prefix.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Print the records as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Read this log (a copy) instead of the configured one.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

/// `ces outputs ...`.
#[derive(Debug, Subcommand)]
pub enum OutputsCommand {
    /// Recheck DIR against its ces-manifest.json (and the manifest against the audit log); exit 1 naming each file added, changed or removed.
    Verify(OutputsVerifyArgs),
}

/// `ces outputs verify`.
#[derive(Debug, Args)]
pub struct OutputsVerifyArgs {
    /// The outputs directory of a run (outputs_<id>).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Check the manifest against this audit log (a copy) instead of the configured one.
    #[arg(long, value_name = "PATH")]
    pub audit_file: Option<PathBuf>,
    /// Check the directory against its manifest only, without the audit log
    /// (which then cannot vouch for the manifest).
    #[arg(long, conflicts_with = "audit_file")]
    pub no_audit: bool,
}

/// `ces audit verify`.
#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// Check this log (a copy) instead of the configured one.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

/// `ces pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: REGISTRY/NAMESPACE/NAME[:TAG|@sha256:DIGEST]
    pub reference: String,
    /// The registry user (with a token from --password-stdin or CES_REGISTRY_TOKEN).
    #[arg(long, short = 'u', env = "CES_REGISTRY_USER")]
    pub user: Option<String>,
    /// Read the token (or password) from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Pull only; leave the root filesystem unpacked later (by `ces run`).
    #[arg(long)]
    pub no_unpack: bool,
}

/// `ces ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print JSON for scripts (one array).
    #[arg(long)]
    pub json: bool,
}

/// `ces stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The run: its id, or its name (-n).
    #[arg(value_name = "RUN|NAME")]
    pub run: String,
}

/// `ces images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Show the disk each image takes in the store (its blobs, unpacked
    /// layers and root filesystem; what it shares with other images counts
    /// for each), what `ces rmi` of it would free, and what `ces gc` would;
    /// and the disk quota on the store's file system, where one holds you.
    #[arg(long)]
    pub disk: bool,
}

/// `ces inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image: a reference, or a digest prefix.
    pub image: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `ces lint`.
#[derive(Debug, Args)]
pub struct LintArgs {
    /// The Dockerfile (`-` for standard input).
    #[arg(default_value = "Dockerfile", value_name = "PATH")]
    pub path: PathBuf,
    /// The build context: what `COPY . .` copies, the requirement files and
    /// start scripts [default: the Dockerfile's directory; none for `-`].
    #[arg(long, value_name = "DIR")]
    pub context: Option<PathBuf>,
    /// Read no build context: check the Dockerfile alone.
    #[arg(long, conflicts_with = "context")]
    pub no_context: bool,
    /// The stage built, as `docker build --target` [default: the last].
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Leave out a rule, e.g. CES010 (repeat for several).
    #[arg(long, value_name = "CODE")]
    pub ignore: Vec<String>,
    /// Exit 1 when a finding is this severe or more: error, warning or info.
    #[arg(long, value_name = "SEVERITY", default_value = "warning", value_parser = str::parse::<ces_lint::Severity>)]
    pub failure_threshold: ces_lint::Severity,
    /// How to print the findings.
    #[arg(long, value_enum, default_value_t = LintFormat::Human)]
    pub format: LintFormat,
}

/// `ces lint --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LintFormat {
    /// `file:line: CODE severity: message`, then a `fix:` line.
    Human,
    /// A JSON array of findings.
    Json,
    /// SARIF 2.1.0, for GitHub code scanning.
    Sarif,
}

/// `ces rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// The images: references, or digest prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `ces load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The archive (`-` for standard input).
    #[arg(default_value = "-")]
    pub file: PathBuf,
    /// Name the image this way (required when the archive names none).
    #[arg(long, short = 't')]
    pub tag: Option<String>,
    /// Load only; leave the root filesystem unpacked later.
    #[arg(long)]
    pub no_unpack: bool,
}

/// The runtime words `ces-pull`/`ces-run` accept as their first argument,
/// and `--runtime` takes: the reference service's, and ces's own `native`.
/// `apptainer` runs on the native runtime as the user (see docs/run.md);
/// `slurm` submits to Slurm, `k8s` creates a Kubernetes Job (docs/cluster.md;
/// for a pull, both words only say where the image is for: it goes to the
/// same store).
pub const RUNTIMES: [&str; 5] = ["native", "podman", "apptainer", "slurm", "k8s"];

/// `ces-pull [<runtime>] <user> <token> <registry>/<ns>/<name>[:<tag>|@<digest>]`, as
/// the reference service has it; `""` `""` pulls anonymously, and a token of `-`
/// is read from standard input.
#[derive(Debug, Parser)]
#[command(name = "ces-pull", version = VERSION, about = "Pull an image into ces (compatible form of `ces pull`)")]
pub struct CesPullCli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// [RUNTIME] USER TOKEN IMAGE
    #[arg(num_args = 3..=4, required = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// What `ces-pull`'s positional arguments mean.
#[derive(Debug, PartialEq, Eq)]
pub struct CompatPull {
    /// The runtime named, if any.
    pub runtime: Option<String>,
    /// The user (`""` for anonymous).
    pub user: String,
    /// The token (`""` for anonymous, `-` for standard input).
    pub token: String,
    /// The image reference.
    pub reference: String,
}

impl CesPullCli {
    /// Splits the positional arguments.
    pub fn compat(&self) -> Result<CompatPull, String> {
        let (runtime, rest) = match self.args.as_slice() {
            [runtime, rest @ ..] if rest.len() == 3 => (Some(runtime.clone()), rest),
            rest => (None, rest),
        };
        if let Some(runtime) = runtime.as_ref().filter(|r| !RUNTIMES.contains(&r.as_str())) {
            return Err(format!("unknown runtime {runtime:?} (expected one of: {})", RUNTIMES.join(", ")));
        }
        match rest {
            [user, token, reference] => {
                Ok(CompatPull { runtime, user: user.clone(), token: token.clone(), reference: reference.clone() })
            }
            _ => Err("expected [RUNTIME] USER TOKEN IMAGE".to_owned()),
        }
    }
}

/// `ces-run [<runtime>] [options] IMAGE [ARGS...]`, as the reference service
/// has it (`ces-gpu-run` is the same with `--gpu`).
#[derive(Debug, Parser)]
#[command(
    name = "ces-run",
    version = VERSION,
    about = "Run a pulled image with the TRE directories (compatible form of `ces run`)",
    override_usage = "ces-run [RUNTIME] [OPTIONS] IMAGE [ARGS]...",
    after_help = RUN_AFTER_HELP
)]
pub struct CesRunCli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The run.
    #[command(flatten)]
    pub run: RunArgs,
}

impl CesRunCli {
    /// Parses `ces-run`'s (or, with `gpu`, `ces-gpu-run`'s) arguments: a first
    /// argument naming a runtime means `--runtime` (given both, `--runtime` wins).
    pub fn parse_compat(args: impl IntoIterator<Item = OsString>, gpu: bool) -> Result<CesRunCli, clap::Error> {
        let mut args: Vec<OsString> = args.into_iter().collect();
        let runtime = match args.get(1).and_then(|a| a.to_str()) {
            Some(first) if RUNTIMES.contains(&first) => Some(args.remove(1).to_string_lossy().into_owned()),
            _ => None,
        };
        let args = volume_shorthand(args, 1);
        let name = if gpu { "ces-gpu-run" } else { "ces-run" };
        let mut command = CesRunCli::command().name(name).bin_name(name);
        if gpu {
            command = command.override_usage("ces-gpu-run [RUNTIME] [OPTIONS] IMAGE [ARGS]...");
        }
        let matches = command.clone().try_get_matches_from(&args)?;
        let mut cli = CesRunCli::from_arg_matches(&matches)?;
        let (gpu_given, words) = (cli.run.options.gpu.as_deref(), &cli.run.command);
        if let Some(fixed) = crate::run_options::gpu_word_as_value(&args, gpu_given, words) {
            cli = CesRunCli::from_arg_matches(&command.try_get_matches_from(fixed)?)?;
        }
        cli.run.options.runtime = cli.run.options.runtime.or(runtime);
        if gpu && cli.run.options.gpu.is_none() {
            cli.run.options.gpu = Some(String::new());
        }
        Ok(cli)
    }
}

/// Whether `ces`'s arguments are a `ces run` or a `ces test`, which takes
/// the same options (for error reporting before clap has said which command
/// it is).
pub fn is_run(args: &[OsString]) -> bool {
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(word) = words.next() {
        match word.as_ref() {
            "--config" => {
                words.next();
            }
            w if w.starts_with('-') => {}
            w => return w == "run" || w == "test",
        }
    }
    false
}

/// `-v SRC:DST` on a run's command line: `-v` is `--verbose` there (the
/// reference service's meaning), but followed by a path pair (`./pgdata:/x`,
/// `/d:/e:ro`), which is never an image, it is a bind (`--volume`), as in
/// docker and in option files. Only words before the image are looked at
/// (the container's own arguments are left as they are); `first` is the
/// index of the first option (after `run`, `test`, or the runtime).
pub fn volume_shorthand(mut args: Vec<OsString>, first: usize) -> Vec<OsString> {
    let command = CesRunCli::command();
    let takes_value = |word: &str| {
        word == "--data"
            || command.get_arguments().any(|a| {
                a.get_action().takes_values()
                    && (a.get_long().is_some_and(|l| word == format!("--{l}"))
                        || a.get_short().is_some_and(|c| word == format!("-{c}")))
            })
    };
    let mut i = first;
    while i < args.len() {
        let Some(word) = args[i].to_str().map(str::to_owned) else { break };
        if word == "--" || !word.starts_with('-') || word == "-" {
            break;
        }
        // `--gpu` takes its value with `=`, or as the next word where that
        // can only be GPUs (see `run_options::gpu_word_as_value`).
        if word == "--gpu" {
            let value = args.get(i + 1).and_then(|w| w.to_str()).is_some_and(crate::cdi::is_selector);
            i += if value { 2 } else { 1 };
            continue;
        }
        if word == "-v" && args.get(i + 1).and_then(|w| w.to_str()).is_some_and(is_path_pair) {
            args[i] = OsString::from("--volume");
            i += 2;
            continue;
        }
        // Attached, as docker also takes it: `-v/d:/e`.
        if let Some(pair) = word.strip_prefix("-v").filter(|pair| is_path_pair(pair)) {
            args[i] = OsString::from(format!("--volume={pair}"));
            i += 1;
            continue;
        }
        let value_next = !word.contains('=')
            && (takes_value(&word)
                || (word.len() > 2 && !word.starts_with("--") && {
                    // `-qm` (a cluster ending in an option that takes a value): the value is next.
                    let last = &word[word.len() - 1..];
                    takes_value(&format!("-{last}"))
                        && word[1..word.len() - 1].chars().all(|c| !takes_value(&format!("-{c}")))
                }));
        i += if value_next { 2 } else { 1 };
    }
    args
}

/// `SRC:DST` with an absolute destination and a source that is a path (what
/// follows `-v` in docker's bind form).
fn is_path_pair(word: &str) -> bool {
    word.split_once(':')
        .is_some_and(|(src, dst)| dst.starts_with('/') && (src.starts_with(['/', '.', '~']) || src.contains('/')))
}

/// The index of the first word after `run` or `test` in `ces`'s arguments.
pub fn run_options_start(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while let Some(word) = args.get(i).map(|a| a.to_string_lossy()) {
        match word.as_ref() {
            "--config" => i += 1,
            w if w.starts_with('-') => {}
            "run" | "test" => return Some(i + 1),
            _ => return None,
        }
        i += 1;
    }
    None
}

/// The `--config` a command line names, if any (for a command line clap
/// refused, before settings are read).
pub fn config_arg(args: &[OsString]) -> Option<PathBuf> {
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        let text = word.to_string_lossy();
        if text == "--config" {
            return words.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compat(args: &[&str]) -> Result<CompatPull, String> {
        CesPullCli::try_parse_from(std::iter::once("ces-pull").chain(args.iter().copied())).unwrap().compat()
    }

    #[test]
    fn ces_pull_takes_three_or_four_positionals() {
        let c = compat(&["", "", "ghcr.io/a/b:1"]).unwrap();
        assert_eq!(
            (c.runtime, c.user.as_str(), c.token.as_str(), c.reference.as_str()),
            (None, "", "", "ghcr.io/a/b:1")
        );
        let c = compat(&["podman", "alice", "-", "ghcr.io/a/b"]).unwrap();
        assert_eq!(c.runtime.as_deref(), Some("podman"));
        assert_eq!(c.token, "-");
        let unknown = compat(&["docker", "u", "t", "ghcr.io/a/b"]).unwrap_err();
        assert!(
            unknown.contains("unknown runtime \"docker\" (expected one of: native, podman, apptainer, slurm, k8s)")
        );
        for word in ["apptainer", "slurm", "k8s", "native"] {
            assert_eq!(compat(&[word, "", "", "ghcr.io/a/b"]).unwrap().runtime.as_deref(), Some(word));
        }
        assert!(CesPullCli::try_parse_from(["ces-pull", "ghcr.io/a/b"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        CesPullCli::command().debug_assert();
        CesRunCli::command().debug_assert();
    }

    fn ces_run(args: &[&str]) -> Result<CesRunCli, clap::Error> {
        CesRunCli::parse_compat(std::iter::once("ces-run").chain(args.iter().copied()).map(OsString::from), false)
    }

    #[test]
    fn run_options_stop_at_the_image() {
        let cli =
            Cli::try_parse_from(["ces", "-v", "run", "-it", "-m4", "-e", "A=1", "img", "ls", "-la", "--help", "-v"])
                .unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert!(cli.global.verbose);
        assert!(run.options.tty && run.options.interactive);
        assert_eq!((run.options.memory.as_deref(), run.options.env.as_slice()), (Some("4"), &["A=1".to_owned()][..]));
        assert_eq!(run.command, ["img", "ls", "-la", "--help", "-v"]);
        let cli = Cli::try_parse_from(["ces", "run", "--", "img", "--", "x"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.command, ["img", "--", "x"]);
        let e = Cli::try_parse_from(["ces", "run", "--privileged", "img"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(Cli::try_parse_from(["ces", "run"]).is_err(), "the image is required");
    }

    #[test]
    fn ces_run_takes_a_runtime_first() {
        let cli = ces_run(&["podman", "-c", "2", "img", "podman"]).unwrap();
        assert_eq!(cli.run.options.runtime.as_deref(), Some("podman"));
        assert_eq!(cli.run.options.cores.as_deref(), Some("2"));
        assert_eq!(cli.run.command, ["img", "podman"]);
        let cli = ces_run(&["--runtime", "native", "img"]).unwrap();
        assert_eq!(cli.run.options.runtime.as_deref(), Some("native"));
        assert!(cli.run.options.gpu.is_none());
        assert!(ces_run(&["--runtime", "docker", "img"]).is_err());
        let gpu = CesRunCli::parse_compat(["ces-gpu-run", "img"].map(OsString::from), true).unwrap();
        assert_eq!(gpu.run.options.gpu.as_deref(), Some(""));
    }

    #[test]
    fn dash_v_before_a_path_pair_is_a_volume() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let fixed = |a: &[&str]| {
            let a = args(a);
            let start = run_options_start(&a).unwrap();
            volume_shorthand(a, start).into_iter().map(|w| w.into_string().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(
            fixed(&["ces", "-v", "run", "-v", "./pg:/data", "-m", "2", "-v", "/a:/b:ro", "img", "-v", "/c:/d"]),
            ["ces", "-v", "run", "--volume", "./pg:/data", "-m", "2", "--volume", "/a:/b:ro", "img", "-v", "/c:/d"]
        );
        // A value that looks like a pair is a value; -v alone stays --verbose.
        assert_eq!(fixed(&["ces", "run", "-e", "/a:/b", "-v", "img"]), ["ces", "run", "-e", "/a:/b", "-v", "img"]);
        assert_eq!(
            fixed(&["ces", "run", "-qe", "X", "-v", "x/y:/z", "i"]),
            ["ces", "run", "-qe", "X", "--volume", "x/y:/z", "i"]
        );
        let cli = Cli::try_parse_from(fixed(&["ces", "run", "-v", "./pg:/data", "img"])).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!((run.options.volume.as_slice(), cli.global.verbose), (&["./pg:/data".to_owned()][..], false));
        let cli = ces_run(&["podman", "-v", "/a:/b", "img"]).unwrap();
        assert_eq!(cli.run.options.volume, ["/a:/b"]);
        // Attached, as docker takes it.
        assert_eq!(fixed(&["ces", "run", "-v./pg:/data:ro", "img"]), ["ces", "run", "--volume=./pg:/data:ro", "img"]);
    }

    #[test]
    fn which_command_line_is_a_run() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_run(&args(&["ces", "--config", "x.toml", "-v", "run", "--privileged", "img"])));
        assert!(!is_run(&args(&["ces", "pull", "run"])));
        assert!(!is_run(&args(&["ces", "--config", "run"])));
        assert_eq!(config_arg(&args(&["ces", "--config", "c.toml", "run", "img"])), Some(PathBuf::from("c.toml")));
        assert_eq!(config_arg(&args(&["ces", "run", "--config=d.toml", "img"])), Some(PathBuf::from("d.toml")));
        assert_eq!(config_arg(&args(&["ces", "run", "img"])), None);
    }
}
