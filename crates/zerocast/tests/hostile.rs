//! 2,000 hostile connections (bad sizes, random bytes, a header and then silence) while 200
//! healthy sessions echo: every hostile one is closed with its reason, the healthy ones never
//! notice, and server memory stays flat.

mod util;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use util::*;
use zerocast::Engine;
use zerocast_servers::Echo;

#[test]
fn two_thousand_hostile_connections_leave_healthy_sessions_alone() {
    const HOSTILE: usize = 2000;
    const HEALTHY: usize = 200;
    let builder = Engine::builder()
        .workers(2)
        .max_frame(1024)
        .first_frame_timeout(Some(Duration::from_secs(1)))
        // Long enough that a healthy client thread held off its core (AddressSanitizer, the
        // burst of hostile connects) is not taken for an idle peer; the hostile sessions that
        // never finish a frame meet the first-frame timeout.
        .idle_timeout(Some(Duration::from_secs(3)));
    let (engine, addr) = server_with(builder, Echo);

    // Healthy sessions: 4 threads, 50 sessions each, echoing round after round.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let healthy: Vec<_> = (0..4)
        .map(|t| {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                let mut socks: Vec<_> = (0..HEALTHY / 4).map(|_| connect(addr)).collect();
                let mut back = [0u8; 68];
                while !stop.load(Ordering::Relaxed) {
                    for (i, s) in socks.iter_mut().enumerate() {
                        let f = frame((t * 100 + i) as u16, &[i as u8; 64]);
                        s.write_all(&f).unwrap();
                        s.read_exact(&mut back).expect("healthy session served");
                        assert_eq!(&back[..], &f[..]);
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || {
        rounds.load(Ordering::Relaxed) >= 20
    }));
    let rss_before = rss_bytes();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let hostile: Vec<_> = (0..HOSTILE)
        .map(|i| {
            let mut s = connect(addr);
            let bytes: Vec<u8> = match i % 4 {
                0 => [rng.gen_range(0u16..4).to_le_bytes(), [1, 0]].concat(),
                1 => [2000u16.to_le_bytes(), [1, 0]].concat(),
                2 => (0..64).map(|_| rng.gen()).collect(),
                _ => [104u16.to_le_bytes(), [1, 0]].concat(), // header, then silence
            };
            let _ = s.write_all(&bytes);
            s
        })
        .collect();

    assert!(
        wait_until(Duration::from_secs(30), || {
            let m = engine.metrics();
            // The gauge moves just after the close is counted.
            m.closed >= HOSTILE as u64 && m.connections_open == HEALTHY as u64
        }),
        "every hostile session closed: {}",
        engine.metrics()
    );
    let m = engine.metrics();
    assert_eq!(m.connections_open, HEALTHY as u64, "{m}");
    assert_eq!(
        m.protocol_errors + m.timeouts,
        HOSTILE as u64,
        "each with its reason: {m}"
    );
    assert!(m.protocol_errors >= (HOSTILE / 2) as u64, "{m}");
    let rss_after = rss_bytes();
    let grew = rss_after.saturating_sub(rss_before);
    assert!(!RSS_BOUNDS || grew < 10 << 20, "RSS grew {grew} bytes");

    // Healthy sessions kept going throughout, and still do.
    let now = rounds.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(5), || {
        rounds.load(Ordering::Relaxed) > now + 10
    }));
    stop.store(true, Ordering::Relaxed);
    for h in healthy {
        h.join().expect("no healthy session failed");
    }
    for mut s in hostile {
        assert!(closed_by_peer(&mut s));
    }
    assert_no_leaks(&engine);
}
