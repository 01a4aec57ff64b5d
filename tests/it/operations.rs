//! Operating the gateway: admin endpoints, reload under load, graceful drain on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{self, Gateway, get, upstream};

#[tokio::test(flavor = "multi_thread")]
async fn admin_listener_serves_health_readiness_and_metrics_only() {
    let up = upstream::named("up").await;
    let gw = Gateway::start(&format!(
        "routes:\n{}",
        support::route("api", "/", &format!("\"http://{up}\""))
    ));
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/x")).await.status, 200);
    }
    assert_eq!(get(&gw.admin_url("/healthz")).await.status, 200);
    let ready = get(&gw.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(ready.json()["store"]["kind"], "sqlite");
    assert_eq!(ready.json()["store"]["ok"], true);
    // The embedded store was created where the config said.
    assert!(gw.dir.path().join("gatehouse.db").exists());
    let metrics = get(&gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for needle in [
        r#"gatehouse_http_requests_total{route="api",class="2xx"} 3"#,
        "gatehouse_http_request_duration_seconds_bucket{",
        "gatehouse_http_requests_in_flight",
        "gatehouse_upstream_errors_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // The admin listener never proxies.
    let ans = get(&gw.admin_url("/x")).await;
    assert_eq!(ans.status, 404);
    // One access line per proxied request.
    assert!(gw.wait_log("gatehouse::access", Duration::from_secs(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_under_steady_traffic_drops_nothing_and_bad_configs_are_refused() {
    let a = upstream::named("a").await;
    let b = upstream::named("b").await;
    // Steady traffic from one address: far above the default rate limit, which is not what
    // this test is about.
    let one = format!(
        "rate_limits: {{ default: {{ requests: 1000000, per: 1s }} }}\nroutes:\n{}",
        support::route("main", "/", &format!("\"http://{a}\""))
    );
    let two = format!(
        "rate_limits: {{ default: {{ requests: 1000000, per: 1s }} }}\nroutes:\n{}{}",
        support::route("main", "/", &format!("\"http://{a}\"")),
        support::route("new", "/new", &format!("\"http://{b}\""))
    );
    let gw = Gateway::start(&one);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), gw.url("/steady"));
        workers.push(tokio::spawn(async move {
            let client = support::client();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let req = http::Request::get(&url).body(support::empty()).unwrap();
                match client.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = support::collect(resp).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..4 {
        gw.rewrite_config(if round % 2 == 0 { &two } else { &one });
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.signal("HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    gw.rewrite_config(&two);
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&gw.url("/new/x")).await.json()["upstream"], "b");

    // An invalid config is refused and the running one keeps serving.
    gw.rewrite_config("routes:\n  - name: broken\n    upstrem: {}\n");
    gw.signal("HUP");
    assert!(
        gw.wait_log("new configuration refused", Duration::from_secs(3)),
        "no refusal logged"
    );
    assert!(gw.stderr().contains("upstrem"), "the log names the error");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&gw.url("/new/x")).await.json()["upstream"], "b");

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("steady stream: {ok} ok, {failed} failed");
    assert!(ok > 100, "too few requests ran: {ok}");
    assert_eq!(failed, 0);
    let metrics = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).into_owned();
    assert!(
        metrics.contains(r#"gatehouse_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let up = upstream::named("slow").await;
    let mut gw = Gateway::start(&format!(
        "limits: {{ drain_timeout: 10s }}\nroutes:\n{}",
        support::route("slow", "/", &format!("\"http://{up}\""))
    ));
    let url = gw.url("/?delay=1500");
    let slow = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    assert!(gw.wait_log("draining", Duration::from_secs(2)));
    // New connections are no longer accepted while draining.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
    let ans = slow.await.unwrap();
    assert_eq!(ans.status, 200);
    assert_eq!(ans.json()["upstream"], "slow");
    assert_eq!(gw.wait_exit(Duration::from_secs(5)), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_config_file_is_picked_up_without_a_signal() {
    let a = upstream::named("a").await;
    let b = upstream::named("b").await;
    let gw = Gateway::start(&format!(
        "routes:\n{}",
        support::route("main", "/", &format!("\"http://{a}\""))
    ));
    assert_eq!(get(&gw.url("/x")).await.json()["upstream"], "a");
    gw.rewrite_config(&format!(
        "routes:\n{}",
        support::route("main", "/", &format!("\"http://{b}\""))
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get(&gw.url("/x")).await.json()["upstream"] == "b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "file change not picked up within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.stderr().contains("configuration reloaded"));
}

fn threads_of(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .map(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect()
}

/// Waits until the gateway runs on its one serving thread (`within` covers the blocking
/// thread the 5 s signing-key re-read takes for half a second).
async fn settles_to_one_thread(gw: &Gateway, within: Duration) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let threads = threads_of(gw.pid());
        if threads.len() == 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(threads);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// On one CPU the gateway serves from a single thread whenever no password is being hashed,
/// no log line written and no blocking store call running: Linux takes a file reference on
/// every socket call of a process whose fd table another thread shares (the config watch,
/// the hashing and log threads, the blocking pool used to stay for good).
#[tokio::test(flavor = "multi_thread")]
async fn on_one_cpu_the_gateway_comes_back_to_one_thread() {
    let up = upstream::named("one").await;
    let gw = Gateway::start_on_one_cpu(&format!(
        "tokens: {{ issuer: http://gatehouse.test, audience: tests }}\nroutes:\n{}",
        support::route("api", "/api", &format!("\"http://{up}\""))
    ));
    settles_to_one_thread(&gw, Duration::from_secs(10))
        .await
        .unwrap_or_else(|t| panic!("after start: threads {t:?}\n{}", gw.stderr()));

    // Proxied requests (an access line each), a registration and a login (two argon2 runs on
    // the hashing threads, store writes on the blocking pool), a config change seen by the
    // poll: each starts a helper thread, none stays. Requests arriving together have their
    // upstream heads submitted through io_uring, which must not leave a kernel worker thread
    // (`iou-wrk-*`, listed among the process's threads) behind.
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/api/x")).await.status, 200);
    }
    for _ in 0..2 {
        let asks: Vec<_> = (0..32)
            .map(|_| {
                let url = gw.url("/api/together");
                tokio::spawn(async move { get(&url).await })
            })
            .collect();
        for ask in asks {
            assert_eq!(ask.await.unwrap().status, 200);
        }
    }
    let body = serde_json::json!({"email": "one@example.com", "password": "correct-horse-battery"});
    let reg = support::send_json("POST", &gw.url("/auth/register"), None, &body).await;
    assert_eq!(reg.status, 201, "{:?}", reg.body);
    let login = support::send_json("POST", &gw.url("/auth/login"), None, &body).await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    assert!(gw.wait_log("gatehouse::access", Duration::from_secs(2)));
    assert!(threads_of(gw.pid()).len() > 1, "helpers did start");
    gw.rewrite_config(&format!(
        "tokens: {{ issuer: http://gatehouse.test, audience: tests }}\nroutes:\n{}",
        support::route("moved", "/moved", &format!("\"http://{up}\""))
    ));
    assert!(gw.wait_log("configuration reloaded", Duration::from_secs(5)));
    settles_to_one_thread(&gw, Duration::from_secs(10))
        .await
        .unwrap_or_else(|t| panic!("after work: threads {t:?}\n{}", gw.stderr()));
    assert_eq!(get(&gw.url("/moved/x")).await.status, 200);
}
