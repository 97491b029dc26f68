//! Starts a local Docker Distribution registry holding a sample TRE image, for
//! the README's end-to-end demo: writes a ces config that allows it, prints the
//! image reference on stdout, and serves until its standard input closes.
//!
//! Usage: `ces-sample-registry CONFIG_OUT STORE_ROOT`

use std::io::Read;
use std::path::PathBuf;

use ces_testkit::layer::{Entry, Layer, busybox_entries};
use ces_testkit::{AuthMode, ImageSpec, Registry};

const ANALYSIS: &str = r#"#!/bin/sh
# A sample analysis: counts the rows of every CSV in /safe_data and writes a
# summary to /safe_outputs, the only directory kept after the run.
set -e
out=/safe_outputs/summary.txt
echo "sample analysis, run at $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$out"
for f in /safe_data/*.csv; do
  [ -e "$f" ] || { echo "no CSV files in /safe_data" >> "$out"; break; }
  echo "$(basename "$f"): $(wc -l < "$f") lines" >> "$out"
done
cat "$out"
"#;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config_out, store_root] = args.as_slice() else {
        eprintln!("usage: ces-sample-registry CONFIG_OUT STORE_ROOT");
        std::process::exit(2);
    };
    let registry = Registry::start(AuthMode::Anonymous);
    let mut entries = busybox_entries();
    entries.extend([
        Entry::dir("safe_data"),
        Entry::dir("safe_outputs"),
        Entry::dir("scratch"),
        Entry::dir("app"),
        Entry::file_mode("app/analysis.sh", ANALYSIS, 0o755),
    ]);
    let image = ImageSpec::new(vec![Layer::new(entries)])
        .env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        .cmd(&["/app/analysis.sh"])
        .label("org.opencontainers.image.source", "https://github.com/ces-tre/sample-analysis")
        .label("org.opencontainers.image.revision", "0123456789abcdef0123456789abcdef01234567")
        .label("org.opencontainers.image.version", "1.0")
        .build();
    registry.push(&image, "samples/analysis", "1.0");
    let host = registry.host();
    let config = format!(
        "# Written by ces-sample-registry for the demo.\n[registries]\nallowed = [\"ghcr.io\", \"{host}\"]\ninsecure = [\"{host}\"]\n\n[storage]\nroot = {:?}\n",
        PathBuf::from(store_root).display().to_string()
    );
    std::fs::write(config_out, config).unwrap_or_else(|e| panic!("cannot write {config_out}: {e}"));
    println!("{host}/samples/analysis:1.0");
    // Serve until the caller closes our stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
