//! Per-route request limits on the proxy path (SPEC sections 2 and 4): GCRA through the
//! `governor` crate, one keyed limiter per route, keys being hashed credentials, user ids or
//! client IPs.
//!
//! Owns: [`RouteLimiter`] (a policy's quota, its state per key, the bound on that state's
//! memory and the IETF `RateLimit-Policy` / `RateLimit` header values), [`key_of`] (the keyed
//! hash callers turn a credential, user id or IP into a key with) and [`RouteLimiters`] (the
//! limiters of one config snapshot, by route index).
//!
//! Must not touch: HTTP beyond building header values, the store beyond its
//! [`SharedCounters`](crate::store::SharedCounters) (through [`super::shared`]), the router.
//! Which key a request has (`LimitKey`, [`Who`]) is the caller's business; this module only
//! counts. With a shared store, a limiter's buckets live in Redis (exact mode) or are local
//! copies synced in the background (approximate mode); see [`super::shared`].
//!
//! Time comes from a governor [`Clock`]: production uses the default (quanta) clock, tests a
//! `FakeRelativeClock` they advance, so nothing sleeps.
//!
//! Quota: `requests` per `per` sustained (one request replenished every `per / requests`),
//! `burst` at once. Odd policies never panic (config validation rejects them first):
//! `requests: 0` refuses every request (`Retry-After` = `per`, at least 1 s); `burst: 0` acts
//! as `burst: 1`; an emission interval under 1 ns (`per: 0`, or more than 10^9 requests per
//! second) is 1 ns, in effect unlimited; governor counts nanoseconds in a `u64` (~584 years)
//! and overflows past that, so the interval is at most 100 years and a burst that would take
//! longer than that to refill is cut down to what refills in 100 years (stricter, not looser).

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::HeaderValue;

use crate::config::{LimitKey, LimitMode, RateLimitPolicy};
use crate::ratelimit::shared::{self, Approximate, SharedBackend, Step};
use crate::store::GcraReply;

/// Above this many tracked keys, [`RouteLimiter::check`] sweeps idle keys itself (besides the
/// server's periodic [`RouteLimiter::housekeeping`]). After a sweep the bound becomes twice
/// what is left, if more: keys still inside their replenish period cannot be dropped without
/// forgetting their limit, and re-sweeping a map of live keys on every check would burn CPU.
const SWEEP_ABOVE: usize = 100_000;

/// How often (in checks, per thread) `check` looks at the number of tracked keys: counting
/// takes every shard's lock, so not on every call. A thread-local counter, so the hot path
/// shares no cache line between cores.
const LEN_CHECK_EVERY: u32 = 1024;

/// Longest time a bucket may take to refill completely; see the module docs.
const MAX_FILL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

const NANOS_PER_SEC: u64 = 1_000_000_000;

thread_local! {
    static CHECKS: Cell<u32> = const { Cell::new(0) };
}

/// The production limiter: governor's default (quanta) clock.
pub type Limiter = RouteLimiter<DefaultClock>;

/// The per-process key of [`key_of`], random so that clients cannot aim at collisions.
static KEY_HASH: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// The limiter key of a credential, user id or IP (anything hashable: `&str`, `IpAddr`, ...):
/// a SipHash keyed per process. Two clients share a bucket only on a 64-bit collision.
pub fn key_of<T: Hash + ?Sized>(value: &T) -> u64 {
    KEY_HASH.hash_one(value)
}

/// Hashing of keys in the state map. Keys are already uniform and unpredictable (from
/// [`key_of`]), so a multiply spreads them over the map's shards and control bytes without a
/// second SipHash (measured: cheaper per check than the stock SipHash map at 8k and 131k
/// keys, though this one also takes the state snapshot). The multiply also spreads keys that
/// are not uniform (small integers), but only `key_of` makes them unpredictable: raw
/// client-chosen values (an IPv6 address as bits) could be aimed at one shard.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PreHashed;

#[derive(Debug, Default)]
pub(crate) struct PreHashedHasher(u64);

impl BuildHasher for PreHashed {
    type Hasher = PreHashedHasher;

    fn build_hasher(&self) -> PreHashedHasher {
        PreHashedHasher(0)
    }
}

impl Hasher for PreHashedHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are stored; this keeps the hasher correct for anything else.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn finish(&self) -> u64 {
        // Fibonacci hashing: odd multiplier, so a bijection on u64.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// Who a request is counted as: the caller's credential, user id or address.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// An API key's id.
    Key(&'a str),
    /// A session's id (token or cookie).
    Session(&'a str),
    /// A user's id.
    User(&'a str),
    /// The client's address.
    Ip(std::net::IpAddr),
}

impl Who<'_> {
    /// The key of this process's local buckets ([`key_of`]).
    pub fn local_key(&self) -> u64 {
        match self {
            Who::Key(k) => key_of(&("k", k)),
            Who::Session(s) => key_of(&("s", s)),
            Who::User(u) => key_of(&("u", u)),
            Who::Ip(ip) => key_of(ip),
        }
    }

    /// The name of its bucket in the shared store (the same on every replica).
    fn shared_name(&self, prefix: &str) -> String {
        match self {
            Who::Key(k) => shared::shared_name(prefix, "k", k),
            Who::Session(s) => shared::shared_name(prefix, "s", s),
            Who::User(u) => shared::shared_name(prefix, "u", u),
            Who::Ip(ip) => shared::shared_name(prefix, "ip", &ip.to_string()),
        }
    }
}

/// How a limiter shares its buckets with other replicas (store `redis` only).
enum Sharing {
    /// One round trip per check.
    Exact {
        backend: Arc<SharedBackend>,
        prefix: String,
        interval_us: u64,
    },
    /// Local copies synced in the background.
    Approximate {
        state: Arc<Approximate>,
        prefix: String,
    },
}

/// governor's keyed GCRA with the state snapshot on allowed requests (for `remaining`).
type Gcra<C> = RateLimiter<u64, DashMapStateStore<u64, PreHashed>, C, StateInformationMiddleware>;

/// What [`RouteLimiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Let through. `remaining`: how many more requests this key may send right now;
    /// `reset_secs`: seconds until its bucket is full again (rounded up; see
    /// [`RouteLimiter::check`]).
    Allowed { remaining: u32, reset_secs: u64 },
    /// Refused (429); a request is allowed again in `retry_after_secs` (rounded up, >= 1).
    Limited { retry_after_secs: u64 },
}

impl RateDecision {
    /// Whether the request may go on.
    pub fn is_allowed(&self) -> bool {
        matches!(self, RateDecision::Allowed { .. })
    }
}

/// One route's (or the default policy's) limit: GCRA per key over `u64` keys, which must come
/// from [`key_of`]. Share it behind an `Arc`; every method takes `&self`.
pub struct RouteLimiter<C: Clock = DefaultClock> {
    name: String,
    /// As configured (before the clamps of the module docs).
    policy: RateLimitPolicy,
    /// `None` for `requests: 0`: every request is refused.
    gcra: Option<Gcra<C>>,
    /// Bucket size after the clamps of the module docs.
    burst: u32,
    /// Emission interval (one request replenished per this many nanoseconds), >= 1.
    interval_nanos: u64,
    /// `Retry-After` when `gcra` is `None`.
    deny_retry_secs: u64,
    policy_header: HeaderValue,
    /// `"<name>";r=`, the start of every `RateLimit` value.
    item_prefix: String,
    /// Floor of `sweep_above` (SWEEP_ABOVE; lower in tests).
    min_sweep_above: usize,
    /// `check` sweeps when more keys than this are tracked.
    sweep_above: AtomicUsize,
    sweeping: AtomicBool,
    /// `None`: this process alone (SQLite, or `requests: 0`).
    sharing: Option<Sharing>,
}

impl<C: Clock> fmt::Debug for RouteLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLimiter")
            .field("name", &self.name)
            .field("key", &self.policy.key)
            .field("policy", &self.policy_header)
            .field("burst", &self.burst)
            .field("tracked_keys", &self.tracked_keys())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter for `policy` on the real clock; `name` is the route's name, or `"default"`
    /// for `rate_limits.default`, and names the policy in the headers.
    pub fn new(policy: &RateLimitPolicy, name: &str) -> Self {
        Self::new_with_clock(policy, name, DefaultClock::default())
    }
}

impl<C: Clock> RouteLimiter<C> {
    /// A limiter for `policy` on `clock` (tests: governor's `FakeRelativeClock`).
    pub fn new_with_clock(policy: &RateLimitPolicy, name: &str, clock: C) -> Self {
        let interval = match policy.requests {
            0 => MAX_FILL,
            n => policy.per / n,
        }
        .clamp(Duration::from_nanos(1), MAX_FILL);
        let max_burst = (duration_nanos(MAX_FILL) / duration_nanos(interval)).max(1);
        let burst = policy
            .burst
            .clamp(1, u32::try_from(max_burst).unwrap_or(u32::MAX));
        let quota = Quota::with_period(interval).map(|q| q.allow_burst(nonzero(burst)));
        let gcra = match (policy.requests, quota) {
            (0, _) | (_, None) => None, // None: unreachable, interval >= 1 ns
            (_, Some(quota)) => Some(
                RateLimiter::dashmap_with_clock_and_hasher(quota, clock, PreHashed)
                    .with_middleware::<StateInformationMiddleware>(),
            ),
        };
        let item = sf_string(name);
        let window_secs = window_secs(policy.per);
        let policy_header = header_value(policy_value(name, policy.requests, window_secs));
        RouteLimiter {
            name: name.to_owned(),
            policy: policy.clone(),
            gcra,
            burst,
            interval_nanos: duration_nanos(interval),
            deny_retry_secs: window_secs,
            policy_header,
            item_prefix: format!("{item};r="),
            min_sweep_above: SWEEP_ABOVE,
            sweep_above: AtomicUsize::new(SWEEP_ABOVE),
            sweeping: AtomicBool::new(false),
            sharing: None,
        }
    }

    /// Shares the buckets through `backend` in the policy's mode, under the route's name
    /// (one bucket set per route, as locally). Approximate mode starts its background sync,
    /// so this must run inside a Tokio runtime.
    pub fn shared_through(mut self, route: &str, backend: Option<&Arc<SharedBackend>>) -> Self {
        let (Some(backend), Some(_)) = (backend, &self.gcra) else {
            return self;
        };
        // The store counts microseconds: intervals under 1 us (over a million requests per
        // second per key) become 1 us.
        let interval_us = (self.interval_nanos / 1_000).max(1);
        let prefix = shared::key_prefix("r", route);
        self.sharing = Some(match self.policy.mode {
            LimitMode::Exact => Sharing::Exact {
                backend: Arc::clone(backend),
                prefix,
                interval_us,
            },
            LimitMode::Approximate => {
                let state = Approximate::new(Arc::clone(backend), interval_us, self.burst);
                state.spawn_flusher();
                Sharing::Approximate { state, prefix }
            }
        });
        self
    }

    /// Whether [`RouteLimiter::check_exact`] should be awaited for this request: the policy
    /// is shared in exact mode and the store is up (or due for another try). Otherwise
    /// [`RouteLimiter::check_who`] decides without waiting.
    pub fn round_trips(&self) -> bool {
        matches!(&self.sharing, Some(Sharing::Exact { backend, .. }) if backend.worth_trying())
    }

    /// Counts one request of `who` without waiting: local buckets, or approximate mode's
    /// local copies, or (exact mode while the store is down) the local fallback.
    pub fn check_who(&self, who: &Who<'_>) -> RateDecision {
        match &self.sharing {
            None => self.check(who.local_key()),
            Some(Sharing::Approximate { state, prefix }) => {
                step_decision(state.check(who.local_key(), || who.shared_name(prefix)))
            }
            Some(Sharing::Exact { backend, .. }) => {
                backend.fell_back();
                self.check(who.local_key())
            }
        }
    }

    /// Counts one request of `who` in the shared store (exact mode: one round trip); if the
    /// store fails, in the local buckets instead (the request is never failed for it).
    pub async fn check_exact(&self, who: &Who<'_>) -> RateDecision {
        let Some(Sharing::Exact {
            backend,
            prefix,
            interval_us,
        }) = &self.sharing
        else {
            return self.check_who(who);
        };
        if backend.try_claim() {
            let name = who.shared_name(prefix);
            match backend
                .counters()
                .gcra(&name, *interval_us, self.burst)
                .await
            {
                Ok(reply) => {
                    backend.succeeded();
                    return match reply {
                        GcraReply::Allowed {
                            remaining,
                            reset_us,
                        } => step_decision(Step::Allowed {
                            tat: 0,
                            remaining,
                            reset_us,
                        }),
                        GcraReply::Limited { retry_us } => {
                            step_decision(Step::Limited { retry_us })
                        }
                    };
                }
                Err(error) => backend.failed(&error),
            }
        }
        backend.fell_back();
        self.check(who.local_key())
    }

    /// The policy's name in the headers (the route's name or `"default"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests per window and the window in seconds, as `RateLimit-Policy` states them.
    pub fn quota(&self) -> (u32, u64) {
        (self.policy.requests, window_secs(self.policy.per))
    }

    /// What the caller should hash into the key: credential, user id or client IP.
    pub fn key_kind(&self) -> LimitKey {
        self.policy.key
    }

    /// Counts one request for `key` and decides.
    ///
    /// `remaining` is governor's `remaining_burst_capacity`. governor does not expose the
    /// bucket's exact refill time on an allowed request, so `reset_secs` is the time to
    /// replenish the `burst - remaining` requests in use, counting a partly replenished one
    /// in full: exact when requests arrive at emission-interval boundaries, otherwise late by
    /// less than one interval (`per / requests`), never early. `retry_after_secs` is exact
    /// (governor's `NotUntil`), rounded up.
    pub fn check(&self, key: u64) -> RateDecision {
        let Some(gcra) = &self.gcra else {
            return RateDecision::Limited {
                retry_after_secs: self.deny_retry_secs,
            };
        };
        self.maybe_sweep(gcra);
        match gcra.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                let in_use = u64::from(self.burst - remaining);
                RateDecision::Allowed {
                    remaining,
                    reset_secs: in_use
                        .saturating_mul(self.interval_nanos)
                        .div_ceil(NANOS_PER_SEC),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(gcra.clock().now());
                RateDecision::Limited {
                    retry_after_secs: ceil_secs(wait).max(1),
                }
            }
        }
    }

    /// `(RateLimit-Policy, RateLimit)` for a response under `decision`, per
    /// draft-ietf-httpapi-ratelimit-headers: `"<name>";q=<requests>;w=<per, seconds>` and
    /// `"<name>";r=<remaining>;t=<seconds>`, `t` being `reset_secs` when allowed and
    /// `retry_after_secs` (with `r=0`) when limited. `w` is `per` rounded up to whole seconds.
    pub fn headers(&self, decision: &RateDecision) -> (HeaderValue, HeaderValue) {
        let (r, t) = match *decision {
            RateDecision::Allowed {
                remaining,
                reset_secs,
            } => (remaining, reset_secs),
            RateDecision::Limited { retry_after_secs } => (0, retry_after_secs),
        };
        // Sized up front (format! would start empty and grow three times): 20 digits each.
        // itoa rather than `write!`: the formatting machinery was most of this function's
        // cost, and it runs on every proxied request.
        let mut value = String::with_capacity(self.item_prefix.len() + 43);
        let mut digits = itoa::Buffer::new();
        value.push_str(&self.item_prefix);
        value.push_str(digits.format(r));
        value.push_str(";t=");
        value.push_str(digits.format(t));
        let value = header_value(value);
        (self.policy_header.clone(), value)
    }

    /// Drops the keys whose buckets are full again (indistinguishable from a new key: idle
    /// for the bucket's refill time plus one interval) and gives their memory back. The server
    /// calls it every few seconds; `check` also calls it when the map grows past a bound. If
    /// another thread is already at it, returns at once.
    pub fn housekeeping(&self) {
        if let Some(Sharing::Approximate { state, .. }) = &self.sharing {
            state.housekeeping();
        }
        let Some(gcra) = &self.gcra else { return };
        if self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let _done = SweepDone(&self.sweeping);
        gcra.retain_recent();
        gcra.shrink_to_fit();
        let left = gcra.len();
        self.sweep_above.store(
            self.min_sweep_above.max(left.saturating_mul(2)),
            Ordering::Relaxed,
        );
    }

    /// How many keys have state (live buckets plus idle ones not yet swept).
    pub fn tracked_keys(&self) -> usize {
        let copies = match &self.sharing {
            Some(Sharing::Approximate { state, .. }) => state.tracked_keys(),
            _ => 0,
        };
        self.gcra.as_ref().map_or(0, |g| g.len()) + copies
    }

    fn maybe_sweep(&self, gcra: &Gcra<C>) {
        let due = CHECKS.with(|n| {
            let next = n.get().wrapping_add(1);
            n.set(next);
            next % LEN_CHECK_EVERY == 0
        });
        if due && gcra.len() > self.sweep_above.load(Ordering::Relaxed) {
            self.housekeeping();
        }
    }

    /// Whether this limiter enforces `policy` under `name` (a reload may keep it, buckets
    /// included).
    fn same_policy(&self, policy: &RateLimitPolicy, name: &str) -> bool {
        let p = &self.policy;
        self.name == name
            && (p.requests, p.per, p.burst, p.key, p.mode)
                == (
                    policy.requests,
                    policy.per,
                    policy.burst,
                    policy.key,
                    policy.mode,
                )
    }
}

/// Clears `sweeping` when a sweep ends, even by unwinding.
struct SweepDone<'a>(&'a AtomicBool);

impl Drop for SweepDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The limiters of one config snapshot: index `i` is `routes[i]`'s, its own `rate_limit` or
/// the default policy (named `"default"`; one limiter per route, so routes on the default
/// policy do not share buckets).
#[derive(Debug)]
pub struct RouteLimiters<C: Clock = DefaultClock> {
    /// (route name, its limiter), in route order.
    routes: Vec<(String, Arc<RouteLimiter<C>>)>,
}

impl RouteLimiters {
    /// Limiters for `routes` (each: the route's name and its own `rate_limit`, if any), in
    /// route order, on the real clock. From a `Config`: `RouteLimiters::new(&c.rate_limits.
    /// default, c.routes.iter().map(|r| (r.name.as_str(), r.rate_limit.as_ref())))`.
    pub fn new<'a>(
        default: &RateLimitPolicy,
        routes: impl IntoIterator<Item = (&'a str, Option<&'a RateLimitPolicy>)>,
        sharing: Option<&Arc<SharedBackend>>,
    ) -> Self {
        Self::build(default, routes, None, sharing, DefaultClock::default)
    }

    /// Like [`RouteLimiters::new`] for a reloaded config, keeping (buckets included) the
    /// limiter of every route whose name and effective policy are unchanged, so a reload does
    /// not hand every client a fresh burst.
    pub fn carry_over<'a>(
        &self,
        default: &RateLimitPolicy,
        routes: impl IntoIterator<Item = (&'a str, Option<&'a RateLimitPolicy>)>,
        sharing: Option<&Arc<SharedBackend>>,
    ) -> Self {
        Self::build(default, routes, Some(self), sharing, DefaultClock::default)
    }
}

impl<C: Clock> RouteLimiters<C> {
    fn build<'a>(
        default: &RateLimitPolicy,
        routes: impl IntoIterator<Item = (&'a str, Option<&'a RateLimitPolicy>)>,
        previous: Option<&Self>,
        sharing: Option<&Arc<SharedBackend>>,
        clock: impl Fn() -> C,
    ) -> Self {
        let routes = routes
            .into_iter()
            .map(|(route, own)| {
                let (policy, name) = match own {
                    Some(policy) => (policy, route),
                    None => (default, "default"),
                };
                let kept = previous
                    .and_then(|prev| prev.routes.iter().find(|(r, _)| r == route))
                    .filter(|(_, l)| l.same_policy(policy, name));
                let limiter = match kept {
                    Some((_, l)) => Arc::clone(l),
                    None => Arc::new(
                        RouteLimiter::new_with_clock(policy, name, clock())
                            .shared_through(route, sharing),
                    ),
                };
                (route.to_owned(), limiter)
            })
            .collect();
        RouteLimiters { routes }
    }

    /// The limiter of route `index` (the router's index into `config.routes`).
    pub fn get(&self, index: usize) -> Option<&Arc<RouteLimiter<C>>> {
        self.routes.get(index).map(|(_, l)| l)
    }

    /// [`RouteLimiter::housekeeping`] on every limiter.
    pub fn housekeeping(&self) {
        for (_, limiter) in &self.routes {
            limiter.housekeeping();
        }
    }

    /// Keys tracked over all limiters.
    pub fn tracked_keys(&self) -> usize {
        self.routes.iter().map(|(_, l)| l.tracked_keys()).sum()
    }
}

/// A shared store's answer as the headers state it: seconds, rounded up.
fn step_decision(step: Step) -> RateDecision {
    match step {
        Step::Allowed {
            remaining,
            reset_us,
            ..
        } => RateDecision::Allowed {
            remaining,
            reset_secs: reset_us.div_ceil(1_000_000),
        },
        Step::Limited { retry_us } => RateDecision::Limited {
            retry_after_secs: retry_us.div_ceil(1_000_000).max(1),
        },
    }
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

fn ceil_secs(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(u128::from(NANOS_PER_SEC))).unwrap_or(u64::MAX)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A policy's window as `RateLimit-Policy`'s `w`: whole seconds, rounded up, at least 1.
pub fn window_secs(per: Duration) -> u64 {
    ceil_secs(per).max(1)
}

/// `RateLimit-Policy: "<name>";q=<quota>;w=<window>` (draft-ietf-httpapi-ratelimit-headers);
/// every limiter's answers (route and account API, allowed and refused) use this form.
pub fn policy_value(name: &str, quota: u32, window_secs: u64) -> String {
    format!("{};q={quota};w={window_secs}", sf_string(name))
}

/// `RateLimit: "<name>";r=<remaining>;t=<seconds>`.
pub fn state_value(name: &str, remaining: u32, t: u64) -> String {
    format!("{};r={remaining};t={t}", sf_string(name))
}

/// `name` as a Structured Fields string (RFC 8941 3.3.3): quoted, `"` and `\` escaped, and
/// anything outside printable ASCII (not representable) replaced with `_`.
fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// Our values are printable ASCII by construction; the fallback is never used.
fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn policy(requests: u32, per: Duration, burst: u32) -> RateLimitPolicy {
        RateLimitPolicy {
            requests,
            per,
            burst,
            key: LimitKey::Credential,
            mode: LimitMode::Approximate,
        }
    }

    fn limiter(p: &RateLimitPolicy) -> (RouteLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RouteLimiter::new_with_clock(p, "api", clock.clone()), clock)
    }

    fn allowed(remaining: u32, reset_secs: u64) -> RateDecision {
        RateDecision::Allowed {
            remaining,
            reset_secs,
        }
    }

    fn limited(retry_after_secs: u64) -> RateDecision {
        RateDecision::Limited { retry_after_secs }
    }

    fn header_text(l: &RouteLimiter<FakeRelativeClock>, d: &RateDecision) -> (String, String) {
        let (p, r) = l.headers(d);
        (
            p.to_str().unwrap().to_owned(),
            r.to_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn burst_is_allowed_then_limited_with_exact_retry_after() {
        // One request per 2 s, 3 at once.
        let (l, clock) = limiter(&policy(1, 2 * SEC, 3));
        assert_eq!(l.check(1), allowed(2, 2));
        assert_eq!(l.check(1), allowed(1, 4));
        assert_eq!(l.check(1), allowed(0, 6));
        assert_eq!(l.check(1), limited(2));
        clock.advance(1500 * MS);
        assert_eq!(l.check(1), limited(1), "0.5 s left rounds up");
        clock.advance(500 * MS);
        assert_eq!(l.check(1), allowed(0, 6));
        assert_eq!(l.check(1), limited(2));
    }

    #[test]
    fn ten_per_minute_lets_exactly_ten_through_then_retry_after_six() {
        let (l, clock) = limiter(&policy(10, 60 * SEC, 10));
        for n in 0..10 {
            let d = l.check(7);
            assert_eq!(d, allowed(9 - n, 6 * u64::from(n + 1)), "request {}", n + 1);
        }
        assert_eq!(l.check(7), limited(6));
        assert_eq!(l.check(7), limited(6), "a refused request costs nothing");
        clock.advance(5999 * MS);
        assert_eq!(l.check(7), limited(1));
        clock.advance(MS);
        assert_eq!(l.check(7), allowed(0, 60));
        assert_eq!(l.check(7), limited(6));
    }

    #[test]
    fn replenishes_at_requests_per_period() {
        let (l, clock) = limiter(&policy(10, SEC, 10));
        for _ in 0..10 {
            assert!(l.check(1).is_allowed());
        }
        assert!(!l.check(1).is_allowed());
        // One request back every 100 ms, not more.
        clock.advance(100 * MS);
        assert!(l.check(1).is_allowed());
        assert_eq!(l.check(1), limited(1));
        // Sustained rate: one every 100 ms always goes through.
        for _ in 0..100 {
            clock.advance(100 * MS);
            assert_eq!(l.check(1), allowed(0, 1));
        }
        // Idle long enough, the bucket is full again, never fuller than `burst`.
        clock.advance(10 * SEC);
        let through = (0..20).filter(|_| l.check(1).is_allowed()).count();
        assert_eq!(through, 10);
    }

    #[test]
    fn keys_are_independent() {
        let (l, _clock) = limiter(&policy(5, SEC, 5));
        for _ in 0..5 {
            assert!(l.check(key_of("alice")).is_allowed());
        }
        assert!(!l.check(key_of("alice")).is_allowed());
        assert_eq!(l.check(key_of("bob")), allowed(4, 1));
        assert!(!l.check(key_of("alice")).is_allowed());
        assert_eq!(l.tracked_keys(), 2);
    }

    #[test]
    fn headers_have_the_draft_syntax() {
        let (l, _clock) = limiter(&policy(100, 60 * SEC, 100));
        let d = l.check(1);
        assert_eq!(d, allowed(99, 1));
        assert_eq!(
            header_text(&l, &d),
            (
                "\"api\";q=100;w=60".to_owned(),
                "\"api\";r=99;t=1".to_owned()
            )
        );
        for _ in 0..99 {
            assert!(l.check(1).is_allowed());
        }
        let d = l.check(1);
        assert_eq!(d, limited(1));
        assert_eq!(header_text(&l, &d).1, "\"api\";r=0;t=1");
        // SPEC section 4's example.
        assert_eq!(header_text(&l, &limited(42)).1, "\"api\";r=0;t=42");

        let clock = FakeRelativeClock::default();
        let d = RouteLimiter::new_with_clock(&policy(100, SEC, 200), "default", clock.clone());
        assert_eq!(
            header_text(&d, &allowed(199, 1)),
            (
                "\"default\";q=100;w=1".to_owned(),
                "\"default\";r=199;t=1".to_owned()
            )
        );
        // Names are Structured Fields strings; a sub-second `per` rounds `w` up to 1.
        let odd = RouteLimiter::new_with_clock(&policy(5, 500 * MS, 5), "a\"b\\c é", clock);
        assert_eq!(
            header_text(&odd, &allowed(4, 1)),
            (
                "\"a\\\"b\\\\c _\";q=5;w=1".to_owned(),
                "\"a\\\"b\\\\c _\";r=4;t=1".to_owned()
            )
        );
    }

    #[test]
    fn housekeeping_drops_keys_once_their_buckets_are_full_again() {
        // 10 per minute: one request refills in 6 s, a whole burst in 60 s.
        let (l, clock) = limiter(&policy(10, 60 * SEC, 10));
        for _ in 0..10 {
            assert!(l.check(0).is_allowed());
        }
        for k in 1..=99 {
            assert!(l.check(k).is_allowed());
        }
        l.housekeeping();
        assert_eq!(l.tracked_keys(), 100, "nothing is idle yet");
        clock.advance(30 * SEC);
        l.housekeeping();
        assert_eq!(
            l.tracked_keys(),
            1,
            "only the exhausted key is still refilling"
        );
        assert_eq!(l.check(0), allowed(4, 36), "and it kept its state");
        clock.advance(37 * SEC);
        l.housekeeping();
        assert_eq!(l.tracked_keys(), 1);
        clock.advance(6 * SEC);
        l.housekeeping();
        assert_eq!(l.tracked_keys(), 0);
        assert_eq!(
            l.check(0),
            allowed(9, 6),
            "a dropped key starts with a full bucket"
        );
    }

    #[test]
    fn a_flood_of_distinct_keys_is_swept() {
        // 200,000 keys at one instant: all live, so all kept; once refilled, all dropped.
        let (l, clock) = limiter(&policy(100, SEC, 200));
        for k in 0..200_000u64 {
            assert!(l.check(key_of(&k)).is_allowed());
        }
        assert_eq!(l.tracked_keys(), 200_000);
        clock.advance(3 * SEC);
        l.housekeeping();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn check_sweeps_by_itself_when_keys_churn() {
        // One request per key per second, a new key every 50 µs for 10 s: at any time ~40,000
        // keys are live (refill 1 s plus one interval). With the sweep bound at 10,000, `check`
        // sweeps and the map stays under twice the live set (plus one counting period).
        let (mut l, clock) = limiter(&policy(1, SEC, 1));
        l.min_sweep_above = 10_000;
        l.sweep_above = AtomicUsize::new(10_000);
        let mut most = 0;
        for k in 0..200_000u64 {
            clock.advance(Duration::from_micros(50));
            assert!(l.check(key_of(&k)).is_allowed());
            most = most.max(l.tracked_keys());
        }
        assert!(most > 40_000, "{most}");
        assert!(most <= 2 * 40_000 + 2 * LEN_CHECK_EVERY as usize, "{most}");
        clock.advance(3 * SEC);
        l.housekeeping();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn sweeping_never_forgets_a_limited_key() {
        let (mut l, clock) = limiter(&policy(1, 60 * SEC, 1));
        l.min_sweep_above = 1_000;
        l.sweep_above = AtomicUsize::new(1_000);
        assert!(l.check(u64::MAX).is_allowed());
        for k in 0..50_000u64 {
            clock.advance(MS);
            l.check(k);
        }
        // 50 s later: the early flood keys are live still (refill 60 s), the map was swept.
        assert_eq!(l.check(u64::MAX), limited(10));
    }

    #[test]
    fn odd_policies_do_not_panic() {
        let clock = FakeRelativeClock::default();
        let new = |p: RateLimitPolicy| RouteLimiter::new_with_clock(&p, "x", clock.clone());

        // requests: 0 refuses everything, Retry-After = per (>= 1 s).
        let zero = new(policy(0, 30 * SEC, 10));
        assert_eq!(zero.check(1), limited(30));
        assert_eq!(header_text(&zero, &limited(30)).0, "\"x\";q=0;w=30");
        zero.housekeeping();
        assert_eq!(zero.tracked_keys(), 0);
        assert_eq!(new(policy(0, Duration::ZERO, 0)).check(1), limited(1));

        // burst: 0 acts as 1.
        let b0 = new(policy(1, SEC, 0));
        assert_eq!(b0.check(1), allowed(0, 1));
        assert_eq!(b0.check(1), limited(1));

        // per: 0 and tiny intervals: 1 ns per request.
        for p in [
            policy(10, Duration::ZERO, 10),
            policy(10, Duration::from_nanos(1), 10),
            policy(u32::MAX, Duration::from_nanos(3), u32::MAX),
        ] {
            let l = new(p);
            assert!(l.check(1).is_allowed());
            clock.advance(Duration::from_micros(1));
            assert!(l.check(1).is_allowed());
            l.housekeeping();
        }

        // Enormous periods and bursts are clamped below governor's u64 nanoseconds (each on
        // its own clock: a fake clock itself cannot pass 584 years).
        for p in [
            policy(1, Duration::MAX, 1),
            policy(1, Duration::MAX, u32::MAX),
            policy(u32::MAX, Duration::MAX, u32::MAX),
            policy(1, Duration::from_secs(400 * 365 * 86_400), 2),
        ] {
            let clock = FakeRelativeClock::default();
            let l = RouteLimiter::new_with_clock(&p, "x", clock.clone());
            let first = l.check(1);
            assert!(first.is_allowed(), "{first:?}");
            for _ in 0..3 {
                l.check(1);
            }
            let _ = l.headers(&l.check(1));
            clock.advance(Duration::from_secs(150 * 365 * 86_400));
            l.check(1);
            l.check(2);
            l.housekeeping();
        }
        // ...by cutting the burst, not the interval: "one per forever" stays one per 100 years.
        let forever = new(policy(1, Duration::MAX, u32::MAX));
        assert!(forever.check(1).is_allowed());
        assert_eq!(forever.check(1), limited(MAX_FILL.as_secs()));
        let huge = new(policy(1, Duration::MAX, 1));
        assert_eq!(
            header_text(&huge, &limited(1)).0,
            format!("\"x\";q=1;w={}", u64::MAX)
        );
    }

    #[test]
    fn route_limiters_follow_the_routes_and_survive_reloads() {
        let default = policy(100, SEC, 200);
        let api = policy(50, SEC, 100);
        let clock = FakeRelativeClock::default();
        let routes = [("api", Some(&api)), ("web", None), ("static", None)];
        let first = RouteLimiters::build(&default, routes, None, None, || clock.clone());
        assert_eq!(first.get(0).unwrap().name(), "api");
        assert_eq!(first.get(1).unwrap().name(), "default");
        assert_eq!(first.get(2).unwrap().name(), "default");
        assert!(first.get(3).is_none());
        assert!(
            !Arc::ptr_eq(first.get(1).unwrap(), first.get(2).unwrap()),
            "one limiter per route"
        );
        first.get(0).unwrap().check(1);
        first.get(2).unwrap().check(1);
        assert_eq!(first.tracked_keys(), 2);

        // Reload: `api` changes its limit, `web` moves to its own policy, `static` is as was.
        let api2 = policy(60, SEC, 100);
        let routes = [
            ("api", Some(&api2)),
            ("web", Some(&default)),
            ("static", None),
        ];
        let second = RouteLimiters::build(&default, routes, Some(&first), None, || clock.clone());
        assert!(!Arc::ptr_eq(first.get(0).unwrap(), second.get(0).unwrap()));
        assert!(!Arc::ptr_eq(first.get(1).unwrap(), second.get(1).unwrap()));
        assert_eq!(second.get(1).unwrap().name(), "web");
        assert!(Arc::ptr_eq(first.get(2).unwrap(), second.get(2).unwrap()));
        assert_eq!(second.tracked_keys(), 1);
        second.housekeeping();

        // The real-clock constructors.
        let real = RouteLimiters::new(&default, [("api", Some(&api))], None);
        assert!(real.get(0).unwrap().check(key_of("k")).is_allowed());
        let again = real.carry_over(&default, [("api", Some(&api))], None);
        assert!(Arc::ptr_eq(real.get(0).unwrap(), again.get(0).unwrap()));
    }

    #[test]
    fn key_of_is_stable_within_the_process() {
        assert_eq!(key_of("sk_abc"), key_of(&"sk_abc".to_owned()));
        assert_ne!(key_of("sk_abc"), key_of("sk_abd"));
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        assert_eq!(key_of(&ip), key_of(&ip));
    }

    #[test]
    fn limiters_are_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Limiter>();
        shareable::<RouteLimiters>();
        shareable::<RouteLimiter<FakeRelativeClock>>();
        let l = Limiter::new(&policy(1000, SEC, 1000), "api");
        assert_eq!(l.key_kind(), LimitKey::Credential);
        assert!(format!("{l:?}").contains("\"api\""));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let l = &l;
                s.spawn(move || {
                    for k in 0..100 {
                        l.check(t * 1000 + k);
                    }
                });
            }
        });
        assert_eq!(l.tracked_keys(), 400);
    }

    #[tokio::test]
    async fn exact_mode_shares_buckets_and_falls_back_locally() {
        use crate::ratelimit::shared::tests::FakeCounters;
        use std::sync::atomic::Ordering;
        let store = Arc::new(FakeCounters::default());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let backend = SharedBackend::new(store.clone(), Some(metrics.clone()));
        let mut p = policy(10, 60 * SEC, 10);
        p.mode = LimitMode::Exact;
        let a = Limiter::new(&p, "default").shared_through("web", Some(&backend));
        let b = Limiter::new(&p, "default").shared_through("web", Some(&backend));
        let who = Who::Ip([10, 0, 0, 1].into());
        assert!(a.round_trips());
        for n in 0..10u32 {
            let l = if n % 2 == 0 { &a } else { &b };
            assert_eq!(
                l.check_exact(&who).await,
                allowed(9 - n, 6 * u64::from(n + 1))
            );
        }
        assert_eq!(a.check_exact(&who).await, limited(6));
        assert_eq!(b.check_exact(&who).await, limited(6));
        assert_eq!(a.tracked_keys(), 0, "nothing counted locally");

        // Down: decided by the local buckets, counted, and not asked again at once.
        store.down.store(true, Ordering::Relaxed);
        assert!(a.check_exact(&who).await.is_allowed());
        assert!(!a.round_trips());
        assert!(a.check_who(&who).is_allowed());
        assert!(
            metrics
                .encode()
                .contains("gatehouse_ratelimit_fallbacks_total 2")
        );
        let calls = store.calls.load(Ordering::Relaxed);
        assert_eq!(a.check_exact(&who).await, allowed(7, 18));
        assert_eq!(store.calls.load(Ordering::Relaxed), calls);

        // Back: shared again once the retry is due.
        store.down.store(false, Ordering::Relaxed);
        backend.retry_now();
        assert_eq!(a.check_exact(&who).await, limited(6));
        assert!(a.round_trips());
    }
}
