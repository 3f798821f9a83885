//! The datagram formats, for the server and for clients (the load generator, tests, any
//! other language: docs/PROTOCOL.md, "Datagrams").
//!
//! ```text
//!  client -> server   | token u64 | seq u32 | frames ...            | tag u64 |
//!  server -> client   | seq u32   | frames ...                                 |
//! ```
//!
//! Every integer little-endian. `tag` is SipHash-1-3, keyed with the session's 16-byte secret,
//! of everything before it: a datagram with a token but without the key is refused.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// Largest payload (the frames) of one datagram: what fits a 1280-byte IPv6 minimum MTU
/// with the IP, UDP and the channel's headers. Larger sends are refused, never fragmented.
pub const MAX_PAYLOAD: usize = 1200;
/// Bytes around a client datagram's frames.
pub const CLIENT_OVERHEAD: usize = 8 + 4 + 8;
/// Bytes before a server datagram's frames.
pub const SERVER_HEADER: usize = 4;

/// What a client needs to open the channel, sent to it over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Names the session in every datagram.
    pub token: u64,
    /// Keys the datagrams' tags: never sent in a datagram.
    pub key: [u8; 16],
    /// The port of the datagram socket of the worker that owns the session (on the address
    /// the client reached over TCP).
    pub port: u16,
}

impl Offer {
    /// The wire form: token, key, port (26 bytes, little-endian).
    pub fn to_bytes(&self) -> [u8; 26] {
        let mut b = [0u8; 26];
        b[..8].copy_from_slice(&self.token.to_le_bytes());
        b[8..24].copy_from_slice(&self.key);
        b[24..].copy_from_slice(&self.port.to_le_bytes());
        b
    }

    /// Reads [`to_bytes`](Self::to_bytes)'s output.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; 26] = b.get(..26)?.try_into().ok()?;
        Some(Self {
            token: u64::from_le_bytes(b[..8].try_into().ok()?),
            key: b[8..24].try_into().ok()?,
            port: u16::from_le_bytes([b[24], b[25]]),
        })
    }
}

/// The tag of `bytes` under `key`.
pub fn tag(key: &[u8; 16], bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_key(key);
    h.write(bytes);
    h.finish()
}

/// A client datagram carrying `frames`.
pub fn client_datagram(offer: &Offer, seq: u32, frames: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(CLIENT_OVERHEAD + frames.len());
    d.extend_from_slice(&offer.token.to_le_bytes());
    d.extend_from_slice(&seq.to_le_bytes());
    d.extend_from_slice(frames);
    let t = tag(&offer.key, &d);
    d.extend_from_slice(&t.to_le_bytes());
    d
}

/// A client datagram's parts, before its tag is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDatagram<'a> {
    /// The session's token.
    pub token: u64,
    /// The client's sequence number.
    pub seq: u32,
    /// The protocol's frames.
    pub frames: &'a [u8],
    tag: u64,
    signed: &'a [u8],
}

impl<'a> ClientDatagram<'a> {
    /// Splits a received datagram (`None`: too short to be one).
    pub fn parse(d: &'a [u8]) -> Option<Self> {
        if d.len() < CLIENT_OVERHEAD {
            return None;
        }
        let (signed, tag) = d.split_at(d.len() - 8);
        Some(Self {
            token: u64::from_le_bytes(signed[..8].try_into().ok()?),
            seq: u32::from_le_bytes(signed[8..12].try_into().ok()?),
            frames: &signed[12..],
            tag: u64::from_le_bytes(tag.try_into().ok()?),
            signed,
        })
    }

    /// True if it was made with `key`.
    pub fn authentic(&self, key: &[u8; 16]) -> bool {
        tag(key, self.signed) == self.tag
    }
}

/// A server datagram's sequence number and frames (`None`: too short).
pub fn parse_server_datagram(d: &[u8]) -> Option<(u32, &[u8])> {
    let seq = u32::from_le_bytes(d.get(..4)?.try_into().ok()?);
    Some((seq, &d[4..]))
}

/// True if `seq` is newer than `last`, in serial-number arithmetic (wraps after 2^32).
pub fn newer(seq: u32, last: u32) -> bool {
    (seq.wrapping_sub(last) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_datagram_round_trips_and_only_its_key_authenticates_it() {
        let offer = Offer {
            token: 0x1122_3344_5566_7788,
            key: [7; 16],
            port: 7001,
        };
        assert_eq!(Offer::from_bytes(&offer.to_bytes()), Some(offer));
        let d = client_datagram(&offer, 41, b"frames");
        let p = ClientDatagram::parse(&d).unwrap();
        assert_eq!(
            (p.token, p.seq, p.frames),
            (offer.token, 41, &b"frames"[..])
        );
        assert!(p.authentic(&offer.key));
        assert!(!p.authentic(&[8; 16]));
        let mut bent = d.clone();
        bent[13] ^= 1;
        assert!(!ClientDatagram::parse(&bent).unwrap().authentic(&offer.key));
        assert!(ClientDatagram::parse(&d[..CLIENT_OVERHEAD - 1]).is_none());
    }

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        assert!(newer(1, 0));
        assert!(!newer(0, 0));
        assert!(!newer(0, 1));
        assert!(newer(0, u32::MAX));
        assert!(!newer(u32::MAX, 5));
    }
}
