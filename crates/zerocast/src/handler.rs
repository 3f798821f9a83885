//! The application side: what the engine calls, with the state it keeps per worker and per
//! session, and the borrowed frame view it passes.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::Bytes;

use crate::buffer::SendBuffer;
use crate::session::{CloseReason, Session};

/// Callbacks from the engine's workers.
///
/// One handler serves every session of an engine, from all workers at once. Besides `&self`
/// (shared by every worker), each callback gets state of its own:
/// - [`Handler::Worker`]: one per worker, created when the worker starts and only ever
///   touched by that worker's thread, so it needs no lock (a shard of a game world, a
///   per-worker cache);
/// - [`Handler::Session`]: one per session, kept on the session's worker beside its socket
///   (a player's position and rate limits, a decoder's state).
///
/// A session's callbacks come from its own worker, in order: `on_connect`, then `on_frame` for
/// every frame, then `on_disconnect` exactly once. Callbacks run on the event loop: keep them
/// short and never block. A panic in a session's callback closes that session only
/// ([`CloseReason::HandlerPanic`]).
///
/// ```
/// use zerocast::{Context, Frame, Handler, SendBuffer};
///
/// /// Counts each session's frames, and each worker's.
/// struct Count;
///
/// impl Handler for Count {
///     type Worker = u64;
///     type Session = u64;
///
///     fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
///         *cx.worker += 1;
///         *cx.state += 1;
///         let reply = SendBuffer::frame(frame.id(), &cx.state.to_le_bytes());
///         let _ = cx.session.send(reply);
///     }
/// }
/// ```
pub trait Handler: Send + Sync + Sized + 'static {
    /// What each worker keeps for this handler (`()` for nothing).
    type Worker: Default + 'static;
    /// What each session keeps (`()` for nothing).
    type Session: Default + 'static;

    /// A worker started (numbered from 0), before it serves anything.
    fn on_start(&self, worker: &mut Self::Worker, index: usize) {
        let _ = (worker, index);
    }

    /// A session opened (accepted or connected). It enters the engine's registry right after
    /// this returns, so a session found in the registry has had its `on_connect`.
    fn on_connect(&self, cx: Context<'_, Self>) {
        let _ = cx;
    }

    /// One complete frame arrived.
    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>);

    /// The session ended. It has left its groups, and leaves the registry right after this
    /// returns; its state is dropped then.
    fn on_disconnect(&self, cx: Context<'_, Self>, reason: &CloseReason) {
        let _ = (cx, reason);
    }

    /// Called on every worker every [`Builder::tick`](crate::Builder::tick), when one is
    /// set, on the worker's own thread. Sends made here, like sends made in `on_frame`, are
    /// written at the end of the worker's turn, gathered with everything else queued on the
    /// same session. A tick that comes due while the worker is busy runs at the end of that
    /// turn; missed ticks are not replayed.
    fn on_tick(&self, worker: &mut Self::Worker, index: usize) {
        let _ = (worker, index);
    }

    /// The last frame to send a session the engine closes because of `reason` (a protocol
    /// error, a bad packet, a deadline, a shutdown; see
    /// [`CloseReason::deserves_farewell`]), so the client learns why. The engine writes it
    /// after what is already queued, if the socket takes it at once, and then closes.
    /// Default: none.
    fn farewell(&self, session: &Session, reason: &CloseReason) -> Option<SendBuffer> {
        let _ = (session, reason);
        None
    }
}

/// What a callback gets besides the frame: the session, its state, and its worker's state.
pub struct Context<'a, H: Handler> {
    /// The session the callback is about.
    pub session: &'a Session,
    /// The session's state.
    pub state: &'a mut H::Session,
    /// The state of the worker serving it.
    pub worker: &'a mut H::Worker,
}

/// Lets the application keep a handle on its handler (groups, game world) while the engine
/// serves sessions with it.
impl<H: Handler> Handler for Arc<H> {
    type Worker = H::Worker;
    type Session = H::Session;

    fn on_start(&self, worker: &mut Self::Worker, index: usize) {
        (**self).on_start(worker, index);
    }

    fn on_connect(&self, cx: Context<'_, Self>) {
        (**self).on_connect(relabel(cx));
    }

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        (**self).on_frame(relabel(cx), frame);
    }

    fn on_disconnect(&self, cx: Context<'_, Self>, reason: &CloseReason) {
        (**self).on_disconnect(relabel(cx), reason);
    }

    fn on_tick(&self, worker: &mut Self::Worker, index: usize) {
        (**self).on_tick(worker, index);
    }

    fn farewell(&self, session: &Session, reason: &CloseReason) -> Option<SendBuffer> {
        (**self).farewell(session, reason)
    }
}

fn relabel<H: Handler>(cx: Context<'_, Arc<H>>) -> Context<'_, H> {
    Context {
        session: cx.session,
        state: cx.state,
        worker: cx.worker,
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

/// A handler as one worker runs it: the handler, the worker's state and its sessions' states,
/// behind calls that know nothing of their types. The worker core is compiled once, whatever
/// the handler.
pub(crate) trait Hosted {
    /// The worker `index` starts.
    fn start(&mut self, index: usize);
    /// A session opened in slot `slot`.
    fn connect(&mut self, slot: u32, session: &Session) -> Result<(), CloseReason>;
    /// A frame for the session in slot `slot`.
    fn frame(&mut self, slot: u32, session: &Session, frame: Frame<'_>) -> Result<(), CloseReason>;
    /// The session in slot `slot` closed; its state is dropped.
    fn disconnect(&mut self, slot: u32, session: &Session, reason: &CloseReason);
    /// The worker's tick.
    fn tick(&mut self, index: usize);
    /// The farewell frame for a session closed for `reason`.
    fn farewell(&self, session: &Session, reason: &CloseReason) -> Option<SendBuffer>;
}

/// Builds each worker's [`Hosted`] handler, on the worker's thread.
pub(crate) type HostFactory = Arc<dyn Fn() -> Box<dyn Hosted> + Send + Sync>;

/// The factory for `handler`.
pub(crate) fn host<H: Handler>(handler: H) -> HostFactory {
    let handler = Arc::new(handler);
    Arc::new(move || {
        Box::new(Host {
            handler: handler.clone(),
            worker: H::Worker::default(),
            sessions: Vec::new(),
        })
    })
}

/// Invariant: `sessions[slot]` is `Some` exactly while a session is open in `slot`.
struct Host<H: Handler> {
    handler: Arc<H>,
    worker: H::Worker,
    sessions: Vec<Option<H::Session>>,
}

impl<H: Handler> Host<H> {
    /// Runs `f` with the session's context; a panic becomes the session's close reason.
    /// AssertUnwindSafe: after a panic the engine touches nothing the handler was using but
    /// the session's state, which is dropped with the session.
    fn call(
        &mut self,
        slot: u32,
        session: &Session,
        f: impl FnOnce(&H, Context<'_, H>),
    ) -> Result<(), CloseReason> {
        let Some(Some(state)) = self.sessions.get_mut(slot as usize) else {
            return Ok(());
        };
        let handler = &*self.handler;
        let worker = &mut self.worker;
        catch_unwind(AssertUnwindSafe(|| {
            f(
                handler,
                Context {
                    session,
                    state,
                    worker,
                },
            )
        }))
        .map_err(|p| CloseReason::from_panic(&*p))
    }
}

impl<H: Handler> Hosted for Host<H> {
    fn start(&mut self, index: usize) {
        let (h, w) = (&*self.handler, &mut self.worker);
        if catch_unwind(AssertUnwindSafe(|| h.on_start(w, index))).is_err() {
            tracing::error!(worker = index, "on_start panicked");
        }
    }

    fn connect(&mut self, slot: u32, session: &Session) -> Result<(), CloseReason> {
        let i = slot as usize;
        if self.sessions.len() <= i {
            self.sessions.resize_with(i + 1, || None);
        }
        self.sessions[i] = Some(H::Session::default());
        self.call(slot, session, |h, cx| h.on_connect(cx))
    }

    fn frame(&mut self, slot: u32, session: &Session, frame: Frame<'_>) -> Result<(), CloseReason> {
        self.call(slot, session, |h, cx| h.on_frame(cx, frame))
    }

    fn disconnect(&mut self, slot: u32, session: &Session, reason: &CloseReason) {
        if self
            .call(slot, session, |h, cx| h.on_disconnect(cx, reason))
            .is_err()
        {
            tracing::error!(session = %session.id(), "handler panicked in on_disconnect");
        }
        if let Some(s) = self.sessions.get_mut(slot as usize) {
            *s = None;
        }
    }

    fn tick(&mut self, index: usize) {
        let (h, w) = (&*self.handler, &mut self.worker);
        // A tick belongs to no session that could be closed for it: log, go on next time.
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| h.on_tick(w, index))) {
            tracing::error!(worker = index, reason = %CloseReason::from_panic(&*p), "on_tick panicked");
        }
    }

    fn farewell(&self, session: &Session, reason: &CloseReason) -> Option<SendBuffer> {
        let h = &*self.handler;
        catch_unwind(AssertUnwindSafe(|| h.farewell(session, reason)))
            .ok()
            .flatten()
    }
}
