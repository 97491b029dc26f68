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
    /// A layer starts downloading (`reused`: it was already in the store, nothing to fetch).
    fn layer_start(&self, _digest: &Digest, _size: u64, _reused: bool) {}
    /// `bytes` more of a layer arrived.
    fn layer_progress(&self, _digest: &Digest, _bytes: u64) {}
    /// A layer is stored and verified.
    fn layer_done(&self, _digest: &Digest) {}
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
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { platform: Platform::host(), concurrency: 4, required_labels: Vec::new() }
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
    let session = client.session(reference, credentials).await?;

    let top = session.manifest(&reference.manifest_reference(), MAX_MANIFEST_BYTES).await?;
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
            let child = session.manifest(&digest.to_string(), MAX_MANIFEST_BYTES).await?;
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
    let config_bytes = if stored {
        store.read_blob(&config_digest, MAX_CONFIG_BYTES)?
    } else {
        session.small_blob(&config_digest, config.size(), MAX_CONFIG_BYTES).await?
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
    for (digest, size) in &layers {
        let present = store.has_blob(digest, *size);
        reporter.layer_start(digest, *size, present);
        if present {
            reused += 1;
            reporter.layer_done(digest);
        } else if !missing.iter().any(|(d, _)| d == digest) {
            missing.push((digest.clone(), *size));
        }
    }
    let downloaded: u64 = missing.iter().map(|(_, size)| size).sum();
    futures_util::stream::iter(missing)
        .map(|(digest, size)| {
            let session = &session;
            async move {
                let writer = store.blob_writer(&digest, Some(size))?;
                session.blob(&digest, size, writer, &|n| reporter.layer_progress(&digest, n)).await?;
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
    };
    Ok(PullOutcome { record, layers: layers.len(), reused, downloaded })
}
