//! Where an image came from, as its builder said: the OCI labels of its
//! config (`org.opencontainers.image.source`, `.revision`, `.created`,
//! `.version`) and the base-image annotations of its manifest
//! (`org.opencontainers.image.base.name`, `.base.digest`).
//!
//! Labels live in the config, annotations in the manifest, and builders put
//! some keys in either place (`docker build --label` in the config,
//! `docker buildx build --annotation` in the manifest): each field is taken
//! from its usual place first and from the other as a fallback. Both blobs are
//! content-addressed, so the values are bound to the manifest digest.

use std::collections::HashMap;

use oci_spec::image::{ImageConfiguration, ImageManifest};

/// `org.opencontainers.image.source`: the source repository URL.
pub const SOURCE: &str = "org.opencontainers.image.source";
/// `org.opencontainers.image.revision`: the source revision (commit).
pub const REVISION: &str = "org.opencontainers.image.revision";
/// `org.opencontainers.image.created`: when the image was built (RFC 3339).
pub const CREATED: &str = "org.opencontainers.image.created";
/// `org.opencontainers.image.version`: the packaged software's version.
pub const VERSION: &str = "org.opencontainers.image.version";
/// `org.opencontainers.image.base.name`: the base image's reference.
pub const BASE_NAME: &str = "org.opencontainers.image.base.name";
/// `org.opencontainers.image.base.digest`: the base image's manifest digest.
pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// Longest value kept (a label is the builder's free text; a URL or a commit
/// is far shorter).
const MAX_VALUE: usize = 1024;

/// An image's provenance; every field is optional (an image says what its
/// builder put in it, nothing more).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    /// The source repository (`org.opencontainers.image.source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The source revision (`org.opencontainers.image.revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When it was built (`org.opencontainers.image.created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The version (`org.opencontainers.image.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The base image (`org.opencontainers.image.base.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_name: Option<String>,
    /// The base image's digest (`org.opencontainers.image.base.digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_digest: Option<String>,
}

impl Provenance {
    /// Reads the labels of `config` and the annotations of `manifest`.
    pub fn of(manifest: &ImageManifest, config: &ImageConfiguration) -> Provenance {
        let (labels, annotations) = (labels(config), manifest.annotations().as_ref());
        let label_first = |key: &str| first_value([labels, annotations], key);
        let annotation_first = |key: &str| first_value([annotations, labels], key);
        Provenance {
            source: label_first(SOURCE),
            revision: label_first(REVISION),
            created: label_first(CREATED),
            version: label_first(VERSION),
            base_name: annotation_first(BASE_NAME),
            base_digest: annotation_first(BASE_DIGEST),
        }
    }

    /// Reads the keys back from annotations (as [`Provenance::annotations`] wrote them).
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Provenance {
        let get = |key: &str| value(annotations, key);
        Provenance {
            source: get(SOURCE),
            revision: get(REVISION),
            created: get(CREATED),
            version: get(VERSION),
            base_name: get(BASE_NAME),
            base_digest: get(BASE_DIGEST),
        }
    }

    /// The fields that are set, under their OCI keys.
    pub fn annotations(&self) -> Vec<(&'static str, &str)> {
        [
            (SOURCE, &self.source),
            (REVISION, &self.revision),
            (CREATED, &self.created),
            (VERSION, &self.version),
            (BASE_NAME, &self.base_name),
            (BASE_DIGEST, &self.base_digest),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.as_deref()?)))
        .collect()
    }

    /// Whether the image says nothing of where it came from.
    pub fn is_empty(&self) -> bool {
        self.annotations().is_empty()
    }
}

/// The label `key` of `config`, or else the same key among the annotations
/// of `manifest` (where `docker buildx build --annotation` puts it); a blank
/// value counts as none.
pub fn label(manifest: &ImageManifest, config: &ImageConfiguration, key: &str) -> Option<String> {
    first_value([labels(config), manifest.annotations().as_ref()], key)
}

fn labels(config: &ImageConfiguration) -> Option<&HashMap<String, String>> {
    config.config().as_ref()?.labels().as_ref()
}

/// The value of `key` in the first map that has one.
fn first_value(maps: [Option<&HashMap<String, String>>; 2], key: &str) -> Option<String> {
    maps.into_iter().flatten().find_map(|map| value(map, key))
}

/// A non-empty value, cut to [`MAX_VALUE`] bytes (at a character boundary).
fn value(map: &HashMap<String, String>, key: &str) -> Option<String> {
    let value = map.get(key)?.trim();
    if value.is_empty() {
        return None;
    }
    let mut end = value.len().min(MAX_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Some(value[..end].to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn manifest(annotations: serde_json::Value) -> ImageManifest {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "a".repeat(64)), "size": 2},
            "layers": [],
            "annotations": annotations,
        }))
        .unwrap()
    }

    fn config(labels: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .unwrap()
    }

    #[test]
    fn labels_and_base_annotations_are_read_each_from_its_place_first() {
        let m = manifest(serde_json::json!({
            BASE_NAME: "docker.io/library/python:3.12",
            BASE_DIGEST: format!("sha256:{}", "b".repeat(64)),
            SOURCE: "https://github.com/from/annotation",
            VERSION: "2.0",
        }));
        let c = config(serde_json::json!({
            SOURCE: "https://github.com/lab/model",
            REVISION: "0123abc",
            CREATED: "2026-01-02T03:04:05Z",
            BASE_NAME: "ignored-when-annotated",
            "other": "x",
        }));
        let p = Provenance::of(&m, &c);
        assert_eq!(p.source.as_deref(), Some("https://github.com/lab/model"), "the label wins");
        assert_eq!(p.revision.as_deref(), Some("0123abc"));
        assert_eq!(p.created.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(p.version.as_deref(), Some("2.0"), "an annotation fills a missing label");
        assert_eq!(p.base_name.as_deref(), Some("docker.io/library/python:3.12"), "the annotation wins");
        assert_eq!(p.base_digest.as_deref().map(str::len), Some(71));

        let annotations: HashMap<String, String> =
            p.annotations().into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        assert_eq!(annotations.len(), 6);
        assert_eq!(Provenance::from_annotations(&annotations), p, "round trip");
    }

    #[test]
    fn a_required_label_is_found_in_the_config_or_the_manifest_but_not_blank() {
        let m = manifest(serde_json::json!({"only.annotated": "a", "blank": "x"}));
        let c = config(serde_json::json!({"only.labelled": "l", "blank": " "}));
        assert_eq!(label(&m, &c, "only.labelled").as_deref(), Some("l"));
        assert_eq!(label(&m, &c, "only.annotated").as_deref(), Some("a"));
        assert_eq!(label(&m, &c, "blank").as_deref(), Some("x"), "a blank label falls back to the annotation");
        assert_eq!(label(&m, &c, "absent"), None);
        let bare = manifest(serde_json::json!({}));
        assert_eq!(label(&bare, &config(serde_json::json!({"k": "\t"})), "k"), None);
    }

    #[test]
    fn an_image_without_labels_has_empty_provenance_and_blank_values_are_none() {
        let p = Provenance::of(&manifest(serde_json::json!({})), &config(serde_json::json!({SOURCE: "  "})));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(serde_json::to_string(&p).unwrap(), "{}");
        let long = config(serde_json::json!({SOURCE: "é".repeat(2000)}));
        let p = Provenance::of(&manifest(serde_json::json!({})), &long);
        assert!(p.source.unwrap().len() <= MAX_VALUE);
    }
}
