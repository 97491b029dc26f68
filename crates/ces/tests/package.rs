//! The Debian package (`scripts/package`), built from this build's binaries,
//! installed on this machine with `apt-get install ./ces_*.deb` (as root, as
//! CI runs), its ces-proxy unit's command started as the unit says (its
//! user, its directories), and purged again: nothing of it left.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ces_testkit::image::busybox_image;
use ces_testkit::registry::{AuthMode, Registry};

/// Purges the package however the test ends (a system config left in
/// /etc/ces would change the other tests' ces).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = apt(&["purge", "-y", "ces"]);
    }
}

fn apt(args: &[&str]) -> std::process::Output {
    Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).output().unwrap()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The unit's `KEY=value` lines.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_owned).collect()
}

#[test]
fn the_package_installs_runs_the_proxy_unit_and_purges_cleanly() {
    common::require_root("installs a package");
    let already = Command::new("dpkg-query").args(["-W", "-f=${Status}", "ces"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&already.stdout).contains("install ok installed"),
        "a ces package is installed on this machine already: this test would remove it"
    );
    let bins = Path::new(env!("CARGO_BIN_EXE_ces")).parent().unwrap();
    let out = tempfile::tempdir().unwrap();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = Command::new(checkout.join("scripts/package"))
        .args(["--bin-dir"])
        .arg(bins)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "scripts/package: {}", String::from_utf8_lossy(&built.stderr));
    let deb = PathBuf::from(String::from_utf8(built.stdout).unwrap().trim());

    // What it holds.
    let contents = run("dpkg-deb", &["--contents", deb.to_str().unwrap()]);
    for path in [
        "./usr/bin/ces",
        "./usr/bin/ces-pull",
        "./usr/bin/ces-run",
        "./usr/bin/ces-gpu-run",
        "./etc/ces/config.toml",
        "./etc/ces/proxy.toml",
        "./lib/systemd/system/ces-proxy.service",
        "./usr/share/man/man1/ces.1.gz",
        "./usr/share/man/man1/ces-proxy.1.gz",
        "./usr/share/man/man1/ces-pull.1.gz",
        "./usr/share/bash-completion/completions/ces",
        "./usr/share/zsh/vendor-completions/_ces",
        "./usr/share/doc/ces/proxy.md",
        "./usr/share/doc/ces/copyright",
    ] {
        let here = |l: &str| l.ends_with(path) || l.contains(&format!("{path} -> "));
        assert!(contents.lines().any(here), "{path} is not in the package:\n{contents}");
    }
    assert!(contents.lines().all(|l| l.contains("root/root")), "everything root's:\n{contents}");
    // Its files and links (not the directories it shares with others).
    let files: Vec<String> = contents
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('l'))
        .filter_map(|l| l.split(" ./").nth(1))
        .map(|p| format!("/{}", p.split(" -> ").next().unwrap_or(p)))
        .collect();

    // Installed with apt, as an operator would.
    let _installed = Installed;
    let installed = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .arg(format!("./{}", deb.file_name().unwrap().to_string_lossy()))
        .current_dir(deb.parent().unwrap())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    assert!(installed.status.success(), "apt-get install: {}", String::from_utf8_lossy(&installed.stderr));
    // The version, and the git revision it was built from.
    let version = run("/usr/bin/ces", &["--version"]);
    let revision = run("git", &["-C", checkout.to_str().unwrap(), "rev-parse", "--short=12", "HEAD"]);
    assert_eq!(version.trim(), format!("ces {} ({})", env!("CARGO_PKG_VERSION"), revision.trim()));
    // The compatible commands are ces by their names.
    let refused = Command::new("/usr/bin/ces-pull").arg("only-one-word").output().unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("ces-pull"), "{refused:?}");
    assert_eq!(std::fs::read_link("/usr/bin/ces-run").unwrap(), Path::new("ces"));
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "ces"]);
    assert!(conffiles.contains("/etc/ces/config.toml") && conffiles.contains("/etc/ces/proxy.toml"), "{conffiles}");
    let user = run("getent", &["passwd", "ces-proxy"]);
    assert!(user.contains(":/nonexistent:") && user.trim_end().ends_with("/usr/sbin/nologin"), "{user}");
    let htpasswd = std::fs::metadata("/etc/ces/proxy.htpasswd").unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&htpasswd.permissions()) & 0o777, 0o640);

    // The unit, as systemd would start it: its user, its directories, its command.
    let unit = std::fs::read_to_string("/lib/systemd/system/ces-proxy.service").unwrap();
    let exec = unit_values(&unit, "ExecStart").remove(0);
    assert_eq!(exec, "/usr/bin/ces proxy --config /etc/ces/proxy.toml");
    assert_eq!(unit_values(&unit, "User"), ["ces-proxy"]);
    for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "CapabilityBoundingSet="] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening} is not in the unit");
    }
    for (key, dir) in [("CacheDirectory", "/var/cache"), ("LogsDirectory", "/var/log")] {
        let name = unit_values(&unit, key).remove(0);
        let path = Path::new(dir).join(name);
        std::fs::create_dir_all(&path).unwrap();
        run("chown", &["ces-proxy:ces-proxy", path.to_str().unwrap()]);
    }
    let start = || {
        let argv: Vec<&str> = exec.split_whitespace().collect();
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid", "ces-proxy", "--regid", "ces-proxy", "--clear-groups", "--"])
            .args(&argv)
            .env_remove("CES_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command.spawn().unwrap()
    };
    // As shipped, it serves nothing: it refuses to start until configured.
    let refused = start().wait_with_output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no repositories may be pulled"), "{refused:?}");

    // Configured (a registry, a repository, a user), it serves.
    let registry = Registry::shared(AuthMode::Anonymous);
    let digest = registry.push(&busybox_image().build(), "pkg/app", "1");
    let port = common::free_port();
    let config = std::fs::read_to_string("/etc/ces/proxy.toml")
        .unwrap()
        .replace("listen = \"127.0.0.1:5000\"", &format!("listen = \"127.0.0.1:{port}\""))
        .replace("name = \"ghcr.io\"", &format!("name = {:?}", registry.host()))
        .replace("url = \"https://ghcr.io\"", &format!("url = \"http://{}\"", registry.host()))
        .replace("repositories = []", "repositories = [\"pkg/**\"]");
    std::fs::write("/etc/ces/proxy.toml", config).unwrap();
    let hash = run("htpasswd", &["-Bbn", "alice", "pw"]);
    std::fs::write("/etc/ces/proxy.htpasswd", hash).unwrap();
    let mut proxy = start();
    let mut stderr = BufReader::new(proxy.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains(&format!("listening on 127.0.0.1:{port}")), "{line}");
    let get = |path: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic YWxpY2U6cHc=\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    let manifest = get(&format!("/v2/{}/pkg/app/manifests/1", registry.host()));
    assert!(manifest.starts_with("HTTP/1.1 200"), "{manifest}");
    assert!(manifest.to_ascii_lowercase().contains(&format!("docker-content-digest: {digest}")), "{manifest}");
    let _ = proxy.kill();
    let _ = proxy.wait();
    let audit = std::fs::read_to_string("/var/log/ces-proxy/audit.jsonl").unwrap();
    assert!(audit.contains("\"client\":\"alice\""), "{audit}");

    // Purged: nothing of it left, its user neither.
    let purged = apt(&["purge", "-y", "ces"]);
    assert!(purged.status.success(), "apt-get purge: {}", String::from_utf8_lossy(&purged.stderr));
    for path in &files {
        assert!(!Path::new(path).exists(), "{path} is left after purge");
    }
    for path in ["/etc/ces", "/var/cache/ces-proxy", "/var/log/ces-proxy", "/usr/share/doc/ces"] {
        assert!(!Path::new(path).exists(), "{path} is left after purge");
    }
    assert!(!Command::new("getent").args(["passwd", "ces-proxy"]).status().unwrap().success(), "the user is left");
}
