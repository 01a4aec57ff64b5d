//! Sign-in through external identity providers (SPEC section 5, `/auth/oauth/...`): the
//! OpenID Connect authorization-code flow with PKCE, for `kind: oidc` providers and the
//! google and linkedin presets (OIDC providers with known issuers); and GitHub, plain
//! OAuth 2 (no ID token), whose user is read from its REST API (`/user`, `/user/emails`).
//!
//! Owns: provider endpoints (discovery `/.well-known/openid-configuration`, fetched and
//! cached, every endpoint overridable by config), the authorization URL (`state`, `nonce`,
//! PKCE S256), the code exchange (`client_secret_basic` or `client_secret_post`), the ID
//! token's claim checks (`iss`, `aud`, `azp`, `nonce`, `exp`, `iat`), the userinfo call when
//! the ID token carries no email, and the result: an [`ExternalIdentity`].
//!
//! Must not touch: users, sessions or the store (`accounts` decides what an identity signs
//! in as), HTTP responses, or JWS signatures: those are checked by the caller's
//! [`SignatureCheck`] (the gateway's one verifier, `auth::signing`, one layer up from here
//! in spirit but not in the import graph), against the JWKS this module fetches and caches.
//!
//! Why no `openidconnect` crate: it verifies ID tokens with its own JOSE stack (a second
//! verifier with its own algorithm policy beside `auth::signing`, which binds each `kid` to
//! one algorithm and never accepts `none` or HMAC), and brings chrono, rand 0.8, p384, hmac,
//! serde_with and oauth2 for what is here an URL, a form POST and a few claim comparisons.
//! The protocol code is small and table-tested instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::config::{OAuthKind, OAuthProvider, TokenAuth};
use crate::outbound::{Outbound, OutboundError};
use crate::store::UnixMillis;

/// Deadline of one request to a provider.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Provider documents (discovery, JWKS, token and userinfo answers) larger than this are
/// refused.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// How long discovery documents and JWKS are reused.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// An ID token naming an unknown `kid` refetches the JWKS at most this often.
const KID_REFETCH_EVERY: Duration = Duration::from_secs(60);
/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: i64 = 60;
/// An ID token is minted at the code exchange: one issued longer ago than this is refused.
const MAX_ID_TOKEN_AGE_SECS: i64 = 600;
/// Scopes asked for when the provider's config names none.
pub const DEFAULT_SCOPES: &str = "openid email profile";

/// Issuers of the OIDC presets.
const GOOGLE_ISSUER: &str = "https://accounts.google.com";
const LINKEDIN_ISSUER: &str = "https://www.linkedin.com/oauth";
/// GitHub's endpoints (each overridable: `authorize_url`, `token_url`, `userinfo_url` for
/// `/user`, `api_url` for the API base).
const GITHUB_ISSUER: &str = "https://github.com";
const GITHUB_AUTHORIZE: &str = "https://github.com/login/oauth/authorize";
const GITHUB_TOKEN: &str = "https://github.com/login/oauth/access_token";
const GITHUB_API: &str = "https://api.github.com";
/// GitHub scopes: the profile and the email addresses with their verified flags.
const GITHUB_SCOPES: &str = "read:user user:email";

/// Who a provider says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    /// The provider's name under `accounts.oauth`.
    pub provider: String,
    /// The provider's stable subject identifier (`sub`).
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider asserts it verified `email`.
    pub email_verified: bool,
    pub name: Option<String>,
}

/// Why a provider flow failed. Variants say whose fault it is: the user's or client's (a
/// refused code, a bad ID token) or the provider's (unreachable, nonsense answers).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The provider could not be reached or did not answer in time.
    #[error("provider unreachable: {0}")]
    Unreachable(#[from] OutboundError),
    /// The provider answered something unusable (not JSON, missing endpoints or fields).
    #[error("unusable provider answer: {0}")]
    BadResponse(String),
    /// The token endpoint refused the code (`invalid_grant`: unknown, used or expired code,
    /// wrong `redirect_uri`, missing or wrong PKCE verifier).
    #[error("the provider refused the code: {0}")]
    CodeRejected(String),
    /// The ID token failed a check.
    #[error("invalid ID token: {0}")]
    IdToken(#[from] IdTokenError),
}

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    /// The token answer had no `id_token`.
    #[error("the provider returned no ID token")]
    Missing,
    /// The signature does not verify with the provider's keys (or the token is no JWS).
    #[error("signature: {0}")]
    Signature(String),
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    /// `azp` present (or required by several audiences) and not this client.
    #[error("wrong authorized party")]
    WrongAuthorizedParty,
    #[error("nonce mismatch")]
    WrongNonce,
    #[error("expired")]
    Expired,
    /// `iat` in the future or too long ago.
    #[error("issued at an unacceptable time")]
    BadIssueTime,
    /// A required claim is missing or of the wrong type.
    #[error("invalid claim `{0}`")]
    InvalidClaim(&'static str),
    /// userinfo speaks of another subject (OIDC Core 5.3.2).
    #[error("userinfo subject differs from the ID token's")]
    UserinfoSubject,
}

/// Why a [`SignatureCheck`] refused a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The token's `kid` is not in the JWKS (a rotation: refetch once and retry).
    UnknownKey,
    /// Anything else; the text names the reason, never the token.
    Invalid(String),
}

/// Verifies a compact JWS with the keys of a JWKS document and returns its payload, claims
/// unchecked. Implemented by the caller with the gateway's verifier.
pub trait SignatureCheck: Send + Sync {
    fn verify(
        &self,
        jwks: &[u8],
        token: &str,
        now: UnixMillis,
    ) -> Result<Map<String, Value>, SignatureError>;
}

/// A provider's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: Option<String>,
    /// Empty for GitHub (no ID token).
    pub jwks_uri: String,
    /// GitHub's `/user/emails`.
    pub emails_endpoint: Option<String>,
}

/// The issuer a provider's ID tokens carry: configured, or the preset's.
pub fn issuer(provider: &OAuthProvider) -> Result<String, OAuthError> {
    let preset = match provider.kind {
        OAuthKind::Google => Some(GOOGLE_ISSUER),
        OAuthKind::Linkedin => Some(LINKEDIN_ISSUER),
        OAuthKind::Github => Some(GITHUB_ISSUER),
        OAuthKind::Oidc => None,
    };
    provider
        .issuer
        .clone()
        .or_else(|| preset.map(str::to_owned))
        .map(|i| i.trim_end_matches('/').to_owned())
        .ok_or_else(|| OAuthError::BadResponse("no issuer configured".into()))
}

/// The endpoints from a discovery document, with the config's overrides on top. The
/// document's `issuer` must be the expected one (OIDC Discovery section 4.3).
pub fn endpoints_from_discovery(
    provider: &OAuthProvider,
    issuer: &str,
    document: &[u8],
) -> Result<Endpoints, OAuthError> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        authorization_endpoint: Option<String>,
        token_endpoint: Option<String>,
        userinfo_endpoint: Option<String>,
        jwks_uri: Option<String>,
    }
    let d: Discovery = serde_json::from_slice(document)
        .map_err(|e| OAuthError::BadResponse(format!("discovery document: {e}")))?;
    if d.issuer.trim_end_matches('/') != issuer {
        return Err(OAuthError::BadResponse(format!(
            "discovery names issuer {:?}, expected {issuer:?}",
            d.issuer
        )));
    }
    let missing = |what: &str| OAuthError::BadResponse(format!("discovery lacks {what}"));
    Ok(Endpoints {
        issuer: d.issuer,
        authorization_endpoint: provider
            .authorize_url
            .clone()
            .or(d.authorization_endpoint)
            .ok_or_else(|| missing("authorization_endpoint"))?,
        token_endpoint: provider
            .token_url
            .clone()
            .or(d.token_endpoint)
            .ok_or_else(|| missing("token_endpoint"))?,
        userinfo_endpoint: provider.userinfo_url.clone().or(d.userinfo_endpoint),
        jwks_uri: d.jwks_uri.ok_or_else(|| missing("jwks_uri"))?,
        emails_endpoint: None,
    })
}

/// GitHub's endpoints: its defaults, or the config's.
pub fn github_endpoints(provider: &OAuthProvider) -> Endpoints {
    let api = provider
        .api_url
        .as_deref()
        .unwrap_or(GITHUB_API)
        .trim_end_matches('/');
    Endpoints {
        issuer: provider
            .issuer
            .clone()
            .unwrap_or_else(|| GITHUB_ISSUER.to_owned()),
        authorization_endpoint: provider
            .authorize_url
            .clone()
            .unwrap_or_else(|| GITHUB_AUTHORIZE.to_owned()),
        token_endpoint: provider
            .token_url
            .clone()
            .unwrap_or_else(|| GITHUB_TOKEN.to_owned()),
        userinfo_endpoint: Some(
            provider
                .userinfo_url
                .clone()
                .unwrap_or_else(|| format!("{api}/user")),
        ),
        jwks_uri: String::new(),
        emails_endpoint: Some(format!("{api}/user/emails")),
    }
}

/// A PKCE verifier (RFC 7636 section 4.1: 43 characters of base64url, 256 bits).
pub fn pkce_verifier() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 challenge of a verifier (RFC 7636 section 4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The scopes asked for: the config's (with `openid` added when missing, for OIDC), else
/// [`DEFAULT_SCOPES`] (GitHub: `read:user user:email`).
pub fn scopes(provider: &OAuthProvider) -> String {
    let github = provider.kind == OAuthKind::Github;
    if provider.scopes.is_empty() {
        return if github {
            GITHUB_SCOPES
        } else {
            DEFAULT_SCOPES
        }
        .to_owned();
    }
    if github {
        return provider.scopes.join(" ");
    }
    let mut scopes = provider.scopes.clone();
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    scopes.join(" ")
}

/// What an authorization request carries besides the provider's own settings.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest<'a> {
    pub redirect_uri: &'a str,
    pub state: &'a str,
    /// OIDC only (GitHub has no ID token to carry it).
    pub nonce: Option<&'a str>,
    pub code_challenge: &'a str,
}

/// The URL the browser is sent to (OIDC Core 3.1.2.1, RFC 7636 4.3).
pub fn authorization_url(
    provider: &OAuthProvider,
    endpoints: &Endpoints,
    request: &AuthorizationRequest<'_>,
) -> Result<String, OAuthError> {
    let mut url = url::Url::parse(&endpoints.authorization_endpoint)
        .map_err(|e| OAuthError::BadResponse(format!("authorization_endpoint: {e}")))?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", request.redirect_uri)
            .append_pair("scope", &scopes(provider))
            .append_pair("state", request.state);
        if let Some(nonce) = request.nonce {
            query.append_pair("nonce", nonce);
        }
        query
            .append_pair("code_challenge", request.code_challenge)
            .append_pair("code_challenge_method", "S256");
    }
    Ok(url.into())
}

/// The token endpoint's request: headers and form body (RFC 6749 sections 2.3.1 and
/// 4.1.3). With `client_secret_basic` both halves of the credentials are form-encoded
/// before base64, as 2.3.1 says and as strict servers require. GitHub and LinkedIn take
/// credentials only in the form, so they always get them there.
pub fn token_request(
    provider: &OAuthProvider,
    code: &str,
    redirect_uri: &str,
    code_verifier: Option<&str>,
) -> (HeaderMap, Bytes) {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", redirect_uri);
    if let Some(verifier) = code_verifier {
        form.append_pair("code_verifier", verifier);
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let token_auth = match provider.kind {
        // LinkedIn's discovery lists client_secret_post alone.
        OAuthKind::Github | OAuthKind::Linkedin => TokenAuth::ClientSecretPost,
        OAuthKind::Google | OAuthKind::Oidc => provider.token_auth,
    };
    match token_auth {
        TokenAuth::ClientSecretBasic => {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let basic = STANDARD.encode(format!(
                "{}:{}",
                enc(&provider.client_id),
                enc(&provider.client_secret)
            ));
            if let Ok(mut value) = HeaderValue::from_str(&format!("Basic {basic}")) {
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        TokenAuth::ClientSecretPost => {
            form.append_pair("client_id", &provider.client_id)
                .append_pair("client_secret", &provider.client_secret);
        }
    }
    (headers, Bytes::from(form.finish()))
}

/// The tokens of a successful code exchange. No `Debug`: it holds them.
pub struct TokenSet {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
}

/// Reads a token endpoint answer: 2xx with JSON tokens, or an RFC 6749 5.2 error (which
/// GitHub sends with status 200).
pub fn token_response(status: http::StatusCode, body: &[u8]) -> Result<TokenSet, OAuthError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        id_token: Option<String>,
        access_token: Option<String>,
        error: Option<String>,
    }
    // Only the error code: the description may echo what was sent.
    fn code(error: String) -> String {
        error
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect()
    }
    let answer: Option<Answer> = serde_json::from_slice(body).ok();
    if status.is_success() {
        let answer =
            answer.ok_or_else(|| OAuthError::BadResponse("token answer is not JSON".into()))?;
        if let (Some(error), None) = (answer.error, &answer.access_token) {
            return Err(OAuthError::CodeRejected(code(error)));
        }
        return Ok(TokenSet {
            id_token: answer.id_token,
            access_token: answer.access_token,
        });
    }
    match answer.and_then(|a| a.error) {
        Some(error) if status.is_client_error() => Err(OAuthError::CodeRejected(code(error))),
        _ => Err(OAuthError::Unreachable(OutboundError::Status(status))),
    }
}

/// What the ID token must say.
#[derive(Debug, Clone)]
pub struct IdTokenExpectation<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The nonce sent in the authorization request; `None` when the flow was started
    /// elsewhere (the API flow: the app made the authorization request itself).
    pub nonce: Option<&'a str>,
    /// Seconds since the epoch.
    pub now_secs: i64,
}

fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<f64, IdTokenError> {
    claims
        .get(name)
        .and_then(Value::as_f64)
        .ok_or(IdTokenError::InvalidClaim(name))
}

/// The claim checks of OIDC Core 3.1.3.7 (signature aside, done before): `iss` exactly,
/// `aud` containing the client, `azp` equal to the client when present and required when
/// there are several audiences, `exp` ahead and `iat` recent (both numbers; 60 s leeway),
/// `nonce` equal to the one sent, `sub` a non-empty string.
pub fn check_id_token_claims(
    claims: &Map<String, Value>,
    expect: &IdTokenExpectation<'_>,
) -> Result<(), IdTokenError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss").map(|i| i.trim_end_matches('/')) != Some(expect.issuer) {
        return Err(IdTokenError::WrongIssuer);
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&expect.client_id) {
        return Err(IdTokenError::WrongAudience);
    }
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == expect.client_id => {}
        None if audiences.len() == 1 => {}
        _ => return Err(IdTokenError::WrongAuthorizedParty),
    }
    let exp = numeric(claims, "exp")?;
    if expect.now_secs >= (exp.floor() as i64).saturating_add(LEEWAY_SECS) {
        return Err(IdTokenError::Expired);
    }
    let iat = numeric(claims, "iat")?.floor() as i64;
    if iat > expect.now_secs.saturating_add(LEEWAY_SECS)
        || iat < expect.now_secs - MAX_ID_TOKEN_AGE_SECS - LEEWAY_SECS
    {
        return Err(IdTokenError::BadIssueTime);
    }
    if let Some(nonce) = expect.nonce
        && text("nonce") != Some(nonce)
    {
        return Err(IdTokenError::WrongNonce);
    }
    if text("sub").is_none_or(str::is_empty) {
        return Err(IdTokenError::InvalidClaim("sub"));
    }
    Ok(())
}

/// `email_verified` as a boolean; some providers send the string `"true"`.
fn flag(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The identity in checked ID token claims, completed from userinfo claims (already known to
/// speak of the same `sub`) where the ID token is silent. The email and its verified flag
/// come together from one source, never mixed.
pub fn identity(
    provider: &str,
    claims: &Map<String, Value>,
    userinfo: Option<&Map<String, Value>>,
) -> Result<ExternalIdentity, IdTokenError> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(IdTokenError::InvalidClaim("sub"))?;
    let email_source = [Some(claims), userinfo]
        .into_iter()
        .flatten()
        .find(|c| c.get("email").and_then(Value::as_str).is_some());
    let email = email_source
        .and_then(|c| c.get("email"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned);
    let email_verified =
        email.is_some() && flag(email_source.and_then(|c| c.get("email_verified")));
    let name = [Some(claims), userinfo]
        .into_iter()
        .flatten()
        .find_map(|c| {
            c.get("name")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .or_else(|| {
                    let given = c.get("given_name").and_then(Value::as_str).unwrap_or("");
                    let family = c.get("family_name").and_then(Value::as_str).unwrap_or("");
                    let full = format!("{given} {family}").trim().to_owned();
                    (!full.is_empty()).then_some(full)
                })
        });
    Ok(ExternalIdentity {
        provider: provider.to_owned(),
        subject: subject.to_owned(),
        email,
        email_verified,
        name,
    })
}

/// The identity in GitHub's `/user` and `/user/emails` answers: the numeric `id` as subject,
/// the primary address if GitHub verified it (else any verified one; else `/user`'s public
/// email, unverified), `name` or else `login`.
pub fn github_identity(
    provider: &str,
    user: &Map<String, Value>,
    emails: Option<&[Value]>,
) -> Result<ExternalIdentity, OAuthError> {
    let subject = match user.get("id") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(OAuthError::BadResponse("GitHub user without id".into())),
    };
    let listed = |primary: bool| {
        emails.unwrap_or_default().iter().find_map(|e| {
            let address = e.get("email")?.as_str()?;
            let ok = flag(e.get("verified"))
                && (!primary || e.get("primary").and_then(Value::as_bool) == Some(true));
            ok.then(|| address.to_owned())
        })
    };
    let (email, email_verified) = match listed(true).or_else(|| listed(false)) {
        Some(verified) => (Some(verified), true),
        None => (
            user.get("email")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
            false,
        ),
    };
    let text = |name: &str| {
        user.get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(ExternalIdentity {
        provider: provider.to_owned(),
        subject,
        email,
        email_verified,
        name: text("name").or_else(|| text("login")),
    })
}

/// A cached document and when it was fetched.
struct Cached {
    body: Bytes,
    fetched: Instant,
}

/// The provider client: discovery and JWKS caches over the gateway's outbound client.
/// Knows no config: each call names its provider, so a reload needs nothing here.
pub struct Client {
    outbound: Arc<Outbound>,
    /// Endpoints by provider name and issuer, and when they were discovered.
    discovery: Mutex<HashMap<String, (Arc<Endpoints>, Instant)>>,
    /// JWKS documents by `jwks_uri`, and the last refetch for an unknown `kid`.
    jwks: Mutex<HashMap<String, Cached>>,
    kid_refetch: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("oauth::Client").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// What a sign-in hands to [`Client::complete`].
pub struct Completion<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a str,
    pub code_verifier: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub now: UnixMillis,
}

impl Client {
    pub fn new(outbound: Arc<Outbound>) -> Client {
        Client {
            outbound,
            discovery: Mutex::new(HashMap::new()),
            jwks: Mutex::new(HashMap::new()),
            kid_refetch: Mutex::new(HashMap::new()),
        }
    }

    /// The provider's endpoints, from its discovery document (cached an hour).
    pub async fn endpoints(&self, provider: &OAuthProvider) -> Result<Arc<Endpoints>, OAuthError> {
        if provider.kind == OAuthKind::Github {
            return Ok(Arc::new(github_endpoints(provider)));
        }
        let issuer = issuer(provider)?;
        let key = format!("{}|{issuer}", provider.name);
        let cached = lock(&self.discovery).get(&key).cloned();
        if let Some((endpoints, at)) = &cached
            && at.elapsed() < CACHE_TTL
        {
            return Ok(endpoints.clone());
        }
        let url = format!("{issuer}/.well-known/openid-configuration");
        let fetched = match self.outbound.get_json(&url, MAX_DOCUMENT_BYTES).await {
            Ok(f) => f,
            Err(e) => {
                // Stale-if-error: a provider's hiccup does not stop sign-ins it already served.
                if let Some((endpoints, _)) = cached {
                    tracing::warn!(target: "gatehouse::oauth", provider = %provider.name, error = %e, "discovery refresh failed; using the cached document");
                    return Ok(endpoints);
                }
                return Err(e.into());
            }
        };
        let endpoints = Arc::new(endpoints_from_discovery(provider, &issuer, &fetched.body)?);
        lock(&self.discovery).insert(key, (endpoints.clone(), Instant::now()));
        Ok(endpoints)
    }

    async fn jwks(&self, uri: &str, refetch: bool) -> Result<Bytes, OAuthError> {
        if !refetch
            && let Some(c) = lock(&self.jwks).get(uri)
            && c.fetched.elapsed() < CACHE_TTL
        {
            return Ok(c.body.clone());
        }
        let body = self.outbound.get_json(uri, MAX_DOCUMENT_BYTES).await?.body;
        lock(&self.jwks).insert(
            uri.to_owned(),
            Cached {
                body: body.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(body)
    }

    /// Verifies the ID token's signature with the provider's JWKS; a `kid` the cached JWKS
    /// lacks refetches it (at most once a minute per provider) and tries again.
    async fn verify_signature(
        &self,
        jwks_uri: &str,
        token: &str,
        check: &dyn SignatureCheck,
        now: UnixMillis,
    ) -> Result<Map<String, Value>, OAuthError> {
        let jwks = self.jwks(jwks_uri, false).await?;
        match check.verify(&jwks, token, now) {
            Ok(claims) => Ok(claims),
            Err(SignatureError::UnknownKey) => {
                let due = {
                    let mut last = lock(&self.kid_refetch);
                    let due = last
                        .get(jwks_uri)
                        .is_none_or(|t| t.elapsed() >= KID_REFETCH_EVERY);
                    if due {
                        last.insert(jwks_uri.to_owned(), Instant::now());
                    }
                    due
                };
                if !due {
                    return Err(IdTokenError::Signature("unknown signing key".into()).into());
                }
                let jwks = self.jwks(jwks_uri, true).await?;
                check.verify(&jwks, token, now).map_err(|e| {
                    IdTokenError::Signature(match e {
                        SignatureError::UnknownKey => "unknown signing key".into(),
                        SignatureError::Invalid(why) => why,
                    })
                    .into()
                })
            }
            Err(SignatureError::Invalid(why)) => Err(IdTokenError::Signature(why).into()),
        }
    }

    /// Exchanges an authorization code and returns who signed in: token endpoint, ID token
    /// (signature, then claims), userinfo when the ID token carries no email.
    pub async fn complete(
        &self,
        provider: &OAuthProvider,
        input: &Completion<'_>,
        check: &dyn SignatureCheck,
    ) -> Result<ExternalIdentity, OAuthError> {
        let endpoints = self.endpoints(provider).await?;
        let (headers, body) = token_request(
            provider,
            input.code,
            input.redirect_uri,
            input.code_verifier,
        );
        let answer = self
            .outbound
            .send(
                Method::POST,
                &endpoints.token_endpoint,
                headers,
                Some(body),
                MAX_DOCUMENT_BYTES,
            )
            .await?;
        let tokens = token_response(answer.status, &answer.body)?;
        if provider.kind == OAuthKind::Github {
            let access_token = tokens
                .access_token
                .ok_or_else(|| OAuthError::BadResponse("no access_token".into()))?;
            return self.github(provider, &endpoints, &access_token).await;
        }
        let id_token = tokens.id_token.ok_or(IdTokenError::Missing)?;
        let claims = self
            .verify_signature(&endpoints.jwks_uri, &id_token, check, input.now)
            .await?;
        check_id_token_claims(
            &claims,
            &IdTokenExpectation {
                issuer: &endpoints.issuer,
                client_id: &provider.client_id,
                nonce: input.nonce,
                now_secs: input.now.div_euclid(1000),
            },
        )?;
        let userinfo = match (
            claims.contains_key("email"),
            &endpoints.userinfo_endpoint,
            &tokens.access_token,
        ) {
            (false, Some(url), Some(access_token)) => {
                Some(self.userinfo(url, access_token, &claims).await?)
            }
            _ => None,
        };
        Ok(identity(&provider.name, &claims, userinfo.as_ref())?)
    }

    /// GitHub's user behind an access token: `/user`, then `/user/emails` (the verified
    /// flags; without the `user:email` scope that call fails and the email is unverified).
    async fn github(
        &self,
        provider: &OAuthProvider,
        endpoints: &Endpoints,
        access_token: &str,
    ) -> Result<ExternalIdentity, OAuthError> {
        let user_url = endpoints
            .userinfo_endpoint
            .as_deref()
            .ok_or_else(|| OAuthError::BadResponse("no user endpoint".into()))?;
        let user = self.api_get(user_url, access_token).await?;
        let user: Map<String, Value> = serde_json::from_slice(&user)
            .map_err(|_| OAuthError::BadResponse("GitHub user is not a JSON object".into()))?;
        let emails = match &endpoints.emails_endpoint {
            Some(url) => match self.api_get(url, access_token).await {
                Ok(body) => serde_json::from_slice::<Vec<Value>>(&body).ok(),
                Err(OAuthError::Unreachable(OutboundError::Status(status)))
                    if status.is_client_error() =>
                {
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        github_identity(&provider.name, &user, emails.as_deref())
    }

    /// A GET with the access token; the body of a 2xx answer.
    async fn api_get(&self, url: &str, access_token: &str) -> Result<Bytes, OAuthError> {
        let mut headers = HeaderMap::new();
        let mut bearer = HeaderValue::from_str(&format!("Bearer {access_token}"))
            .map_err(|_| OAuthError::BadResponse("access token is not a header value".into()))?;
        bearer.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, bearer);
        let answer = self
            .outbound
            .send(Method::GET, url, headers, None, MAX_DOCUMENT_BYTES)
            .await?;
        if !answer.status.is_success() {
            return Err(OAuthError::Unreachable(OutboundError::Status(
                answer.status,
            )));
        }
        Ok(answer.body)
    }

    /// The userinfo claims (OIDC Core 5.3), which must name the ID token's subject.
    async fn userinfo(
        &self,
        url: &str,
        access_token: &str,
        id_claims: &Map<String, Value>,
    ) -> Result<Map<String, Value>, OAuthError> {
        let body = self.api_get(url, access_token).await?;
        let claims: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|_| OAuthError::BadResponse("userinfo is not a JSON object".into()))?;
        if claims.get("sub") != id_claims.get("sub") {
            return Err(IdTokenError::UserinfoSubject.into());
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests;
