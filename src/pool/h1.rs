//! HTTP/1.1 exchanges for body-less requests, without hyper's client connection.
//!
//! Why: callgrind put hyper's client connection at ~13k of the ~40k user-space instructions
//! of a proxied request (the dispatch channel and oneshot, the hop to the connection's own
//! task, the response head parsed into a HeaderMap and the body handed over a channel), while
//! a body-less request, the bulk of a gateway's traffic, needs none of that: its head goes out
//! in one write and the answer is read back by the task that waits for it. Here the request's
//! task encodes the head (written with the other heads of the event-loop turn, see
//! [`super::batch`]), parses the answer with httparse (hyper's own parser) and the response
//! body is read from the socket by the body's own poll. Requests with a body (the answer may come while the body is still being sent) and
//! upgrades stay on hyper's connection (`super::Pool`).
//!
//! Framing follows RFC 9112 section 6.3: no body for `HEAD`, 1xx, 204 and 304; chunked when
//! `Transfer-Encoding` ends in `chunked`; `Content-Length` (repeated only with one value);
//! otherwise the body runs to the connection's close. A connection is reused only after a
//! body that ended by its own framing, on an HTTP/1.1 answer without `Connection: close` (or
//! an HTTP/1.0 one with `keep-alive`), and never when both framings were sent.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::{Instant, Sleep};
use tokio_util::either::Either;

use super::batch::Wire;

/// Largest response head accepted (hyper's client allows ~400 KiB of buffer; heads near this
/// size are an upstream bug, not a use).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head (hyper's client: 100).
const MAX_HEADERS: usize = 100;
/// Header fields a response map ([`RawFields::to_map`]) has room for at least: the gateway
/// adds its own to the answer (`RateLimit`, `X-Request-Id`), and hyper's server connection
/// keeps the map it sent as its next request's map, into which a request with a body gets
/// the gateway's request fields; a map sized to the upstream's fields alone grew (rehashing
/// every entry) on the way.
const RESPONSE_FIELDS: usize = 24;
/// First read size of a connection; doubled while reads fill the buffer (large bodies), up to
/// [`MAX_READ`], and back to this when the connection goes idle.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;
/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The connection was closed or reset before a byte of the answer came: on a reused
    /// connection, the upstream most likely closed it while idle.
    #[error("upstream closed the connection without answering")]
    Closed,
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("invalid response head from upstream: {0}")]
    Head(&'static str),
    /// A request target with a space or control byte, which would split the request line.
    #[error("request target is not valid on the wire")]
    BadTarget,
    #[error("upstream response head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("upstream switched protocols on a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("invalid Content-Length from upstream")]
    BadLength,
    #[error("invalid chunked body from upstream")]
    BadChunk,
    #[error("upstream closed the connection before the end of the body")]
    Truncated,
    /// The deadline passed before the answer's head came.
    #[error("upstream did not answer in time")]
    TimedOut,
}

/// A connection's byte stream: TCP, or TLS over TCP for `https` targets.
pub type Stream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// One keep-alive connection to an upstream, between exchanges or inside one.
pub struct Conn {
    io: Io,
    /// Bytes read and not yet consumed: the rest of a response, never the next one's start
    /// (a connection with leftovers after its body's end is not reused).
    buf: BytesMut,
    read_size: usize,
    /// The answer's deadline, one timer for the connection's life. Why: a timer made and
    /// dropped per request (`tokio::time::timeout`) was inserted into and removed from the
    /// runtime's timer wheel each time (~700 instructions per proxied request, callgrind);
    /// moving a registered timer's deadline later, as each next request does, only updates
    /// it, and the wheel re-files it when the old deadline comes. Left armed between
    /// requests, it wakes the last request's task once at that deadline if no request
    /// moved it (a spurious poll of that client connection, or nothing if it is gone).
    timer: Option<Pin<Box<Sleep>>>,
}

enum Io {
    /// Heads go out in the turn's burst ([`super::batch`]) through the shared write side.
    Tcp(OwnedReadHalf, Arc<Wire>),
    /// Written by the request's task; the encoded head is kept for its capacity.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, Vec<u8>),
}

impl Io {
    fn reader(&mut self) -> Pin<&mut (dyn AsyncRead + Send + Unpin)> {
        match self {
            Io::Tcp(read, _) => Pin::new(read),
            Io::Tls(tls, _) => Pin::new(&mut **tls),
        }
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A request's header fields: the map, then fields added after it (which the map does not
/// hold; see `proxy::headers::Added`).
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    pub headers: &'a HeaderMap,
    pub added: &'a [(HeaderName, HeaderValue)],
}

/// A parsed response head and what it says about the body and the connection.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub fields: RawFields,
    framing: Option<Framing>,
    keep_alive: bool,
}

/// A response head's header fields as the upstream sent them, after httparse checked them:
/// names are tokens, values hold no CR, LF or other control byte but HTAB.
///
/// Why not a `HeaderMap`: the proxy path writes an answer's fields straight back to an
/// HTTP/1.1 client (the server's own loop), and a map built and dropped per answer
/// (each name parsed, hashed and inserted) was ~2k of a proxied request's ~25.6k
/// instructions (callgrind). Writers that need a map (hyper's, for HTTP/2, TLS and bodies;
/// the gateway's own outbound calls) build one with [`RawFields::to_map`].
#[derive(Debug, Clone)]
pub struct RawFields {
    /// The head from its first field to its end (the empty line included).
    block: Bytes,
    /// What `Content-Length` declares, when it is the body's length (no transfer coding).
    length: Option<u64>,
    /// Whether a `Connection` field names other fields (a token besides `close` and
    /// `keep-alive`).
    names_fields: bool,
    /// Fields the gateway sets on the answer (`RateLimit`, `X-Request-Id`, ...), which replace
    /// the upstream's of the same name: kept here rather than inserted into the response's
    /// map, which for these few fields cost an allocation, a hash and a probe each.
    added: Vec<(HeaderName, HeaderValue)>,
}

impl RawFields {
    /// The fields in order.
    pub fn iter(&self) -> RawIter<'_> {
        RawIter { rest: &self.block }
    }

    /// The bytes the fields' lines ([`RawField::line`]) are slices of.
    pub fn block(&self) -> &[u8] {
        &self.block
    }

    pub fn length(&self) -> Option<u64> {
        self.length
    }

    pub fn names_fields(&self) -> bool {
        self.names_fields
    }

    /// The gateway's fields ([`RawFields::add`]).
    pub fn added(&self) -> &[(HeaderName, HeaderValue)] {
        &self.added
    }

    /// Sets a gateway field (replacing one set before under the name).
    pub fn add(&mut self, name: HeaderName, value: HeaderValue) {
        self.added.retain(|(n, _)| *n != name);
        self.added.push((name, value));
    }

    /// Whether the gateway set a field named `name` (any case).
    pub fn adds(&self, name: &[u8]) -> bool {
        // (`eq_ignore_ascii_case` compares the lengths first.)
        self.added
            .iter()
            .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
    }

    /// All the upstream's fields in a map (values share the head's bytes); not the added ones.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(RESPONSE_FIELDS);
        for field in self.iter() {
            // httparse admitted both, and what it admits both types admit.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(field.name),
                HeaderValue::from_maybe_shared(self.block.slice_ref(field.value)),
            ) {
                map.append(name, value);
            }
        }
        map
    }
}

#[cfg(test)]
impl RawFields {
    /// The fields of a whole response head, parsed as an upstream's are.
    pub fn of_head(head: &[u8], head_request: bool) -> Option<RawFields> {
        match parse(&mut BytesMut::from(head), head_request) {
            Ok(Parsed::Head(head)) => Some(head.fields),
            _ => None,
        }
    }
}

/// One field of a [`RawFields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawField<'a> {
    pub name: &'a [u8],
    /// Without the whitespace around it.
    pub value: &'a [u8],
    /// The whole line as it came, its line end included (CRLF, or a bare LF).
    pub line: &'a [u8],
}

/// The fields of a [`RawFields`], one line at a time.
pub struct RawIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RawIter<'a> {
    type Item = RawField<'a>;

    fn next(&mut self) -> Option<RawField<'a>> {
        loop {
            // httparse ends lines with CRLF or a bare LF; the first empty one ends the head.
            let end = memchr::memchr(b'\n', self.rest).map_or(self.rest.len(), |i| i + 1);
            let (line, rest) = self.rest.split_at(end);
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.is_empty() {
                self.rest = &[];
                return None;
            }
            self.rest = rest;
            if let Some(colon) = text.iter().position(|&b| b == b':') {
                return Some(RawField {
                    name: &text[..colon],
                    value: text[colon + 1..].trim_ascii(),
                    line,
                });
            }
        }
    }
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        let io = match io {
            Either::Left(tcp) => {
                let (read, write) = tcp.into_split();
                Io::Tcp(read, Wire::new(write))
            }
            Either::Right(tls) => Io::Tls(tls, Vec::new()),
        };
        Conn {
            io,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            timer: None,
        }
    }

    /// Whether an idle connection can take a request: nothing arrived on it meanwhile (an
    /// upstream's close, or bytes it had no reason to send). For TCP this is a look at the
    /// readiness the event loop already recorded, not a system call.
    pub fn idle_and_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        self.io.reader().poll_read(&mut cx, &mut probe).is_pending()
    }

    /// Gets the connection ready to wait in the pool: a buffer grown by a large body is let go.
    pub fn park(&mut self) {
        if self.read_size > FIRST_READ {
            self.buf = BytesMut::new();
            self.read_size = FIRST_READ;
        }
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            self.io.reader(),
            cx,
            &mut self.buf
        ))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Sends a body-less request and reads the answer's head, failing with
    /// [`H1Error::TimedOut`] if it has not come by `deadline`. `target` is the origin-form
    /// path and query; `fields` go out as given (the caller has set `Host`).
    pub async fn exchange(
        &mut self,
        method: &Method,
        target: &str,
        fields: Fields<'_>,
        deadline: Option<Instant>,
    ) -> Result<Head, H1Error> {
        let Some(deadline) = deadline else {
            return self.send_and_read(method, target, fields).await;
        };
        let mut timer = match self.timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let result = {
            let mut exchange = std::pin::pin!(self.send_and_read(method, target, fields));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                    return Poll::Ready(result);
                }
                timer.as_mut().poll(cx).map(|()| Err(H1Error::TimedOut))
            })
            .await
        };
        self.timer = Some(timer);
        result
    }

    async fn send_and_read(
        &mut self,
        method: &Method,
        target: &str,
        fields: Fields<'_>,
    ) -> Result<Head, H1Error> {
        // The target is a plain string here (the proxy path's comes from a URI hyper parsed);
        // a space or control byte would let it split the request line, so it is checked.
        if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(H1Error::BadTarget);
        }
        match &mut self.io {
            Io::Tcp(_, wire) => {
                let leader = wire.queue(|out| encode(out, method, target, fields));
                if let Some(leader) = leader {
                    // The burst leaves once the event loop has polled every task it had
                    // ready, so it carries the heads of all of them (written at once instead,
                    // a same-core upstream was woken 0.54 times per request, 0.38 clustered).
                    tokio::task::yield_now().await;
                    leader.flush();
                }
            }
            Io::Tls(tls, head) => {
                encode(head, method, target, fields);
                // Deferred like a burst, though written by this task alone: TLS writes go
                // through the session state this task owns.
                tokio::task::yield_now().await;
                let sent = async {
                    tls.write_all(head).await?;
                    tls.flush().await
                };
                if let Err(e) = sent.await {
                    return Err(closed_or(e));
                }
            }
        }
        let head_request = method == Method::HEAD;
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                match parse(&mut self.buf, head_request)? {
                    Parsed::Head(head) => return Ok(head),
                    Parsed::Interim => continue,
                    Parsed::Partial if self.buf.len() >= MAX_HEAD => {
                        return Err(H1Error::HeadTooLarge);
                    }
                    Parsed::Partial => {}
                }
            }
            let filled = std::future::poll_fn(|cx| {
                if let Io::Tcp(_, wire) = &self.io
                    && wire.handed_back(cx)
                {
                    return Poll::Ready(None);
                }
                self.poll_fill(cx).map(Some)
            })
            .await;
            let Some(filled) = filled else {
                if let Io::Tcp(_, wire) = &self.io {
                    wire.finish().await.map_err(closed_or)?;
                }
                continue;
            };
            match filled {
                Ok(0) if !received => return Err(H1Error::Closed),
                Ok(0) => return Err(H1Error::Head("connection closed inside the head")),
                Ok(_) => {}
                Err(e) if !received => return Err(closed_or(e)),
                Err(e) => return Err(H1Error::Io(e)),
            }
        }
    }
}

/// A reset or broken pipe before any answer is the idle-close race, like an orderly close.
fn closed_or(e: io::Error) -> H1Error {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => H1Error::Closed,
        _ => H1Error::Io(e),
    }
}

/// The request head in HTTP/1.1 wire form. Names and values come from `http` types, which
/// admit no CR, LF or NUL, and the target was checked: nothing can be injected.
fn encode(out: &mut Vec<u8>, method: &Method, target: &str, fields: Fields<'_>) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let added = fields.added.iter().map(|(name, value)| (name, value));
    for (name, value) in fields.headers.iter().chain(added) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

enum Parsed {
    Head(Head),
    /// A 1xx answer other than 101, consumed: the real one follows.
    Interim,
    Partial,
}

/// What the framing and connection headers of a head say, gathered while parsing.
#[derive(Default)]
struct Meta {
    length: Option<u64>,
    bad_length: bool,
    /// `Some(true)` when the last transfer coding is `chunked`.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    /// A `Connection` token other than `close` and `keep-alive`: a field name.
    names_fields: bool,
}

impl Meta {
    fn note(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"content-length") {
            // `5, 5` and repeated fields are one length if they agree (RFC 9110 8.6).
            for part in value.split(|&b| b == b',') {
                match parse_length(part.trim_ascii()) {
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => self.bad_length = true,
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if let Some(last) = value.rsplit(|&b| b == b',').next() {
                self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty() {
                    self.names_fields = true;
                }
            }
        }
    }
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Parses one response head at the start of `buf`, consuming it when complete.
fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, H1Error> {
    let mut meta = Meta::default();
    let (len, code, minor, first_field) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Head("more than 100 header fields"));
            }
            Err(_) => return Err(H1Error::Head("malformed")),
        };
        for h in resp.headers.iter() {
            meta.note(h.name.as_bytes(), h.value);
        }
        // The field section starts at the first name (the status line before it is done).
        let first_field = resp
            .headers
            .first()
            .map_or(len, |h| h.name.as_ptr() as usize - buf.as_ptr() as usize);
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            first_field,
        )
    };
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Head("invalid status code"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(H1Error::UnaskedUpgrade);
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    if meta.bad_length {
        return Err(H1Error::BadLength);
    }
    let head = buf.split_to(len).freeze();
    let fields = RawFields {
        block: head.slice(first_field..),
        // With a transfer coding as well, the length is not the body's (see `both` below).
        length: meta.length.filter(|_| meta.chunked.is_none()),
        names_fields: meta.names_fields,
        added: Vec::new(),
    };
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, meta.chunked, meta.length) {
        (true, _, _) => None,
        (false, Some(true), _) => Some(Framing::Chunked),
        (false, Some(false), _) => Some(Framing::Close),
        (false, None, Some(0)) => None,
        (false, None, Some(n)) => Some(Framing::Length(n)),
        (false, None, None) => Some(Framing::Close),
    };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Both framings at once is how request smuggling starts: read this one answer by its
    // transfer coding (RFC 9112 6.3) and do not reuse the connection.
    let both = meta.chunked.is_some() && meta.length.is_some();
    let keep_alive = !both
        && !meta.close
        && (version == Version::HTTP_11 || meta.keep_alive)
        && framing != Some(Framing::Close);
    Ok(Parsed::Head(Head {
        status,
        version,
        fields,
        framing,
        keep_alive,
    }))
}

/// Where a response body's decoding stands.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Bytes left of a chunk's data.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer fields (dropped) up to the empty line.
    Trailers,
    UntilClose,
    Done,
}

/// A response body read straight from its connection. The connection is handed back by
/// [`Body::reusable`] once the body has ended by its own framing.
pub struct Body {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Body")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Body {
    pub fn new(conn: Conn, head: &Head) -> Body {
        let state = match head.framing {
            None => State::Done,
            Some(Framing::Length(n)) => State::Length(n),
            Some(Framing::Chunked) => State::ChunkSize,
            Some(Framing::Close) => State::UntilClose,
        };
        Body {
            conn: Some(conn),
            state,
            keep_alive: head.keep_alive,
        }
    }

    /// The connection, once the body has ended cleanly on a connection that may be reused.
    pub fn reusable(&mut self) -> Option<Conn> {
        if !matches!(self.state, State::Done) || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// Ends the body with `e`; the connection, in an unknown state, is closed.
    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            if matches!(this.state, State::Done) {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            // Decode what is buffered; fall through to read more only when it is not enough.
            match this.state {
                State::Length(left) | State::ChunkData(left) if !buf.is_empty() => {
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    this.state = match this.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkSize if !buf.is_empty() => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        this.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {}
                    _ => return this.fail(H1Error::BadChunk),
                },
                State::ChunkEnd if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return this.fail(H1Error::BadChunk);
                    }
                    buf.advance(2);
                    this.state = State::ChunkSize;
                    continue;
                }
                State::Trailers if buf.starts_with(b"\r\n") => {
                    buf.advance(2);
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                State::Trailers if !buf.is_empty() => {
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            buf.advance(used);
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {}
                        _ => return this.fail(H1Error::BadChunk),
                    }
                }
                _ => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Truncated),
                Ok(_) => {}
                Err(e) => return this.fail(H1Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
