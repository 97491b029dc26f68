//! `ces lint` as users run it: the real binary on the ces-lint corpus, its
//! output formats and its exit codes (0 clean, 1 findings at the threshold,
//! 125 its own errors).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::Sandbox;

fn corpus(name: &str) -> String {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ces-lint/tests/corpus").join(name);
    path.display().to_string()
}

#[test]
fn a_clean_dockerfile_exits_0_and_prints_nothing() {
    let sb = Sandbox::new(&[]);
    let out = sb.ces(&["lint", &corpus("good/huggingface-multistage.Dockerfile")]);
    assert_eq!(out.ok(), "");
}

#[test]
fn findings_print_file_line_code_severity_and_exit_1() {
    let sb = Sandbox::new(&[]);
    let file = corpus("bad/ces011-apt.Dockerfile");
    let out = sb.ces(&["lint", &file]);
    assert_eq!(out.code, 1, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.starts_with("  fix: ")).collect();
    assert_eq!(
        lines,
        [
            format!("{file}:2: CES011 warning: apt-get install leaves /var/lib/apt/lists in the layer"),
            format!("{file}:2: CES012 info: apt-get install without --no-install-recommends"),
            format!("{file}:4: CES011 warning: apt-get install leaves /var/lib/apt/lists in the layer"),
        ]
    );
    assert_eq!(out.stdout.lines().filter(|l| l.starts_with("  fix: ")).count(), 3);
}

#[test]
fn the_threshold_and_ignores_decide_the_exit_code() {
    let sb = Sandbox::new(&[]);
    let file = corpus("bad/ces011-apt.Dockerfile");
    assert_eq!(sb.ces(&["lint", "--failure-threshold", "warning", &file]).code, 1);
    let out = sb.ces(&["lint", "--failure-threshold", "error", &file]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("CES011"), "findings below the threshold are still printed");
    let out = sb.ces(&["lint", "--ignore", "CES011", "--ignore", "ces012", &file]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));
}

#[test]
fn json_and_sarif_on_standard_input() {
    let sb = Sandbox::new(&[]);
    let source = std::fs::read(corpus("bad/ces005-copy-into-mounts.Dockerfile")).unwrap();
    let out = sb.ces_stdin(&["lint", "--format", "json", "-"], &source);
    assert_eq!(out.code, 1, "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let found: Vec<(&str, u64)> =
        json.as_array().unwrap().iter().map(|f| (f["code"].as_str().unwrap(), f["line"].as_u64().unwrap())).collect();
    assert_eq!(found, [("CES005", 3), ("CES005", 5)]);
    assert_eq!(json[0]["file"], "-");

    let out = sb.ces_stdin(&["lint", "--format", "sarif", "-"], &source);
    let sarif: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let result = &sarif["runs"][0]["results"][0];
    assert_eq!((result["ruleId"].as_str(), result["level"].as_str()), (Some("CES005"), Some("error")));
    assert_eq!(result["locations"][0]["physicalLocation"]["region"]["startLine"], 3);
}

#[test]
fn own_errors_exit_125_naming_file_and_line() {
    let sb = Sandbox::new(&[]);
    let file = corpus("bad/unparsable.Dockerfile");
    let err = sb.ces(&["lint", &file]).fails().to_owned();
    assert!(err.contains(&format!("error: {file}:2: heredoc <<EOF is not closed")), "{err}");
    let err = sb.ces(&["lint", &corpus("missing.Dockerfile")]).fails().to_owned();
    assert!(err.contains("cannot read"), "{err}");
    let err = sb.ces(&["lint", "--ignore", "CES999", &corpus("good/minimal.Dockerfile")]).fails().to_owned();
    assert!(err.contains("--ignore CES999: no such rule"), "{err}");
}

#[test]
fn lint_needs_no_config_not_even_a_readable_one() {
    let sb = Sandbox::new(&[]);
    std::fs::write(&sb.config, "this is [not toml").unwrap();
    let out = sb.ces(&["lint", &corpus("good/huggingface-multistage.Dockerfile")]);
    assert_eq!(out.ok(), "", "a broken config does not concern lint");
}

/// A Dockerfile that is not UTF-8 (a Latin-1 comment, which BuildKit builds)
/// is linted, not refused.
#[test]
fn a_latin1_dockerfile_is_linted() {
    let sb = Sandbox::new(&[]);
    let good = std::fs::read(corpus("good/huggingface-multistage.Dockerfile")).unwrap();
    let mut latin1 = b"# Auteur : J\xe9r\xf4me, donn\xe9es de sant\xe9\n".to_vec();
    latin1.extend_from_slice(&good);
    let file = sb.dir.path().join("Dockerfile");
    std::fs::write(&file, &latin1).unwrap();
    assert!(std::str::from_utf8(&latin1).is_err());
    let out = sb.ces(&["lint", &file.display().to_string()]);
    assert_eq!(out.ok(), "", "as clean as the same file in UTF-8");
    // And with a finding, its line is the file's own.
    latin1.extend_from_slice(b"RUN apt-get update && apt-get install -y --no-install-recommends curl\n");
    std::fs::write(&file, &latin1).unwrap();
    let out = sb.ces(&["lint", &file.display().to_string()]);
    assert_eq!(out.code, 1, "{out:?}");
    let line = String::from_utf8_lossy(&latin1).lines().count();
    assert!(out.stdout.contains(&format!(":{line}: CES011")), "{out:?}");
}
