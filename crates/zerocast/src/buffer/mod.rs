//! Buffers: the reference-counted [`SendBuffer`], the per-thread chunk pool it is carved from,
//! and the per-worker receive chunk that sockets are read into.

mod leaks;
mod pool;
mod recv;
mod send;

pub use leaks::{live_buffer_origins, track_leaks};
pub use pool::{reclaim_thread_pool, CHUNK_SIZE, POOLED_MAX};
pub(crate) use recv::RecvChunk;
pub use send::SendBuffer;
