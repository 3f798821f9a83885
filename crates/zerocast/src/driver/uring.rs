//! The completion backend: one io_uring instance per worker, Linux's counterpart of IOCP.
//!
//! - accepting: one multishot accept per listener;
//! - receiving: one multishot receive per session into the worker's provided-buffer ring
//!   (the kernel picks a buffer only when data arrives, so an idle session holds none); each
//!   completion is reported as a view of its buffer, which returns to the ring when every
//!   view has dropped;
//! - sending: one `sendmsg` per session in flight, of the write the core built;
//! - waking: a multishot poll on the worker's eventfd;
//! - one `io_uring_enter` per turn submits what the turn prepared and waits.
//!
//! Ring full: when no provided buffer is free, the kernel ends a session's receive with
//! `ENOBUFS`; the session waits in `starved` and is re-armed, oldest first, one per buffer
//! that comes back (re-arming all at once had most fail again at once). Meanwhile its data
//! waits in the socket, where TCP pushes back on the sender: nothing is dropped.
//!
//! # Operation lifetime
//! A closed token's operations are cancelled, and the token is released (its socket and the
//! memory its operations use may go) only when the last of their completions has arrived:
//! see [`UConn`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::ops::{OpState, CLOSED, PAUSED, RECV_ARMED, SEND_IN_FLIGHT};
use super::slab::{generation_of, slot_of};
use super::{Backend, Closing, Event, Sent, Token, WriteBuf};
use crate::sys::uring::{more, Completion, Ring};
use crate::sys::{self, socket};

/// Provided buffers per worker, and their size: 16 MiB of receive memory a worker's sessions
/// share, touched only as it is used.
const BUFFERS: u16 = 4096;
const BUFFER_SIZE: usize = 4096;
/// Submission queue entries; the completion queue is four times larger.
const RING_ENTRIES: u32 = 4096;
/// Completions taken per wait.
const MAX_COMPLETIONS: usize = 16 * 1024;

/// What a completion is about: the kind in the top 8 bits of `user_data`, a token (below
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
    /// The datagram socket's multishot poll.
    Datagrams = 6,
}

fn user_data(op: Op, token: u64) -> u64 {
    debug_assert!(token < 1 << 56);
    (op as u64) << 56 | token
}

fn decode(user_data: u64) -> (u8, u64) {
    ((user_data >> 56) as u8, user_data & ((1 << 56) - 1))
}

/// One connection's operations.
///
/// Invariant (operation lifetime): while [`RECV_ARMED`], the kernel may write received bytes
/// into provided buffers for this socket; while [`SEND_IN_FLIGHT`], it reads the core's
/// `WriteBuf` (its `msghdr`, slices and every byte they cover). The core keeps the socket and
/// that memory until this backend reports [`Event::Released`], which happens only once
/// [`OpState::releasable`].
///
/// Eight bytes a connection: the flags and generation in one word, and the descriptor.
struct UConn {
    ops: OpState,
    fd: RawFd,
}

impl Default for UConn {
    /// A free slot: no socket.
    fn default() -> Self {
        Self {
            ops: OpState::default(),
            fd: -1,
        }
    }
}

pub(crate) struct Uring {
    ring: Ring,
    wake: sys::EventFd,
    wake_armed: bool,
    /// The datagram socket, and whether its multishot poll is armed.
    datagrams: Option<RawFd>,
    datagrams_armed: bool,
    finishing: bool,
    listeners: Vec<OwnedFd>,
    /// Per listener: its multishot accept is armed.
    accept_armed: Vec<bool>,
    /// Listeners to arm at the next wait.
    want_accept: Vec<usize>,
    conns: Vec<UConn>,
    starved: VecDeque<Token>,
    /// Operations submitted whose final completion has not arrived yet.
    in_flight: usize,
    pending: VecDeque<Completion>,
}

impl Uring {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            ring: Ring::new(RING_ENTRIES, BUFFERS, BUFFER_SIZE)?,
            wake: sys::EventFd::new()?,
            wake_armed: false,
            datagrams: None,
            datagrams_armed: false,
            finishing: false,
            listeners: Vec::new(),
            accept_armed: Vec::new(),
            want_accept: Vec::new(),
            conns: Vec::new(),
            starved: VecDeque::new(),
            in_flight: 0,
            pending: VecDeque::new(),
        })
    }

    fn conn(&mut self, token: Token) -> Option<&mut UConn> {
        self.conns
            .get_mut(slot_of(token) as usize)
            .filter(|c| c.ops.generation() == generation_of(token) && c.fd >= 0)
    }

    fn arm_recv(&mut self, token: Token) {
        let Some(c) = self.conn(token) else {
            return;
        };
        if !c.ops.may_receive() {
            return;
        }
        c.ops.set(RECV_ARMED, true);
        let fd = c.fd;
        self.ring.recv_multi(fd, user_data(Op::Recv, token));
        self.in_flight += 1;
    }

    /// Whether `token` is closed with nothing in flight: then it is released.
    fn reap(&mut self, token: Token, events: &mut Vec<Event>) {
        if self.conn(token).is_some_and(|c| c.ops.releasable()) {
            self.conns[slot_of(token) as usize] = UConn::default();
            events.push(Event::Released(token));
        }
    }

    /// Translates completions into events; returns how many sends finished.
    fn translate(&mut self, events: &mut Vec<Event>) -> usize {
        let mut sent = 0;
        while let Some((ud, res, flags)) = self.pending.pop_front() {
            let (op, token) = decode(ud);
            let more = more(flags);
            match op {
                x if x == Op::Recv as u8 => self.on_recv(token, res, flags, more, events),
                x if x == Op::Send as u8 => {
                    sent += 1;
                    self.in_flight -= 1;
                    if let Some(c) = self.conn(token) {
                        c.ops.set(SEND_IN_FLIGHT, false);
                    }
                    let result = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(res as usize)
                    };
                    events.push(Event::Sent(token, result));
                    self.reap(token, events);
                }
                x if x == Op::Accept as u8 => self.on_accept(token as usize, res, more, events),
                x if x == Op::Wake as u8 => {
                    if !more {
                        self.in_flight -= 1;
                        self.wake_armed = false;
                    }
                    if res >= 0 {
                        // Consumed before the core clears its wake-up flag.
                        self.wake.drain();
                        events.push(Event::Woken);
                    }
                }
                x if x == Op::Datagrams as u8 => {
                    if !more {
                        self.in_flight -= 1;
                        self.datagrams_armed = false;
                    }
                    if res >= 0 {
                        events.push(Event::Datagrams);
                    }
                }
                _ => {} // a cancel request's own completion
            }
        }
        sent
    }

    fn on_recv(&mut self, token: Token, res: i32, flags: u32, more: bool, events: &mut Vec<Event>) {
        // Take the buffer first: whatever happens to the session, it goes back to the ring.
        let data = self.ring.take_buffer(flags, res.max(0) as usize);
        if !more {
            self.in_flight -= 1;
        }
        let Some(c) = self.conn(token) else {
            debug_assert!(false, "a receive completion for a connection that is gone");
            return;
        };
        if !more {
            c.ops.set(RECV_ARMED, false);
        }
        if c.ops.has(CLOSED) {
            return self.reap(token, events);
        }
        if c.ops.has(PAUSED) {
            return;
        }
        match res {
            n if n > 0 => {
                match data {
                    Some(d) => events.push(Event::Received(token, d)),
                    None => events.push(Event::Failed(
                        token,
                        io::Error::from(io::ErrorKind::InvalidData),
                    )),
                }
                if !more {
                    self.arm_recv(token);
                }
            }
            0 => events.push(Event::Eof(token)),
            n if -n == libc::ENOBUFS => {
                // Ring full: back-pressure. The data waits in the socket.
                events.push(Event::Starved);
                self.starved.push_back(token);
            }
            n if -n == libc::ECANCELED => {}
            n => events.push(Event::Failed(token, io::Error::from_raw_os_error(-n))),
        }
    }

    fn on_accept(&mut self, index: usize, res: i32, more: bool, events: &mut Vec<Event>) {
        if !more {
            self.in_flight -= 1;
            if let Some(a) = self.accept_armed.get_mut(index) {
                *a = false;
            }
        }
        if res >= 0 {
            // SAFETY: a successful accept completion's result is a new descriptor we now own.
            let socket = unsafe { OwnedFd::from_raw_fd(res) };
            events.push(Event::Accepted {
                listener: index,
                socket,
                peer: None,
            });
            return;
        }
        match -res {
            libc::ECANCELED => {}
            libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EAGAIN => {
                if !more && !self.finishing {
                    self.want_accept.push(index);
                }
            }
            e => events.push(Event::AcceptFailed {
                listener: index,
                error: io::Error::from_raw_os_error(e),
            }),
        }
    }

    fn take_completions(&mut self) {
        self.ring.completions(&mut self.pending, MAX_COMPLETIONS);
    }
}

impl Backend for Uring {
    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        self.wake.waker()
    }

    fn listen(&mut self, listener: OwnedFd) -> io::Result<usize> {
        // Blocking: io_uring waits for readiness itself (see `set_blocking`).
        socket::set_blocking(&listener)?;
        self.listeners.push(listener);
        self.accept_armed.push(false);
        Ok(self.listeners.len() - 1)
    }

    fn accept(&mut self, listener: usize) {
        if listener < self.listeners.len() && !self.finishing {
            self.want_accept.push(listener);
        }
    }

    fn watch_datagrams(&mut self, socket: &OwnedFd) -> io::Result<()> {
        // Readiness by a multishot poll; the core reads with `recvmmsg` itself (a batch per
        // system call, as the ring would not do better for many small datagrams).
        self.datagrams = Some(socket.as_raw_fd());
        Ok(())
    }

    fn stop_accepting(&mut self) {
        self.want_accept.clear();
        for i in 0..self.listeners.len() {
            if self.accept_armed[i] {
                self.ring
                    .cancel(user_data(Op::Accept, i as u64), user_data(Op::Cancel, 0));
            }
        }
    }

    fn add(&mut self, token: Token, socket: &OwnedFd) -> io::Result<()> {
        socket::set_blocking(socket)?;
        let i = slot_of(token) as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, UConn::default);
        }
        self.conns[i] = UConn {
            ops: OpState::new(generation_of(token)),
            fd: socket.as_raw_fd(),
        };
        self.arm_recv(token);
        Ok(())
    }

    fn recv(&mut self, _: &OwnedFd, _: &mut BytesMut, _: usize) -> io::Result<usize> {
        // Completion: received bytes arrive as events.
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    fn pause(&mut self, token: Token) {
        let Some(c) = self.conn(token) else {
            return;
        };
        c.ops.set(PAUSED, true);
        if c.ops.has(RECV_ARMED) {
            self.ring
                .cancel(user_data(Op::Recv, token), user_data(Op::Cancel, 0));
        }
    }

    fn send(&mut self, token: Token, _socket: &OwnedFd, w: &mut WriteBuf) -> Sent {
        let Some(c) = self.conn(token) else {
            return Sent::Done(Err(io::Error::from(io::ErrorKind::NotConnected)));
        };
        if w.slices.is_empty() {
            return Sent::Done(Ok(0));
        }
        debug_assert!(!c.ops.has(SEND_IN_FLIGHT), "one send in flight per session");
        c.ops.set(SEND_IN_FLIGHT, true);
        let fd = c.fd;
        w.os.0.msg_iov = w.slices.as_mut_ptr();
        w.os.0.msg_iovlen = w.slices.len().min(socket::IOV_MAX);
        // SAFETY: `w` is boxed by the core and kept, untouched, in the connection's `inflight`
        // until this send's completion is reported (`Conn`'s invariant), so the msghdr, the
        // slices and the cork stay put; the buffers the slices point into are held by the
        // session's queued pieces, released only with that completion's byte count or when
        // this backend releases the token, after the completion.
        unsafe {
            self.ring
                .send_msg(fd, &raw const w.os.0, user_data(Op::Send, token))
        };
        self.in_flight += 1;
        Sent::Pending
    }

    fn sends_inline(&self) -> bool {
        false
    }

    fn close(&mut self, token: Token, _socket: &OwnedFd) -> Closing {
        let Some(c) = self.conn(token) else {
            return Closing::Now;
        };
        c.ops.set(CLOSED, true);
        let (recv, send) = (c.ops.has(RECV_ARMED), c.ops.has(SEND_IN_FLIGHT));
        if recv {
            self.ring
                .cancel(user_data(Op::Recv, token), user_data(Op::Cancel, 0));
        }
        if send {
            self.ring
                .cancel(user_data(Op::Send, token), user_data(Op::Cancel, 0));
        }
        if recv || send {
            Closing::Later
        } else {
            self.conns[slot_of(token) as usize] = UConn::default();
            Closing::Now
        }
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        // Completions come as the kernel posts them: a receive costs no system call here,
        // and waiting for several would hold the waker's completion back with them.
        _defer_input: bool,
        events: &mut Vec<Event>,
    ) -> io::Result<()> {
        if !self.wake_armed && !self.finishing {
            self.ring
                .poll_multi(self.wake.raw(), user_data(Op::Wake, 0));
            self.in_flight += 1;
            self.wake_armed = true;
        }
        if let (Some(fd), false, false) = (self.datagrams, self.datagrams_armed, self.finishing) {
            self.ring.poll_multi(fd, user_data(Op::Datagrams, 0));
            self.in_flight += 1;
            self.datagrams_armed = true;
        }
        for l in std::mem::take(&mut self.want_accept) {
            if !self.accept_armed[l] {
                self.accept_armed[l] = true;
                let fd = self.listeners[l].as_raw_fd();
                self.ring.accept_multi(fd, user_data(Op::Accept, l as u64));
                self.in_flight += 1;
            }
        }
        let wait = if self.pending.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let result = match wait {
            Some(d) if d.is_zero() => self.ring.submit(None),
            Some(d) => self.ring.submit(Some(d)),
            // No deadline: wait for a completion (at most a long while).
            None => self.ring.submit(Some(Duration::from_secs(3600))),
        };
        self.take_completions();
        self.translate(events);
        let returned = self.ring.recycle(self.starved.len());
        for _ in 0..returned.min(self.starved.len()) {
            if let Some(token) = self.starved.pop_front() {
                self.arm_recv(token);
            }
        }
        result
    }

    fn drain_sends(&mut self, events: &mut Vec<Event>) -> usize {
        if let Err(e) = self.ring.submit(None) {
            tracing::debug!(error = %e, "mid-turn submit failed");
        }
        self.take_completions();
        self.translate(events)
    }

    fn finish(&mut self) {
        self.finishing = true;
        self.stop_accepting();
        if self.wake_armed {
            self.ring
                .cancel(user_data(Op::Wake, 0), user_data(Op::Cancel, 0));
        }
        if self.datagrams_armed {
            self.ring
                .cancel(user_data(Op::Datagrams, 0), user_data(Op::Cancel, 0));
        }
    }

    fn busy(&self) -> bool {
        self.in_flight > 0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_connection_s_operations_take_eight_bytes() {
        assert_eq!(std::mem::size_of::<super::UConn>(), 8);
    }
}
