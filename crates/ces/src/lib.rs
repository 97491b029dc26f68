//! The `ces` binary crate: parses the command line (ces, and the compatible
//! `ces-pull`), resolves settings once, calls the libraries, and prints.
//! Logs and progress go to stderr; stdout carries data for scripts.

use std::process::ExitCode;

use clap::Parser as _;

pub mod cli;
pub mod commands;
pub mod diagnostics;
pub mod printer;
pub mod settings;

use ces_registry::Credentials;
use cli::{CesPullCli, Cli, Command, GlobalArgs};
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
}

/// Runs ces as `entry`, and turns the outcome into an exit code.
pub fn main(entry: Entry) -> ExitCode {
    let (global, action) = match entry {
        Entry::Ces => {
            let cli = Cli::parse();
            (cli.global, Action::Command(cli.command))
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
    init_tracing(&global);
    let settings = match Settings::load(global.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => return report(&error, settings::SYSTEM_CONFIG),
    };
    let printer = Printer::new(global.quiet);
    match run(&settings, &printer, action) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error, &settings.config_shown()),
    }
}

enum Action {
    Command(Command),
    CompatPull(cli::CompatPull),
}

fn run(settings: &Settings, printer: &Printer, action: Action) -> anyhow::Result<()> {
    match action {
        Action::Command(Command::Pull(args)) => {
            let secret = if args.password_stdin { Some(token_from_stdin()?) } else { token_from_env() };
            if secret.is_some() && args.user.as_deref().is_none_or(str::is_empty) {
                anyhow::bail!("a token was given without a user: add --user USER");
            }
            let credentials = Credentials::from_parts(args.user, secret);
            commands::pull::pull(
                settings,
                printer,
                PullRequest { reference: args.reference, credentials, unpack: !args.no_unpack },
            )
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
            commands::pull::pull(
                settings,
                printer,
                PullRequest { reference: compat.reference, credentials, unpack: true },
            )
        }
        Action::Command(Command::Images(args)) => commands::images::images(settings, args.json),
        Action::Command(Command::Inspect(args)) => commands::inspect::inspect(settings, &args.image, args.json),
        Action::Command(Command::Rmi(args)) => commands::rmi::rmi(settings, printer, &args.images),
        Action::Command(Command::Gc) => commands::rmi::gc(settings, printer),
        Action::Command(Command::Load(args)) => commands::load::load(settings, printer, args),
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
    let default = if global.verbose { "ces=debug,ces_image=debug,ces_registry=debug" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().init();
}
