//! Synchronisation facade: std types normally, loom's under `cfg(loom)` so the concurrent core
//! (the send hand-off in [`crate::session::queue`]) runs unchanged under the model checker.
//!
//! Only the types the modelled code uses go through here; counters and the event loop use std
//! directly because the model leaves them out (see `docs/DESIGN.md`).

pub(crate) mod counter;

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex, MutexGuard,
};

/// Locks `m`, ignoring poison: every critical section in the engine leaves its data
/// consistent even if a panic unwinds through it (they are single pushes and swaps).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
