//! The end of a tick: the frozen batch other shards receive, and the delivery of a tick's
//! buffers to this shard's players as slices.

use std::ops::Range;
use std::sync::Arc;

use zerocopy::little_endian::{F32, U64};

use super::{Core, Scratch, MOVED_LEN};
use crate::aoi::{around, Cell, EntityId};
use crate::packets::{Entered, Left};
use zerocast::packet::FixedPacket;
use zerocast::SendBuffer;

/// One cell's events of one tick of one shard: whole frames, back to back.
#[derive(Debug, Clone)]
pub struct CellEvents {
    /// The cell.
    pub cell: Cell,
    /// The frames.
    pub buf: SendBuffer,
    /// How many.
    pub count: u32,
}

/// What a shard publishes at the end of a tick: its events per cell, its global chat, and
/// where its players are (those that joined or moved, with their latest position; those
/// that left).
#[derive(Debug, Clone, Default)]
pub struct TickBatch {
    /// The tick's number.
    pub tick: u64,
    /// The shard that made it.
    pub shard: u32,
    /// The events, per cell.
    pub cells: Vec<CellEvents>,
    /// Global chat lines (whole frames), and how many.
    pub global: Option<(SendBuffer, u32)>,
    /// Players of the shard that joined or moved this tick, with their latest position.
    pub positions: Vec<(EntityId, [f32; 3])>,
    /// Players of the shard that left this tick.
    pub left: Vec<EntityId>,
}

/// One part of what a player receives at a tick: bytes `range` of the tick's shared buffer
/// `buffer` (an index into the slice [`Deliver::begin`] got).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Which shared buffer.
    pub buffer: usize,
    /// Which bytes of it: whole frames.
    pub range: Range<usize>,
}

/// Where a tick's output goes.
pub trait Deliver {
    /// The tick's buffers, by index: every shard's cells and global chat, and last this
    /// shard's private buffer (welcomes, enter and leave notices, refusals, pongs, laid out
    /// player after player). Called once per delivery, before any [`player`](Self::player).
    fn begin(&mut self, shared: &[SendBuffer]);

    /// What player `to` receives this tick, in order (never empty).
    fn player(&mut self, to: EntityId, parts: &[Part]);
}

impl Core {
    /// Ends tick `tick`: freezes this tick's events into a batch for the other shards (and
    /// for [`deliver`](Self::deliver)).
    pub fn end_tick(&mut self, tick: u64) -> TickBatch {
        let cells = self
            .building
            .drain()
            .filter(|(_, b)| b.count > 0)
            .map(|(cell, b)| CellEvents {
                cell,
                buf: SendBuffer::from(b.bytes.freeze()),
                count: b.count,
            })
            .collect();
        let global = (self.global.count > 0).then(|| {
            let g = std::mem::take(&mut self.global);
            (SendBuffer::from(g.bytes.freeze()), g.count)
        });
        let mut positions = Vec::new();
        for (&id, p) in &mut self.players {
            if std::mem::take(&mut p.moved) {
                positions.push((id, p.body.pos));
            }
        }
        TickBatch {
            tick,
            shard: self.shard,
            cells,
            global,
            positions,
            left: std::mem::take(&mut self.left),
        }
    }

    /// Takes the other shards' batches in: where their players are now, who left.
    fn apply(&mut self, remote: &TickBatch) {
        for &(id, pos) in &remote.positions {
            if !self.players.contains_key(&id) {
                self.cells.place(id, pos);
            }
        }
        for &id in &remote.left {
            if !self.players.contains_key(&id) {
                self.cells.remove(id);
            }
        }
    }

    /// Forgets another shard's players (that shard is gone): the players that saw them get
    /// `Left` at the next tick.
    pub fn drop_shard_players(&mut self, ids: impl IntoIterator<Item = EntityId>) {
        for id in ids {
            if !self.players.contains_key(&id) {
                self.cells.remove(id);
            }
        }
    }

    /// Delivers a tick to this shard's players: `own` is this shard's batch for it (from
    /// [`end_tick`](Self::end_tick)), `remote` the other shards' batches received since the
    /// last delivery.
    pub fn deliver(&mut self, own: &TickBatch, remote: &[Arc<TickBatch>], out: &mut impl Deliver) {
        for r in remote {
            if r.shard != self.shard {
                self.apply(r);
            }
        }
        let mut sc: Scratch = std::mem::take(&mut self.scratch);
        sc.shared.clear();
        sc.counts.clear();
        sc.by_cell.clear();
        sc.globals.clear();
        let batches = std::iter::once(own).chain(remote.iter().map(|r| &**r));
        for (i, b) in batches.enumerate() {
            for c in &b.cells {
                sc.by_cell.push((c.cell, sc.shared.len(), i == 0));
                sc.shared.push(c.buf.clone());
                sc.counts.push(c.count);
            }
            if let Some((g, n)) = &b.global {
                sc.globals.push(sc.shared.len());
                sc.shared.push(g.clone());
                sc.counts.push(*n);
            }
        }
        sc.by_cell.sort_unstable_by_key(|&(cell, ..)| cell);
        let private = sc.shared.len();
        sc.parts.clear();
        sc.spans.clear();
        sc.ids.clear();
        sc.ids.extend(self.players.keys().copied());
        let frame = MOVED_LEN as u32;
        for i in 0..sc.ids.len() {
            let id = sc.ids[i];
            let Some(cell) = self.cells.get(id).map(|s| s.cell) else {
                continue;
            };
            let first = sc.parts.len();
            let mut events = 0u64;
            // Before the slices: the welcome, then who came into view.
            let a = self.private.len();
            if let Some(p) = self.players.get_mut(&id) {
                self.private.extend_from_slice(&p.before);
                events += u64::from(std::mem::take(&mut p.before_n));
                p.before.clear();
            }
            events += self.refresh_view(id, cell, &mut sc.now, &mut sc.gone);
            push_part(&mut sc.parts, private, a..self.private.len());
            // This tick's events in the 3×3 cells, the player's own moves cut out.
            let Some(p) = self.players.get_mut(&id) else {
                continue;
            };
            for c in around(cell) {
                let from = sc.by_cell.partition_point(|&(k, ..)| k < c);
                for &(_, index, mine) in sc.by_cell[from..].iter().take_while(|&&(k, ..)| k == c) {
                    sc.cuts.clear();
                    if mine {
                        sc.cuts
                            .extend(p.own.iter().filter(|(k, _)| *k == c).map(|&(_, at)| at));
                        sc.cuts.sort_unstable();
                    }
                    events += u64::from(sc.counts[index]) - sc.cuts.len() as u64;
                    let mut at = 0usize;
                    for &cut in &sc.cuts {
                        push_part(&mut sc.parts, index, at..cut as usize);
                        at = (cut + frame) as usize;
                    }
                    push_part(&mut sc.parts, index, at..sc.shared[index].len());
                }
            }
            p.own.clear();
            // After them: who left the view, then refusals and pongs.
            let b = self.private.len();
            for &e in &sc.gone {
                Left { id: U64::new(e) }.encode_into(&mut self.private);
            }
            events += sc.gone.len() as u64;
            self.private.extend_from_slice(&p.after);
            events += u64::from(std::mem::take(&mut p.after_n));
            p.after.clear();
            push_part(&mut sc.parts, private, b..self.private.len());
            // Last, global chat: a client that reads up to a global line has everything the
            // tick brought it before that line.
            for &g in &sc.globals {
                events += u64::from(sc.counts[g]);
                push_part(&mut sc.parts, g, 0..sc.shared[g].len());
            }
            if sc.parts.len() > first {
                sc.spans.push((id, first..sc.parts.len()));
                self.counts.deliveries += events;
                self.counts.flushes += 1;
            }
        }
        sc.shared
            .push(SendBuffer::from(self.private.split().freeze()));
        out.begin(&sc.shared);
        for (id, span) in &sc.spans {
            out.player(*id, &sc.parts[span.clone()]);
        }
        sc.shared.clear();
        self.scratch = sc;
        self.cells.clear_changes();
        self.counts.ticks += 1;
    }

    /// Brings player `id`'s view up to date, writing `Entered` for players that came into
    /// its 3×3 cells since its last tick into the private buffer and listing in `gone` those
    /// that went. Only players whose cells had someone come or go look. Returns the frames
    /// written.
    fn refresh_view(
        &mut self,
        id: EntityId,
        cell: Cell,
        now: &mut Vec<EntityId>,
        gone: &mut Vec<EntityId>,
    ) -> u64 {
        gone.clear();
        let Some(p) = self.players.get_mut(&id) else {
            return 0;
        };
        if !p.fresh && !self.cells.changed_near(cell) {
            return 0;
        }
        p.fresh = false;
        now.clear();
        self.cells.near_ids(cell, id, now);
        now.sort_unstable();
        let mut written = 0;
        let (mut i, mut j) = (0, 0);
        while i < now.len() || j < p.visible.len() {
            let (n, v) = (now.get(i).copied(), p.visible.get(j).copied());
            match (n, v) {
                (Some(n), Some(v)) if n == v => {
                    i += 1;
                    j += 1;
                }
                (Some(n), Some(v)) if n > v => {
                    gone.push(v);
                    j += 1;
                }
                (Some(n), _) => {
                    if let Some(s) = self.cells.get(n) {
                        let [x, y, z] = s.pos;
                        Entered {
                            id: U64::new(n),
                            x: F32::new(x),
                            y: F32::new(y),
                            z: F32::new(z),
                        }
                        .encode_into(&mut self.private);
                        written += 1;
                    }
                    i += 1;
                }
                (None, Some(v)) => {
                    gone.push(v);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        p.visible.clear();
        p.visible.extend_from_slice(now);
        written
    }
}

/// Adds bytes `range` of buffer `buffer` to `parts`, if any.
fn push_part(parts: &mut Vec<Part>, buffer: usize, range: Range<usize>) {
    if !range.is_empty() {
        parts.push(Part { buffer, range });
    }
}
