//! `ces lint`: check a Dockerfile against TRE advice, print the findings, and
//! say by the exit code whether any reaches the failure threshold.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use ces_lint::{Options, report};

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
    let (name, source) = read(&args.path)?;
    let findings = ces_lint::lint(&source, &Options { ignore: args.ignore }).map_err(|error| {
        let line = error.line();
        anyhow::Error::new(error).context(format!("{name}:{line}"))
    })?;
    match args.format {
        LintFormat::Human => print!("{}", report::human(&name, &findings)),
        LintFormat::Json => println!("{:#}", report::json(&name, &findings)),
        LintFormat::Sarif => println!("{:#}", report::sarif(&name, &findings)),
    }
    let failed = ces_lint::exceeds(&findings, args.failure_threshold);
    Ok(if failed { ExitCode::from(EXIT_FINDINGS) } else { ExitCode::SUCCESS })
}

/// The name to show, and the text. A Dockerfile need not be UTF-8 (BuildKit
/// reads bytes: a Latin-1 comment builds): bytes that are not are read as
/// U+FFFD, which no instruction's syntax needs.
fn read(path: &Path) -> anyhow::Result<(String, String)> {
    if path == Path::new("-") {
        let mut source = Vec::new();
        std::io::stdin().read_to_end(&mut source).context("cannot read the Dockerfile from standard input")?;
        return Ok(("-".to_owned(), String::from_utf8_lossy(&source).into_owned()));
    }
    // As the user ces runs for: under sudo, root would read (and print in
    // findings) what the user may not.
    let source =
        crate::identity::read_bytes_as_invoker(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((path.display().to_string(), String::from_utf8_lossy(&source).into_owned()))
}
