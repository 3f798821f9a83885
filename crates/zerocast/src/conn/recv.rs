//! The receive side of a connection: bytes in, frames out.
//!
//! Received bytes arrive in shared memory (a worker's receive chunk, or a provided buffer the
//! kernel picked). Complete frames are cut *in place*: the caller gets a range of the bytes it
//! passed in, and the handler a borrowed view of them. Only a frame split across two receives
//! is copied: its start goes into this state's `pending` buffer, its rest is appended (or read
//! straight behind it), and once complete it is split off as its own shared view.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::frame::{checked, Decoded, Decoder, FrameError};

/// Capacity reserved up front for a frame split across reads; larger frames grow as they come.
pub(crate) const MAX_PENDING_HINT: usize = 64 * 1024;

/// One frame cut from received bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// A frame lying whole in the bytes passed to [`RecvState::next`]: its range there.
    InPlace {
        id: u16,
        header: usize,
        range: Range<usize>,
    },
    /// A frame that was split across receives, reassembled: its own bytes.
    Joined {
        id: u16,
        header: usize,
        bytes: Bytes,
    },
}

/// A connection's receive state: nothing (one pointer, null) unless a frame is split across
/// receives, so an idle connection holds no receive memory.
///
/// Invariant: `split`, when present, holds only the start of one incomplete frame (never a
/// complete one, never empty), and `total` is what that frame needs in all.
#[derive(Default)]
pub(crate) struct RecvState {
    split: Option<Box<Split>>,
}

struct Split {
    pending: BytesMut,
    total: usize,
}

impl RecvState {
    /// True while a frame is split: the next receive continues it.
    pub(crate) fn is_split(&self) -> bool {
        self.split.is_some()
    }

    /// For a readiness backend reading a split frame's rest straight behind its start: the
    /// buffer to read into and the most to read. Reserves at most [`MAX_PENDING_HINT`] at a
    /// time: the frame's total comes from peer-controlled bytes, and a huge claim must not
    /// become a huge allocation before the bytes actually arrive.
    ///
    /// # Panics
    /// If no frame is split ([`is_split`](Self::is_split) is false).
    pub(crate) fn continuation(&mut self) -> (&mut BytesMut, usize) {
        let s = self.split.as_mut().expect("continuation of a split frame");
        let need = s
            .total
            .saturating_sub(s.pending.len())
            .clamp(1, MAX_PENDING_HINT);
        s.pending.reserve(need);
        let room = s.pending.capacity() - s.pending.len();
        (&mut s.pending, room)
    }

    /// The next frame, from `data[*pos..]` (freshly received, advancing `*pos`) and from what
    /// a split frame already holds. `None`: no complete frame is left; a trailing incomplete
    /// frame has been kept (copied) for the next receive. Pass empty `data` after reading
    /// into [`continuation`](Self::continuation).
    ///
    /// # Errors
    /// The decoder refused the stream (or broke its contract): the connection must close.
    pub(crate) fn next(
        &mut self,
        decoder: &dyn Decoder,
        data: &Bytes,
        pos: &mut usize,
    ) -> Result<Option<Cut>, FrameError> {
        let Some(s) = self.split.as_mut() else {
            let rest = &data[*pos..];
            if rest.is_empty() {
                return Ok(None);
            }
            return match decode(decoder, rest)? {
                Decoded::Frame { len, header, id } => {
                    let range = *pos..*pos + len;
                    *pos += len;
                    Ok(Some(Cut::InPlace { id, header, range }))
                }
                Decoded::NeedMore { total } => {
                    // The only copy on the receive path, bounded by one frame.
                    let mut pending =
                        BytesMut::with_capacity(total.min(MAX_PENDING_HINT).max(rest.len()));
                    pending.extend_from_slice(rest);
                    self.split = Some(Box::new(Split { pending, total }));
                    *pos = data.len();
                    Ok(None)
                }
            };
        };
        if *pos < data.len() {
            s.pending.extend_from_slice(&data[*pos..]);
            *pos = data.len();
        }
        match decode(decoder, &s.pending)? {
            Decoded::Frame { len, header, id } => {
                let bytes = s.pending.split_to(len).freeze();
                if s.pending.is_empty() {
                    // Nothing split any more: give the memory back.
                    self.split = None;
                }
                Ok(Some(Cut::Joined { id, header, bytes }))
            }
            Decoded::NeedMore { total } => {
                s.total = total;
                Ok(None)
            }
        }
    }

    /// Drops a split frame's start (the connection stops reading).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

fn decode(decoder: &dyn Decoder, buf: &[u8]) -> Result<Decoded, FrameError> {
    decoder.decode(buf).and_then(|d| checked(d, buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{LengthPrefixed, HEADER_LEN};

    fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = ((HEADER_LEN + payload.len()) as u16).to_le_bytes().to_vec();
        f.extend_from_slice(&id.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `pieces` one after the other; returns every frame's (id, payload).
    fn run(
        rx: &mut RecvState,
        d: &dyn Decoder,
        pieces: &[&[u8]],
    ) -> Result<Vec<(u16, Vec<u8>)>, FrameError> {
        let mut out = Vec::new();
        for piece in pieces {
            let data = Bytes::copy_from_slice(piece);
            let mut pos = 0;
            while let Some(cut) = rx.next(d, &data, &mut pos)? {
                match cut {
                    Cut::InPlace { id, header, range } => {
                        out.push((id, data[range.start + header..range.end].to_vec()))
                    }
                    Cut::Joined { id, header, bytes } => out.push((id, bytes[header..].to_vec())),
                }
            }
            assert_eq!(pos, data.len(), "every byte consumed or kept");
        }
        Ok(out)
    }

    fn stream() -> (Vec<u8>, Vec<(u16, Vec<u8>)>) {
        let frames: Vec<(u16, Vec<u8>)> = vec![
            (1, b"hello".to_vec()),
            (2, vec![]),
            (3, vec![7; 300]),
            (4, b"x".to_vec()),
        ];
        let wire = frames.iter().flat_map(|(i, p)| frame(*i, p)).collect();
        (wire, frames)
    }

    #[test]
    fn frames_cut_at_every_byte_boundary_come_out_whole_and_in_order() {
        let d = LengthPrefixed::default();
        let (wire, frames) = stream();
        for cut in 0..=wire.len() {
            let mut rx = RecvState::default();
            let got = run(&mut rx, &d, &[&wire[..cut], &wire[cut..]]).unwrap();
            assert_eq!(got, frames, "cut at {cut}");
            assert!(!rx.is_split());
            assert!(rx.split.is_none(), "no memory kept once nothing is split");
        }
        // And one byte at a time.
        let mut rx = RecvState::default();
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(run(&mut rx, &d, &bytes).unwrap(), frames);
    }

    #[test]
    fn complete_frames_are_cut_in_place_and_only_a_split_one_is_joined() {
        let d = LengthPrefixed::default();
        let (wire, _) = stream();
        let data = Bytes::from(wire.clone());
        let mut rx = RecvState::default();
        let mut pos = 0;
        let mut kinds = Vec::new();
        while let Some(c) = rx.next(&d, &data, &mut pos).unwrap() {
            kinds.push(matches!(c, Cut::InPlace { .. }));
        }
        assert_eq!(kinds, [true; 4], "no copy for frames received whole");
        let split_at = 4 + 5 + 2; // inside the second header
        let mut rx = RecvState::default();
        let first = Bytes::copy_from_slice(&wire[..split_at]);
        let mut pos = 0;
        assert!(matches!(
            rx.next(&d, &first, &mut pos).unwrap(),
            Some(Cut::InPlace { id: 1, .. })
        ));
        assert_eq!(rx.next(&d, &first, &mut pos).unwrap(), None);
        assert!(rx.is_split());
        let second = Bytes::copy_from_slice(&wire[split_at..]);
        let mut pos = 0;
        assert!(matches!(
            rx.next(&d, &second, &mut pos).unwrap(),
            Some(Cut::Joined { id: 2, .. })
        ));
    }

    #[test]
    fn oversize_and_short_headers_are_errors_after_the_good_frames() {
        let d = LengthPrefixed::new(100);
        let mut wire = frame(1, b"ok");
        wire.extend_from_slice(&[101, 0, 9, 9]); // 101 > max_frame
        let mut rx = RecvState::default();
        let data = Bytes::from(wire);
        let mut pos = 0;
        assert!(matches!(
            rx.next(&d, &data, &mut pos),
            Ok(Some(Cut::InPlace { id: 1, .. }))
        ));
        assert_eq!(
            rx.next(&d, &data, &mut pos),
            Err(FrameError::TooLong {
                size: 101,
                max: 100
            })
        );
        for size in 0..4u8 {
            let mut rx = RecvState::default();
            let data = Bytes::from(vec![size, 0, 1, 0]);
            assert_eq!(
                rx.next(&d, &data, &mut 0),
                Err(FrameError::TooShort {
                    size: usize::from(size)
                })
            );
        }
        // A bad header split across receives is found once its size bytes are in.
        let mut rx = RecvState::default();
        assert_eq!(run(&mut rx, &d, &[&[2]]).unwrap(), vec![]);
        assert_eq!(
            run(&mut rx, &d, &[&[0, 1, 0]]),
            Err(FrameError::TooShort { size: 2 })
        );
    }

    #[test]
    fn a_huge_claim_reserves_one_hint_at_a_time() {
        /// A framing with a 32-bit length: a peer can claim 4 GB.
        struct Len32;
        impl Decoder for Len32 {
            fn decode(&self, buf: &[u8]) -> Result<Decoded, FrameError> {
                let Some(h) = buf.get(..4) else {
                    return Ok(Decoded::NeedMore { total: 4 });
                };
                let total = u32::from_le_bytes(h.try_into().unwrap()) as usize;
                Ok(if buf.len() >= total {
                    Decoded::Frame {
                        len: total,
                        header: 4,
                        id: 0,
                    }
                } else {
                    Decoded::NeedMore { total }
                })
            }
        }
        let mut rx = RecvState::default();
        let claim = Bytes::from(u32::MAX.to_le_bytes().to_vec());
        assert_eq!(rx.next(&Len32, &claim, &mut 0).unwrap(), None);
        let (buf, room) = rx.continuation();
        // A hint for the start, at most a hint more per read: bounded, nowhere near 4 GB.
        assert!(buf.capacity() <= 4 * MAX_PENDING_HINT && room <= buf.capacity());
    }
}
