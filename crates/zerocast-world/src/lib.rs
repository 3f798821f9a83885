//! An MMO world on the zerocast engine.
//!
//! - [`packets`]: the world protocol (docs/PROTOCOL.md, "World protocol"), typed packets read
//!   in place;
//! - [`aoi`]: the area-of-interest grid (who is in which cell);
//! - [`rules`] and [`core`]: the game, sans-IO (who may move where; each tick's events laid
//!   out per cell and delivered as slices);
//! - [`World`]: the server, a [`zerocast::Handler`] running a shard of the world per worker;
//! - [`cluster`]: one world across many processes and machines, through a NATS server;
//! - [`lockorder`]: named mutexes whose acquisition order is checked in debug builds.

pub mod aoi;
pub mod cluster;
pub mod core;
pub mod lockorder;
pub mod packets;
pub mod rules;
mod server;

pub use self::core::{Core, Counts, Deliver, Part, Position, TickBatch};
pub use rules::{Body, WorldConfig};
pub use server::{Shard, World, WorldSnapshot, SPECTATE_EVERY};

/// The README's examples (the engine's and the world's), compiled and run as doc tests here,
/// where both crates are in scope.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Fuzzing entry point (used by `fuzz/` and by the corpus replay test): cuts `data` into frames
/// and dispatches each through a router of every client-to-server world packet whose handlers
/// re-encode what they decoded. Panics only if an invariant breaks: a decoded packet that does
/// not re-encode to its own bytes, or an error that misreports the input.
#[doc(hidden)]
pub fn fuzz_router(data: &[u8]) {
    use crate::packets::{Attack, Chat, ChatText, Join, Move, MAX_CHAT};
    use zerocast::frame::{Decoded, Decoder, LengthPrefixed, HEADER_LEN};
    use zerocast::packet::{FixedPacket, PacketError, Router};
    use zerocast::SendBuffer;
    use zerocopy::IntoBytes;
    fn same(frame: &SendBuffer, payload: &[u8]) -> Result<(), PacketError> {
        assert_eq!(
            &frame.as_bytes()[HEADER_LEN..],
            payload,
            "re-encodes to its bytes"
        );
        Ok(())
    }
    let router: Router<()> = Router::new()
        .fixed(|(), p: &Join| same(&p.encode(), p.as_bytes()))
        .fixed(|(), p: &Move| {
            p.check()?;
            same(&p.encode(), p.as_bytes())
        })
        .fixed(|(), p: &Attack| same(&p.encode(), p.as_bytes()))
        .var::<Chat>(|(), c: ChatText<'_>| {
            assert!(c.text.len() <= MAX_CHAT);
            let frame = c.encode().expect("decoded text fits");
            assert_eq!(&frame.as_bytes()[HEADER_LEN..HEADER_LEN + 1], &[c.channel]);
            assert_eq!(&frame.as_bytes()[HEADER_LEN + 1..], c.text.as_bytes());
            Ok(())
        });
    let decoder = LengthPrefixed::new(LengthPrefixed::MAX);
    let mut stream = data;
    while let Ok(Decoded::Frame { len, header, id }) = decoder.decode(stream) {
        let payload = &stream[header..len];
        match router.dispatch(&(), id, payload) {
            Ok(()) => {}
            Err(PacketError::UnknownId { id: got }) => assert_eq!(got, id),
            Err(PacketError::WrongLength {
                id: got, got: n, ..
            }) => {
                assert_eq!((got, n), (id, payload.len()));
            }
            Err(PacketError::TooShort { got: n, .. }) => assert_eq!(n, payload.len()),
            Err(PacketError::BadUtf8 { id: got } | PacketError::Invalid { id: got, .. }) => {
                assert_eq!(got, id);
            }
        }
        stream = &stream[len..];
    }
}
