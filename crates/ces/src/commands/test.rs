//! `ces test`: runs an image exactly as `ces run` would (same policy, mounts,
//! limits, native runtime), with `/safe_data` from `--data` (or empty) and
//! fresh outputs, while a watcher owns the container's only route: every DNS
//! query and connection attempt is answered at once with a failure and
//! recorded. Then a report a researcher can act on: the verdict, the run,
//! each network attempt with a hint, what was written where, and what the
//! image itself carries (see docs/testing-images.md).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use ces_image::Store;
use ces_runtime::native::{LostWrite, NetworkReport, Observe};
use ces_runtime::netwatch::{AttemptKind, RESOLVER_ADDR};
use ces_runtime::{Access, Exit, MountKind, MountSpec, Runtime as _};
use serde::Serialize;

use crate::cli::TestArgs;
use crate::commands::audit;
use crate::commands::run::{self, Placement};
use crate::printer::{Printer, binary_bytes, human_bytes};
use crate::run_options;
use crate::settings::Settings;

/// Exit status when the image is not ready (ces's own failures are 125).
pub const EXIT_NOT_READY: u8 = 1;

/// Data-like files at least this large are findings wherever they are;
/// smaller ones only outside the places packages install to.
const LARGE_DATA_FILE: u64 = 1 << 20;
/// Above this, the image's size is a finding of its own.
const LARGE_IMAGE: u64 = 10 << 30;
/// Where packages keep their own (small) sample data.
const PACKAGE_PLACES: &[&str] =
    &["usr/", "lib/", "lib64/", "opt/conda/", "site-packages/", "dist-packages/", "node_modules/", "/library/"];

/// A failure of `ces test` itself.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// `--runtime podman`.
    #[error("ces test observes the network with the native runtime; it cannot with {0}")]
    Runtime(String),
    /// `--dry-run`.
    #[error("ces test has no --dry-run: `ces run --dry-run IMAGE` shows the plan")]
    DryRun,
    /// `--data` is not a directory (that the user can reach, under sudo).
    #[error("--data {} is not a directory you can read", .0.display())]
    Data(PathBuf),
}

/// One thing found about the image or the run (the verdict aside).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// A stable code.
    pub code: &'static str,
    /// `warning` or `info`.
    pub severity: &'static str,
    /// What was found.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// A file and its size.
#[derive(Debug, Clone, Serialize)]
pub struct FileSize {
    /// Its path (in the container).
    pub path: String,
    /// Its size.
    pub size: u64,
}

/// The whole report (`--json` prints it as it is).
#[derive(Debug, Serialize)]
pub struct Report {
    /// The image as given.
    pub image: String,
    /// Its digest.
    pub digest: String,
    /// `ready` or `not ready`.
    pub verdict: &'static str,
    /// Why not ready (empty when ready).
    pub reasons: Vec<String>,
    /// How the container ended.
    pub exit: Exit,
    /// Its exit code.
    pub exit_code: i32,
    /// Seconds from start to exit.
    pub wall_seconds: f64,
    /// Peak memory use in bytes, when the kernel keeps it.
    pub peak_memory: Option<u64>,
    /// The memory limit it ran under.
    pub memory_limit: u64,
    /// Every network attempt.
    pub network: NetworkReport,
    /// A hint per host tried.
    pub network_hints: Vec<String>,
    /// Where the outputs are (kept).
    pub outputs_dir: PathBuf,
    /// The files written to /safe_outputs.
    pub outputs: Vec<FileSize>,
    /// Files written to the container's own filesystem (lost at exit).
    pub lost_writes: Vec<LostWrite>,
    /// Files left in /scratch (removed at exit).
    pub scratch: Vec<FileSize>,
    /// Findings about the image and the run.
    pub findings: Vec<Finding>,
    /// `--gpu`, `--device`: whether the workload used its devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<DeviceUse>,
}

/// Whether the workload used the devices it was given (opened a node).
#[derive(Debug, Serialize)]
pub struct DeviceUse {
    /// The CDI devices given.
    pub devices: Vec<String>,
    /// Their nodes, as paths in the container.
    pub nodes: Vec<String>,
    /// The nodes the workload opened.
    pub opened: Vec<String>,
    /// Whether it opened any.
    pub used: bool,
    /// Whether the nodes were the run's own (root), or the host's, which
    /// other processes may have opened meanwhile (rootless).
    pub nodes_own: bool,
}

/// Runs `ces test`; returns 0 when the image is ready, 1 when not.
pub fn test(settings: &Settings, printer: &Printer, args: TestArgs) -> anyhow::Result<ExitCode> {
    let image = args.command.first().cloned();
    let mut started = false;
    match test_image(settings, printer, args, &mut started) {
        Err(error) if !started => Err(audit::record_not_started(settings, image, error)),
        other => other,
    }
}

fn test_image(settings: &Settings, printer: &Printer, args: TestArgs, started: &mut bool) -> anyhow::Result<ExitCode> {
    let mut options = args.options;
    run_options::settle_gpu(&mut options);
    let options = run_options::with_opt_files(options)?;
    let Some((image, command)) = args.command.split_first() else {
        anyhow::bail!("no image given");
    };
    if let Some(runtime) = options.runtime.as_deref().filter(|r| !matches!(*r, "native" | "apptainer")) {
        return Err(TestError::Runtime(runtime.to_owned()).into());
    }
    if options.dry_run {
        return Err(TestError::DryRun.into());
    }
    let place = TestPlace::create(args.data.as_deref())?;
    let placement = Placement { safe_data: Some(place.data.clone()), parent: Some(place.dir.clone()), run_id: None };
    let mut prepared = run::prepare(settings, printer, &options, image, command, &placement)?;
    prepared.test = true;
    prepared.spec.mounts.push(MountSpec {
        destination: "/etc/resolv.conf".to_owned(),
        kind: MountKind::Bind { source: place.resolv_conf.clone() },
        access: Access::Ro,
    });
    let mut findings = image_findings(&prepared.store, &prepared.manifest, &prepared.config, &prepared.spec)?;

    let runtime = run::native_runtime(settings, prepared.store.root());
    let scratch = prepared.spec.mounts.iter().find_map(|m| match (&m.kind, m.destination.as_str()) {
        (MountKind::Bind { source }, ces_runtime::plan::SCRATCH) => Some(source.clone()),
        _ => None,
    });
    let mut observed = None;
    let mut scratch_files = Vec::new();
    // With --json, stdout is the report's: the container's stdout goes to stderr.
    let _stdout = if options.json { Some(StdoutToStderr::redirect()?) } else { None };
    let clock = Instant::now();
    let (result, outputs_dir) = run::execute(settings, printer, &prepared, runtime.name(), false, started, |spec| {
        let o = runtime.run_observed(spec, Observe { network: true })?;
        // Before the run's directories are removed.
        scratch_files = scratch.as_deref().map(|dir| files_under(dir, "scratch/", &[])).unwrap_or_default();
        let exit = o.exit;
        observed = Some(o);
        Ok(exit)
    })?;
    let wall = clock.elapsed();
    drop(_stdout);
    // Only the outputs stay.
    place.remove_own_files();
    let exit = result.with_context(|| run::not_run(&prepared.spec))?;
    let observed = observed.context("the runtime reported no observations")?;

    let network = observed.network.unwrap_or_default();
    // What the container wrote, not ces's manifest and ACRO metadata.
    let outputs = files_under(&outputs_dir, "", &ces_outputs::RESERVED);
    findings.extend(run_findings(&observed.lost_writes, &scratch_files, exit));
    let mut reasons = Vec::new();
    if exit.code() != 0 {
        reasons.push(match exit {
            Exit::OutOfMemory => format!(
                "the container ran out of memory (limit {}): ask for more with -m, or use less",
                binary_bytes(prepared.spec.limits.memory)
            ),
            _ => format!("the container failed (exit code {})", exit.code()),
        });
    }
    let tried = network.attempts.len();
    if tried > 0 && !args.allow_network_attempts {
        reasons.push(format!(
            "the container tried to use the network ({tried} distinct attempt{}): in the TRE these fail",
            if tried == 1 { "" } else { "s" }
        ));
    }
    let refused: Vec<&str> = network.sockets.iter().filter(|s| s.refused).map(|s| s.name.as_str()).collect();
    if !refused.is_empty() && !args.allow_network_attempts {
        reasons.push(format!(
            "the container tried {} socket(s), a way out that is not the network (to a hypervisor): refused in the TRE",
            refused.join(", ")
        ));
    }
    let devices = (!prepared.spec.devices.is_empty()).then(|| {
        let opened = observed.devices_opened.clone();
        DeviceUse {
            devices: prepared.spec.devices.requested.iter().map(|d| d.name.clone()).collect(),
            nodes: prepared.spec.devices.nodes.iter().map(|n| n.path.clone()).collect(),
            used: !opened.is_empty(),
            opened,
            nodes_own: crate::identity::is_host_root(),
        }
    });
    if let Some(d) = devices.as_ref().filter(|d| !d.used && !d.nodes.is_empty()) {
        reasons.push(format!(
            "the container was given {} but never opened {}: it would run without them in the TRE \
             (is the image built with GPU support, e.g. a CUDA build of its libraries?)",
            d.devices.join(", "),
            d.nodes.join(", ")
        ));
    }
    let report = Report {
        image: prepared.spec.image.reference.clone(),
        digest: prepared.spec.image.digest.to_string(),
        verdict: if reasons.is_empty() { "ready" } else { "not ready" },
        reasons,
        exit,
        exit_code: exit.code(),
        wall_seconds: wall.as_secs_f64(),
        peak_memory: observed.peak_memory,
        memory_limit: prepared.spec.limits.memory,
        network_hints: network_hints(&network),
        network,
        outputs_dir,
        outputs,
        lost_writes: observed.lost_writes,
        scratch: scratch_files,
        findings,
        devices,
    };
    let mut out = std::io::stdout().lock();
    if options.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_report(&mut out, &report)?;
    }
    out.flush()?;
    Ok(if report.reasons.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_READY) })
}

/// Points this process's stdout at its stderr (the container inherits
/// them) until dropped.
struct StdoutToStderr {
    saved: std::os::fd::OwnedFd,
}

impl StdoutToStderr {
    fn redirect() -> std::io::Result<StdoutToStderr> {
        std::io::stdout().flush()?;
        let saved = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3)?;
        rustix::stdio::dup2_stdout(rustix::stdio::stderr())?;
        Ok(StdoutToStderr { saved })
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        let _ = rustix::stdio::dup2_stdout(&self.saved);
    }
}

/// The test's own place: a fresh directory for outputs and scratch, the
/// (empty) data directory when `--data` is not given, and the resolver
/// configuration that sends every query to the watcher.
struct TestPlace {
    dir: PathBuf,
    data: PathBuf,
    resolv_conf: PathBuf,
    /// The empty `/safe_data`, when `--data` was not given.
    empty_data: Option<PathBuf>,
}

impl TestPlace {
    /// Removes what the test made for itself (best effort: a leftover only
    /// costs a few bytes in the temp dir).
    fn remove_own_files(&self) {
        let _ = std::fs::remove_file(&self.resolv_conf);
        if let Some(empty) = &self.empty_data {
            let _ = std::fs::remove_dir(empty);
        }
    }

    fn create(data: Option<&Path>) -> anyhow::Result<TestPlace> {
        // Under sudo, not the user's `$TMPDIR`: root chmods and writes here
        // by path, and a directory of theirs could be swapped for a link.
        // In `/tmp` (sticky) no one else can rename what root made.
        let sudo = crate::identity::sudo_user()?.is_some();
        let base = if sudo { PathBuf::from("/tmp") } else { std::env::temp_dir() };
        let stamp = jiff::Timestamp::now().as_millisecond();
        let dir = base.join(format!("ces-test-{stamp}-{}", std::process::id()));
        // Searchable by the container's user (as root, the invoking user).
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let chmod = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", path.display()))
        };
        chmod(&dir, 0o711)?;
        let data = match data {
            Some(path) => {
                // A path the user names: resolved as the user under sudo (a
                // directory they cannot reach is not theirs to test with).
                let resolved = crate::identity::as_invoker(|| {
                    std::fs::canonicalize(path).ok().filter(|resolved| std::fs::read_dir(resolved).is_ok())
                })?;
                resolved.ok_or_else(|| TestError::Data(path.to_owned()))?
            }
            None => {
                let empty = dir.join("empty_safe_data");
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&empty)
                    .with_context(|| format!("cannot create {}", empty.display()))?;
                chmod(&empty, 0o755)?;
                empty
            }
        };
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(&resolv_conf, format!("nameserver {RESOLVER_ADDR}\noptions attempts:1 timeout:1\n"))
            .with_context(|| format!("cannot write {}", resolv_conf.display()))?;
        chmod(&resolv_conf, 0o644)?;
        let empty_data = (data.parent() == Some(dir.as_path())).then(|| data.clone());
        Ok(TestPlace { dir, data, resolv_conf, empty_data })
    }
}

/// What the stored image carries: the TRE's directories, its user, data
/// baked into layers, its size and platform.
fn image_findings(
    store: &Store,
    manifest: &oci_spec::image::ImageManifest,
    config: &oci_spec::image::ImageConfiguration,
    spec: &ces_runtime::RunSpec,
) -> anyhow::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let missing: Vec<&str> = ["/safe_data", "/safe_outputs", "/scratch"]
        .into_iter()
        .filter(|dir| spec.image.rootfs.kind_nofollow(dir) != ces_image::rootfs::EntryKind::Directory)
        .collect();
    if !missing.is_empty() {
        findings.push(Finding {
            code: "missing-tre-directories",
            severity: "warning",
            message: format!("the image has no {}", missing.join(" ")),
            hint: "add `RUN mkdir -p /safe_data /safe_outputs /scratch` to the Dockerfile (some TRE runners need the \
                   mount points to exist)"
                .to_owned(),
        });
    }
    let user = config.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() || name == "root" || name == "0" {
        findings.push(Finding {
            code: "runs-as-root",
            severity: "warning",
            message: format!("the image runs as root (USER {})", if user.is_empty() { "not set" } else { &user }),
            hint: "add a user and `USER analyst` at the end of the Dockerfile: \
                   `RUN useradd -m analyst` (Debian/Ubuntu) or `adduser -D analyst` (Alpine)"
                .to_owned(),
        });
    }
    let platform = format!("{}/{}", config.os(), config.architecture());
    if platform != "linux/amd64" {
        findings.push(Finding {
            code: "platform",
            severity: "warning",
            message: format!("the image is for {platform}, the TRE runs linux/amd64"),
            hint: "build with `docker build --platform linux/amd64` (or buildx for several platforms)".to_owned(),
        });
    }
    let mut size = 0u64;
    for (index, layer) in manifest.layers().iter().enumerate() {
        size += layer.size();
        let digest = ces_image::manifest::descriptor_digest(layer)?;
        // The blob, or the layer unpacked where the store keeps no blobs.
        let blob = store.blob_path(&digest);
        let unpacked = config.rootfs().diff_ids().get(index).and_then(|d| store.layer_dir(&digest, d));
        let layer = match unpacked {
            Some(dir) if !blob.exists() => LayerFiles::Unpacked(dir),
            _ => LayerFiles::Blob(blob),
        };
        let data_files = data_files_in_layer(&layer)
            .with_context(|| format!("cannot read the layer {digest} ({})", layer.path().display()))?;
        for (path, bytes) in data_files {
            findings.push(Finding {
                code: "data-in-layer",
                severity: "warning",
                message: format!(
                    "layer {} ({}) carries the data file /{path} ({})",
                    index + 1,
                    digest.short(),
                    human_bytes(bytes)
                ),
                hint: "data must not be baked into the image: read it from /safe_data at run time, and remove \
                       the COPY (a later `RUN rm` does not remove it from the earlier layer)"
                    .to_owned(),
            });
        }
    }
    let layers = manifest.layers().len();
    findings.push(Finding {
        code: "image-size",
        severity: if size > LARGE_IMAGE { "warning" } else { "info" },
        message: format!(
            "the image is {} compressed in {layers} layer{}, {platform}",
            human_bytes(size),
            plural(layers)
        ),
        hint: if size > LARGE_IMAGE {
            "large images are slow to bring into the TRE: use a slim base and a multi-stage build".to_owned()
        } else {
            String::new()
        },
    });
    Ok(findings)
}

/// Where one layer's files are read from.
enum LayerFiles {
    /// Its compressed blob.
    Blob(PathBuf),
    /// The layer unpacked alone, in a store that keeps no layer blobs: its
    /// files as its tar holds them (whiteouts are `.wh.` files).
    Unpacked(PathBuf),
}

impl LayerFiles {
    fn path(&self) -> &Path {
        match self {
            LayerFiles::Blob(path) | LayerFiles::Unpacked(path) => path,
        }
    }
}

/// The data-like files in one layer (paths without the leading `/`): any
/// size outside the places packages install to, large ones anywhere.
fn data_files_in_layer(layer: &LayerFiles) -> anyhow::Result<Vec<(String, u64)>> {
    let mut found = Vec::new();
    let mut consider = |path: String, size: u64| {
        if !ces_lint::rules::is_data_file(&path) || size == 0 {
            return;
        }
        let packaged = PACKAGE_PLACES.iter().any(|p| path.starts_with(p) || path.contains(&format!("/{p}")));
        if !packaged || size >= LARGE_DATA_FILE {
            found.push((path, size));
        }
    };
    match layer {
        LayerFiles::Blob(blob) => {
            let file = std::fs::File::open(blob)?;
            let mut archive = tar::Archive::new(ces_image::unpack::decompress(std::io::BufReader::new(file))?);
            for entry in archive.entries()? {
                let entry = entry?;
                if entry.header().entry_type().is_file() {
                    let path =
                        entry.path()?.to_string_lossy().trim_start_matches("./").trim_start_matches('/').to_owned();
                    consider(path, entry.size());
                }
            }
        }
        LayerFiles::Unpacked(root) => {
            use std::os::unix::fs::MetadataExt as _;
            // Each file once (a hard link is a second path to it, as in the
            // tar: those with links are remembered), no link followed.
            let mut seen = std::collections::HashSet::new();
            let mut dirs = vec![root.clone()];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir)? {
                    let entry = entry?;
                    let kind = entry.file_type()?;
                    if kind.is_dir() {
                        dirs.push(entry.path());
                    } else if kind.is_file() && !entry.file_name().as_encoded_bytes().starts_with(b".wh.") {
                        let meta = entry.metadata()?;
                        if meta.nlink() < 2 || seen.insert((meta.dev(), meta.ino())) {
                            let path = entry.path();
                            let relative = path.strip_prefix(root).unwrap_or(&path);
                            consider(relative.to_string_lossy().into_owned(), meta.len());
                        }
                    }
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

fn run_findings(lost: &[LostWrite], scratch: &[FileSize], exit: Exit) -> Vec<Finding> {
    let mut findings = Vec::new();
    if !lost.is_empty() {
        let total: u64 = lost.iter().map(|w| w.size).sum();
        let examples: Vec<&str> = lost.iter().take(5).map(|w| w.path.as_str()).collect();
        findings.push(Finding {
            code: "writes-lost",
            severity: "warning",
            message: format!(
                "{} file{} ({}) written outside /safe_outputs will be lost: {}{}",
                lost.len(),
                plural(lost.len()),
                human_bytes(total),
                examples.join(" "),
                if lost.len() > examples.len() { " ..." } else { "" }
            ),
            hint: "write results to /safe_outputs (kept) and temporary files to /scratch or $TMPDIR; \
                   everything else in the container is discarded at exit"
                .to_owned(),
        });
    }
    if !scratch.is_empty() {
        findings.push(Finding {
            code: "scratch-used",
            severity: "info",
            message: format!("{} file{} left in /scratch (removed at exit)", scratch.len(), plural(scratch.len())),
            hint: "copy anything you need to keep to /safe_outputs".to_owned(),
        });
    }
    if exit == Exit::Code(127) {
        findings.push(Finding {
            code: "command-not-found",
            severity: "warning",
            message: "exit code 127: the command was not found in the image".to_owned(),
            hint: "check the image's ENTRYPOINT/CMD, or the command given after the image".to_owned(),
        });
    }
    // The native sandbox kills (SIGSYS) a system call made through another
    // ABI than the native one (i386 `int 0x80`, x32): the one way vsock and
    // other sockets were reachable. Nothing else it denies kills.
    const SIGSYS: i32 = 31; // x86_64 and aarch64
    if exit == Exit::Signal(SIGSYS) {
        findings.push(Finding {
            code: "foreign-abi-syscall",
            severity: "warning",
            message: "killed by SIGSYS: the workload made a 32-bit (i386) or x32 system call, which the sandbox \
                      forbids"
                .to_owned(),
            hint: "build the image's programs for the native 64-bit ABI".to_owned(),
        });
    }
    findings
}

/// What is under `dir` but directories (paths prefixed with `prefix`),
/// leaving out the top-level names in `skip`; none when it cannot be read.
/// Walked by file descriptor, never through a link: as root under sudo, the
/// user can rename what is in these directories while ces lists them.
fn files_under(dir: &Path, prefix: &str, skip: &[&str]) -> Vec<FileSize> {
    let entries = ces_outputs::list(dir, skip).unwrap_or_default();
    let files = entries.into_iter().filter_map(|entry| {
        let size = match entry.kind {
            ces_outputs::Kind::Directory { .. } => return None,
            ces_outputs::Kind::File { size, .. } => size,
            ces_outputs::Kind::Symlink { target, .. } => target.len() as u64,
            _ => 0,
        };
        Some(FileSize { path: format!("{prefix}{}", entry.path), size })
    });
    files.collect()
}

/// Advice for the hosts a container tried, known ones first.
fn network_hints(network: &NetworkReport) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for attempt in &network.attempts {
        let host = match &attempt.what {
            AttemptKind::Dns { name, .. } => name.clone(),
            AttemptKind::Connect { name: Some(name), .. } => name.clone(),
            AttemptKind::Connect { address, .. } => address.to_string(),
        };
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts.iter().map(|host| format!("{host}: {}", hint_for(host))).collect()
}

fn hint_for(host: &str) -> &'static str {
    let is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    if is("huggingface.co") || is("hf.co") {
        "bake the model into the image at build time (e.g. `RUN python -c \"from huggingface_hub import \
         snapshot_download; snapshot_download('org/model')\"`) and set `ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1`"
    } else if is("pypi.org") || is("pythonhosted.org") || is("anaconda.org") || is("conda.anaconda.org") {
        "install packages at build time (`RUN pip install --no-cache-dir ...`), not when the analysis runs"
    } else if is("cran.r-project.org") || is("r-project.org") || is("posit.co") || is("rstudio.com") {
        "install R packages at build time (`RUN Rscript -e 'install.packages(...)'`), not when the analysis runs"
    } else if is("github.com") || is("githubusercontent.com") || is("gitlab.com") {
        "fetch code and files at build time and COPY them in; the TRE cannot reach code hosts"
    } else if is("pytorch.org") || is("download.pytorch.org") || is("tfhub.dev") || is("kaggle.com") {
        "download the model or weights at build time into the image and load them from that path"
    } else if is("spacy.io") || is("nltk.org") || host.contains("easyocr") {
        "download the language models at build time (e.g. `RUN python -m spacy download en_core_web_sm`)"
    } else {
        "the TRE has no network: anything this fetches must be in the image (build time) or in /safe_data"
    }
}

fn write_report(out: &mut impl std::io::Write, r: &Report) -> std::io::Result<()> {
    writeln!(out, "ces test: {} ({})", r.image, r.digest)?;
    if r.reasons.is_empty() {
        writeln!(out, "Verdict: READY")?;
    } else {
        writeln!(out, "Verdict: NOT READY")?;
        for reason in &r.reasons {
            writeln!(out, "  - {reason}")?;
        }
    }
    let how = match r.exit {
        Exit::Code(code) => format!("exit code {code}"),
        Exit::Signal(signal) => format!("killed by signal {signal}"),
        Exit::OutOfMemory => "out of memory".to_owned(),
        Exit::TimeLimit(_) => "stopped at its time limit".to_owned(),
    };
    let peak = r.peak_memory.map_or("not known".to_owned(), binary_bytes);
    writeln!(
        out,
        "\nRun:      {how}, {:.2} s, peak memory {peak} (limit {})",
        r.wall_seconds,
        binary_bytes(r.memory_limit)
    )?;
    if r.network.attempts.is_empty() {
        writeln!(out, "Network:  no attempts (good: the TRE has no network)")?;
    } else {
        writeln!(out, "Network:  {} distinct attempt(s); each will fail in the TRE:", r.network.attempts.len())?;
        for attempt in &r.network.attempts {
            let times = if attempt.count > 1 { format!(" ({} times)", attempt.count) } else { String::new() };
            writeln!(out, "  - {}{times}", attempt.what)?;
        }
        if r.network.dropped > 0 {
            writeln!(out, "  ... and {} more not listed", r.network.dropped)?;
        }
        for hint in &r.network_hints {
            writeln!(out, "  hint: {hint}")?;
        }
    }
    if !r.network.sockets.is_empty() {
        writeln!(out, "Sockets:  of families other than local, IP and netlink:")?;
        for s in &r.network.sockets {
            let times = if s.count > 1 { format!(" ({} times)", s.count) } else { String::new() };
            let how = if s.refused { "refused" } else { "left to the kernel, as in any run" };
            writeln!(out, "  - {}{times}: {how}", s.name)?;
        }
    }
    if let Some(d) = &r.devices {
        if d.used {
            let note = if d.nodes_own { "" } else { " (the host's nodes: another process may have opened them)" };
            writeln!(out, "Devices:  used: opened {}{note}", d.opened.join(", "))?;
        } else {
            writeln!(out, "Devices:  not used: {} given, none of {} opened", d.devices.join(", "), d.nodes.join(", "))?;
        }
    }
    let total: u64 = r.outputs.iter().map(|f| f.size).sum();
    writeln!(
        out,
        "Outputs:  {} file{} ({}) in {}",
        r.outputs.len(),
        plural(r.outputs.len()),
        human_bytes(total),
        r.outputs_dir.display()
    )?;
    for file in r.outputs.iter().take(10) {
        writeln!(out, "  - {} ({})", file.path, human_bytes(file.size))?;
    }
    if r.outputs.len() > 10 {
        writeln!(out, "  ... and {} more", r.outputs.len() - 10)?;
    }
    if !r.findings.is_empty() {
        writeln!(out, "Findings:")?;
        for finding in &r.findings {
            writeln!(out, "  {} [{}]: {}", finding.severity, finding.code, finding.message)?;
            if !finding.hint.is_empty() {
                writeln!(out, "    hint: {}", finding.hint)?;
            }
        }
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Hints for [`TestError`].
pub fn hints(error: &TestError) -> Vec<String> {
    match error {
        TestError::Runtime(_) => {
            vec!["drop --runtime: the verdict holds for podman too (same plan, same policy)".into()]
        }
        TestError::DryRun => Vec::new(),
        TestError::Data(_) => vec!["give a directory of test data shaped like the project's (never real data)".into()],
    }
}

/// Hints for a network that could not be observed.
pub fn observe_hints(error: &ces_runtime::native::ObserveError) -> Vec<String> {
    let ces_runtime::native::ObserveError::Setup { stage, source } = error;
    let errno = source.raw_os_error().map(rustix::io::Errno::from_raw_os_error);
    let denied = matches!(errno, Some(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM));
    match (*stage, errno) {
        ("opening /dev/net/tun", Some(rustix::io::Errno::NOENT | rustix::io::Errno::NODEV)) => {
            vec!["this kernel has no TUN device: as root, `modprobe tun`".into()]
        }
        ("opening /dev/net/tun", _) if denied => vec![
            "run as an unprivileged user, ces test needs /dev/net/tun open to all (crw-rw-rw-, the usual udev \
             default): as root, `chmod 0666 /dev/net/tun`; or run ces test as root"
                .into(),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGSYS: i32 = 31;

    #[test]
    fn a_foreign_abi_kill_is_a_finding() {
        let codes = |exit| run_findings(&[], &[], exit).into_iter().map(|f| f.code).collect::<Vec<_>>();
        assert_eq!(codes(Exit::Signal(SIGSYS)), ["foreign-abi-syscall"]);
        assert_eq!(codes(Exit::Signal(9)), Vec::<&str>::new());
        assert_eq!(codes(Exit::Code(0)), Vec::<&str>::new());
    }

    /// The user of a `sudo ces test` swaps a directory of their outputs for
    /// a link to one only root can read, again and again, while root lists
    /// the outputs: the listing never shows what is behind the link.
    #[test]
    fn a_directory_swapped_for_a_link_is_not_followed() {
        #![allow(clippy::unwrap_used)]
        use std::sync::atomic::{AtomicBool, Ordering};
        let temp = tempfile::tempdir().unwrap();
        let (outputs, secret) = (temp.path().join("outputs"), temp.path().join("secret"));
        std::fs::create_dir_all(outputs.join("d")).unwrap();
        std::fs::write(outputs.join("d/mine"), "x").unwrap();
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("SECRET"), "y").unwrap();
        std::os::unix::fs::symlink(&secret, outputs.join("l")).unwrap();
        let stop = AtomicBool::new(false);
        let (mut listings, mut saw_mine, mut behind) = (0, 0, None);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let (d, l) = (outputs.join("d"), outputs.join("l"));
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &d,
                        rustix::fs::CWD,
                        &l,
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .unwrap();
                }
            });
            while listings < 20_000 && behind.is_none() {
                let paths: Vec<String> = files_under(&outputs, "", &[]).into_iter().map(|f| f.path).collect();
                saw_mine += usize::from(paths.iter().any(|p| p.ends_with("/mine")));
                behind = paths.iter().any(|p| p.contains("SECRET")).then_some(paths);
                listings += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(behind, None, "listed behind a link, at listing {listings}");
        // The directory was listed through its real place, many times.
        assert!(saw_mine > 0, "the swapped directory was never listed");
    }
}
