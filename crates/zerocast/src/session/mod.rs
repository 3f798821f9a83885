//! Sessions: the handle applications hold for one connection, and why it ends.

pub(crate) mod queue;
mod registry;

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use registry::Registry;

use crate::buffer::SendBuffer;
use crate::driver::WorkerShared;
use crate::frame::FrameError;
use crate::packet::PacketError;
use queue::{Push, SendQueue};

thread_local! {
    /// Bytes this thread queued on sessions since the worker on it last looked: a worker uses
    /// it to bound how much output one turn may pile up before writing it.
    static QUEUED_BY_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Bytes queued by the calling thread since the last call (resets the count).
pub(crate) fn take_queued_by_thread() -> usize {
    QUEUED_BY_THREAD.with(|c| c.replace(0))
}

/// Bytes queued by the calling thread since the last [`take_queued_by_thread`].
pub(crate) fn queued_by_thread() -> usize {
    QUEUED_BY_THREAD.with(Cell::get)
}

/// Identifies a session for the life of an engine; never reused. Assigned by the engine: a peer
/// never names itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a session ended. Passed to [`Handler::on_disconnect`](crate::Handler::on_disconnect) and
/// logged with `tracing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side in order (end of stream), after its replies were flushed.
    PeerClosed,
    /// The peer reset the connection (ECONNRESET, EPIPE).
    Reset,
    /// The peer broke the framing; the detail says how.
    Protocol(FrameError),
    /// A frame was not a valid packet (unknown id, wrong length, bad text, a forbidden value);
    /// see [`Router::handle`](crate::packet::Router::handle).
    Packet(PacketError),
    /// The engine is shutting down.
    Shutdown,
    /// The application closed the session with [`Session::close`].
    Local(&'static str),
    /// Any other I/O error.
    Io(std::io::ErrorKind),
    /// The peer did not read fast enough: its queued bytes passed the hard limit, or stayed
    /// above the soft limit for the grace period.
    SlowConsumer,
    /// No complete frame arrived within the first-frame deadline.
    FirstFrameTimeout,
    /// No complete frame arrived for the idle timeout.
    IdleTimeout,
    /// The engine was at `max_connections` when this connection was accepted.
    TooManyConnections,
    /// The application's handler panicked while serving this session; the message is the
    /// panic's. Other sessions on the same worker are unaffected.
    HandlerPanic(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerClosed => f.write_str("peer closed"),
            Self::Reset => f.write_str("connection reset"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Packet(e) => write!(f, "bad packet: {e}"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::Local(why) => write!(f, "closed locally: {why}"),
            Self::Io(kind) => write!(f, "I/O error: {kind}"),
            Self::SlowConsumer => f.write_str("slow consumer"),
            Self::FirstFrameTimeout => f.write_str("no first frame before the deadline"),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::TooManyConnections => f.write_str("too many connections"),
            Self::HandlerPanic(msg) => write!(f, "handler panicked: {msg}"),
        }
    }
}

impl CloseReason {
    pub(crate) fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string());
        Self::HandlerPanic(msg)
    }

    pub(crate) fn from_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionReset | BrokenPipe | ConnectionAborted => Self::Reset,
            kind => Self::Io(kind),
        }
    }
}

/// The send was refused because the session is closed; the buffer was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session is closed")]
pub struct Closed;

/// A handle to one connection, cheap to clone and usable from any thread.
///
/// [`send`](Session::send) queues a [`SendBuffer`] reference; the owning worker gathers
/// everything queued into one vectored write, with exactly one write in flight per session.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<SessionShared>,
}

pub(crate) struct SessionShared {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    /// Slot token in the owning worker (index and generation).
    pub(crate) token: std::sync::atomic::AtomicU64,
    pub(crate) worker: Arc<WorkerShared>,
    pub(crate) queue: SendQueue<SendBuffer>,
    /// Set once a close was requested; further frames are not delivered.
    pub(crate) closing: AtomicBool,
}

impl SessionShared {
    /// Marks the session closed and releases everything queued on it; later sends are refused.
    /// Every path that ends a session goes through here.
    pub(crate) fn retire(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
        drop(self.queue.close());
    }
}

impl Session {
    /// This session's id.
    #[inline]
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Queues one buffer.
    ///
    /// # Errors
    /// [`Closed`] if the session has ended, or if queuing would take it above
    /// [`Config::max_queued_bytes`](crate::Config::max_queued_bytes): the session is then
    /// closed as a slow consumer. The buffer is dropped.
    #[inline]
    pub fn send(&self, buf: SendBuffer) -> Result<(), Closed> {
        let len = buf.len();
        self.push(std::iter::once(buf), len)
    }

    /// Queues several buffers back to back: no other sender's buffer lands between them. Use it
    /// to send a new header or prefix followed by bytes you did not copy.
    ///
    /// # Errors
    /// [`Closed`] if the session has ended; the buffers are dropped.
    pub fn send_gather(&self, bufs: &[SendBuffer]) -> Result<(), Closed> {
        let len = bufs.iter().map(SendBuffer::len).sum();
        self.push(bufs.iter().cloned(), len)
    }

    /// Queues every buffer in `bufs` back to back and leaves `bufs` empty, its capacity kept
    /// for reuse: a game loop that collects a player's events during a tick hands them over
    /// with one call (one queue lock, at most one flush scheduled) instead of one per event.
    ///
    /// # Errors
    /// [`Closed`] as for [`send`](Session::send); `bufs` is emptied either way.
    pub fn send_batch(&self, bufs: &mut Vec<SendBuffer>) -> Result<(), Closed> {
        if bufs.is_empty() {
            return Ok(());
        }
        let len = bufs.iter().map(SendBuffer::len).sum();
        let result = self.push(bufs.drain(..), len);
        // A refused push hands nothing back and leaves the drain unconsumed.
        bufs.clear();
        result
    }

    /// The index of the worker that owns this session (from 0): its callbacks and the
    /// [`Handler::on_tick`](crate::Handler::on_tick) of that worker run on one thread, so
    /// sends made from that tick are written without a cross-thread hand-off.
    pub fn worker(&self) -> usize {
        self.shared.worker.index
    }

    fn push(&self, bufs: impl IntoIterator<Item = SendBuffer>, len: usize) -> Result<(), Closed> {
        match self.shared.queue.push(bufs, len) {
            Push::Queued => {
                QUEUED_BY_THREAD.with(|c| c.set(c.get() + len));
                Ok(())
            }
            Push::Schedule => {
                QUEUED_BY_THREAD.with(|c| c.set(c.get() + len));
                self.shared.worker.schedule_flush(self);
                Ok(())
            }
            Push::Closed(()) => Err(Closed),
            Push::Overflow => {
                self.close_with(CloseReason::SlowConsumer);
                Err(Closed)
            }
        }
    }

    pub(crate) fn close_with(&self, reason: CloseReason) {
        if !self
            .shared
            .closing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.shared.worker.request_close(self, reason);
        }
    }

    /// Asks the owning worker to close this session. Frames already received but not yet
    /// delivered are dropped; queued sends are dropped. Idempotent.
    pub fn close(&self, reason: &'static str) {
        self.close_with(CloseReason::Local(reason));
    }

    /// True once a close was requested or performed.
    pub fn is_closing(&self) -> bool {
        self.shared
            .closing
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Bytes queued on this session and not yet taken by its writer.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queue.queued_bytes()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .finish()
    }
}

impl PartialEq for Session {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Session {}
