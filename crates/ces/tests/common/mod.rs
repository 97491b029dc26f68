//! What the `ces` integration tests share: a sandbox with its own config and
//! store, running the real binaries.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ces_testkit::registry::Registry;

/// A config file and a store in a temp dir.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub store: PathBuf,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "command failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts ces's own failure (125) with one `error:` line, and returns stderr.
    #[track_caller]
    pub fn fails(&self) -> &str {
        assert_eq!(self.code, 125, "expected exit 125:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        let errors: Vec<_> = self.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "expected one error line:\n{}", self.stderr);
        &self.stderr
    }
}

impl Sandbox {
    /// A sandbox whose config allows (over plain HTTP) exactly these registries.
    pub fn new(registries: &[&Registry]) -> Sandbox {
        let hosts: Vec<String> = registries.iter().map(|r| r.host()).collect();
        Sandbox::with_hosts(&hosts, &hosts)
    }

    /// A sandbox with an explicit allowlist and insecure list.
    pub fn with_hosts(allowed: &[String], insecure: &[String]) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let config = dir.path().join("config.toml");
        let quote = |v: &[String]| v.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &config,
            format!(
                "[registries]\nallowed = [{}]\ninsecure = [{}]\n\n[storage]\nroot = {:?}\n",
                quote(allowed),
                quote(insecure),
                store.display().to_string()
            ),
        )
        .unwrap();
        Sandbox { dir, config, store }
    }

    /// `ces ARGS` (or another of the binaries), with a clean environment.
    pub fn command(&self, bin: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("CES_REGISTRY_TOKEN")
            .env_remove("CES_REGISTRY_USER")
            .env_remove("RUST_LOG")
            .env("CES_CONFIG", &self.config)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `ces ARGS`.
    pub fn ces(&self, args: &[&str]) -> Run {
        Run::from(self.command(env!("CARGO_BIN_EXE_ces"), args).output().unwrap())
    }

    /// Runs a prepared command.
    pub fn run(&self, mut cmd: Command) -> Run {
        Run::from(cmd.output().unwrap())
    }

    /// Runs `ces ARGS` with `input` on stdin.
    pub fn ces_stdin(&self, args: &[&str], input: impl AsRef<[u8]>) -> Run {
        use std::io::Write;
        let mut child = self
            .command(env!("CARGO_BIN_EXE_ces"), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // ces may stop reading early (a refused archive): a broken pipe is fine.
        let _ = stdin.write_all(input.as_ref());
        drop(stdin);
        Run::from(child.wait_with_output().unwrap())
    }

    /// `ces images --json`, parsed.
    pub fn images(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(self.ces(&["images", "--json"]).ok()).unwrap()
    }

    /// The files left in the store's temp dir.
    pub fn tmp_leftovers(&self) -> Vec<String> {
        match std::fs::read_dir(self.store.join("tmp")) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether the store has this blob (`sha256:...`).
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.store.join("oci/blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
    }

    /// The unpacked rootfs of a manifest digest.
    pub fn rootfs(&self, digest: &str) -> PathBuf {
        self.store.join("rootfs").join(digest.strip_prefix("sha256:").unwrap())
    }
}

/// Every file under `dir`, recursively, as bytes (to look for leaked secrets).
pub fn all_file_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out
}
