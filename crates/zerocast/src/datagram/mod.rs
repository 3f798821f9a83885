//! The unreliable channel beside a TCP session: datagrams for what a lost packet may skip
//! (positions: the next one replaces it), sans-IO.
//!
//! A session opens its channel ([`Session::open_datagrams`](crate::Session::open_datagrams)):
//! the application hands the client the [`Offer`] over TCP (a random token, a secret key and
//! the port of the worker's datagram socket). The client's datagrams carry the token, a
//! sequence number and an authentication tag keyed with the secret ([`wire`]); the server
//! binds the datagram's source address to the session, follows it when it changes (NAT
//! rebinding) on a newer sequence number, and drops the stale, the forged, the malformed
//! and a flood, counting each. The frames inside are the protocol's, delivered to the handler
//! as frames of that session ([`Frame::is_datagram`](crate::Frame::is_datagram)).
//!
//! The server's datagrams carry the channel's own sequence number before the frames, so a
//! client keeps the newest. They go out in `sendmmsg` batches at the end of a turn; a
//! datagram larger than the payload limit is refused, never fragmented.

pub(crate) mod channel;
pub mod wire;

pub use channel::DatagramError;
pub use wire::{Offer, MAX_PAYLOAD};
