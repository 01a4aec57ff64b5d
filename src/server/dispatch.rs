//! One request, start to finish: load the config snapshot, build the `RequestCtx`, hand the
//! request to the gateway's own endpoints or to the router and proxy, then render any error
//! once, add `X-Request-Id`, record metrics and write the access log line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};

use crate::accounts::Accounts;
use crate::body::{InBody, ResBody};
use crate::endpoints;
use crate::metrics::RouteMetrics;
use crate::problem::{ApiError, Fault};
use crate::proxy;
use crate::proxy::headers::X_REQUEST_ID;
use crate::router::{RouteMiss, normalize_host, normalize_path};
use crate::state::{RequestCtx, Shared, Snapshot};
use crate::telemetry;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as sent in `X-Forwarded-For`, rendered once per connection.
    pub peer_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            peer_ip: crate::proxy::headers::ip_value(peer.ip()),
        }
    }
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.metrics.in_flight.inc();
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

/// Size of the request head as it arrived: request target plus `name: value\r\n` per header.
fn head_size(uri: &http::Uri, headers: &HeaderMap) -> u64 {
    let fields: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (uri.path_and_query().map_or(1, |p| p.as_str().len()) + fields) as u64
}

/// Serves one request; never fails (errors become problem responses).
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub fn handle(
    shared: Arc<Shared>,
    accounts: Arc<Accounts>,
    snapshot: Arc<Snapshot>,
    conn: ConnInfo,
    req: Request<InBody>,
) -> impl Future<Output = Result<Response<ResBody>, Infallible>> {
    // Not an `async fn`: that would keep its by-value arguments twice in the future (as
    // captured and as moved-in locals), and this future is copied once per request.
    async move {
        let _in_flight = InFlight::new(&shared);
        let started_at = Instant::now();
        let config = &snapshot.config;
        let request_id = crate::proxy::headers::get(req.headers(), &X_REQUEST_ID)
            .filter(|v| telemetry::valid_request_id(v))
            .cloned()
            .unwrap_or_else(telemetry::new_request_id);
        let client_ip = conn.peer.ip();
        let mut ctx = RequestCtx {
            request_id,
            client_ip,
            client_ip_value: conn.peer_ip,
            trusted_peer: config
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&client_ip)),
            scheme: if conn.tls { "https" } else { "http" },
            started_at,
            route: None,
        };
        let method = req.method().clone();
        let path = normalize_path(req.uri().path()).into_owned();

        let result = route_and_serve(&shared, &accounts, &snapshot, &mut ctx, &path, req).await;
        let (mut resp, code) = match result {
            Ok(resp) => (resp, None),
            Err(err) => {
                match err.fault() {
                    Fault::Client => {}
                    // Counted in metrics and the access line; upstream.rs logs state changes.
                    Fault::Upstream => {
                        tracing::debug!(target: "gatehouse::proxy", request_id = ?ctx.request_id, error = %err, "upstream failure")
                    }
                    Fault::Internal => {
                        tracing::error!(target: "gatehouse::proxy", request_id = ?ctx.request_id, error = %err, "internal failure")
                    }
                }
                let code = err.code();
                (err.into_response(), Some(code))
            }
        };
        crate::proxy::headers::set_answer_field(
            &mut resp,
            X_REQUEST_ID.clone(),
            ctx.request_id.clone(),
        );

        let status = resp.status().as_u16();
        let elapsed = started_at.elapsed();
        let (metrics, route_name): (&RouteMetrics, &str) = match ctx.route {
            Some(i) => match snapshot.routes.get(i) {
                Some(r) => (&r.metrics, r.config.name.as_str()),
                None => (&snapshot.unrouted, "-"),
            },
            None if endpoints::is_own_endpoint(config, &path) => (&snapshot.endpoints, "gatehouse"),
            None => (&snapshot.unrouted, "-"),
        };
        metrics.observe(status, elapsed.as_secs_f64());
        if config.log.access_log {
            telemetry::access(&telemetry::AccessRecord {
                request_id: ctx.request_id.to_str().unwrap_or("-"),
                client_ip,
                method: &method,
                path: &path,
                route: route_name,
                status,
                elapsed,
                code,
            });
        }
        // `Result` for the listeners' service type, here rather than in a combinator around
        // this future, which would be one more copy of it per request.
        Ok(resp)
    }
}

#[allow(clippy::manual_async_fn)] // see the comment in the body
fn route_and_serve(
    shared: &Shared,
    accounts: &Arc<Accounts>,
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    path: &str,
    req: Request<InBody>,
) -> impl Future<Output = Result<Response<ResBody>, ApiError>> {
    // Not an `async fn`: that would keep its by-value arguments twice in the future (as
    // captured and as moved-in locals), and this future is copied once per request.
    async move {
        let limit = snapshot.config.limits.max_header_bytes;
        if head_size(req.uri(), req.headers()) > limit {
            return Err(ApiError::HeadersTooLarge { limit });
        }
        if endpoints::is_own_endpoint(&snapshot.config, path) {
            // Boxed: the account API's future is large, and inline it would be part of (and be
            // copied with) every proxied request's future.
            return Box::pin(endpoints::handle(accounts, snapshot, ctx, path, req)).await;
        }
        let raw_host = crate::proxy::headers::get(req.headers(), &header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let host = normalize_host(raw_host);
        let index = snapshot
            .router
            .find(&host, path, req.method())
            .map_err(|miss| match miss {
                RouteMiss::NoRoute => ApiError::NoRoute,
                RouteMiss::MethodNotAllowed(allow) => ApiError::MethodNotAllowed { allow },
            })?;
        ctx.route = Some(index);
        let Some(route) = snapshot.routes.get(index) else {
            return Err(ApiError::Internal(
                "router returned an unknown route".into(),
            ));
        };
        // Boxed: hyper moves the service future into place when a request arrives, and every
        // await of an unboxed child future moves that child into its parent; with the proxy
        // path inline, each such move copied KiBs (memmove was the largest single item in the
        // proxy path's profile). One allocation is cheaper than those copies.
        super::boxed_in_place(|| {
            proxy::handle(
                shared,
                accounts.authenticator(),
                snapshot,
                ctx,
                route,
                path,
                req,
            )
        })
        .await
    }
}
