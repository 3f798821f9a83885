//! Groups: named sets of sessions that receive the same broadcasts (a room, a guild, a zone).

use std::collections::HashMap;
use std::sync::RwLock;

use crate::buffer::SendBuffer;
use crate::session::{Session, SessionId};

/// A set of sessions. Broadcasting queues one reference to the same [`SendBuffer`] on each
/// member: one encode, zero payload copies.
///
/// A group does not learn about disconnects by itself: remove members in
/// [`Handler::on_disconnect`](crate::Handler::on_disconnect). Sending to a closed member is
/// harmless (the buffer is dropped at once).
#[derive(Default)]
pub struct Group {
    members: RwLock<HashMap<SessionId, Session>>,
}

impl Group {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a session. Returns false if it was already a member.
    pub fn insert(&self, session: Session) -> bool {
        let mut m = self.members.write().unwrap_or_else(|p| p.into_inner());
        m.insert(session.id(), session).is_none()
    }

    /// Removes a session. Returns false if it was not a member.
    pub fn remove(&self, id: SessionId) -> bool {
        let mut m = self.members.write().unwrap_or_else(|p| p.into_inner());
        m.remove(&id).is_some()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True if the group has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `buf` on every member. Returns how many members took it.
    pub fn broadcast(&self, buf: &SendBuffer) -> usize {
        self.broadcast_gather(std::slice::from_ref(buf))
    }

    /// Queues `bufs` back to back on every member. Returns how many members took them.
    pub fn broadcast_gather(&self, bufs: &[SendBuffer]) -> usize {
        let m = self.members.read().unwrap_or_else(|p| p.into_inner());
        m.values()
            .map(|s| usize::from(s.send_gather(bufs).is_ok()))
            .sum()
    }
}
