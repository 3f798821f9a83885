//! The worker's datagram socket in its core: batches received with `recvmmsg` into the
//! worker's receive chunks, checked by the session's channel, their frames handed to the
//! handler in place; the turn's datagrams sent with `sendmmsg`.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;

use super::core::Core;
use super::{Backend, Event};
use crate::datagram::channel::Endpoint;
use crate::frame::{checked, Decoded};
use crate::handler::Frame;
use crate::session;
use crate::sys::udp::{self, RecvBatch, SendBatch, Udp, RECV_BATCH, RECV_SLOT};
use crate::sys::Sock;

/// `recvmmsg` batches one turn reads at most; a flood waits for the next turn, others first.
const BATCHES_PER_TURN: usize = 16;

impl<B: Backend> Core<B> {
    /// Starts serving datagrams on `fd`.
    pub(super) fn start_datagrams(&mut self, fd: Sock) {
        let port = match udp::local_addr(&fd) {
            Ok(a) => a.port(),
            Err(e) => return tracing::error!(error = %e, "datagram socket has no address"),
        };
        if let Err(e) = self.b.watch_datagrams(&fd) {
            return tracing::error!(error = %e, "cannot watch the datagram socket");
        }
        let rate = self.ctx.config.datagram_rate;
        session::for_outbox(|o| o.datagrams = Some(Box::new(Endpoint::new(port, rate))));
        self.udp = Some(Box::new(Udp {
            fd,
            recv: RecvBatch::default(),
            send: SendBatch::default(),
            got: Vec::with_capacity(RECV_BATCH),
        }));
        // Whatever arrived before the watch began raises no edge.
        self.on_datagrams();
    }

    /// The datagram socket is readable: reads batches until it is drained or the turn's
    /// share is spent (then it goes on next turn).
    pub(super) fn on_datagrams(&mut self) {
        let Some(mut u) = self.udp.take() else {
            return;
        };
        let mut drained = false;
        for _ in 0..BATCHES_PER_TURN {
            let (mem, fresh) = self.recv.spare(RECV_BATCH * RECV_SLOT);
            if fresh {
                self.m.recv_chunks_allocated.add(1);
            }
            match udp::recv_batch(&u.fd, mem, &mut u.recv, &mut u.got) {
                Ok(n) => {
                    let chunk = mem.split().freeze();
                    self.m.datagram_reads.add(1);
                    self.take_datagrams(&chunk, &u.got);
                    if n < RECV_BATCH {
                        drained = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "recvmmsg failed");
                    drained = true;
                    break;
                }
            }
        }
        if !drained {
            self.events.push_back(Event::Datagrams);
        }
        self.udp = Some(u);
        self.count_datagrams();
    }

    /// Checks each received datagram and hands its frames to its session's handler.
    fn take_datagrams(&mut self, chunk: &Bytes, got: &[(usize, usize, SocketAddr)]) {
        let now = self.now_ms;
        for &(off, len, from) in got {
            let d = &chunk[off..off + len];
            let Some((slot, range)) =
                session::for_outbox(|o| o.datagrams.as_mut()?.receive(d, from, now))
            else {
                continue;
            };
            let Some(token) = self.conns.token_at(slot) else {
                continue;
            };
            let Self {
                conns, app, ctx, m, ..
            } = self;
            let Some(conn) = conns.get_mut(token) else {
                continue;
            };
            let (mut pos, end) = (off + range.start, off + range.end);
            let mut result = Ok(());
            let mut delivered = 0;
            while pos < end && !conn.closed && !conn.session.is_closing() && result.is_ok() {
                let buf = &chunk[pos..end];
                match ctx.decoder.decode(buf).and_then(|d| checked(d, buf.len())) {
                    Ok(Decoded::Frame { len, header, id }) => {
                        let frame = Frame::new(id, chunk, pos..pos + len, header).datagram();
                        result = app.frame(slot, &conn.session, frame);
                        m.frames_in.add(1);
                        delivered += 1;
                        pos += len;
                    }
                    // A datagram carries whole frames: the rest of this one is dropped.
                    Ok(Decoded::NeedMore { .. }) | Err(_) => {
                        session::for_outbox(|o| {
                            if let Some(e) = o.datagrams.as_mut() {
                                e.counts.malformed += 1;
                            }
                        });
                        break;
                    }
                }
            }
            conn.timing.frames(delivered, now);
            if let Err(reason) = result {
                self.close(token, reason);
            }
        }
    }

    /// Sends the datagrams this turn queued, in `sendmmsg` batches. What the kernel will not
    /// take now (its buffer full) is dropped and counted: the channel is lossy by contract.
    pub(super) fn send_datagrams(&mut self) {
        let Some(u) = self.udp.as_mut() else {
            return;
        };
        let m = &self.m;
        session::for_outbox(|o| {
            let Some(e) = o.datagrams.as_mut() else {
                return;
            };
            let (mut at, total) = (0, e.queued.len());
            while at < total {
                let msgs = e.queued[at..]
                    .iter()
                    .map(|q| (q.to, &q.seq, &e.arena[q.payload.clone()]));
                match udp::send_batch(&u.fd, msgs, &mut u.send) {
                    Ok(n) => {
                        m.datagram_writes.add(1);
                        m.datagrams_out.add(n as u64);
                        // None taken: the first one failed, and the next call says why.
                        at += n.max(usize::from(n == 0));
                        if n == 0 {
                            m.datagrams_dropped.add(1);
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        m.datagrams_dropped.add((total - at) as u64);
                        break;
                    }
                    Err(err) => {
                        // That datagram cannot go (its destination refused, say): the
                        // others still do.
                        tracing::debug!(error = %err, "a datagram was not sent");
                        m.datagrams_dropped.add(1);
                        at += 1;
                    }
                }
            }
            e.sent();
        });
    }

    /// The channels' counts, into the worker's counters.
    fn count_datagrams(&self) {
        let c = session::for_outbox(|o| o.datagrams.as_ref().map(|e| e.counts));
        if let Some(c) = c {
            let m = &self.m;
            m.datagrams_in.set(c.taken);
            m.datagrams_refused.set(c.malformed + c.unknown + c.forged);
            m.datagrams_stale.set(c.stale);
            m.datagrams_flood.set(c.flood);
            m.datagrams_rebound.set(c.rebound);
        }
    }
}
