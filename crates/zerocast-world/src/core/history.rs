//! The batches of the last ticks a shard keeps for its players written every few ticks, and
//! an index of their cells' events by cell.
//!
//! A delivery asks, for each group of players due, the events of its 3×3 cells since the
//! group's last delivery. Over capacity a player is written every `stride` ticks, so the
//! history holds `2 × stride` ticks of every shard's (and process's) batches: tens of
//! thousands of cell entries. Sorting them all by cell at every tick cost more than the rest
//! of the delivery; the index is kept as batches come and go instead, each cell's entries
//! in the order of their ticks.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{CellEvents, TickBatch};
use crate::aoi::Cell;

/// Where a cell's events of one tick lie: `(generation, batch, index in the batch's cells)`.
type Entry = (u64, u32, u32);

/// Invariant: `index` holds exactly one entry per cell event of every retained batch, each
/// cell's entries in order of generation (then of batch and index); no cell maps to an
/// empty list.
#[derive(Default)]
pub(super) struct History {
    /// `(generation, batches)`, oldest first, generations increasing.
    ticks: VecDeque<(u64, Vec<Arc<TickBatch>>)>,
    index: FxHashMap<Cell, VecDeque<Entry>>,
}

impl History {
    /// Keeps the batches of tick `gen` (later than every retained one).
    pub(super) fn push(&mut self, gen: u64, batches: Vec<Arc<TickBatch>>) {
        debug_assert!(self.ticks.back().is_none_or(|(g, _)| *g < gen));
        for (bi, b) in batches.iter().enumerate() {
            for (ci, c) in b.cells.iter().enumerate() {
                self.index
                    .entry(c.cell)
                    .or_default()
                    .push_back((gen, bi as u32, ci as u32));
            }
        }
        self.ticks.push_back((gen, batches));
    }

    /// Forgets the ticks of generations `..=upto`.
    pub(super) fn forget_upto(&mut self, upto: u64) {
        while self.ticks.front().is_some_and(|(g, _)| *g <= upto) {
            let Some((gen, batches)) = self.ticks.pop_front() else {
                break;
            };
            for c in batches.iter().flat_map(|b| &b.cells) {
                if let Some(q) = self.index.get_mut(&c.cell) {
                    while q.front().is_some_and(|e| e.0 <= gen) {
                        q.pop_front();
                    }
                    if q.is_empty() {
                        self.index.remove(&c.cell);
                    }
                }
            }
        }
    }

    /// The retained ticks, oldest first.
    pub(super) fn ticks(&self) -> impl Iterator<Item = &(u64, Vec<Arc<TickBatch>>)> {
        self.ticks.iter()
    }

    /// `cell`'s events of the ticks after generation `since`, oldest first, as
    /// `(generation, tick entry, batch, index)`: see [`History::events`].
    pub(super) fn since(
        &self,
        cell: Cell,
        since: u64,
    ) -> impl Iterator<Item = (u64, u32, u32, u32)> + '_ {
        let q = self.index.get(&cell);
        let from = q.map_or(0, |q| q.partition_point(|e| e.0 <= since));
        q.into_iter().flat_map(move |q| {
            q.range(from..)
                .map(move |&(g, bi, ci)| (g, self.tick_entry(g), bi, ci))
        })
    }

    /// Where tick `gen` (retained) lies in `ticks`: one tick a generation is the rule, so
    /// its distance from the oldest, unless a generation was skipped.
    fn tick_entry(&self, gen: u64) -> u32 {
        let first = self.ticks.front().map_or(0, |(g, _)| *g);
        let guess = gen.wrapping_sub(first) as usize;
        if self.ticks.get(guess).is_some_and(|(g, _)| *g == gen) {
            return guess as u32;
        }
        self.ticks.partition_point(|(t, _)| *t < gen) as u32
    }

    /// The cell events at `(tick entry, batch, index)`, as [`History::since`] named them.
    pub(super) fn events(&self, ti: u32, bi: u32, ci: u32) -> &CellEvents {
        &self.ticks[ti as usize].1[bi as usize].cells[ci as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use zerocast::SendBuffer;

    fn batch(cells: &[Cell]) -> Arc<TickBatch> {
        Arc::new(TickBatch {
            cells: cells
                .iter()
                .map(|&cell| CellEvents {
                    cell,
                    buf: SendBuffer::from(Bytes::new()),
                    count: 0,
                })
                .collect(),
            ..TickBatch::default()
        })
    }

    #[test]
    fn a_cell_s_events_come_by_tick_and_go_with_their_tick() {
        let mut h = History::default();
        h.push(1, vec![batch(&[(0, 0), (1, 0)])]);
        h.push(2, vec![batch(&[(1, 0)]), batch(&[(0, 0)])]);
        h.push(4, vec![batch(&[(0, 0)])]);
        let of = |h: &History, c, since| h.since(c, since).collect::<Vec<_>>();
        assert_eq!(
            of(&h, (0, 0), 0),
            vec![(1, 0, 0, 0), (2, 1, 1, 0), (4, 2, 0, 0)]
        );
        assert_eq!(of(&h, (0, 0), 2), vec![(4, 2, 0, 0)]);
        assert_eq!(of(&h, (1, 0), 1), vec![(2, 1, 0, 0)]);
        assert!(of(&h, (5, 5), 0).is_empty());
        assert_eq!(h.events(1, 1, 0).cell, (0, 0));
        h.forget_upto(2);
        assert_eq!(of(&h, (0, 0), 0), vec![(4, 0, 0, 0)]);
        assert!(of(&h, (1, 0), 0).is_empty());
        assert!(!h.index.contains_key(&(1, 0)), "no empty lists");
        assert_eq!(h.ticks().count(), 1);
    }
}
