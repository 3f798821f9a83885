//! The engine: worker threads, listening and connecting.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::builder::Builder;
use crate::config::{Backend, Config};
use crate::driver::core::{spawn, EngineShared};
use crate::driver::inbox::{Command, WorkerShared};
use crate::driver::metrics::WorkerMetrics;
use crate::frame::LengthPrefixed;
use crate::handler::HostFactory;
use crate::metrics::{Snapshot, WorkerSnapshot};
use crate::session::{Registry, Session};
use crate::sync::{lock, Mutex};
use crate::sys;

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
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

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
        worker.post(Command::Register(OwnedFd::from(socket), session.clone()));
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
