//! Buffers: the reference-counted [`SendBuffer`], the per-thread chunk pool it is carved from,
//! and the per-worker receive chunk that sockets are read into.
//!
//! The gauges here are process-wide, because a [`SendBuffer`] belongs to no engine: an
//! application may build one on any thread and send it through several engines. Each engine
//! also reports what *it* holds ([`Snapshot::buffers_held`](crate::Snapshot)), which is what
//! its tests check.

mod leaks;
mod pool;
mod recv;
mod send;

use crate::sync::counter::Striped;

pub use leaks::{live_buffer_origins, track_leaks};
pub(crate) use pool::thread_chunks_in_use;
pub use pool::{reclaim_thread_pool, CHUNK_SIZE, POOLED_MAX};
pub(crate) use recv::RecvChunk;
pub use send::SendBuffer;

/// [`SendBuffer`] handles alive in the process (each queued reference counts once).
pub(crate) static LIVE_SEND_BUFFERS: Striped = Striped::new();
/// Pooled send chunks, in the process, that still have bytes lent out.
pub(crate) static CHUNKS_IN_USE: Striped = Striped::new();
/// Pooled send chunks ever allocated in the process.
pub(crate) static CHUNKS_ALLOCATED: Striped = Striped::new();

/// Process-wide: [`SendBuffer`] handles alive. Back to zero when every engine's sessions are
/// gone and the application holds none.
pub fn live_send_buffers() -> i64 {
    LIVE_SEND_BUFFERS.get()
}

/// Process-wide: pooled send chunks with bytes still lent out.
pub fn chunks_in_use() -> i64 {
    CHUNKS_IN_USE.get()
}

/// Process-wide: pooled send chunks ever allocated.
pub fn chunks_allocated() -> i64 {
    CHUNKS_ALLOCATED.get()
}
