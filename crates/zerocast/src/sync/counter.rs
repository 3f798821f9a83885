//! Counters cheap enough for the hot path.
//!
//! - [`Striped`]: many threads add, few read. Each thread adds to its own cache-line-padded
//!   slot, a reader sums the slots, so no cache line bounces between cores.
//! - [`Counter`] and [`Histogram`]: one thread writes (the worker that owns them), any thread
//!   reads. A write is a relaxed load and a relaxed store, not a read-modify-write: no `lock`
//!   prefix, no fence. The single-writer rule is what makes the unsynchronised
//!   load-then-store exact; readers see each value whole (atomics never tear).

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

/// Keeps a value on its own cache line (128 bytes: adjacent-line prefetch pairs lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A counter that many threads add to and few read. Reads are a sum of relaxed loads: exact
/// once writers are quiescent, approximate while they run.
#[derive(Debug)]
pub struct Striped {
    slots: [Padded<AtomicI64>; STRIPES],
}

impl Striped {
    /// A zeroed counter.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: Padded<AtomicI64> = Padded(AtomicI64::new(0));
        Self {
            slots: [ZERO; STRIPES],
        }
    }

    #[inline]
    fn slot(&self) -> &AtomicI64 {
        thread_local! {
            static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let i = STRIPE.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
            }
            s.get()
        });
        &self.slots[i].0
    }

    /// Adds `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.slot().fetch_add(n, Ordering::Relaxed);
    }

    /// The current sum.
    pub fn get(&self) -> i64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl Default for Striped {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter written by one thread only (its owner) and read by any.
///
/// Invariant: only the owning thread calls [`add`](Counter::add) or [`set`](Counter::set).
/// Two writers would lose updates (the add is a load and a store, not an atomic increment).
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Owner only: adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Owner only: sets the value (a gauge).
    #[inline]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Any thread: the value.
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Buckets of a histogram ([`HistogramSnapshot`]): bucket `i` counts values in `[2^(i-1), 2^i)` (bucket 0: the
/// value 0), the last bucket everything from `2^(BUCKETS-2)` up.
pub const BUCKETS: usize = 40;

/// A histogram of powers of two, written by one thread only and read by any. Recording is a
/// leading-zero count and two single-writer adds. Resolution is a factor of two, which is
/// what an operator needs of a tick duration or a write size: whether it is 1 ms or 10 ms,
/// 100 bytes or 10 KB.
///
/// Invariant: as for [`Counter`], only the owning thread records.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: [Counter; BUCKETS],
    sum: Counter,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum: Counter::default(),
        }
    }
}

impl Histogram {
    /// Owner only: records one value.
    #[inline]
    pub(crate) fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].add(1);
        self.sum.add(v);
    }

    /// Any thread: a copy.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].get()),
            sum: self.sum.get(),
        }
    }
}

/// The bucket holding `v`.
#[inline]
pub(crate) fn bucket_of(v: u64) -> usize {
    ((u64::BITS - v.leading_zeros()) as usize).min(BUCKETS - 1)
}

/// A point-in-time copy of a histogram: counts per power-of-two bucket and the sum of the
/// values recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `buckets[i]` counts the values below `2^i` and at least `2^(i-1)` (bucket 0: zeros).
    pub buckets: [u64; BUCKETS],
    /// Sum of the values recorded.
    pub sum: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum: 0,
        }
    }
}

impl HistogramSnapshot {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Exclusive upper bound of bucket `i` (`u64::MAX` for the last).
    pub fn upper_bound(i: usize) -> u64 {
        if i + 1 >= BUCKETS {
            u64::MAX
        } else {
            1u64 << i
        }
    }

    /// Adds `other`'s counts (for sums over workers).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum += other.sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_sums_across_threads() {
        let c = std::sync::Arc::new(Striped::new());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(1);
                    }
                    c.add(-500);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(c.get(), 2000);
    }

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        let h = Histogram::default();
        for v in [0, 1, 2, 3, 4, 1000, u64::MAX] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 7);
        assert_eq!(s.buckets[0], 1, "zero");
        assert_eq!(s.buckets[1], 1, "1 is in [1, 2)");
        assert_eq!(s.buckets[2], 2, "2 and 3 are in [2, 4)");
        assert_eq!(s.buckets[3], 1, "4 is in [4, 8)");
        assert_eq!(s.buckets[10], 1, "1000 is in [512, 1024)");
        assert_eq!(s.buckets[BUCKETS - 1], 1, "the rest");
        assert_eq!(HistogramSnapshot::upper_bound(10), 1024);
    }
}
