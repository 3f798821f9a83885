//! Ready-made handlers: the echo and broadcast servers behind `zerocast echo` and
//! `zerocast broadcast`, and small examples of the API.

use bytes::BufMut;

use crate::frame::{Header, HEADER_LEN};
use crate::{CloseReason, Frame, Group, Handler, SendBuffer, Session};

/// Sends every frame back unchanged. The reply shares the received memory: nothing is copied.
/// With the [`Raw`](crate::frame::Raw) decoder it echoes bytes as they arrive.
#[derive(Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    #[inline]
    fn on_frame(&self, session: &Session, frame: Frame<'_>) {
        let _ = session.send(SendBuffer::from(frame.frame_bytes()));
    }
}

/// Length of the sender id the broadcast server puts before each relayed payload.
pub const SENDER_ID_LEN: usize = 8;

/// The largest frame the broadcast server accepts: the relayed frame adds an 8-byte sender id
/// and must still fit the 16-bit size field.
pub const BROADCAST_MAX_FRAME: usize = u16::MAX as usize - SENDER_ID_LEN;

/// Relays every frame to every connected session, the sender included.
///
/// The relayed frame keeps the packet id; its payload is the sender's session id (u64
/// little-endian) followed by the original payload. Only the 12-byte prefix is written per
/// frame; the payload is a shared view of the received memory, queued by reference on every
/// session (gathered into each session's vectored write).
#[derive(Default)]
pub struct Broadcast {
    everyone: Group,
}

impl Broadcast {
    /// A broadcast server with no session yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Handler for Broadcast {
    fn on_connect(&self, session: &Session) {
        self.everyone.insert(session.clone());
    }

    fn on_frame(&self, session: &Session, frame: Frame<'_>) {
        let payload = frame.payload();
        let Some(header) = Header::for_payload(frame.id(), SENDER_ID_LEN + payload.len()) else {
            // Unreachable when max_frame <= BROADCAST_MAX_FRAME, which the CLI enforces.
            session.close("frame too large to relay");
            return;
        };
        let prefix = SendBuffer::build(HEADER_LEN + SENDER_ID_LEN, |b| {
            b.put_slice(&header.to_bytes());
            b.put_u64_le(session.id().0);
        });
        let body = SendBuffer::from(frame.payload_bytes());
        self.everyone.broadcast_gather(&[prefix, body]);
    }

    fn on_disconnect(&self, session: &Session, _reason: &CloseReason) {
        self.everyone.remove(session.id());
    }
}
