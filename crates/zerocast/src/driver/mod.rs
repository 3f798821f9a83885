//! The workers: one shared worker core and the event loops (backends) it runs on.
//!
//! # The worker core
//! [`core`] owns everything a worker does whatever tells it that a socket is ready or an
//! operation is done: its sessions and their slots, the commands other threads post, frames
//! cut and delivered to the handler, the output written once per turn, ticks, deadlines and
//! housekeeping, accept admission and back-off, graceful shutdown, and the counters.
//!
//! # The backend contract
//! A backend is the operating system's event loop behind a [`Backend`]. It owns no session
//! state beyond what its operations need, and it promises:
//!
//! - **Sockets.** The core hands it listeners ([`Backend::listen`]) and connected sockets
//!   ([`Backend::add`]), identified by a [`Token`]. The core keeps every socket open until the
//!   backend has *released* its token: after [`Backend::close`] answers
//!   [`Closing::Now`], or once it reports [`Event::Released`].
//! - **Receiving.** Either readiness or completion, whichever the OS offers:
//!   - a *readiness* backend (epoll) reports [`Event::Readable`] and then reads when the core
//!     calls [`Backend::recv`] into memory the core chose (its receive chunk, or a split
//!     frame's own buffer), until the socket is drained;
//!   - a *completion* backend (io_uring, IOCP) keeps a receive posted into memory it owns
//!     and reports [`Event::Received`] with a view of the bytes (the memory returns to the
//!     backend when every view drops). [`Backend::pause`] stops it (the peer half-closed, or
//!     shutdown), and [`Event::Eof`] or [`Event::Failed`] end it.
//! - **Sending.** [`Backend::send`] starts a gathered write of a [`WriteBuf`] the core built:
//!   it either finishes at once ([`Sent::Done`], a readiness backend), or is in flight
//!   ([`Sent::Pending`]) until [`Event::Sent`]. There is at most one send in flight per
//!   token, and the core does not touch the `WriteBuf` or release anything its slices point
//!   into until the send's result is in. A readiness backend reports [`Event::Writable`] when a
//!   socket that was full has room again.
//! - **Closing.** [`Backend::close`] stops every operation on a token. A completion backend
//!   must cancel what is in flight and report [`Event::Released`] only after the *last*
//!   completion for the token has arrived (the kernel may still be writing into a receive
//!   buffer or reading a send's slices until then).
//! - **Accepting.** [`Backend::accept`] starts (or resumes) accepting on a listener and reports
//!   each connection as [`Event::Accepted`]; when accepting fails for want of descriptors or
//!   memory it stops and reports [`Event::AcceptFailed`]: the core waits and calls `accept`
//!   again. [`Backend::stop_accepting`] is for shutdown.
//! - **Waiting.** [`Backend::wait`] waits until an event or the deadline (`None`: no deadline;
//!   zero: just look), with at least millisecond precision, and appends events. A wake-up
//!   posted through the worker's waker ([`Backend::waker`]) ends the wait with
//!   [`Event::Woken`]. Asked to defer input (the read delay), a backend that can sleeps until
//!   the deadline or a wake-up only, then reports every ready socket at once.
//! - **Exiting.** [`Backend::finish`] stops the worker's own operations; the core keeps
//!   waiting while [`Backend::busy`] says completions are still due.
//! - **Mid-turn writes.** [`Backend::drain_sends`] lets a completion backend push its
//!   submitted sends to the kernel and report those that finished, before the turn reads on
//!   (the per-turn output budget); a readiness backend, whose sends finish inline, does nothing.
//!
//! Tokens are `generation << 32 | slot index`; a backend may keep per-token state indexed by
//! slot and trust that the core never reuses a slot before it is released.
//!
//! Backends: `epoll` (readiness) and `uring` (completion) on Linux, `iocp` (completion) on
//! Windows.

mod conn;
/// The connection record, named for the idle-footprint test in `session`.
#[cfg(test)]
pub(crate) type ConnProbe = conn::Conn;
pub(crate) mod core;
#[cfg(target_os = "linux")]
mod datagram;
#[cfg(target_os = "linux")]
pub(crate) mod epoll;
mod flush;
pub(crate) mod inbox;
#[cfg(windows)]
pub(crate) mod iocp;
mod lifecycle;
pub(crate) mod metrics;
mod ops;
mod read;
mod slab;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
pub(crate) mod worker;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

pub(crate) use crate::conn::outq::WriteBuf;
use crate::sys::Sock;

/// A connection's identity in its worker: `generation << 32 | slot index`.
pub(crate) type Token = u64;

/// What a backend reports from [`Backend::wait`].
pub(crate) enum Event {
    /// A readiness backend: the socket may have data, or the peer hung up (`hup`).
    Readable { token: Token, hup: bool },
    /// A readiness backend: a socket that was full has room again.
    Writable(Token),
    /// A completion backend: bytes arrived.
    Received(Token, Bytes),
    /// A completion backend: the peer ended its stream.
    Eof(Token),
    /// An operation on the token failed: the connection is broken.
    Failed(Token, io::Error),
    /// A completion backend paused receiving on a token for want of receive memory
    /// (back-pressure: the data waits in the socket); it resumes by itself.
    Starved,
    /// A send finished: the bytes written, or why not.
    Sent(Token, io::Result<usize>),
    /// A new connection (the peer's address, when the OS gave it).
    Accepted {
        /// The index [`Backend::listen`] gave its listener.
        listener: usize,
        socket: Sock,
        peer: Option<SocketAddr>,
    },
    /// Accepting on `listener` stopped.
    AcceptFailed { listener: usize, error: io::Error },
    /// Every operation on a closed token has completed: the core may free its slot.
    Released(Token),
    /// The waker was signalled: commands are waiting.
    Woken,
    /// The worker's datagram socket is readable.
    Datagrams,
}

/// How a send started.
pub(crate) enum Sent {
    /// Finished at once: bytes written (possibly fewer than offered: the socket is full), or
    /// the error.
    Done(io::Result<usize>),
    /// In flight: [`Event::Sent`] reports it.
    Pending,
}

/// How a close went.
pub(crate) enum Closing {
    /// Every operation stopped: the socket may be closed now.
    Now,
    /// Operations are being cancelled: wait for [`Event::Released`].
    Later,
}

/// What the worker core needs from an event loop; see the [module docs](self).
pub(crate) trait Backend {
    /// Wakes the worker from any thread.
    fn waker(&self) -> std::sync::Arc<dyn Fn() + Send + Sync>;

    /// Starts watching a listener; returns its index.
    fn listen(&mut self, listener: Sock) -> io::Result<usize>;

    /// Starts (or resumes, after [`Event::AcceptFailed`]) accepting on `listener`.
    fn accept(&mut self, listener: usize);

    /// Stops accepting on every listener (shutdown).
    fn stop_accepting(&mut self);

    /// Starts watching the worker's datagram socket: [`Event::Datagrams`] when it is readable
    /// (edge-triggered: the core reads until the socket is drained, or says so again).
    fn watch_datagrams(&mut self, socket: &Sock) -> io::Result<()>;

    /// Starts serving a connected socket.
    fn add(&mut self, token: Token, socket: &Sock) -> io::Result<()>;

    /// A readiness backend: reads into `buf`'s spare capacity, at most `max` bytes.
    fn recv(&mut self, socket: &Sock, buf: &mut BytesMut, max: usize) -> io::Result<usize>;

    /// Stops receiving on `token` (it keeps sending).
    fn pause(&mut self, token: Token);

    /// Starts a gathered write.
    fn send(&mut self, token: Token, socket: &Sock, w: &mut WriteBuf) -> Sent;

    /// Whether sends finish inline ([`Sent::Done`]): the core then corks more per write,
    /// since a write's cork is free again at once.
    fn sends_inline(&self) -> bool;

    /// Stops every operation on `token`.
    fn close(&mut self, token: Token, socket: &Sock) -> Closing;

    /// Waits for events until `timeout`; appends them to `events`. With `defer_input`, only
    /// the waker or the timeout ends the wait, and then whatever the sockets have is reported
    /// without waiting (a backend that cannot tell input from the rest waits as usual).
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        defer_input: bool,
        events: &mut Vec<Event>,
    ) -> io::Result<()>;

    /// Pushes submitted sends to the kernel and appends the [`Event::Sent`] of those that
    /// finished; other events met are appended too. Returns how many sends finished.
    fn drain_sends(&mut self, events: &mut Vec<Event>) -> usize;

    /// The worker is exiting: stop worker-level operations (the wake-up, accepting).
    fn finish(&mut self);

    /// Whether operations are still in flight that the worker must wait for before it exits.
    fn busy(&self) -> bool;
}

/// Output a turn may queue before the worker writes it, between reads. 8 MiB: with 1,000
/// recipients of a 76-byte relay that is a write every ~110 frames per recipient. Smaller
/// budgets cut coalescing; larger ones gain little and hold more memory (measurements in
/// docs/DESIGN.md, "Send path").
pub(crate) const TURN_OUTPUT_BUDGET: usize = 8 * 1024 * 1024;

/// How long accepting pauses after running out of descriptors or memory.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Housekeeping period (deadlines, slow consumers) and the longest sleep.
pub(crate) const HOUSEKEEPING: Duration = Duration::from_millis(100);
