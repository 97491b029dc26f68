//! [`ces_registry::pull`] against the test kit's misbehaving registry: where
//! credentials go when a registry redirects or challenges, and how a pull
//! survives what real registries do (rate limits, bad gateways, dropped
//! connections) and refuses what hostile ones do (redirect loops, replaced
//! ranges, images larger than the limit). The waits between tries are cut
//! to milliseconds with [`RetryPolicy`]; no assertion depends on time.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;

use ces_image::{Digest, Store, StoreError};
use ces_registry::{
    Client, ClientConfig, Credentials, PullOptions, PullOutcome, PullReporter, RegistryError, Retry, RetryPolicy,
    Secret, pull,
};
use ces_testkit::misbehave::{Answer, Misbehaving, noise};
use ces_testkit::{BuiltImage, Compression, Entry, ImageSpec, Layer};

const TRIES: u32 = 4;

/// Hears the retries, as the progress display does.
#[derive(Default)]
struct Heard {
    retries: Mutex<Vec<(String, u32, u64)>>,
    restarts: Mutex<Vec<u64>>,
}

impl PullReporter for Heard {
    fn retrying(&self, retry: &Retry<'_>) {
        self.retries.lock().unwrap().push((retry.reason.clone(), retry.attempt, retry.kept));
    }
    fn layer_restarted(&self, _digest: &Digest, discarded: u64) {
        self.restarts.lock().unwrap().push(discarded);
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    client: Client,
    reference: ces_image::ImageReference,
}

/// A store, and a client allowed (over plain HTTP) to pull `repo:1` from `reg`.
fn world(reg: &Misbehaving, repo: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let client =
        Client::new(ClientConfig { allowed: vec![reg.host()], insecure: vec![reg.host()], ..ClientConfig::default() })
            .unwrap()
            .with_retry(RetryPolicy {
                tries: TRIES,
                first_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
                max_retry_after: Duration::from_millis(5),
            });
    let reference = format!("{}/{repo}:1", reg.host()).parse().unwrap();
    World { _dir: dir, store, client, reference }
}

impl World {
    async fn pull_as(
        &self,
        credentials: &Credentials,
        options: &PullOptions,
        reporter: &dyn PullReporter,
    ) -> Result<PullOutcome, RegistryError> {
        let lock = self.store.lock_shared().unwrap();
        pull(&self.client, &self.store, &lock, &self.reference, credentials, options, reporter).await
    }

    async fn pull(&self, reporter: &dyn PullReporter) -> Result<PullOutcome, RegistryError> {
        self.pull_as(&Credentials::Anonymous, &PullOptions::default(), reporter).await
    }

    fn has(&self, digest: &str, size: usize) -> bool {
        self.store.has_blob(&digest.parse().unwrap(), size as u64)
    }

    /// No layer, no image, no temp file (a config, verified, may stay for
    /// the next pull).
    fn assert_nothing_stored(&self, image: &BuiltImage) {
        for (digest, bytes) in image.blobs.iter().filter(|(d, _)| *d != image.config_digest) {
            assert!(!self.has(digest, bytes.len()), "{digest} was stored");
        }
        let temp: Vec<_> = std::fs::read_dir(self.store.root().join("tmp")).map(|d| d.collect()).unwrap_or_default();
        assert!(temp.is_empty(), "temp files left: {temp:?}");
        assert!(self.store.images().unwrap().is_empty());
    }
}

fn user() -> Credentials {
    Credentials::Basic { user: "alice".into(), secret: Secret::new("ghp_hunter2") }
}

/// An image with one layer of `size` incompressible bytes (a plain tar).
fn image_of(size: usize, seed: u64) -> BuiltImage {
    ImageSpec::new(vec![Layer::new(vec![Entry::file("data", noise(size, seed))]).compressed(Compression::None)]).build()
}

fn layer(image: &BuiltImage) -> (&str, usize) {
    let digest = image.layer_digests[0].as_str();
    (digest, image.blob(digest).len())
}

/// GHCR redirects blobs to its CDN. A CDN (or anyone the registry redirects
/// to) that answers 401 with a Bearer realm of its choosing got the user's
/// `Basic user:token` sent to that realm: a challenge is only the registry's
/// to make, and after a redirect a 401 is an error naming the host.
#[tokio::test]
async fn a_challenge_after_a_redirect_gets_no_credentials_and_names_the_host() {
    let (reg, cdn, thief) = (Misbehaving::http(), Misbehaving::http(), Misbehaving::http());
    let image = image_of(4096, 1);
    reg.serve(&image, "app", "1");
    reg.require_bearer(&reg.url("/token"));
    let (digest, _) = layer(&image);
    reg.always(&Misbehaving::blob_path("app", digest), Answer::Redirect(cdn.url("/cdn/blob")));
    cdn.always("/cdn/blob", Answer::Challenge(format!("Bearer realm=\"{}\",service=\"cdn\"", thief.url("/token"))));
    let w = world(&reg, "app");

    let err = w.pull_as(&user(), &PullOptions::default(), &Heard::default()).await.unwrap_err();

    assert!(matches!(&err, RegistryError::RedirectDenied { host, .. } if *host == cdn.host()), "{err}");
    assert!(err.to_string().contains(&cdn.host()), "the error names the host: {err}");
    assert_eq!(thief.seen(), [], "nothing went to the realm the CDN named");
    assert!(cdn.seen().iter().all(|s| s.authorization.is_none()), "{:?}", cdn.seen());
    // The user's Basic credentials went to the registry's own realm only.
    assert!(reg.seen_at("/token").iter().all(|s| s.authorization.as_deref().is_some_and(|a| a.starts_with("Basic "))));
    w.assert_nothing_stored(&image);
}

/// The Authorization header never follows a redirect to another host (it
/// never did: keep it so), and the blob the CDN serves is verified.
#[tokio::test]
async fn authorization_stays_with_the_registry_across_a_redirect() {
    let (reg, cdn) = (Misbehaving::http(), Misbehaving::http());
    let image = image_of(4096, 2);
    reg.serve(&image, "app", "1");
    reg.require_bearer(&reg.url("/token"));
    let (digest, _) = layer(&image);
    reg.always(&Misbehaving::blob_path("app", digest), Answer::Redirect(cdn.url(&format!("/cdn/{digest}"))));
    cdn.put(&format!("/cdn/{digest}"), "application/octet-stream", image.blob(digest).to_vec());
    let w = world(&reg, "app");

    w.pull_as(&user(), &PullOptions::default(), &Heard::default()).await.unwrap();

    let to_registry = reg.seen_at(&Misbehaving::blob_path("app", digest));
    assert!(to_registry.iter().any(|s| s.authorization.as_deref().is_some_and(|a| a.starts_with("Bearer "))));
    assert_eq!(cdn.seen().len(), 1);
    assert!(cdn.seen().iter().all(|s| s.authorization.is_none()), "{:?}", cdn.seen());
}

/// 429 with Retry-After and 502/503/504 are what busy registries answer:
/// tried again, each retry reported, the pull completes.
#[tokio::test]
async fn rate_limits_and_bad_gateways_are_tried_again() {
    let reg = Misbehaving::http();
    let image = image_of(10_000, 3);
    reg.serve(&image, "app", "1");
    let retry_after = || Answer::StatusWith(429, vec![("Retry-After".into(), "1".into())]);
    reg.script(&Misbehaving::manifest_path("app", "1"), [retry_after(), Answer::Status(503)]);
    let (digest, size) = layer(&image);
    reg.script(&Misbehaving::blob_path("app", digest), [Answer::Status(502), Answer::Status(504)]);
    let w = world(&reg, "app");
    let heard = Heard::default();

    let outcome = w.pull(&heard).await.unwrap();

    assert_eq!(outcome.retries, 4);
    assert_eq!(outcome.refetched, 0);
    let reasons: Vec<_> = heard.retries.lock().unwrap().iter().map(|(r, ..)| r.clone()).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for status in ["429", "503", "502", "504"] {
        assert!(reasons.iter().any(|r| r.contains(status)), "{status} reported: {reasons:?}");
    }
    assert!(w.has(digest, size));
}

/// A connection that drops mid-blob resumes with a Range request from the
/// last byte written: nothing is fetched twice, and the digest is checked
/// over the whole blob.
#[tokio::test]
async fn a_dropped_blob_download_resumes_where_it_stopped() {
    let reg = Misbehaving::http();
    let image = image_of(3 << 20, 4);
    reg.serve(&image, "app", "1");
    let (digest, size) = layer(&image);
    let path = Misbehaving::blob_path("app", digest);
    reg.script(&path, [Answer::CloseAfter(1 << 20), Answer::CloseAfter(1 << 20)]);
    let w = world(&reg, "app");
    let heard = Heard::default();

    let outcome = w.pull(&heard).await.unwrap();

    assert_eq!((outcome.retries, outcome.refetched), (2, 0));
    let ranges: Vec<_> = reg.seen_at(&path).into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [None, Some(format!("bytes={}-", 1 << 20)), Some(format!("bytes={}-", 2 << 20))]);
    let kept: Vec<_> = heard.retries.lock().unwrap().iter().map(|(_, _, kept)| *kept).collect();
    assert_eq!(kept, [1 << 20, 2 << 20]);
    assert_eq!(std::fs::read(w.store.blob_path(&digest.parse().unwrap())).unwrap(), image.blob(digest));
    assert_eq!(size, image.blob(digest).len());
}

/// A registry that ignores Range sends the whole blob again: what was
/// written is thrown away, and the bytes fetched twice are reported.
#[tokio::test]
async fn without_range_support_the_blob_starts_again_and_the_refetch_is_reported() {
    let reg = Misbehaving::http();
    let image = image_of(1 << 20, 5);
    reg.serve(&image, "app", "1");
    reg.ranges(false);
    let (digest, size) = layer(&image);
    reg.script(&Misbehaving::blob_path("app", digest), [Answer::CloseAfter(300_000)]);
    let w = world(&reg, "app");
    let heard = Heard::default();

    let outcome = w.pull(&heard).await.unwrap();

    assert_eq!((outcome.retries, outcome.refetched), (1, 300_000));
    assert_eq!(*heard.restarts.lock().unwrap(), [300_000]);
    assert!(w.has(digest, size));
}

/// The rest of a blob comes in a 206 whose bytes are not the blob's: the
/// bytes kept from the first try do not make it pass, the digest over the
/// whole is wrong, and nothing is stored.
#[tokio::test]
async fn a_resumed_blob_is_verified_over_the_whole_blob() {
    let reg = Misbehaving::http();
    let image = image_of(100_000, 6);
    reg.serve(&image, "app", "1");
    let (digest, size) = layer(&image);
    let mut tail = image.blob(digest)[40_000..].to_vec();
    tail[1000] ^= 1;
    let range = format!("bytes 40000-{}/{size}", size - 1);
    reg.script(
        &Misbehaving::blob_path("app", digest),
        [Answer::CloseAfter(40_000), Answer::Raw(206, vec![("Content-Range".into(), range)], tail)],
    );
    let w = world(&reg, "app");

    let err = w.pull(&Heard::default()).await.unwrap_err();

    assert!(matches!(&err, RegistryError::Store(StoreError::DigestMismatch { .. })), "{err}");
    w.assert_nothing_stored(&image);
}

/// A registry that keeps failing is given up on after the tries set, and
/// the error says how many were made and what the last one got.
#[tokio::test]
async fn a_registry_that_keeps_failing_is_given_up_on_with_the_count() {
    let reg = Misbehaving::http();
    let image = image_of(1000, 7);
    reg.serve(&image, "app", "1");
    let (digest, _) = layer(&image);
    let path = Misbehaving::blob_path("app", digest);
    reg.always(&path, Answer::Status(503));
    let w = world(&reg, "app");

    let err = w.pull(&Heard::default()).await.unwrap_err();

    let RegistryError::GaveUp { tries, last, .. } = &err else { panic!("{err}") };
    assert_eq!(*tries, TRIES);
    assert!(matches!(**last, RegistryError::Status { status, .. } if status.as_u16() == 503), "{last}");
    assert!(err.to_string().contains(&format!("after {TRIES} tries")), "{err}");
    assert_eq!(reg.seen_at(&path).len(), TRIES as usize);
    w.assert_nothing_stored(&image);
}

/// A redirect loop is called one (it was "cannot reach registry ... add it
/// to insecure").
#[tokio::test]
async fn a_redirect_loop_says_so() {
    let (reg, other) = (Misbehaving::http(), Misbehaving::http());
    let manifest = Misbehaving::manifest_path("app", "1");
    reg.always(&manifest, Answer::Redirect(other.url("/bounce")));
    other.always("/bounce", Answer::Redirect(reg.url(&manifest)));
    let w = world(&reg, "app");

    let err = w.pull(&Heard::default()).await.unwrap_err();

    assert!(matches!(err, RegistryError::RedirectLoop { .. }), "{err}");
    assert!(err.to_string().starts_with("redirect loop"), "{err}");
}

/// A 404 from where the registry redirected a blob names the host that
/// answered, not the registry (whose image is there).
#[tokio::test]
async fn a_404_from_a_redirect_target_names_that_host() {
    let (reg, cdn) = (Misbehaving::http(), Misbehaving::http());
    let image = image_of(1000, 8);
    reg.serve(&image, "app", "1");
    let (digest, _) = layer(&image);
    reg.always(&Misbehaving::blob_path("app", digest), Answer::Redirect(cdn.url("/gone")));
    let w = world(&reg, "app");

    let err = w.pull(&Heard::default()).await.unwrap_err();

    assert!(matches!(&err, RegistryError::NotFoundAt { host, .. } if *host == cdn.host()), "{err}");
    assert!(err.to_string().contains(&format!("redirected to {}", cdn.host())), "{err}");
}

/// `max_image_size` refuses on the manifest's word, before a layer is
/// asked for; nothing is stored.
#[tokio::test]
async fn an_image_over_the_size_limit_is_refused_before_its_layers_are_fetched() {
    let reg = Misbehaving::http();
    let image = image_of(200_000, 9);
    reg.serve(&image, "app", "1");
    let w = world(&reg, "app");
    let options = PullOptions { max_image_size: Some(100_000), ..PullOptions::default() };

    let err = w.pull_as(&Credentials::Anonymous, &options, &Heard::default()).await.unwrap_err();

    assert!(matches!(err, RegistryError::ImageTooLarge { limit: 100_000, .. }), "{err}");
    assert_eq!(reg.seen_at(&Misbehaving::blob_path("app", &image.layer_digests[0])), []);
    w.assert_nothing_stored(&image);
    assert!(!w.has(&image.config_digest, image.blob(&image.config_digest).len()), "not even the config");

    let options = PullOptions { max_image_size: Some(1 << 20), ..PullOptions::default() };
    w.pull_as(&Credentials::Anonymous, &options, &Heard::default()).await.unwrap();
}

/// A blob that never ends under a descriptor that says it is small stops
/// at the descriptor's size; nothing is stored.
#[tokio::test]
async fn an_endless_blob_stops_at_its_descriptor_size() {
    let reg = Misbehaving::http();
    let image = image_of(5000, 10);
    reg.serve(&image, "app", "1");
    let (digest, _) = layer(&image);
    reg.always(&Misbehaving::blob_path("app", digest), Answer::Endless);
    let w = world(&reg, "app");

    let err = w.pull(&Heard::default()).await.unwrap_err();

    assert!(matches!(err, RegistryError::Store(StoreError::TooLong { .. })), "{err}");
    w.assert_nothing_stored(&image);
}

/// Two layers that the manifest says are 2^63 bytes each: summed by
/// wrapping, that was 0 bytes to download, which passed the free-space
/// check. The sum is checked: refused before a layer is asked for, with or
/// without a size limit.
#[tokio::test]
async fn layer_sizes_that_overflow_when_summed_are_refused_before_download() {
    let reg = Misbehaving::http();
    let image = ImageSpec::new(vec![
        Layer::new(vec![Entry::file("a", noise(1000, 11))]).compressed(Compression::None),
        Layer::new(vec![Entry::file("b", noise(1000, 12))]).compressed(Compression::None),
    ])
    .build();
    reg.serve(&image, "app", "1");
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    for layer in manifest["layers"].as_array_mut().unwrap() {
        layer["size"] = (1u64 << 63).into();
    }
    let forged = serde_json::to_vec(&manifest).unwrap();
    reg.put(&Misbehaving::manifest_path("app", "1"), &image.media_type, forged);
    let w = world(&reg, "app");

    for options in [PullOptions::default(), PullOptions { max_image_size: Some(1 << 40), ..PullOptions::default() }] {
        let err = w.pull_as(&Credentials::Anonymous, &options, &Heard::default()).await.unwrap_err();

        assert!(matches!(err, RegistryError::TooLarge { limit: u64::MAX, .. }), "{err}");
        for digest in &image.layer_digests {
            assert_eq!(reg.seen_at(&Misbehaving::blob_path("app", digest)), [], "{digest} was asked for");
        }
        w.assert_nothing_stored(&image);
    }
}
