//! A worker's datagram channels, sans-IO: tokens and keys handed out, received datagrams
//! checked and bound to their session, and the datagrams queued for the next `sendmmsg`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::ops::Range;

use super::wire::{newer, ClientDatagram, Offer, MAX_PAYLOAD};

/// Why a datagram could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// The engine has no datagram socket ([`Engine::listen_datagrams`](crate::Engine::listen_datagrams)).
    #[error("the engine serves no datagrams")]
    NoEndpoint,
    /// Not called on the worker that owns the session (datagrams are sent from its handler).
    #[error("datagrams are sent from the session's own worker")]
    NotOwner,
    /// The session has not opened its channel, or no datagram from its client has arrived
    /// yet (its address is not known).
    #[error("the session's datagram channel is not bound yet")]
    Unbound,
    /// Larger than [`MAX_PAYLOAD`]: refused, never fragmented.
    #[error("a {len}-byte datagram is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge {
        /// The payload's length.
        len: usize,
    },
}

/// What became of received datagrams, for the worker's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Taken: their frames went to the handler.
    pub(crate) taken: u64,
    /// Shorter than the headers, or frames that do not parse.
    pub(crate) malformed: u64,
    /// A token no session holds.
    pub(crate) unknown: u64,
    /// A known token with a wrong tag (a stolen or guessed token).
    pub(crate) forged: u64,
    /// Not newer than the last taken.
    pub(crate) stale: u64,
    /// Over the channel's rate.
    pub(crate) flood: u64,
    /// Taken from a new address (the client's NAT rebound it).
    pub(crate) rebound: u64,
}

/// One session's channel.
struct Channel {
    slot: u32,
    key: [u8; 16],
    peer: Option<SocketAddr>,
    last_in: Option<u32>,
    next_out: u32,
    /// Flood control: datagrams the channel may still take this second, and which second.
    allowance: u32,
    second: u32,
}

/// A datagram queued to be sent: its channel's sequence number, then a range of the arena.
pub(crate) struct Queued {
    pub(crate) to: SocketAddr,
    pub(crate) seq: [u8; 4],
    pub(crate) payload: Range<usize>,
}

/// A worker's channels and its outgoing datagrams.
///
/// Invariants: `by_token` and `token_of` name the same channels; a queued datagram's range lies
/// in `arena`, which is cleared only with the queue.
pub(crate) struct Endpoint {
    by_token: HashMap<u64, Channel>,
    token_of: HashMap<u32, u64>,
    /// Keys the token and secret generator: SipHash under random keys from the standard
    /// library (seeded from the OS), of a counter.
    secret: std::collections::hash_map::RandomState,
    counter: u64,
    port: u16,
    /// Most datagrams a channel takes per second.
    rate: u32,
    pub(crate) arena: Vec<u8>,
    pub(crate) queued: Vec<Queued>,
    pub(crate) counts: Counts,
}

impl Endpoint {
    /// A worker's endpoint on `port`, taking at most `rate` datagrams a second per channel.
    pub(crate) fn new(port: u16, rate: u32) -> Self {
        Self {
            by_token: HashMap::new(),
            token_of: HashMap::new(),
            secret: std::collections::hash_map::RandomState::new(),
            counter: 0,
            port,
            rate,
            arena: Vec::new(),
            queued: Vec::new(),
            counts: Counts::default(),
        }
    }

    fn random(&mut self) -> u64 {
        self.counter += 1;
        let mut h = self.secret.build_hasher();
        h.write_u64(self.counter);
        h.finish()
    }

    /// Opens the channel of the session in `slot` (or gives its offer again).
    pub(crate) fn open(&mut self, slot: u32) -> Offer {
        if let Some(c) = self.token_of.get(&slot).and_then(|t| self.by_token.get(t)) {
            return Offer {
                token: self.token_of[&slot],
                key: c.key,
                port: self.port,
            };
        }
        let token = loop {
            let t = self.random();
            if !self.by_token.contains_key(&t) {
                break t;
            }
        };
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.random().to_le_bytes());
        key[8..].copy_from_slice(&self.random().to_le_bytes());
        self.by_token.insert(
            token,
            Channel {
                slot,
                key,
                peer: None,
                last_in: None,
                next_out: 0,
                allowance: self.rate,
                second: u32::MAX,
            },
        );
        self.token_of.insert(slot, token);
        Offer {
            token,
            key,
            port: self.port,
        }
    }

    /// The session in `slot` closed: its channel goes.
    pub(crate) fn close(&mut self, slot: u32) {
        if let Some(t) = self.token_of.remove(&slot) {
            self.by_token.remove(&t);
        }
    }

    /// Checks a datagram from `from` at `now_ms`: the session slot it is for and the range of
    /// its frames in `d`, or `None` (counted why).
    pub(crate) fn receive(
        &mut self,
        d: &[u8],
        from: SocketAddr,
        now_ms: u32,
    ) -> Option<(u32, Range<usize>)> {
        let Some(p) = ClientDatagram::parse(d) else {
            self.counts.malformed += 1;
            return None;
        };
        let Some(c) = self.by_token.get_mut(&p.token) else {
            self.counts.unknown += 1;
            return None;
        };
        // The tag first: datagrams forged with a stolen token must not spend the session's
        // allowance (that would let whoever sees a token silence its session).
        if !p.authentic(&c.key) {
            self.counts.forged += 1;
            return None;
        }
        let second = now_ms / 1000;
        if second != c.second {
            c.second = second;
            c.allowance = self.rate;
        }
        if c.allowance == 0 {
            self.counts.flood += 1;
            return None;
        }
        c.allowance -= 1;
        if c.last_in.is_some_and(|last| !newer(p.seq, last)) {
            self.counts.stale += 1;
            return None;
        }
        c.last_in = Some(p.seq);
        if c.peer.is_some_and(|peer| peer != from) {
            self.counts.rebound += 1;
        }
        c.peer = Some(from);
        self.counts.taken += 1;
        Some((c.slot, 12..12 + p.frames.len()))
    }

    /// Queues `payload` for the session in `slot`.
    pub(crate) fn send(&mut self, slot: u32, payload: &[u8]) -> Result<(), DatagramError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DatagramError::TooLarge { len: payload.len() });
        }
        let at = self.arena.len();
        self.arena.extend_from_slice(payload);
        self.queue(slot, at..at + payload.len())
    }

    /// Queues `payload` once for every session of `slots` whose channel is bound: one copy in
    /// the arena, a sequence number per recipient. Returns how many were queued.
    pub(crate) fn send_to_all(
        &mut self,
        slots: impl IntoIterator<Item = u32>,
        payload: &[u8],
    ) -> Result<usize, DatagramError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DatagramError::TooLarge { len: payload.len() });
        }
        let at = self.arena.len();
        self.arena.extend_from_slice(payload);
        let mut n = 0;
        for slot in slots {
            n += usize::from(self.queue(slot, at..at + payload.len()).is_ok());
        }
        Ok(n)
    }

    fn queue(&mut self, slot: u32, payload: Range<usize>) -> Result<(), DatagramError> {
        let c = self
            .token_of
            .get(&slot)
            .and_then(|t| self.by_token.get_mut(t))
            .ok_or(DatagramError::Unbound)?;
        let to = c.peer.ok_or(DatagramError::Unbound)?;
        let seq = c.next_out.to_le_bytes();
        c.next_out = c.next_out.wrapping_add(1);
        self.queued.push(Queued { to, seq, payload });
        Ok(())
    }

    /// The queue was sent (or dropped): the arena is free again.
    pub(crate) fn sent(&mut self) {
        self.queued.clear();
        self.arena.clear();
        if self.arena.capacity() > 1 << 20 {
            self.arena = Vec::new();
        }
    }

    /// Channels open.
    #[cfg(test)]
    fn open_channels(&self) -> usize {
        self.by_token.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datagram::wire::client_datagram;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_datagram_binds_its_session_follows_a_new_address_and_drops_the_stale() {
        let mut e = Endpoint::new(9000, 100);
        let offer = e.open(3);
        assert_eq!(e.open(3), offer, "opening twice gives the same offer");
        assert_eq!(e.send(3, b"x"), Err(DatagramError::Unbound));
        let d = client_datagram(&offer, 10, b"abc");
        assert_eq!(e.receive(&d, addr(1), 0), Some((3, 12..15)));
        assert_eq!(&d[12..15], b"abc");
        e.send(3, b"hello").unwrap();
        assert_eq!(e.queued[0].to, addr(1));
        assert_eq!(e.queued[0].seq, 0u32.to_le_bytes());
        // Stale and replayed: dropped.
        assert_eq!(
            e.receive(&client_datagram(&offer, 9, b""), addr(1), 0),
            None
        );
        assert_eq!(e.receive(&d, addr(1), 0), None);
        assert_eq!(e.counts.stale, 2);
        // Newer from another address: the channel follows it.
        assert!(e
            .receive(&client_datagram(&offer, 11, b""), addr(2), 0)
            .is_some());
        assert_eq!(e.counts.rebound, 1);
        e.send(3, b"again").unwrap();
        assert_eq!(e.queued[1].to, addr(2));
        assert_eq!(e.queued[1].seq, 1u32.to_le_bytes());
        assert_eq!(&e.arena[e.queued[1].payload.clone()], b"again");
        e.close(3);
        assert_eq!(e.open_channels(), 0);
        assert_eq!(
            e.receive(&client_datagram(&offer, 12, b""), addr(2), 0),
            None
        );
        assert_eq!(e.counts.unknown, 1);
    }

    #[test]
    fn forged_short_oversized_and_flooding_datagrams_are_refused_and_counted() {
        let mut e = Endpoint::new(9000, 5);
        let offer = e.open(1);
        let other = e.open(2);
        assert_ne!(offer.token, other.token);
        assert_ne!(offer.key, other.key);
        // The right token with the wrong key: a stolen token.
        let stolen = Offer {
            key: [0; 16],
            ..offer
        };
        assert_eq!(
            e.receive(&client_datagram(&stolen, 1, b""), addr(9), 0),
            None
        );
        assert_eq!(e.counts.forged, 1);
        assert_eq!(e.receive(b"short", addr(9), 0), None);
        assert_eq!(e.counts.malformed, 1);
        // Five a second: the rest of the second is dropped, the next second is served.
        for seq in 2..12 {
            let _ = e.receive(&client_datagram(&offer, seq, b""), addr(1), 500);
        }
        assert_eq!(e.counts.flood, 5, "the forged one spent none of the five");
        assert!(e
            .receive(&client_datagram(&offer, 20, b""), addr(1), 1500)
            .is_some());
        // The other session was never touched.
        assert!(e
            .receive(&client_datagram(&other, 1, b""), addr(2), 500)
            .is_some());
        assert_eq!(
            e.send(1, &[0; MAX_PAYLOAD + 1]),
            Err(DatagramError::TooLarge {
                len: MAX_PAYLOAD + 1
            })
        );
    }

    #[test]
    fn a_datagram_to_many_is_copied_once() {
        let mut e = Endpoint::new(9000, 100);
        for slot in 0..4 {
            let o = e.open(slot);
            e.receive(&client_datagram(&o, 1, b""), addr(slot as u16 + 1), 0);
        }
        e.open(9); // never bound: skipped
        assert_eq!(e.send_to_all([0, 1, 2, 3, 9], b"snapshot"), Ok(4));
        assert_eq!(e.arena.len(), 8);
        assert!(e.queued.iter().all(|q| q.payload == (0..8)));
        e.sent();
        assert!(e.queued.is_empty() && e.arena.is_empty());
    }
}
