//! Sessions: the handle applications hold for one connection, how sends reach its worker, and
//! why it ends.
//!
//! A send takes one of three paths, chosen by the thread it is made on:
//! - on the worker that owns the session (a handler, a tick): straight into the worker's
//!   output ([`local`]), no lock and no atomic operation;
//! - on another engine worker: into that worker's batch for the owner, posted once per turn;
//! - on any other thread: into the session's own queue ([`queue`]), the owner woken once per
//!   batch.
//!
//! Every sender always takes the same path to a given session, so what one sender sends
//! arrives in the order it was sent.
//!
//! Layering inside: [`shared`] (identity, bookkeeping, how to reach the owner) ← [`local`]
//! (the worker's output) ← [`handle`] (the public [`Session`]); this file only re-exports.

mod fanout;
mod handle;
mod local;
pub(crate) mod queue;
mod reason;
mod registry;
mod shared;

pub use fanout::Fanout;
pub use handle::Session;
pub(crate) use local::{broadcast, enter, for_outbox};
pub use reason::CloseReason;
pub use registry::Registry;
pub(crate) use shared::{Batch, Membership, Notice, Owner, SessionShared};
pub use shared::{Refused, SendError, SessionId};
