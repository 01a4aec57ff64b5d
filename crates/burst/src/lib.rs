//! Several non-blocking sends, each on its own socket, handed to the kernel in one system call.
//!
//! Why a separate crate: this is the gateway's only `unsafe` code, kept small and behind an
//! API that cannot be misused (the gateway crate forbids `unsafe`). Linux has one call that
//! writes to several sockets at once, io_uring; the gateway uses it to put a whole event-loop
//! turn of upstream request heads into their sockets before an upstream woken by the first
//! one can take the CPU (see `src/pool/batch.rs` in the gateway).
//!
//! What keeps it sound: [`Burst::send_all`] borrows every buffer and socket for the length of
//! the call and does not return until the kernel has posted a completion for every entry it
//! took, so no buffer is read after the borrow ends. Each send carries `MSG_DONTWAIT`, which
//! makes io_uring complete a send that would block at once with `EAGAIN` instead of parking it
//! until the socket drains: the completions are all there when the submitting call returns,
//! and the wait for stragglers exists only as the guarantee. Entries the kernel did not take
//! are never taken later: a ring that failed a submission is reported broken and must be
//! dropped (with what is left in its queue) instead of used again.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{IoUring, opcode, types};

/// Entries per system call; a longer list takes several calls.
const ENTRIES: u32 = 64;

const MSG_DONTWAIT: i32 = 0x40;
/// A closed peer gives `EPIPE`, not a SIGPIPE that would end the process.
const MSG_NOSIGNAL: i32 = 0x4000;
const IORING_ENTER_GETEVENTS: u32 = 1;

/// What became of one send.
#[derive(Debug)]
pub enum Outcome {
    /// This many bytes went out (possibly fewer than given: the rest is the caller's).
    Sent(usize),
    /// The socket refused: `WouldBlock` when its buffer is full.
    Failed(io::Error),
    /// The kernel did not take this entry; nothing of it was sent.
    NotSubmitted,
}

/// A ring for bursts of sends (the gateway keeps one per worker thread).
pub struct Burst {
    ring: IoUring,
    broken: bool,
}

impl Burst {
    /// A new ring; fails where io_uring is not allowed (an old kernel,
    /// `kernel.io_uring_disabled`, a seccomp profile such as Docker's default).
    pub fn new() -> io::Result<Burst> {
        let ring = IoUring::builder()
            // Completions are read right after each submit: no task-work interrupts needed.
            .setup_coop_taskrun()
            // An entry that fails does not stop the ones after it.
            .setup_submit_all()
            .build(ENTRIES)?;
        Ok(Burst {
            ring,
            broken: false,
        })
    }

    /// Whether a submission failed: the ring must not be used again (drop it, and with it any
    /// entry left in its queue).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends each buffer on its socket without blocking, `ENTRIES` per system call, and puts
    /// one [`Outcome`] per send into `outcomes` (cleared first), in order. On a broken ring
    /// every send is `NotSubmitted`.
    pub fn send_all(&mut self, sends: &[(BorrowedFd<'_>, &[u8])], outcomes: &mut Vec<Outcome>) {
        outcomes.clear();
        for chunk in sends.chunks(ENTRIES as usize) {
            let start = outcomes.len();
            outcomes.extend(chunk.iter().map(|_| Outcome::NotSubmitted));
            if !self.broken {
                self.send_chunk(chunk, &mut outcomes[start..]);
            }
        }
    }

    fn send_chunk(&mut self, sends: &[(BorrowedFd<'_>, &[u8])], outcomes: &mut [Outcome]) {
        // Completions of an earlier call cannot be left over (each call waits for all of its
        // own), but a stray one must not be taken for this call's.
        self.ring.completion().for_each(drop);
        let mut pushed = 0;
        {
            let mut sq = self.ring.submission();
            for (i, (fd, buf)) in sends.iter().enumerate() {
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                let entry = opcode::Send::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), len)
                    .flags(MSG_DONTWAIT | MSG_NOSIGNAL)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the entry points at `buf` and names `fd`, both borrowed by this call,
                // and the call does not return before the kernel has completed every entry it
                // took (below); an entry it did not take stays in the queue only of a ring
                // marked broken, which is never submitted to again.
                if unsafe { sq.push(&entry) }.is_err() {
                    break;
                }
                pushed += 1;
            }
        }
        if pushed == 0 {
            return;
        }
        // An error means the kernel took nothing (a partial submission returns its count).
        let submitted = match self.ring.submit_and_wait(pushed) {
            Ok(n) => n.min(pushed),
            Err(_) => 0,
        };
        if submitted < pushed {
            self.broken = true;
        }
        let mut missing = submitted;
        let mut waiting = vec![false; pushed];
        waiting[..submitted].fill(true);
        loop {
            for cqe in self.ring.completion() {
                let Some(i) = usize::try_from(cqe.user_data())
                    .ok()
                    .filter(|&i| i < pushed && waiting[i])
                else {
                    continue;
                };
                waiting[i] = false;
                missing -= 1;
                let res = cqe.result();
                outcomes[i] = match usize::try_from(res) {
                    Ok(n) => Outcome::Sent(n),
                    Err(_) => Outcome::Failed(io::Error::from_raw_os_error(-res)),
                };
            }
            if missing == 0 {
                return;
            }
            // Not expected (see the module's doc), but a buffer the kernel holds must outlive
            // it: block until it is done with every one. The wait submits nothing, so entries
            // the kernel did not take stay untaken.
            self.broken = true;
            // SAFETY: a plain wait for one completion (no submission, no argument).
            let waited = unsafe {
                self.ring
                    .submitter()
                    .enter::<()>(0, 1, IORING_ENTER_GETEVENTS, None)
            };
            if let Err(e) = waited
                && e.kind() != io::ErrorKind::Interrupted
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests;
