//! The worker tick (`Config::tick`) and busy-poll mode, end to end over loopback.

mod util;

use std::sync::Mutex;
use std::time::Duration;

use util::*;
use zerocast::{Context, Engine, Frame, Group, Handler, SendBuffer};
use zerocast_servers::Echo;

/// Sends one frame to every session on every tick, and records which threads ticked.
#[derive(Default)]
struct Ticker {
    everyone: Group,
    threads: Mutex<Vec<String>>,
}

impl Handler for Ticker {
    type Worker = ();
    type Session = ();

    fn on_connect(&self, cx: Context<'_, Self>) {
        let session = cx.session;
        self.everyone.insert(session.clone());
    }

    fn on_frame(&self, _cx: Context<'_, Self>, _frame: Frame<'_>) {}

    fn on_disconnect(&self, cx: Context<'_, Self>, _reason: &zerocast::CloseReason) {
        let session = cx.session;
        self.everyone.remove(session.id());
    }

    fn on_tick(&self, _: &mut (), worker: usize) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        let mut threads = self.threads.lock().unwrap();
        if !threads.contains(&name) {
            threads.push(name);
        }
        self.everyone
            .broadcast(&SendBuffer::frame(7, &(worker as u64).to_le_bytes()));
    }
}

fn ticks_reach_clients(busy_poll: bool) {
    let ticker = std::sync::Arc::new(Ticker::default());
    let builder = Engine::builder()
        .tick(Duration::from_millis(5))
        .busy_poll(busy_poll);
    let (engine, addr) = server_with(builder.workers(2), ticker.clone());
    let mut clients: Vec<_> = (0..4).map(|_| connect(addr)).collect();
    // 5 ms ticks: 20 frames take at least 100 ms and arrive well within 5 s.
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..20 {
            let (id, payload) = read_frame(c).expect("a tick frame");
            assert_eq!(id, 7);
            let worker = u64::from_le_bytes(payload.try_into().unwrap());
            assert!(worker < 2);
        }
    }
    // Both workers ticked, each on its own thread.
    let mut threads = ticker.threads.lock().unwrap().clone();
    threads.sort();
    assert_eq!(threads, ["zerocast-worker-0", "zerocast-worker-1"]);
    drop(clients);
    assert_no_leaks(&engine);
}

#[test]
fn ticks_run_on_every_worker_and_their_sends_arrive() {
    ticks_reach_clients(false);
}

#[test]
fn busy_poll_ticks_without_a_timer() {
    ticks_reach_clients(true);
}

#[test]
fn busy_poll_echoes_and_accounts_busy_time() {
    let (engine, addr) = server_with(Engine::builder().busy_poll(true).workers(1), Echo);
    let mut c = connect(addr);
    for i in 0..1_000u32 {
        std::io::Write::write_all(&mut c, &frame(1, &i.to_le_bytes())).unwrap();
        let (_, payload) = read_frame(&mut c).unwrap();
        assert_eq!(payload, i.to_le_bytes());
    }
    // Busy time counts turns with work, not the polling in between.
    let m = engine.metrics();
    assert!(m.busy_ns > 0);
    drop(c);
    assert_no_leaks(&engine);
}

/// A panicking tick is logged and the worker keeps serving.
#[test]
fn a_panicking_tick_does_not_stop_the_worker() {
    struct Bad;
    impl Handler for Bad {
        type Worker = ();
        type Session = ();

        fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
            let session = cx.session;
            let _ = session.send(SendBuffer::from(frame.frame_bytes()));
        }
        fn on_tick(&self, _: &mut (), _worker: usize) {
            panic!("tick failed");
        }
    }
    let (engine, addr) = server_with(
        Engine::builder().tick(Duration::from_millis(1)).workers(1),
        Bad,
    );
    std::thread::sleep(Duration::from_millis(50));
    let mut c = connect(addr);
    std::io::Write::write_all(&mut c, &frame(3, b"still here")).unwrap();
    assert_eq!(read_frame(&mut c).unwrap(), (3, b"still here".to_vec()));
    drop(c);
    assert_no_leaks(&engine);
}
