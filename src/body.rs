//! Body types of the request path: what the gateway sends upstream and back to the client.
//!
//! Bodies are streamed frame by frame and never collected: `ReqBody` counts bytes against a
//! route's `max_body` while they flow, and can be handed back untouched when an upstream
//! connection failed before the first frame was read, which is what makes the one failover
//! retry possible for requests with a body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

/// Errors raised by our body wrappers.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// A response body read by the gateway's own HTTP/1.1 exchange (`pool::h1`).
    #[error(transparent)]
    Upstream(#[from] crate::pool::H1Error),
}

/// The response body sent to the client.
#[derive(Debug)]
pub enum ResBody {
    Full(Full<Bytes>),
    Upstream(crate::pool::PooledBody),
}

impl ResBody {
    pub fn full(bytes: Bytes) -> Self {
        ResBody::Full(Full::new(bytes))
    }

    pub fn empty() -> Self {
        ResBody::Full(Full::new(Bytes::new()))
    }

    /// An upstream answer's header fields that are not in the response's map yet (see
    /// [`crate::pool::RawFields`]): a writer of the response takes them once.
    pub fn take_upstream_fields(&mut self) -> Option<crate::pool::RawFields> {
        match self {
            ResBody::Upstream(b) => b.take_fields(),
            ResBody::Full(_) => None,
        }
    }

    /// Sets a gateway field beside an upstream answer's fields that are still bytes; gives it
    /// back otherwise, for the response's map ([`crate::pool::PooledBody::add_field`]).
    pub fn add_field(
        &mut self,
        name: http::HeaderName,
        value: http::HeaderValue,
    ) -> Option<(http::HeaderName, http::HeaderValue)> {
        match self {
            ResBody::Upstream(b) => b.add_field(name, value),
            ResBody::Full(_) => Some((name, value)),
        }
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResBody::Full(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ResBody::Upstream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResBody::Full(b) => b.is_end_stream(),
            ResBody::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Full(b) => b.size_hint(),
            ResBody::Upstream(b) => b.size_hint(),
        }
    }
}

/// A client's request body: hyper's for the connections hyper serves, nothing for the
/// body-less requests the gateway's own HTTP/1.1 loop reads (`server::h1`), which hands a
/// connection to hyper when a request carries a body.
#[derive(Debug)]
pub enum InBody {
    Empty,
    Hyper(Incoming),
}

impl Body for InBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            InBody::Empty => Poll::Ready(None),
            InBody::Hyper(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InBody::Empty => true,
            InBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            InBody::Empty => SizeHint::with_exact(0),
            InBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// Where a not-yet-read client body waits, so a failed connect can give it back.
pub type BodySlot = Arc<Mutex<Option<InBody>>>;

/// The request body sent upstream: the client's body, taken from its slot on the first poll,
/// counted against an optional limit.
#[derive(Debug)]
pub struct ReqBody {
    /// A whole body made by the gateway itself (its own outbound requests), sent as one frame.
    full: Option<Bytes>,
    slot: Option<BodySlot>,
    inner: Option<InBody>,
    limit: Option<u64>,
    seen: u64,
    end: bool,
}

impl ReqBody {
    /// An empty body (requests without one, or a retry of a body-less request).
    pub fn empty() -> Self {
        ReqBody {
            full: None,
            slot: None,
            inner: None,
            limit: None,
            seen: 0,
            end: true,
        }
    }

    /// A body the gateway made itself (a form it posts to an identity provider).
    pub fn full(data: Bytes) -> Self {
        let end = data.is_empty();
        ReqBody {
            full: Some(data).filter(|d| !d.is_empty()),
            slot: None,
            inner: None,
            limit: None,
            seen: 0,
            end,
        }
    }

    /// Wraps the client's (non-empty) body; empty ones go upstream as [`ReqBody::empty`].
    pub fn new(slot: BodySlot, limit: Option<u64>) -> Self {
        ReqBody {
            full: None,
            slot: Some(slot),
            inner: None,
            limit,
            seen: 0,
            end: false,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(data) = this.full.take() {
            this.end = true;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.inner.is_none() {
            let Some(slot) = this.slot.take() else {
                return Poll::Ready(None);
            };
            let taken = match slot.lock() {
                Ok(mut guard) => guard.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            match taken {
                Some(body) => this.inner = Some(body),
                None => return Poll::Ready(None),
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(limit) = this.limit
                        && this.seen > limit
                    {
                        this.end = true;
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Hyper(e)))),
            Poll::Ready(None) => {
                this.end = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(data) = &self.full {
            return SizeHint::with_exact(data.len() as u64);
        }
        match &self.inner {
            Some(b) => b.size_hint(),
            None if self.end => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

/// True when `err` (or anything in its source chain) is a body-limit violation.
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(BodyError::TooLarge { limit }) = e.downcast_ref::<BodyError>() {
            return Some(*limit);
        }
        cur = e.source();
    }
    None
}
