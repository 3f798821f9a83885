//! A panic in one session's handler closes that session, with the reason; the worker keeps
//! serving everyone else.

mod util;

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use util::*;
use zerocast::{CloseReason, Context, Frame, Handler, SendBuffer};

/// Echoes, but panics on frames with id 666.
#[derive(Default)]
struct Fragile {
    reasons: Mutex<Vec<CloseReason>>,
}

impl Handler for Fragile {
    type Worker = ();
    type Session = ();

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        let session = cx.session;
        assert!(frame.id() != 666, "bad packet from {}", session.id());
        let _ = session.send(SendBuffer::from(frame.frame_bytes()));
    }
    fn on_disconnect(&self, _cx: Context<'_, Self>, reason: &CloseReason) {
        self.reasons.lock().unwrap().push(reason.clone());
    }
}

#[test]
fn handler_panic_closes_only_that_session() {
    let fragile = std::sync::Arc::new(Fragile::default());
    // One worker: the panicking session shares it with the healthy ones.
    let (engine, addr) = server(fragile.clone(), 1);
    let mut healthy: Vec<_> = (0..5).map(|_| connect(addr)).collect();
    let mut bad = connect(addr);
    bad.write_all(&frame(666, b"boom")).unwrap();
    assert!(closed_by_peer(&mut bad));
    for (i, s) in healthy.iter_mut().enumerate() {
        s.write_all(&frame(i as u16, b"alive")).unwrap();
        assert_eq!(read_frame(s).unwrap(), (i as u16, b"alive".to_vec()));
    }
    assert!(wait_until(Duration::from_secs(5), || {
        fragile.reasons.lock().unwrap().len() == 1
    }));
    match &fragile.reasons.lock().unwrap()[0] {
        CloseReason::HandlerPanic(msg) => assert!(msg.contains("bad packet"), "{msg}"),
        other => panic!("unexpected reason {other:?}"),
    }
    drop(healthy);
    assert_no_leaks(&engine);
}
