//! What to run.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The traffic a run generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Framed echo: every frame sent must come back unchanged.
    Echo,
    /// Echo without framing: messages are `size` raw bytes, for any byte-echo server.
    Raw,
    /// Every client sends to the broadcast server and receives everyone's frames.
    Broadcast,
    /// Connections opened at the ramp and held: one frame on connect, then heartbeats.
    Idle,
    /// Bots in the world server: each joins, random-walks and sometimes chats; move delivery
    /// latency is measured and every delivery is checked against the area of interest.
    World,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Raw => "raw",
            Scenario::Broadcast => "broadcast",
            Scenario::Idle => "idle",
            Scenario::World => "world",
        }
    }
}

/// How sends are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Closed loop: `depth` messages in flight per connection, each reply triggers the next
    /// send. Latency is measured from the actual send time.
    Closed {
        /// Messages in flight per connection.
        depth: usize,
    },
    /// Open loop: `per_sec` messages per second in total, spread round-robin over the
    /// connections, each stamped with its *scheduled* send time. A stall anywhere (server,
    /// network or the generator itself) shows up in the latency of every message scheduled
    /// during it, instead of silently delaying the schedule (coordinated omission).
    Rate {
        /// Messages per second, all connections together.
        per_sec: f64,
    },
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub scenario: Scenario,
    /// The server.
    pub target: SocketAddr,
    /// More servers (processes of one clustered world, say): connection `i` goes to the
    /// `i`-th of `target` and these, round robin.
    pub more_targets: Vec<SocketAddr>,
    /// Connections to open.
    pub connections: usize,
    /// Message size on the wire in bytes, header included (framed) or raw bytes.
    pub size: usize,
    pub pace: Pace,
    /// Connections opened per second.
    pub ramp: f64,
    /// Source addresses, used round-robin (empty: let the kernel choose).
    pub sources: Vec<IpAddr>,
    /// Time between the end of the ramp and the start of the measurement window.
    pub warmup: Duration,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Generator worker threads.
    pub workers: usize,
    /// Pin the generator's workers to these CPUs.
    pub cpus: Vec<usize>,
    /// Server process to sample CPU and memory from.
    pub server_pid: Option<u32>,
    /// Longest wait, after the window, for replies still in flight.
    pub drain: Duration,
    /// Busy-poll the generator's workers (see [`zerocast::Builder::busy_poll`]): the
    /// generator then needs no timer interrupt and no wake-up per message, which keeps it
    /// cheaper per message than the server it measures. It occupies its cores fully; its
    /// real work shows as the report's `generator_busy`. Default `true`.
    pub busy_poll: bool,
    /// Open loop: the workers' tick period (`None`: chosen from the rate).
    pub tick: Option<Duration>,
    /// World: one move in this many carries a chat line, one line in ten global (0: no
    /// chat). Default 100. Global chat reaches every player: in a big world it outweighs
    /// the moves.
    pub chat_every: u64,
    /// How often the progress callback runs. Default 250 ms.
    pub progress_every: Duration,
    /// The generator's own event loop. Default epoll, whatever the servers use: its busy
    /// accounting (`generator_busy`) separates waiting from working, which io_uring does in
    /// one system call.
    pub backend: zerocast::Backend,
    /// Connect over WebSocket (each write one masked binary message) instead of raw TCP.
    pub websocket: bool,
    /// World: each bot opens the datagram channel and moves by datagram, and is sent the
    /// others' moves by datagram (the server needs `--datagrams`).
    pub datagrams: bool,
}

/// Smallest message: a framed message holds the header and an 8-byte timestamp.
pub const MIN_FRAMED_SIZE: usize = zerocast::frame::HEADER_LEN + 8;
/// Connections per source address picked automatically (well below the 28,232 ephemeral
/// ports one source address has per destination).
pub const CONNECTIONS_PER_SOURCE: usize = 10_000;

impl LoadConfig {
    /// Where connection `i` goes (see [`more_targets`](Self::more_targets)).
    pub fn target_of(&self, i: usize) -> SocketAddr {
        match i % (1 + self.more_targets.len()) {
            0 => self.target,
            k => self.more_targets[k - 1],
        }
    }

    /// The targets, comma-separated (for reports).
    pub fn targets_label(&self) -> String {
        let mut s = self.target.to_string();
        for t in &self.more_targets {
            s.push(',');
            s.push_str(&t.to_string());
        }
        s
    }

    /// A run with defaults: 1 closed-loop message in flight per connection, 64-byte messages,
    /// ramp 5,000 connections/s, 1 s warm-up, 10 s window, one worker.
    pub fn new(scenario: Scenario, target: SocketAddr, connections: usize) -> Self {
        Self {
            scenario,
            target,
            more_targets: Vec::new(),
            chat_every: 100,
            connections,
            size: 64,
            pace: Pace::Closed { depth: 1 },
            ramp: 5_000.0,
            sources: Vec::new(),
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            workers: 1,
            cpus: Vec::new(),
            server_pid: None,
            drain: Duration::from_secs(2),
            busy_poll: true,
            tick: None,
            progress_every: Duration::from_millis(250),
            backend: zerocast::Backend::Epoll,
            websocket: false,
            datagrams: false,
        }
    }

    /// Checks the settings against each other.
    ///
    /// # Errors
    /// `InvalidInput` with the reason.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        let min = if self.scenario == Scenario::Raw {
            8
        } else {
            MIN_FRAMED_SIZE
        };
        if self.connections == 0 {
            return bad("at least one connection is needed".into());
        }
        if self.datagrams && self.scenario != Scenario::World {
            return bad("--datagrams is for the world scenario".into());
        }
        if self.size < min {
            return bad(format!(
                "--size must be at least {min} bytes for {}",
                self.scenario.name()
            ));
        }
        let max = match self.scenario {
            Scenario::Broadcast => zerocast_servers::BROADCAST_MAX_FRAME,
            _ => zerocast::frame::LengthPrefixed::MAX,
        };
        if self.size > max {
            return bad(format!(
                "--size must be at most {max} bytes for {}",
                self.scenario.name()
            ));
        }
        if self.ramp.is_nan() || self.ramp <= 0.0 {
            return bad("--ramp must be positive".into());
        }
        match self.pace {
            Pace::Closed { depth: 0 } => return bad("--depth must be at least 1".into()),
            Pace::Closed { .. }
                if matches!(self.scenario, Scenario::Broadcast | Scenario::World) =>
            {
                return bad(format!("{} needs a send rate", self.scenario.name()))
            }
            Pace::Rate { per_sec } if per_sec.is_nan() || per_sec <= 0.0 => {
                return bad("the send rate must be positive".into())
            }
            _ => {}
        }
        Ok(())
    }
}

/// `count` source addresses for connecting to `target`: 127.0.`block`.1, .2, ... for an IPv4
/// loopback target (any 127.x.y.z is usable without setup), none otherwise.
pub fn loopback_sources(target: SocketAddr, count: usize, block: u8) -> Vec<IpAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (0..count.min(254))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, block, i as u8 + 1)))
            .collect(),
        _ => Vec::new(),
    }
}

/// How many source addresses `connections` need: one per [`CONNECTIONS_PER_SOURCE`].
pub fn sources_needed(connections: usize) -> usize {
    connections.div_ceil(CONNECTIONS_PER_SOURCE).max(1)
}
