//! [`Builder`]: the one way to configure an engine.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Backend, Config};
use crate::engine::Engine;
use crate::frame::Decoder;
use crate::handler::{host, Handler};

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
    /// The defaults. The backend is epoll unless the `ZEROCAST_BACKEND` environment variable
    /// says `uring` or `auto` (so a deployment, or CI running every test on each backend, can
    /// pick the event loop without a rebuild); [`backend`](Self::backend) overrides both.
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
    /// workers always share their listening port among themselves.
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

    /// Workers never sleep: they poll their sockets (and the tick's clock) in a loop. Lowest
    /// latency and no wake-up cost (no timer interrupts, no wake-up IPIs from peers), at the
    /// price of a fully busy core per worker even when idle; how much of that time is real
    /// work shows in the `busy_seconds` figure. For dedicated, pinned cores (the load
    /// generator uses it). Default `false`.
    pub fn busy_poll(mut self, on: bool) -> Self {
        self.config.busy_poll = on;
        self
    }

    /// The event loop ([`Backend`]). Default: epoll, or what `ZEROCAST_BACKEND` says.
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
