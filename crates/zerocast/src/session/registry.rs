//! Every open session of an engine, by id.

use std::collections::HashMap;

use super::handle::Session;
use super::shared::SessionId;
use crate::buffer::SendBuffer;
use crate::sync::{lock, Mutex};

const SHARDS: usize = 16;

/// Open sessions by id. Sharded so that workers adding and removing sessions on connect and
/// disconnect rarely contend. A session is added right after its `on_connect` returns and
/// removed right after its `on_disconnect` returns.
pub struct Registry {
    shards: [Mutex<HashMap<SessionId, Session>>; SHARDS],
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn shard(&self, id: SessionId) -> &Mutex<HashMap<SessionId, Session>> {
        &self.shards[(id.get() as usize) % SHARDS]
    }

    pub(crate) fn insert(&self, session: Session) {
        lock(self.shard(session.id())).insert(session.id(), session);
    }

    pub(crate) fn remove(&self, id: SessionId) -> Option<Session> {
        lock(self.shard(id)).remove(&id)
    }

    /// The session with this id, if open.
    pub fn get(&self, id: SessionId) -> Option<Session> {
        lock(self.shard(id)).get(&id).cloned()
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True if no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` for every open session. Shards are locked one at a time; `f` must not add or
    /// remove sessions (sending is fine).
    pub fn for_each(&self, mut f: impl FnMut(&Session)) {
        for shard in &self.shards {
            for s in lock(shard).values() {
                f(s);
            }
        }
    }

    /// Queues `buf` on every open session (see [`Group::broadcast`](crate::Group::broadcast)
    /// for what it costs). Returns how many sessions took it.
    pub fn broadcast(&self, buf: &SendBuffer) -> usize {
        self.shards
            .iter()
            .map(|shard| super::local::broadcast(lock(shard).values().map(|s| &s.shared), buf))
            .sum()
    }
}
