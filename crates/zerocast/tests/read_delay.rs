//! The read delay (`Builder::read_delay`): input waits in the kernel and is read in passes,
//! every byte still delivered, end to end over loopback.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use util::*;
use zerocast::Engine;
use zerocast_servers::Echo;

/// Clients that send one after another, a few milliseconds apart: without a delay each frame
/// wakes the worker (a turn per frame); with one, the worker reads them in passes.
fn echo_spread(read_delay: Duration, backend: Option<zerocast::Backend>) -> (u64, Duration, usize) {
    const CLIENTS: usize = 40;
    let mut builder = Engine::builder().workers(1).read_delay(read_delay);
    if let Some(b) = backend {
        builder = builder.backend(b);
    }
    let (engine, addr) = server_with(builder, Echo);
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| connect(addr)).collect();
    // Every client is served before counting starts: one echo each.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&frame(1, &[i as u8])).unwrap();
        assert_eq!(read_frame(c).unwrap(), (1, vec![i as u8]));
    }
    let before = engine.metrics().turns;
    let start = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&frame(2, &[i as u8; 16])).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let mut echoed = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_frame(c).unwrap(), (2, vec![i as u8; 16]));
        echoed += 1;
    }
    let spent = start.elapsed();
    let turns = engine.metrics().turns - before;
    drop(clients);
    assert_no_leaks(&engine);
    (turns, spent, echoed)
}

/// The worker's wake-ups with a delay: one per pass (at most every 100 ms, the housekeeping
/// period, when the delay is longer), not one per frame.
#[cfg(target_os = "linux")]
fn passes_bound(spent: Duration) -> u64 {
    // A pass per 100 ms of the run, twice over for timing slop, plus the few turns the
    // clients' last reads and the closes take.
    2 * (spent.as_millis() as u64 / 100 + 1) + 4
}

#[cfg(target_os = "linux")]
#[test]
fn with_a_read_delay_input_is_read_in_passes_and_every_frame_is_echoed() {
    let (turns, spent, echoed) =
        echo_spread(Duration::from_secs(1), Some(zerocast::Backend::Epoll));
    assert_eq!(echoed, 40);
    // 40 frames 3 ms apart: a worker that woke for each would take about 40 turns. When the
    // machine stalls the test long enough for the bound to pass 40, this check cannot tell,
    // but it still cannot fail a correct engine.
    assert!(
        turns <= passes_bound(spent),
        "{turns} turns in {spent:?}: the worker woke for input it was told to defer"
    );
}

#[test]
fn without_a_read_delay_the_same_frames_are_echoed_as_they_come() {
    // On whichever backend the run tests (`ZEROCAST_BACKEND`).
    let (turns, _, echoed) = echo_spread(Duration::ZERO, None);
    assert_eq!(echoed, 40);
    assert!(turns >= 1);
}

#[test]
fn a_completion_backend_takes_completions_as_they_come_whatever_the_read_delay() {
    // io_uring on Linux, IOCP on Windows.
    let backend = if cfg!(windows) {
        zerocast::Backend::Iocp
    } else {
        zerocast::Backend::Uring
    };
    if let Err(e) = backend.resolve() {
        eprintln!("skipped: {} is not available here ({e})", backend.name());
        return;
    }
    let (_, _, echoed) = echo_spread(Duration::from_secs(1), Some(backend));
    assert_eq!(echoed, 40);
}
