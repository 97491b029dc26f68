//! Fixture images built in code: config, manifest and blobs with the digests
//! computed here, in OCI or Docker schema 2 media types, single images and
//! multi-arch indexes; written to OCI layouts, OCI archives and legacy
//! `docker save` tarballs for the other transports.
//!
//! Everything is deterministic (fixed timestamps, sorted JSON keys), so the
//! same spec always gives the same digests.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::layer::{Compression, Entry, Layer, busybox_entries};

/// The `created` timestamp of every fixture image and history entry.
pub const CREATED: &str = "2024-01-01T00:00:00Z";
/// The annotation that names a manifest in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// OCI media types.
pub mod oci {
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
}

/// Docker image manifest v2 schema 2 media types.
pub mod docker {
    pub const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// Which family of media types an image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// OCI image spec media types.
    Oci,
    /// Docker v2 schema 2 media types (gzip layers only).
    Docker,
}

/// An image to build: layers and the config fields a runtime looks at.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub layers: Vec<Layer>,
    pub style: Style,
    pub architecture: String,
    pub os: String,
    /// Platform variant (`v8` for arm64, say); written to the config and the index.
    pub variant: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The manifest's `annotations` (e.g. `org.opencontainers.image.base.name`).
    pub annotations: BTreeMap<String, String>,
}

/// sha256 of `data` as `sha256:<hex>`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}

impl ImageSpec {
    /// An OCI linux/amd64 image of these layers, with an empty config.
    pub fn new(layers: Vec<Layer>) -> ImageSpec {
        ImageSpec {
            layers,
            style: Style::Oci,
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            user: None,
            workdir: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// OCI or Docker schema 2 media types.
    pub fn style(mut self, style: Style) -> Self {
        self.style = style;
        self
    }
    /// The architecture (`amd64`, `arm64`, ...).
    pub fn arch(mut self, architecture: &str) -> Self {
        self.architecture = architecture.into();
        self
    }
    /// The operating system (`linux`).
    pub fn os(mut self, os: &str) -> Self {
        self.os = os.into();
        self
    }
    /// The platform variant (`v8` for arm64).
    pub fn variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.into());
        self
    }
    /// The config's `Entrypoint`.
    pub fn entrypoint(mut self, entrypoint: &[&str]) -> Self {
        self.entrypoint = Some(entrypoint.iter().map(|s| s.to_string()).collect());
        self
    }
    /// The config's `Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Replaces the environment (`KEY=value` entries).
    pub fn env(mut self, env: &[&str]) -> Self {
        self.env = env.iter().map(|s| s.to_string()).collect();
        self
    }
    /// The config's `User` (`uid[:gid]` or a name).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }
    /// The config's `WorkingDir`.
    pub fn workdir(mut self, workdir: &str) -> Self {
        self.workdir = Some(workdir.into());
        self
    }
    /// Adds an annotation to the manifest (OCI style only: Docker schema 2 has none).
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Adds a label to the config's `Labels`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The config JSON, as it will be pushed.
    fn config_json(&self, diff_ids: &[String]) -> Vec<u8> {
        let mut config = serde_json::Map::new();
        if let Some(entrypoint) = &self.entrypoint {
            config.insert("Entrypoint".into(), json!(entrypoint));
        }
        if let Some(cmd) = &self.cmd {
            config.insert("Cmd".into(), json!(cmd));
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if let Some(user) = &self.user {
            config.insert("User".into(), json!(user));
        }
        if let Some(workdir) = &self.workdir {
            config.insert("WorkingDir".into(), json!(workdir));
        }
        if !self.labels.is_empty() {
            config.insert("Labels".into(), json!(self.labels));
        }
        let history: Vec<Value> = (0..self.layers.len())
            .map(|i| json!({"created": CREATED, "created_by": format!("ces-testkit layer {i}")}))
            .collect();
        let mut image = json!({
            "architecture": self.architecture,
            "os": self.os,
            "created": CREATED,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(variant) = &self.variant {
            image["variant"] = json!(variant);
        }
        serde_json::to_vec(&image).unwrap()
    }

    /// Builds config, layer blobs and manifest, and computes their digests.
    pub fn build(&self) -> BuiltImage {
        let (manifest_type, config_type) = match self.style {
            Style::Oci => (oci::MANIFEST, oci::CONFIG),
            Style::Docker => (docker::MANIFEST, docker::CONFIG),
        };
        let mut blobs = Vec::new();
        let mut layer_digests = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_descriptors = Vec::new();
        for layer in &self.layers {
            let media_type = match self.style {
                Style::Oci => layer.compression.oci_media_type(),
                Style::Docker => {
                    assert_eq!(
                        layer.compression,
                        Compression::Gzip,
                        "Docker schema 2 images have gzip layers only; use Style::Oci for other compressions"
                    );
                    docker::LAYER_GZIP
                }
            };
            let tar = layer.tar();
            let blob = crate::layer::compress(&tar, layer.compression);
            let digest = sha256_digest(&blob);
            diff_ids.push(sha256_digest(&tar));
            layer_descriptors.push(json!({"mediaType": media_type, "digest": digest, "size": blob.len()}));
            layer_digests.push(digest.clone());
            blobs.push((digest, blob));
        }
        let config = self.config_json(&diff_ids);
        let config_digest = sha256_digest(&config);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": layer_descriptors,
        });
        if !self.annotations.is_empty() {
            assert_eq!(self.style, Style::Oci, "Docker schema 2 manifests have no annotations; use Style::Oci");
            manifest["annotations"] = json!(self.annotations);
        }
        blobs.insert(0, (config_digest.clone(), config));
        let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        BuiltImage {
            digest: sha256_digest(&manifest),
            manifest,
            media_type: manifest_type.into(),
            config_digest,
            layer_digests,
            diff_ids,
            blobs,
            children: Vec::new(),
        }
    }
}

/// The busybox image: one gzip layer of [`busybox_entries`], `PATH` set, cmd `["sh"]`.
pub fn busybox_image() -> ImageSpec {
    ImageSpec::new(vec![Layer::new(busybox_entries())])
        .env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        .cmd(&["sh"])
}

/// An image of `n` layers: busybox's, then one file each, `/f<i>` holding
/// `i` (for `i` in `1..n`): more layers than some mounts can name.
pub fn many_layers_image(n: usize) -> ImageSpec {
    let files = (1..n).map(|i| Layer::new(vec![Entry::file(&format!("f{i}"), i.to_string())]));
    ImageSpec::new(std::iter::once(Layer::new(busybox_entries())).chain(files).collect())
}

/// A small image whose one layer holds `/marker` with `content`: give each test
/// its own content when it needs blobs no other test shares (to corrupt them).
pub fn marker_image(content: &str) -> ImageSpec {
    ImageSpec::new(vec![Layer::new(vec![Entry::file("marker", content)])])
}

/// A multi-arch index (OCI) or manifest list (Docker) of `images`, with each
/// entry's platform read from that image's config.
pub fn index(images: &[BuiltImage], style: Style) -> BuiltImage {
    let media_type = match style {
        Style::Oci => oci::INDEX,
        Style::Docker => docker::MANIFEST_LIST,
    };
    let manifests: Vec<Value> = images
        .iter()
        .map(|image| {
            assert!(image.children.is_empty(), "an index of indexes is not supported");
            let config: Value = serde_json::from_slice(image.blob(&image.config_digest)).unwrap();
            let mut platform = json!({"architecture": config["architecture"], "os": config["os"]});
            if let Some(variant) = config.get("variant") {
                platform["variant"] = variant.clone();
            }
            json!({
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    BuiltImage {
        digest: sha256_digest(&manifest),
        manifest,
        media_type: media_type.into(),
        config_digest: String::new(),
        layer_digests: Vec::new(),
        diff_ids: Vec::new(),
        blobs: Vec::new(),
        children: images.to_vec(),
    }
}

/// A built image or index: the manifest bytes and every blob, with digests.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The manifest (or index) bytes, exactly as pushed.
    pub manifest: Vec<u8>,
    pub media_type: String,
    /// `sha256:<hex>` of `manifest`.
    pub digest: String,
    /// The config blob's digest; empty for an index.
    pub config_digest: String,
    /// Compressed layer blob digests, in order; empty for an index.
    pub layer_digests: Vec<String>,
    /// Uncompressed layer digests, in order; empty for an index.
    pub diff_ids: Vec<String>,
    /// Config and layer blobs (digest, bytes); empty for an index (see `children`).
    pub blobs: Vec<(String, Vec<u8>)>,
    /// The images of an index.
    pub children: Vec<BuiltImage>,
}

impl BuiltImage {
    /// Whether this is an index / manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == oci::INDEX || self.media_type == docker::MANIFEST_LIST
    }

    /// The bytes of one of this image's blobs.
    pub fn blob(&self, digest: &str) -> &[u8] {
        self.blobs
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, data)| data.as_slice())
            .unwrap_or_else(|| panic!("image {} has no blob {digest}", self.digest))
    }

    /// The config JSON of a single image.
    pub fn config(&self) -> Value {
        serde_json::from_slice(self.blob(&self.config_digest)).unwrap()
    }

    /// Every content-addressed file of an OCI layout for this image: the
    /// manifests (children first) and all blobs, deduplicated.
    fn layout_blobs(&self) -> BTreeMap<String, Vec<u8>> {
        let mut all = BTreeMap::new();
        for child in &self.children {
            all.extend(child.layout_blobs());
        }
        for (digest, data) in &self.blobs {
            all.insert(digest.clone(), data.clone());
        }
        all.insert(self.digest.clone(), self.manifest.clone());
        all
    }

    /// The descriptor of this manifest for an OCI layout's `index.json`.
    fn layout_descriptor(&self, ref_name: &str) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.manifest.len(),
            "annotations": {REF_NAME_ANNOTATION: ref_name},
        })
    }

    /// Writes (or adds to) an OCI image layout in `dir`: `oci-layout`,
    /// `index.json` naming this manifest `ref_name`, and `blobs/sha256/*`.
    /// An existing entry with the same ref name is replaced; others are kept.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) {
        let blob_dir = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blob_dir).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        for (digest, data) in self.layout_blobs() {
            std::fs::write(blob_dir.join(digest_hex(&digest)), data).unwrap();
        }
        let index_path = dir.join("index.json");
        let mut manifests: Vec<Value> = match std::fs::read(&index_path) {
            Ok(bytes) => {
                let index: Value = serde_json::from_slice(&bytes).unwrap();
                index["manifests"].as_array().cloned().unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
        manifests.retain(|m| m["annotations"][REF_NAME_ANNOTATION] != ref_name);
        manifests.push(self.layout_descriptor(ref_name));
        std::fs::write(&index_path, oci_index_json(&manifests)).unwrap();
    }

    /// Writes an OCI archive (a tar of an OCI layout) holding only this image.
    pub fn write_oci_archive(&self, path: &Path, ref_name: &str) {
        let mut files = vec![
            ("oci-layout".to_owned(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json".to_owned(), oci_index_json(&[self.layout_descriptor(ref_name)])),
        ];
        for (digest, data) in self.layout_blobs() {
            files.push((format!("blobs/sha256/{}", digest_hex(&digest)), data));
        }
        write_tar(path, &["blobs", "blobs/sha256"], &files);
    }

    /// Writes a legacy `docker save` tarball: `manifest.json`, `repositories`,
    /// the config as `<hex>.json`, and each layer uncompressed as `<id>/layer.tar`.
    pub fn write_docker_save(&self, path: &Path, repo_tag: &str) {
        assert!(!self.is_index(), "docker save tarballs hold single images, not indexes");
        let config_name = format!("{}.json", digest_hex(&self.config_digest));
        let mut files = vec![(config_name.clone(), self.blob(&self.config_digest).to_vec())];
        let mut dirs = Vec::new();
        let mut layer_paths = Vec::new();
        let mut parent: Option<String> = None;
        for (layer_digest, diff_id) in self.layer_digests.iter().zip(&self.diff_ids) {
            // Legacy layer ids only need to be unique per position in the stack:
            // a chain id does that.
            let id = match &parent {
                None => digest_hex(diff_id).to_owned(),
                Some(parent) => hex::encode(Sha256::digest(format!("sha256:{parent} {diff_id}"))),
            };
            let tar = decompress(self.blob(layer_digest));
            assert_eq!(sha256_digest(&tar), *diff_id, "layer {layer_digest} does not decompress to its diff_id");
            let mut v1 = json!({"id": id, "created": CREATED});
            if let Some(parent) = &parent {
                v1["parent"] = json!(parent);
            }
            files.push((format!("{id}/VERSION"), b"1.0".to_vec()));
            files.push((format!("{id}/json"), serde_json::to_vec(&v1).unwrap()));
            files.push((format!("{id}/layer.tar"), tar));
            layer_paths.push(format!("{id}/layer.tar"));
            dirs.push(id.clone());
            parent = Some(id);
        }
        let manifest = json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_paths}]);
        files.push(("manifest.json".into(), serde_json::to_vec(&manifest).unwrap()));
        if let (Some((repo, tag)), Some(top)) = (repo_tag.rsplit_once(':'), &parent) {
            files.push(("repositories".into(), serde_json::to_vec(&json!({repo: {tag: top}})).unwrap()));
        }
        let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        write_tar(path, &dirs, &files);
    }
}

fn oci_index_json(manifests: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": oci::INDEX, "manifests": manifests})).unwrap()
}

/// Decompresses a layer blob, recognising the compression by its first bytes.
pub fn decompress(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut out).unwrap();
    } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(blob).unwrap();
    } else {
        out = blob.to_vec();
    }
    out
}

/// Writes a tar of `dirs` then `files` (paths relative to the archive root).
fn write_tar(path: &Path, dirs: &[&str], files: &[(String, Vec<u8>)]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for dir in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, format!("{dir}/"), std::io::empty()).unwrap();
    }
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, name, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_stable_and_match_the_bytes() {
        let spec = ImageSpec::new(vec![Layer::new(vec![Entry::file("a", "1")])]).cmd(&["true"]).label("k", "v");
        let a = spec.build();
        let b = spec.build();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.digest, sha256_digest(&a.manifest));
        for (digest, data) in &a.blobs {
            assert_eq!(*digest, sha256_digest(data));
        }
        let config = a.config();
        assert_eq!(config["rootfs"]["diff_ids"], json!(a.diff_ids));
        assert_eq!(config["config"]["Labels"]["k"], "v");
        assert_eq!(config["config"]["Cmd"], json!(["true"]));
        assert!(config["config"].get("Entrypoint").is_none());
    }

    #[test]
    fn index_reads_platforms_from_configs() {
        let amd = ImageSpec::new(vec![Layer::new(vec![Entry::file("a", "1")])]).build();
        let arm = ImageSpec::new(vec![Layer::new(vec![Entry::file("a", "1")])]).arch("arm64").variant("v8").build();
        let index = index(&[amd, arm], Style::Oci);
        let value: Value = serde_json::from_slice(&index.manifest).unwrap();
        assert_eq!(value["manifests"][0]["platform"], json!({"architecture": "amd64", "os": "linux"}));
        assert_eq!(value["manifests"][1]["platform"], json!({"architecture": "arm64", "os": "linux", "variant": "v8"}));
        assert!(index.is_index());
    }

    #[test]
    #[should_panic(expected = "gzip layers only")]
    fn docker_style_refuses_zstd() {
        ImageSpec::new(vec![Layer::new(vec![]).compressed(Compression::Zstd)]).style(Style::Docker).build();
    }
}
