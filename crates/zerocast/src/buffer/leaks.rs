//! Leak tracking: where each live [`SendBuffer`](super::SendBuffer) came from.
//!
//! Off by default (one relaxed load per buffer created or dropped). When on, every handle
//! records the source location that created its buffer; clones inherit the original location,
//! so a report names the code that encoded the message, not the broadcast loop that shared it.
//! The integration tests turn it on, and their leak check prints the origins of whatever is
//! still alive.

use std::collections::BTreeMap;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Live handles by the memory they view: `(address, length)` → one origin per handle.
type Live = BTreeMap<(usize, usize), Vec<&'static Location<'static>>>;
static LIVE: Mutex<Live> = Mutex::new(BTreeMap::new());

/// Turns tracking on or off for the whole process. Buffers created while it was off are not
/// tracked.
pub fn track_leaks(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Origins of the tracked buffers still alive, with how many handles each has, most first.
pub fn live_buffer_origins() -> Vec<(String, usize)> {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let mut by_origin: BTreeMap<String, usize> = BTreeMap::new();
    for origins in live.values() {
        for o in origins {
            *by_origin.entry(o.to_string()).or_default() += 1;
        }
    }
    let mut v: Vec<_> = by_origin.into_iter().collect();
    v.sort_by_key(|o| std::cmp::Reverse(o.1));
    v
}

#[inline]
pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A new handle viewing `key`; a clone inherits the origin already recorded for the same view.
pub(super) fn created(key: (usize, usize), origin: &'static Location<'static>, clone: bool) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let entry = live.entry(key).or_default();
    let origin = if clone {
        entry.first().copied().unwrap_or(origin)
    } else {
        origin
    };
    entry.push(origin);
}

/// A handle viewing `key` dropped.
pub(super) fn dropped(key: (usize, usize)) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(origins) = live.get_mut(&key) {
        origins.pop();
        if origins.is_empty() {
            live.remove(&key);
        }
    }
}
