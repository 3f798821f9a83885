//! What the peer servers share: the command line, the listening socket and the stop signal.
//!
//! Every peer speaks the protocol in docs/PROTOCOL.md (a 4-byte `{size: u16, id: u16}` header,
//! size counting the whole frame; broadcast relays prefix an 8-byte sender id) so that one
//! load generator drives them all, and prints `listening on ADDR` once it accepts.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use socket2::{Domain, Protocol, Socket, Type};

/// Header length.
pub const HEADER_LEN: usize = 4;
/// Sender id length in relayed broadcast frames.
pub const SENDER_ID_LEN: usize = 8;
/// Largest frame a peer accepts (the broadcast relay must still fit 16 bits).
pub const MAX_FRAME: usize = u16::MAX as usize - SENDER_ID_LEN;

/// What a peer serves.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Echo,
    Broadcast,
    /// The world protocol, on the same game logic as `zerocast world`
    /// (`zerocast_world::Core`).
    World,
}

/// The peers' command line: `peer-X echo|broadcast|world --listen ADDR`.
#[derive(Parser)]
pub struct PeerArgs {
    #[arg(value_enum)]
    pub mode: Mode,
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
}

/// A non-blocking listener with the same settings as zerocast's (backlog 4,096, `TCP_NODELAY`
/// inherited by accepted sockets).
///
/// # Errors
/// If the address cannot be bound.
pub fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Announces the bound address the way zerocast's servers do.
pub fn announce(listener: &std::net::TcpListener) -> std::io::Result<()> {
    use std::io::Write;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()
}

/// A flag set by SIGINT or SIGTERM, for the event-loop peers to poll.
///
/// # Errors
/// If the handlers cannot be installed.
pub fn stop_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}

/// Checks a frame header: `Some(size)` when the size is valid.
pub fn frame_size(header: &[u8]) -> Option<usize> {
    let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
    (HEADER_LEN..=MAX_FRAME).contains(&size).then_some(size)
}
