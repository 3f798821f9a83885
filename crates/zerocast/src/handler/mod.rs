//! The application side: the [`Handler`] the engine calls, with the state it keeps per worker
//! and per session, the borrowed [`Frame`] it passes, and how a worker hosts a handler.

mod api;
mod frame;
mod host;

pub use api::{Context, Handler, Mail, Start, Tick};
pub use frame::Frame;
pub(crate) use host::{host, HostFactory, Hosted};
