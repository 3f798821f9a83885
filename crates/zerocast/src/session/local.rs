//! The output of the worker running on this thread: what its sessions have queued, the
//! buffers that output refers to, and the batches bound for other workers.
//!
//! It lives in a thread-local so that a send made on the worker's own thread (in a handler
//! callback or a tick) reaches it without a lock, a reference count or a system call: the
//! handler is called by the worker, the worker is not looking at its output then, and the
//! send borrows it for the few instructions of a push. The worker borrows it to write, between
//! callbacks.
//!
//! A send from this thread to a session of *another* worker goes into a [`Batch`] for that
//! worker (one buffer reference per worker and broadcast, a token and an index per
//! recipient), which the driver posts at the end of the turn.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::reason::CloseReason;
use super::shared::{Batch, Refused, SendError, SessionShared};
use crate::buffer::SendBuffer;
use crate::conn::outq::{KeepId, Keeps, OutQueue};
use crate::datagram::channel::Endpoint;
use crate::datagram::{DatagramError, Offer};

thread_local! {
    static OUTBOX: RefCell<Outbox> = const { RefCell::new(Outbox::off()) };
}

/// The worker's output.
///
/// Invariant: `slots[i].open` iff the worker has an open session in slot `i` with generation
/// `slots[i].generation`; a slot whose `dirty` flag is set is listed in `dirty` or (with a
/// write delay) waits in `waiting`, and a slot in `dirty` has its flag set.
pub(crate) struct Outbox {
    /// The identity of the worker this thread runs (0: none).
    owner: usize,
    pub(crate) slots: Vec<Slot>,
    pub(crate) keeps: Keeps,
    /// Slots with output queued since the worker last wrote them (or, with a write delay,
    /// since it last looked).
    pub(crate) dirty: Vec<u32>,
    /// With a write delay: dirty slots whose delay has not passed, by the time it passes
    /// (entries can be stale: a slot written or closed meanwhile is skipped when it comes up).
    waiting: BinaryHeap<Reverse<(u64, u32)>>,
    /// Bytes queued since the worker last looked (its per-turn output budget).
    pub(crate) queued: usize,
    /// Sends to other workers' sessions, one batch per worker, posted at the end of the turn.
    pub(crate) batches: Vec<Batch>,
    /// The worker's datagram channels, when it serves datagrams.
    pub(crate) datagrams: Option<Box<Endpoint>>,
}

/// One session slot's output.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) q: OutQueue,
    generation: u32,
    open: bool,
    dirty: bool,
    /// Output was queued since the last housekeeping (see [`Outbox::release_quiet`]).
    pushed: bool,
    /// With a write delay: the worker's microsecond clock before which this slot is not
    /// written again (see [`Outbox::take_due`]).
    pub(crate) next_write: u64,
}

impl Outbox {
    const fn off() -> Self {
        Self {
            owner: 0,
            slots: Vec::new(),
            keeps: Keeps::new(),
            dirty: Vec::new(),
            waiting: BinaryHeap::new(),
            queued: 0,
            batches: Vec::new(),
            datagrams: None,
        }
    }

    /// A session opened in slot `index`.
    pub(crate) fn open(&mut self, index: u32, generation: u32) {
        let i = index as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Slot::default);
        }
        let s = &mut self.slots[i];
        s.generation = generation;
        s.open = true;
    }

    /// The session in slot `index` closed, but a send in flight still reads its queue: no
    /// more output is taken; [`close`](Self::close) drops the queue later.
    pub(crate) fn shut(&mut self, index: u32) {
        if let Some(s) = self.slots.get_mut(index as usize) {
            s.open = false;
        }
    }

    /// The session in slot `index` closed: what it had queued is dropped.
    pub(crate) fn close(&mut self, index: u32) {
        if let Some(s) = self.slots.get_mut(index as usize) {
            s.open = false;
            s.q.clear(&mut self.keeps);
        }
        if let Some(d) = self.datagrams.as_mut() {
            d.close(index);
        }
    }

    /// Queues `len` bytes of kept buffer `k` on `session`, if it is this worker's and open.
    /// Over its limit, the session is closed as a slow consumer.
    fn push(&mut self, session: &Arc<SessionShared>, k: KeepId, len: usize) -> Result<(), Refused> {
        let token = session.token.load(Ordering::Relaxed);
        let (index, generation) = split(token);
        match self.slots.get(index as usize) {
            Some(s) if s.open && s.generation == generation && !session.is_closing() => {}
            _ => return Err(Refused::Closed),
        }
        self.push_at(index, k, len, session.limit())
            .inspect_err(|_| session.close_with(CloseReason::SlowConsumer))
    }

    /// Queues on an open slot; refuses (without closing anything) above `limit`.
    fn push_at(&mut self, index: u32, k: KeepId, len: usize, limit: usize) -> Result<(), Refused> {
        self.push_range(index, k, 0, len, limit)
    }

    /// Queues `len` bytes of kept buffer `k` from `off` on an open slot.
    fn push_range(
        &mut self,
        index: u32,
        k: KeepId,
        off: usize,
        len: usize,
        limit: usize,
    ) -> Result<(), Refused> {
        let s = &mut self.slots[index as usize];
        if s.q.bytes() + len > limit {
            return Err(Refused::SlowConsumer);
        }
        s.q.push(&mut self.keeps, k, off as u32, len as u32);
        s.pushed = true;
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(index);
        }
        self.queued += len;
        Ok(())
    }

    /// Housekeeping for slot `index`: a queue that stayed empty since the last call gives its
    /// memory back (an idle session holds none; a busy one keeps its capacity).
    pub(crate) fn release_quiet(&mut self, index: u32) {
        if let Some(s) = self.slots.get_mut(index as usize) {
            if !std::mem::take(&mut s.pushed) {
                s.q.release_if_empty();
            }
        }
    }

    /// Takes every dirty slot (each slot's flag cleared), waiting ones included: the slots
    /// to write.
    pub(crate) fn take_dirty(&mut self, into: &mut Vec<u32>) {
        for Reverse((_, i)) in self.waiting.drain() {
            if let Some(s) = self.slots.get(i as usize) {
                if s.dirty {
                    self.dirty.push(i);
                }
            }
        }
        for &i in &self.dirty {
            if let Some(s) = self.slots.get_mut(i as usize) {
                if std::mem::take(&mut s.dirty) {
                    into.push(i);
                }
            }
        }
        self.dirty.clear();
    }

    /// With a write delay: takes the dirty slots whose delay has passed at `now` (the worker's
    /// microsecond clock) into `into`; the others wait for theirs. Returns how long the
    /// earliest of them still waits, in microseconds. Costs a heap operation per slot made
    /// dirty, not a scan of every waiting slot per turn.
    pub(crate) fn take_due(&mut self, now: u64, into: &mut Vec<u32>) -> Option<u64> {
        for i in self.dirty.drain(..) {
            let s = &mut self.slots[i as usize];
            if s.next_write <= now {
                s.dirty = false;
                into.push(i);
            } else {
                self.waiting.push(Reverse((s.next_write, i)));
            }
        }
        while let Some(&Reverse((due, i))) = self.waiting.peek() {
            if due > now {
                return Some(due - now);
            }
            self.waiting.pop();
            let Some(s) = self.slots.get_mut(i as usize) else {
                continue;
            };
            if !s.dirty {
                continue;
            }
            if s.next_write <= now {
                s.dirty = false;
                into.push(i);
            } else {
                // Written since it was queued here: it waits for its new time.
                self.waiting.push(Reverse((s.next_write, i)));
            }
        }
        None
    }

    /// Whether slot `index` is the only one made dirty since the dirty list had `mark`
    /// entries.
    pub(crate) fn only_dirtied(&self, mark: usize, index: u32) -> bool {
        self.dirty.get(mark..) == Some(&[index][..])
    }

    /// Removes slot `index` from the dirty list if it is the last entry (written already).
    pub(crate) fn undirty_last(&mut self, index: u32) {
        if self.dirty.last() == Some(&index) {
            self.dirty.pop();
            self.slots[index as usize].dirty = false;
        }
    }

    /// Queues `bufs` (taken from a session's own queue, or arrived in a batch) on slot
    /// `index`, each held as its own buffer. Err: over `limit` (nothing more queued).
    pub(crate) fn push_owned(
        &mut self,
        index: u32,
        bufs: impl IntoIterator<Item = SendBuffer>,
        limit: usize,
    ) -> Result<(), Refused> {
        for buf in bufs {
            let len = buf.len();
            let k = self.keeps.insert(buf);
            let r = self.push_at(index, k, len, limit);
            self.keeps.settle(k);
            r?;
        }
        Ok(())
    }

    /// Queues a batch from another worker; `resolve` maps a token to the slot index it names
    /// if that session is still open here, with its limit. Slots that went over their limit
    /// are listed in `overflowed`.
    pub(crate) fn deliver(
        &mut self,
        batch: Batch,
        resolve: impl Fn(u64) -> Option<(u32, usize)>,
        overflowed: &mut Vec<u32>,
    ) {
        let Batch { bufs, entries, .. } = batch;
        let kept: Vec<KeepId> = bufs.into_iter().map(|b| self.keeps.insert(b)).collect();
        for e in entries {
            let Some((index, limit)) = resolve(e.token) else {
                continue;
            };
            let k = kept[e.buf as usize];
            let len = self.keeps.bytes(k).len();
            if self.push_at(index, k, len, limit).is_err() {
                overflowed.push(index);
            }
        }
        for k in kept {
            self.keeps.settle(k);
        }
    }

    /// The batch for the session's worker (a new one if there is none yet this turn).
    fn batch_for(&mut self, session: &SessionShared) -> &mut Batch {
        let id = session.owner_id();
        let i = match self.batches.iter().position(|b| b.owner_id == id) {
            Some(i) => i,
            None => {
                self.batches.push(Batch::new(session));
                self.batches.len() - 1
            }
        };
        &mut self.batches[i]
    }

    /// Drops everything (the worker is stopping).
    pub(crate) fn clear(&mut self) {
        for i in 0..self.slots.len() {
            self.close(i as u32);
        }
        self.dirty.clear();
        self.batches.clear();
        self.queued = 0;
        self.owner = 0;
    }
}

fn split(token: u64) -> (u32, u32) {
    ((token & 0xffff_ffff) as u32, (token >> 32) as u32)
}

/// Whether this thread runs an engine worker.
pub(super) fn is_worker_thread() -> bool {
    OUTBOX.with(|o| o.try_borrow().map_or(true, |o| o.owner != 0))
}

/// The driver: this thread now runs the worker `owner` (a nonzero identity).
pub(crate) fn enter(owner: usize) {
    OUTBOX.with(|o| o.borrow_mut().owner = owner);
}

/// The driver: runs `f` on this thread's worker output (never from inside a handler
/// callback, which may be sending).
pub(crate) fn for_outbox<R>(f: impl FnOnce(&mut Outbox) -> R) -> R {
    OUTBOX.with(|o| f(&mut o.borrow_mut()))
}

/// The slot of `session` in `out`, if it is open there.
fn open_slot(out: &Outbox, session: &Arc<SessionShared>) -> Option<u32> {
    let (index, generation) = split(session.token.load(Ordering::Relaxed));
    matches!(out.slots.get(index as usize),
        Some(s) if s.open && s.generation == generation && !session.is_closing())
    .then_some(index)
}

/// Opens the session's datagram channel (on its owner's thread).
pub(super) fn open_datagrams(session: &Arc<SessionShared>) -> Result<Offer, DatagramError> {
    on_owner(session, (), |out, ()| {
        let slot = open_slot(out, session).ok_or(DatagramError::Unbound)?;
        let e = out.datagrams.as_mut().ok_or(DatagramError::NoEndpoint)?;
        Ok(e.open(slot))
    })
    .unwrap_or(Err(DatagramError::NotOwner))
}

/// Queues a datagram for the session (on its owner's thread).
pub(super) fn send_datagram(
    session: &Arc<SessionShared>,
    payload: &[u8],
) -> Result<(), DatagramError> {
    on_owner(session, (), |out, ()| {
        let slot = open_slot(out, session).ok_or(DatagramError::Unbound)?;
        let e = out.datagrams.as_mut().ok_or(DatagramError::NoEndpoint)?;
        e.send(slot, payload)
    })
    .unwrap_or(Err(DatagramError::NotOwner))
}

/// Queues one datagram for each of `sessions` this thread owns with a bound channel, the
/// payload copied once. Returns how many were queued.
pub(crate) fn send_datagram_to_all<'a>(
    sessions: impl IntoIterator<Item = &'a Arc<SessionShared>>,
    payload: &[u8],
) -> Result<usize, DatagramError> {
    OUTBOX.with(|o| {
        let mut out = o.try_borrow_mut().map_err(|_| DatagramError::NotOwner)?;
        if out.owner == 0 {
            return Err(DatagramError::NotOwner);
        }
        let owner = out.owner;
        let slots: Vec<u32> = sessions
            .into_iter()
            .filter(|s| s.owner_id() == owner)
            .filter_map(|s| open_slot(&out, s))
            .collect();
        let e = out.datagrams.as_mut().ok_or(DatagramError::NoEndpoint)?;
        e.send_to_all(slots, payload)
    })
}

/// Runs `f` on the output if this thread runs the worker owning `session`; otherwise (or
/// if the output is busy) hands `v` back.
fn on_owner<T, R>(
    session: &Arc<SessionShared>,
    v: T,
    f: impl FnOnce(&mut Outbox, T) -> R,
) -> Result<R, T> {
    OUTBOX.with(|o| match o.try_borrow_mut() {
        Ok(mut out) if out.owner != 0 && out.owner == session.owner_id() => Ok(f(&mut out, v)),
        _ => Err(v),
    })
}

/// A send on the owner's thread; `Err(buf)` elsewhere.
pub(super) fn send(
    session: &Arc<SessionShared>,
    buf: SendBuffer,
) -> Result<Result<(), SendError>, SendBuffer> {
    on_owner(session, buf, |out, buf| {
        let len = buf.len();
        // Checked before the buffer is kept, so a refusal hands the very buffer back.
        let token = session.token.load(Ordering::Relaxed);
        let (index, generation) = split(token);
        let open = matches!(out.slots.get(index as usize),
            Some(s) if s.open && s.generation == generation && !session.is_closing());
        if !open {
            return Err(SendError {
                reason: Refused::Closed,
                buffer: buf,
            });
        }
        if out.slots[index as usize].q.bytes() + len > session.limit() {
            session.close_with(CloseReason::SlowConsumer);
            return Err(SendError {
                reason: Refused::SlowConsumer,
                buffer: buf,
            });
        }
        let k = out.keeps.insert(buf);
        let r = out.push_at(index, k, len, usize::MAX);
        out.keeps.settle(k);
        debug_assert!(r.is_ok());
        Ok(())
    })
}

/// A batch send on the owner's thread; `None` elsewhere.
pub(super) fn send_batch(
    session: &Arc<SessionShared>,
    bufs: &mut Vec<SendBuffer>,
) -> Option<Result<(), Refused>> {
    on_owner(session, bufs, |out, bufs| {
        let token = session.token.load(Ordering::Relaxed);
        let (index, generation) = split(token);
        let open = matches!(out.slots.get(index as usize),
            Some(s) if s.open && s.generation == generation && !session.is_closing());
        if !open {
            return Err(Refused::Closed);
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if out.slots[index as usize].q.bytes() + len > session.limit() {
            session.close_with(CloseReason::SlowConsumer);
            return Err(Refused::SlowConsumer);
        }
        out.push_owned(index, bufs.drain(..), usize::MAX)
    })
    .ok()
}

/// A send to another worker's session, made on a worker thread: into this turn's batch for
/// that worker. `Err(buf)` if this thread runs no worker.
pub(super) fn send_remote(
    session: &SessionShared,
    buf: SendBuffer,
) -> Result<Result<(), SendError>, SendBuffer> {
    OUTBOX.with(|o| match o.try_borrow_mut() {
        Ok(mut out) if out.owner != 0 => {
            if session.is_closing() {
                return Ok(Err(SendError {
                    reason: Refused::Closed,
                    buffer: buf,
                }));
            }
            let token = session.token.load(Ordering::Relaxed);
            let len = buf.len();
            out.queued += len;
            let b = out.batch_for(session);
            b.bufs.push(buf);
            let i = (b.bufs.len() - 1) as u32;
            b.add(token, i, len);
            Ok(Ok(()))
        }
        _ => Err(buf),
    })
}

/// A [`Fanout`](crate::Fanout)'s send: `ranges` of `buf` on `session`, in order, if this
/// thread runs its worker; the buffer is kept once (in `kept`, held until [`fanout_done`]).
/// The session is looked up once for all of them. `Err(ranges)` elsewhere, none taken: the
/// caller sends slices.
pub(super) fn send_kept<I: Iterator<Item = std::ops::Range<usize>>>(
    session: &Arc<SessionShared>,
    buf: &SendBuffer,
    kept: &mut Option<KeepId>,
    ranges: I,
) -> Result<Result<(), Refused>, I> {
    on_owner(session, ranges, |out, ranges| {
        let index = open_slot(out, session).ok_or(Refused::Closed)?;
        let limit = session.limit();
        for range in ranges {
            if range.is_empty() {
                continue;
            }
            let k = *kept.get_or_insert_with(|| {
                let k = out.keeps.insert(buf.clone());
                out.keeps.retain(k); // the fanout's own hold
                k
            });
            out.push_range(index, k, range.start, range.len(), limit)
                .inspect_err(|_| session.close_with(CloseReason::SlowConsumer))?;
        }
        Ok(())
    })
}

/// A [`Fanout`](crate::Fanout) is dropped: its hold on the kept buffer ends.
pub(super) fn fanout_done(kept: KeepId) {
    let _ = OUTBOX.try_with(|o| {
        if let Ok(mut out) = o.try_borrow_mut() {
            out.keeps.release(kept);
        }
    });
}

/// Queues `buf` on every session of `members`: on this thread's worker, one reference for
/// all of them and a piece each; for another worker's, one reference per worker; from a
/// thread that runs no worker, each session's own queue. Returns how many took it.
pub(crate) fn broadcast<'a>(
    members: impl Iterator<Item = &'a Arc<SessionShared>>,
    buf: &SendBuffer,
) -> usize {
    OUTBOX.with(|o| {
        let Ok(mut out) = o.try_borrow_mut() else {
            return foreign_each(members, buf);
        };
        if out.owner == 0 {
            drop(out);
            return foreign_each(members, buf);
        }
        let me = out.owner;
        let len = buf.len();
        let mut kept: Option<KeepId> = None;
        // For each other worker met: its batch and this buffer's index in it.
        let mut remote: Vec<(usize, u32)> = Vec::new();
        let mut n = 0;
        for s in members {
            if s.owner_id() == me {
                let k = *kept.get_or_insert_with(|| out.keeps.insert(buf.clone()));
                n += usize::from(out.push(s, k, len).is_ok());
                continue;
            }
            if s.is_closing() {
                continue;
            }
            let token = s.token.load(Ordering::Relaxed);
            let id = s.owner_id();
            out.queued += len;
            let b = out.batch_for(s);
            let i = match remote.iter().find(|r| r.0 == id) {
                Some(&(_, i)) => i,
                None => {
                    b.bufs.push(buf.clone());
                    let i = (b.bufs.len() - 1) as u32;
                    remote.push((id, i));
                    i
                }
            };
            b.add(token, i, len);
            n += 1;
        }
        if let Some(k) = kept {
            out.keeps.settle(k);
        }
        n
    })
}

fn foreign_each<'a>(
    members: impl Iterator<Item = &'a Arc<SessionShared>>,
    buf: &SendBuffer,
) -> usize {
    members
        .map(|s| {
            usize::from(
                s.push_foreign(std::iter::once(buf.clone()), buf.len())
                    .is_ok(),
            )
        })
        .sum()
}
