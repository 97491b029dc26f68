//! `ces proxy`: the TRE's pull-through proxy for OCI registries. It serves
//! the pull side of the distribution API under `/v2/<upstream>/<repository>`
//! for the upstream registries and repositories its config names, to the
//! users of its htpasswd file whom the TRE's `[pull]` policy enables; it
//! fetches through ces's registry client (allowlisted, size-bounded,
//! verified, redirects only to the hosts named), caches content-addressed
//! blobs in a ces store, and appends every request to a hash-chained audit
//! log in ces's format. See docs/proxy.md.

pub mod auth;
pub mod cache;
pub mod config;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;

pub use config::Config;
pub use server::{Enablement, State};

/// The most connections served at once.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client has for a TLS handshake, and for each request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The user the proxy's own audit records are written as: the service's.
pub fn service_user() -> ces_audit::User {
    // The real uid, from the kernel.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(u32::MAX);
    let name = std::env::var("USER").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| uid.to_string());
    ces_audit::User { name, uid }
}

/// The TLS acceptor for `[tls]`.
fn tls_acceptor(tls: &config::TlsConfig) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| format!("cannot read {}: {e}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", tls.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("cannot read a key from {}: {e}", tls.key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves until SIGTERM or SIGINT. `ready` hears the address listened on.
/// Connections are served on the calling thread (the registry client's
/// futures are not `Send`), so call it on a current-thread runtime; blob
/// reads, the audit log, password checks and eviction use the runtime's
/// blocking threads (the cache's small files are read on the async one).
pub async fn serve(config: Config, enablement: Enablement, ready: impl FnOnce(SocketAddr)) -> Result<(), String> {
    tokio::task::LocalSet::new().run_until(serve_local(config, enablement, ready)).await
}

async fn serve_local(config: Config, enablement: Enablement, ready: impl FnOnce(SocketAddr)) -> Result<(), String> {
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let state = Arc::new(State::new(config, enablement)?);
    ready(address);
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    // At most this many connections at once: the next waits for one to end.
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.map_err(|e| e.to_string())?,
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: not a busy loop.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(server::handle(state, peer, request).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            // A client that sends no (whole) request in time is let go.
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let served = match tls {
                Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => builder.serve_connection(TokioIo::new(stream), service).await,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
                None => builder.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}
