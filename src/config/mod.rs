//! `gateway.yaml`: the validated, immutable configuration and how it is loaded.
//!
//! The YAML is parsed into a position-carrying tree (`node.rs`), `${NAME}` interpolation is
//! applied to scalars (`interpolate.rs`), and `decode.rs` walks the tree into these types,
//! collecting every problem as a [`Diagnostic`] with `file:line:column` instead of stopping at
//! the first. A `Config` is never mutated: a reload builds a new one and swaps it whole.
//! This module knows nothing of HTTP serving, stores or requests.

mod decode;
mod diagnostic;
mod interpolate;
mod node;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diagnostic::Diagnostic;
pub use interpolate::interpolate;
pub use units::{parse_duration, parse_size};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} error(s) in configuration", .0.len())]
    Invalid(Vec<Diagnostic>),
}

/// Reads and validates the config file, taking `${NAME}` values from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, &|name| std::env::var(name).ok()).map_err(ConfigError::Invalid)
}

/// Validates `source` (the text of `file`), resolving `${NAME}` through `env`.
/// Returns every problem found, in document order.
pub fn parse(
    source: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Diagnostic>> {
    decode::decode(source, file, env)
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (reloads re-read it).
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub limits: Limits,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub tokens: TokensConfig,
    pub cookies: CookieConfig,
    pub accounts: AccountsConfig,
    pub rate_limits: RateLimits,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line + headers) accepted; larger -> 431.
    pub max_header_bytes: u64,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// `log: { format: human|json, level: info }` (a Gatehouse extension to SPEC section 2).
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `gatehouse=debug,info`.
    pub level: String,
    /// One access-log line per request (on by default).
    pub access_log: bool,
}

#[derive(Clone)]
pub enum StoreConfig {
    Sqlite { path: PathBuf },
    Redis { url: String, cluster: bool },
}

// Hand-written, like the two below, so a logged config never shows a secret: URLs may carry
// a password.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            StoreConfig::Redis { url, cluster } => f
                .debug_struct("Redis")
                .field("url", &redact_url(url))
                .field("cluster", cluster)
                .finish(),
        }
    }
}

/// `scheme://user:<redacted>@host/...`: the URL without its password.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("<redacted>"));
            u.to_string()
        }
        Ok(_) => text.to_owned(),
        Err(_) => "<unparsable url>".to_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    EdDsa,
    Es256,
    Rs256,
}

#[derive(Debug, Clone)]
pub struct SigningConfig {
    pub alg: SigningAlg,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    pub issuer: String,
    pub jwks_uri: String,
    pub audience: Option<String>,
    /// Claim holding the roles (default `roles`).
    pub roles_claim: String,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub signing: SigningConfig,
    pub trusted_issuers: Vec<TrustedIssuer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    pub secure: bool,
    pub same_site: SameSite,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    Open,
    InviteOnly,
    AdminOnly,
}

#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_length: u32,
}

#[derive(Clone)]
pub struct EmailConfig {
    /// `smtp://`, `smtps://` or `smtp+starttls://` URL; absent = write to `outbox_dir`.
    pub smtp_url: Option<String>,
    pub from: String,
    pub outbox_dir: PathBuf,
    /// Files here (`verify_email.html`, `reset_password.subject.txt`, ...) replace the built-in
    /// mail templates of the same name; absent = built-in templates only.
    pub templates_dir: Option<PathBuf>,
    /// Base URL of the links in mails (`{link_base}/verify-email?token=...`); absent = the
    /// gateway's own account API (`tokens.issuer` + `accounts.prefix`). An app with its own
    /// pages points this at them.
    pub link_base: Option<String>,
    /// Mail a "new sign-in" notice when an account signs in from an address and browser
    /// none of its active sessions has (off by default).
    pub new_sign_in: bool,
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("from", &self.from)
            .field("outbox_dir", &self.outbox_dir)
            .field("templates_dir", &self.templates_dir)
            .field("link_base", &self.link_base)
            .field("new_sign_in", &self.new_sign_in)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthKind {
    Github,
    Google,
    Linkedin,
    Oidc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuth {
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Clone)]
pub struct OAuthProvider {
    /// The key under `accounts.oauth` (appears in `/auth/oauth/{name}/...`).
    pub name: String,
    pub kind: OAuthKind,
    pub client_id: String,
    pub client_secret: String,
    /// Required for `kind: oidc`; preset for google and linkedin.
    pub issuer: Option<String>,
    pub token_auth: TokenAuth,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub api_url: Option<String>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for OAuthProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthProvider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("token_auth", &self.token_auth)
            .field("authorize_url", &self.authorize_url)
            .field("token_url", &self.token_url)
            .field("userinfo_url", &self.userinfo_url)
            .field("api_url", &self.api_url)
            .field("scopes", &self.scopes)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AccountsConfig {
    pub prefix: String,
    pub registration: RegistrationMode,
    pub allowed_origins: Vec<String>,
    pub conceal_existing: bool,
    pub password: PasswordPolicy,
    pub require_email_verification: bool,
    pub email: EmailConfig,
    pub oauth: Vec<OAuthProvider>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    Credential,
    User,
    Ip,
}

/// How a limit is shared between replicas when the store is Redis (no effect on SQLite: one
/// process is exact already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    /// Every check is one Redis round trip (GCRA in a Lua script).
    Exact,
    /// Counted locally, reconciled with Redis in the background every few milliseconds.
    Approximate,
}

#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: LimitKey,
    /// Default `approximate`.
    pub mode: LimitMode,
}

#[derive(Debug, Clone)]
pub struct LoginLimit {
    pub attempts: u32,
    pub per: Duration,
    pub ip_attempts: u32,
    /// Default `exact`. Accepted for symmetry; shared login limits are always checked in the
    /// store (failed logins are rare and each already pays for argon2), see `ratelimit`.
    pub mode: LimitMode,
}

#[derive(Debug, Clone)]
pub struct SimpleLimit {
    pub requests: u32,
    pub per: Duration,
}

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub default: RateLimitPolicy,
    pub login: LoginLimit,
    pub register: SimpleLimit,
    pub email: SimpleLimit,
}

/// Which hosts a route answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// No `host` key: every host.
    Any,
    /// `api.example.com` (stored lower-case, without port).
    Exact(String),
    /// `*.example.com`: stored as the suffix `.example.com`, lower-case. Matches
    /// `a.example.com` and `a.b.example.com`, not `example.com`.
    Wildcard(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Public,
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ApiKey,
    Jwt,
    Cookie,
}

/// One upstream target, e.g. `http://127.0.0.1:9000`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port` (port filled in from the scheme when omitted).
    pub authority: http::uri::Authority,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub targets: Vec<Target>,
    /// Whole-request budget up to the response head.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// PEM file of extra CA certificates trusted for `https` targets (besides Mozilla's roots),
    /// for upstreams with a private CA. A Gatehouse extension to SPEC section 2.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub host: HostMatch,
    /// Always starts with `/`; default `/`.
    pub path_prefix: String,
    /// Empty = every method.
    pub methods: Vec<http::Method>,
    pub upstream: UpstreamConfig,
    pub auth: AuthMode,
    pub credentials: Vec<CredentialKind>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub allow_publishable_keys: bool,
    pub forward_credentials: bool,
    /// `None` = `rate_limits.default` applies.
    pub rate_limit: Option<RateLimitPolicy>,
    pub strip_prefix: Option<String>,
    pub identity_assertion: bool,
    pub max_body: Option<u64>,
}

impl Config {
    /// One line for `gatehouse check` and the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "{}: ok: {} route(s), listen {}, admin {}, store {}",
            self.source.display(),
            self.routes.len(),
            self.listen,
            self.admin_listen,
            match &self.store {
                StoreConfig::Sqlite { .. } => "sqlite",
                StoreConfig::Redis { .. } => "redis",
            }
        )
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let provider = OAuthProvider {
            name: "corp".into(),
            kind: OAuthKind::Oidc,
            client_id: "id".into(),
            client_secret: "s3cret-value".into(),
            issuer: None,
            token_auth: TokenAuth::ClientSecretBasic,
            authorize_url: None,
            token_url: None,
            userinfo_url: None,
            api_url: None,
            scopes: vec![],
        };
        let store = StoreConfig::Redis {
            url: "redis://app:s3cret-value@cache:6379/0".into(),
            cluster: false,
        };
        let email = EmailConfig {
            smtp_url: Some("smtps://mailer:s3cret-value@mail.example.com:465".into()),
            from: "a@b.c".into(),
            outbox_dir: "data/outbox".into(),
            templates_dir: None,
            link_base: None,
            new_sign_in: false,
        };
        for text in [
            format!("{provider:?}"),
            format!("{store:?}"),
            format!("{email:?}"),
        ] {
            assert!(!text.contains("s3cret-value"), "{text}");
        }
        assert!(format!("{store:?}").contains("app:"), "{store:?}");
    }
}
