//! A user's own sessions through the real binary (SPEC section 5, `/auth/sessions`): the
//! list with user agent, address and the current one marked, `last_used_at` moved by a
//! refresh and by authenticated requests, ending one session or all others, and ended
//! sessions refused on the proxy path at once.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::support::{Answer, Echo, Gateway, empty, full, send};

const PASSWORD: &str = "correct-horse-battery";

fn gateway(echo: &Echo) -> Gateway {
    Gateway::start(&format!(
        r#"
tokens: {{ issuer: http://gatehouse.test, audience: tests }}
routes:
  - {{ name: req, match: {{ path_prefix: /req }}, upstream: {{ targets: ["{up}"] }}, auth: required }}
"#,
        up = echo.url()
    ))
}

/// A JSON request with an optional bearer token and user agent.
async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    user_agent: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    if let Some(ua) = user_agent {
        headers.push(("user-agent", ua));
    }
    let body = match body {
        Some(b) => full(b.to_string()),
        None => empty(),
    };
    send(method, &gw.url(path), &headers, body).await
}

async fn login(gw: &Gateway, email: &str, user_agent: &str) -> Value {
    let a = call(
        gw,
        "POST",
        "/auth/login",
        None,
        Some(user_agent),
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.json()
}

fn sid(token: &str) -> String {
    let part = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap();
    claims["sid"].as_str().unwrap().to_owned()
}

fn access(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_owned()
}

fn code(a: &Answer) -> String {
    a.json()["code"].as_str().unwrap_or("").to_owned()
}

async fn list(gw: &Gateway, token: &str) -> Vec<Value> {
    let a = call(gw, "GET", "/auth/sessions", Some(token), None, None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.headers["cache-control"], "no-store");
    a.json().as_array().unwrap().clone()
}

fn find<'a>(sessions: &'a [Value], id: &str) -> &'a Value {
    sessions
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {sessions:?}"))
}

async fn proxied(gw: &Gateway, token: &str) -> Answer {
    call(gw, "GET", "/req/x", Some(token), None, None).await
}

#[tokio::test]
pub(crate) async fn list_and_end_sessions() {
    let echo = Echo::start();
    let gw = gateway(&echo);
    let reg = call(
        &gw,
        "POST",
        "/auth/register",
        None,
        Some("agent-A/1.0"),
        Some(json!({"email": "ada@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(reg.status, 201, "{:?}", reg.body);
    let a = reg.json();
    let b = login(&gw, "ada@example.com", "agent-B/2.0").await;
    let c = login(&gw, "ada@example.com", "agent-C/3.0").await;
    let (sid_a, sid_b, sid_c) = (sid(&access(&a)), sid(&access(&b)), sid(&access(&c)));

    // Three sessions, each with its agent and address; only the caller's is current.
    let sessions = list(&gw, &access(&b)).await;
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    for (id, agent) in [
        (&sid_a, "agent-A/1.0"),
        (&sid_b, "agent-B/2.0"),
        (&sid_c, "agent-C/3.0"),
    ] {
        let s = find(&sessions, id);
        assert_eq!(s["user_agent"], agent);
        assert_eq!(s["ip"], "127.0.0.1");
        assert_eq!(s["current"], *id == sid_b, "{s}");
        for field in ["created_at", "last_used_at"] {
            assert!(s[field].as_str().unwrap().ends_with('Z'), "{s}");
        }
        assert_eq!(
            s.as_object().unwrap().len(),
            6,
            "exactly SPEC's fields: {s}"
        );
    }
    // The listing itself counts as a use of the current session: it is first.
    assert_eq!(sessions[0]["id"], sid_b.as_str());

    // A refresh moves `last_used_at` of its session.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = call(
        &gw,
        "POST",
        "/auth/refresh",
        None,
        None,
        Some(json!({"refresh_token": a["refresh_token"]})),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.body);
    let a_token = access(&refreshed.json());
    let sessions = list(&gw, &access(&b)).await;
    let s = find(&sessions, &sid_a);
    assert_ne!(s["last_used_at"], s["created_at"], "{s}");

    // Authenticated requests move it too, written in batches every few seconds.
    let before = find(&list(&gw, &access(&b)).await, &sid_c)["last_used_at"].clone();
    assert_eq!(proxied(&gw, &access(&c)).await.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sessions = list(&gw, &access(&b)).await;
        if find(&sessions, &sid_c)["last_used_at"] != before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Ending one session: its access token is refused on the proxy path at once, even
    // though the proxy path had it cached.
    assert_eq!(proxied(&gw, &a_token).await.status, 200);
    let path = format!("/auth/sessions/{sid_a}");
    let ended = call(&gw, "DELETE", &path, Some(&access(&b)), None, None).await;
    assert_eq!(ended.status, 204, "{:?}", ended.body);
    let r = proxied(&gw, &a_token).await;
    assert_eq!((r.status, code(&r).as_str()), (401, "session_revoked"));
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    // Its refresh token is dead too.
    let again = call(
        &gw,
        "POST",
        "/auth/refresh",
        None,
        None,
        Some(json!({"refresh_token": refreshed.json()["refresh_token"]})),
    )
    .await;
    assert_eq!(
        (again.status, code(&again).as_str()),
        (401, "invalid_token")
    );
    assert_eq!(list(&gw, &access(&b)).await.len(), 2);

    // An ended, unknown or someone else's session is 404, all alike.
    let r = call(&gw, "DELETE", &path, Some(&access(&b)), None, None).await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    let other = call(
        &gw,
        "POST",
        "/auth/register",
        None,
        None,
        Some(json!({"email": "bob@example.com", "password": PASSWORD})),
    )
    .await
    .json();
    let bob_path = format!("/auth/sessions/{}", sid(&access(&other)));
    let r = call(&gw, "DELETE", &bob_path, Some(&access(&b)), None, None).await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    assert_eq!(proxied(&gw, &access(&other)).await.status, 200);
    let r = call(
        &gw,
        "DELETE",
        "/auth/sessions/nope",
        Some(&access(&b)),
        None,
        None,
    )
    .await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));

    // Ending all the others: C stops at once, B (the caller) keeps working.
    assert_eq!(proxied(&gw, &access(&c)).await.status, 200);
    let r = call(
        &gw,
        "DELETE",
        "/auth/sessions",
        Some(&access(&b)),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = proxied(&gw, &access(&c)).await;
    assert_eq!((r.status, code(&r).as_str()), (401, "session_revoked"));
    assert_eq!(proxied(&gw, &access(&b)).await.status, 200);
    let sessions = list(&gw, &access(&b)).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["id"], sid_b.as_str());
    assert_eq!(sessions[0]["current"], true);

    // Ending the current session by id is a logout.
    let path = format!("/auth/sessions/{sid_b}");
    let r = call(&gw, "DELETE", &path, Some(&access(&b)), None, None).await;
    assert_eq!(r.status, 204);
    let r = proxied(&gw, &access(&b)).await;
    assert_eq!((r.status, code(&r).as_str()), (401, "session_revoked"));

    // Without a credential: 401; a wrong method: 405.
    let r = call(&gw, "GET", "/auth/sessions", None, None, None).await;
    assert_eq!((r.status, code(&r).as_str()), (401, "missing_credentials"));
    let r = call(&gw, "POST", "/auth/sessions", None, None, None).await;
    assert_eq!(r.status, 405);
}
