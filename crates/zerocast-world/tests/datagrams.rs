//! The world over datagrams through a lossy relay (this kernel has no `netem`): bots open the
//! channel, move by datagram, and see the others' moves by datagram while everything else
//! stays on the stream. The relay drops 5 %, delays and reorders, both ways; every bot's view
//! still converges to where the others really stand, and nothing breaks.

/// The engine's end-to-end helpers, shared rather than copied.
#[path = "../../zerocast/tests/util/mod.rs"]
mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::*;
use zerocast::datagram::wire::{client_datagram, parse_server_datagram};
use zerocast::datagram::Offer;
use zerocast::packet::FixedPacket;
use zerocast::Engine;
use zerocast_world::packets::{
    ChannelOffer, Join, Move, Moved, OpenChannel, Welcome, PROTOCOL_VERSION,
};
use zerocast_world::{World, WorldConfig};

/// A relay between one client and the server: 5 % of datagrams dropped each way, every one
/// delayed 0–15 ms, one in ten 40 ms more (so later ones overtake it).
struct Relay {
    addr: SocketAddr,
    dropped: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr, seed: u64) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let (dropped, held): (Arc<AtomicU64>, Arc<AtomicU64>) = Default::default();
        let stop = Arc::<AtomicBool>::default();
        let (d, h, s) = (Arc::clone(&dropped), Arc::clone(&held), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut rng = seed | 1;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % 1000
            };
            let mut client: Option<SocketAddr> = None;
            let mut queue: Vec<(Instant, SocketAddr, Vec<u8>)> = Vec::new();
            let mut b = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut b) {
                    let to = if from == server {
                        client
                    } else {
                        client = Some(from);
                        Some(server)
                    };
                    if let Some(to) = to {
                        if next() < 50 {
                            d.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let mut delay = Duration::from_millis(next() % 16);
                            if next() < 100 {
                                delay += Duration::from_millis(40);
                                h.fetch_add(1, Ordering::Relaxed);
                            }
                            queue.push((Instant::now() + delay, to, b[..n].to_vec()));
                        }
                    }
                }
                let now = Instant::now();
                queue.retain(|(due, to, bytes)| {
                    let keep = *due > now;
                    if !keep {
                        let _ = sock.send_to(bytes, to);
                    }
                    keep
                });
            }
        });
        Self {
            addr,
            dropped,
            held,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Bot {
    tcp: TcpStream,
    pending: Vec<u8>,
    id: u64,
    pos: [f32; 2],
    udp: UdpSocket,
    offer: Offer,
    relay: Relay,
    seq: u32,
    /// Where it sees each other player, from the newest datagram that named it.
    view: HashMap<u64, (u32, [f32; 2])>,
    moved_by_datagram: u64,
}

impl Bot {
    fn join(addr: SocketAddr, seed: u64) -> Self {
        let mut tcp = connect(addr);
        tcp.write_all(&Join::new(PROTOCOL_VERSION).encode())
            .unwrap();
        let (id, payload) = read_frame(&mut tcp).unwrap();
        assert_eq!(id, Welcome::ID);
        let w = *Welcome::decode(&payload).unwrap();
        tcp.write_all(&OpenChannel { version: 1 }.encode()).unwrap();
        let offer = loop {
            let (id, payload) = read_frame(&mut tcp).unwrap();
            if id == ChannelOffer::ID {
                let o = ChannelOffer::decode(&payload).unwrap();
                break Offer {
                    token: o.token.get(),
                    key: o.key,
                    port: o.port.get(),
                };
            }
        };
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        let relay = Relay::start(SocketAddr::new(addr.ip(), offer.port), seed);
        Self {
            tcp,
            pending: Vec::new(),
            id: w.id.get(),
            pos: [w.x.get(), w.y.get()],
            udp,
            offer,
            relay,
            seq: 0,
            view: HashMap::new(),
            moved_by_datagram: 0,
        }
    }

    fn move_tcp(&mut self, x: f32, y: f32) {
        self.tcp.set_nonblocking(false).unwrap();
        self.tcp
            .write_all(&Move::new(x, y, 0.0, 1.0).encode())
            .unwrap();
        self.tcp.set_nonblocking(true).unwrap();
        self.pos = [x, y];
    }

    fn move_udp(&mut self, x: f32, y: f32) {
        self.seq += 1;
        let d = client_datagram(&self.offer, self.seq, &Move::new(x, y, 0.0, 1.0).encode());
        self.udp.send_to(&d, self.relay.addr).unwrap();
        self.pos = [x, y];
    }

    /// Reads what has arrived: datagrams into the view, the stream drained.
    fn poll(&mut self) {
        let mut b = [0u8; 2048];
        while let Ok(n) = self.udp.recv(&mut b) {
            let (seq, mut frames) = parse_server_datagram(&b[..n]).expect("a server datagram");
            while frames.len() >= 4 {
                let size = usize::from(u16::from_le_bytes([frames[0], frames[1]]));
                let id = u16::from_le_bytes([frames[2], frames[3]]);
                assert_eq!(id, Moved::ID, "only moves come by datagram");
                let m = Moved::decode(&frames[4..size]).unwrap();
                self.moved_by_datagram += 1;
                let e = self.view.entry(m.id.get()).or_insert((0, [f32::NAN; 2]));
                if seq >= e.0 {
                    *e = (seq, [m.x.get(), m.y.get()]);
                }
                frames = &frames[size..];
            }
        }
        let mut chunk = [0u8; 65536];
        while let Ok(n) = self.tcp.read(&mut chunk) {
            if n == 0 {
                panic!("the server closed bot {}", self.id);
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
        self.pending.clear();
    }
}

#[test]
fn views_over_a_lossy_reordering_relay_converge_to_the_true_positions() {
    let world = Arc::new(World::new(WorldConfig {
        size: 300.0,
        cell_size: 100.0,
        max_speed: 1000.0,
        tick: Duration::from_millis(50),
        ..WorldConfig::default()
    }));
    let (engine, addr) = server_with(world.configure(Engine::builder().workers(2)), world.clone());
    engine
        .listen_datagrams("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let mut bots: Vec<Bot> = (0..8)
        .map(|k| Bot::join(addr, 0x9E37_79B9 * (k + 1)))
        .collect();
    // Everyone walks to the middle cell on the stream: from there each sees all the others.
    let mid = 150.0f32;
    for _ in 0..8 {
        for b in &mut bots {
            let [x, y] = b.pos;
            let (dx, dy) = ((mid - x).clamp(-40.0, 40.0), (mid - y).clamp(-40.0, 40.0));
            b.move_tcp(x + dx, y + dy);
            b.poll();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then three seconds of moves by datagram, through the relays, at 10 a second.
    for step in 0..30 {
        for (k, b) in bots.iter_mut().enumerate() {
            let a = (step as f32) * 0.3 + k as f32;
            b.move_udp(mid + 20.0 * a.cos(), mid + 20.0 * a.sin());
            b.poll();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each makes its last move on the stream (whatever the relay lost before, the server has
    // this one): a single `Moved` carries it to each of the others, by datagram, and the
    // relays lose about one in twenty of those. One bot a tick, so that each of the 56 goes in
    // a datagram of its own: without the keyframes, some view is almost surely left stale.
    for k in 0..bots.len() {
        let [x, y] = bots[k].pos;
        bots[k].move_tcp(x + 1.0, y);
        std::thread::sleep(Duration::from_millis(100));
        for b in &mut bots {
            b.poll();
        }
    }
    let truth: HashMap<u64, [f32; 2]> = bots.iter().map(|b| (b.id, b.pos)).collect();
    // A keyframe or two later every view is whole again (without keyframes a stale view
    // would stay stale: the wait is bounded, not timed).
    let sees_truth = |b: &Bot| {
        truth.iter().all(|(&other, &want)| {
            other == b.id
                || b.view.get(&other).is_some_and(|v| {
                    (v.1[0] - want[0]).abs() < 1e-3 && (v.1[1] - want[1]).abs() < 1e-3
                })
        })
    };
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && !bots.iter().all(sees_truth) {
        for b in &mut bots {
            b.poll();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut dropped, mut held) = (0, 0);
    for b in &bots {
        assert!(
            b.moved_by_datagram > 0,
            "bot {} saw moves by datagram",
            b.id
        );
        for (&other, &want) in &truth {
            if other == b.id {
                continue;
            }
            let got = b.view.get(&other).map(|v| v.1);
            assert!(
                got.is_some_and(|g| (g[0] - want[0]).abs() < 1e-3 && (g[1] - want[1]).abs() < 1e-3),
                "bot {} sees {other} at {got:?}, it stands at {want:?}",
                b.id
            );
        }
        dropped += b.relay.dropped.load(Ordering::Relaxed);
        held += b.relay.held.load(Ordering::Relaxed);
    }
    assert!(
        dropped > 0 && held > 0,
        "the relays dropped {dropped} and reordered {held}"
    );
    let m = engine.metrics();
    assert!(m.datagrams_in > 0 && m.datagrams_out > 0, "{m}");
    assert!(
        m.datagram_writes < m.datagrams_out,
        "sendmmsg batched several: {m}"
    );
    assert_eq!(m.protocol_errors, 0, "{m}");
    let s = world.snapshot();
    assert_eq!(s.players, 8, "nobody was disconnected");
    drop(bots);
    assert_no_leaks(&engine);
}
