//! [`SendBuffer`]: written once, then shared by reference.

use bytes::{BufMut, Bytes, BytesMut};

use std::panic::Location;

use super::gauges::LIVE_SEND_BUFFERS;
use super::{leaks, pool};
use crate::frame::Header;

/// An immutable, reference-counted byte buffer queued on sessions.
///
/// Encode a message once, then hand clones to any number of sessions: a clone is a reference
/// count increment, never a copy. Each session's queue holds its clone until the kernel has taken
/// the bytes, then drops it.
///
/// Buffers up to [`POOLED_MAX`](super::POOLED_MAX) bytes built with [`SendBuffer::frame`],
/// [`SendBuffer::copy_from_slice`] or [`SendBuffer::build`] are carved from a chunk owned by the
/// calling thread (no heap allocation per buffer); the chunk is reused once every buffer carved
/// from it has been dropped. A [`Bytes`] you already hold (a received frame you relay, say)
/// becomes a `SendBuffer` with [`From`], without copying.
///
/// Every handle alive is counted in [`live_send_buffers`](super::gauges::live_send_buffers) so tests can
/// assert that nothing leaked.
#[derive(Debug)]
pub struct SendBuffer {
    bytes: Bytes,
}

impl SendBuffer {
    /// Wraps bytes without copying them.
    #[inline]
    #[track_caller]
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self::new(bytes, false)
    }

    #[inline]
    #[track_caller]
    fn new(bytes: Bytes, clone: bool) -> Self {
        LIVE_SEND_BUFFERS.add(1);
        if leaks::enabled() {
            leaks::created(key(&bytes), Location::caller(), clone);
        }
        Self { bytes }
    }

    /// Builds a buffer by letting `write` append at most `capacity` bytes to an empty
    /// [`BytesMut`]. Within the pooled size the memory comes from this thread's chunk; writing
    /// more than `capacity` still works but leaves the pool (one allocation).
    #[track_caller]
    pub fn build(capacity: usize, write: impl FnOnce(&mut BytesMut)) -> Self {
        Self::from_bytes(pool::carve(capacity, write))
    }

    /// Copies `data` into a pooled buffer.
    #[track_caller]
    pub fn copy_from_slice(data: &[u8]) -> Self {
        Self::build(data.len(), |b| b.put_slice(data))
    }

    /// Encodes a frame in the default wire format: a header for `id`, then `payload`.
    ///
    /// # Panics
    /// If the frame would exceed 65,535 bytes (the 16-bit size field): a programming error on the
    /// sending side, never triggered by network input.
    #[track_caller]
    pub fn frame(id: u16, payload: &[u8]) -> Self {
        let header = Header::for_payload(id, payload.len())
            .expect("frame payload exceeds the 16-bit size field");
        Self::build(usize::from(header.size), |b| {
            b.put_slice(&header.to_bytes());
            b.put_slice(payload);
        })
    }

    /// The bytes `range`, sharing this buffer's memory (a reference count, no copy).
    ///
    /// # Panics
    /// If `range` is not within the buffer.
    #[track_caller]
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Self::new(self.bytes.slice(range), true)
    }

    /// The bytes.
    #[inline]
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True if empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Clone for SendBuffer {
    #[inline]
    #[track_caller]
    fn clone(&self) -> Self {
        Self::new(self.bytes.clone(), true)
    }
}

impl Drop for SendBuffer {
    #[inline]
    fn drop(&mut self) {
        LIVE_SEND_BUFFERS.add(-1);
        if leaks::enabled() {
            leaks::dropped(key(&self.bytes));
        }
    }
}

fn key(bytes: &Bytes) -> (usize, usize) {
    (bytes.as_ptr() as usize, bytes.len())
}

impl From<Bytes> for SendBuffer {
    #[track_caller]
    fn from(bytes: Bytes) -> Self {
        Self::from_bytes(bytes)
    }
}

impl std::ops::Deref for SendBuffer {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for SendBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_encodes_header_and_payload() {
        let b = SendBuffer::frame(7, b"hi");
        assert_eq!(&b[..], &[6, 0, 7, 0, b'h', b'i']);
    }

    #[test]
    fn leak_tracking_names_the_origin_of_live_buffers() {
        super::leaks::track_leaks(true);
        let kept = SendBuffer::copy_from_slice(b"forgotten somewhere");
        let line = line!() - 1;
        let copies = vec![kept.clone(), kept.clone()];
        let origins = super::leaks::live_buffer_origins();
        let here = format!("{}:{line}", file!());
        let hit = origins.iter().find(|(o, _)| o.starts_with(&here));
        assert_eq!(hit.map(|h| h.1), Some(3), "{origins:?}");
        drop((kept, copies));
        let origins = super::leaks::live_buffer_origins();
        assert!(
            origins.iter().all(|(o, _)| !o.starts_with(&here)),
            "{origins:?}"
        );
    }

    #[test]
    fn clones_share_memory() {
        let a = SendBuffer::copy_from_slice(b"shared");
        let b = a.clone();
        assert_eq!(a.as_ptr(), b.as_ptr());
    }
}
