//! A WebSocket connection's transport state, sans-IO: the opening handshake, client frames
//! filtered into the protocol stream in place, and how each write is framed.
//!
//! ```text
//!  received (one read)        [h|mask|payload a][h|mask|payload b][h|mask|pay..
//!  unmasked, compacted        [payload a payload b]               ..kept for the next read
//!                              '--> the protocol's frames are cut from here, in place
//!
//!  one write (server)         [binary header, 2-10 B][queued bytes as raw TCP would send]
//! ```
//!
//! A server write is one unfragmented binary frame around exactly the bytes the write would
//! have carried on raw TCP: a broadcast stays encoded once and every recipient, WebSocket or
//! not, is sent the same buffer. A write the kernel takes only in part leaves the rest of the
//! frame owed: the next write continues it without a header ([`WsConn::framing`]). Control
//! frames (pong, close) and the handshake answer wait for a frame boundary, then go first.
//!
//! The client role (the load generator and tests) sends the upgrade request, checks the
//! answer, and masks every payload with a key from its own generator.

use bytes::{Bytes, BytesMut};

use super::outq::{Framed, Framing, MakeHead, MAX_HEAD};
use crate::ws::frame::{self, CloseCode, Decoded, Decoder, Opcode, WsError};
use crate::ws::handshake::{self, HandshakeError};

/// Largest WebSocket message taken from a client: a frame is buffered whole before it is
/// unmasked, so this bounds what one connection can make the server hold.
pub(crate) const MAX_MESSAGE: usize = 256 * 1024;

/// Which side of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the upgrade request (server) or its answer (client): nothing queued goes
    /// out yet.
    Handshake,
    /// Messages flow.
    Open,
    /// A close frame is queued: what was queued before it still goes, then the close.
    Closing,
    /// The close frame is written (or the handshake refused): nothing more.
    Closed,
}

/// Why the connection must close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WsFail {
    /// The handshake was refused (the refusal is queued).
    Handshake(HandshakeError),
    /// A frame broke the protocol (the close frame is queued).
    Frame(WsError),
}

/// What one receive produced.
#[derive(Debug, Default)]
pub(crate) struct Input {
    /// The protocol's bytes, unmasked and contiguous.
    pub(crate) stream: Bytes,
    /// The handshake completed in this receive.
    pub(crate) opened: bool,
    /// The peer sent a close frame (answered: the connection closes once it is written).
    pub(crate) peer_closed: bool,
}

/// One connection's WebSocket state.
///
/// Invariants: `raw` holds whole transport frames (or the rest of one whose start was
/// written), and while `owed > 0` the write in progress is inside a data frame, so `control`
/// and `close` wait; `close`, once queued, is the last thing written.
pub(crate) struct WsConn {
    role: Role,
    phase: Phase,
    decoder: Decoder,
    /// Received bytes that are not yet a whole handshake or frame.
    partial: BytesMut,
    /// Transport bytes owed before any more payload.
    raw: Vec<u8>,
    /// Control frames waiting for a frame boundary.
    control: Vec<u8>,
    /// The close frame, waiting for everything queued before it.
    close: Option<Vec<u8>>,
    /// Payload bytes of the data frame being written that are not written yet.
    owed: usize,
    /// Payload bytes of that frame already written (where the client's mask stands).
    done: usize,
    /// The client's masking key for the frame being written, and its generator's state.
    key: [u8; 4],
    rng: u64,
    /// The client's `Sec-WebSocket-Key`.
    nonce: String,
}

impl WsConn {
    /// A server connection: waits for an upgrade request.
    pub(crate) fn server() -> Self {
        Self::new(Role::Server)
    }

    /// A client connection: the upgrade request for `host` and `path` goes first.
    pub(crate) fn client(host: &str, path: &str) -> Self {
        let mut c = Self::new(Role::Client);
        let mut nonce = [0u8; 16];
        for b in &mut nonce {
            *b = c.next_random() as u8;
        }
        c.nonce = handshake::encode_key(&nonce);
        c.raw = handshake::request(host, path, &c.nonce);
        c
    }

    fn new(role: Role) -> Self {
        let decoder = match role {
            Role::Server => Decoder::new(MAX_MESSAGE),
            Role::Client => Decoder::from_server(usize::MAX >> 1),
        };
        Self {
            role,
            phase: Phase::Handshake,
            decoder,
            partial: BytesMut::new(),
            raw: Vec::new(),
            control: Vec::new(),
            close: None,
            owed: 0,
            done: 0,
            key: [0; 4],
            // Seeded from the standard library's per-process random keys: masking keys are
            // not secrets, they only must not be predictable to a script (RFC 6455 §10.3).
            rng: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
                    | 1
            },
            nonce: String::new(),
        }
    }

    /// splitmix64.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True once the handshake is done and no close has begun.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Filters received bytes: the handshake consumed, control frames answered, data frames
    /// unmasked and compacted in place into the protocol's stream. An incomplete frame at the
    /// end is kept (copied, bounded by [`MAX_MESSAGE`]) for the next receive.
    ///
    /// # Errors
    /// The connection must close: the refusal or close frame is queued, and what came before
    /// the bad bytes is lost (a client that breaks the protocol gets nothing more processed).
    pub(crate) fn receive(&mut self, data: BytesMut) -> Result<Input, WsFail> {
        let own = !self.partial.is_empty();
        let mut buf = if own {
            let mut p = std::mem::take(&mut self.partial);
            p.extend_from_slice(&data);
            p
        } else {
            data
        };
        let mut input = Input::default();
        let mut pos = 0;
        if self.phase == Phase::Handshake {
            match self.handshake(&buf) {
                Ok(Some(len)) => {
                    pos = len;
                    self.phase = Phase::Open;
                    input.opened = true;
                }
                Ok(None) => {
                    // Copied unless already its own: a slow handshake must not pin a
                    // worker's receive chunk.
                    self.partial = if own { buf } else { BytesMut::from(&buf[..]) };
                    return Ok(input);
                }
                Err(e) => return Err(self.refuse(e)),
            }
        }
        let mut out = 0;
        while pos < buf.len() && self.phase == Phase::Open {
            let f = match self.decoder.decode(&mut buf[pos..]) {
                Ok(Decoded::Frame(f)) => f,
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => return Err(self.fail(e)),
            };
            let payload = pos + f.header..pos + f.total();
            match f.opcode {
                Opcode::Binary | Opcode::Continuation => {
                    buf.copy_within(payload.clone(), out);
                    out += payload.len();
                }
                Opcode::Ping => {
                    let pong = self.frame(Opcode::Pong, &buf[payload]);
                    self.control.extend(pong);
                }
                Opcode::Pong => {}
                Opcode::Close => {
                    // Answered with its status code (none if it had none), then closed.
                    let code = buf.get(payload.start..payload.start + 2).unwrap_or(&[]);
                    let answer = self.frame(Opcode::Close, code);
                    self.close = Some(answer);
                    self.phase = Phase::Closing;
                    input.peer_closed = true;
                }
                // The decoder refuses text.
                Opcode::Text => unreachable!("text frames are refused by the decoder"),
            }
            pos += f.total();
        }
        if pos < buf.len() && !input.peer_closed {
            self.partial = if own && out == 0 && pos == 0 {
                buf.split_off(0)
            } else {
                BytesMut::from(&buf[pos..])
            };
        }
        buf.truncate(out);
        input.stream = buf.freeze();
        Ok(input)
    }

    /// The server's or the client's side of the opening handshake: the length it took.
    fn handshake(&mut self, buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
        match self.role {
            Role::Server => Ok(handshake::parse(buf)?.map(|req| {
                self.raw.extend(handshake::accept(&req));
                req.len
            })),
            Role::Client => handshake::parse_answer(buf, &self.nonce),
        }
    }

    fn refuse(&mut self, e: HandshakeError) -> WsFail {
        if self.role == Role::Server {
            self.raw = handshake::refusal(&e);
        }
        self.phase = Phase::Closed;
        self.partial = BytesMut::new();
        WsFail::Handshake(e)
    }

    fn fail(&mut self, e: WsError) -> WsFail {
        self.close_with(e.close_code(), &e.to_string());
        self.partial = BytesMut::new();
        WsFail::Frame(e)
    }

    /// Queues the close frame (once): written after what is queued, the last frame sent.
    pub(crate) fn close_with(&mut self, code: CloseCode, reason: &str) {
        if self.close.is_none() && matches!(self.phase, Phase::Open | Phase::Closing) {
            let mut payload = code.code().to_be_bytes().to_vec();
            let mut cut = reason.len().min(123);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            payload.extend_from_slice(&reason.as_bytes()[..cut]);
            self.close = Some(self.frame(Opcode::Close, &payload));
        }
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
        }
    }

    /// A whole control frame from this side (masked for a client).
    fn frame(&mut self, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        match self.role {
            Role::Server => frame::server_frame(opcode, payload),
            Role::Client => {
                let key = (self.next_random() as u32).to_ne_bytes();
                frame::client_frame(opcode, true, payload, key)
            }
        }
    }

    /// Makes transport bytes ready to go: at a frame boundary, the waiting control frames,
    /// and, once nothing else is queued (`queue_empty`), the close frame. True if any are
    /// ready.
    pub(crate) fn ready(&mut self, queue_empty: bool) -> bool {
        if self.raw.is_empty() && self.owed == 0 {
            if !self.control.is_empty() {
                std::mem::swap(&mut self.raw, &mut self.control);
            } else if queue_empty {
                if let Some(close) = self.close.take() {
                    self.raw = close;
                    // Nothing follows a close frame.
                    self.phase = Phase::Closed;
                }
            }
        }
        !self.raw.is_empty()
    }

    /// True while nothing at all is left to write for the transport.
    pub(crate) fn idle(&self) -> bool {
        self.raw.is_empty() && self.control.is_empty() && self.close.is_none() && self.owed == 0
    }

    /// True if the queued bytes may not go out: before the handshake, after a close.
    pub(crate) fn holds_payload(&self) -> bool {
        matches!(self.phase, Phase::Handshake | Phase::Closed) && self.owed == 0
    }

    /// How the next write is framed; `run` builds it with the framing.
    pub(crate) fn framing<R>(&mut self, run: impl FnOnce(&Framing<'_>) -> R) -> R {
        let client = self.role == Role::Client;
        if client && self.owed == 0 {
            self.key = (self.next_random() as u32).to_ne_bytes();
        }
        let key = self.key;
        // Right-aligned (see `MakeHead`).
        let head = move |len: usize| {
            let mut h = [0u8; MAX_HEAD];
            let (b, n) = frame::header(Opcode::Binary, true, len);
            let m = if client { n + 4 } else { n };
            let at = MAX_HEAD - m;
            h[at..at + n].copy_from_slice(&b[..n]);
            if client {
                h[at + 1] |= 0x80;
                h[at + n..].copy_from_slice(&key);
            }
            (h, m)
        };
        let (limit, head): (usize, Option<&MakeHead>) = if self.owed > 0 {
            (self.owed, None)
        } else if !self.holds_payload() {
            (usize::MAX, Some(&head))
        } else {
            (0, None)
        };
        // The key as seen from where these payload bytes fall in their frame.
        let k = self.key;
        let r = if self.owed == 0 { 0 } else { self.done % 4 };
        let mask = client.then_some([k[r], k[(r + 1) % 4], k[(r + 2) % 4], k[(r + 3) % 4]]);
        run(&Framing {
            before: &self.raw,
            limit,
            head,
            mask,
        })
    }

    /// The kernel took `n` bytes of a write built with [`framing`](Self::framing): returns
    /// how many of them were queued bytes, and keeps the rest of a header or frame owed.
    pub(crate) fn sent(&mut self, n: usize, f: &Framed) -> usize {
        let before = n.min(f.before);
        self.raw.drain(..before);
        let head = usize::from(f.head_len);
        let head_sent = (n - before).min(head);
        if head > 0 {
            // A new frame began: all of its payload is owed, and the header's unwritten rest
            // goes first next time.
            self.raw
                .extend_from_slice(&f.head[MAX_HEAD - head + head_sent..]);
            self.owed = f.payload;
            self.done = 0;
        }
        let payload = n - before - head_sent;
        self.owed -= payload;
        self.done += payload;
        payload
    }
}

#[cfg(test)]
mod tests;
