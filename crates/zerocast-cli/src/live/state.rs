//! `/state.json`: what the live view's map and figures show.
//!
//! ```json
//! {
//!   "world": { "size": 4000, "cell_size": 100, "view_cells": 1, "max_speed": 20, "tick_ms": 50 },
//!   "ws": "ws://127.0.0.1:7001/",
//!   "figures": { "players": 2, "deliveries_per_sec": 40.0, "moves_per_sec": 20.0,
//!                "tick_p99_ms": 0.131, "messages_per_write": 1.9, "delivery_stride": 1 },
//!   "players": [ { "id": "1", "x": 120.5, "y": 3001.25 }, { "id": "2", "x": 98.0, "y": 5.5 } ]
//! }
//! ```
//!
//! - `view_cells`: a player sees the players within this many area-of-interest cells of its
//!   own on each axis (1: the 3×3 cells around it, docs/PROTOCOL.md).
//! - `ws`: the WebSocket address a browser player connects to, `null` without `--ws`. With a
//!   listener on every interface (0.0.0.0), the host is the one the browser asked for.
//! - `figures`: rates are over the time since the previous poll (at least [`MIN_INTERVAL`];
//!   polls closer together get the previous figures), `null` until there are two polls.
//!   `tick_p99_ms` is the slowest 1 % of the world's tick handling in that time (the
//!   engine's histogram, so a power-of-two bound: "at most"). `messages_per_write` is the
//!   packets per write system call in that time (the whole run's on the first poll).
//! - `players`: where every player stood at most [`zerocast_world::SPECTATE_EVERY`] ticks
//!   ago; ids are strings, since a 64-bit id does not fit a JavaScript number.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use zerocast::metrics::HistogramSnapshot;

use super::Live;

/// The shortest time rates are computed over.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Serialize)]
struct State {
    world: WorldInfo,
    ws: Option<String>,
    figures: Figures,
    players: Vec<Player>,
}

#[derive(Serialize)]
struct WorldInfo {
    size: f32,
    cell_size: f32,
    view_cells: u32,
    max_speed: f32,
    tick_ms: u128,
}

#[derive(Serialize, Clone, Copy, Default, Debug, PartialEq)]
pub struct Figures {
    players: usize,
    deliveries_per_sec: Option<f64>,
    moves_per_sec: Option<f64>,
    tick_p99_ms: Option<f64>,
    messages_per_write: Option<f64>,
    delivery_stride: u32,
}

#[derive(Serialize)]
struct Player {
    id: String,
    x: f32,
    y: f32,
}

/// The counters a poll reads, to compute rates against the next.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    pub at: Option<Instant>,
    pub deliveries: u64,
    pub moves: u64,
    pub frames_out: u64,
    pub writes: u64,
    pub tick_ns: HistogramSnapshot,
}

/// The last poll's sample and the figures last computed.
#[derive(Default)]
pub struct Rates {
    last: Sample,
    shown: Figures,
}

impl Rates {
    /// The figures at `now`: rates since the previous sample if it is at least
    /// [`MIN_INTERVAL`] old (which `now` then replaces), else the figures last computed.
    pub fn update(&mut self, now: Sample, players: usize, stride: u32) -> Figures {
        let (Some(at), Some(then)) = (now.at, self.last.at) else {
            // The first poll: no interval yet; the whole run's per-write and tick figures.
            self.shown = Figures {
                players,
                deliveries_per_sec: None,
                moves_per_sec: None,
                tick_p99_ms: p99_ms(&now.tick_ns),
                messages_per_write: ratio(now.frames_out, now.writes),
                delivery_stride: stride,
            };
            self.last = now;
            return self.shown;
        };
        let dt = at.saturating_duration_since(then);
        if dt >= MIN_INTERVAL {
            let secs = dt.as_secs_f64();
            let per_sec = |a: u64, b: u64| Some(a.saturating_sub(b) as f64 / secs);
            let mut ticks = now.tick_ns;
            for (b, before) in ticks.buckets.iter_mut().zip(self.last.tick_ns.buckets) {
                *b = b.saturating_sub(before);
            }
            self.shown = Figures {
                players,
                deliveries_per_sec: per_sec(now.deliveries, self.last.deliveries),
                moves_per_sec: per_sec(now.moves, self.last.moves),
                tick_p99_ms: p99_ms(&ticks),
                messages_per_write: ratio(
                    now.frames_out.saturating_sub(self.last.frames_out),
                    now.writes.saturating_sub(self.last.writes),
                ),
                delivery_stride: stride,
            };
            self.last = now;
        }
        // Players and stride are gauges: always the latest.
        self.shown.players = players;
        self.shown.delivery_stride = stride;
        self.shown
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// The upper bound of the histogram bucket holding the 99th percentile, in milliseconds;
/// `None` for an empty histogram.
pub fn p99_ms(h: &HistogramSnapshot) -> Option<f64> {
    let count = h.count();
    if count == 0 {
        return None;
    }
    let rank = count - count / 100;
    let mut seen = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(HistogramSnapshot::upper_bound(i) as f64 / 1e6);
        }
    }
    None
}

/// The WebSocket URL the page connects to: the bound address, or with an unspecified one
/// (0.0.0.0, ::) the host the browser reached this server by.
pub fn ws_url(ws: SocketAddr, host: Option<&str>) -> String {
    let port = ws.port();
    if ws.ip().is_unspecified() {
        if let Some(h) = host.filter(|h| !h.is_empty()) {
            return format!("ws://{h}:{port}/");
        }
    }
    // `SocketAddr`'s display brackets an IPv6 address.
    let addr = if ws.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), port)
    } else {
        ws
    };
    format!("ws://{addr}/")
}

/// The whole document.
pub fn render(live: &Live, rates: &Mutex<Rates>, host: Option<&str>) -> String {
    let snapshot = live.world.snapshot();
    let engine = live.engine.metrics();
    let sample = Sample {
        at: Some(Instant::now()),
        deliveries: snapshot.counts.deliveries,
        moves: snapshot.counts.moves,
        frames_out: engine.frames_out,
        writes: engine.writes,
        tick_ns: engine.tick_ns,
    };
    let figures = rates.lock().unwrap_or_else(|e| e.into_inner()).update(
        sample,
        snapshot.players,
        snapshot.stride,
    );
    let config = live.world.config();
    let state = State {
        world: WorldInfo {
            size: config.size,
            cell_size: config.cell_size,
            view_cells: 1,
            max_speed: config.max_speed,
            tick_ms: config.tick.as_millis(),
        },
        ws: live.ws.map(|ws| ws_url(ws, host)),
        figures,
        players: live
            .world
            .positions()
            .into_iter()
            .map(|p| Player {
                id: p.id.to_string(),
                x: p.x,
                y: p.y,
            })
            .collect(),
    };
    serde_json::to_string(&state).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[(usize, u64)]) -> HistogramSnapshot {
        let mut h = HistogramSnapshot::default();
        for &(bucket, n) in values {
            h.buckets[bucket] = n;
        }
        h
    }

    #[test]
    fn p99_is_the_bound_of_the_bucket_holding_it() {
        assert_eq!(p99_ms(&HistogramSnapshot::default()), None);
        // 99 ticks under 2^10 ns, one under 2^20: the p99 is still in the first bucket.
        assert_eq!(p99_ms(&histogram(&[(10, 99), (20, 1)])), Some(1024.0 / 1e6));
        // 98 and 2: the 99th falls in the slow one.
        assert_eq!(
            p99_ms(&histogram(&[(10, 98), (20, 2)])),
            Some(1_048_576.0 / 1e6)
        );
    }

    #[test]
    fn rates_are_over_the_interval_between_polls_and_close_polls_reuse_them() {
        let t0 = Instant::now();
        let sample = |at: Duration, deliveries, frames_out, writes, slow| Sample {
            at: Some(t0 + at),
            deliveries,
            moves: deliveries / 2,
            frames_out,
            writes,
            tick_ns: histogram(&[(10, 100), (20, slow)]),
        };
        let mut r = Rates::default();
        let first = r.update(sample(Duration::ZERO, 1000, 300, 100, 0), 7, 1);
        assert_eq!(first.deliveries_per_sec, None, "no interval yet");
        assert_eq!(first.messages_per_write, Some(3.0), "the whole run's");
        assert_eq!(first.players, 7);
        let second = r.update(sample(Duration::from_secs(2), 5000, 500, 150, 5), 8, 2);
        assert_eq!(second.deliveries_per_sec, Some(2000.0));
        assert_eq!(second.moves_per_sec, Some(1000.0));
        assert_eq!(
            second.messages_per_write,
            Some(4.0),
            "200 frames in 50 writes"
        );
        assert_eq!(
            second.tick_p99_ms,
            Some(1_048_576.0 / 1e6),
            "the 5 slow ticks are all the interval has above its 0 fast ones"
        );
        let close = r.update(sample(Duration::from_millis(2100), 9000, 900, 160, 5), 9, 1);
        assert_eq!(close.deliveries_per_sec, second.deliveries_per_sec);
        assert_eq!(
            (close.players, close.delivery_stride),
            (9, 1),
            "gauges move"
        );
    }

    #[test]
    fn the_ws_url_names_the_host_the_browser_used_for_a_wildcard_listener() {
        let any: SocketAddr = "0.0.0.0:7001".parse().unwrap();
        assert_eq!(ws_url(any, Some("game.example")), "ws://game.example:7001/");
        assert_eq!(ws_url(any, None), "ws://127.0.0.1:7001/");
        let one: SocketAddr = "10.1.2.3:7001".parse().unwrap();
        assert_eq!(ws_url(one, Some("game.example")), "ws://10.1.2.3:7001/");
        let v6: SocketAddr = "[::1]:7001".parse().unwrap();
        assert_eq!(ws_url(v6, None), "ws://[::1]:7001/");
    }
}
