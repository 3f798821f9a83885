//! `zerocast load`: the load generator's command line, and its multi-process mode.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use zerocast_load::{LoadConfig, Pace, Phase, Progress, Report, Scenario};

/// Connections one generator process opens at most: the descriptor limit is 20,000 here, and
/// the process needs a few for itself.
const CONNECTIONS_PER_PROCESS: usize = 16_000;

#[derive(Clone, Copy, ValueEnum)]
pub enum ScenarioArg {
    /// Framed echo (any zerocast-protocol echo server).
    Echo,
    /// Unframed echo: raw bytes, for any byte-echo server.
    Raw,
    /// Send at --hz per client to a broadcast server; measure every delivery.
    Broadcast,
    /// Open connections at the ramp and hold them (one frame on connect, then heartbeats).
    Idle,
    /// Bots in a world server (`zerocast world`): each joins, moves --hz times a second,
    /// sometimes chats; measures move delivery latency and checks the area of interest.
    World,
}

#[derive(Args, Clone)]
pub struct LoadArgs {
    /// What to run.
    #[arg(value_enum)]
    scenario: ScenarioArg,
    /// Server address; several, comma-separated, spread the connections over them round
    /// robin (the processes of one clustered world).
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
    target: Vec<SocketAddr>,
    /// Connections to open.
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: usize,
    /// Message size on the wire in bytes, 4-byte header included (raw: bytes per message).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Closed loop: messages in flight per connection (echo, raw).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Open loop: messages per second in total (echo, raw). Latency is then measured from each
    /// message's scheduled send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Broadcast: messages per second sent by each client; world: moves per second per bot.
    #[arg(long, default_value_t = 10.0)]
    hz: f64,
    /// Idle: seconds between heartbeats on each connection.
    #[arg(long, default_value_t = 20.0)]
    heartbeat: f64,
    /// Connections opened per second.
    #[arg(long, default_value_t = 5000.0)]
    ramp: f64,
    /// Source addresses 127.0.x.1..=K to spread connections over [default: one per 10,000
    /// connections].
    #[arg(long)]
    sources: Option<usize>,
    /// Seconds between the end of the ramp and the measurement window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Length of the measurement window in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Longest wait for replies in flight after the window, in seconds.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Generator worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// Let the generator's workers sleep between events instead of busy-polling (for a
    /// generator that shares its core; timer and wake-up costs then count against it). The
    /// idle scenario never busy-polls.
    #[arg(long)]
    no_busy_poll: bool,
    /// Open loop: the generator's tick period in microseconds [default: from the rate].
    #[arg(long)]
    tick_us: Option<u64>,
    /// Pin the generator's workers to these CPUs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Sample this server process's CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Generator processes [default: one per 16,000 connections]. With more than one, the
    /// processes sleep between events instead of busy-polling.
    #[arg(long)]
    processes: Option<usize>,
    /// Print the report as JSON (exactly one document on stdout).
    #[arg(long)]
    json: bool,
    /// Percent of the connections that may fail to open or be closed during the run before
    /// the run counts as failed (exit status 1).
    #[arg(long, value_name = "PCT", default_value_t = 1.0)]
    max_failed: f64,
    /// World: one move in this many carries a chat line, one line in ten global (0: no
    /// chat). Global chat reaches every player: in a big world it outweighs the moves.
    #[arg(long, value_name = "MOVES", default_value_t = 100)]
    chat_every: u64,
    /// Connect over WebSocket (the server's `--ws` listener) instead of raw TCP: every write
    /// is one masked binary message.
    #[arg(long)]
    ws: bool,
    /// World: the bots open the datagram channel and move by datagram, and are sent the others'
    /// moves by datagram (the server needs `--datagrams`).
    #[arg(long)]
    datagrams: bool,
    /// Internal: run as shard K of a multi-process load and print a mergeable report.
    #[arg(long, hide = true)]
    shard: Option<u8>,
}

impl LoadArgs {
    fn scenario(&self) -> Scenario {
        match self.scenario {
            ScenarioArg::Echo => Scenario::Echo,
            ScenarioArg::Raw => Scenario::Raw,
            ScenarioArg::Broadcast => Scenario::Broadcast,
            ScenarioArg::Idle => Scenario::Idle,
            ScenarioArg::World => Scenario::World,
        }
    }

    fn secs(what: &str, s: f64) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(s)
            .with_context(|| format!("--{what} must be a number of seconds"))
    }

    fn config(&self) -> anyhow::Result<LoadConfig> {
        let n = self.connections;
        let mut cfg = LoadConfig::new(self.scenario(), self.target[0], n);
        cfg.more_targets = self.target[1..].to_vec();
        cfg.size = self.size;
        cfg.pace = match (self.scenario, self.rate) {
            (ScenarioArg::Broadcast | ScenarioArg::World, _) => Pace::Rate {
                per_sec: self.hz * n as f64,
            },
            (ScenarioArg::Idle, _) => Pace::Rate {
                per_sec: n as f64 / self.heartbeat,
            },
            (_, Some(rate)) => Pace::Rate { per_sec: rate },
            (_, None) => Pace::Closed { depth: self.depth },
        };
        cfg.ramp = self.ramp;
        let sources = self
            .sources
            .unwrap_or_else(|| zerocast_load::sources_needed(n));
        cfg.sources =
            zerocast_load::loopback_sources(self.target[0], sources, self.shard.unwrap_or(0));
        cfg.warmup = Self::secs("warmup", self.warmup)?;
        cfg.duration = Self::secs("duration", self.duration)?;
        cfg.drain = Self::secs("drain", self.drain)?;
        cfg.workers = usize::from(self.workers);
        cfg.cpus = self.cpus.clone();
        cfg.server_pid = self.server_pid;
        // Idle measures memory, not latency: no reason to burn a core polling.
        cfg.busy_poll = !self.no_busy_poll && !matches!(self.scenario, ScenarioArg::Idle);
        cfg.tick = self.tick_us.map(Duration::from_micros);
        cfg.chat_every = self.chat_every;
        cfg.websocket = self.ws;
        cfg.datagrams = self.datagrams;
        Ok(cfg)
    }

    /// The arguments that make a child process run `connections` of this load as shard `k`.
    fn shard_args(&self, k: u8, connections: usize, share: f64) -> Vec<String> {
        let targets: Vec<String> = self.target.iter().map(ToString::to_string).collect();
        let scenario = self
            .scenario
            .to_possible_value()
            .expect("no skipped variants")
            .get_name()
            .to_owned();
        let mut a = vec![
            "load".into(),
            scenario,
            format!("--target={}", targets.join(",")),
            format!("--connections={connections}"),
            format!("--size={}", self.size),
            format!("--depth={}", self.depth),
            format!("--hz={}", self.hz),
            format!("--heartbeat={}", self.heartbeat),
            format!("--ramp={}", self.ramp * share),
            format!("--warmup={}", self.warmup),
            format!("--duration={}", self.duration),
            format!("--drain={}", self.drain),
            format!("--workers={}", self.workers),
            format!("--chat-every={}", self.chat_every),
            format!("--shard={k}"),
        ];
        if let Some(rate) = self.rate {
            a.push(format!("--rate={}", rate * share));
        }
        if self.ws {
            a.push("--ws".into());
        }
        if self.datagrams {
            a.push("--datagrams".into());
        }
        if let Some(t) = self.tick_us {
            a.push(format!("--tick-us={t}"));
        }
        // Several processes share the generator's CPUs: busy-polling ones would fight over them.
        a.push("--no-busy-poll".into());
        if let Some(s) = self.sources {
            a.push(format!("--sources={s}"));
        }
        if !self.cpus.is_empty() {
            let cpus: Vec<String> = self.cpus.iter().map(ToString::to_string).collect();
            a.push(format!("--cpus={}", cpus.join(",")));
        }
        // One process watches the server (its window overlaps everyone's).
        if let (0, Some(pid)) = (k, self.server_pid) {
            a.push(format!("--server-pid={pid}"));
        }
        a
    }
}

pub fn main(args: &LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=100.0).contains(&args.max_failed),
        "--max-failed must be a percentage between 0 and 100"
    );
    let processes = args
        .processes
        .unwrap_or_else(|| args.connections.div_ceil(CONNECTIONS_PER_PROCESS))
        .max(1);
    let report = if args.shard.is_some() || processes == 1 {
        let cfg = args.config()?;
        let bar = progress_bar(args.shard.is_none() && !args.json);
        let mut report = zerocast_load::run(&cfg, &mut |p| show(&bar, p))?;
        bar.finish_and_clear();
        if args.shard.is_none() {
            report.histogram = None;
        }
        report
    } else {
        run_processes(args, processes)?
    };
    if args.json || args.shard.is_some() {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if args.shard.is_some() {
        return Ok(()); // the parent process judges the merged report
    }
    fail_on_problems(&report.problems(args.max_failed / 100.0))
}

/// Prints each problem on stderr and fails if there is any: a run that measured nothing, lost
/// connections or met the wrong server must not exit 0.
pub fn fail_on_problems(problems: &[String]) -> anyhow::Result<()> {
    for p in problems {
        eprintln!("error: {p}");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "the run failed: {} problem(s), listed above",
            problems.len()
        )
    }
}

/// Splits the load over `processes` child processes, each with its share of connections,
/// ramp and rate and its own block of source addresses, and merges their reports.
fn run_processes(args: &LoadArgs, processes: usize) -> anyhow::Result<Report> {
    if processes > 200 {
        bail!("too many generator processes ({processes})");
    }
    let exe = std::env::current_exe().context("cannot find the zerocast executable")?;
    let n = args.connections;
    let mut children = Vec::new();
    for k in 0..processes {
        let count = n / processes + usize::from(k < n % processes);
        if count == 0 {
            continue;
        }
        let child = Command::new(&exe)
            .args(args.shard_args(k as u8, count, count as f64 / n as f64))
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start generator process {k}"))?;
        children.push(child);
    }
    let bar = progress_bar(!args.json);
    bar.set_message(format!("{} generator processes running", children.len()));
    let mut parts = Vec::new();
    for mut child in children {
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out)?;
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("a generator process failed ({status})");
        }
        parts.push(
            serde_json::from_str::<Report>(&out).context("bad report from a generator process")?,
        );
    }
    bar.finish_and_clear();
    Ok(Report::merge(&parts)?)
}

fn progress_bar(visible: bool) -> ProgressBar {
    if !visible || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn show(bar: &ProgressBar, p: &Progress) {
    let phase = match p.phase {
        Phase::Connecting => "connecting",
        Phase::WarmingUp => "warming up",
        Phase::Measuring => "measuring",
        Phase::Draining => "draining",
    };
    bar.set_message(format!(
        "{phase} {:.1}/{:.0} s, {}/{} connected, {} received",
        p.elapsed_s, p.planned_s, p.connected, p.target_connections, p.received
    ));
}
