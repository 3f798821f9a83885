//! `zerocast demo`: the world server and a crowd of bots on one machine, with live figures
//! and a summary. The server runs as a child process (`zerocast world`, one worker) so its
//! CPU and memory are its own; the bots run here on the engine's client side. On a machine
//! with two or more CPUs the server is pinned to CPU 0 and the bots to CPU 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use zerocast_load::{procfs, LoadConfig, Pace, Phase, Progress, Report, Scenario};

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Bots (each one connection).
    #[arg(long, default_value_t = 2000)]
    bots: usize,
    /// Seconds of measurement after the bots have joined.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Moves per second per bot.
    #[arg(long, default_value_t = 10.0)]
    hz: f64,
    /// Bots joining per second.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Port for the world server on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Print the final report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The world server child; killed if the demo ends early.
struct Server {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Server {
    fn start(port: u16, cpus: &[usize]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the zerocast executable")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "world",
            &format!("--listen=127.0.0.1:{port}"),
            "--metrics=127.0.0.1:0",
            "--workers=1",
            "--drain=1",
        ]);
        if let Some(cpu) = cpus.first() {
            cmd.arg(format!("--cpus={cpu}"));
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the world server")?;
        // The server's warnings pass through; its closing counters line is the summary's job.
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if !line.starts_with("final ") {
                        eprintln!("server: {line}");
                    }
                }
            });
        }
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut field = |prefix: &str| -> anyhow::Result<SocketAddr> {
            let line = lines
                .next()
                .context("the world server exited before listening")??;
            line.strip_prefix(prefix)
                .with_context(|| format!("unexpected server output: {line}"))?
                .parse()
                .context("bad address from the server")
        };
        let started =
            (|| Ok::<_, anyhow::Error>((field("listening on ")?, field("metrics on ")?)))();
        match started {
            Ok((addr, metrics)) => Ok(Self {
                child,
                addr,
                metrics,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's counters and gauges, by name.
    fn metrics(&self) -> Option<Metrics> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Some(Metrics {
            players: get("zerocast_world_players"),
            frames_out: get("zerocast_messages_out_total"),
            writes: get("zerocast_writes_total"),
            deliveries: get("zerocast_world_deliveries_total"),
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            let _ = self.child.kill();
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the world server ended badly ({status})");
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Metrics {
    players: f64,
    frames_out: f64,
    writes: f64,
    deliveries: f64,
}

pub fn main(args: &DemoArgs) -> anyhow::Result<()> {
    if args.bots == 0 || args.bots > 16_000 {
        bail!("--bots must be between 1 and 16000 (one process's share of descriptors)");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_cpus, bot_cpus) = if cpus >= 2 {
        (vec![0], vec![1])
    } else {
        (Vec::new(), Vec::new())
    };
    let server = Server::start(args.port, &server_cpus)?;
    let rss_start = procfs::sample(Some(server.pid()))?.rss_bytes;
    println!(
        "world server on {} (pid {}, {}); {} bots moving {} times a second, {} s of measurement",
        server.addr,
        server.pid(),
        if server_cpus.is_empty() {
            "unpinned".to_owned()
        } else {
            "CPU 0; bots on CPU 1".to_owned()
        },
        args.bots,
        args.hz,
        args.duration
    );

    let mut cfg = LoadConfig::new(Scenario::World, server.addr, args.bots);
    cfg.pace = Pace::Rate {
        per_sec: args.hz * args.bots as f64,
    };
    cfg.ramp = args.ramp;
    cfg.duration =
        Duration::try_from_secs_f64(args.duration).context("--duration must be seconds")?;
    cfg.warmup = Duration::from_secs(1);
    cfg.cpus = bot_cpus;
    cfg.server_pid = Some(server.pid());
    // The bots sleep between events: the demo shares the machine with whatever else runs.
    cfg.busy_poll = false;

    let progress: Arc<Mutex<Option<Progress>>> = Arc::default();
    let load = {
        let progress = progress.clone();
        std::thread::spawn(move || {
            zerocast_load::run(&cfg, &mut |p| {
                *progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(*p);
            })
        })
    };
    let mut last = (Instant::now(), 0u64, server.metrics().unwrap_or_default());
    while !load.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if last.0.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let Some(p) = *progress.lock().unwrap_or_else(|e| e.into_inner()) else {
            continue;
        };
        let m = server.metrics().unwrap_or(last.2);
        let rss = procfs::sample(Some(server.pid())).map_or(0, |s| s.rss_bytes);
        let dt = last.0.elapsed().as_secs_f64();
        println!(
            "{}",
            live_line(&p, &m, &last.2, p.received - last.1, dt, rss, rss_start)
        );
        last = (Instant::now(), p.received, m);
    }
    let report = load
        .join()
        .map_err(|_| anyhow::anyhow!("the bots' thread panicked"))??;
    let m = server.metrics().unwrap_or_default();
    server.stop()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        summary(&report, &m);
    }
    Ok(())
}

fn live_line(
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
        (m.frames_out - before.frames_out) / writes
    } else {
        0.0
    };
    let per_conn = if m.players > 0.0 {
        rss.saturating_sub(rss_start) as f64 / m.players
    } else {
        0.0
    };
    format!(
        "{phase:>9} {:>5.1}s  players {:>5}  deliveries/s {:>9.0}  p99 {:>7}  server memory/conn {:>6.0} B  messages/write {:>5.1}",
        p.elapsed_s,
        m.players,
        received as f64 / dt,
        if p.p99_us > 0.0 {
            format!("{:.1} ms", p.p99_us / 1e3)
        } else {
            "-".to_owned()
        },
        per_conn,
        per_write,
    )
}

fn summary(r: &Report, m: &Metrics) {
    let w = r.world.unwrap_or_default();
    println!();
    println!("summary");
    println!(
        "  bots            {} joined of {} ({} connect errors, {} disconnects)",
        w.joined, r.connections, r.connect_errors, r.disconnects
    );
    println!(
        "  moves           {} sent in {:.1} s, {} deliveries ({:.0}/s)",
        r.sent, r.window_s, r.received, r.throughput
    );
    println!(
        "  latency         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (includes the wait for the world tick)",
        r.latency.p50_us / 1e3,
        r.latency.p99_us / 1e3,
        r.latency.max_us / 1e3
    );
    println!(
        "  area of interest {} deliveries from out of range (must be 0); {} enter/leave notices",
        w.out_of_range, w.notices
    );
    println!(
        "  chat            {} lines sent, {} received",
        w.chats_sent, w.chats_received
    );
    if m.writes > 0.0 {
        println!(
            "  server writes   {:.1} messages per write ({:.0} packets queued for players)",
            m.frames_out / m.writes,
            m.deliveries
        );
    }
    if let Some(s) = &r.server {
        println!(
            "  server          {:.0}% of a core, memory {:.1} -> {:.1} MiB ({:.0} B per connection)",
            s.cpu_util * 100.0,
            s.rss_start as f64 / 1048576.0,
            s.rss_peak as f64 / 1048576.0,
            r.server_rss_per_connection().unwrap_or(0.0)
        );
    }
}
