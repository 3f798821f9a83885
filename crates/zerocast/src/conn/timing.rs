//! A connection's deadlines and slow-consumer clock, in milliseconds of its worker's clock.
//!
//! Times are `u32` milliseconds since the worker started (four bytes a field instead of a
//! 16-byte `Instant`: this is per connection); differences use wrapping arithmetic, so they
//! stay right for spans below 49 days, far above any timeout.
//!
//! Both ends of a span are floored to the millisecond, so a span of `n` on this clock is more
//! than `n - 1` real milliseconds: a limit is passed when the span *exceeds* it, which never
//! fires before the limit (at most a millisecond after, plus the time to the next check).

/// Why a connection must close now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    FirstFrame,
    Idle,
    SlowConsumer,
}

/// The limits [`Timing::expired`] judges by, in milliseconds (`None`: no limit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) first_frame: Option<u32>,
    pub(crate) idle: Option<u32>,
    pub(crate) soft_queued: usize,
    pub(crate) grace: u32,
}

/// No time recorded (`over_soft_since` when the queue is below the soft limit).
const NEVER: u32 = u32::MAX;

/// A connection's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Accepted (not connected by us): the frame deadlines apply.
    accepted: bool,
    got_frame: bool,
    /// When the last complete frame arrived (or the connection opened, before the first).
    last_frame: u32,
    /// Since when its queued bytes exceed the soft limit ([`NEVER`]: they do not).
    over_soft_since: u32,
}

impl Timing {
    pub(crate) fn new(accepted: bool, now: u32) -> Self {
        Self {
            accepted,
            got_frame: false,
            last_frame: now,
            over_soft_since: NEVER,
        }
    }

    pub(crate) fn accepted(&self) -> bool {
        self.accepted
    }

    /// `delivered` complete frames arrived at `now`.
    pub(crate) fn frames(&mut self, delivered: usize, now: u32) {
        if delivered > 0 {
            self.got_frame = true;
            self.last_frame = now;
        }
    }

    /// Why the connection must close at `now`, if it must: a frame deadline passed, or it has
    /// stayed above the soft queued-bytes limit for the grace period.
    pub(crate) fn expired(&mut self, l: &Limits, now: u32, queued: usize) -> Option<Expired> {
        if self.accepted {
            let silent = now.wrapping_sub(self.last_frame);
            let deadline = if self.got_frame {
                l.idle.map(|t| (t, Expired::Idle))
            } else {
                l.first_frame.map(|t| (t, Expired::FirstFrame))
            };
            if let Some((limit, why)) = deadline {
                if silent > limit {
                    return Some(why);
                }
            }
        }
        if queued > l.soft_queued {
            if self.over_soft_since == NEVER {
                // NEVER itself is a valid time once in 49 days: off by a millisecond then.
                self.over_soft_since = if now == NEVER { 0 } else { now };
            }
            if now.wrapping_sub(self.over_soft_since) > l.grace {
                return Some(Expired::SlowConsumer);
            }
        } else {
            self.over_soft_since = NEVER;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        first_frame: Some(100),
        idle: Some(1000),
        soft_queued: 10,
        grace: 50,
    };

    #[test]
    fn the_first_frame_deadline_then_the_idle_timeout() {
        let mut t = Timing::new(true, 5);
        assert_eq!(t.expired(&L, 105, 0), None, "never before the deadline");
        assert_eq!(t.expired(&L, 106, 0), Some(Expired::FirstFrame));
        let mut t = Timing::new(true, 5);
        t.frames(1, 50);
        assert_eq!(t.expired(&L, 1050, 0), None, "a frame resets the clock");
        assert_eq!(t.expired(&L, 1051, 0), Some(Expired::Idle));
        let mut ours = Timing::new(false, 5);
        assert_eq!(
            ours.expired(&L, 1_000_000, 0),
            None,
            "no deadline on connected sessions"
        );
    }

    #[test]
    fn above_the_soft_limit_for_the_grace_period_is_a_slow_consumer() {
        let mut t = Timing::new(false, 0);
        assert_eq!(t.expired(&L, 10, 11), None);
        assert_eq!(t.expired(&L, 60, 11), None);
        assert_eq!(t.expired(&L, 61, 9), None, "back below: the clock restarts");
        assert_eq!(t.expired(&L, 70, 11), None);
        assert_eq!(t.expired(&L, 120, 11), None, "not before the grace period");
        assert_eq!(t.expired(&L, 121, 11), Some(Expired::SlowConsumer));
    }

    #[test]
    fn the_clock_may_wrap() {
        let mut t = Timing::new(true, u32::MAX - 10);
        t.frames(1, u32::MAX - 10);
        assert_eq!(t.expired(&L, 500, 0), None);
        assert_eq!(t.expired(&L, 990, 0), Some(Expired::Idle));
    }
}
