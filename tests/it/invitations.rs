//! Invitations through the real binary (SPEC section 5): an admin invites an address, the
//! mail lands in the outbox, the invitee follows the link's token and gets an account with
//! the invited roles and a verified address; links are single-use and only the newest works;
//! and `accounts.registration` decides who may create accounts.

use serde_json::{Value, json};

use crate::admin::admin_token;
use crate::lifecycle::{Mail, read_mails};
use crate::support::{Answer, Echo, Gateway, empty, send, send_json};

const PASSWORD: &str = "correct-horse-battery";

fn gateway(echo: &Echo, registration: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
tokens: {{ issuer: http://gatehouse.test, audience: tests }}
accounts: {{ registration: {registration} }}
routes:
  - {{ name: req, match: {{ path_prefix: /req }}, upstream: {{ targets: ["{up}"] }}, auth: required }}
"#,
        up = echo.url()
    ))
}

fn code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or("").to_owned()
}

fn assert_problem(a: &Answer, status: u16, code_: &str) {
    assert_eq!(
        (a.status, code(a).as_str()),
        (status, code_),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
}

async fn post(gw: &Gateway, path: &str, bearer: Option<&str>, body: Value) -> Answer {
    send_json("POST", &gw.url(path), bearer, &body).await
}

async fn invite(gw: &Gateway, admin: &str, body: Value) -> Answer {
    post(gw, "/auth/admin/invitations", Some(admin), body).await
}

async fn accept(gw: &Gateway, body: Value) -> Answer {
    post(gw, "/auth/invitations/accept", None, body).await
}

/// Waits until the outbox holds `n` invitations (other mails, such as the verification
/// links of sign-ups, are passed over) and returns them, oldest first.
async fn invitations(outbox: &std::path::Path, n: usize) -> Vec<Mail> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found: Vec<Mail> = read_mails(outbox)
            .into_iter()
            .filter(|m| m.subject.contains("invited you"))
            .collect();
        if found.len() >= n || std::time::Instant::now() > deadline {
            assert_eq!(found.len(), n, "{found:#?}");
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
pub(crate) async fn invite_accept_and_single_use() {
    let echo = Echo::start();
    let gw = gateway(&echo, "open");
    let outbox = gw.dir.path().join("data/outbox");
    let root = admin_token(&gw, "root@example.com").await;

    // Admins only; an address with an account is taken; fields are checked.
    let plain = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "plain@example.com", "password": PASSWORD}),
    )
    .await
    .json();
    let plain_token = plain["access_token"].as_str().unwrap();
    assert_problem(
        &invite(&gw, plain_token, json!({"email": "x@example.com"})).await,
        403,
        "forbidden",
    );
    assert_problem(
        &post(
            &gw,
            "/auth/admin/invitations",
            None,
            json!({"email": "x@example.com"}),
        )
        .await,
        401,
        "missing_credentials",
    );
    assert_problem(
        &invite(&gw, &root, json!({"email": "Plain@Example.com"})).await,
        409,
        "already_exists",
    );
    assert_problem(
        &invite(&gw, &root, json!({"email": "not-an-address"})).await,
        400,
        "validation_failed",
    );
    assert_problem(
        &invite(
            &gw,
            &root,
            json!({"email": "x@example.com", "roles": ["no,commas"]}),
        )
        .await,
        400,
        "validation_failed",
    );
    assert_problem(
        &invite(&gw, &root, json!({})).await,
        400,
        "validation_failed",
    );

    // Invited twice: only the newest link works.
    let body = json!({"email": "New.Person@Example.com", "roles": ["user", "editor"]});
    let first = invite(&gw, &root, body.clone()).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let answer = first.json();
    assert_eq!(answer["email"], "new.person@example.com");
    assert_eq!(answer["roles"], json!(["user", "editor"]));
    let expires = answer["expires_at"].as_str().unwrap();
    let expires =
        time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let days = (expires - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((167..=168).contains(&days), "7 days: {days} h");
    assert!(answer.get("token").is_none() && answer.get("link").is_none());
    let second = invite(&gw, &root, body).await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    let mails = invitations(&outbox, 2).await;
    for m in &mails {
        assert!(m.to.contains("new.person@example.com"), "{m:?}");
        assert!(
            m.text.contains("Root"),
            "invited by the admin's name: {m:?}"
        );
        assert!(
            m.text
                .contains("http://gatehouse.test/auth/invitations/accept?token="),
            "{m:?}"
        );
    }
    let (old, token) = (mails[0].token(), mails[1].token());
    assert_eq!(token.len(), 43, "256-bit token");
    assert!(mails[1].html.contains(&token));
    assert_problem(
        &accept(&gw, json!({"token": old, "password": PASSWORD})).await,
        401,
        "invalid_token",
    );

    // Refused fields leave the link working.
    assert_problem(
        &accept(&gw, json!({"token": token, "password": "short"})).await,
        400,
        "weak_password",
    );
    assert_problem(
        &accept(
            &gw,
            json!({"token": token, "password": PASSWORD, "password_confirmation": "other"}),
        )
        .await,
        400,
        "passwords_do_not_match",
    );
    assert_problem(
        &accept(
            &gw,
            json!({"token": token, "password": PASSWORD, "username": "no spaces"}),
        )
        .await,
        400,
        "validation_failed",
    );
    // A username someone has is 409, and the link still works.
    let a = post(
        &gw,
        "/auth/register",
        None,
        json!({"username": "taken_name", "password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_problem(
        &accept(
            &gw,
            json!({"token": token, "password": PASSWORD, "username": "taken_name"}),
        )
        .await,
        409,
        "already_exists",
    );
    assert_problem(
        &accept(&gw, json!({"token": "made-up", "password": PASSWORD})).await,
        401,
        "invalid_token",
    );
    assert_problem(
        &accept(&gw, json!({"password": PASSWORD})).await,
        400,
        "validation_failed",
    );

    // Accepted: signed in as the new user, address verified, the invited roles.
    let a = accept(
        &gw,
        json!({"token": token, "password": PASSWORD, "password_confirmation": PASSWORD,
               "name": "New Person", "username": "newperson"}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let tokens = a.json();
    assert_eq!(tokens["token_type"], "Bearer");
    let user = &tokens["user"];
    assert_eq!(user["email"], "new.person@example.com");
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["roles"], json!(["user", "editor"]));
    assert_eq!(user["name"], "New Person");
    assert_eq!(user["username"], "newperson");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(claims_of(access)["amr"], json!(["pwd"]));
    let me = send_json("GET", &gw.url("/auth/me"), Some(access), &Value::Null).await;
    assert_eq!(me.json(), *user);
    let auth = format!("Bearer {access}");
    let r = send(
        "GET",
        &gw.url("/req/x"),
        &[("authorization", &auth)],
        empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-user-roles").as_deref(), Some("user,editor"));
    let r = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post(
        &gw,
        "/auth/login",
        None,
        json!({"email": "new.person@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Single use; and inviting the address now is 409.
    assert_problem(
        &accept(&gw, json!({"token": token, "password": PASSWORD})).await,
        401,
        "invalid_token",
    );
    assert_problem(
        &invite(&gw, &root, json!({"email": "new.person@example.com"})).await,
        409,
        "already_exists",
    );

    // Without roles an invitation makes a plain user; if the address signs up on its own
    // meanwhile, the invitation can no longer be accepted.
    let a = invite(&gw, &root, json!({"email": "late@example.com"})).await;
    assert_eq!(a.json()["roles"], json!(["user"]));
    let late = invitations(&outbox, 3).await[2].token();
    let a = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "late@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, 201);
    assert_problem(
        &accept(&gw, json!({"token": late, "password": PASSWORD})).await,
        409,
        "already_exists",
    );
}

#[tokio::test]
pub(crate) async fn invite_only_refuses_sign_up_but_takes_invitations() {
    let echo = Echo::start();
    let gw = gateway(&echo, "invite_only");
    let outbox = gw.dir.path().join("data/outbox");
    let root = admin_token(&gw, "root@example.com").await;
    let a = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "self@example.com", "password": PASSWORD}),
    )
    .await;
    assert_problem(&a, 403, "forbidden");

    let a = invite(
        &gw,
        &root,
        json!({"email": "guest@example.com", "roles": ["guest"]}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let token = invitations(&outbox, 1).await[0].token();
    let a = accept(&gw, json!({"token": token, "password": PASSWORD})).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["user"]["roles"], json!(["guest"]));
    assert_eq!(a.json()["user"]["email_verified"], true);

    // Admins still create accounts directly.
    let a = post(
        &gw,
        "/auth/admin/users",
        Some(&root),
        json!({"email": "partner@example.com"}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
}

#[tokio::test]
async fn admin_only_refuses_sign_up_and_invitations() {
    let echo = Echo::start();
    let gw = gateway(&echo, "admin_only");
    let root = admin_token(&gw, "root@example.com").await;
    let a = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": "self@example.com", "password": PASSWORD}),
    )
    .await;
    assert_problem(&a, 403, "forbidden");
    let a = invite(&gw, &root, json!({"email": "guest@example.com"})).await;
    assert_problem(&a, 403, "forbidden");
    assert_problem(
        &accept(&gw, json!({"token": "anything", "password": PASSWORD})).await,
        403,
        "forbidden",
    );
    assert!(
        read_mails(&gw.dir.path().join("data/outbox")).is_empty(),
        "no invitation mailed"
    );

    // Only admins create accounts: over HTTP (partner registration) and with the CLI.
    let a = post(
        &gw,
        "/auth/admin/users",
        Some(&root),
        json!({"email": "partner@example.com"}),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let (status, _, err) = gw.cli(&["users", "create", "--email", "ops@example.com"], "");
    assert_eq!(status, 0, "{err}");
}
