//! Accepting connections: optional TLS (rustls, ALPN `h2` and `http/1.1`), then hyper-util's
//! auto builder, which serves HTTP/1.1 and HTTP/2 (prior-knowledge h2c on plain TCP). Plain
//! TCP connections start in the gateway's own HTTP/1.1 loop ([`h1`]), which serves body-less
//! requests and hands the connection to hyper at the first other one. A drain waits for every
//! connection task: hyper's and the own loop's are told by `shutdown` ([`Closable`] for
//! hyper's).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::ServerError;
use super::h1;
use crate::body::{BodyError, InBody, ResBody};
use crate::config::{Limits, TlsConfig};
use crate::netio::Flat;

/// How long a client may take to finish a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which a whole period passes without a request head arriving, a request
/// open or a byte written is closed: an idle keep-alive client, or one trickling a head
/// (slowloris), is let go after one to two periods. See [`watched`].
pub const IDLE_PERIOD: Duration = Duration::from_secs(30);

/// Builds the TLS acceptor for `tls`.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{}: no certificate found",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", path_name(&tls.cert))))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn path_name(p: &Path) -> String {
    p.display().to_string()
}

/// How a listener serves its connections: the own HTTP/1.1 loop's head limits
/// ([`h1::serve`]), and hyper's builder for TLS, HTTP/2 and requests with a body.
#[derive(Clone)]
pub struct Protocols {
    hyper: auto::Builder<TokioExecutor>,
    head: h1::HeadLimits,
}

/// The connection settings shared by every connection of a listener.
pub fn builder(limits: &Limits) -> Protocols {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // Leave room above the configured limit so that our own check answers with a problem
    // document; only far larger heads are refused before it (hyper's bare 431, or the own
    // loop's problem document).
    let head_room = (limits.max_header_bytes as usize)
        .saturating_mul(4)
        .max(64 * 1024);
    // No `max_headers`: hyper's default (100 fields, as HAProxy's 101) parses into arrays on
    // the stack; any explicit cap makes it allocate and fill two arrays of that many entries
    // on the heap for every request head (1000 cost ~5% of a proxied request). A head with
    // more fields gets hyper's bare 431; one too large in bytes still gets our problem+json.
    // No hyper header-read timeout: hyper allocates, registers and cancels a timer for every
    // request head (~3% of a proxied request's instructions); the connection's watchdog
    // ([`watched`]) bounds slow heads and idle connections with one timer per period.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(head_room);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(head_room as u32);
    Protocols {
        hyper: b,
        head: h1::HeadLimits {
            max_head: head_room,
            configured: limits.max_header_bytes,
        },
    }
}

/// Accepts on `listener` until `shutdown` turns true, serving each connection with the
/// service `make(peer, tls)` returns, closing those idle for `idle` ([`IDLE_PERIOD`] outside
/// tests); then waits up to `drain` for open requests.
pub async fn serve<M, S, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    protocols: Protocols,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    idle: Duration,
    make: M,
) where
    M: Fn(SocketAddr, bool) -> S,
    S: Fn(http::Request<InBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<http::Response<ResBody>, std::convert::Infallible>> + Send + 'static,
{
    // Every connection task holds a sender: the drain is over when the receiver sees none.
    let (conns, mut conns_closed) = tokio::sync::mpsc::channel::<std::convert::Infallible>(1);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(target: "gatehouse::server", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let inner = make(peer, tls.is_some());
        let own = inner.clone();
        let stop = shutdown.clone();
        let seen = activity.clone();
        let service = service_fn(move |req: http::Request<Incoming>| {
            if req.version() == http::Version::HTTP_2 {
                seen.h2.store(true, Ordering::Relaxed);
            }
            let open = Open::start(&seen);
            // A combinator rather than an `async` block: the block would hold the answer's
            // future twice (captured, then moved to be awaited), and hyper moves the whole
            // request future into place once per request.
            inner(req.map(InBody::Hyper)).map(move |answer| {
                answer.map(|mut resp| {
                    // hyper writes the map alone.
                    crate::proxy::headers::materialize(&mut resp);
                    resp.map(|body| Tracked { body, _open: open })
                })
            })
        });
        let builder = protocols.hyper.clone();
        let head_limits = protocols.head;
        let tls = tls.clone();
        let held = conns.clone();
        tokio::spawn(async move {
            let _held = held;
            let stream = Counted {
                io: stream,
                activity: activity.clone(),
            };
            match tls {
                None => {
                    // Ours for body-less HTTP/1.1 requests, hyper's from the first other one.
                    let (hand_stop, hand_activity) = (stop.clone(), activity.clone());
                    let handover = move |io| {
                        let conn = builder
                            .serve_connection_with_upgrades(Flat::new(io), service)
                            .into_owned();
                        Closable::new(conn, hand_stop, &hand_activity)
                    };
                    let conn = h1::serve(stream, own, head_limits, stop, &activity, handover);
                    log_end(peer, watched(conn, &activity, idle).await);
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        TLS_HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(target: "gatehouse::server", %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(Flat::new(stream), service)
                        .into_owned();
                    let conn = Closable::new(conn, stop, &activity);
                    log_end(peer, watched(conn, &activity, idle).await);
                }
            }
        });
    }
    drop(listener);
    drop(conns);
    // Every connection was told by `shutdown`; each task drops its sender when done.
    let drained = async {
        let _ = conns_closed.recv().await;
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!(target: "gatehouse::server", "drain timeout reached; closing remaining connections");
    }
}

fn log_end<E: std::fmt::Display>(peer: SocketAddr, ended: Option<Result<(), E>>) {
    match ended {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::debug!(target: "gatehouse::server", %peer, error = %e, "connection ended");
        }
        None => tracing::debug!(target: "gatehouse::server", %peer, "idle connection closed"),
    }
}

/// What a connection's watchdog sees of it, updated by the service and the socket.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests not answered to the end yet: waiting on an upstream, or with a body still
    /// streaming either way (a quiet event stream stays open however long it is quiet).
    open: AtomicU64,
    /// Successful writes to the client (every request answered writes, so a request that came
    /// and went within a period shows here).
    writes: AtomicU64,
    /// An HTTP/2 request came: an idle period ends in a `GOAWAY` ([`Activity::close`])
    /// rather than a drop, so the client knows no request it sends is lost.
    h2: AtomicBool,
    /// The watchdog asks the hyper connection to finish gracefully (see [`Closable`]).
    close: AtomicBool,
}

impl Activity {
    fn progress(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// One request, counted from its head until its answer has been sent or dropped.
pub struct Open(Arc<Activity>);

impl Open {
    pub fn start(activity: &Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the connection `conn`; `None` when it was closed (dropped) because a whole `period`
/// passed with no request head received, no request open and nothing written to the client:
/// an idle keep-alive connection or a trickled head (slowloris) is let go after one to two
/// periods, as hyper's header-read timeout (which this replaces) did after one. An open
/// request (waiting on its upstream, or its body streaming either way) keeps the connection.
/// An HTTP/2 connection is asked for a `GOAWAY` first ([`Closable`]) and dropped only if it
/// is still there a period later. One timer per connection, re-armed once a period, where
/// hyper armed one per request.
async fn watched<F: Future>(conn: F, activity: &Activity, period: Duration) -> Option<F::Output> {
    let mut conn = pin!(conn);
    let mut timer = pin!(tokio::time::sleep(period));
    let mut last = activity.progress();
    let mut armed = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        // The timer keeps the task's waker from its last poll: it needs polling only when
        // (re)armed, not on every wake-up of the connection.
        if armed && !timer.is_elapsed() {
            return Poll::Pending;
        }
        if armed {
            let now = activity.progress();
            if now == last && activity.open.load(Ordering::Relaxed) == 0 {
                let asked = activity.close.load(Ordering::Relaxed);
                if !activity.h2.load(Ordering::Relaxed) || asked {
                    return Poll::Ready(None);
                }
                // HTTP/2: a GOAWAY first (the connection is polled again right away); a
                // client that keeps it open anyway is dropped a period later.
                activity.close.store(true, Ordering::Relaxed);
                cx.waker().wake_by_ref();
            }
            last = now;
            timer.as_mut().reset(tokio::time::Instant::now() + period);
        }
        armed = true;
        if timer.as_mut().poll(cx).is_ready() {
            // Only with a zero period; look again on the next wake-up.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

/// A hyper connection that finishes gracefully when the server stops or the watchdog asks
/// ([`Activity::close`]): HTTP/2 sends `GOAWAY` and closes once its open streams are done,
/// HTTP/1 closes after the answer in progress. In place of hyper-util's `GracefulShutdown`,
/// whose watcher cannot be asked per connection.
struct Closable<C> {
    conn: Pin<Box<C>>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    activity: Arc<Activity>,
    closing: bool,
}

impl<C> Closable<C> {
    fn new(conn: C, mut stop: watch::Receiver<bool>, activity: &Arc<Activity>) -> Self {
        Closable {
            conn: Box::pin(conn),
            stop: Box::pin(async move {
                // A dropped sender means the server is gone: stop as well.
                let _ = stop.wait_for(|stop| *stop).await;
            }),
            activity: activity.clone(),
            closing: false,
        }
    }
}

/// A connection that can be asked to finish gracefully.
trait Graceful {
    fn start_graceful(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    fn start_graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<C: Future + Graceful> Future for Closable<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        if !this.closing
            && (this.activity.close.load(Ordering::Relaxed)
                || this.stop.as_mut().poll(cx).is_ready())
        {
            this.closing = true;
            this.conn.as_mut().start_graceful();
        }
        this.conn.as_mut().poll(cx)
    }
}

/// A response body that keeps its request counted as open until it is sent or dropped.
pub struct Tracked {
    body: ResBody,
    _open: Open,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client socket that counts its successful writes for the watchdog.
struct Counted<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.activity.writes.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const PERIOD: Duration = Duration::from_millis(300);

    /// A listener with the watchdog at PERIOD; every request is answered after `delay`.
    async fn start(delay: Duration) -> (SocketAddr, watch::Sender<bool>) {
        start_with(move || async move {
            tokio::time::sleep(delay).await;
            ResBody::full("ok".into())
        })
        .await
    }

    /// A listener with the watchdog at PERIOD answering 200 with the body `answer()` makes.
    async fn start_with<A, Fut>(answer: A) -> (SocketAddr, watch::Sender<bool>)
    where
        A: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ResBody> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let limits = Limits {
            max_header_bytes: 32 * 1024,
            drain_timeout: Duration::from_secs(1),
        };
        tokio::spawn(serve(
            listener,
            None,
            builder(&limits),
            stopped,
            Duration::from_secs(1),
            PERIOD,
            move |_peer, _tls| {
                let answer = answer.clone();
                move |_req| {
                    let body = answer();
                    async move { Ok(http::Response::new(body.await)) }
                }
            },
        ));
        (addr, stop)
    }

    /// Reads until the server closes the connection; what it sent and how long that took.
    async fn until_closed(conn: &mut TcpStream) -> (String, Duration) {
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got)).await;
        (
            String::from_utf8_lossy(&got).into_owned(),
            started.elapsed(),
        )
    }

    #[tokio::test]
    async fn a_trickled_head_is_cut_off_within_two_periods() {
        let (addr, _stop) = start(Duration::ZERO).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        // One more header byte every third of a period: progress on the socket, never a head.
        let trickle = async {
            for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
                tokio::time::sleep(PERIOD / 3).await;
                if conn.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
        };
        trickle.await;
        let (answer, _) = until_closed(&mut conn).await;
        let elapsed = started.elapsed();
        assert!(answer.is_empty(), "{answer}");
        assert!(elapsed < PERIOD * 4, "closed after {elapsed:?}");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_and_a_slow_answer_is_not() {
        // Each answer takes three periods: the request is open all along.
        let (addr, _stop) = start(PERIOD * 3).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, idle) = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        // Three periods of waiting for the answer, then one or two of idling.
        assert!(idle >= PERIOD * 3 + PERIOD, "closed after {idle:?}");
        assert!(idle < PERIOD * 3 + PERIOD * 3, "closed after {idle:?}");
    }

    type H2Send = hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>;

    /// hyper's HTTP/2 client on a new connection to `addr`; the connection runs in a task
    /// whose result says how it ended.
    async fn h2_client(addr: SocketAddr) -> (H2Send, tokio::task::JoinHandle<hyper::Result<()>>) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        (send, tokio::spawn(conn))
    }

    fn h2_get(addr: SocketAddr) -> http::Request<http_body_util::Empty<Bytes>> {
        http::Request::get(format!("http://{addr}/"))
            .body(http_body_util::Empty::new())
            .unwrap()
    }

    #[tokio::test]
    async fn an_idle_http2_connection_gets_a_goaway() {
        // Each answer takes two periods: open streams keep the connection.
        let (addr, _stop) = start(PERIOD * 2).await;
        let (mut send, conn) = h2_client(addr).await;
        for _ in 0..2 {
            let resp = send.send_request(h2_get(addr)).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        let answered = std::time::Instant::now();
        // hyper's client connection ends cleanly only on a GOAWAY; a bare close is an error.
        let ended = tokio::time::timeout(PERIOD * 8, conn)
            .await
            .unwrap()
            .unwrap();
        let idle = answered.elapsed();
        assert!(ended.is_ok(), "{ended:?}");
        assert!(idle >= PERIOD, "closed after {idle:?}");
        assert!(idle < PERIOD * 3, "closed after {idle:?}");
        assert!(send.is_closed());
    }

    #[tokio::test]
    async fn a_drain_lets_an_http2_request_finish_then_sends_goaway() {
        let (addr, stop) = start(PERIOD).await;
        let (mut send, conn) = h2_client(addr).await;
        let answer = tokio::spawn(send.send_request(h2_get(addr)));
        tokio::time::sleep(PERIOD / 3).await;
        stop.send(true).unwrap();
        let resp = answer.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        // At once, not after an idle period (that would be the watchdog's GOAWAY).
        let ended = tokio::time::timeout(PERIOD / 2, conn)
            .await
            .unwrap()
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[tokio::test]
    async fn a_quiet_streaming_answer_keeps_its_connection() {
        // An upstream whose chunked body pauses for three periods between its two chunks.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = upstream.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut conn, _) = upstream.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = conn.read(&mut head).await.unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await
                .unwrap();
            tokio::time::sleep(PERIOD * 3).await;
            conn.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.unwrap();
            let _ = conn.read(&mut head).await;
        });
        let pool = crate::pool::Pool::new(crate::pool::Endpoint {
            authority,
            transport: crate::pool::Transport::Plain,
            connect_timeout: Duration::from_secs(1),
        });
        let (addr, _stop) = start_with(move || {
            let pool = pool.clone();
            async move {
                let mut req = http::Request::new(crate::body::ReqBody::empty());
                *req.uri_mut() = http::Uri::from_static("/");
                let resp = pool.send(req).await.unwrap();
                ResBody::Upstream(resp.into_body())
            }
        })
        .await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = until_closed(&mut conn).await;
        assert!(answer.contains("first"), "{answer}");
        assert!(answer.contains("last"), "{answer}");
    }
}
