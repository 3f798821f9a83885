//! Lock-order checking: the classic game-server "deadlock profiler". Game state behind several
//! locks deadlocks when two threads take two of them in opposite orders; this reports the
//! second order the first time it is *used*, before the two threads ever meet.
//!
//! [`OrderedMutex`] is a `std::sync::Mutex` with a name. With debug assertions on (debug builds
//! and tests) every acquisition is checked: each thread keeps the stack of ordered locks it
//! holds, and a process-wide graph records "B was taken while A was held" as an edge A → B.
//! Taking B while holding A when B → … → A is already in the graph is an inversion: the
//! handler gets both orders with the locks' names and the source locations where each order
//! was first seen, and by default panics with that report. Without debug assertions the
//! checks compile away: the wrapper is the mutex and a name.
//!
//! `tracing-mutex` does the same graph check, but its reports carry backtraces rather than
//! lock names, and names are what a game developer recognises ("zone" then "inventory").

use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// A detected inversion: `first` is the order already recorded, `second` the acquisition
/// that would close the cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inversion {
    /// The lock order seen first, outermost first, and where its last step was taken.
    pub first: (Vec<&'static str>, String),
    /// The acquisition that contradicts it: the lock held and the lock being taken, and where.
    pub second: (Vec<&'static str>, String),
}

impl fmt::Display for Inversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "potential deadlock: locks taken in the order {} at {}, but earlier in the order {} at {}",
            self.second.0.join(" -> "),
            self.second.1,
            self.first.0.join(" -> "),
            self.first.1
        )
    }
}

/// A named mutex whose acquisition order is checked in debug builds.
pub struct OrderedMutex<T> {
    inner: Mutex<T>,
    name: &'static str,
    #[cfg(debug_assertions)]
    id: usize,
}

/// Holds an [`OrderedMutex`]; releases it (and its place in the thread's stack) on drop.
pub struct OrderedGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    #[cfg(debug_assertions)]
    id: usize,
}

impl<T> OrderedMutex<T> {
    /// A mutex named `name` (shown in inversion reports).
    pub fn new(name: &'static str, value: T) -> Self {
        Self {
            inner: Mutex::new(value),
            name,
            #[cfg(debug_assertions)]
            id: checker::register(name),
        }
    }

    /// The name given at creation.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Locks, checking the order first in debug builds. A poisoned lock is recovered: the
    /// data of a panicked handler is the application's to judge, as in the engine.
    #[track_caller]
    pub fn lock(&self) -> OrderedGuard<'_, T> {
        #[cfg(debug_assertions)]
        checker::before_lock(self.id, std::panic::Location::caller());
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        #[cfg(debug_assertions)]
        checker::locked(self.id);
        OrderedGuard {
            guard,
            #[cfg(debug_assertions)]
            id: self.id,
        }
    }
}

impl<T> std::ops::Deref for OrderedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for OrderedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for OrderedGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        checker::unlocked(self.id);
    }
}

/// Replaces what happens on an inversion (default: panic with the report). Returns the
/// previous handler. Only active with debug assertions.
pub fn set_handler(handler: fn(&Inversion)) -> fn(&Inversion) {
    #[cfg(debug_assertions)]
    {
        checker::set_handler(handler)
    }
    #[cfg(not(debug_assertions))]
    {
        handler
    }
}

#[cfg(debug_assertions)]
mod checker {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::panic::Location;
    use std::sync::Mutex;

    use super::Inversion;

    struct Graph {
        names: Vec<&'static str>,
        /// `edges[a][b]`: where `b` was first taken while `a` was held.
        edges: BTreeMap<usize, BTreeMap<usize, &'static Location<'static>>>,
        handler: fn(&Inversion),
    }

    static GRAPH: Mutex<Graph> = Mutex::new(Graph {
        names: Vec::new(),
        edges: BTreeMap::new(),
        handler: panic_with,
    });

    fn panic_with(inversion: &Inversion) {
        panic!("{inversion}");
    }

    thread_local! {
        static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    fn graph() -> std::sync::MutexGuard<'static, Graph> {
        GRAPH.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn register(name: &'static str) -> usize {
        let mut g = graph();
        g.names.push(name);
        g.names.len() - 1
    }

    pub(super) fn set_handler(handler: fn(&Inversion)) -> fn(&Inversion) {
        std::mem::replace(&mut graph().handler, handler)
    }

    /// A path from `from` to `to` in the graph, as lock ids, if there is one.
    fn path(g: &Graph, from: usize, to: usize) -> Option<Vec<usize>> {
        let mut stack = vec![vec![from]];
        let mut seen = vec![from];
        while let Some(p) = stack.pop() {
            let last = *p.last().expect("paths are non-empty");
            if last == to {
                return Some(p);
            }
            for &next in g.edges.get(&last).into_iter().flat_map(|e| e.keys()) {
                if !seen.contains(&next) {
                    seen.push(next);
                    let mut q = p.clone();
                    q.push(next);
                    stack.push(q);
                }
            }
        }
        None
    }

    pub(super) fn before_lock(id: usize, at: &'static Location<'static>) {
        let held: Vec<usize> = HELD.with(|h| h.borrow().clone());
        if held.is_empty() {
            return;
        }
        let mut report = None;
        {
            let mut g = graph();
            for &h in &held {
                if h == id || g.edges.get(&h).is_some_and(|e| e.contains_key(&id)) {
                    continue;
                }
                if let Some(p) = path(&g, id, h) {
                    // `id` -> ... -> `h` exists: taking `id` under `h` closes a cycle.
                    let last = g.edges[&p[p.len() - 2]][&p[p.len() - 1]];
                    report = Some((
                        Inversion {
                            first: (p.iter().map(|&i| g.names[i]).collect(), last.to_string()),
                            second: (vec![g.names[h], g.names[id]], at.to_string()),
                        },
                        g.handler,
                    ));
                    break;
                }
                g.edges.entry(h).or_default().insert(id, at);
            }
        }
        // Outside the graph's lock: the handler may panic.
        if let Some((inversion, handler)) = report {
            handler(&inversion);
        }
    }

    pub(super) fn locked(id: usize) {
        HELD.with(|h| h.borrow_mut().push(id));
    }

    pub(super) fn unlocked(id: usize) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&x| x == id) {
                h.remove(i);
            }
        });
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn an_inversion_is_reported_with_both_orders_before_any_deadlock() {
        let zone = OrderedMutex::new("zone", 0);
        let inventory = OrderedMutex::new("inventory", 0);
        {
            let _z = zone.lock();
            let _i = inventory.lock(); // zone -> inventory: recorded
        }
        {
            let _z = zone.lock();
            let _i = inventory.lock(); // the same order again: fine
        }
        // One thread, no contention: this could never deadlock now, and is reported anyway.
        let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _i = inventory.lock();
            let _z = zone.lock();
        }))
        .expect_err("the inversion is reported");
        let msg = report.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("order inventory -> zone") && msg.contains("order zone -> inventory"),
            "{msg}"
        );
        assert!(msg.contains("lockorder.rs"), "locations are named: {msg}");
        // The locks still work after the report (nothing was poisoned or left held).
        let _z = zone.lock();
        let _i = inventory.lock();
    }

    #[test]
    fn a_longer_cycle_names_every_lock_on_it() {
        let a = OrderedMutex::new("players", ());
        let b = OrderedMutex::new("grid", ());
        let c = OrderedMutex::new("chat", ());
        drop((a.lock(), b.lock()));
        {
            let _b = b.lock();
            let _c = c.lock();
        }
        let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _c = c.lock();
            let _a = a.lock();
        }))
        .expect_err("chat -> players closes players -> grid -> chat");
        let msg = report.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("players -> grid -> chat"), "{msg}");
        assert!(msg.contains("chat -> players"), "{msg}");
    }
}
