//! Persistence of the account domain: the [`Store`] trait, its plain record types and
//! [`StoreError`].
//!
//! Owns: what is stored (users, sessions, refresh tokens, API keys, signing keys, one-time
//! tokens) and the atomicity of every operation that must not race (refresh rotation with
//! reuse detection, single-use consumption, signing-key bootstrap, uniqueness).
//!
//! Must not touch: HTTP, YAML or any other config format (backends take plain option
//! structs), hashing of passwords or tokens (callers hand in argon2 PHC strings and SHA-256
//! digests), and the wall clock: every operation that depends on time takes `now`, so the
//! accounts layer and the tests decide what time it is.
//!
//! Conventions shared by every backend (the [`conformance`] suite checks them):
//! - Timestamps are [`UnixMillis`]: milliseconds since the Unix epoch, `i64`. Milliseconds
//!   rather than seconds because the refresh grace window and pagination order are compared
//!   at sub-second resolution; JWT `iat`/`exp` (seconds) are derived by the caller.
//! - Ids are UUID v4 strings made by the caller with [`new_id`], so a record is complete
//!   before it is written and a backend never invents values.
//! - Emails are normalised by the store itself ([`normalize_email`]: trim + lowercase) on
//!   every write and every lookup, so uniqueness can never be bypassed by a caller that
//!   forgot; the stored and returned email is the normalised form. Usernames are compared
//!   exactly (case-sensitive, SPEC section 5).
//! - Lookups return `Ok(None)` when nothing matches (absence is a normal answer, and the
//!   cache stores it as a negative entry); mutations of a missing record return
//!   [`StoreError::NotFound`], as does creating a record that points at a missing user.

pub mod conformance;
pub mod counters;
pub mod redis;
pub mod sqlite;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

pub use counters::{GcraReply, SharedCounters, WindowState};
pub use redis::{RedisOptions, RedisStore};
pub use sqlite::{SqliteOptions, SqliteStore};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// A SHA-256 digest of a secret (refresh token, API key, one-time token). Only digests are
/// stored, never the secret itself.
pub type TokenHash = [u8; 32];

/// The wall clock in [`UnixMillis`], for callers to pass as `now` (the store itself never
/// reads the clock).
pub fn unix_now() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A fresh record id: a UUID v4 in its hyphenated lowercase form.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Appends `bytes` to `out` as lowercase hex: digests in Redis key names, recovery-code
/// hashes, rate-limit keys.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// `bytes` as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    push_hex(&mut out, bytes);
    out
}

/// The form an email is stored, compared and made unique in: surrounding whitespace
/// removed, lowercased. (Lowercasing the local part is stricter than RFC 5321 but is what
/// users expect and what every hosted auth service does.)
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Which unique value a write collided with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictField {
    /// The record's own id (a caller reused an id).
    Id,
    /// A user's normalised email.
    Email,
    /// A user's username (case-sensitive).
    Username,
    /// A user's external id (partner registration).
    ExternalId,
    /// An API key's hash.
    KeyHash,
    /// A refresh or one-time token's hash.
    TokenHash,
    /// A signing key's `kid`.
    Kid,
    /// An OAuth identity's (provider, subject): already linked to a user.
    OAuthIdentity,
}

impl ConflictField {
    /// The field name as API errors show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictField::Id => "id",
            ConflictField::Email => "email",
            ConflictField::Username => "username",
            ConflictField::ExternalId => "external_id",
            ConflictField::KeyHash => "key_hash",
            ConflictField::TokenHash => "token_hash",
            ConflictField::Kid => "kid",
            ConflictField::OAuthIdentity => "oauth_identity",
        }
    }
}

impl fmt::Display for ConflictField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record to change does not exist (or belongs to someone else, for owner-checked
    /// operations: the two are indistinguishable on purpose), or a new record refers to a
    /// user or session that does not exist.
    #[error("not found")]
    NotFound,
    /// A unique value is already taken.
    #[error("{field} already exists")]
    Conflict {
        /// The colliding value.
        field: ConflictField,
    },
    /// A pagination cursor that this store did not produce.
    #[error("invalid pagination cursor")]
    InvalidCursor,
    /// The backend cannot be reached or cannot take writes right now (SPEC section 7:
    /// 503 `store_unavailable`). Retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: corrupt data, a bug, a schema the binary does not know.
    #[error("store error: {0}")]
    Internal(String),
}

/// A user account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// UUID v4.
    pub id: String,
    /// Normalised email, unique when present.
    pub email: Option<String>,
    /// Case-sensitive username, unique when present.
    pub username: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// A partner's id for this user (SPEC section 5, partner registration), unique when
    /// present.
    pub external_id: Option<String>,
    /// Whether the email was proven.
    pub email_verified: bool,
    /// Roles, in the order given.
    pub roles: Vec<String>,
    /// A disabled user may not authenticate.
    pub disabled: bool,
    /// argon2id PHC string; `None` for accounts without a password (magic link, OAuth,
    /// partner-created).
    pub password_hash: Option<String>,
    /// MFA state, opaque to the store (the accounts layer encodes TOTP secret, recovery
    /// code hashes and last used step).
    pub mfa: Option<Vec<u8>>,
    /// Creation time.
    pub created_at: UnixMillis,
    /// Time of the last update.
    pub updated_at: UnixMillis,
}

// Hand-written so a logged user never shows its password hash or MFA secret.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("username", &self.username)
            .field("name", &self.name)
            .field("external_id", &self.external_id)
            .field("email_verified", &self.email_verified)
            .field("roles", &self.roles)
            .field("disabled", &self.disabled)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("mfa", &self.mfa.as_ref().map(|_| "<redacted>"))
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// A partial update of a user: `None` leaves a field alone; for nullable fields
/// `Some(None)` clears it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// New display name.
    pub name: Option<Option<String>>,
    /// New username (unique, case-sensitive).
    pub username: Option<Option<String>>,
    /// New email (normalised by the store, unique).
    pub email: Option<Option<String>>,
    /// New external id (unique).
    pub external_id: Option<Option<String>>,
    /// New verification state.
    pub email_verified: Option<bool>,
    /// New roles (replaces the list).
    pub roles: Option<Vec<String>>,
    /// New disabled flag.
    pub disabled: Option<bool>,
    /// New password hash (PHC string).
    pub password_hash: Option<Option<String>>,
    /// New opaque MFA state.
    pub mfa: Option<Option<Vec<u8>>>,
}

impl fmt::Debug for UserPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPatch")
            .field("name", &self.name)
            .field("username", &self.username)
            .field("email", &self.email)
            .field("external_id", &self.external_id)
            .field("email_verified", &self.email_verified)
            .field("roles", &self.roles)
            .field("disabled", &self.disabled)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("mfa", &self.mfa.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Filters and position for [`Store::list_users`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserQuery {
    /// Only users whose normalised email contains this (compared lowercased).
    pub email_contains: Option<String>,
    /// Only users holding this role.
    pub role: Option<String>,
    /// Continue after this cursor (from [`UserPage::next_cursor`]).
    pub cursor: Option<String>,
    /// Page size; clamped to `1..=`[`MAX_PAGE`].
    pub limit: usize,
}

/// The largest page [`Store::list_users`] returns.
pub const MAX_PAGE: usize = 1000;

/// One page of users, oldest first (ties broken by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPage {
    /// The users of this page.
    pub users: Vec<User>,
    /// Where the next page starts; `None` on the last page. Opaque to callers.
    pub next_cursor: Option<String>,
}

/// A signed-in session: created by every login, kept by refresh, ended by logout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// UUID v4; the `sid` claim.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Login time.
    pub created_at: UnixMillis,
    /// Last refresh or authenticated use.
    pub last_used_at: UnixMillis,
    /// Absolute end of the session; refresh never extends it past this.
    pub expires_at: UnixMillis,
    /// Client's `User-Agent` at login.
    pub user_agent: Option<String>,
    /// Client IP at login.
    pub ip: Option<String>,
    /// Authentication methods (`pwd`, `mfa`, `otp`, `oauth`, `api_key`).
    pub amr: Vec<String>,
    /// When the session was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
}

impl Session {
    /// Whether the session can still be used at `now`.
    pub fn is_active(&self, now: UnixMillis) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// A stored refresh token (its digest) of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// SHA-256 of the opaque token.
    pub token_hash: TokenHash,
    /// The session it refreshes.
    pub session_id: String,
    /// Issue time.
    pub created_at: UnixMillis,
    /// Expiry.
    pub expires_at: UnixMillis,
    /// First time it was exchanged; `None` while unused.
    pub used_at: Option<UnixMillis>,
}

/// What [`Store::rotate_refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The new token was stored; the session (with `last_used_at` updated) is returned so
    /// the caller can mint the access token. `retry` is true when the presented token had
    /// already been used inside the grace window and the new token is a sibling of the
    /// first child (two tabs, a lost response).
    Rotated {
        /// The refreshed session.
        session: Session,
        /// Whether this was a retry inside the grace window.
        retry: bool,
    },
    /// No such token (never issued, purged, or its user was deleted).
    NotFound,
    /// The session was revoked (logout, password change, an earlier reuse detection).
    Revoked {
        /// The session.
        session_id: String,
    },
    /// The presented token or its session has expired.
    Expired {
        /// The session.
        session_id: String,
    },
    /// The token had been used longer than the grace window ago: treated as stolen, the
    /// whole session is now revoked (RFC 9700 section 4.14.2).
    ReuseDetected {
        /// The session that was revoked.
        session_id: String,
    },
}

/// The two kinds of API key (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiKeyKind {
    /// `sk_...`: server-to-server, acts as its user.
    Secret,
    /// `pk_...`: identifies an app, never a user.
    Publishable,
}

impl ApiKeyKind {
    /// Stored and API form.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyKind::Secret => "secret",
            ApiKeyKind::Publishable => "publishable",
        }
    }

    /// Inverse of [`ApiKeyKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "secret" => Some(ApiKeyKind::Secret),
            "publishable" => Some(ApiKeyKind::Publishable),
            _ => None,
        }
    }
}

/// An API key (its digest and metadata; the plain key is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// UUID v4; `X-Auth-Key-Id`.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Secret or publishable.
    pub kind: ApiKeyKind,
    /// Owner's label.
    pub name: String,
    /// The first characters of the key, shown to users to recognise it.
    pub prefix: String,
    /// SHA-256 of the whole key; unique.
    pub key_hash: TokenHash,
    /// `None`: the key acts with its owner's full rights; `Some`: only these scopes.
    pub scopes: Option<Vec<String>>,
    /// Creation time.
    pub created_at: UnixMillis,
    /// Expiry, if any.
    pub expires_at: Option<UnixMillis>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<UnixMillis>,
    /// Last authenticated use as last flushed by [`Store::record_api_key_use`].
    pub last_used_at: Option<UnixMillis>,
}

impl ApiKey {
    /// Whether the key can authenticate at `now`.
    pub fn is_active(&self, now: UnixMillis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A token-signing key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// Key id (`kid` header).
    pub kid: String,
    /// JWS algorithm (`EdDSA`, `ES256`, `RS256`).
    pub alg: String,
    /// Private key, PKCS#8 (DER or PEM, as the signer wrote it).
    pub private_key: Vec<u8>,
    /// Public key as a JWK JSON object, served in the JWKS.
    pub public_jwk: String,
    /// Creation time.
    pub created_at: UnixMillis,
    /// After this the key no longer verifies anything and may be dropped from the JWKS.
    pub not_after: Option<UnixMillis>,
    /// When it stopped signing; `None` for the current key.
    pub retired_at: Option<UnixMillis>,
}

// Hand-written so the private key never reaches a log.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private_key", &"<redacted>")
            .field("public_jwk", &self.public_jwk)
            .field("created_at", &self.created_at)
            .field("not_after", &self.not_after)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// What a one-time token is for; a token only works for its own kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OneTimeKind {
    /// Proves an email address (also used for an email change).
    EmailVerification,
    /// Allows setting a new password.
    PasswordReset,
    /// Signs in without a password.
    MagicLink,
    /// Lets an invited email create its account.
    Invitation,
    /// Between a correct password and the MFA code (`mfa_token`).
    MfaPending,
    /// A marker that an MFA code (a TOTP time step, a recovery code) has been used: its
    /// hash is derived from the user and the code, so the store's unique insert decides
    /// which of two concurrent uses wins. Never sent to anyone.
    MfaUsedCode,
    /// An OAuth sign-in in flight: its hash is the `state` sent to the provider; the payload
    /// holds the PKCE verifier, nonce, provider and `redirect_to`.
    OAuthState,
}

impl OneTimeKind {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            OneTimeKind::EmailVerification => "email_verification",
            OneTimeKind::PasswordReset => "password_reset",
            OneTimeKind::MagicLink => "magic_link",
            OneTimeKind::Invitation => "invitation",
            OneTimeKind::MfaPending => "mfa_pending",
            OneTimeKind::MfaUsedCode => "mfa_used_code",
            OneTimeKind::OAuthState => "oauth_state",
        }
    }

    /// Inverse of [`OneTimeKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "email_verification" => Some(OneTimeKind::EmailVerification),
            "password_reset" => Some(OneTimeKind::PasswordReset),
            "magic_link" => Some(OneTimeKind::MagicLink),
            "invitation" => Some(OneTimeKind::Invitation),
            "mfa_pending" => Some(OneTimeKind::MfaPending),
            "mfa_used_code" => Some(OneTimeKind::MfaUsedCode),
            "oauth_state" => Some(OneTimeKind::OAuthState),
            _ => None,
        }
    }
}

/// A single-use, expiring token (its digest): verification, reset, magic link, invitation,
/// MFA pending.
#[derive(Debug, Clone, PartialEq)]
pub struct OneTimeToken {
    /// SHA-256 of the token sent to the user.
    pub token_hash: TokenHash,
    /// Purpose.
    pub kind: OneTimeKind,
    /// The user it acts for, when there is one (deleted with the user).
    pub user_id: Option<String>,
    /// The email it was sent to (normalised by the store), e.g. for invitations.
    pub email: Option<String>,
    /// Flow data (roles of an invitation, new email, `redirect_to`, ...).
    pub payload: serde_json::Value,
    /// Issue time.
    pub created_at: UnixMillis,
    /// Expiry.
    pub expires_at: UnixMillis,
}

/// A user's account at an OAuth/OIDC provider: the provider's stable subject identifier
/// (`sub`, or GitHub's numeric id) bound to a Gatehouse user. A (provider, subject) pair
/// belongs to at most one user; a user may have several identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthIdentity {
    /// The provider's name under `accounts.oauth` (`google`, `corp`, ...).
    pub provider: String,
    /// The provider's subject identifier, compared exactly.
    pub subject: String,
    /// The user it signs in as.
    pub user_id: String,
    /// The email the provider asserted when the identity was linked (informational; stored
    /// as given, not normalised).
    pub email: Option<String>,
    /// Link time.
    pub created_at: UnixMillis,
}

/// A change every replica must evict from its cache (SPEC section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The user changed (roles, disabled, deleted, ...).
    User(String),
    /// The session was revoked.
    Session(String),
    /// The API key with this hash was revoked or deleted.
    ApiKey(TokenHash),
    /// Everything: the channel was interrupted and messages may have been missed.
    All,
}

/// What [`Store::purge_expired`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    /// Sessions past their expiry or revoked before the horizon.
    pub sessions: u64,
    /// Refresh tokens past their expiry.
    pub refresh_tokens: u64,
    /// One-time tokens past their expiry.
    pub one_time_tokens: u64,
    /// Retired signing keys past `not_after`.
    pub signing_keys: u64,
}

/// The persistence interface of the account domain. Implemented by the embedded SQLite
/// backend and (later) Redis; shared as `Arc<dyn Store>`.
///
/// `async-trait` rather than hand-written boxed futures: it produces exactly the
/// `Pin<Box<dyn Future + Send>>` a `dyn`-compatible async trait needs (native `async fn`
/// in traits is not object-safe), one allocation per call, which is noise next to a
/// database round trip, and keeps the signatures readable.
#[async_trait]
pub trait Store: Send + Sync {
    /// Short backend name for logs and metrics (`sqlite`, `redis`).
    fn kind(&self) -> &'static str;

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether several gateway processes share this store over the network (Redis): its
    /// outage hits every replica alike, so it does not make one of them unready.
    fn is_shared(&self) -> bool {
        false
    }

    /// The rate-limit counters replicas share, when the store is shared (Redis); `None`
    /// when limits are counted in this process alone.
    fn counters(&self) -> Option<std::sync::Arc<dyn SharedCounters>> {
        None
    }

    // ---- users ----

    /// Stores a new user. `Conflict` on a taken id, email (normalised), username or
    /// external id.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;
    /// The user with this id.
    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError>;
    /// The user with this email (normalised before the lookup).
    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// The user with exactly this username.
    async fn get_user_by_username(&self, username: &str) -> Result<Option<User>, StoreError>;
    /// The user with this external id.
    async fn get_user_by_external_id(&self, external_id: &str) -> Result<Option<User>, StoreError>;
    /// Applies `patch` atomically, sets `updated_at = now`, returns the updated user.
    /// `NotFound` for an unknown id, `Conflict` when a new unique value is taken (and then
    /// nothing changes).
    async fn update_user(
        &self,
        id: &str,
        patch: &UserPatch,
        now: UnixMillis,
    ) -> Result<User, StoreError>;
    /// Replaces the user's opaque MFA state only if it still is `expected` (compare and
    /// swap, so two concurrent changes of the state cannot overwrite each other), setting
    /// `updated_at = now`. `Ok(true)` when swapped, `Ok(false)` when the stored state
    /// differs (nothing changes), `NotFound` for an unknown id.
    async fn swap_user_mfa(
        &self,
        id: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;
    /// Deletes the user and everything it owns: sessions, their refresh tokens, API keys,
    /// one-time tokens. `NotFound` for an unknown id.
    async fn delete_user(&self, id: &str) -> Result<(), StoreError>;
    /// One page of users matching the query.
    async fn list_users(&self, query: &UserQuery) -> Result<UserPage, StoreError>;

    // ---- sessions ----

    /// Stores a new session and, atomically with it, its first refresh token (login).
    /// `NotFound` if the user does not exist; `Conflict` on a taken session id or token
    /// hash. `first_refresh.session_id` must equal `session.id`.
    async fn create_session(
        &self,
        session: &Session,
        first_refresh: Option<&RefreshToken>,
    ) -> Result<(), StoreError>;
    /// The session with this id, active or not.
    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError>;
    /// True when the session cannot be used at `now`: unknown (deleted with its user),
    /// revoked or expired. One primary-key lookup; the proxy path's cache calls it.
    async fn is_session_revoked(&self, id: &str, now: UnixMillis) -> Result<bool, StoreError>;
    /// Records a use: `last_used_at = max(last_used_at, now)`. `NotFound` if unknown.
    async fn touch_session(&self, id: &str, now: UnixMillis) -> Result<(), StoreError>;
    /// Flushes a batch of `(session id, used at)` in one write: `last_used_at` only moves
    /// forward; unknown ids (deleted meanwhile) are skipped.
    async fn record_session_use(&self, uses: &[(String, UnixMillis)]) -> Result<(), StoreError>;
    /// The user's sessions that are active at `now`, most recently used first.
    async fn list_active_sessions(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Vec<Session>, StoreError>;
    /// Revokes one session; with `owner`, only if it belongs to that user (else
    /// `NotFound`). Revoking a revoked session succeeds and keeps the first time.
    async fn revoke_session(
        &self,
        id: &str,
        owner: Option<&str>,
        now: UnixMillis,
    ) -> Result<(), StoreError>;
    /// Revokes every unrevoked session of the user except `except`; returns how many.
    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
        now: UnixMillis,
    ) -> Result<u64, StoreError>;

    // ---- refresh tokens ----

    /// Exchanges a presented refresh token for a new one, atomically (SPEC section 5
    /// refresh row, RFC 9700 section 4.14.2), checking in this order:
    /// unknown hash -> `NotFound`; session revoked -> `Revoked`; token or session expired
    /// -> `Expired`; token unused -> mark it used at `now`, store `new_hash` ->
    /// `Rotated { retry: false }`; token first used at most `grace` ago -> store `new_hash`
    /// as a sibling (every child stays valid and single-use; the window is measured from
    /// the first use, so retries cannot stretch it) -> `Rotated { retry: true }`; used
    /// longer ago -> revoke the session and mark all its tokens used -> `ReuseDetected`.
    /// A rotation also sets the session's `last_used_at`. Concurrent rotations of one
    /// fresh token all succeed (one first use, the others retries inside the grace).
    async fn rotate_refresh(
        &self,
        presented: &TokenHash,
        new_hash: &TokenHash,
        now: UnixMillis,
        grace: Duration,
        new_expires_at: UnixMillis,
    ) -> Result<RotateOutcome, StoreError>;

    // ---- API keys ----

    /// Stores a new key. `NotFound` if the user does not exist; `Conflict` on a taken id or
    /// key hash.
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// The key with this id, any state.
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    /// The key with this hash, any state (the caller checks [`ApiKey::is_active`]).
    async fn get_api_key_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiKey>, StoreError>;
    /// All keys of the user (revoked and expired included), oldest first.
    async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError>;
    /// Revokes one key; with `owner`, only if it belongs to that user (else `NotFound`).
    /// Revoking a revoked key succeeds and keeps the first time.
    async fn revoke_api_key(
        &self,
        id: &str,
        owner: Option<&str>,
        now: UnixMillis,
    ) -> Result<(), StoreError>;
    /// Revokes every unrevoked key of the user (account disabled); returns how many.
    async fn revoke_user_api_keys(&self, user_id: &str, now: UnixMillis)
    -> Result<u64, StoreError>;
    /// Flushes a batch of `(key id, used at)` in one write: `last_used_at` only moves
    /// forward; unknown ids (deleted meanwhile) are skipped.
    async fn record_api_key_use(&self, uses: &[(String, UnixMillis)]) -> Result<(), StoreError>;

    // ---- signing keys ----

    /// Bootstrap: stores `key` unless an unretired key exists, and returns the current key
    /// (the existing one or `key`). Atomic, so replicas racing at first start agree.
    async fn insert_signing_key_if_absent(
        &self,
        key: &SigningKey,
    ) -> Result<SigningKey, StoreError>;
    /// Rotation: atomically stores `new_key` as the current key and retires every other
    /// unretired key at `new_key.created_at` with `not_after = old_not_after` (when the
    /// longest token they signed has expired).
    async fn rotate_signing_key(
        &self,
        new_key: &SigningKey,
        old_not_after: UnixMillis,
    ) -> Result<(), StoreError>;
    /// Every stored key: unretired first (newest first), then retired ones, most recently
    /// retired first. The first entry is the key to sign with.
    async fn list_signing_keys(&self) -> Result<Vec<SigningKey>, StoreError>;
    /// Marks a key retired at `retired_at` (kept if already set) and sets `not_after`.
    /// `NotFound` for an unknown kid.
    async fn retire_signing_key(
        &self,
        kid: &str,
        retired_at: UnixMillis,
        not_after: Option<UnixMillis>,
    ) -> Result<(), StoreError>;

    // ---- one-time tokens ----

    /// Stores a new one-time token. `NotFound` if `user_id` names no user; `Conflict` on a
    /// taken hash (also when the holder has expired but is not purged yet). Of concurrent
    /// inserts of one hash exactly one succeeds: MFA replay protection relies on it.
    async fn create_one_time_token(&self, token: &OneTimeToken) -> Result<(), StoreError>;
    /// Looks at a token without using it (e.g. an `mfa_token` must survive a wrong code):
    /// `Some` only if it exists, has this kind and has not expired at `now`.
    async fn get_one_time_token(
        &self,
        hash: &TokenHash,
        kind: OneTimeKind,
        now: UnixMillis,
    ) -> Result<Option<OneTimeToken>, StoreError>;
    /// Uses a token: atomically removes it and returns it if it exists, has this kind and
    /// has not expired. Of concurrent consumers exactly one gets `Some`.
    async fn consume_one_time_token(
        &self,
        hash: &TokenHash,
        kind: OneTimeKind,
        now: UnixMillis,
    ) -> Result<Option<OneTimeToken>, StoreError>;
    /// Deletes the user's unused tokens of a kind (a new reset link voids older ones);
    /// returns how many.
    async fn delete_one_time_tokens(
        &self,
        user_id: &str,
        kind: OneTimeKind,
    ) -> Result<u64, StoreError>;

    /// Deletes the unused tokens of a kind sent to this email (normalised before the
    /// comparison), whoever they act for: a new invitation voids older ones to the same
    /// address. Returns how many.
    async fn delete_one_time_tokens_for_email(
        &self,
        email: &str,
        kind: OneTimeKind,
    ) -> Result<u64, StoreError>;

    // ---- OAuth identities ----

    /// Links an identity to its user. `Conflict { OAuthIdentity }` if the (provider,
    /// subject) pair is linked already (to anyone); `NotFound` if `user_id` names no user.
    async fn create_oauth_identity(&self, identity: &OAuthIdentity) -> Result<(), StoreError>;
    /// The identity with this (provider, subject).
    async fn get_oauth_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<OAuthIdentity>, StoreError>;
    /// The user's identities, oldest first.
    async fn list_oauth_identities(&self, user_id: &str) -> Result<Vec<OAuthIdentity>, StoreError>;
    /// Unlinks one of the user's identities. `NotFound` if the user has no such identity
    /// (also when another user has it).
    async fn delete_oauth_identity(
        &self,
        user_id: &str,
        provider: &str,
        subject: &str,
    ) -> Result<(), StoreError>;

    // ---- invalidation across replicas ----

    /// Tells every replica (this one included) to evict `what`. A store only one process
    /// uses has no one to tell.
    async fn publish_invalidation(&self, what: &Invalidation) -> Result<(), StoreError> {
        let _ = what;
        Ok(())
    }

    /// The invalidations published by any replica, with [`Invalidation::All`] after the
    /// channel was interrupted; `None` for a store only one process uses. Call once.
    fn invalidations(&self) -> Option<tokio::sync::mpsc::Receiver<Invalidation>> {
        None
    }

    // ---- housekeeping ----

    /// Removes what can no longer be used at `now`: expired refresh and one-time tokens,
    /// sessions expired or revoked before `now`, retired signing keys past `not_after`.
    async fn purge_expired(&self, now: UnixMillis) -> Result<PurgeCounts, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        let mut out = "rl:".to_owned();
        push_hex(&mut out, &[0x12]);
        assert_eq!(out, "rl:12");
    }

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(
            normalize_email("  Alice@Example.COM\t"),
            "alice@example.com"
        );
    }

    #[test]
    fn enum_string_forms_round_trip() {
        for kind in [ApiKeyKind::Secret, ApiKeyKind::Publishable] {
            assert_eq!(ApiKeyKind::parse(kind.as_str()), Some(kind));
        }
        for kind in [
            OneTimeKind::EmailVerification,
            OneTimeKind::PasswordReset,
            OneTimeKind::MagicLink,
            OneTimeKind::Invitation,
            OneTimeKind::MfaPending,
            OneTimeKind::MfaUsedCode,
            OneTimeKind::OAuthState,
        ] {
            assert_eq!(OneTimeKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let user = User {
            id: "u1".into(),
            email: None,
            username: None,
            name: None,
            external_id: None,
            email_verified: false,
            roles: vec![],
            disabled: false,
            password_hash: Some("$argon2id$v=19$secret".into()),
            mfa: Some(b"totp-secret".to_vec()),
            created_at: 0,
            updated_at: 0,
        };
        let shown = format!("{user:?}");
        // 116 is b't', the first byte of the MFA blob as a `Vec<u8>` would print it.
        assert!(
            !shown.contains("argon2id") && !shown.contains("116"),
            "{shown}"
        );
        let key = SigningKey {
            kid: "k".into(),
            alg: "EdDSA".into(),
            private_key: b"PRIVATE".to_vec(),
            public_jwk: "{}".into(),
            created_at: 0,
            not_after: None,
            retired_at: None,
        };
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }
}
