//! Why a session ended.

use std::fmt;

use crate::frame::FrameError;
use crate::packet::PacketError;
use crate::ws::frame::{CloseCode, WsError};
use crate::ws::handshake::HandshakeError;

/// Why a session ended. Passed to [`Handler::on_disconnect`](crate::Handler::on_disconnect)
/// and logged with `tracing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side in order (end of stream), after its replies were flushed.
    PeerClosed,
    /// The peer reset the connection (ECONNRESET, EPIPE).
    Reset,
    /// The peer broke the framing; the detail says how.
    Protocol(FrameError),
    /// A frame was not a valid packet (unknown id, wrong length, bad text, a forbidden
    /// value); see [`Session::close_for_packet`](crate::Session::close_for_packet).
    Packet(PacketError),
    /// The engine is shutting down.
    Shutdown,
    /// The application closed the session with [`Session::close`](crate::Session::close).
    Local(&'static str),
    /// Any other I/O error.
    Io(std::io::ErrorKind),
    /// The peer did not read fast enough: its queued bytes passed the hard limit, or stayed
    /// above the soft limit for the grace period.
    SlowConsumer,
    /// No complete frame arrived within the first-frame deadline.
    FirstFrameTimeout,
    /// No complete frame arrived for the idle timeout.
    IdleTimeout,
    /// The engine was at its connection cap when this connection was accepted.
    TooManyConnections,
    /// The application's handler panicked while serving this session; the message is the
    /// panic's. Other sessions on the same worker are unaffected.
    HandlerPanic(String),
    /// A WebSocket client broke RFC 6455 (answered with a close frame and its status code).
    WebSocket(WsError),
    /// A WebSocket upgrade request was refused (answered with HTTP 400 or 426).
    Handshake(HandshakeError),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerClosed => f.write_str("peer closed"),
            Self::Reset => f.write_str("connection reset"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Packet(e) => write!(f, "bad packet: {e}"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::Local(why) => write!(f, "closed locally: {why}"),
            Self::Io(kind) => write!(f, "I/O error: {kind}"),
            Self::SlowConsumer => f.write_str("slow consumer"),
            Self::FirstFrameTimeout => f.write_str("no first frame before the deadline"),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::TooManyConnections => f.write_str("too many connections"),
            Self::HandlerPanic(msg) => write!(f, "handler panicked: {msg}"),
            Self::WebSocket(e) => write!(f, "WebSocket error: {e}"),
            Self::Handshake(e) => write!(f, "WebSocket handshake refused: {e}"),
        }
    }
}

impl CloseReason {
    pub(crate) fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string());
        Self::HandlerPanic(msg)
    }

    /// A reason the WebSocket transport itself answers (with a close frame or a refusal).
    pub(crate) fn is_websocket(&self) -> bool {
        matches!(self, Self::WebSocket(_) | Self::Handshake(_))
    }

    /// The WebSocket status code a close frame gives for this reason.
    pub(crate) fn close_code(&self) -> CloseCode {
        match self {
            Self::WebSocket(e) => e.close_code(),
            Self::Shutdown => CloseCode::GoingAway,
            Self::Local(_) | Self::PeerClosed => CloseCode::Normal,
            Self::HandlerPanic(_) => CloseCode::Internal,
            // The protocol inside the messages, the deadlines, the limits.
            _ => CloseCode::Policy,
        }
    }

    pub(crate) fn from_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionReset | BrokenPipe | ConnectionAborted => Self::Reset,
            kind => Self::Io(kind),
        }
    }

    /// Whether the peer broke a rule or went quiet: the handler's
    /// [`farewell`](crate::Handler::farewell) is then sent before the close, so the client
    /// learns why.
    pub fn deserves_farewell(&self) -> bool {
        matches!(
            self,
            Self::Protocol(_)
                | Self::Packet(_)
                | Self::FirstFrameTimeout
                | Self::IdleTimeout
                | Self::TooManyConnections
                | Self::Shutdown
                | Self::Local(_)
        )
    }
}
