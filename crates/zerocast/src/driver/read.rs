//! The read path: bytes in from the backend, frames out to the handler.

use std::io;

use bytes::{Bytes, BytesMut};

use super::core::Core;
use super::slab::slot_of;
use super::{Backend, Token};
use crate::conn::recv::Cut;
use crate::conn::ws::{WsConn, WsFail};
use crate::handler::Frame;
use crate::session::{self, CloseReason};

/// A read into the receive chunk needs at least this much room.
const MIN_READ: usize = 4096;

/// What one read did.
pub(super) enum Read {
    /// More data may be waiting.
    More,
    /// The socket is drained for now, or the session is done reading.
    Drained,
    /// The peer closed its side.
    Eof,
}

impl<B: Backend> Core<B> {
    /// A readiness backend's socket is readable: read until it is drained, the session ends,
    /// or the read budget is spent (then it is read again next turn: one busy peer cannot
    /// starve the others).
    pub(super) fn on_readable(&mut self, token: Token, hup: bool) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        conn.hup |= hup;
        let mark = self.dirty_mark();
        for _ in 0..self.ctx.config.read_budget {
            let read = self.read_once(token);
            self.bound_turn_output();
            match read {
                Ok(Read::More) => continue,
                Ok(Read::Drained) => return self.flush_replies(token, mark),
                Ok(Read::Eof) => return self.close_after_flush(token, CloseReason::PeerClosed),
                Err(reason) => return self.close(token, reason),
            }
        }
        self.flush_replies(token, mark);
        self.again.push(token);
    }

    /// One read, into the worker's receive chunk or behind a split frame's start.
    fn read_once(&mut self, token: Token) -> Result<Read, CloseReason> {
        let Some(conn) = self.conns.get_mut(token) else {
            return Ok(Read::Drained);
        };
        if conn.eof || conn.closed || conn.session.is_closing() {
            return Ok(Read::Drained);
        }
        // A split frame's rest is read straight behind its start, unless a transport filters
        // the bytes first.
        let (result, asked, data) = if conn.rx.is_split() && !conn.is_ws() {
            let (buf, room) = conn.rx.continuation();
            (self.b.recv(&conn.sock, buf, room), room, None)
        } else {
            let size = self.recv.size().max(MIN_READ);
            let (mem, fresh) = self.recv.spare(MIN_READ);
            if fresh {
                self.m.recv_chunks_allocated.add(1);
            }
            let asked = mem.capacity().min(size);
            let r = self.b.recv(&conn.sock, mem, asked);
            (r, asked, Some(mem.split()))
        };
        let n = match result {
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Read::More),
            Err(e) => return Err(CloseReason::from_io(&e)),
        };
        let hup = conn.hup;
        self.m.bytes_in.add(n as u64);
        self.m.reads.add(1);
        let data = match data {
            None => Bytes::new(),
            Some(chunk) => self.transport_in(token, chunk)?,
        };
        self.deliver(token, &data)?;
        // A short read drained the socket: new data raises a new edge. Not so for an end of
        // stream that arrived with the data (see `hup`).
        Ok(if n < asked && !hup {
            Read::Drained
        } else {
            Read::More
        })
    }

    /// A completion backend received `data`.
    pub(super) fn on_received(&mut self, token: Token, data: Bytes) {
        match self.conns.get_mut(token) {
            Some(c) if !c.closed && !c.eof => {}
            _ => return,
        }
        self.m.bytes_in.add(data.len() as u64);
        self.m.reads.add(1);
        let mark = self.dirty_mark();
        let data = match self.conns.get_mut(token) {
            // The kernel's provided buffer is shared with the ring: a WebSocket connection's
            // bytes are copied once into memory of its own, where they are unmasked.
            Some(c) if c.is_ws() || c.sniff => {
                match self.transport_in(token, BytesMut::from(&data[..])) {
                    Ok(d) => d,
                    Err(reason) => return self.close(token, reason),
                }
            }
            _ => data,
        };
        if let Err(reason) = self.deliver(token, &data) {
            return self.close(token, reason);
        }
        drop(data);
        self.bound_turn_output();
        self.flush_replies(token, mark);
    }

    /// What the connection's transport makes of received bytes: raw TCP hands them on as
    /// they are; WebSocket answers the handshake and control frames and hands on the
    /// protocol's bytes, unmasked in place. A connection on a listener serving both is
    /// decided by its first bytes.
    fn transport_in(&mut self, token: Token, chunk: BytesMut) -> Result<Bytes, CloseReason> {
        let Some(conn) = self.conns.get_mut(token) else {
            return Ok(Bytes::new());
        };
        if std::mem::take(&mut conn.sniff) && looks_like_upgrade(&chunk) {
            conn.set_ws(WsConn::server());
        }
        let Some(ws) = conn.ws_mut() else {
            return Ok(chunk.freeze());
        };
        let input = ws.receive(chunk);
        let answer = !ws.idle();
        let input = match input {
            Ok(input) => input,
            Err(WsFail::Handshake(e)) => {
                // Nothing but the refusal is written: what was queued is dropped, and no
                // more is taken.
                session::for_outbox(|o| o.close(slot_of(token)));
                return Err(CloseReason::Handshake(e));
            }
            Err(WsFail::Frame(e)) => return Err(CloseReason::WebSocket(e)),
        };
        if input.opened {
            self.m.ws_opened.add(1);
        }
        // The handshake's answer, pongs; and, once open, what was held for the handshake.
        if answer || input.opened {
            self.flush(token);
        }
        if input.peer_closed {
            // Answered (the close frame is queued): nothing more is read.
            self.close_after_flush(token, CloseReason::PeerClosed);
        }
        Ok(input.stream)
    }

    /// Cuts `data` (and what a split frame holds) into frames and hands each to the handler.
    fn deliver(&mut self, token: Token, data: &Bytes) -> Result<(), CloseReason> {
        let Self {
            conns,
            app,
            ctx,
            m,
            now_ms,
            ..
        } = self;
        let Some(conn) = conns.get_mut(token) else {
            return Ok(());
        };
        let slot = slot_of(token);
        let mut pos = 0;
        let mut delivered = 0;
        while !conn.session.is_closing() {
            let cut = conn
                .rx
                .next(&*ctx.decoder, data, &mut pos)
                .map_err(CloseReason::Protocol)?;
            let result = match cut {
                None => break,
                Some(Cut::InPlace { id, header, range }) => {
                    app.frame(slot, &conn.session, Frame::new(id, data, range, header))
                }
                Some(Cut::Joined { id, header, bytes }) => {
                    let len = bytes.len();
                    app.frame(slot, &conn.session, Frame::new(id, &bytes, 0..len, header))
                }
            };
            m.frames_in.add(1);
            delivered += 1;
            result?;
        }
        conn.timing.frames(delivered, *now_ms);
        Ok(())
    }
}

/// The first bytes of a connection are (the start of) `GET `: an HTTP request.
fn looks_like_upgrade(first: &[u8]) -> bool {
    let n = first.len().min(4);
    n > 0 && first[..n] == b"GET "[..n]
}
