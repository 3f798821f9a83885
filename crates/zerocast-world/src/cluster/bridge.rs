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

use super::wire::{self, Kind, Origin, WireError, MAX_RECORDS};
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
    /// A zone's subject: bundles of its cells' events (see [`ZONE`]).
    Zone(Cell),
    /// Global chat.
    Global,
    /// Heartbeats, goodbyes and wants: every process listens.
    Control,
}

/// Which subscription a message came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// A cell's, a region's or a zone's.
    Cells,
    /// Global chat's.
    Global,
    /// The control subject's.
    Control,
}

/// Cells are grouped in square regions this many cells wide: a process that sees most of a
/// region subscribes to the whole region with one wildcard rather than cell by cell.
pub const REGION: i32 = 8;
/// A region is subscribed whole from this many wanted cells (half of it) ...
const WHOLE_FROM: u32 = (REGION * REGION / 2) as u32;
/// ... and cell by cell again below this many (a margin, so that a player pacing at the
/// threshold does not flip it every tick).
const CELLS_BELOW: u32 = WHOLE_FROM / 2;

/// The region holding `cell`.
pub fn region_of((x, y): Cell) -> Cell {
    (x.div_euclid(REGION), y.div_euclid(REGION))
}

/// Cells are grouped in square zones this many cells wide (8 × 8 regions): a process whose
/// players made events in [`BUNDLE_FROM`] cells or more of one zone in a tick publishes them
/// as one message on the zone's subject, and every process listens to each zone it sees a
/// cell of. On the bus the cost is per message, not per byte: a process with players all
/// over the map has events in hundreds of cells a tick, and one message per cell made the
/// bus threads cost as much as the game. A zone's bundle may carry cells a listener does not
/// see: it skips them (a zone is at most 64 × 64 cells of one tick's events).
pub const ZONE: i32 = 64;
/// A tick's events in this many cells of one zone or more go out as one bundle.
pub const BUNDLE_FROM: usize = 2;

/// The zone holding `cell`.
pub fn zone_of((x, y): Cell) -> Cell {
    (x.div_euclid(ZONE), y.div_euclid(ZONE))
}

/// A subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sub {
    /// One cell's subject.
    Cell(Cell),
    /// Every cell of a region (see [`REGION`]).
    Region(Cell),
    /// A zone's bundles (see [`ZONE`]).
    Zone(Cell),
}

/// What the bridge asks the bus to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish these bytes.
    Publish(Topic, Bytes),
    /// Start receiving a cell's (or a region's) messages.
    Subscribe(Sub),
    /// Stop receiving them.
    Unsubscribe(Sub),
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
    /// Cells this process's players see.
    pub cells: u64,
    /// Subscriptions to cells, regions and zones.
    pub subscriptions: u64,
    /// Messages received twice (through a cell's and its region's subscription) and used
    /// once, or older than the last 1,024 of their sender's.
    pub duplicates: u64,
    /// Bundles received (counted in `received` too): one message with a tick's events in
    /// several cells of a zone.
    pub bundles: u64,
}

/// The last [`SeqWindow::SPAN`] message numbers seen from one process.
#[derive(Default)]
struct SeqWindow {
    max: u64,
    bits: [u64; 16],
}

impl SeqWindow {
    const SPAN: u64 = 1024;

    fn bit(seq: u64) -> (usize, u64) {
        (((seq / 64) % 16) as usize, 1u64 << (seq % 64))
    }

    /// True the first time `seq` is seen (within the window).
    fn first(&mut self, seq: u64) -> bool {
        if seq > self.max {
            if seq - self.max >= Self::SPAN {
                self.bits = [0; 16];
            } else {
                for s in self.max + 1..seq {
                    let (w, b) = Self::bit(s);
                    self.bits[w] &= !b;
                }
            }
            self.max = seq;
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            return true;
        }
        if self.max - seq >= Self::SPAN {
            return false;
        }
        let (w, b) = Self::bit(seq);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

/// A region's wanted cells, and whether it is subscribed whole.
#[derive(Default, Clone, Copy)]
struct RegionState {
    wanted: u32,
    whole: bool,
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
    /// How many of this process's players see each cell.
    interest: FxHashMap<Cell, u32>,
    /// How the cells seen are subscribed to, by region.
    regions: FxHashMap<Cell, RegionState>,
    /// How many cells seen each zone holds (its subscription lives while that is not 0).
    zones: FxHashMap<Cell, u32>,
    subscriptions: u64,
    /// This process's next message number.
    seq: u64,
    /// The message numbers seen from each other process.
    seen: FxHashMap<u32, SeqWindow>,
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
            regions: FxHashMap::default(),
            zones: FxHashMap::default(),
            subscriptions: 0,
            seq: 0,
            seen: FxHashMap::default(),
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
            subscriptions: self.subscriptions,
            ..self.counts
        }
    }

    /// The origin of this process's next message.
    fn origin(&mut self) -> Origin {
        self.seq += 1;
        Origin {
            node: self.node,
            seq: self.seq,
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
        let mut zones: FxHashMap<Cell, Vec<(Cell, Bytes)>> = FxHashMap::default();
        for (cell, c) in cells {
            let from = self.origin();
            let part = wire::events(from, cell, &c.players, &c.gone, &c.frames);
            zones.entry(zone_of(cell)).or_default().push((cell, part));
        }
        for (zone, parts) in zones {
            if parts.len() < BUNDLE_FROM {
                for (cell, part) in parts {
                    out.push(Effect::Publish(Topic::Cell(cell), part));
                }
                continue;
            }
            let parts: Vec<Bytes> = parts.into_iter().map(|(_, p)| p).collect();
            for chunk in parts.chunks(MAX_RECORDS) {
                let from = self.origin();
                out.push(Effect::Publish(
                    Topic::Zone(zone),
                    wire::bundle(from, zone, chunk),
                ));
            }
        }
        if !global.is_empty() {
            let from = self.origin();
            out.push(Effect::Publish(Topic::Global, wire::global(from, &global)));
        }
        self.want(&gained, out);
    }

    fn want(&mut self, cells: &[Cell], out: &mut Vec<Effect>) {
        for chunk in cells.chunks(MAX_RECORDS) {
            let from = self.origin();
            out.push(Effect::Publish(Topic::Control, wire::want(from, chunk)));
        }
    }

    fn subscribe(&mut self, sub: Sub, out: &mut Vec<Effect>) {
        self.subscriptions += 1;
        out.push(Effect::Subscribe(sub));
    }

    fn unsubscribe(&mut self, sub: Sub, out: &mut Vec<Effect>) {
        self.subscriptions -= 1;
        out.push(Effect::Unsubscribe(sub));
    }

    /// The wanted cells of region `r`.
    fn wanted_in(&self, r: Cell) -> Vec<Cell> {
        let (x0, y0) = (r.0 * REGION, r.1 * REGION);
        (0..REGION)
            .flat_map(|dx| (0..REGION).map(move |dy| (x0 + dx, y0 + dy)))
            .filter(|c| self.interest.contains_key(c))
            .collect()
    }

    /// Cell `c` is newly seen: subscribe to it, or to its whole region once most of the
    /// region is seen (the new subscription first, then the old ones go: no gap; what
    /// arrives twice meanwhile is used once).
    fn cell_gained(&mut self, c: Cell, out: &mut Vec<Effect>) {
        let z = self.zones.entry(zone_of(c)).or_insert(0);
        *z += 1;
        if *z == 1 {
            self.subscribe(Sub::Zone(zone_of(c)), out);
        }
        let r = region_of(c);
        let mut st = self.regions.get(&r).copied().unwrap_or_default();
        st.wanted += 1;
        if st.whole {
        } else if st.wanted >= WHOLE_FROM {
            st.whole = true;
            self.subscribe(Sub::Region(r), out);
            for old in self.wanted_in(r).into_iter().filter(|&o| o != c) {
                self.unsubscribe(Sub::Cell(old), out);
            }
        } else {
            self.subscribe(Sub::Cell(c), out);
        }
        self.regions.insert(r, st);
    }

    /// Cell `c` is no longer seen (already out of `interest`).
    fn cell_lost(&mut self, c: Cell, out: &mut Vec<Effect>) {
        if let Entry::Occupied(mut z) = self.zones.entry(zone_of(c)) {
            *z.get_mut() -= 1;
            if *z.get() == 0 {
                z.remove();
                self.unsubscribe(Sub::Zone(zone_of(c)), out);
            }
        }
        let r = region_of(c);
        let Some(mut st) = self.regions.get(&r).copied() else {
            return;
        };
        st.wanted = st.wanted.saturating_sub(1);
        if !st.whole {
            self.unsubscribe(Sub::Cell(c), out);
        } else if st.wanted < CELLS_BELOW {
            st.whole = false;
            for keep in self.wanted_in(r) {
                self.subscribe(Sub::Cell(keep), out);
            }
            self.unsubscribe(Sub::Region(r), out);
        }
        if st.wanted == 0 {
            self.regions.remove(&r);
        } else {
            self.regions.insert(r, st);
        }
    }

    /// A local player now sees the cells around `cell`: subscribe to those new to us.
    fn see(&mut self, cell: Cell, gained: &mut Vec<Cell>, out: &mut Vec<Effect>) {
        for c in around(cell) {
            let n = self.interest.entry(c).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.cell_gained(c, out);
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
                    self.cell_lost(c, out);
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

    /// A message received through `route` at `now`.
    pub fn remote(&mut self, route: Route, bytes: &Bytes, now: Instant, out: &mut Vec<Effect>) {
        let (m, parts) = match Self::decode(bytes) {
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
            (m.kind, route),
            (Kind::Events | Kind::Presence | Kind::Bundle, Route::Cells)
                | (Kind::Global, Route::Global)
                | (Kind::Heartbeat | Kind::Bye | Kind::Want, Route::Control)
        );
        let forged = |m: &wire::Message| {
            m.players.iter().map(|p| &p.0).any(foreign) || m.gone.iter().any(foreign)
        };
        let forged_part = parts.iter().any(|p| p.node != m.node || forged(p));
        if misplaced || forged(&m) || forged_part {
            self.counts.bad += 1;
            self.last_error = Some(WireError::Invalid);
            return;
        }
        if !self.seen.entry(m.node).or_default().first(m.seq) {
            self.counts.duplicates += 1;
            return;
        }
        self.counts.received += 1;
        if m.kind != Kind::Bye && self.nodes.insert(m.node, now).is_none() {
            out.push(Effect::Note(format!("world process {:08x} joined", m.node)));
        }
        match m.kind {
            Kind::Events | Kind::Presence => self.cell_news(&m),
            Kind::Bundle => {
                self.counts.bundles += 1;
                for p in &parts {
                    self.cell_news(p);
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

    /// Decodes a message, and a bundle's parts (every one an events message, or the whole
    /// bundle is refused).
    fn decode(bytes: &Bytes) -> Result<(wire::Message, Vec<wire::Message>), WireError> {
        let m = wire::decode(bytes)?;
        let mut parts = Vec::with_capacity(m.parts.len());
        for p in &m.parts {
            let p = wire::decode(p)?;
            if p.kind != Kind::Events {
                return Err(WireError::Invalid);
            }
            parts.push(p);
        }
        Ok((m, parts))
    }

    /// An events or presence message about one cell: where its players are now, who left,
    /// and the frames for the players who see it (none if this process sees none of it).
    fn cell_news(&mut self, m: &wire::Message) {
        for &(id, pos) in &m.players {
            self.remote_at(id, pos);
        }
        for &id in &m.gone {
            self.remote_gone(id);
        }
        if m.count > 0 && self.sees(m.cell) {
            // Copied (tens of bytes): a slice would keep the NATS client's whole read buffer
            // alive for as long as the shards keep the tick.
            self.inbound.cells.push(CellEvents {
                cell: m.cell,
                buf: SendBuffer::from(Bytes::copy_from_slice(&m.frames)),
                count: m.count,
            });
        }
    }

    /// Publishes where this process's players in `cell` are, if it has any there.
    fn presence(&mut self, cell: Cell, out: &mut Vec<Effect>) {
        let ids = self.local.members(cell);
        if ids.is_empty() {
            return;
        }
        let players: Vec<_> = ids
            .iter()
            .filter_map(|&id| Some((id, self.local.get(id)?.pos)))
            .collect();
        for chunk in players.chunks(MAX_RECORDS) {
            let from = self.origin();
            out.push(Effect::Publish(
                Topic::Cell(cell),
                wire::presence(from, cell, chunk),
            ));
        }
    }

    fn forget_node(&mut self, node: u32) {
        self.nodes.remove(&node);
        self.seen.remove(&node);
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
        let from = self.origin();
        out.push(Effect::Publish(
            Topic::Control,
            wire::signal(from, Kind::Heartbeat),
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
        let from = self.origin();
        out.push(Effect::Publish(
            Topic::Control,
            wire::signal(from, Kind::Heartbeat),
        ));
        let cells: Vec<Cell> = self.interest.keys().copied().collect();
        self.want(&cells, out);
        let occupied: Vec<Cell> = self.local.occupied().collect();
        for c in occupied {
            self.presence(c, out);
        }
    }

    /// This process is leaving: the others forget its players at once.
    pub fn bye(&mut self) -> Effect {
        let from = self.origin();
        Effect::Publish(Topic::Control, wire::signal(from, Kind::Bye))
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

    /// Message `seq` of process B.
    fn from_b(seq: u64) -> Origin {
        Origin { node: B, seq }
    }

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

    /// A whole 28-byte frame of packet id 0x0202 (`Moved`) filled with `n`.
    fn moved_frame(n: u8) -> Vec<u8> {
        let mut f = vec![28, 0, 0x02, 0x02];
        f.extend_from_slice(&[n; 24]);
        f
    }

    fn subs(out: &[Effect]) -> Vec<Cell> {
        let mut v: Vec<Cell> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Subscribe(Sub::Cell(c)) => Some(*c),
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
        let frames = moved_frame;
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
        let near = wire::presence(from_b(1), (2, 2), &[(id(B, 7), [250.0, 250.0, 0.0])]);
        b.remote(Route::Cells, &near, t0, &mut out);
        let far = wire::events(
            from_b(2),
            (9, 9),
            &[(id(B, 8), [950.0, 950.0, 0.0])],
            &[],
            &[],
        );
        b.remote(Route::Cells, &far, t0, &mut out);
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
        let there = wire::presence(from_b(1), (0, 0), &[(id(B, 7), [50.0, 50.0, 0.0])]);
        b.remote(Route::Cells, &there, t0, &mut out);
        b.take();
        out.clear();
        b.local(
            tick(2, vec![(id(A, 1), [550.0, 550.0, 0.0])], vec![]),
            &mut out,
        );
        let unsubscribed = out
            .iter()
            .filter(|e| matches!(e, Effect::Unsubscribe(Sub::Cell(_))))
            .count();
        assert_eq!(unsubscribed, 9);
        assert_eq!(b.take().unwrap().left, vec![id(B, 7)]);
        // The move is published to the old cell too (its watchers see it go) and the new:
        // two cells of one zone, so in one bundle.
        let p = published(&out);
        let (topic, bundle) = p.iter().find(|(_, m)| m.kind == Kind::Bundle).unwrap();
        assert_eq!(*topic, Topic::Zone((0, 0)));
        let parts: Vec<_> = bundle
            .parts
            .iter()
            .map(|b| wire::decode(b).unwrap())
            .collect();
        for c in [(1, 1), (5, 5)] {
            assert!(parts.iter().any(|m| m.cell == c && m.players.len() == 1));
        }
    }

    /// A tick's events in three cells: two of zone (0, 0) go as one bundle on its subject,
    /// the lone one of zone (1, 0) on its cell's; a listener takes from the bundle only the
    /// cells it sees, and refuses whole a bundle with a forged part.
    #[test]
    fn a_zone_s_cells_go_as_one_bundle_and_listeners_skip_what_they_do_not_see() {
        let mut a = Bridge::new(A, 1, 100.0, Duration::from_secs(3));
        let mut out = Vec::new();
        let frame = |n: u8| SendBuffer::from(Bytes::from(moved_frame(n)));
        let (near, far, other) = ((1, 1), (3, 1), (70, 0));
        let cells = [near, far, other]
            .iter()
            .enumerate()
            .map(|(i, &cell)| CellEvents {
                cell,
                buf: frame(i as u8),
                count: 1,
            })
            .collect();
        let positions = vec![
            (id(A, 1), [150.0, 150.0, 0.0]),
            (id(A, 2), [350.0, 150.0, 0.0]),
            (id(A, 3), [7050.0, 50.0, 0.0]),
        ];
        let batch = TickBatch {
            tick: 1,
            cells,
            positions,
            ..TickBatch::default()
        };
        a.local(Arc::new(batch), &mut out);
        let bytes_on = |topic| {
            out.iter()
                .find_map(|e| match e {
                    Effect::Publish(t, b) if *t == topic => Some(b.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let bundle = bytes_on(Topic::Zone((0, 0)));
        let lone = wire::decode(&bytes_on(Topic::Cell(other))).unwrap();
        assert_eq!((lone.kind, lone.count), (Kind::Events, 1));
        let m = wire::decode(&bundle).unwrap();
        assert_eq!((m.kind, m.parts.len()), (Kind::Bundle, 2));
        assert!(!published(&out)
            .iter()
            .any(|(t, _)| matches!(t, Topic::Cell(c) if *c == near || *c == far)));
        // B's player at (150, 150) sees cells 0..=2 across: `near`, not `far`.
        let mut b = Bridge::new(B, 1, 100.0, Duration::from_secs(3));
        let t0 = Instant::now();
        b.local(
            tick(1, vec![(id(B, 1), [150.0, 150.0, 0.0])], vec![]),
            &mut out,
        );
        b.remote(Route::Cells, &bundle, t0, &mut out);
        let got = b.take().unwrap();
        assert_eq!(got.positions, vec![(id(A, 1), [150.0, 150.0, 0.0])]);
        assert_eq!(got.cells.len(), 1);
        assert_eq!(got.cells[0].cell, near);
        assert_eq!(got.cells[0].buf.as_bytes(), frame(0).as_bytes());
        // A bundle from A carrying a part that claims to be another process's.
        let forged_part = wire::events(from_b(1), near, &[], &[], &[]);
        let honest_part = wire::events(Origin { node: A, seq: 90 }, near, &[], &[], &[]);
        let forged = wire::bundle(
            Origin { node: A, seq: 91 },
            (0, 0),
            &[honest_part, forged_part],
        );
        b.remote(Route::Cells, &forged, t0, &mut out);
        assert_eq!(b.counts().bad, 1);
        assert!(b.take().is_none());
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
        let want = wire::want(from_b(1), &[(1, 1), (7, 7)]);
        b.remote(Route::Control, &want, t0, &mut out);
        let p = published(&out);
        assert_eq!(p.len(), 1, "only the occupied cell is answered");
        assert_eq!(p[0].0, Topic::Cell((1, 1)));
        assert_eq!(p[0].1.kind, Kind::Presence);
        // Garbage, a player of another node, a message on the wrong subject.
        b.remote(Route::Cells, &Bytes::from_static(b"hello"), t0, &mut out);
        let stolen = wire::presence(from_b(2), (1, 1), &[(id(A, 9), [150.0, 150.0, 0.0])]);
        b.remote(Route::Cells, &stolen, t0, &mut out);
        b.remote(Route::Global, &wire::want(from_b(3), &[]), t0, &mut out);
        assert_eq!(b.counts().bad, 3);
        // A message that comes twice (a cell's and its region's subscription) is used once.
        let again = wire::want(from_b(4), &[(1, 1)]);
        out.clear();
        b.remote(Route::Control, &again, t0, &mut out);
        b.remote(Route::Control, &again, t0, &mut out);
        assert_eq!(published(&out).len(), 1);
        assert_eq!(b.counts().duplicates, 1);
    }
}

#[cfg(test)]
mod region_tests {
    use super::*;

    fn tick(n: u64, positions: Vec<(EntityId, [f32; 3])>) -> Arc<TickBatch> {
        Arc::new(TickBatch {
            tick: n,
            positions,
            ..TickBatch::default()
        })
    }

    /// The subscriptions the effects leave, replayed.
    fn replay(subs: &mut std::collections::HashSet<Sub>, out: &[Effect]) {
        for e in out {
            match e {
                Effect::Subscribe(s) => assert!(subs.insert(*s), "{s:?} twice"),
                Effect::Unsubscribe(s) => assert!(subs.remove(s), "{s:?} not held"),
                _ => {}
            }
        }
    }

    /// Every seen cell is covered by exactly one subscription, its own or its region's;
    /// nothing else is subscribed; a region goes whole once most of it is seen, and back.
    #[test]
    fn a_crowded_region_is_one_wildcard_and_a_sparse_one_is_cell_by_cell() {
        let mut b = Bridge::new(1, 1, 100.0, Duration::from_secs(3));
        let mut subs = std::collections::HashSet::new();
        let mut out = Vec::new();
        let check = |b: &Bridge, subs: &std::collections::HashSet<Sub>| {
            for &c in b.interest.keys() {
                let own = subs.contains(&Sub::Cell(c));
                let whole = subs.contains(&Sub::Region(region_of(c)));
                assert!(own ^ whole, "{c:?}: cell {own} region {whole}");
                assert!(subs.contains(&Sub::Zone(zone_of(c))), "{c:?}: its zone");
            }
            for s in subs {
                match *s {
                    Sub::Cell(c) => assert!(b.sees(c), "{c:?} subscribed, not seen"),
                    Sub::Region(r) => assert!(b.wanted_in(r).len() as u32 >= CELLS_BELOW),
                    Sub::Zone(z) => assert!(b.interest.keys().any(|&c| zone_of(c) == z)),
                }
            }
            assert_eq!(b.counts().subscriptions, subs.len() as u64);
        };
        // Players one by one across region (0, 0): cells 0..8 wide, 100 units each.
        let mut n = 0;
        for gx in 0..4 {
            for gy in 0..4 {
                n += 1;
                let pos = [gx as f32 * 200.0 + 50.0, gy as f32 * 200.0 + 50.0, 0.0];
                b.local(tick(n, vec![(n, pos)]), &mut out);
                replay(&mut subs, &out);
                out.clear();
                check(&b, &subs);
            }
        }
        assert!(subs.contains(&Sub::Region((0, 0))), "{subs:?}");
        // They all walk far away, one by one: the region goes back to cells, then nothing.
        for id in 1..=n {
            let pos = [5000.0 + id as f32, 5000.0, 0.0];
            b.local(tick(n + id, vec![(id, pos)]), &mut out);
            replay(&mut subs, &out);
            out.clear();
            check(&b, &subs);
        }
        assert!(!subs.iter().any(|s| matches!(s, Sub::Region((0, 0)))));
        assert!(subs.iter().all(|s| match *s {
            Sub::Cell(c) => c.0 >= 49,
            Sub::Region(r) => r.0 >= 6,
            Sub::Zone(z) => z == (0, 0),
        }));
    }

    #[test]
    fn the_sequence_window_takes_each_number_once_in_any_order() {
        let mut w = SeqWindow::default();
        assert!(w.first(5));
        assert!(w.first(3), "an earlier number, late");
        assert!(!w.first(3) && !w.first(5));
        assert!(w.first(2000));
        assert!(!w.first(5), "older than the window");
        assert!(w.first(1999) && !w.first(1999));
    }
}
