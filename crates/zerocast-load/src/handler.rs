//! The generator's handler: what its client sessions send and how replies are matched.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BufMut;
use zerocast::frame::{Header, HEADER_LEN};
use zerocast::{CloseReason, Context, Frame, Handler, SendBuffer, Session};
use zerocast_servers::SENDER_ID_LEN;

use crate::bots::Bots;
use crate::clock::{now_ns, since};
use crate::config::Scenario;
use crate::run::PROBE_ID;
use crate::stats::Stats;
use crate::verdict::Unexpected;

/// Per-connection state of the raw scenario: the byte stream has no frame boundaries, so
/// replies are matched to sends by counting bytes, oldest send first.
#[derive(Default)]
pub(crate) struct RawConn {
    /// Bytes of the current (incomplete) reply received so far.
    pub(crate) partial: usize,
    /// Send stamps of messages not yet fully echoed, in send order.
    pub(crate) stamps: VecDeque<u64>,
}

/// Serves the generator's own client sessions.
pub(crate) struct LoadHandler {
    pub(crate) scenario: Scenario,
    pub(crate) size: usize,
    /// Messages in flight per connection (closed loop), 0 in open loop.
    pub(crate) depth: usize,
    pub(crate) stats: Arc<Stats>,
    /// Set when the window has closed: closed-loop sessions stop sending, and sessions that
    /// end are no longer counted as disconnects.
    pub(crate) stopping: AtomicBool,
    /// Raw scenario: state per session, indexed by session id - 1 (the generator's engine
    /// only connects, so its ids are 1..=connections).
    pub(crate) raw: Vec<Mutex<RawConn>>,
    /// Last time something arrived, for the broadcast drain.
    pub(crate) last_receive: AtomicU64,
    /// Open loop: the schedule, run from the workers' ticks.
    pub(crate) open_loop: Option<OpenLoop>,
    /// World scenario: the bots.
    pub(crate) bots: Option<Bots>,
    /// Set when the run is over: the datagram receiver stops.
    pub(crate) done: AtomicBool,
}

/// An open-loop schedule: message `k` goes to session `k % n` at `start + k * interval`.
/// Worker `w` sends the messages with `k % workers == w` from its tick, on its own thread (the
/// generator's engine assigns sessions to workers round-robin, so with one worker, or as many
/// sessions per worker, each send stays on the session's worker).
pub(crate) struct OpenLoop {
    pub(crate) interval_ns: f64,
    pub(crate) workers: usize,
    /// Set when the connect ramp is done: the sessions and the schedule's start.
    pub(crate) sessions: OnceLock<(Vec<Session>, u64)>,
    /// Next message number per worker; only that worker touches its slot.
    pub(crate) next: Vec<AtomicU64>,
}

impl OpenLoop {
    pub(crate) fn new(per_sec: f64, workers: usize) -> Self {
        Self {
            interval_ns: 1e9 / per_sec,
            workers,
            sessions: OnceLock::new(),
            next: (0..workers as u64).map(AtomicU64::new).collect(),
        }
    }

    /// The tick period. Busy-polling workers check the clock every turn, so a 1 us tick
    /// means "every turn". Sleeping workers wake on a timer: half the interval between one
    /// worker's messages, kept between 20 us and 1 ms (timer interrupts are dear in a VM). A
    /// message goes out at the first tick at or after its scheduled time; the delay is inside
    /// the measured latency and reported as the scheduler lag.
    pub(crate) fn tick(&self, busy_poll: bool) -> Duration {
        if busy_poll {
            return Duration::from_micros(1);
        }
        let ns = (self.interval_ns * self.workers as f64 / 2.0).clamp(20_000.0, 1_000_000.0);
        Duration::from_nanos(ns as u64)
    }
}

impl LoadHandler {
    /// Sends one message stamped `stamp` (the actual or the scheduled send time).
    pub(crate) fn send_probe(&self, session: &Session, stamp: u64) {
        let size = self.size;
        if self.scenario == Scenario::Raw {
            let Some(conn) = self.raw_conn(session) else {
                return;
            };
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            self.send_raw(session, &mut conn, stamp);
            return;
        }
        let header = Header::for_payload(PROBE_ID, size - HEADER_LEN).expect("size validated");
        let buf = SendBuffer::build(size, |b| {
            b.put_slice(&header.to_bytes());
            b.put_u64_le(stamp);
            b.put_bytes(0, size - HEADER_LEN - 8);
        });
        if session.send(buf).is_ok() {
            self.stats.on_send(stamp);
        }
    }

    /// Sends one raw message; the caller holds the session's raw state, so stamps are queued
    /// in the order the bytes go out.
    pub(crate) fn send_raw(&self, session: &Session, conn: &mut RawConn, stamp: u64) {
        let size = self.size;
        let buf = SendBuffer::build(size, |b| {
            b.put_u64_le(stamp);
            b.put_bytes(0, size - 8);
        });
        if session.send(buf).is_ok() {
            conn.stamps.push_back(stamp);
            self.stats.on_send(stamp);
        }
    }

    pub(crate) fn raw_conn(&self, session: &Session) -> Option<&Mutex<RawConn>> {
        let i = usize::try_from(session.id().get().checked_sub(1)?).ok()?;
        self.raw.get(i)
    }

    pub(crate) fn closed_loop(&self) -> bool {
        self.depth > 0 && !self.stopping.load(Ordering::Relaxed)
    }

    /// A datagram for bot `i` arrived at `now`.
    pub(crate) fn on_datagram(&self, i: usize, d: &[u8], now: u64) {
        let Some(bots) = &self.bots else { return };
        match crate::datagrams::moves(d) {
            Some(moves) => {
                for m in moves {
                    bots.moved_by_datagram(i, m, now, &self.stats);
                }
            }
            None => {
                self.stats.corrupt.add(1);
            }
        }
    }

    /// A reply that does not belong to the scenario (`frame`: what arrived, if it was a frame).
    pub(crate) fn corrupt(&self, session: &Session, frame: Option<&Frame<'_>>) {
        self.stats.corrupt.add(1);
        if let Some(f) = frame {
            let _ = self.stats.first_unexpected.set(Unexpected {
                id: f.id(),
                len: f.as_slice().len(),
            });
        }
        session.close("corrupt reply");
    }

    pub(crate) fn on_raw(&self, session: &Session, mut bytes: usize, now: u64) {
        let Some(conn) = self.raw_conn(session) else {
            return;
        };
        let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        while conn.partial + bytes >= self.size {
            bytes -= self.size - conn.partial;
            conn.partial = 0;
            let Some(stamp) = conn.stamps.pop_front() else {
                drop(conn);
                return self.corrupt(session, None);
            };
            self.stats.on_receive(stamp, now);
            if self.closed_loop() {
                self.send_raw(session, &mut conn, now_ns());
            }
        }
        conn.partial += bytes;
    }
}

pub(crate) fn stamp_at(payload: &[u8], at: usize) -> Option<u64> {
    let bytes = payload.get(at..at + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

impl Handler for LoadHandler {
    type Worker = ();
    type Session = ();

    fn on_connect(&self, cx: Context<'_, Self>) {
        let session = cx.session;
        self.stats.connected.add(1);
        if let Some(bots) = &self.bots {
            return bots.on_connect(session);
        }
        let n = match self.scenario {
            Scenario::Echo | Scenario::Raw => self.depth,
            Scenario::Idle => 1,
            Scenario::Broadcast | Scenario::World => 0,
        };
        for _ in 0..n {
            self.send_probe(session, now_ns());
        }
    }

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let session = cx.session;
        let now = now_ns();
        self.last_receive.store(now, Ordering::Relaxed);
        match self.scenario {
            Scenario::Raw => self.on_raw(session, frame.as_slice().len(), now),
            Scenario::Echo | Scenario::Idle => {
                let stamp = stamp_at(frame.payload(), 0);
                match stamp {
                    Some(stamp)
                        if frame.id() == PROBE_ID && frame.as_slice().len() == self.size =>
                    {
                        self.stats.on_receive(stamp, now);
                        if self.closed_loop() {
                            self.send_probe(session, now_ns());
                        }
                    }
                    _ => self.corrupt(session, Some(&frame)),
                }
            }
            Scenario::World => {
                let ok = self
                    .bots
                    .as_ref()
                    .is_some_and(|b| b.on_frame(session, frame, now, &self.stats));
                if !ok {
                    self.corrupt(session, Some(&frame));
                }
            }
            Scenario::Broadcast => {
                let stamp = stamp_at(frame.payload(), SENDER_ID_LEN);
                match stamp {
                    Some(stamp)
                        if frame.id() == PROBE_ID
                            && frame.as_slice().len() == self.size + SENDER_ID_LEN =>
                    {
                        self.stats.on_receive(stamp, now);
                    }
                    _ => self.corrupt(session, Some(&frame)),
                }
            }
        }
    }

    fn on_disconnect(&self, _cx: Context<'_, Self>, reason: &CloseReason) {
        if !self.stopping.load(Ordering::Acquire) {
            self.stats.note_disconnect(reason.to_string());
        }
    }

    fn on_tick(&self, _: &mut (), tick: zerocast::Tick) {
        let worker = tick.worker;
        let Some(open) = &self.open_loop else { return };
        let Some((sessions, start)) = open.sessions.get() else {
            return;
        };
        if sessions.is_empty() || self.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Some(slot) = open.next.get(worker) else {
            return;
        };
        let now = now_ns();
        let mut k = slot.load(Ordering::Relaxed);
        loop {
            let due = start + (k as f64 * open.interval_ns) as u64;
            if due > now {
                break;
            }
            self.stats.on_lag(due, since(due, now));
            let session = &sessions[(k % sessions.len() as u64) as usize];
            match &self.bots {
                // A bot not welcomed yet skips its turn.
                Some(bots) => {
                    bots.act(session, due, &self.stats);
                }
                None => self.send_probe(session, due),
            }
            k += open.workers as u64;
        }
        slot.store(k, Ordering::Relaxed);
    }
}
