//! The MMO world server on the engine: players join (the server assigns their ids), move,
//! attack and chat, nearby or to everyone, and leave; every event reaches the players in range
//! of it ([`aoi::Grid`](crate::aoi::Grid)). The server is authoritative ([`WorldConfig`]): it
//! refuses moves faster than the maximum speed or outside the world, and closes the session of
//! a client that sends a malformed packet (docs/PROTOCOL.md, "World protocol").
//!
//! The game logic is the sans-IO [`Core`]; this module adds sessions and ticks.
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

use std::collections::HashMap;
use std::time::Instant;

use zerocast::metrics::Row;
use zerocast::packet::{PacketError, Router, VarPacket};
use zerocast::{Builder, Context, Frame, Handler, SendBuffer, Session};

use crate::aoi::EntityId;
use crate::core::{Core, Counts, Deliver};
use crate::lockorder::OrderedMutex;
use crate::packets::{Attack, Chat, Join, Move};
use crate::rules::WorldConfig;

/// A player's connection and what it is sent during the current tick.
struct Outbox {
    session: Session,
    /// Everything this player is sent during the current tick, in order.
    pending: Vec<SendBuffer>,
    /// True while the player is listed in its worker's `dirty` list.
    listed: bool,
}

/// The per-tick batches: a [`Deliver`] that appends to the recipient's pending list.
///
/// Invariant: a player with pending buffers is listed in `dirty[its worker]` (a listed id
/// may have left since: the tick skips it).
#[derive(Default)]
struct Batches {
    outboxes: HashMap<EntityId, Outbox>,
    /// Per worker: players with pending buffers.
    dirty: Vec<Vec<EntityId>>,
}

impl Deliver for Batches {
    fn deliver(&mut self, to: EntityId, buf: &SendBuffer) {
        let Some(o) = self.outboxes.get_mut(&to) else {
            return;
        };
        o.pending.push(buf.clone());
        if !o.listed {
            o.listed = true;
            let w = o.session.worker();
            if self.dirty.len() <= w {
                self.dirty.resize_with(w + 1, Vec::new);
            }
            self.dirty[w].push(to);
        }
    }
}

struct State {
    core: Core,
    batches: Batches,
    ticks: u64,
    flushes: u64,
}

/// A snapshot of the world's gauges and counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorldSnapshot {
    /// Players in the world now.
    pub players: usize,
    /// The game's counters.
    pub counts: Counts,
    /// Worker ticks run.
    pub ticks: u64,
    /// Pending lists handed to sessions: `counts.deliveries / flushes` is the packets per
    /// write the tick achieves.
    pub flushes: u64,
}

impl WorldSnapshot {
    /// The figures, named as the engine's are ([`zerocast::metrics::Row`]); a `/metrics`
    /// endpoint prefixes them `zerocast_world_`.
    pub fn rows(&self) -> Vec<Row> {
        use zerocast::metrics::Kind::{Counter as C, Gauge as G};
        let c = &self.counts;
        let row = Row::whole;
        vec![
            row("players", G, "Players in the world.", self.players as u64),
            row("joins", C, "Players joined.", c.joins),
            row("moves", C, "Moves accepted.", c.moves),
            row("rejected", C, "Packets refused with Rejected.", c.rejected),
            row("attacks", C, "Attacks accepted.", c.attacks),
            row("chats", C, "Chat lines relayed.", c.chats),
            row("deliveries", C, "Packets queued for players.", c.deliveries),
            row("ticks", C, "Worker ticks run.", self.ticks),
            row(
                "flushes",
                C,
                "Per-player tick batches handed to sessions.",
                self.flushes,
            ),
        ]
    }
}

/// The world server: a [`Handler`]. See the module documentation.
///
/// ```no_run
/// use std::sync::Arc;
/// use zerocast_world::{World, WorldConfig};
/// use zerocast::Engine;
///
/// let world = Arc::new(World::new(WorldConfig::default()));
/// let engine = world.configure(Engine::builder()).build(world.clone())?;
/// engine.listen("127.0.0.1:7000".parse().unwrap())?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct World {
    state: std::sync::Arc<OrderedMutex<State>>,
    tick: std::time::Duration,
    router: Router<Session>,
}

impl World {
    /// An empty world.
    pub fn new(config: WorldConfig) -> Self {
        let tick = config.tick;
        let state = std::sync::Arc::new(OrderedMutex::new(
            "world",
            State {
                core: Core::new(config),
                batches: Batches::default(),
                ticks: 0,
                flushes: 0,
            },
        ));
        let (j, m, a) = (state.clone(), state.clone(), state.clone());
        let router = Router::new()
            .fixed(move |s: &Session, p: &Join| {
                let st = &mut *j.lock();
                let id = s.id().get();
                // The outbox first: the welcome and the notices go to it.
                let fresh = !st.batches.outboxes.contains_key(&id);
                if fresh {
                    let outbox = Outbox {
                        session: s.clone(),
                        pending: Vec::new(),
                        listed: false,
                    };
                    st.batches.outboxes.insert(id, outbox);
                }
                let joined = st.core.join(&mut st.batches, id, p, Instant::now());
                if joined.is_err() && fresh {
                    st.batches.outboxes.remove(&id);
                }
                joined
            })
            .fixed(move |s: &Session, p: &Move| {
                let st = &mut *m.lock();
                st.core
                    .step(&mut st.batches, s.id().get(), p, Instant::now())
            })
            .fixed(move |s: &Session, p: &Attack| {
                let st = &mut *a.lock();
                st.core.attack(&mut st.batches, s.id().get(), p)
            });
        Self {
            state,
            tick,
            router,
        }
    }

    /// Sets what the world needs on an engine builder: its tick.
    pub fn configure(&self, builder: Builder) -> Builder {
        builder.tick(self.tick)
    }

    /// The world's gauges and counters now.
    pub fn snapshot(&self) -> WorldSnapshot {
        let st = self.state.lock();
        WorldSnapshot {
            players: st.core.players(),
            counts: st.core.counts(),
            ticks: st.ticks,
            flushes: st.flushes,
        }
    }

    fn chat(&self, session: &Session, frame: Frame<'_>) -> Result<(), PacketError> {
        let line = Chat::decode(frame.payload())?;
        // The received payload, shared: relayed by reference.
        let payload = SendBuffer::from(frame.payload_bytes());
        let st = &mut *self.state.lock();
        st.core.chat(
            &mut st.batches,
            session.id().get(),
            line,
            &payload,
            Instant::now(),
        )
    }
}

impl Handler for World {
    type Worker = ();
    type Session = ();

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let session = cx.session;
        if frame.id() != Chat::ID {
            if let Err(e) = self.router.dispatch(session, frame.id(), frame.payload()) {
                session.close_for_packet(e);
            }
            return;
        }
        // Chat is routed here rather than through the router: relaying it by reference needs
        // the frame's shared bytes, not only the decoded view.
        if let Err(e) = self.chat(session, frame) {
            session.close_for_packet(e);
        }
    }

    fn on_disconnect(&self, cx: Context<'_, Self>, _reason: &zerocast::CloseReason) {
        let st = &mut *self.state.lock();
        let id = cx.session.id().get();
        st.batches.outboxes.remove(&id);
        st.core.leave(&mut st.batches, id);
    }

    /// Hands each pending list of this worker's players to its session.
    fn on_tick(&self, _: &mut (), worker: usize) {
        let st = &mut *self.state.lock();
        st.ticks += 1;
        let b = &mut st.batches;
        let Some(dirty) = b.dirty.get_mut(worker) else {
            return;
        };
        let mut ids = std::mem::take(dirty);
        for &id in &ids {
            if let Some(o) = b.outboxes.get_mut(&id) {
                o.listed = false;
                st.flushes += u64::from(!o.pending.is_empty());
                // A closed session drops its list: the player leaves at its disconnect.
                if o.session.send_batch(&mut o.pending).is_err() {
                    o.pending.clear();
                }
            }
        }
        ids.clear();
        b.dirty[worker] = ids;
    }
}
