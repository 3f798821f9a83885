//! The MMO world server on the engine: players join (the server assigns their ids), move,
//! attack, chat nearby or to everyone, ping, and leave; every event reaches the players in
//! range of it. The server is authoritative ([`WorldConfig`]): it refuses moves faster than
//! the maximum speed or outside the world, and closes the session of a client that sends a
//! malformed packet, with a [`Goodbye`] saying why (docs/PROTOCOL.md).
//!
//! # Shards and ticks
//! Each engine worker runs a shard of the world ([`Core`]) for the players connected to it,
//! with no lock: a player's packets are judged by its own worker, and its events laid out in
//! its shard's buffers of the cells they happen in. Every [`WorldConfig::tick`] each shard
//! ends its tick, posts the frozen batch to the other workers ([`zerocast::Mail`]), and once
//! it holds every shard's batch of that tick (or at its next tick, whichever comes first)
//! hands each of its players the slices of the buffers of the 3×3 cells around it
//! ([`Fanout`]): one gathered write per player per tick, whatever happened in it, and no
//! reference count or lock per recipient.
//!
//! Build the engine with the world's tick ([`World::configure`]); without ticks nothing would
//! ever be written.
//!
//! # Spectating
//! A world built with [`World::spectate`] also publishes where its players stand: every
//! [`SPECTATE_EVERY`] ticks each shard copies its players' positions into a vector it keeps
//! and swaps it with its slot on the shared board (both vectors are reused: no allocation in
//! steady state, and the lock is held for the swap only). [`World::positions`] reads them. A
//! world that does not spectate copies nothing.

use std::sync::Arc;
use std::time::Instant;

use rustc_hash::{FxHashMap, FxHashSet};
use zerocast::frame::HEADER_LEN;
use zerocast::metrics::Row;
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::{
    Builder, CloseReason, Context, Fanout, Frame, Handler, Mail, SendBuffer, Session, Start, Tick,
};
use zerocopy::little_endian::{F32, U16, U64};

use crate::cluster::BusLink as Link;
use crate::cluster::{BusFigures, Cluster};
use crate::core::{Core, Counts, Deliver, EntityId, Part, Position, TickBatch};
use crate::lockorder::OrderedMutex;
use crate::packets::{
    goodbye, reject, Attack, ChannelOffer, Chat, Goodbye, Join, Move, Moved, OpenChannel, Ping,
};
use crate::rules::WorldConfig;

/// How many times per tick a world worker reads its sockets (see [`World::configure`]).
const READ_PASSES_PER_TICK: u32 = 5;

/// Ticks between a spectating world's position reports ([`World::spectate`]): 200 ms at the
/// default 20 Hz tick, smooth enough for a map a person watches.
pub const SPECTATE_EVERY: u32 = 4;

/// A snapshot of the world's gauges and counters, summed over its shards.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorldSnapshot {
    /// Players in the world now.
    pub players: usize,
    /// The game's counters.
    pub counts: Counts,
    /// Ticks delivered before every other shard's batch of the tick had arrived (those
    /// events reach their players a tick later): a worker that falls behind shows here.
    pub late: u64,
    /// `Moved` frames sent by datagram (to players whose channel is bound).
    pub datagram_moves: u64,
    /// Of them, those of keyframes (every position resent each second).
    pub keyframe_moves: u64,
    /// Ticks between deliveries now: 1 while the world is within its write budget
    /// ([`WorldConfig::max_writes_per_sec`]), more when it is over capacity.
    pub stride: u32,
    /// The bus's figures, in a cluster ([`World::clustered`]).
    pub bus: Option<BusFigures>,
}

impl WorldSnapshot {
    /// The figures, named as the engine's are ([`zerocast::metrics::Row`]); a `/metrics`
    /// endpoint prefixes them `zerocast_world_`.
    pub fn rows(&self) -> Vec<Row> {
        use zerocast::metrics::Kind::{Counter as C, Gauge as G};
        let c = &self.counts;
        let row = Row::whole;
        let mut rows = vec![
            row("players", G, "Players in the world.", self.players as u64),
            row("joins", C, "Players joined.", c.joins),
            row("moves", C, "Moves accepted.", c.moves),
            row(
                "conflated",
                C,
                "Moves folded into the same player's earlier move of the tick (the world sends \
                 the latest position, not every step: a world over capacity degrades here).",
                c.conflated,
            ),
            row(
                "superseded",
                C,
                "Moves left out of a write that carried a later position of the same player.",
                c.superseded,
            ),
            row("rejected", C, "Packets refused with Rejected.", c.rejected),
            row("attacks", C, "Attacks accepted.", c.attacks),
            row("chats", C, "Chat lines relayed.", c.chats),
            row(
                "deliveries",
                C,
                "Packets delivered to players.",
                c.deliveries,
            ),
            row(
                "flushes",
                C,
                "Per-player tick writes handed to sessions.",
                c.flushes,
            ),
            row("ticks", C, "Shard ticks delivered.", c.ticks),
            row(
                "late_ticks",
                C,
                "Ticks delivered before every other shard's batch had arrived.",
                self.late,
            ),
            row(
                "datagram_moves",
                C,
                "Moved frames sent by datagram.",
                self.datagram_moves,
            ),
            row(
                "keyframe_moves",
                C,
                "Moved frames of keyframes (positions resent by datagram each second).",
                self.keyframe_moves,
            ),
            row(
                "delivery_stride",
                G,
                "Ticks between deliveries (1 within capacity; more when over it, moves conflated).",
                u64::from(self.stride),
            ),
        ];
        if let Some(b) = &self.bus {
            rows.extend([
                row("bus_connected", G, "1 while connected to the NATS server.", b.connected),
                row("bus_published", C, "Messages published on the bus.", b.published),
                row("bus_received", C, "Messages received from other world processes.", b.bridge.received),
                row(
                    "bus_dropped",
                    C,
                    "Messages dropped because a queue toward or from the bus was full (oldest first).",
                    b.dropped,
                ),
                row("bus_unsent", C, "Messages not published because the bus was down.", b.unsent),
                row("bus_bad", C, "Messages from the bus refused as malformed.", b.bridge.bad),
                row("bus_nodes", G, "Other world processes heard from within the timeout.", b.bridge.nodes),
                row("bus_remote_players", G, "Other processes' players known here.", b.bridge.remote_players),
                row("bus_cells", G, "Area-of-interest cells this process's players see.", b.bridge.cells),
                row(
                    "bus_subscriptions",
                    G,
                    "Bus subscriptions: a cell's, or one for a whole region where most of it is seen; a zone's.",
                    b.bridge.subscriptions,
                ),
                row(
                    "bus_duplicates",
                    C,
                    "Messages that came through two subscriptions and were used once.",
                    b.bridge.duplicates,
                ),
                row(
                    "bus_bundles",
                    C,
                    "Bundles received: one message with a tick's events in several cells of a zone.",
                    b.bridge.bundles,
                ),
            ]);
        }
        rows
    }
}

/// What each shard last reported.
#[derive(Debug, Clone, Copy, Default)]
struct ShardStats {
    players: usize,
    counts: Counts,
    late: u64,
    datagram_moves: u64,
    keyframe_moves: u64,
}

/// Which ticks deliver: every `stride`-th, the stride changing to `next` from tick `from`
/// (a tick every shard reaches after reading the change). Shard 0 decides; all follow.
#[derive(Debug, Clone, Copy)]
struct StridePlan {
    stride: u32,
    next: u32,
    from: u64,
}

impl StridePlan {
    fn at(&self, tick: u64) -> u32 {
        if tick >= self.from {
            self.next
        } else {
            self.stride
        }
    }
}

/// What the shards share: their reports and the delivery plan.
struct Board {
    shards: Vec<ShardStats>,
    plan: StridePlan,
    /// Each shard's players' positions, by shard index, when spectating (else empty).
    positions: Vec<Vec<Position>>,
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
    config: WorldConfig,
    board: Arc<OrderedMutex<Board>>,
    /// The bus thread's side, in a cluster ([`World::clustered`]).
    cluster: Option<Arc<Link>>,
    /// The high 32 bits of this process's player ids (0 outside a cluster).
    node: u64,
    /// Shards publish their players' positions ([`World::spectate`]).
    spectate: bool,
}

/// A worker's shard: the [`Handler::Worker`] state of the world.
#[derive(Default)]
pub struct Shard(Option<ShardState>);

struct ShardState {
    core: Core,
    index: usize,
    workers: usize,
    mail: Mail,
    sessions: FxHashMap<EntityId, Session>,
    /// Players whose datagram channel is bound (a datagram of theirs arrived): the moves of
    /// others reach them by datagram.
    udp: FxHashSet<EntityId>,
    /// Scratch for datagram payloads and keyframes.
    dgram: Vec<u8>,
    view: Vec<(EntityId, [f32; 3])>,
    datagram_moves: u64,
    keyframe_moves: u64,
    /// This shard's batch of the tick being delivered, until every other shard's batch of
    /// that tick has arrived.
    waiting: Option<Arc<TickBatch>>,
    /// The other shards' batches received since the last delivery.
    inbox: Vec<Arc<TickBatch>>,
    late: u64,
    /// The delivery stride of the current tick.
    stride: u32,
    /// Scratch: which shards' batches are in.
    seen: Vec<bool>,
    board: Arc<OrderedMutex<Board>>,
    /// Publish positions every [`SPECTATE_EVERY`] ticks ([`World::spectate`]).
    spectate: bool,
    /// Ticks since the positions were last published.
    since_positions: u32,
    /// The positions being filled, swapped with the board's slot when published.
    spare: Vec<Position>,
}

/// Every position a datagram player sees is sent again this often (in ticks), so that a
/// view converges even when the datagram with a player's last move was lost. A keyframe's
/// `Moved` frames have velocity 0.
const KEYFRAME_TICKS: u64 = 20;

/// Queues each player's parts on its session, each shared buffer held once per delivery.
struct Out<'a> {
    sessions: &'a FxHashMap<EntityId, Session>,
    fans: Vec<Fanout>,
    /// Datagram players: their parts' `Moved` frames go by datagram.
    udp: &'a FxHashSet<EntityId>,
    bufs: Vec<SendBuffer>,
    dgram: &'a mut Vec<u8>,
    /// `Moved` frames put in datagrams.
    moves: u64,
}

impl Deliver for Out<'_> {
    fn begin(&mut self, shared: &[SendBuffer]) {
        self.fans.clear();
        self.fans.extend(shared.iter().cloned().map(Fanout::new));
        self.bufs.clear();
        if !self.udp.is_empty() {
            self.bufs.extend(shared.iter().cloned());
        }
    }

    fn player(&mut self, to: EntityId, parts: &[Part]) {
        let Some(session) = self.sessions.get(&to) else {
            return;
        };
        if !self.udp.is_empty() && self.udp.contains(&to) {
            return self.split(session, parts);
        }
        // Each run of parts in one buffer is queued with one lookup of the session.
        for run in parts.chunk_by(|a, b| a.buffer == b.buffer) {
            let ranges = run.iter().map(|p| p.range.clone());
            // A refused send means the session is closing: the player leaves at its
            // disconnect.
            if self.fans[run[0].buffer]
                .send_ranges(session, ranges)
                .is_err()
            {
                return;
            }
        }
    }
}

impl Out<'_> {
    /// A datagram player's parts: its `Moved` frames copied into datagrams (a few tens of
    /// bytes each), runs of every other frame queued on the stream as they lie.
    fn split(&mut self, session: &Session, parts: &[Part]) {
        self.dgram.clear();
        for p in parts {
            let bytes = &self.bufs[p.buffer][p.range.clone()];
            let (mut at, mut run) = (0, 0);
            while at + HEADER_LEN <= bytes.len() {
                let size = usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
                let id = u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]);
                if size < HEADER_LEN || at + size > bytes.len() {
                    break; // the core lays out whole frames: not reached
                }
                if id == Moved::ID {
                    if run < at {
                        let r = p.range.start + run..p.range.start + at;
                        if self.fans[p.buffer].send(session, r).is_err() {
                            return;
                        }
                    }
                    push_datagram(session, self.dgram, &bytes[at..at + size]);
                    self.moves += 1;
                    run = at + size;
                }
                at += size;
            }
            if run < bytes.len() {
                let r = p.range.start + run..p.range.end;
                if self.fans[p.buffer].send(session, r).is_err() {
                    return;
                }
            }
        }
        flush_datagram(session, self.dgram);
    }
}

/// Adds a frame to the datagram being filled for `session`, sending it first if the frame
/// would not fit.
fn push_datagram(session: &Session, dgram: &mut Vec<u8>, frame: &[u8]) {
    if dgram.len() + frame.len() > zerocast::datagram::MAX_PAYLOAD {
        flush_datagram(session, dgram);
    }
    dgram.extend_from_slice(frame);
}

fn flush_datagram(session: &Session, dgram: &mut Vec<u8>) {
    if !dgram.is_empty() {
        // Lossy by contract; an unbound or closing channel drops it too.
        let _ = session.send_datagram(dgram);
        dgram.clear();
    }
}

impl ShardState {
    /// True once every other shard's batch of the waiting tick is in.
    fn ready(&mut self) -> bool {
        let Some(own) = &self.waiting else {
            return false;
        };
        self.seen.clear();
        self.seen.resize(self.workers, false);
        for b in &self.inbox {
            if b.tick >= own.tick {
                if let Some(s) = self.seen.get_mut(b.shard as usize) {
                    *s = true;
                }
            }
        }
        let others = self.seen.iter().filter(|&&s| s).count();
        others + 1 >= self.workers
    }

    fn deliver(&mut self) {
        let Some(own) = self.waiting.take() else {
            return;
        };
        // A batch of a later tick (a shard that ran ahead) waits for that tick.
        let mut later = Vec::new();
        self.inbox.retain(|b| {
            let keep = b.tick <= own.tick;
            if !keep {
                later.push(b.clone());
            }
            keep
        });
        let tick = own.tick;
        let mut out = Out {
            sessions: &self.sessions,
            fans: Vec::new(),
            udp: &self.udp,
            bufs: Vec::new(),
            dgram: &mut self.dgram,
            moves: 0,
        };
        self.core.deliver(own, &self.inbox, self.stride, &mut out);
        self.datagram_moves += out.moves;
        if tick % KEYFRAME_TICKS == 0 {
            self.keyframe();
        }
        self.inbox.clear();
        self.inbox.append(&mut later);
        self.report();
    }

    /// Every datagram player is sent the position of everyone it sees.
    fn keyframe(&mut self) {
        for id in &self.udp {
            let Some(session) = self.sessions.get(id) else {
                continue;
            };
            self.core.view(*id, &mut self.view);
            self.dgram.clear();
            for &(e, [x, y, z]) in &self.view {
                let mut f = [0u8; HEADER_LEN + std::mem::size_of::<Moved>()];
                Moved {
                    id: U64::new(e),
                    x: F32::new(x),
                    y: F32::new(y),
                    z: F32::new(z),
                    velocity: F32::new(0.0),
                }
                .encode_into(&mut &mut f[..]);
                push_datagram(session, &mut self.dgram, &f);
                self.datagram_moves += 1;
                self.keyframe_moves += 1;
            }
            flush_datagram(session, &mut self.dgram);
        }
    }

    fn report(&self) {
        let mut board = self.board.lock();
        if let Some(s) = board.shards.get_mut(self.index) {
            *s = ShardStats {
                players: self.core.players(),
                counts: self.core.counts(),
                late: self.late,
                datagram_moves: self.datagram_moves,
                keyframe_moves: self.keyframe_moves,
            };
        }
    }

    /// Puts this shard's players' positions on the board: filled into the spare vector
    /// without the lock, then swapped with the shard's slot under it.
    fn publish_positions(&mut self) {
        self.spare.clear();
        self.core.positions_into(&mut self.spare);
        let mut board = self.board.lock();
        if let Some(slot) = board.positions.get_mut(self.index) {
            std::mem::swap(slot, &mut self.spare);
        }
    }

    fn handle(
        &mut self,
        id: EntityId,
        session: &Session,
        frame: &Frame<'_>,
    ) -> Result<(), PacketError> {
        let payload = frame.payload();
        let now = Instant::now();
        if frame.is_datagram() {
            // Moves and pings only, from a player who joined; the first binds the player's
            // view to datagrams.
            if !self.sessions.contains_key(&id) {
                return Ok(());
            }
            if !matches!(frame.id(), Move::ID | Ping::ID) {
                return Err(PacketError::UnknownId { id: frame.id() });
            }
            self.udp.insert(id);
        }
        let core = &mut self.core;
        match frame.id() {
            Move::ID => core.step(id, Move::decode(payload)?, now),
            Chat::ID => core.chat(id, Chat::decode(payload)?, payload, now),
            Attack::ID => core.attack(id, Attack::decode(payload)?, now),
            Ping::ID => core.ping(id, Ping::decode(payload)?),
            OpenChannel::ID if !frame.is_datagram() => {
                OpenChannel::decode(payload)?;
                match session.open_datagrams() {
                    Ok(o) => {
                        let offer = ChannelOffer {
                            token: U64::new(o.token),
                            key: o.key,
                            port: U16::new(o.port),
                        };
                        let _ = session.send(offer.encode());
                    }
                    Err(_) => core.refuse(id, OpenChannel::ID, reject::NO_CHANNEL),
                }
                Ok(())
            }
            Join::ID => {
                core.join(id, Join::decode(payload)?, now)?;
                self.sessions.insert(id, session.clone());
                self.report();
                Ok(())
            }
            id => Err(PacketError::UnknownId { id }),
        }
    }
}

impl World {
    /// An empty world.
    pub fn new(config: WorldConfig) -> Self {
        let plan = StridePlan {
            stride: 1,
            next: 1,
            from: 0,
        };
        Self {
            config,
            board: Arc::new(OrderedMutex::new(
                "world.board",
                Board {
                    shards: Vec::new(),
                    plan,
                    positions: Vec::new(),
                },
            )),
            cluster: None,
            node: 0,
            spectate: false,
        }
    }

    /// With `on`, the shards publish their players' positions every [`SPECTATE_EVERY`]
    /// ticks for [`World::positions`] (a live map); off by default, when it costs nothing.
    pub fn spectate(mut self, on: bool) -> Self {
        self.spectate = on;
        self
    }

    /// Every player's position as its shard last published it (at most [`SPECTATE_EVERY`]
    /// ticks ago), in no particular order; empty unless the world spectates
    /// ([`World::spectate`]). In a cluster, this process's players only.
    pub fn positions(&self) -> Vec<Position> {
        let mut out = Vec::new();
        self.positions_into(&mut out);
        out
    }

    /// [`World::positions`], appended to `out` (to reuse its allocation).
    pub fn positions_into(&self, out: &mut Vec<Position>) {
        let board = self.board.lock();
        out.reserve(board.positions.iter().map(Vec::len).sum());
        for shard in &board.positions {
            out.extend_from_slice(shard);
        }
    }

    /// This world as one process of a cluster: its players' ids carry the cluster's node
    /// id, its ticks go to the other processes, and theirs come to its players
    /// ([`crate::cluster`]). Keep the [`Cluster`] alive while the world runs.
    pub fn clustered(mut self, cluster: &Cluster) -> Self {
        let link = cluster.link();
        self.node = u64::from(link.node());
        self.cluster = Some(link);
        self
    }

    /// The id of the player on `session`: the node id (0 outside a cluster) above the low 32
    /// bits of the session id.
    fn entity(&self, session: &Session) -> EntityId {
        self.node << 32 | (session.id().get() & 0xFFFF_FFFF)
    }

    /// The settings.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// Sets what the world needs on an engine builder: its tick, and input read in passes a
    /// fifth of a tick apart ([`Builder::read_delay`]). Moves are applied as they are read
    /// but reach the players only at the tick, so waking for each one buys nothing; reading
    /// only at the tick would put a whole tick's reads in front of its writes (measured in
    /// docs/BENCHMARKS.md). Set another read delay after this call to change it.
    pub fn configure(&self, builder: Builder) -> Builder {
        builder
            .tick(self.config.tick)
            .read_delay(self.config.tick / READ_PASSES_PER_TICK)
    }

    /// The world's gauges and counters now, as the shards last reported them (at their
    /// ticks, joins and leaves).
    pub fn snapshot(&self) -> WorldSnapshot {
        let board = self.board.lock();
        let mut s = WorldSnapshot {
            stride: board.plan.next,
            bus: self.cluster.as_ref().map(|l| l.figures()),
            ..WorldSnapshot::default()
        };
        for shard in &board.shards {
            s.players += shard.players;
            s.counts.add(&shard.counts);
            s.late += shard.late;
            s.datagram_moves += shard.datagram_moves;
            s.keyframe_moves += shard.keyframe_moves;
        }
        s
    }

    /// The delivery stride at tick `tick`; shard 0 also revises the plan from the busiest
    /// shard's players.
    fn stride(&self, shard: usize, tick: u64) -> u32 {
        let mut board = self.board.lock();
        if shard == 0 {
            let busiest = board.shards.iter().map(|s| s.players).max().unwrap_or(0);
            let want = self.config.delivery_stride(busiest);
            let plan = board.plan;
            if want != plan.next {
                let now = plan.at(tick);
                // Two ticks ahead: every other shard reads the change before it applies.
                board.plan = StridePlan {
                    stride: now,
                    next: want,
                    from: tick + 2,
                };
                tracing::info!(stride = want, players = busiest, "world delivery stride");
            }
        }
        board.plan.at(tick).max(1)
    }
}

impl Handler for World {
    type Worker = Shard;
    type Session = ();

    fn on_start(&self, shard: &mut Shard, start: &Start) {
        {
            let mut board = self.board.lock();
            if board.shards.len() < start.workers {
                board.shards.resize(start.workers, ShardStats::default());
            }
            if self.spectate && board.positions.len() < start.workers {
                board.positions.resize_with(start.workers, Vec::new);
            }
        }
        if let Some(link) = &self.cluster {
            link.started(&start.mail, start.workers);
        }
        shard.0 = Some(ShardState {
            core: Core::new(self.config.clone(), start.index as u32),
            index: start.index,
            workers: start.workers,
            mail: start.mail.clone(),
            sessions: FxHashMap::default(),
            udp: FxHashSet::default(),
            dgram: Vec::new(),
            view: Vec::new(),
            datagram_moves: 0,
            keyframe_moves: 0,
            waiting: None,
            inbox: Vec::new(),
            late: 0,
            stride: 1,
            seen: Vec::new(),
            board: self.board.clone(),
            spectate: self.spectate,
            since_positions: 0,
            spare: Vec::new(),
        });
    }

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let Some(st) = cx.worker.0.as_mut() else {
            return;
        };
        if let Err(e) = st.handle(self.entity(cx.session), cx.session, &frame) {
            cx.session.close_for_packet(e);
        }
    }

    fn on_disconnect(&self, cx: Context<'_, Self>, _reason: &CloseReason) {
        let Some(st) = cx.worker.0.as_mut() else {
            return;
        };
        let id = self.entity(cx.session);
        st.udp.remove(&id);
        if st.sessions.remove(&id).is_some() {
            st.core.leave(id);
            st.report();
        }
    }

    /// Ends the shard's tick, posts it to the other shards, and delivers it once theirs
    /// are in (a tick still waiting from last time is delivered now with what arrived).
    /// Over capacity, each player is delivered every `stride`-th tick only.
    fn on_tick(&self, shard: &mut Shard, tick: Tick) {
        let Some(st) = shard.0.as_mut() else {
            return;
        };
        st.stride = self.stride(st.index, tick.number);
        if st.waiting.is_some() {
            st.late += 1;
            st.deliver();
        }
        let own = Arc::new(st.core.end_tick(tick.number));
        if let Some(link) = &self.cluster {
            link.publish(own.clone());
        }
        for to in (0..st.workers).filter(|&w| w != st.index) {
            st.mail.post(to, Box::new(own.clone()));
        }
        st.waiting = Some(own);
        if st.ready() {
            st.deliver();
        }
        if st.spectate {
            st.since_positions += 1;
            if st.since_positions >= SPECTATE_EVERY {
                st.since_positions = 0;
                st.publish_positions();
            }
        }
    }

    fn on_message(&self, shard: &mut Shard, message: Box<dyn std::any::Any + Send>) {
        let Some(st) = shard.0.as_mut() else {
            return;
        };
        if let Ok(batch) = message.downcast::<Arc<TickBatch>>() {
            st.inbox.push(*batch);
            if st.ready() {
                st.deliver();
            }
        }
    }

    fn farewell(&self, _session: &Session, reason: &CloseReason) -> Option<SendBuffer> {
        let code = match reason {
            CloseReason::Protocol(_) => goodbye::PROTOCOL,
            CloseReason::Packet(_) => goodbye::BAD_PACKET,
            CloseReason::FirstFrameTimeout => goodbye::FIRST_FRAME_TIMEOUT,
            CloseReason::IdleTimeout => goodbye::IDLE_TIMEOUT,
            CloseReason::Shutdown => goodbye::SHUTDOWN,
            CloseReason::TooManyConnections => goodbye::FULL,
            _ => goodbye::OTHER,
        };
        Some(Goodbye::encode(code, &reason.to_string()))
    }
}
