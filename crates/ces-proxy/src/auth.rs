//! Who a client is: HTTP Basic against an htpasswd file of bcrypt hashes
//! (`htpasswd -B`), each password checked once and remembered (by its
//! sha256) for a few minutes: bcrypt is slow on purpose.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// How long a checked password is taken without checking it again.
const REMEMBERED: Duration = Duration::from_secs(300);

/// The proxy's users.
#[derive(Debug, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
    checked: Mutex<HashMap<(String, [u8; 32]), Instant>>,
    /// Checked for unknown users, so that they cost as much as known ones.
    decoy: String,
}

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    /// A user of the htpasswd file, whose password was right.
    User(String),
    /// No credentials, where the config allows that.
    Anonymous,
}

impl Client {
    /// The name the audit log and the enablement check see.
    pub fn name(&self) -> &str {
        match self {
            Client::User(name) => name,
            Client::Anonymous => "anonymous",
        }
    }
}

impl Users {
    /// Reads `path`: `user:hash` lines, bcrypt hashes only.
    pub fn read(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("{} line {}: not user:hash", path.display(), i + 1));
            };
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "{} line {}: only bcrypt hashes are taken (htpasswd -B), not this one of {user:?}",
                    path.display(),
                    i + 1
                ));
            }
            hashes.insert(user.to_owned(), hash.to_owned());
        }
        // As costly as the file's own hashes (`$2y$<cost>$...`).
        let cost = hashes.values().next().and_then(|h| h.get(4..6)?.parse().ok()).unwrap_or(bcrypt::DEFAULT_COST);
        let decoy = bcrypt::hash("no user has this password", cost).map_err(|e| e.to_string())?;
        Ok(Users { hashes, checked: Mutex::default(), decoy })
    }

    /// The user whose `Authorization: Basic` this is, if the password is right.
    pub fn check(&self, authorization: &str) -> Option<String> {
        use base64::Engine as _;
        let encoded = authorization.strip_prefix("Basic ").or_else(|| authorization.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        let Some(hash) = self.hashes.get(user) else {
            let _ = bcrypt::verify(password, &self.decoy);
            return None;
        };
        let key = (user.to_owned(), sha2::Sha256::digest(password.as_bytes()).into());
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.retain(|_, at| at.elapsed() < REMEMBERED);
        if checked.contains_key(&key) {
            return Some(user.to_owned());
        }
        drop(checked);
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return None;
        }
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Instant::now());
        Some(user.to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bcrypt_users() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap().replacen("$2b$", "$2y$", 1);
        std::fs::write(dir.path().join("htpasswd"), format!("# users\nalice:{hash}\n")).unwrap();
        let users = Users::read(&dir.path().join("htpasswd")).unwrap();
        let basic = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert_eq!(users.check(&basic("alice:s3cret")).as_deref(), Some("alice"));
        assert_eq!(users.check(&basic("alice:s3cret")).as_deref(), Some("alice"), "remembered");
        assert_eq!(users.check(&basic("alice:wrong")), None);
        assert_eq!(users.check(&basic("bob:s3cret")), None);
        assert_eq!(users.check("Bearer x"), None);
        std::fs::write(dir.path().join("md5"), "bob:$apr1$abc$def\n").unwrap();
        assert!(Users::read(&dir.path().join("md5")).unwrap_err().contains("only bcrypt"));
    }
}
