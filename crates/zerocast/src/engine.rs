//! The engine: configuration, worker threads, listening and connecting.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::driver::{epoll, uring, Command, Worker, WorkerShared};
use crate::frame::{Decoder, LengthPrefixed};
use crate::metrics::{Metrics, Snapshot};
use crate::session::queue::SendQueue;
use crate::session::{Registry, Session, SessionShared};
use crate::sync::{lock, Mutex};
use crate::{sys, Handler};

/// Engine settings. Build with [`Engine::builder`].
#[derive(Clone)]
pub struct Config {
    /// Worker threads; default: the number of CPUs.
    pub workers: usize,
    /// Pin worker `i` to CPU `cpus[i % cpus.len()]`; default: no pinning.
    pub cpus: Vec<usize>,
    /// Largest frame accepted, header included; default 65,535 (the 16-bit maximum).
    pub max_frame: usize,
    /// Listen backlog; default 4,096.
    pub backlog: i32,
    /// Let [`Engine::listen`] share a port another process already serves (`SO_REUSEPORT`:
    /// the kernel then splits new connections between the processes). Default `false`: a
    /// port already served is refused with an error that names it, because a stale server
    /// left running would otherwise silently take a share of the players. The engine's own
    /// workers always share their listening port among themselves.
    pub reuse_port: bool,
    /// Size of each worker's receive chunk; default 64 KiB.
    pub recv_chunk: usize,
    /// Reads per readiness event before a session yields to others; default 8.
    pub read_budget: usize,
    /// Framing; default [`LengthPrefixed`] with `max_frame`.
    pub decoder: Option<Arc<dyn Decoder>>,
    /// Accepted sessions allowed at once; connections beyond are closed at once and counted in
    /// [`Snapshot::rejected`]. Default: no cap (the descriptor limit is the cap).
    pub max_connections: Option<usize>,
    /// An accepted session must deliver its first complete frame within this time, or it is
    /// closed ([`CloseReason::FirstFrameTimeout`](crate::CloseReason)): this stops slowloris
    /// peers that trickle a header and never finish. Default 10 s; `None` disables.
    pub first_frame_timeout: Option<Duration>,
    /// An accepted session that delivers no complete frame for this long is closed
    /// ([`CloseReason::IdleTimeout`](crate::CloseReason)); clients keep quiet sessions alive
    /// with any frame (a heartbeat). Default 60 s; `None` disables.
    pub idle_timeout: Option<Duration>,
    /// Bytes a session may have queued and not yet written (a shared buffer counts its length
    /// for each session that queues it). A send that would exceed it is refused and the session
    /// closed at once ([`CloseReason::SlowConsumer`](crate::CloseReason)). Default 16 MiB.
    pub max_queued_bytes: usize,
    /// A session above this many queued bytes for longer than `slow_consumer_grace` is closed
    /// as a slow consumer. Default 1 MiB.
    pub soft_queued_bytes: usize,
    /// How long a session may stay above `soft_queued_bytes`. Default 5 s.
    pub slow_consumer_grace: Duration,
    /// Kernel send buffer per socket (`SO_SNDBUF`). Default `None`: the kernel autotunes it,
    /// up to `net.ipv4.tcp_wmem`'s maximum (4 MiB here), and that much of a slow consumer's
    /// backlog sits in the kernel before the queued-bytes limits see it. Setting it bounds both
    /// the backlog and the kernel memory per connection.
    pub send_buffer: Option<usize>,
    /// Call [`Handler::on_tick`](crate::Handler::on_tick) on every worker this often (a
    /// timerfd per worker on epoll, the wait's timeout on io_uring). Default `None`: no tick.
    pub tick: Option<Duration>,
    /// Workers never sleep: they poll their sockets (and check the tick's clock) in a loop.
    /// Lowest latency and no wake-up cost (no timer interrupts, no wake-up IPIs from peers),
    /// at the price of a fully busy core per worker even when idle; how much of that time is
    /// real work shows in [`Snapshot::busy_ns`]. For dedicated, pinned cores (the load
    /// generator uses it). Default `false`.
    pub busy_poll: bool,
    /// The event loop: epoll, io_uring, or io_uring where the kernel allows it. Default
    /// [`Backend::Epoll`], unless the `ZEROCAST_BACKEND` environment variable says `uring` or
    /// `auto` (how CI runs the whole test suite on each). Epoll is the default because it
    /// measured ahead here (docs/BENCHMARKS.md, "io_uring against epoll").
    pub backend: Backend,
}

/// Which event loop the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Edge-triggered epoll: readiness, then a system call per read and per write. The
    /// default.
    #[default]
    Epoll,
    /// io_uring: completions, receive buffers picked by the kernel when data arrives, one
    /// `io_uring_enter` per loop turn. Building an engine fails if the kernel cannot do it.
    Uring,
    /// io_uring if the kernel supports every operation the backend needs, otherwise epoll,
    /// with a log line saying why (io_uring can be disabled by sysctl or seccomp).
    Auto,
}

impl Backend {
    /// `epoll`, `uring` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::Uring => "uring",
            Self::Auto => "auto",
        }
    }

    /// Parses [`name`](Self::name)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "epoll" => Some(Self::Epoll),
            "uring" | "io_uring" => Some(Self::Uring),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    fn from_env() -> Self {
        let Ok(v) = std::env::var("ZEROCAST_BACKEND") else {
            return Self::default();
        };
        Self::parse(&v).unwrap_or_else(|| {
            tracing::warn!(
                value = %v,
                "ZEROCAST_BACKEND is not epoll, uring or auto: ignored, using the default"
            );
            Self::default()
        })
    }

    /// The backend `self` resolves to on this kernel.
    ///
    /// # Errors
    /// [`Backend::Uring`] on a kernel that cannot run it.
    pub fn resolve(self) -> io::Result<Self> {
        match self {
            Self::Epoll => Ok(Self::Epoll),
            Self::Uring => uring::probe().map(|()| Self::Uring).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("the io_uring backend cannot run here: {}", why_no_uring(&e)),
                )
            }),
            Self::Auto => match uring::probe() {
                Ok(()) => Ok(Self::Uring),
                Err(e) => {
                    tracing::info!(reason = %why_no_uring(&e), "io_uring unavailable, using epoll");
                    Ok(Self::Epoll)
                }
            },
        }
    }
}

/// The probe's error with what usually causes it, for the operator reading the log.
fn why_no_uring(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "{e}: the kernel.io_uring_disabled sysctl or a seccomp profile (as in containers) \
             forbids io_uring"
        ),
        Some(libc::ENOSYS) => format!("{e}: this kernel has no io_uring"),
        Some(libc::ENOMEM) => format!("{e}: locked memory limit too low for the rings"),
        _ => e.to_string(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: sys::available_cpus(),
            cpus: Vec::new(),
            max_frame: LengthPrefixed::MAX,
            backlog: 4096,
            reuse_port: false,
            recv_chunk: 64 * 1024,
            read_budget: 8,
            decoder: None,
            max_connections: None,
            first_frame_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            max_queued_bytes: 16 * 1024 * 1024,
            soft_queued_bytes: 1024 * 1024,
            slow_consumer_grace: Duration::from_secs(5),
            send_buffer: None,
            tick: None,
            busy_poll: false,
            backend: Backend::from_env(),
        }
    }
}

/// Builds an [`Engine`].
#[derive(Default)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Number of worker threads (at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n.max(1);
        self
    }

    /// Pins workers to these CPUs, round-robin.
    pub fn pin_cpus(mut self, cpus: Vec<usize>) -> Self {
        self.config.cpus = cpus;
        self
    }

    /// Largest accepted frame, header included (clamped to 4..=65,535).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.config.max_frame = bytes;
        self
    }

    /// Listen backlog.
    pub fn backlog(mut self, n: i32) -> Self {
        self.config.backlog = n;
        self
    }

    /// Share a listening port with other processes on purpose; see [`Config::reuse_port`].
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.config.reuse_port = on;
        self
    }

    /// Caps accepted sessions; see [`Config::max_connections`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = Some(n);
        self
    }

    /// Deadline for an accepted session's first frame; see [`Config::first_frame_timeout`].
    pub fn first_frame_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.first_frame_timeout = t;
        self
    }

    /// Idle timeout for accepted sessions; see [`Config::idle_timeout`].
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.idle_timeout = t;
        self
    }

    /// Slow-consumer limits: close at once above `hard` queued bytes, or after `grace` above
    /// `soft`; see [`Config::max_queued_bytes`].
    pub fn queued_bytes_limits(mut self, soft: usize, hard: usize, grace: Duration) -> Self {
        self.config.soft_queued_bytes = soft;
        self.config.max_queued_bytes = hard;
        self.config.slow_consumer_grace = grace;
        self
    }

    /// Kernel send buffer per socket; see [`Config::send_buffer`].
    pub fn send_buffer(mut self, bytes: usize) -> Self {
        self.config.send_buffer = Some(bytes);
        self
    }

    /// Calls [`Handler::on_tick`](crate::Handler::on_tick) on every worker every `period`
    /// (at least 1 µs); see [`Config::tick`].
    pub fn tick(mut self, period: Duration) -> Self {
        self.config.tick = Some(period.max(Duration::from_micros(1)));
        self
    }

    /// Busy-poll mode; see [`Config::busy_poll`].
    pub fn busy_poll(mut self, on: bool) -> Self {
        self.config.busy_poll = on;
        self
    }

    /// The event loop ([`Backend`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.config.backend = backend;
        self
    }

    /// A framing other than the default.
    pub fn decoder(mut self, decoder: impl Decoder) -> Self {
        self.config.decoder = Some(Arc::new(decoder));
        self
    }

    /// Starts the workers; every session of this engine is served by `handler`.
    ///
    /// # Errors
    /// If a worker's epoll instance, eventfd or thread cannot be created.
    pub fn build(self, handler: impl Handler) -> io::Result<Engine> {
        Engine::start(self.config, Arc::new(handler))
    }
}

/// Shared by the engine and its workers.
pub(crate) struct EngineCtx {
    pub(crate) config: Config,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) decoder: Arc<dyn Decoder>,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Registry,
    next_id: AtomicU64,
    /// Accepted sessions open, for `max_connections`.
    accepted_open: AtomicUsize,
}

impl EngineCtx {
    /// Counts an accepted session in, unless the engine is at `max_connections`.
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

    pub(crate) fn new_session(&self, peer: SocketAddr, worker: &Arc<WorkerShared>) -> Session {
        Session {
            shared: Arc::new(SessionShared {
                id: crate::SessionId(self.next_id.fetch_add(1, Ordering::Relaxed)),
                peer,
                token: AtomicU64::new(u64::MAX),
                worker: worker.clone(),
                queue: SendQueue::with_limit(self.config.max_queued_bytes),
                closing: AtomicBool::new(false),
            }),
        }
    }
}

/// A running set of workers that serve sessions, accepted or connected.
///
/// Dropping the engine shuts it down: every session is closed with
/// [`CloseReason::Shutdown`](crate::CloseReason::Shutdown) and the workers are joined.
pub struct Engine {
    ctx: Arc<EngineCtx>,
    backend: Backend,
    workers: Vec<Arc<WorkerShared>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_worker: AtomicUsize,
}

impl Engine {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The event loop the workers run: [`Backend::Epoll`] or [`Backend::Uring`] (what
    /// [`Backend::Auto`] resolved to).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn start(config: Config, handler: Arc<dyn Handler>) -> io::Result<Self> {
        let decoder = config
            .decoder
            .clone()
            .unwrap_or_else(|| Arc::new(LengthPrefixed::new(config.max_frame)));
        let ctx = Arc::new(EngineCtx {
            handler,
            decoder,
            metrics: Metrics::default(),
            registry: Registry::new(),
            next_id: AtomicU64::new(1),
            accepted_open: AtomicUsize::new(0),
            config,
        });
        let backend = ctx.config.backend.resolve()?;
        tracing::info!(
            backend = backend.name(),
            workers = ctx.config.workers.max(1),
            "engine starting"
        );
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for i in 0..ctx.config.workers.max(1) {
            let shared = Arc::new(WorkerShared::new(i)?);
            let cpu =
                (!ctx.config.cpus.is_empty()).then(|| ctx.config.cpus[i % ctx.config.cpus.len()]);
            // The worker is built on its own thread (an io_uring instance then lives and dies
            // with the one thread that submits to it); a build error comes back here.
            let (ready, built) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
            let (sh, cx) = (shared.clone(), ctx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("zerocast-worker-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = sys::pin_to_cpu(cpu) {
                            tracing::warn!(worker = i, cpu, error = %e, "cannot pin worker");
                        }
                    }
                    let worker = match backend {
                        Backend::Uring => uring::Worker::new(sh, cx).map(Worker::Uring),
                        _ => epoll::Worker::new(sh, cx).map(Worker::Epoll),
                    };
                    match worker {
                        Ok(w) => {
                            let _ = ready.send(Ok(()));
                            w.run();
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })?;
            built
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("worker thread died while starting")))?;
            workers.push(shared);
            threads.push(thread);
        }
        Ok(Self {
            ctx,
            backend,
            workers,
            threads: Mutex::new(threads),
            next_worker: AtomicUsize::new(0),
        })
    }

    /// Starts accepting on `addr` (port 0 picks a free port) with one `SO_REUSEPORT` listener
    /// per worker, so the kernel spreads connections over workers without a hand-off.
    /// Returns the bound address.
    ///
    /// # Errors
    /// If the address cannot be bound, or (`AddrInUse`) another process already serves the
    /// port and [`Config::reuse_port`] is off.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        if addr.port() != 0 && !self.ctx.config.reuse_port {
            ensure_unserved(addr)?;
        }
        let first = self.listener(addr)?;
        let bound = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP address"))?;
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(self.listener(bound)?);
        }
        for (worker, socket) in self.workers.iter().zip(sockets) {
            worker.post(Command::Listen(OwnedFd::from(socket)));
        }
        Ok(bound)
    }

    fn listener(&self, addr: SocketAddr) -> io::Result<Socket> {
        // SO_REUSEPORT lets this engine's workers each have a listener on the port (and, with
        // `reuse_port`, other processes too); `ensure_unserved` keeps strangers out.
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(self.ctx.config.backlog)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
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
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(ip) = source {
            if ip.is_ipv4() {
                use std::os::fd::AsRawFd;
                sys::set_bind_address_no_port(socket.as_raw_fd())?;
            }
            socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)?;
        let i = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        let worker = &self.workers[i];
        let session = self.ctx.new_session(addr, worker);
        self.ctx.metrics.connected.add(1);
        worker.post(Command::Register(OwnedFd::from(socket), session.clone()));
        Ok(session)
    }

    /// Open sessions.
    pub fn sessions(&self) -> &Registry {
        &self.ctx.registry
    }

    /// The counters.
    pub fn metrics(&self) -> Snapshot {
        self.ctx.metrics.snapshot()
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
