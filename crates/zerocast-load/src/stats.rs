//! What the generator counts while it runs, and the measurement window.
//!
//! Every message carries its send time (for open-loop pacing: its *scheduled* send time).
//! A reply or delivery is counted in the throughput when it arrives inside the window; its
//! latency is recorded when the message was sent inside the window, however late it arrives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use hdrhistogram::Histogram;
use zerocast::metrics::Striped;

use crate::verdict::Unexpected;

/// Largest latency recorded exactly (60 s); larger values are clamped to it.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// The generator's counters. Counters are striped (no cache line shared between threads);
/// the histogram sits behind a mutex that only the engine's workers take.
pub struct Stats {
    window_start: AtomicU64,
    window_end: AtomicU64,
    /// The window's latencies, and those recorded since the last
    /// [`take_interval`](Self::take_interval) (for per-second figures).
    latency: Mutex<(Histogram<u64>, Histogram<u64>)>,
    /// Messages sent, whole run and inside the window.
    pub(crate) sent: Striped,
    pub(crate) sent_in_window: Striped,
    /// Replies (echo) or deliveries (broadcast), whole run and inside the window.
    pub(crate) received: Striped,
    pub(crate) received_in_window: Striped,
    /// Frames that were not what was sent (wrong size, id or content).
    pub(crate) corrupt: Striped,
    /// The first of them, to tell what the server speaks instead.
    pub(crate) first_unexpected: OnceLock<Unexpected>,
    /// Sessions that opened.
    pub(crate) connected: Striped,
    /// Sessions that ended before the generator stopped them.
    pub(crate) disconnects: Striped,
    pub(crate) disconnect_reasons: Mutex<BTreeMap<String, u64>>,
    /// Delay between a message's scheduled time and its actual send (open loop).
    lag: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// No window yet: nothing is counted as measured until [`set_window`](Self::set_window).
    pub fn new() -> Self {
        Self {
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            latency: Mutex::new((new_histogram(), new_histogram())),
            sent: Striped::new(),
            sent_in_window: Striped::new(),
            received: Striped::new(),
            received_in_window: Striped::new(),
            corrupt: Striped::new(),
            first_unexpected: OnceLock::new(),
            connected: Striped::new(),
            disconnects: Striped::new(),
            disconnect_reasons: Mutex::new(BTreeMap::new()),
            lag: Mutex::new(new_histogram()),
        }
    }

    /// Sets the measurement window to `[start, end]`, both fixed in advance: whether a message
    /// is inside depends only on its stamps, never on when a thread saw the window close.
    pub fn set_window(&self, start: u64, end: u64) {
        self.window_end.store(end, Ordering::Release);
        self.window_start.store(start, Ordering::Release);
    }

    #[inline]
    fn in_window(&self, t: u64) -> bool {
        t >= self.window_start.load(Ordering::Acquire)
            && t <= self.window_end.load(Ordering::Acquire)
    }

    /// A message stamped `stamp` was sent.
    #[inline]
    pub fn on_send(&self, stamp: u64) {
        self.sent.add(1);
        if self.in_window(stamp) {
            self.sent_in_window.add(1);
        }
    }

    /// A reply (or delivery) of a message stamped `stamp` arrived at `now`.
    #[inline]
    pub fn on_receive(&self, stamp: u64, now: u64) {
        self.received.add(1);
        if self.in_window(now) {
            self.received_in_window.add(1);
        }
        if self.in_window(stamp) {
            let ns = now.saturating_sub(stamp).clamp(1, MAX_LATENCY_NS);
            let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            h.0.saturating_record(ns);
            h.1.saturating_record(ns);
        }
    }

    /// A delivery arrived at `now` whose send time is unknown: throughput only.
    #[inline]
    pub fn on_delivery(&self, now: u64) {
        self.received.add(1);
        if self.in_window(now) {
            self.received_in_window.add(1);
        }
    }

    /// Notes how late the scheduler sent a message scheduled at `stamp` (open loop).
    pub fn on_lag(&self, stamp: u64, ns: u64) {
        if self.in_window(stamp) {
            self.lag
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .saturating_record(ns.clamp(1, MAX_LATENCY_NS));
        }
    }

    /// A copy of the scheduler lag histogram (nanoseconds).
    pub fn lag(&self) -> Histogram<u64> {
        self.lag.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A copy of the latency histogram (nanoseconds).
    pub fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The latencies recorded since the last call (nanoseconds), and a fresh start.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let taken = h.1.clone();
        h.1.reset();
        taken
    }

    pub(crate) fn note_disconnect(&self, reason: String) {
        self.disconnects.add(1);
        *self
            .disconnect_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// An empty latency histogram: 1 ns to 60 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_decides_what_is_measured() {
        let s = Stats::new();
        s.on_send(5);
        s.on_receive(5, 10);
        assert_eq!(s.received.get(), 1);
        assert_eq!(s.received_in_window.get(), 0);
        s.set_window(100, 200);
        s.on_send(150);
        s.on_send(201);
        // Sent before the window, answered inside it: counts as throughput, not as latency.
        s.on_receive(90, 120);
        // Sent inside, answered after the window closed: a latency sample, not throughput.
        s.on_receive(150, 1_000);
        assert_eq!(s.sent_in_window.get(), 1);
        assert_eq!(s.received_in_window.get(), 1);
        let h = s.latency();
        assert_eq!(h.len(), 1);
        assert_eq!(h.value_at_quantile(1.0), h.highest_equivalent(850));
    }
}
