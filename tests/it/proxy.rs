//! Routing, header rewriting and upstream failure handling through the real binary.

use std::time::{Duration, Instant};

use crate::support::{self, Gateway, empty, get, send, upstream};

#[tokio::test(flavor = "multi_thread")]
async fn routing_precedence_strip_prefix_and_misses() {
    let a = upstream::named("any-root").await;
    let b = upstream::named("any-api").await;
    let c = upstream::named("wild").await;
    let d = upstream::named("exact").await;
    let e = upstream::named("exact-v2").await;
    let gw = Gateway::start(&format!(
        r#"
routes:
  - name: any-root
    match: {{ path_prefix: / }}
    upstream: {{ targets: ["http://{a}"] }}
    auth: public
  - name: any-api
    match: {{ path_prefix: /api, methods: [GET, HEAD] }}
    upstream: {{ targets: ["http://{b}"] }}
    auth: public
    strip_prefix: /api
  - name: wild
    match: {{ host: "*.example.com", path_prefix: / }}
    upstream: {{ targets: ["http://{c}"] }}
    auth: public
  - name: exact
    match: {{ host: api.example.com, path_prefix: /, methods: [GET] }}
    upstream: {{ targets: ["http://{d}"] }}
    auth: public
  - name: exact-v2
    match: {{ host: api.example.com, path_prefix: /v2/ }}
    upstream: {{ targets: ["http://{e}"] }}
    auth: public
"#
    ));
    let via = |host: &'static str, method: &'static str, path: &'static str| {
        let url = gw.url(path);
        async move {
            let ans = send(method, &url, &[("host", host)], empty()).await;
            (ans.status, ans.json())
        }
    };
    let cases = [
        ("api.example.com", "GET", "/x", "exact"),
        ("API.Example.com:8080", "GET", "/v2/items", "exact-v2"),
        // Host specificity beats prefix length.
        ("api.example.com", "GET", "/api/x", "exact"),
        // A method the exact route refuses falls through to the wildcard.
        ("api.example.com", "POST", "/x", "wild"),
        ("a.b.example.com", "GET", "/", "wild"),
        ("example.com", "GET", "/api/users", "any-api"),
        ("other.test", "GET", "/apix", "any-root"),
        ("other.test", "POST", "/api/x", "any-root"),
        // Dot segments are resolved before routing.
        ("other.test", "GET", "/x/../api/y", "any-api"),
    ];
    for (host, method, path, want) in cases {
        let (status, json) = via(host, method, path).await;
        assert_eq!(status, 200, "{host} {method} {path}");
        assert_eq!(json["upstream"], want, "{host} {method} {path}");
    }
    // strip_prefix: /api/users reaches the upstream as /users, /api as /.
    let (_, json) = via("x.test", "GET", "/api/users?q=1").await;
    assert_eq!(json["path"], "/users");
    assert_eq!(json["query"], "q=1");
    let (_, json) = via("x.test", "GET", "/api").await;
    assert_eq!(json["path"], "/");

    // The account prefix and discovery documents belong to the gateway, even with a catch-all.
    for path in ["/auth/whatever", "/.well-known/nothing"] {
        let ans = get(&gw.url(path)).await;
        assert_eq!(ans.status, 404, "{path}");
        assert_eq!(ans.json()["code"], "not_found", "{path}");
    }
    let ans = get(&gw.url("/.well-known/jwks.json")).await;
    assert_eq!(ans.status, 200);
    assert!(ans.json()["keys"].is_array());
    drop(gw);

    // Without a catch-all route: 404 no_route; the account prefix is never proxied.
    let gw = Gateway::start(&format!(
        r#"
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: {{ targets: ["http://{a}"] }}
    auth: public
  - name: put-only
    match: {{ host: strict.test, path_prefix: /, methods: [PUT] }}
    upstream: {{ targets: ["http://{a}"] }}
    auth: public
"#
    ));
    let ans = get(&gw.url("/elsewhere")).await;
    assert_eq!(ans.status, 404);
    assert_eq!(ans.json()["code"], "no_route");
    assert!(ans.headers.contains_key("x-request-id"));
    // Host and path match only a PUT route: 405 with Allow.
    let ans = send(
        "GET",
        &gw.url("/thing"),
        &[("host", "strict.test")],
        empty(),
    )
    .await;
    assert_eq!(ans.status, 405);
    assert_eq!(ans.headers["allow"], "PUT");
    assert_eq!(ans.headers["content-type"], "application/problem+json");
    assert_eq!(ans.json()["code"], "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_and_owned_headers_are_removed_both_ways() {
    let up = upstream::named("up").await;
    let gw = Gateway::start(&format!(
        "routes:\n{}",
        support::route("all", "/", &format!("\"http://{up}\""))
    ));
    let ans = send(
        "GET",
        &gw.url("/h?hop=1"),
        &[
            ("connection", "keep-alive, x-private, x-forwarded-for"),
            ("x-private", "must not pass"),
            ("keep-alive", "timeout=10"),
            ("te", "gzip"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-user-id", "forged"),
            ("x_user_id", "forged"),
            ("X-User_Roles", "admin"),
            ("x-auth-method", "api_key"),
            ("x-custom", "kept"),
        ],
        empty(),
    )
    .await;
    assert_eq!(ans.status, 200);
    let seen = ans.json()["headers"].clone();
    for gone in [
        "x-private",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-user-id",
        "x_user_id",
        "x-user_roles",
    ] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["x-auth-method"], "anonymous");
    // Naming X-Forwarded-For in Connection cannot strip the one the gateway sets.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    upstream_fields_passed_on(&ans.headers);
}

/// The answer's fields as the test upstream sent them for `?hop=1`, less its hop-by-hop
/// fields, with the gateway's `X-Request-Id` in place of the upstream's.
fn upstream_fields_passed_on(headers: &http::HeaderMap) {
    assert!(!headers.contains_key("x-upstream-private"), "{headers:?}");
    assert!(!headers.contains_key("keep-alive"), "{headers:?}");
    assert!(!headers.contains_key("proxy-authenticate"), "{headers:?}");
    assert!(!headers.contains_key("connection"), "{headers:?}");
    assert_eq!(headers["x-upstream-public"], "yes", "{headers:?}");
    assert_eq!(headers["content-type"], "application/json");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"], "{headers:?}");
    let ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{headers:?}");
    assert_ne!(ids[0], "upstream-made");
    assert_eq!(headers.get_all("date").iter().count(), 1, "{headers:?}");
    assert!(headers.contains_key("ratelimit"), "{headers:?}");
}

/// Answers the gateway's own HTTP/1.1 loop writes and answers hyper writes (HTTP/2, and an
/// HTTP/1.1 connection hyper took over after a request with a body) carry the same fields.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_fields_reach_clients_of_every_connection_kind() {
    use http_body_util::{BodyExt, Empty, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = upstream::named("up").await;
    let gw = Gateway::start(&format!(
        "routes:\n{}",
        support::route("all", "/", &format!("\"http://{up}\""))
    ));
    let url = format!("http://app.test:{}/f?hop=1", gw.addr.port());

    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(&url)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    upstream_fields_passed_on(resp.headers());

    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let post = http::Request::post("/f")
        .header("host", "app.test")
        .body(Full::new(bytes::Bytes::from_static(b"a body")))
        .unwrap();
    let resp = h1.send_request(post).await.unwrap();
    assert_eq!(resp.status(), 200);
    // A request with a body goes through hyper's client: the gateway's fields reach it too.
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen = &serde_json::from_slice::<serde_json::Value>(&body).unwrap()["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "app.test", "{seen}");
    assert_eq!(seen["x-auth-method"], "anonymous", "{seen}");
    assert_eq!(
        seen["x-request-id"].as_str().map(str::len),
        Some(32),
        "{seen}"
    );
    // Same connection, now hyper's: a body-less request after the one with a body.
    let get = http::Request::get("/f?hop=1")
        .header("host", "app.test")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    h1.ready().await.unwrap();
    let resp = h1.send_request(get).await.unwrap();
    assert_eq!(resp.status(), 200);
    upstream_fields_passed_on(resp.headers());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/f");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_replaced_from_untrusted_and_extended_from_trusted() {
    let up = upstream::named("up").await;
    let routes = format!(
        "routes:\n{}",
        support::route("all", "/", &format!("\"http://{up}\""))
    );
    let forged = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "forged.example"),
        ("host", "app.test"),
    ];

    let untrusted = Gateway::start(&routes);
    let ans = send("GET", &untrusted.url("/"), &forged, empty()).await;
    assert_eq!(ans.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(ans.seen("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(ans.seen("x-forwarded-host").as_deref(), Some("app.test"));

    let trusted = Gateway::start(&format!("trusted_proxies: [127.0.0.1/32]\n{routes}"));
    let ans = send("GET", &trusted.url("/"), &forged, empty()).await;
    assert_eq!(
        ans.seen("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1")
    );
    assert_eq!(ans.seen("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        ans.seen("x-forwarded-host").as_deref(),
        Some("forged.example")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_is_kept_when_valid_and_generated_otherwise() {
    let up = upstream::named("up").await;
    let gw = Gateway::start(&format!(
        "routes:\n{}",
        support::route("all", "/", &format!("\"http://{up}\""))
    ));
    let ans = send(
        "GET",
        &gw.url("/"),
        &[("x-request-id", "abc-123.X_y")],
        empty(),
    )
    .await;
    assert_eq!(ans.headers["x-request-id"], "abc-123.X_y");
    assert_eq!(ans.seen("x-request-id").as_deref(), Some("abc-123.X_y"));
    let ans = send("GET", &gw.url("/"), &[("x-request-id", "bad id!")], empty()).await;
    let generated = ans.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);
    assert_eq!(ans.seen("x-request-id"), Some(generated));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_upstream_is_502_and_a_second_target_takes_over() {
    let dead = upstream::refused();
    let live = upstream::named("live").await;
    let gw = Gateway::start(&format!(
        r#"
routes:
  - name: dead
    match: {{ path_prefix: /dead }}
    upstream: {{ targets: ["http://{dead}"], connect_timeout: 500ms }}
    auth: public
  - name: pair
    match: {{ path_prefix: / }}
    upstream: {{ targets: ["http://{dead}", "http://{live}"] }}
    auth: public
"#
    ));
    for _ in 0..20 {
        let ans = get(&gw.url("/dead")).await;
        assert_eq!(ans.status, 502);
        assert_eq!(ans.json()["code"], "upstream_unavailable");
    }

    // Every request succeeds: the refused connect is retried once on the live target, and the
    // dead one is then skipped. A POST body survives the retry.
    for i in 0..20 {
        let ans = send("POST", &gw.url("/p"), &[], support::full(vec![b'x'; 1000])).await;
        assert_eq!(ans.status, 200, "request {i}");
        assert_eq!(ans.json()["upstream"], "live");
        assert_eq!(ans.json()["body_bytes"], 1000);
    }
    let metrics = get(&gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = text
        .lines()
        .find(|l| l.starts_with(r#"gatehouse_upstream_errors_total{route="pair",kind="connect"}"#))
        .unwrap_or_else(|| panic!("no connect error metric:\n{text}"));
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    // Passive health: the dead target was tried once, not once per request.
    assert!((1..=2).contains(&count), "{line}");
    // An outage is logged when a target goes down, not once per failed request: one line per
    // route that uses the dead target.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let marked = gw.stderr().matches("target marked down").count();
    assert_eq!(marked, 2, "{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504_within_the_timeout() {
    let up = upstream::named("slow").await;
    let gw = Gateway::start(&format!(
        r#"
routes:
  - name: slow
    match: {{ path_prefix: / }}
    upstream: {{ targets: ["http://{up}"], timeout: 300ms }}
    auth: public
"#
    ));
    let started = Instant::now();
    let ans = get(&gw.url("/?delay=5000")).await;
    let took = started.elapsed();
    assert_eq!(ans.status, 504);
    assert_eq!(ans.json()["code"], "upstream_timeout");
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // A fast answer on the same route is unaffected.
    assert_eq!(get(&gw.url("/?delay=10")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_431_and_bodies_413() {
    let up = upstream::named("up").await;
    let gw = Gateway::start(&format!(
        r#"
limits: {{ max_header_bytes: 8KiB }}
routes:
  - name: small
    match: {{ path_prefix: / }}
    upstream: {{ targets: ["http://{up}"] }}
    auth: public
    max_body: 1KiB
"#
    ));
    let big = "v".repeat(10 * 1024);
    let ans = send("GET", &gw.url("/"), &[("x-big", &big)], empty()).await;
    assert_eq!(ans.status, 431);
    assert_eq!(ans.headers["content-type"], "application/problem+json");
    assert_eq!(ans.json()["code"], "headers_too_large");

    // Declared length over the limit: refused before the upstream sees anything.
    let ans = send("POST", &gw.url("/"), &[], support::full(vec![0u8; 2048])).await;
    assert_eq!(ans.status, 413);
    assert_eq!(ans.json()["code"], "body_too_large");

    // Chunked (no length): counted while streaming.
    let chunks = futures_util::stream::iter((0..8).map(|_| {
        Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from(vec![1u8; 512])))
    }));
    let body = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
        http_body_util::StreamBody::new(chunks),
        |e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>,
    ));
    let ans = send("POST", &gw.url("/"), &[], body).await;
    assert_eq!(ans.status, 413);
    assert_eq!(ans.json()["code"], "body_too_large");

    // Within the limits all is well.
    let ans = send("POST", &gw.url("/"), &[], support::full(vec![0u8; 1000])).await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.json()["body_bytes"], 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn required_routes_refuse_anonymous_callers() {
    let up = upstream::named("up").await;
    let gw = Gateway::start(&format!(
        r#"
routes:
  - name: private
    match: {{ path_prefix: / }}
    upstream: {{ targets: ["http://{up}"] }}
"#
    ));
    let ans = get(&gw.url("/")).await;
    assert_eq!(ans.status, 401);
    assert_eq!(ans.headers["www-authenticate"], "Bearer");
    assert_eq!(ans.json()["code"], "missing_credentials");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused_and_stale_ones_replaced() {
    use std::sync::atomic::Ordering;
    let (kept, kept_conns) = upstream::counted("kept").await;
    let (closing, closing_conns) = upstream::one_shot().await;
    let gw = Gateway::start(&format!(
        "routes:\n{}{}",
        support::route("kept", "/kept", &format!("\"http://{kept}\"")),
        support::route("closing", "/closing", &format!("\"http://{closing}\""))
    ));
    for i in 0..30 {
        assert_eq!(get(&gw.url("/kept")).await.status, 200, "request {i}");
    }
    // Sequential requests share one keep-alive connection.
    assert_eq!(kept_conns.load(Ordering::SeqCst), 1);

    // An upstream that silently closes idle connections never costs a client a failed request.
    for i in 0..30 {
        let ans = get(&gw.url("/closing")).await;
        assert_eq!(ans.status, 200, "request {i}: {:?}", ans.body);
        assert_eq!(&ans.body[..], b"ok");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(closing_conns.load(Ordering::SeqCst), 30);
}

/// A per-IP limit counts an IPv6 client by its /64: a host that rotates through its prefix
/// (privacy addresses) is still one client; another /64 is another one.
#[tokio::test(flavor = "multi_thread")]
async fn per_ip_limits_count_ipv6_clients_by_their_64() {
    let up = upstream::named("up").await;
    let gw = Gateway::start(&format!(
        r#"
trusted_proxies: [127.0.0.1/32]
routes:
  - name: limited
    match: {{ path_prefix: / }}
    upstream: {{ targets: ["http://{up}"] }}
    auth: public
    rate_limit: {{ requests: 2, per: 1m, key: ip }}
"#
    ));
    let from = |client: &'static str| {
        let url = gw.url("/");
        async move {
            send("GET", &url, &[("x-forwarded-for", client)], empty())
                .await
                .status
        }
    };
    assert_eq!(from("2001:db8:0:1::1").await, 200);
    assert_eq!(from("2001:db8:0:1:aaaa::2").await, 200);
    assert_eq!(from("2001:db8:0:1:ffff:ffff:ffff:3").await, 429);
    assert_eq!(
        from("2001:db8:0:2::1").await,
        200,
        "another /64 has its own budget"
    );
    assert_eq!(from("192.0.2.1").await, 200);
}

/// Whether this machine lets a process use io_uring (`kernel.io_uring_disabled` is 0).
fn io_uring_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "0")
}

/// Whether the process holds an io_uring instance.
fn holds_a_ring(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| target.to_string_lossy() == "anon_inode:[io_uring]")
}

/// Requests arriving together have their upstream heads submitted in one io_uring call
/// (src/pool/batch/uring.rs); with `GATEHOUSE_IO_URING=off` they go out with send(2). Either
/// way every request reaches the upstream whole and gets its own answer.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_one_submission_unless_io_uring_is_off() {
    let up = upstream::named("burst").await;
    // All from one address: lift the default per-IP limit.
    let yaml = format!(
        "rate_limits: {{ default: {{ requests: 100000, per: 1s }} }}\nroutes:\n{}",
        support::route("api", "/api", &format!("\"http://{up}\""))
    );
    for (env, ring) in [
        (&[][..], io_uring_allowed()),
        (&[("GATEHOUSE_IO_URING", "off")][..], false),
    ] {
        let gw = Gateway::start_with_env(&yaml, env);
        assert!(
            !holds_a_ring(gw.pid()),
            "made on the first burst, not at start"
        );
        for round in 0..5 {
            let asks: Vec<_> = (0..64)
                .map(|i| {
                    let url = gw.url(&format!("/api/r{round}/{i}?q={i}"));
                    tokio::spawn(async move { get(&url).await })
                })
                .collect();
            for (i, ask) in asks.into_iter().enumerate() {
                let answer = ask.await.unwrap();
                assert_eq!(answer.status, 200, "{env:?}: {:?}", answer.body);
                let doc = answer.json();
                assert_eq!(doc["path"], format!("/api/r{round}/{i}"), "{env:?}");
                assert_eq!(doc["query"], format!("q={i}"), "{env:?}");
            }
        }
        assert_eq!(holds_a_ring(gw.pid()), ring, "{env:?}\n{}", gw.stderr());
    }
}
