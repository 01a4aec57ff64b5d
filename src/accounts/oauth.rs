//! Sign-in through OAuth/OIDC providers (SPEC section 5, `/auth/oauth/{provider}/...`):
//! flows in flight, the ID token's signature checked with the gateway's own verifier, and
//! what an [`ExternalIdentity`] signs in as.
//!
//! A browser flow in flight is a one-time token of kind `oauth_state`: the `state` sent to
//! the provider is the secret (only its SHA-256 is stored), the record holds the PKCE
//! verifier, the nonce and `redirect_to`, lives 10 minutes and is consumed by the callback,
//! so a replayed `state` is refused. The same `state` travels in a short-lived HttpOnly
//! cookie (set by `endpoints`), binding the flow to the browser that started it.
//!
//! Who an identity signs in as, in order: the user already linked to (provider, subject);
//! else the user with the same email, linked now, only if the provider asserts
//! `email_verified` (otherwise 409: whoever controls the provider account has not proven the
//! address); else a new user, only when `accounts.registration` is `open`.
//!
//! A signed-in user links another provider account with a flow started by an authenticated
//! (and so CSRF-checked) POST: the flow record names the user, and its callback links the
//! identity to that user instead of signing in. Started by a plain GET, a link could be
//! forced on a victim's browser with the attacker's provider account (login CSRF at the
//! provider), giving the attacker a way into the victim's account.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::mfa::{SignIn, SignInRequest};
use super::{
    AccountError, Accounts, ClientInfo, Issued, ms, new_secret, secret_hash, validate::FieldIssue,
};
use crate::auth::signing::{JwsError, Verifiers};
use crate::config::{Config, OAuthKind, OAuthProvider, RegistrationMode};
use crate::oauth::{
    self, AuthorizationRequest, Completion, ExternalIdentity, SignatureCheck, SignatureError,
};
use crate::store::{
    ConflictField, OAuthIdentity, OneTimeKind, OneTimeToken, StoreError, UnixMillis, User,
    UserPatch, new_id,
};

/// How long a started sign-in may take at the provider.
pub const OAUTH_STATE_TTL: Duration = Duration::from_secs(600);

/// A started browser sign-in: where to send the browser, and the `state` its cookie holds.
/// No `Debug`: the state is a secret.
pub struct Started {
    pub location: String,
    pub state: String,
}

/// What a browser callback did.
pub enum CallbackOutcome {
    /// Signed in: the session, and where to send the browser.
    SignedIn(Box<Issued>, String),
    /// The account has a second factor: the browser goes to `redirect_to` with the
    /// `mfa_token`, and the app finishes with `POST /auth/mfa/verify` (which sets the cookie
    /// session, as this flow would have).
    MfaRequired {
        mfa_token: String,
        redirect_to: String,
    },
    /// A link flow: the identity now belongs to the user who started it.
    Linked(String),
}

/// What the provider sent back to the browser callback.
#[derive(Default)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    /// RFC 6749 4.1.2.1 (`access_denied`, ...).
    pub error: Option<String>,
    /// RFC 9207: the issuer of the authorization response, when the provider sends it.
    pub iss: Option<String>,
}

/// `POST .../callback`'s input: a code the app obtained itself.
pub struct CodeExchange<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a str,
    pub code_verifier: Option<&'a str>,
}

/// ID-token signatures with the gateway's verifier: each JWKS key bound to one algorithm,
/// never `none` or HMAC (`auth::signing`). Sign-ins are rare; the JWKS document (cached by
/// `oauth`) is parsed per check.
struct JwksCheck;

impl SignatureCheck for JwksCheck {
    fn verify(
        &self,
        jwks: &[u8],
        token: &str,
        now: UnixMillis,
    ) -> Result<Map<String, Value>, SignatureError> {
        let (keys, _skipped) =
            Verifiers::from_jwks(jwks).map_err(|e| SignatureError::Invalid(e.to_string()))?;
        match keys.verify(token, now) {
            Ok(verified) => Ok(verified.claims),
            Err(JwsError::UnknownKid) => Err(SignatureError::UnknownKey),
            Err(e) => Err(SignatureError::Invalid(e.to_string())),
        }
    }
}

/// The redirect URI registered at providers: `<tokens.issuer><prefix>/oauth/{name}/callback`.
pub fn redirect_uri(cfg: &Config, provider: &str) -> String {
    format!(
        "{}{}/oauth/{provider}/callback",
        cfg.tokens.issuer.trim_end_matches('/'),
        cfg.accounts.prefix.trim_end_matches('/')
    )
}

/// The configured provider of this name.
pub fn provider<'a>(cfg: &'a Config, name: &str) -> Result<&'a OAuthProvider, AccountError> {
    cfg.accounts
        .oauth
        .iter()
        .find(|p| p.name == name)
        .ok_or(AccountError::NotFound)
}

/// Equality that takes the same time wherever the inputs differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn invalid(field: &'static str, message: &str) -> AccountError {
    AccountError::Invalid(vec![FieldIssue::invalid(field, message.to_owned())])
}

impl Accounts {
    /// `GET /auth/oauth/{provider}/authorize`: records the flow and returns the provider's
    /// authorization URL (state, nonce, PKCE S256). A `redirect_to` that is not
    /// `safe_redirect` is refused here, before the user is sent anywhere.
    /// With `link_to` (the id of the signed-in user who asked), the callback links instead.
    pub async fn oauth_begin(
        &self,
        cfg: &Config,
        name: &str,
        redirect_to: Option<String>,
        link_to: Option<&str>,
        now: UnixMillis,
    ) -> Result<Started, AccountError> {
        let provider = provider(cfg, name)?;
        if let Some(target) = &redirect_to
            && !super::lifecycle::safe_redirect(cfg, target)
        {
            return Err(invalid(
                "redirect_to",
                "must be a path on this site or a URL of accounts.allowed_origins",
            ));
        }
        let endpoints = self.oauth.endpoints(provider).await?;
        let oidc = provider.kind != OAuthKind::Github;
        let state = new_secret();
        let nonce = new_secret();
        let verifier = oauth::pkce_verifier();
        let redirect_uri = redirect_uri(cfg, name);
        let location = oauth::authorization_url(
            provider,
            &endpoints,
            &AuthorizationRequest {
                redirect_uri: &redirect_uri,
                state: &state,
                nonce: oidc.then_some(nonce.as_str()),
                code_challenge: &oauth::pkce_challenge(&verifier),
            },
        )?;
        self.store
            .create_one_time_token(&OneTimeToken {
                token_hash: secret_hash(&state),
                kind: OneTimeKind::OAuthState,
                user_id: None,
                email: None,
                payload: json!({
                    "provider": name,
                    "code_verifier": verifier,
                    "nonce": nonce,
                    "redirect_to": redirect_to,
                    "link_user": link_to,
                }),
                created_at: now,
                expires_at: now.saturating_add(ms(OAUTH_STATE_TTL)),
            })
            .await?;
        Ok(Started { location, state })
    }

    /// `GET /auth/oauth/{provider}/callback`: checks the state (the browser's cookie, then
    /// the single-use record), exchanges the code and signs in, or links for a link flow.
    /// The browser goes on to `redirect_to` (default `/`).
    pub async fn oauth_callback(
        &self,
        cfg: &Config,
        name: &str,
        params: CallbackParams,
        cookie_state: Option<&str>,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<CallbackOutcome, AccountError> {
        let provider = provider(cfg, name)?;
        if let Some(error) = params.error {
            // Only the error code, cut short: it is provider (or attacker) text.
            let error: String = error
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect();
            return Err(AccountError::OAuthDenied(error));
        }
        let state = params
            .state
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("state", "is required"))?;
        if !cookie_state.is_some_and(|c| same_secret(c, &state)) {
            return Err(AccountError::OAuthState(
                "the sign-in was not started in this browser",
            ));
        }
        let flow = self
            .store
            .consume_one_time_token(&secret_hash(&state), OneTimeKind::OAuthState, now)
            .await?
            .ok_or(AccountError::OAuthState(
                "the sign-in is unknown, already used or expired",
            ))?;
        let text = |key: &str| flow.payload.get(key).and_then(Value::as_str);
        if text("provider") != Some(name) {
            return Err(AccountError::OAuthState(
                "the sign-in was started with another provider",
            ));
        }
        if let Some(iss) = &params.iss
            && iss.trim_end_matches('/') != oauth::issuer(provider)?
        {
            return Err(AccountError::OAuthState(
                "the authorization response comes from another issuer",
            ));
        }
        let code = params
            .code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid("code", "is required"))?;
        let identity = self
            .oauth
            .complete(
                provider,
                &Completion {
                    code: &code,
                    redirect_uri: &redirect_uri(cfg, name),
                    code_verifier: text("code_verifier"),
                    nonce: Some(text("nonce").unwrap_or_default()),
                    now,
                },
                &JwksCheck,
            )
            .await?;
        let redirect_to = text("redirect_to").unwrap_or("/").to_owned();
        if let Some(user_id) = text("link_user") {
            let user = self
                .store
                .get_user(user_id)
                .await?
                .ok_or(AccountError::SessionRevoked)?;
            if user.disabled {
                return Err(AccountError::Disabled);
            }
            self.link(&identity, &user, now).await?;
            tracing::info!(target: "gatehouse::accounts", user = %user.id, provider = %identity.provider, "OAuth identity linked by its user");
            return Ok(CallbackOutcome::Linked(redirect_to));
        }
        let request = SignInRequest {
            cookie_session: true,
            redirect_to: Some(redirect_to.clone()),
        };
        Ok(
            match self
                .oauth_sign_in(cfg, identity, request, client, now)
                .await?
            {
                SignIn::Issued(issued) => CallbackOutcome::SignedIn(issued, redirect_to),
                SignIn::MfaRequired { mfa_token } => CallbackOutcome::MfaRequired {
                    mfa_token,
                    redirect_to,
                },
            },
        )
    }

    /// `POST /auth/oauth/{provider}/callback {code, redirect_uri, code_verifier?}`: for
    /// apps that ran the authorization request themselves (their own state and PKCE); the
    /// provider checks `redirect_uri` and the verifier against the code.
    pub async fn oauth_exchange(
        &self,
        cfg: &Config,
        name: &str,
        exchange: &CodeExchange<'_>,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<SignIn, AccountError> {
        let provider = provider(cfg, name)?;
        let identity = self
            .oauth
            .complete(
                provider,
                &Completion {
                    code: exchange.code,
                    redirect_uri: exchange.redirect_uri,
                    code_verifier: exchange.code_verifier,
                    nonce: None,
                    now,
                },
                &JwksCheck,
            )
            .await?;
        self.oauth_sign_in(cfg, identity, SignInRequest::default(), client, now)
            .await
    }

    /// Signs an external identity in (see the module docs for who it becomes), with
    /// `amr: ["oauth"]`; an account with a second factor asks for it, as after a password.
    pub async fn oauth_sign_in(
        &self,
        cfg: &Config,
        identity: ExternalIdentity,
        request: SignInRequest,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<SignIn, AccountError> {
        let user = self.oauth_user(cfg, &identity, now).await?;
        if user.disabled {
            return Err(AccountError::Disabled);
        }
        if cfg.accounts.require_email_verification && !user.email_verified {
            return Err(AccountError::EmailNotVerified);
        }
        self.sign_in(cfg, user, vec!["oauth".into()], request, client, now)
            .await
    }

    async fn oauth_user(
        &self,
        cfg: &Config,
        identity: &ExternalIdentity,
        now: UnixMillis,
    ) -> Result<User, AccountError> {
        if let Some(linked) = self
            .store
            .get_oauth_identity(&identity.provider, &identity.subject)
            .await?
        {
            return self
                .store
                .get_user(&linked.user_id)
                .await?
                .ok_or(AccountError::InvalidCredentials);
        }
        if let Some(email) = &identity.email
            && let Some(existing) = self.store.get_user_by_email(email).await?
        {
            if !identity.email_verified {
                return Err(AccountError::Taken(ConflictField::Email));
            }
            self.link(identity, &existing, now).await?;
            tracing::info!(target: "gatehouse::accounts", user = %existing.id, provider = %identity.provider, "OAuth identity linked by verified email");
            if existing.email_verified {
                return Ok(existing);
            }
            // The provider proved the address this account names.
            let patch = UserPatch {
                email_verified: Some(true),
                ..UserPatch::default()
            };
            let user = self.store.update_user(&existing.id, &patch, now).await?;
            self.auth.cache().evict_user(&user.id).await;
            return Ok(user);
        }
        match cfg.accounts.registration {
            RegistrationMode::Open => {}
            RegistrationMode::InviteOnly | RegistrationMode::AdminOnly => {
                return Err(AccountError::RegistrationClosed);
            }
        }
        let user = User {
            id: new_id(),
            email: identity.email.clone(),
            username: None,
            name: identity.name.clone(),
            external_id: None,
            email_verified: identity.email.is_some() && identity.email_verified,
            roles: vec!["user".into()],
            disabled: false,
            password_hash: None,
            mfa: None,
            created_at: now,
            updated_at: now,
        };
        match self.store.create_user(&user).await {
            Ok(()) => {}
            Err(StoreError::Conflict { field }) => return Err(AccountError::Taken(field)),
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = self.link(identity, &user, now).await {
            // A concurrent first sign-in of the same identity won: undo this user.
            let _ = self.store.delete_user(&user.id).await;
            return Err(e);
        }
        tracing::info!(target: "gatehouse::accounts", user = %user.id, provider = %identity.provider, "user created by OAuth sign-in");
        Ok(self.store.get_user(&user.id).await?.unwrap_or(user))
    }

    /// The user's linked provider accounts.
    pub async fn oauth_identities(
        &self,
        user_id: &str,
    ) -> Result<Vec<OAuthIdentity>, AccountError> {
        Ok(self.store.list_oauth_identities(user_id).await?)
    }

    /// Unlinks the user's identities at `provider` (`subject`: only that one). Refused when
    /// it would leave the account without a way to sign in: no password and no other
    /// identity.
    pub async fn oauth_unlink(
        &self,
        user: &User,
        provider: &str,
        subject: Option<&str>,
    ) -> Result<(), AccountError> {
        let linked = self.store.list_oauth_identities(&user.id).await?;
        let (gone, kept): (Vec<_>, Vec<_>) = linked
            .into_iter()
            .partition(|i| i.provider == provider && subject.is_none_or(|s| s == i.subject));
        if gone.is_empty() {
            return Err(AccountError::NotFound);
        }
        if kept.is_empty() && user.password_hash.is_none() {
            return Err(AccountError::LastSignInMethod);
        }
        for identity in gone {
            match self
                .store
                .delete_oauth_identity(&user.id, &identity.provider, &identity.subject)
                .await
            {
                // Unlinked meanwhile by another request: the outcome wanted.
                Ok(()) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Links `identity` to `user`; linked already to this user is fine, to another is 409.
    async fn link(
        &self,
        identity: &ExternalIdentity,
        user: &User,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        if let Some(existing) = self
            .store
            .get_oauth_identity(&identity.provider, &identity.subject)
            .await?
            && existing.user_id == user.id
        {
            return Ok(());
        }
        let record = OAuthIdentity {
            provider: identity.provider.clone(),
            subject: identity.subject.clone(),
            user_id: user.id.clone(),
            email: identity.email.clone(),
            created_at: now,
        };
        match self.store.create_oauth_identity(&record).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict { field }) => Err(AccountError::Taken(field)),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
