//! The operator's policy against a real registry and real images:
//! `[policy] require_digest`, `[policy] require_source_label`, `[pull]
//! allowed_users` / `allowed_groups`, and the provenance ces records and shows.
//! Every refusal is one `error:` line with a `hint:`, exit 125, a `refused`
//! audit record, and nothing named in the store.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use ces_testkit::layer::{Entry, Layer, busybox_entries};
use ces_testkit::{AuthMode, ImageSpec, Registry, busybox_image};
use common::{Run, Sandbox, TEST_USER, TestUser, require_root, test_user};

const SOURCE: &str = "org.opencontainers.image.source";
const SOURCE_URL: &str = "https://github.com/ces-tre/policy-fixture";
const LABEL_HINT: &str = "hint: add the label where the image is built, then push and pull it again: `LABEL org.opencontainers.image.source=https://github.com/<owner>/<repo>` in the Dockerfile";
const ACCESS_HINT: &str = "hint: ask your research coordinator to request CES access for your account";

fn registry() -> &'static Registry {
    Registry::shared(AuthMode::Anonymous)
}

/// A busybox image with a layer of its own (so a test can tell whether it was fetched).
fn image(marker: &str) -> ImageSpec {
    ImageSpec::new(vec![Layer::new(busybox_entries()), Layer::new(vec![Entry::file("marker", marker)])])
        .env(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
        .cmd(&["sh"])
}

/// Replaces a `[policy]`/`[pull]` tail added by [`Sandbox::configure`] (the base config stays).
fn reconfigure(sb: &Sandbox, toml: &str) {
    let config = std::fs::read_to_string(&sb.config).unwrap();
    let base = config.split("\n[policy]").next().unwrap().split("\n[pull]").next().unwrap().to_owned();
    std::fs::write(&sb.config, format!("{base}\n{toml}\n")).unwrap();
}

fn last_record(sb: &Sandbox) -> serde_json::Value {
    sb.audit_records().pop().expect("an audit record")
}

/// `$HOME` with a `safe_data` directory, for `ces run --dry-run`.
fn home(sb: &Sandbox) -> PathBuf {
    let home = sb.dir.path().join("home");
    std::fs::create_dir_all(home.join("safe_data")).unwrap();
    home
}

/// `ces run --dry-run IMAGE true` (or `ces-run`), with the sandbox's HOME.
fn dry_run(sb: &Sandbox, bin: &str, image: &str) -> Run {
    let mut cmd = sb.command(bin, &["--dry-run", image, "true"]);
    if bin == env!("CARGO_BIN_EXE_ces") {
        cmd = sb.command(bin, &["run", "--dry-run", image, "true"]);
    }
    cmd.env("HOME", home(sb));
    sb.run(cmd)
}

#[test]
fn require_digest_refuses_tags_at_pull_and_run_and_allows_digests() {
    let reg = registry();
    let built = image("require-digest").build();
    let digest = reg.push(&built, "policy/digest", "1.0");
    let sb = Sandbox::new(&[reg]);
    let tag = format!("{}/policy/digest:1.0", reg.host());
    let pinned = format!("{}/policy/digest@{digest}", reg.host());
    sb.configure("[policy]\nrequire_digest = true");

    for out in [sb.ces(&["pull", &tag]), sb.run(sb.command(env!("CARGO_BIN_EXE_ces-pull"), &["", "", &tag]))] {
        let err = out.fails();
        assert!(err.contains("is not pinned by digest"), "{err}");
        assert!(
            err.contains(&format!("hint: name the image by its digest: {}/policy/digest@sha256:<digest>", reg.host())),
            "{err}"
        );
        let record = last_record(&sb);
        assert_eq!((&record["event"], &record["result"]), (&"pull".into(), &"refused".into()), "{record}");
        assert_eq!(record["reference"], tag.as_str());
    }
    assert!(sb.images().is_empty(), "nothing named");
    assert!(!sb.has_blob(&built.config_digest) && !sb.has_blob(&built.layer_digests[1]), "nothing fetched");

    assert_eq!(sb.ces(&["pull", "--quiet", &pinned]).ok().trim(), pinned);

    // An image stored under its tag (pulled before the policy) is refused by
    // tag at run, and the hint names its exact digest form.
    reconfigure(&sb, "");
    sb.ces(&["pull", "--quiet", &tag]).ok();
    reconfigure(&sb, "[policy]\nrequire_digest = true");
    for bin in [env!("CARGO_BIN_EXE_ces"), env!("CARGO_BIN_EXE_ces-run")] {
        let out = dry_run(&sb, bin, &tag);
        let err = out.fails();
        assert!(err.contains(&format!("error: {tag} is not pinned by digest")), "{err}");
        assert!(err.contains(&format!("hint: name the image by its digest: ces run {pinned} ...")), "{err}");
        let record = last_record(&sb);
        assert_eq!((&record["event"], &record["result"]), (&"run_not_started".into(), &"refused".into()));
        // A digest prefix is a lookup, not a pin.
        dry_run(&sb, bin, &digest[..19]).fails();
    }
    for by_digest in [pinned.as_str(), &digest] {
        let out = dry_run(&sb, env!("CARGO_BIN_EXE_ces"), by_digest);
        assert!(out.ok().contains(&digest), "{}", out.stdout);
    }
    sb.ces(&["audit", "verify"]).ok();
}

#[test]
fn require_source_label_refuses_unlabelled_images_before_their_layers() {
    let reg = registry();
    let bare = image("no-source-label").build();
    let labelled = image("with-source-label").label(SOURCE, SOURCE_URL).build();
    let bare_ref = format!("{}/policy/bare:1", reg.host());
    let labelled_ref = format!("{}/policy/labelled:1", reg.host());
    reg.push(&bare, "policy/bare", "1");
    reg.push(&labelled, "policy/labelled", "1");
    let sb = Sandbox::new(&[reg]);
    sb.configure("[policy]\nrequire_source_label = true");

    let out = sb.ces(&["pull", &bare_ref]);
    let err = out.fails();
    assert!(err.contains(&format!("error: image {bare_ref} has no {SOURCE} label")), "{err}");
    assert!(err.contains(LABEL_HINT), "{err}");
    assert!(err.contains("docker build --label org.opencontainers.image.source="), "{err}");
    assert!(sb.images().is_empty(), "nothing named");
    for blob in bare.layer_digests.iter().chain([&bare.config_digest, &bare.digest]) {
        assert!(!sb.has_blob(blob), "{blob} was stored");
    }
    assert!(sb.tmp_leftovers().is_empty(), "{:?}", sb.tmp_leftovers());
    let record = last_record(&sb);
    assert_eq!((&record["event"], &record["result"]), (&"pull".into(), &"refused".into()), "{record}");
    assert!(record["error"].as_str().unwrap().contains(SOURCE), "{record}");

    sb.ces(&["pull", "--quiet", &labelled_ref]).ok();
    assert!(sb.has_blob(&labelled.layer_digests[1]));

    // At run: an unlabelled image already in the store is refused too.
    reconfigure(&sb, "");
    sb.ces(&["pull", "--quiet", &bare_ref]).ok();
    reconfigure(&sb, "[policy]\nrequire_source_label = true");
    let out = dry_run(&sb, env!("CARGO_BIN_EXE_ces"), &bare_ref);
    assert!(out.fails().contains(LABEL_HINT), "{}", out.stderr);
    let record = last_record(&sb);
    assert_eq!((&record["event"], &record["result"]), (&"run_not_started".into(), &"refused".into()));
    dry_run(&sb, env!("CARGO_BIN_EXE_ces"), &labelled_ref).ok();
    sb.ces(&["audit", "verify"]).ok();
}

#[test]
fn provenance_is_recorded_at_pull_stored_and_shown_by_inspect() {
    let reg = registry();
    let base_digest = format!("sha256:{}", "5e".repeat(32));
    let built = image("provenance")
        .label(SOURCE, SOURCE_URL)
        .label("org.opencontainers.image.revision", "0a1b2c3d")
        .label("org.opencontainers.image.created", "2026-11-01T12:00:00Z")
        .label("org.opencontainers.image.version", "1.4.2")
        .annotation("org.opencontainers.image.base.name", "docker.io/library/python:3.12-slim")
        .annotation("org.opencontainers.image.base.digest", &base_digest)
        .build();
    let digest = reg.push(&built, "policy/provenance", "1.4.2");
    let sb = Sandbox::new(&[reg]);
    let reference = format!("{}/policy/provenance:1.4.2", reg.host());
    sb.ces(&["pull", "--quiet", &reference]).ok();
    let expected = serde_json::json!({
        "source": SOURCE_URL,
        "revision": "0a1b2c3d",
        "created": "2026-11-01T12:00:00Z",
        "version": "1.4.2",
        "base_name": "docker.io/library/python:3.12-slim",
        "base_digest": base_digest,
    });

    let record = last_record(&sb);
    assert_eq!((&record["event"], &record["result"]), (&"pull".into(), &"ok".into()));
    assert_eq!(record["provenance"], expected, "the pull record");

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.store.join("oci/index.json")).unwrap()).unwrap();
    let annotations = &index["manifests"][0]["annotations"];
    assert_eq!(annotations[SOURCE], SOURCE_URL, "{annotations}");
    assert_eq!(annotations["org.opencontainers.image.base.name"], "docker.io/library/python:3.12-slim");
    assert!(annotations["io.ces.pulled-at"].is_string());

    let json: serde_json::Value = serde_json::from_str(sb.ces(&["inspect", "--json", &reference]).ok()).unwrap();
    assert_eq!(json["digest"], digest.as_str());
    assert_eq!(json["provenance"], expected);
    let human = sb.ces(&["inspect", &reference]);
    let text = human.ok();
    let block: Vec<&str> = text.lines().skip_while(|l| *l != "Provenance:").take(7).collect();
    assert_eq!(
        block,
        [
            "Provenance:".to_owned(),
            format!("  Source:      {SOURCE_URL}"),
            "  Revision:    0a1b2c3d".to_owned(),
            "  Created:     2026-11-01T12:00:00Z".to_owned(),
            "  Version:     1.4.2".to_owned(),
            "  Base image:  docker.io/library/python:3.12-slim".to_owned(),
            format!("  Base digest: {base_digest}"),
        ],
        "{text}"
    );

    // An image that says nothing: an empty object, dashes, no field in the record.
    let bare = format!("{}/policy/no-provenance:1", reg.host());
    reg.push(&image("no-provenance").build(), "policy/no-provenance", "1");
    sb.ces(&["pull", "--quiet", &bare]).ok();
    assert!(last_record(&sb).get("provenance").is_none());
    let json: serde_json::Value = serde_json::from_str(sb.ces(&["inspect", "--json", &bare]).ok()).unwrap();
    assert_eq!(json["provenance"], serde_json::json!({}));
    assert!(sb.ces(&["inspect", &bare]).ok().contains("  Source:      -\n"));
}

#[test]
fn loaded_images_get_their_provenance_from_config_and_manifest() {
    let built = image("loaded-provenance")
        .label(SOURCE, SOURCE_URL)
        .label("org.opencontainers.image.revision", "feedbeef")
        .annotation("org.opencontainers.image.base.name", "docker.io/library/debian:12")
        .build();
    let sb = Sandbox::with_hosts(&["ghcr.io".to_owned()], &[]);
    let archive = sb.dir.path().join("image.tar");
    built.write_oci_archive(&archive, "ghcr.io/lab/loaded:1");
    sb.ces(&["load", "--quiet", archive.to_str().unwrap()]).ok();
    let json: serde_json::Value =
        serde_json::from_str(sb.ces(&["inspect", "--json", "ghcr.io/lab/loaded:1"]).ok()).unwrap();
    assert_eq!(
        json["provenance"],
        serde_json::json!({"source": SOURCE_URL, "revision": "feedbeef", "base_name": "docker.io/library/debian:12"})
    );
    let index = std::fs::read_to_string(sb.store.join("oci/index.json")).unwrap();
    assert!(index.contains("feedbeef"), "{index}");
}

/// A real run: its record carries the image's provenance, the same object as the pull's.
#[test]
fn a_run_record_points_to_the_provenance_of_its_image() {
    require_root("runs a container");
    let reg = registry();
    let built = busybox_image().label(SOURCE, SOURCE_URL).label("org.opencontainers.image.revision", "c0ffee").build();
    let digest = reg.push(&built, "policy/run-provenance", "1");
    let sb = Sandbox::new(&[reg]);
    sb.configure("[policy]\nrequire_digest = true\nrequire_source_label = true");
    let pinned = format!("{}/policy/run-provenance@{digest}", reg.host());
    sb.ces(&["pull", "--quiet", &pinned]).ok();
    let mut cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &["run", &pinned, "true"]);
    cmd.env("HOME", home(&sb));
    sb.run(cmd).ok();
    let records = sb.audit_records();
    let run = &records[records.len() - 1];
    let pull = records.iter().rev().find(|r| r["event"] == "pull").unwrap();
    assert_eq!((&run["event"], &run["result"]), (&"run".into(), &"ok".into()), "{run}");
    assert_eq!(run["image"]["digest"], digest.as_str());
    assert_eq!(run["provenance"], serde_json::json!({"source": SOURCE_URL, "revision": "c0ffee"}));
    assert_eq!(run["provenance"], pull["provenance"]);
    assert_eq!(run["image"]["digest"], pull["digest"]);
}

// ----- pull enablement -----

/// A sandbox the test user can use: its config readable, its store theirs.
fn sandbox_for(user: &TestUser, reg: &Registry) -> Sandbox {
    let sb = Sandbox::new(&[reg]);
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&sb.store).unwrap();
    user.chown(&sb.store);
    sb
}

/// `ces ARGS` as the test user (setpriv: its uid, gid and groups).
fn as_user(sb: &Sandbox, user: &TestUser, args: &[&str]) -> Run {
    let mut argv = vec![common::user_bin(env!("CARGO_BIN_EXE_ces"))];
    argv.extend_from_slice(args);
    sb.run(user.setpriv(sb, &argv))
}

#[test]
fn pull_enablement_refuses_accounts_not_listed_and_allows_users_and_groups() {
    require_root("runs ces as another user");
    let user = &test_user();
    let (uid, gid, group) = (user.uid, user.gid, &user.group);
    let reg = registry();
    let built = image("pull-enablement").build();
    let digest = reg.push(&built, "policy/enabled", "1");
    let reference = format!("{}/policy/enabled:1", reg.host());
    let sb = sandbox_for(user, reg);

    // Listed neither by name nor by group: refused, audited, nothing stored.
    sb.configure("[pull]\nallowed_users = [\"someone-else\"]\nallowed_groups = [\"no-such-group-ces\"]");
    let out = as_user(&sb, user, &["pull", &reference]);
    let err = out.fails();
    assert!(err.contains(&format!("error: user {TEST_USER} (uid {uid}) is not enabled to pull images")), "{err}");
    assert!(err.contains(ACCESS_HINT), "{err}");
    let record = last_record(&sb);
    assert_eq!((&record["event"], &record["result"]), (&"pull".into(), &"refused".into()), "{record}");
    assert_eq!(record["user"], serde_json::json!({"name": TEST_USER, "uid": uid}));
    assert!(!sb.store.join("oci").exists(), "refused before the store was opened");

    // An empty user list and no groups: still no one but root.
    reconfigure(&sb, "[pull]\nallowed_users = []");
    as_user(&sb, user, &["pull", &reference]).fails();

    // By primary group, then by name.
    reconfigure(&sb, &format!("[pull]\nallowed_groups = [\"wheel-ces-none\", {group:?}]"));
    assert!(as_user(&sb, user, &["pull", "--quiet", &reference]).ok().contains(&digest));
    reconfigure(&sb, &format!("[pull]\nallowed_users = [{TEST_USER:?}]"));
    as_user(&sb, user, &["pull", "--quiet", "--no-unpack", &reference]).ok();
    let record = last_record(&sb);
    assert_eq!((&record["result"], &record["user"]["name"]), (&"ok".into(), &TEST_USER.into()));

    // Root is the operator: allowed though not listed. Under sudo, the user who ran sudo is checked.
    reconfigure(&sb, "[pull]\nallowed_users = [\"someone-else\"]");
    let root_pull = |sudo: bool| {
        let mut cmd = sb.command(env!("CARGO_BIN_EXE_ces"), &["pull", "--quiet", "--no-unpack", &reference]);
        if sudo {
            cmd = sb.as_sudo(cmd, uid, gid, TEST_USER);
        }
        sb.run(cmd)
    };
    root_pull(false).ok();
    let err = root_pull(true);
    assert!(err.fails().contains(&format!("user {TEST_USER} (uid {uid}) is not enabled")), "{}", err.stderr);
    assert!(err.stderr.contains(ACCESS_HINT));
    assert_eq!(last_record(&sb)["result"], "refused");
    sb.ces(&["audit", "verify"]).ok();
    let table = sb.ces(&["audit", "show", "--user", TEST_USER]);
    assert!(table.ok().lines().any(|l| l.contains("refused: user ces-test-rootless")), "{}", table.stdout);
}

// ----- root in a user namespace is not root -----

/// `ces ARGS` as the test user inside a user namespace of theirs where they
/// are uid 0 (`unshare --user --map-root-user`), with `SUDO_*` saying root;
/// `wrap` runs first, inside it (`sh -c SCRIPT`, ending `exec "$0" "$@"`).
fn as_user_in_namespace(sb: &Sandbox, user: &TestUser, wrap: &[&str], args: &[&str]) -> Run {
    sb.run(in_namespace(sb, user, wrap, args))
}

/// The command of [`as_user_in_namespace`].
fn in_namespace(sb: &Sandbox, user: &TestUser, wrap: &[&str], args: &[&str]) -> Command {
    let mut argv = vec!["unshare", "--user", "--map-root-user"];
    argv.extend_from_slice(wrap);
    argv.push(common::user_bin(env!("CARGO_BIN_EXE_ces")));
    argv.extend_from_slice(args);
    let mut cmd = user.setpriv(sb, &argv);
    cmd.env("USER", "root").env("SUDO_UID", "0").env("SUDO_GID", "0").env("SUDO_USER", "root");
    cmd
}

/// As root: the test user, an image of its own marker pushed as `repo:1`
/// (its reference), and a sandbox the user can use.
fn pushed_for_test_user(repo: &str, marker: &str) -> (TestUser, String, Sandbox) {
    require_root("runs ces as another user");
    let user = test_user();
    let reg = registry();
    reg.push(&image(marker).build(), repo, "1");
    let reference = format!("{}/{repo}:1", reg.host());
    let sb = sandbox_for(&user, reg);
    (user, reference, sb)
}

/// In a mount namespace of its own: a tmpfs over /proc, holding a uid map
/// that says "the initial namespace".
const FORGED_PROC: &[&str] = &[
    "--mount",
    "sh",
    "-c",
    "mount -t tmpfs forged /proc && mkdir /proc/self && echo '0 0 4294967295' > /proc/self/uid_map && exec \"$0\" \"$@\"",
];

#[test]
fn in_a_user_namespace_the_audit_records_the_user_outside_it_not_sudo_variables() {
    let (user, reference, sb) = pushed_for_test_user("policy/userns", "user-namespace");
    as_user_in_namespace(&sb, &user, &[], &["pull", "--quiet", "--no-unpack", &reference]).ok();
    let record = last_record(&sb);
    assert_eq!(record["result"], "ok", "{record}");
    assert_eq!(record["user"], serde_json::json!({"name": TEST_USER, "uid": user.uid}), "not root, as SUDO_* says");

    // /proc hidden under a forged map: who it is cannot be told, and it is not root.
    as_user_in_namespace(&sb, &user, FORGED_PROC, &["pull", "--quiet", "--no-unpack", &reference]).ok();
    let record = last_record(&sb);
    assert_eq!(record["user"], serde_json::json!({"name": "unknown", "uid": 65534}), "{record}");
    sb.ces(&["audit", "verify"]).ok();
}

/// `SUDO_*` naming another user does not make the container's host user
/// (nor the user whose groups find the project) that user's.
#[test]
fn in_a_user_namespace_a_run_is_planned_for_the_user_not_sudo_variables() {
    let (user, reference, sb) = pushed_for_test_user("policy/userns-run", "user-namespace-run");
    as_user_in_namespace(&sb, &user, &[], &["pull", "--quiet", &reference]).ok();

    let mut cmd = in_namespace(&sb, &user, &[], &["run", "--dry-run", &reference, "true"]);
    cmd.env("HOME", home(&sb)).env("SUDO_UID", "4242").env("SUDO_GID", "4242").env("SUDO_USER", "someone-else");
    let plan = sb.run(cmd);
    let plan = plan.ok();
    // Its own ids in the namespace (the test user outside it), not SUDO_UID's.
    assert!(plan.contains("host user 0:0"), "{plan}");
    // (Not a bare "4242": the run id is random hex and may hold it.)
    assert!(!plan.contains("host user 4242") && !plan.contains("someone-else"), "{plan}");
}

#[test]
fn in_a_user_namespace_pull_enablement_refuses_even_listed_users() {
    let (user, reference, sb) = pushed_for_test_user("policy/userns-enabled", "user-namespace-enabled");
    sb.configure(&format!("[pull]\nallowed_users = [{TEST_USER:?}, \"root\", \"0\"]"));

    // Listed, outside a namespace: allowed.
    as_user(&sb, &user, &["pull", "--quiet", "--no-unpack", &reference]).ok();
    // Inside one, the files that name users and groups may be the user's own: refused.
    let out = as_user_in_namespace(&sb, &user, &[], &["pull", "--quiet", "--no-unpack", &reference]);
    let err = out.fails();
    assert!(err.contains(&format!("error: ces runs in a user namespace (as uid {} outside it)", user.uid)), "{err}");
    assert!(err.contains("hint: run ces outside the user namespace"), "{err}");
    let record = last_record(&sb);
    assert_eq!((&record["result"], &record["user"]["name"]), (&"refused".into(), &TEST_USER.into()), "{record}");
    let out = as_user_in_namespace(&sb, &user, FORGED_PROC, &["pull", "--quiet", "--no-unpack", &reference]);
    assert!(out.fails().contains("error: ces runs in a user namespace, where"), "{}", out.stderr);
}

/// With a system config (in /etc of a private mount namespace: an overlay,
/// whose writes land in the test's temp dir), root may use another config
/// and the test user may not, whether or not they are uid 0 in a user
/// namespace of theirs.
#[test]
fn in_a_user_namespace_a_user_config_is_still_refused() {
    require_root("runs ces as another user");
    let had_system_config = Path::new("/etc/ces").exists();
    let user = test_user();
    let (uid, gid) = (user.uid, user.gid);
    let reg = registry();
    let sb = sandbox_for(&user, reg);
    let overlay = sb.dir.path().join("etc-overlay");
    std::fs::create_dir_all(overlay.join("upper")).unwrap();
    std::fs::create_dir_all(overlay.join("work")).unwrap();
    let ces = common::user_bin(env!("CARGO_BIN_EXE_ces"));
    let as_user = format!("exec setpriv --reuid {uid} --regid {gid} --init-groups --");
    let run = |as_whom: &str| {
        // Every step must succeed before the next: nothing is written to the host's /etc.
        let script = format!(
            "set -e; mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc; \
             mkdir -p /etc/ces; printf '[registries]\\nallowed = []\\n' > /etc/ces/config.toml; \
             {as_whom} {ces} images",
            upper = overlay.join("upper").display(),
            work = overlay.join("work").display(),
        );
        sb.run(sb.command("unshare", &["--mount", "--propagation", "private", "sh", "-c", &script]))
    };
    run("exec").ok();
    let refused = "is this machine's policy: only root may use another config";
    assert!(run(&as_user).fails().contains(refused));
    let in_namespace = format!("{as_user} unshare --user --map-root-user");
    let out = run(&in_namespace);
    assert!(out.fails().contains(refused), "{}", out.stderr);
    assert_eq!(Path::new("/etc/ces").exists(), had_system_config, "the host's /etc is untouched");
}
