//! TOTP MFA through the real binary (SPEC section 5, `/auth/mfa/...`): codes come from an
//! independent implementation, Python's `pyotp`, fed the secret the gateway handed out.
//!
//! Time steps: a code for the current step stays acceptable for at least 30 s (one step of
//! skew) and one for the next step for at least 60 s, so every flow here uses those two and
//! never the previous step, which could slide out of the window mid-test.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::lifecycle::wait_mails;
use crate::support::{Answer, Gateway, send_json};

const PASSWORD: &str = "correct-horse-battery";

async fn post(gw: &Gateway, path: &str, bearer: Option<&str>, body: Value) -> Answer {
    send_json("POST", &gw.url(path), bearer, &body).await
}

fn code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or("").to_owned()
}

/// `pyotp.TOTP(secret).at(now + offset)`: the code of the step `offset` seconds away.
pub(crate) fn totp(secret: &str, offset_secs: i64) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import pyotp, sys, time; print(pyotp.TOTP(sys.argv[1]).at(time.time() + int(sys.argv[2])))",
            secret,
            &offset_secs.to_string(),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyotp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// What `pyotp.parse_uri` reads from an `otpauth://` URI: (secret, issuer, name, digits,
/// interval, digest).
fn parse_uri(uri: &str) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, pyotp, sys; t = pyotp.parse_uri(sys.argv[1]); print(json.dumps([t.secret, t.issuer, t.name, t.digits, t.interval, t.digest().name]))",
            uri,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyotp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn claims(access_token: &str) -> Value {
    let part = access_token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn register(gw: &Gateway, email: &str) -> String {
    let reg = post(
        gw,
        "/auth/register",
        None,
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(reg.status, 201, "{:?}", reg.body);
    reg.json()["access_token"].as_str().unwrap().to_owned()
}

async fn login(gw: &Gateway, email: &str) -> Answer {
    post(
        gw,
        "/auth/login",
        None,
        json!({"email": email, "password": PASSWORD}),
    )
    .await
}

/// A password login that must stop at the second factor; returns the `mfa_token`.
async fn mfa_token(gw: &Gateway, email: &str) -> String {
    let a = login(gw, email).await;
    assert_eq!((a.status, code(&a)), (401, "mfa_required".into()), "{a:?}");
    let token = a.json()["mfa_token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43, "256 bits: {token}");
    token
}

async fn verify(gw: &Gateway, mfa_token: &str, code: &str) -> Answer {
    post(
        gw,
        "/auth/mfa/verify",
        None,
        json!({"mfa_token": mfa_token, "code": code}),
    )
    .await
}

async fn me(gw: &Gateway, access: &str) -> Value {
    let a = send_json("GET", &gw.url("/auth/me"), Some(access), &Value::Null).await;
    assert_eq!(a.status, 200, "{a:?}");
    a.json()
}

/// An account with confirmed TOTP MFA: (access token, secret, recovery codes, the code
/// spent on confirmation).
struct Enrolled {
    access: String,
    secret: String,
    recovery: Vec<String>,
    confirm_code: String,
}

async fn enrol(gw: &Gateway, access: &str) -> Enrolled {
    let e = post(gw, "/auth/mfa/totp", Some(access), Value::Null).await;
    assert_eq!(e.status, 200, "{e:?}");
    let secret = e.json()["secret"].as_str().unwrap().to_owned();
    let confirm_code = totp(&secret, 0);
    let c = post(
        gw,
        "/auth/mfa/totp/confirm",
        Some(access),
        json!({"code": confirm_code}),
    )
    .await;
    assert_eq!(c.status, 200, "{c:?}");
    let recovery = c.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    Enrolled {
        access: access.to_owned(),
        secret,
        recovery,
        confirm_code,
    }
}

/// Enrol, confirm, sign in with the second factor, replays refused, recovery codes once
/// each, cookie sessions, and refused tokens.
#[tokio::test]
pub(crate) async fn enrol_confirm_and_sign_in_with_a_second_factor() {
    let gw = Gateway::start("tokens: { issuer: http://gatehouse.test }\n");
    let email = "ada@example.com";
    let access = register(&gw, email).await;
    assert_eq!(me(&gw, &access).await["mfa_enabled"], false);

    // Enrolment: a 160-bit base32 secret and a URI an authenticator app reads.
    let e = post(&gw, "/auth/mfa/totp", Some(&access), Value::Null).await;
    assert_eq!(e.status, 200, "{e:?}");
    assert_eq!(e.headers["cache-control"], "no-store");
    let body = e.json();
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32, "{secret}");
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert_eq!(
        parse_uri(uri),
        json!([secret, "gatehouse.test", email, 6, 30, "sha1"])
    );
    // Pending is not enabled: sign-in still needs only the password.
    assert_eq!(me(&gw, &access).await["mfa_enabled"], false);
    assert_eq!(login(&gw, email).await.status, 200);

    // Confirmation: a wrong code is refused, a right one gives ten recovery codes.
    let wrong = post(
        &gw,
        "/auth/mfa/totp/confirm",
        Some(&access),
        json!({"code": "12345"}),
    )
    .await;
    assert_eq!(
        (wrong.status, code(&wrong)),
        (400, "validation_failed".into())
    );
    let confirm_code = totp(&secret, 0);
    let c = post(
        &gw,
        "/auth/mfa/totp/confirm",
        Some(&access),
        json!({"code": confirm_code}),
    )
    .await;
    assert_eq!(c.status, 200, "{c:?}");
    let recovery: Vec<String> = c.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let unique: std::collections::HashSet<_> = recovery.iter().collect();
    assert_eq!(unique.len(), 10);
    assert_eq!(me(&gw, &access).await["mfa_enabled"], true);
    // No second enrolment while enabled.
    let again = post(&gw, "/auth/mfa/totp", Some(&access), Value::Null).await;
    assert_eq!((again.status, code(&again)), (409, "already_exists".into()));

    // Password login now stops at the second factor: a problem with the token, no tokens.
    let a = login(&gw, email).await;
    assert_eq!((a.status, code(&a)), (401, "mfa_required".into()));
    assert_eq!(a.headers["content-type"], "application/problem+json");
    assert!(a.json().get("access_token").is_none());
    let token = a.json()["mfa_token"].as_str().unwrap().to_owned();

    // The code spent on confirmation cannot finish a sign-in.
    let spent = verify(&gw, &token, &confirm_code).await;
    assert_eq!(
        (spent.status, code(&spent)),
        (401, "invalid_credentials".into())
    );
    // The next step's code does; amr is the first factor plus mfa.
    let next = totp(&secret, 30);
    let ok = verify(&gw, &token, &next).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let body = ok.json();
    let mfa_access = body["access_token"].as_str().unwrap().to_owned();
    assert!(body["refresh_token"].as_str().is_some());
    assert_eq!(claims(&mfa_access)["amr"], json!(["pwd", "mfa"]));
    assert_eq!(me(&gw, &mfa_access).await["mfa_enabled"], true);
    // The token is used up.
    let reused = verify(&gw, &token, &next).await;
    assert_eq!(
        (reused.status, code(&reused)),
        (401, "invalid_token".into())
    );

    // The same code on a fresh token: a replay, refused; the token survives the wrong code.
    let token = mfa_token(&gw, email).await;
    let replay = verify(&gw, &token, &next).await;
    assert_eq!(
        (replay.status, code(&replay)),
        (401, "invalid_credentials".into())
    );
    // A recovery code works, once.
    let ok = verify(&gw, &token, &recovery[0]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        claims(ok.json()["access_token"].as_str().unwrap())["amr"],
        json!(["pwd", "mfa"])
    );
    let token = mfa_token(&gw, email).await;
    let twice = verify(&gw, &token, &recovery[0]).await;
    assert_eq!(
        (twice.status, code(&twice)),
        (401, "invalid_credentials".into())
    );
    // Typed without dashes and in capitals, another one works.
    let typed = recovery[1].replace('-', "").to_uppercase();
    assert_eq!(verify(&gw, &token, &typed).await.status, 200);

    // `"session": "cookie"` at login carries through the second step.
    let a = post(
        &gw,
        "/auth/login",
        None,
        json!({"email": email, "password": PASSWORD, "session": "cookie"}),
    )
    .await;
    assert_eq!((a.status, code(&a)), (401, "mfa_required".into()));
    assert!(a.headers.get("set-cookie").is_none());
    let token = a.json()["mfa_token"].as_str().unwrap().to_owned();
    let ok = verify(&gw, &token, &recovery[2]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.json().get("access_token").is_none(), "{ok:?}");
    let cookies: Vec<_> = ok
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cookies.iter().any(|c| c.contains("gh_session=")),
        "{cookies:?}"
    );

    // A password change voids sign-ins that got past the old password.
    let token = mfa_token(&gw, email).await;
    let changed = post(
        &gw,
        "/auth/password",
        Some(&mfa_access),
        json!({"current_password": PASSWORD, "new_password": "purple-monkey-dishwasher"}),
    )
    .await;
    assert_eq!(changed.status, 204, "{changed:?}");
    let voided = verify(&gw, &token, &recovery[3]).await;
    assert_eq!(
        (voided.status, code(&voided)),
        (401, "invalid_token".into())
    );

    // Refused tokens and bodies.
    let bad = verify(&gw, "not-a-token", &totp(&secret, 0)).await;
    assert_eq!((bad.status, code(&bad)), (401, "invalid_token".into()));
    let missing = post(&gw, "/auth/mfa/verify", None, json!({})).await;
    assert_eq!(
        (missing.status, code(&missing)),
        (400, "validation_failed".into())
    );
    assert_eq!(missing.json()["errors"].as_array().unwrap().len(), 2);
    let anonymous = post(&gw, "/auth/mfa/totp", None, Value::Null).await;
    assert_eq!(
        (anonymous.status, code(&anonymous)),
        (401, "missing_credentials".into())
    );
    // No secret or code reached the log.
    let log = gw.stderr();
    assert!(!log.contains(&secret) && !log.contains(&recovery[0]) && !log.contains(&next));
}

/// Disabling needs a valid code; afterwards the password alone signs in again.
#[tokio::test]
pub(crate) async fn disable_needs_a_valid_code() {
    let gw = Gateway::start("");
    let email = "bo@example.com";
    let access = register(&gw, email).await;
    let enrolled = enrol(&gw, &access).await;
    let delete = |body: Value| {
        let url = gw.url("/auth/mfa/totp");
        let access = enrolled.access.clone();
        async move { send_json("DELETE", &url, Some(&access), &body).await }
    };
    let none = delete(Value::Null).await;
    assert_eq!(
        (none.status, code(&none)),
        (400, "validation_failed".into())
    );
    let wrong = delete(json!({"code": "abcd-efgh-jkmn-pqrs"})).await;
    assert_eq!(
        (wrong.status, code(&wrong)),
        (400, "validation_failed".into())
    );
    let spent = delete(json!({"code": enrolled.confirm_code})).await;
    assert_eq!(
        (spent.status, code(&spent)),
        (400, "validation_failed".into())
    );
    assert_eq!(me(&gw, &access).await["mfa_enabled"], true);
    mfa_token(&gw, email).await;

    let ok = delete(json!({"code": totp(&enrolled.secret, 30)})).await;
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(me(&gw, &access).await["mfa_enabled"], false);
    let a = login(&gw, email).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        claims(a.json()["access_token"].as_str().unwrap())["amr"],
        json!(["pwd"])
    );
    let again = delete(json!({"code": totp(&enrolled.secret, 0)})).await;
    assert_eq!(
        (again.status, code(&again)),
        (400, "invalid_request".into())
    );
    // The old recovery codes died with it; a new enrolment starts afresh.
    let renewed = enrol(&gw, &access).await;
    assert_ne!(renewed.secret, enrolled.secret);
    let token = mfa_token(&gw, email).await;
    let old = verify(&gw, &token, &enrolled.recovery[0]).await;
    assert_eq!(
        (old.status, code(&old)),
        (401, "invalid_credentials".into())
    );
    // A recovery code also disables.
    let ok = delete(json!({"code": renewed.recovery[0]})).await;
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(login(&gw, email).await.status, 200);
}

/// Wrong codes count toward `rate_limits.login`: past the limit even the right code is
/// refused (and so is disabling), while the password step is not what was guessed.
#[tokio::test]
async fn wrong_codes_count_toward_the_login_limit() {
    let gw = Gateway::start("rate_limits: { login: { attempts: 3, per: 15m } }\n");
    let email = "cy@example.com";
    let access = register(&gw, email).await;
    let enrolled = enrol(&gw, &access).await;
    let token = mfa_token(&gw, email).await;
    for wrong in ["000000", "999999", "0000-0000-0000-0000"] {
        let a = verify(&gw, &token, wrong).await;
        // "000000" or "999999" being the right code is a one-in-a-million chance.
        assert_eq!((a.status, code(&a)), (401, "invalid_credentials".into()));
    }
    let right = totp(&enrolled.secret, 30);
    let limited = verify(&gw, &token, &right).await;
    assert_eq!(
        (limited.status, code(&limited)),
        (429, "rate_limited".into())
    );
    assert!(limited.headers.get("retry-after").is_some());
    // A new token does not reset the count, nor does the right password.
    let token = mfa_token(&gw, email).await;
    let limited = verify(&gw, &token, &right).await;
    assert_eq!(limited.status, 429);
    let disable = send_json(
        "DELETE",
        &gw.url("/auth/mfa/totp"),
        Some(&access),
        &json!({"code": right}),
    )
    .await;
    assert_eq!(disable.status, 429);
}

/// Ten concurrent verifies of one code on ten tokens: exactly one signs in; the same for a
/// recovery code.
#[tokio::test]
pub(crate) async fn one_code_wins_under_concurrency() {
    let gw = Gateway::start("rate_limits: { login: { attempts: 1000, per: 15m } }\n");
    let email = "di@example.com";
    let access = register(&gw, email).await;
    let enrolled = enrol(&gw, &access).await;
    for code_to_race in [totp(&enrolled.secret, 30), enrolled.recovery[3].clone()] {
        let mut tokens = Vec::new();
        for _ in 0..10 {
            tokens.push(mfa_token(&gw, email).await);
        }
        let answers = join_all(tokens.iter().map(|t| verify(&gw, t, &code_to_race))).await;
        let ok = answers.iter().filter(|a| a.status == 200).count();
        assert_eq!(ok, 1, "{answers:?}");
        for a in answers.iter().filter(|a| a.status != 200) {
            assert_eq!((a.status, code(a)), (401, "invalid_credentials".into()));
        }
    }
}

/// A magic link signs an account with MFA in only after the code; `redirect_to` comes back
/// from the second step.
#[tokio::test]
async fn magic_link_sign_in_asks_for_the_second_factor() {
    let gw = Gateway::start("tokens: { issuer: http://gatehouse.test }\n");
    let outbox = gw.dir.path().join("data/outbox");
    let email = "lin@example.com";
    let access = register(&gw, email).await;
    wait_mails(&outbox, 1).await;
    let enrolled = enrol(&gw, &access).await;
    let asked = post(
        &gw,
        "/auth/magic-link",
        None,
        json!({"email": email, "redirect_to": "/welcome"}),
    )
    .await;
    assert_eq!(asked.status, 202);
    let link = wait_mails(&outbox, 2).await[1].token();
    let a = post(&gw, "/auth/magic-link/verify", None, json!({"token": link})).await;
    assert_eq!((a.status, code(&a)), (401, "mfa_required".into()), "{a:?}");
    assert!(a.json().get("access_token").is_none());
    let token = a.json()["mfa_token"].as_str().unwrap().to_owned();
    let ok = verify(&gw, &token, &totp(&enrolled.secret, 30)).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let body = ok.json();
    assert_eq!(body["redirect_to"], "/welcome");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["amr"],
        json!(["otp", "mfa"])
    );
}

/// Two replicas on one Redis (SPEC section 7): MFA enabled through one is required by the
/// other, and ten concurrent verifies of one code spread over both: exactly one signs in.
#[tokio::test]
async fn one_code_wins_across_two_replicas_on_redis() {
    let redis = crate::support::redis::RedisServer::start();
    let config = format!(
        "store: {{ kind: redis, url: \"{}\" }}\nrate_limits: {{ login: {{ attempts: 1000, per: 15m }} }}\n",
        redis.url()
    );
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    let email = "eve@example.com";
    let access = register(&a, email).await;
    let enrolled = enrol(&a, &access).await;
    let on_b = send_json("GET", &b.url("/auth/me"), Some(&access), &Value::Null).await;
    assert_eq!(on_b.json()["mfa_enabled"], true, "{on_b:?}");
    let mut tokens = Vec::new();
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        tokens.push((gw, mfa_token(gw, email).await));
    }
    let next = totp(&enrolled.secret, 30);
    let answers = join_all(tokens.iter().map(|(gw, t)| verify(gw, t, &next))).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, 1, "{answers:?}");
    // A token made on one replica is finished on the other.
    let token = mfa_token(&a, email).await;
    let done = verify(&b, &token, &enrolled.recovery[0]).await;
    assert_eq!(done.status, 200, "{done:?}");
}

/// A user who lost both the authenticator and the recovery codes: an admin turns the second
/// factor off; pending `mfa_token`s die with it and the next login needs only the password.
#[tokio::test]
async fn an_admin_turns_off_a_lost_second_factor() {
    let gw = Gateway::start("tokens: { issuer: http://gatehouse.test }\n");
    let email = "lost@example.com";
    let access = register(&gw, email).await;
    let user_id = me(&gw, &access).await["id"].as_str().unwrap().to_owned();
    enrol(&gw, &access).await;
    let pending = mfa_token(&gw, email).await;
    let path = gw.url(&format!("/auth/admin/users/{user_id}/mfa"));

    // Not for the user themself (that needs a code) nor for anyone but an admin.
    let refused = send_json("DELETE", &path, Some(&access), &Value::Null).await;
    assert_eq!((refused.status, code(&refused)), (403, "forbidden".into()));
    let root = crate::admin::admin_token(&gw, "root@example.com").await;
    let done = send_json("DELETE", &path, Some(&root), &Value::Null).await;
    assert_eq!(done.status, 204, "{done:?}");
    let missing = send_json(
        "DELETE",
        &gw.url("/auth/admin/users/no-such-user/mfa"),
        Some(&root),
        &Value::Null,
    )
    .await;
    assert_eq!(missing.status, 404);

    assert_eq!(me(&gw, &access).await["mfa_enabled"], false);
    let old = verify(&gw, &pending, "000000").await;
    assert_eq!((old.status, code(&old)), (401, "invalid_token".into()));
    let login = login(&gw, email).await;
    assert_eq!(login.status, 200, "{login:?}");
    assert!(login.json()["access_token"].is_string());
}
