//! Manifests, indexes and configs as registries serve them (OCI, and Docker
//! v2 schema 2), with size limits and platform selection.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::digest::Digest;

/// The largest manifest or index ces reads (registries commonly cap at 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest image config ces reads.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker v2 schema 2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The `Accept` header for manifest requests: every kind ces understands.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A parsed manifest: a single-platform image, or an index of them.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// An image manifest (config + layers).
    Image(Box<ImageManifest>),
    /// An index (manifest list) of per-platform manifests.
    Index(Box<ImageIndex>),
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// It is not JSON of a known shape.
    #[error("manifest {digest} is not a valid OCI or Docker v2 manifest")]
    Invalid {
        /// The manifest's digest.
        digest: Digest,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A kind ces does not pull (Docker schema 1, artifacts...).
    #[error("manifest {digest} has unsupported media type {}", crate::quote::quote(media_type))]
    Unsupported {
        /// The manifest's digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
}

/// A platform, as in an index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
}

impl Platform {
    /// The platform of the machine ces runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform { os: std::env::consts::OS.to_owned(), architecture: architecture.to_owned() }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

impl Manifest {
    /// Parses manifest bytes; the media type comes from the document, else from
    /// the HTTP `Content-Type`, else from its shape.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let digest = Digest::of(bytes);
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
            schema_version: Option<u32>,
            manifests: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|source| ManifestError::Invalid { digest: digest.clone(), source })?;
        let media_type = probe
            .media_type
            .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned()))
            .filter(|m| !m.is_empty() && m != "application/json" && m != "text/plain")
            .unwrap_or_else(|| if probe.manifests.is_some() { OCI_INDEX.to_owned() } else { OCI_MANIFEST.to_owned() });
        if probe.schema_version != Some(2) {
            return Err(ManifestError::Unsupported {
                digest,
                media_type: format!("{media_type} (schemaVersion {:?})", probe.schema_version),
            });
        }
        let invalid = |source| ManifestError::Invalid { digest: digest.clone(), source };
        match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                Ok(Manifest::Image(Box::new(serde_json::from_slice(bytes).map_err(invalid)?)))
            }
            OCI_INDEX | DOCKER_LIST => Ok(Manifest::Index(Box::new(serde_json::from_slice(bytes).map_err(invalid)?))),
            _ => Err(ManifestError::Unsupported { digest, media_type }),
        }
    }
}

/// The entry of `index` for `platform`, never simply the first one: the os and
/// architecture must match (entries without a platform, such as attestations,
/// are skipped).
pub fn select_platform<'a>(index: &'a ImageIndex, platform: &Platform) -> Option<&'a Descriptor> {
    index.manifests().iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == platform.os && p.architecture().to_string() == platform.architecture)
    })
}

/// The platforms an index offers, for error messages.
pub fn platforms(index: &ImageIndex) -> Vec<String> {
    index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .filter(|p| p != "unknown/unknown")
        .collect()
}

/// The digest of a descriptor, as a ces [`Digest`] (sha256 only).
pub fn descriptor_digest(descriptor: &Descriptor) -> Result<Digest, crate::digest::DigestError> {
    descriptor.digest().to_string().parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_json(platforms: &[(&str, &str)]) -> Vec<u8> {
        let manifests: Vec<_> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch))| {
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": format!("sha256:{:064x}", i + 1),
                    "size": 100,
                    "platform": {"os": os, "architecture": arch}
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
            .unwrap()
    }

    #[test]
    fn selects_the_host_platform_not_the_first_entry() {
        let bytes = index_json(&[("linux", "arm64"), ("unknown", "unknown"), ("linux", "amd64")]);
        let Manifest::Index(index) = Manifest::parse(&bytes, None).unwrap() else { panic!("not an index") };
        let want = Platform { os: "linux".into(), architecture: "amd64".into() };
        let chosen = select_platform(&index, &want).unwrap();
        assert_eq!(chosen.digest().to_string(), format!("sha256:{:064x}", 3));
        assert_eq!(platforms(&index), ["linux/arm64", "linux/amd64"]);
        let none = Platform { os: "linux".into(), architecture: "s390x".into() };
        assert!(select_platform(&index, &none).is_none());
    }

    #[test]
    fn docker_schema1_is_refused_with_its_media_type() {
        let bytes = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err =
            Manifest::parse(bytes, Some("application/vnd.docker.distribution.manifest.v1+prettyjws")).unwrap_err();
        assert!(matches!(err, ManifestError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        assert!(matches!(Manifest::parse(b"\x00\xffnot json", None), Err(ManifestError::Invalid { .. })));
        assert!(matches!(
            Manifest::parse(
                b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"}",
                None
            ),
            Err(ManifestError::Invalid { .. })
        ));
    }

    #[test]
    fn host_platform_is_linux_amd64_here() {
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(Platform::host().to_string(), "linux/amd64");
        }
    }
}
