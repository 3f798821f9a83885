//! The read path: bytes in from the backend, frames out to the handler.

use std::io;

use bytes::Bytes;

use super::core::Core;
use super::slab::slot_of;
use super::{Backend, Token};
use crate::conn::recv::Cut;
use crate::handler::Frame;
use crate::session::CloseReason;

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
        let (result, asked, data) = if conn.rx.is_split() {
            let (buf, room) = conn.rx.continuation();
            (self.b.recv(&conn.sock, buf, room), room, Bytes::new())
        } else {
            let size = self.recv.size().max(MIN_READ);
            let (mem, fresh) = self.recv.spare(MIN_READ);
            if fresh {
                self.m.recv_chunks_allocated.add(1);
            }
            let asked = mem.capacity().min(size);
            let r = self.b.recv(&conn.sock, mem, asked);
            (r, asked, mem.split().freeze())
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
        if let Err(reason) = self.deliver(token, &data) {
            return self.close(token, reason);
        }
        drop(data);
        self.bound_turn_output();
        self.flush_replies(token, mark);
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
