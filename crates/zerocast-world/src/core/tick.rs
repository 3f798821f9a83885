//! The end of a tick: the frozen batch other shards receive, and the delivery of a tick's
//! buffers to this shard's players as slices.

use std::ops::Range;
use std::sync::Arc;

use bytes::BytesMut;
use zerocopy::little_endian::{F32, U64};

use super::history::History;
use super::{Core, Player, Scratch, MOVED_LEN};
use crate::aoi::{around, Cell, Cells, EntityId};
use crate::packets::{Entered, Left, Moved};
use zerocast::frame::HEADER_LEN;
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
    /// The tick's buffers, by index: every shard's global chat lines, then the tick's buffer
    /// (the neighbourhoods' events and the players' own frames). Called once per delivery,
    /// before any [`player`](Self::player).
    fn begin(&mut self, shared: &[SendBuffer]);

    /// What player `to` receives this tick, in order (never empty).
    fn player(&mut self, to: EntityId, parts: &[Part]);
}

impl Core {
    /// Ends tick `tick`: freezes this tick's events into a batch for the other shards (and
    /// for [`deliver`](Self::deliver)).
    pub fn end_tick(&mut self, tick: u64) -> TickBatch {
        self.generation += 1;
        // Changes from now on belong to the next tick; the other shards' batches of this one,
        // applied at delivery, to this one.
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

    /// Delivers a tick: `own` is this shard's batch for it (from
    /// [`end_tick`](Self::end_tick)), `remote` the other shards' batches received since the
    /// last delivery.
    ///
    /// With `stride` 1 every player receives the tick. With a larger stride (a world over
    /// capacity, [`WorldConfig::delivery_stride`](crate::WorldConfig::delivery_stride)) each
    /// player receives every `stride`-th tick, the players spread over the ticks by id, and
    /// then the events of every tick since its last delivery: the writes per tick shrink by
    /// the stride and no event is lost.
    ///
    /// Players in the same cell (and due the same window of ticks) see the same 3×3 cells:
    /// their neighbourhood's events, every shard's, are copied once, back to back, into the
    /// tick's buffer, and each of them gets that range with its own moves cut out. Its
    /// private frames (welcome, enter and leave notices, refusals, pongs) go into the same
    /// buffer just before and after: a player's write is a few ranges of one buffer, and the
    /// global chat lines.
    pub fn deliver(
        &mut self,
        own: Arc<TickBatch>,
        remote: &[Arc<TickBatch>],
        stride: u32,
        out: &mut impl Deliver,
    ) {
        let gen = self.generation;
        for r in remote {
            if r.shard != self.shard {
                self.apply(r);
            }
        }
        let stride = u64::from(stride.max(1));
        let mut batches = Vec::with_capacity(1 + remote.len());
        batches.push(own);
        batches.extend(remote.iter().filter(|r| r.shard != self.shard).cloned());
        self.history.push(gen, batches);
        if let Some(upto) = gen.checked_sub(2 * stride + 1) {
            self.history.forget_upto(upto);
        }
        let mut sc: Scratch = std::mem::take(&mut self.scratch);
        sc.shared.clear();
        sc.global_counts.clear();
        let mut global_gens = Vec::new();
        for (g, bs) in self.history.ticks() {
            for b in bs {
                if let Some((buf, n)) = &b.global {
                    sc.shared.push(buf.clone());
                    sc.global_counts.push(*n);
                    global_gens.push(*g);
                }
            }
        }
        let tick_buf = sc.shared.len();
        // The players due: those whose turn it is, and any that waited a whole stride (the
        // stride changed) or just joined.
        sc.due.clear();
        for (&id, p) in &self.players {
            let turn = gen % stride == phase(id) % stride;
            if turn || p.fresh || gen - p.last >= stride {
                if let Some(s) = self.cells.get(id) {
                    sc.due.push((s.cell, p.last, id));
                }
            }
        }
        sc.due.sort_unstable();
        sc.parts.clear();
        sc.spans.clear();
        let buf = &mut self.out;
        let mut g = 0;
        while g < sc.due.len() {
            let (cell, since, _) = sc.due[g];
            let end = g + sc.due[g..].partition_point(|&(c, s, _)| (c, s) == (cell, since));
            // The neighbourhood over the window, once for every player of the group: every
            // event of its 3×3 cells since the group's last delivery.
            sc.segments.clear();
            for k in around(cell) {
                for (tg, ti, bi, ci) in self.history.since(k, since) {
                    sc.segments.push((tg, k, ti, bi, ci, 0));
                }
            }
            let nb_start = buf.len();
            // A window of one or two ticks holds a mover about once (moves come at most as
            // often as ticks, and a tick keeps one position per mover): copied whole. A longer
            // one (a player written every few ticks, over capacity) keeps each mover's
            // latest position only.
            let conflate = gen - since > 2;
            let (nb_events, superseded) = if conflate {
                lay_out_latest(&self.history, &mut sc, buf)
            } else {
                let mut n = 0u64;
                for seg in &mut sc.segments {
                    let ce = self.history.events(seg.2, seg.3, seg.4);
                    seg.5 = buf.len();
                    buf.extend_from_slice(ce.buf.as_bytes());
                    n += u64::from(ce.count);
                }
                (n, 0)
            };
            let nb_end = buf.len();
            let changed = self.cells.changed_near(cell, since);
            let mut globals_events = 0u64;
            for (gi, &tg) in global_gens.iter().enumerate() {
                if tg > since {
                    globals_events += u64::from(sc.global_counts[gi]);
                }
            }
            for &(_, _, id) in &sc.due[g..end] {
                let Some(p) = self.players.get_mut(&id) else {
                    continue;
                };
                p.last = gen;
                let first = sc.parts.len();
                let mut events = 0u64;
                // Before the neighbourhood: the welcome, then who came into view.
                let a = buf.len();
                buf.extend_from_slice(&p.before);
                p.before.clear();
                events += u64::from(std::mem::take(&mut p.before_n));
                if changed || p.fresh {
                    p.fresh = false;
                    events +=
                        refresh_view(&self.cells, id, cell, p, buf, &mut sc.now, &mut sc.gone);
                } else {
                    sc.gone.clear();
                }
                push_part(&mut sc.parts, tick_buf, a..buf.len());
                // The neighbourhood, the player's own moves cut out.
                sc.cuts.clear();
                if conflate {
                    let from = sc.own_at.partition_point(|&(m, _)| m < id);
                    let own = sc.own_at[from..].iter().take_while(|&&(m, _)| m == id);
                    sc.cuts.extend(own.map(|&(_, at)| at));
                } else {
                    for &(og, k, at) in &p.own {
                        let seg = sc
                            .segments
                            .iter()
                            .find(|s| s.0 == og && s.1 == k && s.3 == 0);
                        if let Some(&(.., start)) = seg {
                            sc.cuts.push(start + at as usize);
                        }
                    }
                    sc.cuts.sort_unstable();
                }
                // Moves made since this tick ended (while its delivery waited for the other
                // shards' batches) belong to the next tick's batch: their cuts stay.
                p.own.retain(|&(og, ..)| og > gen);
                events += nb_events - sc.cuts.len() as u64;
                self.counts.superseded += superseded;
                let mut at = nb_start;
                for &cut in &sc.cuts {
                    push_part(&mut sc.parts, tick_buf, at..cut);
                    at = cut + MOVED_LEN;
                }
                push_part(&mut sc.parts, tick_buf, at..nb_end);
                // After it: who left the view, then refusals and pongs.
                let b = buf.len();
                for &e in &sc.gone {
                    Left { id: U64::new(e) }.encode_into(&mut *buf);
                }
                events += sc.gone.len() as u64;
                buf.extend_from_slice(&p.after);
                p.after.clear();
                events += u64::from(std::mem::take(&mut p.after_n));
                push_part(&mut sc.parts, tick_buf, b..buf.len());
                // Last, global chat: a client that reads up to a global line has everything
                // the tick brought it before that line.
                for (gi, &tg) in global_gens.iter().enumerate() {
                    if tg > since {
                        push_part(&mut sc.parts, gi, 0..sc.shared[gi].len());
                    }
                }
                events += globals_events;
                if sc.parts.len() > first {
                    sc.spans.push((id, first..sc.parts.len()));
                    self.counts.deliveries += events;
                    self.counts.flushes += 1;
                }
            }
            g = end;
        }
        sc.shared.push(SendBuffer::from(self.out.split().freeze()));
        out.begin(&sc.shared);
        for (id, span) in &sc.spans {
            out.player(*id, &sc.parts[span.clone()]);
        }
        sc.shared.clear();
        self.scratch = sc;
        // Every player has been delivered within the last stride: older changes are seen.
        self.cells
            .forget_changes(gen.saturating_sub(2 * stride + 1));
        self.cells.set_epoch(gen + 1);
        self.counts.ticks += 1;
    }
}

/// Which of the `stride` ticks player `id` is delivered on (spread by a hash of the id, so
/// that consecutive ids do not bunch).
fn phase(id: EntityId) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
}

/// Brings player `id`'s view up to date (it is in `cell`): writes `Entered` into `out` for
/// players that came into its 3×3 cells since its last look, and lists in `gone` those that
/// went. Returns the frames written.
fn refresh_view(
    cells: &Cells,
    id: EntityId,
    cell: Cell,
    p: &mut Player,
    out: &mut BytesMut,
    now: &mut Vec<EntityId>,
    gone: &mut Vec<EntityId>,
) -> u64 {
    gone.clear();
    now.clear();
    cells.near_ids(cell, id, now);
    now.sort_unstable();
    let mut written = 0;
    let (mut i, mut j) = (0, 0);
    loop {
        match (now.get(i).copied(), p.visible.get(j).copied()) {
            (Some(n), Some(v)) if n == v => {
                i += 1;
                j += 1;
            }
            (Some(n), Some(v)) if n > v => {
                gone.push(v);
                j += 1;
            }
            (Some(n), _) => {
                if let Some(s) = cells.get(n) {
                    let [x, y, z] = s.pos;
                    Entered {
                        id: U64::new(n),
                        x: F32::new(x),
                        y: F32::new(y),
                        z: F32::new(z),
                    }
                    .encode_into(&mut *out);
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

/// Adds bytes `range` of buffer `buffer` to `parts`, if any.
fn push_part(parts: &mut Vec<Part>, buffer: usize, range: Range<usize>) {
    if !range.is_empty() {
        parts.push(Part { buffer, range });
    }
}

/// Lays the neighbourhood's segments out into `buf` keeping each mover's latest position
/// only; records where each kept move lies (`sc.own_at`, sorted). Returns the frames laid
/// out and those left out.
fn lay_out_latest(history: &History, sc: &mut Scratch, buf: &mut BytesMut) -> (u64, u64) {
    // Borrowed from the history, not cloned: a clone of a buffer frozen from a `Vec` the
    // first time allocates its shared header.
    fn cells<'h>(history: &'h History, seg: &(u64, Cell, u32, u32, u32, usize)) -> &'h [u8] {
        history.events(seg.2, seg.3, seg.4).buf.as_bytes()
    }
    // Where each mover's latest position lies: (generation, segment, offset).
    sc.latest.clear();
    for (si, seg) in sc.segments.iter().enumerate() {
        for (at, mover) in moved_frames(cells(history, seg)) {
            let e = sc.latest.entry(mover).or_insert((seg.0, si, at));
            if seg.0 > e.0 {
                *e = (seg.0, si, at);
            }
        }
    }
    let (mut kept, mut left) = (0, 0);
    sc.own_at.clear();
    for si in 0..sc.segments.len() {
        let bytes = cells(history, &sc.segments[si]);
        sc.segments[si].5 = buf.len();
        let mut at = 0;
        while let Some(len) = frame_at(bytes, at) {
            let frame = &bytes[at..at + len];
            let keep = match moved_frame(frame) {
                Some(mover) => {
                    let latest = sc
                        .latest
                        .get(&mover)
                        .is_some_and(|&(_, s, a)| (s, a) == (si, at));
                    if latest {
                        sc.own_at.push((mover, buf.len()));
                    }
                    latest
                }
                None => true,
            };
            if keep {
                buf.extend_from_slice(frame);
                kept += 1;
            } else {
                left += 1;
            }
            at += len;
        }
    }
    sc.own_at.sort_unstable();
    (kept, left)
}

/// The length of the whole frame at `at` in a buffer of whole frames, if one is there.
fn frame_at(bytes: &[u8], at: usize) -> Option<usize> {
    let head = bytes.get(at..at + HEADER_LEN)?;
    let len = usize::from(u16::from_le_bytes([head[0], head[1]]));
    (len >= HEADER_LEN && at + len <= bytes.len()).then_some(len)
}

/// The mover, if `frame` is a whole `Moved` frame.
fn moved_frame(frame: &[u8]) -> Option<EntityId> {
    let id = u16::from_le_bytes([frame[2], frame[3]]);
    (id == Moved::ID && frame.len() == MOVED_LEN).then(|| mover_of(frame))
}

/// The entity a whole `Moved` frame is about.
fn mover_of(frame: &[u8]) -> EntityId {
    let mut id = [0u8; 8];
    id.copy_from_slice(&frame[HEADER_LEN..HEADER_LEN + 8]);
    u64::from_le_bytes(id)
}

/// The `Moved` frames of a buffer of whole frames: each one's offset and mover.
fn moved_frames(bytes: &[u8]) -> impl Iterator<Item = (usize, EntityId)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(len) = frame_at(bytes, at) {
            let here = at;
            at += len;
            if let Some(mover) = moved_frame(&bytes[here..here + len]) {
                return Some((here, mover));
            }
        }
        None
    })
}
