//! Which host this is, for state kept in a store that several hosts share
//! (a cluster's nodes and its login host): a run's records name the host
//! whose ces runs it, and only that host's ces judges whether the run is
//! alive (its pids mean nothing elsewhere), cleans up after it, or signals it.

use std::sync::OnceLock;

/// This host: its name and, where the system has one, its machine id
/// (`/etc/machine-id`), which tells apart hosts cloned with the same name.
pub fn id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let name = nix::unistd::gethostname().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
        let machine = machine.trim();
        if machine.len() == 32 && machine.bytes().all(|b| b.is_ascii_hexdigit()) {
            format!("{name}/{machine}")
        } else {
            name
        }
    })
}

/// Whether state recorded by `host` is this host's: records that name no
/// host were written before hosts were recorded, by a ces with a store of
/// its own, and are taken as this host's.
pub fn is_this(host: Option<&str>) -> bool {
    host.is_none_or(|h| h == id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_and_others() {
        assert!(!id().is_empty());
        assert_eq!(id(), id());
        assert!(is_this(Some(id())));
        assert!(is_this(None));
        assert!(!is_this(Some("elsewhere/0123456789abcdef0123456789abcdef")));
    }
}
