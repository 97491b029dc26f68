//! The podman backend: the same [`RunSpec`] rendered as one `podman run`
//! command line by a pure function ([`podman_args`]), then run with podman's
//! stdio inherited.
//!
//! What this host needs (see docs/facts.md): `--runtime runc` (crun refuses hybrid
//! cgroups) and `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024` (rlimits
//! cannot be raised here).
//!
//! The user mapping: the container's user is mapped to the invoking user, so
//! that what it writes to `/safe_outputs` is theirs; nothing else of the host
//! is mapped. When ces runs as root, the cached rootfs belongs to host root
//! (unpacked with the image's owners), which the container's root may not
//! write; runc, as the container's root, must still create its mount points
//! (`/etc/hostname`, `/run/.containerenv`, `/safe_data`...). So ces mounts the
//! per-run copy-on-write overlay itself (lower: the cached rootfs; upper and
//! work: in the run's state directory, the upper's `/`, `/etc` and `/run`
//! owned by the container's root) and hands podman the merged directory.
//! The overlay is in the host's mount table, so it is kept out of other
//! users' reach as the native runtime's is by a mount namespace: upper and
//! work in a directory of root's alone (`overlay/`, `0700`), the merged tree
//! mounted `nosuid,nodev` in a directory of root's (`rootfs/`, `0700`) that
//! a POSIX ACL lets the container's root enter, and no one else (runc, as
//! that root in the container's user namespace, must reach the tree). The
//! directory stays root's: its owner could remove the mount point from a
//! mount namespace the mount is not in, and put a link there instead.
//! Rootless, the rootfs belongs to the user already and podman's own overlay
//! (`--rootfs PATH:O`) is used.
//!
//! Environment values never appear on podman's command line (where `ps`
//! would show them), nor in podman's own environment (where `LD_PRELOAD` or
//! `CONTAINERS_CONF` would change what podman, as root, does): they are
//! written to `<state_dir>/podman.env` (mode 0600, removed after the run) and
//! handed over with `--env-file`. podman reads that file line by line, so a
//! value cannot hold a newline: [`Runtime::check`] refuses it (and anything
//! else podman cannot express) before the run's directories exist.
//!
//! The sandbox is the native runtime's: its seccomp profile (no `unshare`,
//! `keyctl`, vsock or 32-bit entry points), rendered to podman's JSON format
//! in `<state_dir>/seccomp.json`. Rootless podman cannot enforce limits on
//! cgroup v1 (it warns and runs without them): refused.
//!
//! The container lives no longer than ces: podman runs it without `--rm`,
//! and ces removes it (`podman rm`) after reading how it ended. A watchdog
//! process, in a session of its own, waits on a pipe only ces holds and
//! removes the container if ces dies first (`kill -9`); the container's name
//! is kept in `<state_dir>/podman.container`, so that the next ces start
//! ([`cleanup_stale`]) removes it too, before the run's scratch directory.
//!
//! podman (and conmon) run with the state directory as their working
//! directory: conmon writes an `oom` file there when the kernel kills a
//! process of the container for memory, which is how an out-of-memory kill
//! is told from a plain `SIGKILL` (podman 4.3's `OOMKilled` misses it on
//! cgroup v1), and which must not land in the user's directory.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxSeccomp;

use crate::native::cgroups::Hierarchy;
use crate::spec::{Access, MountKind, RunSpec};
use crate::{Exit, Runtime, RuntimeError};

/// The host uid (and gid) the container's root is mapped to, as root, when the
/// container runs as another user: the overflow user, which owns nothing.
const NOBODY: u32 = 65534;
/// `si_code` of a signal the kernel sent (a terminal's ^C): the terminal sent
/// it to podman too, as it is in the same foreground process group.
const SI_KERNEL: i32 = 0x80;
/// What podman exits with when podman itself failed.
const PODMAN_FAILED: i32 = 125;
/// The environment file, in the run's state directory.
pub const ENV_FILE: &str = "podman.env";
/// The longest line podman's env-file reader takes (Go's bufio.Scanner: 64 KiB).
const MAX_ENV_LINE: usize = 64 * 1024 - 1;
/// ces's seccomp profile in podman's format, in the run's state directory.
pub const SECCOMP_FILE: &str = "seccomp.json";
/// The container's name, in the run's state directory, for [`cleanup_stale`].
pub const CONTAINER_FILE: &str = "podman.container";
/// What conmon writes in its working directory after an OOM kill.
const CONMON_OOM_FILE: &str = "oom";
/// `128 + SIGKILL`: how a container killed for memory exits.
const KILLED: i32 = 137;

/// How ces relates to podman.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ces (and so podman) runs as root: ces mounts the overlay and maps the
    /// container's user to the invoking user's host ids.
    Rootful,
    /// ces runs as an ordinary user: rootless podman, whose user namespace has
    /// the user as its id 0 (and the user's subordinate ids from 1).
    Rootless,
}

impl Mode {
    /// Rootful as root, else rootless.
    pub fn current() -> Mode {
        if nix::unistd::geteuid().is_root() { Mode::Rootful } else { Mode::Rootless }
    }
}

/// Where podman looks for its init (`--init`) unless configured otherwise.
pub const CATATONIT: &str = "/usr/libexec/podman/catatonit";

/// Runs containers with `podman run`.
#[derive(Debug, Clone)]
pub struct PodmanRuntime {
    /// The podman program.
    pub program: PathBuf,
    /// Rootful or rootless.
    pub mode: Mode,
    /// Run the command under podman's init (`--init`: catatonit reaps
    /// zombies and passes signals on), so that it is not PID 1.
    pub init: bool,
    /// Rootful, for root itself (the identity is uid 0): run anyway, the
    /// container's root being host root (podman's mapping: ces's block of
    /// unprivileged ids needs idmapped mounts that podman with runc cannot
    /// make here). Off: refused, with a hint.
    pub allow_host_root: bool,
}

impl Default for PodmanRuntime {
    /// podman from `PATH`; rootful as root; with `--init` when podman's init
    /// (Debian's `catatonit` package) is installed.
    fn default() -> Self {
        let mode = Mode::current();
        let init = Path::new(CATATONIT).exists();
        if !init {
            tracing::warn!("{CATATONIT} is missing (package catatonit): the container's command runs as PID 1");
        }
        PodmanRuntime { program: podman_program(), mode, init, allow_host_root: false }
    }
}

/// The per-run overlay ces mounts (rootful mode), in the run's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The cached rootfs or the image's layers (read-only lower layers), top
    /// first.
    pub lower: Vec<PathBuf>,
    /// Whether the layers mark opaque directories with `user.overlay.*`
    /// attributes only (`userxattr`).
    pub user_xattrs: bool,
    /// Where the run's writes go.
    pub upper: PathBuf,
    /// overlayfs' work directory.
    pub work: PathBuf,
    /// The merged tree podman gets as `--rootfs`.
    pub merged: PathBuf,
    /// Whether the upper layer is never synced (`volatile`: thrown away at
    /// the run's end; see [`ces_image::rootfs::overlay_volatile`]).
    pub volatile: bool,
}

impl Overlay {
    /// The overlay of `spec` (paths only; nothing is created).
    pub fn of(spec: &RunSpec) -> Overlay {
        Overlay {
            lower: spec.image.rootfs.lower_dirs(),
            user_xattrs: spec.image.rootfs.needs_user_xattrs(),
            upper: spec.state_dir.join(OVERLAY_DIR).join("upper"),
            work: spec.state_dir.join(OVERLAY_DIR).join("work"),
            merged: spec.state_dir.join(MERGED),
            volatile: ces_image::rootfs::overlay_volatile(),
        }
    }

    /// The overlayfs mount options.
    pub fn options(&self) -> Result<String, RuntimeError> {
        for path in self.lower.iter().chain([&self.upper, &self.work]) {
            // The option string separates with `,` and `:`; `\` escapes.
            if path.to_str().is_none_or(|p| p.contains([',', ':', '\\'])) {
                return Err(RuntimeError::Unsupported { backend: "podman", what: "a store path with , : or \\ in it" });
            }
        }
        let lower: Vec<String> = self.lower.iter().map(|l| l.display().to_string()).collect();
        // `userxattr` first: the kernel would cut mount data longer than a
        // page at its end (refused below).
        let options = format!(
            "{}{}lowerdir={},upperdir={},workdir={}",
            if self.user_xattrs { "userxattr," } else { "" },
            if self.volatile { "volatile," } else { "" },
            lower.join(":"),
            self.upper.display(),
            self.work.display(),
        );
        if options.len() > ces_image::rootfs::MOUNT_DATA_MAX {
            return Err(RuntimeError::Unsupported {
                backend: "podman",
                what: "an overlay of this many layers at these paths",
            });
        }
        Ok(options)
    }
}

/// The empty OCI hooks directory podman is given, in the state directory.
const HOOKS_DIR: &str = "hooks.d";

/// Where podman reads CDI specs.
const PODMAN_CDI_DIRS: [&str; 3] = ["/etc/cdi", "/var/run/cdi", "/run/cdi"];

/// What the podman backend refuses: `-p` and `--publish-socket` (see [`podman_args`]).
pub const PORTS: &str = "publishing ports (-p, --publish-socket)";

/// `podman run`'s arguments (after the program name) for `spec`: a pure
/// function of the plan and the runtime's settings.
pub fn podman_args(spec: &RunSpec, runtime: &PodmanRuntime) -> Result<Vec<String>, RuntimeError> {
    // podman publishes a port only into a network (slirp4netns, pasta, a
    // bridge) that also routes the container's own connections out, and
    // `--network none` turns publishing off: refused, not weakened.
    if !spec.ports.is_empty() {
        return Err(RuntimeError::Unsupported { backend: "podman", what: PORTS });
    }
    let mode = runtime.mode;
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    // No `--rm`: ces reads how the container ended, then removes it.
    push(&["run", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
    push(&["--network", "none", "--security-opt", "no-new-privileges"]);
    push(&["--security-opt", &format!("seccomp={}", utf8(&spec.state_dir.join(SECCOMP_FILE))?)]);
    push(&["--cap-drop", "ALL"]);
    push(&["--cap-add", &crate::plan::CAPABILITIES.join(",")]);
    // The container's output is the user's (maybe sensitive): not to the journal.
    push(&["--log-driver", "none"]);
    if runtime.init {
        push(&["--init"]);
    }
    let memory = format!("{}b", spec.limits.memory);
    push(&["--memory", &memory, "--memory-swap", &memory]);
    if let Some(cpus) = spec.limits.cpus {
        push(&["--cpus", &format!("{cpus}")]);
    }
    if let Some(pids) = spec.limits.pids {
        push(&["--pids-limit", &pids.to_string()]);
    }
    push(&["--shm-size", &format!("{}b", spec.limits.shm_size)]);
    // CDI devices by name: podman reads their specs itself (from /etc/cdi
    // and /var/run/cdi), after ces checked them and the policy.
    for device in &spec.devices.requested {
        if !PODMAN_CDI_DIRS.iter().any(|dir| device.spec.starts_with(dir)) {
            return Err(RuntimeError::Unsupported {
                backend: "podman",
                what: "a device whose CDI spec is not in /etc/cdi or /var/run/cdi (the only places podman reads)",
            });
        }
        push(&["--device", &device.name]);
    }
    for mount in &spec.mounts {
        if mount.destination.contains([',', '\n']) {
            return Err(RuntimeError::Unsupported { backend: "podman", what: "a mount destination with , in it" });
        }
        let value = match &mount.kind {
            MountKind::Bind { source } => {
                let source = source.to_str().filter(|s| !s.contains([',', '\n'])).ok_or(RuntimeError::Unsupported {
                    backend: "podman",
                    what: "a host path with , in it, or not UTF-8",
                })?;
                let access = match mount.access {
                    Access::Ro => "ro",
                    Access::Rw => "rw",
                };
                format!("type=bind,src={source},dst={},{access}", mount.destination)
            }
            MountKind::Tmpfs { size } => {
                let size = size.map(|s| format!(",tmpfs-size={s}")).unwrap_or_default();
                format!("type=tmpfs,dst={}{size}", mount.destination)
            }
        };
        push(&["--mount", &value]);
    }
    if !spec.process.env.is_empty() {
        push(&["--env-file", utf8(&spec.state_dir.join(ENV_FILE))?]);
    }
    push(&["--workdir", &spec.process.cwd]);
    let user = spec.process.user;
    push(&["--user", &format!("{}:{}", user.uid, user.gid)]);
    args.extend(id_maps("--uidmap", user.uid, spec.identity.host_uid, mode)?);
    args.extend(id_maps("--gidmap", user.gid, spec.identity.host_gid, mode)?);
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    push(&["--name", &container_name(spec), "--label", &format!("io.ces.run-id={}", spec.id)]);
    if let Some(name) = &spec.name {
        push(&["--label", &format!("io.ces.name={name}")]);
    }
    if spec.process.interactive {
        push(&["--interactive"]);
    }
    if spec.process.terminal {
        push(&["--tty"]);
    }
    // With --rootfs, the first positional is the root filesystem and podman
    // stops reading options there: the command follows as is.
    let rootfs = match mode {
        Mode::Rootful => Overlay::of(spec).merged.display().to_string(),
        Mode::Rootless => match spec.image.rootfs.tree() {
            Some(tree) => format!("{}:O", tree.display()),
            None => {
                let what = "an image kept as its layers, rootless (ces assembles its tree first)";
                return Err(RuntimeError::Unsupported { backend: "podman", what });
            }
        },
    };
    push(&["--rootfs", &rootfs]);
    args.extend(spec.process.args.iter().cloned());
    Ok(args)
}

/// The container's name: `ces-<run id>`.
pub fn container_name(spec: &RunSpec) -> String {
    format!("ces-{}", spec.id)
}

/// A path podman is handed as text: it must be UTF-8 to arrive unchanged.
fn utf8(path: &Path) -> Result<&str, RuntimeError> {
    path.to_str()
        .ok_or(RuntimeError::Unsupported { backend: "podman", what: "a state directory path that is not UTF-8" })
}

/// Rootless podman on cgroup v1 (legacy or hybrid) cannot create cgroups,
/// so it drops `--memory`, `--cpus` and `--pids-limit` with a warning and
/// runs the container without them: refused instead, as the native runtime
/// refuses a run whose limits it cannot enforce.
fn check_rootless_limits(hierarchy: &Hierarchy) -> Result<(), RuntimeError> {
    match hierarchy {
        Hierarchy::V2 { .. } => Ok(()),
        Hierarchy::V1 { .. } => Err(RuntimeError::Limit {
            limit: "memory",
            reason: format!(
                "rootless podman ignores memory and CPU limits on {}; use the native runtime \
                 (`--runtime native`, after root runs `ces system setup --user <you>` once), \
                 or podman on a host with cgroup v2",
                hierarchy.describe()
            ),
        }),
    }
}

/// ces's seccomp profile (the native runtime's, the same rules) as the JSON
/// file podman reads with `--security-opt seccomp=FILE` (docker's format).
pub fn seccomp_profile() -> Result<String, RuntimeError> {
    seccomp_profile_for(crate::native::seccomp::SetIdModes::Allowed)
}

/// [`seccomp_profile`], with setuid and setgid modes allowed or refused.
fn seccomp_profile_for(set_id: crate::native::seccomp::SetIdModes) -> Result<String, RuntimeError> {
    let profile = crate::native::seccomp::profile(set_id)
        .map_err(|e| RuntimeError::Start { stage: "building the seccomp profile", source: Box::new(e) })?;
    render_seccomp(&profile)
}

/// Root for itself (allowed by the operator): the container's root is host
/// root and its binds are not idmapped, so, as in the native root mode, no
/// file may get a setuid or setgid bit.
fn set_id_modes(mode: Mode, spec: &RunSpec) -> crate::native::seccomp::SetIdModes {
    if mode == Mode::Rootful && spec.identity.host_uid == 0 {
        crate::native::seccomp::SetIdModes::Refused
    } else {
        crate::native::seccomp::SetIdModes::Allowed
    }
}

/// An OCI seccomp profile in podman's format. The two agree field by field
/// but one: `SCMP_CMP_MASKED_EQ` takes the mask in `value` and the datum in
/// `valueTwo` for runc (libseccomp's order, as in docker's profile), where
/// the native profile is written for libcontainer, which reads them the other
/// way round. Architectures not listed are denied by libseccomp's bad-arch
/// action (runc: the thread is killed).
fn render_seccomp(profile: &LinuxSeccomp) -> Result<String, RuntimeError> {
    let invalid =
        |e: serde_json::Error| RuntimeError::Start { stage: "writing the seccomp profile", source: Box::new(e) };
    let mut value = serde_json::to_value(profile).map_err(invalid)?;
    let rules = value.get_mut("syscalls").and_then(|s| s.as_array_mut()).into_iter().flatten();
    for arg in rules.filter_map(|r| r.get_mut("args")).filter_map(|a| a.as_array_mut()).flatten() {
        if arg.get("op").and_then(|op| op.as_str()) == Some("SCMP_CMP_MASKED_EQ") {
            let datum = arg.get("value").cloned().unwrap_or(serde_json::Value::from(0));
            let mask = arg.get("valueTwo").cloned().unwrap_or(serde_json::Value::from(0));
            arg["value"] = mask;
            arg["valueTwo"] = datum;
        }
    }
    serde_json::to_string_pretty(&value).map_err(invalid)
}

/// The env file's text: `NAME=value` lines, taken literally by podman.
pub fn env_file_contents(spec: &RunSpec) -> Result<String, RuntimeError> {
    let mut text = String::new();
    for var in &spec.process.env {
        let line = var.to_env_string();
        if var.value().contains('\n') || var.value().ends_with('\r') || line.len() > MAX_ENV_LINE {
            return Err(RuntimeError::Unsupported {
                backend: "podman",
                what: "an environment value with a line break, or longer than 64 KiB",
            });
        }
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

/// Maps the container's id to the invoking user's. The container's root must
/// be mapped too (runc sets the container up as it): to the same id when it is
/// the container's user, else to an id that owns nothing.
fn id_maps(flag: &str, container: u32, host: u32, mode: Mode) -> Result<Vec<String>, RuntimeError> {
    let (host, spare) = match mode {
        Mode::Rootful => (host, NOBODY),
        // Rootless podman's namespace: 0 is the user, 1.. its subordinate ids.
        Mode::Rootless => (0, 1),
    };
    if container == 0 {
        return Ok(vec![flag.to_owned(), format!("0:{host}:1")]);
    }
    if host == spare {
        return Err(RuntimeError::Unsupported {
            backend: "podman",
            what: "running a non-root image user as the host's overflow user (65534)",
        });
    }
    Ok(vec![flag.to_owned(), format!("0:{spare}:1"), flag.to_owned(), format!("{container}:{host}:1")])
}

/// Quotes `word` for a POSIX shell (only when it needs it).
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl PodmanRuntime {
    fn command_line(&self, spec: &RunSpec) -> Result<Vec<String>, RuntimeError> {
        // No OCI hooks but the devices' own: an empty hooks directory in
        // place of the system's (where NVIDIA's legacy hook would give any
        // container whose image says NVIDIA_VISIBLE_DEVICES=all every GPU).
        let hooks = utf8(&spec.state_dir.join(HOOKS_DIR))?.to_owned();
        let mut line = vec![self.program.display().to_string(), "--hooks-dir".to_owned(), hooks];
        line.extend(podman_args(spec, self)?);
        Ok(line)
    }
}

impl Runtime for PodmanRuntime {
    fn name(&self) -> &'static str {
        "podman"
    }

    fn describe(&self, spec: &RunSpec) -> Result<Vec<String>, RuntimeError> {
        let mut lines = Vec::new();
        if self.mode == Mode::Rootful {
            let overlay = Overlay::of(spec);
            lines.push(format!(
                "mount -t overlay overlay -o nosuid,nodev,{} {}",
                shell_quote(&overlay.options()?),
                shell_quote(&overlay.merged.display().to_string())
            ));
        }
        let words = self.command_line(spec)?;
        lines.push(words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "));
        Ok(lines)
    }

    fn check(&self, spec: &RunSpec) -> Result<(), RuntimeError> {
        if self.mode == Mode::Rootful && spec.identity.host_uid == 0 && !self.allow_host_root {
            return Err(RuntimeError::Unsupported {
                backend: "podman",
                what: "running as root for itself (the container's root would be host root; use the native \
                       runtime, the default, or ces through sudo or rootless; [podman] allow_host_root = true \
                       allows it)",
            });
        }
        if self.mode == Mode::Rootless {
            check_rootless_limits(&Hierarchy::detect()?)?;
        }
        podman_args(spec, self)?;
        if self.mode == Mode::Rootful {
            Overlay::of(spec).options()?;
        }
        env_file_contents(spec)?;
        seccomp_profile_for(set_id_modes(self.mode, spec))?;
        Ok(())
    }

    fn run(&self, spec: &RunSpec) -> Result<Exit, RuntimeError> {
        self.check(spec)?;
        let words = self.command_line(spec)?;
        let name = container_name(spec);
        write_new(&spec.state_dir.join(SECCOMP_FILE), &seccomp_profile_for(set_id_modes(self.mode, spec))?, 0o644)?;
        let hooks = spec.state_dir.join(HOOKS_DIR);
        std::fs::create_dir(&hooks).map_err(|e| RuntimeError::Io { path: hooks.clone(), source: e })?;
        // Before the container can exist: a stale clean-up finds it by this.
        write_new(&spec.state_dir.join(CONTAINER_FILE), &name, 0o644)?;
        // Dropped last (declared first): the container is removed before its
        // root filesystem is unmounted.
        let _overlay = match self.mode {
            Mode::Rootful => Some(MountedOverlay::mount(spec)?),
            Mode::Rootless => None,
        };
        let _env_file = if spec.process.env.is_empty() {
            None
        } else {
            Some(EnvFile::write(&spec.state_dir.join(ENV_FILE), &env_file_contents(spec)?)?)
        };
        let signals = SignalForwarder::new()?;
        let watchdog = Watchdog::start(&self.program, &name)?;
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]).current_dir(&spec.state_dir);
        command.stdin(if spec.process.interactive { Stdio::inherit() } else { Stdio::null() });
        tracing::debug!(command = %words.join(" "), "starting podman");
        let result = command
            .spawn()
            .map_err(|source| RuntimeError::Program { program: self.program.display().to_string(), source })
            .and_then(|mut child| signals.wait(&mut child, &self.program, &name, spec.process.stop_timeout))
            .and_then(exit_of)
            .map(|exit| match exit {
                Exit::Code(KILLED) if self.oom_killed(spec, &name) => Exit::OutOfMemory,
                other => other,
            });
        // Whatever happened: the container must not outlive the run.
        if self.remove(&name) {
            watchdog.disarm();
        }
        result
    }
}

impl PodmanRuntime {
    /// Whether the kernel killed a process of the container for memory:
    /// conmon's `oom` file in its working directory (cgroup v1), or podman's
    /// own record (which podman 4.3 keeps only on cgroup v2).
    fn oom_killed(&self, spec: &RunSpec, name: &str) -> bool {
        if spec.state_dir.join(CONMON_OOM_FILE).exists() {
            return true;
        }
        let out = Command::new(&self.program)
            .args(["inspect", "--type", "container", "--format", "{{.State.OOMKilled}}", name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        out.is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"true")
    }

    /// Stops (`SIGKILL`, no grace: its run is over) and removes the
    /// container; false if podman could not say it is gone.
    fn remove(&self, name: &str) -> bool {
        let removed = remove_container(&self.program, name);
        if !removed {
            tracing::warn!(container = name, "cannot remove the container: ces's watchdog tries again");
        }
        removed
    }
}

/// `podman rm --force --time 0 --ignore NAME`: true once it is gone (or
/// podman is not installed, so nothing of it can run).
fn remove_container(program: &Path, name: &str) -> bool {
    let status = Command::new(program)
        .args(remove_args(name))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) => status.success(),
        Err(error) => error.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The arguments of the removal, the watchdog's included.
fn remove_args(name: &str) -> [&str; 6] {
    ["rm", "--force", "--time", "0", "--ignore", name]
}

/// Creates `path` (never one that exists) holding `text`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), RuntimeError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| RuntimeError::Io { path: path.to_owned(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// podman's exit status as the container's: podman passes the container's
/// code through (128+n when a signal killed it); 125 is podman's own failure
/// (its message is already on stderr). 126 and 127 (cannot invoke, not found)
/// are about the container's command, as with docker, and pass through.
fn exit_of(status: ExitStatus) -> Result<Exit, RuntimeError> {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(PODMAN_FAILED), _) => {
            Err(RuntimeError::Start { stage: "podman run", source: Box::new(PodmanFailed { code: PODMAN_FAILED }) })
        }
        (Some(code), _) => Ok(Exit::Code(code)),
        (None, Some(signal)) => Ok(Exit::Signal(signal)),
        (None, None) => Ok(Exit::Code(-1)),
    }
}

/// podman reported its own failure.
#[derive(Debug, thiserror::Error)]
#[error("podman failed with exit code {code} (its message is above)")]
pub struct PodmanFailed {
    /// podman's exit code.
    pub code: i32,
}

/// Holds SIGINT, SIGTERM, SIGHUP and SIGQUIT (and SIGCHLD) while podman runs,
/// and passes those that were sent to ces alone on to podman, which passes
/// them to the container; ces itself does not die of them, so that its
/// clean-up runs. A terminal's signals are not passed on: the terminal sends
/// them to podman too.
///
/// The four stay blocked after the run (until ces exits), so that a late one
/// cannot cut the clean-up short. This must be set up while ces has one
/// thread only: the mask is the calling thread's.
struct SignalForwarder {
    fd: SignalFd,
    chld: SigSet,
}

fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    // The native runtime's list: one list of what ces forwards.
    for signal in crate::native::FORWARDED.into_iter().filter_map(|n| Signal::try_from(n).ok()) {
        set.add(signal);
    }
    set
}

impl SignalForwarder {
    fn new() -> Result<SignalForwarder, RuntimeError> {
        let mut mask = forwarded();
        mask.add(Signal::SIGCHLD);
        let mut chld = SigSet::empty();
        chld.add(Signal::SIGCHLD);
        let start = |source: nix::Error| RuntimeError::Start { stage: "signal handling", source: Box::new(source) };
        mask.thread_block().map_err(start)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(start)?;
        Ok(SignalForwarder { fd, chld })
    }

    /// Waits for podman, passing signals sent to ces on to the container with
    /// `podman kill` (which signals its init through the OCI runtime): the
    /// `podman run` client proxies signals only once it has set itself up, and
    /// one that arrives before is lost (seen here: the container ran on and
    /// podman exited 0). Until the container exists, the client gets it.
    /// `stop_timeout` after the first, a container still running is killed
    /// (`SIGKILL`), as the native runtime does.
    fn wait(
        &self,
        child: &mut std::process::Child,
        program: &Path,
        container: &str,
        stop_timeout: Duration,
    ) -> Result<ExitStatus, RuntimeError> {
        let pid = Pid::from_raw(child.id() as i32);
        let wait_err = |source: std::io::Error| RuntimeError::Program { program: "podman".into(), source };
        let pass_on = |signal: Signal| {
            let killed = Command::new(program)
                .args(["kill", "--signal", signal.as_str(), container])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !killed {
                let _ = nix::sys::signal::kill(pid, signal);
            }
        };
        let mut deadline: Option<Instant> = None;
        let mut killed = false;
        loop {
            if let Some(status) = child.try_wait().map_err(wait_err)? {
                return Ok(status);
            }
            if let Some(at) = deadline.filter(|_| !killed) {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(
                        container,
                        timeout = ?stop_timeout,
                        "the container did not stop within the stop timeout of the signal passed on to it: killed"
                    );
                    pass_on(Signal::SIGKILL);
                    killed = true;
                    continue;
                }
                let mut fds = [libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
                let timeout = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout) } <= 0 {
                    continue;
                }
            }
            let info = match self.fd.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(wait_err(e.into())),
            };
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else { continue };
            if signal == Signal::SIGCHLD || info.ssi_code == SI_KERNEL {
                continue;
            }
            tracing::debug!(%signal, container, "passing the signal on to the container");
            pass_on(signal);
            deadline.get_or_insert_with(|| Instant::now() + stop_timeout);
        }
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        let _ = self.chld.thread_unblock();
    }
}

/// Ties the container's life to ces's: a process of its own (in a session of
/// its own, so that a signal to ces's process group or terminal does not
/// reach it) that waits on a pipe whose write end only ces holds. When ces has
/// removed the container it writes one byte and the watchdog exits; when ces
/// dies first (`kill -9`, a crash), the pipe ends without it and the watchdog
/// becomes `podman rm --force --time 0 --ignore NAME`.
///
/// It is a grandchild of ces (the child in between exits at once), so init
/// reaps it and ces's own waits never see it.
struct Watchdog {
    done: OwnedFd,
}

impl Watchdog {
    fn start(program: &Path, name: &str) -> Result<Watchdog, RuntimeError> {
        let start =
            |source: nix::Error| RuntimeError::Start { stage: "starting the watchdog", source: Box::new(source) };
        let program = find_program(program)?;
        let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|_| start(nix::Error::EINVAL));
        let mut argv = vec![cstring(program.as_os_str().as_bytes())?];
        for arg in remove_args(name) {
            argv.push(cstring(arg.as_bytes())?);
        }
        // Everything the child needs is made now: after fork it only makes
        // system calls (it may not allocate: another thread could hold the
        // allocator's lock).
        let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        pointers.push(std::ptr::null());
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(start)?;
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|source| RuntimeError::Io { path: "/dev/null".into(), source })?;
        let devnull = OwnedFd::from(devnull);
        // Above 0-2, so that setting up the child's stdio cannot clobber them.
        let (read, write, devnull) = (above_stdio(read)?, above_stdio(write)?, above_stdio(devnull)?);
        // SAFETY: the child runs only async-signal-safe system calls on
        // data prepared above, and leaves with `_exit` (or `execv`).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(start(nix::Error::last()));
        }
        if pid == 0 {
            // SAFETY: in the child of `fork`, see `watchdog_child`.
            unsafe { watchdog_child(read.as_raw_fd(), devnull.as_raw_fd(), pointers.as_ptr()) }
        }
        drop(read);
        let status = loop {
            match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
                Err(nix::Error::EINTR) => continue,
                other => break other.map_err(start)?,
            }
        };
        if status != nix::sys::wait::WaitStatus::Exited(Pid::from_raw(pid), 0) {
            return Err(start(nix::Error::ECHILD));
        }
        Ok(Watchdog { done: write })
    }

    /// The container is gone: the watchdog exits without a word.
    fn disarm(self) {
        let _ = nix::unistd::write(&self.done, b"\n");
    }
}

/// `fd`, moved to a descriptor number above stdin, stdout and stderr.
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, RuntimeError> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(|e| RuntimeError::Start { stage: "starting the watchdog", source: Box::new(e) })?;
    // SAFETY: `fcntl` returned a new descriptor, which nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) })
}

/// The watchdog's side of the fork: a new session, a grandchild that waits
/// for ces's byte or the pipe's end, then (without the byte) execs the
/// removal with podman's output discarded.
///
/// # Safety
///
/// Only in the child of `fork`; `argv` is a null-terminated array of
/// C strings that stay valid (the parent's memory, copied by `fork`).
unsafe fn watchdog_child(read: libc::c_int, devnull: libc::c_int, argv: *const *const libc::c_char) -> ! {
    // SAFETY: only async-signal-safe system calls, on descriptors and memory
    // this process holds; every path ends in `_exit` or `execv`.
    unsafe {
        libc::setsid();
        match libc::fork() {
            0 => {}
            -1 => libc::_exit(1),
            _ => libc::_exit(0),
        }
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        if libc::dup2(read, 0) < 0 || libc::dup2(devnull, 1) < 0 || libc::dup2(devnull, 2) < 0 {
            libc::_exit(1);
        }
        // Nothing else of ces's stays open here: not the pipe's write end
        // (or the end would never come), nor its locks.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..1024 {
                libc::close(fd);
            }
        }
        libc::chdir(c"/".as_ptr());
        let mut byte = 0u8;
        loop {
            let n = libc::read(0, (&raw mut byte).cast(), 1);
            if n == 1 {
                libc::_exit(0);
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break;
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execv(*argv, argv);
        libc::_exit(127)
    }
}

/// Where root looks for the programs it runs: the system's own
/// directories (sudo's `secure_path`), never a `PATH` a user passed through
/// sudo, which would choose what root runs.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The directories `podman` is looked for in: [`SYSTEM_PATH`] as root, else
/// the user's `PATH`.
fn search_path(root: bool) -> std::ffi::OsString {
    match std::env::var_os("PATH") {
        Some(path) if !root => path,
        _ => SYSTEM_PATH.into(),
    }
}

/// podman by absolute path (found once, so that the run, its watchdog and a
/// later clean-up run the same program); `/usr/bin/podman` when there is
/// none, which then fails as not found.
fn podman_program() -> PathBuf {
    let root = nix::unistd::geteuid().is_root();
    find_program_in(Path::new("podman"), &search_path(root)).unwrap_or_else(|_| PathBuf::from("/usr/bin/podman"))
}

/// `program` as a path `execv` takes: as is when it names a directory,
/// else the first executable file of that name in [`search_path`].
fn find_program(program: &Path) -> Result<PathBuf, RuntimeError> {
    find_program_in(program, &search_path(nix::unistd::geteuid().is_root()))
}

/// [`find_program`] in the directories of `search`.
fn find_program_in(program: &Path, search: &std::ffi::OsStr) -> Result<PathBuf, RuntimeError> {
    if program.components().count() > 1 {
        return Ok(program.to_owned());
    }
    std::env::split_paths(search)
        .map(|dir| dir.join(program))
        .find(|candidate| std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
        .ok_or_else(|| RuntimeError::Program {
            program: program.display().to_string(),
            source: std::io::ErrorKind::NotFound.into(),
        })
}

/// The environment file; removed when dropped.
struct EnvFile {
    path: PathBuf,
}

impl EnvFile {
    fn write(path: &Path, text: &str) -> Result<EnvFile, RuntimeError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| RuntimeError::Io { path: path.to_owned(), source };
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
        let file_guard = EnvFile { path: path.to_owned() };
        file.write_all(text.as_bytes()).map_err(io)?;
        Ok(file_guard)
    }
}

impl Drop for EnvFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The directory of a rootful run's upper and work directories, in its state
/// directory: root's alone.
const OVERLAY_DIR: &str = "overlay";
/// The merged tree podman gets, in its state directory, below a directory
/// only the container's root may enter.
const MERGED: &str = "rootfs/merged";
/// Where earlier versions mounted it (for [`cleanup_stale`]).
const OLD_MERGED: &str = "merged";

/// The overlay ces mounted for a rootful run; unmounted when dropped.
struct MountedOverlay {
    merged: PathBuf,
}

impl MountedOverlay {
    fn mount(spec: &RunSpec) -> Result<MountedOverlay, RuntimeError> {
        use nix::mount::{MsFlags, mount};
        use std::os::unix::fs::DirBuilderExt as _;
        let overlay = Overlay::of(spec);
        let options = overlay.options()?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Io { path, source }
        };
        let private = spec.state_dir.join(OVERLAY_DIR);
        let entry = overlay.merged.parent().unwrap_or(&spec.state_dir).to_owned();
        for dir in [&private, &entry] {
            std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(io(dir))?;
        }
        for dir in [&overlay.upper, &overlay.work, &overlay.merged] {
            std::fs::create_dir(dir).map_err(io(dir))?;
        }
        // The container's root owns the upper `/`, `/etc` and `/run`, so that
        // runc (as that root) can create mount points in them.
        let user = spec.process.user;
        let owner_uid = if user.uid == 0 { spec.identity.host_uid } else { NOBODY };
        let owner_gid = if user.gid == 0 { spec.identity.host_gid } else { NOBODY };
        for sub in ["", "etc", "run"] {
            let upper = overlay.upper.join(sub);
            let image = &spec.image.rootfs;
            if !sub.is_empty() && image.kind_nofollow(sub) != ces_image::rootfs::EntryKind::Directory {
                continue;
            }
            let Some((_, meta)) = image.resolve(sub) else { continue };
            if !sub.is_empty() {
                std::fs::create_dir(&upper).map_err(io(&upper))?;
            }
            std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io(&upper))?;
            std::os::unix::fs::lchown(&upper, Some(owner_uid), Some(owner_gid)).map_err(io(&upper))?;
        }
        if spec.identity.host_uid != 0 {
            enter_only(&entry, spec.identity.host_uid).map_err(|source| match source.raw_os_error() {
                Some(code) if code == libc::EOPNOTSUPP => RuntimeError::NoAcl { path: entry.clone() },
                _ => io(&entry)(source),
            })?;
        }
        let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        mount(Some("overlay"), &overlay.merged, Some("overlay"), flags, Some(options.as_str()))
            .map_err(|e| RuntimeError::Start { stage: "mounting the root filesystem overlay", source: Box::new(e) })?;
        Ok(MountedOverlay { merged: overlay.merged })
    }
}

/// Lets the user `uid`, besides root, enter the directory `dir` (root's,
/// `0700`) and do nothing else there: a POSIX access ACL of
/// `user::rwx,user:UID:--x,group::---,mask::--x,other::---`, written as the
/// kernel's `system.posix_acl_access` attribute (version 2, then each
/// entry's tag, permissions and id, little-endian).
fn enter_only(dir: &Path, uid: u32) -> std::io::Result<()> {
    const VERSION: u32 = 2;
    const UNDEFINED: u32 = u32::MAX;
    // (tag, permissions, id): ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER.
    let entries: [(u16, u16, u32); 5] =
        [(0x01, 7, UNDEFINED), (0x02, 1, uid), (0x04, 0, UNDEFINED), (0x10, 1, UNDEFINED), (0x20, 0, UNDEFINED)];
    let mut acl = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    rustix::fs::setxattr(dir, "system.posix_acl_access", &acl, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

impl Drop for MountedOverlay {
    fn drop(&mut self) {
        let flags = nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW;
        if let Err(error) = nix::mount::umount2(&self.merged, flags) {
            tracing::warn!(path = %self.merged.display(), %error, "cannot unmount the run's overlay");
        }
    }
}

/// Removes what a podman run of a ces that died left in its state
/// directory: first its container, killed and removed (its watchdog may have
/// done so already; one killed with ces did not), then the overlay. Returns
/// false while the container may still be there: the run's scratch
/// directory, which it may be writing to, must wait (the next start tries
/// again).
pub fn cleanup_stale(state_dir: &Path) -> bool {
    if let Some(name) = stale_container(state_dir)
        && !remove_container(&podman_program(), &name)
    {
        tracing::warn!(container = name, "cannot remove the container of an interrupted run");
        return false;
    }
    for merged in [MERGED, OLD_MERGED].map(|name| state_dir.join(name)) {
        let parent = merged.parent().unwrap_or(state_dir);
        let (Ok(inner), Ok(outer)) = (std::fs::symlink_metadata(&merged), std::fs::symlink_metadata(parent)) else {
            continue;
        };
        let flags = nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW;
        if inner.dev() != outer.dev()
            && let Err(error) = nix::mount::umount2(&merged, flags)
        {
            tracing::warn!(path = %merged.display(), %error, "cannot unmount a stale overlay");
        }
    }
    true
}

/// The container a run's state directory names, if it is one of ces's
/// (`ces-<run id>`): never another name, whatever the file says.
fn stale_container(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state_dir.join(CONTAINER_FILE)).ok()?;
    let id = text.strip_prefix("ces-")?;
    crate::plan::is_run_id(id).then(|| text.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::spec::{ContainerUser, EnvVar, Identity, ImageSpec, Limits, MountSpec, ProcessSpec};

    fn rootful() -> PodmanRuntime {
        PodmanRuntime { program: "podman".into(), mode: Mode::Rootful, init: true, allow_host_root: true }
    }

    fn rootless() -> PodmanRuntime {
        PodmanRuntime { program: "podman".into(), mode: Mode::Rootless, init: false, allow_host_root: false }
    }

    fn spec() -> RunSpec {
        RunSpec {
            id: "20231114-221320-deadbeef".into(),
            name: Some("analysis".into()),
            image: ImageSpec {
                reference: "ghcr.io/a/b:1".into(),
                digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
                rootfs: ces_image::rootfs::Rootfs::Tree("/store/rootfs/aaaa".into()),
            },
            process: ProcessSpec {
                args: vec!["sh".into(), "-c".into(), "echo hi > /safe_outputs/x".into()],
                env: vec![EnvVar::new("TOKEN", "s3cret-value"), EnvVar::new("TMPDIR", "/scratch")],
                cwd: "/work".into(),
                user: ContainerUser { uid: 0, gid: 0 },
                terminal: false,
                interactive: false,
                stop_timeout: ProcessSpec::DEFAULT_STOP_TIMEOUT,
            },
            mounts: vec![
                MountSpec {
                    destination: "/safe_data".into(),
                    kind: MountKind::Bind { source: "/data/p1".into() },
                    access: Access::Ro,
                },
                MountSpec {
                    destination: "/safe_outputs".into(),
                    kind: MountKind::Bind { source: "/home/a/outputs_x".into() },
                    access: Access::Rw,
                },
                MountSpec {
                    destination: "/scratch".into(),
                    kind: MountKind::Bind { source: "/home/a/scratch_x".into() },
                    access: Access::Rw,
                },
                MountSpec {
                    destination: "/cache".into(),
                    kind: MountKind::Tmpfs { size: Some(1 << 20) },
                    access: Access::Rw,
                },
            ],
            limits: Limits {
                memory: 4 << 30,
                cpus: Some(1.5),
                pids: Some(4096),
                shm_size: 64 << 20,
                time_limit: None,
                rootfs_writes: None,
            },
            ports: Vec::new(),
            devices: Default::default(),
            identity: Identity { host_uid: 1000, host_gid: 1001 },
            state_dir: "/store/runs/x/state".into(),
            pins: Default::default(),
        }
    }

    #[test]
    fn rootful_command_line() {
        let args = podman_args(&spec(), &rootful()).unwrap();
        let expected = [
            "run --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024",
            "--network none --security-opt no-new-privileges",
            "--security-opt seccomp=/store/runs/x/state/seccomp.json --cap-drop ALL",
            "--cap-add CHOWN,DAC_OVERRIDE,FOWNER,FSETID,KILL,SETGID,SETUID",
            "--log-driver none --init",
            "--memory 4294967296b --memory-swap 4294967296b --cpus 1.5 --pids-limit 4096 --shm-size 67108864b",
            "--mount type=bind,src=/data/p1,dst=/safe_data,ro",
            "--mount type=bind,src=/home/a/outputs_x,dst=/safe_outputs,rw",
            "--mount type=bind,src=/home/a/scratch_x,dst=/scratch,rw",
            "--mount type=tmpfs,dst=/cache,tmpfs-size=1048576",
            "--env-file /store/runs/x/state/podman.env --workdir /work --user 0:0 --uidmap 0:1000:1 --gidmap 0:1001:1",
            "--name ces-20231114-221320-deadbeef --label io.ces.run-id=20231114-221320-deadbeef --label io.ces.name=analysis",
            "--rootfs /store/runs/x/state/rootfs/merged",
        ]
        .join(" ");
        let n = expected.split(' ').count();
        assert_eq!(args[..n].join(" "), expected);
        assert_eq!(args[n..], ["sh", "-c", "echo hi > /safe_outputs/x"]);
    }

    #[test]
    fn env_values_never_reach_the_command_line() {
        let runtime = rootful();
        let lines = runtime.describe(&spec()).unwrap();
        let all = lines.join("\n");
        assert!(!all.contains("s3cret"), "{all}");
        assert!(all.contains("--env-file /store/runs/x/state/podman.env "), "{all}");
        assert_eq!(lines.len(), 2);
        let volatile = if ces_image::rootfs::overlay_volatile() { "volatile," } else { "" };
        assert_eq!(
            lines[0],
            format!(
                "mount -t overlay overlay -o nosuid,nodev,{volatile}lowerdir=/store/rootfs/aaaa,upperdir=/store/runs/x/state/overlay/upper,workdir=/store/runs/x/state/overlay/work /store/runs/x/state/rootfs/merged"
            )
        );
        assert!(
            lines[1].starts_with("podman --hooks-dir /store/runs/x/state/hooks.d run --runtime runc "),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with(" sh -c 'echo hi > /safe_outputs/x'"), "{}", lines[1]);
    }

    #[test]
    fn non_root_image_user_and_rootless_mapping() {
        let mut s = spec();
        s.process.user = ContainerUser { uid: 1000, gid: 100 };
        s.process.terminal = true;
        s.process.interactive = true;
        s.name = None;
        let args = podman_args(&s, &rootful()).unwrap().join(" ");
        assert!(
            args.contains(
                "--user 1000:100 --uidmap 0:65534:1 --uidmap 1000:1000:1 --gidmap 0:65534:1 --gidmap 100:1001:1 "
            ),
            "{args}"
        );
        assert!(args.contains(" --interactive --tty --rootfs "), "{args}");
        assert!(!args.contains("io.ces.name"), "{args}");
        let args = podman_args(&s, &rootless()).unwrap().join(" ");
        assert!(args.contains("--uidmap 0:1:1 --uidmap 1000:0:1 --gidmap 0:1:1 --gidmap 100:0:1 "), "{args}");
        assert!(args.contains(" --rootfs /store/rootfs/aaaa:O sh -c "), "{args}");
        assert!(!args.contains("--init"), "{args}");
        let args = podman_args(&spec(), &rootless()).unwrap().join(" ");
        assert!(args.contains("--uidmap 0:0:1 --gidmap 0:0:1 "), "{args}");
    }

    #[test]
    fn env_file_holds_the_values_literally() {
        let mut s = spec();
        s.process.env.push(EnvVar::new("SPACED", " a 'b' \"c\" $d #e "));
        assert_eq!(env_file_contents(&s).unwrap(), "TOKEN=s3cret-value\nTMPDIR=/scratch\nSPACED= a 'b' \"c\" $d #e \n");
        s.process.env.push(EnvVar::new("MULTI", "a\nb"));
        assert!(matches!(env_file_contents(&s), Err(RuntimeError::Unsupported { .. })));
        let mut s = spec();
        s.process.env.clear();
        assert!(!podman_args(&s, &rootful()).unwrap().contains(&"--env-file".to_owned()));
    }

    #[test]
    fn published_ports_are_refused() {
        let mut s = spec();
        s.ports.push(crate::Publish {
            host: crate::HostEndpoint::Tcp { address: "127.0.0.1:8080".parse().unwrap() },
            container_port: 80,
        });
        assert!(matches!(podman_args(&s, &rootful()), Err(RuntimeError::Unsupported { what: PORTS, .. })));
        assert!(matches!(podman_args(&s, &rootless()), Err(RuntimeError::Unsupported { what: PORTS, .. })));
    }

    #[test]
    fn unrepresentable_paths_are_refused() {
        let mut s = spec();
        s.mounts[0].kind = MountKind::Bind { source: "/data/a,b".into() };
        assert!(matches!(podman_args(&s, &rootful()), Err(RuntimeError::Unsupported { .. })));
        let mut s = spec();
        s.image.rootfs = ces_image::rootfs::Rootfs::Tree("/st:ore/rootfs".into());
        assert!(Overlay::of(&s).options().is_err());
    }

    /// An image kept as its layers: the overlay ces mounts as root lists
    /// them top first (with `userxattr` when root did not mark them);
    /// rootless podman, which takes one directory, is refused it.
    #[test]
    fn layers_are_the_lower_layers_of_the_rootful_overlay() {
        use ces_image::rootfs::{Layers, Rootfs};
        let mut s = spec();
        let dirs = vec!["/store/layers/a".into(), "/store/layers/b".into()];
        s.image.rootfs = Rootfs::Layers(Layers { mount: dirs.clone(), dirs, trusted: true });
        let overlay = |s: &RunSpec| Overlay { volatile: false, ..Overlay::of(s) };
        let options = overlay(&s).options().unwrap();
        assert!(options.starts_with("lowerdir=/store/layers/b:/store/layers/a,upperdir="), "{options}");
        assert!(!options.contains("userxattr"), "{options}");
        let volatile = Overlay { volatile: true, ..Overlay::of(&s) }.options().unwrap();
        assert!(volatile.starts_with("volatile,lowerdir="), "{volatile}");
        assert!(podman_args(&s, &rootful()).is_ok());
        assert!(matches!(podman_args(&s, &rootless()), Err(RuntimeError::Unsupported { .. })));
        let Rootfs::Layers(layers) = &mut s.image.rootfs else { unreachable!() };
        layers.trusted = false;
        assert!(overlay(&s).options().unwrap().starts_with("userxattr,lowerdir="));
        // More than the kernel reads of mount(2)'s data: refused, not cut.
        let Rootfs::Layers(layers) = &mut s.image.rootfs else { unreachable!() };
        layers.mount = (0..100).map(|i| PathBuf::from(format!("/store/layers/{i:064}"))).collect();
        assert!(matches!(Overlay::of(&s).options(), Err(RuntimeError::Unsupported { .. })));
    }

    #[test]
    fn rootless_limits_are_refused_on_cgroup_v1_only() {
        let v1 = |hybrid| Hierarchy::V1 { hybrid, controllers: Default::default(), mounts: Vec::new() };
        for hierarchy in [v1(true), v1(false)] {
            let error = check_rootless_limits(&hierarchy).unwrap_err().to_string();
            assert!(error.starts_with("cannot enforce the memory limit: rootless podman ignores"), "{error}");
            assert!(error.contains("ces system setup"), "{error}");
        }
        assert!(check_rootless_limits(&Hierarchy::V2 { root: "/sys/fs/cgroup".into() }).is_ok());
    }

    #[test]
    fn check_refuses_what_podman_cannot_express() {
        let runtime = rootful();
        assert!(runtime.check(&spec()).is_ok());
        let mut s = spec();
        s.process.env.push(EnvVar::new("MULTI", "a\nb"));
        assert!(matches!(runtime.check(&s), Err(RuntimeError::Unsupported { .. })));
        let mut s = spec();
        s.mounts[0].kind = MountKind::Bind { source: "/data/a,b".into() };
        assert!(matches!(runtime.check(&s), Err(RuntimeError::Unsupported { .. })));
    }

    /// The native profile's rules, in podman's format: the same syscalls
    /// allowed, the same architectures, and the masked comparison in runc's
    /// order (mask first).
    #[test]
    fn seccomp_profile_is_the_native_one_in_podmans_format() {
        let native = crate::native::seccomp::profile(crate::native::seccomp::SetIdModes::Allowed).unwrap();
        let json: serde_json::Value = serde_json::from_str(&seccomp_profile().unwrap()).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        assert_eq!(json["architectures"], serde_json::to_value(native.architectures()).unwrap());
        let rules = json["syscalls"].as_array().unwrap();
        let allowed: Vec<&str> = rules
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()))
            .collect();
        assert!(allowed.contains(&"read") && allowed.contains(&"execve"), "{allowed:?}");
        for denied in ["unshare", "keyctl", "add_key", "request_key", "mount", "setns", "bpf", "socket", "clone"] {
            assert!(!allowed.contains(&denied), "{denied} allowed without conditions");
        }
        let only = |name: &str| -> Vec<&serde_json::Value> {
            rules.iter().filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name)).collect()
        };
        let socket = only("socket");
        assert_eq!(socket.len(), 1);
        assert_eq!(socket[0]["args"], serde_json::json!([{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]));
        let clone = only("clone");
        assert_eq!(
            clone[0]["args"],
            serde_json::json!([{"index": 0, "value": 0x7E02_0000_u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        assert_eq!(only("clone3")[0]["errnoRet"], 38);
    }

    #[test]
    fn stale_cleanup_only_names_ces_containers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(stale_container(dir.path()), None);
        for (text, expected) in [
            ("ces-20231114-221320-deadbeef", Some("ces-20231114-221320-deadbeef")),
            ("ces-20231114-221320-deadbeef --all", None),
            ("other", None),
            ("ces-../x", None),
        ] {
            std::fs::write(dir.path().join(CONTAINER_FILE), text).unwrap();
            assert_eq!(stale_container(dir.path()).as_deref(), expected, "{text}");
        }
    }

    /// Regression: as root (sudo included) podman was run from `PATH`, which
    /// sudo may pass through from the user: their own `podman` ran as root.
    #[test]
    fn root_looks_for_programs_in_the_system_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("podman");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(search_path(true), SYSTEM_PATH);
        let found = find_program_in(Path::new("podman"), dir.path().as_os_str()).unwrap();
        assert_eq!(found, fake, "a user's PATH is searched for a user");
        let system = find_program_in(Path::new("podman"), std::ffi::OsStr::new(SYSTEM_PATH));
        assert!(system.is_ok_and(|p| p != fake && p.starts_with("/")), "root never finds the user's");
    }

    #[test]
    fn programs_are_found_in_path() {
        assert_eq!(find_program(Path::new("/x/podman")).unwrap(), Path::new("/x/podman"));
        assert!(find_program(Path::new("sh")).unwrap().is_absolute());
        assert!(find_program(Path::new("no-such-program-ces")).is_err());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("plain/path-1.0:x=y"), "plain/path-1.0:x=y");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn podman_failure_is_not_the_containers_exit() {
        use std::os::unix::process::ExitStatusExt as _;
        assert!(exit_of(ExitStatus::from_raw(125 << 8)).is_err());
        assert_eq!(exit_of(ExitStatus::from_raw(3 << 8)).unwrap(), Exit::Code(3));
        assert_eq!(exit_of(ExitStatus::from_raw(127 << 8)).unwrap(), Exit::Code(127));
        assert_eq!(exit_of(ExitStatus::from_raw(15)).unwrap(), Exit::Signal(15));
    }
}
