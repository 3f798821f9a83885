//! Writing: each session's queued output leaves in one gathered write per turn (small
//! messages corked into one contiguous buffer, large ones referenced); a session's own
//! replies leave right after its read; a turn that has queued more than its budget writes
//! before it reads on.

use std::io;

use super::core::Core;
use super::slab::slot_of;
use super::{Backend, Event, Sent, Token, TURN_OUTPUT_BUDGET};
use crate::conn::outq::{CORK_IN_FLIGHT, MAX_WRITE};
use crate::session::{self, CloseReason};
use crate::sys::socket::IOV_MAX;

impl<B: Backend> Core<B> {
    /// Where the dirty list stands: see [`flush_replies`](Self::flush_replies).
    pub(super) fn dirty_mark(&self) -> usize {
        session::for_outbox(|o| o.dirty.len())
    }

    /// Writes the session's output now if its frames queued output on it alone (an echo, a
    /// request answered) since the dirty list stood at `mark`: waiting for the end of the turn
    /// would coalesce nothing more into that write and only delay it behind every other
    /// session's reads. Output for other sessions (a broadcast) waits for the end of the turn,
    /// where it gathers into one write per recipient.
    pub(super) fn flush_replies(&mut self, token: Token, mark: usize) {
        let slot = slot_of(token);
        let own = session::for_outbox(|o| {
            let own = o.only_dirtied(mark, slot);
            if own {
                o.undirty_last(slot);
            }
            own
        });
        if own {
            self.flush(token);
        }
    }

    /// At the end of a turn: writes the output queued, or, with a write delay
    /// ([`Builder::write_delay`](crate::Builder::write_delay)), the output of the sessions
    /// whose last write is at least that long ago; the others wait (the worker wakes for the
    /// earliest). Shutting down, nothing is held.
    pub(super) fn write_when_due(&mut self) {
        let delay = self.ctx.config.write_delay;
        if delay.is_zero() || self.shutdown_at.is_some() {
            return self.write_all();
        }
        // Each session is written at most once per delay: a quiet session's first message
        // goes out at once, a busy one's wait for the delay and share its write.
        let now = self.now_us;
        let mut due = std::mem::take(&mut self.dirty);
        let wait = session::for_outbox(|o| o.take_due(now, &mut due));
        self.write_at = wait.map(|us| self.now + std::time::Duration::from_micros(us));
        self.write_slots(&mut due);
        self.dirty = due;
        self.post_batches();
    }

    /// Writes every session with new output, then posts the batches bound for other workers.
    pub(super) fn write_all(&mut self) {
        self.write_at = None;
        let mut dirty = std::mem::take(&mut self.dirty);
        session::for_outbox(|o| o.take_dirty(&mut dirty));
        self.write_slots(&mut dirty);
        self.dirty = dirty;
        self.post_batches();
    }

    fn write_slots(&mut self, slots: &mut Vec<u32>) {
        session::for_outbox(|o| o.queued = 0);
        slots.sort_unstable();
        for slot in slots.drain(..) {
            if let Some(token) = self.conns.token_at(slot) {
                self.flush(token);
            }
        }
    }

    fn post_batches(&mut self) {
        #[cfg(target_os = "linux")]
        self.send_datagrams();
        for batch in session::for_outbox(|o| std::mem::take(&mut o.batches)) {
            batch.post();
        }
    }

    /// Once this turn's frames have queued more than [`TURN_OUTPUT_BUDGET`] bytes, writes
    /// everything queued before reading more. Without it, a worker that falls behind reads
    /// every frame waiting in its sockets before writing anything: with broadcast fan-out the
    /// output of one turn grows with the backlog, the next turn is longer still, and memory and
    /// latency run away. With it the backlog stays in the kernel's socket buffers, where TCP
    /// pushes back on the senders.
    ///
    /// A completion backend's writes are submitted, not made, so this also has it push them
    /// to the kernel and handles the sends that finished, writing the follow-ups of sessions
    /// with more queued, until no send finishes: what is left waits in full sockets. Other
    /// events met meanwhile wait, in order, for after.
    pub(super) fn bound_turn_output(&mut self) {
        if session::for_outbox(|o| o.queued) <= TURN_OUTPUT_BUDGET {
            return;
        }
        self.m.budget_flushes.add(1);
        let mut aside = Vec::new();
        loop {
            self.run_commands();
            self.write_all();
            let mut got = Vec::new();
            if self.b.drain_sends(&mut got) == 0 {
                aside.append(&mut got);
                break;
            }
            for ev in got {
                match ev {
                    Event::Sent(token, result) => self.on_sent(token, result),
                    other => aside.push(other),
                }
            }
        }
        self.events.extend(aside);
    }

    /// Writes what is queued on the session, in gathered writes, until its queue is empty,
    /// the socket is full (resumed on [`Event::Writable`]), or a send is in flight (resumed on
    /// its [`Event::Sent`]).
    pub(super) fn flush(&mut self, token: Token) {
        let slot = slot_of(token);
        let Self {
            conns,
            b,
            m,
            writes,
            ..
        } = self;
        let Some(c) = conns.get_mut(token) else {
            return;
        };
        if c.closed || c.inflight.is_some() || c.blocked {
            return;
        }
        let mut failed = None;
        let next_write = self.now_us + u64::from(self.write_delay_us);
        let max_cork = if b.sends_inline() {
            MAX_WRITE
        } else {
            CORK_IN_FLIGHT
        };
        let empty = session::for_outbox(|out| {
            out.slots[slot as usize].next_write = next_write;
            let first = out.slots[slot as usize].q.bytes();
            if first > 0 {
                m.queue_bytes.record(first as u64);
            }
            loop {
                let q = &mut out.slots[slot as usize].q;
                let transport = c.ws_mut().is_some_and(|ws| ws.ready(q.is_empty()));
                let held = c.ws().is_some_and(|ws| ws.holds_payload());
                if !transport && (q.is_empty() || held) {
                    break;
                }
                let mut w = writes.pop().unwrap_or_default();
                let offered = match c.ws_mut() {
                    None => q.gather(&out.keeps, &mut w, IOV_MAX, max_cork),
                    Some(ws) => {
                        ws.framing(|f| q.gather_framed(&out.keeps, &mut w, IOV_MAX, max_cork, f))
                    }
                };
                match b.send(token, &c.sock, &mut w) {
                    Sent::Done(Ok(n)) => {
                        let queued = c.ws_mut().map_or(n, |ws| ws.sent(n, &w.framed));
                        let done = q.advance(queued, &mut out.keeps);
                        count_write(m, n, done);
                        w.trim();
                        writes.push(w);
                        if n < offered {
                            // The socket is full; freeing space raises a new writable edge.
                            m.writes_blocked.add(1);
                            c.blocked = true;
                            break;
                        }
                    }
                    Sent::Done(Err(e)) => {
                        writes.push(w);
                        match e.kind() {
                            io::ErrorKind::Interrupted => continue,
                            io::ErrorKind::WouldBlock => {
                                m.writes_blocked.add(1);
                                c.blocked = true;
                            }
                            _ => failed = Some(CloseReason::from_io(&e)),
                        }
                        break;
                    }
                    Sent::Pending => {
                        c.inflight = Some(w);
                        break;
                    }
                }
            }
            let q = &out.slots[slot as usize].q;
            c.session
                .shared
                .held
                .store(q.bytes() as u32, std::sync::atomic::Ordering::Relaxed);
            match c.ws() {
                None => q.is_empty(),
                // Bytes the transport holds back for good (after a close) count as written.
                Some(ws) => ws.idle() && (q.is_empty() || ws.holds_payload()),
            }
        });
        if let Some(reason) = failed {
            return self.close_now(token, reason);
        }
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let idle = c.inflight.is_none();
        if idle && empty && c.closes_after_flush() {
            let reason = c.take_after_flush();
            // Through `close`: a reason that deserves a farewell gets one, once.
            self.close(token, reason);
        } else if c.farewell && c.blocked {
            // A farewell does not wait for a peer that is not reading.
            let reason = c.take_after_flush();
            self.close_now(token, reason);
        }
    }

    /// A completion backend's send finished.
    pub(super) fn on_sent(&mut self, token: Token, result: io::Result<usize>) {
        let slot = slot_of(token);
        // Gone already: the connection was closed by an event handled before this one (its
        // receive failed, say) and the backend, which had seen this send complete, released
        // it at once.
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let Some(w) = c.inflight.take() else {
            return;
        };
        if c.closed {
            // The queue was kept for the kernel; nothing reads it now.
            session::for_outbox(|o| o.close(slot));
            self.writes.push(w);
            return;
        }
        match result {
            Ok(n) => {
                let queued = c.ws_mut().map_or(n, |ws| ws.sent(n, &w.framed));
                let done =
                    session::for_outbox(|o| o.slots[slot as usize].q.advance(queued, &mut o.keeps));
                count_write(&self.m, n, done);
                if n < w.offered {
                    // The socket filled: the rest goes with the next send, which the kernel
                    // starts once there is room.
                    self.m.writes_blocked.add(1);
                    if c.farewell {
                        let reason = c.take_after_flush();
                        self.writes.push(w);
                        return self.close_now(token, reason);
                    }
                }
                self.writes.push(w);
                self.flush(token);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                self.m.writes_blocked.add(1);
                self.writes.push(w);
                self.flush(token);
            }
            Err(e) => {
                self.writes.push(w);
                self.close_now(token, CloseReason::from_io(&e));
            }
        }
    }
}

fn count_write(m: &super::metrics::WorkerMetrics, n: usize, done: usize) {
    if n > 0 {
        m.writes.add(1);
        m.bytes_out.add(n as u64);
        m.write_bytes.record(n as u64);
        m.write_messages.record(done as u64);
    }
    m.frames_out.add(done as u64);
}
