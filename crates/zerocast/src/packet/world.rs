//! The world protocol's client-to-server packets (docs/PROTOCOL.md, "World protocol"). All
//! fields are little-endian; no packet carries the sender's identity: the server knows it from
//! the session.

use bytes::BufMut;
use zerocopy::little_endian::{F32, U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{FixedPacket, PacketError, VarPacket};
use crate::frame::{Header, HEADER_LEN};
use crate::SendBuffer;

/// Longest chat text in bytes.
pub const MAX_CHAT: usize = 512;

/// Chat channels.
pub mod channel {
    /// Players in range.
    pub const NEARBY: u8 = 0;
    /// Everyone.
    pub const GLOBAL: u8 = 1;
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

impl FixedPacket for Join {
    const ID: u16 = 0x0101;
}

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

impl FixedPacket for Move {
    const ID: u16 = 0x0102;
}

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

impl FixedPacket for Attack {
    const ID: u16 = 0x0103;
}

impl Attack {
    /// An attack on `target`.
    pub fn new(target: u64) -> Self {
        Self {
            target: U64::new(target),
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
