//! `ces lint` on a very long Dockerfile: the findings are all there, and the
//! work grows with the file, not with its square (40,000 `RUN` lines took
//! seconds when each finding looked through every instruction for its
//! `# ces-lint ignore=` comment).

use ces_lint::{Options, lint};

/// A Dockerfile of `runs` consecutive `RUN` lines after a pinned base, with
/// every tenth one ignoring CES010 by comment.
fn long_dockerfile(runs: usize) -> String {
    let mut text = String::from("FROM docker.io/library/debian:12@sha256:");
    text.push_str(&"a".repeat(64));
    text.push('\n');
    for i in 0..runs {
        if i % 10 == 5 {
            text.push_str("# ces-lint ignore=CES010\n");
        }
        text.push_str(&format!("RUN make step{i}\n"));
    }
    text
}

#[test]
fn forty_thousand_runs_give_every_finding_once() {
    let runs = 40_000;
    let started = std::time::Instant::now();
    let findings = lint(&long_dockerfile(runs), &Options::default()).expect("parses");
    // Reported, never asserted: the count below is what the test checks.
    eprintln!("lint of {runs} RUN lines: {:.2?}", started.elapsed());
    let consecutive = findings.iter().filter(|f| f.code == "CES010").count();
    // Every RUN but the first follows a RUN; one in ten says to ignore it.
    assert_eq!(consecutive, runs - 1 - runs / 10);
    // Each line has its finding once, in order.
    let lines: Vec<usize> = findings.iter().filter(|f| f.code == "CES010").map(|f| f.line).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]));
}
