//! The world server over loopback: joins with server-assigned ids, moves that reach players in
//! range and nobody else, enter/leave notices, attacks, chat nearby and global, the server's
//! authority (teleports and out-of-world moves refused, malformed packets closing only their
//! session), and one gathered write per player per tick.

/// The engine's end-to-end helpers, shared rather than copied.
#[path = "../../zerocast/tests/util/mod.rs"]
mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use util::*;
use zerocast::packet::{FixedPacket, VarPacket};
use zerocast::Engine;
use zerocast_world::packets::{
    channel, goodbye, reject, Attack, Attacked, Chat, ChatFrom, ChatText, Entered, Goodbye, Join,
    Left, Move, Moved, Ping, Pong, Rejected, Welcome, PROTOCOL_VERSION,
};
use zerocast_world::{World, WorldConfig};

/// A 1,000-unit world of 100-unit cells. `max_speed` huge lets tests place players anywhere.
fn world(max_speed: f32, tick_ms: u64) -> (Engine, SocketAddr, Arc<World>) {
    let w = Arc::new(World::new(WorldConfig {
        size: 1_000.0,
        cell_size: 100.0,
        max_speed,
        tick: Duration::from_millis(tick_ms),
        ..WorldConfig::default()
    }));
    let (engine, addr) = server_with(w.configure(Engine::builder().workers(2)), w.clone());
    (engine, addr, w)
}

struct Client {
    s: TcpStream,
    id: u64,
    welcome: Welcome,
}

impl Client {
    fn join(addr: SocketAddr) -> Self {
        let mut s = connect(addr);
        s.write_all(&Join::new(PROTOCOL_VERSION).encode()).unwrap();
        let (id, payload) = read_frame(&mut s).unwrap();
        assert_eq!(id, Welcome::ID, "the first packet is the welcome");
        let welcome = *Welcome::decode(&payload).unwrap();
        Self {
            s,
            id: welcome.id.get(),
            welcome,
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.s.write_all(frame).unwrap();
    }

    fn go(&mut self, x: f32, y: f32) {
        self.send(&Move::new(x, y, 0.0, 1.0).encode());
    }

    /// Moves to `(x, y)` and waits until the server has handled it (its own global line comes
    /// back after it): packets of different connections have no order between them.
    fn place(&mut self, x: f32, y: f32) {
        self.go(x, y);
        let token = format!("placed {}", self.id);
        self.say(channel::GLOBAL, &token);
        self.until_chat(&token);
    }

    fn say(&mut self, ch: u8, text: &str) {
        let line = ChatText { channel: ch, text }.encode().unwrap();
        self.send(&line);
    }

    /// Frames up to the first that `stop` accepts; returns them all, that one last.
    fn until(&mut self, mut stop: impl FnMut(u16, &[u8]) -> bool) -> Vec<(u16, Vec<u8>)> {
        let mut seen = Vec::new();
        loop {
            let (id, p) = read_frame(&mut self.s).expect("frame before the timeout");
            let done = stop(id, &p);
            seen.push((id, p));
            if done {
                return seen;
            }
        }
    }

    /// Reads up to the chat line `text` from anyone.
    fn until_chat(&mut self, text: &str) -> Vec<(u16, Vec<u8>)> {
        self.until(|id, p| id == ChatFrom::ID && ChatFrom::decode(p).unwrap().chat.text == text)
    }
}

/// Every player says `word` to everyone, then reads until it has heard it from all of them:
/// since each line follows its speaker's earlier packets, every player has then received
/// everything the others sent before. Returns what each read.
fn barrier(players: &mut [Client], word: &str) -> Vec<Vec<(u16, Vec<u8>)>> {
    for p in players.iter_mut() {
        p.say(channel::GLOBAL, word);
    }
    let n = players.len();
    players
        .iter_mut()
        .map(|p| {
            let mut heard = 0;
            p.until(|id, payload| {
                heard += usize::from(
                    id == ChatFrom::ID && ChatFrom::decode(payload).unwrap().chat.text == word,
                );
                heard == n
            })
        })
        .collect()
}

fn moved_by(frames: &[(u16, Vec<u8>)], who: u64) -> Vec<(f32, f32)> {
    frames
        .iter()
        .filter(|(id, _)| *id == Moved::ID)
        .map(|(_, p)| Moved::decode(p).unwrap())
        .filter(|m| m.id.get() == who)
        .map(|m| (m.x.get(), m.y.get()))
        .collect()
}

fn has(frames: &[(u16, Vec<u8>)], packet: u16, who: u64) -> bool {
    frames.iter().any(|(id, p)| {
        *id == packet && p.len() >= 8 && u64::from_le_bytes(p[..8].try_into().unwrap()) == who
    })
}

#[test]
fn a_spectating_world_publishes_every_players_position_and_others_publish_none() {
    let config = WorldConfig {
        size: 1_000.0,
        cell_size: 100.0,
        max_speed: 1e6,
        tick: Duration::from_millis(10),
        ..WorldConfig::default()
    };
    let w = Arc::new(World::new(config.clone()).spectate(true));
    let (engine, addr) = server_with(w.configure(Engine::builder().workers(2)), w.clone());
    let mut a = Client::join(addr);
    let mut b = Client::join(addr);
    a.place(120.0, 130.0);
    b.place(810.0, 920.0);
    let want = |players: &[&Client]| {
        let mut v: Vec<(u64, f32, f32)> = players
            .iter()
            .map(|c| match c.id {
                id if id == a.id => (id, 120.0, 130.0),
                id => (id, 810.0, 920.0),
            })
            .collect();
        v.sort_by_key(|p| p.0);
        v
    };
    let now = || {
        let mut v: Vec<(u64, f32, f32)> = w.positions().iter().map(|p| (p.id, p.x, p.y)).collect();
        v.sort_by_key(|p| p.0);
        v
    };
    assert!(
        wait_until(Duration::from_secs(10), || now() == want(&[&a, &b])),
        "both players where they moved, from both workers: {:?}",
        now()
    );
    let gone = b.id;
    drop(b);
    assert!(
        wait_until(Duration::from_secs(10), || now() == want(&[&a])),
        "player {gone} left: {:?}",
        now()
    );
    engine.shutdown();
    assert_no_leaks(&engine);

    // Off by default: players move, ticks pass, nothing is published.
    let quiet = Arc::new(World::new(config));
    let (engine, addr) = server_with(quiet.configure(Engine::builder().workers(2)), quiet.clone());
    let mut c = Client::join(addr);
    c.place(500.0, 500.0);
    let ticks = quiet.snapshot().counts.ticks;
    assert!(wait_until(Duration::from_secs(10), || {
        quiet.snapshot().counts.ticks >= ticks + 4 * u64::from(zerocast_world::SPECTATE_EVERY)
    }));
    assert!(quiet.positions().is_empty());
    drop(c);
    engine.shutdown();
    assert_no_leaks(&engine);
}

#[test]
fn joining_assigns_distinct_ids_and_tells_the_rules() {
    let (engine, addr, w) = world(20.0, 20);
    let a = Client::join(addr);
    let b = Client::join(addr);
    assert_ne!(a.id, b.id);
    assert_eq!(a.welcome.world_size.get(), 1_000.0);
    assert_eq!(a.welcome.cell_size.get(), 100.0);
    assert_eq!(a.welcome.max_speed.get(), 20.0);
    assert_eq!(a.welcome.tick_ms.get(), 20);
    let (x, y) = (a.welcome.x.get(), a.welcome.y.get());
    assert!((0.0..=1_000.0).contains(&x) && (0.0..=1_000.0).contains(&y));
    assert!(wait_until(Duration::from_secs(5), || w.snapshot().players == 2));
    drop((a, b));
    assert!(wait_until(Duration::from_secs(5), || w.snapshot().players == 0));
    engine.shutdown();
    assert_no_leaks(&engine);
}

#[test]
fn moves_reach_players_in_range_and_nobody_farther_with_enter_and_leave_notices() {
    let (engine, addr, _w) = world(1e6, 10);
    let mut a = Client::join(addr);
    let mut b = Client::join(addr);
    let mut c = Client::join(addr);
    // A in cell (1, 1), B next door in (2, 1), C far away in (7, 7).
    a.place(150.0, 150.0);
    b.place(250.0, 150.0);
    c.place(750.0, 750.0);

    // A walks inside its cell: B sees it, C does not. Moves within one tick are conflated:
    // B sees some of the steps, in order, the last one last.
    let steps: Vec<(f32, f32)> = (0..5).map(|i| (151.0 + i as f32, 150.0)).collect();
    for &(x, y) in &steps {
        a.go(x, y);
    }
    a.say(channel::GLOBAL, "walked");
    let at_b = b.until_chat("walked");
    let at_c = c.until_chat("walked");
    let seen = moved_by(&at_b, a.id);
    assert_eq!(seen.last(), steps.last(), "B ends where A ended: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "in order: {seen:?}"
    );
    assert!(moved_by(&at_c, a.id).is_empty(), "C is three cells away");

    // C comes next to A, at (3, 2): C and A see each other enter; B (cell (2, 1)) too.
    c.go(350.0, 250.0);
    c.say(channel::GLOBAL, "came");
    let at_a = a.until_chat("came");
    let at_c = c.until_chat("came");
    assert!(
        !has(&at_a, Entered::ID, c.id),
        "(3, 2) is two cells from (1, 1)"
    );
    assert!(has(&at_c, Entered::ID, b.id));
    c.go(250.0, 250.0);
    c.say(channel::GLOBAL, "closer");
    let at_a = a.until_chat("closer");
    let at_c = c.until_chat("closer");
    assert!(has(&at_a, Entered::ID, c.id));
    assert!(has(&at_c, Entered::ID, a.id));
    assert_eq!(moved_by(&at_a, c.id), [(250.0, 250.0)]);

    // C walks away again: Left both ways, and its later moves no longer reach A.
    c.go(750.0, 750.0);
    c.go(760.0, 750.0);
    c.say(channel::GLOBAL, "gone");
    let at_a = a.until_chat("gone");
    let at_c = c.until_chat("gone");
    assert!(has(&at_a, Left::ID, c.id));
    assert!(has(&at_c, Left::ID, a.id) && has(&at_c, Left::ID, b.id));
    assert!(moved_by(&at_a, c.id).is_empty());

    // B leaves the world: A is told.
    let b_id = b.id;
    drop(b);
    let at_a = a.until(|id, _| id == Left::ID);
    assert_eq!(
        Left::decode(&at_a.last().unwrap().1).unwrap().id.get(),
        b_id
    );
    drop((a, c));
    engine.shutdown();
    assert_no_leaks(&engine);
}

#[test]
fn chat_nearby_stays_nearby_global_reaches_everyone_and_attacks_need_range() {
    let (engine, addr, w) = world(1e6, 10);
    let mut a = Client::join(addr);
    let mut b = Client::join(addr);
    let mut c = Client::join(addr);
    a.place(150.0, 150.0);
    b.place(160.0, 150.0);
    c.place(850.0, 850.0);
    a.say(channel::NEARBY, "hello neighbours");
    a.say(channel::GLOBAL, "hello world");
    let at_b = b.until_chat("hello world");
    let at_c = c.until_chat("hello world");
    let at_a = a.until_chat("hello world");
    let nearby = |f: &[(u16, Vec<u8>)]| {
        f.iter().any(|(id, p)| {
            *id == ChatFrom::ID && ChatFrom::decode(p).unwrap().chat.text == "hello neighbours"
        })
    };
    assert!(
        nearby(&at_b) && nearby(&at_a),
        "nearby reaches B and the speaker"
    );
    assert!(!nearby(&at_c), "C is far");
    let line = at_c.last().unwrap();
    assert_eq!(ChatFrom::decode(&line.1).unwrap().from, a.id);

    a.send(&Attack::new(b.id).encode());
    let at_b = b.until(|id, _| id == Attacked::ID);
    let hit = Attacked::decode(&at_b.last().unwrap().1).unwrap();
    assert_eq!((hit.attacker.get(), hit.target.get()), (a.id, b.id));
    a.send(&Attack::new(c.id).encode());
    let at_a = a.until(|id, _| id == Rejected::ID);
    let r = Rejected::decode(&at_a.last().unwrap().1).unwrap();
    assert_eq!((r.packet.get(), r.reason), (Attack::ID, reject::NO_TARGET));
    assert!(wait_until(Duration::from_secs(5), || w
        .snapshot()
        .counts
        .attacks
        == 1));
    drop((a, b, c));
    engine.shutdown();
    assert_no_leaks(&engine);
}

#[test]
fn teleports_and_out_of_world_moves_are_refused_and_the_player_snaps_back() {
    let (engine, addr, w) = world(20.0, 10);
    let mut a = Client::join(addr);
    let (x, y) = (a.welcome.x.get(), a.welcome.y.get());
    // Half the world in one step.
    let far = if x < 500.0 { x + 500.0 } else { x - 500.0 };
    a.go(far, y);
    let r = a.until(|id, _| id == Rejected::ID);
    let r = Rejected::decode(&r.last().unwrap().1).unwrap();
    assert_eq!((r.packet.get(), r.reason), (Move::ID, reject::TOO_FAST));
    assert_eq!((r.x.get(), r.y.get()), (x, y), "the authoritative position");
    a.send(&Move::new(x, y, -5.0, 1.0).encode());
    let r = a.until(|id, _| id == Rejected::ID);
    let r = Rejected::decode(&r.last().unwrap().1).unwrap();
    assert_eq!(r.reason, reject::OUT_OF_BOUNDS);
    // A walking step still passes: the session is open and the move is accepted.
    let step = if x < 500.0 { x + 1.0 } else { x - 1.0 };
    a.go(step, y);
    assert!(wait_until(Duration::from_secs(5), || w
        .snapshot()
        .counts
        .moves
        == 1));
    assert_eq!(w.snapshot().counts.rejected, 2);
    drop(a);
    engine.shutdown();
    assert_no_leaks(&engine);
}

#[test]
fn malformed_packets_close_only_their_session() {
    let (engine, addr, _w) = world(20.0, 10);
    let mut bystander = Client::join(addr);
    let mut nan = Move::new(1.0, 1.0, 0.0, 1.0).encode().as_bytes().to_vec();
    nan[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let bad_utf8 = frame(Chat::ID, &[channel::NEARBY, 0xff, 0xfe]);
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        ("NaN coordinate", true, nan),
        ("wrong length", true, frame(Move::ID, &[0; 15])),
        ("unknown id", true, frame(0x7777, &[])),
        ("bad UTF-8", true, bad_utf8),
        ("unknown channel", true, frame(Chat::ID, &[9, b'h'])),
        (
            "second join",
            true,
            Join::new(PROTOCOL_VERSION).encode().to_vec(),
        ),
        (
            "move before join",
            false,
            Move::new(1.0, 1.0, 0.0, 1.0).encode().to_vec(),
        ),
        ("wrong protocol", false, Join::new(99).encode().to_vec()),
    ];
    for (what, join_first, bytes) in cases {
        let mut s = if join_first {
            Client::join(addr).s
        } else {
            connect(addr)
        };
        s.write_all(&bytes).unwrap();
        assert!(closed_by_peer(&mut s), "{what}: the session is closed");
    }
    bystander.say(channel::GLOBAL, "still here");
    let seen = bystander.until_chat("still here");
    assert_eq!(seen.last().unwrap().0, ChatFrom::ID);
    drop(bystander);
    engine.shutdown();
    assert_no_leaks(&engine);
}

#[test]
fn each_player_gets_one_gathered_write_per_tick_and_moves_are_conflated_to_state() {
    // 20 players in one cell, each moving 5 times in a burst, with a 300 ms tick.
    let (engine, addr, w) = world(1e6, 300);
    let mut players: Vec<Client> = (0..20).map(|_| Client::join(addr)).collect();
    for (i, p) in players.iter_mut().enumerate() {
        p.go(500.0 + i as f32, 500.0);
    }
    barrier(&mut players, "placed");
    let before = engine.metrics();
    let counts_before = w.snapshot().counts;
    for round in 1..=5 {
        for (i, p) in players.iter_mut().enumerate() {
            p.go(500.0 + i as f32, 500.0 + round as f32);
        }
    }
    let ids: Vec<u64> = players.iter().map(|p| p.id).collect();
    let seen = barrier(&mut players, "done");
    // What one player saw of another is what everyone else saw of it: the frames laid out
    // in the cell's buffer. Each player's five moves became that many frames, the rest
    // conflated, and the last frame carries the last position.
    let mut laid_out = 0;
    for (i, &other) in ids.iter().enumerate() {
        let observer = (i + 1) % ids.len();
        let got = moved_by(&seen[observer], other);
        assert!((1..=5).contains(&got.len()), "{got:?}");
        assert_eq!(got.last(), Some(&(500.0 + i as f32, 505.0)));
        for (o, s) in seen.iter().enumerate().filter(|&(o, _)| o != i) {
            assert_eq!(moved_by(s, other), got, "observer {o} saw the same frames");
        }
        laid_out += got.len() as u64;
    }
    let after_counts = w.snapshot().counts;
    assert_eq!(after_counts.moves - counts_before.moves, 100);
    assert_eq!(
        after_counts.conflated - counts_before.conflated,
        100 - laid_out,
        "every move not laid out was conflated"
    );
    // The counters move when the kernel reports a write done: on io_uring that completion can
    // be reaped after the client has already read the bytes, so wait for them to settle.
    let frames_expected = 19 * laid_out;
    wait_until(Duration::from_secs(2), || {
        engine.metrics().frames_out - before.frames_out >= frames_expected
    });
    let after = engine.metrics();
    let writes = after.writes - before.writes;
    let ticks = after_counts.ticks - counts_before.ticks;
    // One write per player per tick that had something for it, at most.
    assert!(
        writes <= ticks * 20,
        "{writes} writes in {ticks} shard ticks: the tick did not gather them"
    );
    assert!(after_counts.flushes > counts_before.flushes);
    drop(players);
    engine.shutdown();
    assert_no_leaks(&engine);
}

#[test]
fn a_ping_is_answered_and_a_bad_packet_gets_a_goodbye_before_the_close() {
    let (engine, addr, _w) = world(20.0, 10);
    let mut a = Client::join(addr);
    a.send(&Ping::new(0xC0FFEE).encode());
    let got = a.until(|id, _| id == Pong::ID);
    assert_eq!(
        Pong::decode(&got.last().unwrap().1).unwrap().nonce.get(),
        0xC0FFEE
    );
    a.send(&frame(0x7777, &[]));
    let got = a.until(|id, _| id == Goodbye::ID);
    let bye = Goodbye::decode(&got.last().unwrap().1).unwrap();
    assert_eq!(bye.reason, goodbye::BAD_PACKET);
    assert!(bye.text.contains("0x7777"), "{}", bye.text);
    assert!(closed_by_peer(&mut a.s));
    engine.shutdown();
    assert_no_leaks(&engine);
}

#[test]
fn over_its_write_budget_the_world_writes_each_player_every_few_ticks_and_loses_nothing() {
    // 10 ms ticks (100 a second) and a budget of 200 writes a second: with 6 players on the
    // busiest shard, 600 writes a second would be needed, so each player is written every
    // third tick.
    let w = Arc::new(World::new(WorldConfig {
        size: 1_000.0,
        cell_size: 100.0,
        max_speed: 1e6,
        tick: Duration::from_millis(10),
        max_writes_per_sec: 200,
        ..WorldConfig::default()
    }));
    let (engine, addr) = server_with(w.configure(Engine::builder().workers(1)), w.clone());
    let mut players: Vec<Client> = (0..6).map(|_| Client::join(addr)).collect();
    assert!(wait_until(Duration::from_secs(5), || w.snapshot().stride == 3));
    for (i, p) in players.iter_mut().enumerate() {
        p.go(500.0 + i as f32, 500.0);
    }
    barrier(&mut players, "placed");
    let before = (engine.metrics().writes, w.snapshot().counts.ticks);
    for round in 1..=20 {
        for (i, p) in players.iter_mut().enumerate() {
            p.go(500.0 + i as f32, 500.0 + round as f32);
        }
    }
    let ids: Vec<u64> = players.iter().map(|p| p.id).collect();
    let seen = barrier(&mut players, "done");
    for (i, &other) in ids.iter().enumerate() {
        for (o, s) in seen.iter().enumerate().filter(|&(o, _)| o != i) {
            let got = moved_by(s, other);
            assert_eq!(
                got.last(),
                Some(&(500.0 + i as f32, 520.0)),
                "{o} saw {other}"
            );
        }
    }
    let writes = engine.metrics().writes - before.0;
    let ticks = w.snapshot().counts.ticks - before.1;
    // Each player at most once per three ticks, give or take the turn it began on.
    assert!(
        writes <= 6 * (ticks / 3 + 2),
        "{writes} writes in {ticks} ticks"
    );
    drop(players);
    engine.shutdown();
    assert_no_leaks(&engine);
}
