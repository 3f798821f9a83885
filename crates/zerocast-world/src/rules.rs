//! The world's rules, sans-IO: where players spawn, where they may be, how fast they may move
//! and how often they may talk. The world server and the naive comparison server both judge
//! packets with these, so a benchmark compares engines running the same game.

use std::time::{Duration, Instant};

use crate::packets::{reject, Move};

/// The world's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    /// Positions run from 0 to `size` on every axis.
    pub size: f32,
    /// Area-of-interest cell width: players see each other when their cells touch (3×3).
    pub cell_size: f32,
    /// Fastest allowed movement, units per second.
    pub max_speed: f32,
    /// How far ahead a player may "save up" movement, in seconds at `max_speed`: absorbs
    /// moves that arrive bunched by network jitter without letting anyone teleport.
    pub burst: Duration,
    /// Moves a player may send per second (sustained; a second's worth may come at once).
    pub max_moves_per_sec: f32,
    /// Chat lines a player may send per second (sustained; a few seconds' worth at once).
    pub max_chats_per_sec: f32,
    /// The world tick: what happens during a tick reaches clients together at its end, one
    /// gathered write per player.
    pub tick: Duration,
    /// Writes per second one shard (one engine worker, one core) may make: the world's
    /// capacity knob. While its players times the tick rate stay under it, every player is
    /// written every tick; above it the world delivers every second (third, ...) tick, so
    /// that the writes stay within it, and moves made in between are conflated to the latest
    /// position. A world past its capacity then gets later, not slower and slower.
    ///
    /// A small write costs a core here 5 to 10 µs of kernel time (docs/BENCHMARKS.md), so the
    /// default of 60,000 keeps about a quarter of a core for reading, the game and bursts
    /// (with input read in passes, see `World::configure`): 3,000 players at the default
    /// 20 Hz tick are written every tick, 6,000 every other one (every 100 ms).
    pub max_writes_per_sec: u32,
}

impl Default for WorldConfig {
    /// A 4,000-unit square world with 100-unit cells (1,600 cells), a walking speed limit of
    /// 20 units/s, and a 20 Hz tick.
    fn default() -> Self {
        Self {
            size: 4_000.0,
            cell_size: 100.0,
            max_speed: 20.0,
            burst: Duration::from_secs(1),
            max_moves_per_sec: 30.0,
            max_chats_per_sec: 2.0,
            tick: Duration::from_millis(50),
            max_writes_per_sec: 60_000,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `cap` saved.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    fn full(cap: f32, now: Instant) -> Self {
        Self {
            tokens: cap,
            last: now,
        }
    }

    fn refill(&mut self, rate: f32, cap: f32, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f32();
        self.tokens = (self.tokens + rate * dt).min(cap);
        self.last = now;
    }

    /// Spends `n` tokens if there are that many.
    fn spend(&mut self, n: f32) -> bool {
        if n <= self.tokens {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// A player's body as the server knows it: the authoritative position, and the allowances
/// its next moves and chat lines are judged against.
#[derive(Debug, Clone, Copy)]
pub struct Body {
    /// Position (always inside the world).
    pub pos: [f32; 3],
    /// Last accepted speed.
    pub velocity: f32,
    /// Distance the player may still cover.
    distance: Bucket,
    moves: Bucket,
    chats: Bucket,
    attacks: Bucket,
}

/// Chat lines a player may send at once after being quiet.
const CHAT_BURST: f32 = 5.0;
/// Attacks a player may make per second (sustained), and at once after a pause: each one is
/// a packet to everyone in range of its target, so it is limited like chat.
const ATTACKS_PER_SEC: f32 = 5.0;
const ATTACK_BURST: f32 = 5.0;

impl WorldConfig {
    /// How many ticks apart the world delivers when its busiest shard has `players`: 1 while
    /// `players` × the tick rate fits [`max_writes_per_sec`](Self::max_writes_per_sec), then
    /// the smallest stride that makes it fit.
    pub fn delivery_stride(&self, players: usize) -> u32 {
        let per_sec = 1.0 / self.tick.as_secs_f64().max(1e-3);
        let writes = players as f64 * per_sec;
        let budget = f64::from(self.max_writes_per_sec.max(1));
        (writes / budget).ceil().clamp(1.0, 1_000.0) as u32
    }

    fn burst_distance(&self) -> f32 {
        self.max_speed * self.burst.as_secs_f32()
    }

    /// True if `p` is inside the world (false for NaN).
    pub fn contains(&self, p: [f32; 3]) -> bool {
        p.iter().all(|&v| (0.0..=self.size).contains(&v))
    }

    /// A new body for player `id`: a spawn point spread over the world by hashing the id
    /// (deterministic, so tests can reproduce it), on the ground (`z` = 0).
    pub fn spawn(&self, id: u64, now: Instant) -> Body {
        let h = splitmix64(id);
        let unit = |bits: u64| (bits & 0xFF_FFFF) as f32 / 16_777_216.0;
        Body {
            pos: [unit(h) * self.size, unit(h >> 32) * self.size, 0.0],
            velocity: 0.0,
            distance: Bucket::full(self.burst_distance(), now),
            moves: Bucket::full(self.max_moves_per_sec, now),
            chats: Bucket::full(CHAT_BURST, now),
            attacks: Bucket::full(ATTACK_BURST, now),
        }
    }

    /// Judges a move: on success the body is at the new position. On refusal the body is
    /// unchanged and the [`reject`] code says why. A NaN or infinite field is out of bounds
    /// here; servers close the session for it earlier, with [`Move::check`].
    ///
    /// # Errors
    /// The [`reject`] code.
    pub fn step(&self, body: &mut Body, m: &Move, now: Instant) -> Result<(), u8> {
        body.moves
            .refill(self.max_moves_per_sec, self.max_moves_per_sec, now);
        body.distance
            .refill(self.max_speed, self.burst_distance(), now);
        let to = [m.x.get(), m.y.get(), m.z.get()];
        if !self.contains(to) {
            return Err(reject::OUT_OF_BOUNDS);
        }
        let velocity = m.velocity.get();
        if !(0.0..=self.max_speed).contains(&velocity) {
            return Err(reject::TOO_FAST);
        }
        let d: f32 = to
            .iter()
            .zip(body.pos)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        // A hundredth of a unit of slack for float rounding in the client's own steps.
        if d > body.distance.tokens + 0.01 {
            return Err(reject::TOO_FAST);
        }
        if !body.moves.spend(1.0) {
            return Err(reject::RATE_LIMITED);
        }
        body.distance.tokens = (body.distance.tokens - d).max(0.0);
        body.pos = to;
        body.velocity = velocity;
        Ok(())
    }

    /// Spends one attack of the body's allowance.
    ///
    /// # Errors
    /// [`reject::RATE_LIMITED`] when the player attacks faster than allowed.
    pub fn attack(&self, body: &mut Body, now: Instant) -> Result<(), u8> {
        body.attacks.refill(ATTACKS_PER_SEC, ATTACK_BURST, now);
        if body.attacks.spend(1.0) {
            Ok(())
        } else {
            Err(reject::RATE_LIMITED)
        }
    }

    /// Spends one chat line of the body's allowance.
    ///
    /// # Errors
    /// [`reject::RATE_LIMITED`] when the player talks faster than allowed.
    pub fn chat(&self, body: &mut Body, now: Instant) -> Result<(), u8> {
        body.chats.refill(self.max_chats_per_sec, CHAT_BURST, now);
        if body.chats.spend(1.0) {
            Ok(())
        } else {
            Err(reject::RATE_LIMITED)
        }
    }
}

/// A 64-bit mix (SplitMix64's finaliser): spreads consecutive ids over the world.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WorldConfig {
        WorldConfig {
            size: 1000.0,
            max_speed: 10.0,
            ..WorldConfig::default()
        }
    }

    fn mv(p: [f32; 3], v: f32) -> Move {
        Move::new(p[0], p[1], p[2], v)
    }

    #[test]
    fn spawns_are_inside_the_world_and_spread() {
        let c = cfg();
        let now = Instant::now();
        let spawns: Vec<_> = (1..200).map(|id| c.spawn(id, now).pos).collect();
        assert!(spawns.iter().all(|&p| c.contains(p)));
        let west = spawns.iter().filter(|p| p[0] < 500.0).count();
        assert!((60..140).contains(&west), "{west} of 199 in the west half");
    }

    #[test]
    fn walking_passes_and_teleporting_is_refused() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = c.spawn(1, t0);
        b.pos = [500.0, 500.0, 0.0];
        // Ten steps of 1 unit, 100 ms apart: 10 units/s.
        for i in 1..=10 {
            let t = t0 + Duration::from_millis(100 * i);
            let to = [500.0 + i as f32, 500.0, 0.0];
            assert_eq!(c.step(&mut b, &mv(to, 10.0), t), Ok(()), "step {i}");
        }
        let t = t0 + Duration::from_millis(1_100);
        let before = b.pos;
        assert_eq!(
            c.step(&mut b, &mv([900.0, 900.0, 0.0], 10.0), t),
            Err(reject::TOO_FAST)
        );
        assert_eq!(b.pos, before, "a refused move leaves the body where it was");
        // Claiming a speed above the limit is refused too.
        assert_eq!(c.step(&mut b, &mv(before, 11.0), t), Err(reject::TOO_FAST));
    }

    #[test]
    fn bunched_moves_within_the_burst_pass() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = c.spawn(1, t0);
        b.pos = [100.0, 100.0, 0.0];
        // Quiet for a second, then three 3-unit steps arriving together (jitter): 9 units is
        // within one second of saved-up movement; a fourth step is not.
        let t = t0 + Duration::from_secs(1);
        for i in 1..=3 {
            let to = [100.0 + 3.0 * i as f32, 100.0, 0.0];
            assert_eq!(c.step(&mut b, &mv(to, 10.0), t), Ok(()));
        }
        assert_eq!(
            c.step(&mut b, &mv([112.0, 100.0, 0.0], 10.0), t),
            Err(reject::TOO_FAST)
        );
    }

    #[test]
    fn leaving_the_world_or_nan_is_out_of_bounds() {
        let c = cfg();
        let t = Instant::now();
        let mut b = c.spawn(1, t);
        b.pos = [0.5, 0.5, 0.0];
        for to in [[-0.1, 0.5, 0.0], [0.5, 1000.5, 0.0], [f32::NAN, 0.5, 0.0]] {
            assert_eq!(c.step(&mut b, &mv(to, 1.0), t), Err(reject::OUT_OF_BOUNDS));
        }
        assert_eq!(
            c.step(&mut b, &mv([0.5, 0.5, 0.0], f32::NAN), t),
            Err(reject::TOO_FAST)
        );
    }

    #[test]
    fn floods_are_rate_limited() {
        let c = cfg();
        let t = Instant::now();
        let mut b = c.spawn(1, t);
        let here = b.pos;
        let accepted = (0..100)
            .filter(|_| c.step(&mut b, &mv(here, 0.0), t).is_ok())
            .count();
        assert_eq!(accepted, c.max_moves_per_sec as usize);
        let lines = (0..20).filter(|_| c.chat(&mut b, t).is_ok()).count();
        assert_eq!(lines, CHAT_BURST as usize);
        assert!(c.chat(&mut b, t + Duration::from_secs(1)).is_ok());
    }
}
