//! What a newcomer meets first, through the real binary: a second server on a served port is
//! refused, a load against the wrong kind of server fails and says what the server speaks,
//! impossible demo settings are refused before anything starts, and `demo --json` prints one
//! JSON document.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn zerocast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zerocast"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// Starts a server (stderr piped, for `common::terminate`) and returns it with its address.
fn serve(args: &[&str]) -> (Child, String) {
    common::start_server(args, Stdio::piped())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_second_server_on_a_served_port_fails_naming_the_port_and_the_remedy() {
    let (mut echo, addr) = serve(&["echo", "--listen", "127.0.0.1:0"]);
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let out = zerocast(&["world", "--listen", &addr]);
    assert!(!out.status.success(), "a second server started on {addr}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("--reuse-port"),
        "{err}"
    );
    assert_eq!(text(&out.stdout), "", "no `listening on` line");
    let (status, _) = common::terminate(&mut echo, Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn load_against_the_wrong_server_fails_and_says_what_the_server_speaks() {
    let (mut echo, echo_addr) = serve(&["echo", "--listen", "127.0.0.1:0", "--workers", "1"]);
    let (mut world, world_addr) = serve(&["world", "--listen", "127.0.0.1:0", "--workers", "1"]);
    let quick = [
        "-c",
        "10",
        "--warmup",
        "0.2",
        "--duration",
        "1",
        "--drain",
        "0.5",
    ];

    // World bots against an echo server: their own Join comes back.
    let mut args = vec!["load", "world", "--target", &echo_addr];
    args.extend(quick);
    let out = zerocast(&args);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "exit 0 against the wrong server: {err}"
    );
    assert!(
        err.contains("did not match the world scenario") && err.contains("an echo server"),
        "{err}"
    );
    assert!(
        err.contains("zerocast load echo"),
        "suggests the right scenario: {err}"
    );

    // Echo probes against a world server: it closes every session.
    let mut args = vec!["load", "echo", "--target", &world_addr];
    args.extend(quick);
    let out = zerocast(&args);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("echo"), "{err}");
    assert!(err.contains("nothing was measured"), "{err}");
    // The report says "-" where nothing was measured, never 0.0 or NaN.
    let report = text(&out.stdout);
    assert!(report.contains("latency (us)  -"), "{report}");
    assert!(!report.contains("NaN"), "{report}");

    for s in [&mut echo, &mut world] {
        let (status, _) = common::terminate(s, Duration::from_secs(10));
        assert!(status.success());
    }
}

#[test]
fn impossible_demo_settings_are_refused_before_anything_starts() {
    for (args, option) in [
        (&["demo", "--duration", "0"][..], "--duration"),
        (&["demo", "--hz", "0"][..], "--hz"),
        (&["demo", "--bots", "0"][..], "--bots"),
        (&["demo", "--bots", "20000"][..], "--bots"),
        (
            &["echo", "--listen", "127.0.0.1:0", "--workers", "0"][..],
            "--workers",
        ),
    ] {
        let out = zerocast(args);
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            text(&out.stderr).contains(option),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            text(&out.stdout),
            "",
            "{args:?}: nothing printed before the error"
        );
    }
}

#[test]
fn demo_json_is_exactly_one_json_document_on_stdout() {
    let out = zerocast(&["demo", "--bots", "100", "--duration", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut check = Command::new("python3")
        .args(["-m", "json.tool"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 runs");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), &out.stdout).unwrap();
    drop(check.stdin.take());
    assert!(
        check.wait().unwrap().success(),
        "not one JSON document: {}",
        text(&out.stdout)
    );
    // The live lines went to stderr.
    assert!(
        text(&out.stderr).contains("measuring"),
        "{}",
        text(&out.stderr)
    );
}
