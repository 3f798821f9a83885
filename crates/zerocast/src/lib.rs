//! zerocast: a zero-copy networking engine for MMO game servers.
//!
//! Two rules from the classic C++ IOCP/epoll game-server core: **don't copy data, refer to
//! it**, and **don't block, wait for events**.
//!
//! - Workers: one thread per core, each with its own event loop ([`Backend`]): edge-triggered
//!   epoll or io_uring on Linux, an I/O completion port on Windows; a session lives on one worker, and a [`Handler`] keeps state per
//!   worker and per session there, without locks.
//! - Receive: sockets are read straight into shared memory, frames are parsed in place and
//!   handlers get borrowed [`Frame`] views; relaying a frame shares its memory.
//! - Send: a [`SendBuffer`] is encoded once and queued on any number of sessions; a worker
//!   writes each session once per turn, its small messages corked into one contiguous write.
//!
//! ```no_run
//! use zerocast::{Context, Engine, Frame, Handler, SendBuffer};
//!
//! /// Echoes every frame back, without copying it.
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Worker = ();
//!     type Session = ();
//!
//!     fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
//!         let _ = cx.session.send(SendBuffer::from(frame.frame_bytes()));
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let engine = Engine::builder().workers(2).build(Echo)?;
//!     let addr = engine.listen("127.0.0.1:7000".parse().unwrap())?;
//!     println!("listening on {addr}");
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//! Imports flow one way: [`sys`](self) (every OS call) ← [`buffer`], [`frame`], [`packet`] ←
//! `conn` (sans-IO connection state) ← `session` ← `driver` (the worker core and its
//! backends) ← `engine` ← applications. docs/DESIGN.md draws it.
#![cfg(any(target_os = "linux", windows))]
#![warn(missing_docs)]
// The datagram channel and the readiness read path are Linux's (recvmmsg/sendmmsg, epoll):
// on Windows their shared parts are compiled but not all reached.
#![cfg_attr(windows, allow(dead_code))]

pub mod buffer;
mod config;
mod conn;
pub mod datagram;
mod driver;
mod engine;
pub mod frame;
mod group;
mod handler;
pub mod metrics;
pub mod numa;
pub mod packet;
mod session;
mod sync;
mod sys;
pub mod ws;

pub use buffer::SendBuffer;
pub use config::{Backend, Numa, Transport};
#[doc(hidden)]
pub use conn::ws::fuzz_transport;
pub use engine::{Builder, Engine};
pub use group::Group;
pub use handler::{Context, Frame, Handler, Mail, Start, Tick};
pub use metrics::Snapshot;
pub use session::{CloseReason, Fanout, Refused, Registry, SendError, Session, SessionId};
