//! CPU time and resident memory of a process, from `/proc`.

use std::io;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// CPU time, in seconds: the sum of the threads' scheduler run time (nanosecond
    /// precision), or user plus system time in clock ticks where schedstat is unavailable.
    pub cpu_s: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/stat` and the threads' `schedstat` (`None`: this process).
///
/// # Errors
/// If the process does not exist or the file cannot be parsed.
pub fn sample(pid: Option<u32>) -> io::Result<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let text = std::fs::read_to_string(format!("{dir}/stat"))?;
    let mut s = parse_stat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat line"))?;
    // Clock ticks are 10 ms: over a few seconds that is a few percent of error. The
    // scheduler's per-thread run time is exact.
    if let Some(ns) = threads_run_time_ns(&dir) {
        s.cpu_s = ns as f64 / 1e9;
    }
    Ok(s)
}

/// The machine's CPU time so far, from the first line of `/proc/stat`: `(steal, total)` in
/// clock ticks. Steal is time the hypervisor gave this VM's CPUs to other guests; its share of
/// the total over a run says how noisy the run's figures are.
///
/// # Errors
/// If `/proc/stat` cannot be read or parsed.
pub fn cpu_steal() -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad /proc/stat");
    let line = text.lines().next().ok_or_else(bad)?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().map_err(|_| bad()))
        .collect::<io::Result<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let steal = *ticks.get(7).ok_or_else(bad)?;
    Ok((steal, ticks.iter().sum()))
}

/// Sum of the first field of `/proc/PID/task/*/schedstat` (run time in ns). Threads that
/// already exited are not counted.
fn threads_run_time_ns(dir: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("{dir}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may exit between listing and reading.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn parse_stat(text: &str) -> Option<ProcSample> {
    // The command name (field 2) may contain spaces and parentheses: fields are counted from
    // the last ')'. After it comes field 3 (state); utime is field 14, stime 15, rss 24.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = field(14)? + field(15)?;
    let rss_pages = field(24)?;
    Some(ProcSample {
        cpu_s: ticks as f64 / clock_ticks_per_second(),
        rss_bytes: rss_pages * page_size(),
    })
}

fn clock_ticks_per_second() -> f64 {
    sysconf_or(libc::_SC_CLK_TCK, 100) as f64
}

fn page_size() -> u64 {
    sysconf_or(libc::_SC_PAGESIZE, 4096)
}

/// A positive `sysconf` value, or `default`.
fn sysconf_or(name: libc::c_int, default: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(name) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 300 200 0 0 20 0 1 0 99 1000 50 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert!((s.cpu_s - 500.0 / clock_ticks_per_second()).abs() < 1e-9);
        assert_eq!(s.rss_bytes, 50 * page_size());
    }

    #[test]
    fn reads_this_process() {
        // This thread's own CPU clock: burning until it has run 100 ms does not depend on how
        // often the (shared, noisy) machine descheduled it, as a wall-clock loop would.
        fn thread_cpu_s() -> f64 {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid, writable timespec for the call's duration.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            assert_eq!(rc, 0);
            ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
        }
        let before = sample(None).unwrap();
        let start = thread_cpu_s();
        let mut x = 0u64;
        while thread_cpu_s() - start < 0.1 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = sample(None).unwrap();
        assert!(after.rss_bytes > 0);
        // The process ran at least this thread's 100 ms; /proc counts in clock ticks, so
        // allow two ticks of rounding.
        let used = after.cpu_s - before.cpu_s;
        assert!(used >= 0.1 - 2.0 / clock_ticks_per_second(), "{used}");
    }
}
