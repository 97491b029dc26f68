//! What the `ces` integration tests share: a sandbox with its own config and
//! store, running the real binaries; a TRE world (an image pulled, a HOME and
//! project data) for runs; root and the unprivileged test user.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ces_image::rootfs::{Layers, Rootfs};
use ces_testkit::registry::Registry;
use ces_testkit::{AuthMode, ImageSpec, busybox_image};

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
    /// What a finished child printed and how it ended.
    pub fn from(output: Output) -> Run {
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
                // Root's podman runs for itself are allowed (the tests of that
                // backend as root); the refusal is tested on its own.
                "[registries]\nallowed = [{}]\ninsecure = [{}]\n\n[podman]\nallow_host_root = true\n\n[storage]\nroot = {:?}\n",
                quote(allowed),
                quote(insecure),
                store.display().to_string()
            ),
        )
        .unwrap();
        Sandbox { dir, config, store }
    }

    /// `ces ARGS` (or another of the binaries), with a clean environment: no
    /// `SUDO_*` either (the suite may run under sudo; a test that means sudo
    /// sets them).
    pub fn command(&self, bin: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("CES_REGISTRY_TOKEN")
            .env_remove("CES_REGISTRY_USER")
            .env_remove("RUST_LOG")
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .env_remove("SUDO_USER")
            .env("CES_CONFIG", &self.config)
            .stdin(Stdio::null());
        cmd
    }

    /// Appends TOML to the config.
    pub fn configure(&self, toml: &str) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(&format!("\n{toml}\n"));
        std::fs::write(&self.config, config).unwrap();
    }

    /// The audit log's records, parsed.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        let path = self.store.join("audit.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
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

    /// The unpacked root filesystem of a manifest digest, as the store keeps
    /// it: its assembled tree, or its layers (read as a run would see them
    /// merged).
    pub fn rootfs(&self, digest: &str) -> ImageRoot {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let tree = self.store.join("rootfs").join(hex);
        if tree.is_dir() {
            return ImageRoot(Some(Rootfs::Tree(tree)));
        }
        let Ok(list) = std::fs::read(self.store.join("layered").join(hex)) else { return ImageRoot(None) };
        let diff_ids: Vec<String> = serde_json::from_slice(&list).unwrap();
        let dirs: Vec<PathBuf> =
            diff_ids.iter().map(|d| self.store.join("layers").join(d.strip_prefix("sha256:").unwrap())).collect();
        ImageRoot(Some(Rootfs::Layers(Layers { mount: dirs.clone(), dirs, trusted: false })))
    }

    /// The store's assembled tree of a manifest digest (`rootfs/<hex>`).
    pub fn tree(&self, digest: &str) -> PathBuf {
        self.store.join("rootfs").join(digest.strip_prefix("sha256:").unwrap())
    }
}

/// An image's root filesystem in the store (see [`Sandbox::rootfs`]).
#[derive(Debug)]
pub struct ImageRoot(pub Option<Rootfs>);

impl ImageRoot {
    /// Whether the image is unpacked.
    pub fn exists(&self) -> bool {
        self.0.is_some()
    }

    /// Where what the image has at `path` is on the host (symbolic links on
    /// the way resolved inside the image, the last component not followed,
    /// as `lstat` does), or a path that does not exist.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref().to_str().unwrap();
        let found = self.0.as_ref().and_then(|rootfs| rootfs.resolve_nofollow(path));
        found.map_or_else(|| PathBuf::from("/nonexistent/in/the/image").join(path), |(host, _)| host)
    }

    /// A directory podman can take as `--rootfs` (the tree, or the top
    /// layer of a one-layer image).
    pub fn dir(&self) -> &Path {
        self.0.as_ref().expect("unpacked").root_dir()
    }

    /// Whether the image is kept as its layers.
    pub fn is_layered(&self) -> bool {
        matches!(self.0, Some(Rootfs::Layers(_)))
    }
}

/// Every regular file under `dir`, recursively (links not followed), with
/// its metadata.
pub fn regular_files(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                out.push((entry.path(), meta));
            }
        }
    }
    out
}

/// Every path under `dir`, `dir` included (links not followed).
pub fn all_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths = vec![dir.to_owned()];
    let mut at = 0;
    while at < paths.len() {
        let path = paths[at].clone();
        at += 1;
        if path.symlink_metadata().unwrap().is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    paths
}

/// Every file under `dir`, recursively, as bytes (to look for leaked secrets).
pub fn all_file_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    regular_files(dir)
        .into_iter()
        .map(|(path, _)| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

/// Tests that run containers, mount, or switch users need root: part of the
/// test environment (scripts/setup, CI runs as root), so a test fails loudly
/// rather than passing unrun. `why` finishes "this test ...".
#[track_caller]
pub fn require_root(why: &str) {
    assert!(rustix::process::geteuid().is_root(), "this test {why}: run the suite as root (CI does)");
}

/// The name of this process's primary group: the project ces finds by group.
pub fn primary_group() -> String {
    let out = Command::new("id").arg("-gn").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The unprivileged account the rootless and policy tests run ces as.
pub use ces_testkit::TEST_USER;

/// `bin`, a built binary (`env!("CARGO_BIN_EXE_...")`), where the test user
/// (or any user) can run it: a root-owned copy in `/tmp` (see
/// [`ces_testkit::exe`]), since the checkout's `target/` may be out of their
/// reach (under `/root`, mode 0700). Every command that runs a built binary as
/// another user takes it from here.
pub fn user_bin(bin: &str) -> &'static str {
    let copy = ces_testkit::exe::for_all_users(bin);
    // Once per binary and process (the kit caches it): the leak is bounded.
    Box::leak(copy.to_str().unwrap().to_owned().into_boxed_str())
}

/// [`TEST_USER`]'s ids and primary group.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    pub group: String,
}

/// [`TEST_USER`], made if missing (needs root: [`ces_testkit::test_user`]).
pub fn test_user() -> TestUser {
    let (uid, gid) = ces_testkit::test_user();
    let out = Command::new("id").args(["-gn", TEST_USER]).output().unwrap();
    assert!(out.status.success(), "id -gn {TEST_USER}: {}", String::from_utf8_lossy(&out.stderr));
    TestUser { uid, gid, group: String::from_utf8(out.stdout).unwrap().trim().to_owned() }
}

impl TestUser {
    /// `setpriv` to the user's uid, gid and groups, then `argv`, in the
    /// sandbox's clean environment with `USER` set. A built binary in `argv`
    /// comes from [`user_bin`]. The working directory is `/`: the test's own
    /// (the checkout) may be out of the user's reach, and the runtime returns
    /// to it while it creates a container.
    pub fn setpriv(&self, sb: &Sandbox, argv: &[&str]) -> Command {
        let (uid, gid) = (self.uid.to_string(), self.gid.to_string());
        let mut full = vec!["--reuid", &uid, "--regid", &gid, "--init-groups", "--"];
        full.extend_from_slice(argv);
        let mut cmd = sb.command("setpriv", &full);
        cmd.env("USER", TEST_USER).current_dir("/");
        cmd
    }

    /// `cmd` (a ces command of `sb`) as sudo runs it for this user (see
    /// [`Sandbox::as_sudo`]).
    pub fn sudo(&self, sb: &Sandbox, cmd: Command) -> Command {
        sb.as_sudo(cmd, self.uid, self.gid, TEST_USER)
    }

    /// Gives `path` (not what is under it) to the user.
    pub fn chown(&self, path: &Path) {
        let (uid, gid) = (rustix::fs::Uid::from_raw(self.uid), rustix::fs::Gid::from_raw(self.gid));
        rustix::fs::chownat(rustix::fs::CWD, path, Some(uid), Some(gid), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// A sandbox with an image pulled from the shared anonymous registry, a HOME,
/// and a TRE data root holding a directory for the user's primary group.
pub struct TreWorld {
    pub sb: Sandbox,
    /// The pulled image's reference.
    pub image: String,
    pub digest: String,
    pub home: PathBuf,
    pub data_root: PathBuf,
    /// `data_root/<primary group>`: what ces mounts on /safe_data.
    pub project_dir: PathBuf,
}

impl TreWorld {
    /// The busybox image, pushed as `repo:1`.
    pub fn new(repo: &str) -> TreWorld {
        TreWorld::with(repo, &busybox_image(), "")
    }

    /// `image`, pushed as `repo:1`; `tre` is more TOML for the `[tre]` table.
    pub fn with(repo: &str, image: &ImageSpec, tre: &str) -> TreWorld {
        let reg = Registry::shared(AuthMode::Anonymous);
        let digest = reg.push(&image.build(), repo, "1");
        let sb = Sandbox::new(&[reg]);
        let home = sb.dir.path().join("home");
        let data_root = sb.dir.path().join("data");
        let project_dir = data_root.join(primary_group());
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&project_dir).unwrap();
        sb.configure(&format!("[tre]\nsafe_data_root = {:?}\n{tre}", data_root.display().to_string()));
        let image = format!("{}/{repo}:1", reg.host());
        sb.ces(&["pull", "--quiet", &image]).ok();
        TreWorld { sb, image, digest, home, data_root, project_dir }
    }

    /// `bin ARGS` with the world's HOME.
    pub fn command(&self, bin: &str, args: &[&str]) -> Command {
        let mut cmd = self.sb.command(bin, args);
        cmd.env("HOME", &self.home);
        cmd
    }

    /// Runs `ces ARGS` with the world's HOME.
    pub fn ces(&self, args: &[&str]) -> Run {
        self.sb.run(self.command(env!("CARGO_BIN_EXE_ces"), args))
    }

    /// Readies the world for a run as root on behalf of another user (sudo):
    /// HOME and the data reachable by them, as in a real TRE, and the project
    /// named in the config (their groups cannot find it).
    pub fn for_another_user(&self) {
        for dir in [self.sb.dir.path(), &self.home, &self.data_root, &self.project_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = std::fs::read_to_string(&self.sb.config).unwrap();
        // Under sudo, ces takes the user's home from the user database (not
        // `$HOME`): the operator names where runs go.
        let home = self.home.display().to_string();
        let tre =
            format!("[tre]\nproject = {:?}\noutputs_parent = {home:?}\nscratch_parent = {home:?}\n", primary_group());
        let config = config.replace("[tre]\n", &tre);
        std::fs::write(&self.sb.config, config).unwrap();
    }
}

impl Sandbox {
    /// `cmd` (a ces command of this sandbox) as `sudo` runs it for the user
    /// `uid`/`gid` called `name`: as root with `SUDO_*` set and no
    /// `CES_CONFIG`, on a host whose system config is this sandbox's (under
    /// sudo ces reads no other). That host is a mount namespace of its own
    /// where `/etc` is a read-only overlay holding `ces/config.toml`: the
    /// real `/etc` is not touched.
    pub fn as_sudo(&self, cmd: Command, uid: u32, gid: u32, name: &str) -> Command {
        let etc = self.dir.path().join("sudo-etc");
        std::fs::create_dir_all(etc.join("ces")).unwrap();
        std::fs::copy(&self.config, etc.join("ces/config.toml")).unwrap();
        let script = "mount -t overlay ces-sudo-test -o lowerdir=\"$1\":/etc /etc && shift && exec \"$@\"";
        let mut sudo = Command::new("unshare");
        sudo.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"]).arg(&etc);
        sudo.arg(cmd.get_program()).args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => sudo.env(key, value),
                None => sudo.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            sudo.current_dir(dir);
        }
        sudo.env_remove("CES_CONFIG")
            .env("SUDO_UID", uid.to_string())
            .env("SUDO_GID", gid.to_string())
            .env("SUDO_USER", name)
            .stdin(Stdio::null());
        sudo
    }
}

/// A sandbox for the test user, rootless: the busybox image pushed as
/// `repo:1` and pulled by the user into a store of theirs, and a HOME (with
/// `safe_data`) of theirs. No `ces system setup`: a test that runs with
/// limits asks for it.
pub struct RootlessWorld {
    pub sb: Sandbox,
    /// The pulled image's reference.
    pub image: String,
    pub home: PathBuf,
    pub user: TestUser,
}

impl RootlessWorld {
    pub fn new(repo: &str) -> RootlessWorld {
        require_root("creates the unprivileged test user");
        let user = test_user();
        let reg = Registry::shared(AuthMode::Anonymous);
        reg.push(&busybox_image().build(), repo, "1");
        let image = format!("{}/{repo}:1", reg.host());
        let sb = Sandbox::new(&[reg]);
        let home = sb.dir.path().join("home");
        std::fs::create_dir_all(home.join("safe_data")).unwrap();
        std::fs::create_dir_all(&sb.store).unwrap();
        std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for dir in [&home, &home.join("safe_data"), &sb.store] {
            user.chown(dir);
        }
        let w = RootlessWorld { sb, image, home, user };
        w.ces(&["pull", "--quiet", &w.image]).ok();
        w
    }

    /// `ces ARGS` as the user, with the world's HOME.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut argv = vec![user_bin(env!("CARGO_BIN_EXE_ces"))];
        argv.extend_from_slice(args);
        let mut cmd = self.user.setpriv(&self.sb, &argv);
        cmd.env("HOME", &self.home);
        cmd
    }

    /// Runs `ces ARGS` as the user.
    pub fn ces(&self, args: &[&str]) -> Run {
        self.sb.run(self.command(args))
    }
}

/// Who runs ces in a test that runs containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Root,
    /// Root with `SUDO_UID`/`SUDO_GID`/`SUDO_USER` of the test user.
    Sudo,
    /// The test user, after `ces system setup`.
    Rootless,
}

impl Mode {
    /// `area/test-mode`: an image repository of its own per test and mode.
    pub fn repo(self, area: &str, test: &str) -> String {
        format!("{area}/{test}-{}", format!("{self:?}").to_lowercase())
    }
}

/// An image pulled, a HOME, and how to run ces in `mode`: a [`TreWorld`]
/// (readied for the test user under sudo) or a [`RootlessWorld`].
pub struct World {
    pub sb: Sandbox,
    /// The pulled image's reference.
    pub image: String,
    pub home: PathBuf,
    pub mode: Mode,
    pub user: TestUser,
}

impl World {
    pub fn new(repo: &str, mode: Mode) -> World {
        if mode == Mode::Rootless {
            let RootlessWorld { sb, image, home, user } = RootlessWorld::new(repo);
            sb.ces(&["system", "setup", "--user", TEST_USER]).ok();
            return World { sb, image, home, mode, user };
        }
        require_root("runs containers and switches users");
        let w = TreWorld::new(repo);
        if mode == Mode::Sudo {
            w.for_another_user();
        }
        let TreWorld { sb, image, home, .. } = w;
        World { sb, image, home, mode, user: test_user() }
    }

    /// The host user the runs are for.
    pub fn uid(&self) -> u32 {
        if self.mode == Mode::Root { 0 } else { self.user.uid }
    }

    /// `ces ARGS` as this world's mode runs it, from HOME; stdin is /dev/null.
    pub fn command(&self, args: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_ces");
        let mut cmd = match self.mode {
            Mode::Root | Mode::Sudo => self.sb.command(bin, args),
            Mode::Rootless => {
                let mut argv = vec![user_bin(bin)];
                argv.extend_from_slice(args);
                self.user.setpriv(&self.sb, &argv)
            }
        };
        cmd.env("HOME", &self.home).current_dir(&self.home);
        match self.mode {
            Mode::Sudo => self.user.sudo(&self.sb, cmd),
            Mode::Root | Mode::Rootless => cmd,
        }
    }

    /// Runs `ces ARGS` as this world's mode runs it.
    pub fn ces(&self, args: &[&str]) -> Run {
        self.sb.run(self.command(args))
    }

    /// `ces run -q OPTIONS IMAGE ARGS`.
    pub fn run_with(&self, options: &[&str], args: &[&str]) -> Command {
        let mut full = vec!["run", "-q"];
        full.extend_from_slice(options);
        full.push(&self.image);
        full.extend_from_slice(args);
        self.command(&full)
    }

    /// The `outputs_*` directories in HOME.
    pub fn outputs_dirs(&self) -> Vec<PathBuf> {
        self.entries("outputs_").into_iter().map(|name| self.home.join(name)).collect()
    }

    /// The one `outputs_*` directory in HOME.
    #[track_caller]
    pub fn outputs(&self) -> PathBuf {
        let found = self.outputs_dirs();
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap()
    }

    /// The `scratch_*` directories left in HOME.
    pub fn scratch_left(&self) -> Vec<String> {
        self.entries("scratch_")
    }

    fn entries(&self, prefix: &str) -> Vec<String> {
        std::fs::read_dir(&self.home)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }
}

/// A loopback port free now (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// The host's own non-loopback address (the one its default route uses),
/// if it has one: no packet is sent to find it.
pub fn host_address() -> Option<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((std::net::Ipv4Addr::new(1, 1, 1, 1), 53)).ok()?;
    match socket.local_addr().ok()? {
        std::net::SocketAddr::V4(a) if !a.ip().is_loopback() => Some(*a.ip()),
        _ => None,
    }
}

/// A listener on every address of the host that counts the connections it
/// gets: a container must never reach it.
pub struct Bait {
    pub port: u16,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Bait {
    pub fn new() -> Bait {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        Bait { port, hits }
    }

    /// What a workload tries to reach: `outside` (an internet address), the
    /// listener on the host's loopback and through the host's own address.
    pub fn targets(&self, outside: (&str, u16)) -> Vec<(String, u16)> {
        let mut targets = vec![(outside.0.to_owned(), outside.1), ("127.0.0.1".to_owned(), self.port)];
        if let Some(host) = host_address() {
            targets.push((host.to_string(), self.port));
        }
        targets
    }

    /// How many connections reached the listener.
    pub fn hit_count(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}
