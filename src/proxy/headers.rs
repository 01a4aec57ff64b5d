//! Header rewriting, in SPEC section 3's order: hop-by-hop headers (and those named in
//! `Connection`) go first, so a client cannot make the gateway drop a header it injects; then
//! every header the gateway owns is deleted under any spelling an upstream framework may fold
//! into the same name; only then are the real values set.

use std::net::IpAddr;

use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::body::ResBody;
use crate::pool::{RawField, RawFields};
use crate::principal::Principal;

/// RFC 9110 section 7.6.1 plus the legacy names still seen in the wild, besides `Connection`
/// and `TE` (which [`remove_hop_by_hop`] treats on their own). Pre-built names: removing by
/// `&str` would parse and hash each name again on every request.
static HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_GATEHOUSE_ASSERTION: HeaderName = HeaderName::from_static("x-gatehouse-assertion");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers the gateway owns towards the upstream: a client may never set them.
static OWNED: [HeaderName; 8] = [
    HeaderName::from_static("x-user-id"),
    HeaderName::from_static("x-user-email"),
    HeaderName::from_static("x-user-name"),
    HeaderName::from_static("x-user-roles"),
    HeaderName::from_static("x-auth-method"),
    HeaderName::from_static("x-auth-key-id"),
    HeaderName::from_static("x-auth-session-id"),
    HeaderName::from_static("x-gatehouse-assertion"),
];

/// Maps of up to this many fields are searched by a look along their names.
const SCAN_MAX: usize = 8;

/// `map.get(name)`, for the hot path's lookups: most requests carry a handful of fields, and a
/// look along that few names costs less than hashing `name` and probing (~100 instructions a
/// lookup in callgrind); larger maps are hashed as before.
pub fn get<'a>(map: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if map.len() <= SCAN_MAX {
        map.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    } else {
        map.get(name)
    }
}

/// Whether a `Connection` field of `headers` lists `token` (any case).
pub fn connection_lists(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether this request asks for a protocol upgrade (WebSocket) that must be passed through.
pub fn upgrade_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = get(headers, &header::UPGRADE)?;
    connection_lists(headers, b"upgrade").then(|| upgrade.clone())
}

/// Removes hop-by-hop headers and every header named in `Connection`. `TE: trailers` survives
/// because gRPC over HTTP/2 needs it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One look at the names present first: a removal by name costs a hash and a probe
    // whether or not the name is there, and most messages carry none of these (callgrind:
    // eight blind removals were ~7% of a proxied request's instructions).
    let mut connection = false;
    let mut te = false;
    let mut doomed = false;
    for name in headers.keys() {
        match hop_kind(name.as_str().as_bytes()) {
            Hop::No => {}
            Hop::Connection => connection = true,
            Hop::Te => te = true,
            Hop::Listed => doomed = true,
        }
    }
    if connection {
        // `keep-alive` and `close`, nearly every upstream's whole `Connection` value, need no
        // lookup: neither names a header the peer may send besides `Keep-Alive`, which is
        // in HOP_BY_HOP. (Nothing is allocated unless another name is listed.)
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if !token.eq_ignore_ascii_case(b"keep-alive")
                    && !token.eq_ignore_ascii_case(b"close")
                    && let Ok(name) = HeaderName::from_bytes(token)
                {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    if te
        && headers
            .get(header::TE)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if doomed {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

enum Hop {
    No,
    Connection,
    Te,
    /// One of [`HOP_BY_HOP`].
    Listed,
}

/// Which hop-by-hop name `name` is (in any case), by length first: a few instructions for
/// the common names, where comparing each against six `HeaderName`s was ~400 instructions and
/// 3.6 KiB of code per message.
fn hop_kind(name: &[u8]) -> Hop {
    let is = |hop: &str| name.eq_ignore_ascii_case(hop.as_bytes());
    match name.len() {
        2 if is("te") => Hop::Te,
        10 if is("connection") => Hop::Connection,
        10 if is("keep-alive") => Hop::Listed,
        7 if is("upgrade") => Hop::Listed,
        16 if is("proxy-connection") => Hop::Listed,
        17 if is("transfer-encoding") => Hop::Listed,
        18 if is("proxy-authenticate") => Hop::Listed,
        19 if is("proxy-authorization") => Hop::Listed,
        _ => Hop::No,
    }
}

/// The end-to-end fields of an upstream answer read by the gateway's own exchange: all but
/// the hop-by-hop ones and those its `Connection` names, as [`remove_hop_by_hop`] leaves a
/// map.
pub fn end_to_end(fields: &RawFields) -> impl Iterator<Item = RawField<'_>> {
    let names_fields = fields.names_fields();
    fields.iter().filter(move |f| match hop_kind(f.name) {
        Hop::No => !(names_fields && named_in_connection(fields, f.name)),
        Hop::Te => f.value.eq_ignore_ascii_case(b"trailers"),
        Hop::Connection | Hop::Listed => false,
    })
}

fn named_in_connection(fields: &RawFields, name: &[u8]) -> bool {
    fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(b"connection"))
        .flat_map(|f| f.value.split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
}

/// Sets a field of the gateway's on an answer: beside the upstream's fields while they are
/// still bytes (see [`RawFields::add`]), else in the map; either way it replaces the
/// upstream's field of that name.
pub fn set_answer_field(resp: &mut Response<ResBody>, name: HeaderName, value: HeaderValue) {
    if let Some((name, value)) = resp.body_mut().add_field(name, value) {
        resp.headers_mut().insert(name, value);
    }
}

/// Puts the upstream fields an answer still carries as bytes ([`RawFields`]) into its map,
/// for a writer that reads only the map (hyper's: HTTP/2, TLS, connections handed over).
/// Hop-by-hop fields go as in the map path; the fields the gateway set meanwhile
/// (`X-Request-Id`, `RateLimit`, ..., in the map or added to the fields) replace the
/// upstream's of the same name.
pub fn materialize(resp: &mut Response<ResBody>) {
    let Some(fields) = resp.body_mut().take_upstream_fields() else {
        return;
    };
    let mut map = fields.to_map();
    remove_hop_by_hop(&mut map);
    let mut last: Option<HeaderName> = None;
    for (name, value) in std::mem::take(resp.headers_mut()) {
        match name {
            Some(name) => {
                map.insert(name.clone(), value);
                last = Some(name);
            }
            // The further values of the name before.
            None => {
                if let Some(name) = &last {
                    map.append(name.clone(), value);
                }
            }
        }
    }
    for (name, value) in fields.added() {
        map.insert(name.clone(), value.clone());
    }
    *resp.headers_mut() = map;
}

/// True when `name` folds to `canonical` once `_` is read as `-` (names are lower-case already).
fn folds_to(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name
            .bytes()
            .zip(canonical.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// Deletes every owned header under every spelling (`X_User_Id`, `x-user_id`, any case).
pub fn remove_owned(headers: &mut HeaderMap) {
    // Every owned name starts with `x-` or `x_`: most requests carry no such header at all.
    if !headers.keys().any(|k| k.as_str().starts_with('x')) {
        return;
    }
    for name in &OWNED {
        headers.remove(name);
    }
    // Underscore variants are rare; only look for them when some header name has one.
    let variants: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| OWNED.iter().any(|o| folds_to(k.as_str(), o.as_str())))
        .cloned()
        .collect();
    for name in variants {
        headers.remove(name);
    }
}

/// Fields the gateway adds to the upstream request, written after the client's fields, which
/// no longer hold any of these names (identity, `X-Forwarded-*`, `X-Request-Id`, the
/// assertion). Why not inserted into the request's map: an insert hashes the name and probes
/// (~200 instructions each, callgrind), and these only need to be written out
/// ([`crate::pool::Pool::send_bodyless`] writes them after the map; a request that goes
/// through hyper gets them inserted).
pub type Added = Vec<(HeaderName, HeaderValue)>;

/// Adds the identity headers of `principal` (after [`remove_owned`]).
pub fn inject_identity(added: &mut Added, principal: &Principal) {
    added.extend(principal.identity_fields().iter().cloned());
}

/// `ip` as a header value. The gateway renders its peer's address once per connection
/// (formatting an address costs more than the rest of `set_forwarded` together).
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// What the gateway knows about the client's connection.
pub struct ClientConn<'a> {
    /// The peer's address ([`ip_value`]).
    pub ip: &'a HeaderValue,
    /// Whether `ip` is in `trusted_proxies`.
    pub trusted: bool,
    /// `http` or `https`: how the client reached the gateway.
    pub scheme: &'static str,
    /// The host the client addressed (Host header or `:authority`).
    pub host: Option<&'a HeaderValue>,
}

/// Which of the fields [`set_forwarded`] sets the client sent itself.
#[derive(Default)]
struct Sent {
    xff: bool,
    proto: bool,
    host: bool,
    forwarded: bool,
    request_id: bool,
}

impl Sent {
    /// One look along the names (most requests carry none of these), where a removal by name
    /// costs a hash and a probe whether or not the name is there.
    fn of(headers: &HeaderMap) -> Sent {
        let mut sent = Sent::default();
        for name in headers.keys() {
            match name.as_str() {
                "x-forwarded-for" => sent.xff = true,
                "x-forwarded-proto" => sent.proto = true,
                "x-forwarded-host" => sent.host = true,
                "forwarded" => sent.forwarded = true,
                "x-request-id" => sent.request_id = true,
                _ => {}
            }
        }
        sent
    }
}

/// `X-Forwarded-For/Proto/Host`: a trusted proxy's values are kept (XFF extended with the
/// peer); anyone else's are replaced, so a client cannot forge its address. And `X-Request-Id`
/// (the client's when it sent a valid one, see the dispatcher). Replaced fields leave
/// `headers`; the gateway's values go to `added`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    conn: &ClientConn<'_>,
    request_id: &HeaderValue,
    added: &mut Added,
) {
    let sent = Sent::of(headers);
    let xff = if conn.trusted && sent.xff {
        let previous: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if previous.is_empty() {
            Some(conn.ip.clone())
        } else {
            let peer = conn.ip.to_str().unwrap_or("unknown");
            HeaderValue::from_str(&format!("{}, {}", previous.join(", "), peer)).ok()
        }
    } else {
        Some(conn.ip.clone())
    };
    if !conn.trusted && sent.forwarded {
        headers.remove(header::FORWARDED);
    }
    if let Some(v) = xff {
        if sent.xff {
            headers.remove(&X_FORWARDED_FOR);
        }
        added.push((X_FORWARDED_FOR.clone(), v));
    }
    if !(conn.trusted && sent.proto) {
        if sent.proto {
            headers.remove(&X_FORWARDED_PROTO);
        }
        added.push((
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(conn.scheme),
        ));
    }
    if !(conn.trusted && sent.host) {
        if sent.host {
            headers.remove(&X_FORWARDED_HOST);
        }
        if let Some(h) = conn.host {
            added.push((X_FORWARDED_HOST.clone(), h.clone()));
        }
    }
    if sent.request_id {
        headers.remove(&X_REQUEST_ID);
    }
    added.push((X_REQUEST_ID.clone(), request_id.clone()));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The scan answers as the map's own lookup does, on both sides of the scan bound, for
    /// standard and custom names, absent ones, and names with several values (the first).
    #[test]
    fn get_agrees_with_the_maps_lookup() {
        let names = [
            header::HOST,
            header::UPGRADE,
            header::CONTENT_LENGTH,
            X_REQUEST_ID.clone(),
            HeaderName::from_static("x-a"),
            HeaderName::from_static("x-b"),
        ];
        for n in 0..=20 {
            let mut map = HeaderMap::new();
            for i in 0..n {
                let name = names[i % names.len()].clone();
                map.append(name, HeaderValue::from(i));
            }
            for name in names.iter().chain([&header::COOKIE]) {
                assert_eq!(get(&map, name), map.get(name), "{n} fields, {name}");
            }
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, x-user-id"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        let mut h = map(&[("te", "trailers")]);
        remove_hop_by_hop(&mut h);
        assert!(h.contains_key("te"));
        // Hop-by-hop names without a `Connection` header, and nothing to remove at all.
        let mut h = map(&[
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eDp5"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = map(&[("accept", "*/*"), ("x-trace", "1")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn every_listed_name_alone_is_removed() {
        for name in &HOP_BY_HOP {
            let mut h = map(&[(name.as_str(), "1"), ("accept", "*/*")]);
            remove_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        // Same lengths, other names: kept.
        let mut h = map(&[("tx", "1"), ("connectiom", "1"), ("upgradz", "1")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
    }

    #[test]
    fn owned_headers_removed_under_every_spelling() {
        let mut h = map(&[
            ("X-User-Id", "evil"),
            ("X_User_Id", "evil"),
            ("x-user_roles", "admin"),
            ("X_AUTH_METHOD", "api_key"),
            ("x_request_id", "kept"),
        ]);
        remove_owned(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut added = Added::new();
        inject_identity(&mut added, &Principal::anonymous());
        let h = sent(h, added);
        assert_eq!(h["x-auth-method"], "anonymous");
        assert!(!h.contains_key("x-user-id"));
    }

    /// The fields as they go upstream: the map's, then the added ones (appended, so a name
    /// left in the map that was also added shows as two values).
    fn sent(mut h: HeaderMap, added: Added) -> HeaderMap {
        for (name, value) in added {
            h.append(name, value);
        }
        for name in h.keys() {
            assert_eq!(h.get_all(name).iter().count(), 1, "{name} twice: {h:?}");
        }
        h
    }

    #[test]
    fn forwarded_headers() {
        let host = HeaderValue::from_static("app.example.com");
        let ip = ip_value("10.0.0.7".parse().unwrap());
        let conn = |trusted| ClientConn {
            ip: &ip,
            trusted,
            scheme: "http",
            host: Some(&host),
        };
        let id = HeaderValue::from_static("req-1");
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "forged"),
            ("forwarded", "for=1.2.3.4"),
            ("x-request-id", "theirs"),
        ]);
        let mut added = Added::new();
        set_forwarded(&mut h, &conn(false), &id, &mut added);
        let h = sent(h, added);
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["x-request-id"], "req-1");
        assert!(!h.contains_key("forwarded"));

        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let mut added = Added::new();
        set_forwarded(&mut h, &conn(true), &id, &mut added);
        let h = sent(h, added);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["forwarded"], "for=1.2.3.4");

        // Nothing sent: every field is the gateway's.
        let mut added = Added::new();
        set_forwarded(&mut HeaderMap::new(), &conn(true), &id, &mut added);
        let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-request-id"
            ]
        );
    }

    #[test]
    fn upgrade_detection() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_requested(&h).unwrap(), "websocket");
        let h = map(&[("upgrade", "websocket")]);
        assert!(upgrade_requested(&h).is_none());
    }
}
