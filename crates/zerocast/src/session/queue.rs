//! The queue a session keeps for senders on threads that are not engine workers (an
//! application thread), and its "send registered" hand-off. Senders on the session's own
//! worker queue directly in the worker's output ([`super::local`]); senders on another worker
//! batch their sends per target worker. Sans-IO, generic over the queued item so the loom
//! model runs it with plain integers.
//!
//! # Protocol
//! Producers on any thread [`push`](SendQueue::push). The producer that flips `registered`
//! from false to true owns the duty to get the queue drained (the engine posts the session to
//! its worker); every other producer just leaves its item queued. At most one drainer exists at
//! a time: the one that holds the flag. The drainer [`take`](SendQueue::take)s everything
//! queued into its own batch, writes it (possibly over several writable events), and when the
//! batch is done calls [`finish`](SendQueue::finish), which clears the flag and then looks at the
//! queue again: if something arrived meanwhile and the drainer wins the flag back, it drains
//! again.
//!
//! # Why no wake-up is lost
//! A producer whose swap saw `true` relies on the current drainer. Its push (under the mutex)
//! precedes its swap. The drainer clears the flag *before* it locks the queue to look. Either
//! the drainer's lock comes after the producer's push (it sees the item), or before it — then
//! the drainer's clear happens-before the producer's swap, which therefore reads `false` and the
//! producer schedules a drain itself. The reverse order (look, then clear) loses items; the loom
//! model keeps that broken variant as a test that must fail.
//!
//! # Closing
//! [`close`](SendQueue::close) marks the queue closed under its lock and returns what was
//! queued; later pushes hand their item straight back, so nothing is stranded in a dead queue.

use std::collections::VecDeque;

use crate::sync::{lock, AtomicBool, Mutex, Ordering};

/// What [`SendQueue::push`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push<T> {
    /// Queued; a drainer is already responsible.
    Queued,
    /// Queued, and the caller won the flag: it must get the queue drained.
    Schedule,
    /// The queue is closed; the item is handed back.
    Closed(T),
    /// Queuing would exceed the byte limit; nothing was queued.
    Overflow,
}

struct Inner<T> {
    items: VecDeque<T>,
    /// Bytes of the items queued. With the owner's own queued bytes, never above `limit`.
    bytes: usize,
    closed: bool,
}

/// A multi-producer queue drained by one owner at a time.
pub(crate) struct SendQueue<T> {
    inner: Mutex<Inner<T>>,
    registered: AtomicBool,
    limit: usize,
}

impl<T> SendQueue<T> {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with_limit(usize::MAX)
    }

    /// A queue refusing pushes that would take its unwritten bytes above `limit`.
    pub(crate) fn with_limit(limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            registered: AtomicBool::new(false),
            limit,
        }
    }

    /// Queues `items` contiguously (no other producer's item lands between them); `weight`
    /// is their byte length, and `held` the bytes the owner already holds for this session,
    /// both counted against the limit.
    pub(crate) fn push(
        &self,
        items: impl IntoIterator<Item = T>,
        weight: usize,
        held: usize,
    ) -> Push<()> {
        {
            let mut q = lock(&self.inner);
            if q.closed {
                return Push::Closed(());
            }
            if q.bytes.saturating_add(weight).saturating_add(held) > self.limit {
                return Push::Overflow;
            }
            q.items.extend(items);
            q.bytes += weight;
        }
        // AcqRel: the Release half publishes nothing the mutex has not already published, but
        // pairs with `finish`'s clear so that the winner observes the previous drainer's writes
        // to the session (its batch bookkeeping) before it starts draining.
        if self.registered.swap(true, Ordering::AcqRel) {
            Push::Queued
        } else {
            Push::Schedule
        }
    }

    /// Moves everything queued to the back of `batch`; the bytes then count where the drainer
    /// puts them. Only the flag holder calls this.
    pub(crate) fn take(&self, batch: &mut VecDeque<T>) {
        let mut q = lock(&self.inner);
        q.bytes = 0;
        if batch.is_empty() {
            // O(1): both deques keep their capacity, so steady state allocates nothing.
            std::mem::swap(&mut q.items, batch);
        } else {
            batch.extend(q.items.drain(..));
        }
    }

    /// The drainer's batch is written. Clears the flag, then re-checks the queue. Returns true
    /// if items arrived meanwhile and the caller won the flag back: it must drain again.
    pub(crate) fn finish(&self) -> bool {
        // Release: a producer that later swaps and reads `false` sees this drainer's state.
        // The clear must come before the look below; see the module docs.
        //
        // An RMW rather than a plain store: equivalent here, but loom 0.7 does not enforce RMW
        // atomicity against concurrent plain stores (tokio-rs/loom#254, #389) and reports
        // executions no real machine can produce.
        self.registered.swap(false, Ordering::AcqRel);
        let pending = !lock(&self.inner).items.is_empty();
        pending && !self.registered.swap(true, Ordering::AcqRel)
    }

    /// Broken on purpose: looks at the queue *before* clearing the flag. Kept for the loom test
    /// that proves the model catches a lost wake-up.
    #[cfg(all(test, loom))]
    pub(crate) fn finish_broken(&self) -> bool {
        let pending = !lock(&self.inner).items.is_empty();
        if pending {
            return true;
        }
        self.registered.swap(false, Ordering::AcqRel);
        false
    }

    /// Takes the flag as the owner (the loom model starts with a drain in flight).
    #[cfg(all(test, loom))]
    pub(crate) fn try_register(&self) -> bool {
        !self.registered.swap(true, Ordering::AcqRel)
    }

    /// Closes the queue; returns its items. Later pushes get [`Push::Closed`].
    pub(crate) fn close(&self) -> VecDeque<T> {
        let mut q = lock(&self.inner);
        q.closed = true;
        q.bytes = 0;
        std::mem::take(&mut q.items)
    }

    /// Bytes queued and not yet taken.
    pub(crate) fn queued_bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn first_push_schedules_then_queues() {
        let q = SendQueue::new();
        assert_eq!(q.push([1], 1, 0), Push::Schedule);
        assert_eq!(q.push([2, 3], 2, 0), Push::Queued);
        assert_eq!(q.queued_bytes(), 3);
        let mut batch = VecDeque::new();
        q.take(&mut batch);
        assert_eq!(batch, [1, 2, 3]);
        assert_eq!(
            q.queued_bytes(),
            0,
            "taken bytes count where the drainer holds them"
        );
        assert!(!q.finish());
        assert_eq!(q.push([4], 1, 0), Push::Schedule);
    }

    #[test]
    fn finish_rearms_when_items_arrived() {
        let q = SendQueue::new();
        assert_eq!(q.push([1], 1, 0), Push::Schedule);
        let mut batch = VecDeque::new();
        q.take(&mut batch);
        assert_eq!(q.push([2], 1, 0), Push::Queued);
        assert!(q.finish(), "drainer must continue with item 2");
    }

    #[test]
    fn push_over_the_limit_is_refused_whole() {
        let q = SendQueue::with_limit(10);
        assert_eq!(q.push([1, 2], 8, 0), Push::Schedule);
        assert_eq!(q.push([3], 3, 0), Push::Overflow);
        assert_eq!(q.queued_bytes(), 8);
        let mut batch = VecDeque::new();
        q.take(&mut batch);
        assert_eq!(
            q.push([3], 3, 8),
            Push::Overflow,
            "what the owner holds counts too"
        );
        assert_eq!(q.push([3], 3, 7), Push::Queued);
    }

    #[test]
    fn closed_queue_returns_items() {
        let q = SendQueue::new();
        q.push([1], 1, 0);
        assert_eq!(q.close(), [1]);
        assert_eq!(q.push([2], 1, 0), Push::Closed(()));
    }
}

/// The loom model of the hand-off. Run with
/// `RUSTFLAGS="--cfg loom" cargo test -p zerocast --release --lib loom`.
///
/// Modelled: the flag, the queue mutex, concurrent producers, and a drainer that already holds
/// the flag (a send in flight). Each producer that wins the flag drains itself, which is the
/// same hand-off the worker performs. Left out: the worker inbox and the socket.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;

    type Log = Arc<loom::sync::Mutex<Vec<String>>>;

    fn drain(q: &SendQueue<u32>, drained: &AtomicUsize, broken: bool, who: &str, log: &Log) {
        let mut batch = VecDeque::new();
        loop {
            q.take(&mut batch);
            log.lock().unwrap().push(format!("{who} took {:?}", batch));
            drained.fetch_add(batch.len(), Ordering::SeqCst);
            batch.clear();
            let again = if broken {
                q.finish_broken()
            } else {
                q.finish()
            };
            log.lock().unwrap().push(format!("{who} finish -> {again}"));
            if !again {
                break;
            }
        }
    }

    fn model(broken: bool) {
        loom::model(move || {
            let q = Arc::new(SendQueue::<u32>::new());
            let drained = Arc::new(AtomicUsize::new(0));
            let log: Log = Arc::new(loom::sync::Mutex::new(Vec::new()));
            // A drain is in flight when the producers start.
            assert!(q.try_register());
            let producers: Vec<_> = (0..2)
                .map(|i| {
                    let (q, drained, log) = (q.clone(), drained.clone(), log.clone());
                    loom::thread::spawn(move || {
                        let who = format!("producer {i}");
                        let r = q.push([i], 1, 0);
                        log.lock().unwrap().push(format!("{who} push -> {r:?}"));
                        if r == Push::Schedule {
                            drain(&q, &drained, broken, &who, &log);
                        }
                    })
                })
                .collect();
            drain(&q, &drained, broken, "owner", &log);
            for p in producers {
                p.join().unwrap();
            }
            let n = drained.load(Ordering::SeqCst);
            if n != 2 && !broken {
                eprintln!("{:#?}", log.lock().unwrap());
            }
            assert_eq!(
                n, 2,
                "an item was left in the queue with nobody scheduled to drain it"
            );
        });
    }

    #[test]
    fn loom_send_handoff_loses_nothing() {
        model(false);
    }

    #[test]
    #[should_panic(expected = "nobody scheduled")]
    fn loom_broken_handoff_is_caught() {
        model(true);
    }
}
