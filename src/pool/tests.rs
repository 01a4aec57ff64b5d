//! The pool's body-less exchange against scripted upstreams on loopback: framing, reuse, the
//! idle-close retry, and what is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// What the scripted upstream does with one request.
enum Act {
    /// Writes these bytes, `step` bytes at a time with a pause between pieces (0: at once).
    Write(Vec<u8>, usize),
    /// Writes these bytes, then closes the connection.
    WriteClose(Vec<u8>),
    /// Closes the connection without answering.
    Close,
    /// Writes these bytes after a pause.
    After(Duration, Vec<u8>),
    /// Keeps the connection open and never answers.
    Silent,
}

struct Upstream {
    addr: String,
    accepts: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

/// A loopback upstream that reads request heads and acts on each with `script(n)`, `n`
/// counting requests across all connections from 0.
async fn upstream(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepts = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let requests = Arc::new(AtomicUsize::new(0));
    let (a, h) = (accepts.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (script, requests, heads) = (script.clone(), requests.clone(), h.clone());
            tokio::spawn(async move { serve(conn, &*script, &requests, &heads).await });
        }
    });
    Upstream {
        addr,
        accepts,
        heads,
    }
}

async fn serve(
    mut conn: TcpStream,
    script: &(dyn Fn(usize) -> Act + Send + Sync),
    requests: &AtomicUsize,
    heads: &std::sync::Mutex<Vec<String>>,
) {
    let mut buf = Vec::new();
    loop {
        // Searched from where the last search stopped: heads of megabytes arrive too.
        let mut searched = 0;
        let end = loop {
            if let Some(i) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
                break searched + i + 4;
            }
            searched = buf.len().saturating_sub(3);
            let mut chunk = [0u8; 65536];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        heads
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&head).into_owned());
        match script(requests.fetch_add(1, Ordering::SeqCst)) {
            Act::Write(bytes, 0) => conn.write_all(&bytes).await.unwrap(),
            Act::Write(bytes, step) => {
                for piece in bytes.chunks(step) {
                    conn.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Act::WriteClose(bytes) => {
                conn.write_all(&bytes).await.unwrap();
                return;
            }
            Act::Close => return,
            Act::After(pause, bytes) => {
                tokio::time::sleep(pause).await;
                conn.write_all(&bytes).await.unwrap();
            }
            Act::Silent => {
                tokio::time::sleep(Duration::from_secs(120)).await;
                return;
            }
        }
    }
}

fn pool(up: &Upstream) -> Arc<Pool> {
    Pool::new(Endpoint {
        authority: up.addr.clone(),
        transport: Transport::Plain,
        connect_timeout: Duration::from_secs(2),
    })
}

fn request(method: Method, path: &str) -> Request<ReqBody> {
    let mut req = Request::new(ReqBody::empty());
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("upstream.test"));
    req
}

/// Status, headers and the whole body of one exchange.
async fn fetch(
    pool: &Arc<Pool>,
    method: Method,
    path: &str,
) -> Result<(StatusCode, http::HeaderMap, Vec<u8>), String> {
    let resp = pool
        .send(request(method, path))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?;
    Ok((parts.status, parts.headers, body.to_bytes().to_vec()))
}

fn write(s: &str) -> Act {
    Act::Write(s.as_bytes().to_vec(), 0)
}

#[tokio::test]
async fn length_bodies_share_one_connection_and_the_head_goes_out_as_given() {
    let up = upstream(|n| {
        write(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-N: {n}\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nbody-{n}"
        ))
    })
    .await;
    let pool = pool(&up);
    for n in 0..3 {
        let (status, headers, body) = fetch(&pool, Method::GET, "/p?q=1").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("body-{n}").as_bytes());
        assert_eq!(headers["x-n"], n.to_string().as_str());
        let cookies: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
    assert_eq!(
        up.accepts.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    assert_eq!(
        up.heads.lock().unwrap()[0],
        "GET /p?q=1 HTTP/1.1\r\nhost: upstream.test\r\n\r\n"
    );
}

#[tokio::test]
async fn chunked_bodies_are_decoded_across_reads_and_trailers_dropped() {
    let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=\"x\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    // Three bytes at a time: every boundary (size line, data, CRLF, trailers) gets split.
    let up = upstream(move |_| Act::Write(answer.as_bytes().to_vec(), 3)).await;
    let pool = pool(&up);
    for _ in 0..2 {
        let (_, headers, body) = fetch(&pool, Method::GET, "/").await.unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(headers[header::TRANSFER_ENCODING], "chunked");
    }
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_until_close_ends_with_the_connection() {
    let up =
        upstream(|n| Act::WriteClose(format!("HTTP/1.1 200 OK\r\n\r\nuntil close {n}").into()))
            .await;
    let pool = pool(&up);
    for n in 0..2 {
        let (_, _, body) = fetch(&pool, Method::GET, "/").await.unwrap();
        assert_eq!(body, format!("until close {n}").as_bytes());
    }
    assert_eq!(up.accepts.load(Ordering::SeqCst), 2, "not reusable");
}

#[tokio::test]
async fn head_204_304_and_interim_answers_carry_no_body() {
    let up = upstream(|n| match n {
        0 => write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
        1 => write("HTTP/1.1 204 No Content\r\n\r\n"),
        2 => write("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
        _ => write(
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
    })
    .await;
    let pool = pool(&up);
    let (_, headers, body) = fetch(&pool, Method::HEAD, "/").await.unwrap();
    assert!(body.is_empty());
    assert_eq!(headers[header::CONTENT_LENGTH], "100");
    let (status, _, body) = fetch(&pool, Method::GET, "/").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    let (status, _, body) = fetch(&pool, Method::GET, "/").await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let (status, headers, body) = fetch(&pool, Method::GET, "/").await.unwrap();
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]));
    assert!(
        headers.get(header::LINK).is_none(),
        "the 103's fields stay with it"
    );
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn close_and_double_framing_are_not_reused() {
    let up = upstream(|n| match n {
        0 => write("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"),
        1 => write(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n",
        ),
        2 => write("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nc"),
        _ => write("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd"),
    })
    .await;
    let pool = pool(&up);
    for want in ["a", "b", "c", "d", "d"] {
        let (_, _, body) = fetch(&pool, Method::GET, "/").await.unwrap();
        assert_eq!(body, want.as_bytes());
    }
    // a, b and c each closed theirs; d's connection served the last two.
    assert_eq!(up.accepts.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn malformed_answers_are_errors() {
    let cases: [(&str, &str); 5] = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
            "Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "invalid response head",
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            "switched protocols",
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "chunked",
        ),
    ];
    for (answer, want) in cases {
        let up = upstream(move |_| write(answer)).await;
        let err = fetch(&pool(&up), Method::GET, "/").await.unwrap_err();
        assert!(err.contains(want), "{answer:?}: {err}");
    }
    let up =
        upstream(|_| Act::WriteClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".into()))
            .await;
    let err = fetch(&pool(&up), Method::GET, "/").await.unwrap_err();
    assert!(err.contains("before the end of the body"), "{err}");
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_upstream_is_not_used() {
    let up = upstream(|n| {
        Act::WriteClose(format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{n}").into())
    })
    .await;
    let pool = pool(&up);
    let (_, _, body) = fetch(&pool, Method::POST, "/").await.unwrap();
    assert_eq!(body, b"0");
    // The close reaches the event loop; the pooled connection is found closed and left.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, _, body) = fetch(&pool, Method::POST, "/").await.unwrap();
    assert_eq!(body, b"1");
    assert_eq!(up.accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_reused_connection_closed_unanswered_retries_only_idempotent_requests() {
    // Every second request on a connection is dropped unanswered (the idle-close race).
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let up = upstream(move |n| if n % 2 == 1 { Act::Close } else { write(ok) }).await;
    let pool = pool(&up);
    assert!(fetch(&pool, Method::GET, "/").await.is_ok());
    // Request 1 is dropped on the reused connection; the GET goes again on a new one.
    let (_, _, body) = fetch(&pool, Method::GET, "/").await.unwrap();
    assert_eq!(body, b"ok");
    assert_eq!(up.accepts.load(Ordering::SeqCst), 2);
    // Request 3 is dropped too, and a POST is not sent twice.
    let err = fetch(&pool, Method::POST, "/").await.unwrap_err();
    assert!(err.contains("without answering"), "{err}");
    assert_eq!(up.heads.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn a_target_that_would_split_the_request_line_is_refused() {
    let up = upstream(|_| write("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).await;
    let pool = pool(&up);
    let headers = http::HeaderMap::new();
    for target in ["/a b", "/a\r\nX-Injected: 1", ""] {
        let err = pool
            .send_bodyless(&Method::GET, target, &headers, &[], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not valid"), "{target:?}: {err}");
    }
    assert!(
        pool.send_bodyless(&Method::GET, "/a?b=c", &headers, &[], None)
            .await
            .is_ok()
    );
    assert_eq!(up.heads.lock().unwrap().len(), 1, "nothing else was sent");
}

/// Connected loopback pairs: our write sides as wires, the upstream ends as plain streams.
async fn wires(n: usize) -> Vec<(Arc<batch::Wire>, tokio::net::tcp::OwnedReadHalf, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let ours = TcpStream::connect(addr).await.unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        let (read, write) = ours.into_split();
        out.push((batch::Wire::new(write), read, theirs));
    }
    out
}

/// What arrived on `peer` so far, without waiting for more.
async fn arrived(peer: &mut TcpStream) -> Vec<u8> {
    // Loopback delivers within the writing call; the pause only lets the runtime see it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut got = vec![0u8; 1024];
    match peer.try_read(&mut got) {
        Ok(n) => got.truncate(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => got.clear(),
        Err(e) => panic!("{e}"),
    }
    got
}

#[tokio::test]
async fn heads_queued_in_one_turn_leave_together_when_the_leader_flushes() {
    heads_leave_together().await;
}

#[tokio::test]
async fn without_io_uring_heads_queued_in_one_turn_still_leave_together() {
    batch::uring::refuse_on_this_thread();
    heads_leave_together().await;
}

async fn heads_leave_together() {
    let mut pairs = wires(4).await;
    let leaders: Vec<_> = pairs
        .iter()
        .enumerate()
        .map(|(i, (wire, _, _))| {
            wire.queue(|out| out.extend_from_slice(format!("head {i}").as_bytes()))
        })
        .collect();
    assert!(leaders[0].is_some(), "the first queued leads");
    assert!(leaders[1..].iter().all(Option::is_none));
    for (_, _, peer) in &mut pairs {
        assert!(
            arrived(peer).await.is_empty(),
            "nothing written before the flush"
        );
    }
    leaders.into_iter().flatten().for_each(batch::Leader::flush);
    for (i, (_, _, peer)) in pairs.iter_mut().enumerate() {
        assert_eq!(arrived(peer).await, format!("head {i}").as_bytes());
    }
    // The next head starts a new batch with its own leader.
    let again = pairs[2].0.queue(|out| out.extend_from_slice(b"again"));
    again.expect("a new leader").flush();
    assert_eq!(arrived(&mut pairs[2].2).await, b"again");
}

/// Whether this machine lets a process use io_uring (`kernel.io_uring_disabled` is 0).
fn io_uring_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "0")
}

#[tokio::test]
async fn a_burst_goes_through_io_uring_and_a_full_socket_hands_the_rest_back() {
    if io_uring_allowed() {
        assert!(batch::uring::available(), "io_uring allowed but no ring");
    } else {
        eprintln!("io_uring disabled here: the burst below goes out with send(2)");
    }
    a_full_socket_hands_the_rest_back().await;
}

#[tokio::test]
async fn without_io_uring_a_burst_goes_out_with_send_and_hands_the_rest_back() {
    batch::uring::refuse_on_this_thread();
    assert!(!batch::uring::available());
    a_full_socket_hands_the_rest_back().await;
}

/// A burst of three heads, the first far larger than a socket takes at once.
async fn a_full_socket_hands_the_rest_back() {
    let mut pairs = wires(3).await;
    // Far beyond what a loopback socket takes at once: sent in part, the rest handed back.
    let big = vec![b'b'; 16 << 20];
    let leader = pairs[0].0.queue(|out| out.extend_from_slice(&big));
    assert!(
        pairs[1]
            .0
            .queue(|out| out.extend_from_slice(b"one"))
            .is_none()
    );
    assert!(
        pairs[2]
            .0
            .queue(|out| out.extend_from_slice(b"two"))
            .is_none()
    );
    leader.expect("the first queued leads").flush();
    assert_eq!(arrived(&mut pairs[1].2).await, b"one");
    assert_eq!(arrived(&mut pairs[2].2).await, b"two");
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(!pairs[1].0.handed_back(&mut cx), "written whole");
    assert!(
        pairs[0].0.handed_back(&mut cx),
        "the big head is its task's to finish"
    );
    let wire = pairs[0].0.clone();
    let finishing = tokio::spawn(async move { wire.finish().await });
    let mut got = vec![0u8; big.len()];
    tokio::time::timeout(Duration::from_secs(20), pairs[0].2.read_exact(&mut got))
        .await
        .expect("the rest arrived")
        .unwrap();
    assert!(got == big, "the head arrived whole and in order");
    finishing.await.unwrap().unwrap();
    assert!(arrived(&mut pairs[0].2).await.is_empty(), "nothing twice");
}

#[tokio::test]
async fn a_dropped_leader_flushes_the_others_and_abandoned_heads_are_not_sent() {
    let mut pairs = wires(3).await;
    let leader = pairs[0].0.queue(|out| out.extend_from_slice(b"led"));
    assert!(
        pairs[1]
            .0
            .queue(|out| out.extend_from_slice(b"kept"))
            .is_none()
    );
    assert!(
        pairs[2]
            .0
            .queue(|out| out.extend_from_slice(b"abandoned"))
            .is_none()
    );
    // The third request goes away (its connection with it) before the burst, then the
    // leading one (cancelled while its connection lives on, as inside an exchange).
    let (abandoned, read, mut peer) = pairs.pop().unwrap();
    drop((abandoned, read));
    drop(leader);
    assert!(
        arrived(&mut pairs[0].2).await.is_empty(),
        "the leader's own"
    );
    assert_eq!(arrived(&mut pairs[1].2).await, b"kept");
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "sent for a request nobody waits for: {rest:?}"
    );
}

#[tokio::test]
async fn a_head_larger_than_the_socket_buffer_is_finished_by_its_task() {
    let up = upstream(|_| write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let pool = pool(&up);
    // Far beyond what a loopback socket takes in one write: the burst hands the rest back.
    let big = "x".repeat(16 << 20);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-big", HeaderValue::from_str(&big).unwrap());
    for _ in 0..2 {
        let resp = tokio::time::timeout(
            Duration::from_secs(20),
            pool.send_bodyless(&Method::GET, "/", &headers, &[], None),
        )
        .await
        .expect("answered")
        .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }
    let heads = up.heads.lock().unwrap();
    assert_eq!(heads.len(), 2);
    assert!(heads.iter().all(|h| h.len() > 16 << 20 && h.contains(&big)));
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_cancelled_before_the_burst_is_never_sent() {
    let up = upstream(|_| write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let pool = pool(&up);
    assert!(fetch(&pool, Method::DELETE, "/warm").await.is_ok());
    let headers = http::HeaderMap::new();
    {
        // Polled once: queued on the pooled connection and waiting for the burst; then the
        // client goes away.
        let mut send =
            std::pin::pin!(pool.send_bodyless(&Method::DELETE, "/cancelled", &headers, &[], None));
        let polled = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(fetch(&pool, Method::DELETE, "/after").await.is_ok());
    let heads = up.heads.lock().unwrap();
    let lines: Vec<_> = heads.iter().map(|h| h.lines().next().unwrap()).collect();
    assert_eq!(lines, ["DELETE /warm HTTP/1.1", "DELETE /after HTTP/1.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_a_multi_thread_runtime_all_complete() {
    let up = upstream(|n| {
        write(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{n}",
            n.to_string().len()
        ))
    })
    .await;
    let pool = pool(&up);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let (status, _, _) = fetch(&pool, Method::GET, "/").await.unwrap();
                    assert_eq!(status, StatusCode::OK);
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("no request left waiting");
    assert_eq!(up.heads.lock().unwrap().len(), 32 * 50);
    assert!(up.accepts.load(Ordering::SeqCst) <= 32);
}

/// One body-less request with a deadline `within` from now: its status, or the error.
async fn within(pool: &Arc<Pool>, within: Duration) -> Result<StatusCode, PoolError> {
    let mut headers = http::HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("upstream.test"));
    let deadline = tokio::time::Instant::now() + within;
    let resp = pool
        .send_bodyless(&Method::GET, "/", &headers, &[], Some(deadline))
        .await?;
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    Ok(status)
}

#[tokio::test]
async fn each_request_on_a_reused_connection_gets_its_own_deadline() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
    let up = upstream(move |n| match n {
        // Answered after the first request's deadline, within its own.
        1 => Act::After(Duration::from_millis(600), ok.clone()),
        3 => Act::Silent,
        _ => Act::Write(ok.clone(), 0),
    })
    .await;
    let pool = pool(&up);
    // The connection's timer starts with a short deadline...
    assert_eq!(
        within(&pool, Duration::from_millis(300)).await.unwrap(),
        StatusCode::OK
    );
    // ...which a later, longer one replaces: not cut at the first request's deadline.
    assert_eq!(
        within(&pool, Duration::from_secs(5)).await.unwrap(),
        StatusCode::OK
    );
    // A long deadline, then a short one on the same connection: the short one holds.
    assert_eq!(
        within(&pool, Duration::from_secs(30)).await.unwrap(),
        StatusCode::OK
    );
    let started = std::time::Instant::now();
    let err = within(&pool, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, PoolError::TimedOut), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(
        up.accepts.load(Ordering::SeqCst),
        1,
        "all on one connection"
    );
    // The timed-out connection is not reused.
    assert_eq!(
        within(&pool, Duration::from_secs(5)).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(up.accepts.load(Ordering::SeqCst), 2);
}

#[test]
fn raw_fields_read_back_as_httparse_took_them() {
    // Bare LF line ends, whitespace around values, an empty value, no fields at all.
    let fields = h1::RawFields::of_head(
        b"HTTP/1.1 200 OK\nA:  x y \r\nB:\t\nConnection: close, X-A\n\n",
        false,
    )
    .unwrap();
    let got: Vec<(&[u8], &[u8])> = fields.iter().map(|f| (f.name, f.value)).collect();
    let lines: Vec<&[u8]> = fields.iter().map(|f| f.line).collect();
    assert_eq!(
        lines,
        [&b"A:  x y \r\n"[..], b"B:\t\n", b"Connection: close, X-A\n"]
    );
    assert_eq!(
        got,
        [
            (&b"A"[..], &b"x y"[..]),
            (b"B", b""),
            (b"Connection", b"close, X-A")
        ]
    );
    assert!(fields.names_fields());
    assert_eq!(fields.length(), None);
    let map = fields.to_map();
    assert_eq!(map.len(), 3);
    assert_eq!(map["a"], "x y");

    let fields = h1::RawFields::of_head(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
    assert_eq!(fields.iter().count(), 0);
    // A length beside a transfer coding is not the body's.
    let fields = h1::RawFields::of_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(fields.length(), None);
    let fields =
        h1::RawFields::of_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", false).unwrap();
    assert_eq!(fields.length(), Some(3));
}
