//! [`Fanout`]: one buffer queued, whole or in slices, on many sessions of the calling worker.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Range;

use super::handle::Session;
use super::local;
use super::shared::Refused;
use crate::buffer::SendBuffer;
use crate::conn::outq::KeepId;

/// One buffer to queue on many sessions, whole or in slices, from a worker's own thread (a
/// tick, a handler): the worker holds the buffer once, and each send is three integers on the
/// session's queue, without a reference count or a lock per session. A game that lays a
/// tick's events out per area (the world server does) gives each player its slices of a few
/// such buffers.
///
/// On any other thread, or for a session of another worker, a send falls back to a shared
/// slice of the buffer ([`SendBuffer::slice`]): correct, one reference count dearer.
///
/// Not `Send`: it belongs to the thread that made it, as the worker's queues do.
///
/// ```
/// use zerocast::{Context, Fanout, Frame, Group, Handler, SendBuffer, Session};
///
/// /// Sends each frame's first half to the sender, the whole to everyone else.
/// struct Split(Group);
///
/// impl Handler for Split {
///     type Worker = ();
///     type Session = ();
///     fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
///         let all = Fanout::new(SendBuffer::frame(frame.id(), frame.payload()));
///         let _ = all.send(cx.session, 0..all.len() / 2);
///         let _ = all.send_all(cx.session); // the rest of the world would get it whole
///     }
/// }
/// ```
pub struct Fanout {
    buf: SendBuffer,
    kept: Cell<Option<KeepId>>,
    _not_send: PhantomData<*const ()>,
}

impl Fanout {
    /// A fanout of `buf`.
    pub fn new(buf: SendBuffer) -> Self {
        Self {
            buf,
            kept: Cell::new(None),
            _not_send: PhantomData,
        }
    }

    /// The buffer's length.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The buffer.
    pub fn buffer(&self) -> &SendBuffer {
        &self.buf
    }

    /// Queues bytes `range` of the buffer on `session`, after whatever the calling thread
    /// queued on it before.
    ///
    /// # Errors
    /// As [`Session::send`].
    ///
    /// # Panics
    /// If `range` is not within the buffer.
    pub fn send(&self, session: &Session, range: Range<usize>) -> Result<(), Refused> {
        if range.is_empty() && range.end <= self.buf.len() {
            return Ok(());
        }
        self.send_ranges(session, std::iter::once(range))
    }

    /// Queues several byte ranges of the buffer on `session`, in order, after whatever the
    /// calling thread queued on it before: the session is looked up once for all of them (a
    /// player's slices of a tick, its own events cut out).
    ///
    /// # Errors
    /// As [`Session::send`]; the ranges before the refused one stay queued.
    ///
    /// # Panics
    /// If a range is not within the buffer (checked before anything is queued).
    pub fn send_ranges<I>(&self, session: &Session, ranges: I) -> Result<(), Refused>
    where
        I: IntoIterator<Item = Range<usize>>,
        I::IntoIter: Clone,
    {
        let ranges = ranges.into_iter();
        let len = self.buf.len();
        for r in ranges.clone() {
            assert!(r.start <= r.end && r.end <= len, "range outside the buffer");
        }
        let mut kept = self.kept.get();
        let r = local::send_kept(&session.shared, &self.buf, &mut kept, ranges);
        self.kept.set(kept);
        match r {
            Ok(done) => done,
            Err(ranges) => {
                for r in ranges.filter(|r| !r.is_empty()) {
                    session.send(self.buf.slice(r)).map_err(|e| e.reason)?;
                }
                Ok(())
            }
        }
    }

    /// Queues the whole buffer on `session`.
    ///
    /// # Errors
    /// As [`Session::send`].
    pub fn send_all(&self, session: &Session) -> Result<(), Refused> {
        self.send(session, 0..self.buf.len())
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        if let Some(k) = self.kept.get() {
            local::fanout_done(k);
        }
    }
}
