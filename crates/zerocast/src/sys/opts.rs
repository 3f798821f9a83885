//! Socket options set the same way on every OS, through `socket2`.

use std::io;
use std::net::SocketAddr;

use super::Sock;

/// The address of a connected socket's peer.
pub(crate) fn peer_addr(fd: &Sock) -> io::Result<SocketAddr> {
    socket2::SockRef::from(fd)
        .peer_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP socket"))
}

/// Puts a socket in blocking mode: a completion backend's operations (io_uring's, overlapped
/// Winsock's) then wait for readiness inside the kernel instead of failing with `EAGAIN`.
pub(crate) fn set_blocking(fd: &Sock) -> io::Result<()> {
    socket2::SockRef::from(fd).set_nonblocking(false)
}

/// Turns Nagle's algorithm off: game traffic is small and latency-bound.
pub(crate) fn set_nodelay(fd: &Sock) -> io::Result<()> {
    socket2::SockRef::from(fd).set_nodelay(true)
}

/// Sets the kernel send buffer size (`SO_SNDBUF`; the kernel doubles it for bookkeeping and
/// stops autotuning it).
pub(crate) fn set_send_buffer(fd: &Sock, bytes: usize) -> io::Result<()> {
    socket2::SockRef::from(fd).set_send_buffer_size(bytes)
}
