//! What is queued to be written on a connection, and how a write is built and accounted.
//!
//! A queued message is a [`Piece`]: a byte range of a buffer held once in the worker's
//! [`Keeps`], however many connections queue it. Queueing a broadcast on a recipient is a push
//! of three integers and a count increment, with no atomic operation: the buffer's reference
//! count is taken once per broadcast, not once per recipient.
//!
//! A write is built by [`OutQueue::gather`]: small pieces (game messages of tens of bytes) are
//! *copied* into one contiguous cork buffer, because handing the kernel one segment of a few
//! kilobytes costs less than handing it dozens of tiny ones (its copy loop walks them one by
//! one); pieces of [`ZERO_COPY_MIN`] bytes or more are referenced where they lie. The kernel
//! copies every byte into the socket anyway; the cork copy is the cheaper way to give them.
//!
//! ```text
//!  Keeps (one buffer, many pieces)      OutQueue of one connection
//!  +----+--------------------------+    +---------+---------+---------+
//!  | k0 | [hdr|id|x y z v]  refs 3 |<---| k0 0..28| k2 0..28| k5 ...  |  head: bytes of the
//!  | k2 | [hdr|id|x y z v]  refs 3 |    +---------+---------+---------+  first piece written
//!  +----+--------------------------+          |  gather
//!                                             v
//!            WriteBuf: cork [k0 bytes|k2 bytes|...]  slices: [cork 0..n][big buffer]...
//! ```

use std::collections::VecDeque;

use crate::buffer::SendBuffer;
use crate::sys::socket::{raw_slice, RawSlice};

/// Pieces at least this long are written from where they lie (a slice of their own); shorter
/// ones are copied into the write's cork buffer.
pub(crate) const ZERO_COPY_MIN: usize = 2048;
/// Most bytes one write offers.
pub(crate) const MAX_WRITE: usize = 256 * 1024;
/// Most bytes a write in flight keeps copied in its cork (a completion backend holds one cork
/// per session with a send in flight, so this bounds that memory); a readiness backend's
/// write finishes inline and may cork up to [`MAX_WRITE`].
pub(crate) const CORK_IN_FLIGHT: usize = 64 * 1024;
/// Queue capacity (in pieces) kept across writes; a burst that grew it beyond is released once
/// the queue empties.
const QUEUE_KEEP: usize = 256;
/// Cork capacity a write buffer starts with. A cork first sized to one small message grows
/// again on the next slightly longer write: on a completion backend, which pools one write
/// buffer per send in flight, that is an allocation per session on a broadcast. A few hundred
/// bytes hold most single writes of game messages; a pool of such buffers stays small
/// (256 B per send in flight).
const CORK_START: usize = 256;

/// Index of a buffer in [`Keeps`].
pub(crate) type KeepId = u32;

/// Buffers queued on a worker's connections, each held once, with the number of pieces that
/// refer to it.
///
/// Invariant: a slot with `refs > 0` holds its buffer; a slot is on the free list iff it holds
/// none. `live` counts the slots holding a buffer.
#[derive(Default)]
pub(crate) struct Keeps {
    slots: Vec<Keep>,
    free: Vec<KeepId>,
    live: usize,
}

#[derive(Default)]
struct Keep {
    buf: Option<SendBuffer>,
    refs: u32,
}

impl Keeps {
    pub(crate) const fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Holds `buf` with no piece referring to it yet; [`settle`](Self::settle) it once the
    /// pieces are queued.
    pub(crate) fn insert(&mut self, buf: SendBuffer) -> KeepId {
        self.live += 1;
        match self.free.pop() {
            Some(k) => {
                self.slots[k as usize].buf = Some(buf);
                k
            }
            None => {
                self.slots.push(Keep {
                    buf: Some(buf),
                    refs: 0,
                });
                (self.slots.len() - 1) as KeepId
            }
        }
    }

    /// Releases `k` if no piece refers to it (every recipient had closed).
    pub(crate) fn settle(&mut self, k: KeepId) {
        if self.slots[k as usize].refs == 0 {
            self.drop_slot(k);
        }
    }

    /// The buffer's bytes.
    pub(crate) fn bytes(&self, k: KeepId) -> &[u8] {
        self.slots[k as usize].buf.as_deref().unwrap_or(&[])
    }

    /// Counts one more holder of `k` (a piece, or a [`Fanout`](crate::Fanout) while it lives).
    pub(crate) fn retain(&mut self, k: KeepId) {
        self.slots[k as usize].refs += 1;
    }

    /// Counts one holder of `k` out; the last releases the buffer.
    pub(crate) fn release(&mut self, k: KeepId) {
        let slot = &mut self.slots[k as usize];
        slot.refs -= 1;
        if slot.refs == 0 {
            self.drop_slot(k);
        }
    }

    fn drop_slot(&mut self, k: KeepId) {
        if self.slots[k as usize].buf.take().is_some() {
            self.live -= 1;
            self.free.push(k);
        }
    }

    /// Buffers held.
    pub(crate) fn live(&self) -> usize {
        self.live
    }
}

/// A byte range of a kept buffer, queued on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) keep: KeepId,
    pub(crate) off: u32,
    pub(crate) len: u32,
}

/// A connection's queued output, in order.
///
/// Invariant: `head < pieces[0].len` whenever `pieces` is non-empty (a fully written piece is
/// released at once), and `bytes` is the sum of the pieces' lengths minus `head` (at most a
/// session's limit, which fits 32 bits).
///
/// The pieces live behind one pointer, null until something is queued and again once a quiet
/// queue gives its memory back: an idle connection's queue is 16 bytes.
#[derive(Default)]
pub(crate) struct OutQueue {
    // Boxed on purpose: one word while idle, where a `VecDeque` is four.
    #[allow(clippy::box_collection)]
    pieces: Option<Box<VecDeque<Piece>>>,
    head: u32,
    bytes: u32,
}

impl OutQueue {
    /// Queues `len` bytes of `keep` from `off`. A piece that continues the last one in the
    /// same buffer extends it.
    pub(crate) fn push(&mut self, keeps: &mut Keeps, keep: KeepId, off: u32, len: u32) {
        if len == 0 {
            return;
        }
        self.bytes = self.bytes.saturating_add(len);
        let pieces = self.pieces.get_or_insert_with(Box::default);
        if let Some(last) = pieces.back_mut() {
            if last.keep == keep && last.off + last.len == off {
                last.len += len;
                return;
            }
        }
        keeps.retain(keep);
        pieces.push_back(Piece { keep, off, len });
    }

    /// Bytes queued and not yet written.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.as_ref().is_none_or(|p| p.is_empty())
    }

    fn iter(&self) -> impl Iterator<Item = &Piece> {
        self.pieces.iter().flat_map(|p| p.iter())
    }

    /// Builds the next write into `w`: at most [`MAX_WRITE`] bytes, `max_slices` slices and
    /// `max_cork` bytes copied. Returns the bytes offered.
    pub(crate) fn gather(
        &self,
        keeps: &Keeps,
        w: &mut WriteBuf,
        max_slices: usize,
        max_cork: usize,
    ) -> usize {
        w.clear();
        let offered = self.fill(keeps, w, max_slices, max_cork, MAX_WRITE, ZERO_COPY_MIN);
        w.finish(0);
        w.offered = offered;
        offered
    }

    /// Builds the next write for a transport that frames it (WebSocket): `f.before` first
    /// (transport bytes owed: a handshake answer, a control frame, the rest of a header), then
    /// at most `f.limit` queued bytes, preceded by the header `f.head` makes for their length
    /// when they begin a frame, and masked with `f.mask` (the client's role; every byte is
    /// then copied into the cork, where it is masked). Returns the bytes offered; the write
    /// records how many of them are the transport's ([`Framed`]).
    pub(crate) fn gather_framed(
        &self,
        keeps: &Keeps,
        w: &mut WriteBuf,
        max_slices: usize,
        max_cork: usize,
        f: &Framing<'_>,
    ) -> usize {
        w.clear();
        let b = f.before.len();
        let lead = b + MAX_HEAD;
        if b == 0 {
            // The common case: a fixed-size reservation, no memset call.
            w.cork.extend_from_slice(&[0; MAX_HEAD]);
        } else {
            w.cork.resize(lead, 0);
        }
        w.plan.push(Slice::Cork(0, lead));
        let copy_min = if f.mask.is_some() {
            usize::MAX
        } else {
            ZERO_COPY_MIN
        };
        let payload = if f.limit == 0 {
            0
        } else {
            self.fill(keeps, w, max_slices, max_cork, f.limit, copy_min)
        };
        let (head, head_len) = match f.head {
            Some(make) if payload > 0 => make(payload),
            _ => ([0; MAX_HEAD], 0),
        };
        // The header is right-aligned in its array: one fixed-size copy puts it just before
        // the payload, and `before` goes just before it.
        w.cork[b..lead].copy_from_slice(&head);
        let start = MAX_HEAD - head_len;
        if b > 0 {
            w.cork[start..start + b].copy_from_slice(f.before);
        }
        if let Some(key) = f.mask {
            crate::ws::frame::unmask(&mut w.cork[lead..], key);
        }
        w.finish(start);
        let prefix = f.before.len() + head_len;
        w.framed = Framed {
            before: f.before.len(),
            head,
            head_len: head_len as u8,
            payload,
        };
        w.offered = prefix + payload;
        w.offered
    }

    /// Adds queued bytes to `w`'s plan and cork: at most `limit` bytes, `max_slices` slices,
    /// `max_cork` bytes in the cork; pieces of `copy_min` bytes or more referenced. Returns the
    /// queued bytes added.
    fn fill(
        &self,
        keeps: &Keeps,
        w: &mut WriteBuf,
        max_slices: usize,
        max_cork: usize,
        limit: usize,
        copy_min: usize,
    ) -> usize {
        let mut offered = 0;
        for (i, p) in self.iter().enumerate() {
            let skip = if i == 0 { self.head } else { 0 };
            let start = (p.off + skip) as usize;
            let end = (p.off + p.len) as usize;
            let take = (end - start).min(limit - offered);
            let bytes = &keeps.bytes(p.keep)[start..start + take];
            if bytes.len() >= copy_min {
                if w.plan.len() == max_slices {
                    break;
                }
                w.plan.push(Slice::Ref(bytes.as_ptr(), bytes.len()));
            } else {
                if w.cork.len() + bytes.len() > max_cork && offered > 0 {
                    break;
                }
                match w.plan.last_mut() {
                    Some(Slice::Cork(_, n)) => *n += bytes.len(),
                    _ => {
                        if w.plan.len() == max_slices {
                            break;
                        }
                        w.plan.push(Slice::Cork(w.cork.len(), bytes.len()));
                    }
                }
                w.cork.extend_from_slice(bytes);
            }
            offered += take;
            if offered == limit {
                break;
            }
        }
        offered
    }

    /// The kernel took `written` bytes of what was offered: releases the pieces it finished.
    /// Returns how many it finished.
    pub(crate) fn advance(&mut self, written: usize, keeps: &mut Keeps) -> usize {
        debug_assert!(written <= self.bytes as usize);
        let mut left = written + self.head as usize;
        let mut done = 0;
        let Some(pieces) = self.pieces.as_mut() else {
            return 0;
        };
        while let Some(front) = pieces.front() {
            if front.len as usize > left {
                break;
            }
            left -= front.len as usize;
            keeps.release(front.keep);
            pieces.pop_front();
            done += 1;
        }
        self.head = left as u32;
        self.bytes -= written as u32;
        if pieces.is_empty() && pieces.capacity() > QUEUE_KEEP {
            self.pieces = None;
        }
        done
    }

    /// Gives the queue's memory back if it is empty: an idle session holds none.
    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.pieces = None;
        }
    }

    /// Drops everything queued.
    pub(crate) fn clear(&mut self, keeps: &mut Keeps) {
        for p in self.pieces.take().into_iter().flat_map(|p| p.into_iter()) {
            keeps.release(p.keep);
        }
        self.head = 0;
        self.bytes = 0;
    }
}

/// Most bytes a WebSocket frame header takes: 2 to 10, and a client's 4-byte masking key.
pub(crate) const MAX_HEAD: usize = 14;

/// Makes a frame's header for a payload of the given length: its bytes, right-aligned in the
/// array, and how many.
pub(crate) type MakeHead = dyn Fn(usize) -> ([u8; MAX_HEAD], usize);

/// How a transport frames one write ([`OutQueue::gather_framed`]).
pub(crate) struct Framing<'a> {
    /// Transport bytes to send before any queued byte.
    pub(crate) before: &'a [u8],
    /// Most queued bytes the write may carry (0: none, e.g. before a handshake is answered).
    pub(crate) limit: usize,
    /// Set when the queued bytes begin a new frame: its header for a payload of that length.
    pub(crate) head: Option<&'a MakeHead>,
    /// The client's masking key for these payload bytes (already rotated to where they fall
    /// in their frame).
    pub(crate) mask: Option<[u8; 4]>,
}

/// What a framed write carries besides queued bytes, for the transport's accounting once
/// the kernel says how much it took: `before`, then the header (the last `head_len` bytes of
/// `head`), then `payload` bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Framed {
    pub(crate) before: usize,
    pub(crate) head: [u8; MAX_HEAD],
    pub(crate) head_len: u8,
    pub(crate) payload: usize,
}

/// Where one slice of a write lies, before the cork buffer's address is final.
#[derive(Clone, Copy)]
enum Slice {
    Cork(usize, usize),
    Ref(*const u8, usize),
}

/// One write being made: the cork buffer the small pieces were copied into, and the slices
/// handed to the kernel.
///
/// Invariant (lifetime): the slices point into `cork` and into buffers held by [`Keeps`] for
/// pieces still queued. Neither moves nor is released while the write is in flight: the cork
/// is not touched until the write's result is in, and a piece is released only by
/// [`OutQueue::advance`] with that result (or with the connection, once every operation on it
/// has completed).
#[derive(Default)]
pub(crate) struct WriteBuf {
    cork: Vec<u8>,
    plan: Vec<Slice>,
    pub(crate) slices: Vec<RawSlice>,
    /// Bytes the slices cover.
    pub(crate) offered: usize,
    /// What of them the transport added ([`OutQueue::gather_framed`]; nothing for raw TCP).
    pub(crate) framed: Framed,
    /// The backend's own state for this write (the `msghdr` of an io_uring `sendmsg`).
    pub(crate) os: crate::sys::socket::MsgHdr,
}

impl WriteBuf {
    fn clear(&mut self) {
        self.cork.clear();
        if self.cork.capacity() == 0 {
            self.cork.reserve(CORK_START);
        }
        self.plan.clear();
        self.slices.clear();
        self.offered = 0;
        self.framed = Framed::default();
    }

    /// The cork is complete: its address is stable from here to the end of the write. The
    /// first slice starts `skip` bytes into the cork (what a framed write reserved and did
    /// not use).
    fn finish(&mut self, skip: usize) {
        let cork = self.cork.as_ptr();
        self.slices
            .extend(self.plan.iter().enumerate().map(|(i, s)| match *s {
                Slice::Cork(at, n) if i == 0 => raw_slice(cork.wrapping_add(at + skip), n - skip),
                Slice::Cork(at, n) => raw_slice(cork.wrapping_add(at), n),
                Slice::Ref(p, n) => raw_slice(p, n),
            }));
    }

    /// Gives back memory a large write grew, keeping what a typical write needs.
    pub(crate) fn trim(&mut self) {
        if self.cork.capacity() > MAX_WRITE {
            self.cork = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(w: &WriteBuf, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for s in &w.slices {
            let (ptr, len) = crate::sys::socket::slice_parts(s);
            // SAFETY: the test reads the slices while `w` and the kept buffers are alive.
            let b = unsafe { std::slice::from_raw_parts(ptr, len) };
            out.extend_from_slice(b);
        }
        out.truncate(n);
        out
    }

    fn keep(keeps: &mut Keeps, bytes: &[u8]) -> KeepId {
        keeps.insert(SendBuffer::copy_from_slice(bytes))
    }

    #[test]
    fn partial_writes_resume_byte_exact_and_release_what_they_finish() {
        let mut keeps = Keeps::default();
        let mut q = OutQueue::default();
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        for m in &msgs {
            let k = keep(&mut keeps, m);
            q.push(&mut keeps, k, 0, m.len() as u32);
            keeps.settle(k);
        }
        let all: Vec<u8> = msgs.concat();
        assert_eq!(q.bytes(), all.len());
        let mut w = WriteBuf::default();
        let mut out = Vec::new();
        // The kernel takes 7 bytes at a time: pieces cut anywhere, even mid-piece.
        while !q.is_empty() {
            let offered = q.gather(&keeps, &mut w, 1024, MAX_WRITE);
            assert_eq!(offered, q.bytes());
            let n = offered.min(7);
            out.extend(written(&w, n));
            q.advance(n, &mut keeps);
            assert_eq!(keeps.live(), msgs.len() - msgs_done(&out, &msgs));
        }
        assert_eq!(out, all);
        assert_eq!(keeps.live(), 0, "every buffer released");
        assert!(q.pieces.is_some(), "capacity kept for the next burst");
        q.release_if_empty();
        assert!(q.pieces.is_none(), "a quiet queue holds no memory");
        let k = keep(&mut keeps, b"again");
        q.push(&mut keeps, k, 0, 5);
        keeps.settle(k);
        q.release_if_empty();
        assert_eq!(q.bytes(), 5, "a queue with data keeps it");
        q.clear(&mut keeps);
        assert_eq!(keeps.live(), 0);
    }

    fn msgs_done(out: &[u8], msgs: &[Vec<u8>]) -> usize {
        let mut n = 0;
        let mut total = 0;
        for m in msgs {
            total += m.len();
            if total <= out.len() {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn small_pieces_are_corked_into_one_slice_and_large_ones_referenced() {
        let mut keeps = Keeps::default();
        let mut q = OutQueue::default();
        let small = keep(&mut keeps, &[1; 30]);
        let big = keep(&mut keeps, &[2; ZERO_COPY_MIN]);
        for _ in 0..3 {
            q.push(&mut keeps, small, 0, 30);
        }
        q.push(&mut keeps, big, 0, ZERO_COPY_MIN as u32);
        q.push(&mut keeps, small, 0, 30);
        keeps.settle(small);
        keeps.settle(big);
        let mut w = WriteBuf::default();
        assert_eq!(
            q.gather(&keeps, &mut w, 1024, MAX_WRITE),
            120 + ZERO_COPY_MIN
        );
        assert_eq!(w.slices.len(), 3, "cork, big, cork");
        assert_eq!(crate::sys::socket::slice_parts(&w.slices[0]).1, 90);
        assert_eq!(
            crate::sys::socket::slice_parts(&w.slices[1]).0,
            keeps.bytes(big).as_ptr(),
            "the big piece is not copied"
        );
        // A broadcast's one buffer is held once, whatever number of pieces refer to it.
        assert_eq!(keeps.live(), 2);
        q.clear(&mut keeps);
        assert_eq!(keeps.live(), 0);
    }

    #[test]
    fn a_piece_continuing_the_last_one_extends_it() {
        let mut keeps = Keeps::default();
        let mut q = OutQueue::default();
        let k = keep(&mut keeps, b"abcdef");
        q.push(&mut keeps, k, 0, 2);
        q.push(&mut keeps, k, 2, 2);
        q.push(&mut keeps, k, 5, 1);
        keeps.settle(k);
        assert_eq!(q.iter().count(), 2);
        let mut w = WriteBuf::default();
        let n = q.gather(&keeps, &mut w, 16, MAX_WRITE);
        assert_eq!(written(&w, n), b"abcdf");
        q.advance(n, &mut keeps);
        assert_eq!(keeps.live(), 0);
    }

    #[test]
    fn a_write_is_capped_in_bytes_and_slices() {
        let mut keeps = Keeps::default();
        let mut q = OutQueue::default();
        let big = keep(&mut keeps, &vec![3; MAX_WRITE]);
        q.push(&mut keeps, big, 0, MAX_WRITE as u32);
        q.push(&mut keeps, big, 0, 100);
        let mut w = WriteBuf::default();
        assert_eq!(q.gather(&keeps, &mut w, 1024, MAX_WRITE), MAX_WRITE);
        let mut q = OutQueue::default();
        let b = keep(&mut keeps, &[4; ZERO_COPY_MIN]);
        for _ in 0..5 {
            q.push(&mut keeps, b, 0, ZERO_COPY_MIN as u32);
        }
        assert_eq!(q.gather(&keeps, &mut w, 3, MAX_WRITE), 3 * ZERO_COPY_MIN);
        assert_eq!(w.slices.len(), 3);
    }
}
