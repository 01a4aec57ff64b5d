//! The account API over HTTP against the real binary (SPEC sections 4, 5 and 6): register,
//! login, refresh rotation with reuse detection, logout, me, password change, restart and
//! signing-key rotation, the CLI store commands, and the discovery documents.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::support::{Answer, Gateway, get, send_json};

const PASSWORD: &str = "correct-horse-battery";

/// A gateway with the account API and a short refresh grace, so reuse can be shown quickly.
fn gateway(extra: &str) -> Gateway {
    Gateway::start(&format!(
        "tokens: {{ issuer: http://gatehouse.test, audience: tests, refresh_reuse_grace: 1s }}\n{extra}"
    ))
}

async fn post(gw: &Gateway, path: &str, bearer: Option<&str>, body: Value) -> Answer {
    send_json("POST", &gw.url(path), bearer, &body).await
}

async fn register(gw: &Gateway, email: &str) -> Value {
    let a = post(
        gw,
        "/auth/register",
        None,
        json!({"email": email, "password": PASSWORD, "name": "Test User"}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.json()
}

async fn login(gw: &Gateway, email: &str, password: &str) -> Answer {
    post(
        gw,
        "/auth/login",
        None,
        json!({"email": email, "password": password}),
    )
    .await
}

async fn me(gw: &Gateway, token: &str) -> Answer {
    send_json("GET", &gw.url("/auth/me"), Some(token), &Value::Null).await
}

fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The token with one character in the middle of its signature changed (the last character
/// may carry only padding bits, so it is left alone).
fn tamper(token: &str) -> String {
    let sig_start = token.rfind('.').unwrap() + 1;
    let at = sig_start + (token.len() - sig_start) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn assert_problem(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert_eq!(
        a.json()["code"],
        code,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
}

#[tokio::test]
pub(crate) async fn register_login_me_logout() {
    let gw = gateway("");
    let reg = register(&gw, "Alice@Example.com").await;
    assert_eq!(reg["token_type"], "Bearer");
    assert_eq!(reg["expires_in"], 3600);
    assert_eq!(reg["user"]["email"], "alice@example.com");
    assert_eq!(reg["user"]["roles"], json!(["user"]));
    assert_eq!(reg["user"]["email_verified"], false);
    assert_eq!(reg["user"]["mfa_enabled"], false);
    assert!(reg["user"]["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(reg["refresh_token"].as_str().unwrap().len() >= 43);

    // The access token is an RFC 9068 JWT with SPEC section 6's claims.
    let token = reg["access_token"].as_str().unwrap();
    let header = header_of(token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());
    let claims = claims_of(token);
    assert_eq!(claims["iss"], "http://gatehouse.test");
    assert_eq!(claims["aud"], "tests");
    assert_eq!(claims["sub"], reg["user"]["id"]);
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["roles"], json!(["user"]));
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    for claim in ["jti", "sid"] {
        assert!(claims[claim].is_string(), "{claim}");
    }

    let a = me(&gw, token).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["cache-control"], "no-store");
    assert_eq!(a.json(), reg["user"]);

    // Login by email (any case) and by username both make new sessions.
    let a = login(&gw, "ALICE@example.com", PASSWORD).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let second = a.json();
    assert_ne!(
        claims_of(second["access_token"].as_str().unwrap())["sid"],
        claims["sid"]
    );

    // Logout ends that session at once; the other session keeps working.
    let a = post(&gw, "/auth/logout", Some(token), Value::Null).await;
    assert_eq!(a.status, 204);
    let a = me(&gw, token).await;
    assert_problem(&a, 401, "session_revoked");
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let refreshed = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": reg["refresh_token"]}),
    )
    .await;
    assert_problem(&refreshed, 401, "invalid_token");
    assert_eq!(
        me(&gw, second["access_token"].as_str().unwrap())
            .await
            .status,
        200
    );

    // No credential, a garbage one, a tampered one.
    let a = get(&gw.url("/auth/me")).await;
    assert_problem(&a, 401, "missing_credentials");
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    assert_problem(&me(&gw, "not-a-jwt").await, 401, "invalid_token");
    let tampered = tamper(second["access_token"].as_str().unwrap());
    assert_problem(&me(&gw, &tampered).await, 401, "invalid_token");
}

#[tokio::test]
pub(crate) async fn username_accounts_and_profile_changes() {
    let gw = gateway("");
    let a = post(
        &gw,
        "/auth/register",
        None,
        json!({"username": "Bob_1", "password": PASSWORD, "password_confirmation": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    // Usernames are case-sensitive.
    assert_problem(&login(&gw, "x", "y").await, 401, "invalid_credentials");
    let a = post(
        &gw,
        "/auth/login",
        None,
        json!({"username": "bob_1", "password": PASSWORD}),
    )
    .await;
    assert_problem(&a, 401, "invalid_credentials");
    let a = post(
        &gw,
        "/auth/login",
        None,
        json!({"username": "Bob_1", "password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, 200);
    let token = a.json()["access_token"].as_str().unwrap().to_owned();

    let a = send_json(
        "PATCH",
        &gw.url("/auth/me"),
        Some(&token),
        &json!({"name": "Bob", "email": "bob@example.com"}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["name"], "Bob");
    assert_eq!(a.json()["email"], "bob@example.com");
    assert_eq!(a.json()["username"], "Bob_1");
    // Removing both ways to sign in by name is refused; bad values are listed.
    let a = send_json(
        "PATCH",
        &gw.url("/auth/me"),
        Some(&token),
        &json!({"email": null, "username": null}),
    )
    .await;
    assert_problem(&a, 400, "validation_failed");
    let a = send_json(
        "PATCH",
        &gw.url("/auth/me"),
        Some(&token),
        &json!({"email": "nope", "username": "x"}),
    )
    .await;
    assert_problem(&a, 400, "validation_failed");
    let fields: Vec<_> = a.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["username", "email"]);
    // Taking someone else's email is a conflict.
    register(&gw, "carol@example.com").await;
    let a = send_json(
        "PATCH",
        &gw.url("/auth/me"),
        Some(&token),
        &json!({"email": "Carol@Example.com"}),
    )
    .await;
    assert_problem(&a, 409, "already_exists");
}

#[tokio::test]
pub(crate) async fn registration_errors() {
    let gw = gateway("");
    register(&gw, "dup@example.com").await;
    let reg = |body: Value| {
        let gw = &gw;
        async move { post(gw, "/auth/register", None, body).await }
    };

    let a = reg(json!({"email": "DUP@example.com", "password": PASSWORD})).await;
    assert_problem(&a, 409, "already_exists");
    post(
        &gw,
        "/auth/register",
        None,
        json!({"username": "taken", "password": PASSWORD}),
    )
    .await;
    let a = reg(json!({"username": "taken", "password": PASSWORD})).await;
    assert_problem(&a, 409, "already_exists");

    let a = reg(json!({"email": "m@example.com", "password": PASSWORD, "password_confirmation": "other-horse-battery"})).await;
    assert_problem(&a, 400, "passwords_do_not_match");
    let a = reg(json!({"email": "w@example.com", "password": "short"})).await;
    assert_problem(&a, 400, "weak_password");
    let a = reg(json!({"email": "w@example.com", "password": "password1"})).await;
    assert_problem(&a, 400, "weak_password");
    let a = reg(json!({"email": "w@example.com", "password": "Qwerty123456"})).await;
    assert_problem(&a, 400, "weak_password");

    // Several wrong fields: every one is listed.
    let a = reg(json!({"email": "not-an-email", "username": "a", "password": "short", "password_confirmation": "x"})).await;
    assert_problem(&a, 400, "validation_failed");
    let fields: Vec<_> = a.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        fields,
        ["email", "username", "password", "password_confirmation"]
    );
    let a = reg(json!({"password": PASSWORD})).await;
    assert_problem(&a, 400, "validation_failed");

    // Not JSON, wrong content type, wrong types, no body.
    let a = crate::support::send(
        "POST",
        &gw.url("/auth/register"),
        &[("content-type", "application/json")],
        crate::support::full("{nope"),
    )
    .await;
    assert_problem(&a, 400, "invalid_request");
    let a = crate::support::send(
        "POST",
        &gw.url("/auth/register"),
        &[("content-type", "application/x-www-form-urlencoded")],
        crate::support::full("email=a@b.co&password=x"),
    )
    .await;
    assert_problem(&a, 400, "invalid_request");
    let a = reg(json!({"email": 5, "password": PASSWORD})).await;
    assert_problem(&a, 400, "invalid_request");
    let a = post(&gw, "/auth/register", None, Value::Null).await;
    assert_problem(&a, 400, "invalid_request");

    // Unknown paths and wrong methods under the prefix.
    assert_problem(&get(&gw.url("/auth/nope")).await, 404, "not_found");
    let a = get(&gw.url("/auth/login")).await;
    assert_problem(&a, 405, "method_not_allowed");
    assert_eq!(a.headers["allow"], "POST");
}

#[tokio::test]
async fn closed_registration_and_register_limit() {
    let gw = gateway("accounts: { registration: invite_only }\n");
    let a = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "a@example.com", "password": PASSWORD}),
    )
    .await;
    assert_problem(&a, 403, "forbidden");

    let gw = gateway("rate_limits: { register: { requests: 2, per: 1h } }\n");
    for i in 0..2 {
        register(&gw, &format!("r{i}@example.com")).await;
    }
    let a = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "r9@example.com", "password": PASSWORD}),
    )
    .await;
    assert_problem(&a, 429, "rate_limited");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
    assert_eq!(a.headers["ratelimit-policy"], "\"register\";q=2;w=3600");
}

#[tokio::test]
pub(crate) async fn failed_logins_look_alike_and_the_sixth_is_limited() {
    let gw = gateway("");
    register(&gw, "victim@example.com").await;

    // Unknown account and wrong password: same status, byte-identical body.
    let unknown = login(&gw, "nobody@example.com", "wrong-password-1").await;
    let wrong = login(&gw, "victim@example.com", "wrong-password-1").await;
    assert_problem(&unknown, 401, "invalid_credentials");
    assert_eq!(unknown.status, wrong.status);
    assert_eq!(unknown.body, wrong.body);
    assert!(!unknown.headers.contains_key("www-authenticate"));

    // Similar timing: both verify an argon2 hash (median of a few tries, generous bound).
    let mut t_unknown = Vec::new();
    let mut t_wrong = Vec::new();
    for i in 0..3 {
        let s = Instant::now();
        login(&gw, &format!("nobody{i}@example.com"), "wrong-password-1").await;
        t_unknown.push(s.elapsed());
    }
    // (victim has 1 failure so far; 3 more leaves one before the limit)
    for _ in 0..3 {
        let s = Instant::now();
        login(&gw, "victim@example.com", "wrong-password-1").await;
        t_wrong.push(s.elapsed());
    }
    t_unknown.sort();
    t_wrong.sort();
    let (u, w) = (t_unknown[1].as_secs_f64(), t_wrong[1].as_secs_f64());
    assert!(
        u > w / 3.0 && w > u / 3.0,
        "unknown {u:.4}s vs wrong {w:.4}s"
    );

    // The 5th failure is still 401; the 6th attempt in the window is 429, even with the
    // right password.
    assert_problem(
        &login(&gw, "victim@example.com", "wrong-password-1").await,
        401,
        "invalid_credentials",
    );
    let a = login(&gw, "victim@example.com", "wrong-password-1").await;
    assert_problem(&a, 429, "rate_limited");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((890..=900).contains(&retry), "{retry}");
    assert_eq!(a.headers["ratelimit-policy"], "\"login\";q=5;w=900");
    let a = login(&gw, "victim@example.com", PASSWORD).await;
    assert_problem(&a, 429, "rate_limited");
    // Another account from the same address is not locked out by this one.
    register(&gw, "other@example.com").await;
    assert_eq!(login(&gw, "other@example.com", PASSWORD).await.status, 200);
}

#[tokio::test]
pub(crate) async fn refresh_rotation_grace_and_reuse_detection() {
    let gw = gateway("");
    let reg = register(&gw, "r@example.com").await;
    let first = reg["refresh_token"].as_str().unwrap().to_owned();

    let a = post(&gw, "/auth/refresh", None, json!({"refresh_token": first})).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let rotated = a.json();
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    // Refresh keeps the session.
    assert_eq!(
        claims_of(&access)["sid"],
        claims_of(reg["access_token"].as_str().unwrap())["sid"]
    );
    assert_eq!(me(&gw, &access).await.status, 200);

    // Two parallel refreshes with one token (two tabs) both succeed.
    let (a, b) = tokio::join!(
        post(&gw, "/auth/refresh", None, json!({"refresh_token": second})),
        post(&gw, "/auth/refresh", None, json!({"refresh_token": second})),
    );
    assert_eq!(
        (a.status, b.status),
        (200, 200),
        "{:?} {:?}",
        a.body,
        b.body
    );
    let newest = b.json()["refresh_token"].as_str().unwrap().to_owned();

    // The same token again after the grace window is treated as stolen: the whole session
    // ends, the newest refresh token and the access tokens included.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let a = post(&gw, "/auth/refresh", None, json!({"refresh_token": second})).await;
    assert_problem(&a, 401, "invalid_token");
    let a = post(&gw, "/auth/refresh", None, json!({"refresh_token": newest})).await;
    assert_problem(&a, 401, "invalid_token");
    assert_problem(&me(&gw, &access).await, 401, "session_revoked");

    // Unknown and missing tokens.
    let a = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": "made-up"}),
    )
    .await;
    assert_problem(&a, 401, "invalid_token");
    let a = post(&gw, "/auth/refresh", None, json!({})).await;
    assert_problem(&a, 400, "validation_failed");
}

#[tokio::test]
pub(crate) async fn password_change_ends_other_sessions() {
    let gw = gateway("");
    let a = register(&gw, "p@example.com").await;
    let mine = a["access_token"].as_str().unwrap().to_owned();
    let other = login(&gw, "p@example.com", PASSWORD).await.json();
    let other_access = other["access_token"].as_str().unwrap();

    let change = |current: &str, new: &str| {
        let body = json!({"current_password": current, "new_password": new});
        let (gw, mine) = (&gw, mine.clone());
        async move { post(gw, "/auth/password", Some(&mine), body).await }
    };
    assert_problem(
        &change("wrong-password-9", "another-long-pass").await,
        400,
        "validation_failed",
    );
    assert_problem(&change(PASSWORD, "short").await, 400, "weak_password");
    assert_eq!(me(&gw, other_access).await.status, 200);

    let a = change(PASSWORD, "another-long-pass").await;
    assert_eq!(a.status, 204, "{:?}", a.body);
    assert_eq!(me(&gw, &mine).await.status, 200);
    assert_problem(&me(&gw, other_access).await, 401, "session_revoked");
    let a = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": other["refresh_token"]}),
    )
    .await;
    assert_problem(&a, 401, "invalid_token");
    assert_problem(
        &login(&gw, "p@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    assert_eq!(
        login(&gw, "p@example.com", "another-long-pass")
            .await
            .status,
        200
    );
}

#[tokio::test]
pub(crate) async fn deleting_the_account() {
    let gw = gateway("");
    let a = register(&gw, "d@example.com").await;
    let token = a["access_token"].as_str().unwrap().to_owned();
    let del = |body: Value| {
        let (gw, token) = (&gw, token.clone());
        async move { send_json("DELETE", &gw.url("/auth/me"), Some(&token), &body).await }
    };
    assert_problem(&del(json!({})).await, 400, "validation_failed");
    assert_problem(
        &del(json!({"password": "wrong-password-1"})).await,
        400,
        "validation_failed",
    );
    assert_eq!(del(json!({"password": PASSWORD})).await.status, 204);
    assert_problem(&me(&gw, &token).await, 401, "session_revoked");
    assert_problem(
        &login(&gw, "d@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    );
    // The email is free again.
    register(&gw, "d@example.com").await;
}

#[tokio::test]
pub(crate) async fn restart_keeps_users_and_verifies_earlier_tokens() {
    let gw = gateway("");
    let reg = register(&gw, "persist@example.com").await;
    let token = reg["access_token"].as_str().unwrap().to_owned();
    let kid = header_of(&token)["kid"].clone();
    let gw = gw.restart();
    assert_eq!(me(&gw, &token).await.status, 200);
    let again = login(&gw, "persist@example.com", PASSWORD).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        header_of(again.json()["access_token"].as_str().unwrap())["kid"],
        kid
    );
    let a = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": reg["refresh_token"]}),
    )
    .await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
pub(crate) async fn signing_key_rotation_keeps_old_tokens_valid() {
    let gw = gateway("");
    let reg = register(&gw, "rot@example.com").await;
    let old = reg["access_token"].as_str().unwrap().to_owned();
    let old_kid = header_of(&old)["kid"].as_str().unwrap().to_owned();

    let (code, out, err) = gw.cli(&["keys", "rotate-signing"], "");
    assert_eq!(code, 0, "{err}");
    let rotated: Value = serde_json::from_str(out.trim()).unwrap();
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    assert_eq!(rotated["alg"], "EdDSA");

    // The running gateway picks the new key up from the store and signs with it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = login(&gw, "rot@example.com", PASSWORD).await;
        assert_eq!(a.status, 200);
        let kid = header_of(a.json()["access_token"].as_str().unwrap())["kid"].clone();
        if kid == new_kid.as_str() {
            assert_eq!(
                me(&gw, a.json()["access_token"].as_str().unwrap())
                    .await
                    .status,
                200
            );
            break;
        }
        assert!(Instant::now() < deadline, "still signing with {kid}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The old token still verifies, and the JWKS lists both keys, the new one first.
    assert_eq!(me(&gw, &old).await.status, 200);
    let jwks = get(&gw.url("/.well-known/jwks.json")).await.json();
    let kids: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kids, [new_kid, old_kid]);
}

#[tokio::test]
pub(crate) async fn cli_creates_and_lists_users() {
    let gw = gateway("");
    let (code, out, err) = gw.cli(
        &[
            "users",
            "create",
            "--email",
            "Admin@Example.com",
            "--username",
            "root_admin",
            "--roles",
            "admin,user",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(created["email"], "admin@example.com");
    assert_eq!(created["roles"], json!(["admin", "user"]));
    let generated = created["password"].as_str().unwrap();
    let a = login(&gw, "admin@example.com", generated).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        claims_of(a.json()["access_token"].as_str().unwrap())["roles"],
        json!(["admin", "user"])
    );

    let (code, out, err) = gw.cli(
        &[
            "users",
            "create",
            "--email",
            "ops@example.com",
            "--password-stdin",
        ],
        "typed-in-password-1\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("typed-in-password-1"));
    assert_eq!(
        login(&gw, "ops@example.com", "typed-in-password-1")
            .await
            .status,
        200
    );

    // Refusals are explained on stderr with exit code 1.
    let (code, _, err) = gw.cli(&["users", "create", "--email", "ops@example.com"], "");
    assert_eq!(code, 1);
    assert!(err.contains("email"), "{err}");
    let (code, _, err) = gw.cli(
        &[
            "users",
            "create",
            "--email",
            "weak@example.com",
            "--password-stdin",
        ],
        "password\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("password"), "{err}");

    // API keys from the command line: issued for a user by email, then revoked by id.
    let (code, out, err) = gw.cli(
        &[
            "keys",
            "create",
            "--user",
            "ops@example.com",
            "--name",
            "deploy",
            "--scopes",
            "a,b",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let key: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(key["key"].as_str().unwrap().starts_with("sk_"));
    assert_eq!(key["scopes"], json!(["a", "b"]));
    let a = crate::support::send(
        "GET",
        &gw.url("/auth/me"),
        &[("x-api-key", key["key"].as_str().unwrap())],
        crate::support::empty(),
    )
    .await;
    assert_eq!(a.json()["email"], "ops@example.com");
    let (code, _, err) = gw.cli(&["keys", "revoke", key["id"].as_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    // Another process revoked it: the listing (read from the store) shows it revoked; the
    // proxy path's cache drops it within `cache.ttl`.
    let ops = login(&gw, "ops@example.com", "typed-in-password-1")
        .await
        .json();
    let listed = send_json(
        "GET",
        &gw.url("/auth/api-keys"),
        ops["access_token"].as_str(),
        &Value::Null,
    )
    .await
    .json();
    assert!(listed["api_keys"][0]["revoked_at"].is_string(), "{listed}");
    let (code, _, err) = gw.cli(&["keys", "create", "--user", "nobody@example.com"], "");
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");

    let (code, out, err) = gw.cli(&["users", "list"], "");
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(out.trim()).unwrap();
    let emails: Vec<_> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(emails, ["admin@example.com", "ops@example.com"]);
}

#[tokio::test]
async fn discovery_documents() {
    let gw = gateway("");
    let a = get(&gw.url("/.well-known/openid-configuration")).await;
    assert_eq!(a.status, 200);
    let doc = a.json();
    assert_eq!(doc["issuer"], "http://gatehouse.test");
    assert_eq!(
        doc["jwks_uri"],
        "http://gatehouse.test/.well-known/jwks.json"
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    let jwks = get(&gw.url("/.well-known/jwks.json")).await.json();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert!(key.get("d").is_none(), "private member in the JWKS: {key}");
    // Answered on any host, before routes.
    let a = crate::support::send(
        "GET",
        &gw.url("/.well-known/jwks.json"),
        &[("host", "other.example")],
        crate::support::empty(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_problem(&get(&gw.url("/.well-known/nope")).await, 404, "not_found");
}

/// Interoperability: PyJWT (an independent implementation) verifies Gatehouse access tokens
/// through the published JWKS, for each signing algorithm.
#[tokio::test]
async fn pyjwt_verifies_tokens_through_the_jwks() {
    for alg in ["EdDSA", "ES256", "RS256"] {
        let gw = Gateway::start(&format!(
            "tokens: {{ issuer: http://gatehouse.test, audience: tests, signing: {{ alg: {alg} }} }}\n"
        ));
        let reg = register(&gw, "py@example.com").await;
        let token = reg["access_token"].as_str().unwrap();
        let script = r#"
import json, sys, jwt
url, token = sys.argv[1], sys.argv[2]
key = jwt.PyJWKClient(url).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=[sys.argv[3]], audience="tests",
                    issuer="http://gatehouse.test", options={"require": ["exp", "iat", "sub"]})
print(json.dumps(claims))
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script, &gw.url("/.well-known/jwks.json"), token, alg])
            .output()
            .expect("python3 with PyJWT (`pip install 'pyjwt[crypto]'`, see .ci/run)");
        assert!(
            out.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let claims: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(claims["sub"], reg["user"]["id"], "{alg}");
        // And PyJWT refuses a token whose signature was altered.
        let bad = tamper(token);
        let out = std::process::Command::new("python3")
            .args(["-c", script, &gw.url("/.well-known/jwks.json"), &bad, alg])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{alg}: PyJWT accepted a tampered token"
        );
    }
}

/// No secret reaches the logs: a full register / login / refresh / password change / logout
/// run with the most verbose log level, then the captured stderr is searched for every
/// password and token that crossed the wire.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let gw = gateway("log: { level: trace, format: json, access_log: true }\n");
    let reg = register(&gw, "quiet@example.com").await;
    let failed = login(&gw, "quiet@example.com", "wrong-password-7").await;
    assert_eq!(failed.status, 401);
    let logged_in = login(&gw, "quiet@example.com", PASSWORD).await.json();
    let refreshed = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": logged_in["refresh_token"]}),
    )
    .await
    .json();
    let access = refreshed["access_token"].as_str().unwrap();
    assert_eq!(me(&gw, access).await.status, 200);
    let a = post(
        &gw,
        "/auth/password",
        Some(access),
        json!({"current_password": PASSWORD, "new_password": "brand-new-secret-22"}),
    )
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(
        post(&gw, "/auth/logout", Some(access), Value::Null)
            .await
            .status,
        204
    );
    // Give the log writer a moment, and make sure something was captured at all.
    assert!(gw.wait_log("/auth/logout", Duration::from_secs(5)));
    let logs = gw.stderr();
    let mut secrets = vec![
        PASSWORD.to_owned(),
        "wrong-password-7".to_owned(),
        "brand-new-secret-22".to_owned(),
    ];
    for answer in [&reg, &logged_in, &refreshed] {
        for field in ["access_token", "refresh_token"] {
            let token = answer[field].as_str().unwrap();
            secrets.push(token.to_owned());
            // A signature alone would be as bad as the token.
            secrets.push(token.rsplit('.').next().unwrap().to_owned());
        }
    }
    for secret in secrets {
        assert!(!logs.contains(&secret), "a secret is in the logs: {secret}");
    }
}
