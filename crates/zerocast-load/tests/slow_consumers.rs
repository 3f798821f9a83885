//! Issue 6, item 1 at full scale: 1,000 sessions receive a 200-byte broadcast at 20 Hz and 50 of
//! them never read. The 50 are closed as slow consumers, the server's memory stays bounded, and
//! the healthy sessions are not held up by them.
//!
//! "Not held up" is judged by events, not by the clock (this VM's steal makes millisecond
//! latencies flaky): each broadcast carries the number of the tick that sent it, and a healthy
//! client notes, on arrival, how many ticks the server has begun since. A stalled client that
//! held up the server's writes would make deliveries arrive ticks late. Latency in
//! milliseconds (a `CLOCK_MONOTONIC` stamp in each broadcast) is printed for the reader only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BufMut;
use hdrhistogram::Histogram;
use socket2::{Domain, Protocol, Socket, Type};
use zerocast::{CloseReason, Context, Engine, Frame, Group, Handler, SendBuffer};
use zerocast_load::clock::now_ns;

const HEALTHY: usize = 950;
const STALLED: usize = 50;
const PAYLOAD: usize = 200;
const TICK: Duration = Duration::from_millis(50); // 20 Hz
const GRACE: Duration = Duration::from_secs(1); // T: how long a session may stay above soft
const SOFT: usize = 4 * 1024;

/// Broadcasts one stamped 200-byte frame to everyone on each tick.
#[derive(Default)]
struct Ticker {
    everyone: Group,
    slow_closed: AtomicU64,
    other_closed: AtomicU64,
    /// Ticks begun.
    ticks: Arc<AtomicU64>,
}

impl Handler for Ticker {
    type Worker = ();
    type Session = ();

    fn on_connect(&self, cx: Context<'_, Self>) {
        let session = cx.session;
        self.everyone.insert(session.clone());
    }

    fn on_frame(&self, _cx: Context<'_, Self>, _frame: Frame<'_>) {}

    fn on_disconnect(&self, cx: Context<'_, Self>, reason: &CloseReason) {
        let session = cx.session;
        self.everyone.remove(session.id());
        match reason {
            CloseReason::SlowConsumer => self.slow_closed.fetch_add(1, Ordering::SeqCst),
            CloseReason::Shutdown => 0,
            _ => self.other_closed.fetch_add(1, Ordering::SeqCst),
        };
    }

    fn on_tick(&self, _: &mut (), _tick: zerocast::Tick) {
        let tick = self.ticks.fetch_add(1, Ordering::SeqCst) + 1;
        let buf = SendBuffer::build(zerocast::frame::HEADER_LEN + PAYLOAD, |b| {
            b.put_u16_le((zerocast::frame::HEADER_LEN + PAYLOAD) as u16);
            b.put_u16_le(1);
            b.put_u64_le(now_ns());
            b.put_u64_le(tick);
            b.put_bytes(0, PAYLOAD - 16);
        });
        self.everyone.broadcast(&buf);
    }
}

/// The healthy clients: once `recording` is set, record every delivery's latency and how many
/// ticks the server began between sending it and its arrival.
struct Receiver {
    recording: AtomicBool,
    latency: Mutex<Histogram<u64>>,
    /// The server's ticks begun.
    ticks: Arc<AtomicU64>,
    /// Deliveries that arrived after the server began two or more further ticks.
    late: AtomicU64,
}

impl Handler for Receiver {
    type Worker = ();
    type Session = ();

    fn on_frame(&self, _cx: Context<'_, Self>, frame: Frame<'_>) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let payload = frame.payload();
        let stamp = u64::from_le_bytes(payload[..8].try_into().unwrap());
        let sent_at = u64::from_le_bytes(payload[8..16].try_into().unwrap());
        if self.ticks.load(Ordering::SeqCst) >= sent_at + 2 {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
        let ns = now_ns().saturating_sub(stamp).max(1);
        self.latency.lock().unwrap().saturating_record(ns);
    }
}

/// A client that never reads, with a small receive buffer so that the server's queue for it
/// fills quickly.
fn stalled_client(addr: SocketAddr) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    s
}

fn rss_bytes() -> u64 {
    zerocast_load::procfs::sample(None).unwrap().rss_bytes
}

struct Outcome {
    p50_us: f64,
    p99_us: f64,
    samples: u64,
    /// Deliveries two or more ticks late.
    late: u64,
    slow_closed: u64,
    other_closed: u64,
    /// Seconds from the last stalled client's connect until all of them were closed.
    stalled_closed_after: Option<f64>,
    rss_growth: u64,
}

fn run(stalled: usize) -> Outcome {
    let ticker = Arc::new(Ticker::default());
    let server = Engine::builder()
        .workers(1)
        .tick(TICK)
        .first_frame_timeout(None)
        .idle_timeout(None)
        .queued_bytes_limits(SOFT, 1024 * 1024, GRACE)
        .send_buffer(4096)
        .build(ticker.clone())
        .unwrap();
    let addr = server.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let receiver = Arc::new(Receiver {
        recording: AtomicBool::new(false),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()),
        ticks: ticker.ticks.clone(),
        late: AtomicU64::new(0),
    });
    let clients = Engine::builder()
        .workers(1)
        .build(receiver.clone())
        .unwrap();
    let rss_before = rss_bytes();
    let mut sessions = Vec::new();
    for _ in 0..HEALTHY {
        sessions.push(clients.connect(addr).unwrap());
    }
    let stalled: Vec<Socket> = (0..stalled).map(|_| stalled_client(addr)).collect();
    let stalled_at = Instant::now();
    let total = HEALTHY + stalled.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.sessions().len() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.sessions().len(), total, "every client connected");

    std::thread::sleep(Duration::from_secs(1)); // warm-up
    receiver.recording.store(true, Ordering::Relaxed);
    let mut stalled_closed_after = None;
    let mut rss_peak = rss_bytes();
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
        rss_peak = rss_peak.max(rss_bytes());
        if stalled_closed_after.is_none()
            && ticker.slow_closed.load(Ordering::SeqCst) as usize == stalled.len()
        {
            stalled_closed_after = Some(stalled_at.elapsed().as_secs_f64());
        }
    }
    receiver.recording.store(false, Ordering::Relaxed);
    // On a slow run (AddressSanitizer, a loaded machine) the stalled may fill their buffers
    // after the window: their closes are awaited, not timed.
    let late_deadline = Instant::now() + Duration::from_secs(20);
    while stalled_closed_after.is_none() && Instant::now() < late_deadline {
        if ticker.slow_closed.load(Ordering::SeqCst) as usize == stalled.len() {
            stalled_closed_after = Some(stalled_at.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = receiver.latency.lock().unwrap().clone();
    let outcome = Outcome {
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        samples: h.len(),
        late: receiver.late.load(Ordering::Relaxed),
        slow_closed: ticker.slow_closed.load(Ordering::SeqCst),
        other_closed: ticker.other_closed.load(Ordering::SeqCst),
        stalled_closed_after,
        rss_growth: rss_peak.saturating_sub(rss_before),
    };
    drop(stalled);
    drop(sessions);
    clients.shutdown();
    server.shutdown();
    let m = server.metrics();
    assert_eq!(m.live_send_buffers, 0, "{m}");
    assert_eq!(m.chunks_in_use, 0, "{m}");
    outcome
}

#[test]
fn stalled_readers_are_closed_and_the_healthy_are_not_held_up() {
    let base = run(0);
    let with = run(STALLED);
    // Every healthy session got all its broadcasts: 950 sessions x 20 Hz x 6 s.
    for o in [&base, &with] {
        let expected = (HEALTHY * 20 * 6) as u64;
        assert!(
            o.samples >= expected * 95 / 100,
            "{} of {expected} deliveries",
            o.samples
        );
        assert_eq!(o.other_closed, 0, "no healthy session was closed");
        assert!(
            // AddressSanitizer's quarantine keeps freed memory resident (see .ci/run).
            cfg!(zerocast_asan) || o.rss_growth < 64 << 20,
            "RSS grew {} MiB",
            o.rss_growth >> 20
        );
        // Not held up: a broadcast reaches the healthy before the server has begun two more
        // ticks (1 % allowed for a client thread descheduled while the server's ran).
        assert!(
            o.late * 100 <= o.samples,
            "{} of {} deliveries two or more ticks late",
            o.late,
            o.samples
        );
    }
    assert_eq!(base.slow_closed, 0);
    // The 50 are closed as slow consumers: their queue passes the 4 KiB soft limit once the
    // kernel buffers (a 4 KiB send buffer, a 4 KiB receive buffer) are full, a few seconds at
    // 4 KB/s; they are closed no sooner than the grace period after.
    assert_eq!(with.slow_closed, STALLED as u64);
    let after = with
        .stalled_closed_after
        .expect("stalled clients closed in the window");
    assert!(
        after >= GRACE.as_secs_f64(),
        "closed {after:.1} s after connecting"
    );
    eprintln!(
        "healthy p50/p99: {:.0}/{:.0} us without stalled clients, {:.0}/{:.0} us with; \
         deliveries two or more ticks late: {} and {}",
        base.p50_us, base.p99_us, with.p50_us, with.p99_us, base.late, with.late
    );
}
