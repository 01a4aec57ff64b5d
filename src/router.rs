//! The compiled route table (SPEC section 2): exact host before `*.wildcard` before any host,
//! then the longest `path_prefix`, then methods. Built once per config snapshot; matching does
//! no allocation on a hit.
//!
//! Prefixes match on whole path segments unless they end in `/`: `/api` matches `/api` and
//! `/api/x` but not `/apix`; `/api/` matches `/api/x` only. Paths are matched after dot
//! segments were resolved ([`normalize_path`]) so `/public/../admin` cannot borrow the policy
//! of `/public`.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;

use crate::config::{HostMatch, RouteConfig};

/// Why no route was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMiss {
    NoRoute,
    /// Some route matched host and path but not the method; the methods it would take.
    MethodNotAllowed(Vec<Method>),
}

#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    prefix: String,
    methods: Vec<Method>,
}

impl Entry {
    fn path_matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }

    fn method_matches(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

/// True when `path` lies under `prefix` (segment-aware unless `prefix` ends in `/`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Routes grouped by host tier, each group sorted longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    exact: HashMap<String, Vec<Entry>>,
    /// (suffix such as `.example.com`, entries), longest suffix first.
    wildcard: Vec<(String, Vec<Entry>)>,
    any: Vec<Entry>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut router = Router::default();
        for (index, r) in routes.iter().enumerate() {
            let entry = Entry {
                index,
                prefix: r.path_prefix.clone(),
                methods: r.methods.clone(),
            };
            match &r.host {
                HostMatch::Any => router.any.push(entry),
                HostMatch::Exact(h) => router.exact.entry(h.clone()).or_default().push(entry),
                HostMatch::Wildcard(suffix) => {
                    match router.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, v)) => v.push(entry),
                        None => router.wildcard.push((suffix.clone(), vec![entry])),
                    }
                }
            }
        }
        let by_prefix = |v: &mut Vec<Entry>| {
            v.sort_by(|a, b| {
                b.prefix
                    .len()
                    .cmp(&a.prefix.len())
                    .then(a.index.cmp(&b.index))
            })
        };
        router.exact.values_mut().for_each(by_prefix);
        router.wildcard.iter_mut().for_each(|(_, v)| by_prefix(v));
        by_prefix(&mut router.any);
        router
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        router
    }

    /// Finds the route for a request. `host` must already be normalised ([`normalize_host`]).
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Result<usize, RouteMiss> {
        let mut allow: Vec<Method> = Vec::new();
        let mut host_path_matched = false;
        let tiers = self
            .exact
            .get(host)
            .into_iter()
            .chain(
                self.wildcard
                    .iter()
                    .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix))
                    .map(|(_, v)| v),
            )
            .chain(std::iter::once(&self.any));
        for tier in tiers {
            for e in tier.iter().filter(|e| e.path_matches(path)) {
                if e.method_matches(method) {
                    return Ok(e.index);
                }
                host_path_matched = true;
                for m in &e.methods {
                    if !allow.contains(m) {
                        allow.push(m.clone());
                    }
                }
            }
        }
        if host_path_matched {
            Err(RouteMiss::MethodNotAllowed(allow))
        } else {
            Err(RouteMiss::NoRoute)
        }
    }
}

/// Lower-cases the host and drops the port and a trailing dot.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(i) => &raw[..i],
            None => raw,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Resolves `.` and `..` segments (also percent-encoded ones) as RFC 3986 section 5.2.4 does,
/// and collapses repeated slashes, so routing sees the path the upstream will act on.
/// Returns the input untouched in the common case of a clean path.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    // One pass over the bytes: four `contains` calls each set up a substring search, which
    // cost more than the whole scan of a typical path, on every request.
    let b = path.as_bytes();
    let needs_work = b.first() != Some(&b'/')
        || b.windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
        || b.windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'e'));
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let trailing_slash = path.ends_with('/');
    let mut last_was_dir = false;
    for seg in path.split('/') {
        last_was_dir = false;
        if seg.is_empty() {
            continue;
        }
        let decoded_dots = seg.eq_ignore_ascii_case("%2e") || seg == ".";
        let decoded_dotdot = matches!(
            seg.to_ascii_lowercase().as_str(),
            ".." | "%2e%2e" | ".%2e" | "%2e."
        );
        if decoded_dots {
            last_was_dir = true;
        } else if decoded_dotdot {
            out.pop();
            last_was_dir = true;
        } else {
            out.push(seg);
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || ((trailing_slash || last_was_dir) && !s.ends_with('/')) {
        s.push('/');
    }
    Cow::Owned(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{AuthMode, CredentialKind, RouteConfig, UpstreamConfig};
    use std::time::Duration;

    fn route(name: &str, host: HostMatch, prefix: &str, methods: &[Method]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host,
            path_prefix: prefix.into(),
            methods: methods.to_vec(),
            upstream: UpstreamConfig {
                targets: vec![],
                timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                ca_file: None,
            },
            auth: AuthMode::Public,
            credentials: vec![CredentialKind::ApiKey],
            roles: vec![],
            scopes: vec![],
            allow_publishable_keys: false,
            forward_credentials: false,
            rate_limit: None,
            strip_prefix: None,
            identity_assertion: false,
            max_body: None,
        }
    }

    fn table() -> (Router, Vec<RouteConfig>) {
        let routes = vec![
            route("any-root", HostMatch::Any, "/", &[]),
            route("any-api", HostMatch::Any, "/api", &[]),
            route("wild", HostMatch::Wildcard(".example.com".into()), "/", &[]),
            route(
                "wild-deep",
                HostMatch::Wildcard(".eu.example.com".into()),
                "/",
                &[],
            ),
            route(
                "exact",
                HostMatch::Exact("api.example.com".into()),
                "/",
                &[Method::GET],
            ),
            route(
                "exact-v2",
                HostMatch::Exact("api.example.com".into()),
                "/v2/",
                &[],
            ),
        ];
        (Router::new(&routes), routes)
    }

    fn name(routes: &[RouteConfig], r: Result<usize, RouteMiss>) -> &str {
        &routes[r.unwrap()].name
    }

    #[test]
    fn precedence() {
        let (r, routes) = table();
        assert_eq!(
            name(&routes, r.find("api.example.com", "/x", &Method::GET)),
            "exact"
        );
        assert_eq!(
            name(&routes, r.find("api.example.com", "/v2/x", &Method::POST)),
            "exact-v2"
        );
        // Host specificity before prefix length: the exact host's "/" beats any-host "/api".
        assert_eq!(
            name(&routes, r.find("api.example.com", "/api/x", &Method::GET)),
            "exact"
        );
        // Method mismatch on the exact host falls through to the wildcard.
        assert_eq!(
            name(&routes, r.find("api.example.com", "/x", &Method::POST)),
            "wild"
        );
        assert_eq!(
            name(&routes, r.find("a.example.com", "/", &Method::GET)),
            "wild"
        );
        assert_eq!(
            name(&routes, r.find("a.eu.example.com", "/", &Method::GET)),
            "wild-deep"
        );
        // The wildcard does not match the bare domain.
        assert_eq!(
            name(&routes, r.find("example.com", "/api/1", &Method::GET)),
            "any-api"
        );
        assert_eq!(
            name(&routes, r.find("other", "/apix", &Method::GET)),
            "any-root"
        );
    }

    #[test]
    fn misses() {
        let routes = vec![route(
            "get-only",
            HostMatch::Any,
            "/a",
            &[Method::GET, Method::HEAD],
        )];
        let r = Router::new(&routes);
        assert_eq!(r.find("h", "/b", &Method::GET), Err(RouteMiss::NoRoute));
        assert_eq!(
            r.find("h", "/a/x", &Method::POST),
            Err(RouteMiss::MethodNotAllowed(vec![Method::GET, Method::HEAD]))
        );
    }

    #[test]
    fn hosts_and_paths_normalise() {
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_path("/a/b"), "/a/b");
        assert_eq!(normalize_path("/public/../admin"), "/admin");
        assert_eq!(normalize_path("/public/%2e%2E/admin"), "/admin");
        assert_eq!(normalize_path("//a///b/"), "/a/b/");
        assert_eq!(normalize_path("/a/./b/."), "/a/b/");
        assert_eq!(normalize_path("/.."), "/");
        assert_eq!(normalize_path("/a/.hidden"), "/a/.hidden");
    }

    /// The one-pass check that a path needs no work (returned borrowed) agrees with the
    /// substring rules it replaced on every string of up to five characters drawn from the
    /// bytes those rules look at, plus a plain one: a path it wrongly called clean would reach
    /// routing with its `..` unresolved.
    #[test]
    fn clean_path_check_matches_the_substring_rules() {
        fn rules(p: &str) -> bool {
            p.contains("//")
                || p.contains("/.")
                || p.contains("%2e")
                || p.contains("%2E")
                || !p.starts_with('/')
        }
        let alphabet = ["/", ".", "%", "2", "e", "E", "a"];
        let mut paths = vec![String::new()];
        let mut checked = 0;
        for _ in 0..5 {
            let mut longer = Vec::new();
            for p in &paths {
                for c in alphabet {
                    longer.push(format!("{p}{c}"));
                }
            }
            for p in &longer {
                let borrowed = matches!(normalize_path(p), Cow::Borrowed(_));
                assert_eq!(borrowed, !rules(p), "{p:?}");
                checked += 1;
            }
            paths = longer;
        }
        assert!(matches!(normalize_path(""), Cow::Owned(_)));
        assert_eq!(checked, 7 + 49 + 343 + 2401 + 16807);
    }
}
