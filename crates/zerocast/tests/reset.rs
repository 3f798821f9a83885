//! A thousand sessions reset by their peers while the server has operations in flight on them
//! (sends the peers do not read, receives posted): every session closes, and nothing is left
//! behind, on every backend. A completion backend (io_uring, IOCP) must cancel what is in
//! flight and wait for each cancelled operation before it frees the memory the kernel uses.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use util::*;
use zerocast::Engine;
use zerocast_servers::Broadcast;

const SESSIONS: usize = 1000;
const SENDERS: usize = 10;

#[test]
fn a_thousand_sessions_reset_with_operations_in_flight_leave_nothing_behind() {
    // A 4 KiB kernel send buffer per session and 4 KiB receive windows: what the server
    // relays (80 KiB to each session) cannot leave, so its writes wait, in flight or blocked.
    let (engine, addr) = server_with(
        Engine::builder()
            .workers(2)
            .send_buffer(4096)
            .max_connections(SESSIONS + 10),
        Broadcast::new(),
    );
    let clients: Vec<TcpStream> = (0..SESSIONS).map(|_| small_window(addr)).collect();
    assert!(
        wait_until(Duration::from_secs(120), || engine
            .metrics()
            .connections_open
            == SESSIONS as u64),
        "every session opened: {}",
        engine.metrics()
    );
    let payload = vec![7u8; 8 * 1024];
    for c in clients.iter().take(SENDERS) {
        (&*c).write_all(&frame(1, &payload)).unwrap();
    }
    // The relays are queued and stuck: output waits for peers that do not read.
    assert!(
        wait_until(Duration::from_secs(120), || {
            let m = engine.metrics();
            m.frames_in == SENDERS as u64 && m.queued_bytes > (SESSIONS * 4096) as u64
        }),
        "output queued behind the peers: {}",
        engine.metrics()
    );
    // Every peer resets (SO_LINGER 0: an RST, not a FIN) with the server's writes pending.
    for c in &clients {
        socket2::SockRef::from(c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(120), || {
            let m = engine.metrics();
            m.closed == SESSIONS as u64 && m.connections_open == 0
        }),
        "every session closed: {}",
        engine.metrics()
    );
    assert_no_leaks(&engine);
    // And the engine still serves.
    let mut s = connect(addr);
    s.write_all(&frame(1, b"still here")).unwrap();
    let (id, p) = read_frame(&mut s).unwrap();
    assert_eq!((id, &p[8..]), (1, &b"still here"[..]));
    drop(s);
    assert_no_leaks(&engine);
}
