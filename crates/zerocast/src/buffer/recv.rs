//! The receive chunk: memory a worker reads sockets into.
//!
//! One per worker, not per session, so an idle session pins no receive memory. A read lands
//! in the chunk's spare capacity; the bytes read are split off (a reference-counted view of the
//! same allocation, no copy), parsed in place and handed to handlers. If no frame view outlives
//! the handler calls, the next read reclaims the whole chunk ([`BytesMut::try_reclaim`]); if a
//! handler kept a view (to relay it, say), the chunk is left to that view and a fresh one is
//! allocated, counted in [`Snapshot::recv_chunks_allocated`](crate::Snapshot).

use bytes::BytesMut;

/// Invariant: `mem.len() == 0` between reads; what was read has been split off.
pub(crate) struct RecvChunk {
    mem: BytesMut,
    size: usize,
}

impl RecvChunk {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            mem: BytesMut::new(),
            size,
        }
    }

    /// Memory with at least `min` bytes of spare capacity. Returns the buffer and whether a new
    /// chunk had to be allocated.
    pub(crate) fn spare(&mut self, min: usize) -> (&mut BytesMut, bool) {
        debug_assert!(self.mem.is_empty());
        let mut fresh = false;
        if self.mem.capacity() < min && !self.mem.try_reclaim(self.size.max(min)) {
            self.mem = BytesMut::with_capacity(self.size.max(min));
            fresh = true;
        }
        (&mut self.mem, fresh)
    }

    /// The chunk's size.
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}
