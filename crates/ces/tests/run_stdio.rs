//! The container's standard streams and signals through the `ces` binary:
//! the container gets pipes (never ces's own stdout, stderr or stdin), batch
//! runs with output on /dev/null work, `-i` relays piped input, and a
//! container that ignores a stop signal is killed after the stop timeout.
//! As root, as root for another user (sudo), and rootless.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mode, World};

fn repo(test: &str, mode: Mode) -> String {
    mode.repo("stdio", test)
}

/// `ces run -q IMG sh -c 'echo hi'` with ces's stdout and stderr on
/// /dev/null (cron, `> /dev/null 2>&1` in job scripts) works: the container
/// used to get a read-only /dev/null and fail every write (exit 1).
fn batch_output_to_dev_null(mode: Mode) {
    let w = World::new(&repo("devnull", mode), mode);
    let status = w
        .run_with(&[], &["sh", "-c", "echo hi && echo err >&2 && touch /safe_outputs/wrote"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    if status.code() != Some(0) {
        let again = w.run_with(&[], &["sh", "-c", "echo hi"]).output().unwrap();
        panic!("{status}: (again, with pipes: {})", String::from_utf8_lossy(&again.stderr));
    }
    assert!(w.outputs().join("wrote").exists());
}

#[test]
fn batch_output_to_dev_null_as_root() {
    batch_output_to_dev_null(Mode::Root);
}

#[test]
fn batch_output_to_dev_null_under_sudo() {
    batch_output_to_dev_null(Mode::Sudo);
}

#[test]
fn batch_output_to_dev_null_rootless() {
    batch_output_to_dev_null(Mode::Rootless);
}

/// ces's stdout is a host log file (anyone may write it: only ces's pipes
/// keep the container out). The container tries to read it and truncate it
/// through `/proc/self/fd`: it reaches only its own pipe.
fn host_log_out_of_reach(mode: Mode) {
    let w = World::new(&repo("log", mode), mode);
    let log = w.sb.dir.path().join("host.log");
    std::fs::write(&log, "secret line\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    // fd 3 is the container's original stdout; reading a pipe's write end
    // reopened for reading would wait for ever: `timeout` ends it.
    let script = "exec 3>&1; timeout 2 cat /proc/self/fd/3 > /safe_outputs/read 2>/dev/null; \
                  : > /proc/self/fd/1; : > /proc/self/fd/2; echo after";
    let out = w
        .run_with(&[], &["sh", "-c", script])
        .stdout(File::options().append(true).open(&log).unwrap())
        .stderr(File::options().append(true).open(&log).unwrap())
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.code(), Some(0), "{text}");
    assert!(text.starts_with("secret line\n"), "the host log was truncated:\n{text}");
    assert!(text.lines().any(|l| l == "after"), "{text}");
    let read = std::fs::read_to_string(w.outputs().join("read")).unwrap_or_default();
    assert!(!read.contains("secret"), "the container read the host log");
}

#[test]
fn host_log_out_of_reach_as_root() {
    host_log_out_of_reach(Mode::Root);
}

#[test]
fn host_log_out_of_reach_under_sudo() {
    host_log_out_of_reach(Mode::Sudo);
}

#[test]
fn host_log_out_of_reach_rootless() {
    host_log_out_of_reach(Mode::Rootless);
}

fn with_stdin(mut cmd: Command, input: &[u8]) -> (Option<i32>, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.code().is_some(), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `printf 'a\nb\n' | ces run -i IMG wc -l` prints 2; without `-i` the
/// container reads /dev/null.
fn piped_stdin(mode: Mode) {
    let w = World::new(&repo("stdin", mode), mode);
    let (code, out) = with_stdin(w.run_with(&["-i"], &["wc", "-l"]), b"a\nb\n");
    assert_eq!((code, out.trim()), (Some(0), "2"));
    // More than a pipe holds, read to the end.
    let big = "x\n".repeat(200_000);
    let (code, out) = with_stdin(w.run_with(&["-i"], &["wc", "-l"]), big.as_bytes());
    assert_eq!((code, out.trim()), (Some(0), "200000"));
    let (code, out) = with_stdin(w.run_with(&[], &["wc", "-l"]), b"a\nb\n");
    assert_eq!((code, out.trim()), (Some(0), "0"));
}

#[test]
fn piped_stdin_as_root() {
    piped_stdin(Mode::Root);
}

#[test]
fn piped_stdin_under_sudo() {
    piped_stdin(Mode::Sudo);
}

#[test]
fn piped_stdin_rootless() {
    piped_stdin(Mode::Rootless);
}

/// `ces run IMG sh -c 'while :; do echo y; done' | head -1`: once the reader
/// of ces's stdout is gone, the relay stops (ces ignores SIGPIPE: its write
/// fails) and closes the container's pipe, so the shell ends of SIGPIPE; ces cleans up and passes the
/// exit on (141) rather than relaying, or waiting, for ever.
fn closed_stdout_ends_the_relay(mode: Mode) {
    let w = World::new(&repo("epipe", mode), mode);
    let mut child = w
        .run_with(&[], &["sh", "-c", "while :; do echo y; done"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 2];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ces relays on with no reader");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.as_mut().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(141), "128 + SIGPIPE: {stderr}");
    assert_eq!(w.scratch_left(), Vec::<String>::new());
}

#[test]
fn closed_stdout_ends_the_relay_as_root() {
    closed_stdout_ends_the_relay(Mode::Root);
}

#[test]
fn closed_stdout_ends_the_relay_under_sudo() {
    closed_stdout_ends_the_relay(Mode::Sudo);
}

#[test]
fn closed_stdout_ends_the_relay_rootless() {
    closed_stdout_ends_the_relay(Mode::Rootless);
}

/// `ces run -i` with a stdin that cannot be read (a directory: EISDIR) gives
/// the container end of file, not an error or a wait.
#[test]
fn unreadable_stdin_is_end_of_file() {
    let w = World::new(&repo("stdin-dir", Mode::Root), Mode::Root);
    let dir = File::open(w.sb.dir.path()).unwrap();
    let out = w.run_with(&["-i"], &["wc", "-c"]).stdin(dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{stderr}");
}

fn start(w: &World, script: &str) -> Child {
    w.run_with(&[], &["sh", "-c", script]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn wait_for_ready(w: &World, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = |home: &Path| {
        std::fs::read_dir(home)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("outputs_") && e.path().join("ready").exists())
    };
    while !ready(&w.home) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child.stderr.as_mut().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("ces ended before the container was ready ({status}): {stderr}");
        }
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    assert!(Command::new("kill").args([name, &child.id().to_string()]).status().unwrap().success());
}

/// A container that ignores SIGTERM: ces passes it on, waits the stop
/// timeout (10 s by default), then kills the container and cleans up;
/// `ces run` exits 137. It used to wait for ever.
fn ignored_sigterm(mode: Mode) {
    let w = World::new(&repo("term", mode), mode);
    let mut child = start(&w, "trap '' TERM; touch /safe_outputs/ready; sleep 1000; touch /safe_outputs/survived");
    wait_for_ready(&w, &mut child);
    signal(&child, "-TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert!(!w.outputs().join("survived").exists());
    assert_eq!(w.scratch_left(), Vec::<String>::new());
}

#[test]
fn ignored_sigterm_is_killed_after_the_stop_timeout_as_root() {
    ignored_sigterm(Mode::Root);
}

#[test]
fn ignored_sigterm_is_killed_after_the_stop_timeout_under_sudo() {
    ignored_sigterm(Mode::Sudo);
}

#[test]
fn ignored_sigterm_is_killed_after_the_stop_timeout_rootless() {
    ignored_sigterm(Mode::Rootless);
}

/// SIGQUIT is passed on like SIGTERM: the container ends of it, ces cleans
/// up and exits 131. It used to kill ces itself (no clean-up, no record).
#[test]
fn sigquit_is_passed_on() {
    let w = World::new(&repo("quit", Mode::Root), Mode::Root);
    let mut child = start(&w, "touch /safe_outputs/ready; exec sleep 1000");
    wait_for_ready(&w, &mut child);
    signal(&child, "-QUIT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(131), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.scratch_left(), Vec::<String>::new());
}
