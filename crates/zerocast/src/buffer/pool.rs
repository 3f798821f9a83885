//! Per-thread pool of send chunks (the C++ core's `SendBufferChunk`).
//!
//! Each thread owns a current chunk, a [`BytesMut`] of [`CHUNK_SIZE`] bytes. A small buffer is
//! written at the chunk's front and split off as a frozen [`Bytes`]: no allocation, the
//! buffer shares the chunk's reference count. When the current chunk is full it is retired; a
//! retired chunk whose buffers have all been dropped is reclaimed (its handle is unique again,
//! [`BytesMut::try_reclaim`]) and reused. Detection is lazy: it happens when a thread rolls over
//! to a new chunk and whenever its owner calls [`reclaim_thread_pool`] — engine workers do on
//! every loop turn.
//!
//! Why not [`Bytes::from_owner`] with a hook on the last drop: that allocates per buffer, and
//! writing into a chunk after lending part of it out would alias a live shared borrow.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use super::gauges::{CHUNKS_ALLOCATED, CHUNKS_IN_USE};

/// Size of one pooled send chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Largest buffer carved from a chunk; larger ones get their own allocation.
pub const POOLED_MAX: usize = 8 * 1024;
/// Free chunks a thread keeps beyond its current one; more are released to the allocator.
const FREE_MAX: usize = 4;

/// A chunk and whether any of its bytes are lent out.
///
/// Invariant: `lent` is true iff this chunk is counted in `CHUNKS_IN_USE` and in its thread's
/// [`Pool::lent`].
struct Chunk {
    mem: BytesMut,
    lent: bool,
}

impl Chunk {
    fn new() -> Self {
        CHUNKS_ALLOCATED.add(1);
        let mut mem = BytesMut::with_capacity(CHUNK_SIZE);
        if let Some(node) = NODE.with(std::cell::Cell::get) {
            // Before anything is written: the pages are placed on the node when first
            // touched. A failure leaves the thread's own policy (the same node) in charge.
            if let Err(e) = crate::sys::numa::prefer_node_for(mem.spare_capacity_mut(), node) {
                tracing::debug!(node, error = %e, "send chunk not bound to its NUMA node");
            }
        }
        Self { mem, lent: false }
    }

    /// Takes the chunk back if nothing carved from it is alive. Returns true if it is free.
    fn try_reclaim(&mut self) -> bool {
        if !self.lent {
            return true;
        }
        debug_assert!(self.mem.is_empty());
        if self.mem.try_reclaim(CHUNK_SIZE) {
            self.lent = false;
            CHUNKS_IN_USE.add(-1);
            let _ = LENT.try_with(|l| l.set(l.get().saturating_sub(1)));
            true
        } else {
            false
        }
    }

    fn lend(&mut self) {
        if !self.lent {
            self.lent = true;
            CHUNKS_IN_USE.add(1);
            let _ = LENT.try_with(|l| l.set(l.get() + 1));
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // The memory itself is freed by `bytes` when the last buffer drops; the pool stops
        // tracking it here (thread exit).
        if self.lent {
            CHUNKS_IN_USE.add(-1);
            let _ = LENT.try_with(|l| l.set(l.get().saturating_sub(1)));
        }
    }
}

#[derive(Default)]
struct Pool {
    current: Option<Chunk>,
    retired: Vec<Chunk>,
    free: Vec<Chunk>,
}

thread_local! {
    /// Chunks of this thread's pool with bytes lent out (what `CHUNKS_IN_USE` counts for this
    /// thread): a worker reports its own in its engine's counters.
    static LENT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

thread_local! {
    /// The NUMA node this thread's chunks are bound to (a pinned worker's).
    static NODE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Binds the chunks the calling thread's pool allocates from now on to NUMA node `node`.
pub(crate) fn bind_thread_pool(node: usize) {
    NODE.with(|n| n.set(Some(node)));
}

/// Chunks of the calling thread's pool that still have bytes lent out.
pub(crate) fn thread_chunks_in_use() -> usize {
    LENT.with(std::cell::Cell::get)
}

impl Pool {
    fn reclaim(&mut self) {
        if let Some(c) = &mut self.current {
            c.try_reclaim();
        }
        let mut i = 0;
        while i < self.retired.len() {
            if self.retired[i].try_reclaim() {
                let chunk = self.retired.swap_remove(i);
                if self.free.len() < FREE_MAX {
                    self.free.push(chunk);
                }
            } else {
                i += 1;
            }
        }
    }

    /// A chunk with at least `len` bytes of room.
    fn chunk_for(&mut self, len: usize) -> &mut Chunk {
        let room = self.current.as_ref().map_or(0, |c| c.mem.capacity());
        if room < len {
            if let Some(old) = self.current.take() {
                self.retired.push(old);
            }
            self.reclaim();
            let next = self.free.pop().unwrap_or_else(Chunk::new);
            self.current = Some(next);
        }
        self.current.get_or_insert_with(Chunk::new)
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Builds bytes from this thread's pool (or a dedicated allocation above [`POOLED_MAX`]).
pub(super) fn carve(capacity: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    if capacity > POOLED_MAX {
        let mut own = BytesMut::with_capacity(capacity);
        write(&mut own);
        return own.freeze();
    }
    let mut write = Some(write);
    let carved = POOL.try_with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return None; // re-entered from inside `write`: fall back below
        };
        let chunk = pool.chunk_for(capacity);
        if let Some(write) = write.take() {
            write(&mut chunk.mem);
        }
        chunk.lend();
        Some(chunk.mem.split().freeze())
    });
    match (carved, write) {
        (Ok(Some(bytes)), _) => bytes,
        // Thread-local storage is being torn down, or the pool is borrowed: allocate.
        (_, Some(write)) => {
            let mut own = BytesMut::with_capacity(capacity);
            write(&mut own);
            own.freeze()
        }
        (_, None) => unreachable!("the writer ran but no bytes were carved"),
    }
}

/// Returns the calling thread's chunks whose buffers have all been dropped to its free list,
/// updating [`chunks_in_use`](super::gauges::chunks_in_use). Engine workers call it every loop turn;
/// call it on an application thread that builds buffers and then stops building.
pub fn reclaim_thread_pool() {
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            pool.reclaim();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn carve_n(n: usize) -> Bytes {
        carve(n, |b| b.put_bytes(0xab, n))
    }

    #[test]
    fn small_buffers_share_one_chunk() {
        let a = carve_n(100);
        let b = carve_n(100);
        // Adjacent in the same allocation.
        assert_eq!(a.as_ptr() as usize + 100, b.as_ptr() as usize);
    }

    #[test]
    fn chunk_is_reused_after_its_buffers_drop() {
        std::thread::spawn(|| {
            let first = carve_n(POOLED_MAX);
            let first_ptr = first.as_ptr();
            let mut keep = vec![first];
            // Fill the chunk so the next carve rolls over.
            while keep.iter().map(Bytes::len).sum::<usize>() + POOLED_MAX <= CHUNK_SIZE {
                keep.push(carve_n(POOLED_MAX));
            }
            drop(keep);
            let next = carve_n(POOLED_MAX);
            assert_eq!(next.as_ptr(), first_ptr, "the retired chunk was reclaimed");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn large_buffers_bypass_the_pool() {
        let big = carve_n(POOLED_MAX + 1);
        assert_eq!(big.len(), POOLED_MAX + 1);
    }
}
