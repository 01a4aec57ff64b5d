//! JSON shapes of the account API (SPEC section 5): request bodies as sent by clients and
//! the answers built from account records.

use serde::{Deserialize, Deserializer, Serialize};

use crate::accounts::admin::{UserChange, UserListing};
use crate::accounts::invitations::Invited;
use crate::accounts::{Issued, LoginId, NewApiKey, PartnerUser};
use crate::problem::{ApiError, FieldError};
use crate::store::{ApiKey, ApiKeyKind, Session, UnixMillis, User};

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`) in PATCH
/// bodies.
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

// No `Debug`: it holds a secret, which must not be printable by accident.
#[derive(Deserialize)]
pub struct RegisterBody {
    pub email: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_confirmation: Option<String>,
    pub name: Option<String>,
}

// No `Debug`: it holds a secret, which must not be printable by accident.
#[derive(Deserialize)]
pub struct LoginBody {
    pub email: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub api_key: Option<String>,
    pub session: Option<String>,
}

impl LoginBody {
    /// `"session": "cookie"` asks for cookies instead of tokens; `"token"` (the default) for
    /// tokens.
    pub fn wants_cookie(&self) -> Result<bool, ApiError> {
        match self.session.as_deref() {
            None | Some("token") => Ok(false),
            Some("cookie") => Ok(true),
            Some(_) => Err(ApiError::ValidationFailed {
                errors: vec![FieldError::new(
                    "session",
                    "must be \"token\" or \"cookie\"",
                )],
            }),
        }
    }

    /// Which account a password login names; every missing field is listed at once.
    pub fn login_id(&self) -> Result<LoginId, ApiError> {
        let mut errors = Vec::new();
        let id = match (non_blank(&self.email), non_blank(&self.username)) {
            (Some(e), _) => Some(LoginId::Email(e.to_owned())),
            (None, Some(u)) => Some(LoginId::Username(u.to_owned())),
            (None, None) => {
                errors.push(FieldError::new("email", "email or username is required"));
                None
            }
        };
        if non_blank(&self.password).is_none() {
            errors.push(FieldError::new("password", "is required"));
        }
        match id {
            Some(id) if errors.is_empty() => Ok(id),
            _ => Err(ApiError::ValidationFailed { errors }),
        }
    }
}

fn non_blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.trim().is_empty())
}

#[derive(Debug, Deserialize)]
pub struct ApiKeyBody {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<String>,
}

impl ApiKeyBody {
    /// The validated input; every wrong field listed at once.
    pub fn into_input(self) -> Result<NewApiKey, ApiError> {
        let mut errors = Vec::new();
        let kind = match self.kind.as_deref() {
            None => ApiKeyKind::Secret,
            Some(k) => ApiKeyKind::parse(k).unwrap_or_else(|| {
                errors.push(FieldError::new(
                    "kind",
                    "must be \"secret\" or \"publishable\"",
                ));
                ApiKeyKind::Secret
            }),
        };
        let name = self.name.unwrap_or_default();
        if name.trim().is_empty() {
            errors.push(FieldError::new("name", "is required"));
        }
        let expires_at = match self.expires_at.as_deref() {
            None => None,
            Some(t) => match parse_rfc3339(t) {
                Some(ms) => Some(ms),
                None => {
                    errors.push(FieldError::new(
                        "expires_at",
                        "must be an RFC 3339 timestamp such as 2030-01-01T00:00:00Z",
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(ApiError::ValidationFailed { errors });
        }
        Ok(NewApiKey {
            name,
            kind,
            scopes: self.scopes,
            expires_at,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct PartnerBody {
    pub email: Option<String>,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub roles: Option<Vec<String>>,
}

impl PartnerBody {
    pub fn into_input(self) -> Result<PartnerUser, ApiError> {
        let Some(email) = self.email.filter(|e| !e.trim().is_empty()) else {
            return Err(ApiError::ValidationFailed {
                errors: vec![FieldError::new("email", "is required")],
            });
        };
        Ok(PartnerUser {
            email,
            external_id: self.external_id,
            name: self.name,
            roles: self.roles.unwrap_or_default(),
        })
    }
}

// No `Debug`: it holds a secret, which must not be printable by accident.
#[derive(Deserialize)]
pub struct RefreshBody {
    pub refresh_token: Option<String>,
}

/// `POST /auth/verify-email`.
// No `Debug`: it holds a one-time token.
#[derive(Deserialize)]
pub struct TokenBody {
    pub token: Option<String>,
}

/// `POST /auth/forgot-password` (and magic-link requests).
#[derive(Debug, Deserialize)]
pub struct EmailBody {
    pub email: Option<String>,
}

/// `POST /auth/magic-link`.
#[derive(Debug, Deserialize)]
pub struct MagicLinkBody {
    pub email: Option<String>,
    pub redirect_to: Option<String>,
}

/// `POST /auth/reset-password`.
// No `Debug`: it holds a one-time token and a password.
#[derive(Deserialize)]
pub struct ResetBody {
    pub token: Option<String>,
    pub new_password: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ProfileBody {
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub username: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub email: Option<Option<String>>,
}

// No `Debug`: it holds a secret, which must not be printable by accident.
#[derive(Deserialize)]
pub struct PasswordBody {
    pub current_password: Option<String>,
    pub new_password: Option<String>,
}

// No `Debug`: it holds a secret, which must not be printable by accident.
#[derive(Deserialize)]
pub struct DeleteAccountBody {
    pub password: Option<String>,
}

/// A user as `/auth/me` shows it.
#[derive(Debug, Serialize)]
pub struct UserView<'a> {
    pub id: &'a str,
    pub email: Option<&'a str>,
    pub username: Option<&'a str>,
    pub name: Option<&'a str>,
    pub roles: &'a [String],
    pub email_verified: bool,
    pub mfa_enabled: bool,
    pub created_at: String,
}

pub fn user_view(user: &User) -> UserView<'_> {
    UserView {
        id: &user.id,
        email: user.email.as_deref(),
        username: user.username.as_deref(),
        name: user.name.as_deref(),
        roles: &user.roles,
        email_verified: user.email_verified,
        mfa_enabled: user.mfa.is_some(),
        created_at: rfc3339(user.created_at),
    }
}

/// The answer of register, login and refresh.
// No `Debug`: it holds a secret, which must not be printable by accident.
#[derive(Serialize)]
pub struct TokenAnswer<'a> {
    pub user: UserView<'a>,
    pub access_token: &'a str,
    pub refresh_token: &'a str,
    pub token_type: &'static str,
    pub expires_in: u64,
}

pub fn token_answer(issued: &Issued) -> TokenAnswer<'_> {
    TokenAnswer {
        user: user_view(&issued.user),
        access_token: &issued.access_token,
        refresh_token: &issued.refresh_token,
        token_type: "Bearer",
        expires_in: issued.expires_in,
    }
}

/// An API key as listed (never the key itself).
// No `Debug`: it holds a secret, which must not be printable by accident.
#[derive(Serialize)]
pub struct KeyView<'a> {
    pub id: &'a str,
    pub prefix: &'a str,
    pub kind: &'static str,
    pub name: &'a str,
    pub scopes: Option<&'a [String]>,
    pub created_at: String,
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
}

/// `GET /auth/api-keys` entries.
pub fn key_view(k: &ApiKey) -> KeyView<'_> {
    KeyView {
        id: &k.id,
        prefix: &k.prefix,
        kind: k.kind.as_str(),
        name: &k.name,
        scopes: k.scopes.as_deref(),
        created_at: rfc3339(k.created_at),
        expires_at: k.expires_at.map(rfc3339),
        last_used_at: Some(k.last_used_at.map(rfc3339)),
        revoked_at: Some(k.revoked_at.map(rfc3339)),
        key: None,
    }
}

/// The answer of `POST /auth/api-keys`: the key, shown once.
pub fn created_key_view<'a>(k: &'a ApiKey, plain: &'a str) -> KeyView<'a> {
    KeyView {
        last_used_at: None,
        revoked_at: None,
        key: Some(plain),
        ..key_view(k)
    }
}

/// A user as the admin API shows it: the `/auth/me` view plus the account state.
#[derive(Debug, Serialize)]
pub struct AdminUserView<'a> {
    #[serde(flatten)]
    pub user: UserView<'a>,
    pub disabled: bool,
    pub external_id: Option<&'a str>,
    pub updated_at: String,
}

pub fn admin_user_view(user: &User) -> AdminUserView<'_> {
    AdminUserView {
        user: user_view(user),
        disabled: user.disabled,
        external_id: user.external_id.as_deref(),
        updated_at: rfc3339(user.updated_at),
    }
}

/// `PATCH /auth/admin/users/{id}`. Unknown fields are refused: a misspelt `role` must not
/// answer 200 having changed nothing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminUserBody {
    pub roles: Option<Vec<String>>,
    pub disabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
}

impl AdminUserBody {
    pub fn into_change(self) -> UserChange {
        UserChange {
            roles: self.roles,
            disabled: self.disabled,
            name: self.name,
        }
    }
}

/// `GET /auth/admin/users?limit=&cursor=&email=&role=`: the listing, every wrong parameter
/// listed at once. Unknown parameters are ignored, as query strings usually are.
pub fn user_listing(query: Option<&str>) -> Result<UserListing, ApiError> {
    let mut listing = UserListing::default();
    let mut errors = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => match v.parse::<usize>() {
                Ok(n) => listing.limit = Some(n),
                Err(_) => errors.push(FieldError::new("limit", "must be a positive integer")),
            },
            "cursor" => listing.cursor = Some(v.into_owned()),
            "email" => listing.email = Some(v.into_owned()),
            "role" => listing.role = Some(v.into_owned()),
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(listing)
    } else {
        Err(ApiError::ValidationFailed { errors })
    }
}

/// `POST /auth/admin/invitations`.
#[derive(Debug, Deserialize)]
pub struct InvitationBody {
    pub email: Option<String>,
    pub roles: Option<Vec<String>>,
}

/// `POST /auth/invitations/accept`.
// No `Debug`: it holds a one-time token and a password.
#[derive(Deserialize)]
pub struct AcceptBody {
    pub token: Option<String>,
    pub password: Option<String>,
    pub password_confirmation: Option<String>,
    pub name: Option<String>,
    pub username: Option<String>,
}

/// The answer of `POST /auth/admin/invitations` (the link itself goes only by mail).
pub fn invited_view(invited: &Invited) -> serde_json::Value {
    serde_json::json!({
        "email": invited.email,
        "roles": invited.roles,
        "expires_at": rfc3339(invited.expires_at),
    })
}

/// A session as `GET /auth/sessions` lists it.
#[derive(Debug, Serialize)]
pub struct SessionView<'a> {
    pub id: &'a str,
    pub created_at: String,
    pub last_used_at: String,
    pub user_agent: Option<&'a str>,
    pub ip: Option<&'a str>,
    /// Whether this is the session of the credential the request came with.
    pub current: bool,
}

/// `GET /auth/sessions` entries; `current` is the caller's own session, if any.
pub fn session_view<'a>(s: &'a Session, current: Option<&str>) -> SessionView<'a> {
    SessionView {
        id: &s.id,
        created_at: rfc3339(s.created_at),
        last_used_at: rfc3339(s.last_used_at),
        user_agent: s.user_agent.as_deref(),
        ip: s.ip.as_deref(),
        current: current == Some(s.id.as_str()),
    }
}

/// Parses an RFC 3339 timestamp into milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<UnixMillis> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// RFC 3339 UTC with milliseconds, as the API shows every timestamp.
pub fn rfc3339(ms: UnixMillis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_158_400_123), "2025-11-26T12:00:00.123Z");
    }

    #[test]
    fn patch_distinguishes_null_from_absent() {
        let b: ProfileBody = serde_json::from_str(r#"{"name": null, "username": "bob"}"#).unwrap();
        assert_eq!(b.name, Some(None));
        assert_eq!(b.username, Some(Some("bob".into())));
        assert_eq!(b.email, None);
    }

    #[test]
    fn admin_listing_query() {
        let l = user_listing(Some(
            "limit=10&cursor=c.1&email=%40example.com&role=admin&x=1",
        ))
        .unwrap();
        assert_eq!(l.limit, Some(10));
        assert_eq!(l.cursor.as_deref(), Some("c.1"));
        assert_eq!(l.email.as_deref(), Some("@example.com"));
        assert_eq!(l.role.as_deref(), Some("admin"));
        assert!(user_listing(None).unwrap().limit.is_none());
        match user_listing(Some("limit=-1")) {
            Err(ApiError::ValidationFailed { errors }) => assert_eq!(errors.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admin_view_adds_account_state() {
        let user = User {
            id: "u1".into(),
            email: Some("a@example.com".into()),
            username: None,
            name: None,
            external_id: Some("crm-1".into()),
            email_verified: true,
            roles: vec!["user".into()],
            disabled: true,
            password_hash: Some("$argon2id$secret".into()),
            mfa: None,
            created_at: 0,
            updated_at: 1000,
        };
        let v = serde_json::to_value(admin_user_view(&user)).unwrap();
        assert_eq!(v["email"], "a@example.com");
        assert_eq!(v["disabled"], true);
        assert_eq!(v["external_id"], "crm-1");
        assert_eq!(v["updated_at"], "1970-01-01T00:00:01Z");
        assert!(!v.to_string().contains("argon2"));
        let b: Result<AdminUserBody, _> = serde_json::from_str(r#"{"role": ["admin"]}"#);
        assert!(b.is_err(), "unknown fields are refused");
    }

    #[test]
    fn login_lists_every_missing_field() {
        let b: LoginBody = serde_json::from_str("{}").unwrap();
        match b.login_id() {
            Err(ApiError::ValidationFailed { errors }) => assert_eq!(errors.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
