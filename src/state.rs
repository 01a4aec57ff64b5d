//! Process state: [`Shared`] lives as long as the process (metrics, upstream HTTP clients);
//! [`Snapshot`] is everything derived from one `Config` (router, compiled routes, target
//! health) and is swapped whole through `ArcSwap` on reload, so a request sees one config
//! from its start to its end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::ReqBody;
use crate::config::{Config, RateLimitPolicy, RouteConfig, StoreConfig, Target};
use crate::metrics::{Metrics, RouteMetrics};
use crate::router::Router;
use crate::store::{SqliteStore, Store, StoreError};

/// The client every upstream request goes through.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>;

/// How long idle upstream connections are kept in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Opens the store the config names. Blocking (file I/O, migrations): call it from
/// `spawn_blocking` or before the runtime serves requests.
pub fn open_store(cfg: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match cfg {
        StoreConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path)?)),
        // The shared backend is issue 5's; refuse clearly rather than pretend.
        StoreConfig::Redis { .. } => Err(StoreError::Unavailable(
            "store.kind redis is not supported by this build yet; use sqlite".into(),
        )),
    }
}

/// State that outlives config reloads.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// Chosen at start; a reload cannot switch stores.
    pub store: Arc<dyn Store>,
    /// One pooled client per distinct connect timeout, kept across reloads so a reload does not
    /// throw away warm upstream connections.
    clients: Mutex<HashMap<Duration, UpstreamClient>>,
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
            metrics,
            store,
            clients: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since `epoch`: a cheap monotonic clock for atomics.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn client(&self, connect_timeout: Duration) -> UpstreamClient {
        let mut clients = match self.clients.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry(connect_timeout)
            .or_insert_with(|| build_client(connect_timeout))
            .clone()
    }
}

fn build_client(connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(usize::MAX)
        .set_host(false)
        .build(https)
}

/// One upstream target and its passive health.
#[derive(Debug)]
pub struct TargetSlot {
    pub target: Target,
    /// `Shared::now_ms` until which the target is skipped after a refused connection.
    pub down_until_ms: AtomicU64,
}

/// The targets of one route, picked round-robin.
pub struct UpstreamSet {
    pub targets: Vec<TargetSlot>,
    pub next: AtomicUsize,
    pub client: UpstreamClient,
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
}

impl Snapshot {
    pub fn build(config: Config, shared: &Shared) -> Snapshot {
        let router = Router::new(&config.routes);
        let routes = config
            .routes
            .iter()
            .map(|r| CompiledRoute {
                config: r.clone(),
                upstream: UpstreamSet {
                    targets: r
                        .upstream
                        .targets
                        .iter()
                        .map(|t| TargetSlot {
                            target: t.clone(),
                            down_until_ms: AtomicU64::new(0),
                        })
                        .collect(),
                    next: AtomicUsize::new(0),
                    client: shared.client(r.upstream.connect_timeout),
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
    /// Whether the peer is in `trusted_proxies`.
    pub trusted_peer: bool,
    /// `https` when the client connection is TLS.
    pub scheme: &'static str,
    pub started_at: Instant,
    /// Index into `Snapshot::routes` once routed.
    pub route: Option<usize>,
    pub principal: Option<Arc<crate::principal::Principal>>,
}
