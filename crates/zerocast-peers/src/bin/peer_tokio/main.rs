//! What a Rust developer would write on tokio for throughput: a task per connection,
//! tokio-util's length-delimited codec set to zerocast's header, writes batched with
//! feed/flush; for broadcast, each relayed frame built once as `Bytes` (sender id included) and
//! handed to every connection's unbounded channel, a writer task per connection draining it
//! into its buffered writer and flushing when the channel is empty. Unbounded, so that no
//! client is dropped for a full channel: a bounded channel with a drop policy decided earlier
//! comparisons more than the servers did. The world: see `world.rs`.

mod world;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::codec::{BytesCodec, FramedRead, FramedWrite, LengthDelimitedCodec};
use zerocast_peers::{announce, listener, Mode, PeerArgs, HEADER_LEN, MAX_FRAME, SENDER_ID_LEN};

type Clients = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Bytes>>>>;

/// zerocast's header: u16 LE size counting the whole frame, then u16 id; frames keep it.
/// With nothing skipped, the codec reads `size + adjustment` bytes from the frame's start,
/// so the adjustment is 0.
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_offset(0)
        .length_field_length(2)
        .length_adjustment(0)
        .num_skip(0)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

async fn echo(stream: TcpStream) -> std::io::Result<()> {
    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, codec());
    let mut writer = FramedWrite::new(w, BytesCodec::new());
    while let Some(frame) = reader.next().await {
        let frame = frame?;
        if frame.len() < HEADER_LEN {
            break;
        }
        writer.feed(frame.freeze()).await?;
        // Everything already decoded goes out in the same flush.
        while let Some(Some(frame)) = reader.next().now_or_never() {
            let frame = frame?;
            if frame.len() < HEADER_LEN {
                return Ok(());
            }
            writer.feed(frame.freeze()).await?;
        }
        SinkExt::<Bytes>::flush(&mut writer).await?;
    }
    Ok(())
}

async fn broadcast(stream: TcpStream, id: u64, clients: Clients) -> std::io::Result<()> {
    let (r, w) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    clients.lock().expect("clients lock").insert(id, tx);
    let writer = tokio::spawn(async move {
        let mut writer = FramedWrite::new(w, BytesCodec::new());
        // A 64 KiB write buffer: everything waiting leaves in as few writes as it fits.
        writer.set_backpressure_boundary(64 * 1024);
        while let Some(b) = rx.recv().await {
            writer.feed(b).await?;
            while let Ok(b) = rx.try_recv() {
                writer.feed(b).await?;
            }
            SinkExt::<Bytes>::flush(&mut writer).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut reader = FramedRead::new(r, codec());
    while let Some(Ok(frame)) = reader.next().await {
        if frame.len() < HEADER_LEN {
            break;
        }
        let mut out = BytesMut::with_capacity(frame.len() + SENDER_ID_LEN);
        out.put_u16_le((frame.len() + SENDER_ID_LEN) as u16);
        out.put_slice(&frame[2..4]);
        out.put_u64_le(id);
        out.put_slice(&frame[HEADER_LEN..]);
        let out = out.freeze();
        let clients = clients.lock().expect("clients lock");
        for tx in clients.values() {
            // Only fails once the client's writer has ended; its reader removes it.
            let _ = tx.send(out.clone());
        }
    }
    clients.lock().expect("clients lock").remove(&id);
    writer.abort();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = PeerArgs::parse();
    let std_listener = listener(args.listen)?;
    announce(&std_listener)?;
    let listener = TcpListener::from_std(std_listener)?;
    let clients: Clients = Arc::default();
    let game = world::new();
    if args.mode == Mode::World {
        tokio::spawn(world::ticks(game.clone()));
    }
    let next = AtomicU64::new(1);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                match args.mode {
                    Mode::Echo => {
                        tokio::spawn(echo(stream));
                    }
                    Mode::Broadcast => {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(broadcast(stream, id, clients.clone()));
                    }
                    Mode::World => {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(world::serve(stream, id, game.clone()));
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}
