//! Picking a target and sending the request to it.
//!
//! Round-robin over the route's targets, skipping those that recently refused a connection
//! (passive health). A request whose connection could not be established is retried once on
//! another target: nothing was sent, so this is safe for every method. Nothing else is retried.
//! The timeout covers the time to the upstream's response head; the body then streams for as
//! long as it takes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, Uri, Version};

use crate::body::{BodySlot, ReqBody, is_body_too_large};
use crate::metrics::{RouteMetrics, UpstreamErrorKind};
use crate::pool::{self, PoolError, PooledBody};
use crate::problem::ApiError;
use crate::state::{Shared, UpstreamSet};

/// How long a target that refused a connection is skipped.
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to (re)build the upstream request.
pub struct Outgoing {
    pub method: Method,
    /// Path and query as sent upstream (after `strip_prefix`).
    pub path_and_query: String,
    /// Moved into the first attempt; copied only for routes with several targets.
    pub headers: HeaderMap,
    /// The gateway's fields, sent after `headers` ([`super::headers::Added`]).
    pub added: super::headers::Added,
    pub body: Option<BodySlot>,
    pub body_empty: bool,
    pub max_body: Option<u64>,
}

/// Index of the next target to try, preferring healthy ones; `skip` is one already tried.
fn pick(set: &UpstreamSet, now_ms: u64, skip: Option<usize>) -> Option<usize> {
    let n = set.targets.len();
    if n == 0 {
        return None;
    }
    let start = set.next.fetch_add(1, Ordering::Relaxed) % n;
    let candidates = (0..n).map(|i| (start + i) % n).filter(|&i| Some(i) != skip);
    let mut fallback = None;
    for i in candidates {
        if set.targets[i].down_until_ms.load(Ordering::Relaxed) <= now_ms {
            return Some(i);
        }
        fallback.get_or_insert(i);
    }
    // Every candidate is marked down: try one anyway rather than fail without trying.
    fallback
}

/// The upstream request in origin form (`/path?query`); the caller has set `Host`.
fn build(out: &Outgoing, headers: HeaderMap, body: ReqBody) -> Result<Request<ReqBody>, ApiError> {
    let uri = Uri::try_from(out.path_and_query.as_str())
        .map_err(|e| ApiError::InvalidRequest(format!("cannot build upstream URI: {e}")))?;
    let mut req = Request::new(body);
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    for (name, value) in &out.added {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(req)
}

fn body_for(out: &Outgoing) -> ReqBody {
    match &out.body {
        Some(slot) if !out.body_empty => ReqBody::new(slot.clone(), out.max_body),
        _ => ReqBody::empty(),
    }
}

/// Whether the client's body is still unread (so the request can go to another target).
fn body_unread(out: &Outgoing) -> bool {
    match &out.body {
        None => true,
        Some(_) if out.body_empty => true,
        Some(slot) => match slot.lock() {
            Ok(g) => g.is_some(),
            Err(p) => p.into_inner().is_some(),
        },
    }
}

/// Sends `out` to one of the set's targets, with one failover on a connect error.
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub fn forward(
    shared: &Shared,
    set: &UpstreamSet,
    metrics: &RouteMetrics,
    mut out: Outgoing,
) -> impl Future<Output = Result<Response<PooledBody>, ApiError>> {
    // Not an `async fn`: that would keep its by-value arguments twice in the future (as
    // captured and as moved-in locals), and this future is copied once per request.
    async move {
        let deadline = tokio::time::Instant::now() + set.timeout;
        let mut tried: Option<usize> = None;
        // Only a route with a second target can need the headers twice.
        let mut spare = (set.targets.len() > 1).then(|| out.headers.clone());
        let mut headers = Some(std::mem::take(&mut out.headers));
        loop {
            let Some(i) = pick(set, shared.now_ms(), tried) else {
                return Err(ApiError::UpstreamUnavailable("route has no targets".into()));
            };
            let slot = &set.targets[i];
            let Some(these) = headers.take().or_else(|| spare.take()) else {
                return Err(ApiError::Internal("request headers already used".into()));
            };
            // Most requests carry no body: they go with borrowed parts, no `Request` (nor its URI
            // parse) in between, and keep this future small; the rest is boxed.
            let sent = if pool::bodyless(out.body_empty, &these) {
                // The pool keeps the deadline itself: one timer per connection, not per request.
                slot.pool
                    .send_bodyless(
                        &out.method,
                        &out.path_and_query,
                        &these,
                        &out.added,
                        Some(deadline),
                    )
                    .await
            } else {
                let req = build(&out, these, body_for(&out))?;
                tokio::time::timeout_at(deadline, Box::pin(slot.pool.send(req)))
                    .await
                    .unwrap_or(Err(PoolError::TimedOut))
            };
            let err = match sent {
                Ok(resp) => return Ok(resp),
                Err(err) => err,
            };
            let refused = failed(shared, set, metrics, i, err)?;
            if tried.is_none() && set.targets.len() > 1 && body_unread(&out) {
                tried = Some(i);
                continue;
            }
            return Err(ApiError::UpstreamUnavailable(refused));
        }
    }
}

/// Counts and logs a failed attempt on target `i`, marking the target down if it refused
/// the connection; `Ok` (with what happened) when another target may be tried (a failed
/// connect), else the request's error. Out of line and cold: it (with its log lines) sat
/// inside the proxy path's poll function, between the instructions every request runs.
#[cold]
#[inline(never)]
fn failed(
    shared: &Shared,
    set: &UpstreamSet,
    metrics: &RouteMetrics,
    i: usize,
    err: PoolError,
) -> Result<String, ApiError> {
    if let PoolError::TimedOut = err {
        metrics.upstream_error(UpstreamErrorKind::timeout);
        return Err(ApiError::UpstreamTimeout(set.timeout));
    }
    if let PoolError::Request(e) = &err
        && let Some(limit) = is_body_too_large(e)
    {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let Some(slot) = set.targets.get(i) else {
        return Err(ApiError::UpstreamUnavailable(err.to_string()));
    };
    if err.is_connect() {
        metrics.upstream_error(UpstreamErrorKind::connect);
        let now = shared.now_ms();
        let was_up = slot
            .down_until_ms
            .swap(now + FAIL_TIMEOUT.as_millis() as u64, Ordering::Relaxed)
            <= now;
        // Log the transition only: with every target down, each request retries the connect
        // and a line per request would flood the log during an outage (the access log and
        // `upstream_errors_total` still count every failure).
        if was_up {
            tracing::warn!(
                target: "gatehouse::upstream",
                upstream = %slot.target.authority,
                error = %err,
                "connect failed; target marked down for {FAIL_TIMEOUT:?}"
            );
        }
        return Ok(err.to_string());
    }
    metrics.upstream_error(UpstreamErrorKind::protocol);
    tracing::warn!(
        target: "gatehouse::upstream",
        upstream = %slot.target.authority,
        error = ?err,
        "upstream request failed"
    );
    Err(ApiError::UpstreamUnavailable(err.to_string()))
}
