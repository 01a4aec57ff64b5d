//! Invitations (SPEC section 5): an admin invites an address, the invitee follows the mailed
//! link and creates their account with a password.
//!
//! Owns: the invitation token (256-bit random, only its SHA-256 stored through the one-time
//! token store, single-use, 7 days, carrying the roles the account will get; a new invitation
//! to the same address voids the older ones) and what `accounts.registration` allows:
//! `open` and `invite_only` take invitations, `admin_only` refuses them (only admins create
//! accounts, directly). Accepting creates the user with the invited address already
//! verified (the link proved it) and signs them in (`amr: ["pwd"]`). The password and the
//! other fields are checked before the token is used, so a refused attempt does not burn
//! the link. Must not touch: HTTP.

use std::time::Duration;

use serde_json::json;

use super::lifecycle::link;
use super::validate::{self, FieldIssue};
use super::{
    AccountError, Accounts, Caller, ClientInfo, Issued, NewUser, ms, new_secret, non_empty,
    secret_hash, valid_role,
};
use crate::config::{Config, RegistrationMode};
use crate::mail::{Message, MessageKind};
use crate::store::{ConflictField, OneTimeKind, OneTimeToken, UnixMillis, normalize_email};

/// How long an invitation link works.
pub const INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `POST /auth/admin/invitations` did: the (normalised) address, the roles the account
/// will get and until when the link works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invited {
    pub email: String,
    pub roles: Vec<String>,
    pub expires_at: UnixMillis,
}

/// `POST /auth/invitations/accept`'s input.
// No `Debug`: it holds a token and a password.
#[derive(Default, Clone)]
pub struct Acceptance {
    pub token: String,
    pub password: Option<String>,
    pub password_confirmation: Option<String>,
    pub name: Option<String>,
    pub username: Option<String>,
}

/// Whether the registration mode takes invitations.
fn invitations_allowed(cfg: &Config) -> Result<(), AccountError> {
    match cfg.accounts.registration {
        RegistrationMode::Open | RegistrationMode::InviteOnly => Ok(()),
        RegistrationMode::AdminOnly => Err(AccountError::RegistrationClosed),
    }
}

/// The roles an invitation carries: the valid role names of its payload, or `["user"]`.
fn roles_of(payload: &serde_json::Value) -> Vec<String> {
    let roles: Vec<String> = payload
        .get("roles")
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str())
                .filter(|r| valid_role(r))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if roles.is_empty() {
        vec!["user".into()]
    } else {
        roles
    }
}

impl Accounts {
    /// `POST /auth/admin/invitations {email, roles?}`: mails the address a link to create
    /// its account. The caller must be an admin (checked by the caller of this); an address
    /// that already has an account is `Taken`.
    pub async fn invite(
        &self,
        cfg: &Config,
        caller: &Caller,
        email: &str,
        roles: Option<Vec<String>>,
        now: UnixMillis,
    ) -> Result<Invited, AccountError> {
        invitations_allowed(cfg)?;
        let mut issues = Vec::new();
        validate::email(email, &mut issues);
        let roles = roles.unwrap_or_default();
        if let Some(bad) = roles.iter().find(|r| !valid_role(r)) {
            issues.push(FieldIssue::invalid(
                "roles",
                format!("{bad:?} is not a valid role name"),
            ));
        }
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        let email = normalize_email(email);
        let roles = if roles.is_empty() {
            vec!["user".to_owned()]
        } else {
            roles
        };
        if self.store.get_user_by_email(&email).await?.is_some() {
            return Err(AccountError::Taken(ConflictField::Email));
        }
        // Only the newest invitation to an address works, like reset links.
        self.store
            .delete_one_time_tokens_for_email(&email, OneTimeKind::Invitation)
            .await?;
        let token = new_secret();
        let expires_at = now.saturating_add(ms(INVITATION_TTL));
        self.store
            .create_one_time_token(&OneTimeToken {
                token_hash: secret_hash(&token),
                kind: OneTimeKind::Invitation,
                user_id: None,
                email: Some(email.clone()),
                payload: json!({ "roles": roles, "invited_by": caller.user.id }),
                created_at: now,
                expires_at,
            })
            .await?;
        let invited_by = caller
            .user
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| caller.user.email.clone());
        self.mail(Message::new(
            email.clone(),
            MessageKind::Invitation {
                link: link(cfg, "invitations/accept", &token),
                expires_in: INVITATION_TTL,
                invited_by,
            },
        ));
        Ok(Invited {
            email,
            roles,
            expires_at,
        })
    }

    /// `POST /auth/invitations/accept`: creates the invited account and signs it in.
    pub async fn accept_invitation(
        &self,
        cfg: &Config,
        input: Acceptance,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<Issued, AccountError> {
        invitations_allowed(cfg)?;
        let hash = secret_hash(&input.token);
        // Looked at, not used: a refused password must leave the link working.
        let pending = self
            .store
            .get_one_time_token(&hash, OneTimeKind::Invitation, now)
            .await?
            .ok_or(AccountError::InvalidOneTimeToken)?;
        let email = pending.email.ok_or(AccountError::InvalidOneTimeToken)?;

        let username = non_empty(input.username);
        let name = non_empty(input.name);
        let password = input.password.unwrap_or_default();
        let issues = validate::SignUp {
            email: Some(email.as_str()),
            username: username.as_deref(),
            name: name.as_deref(),
            password: &password,
            confirmation: input.password_confirmation.as_deref(),
        }
        .issues(cfg.accounts.password.min_length as usize);
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        if self.store.get_user_by_email(&email).await?.is_some() {
            return Err(AccountError::Taken(ConflictField::Email));
        }
        if let Some(u) = &username
            && self.store.get_user_by_username(u).await?.is_some()
        {
            return Err(AccountError::Taken(ConflictField::Username));
        }

        let used = self
            .store
            .consume_one_time_token(&hash, OneTimeKind::Invitation, now)
            .await?
            .ok_or(AccountError::InvalidOneTimeToken)?;
        let new_user = NewUser {
            email: Some(email),
            username,
            name,
            roles: roles_of(&used.payload),
            password,
        };
        let user = match self.insert_user(new_user, true, now).await {
            Ok(user) => user,
            Err(e) => {
                // Taken in the instant since the checks above, or the hashing pool is
                // busy: the link was not what failed, so it is put back.
                if let Err(restore) = self.store.create_one_time_token(&used).await {
                    tracing::warn!(target: "gatehouse::accounts", error = %restore, "cannot restore an invitation after a failed acceptance");
                }
                return Err(e);
            }
        };
        self.start_session(cfg, user, vec!["pwd".into()], client, now)
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_the_payload_or_default_to_user() {
        assert_eq!(
            roles_of(&json!({"roles": ["admin", "ops"]})),
            ["admin", "ops"]
        );
        assert_eq!(roles_of(&json!({"roles": []})), ["user"]);
        assert_eq!(roles_of(&json!({})), ["user"]);
        assert_eq!(roles_of(&json!({"roles": ["a b", 3, "ok"]})), ["ok"]);
    }

    #[test]
    fn registration_modes() {
        let parse = |mode: &str| {
            crate::config::parse(
                &format!("accounts: {{ registration: {mode} }}\n"),
                std::path::Path::new("test.yaml"),
                &|_| None,
            )
            .unwrap()
        };
        assert!(invitations_allowed(&parse("open")).is_ok());
        assert!(invitations_allowed(&parse("invite_only")).is_ok());
        assert!(matches!(
            invitations_allowed(&parse("admin_only")),
            Err(AccountError::RegistrationClosed)
        ));
    }
}
