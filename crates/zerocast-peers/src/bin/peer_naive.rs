//! The design zero-copy replaces: every packet is copied into a fresh allocation for every
//! recipient and written with its own send call. One thread on mio (edge-triggered epoll).
//! Correct (partial writes are queued and resumed), just not frugal.
//!
//! `world` mode runs the same game as `zerocast world` (`zerocast_world::Core`: same rules,
//! same area of interest, same tick, same packets), but at each tick copies every packet into
//! a fresh allocation for every recipient and writes each with its own send call.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::SendBuffer;
use zerocast_peers::{announce, frame_size, listener, stop_flag, Mode, PeerArgs, HEADER_LEN};
use zerocast_world::packets::{Attack, Chat, Join, Move, Ping};
use zerocast_world::{Core, Deliver, Part, WorldConfig};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    id: u64,
    inbuf: Vec<u8>,
    outq: VecDeque<Vec<u8>>,
}

impl Conn {
    /// Sends one packet with its own write call; what does not fit is queued.
    fn send_packet(&mut self, packet: Vec<u8>) -> bool {
        if !self.outq.is_empty() {
            self.outq.push_back(packet);
            return true;
        }
        match self.stream.write(&packet) {
            Ok(n) if n == packet.len() => true,
            Ok(n) => {
                self.outq.push_back(packet[n..].to_vec());
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.outq.push_back(packet);
                true
            }
            Err(_) => false,
        }
    }

    fn flush(&mut self) -> bool {
        while let Some(front) = self.outq.front_mut() {
            match self.stream.write(front) {
                Ok(n) if n == front.len() => {
                    self.outq.pop_front();
                }
                Ok(n) => {
                    front.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads everything available and cuts complete frames off the front of the buffer, each
    /// copied into its own Vec. None: the connection is finished (closed or bad header).
    fn read_frames(&mut self, scratch: &mut [u8]) -> Option<Vec<Vec<u8>>> {
        let mut open = true;
        loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        let mut frames = Vec::new();
        while self.inbuf.len() >= HEADER_LEN {
            let size = frame_size(&self.inbuf)?;
            if self.inbuf.len() < size {
                break;
            }
            frames.push(self.inbuf[..size].to_vec());
            self.inbuf.drain(..size);
        }
        (open || !frames.is_empty()).then_some(frames)
    }
}

fn relayed(sender: u64, frame: &[u8]) -> Vec<u8> {
    let size = (frame.len() + 8) as u16;
    let mut p = Vec::with_capacity(frame.len() + 8);
    p.extend_from_slice(&size.to_le_bytes());
    p.extend_from_slice(&frame[2..4]);
    p.extend_from_slice(&sender.to_le_bytes());
    p.extend_from_slice(&frame[HEADER_LEN..]);
    p
}

/// Delivers a tick the naive way: each packet of a player's parts copied into a fresh
/// allocation and written with its own call.
struct SendNow<'a> {
    conns: &'a mut HashMap<Token, Conn>,
    shared: Vec<SendBuffer>,
    dead: Vec<Token>,
}

impl Deliver for SendNow<'_> {
    fn begin(&mut self, shared: &[SendBuffer]) {
        self.shared = shared.to_vec();
    }

    fn player(&mut self, to: u64, parts: &[Part]) {
        let token = Token(to as usize);
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        for p in parts {
            let mut bytes = &self.shared[p.buffer].as_bytes()[p.range.clone()];
            while let Some(size) = (bytes.len() >= HEADER_LEN)
                .then(|| frame_size(bytes))
                .flatten()
            {
                if !c.send_packet(bytes[..size].to_vec()) {
                    self.dead.push(token);
                    return;
                }
                bytes = &bytes[size..];
            }
        }
    }
}

/// Decodes one world frame and plays it.
fn world_frame(core: &mut Core, id: u64, f: &[u8]) -> Result<(), PacketError> {
    let kind = u16::from_le_bytes([f[2], f[3]]);
    let payload = &f[HEADER_LEN..];
    let now = Instant::now();
    match kind {
        Join::ID => core.join(id, Join::decode(payload)?, now),
        Move::ID => core.step(id, Move::decode(payload)?, now),
        Attack::ID => core.attack(id, Attack::decode(payload)?, now),
        Chat::ID => core.chat(id, Chat::decode(payload)?, payload, now),
        Ping::ID => core.ping(id, Ping::decode(payload)?),
        id => Err(PacketError::UnknownId { id }),
    }
}

/// Closes `dead` connections; in world mode their players leave.
fn close_all(conns: &mut HashMap<Token, Conn>, core: &mut Core, dead: Vec<Token>) {
    for t in dead {
        if conns.remove(&t).is_some() {
            core.leave(t.0 as u64);
        }
    }
}

/// Runs a world tick: every player's packets of the tick, a copy and a write each.
fn world_tick(conns: &mut HashMap<Token, Conn>, core: &mut Core, tick: u64) {
    // Over capacity each player is delivered every n-th tick, as in zerocast's world.
    let stride = core.config().delivery_stride(core.players());
    let batch = std::sync::Arc::new(core.end_tick(tick));
    let mut out = SendNow {
        conns,
        shared: Vec::new(),
        dead: Vec::new(),
    };
    core.deliver(batch, &[], stride, &mut out);
    let dead = out.dead;
    close_all(conns, core, dead);
}

fn main() -> anyhow::Result<()> {
    let args = PeerArgs::parse();
    let stop = stop_flag()?;
    let std_listener = listener(args.listen)?;
    let mut listener = TcpListener::from_std(std_listener.try_clone()?);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    announce(&std_listener)?;

    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = 1u64;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut world = Core::new(WorldConfig::default(), 0);
    let period = world.config().tick;
    let start = Instant::now();
    let mut tick = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + period * tick as u32;
        let now = Instant::now();
        if args.mode == Mode::World && now >= due {
            world_tick(&mut conns, &mut world, tick);
            // Missed ticks are skipped, as the engine does.
            let elapsed = now.duration_since(start).as_nanos() / period.as_nanos().max(1);
            tick = (elapsed as u64 + 1).max(tick + 1);
            continue;
        }
        let mut wait = Duration::from_millis(100);
        if args.mode == Mode::World {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in &events {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let token = Token(next as usize);
                    poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns.insert(
                        token,
                        Conn {
                            stream,
                            id: next,
                            inbuf: Vec::new(),
                            outq: VecDeque::new(),
                        },
                    );
                    next += 1;
                }
                continue;
            }
            let token = ev.token();
            let Some(conn) = conns.get_mut(&token) else {
                continue;
            };
            let mut alive = !ev.is_writable() || conn.flush();
            let frames = if alive && ev.is_readable() {
                conn.read_frames(&mut scratch)
            } else {
                Some(Vec::new())
            };
            let Some(frames) = frames else {
                close_all(&mut conns, &mut world, vec![token]);
                continue;
            };
            match args.mode {
                Mode::Echo => {
                    for f in frames {
                        alive &= conn.send_packet(f);
                    }
                    if !alive {
                        conns.remove(&token);
                    }
                }
                Mode::Broadcast => {
                    let sender = conn.id;
                    let mut dead = Vec::new();
                    for f in &frames {
                        for (t, c) in conns.iter_mut() {
                            // A fresh copy per recipient, one write call per packet.
                            if !c.send_packet(relayed(sender, f)) {
                                dead.push(*t);
                            }
                        }
                    }
                    if !alive {
                        dead.push(token);
                    }
                    for t in dead {
                        conns.remove(&t);
                    }
                }
                Mode::World => {
                    let id = conn.id;
                    for f in &frames {
                        // A malformed packet closes its connection, as in zerocast.
                        if world_frame(&mut world, id, f).is_err() {
                            alive = false;
                            break;
                        }
                    }
                    if !alive {
                        close_all(&mut conns, &mut world, vec![token]);
                    }
                }
            }
        }
    }
    Ok(())
}
