//! The world's game logic, sans-IO: players, their bodies, the area-of-interest grid, and what
//! each event sends to whom. It encodes every packet once and hands each recipient a reference
//! through a [`Deliver`]; how that reaches a socket (a per-tick batch, or at once) is the
//! caller's business. The engine's [`World`](super::World) and the naive comparison server
//! both run on it, so a benchmark compares engines running the same game.

use std::collections::HashMap;
use std::time::Instant;

use zerocopy::little_endian::{F32, U16, U64};

use crate::aoi::{EntityId, Grid, Visibility};
use crate::packets::{
    channel, reject, Attack, Attacked, Chat, ChatFrom, ChatText, Entered, Join, Left, Move, Moved,
    Rejected, Welcome, PROTOCOL_VERSION,
};
use crate::rules::{Body, WorldConfig};
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::SendBuffer;

/// Where the core's packets go: `buf` is for player `to`, in the order the calls come.
pub trait Deliver {
    /// Queues (or sends) `buf` to player `to`.
    fn deliver(&mut self, to: EntityId, buf: &SendBuffer);
}

/// The world's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Joins since start.
    pub joins: u64,
    /// Accepted moves.
    pub moves: u64,
    /// Refused packets (each answered with `Rejected`).
    pub rejected: u64,
    /// Accepted attacks.
    pub attacks: u64,
    /// Chat lines relayed.
    pub chats: u64,
    /// Packets handed to [`Deliver`] (one per recipient).
    pub deliveries: u64,
}

/// The game state. Invariant: a player is in `bodies` exactly when it is in `grid`.
pub struct Core {
    config: WorldConfig,
    bodies: HashMap<EntityId, Body>,
    grid: Grid<()>,
    /// Reused list of recipients: a broadcast allocates nothing in steady state.
    scratch: Vec<EntityId>,
    counts: Counts,
}

fn not_joined(id: u16) -> PacketError {
    PacketError::Invalid {
        id,
        what: "join first",
    }
}

impl Core {
    /// An empty world.
    pub fn new(config: WorldConfig) -> Self {
        Self {
            grid: Grid::new(config.cell_size),
            config,
            bodies: HashMap::new(),
            scratch: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// Players in the world.
    pub fn players(&self) -> usize {
        self.bodies.len()
    }

    /// The counters.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn send(&mut self, out: &mut impl Deliver, to: EntityId, buf: &SendBuffer) {
        self.counts.deliveries += 1;
        out.deliver(to, buf);
    }

    /// Sends `bufs` (back to back) to every player in range of `id`, and to `id` itself when
    /// `with_self`.
    fn send_near(
        &mut self,
        out: &mut impl Deliver,
        id: EntityId,
        bufs: &[&SendBuffer],
        with_self: bool,
    ) {
        let mut near = std::mem::take(&mut self.scratch);
        self.grid.for_each_near(id, |other, ()| near.push(other));
        if with_self {
            near.push(id);
        }
        for &to in &near {
            for buf in bufs {
                self.send(out, to, buf);
            }
        }
        near.clear();
        self.scratch = near;
    }

    fn entered(&self, id: EntityId) -> Option<SendBuffer> {
        let [x, y, z] = self.bodies.get(&id)?.pos;
        let (x, y, z) = (F32::new(x), F32::new(y), F32::new(z));
        Some(
            Entered {
                id: U64::new(id),
                x,
                y,
                z,
            }
            .encode(),
        )
    }

    /// Enter and leave notices, both ways, after `id` joined or crossed cells.
    fn notify(&mut self, out: &mut impl Deliver, id: EntityId, v: &Visibility) {
        if let Some(me) = self.entered(id) {
            for &other in &v.entered {
                if let Some(them) = self.entered(other) {
                    self.send(out, id, &them);
                }
                self.send(out, other, &me);
            }
        }
        let gone = Left { id: U64::new(id) }.encode();
        for &other in &v.left {
            self.send(
                out,
                id,
                &Left {
                    id: U64::new(other),
                }
                .encode(),
            );
            self.send(out, other, &gone);
        }
    }

    fn reject(&mut self, out: &mut impl Deliver, id: EntityId, packet: u16, reason: u8) {
        let Some(body) = self.bodies.get(&id) else {
            return;
        };
        let [x, y, z] = body.pos;
        let r = Rejected {
            packet: U16::new(packet),
            reason,
            x: F32::new(x),
            y: F32::new(y),
            z: F32::new(z),
        }
        .encode();
        self.counts.rejected += 1;
        self.send(out, id, &r);
    }

    /// Player `id` joins: it gets a `Welcome`, and `Entered` notices are exchanged with the
    /// players around its spawn point.
    ///
    /// # Errors
    /// Another protocol version, or a second join: the caller closes the session.
    pub fn join(
        &mut self,
        out: &mut impl Deliver,
        id: EntityId,
        p: &Join,
        now: Instant,
    ) -> Result<(), PacketError> {
        let invalid = |what| Err(PacketError::Invalid { id: Join::ID, what });
        if p.protocol.get() != PROTOCOL_VERSION {
            return invalid("unsupported protocol version");
        }
        if self.bodies.contains_key(&id) {
            return invalid("already joined");
        }
        let body = self.config.spawn(id, now);
        let [x, y, z] = body.pos;
        self.bodies.insert(id, body);
        let c = &self.config;
        let welcome = Welcome {
            id: U64::new(id),
            x: F32::new(x),
            y: F32::new(y),
            z: F32::new(z),
            world_size: F32::new(c.size),
            cell_size: F32::new(c.cell_size),
            max_speed: F32::new(c.max_speed),
            tick_ms: U16::new(c.tick.as_millis().min(u128::from(u16::MAX)) as u16),
        }
        .encode();
        self.send(out, id, &welcome);
        let v = self.grid.insert(id, (), x, y);
        self.notify(out, id, &v);
        self.counts.joins += 1;
        Ok(())
    }

    /// Player `id` moves: refused with `Rejected` if the rules say no, otherwise `Moved` goes to
    /// everyone in range, with enter/leave notices when it crossed cells.
    ///
    /// # Errors
    /// NaN or infinite fields, or a player that has not joined: the caller closes the session.
    pub fn step(
        &mut self,
        out: &mut impl Deliver,
        id: EntityId,
        m: &Move,
        now: Instant,
    ) -> Result<(), PacketError> {
        m.check()?;
        let Some(body) = self.bodies.get_mut(&id) else {
            return Err(not_joined(Move::ID));
        };
        if let Err(reason) = self.config.step(body, m, now) {
            self.reject(out, id, Move::ID, reason);
            return Ok(());
        }
        self.counts.moves += 1;
        let moved = Moved {
            id: U64::new(id),
            x: m.x,
            y: m.y,
            z: m.z,
            velocity: m.velocity,
        }
        .encode();
        if let Some(v) = self.grid.move_to(id, m.x.get(), m.y.get()) {
            self.notify(out, id, &v);
        }
        self.send_near(out, id, &[&moved], false);
        Ok(())
    }

    /// Player `id` attacks: `Attacked` goes to the target and everyone in range of it, if the
    /// target is in range of the attacker; otherwise `Rejected`.
    ///
    /// # Errors
    /// A player that has not joined.
    pub fn attack(
        &mut self,
        out: &mut impl Deliver,
        id: EntityId,
        a: &Attack,
    ) -> Result<(), PacketError> {
        if !self.bodies.contains_key(&id) {
            return Err(not_joined(Attack::ID));
        }
        let target = a.target.get();
        let mut in_range = false;
        self.grid
            .for_each_near(id, |other, ()| in_range |= other == target);
        if !in_range {
            self.reject(out, id, Attack::ID, reject::NO_TARGET);
            return Ok(());
        }
        self.counts.attacks += 1;
        let hit = Attacked {
            attacker: U64::new(id),
            target: U64::new(target),
        }
        .encode();
        self.send_near(out, target, &[&hit], true);
        Ok(())
    }

    /// Player `id` says `line`; `payload` is the received `Chat` payload, relayed by reference
    /// behind a 12-byte prefix naming the speaker. Nearby lines reach the players in range and
    /// the speaker, global lines everyone.
    ///
    /// # Errors
    /// A player that has not joined.
    pub fn chat(
        &mut self,
        out: &mut impl Deliver,
        id: EntityId,
        line: ChatText<'_>,
        payload: &SendBuffer,
        now: Instant,
    ) -> Result<(), PacketError> {
        let Some(body) = self.bodies.get_mut(&id) else {
            return Err(not_joined(Chat::ID));
        };
        if let Err(reason) = self.config.chat(body, now) {
            self.reject(out, id, Chat::ID, reason);
            return Ok(());
        }
        let prefix = ChatFrom::prefix(id, payload.len()).ok_or(PacketError::Invalid {
            id: Chat::ID,
            what: "chat text longer than 512 bytes",
        })?;
        self.counts.chats += 1;
        if line.channel == channel::GLOBAL {
            let mut everyone = std::mem::take(&mut self.scratch);
            everyone.extend(self.bodies.keys().copied());
            for &to in &everyone {
                self.send(out, to, &prefix);
                self.send(out, to, payload);
            }
            everyone.clear();
            self.scratch = everyone;
        } else {
            self.send_near(out, id, &[&prefix, payload], true);
        }
        Ok(())
    }

    /// Player `id` leaves; the players that had it in range get `Left`. Returns false if it
    /// had not joined.
    pub fn leave(&mut self, out: &mut impl Deliver, id: EntityId) -> bool {
        if self.bodies.remove(&id).is_none() {
            return false;
        }
        let v = self.grid.remove(id);
        let gone = Left { id: U64::new(id) }.encode();
        for other in v.left {
            self.send(out, other, &gone);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::Moved;

    /// Records deliveries as (recipient, packet id).
    #[derive(Default)]
    struct Log(Vec<(EntityId, u16)>);

    impl Deliver for Log {
        fn deliver(&mut self, to: EntityId, buf: &SendBuffer) {
            self.0.push((to, u16::from_le_bytes([buf[2], buf[3]])));
        }
    }

    #[test]
    fn a_move_reaches_the_neighbours_only_and_a_leave_is_announced() {
        let cfg = WorldConfig {
            size: 1000.0,
            cell_size: 100.0,
            max_speed: 1e6,
            ..WorldConfig::default()
        };
        let now = Instant::now();
        let mut core = Core::new(cfg);
        let mut log = Log::default();
        for id in 1..=3 {
            core.join(&mut log, id, &Join::new(PROTOCOL_VERSION), now)
                .unwrap();
        }
        let go = |core: &mut Core, log: &mut Log, id, x, y| {
            core.step(log, id, &Move::new(x, y, 0.0, 1.0), now).unwrap();
        };
        go(&mut core, &mut log, 1, 150.0, 150.0);
        go(&mut core, &mut log, 2, 250.0, 250.0);
        go(&mut core, &mut log, 3, 850.0, 850.0);
        log.0.clear();
        go(&mut core, &mut log, 1, 151.0, 150.0);
        assert_eq!(log.0, [(2, Moved::ID)]);
        assert_eq!(
            core.join(&mut log, 1, &Join::new(PROTOCOL_VERSION), now),
            Err(PacketError::Invalid {
                id: Join::ID,
                what: "already joined"
            })
        );
        log.0.clear();
        assert!(core.leave(&mut log, 1));
        assert_eq!(log.0, [(2, Left::ID)]);
        assert!(!core.leave(&mut log, 1));
        assert_eq!(core.players(), 2);
        assert_eq!((core.counts().joins, core.counts().moves), (3, 4));
    }
}
