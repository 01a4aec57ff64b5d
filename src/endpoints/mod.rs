//! The gateway's own HTTP API: `/auth/...` (under `accounts.prefix`) and `/.well-known/...`,
//! answered on every host before any route is matched.
//!
//! Owns: decoding requests (JSON bodies, bearer tokens, client address), calling
//! `accounts`, and encoding answers; the mapping of [`AccountError`] to [`ApiError`] is here
//! and nowhere else. Thin on purpose: every rule lives in `accounts`.
//!
//! Must not touch: the store (only through `accounts`) or the proxy.

mod oauth;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::accounts::invitations::Acceptance;
use crate::accounts::validate::IssueKind;
use crate::accounts::{
    AccountError, Accounts, Caller, ClientInfo, PartnerOutcome, ProfileChange, Registered,
    Registration, SignIn, SignInRequest, single_issue_kind,
};
use crate::auth::password::PasswordError;
use crate::auth::policy::{self, RequestFacts};
use crate::auth::{self, cookie};
use crate::body::{InBody, ResBody};
use crate::config::Config;
use crate::config::CredentialKind;
use crate::problem::{ApiError, FieldError, MfaToken, RateLimitInfo};
use crate::state::{RequestCtx, Snapshot};
use crate::store::{StoreError, UnixMillis};
use wire::{
    AcceptBody, AdminUserBody, ApiKeyBody, CodeBody, DeleteAccountBody, EmailBody, InvitationBody,
    LoginBody, MagicLinkBody, MfaVerifyBody, PartnerBody, PasswordBody, ProfileBody, RefreshBody,
    RegisterBody, ResetBody, TokenBody, admin_user_view, created_key_view, invited_view, key_view,
    session_choice, session_view, token_answer, user_listing, user_view,
};

/// Largest JSON body the account API reads; its documents are small.
const MAX_JSON_BODY: usize = 64 * 1024;

pub use crate::store::unix_now;

impl From<AccountError> for ApiError {
    fn from(err: AccountError) -> Self {
        match err {
            AccountError::Invalid(issues) => match single_issue_kind(&issues) {
                Some(IssueKind::Mismatch) => ApiError::PasswordsDoNotMatch,
                Some(IssueKind::WeakPassword) => {
                    ApiError::WeakPassword(issues.into_iter().map(|i| i.message).collect())
                }
                Some(IssueKind::Invalid) | None => ApiError::ValidationFailed {
                    errors: issues
                        .into_iter()
                        .map(|i| FieldError::new(i.field, i.message))
                        .collect(),
                },
            },
            AccountError::RegistrationClosed => ApiError::Forbidden,
            AccountError::Taken(field) => ApiError::AlreadyExists {
                field: field.as_str(),
            },
            AccountError::InvalidCredentials => ApiError::InvalidCredentials,
            AccountError::Disabled => ApiError::AccountDisabled,
            AccountError::RateLimited(r) => ApiError::RateLimited(RateLimitInfo {
                policy: r.policy.to_owned(),
                quota: r.quota,
                window_secs: crate::ratelimit::route::window_secs(r.window),
                retry_after_secs: ceil_secs(r.retry_after),
            }),
            AccountError::InvalidRefreshToken(why) => {
                ApiError::InvalidToken(format!("the refresh token is not valid ({why})"))
            }
            AccountError::Token(e) if e.is_expired() => ApiError::TokenExpired,
            AccountError::Token(e) => ApiError::InvalidToken(e.to_string()),
            AccountError::SessionRevoked => ApiError::SessionRevoked,
            AccountError::InvalidApiKey => ApiError::InvalidApiKey,
            AccountError::NotAUser => ApiError::PublishableKeyNotAllowed,
            AccountError::Forbidden(_) => ApiError::Forbidden,
            AccountError::NotFound => ApiError::NotFound,
            AccountError::Store(StoreError::Unavailable(e)) => ApiError::StoreUnavailable(e),
            AccountError::Store(
                e @ (StoreError::NotFound
                | StoreError::Conflict { .. }
                | StoreError::InvalidCursor
                | StoreError::Internal(_)),
            ) => ApiError::Internal(e.to_string()),
            AccountError::Password(e @ PasswordError::Busy) => ApiError::Overloaded(e.to_string()),
            AccountError::Password(
                e @ (PasswordError::InvalidHash(_)
                | PasswordError::Hashing(_)
                | PasswordError::Worker),
            ) => ApiError::Internal(e.to_string()),
            AccountError::Signing(e) => ApiError::Internal(e.to_string()),
            AccountError::InvalidOneTimeToken => {
                ApiError::InvalidToken("the link is invalid, already used or expired".into())
            }
            AccountError::EmailNotVerified => ApiError::EmailNotVerified,
            AccountError::InvalidMfaToken => ApiError::InvalidToken(
                "the mfa_token is invalid, already used or expired; sign in again".into(),
            ),
            AccountError::MfaAlreadyEnabled => ApiError::MfaAlreadyEnabled,
            AccountError::MfaState(why) => ApiError::InvalidRequest(why.into()),
            AccountError::Mfa(e) => ApiError::Internal(e.to_string()),
            AccountError::OAuth(e) => oauth::api_error(e),
            AccountError::OAuthState(why) => ApiError::InvalidRequest(why.to_owned()),
            AccountError::OAuthDenied(error) => {
                ApiError::InvalidRequest(format!("the provider answered {error}"))
            }
            AccountError::LastSignInMethod => ApiError::InvalidRequest(
                "this is the account's only way to sign in: set a password first".into(),
            ),
        }
    }
}

/// `Retry-After` is whole seconds; round up so a client that obeys it is not refused again.
fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// True when `path` is answered here rather than routed.
pub fn is_own_endpoint(config: &Config, path: &str) -> bool {
    crate::router::prefix_matches(&config.accounts.prefix, path)
        || path.starts_with("/.well-known/")
}

/// Serves one request to the account API or a discovery document.
pub async fn handle(
    accounts: &Arc<Accounts>,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    path: &str,
    req: Request<InBody>,
) -> Result<Response<ResBody>, ApiError> {
    let config = &*snapshot.config;
    let prefix = config.accounts.prefix.trim_end_matches('/');
    let sub = path
        .strip_prefix(prefix)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    let method = req.method().clone();
    let now = unix_now();
    match (sub, path) {
        (_, "/.well-known/jwks.json") => {
            allow(&method, &[Method::GET, Method::HEAD])?;
            let keys = accounts.keys();
            Ok(json_bytes(StatusCode::OK, keys.jwks().clone(), false))
        }
        (_, "/.well-known/openid-configuration") => {
            allow(&method, &[Method::GET, Method::HEAD])?;
            Ok(json(StatusCode::OK, &discovery(config), false))
        }
        (Some("/register"), _) => {
            allow(&method, &[Method::POST])?;
            let client = client_info(config, ctx, req.headers());
            let body: RegisterBody = read_json(req).await?;
            let registered = accounts
                .register(
                    config,
                    Registration {
                        email: body.email,
                        username: body.username,
                        password: body.password,
                        password_confirmation: body.password_confirmation,
                        name: body.name,
                    },
                    &client,
                    now,
                )
                .await?;
            match registered {
                Registered::SignedIn(issued) => {
                    Ok(json(StatusCode::CREATED, &token_answer(&issued), true))
                }
                Registered::VerificationPending(user) => Ok(json(
                    StatusCode::CREATED,
                    &serde_json::json!({ "user": user_view(&user), "verification_required": true }),
                    true,
                )),
                Registered::Concealed => Ok(accepted()),
            }
        }
        (Some("/verify-email"), _) => {
            allow(&method, &[Method::POST])?;
            let body: TokenBody = read_json(req).await?;
            let token = required(body.token, "token")?;
            let user = accounts.verify_email(&token, now).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "user": user_view(&user) }),
                true,
            ))
        }
        (Some("/verify-email/resend"), _) => {
            allow(&method, &[Method::POST])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            let client = client_info(config, ctx, req.headers());
            accounts
                .resend_verification(config, &caller, &client, now)
                .await?;
            Ok(accepted())
        }
        (Some("/forgot-password"), _) => {
            allow(&method, &[Method::POST])?;
            let client = client_info(config, ctx, req.headers());
            let body: EmailBody = read_json(req).await?;
            let email = required(body.email, "email")?;
            accounts
                .forgot_password(&snapshot.config, &email, &client, now)
                .await?;
            Ok(accepted())
        }
        (Some("/magic-link"), _) => {
            allow(&method, &[Method::POST])?;
            let client = client_info(config, ctx, req.headers());
            let body: MagicLinkBody = read_json(req).await?;
            let email = required(body.email, "email")?;
            accounts
                .request_magic_link(&snapshot.config, &email, body.redirect_to, &client, now)
                .await?;
            Ok(accepted())
        }
        (Some("/magic-link/verify"), _) => {
            allow(&method, &[Method::POST])?;
            let client = client_info(config, ctx, req.headers());
            let body: TokenBody = read_json(req).await?;
            let token = required(body.token, "token")?;
            let (outcome, redirect_to) = accounts
                .verify_magic_link(config, &token, &client, now)
                .await?;
            let issued = signed_in(outcome)?;
            tokens_with_redirect(&issued, redirect_to)
        }
        (Some("/reset-password"), _) => {
            allow(&method, &[Method::POST])?;
            let body: ResetBody = read_json(req).await?;
            let token = required(body.token, "token")?;
            accounts
                .reset_password(config, &token, body.new_password, now)
                .await?;
            Ok(no_content())
        }
        (Some("/login"), _) => {
            allow(&method, &[Method::POST])?;
            let client = client_info(config, ctx, req.headers());
            let body: LoginBody = read_json(req).await?;
            let cookie_session = body.wants_cookie()?;
            let issued = match body.api_key.as_deref() {
                // A secret key is a server's credential of its own: no second factor.
                Some(key) => accounts.login_api_key(config, key, &client, now).await?,
                None => {
                    let id = body.login_id()?;
                    let request = SignInRequest {
                        cookie_session,
                        redirect_to: None,
                    };
                    let outcome = accounts
                        .login(
                            config,
                            id,
                            body.password.unwrap_or_default(),
                            request,
                            &client,
                            now,
                        )
                        .await?;
                    signed_in(outcome)?
                }
            };
            if cookie_session {
                cookie_answer(accounts, config, &issued, now)
            } else {
                Ok(json(StatusCode::OK, &token_answer(&issued), true))
            }
        }
        (Some("/mfa/verify"), _) => {
            allow(&method, &[Method::POST])?;
            let client = client_info(config, ctx, req.headers());
            let body: MfaVerifyBody = read_json(req).await?;
            let asked = session_choice(body.session.as_deref())?;
            let (mfa_token, code) = body.required()?;
            let verified = accounts
                .verify_mfa(config, &mfa_token, &code, &client, now)
                .await?;
            // The second step may say how it wants the session; else the first step's
            // choice stands.
            if asked.unwrap_or(verified.request.cookie_session) {
                cookie_answer(accounts, config, &verified.issued, now)
            } else {
                tokens_with_redirect(&verified.issued, verified.request.redirect_to)
            }
        }
        (Some("/mfa/totp"), _) => {
            allow(&method, &[Method::POST, Method::DELETE])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            if method == Method::POST {
                let enrollment = accounts.enroll_totp(config, &caller, now).await?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "secret": enrollment.secret,
                        "otpauth_uri": enrollment.otpauth_uri,
                    }),
                    true,
                ))
            } else {
                let client = client_info(config, ctx, req.headers());
                let body: CodeBody = read_json_or_empty(req).await?;
                accounts
                    .disable_totp(config, &caller, body.code, &client, now)
                    .await?;
                Ok(no_content())
            }
        }
        (Some("/mfa/totp/confirm"), _) => {
            allow(&method, &[Method::POST])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            let body: CodeBody = read_json(req).await?;
            let code = required(body.code, "code")?;
            let codes = accounts.confirm_totp(&caller, &code, now).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "recovery_codes": codes }),
                true,
            ))
        }
        (Some("/refresh"), _) => {
            allow(&method, &[Method::POST])?;
            let body: RefreshBody = read_json(req).await?;
            let Some(token) = body.refresh_token.filter(|t| !t.is_empty()) else {
                return Err(ApiError::ValidationFailed {
                    errors: vec![FieldError::new("refresh_token", "is required")],
                });
            };
            let issued = accounts.refresh(config, &token, now).await?;
            Ok(json(StatusCode::OK, &token_answer(&issued), true))
        }
        (Some("/logout"), _) => {
            allow(&method, &[Method::POST])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            accounts.logout(&caller, now).await?;
            let mut resp = no_content();
            if caller.principal.method == crate::principal::AuthMethod::Cookie {
                for v in cookie::clear(&config.cookies).into_iter().flatten() {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            Ok(resp)
        }
        (Some("/me"), _) => {
            allow(
                &method,
                &[Method::GET, Method::HEAD, Method::PATCH, Method::DELETE],
            )?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            match method {
                Method::PATCH => {
                    let body: ProfileBody = read_json(req).await?;
                    let change = ProfileChange {
                        name: body.name,
                        username: body.username,
                        email: body.email,
                    };
                    let user = accounts.update_profile(&caller, change, now).await?;
                    Ok(json(StatusCode::OK, &user_view(&user), true))
                }
                Method::DELETE => {
                    let client = client_info(config, ctx, req.headers());
                    let body: DeleteAccountBody = read_json_or_empty(req).await?;
                    accounts
                        .delete_account(config, &caller, body.password, &client, now)
                        .await?;
                    Ok(no_content())
                }
                _ => Ok(json(StatusCode::OK, &user_view(&caller.user), true)),
            }
        }
        (Some("/password"), _) => {
            allow(&method, &[Method::POST])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            let client = client_info(config, ctx, req.headers());
            let body: PasswordBody = read_json(req).await?;
            accounts
                .change_password(
                    config,
                    &caller,
                    body.current_password,
                    body.new_password,
                    &client,
                    now,
                )
                .await?;
            Ok(no_content())
        }
        (Some("/api-keys"), _) => {
            allow(&method, &[Method::GET, Method::HEAD, Method::POST])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            if method == Method::POST {
                let body: ApiKeyBody = read_json(req).await?;
                let input = body.into_input()?;
                let (key, plain) = accounts.create_api_key(&caller.user, input, now).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &created_key_view(&key, &plain),
                    true,
                ))
            } else {
                let keys = accounts.list_api_keys(&caller.user.id).await?;
                let views: Vec<_> = keys.iter().map(key_view).collect();
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "api_keys": views }),
                    true,
                ))
            }
        }
        (Some("/admin/users"), _) => {
            allow(&method, &[Method::GET, Method::HEAD, Method::POST])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            require_admin(&caller)?;
            if method != Method::POST {
                let listing = user_listing(req.uri().query())?;
                let page = accounts.list_users(listing).await?;
                let users: Vec<_> = page.users.iter().map(admin_user_view).collect();
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "users": users, "next_cursor": page.next_cursor }),
                    true,
                ));
            }
            let body: PartnerBody = read_json(req).await?;
            let input = body.into_input()?;
            match accounts.partner_register(input, now).await? {
                PartnerOutcome::Created { user, key, plain } => Ok(json(
                    StatusCode::CREATED,
                    &serde_json::json!({
                        "user": user_view(&user),
                        "api_key": created_key_view(&key, &plain),
                        "created": true,
                    }),
                    true,
                )),
                PartnerOutcome::Existing(user) => Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "user": user_view(&user), "created": false }),
                    true,
                )),
            }
        }
        (Some(rest), _) if admin_user_sub(rest, "/api-keys").is_some() => {
            allow(&method, &[Method::POST])?;
            let id = admin_user_sub(rest, "/api-keys").unwrap_or_default();
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            require_admin(&caller)?;
            let owner = accounts.user_by_id(id).await?;
            let body: ApiKeyBody = read_json(req).await?;
            let input = body.into_input()?;
            let (key, plain) = accounts.create_api_key(&owner, input, now).await?;
            Ok(json(
                StatusCode::CREATED,
                &created_key_view(&key, &plain),
                true,
            ))
        }
        (Some(rest), _) if admin_user_sub(rest, "/mfa").is_some() => {
            allow(&method, &[Method::DELETE])?;
            let id = admin_user_sub(rest, "/mfa").unwrap_or_default();
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            require_admin(&caller)?;
            accounts.reset_mfa(id, now).await?;
            Ok(no_content())
        }
        (Some(rest), _) if rest.starts_with("/oauth/") => {
            let rest = rest.strip_prefix("/oauth/").unwrap_or_default();
            oauth::handle(accounts, snapshot, ctx, rest, req, now).await
        }
        (Some(rest), _) if rest == "/me/identities" || rest.starts_with("/me/identities/") => {
            oauth::identities(accounts, snapshot, ctx, rest, req, now).await
        }
        (Some("/sessions"), _) => {
            allow(&method, &[Method::GET, Method::HEAD, Method::DELETE])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            if method == Method::DELETE {
                accounts.end_other_sessions(&caller, now).await?;
                return Ok(no_content());
            }
            let sessions = accounts.list_sessions(&caller, now).await?;
            let views: Vec<_> = sessions
                .iter()
                .map(|s| session_view(s, caller.session_id()))
                .collect();
            Ok(json(StatusCode::OK, &views, true))
        }
        (Some(rest), _) if rest.starts_with("/sessions/") => {
            allow(&method, &[Method::DELETE])?;
            let id = rest.strip_prefix("/sessions/").unwrap_or_default();
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            accounts.end_session(&caller, id, now).await?;
            Ok(no_content())
        }
        (Some(rest), _)
            if rest
                .strip_prefix("/admin/users/")
                .is_some_and(|id| !id.is_empty() && !id.contains('/')) =>
        {
            allow(
                &method,
                &[Method::GET, Method::HEAD, Method::PATCH, Method::DELETE],
            )?;
            let id = rest.strip_prefix("/admin/users/").unwrap_or_default();
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            require_admin(&caller)?;
            match method {
                Method::PATCH => {
                    let body: AdminUserBody = read_json(req).await?;
                    let user = accounts.change_user(id, body.into_change(), now).await?;
                    Ok(json(StatusCode::OK, &admin_user_view(&user), true))
                }
                Method::DELETE => {
                    accounts.remove_user(id, now).await?;
                    Ok(no_content())
                }
                _ => {
                    let user = accounts.user_by_id(id).await?;
                    Ok(json(StatusCode::OK, &admin_user_view(&user), true))
                }
            }
        }
        (Some("/admin/invitations"), _) => {
            allow(&method, &[Method::POST])?;
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            require_admin(&caller)?;
            let body: InvitationBody = read_json(req).await?;
            let email = required(body.email, "email")?;
            let invited = accounts
                .invite(config, &caller, &email, body.roles, now)
                .await?;
            Ok(json(StatusCode::CREATED, &invited_view(&invited), true))
        }
        (Some("/invitations/accept"), _) => {
            allow(&method, &[Method::POST])?;
            let client = client_info(config, ctx, req.headers());
            let body: AcceptBody = read_json(req).await?;
            let token = required(body.token, "token")?;
            let issued = accounts
                .accept_invitation(
                    config,
                    Acceptance {
                        token,
                        password: body.password,
                        password_confirmation: body.password_confirmation,
                        name: body.name,
                        username: body.username,
                    },
                    &client,
                    now,
                )
                .await?;
            Ok(json(StatusCode::OK, &token_answer(&issued), true))
        }
        (Some("/verify"), _) => {
            allow(&method, &[Method::GET, Method::HEAD])?;
            forward_auth(accounts, snapshot, ctx, req.headers()).await
        }
        (Some(rest), _) if rest.starts_with("/api-keys/") => {
            allow(&method, &[Method::DELETE])?;
            let id = rest.strip_prefix("/api-keys/").unwrap_or_default();
            let caller = authenticate(accounts, snapshot, ctx, &method, req.headers(), now).await?;
            accounts
                .revoke_api_key(Some(&caller.user.id), id, now)
                .await?;
            Ok(no_content())
        }
        _ => Err(ApiError::NotFound),
    }
}

/// The user id of `/admin/users/{id}{suffix}` (an id is one non-empty path segment).
fn admin_user_sub<'a>(rest: &'a str, suffix: &str) -> Option<&'a str> {
    rest.strip_prefix("/admin/users/")?
        .strip_suffix(suffix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The session of a first factor, or 401 `mfa_required` with the `mfa_token` when the
/// account has a second factor.
fn signed_in(outcome: SignIn) -> Result<crate::accounts::Issued, ApiError> {
    match outcome {
        SignIn::Issued(issued) => Ok(*issued),
        SignIn::MfaRequired { mfa_token } => Err(ApiError::MfaRequired {
            mfa_token: MfaToken(mfa_token),
        }),
    }
}

/// The token answer, with a magic link's `redirect_to` when it had one.
fn tokens_with_redirect(
    issued: &crate::accounts::Issued,
    redirect_to: Option<String>,
) -> Result<Response<ResBody>, ApiError> {
    let mut answer = serde_json::to_value(token_answer(issued))
        .map_err(|e| ApiError::Internal(format!("encoding tokens: {e}")))?;
    if let (Some(target), Some(obj)) = (redirect_to, answer.as_object_mut()) {
        obj.insert("redirect_to".into(), serde_json::Value::String(target));
    }
    Ok(json(StatusCode::OK, &answer, true))
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if Accounts::is_admin(caller) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// `GET /auth/verify` for nginx `auth_request`, Traefik ForwardAuth and Caddy
/// `forward_auth`: the decision of the route the original request would match (its method,
/// host and URI from `X-Forwarded-Method/Host/Uri` or `X-Original-URI`, believed only from
/// `trusted_proxies`), answered 200 with the identity headers or with the 401/403 problem.
/// Without a route to go by, a valid credential of any kind is required.
async fn forward_auth(
    accounts: &Accounts,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Result<Response<ResBody>, ApiError> {
    let forwarded = |name: &str| {
        ctx.trusted_peer
            .then(|| headers.get(name).and_then(|v| v.to_str().ok()))
            .flatten()
    };
    let uri = forwarded("x-forwarded-uri").or_else(|| forwarded("x-original-uri"));
    // The original request's method: its CSRF check depends on it too.
    let method = forwarded("x-forwarded-method")
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::GET);
    let route = uri.and_then(|uri| {
        let host = forwarded("x-forwarded-host")
            .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
            .unwrap_or("");
        let path = uri.split(['?', '#']).next().unwrap_or("/");
        let path = crate::router::normalize_path(path);
        let index = snapshot
            .router
            .find(&crate::router::normalize_host(host), &path, &method)
            .ok()?;
        snapshot.routes.get(index).map(|r| &r.config)
    });
    let route = route.unwrap_or(&VERIFY_FALLBACK);
    let facts = RequestFacts {
        method: &method,
        headers,
        scheme: ctx.scheme,
        trusted_peer: ctx.trusted_peer,
        session_cookie: &snapshot.session_cookie,
        csrf_cookie: &snapshot.csrf_cookie,
    };
    let principal =
        policy::authorize(accounts.authenticator(), &snapshot.config, route, &facts).await?;
    let mut resp = no_content();
    *resp.status_mut() = StatusCode::OK;
    principal.write_headers(resp.headers_mut());
    Ok(resp)
}

/// The policy `/auth/verify` applies when no route tells: any valid credential.
static VERIFY_FALLBACK: std::sync::LazyLock<crate::config::RouteConfig> =
    std::sync::LazyLock::new(verify_fallback_route);

fn verify_fallback_route() -> crate::config::RouteConfig {
    use crate::config::{AuthMode, HostMatch, RouteConfig, UpstreamConfig};
    RouteConfig {
        name: "verify".into(),
        host: HostMatch::Any,
        path_prefix: "/".into(),
        methods: Vec::new(),
        upstream: UpstreamConfig {
            targets: Vec::new(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            ca_file: None,
        },
        auth: AuthMode::Required,
        credentials: vec![
            CredentialKind::ApiKey,
            CredentialKind::Jwt,
            CredentialKind::Cookie,
        ],
        roles: Vec::new(),
        scopes: Vec::new(),
        allow_publishable_keys: false,
        forward_credentials: false,
        rate_limit: None,
        strip_prefix: None,
        identity_assertion: false,
        max_body: None,
    }
}

/// Login with `"session": "cookie"`: the session and CSRF cookies, no tokens in the body.
fn cookie_answer(
    accounts: &Accounts,
    config: &Config,
    issued: &crate::accounts::Issued,
    now: UnixMillis,
) -> Result<Response<ResBody>, ApiError> {
    let (token, max_age) = accounts.session_cookie(config, issued, now)?;
    let csrf = crate::accounts::new_secret();
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({ "user": user_view(&issued.user), "expires_in": max_age }),
        true,
    );
    for v in [
        cookie::set_session(&config.cookies, &token, max_age),
        cookie::set_csrf(&config.cookies, &csrf, max_age),
    ]
    .into_iter()
    .flatten()
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

fn allow(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed {
            allow: allowed.to_vec(),
        })
    }
}

/// The caller of an account API request, by any credential kind (SPEC section 3's
/// precedence); a cookie-authenticated unsafe request must also pass the CSRF check.
async fn authenticate(
    accounts: &Accounts,
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    method: &Method,
    headers: &HeaderMap,
    now: UnixMillis,
) -> Result<Caller, ApiError> {
    let all = [
        CredentialKind::ApiKey,
        CredentialKind::Jwt,
        CredentialKind::Cookie,
    ];
    let presented = auth::presented(headers, &snapshot.session_cookie, &all)
        .ok_or(ApiError::MissingCredentials)?;
    let caller = accounts
        .authenticate(&snapshot.config, presented, now)
        .await?;
    let facts = RequestFacts {
        method,
        headers,
        scheme: ctx.scheme,
        trusted_peer: ctx.trusted_peer,
        session_cookie: &snapshot.session_cookie,
        csrf_cookie: &snapshot.csrf_cookie,
    };
    policy::check_csrf(&snapshot.config, &caller.principal, &facts)?;
    Ok(caller)
}

/// The client's address for rate limits and session records: the TCP peer, or, when the
/// peer is a trusted proxy, the nearest `X-Forwarded-For` entry that is not one.
fn client_info(config: &Config, ctx: &RequestCtx, headers: &HeaderMap) -> ClientInfo {
    let ip = ctx.real_client_ip(headers, &config.trusted_proxies);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    ClientInfo { ip, user_agent }
}

/// Reads a JSON body of at most [`MAX_JSON_BODY`] bytes.
async fn read_json<T: DeserializeOwned>(req: Request<InBody>) -> Result<T, ApiError> {
    let bytes = read_body(req).await?;
    if bytes.is_empty() {
        return Err(ApiError::InvalidRequest("a JSON body is required".into()));
    }
    decode(&bytes)
}

/// Like [`read_json`], but an absent body decodes as `{}`.
async fn read_json_or_empty<T: DeserializeOwned>(req: Request<InBody>) -> Result<T, ApiError> {
    let bytes = read_body(req).await?;
    if bytes.is_empty() {
        return decode(b"{}");
    }
    decode(&bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde's message names the field and the expected type, never the value of a
        // string (so no password ends up in a response or a log).
        ApiError::InvalidRequest(format!("the body is not the expected JSON: {e}"))
    })
}

async fn read_body(req: Request<InBody>) -> Result<Bytes, ApiError> {
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
                || essence.to_ascii_lowercase().ends_with("+json")
        });
    let body = req.into_body();
    let limited = http_body_util::Limited::new(body, MAX_JSON_BODY);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::BodyTooLarge {
                limit: MAX_JSON_BODY as u64,
            });
        }
        Err(e) => {
            return Err(ApiError::InvalidRequest(format!(
                "cannot read the body: {e}"
            )));
        }
    };
    // A JSON content type is required whenever there is a body: a cross-site form post
    // cannot send one without a CORS preflight.
    if !bytes.is_empty() && json_type != Some(true) {
        return Err(ApiError::InvalidRequest(
            "Content-Type must be application/json".into(),
        ));
    }
    Ok(bytes)
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T, no_store: bool) -> Response<ResBody> {
    match serde_json::to_vec(value) {
        Ok(v) => json_bytes(status, Bytes::from(v), no_store),
        Err(e) => ApiError::Internal(format!("encoding a response: {e}")).into_response(),
    }
}

fn json_bytes(status: StatusCode, body: Bytes, no_store: bool) -> Response<ResBody> {
    let mut resp = Response::new(ResBody::full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if no_store {
        // RFC 6749 section 5.1: responses with tokens or personal data are not cached.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A required non-empty string field of a body.
fn required(value: Option<String>, field: &'static str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| ApiError::ValidationFailed {
            errors: vec![FieldError::new(field, "is required")],
        })
}

/// 202 with an empty JSON object: accepted, the outcome travels by mail.
fn accepted() -> Response<ResBody> {
    json(StatusCode::ACCEPTED, &serde_json::json!({}), true)
}

fn no_content() -> Response<ResBody> {
    let mut resp = Response::new(ResBody::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// `/.well-known/openid-configuration`: what a client or a backend needs to verify tokens and
/// find the endpoints Gatehouse has.
fn discovery(config: &Config) -> serde_json::Value {
    let issuer = config.tokens.issuer.trim_end_matches('/');
    let prefix = config.accounts.prefix.trim_end_matches('/');
    let alg = match config.tokens.signing.alg {
        crate::config::SigningAlg::EdDsa => "EdDSA",
        crate::config::SigningAlg::Es256 => "ES256",
        crate::config::SigningAlg::Rs256 => "RS256",
    };
    serde_json::json!({
        "issuer": config.tokens.issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}{prefix}/login"),
        "userinfo_endpoint": format!("{issuer}{prefix}/me"),
        "registration_endpoint": format!("{issuer}{prefix}/register"),
        "end_session_endpoint": format!("{issuer}{prefix}/logout"),
        "id_token_signing_alg_values_supported": [alg],
        "subject_types_supported": ["public"],
        "response_types_supported": ["token"],
        "grant_types_supported": ["password", "refresh_token"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "jti", "sid", "roles", "amr", "email", "username"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
