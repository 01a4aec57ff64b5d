//! Several replicas on one Redis (SPEC section 7): two real gateway processes share users,
//! keys, sessions and signing keys through a real redis-server.

use serde_json::{Value, json};

use crate::support::redis::RedisServer;
use crate::support::{Answer, Echo, Gateway, send, send_json};

const PASSWORD: &str = "correct-horse-battery";

fn replica(redis: &RedisServer, echo: &Echo) -> Gateway {
    Gateway::start(&format!(
        r#"
store: {{ kind: redis, url: "{redis}" }}
tokens: {{ issuer: http://gatehouse.test, audience: tests }}
routes:
  - {{ name: req, match: {{ path_prefix: /req }}, upstream: {{ targets: ["{up}"] }}, auth: required }}
"#,
        redis = redis.url(),
        up = echo.url()
    ))
}

async fn post(gw: &Gateway, path: &str, bearer: Option<&str>, body: Value) -> Answer {
    send_json("POST", &gw.url(path), bearer, &body).await
}

/// Registers `email` through `gw`; the access token.
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

/// A secret API key of the token's user, made through `gw`: its JSON (`id`, `key`, ...).
async fn new_key(gw: &Gateway, token: &str, name: &str) -> Value {
    let key = post(
        gw,
        "/auth/api-keys",
        Some(token),
        json!({"name": name, "kind": "secret"}),
    )
    .await;
    assert_eq!(key.status, 201, "{:?}", key.body);
    key.json()
}

/// Revokes the key with this id through `gw`.
async fn revoke_key(gw: &Gateway, token: &str, id: &Value) {
    let revoked = send(
        "DELETE",
        &gw.url(&format!("/auth/api-keys/{}", id.as_str().unwrap())),
        &[("authorization", &format!("Bearer {token}"))],
        crate::support::empty(),
    )
    .await;
    assert_eq!(revoked.status, 204, "{:?}", revoked.body);
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    send("GET", &gw.url(path), headers, crate::support::empty()).await
}

#[tokio::test]
async fn two_replicas_behave_as_one_gateway() {
    let redis = RedisServer::start();
    let echo = Echo::start();
    let a = replica(&redis, &echo);
    let b = replica(&redis, &echo);

    // Registered on A: B logs the user in, and the tokens either replica signs verify on
    // the other (both sign with the key the first one stored).
    let from_a = register(&a, "ada@example.com").await;
    let login = post(
        &b,
        "/auth/login",
        None,
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    let from_b = login.json()["access_token"].as_str().unwrap().to_owned();
    let refresh_b = login.json()["refresh_token"].as_str().unwrap().to_owned();
    for (gw, token) in [(&a, &from_b), (&b, &from_a)] {
        let me = get(
            gw,
            "/auth/me",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(me.status, 200, "{:?}", me.body);
        assert_eq!(me.json()["email"], "ada@example.com");
    }
    let jwks_a = get(&a, "/.well-known/jwks.json", &[]).await.json();
    let jwks_b = get(&b, "/.well-known/jwks.json", &[]).await.json();
    assert_eq!(jwks_a, jwks_b);

    // A refresh token from B rotates on A; the old one, replayed on B after the grace,
    // would be reuse (covered by the store suite); here: it rotated once, shared.
    let rotated = post(
        &a,
        "/auth/refresh",
        None,
        json!({"refresh_token": refresh_b}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);

    // An API key made through A opens a proxied route through B.
    let sk = new_key(&a, &from_a, "ci").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let through_b = get(&b, "/req/x", &[("x-api-key", &sk)]).await;
    assert_eq!(through_b.status, 200, "{:?}", through_b.body);
    assert!(through_b.seen("x-user-id").is_some());

    // The same email registered through B: taken.
    let twin = post(
        &b,
        "/auth/register",
        None,
        json!({"email": "ADA@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(twin.status, 409, "{:?}", twin.body);

    // Readiness names the store.
    let ready = send("GET", &b.admin_url("/readyz"), &[], crate::support::empty()).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
}

/// Polls `probe` until it returns `want` or `within` passes; the status last seen.
async fn eventually<F, Fut>(within: std::time::Duration, want: u16, mut probe: F) -> u16
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = probe().await;
        if got == want || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// A revocation made through one replica reaches the other's cache within a second
/// (published on Redis pub/sub), although `cache.ttl` is a minute.
#[tokio::test]
async fn revocations_reach_the_other_replica() {
    let redis = RedisServer::start();
    let echo = Echo::start();
    let a = replica(&redis, &echo);
    let b = replica(&redis, &echo);
    let second = std::time::Duration::from_secs(1);

    let token = register(&a, "lin@example.com").await;
    let bearer = format!("Bearer {token}");

    // An API key, used (and so cached) on B, revoked on A.
    let key = new_key(&a, &token, "ci").await;
    let sk = key["key"].as_str().unwrap().to_owned();
    assert_eq!(get(&b, "/req/x", &[("x-api-key", &sk)]).await.status, 200);
    revoke_key(&a, &token, &key["id"]).await;
    let got = eventually(second, 401, || async {
        get(&b, "/req/x", &[("x-api-key", &sk)]).await.status
    })
    .await;
    assert_eq!(got, 401, "the revoked key still works on the other replica");

    // The session, used on B, logged out on A.
    assert_eq!(
        get(&b, "/req/x", &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    let out = post(&a, "/auth/logout", Some(&token), json!({})).await;
    assert_eq!(out.status, 204, "{:?}", out.body);
    let got = eventually(second, 401, || async {
        get(&b, "/req/x", &[("authorization", &bearer)])
            .await
            .status
    })
    .await;
    assert_eq!(
        got, 401,
        "the logged-out token still works on the other replica"
    );
    let refused = get(&b, "/req/x", &[("authorization", &bearer)]).await;
    assert_eq!(refused.json()["code"], "session_revoked");

    // The account deleted on A: a fresh login's token, cached on B, stops working there.
    let login = post(
        &b,
        "/auth/login",
        None,
        json!({"email": "lin@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    let token = login.json()["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get(&b, "/req/x", &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    let gone = send_json(
        "DELETE",
        &a.url("/auth/me"),
        Some(&token),
        &json!({"password": PASSWORD}),
    )
    .await;
    assert_eq!(gone.status, 204, "{:?}", gone.body);
    let got = eventually(second, 401, || async {
        get(&b, "/req/x", &[("authorization", &bearer)])
            .await
            .status
    })
    .await;
    assert_eq!(
        got, 401,
        "a deleted account's token still works on the other replica"
    );
}

/// redis-server killed under two replicas: credentials they have cached keep working,
/// anything that needs the store gets 503 `store_unavailable`; once it is back (same data:
/// it was acknowledged), both recover without a restart, invalidations included.
#[tokio::test]
async fn a_redis_outage_and_recovery() {
    let mut redis = RedisServer::start_durable();
    let echo = Echo::start();
    let a = replica(&redis, &echo);
    let b = replica(&redis, &echo);

    let token = register(&a, "kay@example.com").await;
    let keys = [
        new_key(&a, &token, "used").await,
        new_key(&a, &token, "unused").await,
    ];
    let used = keys[0]["key"].as_str().unwrap().to_owned();
    let unused = keys[1]["key"].as_str().unwrap().to_owned();
    for gw in [&a, &b] {
        assert_eq!(get(gw, "/req/x", &[("x-api-key", &used)]).await.status, 200);
    }

    redis.kill();
    for gw in [&a, &b] {
        let cached = get(gw, "/req/x", &[("x-api-key", &used)]).await;
        assert_eq!(
            cached.status, 200,
            "a cached key during the outage: {:?}",
            cached.body
        );
        let uncached = get(gw, "/req/x", &[("x-api-key", &unused)]).await;
        assert_eq!(uncached.status, 503, "{:?}", uncached.body);
        assert_eq!(uncached.json()["code"], "store_unavailable");
        let login = post(
            gw,
            "/auth/login",
            None,
            json!({"email": "kay@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(login.status, 503, "{:?}", login.body);
        assert_eq!(login.json()["code"], "store_unavailable");
    }
    // Degraded, not unready: every replica shares the outage, and taking them all out of
    // the load balancer would stop what still works.
    let ready = send("GET", &a.admin_url("/readyz"), &[], crate::support::empty()).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.json()["status"], "degraded");
    assert_eq!(ready.json()["store"]["ok"], false, "{:?}", ready.body);

    redis.restart();
    let within = std::time::Duration::from_secs(10);
    for gw in [&a, &b] {
        let got = eventually(within, 200, || async {
            get(gw, "/req/x", &[("x-api-key", &unused)]).await.status
        })
        .await;
        assert_eq!(got, 200, "the replica did not recover");
        let login = post(
            gw,
            "/auth/login",
            None,
            json!({"email": "kay@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(login.status, 200, "{:?}", login.body);
    }
    // The subscription is back too: a revocation on A reaches B's cache. (B re-subscribes
    // with backoff, and flushes its cache when it does, so allow for both.)
    revoke_key(&a, &token, &keys[0]["id"]).await;
    let got = eventually(within, 401, || async {
        get(&b, "/req/x", &[("x-api-key", &used)]).await.status
    })
    .await;
    assert_eq!(got, 401, "a revocation after the outage did not reach B");
    let metrics = send(
        "GET",
        &b.admin_url("/metrics"),
        &[],
        crate::support::empty(),
    )
    .await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("gatehouse_store_errors_total{kind=\"unavailable\"}"),
        "{text}"
    );
    assert!(
        text.contains("gatehouse_store_reconnects_total{link=\"commands\"} 1"),
        "{text}"
    );
}
