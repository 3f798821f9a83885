//! [`Session`]: the handle applications hold for one connection.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::local;
use super::reason::CloseReason;
use super::shared::{Refused, SendError, SessionId, SessionShared};
use crate::buffer::SendBuffer;
use crate::packet::PacketError;

/// A handle to one connection, cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<SessionShared>,
}

impl Session {
    /// This session's id.
    #[inline]
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The index of the worker that owns this session (from 0): its callbacks and that
    /// worker's [`Handler::on_tick`](crate::Handler::on_tick) run on one thread, and sends
    /// made there reach it without any hand-off.
    pub fn worker(&self) -> usize {
        self.shared.worker as usize
    }

    /// Queues one buffer. Sent from the session's own worker, this costs no lock and no
    /// atomic operation; everything queued during a worker's turn leaves in one write.
    ///
    /// # Errors
    /// The session has ended, or queuing would take it above its queued-bytes limit (it is
    /// then being closed as a slow consumer): the buffer comes back in the error.
    #[inline]
    pub fn send(&self, buf: SendBuffer) -> Result<(), SendError> {
        let buf = match local::send(&self.shared, buf) {
            Ok(done) => return done,
            Err(buf) => buf,
        };
        let buf = match local::send_remote(&self.shared, buf) {
            Ok(done) => return done,
            Err(buf) => buf,
        };
        let len = buf.len();
        let mut slot = Some(buf);
        let queued = self
            .shared
            .push_foreign(std::iter::from_fn(|| slot.take()), len);
        queued.map_err(|reason| SendError {
            reason,
            // A refused push consumes nothing: the buffer is still here.
            buffer: slot
                .take()
                .unwrap_or_else(|| SendBuffer::copy_from_slice(&[])),
        })
    }

    /// Queues every buffer of `bufs` back to back (no other sender's buffer lands between
    /// them) and leaves `bufs` empty, its capacity kept for reuse: a game loop that gathers a
    /// player's messages during a tick hands them over in one call.
    ///
    /// # Errors
    /// As [`send`](Self::send); the buffers not queued are left in `bufs`.
    pub fn send_batch(&self, bufs: &mut Vec<SendBuffer>) -> Result<(), Refused> {
        if bufs.is_empty() {
            return Ok(());
        }
        if let Some(done) = local::send_batch(&self.shared, bufs) {
            return done;
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        // From another worker: one at a time into its batch (kept contiguous: the batch is
        // posted whole).
        if local::is_worker_thread() {
            for b in bufs.drain(..) {
                if let Err(e) = self.send(b) {
                    return Err(e.reason);
                }
            }
            return Ok(());
        }
        self.shared.push_foreign(bufs.drain(..), len)
    }

    /// Opens the session's unreliable channel ([`crate::datagram`]): the [`Offer`](crate::datagram::Offer)
    /// to send its client over the stream. Called again, gives the same offer.
    ///
    /// # Errors
    /// Off the session's worker (call it from the handler), on an engine without
    /// [`Engine::listen_datagrams`](crate::Engine::listen_datagrams), or on a closed session.
    pub fn open_datagrams(&self) -> Result<crate::datagram::Offer, crate::datagram::DatagramError> {
        local::open_datagrams(&self.shared)
    }

    /// Queues `payload` (whole frames) as one datagram to the session's client, sent with the
    /// worker's other datagrams at the end of the turn. Lossy by contract: a datagram the
    /// kernel will not take is dropped and counted.
    ///
    /// # Errors
    /// [`DatagramError`](crate::datagram::DatagramError): over the payload limit (never
    /// fragmented), no datagram from the client yet (its address is unknown), off the
    /// session's worker, or no channel.
    pub fn send_datagram(&self, payload: &[u8]) -> Result<(), crate::datagram::DatagramError> {
        local::send_datagram(&self.shared, payload)
    }

    /// Queues `payload` as one datagram to each of `sessions` owned by this worker whose
    /// channel is bound, the payload copied once; returns how many were queued. A snapshot
    /// to a neighbourhood goes out in `sendmmsg` batches.
    ///
    /// # Errors
    /// As [`send_datagram`](Self::send_datagram), for the call as a whole.
    pub fn send_datagram_to_all<'a>(
        sessions: impl IntoIterator<Item = &'a Session>,
        payload: &[u8],
    ) -> Result<usize, crate::datagram::DatagramError> {
        local::send_datagram_to_all(sessions.into_iter().map(|s| &s.shared), payload)
    }

    /// Asks the owning worker to close this session. Frames already received but not yet
    /// delivered are dropped, and so are queued sends. Idempotent.
    pub fn close(&self, reason: &'static str) {
        self.shared.close_with(CloseReason::Local(reason));
    }

    /// Closes this session because one of its frames was not a valid packet (a
    /// [`Router`](crate::packet::Router)'s error, say): logged at info, and passed to
    /// `on_disconnect` as [`CloseReason::Packet`].
    pub fn close_for_packet(&self, error: PacketError) {
        tracing::info!(session = %self.id(), %error, "bad packet, closing");
        self.shared.close_with(CloseReason::Packet(error));
    }

    /// True once a close was requested or performed.
    pub fn is_closing(&self) -> bool {
        self.shared.is_closing()
    }

    /// Bytes queued on this session and not yet written, as of its worker's last write (plus
    /// what other threads have queued since).
    pub fn queued_bytes(&self) -> usize {
        let s = &self.shared;
        s.held.load(Ordering::Relaxed) as usize + s.foreign().map_or(0, |q| q.queued_bytes())
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .finish()
    }
}

impl PartialEq for Session {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Session {}

impl std::hash::Hash for Session {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.shared.id.hash(state);
    }
}
