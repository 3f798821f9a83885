//! Typed packets, decoded in place, and a router that dispatches frames to them by packet id.
//! Sans-IO: nothing here touches a socket.
//!
//! - A [`FixedPacket`] has a fixed little-endian layout with no alignment requirement (fields
//!   are `zerocopy` byte-order types). Decoding is a size-checked reinterpretation of the
//!   payload where it lies in the receive buffer, never an unchecked cast and never a copy;
//!   encoding writes the header and the bytes once into a pooled [`SendBuffer`].
//! - A [`VarPacket`] has a variable part (chat text): its view borrows from the frame, and text
//!   is validated as UTF-8.
//! - A [`Router`] maps ids to handlers. An unknown id, a wrong length or invalid text is a
//!   [`PacketError`]; a server closes the offending session with it as the reason, touching
//!   no other session:
//!
//!   ```ignore
//!   if let Err(e) = router.dispatch(session, frame.id(), frame.payload()) {
//!       session.close_for_packet(e); // CloseReason::Packet, logged at info
//!   }
//!   ```

use bytes::BufMut;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::buffer::SendBuffer;
use crate::frame::{Header, HEADER_LEN};

/// Why a frame is not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// No handler is registered for this id.
    #[error("unknown packet id {id:#06x}")]
    UnknownId {
        /// The frame's id.
        id: u16,
    },
    /// A fixed packet's payload has the wrong size.
    #[error("packet {id:#06x} has {got} payload bytes, expected {expected}")]
    WrongLength {
        /// The packet id.
        id: u16,
        /// The packet's size.
        expected: usize,
        /// The payload's size.
        got: usize,
    },
    /// A variable packet's payload is shorter than its fixed part.
    #[error("packet {id:#06x} has {got} payload bytes, less than its {min}-byte fixed part")]
    TooShort {
        /// The packet id.
        id: u16,
        /// Size of the fixed part.
        min: usize,
        /// The payload's size.
        got: usize,
    },
    /// Text that is not UTF-8.
    #[error("packet {id:#06x} carries text that is not UTF-8")]
    BadUtf8 {
        /// The packet id.
        id: u16,
    },
    /// A field value the packet's rules forbid.
    #[error("packet {id:#06x}: {what}")]
    Invalid {
        /// The packet id.
        id: u16,
        /// What is wrong.
        what: &'static str,
    },
}

/// A packet with a fixed layout, read in place from the payload.
///
/// Derive `FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned` on a `#[repr(C)]` struct of
/// `zerocopy` byte-order fields (`little_endian::F32`, `U64`, ...) and `u8`s: every bit
/// pattern is then a valid value, there is no padding and no alignment requirement, which the
/// derives check at compile time.
pub trait FixedPacket: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned {
    /// The packet id in the frame header.
    const ID: u16;

    /// Views `payload` as this packet, in place. Fails unless the payload is exactly
    /// `size_of::<Self>()` bytes.
    fn decode(payload: &[u8]) -> Result<&Self, PacketError>
    where
        Self: Sized,
    {
        Self::ref_from_bytes(payload).map_err(|_| PacketError::WrongLength {
            id: Self::ID,
            expected: std::mem::size_of::<Self>(),
            got: payload.len(),
        })
    }

    /// Appends the whole frame (header and packet) to `out`: for laying many packets out in
    /// one buffer.
    fn encode_into(&self, out: &mut impl BufMut)
    where
        Self: Sized,
    {
        let header = Header::for_payload(Self::ID, std::mem::size_of::<Self>())
            .expect("a fixed packet is far smaller than a frame");
        out.put_slice(&header.to_bytes());
        out.put_slice(self.as_bytes());
    }

    /// The frame's length on the wire, header included.
    fn frame_len() -> usize
    where
        Self: Sized,
    {
        HEADER_LEN + std::mem::size_of::<Self>()
    }

    /// The whole frame (header and packet), written once into a pooled buffer.
    fn encode(&self) -> SendBuffer
    where
        Self: Sized,
    {
        let size = HEADER_LEN + std::mem::size_of::<Self>();
        let header = Header::for_payload(Self::ID, std::mem::size_of::<Self>())
            .expect("a fixed packet is far smaller than a frame");
        SendBuffer::build(size, |b| {
            b.put_slice(&header.to_bytes());
            b.put_slice(self.as_bytes());
        })
    }
}

/// A packet with a variable part, decoded into a view that borrows from the frame.
pub trait VarPacket: 'static {
    /// The packet id in the frame header.
    const ID: u16;
    /// The decoded view.
    type View<'a>;
    /// Decodes `payload`, borrowing from it.
    fn decode(payload: &[u8]) -> Result<Self::View<'_>, PacketError>;
}

type Route<C> = Box<dyn Fn(&C, &[u8]) -> Result<(), PacketError> + Send + Sync>;

/// Dispatches frames to typed handlers by packet id. `C` is what handlers get besides the
/// packet: a [`Session`](crate::Session) in a server, anything in a test.
///
/// ```
/// use zerocast::packet::{FixedPacket, Router};
/// use zerocopy::little_endian::U64;
/// use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};
///
/// /// A packet with one field, read in place.
/// #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
/// #[repr(C)]
/// struct Hit {
///     target: U64,
/// }
///
/// impl FixedPacket for Hit {
///     const ID: u16 = 0x0103;
/// }
///
/// let router: Router<Vec<u64>> = Router::new().fixed(|hits: &Vec<u64>, h: &Hit| {
///     assert_eq!(hits, &[7]);
///     assert_eq!(h.target.get(), 42);
///     Ok(())
/// });
/// let frame = Hit { target: U64::new(42) }.encode();
/// router.dispatch(&vec![7], Hit::ID, &frame.as_bytes()[4..]).unwrap();
/// assert!(router.dispatch(&vec![7], 0x7777, &[]).is_err());
/// ```
pub struct Router<C> {
    /// Indexed by packet id.
    routes: Vec<Option<Route<C>>>,
}

impl<C> Default for Router<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> Router<C> {
    /// A router with no route: every id is unknown.
    pub fn new() -> Self {
        Self { routes: Vec::new() }
    }

    fn route(mut self, id: u16, route: Route<C>) -> Self {
        let i = usize::from(id);
        if self.routes.len() <= i {
            self.routes.resize_with(i + 1, || None);
        }
        assert!(
            self.routes[i].is_none(),
            "two handlers registered for packet id {id:#06x}"
        );
        self.routes[i] = Some(route);
        self
    }

    /// Routes `P::ID` to `handler`, with the packet viewed in place.
    ///
    /// # Panics
    /// If the id already has a handler (a programming error, found at start-up).
    pub fn fixed<P: FixedPacket>(
        self,
        handler: impl Fn(&C, &P) -> Result<(), PacketError> + Send + Sync + 'static,
    ) -> Self {
        self.route(
            P::ID,
            Box::new(move |c, payload| handler(c, P::decode(payload)?)),
        )
    }

    /// Routes `P::ID` to `handler`, with the packet's view borrowing from the frame.
    ///
    /// # Panics
    /// If the id already has a handler.
    pub fn var<P: VarPacket>(
        self,
        handler: impl for<'a> Fn(&C, P::View<'a>) -> Result<(), PacketError> + Send + Sync + 'static,
    ) -> Self {
        self.route(
            P::ID,
            Box::new(move |c, payload| handler(c, P::decode(payload)?)),
        )
    }

    /// Decodes `payload` as packet `id` and runs its handler.
    ///
    /// # Errors
    /// An unknown id, a malformed payload, or whatever the handler rejects.
    pub fn dispatch(&self, ctx: &C, id: u16, payload: &[u8]) -> Result<(), PacketError> {
        match self.routes.get(usize::from(id)) {
            Some(Some(route)) => route(ctx, payload),
            _ => Err(PacketError::UnknownId { id }),
        }
    }
}
