//! A route's policy (SPEC sections 2 and 3): `public` / `optional` / `required`, roles
//! any-of, scopes all-of, and where publishable keys count. Pure: it gets what
//! authentication found and answers who the request goes upstream as, or why not.

use std::sync::Arc;

use http::{HeaderMap, Method, header};

use crate::config::{AuthMode, Config, RouteConfig};
use crate::principal::{AuthMethod, Principal};

use super::{AuthError, Authenticator, TokenRules, cookie};

/// Why a route refuses a request.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// `required` and no credential.
    #[error("a credential is required")]
    Missing,
    /// `required` and the credential was refused.
    #[error(transparent)]
    Invalid(AuthError),
    /// A publishable key where the route does not allow them.
    #[error("publishable keys are not allowed on this route")]
    PublishableKey,
    /// Authenticated but without a required role or scope.
    #[error("missing role or scope")]
    Forbidden,
    /// A cookie-authenticated unsafe request without proof it is not cross-site.
    #[error("CSRF check failed")]
    Csrf,
}

/// What [`authorize`] needs to know about a request besides its route.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// How the client reached the gateway (`http`/`https`).
    pub scheme: &'a str,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-*` are believed).
    pub trusted_peer: bool,
    pub session_cookie: &'a str,
    pub csrf_cookie: &'a str,
}

impl RequestFacts<'_> {
    /// The origin the client addressed (`scheme://host[:port]`), believing
    /// `X-Forwarded-Proto/Host` only from a trusted proxy.
    pub fn addressed_origin(&self) -> Option<String> {
        let forwarded = |name: &str| {
            self.trusted_peer
                .then(|| self.headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
                .and_then(|v| v.split(',').next())
                .map(str::trim)
        };
        let scheme = forwarded("x-forwarded-proto").unwrap_or(self.scheme);
        let host = forwarded("x-forwarded-host")
            .or_else(|| self.headers.get(header::HOST).and_then(|v| v.to_str().ok()))?;
        Some(format!("{scheme}://{host}"))
    }
}

/// Phases 3 and 4 of a routed request (also forward-auth's decision): the route's accepted
/// credential of highest precedence, authenticated through the cache, then the policy and
/// the CSRF check of cookie-authenticated unsafe requests.
pub async fn authorize(
    auth: &Authenticator,
    config: &Config,
    route: &RouteConfig,
    req: &RequestFacts<'_>,
) -> Result<Arc<Principal>, Denied> {
    if route.auth == AuthMode::Public {
        return Ok(Principal::shared_anonymous());
    }
    let found = match super::presented(req.headers, req.session_cookie, &route.credentials) {
        None => None,
        Some(p) => {
            let rules = TokenRules {
                issuer: &config.tokens.issuer,
                audience: &config.tokens.audience,
                external: true,
            };
            // Boxed: authenticating (cache, store, signature checks) makes a future of
            // several KiB, which would otherwise be part of every proxied request's future,
            // public routes included, and be copied with it.
            Some(Box::pin(auth.authenticate(p, rules, crate::store::unix_now())).await)
        }
    };
    let principal = decide(route, found)?;
    check_csrf(config, &principal, req)?;
    Ok(principal)
}

/// SPEC section 3: a cookie-authenticated unsafe request must show it is not cross-site
/// (the proxy path, forward-auth and the account API apply this one rule).
pub fn check_csrf(
    config: &Config,
    principal: &Principal,
    req: &RequestFacts<'_>,
) -> Result<(), Denied> {
    if principal.method == AuthMethod::Cookie
        && !req.method.is_safe()
        && !cookie::csrf_ok(
            req.headers,
            req.addressed_origin().as_deref(),
            &config.accounts.allowed_origins,
            req.csrf_cookie,
        )
    {
        return Err(Denied::Csrf);
    }
    Ok(())
}

/// Whether `principal` has one of the route's roles (any-of; none listed = anyone) and all
/// of its scopes (a credential without scopes acts with its user's full rights).
fn permitted(route: &RouteConfig, principal: &Principal) -> bool {
    let roles_ok =
        route.roles.is_empty() || principal.roles.iter().any(|r| route.roles.contains(r));
    let scopes_ok = match &principal.scopes {
        None => true,
        Some(held) => route.scopes.iter().all(|s| held.contains(s)),
    };
    roles_ok && scopes_ok
}

/// Decides a request. `found` is `None` without a credential, else what authenticating it
/// gave. `public` routes should not even authenticate (the caller skips it).
pub fn decide(
    route: &RouteConfig,
    found: Option<Result<Arc<Principal>, AuthError>>,
) -> Result<Arc<Principal>, Denied> {
    match route.auth {
        AuthMode::Public => Ok(Principal::shared_anonymous()),
        // Optional: anything short of a usable, permitted principal goes on as anonymous
        // (inspir's optionalAuth); a store outage is still an outage, not an anonymous user.
        AuthMode::Optional => match found {
            None
            | Some(Err(
                AuthError::InvalidApiKey | AuthError::Token(_) | AuthError::SessionRevoked,
            )) => Ok(Principal::shared_anonymous()),
            Some(Err(e @ AuthError::Store(_))) => Err(Denied::Invalid(e)),
            Some(Ok(p)) => {
                let publishable_refused =
                    p.method == AuthMethod::PublishableKey && !route.allow_publishable_keys;
                if publishable_refused || !permitted(route, &p) {
                    Ok(Principal::shared_anonymous())
                } else {
                    Ok(p)
                }
            }
        },
        AuthMode::Required => match found {
            None => Err(Denied::Missing),
            Some(Err(e)) => Err(Denied::Invalid(e)),
            Some(Ok(p))
                if p.method == AuthMethod::PublishableKey && !route.allow_publishable_keys =>
            {
                Err(Denied::PublishableKey)
            }
            Some(Ok(p)) if permitted(route, &p) => Ok(p),
            Some(Ok(_)) => Err(Denied::Forbidden),
        },
    }
}
