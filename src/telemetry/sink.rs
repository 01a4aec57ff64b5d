//! The log writer: formatted lines are appended to a buffer and written to the output by a
//! thread of their own, so a slow terminal or pipe never stalls a request.
//!
//! Why not `tracing_appender::non_blocking`: its writer thread lives as long as the process.
//! This one is started by a line and exits after [`IDLE_EXIT`] without one, so a gateway on
//! one CPU that logs nothing per request serves from a single thread, and Linux skips taking
//! a file reference on each socket call of a process whose fd table no other thread shares.
//! Lines are never dropped: past [`MAX_BUFFERED`] bytes a logging thread waits for the writer,
//! as `non_blocking` with `lossy(false)` did.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The writer thread exits after this long without a line.
pub const IDLE_EXIT: Duration = Duration::from_secs(2);

/// Bytes waiting for the writer before a logging thread waits too.
pub const MAX_BUFFERED: usize = 8 << 20;

/// A spare buffer larger than this after a burst is freed rather than kept.
const KEEP_CAPACITY: usize = 64 << 10;

/// How long dropping the [`Guard`] waits for the lines still buffered.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Where formatted lines go; a `MakeWriter` for `tracing_subscriber`.
pub struct Sink<W: Write + Send + 'static> {
    inner: Arc<Inner<W>>,
}

struct Inner<W> {
    state: Mutex<State>,
    /// The writer thread waits here for lines.
    lines: Condvar,
    /// Logging threads wait here for room, the guard for the last write.
    room: Condvar,
    out: Mutex<W>,
    idle_exit: Duration,
    max_buffered: usize,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    spare: Vec<u8>,
    /// A writer thread exists (running or parked).
    writer: bool,
    /// The writer thread is parked on `lines`.
    parked: bool,
    /// The guard was dropped: the writer leaves as soon as the buffer is empty.
    closing: bool,
}

/// Flushes what is buffered when dropped (at the end of `main`).
pub struct Guard<W: Write + Send + 'static> {
    inner: Arc<Inner<W>>,
}

impl<W: Write + Send + 'static> Sink<W> {
    /// A sink writing to `out`, and the guard that flushes it.
    pub fn new(out: W) -> (Self, Guard<W>) {
        Self::with_limits(out, IDLE_EXIT, MAX_BUFFERED)
    }

    fn with_limits(out: W, idle_exit: Duration, max_buffered: usize) -> (Self, Guard<W>) {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            lines: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(out),
            idle_exit,
            max_buffered,
        });
        (
            Self {
                inner: inner.clone(),
            },
            Guard { inner },
        )
    }
}

impl<W> Inner<W> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned lock still holds whole lines.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<W: Write + Send + 'static> Inner<W> {
    fn push(self: &Arc<Self>, line: &[u8]) {
        let mut st = self.lock();
        while st.buf.len() >= self.max_buffered && st.writer {
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.buf.extend_from_slice(line);
        if st.parked {
            st.parked = false;
            self.lines.notify_one();
        } else if !st.writer {
            st.writer = true;
            drop(st);
            let inner = self.clone();
            let started = std::thread::Builder::new()
                .name("gatehouse-log".into())
                .spawn(move || inner.write_loop());
            if started.is_err() {
                // No thread to hand the line to: write it here rather than lose it.
                let mut st = self.lock();
                st.writer = false;
                let chunk = std::mem::take(&mut st.buf);
                drop(st);
                self.write_out(&chunk);
            }
        }
    }

    fn write_loop(&self) {
        let mut st = self.lock();
        loop {
            if st.buf.is_empty() {
                if st.closing {
                    break;
                }
                st.parked = true;
                let (guard, wait) = self
                    .lines
                    .wait_timeout(st, self.idle_exit)
                    .unwrap_or_else(PoisonError::into_inner);
                st = guard;
                st.parked = false;
                if wait.timed_out() && st.buf.is_empty() {
                    break;
                }
                continue;
            }
            let spare = std::mem::take(&mut st.spare);
            let mut chunk = std::mem::replace(&mut st.buf, spare);
            drop(st);
            self.room.notify_all();
            self.write_out(&chunk);
            chunk.clear();
            st = self.lock();
            if chunk.capacity() <= KEEP_CAPACITY {
                st.spare = chunk;
            }
        }
        st.writer = false;
        drop(st);
        self.room.notify_all();
    }

    fn write_out(&self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        // Nowhere to report a failed log write to.
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    }
}

impl<W: Write + Send + 'static> Drop for Guard<W> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.closing = true;
        if st.parked {
            st.parked = false;
            self.inner.lines.notify_one();
        }
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        while st.writer {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            st = self
                .inner
                .room
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// One event's writer: the formatter writes each event with a single `write_all`.
pub struct LineWriter<'a, W> {
    inner: &'a Arc<Inner<W>>,
}

impl<W: Write + Send + 'static> Write for LineWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + Send + 'static> tracing_subscriber::fmt::MakeWriter<'a> for Sink<W> {
    type Writer = LineWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { inner: &self.inner }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    /// An output the test reads, and can hold shut to stand for a stalled pipe.
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        shut: Arc<Mutex<()>>,
        slow: Duration,
    }

    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.shut.lock().unwrap();
            std::thread::sleep(self.slow);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line<W: Write + Send + 'static>(sink: &Sink<W>, text: &str) {
        sink.make_writer().write_all(text.as_bytes()).unwrap();
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_are_written_in_order_by_a_thread_that_leaves_when_idle() {
        let out = Out::default();
        let (sink, _guard) = Sink::with_limits(out.clone(), Duration::from_millis(100), 1 << 20);
        assert!(!sink.inner.lock().writer, "no thread before the first line");
        for i in 0..1000 {
            line(&sink, &format!("line {i}\n"));
        }
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        wait_for("all lines written", || {
            *out.bytes.lock().unwrap() == want.as_bytes()
        });
        wait_for("the writer left", || !sink.inner.lock().writer);

        line(&sink, "again\n");
        wait_for("a new writer wrote it", || {
            out.bytes.lock().unwrap().ends_with(b"line 999\nagain\n")
        });
    }

    #[test]
    fn a_stalled_output_holds_loggers_back_without_losing_lines() {
        let out = Out::default();
        let (sink, guard) = Sink::with_limits(out.clone(), Duration::from_millis(100), 64);
        let stall = out.shut.lock().unwrap();
        let sink = Arc::new(sink);
        let logger = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    line(&*sink, &format!("{i:08}\n"));
                }
            })
        };
        // The writer holds the first chunk; the logger fills 64 bytes and then waits.
        wait_for("the logger waits for room", || {
            sink.inner.lock().buf.len() >= 64 && !logger.is_finished()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!logger.is_finished());
        drop(stall);
        logger.join().unwrap();
        drop(guard);
        let want: String = (0..100).map(|i| format!("{i:08}\n")).collect();
        assert_eq!(
            String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap(),
            want
        );
    }

    #[test]
    fn dropping_the_guard_flushes() {
        let out = Out {
            slow: Duration::from_millis(100),
            ..Out::default()
        };
        let (sink, guard) = Sink::with_limits(out.clone(), Duration::from_secs(60), 1 << 20);
        line(&sink, "first\n");
        line(&sink, "last\n");
        drop(guard);
        assert_eq!(&*out.bytes.lock().unwrap(), b"first\nlast\n");
        assert!(
            !sink.inner.lock().writer,
            "the writer left without waiting a minute"
        );
    }
}
