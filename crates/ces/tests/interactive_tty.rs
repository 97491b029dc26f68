//! A terminal in the container (`-t`, `-it`), driven as a person would: a
//! tmux pane runs `ces run -it IMG sh`, the test types into it (send-keys)
//! and reads the screen (capture-pane). It checks the workload's own pty
//! (from the container's devpts), the window size and its changes (a shell,
//! and vi drawing the whole window), ^C reaching the workload and not ces,
//! the exit code, and the host terminal restored after every kind of end
//! (exit, SIGTERM to ces). As root, as root for another user (sudo), and
//! rootless; and through podman. Without a host terminal, `-t` is refused;
//! `-i` alone passes piped input.
//!
//! No timing thresholds: every wait polls the screen for the text it
//! expects, with a generous deadline.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mode, World};

fn quote(s: &OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"))
}

/// A shell script that runs `cmd` as it is (environment, directory, argv),
/// for typing into a pane: `exec`, so that ces is the pane shell's child.
fn script(cmd: &Command, path: &Path) {
    let mut text = String::from("#!/bin/sh\n");
    for (key, value) in cmd.get_envs() {
        let key = key.to_string_lossy();
        match value {
            Some(value) => text.push_str(&format!("export {key}={}\n", quote(value))),
            None => text.push_str(&format!("unset {key}\n")),
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        text.push_str(&format!("cd {}\n", quote(dir.as_os_str())));
    }
    let argv: Vec<String> = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(quote).collect();
    text.push_str(&format!("exec {}\n", argv.join(" ")));
    std::fs::write(path, text).unwrap();
}

/// A tmux server of the test's own, with one window running a host shell.
struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// How long a wait for the screen may take before the test fails (a
/// container start on a busy two-core machine takes seconds, not minutes).
const DEADLINE: Duration = Duration::from_secs(90);

impl Tmux {
    /// A `cols`x`rows` window (no status line) running `sh` with the prompt `host$ `.
    fn start(cols: u16, rows: u16) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let conf = dir.path().join("tmux.conf");
        std::fs::write(&conf, "set -g status off\nset -g history-limit 5000\n").unwrap();
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .arg("-f")
            .arg(&conf)
            .args(["new-session", "-d", "-s", "ces", "-x", &cols.to_string(), "-y", &rows.to_string()])
            .args(["env", "PS1=host$ ", "sh"])
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .status()
            .expect("tmux is missing: run scripts/setup --tests");
        assert!(status.success(), "tmux new-session: {status}");
        let tmux = Tmux { socket, _dir: dir };
        tmux.wait_for("the host shell's prompt", |s| s.contains("host$"));
        tmux
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "ces", "-l", text]);
    }

    /// Types `line` and Enter.
    fn line(&self, line: &str) {
        self.type_text(line);
        self.key("Enter");
    }

    /// Presses a key (tmux's names: `Enter`, `C-c`, `Escape`).
    fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "ces", key]);
    }

    /// The visible screen.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "ces"])
    }

    /// Polls the screen until `done` holds; returns it.
    #[track_caller]
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(start.elapsed() < DEADLINE, "waited {DEADLINE:?} for {what}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a line of the screen that is exactly `line` (trailing
    /// blanks aside): output, not the echo of the command that printed it.
    #[track_caller]
    fn wait_for_line(&self, line: &str) -> String {
        self.wait_for(&format!("a line {line:?}"), |s| s.lines().any(|l| l.trim_end() == line))
    }

    fn resize(&self, cols: u16, rows: u16) {
        self.tmux(&["resize-window", "-t", "ces", "-x", &cols.to_string(), "-y", &rows.to_string()]);
    }

    fn clear(&self) {
        self.key("C-l");
        self.tmux(&["clear-history", "-t", "ces"]);
    }

    /// The pid of the pane's shell.
    fn pane_pid(&self) -> u32 {
        self.tmux(&["display-message", "-p", "-t", "ces", "#{pane_pid}"]).trim().parse().unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Checks, in the host shell, that the terminal is back in cooked mode
/// (`icanon` and `echo` on: raw mode turns both off).
#[track_caller]
fn host_terminal_restored(tmux: &Tmux) {
    // (No ^L: the host's sh has no line editing.)
    tmux.line("[ \"$(stty -a | tr ' ;' '\\n\\n' | grep -xc -e icanon -e echo)\" = 2 ] && echo cooked-\"\"terminal");
    tmux.wait_for_line("cooked-terminal");
}

/// Starts `ces run -it IMAGE sh` (`options` first) in a fresh 100x30 pane;
/// returns once the container's shell prompts.
fn start_shell(w: &World, options: &[&str], dir: &Path) -> Tmux {
    let mut all = vec!["-it"];
    all.extend_from_slice(options);
    let script_path = dir.join("ces.sh");
    script(&w.run_with(&all, &["sh"]), &script_path);
    let tmux = Tmux::start(100, 30);
    tmux.line(&format!("sh {}; echo ces-\"\"exit=$?", script_path.display()));
    // busybox sh's prompt is `/ # ` for root, `/ $ ` for others.
    tmux.wait_for("the container's shell prompt", |s| s.lines().any(|l| l.starts_with("/ # ") || l == "/ #"));
    tmux
}

/// The whole walk: a pty of the container's own, the size and a resize, a
/// full-screen program following the window, ^C to the workload, the exit
/// code, and the host terminal restored.
fn terminal_session(mode: Mode) {
    let w = World::new(&format!("tty/session-{}", format!("{mode:?}").to_lowercase()), mode);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tmux = start_shell(&w, &[], dir.path());

    // The workload's terminal is a pty of the container's own devpts (not
    // the host's pane), and its controlling terminal.
    tmux.clear();
    tmux.line("busybox tty; ls /dev/pts | busybox tr '\\n' ' '; echo; busybox stty size");
    tmux.wait_for_line("/dev/pts/0");
    tmux.wait_for_line("0 ptmx");
    tmux.wait_for_line("30 100");
    tmux.clear();
    // Field 7 of /proc/PID/stat: the controlling terminal (0: none).
    tmux.line("cat /proc/self/stat | busybox cut -d' ' -f7 | (read t; [ \"$t\" != 0 ] && echo ctty-\"\"ok)");
    tmux.wait_for_line("ctty-ok");

    // A resize reaches the workload.
    tmux.resize(120, 40);
    tmux.clear();
    tmux.line("busybox stty size");
    tmux.wait_for_line("40 120");

    // A full-screen program draws the whole window, and redraws on a resize:
    // vi shows one `~` per line past the (empty) text, the status line last.
    tmux.clear();
    tmux.line("busybox vi /tmp/new-file");
    tmux.wait_for("vi filling 40 rows", |s| s.lines().filter(|l| l.starts_with('~')).count() == 38);
    tmux.resize(100, 30);
    tmux.wait_for("vi redrawn for 30 rows", |s| s.lines().filter(|l| l.starts_with('~')).count() == 28);
    // (vi starts in command mode; an Escape right before `:` would read as
    // the start of an escape sequence.)
    tmux.line(":q!");
    tmux.clear();
    tmux.line("echo back-\"\"from-vi");
    tmux.wait_for_line("back-from-vi");

    // ^C interrupts what runs in the container; ces and the shell go on.
    tmux.clear();
    // (The shell, like any, drops the rest of a line whose command ^C
    // killed: the status is asked for on a line of its own.)
    tmux.line("sh -c 'echo sleep-\"\"started; exec sleep 100'");
    tmux.wait_for_line("sleep-started");
    tmux.key("C-c");
    tmux.wait_for("the prompt after ^C", |s| s.lines().filter(|l| l.starts_with("/ #")).count() == 2);
    tmux.line("echo interrupted-$?");
    let screen = tmux.wait_for_line("interrupted-130");
    assert!(!screen.contains("ces-exit"), "ces ended:\n{screen}");

    // The exit code passes through, and the host terminal is cooked again.
    tmux.line("exit 3");
    tmux.wait_for_line("ces-exit=3");
    host_terminal_restored(&tmux);
}

#[test]
fn terminal_session_as_root() {
    terminal_session(Mode::Root);
}

#[test]
fn terminal_session_under_sudo() {
    terminal_session(Mode::Sudo);
}

#[test]
fn terminal_session_rootless() {
    terminal_session(Mode::Rootless);
}

/// SIGTERM to ces while the container's interactive shell (which ignores
/// it) runs: passed on, the container killed at the stop timeout, and the
/// host terminal restored on that way out too.
fn sigterm_restores_the_terminal(mode: Mode) {
    let w = World::new(&format!("tty/sigterm-{}", format!("{mode:?}").to_lowercase()), mode);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tmux = start_shell(&w, &[], dir.path());
    let shell = tmux.pane_pid();
    let out = Command::new("pgrep").args(["-P", &shell.to_string()]).output().unwrap();
    let children: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().split_whitespace().collect();
    assert_eq!(children.len(), 1, "the pane shell's children: {children:?}");
    // Under sudo the child is unshare's shell, which execs ces: the same pid.
    let status = Command::new("kill").args(["-TERM", children[0]]).status().unwrap();
    assert!(status.success());
    tmux.wait_for_line("ces-exit=137");
    host_terminal_restored(&tmux);
}

#[test]
fn sigterm_restores_the_terminal_as_root() {
    sigterm_restores_the_terminal(Mode::Root);
}

#[test]
fn sigterm_restores_the_terminal_rootless() {
    sigterm_restores_the_terminal(Mode::Rootless);
}

/// Through podman: -t and -i are passed on (a terminal of the container's,
/// its size, the exit code), and the host terminal is restored.
#[test]
fn terminal_session_through_podman() {
    let w = World::new("tty/podman", Mode::Root);
    let dir = tempfile::tempdir().unwrap();
    let tmux = start_shell(&w, &["--runtime", "podman"], dir.path());
    tmux.clear();
    tmux.line("busybox tty; busybox stty size");
    tmux.wait_for("a pty", |s| s.lines().any(|l| l.starts_with("/dev/pts/")));
    tmux.wait_for_line("30 100");
    tmux.line("exit 3");
    tmux.wait_for_line("ces-exit=3");
    host_terminal_restored(&tmux);
}

/// Without a terminal on stdin, `-t` is refused before anything runs, with
/// one error line and a hint; a dry run still prints the plan.
#[test]
fn a_terminal_needs_a_terminal() {
    let w = World::new("tty/refused", Mode::Root);
    for options in [&["-t"][..], &["-it"], &["--runtime", "podman", "-t"]] {
        let run = w.sb.run(w.run_with(options, &["true"]));
        let stderr = run.fails();
        assert!(stderr.contains("-t needs a terminal"), "{stderr}");
        assert!(stderr.contains("hint: run it from a terminal, or drop -t"), "{stderr}");
        assert!(!stderr.contains("Running "), "nothing ran: {stderr}");
    }
    let plan = w.sb.run(w.run_with(&["-it", "--dry-run"], &["sh"]));
    assert!(plan.ok().contains("a pty of the container's own (-t)"), "{}", plan.stdout);
}

/// `-i` without `-t`: piped input reaches the workload (and its end, as
/// end of file), as root and rootless.
#[test]
fn piped_stdin_with_i() {
    for mode in [Mode::Root, Mode::Rootless] {
        let w = World::new(&format!("tty/pipe-{}", format!("{mode:?}").to_lowercase()), mode);
        let mut child = w
            .run_with(&["-i"], &["wc", "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(b"a\nb\nc\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3", "{mode:?}");
    }
}
