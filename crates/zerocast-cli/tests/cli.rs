//! The `zerocast` binary: prints one `listening on ADDR` line, serves, and exits 0 on SIGTERM
//! or SIGINT.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start(args: &[&str]) -> (Child, String) {
    common::start_server(args, Stdio::null())
}

fn stop(mut child: Child, signal: libc_signal::Signal) {
    libc_signal::send(child.id(), signal);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            let mut rest = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut rest)
                .unwrap();
            assert_eq!(rest, "", "exactly one line on stdout");
            return;
        }
        assert!(Instant::now() < end, "server did not exit on {signal:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal without a libc dependency in the test: `kill` is on every Linux machine.
mod libc_signal {
    #[derive(Debug, Clone, Copy)]
    pub enum Signal {
        Term,
        Int,
    }
    pub fn send(pid: u32, s: Signal) {
        let name = match s {
            Signal::Term => "-TERM",
            Signal::Int => "-INT",
        };
        let ok = std::process::Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

#[test]
fn echo_serves_frames_and_exits_on_sigterm() {
    let (child, addr) = start(&["echo", "--listen", "127.0.0.1:0", "--workers", "2"]);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frame = [9, 0, 5, 0, b'h', b'e', b'l', b'l', b'o'];
    s.write_all(&frame).unwrap();
    let mut back = [0u8; 9];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, frame);
    stop(child, libc_signal::Signal::Term);
}

#[test]
fn raw_echo_and_sigint() {
    let (child, addr) = start(&["echo", "--listen", "127.0.0.1:0", "--raw"]);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET not a frame\r\n").unwrap();
    let mut back = [0u8; 17];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"GET not a frame\r\n");
    stop(child, libc_signal::Signal::Int);
}

#[test]
fn broadcast_relays_with_sender_id() {
    let (child, addr) = start(&["broadcast", "--listen", "127.0.0.1:0"]);
    let mut a = TcpStream::connect(&addr).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    a.write_all(&[7, 0, 3, 0, b'a', b'b', b'c']).unwrap();
    let mut back = [0u8; 15];
    a.read_exact(&mut back).unwrap();
    assert_eq!(
        &back[..4],
        &[15, 0, 3, 0],
        "size grows by the 8-byte sender id, id kept"
    );
    assert_eq!(&back[12..], b"abc");
    stop(child, libc_signal::Signal::Term);
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &["--help"][..],
        &["echo", "--help"],
        &["broadcast", "--help"],
        &["world", "--help"],
        &["load", "--help"],
        &["demo", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_zerocast"))
            .args(sub)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

/// CPU ticks (user + system) used by a process so far.
#[test]
fn out_of_descriptors_backs_off_and_recovers() {
    // The server gets 64 descriptors; 120 clients overflow it.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {} echo --listen 127.0.0.1:0 --workers 1 --stats 1",
            env!("CARGO_BIN_EXE_zerocast")
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let clients: Vec<_> = (0..120)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // At the limit: accepting must not spin. The worker's loop turns between two of its
    // once-a-second stats lines: backing off, tens; spinning on the refused accept, millions.
    let at_limit = Instant::now();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            let turns = line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("turns="))
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(t) = turns.filter(|_| line.starts_with("stats ")) {
                let _ = tx.send(t);
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a stats line")
    };
    next(); // the lines from before every client was refused
    let (a, b) = (next(), next());
    assert!(
        b - a < 5_000,
        "{} loop turns in a second at the descriptor limit: accepting spins",
        b - a
    );
    // Descriptors free up: accepting resumes.
    drop(clients);
    let freed = Instant::now();
    let mut s = loop {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(&[5, 0, 1, 0, b'!']).unwrap();
        let mut back = [0u8; 5];
        if s.read_exact(&mut back).is_ok() {
            break s;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(20),
            "accepting did not resume"
        );
    };
    s.write_all(&[5, 0, 1, 0, b'?']).unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    libc_signal::send(child.id(), libc_signal::Signal::Term);
    let status = child.wait().unwrap();
    assert!(status.success());
    let log = log.join().unwrap();
    let warnings = log.matches("out of descriptors").count() as u64;
    let secs = at_limit.elapsed().as_secs();
    assert!(
        (1..=secs + 2).contains(&warnings),
        "EMFILE logged at most once a second: {warnings} warnings in {secs} s"
    );
}

fn load(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zerocast"))
        .arg("load")
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn load_splits_over_processes_and_merges_their_reports() {
    let (server, addr) = start(&["echo", "--listen", "127.0.0.1:0", "--workers", "1"]);
    let out = load(&[
        "idle",
        "--target",
        &addr,
        "-c",
        "300",
        "--processes",
        "2",
        "--ramp",
        "2000",
        "--warmup",
        "0.2",
        "--duration",
        "0.5",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["processes"], 2);
    assert_eq!(r["connections"], 300);
    assert_eq!(r["connected"], 300);
    assert_eq!(r["corrupt"], 0);
    assert_eq!(r["disconnects"], 0);
    // Every connection's hello was answered.
    assert!(r["received_total"].as_u64().unwrap() >= 300, "{r}");
    assert!(
        r.get("histogram").is_none(),
        "merged reports carry no histogram"
    );
    stop(server, libc_signal::Signal::Term);
}

#[test]
fn load_prints_a_readable_report_with_the_servers_figures() {
    let (server, addr) = start(&["echo", "--listen", "127.0.0.1:0", "--workers", "1"]);
    let pid = server.id().to_string();
    let out = load(&[
        "echo",
        "--target",
        &addr,
        "-c",
        "10",
        "--warmup",
        "0.1",
        "--duration",
        "0.3",
        "--server-pid",
        &pid,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in ["latency (us)", "window", "generator", "server        cpu"] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    stop(server, libc_signal::Signal::Term);
}

#[test]
fn load_rejects_impossible_settings_with_a_reason() {
    let out = load(&["echo", "--target", "127.0.0.1:9", "--size", "8"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size must be at least 12"), "{err}");
}

#[test]
fn load_fails_clearly_when_no_connection_opens() {
    // Port 9 (discard) has no listener on loopback here: every connect is refused.
    let out = load(&[
        "echo",
        "--target",
        "127.0.0.1:9",
        "-c",
        "3",
        "--duration",
        "0.2",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no connection to 127.0.0.1:9 could be opened"),
        "{err}"
    );
}

#[test]
fn metrics_endpoint_serves_prometheus_text_with_live_counters() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zerocast"))
        .args([
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary runs");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    line.clear();
    out.read_line(&mut line).unwrap();
    let metrics = line.trim().strip_prefix("metrics on ").unwrap().to_string();

    // Some traffic, so the counters are not all zero.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[6, 0, 1, 0, b'h', b'i']).unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).unwrap();

    let scrape = |path: &str| {
        let mut m = TcpStream::connect(&metrics).unwrap();
        write!(m, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        m.read_to_string(&mut text).unwrap();
        text
    };
    let text = scrape("/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    assert_eq!(
        common::metric_sum(&text, "zerocast_connections_open"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        common::metric_sum(&text, "zerocast_frames_in_total"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE zerocast_accepted_total counter\n"),
        "{text}"
    );
    assert!(scrape("/").starts_with("HTTP/1.1 404"));

    drop(s);
    libc_signal::send(child.id(), libc_signal::Signal::Term);
    assert!(child.wait().unwrap().success());
}

#[test]
fn world_serves_players_and_its_gauges() {
    let (mut child, lines) = common::start_printing(
        &[
            "world",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--tick-ms",
            "20",
        ],
        Stdio::null(),
        &["listening on ", "metrics on "],
    );
    let (addr, metrics) = (lines[0].clone(), lines[1].clone());

    // Join (protocol 1) and read the welcome: id 0x0201, 34 bytes of payload.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[6, 0, 0x01, 0x01, 1, 0]).unwrap();
    let mut welcome = [0u8; 4 + 34];
    s.read_exact(&mut welcome).unwrap();
    assert_eq!(&welcome[..4], &[38, 0, 0x01, 0x02]);
    let tick_ms = u16::from_le_bytes([welcome[36], welcome[37]]);
    assert_eq!(tick_ms, 20);

    let mut m = TcpStream::connect(&metrics).unwrap();
    write!(m, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    assert!(text.contains("\nzerocast_world_players 1\n"), "{text}");
    assert!(text.contains("\nzerocast_world_joins_total 1\n"), "{text}");
    assert_eq!(
        common::metric_sum(&text, "zerocast_connections_open"),
        Some(1.0),
        "{text}"
    );

    drop(s);
    libc_signal::send(child.id(), libc_signal::Signal::Term);
    assert!(child.wait().unwrap().success());
}

#[test]
fn demo_runs_the_world_and_its_bots_and_ends_with_a_summary() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_zerocast"))
        .args(["demo", "--bots", "200", "--duration", "2"])
        .output()
        .expect("binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(text.contains("measuring"), "live figures: {text}");
    assert!(text.contains("summary"), "{text}");
    assert!(text.contains("200 joined of 200"), "{text}");
    assert!(
        text.contains("area of interest 0 deliveries from out of range"),
        "{text}"
    );
}
