//! The ready-made servers behind `zerocast echo` and `zerocast broadcast`: small, complete
//! examples of the engine's API, and the servers the benchmarks drive (docs/PROTOCOL.md).

use bytes::BufMut;
use zerocast::frame::{Header, HEADER_LEN};
use zerocast::{Context, Frame, Group, Handler, SendBuffer};

/// Sends every frame back unchanged. The reply shares the received memory: nothing is copied.
/// With the [`Raw`](zerocast::frame::Raw) decoder it echoes bytes as they arrive.
#[derive(Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    type Worker = ();
    type Session = ();

    #[inline]
    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let _ = cx.session.send(SendBuffer::from(frame.frame_bytes()));
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
/// little-endian) followed by the original payload. Each relayed frame is written once, whole
/// (header, sender id and payload), into one pooled buffer, and that one buffer is queued on
/// every session: for a small game message, copying its payload once beats handing the kernel
/// a separate prefix and payload for every recipient.
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
    type Worker = ();
    type Session = ();

    fn on_connect(&self, cx: Context<'_, Self>) {
        self.everyone.insert(cx.session.clone());
    }

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let payload = frame.payload();
        let Some(header) = Header::for_payload(frame.id(), SENDER_ID_LEN + payload.len()) else {
            // Unreachable when max_frame <= BROADCAST_MAX_FRAME, which the CLI enforces.
            cx.session.close("frame too large to relay");
            return;
        };
        let relay = SendBuffer::build(usize::from(header.size), |b| {
            b.put_slice(&header.to_bytes());
            b.put_u64_le(cx.session.id().get());
            b.put_slice(payload);
        });
        debug_assert_eq!(relay.len(), HEADER_LEN + SENDER_ID_LEN + payload.len());
        self.everyone.broadcast(&relay);
    }
}
