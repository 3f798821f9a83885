//! What the demo prints: the live lines and the closing summary.

use zerocast_load::{Phase, Progress, Report};

use super::Metrics;

pub(super) const COLUMNS: &str = "\
columns: time since the demo started; players in the world; deliveries/s = moves the bots
received from other players in that second; p99 = the slowest 1 % of those deliveries, over the
last second and over the whole measurement (a move waits for the world tick, 50 ms, before it is
sent); mem/conn = the server's memory growth per player; msgs/write = packets the server puts in
each write system call (more is cheaper).";

pub(super) fn live_line(
    p: &Progress,
    m: &Metrics,
    before: &Metrics,
    received: u64,
    dt: f64,
    rss: u64,
    rss_start: u64,
) -> String {
    let phase = match p.phase {
        Phase::Connecting => "joining",
        Phase::WarmingUp => "warm-up",
        Phase::Measuring => "measuring",
        Phase::Draining => "draining",
    };
    let writes = m.writes - before.writes;
    let per_write = if writes > 0.0 {
        format!("{:.1}", (m.frames_out - before.frames_out) / writes)
    } else {
        "-".to_owned()
    };
    // While bots are still joining, the server's start-up memory dominates: no figure yet.
    let per_conn = if m.players > 0.0 && p.phase != Phase::Connecting {
        format!("{:.0} B", rss.saturating_sub(rss_start) as f64 / m.players)
    } else {
        "-".to_owned()
    };
    let ms = |us: f64| {
        if us > 0.0 {
            format!("{:.1} ms", us / 1e3)
        } else {
            "-".to_owned()
        }
    };
    let over = if m.stride > 1.0 {
        format!(
            "  over capacity: each player written every {:.0} ticks",
            m.stride
        )
    } else {
        String::new()
    };
    format!(
        "{:>5.1}s  {phase:<9}  {:>7}  {:>12.0}  {:>21}  {per_conn:>10}  {per_write:>10}{over}",
        p.run_s,
        m.players,
        received as f64 / dt.max(1e-3),
        format!("{} / {}", ms(p.p99_interval_us), ms(p.p99_us)),
    )
}

/// What made this run's figures noisy: CPU stolen by the hypervisor, or the bots' own core
/// saturated (then the latency includes the generator's delay).
pub(super) fn noise(r: &Report, steal: Option<f64>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = steal.filter(|s| *s >= 0.05) {
        out.push(format!(
            "CPU steal was {:.0} %: the hypervisor gave this machine's CPUs to other guests for \
             that share of the run, which delays both the server and the bots",
            s * 100.0
        ));
    }
    if r.generator.cpu_util >= 0.9 {
        out.push(format!(
            "the bots' CPU was {:.0} % busy: the latency includes the generator's own delay",
            r.generator.cpu_util * 100.0
        ));
    }
    out
}

pub(super) fn summary(r: &Report, m: &Metrics, noise: &[String]) {
    let w = r.world.unwrap_or_default();
    let ms = |us: f64| format!("{:.1} ms", us / 1e3);
    println!();
    println!("summary");
    println!(
        "  bots             {} joined of {} ({} connect errors, {} disconnects)",
        w.joined, r.connections, r.connect_errors, r.disconnects
    );
    println!(
        "  moves            {} sent in {:.1} s, {} deliveries ({:.0}/s)",
        r.sent, r.window_s, r.received, r.throughput
    );
    if r.latency.count > 0 {
        println!(
            "  latency          p50 {}, p99 {}, max {} over {} deliveries (includes the wait for the world tick)",
            ms(r.latency.p50_us),
            ms(r.latency.p99_us),
            ms(r.latency.max_us),
            r.latency.count
        );
    } else {
        println!("  latency          - (no move sent in the window was delivered)");
    }
    println!(
        "  area of interest {} deliveries from out of range (must be 0); {} enter/leave notices",
        w.out_of_range, w.notices
    );
    println!(
        "  chat             {} lines sent, {} received",
        w.chats_sent, w.chats_received
    );
    if m.writes > 0.0 {
        println!(
            "  server writes    {:.1} messages per write ({:.0} packets queued for players)",
            m.frames_out / m.writes,
            m.deliveries
        );
    }
    if m.max_stride > 1.0 {
        println!(
            "  capacity         over: the world wrote each player only every {:.0} ticks (its \
             budget is {} writes a second per core, --max-writes-per-sec), each mover's \
             latest position only: {:.0} deliveries of older positions left out, {:.0} of {:.0} \
             moves conflated within a tick",
            m.max_stride,
            zerocast_world::WorldConfig::default().max_writes_per_sec,
            m.superseded,
            m.conflated,
            m.moves,
        );
    } else {
        println!(
            "  capacity         within: every player written every tick; {:.0} of {:.0} moves \
             conflated",
            m.conflated, m.moves
        );
    }
    if let Some(s) = &r.server {
        println!(
            "  server           {:.0}% of a core, memory {:.1} -> {:.1} MiB ({} per connection)",
            s.cpu_util * 100.0,
            s.rss_start as f64 / 1048576.0,
            s.rss_peak as f64 / 1048576.0,
            r.server_rss_per_connection()
                .map_or("-".to_owned(), |b| format!("{b:.0} B"))
        );
    }
    if noise.is_empty() {
        println!("  noise            low (CPU steal under 5 %, the bots' core not saturated)");
    } else {
        for n in noise {
            println!("  noisy run        {n}");
        }
    }
}
