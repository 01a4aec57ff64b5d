//! A route's policy (SPEC sections 2 and 3): `public` / `optional` / `required`, roles
//! any-of, scopes all-of, and where publishable keys count. Pure: it gets what
//! authentication found and answers who the request goes upstream as, or why not.

use crate::config::{AuthMode, RouteConfig};
use crate::principal::{AuthMethod, Principal};

use super::AuthError;

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
    found: Option<Result<Principal, AuthError>>,
) -> Result<Principal, Denied> {
    match route.auth {
        AuthMode::Public => Ok(Principal::anonymous()),
        // Optional: anything short of a usable, permitted principal goes on as anonymous
        // (inspir's optionalAuth); a store outage is still an outage, not an anonymous user.
        AuthMode::Optional => match found {
            None
            | Some(Err(
                AuthError::InvalidApiKey | AuthError::Token(_) | AuthError::SessionRevoked,
            )) => Ok(Principal::anonymous()),
            Some(Err(e @ AuthError::Store(_))) => Err(Denied::Invalid(e)),
            Some(Ok(p)) => {
                let publishable_refused =
                    p.method == AuthMethod::PublishableKey && !route.allow_publishable_keys;
                if publishable_refused || !permitted(route, &p) {
                    Ok(Principal::anonymous())
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
