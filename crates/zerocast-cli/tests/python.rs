//! What a newcomer's other tools see: the Python reference client (standard library only,
//! written from docs/PROTOCOL.md) plays against the real world server, and `/metrics` parses
//! with the Prometheus project's own Python parser.
//!
//! A Python `websockets` (PyPI) client plays over WebSocket beside raw-TCP players.
//!
//! All need `python3`; the metrics test also needs the `prometheus_client` package (Debian:
//! `python3-prometheus-client`), the WebSocket one `websockets` (PyPI, 11 or later). Without
//! them the tests say so and pass, unless `ZEROCAST_REQUIRE_PYTHON=1` (set by `.ci/run`, which
//! installs them), where they fail.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

fn python_has(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let need = format!("python3 with the {module} module");
        assert!(
            std::env::var("ZEROCAST_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "{need} is required (ZEROCAST_REQUIRE_PYTHON=1)"
        );
        eprintln!("skipped: no {need} on this machine");
    }
    ok
}

/// A `zerocast world` and the addresses it prints (players, metrics).
fn world(extra: &[&str]) -> (Child, String, String) {
    let mut args = vec![
        "world",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    // `websocket on` comes between the two when asked for.
    let mut expect = vec!["listening on "];
    if extra.contains(&"--ws") {
        expect.push("websocket on ");
    }
    expect.push("metrics on ");
    let (child, mut lines) = common::start_printing(&args, Stdio::null(), &expect);
    let metrics = lines.pop().unwrap();
    (child, lines.pop().unwrap(), metrics)
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_python_reference_client_plays_against_the_real_server() {
    if !python_has("struct") {
        return;
    }
    // A small world and a fast speed limit, so the two players walk together in a second.
    let (child, addr, _) = world(&[
        "--world-size",
        "300",
        "--cell-size",
        "100",
        "--max-speed",
        "1000",
    ]);
    let client = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python/world_client.py"
    );
    let out = Command::new("python3")
        .args([client, "--target", &addr, "--selftest"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the reference client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("selftest passed"));
    stop(child);
}

#[test]
fn a_python_websockets_client_is_sent_what_a_raw_tcp_client_is() {
    if !python_has("websockets.sync.client") {
        return;
    }
    let (child, addr, _) = world(&[
        "--world-size",
        "300",
        "--cell-size",
        "100",
        "--max-speed",
        "1000",
        "--ws",
        "same",
    ]);
    let client = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python/world_client.py"
    );
    // `--ws same`: WebSocket and raw TCP on the one port.
    let out = Command::new("python3")
        .args([client, "--target", &addr, "--ws", &addr, "--interop"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the WebSocket interop check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("interop passed"));
    stop(child);
}

#[test]
fn metrics_parse_with_the_prometheus_python_parser() {
    if !python_has("prometheus_client") {
        return;
    }
    let (child, addr, metrics) = world(&[]);
    // A player, so the world's and the engine's figures move.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&[6, 0, 1, 1, 1, 0]).unwrap();
    let mut welcome = [0u8; 38];
    s.read_exact(&mut welcome).unwrap();
    let text = common::scrape(&metrics);
    let body = text.split_once("\r\n\r\n").expect("an HTTP response").1;
    let parser = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
print(json.dumps({f.name: f.type for f in text_string_to_metric_families(sys.stdin.read())}))
"#;
    let mut py = Command::new("python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families = String::from_utf8(out.stdout).unwrap();
    for (name, kind) in [
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("zerocast_frames_in", "counter"),
        ("zerocast_connections_open", "gauge"),
        ("zerocast_world_players", "gauge"),
    ] {
        assert!(
            families.contains(&format!("\"{name}\": \"{kind}\"")),
            "{name} ({kind}) missing: {families}"
        );
    }
    assert!(
        families.contains("\"histogram\""),
        "a histogram family: {families}"
    );
    assert!(
        families.contains("zerocast_build"),
        "build info: {families}"
    );
    drop(s);
    stop(child);
}
