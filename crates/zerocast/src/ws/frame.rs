//! WebSocket frames (RFC 6455 §5), sans-IO: client frames decoded and unmasked in place,
//! server frame headers encoded.
//!
//! Hand-rolled: a header is 2 to 14 bytes and its rules fit in a page; the crates that parse
//! it (tungstenite, fastwebsockets) read into their own frame types and unmask into buffers
//! of their own, where the engine unmasks in its receive buffer and hands the payload on in
//! place.

use std::fmt;

/// What a frame is (its opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The rest of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Bytes: the engine's protocol frames travel in these.
    Binary,
    /// Closing handshake, with an optional status code and reason.
    Close,
    /// Ping: answered with a pong carrying the same payload.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Close status codes the engine sends (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: done.
    Normal,
    /// 1001: the server is going away (shutting down).
    GoingAway,
    /// 1002: the peer broke the protocol.
    Protocol,
    /// 1003: data of a type the endpoint does not take (text, here).
    Unsupported,
    /// 1007: a text message that is not UTF-8.
    InvalidData,
    /// 1008: the peer broke a rule of the server (e.g. too slow).
    Policy,
    /// 1009: a message over the limit.
    TooBig,
    /// 1011: the server failed.
    Internal,
}

impl CloseCode {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::Protocol => 1002,
            Self::Unsupported => 1003,
            Self::InvalidData => 1007,
            Self::Policy => 1008,
            Self::TooBig => 1009,
            Self::Internal => 1011,
        }
    }
}

/// Why a client's frames were refused, and the close code that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// A frame from the client without a mask (§5.1: the server must close).
    Unmasked,
    /// A frame from the server with a mask (§5.1: the client must close).
    Masked,
    /// Reserved bits set with no extension negotiated.
    Reserved,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A close, ping or pong over 125 bytes or fragmented.
    BadControl,
    /// A continuation with no message begun, or a new message inside a fragmented one.
    BadContinuation,
    /// A payload length in the 64-bit form with its top bit set, or not minimal.
    BadLength,
    /// A message over the limit.
    TooBig {
        /// Its size so far.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A text message that is not UTF-8.
    NotUtf8,
    /// A text message (the engine's protocol is binary).
    Text,
    /// A close frame whose payload is one byte, carries a code that may not be sent, or a
    /// reason that is not UTF-8.
    BadClose,
}

impl WsError {
    /// The status code to close with.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::TooBig { .. } => CloseCode::TooBig,
            Self::NotUtf8 => CloseCode::InvalidData,
            Self::Text => CloseCode::Unsupported,
            _ => CloseCode::Protocol,
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unmasked => write!(f, "unmasked client frame"),
            Self::Masked => write!(f, "masked server frame"),
            Self::Reserved => write!(f, "reserved bits set"),
            Self::UnknownOpcode(o) => write!(f, "unknown opcode {o:#x}"),
            Self::BadControl => write!(f, "control frame fragmented or over 125 bytes"),
            Self::BadContinuation => write!(f, "continuation out of place"),
            Self::BadLength => write!(f, "malformed payload length"),
            Self::TooBig { size, max } => write!(f, "message of {size} bytes over {max}"),
            Self::NotUtf8 => write!(f, "text that is not UTF-8"),
            Self::Text => write!(f, "text message (this endpoint takes binary only)"),
            Self::BadClose => write!(f, "malformed close frame"),
        }
    }
}

impl std::error::Error for WsError {}

/// A decoded client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// What it is.
    pub opcode: Opcode,
    /// Its header's length: the payload starts here in the buffer decoded...
    pub header: usize,
    /// ... and is this long (unmasked in place).
    pub len: usize,
}

impl Frame {
    /// The frame's whole length, header included.
    pub fn total(&self) -> usize {
        self.header + self.len
    }
}

/// What decoding found at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, its payload unmasked in place.
    Frame(Frame),
    /// Not a whole frame yet: at least this many bytes in all are needed.
    NeedMore(usize),
}

/// Decodes client frames, keeping what a message's fragments share. One per connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_message: usize,
    /// Decoding a server's frames (the client's side): unmasked, where a client's are masked.
    from_server: bool,
    /// In a fragmented data message: its opcode and its size so far.
    open: Option<(Opcode, u64)>,
}

impl Decoder {
    /// A decoder refusing data messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            from_server: false,
            open: None,
        }
    }

    /// The client's decoder: a server's frames, which are never masked.
    pub fn from_server(max_message: usize) -> Self {
        Self {
            from_server: true,
            ..Self::new(max_message)
        }
    }

    /// Decodes the frame at the front of `buf` and unmasks its payload in place. Text is
    /// refused (after its UTF-8 is checked, so that bad text gets 1007): the engine's
    /// protocol is binary.
    ///
    /// # Errors
    /// A [`WsError`]: close the connection with its [`close_code`](WsError::close_code).
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, WsError> {
        let Some(&[b0, b1]) = buf.first_chunk::<2>() else {
            return Ok(Decoded::NeedMore(2));
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(WsError::Reserved);
        }
        let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(WsError::UnknownOpcode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        match (masked, self.from_server) {
            (false, false) => return Err(WsError::Unmasked),
            (true, true) => return Err(WsError::Masked),
            _ => {}
        }
        let (len, at) = match b1 & 0x7F {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(Decoded::NeedMore(4));
                };
                let n = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if n < 126 {
                    return Err(WsError::BadLength);
                }
                (n, 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(Decoded::NeedMore(10));
                };
                let n = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if n >> 63 != 0 || n <= u64::from(u16::MAX) {
                    return Err(WsError::BadLength);
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() && (!fin || len > 125) {
            return Err(WsError::BadControl);
        }
        // The message's size so far, checked before waiting for a payload that may never fit.
        if !opcode.is_control() {
            let so_far = match (opcode, self.open) {
                (Opcode::Continuation, Some((_, size))) => size,
                (Opcode::Continuation, None) => return Err(WsError::BadContinuation),
                (_, Some(_)) => return Err(WsError::BadContinuation),
                (_, None) => 0,
            };
            let size = so_far.saturating_add(len);
            if size > self.max_message as u64 {
                return Err(WsError::TooBig {
                    size,
                    max: self.max_message,
                });
            }
        }
        let header = if masked { at + 4 } else { at };
        let len = len as usize; // at most max_message or 125: fits
        if buf.len() < header + len {
            return Ok(Decoded::NeedMore(header + len));
        }
        if masked {
            let key: [u8; 4] = buf[at..header].try_into().expect("4 bytes");
            unmask(&mut buf[header..header + len], key);
        }
        let payload = &buf[header..header + len];
        match opcode {
            Opcode::Text => {
                // Only whole messages can be checked for UTF-8 (a character may span
                // fragments); a fragmented text is refused as text at its first frame.
                if fin && std::str::from_utf8(payload).is_err() {
                    return Err(WsError::NotUtf8);
                }
                return Err(WsError::Text);
            }
            Opcode::Close => check_close(payload)?,
            _ => {}
        }
        if !opcode.is_control() {
            let kind = match (opcode, self.open) {
                (Opcode::Continuation, Some((kind, _))) => kind,
                _ => opcode,
            };
            let size = self.open.map_or(0, |o| o.1) + len as u64;
            self.open = (!fin).then_some((kind, size));
        }
        Ok(Decoded::Frame(Frame {
            fin,
            opcode,
            header,
            len,
        }))
    }
}

/// Unmasks (or masks: the same XOR) `payload` with `key` in place.
pub fn unmask(payload: &mut [u8], key: [u8; 4]) {
    // A word at a time: the key repeated over 8 bytes.
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let done = payload.len() / 8 * 8;
    for (i, b) in payload[done..].iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

fn check_close(payload: &[u8]) -> Result<(), WsError> {
    match payload {
        [] => Ok(()),
        [_] => Err(WsError::BadClose),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            // §7.4: codes a peer may send; 1004-1006 and 1015 are reserved, below 1000 unused.
            let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !allowed || std::str::from_utf8(reason).is_err() {
                return Err(WsError::BadClose);
            }
            Ok(())
        }
    }
}

/// The header of a server frame (unmasked): `fin`, `opcode`, a payload of `len` bytes. Returns
/// the bytes and how many of them are the header (2, 4 or 10).
pub fn header(opcode: Opcode, fin: bool, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = (u8::from(fin) << 7) | opcode.to_u8();
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// A whole server close frame: `code` and a reason (cut to fit 125 bytes on a character
/// boundary).
pub fn close_frame(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = code.code().to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    server_frame(Opcode::Close, &payload)
}

/// A whole, unfragmented server frame carrying `payload`.
pub fn server_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let (h, n) = header(opcode, true, payload.len());
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    out
}

/// A client frame, masked with `key` (what browsers send; for tests and the load generator).
pub fn client_frame(opcode: Opcode, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let (h, n) = header(opcode, fin, payload.len());
    let mut out = Vec::with_capacity(n + 4 + payload.len());
    out.extend_from_slice(&h[..n]);
    out[1] |= 0x80;
    out.extend_from_slice(&key);
    let at = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[at..], key);
    out
}

/// Fuzzing entry point (used by `fuzz/` and by the corpus replay test): decodes `data` as a
/// stream of client frames, checking every invariant the transport relies on; panics only if
/// one breaks.
#[doc(hidden)]
pub fn fuzz_stream(data: &[u8]) {
    let Some((limit, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mut buf = rest.to_vec();
    let mut d = Decoder::new(usize::from(u16::from_le_bytes(*limit)));
    let mut at = 0;
    while at < buf.len() {
        match d.decode(&mut buf[at..]) {
            Ok(Decoded::Frame(f)) => {
                assert!(f.total() <= buf.len() - at);
                assert!(!f.opcode.is_control() || (f.fin && f.len <= 125));
                assert!(f.opcode.is_control() || f.len <= d.max_message);
                at += f.total();
            }
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > buf.len() - at);
                return;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn decode_all(
        d: &mut Decoder,
        wire: &mut [u8],
    ) -> Result<Vec<(Opcode, bool, Vec<u8>)>, WsError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            match d.decode(&mut wire[at..])? {
                Decoded::Frame(f) => {
                    let p = wire[at + f.header..at + f.total()].to_vec();
                    out.push((f.opcode, f.fin, p));
                    at += f.total();
                }
                Decoded::NeedMore(_) => break,
            }
        }
        Ok(out)
    }

    #[test]
    fn the_rfc_s_masked_hello_decodes() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello" ... as binary here.
        let mut wire = vec![
            0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut d = Decoder::new(1024);
        let got = decode_all(&mut d, &mut wire).unwrap();
        assert_eq!(got, vec![(Opcode::Binary, true, b"Hello".to_vec())]);
        assert_eq!(client_frame(Opcode::Binary, true, b"Hello", KEY), {
            let mut w = vec![0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d];
            w.extend_from_slice(&[0x7f, 0x9f, 0x4d, 0x51, 0x58]);
            w
        });
    }

    #[test]
    fn lengths_of_every_form_round_trip() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = client_frame(Opcode::Binary, true, &payload, KEY);
            let mut d = Decoder::new(1 << 20);
            let got = decode_all(&mut d, &mut wire).unwrap();
            assert_eq!(got, vec![(Opcode::Binary, true, payload)], "len {len}");
            let (h, n) = header(Opcode::Binary, true, len);
            assert_eq!(
                n,
                if len < 126 {
                    2
                } else if len < 65536 {
                    4
                } else {
                    10
                }
            );
            assert_eq!(h[0], 0x82);
        }
    }

    #[test]
    fn fragments_and_interleaved_control_frames() {
        let mut wire = client_frame(Opcode::Binary, false, b"ab", KEY);
        wire.extend(client_frame(Opcode::Ping, true, b"p", KEY));
        wire.extend(client_frame(Opcode::Continuation, true, b"cd", KEY));
        let mut d = Decoder::new(1024);
        let got = decode_all(&mut d, &mut wire).unwrap();
        assert_eq!(
            got,
            vec![
                (Opcode::Binary, false, b"ab".to_vec()),
                (Opcode::Ping, true, b"p".to_vec()),
                (Opcode::Continuation, true, b"cd".to_vec()),
            ]
        );
    }

    #[test]
    fn hostile_frames_get_their_close_code() {
        let cases: Vec<(Vec<u8>, WsError, u16)> = vec![
            (vec![0x82, 0x05, 1, 2, 3, 4, 5], WsError::Unmasked, 1002),
            (vec![0xC2, 0x80, 0, 0, 0, 0], WsError::Reserved, 1002),
            (
                vec![0x83, 0x80, 0, 0, 0, 0],
                WsError::UnknownOpcode(3),
                1002,
            ),
            (
                client_frame(Opcode::Ping, true, &[0; 126], KEY),
                WsError::BadControl,
                1002,
            ),
            (
                client_frame(Opcode::Ping, false, b"x", KEY),
                WsError::BadControl,
                1002,
            ),
            (
                client_frame(Opcode::Continuation, true, b"x", KEY),
                WsError::BadContinuation,
                1002,
            ),
            (
                client_frame(Opcode::Text, true, &[0xff, 0xfe], KEY),
                WsError::NotUtf8,
                1007,
            ),
            (
                client_frame(Opcode::Text, true, b"hi", KEY),
                WsError::Text,
                1003,
            ),
            (
                client_frame(Opcode::Close, true, &[3], KEY),
                WsError::BadClose,
                1002,
            ),
            (
                client_frame(Opcode::Close, true, &1005u16.to_be_bytes(), KEY),
                WsError::BadClose,
                1002,
            ),
            // 126-form length for a payload that fits the short form.
            (vec![0x82, 0xFE, 0, 5, 0, 0, 0, 0], WsError::BadLength, 1002),
        ];
        for (mut wire, err, code) in cases {
            let mut d = Decoder::new(64);
            assert_eq!(d.decode(&mut wire), Err(err), "{wire:?}");
            assert_eq!(err.close_code().code(), code);
        }
        // Too big: refused from the header, before its payload arrives.
        let mut big = client_frame(Opcode::Binary, true, &[0; 100], KEY);
        big.truncate(8);
        let mut d = Decoder::new(64);
        assert!(matches!(
            d.decode(&mut big),
            Err(WsError::TooBig { size: 100, max: 64 })
        ));
        // Fragments adding up past the limit.
        let mut d = Decoder::new(64);
        let mut wire = client_frame(Opcode::Binary, false, &[0; 40], KEY);
        wire.extend(client_frame(Opcode::Continuation, true, &[0; 40], KEY));
        assert!(matches!(
            decode_all(&mut d, &mut wire),
            Err(WsError::TooBig { size: 80, .. })
        ));
    }

    #[test]
    fn a_close_reason_is_cut_on_a_character_boundary() {
        let f = close_frame(CloseCode::Policy, &"é".repeat(100));
        assert_eq!(f[0], 0x88);
        assert!(usize::from(f[1]) <= 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
        assert_eq!(&f[2..4], &1008u16.to_be_bytes());
    }

    proptest! {
        /// Any sequence of binary fragments and pings, masked with any key and cut anywhere
        /// into pieces fed as they come, decodes to exactly what was sent.
        #[test]
        fn any_frames_in_any_pieces_decode_to_what_was_sent(
            msgs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>(), any::<[u8; 4]>()),
                1..8,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = Vec::new();
            let mut sent = Vec::new();
            for (i, (payload, ping, key)) in msgs.iter().enumerate() {
                let op = if *ping { Opcode::Ping } else { Opcode::Binary };
                let payload = if *ping { &payload[..payload.len().min(125)] } else { &payload[..] };
                wire.extend(client_frame(op, true, payload, *key));
                sent.push((op, true, payload.to_vec()));
                let _ = i;
            }
            // Fed as a stream: the first `cut` bytes, then everything.
            let first = cut.index(wire.len() + 1);
            let mut d = Decoder::new(1 << 16);
            let mut partial = wire[..first].to_vec();
            let got1 = decode_all(&mut d, &mut partial).unwrap();
            let used: usize = got1.iter().map(|(_, _, p)| {
                let (_, n) = header(Opcode::Binary, true, p.len());
                n + 4 + p.len()
            }).sum();
            let mut rest = wire[used..].to_vec();
            let got2 = decode_all(&mut d, &mut rest).unwrap();
            let got: Vec<_> = got1.into_iter().chain(got2).collect();
            prop_assert_eq!(got, sent);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            fuzz_stream(&data);
        }
    }
}
