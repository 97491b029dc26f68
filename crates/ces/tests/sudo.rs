//! Root under sudo keeps its boundary: `sudo ces ...` acts for the user who
//! ran sudo, with no more reach than theirs. Simulated faithfully: the ces
//! binary as root with `SUDO_UID`/`SUDO_GID`/`SUDO_USER` naming the test
//! kit's unprivileged user, on a host whose system config is the sandbox's
//! (see `Sandbox::as_sudo`), and files the user cannot read made by root.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::{Run, Sandbox, TestUser, require_root, test_user};

/// What a root-only file holds: it must appear nowhere.
const SECRET: &str = "root:$y$j9T$SUDOSECRET$hash:19000:0:99999:7:::";

/// A sandbox the test user can reach (its directory searchable by others),
/// and the user.
fn sandbox() -> (Sandbox, TestUser) {
    require_root("runs ces as root for another user");
    let user = test_user();
    let sb = Sandbox::with_hosts(&[], &[]);
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (sb, user)
}

/// `ces ARGS` as sudo runs it for the test user.
fn sudo_ces(sb: &Sandbox, user: &TestUser, args: &[&str]) -> Run {
    let cmd = sb.command(env!("CARGO_BIN_EXE_ces"), args);
    sb.run(user.sudo(sb, cmd))
}

/// A file only root can read (0600 root:root), in the sandbox: a stand-in
/// for `/etc/shadow` or another project's data.
fn root_only(sb: &Sandbox, name: &str) -> PathBuf {
    let path = sb.dir.path().join(name);
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn under_sudo_another_config_is_refused_and_the_system_config_is_read() {
    let (sb, user) = sandbox();
    // The system config allows users their own: not under sudo.
    sb.configure("[policy]\nallow_user_config = true");
    let mine = sb.dir.path().join("mine.toml");
    std::fs::write(&mine, "[audit]\npath = \"/etc/profile.d/ces-owned.sh\"\n").unwrap();
    user.chown(&mine);

    for how in ["--config", "CES_CONFIG"] {
        let cmd = match how {
            "--config" => sb.command(env!("CARGO_BIN_EXE_ces"), &["--config", path_str(&mine), "images"]),
            _ => sb.command(env!("CARGO_BIN_EXE_ces"), &["images"]),
        };
        let mut cmd = user.sudo(&sb, cmd);
        if how == "CES_CONFIG" {
            cmd.env("CES_CONFIG", &mine);
        }
        let out = sb.run(cmd);
        let err = out.fails();
        assert!(
            err.contains(&format!(
                "error: ces runs as root through sudo: /etc/ces/config.toml is the only config it reads, not {}",
                mine.display()
            )),
            "{how}: {err}"
        );
        assert!(err.contains("hint: ") && err.contains("allow_user_config does not apply"), "{how}: {err}");
    }
    assert!(!Path::new("/etc/profile.d/ces-owned.sh").exists());

    // Its own name is the system config: read.
    let out = sudo_ces(&sb, &user, &["--config", "/etc/ces/config.toml", "images", "--json"]);
    assert_eq!(out.ok().trim(), "[]");
    // Root for itself still may use another config.
    let out = sb.run(sb.command(env!("CARGO_BIN_EXE_ces"), &["--config", path_str(&sb.config), "images", "--json"]));
    assert_eq!(out.ok().trim(), "[]");
}

/// `--env-file`, `--arg-file`, `--opt-file`, `ces lint` and `ces load` of a
/// file the user cannot read: refused ("Permission denied", naming the path
/// only); the content is nowhere: not in the output, not in the audit log.
/// As root for itself, the same files are read (the refusal is the user's).
#[test]
fn under_sudo_files_the_user_cannot_read_are_refused_without_their_content() {
    let (sb, user) = sandbox();
    let secret = root_only(&sb, "secret-0600-root");
    let secret = path_str(&secret);
    let cases: [&[&str]; 5] = [
        &["run", "--dry-run", "--env-file", secret, "no-such-image", "true"],
        &["run", "--dry-run", "--arg-file", secret, "no-such-image", "true"],
        &["run", "--dry-run", "--opt-file", secret, "no-such-image", "true"],
        &["lint", secret],
        &["load", secret],
    ];
    for args in cases {
        let out = sudo_ces(&sb, &user, args);
        assert_ne!(out.code, 0, "{args:?}: {out:?}");
        let errors: Vec<_> = out.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {}", out.stderr);
        assert!(errors[0].contains(secret) && errors[0].contains("Permission denied"), "{args:?}: {}", out.stderr);
        assert!(!out.stdout.contains("SUDOSECRET") && !out.stderr.contains("SUDOSECRET"), "{args:?}: {out:?}");
    }
    if let Ok(log) = std::fs::read_to_string(sb.store.join("audit.jsonl")) {
        assert!(!log.contains("SUDOSECRET"), "{log}");
    }

    // Root for itself reads them (and, as a bad env file, the error names the
    // line, not its text).
    let out = sb.ces(&["run", "--dry-run", "--env-file", secret, "no-such-image", "true"]);
    let err = out.fails();
    assert!(err.contains(&format!("{secret}, line 1: not a valid variable name")), "{err}");
    assert!(!err.contains("SUDOSECRET"), "{err}");
}

/// The user's own files are read under sudo (the refusal above is theirs).
#[test]
fn under_sudo_the_users_own_files_are_read() {
    let (sb, user) = sandbox();
    let dockerfile = sb.dir.path().join("Dockerfile");
    std::fs::write(&dockerfile, "FROM ghcr.io/example/base:1\nRUN echo hi\n").unwrap();
    std::fs::set_permissions(&dockerfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    user.chown(&dockerfile);
    let out = sudo_ces(&sb, &user, &["lint", "--format", "json", path_str(&dockerfile)]);
    assert!(matches!(out.code, 0 | 1), "{out:?}");
    assert!(out.stdout.contains("Dockerfile"), "{out:?}");
    // An option file of theirs is read too: its content reaches the plan's checks.
    let opts = sb.dir.path().join("opts");
    std::fs::write(&opts, "--privileged\n").unwrap();
    std::fs::set_permissions(&opts, std::fs::Permissions::from_mode(0o600)).unwrap();
    user.chown(&opts);
    let out = sudo_ces(&sb, &user, &["run", "--dry-run", "--opt-file", path_str(&opts), "no-such-image", "true"]);
    assert!(out.fails().contains(&format!("option --privileged in {} line 1 is not allowed", opts.display())));
}

/// `ces lint` reads the build context as the user too: a requirement file
/// in it that only root may read is not read (a note says so), where root
/// for itself reads it.
#[test]
fn under_sudo_lint_reads_the_build_context_as_the_user() {
    let (sb, user) = sandbox();
    let project = sb.dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    user.chown(&project);
    let dockerfile = project.join("Dockerfile");
    std::fs::write(&dockerfile, "FROM ghcr.io/example/base:1\nCOPY requirements.txt /app/\nRUN pip install --no-cache-dir -r /app/requirements.txt\nUSER 1000\n").unwrap();
    user.chown(&dockerfile);
    let requirements = project.join("requirements.txt");
    std::fs::write(&requirements, "transformers # SUDOSECRET\n").unwrap();
    std::fs::set_permissions(&requirements, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = sudo_ces(&sb, &user, &["lint", path_str(&dockerfile)]);
    assert!(!out.stdout.contains("CES014") && !out.stdout.contains("transformers"), "{out:?}");
    assert!(out.stderr.contains("requirements.txt could not be read"), "{out:?}");
    assert!(!out.stdout.contains("SUDOSECRET") && !out.stderr.contains("SUDOSECRET"), "{out:?}");
    // Root for itself reads it.
    let out = sb.ces(&["lint", path_str(&dockerfile)]);
    assert!(out.stdout.contains("CES014 warning: transformers is installed (from requirements.txt)"), "{out:?}");
}

/// `ces outputs verify DIR` reads DIR (and an `--audit-file`) as the user:
/// a directory of root's, or another user's outputs, is refused by name,
/// and nothing of what is in it is shown.
#[test]
fn under_sudo_outputs_verify_reads_as_the_user() {
    let (sb, user) = sandbox();
    let dir = sb.dir.path().join("outputs_20260101-000000-0000abcd");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("ces-manifest.json"), format!("{{\"note\": \"{SECRET}\"}}")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = sudo_ces(&sb, &user, &["outputs", "verify", path_str(&dir)]);
    let err = out.fails();
    assert!(err.contains(&dir.display().to_string()) && err.contains("Permission denied"), "{err}");
    assert!(!out.stdout.contains("SUDOSECRET") && !err.contains("SUDOSECRET"), "{out:?}");
}

/// `ces test --data DIR` under sudo: a directory the user cannot reach is
/// refused by name (root would have mounted it at /safe_data).
#[test]
fn under_sudo_test_data_the_user_cannot_read_is_refused() {
    let (sb, user) = sandbox();
    let data = sb.dir.path().join("root-only-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("patients.csv"), format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = sudo_ces(&sb, &user, &["test", "--data", path_str(&data), "no-such-image", "true"]);
    let err = out.fails();
    assert!(err.contains(&format!("--data {} is not a directory you can read", data.display())), "{err}");
    assert!(!out.stdout.contains("SUDOSECRET") && !err.contains("SUDOSECRET"), "{out:?}");
}

/// `ces audit show --file` and `ces audit verify --file` read the file as
/// the user under sudo: a root-only file is refused by name, unshown.
#[test]
fn under_sudo_audit_files_are_read_as_the_user() {
    let (sb, user) = sandbox();
    let secret = root_only(&sb, "audit-0600-root.jsonl");
    for command in ["show", "verify"] {
        let out = sudo_ces(&sb, &user, &["audit", command, "--file", path_str(&secret)]);
        let err = out.fails();
        assert!(err.contains(path_str(&secret)) && err.contains("Permission denied"), "{command}: {err}");
        assert!(!out.stdout.contains("SUDOSECRET") && !err.contains("SUDOSECRET"), "{command}: {out:?}");
    }
}
