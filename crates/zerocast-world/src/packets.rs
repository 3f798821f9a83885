//! The world protocol (docs/PROTOCOL.md, "World protocol"): client-to-server packets
//! (`0x01xx`) and server-to-client packets (`0x02xx`). All fields are little-endian; no
//! client packet carries the sender's identity: the server knows it from the session.

use bytes::BufMut;
use zerocopy::little_endian::{F32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use zerocast::frame::{Header, HEADER_LEN};
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::SendBuffer;

/// Longest chat text in bytes.
pub const MAX_CHAT: usize = 512;

/// The protocol version a [`Join`] must name.
pub const PROTOCOL_VERSION: u16 = 1;

/// Why the server refused a packet without closing the session ([`Rejected::reason`]).
pub mod reject {
    /// The move covers more ground than the maximum speed allows, or claims a higher speed.
    pub const TOO_FAST: u8 = 1;
    /// The position is outside the world.
    pub const OUT_OF_BOUNDS: u8 = 2;
    /// The attack's target is not a player in range.
    pub const NO_TARGET: u8 = 3;
    /// The player sends this packet faster than the server accepts it.
    pub const RATE_LIMITED: u8 = 4;
}

/// Chat channels.
pub mod channel {
    /// Players in range.
    pub const NEARBY: u8 = 0;
    /// Everyone.
    pub const GLOBAL: u8 = 1;
}

macro_rules! fixed_packet {
    ($name:ident, $id:expr) => {
        impl FixedPacket for $name {
            const ID: u16 = $id;
        }
    };
}

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
/// [`Pong`] carrying the same nonce, in its next tick: a client can time its round trip.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ping {
    /// Any value; echoed in the [`Pong`].
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

/// `0x0201`: the answer to [`Join`]: the player's id (assigned by the server), where it
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

/// `0x0207`: the server refused a packet (see [`reject`]); the session stays open. For a
/// refused move the position is where the server keeps the player: the client snaps back.
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Rejected {
    /// The refused packet's id.
    pub packet: U16,
    /// A [`reject`] code.
    pub reason: u8,
    /// The player's authoritative position.
    pub x: F32,
    /// The player's authoritative position.
    pub y: F32,
    /// The player's authoritative position.
    pub z: F32,
}
fixed_packet!(Rejected, 0x0207);

/// `0x0208`: the answer to a [`Ping`].
#[derive(
    Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Pong {
    /// The ping's nonce.
    pub nonce: U32,
}
fixed_packet!(Pong, 0x0208);

/// Why the server closed a session ([`Goodbye::reason`]).
pub mod goodbye {
    /// The byte stream broke the framing (a size below 4 or above the maximum).
    pub const PROTOCOL: u8 = 1;
    /// A frame was not a valid packet (unknown id, wrong length, bad text, a forbidden value).
    pub const BAD_PACKET: u8 = 2;
    /// No complete frame within the first-frame deadline (10 s after connecting).
    pub const FIRST_FRAME_TIMEOUT: u8 = 3;
    /// No frame for the idle timeout (60 s): send [`Ping`](super::Ping) when quiet.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload(buf: &SendBuffer) -> &[u8] {
        &buf.as_bytes()[HEADER_LEN..]
    }

    proptest! {
        #[test]
        fn fixed_packets_round_trip(x: f32, y: f32, z: f32, v: f32, target: u64, version: u16) {
            let m = Move::new(x, y, z, v);
            let frame = m.encode();
            let header = Header::parse(frame.as_bytes()).unwrap();
            prop_assert_eq!((header.id, usize::from(header.size)), (Move::ID, 4 + 16));
            let back = Move::decode(payload(&frame)).unwrap();
            prop_assert_eq!(back.as_bytes(), m.as_bytes());
            prop_assert_eq!(back.check().is_ok(), [x, y, z, v].iter().all(|f| f.is_finite()));

            let a = Attack::new(target);
            prop_assert_eq!(Attack::decode(payload(&a.encode())).unwrap().target.get(), target);
            let j = Join::new(version);
            prop_assert_eq!(Join::decode(payload(&j.encode())).unwrap().protocol.get(), version);
        }

        #[test]
        fn chat_round_trips(text in "\\PC{0,100}", global: bool) {
            let channel = u8::from(global);
            let frame = ChatText { channel, text: &text }.encode().unwrap();
            let back = Chat::decode(payload(&frame)).unwrap();
            prop_assert_eq!(back, ChatText { channel, text: &text });
        }

        #[test]
        fn wrong_lengths_are_reported(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let want = Ok::<usize, PacketError>(16);
            let got = Move::decode(&bytes).map(|m| m.as_bytes().len());
            if bytes.len() == 16 {
                prop_assert_eq!(got, want);
            } else {
                prop_assert_eq!(got, Err(PacketError::WrongLength { id: Move::ID, expected: 16, got: bytes.len() }));
            }
        }
    }

    #[test]
    fn server_packets_round_trip() {
        fn round<P: FixedPacket + std::fmt::Debug + PartialEq>(p: P) {
            let frame = p.encode();
            let header = Header::parse(frame.as_bytes()).unwrap();
            assert_eq!(header.id, P::ID);
            assert_eq!(P::decode(payload(&frame)).unwrap(), &p);
        }
        let f = F32::new;
        round(Welcome {
            id: U64::new(7),
            x: f(1.0),
            y: f(2.0),
            z: f(0.0),
            world_size: f(4000.0),
            cell_size: f(100.0),
            max_speed: f(20.0),
            tick_ms: U16::new(50),
        });
        round(Moved {
            id: U64::new(u64::MAX),
            x: f(-1.5),
            y: f(3.25),
            z: f(0.5),
            velocity: f(9.0),
        });
        round(Entered {
            id: U64::new(3),
            x: f(1.0),
            y: f(1.0),
            z: f(1.0),
        });
        round(Left { id: U64::new(3) });
        round(Attacked {
            attacker: U64::new(1),
            target: U64::new(2),
        });
        round(Rejected {
            packet: U16::new(Move::ID),
            reason: reject::TOO_FAST,
            x: f(1.0),
            y: f(2.0),
            z: f(3.0),
        });
        assert_eq!(std::mem::size_of::<Rejected>(), 15);
    }

    #[test]
    fn a_relayed_chat_line_is_its_prefix_and_the_original_payload() {
        let line = ChatText {
            channel: channel::GLOBAL,
            text: "héllo",
        }
        .encode()
        .unwrap();
        let chat = payload(&line);
        let prefix = ChatFrom::prefix(42, chat.len()).unwrap();
        let mut frame = prefix.as_bytes().to_vec();
        frame.extend_from_slice(chat);
        let header = Header::parse(&frame).unwrap();
        assert_eq!(
            (header.id, usize::from(header.size)),
            (ChatFrom::ID, frame.len())
        );
        let got = ChatFrom::decode(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(got.from, 42);
        assert_eq!(got.chat.text, "héllo");
        assert_eq!(got.chat.channel, channel::GLOBAL);
        assert!(ChatFrom::prefix(1, 2 + MAX_CHAT).is_none());
        assert_eq!(
            ChatFrom::decode(&[1, 2, 3]),
            Err(PacketError::TooShort {
                id: ChatFrom::ID,
                min: 9,
                got: 3
            })
        );
        let mut bad = 5u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&[0, 0xff]);
        assert_eq!(
            ChatFrom::decode(&bad),
            Err(PacketError::BadUtf8 { id: ChatFrom::ID })
        );
    }

    #[test]
    fn decoding_reads_in_place() {
        let frame = Move::new(1.0, 2.0, 3.0, 4.0).encode();
        let bytes = payload(&frame);
        let m = Move::decode(bytes).unwrap();
        // The packet is the payload's own memory, not a copy.
        assert_eq!(std::ptr::from_ref(m).cast::<u8>(), bytes.as_ptr());
        // An odd offset is fine: the layout has no alignment requirement.
        let mut odd = [0u8; 17];
        odd[1..].copy_from_slice(bytes);
        assert_eq!(Move::decode(&odd[1..]).unwrap().y.get(), 2.0);
    }

    #[test]
    fn bad_chat_is_rejected_with_a_reason() {
        let id = Chat::ID;
        assert_eq!(
            Chat::decode(&[]),
            Err(PacketError::TooShort { id, min: 1, got: 0 })
        );
        assert_eq!(
            Chat::decode(&[0, 0xff, 0xfe]),
            Err(PacketError::BadUtf8 { id })
        );
        assert!(matches!(
            Chat::decode(&[9, b'h']),
            Err(PacketError::Invalid { .. })
        ));
        let long = vec![b'a'; MAX_CHAT + 2];
        assert!(matches!(
            Chat::decode(&long),
            Err(PacketError::Invalid { .. })
        ));
        let nan = Move::new(f32::NAN, 0.0, 0.0, 1.0);
        assert!(matches!(nan.check(), Err(PacketError::Invalid { .. })));
        let inf = Move::new(0.0, f32::INFINITY, 0.0, 1.0);
        assert!(matches!(inf.check(), Err(PacketError::Invalid { .. })));
    }
}
