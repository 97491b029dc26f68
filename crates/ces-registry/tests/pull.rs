//! [`ces_registry::pull`] against a real Docker Distribution registry, for
//! what the library itself must guarantee whatever the binary does with it
//! (the command's own tests are in `crates/ces/tests/pull.rs`).
#![allow(clippy::unwrap_used)]

use ces_image::provenance::SOURCE;
use ces_image::{Store, StoreError};
use ces_registry::{Client, ClientConfig, Credentials, PullOptions, Quiet, RegistryError, pull};
use ces_testkit::image::marker_image;
use ces_testkit::{AuthMode, Registry};

/// A config the registry altered is refused for its digest before anything
/// reads it: not as a missing label (nor as an invalid config), which is
/// what its altered content alone would say.
#[tokio::test]
async fn an_altered_config_is_a_digest_mismatch_before_its_labels_are_judged() {
    let reg = Registry::shared(AuthMode::Anonymous);
    let image =
        marker_image("ces-registry altered config").label(SOURCE, "https://github.com/ces-tre/fixtures").build();
    reg.push(&image, "registry/altered-config", "1");
    let data = reg.blob_data_path(&image.config_digest);
    let original = std::fs::read(&data).unwrap();
    let altered = String::from_utf8(original.clone()).unwrap().replace(SOURCE, &SOURCE.replace("source", "sourcX"));
    assert_eq!(altered.len(), original.len(), "same size, other content");
    std::fs::write(&data, altered).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let client =
        Client::new(ClientConfig { allowed: vec![reg.host()], insecure: vec![reg.host()], ..ClientConfig::default() })
            .unwrap();
    let reference = format!("{}/registry/altered-config:1", reg.host()).parse().unwrap();
    let options = PullOptions { required_labels: vec![SOURCE.to_owned()], ..PullOptions::default() };
    let lock = store.lock_shared().unwrap();
    let err = pull(&client, &store, &lock, &reference, &Credentials::Anonymous, &options, &Quiet).await.unwrap_err();

    assert!(
        matches!(&err, RegistryError::Store(StoreError::DigestMismatch { expected, .. })
            if expected.to_string() == image.config_digest),
        "{err}"
    );
    assert!(err.to_string().contains(&image.config_digest), "{err}");
    assert!(!store.has_blob(&image.config_digest.parse().unwrap(), original.len() as u64));
    assert!(store.images().unwrap().is_empty());
}
