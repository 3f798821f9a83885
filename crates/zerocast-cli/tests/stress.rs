//! Stress on both backends, with the server in its own process (10,000 connections on each
//! side would not fit one process's 20,000 descriptors):
//! - 10,000 sessions closed while their receives and sends are in flight (and the provided
//!   buffer ring runs dry): no crash, every session closed, no send buffer left alive;
//! - the server shut down under load: it exits 0 with nothing left open or alive.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::wait_until;

struct Server {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Server {
    fn start(backend: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--backend",
            backend,
        ];
        args.extend_from_slice(extra);
        let (child, lines) =
            common::start_printing(&args, Stdio::piped(), &["listening on ", "metrics on "]);
        let addr = lines[0].parse().unwrap();
        let metrics = lines[1].parse().unwrap();
        Self {
            child,
            addr,
            metrics,
        }
    }

    /// One counter from the server's /metrics.
    fn metric(&self, name: &str) -> i64 {
        let text = common::scrape(self.metrics);
        common::metric_sum(&text, name).unwrap_or_else(|| panic!("no {name} in {text}")) as i64
    }

    /// SIGTERM; returns the `final` counters line after asserting a clean exit.
    fn stop(mut self) -> String {
        let (status, err) = common::terminate(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "exit {status}: {err}");
        err.lines()
            .find(|l| l.starts_with("final "))
            .unwrap_or_else(|| panic!("no final line: {err}"))
            .to_string()
    }
}

/// A test that fails midway must not leave its server running.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One stress test at a time: two would not fit the descriptor limit together.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn frame(id: u16, len: usize) -> Vec<u8> {
    let size = u16::try_from(4 + len).unwrap();
    let mut f = size.to_le_bytes().to_vec();
    f.extend_from_slice(&id.to_le_bytes());
    f.resize(4 + len, id as u8);
    f
}

fn assert_clean(last: &str) {
    for field in ["connections_open=0", "live_send_buffers=0"] {
        assert!(last.contains(&format!(" {field} ")), "{last}");
    }
}

fn close_10000_sessions_in_flight(backend: &str) {
    let _g = serial();
    const N: usize = 10_000;
    // Tiny socket buffers on both sides: echoes stall in the kernel, so sends stay in flight.
    let server = Server::start(backend, &["--send-buffer", "4096", "--drain", "0"]);
    let burst: Vec<u8> = (0..4u16).flat_map(|i| frame(i, 4096 - 4)).collect();
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&server.addr.into()).unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut s: TcpStream = sock.into();
        // As much of 16 KiB as the socket takes now; the clients never read.
        match s.write(&burst) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("write: {e}"),
        }
        clients.push(s);
    }
    assert!(
        wait_until(Duration::from_secs(60), || server
            .metric("zerocast_connections_open")
            == N as i64),
        "all {N} sessions open"
    );
    // Wait until the server has taken in what it can: the echoes back up.
    let mut last = -1;
    assert!(wait_until(Duration::from_secs(60), || {
        let now = server.metric("zerocast_frames_in_total");
        let settled = now == last && now > 0;
        last = now;
        settled
    }));
    eprintln!(
        "{backend}: stalled with {} frames in, {} writes blocked, {} send buffers alive",
        server.metric("zerocast_frames_in_total"),
        server.metric("zerocast_writes_blocked_total"),
        server.metric("zerocast_live_send_buffers")
    );
    assert!(
        server.metric("zerocast_writes_blocked_total") > 0,
        "sends were stalled in flight"
    );
    assert!(server.metric("zerocast_live_send_buffers") > 0);
    // Every peer resets at once (unread data makes close send RST): the server closes all
    // 10,000 sessions with their operations in flight.
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(60), || {
            server.metric("zerocast_connections_open") == 0
                && server.metric("zerocast_live_send_buffers") == 0
        }),
        "open {} live buffers {}",
        server.metric("zerocast_connections_open"),
        server.metric("zerocast_live_send_buffers")
    );
    assert_eq!(server.metric("zerocast_closed_total"), N as i64);
    assert_clean(&server.stop());
}

#[test]
fn closing_10000_sessions_with_receives_and_sends_in_flight_on_io_uring() {
    close_10000_sessions_in_flight("uring");
}

#[test]
fn closing_10000_sessions_with_receives_and_sends_in_flight_on_epoll() {
    close_10000_sessions_in_flight("epoll");
}

fn shutdown_under_load(backend: &str) {
    let _g = serial();
    let server = Server::start(backend, &["--drain", "1"]);
    let load = Command::new(env!("CARGO_BIN_EXE_zerocast"))
        .args(["load", "echo", "--target", &server.addr.to_string()])
        .args([
            "-c",
            "2000",
            "--depth",
            "4",
            "--warmup",
            "0.5",
            "--duration",
            "20",
        ])
        .args(["--no-busy-poll", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || server
        .metric("zerocast_connections_open")
        == 2000));
    assert!(wait_until(Duration::from_secs(30), || server
        .metric("zerocast_frames_in_total")
        > 100_000));
    let last = server.stop();
    assert_clean(&last);
    let mut load = load;
    let _ = load.kill();
    let _ = load.wait();
}

#[test]
fn shutdown_under_load_on_io_uring() {
    shutdown_under_load("uring");
}

#[test]
fn shutdown_under_load_on_epoll() {
    shutdown_under_load("epoll");
}
