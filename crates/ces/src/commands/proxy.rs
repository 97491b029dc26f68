//! `ces proxy`: the TRE's pull proxy (the `ces-proxy` crate), with the
//! per-user enablement of the ces config's `[pull]`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::settings::Settings;

/// Where the proxy's config is unless `--config` says.
pub const DEFAULT_CONFIG: &str = "/etc/ces/proxy.toml";

/// `ces proxy` through sudo: root would read, write and connect where a
/// user's config says.
#[derive(Debug, thiserror::Error)]
#[error("ces proxy is an operator's service: it does not run through sudo")]
pub struct ProxyUnderSudo;

/// Whether a user may pull, and since when that is known.
type Answer = (Result<(), String>, std::time::Instant);

/// Serves until SIGTERM or SIGINT.
pub fn serve(config: &Path) -> anyhow::Result<()> {
    if crate::identity::sudo_user()?.is_some() {
        return Err(ProxyUnderSudo.into());
    }
    let config = ces_proxy::Config::load(config)?;
    // The TRE's ces config (the system's unless the proxy's names another):
    // who may pull.
    let settings: Settings = Settings::load(config.ces_config.as_deref())?;
    // The group database is asked at most once a minute per user.
    let known: std::sync::Mutex<std::collections::HashMap<String, Answer>> = std::sync::Mutex::default();
    let enablement: ces_proxy::Enablement = Arc::new(move |name| {
        let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|_, (_, at)| at.elapsed() < std::time::Duration::from_secs(60));
        if let Some((answer, _)) = known.get(name) {
            return answer.clone();
        }
        let answer = crate::policy::proxy_client_enabled(&settings, name);
        known.insert(name.to_owned(), (answer.clone(), std::time::Instant::now()));
        answer
    });
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime
        .block_on(ces_proxy::serve(config, enablement, |address| {
            eprintln!("ces proxy: listening on {address}");
        }))
        .map_err(anyhow::Error::msg)
}
