//! Account lifecycle by email (SPEC section 5): proving an address, and recovering a lost
//! password. One-time tokens are 256-bit random secrets sent in a link; only their SHA-256
//! is stored, a use consumes them atomically (of concurrent uses exactly one wins), and each
//! kind expires: verification 24 h, reset 1 h.
//!
//! Mail leaves through the [`Mailer`] queue: a request never waits for delivery. Answers
//! that could tell whether an address has an account (forgot-password) are the same
//! whatever the store holds.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{AccountError, Accounts, Caller, ClientInfo, RateLimited, ms, new_secret, secret_hash};
use crate::auth::password;
use crate::config::Config;
use crate::mail::{Message, MessageKind};
use crate::ratelimit::Decision;
use crate::store::{OneTimeKind, OneTimeToken, UnixMillis, User, UserPatch};

/// How long an email-verification link works.
pub const VERIFY_EMAIL_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a password-reset link works.
pub const RESET_PASSWORD_TTL: Duration = Duration::from_secs(3600);
/// How long a magic sign-in link works.
pub const MAGIC_LINK_TTL: Duration = Duration::from_secs(600);

/// Whether `target` may be a `redirect_to`: a path on this site (`/...`, never `//host` or
/// `/\host`, which browsers read as another host, also when percent-encoded), or an absolute
/// `http(s)` URL whose origin is listed in `accounts.allowed_origins`. Control characters
/// and backslashes are refused anywhere (browsers strip or fold them).
pub fn safe_redirect(cfg: &Config, target: &str) -> bool {
    if target.is_empty() || target.chars().any(|c| c.is_control() || c == '\\') {
        return false;
    }
    let decoded: String = percent_encoding::percent_decode_str(target)
        .decode_utf8_lossy()
        .into_owned();
    if decoded.chars().any(|c| c.is_control() || c == '\\') {
        return false;
    }
    if target.starts_with('/') {
        return !target.starts_with("//") && !decoded.starts_with("//");
    }
    let Ok(url) = url::Url::parse(target) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        // `https:evil.com` parses, with the host taken from what follows: accept only the
        // written-out `scheme://` form.
        || !target.to_ascii_lowercase().starts_with(&format!("{}://", url.scheme()))
    {
        return false;
    }
    let origin = url.origin().ascii_serialization();
    cfg.accounts
        .allowed_origins
        .iter()
        .filter_map(|o| crate::auth::cookie::normalize_origin(o))
        .any(|allowed| crate::auth::cookie::normalize_origin(&origin).as_deref() == Some(&allowed))
}

/// Where a mail's link leads: `link_base` (default: the gateway's own account API,
/// `tokens.issuer` + `accounts.prefix`) + `/{flow}?token=...`. An app with its own pages
/// points `accounts.email.link_base` at them; they POST the token to the API.
pub fn link(cfg: &Config, flow: &str, token: &str) -> String {
    let base = match &cfg.accounts.email.link_base {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None => format!(
            "{}{}",
            cfg.tokens.issuer.trim_end_matches('/'),
            cfg.accounts.prefix.trim_end_matches('/')
        ),
    };
    format!("{base}/{flow}?token={token}")
}

impl Accounts {
    /// Queues `message`; without a mailer (CLI commands) or with a full queue the failure
    /// is logged (never the message: its link holds a token) and the flow goes on.
    pub(super) fn mail(&self, message: Message) {
        let kind = message.kind.name();
        match &*self.mailer.load() {
            Some(mailer) => {
                if let Err(e) = mailer.send(message) {
                    tracing::warn!(target: "gatehouse::mail", kind, error = %e, "mail not queued");
                }
            }
            None => {
                tracing::debug!(target: "gatehouse::mail", kind, "no mailer in this process; mail not sent")
            }
        }
    }

    /// `accounts.email.new_sign_in`: before a sign-in's session is made, its owner is told
    /// when none of their active sessions came from this address and browser. Failures are
    /// logged; the sign-in goes on.
    pub(super) async fn notify_new_sign_in(
        &self,
        cfg: &Config,
        user: &User,
        client: &ClientInfo,
        now: UnixMillis,
    ) {
        if !cfg.accounts.email.new_sign_in {
            return;
        }
        let Some(to) = user.email.clone() else {
            return;
        };
        let ip = client.ip.to_string();
        match self.store.list_active_sessions(&user.id, now).await {
            Ok(sessions)
                if sessions.iter().any(|s| {
                    s.ip.as_deref() == Some(ip.as_str()) && s.user_agent == client.user_agent
                }) => {}
            Ok(_) => self.mail(greeted(
                Message::new(
                    to,
                    MessageKind::NewSignIn {
                        at: offset_time(now),
                        ip: Some(ip),
                        user_agent: client.user_agent.clone(),
                    },
                ),
                user,
            )),
            Err(e) => {
                tracing::warn!(target: "gatehouse::accounts", error = %e, "cannot check a sign-in against the account's sessions");
            }
        }
    }

    /// `conceal_existing`: someone registered an address that has an account; its owner
    /// hears of it (a disabled account does not). Failures are logged, never answered.
    pub(super) async fn tell_owner_of(&self, address: &str) {
        match self.store.get_user_by_email(address).await {
            Ok(Some(owner)) if !owner.disabled => {
                if let Some(to) = owner.email.clone() {
                    self.mail(greeted(
                        Message::new(to, MessageKind::AccountExists),
                        &owner,
                    ));
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "gatehouse::accounts", error = %e, "cannot tell an account's owner of a sign-up attempt");
            }
        }
    }

    /// A new one-time token of `kind` for `user`, stored hashed; returns the plain token.
    /// Older unused tokens of the kind are voided first (only the newest link works).
    async fn issue_one_time(
        &self,
        kind: OneTimeKind,
        user: &User,
        payload: serde_json::Value,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<String, AccountError> {
        self.store.delete_one_time_tokens(&user.id, kind).await?;
        let token = new_secret();
        self.store
            .create_one_time_token(&OneTimeToken {
                token_hash: secret_hash(&token),
                kind,
                user_id: Some(user.id.clone()),
                email: user.email.clone(),
                payload,
                created_at: now,
                expires_at: now.saturating_add(ms(ttl)),
            })
            .await?;
        Ok(token)
    }

    /// Sends a verification link to the user's address, if it has one not yet verified.
    pub async fn send_verification(
        &self,
        cfg: &Config,
        user: &User,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let Some(email) = user.email.clone().filter(|_| !user.email_verified) else {
            return Ok(());
        };
        // The address being verified travels with the token: a link for an address the user
        // has since changed proves nothing about the new one. An account never changed since
        // sign-up gets its welcome mail once the address is proven (an email change does not).
        let welcome = user.updated_at == user.created_at;
        let token = self
            .issue_one_time(
                OneTimeKind::EmailVerification,
                user,
                json!({ "email": email, "welcome": welcome }),
                VERIFY_EMAIL_TTL,
                now,
            )
            .await?;
        self.mail(greeted(
            Message::new(
                email,
                MessageKind::VerifyEmail {
                    link: link(cfg, "verify-email", &token),
                    expires_in: VERIFY_EMAIL_TTL,
                },
            ),
            user,
        ));
        Ok(())
    }

    /// `POST /auth/verify-email {token}`: marks the address verified. A token that is
    /// unknown, used, expired, or for an address the account no longer has is refused.
    pub async fn verify_email(&self, token: &str, now: UnixMillis) -> Result<User, AccountError> {
        let used = self
            .store
            .consume_one_time_token(&secret_hash(token), OneTimeKind::EmailVerification, now)
            .await?
            .ok_or(AccountError::InvalidOneTimeToken)?;
        let user_id = used.user_id.ok_or(AccountError::InvalidOneTimeToken)?;
        let user = self
            .store
            .get_user(&user_id)
            .await?
            .ok_or(AccountError::InvalidOneTimeToken)?;
        let for_address = used.payload.get("email").and_then(|e| e.as_str());
        if user.email.is_none() || user.email.as_deref() != for_address {
            return Err(AccountError::InvalidOneTimeToken);
        }
        if user.email_verified {
            return Ok(user);
        }
        let patch = UserPatch {
            email_verified: Some(true),
            ..UserPatch::default()
        };
        let user = self.store.update_user(&user.id, &patch, now).await?;
        self.auth.cache().evict_user(&user.id).await;
        if used.payload.get("welcome") == Some(&json!(true))
            && let Some(to) = user.email.clone()
        {
            self.mail(greeted(Message::new(to, MessageKind::Welcome), &user));
        }
        Ok(user)
    }

    /// `POST /auth/verify-email/resend`: a new link for the caller (the per-IP+address
    /// `rate_limits.email` applies).
    pub async fn resend_verification(
        &self,
        cfg: &Config,
        caller: &Caller,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let Some(email) = caller.user.email.as_deref() else {
            return Ok(());
        };
        self.email_limit(cfg, client, email, now)?;
        self.send_verification(cfg, &caller.user, now).await
    }

    /// `POST /auth/forgot-password {email}`: when the address belongs to an enabled account,
    /// a reset link is mailed. The caller answers 202 either way; the lookup and the token
    /// write happen after the answer (see [`Accounts::after_answer`]).
    pub async fn forgot_password(
        self: &Arc<Self>,
        cfg: &Arc<Config>,
        email: &str,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let email = email.trim();
        if email.is_empty() {
            return Err(AccountError::Invalid(vec![super::FieldIssue::invalid(
                "email",
                "is required",
            )]));
        }
        self.email_limit(cfg, client, email, now)?;
        self.after_answer(
            cfg,
            "reset-password",
            email,
            |this, cfg, email| async move { this.mail_reset_link(&cfg, &email, now).await },
        );
        Ok(())
    }

    /// Runs `work` (a store lookup, maybe a token write and a mail) in its own task, so the
    /// answer to a flow that must not reveal whether an address has an account leaves
    /// before it and takes the same time either way. Failures are logged without the
    /// address; the client already has its 202.
    fn after_answer<F, Fut>(
        self: &Arc<Self>,
        cfg: &Arc<Config>,
        flow: &'static str,
        email: &str,
        work: F,
    ) where
        F: FnOnce(Arc<Self>, Arc<Config>, String) -> Fut,
        Fut: std::future::Future<Output = Result<(), AccountError>> + Send + 'static,
    {
        let task = work(Arc::clone(self), Arc::clone(cfg), email.to_owned());
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::warn!(target: "gatehouse::accounts", flow, error = %e, "cannot issue the link");
            }
        });
    }

    async fn mail_reset_link(
        &self,
        cfg: &Config,
        email: &str,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let Some(user) = self.store.get_user_by_email(email).await? else {
            return Ok(());
        };
        if user.disabled {
            return Ok(());
        }
        let Some(to) = user.email.clone() else {
            return Ok(());
        };
        let token = self
            .issue_one_time(
                OneTimeKind::PasswordReset,
                &user,
                json!({}),
                RESET_PASSWORD_TTL,
                now,
            )
            .await?;
        self.mail(greeted(
            Message::new(
                to,
                MessageKind::ResetPassword {
                    link: link(cfg, "reset-password", &token),
                    expires_in: RESET_PASSWORD_TTL,
                },
            ),
            &user,
        ));
        Ok(())
    }

    /// `POST /auth/reset-password {token, new_password}`: sets the password, revokes every
    /// session of the account, and mails a notice. The password is checked before the token
    /// is used, so a weak password does not burn the link.
    pub async fn reset_password(
        &self,
        cfg: &Config,
        token: &str,
        new_password: Option<String>,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let new_password = new_password.unwrap_or_default();
        let mut issues = Vec::new();
        super::validate::new_password(
            "new_password",
            &new_password,
            cfg.accounts.password.min_length as usize,
            &mut issues,
        );
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        let hash = password::hash_blocking(new_password).await?;
        let used = self
            .store
            .consume_one_time_token(&secret_hash(token), OneTimeKind::PasswordReset, now)
            .await?
            .ok_or(AccountError::InvalidOneTimeToken)?;
        let user_id = used.user_id.ok_or(AccountError::InvalidOneTimeToken)?;
        let patch = UserPatch {
            password_hash: Some(Some(hash)),
            ..UserPatch::default()
        };
        let user = match self.store.update_user(&user_id, &patch, now).await {
            Ok(user) => user,
            Err(crate::store::StoreError::NotFound) => {
                return Err(AccountError::InvalidOneTimeToken);
            }
            Err(e) => return Err(e.into()),
        };
        self.revoke_sessions(&user.id, None, now).await?;
        self.void_pending_mfa(&user.id).await?;
        self.auth.cache().evict_user(&user.id).await;
        if let Some(to) = user.email.clone() {
            self.mail(greeted(
                Message::new(
                    to,
                    MessageKind::PasswordChanged {
                        at: offset_time(now),
                    },
                ),
                &user,
            ));
        }
        Ok(())
    }

    /// `POST /auth/magic-link {email, redirect_to?}`: an enabled account with this address
    /// gets a 10-minute sign-in link. The caller answers 202 either way (the lookup happens
    /// after the answer, as for forgot-password); a `redirect_to` that is not
    /// [`safe_redirect`] is refused before anything else (that reveals nothing).
    pub async fn request_magic_link(
        self: &Arc<Self>,
        cfg: &Arc<Config>,
        email: &str,
        redirect_to: Option<String>,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        if let Some(target) = &redirect_to
            && !safe_redirect(cfg, target)
        {
            return Err(AccountError::Invalid(vec![super::FieldIssue::invalid(
                "redirect_to",
                "must be a path on this site or a URL of accounts.allowed_origins",
            )]));
        }
        let email = email.trim();
        self.email_limit(cfg, client, email, now)?;
        self.after_answer(cfg, "magic-link", email, |this, cfg, email| async move {
            this.mail_magic_link(&cfg, &email, redirect_to, now).await
        });
        Ok(())
    }

    async fn mail_magic_link(
        &self,
        cfg: &Config,
        email: &str,
        redirect_to: Option<String>,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let Some(user) = self.store.get_user_by_email(email).await? else {
            return Ok(());
        };
        let Some(to) = user.email.clone().filter(|_| !user.disabled) else {
            return Ok(());
        };
        let token = self
            .issue_one_time(
                OneTimeKind::MagicLink,
                &user,
                json!({ "email": to, "redirect_to": redirect_to }),
                MAGIC_LINK_TTL,
                now,
            )
            .await?;
        self.mail(greeted(
            Message::new(
                to,
                MessageKind::MagicLink {
                    link: link(cfg, "magic-link", &token),
                    expires_in: MAGIC_LINK_TTL,
                },
            ),
            &user,
        ));
        Ok(())
    }

    /// `POST /auth/magic-link/verify {token}`: signs the account in (`amr: ["otp"]`), or,
    /// when it has MFA, answers with an `mfa_token` (the `redirect_to` then comes back from
    /// `/auth/mfa/verify`); the link also proves the address. Returns the outcome and the
    /// `redirect_to` given when the link was asked for.
    pub async fn verify_magic_link(
        &self,
        cfg: &Config,
        token: &str,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<(super::SignIn, Option<String>), AccountError> {
        let used = self
            .store
            .consume_one_time_token(&secret_hash(token), OneTimeKind::MagicLink, now)
            .await?
            .ok_or(AccountError::InvalidOneTimeToken)?;
        let user_id = used.user_id.ok_or(AccountError::InvalidOneTimeToken)?;
        let mut user = self
            .store
            .get_user(&user_id)
            .await?
            .ok_or(AccountError::InvalidOneTimeToken)?;
        let sent_to = used.payload.get("email").and_then(|e| e.as_str());
        if user.email.is_none() || user.email.as_deref() != sent_to {
            return Err(AccountError::InvalidOneTimeToken);
        }
        if user.disabled {
            return Err(AccountError::Disabled);
        }
        if !user.email_verified {
            let patch = UserPatch {
                email_verified: Some(true),
                ..UserPatch::default()
            };
            user = self.store.update_user(&user.id, &patch, now).await?;
            self.auth.cache().evict_user(&user.id).await;
        }
        let redirect_to = used
            .payload
            .get("redirect_to")
            .and_then(|r| r.as_str())
            .map(str::to_owned);
        let request = super::SignInRequest {
            cookie_session: false,
            redirect_to: redirect_to.clone(),
        };
        let outcome = self
            .sign_in(cfg, user, vec!["otp".into()], request, client, now)
            .await?;
        Ok((outcome, redirect_to))
    }

    /// `rate_limits.email`: per client IP and address.
    fn email_limit(
        &self,
        cfg: &Config,
        client: &ClientInfo,
        email: &str,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let limit = &cfg.rate_limits.email;
        let key = format!("{}|{}", client.limit_key(), email.to_ascii_lowercase());
        match self.email_limiter.hit(&key, limit.requests, limit.per, now) {
            Decision::Limited { retry_after } => Err(AccountError::RateLimited(RateLimited {
                policy: "email",
                quota: limit.requests,
                window: limit.per,
                retry_after,
            })),
            Decision::Allowed { .. } => Ok(()),
        }
    }
}

fn greeted(message: Message, user: &User) -> Message {
    match user.name.as_deref().filter(|n| !n.trim().is_empty()) {
        Some(name) => message.with_user_name(name),
        None => message,
    }
}

fn offset_time(now: UnixMillis) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Open-redirect attempts that oauth2-proxy and Keycloak shipped fixes for, and their
    /// encoded variants: only local paths and listed origins pass.
    #[test]
    fn redirect_targets() {
        let cfg = crate::config::parse(
            "accounts: { allowed_origins: [\"https://app.example.com\", \"http://localhost:3000\"] }\n",
            std::path::Path::new("test.yaml"),
            &|_| None,
        )
        .unwrap();
        let allowed = [
            "/",
            "/dashboard?tab=1#top",
            "/a/b%2Fc",
            "https://app.example.com",
            "https://app.example.com/welcome?x=1",
            "HTTPS://APP.EXAMPLE.COM/x",
            "https://app.example.com:443/x",
            "http://localhost:3000/cb",
        ];
        let refused = [
            "",
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "/%2fevil.com",
            "/%2Fevil.com",
            "%2F%2Fevil.com",
            "/%5cevil.com",
            "https:evil.com",
            "https:/evil.com",
            "https://evil.com",
            "https://app.example.com.evil.com/",
            "https://evil.com@app.example.com/",
            "https://app.example.com@evil.com/",
            "javascript:alert(1)",
            "data:text/html,x",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "/\tevil",
            "/%09/evil.com",
            "evil.com",
            "ftp://app.example.com/",
        ];
        for t in allowed {
            assert!(safe_redirect(&cfg, t), "should allow {t:?}");
        }
        for t in refused {
            assert!(!safe_redirect(&cfg, t), "should refuse {t:?}");
        }
    }
}
