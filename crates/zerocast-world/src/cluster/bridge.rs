//! The cluster's logic, sans-IO: what a process publishes from its shards' ticks, which cells
//! it subscribes to, and what it hands its shards of what other processes published.
//!
//! The bus thread ([`super::bus`]) feeds it the shards' batches, the messages received and
//! the clock, and carries out the [`Effect`]s it returns; the tests drive it directly.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use super::wire::{self, Kind, WireError, MAX_RECORDS};
use crate::aoi::{around, Cell, Cells, EntityId};
use crate::core::{CellEvents, TickBatch};
use zerocast::SendBuffer;

/// The shard number of the batches the bridge hands the shards: not one of theirs.
pub const REMOTE_SHARD: u32 = u32::MAX;

/// The process (node) a player id belongs to: its high 32 bits (see `World::entity`).
pub fn node_of(id: EntityId) -> u32 {
    (id >> 32) as u32
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A cell's subject: its events and presence.
    Cell(Cell),
    /// Global chat.
    Global,
    /// Heartbeats, goodbyes and wants: every process listens.
    Control,
}

/// What the bridge asks the bus to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish these bytes.
    Publish(Topic, Bytes),
    /// Start receiving a cell's messages.
    Subscribe(Cell),
    /// Stop receiving a cell's messages.
    Unsubscribe(Cell),
    /// Log a line (at info): a process joined or went silent.
    Note(String),
}

/// What the bridge counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeCounts {
    /// Messages received from other processes.
    pub received: u64,
    /// Messages refused (not this format, or inconsistent).
    pub bad: u64,
    /// Other processes heard from within the presence timeout.
    pub nodes: u64,
    /// Other processes' players known (in the cells this process's players see).
    pub remote_players: u64,
    /// Cells subscribed to.
    pub cells: u64,
}

/// What arrived since the shards were last handed a batch: the latest state of each remote
/// player touched (a position, or gone), the cells' events, global lines.
#[derive(Default)]
struct Inbound {
    players: FxHashMap<EntityId, Option<[f32; 3]>>,
    cells: Vec<CellEvents>,
    global: BytesMut,
    global_count: u32,
}

/// See the module documentation.
pub struct Bridge {
    node: u32,
    workers: usize,
    timeout: Duration,
    /// The local shards' batches of ticks not yet published, by tick.
    pending: BTreeMap<u64, Vec<Arc<TickBatch>>>,
    /// This process's players.
    local: Cells,
    /// How many of this process's players see each cell (the cells subscribed to).
    interest: FxHashMap<Cell, u32>,
    /// Other processes' players in those cells, as the shards were told.
    remote: Cells,
    /// When each other process was last heard from.
    nodes: FxHashMap<u32, Instant>,
    inbound: Inbound,
    counts: BridgeCounts,
    last_error: Option<WireError>,
}

impl Bridge {
    /// The bridge of process `node` (never 0), whose engine runs `workers` shards, in a world
    /// of `cell_size` cells; another process is forgotten after `timeout` of silence.
    pub fn new(node: u32, workers: usize, cell_size: f32, timeout: Duration) -> Self {
        Self {
            node,
            workers: workers.max(1),
            timeout,
            pending: BTreeMap::new(),
            local: Cells::new(cell_size),
            interest: FxHashMap::default(),
            remote: Cells::new(cell_size),
            nodes: FxHashMap::default(),
            inbound: Inbound::default(),
            counts: BridgeCounts::default(),
            last_error: None,
        }
    }

    /// The counters and gauges.
    pub fn counts(&self) -> BridgeCounts {
        BridgeCounts {
            nodes: self.nodes.len() as u64,
            remote_players: self.remote.len() as u64,
            cells: self.interest.len() as u64,
            ..self.counts
        }
    }

    /// Why the last refused message was refused.
    pub fn last_error(&self) -> Option<WireError> {
        self.last_error
    }

    /// True if this process's players see `cell`.
    pub fn sees(&self, cell: Cell) -> bool {
        self.interest.contains_key(&cell)
    }

    /// A local shard's batch. Once every shard's batch of its tick is in (or a later tick's
    /// arrives first: a shard fell behind), the tick is published.
    pub fn local(&mut self, batch: Arc<TickBatch>, out: &mut Vec<Effect>) {
        let tick = batch.tick;
        let all = {
            let v = self.pending.entry(tick).or_default();
            v.push(batch);
            v.len() >= self.workers
        };
        let upto = if all { tick + 1 } else { tick };
        let older: Vec<u64> = self.pending.range(..upto).map(|(&t, _)| t).collect();
        for t in older {
            if let Some(batches) = self.pending.remove(&t) {
                self.publish_tick(&batches, out);
            }
        }
    }

    fn publish_tick(&mut self, batches: &[Arc<TickBatch>], out: &mut Vec<Effect>) {
        #[derive(Default)]
        struct CellOut {
            frames: BytesMut,
            players: Vec<(EntityId, [f32; 3])>,
            gone: Vec<EntityId>,
        }
        let mut cells: FxHashMap<Cell, CellOut> = FxHashMap::default();
        let mut gained = Vec::new();
        let mut global = BytesMut::new();
        for b in batches {
            for ce in &b.cells {
                cells
                    .entry(ce.cell)
                    .or_default()
                    .frames
                    .extend_from_slice(ce.buf.as_bytes());
            }
            if let Some((g, _)) = &b.global {
                global.extend_from_slice(g.as_bytes());
            }
            for &(id, pos) in &b.positions {
                let old = self.local.get(id).map(|s| s.cell);
                let cell = self.local.place(id, pos);
                cells.entry(cell).or_default().players.push((id, pos));
                if old != Some(cell) {
                    self.see(cell, &mut gained, out);
                }
                if let Some(old) = old.filter(|&o| o != cell) {
                    // Those who see only the old cell learn it moved away.
                    cells.entry(old).or_default().players.push((id, pos));
                    self.unsee(old, out);
                }
            }
            for &id in &b.left {
                if let Some(s) = self.local.get(id) {
                    self.local.remove(id);
                    cells.entry(s.cell).or_default().gone.push(id);
                    self.unsee(s.cell, out);
                }
            }
        }
        for (cell, c) in cells {
            out.push(Effect::Publish(
                Topic::Cell(cell),
                wire::events(self.node, &c.players, &c.gone, &c.frames),
            ));
        }
        if !global.is_empty() {
            out.push(Effect::Publish(
                Topic::Global,
                wire::global(self.node, &global),
            ));
        }
        self.want(&gained, out);
    }

    fn want(&self, cells: &[Cell], out: &mut Vec<Effect>) {
        for chunk in cells.chunks(MAX_RECORDS) {
            out.push(Effect::Publish(
                Topic::Control,
                wire::want(self.node, chunk),
            ));
        }
    }

    /// A local player now sees the cells around `cell`: subscribe to those new to us.
    fn see(&mut self, cell: Cell, gained: &mut Vec<Cell>, out: &mut Vec<Effect>) {
        for c in around(cell) {
            let n = self.interest.entry(c).or_insert(0);
            *n += 1;
            if *n == 1 {
                out.push(Effect::Subscribe(c));
                gained.push(c);
            }
        }
    }

    /// A local player no longer sees the cells around `cell`: unsubscribe from those nobody
    /// sees now, and forget the remote players in them.
    fn unsee(&mut self, cell: Cell, out: &mut Vec<Effect>) {
        for c in around(cell) {
            if let Entry::Occupied(mut e) = self.interest.entry(c) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                    out.push(Effect::Unsubscribe(c));
                    for id in self.remote.members(c).to_vec() {
                        self.remote_gone(id);
                    }
                }
            }
        }
    }

    fn remote_gone(&mut self, id: EntityId) {
        if self.remote.remove(id) {
            self.inbound.players.insert(id, None);
        }
    }

    fn remote_at(&mut self, id: EntityId, pos: [f32; 3]) {
        let cell = self.remote.cell_of(pos[0], pos[1]);
        if self.sees(cell) {
            self.remote.place(id, pos);
            self.inbound.players.insert(id, Some(pos));
        } else {
            self.remote_gone(id);
        }
    }

    /// A message received on `topic` at `now`.
    pub fn remote(&mut self, topic: Topic, bytes: &Bytes, now: Instant, out: &mut Vec<Effect>) {
        let m = match wire::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counts.bad += 1;
                self.last_error = Some(e);
                return;
            }
        };
        if m.node == self.node {
            return;
        }
        // Another process's players carry its node in their ids: anything else is refused.
        let foreign = |id: &EntityId| node_of(*id) != m.node;
        let misplaced = !matches!(
            (m.kind, topic),
            (Kind::Events | Kind::Presence, Topic::Cell(_))
                | (Kind::Global, Topic::Global)
                | (Kind::Heartbeat | Kind::Bye | Kind::Want, Topic::Control)
        );
        if misplaced || m.players.iter().map(|p| &p.0).any(foreign) || m.gone.iter().any(foreign) {
            self.counts.bad += 1;
            self.last_error = Some(WireError::Invalid);
            return;
        }
        self.counts.received += 1;
        if m.kind != Kind::Bye && self.nodes.insert(m.node, now).is_none() {
            out.push(Effect::Note(format!("world process {:08x} joined", m.node)));
        }
        match m.kind {
            Kind::Events | Kind::Presence => {
                for &(id, pos) in &m.players {
                    self.remote_at(id, pos);
                }
                for &id in &m.gone {
                    self.remote_gone(id);
                }
                if let (Topic::Cell(cell), true) = (topic, m.count > 0) {
                    if self.sees(cell) {
                        // Copied (tens of bytes): a slice would keep the NATS client's whole
                        // read buffer alive for as long as the shards keep the tick.
                        self.inbound.cells.push(CellEvents {
                            cell,
                            buf: SendBuffer::from(Bytes::copy_from_slice(&m.frames)),
                            count: m.count,
                        });
                    }
                }
            }
            Kind::Global => {
                self.inbound.global.extend_from_slice(&m.frames);
                self.inbound.global_count += m.count;
            }
            Kind::Heartbeat => {}
            Kind::Bye => {
                self.forget_node(m.node);
                out.push(Effect::Note(format!("world process {:08x} left", m.node)));
            }
            Kind::Want => {
                for &c in &m.cells {
                    self.presence(c, out);
                }
            }
        }
    }

    /// Publishes where this process's players in `cell` are, if it has any there.
    fn presence(&self, cell: Cell, out: &mut Vec<Effect>) {
        let ids = self.local.members(cell);
        if ids.is_empty() {
            return;
        }
        let players: Vec<_> = ids
            .iter()
            .filter_map(|&id| Some((id, self.local.get(id)?.pos)))
            .collect();
        for chunk in players.chunks(MAX_RECORDS) {
            out.push(Effect::Publish(
                Topic::Cell(cell),
                wire::presence(self.node, chunk),
            ));
        }
    }

    fn forget_node(&mut self, node: u32) {
        self.nodes.remove(&node);
        let ids: Vec<EntityId> = self
            .remote
            .iter()
            .map(|(id, _)| id)
            .filter(|&id| node_of(id) == node)
            .collect();
        for id in ids {
            self.remote_gone(id);
        }
    }

    /// Every heartbeat period: says this process is alive, and forgets the processes not
    /// heard from within the timeout (their players leave the others' views).
    pub fn heartbeat(&mut self, now: Instant, out: &mut Vec<Effect>) {
        out.push(Effect::Publish(
            Topic::Control,
            wire::signal(self.node, Kind::Heartbeat),
        ));
        let silent: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(_, &t)| now.saturating_duration_since(t) > self.timeout)
            .map(|(&n, _)| n)
            .collect();
        for node in silent {
            self.forget_node(node);
            out.push(Effect::Note(format!(
                "world process {node:08x} silent for {:?}: its players are forgotten",
                self.timeout
            )));
        }
    }

    /// The bus is back (or connected for the first time): ask who is in every cell this
    /// process sees, and say where its own players are.
    pub fn reconnected(&mut self, out: &mut Vec<Effect>) {
        out.push(Effect::Publish(
            Topic::Control,
            wire::signal(self.node, Kind::Heartbeat),
        ));
        let cells: Vec<Cell> = self.interest.keys().copied().collect();
        self.want(&cells, out);
        let occupied: Vec<Cell> = self.local.occupied().collect();
        for c in occupied {
            self.presence(c, out);
        }
    }

    /// This process is leaving: the others forget its players at once.
    pub fn bye(&self) -> Effect {
        Effect::Publish(Topic::Control, wire::signal(self.node, Kind::Bye))
    }

    /// What arrived since the last call, as a batch for the shards ([`REMOTE_SHARD`], tick
    /// 0: delivered with their next tick); `None` if nothing did.
    pub fn take(&mut self) -> Option<TickBatch> {
        let inb = &mut self.inbound;
        if inb.players.is_empty() && inb.cells.is_empty() && inb.global.is_empty() {
            return None;
        }
        let mut batch = TickBatch {
            tick: 0,
            shard: REMOTE_SHARD,
            cells: std::mem::take(&mut inb.cells),
            ..TickBatch::default()
        };
        for (id, state) in inb.players.drain() {
            match state {
                Some(pos) => batch.positions.push((id, pos)),
                None => batch.left.push(id),
            }
        }
        if !inb.global.is_empty() {
            let g = inb.global.split().freeze();
            batch.global = Some((SendBuffer::from(g), std::mem::take(&mut inb.global_count)));
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CellEvents;

    const A: u32 = 1;
    const B: u32 = 2;

    fn id(node: u32, n: u64) -> EntityId {
        u64::from(node) << 32 | n
    }

    fn tick(n: u64, positions: Vec<(EntityId, [f32; 3])>, left: Vec<EntityId>) -> Arc<TickBatch> {
        Arc::new(TickBatch {
            tick: n,
            shard: 0,
            positions,
            left,
            ..TickBatch::default()
        })
    }

    fn subs(out: &[Effect]) -> Vec<Cell> {
        let mut v: Vec<Cell> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Subscribe(c) => Some(*c),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    }

    fn published(out: &[Effect]) -> Vec<(Topic, wire::Message)> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Publish(t, b) => Some((*t, wire::decode(b).unwrap())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_joining_player_subscribes_its_nine_cells_and_asks_who_is_there() {
        let mut b = Bridge::new(A, 1, 100.0, Duration::from_secs(3));
        let mut out = Vec::new();
        b.local(
            tick(1, vec![(id(A, 1), [150.0, 150.0, 0.0])], vec![]),
            &mut out,
        );
        assert_eq!(subs(&out), around((1, 1)).collect::<Vec<_>>());
        let p = published(&out);
        let want = p.iter().find(|(_, m)| m.kind == Kind::Want).unwrap();
        assert_eq!(want.1.cells.len(), 9);
        let ev = p.iter().find(|(t, _)| *t == Topic::Cell((1, 1))).unwrap();
        assert_eq!(ev.1.players, vec![(id(A, 1), [150.0, 150.0, 0.0])]);
        // A second player in the same cell subscribes nothing new.
        out.clear();
        b.local(
            tick(2, vec![(id(A, 2), [160.0, 150.0, 0.0])], vec![]),
            &mut out,
        );
        assert!(subs(&out).is_empty());
        assert_eq!(b.counts().cells, 9);
    }

    #[test]
    fn a_tick_waits_for_every_shard_and_merges_their_cells() {
        let mut b = Bridge::new(A, 2, 100.0, Duration::from_secs(3));
        let mut out = Vec::new();
        let frames = |n: u8| {
            let mut f = vec![28, 0, 0x02, 0x02];
            f.extend_from_slice(&[n; 24]);
            f
        };
        let batch = |shard, n| {
            Arc::new(TickBatch {
                tick: 5,
                shard,
                cells: vec![CellEvents {
                    cell: (0, 0),
                    buf: SendBuffer::from(Bytes::from(frames(n))),
                    count: 1,
                }],
                ..TickBatch::default()
            })
        };
        b.local(batch(0, 1), &mut out);
        assert!(out.is_empty(), "waits for the other shard");
        b.local(batch(1, 2), &mut out);
        let p = published(&out);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1.count, 2);
        assert_eq!(&p[0].1.frames[..], &[frames(1), frames(2)].concat()[..]);
    }

    #[test]
    fn remote_players_are_known_only_in_cells_we_see_and_forgotten_when_silent() {
        let mut b = Bridge::new(A, 1, 100.0, Duration::from_secs(3));
        let mut out = Vec::new();
        let t0 = Instant::now();
        b.local(
            tick(1, vec![(id(A, 1), [150.0, 150.0, 0.0])], vec![]),
            &mut out,
        );
        let near = wire::presence(B, &[(id(B, 7), [250.0, 250.0, 0.0])]);
        b.remote(Topic::Cell((2, 2)), &near, t0, &mut out);
        let far = wire::events(B, &[(id(B, 8), [950.0, 950.0, 0.0])], &[], &[]);
        b.remote(Topic::Cell((9, 9)), &far, t0, &mut out);
        let got = b.take().unwrap();
        assert_eq!(got.positions, vec![(id(B, 7), [250.0, 250.0, 0.0])]);
        assert!(got.left.is_empty());
        assert_eq!(got.shard, REMOTE_SHARD);
        // B goes silent: after the timeout its players leave.
        out.clear();
        b.heartbeat(t0 + Duration::from_secs(2), &mut out);
        assert!(b.take().is_none());
        b.heartbeat(t0 + Duration::from_secs(4), &mut out);
        assert_eq!(b.take().unwrap().left, vec![id(B, 7)]);
        assert_eq!(b.counts().nodes, 0);
    }

    #[test]
    fn moving_away_unsubscribes_and_forgets_what_was_there() {
        let mut b = Bridge::new(A, 1, 100.0, Duration::from_secs(3));
        let mut out = Vec::new();
        let t0 = Instant::now();
        b.local(
            tick(1, vec![(id(A, 1), [150.0, 150.0, 0.0])], vec![]),
            &mut out,
        );
        let there = wire::presence(B, &[(id(B, 7), [50.0, 50.0, 0.0])]);
        b.remote(Topic::Cell((0, 0)), &there, t0, &mut out);
        b.take();
        out.clear();
        b.local(
            tick(2, vec![(id(A, 1), [550.0, 550.0, 0.0])], vec![]),
            &mut out,
        );
        let unsubscribed = out
            .iter()
            .filter(|e| matches!(e, Effect::Unsubscribe(_)))
            .count();
        assert_eq!(unsubscribed, 9);
        assert_eq!(b.take().unwrap().left, vec![id(B, 7)]);
        // The move is published to the old cell too (its watchers see it go) and the new.
        let p = published(&out);
        for c in [(1, 1), (5, 5)] {
            assert!(p
                .iter()
                .any(|(t, m)| *t == Topic::Cell(c) && m.players.len() == 1));
        }
    }

    #[test]
    fn wants_are_answered_and_bad_messages_counted() {
        let mut b = Bridge::new(A, 1, 100.0, Duration::from_secs(3));
        let mut out = Vec::new();
        let t0 = Instant::now();
        b.local(
            tick(1, vec![(id(A, 1), [150.0, 150.0, 0.0])], vec![]),
            &mut out,
        );
        out.clear();
        b.remote(
            Topic::Control,
            &wire::want(B, &[(1, 1), (7, 7)]),
            t0,
            &mut out,
        );
        let p = published(&out);
        assert_eq!(p.len(), 1, "only the occupied cell is answered");
        assert_eq!(p[0].0, Topic::Cell((1, 1)));
        assert_eq!(p[0].1.kind, Kind::Presence);
        // Garbage, a player of another node, a message on the wrong subject.
        b.remote(
            Topic::Cell((1, 1)),
            &Bytes::from_static(b"hello"),
            t0,
            &mut out,
        );
        let stolen = wire::presence(B, &[(id(A, 9), [150.0, 150.0, 0.0])]);
        b.remote(Topic::Cell((1, 1)), &stolen, t0, &mut out);
        b.remote(Topic::Global, &wire::want(B, &[]), t0, &mut out);
        assert_eq!(b.counts().bad, 3);
    }
}
