//! `ces proxy`: the TRE's pull proxy (the `ces-proxy` crate), with the
//! per-user enablement of the ces config's `[pull]`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::settings::Settings;

/// Where the proxy's config is unless `--config` says.
pub const DEFAULT_CONFIG: &str = "/etc/ces/proxy.toml";

/// Serves until SIGTERM or SIGINT.
pub fn serve(config: &Path) -> anyhow::Result<()> {
    let config = ces_proxy::Config::load(config)?;
    // The TRE's ces config (the system's unless the proxy's names another):
    // who may pull.
    let settings: Settings = Settings::load(config.ces_config.as_deref())?;
    let enablement: ces_proxy::Enablement = Arc::new(move |name| crate::policy::proxy_client_enabled(&settings, name));
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime
        .block_on(ces_proxy::serve(config, enablement, |address| {
            eprintln!("ces proxy: listening on {address}");
        }))
        .map_err(anyhow::Error::msg)
}
