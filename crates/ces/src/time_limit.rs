//! `--time-limit` and `[run] max_time_limit`: a wall-clock limit on a run.
//!
//! At the limit ces stops the run exactly as a `SIGTERM` sent to ces would
//! (and as `ces stop` does): it sends `SIGTERM` to its own process, which
//! every thread blocks, so the runtime reads it from its signalfd, passes it
//! on to the workload and kills the container if it is still running after
//! the stop timeout. Everything after that is a normal end: the outputs are
//! sealed, scratch is removed, and the run is recorded, with exit code 124
//! (as `timeout(1)`) and `time_limit: true`.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The exit code of a run ended by its time limit (`timeout(1)`'s).
pub const EXIT_CODE: i32 = 124;

/// A duration that `--time-limit` cannot take.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {value:?}: give a number and a unit, e.g. 90s, 30m, 6h, 1h30m, 2d")]
pub struct BadDuration {
    /// The value as given.
    pub value: String,
}

/// A time limit longer than `[run] max_time_limit`.
#[derive(Debug, thiserror::Error)]
#[error("--time-limit {} is longer than this machine's maximum ({})", show(*asked), show(*max))]
pub struct TooLong {
    /// Asked for.
    pub asked: Duration,
    /// `[run] max_time_limit`.
    pub max: Duration,
}

/// Parses `90s`, `30m`, `6h`, `2d`, `1h30m` (units in any order, each once
/// at most), or a plain number of seconds. Zero is refused.
pub fn parse(value: &str) -> Result<Duration, BadDuration> {
    let bad = || BadDuration { value: value.to_owned() };
    let text = value.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = text.parse().map_err(|_| bad())?;
        return (seconds > 0).then(|| Duration::from_secs(seconds)).ok_or_else(bad);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut seen = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        if number.is_empty() || seen.contains(c) {
            return Err(bad());
        }
        seen.push(c);
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration as `parse` reads it back (`1h30m`, `90s` as `1m30s`).
pub fn show(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [('d', 86400), ('h', 3600), ('m', 60), ('s', 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

/// The limit a run gets: the one asked for, which may not exceed the
/// operator's maximum; with none asked, the maximum (a TRE sets one so that
/// no run outlives it, as a batch system's default time limit does).
pub fn effective(asked: Option<&str>, max: Option<Duration>) -> anyhow::Result<Option<Duration>> {
    let asked = asked.map(parse).transpose()?;
    match (asked, max) {
        (Some(asked), Some(max)) if asked > max => Err(TooLong { asked, max }.into()),
        (Some(asked), _) => Ok(Some(asked)),
        (None, max) => Ok(max),
    }
}

#[derive(Debug, Default)]
struct State {
    ended: bool,
    fired: bool,
}

/// The running limit: a thread that sleeps until the deadline, then sends
/// `SIGTERM` to this process unless the run has ended. It allocates and
/// logs nothing once started (the native runtime clones this process while
/// it sleeps).
#[derive(Debug)]
pub struct Timer {
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Timer {
    /// Starts the clock: the limit runs from now.
    pub fn start(limit: Duration) -> std::io::Result<Timer> {
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let deadline = Instant::now() + limit;
        let shared = Arc::clone(&state);
        let thread = std::thread::Builder::new().name("time-limit".into()).spawn(move || {
            let (lock, wake) = &*shared;
            let Ok(mut state) = lock.lock() else { return };
            loop {
                if state.ended {
                    return;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    state.fired = true;
                    // Blocked in every thread of ces: the runtime reads it
                    // and stops the container as for a SIGTERM from outside.
                    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM);
                    return;
                }
                state = match wake.wait_timeout(state, left) {
                    Ok((state, _)) => state,
                    Err(_) => return,
                };
            }
        })?;
        Ok(Timer { state, thread: Some(thread) })
    }

    /// Stops the clock (the run has ended); true if the limit was reached.
    pub fn stop(mut self) -> bool {
        self.finish()
    }

    fn finish(&mut self) -> bool {
        let (lock, wake) = &*self.state;
        let fired = match lock.lock() {
            Ok(mut state) => {
                state.ended = true;
                state.fired
            }
            Err(_) => false,
        };
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        fired
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        for (text, secs) in [("90s", 90), ("30m", 1800), ("6h", 21600), ("1h30m", 5400), ("2d", 172_800), ("45", 45)] {
            assert_eq!(parse(text).unwrap(), Duration::from_secs(secs), "{text}");
        }
        for bad in ["", "0", "0s", "h", "1x", "1h1h", "1.5h", "-1s", "10 m", "1h30", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(show(Duration::from_secs(5400)), "1h30m");
        assert_eq!(show(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn the_maximum_caps_and_defaults() {
        let h = |n: u64| Some(Duration::from_secs(n * 3600));
        assert_eq!(effective(Some("1h"), h(6)).unwrap(), h(1));
        assert_eq!(effective(None, h(6)).unwrap(), h(6), "none asked: the maximum");
        assert_eq!(effective(None, None).unwrap(), None);
        assert_eq!(effective(Some("7h"), None).unwrap(), h(7));
        let e = effective(Some("7h"), h(6)).unwrap_err();
        assert_eq!(e.to_string(), "--time-limit 7h is longer than this machine's maximum (6h)");
    }

    #[test]
    fn a_timer_stopped_in_time_does_not_fire() {
        let timer = Timer::start(Duration::from_secs(3600)).unwrap();
        assert!(!timer.stop());
    }
}
