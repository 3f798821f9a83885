//! Scale-out: one world across many processes (on one machine or many) through a NATS server.
//!
//! Each process owns the players connected to it and judges their packets; the others learn
//! what happens near their own players from the bus, by area-of-interest cell:
//!
//! ```text
//!  process A (its shards' tick)                 NATS                  process B
//!  end_tick: per cell, one message    -->  zerocast.W.cell.3.4  -->  subscribed: its players
//!  (the cell's frames, movers'                                       see cell (3,4); the
//!   positions, who left)                                             frames go to them with
//!  global chat: one message           -->  zerocast.W.global    -->  B's next tick, like its
//!  heartbeat every second, want,      -->  zerocast.W.control   -->  own shards' events
//!  bye
//! ```
//!
//! - **Subjects.** `zerocast.<world>.cell.<rx>.<ry>.<x>.<y>` per cell (its region first),
//!   `zerocast.<world>.zone.<x>.<y>` per zone, `zerocast.<world>.global`, and
//!   `zerocast.<world>.control` (heartbeats, goodbyes, and "who is in these cells?").
//! - **Per tick** a process publishes one message per cell in which its players produced
//!   events (every shard's, merged: encoded once), and global chat on one subject. Where it
//!   has events in several cells of one zone ([`ZONE`] cells wide), those go as one bundle on
//!   the zone's subject: the bus costs per message, and a process with players all over the
//!   map has events in hundreds of cells a tick. It subscribes to exactly the cells its
//!   players can see (the 3×3 around each; a whole region where it sees most of one) and to
//!   the zones those cells are in, skipping a bundle's cells it does not see; when it
//!   starts seeing a cell it asks who is there: the processes with players in it answer with
//!   their positions (so an idle player is seen by a newcomer). What arrives is handed to
//!   the shards as one more batch and delivered with their next tick: still one write per
//!   player per tick. Crossing the bus adds up to one tick and the bus's latency.
//! - **Ids.** A player's id is its process's 32-bit node id (random at start, or
//!   [`ClusterConfig::node`]) above its session id: unique across processes.
//! - **Presence.** Every process sends a heartbeat each [`ClusterConfig::heartbeat`]; one
//!   not heard from for [`ClusterConfig::timeout`] (killed, cut off) is forgotten: its
//!   players leave the others' views at their next tick. A process that shuts down says
//!   goodbye and is forgotten at once.
//! - **Faults.** The bus never stops local play. Unreachable at start or lost, it is logged
//!   once and reconnected with back-off (100 ms doubling to 5 s); meanwhile nothing is
//!   buffered toward it (counted as unsent) and remote players expire; when it returns, each
//!   process asks again who is in the cells it sees and says where its players are. Every
//!   queue toward and from the bus is bounded ([`ClusterConfig::queue`]): when full the oldest
//!   message is dropped and counted.
//! - **Ordering.** A process's messages reach another in the order they were published
//!   (one connection each, one NATS server); nothing orders two processes' events within a
//!   tick, as nothing orders two players' packets on one process.

mod bridge;
mod bus;
pub(crate) use bus::Link as BusLink;
pub mod wire;

pub use bridge::{
    node_of, region_of, zone_of, Bridge, BridgeCounts, Effect, Route, Sub, Topic, BUNDLE_FROM,
    REGION, REMOTE_SHARD, ZONE,
};
pub use bus::{BusFigures, Cluster};

use std::time::Duration;

/// How a world process joins the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The world's name: processes with the same name on the same bus are one world
    /// (letters, digits, `-` and `_`).
    pub world: String,
    /// This process's node id (the high 32 bits of its players' ids), nonzero; `None`
    /// draws one at random. Two processes with the same id would mix up their players: set
    /// it only if you number your processes yourself.
    pub node: Option<u32>,
    /// How often a process says it is alive.
    pub heartbeat: Duration,
    /// Silence after which a process's players are forgotten by the others.
    pub timeout: Duration,
    /// Longest queue of messages toward the bus, and from it, before the oldest is dropped.
    pub queue: usize,
}

impl ClusterConfig {
    /// Joins world `world` through the NATS server at `url`, with a 1 s heartbeat, a 3 s
    /// timeout and queues of 8,192 messages.
    pub fn new(url: impl Into<String>, world: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            world: world.into(),
            node: None,
            heartbeat: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            queue: 8192,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A message naming the setting that is wrong.
    pub fn check(&self) -> Result<(), String> {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.world.is_empty() || !self.world.chars().all(ok) {
            return Err(format!(
                "world name {:?}: use letters, digits, '-' and '_' only",
                self.world
            ));
        }
        if self.node == Some(0) {
            return Err("node id 0 is reserved for a world without a cluster".into());
        }
        if self.heartbeat.is_zero() || self.timeout <= self.heartbeat {
            return Err("the timeout must be longer than the (nonzero) heartbeat".into());
        }
        if self.queue == 0 {
            return Err("the queue must hold at least one message".into());
        }
        Ok(())
    }
}
