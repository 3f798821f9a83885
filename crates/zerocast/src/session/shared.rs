//! What a session's handle shares with its worker and with other threads: its identity, how
//! to reach its worker, its queues' bookkeeping and the groups it is in. Below the handle
//! ([`super::handle`]) and the worker's output ([`super::local`]), which both build on it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use once_cell::race::OnceBox;

use super::queue::{Push, SendQueue};
use super::reason::CloseReason;
use crate::buffer::SendBuffer;
use crate::sync::{lock, Mutex};

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
    /// The session's own queue holds items and the sender won its flag: take them.
    Flush(Arc<SessionShared>),
    /// Close the session.
    Close(Arc<SessionShared>, CloseReason),
    /// Sends from another worker, batched.
    Deliver(Batch),
    /// A message for the worker's handler ([`Handler::on_message`](crate::Handler)).
    Message(Box<dyn std::any::Any + Send>),
}

/// The worker that owns a session, as the session sees it. Implemented by the driver.
pub(crate) trait Owner: Send + Sync {
    /// Hands the worker a notice, waking it if it sleeps.
    fn post(&self, notice: Notice);
}

/// A set a session belongs to (a [`Group`](crate::Group)), told when the session closes.
pub(crate) trait Membership: Send + Sync {
    /// The session `id` closed: it is no member any more.
    fn leave(&self, id: SessionId);
}

/// Sends made on one worker to the sessions of another, posted as one notice per turn.
///
/// Invariant: every entry's `buf` indexes `bufs`.
pub(crate) struct Batch {
    pub(crate) owner: Arc<dyn Owner>,
    pub(crate) owner_id: usize,
    pub(crate) bufs: Vec<SendBuffer>,
    pub(crate) entries: Vec<Entry>,
    /// Bytes the entries queue.
    pub(crate) bytes: usize,
}

/// One send of a [`Batch`]: the session's token and the buffer's index.
pub(crate) struct Entry {
    pub(crate) token: u64,
    pub(crate) buf: u32,
}

impl Batch {
    pub(crate) fn new(session: &SessionShared) -> Self {
        Self {
            owner: session.owner.clone(),
            owner_id: session.owner_id(),
            bufs: Vec::new(),
            entries: Vec::new(),
            bytes: 0,
        }
    }

    pub(crate) fn add(&mut self, token: u64, buf: u32, len: usize) {
        self.entries.push(Entry { token, buf });
        self.bytes += len;
    }

    /// Buffer references the batch holds.
    pub(crate) fn buffers(&self) -> usize {
        self.bufs.len()
    }

    /// Posts the batch to its worker.
    pub(crate) fn post(self) {
        let owner = self.owner.clone();
        owner.post(Notice::Deliver(self));
    }
}

/// What a session needs only once it is in a group or was sent to from a non-worker thread:
/// allocated on the first of those, so an idle session holds one null pointer for it.
struct Extras {
    /// Sends from threads that are not workers.
    foreign: SendQueue<SendBuffer>,
    /// The groups the session is in.
    groups: Mutex<Vec<Weak<dyn Membership>>>,
}

/// One session's shared state.
pub(crate) struct SessionShared {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    /// Slot token in the owning worker (`generation << 32 | index`), set at registration.
    pub(crate) token: AtomicU64,
    pub(crate) owner: Arc<dyn Owner>,
    /// The owner's index among its engine's workers.
    pub(crate) worker: u32,
    /// Most bytes the session may have queued (see [`limit`](Self::limit)).
    limit: u32,
    /// Bytes the owner holds for this session, as of its last look (for the limit check of
    /// sends from other threads). Stored only by the owner.
    pub(crate) held: AtomicU32,
    /// Set once a close was requested; further frames are not delivered.
    pub(crate) closing: AtomicBool,
    extras: OnceBox<Extras>,
}

impl SessionShared {
    pub(crate) fn new(
        id: SessionId,
        peer: SocketAddr,
        owner: Arc<dyn Owner>,
        worker: u32,
        limit: usize,
    ) -> Self {
        Self {
            id,
            peer,
            token: AtomicU64::new(u64::MAX),
            owner,
            worker,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            held: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            extras: OnceBox::new(),
        }
    }

    /// The owner's identity (the address of its shared state), compared with the thread's
    /// worker (see [`super::local`]).
    pub(crate) fn owner_id(&self) -> usize {
        Arc::as_ptr(&self.owner) as *const () as usize
    }

    /// Most bytes the session may have queued (the engine's limit, capped at 4 GiB).
    pub(crate) fn limit(&self) -> usize {
        self.limit as usize
    }

    fn extras(&self) -> &Extras {
        // Two threads racing here each build one; one is kept, the other dropped unused.
        self.extras.get_or_init(|| {
            Box::new(Extras {
                foreign: SendQueue::with_limit(self.limit()),
                groups: Mutex::new(Vec::new()),
            })
        })
    }

    /// The queue of sends from non-worker threads, if any was made.
    pub(crate) fn foreign(&self) -> Option<&SendQueue<SendBuffer>> {
        self.extras.get().map(|e| &e.foreign)
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Asks the owner to close the session (once).
    pub(crate) fn close_with(self: &Arc<Self>, reason: CloseReason) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.owner.post(Notice::Close(self.clone(), reason));
        }
    }

    /// The path of threads that are not workers: the session's own queue, its owner notified
    /// once per batch. `len`: the bytes of `bufs`.
    pub(crate) fn push_foreign(
        self: &Arc<Self>,
        bufs: impl Iterator<Item = SendBuffer>,
        len: usize,
    ) -> Result<(), Refused> {
        let q = &self.extras().foreign;
        match q.push(bufs, len, self.held.load(Ordering::Relaxed) as usize) {
            Push::Queued => Ok(()),
            Push::Schedule => {
                self.owner.post(Notice::Flush(self.clone()));
                Ok(())
            }
            Push::Closed(()) => Err(Refused::Closed),
            Push::Overflow => {
                self.close_with(CloseReason::SlowConsumer);
                Err(Refused::SlowConsumer)
            }
        }
    }

    /// Marks the session closed, releases what its own queue holds (later sends are refused)
    /// and takes it out of every group it was in. Every path that ends a session goes through
    /// here.
    pub(crate) fn retire(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(q) = self.foreign() {
            drop(q.close());
        }
        let groups = match self.extras.get() {
            Some(e) => std::mem::take(&mut *lock(&e.groups)),
            None => Vec::new(),
        };
        for g in groups {
            if let Some(g) = g.upgrade() {
                g.leave(self.id);
            }
        }
    }

    /// The session joined `group`.
    pub(crate) fn joined(&self, group: Weak<dyn Membership>) {
        let mut g = lock(&self.extras().groups);
        g.retain(|w| w.strong_count() > 0);
        g.push(group);
    }
}
