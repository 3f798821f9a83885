//! Counters. Engine counters live in [`Metrics`] (one per engine); buffer gauges are
//! process-wide because a [`SendBuffer`](crate::SendBuffer) belongs to no engine.
//!
//! Counters that several threads bump on the hot path are striped: each thread adds to its own
//! cache-line-padded slot and a reader sums the slots, so no cache line bounces between cores.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

/// Keeps a value on its own cache line (128 bytes: adjacent-line prefetch pairs lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A counter that many threads add to and few read. Reads are a sum of relaxed loads: exact
/// once writers are quiescent, approximate while they run.
#[derive(Debug)]
pub struct Striped {
    slots: [Padded<AtomicI64>; STRIPES],
}

impl Striped {
    /// A zeroed counter.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: Padded<AtomicI64> = Padded(AtomicI64::new(0));
        Self {
            slots: [ZERO; STRIPES],
        }
    }

    #[inline]
    fn slot(&self) -> &AtomicI64 {
        thread_local! {
            static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let i = STRIPE.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
            }
            s.get()
        });
        &self.slots[i].0
    }

    /// Adds `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.slot().fetch_add(n, Ordering::Relaxed);
    }

    /// The current sum.
    pub fn get(&self) -> i64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl Default for Striped {
    fn default() -> Self {
        Self::new()
    }
}

/// Process-wide: [`SendBuffer`](crate::SendBuffer) handles alive (each queued reference counts
/// once). Back to zero when every session is gone and the application holds none.
pub(crate) static LIVE_SEND_BUFFERS: Striped = Striped::new();
/// Process-wide: pooled send chunks that still have bytes lent out.
pub(crate) static CHUNKS_IN_USE: Striped = Striped::new();
/// Process-wide: pooled send chunks ever allocated.
pub(crate) static CHUNKS_ALLOCATED: Striped = Striped::new();

/// One engine's counters. Cheap to bump from its workers; read with [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_open: Striped,
    pub(crate) accepted: Striped,
    pub(crate) connected: Striped,
    pub(crate) closed: Striped,
    pub(crate) frames_in: Striped,
    pub(crate) bytes_in: Striped,
    pub(crate) frames_out: Striped,
    pub(crate) bytes_out: Striped,
    pub(crate) writes: Striped,
    pub(crate) writes_blocked: Striped,
    pub(crate) protocol_errors: Striped,
    pub(crate) rejected: Striped,
    pub(crate) timeouts: Striped,
    pub(crate) slow_consumers: Striped,
    pub(crate) recv_chunks_allocated: Striped,
    pub(crate) busy_ns: Striped,
    pub(crate) budget_flushes: Striped,
    pub(crate) recv_buffer_waits: Striped,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Sessions currently open.
    pub connections_open: i64,
    /// Connections accepted by listeners.
    pub accepted: i64,
    /// Outgoing connections established by [`Engine::connect`](crate::Engine::connect).
    pub connected: i64,
    /// Sessions closed, for any reason.
    pub closed: i64,
    /// Frames received and handed to handlers.
    pub frames_in: i64,
    /// Bytes received.
    pub bytes_in: i64,
    /// Messages ([`SendBuffer`](crate::SendBuffer)s) fully written to sockets.
    pub frames_out: i64,
    /// Bytes written to sockets.
    pub bytes_out: i64,
    /// Vectored write system calls that wrote something.
    pub writes: i64,
    /// Writes that found the socket full (short write or EAGAIN): the session then waits for
    /// writability with its batch held.
    pub writes_blocked: i64,
    /// Sessions closed for a protocol error.
    pub protocol_errors: i64,
    /// Connections closed at accept because the engine was at `max_connections`.
    pub rejected: i64,
    /// Sessions closed by the first-frame deadline or the idle timeout.
    pub timeouts: i64,
    /// Sessions closed as slow consumers.
    pub slow_consumers: i64,
    /// Receive chunks allocated (the worker reuses its chunk when no frame view pins it).
    pub recv_chunks_allocated: i64,
    /// Nanoseconds the workers spent in loop turns that had work (events, ticks or retries),
    /// summed over workers: divided by wall time, the workers' utilisation.
    pub busy_ns: i64,
    /// Times a worker wrote out queued data between reads because one turn's frames had
    /// queued more than its per-turn output budget (8 MiB): a sign of fan-out bursts or of a
    /// worker falling behind.
    pub budget_flushes: i64,
    /// io_uring: receives paused because no provided buffer was free (ring-full
    /// back-pressure: the data waits in the socket until buffers come back).
    pub recv_buffer_waits: i64,
    /// Process-wide: live [`SendBuffer`](crate::SendBuffer) handles.
    pub live_send_buffers: i64,
    /// Process-wide: pooled send chunks with bytes still lent out.
    pub chunks_in_use: i64,
    /// Process-wide: pooled send chunks ever allocated.
    pub chunks_allocated: i64,
}

impl Snapshot {
    /// Messages per vectored write: how well sends coalesce (1.0 means no coalescing).
    pub fn messages_per_write(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            self.frames_out as f64 / self.writes as f64
        }
    }
}

impl Snapshot {
    /// The counters in the Prometheus text exposition format (version 0.0.4), every name
    /// prefixed `zerocast_`, for a `/metrics` endpoint.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let rows: [(&str, &str, &str, f64); 21] = [
            (
                "connections_open",
                "gauge",
                "Sessions currently open.",
                self.connections_open as f64,
            ),
            (
                "accepted_total",
                "counter",
                "Connections accepted.",
                self.accepted as f64,
            ),
            (
                "connected_total",
                "counter",
                "Outgoing connections established.",
                self.connected as f64,
            ),
            (
                "closed_total",
                "counter",
                "Sessions closed, for any reason.",
                self.closed as f64,
            ),
            (
                "frames_in_total",
                "counter",
                "Frames received.",
                self.frames_in as f64,
            ),
            (
                "bytes_in_total",
                "counter",
                "Bytes received.",
                self.bytes_in as f64,
            ),
            (
                "messages_out_total",
                "counter",
                "Send buffers fully written.",
                self.frames_out as f64,
            ),
            (
                "bytes_out_total",
                "counter",
                "Bytes written.",
                self.bytes_out as f64,
            ),
            (
                "writes_total",
                "counter",
                "Vectored write calls that wrote something.",
                self.writes as f64,
            ),
            (
                "writes_blocked_total",
                "counter",
                "Writes that found the socket full.",
                self.writes_blocked as f64,
            ),
            (
                "messages_per_write",
                "gauge",
                "Send buffers per vectored write, since start.",
                self.messages_per_write(),
            ),
            (
                "protocol_errors_total",
                "counter",
                "Sessions closed for a protocol error.",
                self.protocol_errors as f64,
            ),
            (
                "rejected_total",
                "counter",
                "Connections refused at max_connections.",
                self.rejected as f64,
            ),
            (
                "timeouts_total",
                "counter",
                "Sessions closed by a deadline.",
                self.timeouts as f64,
            ),
            (
                "slow_consumers_total",
                "counter",
                "Sessions closed as slow consumers.",
                self.slow_consumers as f64,
            ),
            (
                "budget_flushes_total",
                "counter",
                "Mid-turn writes forced by the per-turn output budget.",
                self.budget_flushes as f64,
            ),
            (
                "recv_buffer_waits_total",
                "counter",
                "io_uring receives paused because no provided buffer was free.",
                self.recv_buffer_waits as f64,
            ),
            (
                "busy_seconds_total",
                "counter",
                "Time workers spent in turns with work.",
                self.busy_ns as f64 / 1e9,
            ),
            (
                "live_send_buffers",
                "gauge",
                "SendBuffer handles alive in the process.",
                self.live_send_buffers as f64,
            ),
            (
                "send_chunks_in_use",
                "gauge",
                "Pooled send chunks with bytes lent out.",
                self.chunks_in_use as f64,
            ),
            (
                "recv_chunks_allocated_total",
                "counter",
                "Receive chunks allocated.",
                self.recv_chunks_allocated as f64,
            ),
        ];
        let mut out = String::with_capacity(4096);
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP zerocast_{name} {help}");
            let _ = writeln!(out, "# TYPE zerocast_{name} {kind}");
            let _ = writeln!(out, "zerocast_{name} {value}");
        }
        out
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "open={} accepted={} connected={} closed={} frames_in={} bytes_in={} frames_out={} \
             bytes_out={} writes={} writes_blocked={} msgs_per_write={:.2} protocol_errors={} \
             rejected={} timeouts={} slow_consumers={} \
             live_send_buffers={} chunks_in_use={} chunks_allocated={} recv_chunks_allocated={} \
             busy_s={:.3} budget_flushes={} recv_buffer_waits={}",
            self.connections_open,
            self.accepted,
            self.connected,
            self.closed,
            self.frames_in,
            self.bytes_in,
            self.frames_out,
            self.bytes_out,
            self.writes,
            self.writes_blocked,
            self.messages_per_write(),
            self.protocol_errors,
            self.rejected,
            self.timeouts,
            self.slow_consumers,
            self.live_send_buffers,
            self.chunks_in_use,
            self.chunks_allocated,
            self.recv_chunks_allocated,
            self.busy_ns as f64 / 1e9,
            self.budget_flushes,
            self.recv_buffer_waits,
        )
    }
}

impl Metrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections_open: self.connections_open.get(),
            accepted: self.accepted.get(),
            connected: self.connected.get(),
            closed: self.closed.get(),
            frames_in: self.frames_in.get(),
            bytes_in: self.bytes_in.get(),
            frames_out: self.frames_out.get(),
            bytes_out: self.bytes_out.get(),
            writes: self.writes.get(),
            writes_blocked: self.writes_blocked.get(),
            protocol_errors: self.protocol_errors.get(),
            rejected: self.rejected.get(),
            timeouts: self.timeouts.get(),
            slow_consumers: self.slow_consumers.get(),
            recv_chunks_allocated: self.recv_chunks_allocated.get(),
            busy_ns: self.busy_ns.get(),
            budget_flushes: self.budget_flushes.get(),
            recv_buffer_waits: self.recv_buffer_waits.get(),
            live_send_buffers: LIVE_SEND_BUFFERS.get(),
            chunks_in_use: CHUNKS_IN_USE.get(),
            chunks_allocated: CHUNKS_ALLOCATED.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_type_and_value_for_every_counter() {
        let s = Snapshot {
            connections_open: 3,
            frames_out: 10,
            writes: 4,
            ..Snapshot::default()
        };
        let text = s.to_prometheus();
        assert!(
            text.contains("# TYPE zerocast_connections_open gauge\nzerocast_connections_open 3\n")
        );
        assert!(text.contains("zerocast_messages_per_write 2.5\n"));
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 21);
        assert_eq!(text.lines().filter(|l| l.starts_with("# HELP")).count(), 21);
        for line in samples {
            let (name, value) = line.split_once(' ').unwrap();
            assert!(
                name.starts_with("zerocast_")
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            );
            value.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn striped_sums_across_threads() {
        let c = std::sync::Arc::new(Striped::new());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(1);
                    }
                    c.add(-500);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(c.get(), 2000);
    }
}
