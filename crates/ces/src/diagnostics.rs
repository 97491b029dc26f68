//! How a failure reaches the user: one `error:` line with the cause chain,
//! then `hint:` lines where a fix is known.

use ces_image::StoreError;
use ces_image::archive::LoadError;
use ces_image::quota::Shortfall;
use ces_image::reference::ReferenceError;
use ces_registry::RegistryError;

use crate::commands::run::RunError;
use crate::run_options::OptionError;
use crate::settings::ConfigError;

/// Exit code for ces's own failures (as podman uses it).
pub const EXIT_ERROR: u8 = 125;

/// At most this many bytes of each cause of an error line.
const MAX_CAUSE: usize = 2048;

/// The error line: each cause once, joined with `: `.
pub fn message(error: &anyhow::Error) -> String {
    one_line(error.as_ref())
}

/// An error and its causes on one line, each once (as `error:` lines show
/// them), for an error that is not (yet) an [`anyhow::Error`].
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(error);
    while let Some(e) = cause {
        // A cause may carry a registry's or an image's text: escaped and
        // cut, so the line stays one line a terminal shows as it is.
        let text = ces_image::quote::escape_message(&e.to_string(), MAX_CAUSE);
        // `#[error(transparent)]` wrappers repeat their source's text.
        if parts.last().is_none_or(|last| *last != text) {
            parts.push(text);
        }
        cause = e.source();
    }
    parts.join(": ")
}

/// Hints for the first cause ces knows how to fix, or, where none says
/// what to do, for a disk or quota that is full somewhere in the chain (a
/// run's record, its directories, the proxy's cache). `config` names the
/// config file.
pub fn hints(error: &anyhow::Error, config: &str) -> Vec<String> {
    let known = known_hints(error, config);
    if !known.is_empty() {
        return known;
    }
    error
        .chain()
        .find_map(|cause| space_hint(cause.downcast_ref::<std::io::Error>()?))
        .map(|hint| vec![hint.to_owned()])
        .unwrap_or_default()
}

/// The hint for a write that failed for want of room: on the disk
/// (`ENOSPC`) or in the quota (`EDQUOT`).
fn space_hint(error: &std::io::Error) -> Option<&'static str> {
    match error.raw_os_error()? {
        code if code == rustix::io::Errno::NOSPC.raw_os_error() => Some(DISK_FULL),
        code if code == rustix::io::Errno::DQUOT.raw_os_error() => Some(QUOTA_FULL),
        _ => None,
    }
}

/// For a disk that is full.
const DISK_FULL: &str = "free some space (ces gc, ces rmi), or set [storage] root to a larger disk";
/// For a user's disk quota that is used up.
const QUOTA_FULL: &str = "free some of your quota (ces images --disk shows what each image takes; ces rmi IMAGE and ces gc free it); [storage] keep_layer_blobs = false, then ces gc, keeps the store about a quarter smaller; or put [storage] root where you have room (where the machine's policy lets users bring a config)";

fn known_hints(error: &anyhow::Error, config: &str) -> Vec<String> {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<LoadError>() {
            return load_hints(e, config);
        }
        if let Some(e) = cause.downcast_ref::<RegistryError>() {
            return registry_hints(e, config);
        }
        if let Some(e) = cause.downcast_ref::<crate::policy::PolicyError>() {
            return crate::policy::hints(e);
        }
        if let Some(e) = cause.downcast_ref::<ces_runtime::native::ports::PortError>() {
            return crate::commands::run::ports::hints(e);
        }
        if let Some(ces_runtime::RuntimeError::NoAcl { .. }) = cause.downcast_ref() {
            return vec!["use the native runtime (the default), or put [storage] root on a local file system with POSIX ACLs (ext4 and btrfs unless mounted noacl, xfs; NFS often has none)".into()];
        }
        if let Some(ces_runtime::RuntimeError::Unsupported { what: ces_runtime::podman::PORTS, .. }) =
            cause.downcast_ref()
        {
            return vec!["use the native runtime (the default): it publishes ports on the host's loopback and gives the container no network".into()];
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return store_hints(e);
        }
        if cause.downcast_ref::<ReferenceError>().is_some() {
            return vec![
                "references look like ghcr.io/<namespace>/<name>:<tag> or ghcr.io/<namespace>/<name>@sha256:<digest>"
                    .into(),
            ];
        }
        if cause.downcast_ref::<crate::settings::SudoConfigRefused>().is_some() {
            return vec![format!(
                "drop --config and unset CES_CONFIG, or ask the operator to change {config}: under sudo ces runs as root, so [policy] allow_user_config does not apply"
            )];
        }
        if cause.downcast_ref::<crate::settings::UserConfigRefused>().is_some() {
            return vec!["drop --config and unset CES_CONFIG; if users should bring their own config, the operator sets [policy] allow_user_config = true".into()];
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return vec!["see docs/config.md for the settings and their types".into()];
        }
        if let Some(e) = cause.downcast_ref::<OptionError>() {
            return option_hints(e);
        }
        if let Some(e) = cause.downcast_ref::<ces_runtime::plan::PlanError>() {
            return plan_hints(e, config);
        }
        if let Some(e) = cause.downcast_ref::<crate::commands::run::slurm::SlurmError>() {
            return crate::commands::run::slurm::hints(e);
        }
        if let Some(e) = cause.downcast_ref::<crate::commands::run::k8s::K8sError>() {
            return crate::commands::run::k8s::hints(e);
        }
        if let Some(e) = cause.downcast_ref::<crate::commands::lint::ContextError>() {
            return crate::commands::lint::hints(e);
        }
        if let Some(e) = cause.downcast_ref::<crate::cdi::DeviceError>() {
            return crate::cdi::hints(e);
        }
        if let Some(e) = cause.downcast_ref::<RunError>() {
            return run_hints(e, config);
        }
        if let Some(e) = cause.downcast_ref::<crate::commands::test::TestError>() {
            return crate::commands::test::hints(e);
        }
        if let Some(ces_runtime::native::NativeError::Observe(e)) = cause.downcast_ref() {
            return crate::commands::test::observe_hints(e);
        }
        if let Some(e) = cause.downcast_ref::<ces_audit::AuditError>() {
            return audit_hints(e, config);
        }
        if cause.downcast_ref::<ces_runtime::podman::PodmanFailed>().is_some() {
            return vec!["podman's own message is above; `podman info` shows whether podman works here".into()];
        }
    }
    Vec::new()
}

fn registry_hints(error: &RegistryError, config: &str) -> Vec<String> {
    match error {
        RegistryError::NotAllowed { .. } => vec![format!(
            "only approved registries can be pulled from; ask the TRE operator to add it to [registries] allowed in {config}"
        )],
        RegistryError::Unreachable { registry, .. } => vec![format!(
            "check the name {registry} and that this machine can reach it; a local registry over plain HTTP must be listed in [registries] insecure in {config}"
        )],
        RegistryError::BadCredentials { .. } => vec![
            "check the user name and token; for ghcr.io use a personal access token with the read:packages scope".into(),
        ],
        RegistryError::Unauthorized { anonymous: true, .. } => vec![
            "if the image is private, give a user and token: ces pull --user USER --password-stdin IMAGE (or CES_REGISTRY_TOKEN)".into(),
            "if it is public, check the repository name".into(),
        ],
        RegistryError::Unauthorized { anonymous: false, .. } => {
            vec!["this account cannot read the repository; ask its owner for access, or check the name".into()]
        }
        RegistryError::NotFound { .. } => vec!["check the repository name and the tag (both are case-sensitive)".into()],
        RegistryError::NoPlatform { platform, .. } => vec![format!(
            "build and push the image for {platform}, e.g. docker buildx build --platform {platform} ..."
        )],
        RegistryError::ManifestDigestMismatch { .. } => {
            vec!["the registry served a manifest that is not the one pinned; nothing was stored".into()]
        }
        RegistryError::Transfer { .. } | RegistryError::ShortBody { .. } => {
            vec!["the download broke off; run the pull again (verified blobs are reused)".into()]
        }
        RegistryError::GaveUp { last, .. } => {
            let mut hints = registry_hints(last, config);
            hints.push("the registry is failing or rate-limiting: run the pull again later (verified blobs are reused)".into());
            hints
        }
        RegistryError::Downgrade { host, .. } => vec![format!(
            "the registry sent ces to plain http, where credentials travel in clear and content can be swapped; only if {host} is a trusted local host, list it in [registries] insecure in {config}"
        )],
        RegistryError::RedirectDenied { host, .. } => vec![format!(
            "the registry's storage at {host} refused the download; this is the registry's fault (report it), or try again later"
        )],
        RegistryError::Proxy { status, .. } if status.as_u16() == 401 || status.as_u16() == 403 => vec![
            "the pull proxy decides who may pull what: CES_PROXY_USER and CES_PROXY_PASSWORD name you to it; its operator enables users and repositories; a private repository needs your own registry credentials too (--user, with the token)".into(),
        ],
        RegistryError::Proxy { .. } => {
            vec!["the pull proxy's operator can tell more from its log and audit log; try again later".into()]
        }
        RegistryError::RedirectOff { host, .. } => vec![format!(
            "the pull proxy's operator lists the hosts an upstream may redirect to (redirect_hosts); {host} is not one"
        )],
        RegistryError::NotFoundAt { host, .. } => {
            vec![format!("the registry's storage at {host} has lost the content; report it to the registry")]
        }
        RegistryError::RedirectLoop { .. } | RegistryError::BadRedirect { .. } => {
            vec!["the registry is misconfigured; report it to the registry's operator".into()]
        }
        RegistryError::ImageTooLarge { limit, .. } => vec![format!(
            "[storage] max_image_size in {config} is {limit} bytes; ask the operator to raise it, or make the image smaller"
        )],
        RegistryError::NoRoom { needed, shortfall, .. } => room_hints(*needed, shortfall, config),
        RegistryError::Store(e) => store_hints(e),
        RegistryError::MissingLabel { label, .. } if label == ces_image::provenance::SOURCE => {
            vec![crate::policy::SOURCE_LABEL_HINT.into()]
        }
        RegistryError::MissingLabel { .. } | RegistryError::BadConfig { .. } | RegistryError::TooLarge { .. }
        | RegistryError::Status { .. }
        | RegistryError::BadRange { .. }
        | RegistryError::BadAuth { .. }
        | RegistryError::Manifest(_)
        | RegistryError::Client(_) => Vec::new(),
    }
}

/// Hints for `needed` bytes that a disk or a quota has no room for.
fn room_hints(needed: u64, shortfall: &Shortfall, config: &str) -> Vec<String> {
    match shortfall {
        Shortfall::Disk { .. } => vec![format!(
            "free space (ces rmi IMAGE removes an image and the blobs only it used; ces gc the rest), or set [storage] root in {config} to a larger file system"
        )],
        Shortfall::Quota(quota) if needed > quota.limit => vec![format!(
            "the image is larger than the whole quota: ask for a larger one, or put [storage] root in {config} where you have room (where the machine's policy lets users bring a config)"
        )],
        Shortfall::Quota(_) => vec![QUOTA_FULL.into()],
    }
}

fn load_hints(error: &LoadError, config: &str) -> Vec<String> {
    const FORMATS: &str = "ces load reads OCI archives (skopeo copy ... oci-archive:FILE, podman save --format oci-archive) and docker save tarballs, plain or gzip/zstd compressed";
    const DAMAGED: &str = "the file was damaged or cut short on its way in; compare its size and sha256 with the original's and bring it in again (nothing was named in the store)";
    match error {
        LoadError::NoName { tag, .. } => vec![format!(
            "name it: ces load --tag ghcr.io/<namespace>/<name>:{} FILE",
            tag.as_deref().unwrap_or("<tag>")
        )],
        LoadError::BadName { .. } => vec!["name it: ces load --tag ghcr.io/<namespace>/<name>:<tag> FILE".into()],
        LoadError::SeveralImages { .. } => {
            vec!["leave out --tag to keep the names the archive gives its images, or save one image per archive".into()]
        }
        LoadError::NoPlatform { platform, .. } => vec![format!(
            "save or build the image for {platform} (e.g. skopeo copy --override-arch {arch} ..., docker buildx build --platform {platform} ...)",
            arch = platform.rsplit('/').next().unwrap_or(platform)
        )],
        LoadError::Blob { source, .. } => match source {
            StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. } | StoreError::TooLong { .. } => {
                vec![DAMAGED.into()]
            }
            other => store_hints(other),
        },
        LoadError::Truncated { .. } | LoadError::Corrupt { .. } | LoadError::BlobSize { .. } => vec![DAMAGED.into()],
        LoadError::NotATar { .. } | LoadError::Empty | LoadError::Unrecognized | LoadError::UnsupportedLayout { .. } => {
            vec![FORMATS.into()]
        }
        LoadError::MissingBlob { .. } | LoadError::MissingFile { .. } => vec![
            "the archive is incomplete; save it again with every blob (docker save IMAGE, or skopeo copy docker://IMAGE oci-archive:FILE)".into(),
        ],
        LoadError::UnsafeEntry { .. } | LoadError::ExtensionTooLarge(_) | LoadError::NamesTooLong { .. } => {
            vec!["no image tool writes such an archive: do not use it, and report it".into()]
        }
        LoadError::NoRoom { needed, shortfall, .. } => room_hints(*needed, shortfall, config),
        LoadError::TooManyNames { .. } => {
            vec!["name the image yourself: ces load --tag ghcr.io/<namespace>/<name>:<tag> FILE".into()]
        }
        LoadError::Store(e) => store_hints(e),
        LoadError::Read { .. }
        | LoadError::TooManyEntries { .. }
        | LoadError::JsonTooLarge { .. }
        | LoadError::InvalidJson { .. }
        | LoadError::NoImages
        | LoadError::Manifest(_)
        | LoadError::IndexTooDeep { .. }
        | LoadError::NameDigest { .. }
        | LoadError::LayerCount { .. }
        | LoadError::DiffId { .. } => Vec::new(),
    }
}

fn option_hints(error: &OptionError) -> Vec<String> {
    match error {
        OptionError::Widening { .. } => vec![
            "every ces container runs with no network, no added privileges and only the TRE directories (/safe_data, /safe_outputs, /scratch); ces run --help lists the options it takes".into(),
        ],
        OptionError::Unknown { .. } | OptionError::NotAnOption { .. } | OptionError::Invalid { .. } => {
            vec!["ces run --help lists the options ces run takes; arguments for the container go after the image".into()]
        }
        OptionError::NotInFile { .. } => vec!["give it on the command line instead".into()],
        OptionError::Mount { .. } | OptionError::Volume { .. } => vec![
            "mounts ces run adds: --mount type=tmpfs,destination=/path[,tmpfs-size=64m]; where [run] bind_roots allows, -v SRC:DST[:ro] or --mount type=bind,src=DIR,dst=/path[,ro]".into(),
        ],
        OptionError::Quotes { .. } => vec!["option files are split like a shell command line: close each quote".into()],
        OptionError::Read { .. } => Vec::new(),
    }
}

fn plan_hints(error: &ces_runtime::plan::PlanError, config: &str) -> Vec<String> {
    use ces_runtime::plan::PlanError;
    match error {
        PlanError::SafeDataNotFound { .. } => vec![format!(
            "ask the TRE operator which project directory is yours ([tre] safe_data_root and project in {config}), or create $HOME/safe_data"
        )],
        PlanError::NoCommand => vec!["give the command after the image: ces run IMAGE COMMAND [ARGS...]".into()],
        PlanError::User { .. } => {
            vec!["the image's USER must exist in its /etc/passwd, or be numeric (USER 1000:1000)".into()]
        }
        PlanError::FileLine { .. } | PlanError::EnvArg { .. } => vec![
            "env files hold NAME=value lines (no quotes; # starts a comment line); names are letters, digits, _ . - and do not start with a digit".into(),
        ],
        PlanError::Value { .. }
        | PlanError::BadProject(_)
        | PlanError::SafeDataLink { .. }
        | PlanError::Tmpfs { .. }
        | PlanError::Workdir { .. } => Vec::new(),
    }
}

fn run_hints(error: &RunError, config: &str) -> Vec<String> {
    match error {
        RunError::MissingParent { .. } | RunError::NoHome { .. } => vec![format!(
            "create it, or ask the TRE operator to set [tre] outputs_parent and scratch_parent in {config}"
        )],
        RunError::LooksLikeMount(_) => vec![
            "a container sees only /safe_data, /safe_outputs and /scratch: put the files in your project's data, \
             or use --mount type=tmpfs,destination=PATH for an empty writable directory"
                .into(),
        ],
        RunError::NoTerminal => vec![
            "run it from a terminal, or drop -t (-i alone passes piped input: cat data | ces run -i IMAGE ...)".into(),
        ],
        RunError::BadName(_) | RunError::BadEntrypoint { .. } | RunError::TooManyCores { .. } => Vec::new(),
        RunError::WaitWithoutScheduler => vec!["leave --wait out: ces waits for a run on this machine anyway".into()],
    }
}

/// The hint for an audit log whose file system or quota is full.
const AUDIT_LOG_FULL: &str = "the file system holding the audit log, or your disk quota there, is full (the log was left as it was): free some space (ces images --disk, ces rmi, ces gc) and try again";

fn audit_hints(error: &ces_audit::AuditError, config: &str) -> Vec<String> {
    use ces_audit::AuditError;
    match error {
        // (A write cut short is a disk or a quota that filled up, but for a
        // file size limit: the log was left as it was.)
        AuditError::Io { source, .. } if space_hint(source).is_some() => vec![AUDIT_LOG_FULL.into()],
        AuditError::ShortWrite { .. } => vec![AUDIT_LOG_FULL.into()],
        AuditError::Io { .. } | AuditError::Lock { .. } => vec![format!(
            "every pull, load and run is recorded in the audit log ([audit] path in {config}); nothing is done that could not be recorded: ask the TRE operator"
        )],
        AuditError::DamagedTail { .. } | AuditError::NotARecord { .. } => vec![
            "ces audit verify names the first damaged record; the TRE operator decides how to repair or rotate the log (see docs/governance.md)".into(),
        ],
        AuditError::ForeignLock { path, .. } => vec![format!(
            "the TRE operator removes {} (the log's writers make their own) and looks at who made it",
            path.display()
        )],
        AuditError::Encode(_) => Vec::new(),
    }
}

fn store_hints(error: &StoreError) -> Vec<String> {
    match error {
        StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. } | StoreError::TooLong { .. } => vec![
            "the registry served corrupt data; it was discarded and nothing was stored. Try again, and report it to the registry's owner if it persists".into(),
        ],
        StoreError::UnpackedTooLarge { .. } => vec![
            "nothing of it was kept; ask the operator to raise [storage] max_image_size, or make the image smaller"
                .into(),
        ],
        StoreError::DiskFull { .. } => vec![DISK_FULL.into()],
        StoreError::QuotaExceeded { .. } => vec![QUOTA_FULL.into()],
        StoreError::TooManyLoaded { .. } => vec![
            "remove the names you no longer need: ces images lists yours (loads are marked (loaded)), ces rmi NAME removes one".into(),
        ],
        StoreError::ImageNotFound { query } => vec![format!("pull it first (ces pull {query}), or list the stored images with ces images")],
        StoreError::Ambiguous { .. } => vec!["give more digits, or the full reference".into()],
        StoreError::Unpack { source: ces_image::unpack::UnpackError::Escape { .. }, .. } => vec![
            "the layer tries to write outside the image's filesystem: do not use this image, and report it".into(),
        ],
        StoreError::MissingBlob { .. } => vec!["the store is damaged; pull the image again to repair it".into()],
        StoreError::LayerBlobDropped { .. } => vec![
            "pull the image again (ces pull fetches the blobs it needs, and keeps them); an image brought in with ces load must be loaded again".into(),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_escape_and_cut_what_a_registry_said() {
        let said = format!("denied: \x1b]8;;http://evil\x07click\x1b]8;;\x07\nline two{}", "x".repeat(10_000));
        let error = anyhow::anyhow!(said).context("cannot pull r/x");
        let line = message(&error);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("cannot pull r/x: denied: \\x1b]8;;http://evil\\x07click"), "{line}");
        assert!(line.len() < 2 * MAX_CAUSE, "{}", line.len());
    }

    /// A store over its quota, however the error reaches the top (a load's
    /// blob, a pull's unpacking, the audit log), gets a hint that says so.
    #[test]
    fn a_full_quota_is_said_with_what_to_do() {
        let quota = || StoreError::QuotaExceeded { path: "/home/u/.local/share/ces/tmp/blob-x".into() };
        let errors = [
            anyhow::Error::new(ces_image::archive::LoadError::Blob {
                entry: "blobs/sha256/ab".into(),
                source: quota(),
            }),
            anyhow::Error::new(RegistryError::Store(quota())),
            anyhow::Error::new(quota()).context("cannot pull r/x"),
        ];
        for error in &errors {
            assert!(message(error).contains("disk quota exceeded on the file system holding /home/u/"), "{error:#}");
            assert!(hints(error, "config.toml").iter().any(|h| h.starts_with("free some of your quota")), "{error:#}");
        }
        let audit = ces_audit::AuditError::Io {
            action: "write",
            path: "/home/u/.local/share/ces/audit.jsonl".into(),
            source: std::io::Error::from_raw_os_error(rustix::io::Errno::DQUOT.raw_os_error()),
        };
        let hinted = hints(&anyhow::Error::new(audit), "config.toml");
        assert!(hinted.iter().any(|h| h.starts_with("the file system holding the audit log, or your disk quota")));
        // Where ces knows no better (a run's own record), the cause says it.
        let record = anyhow::Error::new(std::io::Error::from_raw_os_error(rustix::io::Errno::DQUOT.raw_os_error()))
            .context("cannot write the run record /home/u/.local/share/ces/runs/x/record.json");
        assert!(hints(&record, "config.toml").iter().any(|h| h.starts_with("free some of your quota")));
        let plain = anyhow::Error::new(std::io::Error::from_raw_os_error(rustix::io::Errno::ACCESS.raw_os_error()));
        assert!(hints(&plain, "config.toml").is_empty());
    }

    #[test]
    fn a_pull_past_the_quota_says_whether_freeing_some_can_help() {
        let over = |needed, left, limit| {
            let holder = ces_registry::quota::Holder::User;
            let quota = ces_registry::quota::Quota { holder, limit, used: limit - left, left };
            let shortfall = Shortfall::Quota(quota);
            anyhow::Error::new(RegistryError::NoRoom { path: "/home/u/ces".into(), needed, shortfall })
        };
        let error = over(600, 500, 1000);
        assert_eq!(
            message(&error),
            "not enough disk quota left on the file system holding /home/u/ces: 600 bytes to download, 500 left of your quota of 1000"
        );
        assert!(hints(&error, "config.toml")[0].starts_with("free some of your quota (ces images --disk"));
        // Nothing freed would make room.
        let hinted = hints(&over(1001, 900, 1000), "config.toml");
        assert!(hinted[0].starts_with("the image is larger than the whole quota: ask for a larger one"), "{hinted:?}");
    }

    /// The refusals this store's newer limits give (a user's loaded names,
    /// a lock of the audit log that its writers did not make, rootful podman
    /// without ACLs) name what they are about and say what to do.
    #[test]
    fn newer_refusals_say_what_to_do() {
        let names = anyhow::Error::new(ces_image::archive::LoadError::Store(StoreError::TooManyLoaded {
            count: 1025,
            limit: 1024,
        }))
        .context("cannot load /airlock/many.tar");
        assert!(message(&names).starts_with("cannot load /airlock/many.tar: your loads would name 1025"), "{names:#}");
        assert!(hints(&names, "c.toml")[0].contains("ces rmi NAME"), "{names:#}");
        let lock = anyhow::Error::new(ces_audit::AuditError::ForeignLock {
            path: "/var/lib/ces/audit.jsonl.lock".into(),
            uid: 1001,
        });
        assert!(
            message(&lock)
                .contains("/var/lib/ces/audit.jsonl.lock is not one the log's writers made (it is uid 1001's")
        );
        assert!(hints(&lock, "c.toml")[0].starts_with("the TRE operator removes /var/lib/ces/audit.jsonl.lock"));
        let acl = anyhow::Error::new(ces_runtime::RuntimeError::NoAcl { path: "/srv/ces/state/x/rootfs".into() });
        assert!(message(&acl).contains("the file system holding /srv/ces/state/x/rootfs has none"), "{acl:#}");
        assert!(hints(&acl, "c.toml")[0].starts_with("use the native runtime (the default)"), "{acl:#}");
    }
}
