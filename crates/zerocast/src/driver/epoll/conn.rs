//! One connection's I/O state, and the worker's read and write paths.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use bytes::Bytes;

use super::Worker;
use crate::buffer::SendBuffer;
use crate::driver::common::{Batch, RecvState, Timing, MAX_PENDING_HINT};
use crate::driver::{RunCommands, WorkerShared};
use crate::engine::EngineCtx;
use crate::session;
use crate::session::queue::SendQueue;
use crate::session::{CloseReason, Session};
use crate::sys::{self, IoVecs};

/// A read into the shared chunk needs at least this much room.
const MIN_READ: usize = 4096;

/// I/O state of one session, owned by its worker.
///
/// Invariant: `draining` is true iff this worker holds the session's send flag and owes it a
/// flush: the batch (and queue) are written on the next writable event or command. (The
/// receive and batch invariants are on [`RecvState`] and [`Batch`].)
pub(super) struct Conn {
    fd: OwnedFd,
    pub(super) session: Session,
    rx: RecvState,
    batch: Batch,
    pub(super) draining: bool,
    /// The peer half-closed, hung up or errored (RDHUP, HUP, ERR): read until end of stream
    /// or error, never stop at a short read, or the edge that announced it is lost.
    pub(super) hup: bool,
    /// No more reading: the peer half-closed, or the engine is draining for shutdown.
    pub(super) eof: bool,
    /// Set with `eof`: the session closes with this reason once its queue is flushed.
    pub(super) after_flush: Option<CloseReason>,
    pub(super) timing: Timing,
}

impl Conn {
    pub(super) fn new(fd: OwnedFd, session: Session, accepted: bool, now: Instant) -> Self {
        Self {
            fd,
            session,
            rx: RecvState::default(),
            batch: Batch::default(),
            draining: false,
            hup: false,
            eof: false,
            after_flush: None,
            timing: Timing::new(accepted, now),
        }
    }

    /// Tears the connection down: closes the socket, releases every queued buffer. Returns the
    /// session for the disconnect callback.
    pub(super) fn close(self) -> Session {
        let Self {
            fd, session, batch, ..
        } = self;
        session.shared.retire();
        drop(fd);
        drop(batch);
        session
    }
}

enum Read {
    /// More data may be waiting.
    More,
    /// The socket is drained for now.
    Drained,
    /// The session was closed or is closing.
    Done,
    /// The peer closed its side.
    Eof,
}

impl Worker {
    /// Reads until the socket is drained, the session ends, or the read budget is spent (then
    /// the session is read again next turn: one busy peer cannot starve the others).
    pub(super) fn on_readable(&mut self, token: u64) {
        for _ in 0..self.ctx.config.read_budget {
            let read = self.read_once(token);
            self.bound_turn_output();
            match read {
                Ok(Read::More) => continue,
                Ok(Read::Drained | Read::Done) => {
                    self.flush_replies(token);
                    return;
                }
                Ok(Read::Eof) => {
                    self.on_eof(token);
                    return;
                }
                Err(reason) => {
                    self.close(token, reason);
                    return;
                }
            }
        }
        self.flush_replies(token);
        self.again.push(token);
    }

    /// Writes everything queued so far once this turn's frames have queued more than
    /// [`TURN_OUTPUT_BUDGET`] bytes. Without it, a worker that falls behind reads every
    /// frame waiting in its sockets before writing anything: with broadcast fan-out the
    /// output of one turn grows with the backlog, the next turn is longer still, and memory
    /// and latency run away. With it, output waiting in memory stays under the budget; the
    /// backlog stays in the kernel's socket buffers, where TCP pushes back on the senders.
    fn bound_turn_output(&mut self) {
        if session::queued_by_thread() > crate::driver::TURN_OUTPUT_BUDGET {
            session::take_queued_by_thread();
            self.ctx.metrics.budget_flushes.add(1);
            self.run_commands();
        }
    }

    /// Writes the session's replies now if the last thing its frames did was queue them on
    /// the session itself (an echo, a request answered): waiting for the end of the turn would
    /// coalesce nothing more into that write and only delay it behind every other session's
    /// reads. Sends to other sessions (a broadcast) still wait for the end of the turn, where
    /// they gather into one write per recipient.
    fn flush_replies(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if !conn.session.is_closing() && WorkerShared::take_own_flush(&conn.session) {
            self.flush(token);
        }
    }

    fn read_once(&mut self, token: u64) -> Result<Read, CloseReason> {
        let Self {
            conns,
            recv,
            ctx,
            now,
            ..
        } = self;
        let Some(conn) = conns.get_mut(token) else {
            return Ok(Read::Done);
        };
        if conn.eof || conn.session.is_closing() {
            return Ok(Read::Done);
        }
        let fd = conn.fd.as_raw_fd();
        let (result, asked) = if conn.rx.pending.is_empty() {
            // Common case: read into the worker's shared chunk.
            let size = recv.size().max(MIN_READ);
            let (mem, fresh) = recv.spare(MIN_READ);
            if fresh {
                ctx.metrics.recv_chunks_allocated.add(1);
            }
            let asked = mem.capacity().min(size);
            let result = sys::recv(fd, mem, asked).map(|n| (n, mem.split().freeze()));
            (result, asked)
        } else {
            // A frame is split across reads: read its rest straight behind its start.
            // Reserve at most one hint's worth per read: a decoder's `NeedMore` comes from
            // peer-controlled bytes, and a huge claim must not become a huge allocation (or a
            // capacity-overflow panic) before the bytes actually arrive.
            let rx = &mut conn.rx;
            let need = rx
                .pending_total
                .saturating_sub(rx.pending.len())
                .clamp(1, MAX_PENDING_HINT);
            rx.pending.reserve(need);
            let asked = rx.pending.capacity() - rx.pending.len();
            let result = sys::recv(fd, &mut rx.pending, asked).map(|n| (n, Bytes::new()));
            (result, asked)
        };
        let (n, data) = match result {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Read::More),
            Err(e) => return Err(CloseReason::from_io(&e)),
        };
        if n == 0 {
            return Ok(Read::Eof);
        }
        ctx.metrics.bytes_in.add(n as i64);
        let delivered = if data.is_empty() {
            conn.rx.deliver_pending(ctx, &conn.session)?
        } else {
            conn.rx.deliver_chunk(ctx, &conn.session, &data)?
        };
        conn.timing.frames(delivered, *now);
        // A short read drained the socket: new data raises a new edge. Not so for an end of
        // stream that arrived with the data (see `hup`).
        Ok(if n < asked && !conn.hup {
            Read::Drained
        } else {
            Read::More
        })
    }

    /// The peer closed its side. Replies already queued are still written; the session closes
    /// once its queue is flushed.
    fn on_eof(&mut self, token: u64) {
        self.close_after_flush(token, CloseReason::PeerClosed);
    }

    /// Stops reading from the session and closes it with `reason` once everything queued on it
    /// has been written.
    pub(super) fn close_after_flush(&mut self, token: u64, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        conn.eof = true;
        conn.after_flush.get_or_insert(reason);
        conn.rx = RecvState::default();
        if conn.draining {
            return; // the flush in progress closes the session when done
        }
        if conn.session.shared.queue.try_register() {
            self.flush(token);
        }
        // Otherwise a producer holds the flag and posted a flush, which will close it.
    }

    /// Writes everything queued on the session, in gathered writes, until the queue is empty
    /// (flag released) or the socket is full (flag kept, resumed on the writable event).
    ///
    /// Precondition: this worker holds the session's send flag.
    pub(super) fn flush(&mut self, token: u64) {
        let Self {
            conns, iov, ctx, ..
        } = self;
        let Some(conn) = conns.get_mut(token) else {
            return;
        };
        conn.draining = true;
        let queue = &conn.session.shared.queue;
        let outcome = loop {
            if conn.batch.bufs.is_empty() {
                queue.take(&mut conn.batch.bufs);
                if conn.batch.bufs.is_empty() {
                    if queue.finish() {
                        continue;
                    }
                    conn.draining = false;
                    conn.batch.shrink();
                    break match conn.after_flush.take() {
                        Some(reason) => Err(reason),
                        None => Ok(()),
                    };
                }
            }
            match write_batch(queue, &conn.fd, &mut conn.batch, iov, ctx) {
                Ok(true) => continue,
                Ok(false) => break Ok(()), // socket full: wait for EPOLLOUT, keep the flag
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(CloseReason::from_io(&e)),
            }
        };
        if let Err(reason) = outcome {
            self.close(token, reason);
        }
    }
}

/// One gathered write of the batch. Returns true if everything offered was written (the caller
/// may write more), false if the socket is full.
fn write_batch(
    queue: &SendQueue<SendBuffer>,
    fd: &OwnedFd,
    batch: &mut Batch,
    iov: &mut IoVecs,
    ctx: &EngineCtx,
) -> io::Result<bool> {
    let iov = iov.start();
    let offered = batch.fill(iov, sys::IOV_MAX);
    let written = if iov.is_empty() {
        0
    } else {
        // SAFETY: every iovec points into a SendBuffer held by `batch`, which is not touched
        // until the call returns.
        let result = unsafe { sys::sendmsg(fd.as_raw_fd(), iov) };
        iov.clear();
        match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ctx.metrics.writes_blocked.add(1);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    };
    // Release what the kernel has taken.
    batch.release(written, queue, ctx);
    // A short write means the socket buffer is full; the kernel then flags the socket so that
    // freeing space raises a new EPOLLOUT edge, and retrying now would only return EAGAIN.
    if written < offered {
        ctx.metrics.writes_blocked.add(1);
        return Ok(false);
    }
    Ok(true)
}
