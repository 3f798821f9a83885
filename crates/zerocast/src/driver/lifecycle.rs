//! A session's life on its worker: admitted and registered, fed from other threads, closed
//! (with a farewell frame when the handler has one), and released once the backend is done
//! with its socket.

use std::net::SocketAddr;

use super::conn::Conn;
use super::core::Core;
use super::slab::{generation_of, slot_of};
use super::{Backend, Closing, Token};
use crate::buffer::SendBuffer;
use crate::config::Transport;
use crate::conn::ws::WsConn;
use crate::session::{self, Batch, CloseReason, Session};
use crate::sys::{self, Sock};

impl<B: Backend> Core<B> {
    /// A connection came in: counted, admitted under the cap, and registered.
    pub(super) fn on_accepted(&mut self, sock: Sock, peer: Option<SocketAddr>, t: Transport) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.m.accepted.add(1);
        if !self.ctx.admit() {
            self.m.rejected.add(1);
            tracing::debug!(reason = %CloseReason::TooManyConnections, "connection refused");
            return;
        }
        if let Err(e) = sys::socket::set_nodelay(&sock) {
            tracing::debug!(error = %e, "TCP_NODELAY failed");
        }
        // A peer that already reset has no address to ask for: it is served (and closed by
        // its first receive) as the unspecified address rather than dropped unseen.
        let peer = peer
            .or_else(|| sys::socket::peer_addr(&sock).ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let session = self.ctx.new_session(peer, &self.shared);
        let ws = (t == Transport::WebSocket).then(|| Box::new(WsConn::server()));
        self.register_as(sock, session, true, ws, t == Transport::Both);
    }

    /// Takes a socket for `session`: a slot, the backend, `on_connect`, the registry.
    pub(super) fn register(
        &mut self,
        sock: Sock,
        session: Session,
        accepted: bool,
        ws: Option<Box<WsConn>>,
    ) {
        self.register_as(sock, session, accepted, ws, false);
    }

    fn register_as(
        &mut self,
        sock: Sock,
        session: Session,
        accepted: bool,
        ws: Option<Box<WsConn>>,
        sniff: bool,
    ) {
        if let Some(bytes) = self.ctx.config.send_buffer {
            if let Err(e) = sys::socket::set_send_buffer(&sock, bytes) {
                tracing::debug!(error = %e, "SO_SNDBUF failed");
            }
        }
        let now = self.now_ms;
        let token = self.conns.insert_with(|token| {
            session
                .shared
                .token
                .store(token, std::sync::atomic::Ordering::Relaxed);
            Conn::new(sock, session.clone(), accepted, now, ws, sniff)
        });
        session::for_outbox(|o| o.open(slot_of(token), generation_of(token)));
        let added = match self.conns.get_mut(token) {
            Some(c) => self.b.add(token, &c.sock),
            None => return,
        };
        if let Err(e) = added {
            tracing::warn!(error = %e, "cannot serve connection");
            if accepted {
                self.ctx.release();
            }
            session::for_outbox(|o| o.close(slot_of(token)));
            self.conns.remove(token);
            session.shared.retire();
            return;
        }
        self.open += 1;
        self.m.connections_open.set(self.open as u64);
        tracing::trace!(session = %session.id(), peer = %session.peer_addr(), "session opened");
        if let Err(reason) = self.app.connect(slot_of(token), &session) {
            return self.close(token, reason);
        }
        self.ctx.registry.insert(session);
        // Sends made before the session reached its worker wait in its own queue.
        self.take_foreign(token);
        // A WebSocket client's upgrade request goes at once.
        if self.conns.get_mut(token).is_some_and(|c| c.is_ws()) {
            self.flush(token);
        }
    }

    /// Moves what other threads queued on the session (its own queue) into the worker's
    /// output.
    pub(super) fn take_foreign(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let shared = conn.session.shared.clone();
        let Some(q) = shared.foreign() else {
            return;
        };
        // The scratch deque is swapped with the session's (both keep their capacity), so taking
        // allocates nothing in steady state.
        let mut taken = std::mem::take(&mut self.taken);
        let mut over = false;
        loop {
            q.take(&mut taken);
            over |= session::for_outbox(|o| {
                o.push_owned(slot_of(token), taken.drain(..), shared.limit())
                    .is_err()
            });
            if !q.finish() {
                break;
            }
        }
        self.taken = taken;
        if over {
            self.close(token, CloseReason::SlowConsumer);
        }
    }

    /// Queues a batch another worker sent; sessions it takes above their limit are closed.
    pub(super) fn deliver_batch(&mut self, batch: Batch) {
        let conns = &self.conns;
        let mut over = Vec::new();
        session::for_outbox(|o| {
            o.deliver(
                batch,
                |token| {
                    let c = conns.get(token)?;
                    (!c.closed).then(|| (slot_of(token), c.session.shared.limit()))
                },
                &mut over,
            )
        });
        for slot in over {
            if let Some(token) = self.conns.token_at(slot) {
                self.close(token, CloseReason::SlowConsumer);
            }
        }
    }

    /// Stops reading from the session and closes it with `reason` once everything queued on
    /// it has been written.
    pub(super) fn close_after_flush(&mut self, token: Token, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.closed {
            return;
        }
        c.eof = true;
        c.rx.reset();
        c.set_after_flush(reason, false);
        self.b.pause(token);
        self.flush(token);
    }

    /// Closes the session now. If the reason deserves it and the handler has a farewell
    /// frame, the frame is queued first and the close happens once it is written (or at once
    /// if the socket is full). A WebSocket session is sent a close frame with the status code
    /// for the reason (after the farewell), or the refusal of its handshake.
    pub(super) fn close(&mut self, token: Token, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.closed {
            return;
        }
        let transport = c.is_ws() && reason.is_websocket();
        if !c.farewell && (reason.deserves_farewell() || transport) {
            c.farewell = true;
            if let Some(ws) = c.ws_mut() {
                ws.close_with(reason.close_code(), &reason.to_string());
            }
            let buf = if reason.deserves_farewell() {
                self.app.farewell(&c.session, &reason)
            } else {
                None
            };
            if buf.is_some() || c.is_ws() {
                return self.say_farewell(token, buf, reason);
            }
        }
        self.close_now(token, reason);
    }

    /// Queues the farewell frame, if there is one, and closes once it (and a WebSocket
    /// session's close frame) is written.
    fn say_farewell(&mut self, token: Token, buf: Option<SendBuffer>, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.eof = true;
        c.rx.reset();
        c.set_after_flush(reason, true);
        if let Some(buf) = buf {
            // Past the limits: it is the last thing this session will be sent.
            let queued = session::for_outbox(|o| o.push_owned(slot_of(token), [buf], usize::MAX));
            debug_assert!(queued.is_ok());
            self.m.farewells.add(1);
        }
        self.b.pause(token);
        self.flush(token);
    }

    /// Closes now: counts and logs the reason, retires the session (later sends are
    /// refused, it leaves its groups), stops the backend's operations, tells the handler,
    /// and leaves the registry. The slot is freed once the backend releases the token.
    pub(super) fn close_now(&mut self, token: Token, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.closed {
            return;
        }
        c.closed = true;
        let session = c.session.clone();
        let accepted = c.timing.accepted();
        let in_flight = c.inflight.is_some();
        let closing = self.b.close(token, &c.sock);
        self.count_close(&session, &reason, accepted);
        session.shared.retire();
        if in_flight {
            session::for_outbox(|o| o.shut(slot_of(token)));
        } else {
            // Nothing the kernel reads refers to the queue any more.
            session::for_outbox(|o| o.close(slot_of(token)));
        }
        if let Closing::Now = closing {
            self.release(token);
        }
        self.m.closed.add(1);
        self.app.disconnect(slot_of(token), &session, &reason);
        self.ctx.registry.remove(session.id());
        // Last: whoever sees no session open sees every close counted and handled.
        self.open -= 1;
        self.m.connections_open.set(self.open as u64);
    }

    /// The backend is done with a closed token: its socket closes and its slot is free.
    pub(super) fn release(&mut self, token: Token) {
        if self.conns.get_mut(token).is_some_and(|c| c.closed) {
            session::for_outbox(|o| o.close(slot_of(token)));
            if let Some(c) = self.conns.remove(token) {
                if let Some(w) = c.inflight {
                    self.writes.push(w);
                }
            }
        }
    }

    /// Counts and logs why a session is closing. Called before its socket closes: a peer that
    /// sees the close sees it counted.
    fn count_close(&self, session: &Session, reason: &CloseReason, accepted: bool) {
        if accepted {
            self.ctx.release();
        }
        let m = &self.m;
        match reason {
            CloseReason::WebSocket(_) => {
                m.ws_errors.add(1);
                tracing::info!(session = %session.id(), peer = %session.peer_addr(), %reason, "session closed");
            }
            CloseReason::Handshake(_) => {
                m.ws_refused.add(1);
                tracing::info!(session = %session.id(), peer = %session.peer_addr(), %reason, "session closed");
            }
            CloseReason::Protocol(_) | CloseReason::Packet(_) => {
                m.protocol_errors.add(1);
                tracing::info!(session = %session.id(), peer = %session.peer_addr(), %reason, "session closed");
            }
            CloseReason::SlowConsumer => {
                m.slow_consumers.add(1);
                tracing::info!(session = %session.id(), %reason, "session closed");
            }
            CloseReason::FirstFrameTimeout | CloseReason::IdleTimeout => {
                m.timeouts.add(1);
                tracing::debug!(session = %session.id(), %reason, "session closed");
            }
            CloseReason::Io(_) | CloseReason::HandlerPanic(_) => {
                tracing::info!(session = %session.id(), %reason, "session closed")
            }
            _ => tracing::debug!(session = %session.id(), %reason, "session closed"),
        }
    }
}
