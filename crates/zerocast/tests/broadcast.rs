//! Broadcast over loopback: every client receives every frame exactly once, in order per
//! sender, with consistent sender ids.

mod util;

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::sync::{Arc, Barrier};

use util::*;
use zerocast_servers::Broadcast;

const CLIENTS: usize = 200;
const FRAMES: u32 = 50;
const JOIN: u16 = 0;
const DATA: u16 = 1;

#[test]
fn two_hundred_clients_each_receive_every_frame_once_in_order() {
    let (engine, addr) = server(Broadcast::new(), 2);
    let start = Arc::new(Barrier::new(CLIENTS));
    let connected = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS as u32)
        .map(|me| {
            let (start, connected) = (start.clone(), connected.clone());
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut r = BufReader::new(s.try_clone().unwrap());
                connected.wait(); // released once every session is in the group
                connected.wait();
                // Phase 1: everyone says who they are, to learn the server-assigned ids.
                s.write_all(&frame(JOIN, &me.to_le_bytes())).unwrap();
                let mut ids: HashMap<u32, u64> = HashMap::new();
                while ids.len() < CLIENTS {
                    let (id, p) = read_frame(&mut r).unwrap();
                    assert_eq!(id, JOIN);
                    let sender = u64::from_le_bytes(p[..8].try_into().unwrap());
                    let who = u32::from_le_bytes(p[8..12].try_into().unwrap());
                    assert!(ids.insert(who, sender).is_none(), "join from {who} twice");
                }
                start.wait();
                // Phase 2: send 50 frames, receive all 200 x 50.
                let mut wire = Vec::new();
                for seq in 0..FRAMES {
                    let mut p = me.to_le_bytes().to_vec();
                    p.extend_from_slice(&seq.to_le_bytes());
                    p.resize(8 + (seq as usize * 13) % 120, seq as u8);
                    wire.extend_from_slice(&frame(DATA, &p));
                }
                let writer = std::thread::spawn(move || s.write_all(&wire).unwrap());
                let mut next = vec![0u32; CLIENTS];
                for _ in 0..CLIENTS * FRAMES as usize {
                    let (id, p) = read_frame(&mut r).unwrap();
                    assert_eq!(id, DATA, "packet id is kept");
                    let sender = u64::from_le_bytes(p[..8].try_into().unwrap());
                    let who = u32::from_le_bytes(p[8..12].try_into().unwrap());
                    let seq = u32::from_le_bytes(p[12..16].try_into().unwrap());
                    assert_eq!(ids[&who], sender, "sender id is consistent per connection");
                    assert_eq!(seq, next[who as usize], "frames of {who} in order, once");
                    assert_eq!(p.len(), 16 + (seq as usize * 13) % 120);
                    next[who as usize] += 1;
                }
                assert!(next.iter().all(|&n| n == FRAMES));
                writer.join().unwrap();
                ids.values().copied().collect::<Vec<_>>()
            })
        })
        .collect();
    connected.wait();
    // A session enters the registry after its on_connect, which put it in the group.
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        engine.sessions().len() == CLIENTS
    }));
    connected.wait();
    let mut all_ids = None;
    for c in clients {
        let mut ids = c.join().unwrap();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CLIENTS, "sender ids are distinct");
        assert!(all_ids.get_or_insert_with(|| ids.clone()) == &ids);
    }
    let relayed = (CLIENTS * (FRAMES as usize + 1)) as u64;
    wait_for_frames_out(&engine, relayed * CLIENTS as u64);
    let m = engine.metrics();
    assert_eq!(m.frames_in, relayed);
    // Each relayed frame is one buffer (written once, sender id included) per recipient.
    assert_eq!(m.frames_out, relayed * CLIENTS as u64);
    assert!(
        m.messages_per_write() > 2.0,
        "sends coalesce under load: {m}"
    );
    eprintln!("{m}");
    assert_no_leaks(&engine);
}

/// With a write delay each session is written at most once per delay: 20 clients, one of them
/// sending 400 frames as fast as it can, receive everything with far fewer writes than
/// frames; a session's replies to itself (echo) are never held.
#[test]
fn a_write_delay_coalesces_broadcasts_and_never_holds_a_reply() {
    let delay = std::time::Duration::from_millis(50);
    let builder = zerocast::Engine::builder().workers(1).write_delay(delay);
    let (engine, addr) = server_with(builder, Broadcast::new());
    let mut clients: Vec<_> = (0..20).map(|_| connect(addr)).collect();
    let mut readers: Vec<_> = clients
        .iter()
        .map(|c| BufReader::new(c.try_clone().unwrap()))
        .collect();
    // A connection the kernel completed may still wait to be accepted (IOCP keeps 16 accepts
    // outstanding: the rest are taken a turn later): everyone in the group first.
    assert!(wait_until(std::time::Duration::from_secs(30), || engine
        .metrics()
        .connections_open
        == 20));
    // Everyone in the group: each client's hello reaches all 20.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&frame(JOIN, &(i as u32).to_le_bytes()))
            .unwrap();
    }
    for r in &mut readers {
        for _ in 0..20 {
            assert_eq!(read_frame(r).unwrap().0, JOIN);
        }
    }
    let before = engine.metrics();
    let started = std::time::Instant::now();
    let mut wire = Vec::new();
    for seq in 0..400u32 {
        wire.extend_from_slice(&frame(DATA, &seq.to_le_bytes()));
    }
    clients[0].write_all(&wire).unwrap();
    for r in &mut readers {
        for seq in 0..400u32 {
            let (id, p) = read_frame(r).unwrap();
            assert_eq!((id, &p[8..]), (DATA, &seq.to_le_bytes()[..]));
        }
    }
    let elapsed = started.elapsed();
    let writes = engine.metrics().writes - before.writes;
    // At most one write per session per delay, plus the first of each (sent at once).
    let bound = 20 * (elapsed.as_millis() as u64 / delay.as_millis() as u64 + 2);
    assert!(
        writes <= bound,
        "{writes} writes in {elapsed:?} (bound {bound})"
    );
    assert!(
        writes < 20 * 400 / 4,
        "{writes} writes for 8,000 deliveries"
    );
    drop((clients, readers));
    assert_no_leaks(&engine);
}

#[test]
fn a_write_delay_never_holds_a_sessions_own_replies() {
    use zerocast_servers::Echo;
    // A delay far longer than the read timeout: a held reply fails the read.
    let builder = zerocast::Engine::builder()
        .workers(1)
        .write_delay(std::time::Duration::from_secs(10));
    let (engine, addr) = server_with(builder, Echo);
    let mut c = connect(addr);
    c.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    for i in 0..20u32 {
        c.write_all(&frame(5, &i.to_le_bytes())).unwrap();
        assert_eq!(
            read_frame(&mut c).unwrap(),
            (5, i.to_le_bytes().to_vec()),
            "reply {i}"
        );
    }
    drop(c);
    assert_no_leaks(&engine);
}
