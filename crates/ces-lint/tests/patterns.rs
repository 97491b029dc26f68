//! The pattern corpus: one small build context per pattern met in real
//! Dockerfiles (each false positive and each miss the evaluation in
//! docs/lint.md found), linted with its context. The expected report sits
//! next to each as `expected.txt`, so that a change of rule shows as a diff;
//! `CES_UPDATE_GOLDEN=1` writes them anew.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::Path;

use ces_lint::{BuildContext, Options, Severity, exceeds, lint_in};

/// The report on one pattern: the exit at the default threshold, each
/// finding, each note.
fn report(dir: &Path) -> String {
    let dockerfile = dir.join("Dockerfile");
    let source = String::from_utf8_lossy(&std::fs::read(&dockerfile).unwrap()).into_owned();
    let context = BuildContext::open(dir, Some(&dockerfile)).unwrap();
    let report = lint_in(&source, &Options::default(), Some(&context)).unwrap();
    let mut out = String::new();
    let fails = exceeds(&report.findings, Severity::Warning);
    let _ = writeln!(out, "exit at --failure-threshold warning (the default): {}", u8::from(fails));
    for f in &report.findings {
        let _ = writeln!(out, "{}: {} {}: {}", f.line, f.code, f.severity, f.message);
    }
    for n in &report.notes {
        let _ = writeln!(out, "{}: note: {}", n.line, n.message);
    }
    out
}

#[test]
fn every_pattern_gives_its_expected_report() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/patterns");
    let update = std::env::var_os("CES_UPDATE_GOLDEN").is_some();
    let mut dirs: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    let mut differ = Vec::new();
    for dir in &dirs {
        let got = report(dir);
        let path = dir.join("expected.txt");
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            differ.push(format!("{}:\n--- expected\n{want}--- got\n{got}", dir.display()));
        }
    }
    assert!(dirs.len() >= 20, "only {} patterns", dirs.len());
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[test]
fn the_well_built_image_passes_and_each_group_of_the_issue_is_covered() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/patterns");
    let read = |name: &str| report(&root.join(name));
    // A well-built TRE image: no finding at all, exit 0.
    assert_eq!(read("well-built-tre"), "exit at --failure-threshold warning (the default): 0\n");
    // The reference service's pinned example and an inherited non-root user: exit 0.
    for name in ["reference-pinned", "inherited-user", "builder-hygiene", "cleaned-caches", "chained-runs"] {
        assert!(read(name).starts_with("exit at --failure-threshold warning (the default): 0\n"), "{name}");
    }
    // The misses now found.
    for (name, code) in [
        ("requirements-ml", "CES014"),
        ("environment-yml", "CES015"),
        ("pyproject", "CES015"),
        ("base-huggingface", "CES014"),
        ("tgi-model-id", "CES017"),
        ("start-script-nltk", "CES017"),
        ("ollama", "CES017"),
        ("curl-pipe-sh", "CES018"),
        ("copy-from-image", "CES003"),
        ("copy-dot-data", "CES008"),
        ("builder-stage-data", "CES008"),
        ("from-arg-no-default", "CES002"),
        ("pip-variants", "CES013"),
    ] {
        assert!(read(name).contains(code), "{name} lacks {code}");
    }
}
