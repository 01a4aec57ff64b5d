//! The session cookie and the CSRF check of cookie-authenticated requests (SPEC section 3).
//!
//! Names: `gh_session` / `gh_csrf` (configurable session name) get the `__Host-` prefix when
//! `cookies.secure` is on, which browsers accept only for `Secure; Path=/` cookies without a
//! `Domain`, so a sibling subdomain cannot plant one. With `cookies.domain` set (a cookie
//! shared by subdomains) `__Host-` is impossible and `__Secure-` is used instead.

use http::header::{self, HeaderMap, HeaderValue};

use crate::config::{CookieConfig, SameSite};

/// The CSRF cookie's base name (SPEC section 3).
pub const CSRF_COOKIE: &str = "gh_csrf";
/// The header that must echo the CSRF cookie.
pub static X_CSRF_TOKEN: http::HeaderName = http::HeaderName::from_static("x-csrf-token");

fn prefixed(cfg: &CookieConfig, base: &str) -> String {
    match (cfg.secure, cfg.domain.is_some()) {
        (true, false) => format!("__Host-{base}"),
        (true, true) => format!("__Secure-{base}"),
        (false, _) => base.to_owned(),
    }
}

/// The session cookie's name as browsers send it.
pub fn session_name(cfg: &CookieConfig) -> String {
    prefixed(cfg, &cfg.name)
}

/// The CSRF cookie's name as browsers send it.
pub fn csrf_name(cfg: &CookieConfig) -> String {
    prefixed(cfg, CSRF_COOKIE)
}

/// The value of cookie `name` in the request's `Cookie` header(s) (HTTP/2 may send several).
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .filter(|v| !v.is_empty())
}

/// Removes the named cookies from the `Cookie` header(s), keeping the others (credentials are
/// not forwarded upstream unless a route asks for it).
pub fn strip(headers: &mut HeaderMap, names: &[&str]) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty()
                && !pair
                    .split_once('=')
                    .is_some_and(|(k, _)| names.contains(&k.trim()))
        })
        .map(str::to_owned)
        .collect();
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

fn attributes(cfg: &CookieConfig, max_age: u64, http_only: bool) -> String {
    let same_site = match cfg.same_site {
        SameSite::Strict => "Strict",
        SameSite::Lax => "Lax",
        SameSite::None => "None",
    };
    let mut out = format!("; Path=/; Max-Age={max_age}; SameSite={same_site}");
    if let Some(domain) = &cfg.domain {
        out.push_str("; Domain=");
        out.push_str(domain);
    }
    if cfg.secure {
        out.push_str("; Secure");
    }
    if http_only {
        out.push_str("; HttpOnly");
    }
    out
}

/// `Set-Cookie` for the session cookie (HttpOnly).
pub fn set_session(cfg: &CookieConfig, value: &str, max_age: u64) -> Option<HeaderValue> {
    let text = format!(
        "{}={value}{}",
        session_name(cfg),
        attributes(cfg, max_age, true)
    );
    HeaderValue::from_str(&text).ok()
}

/// `Set-Cookie` for the CSRF cookie (readable by scripts, so they can echo it).
pub fn set_csrf(cfg: &CookieConfig, value: &str, max_age: u64) -> Option<HeaderValue> {
    let text = format!(
        "{}={value}{}",
        csrf_name(cfg),
        attributes(cfg, max_age, false)
    );
    HeaderValue::from_str(&text).ok()
}

/// `Set-Cookie` values that delete both cookies (logout).
pub fn clear(cfg: &CookieConfig) -> [Option<HeaderValue>; 2] {
    [set_session(cfg, "", 0), set_csrf(cfg, "", 0)]
}

/// `scheme://host[:port]`, lowercased, default ports dropped, for comparing origins.
pub fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = origin.split_once("://")?;
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    let rest = match scheme {
        "http" => rest.strip_suffix(":80").unwrap_or(rest),
        "https" => rest.strip_suffix(":443").unwrap_or(rest),
        _ => return None,
    };
    Some(format!("{scheme}://{rest}"))
}

/// The origin of a `Referer` URL.
fn referer_origin(referer: &str) -> Option<String> {
    let (scheme, rest) = referer.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    normalize_origin(&format!("{scheme}://{host}"))
}

/// Equal-time comparison, so the CSRF token cannot be guessed byte by byte from timing.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SPEC section 3: an unsafe cookie-authenticated request passes when its `Origin` (or
/// `Referer`) is the origin the client addressed or an allowed one, or when `X-CSRF-Token`
/// equals the CSRF cookie.
pub fn csrf_ok(
    headers: &HeaderMap,
    addressed_origin: Option<&str>,
    allowed_origins: &[String],
    csrf_cookie: &str,
) -> bool {
    let claimed = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null")
        .and_then(normalize_origin)
        .or_else(|| {
            headers
                .get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .and_then(referer_origin)
        });
    if let Some(claimed) = claimed {
        let addressed = addressed_origin.and_then(normalize_origin);
        if addressed.as_deref() == Some(claimed.as_str())
            || allowed_origins
                .iter()
                .filter_map(|o| normalize_origin(o))
                .any(|o| o == claimed)
        {
            return true;
        }
    }
    match (
        headers.get(&X_CSRF_TOKEN).and_then(|v| v.to_str().ok()),
        find(headers, csrf_cookie),
    ) {
        (Some(sent), Some(cookie)) => !sent.is_empty() && same_secret(sent, cookie),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(secure: bool, domain: Option<&str>) -> CookieConfig {
        CookieConfig {
            name: "gh_session".into(),
            secure,
            same_site: SameSite::Lax,
            domain: domain.map(str::to_owned),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn names_follow_the_prefix_rules() {
        assert_eq!(session_name(&cfg(true, None)), "__Host-gh_session");
        assert_eq!(csrf_name(&cfg(true, None)), "__Host-gh_csrf");
        assert_eq!(
            session_name(&cfg(true, Some("example.com"))),
            "__Secure-gh_session"
        );
        assert_eq!(session_name(&cfg(false, None)), "gh_session");
    }

    #[test]
    fn set_cookie_attributes() {
        let v = set_session(&cfg(true, None), "tok", 60).unwrap();
        assert_eq!(
            v,
            "__Host-gh_session=tok; Path=/; Max-Age=60; SameSite=Lax; Secure; HttpOnly"
        );
        let v = set_csrf(&cfg(false, Some("example.com")), "c", 5).unwrap();
        assert_eq!(
            v,
            "gh_csrf=c; Path=/; Max-Age=5; SameSite=Lax; Domain=example.com"
        );
    }

    #[test]
    fn find_and_strip() {
        let mut h = headers(&[
            ("cookie", "a=1; gh_session=tok"),
            ("cookie", "gh_csrf=c; b=2"),
        ]);
        assert_eq!(find(&h, "gh_session"), Some("tok"));
        assert_eq!(find(&h, "gh_csrf"), Some("c"));
        assert_eq!(find(&h, "nope"), None);
        strip(&mut h, &["gh_session", "gh_csrf"]);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut only = headers(&[("cookie", "gh_session=tok")]);
        strip(&mut only, &["gh_session"]);
        assert!(!only.contains_key(header::COOKIE));
    }

    #[test]
    fn csrf_rules() {
        let allowed = vec!["https://app.example.com".to_owned()];
        let ok = |pairs: &[(&str, &str)]| {
            csrf_ok(
                &headers(pairs),
                Some("http://gw.test:8080"),
                &allowed,
                "gh_csrf",
            )
        };
        assert!(ok(&[("origin", "http://gw.test:8080")]));
        assert!(ok(&[("origin", "HTTPS://app.example.com:443")]));
        assert!(ok(&[("referer", "http://gw.test:8080/page?x=1")]));
        assert!(!ok(&[]));
        assert!(!ok(&[("origin", "https://evil.example")]));
        assert!(!ok(&[("origin", "null")]));
        assert!(!ok(&[("origin", "http://gw.test:8080.evil.example")]));
        assert!(ok(&[("x-csrf-token", "abc"), ("cookie", "gh_csrf=abc")]));
        assert!(!ok(&[("x-csrf-token", "abd"), ("cookie", "gh_csrf=abc")]));
        assert!(!ok(&[("x-csrf-token", ""), ("cookie", "gh_csrf=")]));
        assert!(!ok(&[("x-csrf-token", "abc")]));
    }

    #[test]
    fn origins_normalise() {
        assert_eq!(
            normalize_origin("http://A.test:80").unwrap(),
            "http://a.test"
        );
        assert_eq!(
            normalize_origin("https://a.test:8443/").unwrap(),
            "https://a.test:8443"
        );
        assert_eq!(normalize_origin("ftp://a"), None);
        assert_eq!(normalize_origin("https://a/b"), None);
    }
}
