//! [`Frame`]: the borrowed view of one received frame.

use std::ops::Range;

use bytes::Bytes;

/// A complete frame, borrowed from the memory the socket was read into: parsing and delivery
/// copy nothing.
///
/// To keep or relay a frame past the callback, take a [`Bytes`] view with
/// [`payload_bytes`](Frame::payload_bytes) or [`frame_bytes`](Frame::frame_bytes): it shares the
/// receive memory (a reference count increment) instead of copying it.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    id: u16,
    data: &'a Bytes,
    /// The whole frame within `data`.
    frame: (usize, usize),
    /// Payload start within `data`.
    payload_start: usize,
    /// Arrived in a datagram (see [`crate::datagram`]), not on the session's stream.
    datagram: bool,
}

impl<'a> Frame<'a> {
    pub(crate) fn new(id: u16, data: &'a Bytes, frame: Range<usize>, header: usize) -> Self {
        debug_assert!(frame.start + header <= frame.end && frame.end <= data.len());
        Self {
            id,
            data,
            frame: (frame.start, frame.end),
            payload_start: frame.start + header,
            datagram: false,
        }
    }

    /// The same frame, marked as arrived in a datagram.
    pub(crate) fn datagram(mut self) -> Self {
        self.datagram = true;
        self
    }

    /// True if the frame arrived in a datagram of the session's unreliable channel
    /// ([`Session::open_datagrams`](crate::Session::open_datagrams)), false on its stream.
    #[inline]
    pub fn is_datagram(&self) -> bool {
        self.datagram
    }

    /// The packet id from the header (0 for framings without ids).
    #[inline]
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The payload (the frame without its header).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.data[self.payload_start..self.frame.1]
    }

    /// The whole frame as received, header included.
    #[inline]
    pub fn as_slice(&self) -> &'a [u8] {
        &self.data[self.frame.0..self.frame.1]
    }

    /// The payload as shared bytes (no copy). On the io_uring backend the view keeps its
    /// 4 KiB receive buffer out of the kernel's ring until it drops: relay it or send it, but
    /// copy what you keep for long.
    pub fn payload_bytes(&self) -> Bytes {
        self.data.slice(self.payload_start..self.frame.1)
    }

    /// The whole frame, header included, as shared bytes (no copy).
    pub fn frame_bytes(&self) -> Bytes {
        self.data.slice(self.frame.0..self.frame.1)
    }
}
