//! The engine's settings. Applications set them through [`Builder`](crate::Builder); the
//! workers read them here.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::frame::{Decoder, LengthPrefixed};
use crate::sys;

/// Which event loop the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Linux: edge-triggered epoll, readiness, then a system call per read and per write. The
    /// default on Linux: it measured ahead here (docs/BENCHMARKS.md, "io_uring against
    /// epoll").
    Epoll,
    /// Linux: io_uring, completions, receive buffers picked by the kernel when data arrives,
    /// one `io_uring_enter` per loop turn. Building an engine fails if the kernel cannot do it.
    Uring,
    /// Windows: an I/O completion port per worker, `AcceptEx`, overlapped `WSARecv` and one
    /// gathered `WSASend` in flight per session. The default on Windows.
    Iocp,
    /// The best this OS offers: on Linux io_uring if the kernel supports every operation the
    /// backend needs, otherwise epoll, with a log line saying why (io_uring can be disabled
    /// by sysctl or seccomp); on Windows IOCP.
    Auto,
}

impl Default for Backend {
    /// [`Backend::Epoll`] on Linux, [`Backend::Iocp`] on Windows.
    fn default() -> Self {
        if cfg!(windows) {
            Self::Iocp
        } else {
            Self::Epoll
        }
    }
}

impl Backend {
    /// `epoll`, `uring`, `iocp` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::Uring => "uring",
            Self::Iocp => "iocp",
            Self::Auto => "auto",
        }
    }

    /// Parses [`name`](Self::name)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "epoll" => Some(Self::Epoll),
            "uring" | "io_uring" => Some(Self::Uring),
            "iocp" => Some(Self::Iocp),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    /// The backend the `ZEROCAST_BACKEND` environment variable names, if it is set (a
    /// warning is logged, and `None` returned, for a value that names none).
    pub fn from_env() -> Option<Self> {
        let v = std::env::var("ZEROCAST_BACKEND").ok()?;
        let b = Self::parse(&v);
        if b.is_none() {
            tracing::warn!(
                value = %v,
                "ZEROCAST_BACKEND is not epoll, uring, iocp or auto: ignored, using the default"
            );
        }
        b
    }

    /// The backend `self` resolves to on this OS.
    ///
    /// # Errors
    /// A backend of another OS; [`Backend::Uring`] on a kernel that cannot run it.
    #[cfg(windows)]
    pub fn resolve(self) -> io::Result<Self> {
        match self {
            Self::Iocp | Self::Auto => Ok(Self::Iocp),
            other => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the {} backend runs on Linux only: use iocp (the default) or auto on Windows",
                    other.name()
                ),
            )),
        }
    }

    /// The backend `self` resolves to on this OS.
    ///
    /// # Errors
    /// A backend of another OS; [`Backend::Uring`] on a kernel that cannot run it.
    #[cfg(target_os = "linux")]
    pub fn resolve(self) -> io::Result<Self> {
        use crate::sys::uring::Ring;
        match self {
            Self::Epoll => Ok(Self::Epoll),
            Self::Iocp => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the iocp backend runs on Windows only: use epoll (the default), uring or auto \
                 on Linux",
            )),
            Self::Uring => Ring::probe().map(|()| Self::Uring).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "the io_uring backend cannot run here: {}",
                        sys::why_no_uring(&e)
                    ),
                )
            }),
            Self::Auto => match Ring::probe() {
                Ok(()) => Ok(Self::Uring),
                Err(e) => {
                    tracing::info!(reason = %sys::why_no_uring(&e), "io_uring unavailable, using epoll");
                    Ok(Self::Epoll)
                }
            },
        }
    }
}

/// What a listener serves ([`Engine::listen_as`](crate::Engine::listen_as)). A session is the
/// same [`Session`](crate::Session) whichever it arrived on: handlers, groups and limits do
/// not know the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// The protocol's frames on raw TCP.
    #[default]
    Tcp,
    /// WebSocket (RFC 6455): an HTTP/1.1 upgrade, then the protocol's frames in binary
    /// messages (each server write is one message of one or more whole frames; a client's
    /// message may carry any bytes of the stream, frames split across messages included).
    WebSocket,
    /// Either on one port: a connection whose first bytes are `GET ` is taken as WebSocket,
    /// any other as raw TCP. (With the default frame header a raw client's first frame would
    /// have to claim 17,735 bytes and packet id 0x2054 to be mistaken.)
    Both,
}

/// Whether a pinned worker keeps its memory on its CPU's NUMA node (see
/// [`Builder::numa`](crate::Builder::numa)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numa {
    /// Bind where it matters: on a machine with more than one node. On one node there is
    /// nothing to gain, and the engine says so once in its log. The default.
    #[default]
    Auto,
    /// Bind on any machine, one node included (the policy is set and can be read back).
    Bind,
    /// Never bind.
    Off,
}

/// Engine settings; each is documented on its [`Builder`](crate::Builder) method.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) cpus: Vec<usize>,
    pub(crate) numa: Numa,
    pub(crate) max_frame: usize,
    pub(crate) backlog: i32,
    pub(crate) reuse_port: bool,
    pub(crate) recv_chunk: usize,
    pub(crate) read_budget: usize,
    pub(crate) decoder: Option<Arc<dyn Decoder>>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) first_frame_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_queued_bytes: usize,
    pub(crate) soft_queued_bytes: usize,
    pub(crate) slow_consumer_grace: Duration,
    pub(crate) send_buffer: Option<usize>,
    pub(crate) tick: Option<Duration>,
    pub(crate) write_delay: Duration,
    pub(crate) read_delay: Duration,
    pub(crate) busy_poll: bool,
    pub(crate) backend: Backend,
    pub(crate) datagram_rate: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: sys::available_cpus(),
            cpus: Vec::new(),
            numa: Numa::Auto,
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
            write_delay: Duration::ZERO,
            read_delay: Duration::ZERO,
            busy_poll: false,
            backend: Backend::default(),
            datagram_rate: 250,
        }
    }
}

impl Config {
    /// Checks the settings against each other.
    pub(crate) fn check(&self) -> io::Result<()> {
        let bad = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
        if self.workers == 0 {
            return bad("workers must be at least 1");
        }
        if self.backlog <= 0 {
            return bad("the listen backlog must be positive");
        }
        if self.recv_chunk < 4096 {
            return bad("the receive chunk must be at least 4096 bytes");
        }
        if self.read_budget == 0 {
            return bad("the read budget must be at least 1");
        }
        Ok(())
    }
}
