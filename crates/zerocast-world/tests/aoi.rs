//! Area of interest over loopback: a player's moves reach the players in the 3×3 cells around
//! it and nobody farther, and crossing cells sends enter/leave notices both ways.

/// The engine's end-to-end helpers, shared rather than copied.
#[path = "../../zerocast/tests/util/mod.rs"]
mod util;

use std::io::{ErrorKind, Write};
use std::sync::Mutex;
use std::time::Duration;

use bytes::BufMut;
use util::*;
use zerocast::packet::{FixedPacket, PacketError, Router};
use zerocast::{CloseReason, Context, Frame, Handler, SendBuffer, Session};
use zerocast_world::aoi::{Grid, Visibility};
use zerocast_world::packets::Move;

const MOVED: u16 = 0x0202;
const ENTERED: u16 = 0x0203;
const LEFT: u16 = 0x0204;

fn notice(id: u16, who: u64) -> SendBuffer {
    SendBuffer::build(12, |b| {
        b.put_u16_le(12);
        b.put_u16_le(id);
        b.put_u64_le(who);
    })
}

/// A minimal world: the first `Move` places a player, later ones move it.
struct World {
    grid: std::sync::Arc<Mutex<Grid<Session>>>,
    router: Router<Session>,
}

impl World {
    fn new() -> Self {
        let grid = std::sync::Arc::new(Mutex::new(Grid::new(10.0)));
        let g = grid.clone();
        let router = Router::new().fixed(move |s: &Session, m: &Move| {
            m.check()?;
            let me = s.id().get();
            let mut grid = g.lock().unwrap();
            let v = if grid.get(me).is_some() {
                grid.move_to(me, m.x.get(), m.y.get())
                    .ok_or(PacketError::Invalid {
                        id: Move::ID,
                        what: "not in the world",
                    })?
            } else {
                grid.insert(me, s.clone(), m.x.get(), m.y.get())
            };
            tell(&grid, s, me, &v);
            grid.broadcast_near(me, &notice(MOVED, me));
            Ok(())
        });
        Self { grid, router }
    }
}

/// Enter/leave notices, both ways.
fn tell(grid: &Grid<Session>, me_session: &Session, me: u64, v: &Visibility) {
    for (list, id) in [(&v.entered, ENTERED), (&v.left, LEFT)] {
        for &other in list {
            let _ = me_session.send(notice(id, other));
            if let Some(o) = grid.get(other) {
                let _ = o.send(notice(id, me));
            }
        }
    }
}

impl Handler for World {
    type Worker = ();
    type Session = ();

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let session = cx.session;
        if let Err(e) = self.router.dispatch(session, frame.id(), frame.payload()) {
            session.close_for_packet(e);
        }
    }

    fn on_disconnect(&self, cx: Context<'_, Self>, _reason: &CloseReason) {
        let session = cx.session;
        let mut grid = self.grid.lock().unwrap();
        let me = session.id().get();
        let v = grid.remove(me);
        for other in v.left {
            if let Some(o) = grid.get(other) {
                let _ = o.send(notice(LEFT, me));
            }
        }
    }
}

fn expect(s: &mut std::net::TcpStream, id: u16, who: u64) {
    let (got, p) = read_frame(s).expect("a notice");
    assert_eq!(
        (got, u64::from_le_bytes(p[..8].try_into().unwrap())),
        (id, who)
    );
}

fn nothing(s: &mut std::net::TcpStream) {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    match std::io::Read::read(s, &mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected nothing, got {other:?}"),
    }
    s.set_read_timeout(None).unwrap();
}

fn place(s: &mut std::net::TcpStream, x: f32, y: f32) {
    s.write_all(Move::new(x, y, 0.0, 1.0).encode().as_bytes())
        .unwrap();
}

#[test]
fn moves_reach_neighbours_only_and_crossing_cells_sends_enter_and_leave() {
    let world = std::sync::Arc::new(World::new());
    // One worker, one listener: session ids follow the connect order (1, 2, 3).
    let (engine, addr) = server_with(zerocast::Engine::builder().workers(1), world.clone());
    let (mut a, mut b, mut c) = (connect(addr), connect(addr), connect(addr));
    assert!(wait_until(Duration::from_secs(5), || engine
        .sessions()
        .len()
        == 3));

    place(&mut a, 5.0, 5.0); // cell (0, 0)
    assert!(wait_until(Duration::from_secs(5), || world
        .grid
        .lock()
        .unwrap()
        .len()
        == 1));
    place(&mut b, 15.0, 5.0); // (1, 0): in range of a
    expect(&mut b, ENTERED, 1);
    expect(&mut a, ENTERED, 2);
    expect(&mut a, MOVED, 2);
    place(&mut c, 45.0, 5.0); // (4, 0): out of everyone's range
    assert!(wait_until(Duration::from_secs(5), || world
        .grid
        .lock()
        .unwrap()
        .len()
        == 3));

    // a moves inside its cell: b hears it, c does not.
    place(&mut a, 6.0, 6.0);
    expect(&mut b, MOVED, 1);
    nothing(&mut c);

    // c walks to (2, 0): b (at (1, 0)) comes into range both ways, a (two cells away) does not.
    place(&mut c, 25.0, 5.0);
    expect(&mut c, ENTERED, 2);
    expect(&mut b, ENTERED, 3);
    expect(&mut b, MOVED, 3);
    nothing(&mut a);

    // c walks back out to (4, 0): b gets a leave notice, and so does c.
    place(&mut c, 45.0, 5.0);
    expect(&mut c, LEFT, 2);
    expect(&mut b, LEFT, 3);
    nothing(&mut a);

    drop((a, b, c));
    assert!(wait_until(Duration::from_secs(5), || world
        .grid
        .lock()
        .unwrap()
        .is_empty()));
    zerocast::buffer::reclaim_thread_pool();
    assert_no_leaks(&engine);
}
