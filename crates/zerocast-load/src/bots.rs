//! The world scenario's bots: each joins the world server, random-walks at a fixed rate below
//! the speed limit, and now and then chats (nearby, sometimes globally).
//!
//! # What is measured
//! - Delivery latency of moves. The world protocol carries no client timestamps, so a bot
//!   writes its send time into the low 16 bits of its move's `velocity` (milliseconds of the
//!   machine-wide monotonic clock, modulo 65,536: a change of the speed below 1 %, which the
//!   server relays untouched in `Moved`). The receiving bot, whichever generator process it
//!   is in, subtracts it from its own clock: the latency of the newest position the server
//!   sent, to the millisecond, without looking the mover up. A stamp from the future or older
//!   than [`MAX_AGE_MS`] (not a bot's, or a clock wrap) is counted as untimed.
//! - Area of interest, checked on every delivery: the mover's cell must be within two cells of
//!   a cell the receiver occupied in its recent moves. The server judges range at its tick by
//!   the receiver's position then (one of those), and a mover that crossed into a cell the
//!   receiver cannot see shows its latest position once, then `Left`: one cell of slack on
//!   each side. A move from farther away is counted in `out_of_range`, which a correct server
//!   keeps at zero.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use zerocast::metrics::Striped;
use zerocast::packet::{FixedPacket, VarPacket};
use zerocast::{Frame, Session};
use zerocast_world::packets::{
    channel, reject, Attacked, ChannelOffer, ChatFrom, ChatText, Entered, Goodbye, Join, Left,
    Move, Moved, OpenChannel, Pong, Rejected, Welcome, PROTOCOL_VERSION,
};

use crate::datagrams::Datagrams;
use crate::stats::Stats;

/// Recent distinct cells a bot remembers for range checks (they change rarely: this spans
/// minutes).
const HISTORY: usize = 64;
/// Oldest send time a stamp may name: older ones are ambiguous (the stamp wraps at 65.5 s).
pub const MAX_AGE_MS: u64 = 60_000;

/// `speed` with `stamp_ns` (a [`crate::clock::now_ns`] value) in its low 16 bits, as
/// milliseconds.
pub(crate) fn stamped_speed(speed: f32, stamp_ns: u64) -> f32 {
    let ms = (stamp_ns / 1_000_000) & 0xFFFF;
    f32::from_bits((speed.to_bits() & !0xFFFF) | ms as u32)
}

/// The send time a stamped speed carries, as seen at `now_ns`: `None` if it is in the future
/// or older than [`MAX_AGE_MS`]. Rounded to the middle of its millisecond.
pub(crate) fn send_time(velocity: f32, now_ns: u64) -> Option<u64> {
    let sent = u64::from(velocity.to_bits() & 0xFFFF);
    let now_ms = now_ns / 1_000_000;
    let age = (now_ms & 0xFFFF).wrapping_sub(sent) & 0xFFFF;
    (age <= MAX_AGE_MS && age <= now_ms).then(|| ((now_ms - age) * 1_000_000 + 500_000).min(now_ns))
}
/// One chat line in ten is global.
const GLOBAL_EVERY: u64 = 10;
/// Bots walk at this fraction of the server's speed limit.
const PACE: f32 = 0.5;

/// What the world scenario counted besides move latency.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct WorldFigures {
    /// Bots the server welcomed.
    pub joined: u64,
    /// `Moved` deliveries whose stamp named no plausible send time (counted in `received` all
    /// the same).
    pub untimed: u64,
    /// `Moved` deliveries from a player out of the receiver's range: a correct server sends
    /// none.
    pub out_of_range: u64,
    /// Packets the server refused (`Rejected`).
    pub rejected: u64,
    /// Enter and leave notices received.
    pub notices: u64,
    /// Chat lines sent, and received (relayed to a bot).
    pub chats_sent: u64,
    pub chats_received: u64,
    /// `Goodbye`s received: the server closed a bot's session and said why.
    #[serde(default)]
    pub goodbyes: u64,
}

impl WorldFigures {
    pub(crate) fn add(&mut self, o: &WorldFigures) {
        self.joined += o.joined;
        self.untimed += o.untimed;
        self.out_of_range += o.out_of_range;
        self.rejected += o.rejected;
        self.notices += o.notices;
        self.chats_sent += o.chats_sent;
        self.chats_received += o.chats_received;
        self.goodbyes += o.goodbyes;
    }
}

#[derive(Default, Clone, Copy)]
struct Rules {
    size: f32,
    cell: f32,
    speed: f32,
}

impl Rules {
    fn cell(&self, x: f32, y: f32) -> (i64, i64) {
        (
            (x / self.cell).floor() as i64,
            (y / self.cell).floor() as i64,
        )
    }
}

#[derive(Default)]
struct Bot {
    /// The player id, once welcomed.
    id: Option<u64>,
    rules: Rules,
    pos: [f32; 3],
    heading: f32,
    rng: u64,
    moves: u64,
    /// Cells of the recent positions the server may hold for this bot (spawn included).
    cells: VecDeque<(i64, i64)>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

impl Bot {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: the walk only needs to look random.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next step of the walk, `dt` seconds after the last: turn a little, walk, turn
    /// back at the world's edge. A bot that moves less than once a second walks for a second
    /// and then stands until its next move (the server's allowance holds about a second of
    /// movement at its speed limit).
    fn step(&mut self, dt: f32) -> [f32; 3] {
        let turn = (self.next_random() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        let r = self.rules;
        self.heading += turn;
        let d = r.speed * dt.min(1.0);
        let (mut x, mut y) = (
            self.pos[0] + d * self.heading.cos(),
            self.pos[1] + d * self.heading.sin(),
        );
        let margin = 1.0f32.min(r.size / 4.0);
        if !(margin..=r.size - margin).contains(&x) || !(margin..=r.size - margin).contains(&y) {
            self.heading += std::f32::consts::PI;
            x = x.clamp(margin, r.size - margin);
            y = y.clamp(margin, r.size - margin);
        }
        self.pos = [x, y, 0.0];
        self.pos
    }

    fn at(&mut self, x: f32, y: f32) {
        self.pos = [x, y, 0.0];
        let c = self.rules.cell(x, y);
        // Cells change rarely: keeping distinct ones makes the history span minutes.
        if self.cells.back() != Some(&c) {
            push_bounded(&mut self.cells, c);
        }
    }
}

/// The bots of one generator process, indexed by session id − 1 (the generator's engine only
/// connects, so its ids are 1..=connections).
pub(crate) struct Bots {
    bots: Vec<Mutex<Bot>>,
    /// Seconds between one bot's moves.
    interval_s: f32,
    /// One move in this many carries a chat line (0: none).
    chat_every: u64,
    joined: Striped,
    untimed: Striped,
    out_of_range: Striped,
    rejected: Striped,
    notices: Striped,
    chats_sent: Striped,
    chats_received: Striped,
    goodbyes: Striped,
    /// The bots' datagram channels (`--datagrams`).
    dgram: Option<Datagrams>,
}

impl Bots {
    pub(crate) fn new(
        count: usize,
        moves_per_sec_each: f64,
        chat_every: u64,
        dgram: Option<Datagrams>,
    ) -> Self {
        Self {
            bots: (0..count)
                .map(|i| {
                    Mutex::new(Bot {
                        rng: 0x9E37_79B9_7F4A_7C15
                            ^ (i as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93),
                        ..Bot::default()
                    })
                })
                .collect(),
            interval_s: (1.0 / moves_per_sec_each) as f32,
            chat_every,
            joined: Striped::new(),
            untimed: Striped::new(),
            out_of_range: Striped::new(),
            rejected: Striped::new(),
            notices: Striped::new(),
            chats_sent: Striped::new(),
            chats_received: Striped::new(),
            goodbyes: Striped::new(),
            dgram,
        }
    }

    /// The bots' datagram channels, if they use them.
    pub(crate) fn datagrams(&self) -> Option<&Datagrams> {
        self.dgram.as_ref()
    }

    fn index(session: &Session) -> Option<usize> {
        usize::try_from(session.id().get().checked_sub(1)?).ok()
    }

    /// A `Moved` that came by bot `i`'s datagram channel.
    pub(crate) fn moved_by_datagram(&self, i: usize, m: &Moved, now: u64, stats: &Stats) {
        if let Some(me) = self.bots.get(i) {
            self.on_moved(me, m, now, stats);
        }
    }

    fn bot(&self, session: &Session) -> Option<&Mutex<Bot>> {
        let i = usize::try_from(session.id().get().checked_sub(1)?).ok()?;
        self.bots.get(i)
    }

    pub(crate) fn on_connect(&self, session: &Session) {
        let _ = session.send(Join::new(PROTOCOL_VERSION).encode());
    }

    /// The open-loop schedule's turn for `session`: one move (and sometimes a chat line),
    /// stamped `stamp`. Returns false if the bot has not joined yet (nothing sent).
    pub(crate) fn act(&self, session: &Session, stamp: u64, stats: &Stats) -> bool {
        let Some(bot) = self.bot(session) else {
            return false;
        };
        let mut bot = bot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(id) = bot.id else { return false };
        let [x, y, z] = bot.step(self.interval_s);
        let speed = stamped_speed(bot.rules.speed, stamp);
        let mv = Move::new(x, y, z, speed).encode();
        let by_datagram = match (&self.dgram, Self::index(session)) {
            (Some(d), Some(i)) => d.send(i, &mv),
            _ => false,
        };
        if !by_datagram && session.send(mv).is_err() {
            return false;
        }
        stats.on_send(stamp);
        bot.at(x, y);
        bot.moves += 1;
        if self.chat_every > 0 && bot.next_random() % self.chat_every == 0 {
            let global = bot.next_random() % GLOBAL_EVERY == 0;
            let text = format!("bot {id} at {x:.0},{y:.0}");
            let ch = if global {
                channel::GLOBAL
            } else {
                channel::NEARBY
            };
            if let Ok(line) = (ChatText {
                channel: ch,
                text: &text,
            })
            .encode()
            {
                if session.send(line).is_ok() {
                    self.chats_sent.add(1);
                }
            }
        }
        true
    }

    /// A packet from the server. Returns false if it is not a valid world packet.
    pub(crate) fn on_frame(
        &self,
        session: &Session,
        frame: Frame<'_>,
        now: u64,
        stats: &Stats,
    ) -> bool {
        let Some(me) = self.bot(session) else {
            return false;
        };
        let p = frame.payload();
        match frame.id() {
            Moved::ID => {
                let Ok(m) = Moved::decode(p) else {
                    return false;
                };
                self.on_moved(me, m, now, stats);
            }
            Welcome::ID => {
                let Ok(w) = Welcome::decode(p) else {
                    return false;
                };
                let id = w.id.get();
                let mut bot = me.lock().unwrap_or_else(|e| e.into_inner());
                bot.id = Some(id);
                bot.rules = Rules {
                    size: w.world_size.get(),
                    cell: w.cell_size.get().max(1.0),
                    speed: w.max_speed.get() * PACE,
                };
                bot.heading = (bot.next_random() % 628) as f32 / 100.0;
                bot.at(w.x.get(), w.y.get());
                drop(bot);
                self.joined.add(1);
                if self.dgram.is_some() {
                    let _ = session.send(OpenChannel { version: 1 }.encode());
                }
            }
            ChannelOffer::ID => {
                let Ok(o) = ChannelOffer::decode(p) else {
                    return false;
                };
                let (Some(d), Some(i)) = (&self.dgram, Self::index(session)) else {
                    return false;
                };
                let offer = zerocast::datagram::Offer {
                    token: o.token.get(),
                    key: o.key,
                    port: o.port.get(),
                };
                let server = std::net::SocketAddr::new(session.peer_addr().ip(), offer.port);
                if let Err(e) = d.open(i, server, offer) {
                    tracing::warn!(error = %e, "cannot open a bot's datagram socket");
                }
            }
            Rejected::ID => {
                let Ok(r) = Rejected::decode(p) else {
                    return false;
                };
                self.rejected.add(1);
                if r.reason == reject::TOO_FAST || r.reason == reject::OUT_OF_BOUNDS {
                    // Snap back to where the server keeps us.
                    me.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .at(r.x.get(), r.y.get());
                }
            }
            Entered::ID | Left::ID => self.notices.add(1),
            Attacked::ID | Pong::ID => {}
            Goodbye::ID => {
                if Goodbye::decode(p).is_err() {
                    return false;
                }
                self.goodbyes.add(1);
            }
            ChatFrom::ID => {
                if ChatFrom::decode(p).is_err() {
                    return false;
                }
                self.chats_received.add(1);
            }
            _ => return false,
        }
        true
    }

    fn on_moved(&self, me: &Mutex<Bot>, m: &Moved, now: u64, stats: &Stats) {
        let (x, y) = (m.x.get(), m.y.get());
        // Range: the mover's cell against the cells the server may hold for the receiver.
        {
            let bot = me.lock().unwrap_or_else(|e| e.into_inner());
            let (cx, cy) = bot.rules.cell(x, y);
            let near = bot
                .cells
                .iter()
                .rev()
                .any(|&(rx, ry)| (rx - cx).abs() <= 2 && (ry - cy).abs() <= 2);
            if !near {
                self.out_of_range.add(1);
            }
        }
        // A keyframe (datagrams: every position resent each second) has velocity 0, which no
        // bot's stamped speed is: it refreshes the view and is no delivery of a move.
        if m.velocity.get().to_bits() == 0 {
            self.notices.add(1);
            return;
        }
        let stamp = send_time(m.velocity.get(), now);
        match stamp {
            Some(stamp) => stats.on_receive(stamp, now),
            None => {
                self.untimed.add(1);
                stats.on_delivery(now);
            }
        }
    }

    pub(crate) fn figures(&self) -> WorldFigures {
        let g = |s: &Striped| s.get() as u64;
        WorldFigures {
            joined: g(&self.joined),
            untimed: g(&self.untimed),
            out_of_range: g(&self.out_of_range),
            rejected: g(&self.rejected),
            notices: g(&self.notices),
            chats_sent: g(&self.chats_sent),
            chats_received: g(&self.chats_received),
            goodbyes: g(&self.goodbyes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_stays_inside_and_under_the_speed() {
        let mut b = Bot {
            rules: Rules {
                size: 100.0,
                cell: 10.0,
                speed: 10.0,
            },
            rng: 7,
            pos: [50.0, 50.0, 0.0],
            ..Bot::default()
        };
        let mut prev = b.pos;
        for _ in 0..10_000 {
            let p = b.step(0.1);
            let d = ((p[0] - prev[0]).powi(2) + (p[1] - prev[1]).powi(2)).sqrt();
            assert!(d <= 1.0 + 1e-3, "step of {d}");
            assert!((1.0..=99.0).contains(&p[0]) && (1.0..=99.0).contains(&p[1]));
            prev = p;
        }
    }

    #[test]
    fn a_stamped_speed_carries_its_send_time_across_the_wrap_and_stays_under_the_limit() {
        for sent in [
            0u64,
            5_000_000,
            65_535_900_000,
            65_536_100_000,
            3_600_000_000_000,
        ] {
            let v = stamped_speed(10.0, sent);
            assert!((10.0..10.1).contains(&v), "{v}");
            for later_ms in [0u64, 1, 120, 59_999] {
                let now = sent + later_ms * 1_000_000 + 300_000;
                let t = send_time(v, now).expect("timed");
                assert!(
                    t <= now && now - t <= (later_ms + 1) * 1_000_000,
                    "{sent} {later_ms}"
                );
                assert!(t + 1_000_000 >= sent, "{sent} {later_ms}");
            }
            assert_eq!(send_time(v, sent + 61_000_000_000), None, "too old");
        }
    }
}
