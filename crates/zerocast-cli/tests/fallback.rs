//! `--backend auto` where io_uring is forbidden, the way container runtimes forbid it: the real
//! binary runs under a seccomp filter that fails `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register` with `EPERM` (Docker's default profile does the same). `auto` must fall
//! back to epoll, say why, and serve; `uring` must refuse to start with the reason.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

/// `AUDIT_ARCH_X86_64` from `<linux/audit.h>` (not in the libc crate).
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// The classic-BPF seccomp program: the three io_uring calls fail with `EPERM`, everything else
/// is allowed. Hand-written because it is eight instructions; `seccompiler` would be the crate
/// for anything larger.
fn no_io_uring() -> Vec<libc::sock_filter> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    // struct seccomp_data { int nr; __u32 arch; ... }
    let (nr, arch) = (0, 4);
    vec![
        stmt(load, arch),                                           // 0
        jeq(AUDIT_ARCH_X86_64, 0, 4),                               // 1: other ABI → allow
        stmt(load, nr),                                             // 2
        jeq(libc::SYS_io_uring_setup as u32, 3, 0),                 // 3 → deny
        jeq(libc::SYS_io_uring_enter as u32, 2, 0),                 // 4 → deny
        jeq(libc::SYS_io_uring_register as u32, 1, 0),              // 5 → deny
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW), // 6
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ), // 7
    ]
}

/// Starts `zerocast echo` with `backend`, under the filter when `forbid`.
fn spawn(backend: &str, forbid: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zerocast"));
    cmd.args(["echo", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--backend", backend])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if forbid {
        let filter = no_io_uring();
        // SAFETY: the closure runs in the forked child before exec and only makes two
        // prctl calls (async-signal-safe system calls) on memory the parent built before the
        // fork: `filter` stays alive (moved into the closure) for the duration of the call.
        unsafe {
            cmd.pre_exec(move || {
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr().cast_mut(),
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().expect("binary runs")
}

/// The first stdout line (`listening on ADDR`), or `None` if the process ended first.
fn listening(child: &mut Child) -> Option<String> {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    Some(line.strip_prefix("listening on ")?.trim().to_string())
}

/// SIGTERM, a clean exit, and everything the process wrote on stderr.
fn stop(mut child: Child) -> String {
    let (status, err) = common::terminate(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit {status}: {err}");
    err
}

fn echo_once(addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = [8, 0, 7, 0, b'p', b'i', b'n', b'g'];
    s.write_all(&frame).unwrap();
    let mut back = [0u8; 8];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, frame);
}

/// The backend named on the `serving` log line.
fn serving_backend(log: &str) -> &str {
    let line = log
        .lines()
        .find(|l| l.contains("serving"))
        .unwrap_or_else(|| panic!("no serving line in {log}"));
    ["uring", "epoll"]
        .into_iter()
        .find(|b| line.contains(&format!("backend=\"{b}\"")))
        .unwrap_or_else(|| panic!("no backend on {line:?}"))
}

#[test]
fn auto_falls_back_to_epoll_where_io_uring_is_forbidden_and_says_why() {
    let mut child = spawn("auto", true);
    let addr = listening(&mut child).expect("auto starts without io_uring");
    echo_once(&addr);
    let log = stop(child);
    assert_eq!(serving_backend(&log), "epoll", "{log}");
    assert!(
        log.contains("io_uring unavailable, using epoll")
            && log.contains("not permitted")
            && log.contains("seccomp"),
        "the fallback and its reason are logged: {log}"
    );
}

#[test]
fn uring_refuses_to_start_where_io_uring_is_forbidden_with_the_reason() {
    let mut child = spawn("uring", true);
    assert_eq!(listening(&mut child), None, "no listener without io_uring");
    let status = child.wait().unwrap();
    let err = common::stderr_of(&mut child);
    assert!(!status.success());
    assert!(
        err.contains("the io_uring backend cannot run here") && err.contains("seccomp"),
        "{err}"
    );
}

#[test]
fn auto_picks_io_uring_where_the_kernel_allows_it() {
    // The control: without the filter, the same command serves on io_uring (where the machine
    // has it enabled), so the filter is what made the difference above.
    let enabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map_or(true, |v| v.trim() == "0");
    let mut child = spawn("auto", false);
    let addr = listening(&mut child).expect("starts");
    echo_once(&addr);
    let log = stop(child);
    let expected = if enabled { "uring" } else { "epoll" };
    assert_eq!(serving_backend(&log), expected, "{log}");
}
