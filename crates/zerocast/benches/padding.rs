//! Is the engine's cache-line padding worth its memory? Two threads pinned to two CPUs update
//! shared state at once, padded (as the engine lays it out) against packed:
//!
//! - `striped`: [`zerocast::metrics::Striped`], the counter every worker adds to (its slots
//!   are 128-byte aligned), against the same counter with its 16 slots packed into 128 bytes;
//! - `flags`: two wake flags side by side, each raised with a swap and cleared by one thread
//!   and read by the other now and then (a worker's `wake_pending`, should two workers' land
//!   on one line), padded against packed.
//!
//! Criterion reports the time of one thread's batch of [`OPS`] updates while the other thread
//! does the same; `bench/run.py` reads the estimates into docs/BENCHMARKS.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use zerocast::metrics::Striped;

/// Updates per thread per measured batch.
const OPS: u64 = 100_000;

/// Two CPUs to pin the threads to: 0 and 1 where the machine has them.
fn cpus() -> [usize; 2] {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    [0, 1.min(n - 1)]
}

/// Pins the calling thread (Linux: the benchmark runner's OS; elsewhere it runs unpinned).
#[cfg(target_os = "linux")]
fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is a CPU index of this machine, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a live cpu_set_t and its size; pid 0 is the calling thread.
    let _ = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
}

#[cfg(not(target_os = "linux"))]
fn pin(_cpu: usize) {}

/// The same 16 slots as `Striped`, packed: eight share each 64-byte line.
struct PackedStriped {
    slots: [AtomicI64; 16],
}

impl PackedStriped {
    fn add(&self, slot: usize, n: i64) {
        self.slots[slot].fetch_add(n, Relaxed);
    }
}

#[repr(align(128))]
struct Padded<T>(T);

type Work = Arc<dyn Fn(usize) + Send + Sync>;

/// The second thread, pinned once and kept for a whole benchmark (so it keeps its stripe of a
/// `Striped`: the first add picks one for good).
struct Partner {
    jobs: std::sync::mpsc::Sender<(u64, Work, Arc<Barrier>)>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Partner {
    fn new() -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<(u64, Work, Arc<Barrier>)>();
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            pin(cpus()[1]);
            for (iters, work, start) in rx {
                start.wait();
                for _ in 0..iters {
                    work(1);
                }
                let _ = tx.send(());
            }
        });
        pin(cpus()[0]);
        Self { jobs, done }
    }

    /// Runs `work(0)` here and `work(1)` on the partner at once, `iters` batches each, and
    /// returns this thread's time.
    fn run(&self, iters: u64, work: Work) -> Duration {
        let start = Arc::new(Barrier::new(2));
        self.jobs
            .send((iters, work.clone(), start.clone()))
            .unwrap();
        start.wait();
        let t0 = Instant::now();
        for _ in 0..iters {
            work(0);
        }
        let took = t0.elapsed();
        self.done.recv().unwrap();
        took
    }
}

fn striped(c: &mut Criterion) {
    let partner = Partner::new();
    let mut g = c.benchmark_group("striped");
    g.bench_function("padded", |b| {
        let counter = Arc::new(Striped::new());
        b.iter_custom(|iters| {
            let counter = counter.clone();
            // Each thread has its own stripe (its first add picked it): no line shared.
            partner.run(
                iters,
                Arc::new(move |_| {
                    for _ in 0..OPS {
                        counter.add(1);
                    }
                }),
            )
        });
        black_box(counter.get());
    });
    g.bench_function("packed", |b| {
        let counter = Arc::new(PackedStriped {
            slots: std::array::from_fn(|_| AtomicI64::new(0)),
        });
        b.iter_custom(|iters| {
            let counter = counter.clone();
            // Neighbouring stripes, as two threads get from a shared round robin.
            partner.run(
                iters,
                Arc::new(move |t| {
                    for _ in 0..OPS {
                        counter.add(t, 1);
                    }
                }),
            )
        });
    });
    g.finish();
}

fn flags(c: &mut Criterion) {
    let partner = Partner::new();
    let mut g = c.benchmark_group("flags");
    /// A thread raises its own flag with a swap (a locked read-modify-write, as posting to a
    /// worker raises its `wake_pending`), clears it (as the worker does), and now and then
    /// reads the other's.
    fn toggle(mine: &AtomicBool, theirs: &AtomicBool, seen: &AtomicUsize) {
        let mut n = 0;
        for i in 0..OPS {
            if !mine.swap(true, AcqRel) {
                mine.store(false, Release);
            }
            if i % 64 == 0 && theirs.load(Acquire) {
                n += 1;
            }
        }
        seen.fetch_add(n, Relaxed);
    }
    g.bench_function("padded", |b| {
        let f = Arc::new([
            Padded(AtomicBool::new(false)),
            Padded(AtomicBool::new(false)),
        ]);
        let seen = Arc::new(AtomicUsize::new(0));
        b.iter_custom(|iters| {
            let (f, seen) = (f.clone(), seen.clone());
            partner.run(
                iters,
                Arc::new(move |t| toggle(&f[t].0, &f[1 - t].0, &seen)),
            )
        });
    });
    g.bench_function("packed", |b| {
        let f = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let seen = Arc::new(AtomicUsize::new(0));
        b.iter_custom(|iters| {
            let (f, seen) = (f.clone(), seen.clone());
            partner.run(iters, Arc::new(move |t| toggle(&f[t], &f[1 - t], &seen)))
        });
    });
    g.finish();
}

criterion_group!(benches, striped, flags);
criterion_main!(benches);
