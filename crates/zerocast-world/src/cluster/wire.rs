//! What world processes say to each other on the bus, sans-IO: the messages' bytes.
//!
//! Hand-rolled rather than serde: every message is a fixed 12-byte head, then arrays of fixed
//! records, then (for events) whole protocol frames that go to players untouched. A decoder
//! that checks each length against what is left is shorter than a schema, and the frames
//! are kept as a slice of the received buffer (no copy).
//!
//! ```text
//!  0    1    2         4         8         12           20        24        28
//!  +----+----+---------+---------+---------+------------+---------+---------+---------+----
//!  | v1 |kind| records | gone    | node    | seq        | cell x  | cell y  | records | gone
//!  +----+----+---------+---------+---------+------------+---------+---------+---------+----
//!             u16 LE    u16 LE    u32 LE    u64 LE       i32 LE    i32 LE   20 B each  8 B
//!                                                                           each, then frames
//! ```
//!
//! - `seq`: the sender's message number, one more for each message it publishes: a message
//!   that arrives twice (through a cell's subscription and its region's) is used once.
//! - `cell`: the cell an events or presence message is about (0, 0 for the other kinds).
//! - `records`: for [`Kind::Events`] and [`Kind::Presence`], players as `(id u64, x, y, z
//!   f32)`; for [`Kind::Want`], cells as `(x i32, y i32)` (8 bytes each).
//! - `gone`: players of the sender that left the cell (moved away or disconnected).
//! - frames: [`Kind::Events`] and [`Kind::Global`] only; they must be whole frames of the
//!   world protocol, or the message is refused.
//! - [`Kind::Bundle`]: `records` parts, each a whole [`Kind::Events`] message prefixed by
//!   its length (u32 LE); `cell` is the zone the parts' cells are in. One NATS message
//!   instead of one per cell: on the bus the cost is per message, and a process with players
//!   all over the map has events in hundreds of cells every tick.

use bytes::{BufMut, Bytes, BytesMut};

use crate::aoi::{Cell, EntityId};
use zerocast::frame::HEADER_LEN;

/// The format's version (the first byte).
pub const VERSION: u8 = 1;
/// The head's length.
pub const HEAD_LEN: usize = 28;
const PLAYER_LEN: usize = 20;
const CELL_LEN: usize = 8;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A tick's events in one cell, from one process: the frames, where its players that
    /// joined or moved in (or out of) the cell are now, and who left it.
    Events = 1,
    /// Where every player of the sender in one cell is (the answer to a [`Kind::Want`]).
    Presence = 2,
    /// A tick's global chat lines from one process.
    Global = 3,
    /// "I am alive" (every heartbeat period).
    Heartbeat = 4,
    /// "I am leaving": forget my players now.
    Bye = 5,
    /// "Tell me who is in these cells": every process with players there answers with a
    /// [`Kind::Presence`] on the cell's subject.
    Want = 6,
    /// A tick's events in several cells of one zone, from one process: [`Kind::Events`]
    /// messages back to back (see [`bundle`]).
    Bundle = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Events,
            2 => Self::Presence,
            3 => Self::Global,
            4 => Self::Heartbeat,
            5 => Self::Bye,
            6 => Self::Want,
            7 => Self::Bundle,
            _ => return None,
        })
    }
}

/// A decoded message, borrowing nothing: the frames are a slice of the received [`Bytes`].
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// What it is.
    pub kind: Kind,
    /// The process that sent it.
    pub node: u32,
    /// Its number among the sender's messages.
    pub seq: u64,
    /// The cell it is about (events, presence).
    pub cell: Cell,
    /// Players and where they are (events, presence).
    pub players: Vec<(EntityId, [f32; 3])>,
    /// Players gone from the cell (events).
    pub gone: Vec<EntityId>,
    /// Cells asked about (want).
    pub cells: Vec<Cell>,
    /// Whole frames (events, global), and how many.
    pub frames: Bytes,
    /// How many frames `frames` holds.
    pub count: u32,
    /// The parts, not decoded yet (bundle): slices of the received [`Bytes`].
    pub parts: Vec<Bytes>,
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its head says.
    Truncated,
    /// Another version of the format.
    Version(u8),
    /// An unknown kind.
    Kind(u8),
    /// The frames are not whole frames of the protocol.
    Frames,
    /// A field this kind does not carry, or a position that is not finite.
    Invalid,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => write!(f, "truncated message"),
            Self::Version(v) => write!(f, "format version {v}, expected {VERSION}"),
            Self::Kind(k) => write!(f, "unknown message kind {k}"),
            Self::Frames => write!(f, "frames that are not whole protocol frames"),
            Self::Invalid => write!(
                f,
                "a field its kind does not carry or a non-finite position"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// Who sends a message, and its number among the sender's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The sending process.
    pub node: u32,
    /// The message's number.
    pub seq: u64,
}

fn head(out: &mut BytesMut, kind: Kind, records: usize, gone: usize, from: Origin, cell: Cell) {
    // Callers cut their lists to u16::MAX records (see `MAX_RECORDS`).
    out.put_u8(VERSION);
    out.put_u8(kind as u8);
    out.put_u16_le(records as u16);
    out.put_u16_le(gone as u16);
    out.put_u16_le(0);
    out.put_u32_le(from.node);
    out.put_u64_le(from.seq);
    out.put_i32_le(cell.0);
    out.put_i32_le(cell.1);
}

/// Most records (players, cells or gone ids) one message carries.
pub const MAX_RECORDS: usize = u16::MAX as usize;

/// An events message: `frames` (`count` whole frames), `players` now in or just out of the
/// cell, and `gone` (left it). At most [`MAX_RECORDS`] of each (the excess is not written).
pub fn events(
    from: Origin,
    cell: Cell,
    players: &[(EntityId, [f32; 3])],
    gone: &[EntityId],
    frames: &[u8],
) -> Bytes {
    let players = &players[..players.len().min(MAX_RECORDS)];
    let gone = &gone[..gone.len().min(MAX_RECORDS)];
    let mut out = BytesMut::with_capacity(
        HEAD_LEN + players.len() * PLAYER_LEN + gone.len() * 8 + frames.len(),
    );
    head(
        &mut out,
        Kind::Events,
        players.len(),
        gone.len(),
        from,
        cell,
    );
    put_players(&mut out, players);
    for &g in gone {
        out.put_u64_le(g);
    }
    out.put_slice(frames);
    out.freeze()
}

/// A bundle of [`events`] messages (at most [`MAX_RECORDS`]; the excess is not written)
/// about cells of `zone`.
pub fn bundle(from: Origin, zone: Cell, parts: &[Bytes]) -> Bytes {
    let parts = &parts[..parts.len().min(MAX_RECORDS)];
    let len = parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(HEAD_LEN + len);
    head(&mut out, Kind::Bundle, parts.len(), 0, from, zone);
    for p in parts {
        // An events message is far below 4 GiB: its records are capped, its frames are one
        // tick of one cell.
        out.put_u32_le(p.len() as u32);
        out.put_slice(p);
    }
    out.freeze()
}

/// A presence message: where each of `players` (all the sender's in one cell) is.
pub fn presence(from: Origin, cell: Cell, players: &[(EntityId, [f32; 3])]) -> Bytes {
    let players = &players[..players.len().min(MAX_RECORDS)];
    let mut out = BytesMut::with_capacity(HEAD_LEN + players.len() * PLAYER_LEN);
    head(&mut out, Kind::Presence, players.len(), 0, from, cell);
    put_players(&mut out, players);
    out.freeze()
}

/// A global chat message: `frames`, whole `ChatFrom` frames.
pub fn global(from: Origin, frames: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEAD_LEN + frames.len());
    head(&mut out, Kind::Global, 0, 0, from, (0, 0));
    out.put_slice(frames);
    out.freeze()
}

/// A heartbeat or a goodbye.
pub fn signal(from: Origin, kind: Kind) -> Bytes {
    debug_assert!(matches!(kind, Kind::Heartbeat | Kind::Bye));
    let mut out = BytesMut::with_capacity(HEAD_LEN);
    head(&mut out, kind, 0, 0, from, (0, 0));
    out.freeze()
}

/// A want message for `cells` (at most [`MAX_RECORDS`]).
pub fn want(from: Origin, cells: &[Cell]) -> Bytes {
    let cells = &cells[..cells.len().min(MAX_RECORDS)];
    let mut out = BytesMut::with_capacity(HEAD_LEN + cells.len() * CELL_LEN);
    head(&mut out, Kind::Want, cells.len(), 0, from, (0, 0));
    for &(x, y) in cells {
        out.put_i32_le(x);
        out.put_i32_le(y);
    }
    out.freeze()
}

fn put_players(out: &mut BytesMut, players: &[(EntityId, [f32; 3])]) {
    for &(id, [x, y, z]) in players {
        out.put_u64_le(id);
        out.put_f32_le(x);
        out.put_f32_le(y);
        out.put_f32_le(z);
    }
}

/// Reads little-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(WireError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.take().map(u64::from_le_bytes)
    }
    fn f32(&mut self) -> Result<f32, WireError> {
        self.take().map(f32::from_le_bytes)
    }
    fn i32(&mut self) -> Result<i32, WireError> {
        self.take().map(i32::from_le_bytes)
    }
}

/// How many whole frames `bytes` holds; `None` unless it is whole frames back to back.
pub fn whole_frames(bytes: &[u8]) -> Option<u32> {
    let mut at = 0;
    let mut n = 0u32;
    while at < bytes.len() {
        let head = bytes.get(at..at + HEADER_LEN)?;
        let len = usize::from(u16::from_le_bytes([head[0], head[1]]));
        if len < HEADER_LEN || at + len > bytes.len() {
            return None;
        }
        at += len;
        n += 1;
    }
    Some(n)
}

/// Decodes a message.
///
/// # Errors
/// A [`WireError`] naming what is wrong; nothing of a refused message is used.
pub fn decode(bytes: &Bytes) -> Result<Message, WireError> {
    let mut r = Reader(bytes);
    let [version, kind] = r.take::<2>()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = Kind::from_u8(kind).ok_or(WireError::Kind(kind))?;
    let records = usize::from(u16::from_le_bytes(r.take()?));
    let gone = usize::from(u16::from_le_bytes(r.take()?));
    let _reserved = r.take::<2>()?;
    let node = u32::from_le_bytes(r.take()?);
    let seq = r.u64()?;
    let cell = (r.i32()?, r.i32()?);
    let mut m = Message {
        kind,
        node,
        seq,
        cell,
        players: Vec::new(),
        gone: Vec::new(),
        cells: Vec::new(),
        frames: Bytes::new(),
        count: 0,
        parts: Vec::new(),
    };
    let carries_players = matches!(kind, Kind::Events | Kind::Presence);
    let carries_frames = matches!(kind, Kind::Events | Kind::Global);
    let carries_records = carries_players || matches!(kind, Kind::Want | Kind::Bundle);
    if (records > 0 && !carries_records) || (gone > 0 && kind != Kind::Events) {
        return Err(WireError::Invalid);
    }
    if kind == Kind::Bundle {
        m.parts.reserve(records.min(r.0.len() / 4));
        for _ in 0..records {
            let len = u32::from_le_bytes(r.take()?) as usize;
            if len > r.0.len() {
                return Err(WireError::Truncated);
            }
            let at = bytes.len() - r.0.len();
            m.parts.push(bytes.slice(at..at + len));
            r.0 = &r.0[len..];
        }
    } else if kind == Kind::Want {
        m.cells.reserve(records.min(r.0.len() / CELL_LEN));
        for _ in 0..records {
            m.cells.push((r.i32()?, r.i32()?));
        }
    } else {
        m.players.reserve(records.min(r.0.len() / PLAYER_LEN));
        for _ in 0..records {
            let id = r.u64()?;
            let pos = [r.f32()?, r.f32()?, r.f32()?];
            if !pos.iter().all(|v| v.is_finite()) {
                return Err(WireError::Invalid);
            }
            m.players.push((id, pos));
        }
    }
    m.gone.reserve(gone.min(r.0.len() / 8));
    for _ in 0..gone {
        m.gone.push(r.u64()?);
    }
    let rest = r.0.len();
    if carries_frames {
        m.count = whole_frames(r.0).ok_or(WireError::Frames)?;
        m.frames = bytes.slice(bytes.len() - rest..);
    } else if rest > 0 {
        return Err(WireError::Invalid);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F7: Origin = Origin { node: 7, seq: 9 };

    fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = ((HEADER_LEN + payload.len()) as u16).to_le_bytes().to_vec();
        f.extend_from_slice(&id.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn every_kind_round_trips() {
        let frames = [frame(0x0202, &[7; 24]), frame(0x0206, b"hi")].concat();
        let players = vec![(1u64 << 32 | 5, [1.0, 2.0, 0.0]), (9, [3.5, 4.5, 0.0])];
        let m = decode(&events(F7, (3, -4), &players, &[11, 12], &frames)).unwrap();
        assert_eq!(
            (m.kind, m.node, m.seq, m.cell, &m.players, &m.gone, m.count),
            (Kind::Events, 7, 9, (3, -4), &players, &vec![11, 12], 2)
        );
        assert_eq!(&m.frames[..], &frames[..]);
        let p = decode(&presence(F7, (1, 1), &players)).unwrap();
        assert_eq!((p.kind, &p.players), (Kind::Presence, &players));
        let g = decode(&global(F7, &frames)).unwrap();
        assert_eq!(
            (g.kind, g.count, &g.frames[..]),
            (Kind::Global, 2, &frames[..])
        );
        let w = decode(&want(F7, &[(0, 0), (-1, 7)])).unwrap();
        assert_eq!((w.kind, w.cells), (Kind::Want, vec![(0, 0), (-1, 7)]));
        for k in [Kind::Heartbeat, Kind::Bye] {
            assert_eq!(decode(&signal(F7, k)).unwrap().kind, k);
        }
        let parts = [
            events(F7, (1, 2), &players, &[], &frames),
            presence(F7, (1, 3), &players),
        ];
        let b = decode(&bundle(F7, (0, 0), &parts)).unwrap();
        assert_eq!(
            (b.kind, b.cell, &b.parts[..]),
            (Kind::Bundle, (0, 0), &parts[..])
        );
        assert_eq!(decode(&b.parts[0]).unwrap().cell, (1, 2));
    }

    #[test]
    fn a_bundle_whose_part_overruns_it_is_refused() {
        let part = events(F7, (1, 2), &[(1, [0.0; 3])], &[], &frame(0x0202, &[0; 24]));
        let ok = bundle(F7, (0, 0), &[part.clone(), part]);
        assert!(decode(&ok).is_ok());
        assert_eq!(decode(&ok.slice(..ok.len() - 1)), Err(WireError::Truncated));
        let mut v = ok.to_vec();
        v.push(0);
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::Invalid));
    }

    #[test]
    fn broken_messages_are_refused_with_a_reason() {
        let ok = events(F7, (0, 0), &[(1, [0.0; 3])], &[], &frame(0x0202, &[0; 24]));
        assert_eq!(decode(&ok.slice(..5)), Err(WireError::Truncated));
        assert_eq!(decode(&ok.slice(..ok.len() - 1)), Err(WireError::Frames));
        let mut v = ok.to_vec();
        v[0] = 2;
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::Version(2)));
        let mut v = ok.to_vec();
        v[1] = 99;
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::Kind(99)));
        let nan = events(F7, (0, 0), &[(1, [f32::NAN, 0.0, 0.0])], &[], &[]);
        assert_eq!(decode(&nan), Err(WireError::Invalid));
        let mut v = signal(F7, Kind::Heartbeat).to_vec();
        v.push(0);
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::Invalid));
    }

    proptest! {
        /// Any bytes: decoded or refused, never a panic, and what decodes re-encodes to
        /// itself.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let bytes = Bytes::from(data);
            if let Ok(m) = decode(&bytes) {
                let from = Origin { node: m.node, seq: m.seq };
                let again = match m.kind {
                    Kind::Events => events(from, m.cell, &m.players, &m.gone, &m.frames),
                    Kind::Presence => presence(from, m.cell, &m.players),
                    Kind::Global => global(from, &m.frames),
                    Kind::Heartbeat | Kind::Bye => signal(from, m.kind),
                    Kind::Want => want(from, &m.cells),
                    Kind::Bundle => bundle(from, m.cell, &m.parts),
                };
                // The reserved field is not kept, nor the cell of a kind without one.
                prop_assert_eq!(&again[..6], &bytes[..6]);
                prop_assert_eq!(&again[8..20], &bytes[8..20]);
                prop_assert_eq!(&again[HEAD_LEN..], &bytes[HEAD_LEN..]);
            }
        }
    }
}
