//! Keep-alive connections to one upstream target: body-less requests over the gateway's own
//! HTTP/1.1 exchange ([`h1`]), requests with a body and upgrades over hyper's HTTP/1.1 client
//! connection. Each kind keeps its own idle connections.
//!
//! The gateway owns this pool instead of using hyper-util's legacy `Client`: profiling the
//! proxy path showed that client's per-request machinery (a spawned task per request to watch
//! for connection reuse, a pool keyed by a freshly built key under a global lock) cost a
//! sizeable share of the CPU per request. Here a pool serves exactly one target, an idle
//! connection is a `SendRequest` in a `Vec`, and a connection goes back to the pool when the
//! response body ends, from inside the body's own poll.
//!
//! A request that an idle connection could not take (the upstream closed it meanwhile) comes
//! back untouched from `try_send_request` and is sent on a fresh connection: nothing was
//! written, so that is safe for every method. A body-less request on a reused connection that
//! was closed before a byte of the answer came is sent again on another connection when its
//! method is idempotent (RFC 9110 9.2.2), as browsers and Go's client do. Connection failures
//! are reported as [`PoolError::Connect`] so the caller can fail over to another target.

mod batch;
mod h1;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tokio::net::TcpStream;

use rustls::pki_types::CertificateDer;

use crate::body::{BodyError, ReqBody};
use crate::netio::Flat;
use h1::Stream;
pub use h1::{H1Error, RawField, RawFields, RawIter};
use tokio_util::either::Either;

/// Idle connections older than this are not reused: upstreams close idle keep-alive
/// connections after their own timeout (nginx: 75 s), and reusing one at that moment races.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many idle connections are kept per target.
const MAX_IDLE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be established (refused, unreachable, timeout, TLS, handshake).
    #[error("connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// The request failed on an established connection.
    #[error(transparent)]
    Request(hyper::Error),
    /// A body-less exchange failed on an established connection.
    #[error(transparent)]
    Exchange(H1Error),
    /// No answer by the deadline given to [`Pool::send_bodyless`].
    #[error("upstream did not answer in time")]
    TimedOut,
}

impl From<H1Error> for PoolError {
    /// A timed-out exchange is the pool's timeout, whichever way it was reached.
    fn from(e: H1Error) -> PoolError {
        match e {
            H1Error::TimedOut => PoolError::TimedOut,
            e => PoolError::Exchange(e),
        }
    }
}

impl PoolError {
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect { .. })
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// The idle connections of each kind.
#[derive(Default)]
struct IdleSets {
    hyper: Vec<Idle<SendRequest<ReqBody>>>,
    own: Vec<Idle<h1::Conn>>,
}

/// How connections to a target are made.
#[derive(Clone)]
pub enum Transport {
    Plain,
    /// `https`: TLS with this client config and server name.
    Tls(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    /// An `https` target whose TLS settings could not be built: every connect fails with this
    /// reason rather than fall back to plain text.
    Broken(String),
}

impl Transport {
    /// TLS to `host` (a name or a bracketed IPv6 literal) with `connector`; a connector that
    /// could not be built or a host that is no server name gives a transport that refuses
    /// every connect with the reason, never plain text.
    pub fn tls(connector: Result<tokio_rustls::TlsConnector, String>, host: &str) -> Transport {
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        match (connector, rustls::pki_types::ServerName::try_from(name)) {
            (Ok(connector), Ok(name)) => Transport::Tls(connector, name),
            (Err(e), _) => Transport::Broken(e),
            (_, Err(e)) => Transport::Broken(format!("invalid TLS server name: {e}")),
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    pub transport: Transport,
    pub connect_timeout: Duration,
}

/// HTTP/1.1 handshake on `io`; the connection is driven by its own task (with upgrades, so a
/// `101 Switching Protocols` answer can take the stream over).
async fn handshake(io: Stream) -> Result<SendRequest<ReqBody>, hyper::Error> {
    let (sender, conn) = http1::Builder::new().handshake(Flat::new(io)).await?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

/// Whether a request goes over the gateway's own exchange ([`Pool::send_bodyless`]): no body,
/// no upgrade (a `101` hands the connection over, which only hyper's connection does).
pub fn bodyless(body_empty: bool, headers: &HeaderMap) -> bool {
    body_empty && !headers.contains_key(header::UPGRADE)
}

/// Methods whose request may be sent twice (RFC 9110 9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The idle connections of one target.
pub struct Pool {
    endpoint: Endpoint,
    idle: Mutex<IdleSets>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.endpoint.authority)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(endpoint: Endpoint) -> Arc<Pool> {
        Arc::new(Pool {
            endpoint,
            idle: Mutex::new(IdleSets::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleSets> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The most recently used idle hyper connection that is still open.
    fn checkout(&self) -> Option<SendRequest<ReqBody>> {
        let mut idle = self.lock();
        while let Some(conn) = idle.hyper.pop() {
            if !conn.conn.is_closed() && conn.since.elapsed() < IDLE_TIMEOUT {
                return Some(conn.conn);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<ReqBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.hyper.len() < MAX_IDLE {
            idle.hyper.push(Idle {
                conn: sender,
                since: Instant::now(),
            });
        }
    }

    /// The most recently used idle connection for body-less exchanges that is still open.
    fn checkout_own(&self) -> Option<h1::Conn> {
        loop {
            let mut conn = self.lock().own.pop()?;
            if conn.since.elapsed() < IDLE_TIMEOUT && conn.conn.idle_and_open() {
                return Some(conn.conn);
            }
        }
    }

    fn checkin_own(&self, mut conn: h1::Conn) {
        conn.park();
        let mut idle = self.lock();
        if idle.own.len() < MAX_IDLE {
            idle.own.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A new connection's byte stream (TCP, then TLS for `https`).
    async fn open(&self) -> Result<Stream, PoolError> {
        let ep = &self.endpoint;
        let fail = |reason: String| PoolError::Connect {
            target: ep.authority.clone(),
            reason,
        };
        if let Transport::Broken(reason) = &ep.transport {
            return Err(fail(reason.clone()));
        }
        let tcp = match tokio::time::timeout(
            ep.connect_timeout,
            TcpStream::connect(ep.authority.as_str()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail(format!("timed out after {:?}", ep.connect_timeout))),
        };
        let _ = tcp.set_nodelay(true);
        match &ep.transport {
            Transport::Plain | Transport::Broken(_) => Ok(Either::Left(tcp)),
            Transport::Tls(connector, name) => {
                let tls =
                    tokio::time::timeout(ep.connect_timeout, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| fail("TLS handshake timed out".into()))?
                        .map_err(|e| fail(format!("TLS: {e}")))?;
                Ok(Either::Right(Box::new(tls)))
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<ReqBody>, PoolError> {
        let stream = self.open().await?;
        handshake(stream).await.map_err(|e| PoolError::Connect {
            target: self.endpoint.authority.clone(),
            reason: e.to_string(),
        })
    }

    /// Sends `req` (origin-form URI, `Host` set by the caller) on a pooled or new connection.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ReqBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        if bodyless(req.body().is_end_stream(), req.headers()) {
            let (parts, _empty) = req.into_parts();
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut resp = self
                .send_bodyless(&parts.method, target, &parts.headers, &[], None)
                .await?;
            if let Some(fields) = resp.body_mut().take_fields() {
                *resp.headers_mut() = fields.to_map();
            }
            return Ok(resp);
        }
        // Boxed: its future (hyper's handshake, rustls state) would otherwise be part of, and
        // copied with, every body-less request's.
        Box::pin(self.send_hyper(req)).await
    }

    /// Sends a request without a body and not asking for an upgrade: `target` in origin form,
    /// `headers` with `Host`, then `added`; [`PoolError::TimedOut`] when the answer's head
    /// has not come by `deadline` (connecting included). Borrowed, not a `Request`: the proxy
    /// path's future holds this one's, and every value moved into it was another copy to
    /// carry and move along. The answer's header fields are left as they came, in the body
    /// ([`PooledBody::take_fields`]); the response's own map is empty.
    pub async fn send_bodyless(
        self: &Arc<Self>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        added: &[(HeaderName, HeaderValue)],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let fields = h1::Fields { headers, added };
        while let Some(mut conn) = self.checkout_own() {
            match conn.exchange(method, target, fields, deadline).await {
                Ok(head) => return Ok(self.wrap_own(head, conn)),
                // Closed while idle, before the request reached the upstream, most likely; the
                // upstream may still have seen it, so only an idempotent request goes again.
                Err(H1Error::Closed) if idempotent(method) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Boxed for the same reason as in `send`: a new connection is rare. Its wait for the
        // deadline is an ordinary timer for the same reason.
        let open = Box::pin(self.open());
        let stream = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, open)
                .await
                .map_err(|_elapsed| PoolError::TimedOut)??,
            None => open.await?,
        };
        let mut conn = h1::Conn::new(stream);
        let head = conn.exchange(method, target, fields, deadline).await?;
        Ok(self.wrap_own(head, conn))
    }

    fn wrap_own(self: &Arc<Self>, head: h1::Head, conn: h1::Conn) -> Response<PooledBody> {
        let mut body = h1::Body::new(conn, &head);
        let home = if http_body::Body::is_end_stream(&body) {
            if let Some(conn) = body.reusable() {
                self.checkin_own(conn);
            }
            None
        } else {
            Some(self.clone())
        };
        let mut resp = Response::new(PooledBody {
            inner: Inner::Own {
                body,
                home,
                fields: Some(head.fields),
            },
        });
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        resp
    }

    async fn send_hyper(
        self: &Arc<Self>,
        req: Request<ReqBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let mut req = req;
        // Idle connections first; each may turn out closed, in which case the request comes
        // back unsent and the next one is tried, then a fresh connection.
        while let Some(mut sender) = self.checkout() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Request(err.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, sender)),
            Err(e) => Err(PoolError::Request(e)),
        }
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: SendRequest<ReqBody>,
    ) -> Response<PooledBody> {
        let hyper = |inner, home| PooledBody {
            inner: Inner::Hyper { inner, home },
        };
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the upgraded stream.
            return resp.map(|inner| hyper(inner, None));
        }
        if resp.body().is_end_stream() {
            self.checkin(sender);
            return resp.map(|inner| hyper(inner, None));
        }
        let home = Some((sender, self.clone()));
        resp.map(|inner| hyper(inner, home))
    }
}

/// An upstream response body that returns its connection to the pool once it has ended.
/// Dropped before the end (the client went away), the connection is closed instead: it may
/// still carry the rest of this response.
pub struct PooledBody {
    inner: Inner,
}

enum Inner {
    Hyper {
        inner: Incoming,
        home: Option<(SendRequest<ReqBody>, Arc<Pool>)>,
    },
    Own {
        body: h1::Body,
        home: Option<Arc<Pool>>,
        /// The answer's header fields, until a writer takes them.
        fields: Option<h1::RawFields>,
    },
}

impl PooledBody {
    /// Sets a gateway field on an answer whose fields are still bytes; gives it back when they
    /// are not (hyper's answers, or taken), for the response's map.
    pub fn add_field(
        &mut self,
        name: HeaderName,
        value: HeaderValue,
    ) -> Option<(HeaderName, HeaderValue)> {
        match &mut self.inner {
            Inner::Own {
                fields: Some(fields),
                ..
            } => {
                fields.add(name, value);
                None
            }
            _ => Some((name, value)),
        }
    }

    /// The header fields of an answer read by the gateway's own exchange
    /// ([`Pool::send_bodyless`]), which are not in the response's map; `None` for hyper's
    /// answers, whose fields are, and once taken.
    pub fn take_fields(&mut self) -> Option<h1::RawFields> {
        match &mut self.inner {
            Inner::Own { fields, .. } => fields.take(),
            Inner::Hyper { .. } => None,
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().inner {
            Inner::Hyper { inner, home } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
                    Poll::Ready(Some(Err(_))) => {
                        *home = None;
                        false
                    }
                    Poll::Pending => false,
                };
                if ended && let Some((sender, pool)) = home.take() {
                    pool.checkin(sender);
                }
                polled.map_err(BodyError::Hyper)
            }
            Inner::Own { body, home, .. } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if body.is_end_stream()
                    && let Some(pool) = home.take()
                    && let Some(conn) = body.reusable()
                {
                    pool.checkin_own(conn);
                }
                polled.map_err(BodyError::Upstream)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper { inner, .. } => inner.is_end_stream(),
            Inner::Own { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { inner, .. } => inner.size_hint(),
            Inner::Own { body, .. } => body.size_hint(),
        }
    }
}

/// Client TLS for `https` targets: Mozilla's roots plus `extra` CA certificates.
pub fn client_tls(
    extra: &(impl Iterator<Item = CertificateDer<'static>> + Clone),
) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let (_added, _ignored) = roots.add_parsable_certificates(extra.clone());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests;
