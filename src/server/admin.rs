//! The admin listener: `/healthz` (process alive), `/readyz` (config loaded, store reachable),
//! `/metrics` (Prometheus text). It never serves proxied traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::accounts::Accounts;
use crate::body::{InBody, ResBody};
use crate::metrics::{FetchResult, IssuerLabel, JwksFetchLabels};
use crate::problem::ApiError;
use crate::state::{LiveSnapshot, Shared};

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ResBody> {
    let mut resp = Response::new(ResBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Answers one admin request.
pub async fn handle(
    shared: Arc<Shared>,
    accounts: Arc<Accounts>,
    live: LiveSnapshot,
    req: Request<InBody>,
) -> Result<Response<ResBody>, Infallible> {
    let resp = match (req.method().as_str(), req.uri().path()) {
        ("GET" | "HEAD", "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        ("GET" | "HEAD", "/readyz") => {
            // A snapshot exists only once a config was loaded; the store must answer too.
            let store = match tokio::time::timeout(READY_TIMEOUT, shared.store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
            };
            let snapshot = live.load();
            // A shared store that is down is down for every replica: taking them all out of
            // the load balancer would also stop what still works without it (public
            // routes, cached credentials), so such a replica reports itself degraded.
            let degraded = store.is_err() && shared.store.is_shared();
            let status = match (store.is_ok(), degraded) {
                (true, _) => "ready",
                (false, true) => "degraded",
                (false, false) => "not_ready",
            };
            let body = serde_json::json!({
                "status": status,
                "config": snapshot.config.source.display().to_string(),
                "routes": snapshot.routes.len(),
                "store": {
                    "kind": shared.store.kind(),
                    "ok": store.is_ok(),
                    "error": store.as_ref().err(),
                },
            });
            let status = if store.is_ok() || degraded {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, "application/json", body.to_string())
        }
        ("GET" | "HEAD", "/metrics") => {
            let lookups = accounts.authenticator().cache().store_lookups();
            shared
                .metrics
                .auth_store_lookups
                .set(i64::try_from(lookups).unwrap_or(i64::MAX));
            for issuer in accounts.authenticator().trusted().stats() {
                let fetches = |result| {
                    shared.metrics.jwks_fetches.get_or_create(&JwksFetchLabels {
                        issuer: issuer.issuer.clone(),
                        result,
                    })
                };
                fetches(FetchResult::ok)
                    .inner()
                    .store(issuer.fetches_ok, Ordering::Relaxed);
                fetches(FetchResult::error)
                    .inner()
                    .store(issuer.fetches_failed, Ordering::Relaxed);
                shared
                    .metrics
                    .jwks_age
                    .get_or_create(&IssuerLabel {
                        issuer: issuer.issuer.clone(),
                    })
                    .set(issuer.age_secs.unwrap_or(-1.0));
            }
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                shared.metrics.encode(),
            )
        }
        _ => ApiError::NotFound.into_response(),
    };
    Ok(resp)
}
