//! Accepting connections: optional TLS (rustls, ALPN `h2` and `http/1.1`), then hyper-util's
//! auto builder, which serves HTTP/1.1 and HTTP/2 (prior-knowledge h2c on plain TCP). Every
//! connection is watched by a `GracefulShutdown` so a drain can wait for in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::ServerError;
use crate::config::{Limits, TlsConfig};
use crate::netio::Flat;

/// How long a client may take to finish a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head (slowloris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the TLS acceptor for `tls`.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{}: no certificate found",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", path_name(&tls.cert))))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn path_name(p: &Path) -> String {
    p.display().to_string()
}

/// The connection builder shared by every connection of a listener.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // Leave hyper room above the configured limit so that our own check answers with a
    // problem document; only far larger heads hit hyper's bare 431.
    let head_room = (limits.max_header_bytes as usize)
        .saturating_mul(4)
        .max(64 * 1024);
    // No `max_headers`: hyper's default (100 fields, as HAProxy's 101) parses into arrays on
    // the stack; any explicit cap makes it allocate and fill two arrays of that many entries
    // on the heap for every request head (1000 cost ~5% of a proxied request). A head with
    // more fields gets hyper's bare 431; one too large in bytes still gets our problem+json.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(head_room);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(head_room as u32);
    b
}

/// Accepts on `listener` until `shutdown` turns true, serving each connection with the
/// service `make(peer, tls)` returns; then waits up to `drain` for open requests.
pub async fn serve<M, S, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    make: M,
) where
    M: Fn(SocketAddr, bool) -> S,
    S: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<http::Response<crate::body::ResBody>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(target: "gatehouse::server", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service_fn(make(peer, tls.is_some()));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(Flat::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(target: "gatehouse::server", %peer, error = %e, "connection ended");
                    }
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        TLS_HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(target: "gatehouse::server", %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(Flat::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(target: "gatehouse::server", %peer, error = %e, "connection ended");
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(target: "gatehouse::server", "drain timeout reached; closing remaining connections");
    }
}
