//! Running the gateway: bind the proxy and admin listeners, serve, reload on SIGHUP or a file
//! change, and on SIGTERM/SIGINT stop accepting and drain in-flight requests before returning.

pub mod admin;
pub mod dispatch;
mod h1;
pub mod listener;
pub mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::accounts::{AccountError, Accounts};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::{LiveSnapshot, Shared, Snapshot};

/// `Box::pin(make())`, with the allocation made before the future is: the future (KiBs, most
/// of them room for the states it has not reached) can then be built in place, where
/// `Box::pin` builds it on the stack and copies all of it to the heap (LLVM may pass the heap
/// slot as the call's return slot only when the slot exists before the call).
#[inline(always)]
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("accounts: {0}")]
    Accounts(#[from] AccountError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("mail: {0}")]
    Mail(String),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("listener address: {0}")]
    Addr(std::io::Error),
}

/// A gateway with its listeners bound, ready to serve.
pub struct Gateway {
    pub shared: Arc<Shared>,
    pub accounts: Arc<Accounts>,
    pub live: LiveSnapshot,
    proxy: TcpListener,
    admin: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Gateway {
    /// Binds the listeners of `config` (port 0 picks a free port; see [`Gateway::proxy_addr`]).
    pub async fn bind(config: Config) -> Result<Gateway, ServerError> {
        let tls = config
            .tls
            .as_ref()
            .map(listener::tls_acceptor)
            .transpose()?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })
        };
        let proxy = bind(config.listen).await?;
        let admin = bind(config.admin_listen).await?;
        let store_cfg = config.store.clone();
        let metrics = Arc::new(Metrics::new());
        let store = crate::state::open_store(&store_cfg, &metrics).await?;
        let accounts =
            Arc::new(Accounts::start(store.clone(), &config, crate::endpoints::unix_now()).await?);
        accounts.warm_up().await?;
        // Other replicas' revocations reach this one's cache (SPEC section 7).
        if let Some(mut invalidations) = store.invalidations() {
            let accounts = accounts.clone();
            tokio::spawn(async move {
                while let Some(what) = invalidations.recv().await {
                    accounts.authenticator().cache().apply(&what).await;
                }
            });
        }
        let shared = Arc::new(Shared::new(metrics, store));
        if let Some(backend) = &shared.limits {
            accounts.share_login_limits(backend.clone());
        }
        let mailer = crate::mail::Mailer::start(&config.accounts.email, shared.metrics.clone())
            .map_err(|e| ServerError::Mail(e.to_string()))?;
        accounts.set_mailer(Arc::new(mailer));
        let live = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            config, &shared, None,
        )));
        Ok(Gateway {
            shared,
            accounts,
            live,
            proxy,
            admin,
            tls,
        })
    }

    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains (bounded by `limits.drain_timeout`).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let snapshot = self.live.load();
        let drain = snapshot.config.limits.drain_timeout;
        let builder = listener::builder(&snapshot.config.limits);
        drop(snapshot);
        let (stop_tx, stop_rx) = watch::channel(false);

        let (shared, live) = (self.shared.clone(), self.live.clone());
        let accounts = self.accounts.clone();
        let proxy = listener::serve(
            self.proxy,
            self.tls,
            builder.clone(),
            stop_rx.clone(),
            drain,
            listener::IDLE_PERIOD,
            move |peer, tls| {
                let (shared, accounts, live) = (shared.clone(), accounts.clone(), live.clone());
                let conn = dispatch::ConnInfo::new(peer, tls);
                move |req| {
                    let (shared, accounts, conn) = (shared.clone(), accounts.clone(), conn.clone());
                    let snapshot = live.load_full();
                    dispatch::handle(shared, accounts, snapshot, conn, req)
                }
            },
        );
        let (shared, live) = (self.shared.clone(), self.live.clone());
        let accounts = self.accounts.clone();
        let admin = listener::serve(
            self.admin,
            None,
            builder,
            stop_rx,
            drain,
            listener::IDLE_PERIOD,
            move |_peer, _tls| {
                let (shared, accounts, live) = (shared.clone(), accounts.clone(), live.clone());
                move |req| admin::handle(shared.clone(), accounts.clone(), live.clone(), req)
            },
        );
        let stopper = async move {
            shutdown.await;
            tracing::info!(target: "gatehouse::server", "shutting down: draining in-flight requests");
            let _ = stop_tx.send(true);
        };
        tokio::join!(proxy, admin, stopper);
    }
}

/// `gatehouse serve`: bind, print the ready line, serve with signal handling and reloads.
pub async fn run(config: Config) -> Result<(), ServerError> {
    use tokio::signal::unix::{SignalKind, signal};

    let path = config.source.clone();
    let gateway = Gateway::bind(config).await?;
    let proxy_addr = gateway.proxy_addr().map_err(ServerError::Addr)?;
    let admin_addr = gateway.admin_addr().map_err(ServerError::Addr)?;

    // SIGHUP and a poll of the file feed one debounced reload loop.
    let (tick_tx, tick_rx) = mpsc::channel(1);
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(target: "gatehouse::reload", "SIGHUP received");
            let _ = tick_tx.try_send(());
        }
    });
    tokio::spawn(reload::run(
        gateway.shared.clone(),
        gateway.accounts.clone(),
        gateway.live.clone(),
        path,
        tick_rx,
    ));

    tokio::spawn(refresh_signing_keys(
        gateway.accounts.clone(),
        gateway.live.clone(),
    ));
    tokio::spawn(refresh_trusted_issuers(
        gateway.accounts.clone(),
        gateway.live.clone(),
    ));
    tokio::spawn(purge_expired(gateway.shared.store.clone()));
    tokio::spawn(maintenance(gateway.accounts.clone(), gateway.live.clone()));

    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tracing::info!(target: "gatehouse::server", listen = %proxy_addr, admin = %admin_addr, "gatehouse started");
    // The machine-readable ready line that tests and supervisors wait for.
    println!(
        "{}",
        serde_json::json!({"ready": true, "listen": proxy_addr.to_string(), "admin": admin_addr.to_string()})
    );
    gateway.serve(shutdown).await;
    tracing::info!(target: "gatehouse::server", "stopped");
    Ok(())
}

/// How often the signing keys are re-read from the store, so a rotation made by another
/// replica or by `gatehouse keys rotate-signing` starts signing here within this long (tokens
/// with an unknown `kid` trigger an earlier re-read).
const KEY_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

async fn refresh_signing_keys(accounts: Arc<Accounts>, live: LiveSnapshot) {
    let mut tick = tokio::time::interval(KEY_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let config = live.load_full().config.clone();
        if let Err(e) = accounts
            .reload_keys(&config, crate::endpoints::unix_now())
            .await
        {
            tracing::warn!(target: "gatehouse::accounts", error = %e, "cannot re-read the signing keys; keeping the current ones");
        }
    }
}

/// How often the trusted issuers are matched to the live config and their JWKS refreshed
/// when due (first fetch, every few minutes, sooner after a failure).
const TRUSTED_ISSUERS_TICK: std::time::Duration = std::time::Duration::from_secs(1);

async fn refresh_trusted_issuers(accounts: Arc<Accounts>, live: LiveSnapshot) {
    let mut tick = tokio::time::interval(TRUSTED_ISSUERS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let config = live.load_full().config.clone();
        let auth = accounts.authenticator();
        auth.sync_trusted(&config.tokens.trusted_issuers, &config.tokens.audience);
        auth.trusted().refresh_due().await;
    }
}

/// How often records that can no longer be used (expired or revoked sessions, refresh and
/// one-time tokens, retired keys past their end) are deleted from the store.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

async fn purge_expired(store: Arc<dyn crate::store::Store>) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.purge_expired(crate::endpoints::unix_now()).await {
            Ok(n) => {
                tracing::debug!(target: "gatehouse::store", sessions = n.sessions, refresh_tokens = n.refresh_tokens, one_time_tokens = n.one_time_tokens, signing_keys = n.signing_keys, "purged expired records")
            }
            Err(e) => {
                tracing::warn!(target: "gatehouse::store", error = %e, "cannot purge expired records")
            }
        }
    }
}

/// How often idle rate-limit buckets are dropped and API key and session uses written to the
/// store.
const MAINTENANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

async fn maintenance(accounts: Arc<Accounts>, live: LiveSnapshot) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        live.load().limiters.housekeeping();
        // `last_used_at` is batched here rather than written on every request.
        if let Err(e) = accounts.authenticator().cache().flush_api_key_uses().await {
            tracing::warn!(target: "gatehouse::store", error = %e, "cannot record API key uses; will retry");
        }
        if let Err(e) = accounts.authenticator().cache().flush_session_uses().await {
            tracing::warn!(target: "gatehouse::store", error = %e, "cannot record session uses; will retry");
        }
    }
}
