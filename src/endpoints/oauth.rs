//! `/auth/oauth/{provider}/authorize` and `/callback` (SPEC section 5), `/link`, and the
//! signed-in user's `/auth/me/identities`: decode the query or body, call
//! `accounts::oauth`, answer with a redirect and cookies or with JSON.
//!
//! The flow's `state` rides in the `gh_oauth` cookie (HttpOnly, SameSite=Lax so it comes
//! back on the provider's top-level redirect, scoped to the provider's `/oauth/` path, 10
//! minutes), which binds the callback to the browser that started the sign-in.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::wire::rfc3339;
use super::{
    allow, authenticate, client_info, json, no_content, read_json, read_json_or_empty, token_answer,
};
use crate::accounts::oauth::{CallbackOutcome, CallbackParams, CodeExchange, OAUTH_STATE_TTL};
use crate::accounts::{Accounts, Issued};
use crate::auth::cookie;
use crate::body::{InBody, ResBody};
use crate::config::Config;
use crate::oauth::{IdTokenError, OAuthError};
use crate::outbound::OutboundError;
use crate::problem::{ApiError, FieldError};
use crate::state::{RequestCtx, Snapshot};
use crate::store::UnixMillis;

/// The cookie that holds a browser sign-in's `state`.
pub const STATE_COOKIE: &str = "gh_oauth";

/// `POST .../callback`'s body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeBody {
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
}

/// `POST .../link`'s body.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    redirect_to: Option<String>,
}

/// A provider failure as the client sees it: the provider's own trouble is a 502/504, a
/// refused code a 400, an ID token that fails a check a 401 `invalid_token`.
pub(super) fn api_error(err: OAuthError) -> ApiError {
    match err {
        OAuthError::Unreachable(OutboundError::Timeout(d)) => ApiError::UpstreamTimeout(d),
        OAuthError::Unreachable(
            e @ (OutboundError::InvalidUrl(_)
            | OutboundError::Pool(_)
            | OutboundError::Status(_)
            | OutboundError::TooLarge(_)
            | OutboundError::Body(_)),
        ) => ApiError::UpstreamUnavailable(format!("identity provider: {e}")),
        OAuthError::BadResponse(why) => {
            ApiError::UpstreamUnavailable(format!("identity provider: {why}"))
        }
        OAuthError::CodeRejected(error) => ApiError::InvalidRequest(format!(
            "the provider refused the authorization code ({error})"
        )),
        OAuthError::IdToken(
            e @ (IdTokenError::Missing
            | IdTokenError::Signature(_)
            | IdTokenError::WrongIssuer
            | IdTokenError::WrongAudience
            | IdTokenError::WrongAuthorizedParty
            | IdTokenError::WrongNonce
            | IdTokenError::Expired
            | IdTokenError::BadIssueTime
            | IdTokenError::InvalidClaim(_)
            | IdTokenError::UserinfoSubject),
        ) => ApiError::InvalidToken(format!("ID token: {e}")),
    }
}

fn query_params(req: &Request<InBody>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// `Set-Cookie` for the state cookie (`max_age` 0 deletes it).
fn state_cookie(config: &Config, provider: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
    let mut text = format!(
        "{STATE_COOKIE}={value}; Path={}/oauth/{provider}/; Max-Age={max_age}; HttpOnly; SameSite=Lax",
        config.accounts.prefix.trim_end_matches('/')
    );
    if config.cookies.secure {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).ok()
}

fn redirect(location: &str) -> Result<Response<ResBody>, ApiError> {
    let location = HeaderValue::from_str(location)
        .map_err(|_| ApiError::Internal("redirect target is not a header value".into()))?;
    let mut resp = Response::new(ResBody::empty());
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Serves `/oauth/{rest}` under the account prefix.
pub(super) async fn handle(
    accounts: &Accounts,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    rest: &str,
    req: Request<InBody>,
    now: UnixMillis,
) -> Result<Response<ResBody>, ApiError> {
    let config = &*snapshot.config;
    let Some((name, action)) = rest.split_once('/') else {
        return Err(ApiError::NotFound);
    };
    if !config.accounts.oauth.iter().any(|p| p.name == name) {
        return Err(ApiError::NotFound);
    }
    let method = req.method().clone();
    match action {
        "authorize" => {
            allow(&method, &[Method::GET, Method::HEAD])?;
            let redirect_to = param(&query_params(&req), "redirect_to");
            let started = accounts
                .oauth_begin(config, name, redirect_to, None, now)
                .await?;
            let mut resp = redirect(&started.location)?;
            if let Some(v) = state_cookie(config, name, &started.state, OAUTH_STATE_TTL.as_secs()) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
        "link" => {
            allow(&method, &[Method::POST])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            let body: LinkBody = read_json_or_empty(req).await?;
            let started = accounts
                .oauth_begin(config, name, body.redirect_to, Some(&caller.user.id), now)
                .await?;
            let mut resp = json(
                StatusCode::OK,
                &serde_json::json!({ "authorize_url": started.location }),
                true,
            );
            if let Some(v) = state_cookie(config, name, &started.state, OAUTH_STATE_TTL.as_secs()) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
        "callback" if method == Method::POST => {
            let client = client_info(config, ctx, req.headers());
            let body: ExchangeBody = read_json(req).await?;
            let mut errors = Vec::new();
            let code = body.code.filter(|c| !c.is_empty());
            let redirect_uri = body.redirect_uri.filter(|r| !r.is_empty());
            if code.is_none() {
                errors.push(FieldError::new("code", "is required"));
            }
            if redirect_uri.is_none() {
                errors.push(FieldError::new("redirect_uri", "is required"));
            }
            let (Some(code), Some(redirect_uri)) = (code, redirect_uri) else {
                return Err(ApiError::ValidationFailed { errors });
            };
            let outcome = accounts
                .oauth_exchange(
                    config,
                    name,
                    &CodeExchange {
                        code: &code,
                        redirect_uri: &redirect_uri,
                        code_verifier: body.code_verifier.as_deref().filter(|v| !v.is_empty()),
                    },
                    &client,
                    now,
                )
                .await?;
            let issued = super::signed_in(outcome)?;
            Ok(json(StatusCode::OK, &token_answer(&issued), true))
        }
        "callback" => {
            allow(&method, &[Method::GET, Method::POST])?;
            let client = client_info(config, ctx, req.headers());
            let query = query_params(&req);
            let params = CallbackParams {
                code: param(&query, "code"),
                state: param(&query, "state"),
                error: param(&query, "error"),
                iss: param(&query, "iss"),
            };
            let cookie_state = cookie::find(req.headers(), STATE_COOKIE);
            match accounts
                .oauth_callback(config, name, params, cookie_state, &client, now)
                .await?
            {
                CallbackOutcome::SignedIn(issued, redirect_to) => {
                    signed_in_redirect(accounts, config, name, &issued, &redirect_to, now)
                }
                CallbackOutcome::MfaRequired {
                    mfa_token,
                    redirect_to,
                } => {
                    // In the fragment: never sent to a server or in a Referer. The app's
                    // page reads it and posts it with the code to /auth/mfa/verify.
                    let separator = if redirect_to.contains('#') { '&' } else { '#' };
                    let mut resp = redirect(&format!(
                        "{redirect_to}{separator}mfa_required=1&mfa_token={mfa_token}"
                    ))?;
                    if let Some(v) = state_cookie(config, name, "", 0) {
                        resp.headers_mut().append(header::SET_COOKIE, v);
                    }
                    Ok(resp)
                }
                CallbackOutcome::Linked(redirect_to) => {
                    let mut resp = redirect(&redirect_to)?;
                    if let Some(v) = state_cookie(config, name, "", 0) {
                        resp.headers_mut().append(header::SET_COOKIE, v);
                    }
                    Ok(resp)
                }
            }
        }
        _ => Err(ApiError::NotFound),
    }
}

/// `GET /auth/me/identities` → `{identities: [{provider, subject, email, created_at}]}`;
/// `DELETE /auth/me/identities/{provider}[/{subject}]` → 204 (unlinked).
pub(super) async fn identities(
    accounts: &Accounts,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    rest: &str,
    req: Request<InBody>,
    now: UnixMillis,
) -> Result<Response<ResBody>, ApiError> {
    let method = req.method().clone();
    let target = rest
        .strip_prefix("/me/identities")
        .unwrap_or_default()
        .trim_start_matches('/');
    if target.is_empty() {
        allow(&method, &[Method::GET, Method::HEAD])?;
    } else {
        allow(&method, &[Method::DELETE])?;
    }
    let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
    if target.is_empty() {
        let linked = accounts.oauth_identities(&caller.user.id).await?;
        let views: Vec<_> = linked
            .iter()
            .map(|i| {
                serde_json::json!({
                    "provider": i.provider,
                    "subject": i.subject,
                    "email": i.email,
                    "created_at": rfc3339(i.created_at),
                })
            })
            .collect();
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "identities": views }),
            true,
        ));
    }
    let (provider, subject) = match target.split_once('/') {
        Some((p, s)) => (p, Some(s)),
        None => (target, None),
    };
    accounts
        .oauth_unlink(&caller.user, provider, subject)
        .await?;
    Ok(no_content())
}

/// The end of a browser sign-in: the session and CSRF cookies exactly as a cookie login
/// sets them, the state cookie deleted, and a redirect to `redirect_to`.
fn signed_in_redirect(
    accounts: &Accounts,
    config: &Config,
    provider: &str,
    issued: &Issued,
    redirect_to: &str,
    now: UnixMillis,
) -> Result<Response<ResBody>, ApiError> {
    let (token, max_age) = accounts.session_cookie(config, issued, now)?;
    let csrf = crate::accounts::new_secret();
    let mut resp = redirect(redirect_to)?;
    for v in [
        cookie::set_session(&config.cookies, &token, max_age),
        cookie::set_csrf(&config.cookies, &csrf, max_age),
        state_cookie(config, provider, "", 0),
    ]
    .into_iter()
    .flatten()
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_failure_has_a_client_status() {
        let cases = [
            (
                api_error(OAuthError::Unreachable(OutboundError::Timeout(
                    std::time::Duration::from_secs(1),
                ))),
                504,
            ),
            (
                api_error(OAuthError::Unreachable(OutboundError::Status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                ))),
                502,
            ),
            (api_error(OAuthError::BadResponse("x".into())), 502),
            (
                api_error(OAuthError::CodeRejected("invalid_grant".into())),
                400,
            ),
            (
                api_error(OAuthError::IdToken(IdTokenError::WrongNonce)),
                401,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
        }
    }
}
