//! Drivers: the event loops that own sockets.
//!
//! # Backend contract
//! A backend runs one worker per thread. Each worker owns a set of sessions (their sockets and
//! I/O state) and must:
//! - deliver a session's frames in order from its own thread, via the [`Handler`];
//! - read into receive memory that an idle session does not pin, parse frames in place, and
//!   hand out borrowed [`Frame`](crate::Frame) views;
//! - drain a session's [`SendQueue`](crate::session::queue) only while holding its "send
//!   registered" flag, gathering everything queued into one vectored write, keeping the flag
//!   across EAGAIN until the socket is writable, and releasing it with `finish`;
//! - act on the [`Command`]s posted to it (from any thread) in the order they were posted;
//! - on close: deregister and close the socket, close the session's queue (dropping what it
//!   holds), call `on_disconnect` once, remove the session from the registry;
//! - on shutdown: close every session with [`CloseReason::Shutdown`], then mark itself stopped
//!   so that later commands are resolved without it (no buffer stranded in a dead inbox).
//!
//! The epoll backend lives in [`epoll`], the io_uring backend in [`uring`]; what both do the
//! same way (framing received bytes, releasing written buffers, deadlines, session
//! bookkeeping) in [`common`].

pub(crate) mod common;
pub(crate) mod epoll;
pub(crate) mod slab;
pub(crate) mod uring;

/// Output a turn may queue before the worker writes it, between reads. 8 MiB: with 1,000
/// recipients of a 76-byte relay that is a write every ~110 frames per recipient. 1 MiB cut
/// coalescing so far that a single core no longer kept up with 500 broadcasting clients
/// (1.75M instead of 2.5M deliveries/s); 32 MiB gained little over 8 and doubled the memory.
pub(crate) const TURN_OUTPUT_BUDGET: usize = 8 * 1024 * 1024;

/// A worker of either backend.
#[allow(clippy::large_enum_variant)] // one per thread, built once
pub(crate) enum Worker {
    Epoll(epoll::Worker),
    Uring(uring::Worker),
}

impl Worker {
    pub(crate) fn run(self) {
        match self {
            Self::Epoll(w) => w.run(),
            Self::Uring(w) => w.run(),
        }
    }
}

use crate::sync::Mutex;
use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::session::{CloseReason, Session};
use crate::sync::lock;
use crate::sys;

/// How a worker runs the commands posted to it; both backends share the loop.
pub(crate) trait RunCommands {
    /// The worker's command vector: the inbox is taken into it, and it keeps its capacity.
    fn scratch(&mut self) -> &mut Vec<Command>;

    /// Carries out one command.
    fn command(&mut self, cmd: Command);

    /// Runs posted commands until none are left (handlers may post more while they run).
    /// Returns whether there was any.
    fn run_commands(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut cmds = std::mem::take(self.scratch());
            WorkerShared::take_local(&mut cmds);
            if cmds.is_empty() {
                *self.scratch() = cmds;
                return any;
            }
            any = true;
            for cmd in cmds.drain(..) {
                self.command(cmd);
            }
            *self.scratch() = cmds;
        }
    }
}

/// Work posted to a worker.
pub(crate) enum Command {
    /// Start accepting on this listener.
    Listen(OwnedFd),
    /// Take ownership of a connected socket for this (new) session.
    Register(OwnedFd, Session),
    /// A producer won the session's send flag: drain its queue.
    Flush(Session),
    /// Close the session.
    Close(Session, CloseReason),
    /// Stop accepting; flush every session's queue until the deadline (none: close at once),
    /// then close everything and stop.
    Shutdown(Option<std::time::Instant>),
}

struct Inbox {
    commands: Vec<Command>,
    stopped: bool,
}

/// The part of a worker other threads talk to.
pub(crate) struct WorkerShared {
    pub(crate) index: usize,
    inbox: Mutex<Inbox>,
    /// True while an eventfd signal is outstanding: producers skip the syscall then.
    wake_pending: AtomicBool,
    waker: OwnedFd,
}

thread_local! {
    /// The worker running on this thread, if any (compared by address only).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    /// Commands a worker posts to itself from inside its own callbacks: no lock, no syscall.
    static LOCAL: RefCell<Vec<Command>> = const { RefCell::new(Vec::new()) };
}

impl WorkerShared {
    pub(crate) fn new(index: usize) -> std::io::Result<Self> {
        Ok(Self {
            index,
            inbox: Mutex::new(Inbox {
                commands: Vec::new(),
                stopped: false,
            }),
            wake_pending: AtomicBool::new(false),
            waker: sys::eventfd()?,
        })
    }

    pub(crate) fn waker(&self) -> &OwnedFd {
        &self.waker
    }

    fn is_current(&self) -> bool {
        CURRENT.with(|c| c.get() == self as *const Self as usize)
    }

    /// Marks the calling thread as this worker's.
    pub(crate) fn enter(&self) {
        CURRENT.with(|c| c.set(self as *const Self as usize));
    }

    /// Posts a command. From the worker's own thread it goes to a local list (drained before the
    /// worker sleeps); from elsewhere into the inbox, waking the worker at most once per batch.
    pub(crate) fn post(&self, cmd: Command) {
        if self.is_current() {
            LOCAL.with(|l| l.borrow_mut().push(cmd));
            return;
        }
        {
            let mut inbox = lock(&self.inbox);
            if !inbox.stopped {
                inbox.commands.push(cmd);
                drop(inbox);
                self.wake();
                return;
            }
        }
        resolve_offline(cmd);
    }

    fn wake(&self) {
        // AcqRel pairs with the worker's clear in `take_inbox`: either the worker clears after
        // our push (and then sees it), or our swap reads its clear and we signal.
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = sys::eventfd_signal(&self.waker) {
                tracing::error!(worker = self.index, error = %e, "cannot wake worker");
            }
        }
    }

    /// Worker side: takes every posted command into `out`.
    ///
    /// Invariant kept: while `wake_pending` is true, the eventfd holds a signal, so the worker
    /// will wake. Hence the order: drain the eventfd, *then* clear the flag, then look. Clearing
    /// first would let a producer set the flag and signal in between, and the drain would
    /// swallow that signal while the flag stayed set: every later producer would skip waking
    /// a worker that never wakes.
    pub(crate) fn take_inbox(&self, out: &mut Vec<Command>) {
        sys::eventfd_drain(&self.waker);
        // Clear before looking, as in the send hand-off; see `wake`.
        self.wake_pending.store(false, Ordering::Release);
        let mut inbox = lock(&self.inbox);
        if out.is_empty() {
            std::mem::swap(&mut inbox.commands, out);
        } else {
            out.append(&mut inbox.commands);
        }
    }

    /// Worker side: if the newest command the worker posted to itself is a flush of `session`,
    /// removes it and returns true; the caller then owns the send flag that command carried.
    pub(crate) fn take_own_flush(session: &Session) -> bool {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let own = matches!(l.last(), Some(Command::Flush(s)) if s == session);
            if own {
                l.pop();
            }
            own
        })
    }

    /// Worker side: commands the worker posted to itself.
    pub(crate) fn take_local(out: &mut Vec<Command>) {
        LOCAL.with(|l| out.append(&mut l.borrow_mut()));
    }

    /// Worker side, on exit: no command will be handled any more; resolve the ones left.
    pub(crate) fn stop(&self) {
        let left = {
            let mut inbox = lock(&self.inbox);
            inbox.stopped = true;
            std::mem::take(&mut inbox.commands)
        };
        let local = LOCAL.with(|l| std::mem::take(&mut *l.borrow_mut()));
        left.into_iter().chain(local).for_each(resolve_offline);
        CURRENT.with(|c| c.set(0));
    }

    pub(crate) fn schedule_flush(&self, session: &Session) {
        self.post(Command::Flush(session.clone()));
    }

    pub(crate) fn request_close(&self, session: &Session, reason: CloseReason) {
        self.post(Command::Close(session.clone(), reason));
    }
}

/// What a command means once its worker has stopped: release whatever it holds.
fn resolve_offline(cmd: Command) {
    match cmd {
        Command::Register(_, session) | Command::Flush(session) | Command::Close(session, _) => {
            session.shared.retire();
        }
        Command::Listen(_) | Command::Shutdown(_) => {}
    }
}
