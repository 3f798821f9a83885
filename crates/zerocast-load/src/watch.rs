//! Watching the server process while a run goes: its peak memory, its CPU.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{now_ns, since};
use crate::procfs::{self, ProcSample};
use crate::report::ProcFigures;

/// Samples a server's resident memory every 100 ms and keeps the peak.
pub(crate) struct PeakRss {
    pub(crate) peak: Arc<AtomicU64>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    pub(crate) fn start(pid: Option<u32>) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(s) = procfs::sample(pid) {
                        peak.fetch_max(s.rss_bytes, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// One process's view of a server or of the generator during the run.
pub(crate) struct Watch {
    pub(crate) pid: Option<u32>,
    pub(crate) start: ProcSample,
    pub(crate) window_start: ProcSample,
    /// When `window_start` was read: utilisation is over the time between the two readings.
    pub(crate) window_start_ns: u64,
    pub(crate) peak: PeakRss,
}

impl Watch {
    pub(crate) fn start(pid: Option<u32>) -> io::Result<Self> {
        let start = procfs::sample(pid)?;
        Ok(Self {
            pid,
            start,
            window_start: start,
            window_start_ns: now_ns(),
            peak: PeakRss::start(pid),
        })
    }

    pub(crate) fn open_window(&mut self) {
        if let Ok(s) = procfs::sample(self.pid) {
            self.window_start = s;
            self.window_start_ns = now_ns();
        }
    }

    pub(crate) fn close_window(self) -> ProcFigures {
        let end = procfs::sample(self.pid).unwrap_or(self.window_start);
        let elapsed_s = since(self.window_start_ns, now_ns()) as f64 / 1e9;
        let cpu_s = end.cpu_s - self.window_start.cpu_s;
        let peak = self.peak.finish().max(end.rss_bytes);
        ProcFigures {
            cpu_s,
            cpu_util: if elapsed_s > 0.0 {
                cpu_s / elapsed_s
            } else {
                0.0
            },
            rss_start: self.start.rss_bytes,
            rss_peak: peak,
        }
    }
}
