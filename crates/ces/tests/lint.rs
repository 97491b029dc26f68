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

/// Infos are advice: at the default threshold (warning) they do not fail.
#[test]
fn infos_alone_exit_0_at_the_default_threshold() {
    let sb = Sandbox::new(&[]);
    let file = corpus("bad/ces010-consecutive-runs.Dockerfile");
    let out = sb.ces(&["lint", &file]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("CES010 info"), "{out:?}");
    assert_eq!(sb.ces(&["lint", "--failure-threshold", "info", &file]).code, 1);
}

/// A build context as users have one: the Dockerfile's directory by default,
/// another with `--context`, none with `--no-context` or for standard input
/// (then notes on standard error say what was not checked).
#[test]
fn the_build_context_is_read_from_the_dockerfiles_directory_or_as_named() {
    let sb = Sandbox::new(&[]);
    let project = sb.dir.path().join("project");
    std::fs::create_dir_all(project.join("data")).unwrap();
    let dockerfile = "FROM ghcr.io/example/base:1@sha256:4c0a8c9b1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d\n\
         RUN mkdir -p /safe_data /safe_outputs /scratch\nWORKDIR /app\nCOPY . .\n\
         RUN pip install --no-cache-dir -r requirements.txt\nUSER 1000\n";
    std::fs::write(project.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(project.join("requirements.txt"), "transformers==4.44.0\n").unwrap();
    std::fs::write(project.join("data/cohort.csv"), "id\n1\n").unwrap();
    let path = project.join("Dockerfile").display().to_string();
    let codes = |stdout: &str| {
        stdout
            .lines()
            .filter(|l| !l.starts_with("  fix:"))
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    let out = sb.ces(&["lint", &path]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(codes(&out.stdout), ["CES008", "CES014", "CES015"], "{out:?}");
    assert!(out.stdout.contains("copies data files from the build context: data/cohort.csv"), "{out:?}");
    assert!(out.stdout.contains("transformers is installed (from requirements.txt)"), "{out:?}");
    assert_eq!(out.stderr, "", "everything was checked");

    // The .dockerignore leaves the data out.
    std::fs::write(project.join(".dockerignore"), "data/\n").unwrap();
    let out = sb.ces(&["lint", &path]);
    assert_eq!(codes(&out.stdout), ["CES014", "CES015"], "{out:?}");

    // Alone: what was not read is said, and nothing else is made up.
    for out in [sb.ces(&["lint", "--no-context", &path]), sb.ces_stdin(&["lint", "-"], dockerfile.as_bytes())] {
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stdout, "");
        let notes: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(notes.len(), 2, "{out:?}");
        assert!(
            notes[0].ends_with(
                ":4: note: no build context was read (give --context DIR): the files this copies were not checked"
            ),
            "{out:?}"
        );
        assert!(notes[1].contains(":5: note: no build context was read"), "{out:?}");
    }
    // Standard input with a context named.
    let out = sb.ces_stdin(&["lint", "--context", &project.display().to_string(), "-"], dockerfile.as_bytes());
    assert_eq!(codes(&out.stdout), ["CES014", "CES015"], "{out:?}");

    // A context that is not there: ces's own error, with a hint.
    let out = sb.ces(&["lint", "--context", "/no/such/dir", &path]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("error: cannot read the build context /no/such/dir: No such file"), "{out:?}");
    assert!(out.stderr.contains("hint: name the build context with --context DIR"), "{out:?}");
}
