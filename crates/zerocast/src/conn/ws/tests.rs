use super::*;
use crate::buffer::SendBuffer;
use crate::conn::outq::{Keeps, OutQueue, WriteBuf};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn upgrade() -> Vec<u8> {
    b"GET /play HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec()
}

fn open_server() -> WsConn {
    let mut ws = WsConn::server();
    let input = ws.receive(BytesMut::from(&upgrade()[..])).unwrap();
    assert!(input.opened);
    assert!(ws.ready(true));
    assert!(ws.raw.starts_with(b"HTTP/1.1 101"));
    ws.raw.clear();
    ws
}

#[test]
fn frames_are_unmasked_and_compacted_into_the_stream_across_any_split() {
    let msgs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 3 + 40 * usize::from(i)]).collect();
    let mut wire = upgrade();
    for m in &msgs {
        wire.extend(frame::client_frame(Opcode::Binary, true, m, KEY));
    }
    let want: Vec<u8> = msgs.concat();
    for cut in [1, 2, 3, 7, 50, 1000] {
        let mut ws = WsConn::server();
        let mut got = Vec::new();
        for chunk in wire.chunks(cut) {
            let input = ws.receive(BytesMut::from(chunk)).unwrap();
            got.extend_from_slice(&input.stream);
        }
        assert!(got == want, "cut every {cut} bytes: the streams differ");
        assert!(ws.is_open());
        assert!(ws.partial.is_empty());
    }
}

#[test]
fn fragments_pings_and_a_close_are_answered_in_order() {
    let mut ws = open_server();
    let mut wire = frame::client_frame(Opcode::Binary, false, b"ab", KEY);
    wire.extend(frame::client_frame(Opcode::Ping, true, b"hi", KEY));
    wire.extend(frame::client_frame(Opcode::Continuation, true, b"cd", KEY));
    wire.extend(frame::client_frame(
        Opcode::Close,
        true,
        &1000u16.to_be_bytes(),
        KEY,
    ));
    let input = ws.receive(BytesMut::from(&wire[..])).unwrap();
    assert_eq!(&input.stream[..], b"abcd");
    assert!(input.peer_closed);
    // The pong goes at once; the close answer only once nothing else is queued.
    assert!(ws.ready(false));
    assert_eq!(ws.raw, frame::server_frame(Opcode::Pong, b"hi"));
    ws.raw.clear();
    assert!(!ws.ready(false));
    assert!(ws.ready(true));
    assert_eq!(
        ws.raw,
        frame::server_frame(Opcode::Close, &1000u16.to_be_bytes())
    );
    ws.raw.clear();
    assert!(ws.holds_payload() && ws.idle());
}

#[test]
fn bad_frames_fail_with_a_close_frame_carrying_their_code() {
    let mut ws = open_server();
    let unmasked = frame::server_frame(Opcode::Binary, b"x");
    assert_eq!(
        ws.receive(BytesMut::from(&unmasked[..])).unwrap_err(),
        WsFail::Frame(WsError::Unmasked)
    );
    assert!(ws.ready(true));
    assert_eq!(&ws.raw[2..4], &1002u16.to_be_bytes());
    let mut ws = open_server();
    let text = frame::client_frame(Opcode::Text, true, &[0xff, 0xfe], KEY);
    assert_eq!(
        ws.receive(BytesMut::from(&text[..])).unwrap_err(),
        WsFail::Frame(WsError::NotUtf8)
    );
    assert!(ws.ready(true));
    assert_eq!(&ws.raw[2..4], &1007u16.to_be_bytes());
}

#[test]
fn a_bad_handshake_is_refused_and_nothing_else_is_written() {
    let mut ws = WsConn::server();
    let e = ws
        .receive(BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]))
        .unwrap_err();
    assert_eq!(e, WsFail::Handshake(HandshakeError::NotUpgrade));
    assert!(ws.ready(false));
    assert!(ws.raw.starts_with(b"HTTP/1.1 400"));
    assert!(ws.holds_payload());
}

/// Writes everything queued through `ws`'s framing, the kernel taking `step` bytes at a time.
fn drain(ws: &mut WsConn, q: &mut OutQueue, keeps: &mut Keeps, step: usize) -> Vec<u8> {
    let mut w = WriteBuf::default();
    let mut out = Vec::new();
    loop {
        let transport = ws.ready(q.is_empty());
        if !transport && (q.is_empty() || ws.holds_payload()) {
            return out;
        }
        let offered = ws.framing(|f| q.gather_framed(keeps, &mut w, 1024, 1 << 20, f));
        let n = offered.min(step);
        for s in &w.slices {
            let (ptr, len) = crate::sys::socket::slice_parts(s);
            // SAFETY: the slices point into `w` and `keeps`, both alive and untouched here.
            let b = unsafe { std::slice::from_raw_parts(ptr, len) };
            out.extend_from_slice(b);
        }
        out.truncate(out.len() - (offered - n));
        let queued = ws.sent(n, &w.framed);
        q.advance(queued, keeps);
    }
}

fn queue(q: &mut OutQueue, keeps: &mut Keeps, msgs: &[Vec<u8>]) {
    for m in msgs {
        let k = keeps.insert(SendBuffer::copy_from_slice(m));
        q.push(keeps, k, 0, m.len() as u32);
        keeps.settle(k);
    }
}

/// Decodes `wire` as a server's (or, `masked`, a client's) frames: the binary payloads.
fn payloads(wire: &[u8], masked: bool) -> (Vec<u8>, Vec<Opcode>) {
    let mut d = if masked {
        Decoder::new(usize::MAX >> 1)
    } else {
        Decoder::from_server(usize::MAX >> 1)
    };
    let mut buf = wire.to_vec();
    let (mut at, mut data, mut ops) = (0, Vec::new(), Vec::new());
    while at < buf.len() {
        let Decoded::Frame(f) = d.decode(&mut buf[at..]).unwrap() else {
            panic!("a cut frame at {at}");
        };
        if f.opcode == Opcode::Binary {
            data.extend_from_slice(&buf[at + f.header..at + f.total()]);
        }
        ops.push(f.opcode);
        at += f.total();
    }
    (data, ops)
}

#[test]
fn partial_writes_continue_the_frame_they_began_and_controls_wait_for_its_end() {
    let msgs: Vec<Vec<u8>> = (0..8u8)
        .map(|i| vec![i; 5 + 700 * usize::from(i)])
        .collect();
    let want: Vec<u8> = msgs.concat();
    for step in [1, 3, 11, 100, 4096, usize::MAX] {
        let mut ws = open_server();
        let (mut keeps, mut q) = (Keeps::default(), OutQueue::default());
        queue(&mut q, &mut keeps, &msgs[..4]);
        let mut wire = drain(&mut ws, &mut q, &mut keeps, step);
        // A ping arrives while the rest is queued: its pong lands between frames.
        let ping = frame::client_frame(Opcode::Ping, true, b"p", KEY);
        ws.receive(BytesMut::from(&ping[..])).unwrap();
        queue(&mut q, &mut keeps, &msgs[4..]);
        ws.close_with(CloseCode::GoingAway, "bye");
        wire.extend(drain(&mut ws, &mut q, &mut keeps, step));
        let (data, ops) = payloads(&wire, false);
        assert!(data == want, "step {step}: the payloads differ");
        assert_eq!(ops.last(), Some(&Opcode::Close), "the close is last");
        assert!(ops.contains(&Opcode::Pong));
        assert_eq!(keeps.live(), 0);
    }
}

#[test]
fn a_client_masks_every_write_and_waits_for_the_answer() {
    let mut ws = WsConn::client("127.0.0.1:1", "/");
    let (mut keeps, mut q) = (Keeps::default(), OutQueue::default());
    let msgs: Vec<Vec<u8>> = (0..5u8)
        .map(|i| vec![i; 1 + 1500 * usize::from(i)])
        .collect();
    queue(&mut q, &mut keeps, &msgs);
    let request = drain(&mut ws, &mut q, &mut keeps, usize::MAX);
    let req = handshake::parse(&request).unwrap().unwrap();
    assert_eq!(req.len, request.len(), "only the request before the answer");
    let answer = handshake::accept(&req);
    assert!(ws.receive(BytesMut::from(&answer[..])).unwrap().opened);
    for step in [7, usize::MAX] {
        let mut q2 = OutQueue::default();
        queue(&mut q2, &mut keeps, &msgs);
        let wire = if step == 7 {
            drain(&mut ws, &mut q2, &mut keeps, step)
        } else {
            drain(&mut ws, &mut q, &mut keeps, step)
        };
        let (data, _) = payloads(&wire, true);
        assert!(data == msgs.concat(), "step {step}: the payloads differ");
    }
}
