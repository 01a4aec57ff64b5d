//! Prometheus metrics: one registry with typed families, shared as `Arc<Metrics>`.
//!
//! The request path never formats labels: a route's counters and histogram are looked up once
//! when a config snapshot is built ([`RouteMetrics`]) and are then plain atomic handles.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub class: StatusClass,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    C1xx,
    C2xx,
    C3xx,
    C4xx,
    C5xx,
}

impl EncodeLabelValue for StatusClass {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            StatusClass::C1xx => "1xx",
            StatusClass::C2xx => "2xx",
            StatusClass::C3xx => "3xx",
            StatusClass::C4xx => "4xx",
            StatusClass::C5xx => "5xx",
        })
    }
}

const CLASSES: [StatusClass; 5] = [
    StatusClass::C1xx,
    StatusClass::C2xx,
    StatusClass::C3xx,
    StatusClass::C4xx,
    StatusClass::C5xx,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// Why forwarding to an upstream failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamErrorKind {
    connect,
    timeout,
    protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub route: String,
    pub kind: UpstreamErrorKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    success,
    failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

/// What became of an outgoing mail (src/mail/).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum MailResult {
    sent,
    /// Not delivered after every attempt, rejected by the server, or not buildable.
    failed,
    /// Not queued: the queue was full.
    dropped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailLabels {
    pub result: MailResult,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s: proxied requests on loopback take tens of microseconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.5, 14,
    ))
}

/// All metric families of one process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    reloads: Family<ReloadLabels, Counter>,
    /// Store lookups made by the proxy path's cache since start (set when scraped): a flood
    /// of bad credentials should leave it flat.
    pub auth_store_lookups: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// JWKS fetches of trusted issuers, by issuer and result (set when scraped).
    pub jwks_fetches: Family<JwksFetchLabels, Counter>,
    /// Seconds since an issuer's JWKS was last fetched successfully; -1 before the first.
    /// A growing value means tokens are checked against stale keys (stale-if-error).
    pub jwks_age: Family<IssuerLabel, Gauge<f64, AtomicU64>>,
    mail: Family<MailLabels, Counter>,
    store_latency: Histogram,
    store_errors: Family<StoreErrorLabels, Counter>,
    store_reconnects: Family<StoreLinkLabels, Counter>,
    ratelimit_fallbacks: Counter,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StoreErrorKind {
    /// Unreachable, refused, timed out: answered 503 `store_unavailable`.
    unavailable,
    /// Anything else (a bug, bad data).
    internal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    pub kind: StoreErrorKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StoreLink {
    /// The connection commands go through.
    commands,
    /// The subscription that carries cache invalidations between replicas.
    invalidations,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLinkLabels {
    pub link: StoreLink,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabel {
    pub issuer: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FetchResult {
    ok,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksFetchLabels {
    pub issuer: String,
    pub result: FetchResult,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route and status class",
            requests.clone(),
        );
        let latency = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response head, by route",
            latency.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream attempts, by route and kind",
            upstream_errors.clone(),
        );
        let in_flight = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        let auth_store_lookups = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "auth_store_lookups",
            "Store lookups made by the authentication cache since start (misses)",
            auth_store_lookups.clone(),
        );
        let jwks_fetches = Family::<JwksFetchLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "JWKS fetches of trusted issuers, by issuer and result",
            jwks_fetches.clone(),
        );
        let jwks_age = Family::<IssuerLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "jwks_age_seconds",
            "Seconds since a trusted issuer's JWKS was last fetched successfully (-1: never)",
            jwks_age.clone(),
        );
        let mail = Family::<MailLabels, Counter>::default();
        registry.register(
            "mail_messages",
            "Outgoing mail, by result (sent, failed, dropped)",
            mail.clone(),
        );
        // 50 µs .. ~3 s: a Redis round trip on loopback is about 30 µs.
        let store_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.5, 13),
        );
        registry.register(
            "store_request_duration_seconds",
            "Time of one request to a networked store (Redis), errors included",
            store_latency.clone(),
        );
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Failed requests to a networked store, by kind",
            store_errors.clone(),
        );
        let store_reconnects = Family::<StoreLinkLabels, Counter>::default();
        registry.register(
            "store_reconnects",
            "Times a networked store became reachable again after a failure, by link",
            store_reconnects.clone(),
        );
        let ratelimit_fallbacks = Counter::default();
        registry.register(
            "ratelimit_fallbacks",
            "Rate-limit decisions made by this replica alone because the shared store was unreachable",
            ratelimit_fallbacks.clone(),
        );
        Metrics {
            registry,
            ratelimit_fallbacks,
            store_latency,
            store_errors,
            store_reconnects,
            requests,
            latency,
            upstream_errors,
            in_flight,
            reloads,
            auth_store_lookups,
            jwks_fetches,
            jwks_age,
            mail,
        }
    }

    /// Handles for one route (or a pseudo-route such as `no_route` or `auth`).
    pub fn route(&self, route: &str) -> RouteMetrics {
        let classes = CLASSES.map(|class| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.to_owned(),
                    class,
                })
                .clone()
        });
        let latency = self
            .latency
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .clone();
        let errors = [
            UpstreamErrorKind::connect,
            UpstreamErrorKind::timeout,
            UpstreamErrorKind::protocol,
        ]
        .map(|kind| {
            self.upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    route: route.to_owned(),
                    kind,
                })
                .clone()
        });
        RouteMetrics {
            classes,
            latency,
            errors,
        }
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    pub fn mail(&self, result: MailResult) {
        self.mail.get_or_create(&MailLabels { result }).inc();
    }

    pub fn store_request(&self, seconds: f64) {
        self.store_latency.observe(seconds);
    }

    pub fn store_error(&self, kind: StoreErrorKind) {
        self.store_errors
            .get_or_create(&StoreErrorLabels { kind })
            .inc();
    }

    pub fn ratelimit_fallback(&self) {
        self.ratelimit_fallbacks.inc();
    }

    pub fn store_reconnect(&self, link: StoreLink) {
        self.store_reconnects
            .get_or_create(&StoreLinkLabels { link })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Pre-resolved metric handles of one route.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    classes: [Counter<u64, AtomicU64>; 5],
    latency: Histogram,
    errors: [Counter<u64, AtomicU64>; 3],
}

impl RouteMetrics {
    pub fn observe(&self, status: u16, seconds: f64) {
        let idx = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.classes[idx].inc();
        self.latency.observe(seconds);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        let idx = match kind {
            UpstreamErrorKind::connect => 0,
            UpstreamErrorKind::timeout => 1,
            UpstreamErrorKind::protocol => 2,
        };
        self.errors[idx].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_handles_feed_the_registry() {
        let m = Metrics::new();
        let r = m.route("api");
        r.observe(204, 0.001);
        r.observe(503, 0.002);
        r.upstream_error(UpstreamErrorKind::connect);
        m.reload(ReloadResult::success);
        m.mail(MailResult::sent);
        let text = m.encode();
        assert!(text.contains(r#"gatehouse_http_requests_total{route="api",class="2xx"} 1"#));
        assert!(text.contains(r#"gatehouse_http_requests_total{route="api",class="5xx"} 1"#));
        assert!(text.contains(r#"gatehouse_upstream_errors_total{route="api",kind="connect"} 1"#));
        assert!(text.contains(r#"gatehouse_config_reloads_total{result="success"} 1"#));
        assert!(text.contains(r#"gatehouse_mail_messages_total{result="sent"} 1"#));
        assert!(text.contains("gatehouse_http_request_duration_seconds_bucket"));
    }
}
