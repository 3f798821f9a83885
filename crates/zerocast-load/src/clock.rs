//! Timestamps every process on the machine agrees on.
//!
//! Frames carry their send time in the payload and the receiver subtracts it from its own
//! clock. With several generator processes (broadcast across shards), sender and receiver may
//! be different processes, so the value must be the raw `CLOCK_MONOTONIC` reading rather than
//! an opaque [`std::time::Instant`] (which cannot be turned into a number).

/// Nanoseconds of `CLOCK_MONOTONIC` (a vDSO call, ~20 ns, no system call).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `deadline` (a [`now_ns`] value), returning at once if it has passed.
pub fn sleep_until(deadline: u64) {
    let now = now_ns();
    if deadline > now {
        std::thread::sleep(std::time::Duration::from_nanos(deadline - now));
    }
}
