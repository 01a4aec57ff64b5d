//! The gateway's own HTTP requests to identity providers: JWKS documents of
//! `tokens.trusted_issuers` (and, with OAuth sign-in, discovery and token endpoints).
//!
//! Owns: turning a URL into a request on a pooled connection ([`crate::pool`], the same
//! connections and TLS roots as upstream targets), a deadline on the whole exchange and a cap
//! on the answer's size, so a slow or hostile IdP can neither hold a task nor fill memory.
//! Must not touch: what the documents mean (callers parse them), request-path state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Limited};

use crate::body::ReqBody;
use crate::pool::{Endpoint, Pool, PoolError, Transport, client_tls};

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// Not an absolute `http` or `https` URL.
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// No connection, or the exchange failed on it.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// No complete answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer that is not 2xx.
    #[error("HTTP status {0}")]
    Status(StatusCode),
    /// The answer's body exceeds the cap.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The body could not be read.
    #[error("reading the answer: {0}")]
    Body(String),
}

/// A complete 2xx answer.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Pooled HTTP/1.1 client for the gateway's own calls, one pool per scheme and authority.
pub struct Outbound {
    pools: Mutex<HashMap<(bool, String), Arc<Pool>>>,
    /// Deadline for connect, request and the whole body.
    timeout: Duration,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

const USER_AGENT: &str = concat!("gatehouse/", env!("CARGO_PKG_VERSION"));

impl Outbound {
    pub fn new(timeout: Duration) -> Outbound {
        Outbound {
            pools: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn pool(&self, https: bool, host: &str, port: u16) -> Arc<Pool> {
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut pools = match self.pools.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        pools
            .entry((https, authority.clone()))
            .or_insert_with(|| {
                let transport = if https {
                    Transport::tls(client_tls(&std::iter::empty()), host)
                } else {
                    Transport::Plain
                };
                Pool::new(Endpoint {
                    authority,
                    transport,
                    connect_timeout: self.timeout,
                })
            })
            .clone()
    }

    /// `GET url` with `Accept: application/json`; the body is read whole, at most
    /// `max_bytes`. An answer that is not 2xx is [`OutboundError::Status`].
    pub async fn get_json(&self, url: &str, max_bytes: usize) -> Result<Fetched, OutboundError> {
        let fetched = self
            .send(Method::GET, url, HeaderMap::new(), None, max_bytes)
            .await?;
        if !fetched.status.is_success() {
            return Err(OutboundError::Status(fetched.status));
        }
        Ok(fetched)
    }

    /// `method url` with `Accept: application/json`, the caller's `headers` and, when given,
    /// `body` (its `Content-Type` is the caller's to set); the answer's body is read whole,
    /// at most `max_bytes`, whatever its status (an OAuth token endpoint explains a refusal
    /// in a 400 body). The whole exchange has the deadline.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
        max_bytes: usize,
    ) -> Result<Fetched, OutboundError> {
        let invalid = || OutboundError::InvalidUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(invalid)?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().ok_or_else(invalid)?.as_str();
        let host_header = HeaderValue::from_str(authority).map_err(|_| invalid())?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host_header)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, USER_AGENT);
        if let Some(body) = &body {
            req = req.header(header::CONTENT_LENGTH, body.len());
        }
        let mut req = req
            .body(body.map_or_else(ReqBody::empty, ReqBody::full))
            .map_err(|_| invalid())?;
        req.headers_mut().extend(headers);
        let pool = self.pool(https, host, port);
        let exchange = async {
            let resp = pool.send(req).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        OutboundError::TooLarge(max_bytes)
                    } else {
                        OutboundError::Body(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| OutboundError::Timeout(self.timeout))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// One-shot HTTP server answering every connection with `answer`; returns its URL.
    async fn serve(answer: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        format!("http://{addr}/jwks.json")
    }

    #[tokio::test]
    async fn reads_a_json_answer() {
        let url = serve(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"keys\":[]}",
        )
        .await;
        let got = Outbound::new(Duration::from_secs(2))
            .get_json(&url, 1024)
            .await
            .unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(&got.body[..], b"{\"keys\":[]}");
    }

    #[tokio::test]
    async fn refuses_errors_large_answers_and_bad_urls() {
        let out = Outbound::new(Duration::from_secs(2));
        let url = serve(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(matches!(
            out.get_json(&url, 1024).await,
            Err(OutboundError::Status(StatusCode::SERVICE_UNAVAILABLE))
        ));
        let url = serve(
            "HTTP/1.1 200 OK\r\ncontent-length: 40\r\nconnection: close\r\n\r\n0123456789012345678901234567890123456789",
        )
        .await;
        assert!(matches!(
            out.get_json(&url, 16).await,
            Err(OutboundError::TooLarge(16))
        ));
        for bad in ["ftp://x/y", "/relative", "http://"] {
            assert!(
                matches!(
                    out.get_json(bad, 16).await,
                    Err(OutboundError::InvalidUrl(_))
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn posts_a_body_and_reads_a_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("code=abc") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
            let answer = "HTTP/1.1 400 Bad Request\r\ncontent-length: 25\r\nconnection: close\r\n\r\n{\"error\":\"invalid_grant\"}";
            conn.write_all(answer.as_bytes()).await.unwrap();
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let got = Outbound::new(Duration::from_secs(2))
            .send(
                Method::POST,
                &format!("http://{addr}/token"),
                headers,
                Some(Bytes::from_static(
                    b"grant_type=authorization_code&code=abc",
                )),
                1024,
            )
            .await
            .unwrap();
        assert_eq!(got.status, StatusCode::BAD_REQUEST);
        assert_eq!(&got.body[..], b"{\"error\":\"invalid_grant\"}");
        let request = rx.await.unwrap();
        assert!(request.starts_with("POST /token HTTP/1.1\r\n"), "{request}");
        assert!(
            request.to_ascii_lowercase().contains("content-length: 38"),
            "{request}"
        );
        assert!(
            request.contains("application/x-www-form-urlencoded"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let out = Outbound::new(Duration::from_millis(200));
        let got = out.get_json(&format!("http://{addr}/"), 16).await;
        assert!(matches!(got, Err(OutboundError::Timeout(_))), "{got:?}");
    }
}
