//! Typed packets over loopback: a server built on the packet router answers valid packets and
//! closes, with the reason, exactly the session that sent a malformed one.

/// The engine's end-to-end helpers, shared rather than copied.
#[path = "../../zerocast/tests/util/mod.rs"]
mod util;

use std::io::Write;
use std::sync::Mutex;

use util::*;
use zerocast::packet::{FixedPacket, PacketError, Router, VarPacket};
use zerocast::{CloseReason, Context, Frame, Handler, SendBuffer, Session};
use zerocast_world::packets::{Attack, Chat, ChatText, Join, Move};

/// Answers each valid packet with a frame naming what it decoded.
struct Server {
    router: Router<Session>,
    closed: Mutex<Vec<CloseReason>>,
}

impl Server {
    fn new() -> Self {
        let router = Router::new()
            .fixed(|s: &Session, j: &Join| reply(s, format!("join {}", j.protocol.get())))
            .fixed(|s: &Session, m: &Move| {
                m.check()?;
                reply(s, format!("move {} {} {}", m.x.get(), m.y.get(), m.z.get()))
            })
            .fixed(|s: &Session, a: &Attack| reply(s, format!("attack {}", a.target.get())))
            .var::<Chat>(|s: &Session, c: ChatText<'_>| {
                reply(s, format!("chat {} {}", c.channel, c.text))
            });
        Self {
            router,
            closed: Mutex::new(Vec::new()),
        }
    }
}

fn reply(s: &Session, text: String) -> Result<(), PacketError> {
    let _ = s.send(SendBuffer::frame(1, text.as_bytes()));
    Ok(())
}

impl Handler for Server {
    type Worker = ();
    type Session = ();

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let session = cx.session;
        if let Err(e) = self.router.dispatch(session, frame.id(), frame.payload()) {
            session.close_for_packet(e);
        }
    }

    fn on_disconnect(&self, _cx: Context<'_, Self>, reason: &CloseReason) {
        self.closed.lock().unwrap().push(reason.clone());
    }
}

fn answer(s: &mut std::net::TcpStream) -> String {
    let (id, p) = read_frame(s).unwrap();
    assert_eq!(id, 1);
    String::from_utf8(p).unwrap()
}

#[test]
fn valid_packets_are_dispatched_and_malformed_ones_close_only_their_sender() {
    let server = std::sync::Arc::new(Server::new());
    let (engine, addr) = server_with(zerocast::Engine::builder().workers(2), server.clone());
    let mut good = connect(addr);

    // Valid packets of every kind, one write, answered in order.
    let mut burst = Vec::new();
    for buf in [
        Join::new(3).encode(),
        Move::new(1.5, -2.0, 8.0, 3.0).encode(),
        Attack::new(42).encode(),
        ChatText {
            channel: 1,
            text: "héllo",
        }
        .encode()
        .unwrap(),
    ] {
        burst.extend_from_slice(buf.as_bytes());
    }
    good.write_all(&burst).unwrap();
    assert_eq!(answer(&mut good), "join 3");
    assert_eq!(answer(&mut good), "move 1.5 -2 8");
    assert_eq!(answer(&mut good), "attack 42");
    assert_eq!(answer(&mut good), "chat 1 héllo");

    // Each malformed packet closes its own connection with its reason.
    let nan = Move::new(f32::NAN, 0.0, 0.0, 1.0)
        .encode()
        .as_bytes()
        .to_vec();
    let cases: Vec<(Vec<u8>, PacketError)> = vec![
        (frame(0x7777, b"?"), PacketError::UnknownId { id: 0x7777 }),
        (
            frame(Move::ID, &[0; 15]),
            PacketError::WrongLength {
                id: Move::ID,
                expected: 16,
                got: 15,
            },
        ),
        (
            frame(Chat::ID, &[0, 0xff]),
            PacketError::BadUtf8 { id: Chat::ID },
        ),
        (
            nan,
            PacketError::Invalid {
                id: Move::ID,
                what: "coordinates and velocity must be finite",
            },
        ),
    ];
    for (bytes, _) in &cases {
        let mut bad = connect(addr);
        bad.write_all(bytes).unwrap();
        assert!(closed_by_peer(&mut bad), "closed after {bytes:?}");
    }
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        server.closed.lock().unwrap().len() == cases.len()
    }));
    let closed = server.closed.lock().unwrap().clone();
    for (_, err) in &cases {
        assert!(
            closed.contains(&CloseReason::Packet(err.clone())),
            "{err} in {closed:?}"
        );
    }

    // The well-behaved session was not disturbed.
    good.write_all(Attack::new(7).encode().as_bytes()).unwrap();
    assert_eq!(answer(&mut good), "attack 7");
    drop(good);
    // This thread encoded packets from its own chunk pool: let it take the chunks back.
    zerocast::buffer::reclaim_thread_pool();
    assert_no_leaks(&engine);
}
