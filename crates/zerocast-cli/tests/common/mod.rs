//! Helpers shared by the tests that run the real `zerocast` binary.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Sends SIGTERM (through `kill`, on every Linux machine), waits up to `timeout` for the exit,
/// and returns the status with everything the process wrote on stderr (which must be piped).
pub fn terminate(child: &mut Child, timeout: Duration) -> (ExitStatus, String) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {}", child.id());
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "server did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, stderr_of(child))
}

/// The rest of what `child` wrote on its piped stderr.
pub fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns its last value.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The sum of every sample of the family `name` in a Prometheus text exposition (a figure
/// with a `worker` label has one sample per worker); `None` if it has none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// `GET /metrics` from `addr`: the whole HTTP answer.
pub fn scrape(addr: impl std::net::ToSocketAddrs) -> String {
    use std::io::Write;
    let mut m = std::net::TcpStream::connect(addr).unwrap();
    write!(m, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).unwrap();
    text
}

/// Starts the `zerocast` binary with `args` and waits for its `listening on ADDR` line;
/// returns the child and the address. Its stderr goes to `stderr` (piped, for `terminate`).
pub fn start_server(args: &[&str], stderr: std::process::Stdio) -> (Child, String) {
    let (child, mut lines) = start_printing(args, stderr, &["listening on "]);
    (child, lines.remove(0))
}

/// Starts `zerocast ARGS` and reads its first lines, which must begin with `prefixes` in
/// order; returns what follows each prefix (one reader for all: a second one could lose
/// lines the first had buffered).
pub fn start_printing(
    args: &[&str],
    stderr: std::process::Stdio,
    prefixes: &[&str],
) -> (Child, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_zerocast"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("binary runs");
    let mut out = BufReader::new(child.stdout.as_mut().unwrap());
    let mut lines = Vec::new();
    let mut wrong = None;
    for prefix in prefixes {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        match line.trim().strip_prefix(prefix) {
            Some(rest) => lines.push(rest.to_owned()),
            None => {
                wrong = Some(format!("expected {prefix:?}, got {line:?}"));
                break;
            }
        }
    }
    if let Some(why) = wrong {
        // Not left running past the failed test.
        let _ = child.kill();
        let _ = child.wait();
        panic!("{why}");
    }
    (child, lines)
}
