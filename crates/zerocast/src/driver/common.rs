//! What every backend does the same way, whatever tells it that a socket is ready or an
//! operation is done: cutting received bytes into frames and delivering them, releasing what a
//! write took from a send batch, deadlines, and the bookkeeping of opening and closing a
//! session. Sans-IO: nothing here makes a system call.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::buffer::SendBuffer;
use crate::engine::{Config, EngineCtx};
use crate::frame::{checked, Decoded, FrameError};
use crate::handler::Frame;
use crate::session::queue::SendQueue;
use crate::session::{CloseReason, Session};

/// Capacity reserved up front for a frame split across reads; larger frames grow as they come.
pub(crate) const MAX_PENDING_HINT: usize = 64 * 1024;
/// Most bytes one gathered write carries.
pub(crate) const MAX_WRITE: usize = 1024 * 1024;
/// Send deque capacity (in buffers) kept across drains; more is released once the queue empties.
pub(crate) const BATCH_KEEP: usize = 1024;

/// A session's receive side: the start of a frame split across reads.
///
/// Invariant: `pending` holds only the start of one incomplete frame (never a complete one);
/// it is empty, with no capacity, while no frame is split, so an idle session holds no
/// receive memory.
#[derive(Default)]
pub(crate) struct RecvState {
    pub(crate) pending: BytesMut,
    /// Total length the incomplete frame in `pending` needs.
    pub(crate) pending_total: usize,
}

impl RecvState {
    /// Delivers the frames in `data`, freshly received into shared memory. A trailing
    /// incomplete frame is copied into `pending` (the only copy on the receive path, bounded
    /// by one frame). Returns the frames delivered.
    pub(crate) fn deliver_chunk(
        &mut self,
        ctx: &EngineCtx,
        session: &Session,
        data: &Bytes,
    ) -> Result<usize, CloseReason> {
        let mut off = 0;
        let mut delivered = 0;
        while off < data.len() {
            if session.is_closing() {
                break;
            }
            match next_frame(ctx, &data[off..])? {
                Decoded::Frame { len, header, id } => {
                    deliver(ctx, session, id, data, off..off + len, header)?;
                    delivered += 1;
                    off += len;
                }
                Decoded::NeedMore { total } => {
                    let tail = &data[off..];
                    let mut pending =
                        BytesMut::with_capacity(total.min(MAX_PENDING_HINT).max(tail.len()));
                    pending.put_slice(tail);
                    self.pending = pending;
                    self.pending_total = total;
                    break;
                }
            }
        }
        Ok(delivered)
    }

    /// Delivers the frames completed in `pending`, each split off as its own shared view.
    pub(crate) fn deliver_pending(
        &mut self,
        ctx: &EngineCtx,
        session: &Session,
    ) -> Result<usize, CloseReason> {
        let mut delivered = 0;
        while !self.pending.is_empty() {
            if session.is_closing() {
                return Ok(delivered);
            }
            match next_frame(ctx, &self.pending)? {
                Decoded::Frame { len, header, id } => {
                    let data = self.pending.split_to(len).freeze();
                    deliver(ctx, session, id, &data, 0..len, header)?;
                    delivered += 1;
                }
                Decoded::NeedMore { total } => {
                    self.pending_total = total;
                    return Ok(delivered);
                }
            }
        }
        // Nothing split any more: give the memory back so an idle session holds none.
        self.pending = BytesMut::new();
        Ok(delivered)
    }

    /// Delivers `data` received in one piece: in place if no frame is split, otherwise behind
    /// the split frame's start.
    pub(crate) fn deliver(
        &mut self,
        ctx: &EngineCtx,
        session: &Session,
        data: &Bytes,
    ) -> Result<usize, CloseReason> {
        if self.pending.is_empty() {
            self.deliver_chunk(ctx, session, data)
        } else {
            self.pending.extend_from_slice(data);
            self.deliver_pending(ctx, session)
        }
    }
}

fn next_frame(ctx: &EngineCtx, buf: &[u8]) -> Result<Decoded, CloseReason> {
    ctx.decoder
        .decode(buf)
        .and_then(|d| checked(d, buf.len()))
        .map_err(|e: FrameError| CloseReason::Protocol(e))
}

/// Hands one frame to the handler. A panic in the handler closes this session only.
fn deliver(
    ctx: &EngineCtx,
    session: &Session,
    id: u16,
    data: &Bytes,
    range: std::ops::Range<usize>,
    header: usize,
) -> Result<(), CloseReason> {
    ctx.metrics.frames_in.add(1);
    let frame = Frame::new(id, data, range, header);
    // AssertUnwindSafe: after a panic the engine touches nothing the handler was using; the
    // session is closed and the handler's own state is the application's to judge.
    catch_unwind(AssertUnwindSafe(|| ctx.handler.on_frame(session, frame)))
        .map_err(|p| CloseReason::from_panic(&*p))
}

/// Buffers taken from a session's queue and being written.
///
/// Invariant: `head_written < bufs[0].len()` whenever `bufs` is non-empty.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) bufs: VecDeque<SendBuffer>,
    pub(crate) head_written: usize,
}

impl Batch {
    /// Fills `iov` with what to write next (at most `max_iov` pieces, about [`MAX_WRITE`]
    /// bytes). Returns the bytes offered.
    pub(crate) fn fill(&self, iov: &mut Vec<libc::iovec>, max_iov: usize) -> usize {
        let mut offered = 0;
        for (i, buf) in self.bufs.iter().enumerate() {
            if iov.len() == max_iov || offered >= MAX_WRITE {
                break;
            }
            let skip = if i == 0 { self.head_written } else { 0 };
            let part = &buf[skip..];
            if part.is_empty() {
                continue;
            }
            iov.push(libc::iovec {
                iov_base: part.as_ptr().cast_mut().cast(),
                iov_len: part.len(),
            });
            offered += part.len();
        }
        offered
    }

    /// The kernel took `written` bytes: releases the buffers it finished and counts them.
    pub(crate) fn release(
        &mut self,
        written: usize,
        queue: &SendQueue<SendBuffer>,
        ctx: &EngineCtx,
    ) {
        let mut left = written + self.head_written;
        let mut done = 0;
        while let Some(front) = self.bufs.front() {
            if front.len() > left {
                break;
            }
            left -= front.len();
            self.bufs.pop_front();
            done += 1;
        }
        self.head_written = left;
        let m = &ctx.metrics;
        if written > 0 {
            m.writes.add(1);
            m.bytes_out.add(written as i64);
            queue.written(written);
        }
        m.frames_out.add(done);
    }

    /// After the queue ran empty: a burst grew the deque; don't pin its peak size for the
    /// session's life (the queue's deque is swapped for this one on the next take).
    pub(crate) fn shrink(&mut self) {
        if self.bufs.capacity() > BATCH_KEEP {
            self.bufs = VecDeque::new();
        }
    }
}

/// A session's deadlines and slow-consumer clock.
pub(crate) struct Timing {
    /// Accepted (not connected by us): deadlines apply.
    pub(crate) accepted: bool,
    /// When the last complete frame arrived (or the session opened, before the first).
    pub(crate) last_frame: Instant,
    pub(crate) got_frame: bool,
    /// Since when the session's queued bytes exceed the soft limit.
    pub(crate) over_soft_since: Option<Instant>,
}

impl Timing {
    pub(crate) fn new(accepted: bool, now: Instant) -> Self {
        Self {
            accepted,
            last_frame: now,
            got_frame: false,
            over_soft_since: None,
        }
    }

    /// `delivered` frames arrived at `now`.
    pub(crate) fn frames(&mut self, delivered: usize, now: Instant) {
        if delivered > 0 {
            self.got_frame = true;
            self.last_frame = now;
        }
    }

    /// Why the session must close now, if it must: a deadline passed, or it stayed above the
    /// soft queued-bytes limit for the grace period.
    pub(crate) fn expired(
        &mut self,
        cfg: &Config,
        now: Instant,
        queued: usize,
    ) -> Option<CloseReason> {
        if self.accepted {
            let silent = now.duration_since(self.last_frame);
            let deadline = if self.got_frame {
                cfg.idle_timeout.map(|t| (t, CloseReason::IdleTimeout))
            } else {
                cfg.first_frame_timeout
                    .map(|t| (t, CloseReason::FirstFrameTimeout))
            };
            if let Some((limit, reason)) = deadline {
                if silent >= limit {
                    return Some(reason);
                }
            }
        }
        if queued > cfg.soft_queued_bytes {
            let since = *self.over_soft_since.get_or_insert(now);
            if now.duration_since(since) >= cfg.slow_consumer_grace {
                return Some(CloseReason::SlowConsumer);
            }
        } else {
            self.over_soft_since = None;
        }
        None
    }
}

/// A session has opened on a worker: counts it, calls `on_connect`, then lists it in the
/// registry.
///
/// # Errors
/// The handler panicked: the caller closes the session with this reason.
pub(crate) fn opened(ctx: &EngineCtx, session: &Session) -> Result<(), CloseReason> {
    ctx.metrics.connections_open.add(1);
    tracing::trace!(session = %session.id(), peer = %session.peer_addr(), "session opened");
    catch_unwind(AssertUnwindSafe(|| ctx.handler.on_connect(session)))
        .map_err(|p| CloseReason::from_panic(&*p))?;
    ctx.registry.insert(session.clone());
    Ok(())
}

/// Counts and logs why a session is closing. Called before its socket closes: a peer that sees
/// the close sees it counted.
pub(crate) fn closing(ctx: &EngineCtx, session: &Session, reason: &CloseReason, accepted: bool) {
    if accepted {
        ctx.release();
    }
    let m = &ctx.metrics;
    match reason {
        CloseReason::Protocol(_) => {
            m.protocol_errors.add(1);
            tracing::info!(session = %session.id(), peer = %session.peer_addr(), %reason, "session closed");
        }
        CloseReason::SlowConsumer => {
            m.slow_consumers.add(1);
            tracing::info!(session = %session.id(), %reason, "session closed");
        }
        CloseReason::FirstFrameTimeout | CloseReason::IdleTimeout => {
            m.timeouts.add(1);
            tracing::debug!(session = %session.id(), %reason, "session closed");
        }
        CloseReason::Io(_) | CloseReason::HandlerPanic(_) => {
            tracing::info!(session = %session.id(), %reason, "session closed")
        }
        _ => tracing::debug!(session = %session.id(), %reason, "session closed"),
    }
}

/// A session's socket is closed: `connections_open` drops (whoever sees zero open sessions sees
/// every socket closed), `on_disconnect` runs, and the session leaves the registry.
pub(crate) fn closed(ctx: &EngineCtx, session: &Session, reason: &CloseReason) {
    let m = &ctx.metrics;
    m.connections_open.add(-1);
    m.closed.add(1);
    if catch_unwind(AssertUnwindSafe(|| {
        ctx.handler.on_disconnect(session, reason)
    }))
    .is_err()
    {
        tracing::error!(session = %session.id(), "handler panicked in on_disconnect");
    }
    ctx.registry.remove(session.id());
}

/// Runs the handler's tick. A panic is logged and the tick keeps running next time: it belongs
/// to no session that could be closed for it.
pub(crate) fn tick(ctx: &EngineCtx, worker: usize) {
    let handler = &ctx.handler;
    // AssertUnwindSafe: the engine's state is not touched by the handler.
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| handler.on_tick(worker))) {
        tracing::error!(worker, reason = %CloseReason::from_panic(&*p), "on_tick panicked");
    }
}

/// The next accepted connection is refused if the engine is full.
pub(crate) fn admit(ctx: &EngineCtx) -> bool {
    ctx.metrics.accepted.add(1);
    if ctx.admit() {
        return true;
    }
    ctx.metrics.rejected.add(1);
    tracing::debug!(reason = %CloseReason::TooManyConnections, "connection refused");
    false
}
