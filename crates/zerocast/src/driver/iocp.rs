//! The completion backend on Windows: one I/O completion port per worker, the design the
//! classic game-server core comes from.
//!
//! - accepting: [`ACCEPTS`] `AcceptEx` outstanding per listener, each into a socket made
//!   ahead; a listener belongs to one worker's port, which hands the connections it accepts
//!   round the workers (Windows has no `SO_REUSEPORT` to give each worker a listener);
//! - receiving: one overlapped `WSARecv` per session into memory of its own record, reported
//!   as a view ([`Event::Received`]) that keeps that memory until it drops;
//! - sending: one gathered `WSASend` per session in flight, of the write the core built (the
//!   original design's send queue, exactly);
//! - waking: `PostQueuedCompletionStatus` with the waker's key;
//! - skip-on-success: sockets are associated with `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`, so
//!   an operation that finishes at once is handled inline, with no detour through the port.
//!   A receive or accept that finished at once is started again at the next wait, not in a
//!   loop: where data is always there (under Wine nearly every receive finishes at once) a
//!   session reads once per turn and cannot hold the worker.
//!
//! # Operation lifetime
//! A session's operations live in its [`IConn`], boxed so that their `OVERLAPPED`s and
//! receive memory never move; a closed token's operations are cancelled, and the token is
//! released (its socket and record may go) only once the last of their completions has
//! arrived. Accept records live with their listener, which is dropped only once none is in
//! flight.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::ops::{OpState, CLOSED, PAUSED, RECV_ARMED, SEND_IN_FLIGHT};
use super::slab::{generation_of, slot_of};
use super::{Backend, Closing, Event, Sent, Token, WriteBuf};
use crate::sys::iocp::{self, AcceptOp, Completion, Overlapped, Port, RawSock, RecvOp, Started};
use crate::sys::{self, socket, Sock};

/// The waker's completion key.
const WAKE: usize = usize::MAX;
/// Listener `i`'s completion key is `LISTENERS - i` (tokens stay below 2^56).
const LISTENERS: usize = usize::MAX - 2;
/// Accepts outstanding per listener.
const ACCEPTS: usize = 16;
/// A receive's memory, and the least a receive is given (less left: a fresh buffer).
const RECV_SIZE: usize = 4096;
const RECV_MIN: usize = 1024;
/// Completions taken per wait.
const MAX_COMPLETIONS: usize = 1024;

// A token is a completion key: keys are pointer-sized.
const _: () = assert!(usize::BITS == 64, "the IOCP backend needs a 64-bit target");

/// One connection's operations.
///
/// Invariant (operation lifetime): while [`RECV_ARMED`], the OS may write into `recv`'s
/// memory and its `OVERLAPPED`; while [`SEND_IN_FLIGHT`], it reads the core's `WriteBuf` and
/// writes `send`. The record is boxed (its address is fixed) and dropped, and the token
/// released, only once [`OpState::releasable`].
struct IConn {
    ops: OpState,
    sock: RawSock,
    recv: RecvOp,
    send: Overlapped,
}

/// A listener and its outstanding accepts.
///
/// Invariant: `sock` is kept while any accept is in flight (`pending`); each record is boxed.
struct Listener {
    sock: Option<Sock>,
    domain: socket2::Domain,
    // Boxed on purpose: a record's address is its operation's identity and must not move,
    // whatever happens to the vector.
    #[allow(clippy::vec_box)]
    ops: Vec<Box<AcceptOp>>,
    pending: Vec<bool>,
    /// Not paused after a failure.
    accepting: bool,
    /// Shutdown: nothing more is accepted, the socket goes once no accept is in flight.
    stopped: bool,
}

pub(crate) struct Iocp {
    port: Arc<Port>,
    raw: Vec<windows_sys::Win32::System::IO::OVERLAPPED_ENTRY>,
    done: Vec<Completion>,
    conns: Vec<Option<Box<IConn>>>,
    listeners: Vec<Listener>,
    /// Listeners whose idle accept records start at the next wait.
    want_accept: Vec<usize>,
    /// Sessions whose receive starts at the next wait.
    rearm: Vec<Token>,
    /// Events met outside a wait (a send that the socket only partly took), reported by the
    /// next one.
    ready: Vec<Event>,
    /// Operations started whose completion has not arrived yet.
    in_flight: usize,
    finishing: bool,
}

impl Iocp {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            port: Arc::new(Port::new()?),
            raw: Vec::with_capacity(MAX_COMPLETIONS),
            done: Vec::with_capacity(MAX_COMPLETIONS),
            conns: Vec::new(),
            listeners: Vec::new(),
            want_accept: Vec::new(),
            rearm: Vec::new(),
            ready: Vec::new(),
            in_flight: 0,
            finishing: false,
        })
    }

    fn conn(&mut self, token: Token) -> Option<&mut IConn> {
        self.conns
            .get_mut(slot_of(token) as usize)?
            .as_deref_mut()
            .filter(|c| c.ops.generation() == generation_of(token))
    }

    /// Starts the session's receive. One that finishes at once is reported now and started
    /// again at the next wait.
    fn arm_recv(&mut self, token: Token, events: &mut Vec<Event>, next: &mut Vec<Token>) {
        let Some(c) = self.conn(token) else {
            return;
        };
        if !c.ops.may_receive() {
            return;
        }
        // SAFETY: no receive is in flight on this record (RECV_ARMED is clear); the record is
        // boxed and kept, with its socket, until every operation on the token has completed
        // (`IConn`'s invariant).
        match unsafe { c.recv.start(c.sock, RECV_SIZE, RECV_MIN) } {
            Ok(Started::Pending) => {
                c.ops.set(RECV_ARMED, true);
                self.in_flight += 1;
            }
            Ok(Started::Done(0)) => events.push(Event::Eof(token)),
            Ok(Started::Done(n)) => {
                // SAFETY: the receive finished at once with `n` bytes.
                let data = unsafe { c.recv.take(n) };
                events.push(Event::Received(token, data));
                next.push(token);
            }
            Err(e) => events.push(Event::Failed(token, e)),
        }
    }

    /// Starts listener `i`'s idle accepts. An accept that finishes at once is reported now,
    /// and the listener looked at again at the next wait.
    fn start_accepts(&mut self, i: usize, events: &mut Vec<Event>, next: &mut Vec<usize>) {
        let Some(l) = self.listeners.get_mut(i) else {
            return;
        };
        if !l.accepting || l.stopped || self.finishing {
            return;
        }
        let Some(sock) = l.sock.as_ref() else {
            return;
        };
        for j in 0..l.ops.len() {
            if l.pending[j] {
                continue;
            }
            let op = &mut l.ops[j];
            // SAFETY: no accept is in flight on this record (`pending` is clear); records are
            // boxed and the listener's socket kept while one is (`Listener`'s invariant).
            match unsafe { op.start(sock, l.domain) } {
                Ok(Started::Pending) => {
                    l.pending[j] = true;
                    self.in_flight += 1;
                }
                Ok(Started::Done(_)) => {
                    accepted(i, op, sock, events);
                    if !next.contains(&i) {
                        next.push(i);
                    }
                    return;
                }
                Err(e) => {
                    if sys::out_of_resources(&e) {
                        l.accepting = false;
                        events.push(Event::AcceptFailed {
                            listener: i,
                            error: e,
                        });
                    } else {
                        tracing::warn!(error = %e, "cannot start an accept");
                    }
                    return;
                }
            }
        }
    }

    /// Whether `token` is closed with nothing in flight: then it is released.
    fn reap(&mut self, token: Token, events: &mut Vec<Event>) {
        let slot = slot_of(token) as usize;
        if self.conn(token).is_some_and(|c| c.ops.releasable()) {
            self.conns[slot] = None;
            events.push(Event::Released(token));
        }
    }

    /// Translates dequeued completions into events; returns how many sends finished.
    fn translate(&mut self, events: &mut Vec<Event>, next: &mut Vec<Token>) -> usize {
        let mut sent = 0;
        let done = std::mem::take(&mut self.done);
        for c in &done {
            if c.key == WAKE {
                events.push(Event::Woken);
            } else if c.key > LISTENERS - self.listeners.len() && c.key <= LISTENERS {
                self.on_accept(LISTENERS - c.key, c, events);
            } else {
                sent += self.on_conn(c.key as Token, c, events, next);
            }
        }
        self.done = done;
        self.done.clear();
        sent
    }

    /// A session's receive or send completed; returns 1 for a send.
    fn on_conn(
        &mut self,
        token: Token,
        done: &Completion,
        events: &mut Vec<Event>,
        next: &mut Vec<Token>,
    ) -> usize {
        self.in_flight -= 1;
        let Some(c) = self.conn(token) else {
            debug_assert!(false, "a completion for a connection that is gone");
            return 0;
        };
        if done.op == c.send.id() {
            c.ops.set(SEND_IN_FLIGHT, false);
            let result = if done.ok {
                Ok(done.bytes)
            } else {
                Err(c.send.error(c.sock))
            };
            events.push(Event::Sent(token, result));
            self.reap(token, events);
            return 1;
        }
        debug_assert_eq!(done.op, c.recv.ov().id());
        c.ops.set(RECV_ARMED, false);
        // Whatever happens to the session, the record's buffer is accounted (the bytes are
        // dropped if nobody takes them).
        let n = if done.ok { done.bytes } else { 0 };
        // SAFETY: the receive's completion was dequeued: it has finished, with `n` bytes.
        let data = unsafe { c.recv.take(n) };
        if c.ops.has(CLOSED) {
            self.reap(token, events);
            return 0;
        }
        if c.ops.has(PAUSED) {
            return 0;
        }
        if !done.ok {
            let e = c.recv.ov().error(c.sock);
            if e.raw_os_error() != Some(ERROR_OPERATION_ABORTED) {
                events.push(Event::Failed(token, e));
            }
        } else if n == 0 {
            events.push(Event::Eof(token));
        } else {
            events.push(Event::Received(token, data));
            self.arm_recv(token, events, next);
        }
        0
    }

    fn on_accept(&mut self, i: usize, done: &Completion, events: &mut Vec<Event>) {
        let l = &mut self.listeners[i];
        let Some(j) = l.ops.iter().position(|op| op.ov().id() == done.op) else {
            debug_assert!(false, "an accept completion for no record");
            return;
        };
        l.pending[j] = false;
        self.in_flight -= 1;
        let op = &mut l.ops[j];
        match l.sock.as_ref() {
            Some(sock) if done.ok && !l.stopped => accepted(i, op, sock, events),
            Some(sock) if !done.ok && !l.stopped => {
                let e = op.ov().error(RawSock::of(sock));
                op.abandon();
                if sys::out_of_resources(&e) {
                    l.accepting = false;
                    events.push(Event::AcceptFailed {
                        listener: i,
                        error: e,
                    });
                } else if e.raw_os_error() != Some(ERROR_OPERATION_ABORTED) {
                    // A connection reset before it was accepted, say: accept the next one.
                    tracing::debug!(error = %e, "accept failed");
                }
            }
            _ => op.abandon(),
        }
        if l.stopped {
            if !l.pending.contains(&true) {
                l.sock = None;
            }
        } else if !self.want_accept.contains(&i) {
            self.want_accept.push(i);
        }
    }

    fn dequeue(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let Self {
            port, raw, done, ..
        } = self;
        port.wait(raw, done, timeout)
    }
}

const ERROR_OPERATION_ABORTED: i32 = windows_sys::Win32::Foundation::ERROR_OPERATION_ABORTED as i32;

/// Listener `i`'s accept on `op` finished: its socket is reported (or dropped with a log line
/// if it cannot be finished).
fn accepted(i: usize, op: &mut AcceptOp, listener: &Sock, events: &mut Vec<Event>) {
    match op.finish(listener) {
        Ok(socket) => events.push(Event::Accepted {
            listener: i,
            socket,
            peer: None,
        }),
        Err(e) => tracing::debug!(error = %e, "cannot finish an accept"),
    }
}

impl Backend for Iocp {
    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let port = self.port.clone();
        Arc::new(move || {
            if let Err(e) = port.post(WAKE) {
                tracing::error!(error = %e, "cannot wake worker");
            }
        })
    }

    fn listen(&mut self, listener: Sock) -> io::Result<usize> {
        let i = self.listeners.len();
        let domain = socket2::SockRef::from(&listener).local_addr()?.domain();
        self.port.associate(&listener, LISTENERS - i)?;
        self.listeners.push(Listener {
            sock: Some(listener),
            domain,
            ops: (0..ACCEPTS).map(|_| AcceptOp::new()).collect(),
            pending: vec![false; ACCEPTS],
            accepting: false,
            stopped: false,
        });
        Ok(i)
    }

    fn accept(&mut self, listener: usize) {
        if let Some(l) = self.listeners.get_mut(listener) {
            l.accepting = true;
            if !self.want_accept.contains(&listener) {
                self.want_accept.push(listener);
            }
        }
    }

    fn stop_accepting(&mut self) {
        self.want_accept.clear();
        for l in &mut self.listeners {
            l.stopped = true;
            match &l.sock {
                Some(sock) if l.pending.contains(&true) => iocp::cancel(RawSock::of(sock), None),
                _ => l.sock = None,
            }
        }
    }

    fn watch_datagrams(&mut self, _socket: &Sock) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "datagrams are served on Linux only",
        ))
    }

    fn add(&mut self, token: Token, socket: &Sock) -> io::Result<()> {
        socket::set_blocking(socket)?;
        self.port.associate(socket, token as usize)?;
        let i = slot_of(token) as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        self.conns[i] = Some(Box::new(IConn {
            ops: OpState::new(generation_of(token)),
            sock: RawSock::of(socket),
            recv: RecvOp::default(),
            send: Overlapped::default(),
        }));
        self.rearm.push(token);
        Ok(())
    }

    fn recv(&mut self, _: &Sock, _: &mut BytesMut, _: usize) -> io::Result<usize> {
        // Completion: received bytes arrive as events.
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    fn pause(&mut self, token: Token) {
        let Some(c) = self.conn(token) else {
            return;
        };
        c.ops.set(PAUSED, true);
        if c.ops.has(RECV_ARMED) {
            iocp::cancel(c.sock, Some(c.recv.ov()));
        }
    }

    fn send(&mut self, token: Token, _socket: &Sock, w: &mut WriteBuf) -> Sent {
        let Some(c) = self.conn(token) else {
            return Sent::Done(Err(io::Error::from(io::ErrorKind::NotConnected)));
        };
        if w.slices.is_empty() {
            return Sent::Done(Ok(0));
        }
        debug_assert!(!c.ops.has(SEND_IN_FLIGHT), "one send in flight per session");
        // SAFETY: no send is in flight on this record (one per session, above); the slices
        // point into `w`'s cork and into buffers the session's queued pieces hold, and the
        // core keeps `w` boxed and untouched in the connection's `inflight` until this send's
        // `Event::Sent` (`Conn`'s invariant), releasing those pieces only with its byte
        // count; the record and the socket stay until the token is released, after the
        // completion.
        match unsafe { iocp::send(c.sock, &c.send, &w.slices) } {
            Ok(Started::Pending) => {
                c.ops.set(SEND_IN_FLIGHT, true);
                self.in_flight += 1;
                Sent::Pending
            }
            Ok(Started::Done(n)) => {
                if n < w.offered {
                    // The core waits for room: the next wait says to go on.
                    self.ready.push(Event::Writable(token));
                }
                Sent::Done(Ok(n))
            }
            Err(e) => Sent::Done(Err(e)),
        }
    }

    fn sends_inline(&self) -> bool {
        false
    }

    fn close(&mut self, token: Token, _socket: &Sock) -> Closing {
        let Some(c) = self.conn(token) else {
            return Closing::Now;
        };
        c.ops.set(CLOSED, true);
        if c.ops.busy() {
            iocp::cancel(c.sock, None);
            Closing::Later
        } else {
            self.conns[slot_of(token) as usize] = None;
            Closing::Now
        }
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        // Completions come as the OS queues them; there is no readiness to defer.
        _defer_input: bool,
        events: &mut Vec<Event>,
    ) -> io::Result<()> {
        let start = events.len();
        events.append(&mut self.ready);
        let mut next_accept = Vec::new();
        for i in std::mem::take(&mut self.want_accept) {
            self.start_accepts(i, events, &mut next_accept);
        }
        let mut next = Vec::new();
        for token in std::mem::take(&mut self.rearm) {
            self.arm_recv(token, events, &mut next);
        }
        let timeout = if events.len() > start {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let result = self.dequeue(timeout);
        self.translate(events, &mut next);
        self.rearm.append(&mut next);
        for i in next_accept {
            if !self.want_accept.contains(&i) {
                self.want_accept.push(i);
            }
        }
        result
    }

    fn drain_sends(&mut self, events: &mut Vec<Event>) -> usize {
        events.append(&mut self.ready);
        if let Err(e) = self.dequeue(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "mid-turn dequeue failed");
        }
        let mut next = Vec::new();
        let sent = self.translate(events, &mut next);
        self.rearm.append(&mut next);
        sent
    }

    fn finish(&mut self) {
        self.finishing = true;
        self.stop_accepting();
    }

    fn busy(&self) -> bool {
        self.in_flight > 0
    }
}
