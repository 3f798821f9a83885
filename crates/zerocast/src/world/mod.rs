//! An MMO world server on the engine: players join (the server assigns their ids), move, attack
//! and chat, nearby or to everyone, and leave; every event reaches the players in range of it
//! ([`aoi::Grid`](crate::aoi::Grid)). The server is authoritative ([`WorldConfig`]): it
//! refuses moves faster than the maximum speed or outside the world, and closes the session of
//! a client that sends a malformed packet (docs/PROTOCOL.md, "World protocol").
//!
//! # Ticks
//! Nothing is written while an event is handled. Each event is encoded once, and a reference
//! to it is added to the pending list of every player it concerns. Every
//! [`WorldConfig::tick`], each engine worker hands each of *its* players' pending lists to
//! the player's session in one call ([`Session::send_batch`]); since the tick runs on the
//! session's own worker, the list leaves in one gathered write at the end of that turn. A
//! player therefore gets one write per tick, whatever happened in it, and an event waits at
//! most one tick.
//!
//! Build the engine with the world's tick ([`World::configure`]); without ticks nothing would
//! ever be written.

mod rules;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use zerocopy::little_endian::{F32, U16, U64};

pub use rules::{Body, WorldConfig};

use crate::aoi::{EntityId, Grid};
use crate::lockorder::OrderedMutex;
use crate::metrics::Striped;
use crate::packet::world::{
    channel, reject, Attack, Attacked, Chat, ChatFrom, ChatText, Entered, Join, Left, Move, Moved,
    Rejected, Welcome, PROTOCOL_VERSION,
};
use crate::packet::{FixedPacket, PacketError, Router, VarPacket};
use crate::{Builder, CloseReason, Frame, Handler, SendBuffer, Session};

struct Player {
    session: Session,
    body: Body,
    /// Everything this player is sent during the current tick, in order.
    pending: Vec<SendBuffer>,
    /// True while the player is listed in its worker's `dirty` list.
    listed: bool,
}

/// The world's state, behind one lock.
///
/// Invariants: a player is in `players` exactly when it is in `grid`; a player with pending
/// buffers is listed in `dirty[its worker]` (a listed id may have left since: skipped).
struct State {
    players: HashMap<EntityId, Player>,
    grid: Grid<()>,
    /// Per worker: players with pending buffers.
    dirty: Vec<Vec<EntityId>>,
}

impl State {
    /// Adds `buf` to `to`'s pending list.
    fn deliver(&mut self, to: EntityId, buf: &SendBuffer, counters: &Counters) {
        let Some(p) = self.players.get_mut(&to) else {
            return;
        };
        p.pending.push(buf.clone());
        counters.deliveries.add(1);
        if !p.listed {
            p.listed = true;
            let w = p.session.worker();
            if self.dirty.len() <= w {
                self.dirty.resize_with(w + 1, Vec::new);
            }
            self.dirty[w].push(to);
        }
    }

    /// Adds `bufs` (back to back) to the pending list of every player in range of `id`, and
    /// of `id` itself when `with_self`.
    fn deliver_near(&mut self, id: EntityId, bufs: &[&SendBuffer], with_self: bool, c: &Counters) {
        let mut near = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        self.grid.for_each_near(id, |other, ()| near.push(other));
        if with_self {
            near.push(id);
        }
        for &to in &near {
            for buf in bufs {
                self.deliver(to, buf, c);
            }
        }
        near.clear();
        SCRATCH.with(|s| *s.borrow_mut() = near);
    }

    fn entered(&self, id: EntityId) -> Option<SendBuffer> {
        let p = self.players.get(&id)?;
        let [x, y, z] = p.body.pos;
        Some(
            Entered {
                id: U64::new(id),
                x: F32::new(x),
                y: F32::new(y),
                z: F32::new(z),
            }
            .encode(),
        )
    }

    /// Enter and leave notices, both ways, after `id` joined or crossed cells.
    fn notify(&mut self, id: EntityId, v: &crate::aoi::Visibility, c: &Counters) {
        if let Some(me) = self.entered(id) {
            for &other in &v.entered {
                if let Some(them) = self.entered(other) {
                    self.deliver(id, &them, c);
                }
                self.deliver(other, &me, c);
            }
        }
        let gone = Left { id: U64::new(id) }.encode();
        for &other in &v.left {
            self.deliver(
                id,
                &Left {
                    id: U64::new(other),
                }
                .encode(),
                c,
            );
            self.deliver(other, &gone, c);
        }
    }

    fn reject(&mut self, id: EntityId, packet: u16, reason: u8, c: &Counters) {
        let Some(p) = self.players.get(&id) else {
            return;
        };
        let [x, y, z] = p.body.pos;
        let r = Rejected {
            packet: U16::new(packet),
            reason,
            x: F32::new(x),
            y: F32::new(y),
            z: F32::new(z),
        }
        .encode();
        c.rejected.add(1);
        self.deliver(id, &r, c);
    }
}

thread_local! {
    /// Reused list of recipients, so a broadcast allocates nothing in steady state.
    static SCRATCH: std::cell::RefCell<Vec<EntityId>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The world's counters, striped per thread.
#[derive(Default)]
struct Counters {
    joins: Striped,
    moves: Striped,
    rejected: Striped,
    attacks: Striped,
    chats: Striped,
    deliveries: Striped,
    ticks: Striped,
    /// Non-empty pending lists handed to sessions.
    flushes: Striped,
}

/// A snapshot of the world's gauges and counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorldSnapshot {
    /// Players in the world now.
    pub players: usize,
    /// Joins since start.
    pub joins: i64,
    /// Accepted moves.
    pub moves: i64,
    /// Refused packets (each answered with `Rejected`).
    pub rejected: i64,
    /// Accepted attacks.
    pub attacks: i64,
    /// Chat lines relayed.
    pub chats: i64,
    /// Packets queued for players (one per recipient).
    pub deliveries: i64,
    /// Worker ticks run.
    pub ticks: i64,
    /// Pending lists handed to sessions: `deliveries / flushes` is the packets per write
    /// the tick achieves.
    pub flushes: i64,
}

impl WorldSnapshot {
    /// The gauges in the Prometheus text format, `zerocast_world_` prefixed.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, v: i64| {
            let _ = write!(
                out,
                "# HELP zerocast_world_{name} {help}\n# TYPE zerocast_world_{name} {kind}\nzerocast_world_{name} {v}\n"
            );
        };
        put(
            "players",
            "gauge",
            "Players in the world.",
            self.players as i64,
        );
        put("joins_total", "counter", "Players joined.", self.joins);
        put("moves_total", "counter", "Moves accepted.", self.moves);
        put(
            "rejected_total",
            "counter",
            "Packets refused with Rejected.",
            self.rejected,
        );
        put(
            "attacks_total",
            "counter",
            "Attacks accepted.",
            self.attacks,
        );
        put("chats_total", "counter", "Chat lines relayed.", self.chats);
        put(
            "deliveries_total",
            "counter",
            "Packets queued for players.",
            self.deliveries,
        );
        put("ticks_total", "counter", "Worker ticks run.", self.ticks);
        put(
            "flushes_total",
            "counter",
            "Per-player tick batches handed to sessions.",
            self.flushes,
        );
        out
    }
}

struct Shared {
    config: WorldConfig,
    state: OrderedMutex<State>,
    counters: Counters,
}

/// The world server: a [`Handler`]. See the module documentation.
///
/// ```no_run
/// use std::sync::Arc;
/// use zerocast::world::{World, WorldConfig};
/// use zerocast::Engine;
///
/// let world = Arc::new(World::new(WorldConfig::default()));
/// let engine = world.configure(Engine::builder()).build(world.clone())?;
/// engine.listen("127.0.0.1:7000".parse().unwrap())?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct World {
    shared: Arc<Shared>,
    router: Router,
}

impl World {
    /// An empty world.
    pub fn new(config: WorldConfig) -> Self {
        let shared = Arc::new(Shared {
            state: OrderedMutex::new(
                "world",
                State {
                    players: HashMap::new(),
                    grid: Grid::new(config.cell_size),
                    dirty: Vec::new(),
                },
            ),
            config,
            counters: Counters::default(),
        });
        let (j, m, a) = (shared.clone(), shared.clone(), shared.clone());
        let router = Router::new()
            .fixed(move |s: &Session, p: &Join| j.join(s, p))
            .fixed(move |s: &Session, p: &Move| m.step(s, p))
            .fixed(move |s: &Session, p: &Attack| a.attack(s, p));
        Self { shared, router }
    }

    /// The world's settings.
    pub fn config(&self) -> &WorldConfig {
        &self.shared.config
    }

    /// Sets what the world needs on an engine builder: its tick.
    pub fn configure(&self, builder: Builder) -> Builder {
        builder.tick(self.shared.config.tick)
    }

    /// The world's gauges and counters now.
    pub fn snapshot(&self) -> WorldSnapshot {
        let c = &self.shared.counters;
        WorldSnapshot {
            players: self.shared.state.lock().players.len(),
            joins: c.joins.get(),
            moves: c.moves.get(),
            rejected: c.rejected.get(),
            attacks: c.attacks.get(),
            chats: c.chats.get(),
            deliveries: c.deliveries.get(),
            ticks: c.ticks.get(),
            flushes: c.flushes.get(),
        }
    }
}

const NOT_JOINED: &str = "join first";

impl Shared {
    fn join(&self, session: &Session, p: &Join) -> Result<(), PacketError> {
        if p.protocol.get() != PROTOCOL_VERSION {
            return Err(PacketError::Invalid {
                id: Join::ID,
                what: "unsupported protocol version",
            });
        }
        let id = session.id().0;
        let c = &self.counters;
        let mut st = self.state.lock();
        if st.players.contains_key(&id) {
            return Err(PacketError::Invalid {
                id: Join::ID,
                what: "already joined",
            });
        }
        let body = self.config.spawn(id, Instant::now());
        let [x, y, z] = body.pos;
        st.players.insert(
            id,
            Player {
                session: session.clone(),
                body,
                pending: Vec::new(),
                listed: false,
            },
        );
        let cfg = &self.config;
        let welcome = Welcome {
            id: U64::new(id),
            x: F32::new(x),
            y: F32::new(y),
            z: F32::new(z),
            world_size: F32::new(cfg.size),
            cell_size: F32::new(cfg.cell_size),
            max_speed: F32::new(cfg.max_speed),
            tick_ms: U16::new(cfg.tick.as_millis().min(u128::from(u16::MAX)) as u16),
        }
        .encode();
        st.deliver(id, &welcome, c);
        let v = st.grid.insert(id, (), x, y);
        st.notify(id, &v, c);
        c.joins.add(1);
        Ok(())
    }

    fn step(&self, session: &Session, m: &Move) -> Result<(), PacketError> {
        m.check()?;
        let id = session.id().0;
        let c = &self.counters;
        let mut st = self.state.lock();
        let Some(p) = st.players.get_mut(&id) else {
            return Err(not_joined(Move::ID));
        };
        if let Err(reason) = self.config.step(&mut p.body, m, Instant::now()) {
            st.reject(id, Move::ID, reason, c);
            return Ok(());
        }
        c.moves.add(1);
        let moved = Moved {
            id: U64::new(id),
            x: m.x,
            y: m.y,
            z: m.z,
            velocity: m.velocity,
        }
        .encode();
        if let Some(v) = st.grid.move_to(id, m.x.get(), m.y.get()) {
            st.notify(id, &v, c);
        }
        st.deliver_near(id, &[&moved], false, c);
        Ok(())
    }

    fn attack(&self, session: &Session, a: &Attack) -> Result<(), PacketError> {
        let id = session.id().0;
        let target = a.target.get();
        let c = &self.counters;
        let mut st = self.state.lock();
        if !st.players.contains_key(&id) {
            return Err(not_joined(Attack::ID));
        }
        let mut in_range = false;
        st.grid
            .for_each_near(id, |other, ()| in_range |= other == target);
        if !in_range {
            st.reject(id, Attack::ID, reject::NO_TARGET, c);
            return Ok(());
        }
        c.attacks.add(1);
        let hit = Attacked {
            attacker: U64::new(id),
            target: U64::new(target),
        }
        .encode();
        // Everyone who can see the target, the target itself (the attacker is among them).
        st.deliver_near(target, &[&hit], true, c);
        Ok(())
    }

    /// Relays a chat line: the received payload (channel and text) is queued by reference
    /// behind a 12-byte prefix naming the speaker.
    fn chat(
        &self,
        session: &Session,
        line: ChatText<'_>,
        payload: SendBuffer,
    ) -> Result<(), PacketError> {
        let id = session.id().0;
        let c = &self.counters;
        let mut st = self.state.lock();
        let Some(p) = st.players.get_mut(&id) else {
            return Err(not_joined(Chat::ID));
        };
        if let Err(reason) = self.config.chat(&mut p.body, Instant::now()) {
            st.reject(id, Chat::ID, reason, c);
            return Ok(());
        }
        let prefix = ChatFrom::prefix(id, payload.len()).ok_or(PacketError::Invalid {
            id: Chat::ID,
            what: "chat text longer than 512 bytes",
        })?;
        c.chats.add(1);
        if line.channel == channel::GLOBAL {
            let everyone: Vec<EntityId> = st.players.keys().copied().collect();
            for to in everyone {
                st.deliver(to, &prefix, c);
                st.deliver(to, &payload, c);
            }
        } else {
            st.deliver_near(id, &[&prefix, &payload], true, c);
        }
        Ok(())
    }

    fn leave(&self, session: &Session) {
        let id = session.id().0;
        let mut st = self.state.lock();
        if st.players.remove(&id).is_none() {
            return;
        }
        let v = st.grid.remove(id);
        let gone = Left { id: U64::new(id) }.encode();
        for other in v.left {
            st.deliver(other, &gone, &self.counters);
        }
    }

    /// Hands each pending list of `worker`'s players to its session.
    fn tick(&self, worker: usize) {
        let c = &self.counters;
        c.ticks.add(1);
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let Some(dirty) = st.dirty.get_mut(worker) else {
            return;
        };
        let mut ids = std::mem::take(dirty);
        for &id in &ids {
            if let Some(p) = st.players.get_mut(&id) {
                p.listed = false;
                if !p.pending.is_empty() {
                    c.flushes.add(1);
                }
                // A closed session drops its list: the player leaves at its disconnect.
                let _ = p.session.send_batch(&mut p.pending);
            }
        }
        ids.clear();
        st.dirty[worker] = ids;
    }
}

fn not_joined(id: u16) -> PacketError {
    PacketError::Invalid {
        id,
        what: NOT_JOINED,
    }
}

impl Handler for World {
    fn on_frame(&self, session: &Session, frame: Frame<'_>) {
        if frame.id() != Chat::ID {
            let _ = self.router.handle(session, frame);
            return;
        }
        // Chat is routed here rather than through the router: relaying it by reference needs
        // the frame's shared bytes, not only the decoded view.
        let result = Chat::decode(frame.payload()).and_then(|line| {
            let payload = SendBuffer::from(frame.payload_bytes());
            self.shared.chat(session, line, payload)
        });
        if let Err(e) = result {
            tracing::info!(session = %session.id(), error = %e, "bad packet, closing");
            session.close_with(CloseReason::Packet(e));
        }
    }

    fn on_disconnect(&self, session: &Session, _reason: &CloseReason) {
        self.shared.leave(session);
    }

    fn on_tick(&self, worker: usize) {
        self.shared.tick(worker);
    }
}
