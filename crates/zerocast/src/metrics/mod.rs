//! What an engine counts, as a point-in-time [`Snapshot`].
//!
//! Every figure has one name, used everywhere it is shown: the `name=value` pairs of
//! [`Snapshot`]'s `Display` (the CLI's `stats` and `final` lines), and the Prometheus families a
//! `/metrics` endpoint builds from [`Snapshot::rows`] (`zerocast_` + the name, `_total` added to
//! counters, as Prometheus names them).
//!
//! Counters are kept per worker and written only by their worker (no atomic read-modify-write
//! on the hot path); a snapshot sums them, and keeps each worker's for per-worker labels.

use std::fmt;

pub use crate::sync::counter::{HistogramSnapshot, Striped, BUCKETS};

/// Whether a figure only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (Prometheus: `counter`, named with `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One figure: its name, kind, meaning, and value.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The name (`frames_out`): the key of the `Display` pairs and, prefixed `zerocast_`, the
    /// Prometheus family.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// What it counts.
    pub help: &'static str,
    /// The value.
    pub value: f64,
}

/// One worker's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Sessions open on this worker now.
    pub connections_open: u64,
    /// Connections this worker accepted (including those refused at the cap).
    pub accepted: u64,
    /// Sessions closed, for any reason.
    pub closed: u64,
    /// Frames received and handed to the handler.
    pub frames_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Receives that brought bytes (read calls on epoll, receive completions on io_uring).
    pub reads: u64,
    /// Messages (queued buffers) fully written to sockets.
    pub frames_out: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Write system calls (or submitted sends) that wrote something.
    pub writes: u64,
    /// Writes that found the socket full (short write or EAGAIN).
    pub writes_blocked: u64,
    /// Sessions closed for a protocol error (framing or packet).
    pub protocol_errors: u64,
    /// Connections closed at accept because the engine was at its connection cap.
    pub rejected: u64,
    /// Sessions closed by the first-frame deadline or the idle timeout.
    pub timeouts: u64,
    /// Sessions closed as slow consumers.
    pub slow_consumers: u64,
    /// Farewell frames written before a close (the handler's reason to the client).
    pub farewells: u64,
    /// WebSocket handshakes completed.
    pub ws_opened: u64,
    /// WebSocket upgrade requests refused (HTTP 400 or 426).
    pub ws_refused: u64,
    /// WebSocket sessions closed for breaking RFC 6455 (with a close frame and its code).
    pub ws_errors: u64,
    /// Datagrams taken: their frames went to the handler.
    pub datagrams_in: u64,
    /// recvmmsg calls that returned datagrams.
    pub datagram_reads: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// sendmmsg calls.
    pub datagram_writes: u64,
    /// Datagrams refused: malformed, an unknown token, or a wrong tag.
    pub datagrams_refused: u64,
    /// Datagrams dropped as older than the last taken.
    pub datagrams_stale: u64,
    /// Datagrams dropped over a channel's rate.
    pub datagrams_flood: u64,
    /// Datagrams that moved a channel to a new client address.
    pub datagrams_rebound: u64,
    /// Datagrams the kernel would not take (dropped, as the channel may).
    pub datagrams_dropped: u64,
    /// Receive chunks allocated (a chunk is reused once no frame view pins it).
    pub recv_chunks_allocated: u64,
    /// Nanoseconds spent in loop turns that had work.
    pub busy_ns: u64,
    /// Loop turns (waits that returned): a worker that spins shows millions per second.
    pub turns: u64,
    /// Times a turn wrote out its queued output between reads, past the per-turn budget.
    pub budget_flushes: u64,
    /// io_uring: receives paused because no provided buffer was free (back-pressure).
    pub recv_buffer_waits: u64,
    /// Buffers this worker's queues hold now (each buffer once, whatever number of sessions
    /// queue it): back to 0 when nothing is queued.
    pub buffers_held: u64,
    /// Bytes queued on this worker's sessions and not yet written, now.
    pub queued_bytes: u64,
    /// Pooled send chunks of this worker's thread with bytes lent out, now.
    pub chunks_in_use: u64,
    /// Handler tick durations, in nanoseconds.
    pub tick_ns: HistogramSnapshot,
    /// Bytes per write.
    pub write_bytes: HistogramSnapshot,
    /// Messages per write.
    pub write_messages: HistogramSnapshot,
    /// A session's queued bytes when its worker starts writing them.
    pub queue_bytes: HistogramSnapshot,
}

/// A point-in-time copy of an engine's figures: sums over its workers, each worker's, and
/// the process-wide buffer gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The sums over workers.
    pub total: WorkerSnapshot,
    /// Outgoing connections established by [`Engine::connect`](crate::Engine::connect).
    pub connected: u64,
    /// Each worker's figures, by worker index.
    pub workers: Vec<WorkerSnapshot>,
    /// Process-wide: live [`SendBuffer`](crate::SendBuffer) handles (any engine's, and the
    /// application's).
    pub live_send_buffers: i64,
    /// Process-wide: pooled send chunks ever allocated.
    pub chunks_allocated: i64,
}

impl std::ops::Deref for Snapshot {
    type Target = WorkerSnapshot;

    /// The sums over workers: `snapshot.frames_out` is every worker's.
    fn deref(&self) -> &WorkerSnapshot {
        &self.total
    }
}

impl WorkerSnapshot {
    /// Messages per write: how well sends coalesce (1.0 means no coalescing).
    pub fn messages_per_write(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            self.frames_out as f64 / self.writes as f64
        }
    }

    /// Adds `o` (for sums over workers).
    pub fn merge(&mut self, o: &Self) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            connections_open,
            accepted,
            closed,
            frames_in,
            bytes_in,
            reads,
            frames_out,
            bytes_out,
            writes,
            writes_blocked,
            protocol_errors,
            rejected,
            timeouts,
            slow_consumers,
            farewells,
            ws_opened,
            ws_refused,
            ws_errors,
            datagrams_in,
            datagram_reads,
            datagrams_out,
            datagram_writes,
            datagrams_refused,
            datagrams_stale,
            datagrams_flood,
            datagrams_rebound,
            datagrams_dropped,
            recv_chunks_allocated,
            busy_ns,
            turns,
            budget_flushes,
            recv_buffer_waits,
            buffers_held,
            queued_bytes,
            chunks_in_use
        );
        self.tick_ns.merge(&o.tick_ns);
        self.write_bytes.merge(&o.write_bytes);
        self.write_messages.merge(&o.write_messages);
        self.queue_bytes.merge(&o.queue_bytes);
    }

    /// Every counter and gauge of a worker, with its name, kind and meaning.
    pub fn rows(&self) -> Vec<Row> {
        use Kind::{Counter as C, Gauge as G};
        let row = Row::whole;
        vec![
            row(
                "connections_open",
                G,
                "Sessions open.",
                self.connections_open,
            ),
            row(
                "accepted",
                C,
                "Connections accepted, including those refused at the cap.",
                self.accepted,
            ),
            row("closed", C, "Sessions closed, for any reason.", self.closed),
            row(
                "frames_in",
                C,
                "Frames received and handed to the handler.",
                self.frames_in,
            ),
            row("bytes_in", C, "Bytes received.", self.bytes_in),
            row("reads", C, "Receives that brought bytes.", self.reads),
            row(
                "frames_out",
                C,
                "Messages fully written to sockets.",
                self.frames_out,
            ),
            row("bytes_out", C, "Bytes written to sockets.", self.bytes_out),
            row(
                "writes",
                C,
                "Write calls that wrote something.",
                self.writes,
            ),
            row(
                "writes_blocked",
                C,
                "Writes that found the socket full.",
                self.writes_blocked,
            ),
            row(
                "protocol_errors",
                C,
                "Sessions closed for a protocol error.",
                self.protocol_errors,
            ),
            row(
                "rejected",
                C,
                "Connections refused at the connection cap.",
                self.rejected,
            ),
            row(
                "timeouts",
                C,
                "Sessions closed by a frame deadline.",
                self.timeouts,
            ),
            row(
                "slow_consumers",
                C,
                "Sessions closed as slow consumers.",
                self.slow_consumers,
            ),
            row(
                "farewells",
                C,
                "Farewell frames written before a close.",
                self.farewells,
            ),
            row(
                "ws_opened",
                C,
                "WebSocket handshakes completed.",
                self.ws_opened,
            ),
            row(
                "ws_refused",
                C,
                "WebSocket upgrade requests refused.",
                self.ws_refused,
            ),
            row(
                "ws_errors",
                C,
                "WebSocket sessions closed for breaking RFC 6455.",
                self.ws_errors,
            ),
            row(
                "datagrams_in",
                C,
                "Datagrams taken: their frames went to the handler.",
                self.datagrams_in,
            ),
            row(
                "datagram_reads",
                C,
                "recvmmsg calls that returned datagrams.",
                self.datagram_reads,
            ),
            row("datagrams_out", C, "Datagrams sent.", self.datagrams_out),
            row(
                "datagram_writes",
                C,
                "sendmmsg calls.",
                self.datagram_writes,
            ),
            row(
                "datagrams_refused",
                C,
                "Datagrams refused: malformed, an unknown token, or a wrong tag.",
                self.datagrams_refused,
            ),
            row(
                "datagrams_stale",
                C,
                "Datagrams dropped as older than the last taken.",
                self.datagrams_stale,
            ),
            row(
                "datagrams_flood",
                C,
                "Datagrams dropped over a channel's rate.",
                self.datagrams_flood,
            ),
            row(
                "datagrams_rebound",
                C,
                "Datagrams that moved a channel to a new client address.",
                self.datagrams_rebound,
            ),
            row(
                "datagrams_dropped",
                C,
                "Datagrams the kernel would not take (dropped, as the channel may).",
                self.datagrams_dropped,
            ),
            row(
                "recv_chunks_allocated",
                C,
                "Receive chunks allocated.",
                self.recv_chunks_allocated,
            ),
            row(
                "busy_seconds",
                C,
                "Time spent in loop turns that had work.",
                0,
            )
            .with(self.busy_ns as f64 / 1e9),
            row("turns", C, "Event loop turns.", self.turns),
            row(
                "budget_flushes",
                C,
                "Mid-turn writes past the per-turn output budget.",
                self.budget_flushes,
            ),
            row(
                "recv_buffer_waits",
                C,
                "io_uring receives paused for want of buffers.",
                self.recv_buffer_waits,
            ),
            row(
                "buffers_held",
                G,
                "Buffers held by the queues (each once).",
                self.buffers_held,
            ),
            row(
                "queued_bytes",
                G,
                "Bytes queued and not yet written.",
                self.queued_bytes,
            ),
            row(
                "chunks_in_use",
                G,
                "Pooled send chunks of the workers with bytes lent out.",
                self.chunks_in_use,
            ),
        ]
    }

    /// The histograms, with their names and meanings.
    pub fn histograms(&self) -> [(&'static str, &'static str, &HistogramSnapshot); 4] {
        [
            ("tick_nanoseconds", "Handler tick durations.", &self.tick_ns),
            ("write_bytes", "Bytes per write.", &self.write_bytes),
            (
                "write_messages",
                "Messages per write.",
                &self.write_messages,
            ),
            (
                "queue_bytes",
                "A session's queued bytes when writing starts.",
                &self.queue_bytes,
            ),
        ]
    }
}

impl Row {
    /// A row whose value is a whole number.
    pub fn whole(name: &'static str, kind: Kind, help: &'static str, value: u64) -> Self {
        Self {
            name,
            kind,
            help,
            value: value as f64,
        }
    }

    fn with(mut self, value: f64) -> Self {
        self.value = value;
        self
    }
}

impl Snapshot {
    /// Every figure: the workers' sums, the engine's own, and the process-wide gauges.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = self.total.rows();
        rows.push(Row {
            name: "connected",
            kind: Kind::Counter,
            help: "Outgoing connections established.",
            value: self.connected as f64,
        });
        rows.push(Row {
            name: "msgs_per_write",
            kind: Kind::Gauge,
            help: "Messages per write since start.",
            value: self.messages_per_write(),
        });
        rows.push(Row {
            name: "live_send_buffers",
            kind: Kind::Gauge,
            help: "Process-wide: live SendBuffer handles.",
            value: self.live_send_buffers as f64,
        });
        rows.push(Row {
            name: "chunks_allocated",
            kind: Kind::Counter,
            help: "Process-wide: pooled send chunks allocated.",
            value: self.chunks_allocated as f64,
        });
        rows
    }
}

/// `name=value` pairs, one line: what the CLI prints on `stats` and `final` lines.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rows().iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            if r.value.fract() == 0.0 {
                write!(f, "{sep}{}={}", r.name, r.value as i64)?;
            } else if r.name == "msgs_per_write" {
                write!(f, "{sep}{}={:.2}", r.name, r.value)?;
            } else {
                write!(f, "{sep}{}={:.3}", r.name, r.value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_unique_prometheus_name_and_shows_in_the_line() {
        let s = Snapshot {
            total: WorkerSnapshot {
                frames_out: 10,
                writes: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let rows = s.rows();
        let mut names: Vec<_> = rows.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), rows.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        let line = s.to_string();
        assert!(line.contains("frames_out=10 "), "{line}");
        assert!(line.contains("msgs_per_write=2.50"), "{line}");
        assert_eq!(line.split(' ').count(), rows.len());
    }
}
