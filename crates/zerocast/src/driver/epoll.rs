//! The readiness backend: one edge-triggered epoll instance per worker.
//!
//! Sockets are registered once for reading, writing and hang-up, edge-triggered. A readable
//! socket is reported and the core reads it (into memory the core chose) until it is drained;
//! a write is one `sendmsg` made at once; a socket that was full reports writable on its next
//! edge. Listeners are accepted from until `EAGAIN`; the worker's eventfd wakes it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::slab::RESERVED;
use super::{Backend, Closing, Event, Sent, Token, WriteBuf};
use crate::sys::{self, epoll};

const WAKER: u64 = u64::MAX;
/// The datagram socket.
const DATAGRAMS: u64 = u64::MAX - 1;
/// Listener `i` has token `LISTENERS - i`.
const LISTENERS: u64 = u64::MAX - 2;

pub(crate) struct Epoll {
    ep: epoll::Epoll,
    /// An epoll set holding only the waker: a wait that defers input sleeps on it.
    wake_only: epoll::Epoll,
    wake: sys::EventFd,
    listeners: Vec<OwnedFd>,
    /// Per listener: accepting (not paused after a failure, not stopped).
    accepting: Vec<bool>,
    /// Listeners to accept from at the start of the next wait (just added or resumed: their
    /// edge may have passed already).
    accept_now: Vec<usize>,
    raw: Vec<epoll::Event>,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        let ep = epoll::Epoll::new()?;
        let wake = sys::EventFd::new()?;
        ep.add(wake.raw(), epoll::READ, WAKER)?;
        // The eventfd's edge reaches both sets: a wake-up ends either wait, and the main set
        // still reports it (the waker is drained there).
        let wake_only = epoll::Epoll::new()?;
        wake_only.add(wake.raw(), epoll::READ, WAKER)?;
        Ok(Self {
            ep,
            wake_only,
            wake,
            listeners: Vec::new(),
            accepting: Vec::new(),
            accept_now: Vec::new(),
            raw: Vec::with_capacity(1024),
        })
    }

    fn accept_loop(&mut self, index: usize, events: &mut Vec<Event>) {
        if !self.accepting.get(index).copied().unwrap_or(false) {
            return;
        }
        let fd = self.listeners[index].as_raw_fd();
        loop {
            match sys::socket::accept(fd) {
                Ok((socket, peer)) => events.push(Event::Accepted {
                    listener: index,
                    socket,
                    peer: Some(peer),
                }),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => continue,
                    _ => {
                        // Out of descriptors or memory (or worse): the connection stays in the
                        // backlog, and retrying at once would spin. The core retries later.
                        self.accepting[index] = false;
                        events.push(Event::AcceptFailed {
                            listener: index,
                            error: e,
                        });
                        return;
                    }
                },
            }
        }
    }
}

impl Backend for Epoll {
    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        self.wake.waker()
    }

    fn listen(&mut self, listener: OwnedFd) -> io::Result<usize> {
        let i = self.listeners.len();
        self.ep
            .add(listener.as_raw_fd(), epoll::READ, LISTENERS - i as u64)?;
        self.listeners.push(listener);
        self.accepting.push(false);
        Ok(i)
    }

    fn accept(&mut self, listener: usize) {
        if let Some(a) = self.accepting.get_mut(listener) {
            *a = true;
            self.accept_now.push(listener);
        }
    }

    fn stop_accepting(&mut self) {
        // Closing a listener removes it from the epoll set.
        self.listeners.clear();
        self.accepting.clear();
        self.accept_now.clear();
    }

    fn watch_datagrams(&mut self, socket: &OwnedFd) -> io::Result<()> {
        self.ep.add(socket.as_raw_fd(), epoll::READ, DATAGRAMS)
    }

    fn add(&mut self, token: Token, socket: &OwnedFd) -> io::Result<()> {
        self.ep.add(socket.as_raw_fd(), epoll::CONN, token)
    }

    fn recv(&mut self, socket: &OwnedFd, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        sys::socket::recv(socket.as_raw_fd(), buf, max)
    }

    fn pause(&mut self, _token: Token) {
        // Readiness: the core simply stops reading.
    }

    fn send(&mut self, _token: Token, socket: &OwnedFd, w: &mut WriteBuf) -> Sent {
        if w.slices.is_empty() {
            return Sent::Done(Ok(0));
        }
        // SAFETY: every slice points into `w`'s cork or into a buffer the session's queued
        // pieces keep alive (`WriteBuf`'s invariant), and neither changes during this call.
        Sent::Done(unsafe { sys::socket::sendmsg(socket.as_raw_fd(), &w.slices) })
    }

    fn sends_inline(&self) -> bool {
        true
    }

    fn close(&mut self, _token: Token, _socket: &OwnedFd) -> Closing {
        // Closing the descriptor (the core drops it) removes it from the epoll set.
        Closing::Now
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        defer_input: bool,
        events: &mut Vec<Event>,
    ) -> io::Result<()> {
        let start = events.len();
        for l in std::mem::take(&mut self.accept_now) {
            self.accept_loop(l, events);
        }
        let mut timeout = if events.len() > start {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let mut raw = std::mem::take(&mut self.raw);
        if defer_input && timeout != Some(Duration::ZERO) {
            // Sleep until the deadline or a wake-up, then look at every socket at once.
            if let Err(e) = self.wake_only.wait(&mut raw, timeout) {
                self.raw = raw;
                return Err(e);
            }
            timeout = Some(Duration::ZERO);
        }
        let mut r = self.ep.wait(&mut raw, timeout);
        // Ready sockets beyond one batch would otherwise wait for the next deferred look.
        let mut rounds = 0;
        while defer_input && r.is_ok() && raw.len() == raw.capacity() && rounds < 64 {
            self.report(&raw, events);
            r = self.ep.wait(&mut raw, Some(Duration::ZERO));
            rounds += 1;
        }
        self.report(&raw, events);
        self.raw = raw;
        r
    }

    fn drain_sends(&mut self, _events: &mut Vec<Event>) -> usize {
        0 // every send finished when it was made
    }

    fn finish(&mut self) {
        self.stop_accepting();
    }

    fn busy(&self) -> bool {
        false
    }
}

impl Epoll {
    /// Translates one batch of readiness into events.
    fn report(&mut self, raw: &[epoll::Event], events: &mut Vec<Event>) {
        const READ: u32 =
            (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        const WRITE: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        const HUP: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        for ev in raw {
            let (token, bits) = (ev.u64, ev.events);
            if token == WAKER {
                // Consumed before the core clears its wake-up flag (see `WorkerShared`).
                self.wake.drain();
                events.push(Event::Woken);
            } else if token == DATAGRAMS {
                events.push(Event::Datagrams);
            } else if token >= RESERVED {
                self.accept_loop((LISTENERS - token) as usize, events);
            } else {
                if bits & READ != 0 {
                    events.push(Event::Readable {
                        token,
                        hup: bits & HUP != 0,
                    });
                }
                if bits & WRITE != 0 {
                    events.push(Event::Writable(token));
                }
            }
        }
    }
}
