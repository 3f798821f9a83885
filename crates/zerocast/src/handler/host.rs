//! Hosting a handler on a worker: its state and its sessions' states behind calls that know
//! nothing of their types, so the worker core is compiled once, whatever the handler.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::api::{Context, Handler, Start, Tick};
use super::frame::Frame;
use crate::buffer::SendBuffer;
use crate::session::{CloseReason, Session};

/// A handler as one worker runs it: the handler, the worker's state and its sessions' states,
/// behind calls that know nothing of their types. The worker core is compiled once, whatever
/// the handler.
pub(crate) trait Hosted {
    /// The worker starts.
    fn start(&mut self, start: &Start);
    /// A session opened in slot `slot`.
    fn connect(&mut self, slot: u32, session: &Session) -> Result<(), CloseReason>;
    /// A frame for the session in slot `slot`.
    fn frame(&mut self, slot: u32, session: &Session, frame: Frame<'_>) -> Result<(), CloseReason>;
    /// The session in slot `slot` closed; its state is dropped.
    fn disconnect(&mut self, slot: u32, session: &Session, reason: &CloseReason);
    /// The worker's tick.
    fn tick(&mut self, tick: Tick);
    /// A message from another worker.
    fn message(&mut self, message: Box<dyn Any + Send>);
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
    fn start(&mut self, start: &Start) {
        let (h, w) = (&*self.handler, &mut self.worker);
        if catch_unwind(AssertUnwindSafe(|| h.on_start(w, start))).is_err() {
            tracing::error!(worker = start.index, "on_start panicked");
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

    fn tick(&mut self, tick: Tick) {
        let (h, w) = (&*self.handler, &mut self.worker);
        // A tick belongs to no session that could be closed for it: log, go on next time.
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| h.on_tick(w, tick))) {
            tracing::error!(worker = tick.worker, reason = %CloseReason::from_panic(&*p), "on_tick panicked");
        }
    }

    fn message(&mut self, message: Box<dyn Any + Send>) {
        let (h, w) = (&*self.handler, &mut self.worker);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| h.on_message(w, message))) {
            tracing::error!(reason = %CloseReason::from_panic(&*p), "on_message panicked");
        }
    }

    fn farewell(&self, session: &Session, reason: &CloseReason) -> Option<SendBuffer> {
        let h = &*self.handler;
        catch_unwind(AssertUnwindSafe(|| h.farewell(session, reason)))
            .ok()
            .flatten()
    }
}
