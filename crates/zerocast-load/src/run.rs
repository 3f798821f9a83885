//! Running a load: the client handler, the connect ramp, the open-loop scheduler, the
//! measurement window and the drain.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zerocast::frame::{LengthPrefixed, Raw};
use zerocast::Engine;

use crate::bots::Bots;
use crate::clock::{now_ns, since, sleep_until};
use crate::config::{LoadConfig, Pace, Scenario};
use crate::handler::{LoadHandler, OpenLoop};
use crate::report::{encode_histogram, Latency, Report};
use crate::stats::Stats;
use crate::verdict::guess_server;
use crate::watch::Watch;

/// How far ahead of its start the measurement window is published to the workers.
const WINDOW_NOTICE_NS: u64 = 10_000_000;

/// Broadcast and world drains end once nothing has arrived for this long.
const DRAIN_QUIET_NS: u64 = 300_000_000;

/// Whether nothing has arrived for `quiet` nanoseconds at `now`: the last receive (stamped by
/// a worker, possibly *after* this thread read `now`) or the drain's start, whichever is later.
fn quiet_for(now: u64, last_receive: u64, drain_start: u64, quiet: u64) -> bool {
    since(last_receive.max(drain_start), now) > quiet
}

/// Packet id of the generator's messages.
pub const PROBE_ID: u16 = 0x10AD;

/// What the generator is doing, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    /// Sessions opened so far.
    pub connected: u64,
    pub target_connections: usize,
    /// Replies or deliveries so far (whole run).
    pub received: u64,
    /// p99 latency so far in the measurement window, in microseconds (0 before it).
    pub p99_us: f64,
    /// p99 latency of the samples recorded since the previous progress report, in
    /// microseconds (0 if there were none).
    pub p99_interval_us: f64,
    /// Seconds into the current phase, and its planned length (0 if open-ended).
    pub elapsed_s: f64,
    pub planned_s: f64,
    /// Seconds since the run started (one clock for every phase).
    pub run_s: f64,
}

/// Phases of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    WarmingUp,
    Measuring,
    Draining,
}

/// Runs a load from this process and returns what it measured. `progress` is called about
/// four times a second.
///
/// # Errors
/// Invalid settings, or the generator's engine cannot start. Connection failures are counted
/// in the report, not returned.
pub fn run(cfg: &LoadConfig, progress: &mut dyn FnMut(&Progress)) -> io::Result<Report> {
    cfg.validate()?;
    let stats = Arc::new(Stats::new());
    let depth = match cfg.pace {
        Pace::Closed { depth } => depth,
        Pace::Rate { .. } => 0,
    };
    let handler = Arc::new(LoadHandler {
        scenario: cfg.scenario,
        size: cfg.size,
        depth,
        stats: stats.clone(),
        stopping: AtomicBool::new(false),
        raw: if cfg.scenario == Scenario::Raw {
            (0..cfg.connections).map(|_| Mutex::default()).collect()
        } else {
            Vec::new()
        },
        last_receive: AtomicU64::new(0),
        done: AtomicBool::new(false),
        open_loop: match cfg.pace {
            Pace::Rate { per_sec } => Some(OpenLoop::new(per_sec, cfg.workers.max(1))),
            Pace::Closed { .. } => None,
        },
        bots: match (cfg.scenario, cfg.pace) {
            (Scenario::World, Pace::Rate { per_sec }) => Some(Bots::new(
                cfg.connections,
                per_sec / cfg.connections as f64,
                cfg.chat_every,
                cfg.datagrams
                    .then(|| crate::datagrams::Datagrams::new(cfg.connections))
                    .transpose()?,
            )),
            _ => None,
        },
    });
    let mut builder = Engine::builder()
        .workers(cfg.workers)
        .pin_cpus(cfg.cpus.clone())
        .busy_poll(cfg.busy_poll)
        .backend(cfg.backend);
    let tick = handler
        .open_loop
        .as_ref()
        .map(|o| cfg.tick.unwrap_or_else(|| o.tick(cfg.busy_poll)));
    if let Some(t) = tick {
        builder = builder.tick(t);
    }
    let builder = if cfg.scenario == Scenario::Raw {
        builder.decoder(Raw)
    } else {
        builder.decoder(LengthPrefixed::new(LengthPrefixed::MAX))
    };
    let engine = builder.build(handler.clone())?;
    let receiver = cfg.datagrams.then(|| {
        let h = handler.clone();
        std::thread::spawn(move || crate::datagrams::Datagrams::receive(h))
    });
    let mut server = cfg.server_pid.map(|p| Watch::start(Some(p))).transpose()?;
    let mut generator = Watch::start(None)?;

    let progress_ns = cfg.progress_every.as_nanos() as u64;
    // Connect ramp: connection i is opened at i / ramp seconds.
    let ramp_start = now_ns();
    let mut sessions = Vec::with_capacity(cfg.connections);
    let (mut connect_errors, mut connect_error) = (0u64, None::<io::Error>);
    let mut last_progress = 0;
    let report_progress =
        |progress: &mut dyn FnMut(&Progress), phase, started: u64, planned: f64| {
            progress(&Progress {
                phase,
                connected: stats.connected.get() as u64,
                target_connections: cfg.connections,
                received: stats.received.get() as u64,
                p99_us: if matches!(phase, Phase::Measuring | Phase::Draining) {
                    let h = stats.latency();
                    h.value_at_quantile(0.99) as f64 / 1e3
                } else {
                    0.0
                },
                p99_interval_us: {
                    let h = stats.take_interval();
                    h.value_at_quantile(0.99) as f64 / 1e3
                },
                elapsed_s: since(started, now_ns()) as f64 / 1e9,
                planned_s: planned,
                run_s: since(ramp_start, now_ns()) as f64 / 1e9,
            });
        };
    let ramp_s = cfg.connections as f64 / cfg.ramp;
    for i in 0..cfg.connections {
        sleep_until(ramp_start + (i as f64 * 1e9 / cfg.ramp) as u64);
        let source = (!cfg.sources.is_empty()).then(|| cfg.sources[i % cfg.sources.len()]);
        let opened = if cfg.websocket {
            engine.connect_websocket(cfg.target_of(i), source, "/")
        } else {
            engine.connect_from(cfg.target_of(i), source)
        };
        match opened {
            Ok(s) => sessions.push(s),
            Err(e) => {
                connect_errors += 1;
                connect_error.get_or_insert(e);
            }
        }
        if since(last_progress, now_ns()) > progress_ns {
            last_progress = now_ns();
            report_progress(progress, Phase::Connecting, ramp_start, ramp_s);
        }
    }
    let connect_s = since(ramp_start, now_ns()) as f64 / 1e9;
    if sessions.is_empty() {
        let e = connect_error.expect("no session means a connect error");
        return Err(io::Error::new(
            e.kind(),
            format!(
                "no connection to {} could be opened: {e}",
                cfg.targets_label()
            ),
        ));
    }
    let connect_error = connect_error.map(|e| e.to_string());

    if let Some(open) = &handler.open_loop {
        // The workers' ticks start sending from here.
        let _ = open.sessions.set((sessions, now_ns()));
    }
    let report = {
        let phase = |progress: &mut dyn FnMut(&Progress), phase, len: Duration| {
            let started = now_ns();
            let end = started + len.as_nanos() as u64;
            while now_ns() < end {
                sleep_until(end.min(now_ns() + progress_ns));
                report_progress(progress, phase, started, len.as_secs_f64());
            }
        };
        phase(progress, Phase::WarmingUp, cfg.warmup);

        // The window is published before it opens: a stamp taken inside it is then never
        // judged by a thread that has not seen the window yet (which would count a reply's
        // latency without its send).
        let window_start = now_ns() + WINDOW_NOTICE_NS;
        let window_end = window_start + cfg.duration.as_nanos() as u64;
        stats.set_window(window_start, window_end);
        sleep_until(window_start);
        let busy_start = engine.metrics().busy_ns;
        generator.open_window();
        if let Some(s) = &mut server {
            s.open_window();
        }
        phase(progress, Phase::Measuring, cfg.duration);
        let busy_ns = engine.metrics().busy_ns - busy_start;
        let window_s = cfg.duration.as_secs_f64();
        let generator = generator.close_window();
        let server = server.map(Watch::close_window);

        // Stop sending, then wait for what is in flight.
        handler.stopping.store(true, Ordering::Release);
        let drain_start = now_ns();
        let deadline = drain_start + cfg.drain.as_nanos() as u64;
        loop {
            let now = now_ns();
            let settled = match cfg.scenario {
                Scenario::Broadcast | Scenario::World => quiet_for(
                    now,
                    handler.last_receive.load(Ordering::Relaxed),
                    drain_start,
                    DRAIN_QUIET_NS,
                ),
                _ => stats.received.get() >= stats.sent.get(),
            };
            if settled || now >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            if since(last_progress, now_ns()) > progress_ns {
                last_progress = now_ns();
                report_progress(
                    progress,
                    Phase::Draining,
                    drain_start,
                    cfg.drain.as_secs_f64(),
                );
            }
        }
        engine.shutdown();
        handler.done.store(true, Ordering::Release);
        if let Some(r) = receiver {
            let _ = r.join();
        }

        let latency = stats.latency();
        let sent = stats.sent_in_window.get() as u64;
        let received = stats.received_in_window.get() as u64;
        Report {
            scenario: cfg.scenario.name().into(),
            target: cfg.targets_label(),
            connections: cfg.connections,
            connected: stats.connected.get() as u64,
            connect_errors,
            connect_error,
            connect_s,
            disconnects: stats.disconnects.get() as u64,
            disconnect_reasons: stats
                .disconnect_reasons
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            corrupt: stats.corrupt.get() as u64,
            mismatch: stats.first_unexpected.get().map(|&u| {
                let (kind, scenario) = guess_server(u, cfg.size);
                let hint = scenario
                    .filter(|s| *s != cfg.scenario.name())
                    .map(|s| format!("; drive it with `zerocast load {s}`"))
                    .unwrap_or_default();
                format!(
                    "{} replies did not match the {} scenario: the server looks like {kind}{hint}",
                    stats.corrupt.get(),
                    cfg.scenario.name()
                )
            }),
            window_s,
            sent,
            received,
            throughput: received as f64 / window_s,
            sent_total: stats.sent.get() as u64,
            received_total: stats.received.get() as u64,
            unanswered: match cfg.scenario {
                Scenario::Broadcast | Scenario::World => 0,
                _ => sent.saturating_sub(latency.len()),
            },
            latency: Latency::from_histogram(&latency),
            generator,
            generator_busy: busy_ns as f64 / 1e9 / window_s / cfg.workers.max(1) as f64,
            busy_poll: cfg.busy_poll,
            scheduler_lag: Latency::from_histogram(&stats.lag()),
            server,
            processes: 1,
            tick_us: tick.map_or(0.0, |t| t.as_secs_f64() * 1e6),
            histogram: Some(encode_histogram(&latency)),
            world: handler.bots.as_ref().map(Bots::figures),
        }
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race that made `tests/world.rs` fail one run in fifteen: a worker stamps a receive
    /// after the drain loop read the clock. Here a thread stamps receives as fast as it can
    /// while this one reads the clock and judges the drain, millions of times; with the old
    /// subtraction a debug build panicked ("attempt to subtract with overflow") within a few
    /// thousand rounds on this machine.
    #[test]
    fn a_receive_stamped_after_now_does_not_underflow_the_drain() {
        let last = Arc::new(AtomicU64::new(now_ns()));
        let stop = Arc::new(AtomicBool::new(false));
        let stamper = {
            let (last, stop) = (last.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    last.store(now_ns(), Ordering::Relaxed);
                }
            })
        };
        let drain_start = now_ns();
        let mut newer = 0u64;
        for _ in 0..2_000_000 {
            let now = now_ns();
            let l = last.load(Ordering::Relaxed);
            newer += u64::from(l > now);
            assert!(!quiet_for(now, l, drain_start, DRAIN_QUIET_NS));
        }
        stop.store(true, Ordering::Relaxed);
        stamper.join().unwrap();
        // The race is real on a machine with two threads running at once; on one core the
        // stamper rarely runs between the two reads. Either way nothing may panic.
        eprintln!("{newer} receives were stamped after the drain read the clock");
        // A receive from the future is "just now", and quiet is measured from the drain's
        // start until something arrives.
        assert!(!quiet_for(100, 200, 0, 50));
        assert!(quiet_for(1_000, 200, 0, 50));
        assert!(!quiet_for(1_000, 0, 990, 50));
    }
}
