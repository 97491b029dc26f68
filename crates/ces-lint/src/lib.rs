//! Checks a Dockerfile against Trusted Research Environment advice and
//! general best practice (`ces lint`).
//!
//! [`parse`] reads a Dockerfile as Docker does (directives, continuations,
//! heredocs, exec and shell forms); [`rules`] holds the rules, each with a
//! stable code, a severity and a fix; [`report`] writes findings for people,
//! as JSON, or as SARIF for code scanning.

pub mod parse;
pub mod report;
pub mod rules;
pub mod stages;

pub use parse::{Dockerfile, ParseError};
pub use rules::{Finding, RULES, Rule, Severity};

/// What to leave out.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Codes never reported (`--ignore`).
    pub ignore: Vec<String>,
}

/// Parses `source` and runs every rule, leaving out ignored codes: those in
/// `options`, and those a `# ces-lint ignore=` comment names for the
/// instruction a finding is on.
pub fn lint(source: &str, options: &Options) -> Result<Vec<Finding>, ParseError> {
    let file = parse::parse(source)?;
    let ignored = |f: &Finding| {
        options.ignore.iter().any(|c| c.eq_ignore_ascii_case(f.code))
            || file.instructions.iter().any(|i| i.line == f.line && i.ignores.iter().any(|c| c == f.code))
    };
    Ok(rules::check(&file).into_iter().filter(|f| !ignored(f)).collect())
}

/// Whether any finding is at or above `threshold` (`--failure-threshold`).
pub fn exceeds(findings: &[Finding], threshold: Severity) -> bool {
    findings.iter().any(|f| f.severity >= threshold)
}
