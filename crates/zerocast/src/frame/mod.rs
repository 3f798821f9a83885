//! Framing: how a byte stream is cut into frames. Sans-IO: nothing here touches a socket.
//!
//! The default wire format ([`LengthPrefixed`]) is a 4-byte little-endian header
//! `{ size: u16, id: u16 }` where `size` counts the whole frame, header included
//! (see `docs/PROTOCOL.md`). Other framings plug in through the [`Decoder`] trait.

mod header;

pub use header::{Header, HEADER_LEN};

/// Why a byte stream is not a valid frame sequence. The connection it arrived on is closed with
/// this as the reason; no other session is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header's `size` is smaller than the header itself.
    #[error("frame size {size} is smaller than the {HEADER_LEN}-byte header")]
    TooShort {
        /// The declared size.
        size: usize,
    },
    /// The header's `size` exceeds the configured maximum.
    #[error("frame size {size} exceeds max_frame {max}")]
    TooLong {
        /// The declared size.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A decoder-specific violation (for decoders other than the default).
    #[error("{0}")]
    Invalid(&'static str),
}

/// What a [`Decoder`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame occupies `buf[..len]`; its payload is `buf[header..len]`.
    Frame {
        /// Total length of the frame in bytes, header included. Always `>= header` and, for a
        /// non-empty buffer, `>= 1`.
        len: usize,
        /// Length of the header that precedes the payload.
        header: usize,
        /// Packet id carried by the header (0 for framings without ids).
        id: u16,
    },
    /// The buffer holds only part of a frame; at least `total` bytes are needed in all.
    /// `total` is a hint for how much receive memory to reserve; it is `> buf.len()`.
    NeedMore {
        /// Bytes needed, counted from the start of the buffer.
        total: usize,
    },
}

/// Cuts a byte stream into frames, in place.
///
/// `decode` is called with the unconsumed bytes of one session, starting at a frame boundary.
/// It must not allocate or copy: it only reads the header. The engine guarantees `buf` is
/// non-empty.
///
/// Contract: a returned `Frame { len, header, .. }` satisfies `header <= len <= buf.len()` and
/// `len >= 1`; a returned `NeedMore { total }` satisfies `total > buf.len()`. The engine closes
/// the connection (reason [`FrameError::Invalid`]) if a decoder breaks this contract, so a buggy
/// decoder cannot make the engine loop or panic.
pub trait Decoder: Send + Sync + 'static {
    /// Inspects the start of `buf`.
    ///
    /// # Errors
    /// A [`FrameError`] when the stream can never become valid; the session is then closed.
    fn decode(&self, buf: &[u8]) -> Result<Decoded, FrameError>;
}

/// The default framing: `{ size: u16 LE, id: u16 LE }` then `size - 4` payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthPrefixed {
    max_frame: usize,
}

impl LengthPrefixed {
    /// The largest frame the 16-bit size field can express, and the default limit.
    pub const MAX: usize = u16::MAX as usize;

    /// A decoder that rejects frames larger than `max_frame` bytes (header included).
    /// Values above [`Self::MAX`] are clamped to it; values below the header size to it.
    pub fn new(max_frame: usize) -> Self {
        Self {
            max_frame: max_frame.clamp(HEADER_LEN, Self::MAX),
        }
    }

    /// The configured limit, header included.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for LengthPrefixed {
    fn default() -> Self {
        Self::new(Self::MAX)
    }
}

impl Decoder for LengthPrefixed {
    #[inline]
    fn decode(&self, buf: &[u8]) -> Result<Decoded, FrameError> {
        let Some(header) = Header::parse(buf) else {
            return Ok(Decoded::NeedMore { total: HEADER_LEN });
        };
        let size = usize::from(header.size);
        if size < HEADER_LEN {
            return Err(FrameError::TooShort { size });
        }
        if size > self.max_frame {
            return Err(FrameError::TooLong {
                size,
                max: self.max_frame,
            });
        }
        if buf.len() < size {
            return Ok(Decoded::NeedMore { total: size });
        }
        Ok(Decoded::Frame {
            len: size,
            header: HEADER_LEN,
            id: header.id,
        })
    }
}

/// No framing: whatever bytes arrived form one frame with id 0 (for `echo --raw`, so standard
/// echo benchmark clients can drive the engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raw;

impl Decoder for Raw {
    #[inline]
    fn decode(&self, buf: &[u8]) -> Result<Decoded, FrameError> {
        Ok(Decoded::Frame {
            len: buf.len(),
            header: 0,
            id: 0,
        })
    }
}

/// Checks a decoder's answer against the [`Decoder`] contract.
pub(crate) fn checked(decoded: Decoded, available: usize) -> Result<Decoded, FrameError> {
    match decoded {
        Decoded::Frame { len, header, .. } if len >= 1 && header <= len && len <= available => {
            Ok(decoded)
        }
        Decoded::NeedMore { total } if total > available => Ok(decoded),
        _ => Err(FrameError::Invalid("decoder broke its contract")),
    }
}

/// Fuzzing entry point (used by `fuzz/` and by the corpus replay test): the first two bytes
/// pick `max_frame`, the rest is a byte stream. Decodes it frame by frame and checks every
/// invariant the engine relies on; panics only if one breaks. Never panics on any input
/// otherwise.
#[doc(hidden)]
pub fn fuzz_stream(data: &[u8]) {
    let Some((limit, mut stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let decoder = LengthPrefixed::new(usize::from(u16::from_le_bytes(*limit)));
    while !stream.is_empty() {
        let decoded = decoder.decode(stream);
        match decoded.and_then(|d| checked(d, stream.len())) {
            Ok(Decoded::Frame { len, header, id }) => {
                let parsed = Header::parse(stream).expect("a frame has a header");
                assert_eq!(usize::from(parsed.size), len);
                assert_eq!(parsed.id, id);
                assert_eq!(header, HEADER_LEN);
                assert!(len <= decoder.max_frame());
                assert_eq!(
                    Header::for_payload(id, len - HEADER_LEN).map(Header::to_bytes),
                    Some(stream[..HEADER_LEN].try_into().expect("4 bytes"))
                );
                stream = &stream[len..];
            }
            Ok(Decoded::NeedMore { total }) => {
                assert!(total > stream.len() && total <= decoder.max_frame().max(HEADER_LEN));
                return;
            }
            Err(FrameError::TooShort { size }) => {
                assert!(size < HEADER_LEN);
                return;
            }
            Err(FrameError::TooLong { size, max }) => {
                assert!(size > max && max == decoder.max_frame());
                return;
            }
            Err(FrameError::Invalid(why)) => {
                panic!("the default decoder broke its contract: {why}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(decoder: &impl Decoder, mut buf: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, FrameError> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            match checked(decoder.decode(buf)?, buf.len())? {
                Decoded::Frame { len, header, id } => {
                    out.push((id, buf[header..len].to_vec()));
                    buf = &buf[len..];
                }
                Decoded::NeedMore { .. } => break,
            }
        }
        Ok(out)
    }

    #[test]
    fn rejects_sizes_below_header() {
        for size in 0..4u16 {
            let buf = Header { size, id: 1 }.to_bytes();
            assert_eq!(
                LengthPrefixed::default().decode(&buf),
                Err(FrameError::TooShort {
                    size: size as usize
                })
            );
        }
    }

    #[test]
    fn rejects_sizes_above_max() {
        let d = LengthPrefixed::new(100);
        let buf = Header { size: 101, id: 1 }.to_bytes();
        assert_eq!(
            d.decode(&buf),
            Err(FrameError::TooLong {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn header_only_frame_is_complete() {
        let buf = Header { size: 4, id: 9 }.to_bytes();
        assert_eq!(
            LengthPrefixed::default().decode(&buf),
            Ok(Decoded::Frame {
                len: 4,
                header: 4,
                id: 9
            })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                       max in 0usize..70000) {
            let _ = frames(&LengthPrefixed::new(max), &bytes);
            fuzz_stream(&bytes);
        }

        #[test]
        fn encode_decode_round_trips(msgs in proptest::collection::vec(
                (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
                split in any::<prop::sample::Index>()) {
            let mut wire = Vec::new();
            for (id, payload) in &msgs {
                wire.extend_from_slice(&Header::for_payload(*id, payload.len()).unwrap().to_bytes());
                wire.extend_from_slice(payload);
            }
            prop_assert_eq!(frames(&LengthPrefixed::default(), &wire).unwrap(), msgs.clone());
            // A stream cut anywhere decodes a prefix of the frames and never errors.
            let cut = if wire.is_empty() { 0 } else { split.index(wire.len()) };
            let got = frames(&LengthPrefixed::default(), &wire[..cut]).unwrap();
            prop_assert_eq!(&got[..], &msgs[..got.len()]);
        }
    }
}
