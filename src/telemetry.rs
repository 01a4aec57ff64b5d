//! Logging: tracing setup (human or JSON), request ids and the access log line.
//!
//! Logs go to stderr through a non-blocking writer so a slow terminal or pipe never stalls a
//! request. Credential-bearing headers are never logged: the access line names only method,
//! path, status, route, timing and ids.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::time::Duration;

use http::HeaderValue;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

mod sink;

/// Flushes the log writer when dropped; drop it last.
pub type LogGuard = sink::Guard<std::io::Stderr>;

/// Installs the global subscriber. `RUST_LOG` overrides the configured level.
pub fn init(cfg: &LogConfig) -> Option<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = sink::Sink::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let installed = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
    installed.ok().map(|()| guard)
}

/// Validates a client-sent `X-Request-Id`: 1-128 of `[A-Za-z0-9._-]`.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A fresh request id: 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    let n: u128 = rand::random();
    let mut buf = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// What the access log records about one request.
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub code: Option<&'static str>,
}

/// One line per request at `info` on target `gatehouse::access`.
pub fn access(rec: &AccessRecord<'_>) {
    tracing::info!(
        target: "gatehouse::access",
        request_id = rec.request_id,
        client_ip = %rec.client_ip,
        method = %rec.method,
        path = rec.path,
        route = rec.route,
        status = rec.status,
        duration_us = rec.elapsed.as_micros() as u64,
        code = rec.code.unwrap_or(""),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap_or(HeaderValue::from_static(""))
        ));
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(valid_request_id(&a));
        assert_ne!(a, b);
    }
}
