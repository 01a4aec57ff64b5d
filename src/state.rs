//! Process state: [`Shared`] lives as long as the process (metrics, upstream HTTP clients);
//! [`Snapshot`] is everything derived from one `Config` (router, compiled routes, target
//! health) and is swapped whole through `ArcSwap` on reload, so a request sees one config
//! from its start to its end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, RateLimitPolicy, RouteConfig, StoreConfig, Target};
use crate::metrics::{Metrics, RouteMetrics};
use crate::pool::{Endpoint, Pool, Transport, client_tls};
use crate::ratelimit::route::{Limiter, RouteLimiters};
use crate::ratelimit::shared::SharedBackend;
use crate::router::Router;
use crate::store::{RedisOptions, RedisStore, SqliteStore, Store, StoreError};
use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Opens the store the config names: the SQLite file (on the blocking pool: file I/O and
/// migrations), or a connection to Redis (the first connection must succeed).
pub async fn open_store(
    cfg: &StoreConfig,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Store>, StoreError> {
    match cfg {
        StoreConfig::Sqlite { path } => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(path))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))??;
            Ok(Arc::new(store))
        }
        StoreConfig::Redis { url, cluster } => Ok(Arc::new(
            RedisStore::connect(&RedisOptions::new(url.clone(), *cluster))
                .await?
                .with_metrics(Arc::clone(metrics)),
        )),
    }
}

/// A pool per target and the settings its connections are made with.
type PoolKey = (Target, Duration, Option<PathBuf>);

/// State that outlives config reloads.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// Chosen at start; a reload cannot switch stores.
    pub store: Arc<dyn Store>,
    /// The store's shared rate-limit counters (Redis); `None`: limits are per process.
    pub limits: Option<Arc<SharedBackend>>,
    /// One connection pool per (target, connect timeout), kept across reloads so a reload does
    /// not throw away warm upstream connections.
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// Client TLS settings for `https` targets (Mozilla's roots), built on first use.
    tls: std::sync::OnceLock<Result<tokio_rustls::TlsConnector, String>>,
    /// Origin of the monotonic milliseconds used by target health.
    pub epoch: Instant,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>, store: Arc<dyn Store>) -> Shared {
        Shared {
            limits: store
                .counters()
                .map(|c| SharedBackend::new(c, Some(Arc::clone(&metrics)))),
            metrics,
            store,
            pools: Mutex::new(HashMap::new()),
            tls: std::sync::OnceLock::new(),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since `epoch`: a cheap monotonic clock for atomics.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn tls_connector(&self, ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
        match ca_file {
            None => self
                .tls
                .get_or_init(|| client_tls(&std::iter::empty()))
                .clone(),
            Some(path) => {
                let extra = match CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                {
                    Ok(certs) => certs,
                    Err(e) => {
                        // Validation checked that the file exists; a bad PEM leaves only the
                        // public roots, so the private upstream fails closed (502), loudly.
                        tracing::error!(target: "gatehouse::upstream", file = %path.display(), error = %e, "cannot read upstream ca_file");
                        Vec::new()
                    }
                };
                client_tls(&extra.into_iter())
            }
        }
    }

    fn endpoint(
        &self,
        target: &Target,
        connect_timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Endpoint {
        let host = target.authority.host();
        let port =
            target
                .authority
                .port_u16()
                .unwrap_or(if target.scheme == http::uri::Scheme::HTTPS {
                    443
                } else {
                    80
                });
        let transport = if target.scheme == http::uri::Scheme::HTTPS {
            Transport::tls(self.tls_connector(ca_file), host)
        } else {
            Transport::Plain
        };
        Endpoint {
            authority: format!("{host}:{port}"),
            transport,
            connect_timeout,
        }
    }

    /// Pools for the targets of `config`; pools no route uses any more are dropped from the
    /// map (requests still using them keep them alive until they finish).
    fn pools_for(&self, config: &Config) -> HashMap<PoolKey, Arc<Pool>> {
        let mut pools = match self.pools.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut wanted = HashMap::new();
        for r in &config.routes {
            for t in &r.upstream.targets {
                let up = &r.upstream;
                let key = (t.clone(), up.connect_timeout, up.ca_file.clone());
                let pool = pools.get(&key).cloned().unwrap_or_else(|| {
                    Pool::new(self.endpoint(t, up.connect_timeout, up.ca_file.as_deref()))
                });
                wanted.insert(key, pool);
            }
        }
        *pools = wanted.clone();
        wanted
    }
}

/// One upstream target and its passive health.
#[derive(Debug)]
pub struct TargetSlot {
    pub target: Target,
    pub pool: Arc<Pool>,
    /// `Shared::now_ms` until which the target is skipped after a refused connection.
    pub down_until_ms: AtomicU64,
}

/// The targets of one route, picked round-robin.
pub struct UpstreamSet {
    pub targets: Vec<TargetSlot>,
    pub next: AtomicUsize,
    pub timeout: Duration,
}

impl std::fmt::Debug for UpstreamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSet")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

/// A route ready to serve.
#[derive(Debug)]
pub struct CompiledRoute {
    pub config: RouteConfig,
    pub upstream: UpstreamSet,
    pub metrics: RouteMetrics,
    /// The route's own limit, else `rate_limits.default`.
    pub rate_limit: RateLimitPolicy,
    /// Its limiter (kept across reloads while the route's name and policy stay the same).
    pub limiter: Arc<Limiter>,
}

/// Everything derived from one config.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<CompiledRoute>,
    /// Metrics of requests that matched no route.
    pub unrouted: RouteMetrics,
    /// Metrics of the gateway's own endpoints (`/auth`, `/.well-known`).
    pub endpoints: RouteMetrics,
    /// The session cookie's name as browsers send it (with its `__Host-` prefix).
    pub session_cookie: String,
    /// The CSRF cookie's name as browsers send it.
    pub csrf_cookie: String,
    /// Every route's rate limiter, in route order.
    pub limiters: RouteLimiters,
}

impl Snapshot {
    /// Everything derived from `config`; `previous` (on reload) hands over the rate-limit
    /// buckets of unchanged routes, so a reload does not give every client a fresh burst.
    pub fn build(config: Config, shared: &Shared, previous: Option<&Snapshot>) -> Snapshot {
        let router = Router::new(&config.routes);
        let named = config
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r.rate_limit.as_ref()));
        let limiters = match previous {
            Some(prev) => {
                prev.limiters
                    .carry_over(&config.rate_limits.default, named, shared.limits.as_ref())
            }
            None => RouteLimiters::new(&config.rate_limits.default, named, shared.limits.as_ref()),
        };
        let pools = shared.pools_for(&config);
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| CompiledRoute {
                limiter: limiters.get(i).cloned().unwrap_or_else(|| {
                    Arc::new(Limiter::new(&config.rate_limits.default, "default"))
                }),
                config: r.clone(),
                upstream: UpstreamSet {
                    targets: r
                        .upstream
                        .targets
                        .iter()
                        .filter_map(|t| {
                            let key = (
                                t.clone(),
                                r.upstream.connect_timeout,
                                r.upstream.ca_file.clone(),
                            );
                            let pool = pools.get(&key)?;
                            Some(TargetSlot {
                                target: t.clone(),
                                pool: pool.clone(),
                                down_until_ms: AtomicU64::new(0),
                            })
                        })
                        .collect(),
                    next: AtomicUsize::new(0),
                    timeout: r.upstream.timeout,
                },
                metrics: shared.metrics.route(&r.name),
                rate_limit: r
                    .rate_limit
                    .clone()
                    .unwrap_or_else(|| config.rate_limits.default.clone()),
            })
            .collect();
        Snapshot {
            router,
            routes,
            limiters,
            session_cookie: crate::auth::cookie::session_name(&config.cookies),
            csrf_cookie: crate::auth::cookie::csrf_name(&config.cookies),
            unrouted: shared.metrics.route("no_route"),
            endpoints: shared.metrics.route("gatehouse"),
            config: Arc::new(config),
        }
    }
}

/// The live snapshot, replaced whole on reload.
pub type LiveSnapshot = Arc<ArcSwap<Snapshot>>;

/// Per-request state, owned by the request; nothing per-request is global.
#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: http::HeaderValue,
    /// The TCP peer's address.
    pub client_ip: std::net::IpAddr,
    /// `client_ip` as a header value (`X-Forwarded-For`).
    pub client_ip_value: http::HeaderValue,
    /// Whether the peer is in `trusted_proxies`.
    pub trusted_peer: bool,
    /// `https` when the client connection is TLS.
    pub scheme: &'static str,
    pub started_at: Instant,
    /// Index into `Snapshot::routes` once routed.
    pub route: Option<usize>,
}

impl RequestCtx {
    /// The client's address for limits and records: the TCP peer, or, when the peer is a
    /// trusted proxy, the nearest `X-Forwarded-For` entry that is not one.
    pub fn real_client_ip(
        &self,
        headers: &http::HeaderMap,
        trusted: &[ipnet::IpNet],
    ) -> std::net::IpAddr {
        if !self.trusted_peer {
            return self.client_ip;
        }
        let hops: Vec<std::net::IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let mut ip = self.client_ip;
        for hop in hops.into_iter().rev() {
            ip = hop;
            if !trusted.iter().any(|n| n.contains(&hop)) {
                break;
            }
        }
        ip
    }
}
