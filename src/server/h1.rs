//! The gateway's own HTTP/1.1 loop for plain-TCP client connections.
//!
//! Most requests through a gateway carry no body (GET, HEAD, DELETE, ...). For those this
//! loop reads the head, calls the service and writes the answer itself: one parse, one
//! buffer, one `send` for a small answer, and the request's future boxed once and polled
//! there, not moved into hyper's dispatcher through its `service_fn` and two `Map`s. That
//! machinery was the largest single share of a proxied request's instruction-cache misses
//! (about 300 of 1,700 per request in callgrind's cache simulation; `benches/README.md`),
//! which, more than instruction counts, set the proxy path apart from HAProxy's.
//!
//! Everything else is hyper's: the first request with a body (`Content-Length` other than 0,
//! `Transfer-Encoding`), `Expect`, `Upgrade` (WebSocket, h2c), `CONNECT`, and HTTP/2 prior
//! knowledge hand the connection, with the bytes read so far, to hyper's server for the
//! rest of its life ([`Rewind`]). A client that hangs up while its request is in flight
//! cancels the request, as hyper does.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::listener::{Activity, Open};
use crate::body::{BodyError, InBody, ResBody};
use crate::pool::RawFields;
use crate::problem::ApiError;
use crate::proxy::headers::end_to_end;

/// As hyper's default (and HAProxy's 101): more fields is a 431.
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Answer bytes gathered before a write; a larger body frame is written on its own.
const WRITE_CHUNK: usize = 64 * 1024;
/// The HTTP/2 connection preface starts so (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("answer body: {0}")]
    Body(#[from] BodyError),
    #[error("the answer body does not match its content-length")]
    LengthMismatch,
    #[error(transparent)]
    Hyper(Box<dyn std::error::Error + Send + Sync>),
}

/// Head size limits of a listener.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// A head still incomplete at this size gets a 431 and the connection is closed.
    pub max_head: usize,
    /// The configured `limits.max_header_bytes`, named in that 431.
    pub configured: u64,
}

/// Serves HTTP/1.1 on `io` with `service` until the client closes, a request says `close`
/// (or is HTTP/1.0 without keep-alive, or gets an answer of unknown length), `shutdown` turns
/// true, or a request needs hyper: then `handover` gets the connection (and what was read of
/// it) and its result is the connection's.
pub async fn serve<T, S, F, H, HF, E>(
    mut io: T,
    service: S,
    limits: HeadLimits,
    shutdown: watch::Receiver<bool>,
    activity: &Arc<Activity>,
    handover: H,
) -> Result<(), ConnError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Fn(Request<InBody>) -> F,
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
    H: FnOnce(Rewind<T>) -> HF,
    HF: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A drain is seen two ways: `stop` is polled once, at the first wait for a head, which
    // registers this task to be woken by it (or finds the drain begun); after that a look at
    // `draining`'s version is enough. Polling `stop` at every wait took the channel's waiter
    // lock, shared by every connection, once per request (~300 instructions).
    let draining = shutdown.clone();
    let mut shutdown = shutdown;
    let mut stop = pin!(shutdown.wait_for(|stop| *stop).map(|_| ()));
    let mut watching = false;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut first = true;
    loop {
        let head = loop {
            if !buf.is_empty() {
                match parse(&buf, &mut fields) {
                    Ok(Some(head)) => break head,
                    Ok(None) if buf.len() < limits.max_head => {}
                    Ok(None) | Err(httparse::Error::TooManyHeaders) => {
                        let answer = ApiError::HeadersTooLarge {
                            limit: limits.configured,
                        };
                        return refuse(&mut io, &mut out, answer).await;
                    }
                    Err(_) if first && buf.starts_with(&H2_PREFACE[..4]) => {
                        return hand_over(io, buf, handover).await;
                    }
                    Err(e) => {
                        let answer = ApiError::InvalidRequest(format!("malformed request: {e}"));
                        return refuse(&mut io, &mut out, answer).await;
                    }
                }
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            let read = if buf.is_empty() {
                // Between requests a drain closes the connection at once.
                let read = poll_fn(|cx| {
                    if let Poll::Ready(read) =
                        tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut buf)
                    {
                        return Poll::Ready(Some(read));
                    }
                    if !watching {
                        watching = true;
                        if stop.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                    }
                    if draining.has_changed().unwrap_or(true) {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await;
                match read {
                    Some(read) => read?,
                    None => return Ok(()),
                }
            } else {
                poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut buf)).await?
            };
            if read == 0 {
                return Ok(());
            }
        };
        first = false;
        if !head.plain {
            return hand_over(io, buf, handover).await;
        }
        let bytes = buf.split_to(head.len).freeze();
        let req = match request(&bytes, &head, &fields) {
            Ok(req) => req,
            Err(answer) => return refuse(&mut io, &mut out, answer).await,
        };
        let head_only = req.method() == Method::HEAD;
        let open = Open::start(activity);
        // Boxed: the request's future is KiBs, and every move of it by value (into `answer`,
        // then into that future's own state) is a copy into the connection's cold memory.
        let fut = super::boxed_in_place(|| service(req));
        let Some(Ok(resp)) = answer(fut, &mut io, &mut buf, limits.max_head).await else {
            // The client hung up: the request is dropped, as hyper drops it.
            return Ok(());
        };
        // A drain lets the request in flight finish, then closes (`connection: close`).
        let keep_alive = head.keep_alive && !draining.has_changed().unwrap_or(true);
        let (parts, mut body) = resp.into_parts();
        let upstream = body.take_upstream_fields();
        let answer = Answer {
            head_only,
            version: head.version,
            keep_alive,
        };
        // `write_answer` in two steps, so that only the body is moved into a future.
        let (framing, keep_alive) =
            put_head(&mut out, parts, body.size_hint().exact(), upstream, answer);
        let keep_alive = send_body(&mut io, &mut out, body, framing, keep_alive).await?;
        drop(open);
        if !keep_alive {
            let _ = io.shutdown().await;
            return Ok(());
        }
    }
}

async fn hand_over<T, H, HF, E>(io: T, buf: BytesMut, handover: H) -> Result<(), ConnError>
where
    H: FnOnce(Rewind<T>) -> HF,
    HF: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let rewind = Rewind {
        read: buf.freeze(),
        io,
    };
    handover(rewind)
        .await
        .map_err(|e| ConnError::Hyper(e.into()))
}

/// Answers a request that cannot be served with `answer` and closes the connection.
async fn refuse<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut Vec<u8>,
    answer: ApiError,
) -> Result<(), ConnError> {
    let how = Answer {
        head_only: false,
        version: Version::HTTP_11,
        keep_alive: false,
    };
    write_answer(io, out, answer.into_response(), None, how).await?;
    let _ = io.shutdown().await;
    Ok(())
}

/// Runs the service's future; `None` if the client closed its side (or the socket failed)
/// first. Bytes the client sends meanwhile (a pipelined request) are kept in `buf`.
async fn answer<F: Future, T: AsyncRead + Unpin>(
    fut: F,
    io: &mut T,
    buf: &mut BytesMut,
    max_head: usize,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        // Reading until the socket would block also registers for its next readiness.
        while buf.len() < max_head {
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Where a header field's name and value sit in the head.
#[derive(Debug, Clone)]
struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

/// A parsed request head, as offsets into the read buffer.
#[derive(Debug)]
struct Head {
    len: usize,
    method: Range<usize>,
    target: Range<usize>,
    version: Version,
    keep_alive: bool,
    /// No body, no upgrade, no expectation: this loop can serve it.
    plain: bool,
}

fn span(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Parses the head at the start of `buf` (its fields into `fields`); `None` while incomplete.
fn parse(buf: &[u8], fields: &mut Vec<Field>) -> Result<Option<Head>, httparse::Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Ok(None);
    };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut plain = method != "CONNECT";
    let (mut close, mut keep) = (false, false);
    fields.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            plain &= h.value.iter().all(|b| *b == b'0') && !h.value.is_empty();
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            plain = false;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        fields.push(Field {
            name: span(buf, name),
            value: span(buf, h.value),
        });
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep);
    Ok(Some(Head {
        len,
        method: span(buf, method.as_bytes()),
        target: span(buf, target.as_bytes()),
        version,
        keep_alive,
        plain,
    }))
}

/// The request of a parsed head; header values share the head's bytes.
fn request(bytes: &Bytes, head: &Head, fields: &[Field]) -> Result<Request<InBody>, ApiError> {
    let bad = |what: &str| ApiError::InvalidRequest(format!("malformed request {what}"));
    let method = Method::from_bytes(&bytes[head.method.clone()]).map_err(|_| bad("method"))?;
    let uri =
        Uri::from_maybe_shared(bytes.slice(head.target.clone())).map_err(|_| bad("target"))?;
    // Room for a `Host` the proxy adds to a request without one (its other fields go after
    // the map, `proxy::headers::Added`): a map that grows rehashes and copies everything.
    let mut headers = HeaderMap::with_capacity(fields.len() + 1);
    for f in fields {
        let name = HeaderName::from_bytes(&bytes[f.name.clone()]).map_err(|_| bad("header"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(f.value.clone()))
            .map_err(|_| bad("header"))?;
        headers.append(name, value);
    }
    let mut req = Request::new(InBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = headers;
    Ok(req)
}

/// How the answer's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Unknown length to an HTTP/1.0 client: the end of the connection ends the body.
    Close,
}

/// How an answer goes out.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// The request was `HEAD`: the head only.
    head_only: bool,
    /// The request's version.
    version: Version,
    /// Whether the connection may stay open after this answer.
    keep_alive: bool,
}

/// Writes `resp` and, before its map's fields, the end-to-end fields of `upstream` that the
/// map does not replace; whether the connection stays open.
async fn write_answer<T, B>(
    io: &mut T,
    out: &mut Vec<u8>,
    resp: Response<B>,
    upstream: Option<RawFields>,
    answer: Answer,
) -> Result<bool, ConnError>
where
    T: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    BodyError: From<B::Error>,
{
    let (parts, body) = resp.into_parts();
    let (framing, keep_alive) = put_head(out, parts, body.size_hint().exact(), upstream, answer);
    send_body(io, out, body, framing, keep_alive).await
}

/// The answer's head into `out`: how its body is framed (`None`: it has none) and whether
/// the connection stays open. Not part of the async writer: every by-value argument of an
/// `async fn` is another copy in its future, which the connection's future holds and which
/// is created (copied) once per answer.
fn put_head(
    out: &mut Vec<u8>,
    parts: http::response::Parts,
    body_length: Option<u64>,
    upstream: Option<RawFields>,
    answer: Answer,
) -> (Option<Framing>, bool) {
    let Answer {
        head_only,
        version,
        mut keep_alive,
    } = answer;
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let handler_length = parts.headers.get(header::CONTENT_LENGTH);
    let declared = handler_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The upstream's length (its field is never copied: "5, 5" is one length) unless the
    // handler set one.
    let upstream_length = match (handler_length, &upstream) {
        (None, Some(fields)) => fields.length(),
        _ => None,
    };
    // A field the handler set but that is not one length ("5, 5") is replaced by ours.
    let mut own_length = false;
    let framing = match (declared, upstream_length, body_length) {
        (Some(n), _, _) => Framing::Length(n),
        // Said even without a body: a `HEAD` answer's length is the `GET` one's.
        (None, Some(n), _) => {
            put_field(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
            Framing::Length(n)
        }
        (None, None, Some(n)) => {
            if !bodiless {
                put_field(
                    out,
                    b"content-length",
                    itoa::Buffer::new().format(n).as_bytes(),
                );
                own_length = true;
            }
            Framing::Length(n)
        }
        (None, None, None) if version == Version::HTTP_11 => {
            if !bodiless {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            Framing::Chunked
        }
        (None, None, None) => {
            keep_alive &= bodiless;
            Framing::Close
        }
    };
    // A handler that says `close` gets it, as from hyper (its field is not copied: persistence
    // is said once, below). The map is empty on the proxy path: no lookup there.
    if keep_alive && !parts.headers.is_empty() {
        keep_alive = !crate::proxy::headers::connection_lists(&parts.headers, b"close");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    let mut dated = parts.headers.contains_key(header::DATE);
    if let Some(fields) = &upstream {
        dated |= put_upstream(out, fields, &parts.headers);
    }
    // Framing and persistence are this connection's, said above.
    for (name, value) in parts.headers.iter().filter(|(name, _)| {
        *name != header::TRANSFER_ENCODING
            && *name != header::CONNECTION
            && !(own_length && *name == header::CONTENT_LENGTH)
    }) {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in upstream.iter().flat_map(|f| f.added()) {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        date(out);
    }
    out.extend_from_slice(b"\r\n");
    drop(parts);
    (if bodiless { None } else { Some(framing) }, keep_alive)
}

/// Writes what `put_head` left in `out` and the body after it, framed by `framing`.
async fn send_body<T, B>(
    io: &mut T,
    out: &mut Vec<u8>,
    body: B,
    framing: Option<Framing>,
    mut keep_alive: bool,
) -> Result<bool, ConnError>
where
    T: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    BodyError: From<B::Error>,
{
    let Some(framing) = framing else {
        io.write_all(out).await?;
        return Ok(keep_alive);
    };
    // Polled through `Pin::new` (answer bodies are `Unpin`): `pin!` would move it into a
    // second slot of this future.
    let mut body = body;
    let mut sent = 0u64;
    let mut trailers = None;
    loop {
        // Everything gathered goes out before waiting for more of the body.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(io, out).await?;
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let frame: Frame<Bytes> = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // What was sent stands; the connection's end tells the client it is cut.
                let _ = flush(io, out).await;
                return Err(ConnError::Body(e.into()));
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            Framing::Length(n) if sent > n => {
                let _ = flush(io, out).await;
                return Err(ConnError::LengthMismatch);
            }
            Framing::Chunked => {
                out.extend_from_slice(hex(data.len(), &mut [0; 16]));
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        if data.len() >= WRITE_CHUNK {
            flush(io, out).await?;
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_CHUNK {
            flush(io, out).await?;
        }
    }
    match framing {
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.iter().flat_map(|t| t.iter()) {
                put_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        Framing::Length(n) if sent < n => {
            let _ = flush(io, out).await;
            return Err(ConnError::LengthMismatch);
        }
        Framing::Length(_) => {}
        Framing::Close => keep_alive = false,
    }
    flush(io, out).await?;
    Ok(keep_alive)
}

async fn flush<T: AsyncWrite + Unpin>(io: &mut T, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Appends the end-to-end fields of an upstream answer that `map` does not replace, but its
/// length (said by the caller); whether one was a `date`. Lines that came with CRLF are copied
/// as they came, in runs: one copy for the usual answer, where a line at a time was ~50
/// instructions per field.
fn put_upstream(out: &mut Vec<u8>, fields: &RawFields, map: &HeaderMap) -> bool {
    let block = fields.block();
    let offset = |part: &[u8]| part.as_ptr() as usize - block.as_ptr() as usize;
    let mut run = 0..0;
    let mut dated = false;
    for field in end_to_end(fields) {
        if field.name.eq_ignore_ascii_case(b"content-length")
            || replaced(map, field.name)
            || fields.adds(field.name)
        {
            continue;
        }
        dated |= field.name.eq_ignore_ascii_case(b"date");
        let start = offset(field.line);
        if field.line.ends_with(b"\r\n") {
            if run.end != start {
                out.extend_from_slice(&block[run]);
                run = start..start;
            }
            run.end = start + field.line.len();
        } else {
            out.extend_from_slice(&block[run]);
            run = 0..0;
            put_field(out, field.name, field.value);
        }
    }
    out.extend_from_slice(&block[run]);
    dated
}

/// Appends a `name: value` line.
#[inline]
fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether the handler's map has a field named `name` (any case), which replaces the
/// upstream's. A look along the map's few names, not a lookup: a lookup parses and hashes.
fn replaced(map: &http::HeaderMap, name: &[u8]) -> bool {
    map.keys()
        .any(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes()))
}

fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Appends a `date` field, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(cached.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// A connection handed to hyper: the bytes already read come first.
#[derive(Debug)]
pub struct Rewind<T> {
    read: Bytes,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let first = self.read.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head: 4096,
        configured: 1024,
    };

    /// Answers 200 with "<method> <target> <x-test>" as the body.
    fn describe(
        req: Request<InBody>,
    ) -> impl Future<Output = Result<Response<ResBody>, Infallible>> {
        let x = req
            .headers()
            .get("x-test")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = format!("{} {} {x}", req.method(), req.uri());
        async move { Ok(Response::new(ResBody::full(text.into()))) }
    }

    /// What hyper answers once it has the connection: the size of the body it read.
    async fn by_hyper(io: Rewind<DuplexStream>) -> Result<(), hyper::Error> {
        let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let body = req.into_body().collect().await?.to_bytes();
            let text = format!("hyper read {} bytes", body.len());
            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text))))
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades()
            .await
    }

    /// A connection served by the loop with `service`; the client's end and the stop switch.
    fn start<S, F>(service: S) -> (DuplexStream, watch::Sender<bool>)
    where
        S: Fn(Request<InBody>) -> F + Send + 'static,
        F: Future<Output = Result<Response<ResBody>, Infallible>> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let activity = Arc::new(Activity::default());
            let _ = serve(server, service, LIMITS, stopped, &activity, by_hyper).await;
        });
        (client, stop)
    }

    async fn send(client: &mut DuplexStream, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
    }

    /// Reads until the server closes (or 5 s pass).
    async fn rest(client: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await;
        String::from_utf8(got).unwrap()
    }

    /// Reads one answer with a content-length body.
    async fn one(client: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if body.len() >= len {
                    return text;
                }
            }
        }
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut client, _stop) = start(describe);
        send(
            &mut client,
            b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\nX-Test: one\r\n\r\n",
        )
        .await;
        let first = one(&mut client).await;
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(first.contains("\r\ndate: "), "{first}");
        assert!(first.ends_with("\r\n\r\nGET /a?q=1 one"), "{first}");
        // Two at once, the second ending the connection.
        send(
            &mut client,
            b"DELETE /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Test: two\r\n\r\nGET /c HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let rest = rest(&mut client).await;
        let (second, third) = rest.split_once("DELETE /b two").unwrap();
        assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
        assert!(third.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
        assert!(third.ends_with("\r\n\r\nGET /c "), "{rest}");
    }

    #[tokio::test]
    async fn close_and_http10_end_the_connection_after_the_answer() {
        let (mut client, _stop) = start(describe);
        send(
            &mut client,
            b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let answer = rest(&mut client).await;
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(answer.ends_with("GET /a "), "{answer}");

        let (mut client, _stop) = start(describe);
        send(&mut client, b"GET /b HTTP/1.0\r\n\r\n").await;
        let answer = rest(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("GET /b "), "{answer}");

        // HTTP/1.0 with keep-alive stays open and says so.
        let (mut client, _stop) = start(describe);
        send(
            &mut client,
            b"GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        let answer = one(&mut client).await;
        assert!(
            answer.contains("\r\nconnection: keep-alive\r\n"),
            "{answer}"
        );
        send(&mut client, b"GET /d HTTP/1.0\r\n\r\n").await;
        assert!(rest(&mut client).await.ends_with("GET /d "));
    }

    #[tokio::test]
    async fn a_request_with_a_body_hands_the_connection_to_hyper() {
        for request in [
            &b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            let (mut client, _stop) = start(describe);
            // One body-less request first: the loop serves it, hyper gets the rest.
            send(&mut client, b"GET /mine HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(one(&mut client).await.ends_with("GET /mine "));
            send(&mut client, request).await;
            send(&mut client, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            let answers = rest(&mut client).await;
            assert!(answers.contains("hyper read 5 bytes"), "{answers}");
            assert!(answers.ends_with("hyper read 0 bytes"), "{answers}");
        }
        // HTTP/2 prior knowledge goes to hyper too (here an HTTP/1-only hyper: refused there).
        let (mut client, _stop) = start(describe);
        send(&mut client, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let answer = rest(&mut client).await;
        assert!(!answer.contains("problem"), "{answer}");
    }

    #[tokio::test]
    async fn malformed_and_oversized_heads_get_problem_documents() {
        let (mut client, _stop) = start(describe);
        send(&mut client, b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").await;
        let answer = rest(&mut client).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");

        let (mut client, _stop) = start(describe);
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        send(&mut client, &head).await;
        let answer = rest(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(answer.contains("1024"), "{answer}");

        // Never completed, larger than the limit.
        let (mut client, _stop) = start(describe);
        send(&mut client, b"GET / HTTP/1.1\r\nx-big: ").await;
        send(&mut client, &[b'a'; 5000]).await;
        let answer = rest(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn a_client_hanging_up_cancels_its_request() {
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let seen = dropped.clone();
        let (mut client, _stop) = start(move |_req| {
            let flag = Flag(seen.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(flag);
                Ok(Response::new(ResBody::empty()))
            }
        });
        send(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!dropped.load(Ordering::SeqCst));
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_drain_finishes_the_request_in_flight_then_closes() {
        let (mut client, stop) = start(|req| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            describe(req).await
        });
        send(&mut client, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        let answer = rest(&mut client).await;
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        assert!(answer.ends_with("GET /slow "), "{answer}");

        // Idle between requests: closed at once.
        let (mut client, stop) = start(describe);
        send(&mut client, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
        one(&mut client).await;
        stop.send(true).unwrap();
        assert_eq!(rest(&mut client).await, "");
    }

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BodyError>>>;

    /// A body of two frames of unknown total length, then trailers.
    fn streamed() -> StreamBody<Frames> {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("9"));
        StreamBody::new(futures_util::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"first"))),
            Ok(Frame::data(Bytes::from_static(b"last"))),
            Ok(Frame::trailers(trailers)),
        ]))
    }

    fn how(head_only: bool, version: Version) -> Answer {
        Answer {
            head_only,
            version,
            keep_alive: true,
        }
    }

    async fn written<B>(resp: Response<B>, head_only: bool, version: Version) -> (String, bool)
    where
        B: Body<Data = Bytes> + Unpin,
        BodyError: From<B::Error>,
    {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut out = Vec::new();
        let keep = write_answer(&mut server, &mut out, resp, None, how(head_only, version))
            .await
            .unwrap();
        drop(server);
        (rest(&mut client).await, keep)
    }

    #[tokio::test]
    async fn answers_are_framed_by_length_chunks_or_the_connection() {
        let (text, keep) = written(Response::new(streamed()), false, Version::HTTP_11).await;
        assert!(keep);
        assert!(
            text.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n5\r\nfirst\r\n4\r\nlast\r\n0\r\nx-sum: 9\r\n\r\n"),
            "{text}"
        );

        let (text, keep) = written(Response::new(streamed()), false, Version::HTTP_10).await;
        assert!(
            !keep,
            "an HTTP/1.0 body of unknown length ends with the connection"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nfirstlast"), "{text}");

        // HEAD: the head the GET would have, no body.
        let mut resp = Response::new(ResBody::empty());
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        let (text, keep) = written(resp, true, Version::HTTP_11).await;
        assert!(keep);
        assert!(text.contains("\r\ncontent-length: 42\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");

        // 204 and 304 carry no body and no framing.
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let mut resp = Response::new(ResBody::empty());
            *resp.status_mut() = status;
            let (text, keep) = written(resp, false, Version::HTTP_11).await;
            assert!(keep);
            assert!(!text.contains("content-length"), "{text}");
            assert!(!text.contains("transfer-encoding"), "{text}");
        }

        // A large body goes out whole, its length taken from the body.
        let big = Bytes::from(vec![b'z'; 3 * WRITE_CHUNK]);
        let (text, _) = written(Response::new(ResBody::full(big)), false, Version::HTTP_11).await;
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", 3 * WRITE_CHUNK)),
            "{head}"
        );
        assert_eq!(body.len(), 3 * WRITE_CHUNK);
    }

    /// A handler's `Connection: close` closes the connection after the answer, said once.
    #[tokio::test]
    async fn a_handlers_close_is_kept() {
        let mut resp = Response::new(ResBody::full(Bytes::from_static(b"bye")));
        resp.headers_mut().insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, Close"),
        );
        let (text, keep) = written(resp, false, Version::HTTP_11).await;
        assert!(!keep);
        assert_eq!(text.matches("onnection:").count(), 1, "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");

        let mut resp = Response::new(ResBody::full(Bytes::from_static(b"hi")));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let (text, keep) = written(resp, false, Version::HTTP_11).await;
        assert!(keep, "{text}");
        assert!(!text.contains("onnection:"), "{text}");
    }

    /// Writes `resp` with the fields of the upstream answer `head`.
    async fn written_with(resp: Response<ResBody>, head: &[u8], head_only: bool) -> String {
        written_adding(resp, head, head_only, &[]).await
    }

    /// As `written_with`, the gateway having added `added` to the upstream's fields.
    async fn written_adding(
        resp: Response<ResBody>,
        head: &[u8],
        head_only: bool,
        added: &[(&'static str, &'static str)],
    ) -> String {
        let mut fields = RawFields::of_head(head, head_only).unwrap();
        for (name, value) in added {
            fields.add(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut out = Vec::new();
        let how = how(head_only, Version::HTTP_11);
        write_answer(&mut server, &mut out, resp, Some(fields), how)
            .await
            .unwrap();
        drop(server);
        rest(&mut client).await
    }

    #[tokio::test]
    async fn upstream_fields_go_out_as_sent_less_hop_by_hop_and_replaced_ones() {
        let head = b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Private\r\n\
            X-Private: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 5, 5\r\n\
            X-Request-Id: theirs\r\nSet-Cookie: a=1\r\nX-Lf:  bare \nset-cookie: b=2\r\n\
            Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nTE: gzip\r\n\r\n";
        let mut resp = Response::new(ResBody::full(Bytes::from_static(b"hello")));
        resp.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("ours"));
        let text = written_with(resp, head, false).await;
        let (head_text, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            head_text.matches('\n').count(),
            head_text.matches("\r\n").count()
        );
        let mut lines: Vec<&str> = head_text.lines().collect();
        assert_eq!(lines.remove(0), "HTTP/1.1 200 OK");
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "Date: Thu, 01 Jan 2026 00:00:00 GMT",
                "Server: up",
                "Set-Cookie: a=1",
                "X-Lf: bare",
                "content-length: 5",
                "set-cookie: b=2",
                "x-request-id: ours",
            ],
            "{text}"
        );
        assert_eq!(body, "hello");

        // Fields added beside the upstream's replace theirs too, and come after them.
        let head = b"HTTP/1.1 200 OK\r\nX-Request-Id: theirs\r\nRateLimit: theirs\r\n\
            Content-Length: 2\r\n\r\n";
        let resp = Response::new(ResBody::full(Bytes::from_static(b"ok")));
        let added = [("x-request-id", "ours"), ("ratelimit", "r=1")];
        let text = written_adding(resp, head, false, &added).await;
        assert!(
            text.contains("\r\nx-request-id: ours\r\nratelimit: r=1\r\n"),
            "{text}"
        );
        assert!(!text.contains("theirs"), "{text}");

        // HEAD: the upstream's length is said, no body follows; a date is added when the
        // upstream sent none.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n";
        let text = written_with(Response::new(ResBody::empty()), head, true).await;
        assert!(text.contains("\r\ncontent-length: 42\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_length_field_that_is_not_one_number_is_replaced() {
        let mut resp = Response::new(ResBody::full(Bytes::from_static(b"hello")));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        let (text, _) = written(resp, false, Version::HTTP_11).await;
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        assert!(text.contains("\r\ncontent-length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    }

    #[tokio::test]
    async fn a_body_shorter_or_longer_than_its_length_is_an_error() {
        for declared in ["3", "20"] {
            let mut resp = Response::new(streamed());
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static(declared));
            let (_client, mut server) = tokio::io::duplex(1 << 20);
            let mut out = Vec::new();
            let how = how(false, Version::HTTP_11);
            let result = write_answer(&mut server, &mut out, resp, None, how).await;
            assert!(
                matches!(result, Err(ConnError::LengthMismatch)),
                "{declared}"
            );
        }
    }
}
