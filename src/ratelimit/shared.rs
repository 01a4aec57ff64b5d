//! Limits shared by replicas through the store's [`SharedCounters`] (Redis), in the two
//! modes of a policy's `mode` (SPEC section 7, README "Scale-out"):
//!
//! - `exact`: every check is one GCRA step in a Lua script on the server (one round trip).
//! - `approximate`: every check is a local GCRA step on this replica's copy of the key's
//!   theoretical arrival time (TAT); a background task sends the hits let through to the
//!   server every [`FLUSH_EVERY`] (or sooner after [`FLUSH_AFTER`] hits) and takes back the
//!   global TAT, which other replicas' hits have moved. Error bound: a replica decides on a
//!   TAT that lacks the other replicas' hits since its last sync, so per other replica at
//!   most the hits it let through in one flush interval plus a round trip (never more than
//!   one burst) get through beyond the limit; the overshoot is then owed (the global TAT is
//!   never capped), so over a longer span the rate holds.
//!
//! Owns: [`SharedBackend`] (the counters, the fallback state and its warnings and metric),
//! [`Approximate`] (the local copies and their flusher), [`gcra_step`] (the arithmetic both
//! share with the server's script). Must not touch: HTTP, the store's internals (only the
//! trait).
//!
//! When the store is unreachable every limiter falls back to counting in this process alone
//! (the limit then holds per replica), with one warning per outage and
//! `gatehouse_ratelimit_fallbacks_total` counting the decisions so made; a request is never
//! failed because of its limiter. Exact mode then tries the store again at most every
//! [`RETRY_DOWN`], so a server that times out does not slow every request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::ratelimit::route::PreHashed;
use crate::store::{SharedCounters, StoreError};

const LOG: &str = "gatehouse::ratelimit";

/// How often the approximate mode syncs with the store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Hits (over all keys of a limiter) that trigger a sync before [`FLUSH_EVERY`] is up.
pub const FLUSH_AFTER: u32 = 64;
/// Keys per batch sent to the store (bounds one sync's size).
const BATCH: usize = 512;
/// While the store is down, exact mode asks it again at most this often.
pub const RETRY_DOWN: Duration = Duration::from_millis(500);
/// Local copies kept per shard before idle ones are swept on insert.
const SWEEP_SHARD_ABOVE: usize = 8_192;
const SHARDS: usize = 16;

/// The store's counters and whether they are reachable; one per process, shared by every
/// limiter so an outage is reported once.
pub struct SharedBackend {
    counters: Arc<dyn SharedCounters>,
    metrics: Option<Arc<Metrics>>,
    down: AtomicBool,
    /// Microseconds since `epoch` before which exact mode does not try the store.
    retry_at_us: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for SharedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBackend")
            .field("counters", &self.counters)
            .field("down", &self.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SharedBackend {
    /// A backend over `counters`, counting fallbacks in `metrics`.
    pub fn new(
        counters: Arc<dyn SharedCounters>,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<SharedBackend> {
        Arc::new(SharedBackend {
            counters,
            metrics,
            down: AtomicBool::new(false),
            retry_at_us: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The store's counters.
    pub fn counters(&self) -> &dyn SharedCounters {
        &*self.counters
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether the last request to the store failed.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Whether a round trip is worth trying (up, or down long enough to try again), without
    /// claiming the retry.
    pub fn worth_trying(&self) -> bool {
        !self.is_down() || self.now_us() >= self.retry_at_us.load(Ordering::Relaxed)
    }

    /// Whether this caller may make a round trip now: always while the store is up; while it
    /// is down, only the one caller that claims the next retry (so when the store times
    /// out, one request per [`RETRY_DOWN`] waits for it, not every request arriving then).
    pub fn try_claim(&self) -> bool {
        if !self.is_down() {
            return true;
        }
        let now = self.now_us();
        let due = self.retry_at_us.load(Ordering::Relaxed);
        now >= due
            && self
                .retry_at_us
                .compare_exchange(
                    due,
                    now.saturating_add(micros(RETRY_DOWN)),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Notes a successful request (logs the end of an outage once).
    pub fn succeeded(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!(target: LOG, "shared rate limits: store reachable again, limits are shared again");
        }
    }

    /// Notes a failed request (logs the start of an outage once).
    pub fn failed(&self, error: &StoreError) {
        let retry = self.now_us().saturating_add(micros(RETRY_DOWN));
        self.retry_at_us.store(retry, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(target: LOG, %error, "shared rate limits: store unreachable, each replica limits alone until it is back");
        }
    }

    /// Makes the next [`SharedBackend::try_claim`] succeed (tests: no waiting for
    /// [`RETRY_DOWN`]).
    #[cfg(test)]
    pub(crate) fn retry_now(&self) {
        self.retry_at_us.store(0, Ordering::Relaxed);
    }

    /// Counts one decision made locally because the store was unreachable.
    pub fn fell_back(&self) {
        if let Some(m) = &self.metrics {
            m.ratelimit_fallback();
        }
    }
}

/// The outcome of one GCRA step (the arithmetic of the server's script, in microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Allowed: the new TAT, how many more may go now, time until the bucket is full.
    Allowed {
        tat: u64,
        remaining: u32,
        reset_us: u64,
    },
    /// Refused: time until one may go.
    Limited { retry_us: u64 },
}

/// One request at `now` against `tat` (one request per `interval`, `burst` at once).
pub fn gcra_step(tat: u64, now: u64, interval: u64, burst: u32) -> Step {
    let interval = interval.max(1);
    let new_tat = tat.max(now).saturating_add(interval);
    // Measured from `now` (not as `new_tat - burst x interval`, which would underflow near
    // the clock's origin).
    let in_use = new_tat - now;
    let capacity = interval.saturating_mul(u64::from(burst.max(1)));
    if in_use > capacity {
        return Step::Limited {
            retry_us: in_use - capacity,
        };
    }
    Step::Allowed {
        tat: new_tat,
        remaining: u32::try_from((capacity - in_use) / interval).unwrap_or(u32::MAX),
        reset_us: in_use,
    }
}

/// The name a key has in the store: a SHA-256 of what identifies the client (tagged by
/// kind), so credentials and addresses do not appear in the store, and every replica
/// names a client alike (unlike the per-process keyed hash of local buckets).
pub fn shared_name(prefix: &str, kind: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update(b":");
    h.update(id.as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    crate::store::push_hex(&mut out, &digest[..16]);
    out
}

/// A store key prefix for a limiter: `{`/`}` replaced so a name cannot become a hash tag
/// (which would put every key of the limiter in one cluster slot).
pub fn key_prefix(kind: &str, name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if matches!(c, '{' | '}') { '_' } else { c })
        .collect();
    format!("{kind}:{name}:")
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Entry {
    /// The key's name in the store.
    name: Box<str>,
    /// Local copy of the TAT, microseconds since the backend's epoch.
    tat: u64,
    /// Hits let through since the last sync was sent.
    pending: u32,
    /// Queued for the next sync.
    queued: bool,
}

/// The approximate mode's state of one limiter: local TATs and the queue of keys to sync.
pub struct Approximate {
    backend: Arc<SharedBackend>,
    interval_us: u64,
    burst: u32,
    /// Keyed by [`key_of`](super::route::key_of) values, already uniform: no second hash.
    shards: [Mutex<HashMap<u64, Entry, PreHashed>>; SHARDS],
    queue: Mutex<Vec<u64>>,
    hits_since_flush: AtomicU64,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Approximate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approximate")
            .field("interval_us", &self.interval_us)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked mid-update; the counts are still usable and
    // refusing to limit would be worse.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Approximate {
    /// State for a policy of one request per `interval_us`, `burst` at once. Call
    /// [`Approximate::spawn_flusher`] (inside a Tokio runtime) to sync it.
    pub fn new(backend: Arc<SharedBackend>, interval_us: u64, burst: u32) -> Arc<Approximate> {
        Arc::new(Approximate {
            backend,
            interval_us: interval_us.max(1),
            burst: burst.max(1),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::with_hasher(PreHashed))),
            queue: Mutex::new(Vec::new()),
            hits_since_flush: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Starts the background sync; it ends when the state is dropped (config reload).
    pub fn spawn_flusher(self: &Arc<Self>) {
        let weak: Weak<Approximate> = Arc::downgrade(self);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: LOG, "no runtime: approximate limits stay local");
            return;
        };
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let Some(state) = weak.upgrade() else { return };
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = state.wake.notified() => {}
                }
                state.flush().await;
            }
        });
    }

    /// One check of `key` at this instant; `name` makes its store name when the key is new.
    pub fn check(&self, key: u64, name: impl FnOnce() -> String) -> Step {
        let now = self.backend.now_us();
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = lock(shard);
        if map.len() >= SWEEP_SHARD_ABOVE && !map.contains_key(&key) {
            map.retain(|_, e| e.tat > now || e.queued);
        }
        let entry = map.entry(key).or_insert_with(|| Entry {
            name: name().into_boxed_str(),
            tat: now,
            pending: 0,
            queued: false,
        });
        let step = gcra_step(entry.tat, now, self.interval_us, self.burst);
        if let Step::Allowed { tat, .. } = step {
            entry.tat = tat;
            entry.pending = entry.pending.saturating_add(1);
        }
        // Refused checks are queued too: a sync then brings the key's global TAT, which may
        // have moved either way since this replica last saw it.
        let queue = !entry.queued;
        entry.queued = true;
        drop(map);
        if queue {
            lock(&self.queue).push(key);
        }
        if self.backend.is_down() {
            self.backend.fell_back();
        }
        if matches!(step, Step::Allowed { .. })
            && self.hits_since_flush.fetch_add(1, Ordering::Relaxed) + 1 >= u64::from(FLUSH_AFTER)
        {
            self.wake.notify_one();
        }
        step
    }

    /// Sends the queued keys' hits to the store and takes back their global TATs. On
    /// failure the hits stay counted locally only (the store does not learn them later:
    /// replaying an outage's hits would refuse clients for what the local limit already
    /// allowed).
    pub async fn flush(&self) {
        self.hits_since_flush.store(0, Ordering::Relaxed);
        let keys = std::mem::take(&mut *lock(&self.queue));
        if keys.is_empty() {
            return;
        }
        if !self.backend.try_claim() {
            // Down: the hits stay local (see above) and the store is asked again later.
            for key in keys {
                if let Some(e) = lock(&self.shards[(key as usize) % SHARDS]).get_mut(&key) {
                    e.pending = 0;
                    e.queued = false;
                }
            }
            return;
        }
        for chunk in keys.chunks(BATCH) {
            let mut batch: Vec<(u64, Box<str>, u32)> = Vec::with_capacity(chunk.len());
            for &key in chunk {
                let mut map = lock(&self.shards[(key as usize) % SHARDS]);
                if let Some(e) = map.get_mut(&key) {
                    batch.push((key, e.name.clone(), e.pending));
                    e.pending = 0;
                    e.queued = false;
                }
            }
            let request: Vec<(&str, u32)> = batch.iter().map(|(_, n, h)| (&**n, *h)).collect();
            match self
                .backend
                .counters
                .gcra_add(&request, self.interval_us)
                .await
            {
                Ok(backlogs) => {
                    self.backend.succeeded();
                    let now = self.backend.now_us();
                    for ((key, _, _), backlog) in batch.iter().zip(backlogs) {
                        let mut map = lock(&self.shards[(*key as usize) % SHARDS]);
                        if let Some(e) = map.get_mut(key) {
                            // The global TAT includes the hits just sent, not those let
                            // through while the sync was in flight (still pending).
                            let extra = u64::from(e.pending).saturating_mul(self.interval_us);
                            e.tat = now.saturating_add(backlog).saturating_add(extra);
                        }
                    }
                }
                Err(error) => self.backend.failed(&error),
            }
        }
    }

    /// Drops the copies of keys whose buckets are full and that wait for no sync.
    pub fn housekeeping(&self) {
        let now = self.backend.now_us();
        for shard in &self.shards {
            let mut map = lock(shard);
            map.retain(|_, e| e.tat > now || e.queued);
            map.shrink_to_fit();
        }
    }

    /// Keys with a local copy.
    pub fn tracked_keys(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{GcraReply, WindowState};
    use async_trait::async_trait;

    /// An in-memory [`SharedCounters`] on its own clock (microseconds), switchable off.
    #[derive(Debug, Default)]
    pub struct FakeCounters {
        pub now: AtomicU64,
        pub down: AtomicBool,
        tats: Mutex<HashMap<String, u64>>,
        windows: Mutex<HashMap<String, (u32, u64)>>,
        pub calls: AtomicU64,
    }

    impl FakeCounters {
        fn gate(&self) -> Result<u64, StoreError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("fake outage".into()));
            }
            Ok(self.now.load(Ordering::Relaxed))
        }
    }

    #[async_trait]
    impl SharedCounters for FakeCounters {
        async fn gcra(
            &self,
            key: &str,
            interval_us: u64,
            burst: u32,
        ) -> Result<GcraReply, StoreError> {
            let now = self.gate()?;
            let mut tats = lock(&self.tats);
            let tat = tats.get(key).copied().unwrap_or(0);
            Ok(match gcra_step(tat, now, interval_us, burst) {
                Step::Allowed {
                    tat,
                    remaining,
                    reset_us,
                } => {
                    tats.insert(key.to_owned(), tat);
                    GcraReply::Allowed {
                        remaining,
                        reset_us,
                    }
                }
                Step::Limited { retry_us } => GcraReply::Limited { retry_us },
            })
        }

        async fn gcra_add(
            &self,
            batch: &[(&str, u32)],
            interval_us: u64,
        ) -> Result<Vec<u64>, StoreError> {
            let now = self.gate()?;
            let mut tats = lock(&self.tats);
            Ok(batch
                .iter()
                .map(|(k, hits)| {
                    let tat = tats.get(*k).copied().unwrap_or(0).max(now)
                        + u64::from(*hits) * interval_us;
                    tats.insert((*k).to_owned(), tat);
                    tat - now
                })
                .collect())
        }

        async fn window_peek(&self, keys: &[&str]) -> Result<Vec<WindowState>, StoreError> {
            let now = self.gate()? / 1000;
            let w = lock(&self.windows);
            Ok(keys
                .iter()
                .map(|k| match w.get(*k) {
                    Some(&(count, end)) if end > now => WindowState {
                        count,
                        left_ms: end - now,
                    },
                    _ => WindowState::default(),
                })
                .collect())
        }

        async fn window_hit(&self, keys: &[&str], per_ms: u64) -> Result<(), StoreError> {
            let now = self.gate()? / 1000;
            let mut w = lock(&self.windows);
            for k in keys {
                let e = w.entry((*k).to_owned()).or_insert((0, now + per_ms));
                if e.1 <= now {
                    *e = (0, now + per_ms);
                }
                e.0 += 1;
            }
            Ok(())
        }

        async fn window_reset(&self, key: &str) -> Result<(), StoreError> {
            self.gate()?;
            lock(&self.windows).remove(key);
            Ok(())
        }
    }

    #[test]
    fn gcra_step_matches_governor_on_ten_per_minute() {
        let six = 6_000_000;
        let mut tat = 0;
        for n in 0..10u32 {
            match gcra_step(tat, 1_000, six, 10) {
                Step::Allowed {
                    tat: t,
                    remaining,
                    reset_us,
                } => {
                    assert_eq!(remaining, 9 - n);
                    assert_eq!(reset_us, u64::from(n + 1) * six);
                    tat = t;
                }
                other => panic!("{n}: {other:?}"),
            }
        }
        assert_eq!(
            gcra_step(tat, 1_000, six, 10),
            Step::Limited { retry_us: six }
        );
        assert!(matches!(
            gcra_step(tat, 1_000 + six, six, 10),
            Step::Allowed { remaining: 0, .. }
        ));
        // Odd inputs do not panic.
        let _ = gcra_step(u64::MAX, 0, u64::MAX, u32::MAX);
        assert!(matches!(gcra_step(u64::MAX, 0, 1, 1), Step::Limited { .. }));
        assert!(matches!(gcra_step(0, 0, 0, 0), Step::Allowed { .. }));
    }

    #[test]
    fn shared_names_are_stable_hashed_and_tag_free() {
        let a = shared_name("r:api:", "k", "key-1");
        assert_eq!(a, shared_name("r:api:", "k", "key-1"));
        assert_ne!(a, shared_name("r:api:", "s", "key-1"));
        assert_eq!(a.len(), "r:api:".len() + 32);
        assert!(!a.contains("key-1"));
        assert_eq!(key_prefix("r", "a{b}"), "r:a_b_:");
    }

    #[tokio::test]
    async fn approximate_learns_other_replicas_hits_at_each_sync() {
        let store = Arc::new(FakeCounters::default());
        let one = Approximate::new(SharedBackend::new(store.clone(), None), 6_000_000, 10);
        let two = Approximate::new(SharedBackend::new(store.clone(), None), 6_000_000, 10);
        let name = || "r:api:k".to_owned();
        // Replica one lets 6 through and syncs; replica two then sees only 4 left.
        for _ in 0..6 {
            assert!(matches!(one.check(1, name), Step::Allowed { .. }));
        }
        one.flush().await;
        assert!(matches!(two.check(9, name), Step::Allowed { .. }));
        two.flush().await;
        let through = (0..10)
            .filter(|_| matches!(two.check(9, name), Step::Allowed { .. }))
            .count();
        assert_eq!(through, 3, "7 counted globally before these");
        two.flush().await;
        // Replica one's copy is stale until its next sync (the documented bound): its next
        // check may pass, and once synced it refuses.
        let _ = one.check(1, name);
        one.flush().await;
        assert!(matches!(one.check(1, name), Step::Limited { .. }));
        assert_eq!(one.tracked_keys(), 1);

        // Store down: decisions stay local, the hits are not replayed later.
        store.down.store(true, Ordering::Relaxed);
        let three = Approximate::new(SharedBackend::new(store.clone(), None), 6_000_000, 10);
        assert!(matches!(
            three.check(2, || "r:api:j".into()),
            Step::Allowed { .. }
        ));
        three.flush().await;
        assert!(three.backend.is_down());
        assert!(matches!(
            three.check(2, || "r:api:j".into()),
            Step::Allowed { .. }
        ));
        store.down.store(false, Ordering::Relaxed);
        three.flush().await;
        assert!(three.backend.is_down(), "not asked again before RETRY_DOWN");
        assert!(matches!(
            three.check(2, || "r:api:j".into()),
            Step::Allowed { .. }
        ));
        three.backend.retry_now();
        three.flush().await;
        assert!(!three.backend.is_down());
        assert_eq!(
            store.gcra_add(&[("r:api:j", 0)], 6_000_000).await.unwrap(),
            [6_000_000]
        );
    }
}
