//! The design zero-copy replaces: every packet is copied into a fresh allocation for every
//! recipient and written with its own send call. One thread on mio (edge-triggered epoll).
//! Correct (partial writes are queued and resumed), just not frugal.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use zerocast_peers::{announce, frame_size, listener, stop_flag, Mode, PeerArgs, HEADER_LEN};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    id: u64,
    inbuf: Vec<u8>,
    outq: VecDeque<Vec<u8>>,
}

impl Conn {
    /// Sends one packet with its own write call; what does not fit is queued.
    fn send_packet(&mut self, packet: Vec<u8>) -> bool {
        if !self.outq.is_empty() {
            self.outq.push_back(packet);
            return true;
        }
        match self.stream.write(&packet) {
            Ok(n) if n == packet.len() => true,
            Ok(n) => {
                self.outq.push_back(packet[n..].to_vec());
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.outq.push_back(packet);
                true
            }
            Err(_) => false,
        }
    }

    fn flush(&mut self) -> bool {
        while let Some(front) = self.outq.front_mut() {
            match self.stream.write(front) {
                Ok(n) if n == front.len() => {
                    self.outq.pop_front();
                }
                Ok(n) => {
                    front.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads everything available and cuts complete frames off the front of the buffer, each
    /// copied into its own Vec. None: the connection is finished (closed or bad header).
    fn read_frames(&mut self, scratch: &mut [u8]) -> Option<Vec<Vec<u8>>> {
        let mut open = true;
        loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        let mut frames = Vec::new();
        while self.inbuf.len() >= HEADER_LEN {
            let size = frame_size(&self.inbuf)?;
            if self.inbuf.len() < size {
                break;
            }
            frames.push(self.inbuf[..size].to_vec());
            self.inbuf.drain(..size);
        }
        (open || !frames.is_empty()).then_some(frames)
    }
}

fn relayed(sender: u64, frame: &[u8]) -> Vec<u8> {
    let size = (frame.len() + 8) as u16;
    let mut p = Vec::with_capacity(frame.len() + 8);
    p.extend_from_slice(&size.to_le_bytes());
    p.extend_from_slice(&frame[2..4]);
    p.extend_from_slice(&sender.to_le_bytes());
    p.extend_from_slice(&frame[HEADER_LEN..]);
    p
}

fn main() -> anyhow::Result<()> {
    let args = PeerArgs::parse();
    let stop = stop_flag()?;
    let std_listener = listener(args.listen)?;
    let mut listener = TcpListener::from_std(std_listener.try_clone()?);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    announce(&std_listener)?;

    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = 1u64;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in &events {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let token = Token(next as usize);
                    poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns.insert(
                        token,
                        Conn {
                            stream,
                            id: next,
                            inbuf: Vec::new(),
                            outq: VecDeque::new(),
                        },
                    );
                    next += 1;
                }
                continue;
            }
            let token = ev.token();
            let Some(conn) = conns.get_mut(&token) else {
                continue;
            };
            let mut alive = !ev.is_writable() || conn.flush();
            let frames = if alive && ev.is_readable() {
                conn.read_frames(&mut scratch)
            } else {
                Some(Vec::new())
            };
            let Some(frames) = frames else {
                conns.remove(&token);
                continue;
            };
            match args.mode {
                Mode::Echo => {
                    for f in frames {
                        alive &= conn.send_packet(f);
                    }
                    if !alive {
                        conns.remove(&token);
                    }
                }
                Mode::Broadcast => {
                    let sender = conn.id;
                    let mut dead = Vec::new();
                    for f in &frames {
                        for (t, c) in conns.iter_mut() {
                            // A fresh copy per recipient, one write call per packet.
                            if !c.send_packet(relayed(sender, f)) {
                                dead.push(*t);
                            }
                        }
                    }
                    if !alive {
                        dead.push(token);
                    }
                    for t in dead {
                        conns.remove(&t);
                    }
                }
            }
        }
    }
    Ok(())
}
