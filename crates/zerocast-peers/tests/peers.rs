//! The peers are real servers of the same protocol: each is started as its own process and
//! driven by the load generator, and must answer every echo, relay every broadcast and play
//! the world (every bot welcomed, every move timed, none from out of range) before any
//! benchmark compares it with zerocast.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use zerocast_load::{run, LoadConfig, Pace, Report, Scenario};

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM, as the benchmark runner stops them; then reap.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Starts `bin mode` on an ephemeral loopback port and reads the address it announces.
fn start(bin: &str, mode: &str) -> (Peer, SocketAddr) {
    let mut child = Command::new(bin)
        .args([mode, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("peer starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{bin} announced {line:?}"))
        .parse()
        .unwrap();
    (Peer(child), addr)
}

fn load(scenario: Scenario, addr: SocketAddr, n: usize, pace: Pace) -> Report {
    let mut cfg = LoadConfig::new(scenario, addr, n);
    cfg.pace = pace;
    cfg.warmup = Duration::from_millis(300);
    cfg.duration = Duration::from_secs(2);
    cfg.busy_poll = false;
    run(&cfg, &mut |_| {}).expect("load runs")
}

fn peers() -> [&'static str; 2] {
    [
        env!("CARGO_BIN_EXE_peer-tokio"),
        env!("CARGO_BIN_EXE_peer-naive"),
    ]
}

#[test]
fn every_peer_echoes_and_relays_everything() {
    for bin in peers() {
        let (_p, addr) = start(bin, "echo");
        let r = load(Scenario::Echo, addr, 20, Pace::Closed { depth: 1 });
        assert!(r.problems(1.0).is_empty(), "{bin}: {r}");
        assert!(
            r.received > 100 && r.corrupt == 0 && r.unanswered == 0,
            "{bin}: {r}"
        );
        let (_p, addr) = start(bin, "broadcast");
        let r = load(Scenario::Broadcast, addr, 20, Pace::Rate { per_sec: 200.0 });
        assert!(r.problems(1.0).is_empty(), "{bin}: {r}");
        assert!(r.received > 1_000 && r.corrupt == 0, "{bin}: {r}");
    }
}

#[test]
fn every_peer_plays_the_world_within_its_rules() {
    for bin in peers() {
        let (_p, addr) = start(bin, "world");
        let r = load(Scenario::World, addr, 100, Pace::Rate { per_sec: 1_000.0 });
        let f = r.world.expect("world figures");
        assert!(r.problems(1.0).is_empty(), "{bin}: {r}");
        assert_eq!(
            (f.joined, r.disconnects, r.corrupt),
            (100, 0, 0),
            "{bin}: {r}"
        );
        assert_eq!(
            (f.out_of_range, f.untimed, f.rejected),
            (0, 0, 0),
            "{bin}: {r}"
        );
        assert!(r.latency.count > 100, "{bin}: {r}");
    }
}
