//! The smallest edge-triggered epoll echo in Rust: one thread, no framing, bytes written back
//! as they arrive. Its throughput is this machine's echo ceiling.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use clap::Parser;
use zerocast_peers::{announce, listener, stop_flag, Mode, PeerArgs};

const LISTENER: u64 = u64::MAX;

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back (the socket was full).
    pending: Vec<u8>,
}

fn epoll_ctl(epfd: i32, op: i32, fd: i32, events: u32, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a live epoll_event; epfd and fd are open descriptors.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = PeerArgs::parse();
    if args.mode != Mode::Echo {
        anyhow::bail!("peer-limit only echoes");
    }
    let stop = stop_flag()?;
    let listener = listener(args.listen)?;
    // SAFETY: epoll_create1 has no memory preconditions.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `epfd` was just created and nobody else owns it.
    let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
    let et = libc::EPOLLET as u32;
    epoll_ctl(
        epfd,
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32 | et,
        LISTENER,
    )?;
    announce(&listener)?;

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `events` has room for its length in entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 100) };
        if n < 0 {
            continue; // EINTR
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == LISTENER {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let fd = stream.as_raw_fd();
                    let bits = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP) as u32 | et;
                    epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, bits, fd as u64)?;
                    let i = fd as usize;
                    if conns.len() <= i {
                        conns.resize_with(i + 1, || None);
                    }
                    conns[i] = Some(Conn {
                        stream,
                        pending: Vec::new(),
                    });
                }
                continue;
            }
            let i = token as usize;
            let Some(conn) = conns[i].as_mut() else {
                continue;
            };
            let mut open = flush(conn);
            while open {
                match conn.stream.read(&mut buf) {
                    Ok(0) => open = false,
                    Ok(n) if conn.pending.is_empty() => match conn.stream.write(&buf[..n]) {
                        Ok(w) => conn.pending.extend_from_slice(&buf[w..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            conn.pending.extend_from_slice(&buf[..n]);
                        }
                        Err(_) => open = false,
                    },
                    Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => open = false,
                }
            }
            if !open {
                conns[i] = None;
            }
        }
    }
    drop(epoll);
    Ok(())
}

/// Writes what is pending; false if the connection failed.
fn flush(conn: &mut Conn) -> bool {
    while !conn.pending.is_empty() {
        match conn.stream.write(&conn.pending) {
            Ok(w) => {
                conn.pending.drain(..w);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
