//! `zerocast`: the engine's command-line front end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use zerocast::{frame::Raw, Backend, Builder, Engine};
use zerocast_servers::{Broadcast, Echo, BROADCAST_MAX_FRAME};
use zerocast_world::cluster::{Cluster, ClusterConfig};
use zerocast_world::World;

// The demo and the load generator run on Linux only (the generator reads /proc and uses
// Linux socket options); on Windows their subcommands say so and exit 2.
#[cfg(target_os = "linux")]
mod demo;
mod live;
#[cfg(target_os = "linux")]
mod load;
mod metrics_http;
mod signals;

#[derive(Parser)]
#[command(
    name = "zerocast",
    version,
    about = "Zero-copy networking engine for MMO game servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo server: sends every frame back unchanged.
    Echo {
        #[command(flatten)]
        server: ServerArgs,
        /// Echo bytes as they arrive, without framing (for standard echo benchmark clients).
        #[arg(long)]
        raw: bool,
    },
    /// Broadcast server: relays every frame to every client, prefixed with the sender's id.
    Broadcast {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// MMO world server: players join, move, attack and chat; events reach the players in
    /// range, flushed once per tick (docs/PROTOCOL.md, "World protocol").
    World {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        world: WorldArgs,
    },
    /// The world server and 2,000 bots on this machine for 20 seconds, with live figures and
    /// a summary: the first thing to run.
    #[cfg(target_os = "linux")]
    Demo(demo::DemoArgs),
    /// Load generator: drives an echo, broadcast or world server (or holds idle connections)
    /// and reports throughput and latency; exits 1 when the run measured nothing, lost
    /// connections, or met a server that speaks another protocol.
    #[cfg(target_os = "linux")]
    Load(load::LoadArgs),
    /// Linux only: says so and exits 2.
    #[cfg(not(target_os = "linux"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo(LinuxOnly),
    /// Linux only: says so and exits 2.
    #[cfg(not(target_os = "linux"))]
    #[command(hide = true, disable_help_flag = true)]
    Load(LinuxOnly),
}

/// The arguments of a subcommand that runs on Linux only, whatever they are.
#[cfg(not(target_os = "linux"))]
#[derive(Args)]
struct LinuxOnly {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<std::ffi::OsString>,
}

/// A subcommand that does not run on this system: `main` prints it and exits 2 (a usage
/// error, like an unknown subcommand).
#[derive(Debug)]
struct LinuxOnlyError(&'static str);

impl std::fmt::Display for LinuxOnlyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for LinuxOnlyError {}

#[cfg(not(target_os = "linux"))]
const LOAD_IS_LINUX_ONLY: &str = "`zerocast load`, the load generator, runs on Linux only: run \
     it on a Linux machine against this server (`zerocast load world --target HOST:PORT`)";

#[cfg(not(target_os = "linux"))]
const DEMO_IS_LINUX_ONLY: &str = "`zerocast demo` runs the load generator's bots, and the load \
     generator runs on Linux only: serve here (`zerocast world --listen 0.0.0.0:7000`) and run \
     the bots on a Linux machine (`zerocast load world --target HOST:7000`)";

#[derive(Args)]
struct ServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:7000.
    #[arg(long)]
    listen: SocketAddr,
    /// Also serve WebSocket clients (browsers): on their own listener at ADDR, or `same` for
    /// the --listen port, where a connection whose first bytes are `GET ` is taken as
    /// WebSocket (prints `websocket on ADDR` after the listening line).
    #[arg(long, value_name = "ADDR|same")]
    ws: Option<WsListen>,
    /// Serve the datagram channel on ADDR's address (`world`: players that open it are sent
    /// the others' moves by datagram): one socket per worker, on ports PORT, PORT+1, ... (any
    /// free ports with port 0); prints `datagrams on ADDR,...` after the WebSocket line.
    #[arg(long, value_name = "ADDR")]
    datagrams: Option<SocketAddr>,
    /// Worker threads [default: number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Largest accepted frame in bytes, header included.
    #[arg(long, default_value_t = 65535)]
    max_frame: usize,
    /// Pin workers to these CPUs, comma-separated (e.g. 0,1).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// With --cpus: keep each worker's memory on its CPU's NUMA node: auto (where the
    /// machine has more than one node), bind (always), off.
    #[arg(long, value_enum, default_value = "auto")]
    numa: NumaArg,
    /// Print the counters to stderr every SECS seconds.
    #[arg(long, value_name = "SECS")]
    stats: Option<u64>,
    /// Serve the counters in the Prometheus text format at http://ADDR/metrics (prints
    /// `metrics on ADDR` after the listening line; the same address as `world --http`
    /// shares its server).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// On SIGINT/SIGTERM (on Windows: Ctrl-C, Ctrl-Break), keep writing queued data for up to
    /// SECS seconds before closing.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    drain: f64,
    /// Event loop: on Linux epoll, uring (io_uring), or auto (io_uring where the kernel
    /// supports it, else epoll, logging why); on Windows iocp (I/O completion ports, which auto
    /// picks there) [default: epoll on Linux, iocp on Windows, or the ZEROCAST_BACKEND
    /// environment variable].
    #[arg(long, value_parser = backend_parser())]
    backend: Option<Backend>,
    /// Share the listening port with other processes already serving it (SO_REUSEPORT: the
    /// kernel splits new connections between them). Without it, a port already served is
    /// refused.
    #[arg(long)]
    reuse_port: bool,
    /// Milliseconds output may wait for more to share its write (broadcasts coalesce into
    /// fewer, fuller writes; a session's own replies are not held) [default: 0, written at
    /// the end of the turn that queued it].
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    write_delay: f64,
    /// Kernel send buffer per socket in bytes (SO_SNDBUF) [default: the kernel autotunes].
    #[arg(long, value_name = "BYTES")]
    send_buffer: Option<usize>,
    /// Milliseconds input may wait in the kernel before a worker reads it: the worker wakes
    /// for input at most that often (and at its ticks and deadlines) and reads every ready
    /// socket at once [default: a fifth of the tick for `world`, which sends only at its
    /// ticks; 0, read as soon as it arrives, for the others].
    #[arg(long, value_name = "MS")]
    read_delay: Option<f64>,
}

/// Where `--ws` serves WebSocket.
#[derive(Clone, Copy, Debug)]
enum WsListen {
    Same,
    At(SocketAddr),
}

impl std::str::FromStr for WsListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "same" {
            return Ok(Self::Same);
        }
        s.parse()
            .map(Self::At)
            .map_err(|e| format!("{s:?} is neither `same` nor an address: {e}"))
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NumaArg {
    Auto,
    Bind,
    Off,
}

impl From<NumaArg> for zerocast::Numa {
    fn from(n: NumaArg) -> Self {
        match n {
            NumaArg::Auto => Self::Auto,
            NumaArg::Bind => Self::Bind,
            NumaArg::Off => Self::Off,
        }
    }
}

/// `--backend`: the names every build accepts (the engine says which cannot run here), read by
/// the engine's own [`Backend::parse`].
fn backend_parser() -> impl clap::builder::TypedValueParser<Value = Backend> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["epoll", "uring", "iocp", "auto"]).try_map(
        |name: String| {
            Backend::parse(&name).ok_or_else(|| format!("this engine has no {name} backend"))
        },
    )
}

/// The world's rules (defaults: `zerocast::world::WorldConfig::default()`).
#[derive(Args, Clone)]
pub struct WorldArgs {
    /// World width on each axis, in units.
    #[arg(long, default_value_t = 4000.0)]
    pub world_size: f32,
    /// Area-of-interest cell width: players see each other within one cell.
    #[arg(long, default_value_t = 100.0)]
    pub cell_size: f32,
    /// Fastest allowed movement, units per second.
    #[arg(long, default_value_t = 20.0)]
    pub max_speed: f32,
    /// World tick in milliseconds: events reach players once per tick.
    #[arg(long, default_value_t = 50)]
    pub tick_ms: u64,
    /// Writes per second one worker may make, the world's capacity: above players x tick
    /// rate, the world delivers every second (third, ...) tick, moves conflated in between
    #[arg(long, default_value_t = 60_000)]
    pub max_writes_per_sec: u32,
    /// Join other world processes in one world through the NATS server at URL (e.g.
    /// nats://127.0.0.1:4222): players see and hear the players near them on every process.
    /// An unreachable server is retried while the world plays on.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The world's name on the bus: processes with the same name are one world.
    #[arg(long, value_name = "NAME", default_value = "world", requires = "nats")]
    pub world_name: String,
    /// Seconds of silence after which another process's players are forgotten (it was
    /// killed or cut off); processes say they are alive every second.
    #[arg(long, value_name = "SECS", default_value_t = 3.0, requires = "nats")]
    pub presence_timeout: f64,
    /// Serve the live view at http://ADDR/: a map of every player, the figures, and a
    /// player to play in the browser over `--ws` (also serves /state.json and /metrics;
    /// prints `http on ADDR` after the listening line).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
}

impl WorldArgs {
    pub fn config(&self) -> anyhow::Result<zerocast_world::WorldConfig> {
        let positive = |what: &str, v: f32| {
            anyhow::ensure!(v.is_finite() && v > 0.0, "--{what} must be positive");
            Ok(())
        };
        positive("world-size", self.world_size)?;
        positive("cell-size", self.cell_size)?;
        positive("max-speed", self.max_speed)?;
        anyhow::ensure!(
            (1..=60_000).contains(&self.tick_ms),
            "--tick-ms must be between 1 and 60000"
        );
        anyhow::ensure!(
            self.max_writes_per_sec > 0,
            "--max-writes-per-sec must be at least 1"
        );
        Ok(zerocast_world::WorldConfig {
            size: self.world_size,
            cell_size: self.cell_size,
            max_speed: self.max_speed,
            tick: Duration::from_millis(self.tick_ms),
            max_writes_per_sec: self.max_writes_per_sec,
            ..Default::default()
        })
    }

    /// The cluster settings, with `--nats`.
    pub fn cluster(&self) -> anyhow::Result<Option<ClusterConfig>> {
        let Some(url) = &self.nats else {
            return Ok(None);
        };
        anyhow::ensure!(
            self.presence_timeout.is_finite() && self.presence_timeout > 1.0,
            "--presence-timeout must be more than 1 second (the heartbeat)"
        );
        let mut c = ClusterConfig::new(url.clone(), self.world_name.clone());
        c.timeout = Duration::from_secs_f64(self.presence_timeout);
        c.check()
            .map_err(|e| anyhow::anyhow!("--world-name: {e}"))?;
        Ok(Some(c))
    }
}

impl ServerArgs {
    /// The engine's settings: the server's own `defaults` (a world's tick and read delay),
    /// then what the command line says, which overrules them.
    fn builder(&self, defaults: impl FnOnce(Builder) -> Builder) -> Builder {
        let mut b = defaults(Engine::builder())
            .max_frame(self.max_frame)
            .pin_cpus(self.cpus.clone())
            .numa(self.numa.into())
            .reuse_port(self.reuse_port)
            .write_delay(Duration::from_secs_f64(self.write_delay.max(0.0) / 1e3));
        if let Some(backend) = self.backend {
            b = b.backend(backend);
        }
        if let Some(bytes) = self.send_buffer {
            b = b.send_buffer(bytes);
        }
        if let Some(n) = self.workers {
            b = b.workers(usize::from(n));
        }
        if let Some(ms) = self.read_delay {
            b = b.read_delay(Duration::from_secs_f64(ms.max(0.0) / 1e3));
        }
        b
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, never a backtrace: the reader is an
            // operator, not a debugger.
            eprintln!("error: {e:#}");
            if e.is::<LinuxOnlyError>() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Servers log at info by default; the demo and the load generator print tables, which
    // log lines would cut into, so they log warnings only. RUST_LOG overrides either. The NATS
    // client logs every failed reconnection attempt at info: the world says it once itself.
    let default_level = match cli.command {
        Command::Demo(_) | Command::Load(_) => "warn",
        _ => "info,async_nats=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs piped to a file or journald stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut extra: Option<metrics_http::Extra> = None;
    let mut live: Option<(SocketAddr, Arc<World>)> = None;
    // Kept until the server has stopped: dropping it says goodbye to the other processes.
    let mut cluster: Option<Cluster> = None;
    let (engine, args) = match &cli.command {
        Command::Echo { server, raw } => {
            let b = server.builder(|b| b);
            let b = if *raw { b.decoder(Raw) } else { b };
            (b.build(Echo)?, server)
        }
        Command::Broadcast { server } => {
            let b = server
                .builder(|b| b)
                .max_frame(server.max_frame.min(BROADCAST_MAX_FRAME));
            (b.build(Broadcast::new())?, server)
        }
        Command::World { server, world } => {
            let config = world.config()?;
            let http = world.http;
            // Shards publish positions only for a live view to show.
            let mut w = World::new(config.clone()).spectate(http.is_some());
            if let Some(c) = world.cluster()? {
                let url = c.url.clone();
                let joined = Cluster::start(c, &config)
                    .with_context(|| format!("cannot join the cluster at {url}"))?;
                w = w.clustered(&joined);
                cluster = Some(joined);
            }
            let world = Arc::new(w);
            let w = world.clone();
            extra = Some(Arc::new(move || w.snapshot().rows()));
            live = http.map(|addr| (addr, world.clone()));
            let builder = server.builder(|b| world.configure(b));
            (builder.build(world)?, server)
        }
        #[cfg(target_os = "linux")]
        Command::Load(args) => return load::main(args),
        #[cfg(target_os = "linux")]
        Command::Demo(args) => return demo::main(args),
        #[cfg(not(target_os = "linux"))]
        Command::Load(_) => return Err(LinuxOnlyError(LOAD_IS_LINUX_ONLY).into()),
        #[cfg(not(target_os = "linux"))]
        Command::Demo(_) => return Err(LinuxOnlyError(DEMO_IS_LINUX_ONLY).into()),
    };
    serve(engine, args, extra, live)?;
    drop(cluster);
    Ok(())
}

/// Listens, prints `listening on ADDR` (then `websocket on`, `metrics on`, `http on` for the
/// servers asked for, in that order), and runs until SIGINT or SIGTERM (on Windows also
/// Ctrl-Break; see `signals`). `live`: the live view's address and world (`world --http`).
fn serve(
    engine: Engine,
    args: &ServerArgs,
    extra: Option<metrics_http::Extra>,
    live: Option<(SocketAddr, Arc<World>)>,
) -> anyhow::Result<()> {
    let engine = Arc::new(engine);
    let mut signals = signals::Signals::new()?;
    let transport = match args.ws {
        Some(WsListen::Same) => zerocast::Transport::Both,
        _ => zerocast::Transport::Tcp,
    };
    let addr = engine
        .listen_as(args.listen, transport)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("listening on {addr}");
    // Where browsers connect, for the live view.
    let ws = match args.ws {
        Some(WsListen::Same) => {
            println!("websocket on {addr}");
            Some(addr)
        }
        Some(WsListen::At(ws)) => {
            let bound = engine
                .listen_websocket(ws)
                .with_context(|| format!("cannot listen for WebSocket on {ws}"))?;
            println!("websocket on {bound}");
            Some(bound)
        }
        None => None,
    };
    if let Some(d) = args.datagrams {
        let bound = engine
            .listen_datagrams(d)
            .with_context(|| format!("cannot serve datagrams on {d}"))?;
        let list: Vec<String> = bound.iter().map(ToString::to_string).collect();
        println!("datagrams on {}", list.join(","));
    }
    tracing::info!(backend = engine.backend().name(), "serving");
    // `--metrics` at the live view's address: the live view serves /metrics too.
    let shared_metrics = args.metrics.is_some() && args.metrics == live.as_ref().map(|l| l.0);
    if let Some(m) = args.metrics.filter(|_| !shared_metrics) {
        let bound = metrics_http::serve(m, engine.clone(), extra.clone())
            .with_context(|| format!("cannot serve metrics on {m}"))?;
        println!("metrics on {bound}");
    }
    if let Some((at, world)) = live {
        let page = live::Live {
            engine: engine.clone(),
            world,
            ws,
            extra: extra.clone(),
        };
        let bound =
            live::serve(at, page).with_context(|| format!("cannot serve the live view on {at}"))?;
        if shared_metrics {
            println!("metrics on {bound}");
        }
        println!("http on {bound}");
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    let handle = signals.closer();
    let stats = args.stats.map(Duration::from_secs);
    std::thread::scope(|s| {
        if let Some(every) = stats {
            let engine = &engine;
            let extra = &extra;
            let signals_closed = &handle;
            s.spawn(move || {
                let tick = Duration::from_millis(100);
                let mut waited = Duration::ZERO;
                while !signals_closed.is_closed() {
                    std::thread::sleep(tick);
                    waited += tick;
                    if waited >= every {
                        waited = Duration::ZERO;
                        eprintln!("stats {}{}", engine.metrics(), extra_pairs(extra.as_ref()));
                    }
                }
            });
        }
        let signal = signals.wait();
        handle.close();
        tracing::info!(?signal, "shutting down");
        engine.shutdown_graceful(Duration::from_secs_f64(args.drain.max(0.0)));
    });
    eprintln!("final {}{}", engine.metrics(), extra_pairs(extra.as_ref()));
    Ok(())
}

/// The application's figures (the world's) as ` world_name=value` pairs, after the engine's.
fn extra_pairs(extra: Option<&metrics_http::Extra>) -> String {
    let mut out = String::new();
    for row in extra.map(|e| e()).unwrap_or_default() {
        use std::fmt::Write;
        let _ = write!(out, " world_{}={}", row.name, row.value);
    }
    out
}
