//! Micro-benchmarks of the request path's pure parts, each against a baseline measured in the
//! same run (the machine is a shared, noisy VM: absolute nanoseconds move by 2x between runs,
//! ratios to an in-run baseline much less).
//!
//! * `route/router/<shape>` - `Router::find` over a 50-route table (exact hosts, wildcards,
//!   any-host prefixes, some method-restricted); baseline `route/hashmap/<shape>`: a plain
//!   `HashMap<String, usize>` lookup of the same path string, the cheapest conceivable router.
//! * `headers/rewrite/<shape>` - `HeaderMap::clone` followed by the rewrite sequence of
//!   `proxy::handle` (hop-by-hop removal, owned-header removal, identity injection,
//!   `X-Forwarded-*`, `X-Request-Id`); baseline `headers/clone/<shape>`: the clone alone, so the
//!   ratio counts the rewrite's own cost on top of the copy it has to start from.
//! * `api_key/parse/<shape>` - `auth::api_key::parse` of a valid key (prefix, length, charset,
//!   CRC-32, then SHA-256) and of a key with a bad checksum (refused before any hashing: the
//!   cost of a flood of made-up keys); baseline `api_key/sha256/<shape>`: `hash_key` of the same
//!   string alone, what any lookup by digest has to pay anyway.
//! * `auth_cache/<row>` - `Authenticator::authenticate` of a credential it has resolved once
//!   before, every cache warm (in-memory SQLite store, one user, one secret key, one session):
//!   `api_key_hit` (a valid `sk_` key) and `access_token_hit` (a Gatehouse access token);
//!   baseline `auth_cache/user_hit`: one `AuthCache::user` hit. Every row runs through
//!   `block_on` of a current-thread runtime; `auth_cache/block_on` is that overhead alone.
//!   Before timing, the ring is swapped for one without the token's key and the store lookups
//!   are counted, so only cache hits can succeed; the group asserts that none failed or
//!   reached the store.
//! * `jwt_verify/verify/<alg>` - `jwt::verify_access` of an access token (no cache) for EdDSA,
//!   ES256 and RS256 (RSA 2048); baseline `jwt_verify/decode/<alg>`: everything but the
//!   signature check (split, base64url-decode the three parts, parse header and payload, the
//!   claims struct), so the ratio is the price of the signature.
//!
//! After criterion's own output, a table `bench / ns per op / ratio to baseline` is printed from
//! the `new/estimates.json` files this process wrote (median of the samples).
//!
//!     CARGO_TARGET_DIR=/work/target-bench cargo bench --bench core
//!     cargo bench --bench core -- route        # only the router benches
//!     cargo bench --bench core -- 'auth_cache|jwt_verify'   # only the authentication benches
//!     cargo bench --bench core -- --quick      # shorter, noisier

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BenchmarkId, Criterion};
use gatehouse::auth::jwt::{self, AccessClaims, Expectation};
use gatehouse::auth::signing::{self, KeyRing};
use gatehouse::auth::{Authenticator, Presented, TokenRules, api_key};
use gatehouse::cache::{AuthCache, CacheSettings};
use gatehouse::config::{
    AuthMode, CredentialKind, HostMatch, RouteConfig, SigningAlg, UpstreamConfig,
};
use gatehouse::principal::{AuthMethod, Principal};
use gatehouse::proxy::headers;
use gatehouse::router::Router;
use gatehouse::store::{
    ApiKey, ApiKeyKind, RedisOptions, RedisStore, Session, SqliteStore, Store, UnixMillis, User,
    new_id, unix_now,
};
use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// ------------------------------------------------------------------------------------ routes

fn route(name: &str, host: HostMatch, prefix: &str, methods: &[Method]) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        host,
        path_prefix: prefix.into(),
        methods: methods.to_vec(),
        upstream: UpstreamConfig {
            targets: vec![],
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            ca_file: None,
        },
        auth: AuthMode::Public,
        credentials: vec![
            CredentialKind::ApiKey,
            CredentialKind::Jwt,
            CredentialKind::Cookie,
        ],
        roles: vec![],
        scopes: vec![],
        allow_publishable_keys: false,
        forward_credentials: false,
        rate_limit: None,
        strip_prefix: None,
        identity_assertion: false,
        max_body: None,
    }
}

/// 50 routes shaped like a mid-sized deployment: 8 exact hosts with 4 prefixes each (32),
/// 3 wildcard domains with 2 prefixes each (6), 12 any-host prefixes.
fn table() -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    let services = [
        "api", "app", "admin", "billing", "search", "media", "auth", "status",
    ];
    for svc in services {
        let host = HostMatch::Exact(format!("{svc}.example.com"));
        routes.push(route(&format!("{svc}-root"), host.clone(), "/", &[]));
        routes.push(route(
            &format!("{svc}-v1"),
            host.clone(),
            "/v1",
            &[Method::GET, Method::POST],
        ));
        routes.push(route(&format!("{svc}-v2"), host.clone(), "/v2/", &[]));
        routes.push(route(
            &format!("{svc}-v2-users"),
            host,
            "/v2/users",
            &[Method::GET, Method::PUT, Method::DELETE],
        ));
    }
    for domain in [
        ".tenants.example.com",
        ".eu.example.net",
        ".preview.example.org",
    ] {
        let host = HostMatch::Wildcard(domain.into());
        routes.push(route(&format!("wild{domain}-root"), host.clone(), "/", &[]));
        routes.push(route(&format!("wild{domain}-api"), host, "/api/", &[]));
    }
    let any_prefixes = [
        "/health",
        "/metrics-public",
        "/static/",
        "/assets",
        "/favicon.ico",
        "/robots.txt",
        "/docs",
        "/blog",
        "/legacy/api",
        "/legacy/web",
        "/webhooks/",
        "/graphql",
    ];
    for p in any_prefixes {
        routes.push(route(&format!("any{p}"), HostMatch::Any, p, &[]));
    }
    assert_eq!(routes.len(), 50);
    routes
}

/// (shape, host, path, method): what a request looks like once host and path are normalised.
const SHAPES: [(&str, &str, &str, Method); 5] = [
    // Exact host, longest of four prefixes wins.
    (
        "exact_host",
        "billing.example.com",
        "/v2/users/8812/invoices",
        Method::GET,
    ),
    // No exact host; the second of three wildcard suffixes matches.
    (
        "wildcard",
        "acme.eu.example.net",
        "/api/orders/77",
        Method::POST,
    ),
    // Unknown host, falls through to the any-host tier (12 prefixes).
    (
        "any_host",
        "203.0.113.9",
        "/static/js/app.3f9c1.js",
        Method::GET,
    ),
    // Exact host whose method-restricted routes refuse DELETE: falls through to `/`.
    (
        "method_fallthrough",
        "api.example.com",
        "/v1/keys/3",
        Method::DELETE,
    ),
    // Nothing matches: every tier is scanned (404 no_route).
    ("miss", "unknown.example.io", "/nothing/here", Method::GET),
];

fn bench_router(c: &mut Criterion) {
    let routes = table();
    let router = Router::new(&routes);
    // Baseline: the request paths (and the table's prefixes) as keys of a plain HashMap.
    let mut map: HashMap<String, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        map.insert(r.path_prefix.clone(), i);
    }
    for (i, (_, _, path, _)) in SHAPES.iter().enumerate() {
        map.insert((*path).to_owned(), 1000 + i);
    }
    let mut group = c.benchmark_group("route");
    for (shape, host, path, method) in &SHAPES {
        // Sanity: the shapes hit what their names claim.
        let got = router.find(host, path, method);
        match *shape {
            "miss" => assert!(got.is_err(), "{shape}: {got:?}"),
            _ => assert!(got.is_ok(), "{shape}: {got:?}"),
        }
        group.bench_with_input(BenchmarkId::new("hashmap", shape), path, |b, path| {
            b.iter(|| map.get(black_box(*path)).copied())
        });
        group.bench_with_input(
            BenchmarkId::new("router", shape),
            &(host, path, method),
            |b, (host, path, method)| {
                b.iter(|| router.find(black_box(host), black_box(path), black_box(method)))
            },
        );
    }
    group.finish();
}

// ----------------------------------------------------------------------------------- headers

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// A typical browser navigation over HTTP/1.1: 12 headers, `Connection: keep-alive`.
fn browser_request() -> HeaderMap {
    header_map(&[
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://app.example.com/dashboard"),
        (
            "cookie",
            "gh_session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; theme=dark; _ga=GA1.2.1234567890.1700000000",
        ),
        ("connection", "keep-alive"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
    ])
}

/// An API call carrying what a client may try to forge: owned headers (one with underscores,
/// which takes the slow variant scan), its own X-Forwarded-*, a header named in `Connection`.
fn forged_request() -> HeaderMap {
    header_map(&[
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        (
            "authorization",
            "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2lnbmF0dXJl",
        ),
        ("connection", "keep-alive, x-debug"),
        ("x-debug", "1"),
        ("x-user-id", "admin"),
        ("x_user_roles", "admin"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=1.2.3.4"),
    ])
}

/// What `proxy::handle` does to the headers of a request it forwards: the client's fields
/// left in `hdrs`, the gateway's returned (sent after them).
fn rewrite(
    hdrs: &mut HeaderMap,
    principal: &Principal,
    client_ip: &HeaderValue,
    request_id: &HeaderValue,
) -> headers::Added {
    headers::remove_hop_by_hop(hdrs);
    headers::remove_owned(hdrs);
    let mut added = headers::Added::with_capacity(8);
    headers::inject_identity(&mut added, principal);
    let host = hdrs.get(header::HOST).cloned();
    headers::set_forwarded(
        hdrs,
        &headers::ClientConn {
            ip: client_ip,
            trusted: false,
            scheme: "http",
            host: host.as_ref(),
        },
        request_id,
        &mut added,
    );
    added
}

fn bench_headers(c: &mut Criterion) {
    let principal = Principal::anonymous();
    // Rendered once per connection by the gateway.
    let ip = headers::ip_value("198.51.100.23".parse().unwrap());
    let request_id = HeaderValue::from_static("5f0c6e1d2a3b4c5d6e7f8091a2b3c4d5");
    let mut group = c.benchmark_group("headers");
    for (shape, map) in [("browser", browser_request()), ("forged", forged_request())] {
        // Sanity: the rewrite does what the proxy relies on.
        let mut check = map.clone();
        for (name, value) in rewrite(&mut check, &principal, &ip, &request_id) {
            check.append(name, value);
        }
        assert!(!check.contains_key(header::CONNECTION));
        assert!(!check.contains_key("x-user-id") && !check.contains_key("x_user_roles"));
        assert_eq!(check["x-auth-method"], "anonymous");
        assert_eq!(check["x-forwarded-for"], "198.51.100.23");

        group.bench_with_input(BenchmarkId::new("clone", shape), &map, |b, map| {
            b.iter(|| black_box(map).clone())
        });
        group.bench_with_input(BenchmarkId::new("rewrite", shape), &map, |b, map| {
            b.iter(|| {
                let mut h = black_box(map).clone();
                let added = rewrite(&mut h, &principal, &ip, &request_id);
                (h, added)
            })
        });
    }
    group.finish();
}

// ----------------------------------------------------------------------------------- api key

fn bench_api_key(c: &mut Criterion) {
    let valid = api_key::generate(ApiKeyKind::Secret).key;
    // Same length and charset, last checksum digit changed: passes every check but the CRC.
    let mut bad = valid.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    // Sanity: the shapes are what their names claim.
    assert!(api_key::parse(&valid).is_ok());
    assert_eq!(api_key::parse(&bad), Err(api_key::KeyFormatError::Checksum));
    let mut group = c.benchmark_group("api_key");
    for (shape, key) in [("valid", &valid), ("bad_checksum", &bad)] {
        group.bench_with_input(BenchmarkId::new("sha256", shape), key, |b, key| {
            b.iter(|| api_key::hash_key(black_box(key)))
        });
        group.bench_with_input(BenchmarkId::new("parse", shape), key, |b, key| {
            b.iter(|| api_key::parse(black_box(key)))
        });
    }
    group.finish();
}

// ------------------------------------------------------------------------------ auth cache

const ISSUER: &str = "https://auth.bench.test";
const AUDIENCE: &str = "gatehouse-bench";

/// The claims of an access token for `user_id` in session `sid`, valid for an hour from
/// `now_secs` (what a login would issue).
fn access_claims(user_id: &str, sid: &str, now_secs: i64) -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        sub: user_id.into(),
        aud: AUDIENCE.into(),
        exp: now_secs + 3600,
        iat: now_secs,
        jti: new_id(),
        sid: sid.into(),
        roles: vec!["user".into(), "billing".into()],
        amr: vec!["pwd".into()],
        email: Some("ada@example.test".into()),
        username: Some("ada".into()),
        scope: None,
    }
}

fn ring(alg: SigningAlg, now: UnixMillis) -> KeyRing {
    KeyRing::new(&[signing::generate(alg, now).unwrap()], now).unwrap()
}

/// A user, one of its secret API keys and one of its sessions in an in-memory SQLite store.
struct Account {
    user: User,
    key: String,
    session: Session,
}

async fn account(store: &dyn Store, now: UnixMillis) -> Account {
    let user = User {
        id: new_id(),
        email: Some("ada@example.test".into()),
        username: Some("ada".into()),
        name: Some("Ada".into()),
        external_id: None,
        email_verified: true,
        roles: vec!["user".into(), "billing".into()],
        disabled: false,
        password_hash: None,
        mfa: None,
        created_at: now,
        updated_at: now,
    };
    store.create_user(&user).await.unwrap();
    let generated = api_key::generate(ApiKeyKind::Secret);
    store
        .create_api_key(&ApiKey {
            id: new_id(),
            user_id: user.id.clone(),
            kind: ApiKeyKind::Secret,
            name: "bench".into(),
            prefix: generated.prefix.clone(),
            key_hash: generated.hash,
            scopes: None,
            created_at: now,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        })
        .await
        .unwrap();
    let session = Session {
        id: new_id(),
        user_id: user.id.clone(),
        created_at: now,
        last_used_at: now,
        expires_at: now + 24 * 3600 * 1000,
        user_agent: None,
        ip: None,
        amr: vec!["pwd".into()],
        revoked_at: None,
    };
    store.create_session(&session, None).await.unwrap();
    Account {
        user,
        key: generated.key,
        session,
    }
}

fn bench_auth_cache(c: &mut Criterion) {
    // A current-thread runtime, entered once per iteration with `block_on`: criterion's
    // `async_tokio` feature is not enabled. The `block_on` row measures that overhead alone.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let now = unix_now();
    let rules = TokenRules {
        issuer: ISSUER,
        audience: AUDIENCE,
        // As on the proxy path (no trusted issuer is configured here).
        external: true,
    };
    // Long lifetimes: every entry stays warm for the whole group.
    let settings = CacheSettings {
        ttl: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(3600),
        max_entries: 10_000,
    };
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let acct = rt.block_on(account(store.as_ref(), now));
    let cache = AuthCache::new(Arc::clone(&store), settings);
    let signer = ring(SigningAlg::EdDsa, now);
    let token = jwt::issue_access(
        &signer,
        &access_claims(&acct.user.id, &acct.session.id, now / 1000),
    )
    .unwrap();
    let auth = Authenticator::new(cache, 10_000, Duration::from_secs(3600), signer);

    // Warm every cache: the first calls go to the store and verify the token's signature.
    let by_key = rt
        .block_on(auth.authenticate(Presented::ApiKey(&acct.key), rules, now))
        .unwrap();
    assert_eq!(by_key.method, AuthMethod::ApiKey);
    assert_eq!(by_key.user_id.as_deref(), Some(acct.user.id.as_str()));
    let by_token = rt
        .block_on(auth.authenticate(Presented::Jwt(&token), rules, now))
        .unwrap();
    assert_eq!(by_token.method, AuthMethod::Jwt);
    assert_eq!(
        by_token.session_id.as_deref(),
        Some(acct.session.id.as_str())
    );
    // Only a hit can succeed from here on: a ring that does not hold the token's key makes a
    // signature check fail, and the store lookups are counted.
    auth.set_keys(ring(SigningAlg::EdDsa, now));
    let lookups = auth.cache().store_lookups();
    assert_eq!(lookups, 3, "api key, user, session");

    let mut failures = 0u64;
    let mut group = c.benchmark_group("auth_cache");
    group.bench_function("block_on", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    group.bench_function("user_hit", |b| {
        b.iter(|| {
            let found = rt.block_on(auth.cache().user(black_box(&acct.user.id)));
            failures += u64::from(!matches!(found, Ok(Some(_))));
            found
        })
    });
    group.bench_function("api_key_hit", |b| {
        b.iter(|| {
            let p =
                rt.block_on(auth.authenticate(Presented::ApiKey(black_box(&acct.key)), rules, now));
            failures += u64::from(p.is_err());
            p
        })
    });
    group.bench_function("access_token_hit", |b| {
        b.iter(|| {
            let p = rt.block_on(auth.authenticate(Presented::Jwt(black_box(&token)), rules, now));
            failures += u64::from(p.is_err());
            p
        })
    });
    group.finish();
    assert_eq!(failures, 0, "a benched lookup missed or failed");
    assert_eq!(
        auth.cache().store_lookups(),
        lookups,
        "a benched lookup went to the store"
    );
}

// ------------------------------------------------------------------------------ store miss

/// A private redis-server on a free loopback port, killed on drop; `None` when the binary
/// is not installed (the Redis row is then skipped).
struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let dir = tempfile::tempdir().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a cache miss of an API key costs the proxy path: the key by hash, then its user,
/// from the embedded SQLite file (reader pool) and from a Redis on loopback.
fn bench_store_miss(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let now = unix_now();
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path().join("gatehouse.db")).unwrap());
    let redis_server = RedisServer::start();
    let redis: Option<Arc<dyn Store>> = redis_server.as_ref().map(|server| {
        let options = RedisOptions::new(format!("redis://127.0.0.1:{}/", server.port), false);
        let store: Arc<dyn Store> = Arc::new(rt.block_on(RedisStore::connect(&options)).unwrap());
        store
    });
    if redis.is_none() {
        eprintln!("store_miss/redis skipped: redis-server is not installed");
    }
    let mut group = c.benchmark_group("store_miss");
    for (name, store) in [("sqlite", Some(sqlite)), ("redis", redis)] {
        let Some(store) = store else { continue };
        let acct = rt.block_on(account(store.as_ref(), now));
        let hash = api_key::parse(&acct.key).unwrap().hash;
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let key = store.get_api_key_by_hash(black_box(&hash)).await.unwrap();
                    let user = store.get_user(&key.unwrap().user_id).await.unwrap();
                    assert!(user.is_some());
                })
            })
        });
    }
    group.finish();
}

// ------------------------------------------------------------------------------ jwt verify

/// What `verify_access` does besides the signature check: split, base64url-decode the three
/// parts, parse header and payload as JSON objects, and turn the payload into the claims.
fn decode_only(token: &str) -> Option<AccessClaims> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let _: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    black_box(URL_SAFE_NO_PAD.decode(signature).ok()?);
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    serde_json::from_value(serde_json::Value::Object(claims)).ok()
}

fn bench_jwt_verify(c: &mut Criterion) {
    let now = unix_now();
    let expect = Expectation::new(ISSUER, AUDIENCE, now / 1000);
    let claims = access_claims(&new_id(), &new_id(), now / 1000);
    let mut group = c.benchmark_group("jwt_verify");
    for alg in [SigningAlg::EdDsa, SigningAlg::Es256, SigningAlg::Rs256] {
        let name = signing::alg_name(alg);
        let ring = ring(alg, now);
        let token = jwt::issue_access(&ring, &claims).unwrap();
        // Sanity: the token verifies, and the decode-only baseline reads the same claims.
        assert_eq!(jwt::verify_access(&ring, &token, &expect).unwrap(), claims);
        assert_eq!(decode_only(&token).unwrap(), claims);
        group.bench_with_input(BenchmarkId::new("decode", name), &token, |b, token| {
            b.iter(|| decode_only(black_box(token)))
        });
        group.bench_with_input(BenchmarkId::new("verify", name), &token, |b, token| {
            b.iter(|| jwt::verify_access(&ring, black_box(token), &expect))
        });
    }
    group.finish();
}

// ------------------------------------------------------------------------------ ratio table

/// Where criterion writes its results, found the way criterion itself looks for it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    // The bench binary lives in <target>/<profile>/deps/.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// `full_id -> median ns` of every `new/` result written since `since`.
fn collect(dir: &Path, since: SystemTime, out: &mut HashMap<String, f64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let est = path.join("estimates.json");
            let fresh = std::fs::metadata(&est)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if !fresh {
                continue;
            }
            let read = |p: PathBuf| -> Option<serde_json::Value> {
                serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
            };
            let (Some(bench), Some(est)) = (read(path.join("benchmark.json")), read(est)) else {
                continue;
            };
            if let (Some(id), Some(ns)) = (
                bench["full_id"].as_str(),
                est["median"]["point_estimate"].as_f64(),
            ) {
                out.insert(id.to_owned(), ns);
            }
        } else {
            collect(&path, since, out);
        }
    }
}

/// The baseline of a bench id, if it has one.
fn baseline_of(id: &str) -> Option<String> {
    let parts: Vec<&str> = id.split('/').collect();
    match parts.as_slice() {
        ["route", "router", shape] => Some(format!("route/hashmap/{shape}")),
        ["headers", "rewrite", shape] => Some(format!("headers/clone/{shape}")),
        ["api_key", "parse", shape] => Some(format!("api_key/sha256/{shape}")),
        [
            "auth_cache",
            "api_key_hit" | "access_token_hit" | "block_on",
        ] => Some("auth_cache/user_hit".to_owned()),
        ["jwt_verify", "verify", alg] => Some(format!("jwt_verify/decode/{alg}")),
        ["store_miss", "redis"] => Some("store_miss/sqlite".to_owned()),
        _ => None,
    }
}

fn print_table(since: SystemTime) {
    let dir = criterion_dir();
    let mut results = HashMap::new();
    collect(&dir, since, &mut results);
    println!();
    if results.is_empty() {
        println!(
            "(no estimates written by this run under {}: test mode or everything filtered out)",
            dir.display()
        );
        return;
    }
    let mut ids: Vec<&String> = results.keys().collect();
    ids.sort();
    println!("median of this run's samples; ratio = bench / its baseline in the same run");
    println!("{:<36} {:>12} {:>10}", "bench", "ns per op", "ratio");
    for id in ids {
        let ns = results[id];
        let ratio = match baseline_of(id).and_then(|b| results.get(&b)) {
            Some(base) if *base > 0.0 => format!("{:.2}x", ns / base),
            Some(_) => "-".to_owned(),
            None if baseline_of(id).is_some() => "(no base)".to_owned(),
            None => "baseline".to_owned(),
        };
        println!("{id:<36} {ns:>12.1} {ratio:>10}");
    }
}

fn main() {
    // A second's slack: file times may be coarser than the clock.
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    bench_router(&mut c);
    bench_headers(&mut c);
    bench_api_key(&mut c);
    bench_auth_cache(&mut c);
    bench_jwt_verify(&mut c);
    bench_store_miss(&mut c);
    c.final_summary();
    print_table(since);
}
