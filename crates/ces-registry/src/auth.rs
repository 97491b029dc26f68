//! Credentials, and the registry authentication challenges (`WWW-Authenticate`).

use std::collections::HashMap;
use std::fmt;

/// A secret (a registry token or password) that never shows itself: `Debug`
/// and `Display` print `<redacted>`, so it cannot reach a log, an error or the
/// audit trail by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who to pull as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: public images only.
    Anonymous,
    /// A user and a token (or password), sent as HTTP Basic to the registry or
    /// to its token service.
    Basic {
        /// The user name.
        user: String,
        /// The token or password.
        secret: Secret,
    },
}

impl Credentials {
    /// Credentials from a user and a token, where empty strings (the
    /// `ces-pull "" ""` habit) mean anonymous.
    pub fn from_parts(user: Option<String>, secret: Option<Secret>) -> Credentials {
        match (user, secret) {
            (Some(user), Some(secret)) if !user.is_empty() && !secret.expose().is_empty() => {
                Credentials::Basic { user, secret }
            }
            _ => Credentials::Anonymous,
        }
    }

    /// The user name, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Credentials::Anonymous => None,
            Credentials::Basic { user, .. } => Some(user),
        }
    }

    pub(crate) fn basic_header(&self) -> Option<String> {
        use base64::Engine as _;
        match self {
            Credentials::Anonymous => None,
            Credentials::Basic { user, secret } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", secret.expose()))
            )),
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`: get a token from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
        /// The `scope` the registry asked for, if it said.
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses the header; `None` for schemes ces does not speak.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let mut params = parse_params(params);
                Some(Challenge::Bearer {
                    realm: params.remove("realm").filter(|r| !r.is_empty())?,
                    service: params.remove("service"),
                    scope: params.remove("scope"),
                })
            }
            _ => None,
        }
    }
}

/// `key="value", key2=value2` (quoted values may hold commas and escapes).
fn parse_params(input: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("ghp_supersecret");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        let creds = Credentials::Basic { user: "alice".into(), secret: s };
        assert!(!format!("{creds:?}").contains("supersecret"));
    }

    #[test]
    fn empty_user_or_token_means_anonymous() {
        assert_eq!(Credentials::from_parts(Some(String::new()), Some(Secret::new(""))), Credentials::Anonymous);
        assert_eq!(Credentials::from_parts(Some("u".into()), None), Credentials::Anonymous);
        assert_eq!(Credentials::from_parts(Some("u".into()), Some(Secret::new("t"))).user(), Some("u"));
    }

    #[test]
    fn parses_ghcr_and_distribution_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:ns/app:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: Some("ghcr.io".into()),
                scope: Some("repository:ns/app:pull".into()),
            })
        );
        let c = Challenge::parse(
            r#"Bearer realm="http://127.0.0.1:1/token", scope="repository:a/b:pull,push", service=svc"#,
        );
        let Some(Challenge::Bearer { scope, service, .. }) = c else { panic!("{c:?}") };
        assert_eq!(scope.as_deref(), Some("repository:a/b:pull,push"));
        assert_eq!(service.as_deref(), Some("svc"));
        assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
    }
}
