//! The Windows build of `zerocast` (the IOCP backend) under Wine, driven from Linux over
//! loopback: framed echo checked byte for byte, and the world server with 500 of the Linux load
//! generator's bots (every bot joined, moves delivered, none from out of range). Each server is
//! stopped with SIGINT, which Wine turns into Ctrl-C: it must drain and exit 0.
//!
//! Needs `ZEROCAST_WINE_EXE`, the Windows `zerocast.exe`, and `ZEROCAST_WINE_RUN`, the runner
//! that starts it under Wine (default: the workspace's `.ci/wine/run.sh`); relative paths are
//! the workspace's:
//!
//! ```sh
//! cargo build --release --target x86_64-pc-windows-gnu -p zerocast-cli
//! ZEROCAST_WINE_EXE=target/x86_64-pc-windows-gnu/release/zerocast.exe \
//!     ZEROCAST_WINE_RUN=.ci/wine/run.sh cargo test -p zerocast-cli --test wine
//! ```
//!
//! Without `ZEROCAST_WINE_EXE` the tests say so and pass, unless `ZEROCAST_REQUIRE_WINE=1`,
//! where they fail. Wine is slow (every Winsock call costs tens of microseconds), so the loads
//! are light and the bounds generous; every wait ends as soon as its event happens.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_until;
use serde_json::Value;

/// Longest wait for a Wine server to print its address (the first run also creates the Wine
/// prefix, which takes a while).
const START: Duration = Duration::from_secs(180);

/// Longest wait for a Wine server to exit after SIGINT.
const STOP: Duration = Duration::from_secs(60);

/// Bots in the world test.
const BOTS: usize = 500;

/// The Windows executable and its runner.
struct Wine {
    exe: PathBuf,
    run: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `ZEROCAST_WINE_EXE` and `ZEROCAST_WINE_RUN`, or `None` (after saying so) where no exe is
/// named and none is required.
fn wine() -> Option<Wine> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let Some(exe) = var("ZEROCAST_WINE_EXE") else {
        assert!(
            std::env::var("ZEROCAST_REQUIRE_WINE").as_deref() != Ok("1"),
            "the Windows build is required (ZEROCAST_REQUIRE_WINE=1): build it with `cargo build \
             --release --target x86_64-pc-windows-gnu -p zerocast-cli` and set \
             ZEROCAST_WINE_EXE to the zerocast.exe"
        );
        eprintln!(
            "\n*** SKIPPED: ZEROCAST_WINE_EXE is not set: the Windows build was NOT tested under \
             Wine (see the top of crates/zerocast-cli/tests/wine.rs) ***\n"
        );
        return None;
    };
    let run = var("ZEROCAST_WINE_RUN").unwrap_or_else(|| ".ci/wine/run.sh".into());
    let resolve = |p: std::ffi::OsString| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            workspace().join(p)
        }
    };
    let (exe, run) = (resolve(exe), resolve(run));
    assert!(
        exe.is_file(),
        "ZEROCAST_WINE_EXE: no file {}",
        exe.display()
    );
    assert!(
        run.is_file(),
        "ZEROCAST_WINE_RUN: no file {}",
        run.display()
    );
    Some(Wine { exe, run })
}

/// A process in a process group of its own, killed with the whole group when dropped (a test
/// that fails leaves nothing running).
struct Group {
    child: Child,
    /// Reaped: its pid, and so the group's id, may belong to someone else now.
    reaped: bool,
    /// What it printed on stderr so far, read by a thread (for failure messages).
    stderr: Arc<Mutex<String>>,
}

impl Group {
    /// Starts `cmd` (stdout piped for the caller, stderr collected) as a group leader.
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child,
            reaped: false,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap()
    }

    /// Sends `signal` to the group leader only.
    fn signal(&self, signal: libc::c_int) {
        assert!(!self.reaped);
        // SAFETY: kill(2) on the pid of a child not reaped yet, so not reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Whether the leader has exited, without reaping it (so its pid and group id stay ours).
    fn exited(&self) -> bool {
        // SAFETY: an all-zero siginfo_t is a valid value (plain integers and a union of them).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) on our own child, writing into the siginfo_t we own; WNOWAIT leaves
        // it waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
        // SAFETY: si_pid is set by waitid for a child that changed state, and stays 0 (as
        // zeroed) when none did.
        unsafe { info.si_pid() != 0 }
    }

    /// Kills what is left of the group and reaps the leader.
    fn reap(&mut self) -> std::process::ExitStatus {
        if !self.reaped {
            // SAFETY: kill(2) on the process group this child leads (process_group(0)); the
            // leader is not reaped yet, so the group id is still this group's.
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        }
        self.reaped = true;
        self.child.wait().unwrap()
    }

    /// Waits up to `timeout` for the leader's exit, then kills the rest of its group; `None`
    /// if the leader is still running.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_until(timeout, || self.exited()).then(|| self.reap())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.reap();
    }
}

/// A Windows `zerocast ARGS` under Wine, with its stdout lines on a channel.
struct Server {
    group: Group,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(wine: &Wine, args: &[&str]) -> Self {
        let mut cmd = Command::new(&wine.run);
        cmd.arg(&wine.exe).args(args);
        let mut group = Group::spawn(cmd);
        let out = group.child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { group, lines }
    }

    /// The next line on stdout, which must begin with `prefix`: what follows it.
    fn expect(&self, prefix: &str) -> String {
        match self.lines.recv_timeout(START) {
            Ok(line) => match line.trim().strip_prefix(prefix) {
                Some(rest) => rest.to_owned(),
                None => panic!(
                    "expected {prefix:?}, got {line:?}; stderr:\n{}",
                    self.group.stderr()
                ),
            },
            Err(e) => panic!("no {prefix:?} line ({e}); stderr:\n{}", self.group.stderr()),
        }
    }

    /// SIGINT (Ctrl-C under Wine): the server must drain, print its `final` counters and exit
    /// 0. Returns its stderr.
    fn interrupt(mut self) -> String {
        self.group.signal(libc::SIGINT);
        let status = self.group.wait(STOP);
        let log = self.group.stderr();
        let status = status.unwrap_or_else(|| panic!("no exit {STOP:?} after SIGINT:\n{log}"));
        assert!(
            status.success(),
            "exit status {status} after SIGINT:\n{log}"
        );
        // The stderr thread may still be reading the last lines.
        wait_until(Duration::from_secs(10), || {
            self.group.stderr().contains("final ")
        });
        let log = self.group.stderr();
        assert!(log.contains("final "), "no final counters:\n{log}");
        log
    }
}

/// A frame: `{ size: u16 LE (whole frame), id: u16 LE }`, then `len` bytes of a pattern that
/// differs per frame.
fn frame(id: u16, len: usize) -> Vec<u8> {
    let size = u16::try_from(4 + len).unwrap();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(id as u8)));
    f
}

#[test]
fn echo_under_wine_is_byte_exact() {
    let Some(wine) = wine() else { return };
    let server = Server::start(
        &wine,
        &["echo", "--listen", "127.0.0.1:0", "--workers", "2"],
    );
    let addr = server.expect("listening on ");
    // Four clients at once (both workers), each a pipelined burst of frames from empty to the
    // largest, written in pieces that cut across frames; the echo must be the same bytes.
    let clients: Vec<_> = (0..4u16)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                for (k, len) in [0, 1, 5, 60, 1000, 4096, 65_531, 7, 20_000, 3]
                    .into_iter()
                    .enumerate()
                {
                    sent.extend(frame(c * 100 + k as u16, len));
                }
                for k in 0..200u16 {
                    sent.extend(frame(1000 + k, usize::from(k % 50)));
                }
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let reader = {
                    let mut s = s.try_clone().unwrap();
                    let len = sent.len();
                    std::thread::spawn(move || {
                        let mut back = vec![0; len];
                        s.read_exact(&mut back).map(|()| back)
                    })
                };
                for piece in sent.chunks(777) {
                    s.write_all(piece).unwrap();
                }
                let back = reader.join().unwrap().expect("every byte echoed");
                assert!(
                    back == sent,
                    "client {c}: the echo differs from what was sent"
                );
                sent.len()
            })
        })
        .collect();
    let bytes: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(bytes > 350_000, "{bytes} bytes echoed");
    let log = server.interrupt();
    assert!(log.contains("serving"), "{log}");
}

#[test]
fn world_under_wine_serves_500_linux_bots() {
    let Some(wine) = wine() else { return };
    let server = Server::start(
        &wine,
        &["world", "--listen", "127.0.0.1:0", "--workers", "2"],
    );
    let addr = server.expect("listening on ");
    let bots = BOTS.to_string();
    let mut load = Command::new(env!("CARGO_BIN_EXE_zerocast"));
    load.args(["load", "world", "--target", &addr, "-c", &bots, "--json"])
        // 2 moves a second per bot, joining 250 a second; a short window after a warm-up.
        .args([
            "--hz",
            "2",
            "--ramp",
            "250",
            "--warmup",
            "2",
            "--duration",
            "5",
        ])
        .args(["--drain", "5", "--no-busy-poll", "--max-failed", "0"]);
    let mut load = Group::spawn(load);
    let mut out = String::new();
    let reader = {
        let mut stdout = load.child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let _ = stdout.read_to_string(&mut out);
            out
        })
    };
    let started = Instant::now();
    let status = load.wait(Duration::from_secs(300));
    let status = status.unwrap_or_else(|| {
        panic!(
            "the load generator still runs after {:?}; its stderr:\n{}\nthe server's:\n{}",
            started.elapsed(),
            load.stderr(),
            server.group.stderr()
        )
    });
    let out = reader.join().unwrap();
    assert!(
        status.success(),
        "the load generator exited {status}: {out}\n{}\nthe server's stderr:\n{}",
        load.stderr(),
        server.group.stderr()
    );
    let report: Value = serde_json::from_str(&out).expect("one JSON report on stdout");
    let n = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a count: {v} in {report}"))
    };
    assert_eq!(n(&report["connected"]), BOTS as u64, "{report}");
    assert_eq!(n(&report["world"]["joined"]), BOTS as u64, "{report}");
    assert!(n(&report["received"]) > 0, "no move delivered: {report}");
    assert_eq!(n(&report["world"]["out_of_range"]), 0, "{report}");
    assert_eq!(n(&report["disconnects"]), 0, "{report}");
    eprintln!(
        "world under Wine: {} bots joined, {} moves delivered in the {} s window, p99 {} us",
        report["world"]["joined"],
        report["received"],
        report["window_s"],
        report["latency"]["p99_us"]
    );
    let log = server.interrupt();
    eprintln!("{}", log.lines().last().unwrap_or_default());
}
