//! WebSocket end to end over real sockets: the protocol's frames in binary messages, echoed
//! and broadcast beside raw TCP on one port, pings and closes answered, and every hostile
//! input closed with its status (or HTTP refusal), counted, with nothing else disturbed.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use util::*;
use zerocast::ws::frame::{self, Decoded, Decoder, Opcode};
use zerocast::ws::handshake;
use zerocast::{Engine, Transport};
use zerocast_servers::{Broadcast, Echo};

/// A blocking WebSocket client written from RFC 6455 with the crate's sans-IO pieces.
struct WsClient {
    s: TcpStream,
    /// Received bytes not yet decoded.
    wire: Vec<u8>,
    /// Binary payloads received: the protocol's stream.
    stream: Vec<u8>,
    dec: Decoder,
    key: [u8; 4],
}

impl WsClient {
    fn open(addr: SocketAddr) -> Self {
        let mut s = connect(addr);
        let key = handshake::encode_key(b"0123456789abcdef");
        s.write_all(&handshake::request("test", "/", &key)).unwrap();
        let mut wire = Vec::new();
        let mut b = [0u8; 4096];
        let len = loop {
            let n = s.read(&mut b).unwrap();
            assert!(n > 0, "closed during the handshake");
            wire.extend_from_slice(&b[..n]);
            if let Some(len) = handshake::parse_answer(&wire, &key).unwrap() {
                break len;
            }
        };
        wire.drain(..len);
        Self {
            s,
            wire,
            stream: Vec::new(),
            dec: Decoder::from_server(1 << 24),
            key: [0x11, 0x22, 0x33, 0x44],
        }
    }

    /// One masked binary message carrying `bytes`.
    fn send(&mut self, bytes: &[u8]) {
        let m = frame::client_frame(Opcode::Binary, true, bytes, self.key);
        self.s.write_all(&m).unwrap();
    }

    /// The next frame from the server: its opcode and payload (`None` at end of stream).
    fn next(&mut self) -> Option<(Opcode, Vec<u8>)> {
        loop {
            match self
                .dec
                .decode(&mut self.wire)
                .expect("a valid server frame")
            {
                Decoded::Frame(f) => {
                    let p = self.wire[f.header..f.total()].to_vec();
                    self.wire.drain(..f.total());
                    return Some((f.opcode, p));
                }
                Decoded::NeedMore(_) => {
                    let mut b = [0u8; 65536];
                    match self.s.read(&mut b) {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => self.wire.extend_from_slice(&b[..n]),
                    }
                }
            }
        }
    }

    /// The next protocol frame: `(id, payload)`; panics on anything but binary messages.
    fn read_frame(&mut self) -> (u16, Vec<u8>) {
        loop {
            if self.stream.len() >= 4 {
                let size = usize::from(u16::from_le_bytes([self.stream[0], self.stream[1]]));
                if self.stream.len() >= size {
                    let id = u16::from_le_bytes([self.stream[2], self.stream[3]]);
                    let payload = self.stream[4..size].to_vec();
                    self.stream.drain(..size);
                    return (id, payload);
                }
            }
            match self.next() {
                Some((Opcode::Binary, p)) => self.stream.extend_from_slice(&p),
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame: its status code (and checks the socket then
    /// closes).
    fn close_code(&mut self) -> u16 {
        loop {
            match self.next() {
                Some((Opcode::Close, p)) => {
                    assert!(p.len() >= 2, "a close frame with a status code");
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    assert!(closed_by_peer(&mut self.s), "the socket closes after");
                    return code;
                }
                Some(_) => continue,
                None => panic!("closed without a close frame"),
            }
        }
    }
}

fn ws_server(
    builder: zerocast::Builder,
    h: impl zerocast::Handler,
    t: Transport,
) -> (Engine, SocketAddr) {
    zerocast::buffer::track_leaks(true);
    let engine = builder.build(h).expect("engine starts");
    let addr = engine
        .listen_as("127.0.0.1:0".parse().unwrap(), t)
        .expect("listen on loopback");
    (engine, addr)
}

#[test]
fn echo_over_websocket_is_byte_exact_across_any_split_of_messages_and_segments() {
    let (engine, addr) = ws_server(Engine::builder().workers(2), Echo, Transport::WebSocket);
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    for round in 0..4 {
        let mut c = WsClient::open(addr);
        let frames: Vec<Vec<u8>> = (0..300)
            .map(|i| frame(i as u16, &vec![round as u8; rng.gen_range(0..600)]))
            .collect();
        let stream: Vec<u8> = frames.concat();
        // The stream cut into messages anywhere (frames split across messages), and each
        // message's bytes written in random segments.
        let mut wire = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = rng.gen_range(1..2000).min(stream.len() - at);
            wire.extend(frame::client_frame(
                Opcode::Binary,
                true,
                &stream[at..at + n],
                rng.gen(),
            ));
            at += n;
        }
        write_in_random_splits(&mut c.s, &wire, &mut rng);
        for (i, f) in frames.iter().enumerate() {
            let (id, payload) = c.read_frame();
            assert_eq!(id, i as u16);
            assert_eq!(payload, f[4..], "frame {i} of round {round}");
        }
        // A ping is answered with its payload.
        c.s.write_all(&frame::client_frame(
            Opcode::Ping,
            true,
            b"are you there",
            [9; 4],
        ))
        .unwrap();
        assert_eq!(c.next(), Some((Opcode::Pong, b"are you there".to_vec())));
        // A close is answered with its code, then the socket closes.
        let close = frame::client_frame(Opcode::Close, true, &1000u16.to_be_bytes(), [3; 4]);
        c.s.write_all(&close).unwrap();
        assert_eq!(c.close_code(), 1000);
    }
    let m = engine.metrics();
    assert_eq!(m.ws_opened, 4);
    assert_eq!(m.ws_errors + m.ws_refused, 0);
    assert_no_leaks(&engine);
}

#[test]
fn broadcast_reaches_websocket_and_tcp_clients_on_one_port_with_the_same_frames_in_order() {
    const EACH: usize = 4;
    const FRAMES: usize = 60;
    let (engine, addr) = ws_server(
        Engine::builder().workers(2),
        Broadcast::new(),
        Transport::Both,
    );
    let mut ws: Vec<WsClient> = (0..EACH).map(|_| WsClient::open(addr)).collect();
    let mut tcp: Vec<TcpStream> = (0..EACH).map(|_| connect(addr)).collect();
    assert!(wait_until(Duration::from_secs(30), || engine
        .metrics()
        .connections_open
        == 2 * EACH as u64));
    for i in 0..FRAMES {
        for (k, c) in ws.iter_mut().enumerate() {
            c.send(&frame(k as u16, &[i as u8; 20]));
        }
        for (k, s) in tcp.iter_mut().enumerate() {
            s.write_all(&frame((EACH + k) as u16, &[i as u8; 20]))
                .unwrap();
        }
    }
    // Every client sees every sender's frames in order: the relayed frame is the sender's
    // id then the payload.
    let check = |got: Vec<(u16, Vec<u8>)>| {
        let mut next = [0u8; 2 * EACH];
        for (id, payload) in got {
            let k = usize::from(id);
            assert_eq!(payload[8..], [next[k]; 20], "sender {k} in order");
            next[k] += 1;
        }
        assert!(next.iter().all(|&n| usize::from(n) == FRAMES));
    };
    for c in &mut ws {
        check((0..2 * EACH * FRAMES).map(|_| c.read_frame()).collect());
    }
    for s in &mut tcp {
        check(
            (0..2 * EACH * FRAMES)
                .map(|_| read_frame(s).unwrap())
                .collect(),
        );
    }
    let m = engine.metrics();
    assert_eq!(m.ws_opened, EACH as u64);
    drop((ws, tcp));
    assert_no_leaks(&engine);
}

/// Opens a raw connection, writes `bytes`, and returns everything the server sent until it
/// closed.
fn answer_to(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn hostile_websocket_input_is_closed_with_its_status_and_counted_and_nothing_else_notices() {
    let builder = Engine::builder()
        .workers(2)
        .first_frame_timeout(Some(Duration::from_secs(1)));
    let (engine, addr) = ws_server(builder, Echo, Transport::WebSocket);
    let mut healthy = WsClient::open(addr);
    let mut round = 0u8;
    let mut echo_once = |c: &mut WsClient| {
        round += 1;
        c.send(&frame(7, &[round; 32]));
        assert_eq!(c.read_frame(), (7, vec![round; 32]));
    };
    echo_once(&mut healthy);

    // Bad handshakes: an HTTP answer with the reason, then the close.
    let refusals: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            "HTTP/1.1 426",
        ),
        (b"POST / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (b"GET \x00\x01\x02 junk\r\n\r\n", "HTTP/1.1 400"),
    ];
    for (req, want) in refusals {
        let got = answer_to(addr, req);
        assert!(
            got.starts_with(want.as_bytes()),
            "{:?} answered {:?}",
            String::from_utf8_lossy(req),
            String::from_utf8_lossy(&got)
        );
        echo_once(&mut healthy);
    }
    // A request that never ends is refused at its limit.
    let mut long = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    long.resize(handshake::MAX_REQUEST + 100, b'a');
    assert!(answer_to(addr, &long).starts_with(b"HTTP/1.1 400"));

    // Bad frames after a good handshake: a close frame with the right status.
    let masked = |op: Opcode, fin: bool, p: &[u8]| frame::client_frame(op, fin, p, [5, 6, 7, 8]);
    let mut reserved = masked(Opcode::Binary, true, b"x");
    reserved[0] |= 0x40;
    let mut too_big = vec![0x82, 0xFF];
    too_big.extend_from_slice(&(300_000u64).to_be_bytes());
    too_big.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", frame::server_frame(Opcode::Binary, b"hi"), 1002),
        (
            "bad UTF-8 text",
            masked(Opcode::Text, true, &[0xC3, 0x28]),
            1007,
        ),
        ("text", masked(Opcode::Text, true, b"hello"), 1003),
        (
            "ping over 125 bytes",
            masked(Opcode::Ping, true, &[0; 126]),
            1002,
        ),
        ("fragmented ping", masked(Opcode::Ping, false, b"p"), 1002),
        (
            "stray continuation",
            masked(Opcode::Continuation, true, b"c"),
            1002,
        ),
        ("reserved bits", reserved, 1002),
        ("message over the limit", too_big, 1009),
        (
            "bad frame size inside",
            masked(Opcode::Binary, true, &[2, 0, 0, 0]),
            1008,
        ),
    ];
    let n = cases.len() as u64;
    for (what, bytes, code) in cases {
        let mut c = WsClient::open(addr);
        c.s.write_all(&bytes).unwrap();
        assert_eq!(c.close_code(), code, "{what}");
        echo_once(&mut healthy);
    }

    // A slow handshake (slowloris) is closed by the first-frame deadline.
    let mut slow = connect(addr);
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(
        closed_by_peer(&mut slow),
        "a handshake that never ends is closed"
    );
    echo_once(&mut healthy);

    let m = engine.metrics();
    assert_eq!(m.ws_refused, 5, "{m}");
    assert_eq!(
        m.ws_errors,
        n - 1,
        "every frame error but the protocol's own: {m}"
    );
    assert_eq!(m.protocol_errors, 1, "{m}");
    assert!(m.timeouts >= 1, "{m}");
    drop(healthy);
    assert_no_leaks(&engine);
}

#[test]
fn a_websocket_client_session_speaks_to_a_websocket_server() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // A client engine whose handler counts the frames it is sent back.
    #[derive(Default)]
    struct Count(Arc<AtomicUsize>);
    impl zerocast::Handler for Count {
        type Worker = ();
        type Session = ();
        fn on_frame(&self, _: zerocast::Context<'_, Self>, f: zerocast::Frame<'_>) {
            assert_eq!(f.payload(), &[f.id() as u8; 100][..]);
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let (server, addr) = ws_server(Engine::builder().workers(1), Echo, Transport::WebSocket);
    let got = Arc::new(AtomicUsize::new(0));
    let client = Engine::builder()
        .workers(1)
        .build(Count(got.clone()))
        .unwrap();
    let session = client.connect_websocket(addr, None, "/").unwrap();
    // Queued before the answer: held until the handshake completes, then masked.
    for i in 0..200u16 {
        session
            .send(zerocast::SendBuffer::copy_from_slice(&frame(
                i,
                &[i as u8; 100],
            )))
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(30), || got
        .load(Ordering::Relaxed)
        == 200));
    assert_eq!(server.metrics().ws_opened, 1);
    assert_eq!(server.metrics().ws_errors, 0);
    client.shutdown();
    assert_no_leaks(&server);
}
