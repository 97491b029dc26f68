//! `ces lint`: check a Dockerfile against TRE advice, with its build context
//! when there is one, print the findings (and, on standard error, what could
//! not be checked), and say by the exit code whether any reaches the failure
//! threshold.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use ces_lint::{BuildContext, Options, report};

use crate::cli::{LintArgs, LintFormat};

/// Exit code when a finding reaches `--failure-threshold`.
const EXIT_FINDINGS: u8 = 1;

/// Lints the Dockerfile at `args.path` (`-`: standard input).
pub fn lint(args: LintArgs) -> anyhow::Result<ExitCode> {
    for code in &args.ignore {
        anyhow::ensure!(
            ces_lint::rules::rule(&code.to_ascii_uppercase()).is_some(),
            "--ignore {code}: no such rule (see docs/lint.md)"
        );
    }
    let source = if args.path == Path::new("-") {
        let mut source = Vec::new();
        std::io::stdin().read_to_end(&mut source).context("cannot read the Dockerfile from standard input")?;
        Some(source)
    } else {
        None
    };
    // Everything is read as the user ces runs for: under sudo, root would
    // read (and print in findings) what the user may not.
    let (name, linted) = crate::identity::as_invoker(|| read_and_lint(&args, source))??;
    match args.format {
        LintFormat::Human => print!("{}", report::human(&name, &linted.findings)),
        LintFormat::Json => println!("{:#}", report::json(&name, &linted.findings)),
        LintFormat::Sarif => println!("{:#}", report::sarif(&name, &linted.findings)),
    }
    for note in &linted.notes {
        eprintln!("{name}:{}: note: {}", note.line, note.message);
    }
    let failed = ces_lint::exceeds(&linted.findings, args.failure_threshold);
    Ok(if failed { ExitCode::from(EXIT_FINDINGS) } else { ExitCode::SUCCESS })
}

/// The build context cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the build context {}: {error}", dir.display())]
pub struct ContextError {
    dir: PathBuf,
    error: std::io::Error,
}

/// What to do about a [`ContextError`].
pub fn hints(_: &ContextError) -> Vec<String> {
    vec!["name the build context with --context DIR, or lint the Dockerfile alone with --no-context".into()]
}

/// Reads the Dockerfile (or takes `stdin`'s bytes) and its build context,
/// and lints it.
fn read_and_lint(args: &LintArgs, stdin: Option<Vec<u8>>) -> anyhow::Result<(String, ces_lint::Report)> {
    let (name, bytes) = match stdin {
        Some(bytes) => ("-".to_owned(), bytes),
        None => {
            let bytes = std::fs::read(&args.path).with_context(|| format!("cannot read {}", args.path.display()))?;
            (args.path.display().to_string(), bytes)
        }
    };
    // A Dockerfile need not be UTF-8 (BuildKit reads bytes: a Latin-1
    // comment builds): bytes that are not are read as U+FFFD, which no
    // instruction's syntax needs.
    let source = String::from_utf8_lossy(&bytes);
    let dir: Option<PathBuf> = match (&args.context, args.no_context || name == "-") {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => None,
        (None, false) => {
            Some(args.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).into())
        }
    };
    let dockerfile = (name != "-").then_some(args.path.as_path());
    let context = match dir {
        Some(dir) => Some(BuildContext::open(&dir, dockerfile).map_err(|error| ContextError { dir, error })?),
        None => None,
    };
    if context.as_ref().is_some_and(BuildContext::truncated) {
        let (files, entries) = (ces_lint::context::MAX_FILES, ces_lint::context::MAX_ENTRIES);
        eprintln!(
            "{name}: note: the build context is larger than ces lint reads ({files} files or {entries} entries): only part of it was checked"
        );
    }
    let options = Options { ignore: args.ignore.clone(), target: args.target.clone() };
    let linted = ces_lint::lint_in(&source, &options, context.as_ref()).map_err(|error| {
        let line = error.line();
        anyhow::Error::new(error).context(format!("{name}:{line}"))
    })?;
    Ok((name, linted))
}
