//! The process-wide buffer gauges.

use crate::sync::counter::Striped;

/// [`SendBuffer`](crate::SendBuffer) handles alive in the process (each queued reference counts once).
pub(crate) static LIVE_SEND_BUFFERS: Striped = Striped::new();
/// Pooled send chunks, in the process, that still have bytes lent out.
pub(crate) static CHUNKS_IN_USE: Striped = Striped::new();
/// Pooled send chunks ever allocated in the process.
pub(crate) static CHUNKS_ALLOCATED: Striped = Striped::new();

/// Process-wide: [`SendBuffer`](crate::SendBuffer) handles alive. Back to zero when every engine's sessions are
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
