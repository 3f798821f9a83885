//! The worker tick (`Builder::tick`), worker start and mail between workers, fan-out of one
//! buffer in slices, and busy-poll mode, end to end over loopback.

mod util;

use std::sync::Mutex;
use std::time::Duration;

use util::*;
use zerocast::{
    Context, Engine, Fanout, Frame, Group, Handler, Mail, SendBuffer, Session, Start, Tick,
};
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

    fn on_tick(&self, _: &mut (), tick: Tick) {
        let worker = tick.worker;
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
        fn on_tick(&self, _: &mut (), _tick: Tick) {
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

/// Each worker learns its index at start; at every tick it mails its tick number to every
/// other worker; each worker reports to its clients the numbers it ticked and received, so
/// the test sees that ticks of the same number happen on every worker and mail arrives.
#[derive(Default)]
struct Relay {
    everyone: Group,
}

#[derive(Default)]
struct RelayWorker {
    index: usize,
    workers: usize,
    mail: Option<Mail>,
    sessions: Vec<Session>,
}

impl Handler for Relay {
    type Worker = RelayWorker;
    type Session = ();

    fn on_start(&self, w: &mut RelayWorker, start: &Start) {
        w.index = start.index;
        w.workers = start.workers;
        w.mail = Some(start.mail.clone());
        assert!(
            !start.mail.post(start.workers, Box::new(0u64)),
            "no such worker"
        );
    }

    fn on_connect(&self, cx: Context<'_, Self>) {
        cx.worker.sessions.push(cx.session.clone());
        self.everyone.insert(cx.session.clone());
    }

    fn on_frame(&self, _cx: Context<'_, Self>, _frame: Frame<'_>) {}

    fn on_disconnect(&self, cx: Context<'_, Self>, _reason: &zerocast::CloseReason) {
        cx.worker.sessions.retain(|s| s.id() != cx.session.id());
        self.everyone.remove(cx.session.id());
    }

    fn on_tick(&self, w: &mut RelayWorker, tick: Tick) {
        assert_eq!(tick.worker, w.index);
        let mail = w.mail.as_ref().unwrap();
        for to in (0..w.workers).filter(|&t| t != w.index) {
            assert!(mail.post(to, Box::new((w.index, tick.number))));
        }
        // Tick frames: id 7, (worker, tick number, 0 = ticked).
        self.tell(w, w.index, tick.number, 0);
    }

    fn on_message(&self, w: &mut RelayWorker, message: Box<dyn std::any::Any + Send>) {
        let (from, number) = *message.downcast::<(usize, u64)>().unwrap();
        self.tell(w, from, number, 1);
    }
}

impl Relay {
    fn tell(&self, w: &RelayWorker, worker: usize, number: u64, kind: u8) {
        let mut p = Vec::new();
        p.extend_from_slice(&(worker as u64).to_le_bytes());
        p.extend_from_slice(&number.to_le_bytes());
        p.push(kind);
        p.extend_from_slice(&(w.index as u64).to_le_bytes());
        for s in &w.sessions {
            let _ = s.send(SendBuffer::frame(7, &p));
        }
    }
}

#[test]
fn workers_start_knowing_their_index_tick_in_step_and_mail_each_other() {
    let relay = std::sync::Arc::new(Relay::default());
    let builder = Engine::builder().tick(Duration::from_millis(5)).workers(2);
    let (engine, addr) = server_with(builder, relay.clone());
    // Clients until both workers serve some (which worker takes a connection is the kernel's
    // choice): the first frame a client gets says which worker serves it.
    let mut clients = Vec::new();
    let mut served = [false, false];
    while !(served[0] && served[1]) || clients.len() < 8 {
        assert!(clients.len() < 200, "200 connections, all on one worker");
        let mut c = connect(addr);
        let (id, p) = read_frame(&mut c).expect("a frame");
        assert_eq!(id, 7);
        served[u64::from_le_bytes(p[17..25].try_into().unwrap()) as usize] = true;
        clients.push(c);
    }
    let mut ticked = [Vec::new(), Vec::new()];
    let mut mailed = 0;
    for c in &mut clients {
        for _ in 0..40 {
            let (id, p) = read_frame(c).expect("a frame");
            assert_eq!(id, 7);
            let worker = u64::from_le_bytes(p[..8].try_into().unwrap()) as usize;
            let number = u64::from_le_bytes(p[8..16].try_into().unwrap());
            let at = u64::from_le_bytes(p[17..25].try_into().unwrap()) as usize;
            if p[16] == 0 {
                assert_eq!(worker, at, "a worker's tick is told by its own sessions");
                ticked[worker].push(number);
            } else {
                assert_ne!(worker, at, "mail comes from the other worker");
                mailed += 1;
            }
        }
    }
    assert!(mailed > 0, "mail arrived");
    for t in &ticked {
        assert!(!t.is_empty(), "both workers ticked: {ticked:?}");
    }
    // Tick numbers count periods since the engine's start, on every worker alike: the two
    // workers' numbers overlap.
    let common = ticked[0].iter().filter(|n| ticked[1].contains(n)).count();
    assert!(common > 0, "{ticked:?}");
    drop(clients);
    assert_no_leaks(&engine);
}

/// Every frame is answered from one fan-out buffer: its first half to the sender, the whole
/// (at once or in ranges) to every other session of the worker; a session of the other
/// worker gets it by the fallback path.
struct Halves {
    everyone: Mutex<Vec<Session>>,
}

impl Handler for Halves {
    type Worker = ();
    type Session = ();

    fn on_connect(&self, cx: Context<'_, Self>) {
        self.everyone.lock().unwrap().push(cx.session.clone());
    }

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let a = SendBuffer::frame(frame.id(), frame.payload());
        let b = SendBuffer::frame(frame.id() + 1, frame.payload());
        let mut both = a.as_bytes().to_vec();
        both.extend_from_slice(b.as_bytes());
        let fan = Fanout::new(SendBuffer::copy_from_slice(&both));
        let half = a.len();
        fan.send(cx.session, 0..half).unwrap();
        // Odd rounds queue the whole in pieces (an empty one among them), looked up once.
        let pieces = frame.payload().first().is_some_and(|r| r % 2 == 1);
        for s in self.everyone.lock().unwrap().iter() {
            if s.id() == cx.session.id() {
                continue;
            }
            if pieces {
                fan.send_ranges(s, [0..half, half..half, half..fan.len()])
                    .unwrap();
            } else {
                fan.send_all(s).unwrap();
            }
        }
        assert!(
            fan.send(cx.session, half..half).is_ok(),
            "an empty range sends nothing"
        );
    }

    fn on_disconnect(&self, cx: Context<'_, Self>, _reason: &zerocast::CloseReason) {
        self.everyone
            .lock()
            .unwrap()
            .retain(|s| s.id() != cx.session.id());
    }
}

#[test]
fn a_fanout_sends_slices_of_one_buffer_to_sessions_of_any_worker() {
    let halves = std::sync::Arc::new(Halves {
        everyone: Mutex::new(Vec::new()),
    });
    let (engine, addr) = server_with(Engine::builder().workers(2), halves.clone());
    let mut clients: Vec<_> = (0..4).map(|_| connect(addr)).collect();
    assert!(wait_until(Duration::from_secs(5), || halves
        .everyone
        .lock()
        .unwrap()
        .len()
        == 4));
    for round in 0..50u32 {
        let speaker = round as usize % clients.len();
        std::io::Write::write_all(&mut clients[speaker], &frame(10, &round.to_le_bytes())).unwrap();
        for (i, c) in clients.iter_mut().enumerate() {
            if i == speaker {
                assert_eq!(read_frame(c).unwrap(), (10, round.to_le_bytes().to_vec()));
            } else {
                assert_eq!(read_frame(c).unwrap(), (10, round.to_le_bytes().to_vec()));
                assert_eq!(read_frame(c).unwrap(), (11, round.to_le_bytes().to_vec()));
            }
        }
    }
    drop(clients);
    assert_no_leaks(&engine);
}
