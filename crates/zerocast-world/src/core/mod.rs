//! The world's game logic, sans-IO: a shard of the world.
//!
//! A [`Core`] owns some players (its shard: the players of one engine worker, or of one
//! process) and knows where every other player is. Events are judged when they happen
//! (moves, attacks, chat) and *laid out*, encoded once, in the buffer of the area-of-interest
//! cell where they happen; nothing is sent then. At the end of a tick the core freezes those
//! buffers into a [`TickBatch`] that other shards receive, and delivers to each of its players
//! the slices of the tick's buffers, its own and the other shards', for the 3×3 cells around
//! it: a player's write is a handful of slices, whatever the number of events. Enter and leave
//! notices are computed then too, by each observer's own shard, from who is in its cells.
//!
//! ```text
//!  events during the tick            end of the tick
//!  +---------- cell (3,4) ---------+  TickBatch { cells: [(3,4) -> buffer, ...], positions }
//!  | Moved 17 | Moved 9 | Chat 9 | |  --> other shards
//!  +-------------------------------+
//!                                     each player: [Welcome, Entered...] [slices of its 9 cells'
//!                                     buffers, own moves cut out] [Left, Rejected, Pong...]
//!                                     [global chat]
//! ```
//!
//! A player's moves are *state*: a second move in the same cell within a tick overwrites the
//! first where it lies (conflation), so a tick's output is bounded by the players, not by
//! the events, and a world past its capacity degrades instead of queueing without end.

use std::ops::Range;
use std::time::Instant;

use bytes::BytesMut;
use rustc_hash::FxHashMap;
use zerocopy::little_endian::{F32, U16, U64};

mod history;
#[cfg(test)]
mod tests;
mod tick;

pub use self::tick::{CellEvents, Deliver, Part, TickBatch};
pub use crate::aoi::{Cell, EntityId};

use crate::aoi::{near, Cells};
use crate::packets::{
    channel, reject, Attack, Attacked, Chat, ChatFrom, ChatText, Join, Move, Moved, Ping, Pong,
    Rejected, Welcome, PROTOCOL_VERSION,
};
use crate::rules::{Body, WorldConfig};
use history::History;
use zerocast::frame::HEADER_LEN;
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::SendBuffer;

/// A `Moved` frame's length, header included.
const MOVED_LEN: usize = HEADER_LEN + std::mem::size_of::<Moved>();

/// The world's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Joins since start.
    pub joins: u64,
    /// Accepted moves.
    pub moves: u64,
    /// Moves folded into an earlier move of the same player in the same tick (only the
    /// latest position is sent: a world sends state, not every event).
    pub conflated: u64,
    /// Moves left out of a write because the same write carries a later position of the
    /// same player (a player written every few ticks, over capacity, gets each mover once).
    pub superseded: u64,
    /// Refused packets (each answered with `Rejected`).
    pub rejected: u64,
    /// Accepted attacks.
    pub attacks: u64,
    /// Chat lines relayed.
    pub chats: u64,
    /// Packets delivered to players (one per recipient).
    pub deliveries: u64,
    /// Per-player writes the ticks handed out (each player with something to receive gets
    /// one per tick): `deliveries / flushes` is the packets per write.
    pub flushes: u64,
    /// Ticks delivered.
    pub ticks: u64,
}

impl Counts {
    /// Adds `o` (for sums over shards).
    pub fn add(&mut self, o: &Counts) {
        self.joins += o.joins;
        self.moves += o.moves;
        self.conflated += o.conflated;
        self.superseded += o.superseded;
        self.rejected += o.rejected;
        self.attacks += o.attacks;
        self.chats += o.chats;
        self.deliveries += o.deliveries;
        self.flushes += o.flushes;
        self.ticks += o.ticks;
    }
}

/// A player's ground position, for a spectator ([`Core::positions_into`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// The player's id.
    pub id: EntityId,
    /// Where it stands on the ground.
    pub x: f32,
    pub y: f32,
}

/// One of this shard's players.
struct Player {
    body: Body,
    /// Who it sees as of its last tick, sorted: Entered and Left are the changes.
    visible: Vec<EntityId>,
    /// Frames to send before the tick's cell slices (the Welcome), and how many.
    before: Vec<u8>,
    before_n: u32,
    /// Frames to send after them (Rejected, Pong), and how many.
    after: Vec<u8>,
    after_n: u32,
    /// Its own moves since its last delivery: the tick generation, cell and offset of each
    /// (cut out of what it receives; those of the tick being built are overwritten by a
    /// later move).
    own: Vec<(u64, Cell, u32)>,
    /// The last tick generation delivered to it (see [`Core::deliver`]).
    last: u64,
    /// It joined since the last tick: every player in range is entered.
    fresh: bool,
    /// Its position goes in this tick's batch.
    moved: bool,
}

/// This shard's events of the current tick in one cell.
#[derive(Default)]
struct Building {
    bytes: BytesMut,
    count: u32,
}

/// Scratch space a delivery reuses, kept for its capacity (no allocation per tick in steady
/// state beyond the frozen buffers).
#[derive(Default)]
struct Scratch {
    /// The tick's shared buffers (global chat lines, then the tick's buffer), and the frames
    /// in each global one.
    shared: Vec<SendBuffer>,
    global_counts: Vec<u32>,
    /// This shard's players to deliver, by cell and window start (their last delivery),
    /// sorted.
    due: Vec<(Cell, u64, EntityId)>,
    /// The neighbourhood being laid out: its cells' events as `(generation, cell, history
    /// entry, batch (0: this shard's), index in the batch, start in the tick buffer)`.
    segments: Vec<(u64, Cell, u32, u32, u32, usize)>,
    /// Each mover's latest position in it: `(generation, segment, offset)`.
    latest: FxHashMap<EntityId, (u64, usize, usize)>,
    /// Where each mover's kept move lies in the tick buffer, sorted: a player's own is cut.
    own_at: Vec<(EntityId, usize)>,
    /// Every player's parts, back to back, and each player's span of them.
    parts: Vec<Part>,
    spans: Vec<(EntityId, Range<usize>)>,
    now: Vec<EntityId>,
    gone: Vec<EntityId>,
    cuts: Vec<usize>,
}

/// A shard of the world. Invariant: every player of `players` is in `cells`.
pub struct Core {
    config: WorldConfig,
    shard: u32,
    players: FxHashMap<EntityId, Player>,
    /// Every entity this shard knows of, its own players and the other shards'.
    cells: Cells,
    building: FxHashMap<Cell, Building>,
    global: Building,
    /// The tick's buffer being laid out (see [`Core::deliver`]).
    out: BytesMut,
    /// Ticks ended so far: the generation of the last one (the tick being built is the next).
    generation: u64,
    /// The batches of the last ticks, own first, newest last: a player delivered every
    /// `stride` ticks receives the events of every tick since its last delivery.
    history: History,
    left: Vec<EntityId>,
    counts: Counts,
    scratch: Scratch,
}

fn not_joined(id: u16) -> PacketError {
    PacketError::Invalid {
        id,
        what: "join first",
    }
}

impl Core {
    /// An empty shard `shard` of a world.
    pub fn new(config: WorldConfig, shard: u32) -> Self {
        let mut cells = Cells::new(config.cell_size);
        // Changes made while the first tick is built belong to it.
        cells.set_epoch(1);
        Self {
            shard,
            cells,
            players: FxHashMap::default(),
            building: FxHashMap::default(),
            global: Building::default(),
            out: BytesMut::new(),
            generation: 0,
            history: History::default(),
            left: Vec::new(),
            counts: Counts::default(),
            scratch: Scratch::default(),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// This shard's players.
    pub fn players(&self) -> usize {
        self.players.len()
    }

    /// Appends this shard's players and their ground positions (`x`, `y`) to `out`, in no
    /// particular order: what a spectator's map shows.
    pub fn positions_into(&self, out: &mut Vec<Position>) {
        out.extend(self.players.iter().map(|(&id, p)| Position {
            id,
            x: p.body.pos[0],
            y: p.body.pos[1],
        }));
    }

    /// Every player this shard knows of, its own and the others'.
    pub fn known(&self) -> usize {
        self.cells.len()
    }

    /// The counters.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Refuses a packet of player `id` the server handles outside the core: `Rejected` with
    /// `reason` goes with its next delivery.
    pub fn refuse(&mut self, id: EntityId, packet: u16, reason: u8) {
        self.reject(id, packet, reason);
    }

    /// Where every other player that `id` sees stands now (its 3×3 cells), into `out`.
    pub fn view(&self, id: EntityId, out: &mut Vec<(EntityId, [f32; 3])>) {
        out.clear();
        let Some(me) = self.cells.get(id) else {
            return;
        };
        let mut ids = Vec::new();
        self.cells.near_ids(me.cell, id, &mut ids);
        out.extend(
            ids.into_iter()
                .filter_map(|e| self.cells.get(e).map(|s| (e, s.pos))),
        );
    }

    fn reject(&mut self, id: EntityId, packet: u16, reason: u8) {
        let Some(p) = self.players.get_mut(&id) else {
            return;
        };
        let [x, y, z] = p.body.pos;
        Rejected {
            packet: U16::new(packet),
            reason,
            x: F32::new(x),
            y: F32::new(y),
            z: F32::new(z),
        }
        .encode_into(&mut p.after);
        p.after_n += 1;
        self.counts.rejected += 1;
    }

    /// Player `id` joins: it is placed at its spawn point, and its next tick brings its
    /// `Welcome` and the players around it.
    ///
    /// # Errors
    /// Another protocol version, or a second join: the caller closes the session.
    pub fn join(&mut self, id: EntityId, p: &Join, now: Instant) -> Result<(), PacketError> {
        let invalid = |what| Err(PacketError::Invalid { id: Join::ID, what });
        if p.protocol.get() != PROTOCOL_VERSION {
            return invalid("unsupported protocol version");
        }
        if self.players.contains_key(&id) {
            return invalid("already joined");
        }
        let body = self.config.spawn(id, now);
        let [x, y, z] = body.pos;
        let c = &self.config;
        let mut before = Vec::with_capacity(Welcome::frame_len());
        Welcome {
            id: U64::new(id),
            x: F32::new(x),
            y: F32::new(y),
            z: F32::new(z),
            world_size: F32::new(c.size),
            cell_size: F32::new(c.cell_size),
            max_speed: F32::new(c.max_speed),
            tick_ms: U16::new(c.tick.as_millis().min(u128::from(u16::MAX)) as u16),
        }
        .encode_into(&mut before);
        self.cells.place(id, body.pos);
        self.players.insert(
            id,
            Player {
                body,
                visible: Vec::new(),
                before,
                before_n: 1,
                after: Vec::new(),
                after_n: 0,
                own: Vec::new(),
                last: self.generation,
                fresh: true,
                moved: true,
            },
        );
        self.counts.joins += 1;
        Ok(())
    }

    /// Player `id` moves: refused with `Rejected` if the rules say no; otherwise its `Moved`
    /// goes into the buffer of the cell it moved to (overwriting its earlier move of this
    /// tick in that cell, if any).
    ///
    /// # Errors
    /// NaN or infinite fields, or a player that has not joined: the caller closes the session.
    pub fn step(&mut self, id: EntityId, m: &Move, now: Instant) -> Result<(), PacketError> {
        m.check()?;
        let Some(p) = self.players.get_mut(&id) else {
            return Err(not_joined(Move::ID));
        };
        if let Err(reason) = self.config.step(&mut p.body, m, now) {
            self.reject(id, Move::ID, reason);
            return Ok(());
        }
        p.moved = true;
        let pos = p.body.pos;
        self.counts.moves += 1;
        let cell = self.cells.place(id, pos);
        let moved = Moved {
            id: U64::new(id),
            x: m.x,
            y: m.y,
            z: m.z,
            velocity: m.velocity,
        };
        let mut frame = [0u8; MOVED_LEN];
        moved.encode_into(&mut &mut frame[..]);
        let Some(p) = self.players.get_mut(&id) else {
            return Ok(());
        };
        // Conflation: the latest position replaces the player's earlier moves of this tick
        // where they lie, in every cell it crossed, so whatever order an observer reads the
        // cells in, the last position it reads is the latest.
        let mut here = false;
        let building = self.generation + 1;
        for &(g, c, at) in &p.own {
            if g != building {
                continue;
            }
            if let Some(b) = self.building.get_mut(&c) {
                let at = at as usize;
                b.bytes[at..at + frame.len()].copy_from_slice(&frame);
                here |= c == cell;
            }
        }
        if here {
            self.counts.conflated += 1;
        } else {
            let b = self.building.entry(cell).or_default();
            p.own.push((building, cell, b.bytes.len() as u32));
            b.bytes.extend_from_slice(&frame);
            b.count += 1;
        }
        Ok(())
    }

    /// Player `id` attacks: `Attacked` goes into the target's cell (everyone in range of the
    /// target sees it, the target included) if the target is in range of the attacker and the
    /// attacker within its rate; otherwise `Rejected`.
    ///
    /// # Errors
    /// A player that has not joined.
    pub fn attack(&mut self, id: EntityId, a: &Attack, now: Instant) -> Result<(), PacketError> {
        let Some(me) = self
            .cells
            .get(id)
            .filter(|_| self.players.contains_key(&id))
        else {
            return Err(not_joined(Attack::ID));
        };
        let target = a.target.get();
        let at = match self.cells.get(target) {
            Some(t) if target != id && near(me.cell, t.cell) => t.cell,
            _ => {
                self.reject(id, Attack::ID, reject::NO_TARGET);
                return Ok(());
            }
        };
        let allowed = self
            .players
            .get_mut(&id)
            .map(|p| self.config.attack(&mut p.body, now));
        if let Some(Err(reason)) = allowed {
            self.reject(id, Attack::ID, reason);
            return Ok(());
        }
        self.counts.attacks += 1;
        let b = self.building.entry(at).or_default();
        Attacked {
            attacker: U64::new(id),
            target: U64::new(target),
        }
        .encode_into(&mut b.bytes);
        b.count += 1;
        Ok(())
    }

    /// Player `id` says `line` (`payload`: the `Chat` payload as received): a nearby line
    /// goes into the speaker's cell (the speaker hears it too), a global line to everyone.
    ///
    /// # Errors
    /// A player that has not joined.
    pub fn chat(
        &mut self,
        id: EntityId,
        line: ChatText<'_>,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), PacketError> {
        let Some(p) = self.players.get_mut(&id) else {
            return Err(not_joined(Chat::ID));
        };
        if let Err(reason) = self.config.chat(&mut p.body, now) {
            self.reject(id, Chat::ID, reason);
            return Ok(());
        }
        self.counts.chats += 1;
        let b = if line.channel == channel::GLOBAL {
            &mut self.global
        } else {
            let cell = self.cells.get(id).map_or((0, 0), |s| s.cell);
            self.building.entry(cell).or_default()
        };
        ChatFrom::encode_into(&mut b.bytes, id, payload);
        b.count += 1;
        Ok(())
    }

    /// Player `id` pings: its next tick brings the `Pong`.
    ///
    /// # Errors
    /// A player that has not joined.
    pub fn ping(&mut self, id: EntityId, p: &Ping) -> Result<(), PacketError> {
        let Some(me) = self.players.get_mut(&id) else {
            return Err(not_joined(Ping::ID));
        };
        Pong { nonce: p.nonce }.encode_into(&mut me.after);
        me.after_n += 1;
        Ok(())
    }

    /// Player `id` leaves; the players that saw it get `Left` at the next tick (from their
    /// own shards). Returns false if it had not joined.
    pub fn leave(&mut self, id: EntityId) -> bool {
        if self.players.remove(&id).is_none() {
            return false;
        }
        self.cells.remove(id);
        self.left.push(id);
        true
    }
}
