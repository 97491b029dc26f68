//! A pull: resolve the reference to a manifest digest (through an index, for
//! the wanted platform), then fetch config and layers into the store, several
//! layers at once, each verified before it is stored, and finally name it.

use ces_image::manifest::{self, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest, Platform};
use ces_image::provenance::{self, Provenance};
use ces_image::store::StoreLock;
use ces_image::{Digest, ImageRecord, ImageReference, Store};
use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::ImageConfiguration;

use crate::auth::Credentials;
use crate::client::Client;
use crate::error::RegistryError;

/// Hears how a pull goes, for progress bars. Every method has a default that
/// does nothing.
pub trait PullReporter: Send + Sync {
    /// The reference resolved to this image manifest.
    fn resolved(&self, _reference: &ImageReference, _digest: &Digest) {}
    /// The image's layers, in order, each with the digest of its
    /// uncompressed tar as the image's config says (its `diff_id`), told
    /// before any is fetched (a layer whose config names none is left out).
    fn layers(&self, _layers: &[(Digest, String)]) {}
    /// A layer starts downloading (`reused`: it was already in the store, nothing to fetch).
    fn layer_start(&self, _digest: &Digest, _size: u64, _reused: bool) {}
    /// `bytes` more of a layer arrived.
    fn layer_progress(&self, _digest: &Digest, _bytes: u64) {}
    /// A layer is stored and verified.
    fn layer_done(&self, _digest: &Digest) {}
    /// A request failed in a way worth another try, which starts after
    /// `retry.wait`.
    fn retrying(&self, _retry: &Retry<'_>) {}
    /// A layer's download starts again from its first byte: the `discarded`
    /// bytes already received are thrown away (the registry ignored `Range`).
    fn layer_restarted(&self, _digest: &Digest, _discarded: u64) {}
    /// A layer's bytes are being written to `path` (a new file when its
    /// download starts again from its first byte); committed, the same
    /// file becomes the stored blob. For a reader that follows a download.
    fn blob_file(&self, _digest: &Digest, _path: &std::path::Path) {}
}

/// A try that failed and is made again, as [`PullReporter::retrying`] hears it.
#[derive(Debug, Clone)]
pub struct Retry<'a> {
    /// What was asked, e.g. `GET blob sha256:...`.
    pub what: &'a str,
    /// The blob, when a blob download is retried.
    pub blob: Option<&'a Digest>,
    /// The try that failed (the first is 1).
    pub attempt: u32,
    /// How many tries there may be in all.
    pub tries: u32,
    /// Why it failed, in ces's words.
    pub reason: String,
    /// The wait before the next try.
    pub wait: std::time::Duration,
    /// Bytes of the blob kept: the next try asks for the rest only.
    pub kept: u64,
}

/// A reporter that reports nothing.
#[derive(Debug, Default)]
pub struct Quiet;
impl PullReporter for Quiet {}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to pick from an index.
    pub platform: Platform,
    /// How many layers download at once.
    pub concurrency: usize,
    /// Labels the image must carry in its config (or as manifest annotations),
    /// e.g. `org.opencontainers.image.source`: an image without one is
    /// refused once its config is read, before any layer is fetched.
    pub required_labels: Vec<String>,
    /// The most an image may weigh to download (config and layers,
    /// compressed, as its manifest says); checked before any layer is
    /// fetched. Each blob is then cut off at its descriptor's size.
    pub max_image_size: Option<u64>,
    /// Fetch every layer blob the store lacks, even those of layers it has
    /// unpacked (when it does not keep layer blobs, [`Store::has_layer`]):
    /// for an image that can only be unpacked from its blobs.
    pub all_layer_blobs: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            concurrency: 4,
            required_labels: Vec::new(),
            max_image_size: None,
            all_layer_blobs: false,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// The image as now named in the store.
    pub record: ImageRecord,
    /// Number of layers.
    pub layers: usize,
    /// Layers already in the store (not downloaded again).
    pub reused: usize,
    /// Bytes downloaded for layers.
    pub downloaded: u64,
    /// Requests tried again (rate limits, bad gateways, broken transfers).
    pub retries: u32,
    /// Bytes downloaded twice: blobs restarted from their first byte because
    /// the registry ignored `Range` (a resumed download fetches nothing twice).
    pub refetched: u64,
}

/// Pulls `reference` into `store`: every blob it needs arrives verified.
///
/// The allowlist is checked before anything is sent. The image is not named
/// here: the caller, still holding `lock` (which keeps `gc` away from the new
/// blobs), names it with [`Store::add_ref`]`(&outcome.record)` once it is
/// satisfied (e.g. after the rootfs unpacked). A failed pull leaves only
/// complete, verified blobs, which the next pull reuses.
pub async fn pull(
    client: &Client,
    store: &Store,
    _lock: &StoreLock,
    reference: &ImageReference,
    credentials: &Credentials,
    options: &PullOptions,
    reporter: &dyn PullReporter,
) -> Result<PullOutcome, RegistryError> {
    client.check_allowed(reference.registry())?;
    let session = client.session(reference, credentials, reporter).await?;

    let top = session.manifest(&reference.manifest_reference(), MAX_MANIFEST_BYTES, reporter).await?;
    let (fetched, index_digest) = match Manifest::parse(&top.bytes, top.content_type.as_deref())? {
        Manifest::Image(_) => (top, None),
        Manifest::Index(index) => {
            let Some(chosen) = manifest::select_platform(&index, &options.platform) else {
                return Err(RegistryError::NoPlatform {
                    reference: reference.to_string(),
                    platform: options.platform.to_string(),
                    available: manifest::platforms(&index),
                });
            };
            let digest = manifest::descriptor_digest(chosen).map_err(ces_image::StoreError::from)?;
            let child = session.manifest(&digest.to_string(), MAX_MANIFEST_BYTES, reporter).await?;
            (child, Some(top.digest))
        }
    };
    let image = match Manifest::parse(&fetched.bytes, fetched.content_type.as_deref())? {
        Manifest::Image(image) => *image,
        Manifest::Index(_) => return Err(ces_image::StoreError::NotAnImage { digest: fetched.digest }.into()),
    };
    reporter.resolved(reference, &fetched.digest);
    tracing::debug!(%reference, digest = %fetched.digest, "resolved");

    let config = image.config();
    let config_digest = manifest::descriptor_digest(config).map_err(ces_image::StoreError::from)?;
    if config.size() > MAX_CONFIG_BYTES {
        return Err(RegistryError::TooLarge {
            what: "config",
            reference: reference.to_string(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    let stored = store.has_blob(&config_digest, config.size());
    // Refused on the manifest's word, before anything is fetched: a lying
    // descriptor is then held to its size by the blob writer.
    // Checked, not wrapping: sizes a manifest declares are the registry's
    // word, and two layers of 2^63 bytes would otherwise sum to 0 and pass.
    let total =
        image.layers().iter().try_fold(config.size(), |total, layer| total.checked_add(layer.size())).ok_or_else(
            || RegistryError::TooLarge {
                what: "the declared size of the image",
                reference: reference.to_string(),
                limit: u64::MAX,
            },
        )?;
    if let Some(limit) = options.max_image_size.filter(|limit| total > *limit) {
        return Err(RegistryError::ImageTooLarge { reference: reference.to_string(), size: total, limit });
    }
    let config_bytes = if stored {
        store.read_blob(&config_digest, MAX_CONFIG_BYTES)?
    } else {
        session.small_blob(&config_digest, config.size(), MAX_CONFIG_BYTES, reporter).await?
    };
    let image_config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|source| RegistryError::BadConfig { reference: reference.to_string(), source })?;
    // Checked before anything is stored: a refused image leaves no trace.
    if let Some(label) =
        options.required_labels.iter().find(|label| provenance::label(&image, &image_config, label).is_none())
    {
        return Err(RegistryError::MissingLabel { reference: reference.to_string(), label: label.clone() });
    }
    let provenance = Provenance::of(&image, &image_config);
    if !stored {
        store.write_blob(&config_digest, &config_bytes)?;
    }

    let layers = image
        .layers()
        .iter()
        .map(|l| Ok((manifest::descriptor_digest(l)?, l.size())))
        .collect::<Result<Vec<_>, ces_image::digest::DigestError>>()
        .map_err(ces_image::StoreError::from)?;
    let mut reused = 0;
    let mut missing = Vec::new();
    let diff_ids = image_config.rootfs().diff_ids();
    let named: Vec<(Digest, String)> =
        layers.iter().zip(diff_ids).map(|((digest, _), diff_id)| (digest.clone(), diff_id.clone())).collect();
    reporter.layers(&named);
    for (i, (digest, size)) in layers.iter().enumerate() {
        let present = if options.all_layer_blobs {
            store.has_blob(digest, *size)
        } else {
            store.has_layer(digest, *size, diff_ids.get(i).map(String::as_str))
        };
        reporter.layer_start(digest, *size, present);
        if present {
            reused += 1;
            reporter.layer_done(digest);
        } else if !missing.iter().any(|(d, _)| d == digest) {
            missing.push((digest.clone(), *size));
        }
    }
    // At most `total` (checked above), so it cannot overflow; saturating all
    // the same rather than wrapping should that ever change.
    let downloaded = missing.iter().map(|(_, size)| *size).fold(0, u64::saturating_add);
    check_free_space(store, downloaded)?;
    futures_util::stream::iter(missing)
        .map(|(digest, size)| {
            let session = &session;
            async move {
                session.blob(&digest, size, store, reporter).await?;
                reporter.layer_done(&digest);
                Ok::<_, RegistryError>(())
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;

    store.write_blob(&fetched.digest, &fetched.bytes)?;
    let media_type =
        image.media_type().as_ref().map(|m| m.to_string()).unwrap_or_else(|| manifest::OCI_MANIFEST.to_owned());
    let record = ImageRecord {
        reference: reference.clone(),
        digest: fetched.digest,
        media_type,
        manifest_size: fetched.bytes.len() as u64,
        pulled_at: Some(jiff::Timestamp::now()),
        index_digest,
        provenance,
        loaded_by: None,
    };
    Ok(PullOutcome {
        record,
        layers: layers.len(),
        reused,
        downloaded,
        retries: session.retries(),
        refetched: session.refetched(),
    })
}

/// Refuses a download the store's file system, or the user's disk quota on
/// it, has no room for, before it starts (rather than at ENOSPC or EDQUOT
/// halfway). Where either cannot be read, the download goes ahead: the
/// writes will tell.
fn check_free_space(store: &Store, needed: u64) -> Result<(), RegistryError> {
    match crate::quota::shortfall(store.root(), needed) {
        None => Ok(()),
        Some(shortfall) => Err(RegistryError::NoRoom { path: store.root().to_owned(), needed, shortfall }),
    }
}
