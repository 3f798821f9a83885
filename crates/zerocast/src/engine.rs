//! The engine: its builder (the one way to configure it), its worker threads, listening and
//! connecting.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::{Backend, Config, Numa, Transport};
use crate::conn::ws::WsConn;
use crate::driver::core::EngineShared;
use crate::driver::inbox::{Command, WorkerShared};
use crate::driver::metrics::WorkerMetrics;
use crate::driver::worker::spawn;
use crate::frame::Decoder;
use crate::frame::LengthPrefixed;
use crate::handler::HostFactory;
use crate::handler::{host, Handler};
use crate::metrics::{Snapshot, WorkerSnapshot};
use crate::session::{Registry, Session};
use crate::sync::{lock, Mutex};
use crate::sys;

impl Engine {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

/// Builds an [`Engine`]. Every setting has a default; each method says it.
pub struct Builder {
    config: Config,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The defaults. The backend is the OS's default ([`Backend::default`]: epoll on Linux,
    /// IOCP on Windows) unless the `ZEROCAST_BACKEND` environment variable names another (so a
    /// deployment, or CI running every test on each backend, can pick the event loop without
    /// a rebuild); [`backend`](Self::backend) overrides both.
    pub fn new() -> Self {
        let mut config = Config::default();
        if let Some(b) = Backend::from_env() {
            config.backend = b;
        }
        Self { config }
    }

    /// Worker threads: one event loop each. Default: the number of CPUs. Zero is refused by
    /// [`build`](Self::build).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }

    /// Pins worker `i` to CPU `cpus[i % cpus.len()]`. Default: no pinning.
    pub fn pin_cpus(mut self, cpus: Vec<usize>) -> Self {
        self.config.cpus = cpus;
        self
    }

    /// Whether a pinned worker keeps its memory on its CPU's NUMA node. Default
    /// [`Numa::Auto`]: where the machine has more than one node, each pinned worker, once
    /// pinned and before it builds anything, sets its thread's memory policy to prefer its
    /// CPU's node (`set_mempolicy`), so its receive memory, slabs and queues are allocated
    /// there, and binds each chunk of its send-buffer pool to that node (`mbind`). Preferred
    /// rather than strict: a full node falls back to another instead of failing the
    /// allocation. Unpinned workers move between CPUs and are never bound. What was bound
    /// where is logged; [`numa`](crate::numa) reads it back.
    pub fn numa(mut self, numa: Numa) -> Self {
        self.config.numa = numa;
        self
    }

    /// Largest frame accepted, header included (clamped to 4..=65,535). Default 65,535, the
    /// 16-bit maximum.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.config.max_frame = bytes;
        self
    }

    /// Listen backlog. Default 4,096 (the kernel also caps it at `net.core.somaxconn`).
    pub fn backlog(mut self, n: i32) -> Self {
        self.config.backlog = n;
        self
    }

    /// Let [`Engine::listen`] share a port another process already serves (`SO_REUSEPORT`:
    /// the kernel then splits new connections between the processes). Default `false`: a
    /// port already served is refused with an error that names it, because a stale server
    /// left running would otherwise silently take a share of the players. The engine's own
    /// workers always share their listening port among themselves. Linux only: on Windows,
    /// which has no `SO_REUSEPORT`, [`Engine::listen`] refuses it.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.config.reuse_port = on;
        self
    }

    /// Size of each worker's receive chunk (readiness backends read sockets into it).
    /// Default 64 KiB; at least 4 KiB.
    pub fn recv_chunk(mut self, bytes: usize) -> Self {
        self.config.recv_chunk = bytes;
        self
    }

    /// Reads per readiness event before a session yields to the others. Default 8.
    pub fn read_budget(mut self, reads: usize) -> Self {
        self.config.read_budget = reads;
        self
    }

    /// Caps the accepted sessions open at once; connections beyond are closed at once and
    /// counted (`rejected`). Default: no cap (the descriptor limit is the cap).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = Some(n);
        self
    }

    /// An accepted session must deliver its first complete frame within this time, or it is
    /// closed ([`CloseReason::FirstFrameTimeout`](crate::CloseReason)): this stops slowloris
    /// peers that trickle a header and never finish. Default 10 s; `None` disables.
    pub fn first_frame_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.first_frame_timeout = t;
        self
    }

    /// An accepted session that delivers no complete frame for this long is closed
    /// ([`CloseReason::IdleTimeout`](crate::CloseReason)); clients keep quiet sessions alive
    /// with a heartbeat frame. Default 60 s; `None` disables.
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.idle_timeout = t;
        self
    }

    /// Slow-consumer limits on the bytes a session has queued and not yet written (a shared
    /// buffer counts its length for each session that queues it): a send that would take a
    /// session above `hard` is refused and the session closed at once; a session above `soft`
    /// for longer than `grace` is closed ([`CloseReason::SlowConsumer`](crate::CloseReason)).
    /// Defaults: 1 MiB soft, 16 MiB hard, 5 s grace. The hard limit is checked by each sending
    /// path against what it can see without a lock, so a session sent to from several kinds of
    /// thread at once can briefly hold more.
    pub fn queued_bytes_limits(mut self, soft: usize, hard: usize, grace: Duration) -> Self {
        self.config.soft_queued_bytes = soft;
        self.config.max_queued_bytes = hard;
        self.config.slow_consumer_grace = grace;
        self
    }

    /// Kernel send buffer per socket (`SO_SNDBUF`). Default: the kernel autotunes it, up to
    /// `net.ipv4.tcp_wmem`'s maximum (4 MiB here), and that much of a slow consumer's backlog
    /// sits in the kernel before the queued-bytes limits see it. Setting it bounds both the
    /// backlog and the kernel memory per connection.
    pub fn send_buffer(mut self, bytes: usize) -> Self {
        self.config.send_buffer = Some(bytes);
        self
    }

    /// Calls [`Handler::on_tick`] on every worker every `period` (at least 1 µs), on the
    /// worker's own thread. Default: no tick.
    pub fn tick(mut self, period: Duration) -> Self {
        self.config.tick = Some(period.max(Duration::from_micros(1)));
        self
    }

    /// The shortest time between two writes to one session, so that output coalesces
    /// deliberately: a session not written for this long gets its output at the end of the
    /// turn that queued it; one written more recently waits until the delay has passed since
    /// that write, and everything queued meanwhile leaves in one write. A session's own
    /// replies (an echo, an answer right after its read) are never held. Default zero: every
    /// turn writes what it queued, which coalesces only what one turn queued. Broadcast-heavy
    /// servers trade a few milliseconds of latency for far fewer, fuller writes
    /// (docs/BENCHMARKS.md measures it); a world with its own tick needs none.
    pub fn write_delay(mut self, delay: Duration) -> Self {
        self.config.write_delay = delay;
        self
    }

    /// How long received input may wait in the kernel before a worker reads it. With a delay,
    /// a worker does not wake for each socket that becomes readable: it sleeps until its next
    /// deadline (a tick, a held write, housekeeping) or until the delay has passed since it
    /// last looked, whichever is first, and then reads every socket that has data in one
    /// pass; a wake-up from another thread (a command, a shard's batch) still ends the sleep
    /// at once. A server that acts on input only at its tick (a world: moves are applied on
    /// arrival but sent out at the tick) loses nothing by reading once per tick, and saves a
    /// sleep, a wake-up and an `epoll_wait` per message (docs/BENCHMARKS.md, "World"). Input
    /// that arrives meanwhile waits in the socket's receive buffer, where TCP pushes back on a
    /// sender that fills it. Default zero: input is read as soon as it arrives. The epoll
    /// backend honours it; io_uring takes completions as they come (it already receives
    /// without a system call per message).
    pub fn read_delay(mut self, delay: Duration) -> Self {
        self.config.read_delay = delay;
        self
    }

    /// Workers never sleep: they poll their sockets (and the tick's clock) in a loop. Lowest
    /// latency and no wake-up cost (no timer interrupts, no wake-up IPIs from peers), at the
    /// price of a fully busy core per worker even when idle; how much of that time is real
    /// work shows in the `busy_seconds` figure. For dedicated, pinned cores (the load
    /// generator uses it). Default `false`.
    pub fn busy_poll(mut self, on: bool) -> Self {
        self.config.busy_poll = on;
        self
    }

    /// Most datagrams a session's channel takes per second (default 250: a game client sends
    /// tens); the rest of a flood is dropped and counted.
    pub fn datagram_rate(mut self, per_sec: u32) -> Self {
        self.config.datagram_rate = per_sec;
        self
    }

    /// The event loop ([`Backend`]). Default: epoll on Linux, IOCP on Windows, or what
    /// `ZEROCAST_BACKEND` says.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.config.backend = backend;
        self
    }

    /// A framing other than the default length-prefixed one.
    pub fn decoder(mut self, decoder: impl Decoder) -> Self {
        self.config.decoder = Some(Arc::new(decoder));
        self
    }

    /// Starts the workers; every session of this engine is served by `handler`.
    ///
    /// # Errors
    /// `InvalidInput` for settings that contradict each other (zero workers, say), or the
    /// reason a worker's event loop or thread cannot be created.
    pub fn build(self, handler: impl Handler) -> io::Result<Engine> {
        self.config.check()?;
        Engine::start(self.config, host(handler))
    }
}

/// A running set of workers that serve sessions, accepted or connected.
///
/// Dropping the engine shuts it down: every session is closed with
/// [`CloseReason::Shutdown`](crate::CloseReason::Shutdown) and the workers are joined.
pub struct Engine {
    ctx: Arc<EngineShared>,
    backend: Backend,
    workers: Vec<Arc<WorkerShared>>,
    metrics: Vec<Arc<WorkerMetrics>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_worker: AtomicUsize,
}

impl Engine {
    /// The event loop the workers run: [`Backend::Epoll`] or [`Backend::Uring`] (what
    /// [`Backend::Auto`] resolved to).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn start(config: Config, app: HostFactory) -> io::Result<Self> {
        let decoder = config
            .decoder
            .clone()
            .unwrap_or_else(|| Arc::new(LengthPrefixed::new(config.max_frame)));
        let backend = config.backend.resolve()?;
        let ctx = Arc::new(EngineShared::new(config, decoder));
        let n = ctx.config.workers;
        tracing::info!(backend = backend.name(), workers = n, "engine starting");
        if !ctx.config.cpus.is_empty() && ctx.config.numa == Numa::Auto {
            let nodes = crate::sys::numa::online_nodes();
            if nodes.len() <= 1 {
                tracing::info!("one NUMA node here: worker memory is not bound (nothing to gain)");
            }
        }
        let mut engine = Self {
            ctx: ctx.clone(),
            backend,
            workers: Vec::new(),
            metrics: Vec::new(),
            threads: Mutex::new(Vec::new()),
            next_worker: AtomicUsize::new(0),
        };
        for i in 0..n {
            let shared = Arc::new(WorkerShared::new(i));
            let m = Arc::new(WorkerMetrics::default());
            let cpus = &ctx.config.cpus;
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let thread = spawn(
                backend,
                shared.clone(),
                ctx.clone(),
                app.clone(),
                m.clone(),
                cpu,
            )?;
            engine.workers.push(shared);
            engine.metrics.push(m);
            lock(&engine.threads).push(thread);
        }
        let owners: Vec<std::sync::Weak<dyn crate::session::Owner>> = engine
            .workers
            .iter()
            .map(|w| Arc::downgrade(w) as std::sync::Weak<dyn crate::session::Owner>)
            .collect();
        let _ = ctx.mail.workers.set(owners);
        let _ = ctx.workers.set(engine.workers.clone());
        Ok(engine)
    }

    /// Starts accepting on `addr` (port 0 picks a free port) with one `SO_REUSEPORT` listener
    /// per worker, so the kernel spreads connections over workers without a hand-off.
    /// Returns the bound address.
    ///
    /// # Errors
    /// If the address cannot be bound, or (`AddrInUse`) another process already serves the
    /// port and [`Builder::reuse_port`] is off.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.listen_as(addr, Transport::Tcp)
    }

    /// Like [`listen`](Engine::listen), serving WebSocket clients (browsers): see
    /// [`Transport::WebSocket`].
    ///
    /// # Errors
    /// As [`listen`](Engine::listen).
    pub fn listen_websocket(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.listen_as(addr, Transport::WebSocket)
    }

    /// Like [`listen`](Engine::listen), serving `transport` ([`Transport::Both`]: raw TCP
    /// and WebSocket on one port).
    ///
    /// # Errors
    /// As [`listen`](Engine::listen).
    pub fn listen_as(&self, addr: SocketAddr, transport: Transport) -> io::Result<SocketAddr> {
        if !sys::REUSE_PORT && self.ctx.config.reuse_port {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "sharing a port with other processes (reuse_port) needs SO_REUSEPORT, which \
                 this OS does not have",
            ));
        }
        if addr.port() != 0 && !self.ctx.config.reuse_port {
            ensure_unserved(addr)?;
        }
        let first = self.listener(addr)?;
        let bound = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP address"))?;
        if !sys::REUSE_PORT {
            // One listener for the engine: one worker accepts, and hands what it accepts round
            // the workers (a socket completes on one port only). Listeners take turns.
            let i = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
            self.workers[i].post(Command::Listen {
                sock: sys::Sock::from(first),
                transport,
                spread: true,
            });
            return Ok(bound);
        }
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(self.listener(bound)?);
        }
        for (worker, socket) in self.workers.iter().zip(sockets) {
            worker.post(Command::Listen {
                sock: sys::Sock::from(socket),
                transport,
                spread: false,
            });
        }
        Ok(bound)
    }

    fn listener(&self, addr: SocketAddr) -> io::Result<Socket> {
        // SO_REUSEPORT lets this engine's workers each have a listener on the port (and, with
        // `reuse_port`, other processes too); `ensure_unserved` keeps strangers out.
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        #[cfg(target_os = "linux")]
        {
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
        }
        socket.set_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(self.ctx.config.backlog)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Serves datagrams ([`crate::datagram`]) on `addr`'s address: one socket per worker, on
    /// port `addr.port() + i` for worker `i` (or free ports with port 0), so that a session's
    /// datagrams reach the worker that owns it. Returns the bound addresses, by worker; a
    /// session's [`Offer`](crate::datagram::Offer) names its worker's port.
    ///
    /// # Errors
    /// On this OS, always: datagrams are served on Linux only.
    #[cfg(not(target_os = "linux"))]
    pub fn listen_datagrams(&self, addr: SocketAddr) -> io::Result<Vec<SocketAddr>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("datagrams ({addr}) are served on Linux only (recvmmsg/sendmmsg batches)"),
        ))
    }

    /// Serves datagrams ([`crate::datagram`]) on `addr`'s address: one socket per worker, on
    /// port `addr.port() + i` for worker `i` (or free ports with port 0), so that a session's
    /// datagrams reach the worker that owns it. Returns the bound addresses, by worker; a
    /// session's [`Offer`](crate::datagram::Offer) names its worker's port.
    ///
    /// # Errors
    /// If a socket cannot be bound.
    #[cfg(target_os = "linux")]
    pub fn listen_datagrams(&self, addr: SocketAddr) -> io::Result<Vec<SocketAddr>> {
        let mut bound = Vec::new();
        let mut fds = Vec::new();
        for i in 0..self.workers.len() {
            let port = if addr.port() == 0 {
                0
            } else {
                addr.port().checked_add(i as u16).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "datagram ports past 65535")
                })?
            };
            let fd = sys::udp::bind(SocketAddr::new(addr.ip(), port))?;
            bound.push(sys::udp::local_addr(&fd)?);
            fds.push(fd);
        }
        for (worker, fd) in self.workers.iter().zip(fds) {
            worker.post(Command::Datagrams(fd));
        }
        Ok(bound)
    }

    /// Opens an outgoing connection served by this engine's handler, like an accepted one.
    /// Blocks the caller until connected (at most 10 s).
    ///
    /// # Errors
    /// If the connection fails or times out.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<Session> {
        self.connect_from(addr, None)
    }

    /// Like [`connect`](Engine::connect), binding the local side to `source` first (spreading
    /// many connections over several 127.0.0.x addresses multiplies the ephemeral ports).
    ///
    /// # Errors
    /// If binding, connecting or configuring the socket fails.
    pub fn connect_from(&self, addr: SocketAddr, source: Option<IpAddr>) -> io::Result<Session> {
        self.dial(addr, source, None)
    }

    /// Opens an outgoing WebSocket connection to `addr`, asking for `path`, served by this
    /// engine's handler like [`connect`](Engine::connect)'s. The upgrade request goes first;
    /// what the session is sent waits for the server's answer, and every write is then one
    /// masked binary message. A refused upgrade closes the session with
    /// [`CloseReason::Handshake`](crate::CloseReason::Handshake).
    ///
    /// # Errors
    /// If binding, connecting or configuring the socket fails.
    pub fn connect_websocket(
        &self,
        addr: SocketAddr,
        source: Option<IpAddr>,
        path: &str,
    ) -> io::Result<Session> {
        let ws = WsConn::client(&addr.to_string(), path);
        self.dial(addr, source, Some(Box::new(ws)))
    }

    fn dial(
        &self,
        addr: SocketAddr,
        source: Option<IpAddr>,
        ws: Option<Box<WsConn>>,
    ) -> io::Result<Session> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(ip) = source {
            #[cfg(target_os = "linux")]
            if ip.is_ipv4() {
                use std::os::fd::AsRawFd;
                sys::socket::set_bind_address_no_port(socket.as_raw_fd())?;
            }
            socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)?;
        let i = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let worker = &self.workers[i];
        let session = self.ctx.new_session(addr, worker);
        self.ctx.connected.add(1);
        worker.post(Command::Register(
            sys::Sock::from(socket),
            session.clone(),
            ws,
        ));
        Ok(session)
    }

    /// Open sessions.
    pub fn sessions(&self) -> &Registry {
        &self.ctx.registry
    }

    /// The counters: this engine's, summed over its workers and per worker, and the
    /// process-wide buffer gauges.
    pub fn metrics(&self) -> Snapshot {
        let workers: Vec<WorkerSnapshot> = self.metrics.iter().map(|m| m.snapshot()).collect();
        let mut total = WorkerSnapshot::default();
        for w in &workers {
            total.merge(w);
        }
        Snapshot {
            total,
            connected: self.ctx.connected.get() as u64,
            workers,
            live_send_buffers: crate::buffer::live_send_buffers(),
            chunks_allocated: crate::buffer::chunks_allocated(),
        }
    }

    /// Closes every session and listener at once and joins the workers. Idempotent.
    pub fn shutdown(&self) {
        self.stop(None);
    }

    /// Graceful shutdown: stops accepting and reading at once, keeps writing what is queued
    /// until every session is flushed or `drain` has passed, then closes every session with
    /// [`CloseReason::Shutdown`](crate::CloseReason::Shutdown) and joins the workers.
    pub fn shutdown_graceful(&self, drain: Duration) {
        self.stop(Some(std::time::Instant::now() + drain));
    }

    fn stop(&self, deadline: Option<std::time::Instant>) {
        let threads = std::mem::take(&mut *lock(&self.threads));
        if threads.is_empty() {
            return;
        }
        for w in &self.workers {
            w.post(Command::Shutdown(deadline));
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

/// Fails if a socket already listens on `addr`: a probe binds it *without* `SO_REUSEPORT`,
/// which the kernel refuses while any listener holds the port (with or without the option),
/// and closes again at once. `SO_REUSEADDR` on the probe keeps connections in `TIME_WAIT` from
/// an earlier run from counting.
fn ensure_unserved(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // (On Windows SO_REUSEADDR would let the probe bind over a live listener: not set there.)
    #[cfg(target_os = "linux")]
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "port {} on {} is already served by another process: stop that server or \
                 pick another port, or share the port on purpose with --reuse-port \
                 (Builder::reuse_port), and the kernel will split new connections between \
                 the processes",
                addr.port(),
                addr.ip()
            ),
        )),
        Err(e) => Err(e),
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
