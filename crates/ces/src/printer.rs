//! What the user sees while a command works: progress bars on a terminal
//! (nothing on a pipe or with `--quiet`), status lines on stderr.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use ces_image::{Digest, ImageReference};
use ces_registry::{PullReporter, Retry};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Prints status lines and owns the progress bars.
#[derive(Debug, Clone)]
pub struct Printer {
    quiet: bool,
    bars: MultiProgress,
}

impl Printer {
    /// A printer; bars only when stderr is a terminal and not `quiet`.
    pub fn new(quiet: bool) -> Printer {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Printer { quiet, bars: MultiProgress::with_draw_target(target) }
    }

    /// A status line on stderr (suspended around the bars).
    pub fn status(&self, line: impl AsRef<str>) {
        if !self.quiet {
            self.bars.suspend(|| eprintln!("{}", line.as_ref()));
        }
    }

    /// A spinner with a message, for a step of unknown length.
    pub fn spinner(&self, message: impl Into<String>) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// A reporter that draws one bar per layer.
    pub fn pull_reporter(&self) -> PullProgress {
        PullProgress { printer: self.clone(), bars: Mutex::new(HashMap::new()) }
    }
}

/// Sizes of downloads and files, in SI units: `12.3 MB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `n` of a thing, in words: `1 blob`, `3 blobs`.
pub fn counted(n: u64, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

/// Memory in binary units, the largest that fits (`512.0 MiB`, `4.0 GiB`),
/// as `ces test` reports use and peak use.
pub fn binary_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

/// A memory limit in GiB whatever its size (`0.5 GiB`), the unit `-m` takes.
pub fn gib(bytes: u64) -> String {
    // As exact as `-m` takes it (`-m 0.25` is 0.25 GiB, not "0.2"), with at
    // least one decimal and at most three.
    let text = format!("{:.3}", bytes as f64 / f64::from(1u32 << 30));
    let text = text.trim_end_matches('0');
    let text = if text.ends_with('.') { format!("{text}0") } else { text.to_owned() };
    format!("{text} GiB")
}

/// One progress bar per layer of a pull.
#[derive(Debug)]
pub struct PullProgress {
    printer: Printer,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl PullProgress {
    fn with_bar(&self, digest: &Digest, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self.bars.lock().unwrap_or_else(|p| p.into_inner()).get(digest) {
            f(bar);
        }
    }
}

impl PullReporter for PullProgress {
    fn resolved(&self, reference: &ImageReference, digest: &Digest) {
        self.printer.status(format!("Resolved {reference} to {digest}"));
    }

    fn layer_start(&self, digest: &Digest, size: u64, reused: bool) {
        let bar = self.printer.bars.add(ProgressBar::new(size));
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(digest.short().to_owned());
        if reused {
            bar.set_position(size);
            bar.finish_with_message("already present");
        }
        self.bars.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.clone(), bar);
    }

    fn layer_progress(&self, digest: &Digest, bytes: u64) {
        self.with_bar(digest, |bar| bar.inc(bytes));
    }

    fn layer_done(&self, digest: &Digest) {
        self.with_bar(digest, |bar| {
            if !bar.is_finished() {
                bar.finish_with_message("verified");
            }
        });
    }
    fn retrying(&self, retry: &Retry<'_>) {
        // A status line too, so that a log (no terminal) shows the retry.
        let what = retry.blob.map_or_else(|| retry.what.to_owned(), |digest| format!("layer {}", digest.short()));
        let resume = if retry.kept > 0 { format!("; resuming at {}", human_bytes(retry.kept)) } else { String::new() };
        self.printer.status(format!(
            "Retrying {what} (try {} of {}) in {:.1}s: {}{resume}",
            retry.attempt + 1,
            retry.tries,
            retry.wait.as_secs_f64(),
            retry.reason
        ));
    }

    fn layer_restarted(&self, digest: &Digest, discarded: u64) {
        self.printer.status(format!(
            "Layer {} starts again from its first byte ({} fetched again: the registry ignores Range)",
            digest.short(),
            human_bytes(discarded)
        ));
        self.with_bar(digest, |bar| bar.set_position(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_si_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500), "1.5 kB");
        assert_eq!(human_bytes(209_715_200), "209.7 MB");
    }

    #[test]
    fn memory_is_shown_in_binary_units() {
        assert_eq!(binary_bytes(1023), "1023 B");
        assert_eq!(binary_bytes(512 << 20), "512.0 MiB");
        assert_eq!(binary_bytes(4 << 30), "4.0 GiB");
        assert_eq!(gib(512 << 20), "0.5 GiB", "a limit stays in the unit -m takes");
        assert_eq!(gib(4 << 30), "4.0 GiB");
        assert_eq!(gib(256 << 20), "0.25 GiB", "regression: -m 0.25 was shown as 0.2 GiB");
        assert_eq!(gib(3 << 30 | 128 << 20), "3.125 GiB");
    }
}
