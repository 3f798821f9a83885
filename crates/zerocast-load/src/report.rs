//! The result of a run: what the generator prints, as text or JSON, and how reports from
//! several generator processes are merged.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Samples (messages sent inside the window that were answered).
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of a histogram in nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Self {
            count: h.len(),
            mean_us: h.mean() / 1_000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// CPU and memory of a process over the measurement window.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcFigures {
    /// CPU seconds spent inside the window.
    pub cpu_s: f64,
    /// `cpu_s` over the time between the two readings (the window, give or take the reading
    /// itself): 1.0 is one core fully busy.
    pub cpu_util: f64,
    /// Resident memory before the first connection, in bytes.
    pub rss_start: u64,
    /// Largest resident memory seen during the run (sampled every 100 ms), in bytes.
    pub rss_peak: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    /// Connections asked for.
    pub connections: usize,
    /// Sessions that opened.
    pub connected: u64,
    pub connect_errors: u64,
    /// The first connect error, if any.
    pub connect_error: Option<String>,
    /// Seconds the connect ramp took.
    pub connect_s: f64,
    /// Sessions that ended before the generator stopped them, and why.
    pub disconnects: u64,
    pub disconnect_reasons: BTreeMap<String, u64>,
    /// Frames that were not what was sent.
    pub corrupt: u64,
    /// What the server seems to speak instead, when replies did not match the scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    /// Measurement window length in seconds.
    pub window_s: f64,
    /// Messages sent inside the window.
    pub sent: u64,
    /// Replies (echo) or deliveries (broadcast) that arrived inside the window.
    pub received: u64,
    /// `received / window_s`: replies/s for echo, deliveries/s for broadcast.
    pub throughput: f64,
    /// Whole-run totals (ramp, warm-up, window and drain).
    pub sent_total: u64,
    pub received_total: u64,
    /// Messages sent inside the window whose reply never came (echo scenarios only).
    pub unanswered: u64,
    pub latency: Latency,
    /// Delay between each message's scheduled and actual send time, inside the window (open
    /// loop only; already included in the latency figures). It stays small while the
    /// generator keeps up.
    pub scheduler_lag: Latency,
    /// Open loop: the generator's tick period in microseconds (messages go out at the first
    /// tick at or after their scheduled time).
    pub tick_us: f64,
    /// The generator's own CPU and memory.
    pub generator: ProcFigures,
    /// Fraction of the window the generator's workers spent on work (the rest is polling
    /// for it): its headroom is `1 - generator_busy`.
    pub generator_busy: f64,
    /// Whether the generator's workers busy-polled.
    pub busy_poll: bool,
    /// The server's, when `--server-pid` was given.
    pub server: Option<ProcFigures>,
    /// Generator processes merged into this report.
    pub processes: usize,
    /// The world scenario's own counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<crate::WorldFigures>,
    /// The latency histogram (HdrHistogram V2, base64), only in shard reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram: Option<String>,
}

impl Report {
    /// Server resident memory added per open connection at the peak, in bytes.
    pub fn server_rss_per_connection(&self) -> Option<f64> {
        let s = self.server.as_ref()?;
        (self.connected > 0)
            .then(|| s.rss_peak.saturating_sub(s.rss_start) as f64 / self.connected as f64)
    }

    /// Merges the reports of several generator processes that ran the same case at once.
    ///
    /// # Errors
    /// If a report lacks its histogram or the histogram cannot be decoded.
    pub fn merge(parts: &[Report]) -> io::Result<Report> {
        let first = parts
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "nothing to merge"))?;
        let mut out = Report {
            scenario: first.scenario.clone(),
            target: first.target.clone(),
            histogram: None,
            // Only one process is given the server to watch.
            server: parts.iter().find_map(|p| p.server),
            ..Report::default()
        };
        let mut hist = crate::stats::new_histogram();
        for p in parts {
            let encoded = p.histogram.as_deref().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "shard report has no histogram")
            })?;
            hist.add(decode_histogram(encoded)?)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            out.connections += p.connections;
            out.connected += p.connected;
            out.connect_errors += p.connect_errors;
            if out.connect_error.is_none() {
                out.connect_error.clone_from(&p.connect_error);
            }
            out.connect_s = out.connect_s.max(p.connect_s);
            out.disconnects += p.disconnects;
            for (k, v) in &p.disconnect_reasons {
                *out.disconnect_reasons.entry(k.clone()).or_default() += v;
            }
            out.corrupt += p.corrupt;
            if out.mismatch.is_none() {
                out.mismatch.clone_from(&p.mismatch);
            }
            out.window_s += p.window_s / parts.len() as f64;
            out.sent += p.sent;
            out.received += p.received;
            out.throughput += p.throughput;
            out.sent_total += p.sent_total;
            out.received_total += p.received_total;
            out.unanswered += p.unanswered;
            out.tick_us = out.tick_us.max(p.tick_us);
            out.generator_busy = out.generator_busy.max(p.generator_busy);
            out.busy_poll |= p.busy_poll;
            // Percentiles cannot be merged: keep the worst process's.
            if p.scheduler_lag.p99_us >= out.scheduler_lag.p99_us {
                out.scheduler_lag = p.scheduler_lag;
            }
            out.generator.cpu_s += p.generator.cpu_s;
            out.generator.cpu_util += p.generator.cpu_util;
            out.generator.rss_start += p.generator.rss_start;
            out.generator.rss_peak += p.generator.rss_peak;
            out.processes += p.processes.max(1);
            if let Some(w) = &p.world {
                out.world.get_or_insert_with(Default::default).add(w);
            }
        }
        out.latency = Latency::from_histogram(&hist);
        Ok(out)
    }
}

/// Encodes a histogram for a shard report.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Decodes [`encode_histogram`]'s output.
///
/// # Errors
/// If the text is not a valid encoded histogram.
pub fn decode_histogram(text: &str) -> io::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency;
        writeln!(f, "scenario      {} -> {}", self.scenario, self.target)?;
        writeln!(
            f,
            "connections   {} of {} open ({} connect errors{}), ramp {:.2} s, {} process(es)",
            self.connected,
            self.connections,
            self.connect_errors,
            self.connect_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            self.connect_s,
            self.processes.max(1),
        )?;
        writeln!(
            f,
            "window        {:.2} s: sent {}, received {}, {:.0}/s",
            self.window_s, self.sent, self.received, self.throughput
        )?;
        if l.count == 0 {
            writeln!(
                f,
                "latency (us)  -  (no samples: nothing sent in the window was answered)"
            )?;
        } else {
            writeln!(
                f,
                "latency (us)  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}  ({} samples)",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.count
            )?;
        }
        writeln!(
            f,
            "errors        unanswered {}  corrupt {}  disconnects {} {:?}",
            self.unanswered, self.corrupt, self.disconnects, self.disconnect_reasons
        )?;
        if let Some(w) = &self.world {
            writeln!(
                f,
                "world         {} joined, out of range {}, untimed {}, rejected {}, notices {}, chat sent {} received {}, goodbyes {}",
                w.joined, w.out_of_range, w.untimed, w.rejected, w.notices, w.chats_sent, w.chats_received, w.goodbyes
            )?;
        }
        if self.tick_us > 0.0 {
            let g = &self.scheduler_lag;
            writeln!(
                f,
                "send lag (us) p50 {:.1}  p99 {:.1}  max {:.1}  (tick {:.0} us; included in latency)",
                g.p50_us, g.p99_us, g.max_us, self.tick_us
            )?;
        }
        writeln!(
            f,
            "generator     busy {:.0}%{}, cpu {:.2} s ({:.0}% of a core), rss peak {:.1} MiB",
            self.generator_busy * 100.0,
            if self.busy_poll {
                " (busy-polling)"
            } else {
                ""
            },
            self.generator.cpu_s,
            self.generator.cpu_util * 100.0,
            self.generator.rss_peak as f64 / 1048576.0
        )?;
        if let Some(s) = &self.server {
            writeln!(
                f,
                "server        cpu {:.2} s ({:.0}% of a core), rss {:.1} -> peak {:.1} MiB ({:.0} B per connection)",
                s.cpu_s,
                s.cpu_util * 100.0,
                s.rss_start as f64 / 1048576.0,
                s.rss_peak as f64 / 1048576.0,
                self.server_rss_per_connection().unwrap_or(0.0)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = crate::stats::new_histogram();
        let mut b = crate::stats::new_histogram();
        for v in 1..=900u64 {
            a.record(v * 1_000).unwrap();
        }
        for _ in 0..100 {
            b.record(10_000_000).unwrap();
        }
        let part = |h: &Histogram<u64>, sent| Report {
            sent,
            received: sent,
            throughput: sent as f64,
            window_s: 1.0,
            connected: 10,
            processes: 1,
            histogram: Some(encode_histogram(h)),
            ..Report::default()
        };
        let m = Report::merge(&[part(&a, 900), part(&b, 100)]).unwrap();
        assert_eq!(m.sent, 1000);
        assert_eq!(m.connected, 20);
        assert_eq!(m.processes, 2);
        assert_eq!(m.latency.count, 1000);
        // 90 % of the samples are at most 900 us; the slowest 10 % are 10 ms.
        assert!((m.latency.p50_us - 500.0).abs() < 2.0, "{:?}", m.latency);
        assert!(
            (m.latency.p99_us - 10_000.0).abs() < 20.0,
            "{:?}",
            m.latency
        );
    }
}
