//! `ces test` with the real binary, as root, on fixture images from a real
//! registry: an image that is ready, and images that look up a name, connect
//! to a literal address (IPv4 and IPv6), send UDP, ignore proxy variables, write outside
//! /safe_outputs, run as root and carry a CSV in a layer. Each finding is
//! asserted from the `--json` report, and so is the absence of findings on
//! the clean image. Every path a test creates is under its own temp dir.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;

use ces_testkit::layer::{Entry, Layer};
use ces_testkit::{AuthMode, ImageSpec, Registry, busybox_image};
use common::{Run, Sandbox, TEST_USER, require_root, test_user};
use serde_json::Value;

fn registry() -> &'static Registry {
    Registry::shared(AuthMode::Anonymous)
}

/// The busybox base plus the TRE directories, run as nobody: what a ready
/// image looks like.
fn clean_image() -> ImageSpec {
    let tre = Layer::new(vec![
        Entry::dir("safe_data"),
        Entry::dir("safe_outputs"),
        Entry::dir("scratch"),
        // A package's own sample data is not a finding.
        Entry::dir("usr/lib/python3/site-packages/sklearn/datasets/data"),
        Entry::file("usr/lib/python3/site-packages/sklearn/datasets/data/iris.csv", "a,b\n1,2\n"),
    ]);
    let mut image = busybox_image();
    image.layers.push(tre);
    image.user("65534:65534")
}

/// A sandbox with `image` pulled; `ces test` writes under the sandbox.
struct World {
    sb: Sandbox,
    image: String,
}

impl World {
    /// Containers run by the native runtime as root.
    fn new(repo: &str, image: &ImageSpec) -> World {
        World::configured(repo, image, "")
    }

    /// [`World::new`] with `toml` appended to the config (after its
    /// `[storage]` table) before the pull.
    fn configured(repo: &str, image: &ImageSpec, toml: &str) -> World {
        require_root("needs root");
        let reg = registry();
        reg.push(&image.build(), repo, "1");
        let sb = Sandbox::new(&[reg]);
        sb.configure(toml);
        let image = format!("{}/{repo}:1", reg.host());
        sb.ces(&["pull", "--quiet", &image]).ok();
        World { sb, image }
    }

    fn test(&self, options: &[&str], command: &[&str]) -> Run {
        let mut args = vec!["test"];
        args.extend_from_slice(options);
        args.push(&self.image);
        args.extend_from_slice(command);
        let mut cmd = self.sb.command(env!("CARGO_BIN_EXE_ces"), &args);
        cmd.env("TMPDIR", self.sb.dir.path()).env("HOME", self.sb.dir.path());
        self.sb.run(cmd)
    }

    /// `ces test --json`: the exit code and the report.
    fn report(&self, options: &[&str], command: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(options);
        let run = self.test(&all, command);
        assert!(run.code == 0 || run.code == 1, "ces test failed itself:\n{}\n{}", run.stdout, run.stderr);
        let report: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{}\n{}", run.stdout, run.stderr));
        assert_eq!(report["verdict"], if run.code == 0 { "ready" } else { "not ready" });
        (run.code, report)
    }
}

fn attempts(report: &Value) -> Vec<Value> {
    report["network"]["attempts"].as_array().unwrap().clone()
}

fn codes(report: &Value) -> Vec<String> {
    report["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap().to_owned()).collect()
}

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

#[test]
fn a_clean_image_that_works_offline_is_ready_with_no_findings() {
    let w = World::new("test/clean", &clean_image());
    let (code, report) = w.report(&[], &sh("echo 42 > /safe_outputs/result.txt"));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["reasons"], serde_json::json!([]));
    assert_eq!(report["exit_code"], 0);
    assert_eq!(attempts(&report), Vec::<Value>::new());
    assert_eq!(codes(&report), ["image-size"], "only the size, for information: {report:#}");
    let outputs = report["outputs"].as_array().unwrap();
    assert!(outputs.iter().any(|f| f["path"] == "result.txt" && f["size"] == 3), "{report:#}");
    assert_eq!(report["lost_writes"], serde_json::json!([]));
    assert!(report["peak_memory"].as_u64().is_some_and(|m| m > 0), "peak memory from the cgroup: {report:#}");
    assert!(report["wall_seconds"].as_f64().is_some_and(|s| s > 0.0));
    // The kept outputs are where the report says.
    let dir = std::path::PathBuf::from(report["outputs_dir"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(dir.join("result.txt")).unwrap(), "42\n");
    let left: Vec<String> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [dir.file_name().unwrap().to_string_lossy().into_owned()], "only the outputs stay");
    // The watcher's device lived in the container's namespace only.
    assert!(!std::path::Path::new("/sys/class/net/ces0").exists());
    // The audit log tells the readiness test from a real run.
    let log = std::fs::read_to_string(w.sb.store.join("audit.jsonl")).unwrap();
    let run: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&run["event"], &run["test"], &run["image"]["reference"]),
        (&"run".into(), &true.into(), &w.image.as_str().into())
    );
    let table = w.sb.ces(&["audit", "show", "--image", &w.image]);
    assert!(table.ok().lines().any(|l| l.contains(" test ") && l.trim_end().ends_with("exit 0")), "{}", table.stdout);
}

#[test]
fn a_dns_lookup_is_reported_by_name_with_a_hint_and_fails_the_test() {
    let w = World::new("test/dns", &clean_image());
    let (code, report) = w.report(&[], &sh("nslookup huggingface.co; nc -w 5 huggingface.co 443 </dev/null; true"));
    assert_eq!(code, 1, "{report:#}");
    let seen = attempts(&report);
    let dns = seen.iter().find(|a| a["kind"] == "dns" && a["name"] == "huggingface.co").unwrap();
    assert!(dns["queries"].as_array().unwrap().contains(&Value::from("A")), "{dns}");
    let connect = seen.iter().find(|a| a["kind"] == "connect").unwrap();
    assert_eq!(connect["protocol"], "tcp");
    assert_eq!(connect["port"], 443);
    assert_eq!(connect["name"], "huggingface.co", "the connection is attributed to the name: {connect}");
    let hints = report["network_hints"].to_string();
    assert!(hints.contains("HF_HUB_OFFLINE=1"), "{hints}");
    assert!(report["reasons"][0].as_str().unwrap().contains("network"), "{report:#}");

    // Allowed attempts are still reported, but the image is ready.
    let (code, report) = w.report(&["--allow-network-attempts"], &sh("nslookup huggingface.co; true"));
    assert_eq!(code, 0, "{report:#}");
    assert!(attempts(&report).iter().any(|a| a["name"] == "huggingface.co"));
}

#[test]
fn literal_addresses_udp_and_programs_that_ignore_proxies_are_caught() {
    let w = World::new("test/literal", &clean_image());
    let script = "nc -w 5 192.0.2.10 443 </dev/null; tftp -g -r model.bin 192.0.2.20 69; \
                  nc -w 5 192.0.2.30 8080 </dev/null; nc -w 5 2001:db8::10 443 </dev/null; true";
    let proxy = ["-e", "HTTPS_PROXY=http://proxy.tre.invalid:3128", "-e", "HTTP_PROXY=http://proxy.tre.invalid:3128"];
    let (code, report) = w.report(&proxy, &sh(script));
    assert_eq!(code, 1, "{report:#}");
    let attempts = attempts(&report);
    let find = |protocol: &str, address: &str, port: u16| {
        attempts.iter().find(|a| a["protocol"] == protocol && a["address"] == address && a["port"] == port).cloned()
    };
    let tcp = find("tcp", "192.0.2.10", 443).unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(tcp["name"], Value::Null, "a literal address has no name");
    find("udp", "192.0.2.20", 69).unwrap_or_else(|| panic!("UDP: {report:#}"));
    // nc does not use the proxy: the direct attempt is what is reported.
    find("tcp", "192.0.2.30", 8080).unwrap_or_else(|| panic!("{report:#}"));
    find("tcp", "2001:db8::10", 443).unwrap_or_else(|| panic!("IPv6: {report:#}"));
    assert!(!report["network"].to_string().contains("proxy.tre.invalid"), "{report:#}");
}

#[test]
fn no_packet_reaches_the_host_whatever_the_container_tries() {
    let w = World::new("test/escape", &clean_image());
    // The host's own address on its default route, with a listener on every address.
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    probe.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).expect("the host has a default route");
    let host = probe.local_addr().unwrap().ip().to_string();
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("nc -w 5 {host} {port} </dev/null; nc -w 5 127.0.0.1 {port} </dev/null; true");
    let (code, report) = w.report(&[], &sh(&script));
    assert_eq!(code, 1);
    assert!(
        attempts(&report).iter().any(|a| a["address"] == host.as_str() && a["port"] == port),
        "the attempt at the host's {host}:{port} is reported: {report:#}"
    );
    let accepted = listener.accept();
    assert!(
        accepted.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the host's listener was reached: {accepted:?}"
    );
}

#[test]
fn writes_outside_safe_outputs_are_reported_as_lost() {
    let w = World::new("test/writes", &clean_image());
    let script = "mkdir -p /tmp/cache && echo model > /tmp/cache/weights.bin; echo tmp > /scratch/part.txt; \
                  echo kept > /safe_outputs/kept.txt";
    let (code, report) = w.report(&[], &sh(script));
    assert_eq!(code, 0, "lost writes are a warning, not a failure: {report:#}");
    let lost = report["lost_writes"].as_array().unwrap();
    assert_eq!(lost.len(), 1, "{report:#}");
    assert_eq!(lost[0]["path"], "/tmp/cache/weights.bin");
    assert_eq!(lost[0]["size"], 6);
    assert_eq!(report["scratch"][0]["path"], "scratch/part.txt");
    assert!(codes(&report).contains(&"writes-lost".to_owned()));
    assert!(codes(&report).contains(&"scratch-used".to_owned()));
    assert!(report["outputs"].as_array().unwrap().iter().any(|f| f["path"] == "kept.txt"));
}

#[test]
fn an_image_that_runs_as_root_without_the_tre_directories_is_flagged() {
    let w = World::new("test/root", &busybox_image());
    let (code, report) = w.report(&[], &sh("true"));
    assert_eq!(code, 0, "{report:#}");
    let findings = codes(&report);
    assert!(findings.contains(&"runs-as-root".to_owned()), "{report:#}");
    assert!(findings.contains(&"missing-tre-directories".to_owned()), "{report:#}");
    let missing = report["findings"].as_array().unwrap().iter().find(|f| f["code"] == "missing-tre-directories");
    assert!(missing.unwrap()["message"].as_str().unwrap().contains("/safe_data /safe_outputs /scratch"));
}

/// `ces test` on an image with a cohort CSV in its third layer, from a
/// store configured with `toml`: the CSV is named with its layer.
fn finds_the_baked_csv(repo: &str, toml: &str) -> World {
    let mut image = clean_image();
    image.layers.push(Layer::new(vec![Entry::dir("data"), Entry::file("data/cohort.csv", "id,age\n1,34\n")]));
    let w = World::configured(repo, &image, toml);
    let (code, report) = w.report(&[], &sh("true"));
    assert_eq!(code, 0, "{report:#}");
    let data: Vec<&Value> =
        report["findings"].as_array().unwrap().iter().filter(|f| f["code"] == "data-in-layer").collect();
    assert_eq!(data.len(), 1, "the cohort only, not a package's sample data: {report:#}");
    let message = data[0]["message"].as_str().unwrap();
    assert!(message.contains("layer 3") && message.contains("/data/cohort.csv"), "{message}");
    w
}

#[test]
fn a_csv_baked_into_a_layer_is_named_with_its_layer() {
    finds_the_baked_csv("test/csv", "");
}

#[test]
fn a_csv_baked_into_a_layer_is_found_where_the_store_keeps_no_layer_blobs() {
    let w = finds_the_baked_csv("test/csv-noblobs", "keep_layer_blobs = false");
    // Read from the layer unpacked: the blobs are gone.
    let blobs = std::fs::read_dir(w.sb.store.join("oci/blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 2, "the manifest and the config only");
}

#[test]
fn a_failing_container_is_not_ready_and_data_comes_from_data_read_only() {
    let w = World::new("test/fail", &clean_image());
    let data = w.sb.dir.path().join("testdata");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("cohort.csv"), "id,age\n1,34\n").unwrap();
    let script = "cp /safe_data/cohort.csv /safe_outputs/; echo x > /safe_data/new || exit 3";
    let (code, report) = w.report(&["--data", data.to_str().unwrap()], &sh(script));
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["exit_code"], 3, "/safe_data is read-only");
    assert!(report["reasons"][0].as_str().unwrap().contains("exit code 3"), "{report:#}");
    assert!(report["outputs"].as_array().unwrap().iter().any(|f| f["path"] == "cohort.csv"));
    assert!(!data.join("new").exists());
}

#[test]
fn the_report_reads_as_text_for_people() {
    let w = World::new("test/text", &clean_image());
    let run = w.test(&[], &sh("nslookup pypi.org >/dev/null; echo ok > /safe_outputs/a.txt"));
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let text = &run.stdout;
    for expected in [
        "Verdict: NOT READY",
        "looked up pypi.org (A",
        "hint: pypi.org: install packages at build time",
        "Outputs:  1 file",
        "Run:      exit code 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn bad_requests_are_ces_errors() {
    let w = World::new("test/bad", &clean_image());
    let run = w.test(&["--runtime", "podman"], &["true"]);
    assert!(run.fails().contains("native runtime"), "{}", run.stderr);
    let run = w.test(&["--data", "/nonexistent/ces-test-data"], &["true"]);
    assert!(run.fails().contains("--data"), "{}", run.stderr);
    let run = w.test(&["--privileged"], &["true"]);
    assert_eq!(run.code, 125, "widening options are refused as by ces run: {}", run.stderr);
}

/// `ces test` as an unprivileged user, after the operator's `ces system
/// setup`, in a private mount namespace whose /dev/net/tun is a node of
/// `mode` (the host's own device node is left as it is).
fn rootless_test(mode: &str, script: &str) -> (World, Run) {
    let w = World::new(&format!("test/rootless-{}", mode.trim_start_matches('0')), &clean_image());
    let user = test_user();
    let home = w.sb.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(w.sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The store, pulled as root, becomes the user's (as if they had pulled).
    for entry in common::all_paths(&w.sb.store).into_iter().chain([home.clone()]) {
        user.chown(&entry);
    }
    w.sb.ces(&["system", "setup", "--user", TEST_USER]).ok();
    let wrapper = "set -e; d=$(mktemp -d -p \"$SANDBOX\"); mknod \"$d/tun\" c 10 200; chmod \"$TUN_MODE\" \"$d/tun\"; \
                   mount --bind \"$d/tun\" /dev/net/tun; exec setpriv --reuid \"$U\" --regid \"$G\" --init-groups -- \"$@\"";
    let ces = common::user_bin(env!("CARGO_BIN_EXE_ces"));
    let mut args = vec!["--mount", "--propagation", "private", "--", "sh", "-c", wrapper, "sh", ces];
    args.extend(["test", "--json", w.image.as_str(), "sh", "-c", script]);
    let mut cmd = w.sb.command("unshare", &args);
    cmd.current_dir("/")
        .env("SANDBOX", w.sb.dir.path())
        .env("TUN_MODE", mode)
        .env("U", user.uid.to_string())
        .env("G", user.gid.to_string())
        .env("HOME", &home)
        .env("TMPDIR", &home)
        .env("USER", TEST_USER);
    let run = w.sb.run(cmd);
    (w, run)
}

#[test]
fn rootless_the_network_is_observed_where_dev_net_tun_is_open_to_all() {
    let (_world, run) = rootless_test("0666", "nslookup cran.r-project.org; echo ok > /safe_outputs/ok.txt");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(attempts(&report).iter().any(|a| a["name"] == "cran.r-project.org"), "{report:#}");
    let outputs = std::path::PathBuf::from(report["outputs_dir"].as_str().unwrap());
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(outputs.join("ok.txt")).unwrap().uid(), test_user().uid, "the user's own file");
}

#[test]
fn rootless_without_access_to_dev_net_tun_the_refusal_says_how_to_fix_it() {
    let (_world, run) = rootless_test("0600", "true");
    let stderr = run.fails();
    assert!(stderr.contains("opening /dev/net/tun"), "{stderr}");
    assert!(stderr.contains("chmod 0666 /dev/net/tun"), "{stderr}");
}

/// A vsock socket (a way out of a VM-hosted TRE that no packet watcher
/// sees) is refused as in any run, and now reported: the verdict says so;
/// an IP socket is not listed. Before, `ces test` said nothing of it.
#[test]
#[cfg(target_arch = "x86_64")]
fn a_vsock_socket_is_reported_and_refused() {
    let mut layer = ces_testkit::layer::busybox_entries();
    for (name, executable) in ces_testkit::probe::probes() {
        layer.push(Entry::file_mode(&format!("bin/probe-{name}"), executable, 0o755));
    }
    let image = ImageSpec::new(vec![Layer::new(layer)]).env(&["PATH=/bin"]);
    let w = World::new("test/vsock", &image);
    let script = "probe-vsock; echo \"vsock=$?\" > /safe_outputs/r; probe-vsock; probe-inet; echo \"inet=$?\" >> /safe_outputs/r";
    let (code, report) = w.report(&[], &sh(script));
    assert_eq!(code, 1, "{report:#}");
    let sockets = report["network"]["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 1, "{report:#}");
    assert_eq!(
        (&sockets[0]["name"], &sockets[0]["count"], &sockets[0]["refused"]),
        (&"AF_VSOCK".into(), &2.into(), &true.into())
    );
    assert!(
        report["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("AF_VSOCK")),
        "{report:#}"
    );
    // The workload saw what any run gives it: EPERM (1), and a working IP socket.
    let outputs = std::path::PathBuf::from(report["outputs_dir"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(outputs.join("r")).unwrap(), "vsock=1\ninet=100\n");
}
