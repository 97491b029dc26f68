//! Findings written out: for people (`file:line: CODE severity: message`), as
//! JSON, and as SARIF 2.1.0 for GitHub code scanning.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::rules::{Finding, RULES, Severity};

/// Where the rules are documented (SARIF's `helpUri`).
const DOCS: &str = "https://github.com/ces-tre/ces/blob/main/docs/lint.md";

/// One finding per line, each followed by an indented `fix:` line.
pub fn human(file: &str, findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(out, "{file}:{}: {} {}: {}", f.line, f.code, f.severity, f.message);
        let _ = writeln!(out, "  fix: {}", f.fix);
    }
    out
}

/// The findings as a JSON array of `{file, line, code, severity, message, fix}`.
pub fn json(file: &str, findings: &[Finding]) -> Value {
    Value::Array(
        findings
            .iter()
            .map(|f| {
                json!({
                    "file": file, "line": f.line, "code": f.code, "severity": f.severity,
                    "message": f.message, "fix": f.fix,
                })
            })
            .collect(),
    )
}

/// SARIF's name for a severity.
fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

/// A SARIF 2.1.0 log with one run: every rule, and a result per finding.
pub fn sarif(file: &str, findings: &[Finding]) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.code,
                "shortDescription": { "text": r.summary },
                "help": { "text": r.fix },
                "helpUri": format!("{DOCS}#{}", r.code.to_ascii_lowercase()),
                "defaultConfiguration": { "level": level(r.severity) },
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            json!({
                "ruleId": f.code,
                "ruleIndex": RULES.iter().position(|r| r.code == f.code),
                "level": level(f.severity),
                "message": { "text": format!("{} (fix: {})", f.message, f.fix) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": file },
                        "region": { "startLine": f.line },
                    }
                }],
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "ces-lint",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": DOCS,
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
