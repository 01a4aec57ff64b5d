//! The account domain, without HTTP: registration, password login, sessions with refresh
//! rotation, bearer-token authentication of the account API, profile and password changes,
//! and the signing keys tokens are made with.
//!
//! Owns: the rules of SPEC sections 5 and 6 (who may register, what a login checks and in
//! which order, what a session and its tokens contain, what a password change revokes).
//! Used alike by `endpoints` (the `/auth` API) and `cli` (`gatehouse users create`).
//!
//! Must not touch: HTTP types (requests come in as plain inputs, failures leave as
//! [`AccountError`], which `endpoints` maps to problem responses), or the clock: every call
//! takes `now` in milliseconds.

pub mod admin;
pub mod invitations;
pub mod lifecycle;
pub mod mfa;
pub mod oauth;
pub mod sessions;
pub mod validate;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::auth::jwt::{self, AccessClaims, JwtError};
use crate::auth::password::{self, PasswordError};
use crate::auth::signing::{self, KeyRing, SigningError};
use crate::auth::{AuthError, Authenticator, Presented, TokenRules};
use crate::config::{Config, RegistrationMode};
use crate::principal::Principal;
use crate::ratelimit::{Decision, LoginLimiter, LoginLimits, WindowCounter};
use crate::store::{
    ApiKey, ApiKeyKind, ConflictField, RefreshToken, RotateOutcome, Session, Store, StoreError,
    TokenHash, UnixMillis, User, UserPatch, new_id,
};
pub use mfa::{SignIn, SignInRequest};
use validate::{FieldIssue, IssueKind};

/// At most one store reload of the signing keys per this long when a token names an unknown
/// `kid` (a key rotated by another replica or by `gatehouse keys rotate-signing`), so a flood
/// of forged kids cannot turn into a flood of store reads.
const KID_RELOAD_EVERY_MS: i64 = 5_000;

/// Why an account operation failed. `endpoints` maps each variant to a SPEC section 4 code.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// One or more fields are wrong (all of them are listed).
    #[error("invalid fields")]
    Invalid(Vec<FieldIssue>),
    /// The registration mode does not allow self sign-up.
    #[error("registration is closed")]
    RegistrationClosed,
    /// Email, username or external id already taken.
    #[error("{0} already taken")]
    Taken(ConflictField),
    /// Unknown account or wrong password: one variant, so the two cannot be told apart.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Right password, disabled account.
    #[error("account disabled")]
    Disabled,
    /// Over a rate limit.
    #[error("rate limited")]
    RateLimited(RateLimited),
    /// A refresh token that is unknown, expired, rotated too long ago, or of an ended
    /// session.
    #[error("invalid refresh token: {0}")]
    InvalidRefreshToken(&'static str),
    /// An access token that failed verification.
    #[error("invalid access token: {0}")]
    Token(#[from] JwtError),
    /// A valid token whose session ended or whose user is gone or disabled.
    #[error("session revoked")]
    SessionRevoked,
    /// A refused API key.
    #[error("invalid API key")]
    InvalidApiKey,
    /// A publishable key where a user is needed.
    #[error("a publishable key does not identify a user")]
    NotAUser,
    /// Not allowed (scope beyond the owner's rights, admin only).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// No such record (of this caller).
    #[error("not found")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed (not a wrong password: that is `InvalidCredentials`).
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// Signing failed.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// A one-time token (a mailed link) that is unknown, used or expired.
    #[error("the link is invalid, already used or expired")]
    InvalidOneTimeToken,
    /// `require_email_verification` and the address is not verified yet.
    #[error("email not verified")]
    EmailNotVerified,
    /// An `mfa_token` that is unknown, used or expired, or whose account no longer has MFA.
    #[error("the mfa_token is invalid, already used or expired")]
    InvalidMfaToken,
    /// TOTP enrolment while MFA is enabled (disable it first).
    #[error("TOTP MFA is already enabled")]
    MfaAlreadyEnabled,
    /// An MFA request that does not fit the account's MFA state (nothing to confirm or to
    /// disable, a concurrent change).
    #[error("{0}")]
    MfaState(&'static str),
    /// The stored MFA state cannot be read or written.
    #[error(transparent)]
    Mfa(#[from] mfa::MfaError),
    /// An OAuth provider flow failed (unreachable provider, refused code, bad ID token).
    #[error(transparent)]
    OAuth(#[from] crate::oauth::OAuthError),
    /// An OAuth callback whose `state` is missing from this browser, unknown, used, expired
    /// or of another provider.
    #[error("invalid OAuth state: {0}")]
    OAuthState(&'static str),
    /// The provider sent the user back with an error (`access_denied`, ...).
    #[error("the provider answered {0}")]
    OAuthDenied(String),
    /// Unlinking would leave the account without a way to sign in.
    #[error("the account's only way to sign in")]
    LastSignInMethod,
}

impl From<AuthError> for AccountError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidApiKey => AccountError::InvalidApiKey,
            AuthError::Token(t) => AccountError::Token(t),
            AuthError::SessionRevoked => AccountError::SessionRevoked,
            AuthError::Store(s) => AccountError::Store(s),
        }
    }
}

/// Which limit refused a request and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// `login`, `register`, ...
    pub policy: &'static str,
    pub quota: u32,
    pub window: Duration,
    pub retry_after: Duration,
}

/// Who is asking, as far as the account domain cares.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// What per-IP limits count this client under (an IPv6 address's /64).
    pub fn limit_key(&self) -> String {
        crate::ratelimit::limit_ip(self.ip).to_string()
    }
}

/// What sign-up did.
pub enum Registered {
    /// Signed in at once.
    SignedIn(Box<Issued>),
    /// `require_email_verification`: the account exists, no session until the address is
    /// verified (the link is on its way).
    VerificationPending(Box<User>),
    /// `conceal_existing`: the same answer whether the address was free (a verification
    /// link is on its way) or already had an account (its owner is told by mail).
    Concealed,
}

/// `POST /auth/register`'s input.
// No `Debug`: it holds a password.
#[derive(Default, Clone)]
pub struct Registration {
    pub email: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_confirmation: Option<String>,
    pub name: Option<String>,
}

/// A new user made by an operator (`gatehouse users create`) rather than by sign-up.
// No `Debug`: it holds a password.
#[derive(Default, Clone)]
pub struct NewUser {
    pub email: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub password: String,
}

/// `POST /auth/api-keys`'s input.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub kind: ApiKeyKind,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<UnixMillis>,
}

/// `POST /auth/admin/users`'s input.
#[derive(Debug, Clone)]
pub struct PartnerUser {
    pub email: String,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
}

/// What partner registration did. No `Debug`: it holds the plain key.
pub enum PartnerOutcome {
    /// A new user and its key (the plain key, shown once).
    Created {
        user: User,
        key: Box<ApiKey>,
        plain: String,
    },
    /// The `external_id` was known: that user, no new key.
    Existing(User),
}

/// How a password login names the account.
#[derive(Debug, Clone)]
pub enum LoginId {
    Email(String),
    Username(String),
}

impl LoginId {
    /// The key the login limiter counts under: the normalised email or the exact username.
    fn limiter_key(&self) -> String {
        match self {
            LoginId::Email(e) => format!("e:{}", crate::store::normalize_email(e)),
            LoginId::Username(u) => format!("u:{u}"),
        }
    }
}

/// `PATCH /auth/me`'s input: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Default, Clone)]
pub struct ProfileChange {
    pub name: Option<Option<String>>,
    pub username: Option<Option<String>>,
    pub email: Option<Option<String>>,
}

/// A new session and its first (or rotated) tokens. No `Debug`: it holds them.
pub struct Issued {
    pub user: User,
    pub session: Session,
    pub access_token: String,
    pub refresh_token: String,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
}

/// An authenticated account API request: the user (fresh from the store) and how they
/// authenticated (session for tokens and cookies, key for API keys, scopes).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub principal: Arc<Principal>,
}

impl Caller {
    /// The session of a token or cookie; `None` for API keys.
    pub fn session_id(&self) -> Option<&str> {
        self.principal.session_id.as_deref()
    }
}

/// The account service: the store, the signing keys and the account API's limiters.
pub struct Accounts {
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
    last_kid_reload: AtomicI64,
    login_limiter: LoginLimiter,
    register_limiter: WindowCounter,
    /// `rate_limits.email`: forgot-password, magic-link and resends, per IP and address.
    email_limiter: WindowCounter,
    /// Set once by the server; CLI commands run without one (no mail is sent).
    /// Swapped whole when a reload changes the mail settings or templates.
    mailer: arc_swap::ArcSwapOption<crate::mail::Mailer>,
    /// OAuth/OIDC providers: discovery and JWKS caches (`accounts::oauth`).
    oauth: crate::oauth::Client,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("store", &self.store.kind())
            .field("kid", &self.auth.keys().current_kid())
            .finish_non_exhaustive()
    }
}

/// A new opaque secret of 256 random bits, base64url (43 characters).
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of a secret: its SHA-256. (Secrets are 256-bit random, so a fast hash is
/// enough; argon2 is for low-entropy passwords.)
pub fn secret_hash(secret: &str) -> TokenHash {
    Sha256::digest(secret.as_bytes()).into()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// How long a retired key must keep verifying: the longest token signed with it, plus the
/// time another replica may keep signing with it before it re-reads the keys (a few
/// seconds) and the verification leeway.
pub fn max_token_lifetime(cfg: &Config) -> Duration {
    cfg.tokens.access_ttl + Duration::from_secs(crate::auth::LEEWAY_SECS + 60)
}

impl Accounts {
    /// Builds the service on a store and the authenticator whose key ring it signs with
    /// (made from [`Accounts::load_ring`]).
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>, now: UnixMillis) -> Accounts {
        Accounts {
            store,
            auth,
            last_kid_reload: AtomicI64::new(now),
            login_limiter: LoginLimiter::new(),
            register_limiter: WindowCounter::new(),
            email_limiter: WindowCounter::new(),
            mailer: arc_swap::ArcSwapOption::empty(),
            oauth: crate::oauth::Client::new(Arc::new(crate::outbound::Outbound::new(
                crate::oauth::FETCH_TIMEOUT,
            ))),
        }
    }

    /// Everything the account API and the proxy path share, built on a store: the lookups
    /// cache, the key ring (created on first start), the authenticator and this service.
    pub async fn start(
        store: Arc<dyn Store>,
        cfg: &Config,
        now: UnixMillis,
    ) -> Result<Accounts, AccountError> {
        let ring = Self::load_ring(store.as_ref(), cfg, now).await?;
        let cache = crate::cache::AuthCache::new(store.clone(), (&cfg.cache).into());
        let auth = Arc::new(Authenticator::new(
            cache,
            cfg.cache.max_entries,
            cfg.cache.ttl,
            ring,
        ));
        auth.sync_trusted(&cfg.tokens.trusted_issuers, &cfg.tokens.audience);
        Ok(Self::new(store, auth, now))
    }

    /// Counts failed logins in the store's shared counters (Redis), so the login limits
    /// add up over every replica.
    pub fn share_login_limits(&self, backend: Arc<crate::ratelimit::shared::SharedBackend>) {
        self.login_limiter.share(backend);
    }

    /// Gives the service its mailer, replacing the previous one (which delivers what it
    /// has queued, then stops).
    pub fn set_mailer(&self, mailer: Arc<crate::mail::Mailer>) {
        self.mailer.store(Some(mailer));
    }

    /// Loads (or on the first start creates and stores) the signing keys.
    pub async fn load_ring(
        store: &dyn Store,
        cfg: &Config,
        now: UnixMillis,
    ) -> Result<KeyRing, AccountError> {
        let keys =
            signing::load_or_create(store, &cfg.tokens.signing, max_token_lifetime(cfg), now)
                .await?;
        Ok(KeyRing::new(&keys, now)?)
    }

    /// Starts the password-hashing threads, so a machine that cannot start them fails at
    /// start rather than at the first login. Nothing is hashed: argon2's 19 MiB block would
    /// stay in the allocator of an idle gateway (the dummy hash for unknown accounts is a
    /// constant, see `password::verify_dummy`). For the server, not the CLI.
    pub async fn warm_up(&self) -> Result<(), AccountError> {
        password::start_hash_pool()?;
        Ok(())
    }

    /// The store this service works on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The current key ring (JWKS, verification).
    pub fn keys(&self) -> Arc<KeyRing> {
        self.auth.keys()
    }

    /// The proxy path's authenticator (and its cache, evicted after local writes).
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// Re-reads the signing keys from the store (a rotation by another process or replica,
    /// retired keys past their end). Called periodically and on reload.
    pub async fn reload_keys(&self, cfg: &Config, now: UnixMillis) -> Result<(), AccountError> {
        let ring = Self::load_ring(self.store.as_ref(), cfg, now).await?;
        self.last_kid_reload.store(now, Ordering::Relaxed);
        self.auth.set_keys(ring);
        Ok(())
    }

    /// Makes a new signing key current (`gatehouse keys rotate-signing`); the previous keys
    /// keep verifying until the longest token they signed has expired.
    pub async fn rotate_signing_key(
        &self,
        cfg: &Config,
        now: UnixMillis,
    ) -> Result<crate::store::SigningKey, AccountError> {
        let key = signing::rotate(
            self.store.as_ref(),
            cfg.tokens.signing.alg,
            max_token_lifetime(cfg),
            now,
        )
        .await?;
        self.reload_keys(cfg, now).await?;
        Ok(key)
    }

    /// Every user, page by page (`gatehouse users list`).
    pub async fn all_users(&self) -> Result<Vec<User>, AccountError> {
        let mut query = crate::store::UserQuery {
            limit: crate::store::MAX_PAGE,
            ..Default::default()
        };
        let mut users = Vec::new();
        loop {
            let page = self.store.list_users(&query).await?;
            users.extend(page.users);
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => return Ok(users),
            }
        }
    }

    // ---- registration ----

    /// Self sign-up (`POST /auth/register`): checks the mode and the per-IP limit, validates
    /// every field, stores the user and signs them in.
    pub async fn register(
        &self,
        cfg: &Config,
        input: Registration,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<Registered, AccountError> {
        match cfg.accounts.registration {
            RegistrationMode::Open => {}
            RegistrationMode::InviteOnly | RegistrationMode::AdminOnly => {
                return Err(AccountError::RegistrationClosed);
            }
        }
        let limit = &cfg.rate_limits.register;
        if let Decision::Limited { retry_after } =
            self.register_limiter
                .hit(&client.limit_key(), limit.requests, limit.per, now)
        {
            return Err(AccountError::RateLimited(RateLimited {
                policy: "register",
                quota: limit.requests,
                window: limit.per,
                retry_after,
            }));
        }

        let email = non_empty(input.email);
        let username = non_empty(input.username);
        let name = non_empty(input.name);
        let password = input.password.unwrap_or_default();
        let issues = validate::SignUp {
            email: email.as_deref(),
            username: username.as_deref(),
            name: name.as_deref(),
            password: &password,
            confirmation: input.password_confirmation.as_deref(),
        }
        .issues(cfg.accounts.password.min_length as usize);
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }

        let conceal = cfg.accounts.conceal_existing && email.is_some();
        let wanted_email = email.clone();
        let inserted = self
            .insert_user(
                NewUser {
                    email,
                    username,
                    name,
                    roles: vec!["user".into()],
                    password,
                },
                false,
                now,
            )
            .await;
        let user = match (inserted, wanted_email) {
            (Ok(user), _) => user,
            // The password was hashed before the insert failed, so this answer costs what a
            // new account's does.
            (Err(AccountError::Taken(ConflictField::Email)), Some(address)) if conceal => {
                self.tell_owner_of(&address).await;
                return Ok(Registered::Concealed);
            }
            (Err(e), _) => return Err(e),
        };
        // The account exists: a failure to queue the mail must not fail the sign-up (the
        // user can ask for another link).
        if let Err(e) = self.send_verification(cfg, &user, now).await {
            tracing::warn!(target: "gatehouse::accounts", error = %e, "cannot issue the email verification link");
        }
        if conceal {
            return Ok(Registered::Concealed);
        }
        if cfg.accounts.require_email_verification {
            return Ok(Registered::VerificationPending(Box::new(user)));
        }
        let issued = self
            .start_session(cfg, user, vec!["pwd".into()], client, now)
            .await?;
        Ok(Registered::SignedIn(Box::new(issued)))
    }

    /// Creates a user without signing in (operators, the CLI). Validates like sign-up but
    /// ignores the registration mode and the limits.
    pub async fn create_user(
        &self,
        cfg: &Config,
        input: NewUser,
        now: UnixMillis,
    ) -> Result<User, AccountError> {
        let mut issues = Vec::new();
        validate::identity(
            input.email.as_deref(),
            input.username.as_deref(),
            input.name.as_deref(),
            &mut issues,
        );
        validate::new_password(
            "password",
            &input.password,
            cfg.accounts.password.min_length as usize,
            &mut issues,
        );
        for role in &input.roles {
            if !valid_role(role) {
                issues.push(FieldIssue::invalid(
                    "roles",
                    format!("{role:?} is not a valid role name"),
                ));
            }
        }
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        self.insert_user(input, false, now).await
    }

    /// Stores a new user with a hashed password; `email_verified` when the address is
    /// already proven (an accepted invitation).
    async fn insert_user(
        &self,
        input: NewUser,
        email_verified: bool,
        now: UnixMillis,
    ) -> Result<User, AccountError> {
        let hash = password::hash_blocking(input.password).await?;
        let user = User {
            id: new_id(),
            email: input.email.map(|e| e.trim().to_owned()),
            username: input.username,
            name: input.name,
            external_id: None,
            email_verified,
            roles: if input.roles.is_empty() {
                vec!["user".into()]
            } else {
                input.roles
            },
            disabled: false,
            password_hash: Some(hash),
            mfa: None,
            created_at: now,
            updated_at: now,
        };
        match self.store.create_user(&user).await {
            Ok(()) => {}
            Err(StoreError::Conflict { field }) => return Err(AccountError::Taken(field)),
            Err(e) => return Err(e.into()),
        }
        // The store normalised the email; hand back what it holds.
        Ok(self.store.get_user(&user.id).await?.unwrap_or(user))
    }

    // ---- login ----

    /// Password login (`POST /auth/login`). The order is the contract: limit first (even
    /// the right password is refused while over it), then the password (checked against a
    /// dummy hash when the account does not exist, so both failures cost the same), then
    /// the account state, then the MFA gate ([`Accounts::sign_in`]): an account with MFA
    /// gets an `mfa_token` rather than a session. `request` is what the client asked for
    /// (cookies), kept for the second step.
    pub async fn login(
        &self,
        cfg: &Config,
        id: LoginId,
        password: String,
        request: SignInRequest,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<SignIn, AccountError> {
        let limits = login_limits(cfg);
        let account_key = id.limiter_key();
        let ip = client.limit_key();
        if let Decision::Limited { retry_after } = self
            .login_limiter
            .check(&account_key, &ip, limits, now)
            .await
        {
            return Err(login_limited(cfg, retry_after));
        }
        let user = match &id {
            LoginId::Email(e) => self.store.get_user_by_email(e).await?,
            LoginId::Username(u) => self.store.get_user_by_username(u).await?,
        };
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        let ok = !password.is_empty() && password::verify_blocking(password, hash).await?;
        let user = match (ok, user) {
            (true, Some(user)) => user,
            _ => {
                self.login_limiter
                    .failed(&account_key, &ip, limits, now)
                    .await;
                return Err(AccountError::InvalidCredentials);
            }
        };
        self.login_limiter.succeeded(&account_key, &ip).await;
        if user.disabled {
            return Err(AccountError::Disabled);
        }
        if cfg.accounts.require_email_verification && !user.email_verified {
            return Err(AccountError::EmailNotVerified);
        }
        self.sign_in(cfg, user, vec!["pwd".into()], request, client, now)
            .await
    }

    /// Creates a session with its first refresh token and signs an access token for it.
    pub async fn start_session(
        &self,
        cfg: &Config,
        user: User,
        amr: Vec<String>,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<Issued, AccountError> {
        // A session lasts `refresh_ttl` from login; refreshing does not extend it.
        let expires_at = now.saturating_add(ms(cfg.tokens.refresh_ttl));
        let session = Session {
            id: new_id(),
            user_id: user.id.clone(),
            created_at: now,
            last_used_at: now,
            expires_at,
            user_agent: client.user_agent.clone(),
            ip: Some(client.ip.to_string()),
            amr,
            revoked_at: None,
        };
        let refresh_token = new_secret();
        let refresh = RefreshToken {
            token_hash: secret_hash(&refresh_token),
            session_id: session.id.clone(),
            created_at: now,
            expires_at,
            used_at: None,
        };
        self.store.create_session(&session, Some(&refresh)).await?;
        let access_token = self.sign_access(cfg, &user, &session, now)?;
        Ok(Issued {
            user,
            session,
            access_token,
            refresh_token,
            expires_in: cfg.tokens.access_ttl.as_secs(),
        })
    }

    fn sign_access(
        &self,
        cfg: &Config,
        user: &User,
        session: &Session,
        now: UnixMillis,
    ) -> Result<String, AccountError> {
        let iat = now.div_euclid(1000);
        let claims = AccessClaims {
            iss: cfg.tokens.issuer.clone(),
            sub: user.id.clone(),
            aud: cfg.tokens.audience.clone(),
            exp: iat.saturating_add(cfg.tokens.access_ttl.as_secs() as i64),
            iat,
            jti: new_id(),
            sid: session.id.clone(),
            roles: user.roles.clone(),
            amr: session.amr.clone(),
            email: user.email.clone(),
            username: user.username.clone(),
            scope: None,
        };
        Ok(jwt::issue_access(&self.auth.keys(), &claims)?)
    }

    // ---- refresh ----

    /// Rotates a refresh token (`POST /auth/refresh`); reuse detection is the store's
    /// atomic `rotate_refresh`.
    pub async fn refresh(
        &self,
        cfg: &Config,
        presented: &str,
        now: UnixMillis,
    ) -> Result<Issued, AccountError> {
        let refresh_token = new_secret();
        let outcome = self
            .store
            .rotate_refresh(
                &secret_hash(presented),
                &secret_hash(&refresh_token),
                now,
                cfg.tokens.refresh_reuse_grace,
                now.saturating_add(ms(cfg.tokens.refresh_ttl)),
            )
            .await?;
        let session = match outcome {
            RotateOutcome::Rotated { session, .. } => session,
            RotateOutcome::NotFound => return Err(AccountError::InvalidRefreshToken("unknown")),
            RotateOutcome::Revoked { .. } => {
                return Err(AccountError::InvalidRefreshToken("session ended"));
            }
            RotateOutcome::Expired { .. } => {
                return Err(AccountError::InvalidRefreshToken("expired"));
            }
            RotateOutcome::ReuseDetected { session_id } => {
                // The store revoked the session; its access tokens stop here at once.
                self.auth.cache().evict_session(&session_id).await;
                tracing::warn!(target: "gatehouse::accounts", session_id = %session_id, "refresh token reused after rotation; session revoked");
                return Err(AccountError::InvalidRefreshToken("reused"));
            }
        };
        let user = match self.store.get_user(&session.user_id).await? {
            Some(u) if !u.disabled => u,
            _ => return Err(AccountError::InvalidRefreshToken("session ended")),
        };
        let access_token = self.sign_access(cfg, &user, &session, now)?;
        Ok(Issued {
            user,
            session,
            access_token,
            refresh_token,
            expires_in: cfg.tokens.access_ttl.as_secs(),
        })
    }

    // ---- authentication of the account API ----

    /// Authenticates an account API request through the same authenticator as the proxy
    /// path (any credential kind), then reads the user fresh from the store: the account API
    /// shows and changes the record itself. A token naming an unknown `kid` makes the keys be
    /// re-read first (at most every few seconds), in case another process rotated them.
    pub async fn authenticate(
        &self,
        cfg: &Config,
        presented: Presented<'_>,
        now: UnixMillis,
    ) -> Result<Caller, AccountError> {
        let rules = TokenRules {
            issuer: &cfg.tokens.issuer,
            audience: &cfg.tokens.audience,
            external: false,
        };
        let principal = match self.auth.authenticate(presented, rules, now).await {
            Err(AuthError::Token(JwtError::UnknownKid)) if self.may_reload_for_kid(now) => {
                self.reload_keys(cfg, now).await?;
                self.auth.authenticate(presented, rules, now).await
            }
            other => other,
        }?;
        let Some(user_id) = principal.user_id.as_deref() else {
            // A publishable key identifies an app, never a user.
            return Err(AccountError::NotAUser);
        };
        let user = match self.store.get_user(user_id).await? {
            Some(u) if !u.disabled => u,
            _ => return Err(AccountError::SessionRevoked),
        };
        Ok(Caller { user, principal })
    }

    fn may_reload_for_kid(&self, now: UnixMillis) -> bool {
        let last = self.last_kid_reload.load(Ordering::Relaxed);
        now - last >= KID_RELOAD_EVERY_MS
            && self
                .last_kid_reload
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Ends the caller's session (`POST /auth/logout`); an API key has none to end.
    pub async fn logout(&self, caller: &Caller, now: UnixMillis) -> Result<(), AccountError> {
        let Some(sid) = caller.session_id() else {
            return Ok(());
        };
        let result = match self
            .store
            .revoke_session(sid, Some(&caller.user.id), now)
            .await
        {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        };
        // Immediately on this replica (SPEC section 3).
        self.auth.cache().evict_session(sid).await;
        result
    }

    // ---- partner registration (admin) ----

    /// Whether the caller may use `/auth/admin/...`: the `admin` role, and when the
    /// credential carries scopes (an API key with scopes, a token with `scope`), the `admin`
    /// scope among them (SPEC section 5).
    pub fn is_admin(caller: &Caller) -> bool {
        caller.user.roles.iter().any(|r| r == "admin")
            && caller
                .principal
                .scopes
                .as_ref()
                .is_none_or(|s| s.iter().any(|x| x == "admin"))
    }

    /// `POST /auth/admin/users`: creates a user (no password) with a secret API key,
    /// idempotent on `external_id`: the same id again returns the existing user and no key.
    pub async fn partner_register(
        &self,
        input: PartnerUser,
        now: UnixMillis,
    ) -> Result<PartnerOutcome, AccountError> {
        let mut issues = Vec::new();
        validate::email(&input.email, &mut issues);
        if let Some(n) = &input.name {
            validate::name(n, &mut issues);
        }
        if input
            .external_id
            .as_ref()
            .is_some_and(|e| e.is_empty() || e.len() > 255 || e.chars().any(char::is_control))
        {
            issues.push(FieldIssue::invalid(
                "external_id",
                "must be 1 to 255 characters without control characters",
            ));
        }
        if input.roles.iter().any(|r| !valid_role(r)) {
            issues.push(FieldIssue::invalid(
                "roles",
                "contains an invalid role name",
            ));
        }
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        if let Some(ext) = &input.external_id
            && let Some(existing) = self.store.get_user_by_external_id(ext).await?
        {
            return Ok(PartnerOutcome::Existing(existing));
        }
        let user = User {
            id: new_id(),
            email: Some(input.email.trim().to_owned()),
            username: None,
            name: input.name,
            external_id: input.external_id.clone(),
            email_verified: false,
            roles: if input.roles.is_empty() {
                vec!["user".into()]
            } else {
                input.roles
            },
            disabled: false,
            password_hash: None,
            mfa: None,
            created_at: now,
            updated_at: now,
        };
        match self.store.create_user(&user).await {
            Ok(()) => {}
            // Two concurrent registrations with one external id: the loser answers like a
            // repeat.
            Err(StoreError::Conflict {
                field: ConflictField::ExternalId,
            }) => {
                if let Some(ext) = &input.external_id
                    && let Some(existing) = self.store.get_user_by_external_id(ext).await?
                {
                    return Ok(PartnerOutcome::Existing(existing));
                }
                return Err(AccountError::Taken(ConflictField::ExternalId));
            }
            Err(StoreError::Conflict { field }) => return Err(AccountError::Taken(field)),
            Err(e) => return Err(e.into()),
        }
        let user = self.store.get_user(&user.id).await?.unwrap_or(user);
        let (key, plain) = self
            .create_api_key(
                &user,
                NewApiKey {
                    name: "partner".into(),
                    kind: ApiKeyKind::Secret,
                    scopes: None,
                    expires_at: None,
                },
                now,
            )
            .await?;
        Ok(PartnerOutcome::Created {
            user,
            key: Box::new(key),
            plain,
        })
    }

    /// A user by id or, when the text has an `@`, by email (the CLI's `--user`).
    pub async fn user_by_id_or_email(&self, id_or_email: &str) -> Result<User, AccountError> {
        let found = if id_or_email.contains('@') {
            self.store.get_user_by_email(id_or_email).await?
        } else {
            self.store.get_user(id_or_email).await?
        };
        found.ok_or(AccountError::NotFound)
    }

    /// A user by id (admin endpoints).
    pub async fn user_by_id(&self, id: &str) -> Result<User, AccountError> {
        self.store.get_user(id).await?.ok_or(AccountError::NotFound)
    }

    // ---- API keys ----

    /// Issues an API key for `owner` (`POST /auth/api-keys`, the CLI, partner registration).
    /// A key never has more rights than its owner: the `admin` scope needs the `admin` role.
    pub async fn create_api_key(
        &self,
        owner: &User,
        input: NewApiKey,
        now: UnixMillis,
    ) -> Result<(ApiKey, String), AccountError> {
        let mut issues = Vec::new();
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            issues.push(FieldIssue::invalid(
                "name",
                "must be 1 to 100 characters without control characters",
            ));
        }
        if input
            .scopes
            .as_ref()
            .is_some_and(|scopes| scopes.iter().any(|s| !valid_role(s)))
        {
            issues.push(FieldIssue::invalid(
                "scopes",
                "each scope must be 1 to 64 of letters, digits, '_', '-', '.', ':'",
            ));
        }
        if input.expires_at.is_some_and(|t| t <= now) {
            issues.push(FieldIssue::invalid("expires_at", "must be in the future"));
        }
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        let wants_admin = input
            .scopes
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| x == "admin"));
        if wants_admin && !owner.roles.iter().any(|r| r == "admin") {
            return Err(AccountError::Forbidden(
                "the admin scope needs an owner with the admin role",
            ));
        }
        let generated = crate::auth::api_key::generate(input.kind);
        let key = ApiKey {
            id: new_id(),
            user_id: owner.id.clone(),
            kind: input.kind,
            name,
            prefix: generated.prefix.clone(),
            key_hash: generated.hash,
            scopes: input.scopes,
            created_at: now,
            expires_at: input.expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        self.store.create_api_key(&key).await?;
        Ok((key, generated.key))
    }

    /// The caller's keys, revoked ones included, oldest first.
    pub async fn list_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, AccountError> {
        Ok(self.store.list_api_keys(user_id).await?)
    }

    /// Revokes one of the owner's keys; it stops working on this replica at once.
    pub async fn revoke_api_key(
        &self,
        owner: Option<&str>,
        id: &str,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let key = self
            .store
            .get_api_key(id)
            .await?
            .filter(|k| owner.is_none_or(|o| o == k.user_id))
            .ok_or(AccountError::NotFound)?;
        match self.store.revoke_api_key(id, owner, now).await {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(AccountError::NotFound),
            Err(e) => return Err(e.into()),
        }
        self.auth.cache().evict_api_key(&key.key_hash).await;
        Ok(())
    }

    /// `POST /auth/login {api_key}`: a secret key exchanged for a session. Failures count
    /// toward the login limits like wrong passwords.
    pub async fn login_api_key(
        &self,
        cfg: &Config,
        key: &str,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<Issued, AccountError> {
        let limits = login_limits(cfg);
        // The account is unknown until the key is; its visible prefix stands in for it.
        let account_key = format!("k:{}", key.get(..12).unwrap_or(key));
        let ip = client.limit_key();
        if let Decision::Limited { retry_after } = self
            .login_limiter
            .check(&account_key, &ip, limits, now)
            .await
        {
            return Err(login_limited(cfg, retry_after));
        }
        let found = match crate::auth::api_key::parse(key) {
            Ok(parsed) if parsed.kind == ApiKeyKind::Secret => self
                .store
                .get_api_key_by_hash(&parsed.hash)
                .await?
                .filter(|k| k.is_active(now) && k.kind == ApiKeyKind::Secret),
            _ => None,
        };
        let user = match &found {
            Some(k) => self.store.get_user(&k.user_id).await?,
            None => None,
        };
        let Some(user) = user else {
            self.login_limiter
                .failed(&account_key, &ip, limits, now)
                .await;
            return Err(AccountError::InvalidCredentials);
        };
        self.login_limiter.succeeded(&account_key, &ip).await;
        if user.disabled {
            return Err(AccountError::Disabled);
        }
        self.start_session(cfg, user, vec!["api_key".into()], client, now)
            .await
    }

    /// A session cookie's token for an issued session: the access token's claims, living
    /// as long as the session.
    pub fn session_cookie(
        &self,
        cfg: &Config,
        issued: &Issued,
        now: UnixMillis,
    ) -> Result<(String, u64), AccountError> {
        let iat = now.div_euclid(1000);
        let exp = issued.session.expires_at.div_euclid(1000);
        let claims = AccessClaims {
            iss: cfg.tokens.issuer.clone(),
            sub: issued.user.id.clone(),
            aud: cfg.tokens.audience.clone(),
            exp,
            iat,
            jti: new_id(),
            sid: issued.session.id.clone(),
            roles: issued.user.roles.clone(),
            amr: issued.session.amr.clone(),
            email: issued.user.email.clone(),
            username: issued.user.username.clone(),
            scope: None,
        };
        let token = jwt::issue_session_cookie(&self.auth.keys(), &claims)?;
        Ok((token, u64::try_from(exp - iat).unwrap_or(0)))
    }

    // ---- profile ----

    /// `PATCH /auth/me`. A new email is unverified until proven again.
    pub async fn update_profile(
        &self,
        caller: &Caller,
        change: ProfileChange,
        now: UnixMillis,
    ) -> Result<User, AccountError> {
        let mut issues = Vec::new();
        if let Some(Some(n)) = &change.name {
            validate::name(n, &mut issues);
        }
        if let Some(Some(u)) = &change.username {
            validate::username(u, &mut issues);
        }
        if let Some(Some(e)) = &change.email {
            validate::email(e, &mut issues);
        }
        // An account must keep a way to sign in by name.
        let email_after = match &change.email {
            Some(e) => e.is_some(),
            None => caller.user.email.is_some(),
        };
        let username_after = match &change.username {
            Some(u) => u.is_some(),
            None => caller.user.username.is_some(),
        };
        if !email_after && !username_after {
            issues.push(FieldIssue::invalid(
                "email",
                "an account needs an email or a username",
            ));
        }
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        let email_changed = change.email.as_ref().is_some_and(|new| {
            new.as_deref().map(crate::store::normalize_email) != caller.user.email
        });
        let patch = UserPatch {
            name: change.name,
            username: change.username,
            email: change.email.map(|e| e.map(|s| s.trim().to_owned())),
            email_verified: email_changed.then_some(false),
            ..UserPatch::default()
        };
        match self.store.update_user(&caller.user.id, &patch, now).await {
            Ok(user) => {
                self.auth.cache().evict_user(&user.id).await;
                Ok(user)
            }
            Err(StoreError::Conflict { field }) => Err(AccountError::Taken(field)),
            Err(StoreError::NotFound) => Err(AccountError::SessionRevoked),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks the caller's current password, counting failures like failed logins so a
    /// stolen access token cannot be used to guess the password.
    async fn check_current_password(
        &self,
        cfg: &Config,
        caller: &Caller,
        field: &'static str,
        password: Option<String>,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let limits = login_limits(cfg);
        let key = format!("id:{}", caller.user.id);
        let ip = client.limit_key();
        if let Decision::Limited { retry_after } =
            self.login_limiter.check(&key, &ip, limits, now).await
        {
            return Err(login_limited(cfg, retry_after));
        }
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return Err(AccountError::Invalid(vec![FieldIssue::invalid(
                field,
                "is required",
            )]));
        };
        if password::verify_blocking(password, caller.user.password_hash.clone()).await? {
            self.login_limiter.succeeded(&key, &ip).await;
            Ok(())
        } else {
            self.login_limiter.failed(&key, &ip, limits, now).await;
            Err(AccountError::Invalid(vec![FieldIssue::invalid(
                field,
                "is not the account's password",
            )]))
        }
    }

    /// `POST /auth/password`: a new password; every other session of the user ends.
    pub async fn change_password(
        &self,
        cfg: &Config,
        caller: &Caller,
        current: Option<String>,
        new: Option<String>,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let new = new.unwrap_or_default();
        let mut issues = Vec::new();
        validate::new_password(
            "new_password",
            &new,
            cfg.accounts.password.min_length as usize,
            &mut issues,
        );
        if !issues.is_empty() {
            return Err(AccountError::Invalid(issues));
        }
        self.check_current_password(cfg, caller, "current_password", current, client, now)
            .await?;
        let hash = password::hash_blocking(new).await?;
        let patch = UserPatch {
            password_hash: Some(Some(hash)),
            ..UserPatch::default()
        };
        self.store.update_user(&caller.user.id, &patch, now).await?;
        self.revoke_sessions(&caller.user.id, caller.session_id(), now)
            .await?;
        self.void_pending_mfa(&caller.user.id).await?;
        Ok(())
    }

    /// `DELETE /auth/me`: with the password (when the account has one), the account and
    /// everything it owns are deleted.
    pub async fn delete_account(
        &self,
        cfg: &Config,
        caller: &Caller,
        password: Option<String>,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        if caller.user.password_hash.is_some() {
            self.check_current_password(cfg, caller, "password", password, client, now)
                .await?;
        }
        self.purge_user(&caller.user.id, now).await
    }

    /// Deletes the user and everything it owns (sessions, refresh tokens, API keys,
    /// one-time tokens) and evicts all of it from this replica's cache, so its credentials
    /// stop working here at once. Deleting a user that is already gone succeeds.
    async fn purge_user(&self, user_id: &str, now: UnixMillis) -> Result<(), AccountError> {
        let sessions = self.store.list_active_sessions(user_id, now).await?;
        let keys = self.store.list_api_keys(user_id).await?;
        let result = match self.store.delete_user(user_id).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        };
        let cache = self.auth.cache();
        cache.evict_user(user_id).await;
        for s in sessions {
            cache.evict_session(&s.id).await;
        }
        for k in keys {
            cache.evict_api_key(&k.key_hash).await;
        }
        result
    }

    /// Revokes the user's sessions (all, or all but `except`) and evicts them from this
    /// replica's cache, so their tokens stop working here at once.
    pub async fn revoke_sessions(
        &self,
        user_id: &str,
        except: Option<&str>,
        now: UnixMillis,
    ) -> Result<u64, AccountError> {
        let sessions = self.store.list_active_sessions(user_id, now).await?;
        let n = self
            .store
            .revoke_user_sessions(user_id, except, now)
            .await?;
        for s in sessions.iter().filter(|s| Some(s.id.as_str()) != except) {
            self.auth.cache().evict_session(&s.id).await;
        }
        Ok(n)
    }
}

fn login_limits(cfg: &Config) -> LoginLimits {
    LoginLimits {
        attempts: cfg.rate_limits.login.attempts,
        ip_attempts: cfg.rate_limits.login.ip_attempts,
        per: cfg.rate_limits.login.per,
    }
}

fn login_limited(cfg: &Config, retry_after: Duration) -> AccountError {
    AccountError::RateLimited(RateLimited {
        policy: "login",
        quota: cfg.rate_limits.login.attempts,
        window: cfg.rate_limits.login.per,
        retry_after,
    })
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// Role names: 1–64 of `[A-Za-z0-9_.:-]`, so they survive a comma-separated header.
pub fn valid_role(role: &str) -> bool {
    (1..=64).contains(&role.len())
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Whether a lone issue deserves its own code (`weak_password`, `passwords_do_not_match`).
pub fn single_issue_kind(issues: &[FieldIssue]) -> Option<IssueKind> {
    match issues {
        [one] => Some(one.kind),
        _ => None,
    }
}
