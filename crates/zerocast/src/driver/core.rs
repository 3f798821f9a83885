//! The worker core: one per worker thread, the same for every backend.
//!
//! A turn: wait for events (or the next deadline), handle them in order (reads deliver
//! frames; handlers queue output), retry reads that spent their budget, run the tick if due,
//! run the commands posted, write every session that has output (one gathered write each),
//! post the batches bound for other workers, and every 100 ms check deadlines.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::inbox::{Command, WorkerShared};
use super::metrics::WorkerMetrics;
use super::slab::slot_of;
use super::slab::Slab;
use super::{Backend, Event, Token, ACCEPT_BACKOFF, HOUSEKEEPING};
use crate::buffer::{self, RecvChunk};
use crate::config::{Config, Transport};
use crate::conn::outq::WriteBuf;
use crate::conn::timing::Limits;
use crate::frame::Decoder;
use crate::handler::Hosted;
use crate::session::{self, CloseReason, Notice, Registry, Session, SessionId, SessionShared};
use crate::sync::counter::Striped;

/// What an engine's workers share.
pub(crate) struct EngineShared {
    pub(crate) config: Config,
    pub(crate) decoder: Arc<dyn Decoder>,
    pub(crate) registry: Registry,
    /// Outgoing connections established (counted on the connecting thread).
    pub(crate) connected: Striped,
    next_id: AtomicU64,
    /// Accepted sessions open, for the connection cap.
    accepted_open: AtomicUsize,
    /// When the engine started: tick `n` falls at `epoch + n * period` on every worker.
    pub(crate) epoch: Instant,
    /// The workers, for handlers to message each other.
    pub(crate) mail: crate::handler::Mail,
    /// The workers, for a spread listener's worker to hand connections to.
    pub(crate) workers: std::sync::OnceLock<Vec<Arc<WorkerShared>>>,
    /// Connections accepted on spread listeners, to pick the next worker.
    next_accept: AtomicUsize,
}

impl EngineShared {
    pub(crate) fn new(config: Config, decoder: Arc<dyn Decoder>) -> Self {
        Self {
            config,
            decoder,
            registry: Registry::new(),
            connected: Striped::new(),
            next_id: AtomicU64::new(1),
            accepted_open: AtomicUsize::new(0),
            epoch: Instant::now(),
            mail: crate::handler::Mail::new(),
            workers: std::sync::OnceLock::new(),
            next_accept: AtomicUsize::new(0),
        }
    }

    /// The worker that serves the next connection accepted by worker `me` on a listener:
    /// `None` for `me` itself (always, unless the listener is `spread` over the workers).
    pub(crate) fn adopter(&self, spread: bool, me: usize) -> Option<&Arc<WorkerShared>> {
        let workers = self.workers.get().filter(|w| spread && w.len() > 1)?;
        let i = self.next_accept.fetch_add(1, Ordering::Relaxed) % workers.len();
        (i != me).then(|| &workers[i])
    }

    /// Counts an accepted session in, unless the engine is at its connection cap.
    pub(crate) fn admit(&self) -> bool {
        let max = self.config.max_connections.unwrap_or(usize::MAX);
        self.accepted_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts an accepted session out.
    pub(crate) fn release(&self) {
        self.accepted_open.fetch_sub(1, Ordering::AcqRel);
    }

    /// A new session owned by `worker`.
    pub(crate) fn new_session(&self, peer: SocketAddr, worker: &Arc<WorkerShared>) -> Session {
        let id = SessionId::new(self.next_id.fetch_add(1, Ordering::Relaxed));
        Session {
            shared: Arc::new(SessionShared::new(
                id,
                peer,
                worker.clone(),
                worker.index as u32,
                self.config.max_queued_bytes,
            )),
        }
    }
}

/// One worker: its backend, its sessions, and everything it keeps between turns.
pub(crate) struct Core<B: Backend> {
    pub(super) b: B,
    pub(super) shared: Arc<WorkerShared>,
    pub(super) ctx: Arc<EngineShared>,
    pub(super) app: Box<dyn Hosted>,
    pub(super) m: Arc<WorkerMetrics>,
    pub(super) conns: Slab<Conn>,
    /// Receive memory for readiness backends.
    pub(super) recv: RecvChunk,
    /// Events to handle, oldest first (a mid-turn budget flush may add to it).
    pub(super) events: VecDeque<Event>,
    /// Scratch for the backend's `wait`.
    fresh: Vec<Event>,
    commands: Vec<Command>,
    /// Sessions whose read budget ran out with data possibly left: read again next turn.
    pub(super) again: Vec<Token>,
    /// Scratch list of slots to write.
    pub(super) dirty: Vec<u32>,
    /// Write buffers kept for reuse, boxed: a completion backend's kernel reads a write's
    /// `msghdr` while it is in flight, so each keeps its address when moved.
    #[allow(clippy::vec_box)]
    pub(super) writes: Vec<Box<WriteBuf>>,
    /// Scratch for taking a session's own queue.
    pub(super) taken: VecDeque<crate::buffer::SendBuffer>,
    limits: Limits,
    epoch: Instant,
    pub(super) now: Instant,
    /// `now` in milliseconds since `epoch` (the connections' clock).
    pub(super) now_ms: u32,
    /// `now` in microseconds since `epoch`, wrapping (the write delay's clock).
    pub(super) now_us: u64,
    /// The write delay in microseconds.
    pub(super) write_delay_us: u32,
    last_housekeeping: Instant,
    /// When the sockets were last looked at (for the read delay, see
    /// [`Builder::read_delay`](crate::Builder::read_delay)).
    last_input: Instant,
    /// The next tick: when, and its number.
    next_tick: Option<(Instant, u64)>,
    accept_paused_until: Option<Instant>,
    accept_stopped: Vec<usize>,
    /// Per listener index: the transport it serves, and whether what it accepts is handed
    /// round the workers.
    transports: Vec<(Transport, bool)>,
    /// The datagram socket, when the engine serves datagrams.
    #[cfg(target_os = "linux")]
    pub(super) udp: Option<Box<crate::sys::udp::Udp>>,
    last_accept_warning: Option<Instant>,
    pub(super) shutdown_at: Option<Instant>,
    /// When the output held for coalescing is written (see [`Builder::write_delay`]).
    ///
    /// [`Builder::write_delay`]: crate::Builder::write_delay
    pub(super) write_at: Option<Instant>,
    exit: bool,
    /// Sessions open (the slab also holds closed ones awaiting their release).
    pub(super) open: usize,
}

fn ms(d: Option<Duration>) -> Option<u32> {
    d.map(|d| d.as_millis().min(u128::from(u32::MAX - 1)) as u32)
}

impl<B: Backend> Core<B> {
    pub(crate) fn new(
        b: B,
        shared: Arc<WorkerShared>,
        ctx: Arc<EngineShared>,
        app: Box<dyn Hosted>,
        m: Arc<WorkerMetrics>,
    ) -> Self {
        let now = Instant::now();
        let cfg = &ctx.config;
        let limits = Limits {
            first_frame: ms(cfg.first_frame_timeout),
            idle: ms(cfg.idle_timeout),
            soft_queued: cfg.soft_queued_bytes,
            grace: ms(Some(cfg.slow_consumer_grace)).unwrap_or(0),
        };
        Self {
            recv: RecvChunk::new(cfg.recv_chunk),
            next_tick: cfg.tick.map(|p| tick_after(ctx.epoch, p, now)),
            limits,
            b,
            shared,
            app,
            m,
            conns: Slab::new(),
            events: VecDeque::with_capacity(1024),
            fresh: Vec::with_capacity(1024),
            commands: Vec::new(),
            again: Vec::new(),
            dirty: Vec::new(),
            writes: Vec::new(),
            taken: VecDeque::new(),
            epoch: now,
            now,
            now_ms: 0,
            now_us: 0,
            write_delay_us: cfg.write_delay.as_micros().min(u128::from(u32::MAX / 4)) as u32,
            last_housekeeping: now,
            last_input: now,
            accept_paused_until: None,
            accept_stopped: Vec::new(),
            transports: Vec::new(),
            #[cfg(target_os = "linux")]
            udp: None,
            last_accept_warning: None,
            shutdown_at: None,
            write_at: None,
            exit: false,
            open: 0,
            ctx,
        }
    }

    /// Runs the worker until it shuts down.
    pub(crate) fn run(mut self) {
        self.shared.enter();
        self.app.start(&crate::handler::Start {
            index: self.shared.index,
            workers: self.ctx.config.workers,
            mail: self.ctx.mail.clone(),
        });
        let mut again = Vec::new();
        while !self.exit || self.b.busy() {
            let (timeout, defer) = self.wait_plan();
            let mut fresh = std::mem::take(&mut self.fresh);
            if let Err(e) = self.b.wait(timeout, defer, &mut fresh) {
                tracing::error!(worker = self.shared.index, error = %e, "waiting for events failed");
                std::thread::sleep(HOUSEKEEPING);
            }
            self.events.extend(fresh.drain(..));
            self.fresh = fresh;
            self.set_now();
            self.last_input = self.now;
            self.m.turns.add(1);
            let mut worked = !self.events.is_empty() || !self.again.is_empty();
            while let Some(ev) = self.events.pop_front() {
                self.on_event(ev);
            }
            std::mem::swap(&mut self.again, &mut again);
            for token in again.drain(..) {
                self.on_readable(token, false);
            }
            self.tick_if_due();
            worked |= self.run_commands();
            self.write_when_due();
            self.resume_accepting();
            if self.now.duration_since(self.last_housekeeping) >= HOUSEKEEPING {
                self.last_housekeeping = self.now;
                self.housekeeping();
            }
            self.check_shutdown();
            buffer::reclaim_thread_pool();
            self.publish_gauges();
            if worked {
                self.m.busy_ns.add(self.now.elapsed().as_nanos() as u64);
            }
        }
        self.shared.stop();
        session::for_outbox(|o| o.clear());
        buffer::reclaim_thread_pool();
        self.publish_gauges();
        // The thread's chunk pool goes with the thread: a chunk still viewed elsewhere (by
        // another worker's queue, say) is freed by its last view and is no longer this
        // worker's.
        self.m.chunks_in_use.set(0);
    }

    fn set_now(&mut self) {
        self.now = Instant::now();
        let since = self.now.duration_since(self.epoch);
        self.now_ms = since.as_millis() as u32;
        self.now_us = since.as_micros() as u64;
    }

    /// How long the next wait may last, and whether input waits for its end: with a read
    /// delay the worker sleeps until [`timeout`](Self::timeout) or until the delay has passed
    /// since it last looked at its sockets, whichever comes first, and reads them then.
    fn wait_plan(&self) -> (Option<Duration>, bool) {
        let timeout = self.timeout();
        let delay = self.ctx.config.read_delay;
        if delay.is_zero() || timeout == Some(Duration::ZERO) {
            return (timeout, false);
        }
        let read_in = (self.last_input + delay).saturating_duration_since(Instant::now());
        (Some(timeout.map_or(read_in, |t| t.min(read_in))), true)
    }

    /// How long the next wait may last: until the next tick, housekeeping, or accept retry;
    /// not at all with work waiting or when busy-polling.
    fn timeout(&self) -> Option<Duration> {
        if self.ctx.config.busy_poll || !self.again.is_empty() || !self.events.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut until = self.last_housekeeping + HOUSEKEEPING;
        for t in [
            self.next_tick.map(|t| t.0),
            self.accept_paused_until,
            self.shutdown_at,
            self.write_at,
        ]
        .into_iter()
        .flatten()
        {
            until = until.min(t);
        }
        Some(until.saturating_duration_since(Instant::now()))
    }

    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Readable { token, hup } => self.on_readable(token, hup),
            Event::Writable(token) => {
                if let Some(c) = self.conns.get_mut(token).filter(|c| c.blocked) {
                    c.blocked = false;
                    self.flush(token);
                }
            }
            Event::Received(token, data) => self.on_received(token, data),
            Event::Eof(token) => self.close_after_flush(token, CloseReason::PeerClosed),
            Event::Failed(token, e) => self.close(token, CloseReason::from_io(&e)),
            Event::Starved => self.m.recv_buffer_waits.add(1),
            Event::Sent(token, result) => self.on_sent(token, result),
            Event::Accepted {
                listener,
                socket,
                peer,
            } => {
                let (transport, spread) = self
                    .transports
                    .get(listener)
                    .copied()
                    .unwrap_or((Transport::Tcp, false));
                match self.ctx.adopter(spread, self.shared.index) {
                    Some(worker) => worker.post(Command::Adopt(socket, peer, transport)),
                    None => self.on_accepted(socket, peer, transport),
                }
            }
            Event::AcceptFailed { listener, error } => self.on_accept_failed(listener, error),
            Event::Released(token) => self.release(token),
            #[cfg(target_os = "linux")]
            Event::Datagrams => self.on_datagrams(),
            #[cfg(not(target_os = "linux"))]
            Event::Datagrams => {}
            Event::Woken => {
                let mut cmds = std::mem::take(&mut self.commands);
                self.shared.take_inbox(&mut cmds);
                self.commands = cmds;
            }
        }
    }

    fn tick_if_due(&mut self) {
        let (Some((due, number)), Some(period)) = (self.next_tick, self.ctx.config.tick) else {
            return;
        };
        if self.now < due {
            return;
        }
        // Missed ticks are not replayed: the next is the first still ahead.
        self.next_tick = Some(tick_after(self.ctx.epoch, period, self.now));
        if self.shutdown_at.is_none() {
            let t0 = Instant::now();
            self.app.tick(crate::handler::Tick {
                worker: self.shared.index,
                number,
            });
            self.m.tick_ns.record(t0.elapsed().as_nanos() as u64);
        }
    }

    /// Runs posted commands until none are left (handlers may post more while they run).
    /// Returns whether there was any.
    pub(super) fn run_commands(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut cmds = std::mem::take(&mut self.commands);
            WorkerShared::take_local(&mut cmds);
            if cmds.is_empty() {
                self.commands = cmds;
                return any;
            }
            any = true;
            for cmd in cmds.drain(..) {
                self.command(cmd);
            }
            self.commands = cmds;
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Listen {
                sock,
                transport,
                spread,
            } => match self.b.listen(sock) {
                Ok(i) => {
                    if self.transports.len() <= i {
                        self.transports.resize(i + 1, (Transport::Tcp, false));
                    }
                    self.transports[i] = (transport, spread);
                    if self.shutdown_at.is_none() {
                        self.b.accept(i);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot watch listener"),
            },
            Command::Adopt(sock, peer, transport) => self.on_accepted(sock, peer, transport),
            Command::Register(fd, session, ws) => {
                if self.shutdown_at.is_some() {
                    drop(fd);
                    session.shared.retire();
                } else {
                    self.register(fd, session, false, ws);
                }
            }
            Command::Session(Notice::Flush(session)) => {
                if let Some(token) = self.token_of(&session) {
                    self.take_foreign(token);
                }
            }
            Command::Session(Notice::Close(session, reason)) => {
                if let Some(token) = self.token_of(&session) {
                    self.close(token, reason);
                }
            }
            #[cfg(target_os = "linux")]
            Command::Datagrams(fd) => self.start_datagrams(fd),
            #[cfg(not(target_os = "linux"))]
            Command::Datagrams(fd) => drop(fd),
            Command::Session(Notice::Deliver(batch)) => self.deliver_batch(batch),
            Command::Session(Notice::Message(m)) => self.app.message(m),
            Command::Shutdown(deadline) => {
                self.b.stop_accepting();
                self.accept_stopped.clear();
                self.shutdown_at = Some(deadline.unwrap_or(self.now));
                if deadline.is_some() {
                    for token in self.conns.tokens() {
                        self.close_after_flush(token, CloseReason::Shutdown);
                    }
                }
            }
        }
    }

    /// The slot of `session` in this worker, if it is still open here.
    pub(super) fn token_of(&mut self, session: &Arc<SessionShared>) -> Option<Token> {
        let token = session.token.load(Ordering::Relaxed);
        let conn = self.conns.get_mut(token)?;
        (Arc::ptr_eq(&conn.session.shared, session) && !conn.closed).then_some(token)
    }

    fn on_accept_failed(&mut self, listener: usize, e: io::Error) {
        self.accept_stopped.push(listener);
        // The pending connection stays in the backlog; retrying at once would spin.
        self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
        if !crate::sys::out_of_resources(&e) {
            tracing::warn!(error = %e, "accept failed");
        } else if self
            .last_accept_warning
            .is_none_or(|t| self.now.duration_since(t) > Duration::from_secs(1))
        {
            self.last_accept_warning = Some(self.now);
            tracing::warn!(error = %e, "accept failed: out of descriptors or memory; backing off");
        }
    }

    fn resume_accepting(&mut self) {
        if self.accept_paused_until.is_some_and(|t| self.now >= t) {
            self.accept_paused_until = None;
            if self.shutdown_at.is_none() {
                for l in std::mem::take(&mut self.accept_stopped) {
                    self.b.accept(l);
                }
            }
        }
    }

    /// Closes sessions past their deadlines and slow consumers past their grace period.
    /// Runs every [`HOUSEKEEPING`]; O(sessions of this worker).
    fn housekeeping(&mut self) {
        let now = self.now_ms;
        let limits = self.limits;
        let mut expired: Vec<(Token, CloseReason)> = Vec::new();
        let mut queued_total = 0;
        session::for_outbox(|out| {
            for (token, conn) in self.conns.iter_mut() {
                if conn.closed {
                    continue;
                }
                if conn.inflight.is_none() {
                    out.release_quiet(slot_of(token));
                }
                let queued = out
                    .slots
                    .get(slot_of(token) as usize)
                    .map_or(0, |s| s.q.bytes());
                queued_total += queued;
                if let Some(why) = conn.timing.expired(&limits, now, queued) {
                    expired.push((token, why.into()));
                }
            }
        });
        self.m.queued_bytes.set(queued_total as u64);
        for (token, reason) in expired {
            self.close(token, reason);
        }
    }

    fn check_shutdown(&mut self) {
        let Some(at) = self.shutdown_at else {
            return;
        };
        if !self.exit && (self.open == 0 || self.now >= at) {
            for token in self.conns.tokens() {
                self.close(token, CloseReason::Shutdown);
            }
            self.exit = true;
            self.b.finish();
        }
    }

    fn publish_gauges(&self) {
        let held = session::for_outbox(|o| {
            o.keeps.live() + o.batches.iter().map(|b| b.buffers()).sum::<usize>()
        });
        self.m.buffers_held.set(held as u64);
        self.m
            .chunks_in_use
            .set(buffer::thread_chunks_in_use() as u64);
        self.m.connections_open.set(self.open as u64);
    }
}

/// The first tick strictly after `now`: `epoch + n * period`, and `n`.
fn tick_after(epoch: Instant, period: Duration, now: Instant) -> (Instant, u64) {
    let p = period.as_nanos().max(1);
    let n = now.saturating_duration_since(epoch).as_nanos() / p + 1;
    let at = epoch + Duration::from_nanos((n * p).min(u128::from(u64::MAX)) as u64);
    (at, n as u64)
}

impl From<crate::conn::timing::Expired> for CloseReason {
    fn from(e: crate::conn::timing::Expired) -> Self {
        use crate::conn::timing::Expired;
        match e {
            Expired::FirstFrame => Self::FirstFrameTimeout,
            Expired::Idle => Self::IdleTimeout,
            Expired::SlowConsumer => Self::SlowConsumer,
        }
    }
}
