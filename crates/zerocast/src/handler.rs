//! The application side: what the engine calls, and the borrowed frame view it passes.

use std::ops::Range;

use bytes::Bytes;

use crate::session::{CloseReason, Session};

/// Callbacks from the engine's workers. One handler serves every session of an engine and is
/// called from all workers concurrently; each session's callbacks come from its own worker, in
/// order: `on_connect`, then `on_frame` for every frame, then `on_disconnect` exactly once.
///
/// Callbacks run on the event loop: keep them short and never block.
pub trait Handler: Send + Sync + 'static {
    /// A session opened (accepted or connected). It enters the engine's registry right after
    /// this returns, so a session found in the registry has had its `on_connect`.
    fn on_connect(&self, session: &Session) {
        let _ = session;
    }

    /// One complete frame arrived.
    fn on_frame(&self, session: &Session, frame: Frame<'_>);

    /// The session ended. It is removed from the registry right after this returns.
    fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        let _ = (session, reason);
    }

    /// Called on every worker (numbered from 0) every [`Config::tick`](crate::Config::tick),
    /// when one is set, on the worker's own thread. Sends made here, like sends made in
    /// `on_frame`, are written at the end of the worker's turn, gathered with everything else
    /// queued on the same session: no cross-thread wake-up. A tick that comes due while the
    /// worker is busy runs at the end of that turn; missed ticks are not replayed.
    fn on_tick(&self, worker: usize) {
        let _ = worker;
    }
}

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
}

impl<'a> Frame<'a> {
    pub(crate) fn new(id: u16, data: &'a Bytes, frame: Range<usize>, header: usize) -> Self {
        debug_assert!(frame.start + header <= frame.end && frame.end <= data.len());
        Self {
            id,
            data,
            frame: (frame.start, frame.end),
            payload_start: frame.start + header,
        }
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

/// Lets the application keep a handle on its handler's state (groups, game world) while the
/// engine serves sessions with it.
impl<H: Handler> Handler for std::sync::Arc<H> {
    fn on_connect(&self, session: &Session) {
        (**self).on_connect(session);
    }

    fn on_frame(&self, session: &Session, frame: Frame<'_>) {
        (**self).on_frame(session, frame);
    }

    fn on_disconnect(&self, session: &Session, reason: &CloseReason) {
        (**self).on_disconnect(session, reason);
    }

    fn on_tick(&self, worker: usize) {
        (**self).on_tick(worker);
    }
}
