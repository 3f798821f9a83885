//! Sessions: the handle applications hold for one connection, how sends reach its worker, and
//! why it ends.
//!
//! A send takes one of three paths, chosen by the thread it is made on:
//! - on the worker that owns the session (a handler, a tick): straight into the worker's
//!   output ([`local`]), no lock and no atomic operation;
//! - on another engine worker: into that worker's batch for the owner, posted once per turn;
//! - on any other thread: into the session's own queue ([`queue`]), the owner woken once per
//!   batch.
//!
//! Every sender always takes the same path to a given session, so what one sender sends
//! arrives in the order it was sent.

mod local;
pub(crate) mod queue;
mod reason;
mod registry;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

pub(crate) use local::{enter, for_outbox, Batch};
pub use reason::CloseReason;
pub use registry::Registry;

use crate::buffer::SendBuffer;
use crate::packet::PacketError;
use crate::sync::Mutex;
use queue::{Push, SendQueue};

/// Identifies a session for the life of an engine; never reused. Assigned by the engine (a
/// peer never names itself) and only readable: an application cannot forge one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    pub(crate) fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number (from 1, in order of opening within an engine).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The session has ended (or is ending).
    #[error("the session is closed")]
    Closed,
    /// Queuing would have taken the session above its queued-bytes limit
    /// ([`Builder::queued_bytes_limits`](crate::Builder::queued_bytes_limits)): it is being
    /// closed as a slow consumer.
    #[error("the session's queue is full (a slow consumer): it is being closed")]
    SlowConsumer,
}

/// A refused send: why, and the buffer, handed back.
#[derive(Debug, thiserror::Error)]
#[error("send refused: {reason}")]
pub struct SendError {
    /// Why.
    pub reason: Refused,
    /// The buffer that was not queued.
    pub buffer: SendBuffer,
}

/// What a session asks of the worker that owns it.
pub(crate) enum Notice {
    /// The session's queue holds items and the sender won its flag: take them.
    Flush(Session),
    /// Close the session.
    Close(Session, CloseReason),
    /// Sends from another worker, batched.
    Deliver(Batch),
}

/// The worker that owns a session, as the session sees it. Implemented by the driver.
pub(crate) trait Owner: Send + Sync {
    /// Hands the worker a notice, waking it if it sleeps.
    fn post(&self, notice: Notice);
}

/// A handle to one connection, cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<SessionShared>,
}

pub(crate) struct SessionShared {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    /// Slot token in the owning worker (`generation << 32 | index`), set at registration.
    pub(crate) token: AtomicU64,
    pub(crate) owner: Arc<dyn Owner>,
    /// The owner's identity, compared with the thread's worker (see [`local`]).
    pub(crate) owner_id: usize,
    /// The owner's index among its engine's workers.
    pub(crate) worker: u32,
    /// Most bytes the session may have queued.
    pub(crate) limit: usize,
    /// Sends from threads that are not workers; created on the first.
    foreign: OnceLock<Box<SendQueue<SendBuffer>>>,
    /// Bytes the owner holds for this session, as of its last look (for the limit check of
    /// sends from other threads). Stored only by the owner.
    pub(crate) held: AtomicUsize,
    /// Set once a close was requested; further frames are not delivered.
    pub(crate) closing: AtomicBool,
    /// Groups this session is in, so that closing removes it from them; created on the first.
    groups: OnceLock<Box<Mutex<Vec<Weak<crate::group::Members>>>>>,
}

impl SessionShared {
    pub(crate) fn new(
        id: SessionId,
        peer: SocketAddr,
        owner: Arc<dyn Owner>,
        owner_id: usize,
        worker: u32,
        limit: usize,
    ) -> Self {
        Self {
            id,
            peer,
            token: AtomicU64::new(u64::MAX),
            owner,
            owner_id,
            worker,
            limit,
            foreign: OnceLock::new(),
            held: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            groups: OnceLock::new(),
        }
    }

    /// The queue of sends from non-worker threads, if any was made.
    pub(crate) fn foreign(&self) -> Option<&SendQueue<SendBuffer>> {
        self.foreign.get().map(|q| &**q)
    }

    /// Marks the session closed and releases what its queue holds; later sends are refused.
    /// Every path that ends a session goes through here. Returns the groups it was in.
    pub(crate) fn retire(&self) -> Vec<Weak<crate::group::Members>> {
        self.closing.store(true, Ordering::Release);
        if let Some(q) = self.foreign() {
            drop(q.close());
        }
        match self.groups.get() {
            Some(g) => std::mem::take(&mut *crate::sync::lock(g)),
            None => Vec::new(),
        }
    }

    pub(crate) fn joined(&self, group: Weak<crate::group::Members>) {
        let g = self.groups.get_or_init(|| Box::new(Mutex::new(Vec::new())));
        let mut g = crate::sync::lock(g);
        g.retain(|w| w.strong_count() > 0);
        g.push(group);
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

    /// The index of the worker that owns this session (from 0): its callbacks and that
    /// worker's [`Handler::on_tick`](crate::Handler::on_tick) run on one thread, and sends
    /// made there reach it without any hand-off.
    pub fn worker(&self) -> usize {
        self.shared.worker as usize
    }

    /// Queues one buffer. Sent from the session's own worker, this costs no lock and no
    /// atomic operation; everything queued during a worker's turn leaves in one write.
    ///
    /// # Errors
    /// The session has ended, or queuing would take it above its queued-bytes limit (it is
    /// then being closed as a slow consumer): the buffer comes back in the error.
    #[inline]
    pub fn send(&self, buf: SendBuffer) -> Result<(), SendError> {
        match local::send(self, buf) {
            Ok(done) => done,
            Err(buf) => self.send_away(buf),
        }
    }

    /// Queues every buffer of `bufs` back to back (no other sender's buffer lands between
    /// them) and leaves `bufs` empty, its capacity kept for reuse: a game loop that gathers a
    /// player's messages during a tick hands them over in one call.
    ///
    /// # Errors
    /// As [`send`](Self::send); the buffers not queued are left in `bufs`.
    pub fn send_batch(&self, bufs: &mut Vec<SendBuffer>) -> Result<(), Refused> {
        if bufs.is_empty() {
            return Ok(());
        }
        match local::send_batch(self, bufs) {
            Some(done) => done,
            None => {
                let len: usize = bufs.iter().map(|b| b.len()).sum();
                self.push_away(bufs.drain(..), len)
                    .inspect_err(|_| bufs.clear())
            }
        }
    }

    fn send_away(&self, buf: SendBuffer) -> Result<(), SendError> {
        let buf = match local::send_remote(self, buf) {
            Ok(done) => return done,
            Err(buf) => buf,
        };
        let len = buf.len();
        let mut slot = Some(buf);
        let queued = self.push_away(std::iter::from_fn(|| slot.take()), len);
        queued.map_err(|reason| SendError {
            reason,
            // Not queued, so the iterator was not consumed.
            buffer: slot
                .take()
                .unwrap_or_else(|| SendBuffer::copy_from_slice(&[])),
        })
    }

    /// The path of threads that are not workers: the session's own queue.
    fn push_away(&self, bufs: impl Iterator<Item = SendBuffer>, len: usize) -> Result<(), Refused> {
        let s = &self.shared;
        let q = s
            .foreign
            .get_or_init(|| Box::new(SendQueue::with_limit(s.limit)));
        match q.push(bufs, len, s.held.load(Ordering::Relaxed)) {
            Push::Queued => Ok(()),
            Push::Schedule => {
                s.owner.post(Notice::Flush(self.clone()));
                Ok(())
            }
            Push::Closed(()) => Err(Refused::Closed),
            Push::Overflow => {
                self.close_with(CloseReason::SlowConsumer);
                Err(Refused::SlowConsumer)
            }
        }
    }

    pub(crate) fn close_with(&self, reason: CloseReason) {
        if !self.shared.closing.swap(true, Ordering::AcqRel) {
            self.shared.owner.post(Notice::Close(self.clone(), reason));
        }
    }

    /// Asks the owning worker to close this session. Frames already received but not yet
    /// delivered are dropped, and so are queued sends. Idempotent.
    pub fn close(&self, reason: &'static str) {
        self.close_with(CloseReason::Local(reason));
    }

    /// Closes this session because one of its frames was not a valid packet: logged at info,
    /// and passed to `on_disconnect` as [`CloseReason::Packet`]. What
    /// [`Router::handle`](crate::packet::Router) does for a router's errors.
    pub fn close_for_packet(&self, error: PacketError) {
        tracing::info!(session = %self.id(), %error, "bad packet, closing");
        self.close_with(CloseReason::Packet(error));
    }

    /// True once a close was requested or performed.
    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// Bytes queued on this session and not yet written, as of its worker's last write (plus
    /// what other threads have queued since).
    pub fn queued_bytes(&self) -> usize {
        let s = &self.shared;
        s.held.load(Ordering::Relaxed) + s.foreign().map_or(0, |q| q.queued_bytes())
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

impl std::hash::Hash for Session {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.shared.id.hash(state);
    }
}

/// Queues `buf` on every session of `members`: on this thread's worker, one reference for
/// all of them and a piece each; for another worker's, one reference per worker. Returns how
/// many sessions took it.
pub(crate) fn broadcast<'a>(members: impl Iterator<Item = &'a Session>, buf: &SendBuffer) -> usize {
    local::broadcast(members, buf)
}
