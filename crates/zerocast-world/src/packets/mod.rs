//! The world protocol (docs/PROTOCOL.md, "World protocol"): client-to-server packets
//! (`0x01xx`) and server-to-client packets (`0x02xx`). All fields are little-endian; no
//! client packet carries the sender's identity: the server knows it from the session.
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
    /// [`OpenChannel`](crate::packets::OpenChannel) to a server that serves no datagrams.
    pub const NO_CHANNEL: u8 = 5;
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

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{Attack, Chat, ChatText, Join, Move, OpenChannel, Ping};
pub use server::{
    goodbye, Attacked, ChannelOffer, ChatFrom, ChatLine, Entered, Goodbye, GoodbyeText, Left,
    Moved, Pong, Rejected, Welcome, MAX_GOODBYE,
};
