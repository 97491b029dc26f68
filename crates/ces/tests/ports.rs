//! Published ports (`-p`, `--publish-socket`) through the `ces` binary: a
//! server in the container is reached from the host through the port, while
//! in the same run the workload still cannot open any connection out (not to
//! a listener on the host, not to the internet) and its network namespace
//! holds only `lo`. Other addresses than loopback are refused unless the
//! policy allows them; a port in use stops the run before anything starts;
//! a published socket is private to the user and removed at the end; the
//! plan and the audit record list the ports; podman refuses them. As root,
//! as root for another user (sudo), and rootless.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Bait, Mode, World, free_port, test_user};

/// The common world, named per test and mode; under sudo, HOME is the test
/// user's (a published socket is made there as the user).
fn world(test: &str, mode: Mode) -> World {
    let w = World::new(&mode.repo("ports", test), mode);
    if mode == Mode::Sudo {
        test_user().chown(&w.home);
    }
    w
}

/// What a run left in HOME: `outputs_*` and `scratch_*` names.
fn leftovers(w: &World) -> Vec<String> {
    std::fs::read_dir(&w.home)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("outputs_") || n.starts_with("scratch_"))
        .collect()
}

/// The workload: tries to connect out to each of `targets`, says what
/// happened and what network it has, then serves one connection on 8080
/// (a greeting, then an echo of one line), and ends once it has answered
/// (busybox `nc -e` may leave the answering shell to a child of its own,
/// which the end of the container's PID 1 would kill).
fn workload(targets: &[(String, u16)]) -> String {
    let mut script = String::new();
    for (host, port) in targets {
        script.push_str(&format!(
            "if nc -w 3 {host} {port} </dev/null >/dev/null 2>&1; then echo OPEN {host}:{port}; \
             else echo BLOCKED {host}:{port}; fi; "
        ));
    }
    script.push_str(
        "echo LINKS $(ip -o link | wc -l) $(ip -o link | cut -d: -f2); echo ROUTES $(ip route | wc -l); \
         echo READY; nc -l -p 8080 -e sh -c 'echo hello-from-the-container; read line; echo \"got $line\"; \
         touch /scratch/served'; until [ -e /scratch/served ]; do sleep 0.1; done",
    );
    script
}

/// Reads lines from the run's stdout until READY.
fn until_ready(child: &mut Child) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the run ended before READY: {lines:?}\n{err}");
        }
        let line = line.trim_end().to_owned();
        if line == "READY" {
            return lines;
        }
        lines.push(line);
    }
}

/// Talks to the container's server through `connect`, retrying while the
/// server is not listening yet (the relay then closes at once).
fn exchange<S: std::io::Read + std::io::Write>(connect: impl Fn() -> std::io::Result<S>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = connect() {
            let mut greeting = [0u8; 1];
            if stream.read(&mut greeting).unwrap_or(0) == 1 {
                stream.write_all(b"ping\n").unwrap();
                let mut rest = String::new();
                stream.read_to_string(&mut rest).unwrap();
                return format!("{}{rest}", greeting[0] as char);
            }
        }
        assert!(Instant::now() < deadline, "the container's server was never reached");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `-p HOST:8080`: the host reaches the container's server; meanwhile the
/// workload could not connect to the host (its address, or a listener on
/// every address), nor out to 1.1.1.1, and has only `lo`. The audit record
/// lists the port.
fn published_port(mode: Mode) {
    let w = world("tcp", mode);
    let bait = Bait::new();
    let targets = bait.targets(("1.1.1.1", 80));
    let port = free_port();
    let publish = format!("{port}:8080");
    let mut child = w
        .run_with(&["-p", &publish], &["sh", "-c", &workload(&targets)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = until_ready(&mut child);
    let reply = exchange(|| TcpStream::connect((Ipv4Addr::LOCALHOST, port)));
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(reply, "hello-from-the-container\ngot ping\n");

    for (host, target_port) in &targets {
        let blocked = format!("BLOCKED {host}:{target_port}");
        assert!(lines.contains(&blocked), "the workload connected out: {lines:?}");
    }
    assert_eq!(bait.hit_count(), 0, "the host's listener was reached");
    assert!(lines.contains(&"LINKS 1 lo".to_owned()), "the container has another interface: {lines:?}");
    assert!(lines.contains(&"ROUTES 0".to_owned()), "the container has a route: {lines:?}");

    let run = w.sb.audit_records().into_iter().rev().find(|r| r["event"] == "run").unwrap();
    assert_eq!(run["ports"], serde_json::json!([format!("127.0.0.1:{port} -> 8080/tcp")]), "{run}");
}

#[test]
fn published_port_as_root() {
    published_port(Mode::Root);
}

#[test]
fn published_port_under_sudo() {
    published_port(Mode::Sudo);
}

#[test]
fn published_port_rootless() {
    published_port(Mode::Rootless);
}

/// `--publish-socket PATH:8080`: a socket of mode 0600 owned by the user,
/// reaching the container's server, removed at the end.
fn published_socket(mode: Mode) {
    let w = world("socket", mode);
    let socket = w.home.join("app.sock");
    let value = format!("{}:8080", socket.display());
    let mut child = w
        .run_with(&["--publish-socket", &value], &["sh", "-c", &workload(&[])])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    until_ready(&mut child);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), w.uid());
    let reply = exchange(|| UnixStream::connect(&socket));
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(reply, "hello-from-the-container\ngot ping\n");
    assert!(!socket.exists(), "the socket outlived the run");
}

#[test]
fn published_socket_as_root() {
    published_socket(Mode::Root);
}

#[test]
fn published_socket_under_sudo() {
    published_socket(Mode::Sudo);
}

#[test]
fn published_socket_rootless() {
    published_socket(Mode::Rootless);
}

/// Under sudo, the socket is made as the user: a directory only root may
/// write is refused, and a symlink at the path is not followed.
#[test]
fn published_socket_under_sudo_is_made_as_the_user() {
    let w = world("socket-as-user", Mode::Sudo);
    let root_only = w.sb.dir.path().join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o755)).unwrap();
    let value = format!("{}:8080", root_only.join("app.sock").display());
    let out = w.sb.run(w.run_with(&["--publish-socket", &value], &["true"]));
    let err = out.fails();
    assert!(err.contains("cannot create the socket"), "{err}");
    assert!(!root_only.join("app.sock").exists());

    let target = root_only.join("target");
    let link = w.home.join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let value = format!("{}:8080", link.display());
    let err = w.sb.run(w.run_with(&["--publish-socket", &value], &["true"])).fails().to_owned();
    assert!(err.contains("already exists"), "{err}");
    assert!(!target.exists(), "the symlink was followed");
    assert!(leftovers(&w).is_empty(), "{:?}", leftovers(&w));
}

/// A host port in use: one clear error, before anything of the run exists.
fn port_in_use(mode: Mode) {
    let w = world("in-use", mode);
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let publish = format!("{port}:8080");
    let out = w.sb.run(w.run_with(&["-p", &publish], &["sh", "-c", "echo ran > /safe_outputs/ran"]));
    let err = out.fails();
    assert!(err.contains(&format!("error: port 127.0.0.1:{port} is already in use on this host")), "{err}");
    assert!(err.contains("hint: choose another host port"), "{err}");
    assert!(leftovers(&w).is_empty(), "the run started: {:?}", leftovers(&w));
    let last = w.sb.audit_records().pop().unwrap();
    assert_eq!(last["event"], "run_not_started", "{last}");
}

#[test]
fn port_in_use_as_root() {
    port_in_use(Mode::Root);
}

#[test]
fn port_in_use_rootless() {
    port_in_use(Mode::Rootless);
}

/// Any address but loopback is refused by default, `[run]
/// publish_addresses` allows it; the plan lists the ports.
#[test]
fn other_addresses_need_the_policy_and_the_plan_lists_ports() {
    let w = world("policy", Mode::Root);
    let socket = w.home.join("s.sock");
    let socket_value = format!("{}:8888", socket.display());
    for value in ["0.0.0.0:8080:80", "192.0.2.77:8080:80"] {
        let err = w.sb.run(w.run_with(&["--dry-run", "-p", value], &["true"])).fails().to_owned();
        assert!(err.contains("cannot publish a port on"), "{err}");
        assert!(err.contains("hint: publish on loopback"), "{err}");
    }
    let out = w.sb.run(w.run_with(&["--dry-run", "-p", "8787:8787", "-p", "[::1]:9000:90/tcp"], &["true"]));
    let plan = out.ok();
    assert!(plan.contains("port:       127.0.0.1:8787 -> 8787/tcp"), "{plan}");
    assert!(plan.contains("port:       [::1]:9000 -> 90/tcp"), "{plan}");
    assert!(plan.contains("port: 127.0.0.1:8787 -> 8787/tcp (ces listens on the host"), "{plan}");

    w.sb.configure("[run]\npublish_addresses = [\"0.0.0.0\"]");
    let out = w.sb.run(
        w.run_with(&["--dry-run", "--json", "-p", "0.0.0.0:8080:80", "--publish-socket", &socket_value], &["true"]),
    );
    let plan: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(
        plan["spec"]["ports"],
        serde_json::json!([
            {"host": {"type": "tcp", "address": "0.0.0.0:8080"}, "container_port": 80},
            {"host": {"type": "unix", "path": socket}, "container_port": 8888},
        ])
    );
    assert!(!socket.exists(), "a dry run made the socket");
    let err = w.sb.run(w.run_with(&["--dry-run", "-p", "192.0.2.77:8080:80"], &["true"])).fails().to_owned();
    assert!(err.contains("cannot publish a port on 192.0.2.77"), "{err}");
}

/// Malformed values: one line, and nothing created.
#[test]
fn malformed_values_are_refused() {
    let w = world("malformed", Mode::Root);
    for (value, expected) in [
        ("8080", "give the host port too"),
        ("8080:80/udp", "only TCP"),
        ("8000-8010:8000-8010", "port ranges"),
        ("8080:99999", "a port is a number"),
    ] {
        let err = w.sb.run(w.run_with(&["-p", value], &["true"])).fails().to_owned();
        assert!(err.contains(expected), "{value}: {err}");
    }
    let err = w.sb.run(w.run_with(&["-p", "8080:80", "-p", "8080:81"], &["true"])).fails().to_owned();
    assert!(err.contains("127.0.0.1:8080 is published twice"), "{err}");
    assert!(leftovers(&w).is_empty());
}

/// podman publishes a port only through a network that also lets the
/// container out: refused, with the way that works.
#[test]
fn podman_refuses_published_ports() {
    let w = world("podman", Mode::Root);
    let out = w.sb.run(w.run_with(&["--runtime", "podman", "--dry-run", "-p", "8080:80"], &["true"]));
    let err = out.fails();
    assert!(err.contains("publishing ports (-p, --publish-socket) is not supported by the podman runtime"), "{err}");
    assert!(err.contains("hint: use the native runtime"), "{err}");
}
