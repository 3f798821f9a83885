//! The [`Handler`] trait and what its callbacks get.

use std::any::Any;
use std::sync::{Arc, OnceLock, Weak};

use super::frame::Frame;
use crate::buffer::SendBuffer;
use crate::session::{CloseReason, Notice, Owner, Session};

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

    /// A worker started, before it serves anything: `start` says which, how many there are,
    /// and gives the [`Mail`] to the others.
    fn on_start(&self, worker: &mut Self::Worker, start: &Start) {
        let _ = (worker, start);
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
    /// same session. Every worker's tick number `n` falls at the same moment (the engine's
    /// start plus `n` periods); a tick that comes due while the worker is busy runs at the end
    /// of that turn, and missed ticks are skipped (the number jumps).
    fn on_tick(&self, worker: &mut Self::Worker, tick: Tick) {
        let _ = (worker, tick);
    }

    /// A message another worker posted to this one with its [`Mail`], on this worker's thread.
    fn on_message(&self, worker: &mut Self::Worker, message: Box<dyn Any + Send>) {
        let _ = (worker, message);
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

    fn on_start(&self, worker: &mut Self::Worker, start: &Start) {
        (**self).on_start(worker, start);
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

    fn on_tick(&self, worker: &mut Self::Worker, tick: Tick) {
        (**self).on_tick(worker, tick);
    }

    fn on_message(&self, worker: &mut Self::Worker, message: Box<dyn Any + Send>) {
        (**self).on_message(worker, message);
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

/// A worker's tick: which worker, and the tick's number since the engine started (the same
/// number falls at the same moment on every worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The worker's index (from 0).
    pub worker: usize,
    /// The tick's number.
    pub number: u64,
}

/// What a worker starts with: its index, the number of workers, and mail to them.
pub struct Start {
    /// This worker's index (from 0).
    pub index: usize,
    /// How many workers the engine runs.
    pub workers: usize,
    /// Posts messages to the workers' handlers.
    pub mail: Mail,
}

/// Posts messages to an engine's workers: [`Handler::on_message`] receives them on the
/// worker's own thread, in the order each sender posted them. A message costs a lock and at
/// most one wake-up of the receiving worker; batch what you send (a tick's worth, say).
#[derive(Clone)]
pub struct Mail {
    /// Weak: the workers hold the engine's shared state, which holds this.
    pub(crate) workers: Arc<OnceLock<Vec<Weak<dyn Owner>>>>,
}

impl Mail {
    pub(crate) fn new() -> Self {
        Self {
            workers: Arc::new(OnceLock::new()),
        }
    }

    /// Posts `message` to worker `to`. False if there is no such worker (or the engine is
    /// still starting its workers).
    pub fn post(&self, to: usize, message: Box<dyn Any + Send>) -> bool {
        match self.workers.get().and_then(|w| w.get(to)?.upgrade()) {
            Some(w) => {
                w.post(Notice::Message(message));
                true
            }
            None => false,
        }
    }
}
