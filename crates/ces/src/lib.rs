//! The `ces` binary crate: parses the command line (ces, and the compatible
//! `ces-pull`, `ces-run`, `ces-gpu-run`), resolves settings once, calls the
//! libraries, and prints.
//! Logs and progress go to stderr; stdout carries data for scripts.

use std::process::ExitCode;

use clap::Parser as _;

pub mod binds;
pub mod cdi;
pub mod cli;
pub mod commands;
pub mod diagnostics;
pub mod identity;
pub mod policy;
pub mod printer;
pub mod run_options;
pub mod running;
pub mod settings;
pub mod time_limit;

use ces_registry::Credentials;
use cli::{CesPullCli, CesRunCli, Cli, Command, GlobalArgs};
use commands::pull::{PullRequest, token_from_env, token_from_stdin};
use printer::Printer;
use settings::Settings;

/// Which command line the binary was started as.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// `ces <command>`.
    Ces,
    /// `ces-pull [<runtime>] <user> <token> <image>`.
    CesPull,
    /// `ces-run [<runtime>] [options] <image> [args]`.
    CesRun,
    /// `ces-gpu-run ...`: `ces-run --gpu ...`.
    CesGpuRun,
}

/// Runs ces as `entry`, and turns the outcome into an exit code.
pub fn main(entry: Entry) -> ExitCode {
    let (global, action) = match entry {
        Entry::Ces => {
            let args = ces_args();
            let parsed = Cli::try_parse_from(&args).and_then(|cli| {
                let fixed = match &cli.command {
                    Command::Run(run) => {
                        run_options::gpu_word_as_value(&args, run.options.gpu.as_deref(), &run.command)
                    }
                    Command::Test(test) => {
                        run_options::gpu_word_as_value(&args, test.options.gpu.as_deref(), &test.command)
                    }
                    _ => None,
                };
                match fixed {
                    Some(fixed) => Cli::try_parse_from(fixed),
                    None => Ok(cli),
                }
            });
            match parsed {
                Ok(cli) => (cli.global, Action::Command(cli.command)),
                Err(error) => return parse_error(error, cli::is_run(&std::env::args_os().collect::<Vec<_>>())),
            }
        }
        Entry::CesRun | Entry::CesGpuRun => {
            match CesRunCli::parse_compat(std::env::args_os(), matches!(entry, Entry::CesGpuRun)) {
                Ok(cli) => (cli.global, Action::Command(Command::Run(cli.run))),
                Err(error) => return parse_error(error, true),
            }
        }
        Entry::CesPull => {
            let cli = CesPullCli::parse();
            let action = match cli.compat() {
                Ok(compat) => Action::CompatPull(compat),
                Err(message) => {
                    eprintln!("error: {message}");
                    return ExitCode::from(2);
                }
            };
            (cli.global, action)
        }
    };
    if matches!(action, Action::Command(Command::Run(_) | Command::Test(_) | Command::SlurmJob { .. })) {
        // First, while ces has one thread: SIGINT/SIGTERM/SIGHUP stay blocked
        // so that the runtime forwards them to the container (and cleans up)
        // instead of a signal landing on some thread and killing ces midway.
        if let Err(error) = ces_runtime::native::block_forwarded_signals() {
            return report(&anyhow::Error::new(error).context("cannot block signals"), settings::SYSTEM_CONFIG);
        }
    }
    init_tracing(&global);
    // `ces lint` reads a Dockerfile and nothing else: no config needed (a
    // researcher's machine has none; a broken one must not stop it).
    let action = match action {
        Action::Command(Command::Lint(args)) => {
            return match commands::lint::lint(args) {
                Ok(code) => code,
                Err(error) => report(&error, settings::SYSTEM_CONFIG),
            };
        }
        // `ces proxy`: --config names the proxy's config, which names the
        // ces config whose [pull] it applies.
        Action::Command(Command::Proxy) => {
            // Only the command line's --config (not $CES_CONFIG, a user's).
            let args: Vec<_> = std::env::args_os().collect();
            let config = cli::config_arg(&args).unwrap_or_else(|| commands::proxy::DEFAULT_CONFIG.into());
            return match commands::proxy::serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => report(&error, &config.display().to_string()),
            };
        }
        other => other,
    };
    let settings = match Settings::load(global.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => return report(&error, settings::SYSTEM_CONFIG),
    };
    let printer = Printer::new(global.quiet);
    match run(&settings, &printer, action) {
        Ok(code) => code,
        Err(error) => report(&error, &settings.config_shown()),
    }
}

/// `ces`'s arguments, with `-v SRC:DST` before a run's image read as a bind
/// (see [`cli::volume_shorthand`]).
fn ces_args() -> Vec<std::ffi::OsString> {
    let args: Vec<_> = std::env::args_os().collect();
    match cli::run_options_start(&args) {
        Some(start) => cli::volume_shorthand(args, start),
        None => args,
    }
}

/// A command line clap could not parse. For `ces run`, an option ces does not
/// take is refused by name, and the exit code is ces's own (125), as podman's.
fn parse_error(error: clap::Error, run: bool) -> ExitCode {
    use clap::error::ErrorKind;
    if !run || matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        error.exit();
    }
    if let Some(refusal) = run_options::refusal(&error, &run_options::Place::CommandLine) {
        let mut error = anyhow::Error::new(refusal);
        // Refused before the settings were read: read them now, to record the refusal.
        let args: Vec<_> = std::env::args_os().collect();
        let config = cli::config_arg(&args).or_else(|| std::env::var_os("CES_CONFIG").map(Into::into));
        if let Ok(settings) = Settings::load(config.as_deref()) {
            error = commands::audit::record_not_started(&settings, None, error);
        }
        return report(&error, settings::SYSTEM_CONFIG);
    }
    let _ = error.print();
    ExitCode::from(diagnostics::EXIT_ERROR)
}

#[allow(clippy::large_enum_variant)] // one per process
enum Action {
    Command(Command),
    CompatPull(cli::CompatPull),
}

fn run(settings: &Settings, printer: &Printer, action: Action) -> anyhow::Result<ExitCode> {
    if matches!(action, Action::Command(Command::Run(_) | Command::Test(_) | Command::Gc)) {
        // What runs of a ces that crashed left behind (scratch, state).
        commands::run::clean_stale(settings);
    }
    if matches!(action, Action::Command(Command::Run(_) | Command::Test(_) | Command::Gc | Command::Load(_))) {
        // Pulls whose ces died: the next writer closes their start (`ces
        // pull` does so itself, first).
        commands::audit::close_lost_pulls(settings);
    }
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    match action {
        // The container's exit code is ces's.
        Action::Command(Command::Run(args)) => commands::run::run(settings, printer, args),
        Action::Command(Command::SlurmJob { file }) => commands::run::slurm_job(settings, printer, &file),
        Action::Command(Command::Jobs { json }) => done(commands::run::slurm::jobs(settings, json)),
        Action::Command(Command::Logs { run, follow }) => done(commands::run::slurm::logs(settings, &run, follow)),
        Action::Command(Command::Cancel { run }) => done(commands::run::slurm::cancel(settings, printer, &run)),
        Action::Command(Command::Pull(args)) => {
            let secret = if args.password_stdin { Some(token_from_stdin()?) } else { token_from_env() };
            if secret.is_some() && args.user.as_deref().is_none_or(str::is_empty) {
                anyhow::bail!("a token was given without a user: add --user USER");
            }
            let credentials = Credentials::from_parts(args.user, secret);
            done(commands::pull::pull(
                settings,
                printer,
                PullRequest { reference: args.reference, credentials, unpack: !args.no_unpack },
            ))
        }
        Action::CompatPull(compat) => {
            if let Some(runtime) = &compat.runtime {
                tracing::debug!(runtime, "the runtime does not change where ces stores images");
            }
            let secret = match compat.token.as_str() {
                "-" => Some(token_from_stdin()?),
                "" => token_from_env(),
                token => Some(ces_registry::Secret::new(token)),
            };
            let credentials = Credentials::from_parts(Some(compat.user), secret);
            done(commands::pull::pull(
                settings,
                printer,
                PullRequest { reference: compat.reference, credentials, unpack: true },
            ))
        }
        Action::Command(Command::System(cli::SystemCommand::Setup { users })) => {
            done(commands::system::setup(printer, &users))
        }
        Action::Command(Command::System(cli::SystemCommand::Gpus { json })) => {
            done(commands::system::gpus(settings, json))
        }
        Action::Command(Command::Images(args)) => done(commands::images::images(settings, args.json, args.disk)),
        Action::Command(Command::Inspect(args)) => done(commands::inspect::inspect(settings, &args.image, args.json)),
        // Exit 1 when a finding reaches the threshold (dispatched before the settings are read).
        Action::Command(Command::Lint(args)) => commands::lint::lint(args),
        // Served before the settings are read (its --config is its own).
        Action::Command(Command::Proxy) => unreachable!("ces proxy is dispatched before the settings are read"),
        Action::Command(Command::GenerateDocs { dir }) => done(commands::docs::generate(&dir)),
        // Exit 1 when the image is not ready.
        Action::Command(Command::Test(args)) => commands::test::test(settings, printer, args),
        Action::Command(Command::Rmi(args)) => done(commands::rmi::rmi(settings, printer, &args.images)),
        Action::Command(Command::Gc) => done(commands::rmi::gc(settings, printer)),
        Action::Command(Command::Load(args)) => done(commands::load::load(settings, printer, args)),
        Action::Command(Command::Ps(args)) => done(commands::ps::ps(settings, args.json)),
        Action::Command(Command::Stop(args)) => done(commands::stop::stop(settings, printer, &args.run)),
        Action::Command(Command::Audit(cli::AuditCommand::Show(args))) => done(commands::audit::show(settings, &args)),
        Action::Command(Command::Audit(cli::AuditCommand::Verify(args))) => commands::audit::verify(settings, &args),
        // Exit 1 when the directory or its manifest changed since the run.
        Action::Command(Command::Outputs(cli::OutputsCommand::Verify(args))) => {
            commands::outputs::verify(settings, &args)
        }
    }
}

fn report(error: &anyhow::Error, config: &str) -> ExitCode {
    eprintln!("error: {}", diagnostics::message(error));
    for hint in diagnostics::hints(error, config) {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(diagnostics::EXIT_ERROR)
}

fn init_tracing(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    // libcgroups warns about every controller the host lacks (hugetlb...) on each run.
    let default = if global.verbose {
        "ces=debug,ces_image=debug,ces_registry=debug,ces_runtime=debug,libcgroups=error"
    } else {
        "warn,libcgroups=error"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours for a terminal only: not escape codes in a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .without_time()
        .init();
}
