//! The live view (`zerocast world --http`) in a real headless Chromium, driven over the
//! DevTools protocol on a pipe (`--remote-debugging-pipe`: no port, no WebSocket client
//! here): the page loads, polls the world, and draws a dot for every bot, which the test
//! finds in the page's screenshot; and a browser player joins over WebSocket, hears the bots
//! around it, and moves with the arrow keys.
//!
//! Chromium comes from the Debian package `chromium` (or `ZEROCAST_CHROMIUM=PATH`). Without
//! it the Chromium tests say so loudly and pass, unless `ZEROCAST_REQUIRE_CHROMIUM=1` (set
//! by `.ci/run`, which installs it), where they fail.
//!
//! `ZEROCAST_SCREENSHOTS=DIR` keeps the screenshots there (`live-view.png`, and
//! `live-view-play.png` from the player test; a relative DIR is the workspace's):
//! docs/live-view.png and docs/live-view-play.png are made with
//! `ZEROCAST_SCREENSHOTS=docs cargo test -p zerocast-cli --test browser`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::{start_printing, wait_until};
use serde_json::{json, Value};

/// Generous bounds on waits for events (a loaded CI machine is slow, never this slow).
const WAIT: Duration = Duration::from_secs(60);

/// Bots in the tests' world.
const BOTS: usize = 40;

/// The tests' world: small, so that each bot has others in its 3×3 cells.
const WORLD: [&str; 4] = ["--world-size", "600", "--cell-size", "100"];

/// The colours app.js draws with (`COLOURS`): other players, what the player sees, itself.
const DOT: [u8; 3] = [0x3b, 0x6f, 0xd4];
const SEEN: [u8; 3] = [0xf0, 0x8c, 0x00];
const ME: [u8; 3] = [0xd6, 0x28, 0x28];

/// The Chromium binary, or `None` (after saying so) where there is none and none is required.
fn chromium() -> Option<String> {
    let candidates = std::env::var("ZEROCAST_CHROMIUM")
        .map(|c| vec![c])
        .unwrap_or_else(|_| vec!["chromium".into(), "chromium-browser".into()]);
    for c in candidates {
        let found = Command::new(&c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return Some(c);
        }
    }
    assert!(
        std::env::var("ZEROCAST_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
        "Chromium is required (ZEROCAST_REQUIRE_CHROMIUM=1): apt-get install chromium"
    );
    eprintln!(
        "\n*** SKIPPED: no Chromium on this machine (apt-get install chromium, or set \
         ZEROCAST_CHROMIUM): the live view was NOT tested in a browser ***\n"
    );
    None
}

/// A headless Chromium and one page, spoken to over the DevTools protocol on a pipe: JSON
/// messages ended by a NUL byte, Chromium reading on its fd 3 and writing on its fd 4.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next: u64,
    /// The page's session.
    session: String,
    _profile: TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh from pipe2 and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    fn open(exe: &str, url: &str) -> Self {
        let (their_in, to) = pipe();
        let (from, their_out) = pipe();
        let profile = TempDir::new("zerocast-chromium");
        let (r, w) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        let mut cmd = Command::new(exe);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            "--window-size=800,800",
            &format!("--user-data-dir={}", profile.0.display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2, close)
        // on descriptors this process owns. The pipe ends are first copied above 10, so that
        // neither dup2 can be handed a descriptor that is already 3 or 4 (which would keep
        // its close-on-exec flag), then put on 3 and 4 without it.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::fcntl(r, libc::F_DUPFD, 10);
                let w = libc::fcntl(w, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(r);
                libc::close(w);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("chromium starts");
        drop((their_in, their_out));
        let mut b = Self {
            child,
            to: std::fs::File::from(to),
            from: BufReader::new(std::fs::File::from(from)),
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call(None, "Target.createTarget", json!({ "url": url }));
        let target = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        b
    }

    /// Sends a command and returns its result, skipping the events that come first.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut msg = json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("chromium reads its pipe");
        loop {
            let mut raw = Vec::new();
            let n = self.from.read_until(0, &mut raw).expect("chromium answers");
            assert!(n > 0, "chromium closed its pipe during {method}");
            raw.pop();
            let reply: Value = serde_json::from_slice(&raw).expect("JSON from chromium");
            if reply["id"] == json!(self.next) {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// The data-* attributes of the element `id`, as strings by name (empty before the page
    /// has it).
    fn data(&mut self, id: &str) -> Value {
        let v = self.eval(&format!(
            "JSON.stringify((document.getElementById('{id}') || {{}}).dataset || {{}})"
        ));
        serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap_or(json!({}))
    }

    /// An attribute of `data(id)` as a number (0 while absent).
    fn count(&mut self, id: &str, name: &str) -> u64 {
        self.data(id)[name]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Where the map's canvas lies on the page (the screenshot's pixels: no zoom here).
    fn map(&mut self) -> Rect {
        let r = self.eval(
            "(r => [r.left, r.top, r.right, r.bottom].map(Math.round))\
             (document.getElementById('map').getBoundingClientRect())",
        );
        let v: Vec<usize> = r
            .as_array()
            .expect("the canvas's rectangle")
            .iter()
            .map(|v| v.as_u64().expect("whole pixels") as usize)
            .collect();
        [v[0], v[1], v[2], v[3]]
    }

    fn key(&mut self, kind: &str, key: &str, code: u32) {
        let session = self.session.clone();
        self.call(
            Some(&session),
            "Input.dispatchKeyEvent",
            json!({ "type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code }),
        );
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed at drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Killed at drop: the world server and the bots.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` from `addr`: the body of the answer.
fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_owned()
}

fn state(http: &str) -> Value {
    serde_json::from_str(&get(http, "/state.json")).expect("state.json is JSON")
}

/// `zerocast world` with the live view (and `extra` flags), and `BOTS` bots joined to it;
/// returns both and the addresses the server printed after `listening on` (`prefixes`).
fn world_with_bots(extra: &[&str], prefixes: &[&str]) -> (Running, Running, Vec<String>) {
    let mut args = vec!["world", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    args.extend_from_slice(&WORLD);
    args.extend_from_slice(extra);
    let mut all = vec!["listening on "];
    all.extend_from_slice(prefixes);
    all.push("http on ");
    let (server, lines) = start_printing(&args, Stdio::piped(), &all);
    let server = Running(server);
    let bots = Running(
        Command::new(env!("CARGO_BIN_EXE_zerocast"))
            .args(["load", "world", "--target", &lines[0]])
            .args(["-c", &BOTS.to_string(), "--hz", "5", "--ramp", "1000"])
            .args(["--warmup", "0", "--duration", "300", "--no-busy-poll"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the bots start"),
    );
    let http = lines.last().unwrap().clone();
    assert!(
        wait_until(WAIT, || state(&http)["players"]
            .as_array()
            .is_some_and(|p| p.len() == BOTS)),
        "every bot on the map: {}",
        state(&http)
    );
    (server, bots, lines)
}

/// A rectangle of the page, in pixels: `[left, top, right, bottom)`.
type Rect = [usize; 4];

/// Pixels of exactly `colour` inside `rect` of a PNG.
fn pixels_of(png_bytes: &[u8], colour: [u8; 3], rect: Rect) -> usize {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
    let info = reader.next_frame(&mut buf).expect("the PNG's image");
    let step = info.color_type.samples();
    assert!(step >= 3, "a colour screenshot, not {:?}", info.color_type);
    let width = info.width as usize;
    buf[..info.buffer_size()]
        .chunks_exact(step)
        .enumerate()
        .filter(|(i, p)| {
            let (x, y) = (i % width, i / width);
            (rect[0]..rect[2]).contains(&x) && (rect[1]..rect[3]).contains(&y) && p[..3] == colour
        })
        .count()
}

fn keep(name: &str, png_bytes: &[u8]) {
    if let Ok(dir) = std::env::var("ZEROCAST_SCREENSHOTS") {
        // A relative directory is the workspace's (tests run in their crate's directory).
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let path = root.join(dir).join(name);
        std::fs::write(&path, png_bytes).unwrap();
        eprintln!("screenshot kept in {}", path.display());
    }
}

#[test]
fn the_live_view_serves_its_files_its_state_and_metrics() {
    let (mut server, _bots, lines) =
        world_with_bots(&["--metrics", "127.0.0.1:0"], &["metrics on "]);
    let http = &lines[2];
    assert!(get(http, "/").contains("<canvas id=\"map\""));
    assert!(get(http, "/app.js").contains("function eachFrame"));
    assert!(common::metric_sum(&get(http, "/metrics"), "zerocast_world_players").is_some());
    // Deliveries happen; the second poll, half a second or more after the first, rates them.
    let s = state(http);
    assert_eq!(s["world"]["size"], json!(600.0));
    assert_eq!(s["world"]["cell_size"], json!(100.0));
    assert_eq!(s["world"]["view_cells"], json!(1));
    assert_eq!(s["ws"], Value::Null, "no --ws");
    assert!(wait_until(WAIT, || state(http)["figures"]
        ["deliveries_per_sec"]
        .as_f64()
        .is_some_and(|d| d > 0.0)));
    for p in state(http)["players"].as_array().unwrap() {
        let (x, y) = (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap());
        assert!(
            (0.0..=600.0).contains(&x) && (0.0..=600.0).contains(&y),
            "{p}"
        );
    }
    let mut s = TcpStream::connect(http.as_str()).unwrap();
    write!(s, "GET /nothing HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    // A browser's idle connection holds nothing up: the next request is answered.
    let idle = TcpStream::connect(http.as_str()).unwrap();
    assert!(get(http, "/state.json").contains("\"players\""));
    drop(idle);
    // And the server still stops cleanly.
    let (status, err) = common::terminate(&mut server.0, WAIT);
    assert!(status.success(), "{err}");
}

#[test]
fn metrics_at_the_live_views_address_share_its_server() {
    // A free port (the kernel could hand it to someone else before the server binds it:
    // then the server says "cannot serve the live view" and this test fails loudly).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = format!("127.0.0.1:{port}");
    let args = [
        "world",
        "--listen",
        "127.0.0.1:0",
        "--http",
        &at,
        "--metrics",
        &at,
    ];
    let prefixes = ["listening on ", "metrics on ", "http on "];
    let (mut server, lines) = start_printing(&args, Stdio::piped(), &prefixes);
    assert_eq!(
        (lines[1].as_str(), lines[2].as_str()),
        (at.as_str(), at.as_str())
    );
    assert!(common::metric_sum(&get(&at, "/metrics"), "zerocast_world_players").is_some());
    assert!(get(&at, "/").contains("<canvas"));
    let (status, err) = common::terminate(&mut server, WAIT);
    assert!(status.success(), "{err}");
}

#[test]
fn the_live_view_in_chromium_draws_every_player() {
    let Some(exe) = chromium() else {
        return;
    };
    let (_server, _bots, lines) = world_with_bots(&[], &[]);
    let http = &lines[1];
    let mut browser = Browser::open(&exe, &format!("http://{http}/"));
    assert!(
        wait_until(WAIT, || browser.count("figures", "polls") >= 2
            && browser.count("figures", "players") == BOTS as u64),
        "the page polled the world and has every bot: {}",
        browser.data("figures")
    );
    let shot = browser.screenshot();
    keep("live-view.png", &shot);
    let map = browser.map();
    let dots = pixels_of(&shot, DOT, map);
    // A dot is a disc of radius 3: a dozen or more pixels of its exact colour, even where two
    // overlap a little.
    assert!(
        dots >= 5 * BOTS,
        "{dots} pixels of the dot colour for {BOTS} bots"
    );
    assert_eq!(pixels_of(&shot, ME, map), 0, "nobody plays");
    assert_eq!(
        browser.data("status")["joined"],
        json!("0"),
        "no --ws, no player"
    );
}

#[test]
fn a_browser_player_joins_over_websocket_sees_the_bots_nearby_and_moves() {
    play_in_chromium("127.0.0.1:0", Some("live-view-play.png"));
}

#[test]
fn a_browser_player_plays_on_the_game_port_with_ws_same() {
    play_in_chromium("same", None);
}

/// A browser player against `zerocast world --ws WS`; its screenshot kept as `shot`, if any.
fn play_in_chromium(ws: &str, shot: Option<&str>) {
    let Some(exe) = chromium() else {
        return;
    };
    let (_server, _bots, lines) = world_with_bots(&["--ws", ws], &["websocket on "]);
    if ws == "same" {
        assert_eq!(lines[1], lines[0], "WebSocket on the game port");
    }
    let http = &lines[2];
    assert_eq!(
        state(http)["ws"],
        json!(format!("ws://{}/", lines[1])),
        "the page learns where to play"
    );
    let mut browser = Browser::open(&exe, &format!("http://{http}/?play"));
    assert!(
        wait_until(WAIT, || {
            let s = browser.data("status");
            let n = |k: &str| {
                s[k].as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            s["joined"] == json!("1") && n("entered") > 0 && n("moves") > 0
        }),
        "joined, told of the bots around it, and received their moves: {}",
        browser.data("status")
    );
    let me = browser.data("status")["id"].as_str().unwrap().to_owned();
    let at = |http: &str| {
        state(http)["players"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == json!(me))
            .map(|p| p["x"].as_f64().unwrap())
    };
    let mut start = None;
    assert!(wait_until(WAIT, || {
        start = at(http);
        start.is_some()
    }));
    let start = start.unwrap();
    // Walk away from the nearer edge, holding the key, until the server has the player
    // somewhere else.
    let (key, code, sign) = if start > 300.0 {
        ("ArrowLeft", 37, -1.0)
    } else {
        ("ArrowRight", 39, 1.0)
    };
    browser.key("keyDown", key, code);
    assert!(
        wait_until(WAIT, || at(http).is_some_and(|x| (x - start) * sign > 2.0)),
        "the server moved the player with the arrow key: from {start} to {:?}",
        at(http)
    );
    browser.key("keyUp", key, code);
    let png = browser.screenshot();
    if let Some(name) = shot {
        keep(name, &png);
    }
    let map = browser.map();
    assert!(pixels_of(&png, ME, map) > 0, "the player is drawn");
    assert!(pixels_of(&png, SEEN, map) > 0, "what it sees is drawn");
    assert_eq!(browser.data("status")["ended"], json!(""), "still playing");
}

#[test]
fn the_demo_serves_its_live_view_while_the_bots_run() {
    let mut demo = Running(
        Command::new(env!("CARGO_BIN_EXE_zerocast"))
            .args(["demo", "--bots", "50", "--duration", "3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the demo starts"),
    );
    let mut out = BufReader::new(demo.0.stdout.take().unwrap());
    let mut url = None;
    let mut seen = String::new();
    for _ in 0..5 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        seen.push_str(&line);
        if let Some(u) = line.trim().strip_prefix("live view: ") {
            url = Some(u.to_owned());
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("no live view line in:\n{seen}"));
    let http = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix('/'))
        .unwrap_or_else(|| panic!("a live view URL: {url}"))
        .to_owned();
    assert!(get(&http, "/").contains("<canvas"));
    assert!(
        wait_until(WAIT, || state(&http)["players"]
            .as_array()
            .is_some_and(|p| p.len() == 50)),
        "the bots on the demo's map: {}",
        state(&http)
    );
    // The rest of the demo's output, to its end.
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(demo.0.wait().unwrap().success(), "{seen}{rest}");
    assert!(rest.contains("summary"), "{rest}");
}
