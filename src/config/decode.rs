//! Walks the positioned YAML tree into a [`Config`], collecting every problem as it goes.
//!
//! Each section has one small function reading it through a [`MapReader`], which records which
//! keys were asked for, so unknown keys are reported without a separate key list, and whose
//! typed getters (`str`, `bool`, `u32`, `duration`, `size`, `choice`, `list_of`, ...) report a
//! bad value at its position and return `None`; the caller then falls back to the default (all
//! in [`defaults`]) and carries on, so one run finds every error. Adding a key is one line in
//! its section function plus a field in `mod.rs`.
//!
//! An optional key whose value is null, or empty after `${NAME}` interpolation, counts as unset
//! (so `smtp_url: ${SMTP_URL:-}` means "no SMTP"); a required one is then reported as empty.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::node::{self, Kind, Node, Pos};
use super::*;

/// Every default value of `gateway.yaml`, in one place.
mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    use super::super::{
        AuthMode, CredentialKind, LimitKey, LimitMode, LogFormat, RegistrationMode, SameSite,
        SigningAlg, TokenAuth,
    };

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
    pub const ADMIN_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));

    pub const MAX_HEADER_BYTES: u64 = 32 * 1024;
    pub const MAX_HEADER_BYTES_RANGE: (u64, u64) = (1024, 1024 * 1024);
    pub const DRAIN_TIMEOUT: Duration = secs(30);

    pub const LOG_FORMAT: LogFormat = LogFormat::Human;
    pub const LOG_LEVEL: &str = "info";
    pub const ACCESS_LOG: bool = true;

    pub const SQLITE_PATH: &str = "data/gatehouse.db";
    pub const REDIS_CLUSTER: bool = false;

    pub const CACHE_TTL: Duration = secs(60);
    pub const CACHE_NEGATIVE_TTL: Duration = secs(5);
    pub const CACHE_MAX_ENTRIES: u64 = 100_000;

    pub const ISSUER: &str = "http://localhost:8080";
    pub const AUDIENCE: &str = "gatehouse";
    pub const ACCESS_TTL: Duration = secs(3600);
    pub const REFRESH_TTL: Duration = secs(30 * 86_400);
    pub const REFRESH_REUSE_GRACE: Duration = secs(10);
    pub const SIGNING_ALG: SigningAlg = SigningAlg::EdDsa;
    pub const ROLES_CLAIM: &str = "roles";

    pub const COOKIE_NAME: &str = "gh_session";
    pub const COOKIE_SECURE: bool = true;
    pub const SAME_SITE: SameSite = SameSite::Lax;

    pub const ACCOUNTS_PREFIX: &str = "/auth";
    pub const REGISTRATION: RegistrationMode = RegistrationMode::Open;
    pub const CONCEAL_EXISTING: bool = false;
    pub const PASSWORD_MIN_LENGTH: u32 = 8;
    pub const REQUIRE_EMAIL_VERIFICATION: bool = false;
    pub const EMAIL_FROM: &str = "Gatehouse <no-reply@localhost>";
    pub const OUTBOX_DIR: &str = "data/outbox";
    pub const TOKEN_AUTH: TokenAuth = TokenAuth::ClientSecretBasic;

    pub const RATE_REQUESTS: u32 = 100;
    pub const RATE_PER: Duration = secs(1);
    pub const LIMIT_KEY: LimitKey = LimitKey::Credential;
    // Route limits are checked on every proxied request, where a Redis round trip costs as
    // much as the request itself; failed logins are rare and already pay for argon2.
    pub const ROUTE_LIMIT_MODE: LimitMode = LimitMode::Approximate;
    pub const LOGIN_LIMIT_MODE: LimitMode = LimitMode::Exact;
    pub const LOGIN_ATTEMPTS: u32 = 5;
    pub const LOGIN_PER: Duration = secs(15 * 60);
    pub const LOGIN_IP_ATTEMPTS: u32 = 100;
    pub const REGISTER_REQUESTS: u32 = 10;
    pub const REGISTER_PER: Duration = secs(3600);
    pub const EMAIL_REQUESTS: u32 = 5;
    pub const EMAIL_PER: Duration = secs(3600);

    pub const PATH_PREFIX: &str = "/";
    pub const UPSTREAM_TIMEOUT: Duration = secs(30);
    pub const CONNECT_TIMEOUT: Duration = secs(2);
    pub const AUTH: AuthMode = AuthMode::Required;
    pub const CREDENTIALS: [CredentialKind; 3] = [
        CredentialKind::ApiKey,
        CredentialKind::Jwt,
        CredentialKind::Cookie,
    ];
}

// The spellings accepted for each enumerated value, shown as-is in error messages.
const LOG_FORMATS: &[(&str, LogFormat)] = &[("human", LogFormat::Human), ("json", LogFormat::Json)];
const STORE_KINDS: &[(&str, StoreKind)] =
    &[("sqlite", StoreKind::Sqlite), ("redis", StoreKind::Redis)];
const SIGNING_ALGS: &[(&str, SigningAlg)] = &[
    ("EdDSA", SigningAlg::EdDsa),
    ("ES256", SigningAlg::Es256),
    ("RS256", SigningAlg::Rs256),
];
const SAME_SITES: &[(&str, SameSite)] = &[
    ("strict", SameSite::Strict),
    ("lax", SameSite::Lax),
    ("none", SameSite::None),
];
const REGISTRATION_MODES: &[(&str, RegistrationMode)] = &[
    ("open", RegistrationMode::Open),
    ("invite_only", RegistrationMode::InviteOnly),
    ("admin_only", RegistrationMode::AdminOnly),
];
const OAUTH_KINDS: &[(&str, OAuthKind)] = &[
    ("github", OAuthKind::Github),
    ("google", OAuthKind::Google),
    ("linkedin", OAuthKind::Linkedin),
    ("oidc", OAuthKind::Oidc),
];
const TOKEN_AUTHS: &[(&str, TokenAuth)] = &[
    ("client_secret_basic", TokenAuth::ClientSecretBasic),
    ("client_secret_post", TokenAuth::ClientSecretPost),
];
const LIMIT_KEYS: &[(&str, LimitKey)] = &[
    ("credential", LimitKey::Credential),
    ("user", LimitKey::User),
    ("ip", LimitKey::Ip),
];
const LIMIT_MODES: &[(&str, LimitMode)] = &[
    ("exact", LimitMode::Exact),
    ("approximate", LimitMode::Approximate),
];
const AUTH_MODES: &[(&str, AuthMode)] = &[
    ("public", AuthMode::Public),
    ("optional", AuthMode::Optional),
    ("required", AuthMode::Required),
];
const CREDENTIAL_KINDS: &[(&str, CredentialKind)] = &[
    ("api_key", CredentialKind::ApiKey),
    ("jwt", CredentialKind::Jwt),
    ("cookie", CredentialKind::Cookie),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Sqlite,
    Redis,
}

/// Parses and validates `source`, the text of `file`; see [`super::parse`].
pub(super) fn decode(
    source: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Diagnostic>> {
    let diagnostic = |pos: Pos, message: String| Diagnostic {
        file: file.to_path_buf(),
        line: pos.line,
        column: pos.column,
        message,
    };
    let root = node::parse(source).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| diagnostic(e.pos, e.message))
            .collect::<Vec<_>>()
    })?;
    let cx = Cx {
        env,
        errors: RefCell::new(Vec::new()),
    };
    let config = config(MapReader::root(&cx, &root), file);
    let mut errors = cx.errors.into_inner();
    if errors.is_empty() {
        return Ok(config);
    }
    // Stable, so two problems at one position keep the order they were found in.
    errors.sort_by_key(|(pos, _)| *pos);
    Err(errors
        .into_iter()
        .map(|(pos, message)| diagnostic(pos, message))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------

fn config(mut m: MapReader<'_>, file: &Path) -> Config {
    let listen = m.addr("listen").unwrap_or(defaults::LISTEN);
    let admin_listen = m.addr("admin_listen").unwrap_or(defaults::ADMIN_LISTEN);
    // Port 0 (any free port, as tests use) on both is fine: they get different ports.
    m.check(
        "admin_listen",
        listen != admin_listen || listen.port() == 0,
        "must differ from `listen` (the admin listener never serves proxied traffic)",
    );
    let tls = m.opt_section("tls").map(tls);
    let trusted_proxies = m
        .list_of("trusted_proxies", "a CIDR or IP address", parse_cidr)
        .unwrap_or_default();
    let limits = limits(m.section("limits"));
    let log = log(m.section("log"));
    let store = store(m.section("store"));
    let cache = cache(m.section("cache"));
    let tokens = tokens(m.section("tokens"));
    let cookies = cookies(m.section("cookies"));
    let accounts = accounts(m.section("accounts"));
    let rate_limits = rate_limits(m.section("rate_limits"));
    let routes = routes(m.cx, m.maps("routes"));
    m.finish();
    Config {
        source: file.to_path_buf(),
        listen,
        admin_listen,
        tls,
        trusted_proxies: values(trusted_proxies),
        limits,
        log,
        store,
        cache,
        tokens,
        cookies,
        accounts,
        rate_limits,
        routes,
    }
}

fn tls(mut m: MapReader<'_>) -> TlsConfig {
    let cert = m.required("cert", MapReader::file).unwrap_or_default();
    let key = m.required("key", MapReader::file).unwrap_or_default();
    m.finish();
    TlsConfig { cert, key }
}

fn limits(mut m: MapReader<'_>) -> Limits {
    let max_header_bytes = m
        .size("max_header_bytes")
        .unwrap_or(defaults::MAX_HEADER_BYTES);
    let (min, max) = defaults::MAX_HEADER_BYTES_RANGE;
    m.check(
        "max_header_bytes",
        (min..=max).contains(&max_header_bytes),
        "must be between 1KiB and 1MiB",
    );
    let drain_timeout = m
        .duration("drain_timeout")
        .unwrap_or(defaults::DRAIN_TIMEOUT);
    m.finish();
    Limits {
        max_header_bytes,
        drain_timeout,
    }
}

fn log(mut m: MapReader<'_>) -> LogConfig {
    let config = LogConfig {
        format: m
            .choice("format", LOG_FORMATS)
            .unwrap_or(defaults::LOG_FORMAT),
        level: m.str("level").unwrap_or_else(|| defaults::LOG_LEVEL.into()),
        access_log: m.bool("access_log").unwrap_or(defaults::ACCESS_LOG),
    };
    m.finish();
    config
}

fn store(mut m: MapReader<'_>) -> StoreConfig {
    let kind = m.choice("kind", STORE_KINDS);
    let config = match kind {
        Some(StoreKind::Redis) => {
            m.forbid("path", "only applies to `kind: sqlite`");
            StoreConfig::Redis {
                url: m
                    .required("url", |m, key| m.parsed(key, "a redis:// URL", redis_url))
                    .unwrap_or_default(),
                cluster: m.bool("cluster").unwrap_or(defaults::REDIS_CLUSTER),
            }
        }
        Some(StoreKind::Sqlite) | None => {
            if kind.is_some() || m.is_absent("kind") {
                m.forbid("url", "only applies to `kind: redis`");
                m.forbid("cluster", "only applies to `kind: redis`");
            } else {
                // The kind itself is wrong (already reported): which keys fit is unknowable.
                m.ignore("url");
                m.ignore("cluster");
            }
            StoreConfig::Sqlite {
                path: m
                    .path("path")
                    .unwrap_or_else(|| defaults::SQLITE_PATH.into()),
            }
        }
    };
    m.finish();
    config
}

fn cache(mut m: MapReader<'_>) -> CacheConfig {
    let config = CacheConfig {
        ttl: m.duration("ttl").unwrap_or(defaults::CACHE_TTL),
        negative_ttl: m
            .duration("negative_ttl")
            .unwrap_or(defaults::CACHE_NEGATIVE_TTL),
        max_entries: m.u64("max_entries").unwrap_or(defaults::CACHE_MAX_ENTRIES),
    };
    m.finish();
    config
}

fn tokens(mut m: MapReader<'_>) -> TokensConfig {
    let issuer = m
        .parsed("issuer", "a URL", http_url)
        .unwrap_or_else(|| defaults::ISSUER.into());
    let audience = m
        .str("audience")
        .unwrap_or_else(|| defaults::AUDIENCE.into());
    let access_ttl = m.duration("access_ttl").unwrap_or(defaults::ACCESS_TTL);
    m.check(
        "access_ttl",
        !access_ttl.is_zero(),
        "must be greater than 0",
    );
    let refresh_ttl = m.duration("refresh_ttl").unwrap_or(defaults::REFRESH_TTL);
    m.check(
        "refresh_ttl",
        !refresh_ttl.is_zero(),
        "must be greater than 0",
    );
    let refresh_reuse_grace = m
        .duration("refresh_reuse_grace")
        .unwrap_or(defaults::REFRESH_REUSE_GRACE);
    let signing = signing(m.section("signing"));
    let mut seen = std::collections::HashSet::new();
    let trusted_issuers = m
        .maps("trusted_issuers")
        .into_iter()
        .map(|m| trusted_issuer(m, &issuer, &mut seen))
        .collect();
    m.finish();
    TokensConfig {
        issuer,
        audience,
        access_ttl,
        refresh_ttl,
        refresh_reuse_grace,
        signing,
        trusted_issuers,
    }
}

fn signing(mut m: MapReader<'_>) -> SigningConfig {
    let config = SigningConfig {
        alg: m
            .choice("alg", SIGNING_ALGS)
            .unwrap_or(defaults::SIGNING_ALG),
        key_file: m.file("key_file"),
    };
    m.finish();
    config
}

fn trusted_issuer(
    mut m: MapReader<'_>,
    own_issuer: &str,
    seen: &mut std::collections::HashSet<String>,
) -> TrustedIssuer {
    let issuer = m.required("issuer", MapReader::str).unwrap_or_default();
    // Tokens are routed to an issuer's keys by their `iss`: it must name one issuer only.
    m.check(
        "issuer",
        issuer != own_issuer,
        "is `tokens.issuer`, Gatehouse's own tokens",
    );
    m.check(
        "issuer",
        issuer.is_empty() || seen.insert(issuer.clone()),
        "listed twice",
    );
    let config = TrustedIssuer {
        issuer,
        jwks_uri: m
            .required("jwks_uri", |m, key| m.parsed(key, "a URL", http_url))
            .unwrap_or_default(),
        audience: m.str("audience"),
        roles_claim: m
            .str("roles_claim")
            .unwrap_or_else(|| defaults::ROLES_CLAIM.into()),
    };
    m.finish();
    config
}

fn cookies(mut m: MapReader<'_>) -> CookieConfig {
    let name = m
        .parsed("name", "a cookie name", cookie_name)
        .unwrap_or_else(|| defaults::COOKIE_NAME.into());
    let secure = m.bool("secure").unwrap_or(defaults::COOKIE_SECURE);
    let same_site = m
        .choice("same_site", SAME_SITES)
        .unwrap_or(defaults::SAME_SITE);
    m.check(
        "same_site",
        same_site != SameSite::None || secure,
        "`none` requires `secure: true` (browsers drop SameSite=None cookies that are not Secure)",
    );
    let domain = m.parsed("domain", "a domain name", cookie_domain);
    m.finish();
    CookieConfig {
        name,
        secure,
        same_site,
        domain,
    }
}

fn accounts(mut m: MapReader<'_>) -> AccountsConfig {
    let prefix = m
        .parsed("prefix", "a path", accounts_prefix)
        .unwrap_or_else(|| defaults::ACCOUNTS_PREFIX.into());
    let registration = m
        .choice("registration", REGISTRATION_MODES)
        .unwrap_or(defaults::REGISTRATION);
    let allowed_origins = m
        .list_of("allowed_origins", "an origin", parse_origin)
        .unwrap_or_default();
    let conceal_existing = m
        .bool("conceal_existing")
        .unwrap_or(defaults::CONCEAL_EXISTING);
    let password = password(m.section("password"));
    let require_email_verification = m
        .bool("require_email_verification")
        .unwrap_or(defaults::REQUIRE_EMAIL_VERIFICATION);
    let email = email(m.section("email"));
    let oauth = oauth(&mut m);
    m.finish();
    AccountsConfig {
        prefix,
        registration,
        allowed_origins: values(allowed_origins),
        conceal_existing,
        password,
        require_email_verification,
        email,
        oauth,
    }
}

fn password(mut m: MapReader<'_>) -> PasswordPolicy {
    let min_length = m.u32("min_length").unwrap_or(defaults::PASSWORD_MIN_LENGTH);
    m.check("min_length", min_length >= 1, "must be at least 1");
    m.finish();
    PasswordPolicy { min_length }
}

fn email(mut m: MapReader<'_>) -> EmailConfig {
    let config = EmailConfig {
        smtp_url: m.parsed("smtp_url", "an smtp:// URL", smtp_url),
        from: m
            .parsed("from", "a mailbox", mailbox)
            .unwrap_or_else(|| defaults::EMAIL_FROM.into()),
        outbox_dir: m
            .path("outbox_dir")
            .unwrap_or_else(|| defaults::OUTBOX_DIR.into()),
        templates_dir: m.dir("templates_dir"),
        link_base: m.parsed("link_base", "a URL", http_url),
        new_sign_in: m.bool("new_sign_in").unwrap_or(false),
    };
    m.finish();
    config
}

fn oauth(accounts: &mut MapReader<'_>) -> Vec<OAuthProvider> {
    let Some(providers) = accounts.map_entries("oauth") else {
        return Vec::new();
    };
    let cx = accounts.cx;
    let mut out = Vec::new();
    for (name, key_pos, node) in providers {
        let path = format!("{}.oauth.{name}", accounts.path);
        if !is_provider_name(name) {
            cx.error(
                *key_pos,
                format!(
                    "invalid provider name `{name}` in `{}.oauth`: use lower-case letters, \
                     digits, `_` and `-`",
                    accounts.path
                ),
            );
        }
        if let Some(m) = MapReader::new(cx, path, node) {
            out.push(oauth_provider(name, m));
        }
    }
    out
}

fn oauth_provider(name: &str, mut m: MapReader<'_>) -> OAuthProvider {
    let builtin = OAUTH_KINDS
        .iter()
        .find(|(kind_name, kind)| *kind_name == name && *kind != OAuthKind::Oidc)
        .map(|&(_, kind)| kind);
    let kind = match builtin {
        Some(builtin) => {
            let kind = m.choice("kind", OAUTH_KINDS).unwrap_or(builtin);
            m.check(
                "kind",
                kind == builtin || kind == OAuthKind::Oidc,
                &format!("provider `{name}` can only be of kind {name} or oidc"),
            );
            kind
        }
        None => {
            let kind = m.required("kind", |m, key| m.choice(key, OAUTH_KINDS));
            m.check(
                "kind",
                kind.is_none_or(|kind| kind == OAuthKind::Oidc),
                "must be oidc for a provider not named github, google or linkedin",
            );
            kind.unwrap_or(OAuthKind::Oidc)
        }
    };
    let client_id = m.required("client_id", MapReader::str).unwrap_or_default();
    let client_secret = m
        .required("client_secret", MapReader::str)
        .unwrap_or_default();
    let issuer = if kind == OAuthKind::Oidc {
        m.required("issuer", |m, key| m.parsed(key, "a URL", http_url))
    } else {
        m.parsed("issuer", "a URL", http_url)
    };
    let token_auth = m
        .choice("token_auth", TOKEN_AUTHS)
        .unwrap_or(defaults::TOKEN_AUTH);
    let authorize_url = m.parsed("authorize_url", "a URL", http_url);
    let token_url = m.parsed("token_url", "a URL", http_url);
    let userinfo_url = m.parsed("userinfo_url", "a URL", http_url);
    let api_url = m.parsed("api_url", "a URL", http_url);
    let scopes = m.list_of("scopes", "a scope", scope).unwrap_or_default();
    m.finish();
    OAuthProvider {
        name: name.to_owned(),
        kind,
        client_id,
        client_secret,
        issuer,
        token_auth,
        authorize_url,
        token_url,
        userinfo_url,
        api_url,
        scopes: values(scopes),
    }
}

fn rate_limits(mut m: MapReader<'_>) -> RateLimits {
    let default = policy(
        m.section("default"),
        Some((defaults::RATE_REQUESTS, defaults::RATE_PER)),
    );
    let login = login_limit(m.section("login"));
    let register = simple_limit(
        m.section("register"),
        defaults::REGISTER_REQUESTS,
        defaults::REGISTER_PER,
    );
    let email = simple_limit(
        m.section("email"),
        defaults::EMAIL_REQUESTS,
        defaults::EMAIL_PER,
    );
    m.finish();
    RateLimits {
        default,
        login,
        register,
        email,
    }
}

/// A `{requests, per, burst, key}` policy; `fallback` gives `requests` and `per` defaults
/// (`rate_limits.default`), without it they are required (a route's own `rate_limit`).
fn policy(mut m: MapReader<'_>, fallback: Option<(u32, Duration)>) -> RateLimitPolicy {
    let (requests, per) = match fallback {
        Some((requests, per)) => (
            m.u32("requests").unwrap_or(requests),
            m.duration("per").unwrap_or(per),
        ),
        None => (
            m.required("requests", MapReader::u32).unwrap_or(1),
            m.required("per", MapReader::duration)
                .unwrap_or(defaults::RATE_PER),
        ),
    };
    m.check("requests", requests >= 1, "must be at least 1");
    m.check("per", !per.is_zero(), "must be greater than 0");
    let burst = m.u32("burst").unwrap_or(requests);
    m.check("burst", burst >= 1, "must be at least 1");
    let key = m.choice("key", LIMIT_KEYS).unwrap_or(defaults::LIMIT_KEY);
    let mode = m
        .choice("mode", LIMIT_MODES)
        .unwrap_or(defaults::ROUTE_LIMIT_MODE);
    m.finish();
    RateLimitPolicy {
        requests,
        per,
        burst,
        key,
        mode,
    }
}

fn login_limit(mut m: MapReader<'_>) -> LoginLimit {
    let attempts = m.u32("attempts").unwrap_or(defaults::LOGIN_ATTEMPTS);
    m.check("attempts", attempts >= 1, "must be at least 1");
    let per = m.duration("per").unwrap_or(defaults::LOGIN_PER);
    m.check("per", !per.is_zero(), "must be greater than 0");
    let ip_attempts = m.u32("ip_attempts").unwrap_or(defaults::LOGIN_IP_ATTEMPTS);
    m.check("ip_attempts", ip_attempts >= 1, "must be at least 1");
    let mode = m
        .choice("mode", LIMIT_MODES)
        .unwrap_or(defaults::LOGIN_LIMIT_MODE);
    m.finish();
    LoginLimit {
        attempts,
        per,
        ip_attempts,
        mode,
    }
}

fn simple_limit(mut m: MapReader<'_>, requests: u32, per: Duration) -> SimpleLimit {
    let requests = m.u32("requests").unwrap_or(requests);
    m.check("requests", requests >= 1, "must be at least 1");
    let per = m.duration("per").unwrap_or(per);
    m.check("per", !per.is_zero(), "must be greater than 0");
    m.finish();
    SimpleLimit { requests, per }
}

/// A decoded route with the positions the cross-route checks point at.
struct PlacedRoute {
    route: RouteConfig,
    name_pos: Pos,
    match_pos: Pos,
}

fn routes(cx: &Cx<'_>, maps: Vec<MapReader<'_>>) -> Vec<RouteConfig> {
    let placed: Vec<PlacedRoute> = maps.into_iter().map(route).collect();
    for (i, later) in placed.iter().enumerate() {
        let earlier = &placed[..i];
        let name = &later.route.name;
        let first_named = earlier.iter().find(|r| r.route.name == *name);
        if let Some(first) = first_named.filter(|_| !name.is_empty()) {
            cx.error(
                later.name_pos,
                format!(
                    "duplicate route name `{name}` (first used at line {})",
                    first.name_pos.line
                ),
            );
        }
        if let Some(j) = earlier
            .iter()
            .position(|r| same_match(&r.route, &later.route))
        {
            cx.error(
                later.match_pos,
                format!(
                    "route `{}` duplicates route `{}` (same host and path_prefix, overlapping \
                     methods)",
                    display_name(&later.route, i),
                    display_name(&placed[j].route, j)
                ),
            );
        }
    }
    placed.into_iter().map(|p| p.route).collect()
}

/// A route's name, or its place in the list when the name is missing.
fn display_name(route: &RouteConfig, index: usize) -> String {
    if route.name.is_empty() {
        format!("routes[{index}]")
    } else {
        route.name.clone()
    }
}

fn same_match(a: &RouteConfig, b: &RouteConfig) -> bool {
    a.host == b.host
        && a.path_prefix == b.path_prefix
        && (a.methods.is_empty()
            || b.methods.is_empty()
            || a.methods.iter().any(|m| b.methods.contains(m)))
}

fn route(mut m: MapReader<'_>) -> PlacedRoute {
    let name_pos = m.pos_of("name");
    let name = m
        .required("name", |m, key| m.parsed(key, "a route name", route_name))
        .unwrap_or_default();
    let match_pos = m.pos_of("match");
    let (host, path_prefix, methods) = match m.opt_section("match") {
        Some(mut mm) => {
            let host = mm
                .parsed("host", "a host name", parse_host)
                .unwrap_or(HostMatch::Any);
            let path_prefix = mm
                .parsed("path_prefix", "a path", absolute_path)
                .unwrap_or_else(|| defaults::PATH_PREFIX.into());
            let methods = mm.list_of("methods", "an HTTP method", parse_method);
            let methods = unique(&mm, "methods", methods.unwrap_or_default(), |m| {
                m.as_str().to_owned()
            });
            mm.finish();
            (host, path_prefix, methods)
        }
        None => (HostMatch::Any, defaults::PATH_PREFIX.into(), Vec::new()),
    };
    let upstream = match m.required("upstream", MapReader::opt_section) {
        Some(um) => upstream(um),
        None => UpstreamConfig {
            targets: Vec::new(),
            timeout: defaults::UPSTREAM_TIMEOUT,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            ca_file: None,
        },
    };
    let auth = m.choice("auth", AUTH_MODES).unwrap_or(defaults::AUTH);
    let credentials = match m.list_of("credentials", "a credential kind", |s| {
        choose(s, CREDENTIAL_KINDS)
    }) {
        Some(list) => {
            m.check(
                "credentials",
                !m.is_empty_list("credentials"),
                "must list at least one of api_key, jwt, cookie",
            );
            unique(&m, "credentials", list, |kind| {
                name_of(*kind, CREDENTIAL_KINDS).to_owned()
            })
        }
        None => defaults::CREDENTIALS.to_vec(),
    };
    let roles = m.list_of("roles", "a role", non_empty).unwrap_or_default();
    let scopes = m.list_of("scopes", "a scope", scope).unwrap_or_default();
    let allow_publishable_keys = m.bool("allow_publishable_keys").unwrap_or(false);
    let forward_credentials = m.bool("forward_credentials").unwrap_or(false);
    let rate_limit = m.opt_section("rate_limit").map(|rm| policy(rm, None));
    let strip_prefix = m.parsed("strip_prefix", "a path", absolute_path);
    if let Some(strip) = &strip_prefix {
        m.check(
            "strip_prefix",
            path_prefix.starts_with(strip.as_str()),
            &format!("must be a prefix of the route's path_prefix `{path_prefix}`"),
        );
    }
    let identity_assertion = m.bool("identity_assertion").unwrap_or(false);
    let max_body = m.size("max_body");
    m.finish();
    PlacedRoute {
        route: RouteConfig {
            name,
            host,
            path_prefix,
            methods,
            upstream,
            auth,
            credentials,
            roles: values(roles),
            scopes: values(scopes),
            allow_publishable_keys,
            forward_credentials,
            rate_limit,
            strip_prefix,
            identity_assertion,
            max_body,
        },
        name_pos,
        match_pos,
    }
}

fn upstream(mut m: MapReader<'_>) -> UpstreamConfig {
    let targets = m.required("targets", |m, key| {
        m.list_of(key, "an http:// or https:// URL", parse_target)
    });
    m.check(
        "targets",
        !m.is_empty_list("targets"),
        "must list at least one target",
    );
    let timeout = m.duration("timeout").unwrap_or(defaults::UPSTREAM_TIMEOUT);
    m.check("timeout", !timeout.is_zero(), "must be greater than 0");
    let connect_timeout = m
        .duration("connect_timeout")
        .unwrap_or(defaults::CONNECT_TIMEOUT);
    m.check(
        "connect_timeout",
        !connect_timeout.is_zero(),
        "must be greater than 0",
    );
    let ca_file = m.file("ca_file");
    m.finish();
    UpstreamConfig {
        targets: values(targets.unwrap_or_default()),
        timeout,
        connect_timeout,
        ca_file,
    }
}

/// Drops repeated list items, reporting each repeat at its position.
fn unique<T: PartialEq>(
    m: &MapReader<'_>,
    key: &str,
    items: Vec<(T, Pos)>,
    name: impl Fn(&T) -> String,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for (item, pos) in items {
        if out.contains(&item) {
            m.cx.error(
                pos,
                format!("`{}`: {} is listed twice", m.child(key), name(&item)),
            );
        } else {
            out.push(item);
        }
    }
    out
}

fn values<T>(items: Vec<(T, Pos)>) -> Vec<T> {
    items.into_iter().map(|(item, _)| item).collect()
}

// ---------------------------------------------------------------------------------------------
// Value parsers: text in, value or message out. The message is prefixed with the key's path.
// ---------------------------------------------------------------------------------------------

fn choose<T: Copy>(text: &str, options: &[(&str, T)]) -> Result<T, String> {
    options
        .iter()
        .find(|(name, _)| *name == text)
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            format!(
                "invalid value \"{text}\" (expected one of: {})",
                names.join(", ")
            )
        })
}

fn name_of<T: Copy + PartialEq>(value: T, options: &[(&'static str, T)]) -> &'static str {
    options
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("?", |(name, _)| name)
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("invalid address \"{text}\": expected IP:PORT such as 0.0.0.0:8080 or [::]:8080")
    })
}

fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>().map(ipnet::IpNet::from).map_err(|_| {
        format!("invalid network \"{text}\": expected a CIDR such as 10.0.0.0/8 or an IP address")
    })
}

fn existing_file(text: &str) -> Result<PathBuf, String> {
    match std::fs::metadata(text) {
        Ok(meta) if meta.is_dir() => Err(format!("\"{text}\" is a directory, not a file")),
        Ok(_) => Ok(PathBuf::from(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("file \"{text}\" does not exist"))
        }
        Err(e) => Err(format!("cannot read \"{text}\": {e}")),
    }
}

fn existing_dir(text: &str) -> Result<PathBuf, String> {
    match std::fs::metadata(text) {
        Ok(meta) if meta.is_dir() => Ok(PathBuf::from(text)),
        Ok(_) => Err(format!("\"{text}\" is a file, not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("directory \"{text}\" does not exist"))
        }
        Err(e) => Err(format!("cannot read \"{text}\": {e}")),
    }
}

/// An absolute `http(s)://` URL with a host, kept as written.
fn http_url(text: &str) -> Result<String, String> {
    let bad = || format!("invalid URL \"{text}\": expected an http:// or https:// URL");
    let uri: http::Uri = text.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if scheme_ok && host_ok {
        Ok(text.to_owned())
    } else {
        Err(bad())
    }
}

fn redis_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("redis://")
        .or_else(|| text.strip_prefix("rediss://"));
    if rest.is_some_and(|rest| !rest.is_empty()) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid Redis URL \"{text}\": expected redis://HOST[:PORT][/DB] or rediss://..."
        ))
    }
}

fn smtp_url(text: &str) -> Result<String, String> {
    let known = ["smtp://", "smtps://", "smtp+starttls://"];
    match known.iter().find(|scheme| text.starts_with(*scheme)) {
        Some(scheme) if text.len() > scheme.len() => Ok(text.to_owned()),
        _ => Err(format!(
            "invalid SMTP URL \"{text}\": expected smtp://, smtps:// or smtp+starttls://HOST[:PORT]"
        )),
    }
}

fn mailbox(text: &str) -> Result<String, String> {
    if text.contains('@') {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid sender \"{text}\": expected an address such as \
             \"Gatehouse <no-reply@example.com>\""
        ))
    }
}

/// `scheme://host[:port]`, normalized as browsers send it in `Origin`: lower-case, default port
/// dropped. A lone trailing `/` is tolerated because it names the same origin.
fn parse_origin(text: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "invalid origin \"{text}\": expected scheme://host[:port] such as \
             https://app.example.com"
        )
    };
    let uri: http::Uri = text.parse().map_err(|_| bad())?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(bad());
    };
    if authority.as_str().contains('@') || authority.host().is_empty() || text.contains('#') {
        return Err(bad());
    }
    let path = uri.path_and_query().map_or("", |pq| pq.as_str());
    if !(path.is_empty() || path == "/") {
        return Err(format!(
            "invalid origin \"{text}\": an origin has no path or query (use {scheme}://{authority})"
        ));
    }
    let scheme = scheme.to_ascii_lowercase();
    let host = authority.host().to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    Ok(match authority.port_u16() {
        Some(port) if Some(port) != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

fn cookie_name(text: &str) -> Result<String, String> {
    // RFC 6265 section 4.1.1: a cookie-name is an RFC 2616 token.
    let separator = |c: char| "()<>@,;:\\\"/[]?={} \t".contains(c);
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_graphic() && !separator(c)) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid cookie name \"{text}\": use letters, digits and `_` or `-`"
        ))
    }
}

fn cookie_domain(text: &str) -> Result<String, String> {
    let domain = text.to_ascii_lowercase();
    let bare = domain.strip_prefix('.').unwrap_or(&domain);
    if is_host_name(bare) {
        Ok(domain)
    } else {
        Err(format!(
            "invalid cookie domain \"{text}\": expected a domain name such as example.com"
        ))
    }
}

fn accounts_prefix(text: &str) -> Result<String, String> {
    let path = absolute_path(text)?;
    if path.ends_with('/') {
        return Err(format!(
            "invalid prefix \"{text}\": must not end with `/` (e.g. /auth)"
        ));
    }
    Ok(path)
}

fn absolute_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("invalid path \"{text}\": must start with `/`"));
    }
    if text.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
        return Err(format!(
            "invalid path \"{text}\": must not contain spaces, `?` or `#`"
        ));
    }
    Ok(text.to_owned())
}

fn route_name(text: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if text.chars().all(ok) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid route name \"{text}\": use letters, digits, `_`, `-` and `.`"
        ))
    }
}

fn is_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

fn scope(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(char::is_whitespace) {
        Err(format!(
            "invalid scope \"{text}\": scopes are single words (no spaces)"
        ))
    } else {
        Ok(text.to_owned())
    }
}

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        })
}

fn parse_host(text: &str) -> Result<HostMatch, String> {
    let host = text.to_ascii_lowercase();
    if let Some(suffix) = host.strip_prefix("*.") {
        if is_host_name(suffix) {
            return Ok(HostMatch::Wildcard(format!(".{suffix}")));
        }
    } else if host.contains('*') {
        return Err(format!(
            "invalid host \"{text}\": `*` is only allowed as the whole first label, as in \
             *.example.com"
        ));
    } else if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if inner.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(HostMatch::Exact(host));
        }
    } else if let Ok(ip) = host.parse::<std::net::Ipv6Addr>() {
        return Ok(HostMatch::Exact(format!("[{ip}]")));
    } else if host.contains(':') {
        return Err(format!(
            "invalid host \"{text}\": must not include a port (a route matches its host on \
             every port)"
        ));
    } else if is_host_name(&host) {
        return Ok(HostMatch::Exact(host));
    }
    Err(format!(
        "invalid host \"{text}\": expected a host name such as api.example.com or *.example.com"
    ))
}

fn parse_method(text: &str) -> Result<http::Method, String> {
    let upper = text.to_ascii_uppercase();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if upper.is_empty() || !upper.chars().all(token) {
        return Err(format!("invalid HTTP method \"{text}\""));
    }
    http::Method::from_bytes(upper.as_bytes())
        .map_err(|_| format!("invalid HTTP method \"{text}\""))
}

fn parse_target(text: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("invalid upstream target \"{text}\": {why}");
    let uri: http::Uri = text
        .parse()
        .map_err(|_| bad("expected a URL such as http://127.0.0.1:9000"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => http::uri::Scheme::HTTP,
        Some("https") => http::uri::Scheme::HTTPS,
        _ => return Err(bad("the scheme must be http:// or https://")),
    };
    let Some(authority) = uri.authority() else {
        return Err(bad("expected a URL such as http://127.0.0.1:9000"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if authority.host().is_empty() {
        return Err(bad("the host is missing"));
    }
    if uri.path() != "/" || uri.query().is_some() || text.contains('#') {
        return Err(bad(
            "a target is only scheme://host[:port], without path or query (use strip_prefix \
             to rewrite paths)",
        ));
    }
    let default_port = if scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    let port = authority.port_u16().unwrap_or(default_port);
    let host = authority.host().to_ascii_lowercase();
    let authority = http::uri::Authority::try_from(format!("{host}:{port}"))
        .map_err(|_| bad("invalid host"))?;
    Ok(Target { scheme, authority })
}

// ---------------------------------------------------------------------------------------------
// The toolkit
// ---------------------------------------------------------------------------------------------

/// What every reader shares: the environment for `${NAME}` and the problems found so far.
struct Cx<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    // A RefCell so nested readers can all report while their parents are still borrowed.
    errors: RefCell<Vec<(Pos, String)>>,
}

impl Cx<'_> {
    fn error(&self, pos: Pos, message: String) {
        self.errors.borrow_mut().push((pos, message));
    }

    /// The interpolated text of a scalar; `None` (after reporting) for anything else.
    fn text(&self, node: &Node, path: &str, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Scalar(raw) => match interpolate(raw, self.env) {
                Ok(text) => Some(text),
                Err(message) => {
                    self.error(node.pos, format!("`{path}`: {message}"));
                    None
                }
            },
            Kind::Null => None,
            Kind::Seq(_) | Kind::Map(_) => {
                self.error(
                    node.pos,
                    format!("`{path}`: expected {what}, found {}", node.describe()),
                );
                None
            }
        }
    }
}

/// Reads one YAML mapping, remembering which keys were asked for.
struct MapReader<'a> {
    cx: &'a Cx<'a>,
    /// Dotted path of this mapping, e.g. `routes[2].upstream`; empty at the top level.
    path: String,
    pos: Pos,
    entries: &'a [(String, Pos, Node)],
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'a> MapReader<'a> {
    fn root(cx: &'a Cx<'a>, node: &'a Node) -> MapReader<'a> {
        match &node.kind {
            Kind::Map(entries) => MapReader::over(cx, String::new(), node.pos, entries),
            _ => {
                cx.error(
                    node.pos,
                    format!(
                        "expected a mapping of settings (such as `listen: 0.0.0.0:8080`), \
                         found {}",
                        node.describe()
                    ),
                );
                MapReader::over(cx, String::new(), node.pos, &[])
            }
        }
    }

    /// A reader over `node`, or `None` (after reporting) when it is not a mapping.
    fn new(cx: &'a Cx<'a>, path: String, node: &'a Node) -> Option<MapReader<'a>> {
        match &node.kind {
            Kind::Map(entries) => Some(MapReader::over(cx, path, node.pos, entries)),
            Kind::Null => Some(MapReader::over(cx, path, node.pos, &[])),
            Kind::Scalar(_) | Kind::Seq(_) => {
                cx.error(
                    node.pos,
                    format!("`{path}`: expected a mapping, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn over(
        cx: &'a Cx<'a>,
        path: String,
        pos: Pos,
        entries: &'a [(String, Pos, Node)],
    ) -> MapReader<'a> {
        MapReader {
            cx,
            path,
            pos,
            entries,
            used: vec![false; entries.len()],
            known: Vec::new(),
        }
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _, _)| k == key)
    }

    /// The raw entry for `key` (null included), marking the key as known and consumed.
    fn entry(&mut self, key: &'static str) -> Option<&'a (String, Pos, Node)> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        let index = self.find(key)?;
        self.used[index] = true;
        self.entries.get(index)
    }

    /// The value of `key` unless absent or null.
    fn value(&mut self, key: &'static str) -> Option<&'a Node> {
        self.entry(key)
            .map(|(_, _, node)| node)
            .filter(|node| node.kind != Kind::Null)
    }

    /// Where to point at a problem with `key`: its value, or this mapping when it is absent.
    fn pos_of(&self, key: &str) -> Pos {
        self.find(key)
            .and_then(|i| self.entries.get(i))
            .map_or(self.pos, |(_, _, node)| node.pos)
    }

    /// Whether `key` holds `[]` (so a list whose items were all invalid is not reported twice).
    fn is_empty_list(&self, key: &str) -> bool {
        self.find(key)
            .and_then(|i| self.entries.get(i))
            .is_some_and(|(_, _, node)| node.kind == Kind::Seq(Vec::new()))
    }

    fn is_absent(&self, key: &str) -> bool {
        self.find(key)
            .and_then(|i| self.entries.get(i))
            .is_none_or(|(_, _, node)| node.kind == Kind::Null)
    }

    /// Reports `message` about `key`'s value unless `ok`.
    fn check(&self, key: &str, ok: bool, message: &str) {
        if !ok {
            self.cx.error(
                self.pos_of(key),
                format!("`{}`: {message}", self.child(key)),
            );
        }
    }

    /// Marks `key` as known and reports it, at the key, if present.
    fn forbid(&mut self, key: &'static str, why: &str) {
        if let Some((_, key_pos, _)) = self.entry(key) {
            self.cx
                .error(*key_pos, format!("`{}` {why}", self.child(key)));
        }
    }

    /// Marks `key` as known without reading it.
    fn ignore(&mut self, key: &'static str) {
        self.entry(key);
    }

    /// Reads a required key with `get`, reporting it missing (or empty) when `get` finds
    /// nothing and has not already reported why.
    fn required<T>(
        &mut self,
        key: &'static str,
        get: impl FnOnce(&mut Self, &'static str) -> Option<T>,
    ) -> Option<T> {
        let before = self.cx.errors.borrow().len();
        let value = get(self, key);
        if value.is_none() && self.cx.errors.borrow().len() == before {
            match self.find(key).and_then(|i| self.entries.get(i)) {
                Some((_, key_pos, node)) if node.kind == Kind::Null => self
                    .cx
                    .error(*key_pos, format!("`{}` must have a value", self.child(key))),
                Some((_, _, node)) => self
                    .cx
                    .error(node.pos, format!("`{}` must not be empty", self.child(key))),
                None => {
                    let message = if self.path.is_empty() {
                        format!("missing required key `{key}`")
                    } else {
                        format!("missing required key `{key}` in `{}`", self.path)
                    };
                    self.cx.error(self.pos, message);
                }
            }
        }
        value
    }

    /// Interpolates the scalar at `key` and hands it to `parse`; `what` names the expected kind
    /// of value for type errors. Empty text counts as unset.
    fn parsed<T>(
        &mut self,
        key: &'static str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let node = self.value(key)?;
        let path = self.child(key);
        let text = self.cx.text(node, &path, what)?;
        if text.is_empty() {
            return None;
        }
        parse(&text)
            .map_err(|message| self.cx.error(node.pos, format!("`{path}`: {message}")))
            .ok()
    }

    fn str(&mut self, key: &'static str) -> Option<String> {
        self.parsed(key, "a string", |s| Ok(s.to_owned()))
    }

    fn path(&mut self, key: &'static str) -> Option<PathBuf> {
        self.parsed(key, "a path", |s| Ok(PathBuf::from(s)))
    }

    /// A path to a file that must exist (relative paths are relative to the working directory,
    /// as the server opens them).
    fn file(&mut self, key: &'static str) -> Option<PathBuf> {
        self.parsed(key, "a file path", existing_file)
    }

    /// A path to a directory that must exist (relative to the working directory).
    fn dir(&mut self, key: &'static str) -> Option<PathBuf> {
        self.parsed(key, "a directory path", existing_dir)
    }

    fn bool(&mut self, key: &'static str) -> Option<bool> {
        self.parsed(key, "true or false", |s| {
            if s.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if s.eq_ignore_ascii_case("false") {
                Ok(false)
            } else {
                Err(format!("expected true or false, found \"{s}\""))
            }
        })
    }

    fn u64(&mut self, key: &'static str) -> Option<u64> {
        self.parsed(key, "a whole number", |s| whole_number(s, u64::MAX))
    }

    fn u32(&mut self, key: &'static str) -> Option<u32> {
        self.parsed(key, "a whole number", |s| {
            whole_number(s, u32::MAX.into())
                .and_then(|n| u32::try_from(n).map_err(|e| e.to_string()))
        })
    }

    fn duration(&mut self, key: &'static str) -> Option<Duration> {
        self.parsed(key, "a duration", parse_duration)
    }

    fn size(&mut self, key: &'static str) -> Option<u64> {
        self.parsed(key, "a size", parse_size)
    }

    fn addr(&mut self, key: &'static str) -> Option<SocketAddr> {
        self.parsed(key, "an address", parse_addr)
    }

    fn choice<T: Copy>(&mut self, key: &'static str, options: &[(&str, T)]) -> Option<T> {
        self.parsed(key, "a string", |s| choose(s, options))
    }

    /// A list of scalars, each parsed by `parse`, with their positions. Bad items are reported
    /// and left out; `None` when the key is absent or not a list.
    fn list_of<T>(
        &mut self,
        key: &'static str,
        what: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<(T, Pos)>> {
        let items = self.seq(key)?;
        let path = self.child(key);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let parsed = match self.cx.text(item, &item_path, what) {
                Some(text) if text.is_empty() => Err("must not be empty".to_owned()),
                Some(text) => parse(&text),
                None if item.kind == Kind::Null => Err(format!("expected {what}, found null")),
                None => continue,
            };
            match parsed {
                Ok(value) => out.push((value, item.pos)),
                Err(message) => self.cx.error(item.pos, format!("`{item_path}`: {message}")),
            }
        }
        Some(out)
    }

    fn seq(&mut self, key: &'static str) -> Option<&'a [Node]> {
        let node = self.value(key)?;
        match &node.kind {
            Kind::Seq(items) => Some(items),
            _ => {
                self.cx.error(
                    node.pos,
                    format!(
                        "`{}`: expected a list, found {}",
                        self.child(key),
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    /// A list of mappings (e.g. `routes`), one reader each; other items are reported.
    fn maps(&mut self, key: &'static str) -> Vec<MapReader<'a>> {
        let Some(items) = self.seq(key) else {
            return Vec::new();
        };
        let path = self.child(key);
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item.kind {
                Kind::Map(_) => MapReader::new(self.cx, format!("{path}[{i}]"), item),
                _ => {
                    self.cx.error(
                        item.pos,
                        format!(
                            "`{path}[{i}]`: expected a mapping, found {}",
                            item.describe()
                        ),
                    );
                    None
                }
            })
            .collect()
    }

    /// The entries of a mapping whose keys are names chosen by the user (`accounts.oauth`).
    fn map_entries(&mut self, key: &'static str) -> Option<&'a [(String, Pos, Node)]> {
        let node = self.value(key)?;
        match &node.kind {
            Kind::Map(entries) => Some(entries),
            _ => {
                self.cx.error(
                    node.pos,
                    format!(
                        "`{}`: expected a mapping, found {}",
                        self.child(key),
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    /// An optional nested section: `None` when absent or null (or, reported, not a mapping).
    fn opt_section(&mut self, key: &'static str) -> Option<MapReader<'a>> {
        let node = self.value(key)?;
        MapReader::new(self.cx, self.child(key), node)
    }

    /// A nested section with defaults: an empty reader when absent, null or not a mapping.
    fn section(&mut self, key: &'static str) -> MapReader<'a> {
        let pos = self.pos_of(key);
        self.opt_section(key)
            .unwrap_or_else(|| MapReader::over(self.cx, self.child(key), pos, &[]))
    }

    /// Reports every key that no getter asked for.
    fn finish(self) {
        for ((key, key_pos, _), used) in self.entries.iter().zip(&self.used) {
            if *used {
                continue;
            }
            let expected = self.known.join(", ");
            let message = if self.path.is_empty() {
                format!("unknown top-level key `{key}` (expected one of: {expected})")
            } else {
                format!(
                    "unknown key `{key}` in `{}` (expected one of: {expected})",
                    self.path
                )
            };
            self.cx.error(*key_pos, message);
        }
    }
}

fn whole_number(text: &str, max: u64) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a whole number, found \"{text}\""));
    }
    match text.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("{text} is too large (at most {max})")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "GITHUB_SECRET" => Some("from-env".into()),
            "PORT" => Some("7070".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse_ok(yaml: &str) -> Config {
        match decode(yaml, Path::new("g.yaml"), &env) {
            Ok(config) => config,
            Err(errors) => panic!("unexpected errors: {errors:#?}"),
        }
    }

    /// Every diagnostic as `LINE:COLUMN: message`.
    fn errors(yaml: &str) -> Vec<String> {
        match decode(yaml, Path::new("g.yaml"), &env) {
            Ok(_) => panic!("expected errors for:\n{yaml}"),
            Err(errors) => errors
                .iter()
                .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
                .collect(),
        }
    }

    fn one_error(yaml: &str) -> String {
        let mut all = errors(yaml);
        assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
        all.remove(0)
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn route_yaml(body: &str) -> String {
        format!("routes:\n  - name: r\n    upstream: {{ targets: [http://up] }}\n{body}")
    }

    #[test]
    fn empty_file_gives_every_default() {
        let c = parse_ok("");
        assert_eq!(c.source, PathBuf::from("g.yaml"));
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert!(c.tls.is_none());
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.limits.max_header_bytes, 32 * 1024);
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.log.format, LogFormat::Human);
        assert_eq!(c.log.level, "info");
        assert!(c.log.access_log);
        assert!(
            matches!(&c.store, StoreConfig::Sqlite { path } if path == Path::new("data/gatehouse.db"))
        );
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(5));
        assert_eq!(c.cache.max_entries, 100_000);
        assert_eq!(c.tokens.issuer, "http://localhost:8080");
        assert_eq!(c.tokens.audience, "gatehouse");
        assert_eq!(c.tokens.access_ttl, Duration::from_secs(3600));
        assert_eq!(c.tokens.refresh_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.tokens.refresh_reuse_grace, Duration::from_secs(10));
        assert_eq!(c.tokens.signing.alg, SigningAlg::EdDsa);
        assert!(c.tokens.signing.key_file.is_none());
        assert!(c.tokens.trusted_issuers.is_empty());
        assert_eq!(c.cookies.name, "gh_session");
        assert!(c.cookies.secure);
        assert_eq!(c.cookies.same_site, SameSite::Lax);
        assert!(c.cookies.domain.is_none());
        let a = &c.accounts;
        assert_eq!(a.prefix, "/auth");
        assert_eq!(a.registration, RegistrationMode::Open);
        assert!(a.allowed_origins.is_empty());
        assert!(!a.conceal_existing);
        assert_eq!(a.password.min_length, 8);
        assert!(!a.require_email_verification);
        assert!(a.email.smtp_url.is_none());
        assert_eq!(a.email.from, "Gatehouse <no-reply@localhost>");
        assert_eq!(a.email.outbox_dir, PathBuf::from("data/outbox"));
        assert!(a.email.templates_dir.is_none());
        assert!(a.oauth.is_empty());
        let r = &c.rate_limits;
        assert_eq!(
            (
                r.default.requests,
                r.default.per,
                r.default.burst,
                r.default.key
            ),
            (100, Duration::from_secs(1), 100, LimitKey::Credential)
        );
        assert_eq!(
            (r.login.attempts, r.login.per, r.login.ip_attempts),
            (5, Duration::from_secs(900), 100)
        );
        assert_eq!(
            (r.register.requests, r.register.per),
            (10, Duration::from_secs(3600))
        );
        assert_eq!(
            (r.email.requests, r.email.per),
            (5, Duration::from_secs(3600))
        );
        assert!(c.routes.is_empty());
        assert!(c.summary().contains("0 route(s)"));
    }

    #[test]
    fn null_sections_and_empty_route_list_are_fine() {
        let c = parse_ok("limits:\ntokens: ~\nroutes: []\ncookies: { domain: null }\n");
        assert!(c.routes.is_empty());
        assert!(c.cookies.domain.is_none());
    }

    #[test]
    fn full_fixture_sets_every_key() {
        let path = fixture("valid-full.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = match decode(&text, &path, &env) {
            Ok(c) => c,
            Err(errors) => panic!(
                "{}",
                errors.iter().map(|e| format!("{e}\n")).collect::<String>()
            ),
        };
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9091");
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.cert, PathBuf::from("tests/fixtures/tls/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("tests/fixtures/tls/key.pem"));
        let proxies: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(proxies, ["10.0.0.0/8", "192.168.1.10/32", "fd00::/8"]);
        assert_eq!(c.limits.max_header_bytes, 64 * 1024);
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(45));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "gatehouse=debug,info");
        assert!(!c.log.access_log);
        assert!(
            matches!(&c.store, StoreConfig::Sqlite { path } if path == Path::new("data/test-gatehouse.db"))
        );
        assert_eq!(c.cache.max_entries, 50_000);
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(2));
        let t = &c.tokens;
        assert_eq!(t.issuer, "https://auth.example.com");
        assert_eq!(t.audience, "example-api");
        assert_eq!(t.access_ttl, Duration::from_secs(900));
        assert_eq!(t.refresh_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(t.refresh_reuse_grace, Duration::from_secs(5));
        assert_eq!(
            t.signing.key_file.as_deref(),
            Some(Path::new("tests/fixtures/tls/signing-ed25519.pem"))
        );
        assert_eq!(t.trusted_issuers.len(), 2);
        assert_eq!(t.trusted_issuers[0].audience.as_deref(), Some("api"));
        assert_eq!(t.trusted_issuers[0].roles_claim, "roles");
        assert_eq!(t.trusted_issuers[1].roles_claim, "realm_roles");
        assert!(t.trusted_issuers[1].audience.is_none());
        assert_eq!(c.cookies.same_site, SameSite::Strict);
        assert_eq!(c.cookies.domain.as_deref(), Some("example.com"));
        let a = &c.accounts;
        assert_eq!(a.registration, RegistrationMode::InviteOnly);
        assert_eq!(
            a.allowed_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert!(a.conceal_existing && a.require_email_verification);
        assert_eq!(a.password.min_length, 12);
        assert_eq!(a.email.smtp_url.as_deref(), Some("smtp://127.0.0.1:2525"));
        assert_eq!(a.email.from, "Example <no-reply@example.com>");
        let names: Vec<&str> = a.oauth.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["github", "google", "linkedin", "corp"]);
        let kinds: Vec<OAuthKind> = a.oauth.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                OAuthKind::Github,
                OAuthKind::Google,
                OAuthKind::Linkedin,
                OAuthKind::Oidc
            ]
        );
        assert_eq!(a.oauth[0].client_secret, "from-env");
        assert_eq!(a.oauth[0].scopes, ["read:user", "user:email"]);
        assert_eq!(a.oauth[1].token_auth, TokenAuth::ClientSecretPost);
        let corp = &a.oauth[3];
        assert_eq!(corp.client_secret, "dev-corp-secret");
        assert_eq!(corp.issuer.as_deref(), Some("https://sso.example.com"));
        assert_eq!(corp.token_auth, TokenAuth::ClientSecretBasic);
        assert_eq!(
            corp.userinfo_url.as_deref(),
            Some("https://sso.example.com/userinfo")
        );
        assert_eq!(corp.api_url.as_deref(), Some("https://sso.example.com/api"));
        assert_eq!(c.rate_limits.default.burst, 200);
        assert_eq!(c.routes.len(), 3);
        let api = &c.routes[0];
        assert_eq!(api.host, HostMatch::Exact("api.example.com".into()));
        assert_eq!(api.path_prefix, "/api/");
        assert_eq!(api.methods, [http::Method::GET, http::Method::POST]);
        assert_eq!(api.upstream.targets[0].authority.as_str(), "127.0.0.1:9000");
        assert_eq!(api.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(api.credentials, defaults::CREDENTIALS);
        assert_eq!(api.roles, ["user"]);
        assert!(api.scopes.is_empty());
        let limit = api.rate_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests, limit.burst, limit.key),
            (50, 100, LimitKey::User)
        );
        assert_eq!(api.strip_prefix.as_deref(), Some("/api"));
        assert!(api.identity_assertion);
        assert_eq!(api.max_body, Some(10 << 20));
        let tenants = &c.routes[1];
        assert_eq!(tenants.host, HostMatch::Wildcard(".example.com".into()));
        assert_eq!(tenants.methods, [http::Method::GET, http::Method::HEAD]);
        let targets: Vec<String> = tenants
            .upstream
            .targets
            .iter()
            .map(|t| format!("{}://{}", t.scheme, t.authority))
            .collect();
        assert_eq!(
            targets,
            ["https://backend.internal:443", "http://[::1]:9001"]
        );
        assert_eq!(tenants.auth, AuthMode::Optional);
        assert_eq!(
            tenants.credentials,
            [CredentialKind::Jwt, CredentialKind::Cookie]
        );
        assert!(tenants.allow_publishable_keys && tenants.forward_credentials);
        assert_eq!(tenants.max_body, Some(1_000_000));
        let public = &c.routes[2];
        assert_eq!(public.host, HostMatch::Any);
        assert_eq!(public.path_prefix, "/");
        assert!(public.methods.is_empty());
        assert_eq!(public.auth, AuthMode::Public);
        assert!(public.rate_limit.is_none());
    }

    #[test]
    fn three_errors_fixture_matches_expected_output() {
        let text = std::fs::read_to_string(fixture("three-errors.yaml")).unwrap();
        let expected = std::fs::read_to_string(fixture("three-errors.expected")).unwrap();
        let errors =
            decode(&text, Path::new("tests/fixtures/three-errors.yaml"), &env).unwrap_err();
        let printed: String = errors.iter().map(|e| format!("{e}\n")).collect();
        assert_eq!(printed, expected);
    }

    #[test]
    fn errors_everywhere_are_all_reported_in_document_order() {
        let yaml = "\
routes:
  - name: a
    upstream: { targets: [ftp://x] }
listen: nowhere
limits: { max_header_bytes: 2MiB }
bogus: 1
";
        assert_eq!(
            errors(yaml),
            [
                "3:27: `routes[0].upstream.targets[0]`: invalid upstream target \"ftp://x\": \
                 the scheme must be http:// or https://",
                "4:9: `listen`: invalid address \"nowhere\": expected IP:PORT such as \
                 0.0.0.0:8080 or [::]:8080",
                "5:29: `limits.max_header_bytes`: must be between 1KiB and 1MiB",
                "6:1: unknown top-level key `bogus` (expected one of: listen, admin_listen, tls, \
                 trusted_proxies, limits, log, store, cache, tokens, cookies, accounts, \
                 rate_limits, routes)",
            ]
        );
    }

    #[test]
    fn yaml_syntax_error_is_one_diagnostic() {
        let all = errors("listen: [1, 2\nadmin_listen: x\n");
        assert_eq!(all.len(), 1);
        assert!(all[0].contains("invalid YAML"), "{all:?}");
        assert_eq!(one_error("a: 1\na: 2\n"), "2:1: duplicate key `a`");
    }

    #[test]
    fn root_must_be_a_mapping() {
        assert!(one_error("- a\n- b\n").starts_with("1:1: expected a mapping of settings"));
    }

    #[test]
    fn unknown_keys_are_reported_at_the_key() {
        assert_eq!(
            one_error("limits:\n  max_header_bytes: 8KiB\n  foo: 1\n"),
            "3:3: unknown key `foo` in `limits` (expected one of: max_header_bytes, drain_timeout)"
        );
        assert!(one_error(&route_yaml("    matchh: {}\n")).starts_with(
            "4:5: unknown key `matchh` in `routes[0]` (expected one of: name, match, upstream,"
        ));
    }

    #[test]
    fn wrong_types_are_reported_at_the_value() {
        assert_eq!(
            one_error("limits: [1]\n"),
            "1:9: `limits`: expected a mapping, found a list"
        );
        assert_eq!(
            one_error("limits: 32KiB\n"),
            "1:9: `limits`: expected a mapping, found \"32KiB\""
        );
        assert_eq!(
            one_error("trusted_proxies: 10.0.0.0/8\n"),
            "1:18: `trusted_proxies`: expected a list, found \"10.0.0.0/8\""
        );
        assert_eq!(
            one_error("log: { level: { a: 1 } }\n"),
            "1:15: `log.level`: expected a string, found a mapping"
        );
        assert_eq!(
            one_error("routes: [ 1 ]\n"),
            "1:11: `routes[0]`: expected a mapping, found \"1\""
        );
    }

    #[test]
    fn scalar_value_errors() {
        assert_eq!(
            one_error("cookies: { secure: yes }\n"),
            "1:20: `cookies.secure`: expected true or false, found \"yes\""
        );
        assert_eq!(
            one_error("cache: { max_entries: -3 }\n"),
            "1:23: `cache.max_entries`: expected a whole number, found \"-3\""
        );
        assert_eq!(
            one_error("accounts: { password: { min_length: 4294967296 } }\n"),
            "1:37: `accounts.password.min_length`: 4294967296 is too large (at most 4294967295)"
        );
        assert_eq!(
            one_error("cache: { ttl: 1h30 }\n"),
            "1:15: `cache.ttl`: invalid duration \"1h30\": missing unit after 30; expected e.g. \
             500ms, 30s, 15m, 7d"
        );
        assert_eq!(
            one_error("limits: { max_header_bytes: 10KB2 }\n"),
            "1:29: `limits.max_header_bytes`: invalid size \"10KB2\": expected e.g. 512B, 64KiB, \
             10MiB, 1GiB"
        );
        assert_eq!(
            one_error("log: { format: xml }\n"),
            "1:16: `log.format`: invalid value \"xml\" (expected one of: human, json)"
        );
        assert_eq!(
            one_error("tokens: { signing: { alg: HS256 } }\n"),
            "1:27: `tokens.signing.alg`: invalid value \"HS256\" (expected one of: EdDSA, ES256, \
             RS256)"
        );
    }

    #[test]
    fn interpolation_applies_to_values_and_errors_point_at_them() {
        let c = parse_ok("listen: \"127.0.0.1:${PORT}\"\nadmin_listen: ${ADMIN:-127.0.0.1:9999}\n");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9999");
        assert_eq!(
            one_error("log:\n  level: ${LOG_LEVEL}\n"),
            "2:10: `log.level`: environment variable LOG_LEVEL is not set"
        );
        assert!(
            one_error("trusted_proxies: [\"${A\"]\n")
                .starts_with("1:19: `trusted_proxies[0]`: unterminated `${`")
        );
        // An empty optional value is unset; an empty value with a default takes the default.
        let c = parse_ok("accounts: { email: { smtp_url: \"${EMPTY}\" } }\nlog: { level: '' }\n");
        assert!(c.accounts.email.smtp_url.is_none());
        assert_eq!(c.log.level, "info");
        // As `gatehouse check` sees it in tests/it/check.rs.
        assert_eq!(
            one_error(
                "listen: ${GH_TEST_LISTEN:-127.0.0.1:7777}\nadmin_listen: \"${GH_TEST_UNSET_ADMIN}\"\n"
            ),
            "2:15: `admin_listen`: environment variable GH_TEST_UNSET_ADMIN is not set"
        );
        // Keys are never interpolated.
        assert!(one_error("${PORT}: 1\n").starts_with("1:1: unknown top-level key `${PORT}`"));
    }

    #[test]
    fn tls_needs_existing_cert_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "x").unwrap();
        let c = parse_ok(&format!(
            "tls: {{ cert: \"{}\", key: \"{}\" }}\n",
            cert.display(),
            cert.display()
        ));
        assert_eq!(c.tls.unwrap().cert, cert);
        assert_eq!(
            errors("tls:\n  cert: /nonexistent/c.pem\n"),
            [
                "2:3: missing required key `key` in `tls`",
                "2:9: `tls.cert`: file \"/nonexistent/c.pem\" does not exist",
            ]
        );
        assert_eq!(
            one_error(&format!(
                "tls: {{ cert: \"{}\", key: \"{}\" }}\n",
                cert.display(),
                dir.path().display()
            ))
            .split_once(": ")
            .unwrap()
            .1,
            format!(
                "`tls.key`: \"{}\" is a directory, not a file",
                dir.path().display()
            )
        );
        assert_eq!(
            one_error("tokens: { signing: { key_file: nope.pem } }\n"),
            "1:32: `tokens.signing.key_file`: file \"nope.pem\" does not exist"
        );
    }

    #[test]
    fn email_templates_dir_must_be_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse_ok(&format!(
            "accounts: {{ email: {{ templates_dir: \"{}\" }} }}\n",
            dir.path().display()
        ));
        assert_eq!(c.accounts.email.templates_dir.as_deref(), Some(dir.path()));
        assert_eq!(
            one_error("accounts: { email: { templates_dir: /nonexistent/mail } }\n"),
            "1:37: `accounts.email.templates_dir`: directory \"/nonexistent/mail\" does not exist"
        );
        let file = dir.path().join("welcome.html");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(
            one_error(&format!(
                "accounts: {{ email: {{ templates_dir: \"{}\" }} }}\n",
                file.display()
            ))
            .split_once(": ")
            .unwrap()
            .1,
            format!(
                "`accounts.email.templates_dir`: \"{}\" is a file, not a directory",
                file.display()
            )
        );
        // Unknown keys are still errors (a misspelt `template_dir` is not silently ignored).
        let err = one_error("accounts: { email: { template_dir: x } }\n");
        assert!(
            err.starts_with(
                "1:22: unknown key `template_dir` in `accounts.email` (expected one of: \
                 smtp_url, from, outbox_dir, templates_dir"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_required_keys_point_at_the_parent_mapping() {
        assert_eq!(
            errors("tls: {}\n"),
            [
                "1:6: missing required key `cert` in `tls`",
                "1:6: missing required key `key` in `tls`",
            ]
        );
        assert_eq!(
            errors("routes:\n  - match: { path_prefix: /x }\n"),
            [
                "2:5: missing required key `name` in `routes[0]`",
                "2:5: missing required key `upstream` in `routes[0]`",
            ]
        );
        assert_eq!(
            one_error("routes:\n  - name: a\n    upstream: { timeout: 1s }\n"),
            "3:15: missing required key `targets` in `routes[0].upstream`"
        );
        assert_eq!(
            one_error("routes:\n  - name:\n    upstream: { targets: [http://a] }\n"),
            "2:5: `routes[0].name` must have a value"
        );
        assert_eq!(
            one_error("routes:\n  - name: \"${EMPTY}\"\n    upstream: { targets: [http://a] }\n"),
            "2:11: `routes[0].name` must not be empty"
        );
    }

    #[test]
    fn listeners_and_proxies() {
        assert_eq!(
            one_error("listen: 127.0.0.1:9090\n"),
            "1:1: `admin_listen`: must differ from `listen` (the admin listener never serves \
             proxied traffic)"
        );
        parse_ok("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n");
        let c = parse_ok("listen: \"[::]:80\"\ntrusted_proxies: [\"::1\", 10.1.2.3/8]\n");
        assert_eq!(c.listen.port(), 80);
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["::1/128", "10.0.0.0/8"]);
        assert_eq!(
            errors("trusted_proxies: [10.0.0.0/33, \"\", ~]\n"),
            [
                "1:19: `trusted_proxies[0]`: invalid network \"10.0.0.0/33\": expected a CIDR \
                 such as 10.0.0.0/8 or an IP address",
                "1:32: `trusted_proxies[1]`: must not be empty",
                "1:36: `trusted_proxies[2]`: expected a CIDR or IP address, found null",
            ]
        );
    }

    #[test]
    fn limits_range() {
        assert_eq!(
            parse_ok("limits: { max_header_bytes: 1KiB }")
                .limits
                .max_header_bytes,
            1024
        );
        assert_eq!(
            parse_ok("limits: { max_header_bytes: 1MiB }")
                .limits
                .max_header_bytes,
            1 << 20
        );
        assert_eq!(
            one_error("limits: { max_header_bytes: 1023 }"),
            "1:29: `limits.max_header_bytes`: must be between 1KiB and 1MiB"
        );
    }

    #[test]
    fn store_kinds() {
        let c = parse_ok("store: { kind: redis, url: \"rediss://cache:6380/1\", cluster: true }\n");
        assert!(
            matches!(c.store, StoreConfig::Redis { ref url, cluster: true } if url == "rediss://cache:6380/1")
        );
        assert_eq!(
            one_error("store: { kind: redis }\n"),
            "1:8: missing required key `url` in `store`"
        );
        assert_eq!(
            one_error("store: { kind: redis, url: \"http://x\" }\n"),
            "1:28: `store.url`: invalid Redis URL \"http://x\": expected redis://HOST[:PORT][/DB] \
             or rediss://..."
        );
        assert_eq!(
            errors("store:\n  kind: redis\n  url: redis://x\n  path: a.db\n"),
            ["4:3: `store.path` only applies to `kind: sqlite`"]
        );
        assert_eq!(
            errors("store: { path: a.db, cluster: false, url: redis://x }\n"),
            [
                "1:22: `store.cluster` only applies to `kind: redis`",
                "1:38: `store.url` only applies to `kind: redis`",
            ]
        );
        assert_eq!(
            one_error("store: { kind: mysql, url: x }\n"),
            "1:16: `store.kind`: invalid value \"mysql\" (expected one of: sqlite, redis)"
        );
    }

    #[test]
    fn tokens_validation() {
        assert_eq!(
            errors(
                "tokens:\n  access_ttl: 0\n  issuer: localhost\n  trusted_issuers:\n    - { issuer: x, jwks_uri: \"ftp://k\" }\n    - { jwks_uri: https://k }\n"
            ),
            [
                "2:15: `tokens.access_ttl`: must be greater than 0",
                "3:11: `tokens.issuer`: invalid URL \"localhost\": expected an http:// or https:// URL",
                "5:30: `tokens.trusted_issuers[0].jwks_uri`: invalid URL \"ftp://k\": expected an \
                 http:// or https:// URL",
                "6:7: missing required key `issuer` in `tokens.trusted_issuers[1]`",
            ]
        );
    }

    #[test]
    fn trusted_issuers_name_one_issuer_each() {
        assert_eq!(
            errors(
                "tokens:\n  issuer: https://gh.test\n  trusted_issuers:\n    - { issuer: https://gh.test, jwks_uri: https://k }\n    - { issuer: https://idp, jwks_uri: https://k }\n    - { issuer: https://idp, jwks_uri: https://j }\n"
            ),
            [
                "4:17: `tokens.trusted_issuers[0].issuer`: is `tokens.issuer`, Gatehouse's own tokens",
                "6:17: `tokens.trusted_issuers[2].issuer`: listed twice",
            ]
        );
    }

    #[test]
    fn cookies_validation() {
        assert_eq!(
            one_error("cookies: { same_site: none, secure: false }\n"),
            "1:23: `cookies.same_site`: `none` requires `secure: true` (browsers drop \
             SameSite=None cookies that are not Secure)"
        );
        assert_eq!(
            parse_ok("cookies: { same_site: none }").cookies.same_site,
            SameSite::None
        );
        assert!(one_error("cookies: { name: \"a b\" }").contains("invalid cookie name"));
        assert!(
            one_error("cookies: { domain: \"exa mple.com\" }").contains("invalid cookie domain")
        );
        assert_eq!(
            parse_ok("cookies: { domain: .Example.com }")
                .cookies
                .domain
                .as_deref(),
            Some(".example.com")
        );
    }

    #[test]
    fn accounts_validation() {
        assert_eq!(
            errors(
                "accounts:\n  prefix: auth/\n  allowed_origins: [\"https://App.example.com:443/\", https://a.com/x, \"http://b.com:8080\"]\n  password: { min_length: 0 }\n  registration: closed\n  email: { smtp_url: \"http://x\", from: nobody }\n"
            ),
            [
                "2:11: `accounts.prefix`: invalid path \"auth/\": must start with `/`",
                "3:53: `accounts.allowed_origins[1]`: invalid origin \"https://a.com/x\": an \
                 origin has no path or query (use https://a.com)",
                "4:27: `accounts.password.min_length`: must be at least 1",
                "5:17: `accounts.registration`: invalid value \"closed\" (expected one of: open, \
                 invite_only, admin_only)",
                "6:22: `accounts.email.smtp_url`: invalid SMTP URL \"http://x\": expected smtp://, \
                 smtps:// or smtp+starttls://HOST[:PORT]",
                "6:40: `accounts.email.from`: invalid sender \"nobody\": expected an address such \
                 as \"Gatehouse <no-reply@example.com>\"",
            ]
        );
        assert_eq!(
            one_error("accounts: { prefix: /auth/ }"),
            "1:21: `accounts.prefix`: invalid prefix \"/auth/\": must not end with `/` (e.g. /auth)"
        );
        let c = parse_ok(
            "accounts:\n  prefix: /api/auth\n  allowed_origins: [\"HTTPS://App.Example.com:443/\", \"http://b.com:8080\", \"capacitor://localhost\"]\n",
        );
        assert_eq!(c.accounts.prefix, "/api/auth");
        assert_eq!(
            c.accounts.allowed_origins,
            [
                "https://app.example.com",
                "http://b.com:8080",
                "capacitor://localhost"
            ]
        );
    }

    #[test]
    fn oauth_providers() {
        let c = parse_ok(
            "accounts:\n  oauth:\n    google: { kind: oidc, issuer: https://accounts.google.com, client_id: a, client_secret: b }\n    my-idp_2: { kind: oidc, issuer: https://sso.example.com, client_id: a, client_secret: b }\n",
        );
        assert_eq!(c.accounts.oauth[0].kind, OAuthKind::Oidc);
        assert_eq!(c.accounts.oauth[1].name, "my-idp_2");
        assert_eq!(
            errors(
                "accounts:\n  oauth:\n    Corp: { kind: oidc, issuer: https://x, client_id: a, client_secret: b }\n    corp: { client_id: a, client_secret: b }\n    other: { kind: github, client_id: a, client_secret: b }\n    oidc2: { kind: oidc, client_id: a }\n    github: { kind: google, client_secret: b, token_auth: private_key_jwt }\n    list: [1]\n"
            ),
            [
                "3:5: invalid provider name `Corp` in `accounts.oauth`: use lower-case letters, \
                 digits, `_` and `-`",
                "4:11: missing required key `kind` in `accounts.oauth.corp`",
                "4:11: missing required key `issuer` in `accounts.oauth.corp`",
                "5:20: `accounts.oauth.other.kind`: must be oidc for a provider not named github, \
                 google or linkedin",
                "6:12: missing required key `client_secret` in `accounts.oauth.oidc2`",
                "6:12: missing required key `issuer` in `accounts.oauth.oidc2`",
                "7:13: missing required key `client_id` in `accounts.oauth.github`",
                "7:21: `accounts.oauth.github.kind`: provider `github` can only be of kind github \
                 or oidc",
                "7:59: `accounts.oauth.github.token_auth`: invalid value \"private_key_jwt\" \
                 (expected one of: client_secret_basic, client_secret_post)",
                "8:11: `accounts.oauth.list`: expected a mapping, found a list",
            ]
        );
        assert_eq!(
            one_error("accounts: { oauth: [github] }"),
            "1:20: `accounts.oauth`: expected a mapping, found a list"
        );
    }

    #[test]
    fn rate_limit_policies() {
        let c = parse_ok("rate_limits: { default: { requests: 20 }, login: { attempts: 3 } }\n");
        assert_eq!(c.rate_limits.default.burst, 20);
        assert_eq!(c.rate_limits.login.attempts, 3);
        assert_eq!(c.rate_limits.login.ip_attempts, 100);
        assert_eq!(c.rate_limits.default.mode, LimitMode::Approximate);
        assert_eq!(c.rate_limits.login.mode, LimitMode::Exact);
        let c =
            parse_ok("rate_limits: { default: { mode: exact }, login: { mode: approximate } }\n");
        assert_eq!(c.rate_limits.default.mode, LimitMode::Exact);
        assert_eq!(c.rate_limits.login.mode, LimitMode::Approximate);
        assert_eq!(
            errors("rate_limits:\n  login: { mode: fuzzy }\n"),
            [
                "2:18: `rate_limits.login.mode`: invalid value \"fuzzy\" (expected one of: \
              exact, approximate)"
            ]
        );
        assert_eq!(
            errors(
                "rate_limits:\n  default: { requests: 0, per: 0s, burst: 0, key: session }\n  register: { per: 0 }\n  email: { requests: 0 }\n"
            ),
            [
                "2:24: `rate_limits.default.requests`: must be at least 1",
                "2:32: `rate_limits.default.per`: must be greater than 0",
                "2:43: `rate_limits.default.burst`: must be at least 1",
                "2:51: `rate_limits.default.key`: invalid value \"session\" (expected one of: \
                 credential, user, ip)",
                "3:20: `rate_limits.register.per`: must be greater than 0",
                "4:22: `rate_limits.email.requests`: must be at least 1",
            ]
        );
        let c = parse_ok(&route_yaml(
            "    rate_limit: { requests: 7, per: 1m, mode: exact }\n",
        ));
        assert_eq!(
            c.routes[0].rate_limit.as_ref().unwrap().mode,
            LimitMode::Exact
        );
        assert_eq!(
            errors(&route_yaml(
                "    rate_limit: { requests: 7, per: 1m, mode: strict }\n"
            ))
            .len(),
            1
        );
        let c = parse_ok(&route_yaml("    rate_limit: { requests: 7, per: 1m }\n"));
        let limit = c.routes[0].rate_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests, limit.burst, limit.key),
            (7, 7, LimitKey::Credential)
        );
        assert_eq!(limit.per, Duration::from_secs(60));
        assert_eq!(
            errors(&route_yaml("    rate_limit: { burst: 5 }\n")),
            [
                "4:17: missing required key `requests` in `routes[0].rate_limit`",
                "4:17: missing required key `per` in `routes[0].rate_limit`",
            ]
        );
    }

    #[test]
    fn route_match_normalization() {
        let c = parse_ok(&route_yaml(
            "    match: { host: API.Example.COM, methods: [get, Post, PURGE] }\n",
        ));
        let r = &c.routes[0];
        assert_eq!(r.host, HostMatch::Exact("api.example.com".into()));
        assert_eq!(r.path_prefix, "/");
        assert_eq!(r.methods[0], http::Method::GET);
        assert_eq!(r.methods[1], http::Method::POST);
        assert_eq!(r.methods[2].as_str(), "PURGE");
        assert_eq!(r.auth, AuthMode::Required);
        assert_eq!(r.upstream.targets[0].authority.as_str(), "up:80");
        assert_eq!(r.upstream.timeout, Duration::from_secs(30));
        let c = parse_ok(&route_yaml("    match: { host: \"*.Example.com\" }\n"));
        assert_eq!(c.routes[0].host, HostMatch::Wildcard(".example.com".into()));
        let c = parse_ok(&route_yaml("    match: { host: \"::1\" }\n"));
        assert_eq!(c.routes[0].host, HostMatch::Exact("[::1]".into()));
    }

    #[test]
    fn route_match_errors() {
        for (host, message) in [
            ("a.*.com", "`*` is only allowed as the whole first label"),
            (
                "*example.com",
                "`*` is only allowed as the whole first label",
            ),
            ("*", "`*` is only allowed as the whole first label"),
            ("api.example.com:8080", "must not include a port"),
            ("a..b", "expected a host name"),
        ] {
            let e = one_error(&route_yaml(&format!("    match: {{ host: \"{host}\" }}\n")));
            assert!(
                e.starts_with("4:20: `routes[0].match.host`: invalid host"),
                "{e}"
            );
            assert!(e.contains(message), "{host}: {e}");
        }
        assert_eq!(
            errors(&route_yaml(
                "    match: { path_prefix: api, methods: [GET, get, \"BAD METHOD\"] }\n"
            )),
            [
                "4:27: `routes[0].match.path_prefix`: invalid path \"api\": must start with `/`",
                "4:47: `routes[0].match.methods`: GET is listed twice",
                "4:52: `routes[0].match.methods[2]`: invalid HTTP method \"BAD METHOD\"",
            ]
        );
    }

    #[test]
    fn upstream_targets() {
        let c = parse_ok(
            "routes:\n  - name: r\n    upstream: { targets: [\"https://Up.example.com/\", \"http://10.0.0.1:8080\"], timeout: 5s, connect_timeout: 500ms }\n",
        );
        let u = &c.routes[0].upstream;
        assert_eq!(u.targets[0].scheme, http::uri::Scheme::HTTPS);
        assert_eq!(u.targets[0].authority.as_str(), "up.example.com:443");
        assert_eq!(u.targets[1].authority.as_str(), "10.0.0.1:8080");
        assert_eq!(u.connect_timeout, Duration::from_millis(500));
        assert_eq!(
            errors(
                "routes:\n  - name: r\n    upstream: { targets: [\"http://a/x\", \"http://a?q=1\", \"a:80\", \"http://u@a\"] }\n"
            ),
            [
                "3:27: `routes[0].upstream.targets[0]`: invalid upstream target \"http://a/x\": a \
                 target is only scheme://host[:port], without path or query (use strip_prefix to \
                 rewrite paths)",
                "3:41: `routes[0].upstream.targets[1]`: invalid upstream target \"http://a?q=1\": \
                 a target is only scheme://host[:port], without path or query (use strip_prefix \
                 to rewrite paths)",
                "3:57: `routes[0].upstream.targets[2]`: invalid upstream target \"a:80\": the \
                 scheme must be http:// or https://",
                "3:65: `routes[0].upstream.targets[3]`: invalid upstream target \"http://u@a\": \
                 credentials in the URL are not supported",
            ]
        );
        assert_eq!(
            errors("routes:\n  - name: r\n    upstream: { targets: [], timeout: 0s }\n"),
            [
                "3:26: `routes[0].upstream.targets`: must list at least one target",
                "3:39: `routes[0].upstream.timeout`: must be greater than 0",
            ]
        );
    }

    #[test]
    fn route_options() {
        let c = parse_ok(&route_yaml(
            "    match: { path_prefix: /v1/ }\n    credentials: [api_key]\n    roles: [admin, user]\n    scopes: [\"read:x\"]\n    strip_prefix: /v1\n    max_body: 2KB\n",
        ));
        let r = &c.routes[0];
        assert_eq!(r.credentials, [CredentialKind::ApiKey]);
        assert_eq!(r.roles, ["admin", "user"]);
        assert_eq!(r.scopes, ["read:x"]);
        assert_eq!(r.max_body, Some(2000));
        assert_eq!(
            errors(&route_yaml(
                "    match: { path_prefix: /v1/ }\n    credentials: [jwt, jwt, password]\n    auth: maybe\n    strip_prefix: /v2\n    scopes: [\"a b\"]\n    max_body: lots\n    forward_credentials: 1\n"
            )),
            [
                "5:24: `routes[0].credentials`: jwt is listed twice",
                "5:29: `routes[0].credentials[2]`: invalid value \"password\" (expected one of: \
                 api_key, jwt, cookie)",
                "6:11: `routes[0].auth`: invalid value \"maybe\" (expected one of: public, \
                 optional, required)",
                "7:19: `routes[0].strip_prefix`: must be a prefix of the route's path_prefix \
                 `/v1/`",
                "8:14: `routes[0].scopes[0]`: invalid scope \"a b\": scopes are single words (no \
                 spaces)",
                "9:15: `routes[0].max_body`: invalid size \"lots\": expected e.g. 512B, 64KiB, \
                 10MiB, 1GiB",
                "10:26: `routes[0].forward_credentials`: expected true or false, found \"1\"",
            ]
        );
        assert_eq!(
            one_error(&route_yaml("    credentials: []\n")),
            "4:18: `routes[0].credentials`: must list at least one of api_key, jwt, cookie"
        );
    }

    #[test]
    fn duplicate_routes() {
        let yaml = "\
routes:
  - name: a
    match: { host: x.com, path_prefix: /p, methods: [GET] }
    upstream: { targets: [http://u] }
  - name: b
    match: { host: x.com, path_prefix: /p, methods: [POST] }
    upstream: { targets: [http://u] }
  - name: a
    match: { host: x.com, path_prefix: /p, methods: [post, put] }
    upstream: { targets: [http://u] }
  - name: d
    match: { host: x.com, path_prefix: /p }
    upstream: { targets: [http://u] }
  - name: e
    match: { host: y.com, path_prefix: /p }
    upstream: { targets: [http://u] }
  - name: f
    upstream: { targets: [http://u] }
  - name: g
    upstream: { targets: [http://u] }
";
        assert_eq!(
            errors(yaml),
            [
                "8:11: duplicate route name `a` (first used at line 2)",
                "9:12: route `a` duplicates route `b` (same host and path_prefix, overlapping \
                 methods)",
                "12:12: route `d` duplicates route `a` (same host and path_prefix, overlapping \
                 methods)",
                "19:5: route `g` duplicates route `f` (same host and path_prefix, overlapping \
                 methods)",
            ]
        );
    }
}
