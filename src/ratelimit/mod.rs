//! Rate limiting of the account API: counters per key over a fixed window.
//!
//! Owns: the login-failure limiter (failed logins per account+IP and per IP, SPEC section 5)
//! and the plain request counters for register and the e-mail flows. The proxy path's
//! per-route limits are in [`route`], their sharing between replicas in [`shared`].
//!
//! Must not touch: HTTP, or the store beyond its [`SharedCounters`](crate::store::SharedCounters)
//! trait. Every local call takes `now` (milliseconds), so tests run on a fake clock and
//! nothing sleeps.
//!
//! With a shared store (Redis) the login limiter counts failures there, so they add up over
//! every replica: always one round trip per check (whatever the policy's `mode`: failed
//! logins are rare and each already costs an argon2 verification, so there is nothing to
//! gain by approximating), in fixed windows that start at the first failure and expire with
//! Redis's clock. Failures are counted locally as well, and while the store is unreachable
//! the local counts decide (per replica), as for routes.
//!
//! Fixed windows rather than GCRA here: the contract is stated as "N failures per window"
//! ("the 6th failed login in the window is 429"), a failure must be counted only after the
//! password was checked (a limiter that consumes on check cannot do that), and the
//! `Retry-After` a client sees is simply the end of its window.

pub mod route;
pub mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::ratelimit::shared::SharedBackend;
use crate::store::WindowState;

/// Milliseconds since the Unix epoch, as the rest of the account domain counts time.
pub type Millis = i64;

/// The address a per-IP limit counts under: an IPv4 address as is (also when it arrives
/// IPv4-mapped), an IPv6 address as its /64. One IPv6 host usually holds a whole /64 and can
/// pick a fresh address for every request, so counting per address would limit nothing.
pub fn limit_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// Above this many tracked keys, expired windows are swept before a new key is added, so a
/// flood of distinct keys (random usernames, many IPs) cannot grow memory without bound.
const SWEEP_ABOVE: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started_at: Millis,
    count: u32,
}

/// What a limiter check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Under the limit; `remaining` more are allowed in this window.
    Allowed { remaining: u32 },
    /// Over the limit until `retry_after` from now.
    Limited { retry_after: Duration },
}

impl Decision {
    /// Whether the request may go on.
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// Counters per key over fixed windows of a length given at each call (so a config reload
/// that changes the limit applies at once).
#[derive(Debug, Default)]
pub struct WindowCounter {
    windows: Mutex<HashMap<String, Window>>,
}

impl WindowCounter {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_windows<R>(&self, f: impl FnOnce(&mut HashMap<String, Window>) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of a counter; the
        // counts are still usable, and refusing every login would be worse.
        let mut guard = match self.windows.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Whether `key` is over `limit` in its current window, without counting anything.
    pub fn peek(&self, key: &str, limit: u32, per: Duration, now: Millis) -> Decision {
        let per_ms = duration_ms(per);
        self.with_windows(|windows| match windows.get(key) {
            Some(w) if now < w.started_at + per_ms => decide(w, limit, per_ms, now),
            _ => Decision::Allowed { remaining: limit },
        })
    }

    /// Counts one event for `key` and says whether it was within `limit` (the event that
    /// exceeds the limit is refused, and refused events are not counted).
    pub fn hit(&self, key: &str, limit: u32, per: Duration, now: Millis) -> Decision {
        let per_ms = duration_ms(per);
        self.with_windows(|windows| {
            if windows.len() >= SWEEP_ABOVE && !windows.contains_key(key) {
                windows.retain(|_, w| now < w.started_at + per_ms);
            }
            let w = windows.entry(key.to_owned()).or_insert(Window {
                started_at: now,
                count: 0,
            });
            if now >= w.started_at + per_ms {
                *w = Window {
                    started_at: now,
                    count: 0,
                };
            }
            match decide(w, limit, per_ms, now) {
                Decision::Allowed { remaining } => {
                    w.count += 1;
                    Decision::Allowed {
                        remaining: remaining.saturating_sub(1),
                    }
                }
                limited => limited,
            }
        })
    }

    /// Forgets `key` (a successful login clears its account's failures).
    pub fn reset(&self, key: &str) {
        self.with_windows(|windows| {
            windows.remove(key);
        });
    }

    /// Number of keys tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.with_windows(|windows| windows.len())
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn duration_ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX / 2)
}

fn decide(w: &Window, limit: u32, per_ms: Millis, now: Millis) -> Decision {
    if w.count < limit {
        Decision::Allowed {
            remaining: limit - w.count,
        }
    } else {
        let left = (w.started_at + per_ms - now).max(0);
        Decision::Limited {
            retry_after: Duration::from_millis(left as u64),
        }
    }
}

/// Failed logins per account+IP and per IP (SPEC section 5: password, API key and MFA code
/// failures all count).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    per_account: WindowCounter,
    per_ip: WindowCounter,
    /// Set once when the store is shared; until then (and without) failures count locally.
    shared: OnceLock<Arc<SharedBackend>>,
}

/// The limits a [`LoginLimiter`] applies, taken from `rate_limits.login` at each call.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failures allowed per account+IP in a window.
    pub attempts: u32,
    /// Failures allowed per IP in a window, whatever the account.
    pub ip_attempts: u32,
    /// Window length.
    pub per: Duration,
}

impl LoginLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts failures in `backend` from now on, so they add up over the replicas.
    pub fn share(&self, backend: Arc<SharedBackend>) {
        let _ = self.shared.set(backend); // set once at start; a second call changes nothing
    }

    fn account_key(account: &str, ip: &str) -> String {
        // The separator cannot appear in an IP address, so keys cannot collide.
        format!("{ip}|{account}")
    }

    /// The shared windows' names: both carry the IP as hash tag (one cluster slot, so one
    /// script reads or counts both, while different clients spread over the slots); the
    /// account is hashed, so identifiers do not appear in the store.
    fn shared_keys(account: &str, ip: &str) -> [String; 2] {
        [
            shared::shared_name(&format!("l:{{{ip}}}:a:"), "acct", account),
            format!("l:{{{ip}}}:ip"),
        ]
    }

    /// The backend, if shared and worth a round trip now.
    fn backend(&self) -> Option<&Arc<SharedBackend>> {
        self.shared.get().filter(|b| b.try_claim())
    }

    /// Whether a login for `account` (its normalised identifier) from `ip` may be tried.
    /// While either counter is over its limit even the right password is refused.
    pub async fn check(
        &self,
        account: &str,
        ip: &str,
        limits: LoginLimits,
        now: Millis,
    ) -> Decision {
        if let Some(b) = self.backend() {
            let keys = Self::shared_keys(account, ip);
            match b
                .counters()
                .window_peek(&[keys[0].as_str(), keys[1].as_str()])
                .await
            {
                Ok(w) if w.len() == 2 => {
                    b.succeeded();
                    return combine(
                        shared_decision(w[0], limits.attempts),
                        shared_decision(w[1], limits.ip_attempts),
                    );
                }
                Ok(_) => {}
                Err(error) => b.failed(&error),
            }
        }
        if let Some(b) = self.shared.get() {
            b.fell_back();
        }
        self.check_local(account, ip, limits, now)
    }

    fn check_local(&self, account: &str, ip: &str, limits: LoginLimits, now: Millis) -> Decision {
        let by_account = self.per_account.peek(
            &Self::account_key(account, ip),
            limits.attempts,
            limits.per,
            now,
        );
        let by_ip = self.per_ip.peek(ip, limits.ip_attempts, limits.per, now);
        combine(by_account, by_ip)
    }

    /// Counts a failed attempt against both counters (shared and local).
    pub async fn failed(&self, account: &str, ip: &str, limits: LoginLimits, now: Millis) {
        self.per_account.hit(
            &Self::account_key(account, ip),
            limits.attempts,
            limits.per,
            now,
        );
        self.per_ip.hit(ip, limits.ip_attempts, limits.per, now);
        if let Some(b) = self.backend() {
            let keys = Self::shared_keys(account, ip);
            let per_ms = u64::try_from(duration_ms(limits.per)).unwrap_or(u64::MAX);
            match b
                .counters()
                .window_hit(&[keys[0].as_str(), keys[1].as_str()], per_ms)
                .await
            {
                Ok(()) => b.succeeded(),
                Err(error) => b.failed(&error),
            }
        }
    }

    /// A successful login clears the account+IP counter (the per-IP one keeps counting, so
    /// one valid account cannot be used to reset a spraying IP's budget).
    pub async fn succeeded(&self, account: &str, ip: &str) {
        self.per_account.reset(&Self::account_key(account, ip));
        if let Some(b) = self.backend() {
            let [key, _] = Self::shared_keys(account, ip);
            match b.counters().window_reset(&key).await {
                Ok(()) => b.succeeded(),
                Err(error) => b.failed(&error),
            }
        }
    }
}

fn combine(by_account: Decision, by_ip: Decision) -> Decision {
    match (by_account, by_ip) {
        (Decision::Limited { retry_after: a }, Decision::Limited { retry_after: b }) => {
            Decision::Limited {
                retry_after: a.max(b),
            }
        }
        (limited @ Decision::Limited { .. }, _) | (_, limited @ Decision::Limited { .. }) => {
            limited
        }
        (Decision::Allowed { remaining: a }, Decision::Allowed { remaining: b }) => {
            Decision::Allowed {
                remaining: a.min(b),
            }
        }
    }
}

/// A shared window against `limit`: refused once `limit` failures are in it, until it ends.
fn shared_decision(w: WindowState, limit: u32) -> Decision {
    if w.count < limit {
        Decision::Allowed {
            remaining: limit - w.count,
        }
    } else {
        Decision::Limited {
            retry_after: Duration::from_millis(w.left_ms),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod ip_tests {
    use super::limit_ip;

    #[test]
    fn per_ip_limits_count_ipv6_per_64() {
        let cases = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::"),
            ("2001:db8:1:2::1", "2001:db8:1:2::"),
            ("2001:db8:1:3::1", "2001:db8:1:3::"),
            ("::1", "::"),
        ];
        for (ip, want) in cases {
            assert_eq!(limit_ip(ip.parse().unwrap()).to_string(), want, "{ip}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn counts_up_to_the_limit_then_refuses_until_the_window_ends() {
        let c = WindowCounter::new();
        for i in 0..3 {
            assert_eq!(
                c.hit("k", 3, MIN, 1_000 + i),
                Decision::Allowed {
                    remaining: 2 - i as u32
                }
            );
        }
        assert_eq!(
            c.hit("k", 3, MIN, 31_000),
            Decision::Limited {
                retry_after: Duration::from_secs(30)
            }
        );
        // Refused events are not counted, and the window ends on time.
        assert!(c.hit("k", 3, MIN, 61_000).is_allowed());
        assert!(c.hit("other", 3, MIN, 31_000).is_allowed());
    }

    #[test]
    fn peek_does_not_count() {
        let c = WindowCounter::new();
        for _ in 0..10 {
            assert!(c.peek("k", 1, MIN, 0).is_allowed());
        }
        c.hit("k", 1, MIN, 0);
        assert!(!c.peek("k", 1, MIN, 0).is_allowed());
    }

    #[tokio::test]
    async fn sixth_failure_is_refused_and_success_resets_the_account() {
        let l = LoginLimiter::new();
        let limits = LoginLimits {
            attempts: 5,
            ip_attempts: 100,
            per: Duration::from_secs(900),
        };
        for _ in 0..5 {
            assert!(l.check("alice", "1.2.3.4", limits, 0).await.is_allowed());
            l.failed("alice", "1.2.3.4", limits, 0).await;
        }
        let Decision::Limited { retry_after } = l.check("alice", "1.2.3.4", limits, 100_000).await
        else {
            panic!("sixth attempt allowed");
        };
        assert_eq!(retry_after, Duration::from_secs(800));
        // Another IP and another account are unaffected.
        assert!(l.check("alice", "5.6.7.8", limits, 0).await.is_allowed());
        assert!(l.check("bob", "1.2.3.4", limits, 0).await.is_allowed());
        l.succeeded("alice", "1.2.3.4").await;
        assert!(
            l.check("alice", "1.2.3.4", limits, 100_000)
                .await
                .is_allowed()
        );
    }

    #[tokio::test]
    async fn per_ip_budget_spans_accounts() {
        let l = LoginLimiter::new();
        let limits = LoginLimits {
            attempts: 5,
            ip_attempts: 3,
            per: MIN,
        };
        for account in ["a", "b", "c"] {
            l.failed(account, "9.9.9.9", limits, 0).await;
        }
        assert!(!l.check("d", "9.9.9.9", limits, 0).await.is_allowed());
        l.succeeded("d", "9.9.9.9").await;
        assert!(!l.check("d", "9.9.9.9", limits, 0).await.is_allowed());
        assert!(l.check("d", "9.9.9.9", limits, 60_000).await.is_allowed());
    }

    #[test]
    fn expired_windows_are_swept_when_the_map_is_large() {
        let c = WindowCounter::new();
        for i in 0..SWEEP_ABOVE {
            c.hit(&i.to_string(), 1, MIN, 0);
        }
        assert_eq!(c.len(), SWEEP_ABOVE);
        c.hit("late", 1, MIN, 120_000);
        assert_eq!(c.len(), 1);
    }

    #[tokio::test]
    async fn shared_failures_add_up_over_replicas_and_fall_back_locally() {
        use crate::ratelimit::shared::tests::FakeCounters;
        use std::sync::atomic::Ordering;
        let store = Arc::new(FakeCounters::default());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let (a, b) = (LoginLimiter::new(), LoginLimiter::new());
        for l in [&a, &b] {
            l.share(SharedBackend::new(store.clone(), Some(metrics.clone())));
        }
        let limits = LoginLimits {
            attempts: 3,
            ip_attempts: 100,
            per: MIN,
        };
        for l in [&a, &b, &a] {
            assert!(l.check("eve", "1.1.1.1", limits, 0).await.is_allowed());
            l.failed("eve", "1.1.1.1", limits, 0).await;
        }
        for l in [&a, &b] {
            let Decision::Limited { retry_after } = l.check("eve", "1.1.1.1", limits, 0).await
            else {
                panic!("the fourth failure overall is refused on every replica");
            };
            assert_eq!(retry_after, MIN);
        }
        // A success on B clears the account's shared counter for A too.
        b.succeeded("eve", "1.1.1.1").await;
        assert!(a.check("eve", "1.1.1.1", limits, 0).await.is_allowed());

        // Store down: each replica counts alone (A has its own 2 failures locally).
        store.down.store(true, Ordering::Relaxed);
        a.failed("eve", "1.1.1.1", limits, 0).await;
        assert!(!a.check("eve", "1.1.1.1", limits, 0).await.is_allowed());
        assert!(b.check("eve", "1.1.1.1", limits, 0).await.is_allowed());
        assert!(
            metrics
                .encode()
                .contains("gatehouse_ratelimit_fallbacks_total 2")
        );
    }
}
