//! A worker's counters: written by the worker alone (single-writer counters, no atomic
//! read-modify-write), read by any thread for a snapshot.

use crate::metrics::WorkerSnapshot;
use crate::sync::counter::{Counter, Histogram};

/// One worker's counters; field meanings on [`WorkerSnapshot`].
///
/// Invariant: only the owning worker's thread writes (see [`Counter`]).
#[derive(Debug, Default)]
pub(crate) struct WorkerMetrics {
    pub(crate) connections_open: Counter,
    pub(crate) accepted: Counter,
    pub(crate) closed: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) reads: Counter,
    pub(crate) frames_out: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) writes: Counter,
    pub(crate) writes_blocked: Counter,
    pub(crate) protocol_errors: Counter,
    pub(crate) rejected: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) slow_consumers: Counter,
    pub(crate) farewells: Counter,
    pub(crate) ws_opened: Counter,
    pub(crate) ws_refused: Counter,
    pub(crate) ws_errors: Counter,
    pub(crate) datagrams_in: Counter,
    pub(crate) datagram_reads: Counter,
    pub(crate) datagrams_out: Counter,
    pub(crate) datagram_writes: Counter,
    pub(crate) datagrams_refused: Counter,
    pub(crate) datagrams_stale: Counter,
    pub(crate) datagrams_flood: Counter,
    pub(crate) datagrams_rebound: Counter,
    pub(crate) datagrams_dropped: Counter,
    pub(crate) recv_chunks_allocated: Counter,
    pub(crate) busy_ns: Counter,
    pub(crate) turns: Counter,
    pub(crate) budget_flushes: Counter,
    pub(crate) recv_buffer_waits: Counter,
    pub(crate) buffers_held: Counter,
    pub(crate) queued_bytes: Counter,
    pub(crate) chunks_in_use: Counter,
    pub(crate) tick_ns: Histogram,
    pub(crate) write_bytes: Histogram,
    pub(crate) write_messages: Histogram,
    pub(crate) queue_bytes: Histogram,
}

impl WorkerMetrics {
    pub(crate) fn snapshot(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            connections_open: self.connections_open.get(),
            accepted: self.accepted.get(),
            closed: self.closed.get(),
            frames_in: self.frames_in.get(),
            bytes_in: self.bytes_in.get(),
            reads: self.reads.get(),
            frames_out: self.frames_out.get(),
            bytes_out: self.bytes_out.get(),
            writes: self.writes.get(),
            writes_blocked: self.writes_blocked.get(),
            protocol_errors: self.protocol_errors.get(),
            rejected: self.rejected.get(),
            timeouts: self.timeouts.get(),
            slow_consumers: self.slow_consumers.get(),
            farewells: self.farewells.get(),
            ws_opened: self.ws_opened.get(),
            ws_refused: self.ws_refused.get(),
            ws_errors: self.ws_errors.get(),
            datagrams_in: self.datagrams_in.get(),
            datagram_reads: self.datagram_reads.get(),
            datagrams_out: self.datagrams_out.get(),
            datagram_writes: self.datagram_writes.get(),
            datagrams_refused: self.datagrams_refused.get(),
            datagrams_stale: self.datagrams_stale.get(),
            datagrams_flood: self.datagrams_flood.get(),
            datagrams_rebound: self.datagrams_rebound.get(),
            datagrams_dropped: self.datagrams_dropped.get(),
            recv_chunks_allocated: self.recv_chunks_allocated.get(),
            busy_ns: self.busy_ns.get(),
            turns: self.turns.get(),
            budget_flushes: self.budget_flushes.get(),
            recv_buffer_waits: self.recv_buffer_waits.get(),
            buffers_held: self.buffers_held.get(),
            queued_bytes: self.queued_bytes.get(),
            chunks_in_use: self.chunks_in_use.get(),
            tick_ns: self.tick_ns.snapshot(),
            write_bytes: self.write_bytes.snapshot(),
            write_messages: self.write_messages.snapshot(),
            queue_bytes: self.queue_bytes.snapshot(),
        }
    }
}
