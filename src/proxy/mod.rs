//! The proxy path for a routed request, phase by phase (DESIGN "One request, one way through"):
//!
//! 3. authenticate: the route's accepted credential of highest precedence, through the
//!    cache (`auth`); `public` routes skip this;
//! 4. policy: `public` / `optional` / `required`, roles, scopes, publishable keys, and the
//!    CSRF check of cookie-authenticated unsafe requests;
//! 5. rate limit: the route's GCRA limiter (its own `rate_limit`, else the default policy),
//!    keyed by credential, user or client IP, shared by the replicas when the store is Redis
//!    (`exact`: one awaited round trip; `approximate`: decided locally); 429 with
//!    `Retry-After`, and the `RateLimit-*` headers on every answer of the route;
//! 6. headers: hop-by-hop removal, owned-header deletion, credential removal (unless
//!    `forward_credentials`), identity injection, `X-Forwarded-*`, `strip_prefix`;
//! 7. upstream: pick a target, forward, stream the answer back (WebSocket upgrades spliced).
//!
//! This module knows no users and no stores: it gets a principal and acts on it.

pub mod headers;
pub mod upstream;

use std::sync::{Arc, Mutex};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::auth::policy;
use crate::auth::{self, Authenticator, cookie};
use crate::body::{InBody, ResBody};
use crate::config::LimitKey;
use crate::principal::Principal;
use crate::problem::{ApiError, RATELIMIT, RATELIMIT_POLICY, RateLimitInfo};
use crate::ratelimit::route::{RateDecision, Who};
use crate::state::{CompiledRoute, RequestCtx, Shared, Snapshot};

/// Path and query as the upstream sees them: `strip_prefix` removed, never empty.
fn upstream_path(strip_prefix: Option<&str>, path: &str, query: Option<&str>) -> String {
    let stripped = match strip_prefix {
        Some(prefix) => match path.strip_prefix(prefix.trim_end_matches('/')) {
            Some("") => "/",
            Some(rest) if rest.starts_with('/') => rest,
            // A prefix that ends inside a segment (`/api` of `/apix`) is not stripped.
            _ => path,
        },
        None => path,
    };
    let mut out = String::with_capacity(stripped.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(stripped);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Handles a request already matched to `route`. `path` is the normalised request path.
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub fn handle(
    shared: &Shared,
    auth: &Authenticator,
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    route: &CompiledRoute,
    path: &str,
    mut req: Request<InBody>,
) -> impl Future<Output = Result<Response<ResBody>, ApiError>> {
    // Not an `async fn`: that would keep its by-value arguments twice in the future (as
    // captured and as moved-in locals), and this future is copied once per request.
    async move {
        let principal = policy::authorize(
            auth,
            &snapshot.config,
            &route.config,
            &policy::RequestFacts {
                method: req.method(),
                headers: req.headers(),
                scheme: ctx.scheme,
                trusted_peer: ctx.trusted_peer,
                session_cookie: &snapshot.session_cookie,
                csrf_cookie: &snapshot.csrf_cookie,
            },
        )
        .await?;
        let rate_headers = rate_limit(ctx, route, &principal, req.headers(), snapshot).await?;

        // The declared length is looked up only on routes with a limit.
        if let Some(limit) = route.config.max_body
            && content_length(req.headers()).is_some_and(|len| len > limit)
        {
            return Err(ApiError::BodyTooLarge { limit });
        }

        let upgrade = headers::upgrade_requested(req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        let path_and_query = upstream_path(
            route.config.strip_prefix.as_deref(),
            path,
            req.uri().query(),
        );
        let authority = req.uri().authority().cloned();
        let (parts, body) = req.into_parts();
        let mut hdrs = parts.headers;

        headers::remove_hop_by_hop(&mut hdrs);
        headers::remove_owned(&mut hdrs);
        if !route.config.forward_credentials {
            remove_credentials(&mut hdrs, snapshot);
        }
        let mut added = headers::Added::with_capacity(8);
        headers::inject_identity(&mut added, &principal);
        if route.config.identity_assertion
            && let Some(token) = Box::pin(auth.assertion(
                &principal,
                &route.config.name,
                &snapshot.config.tokens.issuer,
                crate::store::unix_now(),
            ))
            .await
            .map_err(|e| ApiError::Internal(format!("signing the identity assertion: {e}")))?
            && let Ok(v) = HeaderValue::from_str(&token)
        {
            added.push((headers::X_GATEHOUSE_ASSERTION.clone(), v));
        }
        // One lookup: the client's Host, or else the one put in.
        let host = match headers::get(&hdrs, &header::HOST) {
            Some(h) => Some(h.clone()),
            None => {
                let host = host_for(authority.as_ref(), route);
                if let Some(h) = &host {
                    hdrs.insert(header::HOST, h.clone());
                }
                host
            }
        };
        headers::set_forwarded(
            &mut hdrs,
            &headers::ClientConn {
                ip: &ctx.client_ip_value,
                trusted: ctx.trusted_peer,
                scheme: ctx.scheme,
                host: host.as_ref(),
            },
            &ctx.request_id,
            &mut added,
        );
        if let Some(proto) = &upgrade {
            hdrs.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            hdrs.insert(header::UPGRADE, proto.clone());
        }

        let body_empty = hyper::body::Body::is_end_stream(&body);
        let out = upstream::Outgoing {
            method: parts.method,
            path_and_query,
            headers: hdrs,
            added,
            // No slot (an allocation) for the common body-less request.
            body: (!body_empty).then(|| Arc::new(Mutex::new(Some(body)))),
            body_empty,
            max_body: route.config.max_body,
        };
        let mut resp = upstream::forward(shared, &route.upstream, &route.metrics, out).await?;

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let resp_upgrade = resp.headers().get(header::UPGRADE).cloned();
        headers::remove_hop_by_hop(resp.headers_mut());
        if switching {
            match (client_upgrade, resp_upgrade) {
                (Some(client_side), Some(proto)) => {
                    let upstream_side = hyper::upgrade::on(&mut resp);
                    splice(client_side, upstream_side);
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    resp.headers_mut().insert(header::UPGRADE, proto);
                }
                _ => {
                    return Err(ApiError::UpstreamUnavailable(
                        "upstream switched protocols without an upgrade request".into(),
                    ));
                }
            }
        }
        let mut resp = resp.map(ResBody::Upstream);
        let (policy, state) = rate_headers;
        headers::set_answer_field(&mut resp, RATELIMIT_POLICY.clone(), policy);
        headers::set_answer_field(&mut resp, RATELIMIT.clone(), state);
        Ok(resp)
    }
}

/// Phase 5: counts the request against the route's limiter; the `RateLimit-Policy` and
/// `RateLimit` values to send back when it may go on.
async fn rate_limit(
    ctx: &RequestCtx,
    route: &CompiledRoute,
    principal: &Principal,
    headers: &http::HeaderMap,
    snapshot: &Snapshot,
) -> Result<(HeaderValue, HeaderValue), ApiError> {
    let limiter = &route.limiter;
    // Per-IP keys count an IPv6 client by its /64 (see `ratelimit::limit_ip`).
    let ip = || {
        crate::ratelimit::limit_ip(ctx.real_client_ip(headers, &snapshot.config.trusted_proxies))
    };
    // Anonymous callers (and, for `user`, app principals) fall back to their address.
    let who = match limiter.key_kind() {
        LimitKey::Credential => {
            match (&principal.key_id, &principal.session_id, &principal.user_id) {
                (Some(k), _, _) => Who::Key(k),
                (None, Some(s), _) => Who::Session(s),
                (None, None, Some(u)) => Who::User(u),
                (None, None, None) => Who::Ip(ip()),
            }
        }
        LimitKey::User => match &principal.user_id {
            Some(u) => Who::User(u),
            None => Who::Ip(ip()),
        },
        LimitKey::Ip => Who::Ip(ip()),
    };
    // Only a shared exact policy waits (one store round trip); local and approximate
    // decisions are made on the spot. (Boxed, like the other rarely taken awaits of the
    // proxy path, so its future is not part of, and copied with, every request's.)
    let decision = if limiter.round_trips() {
        Box::pin(limiter.check_exact(&who)).await
    } else {
        limiter.check_who(&who)
    };
    match decision {
        RateDecision::Allowed { .. } => Ok(limiter.headers(&decision)),
        RateDecision::Limited { retry_after_secs } => {
            let (quota, window_secs) = limiter.quota();
            Err(ApiError::RateLimited(RateLimitInfo {
                policy: limiter.name().to_owned(),
                quota,
                window_secs,
                retry_after_secs,
            }))
        }
    }
}

/// The credentials Gatehouse reads (`X-API-Key`, a bearer token, the session and CSRF
/// cookies) are not the upstream's business unless a route says `forward_credentials`.
fn remove_credentials(h: &mut http::HeaderMap, snapshot: &Snapshot) {
    // Names present first, as in `headers::remove_hop_by_hop`: most requests to a public
    // route carry none of the three.
    let (mut key, mut authorization, mut cookies) = (false, false, false);
    for name in h.keys() {
        if name == header::AUTHORIZATION {
            authorization = true;
        } else if name == header::COOKIE {
            cookies = true;
        } else if name == auth::X_API_KEY {
            key = true;
        }
    }
    if key {
        h.remove(&auth::X_API_KEY);
    }
    if authorization && auth::bearer(h).is_some() {
        h.remove(header::AUTHORIZATION);
    }
    if cookies {
        cookie::strip(h, &[&snapshot.session_cookie, &snapshot.csrf_cookie]);
    }
}

/// The `Host` of a request that came without one: HTTP/2 carries it in `:authority`, and
/// HTTP/1.1 upstreams need the field; else the route's first target's.
fn host_for(
    authority: Option<&http::uri::Authority>,
    route: &CompiledRoute,
) -> Option<HeaderValue> {
    authority
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| {
            let target = route.upstream.targets.first()?;
            HeaderValue::from_str(target.target.authority.as_str()).ok()
        })
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Copies bytes both ways between the upgraded client and upstream connections.
fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(target: "gatehouse::upstream", error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(target: "gatehouse::upstream", error = %e, "upgraded stream ended");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_a_rooted_path() {
        let cases = [
            (Some("/api"), "/api/users", Some("a=1"), "/users?a=1"),
            (Some("/api"), "/api", None, "/"),
            (Some("/api/"), "/api/x", None, "/x"),
            (Some("/api"), "/apix", None, "/apix"),
            (None, "/api/x", None, "/api/x"),
        ];
        for (strip, path, query, want) in cases {
            let got = upstream_path(strip, path, query);
            assert_eq!(got, want, "{strip:?} {path}");
        }
    }
}
