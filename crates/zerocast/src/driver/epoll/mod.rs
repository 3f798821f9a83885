//! The epoll backend: one edge-triggered epoll instance per worker thread.
//!
//! A worker turn: wait for events (or a 100 ms tick), read every readable session until its
//! socket is drained or its read budget is spent, deliver frames, then run the commands the
//! handlers and other threads posted (flushes above all). Sends queued while a turn delivers
//! frames are written at the end of the turn, so they coalesce into one vectored write per
//! session. One exception: when the last thing a session's frames did was queue a reply on
//! that same session, the reply is written right after the session's read (nothing else in
//! the turn would join that write; waiting only delays it). On echo at 1,000 connections this
//! took the server from 13.1 to 12.3 µs of CPU per reply and raised replies/s by about 6 %
//! (four alternating runs each).

mod conn;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slab::{Slab, RESERVED};
use conn::Conn;

use super::{common, Command, RunCommands, WorkerShared};
use crate::buffer::{self, RecvChunk};
use crate::engine::EngineCtx;
use crate::session::{CloseReason, Session};
use crate::sys::{self, epoll::Epoll};

const WAKER: u64 = u64::MAX;
const TIMER: u64 = u64::MAX - 1;
/// Listener `i` has token `LISTENERS - i`.
const LISTENERS: u64 = u64::MAX - 2;
const TICK: Duration = Duration::from_millis(100);
/// How long accepting pauses after EMFILE/ENFILE before it is retried.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) struct Worker {
    shared: Arc<WorkerShared>,
    ctx: Arc<EngineCtx>,
    epoll: Epoll,
    conns: Slab<Conn>,
    listeners: Vec<OwnedFd>,
    events: Vec<sys::epoll::Event>,
    /// The handler's tick timer, when [`Config::tick`](crate::Config::tick) is set.
    timer: Option<OwnedFd>,
    tick_due: bool,
    /// Busy-poll mode: when the next tick is due (no timer; the loop checks the clock).
    next_tick: Option<Instant>,
    recv: RecvChunk,
    iov: sys::IoVecs,
    /// Sessions whose read budget ran out with data possibly left: read again next turn.
    again: Vec<u64>,
    commands: Vec<Command>,
    accept_paused_until: Option<Instant>,
    last_accept_warning: Option<Instant>,
    /// The time at the start of this turn (a coarse clock: one read per turn).
    now: Instant,
    last_housekeeping: Instant,
    /// Scratch list of sessions the housekeeping scan closes.
    expired: Vec<(u64, CloseReason)>,
    /// Set by a shutdown command: sessions still open then are closed.
    shutdown_at: Option<Instant>,
    exit: bool,
}

impl Worker {
    pub(crate) fn new(shared: Arc<WorkerShared>, ctx: Arc<EngineCtx>) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.add(shared.waker().as_raw_fd(), sys::epoll::READ, WAKER)?;
        let recv = RecvChunk::new(ctx.config.recv_chunk);
        let busy = ctx.config.busy_poll;
        let timer = match ctx.config.tick {
            Some(period) if !busy => Some(sys::timerfd(period)?),
            _ => None,
        };
        let next_tick = ctx.config.tick.filter(|_| busy).map(|p| Instant::now() + p);
        if let Some(t) = &timer {
            epoll.add(t.as_raw_fd(), sys::epoll::READ, TIMER)?;
        }
        Ok(Self {
            shared,
            ctx,
            epoll,
            conns: Slab::new(),
            listeners: Vec::new(),
            events: Vec::with_capacity(1024),
            timer,
            tick_due: false,
            next_tick,
            recv,
            iov: sys::IoVecs::new(),
            again: Vec::new(),
            commands: Vec::new(),
            accept_paused_until: None,
            last_accept_warning: None,
            now: Instant::now(),
            last_housekeeping: Instant::now(),
            expired: Vec::new(),
            shutdown_at: None,
            exit: false,
        })
    }

    pub(crate) fn run(mut self) {
        self.shared.enter();
        let mut again = Vec::new();
        let busy_poll = self.ctx.config.busy_poll;
        while !self.exit {
            let timeout = if self.again.is_empty() && !busy_poll {
                TICK.as_millis() as i32
            } else {
                0
            };
            let mut events = std::mem::take(&mut self.events);
            if let Err(e) = self.epoll.wait(&mut events, timeout) {
                tracing::error!(worker = self.shared.index, error = %e, "epoll_wait failed");
                std::thread::sleep(TICK);
            }
            self.now = Instant::now();
            if let Some(due) = self.next_tick {
                if self.now >= due {
                    self.tick_due = true;
                    let period = self.ctx.config.tick.unwrap_or(TICK);
                    // Missed ticks are not replayed.
                    self.next_tick = Some((due + period).max(self.now));
                }
            }
            let mut worked = !events.is_empty() || !self.again.is_empty();
            for ev in &events {
                let (token, bits) = (ev.u64, ev.events);
                self.dispatch(token, bits);
            }
            self.events = events;
            std::mem::swap(&mut self.again, &mut again);
            for token in again.drain(..) {
                self.on_readable(token);
            }
            if std::mem::take(&mut self.tick_due) {
                self.tick();
            }
            worked |= self.run_commands();
            crate::session::take_queued_by_thread();
            self.retry_accept();
            if self.now.duration_since(self.last_housekeeping) >= TICK {
                self.last_housekeeping = self.now;
                self.housekeeping();
            }
            if let Some(at) = self.shutdown_at {
                if self.conns.is_empty() || self.now >= at {
                    for token in self.conns.tokens() {
                        self.close(token, CloseReason::Shutdown);
                    }
                    self.exit = true;
                }
            }
            buffer::reclaim_thread_pool();
            if worked {
                let busy = self.now.elapsed().as_nanos() as i64;
                self.ctx.metrics.busy_ns.add(busy);
            }
        }
        for token in self.conns.tokens() {
            self.close(token, CloseReason::Shutdown);
        }
        self.shared.stop();
        buffer::reclaim_thread_pool();
    }

    fn dispatch(&mut self, token: u64, bits: u32) {
        if token == WAKER {
            let mut cmds = std::mem::take(&mut self.commands);
            self.shared.take_inbox(&mut cmds);
            self.commands = cmds;
            return;
        }
        if token == TIMER {
            if let Some(t) = &self.timer {
                sys::eventfd_drain(t);
            }
            self.tick_due = true;
            return;
        }
        if token >= RESERVED {
            self.accept((LISTENERS - token) as usize);
            return;
        }
        const READ: u32 =
            (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        const WRITE: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        const HUP: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if bits & HUP != 0 {
            if let Some(conn) = self.conns.get_mut(token) {
                conn.hup = true;
            }
        }
        if bits & READ != 0 {
            self.on_readable(token);
        }
        if bits & WRITE != 0 && self.conns.get_mut(token).is_some_and(|c| c.draining) {
            self.flush(token);
        }
    }

    fn tick(&mut self) {
        if self.shutdown_at.is_none() {
            common::tick(&self.ctx, self.shared.index);
        }
    }

    /// The slot of `session` in this worker, if it is still open here.
    fn token_of(&mut self, session: &Session) -> Option<u64> {
        let token = session.shared.token.load(Ordering::Relaxed);
        let conn = self.conns.get_mut(token)?;
        (conn.session == *session).then_some(token)
    }

    fn accept(&mut self, index: usize) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        let fd = listener.as_raw_fd();
        loop {
            match sys::accept(fd) {
                Ok((sock, peer)) => {
                    if let Err(e) = sys::set_nodelay(sock.as_raw_fd()) {
                        tracing::debug!(error = %e, "TCP_NODELAY failed");
                    }
                    if !common::admit(&self.ctx) {
                        drop(sock);
                        continue;
                    }
                    let session = self.ctx.new_session(peer, &self.shared);
                    self.register(sock, session, true);
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => continue,
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        // The pending connection stays in the backlog; retrying at once would
                        // spin. Pause and retry on a timer.
                        self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        let now = Instant::now();
                        if self
                            .last_accept_warning
                            .is_none_or(|t| now - t > Duration::from_secs(1))
                        {
                            self.last_accept_warning = Some(now);
                            tracing::warn!(error = %e, "accept failed: out of descriptors or memory; backing off");
                        }
                        return;
                    }
                    _ => {
                        tracing::warn!(error = %e, "accept failed");
                        return;
                    }
                },
            }
        }
    }

    fn retry_accept(&mut self) {
        if self
            .accept_paused_until
            .is_some_and(|t| Instant::now() >= t)
        {
            self.accept_paused_until = None;
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    fn register(&mut self, fd: OwnedFd, session: Session, accepted: bool) {
        let raw = fd.as_raw_fd();
        if let Some(bytes) = self.ctx.config.send_buffer {
            if let Err(e) = sys::set_send_buffer(raw, bytes) {
                tracing::debug!(error = %e, "SO_SNDBUF failed");
            }
        }
        let now = self.now;
        let token = self.conns.insert_with(|token| {
            session.shared.token.store(token, Ordering::Relaxed);
            Conn::new(fd, session.clone(), accepted, now)
        });
        if let Err(e) = self.epoll.add(raw, sys::epoll::CONN, token) {
            tracing::warn!(error = %e, "cannot watch connection");
            if accepted {
                self.ctx.release();
            }
            self.conns.remove(token);
            session.shared.retire();
            return;
        }
        if let Err(reason) = common::opened(&self.ctx, &session) {
            self.close(token, reason);
        }
    }

    fn close(&mut self, token: u64, reason: CloseReason) {
        let Some(conn) = self.conns.remove(token) else {
            return;
        };
        common::closing(&self.ctx, &conn.session, &reason, conn.timing.accepted);
        let session = conn.close();
        common::closed(&self.ctx, &session, &reason);
    }

    /// Closes sessions past their deadlines and slow consumers past their grace period.
    /// Runs at most every [`TICK`]; O(sessions of this worker).
    fn housekeeping(&mut self) {
        let cfg = &self.ctx.config;
        let now = self.now;
        let mut expired = std::mem::take(&mut self.expired);
        for (token, conn) in self.conns.iter_mut() {
            if let Some(reason) = conn.timing.expired(cfg, now, conn.session.queued_bytes()) {
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
                let token = LISTENERS - self.listeners.len() as u64;
                match self.epoll.add(fd.as_raw_fd(), sys::epoll::READ, token) {
                    Ok(()) => {
                        self.listeners.push(fd);
                        self.accept(self.listeners.len() - 1);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot watch listener"),
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
                self.listeners.clear();
                self.shutdown_at = Some(deadline.unwrap_or(self.now));
                if deadline.is_some() {
                    for token in self.conns.tokens() {
                        self.close_after_flush(token, CloseReason::Shutdown);
                    }
                }
            }
        }
    }
}
