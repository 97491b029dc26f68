//! A small Debian 12 virtual machine with systemd and pure cgroup v2, for the
//! tests that must run on the kind of host TREs use (this project's machines
//! are hybrid cgroup v1 without systemd).
//!
//! [`Image::get`] builds the machine's disk once (mmdebstrap, then
//! `mkfs.ext4 -d`: no loop mounts) and caches it by content under
//! [`CACHE_ROOT`]`/<key>`, the key being a hash of everything that goes into
//! it (packages, recipe, the in-VM service). Builds happen in a temporary
//! directory renamed into place, under a lock, so test binaries running at
//! the same time build it once.
//!
//! [`Image::boot`] starts it with qemu (software CPU: on these machines
//! `/dev/kvm` is a PVM-only KVM that cannot boot Debian's kernel) with the
//! root disk read-only (`snapshot=on`), a payload disk made from a directory,
//! a swap disk and no network. At boot a oneshot service mounts the payload,
//! runs its `run` program as root with a results directory, writes the
//! results to the payload disk and powers off; the host reads them back with
//! `debugfs` (again no mount) into memory and removes the disks.
//!
//! What the machine has: Debian 12 (systemd 252, kernel 6.1, `/sys/fs/cgroup`
//! cgroup2 only), a user `analyst` (uid 1000, subordinate ids 100000-165535,
//! lingering so `user@1000.service` starts at boot), `machinectl` and
//! `systemd-run` for login sessions and user services, swap on, gettys masked.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Where built machine images are kept, one directory per content key.
pub const CACHE_ROOT: &str = "/var/cache/ces-test/vm";

/// The Debian mirror the machine is built from (the host's own).
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// What the host needs to build and boot the machine, and the package that has it.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("mkswap", "util-linux"),
];

/// The packages installed on top of Debian's `minbase` variant.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "linux-image-amd64",
    "initramfs-tools",
    "udev",
    "kmod",
    "dbus",
    "dbus-user-session",
    "libpam-systemd",
    "systemd-container",
    "uidmap",
    "libseccomp2",
    "procps",
    "util-linux",
    "mount",
    "e2fsprogs",
    "quota",
    "docker-registry",
];

/// Customizes the installed root (`$1`): the user, lingering, the payload
/// service, swap, no gettys.
const RECIPE: &str = r#"set -eu
R=$1
chroot "$R" useradd --create-home --uid 1000 --user-group --shell /bin/sh analyst
# Subordinate ids for rootless user namespaces (newuidmap reads these).
echo analyst:100000:65536 > "$R/etc/subuid"
echo analyst:100000:65536 > "$R/etc/subgid"
# `loginctl enable-linger analyst`: user@1000.service starts at boot.
mkdir -p "$R/var/lib/systemd/linger"
touch "$R/var/lib/systemd/linger/analyst"
echo ces-vm > "$R/etc/hostname"
printf 'LABEL=ces-root / ext4 rw 0 0\nLABEL=ces-swap none swap sw,nofail,x-systemd.device-timeout=60s 0 0\n' > "$R/etc/fstab"
for unit in getty@.service serial-getty@.service serial-getty@ttyS0.service console-getty.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    docker-registry.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$unit"
done
install -m 0755 "$PAYLOAD_RUNNER" "$R/usr/local/sbin/ces-vm-payload"
install -m 0644 "$PAYLOAD_UNIT" "$R/etc/systemd/system/ces-vm-payload.service"
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
ln -sf ../ces-vm-payload.service "$R/etc/systemd/system/multi-user.target.wants/ces-vm-payload.service"
mkdir -p "$R/payload"
"#;

/// The service that runs the payload at boot. Not ordered after
/// multi-user.target (that target orders itself after what it wants: a
/// cycle); the payload waits for what it needs itself.
const PAYLOAD_UNIT: &str = "[Unit]
Description=ces VM test payload
After=local-fs.target swap.target dbus.service systemd-logind.service systemd-user-sessions.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ces-vm-payload
StandardInput=null
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
";

/// Mounts the payload disk, runs `/payload/run RESULTS` as root, keeps its
/// log, exit status and the journal in RESULTS, and powers off.
const PAYLOAD_RUNNER: &str = r#"#!/bin/sh
set -u
echo "ces-vm: payload service started"
i=0
until [ -e /dev/disk/by-label/ces-payload ] || [ $i -ge 300 ]; do i=$((i + 1)); sleep 0.2; done
if mount /dev/disk/by-label/ces-payload /payload; then
    R=/payload/results
    mkdir -p "$R"
    chmod 0755 "$R"
    echo "ces-vm: running /payload/run"
    /payload/run "$R" > "$R/run.log" 2>&1
    echo $? > "$R/run.rc"
    echo "ces-vm: /payload/run exited with $(cat "$R/run.rc")"
    journalctl -b --no-pager -o short-monotonic > "$R/journal.txt" 2>&1
    touch "$R/.done"
    sync
    umount /payload
else
    echo "ces-vm: cannot mount the payload disk"
fi
echo "ces-vm: powering off"
systemctl poweroff --force
"#;

/// The kernel command line: pure cgroup v2, console on the serial port, and a
/// kernel panic ends qemu at once (`-no-reboot`).
const KERNEL_CMDLINE: &str =
    "root=LABEL=ces-root rw console=ttyS0 loglevel=4 panic=-1 systemd.unified_cgroup_hierarchy=1";

/// A built machine image: kernel, initrd and root disk.
#[derive(Debug)]
pub struct Image {
    /// The cache directory holding `vmlinuz`, `initrd.img` and `root.img`.
    pub dir: PathBuf,
    /// A shared lock on `<key>.lock` while in use: a build of another key
    /// removes only images no one holds.
    _lock: File,
}

/// What a boot left: the payload's results directory, read into memory
/// (path relative to it, bytes), and the serial console.
#[derive(Debug)]
pub struct Boot {
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    pub console: String,
    /// Wall time from qemu's start to its exit.
    pub elapsed: Duration,
}

impl Boot {
    /// A result file as text (lossy), if the payload wrote it.
    pub fn text(&self, path: &str) -> Option<String> {
        self.files.get(Path::new(path)).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Writes the results and the console (`console.log`) under `dir`, to
    /// look at after the test (`CES_TEST_VM_RESULTS`).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        for (path, bytes) in &self.files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(target, bytes)?;
        }
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("console.log"), &self.console)
    }

    /// The last `n` lines of the serial console and of the payload's log, to
    /// show when something failed.
    pub fn diagnostics(&self, n: usize) -> String {
        format!(
            "--- payload run.log (last {n} lines) ---\n{}\n--- serial console (last {n} lines) ---\n{}",
            last_lines(&self.text("run.log").unwrap_or_else(|| "(none)".into()), n),
            last_lines(&self.console, n)
        )
    }
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Why the host cannot run the machine, or `None` when it can: the tools
/// missing (with the packages to install) or not being root.
pub fn host_problem() -> Option<String> {
    let missing: Vec<(&str, &str)> = HOST_TOOLS.iter().copied().filter(|(tool, _)| which(tool).is_none()).collect();
    if !missing.is_empty() {
        let tools: Vec<&str> = missing.iter().map(|m| m.0).collect();
        let mut packages: Vec<&str> = missing.iter().map(|m| m.1).collect();
        packages.dedup();
        return Some(format!(
            "the systemd + cgroup v2 VM tests need {} on this host; install them with \
             `scripts/setup --tests` or `apt-get install {}`",
            tools.join(", "),
            packages.join(" ")
        ));
    }
    if !is_root() {
        return Some("the systemd + cgroup v2 VM tests build a Debian root with mmdebstrap: run them as root".into());
    }
    None
}

pub(crate) fn is_root() -> bool {
    // The test kit has no syscall crate: `id -u` is enough here.
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// `tool` by its path (root's tools live in sbin directories that a PATH
/// may lack), else by name.
pub(crate) fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| PathBuf::from(name))
}

/// The content key of the image: a hash of everything that goes into it.
pub fn key() -> String {
    let mut hash = Sha256::new();
    for part in [MIRROR, "bookworm", &PACKAGES.join(","), RECIPE, PAYLOAD_UNIT, PAYLOAD_RUNNER] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())[..16].to_owned()
}

/// Runs `cmd`, failing with its output when it fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}\n{}",
        out.status,
        last_lines(&String::from_utf8_lossy(&out.stdout), 30),
        last_lines(&String::from_utf8_lossy(&out.stderr), 30)
    ))
}

impl Image {
    /// The machine image, built now if the cache lacks it (a few minutes: it
    /// downloads Debian packages from [`MIRROR`]).
    pub fn get() -> Result<Image, String> {
        if let Some(problem) = host_problem() {
            return Err(problem);
        }
        let root = Path::new(CACHE_ROOT);
        std::fs::create_dir_all(root).map_err(|e| format!("{CACHE_ROOT}: {e}"))?;
        let key = key();
        let dir = root.join(&key);
        let lock_path = root.join(format!("{key}.lock"));
        let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
        // Another test binary may be building it: wait for it, then reuse.
        lock.lock().map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
        if !dir.join("root.img").is_file() {
            // What a killed build of this key left.
            remove_matching(root, &format!(".build-{key}-"));
            let started = Instant::now();
            eprintln!("ces-testkit vm: building the Debian 12 image {key} (once; cached in {})", dir.display());
            build(root, &key, &dir)?;
            eprintln!("ces-testkit vm: built in {:.0?}", started.elapsed());
            remove_unused_images(root, &key);
        }
        // Shared from here on (flock converts the lock in place): builds of
        // other keys see the image is in use and leave it.
        lock.lock_shared().map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
        Ok(Image { dir, _lock: lock })
    }

    /// Boots the machine with `payload` (a directory holding an executable
    /// `run`) as its payload disk, and returns what the payload wrote. qemu is
    /// killed after `timeout`; the error then carries the console.
    pub fn boot(&self, payload: &Path, timeout: Duration) -> Result<Boot, String> {
        let work = tempfile::Builder::new().prefix("ces-vm-").tempdir().map_err(|e| e.to_string())?;
        let disk = work.path().join("payload.img");
        let swap = work.path().join("swap.img");
        let console = work.path().join("console.log");
        // Room for the results (container outputs, logs, the journal).
        let size_mib = dir_size(payload) / (1 << 20) + 512;
        run(
            Command::new(tool("mkfs.ext4"))
                .args(["-q", "-F", "-L", "ces-payload", "-E", "root_owner=0:0", "-d"])
                .arg(payload)
                .arg(&disk)
                .arg(format!("{size_mib}M")),
            "mkfs.ext4 (payload disk)",
        )?;
        File::create(&swap).and_then(|f| f.set_len(1 << 30)).map_err(|e| format!("{}: {e}", swap.display()))?;
        run(Command::new(tool("mkswap")).args(["-q", "-L", "ces-swap"]).arg(&swap), "mkswap")?;

        let drive = |path: &Path, extra: &str| format!("file={},format=raw,if=virtio{extra}", path.display());
        let mut qemu = Command::new(tool("qemu-system-x86_64"));
        qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "2048", "-smp", "2"])
            .args(["-nodefaults", "-display", "none", "-no-reboot", "-nic", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(self.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(self.dir.join("initrd.img"))
            .args(["-append", KERNEL_CMDLINE])
            .arg("-drive")
            .arg(drive(&self.dir.join("root.img"), ",snapshot=on"))
            .arg("-drive")
            .arg(drive(&disk, ""))
            .arg("-drive")
            .arg(drive(&swap, ""))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = qemu.spawn().map_err(|e| format!("qemu-system-x86_64: cannot start: {e}"))?;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(status);
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let elapsed = started.elapsed();
        let mut qemu_output = String::new();
        for mut pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read>),
            child.stderr.take().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let _ = pipe.read_to_string(&mut qemu_output);
        }
        let console_text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
        let _ = std::fs::remove_file(&swap);

        let results = work.path().join("out");
        std::fs::create_dir(&results).map_err(|e| e.to_string())?;
        // debugfs reads the ext4 image as it is: no mount, no loop device.
        let dumped = run(
            Command::new(tool("debugfs")).arg("-R").arg(format!("rdump /results {}", results.display())).arg(&disk),
            "debugfs rdump (reading the results)",
        );
        let _ = std::fs::remove_file(&disk);
        let files = read_tree(&results.join("results"));
        let boot = Boot { files, console: console_text, elapsed };
        let failure = match status {
            None => Some(format!("the VM did not power off within {timeout:?}: killed")),
            Some(status) if !status.success() => Some(format!("qemu failed ({status}): {qemu_output}")),
            Some(_) if dumped.is_err() => dumped.err(),
            Some(_) if !boot.files.contains_key(Path::new(".done")) => {
                Some("the VM powered off before its payload finished".to_owned())
            }
            Some(_) => None,
        };
        match failure {
            Some(why) => Err(format!("{why}\n{}", boot.diagnostics(60))),
            None => Ok(boot),
        }
    }
}

/// Builds the image into a temporary directory beside `dir`, then renames it
/// into place.
fn build(root: &Path, key: &str, dir: &Path) -> Result<(), String> {
    let prefix = format!(".build-{key}-");
    let tmp = tempfile::Builder::new().prefix(&prefix).tempdir_in(root).map_err(|e| e.to_string())?;
    let rootfs = tmp.path().join("rootfs");
    let runner = tmp.path().join("ces-vm-payload");
    let unit = tmp.path().join("ces-vm-payload.service");
    std::fs::write(&runner, PAYLOAD_RUNNER).map_err(|e| e.to_string())?;
    std::fs::write(&unit, PAYLOAD_UNIT).map_err(|e| e.to_string())?;
    run(
        Command::new(tool("mmdebstrap"))
            .args(["--quiet", "--variant=minbase", "--aptopt=APT::Install-Recommends \"false\""])
            .args(["--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*"])
            .args(["--dpkgopt=path-exclude=/usr/share/locale/*"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("bookworm")
            .arg(&rootfs)
            .arg(MIRROR),
        "mmdebstrap",
    )?;
    run(
        Command::new("sh")
            .args(["-c", RECIPE, "sh"])
            .arg(&rootfs)
            .env("PAYLOAD_RUNNER", &runner)
            .env("PAYLOAD_UNIT", &unit),
        "customizing the VM root",
    )?;
    for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")] {
        let boot = rootfs.join("boot");
        let found = std::fs::read_dir(&boot)
            .map_err(|e| format!("{}: {e}", boot.display()))?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .ok_or_else(|| format!("no {prefix}* in the VM's /boot"))?;
        std::fs::copy(found.path(), tmp.path().join(name)).map_err(|e| e.to_string())?;
    }
    let size_mib = dir_size(&rootfs) / (1 << 20) + 1024;
    run(
        Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F", "-L", "ces-root", "-d"])
            .arg(&rootfs)
            .arg(tmp.path().join("root.img"))
            .arg(format!("{size_mib}M")),
        "mkfs.ext4 (root disk)",
    )?;
    std::fs::remove_dir_all(&rootfs).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&runner);
    let _ = std::fs::remove_file(&unit);
    let built = tmp.keep();
    std::fs::rename(&built, dir).map_err(|e| format!("rename {} to {}: {e}", built.display(), dir.display()))
}

/// Removes the entries of `root` whose names start with `prefix`.
pub(crate) fn remove_matching(root: &Path, prefix: &str) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the images of other keys (an older recipe) that no one holds, so
/// the cache keeps one image, not one per change.
pub(crate) fn remove_unused_images(root: &Path, key: &str) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(other) = name.strip_suffix(".lock") else { continue };
        if other == key {
            continue;
        }
        let Ok(lock) = File::open(entry.path()) else { continue };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(root.join(other));
            remove_matching(root, &format!(".build-{other}-"));
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The bytes of the regular files under `dir` (symbolic links not followed).
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Every regular file under `dir`, by path relative to it.
fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    if let (Ok(rel), Ok(bytes)) = (path.strip_prefix(dir), std::fs::read(&path)) {
                        files.insert(rel.to_path_buf(), bytes);
                    }
                }
                _ => {}
            }
        }
    }
    files
}
