//! How other threads reach a worker: its inbox of commands and its waker.
//!
//! Commands posted from the worker's own thread (a handler closing a session, say) go to a
//! thread-local list instead: no lock, no system call. Commands from elsewhere go into the
//! inbox under its lock, and wake the worker at most once per batch: a `wake_pending` flag
//! skips the wake-up while one is outstanding.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::Transport;
use crate::conn::ws::WsConn;
use crate::session::{Notice, Owner, Session};
use crate::sync::{lock, Mutex};
use crate::sys::Sock;

/// Work posted to a worker.
pub(crate) enum Command {
    /// Start accepting on this listener, serving what it accepts with this transport; with
    /// `spread`, the listener is the engine's only one on its port, and what it accepts is
    /// handed round the workers.
    Listen {
        sock: Sock,
        transport: Transport,
        spread: bool,
    },
    /// Serve a connection another worker accepted on a spread listener.
    Adopt(Sock, Option<std::net::SocketAddr>, Transport),
    /// Take ownership of a connected socket for this (new) session (a WebSocket client's
    /// state when it speaks WebSocket).
    Register(Sock, Session, Option<Box<WsConn>>),
    /// Serve datagrams on this socket (see [`crate::datagram`]).
    Datagrams(Sock),
    /// What a session asks of its owner.
    Session(Notice),
    /// Stop accepting; flush every session's queue until the deadline (none: close at once),
    /// then close everything and stop.
    Shutdown(Option<Instant>),
}

struct Inbox {
    commands: Vec<Command>,
    stopped: bool,
}

/// The part of a worker other threads talk to.
pub(crate) struct WorkerShared {
    pub(crate) index: usize,
    inbox: Mutex<Inbox>,
    /// True while a wake-up is outstanding: producers skip signalling then.
    wake_pending: AtomicBool,
    /// Set by the worker once its backend exists (before the engine posts anything).
    waker: OnceLock<Arc<dyn Fn() + Send + Sync>>,
}

thread_local! {
    /// The worker running on this thread, if any (compared by address only).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    /// Commands a worker posts to itself from inside its own callbacks.
    static LOCAL: RefCell<Vec<Command>> = const { RefCell::new(Vec::new()) };
}

impl WorkerShared {
    pub(crate) fn new(index: usize) -> Self {
        Self {
            index,
            inbox: Mutex::new(Inbox {
                commands: Vec::new(),
                stopped: false,
            }),
            wake_pending: AtomicBool::new(false),
            waker: OnceLock::new(),
        }
    }

    /// This worker's identity: sessions compare it with the thread's worker.
    pub(crate) fn id(&self) -> usize {
        self as *const Self as usize
    }

    fn is_current(&self) -> bool {
        CURRENT.with(|c| c.get() == self.id())
    }

    /// Sets how to wake the worker (its backend's waker), before anything is posted.
    pub(crate) fn set_waker(&self, waker: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(waker);
    }

    /// Marks the calling thread as this worker's.
    pub(crate) fn enter(&self) {
        CURRENT.with(|c| c.set(self.id()));
        crate::session::enter(self.id());
    }

    /// Posts a command. From the worker's own thread it goes to a local list (run before the
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
            if let Some(w) = self.waker.get() {
                w();
            }
        }
    }

    /// Worker side, after its waker fired (and its signal was consumed): takes every posted
    /// command into `out`.
    ///
    /// Invariant kept: while `wake_pending` is true, a wake-up is outstanding, so the worker
    /// will wake. Hence the order: the backend consumed the signal *before* this clears the
    /// flag, then looks. Clearing first would let a producer set the flag and signal in
    /// between, and the consumption would swallow that signal while the flag stayed set:
    /// every later producer would skip waking a worker that never wakes.
    pub(crate) fn take_inbox(&self, out: &mut Vec<Command>) {
        self.wake_pending.store(false, Ordering::Release);
        let mut inbox = lock(&self.inbox);
        if out.is_empty() {
            std::mem::swap(&mut inbox.commands, out);
        } else {
            out.append(&mut inbox.commands);
        }
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
}

impl Owner for WorkerShared {
    fn post(&self, notice: Notice) {
        WorkerShared::post(self, Command::Session(notice));
    }
}

/// What a command means once its worker has stopped: release whatever it holds.
fn resolve_offline(cmd: Command) {
    match cmd {
        Command::Register(_, session, _) => session.shared.retire(),
        Command::Session(Notice::Flush(s)) | Command::Session(Notice::Close(s, _)) => s.retire(),
        Command::Session(Notice::Deliver(_) | Notice::Message(_))
        | Command::Listen { .. }
        | Command::Adopt(..)
        | Command::Datagrams(_)
        | Command::Shutdown(_) => {}
    }
}
