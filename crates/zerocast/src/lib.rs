//! zerocast: a zero-copy networking engine for MMO game servers.
//!
//! Two rules from the classic C++ IOCP/epoll game-server core: **don't copy data, refer to
//! it**, and **don't block, wait for events**.
//!
//! - Workers: one thread per core, each with its own io_uring instance or edge-triggered epoll
//!   instance ([`Backend`]); a session lives on one worker.
//! - Receive: sockets are read straight into a worker's pooled chunk, frames are parsed in
//!   place and handlers get borrowed [`Frame`] views; relaying a frame shares its memory.
//! - Send: a [`SendBuffer`] is encoded once and queued on any number of sessions by reference;
//!   each session has exactly one send in flight, gathering everything queued into one
//!   vectored write.
//!
//! ```no_run
//! use zerocast::{Engine, Frame, Handler, SendBuffer, Session};
//!
//! /// Echoes every frame back, without copying it.
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn on_frame(&self, session: &Session, frame: Frame<'_>) {
//!         let _ = session.send(SendBuffer::from(frame.frame_bytes()));
//!     }
//! }
//!
//! let engine = Engine::builder().workers(2).build(Echo)?;
//! let addr = engine.listen("127.0.0.1:7000".parse().unwrap())?;
//! println!("listening on {addr}");
//! # Ok::<(), std::io::Error>(())
//! ```
#![cfg(target_os = "linux")]
#![warn(missing_docs)]

pub mod aoi;
pub mod buffer;
mod driver;
mod engine;
pub mod frame;
mod group;
mod handler;
pub mod lockorder;
pub mod metrics;
pub mod packet;
pub mod servers;
mod session;
mod sync;
mod sys;
pub mod world;

pub use buffer::SendBuffer;
pub use engine::{Backend, Builder, Config, Engine};
pub use group::Group;
pub use handler::{Frame, Handler};
pub use metrics::Snapshot;
pub use session::{CloseReason, Closed, Registry, Session, SessionId};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
