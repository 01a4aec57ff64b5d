//! Authentication: credentials, tokens and the keys that sign them.
//!
//! Owns: finding the one credential of a request (SPEC section 3's precedence), turning it
//! into a [`Principal`] through the cache (API keys, Gatehouse access tokens, session
//! cookies), the key ring tokens are signed and verified with, and the route policy
//! ([`policy`]). Must not touch: HTTP responses (failures leave as [`AuthError`] /
//! [`policy::Denied`], mapped once by the caller) or the store directly (only through
//! [`AuthCache`], so every lookup is cached and counted).

pub mod api_key;
pub mod cookie;
pub mod jwt;
pub mod password;
pub mod policy;
pub mod signing;
pub mod trusted;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::{self, HeaderName};
use sha2::{Digest, Sha256};

use crate::cache::{AuthCache, TokenCache, Validity};
use crate::config::{CredentialKind, TrustedIssuer};
use crate::principal::{AuthMethod, Principal, Rendered};
use crate::store::{ApiKeyKind, StoreError, TokenHash, UnixMillis};
use jwt::{AccessClaims, Expectation, JwtError};
use signing::KeyRing;
use trusted::TrustedIssuers;

/// `X-API-Key`.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The credential a request presents, by SPEC section 3's precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// `X-API-Key`, or `Authorization: Bearer sk_.../pk_...`.
    ApiKey(&'a str),
    /// `Authorization: Bearer <JWT>`.
    Jwt(&'a str),
    /// The session cookie's value.
    Cookie(&'a str),
}

impl Presented<'_> {
    /// The kind a route's `credentials` list names.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Presented::ApiKey(_) => CredentialKind::ApiKey,
            Presented::Jwt(_) => CredentialKind::Jwt,
            Presented::Cookie(_) => CredentialKind::Cookie,
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110 11.1).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The first credential, in precedence order, of a kind the route accepts (a credential of
/// another kind is not looked at, as if it were absent).
pub fn presented<'a>(
    headers: &'a HeaderMap,
    cookie_name: &str,
    accepts: &[CredentialKind],
) -> Option<Presented<'a>> {
    let accepts_kind = |k: CredentialKind| accepts.contains(&k);
    if accepts_kind(CredentialKind::ApiKey)
        && let Some(v) = headers.get(&X_API_KEY).and_then(|v| v.to_str().ok())
    {
        return Some(Presented::ApiKey(v.trim()));
    }
    if let Some(token) = bearer(headers) {
        let candidate = if api_key::looks_like_key(token) {
            Presented::ApiKey(token)
        } else {
            Presented::Jwt(token)
        };
        if accepts_kind(candidate.kind()) {
            return Some(candidate);
        }
    }
    if accepts_kind(CredentialKind::Cookie)
        && let Some(v) = cookie::find(headers, cookie_name)
    {
        return Some(Presented::Cookie(v));
    }
    None
}

/// Why a presented credential was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed (checksum), unknown, revoked or expired API key, or its owner is gone or
    /// disabled.
    #[error("invalid API key")]
    InvalidApiKey,
    /// A token that failed verification.
    #[error("invalid token: {0}")]
    Token(#[from] JwtError),
    /// A valid token of an ended session, or of a deleted or disabled user.
    #[error("session revoked")]
    SessionRevoked,
    /// The store could not answer a cache miss.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What tokens must say to be accepted (from `tokens`).
#[derive(Debug, Clone, Copy)]
pub struct TokenRules<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    /// Whether tokens of `tokens.trusted_issuers` are accepted too: on the proxy path and
    /// forward-auth, not on the account API (an external subject has no account).
    pub external: bool,
}

/// Verifies credentials on the proxy path (and for the account API) through the cache.
pub struct Authenticator {
    cache: AuthCache,
    ttl: Duration,
    /// Credentials resolved to their principal, by [`credential_hash`]: a hit costs one
    /// lookup and shares the principal (and its rendered identity headers). An entry is used
    /// only while nothing was evicted from `cache` since it was built (a revoked key, a
    /// logout, a changed user make every entry stale at once; they are rebuilt from the
    /// still-warm lookups) and never past the earliest expiry of the lookups it came from,
    /// so it is never staler than they are.
    resolved: TokenCache<Resolved>,
    /// Verified tokens (access tokens and cookies) by [`credential_hash`]: a signature check
    /// costs as much as a proxied request, and clients reuse one token for its whole life.
    /// Session and user state are checked again whenever `resolved` misses.
    verified: TokenCache<Verified>,
    keys: ArcSwap<KeyRing>,
    trusted: ArcSwap<TrustedIssuers>,
    /// Signed identity assertions by (route, principal), reused while they have more than
    /// [`ASSERTION_REUSE_MARGIN_SECS`] to live: an EdDSA signature costs as much as a proxied
    /// request.
    assertions: TokenCache<String>,
}

/// Lifetime of an `X-Gatehouse-Assertion` (SPEC section 3).
pub const ASSERTION_TTL_SECS: i64 = 60;
/// A cached assertion is replaced when less than this is left of its life.
pub const ASSERTION_REUSE_MARGIN_SECS: i64 = 15;
/// `typ` of identity assertions, so one is never mistaken for an access token.
pub const ASSERTION_TYP: &str = "gh-assertion+jwt";

/// Claims of an `X-Gatehouse-Assertion`.
#[derive(Debug, serde::Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    amr: &'static str,
}

/// A verified token: a Gatehouse one (its session and user are checked on every use), or
/// an external issuer's (stands alone until its `exp`).
#[derive(Debug)]
enum Verified {
    Own {
        claims: Box<AccessClaims>,
        scopes: Option<Vec<String>>,
    },
    External {
        principal: Arc<Principal>,
        /// The token's `exp`, milliseconds.
        exp_ms: UnixMillis,
    },
}

/// A credential's principal, and the cache generation it was built at.
#[derive(Debug)]
struct Resolved {
    principal: Arc<Principal>,
    generation: u64,
    /// An external issuer's token: not for the account API.
    external: bool,
}

/// Cache key of a presented credential: BLAKE3 of its kind and its bytes. A cache hit skips
/// every check (checksum, signature, lookups), so the key must be collision-resistant; at
/// ~5x the speed of SHA-256 here for a JWT, BLAKE3 keeps the hit cheap.
fn credential_hash(presented: Presented<'_>) -> TokenHash {
    let (kind, credential) = match presented {
        Presented::ApiKey(k) => (0u8, k),
        Presented::Jwt(t) => (1, t),
        Presented::Cookie(t) => (2, t),
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(credential.as_bytes());
    *hasher.finalize().as_bytes()
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("kid", &self.keys.load().current_kid())
            .finish_non_exhaustive()
    }
}

/// JWT leeway for `exp`/`nbf` (SPEC section 3).
pub const LEEWAY_SECS: u64 = 60;

impl Authenticator {
    pub fn new(
        cache: AuthCache,
        verified_max: u64,
        ttl: std::time::Duration,
        keys: KeyRing,
    ) -> Self {
        Authenticator {
            cache,
            ttl,
            resolved: TokenCache::new(verified_max, ttl),
            verified: TokenCache::new(verified_max, ttl),
            keys: ArcSwap::from_pointee(keys),
            trusted: ArcSwap::from_pointee(TrustedIssuers::default()),
            assertions: TokenCache::new(verified_max, ttl),
        }
    }

    /// The lookups cache (for eviction after local writes).
    pub fn cache(&self) -> &AuthCache {
        &self.cache
    }

    /// The current key ring.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.load_full()
    }

    /// Replaces the key ring (rotation, periodic re-read).
    pub fn set_keys(&self, ring: KeyRing) {
        self.keys.store(Arc::new(ring));
    }

    /// The trusted external issuers.
    pub fn trusted(&self) -> Arc<TrustedIssuers> {
        self.trusted.load_full()
    }

    /// Rebuilds the trusted issuers when `configs` (or the default audience) changed;
    /// unchanged issuers keep their keys.
    pub fn sync_trusted(&self, configs: &[TrustedIssuer], default_audience: &str) {
        let current = self.trusted.load();
        if !current.built_from(configs, default_audience) {
            let next = TrustedIssuers::new(configs, default_audience, Some(&current));
            self.trusted.store(Arc::new(next));
        }
    }

    /// The `X-Gatehouse-Assertion` for `principal` on route `route`: a short-lived JWT
    /// (`iss`, `sub` = user id, `aud` = route name, `roles`) signed with the gateway's key and
    /// verifiable through the JWKS. `None` for principals without a user (anonymous, app keys).
    pub async fn assertion(
        &self,
        principal: &Principal,
        route: &str,
        issuer: &str,
        now: UnixMillis,
    ) -> Result<Option<String>, signing::SigningError> {
        let Some(sub) = principal.user_id.as_deref() else {
            return Ok(None);
        };
        let mut hasher = Sha256::new();
        for part in [route, sub, principal.method.as_str()] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        for role in &principal.roles {
            hasher.update(role.as_bytes());
            hasher.update([0]);
        }
        hasher.update(self.keys.load().current_kid().as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        if let Some(found) = self.assertions.get(&key).await {
            return Ok(Some(found.as_ref().clone()));
        }
        let iat = now.div_euclid(1000);
        let exp = iat + ASSERTION_TTL_SECS;
        let claims = AssertionClaims {
            iss: issuer,
            sub,
            aud: route,
            iat,
            exp,
            roles: &principal.roles,
            email: principal.email.as_deref(),
            amr: principal.method.as_str(),
        };
        let token = self.keys.load().sign(ASSERTION_TYP, &claims)?;
        let reuse_until = (exp - ASSERTION_REUSE_MARGIN_SECS).saturating_mul(1000);
        self.assertions
            .insert(key, Arc::new(token.clone()), reuse_until, now)
            .await;
        Ok(Some(token))
    }

    /// Turns a presented credential into the principal it stands for.
    pub async fn authenticate(
        &self,
        presented: Presented<'_>,
        rules: TokenRules<'_>,
        now: UnixMillis,
    ) -> Result<Arc<Principal>, AuthError> {
        let hash = credential_hash(presented);
        if let Some(hit) = self.resolved.get(&hash).await
            && hit.generation == self.cache.generation()
            && (rules.external || !hit.external)
        {
            if let Some(key_id) = &hit.principal.key_id {
                self.cache.note_api_key_use(key_id, now);
            }
            if let Some(sid) = &hit.principal.session_id {
                self.cache.note_session_use(sid, now);
            }
            return Ok(hit.principal.clone());
        }
        // Read before any lookup: an eviction while this runs leaves the entry stale.
        let generation = self.cache.generation();
        let mut validity = Validity::new(self.ttl);
        let (principal, external) = match presented {
            Presented::ApiKey(key) => (self.api_key(key, now, &mut validity).await?, false),
            Presented::Jwt(token) => {
                self.token(token, false, hash, rules, now, &mut validity)
                    .await?
            }
            Presented::Cookie(token) => {
                self.token(token, true, hash, rules, now, &mut validity)
                    .await?
            }
        };
        // Batched into the session's `last_used_at`, as `api_key` does for keys.
        if let Some(sid) = &principal.session_id {
            self.cache.note_session_use(sid, now);
        }
        let resolved = Resolved {
            principal: principal.clone(),
            generation,
            external,
        };
        self.resolved
            .insert_until(hash, Arc::new(resolved), validity.until)
            .await;
        Ok(principal)
    }

    async fn api_key(
        &self,
        key: &str,
        now: UnixMillis,
        validity: &mut Validity,
    ) -> Result<Arc<Principal>, AuthError> {
        // The checksum refuses a mistyped or made-up key before any lookup.
        let parsed = api_key::parse(key).map_err(|_| AuthError::InvalidApiKey)?;
        let record = self
            .cache
            .api_key_within(&parsed.hash, validity)
            .await?
            .filter(|k| k.is_active(now) && k.kind == parsed.kind)
            .ok_or(AuthError::InvalidApiKey)?;
        // The key's expiry also bounds the cache entry's life, hence `validity`'s.
        self.cache.note_api_key_use(&record.id, now);
        let principal = match record.kind {
            ApiKeyKind::Publishable => Principal {
                method: AuthMethod::PublishableKey,
                user_id: None,
                email: None,
                username: None,
                roles: Vec::new(),
                scopes: record.scopes.clone(),
                key_id: Some(record.id.clone()),
                session_id: None,
                rendered: Rendered::default(),
            },
            ApiKeyKind::Secret => {
                let user = self
                    .cache
                    .user_within(&record.user_id, validity)
                    .await?
                    .filter(|u| !u.disabled)
                    .ok_or(AuthError::InvalidApiKey)?;
                Principal {
                    method: AuthMethod::ApiKey,
                    user_id: Some(user.id.clone()),
                    email: user.email.clone(),
                    username: user.username.clone(),
                    roles: user.roles.clone(),
                    scopes: record.scopes.clone(),
                    key_id: Some(record.id.clone()),
                    session_id: None,
                    rendered: Rendered::default(),
                }
            }
        };
        Ok(Arc::new(principal))
    }

    /// A token's principal, and whether it is an external issuer's.
    async fn token(
        &self,
        token: &str,
        cookie: bool,
        hash: TokenHash,
        rules: TokenRules<'_>,
        now: UnixMillis,
        validity: &mut Validity,
    ) -> Result<(Arc<Principal>, bool), AuthError> {
        let verified = match self.verified.get(&hash).await {
            // The entry never outlives the token's `exp`.
            Some(v) => v,
            None => {
                let (exp_secs, verified) = self.verify_token(token, cookie, rules, now).await?;
                let v = Arc::new(verified);
                self.verified
                    .insert(hash, v.clone(), exp_secs.saturating_mul(1000), now)
                    .await;
                v
            }
        };
        let (claims, scopes) = match verified.as_ref() {
            Verified::Own { claims, scopes } => (claims, scopes),
            // Cached by the proxy path, presented to the account API.
            Verified::External { .. } if !rules.external => {
                return Err(AuthError::Token(JwtError::UnknownKid));
            }
            Verified::External { principal, exp_ms } => {
                // The resolved entry must not outlive the token either.
                validity.narrow_to(*exp_ms, now);
                return Ok((principal.clone(), true));
            }
        };
        validity.narrow_to(claims.exp.saturating_mul(1000), now);
        if !self
            .cache
            .session_active_within(&claims.sid, now, validity)
            .await?
        {
            return Err(AuthError::SessionRevoked);
        }
        let user = self
            .cache
            .user_within(&claims.sub, validity)
            .await?
            .filter(|u| !u.disabled)
            .ok_or(AuthError::SessionRevoked)?;
        let principal = Principal {
            method: if cookie {
                AuthMethod::Cookie
            } else {
                AuthMethod::Jwt
            },
            user_id: Some(user.id.clone()),
            email: user.email.clone(),
            username: user.username.clone(),
            // The user's roles now, not those of the token's issue time: a removed role
            // stops working within the cache TTL.
            roles: user.roles.clone(),
            scopes: scopes.clone(),
            key_id: None,
            session_id: Some(claims.sid.clone()),
            rendered: Rendered::default(),
        };
        Ok((Arc::new(principal), false))
    }

    /// Checks a token not in the verified cache; returns it with its `exp` (seconds).
    async fn verify_token(
        &self,
        token: &str,
        cookie: bool,
        rules: TokenRules<'_>,
        now: UnixMillis,
    ) -> Result<(i64, Verified), AuthError> {
        if rules.external && !cookie {
            let trusted = self.trusted.load();
            if !trusted.is_empty()
                && let Some(iss) = trusted::unverified_issuer(token)
                && iss != rules.issuer
                && let Some(issuer) = trusted.get(&iss)
            {
                let (principal, exp) = trusted.verify(issuer, token, now, LEEWAY_SECS).await?;
                return Ok((
                    exp,
                    Verified::External {
                        principal: Arc::new(principal),
                        exp_ms: exp.saturating_mul(1000),
                    },
                ));
            }
        }
        let expect = Expectation {
            issuer: rules.issuer,
            audience: rules.audience,
            now_secs: now.div_euclid(1000),
            leeway_secs: LEEWAY_SECS,
        };
        let ring = self.keys.load();
        let claims = if cookie {
            jwt::verify_session_cookie(&ring, token, &expect)?
        } else {
            jwt::verify_access(&ring, token, &expect)?
        };
        let scopes = claims
            .scope
            .as_deref()
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect());
        Ok((
            claims.exp,
            Verified::Own {
                claims: Box::new(claims),
                scopes,
            },
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    use crate::cache::CacheSettings;
    use crate::store::{ApiKey, SqliteStore, Store, User, UserPatch, new_id, unix_now};

    struct Rig {
        store: Arc<dyn Store>,
        auth: Authenticator,
        user: User,
        _dir: tempfile::TempDir,
    }

    async fn rig(ttl: Duration) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.db");
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || SqliteStore::open(path))
                .await
                .unwrap()
                .unwrap(),
        );
        let settings = CacheSettings {
            ttl,
            negative_ttl: Duration::from_millis(100),
            max_entries: 1000,
        };
        let cache = AuthCache::new(store.clone(), settings);
        let ring = KeyRing::new(
            &[signing::test_keys::key(crate::config::SigningAlg::EdDsa, 0)],
            signing::test_keys::NOW,
        )
        .unwrap();
        let now = unix_now();
        let user = User {
            id: new_id(),
            email: Some("ada@example.test".into()),
            username: None,
            name: None,
            external_id: None,
            email_verified: true,
            roles: vec!["user".into()],
            disabled: false,
            password_hash: None,
            mfa: None,
            created_at: now,
            updated_at: now,
        };
        store.create_user(&user).await.unwrap();
        Rig {
            auth: Authenticator::new(cache, 1000, ttl, ring),
            store,
            user,
            _dir: dir,
        }
    }

    async fn new_key(r: &Rig) -> String {
        let generated = api_key::generate(ApiKeyKind::Secret);
        let key = ApiKey {
            id: new_id(),
            user_id: r.user.id.clone(),
            kind: ApiKeyKind::Secret,
            name: "t".into(),
            prefix: generated.prefix.clone(),
            key_hash: generated.hash,
            scopes: None,
            created_at: unix_now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        r.store.create_api_key(&key).await.unwrap();
        generated.key
    }

    const RULES: TokenRules<'static> = TokenRules {
        issuer: "https://gh.test",
        audience: "gh",
        external: true,
    };

    async fn roles_of(r: &Rig, key: &str) -> (Arc<Principal>, Vec<String>) {
        let p = r
            .auth
            .authenticate(Presented::ApiKey(key), RULES, unix_now())
            .await
            .unwrap();
        let roles = p.roles.clone();
        (p, roles)
    }

    async fn set_roles(r: &Rig, roles: &[&str]) {
        let patch = UserPatch {
            roles: Some(roles.iter().map(|s| (*s).to_owned()).collect()),
            ..UserPatch::default()
        };
        r.store
            .update_user(&r.user.id, &patch, unix_now())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_resolved_principal_is_shared_until_an_eviction() {
        let r = rig(Duration::from_secs(60)).await;
        let key = new_key(&r).await;
        let (first, _) = roles_of(&r, &key).await;
        let lookups = r.auth.cache().store_lookups();
        let (second, _) = roles_of(&r, &key).await;
        assert!(Arc::ptr_eq(&first, &second), "a hit shares the principal");
        assert_eq!(r.auth.cache().store_lookups(), lookups);

        // A change made here evicts the user: the next request sees it at once.
        set_roles(&r, &["admin"]).await;
        r.auth.cache().evict_user(&r.user.id).await;
        let (third, roles) = roles_of(&r, &key).await;
        assert!(!Arc::ptr_eq(&first, &third));
        assert_eq!(roles, ["admin"]);
    }

    /// Another replica's change reaches this one through the lookups' TTL: a principal
    /// resolved late from an old user entry must not outlive that entry.
    #[tokio::test]
    async fn a_resolved_principal_lives_no_longer_than_its_lookups() {
        let ttl = Duration::from_millis(600);
        let r = rig(ttl).await;
        let (a, b) = (new_key(&r).await, new_key(&r).await);
        roles_of(&r, &a).await; // loads the user entry at t0
        tokio::time::sleep(Duration::from_millis(300)).await;
        roles_of(&r, &b).await; // resolved at t0+300 from the t0 user entry
        set_roles(&r, &["auditor"]).await; // elsewhere: no local eviction
        assert_eq!(roles_of(&r, &b).await.1, ["user"], "still cached");
        tokio::time::sleep(Duration::from_millis(400)).await; // t0+700: user entry expired
        assert_eq!(roles_of(&r, &b).await.1, ["auditor"]);
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn precedence_and_accepted_kinds() {
        let all = [
            CredentialKind::ApiKey,
            CredentialKind::Jwt,
            CredentialKind::Cookie,
        ];
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("gh_session=c"));
        assert_eq!(
            presented(&h, "gh_session", &all),
            Some(Presented::Cookie("c"))
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer ey.j.w"),
        );
        assert_eq!(
            presented(&h, "gh_session", &all),
            Some(Presented::Jwt("ey.j.w"))
        );
        h.insert(&X_API_KEY, HeaderValue::from_static("sk_x"));
        assert_eq!(
            presented(&h, "gh_session", &all),
            Some(Presented::ApiKey("sk_x"))
        );
        // A kind the route does not accept is passed over.
        let only_cookie = [CredentialKind::Cookie];
        assert_eq!(
            presented(&h, "gh_session", &only_cookie),
            Some(Presented::Cookie("c"))
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer pk_y"),
        );
        h.remove(&X_API_KEY);
        assert_eq!(
            presented(&h, "gh_session", &all),
            Some(Presented::ApiKey("pk_y"))
        );
        assert_eq!(presented(&h, "gh_session", &[CredentialKind::Jwt]), None);
    }
}
