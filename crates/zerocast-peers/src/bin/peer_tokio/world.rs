//! The world on tokio, as a good Rust developer would serve it from docs/PROTOCOL.md with the
//! same game logic (`zerocast_world::Core`): one lock around the world, a reader task per
//! connection that judges each packet under the lock, and a tick task that ends the tick and
//! delivers it. Each player's share of the tick (the slices of its cells' buffers, encoded
//! once) is copied into one contiguous `Bytes` and sent down the player's unbounded channel;
//! its writer task writes what has queued through a 64 KiB buffer, one write per tick.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::SendBuffer;
use zerocast_peers::HEADER_LEN;
use zerocast_world::packets::{goodbye, Attack, Chat, Goodbye, Join, Move, Ping};
use zerocast_world::{Core, Deliver, Part, WorldConfig};

/// The world and its players' channels, under one lock.
pub struct World {
    core: Core,
    players: HashMap<u64, mpsc::UnboundedSender<Bytes>>,
}

pub type Shared = Arc<Mutex<World>>;

/// A new world with the default settings (those of `zerocast world`).
pub fn new() -> Shared {
    Arc::new(Mutex::new(World {
        core: Core::new(WorldConfig::default(), 0),
        players: HashMap::new(),
    }))
}

/// Copies each player's parts into one buffer and queues it on the player's channel.
struct Out<'a> {
    players: &'a HashMap<u64, mpsc::UnboundedSender<Bytes>>,
    shared: Vec<SendBuffer>,
}

impl Deliver for Out<'_> {
    fn begin(&mut self, shared: &[SendBuffer]) {
        self.shared = shared.to_vec();
    }

    fn player(&mut self, to: u64, parts: &[Part]) {
        let Some(tx) = self.players.get(&to) else {
            return;
        };
        let len = parts.iter().map(|p| p.range.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for p in parts {
            buf.extend_from_slice(&self.shared[p.buffer].as_bytes()[p.range.clone()]);
        }
        // Fails only once the player's writer has ended; its reader removes it.
        let _ = tx.send(buf.freeze());
    }
}

/// Runs the world's ticks for as long as the process lives.
pub async fn ticks(world: Shared) {
    let period = world.lock().expect("world lock").core.config().tick;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick = 0u64;
    loop {
        interval.tick().await;
        tick += 1;
        let mut w = world.lock().expect("world lock");
        let World { core, players } = &mut *w;
        // Over capacity each player is delivered every n-th tick, as in zerocast's world.
        let stride = core.config().delivery_stride(core.players());
        let batch = std::sync::Arc::new(core.end_tick(tick));
        let mut out = Out {
            players,
            shared: Vec::new(),
        };
        core.deliver(batch, &[], stride, &mut out);
    }
}

fn handle(core: &mut Core, id: u64, frame: &[u8]) -> Result<(), PacketError> {
    let kind = u16::from_le_bytes([frame[2], frame[3]]);
    let payload = &frame[HEADER_LEN..];
    let now = Instant::now();
    match kind {
        Move::ID => core.step(id, Move::decode(payload)?, now),
        Chat::ID => core.chat(id, Chat::decode(payload)?, payload, now),
        Attack::ID => core.attack(id, Attack::decode(payload)?, now),
        Ping::ID => core.ping(id, Ping::decode(payload)?),
        Join::ID => core.join(id, Join::decode(payload)?, now),
        kind => Err(PacketError::UnknownId { id: kind }),
    }
}

/// Serves one player: its packets judged under the world's lock, its tick output written by
/// its writer task. A bad packet gets a `Goodbye` and closes the connection.
pub async fn serve(stream: TcpStream, id: u64, world: Shared) -> std::io::Result<()> {
    let (r, w) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 * 1024, w);
        while let Some(b) = rx.recv().await {
            w.write_all(&b).await?;
            while let Ok(b) = rx.try_recv() {
                w.write_all(&b).await?;
            }
            w.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut reader = FramedRead::new(r, super::codec());
    let mut bye = None;
    while let Some(Ok(frame)) = reader.next().await {
        if frame.len() < HEADER_LEN {
            bye = Some(Goodbye::encode(goodbye::PROTOCOL, "frame size below 4"));
            break;
        }
        let mut w = world.lock().expect("world lock");
        match handle(&mut w.core, id, &frame) {
            Ok(()) => {
                if u16::from_le_bytes([frame[2], frame[3]]) == Join::ID {
                    w.players.insert(id, tx.clone());
                }
            }
            Err(e) => {
                bye = Some(Goodbye::encode(
                    goodbye::BAD_PACKET,
                    &format!("bad packet: {e}"),
                ));
                break;
            }
        }
    }
    {
        let mut w = world.lock().expect("world lock");
        w.players.remove(&id);
        w.core.leave(id);
    }
    if let Some(bye) = bye {
        let _ = tx.send(bye.as_bytes().clone());
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}
