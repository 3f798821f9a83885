//! A connection as the worker core holds it.

use crate::conn::outq::WriteBuf;
use crate::conn::recv::RecvState;
use crate::conn::timing::Timing;
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
    /// Set with `eof`: the session closes with this reason once its queue is written.
    pub(crate) after_flush: Option<Box<CloseReason>>,
}

impl Conn {
    pub(crate) fn new(sock: Sock, session: Session, accepted: bool, now_ms: u32) -> Self {
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
            after_flush: None,
        }
    }
}
