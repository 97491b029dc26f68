//! `proxy.toml`: where the proxy listens, which upstream registries it
//! serves and which of their repositories, who may use it, its cache.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The proxy's config file, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen (`address:port`).
    pub listen: SocketAddr,
    /// The cache (content-addressed blobs and manifests, tags, sizes).
    pub cache_dir: PathBuf,
    /// The most the cache's blobs may weigh (`20G`, `512M`, or bytes);
    /// least recently used ones go first.
    #[serde(default = "default_cache_size", deserialize_with = "size")]
    pub cache_max_size: u64,
    /// After this many seconds, a tag is asked of its upstream again (served
    /// from the cache meanwhile, and when the upstream cannot be reached).
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl_seconds: u64,
    /// The hash-chained audit log of every request answered or refused.
    pub audit_log: PathBuf,
    /// The ces config whose `[pull]` says who may pull [default: the
    /// system's, /etc/ces/config.toml, if there is one].
    pub ces_config: Option<PathBuf>,
    /// Users and their bcrypt password hashes (`htpasswd -B`).
    pub htpasswd: Option<PathBuf>,
    /// Whether clients that give no credentials may pull (as `anonymous`).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// The names clients may reach the proxy by (the `Host` header); any
    /// well-formed one when empty.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Plain HTTP on an address other than loopback (off: TLS is required there).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// TLS with the operator's certificate.
    pub tls: Option<TlsConfig>,
    /// The registries served.
    #[serde(rename = "upstream", default)]
    pub upstreams: Vec<UpstreamConfig>,
}

/// `[tls]`: PEM files.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// One `[[upstream]]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry's name as clients give it (`ghcr.io`): the first part
    /// of a repository's path on the proxy, and of an image's name.
    pub name: String,
    /// Another name for it in paths, for clients whose image names cannot
    /// hold a port (`gitlab` for `gitlab.example.ac.uk:5050`: skopeo and
    /// docker read a `:` there as a tag).
    pub alias: Option<String>,
    /// Where the proxy reaches it (`https://ghcr.io`, or another host or
    /// port: `https://gitlab.example.ac.uk:5050`).
    pub url: String,
    /// The repositories that may be pulled (`*` within one part of a path,
    /// `**` across parts: `my-org/**`).
    pub repositories: Vec<String>,
    /// Hosts the registry may redirect blob downloads to (a CDN); none
    /// other is followed.
    #[serde(default)]
    pub redirect_hosts: Vec<String>,
    /// A credential of the operator's, used for the repositories it names
    /// when a client brings none of its own.
    pub shared_credentials: Option<SharedCredentials>,
}

/// `[upstream.shared_credentials]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedCredentials {
    /// The registry user.
    pub user: String,
    /// A file holding the token (root's, not readable by others).
    pub token_file: PathBuf,
    /// The repositories it is used for (a subset of the upstream's).
    pub repositories: Vec<String>,
}

fn default_cache_size() -> u64 {
    20 << 30
}

fn default_tag_ttl() -> u64 {
    300
}

fn size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match <Size as serde::Deserialize>::deserialize(deserializer)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => parse_size(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not a size (e.g. 20G, 512M, or a number of bytes)"))
        }),
    }
}

/// `20G`, `512M`, `64K`, or bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not the config's TOML.
    #[error("invalid proxy config {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Well-formed, but not usable.
    #[error("invalid proxy config {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.message().trim().to_owned() })?;
        config.check().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    /// What serde cannot say.
    pub fn check(&self) -> Result<(), String> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.allow_plain_http {
            return Err(format!(
                "listen = \"{}\" is not a loopback address, and there is no [tls]: add [tls] cert and key (or allow_plain_http = true)",
                self.listen
            ));
        }
        if self.htpasswd.is_none() && !self.allow_anonymous {
            return Err("no htpasswd names the proxy's users (or set allow_anonymous = true)".to_owned());
        }
        if self.upstreams.is_empty() {
            return Err("no [[upstream]]: the proxy would serve nothing".to_owned());
        }
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let at = format!("upstream {} ({:?})", i + 1, upstream.name);
            if !is_host(&upstream.name) {
                return Err(format!("{at}: name must be a registry's host[:port]"));
            }
            let names = |u: &UpstreamConfig| [Some(u.name.clone()), u.alias.clone()];
            if self.upstreams[..i].iter().flat_map(names).flatten().any(|n| names(upstream).contains(&Some(n))) {
                return Err(format!("{at}: named twice"));
            }
            if let Some(alias) = &upstream.alias
                && (alias.contains(':') || !is_host(alias))
            {
                return Err(format!("{at}: alias {alias:?} must be a name without a port"));
            }
            let rest = upstream.url.strip_prefix("https://").or_else(|| upstream.url.strip_prefix("http://"));
            let host = rest.map(|r| r.trim_end_matches('/')).unwrap_or_default();
            if !is_host(host) {
                return Err(format!("{at}: url must be http[s]://host[:port]"));
            }
            // A single word would read as a Docker Hub namespace.
            let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if !bare.contains('.') && bare != "localhost" && !host.contains(':') {
                return Err(format!("{at}: url's host {host:?} needs a domain or a port"));
            }
            if upstream.repositories.is_empty() {
                return Err(format!("{at}: no repositories may be pulled"));
            }
            for pattern in
                upstream.repositories.iter().chain(upstream.shared_credentials.iter().flat_map(|s| &s.repositories))
            {
                if pattern.is_empty() || pattern.starts_with('/') || pattern.contains("//") {
                    return Err(format!("{at}: {pattern:?} is not a repository pattern"));
                }
            }
            for host in &upstream.redirect_hosts {
                if !is_host(host) {
                    return Err(format!("{at}: redirect host {host:?} is not host[:port]"));
                }
            }
        }
        Ok(())
    }
}

/// `host[:port]`: letters, digits, `.`, `-`, one optional port.
pub fn is_host(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-'])
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `repository` matches `pattern` (`*`: any characters but `/`;
/// `**`: any characters).
pub fn glob(pattern: &str, repository: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| go(rest, &s[i..])),
            [b'*', rest @ ..] => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != b'/').any(|i| go(rest, &s[i..])),
            [c, rest @ ..] => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), repository.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn globs_sizes_and_hosts() {
        assert!(glob("my-org/**", "my-org/a/b"));
        assert!(glob("my-org/*", "my-org/a"));
        assert!(!glob("my-org/*", "my-org/a/b"));
        assert!(!glob("my-org/**", "my-orgx/a"));
        assert!(glob("**", "anything/at/all"));
        assert!(glob("a/*-tools", "a/r-tools"));
        assert_eq!(parse_size("20G"), Some(20 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1X"), None);
        assert!(is_host("ghcr.io") && is_host("127.0.0.1:5000") && is_host("gitlab.example.ac.uk:5050"));
        assert!(!is_host("a/b") && !is_host("") && !is_host("x:") && !is_host("x:99999999") && !is_host("-x"));
    }
}
