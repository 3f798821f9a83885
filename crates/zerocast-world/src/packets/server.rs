//! What the server sends.

use bytes::BufMut;
use zerocopy::little_endian::{F32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use zerocast::frame::{Header, HEADER_LEN};
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::SendBuffer;

use super::{Chat, ChatText, MAX_CHAT};

/// `0x0201`: the answer to [`Join`](crate::packets::Join): the player's id (assigned by the server), where it
/// spawned, and the world's rules.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Welcome {
    /// The player's id, as other players' packets name it.
    pub id: U64,
    /// Spawn position.
    pub x: F32,
    /// Spawn position.
    pub y: F32,
    /// Spawn position.
    pub z: F32,
    /// Positions run from 0 to this on every axis.
    pub world_size: F32,
    /// Width of an area-of-interest cell: players see each other within one cell.
    pub cell_size: F32,
    /// Fastest allowed movement, units per second.
    pub max_speed: F32,
    /// The world's tick in milliseconds: events reach clients once per tick.
    pub tick_ms: U16,
}
fixed_packet!(Welcome, 0x0201);

/// `0x0202`: a player in range moved.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Moved {
    /// Who moved.
    pub id: U64,
    /// New position.
    pub x: F32,
    /// New position.
    pub y: F32,
    /// New position.
    pub z: F32,
    /// Its speed.
    pub velocity: F32,
}
fixed_packet!(Moved, 0x0202);

/// `0x0203`: a player came into range (or was in range when this player joined).
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Entered {
    /// Who.
    pub id: U64,
    /// Where.
    pub x: F32,
    /// Where.
    pub y: F32,
    /// Where.
    pub z: F32,
}
fixed_packet!(Entered, 0x0203);

/// `0x0204`: a player went out of range or left the world.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Left {
    /// Who.
    pub id: U64,
}
fixed_packet!(Left, 0x0204);

/// `0x0205`: a player attacked another; sent to the players in range of the target.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Attacked {
    /// Who attacked.
    pub attacker: U64,
    /// Who was attacked.
    pub target: U64,
}
fixed_packet!(Attacked, 0x0205);

/// `0x0207`: the server refused a packet (see [`reject`](crate::packets::reject)); the session stays open. For a
/// refused move the position is where the server keeps the player: the client snaps back.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Rejected {
    /// The refused packet's id.
    pub packet: U16,
    /// A [`reject`](crate::packets::reject) code.
    pub reason: u8,
    /// The player's authoritative position.
    pub x: F32,
    /// The player's authoritative position.
    pub y: F32,
    /// The player's authoritative position.
    pub z: F32,
}
fixed_packet!(Rejected, 0x0207);

/// `0x020A`: the answer to [`OpenChannel`](crate::packets::OpenChannel): what datagrams need
/// (`zerocast::datagram::Offer`, docs/PROTOCOL.md "Datagrams").
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ChannelOffer {
    /// Names the session in every datagram.
    pub token: U64,
    /// Keys the datagrams' tags.
    pub key: [u8; 16],
    /// The server's datagram port (on the address the client reached over TCP).
    pub port: U16,
}
fixed_packet!(ChannelOffer, 0x020A);

/// `0x0208`: the answer to a [`Ping`](crate::packets::Ping).
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Pong {
    /// The ping's nonce.
    pub nonce: U32,
}
fixed_packet!(Pong, 0x0208);

/// Why the server closed a session ([`GoodbyeText::reason`]).
pub mod goodbye {
    /// The byte stream broke the framing (a size below 4 or above the maximum).
    pub const PROTOCOL: u8 = 1;
    /// A frame was not a valid packet (unknown id, wrong length, bad text, a forbidden value).
    pub const BAD_PACKET: u8 = 2;
    /// No complete frame within the first-frame deadline (10 s after connecting).
    pub const FIRST_FRAME_TIMEOUT: u8 = 3;
    /// No frame for the idle timeout (60 s): send [`Ping`](crate::packets::Ping) when quiet.
    pub const IDLE_TIMEOUT: u8 = 4;
    /// The server is shutting down.
    pub const SHUTDOWN: u8 = 5;
    /// The server is at its connection limit.
    pub const FULL: u8 = 6;
    /// Anything else the server closed the session for.
    pub const OTHER: u8 = 7;
}

/// `0x0209`: the last packet before the server closes the session: a [`goodbye`] code, then
/// a UTF-8 explanation (at most 200 bytes, for logs; the code is what programs read).
pub struct Goodbye;

/// A decoded [`Goodbye`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoodbyeText<'a> {
    /// A [`goodbye`] code.
    pub reason: u8,
    /// The explanation.
    pub text: &'a str,
}

/// Longest explanation in a [`Goodbye`], in bytes.
pub const MAX_GOODBYE: usize = 200;

impl VarPacket for Goodbye {
    const ID: u16 = 0x0209;
    type View<'a> = GoodbyeText<'a>;

    fn decode(payload: &[u8]) -> Result<GoodbyeText<'_>, PacketError> {
        let Some((&reason, text)) = payload.split_first() else {
            return Err(PacketError::TooShort {
                id: Self::ID,
                min: 1,
                got: payload.len(),
            });
        };
        let text = std::str::from_utf8(text).map_err(|_| PacketError::BadUtf8 { id: Self::ID })?;
        Ok(GoodbyeText { reason, text })
    }
}

impl Goodbye {
    /// The frame for `reason`, with `text` cut (at a character boundary) to [`MAX_GOODBYE`].
    pub fn encode(reason: u8, text: &str) -> SendBuffer {
        let mut end = text.len().min(MAX_GOODBYE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        let header = Header::for_payload(Self::ID, 1 + text.len()).expect("at most 201 bytes");
        SendBuffer::build(HEADER_LEN + 1 + text.len(), |b| {
            b.put_slice(&header.to_bytes());
            b.put_u8(reason);
            b.put_slice(text.as_bytes());
        })
    }
}

/// `0x0206`: a chat line relayed from a player: its id, then the [`Chat`] payload as the
/// player sent it (channel byte and text).
pub struct ChatFrom;

/// A decoded [`ChatFrom`], borrowing its text from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatLine<'a> {
    /// Who said it.
    pub from: u64,
    /// The line.
    pub chat: ChatText<'a>,
}

impl VarPacket for ChatFrom {
    const ID: u16 = 0x0206;
    type View<'a> = ChatLine<'a>;

    fn decode(payload: &[u8]) -> Result<ChatLine<'_>, PacketError> {
        let Some((from, rest)) = payload.split_first_chunk::<8>() else {
            return Err(PacketError::TooShort {
                id: Self::ID,
                min: 9,
                got: payload.len(),
            });
        };
        let chat = Chat::decode(rest).map_err(|e| match e {
            PacketError::TooShort { got, .. } => PacketError::TooShort {
                id: Self::ID,
                min: 9,
                got: got + 8,
            },
            PacketError::BadUtf8 { .. } => PacketError::BadUtf8 { id: Self::ID },
            PacketError::Invalid { what, .. } => PacketError::Invalid { id: Self::ID, what },
            other => other,
        })?;
        Ok(ChatLine {
            from: u64::from_le_bytes(*from),
            chat,
        })
    }
}

impl ChatFrom {
    /// Appends the whole relayed frame to `out`: the header, `from`, then `chat` (the
    /// [`Chat`] payload as the player sent it, channel byte included).
    ///
    /// # Panics
    /// If `chat` is longer than a chat payload may be (a decoded [`Chat`] never is).
    pub fn encode_into(out: &mut impl BufMut, from: u64, chat: &[u8]) {
        assert!(chat.len() <= 1 + MAX_CHAT, "chat payload too long");
        let header = Header::for_payload(Self::ID, 8 + chat.len()).expect("at most 525 bytes");
        out.put_slice(&header.to_bytes());
        out.put_u64_le(from);
        out.put_slice(chat);
    }

    /// The header and sender id of a relayed line whose [`Chat`] payload (`chat_len` bytes,
    /// channel byte included) follows in a second buffer: the server relays the received
    /// payload by reference instead of copying it. `None` if the payload is too long.
    pub fn prefix(from: u64, chat_len: usize) -> Option<SendBuffer> {
        if chat_len > 1 + MAX_CHAT {
            return None;
        }
        let header = Header::for_payload(Self::ID, 8 + chat_len)?;
        Some(SendBuffer::build(HEADER_LEN + 8, |b| {
            b.put_slice(&header.to_bytes());
            b.put_u64_le(from);
        }))
    }
}
