//! `--metrics ADDR`: the engine's figures over HTTP in the Prometheus text format (0.0.4).
//!
//! The figures are encoded by `prometheus-client` (the Prometheus project's Rust client) from
//! the engine's [`Snapshot`](zerocast::Snapshot) at each scrape, under the names the `stats`
//! and `final` lines use (`zerocast_` + name, `_total` on counters), with a `worker` label on
//! what each worker counts; `process_*` come from `/proc` through the `procfs` crate, on Linux
//! only: a Windows build exposes no `process_*` families (absent, not zero).
//!
//! The HTTP side is a minimal responder on its own thread: one request per connection,
//! `GET /metrics` answered, anything else 404, a 2-second read timeout so a silent client
//! cannot hold it. Hand-rolled because the exporters built for Prometheus bring an async HTTP
//! stack into a server that needs none for a scrape every few seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use zerocast::metrics::{HistogramSnapshot, Kind, Row};
use zerocast::Engine;

/// More figures for `/metrics` (the world's), and their name prefix.
pub type Extra = Arc<dyn Fn() -> Vec<Row> + Send + Sync>;

/// Binds `addr` and serves `/metrics` for `engine` until the process exits. Returns the bound
/// address.
pub fn serve(
    addr: SocketAddr,
    engine: Arc<Engine>,
    extra: Option<Extra>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("zerocast-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &engine, extra.as_ref()) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
        })?;
    Ok(bound)
}

fn answer(stream: TcpStream, engine: &Arc<Engine>, extra: Option<&Extra>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    reader.by_ref().take(8192).read_line(&mut request)?;
    // Read the rest of the header so the client is not reset before it reads the answer.
    let mut line = String::new();
    while reader.by_ref().take(8192).read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut out = &stream;
    let mut parts = request.split_whitespace();
    if let (Some("GET"), Some("/metrics")) = (parts.next(), parts.next()) {
        let body = render(engine, extra);
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    }
}

/// The whole exposition.
pub fn render(engine: &Arc<Engine>, extra: Option<&Extra>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineFigures {
        engine: engine.clone(),
        extra: extra.cloned(),
    }));
    #[cfg(target_os = "linux")]
    registry.register_collector(Box::new(ProcessFigures));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

struct EngineFigures {
    engine: Arc<Engine>,
    extra: Option<Extra>,
}

impl std::fmt::Debug for EngineFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineFigures")
    }
}

fn metric_type(kind: Kind) -> MetricType {
    match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    }
}

/// Encodes one family: one sample per `(labels, value)`.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    samples: &[(Vec<(String, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, metric_type(kind))?;
    for (labels, v) in samples {
        let s = m.encode_family(labels)?;
        // Whole numbers are written as such (`3`, not `3.0`).
        let whole = v.fract() == 0.0 && v.abs() < 9.0e15;
        match (kind, whole) {
            (Kind::Counter, true) => ConstCounter::new(*v as u64).encode(s)?,
            (Kind::Counter, false) => ConstCounter::new(*v).encode(s)?,
            (Kind::Gauge, true) => ConstGauge::new(*v as i64).encode(s)?,
            (Kind::Gauge, false) => ConstGauge::new(*v).encode(s)?,
        }
    }
    Ok(())
}

/// The buckets a histogram family exposes, as powers of two: `(first, last)` exponents.
fn exposed(name: &str) -> (usize, usize) {
    match name {
        "tick_nanoseconds" => (10, 32),
        "write_messages" => (0, 14),
        _ => (4, 26),
    }
}

fn histogram_buckets(h: &HistogramSnapshot, (lo, hi): (usize, usize)) -> Vec<(f64, u64)> {
    // Bucket i holds the integers in [2^(i-1), 2^i): their upper bound is 2^i - 1.
    let mut out = Vec::new();
    let below: u64 = h.buckets[..=lo].iter().sum();
    out.push((((1u64 << lo) - 1) as f64, below));
    for i in lo + 1..=hi {
        out.push((((1u64 << i) - 1) as f64, h.buckets[i]));
    }
    out
}

impl Collector for EngineFigures {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.engine.metrics();
        let worker = |i: usize| vec![("worker".to_owned(), i.to_string())];
        // Per-worker figures, with a `worker` label.
        let per_worker: Vec<Vec<Row>> = s.workers.iter().map(|w| w.rows()).collect();
        if let Some(first) = per_worker.first() {
            for (j, row) in first.iter().enumerate() {
                let samples: Vec<_> = per_worker
                    .iter()
                    .enumerate()
                    .map(|(i, rows)| (worker(i), rows[j].value))
                    .collect();
                family(
                    &mut enc,
                    &format!("zerocast_{}", row.name),
                    row.help,
                    row.kind,
                    &samples,
                )?;
            }
        }
        // The engine's own figures.
        let per_worker_names: Vec<&str> = per_worker
            .first()
            .map(|r| r.iter().map(|r| r.name).collect())
            .unwrap_or_default();
        for row in s
            .rows()
            .into_iter()
            .filter(|r| !per_worker_names.contains(&r.name))
        {
            family(
                &mut enc,
                &format!("zerocast_{}", row.name),
                row.help,
                row.kind,
                &[(Vec::new(), row.value)],
            )?;
        }
        // Histograms, per worker.
        if let Some(first) = s.workers.first() {
            for (j, (name, help, _)) in first.histograms().iter().enumerate() {
                let family_name = format!("zerocast_{name}");
                let mut m =
                    enc.encode_descriptor(&family_name, help, None, MetricType::Histogram)?;
                for (i, w) in s.workers.iter().enumerate() {
                    let h = w.histograms()[j].2;
                    let labels = worker(i);
                    let mut fam = m.encode_family(&labels)?;
                    fam.encode_histogram::<NoLabelSet>(
                        h.sum as f64,
                        h.count(),
                        &histogram_buckets(h, exposed(name)),
                        None,
                    )?;
                }
            }
        }
        // What the application adds (the world).
        if let Some(extra) = &self.extra {
            for row in extra() {
                family(
                    &mut enc,
                    &format!("zerocast_world_{}", row.name),
                    row.help,
                    row.kind,
                    &[(Vec::new(), row.value)],
                )?;
            }
        }
        // Build info: what is running, as labels on a constant 1.
        let info = vec![
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            (
                "backend".to_owned(),
                self.engine.backend().name().to_owned(),
            ),
            ("workers".to_owned(), s.workers.len().to_string()),
        ];
        family(
            &mut enc,
            "zerocast_build_info",
            "The running zerocast: version, event loop and workers.",
            Kind::Gauge,
            &[(info, 1.0)],
        )
    }
}

/// The standard `process_*` families, read from `/proc/self`.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct ProcessFigures;

#[cfg(target_os = "linux")]
impl Collector for ProcessFigures {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use procfs::process::Process;
        use procfs::WithCurrentSystemInfo;
        // `rss_bytes` needs the page size: the current system's.
        let Ok(me) = Process::myself() else {
            return Ok(());
        };
        let one = |v: f64| [(Vec::new(), v)];
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            family(
                &mut enc,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                Kind::Counter,
                &one((stat.utime + stat.stime) as f64 / ticks),
            )?;
            family(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Kind::Gauge,
                &one(stat.rss_bytes().get() as f64),
            )?;
            family(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Kind::Gauge,
                &one(stat.vsize as f64),
            )?;
            family(
                &mut enc,
                "process_threads",
                "Number of OS threads in the process.",
                Kind::Gauge,
                &one(stat.num_threads as f64),
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                family(
                    &mut enc,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    Kind::Gauge,
                    &one(boot as f64 + stat.starttime as f64 / ticks),
                )?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            family(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors.",
                Kind::Gauge,
                &one(fds as f64),
            )?;
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                family(
                    &mut enc,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    Kind::Gauge,
                    &one(max as f64),
                )?;
            }
        }
        Ok(())
    }
}
