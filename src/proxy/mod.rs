//! The proxy path for a routed request, phase by phase (DESIGN "One request, one way through"):
//!
//! 3. authenticate: the route's accepted credential of highest precedence, through the
//!    cache (`auth`); `public` routes skip this;
//! 4. policy: `public` / `optional` / `required`, roles, scopes, publishable keys, and the
//!    CSRF check of cookie-authenticated unsafe requests;
//! 5. rate limit: not enforced yet;
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
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::auth::policy::{self, Denied};
use crate::auth::{self, AuthError, Authenticator, TokenRules, cookie};
use crate::body::ResBody;
use crate::config::{AuthMode, Config};
use crate::principal::{AuthMethod, Principal};
use crate::problem::ApiError;
use crate::state::{CompiledRoute, RequestCtx, Shared, Snapshot};
use crate::store::StoreError;

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

/// How a refusal of the route policy is answered (SPEC section 4).
pub fn denied(d: Denied) -> ApiError {
    match d {
        Denied::Missing => ApiError::MissingCredentials,
        Denied::PublishableKey => ApiError::PublishableKeyNotAllowed,
        Denied::Forbidden => ApiError::Forbidden,
        Denied::Invalid(AuthError::InvalidApiKey) => ApiError::InvalidApiKey,
        Denied::Invalid(AuthError::Token(e)) if e.is_expired() => ApiError::TokenExpired,
        Denied::Invalid(AuthError::Token(e)) => ApiError::InvalidToken(e.to_string()),
        Denied::Invalid(AuthError::SessionRevoked) => ApiError::SessionRevoked,
        Denied::Invalid(AuthError::Store(StoreError::Unavailable(e))) => {
            ApiError::StoreUnavailable(e)
        }
        Denied::Invalid(AuthError::Store(
            e @ (StoreError::NotFound
            | StoreError::Conflict { .. }
            | StoreError::InvalidCursor
            | StoreError::Internal(_)),
        )) => ApiError::Internal(e.to_string()),
    }
}

/// The origin the client addressed (`scheme://host[:port]`), believing
/// `X-Forwarded-Proto/Host` only from a trusted proxy.
fn addressed_origin(ctx: &RequestCtx, headers: &http::HeaderMap) -> Option<String> {
    let forwarded = |name: &str| {
        ctx.trusted_peer
            .then(|| headers.get(name).and_then(|v| v.to_str().ok()))
            .flatten()
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let scheme = forwarded("x-forwarded-proto").unwrap_or(ctx.scheme);
    let host = forwarded("x-forwarded-host")
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))?;
    Some(format!("{scheme}://{host}"))
}

/// Phases 3 and 4: who the request goes upstream as, or why it does not.
pub async fn authorize(
    auth: &Authenticator,
    config: &Config,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    route: &CompiledRoute,
    req: &Request<Incoming>,
) -> Result<Principal, ApiError> {
    if route.config.auth == AuthMode::Public {
        return Ok(Principal::anonymous());
    }
    let presented = auth::presented(
        req.headers(),
        &snapshot.session_cookie,
        &route.config.credentials,
    );
    let found = match presented {
        None => None,
        Some(p) => {
            let rules = TokenRules {
                issuer: &config.tokens.issuer,
                audience: &config.tokens.audience,
            };
            Some(auth.authenticate(p, rules, crate::store::unix_now()).await)
        }
    };
    let principal = policy::decide(&route.config, found).map_err(denied)?;
    if principal.method == AuthMethod::Cookie
        && !req.method().is_safe()
        && !cookie::csrf_ok(
            req.headers(),
            addressed_origin(ctx, req.headers()).as_deref(),
            &config.accounts.allowed_origins,
            &snapshot.csrf_cookie,
        )
    {
        return Err(ApiError::CsrfFailed);
    }
    Ok(principal)
}

/// Handles a request already matched to `route`. `path` is the normalised request path.
pub async fn handle(
    shared: &Shared,
    auth: &Authenticator,
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    route: &CompiledRoute,
    path: &str,
    mut req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let principal = authorize(auth, &snapshot.config, snapshot, ctx, route, &req).await?;

    if let (Some(limit), Some(len)) = (route.config.max_body, content_length(req.headers()))
        && len > limit
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
    headers::inject_identity(&mut hdrs, &principal);
    if !hdrs.contains_key(header::HOST) {
        // HTTP/2 carries the host in `:authority`; HTTP/1.1 upstreams need it as `Host`.
        let host = authority
            .as_ref()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| {
                route
                    .upstream
                    .targets
                    .first()
                    .and_then(|t| HeaderValue::from_str(t.target.authority.as_str()).ok())
            });
        if let Some(h) = host {
            hdrs.insert(header::HOST, h);
        }
    }
    let host = hdrs.get(header::HOST).cloned();
    headers::set_forwarded(
        &mut hdrs,
        &headers::ClientConn {
            ip: ctx.client_ip,
            trusted: ctx.trusted_peer,
            scheme: ctx.scheme,
            host: host.as_ref(),
        },
    );
    hdrs.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    if let Some(proto) = &upgrade {
        hdrs.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        hdrs.insert(header::UPGRADE, proto.clone());
    }

    let body_empty = hyper::body::Body::is_end_stream(&body);
    let out = upstream::Outgoing {
        method: parts.method,
        path_and_query,
        headers: hdrs,
        body: Some(Arc::new(Mutex::new(Some(body)))),
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
    Ok(resp.map(ResBody::Upstream))
}

/// The credentials Gatehouse reads (`X-API-Key`, a bearer token, the session and CSRF
/// cookies) are not the upstream's business unless a route says `forward_credentials`.
fn remove_credentials(h: &mut http::HeaderMap, snapshot: &Snapshot) {
    h.remove(&auth::X_API_KEY);
    if auth::bearer(h).is_some() {
        h.remove(header::AUTHORIZATION);
    }
    if h.contains_key(header::COOKIE) {
        cookie::strip(h, &[&snapshot.session_cookie, &snapshot.csrf_cookie]);
    }
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
