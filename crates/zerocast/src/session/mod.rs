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

/// What an idle connection costs the engine, by type: the benchmark's idle row measures the
/// whole (docs/BENCHMARKS.md, at most 256 bytes of server memory per idle connection on either
/// backend); these keep each part from growing back unnoticed.
#[cfg(test)]
mod idle_footprint {
    use std::mem::size_of;

    #[test]
    fn an_idle_connection_s_parts_stay_small() {
        // Shared with handles: allocated with its reference counts (16 B) in a 112-byte
        // malloc chunk; its rarely needed parts behind one lazily set pointer.
        assert!(size_of::<super::shared::SessionShared>() <= 88);
        // The worker's connection record and its output slot (a Windows socket handle is 8
        // bytes where a Linux descriptor is 4).
        assert!(size_of::<crate::driver::ConnProbe>() <= if cfg!(windows) { 64 } else { 56 });
        assert!(size_of::<super::local::Slot>() <= 32);
        // Nothing on the heap while nothing is split or queued.
        assert_eq!(size_of::<crate::conn::recv::RecvState>(), 8);
        assert_eq!(size_of::<crate::conn::outq::OutQueue>(), 16);
    }
}
