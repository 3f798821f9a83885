//! Outgoing sessions: an engine used as a client (the load generator's building block) talks
//! to an engine used as a server, over several 127.0.0.x source addresses.

mod util;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use util::*;
use zerocast::{CloseReason, Context, Engine, Frame, Handler, SendBuffer, Session};
use zerocast_servers::Echo;

#[derive(Default)]
struct Counter {
    connected: AtomicUsize,
    frames: AtomicUsize,
    bytes: AtomicUsize,
    disconnected: AtomicUsize,
}

impl Handler for Counter {
    type Worker = ();
    type Session = ();

    fn on_connect(&self, _cx: Context<'_, Self>) {
        self.connected.fetch_add(1, Ordering::Relaxed);
    }
    fn on_frame(&self, _cx: Context<'_, Self>, frame: Frame<'_>) {
        assert_eq!(frame.id(), 42);
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(frame.payload().len(), Ordering::Relaxed);
    }
    fn on_disconnect(&self, _cx: Context<'_, Self>, reason: &CloseReason) {
        assert_eq!(reason, &CloseReason::Shutdown);
        self.disconnected.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn client_engine_sessions_echo_through_server_engine() {
    const SESSIONS: usize = 64;
    const FRAMES: usize = 100;
    let (server, addr) = server(Echo, 2);
    let counter = Arc::new(Counter::default());
    let client = Engine::builder().workers(2).build(counter.clone()).unwrap();
    let sessions: Vec<Session> = (0..SESSIONS)
        .map(|i| {
            let source: IpAddr = format!("127.0.0.{}", 1 + i % 4).parse().unwrap();
            let s = client.connect_from(addr, Some(source)).expect("connect");
            assert_eq!(s.peer_addr(), addr);
            s
        })
        .collect();
    // Sends may start before the worker has registered the socket: they are queued.
    let payload = [5u8; 100];
    for s in &sessions {
        for _ in 0..FRAMES {
            s.send(SendBuffer::frame(42, &payload)).unwrap();
        }
    }
    assert!(wait_until(Duration::from_secs(20), || {
        counter.frames.load(Ordering::Relaxed) == SESSIONS * FRAMES
    }));
    assert_eq!(
        counter.bytes.load(Ordering::Relaxed),
        SESSIONS * FRAMES * 100
    );
    assert_eq!(counter.connected.load(Ordering::Relaxed), SESSIONS);
    assert_eq!(client.sessions().len(), SESSIONS);
    // The echoes are in; the client engine's own sends may still be counted after them.
    wait_for_frames_out(&client, (SESSIONS * FRAMES) as u64);
    let m = client.metrics();
    assert_eq!(m.connected, SESSIONS as u64);
    assert_eq!(m.frames_out, (SESSIONS * FRAMES) as u64);
    // The server saw connections from all four source addresses.
    let mut sources = Vec::new();
    server
        .sessions()
        .for_each(|s| sources.push(s.peer_addr().ip()));
    sources.sort();
    sources.dedup();
    assert_eq!(sources.len(), 4);

    client.shutdown();
    assert_eq!(counter.disconnected.load(Ordering::Relaxed), SESSIONS);
    assert!(
        sessions[0].send(SendBuffer::frame(42, b"late")).is_err(),
        "closed"
    );
    drop(sessions);
    assert_no_leaks(&client);
    assert_no_leaks(&server);
}

#[test]
fn registry_broadcast_reaches_every_session() {
    let (server, addr) = server(Echo, 2);
    let mut clients: Vec<_> = (0..50).map(|_| connect(addr)).collect();
    assert!(wait_until(Duration::from_secs(10), || server
        .sessions()
        .len()
        == 50));
    let n = server
        .sessions()
        .broadcast(&SendBuffer::frame(3, b"to all"));
    assert_eq!(n, 50);
    for c in &mut clients {
        assert_eq!(read_frame(c).unwrap(), (3, b"to all".to_vec()));
    }
    drop(clients);
    assert_no_leaks(&server);
}

#[test]
fn a_port_another_engine_serves_is_refused_unless_sharing_is_asked_for() {
    let (first, addr) = server(Echo, 2);
    // A second server on the same port: refused with the port and the remedy.
    let second = Engine::builder().workers(1).build(Echo).unwrap();
    let err = second.listen(addr).expect_err("the port is served");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let msg = err.to_string();
    assert!(
        msg.contains(&addr.port().to_string()) && msg.contains("reuse-port"),
        "{msg}"
    );
    // Asked for, sharing works (and the first engine's own two workers share already);
    // Windows has no SO_REUSEPORT, and says so.
    let sharing = Engine::builder()
        .workers(1)
        .reuse_port(true)
        .build(Echo)
        .unwrap();
    if cfg!(windows) {
        let e = sharing
            .listen(addr)
            .expect_err("no SO_REUSEPORT on Windows");
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    } else {
        assert_eq!(sharing.listen(addr).unwrap(), addr);
    }
    // Once nobody serves it, the port is free again.
    drop((first, sharing));
    let third = Engine::builder().workers(1).build(Echo).unwrap();
    assert_eq!(third.listen(addr).unwrap(), addr);
}
