//! The datagram channel over real loopback sockets: offered over TCP, bound by the client's
//! first datagram, batched both ways, following an address change, dropping the stale, the
//! forged, the malformed and a flood, refusing what would fragment, and leaving other
//! sessions alone.

// Linux only: the channel is built on recvmmsg/sendmmsg (on Windows
// `Engine::listen_datagrams` is refused: see backend.rs).
#![cfg(target_os = "linux")]

mod util;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use util::*;
use zerocast::datagram::wire::{client_datagram, parse_server_datagram};
use zerocast::datagram::{DatagramError, Offer, MAX_PAYLOAD};
use zerocast::{Context, Engine, Frame, Handler, SendBuffer, Session};

/// Frame ids of the test's protocol.
const OPEN: u16 = 1;
const OFFER: u16 = 2;
const TOO_BIG: u16 = 5;
const ANSWER: u16 = 6;
const PAUSE: u16 = 7;
const TO_ALL: u16 = 9;

/// The worker is inside the PAUSE handler (only one test pauses).
static HELD: AtomicBool = AtomicBool::new(false);
/// The test has sent what is to queue in the kernel: PAUSE returns.
static RELEASE: AtomicBool = AtomicBool::new(false);

/// Echoes datagram frames back as datagrams; on the stream, opens the channel and answers.
#[derive(Default)]
struct Channel {
    sessions: Mutex<Vec<Session>>,
    datagram_frames: AtomicU64,
}

impl Handler for Channel {
    type Worker = ();
    type Session = ();

    fn on_connect(&self, cx: Context<'_, Self>) {
        self.sessions.lock().unwrap().push(cx.session.clone());
    }

    fn on_frame(&self, cx: Context<'_, Self>, f: Frame<'_>) {
        let reply = |id: u16, payload: &[u8]| {
            let _ = cx
                .session
                .send(SendBuffer::copy_from_slice(&frame(id, payload)));
        };
        if f.is_datagram() {
            self.datagram_frames.fetch_add(1, Ordering::Relaxed);
            if f.id() == TO_ALL {
                let all = self.sessions.lock().unwrap().clone();
                Session::send_datagram_to_all(&all, f.as_slice()).unwrap();
            } else {
                cx.session.send_datagram(f.as_slice()).unwrap();
            }
            return;
        }
        match f.id() {
            OPEN => reply(OFFER, &cx.session.open_datagrams().unwrap().to_bytes()),
            TOO_BIG => {
                let r = cx.session.send_datagram(&[0; MAX_PAYLOAD + 1]);
                let ok = r
                    == Err(DatagramError::TooLarge {
                        len: MAX_PAYLOAD + 1,
                    });
                reply(ANSWER, &[u8::from(ok)]);
            }
            // Holds the worker while the client sends: the datagrams queue in the kernel.
            PAUSE => {
                HELD.store(true, Ordering::Release);
                let released =
                    wait_until(Duration::from_secs(10), || RELEASE.load(Ordering::Acquire));
                reply(ANSWER, &[u8::from(released)]);
            }
            _ => {}
        }
    }
}

/// A client: its stream and its datagram socket.
struct Client {
    tcp: TcpStream,
    udp: UdpSocket,
    offer: Offer,
    server: SocketAddr,
    seq: u32,
}

impl Client {
    fn open(addr: SocketAddr) -> Self {
        let mut tcp = connect(addr);
        std::io::Write::write_all(&mut tcp, &frame(OPEN, &[])).unwrap();
        let (id, payload) = read_frame(&mut tcp).unwrap();
        assert_eq!(id, OFFER);
        let offer = Offer::from_bytes(&payload).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            tcp,
            udp,
            server: SocketAddr::new(addr.ip(), offer.port),
            offer,
            seq: 0,
        }
    }

    fn send(&mut self, frames: &[u8]) {
        self.seq += 1;
        self.send_seq(self.seq, frames);
    }

    fn send_seq(&self, seq: u32, frames: &[u8]) {
        let d = client_datagram(&self.offer, seq, frames);
        self.udp.send_to(&d, self.server).unwrap();
    }

    /// The next server datagram: its sequence number and frames.
    fn recv(&self) -> (u32, Vec<u8>) {
        let mut b = [0u8; 2048];
        let n = self.udp.recv(&mut b).expect("a datagram from the server");
        let (seq, frames) = parse_server_datagram(&b[..n]).unwrap();
        (seq, frames.to_vec())
    }

    fn ask(&mut self, id: u16) -> Vec<u8> {
        std::io::Write::write_all(&mut self.tcp, &frame(id, &[])).unwrap();
        let (got, payload) = read_frame(&mut self.tcp).unwrap();
        assert_eq!(got, ANSWER);
        payload
    }
}

fn start(builder: zerocast::Builder) -> (Engine, SocketAddr) {
    let (engine, addr) = server_with(builder, Channel::default());
    let bound = engine
        .listen_datagrams("127.0.0.1:0".parse().unwrap())
        .unwrap();
    assert_eq!(bound.len(), 1);
    (engine, addr)
}

#[test]
fn datagrams_arrive_in_batches_are_echoed_in_order_and_follow_a_new_address() {
    let (engine, addr) = start(Engine::builder().workers(1));
    let mut c = Client::open(addr);
    // While the worker is held, 100 datagrams of two frames each queue in the kernel.
    std::io::Write::write_all(&mut c.tcp, &frame(PAUSE, &[])).unwrap();
    assert!(wait_until(Duration::from_secs(10), || HELD.load(Ordering::Acquire)));
    // A datagram to loopback is in the receiving socket's queue when `send` returns.
    for i in 0..100u8 {
        let two = [frame(10, &[i; 20]), frame(11, &[i; 5])].concat();
        c.send(&two);
    }
    RELEASE.store(true, Ordering::Release);
    assert_eq!(read_frame(&mut c.tcp).unwrap(), (ANSWER, vec![1]));
    for i in 0..200u32 {
        let (seq, frames) = c.recv();
        assert_eq!(seq, i, "the server's sequence numbers count up");
        let k = (i / 2) as u8;
        let want = if i % 2 == 0 {
            frame(10, &[k; 20])
        } else {
            frame(11, &[k; 5])
        };
        assert_eq!(frames, want);
    }
    // The worker counts a batch once `sendmmsg` returns, which may be after the client has
    // read it.
    wait_until(Duration::from_secs(10), || {
        engine.metrics().datagrams_out >= 200
    });
    let m = engine.metrics();
    assert_eq!(m.datagrams_in, 100);
    assert!(
        m.datagram_reads * 4 <= m.datagrams_in,
        "recvmmsg took several datagrams per call: {m}"
    );
    assert_eq!(m.datagrams_out, 200);
    assert!(
        m.datagram_writes < m.datagrams_out,
        "sendmmsg sent several per call: {m}"
    );

    // The client's address changes (a NAT rebinding): a newer datagram moves the channel.
    let moved = UdpSocket::bind("127.0.0.1:0").unwrap();
    moved
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let d = client_datagram(&c.offer, 500, &frame(12, b"moved"));
    moved.send_to(&d, c.server).unwrap();
    let mut b = [0u8; 2048];
    let n = moved.recv(&mut b).unwrap();
    assert_eq!(
        parse_server_datagram(&b[..n]).unwrap().1,
        frame(12, b"moved")
    );
    // A stale one from the old address is dropped, and moves nothing back.
    c.send_seq(400, &frame(13, b"stale"));
    moved
        .send_to(
            &client_datagram(&c.offer, 501, &frame(14, b"new")),
            c.server,
        )
        .unwrap();
    let n = moved.recv(&mut b).unwrap();
    assert_eq!(parse_server_datagram(&b[..n]).unwrap().1, frame(14, b"new"));
    let m = engine.metrics();
    assert_eq!((m.datagrams_stale, m.datagrams_rebound), (1, 1), "{m}");

    // Too big for one datagram: refused with an error, never fragmented.
    assert_eq!(c.ask(TOO_BIG), [1]);
    drop(c);
    assert_no_leaks(&engine);
}

#[test]
fn one_snapshot_reaches_every_bound_client_with_its_own_sequence() {
    let (engine, addr) = start(Engine::builder().workers(1));
    let mut clients: Vec<Client> = (0..3).map(|_| Client::open(addr)).collect();
    // Each binds its channel (its first datagram is echoed).
    for c in &mut clients {
        c.send(&frame(20, b"hi"));
        assert_eq!(c.recv(), (0, frame(20, b"hi")));
    }
    clients[0].send(&frame(TO_ALL, b"snapshot"));
    for c in &clients {
        assert_eq!(c.recv(), (1, frame(TO_ALL, b"snapshot")));
    }
    drop(clients);
    assert_no_leaks(&engine);
}

#[test]
fn unknown_forged_malformed_and_flooding_datagrams_are_dropped_and_others_never_notice() {
    let (engine, addr) = start(Engine::builder().workers(1).datagram_rate(50));
    let mut healthy = Client::open(addr);
    let mut attacker = Client::open(addr);
    let echo = |c: &mut Client, k: u8| {
        c.send(&frame(30, &[k; 8]));
        let (_, frames) = c.recv();
        assert_eq!(frames, frame(30, &[k; 8]));
    };
    echo(&mut healthy, 0);
    let spray = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = healthy.server;
    // Unknown tokens, the healthy session's token without its key, and junk.
    for i in 0..50u32 {
        let unknown = Offer {
            token: u64::from(i) * 7919 + 1,
            ..healthy.offer
        };
        spray
            .send_to(&client_datagram(&unknown, i, &frame(30, b"x")), target)
            .unwrap();
        let stolen = Offer {
            key: [i as u8; 16],
            ..healthy.offer
        };
        spray
            .send_to(
                &client_datagram(&stolen, 1000 + i, &frame(30, b"x")),
                target,
            )
            .unwrap();
        spray.send_to(&[i as u8; 7], target).unwrap();
    }
    // A datagram whose frames do not parse.
    attacker.send(&[1, 0, 0]);
    // Its echo still comes back to it: nothing forged moved its channel.
    echo(&mut healthy, 1);
    let m = engine.metrics();
    assert_eq!(
        m.datagrams_refused, 151,
        "50 unknown + 50 forged + 50 short + 1 cut: {m}"
    );

    // A flood from one client: at most its rate is taken, in the same second or the next.
    let before = engine.metrics().datagrams_in;
    for _ in 0..400 {
        attacker.send(&frame(30, b"flood"));
    }
    // Counted as the worker reads them, which may go on after the last is sent.
    assert!(wait_until(Duration::from_secs(10), || engine
        .metrics()
        .datagrams_flood
        >= 300));
    let m = engine.metrics();
    assert!(
        m.datagrams_in - before <= 100,
        "at most two seconds' worth taken: {m}"
    );
    assert!(m.datagrams_flood >= 300, "{m}");
    // The healthy session never noticed.
    echo(&mut healthy, 2);
    drop((healthy, attacker));
    assert_no_leaks(&engine);
}
