//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zerocast::{Engine, Handler};

/// Tests that count something process-wide (allocations) run one at a time. Nothing else needs
/// to: every figure the tests check is their own engine's.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// An engine with `workers` workers listening on a free loopback port.
pub fn server(handler: impl Handler, workers: usize) -> (Engine, SocketAddr) {
    server_with(Engine::builder().workers(workers), handler)
}

pub fn server_with(builder: zerocast::Builder, handler: impl Handler) -> (Engine, SocketAddr) {
    // Every integration test tracks where live buffers come from, so a leak names its origin.
    zerocast::buffer::track_leaks(true);
    let engine = builder.build(handler).expect("engine starts");
    let addr = engine
        .listen("127.0.0.1:0".parse().unwrap())
        .expect("listen on loopback");
    (engine, addr)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// A frame in the default wire format.
pub fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    let size = u16::try_from(4 + payload.len()).expect("frame fits");
    let mut f = Vec::with_capacity(usize::from(size));
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads one frame: `(id, payload)`.
pub fn read_frame(s: &mut impl Read) -> std::io::Result<(u16, Vec<u8>)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let size = usize::from(u16::from_le_bytes([h[0], h[1]]));
    let id = u16::from_le_bytes([h[2], h[3]]);
    let mut payload = vec![0u8; size.saturating_sub(4)];
    s.read_exact(&mut payload)?;
    Ok((id, payload))
}

/// True once the peer has closed: a read returns end of stream or a reset.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) => {
                eprintln!("closed_by_peer: read failed: {e}");
                return false;
            }
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Waits (up to 30 s) until `engine` has counted `n` frames sent; the caller asserts on the
/// figure. A completion backend (io_uring, IOCP) counts a send when it handles the send's
/// completion, which can come after the peer has read the bytes.
pub fn wait_for_frames_out(engine: &Engine, n: u64) {
    wait_until(Duration::from_secs(30), || engine.metrics().frames_out >= n);
}

/// Waits until the engine has no session left and holds no buffer, and its workers' pooled
/// chunks are all back, then asserts it.
pub fn assert_no_leaks(engine: &Engine) {
    let ok = wait_until(Duration::from_secs(30), || {
        let m = engine.metrics();
        m.connections_open == 0 && m.buffers_held == 0 && m.chunks_in_use == 0
    });
    let m = engine.metrics();
    assert!(
        ok,
        "leak: {m}\nlive buffers by origin: {:#?}",
        zerocast::buffer::live_buffer_origins()
    );
}

/// Writes `data` in random pieces: single bytes, small pieces and large multi-frame runs.
pub fn write_in_random_splits(s: &mut impl Write, data: &[u8], rng: &mut impl rand::Rng) {
    let mut off = 0;
    while off < data.len() {
        let n = match rng.gen_range(0..10) {
            0..=2 => 1,
            3..=6 => rng.gen_range(1..64),
            _ => rng.gen_range(64..16384),
        }
        .min(data.len() - off);
        s.write_all(&data[off..off + n]).expect("write");
        off += n;
    }
}

/// Sockets on local `port` in state CLOSE_WAIT (the peer closed, we did not), from
/// /proc/net/tcp and tcp6.
pub fn close_wait_on_port(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == "08" {
                n += 1;
            }
        }
    }
    n
}

/// CPU time (user + system) this process has used, from /proc/self/stat, in clock ticks.
pub fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A client with a 4 KiB receive window: a reader the server cannot outrun, or, if the test
/// never reads, a stalled one.
pub fn small_window(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

/// Whether RSS bounds mean anything in this build. Under AddressSanitizer (built with
/// `--cfg zerocast_asan`, see `.ci/run`) freed memory stays resident in the allocator's
/// quarantine by design, so the tests skip their RSS bounds and keep everything else.
/// Nor where this process has no `/proc` to read it from (Windows, under Wine).
pub const RSS_BOUNDS: bool = !cfg!(zerocast_asan) && cfg!(target_os = "linux");

/// This process's resident memory in bytes (0 without `/proc`: see [`RSS_BOUNDS`]).
pub fn rss_bytes() -> u64 {
    if !cfg!(target_os = "linux") {
        return 0;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Replays every input of the checked-in fuzz corpus `fuzz/corpus/<target>` through
/// `harness`: each must run without a panic, and the corpus must be there.
pub fn replay_corpus(target: &str, harness: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| harness(&data));
        assert!(result.is_ok(), "corpus input {} panics", path.display());
        n += 1;
    }
    assert!(n >= 8, "the {target} corpus is checked in ({n} inputs)");
}
