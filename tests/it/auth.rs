//! Authentication on the proxy path (SPEC section 3) through the real binary: credentials by
//! precedence, API keys, Gatehouse JWTs (and forged ones), session cookies with CSRF,
//! policies, identity headers and credential removal.

use serde_json::{Value, json};

use crate::support::{Answer, Echo, Gateway, send, send_json};

const PASSWORD: &str = "correct-horse-battery";
/// The fixture key the gateway signs with in these tests, so a test can also sign tokens the
/// gateway will find correctly signed and then refuse for their claims.
const KEY_FILE: &str = "tests/fixtures/tls/signing-ed25519.pem";

fn gateway(echo: &Echo) -> Gateway {
    let up = echo.url();
    let key_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(KEY_FILE);
    Gateway::start(&format!(
        r#"
tokens: {{ issuer: http://gatehouse.test, audience: tests, signing: {{ alg: EdDSA, key_file: "{key}" }} }}
cookies: {{ secure: false }}
accounts: {{ allowed_origins: [https://app.example.com] }}
routes:
  - {{ name: pub, match: {{ path_prefix: /pub }}, upstream: {{ targets: ["{up}"] }}, auth: public }}
  - {{ name: opt, match: {{ path_prefix: /opt }}, upstream: {{ targets: ["{up}"] }}, auth: optional }}
  - {{ name: req, match: {{ path_prefix: /req }}, upstream: {{ targets: ["{up}"] }}, auth: required }}
  - {{ name: admin, match: {{ path_prefix: /admin }}, upstream: {{ targets: ["{up}"] }}, auth: required, roles: [admin] }}
  - {{ name: scoped, match: {{ path_prefix: /scoped }}, upstream: {{ targets: ["{up}"] }}, auth: required, scopes: ["orders:read"] }}
  - {{ name: apps, match: {{ path_prefix: /apps }}, upstream: {{ targets: ["{up}"] }}, auth: required, allow_publishable_keys: true }}
  - {{ name: fwd, match: {{ path_prefix: /fwd }}, upstream: {{ targets: ["{up}"] }}, auth: required, forward_credentials: true }}
  - {{ name: jwtonly, match: {{ path_prefix: /jwtonly }}, upstream: {{ targets: ["{up}"] }}, auth: required, credentials: [jwt] }}
"#,
        key = key_file.display()
    ))
}

async fn register(gw: &Gateway, email: &str) -> Value {
    let a = send_json(
        "POST",
        &gw.url("/auth/register"),
        None,
        &json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.json()
}

async fn new_key(gw: &Gateway, token: &str, body: Value) -> Answer {
    send_json("POST", &gw.url("/auth/api-keys"), Some(token), &body).await
}

async fn call(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(method, &gw.url(path), headers, crate::support::empty()).await
}

fn code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or("").to_owned()
}

/// Signs `claims` with the gateway's own key (the fixture), with the given header fields.
fn sign(header_typ: &str, claims: &Value) -> String {
    let pem =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(KEY_FILE)).unwrap();
    let key =
        gatehouse::auth::signing::from_pkcs8_pem(&pem, gatehouse::config::SigningAlg::EdDsa, 0)
            .unwrap();
    let ring = gatehouse::auth::signing::KeyRing::new(&[key], 0).unwrap();
    ring.sign(header_typ, claims).unwrap()
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn credentials_policies_and_identity_headers() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let reg = register(&gw, "ada@example.com").await;
    let token = reg["access_token"].as_str().unwrap().to_owned();
    let user_id = reg["user"]["id"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");

    // required: no credential -> 401 with a bare challenge.
    let a = call(&gw, "GET", "/req", &[]).await;
    assert_eq!((a.status, code(&a).as_str()), (401, "missing_credentials"));
    assert_eq!(a.headers["www-authenticate"], "Bearer");

    // A Gatehouse JWT: identity injected, the token itself not forwarded.
    let a = call(&gw, "GET", "/req/x", &[("authorization", &bearer)]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.seen("x-user-id").as_deref(), Some(user_id.as_str()));
    assert_eq!(a.seen("x-user-email").as_deref(), Some("ada@example.com"));
    assert_eq!(a.seen("x-user-roles").as_deref(), Some("user"));
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("jwt"));
    assert!(a.seen("x-auth-session-id").is_some());
    assert_eq!(a.seen("authorization"), None);
    // forward_credentials keeps it.
    let a = call(&gw, "GET", "/fwd", &[("authorization", &bearer)]).await;
    assert_eq!(a.seen("authorization").as_deref(), Some(bearer.as_str()));

    // Forged identity headers, under every spelling, and named in Connection, on every policy.
    for path in ["/pub", "/opt", "/req"] {
        let a = call(
            &gw,
            "GET",
            path,
            &[
                ("authorization", &bearer),
                ("x-user-id", "forged"),
                ("x_user_id", "forged"),
                ("X-User-Roles", "admin"),
                ("x-auth-method", "api_key"),
                ("connection", "x-user-id"),
            ],
        )
        .await;
        assert_eq!(a.status, 200, "{path}");
        let headers = a.json()["headers"].clone();
        let text = headers.to_string();
        assert!(!text.contains("forged"), "{path}: {text}");
        assert!(headers.get("x_user_id").is_none(), "{path}");
        let want_method = if path == "/pub" { "anonymous" } else { "jwt" };
        assert_eq!(
            a.seen("x-auth-method").as_deref(),
            Some(want_method),
            "{path}"
        );
        let want_roles = if path == "/pub" { None } else { Some("user") };
        assert_eq!(a.seen("x-user-roles").as_deref(), want_roles, "{path}");
    }

    // optional: an invalid credential goes on as anonymous.
    let a = call(&gw, "GET", "/opt", &[("authorization", "Bearer garbage")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("anonymous"));
    assert_eq!(a.seen("x-user-id"), None);

    // Roles: a plain user is forbidden on the admin route.
    let a = call(&gw, "GET", "/admin", &[("authorization", &bearer)]).await;
    assert_eq!((a.status, code(&a).as_str()), (403, "forbidden"));

    // A route that accepts only JWTs ignores an API key as if absent.
    let key = new_key(&gw, &token, json!({"name": "ci"})).await.json();
    let sk = key["key"].as_str().unwrap().to_owned();
    let a = call(&gw, "GET", "/jwtonly", &[("x-api-key", &sk)]).await;
    assert_eq!((a.status, code(&a).as_str()), (401, "missing_credentials"));

    // Logout ends the token on the proxy path at once.
    let a = send_json("POST", &gw.url("/auth/logout"), Some(&token), &Value::Null).await;
    assert_eq!(a.status, 204);
    let a = call(&gw, "GET", "/req", &[("authorization", &bearer)]).await;
    assert_eq!((a.status, code(&a).as_str()), (401, "session_revoked"));
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
}

#[tokio::test]
async fn api_keys_secret_and_publishable() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let reg = register(&gw, "keys@example.com").await;
    let token = reg["access_token"].as_str().unwrap().to_owned();

    let a = new_key(
        &gw,
        &token,
        json!({"name": "server", "scopes": ["orders:read"]}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let created = a.json();
    let sk = created["key"].as_str().unwrap().to_owned();
    assert!(sk.starts_with("sk_") && sk.len() >= 35, "{sk}");
    assert_eq!(created["kind"], "secret");
    assert_eq!(created["scopes"], json!(["orders:read"]));
    assert!(sk.starts_with(created["prefix"].as_str().unwrap()));
    for field in ["id", "created_at"] {
        assert!(created[field].is_string(), "{field}");
    }

    // X-API-Key and Bearer both work; the key is not forwarded; its id is.
    for header in [
        ("x-api-key", sk.clone()),
        ("authorization", format!("Bearer {sk}")),
    ] {
        let a = call(&gw, "GET", "/scoped", &[(header.0, &header.1)]).await;
        assert_eq!(a.status, 200, "{header:?} {:?}", a.body);
        assert_eq!(a.seen("x-auth-method").as_deref(), Some("api_key"));
        assert_eq!(a.seen("x-auth-key-id").as_deref(), created["id"].as_str());
        assert_eq!(a.seen("x-user-email").as_deref(), Some("keys@example.com"));
        assert_eq!(a.seen("x-api-key"), None);
        assert_eq!(a.seen("authorization"), None);
    }
    // X-API-Key wins over a bearer token.
    let a = call(
        &gw,
        "GET",
        "/req",
        &[
            ("x-api-key", &sk),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("api_key"));

    // Scopes only narrow: a key without the route's scope is forbidden, a key without
    // scopes acts with its owner's full rights; the admin scope needs an admin owner.
    let other = new_key(
        &gw,
        &token,
        json!({"name": "narrow", "scopes": ["billing"]}),
    )
    .await
    .json();
    let a = call(
        &gw,
        "GET",
        "/scoped",
        &[("x-api-key", other["key"].as_str().unwrap())],
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (403, "forbidden"));
    let full = new_key(&gw, &token, json!({"name": "full"})).await.json();
    let a = call(
        &gw,
        "GET",
        "/scoped",
        &[("x-api-key", full["key"].as_str().unwrap())],
    )
    .await;
    assert_eq!(a.status, 200);
    let a = new_key(&gw, &token, json!({"name": "sneaky", "scopes": ["admin"]})).await;
    assert_eq!((a.status, code(&a).as_str()), (403, "forbidden"));
    let a = new_key(
        &gw,
        &token,
        json!({"name": "", "kind": "weird", "expires_at": "soon"}),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (400, "validation_failed"));
    assert_eq!(a.json()["errors"].as_array().unwrap().len(), 3);

    // A key with one character changed, a truncated key and garbage: invalid_api_key.
    let mut typo = sk.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [typo.as_str(), &sk[..sk.len() - 1], "sk_nope"] {
        let a = call(&gw, "GET", "/req", &[("x-api-key", bad)]).await;
        assert_eq!(
            (a.status, code(&a).as_str()),
            (401, "invalid_api_key"),
            "{bad}"
        );
        assert_eq!(
            a.headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }

    // Publishable keys identify an app: allowed only where the route says so.
    let pk = new_key(&gw, &token, json!({"name": "web", "kind": "publishable"}))
        .await
        .json();
    let pk_key = pk["key"].as_str().unwrap().to_owned();
    assert!(pk_key.starts_with("pk_"));
    let a = call(&gw, "GET", "/apps", &[("x-api-key", &pk_key)]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("publishable_key"));
    assert_eq!(a.seen("x-user-id"), None);
    assert_eq!(a.seen("x-auth-key-id").as_deref(), pk["id"].as_str());
    let a = call(&gw, "GET", "/req", &[("x-api-key", &pk_key)]).await;
    assert_eq!(
        (a.status, code(&a).as_str()),
        (403, "publishable_key_not_allowed")
    );
    let a = call(&gw, "GET", "/opt", &[("x-api-key", &pk_key)]).await;
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("anonymous"));

    // Listing shows no secrets; revoking stops the key at once.
    let a = send_json("GET", &gw.url("/auth/api-keys"), Some(&token), &Value::Null).await;
    assert_eq!(a.status, 200);
    let listed = a.json()["api_keys"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|k| k.get("key").is_none()));
    assert!(!a.body.windows(sk.len()).any(|w| w == sk.as_bytes()));
    let id = created["id"].as_str().unwrap();
    let a = send_json(
        "DELETE",
        &gw.url(&format!("/auth/api-keys/{id}")),
        Some(&token),
        &Value::Null,
    )
    .await;
    assert_eq!(a.status, 204);
    let a = call(&gw, "GET", "/scoped", &[("x-api-key", &sk)]).await;
    assert_eq!((a.status, code(&a).as_str()), (401, "invalid_api_key"));
    // Someone else's key id is not found.
    let stranger = register(&gw, "stranger@example.com").await;
    let full_id = full["id"].as_str().unwrap();
    let a = send_json(
        "DELETE",
        &gw.url(&format!("/auth/api-keys/{full_id}")),
        stranger["access_token"].as_str(),
        &Value::Null,
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (404, "not_found"));

    // A secret key exchanged for tokens; a publishable one cannot log in.
    let a = send_json(
        "POST",
        &gw.url("/auth/login"),
        None,
        &json!({"api_key": full["key"]}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let exchanged = a.json()["access_token"].as_str().unwrap().to_owned();
    let claims: Value = {
        use base64::Engine;
        let part = exchanged.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["amr"], json!(["api_key"]));
    let a = send_json(
        "POST",
        &gw.url("/auth/login"),
        None,
        &json!({"api_key": pk_key}),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (401, "invalid_credentials"));
    // The account API takes an API key too.
    let a = call(
        &gw,
        "GET",
        "/auth/me",
        &[("x-api-key", full["key"].as_str().unwrap())],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["email"], "keys@example.com");
}

#[tokio::test]
async fn forged_and_broken_jwts_are_refused() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let reg = register(&gw, "jwt@example.com").await;
    let good = reg["access_token"].as_str().unwrap().to_owned();
    let header: Value = {
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(good.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let kid = header["kid"].as_str().unwrap().to_owned();
    let claims: Value = {
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(good.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let now = claims["iat"].as_i64().unwrap();
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    // Correctly signed by the gateway's key, then refused for what they say.
    let cases: Vec<(&str, String, &str)> = vec![
        ("control: re-signed as is", sign("at+jwt", &claims), ""),
        (
            "exp as a string",
            sign("at+jwt", &with(json!({"exp": (now + 3600).to_string()}))),
            "invalid_token",
        ),
        (
            "expired",
            sign("at+jwt", &with(json!({"exp": now - 120}))),
            "token_expired",
        ),
        (
            "nbf in the future",
            sign("at+jwt", &with(json!({"nbf": now + 600}))),
            "invalid_token",
        ),
        (
            "wrong aud",
            sign("at+jwt", &with(json!({"aud": "other"}))),
            "invalid_token",
        ),
        (
            "wrong iss",
            sign("at+jwt", &with(json!({"iss": "http://evil"}))),
            "invalid_token",
        ),
        (
            "session cookie typ as bearer",
            sign("gh-session+jwt", &claims),
            "invalid_token",
        ),
        ("no typ", sign("JWT", &claims), "invalid_token"),
    ];
    // Crafted without the key.
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with(json!({"roles": ["admin"]}))),
        parts[2]
    );
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
        parts[1]
    );
    let hs256 = {
        // HS256 "signed" with the public key bytes from the JWKS (the classic confusion).
        let jwks = crate::support::get(&gw.url("/.well-known/jwks.json"))
            .await
            .json();
        let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
        let key = jsonwebtoken::EncodingKey::from_secret(x.as_bytes());
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.typ = header["typ"].as_str().map(str::to_owned);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    };
    let unknown_kid = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "not-a-kid"})),
        parts[1],
        parts[2]
    );
    let mut all = cases;
    all.push(("tampered payload", tampered_payload, "invalid_token"));
    all.push(("alg none", alg_none, "invalid_token"));
    all.push(("HS256 with the public key", hs256, "invalid_token"));
    all.push(("unknown kid", unknown_kid, "invalid_token"));
    for (what, token, want) in all {
        let a = call(
            &gw,
            "GET",
            "/req",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        if want.is_empty() {
            assert_eq!(a.status, 200, "{what}: {:?}", a.body);
        } else {
            assert_eq!((a.status, code(&a).as_str()), (401, want), "{what}");
            assert_eq!(
                a.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn cookie_sessions_with_csrf() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    register(&gw, "web@example.com").await;
    let a = send_json(
        "POST",
        &gw.url("/auth/login"),
        None,
        &json!({"email": "web@example.com", "password": PASSWORD, "session": "cookie"}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let body = a.json();
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    assert_eq!(body["user"]["email"], "web@example.com");
    let set: Vec<String> = a
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set.iter().find(|c| c.starts_with("gh_session=")).unwrap();
    let csrf = set.iter().find(|c| c.starts_with("gh_csrf=")).unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "{session}"
    );
    assert!(!csrf.contains("HttpOnly"), "{csrf}");
    let value = |c: &str| {
        c.split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    };
    let (session_v, csrf_v) = (value(session), value(csrf));
    let cookies = format!("theme=dark; gh_session={session_v}; gh_csrf={csrf_v}");

    // Safe methods need no CSRF proof; the cookies are stripped, others kept.
    let a = call(&gw, "GET", "/req", &[("cookie", &cookies)]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.seen("x-auth-method").as_deref(), Some("cookie"));
    assert_eq!(a.seen("cookie").as_deref(), Some("theme=dark"));

    // Unsafe: no Origin, no token -> 403; a foreign Origin -> 403.
    let a = call(&gw, "POST", "/req", &[("cookie", &cookies)]).await;
    assert_eq!((a.status, code(&a).as_str()), (403, "csrf_failed"));
    let a = call(
        &gw,
        "POST",
        "/req",
        &[("cookie", &cookies), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (403, "csrf_failed"));
    let wrong = format!("{csrf_v}x");
    let a = call(
        &gw,
        "POST",
        "/req",
        &[("cookie", &cookies), ("x-csrf-token", &wrong)],
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (403, "csrf_failed"));
    // The addressed origin, an allowed origin, or the double-submit token pass.
    let own = format!("http://{}", gw.addr);
    for extra in [
        ("origin", own.as_str()),
        ("origin", "https://app.example.com"),
        ("x-csrf-token", csrf_v.as_str()),
    ] {
        let a = call(&gw, "POST", "/req", &[("cookie", &cookies), extra]).await;
        assert_eq!(a.status, 200, "{extra:?}: {:?}", a.body);
    }
    // The account API takes the cookie too, with the same CSRF rule; logout clears it.
    let a = call(&gw, "GET", "/auth/me", &[("cookie", &cookies)]).await;
    assert_eq!(a.status, 200);
    let a = call(&gw, "POST", "/auth/logout", &[("cookie", &cookies)]).await;
    assert_eq!((a.status, code(&a).as_str()), (403, "csrf_failed"));
    let a = call(
        &gw,
        "POST",
        "/auth/logout",
        &[("cookie", &cookies), ("x-csrf-token", &csrf_v)],
    )
    .await;
    assert_eq!(a.status, 204);
    assert!(
        a.headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("gh_session=;"))
    );
    let a = call(&gw, "GET", "/req", &[("cookie", &cookies)]).await;
    assert_eq!((a.status, code(&a).as_str()), (401, "session_revoked"));
    // A session cookie's token is not an access token.
    let a = call(
        &gw,
        "GET",
        "/req",
        &[("authorization", &format!("Bearer {session_v}"))],
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (401, "invalid_token"));
}

#[tokio::test]
async fn route_rate_limits_by_user_with_ietf_headers() {
    let echo = Echo::start();
    let up = echo.url();
    let gw = Gateway::start(&format!(
        r#"
rate_limits: {{ default: {{ requests: 1000, per: 1s }} }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: {{ targets: ["{up}"] }}, auth: required, rate_limit: {{ requests: 10, per: 1m, key: user }} }}
  - {{ name: open, match: {{ path_prefix: /open }}, upstream: {{ targets: ["{up}"] }}, auth: public }}
"#
    ));
    let a = register(&gw, "rl1@example.com").await;
    let b = register(&gw, "rl2@example.com").await;
    let bearer_a = format!("Bearer {}", a["access_token"].as_str().unwrap());
    let bearer_b = format!("Bearer {}", b["access_token"].as_str().unwrap());
    for i in 0..10 {
        let r = call(&gw, "GET", "/api", &[("authorization", &bearer_a)]).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.headers["ratelimit-policy"], "\"api\";q=10;w=60");
        let state = r.headers["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            state.starts_with(&format!("\"api\";r={};t=", 9 - i)),
            "{state}"
        );
    }
    let r = call(&gw, "GET", "/api", &[("authorization", &bearer_a)]).await;
    assert_eq!((r.status, code(&r).as_str()), (429, "rate_limited"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "{retry}");
    assert_eq!(
        r.headers["ratelimit"],
        format!("\"api\";r=0;t={retry}").as_str()
    );
    // Another user has a budget of their own; the default policy covers the public route.
    let r = call(&gw, "GET", "/api", &[("authorization", &bearer_b)]).await;
    assert_eq!(r.status, 200);
    let r = call(&gw, "GET", "/open", &[]).await;
    assert_eq!(r.headers["ratelimit-policy"], "\"default\";q=1000;w=1");
}

#[tokio::test]
async fn partner_registration_is_admin_only_and_idempotent() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let (code_, out, err) = gw.cli(
        &[
            "users",
            "create",
            "--email",
            "root@example.com",
            "--roles",
            "admin",
        ],
        "",
    );
    assert_eq!(code_, 0, "{err}");
    let admin_password = serde_json::from_str::<Value>(out.trim()).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = send_json(
        "POST",
        &gw.url("/auth/login"),
        None,
        &json!({"email": "root@example.com", "password": admin_password}),
    )
    .await;
    let admin = a.json()["access_token"].as_str().unwrap().to_owned();
    let user = register(&gw, "plain@example.com").await;
    let plain = user["access_token"].as_str().unwrap().to_owned();

    let body = json!({"email": "partner-user@example.com", "external_id": "crm-42", "name": "P"});
    let a = send_json("POST", &gw.url("/auth/admin/users"), Some(&plain), &body).await;
    assert_eq!((a.status, code(&a).as_str()), (403, "forbidden"));

    let a = send_json("POST", &gw.url("/auth/admin/users"), Some(&admin), &body).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let created = a.json();
    assert_eq!(created["created"], true);
    assert_eq!(created["user"]["email"], "partner-user@example.com");
    let key = created["api_key"]["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_"));
    // The key works on the proxy path as the new user.
    let r = call(&gw, "GET", "/req", &[("x-api-key", &key)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.seen("x-user-id").as_deref(),
        created["user"]["id"].as_str()
    );

    // Same external id again: the same user, no new key.
    let a = send_json("POST", &gw.url("/auth/admin/users"), Some(&admin), &body).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["created"], false);
    assert_eq!(a.json()["user"]["id"], created["user"]["id"]);
    assert!(a.json().get("api_key").is_none());

    // Another key for that user, issued by the admin; an unknown user is 404.
    let id = created["user"]["id"].as_str().unwrap();
    let a = send_json(
        "POST",
        &gw.url(&format!("/auth/admin/users/{id}/api-keys")),
        Some(&admin),
        &json!({"name": "second", "scopes": ["orders:read"]}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.json()["scopes"], json!(["orders:read"]));
    let a = send_json(
        "POST",
        &gw.url("/auth/admin/users/00000000-0000-4000-8000-000000000000/api-keys"),
        Some(&admin),
        &json!({"name": "x"}),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (404, "not_found"));
    // Overlapping prefix and suffix (an empty id) is not a crash: the path reads as the user
    // `/admin/users/{id}` with the id "api-keys", which has no POST (405) and no such user
    // (404).
    let a = send_json(
        "POST",
        &gw.url("/auth/admin/users/api-keys"),
        Some(&admin),
        &json!({"name": "x"}),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (405, "method_not_allowed"));
    let a = send_json(
        "GET",
        &gw.url("/auth/admin/users/api-keys"),
        Some(&admin),
        &Value::Null,
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (404, "not_found"));

    // An admin's key scoped without `admin` cannot act as admin; with it, it can.
    let narrow = new_key(&gw, &admin, json!({"name": "n", "scopes": ["orders:read"]}))
        .await
        .json();
    let a = call(
        &gw,
        "POST",
        "/auth/admin/users",
        &[("x-api-key", narrow["key"].as_str().unwrap())],
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (403, "forbidden"));
    let wide = new_key(&gw, &admin, json!({"name": "w", "scopes": ["admin"]}))
        .await
        .json();
    let a = send(
        "POST",
        &gw.url("/auth/admin/users"),
        &[
            ("x-api-key", wide["key"].as_str().unwrap()),
            ("content-type", "application/json"),
        ],
        crate::support::full(json!({"email": "p2@example.com"}).to_string()),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    // A taken email is a conflict.
    let a = send_json(
        "POST",
        &gw.url("/auth/admin/users"),
        Some(&admin),
        &json!({"email": "plain@example.com"}),
    )
    .await;
    assert_eq!((a.status, code(&a).as_str()), (409, "already_exists"));
}

#[tokio::test]
async fn identity_assertion_is_signed_and_verifiable_through_the_jwks() {
    let echo = Echo::start();
    let up = echo.url();
    let gw = Gateway::start(&format!(
        r#"
tokens: {{ issuer: http://gatehouse.test, audience: tests }}
routes:
  - {{ name: orders, match: {{ path_prefix: /orders }}, upstream: {{ targets: ["{up}"] }}, auth: optional, identity_assertion: true }}
"#
    ));
    let reg = register(&gw, "assert@example.com").await;
    let bearer = format!("Bearer {}", reg["access_token"].as_str().unwrap());
    let jwks = crate::support::get(&gw.url("/.well-known/jwks.json"))
        .await
        .json();
    let jwk = &jwks["keys"][0];

    let a = call(
        &gw,
        "GET",
        "/orders",
        &[
            ("authorization", &bearer),
            ("x-gatehouse-assertion", "forged"),
        ],
    )
    .await;
    let token = a
        .seen("x-gatehouse-assertion")
        .expect("assertion sent upstream");
    assert_ne!(token, "forged");
    // Verified by jsonwebtoken with the public key from the JWKS, not by Gatehouse's code.
    let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["orders"]);
    validation.set_issuer(&["http://gatehouse.test"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], reg["user"]["id"]);
    assert_eq!(data.claims["roles"], json!(["user"]));
    assert_eq!(
        data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap(),
        60
    );
    assert_eq!(data.header.kid.as_deref(), jwk["kid"].as_str());
    // Reused while fresh rather than signed per request.
    let again = call(&gw, "GET", "/orders", &[("authorization", &bearer)]).await;
    assert_eq!(again.seen("x-gatehouse-assertion"), Some(token));
    // Anonymous: no assertion, and a forged one is removed.
    let a = call(
        &gw,
        "GET",
        "/orders",
        &[("x-gatehouse-assertion", "forged")],
    )
    .await;
    assert_eq!(a.seen("x-gatehouse-assertion"), None);
}

/// A flood of bad API keys costs the store nothing: malformed keys are refused by their
/// checksum, and an unknown well-formed key is looked up once, then cached as unknown.
#[tokio::test]
async fn a_flood_of_bad_keys_does_not_reach_the_store() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let reg = register(&gw, "flood@example.com").await;
    let token = reg["access_token"].as_str().unwrap().to_owned();
    // A real key, revoked: well-formed, checksum right, unknown to the cache at first.
    let key = new_key(&gw, &token, json!({"name": "gone"})).await.json();
    let sk = key["key"].as_str().unwrap().to_owned();
    let id = key["id"].as_str().unwrap();
    send_json(
        "DELETE",
        &gw.url(&format!("/auth/api-keys/{id}")),
        Some(&token),
        &Value::Null,
    )
    .await;
    let lookups = || async {
        let text =
            String::from_utf8_lossy(&crate::support::get(&gw.admin_url("/metrics")).await.body)
                .into_owned();
        text.lines()
            .find(|l| l.starts_with("gatehouse_auth_store_lookups "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    let mut bad = sk.clone().into_bytes();
    bad[20] = if bad[20] == b'x' { b'y' } else { b'x' };
    let bad = String::from_utf8(bad).unwrap();
    let before = lookups().await;
    for _ in 0..200 {
        let a = call(&gw, "GET", "/req", &[("x-api-key", &bad)]).await;
        assert_eq!(a.status, 401);
    }
    assert_eq!(
        lookups().await,
        before,
        "checksum failures reached the store"
    );
    for _ in 0..200 {
        let a = call(&gw, "GET", "/req", &[("x-api-key", "sk_not-even-close")]).await;
        assert_eq!(a.status, 401);
    }
    assert_eq!(lookups().await, before);
    // The revoked key is looked up at most once (it was evicted at revocation), then cached.
    for _ in 0..200 {
        let a = call(&gw, "GET", "/req", &[("x-api-key", &sk)]).await;
        assert_eq!((a.status, code(&a).as_str()), (401, "invalid_api_key"));
    }
    assert!(lookups().await <= before + 1);
}
