//! The receive chunks: memory a worker reads sockets into.
//!
//! Owned per worker, not per session, so an idle session pins no receive memory. A read lands
//! in the current chunk's spare capacity; the bytes read are split off (a reference-counted
//! view of the same allocation, no copy), parsed in place and handed to handlers. When the
//! current chunk runs low it is retired, and the first retired chunk whose views have all been
//! dropped ([`BytesMut::try_reclaim`]) becomes current again. Views outlive a read because
//! replies queued during a turn are written at its end, and relayed frames until every
//! recipient has sent them; only when no retired chunk is free is a new one allocated,
//! counted in [`Snapshot::recv_chunks_allocated`](crate::Snapshot).

use std::collections::VecDeque;

use bytes::BytesMut;

/// Retired chunks a worker keeps waiting for their views to drop; older ones are left to their
/// views (freed when the last drops).
const MAX_RETIRED: usize = 16;

/// Invariant: `current.len() == 0` between reads; what was read has been split off.
pub(crate) struct RecvChunk {
    current: BytesMut,
    retired: VecDeque<BytesMut>,
    size: usize,
}

impl RecvChunk {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            current: BytesMut::new(),
            retired: VecDeque::new(),
            size,
        }
    }

    /// Memory with at least `min` bytes of spare capacity. Returns the buffer and whether a new
    /// chunk had to be allocated.
    pub(crate) fn spare(&mut self, min: usize) -> (&mut BytesMut, bool) {
        debug_assert!(self.current.is_empty());
        let size = self.size.max(min);
        if self.current.capacity() >= min || self.current.try_reclaim(size) {
            return (&mut self.current, false);
        }
        let old = std::mem::take(&mut self.current);
        if let Some(i) = self.retired.iter_mut().position(|c| c.try_reclaim(size)) {
            self.current = self.retired.remove(i).unwrap_or_default();
            self.retired.push_back(old);
            return (&mut self.current, false);
        }
        self.retired.push_back(old);
        if self.retired.len() > MAX_RETIRED {
            self.retired.pop_front();
        }
        self.current = BytesMut::with_capacity(size);
        (&mut self.current, true)
    }

    /// The chunk's size.
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn reuses_a_retired_chunk_once_its_views_drop() {
        let mut r = RecvChunk::new(1024);
        let (mem, fresh) = r.spare(512);
        assert!(fresh);
        let first = mem.as_ptr();
        mem.put_bytes(1, 1000);
        let view = mem.split().freeze();
        // The view pins the first chunk: a second one is allocated.
        let (mem, fresh) = r.spare(512);
        assert!(fresh);
        mem.put_bytes(2, 1000);
        drop(mem.split());
        drop(view);
        // The current chunk is reclaimed in place; no allocation.
        let (mem, fresh) = r.spare(512);
        assert!(!fresh);
        mem.put_bytes(3, 1000);
        let pin = mem.split().freeze();
        // Current is pinned, the first chunk is free again: it comes back.
        let (mem, fresh) = r.spare(512);
        assert!(!fresh);
        assert_eq!(mem.as_ptr(), first);
        drop(pin);
    }
}
