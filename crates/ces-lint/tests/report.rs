//! Ignores, the failure threshold, and the output formats.
#![allow(clippy::unwrap_used)]

use ces_lint::{Options, Severity, exceeds, lint, report};

const SOURCE: &str =
    "FROM python\n# ces-lint ignore=CES003, CES002\nFROM python:latest\nRUN make a\nRUN make b\nCOPY --from=0 /x /x\n";

fn codes(options: &Options) -> Vec<(&'static str, usize)> {
    lint(SOURCE, options).unwrap().into_iter().map(|f| (f.code, f.line)).collect()
}

#[test]
fn inline_ignores_apply_to_their_instruction_only() {
    assert_eq!(
        codes(&Options::default()),
        [("CES001", 1), ("CES002", 1), ("CES003", 1), ("CES001", 3), ("CES004", 3), ("CES009", 3), ("CES010", 5)]
    );
}

#[test]
fn ignore_option_drops_a_code_everywhere() {
    let options = Options { ignore: vec!["ces001".into(), "CES010".into()], ..Default::default() };
    assert_eq!(codes(&options), [("CES002", 1), ("CES003", 1), ("CES004", 3), ("CES009", 3)]);
}

#[test]
fn threshold_counts_findings_at_or_above_it() {
    let infos = lint(
        SOURCE,
        &Options {
            ignore: ["CES001", "CES002", "CES003", "CES004", "CES009"].map(String::from).to_vec(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(infos.iter().map(|f| f.severity).collect::<Vec<_>>(), [Severity::Info]);
    assert!(exceeds(&infos, Severity::Info));
    assert!(!exceeds(&infos, Severity::Warning));
    assert!(!exceeds(&[], Severity::Info));
    assert_eq!("Warning".parse::<Severity>(), Ok(Severity::Warning));
    assert!("fatal".parse::<Severity>().is_err());
}

#[test]
fn human_lines_name_file_line_code_and_severity() {
    let found = lint(SOURCE, &Options::default()).unwrap();
    let text = report::human("Dockerfile", &found);
    let first: Vec<&str> = text.lines().take(2).collect();
    assert_eq!(
        first[0],
        "Dockerfile:1: CES001 warning: base image python does not name its registry (docker.io is assumed)"
    );
    assert!(first[1].starts_with("  fix: write the registry in full"));
    assert!(text.contains("Dockerfile:5: CES010 info: RUN follows the RUN on line 4\n"));
}

#[test]
fn json_is_an_array_of_findings() {
    let found = lint(SOURCE, &Options::default()).unwrap();
    let json = report::json("Dockerfile", &found);
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), found.len());
    assert_eq!(items[0]["file"], "Dockerfile");
    assert_eq!(items[0]["line"], 1);
    assert_eq!(items[0]["code"], "CES001");
    assert_eq!(items[0]["severity"], "warning");
    assert!(items[0]["fix"].as_str().unwrap().contains("registry"));
}

#[test]
fn sarif_has_the_structure_code_scanning_reads() {
    let found = lint(SOURCE, &Options::default()).unwrap();
    let sarif = report::sarif("docker/Dockerfile", &found);
    assert_eq!(sarif["version"], "2.1.0");
    assert!(sarif["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let runs = sarif["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "ces-lint");
    let rules = driver["rules"].as_array().unwrap();
    assert_eq!(rules.len(), ces_lint::RULES.len());
    for rule in rules {
        assert!(rule["id"].as_str().unwrap().starts_with("CES"));
        assert!(!rule["shortDescription"]["text"].as_str().unwrap().is_empty());
        assert!(["error", "warning", "note"].contains(&rule["defaultConfiguration"]["level"].as_str().unwrap()));
    }
    let results = runs[0]["results"].as_array().unwrap();
    assert_eq!(results.len(), found.len());
    for (result, finding) in results.iter().zip(&found) {
        assert_eq!(result["ruleId"], finding.code);
        let index = result["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], finding.code);
        assert!(["error", "warning", "note"].contains(&result["level"].as_str().unwrap()));
        assert!(!result["message"]["text"].as_str().unwrap().is_empty());
        let location = &result["locations"][0]["physicalLocation"];
        assert_eq!(location["artifactLocation"]["uri"], "docker/Dockerfile");
        assert_eq!(location["region"]["startLine"], finding.line);
    }
    assert_eq!(results.last().unwrap()["level"], "note");
}

#[test]
fn docs_list_every_rule_with_its_severity() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/lint.md")).unwrap();
    for rule in ces_lint::RULES {
        let row = format!("| {} | {} |", rule.code, rule.severity);
        assert!(docs.contains(&row), "docs/lint.md lacks the row {row}");
    }
}
