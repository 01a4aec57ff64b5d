//! A turn's upstream heads handed to the kernel in one system call (io_uring, through the
//! `gatehouse-burst` crate, which holds the project's only `unsafe` code).
//!
//! Why: an upstream on the same core (a sidecar, the benchmark rig) is woken by the first
//! head of a burst written with send(2), and the kernel lets it preempt the gateway as that
//! call returns: the upstream sees one request, answers it and sleeps, and the next head wakes
//! it again. The two processes fall into a ping-pong of ~20 us runs, one context switch per
//! request or two (`perf sched timehist` on the rig's core). Submitted together, every head of
//! the turn is in its socket before the gateway can be preempted, the upstream answers them
//! all in one run, and the gateway then finds all the answers in one turn: on the rig the
//! switches fell from ~0.35 to ~0.02 per request (see benches/README.md for req/s and p99).
//!
//! One ring per worker thread, made on first use. Where io_uring is refused (an old kernel,
//! `kernel.io_uring_disabled`, Docker's default seccomp profile), or turned off with
//! `GATEHOUSE_IO_URING=off`, the burst writes with send(2) as before and the thread does not
//! ask again. Each send is non-blocking: what did not go out whole is finished with send(2)
//! and, if the socket is full, handed back to its request's task as before.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, LazyLock, MutexGuard};

use gatehouse_burst::{Burst, Outcome};

use super::{HANDED_BACK, Pending, Wire};

/// `GATEHOUSE_IO_URING=off` (or `0`, `false`, `no`) keeps every burst on send(2).
static ALLOWED: LazyLock<bool> = LazyLock::new(|| {
    let off = std::env::var("GATEHOUSE_IO_URING").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        )
    });
    if off {
        tracing::info!("GATEHOUSE_IO_URING=off: upstream heads go out with send(2)");
    }
    !off
});

thread_local! {
    /// This thread's ring, made at its first burst; `None` where io_uring is refused or off.
    /// Boxed: the ring's mappings are ~280 bytes, kept out of every thread's TLS block.
    static RING: RefCell<Option<Box<Burst>>> = RefCell::new(build());
}

fn build() -> Option<Box<Burst>> {
    if !*ALLOWED {
        return None;
    }
    match Burst::new() {
        Ok(burst) => Some(Box::new(burst)),
        Err(e) => {
            tracing::debug!(error = %e, "io_uring refused; upstream heads go out with send(2)");
            None
        }
    }
}

/// Whether this thread's bursts go through io_uring (made on first call).
#[cfg(test)]
pub(in crate::pool) fn available() -> bool {
    RING.with(|cell| cell.borrow().is_some())
}

/// Makes this thread write its bursts with send(2), as where io_uring is refused.
#[cfg(test)]
pub(in crate::pool) fn refuse_on_this_thread() {
    RING.with(|cell| *cell.borrow_mut() = None);
}

/// Sends the queued heads of `wires` (all `QUEUED`) and settles every one of them. False
/// when this thread has no ring: nothing was touched and the caller writes them itself.
pub(super) fn send_all(wires: &[Arc<Wire>]) -> bool {
    RING.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return false;
        };
        let Some(burst) = slot.as_mut() else {
            return false;
        };
        // Locked from the submission until settled: nobody re-encodes a head meanwhile.
        let pending: Vec<MutexGuard<'_, Pending>> = wires.iter().map(|w| w.lock()).collect();
        let sends: Vec<(BorrowedFd<'_>, &[u8])> = wires
            .iter()
            .zip(&pending)
            .map(|(wire, p)| (wire.write.as_ref().as_fd(), &p.head[p.written..]))
            .collect();
        let mut outcomes = Vec::with_capacity(wires.len());
        burst.send_all(&sends, &mut outcomes);
        drop(sends);
        if burst.is_broken() {
            tracing::warn!("io_uring submission failed; upstream heads go out with send(2)");
            *slot = None;
        }
        for ((wire, mut p), outcome) in wires.iter().zip(pending).zip(outcomes) {
            let stage = match outcome {
                Outcome::Sent(n) => {
                    p.written += n;
                    wire.write_rest(&mut p)
                }
                Outcome::Failed(e) if e.kind() == std::io::ErrorKind::WouldBlock => HANDED_BACK,
                Outcome::Failed(e) => {
                    p.error = Some(e);
                    HANDED_BACK
                }
                Outcome::NotSubmitted => wire.write_rest(&mut p),
            };
            wire.settle(p, stage);
        }
        true
    })
}
