//! The io_uring backend: one ring per worker thread, Linux's completion model (the counterpart
//! of IOCP). The worker hands the kernel operations and is told later that they are done:
//!
//! - accepting: one multishot accept per listener;
//! - receiving: one multishot receive per session, into buffers the kernel picks from the
//!   worker's provided-buffer ring ([`bufring`]) only when data arrives; frames are parsed in
//!   place from them exactly as on epoll, and a buffer returns to the ring when the views of
//!   its frames drop;
//! - sending: one `sendmsg` per session in flight, gathering everything queued (the same
//!   one-outstanding-send rule, and the same send flag, as epoll);
//! - waking: a multishot poll on the worker's eventfd, so cross-thread sends cost one wake-up
//!   per batch, not a system call per message;
//! - one `io_uring_enter` per loop turn submits everything the turn prepared and waits.
//!
//! # Buffer lifetime
//! Every buffer an operation uses lives until that operation's completion arrives, also when the
//! session is closed, the peer resets, or the engine shuts down: see [`UConn`]. A closed
//! session's operations are cancelled, and the connection (its socket, its batch, its iovecs)
//! stays in the slab until the last of their completions.
//!
//! Ring full: when no provided buffer is free, the kernel ends the session's multishot
//! receive with `ENOBUFS`; the session waits in `starved` and its receive is re-armed once
//! buffers come back. Meanwhile its data waits in the socket, where TCP pushes back on the
//! sender: nothing is dropped.

mod bufring;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::common::{self, Batch, RecvState, Timing};
use super::slab::Slab;
use super::{Command, RunCommands, WorkerShared};
use crate::buffer;
use crate::engine::EngineCtx;
use crate::session::{self, CloseReason, Session};
use crate::sys;
use bufring::{BufRing, BGID};

/// Housekeeping period (deadlines, slow consumers) and the longest sleep.
const TICK: Duration = Duration::from_millis(100);
/// How long accepting pauses after EMFILE/ENFILE before it is retried.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Provided buffers per worker, and their size: 16 MiB of receive memory a worker's sessions
/// share, touched only as it is used.
const BUFFERS: u16 = 4096;
const BUFFER_SIZE: usize = 4096;
/// Submission queue entries; the completion queue is four times larger.
const RING_ENTRIES: u32 = 4096;
/// iovecs per `sendmsg`.
const MAX_IOV: usize = 1024;
/// Completions handled per chunk, and chunks per turn.
const CHUNK: usize = 256;
const MAX_CHUNKS: usize = 64;

/// What a completion is about: the kind in the top 8 bits of `user_data`, a slab token (below
/// 2^56) or a listener index in the rest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Recv = 1,
    Send = 2,
    Accept = 3,
    Wake = 4,
    /// A cancel request's own completion: carries nothing.
    Cancel = 5,
}

fn user_data(op: Op, token: u64) -> u64 {
    debug_assert!(token < 1 << 56);
    (op as u64) << 56 | token
}

fn decode(user_data: u64) -> (u8, u64) {
    ((user_data >> 56) as u8, user_data & ((1 << 56) - 1))
}

/// The send side of a connection, boxed so its address stays put while the kernel reads the
/// `msghdr` and the iovecs it points to.
struct SendOp {
    batch: Batch,
    /// Bytes the `sendmsg` in flight offered.
    offered: usize,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

// SAFETY: the raw pointers in `iov` and `msg` point into this `SendOp`'s own `iov` and into
// the `SendBuffer`s its batch holds; they are only used by the kernel while the owning worker
// has the operation in flight, and the worker moves to its thread before any is submitted.
unsafe impl Send for SendOp {}

/// One connection's state on the worker.
///
/// Invariant (buffer lifetime): while `recv_armed`, the kernel may pick provided buffers for
/// this socket; while `send_in_flight`, the kernel reads the `SendOp` (its `msghdr`, iovecs and
/// every buffer of its batch). Neither the `UConn` nor its socket is dropped while either is
/// true: a closed connection is a zombie (`session` retired, `closed` set) that is removed from
/// the slab by the completion that clears the last of them.
struct UConn {
    fd: OwnedFd,
    session: Session,
    rx: RecvState,
    send: Box<SendOp>,
    timing: Timing,
    recv_armed: bool,
    send_in_flight: bool,
    /// This worker holds the session's send flag and owes it a flush.
    draining: bool,
    /// No more reading (peer closed, or shutting down); close with `after_flush` once flushed.
    eof: bool,
    after_flush: Option<CloseReason>,
    /// Closed: waiting for in-flight completions only.
    closed: bool,
}

impl UConn {
    fn idle(&self) -> bool {
        !self.recv_armed && !self.send_in_flight
    }
}

pub(crate) struct Worker {
    // Dropped first: the kernel stops using the buffer ring before its memory is freed.
    ring: IoUring,
    bufs: BufRing,
    shared: Arc<WorkerShared>,
    ctx: Arc<EngineCtx>,
    conns: Slab<UConn>,
    listeners: Vec<OwnedFd>,
    /// Listeners whose multishot accept ended (error or backoff) and must be re-armed.
    accept_idle: Vec<usize>,
    accept_paused_until: Option<Instant>,
    last_accept_warning: Option<Instant>,
    /// Completions taken from the ring and not handled yet, oldest first (`user_data`, result,
    /// flags): the rest of a chunk, and what a budget flush set aside.
    pending: std::collections::VecDeque<(u64, i32, u32)>,
    /// Scratch for `bound_turn_output`, kept for its capacity.
    aside: Vec<(u64, i32, u32)>,
    /// Sessions whose receive stopped for want of buffers, in the order they stopped.
    starved: std::collections::VecDeque<u64>,
    /// Operations submitted whose final completion has not arrived yet.
    in_flight: usize,
    /// Connections not closed (the slab also holds closed ones awaiting completions).
    open: usize,
    wake_armed: bool,
    commands: Vec<Command>,
    now: Instant,
    last_housekeeping: Instant,
    next_tick: Option<Instant>,
    expired: Vec<(u64, CloseReason)>,
    shutdown_at: Option<Instant>,
    exit: bool,
}

/// Probes whether this kernel lets us use every io_uring feature the backend needs. The error
/// says why not (io_uring disabled by sysctl or seccomp, a kernel too old for buffer rings).
pub(crate) fn probe() -> io::Result<()> {
    // On a thread of its own: tearing an io_uring instance down can interrupt a blocking
    // system call of the thread that owned it (EINTR), which is none of the caller's business.
    std::thread::spawn(probe_here)
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("io_uring probe panicked")))
}

fn probe_here() -> io::Result<()> {
    let ring = IoUring::new(8)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::PollAdd::CODE, "poll"),
        (opcode::AsyncCancel2::CODE, "cancel"),
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    // Buffer rings (5.19) and multishot receive (6.0): registering a small ring proves both
    // the first and, on kernels that have it, the second came with it.
    BufRing::new(&ring, 8, 64).map(drop)
}

impl Worker {
    pub(crate) fn new(shared: Arc<WorkerShared>, ctx: Arc<EngineCtx>) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 4)
            .setup_coop_taskrun()
            .build(RING_ENTRIES)?;
        let bufs = BufRing::new(&ring, BUFFERS, BUFFER_SIZE)?;
        let now = Instant::now();
        let next_tick = ctx.config.tick.map(|p| now + p);
        Ok(Self {
            ring,
            bufs,
            shared,
            ctx,
            conns: Slab::new(),
            listeners: Vec::new(),
            accept_idle: Vec::new(),
            accept_paused_until: None,
            last_accept_warning: None,
            pending: std::collections::VecDeque::with_capacity(CHUNK * 4),
            aside: Vec::new(),
            starved: std::collections::VecDeque::new(),
            in_flight: 0,
            open: 0,
            wake_armed: false,
            commands: Vec::new(),
            now,
            last_housekeeping: now,
            next_tick,
            expired: Vec::new(),
            shutdown_at: None,
            exit: false,
        })
    }

    /// Queues a submission; when the submission queue is full, submits it first.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built in this module points only at memory that outlives its
            // completion (see `UConn`'s invariant, the listeners and the eventfd owned here).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "io_uring submit failed");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    pub(crate) fn run(mut self) {
        self.shared.enter();
        let busy_poll = self.ctx.config.busy_poll;
        loop {
            if !self.wake_armed && !self.exit {
                let fd = types::Fd(self.shared.waker().as_raw_fd());
                let e = opcode::PollAdd::new(fd, libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(user_data(Op::Wake, 0));
                self.push(e);
                self.in_flight += 1;
                self.wake_armed = true;
            }
            self.rearm_accepts();
            let wait = if busy_poll || !self.commands.is_empty() {
                None
            } else {
                Some(self.sleep_for())
            };
            // Busy-polling, the enter call does not wait: the work inside it (sends, receives
            // the kernel runs for us) counts as busy time.
            let turn_start = Instant::now();
            let result = match wait {
                None => self.ring.submit(),
                Some(d) => {
                    let ts = types::Timespec::from(d);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            if let Err(e) = result {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) {
                    tracing::error!(worker = self.shared.index, error = %e, "io_uring_enter failed");
                    std::thread::sleep(TICK);
                }
            }
            self.now = Instant::now();
            // Completions in chunks, oldest first: `pending` may hold completions a budget
            // flush set aside (see `bound_turn_output`), and a budget flush in the middle of
            // the turn may add to it.
            let mut worked = false;
            for _ in 0..MAX_CHUNKS {
                if self.pending.is_empty() {
                    let cq = self.ring.completion().take(CHUNK);
                    self.pending
                        .extend(cq.map(|c| (c.user_data(), c.result(), c.flags())));
                }
                if self.pending.is_empty() {
                    break;
                }
                worked = true;
                for _ in 0..CHUNK {
                    let Some((ud, res, flags)) = self.pending.pop_front() else {
                        break;
                    };
                    self.complete(ud, res, flags);
                }
            }
            let returned = self.bufs.recycle();
            if returned > 0 {
                self.feed_starved(returned);
            }
            if self.next_tick.is_some_and(|t| self.now >= t) {
                let period = self.ctx.config.tick.unwrap_or(TICK);
                self.next_tick = self.next_tick.map(|t| (t + period).max(self.now));
                if self.shutdown_at.is_none() {
                    common::tick(&self.ctx, self.shared.index);
                }
            }
            worked |= self.run_commands();
            session::take_queued_by_thread();
            if self.accept_paused_until.is_some_and(|t| self.now >= t) {
                self.accept_paused_until = None;
            }
            if self.now.duration_since(self.last_housekeeping) >= TICK {
                self.last_housekeeping = self.now;
                self.housekeeping();
            }
            if let Some(at) = self.shutdown_at {
                if !self.exit && (self.open_sessions() == 0 || self.now >= at) {
                    for token in self.conns.tokens() {
                        self.close(token, CloseReason::Shutdown);
                    }
                    self.exit = true;
                    self.cancel_worker_ops();
                }
            }
            buffer::reclaim_thread_pool();
            if worked {
                let since = if busy_poll { turn_start } else { self.now };
                self.ctx
                    .metrics
                    .busy_ns
                    .add(since.elapsed().as_nanos() as i64);
            }
            if self.exit && self.in_flight == 0 {
                break;
            }
        }
        self.shared.stop();
        buffer::reclaim_thread_pool();
    }

    /// How long the next wait may last: until the next handler tick or housekeeping.
    fn sleep_for(&self) -> Duration {
        let mut until = self.last_housekeeping + TICK;
        if let Some(t) = self.next_tick {
            until = until.min(t);
        }
        if let Some(t) = self.accept_paused_until {
            until = until.min(t);
        }
        until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(1))
    }

    fn open_sessions(&self) -> usize {
        self.open
    }

    /// On exit: cancels the wake-up poll and the accepts; the loop ends when their (and every
    /// connection's) completions are in.
    fn cancel_worker_ops(&mut self) {
        let mut targets = vec![user_data(Op::Wake, 0)];
        targets.extend((0..self.listeners.len()).map(|i| user_data(Op::Accept, i as u64)));
        for target in targets {
            self.cancel(target);
        }
        self.accept_idle.clear();
    }

    /// Asks the kernel to cancel every operation with `target` as its user data. Their
    /// completions (`ECANCELED`, or a result if they finished first) still arrive.
    fn cancel(&mut self, target: u64) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(target).all())
            .build()
            .user_data(user_data(Op::Cancel, 0));
        self.push(e);
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        let (op, token) = decode(ud);
        let more = cqueue::more(flags);
        match op {
            x if x == Op::Recv as u8 => self.on_recv(token, res, flags, more),
            x if x == Op::Send as u8 => {
                self.in_flight -= 1;
                self.on_sent(token, res);
            }
            x if x == Op::Accept as u8 => self.on_accept(token as usize, res, more),
            x if x == Op::Wake as u8 => {
                if !more {
                    self.in_flight -= 1;
                    self.wake_armed = false;
                }
                if res >= 0 {
                    let mut cmds = std::mem::take(&mut self.commands);
                    self.shared.take_inbox(&mut cmds);
                    self.commands = cmds;
                }
            }
            _ => {} // a cancel request's own completion
        }
    }

    // --- accepting -----------------------------------------------------------------------

    fn arm_accept(&mut self, index: usize) {
        let Some(l) = self.listeners.get(index) else {
            return;
        };
        // Blocking sockets: io_uring waits for readiness itself (see `sys::set_blocking`).
        let e = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, index as u64));
        self.push(e);
        self.in_flight += 1;
    }

    fn rearm_accepts(&mut self) {
        if self.accept_paused_until.is_some() || self.shutdown_at.is_some() {
            return;
        }
        for i in std::mem::take(&mut self.accept_idle) {
            self.arm_accept(i);
        }
    }

    fn on_accept(&mut self, index: usize, res: i32, more: bool) {
        if !more {
            self.in_flight -= 1;
            if self.shutdown_at.is_none() {
                self.accept_idle.push(index);
            }
        }
        if res < 0 {
            match -res {
                libc::ECANCELED
                | libc::EINTR
                | libc::ECONNABORTED
                | libc::EPROTO
                | libc::EAGAIN => {}
                e @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    // The multishot accept ended; retrying at once would spin.
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    if self
                        .last_accept_warning
                        .is_none_or(|t| self.now - t > Duration::from_secs(1))
                    {
                        self.last_accept_warning = Some(self.now);
                        tracing::warn!(error = %io::Error::from_raw_os_error(e), "accept failed: out of descriptors or memory; backing off");
                    }
                }
                e => tracing::warn!(error = %io::Error::from_raw_os_error(e), "accept failed"),
            }
            return;
        }
        // SAFETY: a successful accept completion's result is a new descriptor we now own.
        let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(res) };
        if self.shutdown_at.is_some() {
            return;
        }
        // A multishot accept returns no address; a peer that already reset has none to ask
        // for either: it is served (and closed by its first receive) as the unspecified address.
        let peer =
            sys::peer_addr(&sock).unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        if let Err(e) = sys::set_nodelay(sock.as_raw_fd()) {
            tracing::debug!(error = %e, "TCP_NODELAY failed");
        }
        if !common::admit(&self.ctx) {
            return;
        }
        let session = self.ctx.new_session(peer, &self.shared);
        self.register(sock, session, true);
    }

    // --- sessions ------------------------------------------------------------------------

    fn register(&mut self, fd: OwnedFd, session: Session, accepted: bool) {
        if let Err(e) = sys::set_blocking(&fd) {
            tracing::debug!(error = %e, "cannot clear O_NONBLOCK");
        }
        if let Some(bytes) = self.ctx.config.send_buffer {
            if let Err(e) = sys::set_send_buffer(fd.as_raw_fd(), bytes) {
                tracing::debug!(error = %e, "SO_SNDBUF failed");
            }
        }
        let now = self.now;
        let token = self.conns.insert_with(|token| {
            session.shared.token.store(token, Ordering::Relaxed);
            UConn {
                fd,
                session: session.clone(),
                rx: RecvState::default(),
                send: Box::new(SendOp {
                    batch: Batch::default(),
                    offered: 0,
                    iov: Vec::new(),
                    // SAFETY: all-zero is a valid msghdr (no name, no control data).
                    msg: unsafe { std::mem::zeroed() },
                }),
                timing: Timing::new(accepted, now),
                recv_armed: false,
                send_in_flight: false,
                draining: false,
                eof: false,
                after_flush: None,
                closed: false,
            }
        });
        self.open += 1;
        self.arm_recv(token);
        if let Err(reason) = common::opened(&self.ctx, &session) {
            self.close(token, reason);
        }
    }

    fn arm_recv(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.recv_armed || c.closed || c.eof {
            return;
        }
        c.recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fd(c.fd.as_raw_fd()), BGID)
            .build()
            .user_data(user_data(Op::Recv, token));
        self.push(e);
        self.in_flight += 1;
    }

    /// Re-arms receives that stopped for want of buffers, oldest first, one per buffer that
    /// came back: re-arming them all at once would have most fail again at once (a storm of
    /// `ENOBUFS` completions that collapsed a 1,000-client broadcast).
    fn feed_starved(&mut self, returned: usize) {
        for _ in 0..returned.min(self.starved.len()) {
            if let Some(token) = self.starved.pop_front() {
                self.arm_recv(token);
            }
        }
    }

    fn on_recv(&mut self, token: u64, res: i32, flags: u32, more: bool) {
        // Take the buffer first: whatever happens to the session, it goes back to the ring.
        let data = cqueue::buffer_select(flags).map(|bid| self.bufs.take(bid, res.max(0) as usize));
        if !more {
            self.in_flight -= 1;
        }
        let Some(c) = self.conns.get_mut(token) else {
            debug_assert!(false, "a completion for a connection that is gone");
            return;
        };
        if !more {
            c.recv_armed = false;
        }
        if c.closed {
            self.reap(token);
            return;
        }
        if c.eof {
            return;
        }
        match res {
            n if n > 0 => {
                let Some(data) = data else {
                    return self.close(token, CloseReason::Io(io::ErrorKind::InvalidData));
                };
                self.ctx.metrics.bytes_in.add(i64::from(n));
                let result = c.rx.deliver(&self.ctx, &c.session, &data);
                drop(data);
                match result {
                    Ok(delivered) => c.timing.frames(delivered, self.now),
                    Err(reason) => return self.close(token, reason),
                }
                self.bound_turn_output();
                self.flush_replies(token);
                if !more {
                    self.arm_recv(token);
                }
            }
            0 => self.close_after_flush(token, CloseReason::PeerClosed),
            n if -n == libc::ENOBUFS => {
                // Ring full: back-pressure. The data waits in the socket.
                self.ctx.metrics.recv_buffer_waits.add(1);
                self.starved.push_back(token);
            }
            n if -n == libc::ECANCELED => {}
            n => {
                let e = io::Error::from_raw_os_error(-n);
                self.close(token, CloseReason::from_io(&e));
            }
        }
    }

    /// As on epoll: once this turn's frames have queued more than the budget, write it out
    /// before reading more.
    ///
    /// Writes here are submitted, not made, so "write it out" means: submit the sends, handle
    /// their completions (io_uring attempts each `sendmsg` inline at submission, so a send to a
    /// socket with room completes at once), submit the follow-up sends of sessions whose queue
    /// holds more than one `sendmsg` carries, and so on until no send completes: what is left
    /// waits in sockets that are full, where TCP pushes back, as on epoll. Other completions
    /// met meanwhile (receives above all) are set aside in `pending`, in order, and handled
    /// after. Without this the turn kept reading while each session's queue drained one
    /// `sendmsg` per round trip: a 1,000-client broadcast queued over a gigabyte and delivered a
    /// third of what epoll did.
    fn bound_turn_output(&mut self) {
        if session::queued_by_thread() <= super::TURN_OUTPUT_BUDGET {
            return;
        }
        session::take_queued_by_thread();
        self.ctx.metrics.budget_flushes.add(1);
        loop {
            self.run_commands();
            if let Err(e) = self.ring.submit() {
                tracing::debug!(error = %e, "mid-turn submit failed");
            }
            let mut sent = 0;
            let mut batch = std::mem::take(&mut self.aside);
            batch.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (ud, res, flags) in batch.drain(..) {
                if decode(ud).0 == Op::Send as u8 {
                    sent += 1;
                    self.complete(ud, res, flags);
                } else {
                    self.pending.push_back((ud, res, flags));
                }
            }
            self.aside = batch;
            if sent == 0 {
                break;
            }
        }
    }

    /// As on epoll: a session's own replies go out right after its receive.
    fn flush_replies(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if !c.session.is_closing() && WorkerShared::take_own_flush(&c.session) {
            self.flush(token);
        }
    }

    /// Stops reading and closes the session with `reason` once everything queued is written.
    fn close_after_flush(&mut self, token: u64, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.closed {
            return;
        }
        c.eof = true;
        c.after_flush.get_or_insert(reason);
        c.rx = RecvState::default();
        let recv = c.recv_armed;
        if c.draining {
            // The flush in progress closes the session when done.
        } else if c.session.shared.queue.try_register() {
            self.flush(token);
        }
        if recv {
            self.cancel(user_data(Op::Recv, token));
        }
    }

    /// Writes what is queued on the session: one `sendmsg` in flight, gathering the batch;
    /// its completion continues. Precondition: this worker holds the session's send flag.
    fn flush(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.closed {
            return;
        }
        c.draining = true;
        if c.send_in_flight {
            return;
        }
        let queue = &c.session.shared.queue;
        let send = &mut *c.send;
        loop {
            if send.batch.bufs.is_empty() {
                queue.take(&mut send.batch.bufs);
                if send.batch.bufs.is_empty() {
                    if queue.finish() {
                        continue;
                    }
                    c.draining = false;
                    send.batch.shrink();
                    if let Some(reason) = c.after_flush.take() {
                        self.close(token, reason);
                    }
                    return;
                }
            }
            break;
        }
        send.iov.clear();
        send.offered = send.batch.fill(&mut send.iov, MAX_IOV);
        send.msg.msg_iov = send.iov.as_mut_ptr();
        send.msg.msg_iovlen = send.iov.len();
        let e = opcode::SendMsg::new(types::Fd(c.fd.as_raw_fd()), &raw const send.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data(Op::Send, token));
        c.send_in_flight = true;
        self.push(e);
        self.in_flight += 1;
    }

    fn on_sent(&mut self, token: u64, res: i32) {
        let Some(c) = self.conns.get_mut(token) else {
            debug_assert!(false, "a completion for a connection that is gone");
            return;
        };
        c.send_in_flight = false;
        if c.closed {
            self.reap(token);
            return;
        }
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock {
                self.ctx.metrics.writes_blocked.add(1);
                return self.flush(token);
            }
            return self.close(token, CloseReason::from_io(&e));
        }
        let send = &mut *c.send;
        let written = res as usize;
        if written < send.offered {
            // The socket buffer filled (the counterpart of epoll's blocked write): the rest
            // goes out with the next send, which io_uring starts once there is room.
            self.ctx.metrics.writes_blocked.add(1);
        }
        send.batch
            .release(written, &c.session.shared.queue, &self.ctx);
        self.flush(token);
    }

    /// Closes the session now: retires it (later sends are refused, queued ones dropped),
    /// counts it, calls `on_disconnect`. Its in-flight operations are cancelled; the socket and
    /// the buffers they use are released by the last completion ([`reap`](Self::reap)).
    fn close(&mut self, token: u64, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.closed {
            return;
        }
        c.closed = true;
        self.open -= 1;
        c.draining = false;
        c.rx = RecvState::default();
        let session = c.session.clone();
        let accepted = c.timing.accepted;
        let (recv, send) = (c.recv_armed, c.send_in_flight);
        common::closing(&self.ctx, &session, &reason, accepted);
        session.shared.retire();
        if recv {
            self.cancel(user_data(Op::Recv, token));
        }
        if send {
            self.cancel(user_data(Op::Send, token));
        }
        self.reap(token);
        common::closed(&self.ctx, &session, &reason);
    }

    /// Removes a closed connection whose operations have all completed: closes its socket and
    /// drops its batch.
    fn reap(&mut self, token: u64) {
        if self
            .conns
            .get_mut(token)
            .is_some_and(|c| c.closed && c.idle())
        {
            self.conns.remove(token);
        }
    }

    // --- commands and housekeeping -------------------------------------------------------

    /// The slot of `session` in this worker, if it is still open here.
    fn token_of(&mut self, session: &Session) -> Option<u64> {
        let token = session.shared.token.load(Ordering::Relaxed);
        let c = self.conns.get_mut(token)?;
        (c.session == *session && !c.closed).then_some(token)
    }

    fn housekeeping(&mut self) {
        let cfg = &self.ctx.config;
        let now = self.now;
        let mut expired = std::mem::take(&mut self.expired);
        for (token, c) in self.conns.iter_mut() {
            if c.closed {
                continue;
            }
            if let Some(reason) = c.timing.expired(cfg, now, c.session.queued_bytes()) {
                expired.push((token, reason));
            }
        }
        for (token, reason) in expired.drain(..) {
            self.close(token, reason);
        }
        self.expired = expired;
    }
}

impl RunCommands for Worker {
    fn scratch(&mut self) -> &mut Vec<Command> {
        &mut self.commands
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Listen(fd) => {
                self.listeners.push(fd);
                if self.shutdown_at.is_none() {
                    self.arm_accept(self.listeners.len() - 1);
                }
            }
            Command::Register(fd, session) => {
                if self.shutdown_at.is_some() {
                    drop(fd);
                    session.shared.retire();
                } else {
                    self.register(fd, session, false);
                }
            }
            Command::Flush(session) => {
                if let Some(token) = self.token_of(&session) {
                    self.flush(token);
                }
            }
            Command::Close(session, reason) => {
                if let Some(token) = self.token_of(&session) {
                    self.close(token, reason);
                }
            }
            Command::Shutdown(deadline) => {
                self.shutdown_at = Some(deadline.unwrap_or(self.now));
                let accepts: Vec<u64> = (0..self.listeners.len())
                    .map(|i| user_data(Op::Accept, i as u64))
                    .collect();
                for a in accepts {
                    self.cancel(a);
                }
                if deadline.is_some() {
                    for token in self.conns.tokens() {
                        self.close_after_flush(token, CloseReason::Shutdown);
                    }
                }
            }
        }
    }
}
