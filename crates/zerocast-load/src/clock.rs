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

/// Nanoseconds from `earlier` to `later`, or 0 if `later` is not after it.
///
/// Every difference of two timestamps in the generator goes through here. A timestamp another
/// thread took may be *newer* than one this thread read a moment before (a worker stamps a
/// receive after the drain loop read the clock): plain subtraction then underflows, which
/// panics in a debug build and wraps to ~584 years in a release build.
#[inline]
pub fn since(earlier: u64, later: u64) -> u64 {
    later.saturating_sub(earlier)
}

/// Sleeps until `deadline` (a [`now_ns`] value), returning at once if it has passed.
pub fn sleep_until(deadline: u64) {
    let wait = since(now_ns(), deadline);
    if wait > 0 {
        std::thread::sleep(std::time::Duration::from_nanos(wait));
    }
}
