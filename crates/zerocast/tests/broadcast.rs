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
    let m = engine.metrics();
    let relayed = (CLIENTS * (FRAMES as usize + 1)) as u64;
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
