//! A pull interrupted mid-blob (`kill -9`, `SIGTERM`) still leaves its
//! audit record: its `pull_start` is written before the registry is
//! contacted, and the next pull writes the `pull_end` the dead one could not.
//!
//! The registry is a tiny server here that serves an image's manifest and
//! config and then stalls in the middle of its layer, so that the pull is
//! caught in the blob every time, without timing guesses.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ces_testkit::{Entry, ImageSpec, Layer};
use common::Sandbox;

/// Serves `content` by path; the `stall` path gets its headers and half its
/// body, then nothing (the connection stays open until the server ends).
struct StallingRegistry {
    host: String,
    stalled: Arc<AtomicBool>,
}

/// Where and how long the stalled blob stalls.
#[derive(Clone)]
struct Stall {
    path: String,
    /// After half the body, nothing for this long, then the rest.
    pause: Duration,
}

impl StallingRegistry {
    fn start(content: HashMap<String, (String, Vec<u8>)>, stall: String) -> StallingRegistry {
        StallingRegistry::stalling(content, Stall { path: stall, pause: Duration::from_secs(120) })
    }

    fn stalling(content: HashMap<String, (String, Vec<u8>)>, stall: Stall) -> StallingRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let stalled = Arc::new(AtomicBool::new(false));
        let (content, flag) = (Arc::new(content), Arc::clone(&stalled));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (content, stall, flag) = (Arc::clone(&content), stall.clone(), Arc::clone(&flag));
                std::thread::spawn(move || serve(stream, &content, &stall, &flag));
            }
        });
        StallingRegistry { host, stalled }
    }
}

fn serve(mut stream: TcpStream, content: &HashMap<String, (String, Vec<u8>)>, stall: &Stall, stalled: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body): (&str, &str, &[u8]) = match content.get(path) {
        _ if path == "/v2/" => ("200 OK", "application/json", b"{}"),
        Some((kind, body)) => ("200 OK", kind, body),
        None => ("404 Not Found", "application/json", b"{}"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if method == "HEAD" {
        return;
    }
    if path == stall.path {
        let first = body.len() / 2;
        let _ = stream.write_all(&body[..first]);
        let _ = stream.flush();
        stalled.store(true, Ordering::SeqCst);
        std::thread::sleep(stall.pause);
        let _ = stream.write_all(&body[first..]);
        return;
    }
    let _ = stream.write_all(body);
}

/// The audit records of `sb` with `pull_id`, as (event, result).
fn events_of(sb: &Sandbox, id: &str) -> Vec<(String, String)> {
    sb.audit_records()
        .iter()
        .filter(|r| r["pull_id"] == id)
        .map(|r| (r["event"].as_str().unwrap().to_owned(), r["result"].as_str().unwrap_or("-").to_owned()))
        .collect()
}

/// What the registry serves for `image` as `ns/img:1`: its manifest, and
/// its blobs by digest.
fn content_of(image: &ces_testkit::BuiltImage) -> HashMap<String, (String, Vec<u8>)> {
    let mut content = HashMap::new();
    content.insert("/v2/ns/img/manifests/1".to_owned(), (image.media_type.clone(), image.manifest.clone()));
    for (digest, bytes) in &image.blobs {
        content.insert(format!("/v2/ns/img/blobs/{digest}"), ("application/octet-stream".into(), bytes.clone()));
    }
    content
}

/// `ces pull ns/img:1` from `reg` into `sb`, running, quiet.
fn start_pull(sb: &Sandbox, reg: &StallingRegistry) -> std::process::Child {
    sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", &format!("{}/ns/img:1", reg.host)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn an_interrupted_pull_is_recorded_at_its_start_and_closed_by_the_next() {
    let layer: Vec<u8> = (0..4_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let image = ImageSpec::new(vec![Layer::new(vec![Entry::file("big", layer)])]).build();
    let mut content = content_of(&image);
    content
        .insert(format!("/v2/ns/img/manifests/{}", image.digest), (image.media_type.clone(), image.manifest.clone()));
    let stall = format!("/v2/ns/img/blobs/{}", image.layer_digests[0]);

    for signal in [rustix::process::Signal::KILL, rustix::process::Signal::TERM] {
        let reg = StallingRegistry::start(content.clone(), stall.clone());
        let sb = Sandbox::with_hosts(std::slice::from_ref(&reg.host), std::slice::from_ref(&reg.host));
        let reference = format!("{}/ns/img:1", reg.host);
        let mut child = sb
            .command(env!("CARGO_BIN_EXE_ces"), &["pull", &reference])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reg.stalled.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(reg.stalled.load(Ordering::SeqCst), "the pull reached the layer blob");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, signal).unwrap();
        child.wait().unwrap();

        // The start is there, with no end.
        let records = sb.audit_records();
        assert_eq!(records.len(), 1, "{signal:?}: {records:#?}");
        assert_eq!((&records[0]["event"], &records[0]["reference"]), (&"pull_start".into(), &reference.clone().into()));
        let id = records[0]["pull_id"].as_str().unwrap().to_owned();
        let shown = sb.ces(&["audit", "show"]);
        assert!(shown.ok().contains(&format!("pull {id} started: running or lost")), "{}", shown.stdout);

        // The next writer closes it, once: a pull (refused, even), or `ces gc`.
        if signal == rustix::process::Signal::KILL {
            sb.ces(&["gc"]).ok();
            sb.ces(&["pull", "elsewhere.example.org/a/b:2"]).fails();
        } else {
            sb.ces(&["pull", "elsewhere.example.org/a/b:1"]).fails();
            sb.ces(&["pull", "elsewhere.example.org/a/b:2"]).fails();
        }
        assert_eq!(
            events_of(&sb, &id),
            [("pull_start".to_owned(), "-".to_owned()), ("pull_end".to_owned(), "supervisor_lost".to_owned())],
            "{signal:?}"
        );
        // The start, its end, and one record per refused pull (gc writes none).
        let expected = if signal == rustix::process::Signal::KILL { 3 } else { 4 };
        let records = sb.audit_records();
        assert_eq!(records.len(), expected, "{records:#?}");
        assert_eq!(records[1]["user"], records[0]["user"]);
        let verify = sb.ces(&["audit", "verify"]);
        assert!(verify.ok().contains(&format!("{expected} records, the chain is whole")), "{}", verify.stdout);
        let shown = sb.ces(&["audit", "show"]);
        assert!(!shown.ok().contains("running or lost"), "{}", shown.stdout);
        assert!(shown.stdout.contains(&format!("pull {id} supervisor lost")), "{}", shown.stdout);
    }
}

#[test]
fn a_layer_is_unpacked_while_the_others_are_still_downloading() {
    // Two layers: the second stalls half-way (for two minutes); the first,
    // stored, must be unpacked meanwhile, not after the last download, and
    // linked into the image's root filesystem, begun in tmp/.
    let image = ImageSpec::new(vec![
        Layer::new(vec![Entry::file("first", "here early")]),
        Layer::new(vec![Entry::file("big", noise())]),
    ])
    .build();
    let reg = StallingRegistry::start(content_of(&image), format!("/v2/ns/img/blobs/{}", image.layer_digests[1]));
    let sb = Sandbox::with_hosts(std::slice::from_ref(&reg.host), std::slice::from_ref(&reg.host));
    // A tree begun ahead is for images that are assembled.
    sb.configure("layered_rootfs = false");
    let mut child = start_pull(&sb, &reg);
    let first = sb.store.join("layers").join(image.diff_ids[0].strip_prefix("sha256:").unwrap());
    let begun = || temp_dirs(&sb, "rootfs-").into_iter().find(|dir| dir.join("first").exists());
    // A bound on the wait, not a measure: the stall lasts 120 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(reg.stalled.load(Ordering::SeqCst) && first.join("first").exists() && begun().is_some())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let linked = begun().map(|dir| std::fs::symlink_metadata(dir.join("first")).unwrap().ino());
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reg.stalled.load(Ordering::SeqCst), "the second layer's download started");
    assert!(running, "the pull was still downloading");
    assert_eq!(std::fs::read(first.join("first")).unwrap(), b"here early", "the first layer unpacked meanwhile");
    let layer_file = std::fs::symlink_metadata(first.join("first")).unwrap().ino();
    assert_eq!(linked, Some(layer_file), "the first layer linked into the root filesystem meanwhile");
    assert!(!sb.rootfs(&image.digest).exists(), "no root filesystem before every layer is there");
}

/// The store's temporary directories whose name starts with `prefix`.
fn temp_dirs(sb: &Sandbox, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(sb.store.join("tmp"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_layer_is_unpacked_as_its_bytes_arrive() {
    // One layer: a small file, then 4 MB that do not compress. The registry
    // stalls half-way through the blob (for two minutes): the small file
    // must be unpacked meanwhile, into a temporary directory. (That the
    // layer is named only once its blob is whole is shown in ces-image's
    // store tests, where the test writes the blob's file itself.)
    let image =
        ImageSpec::new(vec![Layer::new(vec![Entry::file("a-early", "here early"), Entry::file("big", noise())])])
            .build();
    let reg = StallingRegistry::start(content_of(&image), format!("/v2/ns/img/blobs/{}", image.layer_digests[0]));
    let sb = Sandbox::with_hosts(std::slice::from_ref(&reg.host), std::slice::from_ref(&reg.host));
    let mut child = start_pull(&sb, &reg);
    // The file whole, not only there: it is created, then written.
    let unpacked_early = || {
        let whole = |dir: &std::path::PathBuf| std::fs::read(dir.join("a-early")).is_ok_and(|c| c == b"here early");
        temp_dirs(&sb, "layer-").into_iter().find(whole)
    };
    // A bound on the wait, not a measure: the stall lasts 120 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(reg.stalled.load(Ordering::SeqCst) && unpacked_early().is_some()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let early = unpacked_early();
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reg.stalled.load(Ordering::SeqCst), "the layer's download started");
    assert!(running, "the pull was still downloading");
    let early = early.expect("the layer's first file unpacked while its blob was half downloaded");
    assert_eq!(std::fs::read(early.join("a-early")).unwrap(), b"here early");
}

/// 4 MB that do not compress.
fn noise() -> Vec<u8> {
    ces_testkit::misbehave::noise(4_000_000, 7)
}

#[test]
fn a_stalled_download_does_not_hold_back_another_pull_of_its_layer() {
    // Two registries serve the same image. A pull from the first stalls
    // half-way through the layer (for two minutes) while its bytes are
    // unpacked; a pull of the same image from the second into the same store
    // must not wait for it.
    let image = ImageSpec::new(vec![Layer::new(vec![Entry::file("big", noise())])]).build();
    let stalling = StallingRegistry::start(content_of(&image), format!("/v2/ns/img/blobs/{}", image.layer_digests[0]));
    let quick = StallingRegistry::start(content_of(&image), String::new());
    let hosts = [stalling.host.clone(), quick.host.clone()];
    let sb = Sandbox::with_hosts(&hosts, &hosts);
    let mut stalled = start_pull(&sb, &stalling);
    let deadline = Instant::now() + Duration::from_secs(60);
    let following = || stalling.stalled.load(Ordering::SeqCst) && !temp_dirs(&sb, "layer-").is_empty();
    while !following() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let following = following();
    let mut second = start_pull(&sb, &quick);
    // A bound on the wait, not a measure: the first pull stalls for 120 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = None;
    while done.is_none() && Instant::now() < deadline {
        done = second.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_running = stalled.try_wait().unwrap().is_none();
    for child in [&mut stalled, &mut second] {
        let _ = child.kill();
        child.wait().unwrap();
    }
    assert!(following, "the first pull was unpacking the layer as it came");
    assert!(first_running, "the first pull was still stalled");
    assert!(done.is_some_and(|status| status.success()), "the second pull finished: {done:?}");
    assert!(sb.rootfs(&image.digest).join("big").is_file());
}

#[test]
fn a_layer_unpacked_as_it_arrives_is_not_named_when_its_blob_is_not_the_one_named() {
    // The registry serves a valid layer (its tar is the config's diff_id)
    // under another digest, of the same size: the download fails its
    // check, and the layer unpacked from its bytes as they came must not be
    // named either (the store would then say that blob makes it).
    let image = ImageSpec::new(vec![Layer::new(vec![Entry::file("data", "the layer's own")])]).build();
    let real = image.layer_digests[0].to_string();
    let claimed = ces_image::Digest::of(b"another blob").to_string();
    let manifest = String::from_utf8(image.manifest.clone()).unwrap().replace(&real, &claimed);
    let mut content = content_of(&image);
    content.insert("/v2/ns/img/manifests/1".to_owned(), (image.media_type.clone(), manifest.into_bytes()));
    let blob = content.remove(&format!("/v2/ns/img/blobs/{real}")).unwrap();
    content.insert(format!("/v2/ns/img/blobs/{claimed}"), blob);
    // The blob pauses half-way, so that its bytes are being read when the
    // check fails.
    let stall = Stall { path: format!("/v2/ns/img/blobs/{claimed}"), pause: Duration::from_millis(300) };
    let reg = StallingRegistry::stalling(content, stall);
    let sb = Sandbox::with_hosts(std::slice::from_ref(&reg.host), std::slice::from_ref(&reg.host));
    let out = sb.ces(&["pull", &format!("{}/ns/img:1", reg.host)]);
    assert_ne!(out.code, 0, "the pull fails");
    assert!(out.stderr.contains("digest"), "{}", out.stderr);
    let layer = sb.store.join("layers").join(image.diff_ids[0].strip_prefix("sha256:").unwrap());
    assert!(!layer.exists() && !layer.with_extension("json").exists(), "the layer is not named");
    assert!(temp_dirs(&sb, "layer-").is_empty(), "nothing of it is left");
}
