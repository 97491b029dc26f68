//! Checks a Dockerfile against Trusted Research Environment advice and
//! general best practice (`ces lint`).
//!
//! [`parse`] reads a Dockerfile as Docker does (directives, continuations,
//! heredocs, exec and shell forms); [`rules`] holds the rules, each with a
//! stable code, a severity and a fix; [`report`] writes findings for people,
//! as JSON, or as SARIF for code scanning.

pub mod context;
pub mod deps;
pub mod image;
pub mod parse;
pub mod report;
pub mod rules;
pub mod stages;

pub use context::BuildContext;
pub use parse::{Dockerfile, ParseError};
pub use rules::{Finding, Note, RULES, Report, Rule, Severity};

/// What to leave out.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Codes never reported (`--ignore`).
    pub ignore: Vec<String>,
    /// The stage built (`--target`, as `docker build --target`); the last
    /// when `None`.
    pub target: Option<String>,
}

/// Parses `source` and runs every rule, leaving out ignored codes: those in
/// `options`, and those a `# ces-lint ignore=` comment names for the
/// instruction a finding is on. Without a build context.
pub fn lint(source: &str, options: &Options) -> Result<Vec<Finding>, ParseError> {
    Ok(lint_in(source, options, None)?.findings)
}

/// [`lint`] with the build context the Dockerfile is built in, if there is
/// one to read (what `COPY . .` copies, requirement files, start scripts);
/// the report's notes say what could not be checked.
pub fn lint_in(source: &str, options: &Options, context: Option<&BuildContext>) -> Result<Report, ParseError> {
    let file = parse::parse(source)?;
    // The comments' ignores by line, looked up once per finding: searching
    // every instruction for each finding made a long file quadratic.
    let mut by_line: std::collections::HashMap<usize, Vec<&str>> = std::collections::HashMap::new();
    for instruction in file.instructions.iter().filter(|i| !i.ignores.is_empty()) {
        by_line.entry(instruction.line).or_default().extend(instruction.ignores.iter().map(String::as_str));
    }
    let ignored = |f: &Finding| {
        options.ignore.iter().any(|c| c.eq_ignore_ascii_case(f.code))
            || by_line.get(&f.line).is_some_and(|codes| codes.contains(&f.code))
    };
    let stages = stages::stages(&file);
    let Some(target) = stages::target(&stages, options.target.as_deref()) else {
        let name = options.target.clone().unwrap_or_default();
        return Err(ParseError::NoSuchTarget { line: source.lines().count().max(1), name });
    };
    let mut report = rules::check(&file, &stages, target, context);
    report.findings.retain(|f| !ignored(f));
    Ok(report)
}

/// Whether any finding is at or above `threshold` (`--failure-threshold`).
pub fn exceeds(findings: &[Finding], threshold: Severity) -> bool {
    findings.iter().any(|f| f.severity >= threshold)
}
