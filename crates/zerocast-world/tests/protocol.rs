//! docs/PROTOCOL.md is checked against the code: every test vector is encoded with the
//! server's own packet types and compared byte for byte (and decoded back), and the annotated
//! session at the end of the page is played against a real server, every byte both ways.

/// The engine's end-to-end helpers, shared rather than copied.
#[path = "../../zerocast/tests/util/mod.rs"]
mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use util::*;
use zerocast::packet::{FixedPacket, VarPacket};
use zerocast::{Engine, SendBuffer};
use zerocast_world::packets::{
    Attack, Attacked, ChatFrom, ChatText, Entered, Goodbye, Join, Left, Move, Moved, Ping, Pong,
    Rejected, Welcome,
};
use zerocast_world::{World, WorldConfig};

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md")
}

/// The lines of the fenced block whose info string is `kind`.
fn block(doc: &str, kind: &str) -> Vec<String> {
    let start = doc
        .find(&format!("```{kind}\n"))
        .unwrap_or_else(|| panic!("no ```{kind} block in PROTOCOL.md"));
    let body = &doc[start + kind.len() + 4..];
    let end = body.find("```").expect("the block ends");
    body[..end].lines().map(str::to_owned).collect()
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad hex byte {b:?}")))
        .collect()
}

/// `name a=1 b=2.5 text=hi => hex`.
fn vector(line: &str) -> (String, HashMap<String, String>, Vec<u8>) {
    let (lhs, rhs) = line.split_once("=>").expect("name fields => bytes");
    let mut words = lhs.split_whitespace();
    let name = words.next().expect("a packet name").to_owned();
    let fields = words
        .map(|w| {
            let (k, v) = w.split_once('=').expect("field=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    (name, fields, hex(rhs))
}

fn num<T: std::str::FromStr>(f: &HashMap<String, String>, k: &str) -> T {
    let v = &f[k];
    let v = v.strip_prefix("0x").map_or_else(
        || v.clone(),
        |h| u64::from_str_radix(h, 16).unwrap().to_string(),
    );
    v.parse()
        .unwrap_or_else(|_| panic!("field {k} = {v} does not parse"))
}

/// Encodes a vector with the packet types, and checks its bytes decode to the same packet.
fn encode(name: &str, f: &HashMap<String, String>, bytes: &[u8]) -> SendBuffer {
    use zerocopy::little_endian::{F32, U16, U32, U64};
    let payload = &bytes[4..];
    macro_rules! fixed {
        ($t:ty, $v:expr) => {{
            let p: $t = $v;
            assert_eq!(
                *<$t>::decode(payload).expect("decodes"),
                p,
                "{name} decodes"
            );
            p.encode()
        }};
    }
    let f32f = |k| F32::new(num::<f32>(f, k));
    let u64f = |k| U64::new(num::<u64>(f, k));
    match name {
        "Join" => fixed!(Join, Join::new(num(f, "protocol"))),
        "Move" => fixed!(
            Move,
            Move::new(num(f, "x"), num(f, "y"), num(f, "z"), num(f, "velocity"))
        ),
        "Attack" => fixed!(Attack, Attack::new(num(f, "target"))),
        "Ping" => fixed!(Ping, Ping::new(num(f, "nonce"))),
        "Pong" => fixed!(
            Pong,
            Pong {
                nonce: U32::new(num(f, "nonce"))
            }
        ),
        "Left" => fixed!(Left, Left { id: u64f("id") }),
        "Attacked" => fixed!(
            Attacked,
            Attacked {
                attacker: u64f("attacker"),
                target: u64f("target"),
            }
        ),
        "Moved" => fixed!(
            Moved,
            Moved {
                id: u64f("id"),
                x: f32f("x"),
                y: f32f("y"),
                z: f32f("z"),
                velocity: f32f("velocity"),
            }
        ),
        "Entered" => fixed!(
            Entered,
            Entered {
                id: u64f("id"),
                x: f32f("x"),
                y: f32f("y"),
                z: f32f("z"),
            }
        ),
        "Welcome" => fixed!(
            Welcome,
            Welcome {
                id: u64f("id"),
                x: f32f("x"),
                y: f32f("y"),
                z: f32f("z"),
                world_size: f32f("world_size"),
                cell_size: f32f("cell_size"),
                max_speed: f32f("max_speed"),
                tick_ms: U16::new(num(f, "tick_ms")),
            }
        ),
        "Rejected" => fixed!(
            Rejected,
            Rejected {
                packet: U16::new(num(f, "packet")),
                reason: num(f, "reason"),
                x: f32f("x"),
                y: f32f("y"),
                z: f32f("z"),
            }
        ),
        "Chat" => {
            let line = ChatText {
                channel: num(f, "channel"),
                text: &f["text"],
            };
            assert_eq!(
                zerocast_world::packets::Chat::decode(payload).unwrap(),
                line
            );
            line.encode().unwrap()
        }
        "ChatFrom" => {
            let got = ChatFrom::decode(payload).unwrap();
            assert_eq!(got.from, num::<u64>(f, "id"));
            assert_eq!(got.chat.channel, num::<u8>(f, "channel"));
            assert_eq!(got.chat.text, f["text"]);
            let mut out = Vec::new();
            let chat = [&[got.chat.channel][..], f["text"].as_bytes()].concat();
            ChatFrom::encode_into(&mut out, num(f, "id"), &chat);
            SendBuffer::copy_from_slice(&out)
        }
        "Goodbye" => {
            let got = Goodbye::decode(payload).unwrap();
            assert_eq!(
                (got.reason, got.text),
                (num::<u8>(f, "reason"), &*f["text"])
            );
            Goodbye::encode(num(f, "reason"), &f["text"])
        }
        other => panic!("no vector decoder for {other}"),
    }
}

#[test]
fn every_test_vector_in_the_protocol_matches_the_servers_encoding() {
    let doc = protocol_md();
    let lines: Vec<_> = block(&doc, "vectors")
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut names = Vec::new();
    for line in &lines {
        let (name, fields, bytes) = vector(line);
        let encoded = encode(&name, &fields, &bytes);
        assert_eq!(encoded.as_bytes().as_ref(), &bytes[..], "{name}: {line}");
        names.push(name);
    }
    // One vector per packet of the protocol.
    for p in [
        "Join", "Move", "Attack", "Chat", "Ping", "Welcome", "Moved", "Entered", "Left",
        "Attacked", "ChatFrom", "Rejected", "Pong", "Goodbye",
    ] {
        assert!(names.iter().any(|n| n == p), "no vector for {p}");
    }
}

#[test]
fn the_annotated_session_is_what_a_real_server_says() {
    let doc = protocol_md();
    let mut steps = Vec::new();
    for line in block(&doc, "session") {
        let Some((dir, bytes)) = line.split_once(' ') else {
            continue;
        };
        match dir {
            "C→S" => steps.push((true, hex(bytes))),
            "S→C" => steps.push((false, hex(bytes))),
            _ => assert!(
                line.starts_with("    "),
                "an annotation is indented: {line:?}"
            ),
        }
    }
    assert!(steps.len() >= 8, "the session has its steps");
    // A fresh default world: its first player has id 1 and the spawn the page shows.
    let world = Arc::new(World::new(WorldConfig::default()));
    let (engine, addr) = server_with(world.configure(Engine::builder().workers(1)), world.clone());
    let mut s = connect(addr);
    for (i, (to_server, bytes)) in steps.iter().enumerate() {
        if *to_server {
            s.write_all(bytes).unwrap();
        } else {
            let mut got = vec![0u8; bytes.len()];
            s.read_exact(&mut got)
                .unwrap_or_else(|e| panic!("step {i}: {e}"));
            assert_eq!(&got, bytes, "step {i}: the server's bytes");
        }
    }
    assert!(
        closed_by_peer(&mut s),
        "the server closes after its Goodbye"
    );
    engine.shutdown();
    assert_no_leaks(&engine);
}
