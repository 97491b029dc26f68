//! Image references: `[registry/]repository[:tag][@digest]`, normalized the
//! way Docker and podman do (`busybox` is `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references that name neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// A fully qualified image reference.
///
/// Always has a registry and a repository, and a tag, a digest or both.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {:?}: {reason}", crate::quote::quote(input))]
pub struct ReferenceError {
    /// The string that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ImageReference {
    /// The registry host, with its port if it has one (`ghcr.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`ns/name`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> ImageReference {
        ImageReference { tag: None, digest: Some(digest), ..self.clone() }
    }
}

impl FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ReferenceError { input: input.to_owned(), reason };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.len() > 512 {
            return Err(err("it is longer than 512 characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                (rest, Some(digest.parse::<Digest>().map_err(|_| err("the digest is not sha256:<64 hex digits>"))?))
            }
            None => (input, None),
        };
        // A tag follows the last ':' unless that ':' belongs to a registry port.
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (rest, None),
        };
        if tag.is_some_and(|tag| !valid_tag(tag)) {
            return Err(err("the tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        if !valid_registry(&registry) {
            return Err(err("the registry must be a host name or address with an optional :port"));
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_path_component) {
            return Err(err("the repository must be lowercase letters, digits and separators (. _ __ -) between '/'"));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        let reference = ImageReference { registry, repository, tag, digest };
        // Normalized too: what the store keeps, and reads back, is this.
        if reference.to_string().len() > 512 {
            return Err(err("it is longer than 512 characters, with the registry and tag it stands for"));
        }
        Ok(reference)
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for ImageReference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageReference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    (1..=128).contains(&bytes.len())
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the distribution grammar for path components.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> ImageReference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(parse("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(parse("user/app:1.0").to_string(), "docker.io/user/app:1.0");
        assert_eq!(parse("ghcr.io/ns/name").to_string(), "ghcr.io/ns/name:latest");
        assert_eq!(parse("localhost/app").registry(), "localhost");
    }

    #[test]
    fn registry_port_is_not_a_tag() {
        let r = parse("127.0.0.1:5000/ns/app");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "ns/app");
        assert_eq!(r.tag(), Some("latest"));
        let r = parse("127.0.0.1:5000/ns/app:v2");
        assert_eq!(r.tag(), Some("v2"));
    }

    #[test]
    fn digest_references_keep_an_explicit_tag_only() {
        let r = parse(&format!("ghcr.io/ns/name@{DIGEST}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), DIGEST);
        let r = parse(&format!("ghcr.io/ns/name:1.2@{DIGEST}"));
        assert_eq!(r.tag(), Some("1.2"));
        assert_eq!(r.manifest_reference(), DIGEST);
        assert_eq!(r.to_string(), format!("ghcr.io/ns/name:1.2@{DIGEST}"));
    }

    /// The store keeps a name normalized and reads it back: one that grows
    /// past the limit once normalized would be stored and never read back
    /// (neither counted, listed nor removable).
    #[test]
    fn the_limit_holds_for_the_normalized_name() {
        let short = "a".repeat(500);
        let error = short.parse::<ImageReference>().unwrap_err();
        assert!(error.to_string().contains("with the registry and tag it stands for"), "{error}");
        let whole = format!("ghcr.io/ns/{}:1", "a".repeat(499));
        assert_eq!(whole.len(), 512);
        assert_eq!(parse(&whole).to_string().parse::<ImageReference>().unwrap(), parse(&whole));
    }

    #[test]
    fn display_parse_round_trip() {
        for s in ["ghcr.io/a/b:c", "127.0.0.1:5000/x/y-z__w.v:T_1.0-rc", &format!("quay.io/a/b@{DIGEST}")] {
            let r = parse(s);
            assert_eq!(parse(&r.to_string()), r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<ImageReference>(&json).unwrap(), r);
        }
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "UPPER/case",
            "ghcr.io/ns/name:",
            "ghcr.io/ns/name:-tag",
            "ghcr.io/ns//name",
            "ghcr.io/ns/name@sha256:abc",
            "ghcr.io/ns/name@md5:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "ghcr.io/../name",
            "ghcr.io/ns/name:tag with space",
            "ghcr.io:port/x",
            "ghcr.io/ns/name_",
            "ghcr.io/ns/a...b",
        ] {
            assert!(bad.parse::<ImageReference>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn error_names_the_input_and_the_reason() {
        let e = "ghcr.io/ns/Name".parse::<ImageReference>().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"ghcr.io/ns/Name\""), "{msg}");
        assert!(msg.contains("lowercase"), "{msg}");
    }
}
