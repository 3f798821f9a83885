//! The world bots' datagram channel (`zerocast load world --datagrams`): after its welcome a
//! bot opens the channel, then moves by datagram from a socket of its own (as a game client
//! would), and the moves of others reach it by datagram. The engine's sessions stay the
//! bots' streams; one thread receives every bot's datagrams.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token};
use zerocast::datagram::wire::{client_datagram, parse_server_datagram};
use zerocast::datagram::Offer;
use zerocast::packet::FixedPacket;
use zerocast_world::packets::Moved;

use crate::clock::now_ns;
use crate::handler::LoadHandler;

/// One bot's channel.
struct Channel {
    sock: UdpSocket,
    offer: Offer,
    seq: u32,
}

/// Every bot's channel, by bot index, and the poll their receiver waits on.
pub(crate) struct Datagrams {
    registry: Registry,
    poll: Mutex<Option<Poll>>,
    chans: Vec<Mutex<Option<Channel>>>,
}

impl Datagrams {
    pub(crate) fn new(bots: usize) -> io::Result<Self> {
        let poll = Poll::new()?;
        Ok(Self {
            registry: poll.registry().try_clone()?,
            poll: Mutex::new(Some(poll)),
            chans: (0..bots).map(|_| Mutex::new(None)).collect(),
        })
    }

    /// Bot `i` was offered a channel by the server at `server`: its socket, connected there.
    pub(crate) fn open(&self, i: usize, server: SocketAddr, offer: Offer) -> io::Result<()> {
        let any: IpAddr = match server.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let mut sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
        sock.connect(server)?;
        self.registry
            .register(&mut sock, Token(i), Interest::READABLE)?;
        if let Some(slot) = self.chans.get(i) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Channel {
                sock,
                offer,
                seq: 0,
            });
        }
        Ok(())
    }

    /// Sends `frames` by bot `i`'s channel: false if it has none (yet), or the socket would
    /// not take it now.
    pub(crate) fn send(&self, i: usize, frames: &[u8]) -> bool {
        let Some(slot) = self.chans.get(i) else {
            return false;
        };
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = g.as_mut() else {
            return false;
        };
        c.seq = c.seq.wrapping_add(1);
        let d = client_datagram(&c.offer, c.seq, frames);
        c.sock.send(&d).is_ok()
    }

    /// Receives every bot's datagrams until `handler` stops, handing each `Moved` to its bot.
    pub(crate) fn receive(handler: Arc<LoadHandler>) {
        let Some(d) = handler.bots.as_ref().and_then(|b| b.datagrams()) else {
            return;
        };
        let Some(mut poll) = d.poll.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut events = Events::with_capacity(1024);
        let mut buf = [0u8; 2048];
        while !handler.done.load(Ordering::Acquire) {
            if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "datagram poll failed");
                    return;
                }
            }
            for ev in &events {
                let i = ev.token().0;
                let Some(slot) = d.chans.get(i) else { continue };
                loop {
                    let n = {
                        let g = slot.lock().unwrap_or_else(|e| e.into_inner());
                        match g.as_ref().map(|c| c.sock.recv(&mut buf)) {
                            Some(Ok(n)) => n,
                            _ => break,
                        }
                    };
                    let now = now_ns();
                    handler.last_receive.store(now, Ordering::Relaxed);
                    handler.on_datagram(i, &buf[..n], now);
                }
            }
        }
    }
}

/// The `Moved` frames of a server datagram, or `None` if it holds anything else.
pub(crate) fn moves(d: &[u8]) -> Option<Vec<&Moved>> {
    let (_, mut frames) = parse_server_datagram(d)?;
    let mut out = Vec::new();
    while !frames.is_empty() {
        let size = usize::from(u16::from_le_bytes([*frames.first()?, *frames.get(1)?]));
        let id = u16::from_le_bytes([*frames.get(2)?, *frames.get(3)?]);
        if id != Moved::ID || size < 4 || size > frames.len() {
            return None;
        }
        out.push(Moved::decode(&frames[4..size]).ok()?);
        frames = &frames[size..];
    }
    Some(out)
}
