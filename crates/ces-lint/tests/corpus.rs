//! The corpus: good Dockerfiles lint clean, and each bad one trips its rule,
//! exactly, on the line it should (and no other rule).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use ces_lint::{Options, ParseError, lint};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name)
}

/// The findings on a corpus file, as `(code, line)`.
fn findings(name: &str) -> Vec<(&'static str, usize)> {
    let source = std::fs::read_to_string(corpus(name)).unwrap();
    let found = lint(&source, &Options::default()).unwrap();
    for f in &found {
        let rule = ces_lint::rules::rule(f.code).unwrap_or_else(|| panic!("{} is not in RULES", f.code));
        assert_eq!(rule.severity, f.severity);
    }
    found.into_iter().map(|f| (f.code, f.line)).collect()
}

#[test]
fn good_files_have_no_findings() {
    let mut seen = 0;
    for entry in std::fs::read_dir(corpus("good")).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        let found = lint(&source, &Options::default()).unwrap();
        assert!(found.is_empty(), "{}: {found:#?}", path.display());
        seen += 1;
    }
    assert!(seen >= 5);
}

#[test]
fn ces001_base_without_registry() {
    // The base, and an image copied from (not when pinned by digest).
    assert_eq!(findings("bad/ces001-no-registry.Dockerfile"), [("CES001", 1), ("CES002", 1), ("CES002", 5)]);
}

#[test]
fn ces002_base_without_digest() {
    assert_eq!(findings("bad/ces002-no-digest.Dockerfile"), [("CES002", 1)]);
    // A build argument with no default decides the base: nothing pinned.
    assert_eq!(findings("bad/ces002-arg-without-default.Dockerfile"), [("CES002", 2)]);
}

#[test]
fn ces003_latest_or_no_tag_in_every_stage_with_arg_substitution() {
    assert_eq!(findings("bad/ces003-latest.Dockerfile"), [("CES002", 2), ("CES003", 2), ("CES002", 4), ("CES003", 4)]);
}

#[test]
fn ces004_final_stage_misses_a_tre_directory() {
    let source = std::fs::read_to_string(corpus("bad/ces004-no-tre-dirs.Dockerfile")).unwrap();
    let found = lint(&source, &Options::default()).unwrap();
    assert_eq!(found.iter().map(|f| (f.code, f.line)).collect::<Vec<_>>(), [("CES004", 1)]);
    assert_eq!(found[0].message, "the final stage does not create /scratch");
}

#[test]
fn ces005_files_copied_where_mounts_hide_them() {
    assert_eq!(findings("bad/ces005-copy-into-mounts.Dockerfile"), [("CES005", 3), ("CES005", 5)]);
}

#[test]
fn ces006_add_of_plain_files_but_not_archives() {
    assert_eq!(findings("bad/ces006-add-for-copy.Dockerfile"), [("CES006", 3)]);
}

#[test]
fn ces007_add_of_a_url_without_checksum() {
    assert_eq!(findings("bad/ces007-add-url.Dockerfile"), [("CES007", 3)]);
}

#[test]
fn ces008_data_files_by_extension() {
    // Also what a builder stage made: the final stage copies it in.
    assert_eq!(
        findings("bad/ces008-data-files.Dockerfile"),
        [("CES008", 5), ("CES008", 5), ("CES008", 6), ("CES008", 7)]
    );
}

#[test]
fn ces009_no_user_or_root_last() {
    assert_eq!(findings("bad/ces009-no-user.Dockerfile"), [("CES009", 1)]);
    assert_eq!(findings("bad/ces009-root-user.Dockerfile"), [("CES009", 5)]);
}

#[test]
fn ces010_consecutive_runs() {
    // Related RUNs only: two pip installs, not mkdir then pip, nor pip then useradd.
    assert_eq!(findings("bad/ces010-consecutive-runs.Dockerfile"), [("CES010", 5)]);
}

#[test]
fn ces011_ces012_apt_without_cleanup_or_recommends_off() {
    assert_eq!(findings("bad/ces011-apt.Dockerfile"), [("CES011", 2), ("CES012", 2), ("CES011", 4)]);
}

#[test]
fn ces013_pip_without_no_cache_dir() {
    assert_eq!(findings("bad/ces013-pip.Dockerfile"), [("CES013", 2)]);
}

#[test]
fn ces014_hugging_face_without_offline_environment() {
    assert_eq!(findings("bad/ces014-hf-online.Dockerfile"), [("CES014", 2)]);
}

#[test]
fn ces015_model_library_without_cached_model() {
    assert_eq!(findings("bad/ces015-no-model-cache.Dockerfile"), [("CES015", 3)]);
}

#[test]
fn ces016_platform_by_flag_or_by_base() {
    assert_eq!(findings("bad/ces016-platform.Dockerfile"), [("CES016", 2), ("CES016", 4)]);
}

#[test]
fn ces017_download_at_container_start() {
    assert_eq!(findings("bad/ces017-start-download.Dockerfile"), [("CES017", 5)]);
}

#[test]
fn ces018_download_run_unchecked() {
    assert_eq!(findings("bad/ces018-curl-sh.Dockerfile"), [("CES018", 3), ("CES018", 6)]);
}

#[test]
fn ces019_model_weights_copied_in() {
    assert_eq!(findings("bad/ces019-model-weights.Dockerfile"), [("CES019", 3)]);
}

/// `--target` picks the stage built, as `docker build --target` does; the
/// stages it does not use are not looked at.
#[test]
fn the_target_stage_decides_what_is_built() {
    let source = std::fs::read_to_string(corpus("../patterns/unused-stages/Dockerfile")).unwrap();
    let codes = |target: Option<&str>| {
        let options = Options { target: target.map(str::to_owned), ..Default::default() };
        lint(&source, &options).unwrap().into_iter().map(|f| (f.code, f.line)).collect::<Vec<_>>()
    };
    assert_eq!(codes(None), [("CES018", 6)]);
    assert_eq!(
        codes(Some("BUILD-arm64")),
        [("CES002", 3), ("CES004", 3), ("CES009", 3), ("CES016", 3), ("CES011", 4), ("CES012", 4)]
    );
    let error = lint(&source, &Options { target: Some("nope".into()), ..Default::default() }).unwrap_err();
    assert_eq!(error.to_string(), "no stage is named \"nope\" (--target)");
}

#[test]
fn ces020_secrets_in_env_or_arg() {
    assert_eq!(
        findings("bad/ces020-secrets.Dockerfile"),
        [("CES020", 2), ("CES020", 3), ("CES020", 4), ("CES020", 4), ("CES020", 4)]
    );
}

#[test]
fn every_rule_has_a_bad_corpus_file() {
    let names: Vec<String> = std::fs::read_dir(corpus("bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_ascii_uppercase())
        .collect();
    for rule in ces_lint::RULES {
        // CES012 shares the apt file with CES011.
        let code = if rule.code == "CES012" { "CES011" } else { rule.code };
        assert!(names.iter().any(|n| n.starts_with(code)), "no corpus file for {}", rule.code);
    }
}

#[test]
fn an_unclosed_heredoc_is_a_parse_error_with_its_line() {
    let source = std::fs::read_to_string(corpus("bad/unparsable.Dockerfile")).unwrap();
    let error = lint(&source, &Options::default()).unwrap_err();
    assert_eq!(error, ParseError::UnterminatedHeredoc { line: 2, delimiter: "EOF".into() });
    assert_eq!(error.line(), 2);
}

#[test]
fn tricky_syntax_parses_to_the_instructions_docker_sees() {
    let source = std::fs::read_to_string(corpus("good/tricky-syntax.Dockerfile")).unwrap();
    let file = ces_lint::parse::parse(&source).unwrap();
    let seen: Vec<(&str, usize)> = file.instructions.iter().map(|i| (i.keyword.as_str(), i.line)).collect();
    assert_eq!(
        seen,
        [("ARG", 3), ("ARG", 4), ("FROM", 5), ("ENV", 6), ("RUN", 7), ("COPY", 14), ("USER", 15), ("CMD", 16)]
    );
    assert!(file.instructions[4].heredocs.is_empty());
    assert_eq!(file.instructions[5].words(), ["src dir/", "/app/"]);
    let stages = ces_lint::stages::stages(&file);
    assert_eq!(
        stages[0].base.as_deref(),
        Some(source.lines().nth(3).unwrap().replace("ARG DIGEST=", "docker.io/library/python:3.12-slim@").as_str())
    );
}
