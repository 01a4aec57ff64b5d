//! The in-process cache in front of the [`Store`] for the proxy path's hot lookups: API keys
//! by hash, users by id, session liveness by id, and verified tokens by hash.
//!
//! Owns: how long an answer of the store may be reused (positive entries for `cache.ttl`,
//! "no such record" for the shorter `cache.negative_ttl`, and never past the record's own
//! expiry), coalescing of concurrent misses for one key into a single store call
//! (single-flight), local invalidation after writes, and batching of API-key and session
//! `last_used_at` updates into one store write per flush.
//!
//! Must not touch: HTTP, credentials in plain form (everything is looked up by the SHA-256
//! the caller computed), the decision whether a record may authenticate (the caller still
//! checks [`ApiKey::is_active`] and `User::disabled`), and scheduling (the owner of the
//! cache calls [`AuthCache::flush_api_key_uses`] and [`AuthCache::flush_session_uses`] on its
//! own timer and the `evict_*` methods
//! after writes or on messages from other replicas, SPEC section 7).
//!
//! Store errors are never cached: the next lookup asks again. No lock is held across an
//! `.await`; the only locks are the short ones around the pending key and session uses.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::future::Cache;

use crate::config::CacheConfig;
use crate::store::{ApiKey, Invalidation, Session, Store, StoreError, TokenHash, UnixMillis, User};

/// How long entries live and how many there may be (the `cache` section of the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Lifetime of a positive entry (a record that exists), and the longest any entry lives.
    pub ttl: Duration,
    /// Lifetime of a negative entry (no such record), so a flood of unknown credentials
    /// reaches the store once per distinct credential per `negative_ttl`.
    pub negative_ttl: Duration,
    /// Bound on the number of entries of each cache (API keys, users, sessions).
    pub max_entries: u64,
}

impl From<&CacheConfig> for CacheSettings {
    fn from(config: &CacheConfig) -> Self {
        CacheSettings {
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            max_entries: config.max_entries,
        }
    }
}

/// One cached answer of the store: the record (`None`: it does not exist) and how long the
/// answer may be reused, fixed when it was loaded.
#[derive(Clone)]
struct Cached<V> {
    value: Option<V>,
    lifetime: Duration,
    /// When the entry expires (load time + `lifetime`).
    expires: Instant,
}

impl<V> Cached<V> {
    fn new(value: Option<V>, lifetime: Duration) -> Self {
        Cached {
            value,
            lifetime,
            expires: Instant::now() + lifetime,
        }
    }
}

/// The earliest expiry of the cache entries an answer was derived from: something built
/// from several lookups (a principal) may be reused until then and no longer, so it is
/// never staler than the entries themselves (at most `cache.ttl`).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub until: Instant,
}

impl Validity {
    /// Starts at `ttl` from now; each lookup can only shorten it.
    pub fn new(ttl: Duration) -> Validity {
        Validity {
            until: Instant::now() + ttl,
        }
    }

    fn narrow(&mut self, until: Instant) {
        self.until = self.until.min(until);
    }

    /// Not past `deadline` (milliseconds since the epoch, judged at `now`).
    pub fn narrow_to(&mut self, deadline: UnixMillis, now: UnixMillis) {
        let left = u64::try_from(deadline.saturating_sub(now)).unwrap_or(0);
        self.narrow(Instant::now() + Duration::from_millis(left));
    }
}

/// What the session cache keeps of a session: just enough to decide liveness at any `now`.
#[derive(Debug, Clone, Copy)]
struct SessionState {
    expires_at: UnixMillis,
    revoked_at: Option<UnixMillis>,
}

impl SessionState {
    fn is_active(self, now: UnixMillis) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// Per-entry expiry: every entry carries the lifetime computed when it was loaded (see
/// [`AuthCache::lifetime`] and [`TokenCache::insert`]). An update (an overwrite by
/// `insert`) restarts the clock with the new value's lifetime.
///
/// No `time_to_live` on the builders on top of this: every lifetime is already at most
/// `ttl`, and moka's builder panics on a `time_to_live` over 1000 years.
struct OwnLifetime;

impl<K, V> Expiry<K, Cached<V>> for OwnLifetime {
    fn expire_after_create(&self, _: &K, value: &Cached<V>, _: Instant) -> Option<Duration> {
        Some(value.lifetime)
    }

    fn expire_after_update(
        &self,
        _: &K,
        value: &Cached<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

impl<K, T> Expiry<K, TokenEntry<T>> for OwnLifetime {
    fn expire_after_create(&self, _: &K, entry: &TokenEntry<T>, _: Instant) -> Option<Duration> {
        Some(entry.lifetime)
    }

    fn expire_after_update(
        &self,
        _: &K,
        entry: &TokenEntry<T>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }
}

/// The cache of store lookups on the proxy path. Cheap to share behind an `Arc`; every
/// method takes `&self`.
pub struct AuthCache {
    store: Arc<dyn Store>,
    settings: CacheSettings,
    api_keys: Cache<TokenHash, Cached<Arc<ApiKey>>>,
    users: Cache<String, Cached<Arc<User>>>,
    sessions: Cache<String, Cached<SessionState>>,
    /// Bumped by every eviction, so a load that raced with one can drop what it inserted
    /// (see [`AuthCache::lookup`]).
    evictions: AtomicU64,
    lookups: AtomicU64,
    /// Key id -> latest use not yet written to the store.
    key_uses: PendingUses,
    /// Session id -> latest use not yet written to the store.
    session_uses: PendingUses,
}

/// Record id -> latest use at, noted in memory on the request path and written to the store
/// in batches.
#[derive(Default)]
struct PendingUses(Mutex<HashMap<String, UnixMillis>>);

impl PendingUses {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, UnixMillis>> {
        // The map stays consistent even if a holder panicked: every update is one insert.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the latest time per id.
    fn note(&self, id: &str, now: UnixMillis) {
        let mut uses = self.lock();
        // Look up before inserting so the common case (id already pending) allocates
        // nothing.
        if let Some(at) = uses.get_mut(id) {
            *at = (*at).max(now);
        } else {
            uses.insert(id.to_owned(), now);
        }
    }

    /// Everything pending, in a stable order (concurrent writers touch rows in the same
    /// order), leaving nothing pending.
    fn take(&self) -> Vec<(String, UnixMillis)> {
        let pending = std::mem::take(&mut *self.lock());
        let mut uses: Vec<(String, UnixMillis)> = pending.into_iter().collect();
        uses.sort_unstable();
        uses
    }

    /// Puts back uses whose write failed, keeping the later time where a newer use was
    /// noted meanwhile.
    fn put_back(&self, uses: Vec<(String, UnixMillis)>) {
        let mut pending = self.lock();
        for (id, at) in uses {
            let slot = pending.entry(id).or_insert(at);
            *slot = (*slot).max(at);
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

// Hand-written: the caches' keys are credential hashes and their values user records, none
// of which belongs in a log. Only sizes and settings are shown.
impl fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthCache")
            .field("store", &self.store.kind())
            .field("settings", &self.settings)
            .field("api_keys", &self.api_keys.entry_count())
            .field("users", &self.users.entry_count())
            .field("sessions", &self.sessions.entry_count())
            .field("store_lookups", &self.store_lookups())
            .field("pending_key_uses", &self.key_uses.len())
            .field("pending_session_uses", &self.session_uses.len())
            .finish()
    }
}

impl AuthCache {
    /// An empty cache over `store`.
    pub fn new(store: Arc<dyn Store>, settings: CacheSettings) -> AuthCache {
        AuthCache {
            store,
            settings,
            api_keys: bounded(settings.max_entries),
            users: bounded(settings.max_entries),
            sessions: bounded(settings.max_entries),
            evictions: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            key_uses: PendingUses::default(),
            session_uses: PendingUses::default(),
        }
    }

    /// The API key whose SHA-256 is `hash`, in any state: the caller checks
    /// [`ApiKey::is_active`] at its own `now` (an entry may be younger than the key's
    /// expiry by up to the clock skew between the cache's wall clock and the caller's).
    ///
    /// An entry lives `ttl`, but an active key's entry never past the key's own
    /// `expires_at`; an unknown hash is remembered for `negative_ttl`. Concurrent misses for
    /// one hash make one store call.
    pub async fn api_key(&self, hash: &TokenHash) -> Result<Option<Arc<ApiKey>>, StoreError> {
        self.api_key_within(hash, &mut Validity::new(self.settings.ttl))
            .await
    }

    /// [`AuthCache::api_key`], narrowing `validity` to the entry's expiry.
    pub async fn api_key_within(
        &self,
        hash: &TokenHash,
        validity: &mut Validity,
    ) -> Result<Option<Arc<ApiKey>>, StoreError> {
        let cached = self
            .lookup(&self.api_keys, hash, async {
                let key = self.store.get_api_key_by_hash(hash).await?;
                let lifetime = self.lifetime(
                    key.is_some(),
                    key.as_ref().and_then(|k| k.expires_at),
                    wall_clock_millis(),
                );
                Ok(Cached::new(key.map(Arc::new), lifetime))
            })
            .await?;
        validity.narrow(cached.expires);
        Ok(cached.value)
    }

    /// The user with this id (`None`, cached for `negative_ttl`, when there is none). The
    /// caller checks `disabled`.
    pub async fn user(&self, id: &str) -> Result<Option<Arc<User>>, StoreError> {
        self.user_within(id, &mut Validity::new(self.settings.ttl))
            .await
    }

    /// [`AuthCache::user`], narrowing `validity` to the entry's expiry.
    pub async fn user_within(
        &self,
        id: &str,
        validity: &mut Validity,
    ) -> Result<Option<Arc<User>>, StoreError> {
        let cached = self
            .lookup(&self.users, id, async {
                let user = self.store.get_user(id).await?;
                let lifetime = self.lifetime(user.is_some(), None, 0);
                Ok(Cached::new(user.map(Arc::new), lifetime))
            })
            .await?;
        validity.narrow(cached.expires);
        Ok(cached.value)
    }

    /// Whether the session exists, is not revoked and has not expired at `now`.
    ///
    /// The entry keeps the session's `expires_at` and `revoked_at`, and liveness is
    /// computed at `now` on every hit, so a cached session that expires meanwhile is
    /// reported inactive at once; the entry itself lives `ttl` but not past the session's
    /// expiry (unknown sessions: `negative_ttl`).
    pub async fn session_active(&self, id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        self.session_active_within(id, now, &mut Validity::new(self.settings.ttl))
            .await
    }

    /// [`AuthCache::session_active`], narrowing `validity` to the entry's expiry (which is
    /// never past the session's own).
    pub async fn session_active_within(
        &self,
        id: &str,
        now: UnixMillis,
        validity: &mut Validity,
    ) -> Result<bool, StoreError> {
        let cached = self
            .lookup(&self.sessions, id, async {
                let session = self.store.get_session(id).await?;
                let lifetime = self.lifetime(
                    session.is_some(),
                    session.as_ref().map(|s| s.expires_at),
                    now,
                );
                Ok(Cached::new(session.as_ref().map(session_state), lifetime))
            })
            .await?;
        validity.narrow(cached.expires);
        Ok(cached.value.is_some_and(|state| state.is_active(now)))
    }

    /// Forgets the key with this hash (after it was revoked or deleted here, or on a message
    /// from another replica).
    pub async fn evict_api_key(&self, hash: &TokenHash) {
        self.apply(&Invalidation::ApiKey(*hash)).await;
        self.publish(Invalidation::ApiKey(*hash)).await;
    }

    /// Forgets the user with this id (after an update, disable or delete).
    pub async fn evict_user(&self, id: &str) {
        self.apply(&Invalidation::User(id.to_owned())).await;
        self.publish(Invalidation::User(id.to_owned())).await;
    }

    /// Forgets the session with this id (after a logout or revocation).
    pub async fn evict_session(&self, id: &str) {
        self.apply(&Invalidation::Session(id.to_owned())).await;
        self.publish(Invalidation::Session(id.to_owned())).await;
    }

    /// Forgets everything: a replica that reconnects after losing the invalidation channel
    /// flushes what it may have missed.
    pub fn evict_all(&self) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        self.api_keys.invalidate_all();
        self.users.invalidate_all();
        self.sessions.invalidate_all();
    }

    /// Evicts `what` here only: for invalidations another replica published (and this
    /// one's own, echoed back by the channel).
    pub async fn apply(&self, what: &Invalidation) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        match what {
            Invalidation::User(id) => self.users.invalidate(id).await,
            Invalidation::Session(id) => self.sessions.invalidate(id).await,
            Invalidation::ApiKey(hash) => self.api_keys.invalidate(hash).await,
            Invalidation::All => self.evict_all(),
        }
    }

    /// Tells the other replicas. Best effort: when the channel is down the change itself
    /// usually failed too, and their cache entries still end with `cache.ttl`.
    async fn publish(&self, what: Invalidation) {
        if let Err(e) = self.store.publish_invalidation(&what).await {
            tracing::warn!(target: "gatehouse::cache", error = %e, "cannot publish a cache invalidation to the other replicas");
        }
    }

    /// Records that the key was used at `now`, in memory only; the next
    /// [`AuthCache::flush_api_key_uses`] writes it. Keeps the latest time per key.
    pub fn note_api_key_use(&self, key_id: &str, now: UnixMillis) {
        self.key_uses.note(key_id, now);
    }

    /// Records that the session was used at `now` (an authenticated request with its token
    /// or cookie), in memory only; the next [`AuthCache::flush_session_uses`] writes it.
    pub fn note_session_use(&self, session_id: &str, now: UnixMillis) {
        self.session_uses.note(session_id, now);
    }

    /// Writes every pending key use in one [`Store::record_api_key_use`] call and returns
    /// how many keys it wrote. On error the uses are put back (keeping the later time where
    /// a newer use was noted meanwhile) and the error returned. Uses noted while the write
    /// runs wait for the next flush.
    pub async fn flush_api_key_uses(&self) -> Result<usize, StoreError> {
        let uses = self.key_uses.take();
        if uses.is_empty() {
            return Ok(0);
        }
        match self.store.record_api_key_use(&uses).await {
            Ok(()) => Ok(uses.len()),
            Err(e) => {
                self.key_uses.put_back(uses);
                Err(e)
            }
        }
    }

    /// Writes every pending session use in one [`Store::record_session_use`] call, like
    /// [`AuthCache::flush_api_key_uses`] (put back on error), and returns how many sessions
    /// it wrote.
    pub async fn flush_session_uses(&self) -> Result<usize, StoreError> {
        let uses = self.session_uses.take();
        if uses.is_empty() {
            return Ok(0);
        }
        match self.store.record_session_use(&uses).await {
            Ok(()) => Ok(uses.len()),
            Err(e) => {
                self.session_uses.put_back(uses);
                Err(e)
            }
        }
    }

    /// Changes with every eviction: something derived from cached records before a
    /// change (a revoked key, a logout, an updated user) is recognisable as stale after it.
    pub fn generation(&self) -> u64 {
        self.evictions.load(Ordering::Acquire)
    }

    /// How many store lookups the cache has made (misses, negative ones included).
    pub fn store_lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The cached answer for `key`, or `load`'s, inserted; concurrent callers for one key
    /// wait for a single `load` (moka's coalescing). Errors are returned, not cached.
    async fn lookup<K, Q, V, F>(
        &self,
        cache: &Cache<K, Cached<V>>,
        key: &Q,
        load: F,
    ) -> Result<Cached<V>, StoreError>
    where
        K: Hash + Eq + Send + Sync + 'static,
        Q: moka::Equivalent<K> + ToOwned<Owned = K> + Hash + ?Sized,
        V: Clone + Send + Sync + 'static,
        F: Future<Output = Result<Cached<V>, StoreError>>,
    {
        // A load that started before an eviction may insert what the store said before the
        // write that caused it. The counter is read before the store is asked and compared
        // after the insert: if any eviction happened in between, the fresh entry is dropped
        // (the answer is still returned: it raced with the write). Evictions are bumped
        // before they invalidate, so one that comes after the insert removes the entry
        // itself. A false alarm costs one extra store lookup.
        let generation = self.evictions.load(Ordering::Acquire);
        let mut loaded = false;
        let cached = cache
            .try_get_with_by_ref(key, async {
                loaded = true;
                self.lookups.fetch_add(1, Ordering::Relaxed);
                load.await
            })
            .await
            .map_err(unshare)?;
        if loaded && self.evictions.load(Ordering::Acquire) != generation {
            cache.invalidate(key).await;
        }
        Ok(cached)
    }

    /// How long an answer loaded at `now` may be reused: `negative_ttl` for "not found";
    /// `ttl` for a record, but not past its own `deadline` when that is still ahead (a
    /// record already past it is in its final state and keeps `ttl`).
    fn lifetime(&self, found: bool, deadline: Option<UnixMillis>, now: UnixMillis) -> Duration {
        if !found {
            return self.settings.negative_ttl;
        }
        match deadline {
            Some(deadline) if deadline > now => self.settings.ttl.min(millis(deadline - now)),
            _ => self.settings.ttl,
        }
    }
}

/// A cache of verified tokens: the hash of a whole token (a JWT, say) to what verifying it
/// produced (its claims), so a token presented again skips signature verification. Each
/// entry lives until the token's own deadline, at most `ttl`.
///
/// The cache does not know about revocation: a caller that caches claims of a token bound
/// to a session still checks [`AuthCache::session_active`] on every hit.
pub struct TokenCache<T: Send + Sync + 'static> {
    cache: Cache<TokenHash, TokenEntry<T>>,
    ttl: Duration,
    max_entries: u64,
}

struct TokenEntry<T> {
    value: Arc<T>,
    lifetime: Duration,
}

// Not derived: that would require `T: Clone`, and only the `Arc` is cloned.
impl<T> Clone for TokenEntry<T> {
    fn clone(&self) -> Self {
        TokenEntry {
            value: Arc::clone(&self.value),
            lifetime: self.lifetime,
        }
    }
}

// Hand-written: keys are token hashes and values claims; only the size is shown.
impl<T: Send + Sync + 'static> fmt::Debug for TokenCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl<T: Send + Sync + 'static> TokenCache<T> {
    /// An empty cache of at most `max_entries` tokens, each kept at most `ttl`.
    pub fn new(max_entries: u64, ttl: Duration) -> TokenCache<T> {
        TokenCache {
            cache: bounded(max_entries),
            ttl,
            max_entries,
        }
    }

    /// What was cached for the token with this hash, if it has not expired.
    pub async fn get(&self, hash: &TokenHash) -> Option<Arc<T>> {
        self.cache.get(hash).await.map(|entry| entry.value)
    }

    /// Caches `value` for the token with this hash until `valid_until` (the token's `exp`,
    /// in milliseconds), at most `ttl` from now. A token already expired at `now` is not
    /// cached.
    pub async fn insert(
        &self,
        hash: TokenHash,
        value: Arc<T>,
        valid_until: UnixMillis,
        now: UnixMillis,
    ) {
        if valid_until <= now {
            return;
        }
        let lifetime = self.ttl.min(millis(valid_until - now));
        self.cache
            .insert(hash, TokenEntry { value, lifetime })
            .await;
    }

    /// Caches `value` until the instant `until`, at most `ttl` from now; nothing when
    /// `until` has passed.
    pub async fn insert_until(&self, hash: TokenHash, value: Arc<T>, until: Instant) {
        let lifetime = self
            .ttl
            .min(until.saturating_duration_since(Instant::now()));
        if lifetime.is_zero() {
            return;
        }
        self.cache
            .insert(hash, TokenEntry { value, lifetime })
            .await;
    }

    /// Approximate number of entries (for metrics; moka updates it lazily).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// A moka cache bounded by entry count with per-entry expiry.
fn bounded<K, V>(max_entries: u64) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    OwnLifetime: Expiry<K, V>,
{
    Cache::builder()
        .max_capacity(max_entries)
        .expire_after(OwnLifetime)
        .build()
}

fn session_state(session: &Session) -> SessionState {
    SessionState {
        expires_at: session.expires_at,
        revoked_at: session.revoked_at,
    }
}

/// A positive number of milliseconds as a `Duration` (zero for anything else).
fn millis(ms: UnixMillis) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Now, for [`AuthCache::api_key`], whose callers pass no time: only used to bound an
/// entry's lifetime by the key's expiry, never to decide whether the key is active.
fn wall_clock_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A `StoreError` out of the `Arc` moka shares among the callers of one coalesced load.
fn unshare(error: Arc<StoreError>) -> StoreError {
    Arc::try_unwrap(error).unwrap_or_else(|shared| match &*shared {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict { field } => StoreError::Conflict { field: *field },
        StoreError::InvalidCursor => StoreError::InvalidCursor,
        StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        StoreError::Internal(message) => StoreError::Internal(message.clone()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::conformance::random_hash;
    use crate::store::{ApiKeyKind, SqliteStore, UserPatch, new_id};

    const DAY: UnixMillis = 24 * 3_600_000;

    struct Rig {
        store: Arc<dyn Store>,
        cache: Arc<AuthCache>,
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn settings(negative_ttl: Duration) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(60),
            negative_ttl,
            max_entries: 1000,
        }
    }

    async fn rig_with(settings: CacheSettings) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.db");
        let opened = path.clone();
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || SqliteStore::open(opened))
                .await
                .unwrap()
                .unwrap(),
        );
        let cache = Arc::new(AuthCache::new(Arc::clone(&store), settings));
        Rig {
            store,
            cache,
            path,
            _dir: dir,
        }
    }

    async fn rig() -> Rig {
        rig_with(settings(Duration::from_millis(200))).await
    }

    fn now() -> UnixMillis {
        wall_clock_millis()
    }

    async fn new_user(store: &Arc<dyn Store>) -> User {
        let tag = new_id();
        let user = User {
            id: new_id(),
            email: Some(format!("{tag}@example.test")),
            username: Some(tag),
            name: Some("Cache Test".into()),
            external_id: None,
            email_verified: true,
            roles: vec!["user".into()],
            disabled: false,
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            mfa: None,
            created_at: now(),
            updated_at: now(),
        };
        store.create_user(&user).await.unwrap();
        user
    }

    async fn new_key(
        store: &Arc<dyn Store>,
        user_id: &str,
        expires_at: Option<UnixMillis>,
    ) -> ApiKey {
        let key = ApiKey {
            id: new_id(),
            user_id: user_id.to_owned(),
            kind: ApiKeyKind::Secret,
            name: "ci".into(),
            prefix: "sk_AbC".into(),
            key_hash: random_hash(),
            scopes: None,
            created_at: now(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        store.create_api_key(&key).await.unwrap();
        key
    }

    async fn new_session(store: &Arc<dyn Store>, user_id: &str, expires_at: UnixMillis) -> Session {
        let session = Session {
            id: new_id(),
            user_id: user_id.to_owned(),
            created_at: now(),
            last_used_at: now(),
            expires_at,
            user_agent: None,
            ip: None,
            amr: vec!["pwd".into()],
            revoked_at: None,
        };
        store.create_session(&session, None).await.unwrap();
        session
    }

    /// Makes the real store fail (`no such table`) until the returned closure puts the
    /// table back: a store outage without a fake store.
    fn break_table(path: &std::path::Path, table: &str) -> impl FnOnce() + use<> {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(&format!("ALTER TABLE {table} RENAME TO {table}_away"))
            .unwrap();
        let table = table.to_owned();
        move || {
            conn.execute_batch(&format!("ALTER TABLE {table}_away RENAME TO {table}"))
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_found_key_is_cached() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let key = new_key(&r.store, &user.id, None).await;

        let first = r.cache.api_key(&key.key_hash).await.unwrap().unwrap();
        let second = r.cache.api_key(&key.key_hash).await.unwrap().unwrap();
        assert_eq!(*first, key);
        assert!(Arc::ptr_eq(&first, &second), "a hit shares the cached Arc");
        assert_eq!(r.cache.store_lookups(), 1);
    }

    #[tokio::test]
    async fn an_unknown_key_is_cached_negatively_for_negative_ttl() {
        let r = rig().await;
        let bad = random_hash();
        for _ in 0..1000 {
            assert!(r.cache.api_key(&bad).await.unwrap().is_none());
        }
        assert_eq!(r.cache.store_lookups(), 1);

        // negative_ttl is 200 ms; positive entries would live 60 s.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(r.cache.api_key(&bad).await.unwrap().is_none());
        assert_eq!(r.cache.store_lookups(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_for_one_hash_make_one_store_call() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let key = new_key(&r.store, &user.id, None).await;
        let bad = random_hash();

        for hash in [key.key_hash, bad] {
            let before = r.cache.store_lookups();
            let barrier = Arc::new(tokio::sync::Barrier::new(50));
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let cache = Arc::clone(&r.cache);
                    let barrier = Arc::clone(&barrier);
                    tokio::spawn(async move {
                        barrier.wait().await;
                        cache.api_key(&hash).await.unwrap().map(|k| k.id.clone())
                    })
                })
                .collect();
            for task in tasks {
                let found = task.await.unwrap();
                assert_eq!(found.is_some(), hash == key.key_hash);
            }
            assert_eq!(r.cache.store_lookups() - before, 1);
        }
    }

    #[tokio::test]
    async fn eviction_makes_the_next_lookup_see_the_store() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let key = new_key(&r.store, &user.id, None).await;

        r.cache.api_key(&key.key_hash).await.unwrap().unwrap();
        r.cache.evict_api_key(&key.key_hash).await;
        r.cache.api_key(&key.key_hash).await.unwrap().unwrap();
        assert_eq!(r.cache.store_lookups(), 2);

        let revoked_at = now();
        r.store
            .revoke_api_key(&key.id, None, revoked_at)
            .await
            .unwrap();
        // Until evicted, the cache still answers with what it had.
        let stale = r.cache.api_key(&key.key_hash).await.unwrap().unwrap();
        assert_eq!(stale.revoked_at, None);
        r.cache.evict_api_key(&key.key_hash).await;
        let fresh = r.cache.api_key(&key.key_hash).await.unwrap().unwrap();
        assert_eq!(fresh.revoked_at, Some(revoked_at));
        assert!(!fresh.is_active(now()));
    }

    #[tokio::test]
    async fn a_key_entry_does_not_outlive_the_keys_expiry() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let key = new_key(&r.store, &user.id, Some(now() + 150)).await;

        assert!(r.cache.api_key(&key.key_hash).await.unwrap().is_some());
        assert!(r.cache.api_key(&key.key_hash).await.unwrap().is_some());
        assert_eq!(r.cache.store_lookups(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let expired = r.cache.api_key(&key.key_hash).await.unwrap().unwrap();
        assert_eq!(r.cache.store_lookups(), 2);
        assert!(!expired.is_active(now()));
        // Expired is final: that answer is kept for the full ttl.
        r.cache.api_key(&key.key_hash).await.unwrap().unwrap();
        assert_eq!(r.cache.store_lookups(), 2);
    }

    #[tokio::test]
    async fn store_errors_are_returned_and_not_cached() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let key = new_key(&r.store, &user.id, None).await;

        let restore = break_table(&r.path, "api_keys");
        assert!(r.cache.api_key(&key.key_hash).await.is_err());
        assert!(r.cache.api_key(&key.key_hash).await.is_err());
        assert_eq!(r.cache.store_lookups(), 2);
        restore();
        assert!(r.cache.api_key(&key.key_hash).await.unwrap().is_some());
        assert_eq!(r.cache.store_lookups(), 3);
    }

    #[tokio::test]
    async fn session_liveness_is_cached_and_computed_at_now() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let t = now();
        let session = new_session(&r.store, &user.id, t + 30 * DAY).await;

        assert!(r.cache.session_active(&session.id, t).await.unwrap());
        assert!(r.cache.session_active(&session.id, t + 1).await.unwrap());
        assert_eq!(r.cache.store_lookups(), 1);

        // Past its expiry the cached session is inactive, without asking the store.
        let later = session.expires_at;
        assert!(!r.cache.session_active(&session.id, later).await.unwrap());
        assert_eq!(r.cache.store_lookups(), 1);

        r.store
            .revoke_session(&session.id, None, t + 2)
            .await
            .unwrap();
        assert!(r.cache.session_active(&session.id, t + 3).await.unwrap());
        r.cache.evict_session(&session.id).await;
        assert!(!r.cache.session_active(&session.id, t + 3).await.unwrap());
        assert_eq!(r.cache.store_lookups(), 2);

        let unknown = new_id();
        assert!(!r.cache.session_active(&unknown, t).await.unwrap());
        assert!(!r.cache.session_active(&unknown, t).await.unwrap());
        assert_eq!(r.cache.store_lookups(), 3);
    }

    #[tokio::test]
    async fn a_session_entry_does_not_outlive_the_sessions_expiry() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let session = new_session(&r.store, &user.id, now() + 150).await;

        assert!(r.cache.session_active(&session.id, now()).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!r.cache.session_active(&session.id, now()).await.unwrap());
        assert_eq!(r.cache.store_lookups(), 2);
    }

    #[tokio::test]
    async fn user_changes_are_visible_after_eviction() {
        let r = rig().await;
        let user = new_user(&r.store).await;

        let cached = r.cache.user(&user.id).await.unwrap().unwrap();
        assert!(!cached.disabled);
        let patch = UserPatch {
            disabled: Some(true),
            ..UserPatch::default()
        };
        r.store.update_user(&user.id, &patch, now()).await.unwrap();
        assert!(!r.cache.user(&user.id).await.unwrap().unwrap().disabled);
        assert_eq!(r.cache.store_lookups(), 1);

        r.cache.evict_user(&user.id).await;
        assert!(r.cache.user(&user.id).await.unwrap().unwrap().disabled);
        assert_eq!(r.cache.store_lookups(), 2);

        let unknown = new_id();
        assert!(r.cache.user(&unknown).await.unwrap().is_none());
        assert!(r.cache.user(&unknown).await.unwrap().is_none());
        assert_eq!(r.cache.store_lookups(), 3);
    }

    #[tokio::test]
    async fn evict_all_forgets_every_entry() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let key = new_key(&r.store, &user.id, None).await;
        let session = new_session(&r.store, &user.id, now() + DAY).await;

        r.cache.api_key(&key.key_hash).await.unwrap();
        r.cache.user(&user.id).await.unwrap();
        r.cache.session_active(&session.id, now()).await.unwrap();
        assert_eq!(r.cache.store_lookups(), 3);
        r.cache.evict_all();
        r.cache.api_key(&key.key_hash).await.unwrap();
        r.cache.user(&user.id).await.unwrap();
        r.cache.session_active(&session.id, now()).await.unwrap();
        assert_eq!(r.cache.store_lookups(), 6);
    }

    #[tokio::test]
    async fn a_load_that_races_an_eviction_is_not_kept() {
        let r = rig().await;
        let user = new_user(&r.store).await;

        // An eviction between reading the generation and inserting (simulated by bumping
        // it from inside the load) must not leave the loaded answer cached.
        let cached = r
            .cache
            .lookup(&r.cache.users, user.id.as_str(), async {
                r.cache.evict_user(&user.id).await;
                Ok(Cached::new(
                    Some(Arc::new(user.clone())),
                    Duration::from_secs(60),
                ))
            })
            .await
            .unwrap();
        assert!(
            cached.value.is_some(),
            "the racing caller still gets its answer"
        );
        assert_eq!(r.cache.store_lookups(), 1);
        r.cache.user(&user.id).await.unwrap().unwrap();
        assert_eq!(r.cache.store_lookups(), 2, "the raced entry was dropped");
    }

    #[tokio::test]
    async fn token_entries_expire_at_their_own_deadline() {
        let tokens: TokenCache<String> = TokenCache::new(100, Duration::from_secs(60));
        let hash = random_hash();
        let t = now();
        tokens
            .insert(hash, Arc::new("claims".into()), t + 150, t)
            .await;
        assert_eq!(
            tokens.get(&hash).await.as_deref().map(String::as_str),
            Some("claims")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(tokens.get(&hash).await.is_none());

        let expired = random_hash();
        tokens.insert(expired, Arc::new("old".into()), t, t).await;
        tokens
            .insert(expired, Arc::new("old".into()), t - 1, t)
            .await;
        assert!(tokens.get(&expired).await.is_none());
    }

    #[tokio::test]
    async fn token_entries_are_capped_by_ttl() {
        let tokens: TokenCache<u32> = TokenCache::new(100, Duration::from_millis(150));
        let hash = random_hash();
        let t = now();
        tokens.insert(hash, Arc::new(7), t + DAY, t).await;
        assert_eq!(tokens.get(&hash).await.as_deref(), Some(&7));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(tokens.get(&hash).await.is_none());
    }

    #[tokio::test]
    async fn the_token_cache_is_bounded() {
        let max = 200;
        let tokens: TokenCache<u64> = TokenCache::new(max, Duration::from_secs(60));
        let t = now();
        for i in 0..max + 100 {
            tokens.insert(random_hash(), Arc::new(i), t + DAY, t).await;
        }
        tokens.cache.run_pending_tasks().await;
        assert!(tokens.entry_count() <= max, "{}", tokens.entry_count());
        assert!(tokens.entry_count() > 0);
    }

    #[tokio::test]
    async fn key_uses_are_flushed_in_one_write_with_the_latest_time() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let a = new_key(&r.store, &user.id, None).await;
        let b = new_key(&r.store, &user.id, None).await;
        let t = now();
        for i in 0..100 {
            let id = if i % 2 == 0 { &a.id } else { &b.id };
            r.cache.note_api_key_use(id, t + i);
        }
        // Out of order: an older use never moves the time back.
        r.cache.note_api_key_use(&a.id, t);

        assert_eq!(r.cache.flush_api_key_uses().await.unwrap(), 2);
        let stored_a = r.store.get_api_key(&a.id).await.unwrap().unwrap();
        let stored_b = r.store.get_api_key(&b.id).await.unwrap().unwrap();
        assert_eq!(stored_a.last_used_at, Some(t + 98));
        assert_eq!(stored_b.last_used_at, Some(t + 99));
        assert_eq!(r.cache.flush_api_key_uses().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn key_uses_survive_a_failed_flush() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let key = new_key(&r.store, &user.id, None).await;
        let t = now();
        r.cache.note_api_key_use(&key.id, t + 5);

        let restore = break_table(&r.path, "api_keys");
        assert!(r.cache.flush_api_key_uses().await.is_err());
        restore();
        // A use noted after the failure, older than the one put back: the later time wins.
        r.cache.note_api_key_use(&key.id, t + 1);
        assert_eq!(r.cache.flush_api_key_uses().await.unwrap(), 1);
        let stored = r.store.get_api_key(&key.id).await.unwrap().unwrap();
        assert_eq!(stored.last_used_at, Some(t + 5));
    }

    #[tokio::test]
    async fn session_uses_are_flushed_with_the_latest_time_and_survive_a_failure() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let session = new_session(&r.store, &user.id, now() + DAY).await;
        // Later than the creation time, whatever the clock did meanwhile.
        let t = session.last_used_at + 1;
        for i in 0..50 {
            r.cache.note_session_use(&session.id, t + i);
        }
        r.cache.note_session_use(&session.id, t + 3);
        r.cache.note_session_use(&new_id(), t + 9); // deleted meanwhile: skipped
        assert_eq!(r.cache.flush_session_uses().await.unwrap(), 2);
        let stored = r.store.get_session(&session.id).await.unwrap().unwrap();
        assert_eq!(stored.last_used_at, t + 49);
        assert_eq!(r.cache.flush_session_uses().await.unwrap(), 0);

        r.cache.note_session_use(&session.id, t + 100);
        let restore = break_table(&r.path, "sessions");
        assert!(r.cache.flush_session_uses().await.is_err());
        restore();
        r.cache.note_session_use(&session.id, t + 60);
        assert_eq!(r.cache.flush_session_uses().await.unwrap(), 1);
        let stored = r.store.get_session(&session.id).await.unwrap().unwrap();
        assert_eq!(stored.last_used_at, t + 100);
    }

    #[tokio::test]
    async fn debug_output_shows_no_records_or_hashes() {
        let r = rig().await;
        let user = new_user(&r.store).await;
        let key = new_key(&r.store, &user.id, None).await;
        r.cache.api_key(&key.key_hash).await.unwrap();
        r.cache.user(&user.id).await.unwrap();
        r.cache.note_api_key_use(&key.id, now());
        let shown = format!("{:?}", r.cache);
        assert!(
            !shown.contains(&user.id) && !shown.contains(&key.id),
            "{shown}"
        );
        assert!(!shown.contains("argon2"), "{shown}");
        let tokens: TokenCache<String> = TokenCache::new(10, Duration::from_secs(1));
        tokens
            .insert(
                key.key_hash,
                Arc::new("secret-claims".into()),
                now() + 1000,
                now(),
            )
            .await;
        assert!(!format!("{tokens:?}").contains("secret-claims"));
    }

    #[test]
    fn settings_come_from_the_config() {
        let config = CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 100_000,
        };
        assert_eq!(
            CacheSettings::from(&config),
            CacheSettings {
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(5),
                max_entries: 100_000,
            }
        );
    }
}
