//! JWTs of external identity providers (`tokens.trusted_issuers`, SPEC sections 2 and 3).
//!
//! Owns: each issuer's JWKS (fetched in the background, refreshed periodically, kept when a
//! refresh fails: stale-if-error), refetching it when a token names an unknown `kid` (at most
//! once a minute per issuer, so random `kid`s cannot make the gateway hammer the IdP), and
//! turning an external token's claims into a [`Principal`]. Must not touch: Gatehouse's own
//! keys and sessions (`signing.rs`, the caller), HTTP responses.
//!
//! An external token has no Gatehouse session or user: its `sub` is the IdP's subject, its
//! roles come from the issuer's `roles_claim`, and it lives until its `exp`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::auth::jwt::{Expectation, JwtError, check_claims};
use crate::auth::signing::Verifiers;
use crate::config::TrustedIssuer;
use crate::outbound::Outbound;
use crate::principal::{AuthMethod, Principal};
use crate::store::UnixMillis;

/// A JWKS document larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Periodic refresh of a JWKS that was fetched.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Retry of a JWKS whose last fetch failed.
pub const RETRY_EVERY: Duration = Duration::from_secs(15);
/// An unknown `kid` makes the JWKS be refetched at most this often.
pub const KID_REFETCH_EVERY: Duration = Duration::from_secs(60);
/// Deadline of one JWKS fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetch bookkeeping of one issuer.
#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    last_kid_refetch: Option<Instant>,
}

/// One trusted issuer and its current keys.
pub struct Issuer {
    config: TrustedIssuer,
    /// `audience`, or `tokens.audience` when the issuer sets none: a token the IdP minted
    /// for another API must not pass here.
    audience: String,
    keys: ArcSwap<Verifiers>,
    state: Mutex<FetchState>,
    /// One fetch at a time; requests waiting on an unknown `kid` queue here and then see
    /// the keys that fetch brought.
    fetching: tokio::sync::Mutex<()>,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.config.issuer)
            .field("jwks_uri", &self.config.jwks_uri)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

/// What `/metrics` shows about an issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerStats {
    pub issuer: String,
    pub fetches_ok: u64,
    pub fetches_failed: u64,
    /// Seconds since the keys were last fetched successfully; `None` before the first.
    pub age_secs: Option<f64>,
    pub keys: usize,
}

impl Issuer {
    fn new(config: TrustedIssuer, default_audience: &str) -> Issuer {
        Issuer {
            audience: config
                .audience
                .clone()
                .unwrap_or_else(|| default_audience.to_owned()),
            config,
            keys: ArcSwap::from_pointee(Verifiers::default()),
            state: Mutex::new(FetchState::default()),
            fetching: tokio::sync::Mutex::new(()),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Fetches the JWKS and swaps the keys in; on failure the old keys stay (stale-if-error)
    /// and the failure is logged and counted.
    async fn fetch(&self, outbound: &Outbound) -> bool {
        self.state().last_attempt = Some(Instant::now());
        let result = match outbound
            .get_json(&self.config.jwks_uri, MAX_JWKS_BYTES)
            .await
        {
            Ok(fetched) => Verifiers::from_jwks(&fetched.body).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok((keys, skipped)) => {
                for reason in &skipped {
                    tracing::warn!(target: "gatehouse::auth", issuer = %self.config.issuer, key = %reason, "JWKS key skipped");
                }
                if keys.is_empty() {
                    self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "gatehouse::auth", issuer = %self.config.issuer, "JWKS holds no usable signature key; keeping the previous keys");
                    return false;
                }
                tracing::debug!(target: "gatehouse::auth", issuer = %self.config.issuer, keys = keys.len(), "JWKS fetched");
                self.keys.store(Arc::new(keys));
                self.state().last_success = Some(Instant::now());
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "gatehouse::auth", issuer = %self.config.issuer, jwks_uri = %self.config.jwks_uri, %error, "cannot fetch the JWKS; keeping the previous keys");
                false
            }
        }
    }

    /// Whether the periodic refresh is due at `now`.
    fn refresh_due(&self, now: Instant) -> bool {
        let state = self.state();
        match (state.last_attempt, state.last_success) {
            (None, _) => true,
            (Some(attempt), Some(success)) if success >= attempt => {
                now.duration_since(success) >= REFRESH_EVERY
            }
            (Some(attempt), _) => now.duration_since(attempt) >= RETRY_EVERY,
        }
    }

    async fn refresh(&self, outbound: &Outbound) {
        let _one_at_a_time = self.fetching.lock().await;
        if self.refresh_due(Instant::now()) {
            self.fetch(outbound).await;
        }
    }

    /// A token names a `kid` the keys lack: refetch, unless that was done less than
    /// [`KID_REFETCH_EVERY`] ago.
    async fn refetch_for_kid(&self, kid: &str, outbound: &Outbound, now: UnixMillis) {
        let _one_at_a_time = self.fetching.lock().await;
        // A fetch that finished while this request waited may have brought the key.
        if self.keys.load().knows(kid, now) {
            return;
        }
        {
            let mut state = self.state();
            if state
                .last_kid_refetch
                .is_some_and(|t| t.elapsed() < KID_REFETCH_EVERY)
            {
                return;
            }
            state.last_kid_refetch = Some(Instant::now());
        }
        self.fetch(outbound).await;
    }

    fn stats(&self) -> IssuerStats {
        let age_secs = self.state().last_success.map(|t| t.elapsed().as_secs_f64());
        IssuerStats {
            issuer: self.config.issuer.clone(),
            fetches_ok: self.fetches_ok.load(Ordering::Relaxed),
            fetches_failed: self.fetches_failed.load(Ordering::Relaxed),
            age_secs,
            keys: self.keys.load().len(),
        }
    }

    /// Verifies `token` (whose unverified `iss` named this issuer) and maps its claims.
    async fn verify(
        &self,
        token: &str,
        outbound: &Outbound,
        now: UnixMillis,
        leeway_secs: u64,
    ) -> Result<(Principal, i64), JwtError> {
        let verified = match self.keys.load().verify(token, now) {
            Err(crate::auth::signing::JwsError::UnknownKid) => {
                let Some(kid) = header_kid(token) else {
                    return Err(JwtError::UnknownKid);
                };
                self.refetch_for_kid(&kid, outbound, now).await;
                self.keys.load().verify(token, now)?
            }
            other => other?,
        };
        let expect = Expectation {
            issuer: &self.config.issuer,
            audience: &self.audience,
            now_secs: now.div_euclid(1000),
            leeway_secs,
        };
        let claims = check_claims(verified.claims, &expect)?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map_or(0, |e| e.floor() as i64);
        Ok((principal(&claims, &self.config.roles_claim)?, exp))
    }
}

/// The `kid` of a compact JWS header, unverified.
fn header_kid(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Header {
        kid: Option<String>,
    }
    let header = token.split('.').next()?;
    let json = URL_SAFE_NO_PAD.decode(header).ok()?;
    serde_json::from_slice::<Header>(&json).ok()?.kid
}

/// The `iss` of a compact JWS payload, unverified: it only picks whose keys to try.
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Payload {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Payload>(&json).ok()?.iss
}

/// A claim by dotted path (`realm_access.roles`, as Keycloak nests them); a claim whose own
/// name holds a dot is found first.
fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Strings of a claim that is an array of strings or one space- or comma-separated string.
fn string_list(value: Option<&Value>) -> Option<Vec<String>> {
    match value? {
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        Value::String(s) => Some(
            s.split([' ', ','])
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

/// The principal of a verified external token: `sub` (required), `email`,
/// `preferred_username`, roles from `roles_claim`, scopes from `scope` (or `scp`).
fn principal(claims: &Map<String, Value>, roles_claim: &str) -> Result<Principal, JwtError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let sub = text("sub")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| JwtError::InvalidClaims("`sub` is required".into()))?;
    Ok(Principal {
        method: AuthMethod::Jwt,
        user_id: Some(sub),
        email: text("email"),
        username: text("preferred_username"),
        roles: string_list(claim(claims, roles_claim)).unwrap_or_default(),
        scopes: string_list(claims.get("scope").or_else(|| claims.get("scp"))),
        key_id: None,
        session_id: None,
        rendered: Default::default(),
    })
}

/// Every trusted issuer, by `iss`.
pub struct TrustedIssuers {
    issuers: HashMap<String, Arc<Issuer>>,
    /// The configuration these were built from, to tell whether a reload changed them.
    configured: (Vec<TrustedIssuer>, String),
    outbound: Arc<Outbound>,
}

impl std::fmt::Debug for TrustedIssuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.issuers.values()).finish()
    }
}

impl Default for TrustedIssuers {
    fn default() -> Self {
        TrustedIssuers {
            issuers: HashMap::new(),
            configured: (Vec::new(), String::new()),
            outbound: Arc::new(Outbound::new(FETCH_TIMEOUT)),
        }
    }
}

impl TrustedIssuers {
    /// Issuers of `configs`; an issuer `previous` already had with the same `jwks_uri` keeps
    /// its keys and fetch state (a reload does not refetch every JWKS).
    pub fn new(
        configs: &[TrustedIssuer],
        default_audience: &str,
        previous: Option<&TrustedIssuers>,
    ) -> TrustedIssuers {
        let outbound = previous.map_or_else(
            || Arc::new(Outbound::new(FETCH_TIMEOUT)),
            |p| p.outbound.clone(),
        );
        let issuers = configs
            .iter()
            .map(|c| {
                let fresh = Issuer::new(c.clone(), default_audience);
                let kept = previous
                    .and_then(|p| p.issuers.get(&c.issuer))
                    .filter(|old| old.config.jwks_uri == c.jwks_uri);
                let issuer = match kept {
                    Some(old) => {
                        fresh.keys.store(old.keys.load_full());
                        {
                            let old_state = old.state();
                            let mut state = fresh.state();
                            state.last_attempt = old_state.last_attempt;
                            state.last_success = old_state.last_success;
                            state.last_kid_refetch = old_state.last_kid_refetch;
                        }
                        fresh
                            .fetches_ok
                            .store(old.fetches_ok.load(Ordering::Relaxed), Ordering::Relaxed);
                        fresh.fetches_failed.store(
                            old.fetches_failed.load(Ordering::Relaxed),
                            Ordering::Relaxed,
                        );
                        fresh
                    }
                    None => fresh,
                };
                (c.issuer.clone(), Arc::new(issuer))
            })
            .collect();
        TrustedIssuers {
            issuers,
            configured: (configs.to_vec(), default_audience.to_owned()),
            outbound,
        }
    }

    /// Whether these were built from exactly this configuration.
    pub fn built_from(&self, configs: &[TrustedIssuer], default_audience: &str) -> bool {
        self.configured.0 == configs && self.configured.1 == default_audience
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The issuer a token's unverified `iss` names, if trusted.
    pub fn get(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.issuers.get(iss)
    }

    /// Fetches every JWKS whose refresh is due (first fetch, periodic, retry after a
    /// failure), concurrently.
    pub async fn refresh_due(&self) {
        let now = Instant::now();
        let mut fetches = tokio::task::JoinSet::new();
        for issuer in self.issuers.values().filter(|i| i.refresh_due(now)) {
            let (issuer, outbound) = (issuer.clone(), self.outbound.clone());
            fetches.spawn(async move { issuer.refresh(&outbound).await });
        }
        while fetches.join_next().await.is_some() {}
    }

    /// Verifies a token of `issuer` and returns its principal and `exp`.
    pub async fn verify(
        &self,
        issuer: &Issuer,
        token: &str,
        now: UnixMillis,
        leeway_secs: u64,
    ) -> Result<(Principal, i64), JwtError> {
        issuer.verify(token, &self.outbound, now, leeway_secs).await
    }

    pub fn stats(&self) -> Vec<IssuerStats> {
        let mut stats: Vec<IssuerStats> = self.issuers.values().map(|i| i.stats()).collect();
        stats.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        stats
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn maps_claims_to_a_principal() {
        let c = claims(json!({
            "sub": "idp|42", "email": "a@example.com", "preferred_username": "ada",
            "realm_access": {"roles": ["admin", "user"]}, "scope": "read write",
        }));
        let p = principal(&c, "realm_access.roles").unwrap();
        assert_eq!(p.user_id.as_deref(), Some("idp|42"));
        assert_eq!(p.email.as_deref(), Some("a@example.com"));
        assert_eq!(p.username.as_deref(), Some("ada"));
        assert_eq!(p.roles, ["admin", "user"]);
        assert_eq!(
            p.scopes.as_deref(),
            Some(&["read".to_owned(), "write".to_owned()][..])
        );
        assert_eq!(p.method, AuthMethod::Jwt);
        assert!(p.session_id.is_none() && p.key_id.is_none());

        let c = claims(json!({"sub": "s", "groups": "a,b c", "scp": ["x"]}));
        let p = principal(&c, "groups").unwrap();
        assert_eq!(p.roles, ["a", "b", "c"]);
        assert_eq!(p.scopes.as_deref(), Some(&["x".to_owned()][..]));
        // No roles claim: no roles; no scope claim: unscoped.
        let p = principal(&claims(json!({"sub": "s"})), "roles").unwrap();
        assert!(p.roles.is_empty() && p.scopes.is_none());
        // A dotted name that is itself a claim wins.
        let c = claims(json!({"sub": "s", "a.b": ["flat"], "a": {"b": ["nested"]}}));
        assert_eq!(principal(&c, "a.b").unwrap().roles, ["flat"]);
        assert!(principal(&claims(json!({"sub": ""})), "roles").is_err());
        assert!(principal(&claims(json!({"sub": 7})), "roles").is_err());
    }

    #[test]
    fn reads_unverified_iss_and_kid() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k1"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://idp"}"#);
        let token = format!("{h}.{p}.sig");
        assert_eq!(unverified_issuer(&token).as_deref(), Some("https://idp"));
        assert_eq!(header_kid(&token).as_deref(), Some("k1"));
        assert_eq!(unverified_issuer("garbage"), None);
        assert_eq!(unverified_issuer("a.%%%.c"), None);
    }

    #[test]
    fn refresh_schedule() {
        let issuer = Issuer::new(
            TrustedIssuer {
                issuer: "https://idp".into(),
                jwks_uri: "http://127.0.0.1:1/jwks".into(),
                audience: None,
                roles_claim: "roles".into(),
            },
            "gatehouse",
        );
        assert_eq!(issuer.audience, "gatehouse");
        let t0 = Instant::now();
        assert!(issuer.refresh_due(t0), "never fetched");
        issuer.state().last_attempt = Some(t0);
        assert!(!issuer.refresh_due(t0 + Duration::from_secs(1)));
        assert!(issuer.refresh_due(t0 + RETRY_EVERY), "failed: retried soon");
        issuer.state().last_success = Some(t0);
        assert!(!issuer.refresh_due(t0 + RETRY_EVERY), "fresh keys");
        assert!(issuer.refresh_due(t0 + REFRESH_EVERY));
    }
}
