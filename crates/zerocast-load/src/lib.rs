//! The zerocast load generator (the "dummy client" of the classic game-server design).
//!
//! It runs on the engine's own client sessions. Scenarios ([`Scenario`]): framed echo, raw
//! echo, broadcast, idle, and bots in the world server; pacing ([`Pace`]): closed loop with a fixed number of messages in
//! flight per connection, or open loop at a fixed total rate with latency measured from each
//! message's scheduled send time.
//!
//! Every message carries its send timestamp ([`clock::now_ns`]), so the generator keeps no
//! per-message state and a broadcast delivery's latency is read straight from its payload.
//! Latencies go into an HdrHistogram; counters are split into the whole run and a measurement
//! window that starts after the connect ramp and a warm-up.
#![cfg(target_os = "linux")]

mod bots;
pub mod clock;
mod config;
mod datagrams;
mod handler;
pub mod procfs;
mod report;
mod run;
mod stats;
mod verdict;
mod watch;

pub use bots::WorldFigures;
pub use config::{
    loopback_sources, sources_needed, LoadConfig, Pace, Scenario, CONNECTIONS_PER_SOURCE,
    MIN_FRAMED_SIZE,
};
pub use report::{decode_histogram, encode_histogram, Latency, ProcFigures, Report};
pub use run::{run, Phase, Progress, PROBE_ID};
pub use stats::Stats;
pub use verdict::{guess_server, Unexpected, DEFAULT_MAX_FAILED};
