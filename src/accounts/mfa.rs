//! TOTP multi-factor authentication (RFC 6238; SPEC section 5, `/auth/mfa/...`): enrolment,
//! confirmation with recovery codes, the second step of a sign-in, and disabling.
//!
//! Owns: the MFA state kept in [`User::mfa`] (an opaque blob to the store: this module's
//! JSON), the code rules (HMAC-SHA1, 6 digits, 30 s steps, one step of skew either way;
//! 10 single-use recovery codes stored as SHA-256), the sign-in gate every first factor
//! goes through ([`Accounts::sign_in`]), and replay protection.
//!
//! Replay protection is the store's, not a read-modify-write of the state: a used code
//! leaves a marker one-time token ([`OneTimeKind::MfaUsedCode`]) whose hash is derived
//! from the user, the secret and the time step (or the recovery code), and the store's
//! unique insert lets exactly one of two concurrent uses win. Changes of the state itself
//! go through the store's compare and swap ([`crate::store::Store::swap_user_mfa`]), so a
//! recovery code being struck off cannot resurrect MFA a concurrent DELETE turned off.
//!
//! Failed codes on `/auth/mfa/verify` and `DELETE /auth/mfa/totp` count toward the login
//! limit under the account key `mfa:<user id>` (per IP), which a correct password does
//! not reset: knowing the password must not buy more guesses at the second factor.
//!
//! Must not touch: HTTP (see `endpoints`), the clock (callers pass `now`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP};

use super::validate::FieldIssue;
use super::{
    AccountError, Accounts, Caller, ClientInfo, Issued, login_limited, login_limits, ms,
    new_secret, secret_hash,
};
use crate::config::Config;
use crate::ratelimit::Decision;
use crate::store::{OneTimeKind, OneTimeToken, StoreError, TokenHash, UnixMillis, User};

/// Seconds per TOTP time step (RFC 6238 section 4: the recommended default).
pub const PERIOD_SECS: u64 = 30;
/// Digits of a TOTP code.
pub const DIGITS: usize = 6;
/// Time steps accepted either side of the current one (RFC 6238 section 5.2: clock drift and
/// typing time).
pub const SKEW_STEPS: u64 = 1;
/// Bytes of a TOTP secret: 160 bits, RFC 4226 section 4's recommendation.
pub const SECRET_BYTES: usize = 20;
/// Recovery codes handed out at confirmation.
pub const RECOVERY_CODES: usize = 10;
/// How long an `mfa_token` (between the first factor and the code) works.
pub const MFA_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Characters of recovery codes: lowercase letters and digits without `i`, `l`, `o`, `u`
/// (Crockford's base32), so a code read aloud or typed from paper is not misread. 32 of
/// them: one random byte masked to 5 bits picks one uniformly.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters of a recovery code: 16 x 5 = 80 random bits, enough that the fast SHA-256
/// stored for it cannot be searched back to the code.
const RECOVERY_LEN: usize = 16;
/// How long the marker of a used recovery code is kept: far beyond any enrolment (the code
/// is also struck off the state; the marker is what makes two concurrent uses safe).
const RECOVERY_MARKER_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Version of the stored state's layout.
const STATE_VERSION: u8 = 1;

/// Why the MFA state or a code could not be handled (not a wrong code: that is a normal
/// answer of the functions here).
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    /// The stored state is not this module's JSON, or its secret is not base32 of the
    /// right length: the account cannot be signed in until an operator looks at it.
    #[error("the stored MFA state is unreadable: {0}")]
    CorruptState(String),
    /// Encoding the state failed.
    #[error("cannot encode the MFA state: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The TOTP state of an account, as stored (JSON) in [`User::mfa`].
// Unknown fields are ignored, not refused: a later binary may add one during a rolling
// upgrade without older replicas failing every sign-in; an incompatible layout bumps `v`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaState {
    /// Layout version.
    v: u8,
    /// The shared secret, base32 (RFC 4648, no padding), as in the `otpauth://` URI.
    secret: String,
    /// False between enrolment and confirmation: the secret exists but is not required.
    confirmed: bool,
    /// SHA-256 (hex) of each unused recovery code.
    recovery: Vec<String>,
}

// Hand-written: the secret never reaches a log.
impl std::fmt::Debug for MfaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaState")
            .field("v", &self.v)
            .field("secret", &"<redacted>")
            .field("confirmed", &self.confirmed)
            .field("recovery_codes_left", &self.recovery.len())
            .finish()
    }
}

impl MfaState {
    /// Reads the stored blob; `None` when the account has no MFA state at all.
    pub fn decode(blob: Option<&[u8]>) -> Result<Option<MfaState>, MfaError> {
        let Some(bytes) = blob else {
            return Ok(None);
        };
        let state: MfaState = serde_json::from_slice(bytes)
            .map_err(|e| MfaError::CorruptState(format!("not the expected JSON: {e}")))?;
        if state.v != STATE_VERSION {
            return Err(MfaError::CorruptState(format!(
                "unknown layout version {}",
                state.v
            )));
        }
        state.totp()?;
        Ok(Some(state))
    }

    /// The blob to store.
    pub fn encode(&self) -> Result<Vec<u8>, MfaError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// A pending enrolment with this secret.
    fn pending(secret: &[u8]) -> MfaState {
        MfaState {
            v: STATE_VERSION,
            secret: base32_encode(secret),
            confirmed: false,
            recovery: Vec::new(),
        }
    }

    /// Whether sign-ins need a code.
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// How many recovery codes are left.
    pub fn recovery_codes_left(&self) -> usize {
        self.recovery.len()
    }

    fn secret_bytes(&self) -> Result<Vec<u8>, MfaError> {
        totp_rs::Secret::Encoded(self.secret.clone())
            .to_bytes()
            .map_err(|e| MfaError::CorruptState(format!("secret: {e:?}")))
    }

    fn totp(&self) -> Result<TOTP, MfaError> {
        TOTP::new(
            Algorithm::SHA1,
            DIGITS,
            // Skew is applied by `matching_steps`, which needs the step that matched.
            0,
            PERIOD_SECS,
            self.secret_bytes()?,
        )
        .map_err(|e| MfaError::CorruptState(format!("secret: {e}")))
    }

    /// The time steps within the skew of `now` whose code is `code` (compared in constant
    /// time): normally none or one.
    fn matching_steps(&self, code: &str, now: UnixMillis) -> Result<Vec<u64>, MfaError> {
        let totp = self.totp()?;
        let current = u64::try_from(now.div_euclid(1000)).unwrap_or(0) / PERIOD_SECS;
        let first = current.saturating_sub(SKEW_STEPS);
        Ok((first..=current.saturating_add(SKEW_STEPS))
            .filter(|step| {
                let expected = totp.generate(step * PERIOD_SECS);
                constant_time_eq(expected.as_bytes(), code.as_bytes())
            })
            .collect())
    }
}

/// Whether the user's sign-ins need a second factor, for display (`GET /auth/me`
/// `mfa_enabled`). An unreadable state counts as enabled, as the sign-in gate refuses it.
pub fn is_enabled(user: &User) -> bool {
    match MfaState::decode(user.mfa.as_deref()) {
        Ok(state) => state.is_some_and(|s| s.confirmed),
        Err(_) => true,
    }
}

fn base32_encode(bytes: &[u8]) -> String {
    match totp_rs::Secret::Raw(bytes.to_vec()).to_encoded() {
        totp_rs::Secret::Encoded(s) => s,
        // `to_encoded` of a raw secret is always `Encoded`.
        totp_rs::Secret::Raw(_) => String::new(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A code as typed: six digits are a TOTP code, anything else is tried as a recovery code
/// (spaces and dashes ignored, case folded).
#[derive(Clone, PartialEq, Eq)]
enum Code {
    Totp(String),
    Recovery(String),
}

impl Code {
    fn parse(input: &str) -> Option<Code> {
        let compact: String = input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        if compact.len() == DIGITS && compact.bytes().all(|b| b.is_ascii_digit()) {
            return Some(Code::Totp(compact));
        }
        let lower = compact.to_ascii_lowercase();
        (lower.len() == RECOVERY_LEN && lower.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)))
            .then_some(Code::Recovery(lower))
    }
}

/// Ten new recovery codes: the plain codes (shown once, `xxxx-xxxx-xxxx-xxxx`) and the
/// hashes to store.
fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    (0..RECOVERY_CODES)
        .map(|_| {
            let random: [u8; RECOVERY_LEN] = rand::random();
            let compact: String = random
                .iter()
                .map(|b| char::from(RECOVERY_ALPHABET[usize::from(b & 31)]))
                .collect();
            let hash = recovery_hash(&compact);
            let shown = compact
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-");
            (shown, hash)
        })
        .unzip()
}

/// The stored form of a (normalised) recovery code.
fn recovery_hash(compact: &str) -> String {
    crate::store::to_hex(&secret_hash(compact))
}

/// The marker of a used TOTP step of one secret of one user.
fn step_marker(user_id: &str, secret: &str, step: u64) -> TokenHash {
    let mut h = Sha256::new();
    h.update(b"gatehouse mfa used totp step\0");
    h.update(user_id.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    h.update(b"\0");
    h.update(step.to_be_bytes());
    h.finalize().into()
}

/// The marker of a used recovery code of one user.
fn recovery_marker(user_id: &str, code_hash: &str) -> TokenHash {
    let mut h = Sha256::new();
    h.update(b"gatehouse mfa used recovery code\0");
    h.update(user_id.as_bytes());
    h.update(b"\0");
    h.update(code_hash.as_bytes());
    h.finalize().into()
}

/// The `otpauth://` URI authenticator apps read (Google Authenticator's Key Uri Format):
/// label `issuer:account`, the secret, and the parameters spelled out although they are
/// the defaults.
pub fn otpauth_uri(issuer: &str, account: &str, secret_base32: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // Everything but RFC 3986's unreserved characters (so `:` in a name cannot split the
    // label, and `@` is `%40` as the Key Uri Format's examples have it).
    const LABEL: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let enc = |s: &str| utf8_percent_encode(s, LABEL).to_string();
    format!(
        "otpauth://totp/{}:{}?secret={secret_base32}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={PERIOD_SECS}",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

/// The issuer name shown in authenticator apps: the host of `tokens.issuer`, or
/// "Gatehouse" when it has none.
pub fn issuer_label(cfg: &Config) -> String {
    url::Url::parse(&cfg.tokens.issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "Gatehouse".to_owned())
}

/// What the client asked for at the first factor, carried through the MFA step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInRequest {
    /// `"session": "cookie"`: cookies instead of tokens.
    #[serde(default)]
    pub cookie_session: bool,
    /// A magic link's `redirect_to`.
    #[serde(default)]
    pub redirect_to: Option<String>,
}

/// What a first factor (password, magic link, OAuth) led to. No `Debug`: it holds tokens.
pub enum SignIn {
    /// A session: the account has no second factor.
    Issued(Box<Issued>),
    /// The account has MFA: `POST /auth/mfa/verify` with this token and a code finishes
    /// the sign-in (401 `mfa_required`).
    MfaRequired {
        /// The plain `mfa_token` (only its hash is stored).
        mfa_token: String,
    },
}

/// A finished second step: the session and what was asked for at the first factor.
pub struct MfaVerified {
    pub issued: Issued,
    pub request: SignInRequest,
}

/// A new enrolment: the secret (base32, for typing it in) and the URI (for a QR code).
pub struct TotpEnrollment {
    pub secret: String,
    pub otpauth_uri: String,
}

/// The stored mfa_token's flow data.
#[derive(Serialize, Deserialize)]
struct PendingPayload {
    amr: Vec<String>,
    #[serde(flatten)]
    request: SignInRequest,
}

/// What accepted a code.
enum Accepted {
    Totp,
    Recovery { hash: String },
}

fn limiter_key(user_id: &str) -> String {
    format!("mfa:{user_id}")
}

fn code_issue(message: &'static str) -> AccountError {
    AccountError::Invalid(vec![FieldIssue::invalid("code", message)])
}

impl Accounts {
    /// The gate every first factor passes (password, magic link, and OAuth sign-in): an
    /// account with confirmed MFA gets an `mfa_token` (5 minutes, 256 bits, stored hashed,
    /// single-use) instead of a session; any other account gets its session now. An
    /// unreadable MFA state fails closed.
    pub async fn sign_in(
        &self,
        cfg: &Config,
        user: User,
        amr: Vec<String>,
        request: SignInRequest,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<SignIn, AccountError> {
        let state = MfaState::decode(user.mfa.as_deref())?;
        if !state.is_some_and(|s| s.confirmed) {
            self.notify_new_sign_in(cfg, &user, client, now).await;
            let issued = self.start_session(cfg, user, amr, client, now).await?;
            return Ok(SignIn::Issued(Box::new(issued)));
        }
        // Older pending tokens are not voided: two devices may sign in at once, and each
        // token dies within minutes anyway.
        let mfa_token = new_secret();
        let payload = serde_json::to_value(PendingPayload { amr, request })
            .map_err(|e| AccountError::Mfa(MfaError::Encode(e)))?;
        self.store
            .create_one_time_token(&OneTimeToken {
                token_hash: secret_hash(&mfa_token),
                kind: OneTimeKind::MfaPending,
                user_id: Some(user.id.clone()),
                email: None,
                payload,
                created_at: now,
                expires_at: now.saturating_add(ms(MFA_TOKEN_TTL)),
            })
            .await?;
        Ok(SignIn::MfaRequired { mfa_token })
    }

    /// `POST /auth/mfa/verify {mfa_token, code}`: the second step of a sign-in. A wrong code
    /// counts toward the login limit and leaves the `mfa_token` usable; the right one uses
    /// it up and starts the session with `mfa` added to the first factor's `amr`.
    pub async fn verify_mfa(
        &self,
        cfg: &Config,
        mfa_token: &str,
        code: &str,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<MfaVerified, AccountError> {
        let token_hash = secret_hash(mfa_token);
        let pending = self
            .store
            .get_one_time_token(&token_hash, OneTimeKind::MfaPending, now)
            .await?
            .ok_or(AccountError::InvalidMfaToken)?;
        let user_id = pending.user_id.ok_or(AccountError::InvalidMfaToken)?;
        let limits = login_limits(cfg);
        let key = limiter_key(&user_id);
        let ip = client.limit_key();
        if let Decision::Limited { retry_after } =
            self.login_limiter.check(&key, &ip, limits, now).await
        {
            return Err(login_limited(cfg, retry_after));
        }
        let user = self
            .store
            .get_user(&user_id)
            .await?
            .ok_or(AccountError::InvalidMfaToken)?;
        if user.disabled {
            return Err(AccountError::Disabled);
        }
        // MFA turned off meanwhile: the token no longer leads anywhere (sign in again).
        let state = MfaState::decode(user.mfa.as_deref())?
            .filter(|s| s.confirmed)
            .ok_or(AccountError::InvalidMfaToken)?;
        let Some(accepted) = self.accept_code(&user.id, &state, code, true, now).await? else {
            self.login_limiter.failed(&key, &ip, limits, now).await;
            return Err(AccountError::InvalidCredentials);
        };
        // The code is spent; now the token. (A concurrent verify with another valid code may
        // have used the token first: then this code is spent for nothing, which is safe.)
        let used = self
            .store
            .consume_one_time_token(&token_hash, OneTimeKind::MfaPending, now)
            .await?
            .ok_or(AccountError::InvalidMfaToken)?;
        self.login_limiter.succeeded(&key, &ip).await;
        let payload: PendingPayload =
            serde_json::from_value(used.payload).map_err(|_| AccountError::InvalidMfaToken)?;
        let mut amr = payload.amr;
        if !amr.iter().any(|m| m == "mfa") {
            amr.push("mfa".into());
        }
        let user = match accepted {
            Accepted::Totp => user,
            Accepted::Recovery { hash } => self.strike_recovery_code(user, &hash, now).await?,
        };
        self.notify_new_sign_in(cfg, &user, client, now).await;
        let issued = self.start_session(cfg, user, amr, client, now).await?;
        Ok(MfaVerified {
            issued,
            request: payload.request,
        })
    }

    /// `POST /auth/mfa/totp`: a new secret, pending until confirmed with a code. While MFA
    /// is enabled this is refused (disable it first); a pending enrolment is replaced.
    pub async fn enroll_totp(
        &self,
        cfg: &Config,
        caller: &Caller,
        now: UnixMillis,
    ) -> Result<TotpEnrollment, AccountError> {
        let user = &caller.user;
        if MfaState::decode(user.mfa.as_deref())?.is_some_and(|s| s.confirmed) {
            return Err(AccountError::MfaAlreadyEnabled);
        }
        let secret: [u8; SECRET_BYTES] = rand::random();
        let state = MfaState::pending(&secret);
        let blob = state.encode()?;
        if !self
            .store
            .swap_user_mfa(&user.id, user.mfa.as_deref(), Some(&blob), now)
            .await
            .map_err(not_found_is_revoked)?
        {
            return Err(AccountError::MfaState(
                "the MFA state changed meanwhile; try again",
            ));
        }
        self.auth.cache().evict_user(&user.id).await;
        let account = user
            .email
            .clone()
            .or_else(|| user.username.clone())
            .unwrap_or_else(|| user.id.clone());
        Ok(TotpEnrollment {
            otpauth_uri: otpauth_uri(&issuer_label(cfg), &account, &state.secret),
            secret: state.secret,
        })
    }

    /// `POST /auth/mfa/totp/confirm {code}`: a code of the pending secret turns MFA on and
    /// returns the recovery codes (shown this once; only their hashes are kept). The code
    /// is spent: it cannot also finish a sign-in.
    pub async fn confirm_totp(
        &self,
        caller: &Caller,
        code: &str,
        now: UnixMillis,
    ) -> Result<Vec<String>, AccountError> {
        let user = &caller.user;
        let state = match MfaState::decode(user.mfa.as_deref())? {
            Some(s) if s.confirmed => return Err(AccountError::MfaAlreadyEnabled),
            Some(s) => s,
            None => {
                return Err(AccountError::MfaState(
                    "no TOTP enrolment is pending: POST /auth/mfa/totp first",
                ));
            }
        };
        if self
            .accept_code(&user.id, &state, code, false, now)
            .await?
            .is_none()
        {
            return Err(code_issue("is not a valid code of the new secret"));
        }
        let (plain, hashes) = new_recovery_codes();
        let confirmed = MfaState {
            confirmed: true,
            recovery: hashes,
            ..state
        };
        let blob = confirmed.encode()?;
        if !self
            .store
            .swap_user_mfa(&user.id, user.mfa.as_deref(), Some(&blob), now)
            .await
            .map_err(not_found_is_revoked)?
        {
            return Err(AccountError::MfaState(
                "the TOTP enrolment changed meanwhile; enrol again",
            ));
        }
        self.auth.cache().evict_user(&user.id).await;
        tracing::info!(target: "gatehouse::accounts", user_id = %user.id, "TOTP MFA enabled");
        Ok(plain)
    }

    /// `DELETE /auth/mfa/totp {code}`: with a valid TOTP or recovery code, MFA is turned
    /// off (a pending enrolment is simply dropped). Wrong codes count toward the login
    /// limit, so a stolen access token cannot be used to guess one.
    pub async fn disable_totp(
        &self,
        cfg: &Config,
        caller: &Caller,
        code: Option<String>,
        client: &ClientInfo,
        now: UnixMillis,
    ) -> Result<(), AccountError> {
        let user = &caller.user;
        let state = match MfaState::decode(user.mfa.as_deref())? {
            None => return Err(AccountError::MfaState("TOTP MFA is not enabled")),
            Some(s) if !s.confirmed => {
                self.clear_mfa(user, now).await?;
                return Ok(());
            }
            Some(s) => s,
        };
        let limits = login_limits(cfg);
        let key = limiter_key(&user.id);
        let ip = client.limit_key();
        if let Decision::Limited { retry_after } =
            self.login_limiter.check(&key, &ip, limits, now).await
        {
            return Err(login_limited(cfg, retry_after));
        }
        let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
            return Err(code_issue("is required"));
        };
        if self
            .accept_code(&user.id, &state, &code, true, now)
            .await?
            .is_none()
        {
            self.login_limiter.failed(&key, &ip, limits, now).await;
            return Err(code_issue("is not a valid TOTP or recovery code"));
        }
        self.login_limiter.succeeded(&key, &ip).await;
        self.clear_mfa(user, now).await?;
        tracing::info!(target: "gatehouse::accounts", user_id = %user.id, "TOTP MFA disabled");
        Ok(())
    }

    /// Voids the user's `mfa_token`s: a password change or reset ends sign-ins that got
    /// past the old password.
    pub(super) async fn void_pending_mfa(&self, user_id: &str) -> Result<(), AccountError> {
        self.store
            .delete_one_time_tokens(user_id, OneTimeKind::MfaPending)
            .await?;
        Ok(())
    }

    /// Removes the MFA state, unless another enrolment replaced the secret meanwhile (a
    /// struck-off recovery code is not such a change).
    async fn clear_mfa(&self, user: &User, now: UnixMillis) -> Result<(), AccountError> {
        let secret = MfaState::decode(user.mfa.as_deref())?.map(|s| s.secret);
        let mut current = user.mfa.clone();
        for _ in 0..8 {
            if self
                .store
                .swap_user_mfa(&user.id, current.as_deref(), None, now)
                .await
                .map_err(not_found_is_revoked)?
            {
                self.auth.cache().evict_user(&user.id).await;
                return Ok(());
            }
            let fresh = self
                .store
                .get_user(&user.id)
                .await?
                .ok_or(AccountError::SessionRevoked)?;
            let fresh_secret = MfaState::decode(fresh.mfa.as_deref())?.map(|s| s.secret);
            if fresh.mfa.is_none() {
                return Ok(());
            }
            if fresh_secret != secret {
                return Err(AccountError::MfaState(
                    "the MFA state changed meanwhile; try again",
                ));
            }
            current = fresh.mfa;
        }
        Err(AccountError::MfaState(
            "the MFA state keeps changing; try again",
        ))
    }

    /// Checks a code against the state and, when it matches, spends it (the marker
    /// insert). `None`: wrong, not accepted here, or already used.
    async fn accept_code(
        &self,
        user_id: &str,
        state: &MfaState,
        input: &str,
        allow_recovery: bool,
        now: UnixMillis,
    ) -> Result<Option<Accepted>, AccountError> {
        match Code::parse(input) {
            None => Ok(None),
            Some(Code::Totp(code)) => {
                for step in state.matching_steps(&code, now)? {
                    // The step cannot match again once it is out of the skew window, so
                    // its marker needs to outlive that window only.
                    let dies = (step + SKEW_STEPS + 2) * PERIOD_SECS * 1000;
                    let marker = step_marker(user_id, &state.secret, step);
                    let expires_at = i64::try_from(dies).unwrap_or(i64::MAX);
                    if self.claim(user_id, marker, expires_at, now).await? {
                        return Ok(Some(Accepted::Totp));
                    }
                }
                Ok(None)
            }
            Some(Code::Recovery(_)) if !allow_recovery => Ok(None),
            Some(Code::Recovery(compact)) => {
                let hash = recovery_hash(&compact);
                if !state.recovery.iter().any(|h| h == &hash) {
                    return Ok(None);
                }
                let marker = recovery_marker(user_id, &hash);
                let expires_at = now.saturating_add(ms(RECOVERY_MARKER_TTL));
                Ok(self
                    .claim(user_id, marker, expires_at, now)
                    .await?
                    .then_some(Accepted::Recovery { hash }))
            }
        }
    }

    /// Records a used code; false when it had been used already (the store's unique
    /// insert: of concurrent claims exactly one is true).
    async fn claim(
        &self,
        user_id: &str,
        marker: TokenHash,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<bool, AccountError> {
        let result = self
            .store
            .create_one_time_token(&OneTimeToken {
                token_hash: marker,
                kind: OneTimeKind::MfaUsedCode,
                user_id: Some(user_id.to_owned()),
                email: None,
                payload: json!({}),
                created_at: now,
                expires_at,
            })
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(StoreError::NotFound) => Err(AccountError::SessionRevoked),
            Err(e) => Err(e.into()),
        }
    }

    /// Strikes a used recovery code off the stored list (its marker already keeps it from
    /// working again; this keeps the count of codes left true). Retries when a concurrent
    /// change won the compare and swap; gives up quietly when MFA was turned off.
    async fn strike_recovery_code(
        &self,
        mut user: User,
        hash: &str,
        now: UnixMillis,
    ) -> Result<User, AccountError> {
        for _ in 0..8 {
            let Some(mut state) = MfaState::decode(user.mfa.as_deref())? else {
                return Ok(user);
            };
            if !state.recovery.iter().any(|h| h == hash) {
                return Ok(user);
            }
            state.recovery.retain(|h| h != hash);
            let left = state.recovery.len();
            let blob = state.encode()?;
            if self
                .store
                .swap_user_mfa(&user.id, user.mfa.as_deref(), Some(&blob), now)
                .await?
            {
                self.auth.cache().evict_user(&user.id).await;
                tracing::info!(target: "gatehouse::accounts", user_id = %user.id, recovery_codes_left = left, "MFA recovery code used");
                user.mfa = Some(blob);
                return Ok(user);
            }
            user = self
                .store
                .get_user(&user.id)
                .await?
                .ok_or(AccountError::SessionRevoked)?;
        }
        tracing::warn!(target: "gatehouse::accounts", user_id = %user.id, "a used recovery code could not be struck off (its marker still refuses it)");
        Ok(user)
    }
}

/// A caller whose account vanished between authentication and the write.
fn not_found_is_revoked(e: StoreError) -> AccountError {
    match e {
        StoreError::NotFound => AccountError::SessionRevoked,
        other => other.into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (the 8-digit values; 6 digits are their last six).
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    fn rfc_state() -> MfaState {
        MfaState {
            confirmed: true,
            ..MfaState::pending(RFC_SECRET)
        }
    }

    #[test]
    fn codes_match_rfc_6238_test_vectors() {
        let state = rfc_state();
        for (t, code8) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            let now = i64::try_from(t * 1000).unwrap();
            let code6 = &code8[2..];
            let steps = state.matching_steps(code6, now).unwrap();
            assert_eq!(steps, vec![t / PERIOD_SECS], "t={t}");
        }
    }

    #[test]
    fn one_step_of_skew_either_way_and_no_more() {
        let state = rfc_state();
        let totp = state.totp().unwrap();
        let now: i64 = 1_700_000_015_000; // the middle of a step
        let step = 1_700_000_015 / PERIOD_SECS;
        for (offset, accepted) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let s = step.checked_add_signed(offset).unwrap();
            let code = totp.generate(s * PERIOD_SECS);
            let got = state.matching_steps(&code, now).unwrap();
            assert_eq!(got.contains(&s), accepted, "offset {offset}");
        }
        assert!(state.matching_steps("12345", now).unwrap().is_empty());
        assert!(state.matching_steps("", now).unwrap().is_empty());
    }

    #[test]
    fn state_round_trips_and_refuses_garbage() {
        let secret: [u8; SECRET_BYTES] = rand::random();
        let state = MfaState::pending(&secret);
        assert_eq!(state.secret.len(), 32, "160 bits in base32");
        let blob = state.encode().unwrap();
        let back = MfaState::decode(Some(&blob)).unwrap().unwrap();
        assert_eq!(back, state);
        assert_eq!(back.secret_bytes().unwrap(), secret);
        assert!(!back.confirmed());
        assert_eq!(MfaState::decode(None).unwrap(), None);
        for bad in [
            &b"not json"[..],
            br#"{"v":2,"secret":"GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ","confirmed":true,"recovery":[]}"#,
            br#"{"v":1,"secret":"!!","confirmed":true,"recovery":[]}"#,
            br#"{"v":1,"secret":"GEZDGNBV","confirmed":true,"recovery":[]}"#,
        ] {
            assert!(
                matches!(MfaState::decode(Some(bad)), Err(MfaError::CorruptState(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn enabled_only_when_confirmed_and_fails_closed() {
        let mut user = crate::store::User {
            id: "u".into(),
            email: None,
            username: None,
            name: None,
            external_id: None,
            email_verified: false,
            roles: vec![],
            disabled: false,
            password_hash: None,
            mfa: None,
            created_at: 0,
            updated_at: 0,
        };
        assert!(!is_enabled(&user));
        user.mfa = Some(MfaState::pending(RFC_SECRET).encode().unwrap());
        assert!(!is_enabled(&user));
        user.mfa = Some(rfc_state().encode().unwrap());
        assert!(is_enabled(&user));
        user.mfa = Some(b"garbage".to_vec());
        assert!(is_enabled(&user));
    }

    #[test]
    fn recovery_codes_are_random_formatted_and_hashed() {
        let (plain, hashes) = new_recovery_codes();
        assert_eq!(
            (plain.len(), hashes.len()),
            (RECOVERY_CODES, RECOVERY_CODES)
        );
        let unique: std::collections::HashSet<_> = plain.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES);
        for (code, hash) in plain.iter().zip(&hashes) {
            assert_eq!(code.len(), 19, "{code}");
            assert_eq!(code.matches('-').count(), 3, "{code}");
            assert!(!hash.contains(code.as_str()));
            // Typed back in any case, with or without dashes, it is the same code.
            for typed in [code.clone(), code.to_uppercase(), code.replace('-', " ")] {
                match Code::parse(&typed) {
                    Some(Code::Recovery(c)) => assert_eq!(&recovery_hash(&c), hash),
                    _ => panic!("{typed} not parsed as a recovery code"),
                }
            }
        }
    }

    #[test]
    fn code_shapes() {
        assert!(matches!(Code::parse(" 123 456 "), Some(Code::Totp(c)) if c == "123456"));
        assert!(Code::parse("12345").is_none());
        assert!(Code::parse("1234567").is_none());
        assert!(Code::parse("").is_none());
        assert!(
            Code::parse("abcd-efgh-jkmn-pqrI").is_none(),
            "i is not in the alphabet"
        );
        assert!(Code::parse("ﾟ１２３４５６").is_none());
    }

    #[test]
    fn markers_differ_by_user_secret_step_and_code() {
        let a = step_marker("u1", "S", 1);
        assert_eq!(a, step_marker("u1", "S", 1));
        assert_ne!(a, step_marker("u2", "S", 1));
        assert_ne!(a, step_marker("u1", "T", 1));
        assert_ne!(a, step_marker("u1", "S", 2));
        assert_ne!(recovery_marker("u1", "h"), recovery_marker("u2", "h"));
    }

    #[test]
    fn otpauth_uri_shape() {
        let uri = otpauth_uri("gatehouse.test", "ada@example.com", "JBSWY3DPEHPK3PXP");
        assert_eq!(
            uri,
            "otpauth://totp/gatehouse.test:ada%40example.com?secret=JBSWY3DPEHPK3PXP&issuer=gatehouse.test&algorithm=SHA1&digits=6&period=30"
        );
        let cfg = crate::config::parse(
            "tokens: { issuer: \"https://auth.example.com:8443/x\" }\n",
            std::path::Path::new("t.yaml"),
            &|_| None,
        )
        .unwrap();
        assert_eq!(issuer_label(&cfg), "auth.example.com");
    }

    #[test]
    fn state_debug_hides_the_secret() {
        let state = rfc_state();
        let shown = format!("{state:?}");
        assert!(!shown.contains(&state.secret), "{shown}");
    }
}

/// The service on an in-memory store with a fixed clock: what the integration tests cannot
/// pin down (the previous step, the edges of the window, races with a disable).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod service_tests {
    use std::sync::Arc;

    use super::*;
    use crate::accounts::{LoginId, NewUser};
    use crate::principal::{AuthMethod, Principal};
    use crate::store::{SqliteStore, Store, UserPatch};

    /// The middle of a time step.
    const T: UnixMillis = 1_700_000_015_000;
    const STEP: u64 = 1_700_000_015 / PERIOD_SECS;
    const PASSWORD: &str = "correct-horse-battery";

    fn client() -> ClientInfo {
        ClientInfo {
            ip: "127.0.0.1".parse().unwrap(),
            user_agent: None,
        }
    }

    async fn setup() -> (Accounts, Config, User) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
        let cfg = crate::config::parse(
            "tokens: { issuer: http://gatehouse.test }\n",
            std::path::Path::new("t.yaml"),
            &|_| None,
        )
        .unwrap();
        let accounts = Accounts::start(store, &cfg, T).await.unwrap();
        let user = accounts
            .create_user(
                &cfg,
                NewUser {
                    email: Some("ada@example.com".into()),
                    password: PASSWORD.into(),
                    ..NewUser::default()
                },
                T,
            )
            .await
            .unwrap();
        (accounts, cfg, user)
    }

    async fn caller(accounts: &Accounts, id: &str) -> Caller {
        let user = accounts.user_by_id(id).await.unwrap();
        let principal = Principal {
            method: AuthMethod::Jwt,
            user_id: Some(user.id.clone()),
            email: user.email.clone(),
            username: None,
            roles: user.roles.clone(),
            scopes: None,
            key_id: None,
            session_id: None,
            rendered: Default::default(),
        };
        Caller {
            user,
            principal: Arc::new(principal),
        }
    }

    fn code_at(secret: &str, step: u64) -> String {
        let bytes = totp_rs::Secret::Encoded(secret.into()).to_bytes().unwrap();
        TOTP::new(Algorithm::SHA1, DIGITS, 0, PERIOD_SECS, bytes)
            .unwrap()
            .generate(step * PERIOD_SECS)
    }

    /// Enrols and confirms at `T` with the current step's code; the recovery codes.
    async fn enable(accounts: &Accounts, cfg: &Config, user: &User) -> (String, Vec<String>) {
        let me = caller(accounts, &user.id).await;
        let enrollment = accounts.enroll_totp(cfg, &me, T).await.unwrap();
        let me = caller(accounts, &user.id).await;
        let codes = accounts
            .confirm_totp(&me, &code_at(&enrollment.secret, STEP), T)
            .await
            .unwrap();
        (enrollment.secret, codes)
    }

    async fn pending_token(accounts: &Accounts, cfg: &Config) -> String {
        let outcome = accounts
            .login(
                cfg,
                LoginId::Email("ada@example.com".into()),
                PASSWORD.into(),
                SignInRequest::default(),
                &client(),
                T,
            )
            .await
            .unwrap();
        match outcome {
            SignIn::MfaRequired { mfa_token } => mfa_token,
            SignIn::Issued(_) => panic!("signed in without the second factor"),
        }
    }

    async fn verify(
        accounts: &Accounts,
        cfg: &Config,
        token: &str,
        code: &str,
    ) -> Result<MfaVerified, AccountError> {
        accounts.verify_mfa(cfg, token, code, &client(), T).await
    }

    #[tokio::test]
    async fn each_step_in_the_window_is_accepted_once() {
        let (accounts, cfg, user) = setup().await;
        let (secret, _) = enable(&accounts, &cfg, &user).await;
        let token = pending_token(&accounts, &cfg).await;
        // Outside the window, and the step spent on confirmation.
        for step in [STEP - 2, STEP + 2, STEP] {
            let got = verify(&accounts, &cfg, &token, &code_at(&secret, step)).await;
            assert!(
                matches!(got, Err(AccountError::InvalidCredentials)),
                "step {step}"
            );
        }
        // The previous and the next step, once each; wrong codes did not burn the token.
        let mut token = token;
        let mut spent = Vec::new();
        for step in [STEP - 1, STEP + 1] {
            let ok = verify(&accounts, &cfg, &token, &code_at(&secret, step))
                .await
                .unwrap();
            assert_eq!(ok.issued.session.amr, ["pwd", "mfa"]);
            spent.push(token);
            token = pending_token(&accounts, &cfg).await;
            let again = verify(&accounts, &cfg, &token, &code_at(&secret, step)).await;
            assert!(matches!(again, Err(AccountError::InvalidCredentials)));
        }
        for used in spent {
            let got = verify(&accounts, &cfg, &used, &code_at(&secret, STEP)).await;
            assert!(matches!(got, Err(AccountError::InvalidMfaToken)));
        }
    }

    #[tokio::test]
    async fn a_used_recovery_code_is_struck_off_and_cannot_revive_disabled_mfa() {
        let (accounts, cfg, user) = setup().await;
        let (_, codes) = enable(&accounts, &cfg, &user).await;
        let token = pending_token(&accounts, &cfg).await;
        let ok = verify(&accounts, &cfg, &token, &codes[0]).await.unwrap();
        let left = |u: &User| {
            MfaState::decode(u.mfa.as_deref())
                .unwrap()
                .map(|s| s.recovery_codes_left())
        };
        assert_eq!(left(&ok.issued.user), Some(9));
        assert_eq!(left(&accounts.user_by_id(&user.id).await.unwrap()), Some(9));

        // A recovery use that read the state before a DELETE, striking its code off after
        // it: the compare and swap sees MFA gone and leaves it gone.
        let before = accounts.user_by_id(&user.id).await.unwrap();
        let me = caller(&accounts, &user.id).await;
        accounts
            .disable_totp(&cfg, &me, Some(codes[1].clone()), &client(), T)
            .await
            .unwrap();
        let hash = match Code::parse(&codes[2]) {
            Some(Code::Recovery(c)) => recovery_hash(&c),
            _ => panic!("not a recovery code"),
        };
        accounts
            .strike_recovery_code(before, &hash, T)
            .await
            .unwrap();
        let after = accounts.user_by_id(&user.id).await.unwrap();
        assert_eq!(after.mfa, None);
        assert!(!is_enabled(&after));
    }

    #[tokio::test]
    async fn an_unreadable_state_fails_closed() {
        let (accounts, cfg, user) = setup().await;
        let patch = UserPatch {
            mfa: Some(Some(b"garbage".to_vec())),
            ..UserPatch::default()
        };
        accounts
            .store()
            .update_user(&user.id, &patch, T)
            .await
            .unwrap();
        let outcome = accounts
            .login(
                &cfg,
                LoginId::Email("ada@example.com".into()),
                PASSWORD.into(),
                SignInRequest::default(),
                &client(),
                T,
            )
            .await;
        assert!(matches!(outcome, Err(AccountError::Mfa(_))));
    }

    #[tokio::test]
    async fn pending_enrolment_is_not_required_and_is_replaced() {
        let (accounts, cfg, user) = setup().await;
        let me = caller(&accounts, &user.id).await;
        let first = accounts.enroll_totp(&cfg, &me, T).await.unwrap();
        let me = caller(&accounts, &user.id).await;
        let second = accounts.enroll_totp(&cfg, &me, T).await.unwrap();
        assert_ne!(first.secret, second.secret);
        // A code of the replaced secret does not confirm.
        let me = caller(&accounts, &user.id).await;
        let stale = accounts
            .confirm_totp(&me, &code_at(&first.secret, STEP), T)
            .await;
        assert!(matches!(stale, Err(AccountError::Invalid(_))));
        let outcome = accounts
            .login(
                &cfg,
                LoginId::Email("ada@example.com".into()),
                PASSWORD.into(),
                SignInRequest::default(),
                &client(),
                T,
            )
            .await
            .unwrap();
        assert!(matches!(outcome, SignIn::Issued(_)));
    }
}
