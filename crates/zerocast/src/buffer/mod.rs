//! Buffers: the reference-counted [`SendBuffer`], the per-thread chunk pool it is carved from,
//! and the per-worker receive chunk that sockets are read into.
//!
//! The gauges here are process-wide, because a [`SendBuffer`] belongs to no engine: an
//! application may build one on any thread and send it through several engines. Each engine
//! also reports what *it* holds ([`Snapshot::buffers_held`](crate::Snapshot)), which is what
//! its tests check.

mod gauges;
mod leaks;
mod pool;
mod recv;
mod send;

pub use gauges::{chunks_allocated, chunks_in_use, live_send_buffers};

pub use leaks::{live_buffer_origins, track_leaks};
pub(crate) use pool::{bind_thread_pool, thread_chunks_in_use};
pub use pool::{reclaim_thread_pool, CHUNK_SIZE, POOLED_MAX};
pub(crate) use recv::RecvChunk;
pub use send::SendBuffer;
