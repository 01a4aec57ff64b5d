//! Rate-limit counters shared by replicas ([`SharedCounters`]): the few single-key atomic
//! operations the limiters of `ratelimit` (L1) need from a networked store (L0).
//!
//! Owns: the operations' contract. The trait lives here, below `ratelimit`, so the store
//! can implement it and the limiters can call it without either importing the other's
//! internals. Must not touch: limiter policy (what to do with an answer, local fallback).
//!
//! Time: every operation reads the store's own clock (Redis `TIME` inside the script), not
//! the caller's, so replicas whose clocks differ still agree on every bucket. Durations
//! cross the interface in microseconds relative to that clock ("how long from now").
//!
//! Keys are names chosen by the caller (the backend adds its prefix); each operation touches
//! one key, or keys the caller put in one cluster slot with a hash tag, so in Redis Cluster
//! the counters spread over every node. Every key expires once it carries no information
//! (a full bucket, an ended window), so idle clients leave nothing behind.

use async_trait::async_trait;

use super::StoreError;

/// A GCRA decision made by the store for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcraReply {
    /// Counted. `remaining` more may go now; the bucket is full again in `reset_us`.
    Allowed { remaining: u32, reset_us: u64 },
    /// Refused (not counted); one may go in `retry_us`.
    Limited { retry_us: u64 },
}

/// One key's fixed window (login failures): events counted and time left in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowState {
    pub count: u32,
    /// Milliseconds until the window ends (0 when there is no window).
    pub left_ms: u64,
}

/// Atomic counters in a store that all replicas share.
#[async_trait]
pub trait SharedCounters: Send + Sync + std::fmt::Debug {
    /// GCRA over the key's theoretical arrival time (TAT): one request every `interval_us`,
    /// `burst` at once. Counts the request only when it is allowed.
    async fn gcra(&self, key: &str, interval_us: u64, burst: u32) -> Result<GcraReply, StoreError>;

    /// Adds hits that were already let through (elsewhere, locally) to each key's TAT
    /// (`max(TAT, now) + hits x interval_us`, never refusing), in one pipelined round trip,
    /// and answers each key's backlog afterwards: `TAT - now` in microseconds (0: bucket
    /// full). A key with 0 hits is only read.
    async fn gcra_add(
        &self,
        batch: &[(&str, u32)],
        interval_us: u64,
    ) -> Result<Vec<u64>, StoreError>;

    /// The windows of `keys` (which must share a hash tag), counting nothing.
    async fn window_peek(&self, keys: &[&str]) -> Result<Vec<WindowState>, StoreError>;

    /// Counts one event in each of `keys` (sharing a hash tag); a key without a window
    /// starts one of `per_ms`.
    async fn window_hit(&self, keys: &[&str], per_ms: u64) -> Result<(), StoreError>;

    /// Forgets `key`'s window.
    async fn window_reset(&self, key: &str) -> Result<(), StoreError>;
}
