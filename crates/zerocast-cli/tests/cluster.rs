//! One world across several `zerocast world` processes through a real `nats-server`: moves
//! cross processes by area of interest and nothing out of range arrives, global chat reaches
//! everyone, and the faults: the bus stopped and restarted, a process killed, memory while the
//! bus is away.
//!
//! Needs `nats-server` (Debian: `nats-server`). Without it the tests say so and pass, unless
//! `ZEROCAST_REQUIRE_NATS=1` (set by `.ci/run`, which installs it), where they fail.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{metric_sum, scrape, start_printing, wait_until};
use zerocast::packet::{FixedPacket, VarPacket};
use zerocast_world::packets::{
    channel, ChatFrom, ChatText, Entered, Join, Left, Move, Moved, Ping, Welcome, PROTOCOL_VERSION,
};

/// Generous bounds: every wait ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(20);

fn have_nats() -> bool {
    let ok = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("ZEROCAST_REQUIRE_NATS").as_deref() != Ok("1"),
            "nats-server is required (ZEROCAST_REQUIRE_NATS=1)"
        );
        eprintln!("skipped: no nats-server on this machine (Debian: apt install nats-server)");
    }
    ok
}

/// A `nats-server` on a loopback port, killed when dropped.
struct Nats {
    port: u16,
    child: Option<Child>,
}

impl Nats {
    fn start() -> Self {
        let mut n = Self::absent();
        n.restart();
        n
    }

    /// A port for a server not started yet: bound and released (the server binds it later).
    fn absent() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self { port, child: None }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            wait_until(WAIT, || TcpStream::connect(addr).is_ok()),
            "nats-server listens on {addr}"
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A world process of the cluster, killed when dropped.
struct Process {
    child: Child,
    addr: SocketAddr,
    metrics: String,
}

impl Process {
    /// A 1,000-unit world of 100-unit cells in which players may go anywhere at once.
    fn start(nats: &Nats, world: &str) -> Self {
        Self::start_logging(nats, world, Stdio::null())
    }

    fn start_logging(nats: &Nats, world: &str, stderr: Stdio) -> Self {
        let url = nats.url();
        let args = [
            "world",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--world-size",
            "1000",
            "--max-speed",
            "1000000",
            "--nats",
            &url,
            "--world-name",
            world,
            "--presence-timeout",
            "3",
        ];
        let (child, lines) = start_printing(&args, stderr, &["listening on ", "metrics on "]);
        Self {
            child,
            addr: lines[0].parse().unwrap(),
            metrics: lines[1].clone(),
        }
    }

    fn figure(&self, name: &str) -> f64 {
        metric_sum(&scrape(&self.metrics), name).unwrap_or(-1.0)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every process hears from `others` other processes.
fn until_joined(ps: &[&Process], others: f64) {
    for p in ps {
        assert!(
            wait_until(WAIT, || p.figure("zerocast_world_bus_nodes") == others),
            "process on {} hears from {others} others",
            p.addr
        );
    }
}

/// Every frame a player received: packet id and payload.
type Received = Arc<Mutex<Vec<(u16, Vec<u8>)>>>;

/// A player: a connection and everything it received, read by a thread.
struct Player {
    s: TcpStream,
    id: u64,
    got: Received,
}

impl Player {
    fn join(addr: SocketAddr) -> Self {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&Join::new(PROTOCOL_VERSION).encode()).unwrap();
        let got: Received = Arc::default();
        let mut r = s.try_clone().unwrap();
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut h = [0u8; 4];
            while r.read_exact(&mut h).is_ok() {
                let size = usize::from(u16::from_le_bytes([h[0], h[1]]));
                let id = u16::from_le_bytes([h[2], h[3]]);
                let mut payload = vec![0u8; size.saturating_sub(4)];
                if r.read_exact(&mut payload).is_err() {
                    break;
                }
                sink.lock().unwrap().push((id, payload));
            }
        });
        let mut p = Self { s, id: 0, got };
        assert!(wait_until(WAIT, || p.welcome().is_some()), "welcomed");
        p.id = p.welcome().unwrap();
        p
    }

    fn welcome(&self) -> Option<u64> {
        let got = self.got.lock().unwrap();
        let (_, w) = got.iter().find(|(id, _)| *id == Welcome::ID)?;
        Some(Welcome::decode(w).ok()?.id.get())
    }

    fn go(&mut self, x: f32, y: f32) {
        self.s
            .write_all(&Move::new(x, y, 0.0, 1.0).encode())
            .unwrap();
    }

    fn say(&mut self, text: &str) {
        let line = ChatText {
            channel: channel::GLOBAL,
            text,
        };
        self.s.write_all(&line.encode().unwrap()).unwrap();
        // A heartbeat, so that a quiet test player is not closed for idling.
        self.s
            .write_all(&Ping { nonce: 0.into() }.encode())
            .unwrap();
    }

    /// `(x, y)` of every `Moved` received from `from`.
    fn moves_of(&self, from: u64) -> Vec<(f32, f32)> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(id, _)| *id == Moved::ID)
            .filter_map(|(_, p)| Moved::decode(p).ok())
            .filter(|m| m.id.get() == from)
            .map(|m| (m.x.get(), m.y.get()))
            .collect()
    }

    /// How many frames arrived so far: a mark for [`Player::seen_since`].
    fn mark(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Every player named in a `Moved` or `Entered` received after `mark`.
    fn seen_since(&self, mark: usize) -> HashSet<u64> {
        let got = self.got.lock().unwrap();
        let mut ids = HashSet::new();
        for (id, p) in got.iter().skip(mark) {
            match *id {
                Moved::ID => ids.extend(Moved::decode(p).map(|m| m.id.get())),
                Entered::ID => ids.extend(Entered::decode(p).map(|m| m.id.get())),
                _ => {}
            }
        }
        ids
    }

    fn left(&self, who: u64) -> bool {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(id, _)| *id == Left::ID)
            .any(|(_, p)| Left::decode(p).is_ok_and(|l| l.id.get() == who))
    }

    /// Who said `text` on the global channel.
    fn heard(&self, text: &str) -> HashSet<u64> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(id, _)| *id == ChatFrom::ID)
            .filter_map(|(_, p)| ChatFrom::decode(p).ok())
            .filter(|l| l.chat.text == text)
            .map(|l| l.from)
            .collect()
    }
}

/// Walks `p` a little around `(x, y)` (inside the same cell), `n` steps.
fn pace(ps: &mut [(&mut Player, f32, f32)], n: usize) {
    for i in 0..n {
        for (p, x, y) in ps.iter_mut() {
            let d = (i % 10) as f32;
            p.go(*x + d, *y + d);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cell(x: f32, y: f32) -> (i64, i64) {
    ((x / 100.0).floor() as i64, (y / 100.0).floor() as i64)
}

#[test]
fn three_processes_share_one_world_by_area_of_interest() {
    if !have_nats() {
        return;
    }
    let nats = Nats::start();
    let (a, b, c) = (
        Process::start(&nats, "three"),
        Process::start(&nats, "three"),
        Process::start(&nats, "three"),
    );
    until_joined(&[&a, &b, &c], 2.0);
    let mut pa = Player::join(a.addr);
    let mut pb = Player::join(b.addr);
    let mut pc = Player::join(c.addr);
    // b's second player, two cells east of a: out of range. b's events in two cells of one
    // zone go out as one bundle, of which a takes only the cell it sees.
    let mut pb2 = Player::join(b.addr);
    // Ids are unique across processes: each carries its process's node id.
    let nodes: HashSet<u64> = [pa.id, pb.id, pc.id].iter().map(|id| id >> 32).collect();
    assert_eq!(nodes.len(), 3, "{:x} {:x} {:x}", pa.id, pb.id, pc.id);
    // a at (150, 150); b one cell east (in range); c far away.
    let (ax, ay, bx, by, cx, cy) = (150.0, 150.0, 250.0, 150.0, 850.0, 850.0);
    let (b2x, b2y) = (350.0, 150.0);
    let walk = |pa: &mut Player, pb: &mut Player, pc: &mut Player, pb2: &mut Player| {
        pace(
            &mut [(pa, ax, ay), (pb, bx, by), (pc, cx, cy), (pb2, b2x, b2y)],
            4,
        )
    };
    assert!(wait_until(WAIT, || {
        walk(&mut pa, &mut pb, &mut pc, &mut pb2);
        pa.moves_of(pb.id).len() >= 20 && pb.moves_of(pa.id).len() >= 20
    }));
    // Spawn points hash the ids, so c may have started next to a: out of range is judged
    // from here on, once everyone is in place and a has heard plenty of b.
    let (mark_a, mark_c) = (pa.mark(), pc.mark());
    let heard_of_b = pa.moves_of(pb.id).len();
    assert!(wait_until(WAIT, || {
        walk(&mut pa, &mut pb, &mut pc, &mut pb2);
        pa.moves_of(pb.id).len() >= heard_of_b + 20
    }));
    let (seen_by_a, seen_by_c) = (pa.seen_since(mark_a), pc.seen_since(mark_c));
    assert!(seen_by_a.contains(&pb.id));
    assert!(!seen_by_a.contains(&pc.id), "a hears of c, out of range");
    assert!(
        !seen_by_a.contains(&pb2.id),
        "a hears of b's second, out of range"
    );
    assert!(
        a.figure("zerocast_world_bus_bundles_total") > 0.0,
        "b's bundles reach a"
    );
    assert!(!seen_by_c.contains(&pa.id) && !seen_by_c.contains(&pb.id));
    // Every move a received is from a player in range of a (all of b's: in range).
    let (ca, cb) = (cell(ax + 9.0, ay + 9.0), cell(bx, by));
    for (x, y) in pa.moves_of(pb.id) {
        let m = cell(x, y);
        assert!((m.0 - ca.0).abs() <= 1 && (m.1 - ca.1).abs() <= 1, "{m:?}");
        assert!((m.0 - cb.0).abs() <= 1 && (m.1 - cb.1).abs() <= 1, "{m:?}");
    }
    // Global chat reaches every player from every process.
    pa.say("from a");
    pb.say("from b");
    pc.say("from c");
    let everyone: HashSet<u64> = [pa.id, pb.id, pc.id].into();
    for p in [&pa, &pb, &pc] {
        assert!(wait_until(WAIT, || {
            let mut from = p.heard("from a");
            from.extend(p.heard("from b"));
            from.extend(p.heard("from c"));
            from == everyone
        }));
    }
    assert_eq!(a.figure("zerocast_world_bus_bad_total"), 0.0);
}

#[test]
fn the_bus_stopped_and_restarted_stops_only_what_crosses_it() {
    if !have_nats() {
        return;
    }
    let mut nats = Nats::start();
    let (a, b) = (
        Process::start(&nats, "restart"),
        Process::start(&nats, "restart"),
    );
    until_joined(&[&a, &b], 1.0);
    let mut pa = Player::join(a.addr);
    let mut pa2 = Player::join(a.addr);
    let mut pb = Player::join(b.addr);
    let walk = |pa: &mut Player, pa2: &mut Player, pb: &mut Player, n| {
        pace(
            &mut [(pa, 150.0, 150.0), (pa2, 160.0, 150.0), (pb, 250.0, 150.0)],
            n,
        )
    };
    assert!(wait_until(WAIT, || {
        walk(&mut pa, &mut pa2, &mut pb, 4);
        pa.moves_of(pb.id).len() >= 10
    }));
    nats.stop();
    assert!(wait_until(WAIT, || a
        .figure("zerocast_world_bus_connected")
        == 0.0));
    // Local play goes on: a still sees its neighbour on the same process.
    let before = pa.moves_of(pa2.id).len();
    let rss = a.rss_kib();
    assert!(wait_until(WAIT, || {
        walk(&mut pa, &mut pa2, &mut pb, 4);
        pa.moves_of(pa2.id).len() >= before + 40
            && a.figure("zerocast_world_bus_unsent_total") > 40.0
    }));
    // Nothing piles up toward the absent bus (the queues are bounded, and nothing is kept
    // for it while it is down).
    assert!(
        a.rss_kib() < rss + 16 * 1024,
        "{rss} KiB then {} KiB",
        a.rss_kib()
    );
    // b's players expired while the bus was away; when it is back, b's moves resume.
    nats.restart();
    let resumed = pa.moves_of(pb.id).len();
    assert!(wait_until(WAIT, || {
        walk(&mut pa, &mut pa2, &mut pb, 4);
        pa.moves_of(pb.id).len() >= resumed + 10
    }));
    assert_eq!(a.figure("zerocast_world_bus_connected"), 1.0);
}

#[test]
fn a_killed_process_s_players_vanish_and_the_others_play_on() {
    if !have_nats() {
        return;
    }
    let nats = Nats::start();
    let (a, mut b, c) = (
        Process::start(&nats, "killed"),
        Process::start(&nats, "killed"),
        Process::start(&nats, "killed"),
    );
    until_joined(&[&a, &b, &c], 2.0);
    let mut pa = Player::join(a.addr);
    let mut pb = Player::join(b.addr);
    let mut pc = Player::join(c.addr);
    // All three in range of each other.
    let places = [(150.0, 150.0), (250.0, 150.0), (150.0, 250.0)];
    let walk = |pa: &mut Player, pb: &mut Player, pc: &mut Player, n| {
        let [(ax, ay), (bx, by), (cx, cy)] = places;
        pace(&mut [(pa, ax, ay), (pb, bx, by), (pc, cx, cy)], n)
    };
    assert!(wait_until(WAIT, || {
        walk(&mut pa, &mut pb, &mut pc, 4);
        pa.moves_of(pb.id).len() >= 10 && pa.moves_of(pc.id).len() >= 10
    }));
    b.kill();
    // b's player leaves a's view once b's silence passes the presence timeout (3 s).
    assert!(wait_until(WAIT, || {
        let (x, y) = places[0];
        pace(
            &mut [(&mut pa, x, y), (&mut pc, places[2].0, places[2].1)],
            4,
        );
        pa.left(pb.id) && pc.left(pb.id)
    }));
    assert!(wait_until(WAIT, || a.figure("zerocast_world_bus_nodes") == 1.0));
    // a and c go on seeing each other.
    let before = pa.moves_of(pc.id).len();
    assert!(wait_until(WAIT, || {
        pace(&mut [(&mut pa, 150.0, 150.0), (&mut pc, 150.0, 250.0)], 4);
        pa.moves_of(pc.id).len() >= before + 10
    }));
}

#[test]
fn a_bus_unreachable_at_start_is_logged_once_and_joined_when_it_comes() {
    if !have_nats() {
        return;
    }
    // A process that finds the bus at start says nothing of it being unreachable.
    let early = Nats::start();
    let mut c = Process::start_logging(&early, "early", Stdio::piped());
    until_joined(&[&c], 0.0);
    assert!(wait_until(WAIT, || c
        .figure("zerocast_world_bus_connected")
        == 1.0));
    c.kill();
    let log = common::stderr_of(&mut c.child);
    assert!(!log.contains("unreachable"), "{log}");
    let mut nats = Nats::absent();
    let mut a = Process::start_logging(&nats, "late", Stdio::piped());
    let b = Process::start(&nats, "late");
    let mut pa = Player::join(a.addr);
    let mut pa2 = Player::join(a.addr);
    let mut pb = Player::join(b.addr);
    // Local play without the bus.
    assert!(wait_until(WAIT, || {
        pace(&mut [(&mut pa, 150.0, 150.0), (&mut pa2, 160.0, 150.0)], 4);
        pa.moves_of(pa2.id).len() >= 10
    }));
    assert_eq!(a.figure("zerocast_world_bus_connected"), 0.0);
    assert!(pa.moves_of(pb.id).is_empty());
    // The bus comes: the processes find each other and b's moves reach a.
    nats.restart();
    until_joined(&[&a, &b], 1.0);
    assert!(wait_until(WAIT, || {
        pace(
            &mut [
                (&mut pa, 150.0, 150.0),
                (&mut pa2, 160.0, 150.0),
                (&mut pb, 250.0, 150.0),
            ],
            4,
        );
        pa.moves_of(pb.id).len() >= 10
    }));
    a.kill();
    let log = common::stderr_of(&mut a.child);
    assert_eq!(
        log.matches("the bus is unreachable").count(),
        1,
        "logged once:\n{log}"
    );
    assert!(
        !log.contains("IO error"),
        "one line, not one per attempt:\n{log}"
    );
}
