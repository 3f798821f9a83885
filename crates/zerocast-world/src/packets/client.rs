//! What clients send.

use bytes::BufMut;
use zerocopy::little_endian::{F32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use zerocast::frame::{Header, HEADER_LEN};
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::SendBuffer;

use super::{channel, MAX_CHAT};

/// `0x0101`: enter the world. The server answers with the player's id.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Join {
    /// Protocol version the client speaks.
    pub protocol: U16,
}

fixed_packet!(Join, 0x0101);

impl Join {
    /// A join for protocol `version`.
    pub fn new(version: u16) -> Self {
        Self {
            protocol: U16::new(version),
        }
    }
}

/// `0x0102`: the player's new position and speed.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Move {
    /// Position.
    pub x: F32,
    /// Position.
    pub y: F32,
    /// Position.
    pub z: F32,
    /// Speed in units per second.
    pub velocity: F32,
}

fixed_packet!(Move, 0x0102);

impl Move {
    /// A move to `(x, y, z)` at `velocity`.
    pub fn new(x: f32, y: f32, z: f32, velocity: f32) -> Self {
        Self {
            x: F32::new(x),
            y: F32::new(y),
            z: F32::new(z),
            velocity: F32::new(velocity),
        }
    }

    /// Rejects NaN and infinite values; the world checks speed and bounds.
    ///
    /// # Errors
    /// [`PacketError::Invalid`] naming the problem.
    pub fn check(&self) -> Result<(), PacketError> {
        let all = [self.x, self.y, self.z, self.velocity];
        if all.iter().all(|v| v.get().is_finite()) {
            Ok(())
        } else {
            Err(PacketError::Invalid {
                id: Self::ID,
                what: "coordinates and velocity must be finite",
            })
        }
    }
}

/// `0x0103`: attack another player.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Attack {
    /// The target's player id.
    pub target: U64,
}

fixed_packet!(Attack, 0x0103);

impl Attack {
    /// An attack on `target`.
    pub fn new(target: u64) -> Self {
        Self {
            target: U64::new(target),
        }
    }
}

/// `0x0105`: a heartbeat. Any packet keeps a session alive; a player with nothing to say
/// sends this at least every 30 s (the idle timeout is 60 s). The server answers with
/// [`Pong`](crate::packets::Pong) carrying the same nonce, in its next tick: a client can time its round trip.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ping {
    /// Any value; echoed in the [`Pong`](crate::packets::Pong).
    pub nonce: U32,
}

fixed_packet!(Ping, 0x0105);

impl Ping {
    /// A ping carrying `nonce`.
    pub fn new(nonce: u32) -> Self {
        Self {
            nonce: U32::new(nonce),
        }
    }
}

/// `0x0106`: open the unreliable channel. The server answers with
/// [`ChannelOffer`](crate::packets::ChannelOffer), or [`Rejected`](crate::packets::Rejected)
/// ([`reject::NO_CHANNEL`](crate::packets::reject::NO_CHANNEL)) if it serves no datagrams.
/// Once the server has a datagram from the client, the moves of others reach it by datagram
/// (newest wins, every position resent each second), everything else still on the stream.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct OpenChannel {
    /// 1.
    pub version: u8,
}

fixed_packet!(OpenChannel, 0x0106);

/// `0x0104`: a chat line: one channel byte, then UTF-8 text of at most [`MAX_CHAT`] bytes.
pub struct Chat;

/// A decoded [`Chat`], borrowing its text from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatText<'a> {
    /// [`channel::NEARBY`] or [`channel::GLOBAL`].
    pub channel: u8,
    /// The text, validated as UTF-8.
    pub text: &'a str,
}

impl VarPacket for Chat {
    const ID: u16 = 0x0104;
    type View<'a> = ChatText<'a>;

    fn decode(payload: &[u8]) -> Result<ChatText<'_>, PacketError> {
        let id = Self::ID;
        let Some((&channel, text)) = payload.split_first() else {
            return Err(PacketError::TooShort {
                id,
                min: 1,
                got: payload.len(),
            });
        };
        if channel > channel::GLOBAL {
            return Err(PacketError::Invalid {
                id,
                what: "unknown chat channel",
            });
        }
        if text.len() > MAX_CHAT {
            return Err(PacketError::Invalid {
                id,
                what: "chat text longer than 512 bytes",
            });
        }
        let text = std::str::from_utf8(text).map_err(|_| PacketError::BadUtf8 { id })?;
        Ok(ChatText { channel, text })
    }
}

impl ChatText<'_> {
    /// The whole frame, written once.
    ///
    /// # Errors
    /// If the text is longer than [`MAX_CHAT`] or the channel unknown.
    pub fn encode(&self) -> Result<SendBuffer, PacketError> {
        let id = Chat::ID;
        if self.text.len() > MAX_CHAT || self.channel > channel::GLOBAL {
            return Err(PacketError::Invalid {
                id,
                what: "chat text too long or unknown channel",
            });
        }
        let payload = 1 + self.text.len();
        let header = Header::for_payload(id, payload).expect("at most 513 bytes");
        Ok(SendBuffer::build(HEADER_LEN + payload, |b| {
            b.put_slice(&header.to_bytes());
            b.put_u8(self.channel);
            b.put_slice(self.text.as_bytes());
        }))
    }
}
