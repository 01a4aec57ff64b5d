//! Rate limits shared by replicas (SPEC section 7, README "Scale-out"): two real gateway
//! processes on one real redis-server, route limits in `exact` and `approximate` mode,
//! failed logins, and a Redis outage (local fallback, then sharing again).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::redis::RedisServer;
use crate::support::{Answer, Echo, Gateway, empty, route, send, send_json};

/// Two routes limited to 10 per minute per client IP (one per mode) and one with a limit
/// no test reaches, all public (no store lookup on the proxy path).
fn replica(redis: &RedisServer, echo: &Echo) -> Gateway {
    let up = format!("\"{}\"", echo.url());
    Gateway::start(&format!(
        r#"
store: {{ kind: redis, url: "{redis}" }}
tokens: {{ issuer: http://gatehouse.test, audience: tests }}
rate_limits:
  login: {{ attempts: 3, per: 15m }}
routes:
{exact}    rate_limit: {{ requests: 10, per: 1m, key: ip, mode: exact }}
{approx}    rate_limit: {{ requests: 10, per: 1m, key: ip, mode: approximate }}
{wide_exact}    rate_limit: {{ requests: 100000, per: 1s, key: ip, mode: exact }}
{wide_approx}    rate_limit: {{ requests: 100000, per: 1s, key: ip }}
"#,
        redis = redis.url(),
        exact = route("exact", "/exact", &up),
        approx = route("approx", "/approx", &up),
        wide_exact = route("wide_exact", "/wide-exact", &up),
        wide_approx = route("wide_approx", "/wide-approx", &up),
    ))
}

async fn get(gw: &Gateway, path: &str) -> Answer {
    send("GET", &gw.url(path), &[], empty()).await
}

/// Alternates `n` requests to `path` over both replicas, `gap` apart; how many got 200.
async fn through(a: &Gateway, b: &Gateway, path: &str, n: usize, gap: Duration) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let gw = if i % 2 == 0 { a } else { b };
        let answer = get(gw, path).await;
        match answer.status {
            200 => ok += 1,
            429 => check_refusal(&answer, path),
            other => panic!("{path}: status {other}: {:?}", answer.body),
        }
        tokio::time::sleep(gap).await;
    }
    ok
}

/// A 429 carries `Retry-After` and the IETF headers, named after the route.
fn check_refusal(answer: &Answer, path: &str) {
    let name = path.trim_start_matches('/');
    let header = |h: &str| {
        answer
            .headers
            .get(h)
            .unwrap_or_else(|| panic!("{path}: 429 without {h}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let retry: u64 = header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{path}: Retry-After {retry}");
    assert_eq!(header("ratelimit-policy"), format!("\"{name}\";q=10;w=60"));
    assert_eq!(header("ratelimit"), format!("\"{name}\";r=0;t={retry}"));
}

async fn fallbacks(gw: &Gateway) -> u64 {
    let m = send("GET", &gw.admin_url("/metrics"), &[], empty()).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("gatehouse_ratelimit_fallbacks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fallback counter in {text}"))
}

#[tokio::test]
async fn route_limits_count_over_both_replicas() {
    let redis = RedisServer::start();
    let echo = Echo::start();
    let a = replica(&redis, &echo);
    let b = replica(&redis, &echo);

    // Exact: every check is decided in Redis; 10 in total (at most 1 more for the race
    // between two in-flight checks, which sequential requests do not have).
    let ok = through(&a, &b, "/exact", 30, Duration::ZERO).await;
    assert!((10..=11).contains(&ok), "exact: {ok} of 30 let through");

    // Allowed answers carry the headers too.
    let allowed = get(&a, "/wide-exact").await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.headers["ratelimit-policy"],
        "\"wide_exact\";q=100000;w=1"
    );

    // Approximate: with requests further apart than a sync (5 ms; 50 ms leaves room for a
    // loaded machine), a replica decides on a copy that lacks at most the other's last hit
    // (README's bound): 10, at most 11.
    let ok = through(&a, &b, "/approx", 30, Duration::from_millis(50)).await;
    assert!(
        (10..=11).contains(&ok),
        "approximate: {ok} of 30 let through"
    );
    assert_eq!(fallbacks(&a).await, 0);
    assert!(!a.stderr().contains("store unreachable"), "{}", a.stderr());
}

#[tokio::test]
async fn failed_logins_count_over_both_replicas() {
    let redis = RedisServer::start();
    let echo = Echo::start();
    let a = replica(&redis, &echo);
    let b = replica(&redis, &echo);
    let register = send_json(
        "POST",
        &a.url("/auth/register"),
        None,
        &json!({"email": "mal@example.com", "password": "correct-horse-battery"}),
    )
    .await;
    assert_eq!(register.status, 201, "{:?}", register.body);
    let login = |gw: &Gateway, password: &str| {
        let url = gw.url("/auth/login");
        let body = json!({"email": "mal@example.com", "password": password});
        async move { send_json("POST", &url, None, &body).await }
    };
    // `attempts: 3`: failures on A, B, A; the fourth try is refused on both, even with the
    // right password.
    for gw in [&a, &b, &a] {
        assert_eq!(login(gw, "wrong-password-1").await.status, 401);
    }
    for gw in [&b, &a] {
        let refused = login(gw, "correct-horse-battery").await;
        assert_eq!(refused.status, 429, "{:?}", refused.body);
        assert!(refused.headers.contains_key("retry-after"));
    }
}

#[tokio::test]
async fn a_redis_outage_falls_back_to_local_limits_then_shares_again() {
    let mut redis = RedisServer::start();
    let echo = Echo::start();
    let a = replica(&redis, &echo);
    let b = replica(&redis, &echo);
    for gw in [&a, &b] {
        for path in ["/wide-exact", "/wide-approx"] {
            assert_eq!(get(gw, path).await.status, 200);
        }
    }

    redis.kill();
    // Every request is still answered (public routes need no store), limited locally.
    for gw in [&a, &b] {
        for _ in 0..5 {
            for path in ["/wide-exact", "/wide-approx"] {
                let answer = get(gw, path).await;
                assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
                assert!(answer.headers.contains_key("ratelimit"));
            }
        }
        assert!(fallbacks(gw).await > 0, "no fallback counted");
        let warnings = gw
            .stderr()
            .matches("shared rate limits: store unreachable")
            .count();
        assert_eq!(warnings, 1, "one warning per outage: {}", gw.stderr());
    }

    redis.restart();
    // Shared again once the fallback counter stops moving on both (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(15);
    for gw in [&a, &b] {
        loop {
            let before = fallbacks(gw).await;
            for path in ["/wide-exact", "/wide-approx"] {
                assert_eq!(get(gw, path).await.status, 200);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if fallbacks(gw).await == before {
                break;
            }
            assert!(Instant::now() < deadline, "limits never shared again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            gw.wait_log("store reachable again", Duration::from_secs(5)),
            "{}",
            gw.stderr()
        );
    }
    // Both replicas count in Redis again: 10 in total, not 10 each.
    let ok = through(&a, &b, "/exact", 30, Duration::ZERO).await;
    assert!((10..=11).contains(&ok), "exact after the outage: {ok}");
}
