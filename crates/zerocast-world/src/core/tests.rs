use super::*;
use crate::packets::{Entered, Left, Pong};
use std::sync::Arc;

/// Rebuilds each player's byte stream from the parts a delivery hands out, and parses it.
#[derive(Default)]
struct Wire {
    shared: Vec<SendBuffer>,
    got: FxHashMap<EntityId, Vec<u8>>,
    writes: FxHashMap<EntityId, u32>,
}

impl Deliver for Wire {
    fn begin(&mut self, shared: &[SendBuffer]) {
        self.shared = shared.to_vec();
    }

    fn player(&mut self, to: EntityId, parts: &[Part]) {
        assert!(!parts.is_empty());
        let out = self.got.entry(to).or_default();
        for p in parts {
            assert!(!p.range.is_empty(), "no empty part");
            out.extend_from_slice(&self.shared[p.buffer][p.range.clone()]);
        }
        *self.writes.entry(to).or_default() += 1;
    }
}

impl Wire {
    /// The frames `to` received, as (packet id, payload), and forgets them.
    fn take(&mut self, to: EntityId) -> Vec<(u16, Vec<u8>)> {
        let bytes = self.got.remove(&to).unwrap_or_default();
        let mut frames = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
            let id = u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]);
            assert!(
                len >= HEADER_LEN && at + len <= bytes.len(),
                "whole frames only"
            );
            frames.push((id, bytes[at + HEADER_LEN..at + len].to_vec()));
            at += len;
        }
        frames
    }
}

fn moved(frames: &[(u16, Vec<u8>)], who: EntityId) -> Vec<(f32, f32)> {
    frames
        .iter()
        .filter(|(id, _)| *id == Moved::ID)
        .map(|(_, p)| Moved::decode(p).unwrap())
        .filter(|m| m.id.get() == who)
        .map(|m| (m.x.get(), m.y.get()))
        .collect()
}

fn ids(frames: &[(u16, Vec<u8>)]) -> Vec<u16> {
    frames.iter().map(|(id, _)| *id).collect()
}

fn about(frames: &[(u16, Vec<u8>)], packet: u16) -> Vec<EntityId> {
    frames
        .iter()
        .filter(|(id, _)| *id == packet)
        .map(|(_, p)| u64::from_le_bytes(p[..8].try_into().unwrap()))
        .collect()
}

fn config() -> WorldConfig {
    WorldConfig {
        size: 1000.0,
        cell_size: 100.0,
        max_speed: 1e6,
        max_moves_per_sec: 1e6,
        ..WorldConfig::default()
    }
}

struct Shards {
    cores: Vec<Core>,
    tick: u64,
    stride: u32,
    wire: Wire,
    now: Instant,
}

impl Shards {
    fn new(n: u32) -> Self {
        Self {
            cores: (0..n).map(|i| Core::new(config(), i)).collect(),
            tick: 0,
            stride: 1,
            wire: Wire::default(),
            now: Instant::now(),
        }
    }

    /// Ends a tick on every shard and delivers it everywhere, every batch in.
    fn tick(&mut self) {
        self.tick += 1;
        let batches: Vec<Arc<TickBatch>> = self
            .cores
            .iter_mut()
            .map(|c| Arc::new(c.end_tick(self.tick)))
            .collect();
        for (i, core) in self.cores.iter_mut().enumerate() {
            let remote: Vec<_> = batches
                .iter()
                .filter(|b| b.shard as usize != i)
                .cloned()
                .collect();
            core.deliver(batches[i].clone(), &remote, self.stride, &mut self.wire);
        }
    }

    fn join(&mut self, shard: usize, id: EntityId) {
        self.cores[shard]
            .join(id, &Join::new(PROTOCOL_VERSION), self.now)
            .unwrap();
    }

    fn go(&mut self, shard: usize, id: EntityId, x: f32, y: f32) {
        self.cores[shard]
            .step(id, &Move::new(x, y, 0.0, 1.0), self.now)
            .unwrap();
    }
}

#[test]
fn a_join_brings_the_welcome_then_who_is_around_and_they_see_it_enter() {
    let mut w = Shards::new(1);
    w.join(0, 1);
    w.go(0, 1, 150.0, 150.0);
    w.tick();
    assert_eq!(ids(&w.wire.take(1)), [Welcome::ID]);
    w.join(0, 2);
    w.go(0, 2, 160.0, 150.0);
    w.tick();
    let two = w.wire.take(2);
    assert_eq!(
        ids(&two),
        [Welcome::ID, Entered::ID],
        "its own move is not echoed"
    );
    assert_eq!(about(&two, Entered::ID), [1]);
    let one = w.wire.take(1);
    assert_eq!(about(&one, Entered::ID), [2]);
    assert_eq!(moved(&one, 2), [(160.0, 150.0)]);
}

#[test]
fn moves_reach_the_3x3_cells_only_conflated_to_the_latest_per_tick() {
    let mut w = Shards::new(1);
    for (id, x) in [(1, 150.0), (2, 250.0), (3, 850.0)] {
        w.join(0, id);
        w.go(0, id, x, 150.0);
    }
    w.tick();
    for id in 1..=3 {
        w.wire.take(id);
    }
    for i in 0..5 {
        w.go(0, 1, 151.0 + i as f32, 150.0);
    }
    w.tick();
    assert_eq!(
        moved(&w.wire.take(2), 1),
        [(155.0, 150.0)],
        "the latest, once"
    );
    assert!(
        !w.wire.got.contains_key(&3),
        "three cells away: nothing, not even a write"
    );
    assert!(!w.wire.got.contains_key(&1), "nothing of its own");
    let c = w.cores[0].counts();
    assert_eq!((c.moves, c.conflated), (8, 4));
}

#[test]
fn a_player_crossing_cells_within_a_tick_is_last_seen_where_it_ended() {
    let mut w = Shards::new(1);
    w.join(0, 1);
    w.go(0, 1, 150.0, 150.0);
    w.join(0, 2);
    w.go(0, 2, 150.0, 250.0);
    w.tick();
    w.wire.take(1);
    w.wire.take(2);
    // 2 walks from cell (1, 2) through (2, 2) into (0, 2): whatever order the observer's
    // cells are read in, its last position read is the latest.
    w.go(0, 2, 250.0, 250.0);
    w.go(0, 2, 50.0, 250.0);
    w.tick();
    let seen = moved(&w.wire.take(1), 2);
    assert_eq!(seen.last(), Some(&(50.0, 250.0)), "{seen:?}");
    assert!(seen.iter().all(|&p| p == (50.0, 250.0)), "{seen:?}");
}

#[test]
fn leaving_the_range_or_the_world_is_told_after_the_slices() {
    let mut w = Shards::new(1);
    for (id, x) in [(1, 150.0), (2, 160.0)] {
        w.join(0, id);
        w.go(0, id, x, 150.0);
    }
    w.tick();
    w.wire.take(1);
    w.wire.take(2);
    w.go(0, 2, 170.0, 150.0);
    w.go(0, 2, 850.0, 850.0);
    w.tick();
    let one = w.wire.take(1);
    assert_eq!(ids(&one), [Moved::ID, Left::ID], "the move, then the leave");
    assert_eq!(about(&w.wire.take(2), Left::ID), [1]);
    w.go(0, 2, 160.0, 150.0);
    w.tick();
    assert_eq!(about(&w.wire.take(1), Entered::ID), [2]);
    w.wire.take(2);
    assert!(w.cores[0].leave(2));
    assert!(!w.cores[0].leave(2));
    w.tick();
    assert_eq!(ids(&w.wire.take(1)), [Left::ID]);
    assert_eq!(w.cores[0].players(), 1);
}

#[test]
fn refusals_pongs_and_chat_come_in_order_and_bad_input_is_an_error() {
    let mut w = Shards::new(1);
    let now = w.now;
    w.join(0, 1);
    w.join(0, 2);
    w.tick();
    w.wire.take(1);
    w.wire.take(2);
    let core = &mut w.cores[0];
    assert_eq!(
        core.join(1, &Join::new(PROTOCOL_VERSION), now),
        Err(PacketError::Invalid {
            id: Join::ID,
            what: "already joined"
        })
    );
    assert!(core.join(3, &Join::new(99), now).is_err());
    assert!(
        core.step(9, &Move::new(1.0, 1.0, 0.0, 1.0), now).is_err(),
        "not joined"
    );
    assert!(core
        .step(1, &Move::new(f32::NAN, 1.0, 0.0, 1.0), now)
        .is_err());
    core.step(1, &Move::new(1.0, 1.0, -5.0, 1.0), now).unwrap();
    core.ping(1, &Ping::new(7)).unwrap();
    let line = ChatText {
        channel: channel::GLOBAL,
        text: "hi",
    };
    let payload = [channel::GLOBAL, b'h', b'i'];
    core.chat(2, line, &payload, now).unwrap();
    core.attack(1, &Attack::new(1), now).unwrap();
    w.tick();
    let one = w.wire.take(1);
    assert_eq!(
        ids(&one),
        [Rejected::ID, Pong::ID, Rejected::ID, ChatFrom::ID]
    );
    assert_eq!(Pong::decode(&one[1].1).unwrap().nonce.get(), 7);
    assert_eq!(ChatFrom::decode(&one[3].1).unwrap().chat.text, "hi");
    assert_eq!(w.cores[0].counts().rejected, 2);
}

#[test]
fn shards_see_each_others_players_and_events_through_their_batches() {
    let mut w = Shards::new(2);
    w.join(0, 1);
    w.go(0, 1, 150.0, 150.0);
    w.join(1, 2);
    w.go(1, 2, 160.0, 150.0);
    w.tick();
    assert_eq!(about(&w.wire.take(1), Entered::ID), [2]);
    assert_eq!(about(&w.wire.take(2), Entered::ID), [1]);
    w.go(1, 2, 170.0, 150.0);
    w.cores[1].attack(2, &Attack::new(1), w.now).unwrap();
    w.tick();
    let one = w.wire.take(1);
    assert_eq!(ids(&one), [Moved::ID, Attacked::ID]);
    assert_eq!(moved(&one, 2), [(170.0, 150.0)]);
    // The target's shard sees the attack too, from its own batch: the attacker does as well.
    assert_eq!(ids(&w.wire.take(2)), [Attacked::ID]);
    assert_eq!(w.cores[0].known(), 2);
    assert!(w.cores[1].leave(2));
    w.tick();
    assert_eq!(ids(&w.wire.take(1)), [Left::ID]);
    assert_eq!(w.cores[0].known(), 1);
}

#[test]
fn a_move_made_while_a_tick_waits_for_the_other_shards_is_not_sent_back_to_its_mover() {
    // Two shards: shard 0 ends its tick, then handles a move before shard 1's batch arrives
    // (the world server delivers a tick once every shard's batch is in).
    let mut w = Shards::new(2);
    w.join(0, 1);
    w.join(1, 2);
    w.go(0, 1, 150.0, 150.0);
    w.go(1, 2, 160.0, 150.0);
    w.tick();
    w.tick();
    let _ = (w.wire.take(1), w.wire.take(2));
    w.tick += 1;
    let tick = w.tick;
    let own0 = Arc::new(w.cores[0].end_tick(tick));
    w.go(0, 1, 151.0, 150.0); // handled in the gap: it belongs to the next tick
    let own1 = Arc::new(w.cores[1].end_tick(tick));
    w.cores[0].deliver(own0.clone(), std::slice::from_ref(&own1), 1, &mut w.wire);
    w.cores[1].deliver(own1, &[own0], 1, &mut w.wire);
    w.tick();
    let mine = w.wire.take(1);
    assert!(
        moved(&mine, 1).is_empty(),
        "own move echoed: {:?}",
        ids(&mine)
    );
    assert_eq!(moved(&w.wire.take(2), 1), [(151.0, 150.0)]);
}

#[test]
fn a_tick_is_one_write_per_player_whatever_happened_in_it() {
    let mut w = Shards::new(1);
    for id in 1..=20 {
        w.join(0, id);
        w.go(0, id, 500.0 + id as f32, 500.0);
    }
    w.tick();
    w.wire.writes.clear();
    w.wire.got.clear();
    for round in 0..5 {
        for id in 1..=20 {
            w.go(0, id, 500.0 + id as f32, 501.0 + round as f32);
            let line = ChatText {
                channel: channel::NEARBY,
                text: "x",
            };
            w.cores[0]
                .chat(id, line, &[channel::NEARBY, b'x'], w.now)
                .ok();
        }
    }
    w.tick();
    assert_eq!(w.wire.writes.len(), 20);
    assert!(w.wire.writes.values().all(|&n| n == 1));
    for id in 1..=20 {
        let got = w.wire.take(id);
        assert_eq!(
            about(&got, Moved::ID).len(),
            19,
            "one conflated move of each other player"
        );
    }
}

#[test]
fn over_capacity_each_player_is_written_every_stride_ticks_with_every_movers_latest_position() {
    let mut w = Shards::new(1);
    for id in 1..=40 {
        w.join(0, id);
        w.go(0, id, 500.0 + id as f32, 500.0);
    }
    w.tick();
    w.wire.got.clear();
    w.stride = 3;
    let mut writes_per_tick = Vec::new();
    // Six ticks with moves, then two without: every player has had its turn since the last.
    for round in 0..8 {
        w.wire.writes.clear();
        if round < 6 {
            for id in 1..=40 {
                w.go(0, id, 500.0 + id as f32, 501.0 + round as f32);
            }
        }
        w.tick();
        writes_per_tick.push(w.wire.writes.len());
        assert!(w.wire.writes.values().all(|&n| n == 1));
    }
    // A player is written on one tick in three: 2 or 3 times in 8 ticks, about a third of
    // the players on each tick.
    let total: usize = writes_per_tick.iter().sum();
    assert!((80..=120).contains(&total), "{writes_per_tick:?}");
    assert!(
        writes_per_tick.iter().all(|&n| n <= 25),
        "{writes_per_tick:?}"
    );
    // Nothing lost that matters: every player saw every other's last position, and no move
    // of its own.
    for id in 1..=40u64 {
        let got = w.wire.take(id);
        for other in (1..=40).filter(|&o| o != id) {
            let seen = moved(&got, other);
            assert_eq!(
                seen.last(),
                Some(&(500.0 + other as f32, 506.0)),
                "{id} of {other}"
            );
            // One position per write, the latest (the first window after the stride changed
            // may be short): fewer positions than moves.
            assert!((2..=4).contains(&seen.len()), "{seen:?}");
            assert!(
                seen.windows(2).all(|w| w[0].1 < w[1].1),
                "in order: {seen:?}"
            );
        }
        assert!(moved(&got, id).is_empty());
    }
    assert!(
        w.cores[0].counts().superseded > 0,
        "the older positions were left out"
    );
}

#[test]
fn positions_are_the_shards_own_players_where_the_server_keeps_them() {
    let mut w = Shards::new(2);
    w.join(0, 1);
    w.join(0, 2);
    w.join(1, 3);
    w.go(0, 1, 150.0, 250.0);
    w.go(1, 3, 900.0, 10.0);
    // A refused move (out of the world) leaves the position where it was.
    let kept = {
        let mut out = Vec::new();
        w.cores[0].positions_into(&mut out);
        out.iter().find(|p| p.id == 2).copied().unwrap()
    };
    w.cores[0]
        .step(2, &Move::new(5000.0, 5.0, 0.0, 1.0), w.now)
        .unwrap();
    w.tick();
    let mut out = Vec::new();
    w.cores[0].positions_into(&mut out);
    out.sort_by_key(|p| p.id);
    assert_eq!(
        out,
        [
            Position {
                id: 1,
                x: 150.0,
                y: 250.0
            },
            kept
        ],
        "only shard 0's players, the other shard's player is not its to report"
    );
    w.cores[0].leave(1);
    out.clear();
    w.cores[0].positions_into(&mut out);
    assert_eq!(out, [kept], "a player that left is gone");
    out.clear();
    w.cores[1].positions_into(&mut out);
    assert_eq!(
        out,
        [Position {
            id: 3,
            x: 900.0,
            y: 10.0
        }]
    );
}
