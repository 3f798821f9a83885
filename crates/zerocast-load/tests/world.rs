//! 200 bots in the world server over loopback: every delivered move came from a player in
//! range, and the check catches a server that ignores the area of interest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zerocast::packet::FixedPacket;
use zerocast::{Context, Engine, Frame, Group, Handler};
use zerocast_load::{run, LoadConfig, Pace, Report, Scenario};
use zerocast_world::packets::{Move, Moved};
use zerocast_world::{World, WorldConfig};

const BOTS: usize = 200;

fn world() -> Arc<World> {
    // 100 cells for 200 bots: about 18 players in range each, most of the world out of it.
    Arc::new(World::new(WorldConfig {
        size: 1_000.0,
        cell_size: 100.0,
        ..WorldConfig::default()
    }))
}

fn serve(world: &World, handler: impl Handler) -> (Engine, SocketAddr) {
    let engine = world
        .configure(Engine::builder().workers(1))
        .build(handler)
        .expect("server starts");
    let addr = engine.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    (engine, addr)
}

fn bots(target: SocketAddr) -> Report {
    let mut cfg = LoadConfig::new(Scenario::World, target, BOTS);
    cfg.pace = Pace::Rate {
        per_sec: 10.0 * BOTS as f64,
    };
    cfg.warmup = Duration::from_millis(500);
    cfg.duration = Duration::from_secs(3);
    cfg.busy_poll = false;
    run(&cfg, &mut |_| {}).expect("load runs")
}

#[test]
fn every_move_delivered_to_200_bots_comes_from_a_player_in_range() {
    let w = world();
    let (engine, addr) = serve(&w, w.clone());
    let r = bots(addr);
    let f = r.world.expect("world figures");
    assert_eq!(
        (r.connected, r.disconnects, r.corrupt),
        (BOTS as u64, 0, 0),
        "{r}"
    );
    assert_eq!(f.joined, BOTS as u64, "{r}");
    assert!(r.received > 10_000, "moves delivered: {r}");
    assert_eq!(f.out_of_range, 0, "{r}");
    assert_eq!(
        f.untimed, 0,
        "every delivered move is matched to its send: {r}"
    );
    assert_eq!(f.rejected, 0, "the bots walk within the rules: {r}");
    assert!(r.latency.count > 10_000, "{r}");
    // Events wait for the tick: no delivery is faster than a fraction of it, none much slower.
    assert!(r.latency.p99_us < 1_000_000.0, "{r}");
    let s = w.snapshot();
    assert!(s.counts.deliveries / s.counts.flushes.max(1) >= 2, "{s:?}");
    engine.shutdown();
}

/// A server that also relays every move to everyone, ignoring range: the bots must notice.
struct Leaky {
    world: Arc<World>,
    everyone: Group,
}

impl Handler for Leaky {
    type Worker = zerocast_world::Shard;
    type Session = ();

    fn on_start(&self, worker: &mut Self::Worker, start: &zerocast::Start) {
        self.world.on_start(worker, start);
    }

    fn on_message(&self, worker: &mut Self::Worker, message: Box<dyn std::any::Any + Send>) {
        self.world.on_message(worker, message);
    }

    fn on_connect(&self, cx: Context<'_, Self>) {
        self.everyone.insert(cx.session.clone());
    }

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let session = cx.session;
        if let (Move::ID, Ok(m)) = (frame.id(), Move::decode(frame.payload())) {
            let leak = Moved {
                id: session.id().get().into(),
                x: m.x,
                y: m.y,
                z: m.z,
                velocity: m.velocity,
            };
            self.everyone.broadcast(&leak.encode());
        }
        // The world's own handling, with this handler's states.
        let Context { state, worker, .. } = cx;
        self.world.on_frame(
            Context {
                session,
                state,
                worker,
            },
            frame,
        );
    }

    fn on_disconnect(&self, cx: Context<'_, Self>, reason: &zerocast::CloseReason) {
        let Context {
            session,
            state,
            worker,
        } = cx;
        self.everyone.remove(session.id());
        self.world.on_disconnect(
            Context {
                session,
                state,
                worker,
            },
            reason,
        );
    }

    fn on_tick(&self, worker: &mut Self::Worker, tick: zerocast::Tick) {
        self.world.on_tick(worker, tick);
    }
}

#[test]
fn the_range_check_catches_a_server_that_ignores_the_area_of_interest() {
    let w = world();
    let leaky = Leaky {
        world: w.clone(),
        everyone: Group::new(),
    };
    let (engine, addr) = serve(&w, leaky);
    let r = bots(addr);
    let f = r.world.expect("world figures");
    assert!(f.out_of_range > r.received / 4, "{r}");
    engine.shutdown();
}
