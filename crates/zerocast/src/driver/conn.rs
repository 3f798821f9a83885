//! A connection as the worker core holds it.

use crate::conn::outq::WriteBuf;
use crate::conn::recv::RecvState;
use crate::conn::timing::Timing;
use crate::conn::ws::WsConn;
use crate::session::{CloseReason, Session};
use crate::sys::Sock;

/// One connection's state in its worker (its output is in the worker's outbox, by slot).
///
/// Invariants:
/// - `inflight` is `Some` iff a send is in flight; its slices point into its own cork and
///   into buffers the slot's queued pieces hold, so neither is released until the send's
///   result is in ([`WriteBuf`]'s invariant);
/// - while `closed`, the connection is a zombie: its session retired and the handler told,
///   it waits in the slab for the backend to release its token, so that no operation still
///   in the kernel outlives the socket or the memory it uses.
pub(crate) struct Conn {
    pub(crate) sock: Sock,
    pub(crate) session: Session,
    pub(crate) rx: RecvState,
    pub(crate) timing: Timing,
    pub(crate) inflight: Option<Box<WriteBuf>>,
    /// The socket is full: wait for [`Event::Writable`](super::Event) before writing again.
    pub(crate) blocked: bool,
    /// The peer half-closed, hung up or errored: read until end of stream or error, never stop
    /// at a short read, or the edge that announced it is lost.
    pub(crate) hup: bool,
    /// No more reading (the peer half-closed, a farewell, or shutdown).
    pub(crate) eof: bool,
    /// The farewell frame is queued: the close does not wait for a full socket.
    pub(crate) farewell: bool,
    /// Closed: waiting for the backend to release the token.
    pub(crate) closed: bool,
    /// What few connections need, behind one pointer: an idle raw TCP connection holds none.
    ext: Option<Box<Ext>>,
    /// Accepted on a listener serving both transports, nothing read yet: the first bytes
    /// decide.
    pub(crate) sniff: bool,
}

impl Conn {
    pub(crate) fn new(
        sock: Sock,
        session: Session,
        accepted: bool,
        now_ms: u32,
        ws: Option<Box<WsConn>>,
        sniff: bool,
    ) -> Self {
        Self {
            sock,
            session,
            rx: RecvState::default(),
            timing: Timing::new(accepted, now_ms),
            inflight: None,
            blocked: false,
            hup: false,
            eof: false,
            farewell: false,
            closed: false,
            ext: ws.map(|ws| {
                Box::new(Ext {
                    after_flush: None,
                    ws: Some(*ws),
                })
            }),
            sniff,
        }
    }

    /// The WebSocket transport's state; `None` on raw TCP.
    pub(crate) fn ws(&self) -> Option<&WsConn> {
        self.ext.as_ref()?.ws.as_ref()
    }

    pub(crate) fn ws_mut(&mut self) -> Option<&mut WsConn> {
        self.ext.as_mut()?.ws.as_mut()
    }

    pub(crate) fn is_ws(&self) -> bool {
        self.ws().is_some()
    }

    pub(crate) fn set_ws(&mut self, ws: WsConn) {
        self.ext.get_or_insert_with(Box::default).ws = Some(ws);
    }

    /// True once the session is to close after its queue is written.
    pub(crate) fn closes_after_flush(&self) -> bool {
        self.ext.as_ref().is_some_and(|e| e.after_flush.is_some())
    }

    /// Sets the reason it closes with once its queue is written (unless one is set and
    /// `replace` is false).
    pub(crate) fn set_after_flush(&mut self, reason: CloseReason, replace: bool) {
        let ext = self.ext.get_or_insert_with(Box::default);
        if replace || ext.after_flush.is_none() {
            ext.after_flush = Some(reason);
        }
    }

    /// Takes that reason (shutdown if none was set).
    pub(crate) fn take_after_flush(&mut self) -> CloseReason {
        self.ext
            .as_mut()
            .and_then(|e| e.after_flush.take())
            .unwrap_or(CloseReason::Shutdown)
    }
}

/// A connection's rarely needed state.
#[derive(Default)]
struct Ext {
    /// Set with `eof`: the session closes with this reason once its queue is written.
    after_flush: Option<CloseReason>,
    /// The WebSocket transport's state; `None` on raw TCP.
    ws: Option<WsConn>,
}
