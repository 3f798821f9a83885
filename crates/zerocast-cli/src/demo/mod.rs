//! `zerocast demo`: the world server and a crowd of bots on one machine, with live figures
//! and a summary. The server runs as a child process (`zerocast world`, one worker) so its
//! CPU and memory are its own; the bots run here on the engine's client side. On a machine
//! with two or more CPUs the server is pinned to CPU 0 and the bots to CPU 1. The server
//! serves its live view (`--http`) while the bots run: the demo prints its address, and
//! reads the server's figures from its /metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use zerocast_load::{procfs, LoadConfig, Pace, Progress, Report, Scenario};

mod print;
use print::{live_line, noise, summary, COLUMNS};

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
    /// Print the final report as one JSON document on stdout (the live lines go to stderr).
    #[arg(long)]
    json: bool,
}

impl DemoArgs {
    /// Checks every setting before anything starts.
    fn check(&self) -> anyhow::Result<()> {
        if self.bots == 0 || self.bots > 16_000 {
            bail!("--bots must be between 1 and 16000 (one process's share of descriptors)");
        }
        if !(self.duration.is_finite() && self.duration >= 1.0) {
            bail!("--duration must be at least 1 second of measurement");
        }
        if !(self.hz > 0.0 && self.hz <= 30.0) {
            bail!(
                "--hz must be above 0 and at most 30 (the world refuses more than 30 moves a \
                 second from one player)"
            );
        }
        if !(self.ramp.is_finite() && self.ramp > 0.0) {
            bail!("--ramp must be a positive number of bots per second");
        }
        Ok(())
    }
}

/// The world server child; killed if the demo ends early.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The live view, which also serves /metrics.
    http: SocketAddr,
}

impl Server {
    /// Starts the server; its log lines (warnings) go to `log`, so they never land in the
    /// middle of the table.
    fn start(port: u16, cpus: &[usize], log: mpsc::Sender<String>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the zerocast executable")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "world",
            &format!("--listen=127.0.0.1:{port}"),
            "--http=127.0.0.1:0",
            // The live view's play button.
            "--ws=127.0.0.1:0",
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
        // The server's warnings are kept for after the table; its closing counters line is
        // the summary's job.
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if !line.starts_with("final ") && log.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let stdout = child.stdout.take().context("server stdout")?;
        let started = started(BufReader::new(stdout));
        match started {
            Ok((addr, http)) => Ok(Self { child, addr, http }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// The live view's address.
    fn live_view(&self) -> String {
        format!("http://{}/", self.http)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's counters and gauges, by name.
    fn metrics(&self) -> Option<Metrics> {
        let mut s = TcpStream::connect_timeout(&self.http, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        // Every sample of a family, summed (per-worker figures carry a `worker` label).
        let get = |name: &str| -> f64 {
            text.lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix(name)?;
                    let v = match rest.as_bytes().first()? {
                        b'{' => rest.rsplit_once('}')?.1,
                        b' ' => rest,
                        _ => return None,
                    };
                    v.trim().parse::<f64>().ok()
                })
                .sum()
        };
        Some(Metrics {
            players: get("zerocast_world_players"),
            frames_out: get("zerocast_frames_out_total"),
            writes: get("zerocast_writes_total"),
            deliveries: get("zerocast_world_deliveries_total"),
            moves: get("zerocast_world_moves_total"),
            conflated: get("zerocast_world_conflated_total"),
            superseded: get("zerocast_world_superseded_total"),
            stride: get("zerocast_world_delivery_stride"),
            max_stride: 0.0,
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

/// Reads the server's start-up lines up to `http on`, the last: its game address and its live
/// view's. The lines between (`websocket on`, `metrics on`) are the server's to add.
fn started(out: impl BufRead) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let mut listening = None;
    for line in out.lines() {
        let line = line.context("reading the world server's output")?;
        let addr = |rest: &str| -> anyhow::Result<SocketAddr> {
            rest.parse()
                .with_context(|| format!("bad address from the server: {line}"))
        };
        if let Some(rest) = line.strip_prefix("listening on ") {
            listening = Some(addr(rest)?);
        } else if let Some(rest) = line.strip_prefix("http on ") {
            let game = listening
                .with_context(|| format!("the server printed {line:?} before listening"))?;
            return Ok((game, addr(rest)?));
        } else if line
            .split_once(" on ")
            .is_none_or(|(_, rest)| rest.parse::<SocketAddr>().is_err())
        {
            // Other `NAME on ADDR` lines (`websocket on`) are not the demo's business.
            bail!("unexpected server output: {line}");
        }
    }
    bail!("the world server exited before serving its live view")
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
    moves: f64,
    conflated: f64,
    superseded: f64,
    /// Ticks between a player's writes: above 1 the world is over its write budget.
    stride: f64,
    /// Most strides seen during the run.
    max_stride: f64,
}

/// What the demo prints as JSON with `--json`: the generator's report and the server's side.
#[derive(serde::Serialize)]
struct DemoJson<'a> {
    report: &'a Report,
    /// Packets the server wrote per write system call, over the whole run.
    server_messages_per_write: Option<f64>,
    /// Share of the machine's CPU time the hypervisor gave to other guests during the run.
    cpu_steal: Option<f64>,
    /// Most ticks between a player's writes during the run: above 1 the world was over its
    /// write budget (over capacity) and wrote each player only every that many ticks.
    delivery_stride_max: f64,
    /// Moves the server accepted, and how many of them were conflated into a later position.
    moves: f64,
    conflated: f64,
    /// Deliveries of older positions left out because the same write carried a later one.
    superseded: f64,
    /// Why the run's figures cannot be trusted (empty: they can); the exit status is 1 if any.
    problems: Vec<String>,
    /// What made the figures noisy, if anything.
    noise: Vec<String>,
}

/// Writes the live table to stdout, or to stderr when stdout carries the JSON document.
struct Out {
    json: bool,
}

impl Out {
    fn line(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

pub fn main(args: &DemoArgs) -> anyhow::Result<()> {
    args.check()?;
    let out = Out { json: args.json };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_cpus, bot_cpus) = if cpus >= 2 {
        (vec![0], vec![1])
    } else {
        (Vec::new(), Vec::new())
    };
    let (log_tx, log_rx) = mpsc::channel();
    let server = Server::start(args.port, &server_cpus, log_tx)?;
    let rss_start = procfs::sample(Some(server.pid()))?.rss_bytes;
    let steal_start = procfs::cpu_steal().ok();
    out.line(&format!(
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
    ));
    out.line(&format!("live view: {}", server.live_view()));
    out.line(COLUMNS);
    out.line(&format!(
        "{:>6}  {:<9}  {:>7}  {:>12}  {:>21}  {:>10}  {:>10}",
        "time",
        "phase",
        "players",
        "deliveries/s",
        "p99 (last 1 s / all)",
        "mem/conn",
        "msgs/write"
    ));

    let mut cfg = LoadConfig::new(Scenario::World, server.addr, args.bots);
    cfg.pace = Pace::Rate {
        per_sec: args.hz * args.bots as f64,
    };
    cfg.ramp = args.ramp;
    cfg.duration = Duration::from_secs_f64(args.duration);
    cfg.warmup = Duration::from_secs(1);
    cfg.cpus = bot_cpus;
    cfg.server_pid = Some(server.pid());
    cfg.progress_every = Duration::from_secs(1);
    // The bots sleep between events: the demo shares the machine with whatever else runs.
    cfg.busy_poll = false;

    let (progress_tx, progress_rx) = mpsc::channel::<Progress>();
    let load = std::thread::spawn(move || {
        zerocast_load::run(&cfg, &mut |p| {
            let _ = progress_tx.send(*p);
        })
    });
    let mut last = (Instant::now(), 0u64, server.metrics().unwrap_or_default());
    // One line per progress report (once a second), until the run ends.
    let mut max_stride = 1.0f64;
    for p in progress_rx {
        let mut m = server.metrics().unwrap_or(last.2);
        max_stride = max_stride.max(m.stride);
        m.max_stride = max_stride;
        let rss = procfs::sample(Some(server.pid())).map_or(0, |s| s.rss_bytes);
        let dt = last.0.elapsed().as_secs_f64();
        out.line(&live_line(
            &p,
            &m,
            &last.2,
            p.received.saturating_sub(last.1),
            dt,
            rss,
            rss_start,
        ));
        last = (Instant::now(), p.received, m);
    }
    let report = load
        .join()
        .map_err(|_| anyhow::anyhow!("the bots' thread panicked"))??;
    let mut m = server.metrics().unwrap_or_default();
    m.max_stride = max_stride.max(m.stride);
    server.stop()?;
    let steal = steal_start.and_then(|(s0, t0)| {
        let (s1, t1) = procfs::cpu_steal().ok()?;
        Some((s1 - s0) as f64 / (t1 - t0).max(1) as f64)
    });
    let problems = report.problems(zerocast_load::DEFAULT_MAX_FAILED);
    let noise = noise(&report, steal);
    if args.json {
        let doc = DemoJson {
            report: &report,
            server_messages_per_write: (m.writes > 0.0).then(|| m.frames_out / m.writes),
            cpu_steal: steal,
            delivery_stride_max: m.max_stride,
            moves: m.moves,
            conflated: m.conflated,
            superseded: m.superseded,
            problems: problems.clone(),
            noise,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        summary(&report, &m, &noise);
    }
    let logs: Vec<String> = log_rx.try_iter().collect();
    if !logs.is_empty() {
        eprintln!("\nserver log ({} lines):", logs.len());
        for l in logs {
            eprintln!("  {l}");
        }
    }
    crate::load::fail_on_problems(&problems)
}
