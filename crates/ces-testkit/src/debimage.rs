//! Container images of real apps (PostgreSQL, Jupyter, ...) built from
//! Debian 12 packages, for the tests that run them with `ces run`.
//!
//! [`DebImage::get`] builds the root with mmdebstrap (`minbase` plus the
//! packages, no recommends, no docs, man pages or locales), runs the image's
//! recipe on it, packs it as one zstd layer in an OCI archive (the form `ces
//! load` takes) and caches it by content under
//! [`CACHE_ROOT`]`/<name>/<key>/image.tar`, the key being a hash of
//! everything that goes into it (mirror, suite, packages, recipe, config).
//! As for the VM image ([`crate::vm`], whose helpers this reuses), the build
//! happens in a temporary directory renamed into place under a lock, so test
//! binaries running at the same time build it once, and a new build of a
//! name removes that name's older images that no one holds.

use std::fs::File;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::image::{CREATED, REF_NAME_ANNOTATION, oci, sha256_digest};
use crate::vm::{MIRROR, dir_size, is_root, remove_matching, remove_unused_images, run, tool, which};

/// Where built images are kept: `<name>/<key>/image.tar`.
pub const CACHE_ROOT: &str = "/var/cache/ces-test/images";

/// What the host needs to build an image, and the package that has it.
const HOST_TOOLS: &[(&str, &str)] = &[("mmdebstrap", "mmdebstrap"), ("tar", "tar"), ("zstd", "zstd")];

/// Media type of the one layer.
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// An image to build from Debian 12 (bookworm) packages.
#[derive(Debug, Clone)]
pub struct DebImage {
    /// A short name: the cache directory and the image's repository.
    pub name: String,
    /// Installed on top of `minbase`, without recommends.
    pub packages: Vec<String>,
    /// A shell script run on the host as root with the root directory as
    /// `$1` (use `chroot "$1" ...` to run something inside).
    pub recipe: String,
    /// The config's `User` (a name from the image's `/etc/passwd`).
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

/// A built (or cached) image.
#[derive(Debug)]
pub struct Built {
    /// The OCI archive, readable by every user (`ces load` it).
    pub archive: PathBuf,
    /// The reference the archive names its image by.
    pub reference: String,
    /// How long the build took, or `None` when it came from the cache.
    pub built_in: Option<Duration>,
    /// Bytes of the archive.
    pub size: u64,
    /// A shared lock on `<key>.lock` while in use.
    _lock: File,
}

impl DebImage {
    /// An image named `name` of these packages, with no recipe and an empty config.
    pub fn new(name: &str, packages: &[&str]) -> DebImage {
        DebImage {
            name: name.to_owned(),
            packages: packages.iter().map(|p| p.to_string()).collect(),
            recipe: String::new(),
            user: None,
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            workdir: None,
        }
    }
    /// The customizing script (see [`DebImage::recipe`]).
    pub fn recipe(mut self, script: &str) -> Self {
        self.recipe = script.to_owned();
        self
    }
    /// The config's `User`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }
    /// The config's `Entrypoint`.
    pub fn entrypoint(mut self, argv: &[&str]) -> Self {
        self.entrypoint = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }
    /// The config's `Cmd`.
    pub fn cmd(mut self, argv: &[&str]) -> Self {
        self.cmd = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }
    /// The config's `Env` (`NAME=value`).
    pub fn env(mut self, vars: &[&str]) -> Self {
        self.env = vars.iter().map(|s| s.to_string()).collect();
        self
    }
    /// The config's `WorkingDir`.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = Some(dir.to_owned());
        self
    }

    /// The image config's `config` object.
    fn run_config(&self) -> Value {
        let mut env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()];
        env.extend(self.env.iter().cloned());
        let mut config = json!({ "Env": env });
        if let Some(user) = &self.user {
            config["User"] = json!(user);
        }
        if let Some(entrypoint) = &self.entrypoint {
            config["Entrypoint"] = json!(entrypoint);
        }
        if let Some(cmd) = &self.cmd {
            config["Cmd"] = json!(cmd);
        }
        if let Some(workdir) = &self.workdir {
            config["WorkingDir"] = json!(workdir);
        }
        config
    }

    /// The content key: a hash of everything that goes into the image.
    pub fn key(&self) -> String {
        let mut hash = Sha256::new();
        let config = self.run_config().to_string();
        for part in [MIRROR, "bookworm", &self.packages.join(","), &self.recipe, &config, PACK_VERSION] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hex::encode(hash.finalize())[..16].to_owned()
    }

    /// The reference the archive names the image by.
    pub fn reference(&self) -> String {
        format!("localhost/ces-test/{}:{}", self.name, self.key())
    }

    /// The image, built now if the cache lacks it (minutes: it downloads
    /// Debian packages from [`MIRROR`]).
    pub fn get(&self) -> Result<Built, String> {
        if let Some(problem) = host_problem() {
            return Err(problem);
        }
        let root = Path::new(CACHE_ROOT).join(&self.name);
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        // The test user loads the archive too: every directory on the way is 0755.
        for dir in [Path::new("/var/cache/ces-test"), Path::new(CACHE_ROOT), &root] {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
        let key = self.key();
        let dir = root.join(&key);
        let archive = dir.join("image.tar");
        let lock_path = root.join(format!("{key}.lock"));
        let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
        // Another test binary may be building it: wait for it, then reuse.
        lock.lock().map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
        let mut built_in = None;
        if !archive.is_file() {
            remove_matching(&root, &format!(".build-{key}-"));
            let started = Instant::now();
            eprintln!("ces-testkit debimage: building {} {key} (once; cached in {})", self.name, dir.display());
            self.build(&root, &key, &dir)?;
            built_in = Some(started.elapsed());
            eprintln!("ces-testkit debimage: built {} in {:.0?}", self.name, started.elapsed());
            remove_unused_images(&root, &key);
        }
        lock.lock_shared().map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
        let size = std::fs::metadata(&archive).map_err(|e| format!("{}: {e}", archive.display()))?.len();
        Ok(Built { archive, reference: self.reference(), built_in, size, _lock: lock })
    }

    /// Builds into a temporary directory beside `dir`, then renames it into place.
    fn build(&self, root: &Path, key: &str, dir: &Path) -> Result<(), String> {
        let tmp =
            tempfile::Builder::new().prefix(&format!(".build-{key}-")).tempdir_in(root).map_err(|e| e.to_string())?;
        let rootfs = tmp.path().join("rootfs");
        let mut mmdebstrap = Command::new(tool("mmdebstrap"));
        mmdebstrap
            .args(["--quiet", "--variant=minbase", "--aptopt=APT::Install-Recommends \"false\""])
            .args(["--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*"])
            .args(["--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*"])
            // The apt lists and caches are of no use in the image.
            .arg("--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*");
        if !self.packages.is_empty() {
            mmdebstrap.arg(format!("--include={}", self.packages.join(",")));
        }
        run(mmdebstrap.arg("bookworm").arg(&rootfs).arg(MIRROR), "mmdebstrap")?;
        if !self.recipe.is_empty() {
            run(Command::new("sh").args(["-c", &self.recipe, "sh"]).arg(&rootfs), "the image recipe")?;
        }
        let layout = tmp.path().join("layout");
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
        // One layer: the root as GNU tar writes it, owners by number, no
        // device nodes (the runtime makes /dev).
        let layer_tar = tmp.path().join("layer.tar");
        run(
            Command::new("tar")
                .args(["--create", "--numeric-owner", "--sort=name", "--xattrs", "--exclude=./dev/*"])
                .arg("--file")
                .arg(&layer_tar)
                .arg("-C")
                .arg(&rootfs)
                .arg("."),
            "tar (the layer)",
        )?;
        let diff_id = file_digest(&layer_tar)?;
        std::fs::remove_dir_all(&rootfs).map_err(|e| e.to_string())?;
        let layer_zst = tmp.path().join("layer.tar.zst");
        run(Command::new("zstd").args(["-q", "-T0", "-3", "--rm", "-o"]).arg(&layer_zst).arg(&layer_tar), "zstd")?;
        let layer_digest = file_digest(&layer_zst)?;
        let layer_size = std::fs::metadata(&layer_zst).map_err(|e| e.to_string())?.len();
        std::fs::rename(&layer_zst, blobs.join(&layer_digest["sha256:".len()..])).map_err(|e| e.to_string())?;

        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": CREATED,
            "config": self.run_config(),
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": CREATED, "created_by": format!("ces-testkit debimage {}", self.name) }],
        });
        let config = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": oci::MANIFEST,
            "config": { "mediaType": oci::CONFIG, "digest": sha256_digest(&config), "size": config.len() },
            "layers": [{ "mediaType": LAYER_ZSTD, "digest": layer_digest, "size": layer_size }],
        });
        let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": oci::INDEX,
            "manifests": [{
                "mediaType": oci::MANIFEST,
                "digest": sha256_digest(&manifest),
                "size": manifest.len(),
                "annotations": { REF_NAME_ANNOTATION: self.reference() },
            }],
        });
        for blob in [&config, &manifest] {
            std::fs::write(blobs.join(&sha256_digest(blob)["sha256:".len()..]), blob).map_err(|e| e.to_string())?;
        }
        std::fs::write(layout.join("index.json"), index.to_string()).map_err(|e| e.to_string())?;
        std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| e.to_string())?;
        let archive = tmp.path().join("image.tar");
        run(
            Command::new("tar")
                .args(["--create", "--owner=0", "--group=0", "--numeric-owner", "--sort=name", "--file"])
                .arg(&archive)
                .arg("-C")
                .arg(&layout)
                .arg("."),
            "tar (the archive)",
        )?;
        std::fs::remove_dir_all(&layout).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())?;
        // A temporary directory is 0700: the test user reads the archive too.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        eprintln!(
            "ces-testkit debimage: {} is {} MiB (root {} MiB)",
            self.name,
            std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0) >> 20,
            dir_size(tmp.path()) >> 20
        );
        let built = tmp.keep();
        std::fs::rename(&built, dir).map_err(|e| format!("rename {} to {}: {e}", built.display(), dir.display()))
    }
}

/// Bumped when the packing above changes (part of the key).
const PACK_VERSION: &str = "1";

/// `sha256:<hex>` of a file, streamed.
fn file_digest(path: &Path) -> Result<String, String> {
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("sha256:{}", hex::encode(hash.finalize())))
}

/// Why the host cannot build the images, or `None` when it can.
pub fn host_problem() -> Option<String> {
    let missing: Vec<(&str, &str)> = HOST_TOOLS.iter().copied().filter(|(t, _)| which(t).is_none()).collect();
    if !missing.is_empty() {
        let tools: Vec<&str> = missing.iter().map(|m| m.0).collect();
        let packages: Vec<&str> = missing.iter().map(|m| m.1).collect();
        return Some(format!(
            "the app tests build Debian images with {}; install them with `scripts/setup --tests` or \
             `apt-get install {}`",
            tools.join(", "),
            packages.join(" ")
        ));
    }
    if !is_root() {
        return Some("the app tests build Debian images with mmdebstrap: run them as root".into());
    }
    None
}
