//! Upstream request heads written in one burst per event-loop turn.
//!
//! Why: a request task that yields before writing its head (so that writes leave together,
//! see `h1::Conn::exchange`) is polled once more just to write it: a walk down the whole
//! connection's future chain per request (callgrind: 1.4k of 32k instructions per proxied
//! request). Here a request task only queues its connection; the first one queued in a turn
//! (the leader) yields until the event loop has polled every task it had ready, then writes
//! every queued head: in one io_uring submission when there are several and the kernel
//! allows it ([`uring`]), else with one send(2) each. The other tasks go straight to waiting
//! for their answer and are not polled again until it comes. An upstream on the same core (a
//! sidecar, the benchmark rig) finds the heads of a whole turn waiting when it runs.
//!
//! Plain TCP only (a TLS connection's writes go through its session state, owned by its task).
//! A write that would block or fails hands the rest back to the request's task, which finishes
//! it or reports the error; a connection dropped while queued (its request was cancelled) is
//! skipped, never written to.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};

use tokio::net::tcp::OwnedWriteHalf;

pub(super) mod uring;

/// Where a connection's queued head stands.
const QUEUED: u8 = 0;
/// Written whole (or nothing queued).
const SENT: u8 = 1;
/// Partly written or failed: the request's task takes over (see [`Wire::finish`]).
const HANDED_BACK: u8 = 2;

/// A connection's write side, shared by its request's task and the turn's batch.
pub struct Wire {
    write: OwnedWriteHalf,
    stage: AtomicU8,
    pending: Mutex<Pending>,
}

struct Pending {
    /// The encoded head; kept between requests for its capacity.
    head: Vec<u8>,
    /// Bytes of `head` already written.
    written: usize,
    error: Option<io::Error>,
    /// The request's task, woken when the head is handed back.
    waker: Option<Waker>,
}

impl Wire {
    pub fn new(write: OwnedWriteHalf) -> Arc<Wire> {
        Arc::new(Wire {
            write,
            stage: AtomicU8::new(SENT),
            pending: Mutex::new(Pending {
                head: Vec::new(),
                written: 0,
                error: None,
                waker: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes a head with `encode` and queues it for this turn's burst. The returned leader,
    /// if any, must be flushed after a yield (dropped unflushed, it sends the others' heads).
    pub fn queue(self: &Arc<Self>, encode: impl FnOnce(&mut Vec<u8>)) -> Option<Leader> {
        {
            let mut p = self.lock();
            p.head.clear();
            encode(&mut p.head);
            p.written = 0;
            p.error = None;
            p.waker = None;
        }
        self.stage.store(QUEUED, Ordering::Release);
        join(self)
    }

    /// Writes as much of the queued head as the socket takes without blocking.
    fn write_queued(&self) {
        let mut p = self.lock();
        let stage = self.write_rest(&mut p);
        self.settle(p, stage);
    }

    /// Writes the rest of the head with send(2) until it is all out (`SENT`) or the socket
    /// would block or fails (`HANDED_BACK`, the error kept for the task).
    fn write_rest(&self, p: &mut Pending) -> u8 {
        loop {
            let Pending { head, written, .. } = &mut *p;
            if *written == head.len() {
                return SENT;
            }
            match self.write.try_write(&head[*written..]) {
                Ok(0) => {
                    p.error = Some(io::ErrorKind::WriteZero.into());
                    return HANDED_BACK;
                }
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HANDED_BACK,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    p.error = Some(e);
                    return HANDED_BACK;
                }
            }
        }
    }

    /// Records where the burst left the head; a head handed back wakes its task.
    fn settle(&self, mut p: MutexGuard<'_, Pending>, stage: u8) {
        self.stage.store(stage, Ordering::Release);
        if stage == HANDED_BACK
            && let Some(waker) = p.waker.take()
        {
            waker.wake();
        }
    }

    /// Whether the burst handed the head back (see [`Wire::finish`]). While it is queued, the
    /// task's waker is kept to be woken if it is; a head written whole wakes no one (the
    /// answer will).
    pub fn handed_back(&self, cx: &mut Context<'_>) -> bool {
        match self.stage.load(Ordering::Acquire) {
            SENT => false,
            QUEUED => {
                let mut p = self.lock();
                // Looked at again under the lock: the burst may have run meanwhile.
                match self.stage.load(Ordering::Acquire) {
                    QUEUED => {
                        if !p.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            p.waker = Some(cx.waker().clone());
                        }
                        false
                    }
                    stage => stage == HANDED_BACK,
                }
            }
            _ => true,
        }
    }

    /// Writes the rest of a head the burst handed back, or reports its error.
    pub async fn finish(&self) -> io::Result<()> {
        loop {
            {
                let mut p = self.lock();
                let done = match p.error.take() {
                    Some(e) => Err(e),
                    None => loop {
                        let Pending { head, written, .. } = &mut *p;
                        if *written == head.len() {
                            break Ok(true);
                        }
                        match self.write.try_write(&head[*written..]) {
                            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => *written += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    },
                };
                match done {
                    Ok(false) => {}
                    done => {
                        self.stage.store(SENT, Ordering::Release);
                        return done.map(|_| ());
                    }
                }
            }
            self.write.writable().await?;
        }
    }
}

/// The connections queued in this turn on one worker thread.
#[derive(Default)]
struct Batch {
    queued: Mutex<Vec<Arc<Wire>>>,
}

thread_local! {
    static BATCH: Arc<Batch> = Arc::default();
}

impl Batch {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Wire>>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush(&self) {
        let mut wires = std::mem::take(&mut *self.lock());
        // No longer queued (its leader was cancelled) or held by the batch alone (its request
        // was dropped): nobody waits for an answer.
        wires.retain(|wire| {
            wire.stage.load(Ordering::Acquire) == QUEUED && Arc::strong_count(wire) > 1
        });
        if wires.len() < 2 || !uring::send_all(&wires) {
            for wire in &wires {
                wire.write_queued();
            }
        }
        wires.clear();
        // The emptied vector goes back for its capacity unless the next turn has started one.
        let mut queued = self.lock();
        if queued.is_empty() {
            *queued = wires;
        }
    }
}

/// Queues `wire`; the first one queued since the last flush leads (flushes) the batch. The
/// batch is the current thread's, kept by the leader: a multi-thread runtime may resume the
/// leader on another worker, which then flushes the batch it joined.
fn join(wire: &Arc<Wire>) -> Option<Leader> {
    BATCH.with(|batch| {
        let mut queued = batch.lock();
        queued.push(wire.clone());
        (queued.len() == 1).then(|| Leader {
            batch: Some(batch.clone()),
            own: wire.clone(),
        })
    })
}

/// The duty to flush a batch. Dropped unflushed (the leading request was cancelled while it
/// waited for the turn to end), it flushes the others' heads but not its own.
pub struct Leader {
    batch: Option<Arc<Batch>>,
    own: Arc<Wire>,
}

impl Leader {
    pub fn flush(mut self) {
        if let Some(batch) = self.batch.take() {
            batch.flush();
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            // Its connection is still alive here (dropped after this), so the count in
            // `flush` cannot tell; nobody will read an answer to it.
            self.own.stage.store(SENT, Ordering::Release);
            batch.flush();
        }
    }
}
