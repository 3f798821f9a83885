//! Groups: named sets of sessions that receive the same broadcasts (a room, a guild, a zone).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::buffer::SendBuffer;
use crate::session::{broadcast, Membership, Session, SessionId};

/// A group's members; sessions keep a weak reference to them, so that closing removes them.
#[derive(Default)]
struct Members(RwLock<HashMap<SessionId, Session>>);

impl Membership for Members {
    fn leave(&self, id: SessionId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// A set of sessions. Broadcasting queues the same [`SendBuffer`] on each member: one encode,
/// no copy; for the members served by the calling worker (a handler or tick broadcasting to
/// its own sessions), no reference count and no lock per member either.
///
/// A session that closes leaves every group it was in, before its
/// [`Handler::on_disconnect`](crate::Handler::on_disconnect) runs.
#[derive(Default)]
pub struct Group {
    members: Arc<Members>,
}

impl Group {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a session. Returns false if it was already a member, or is closed.
    pub fn insert(&self, session: Session) -> bool {
        if session.is_closing() {
            return false;
        }
        let added = {
            let mut m = self.members.0.write().unwrap_or_else(|p| p.into_inner());
            m.insert(session.id(), session.clone()).is_none()
        };
        if added {
            let weak: std::sync::Weak<dyn Membership> = Arc::downgrade(&self.members) as _;
            session.shared.joined(weak);
        }
        added
    }

    /// Removes a session. Returns false if it was not a member.
    pub fn remove(&self, id: SessionId) -> bool {
        let mut m = self.members.0.write().unwrap_or_else(|p| p.into_inner());
        m.remove(&id).is_some()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// True if the group has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: SessionId) -> bool {
        let m = self.members.0.read().unwrap_or_else(|p| p.into_inner());
        m.contains_key(&id)
    }

    /// Queues `buf` on every member. Returns how many members took it.
    pub fn broadcast(&self, buf: &SendBuffer) -> usize {
        let m = self.members.0.read().unwrap_or_else(|p| p.into_inner());
        broadcast(m.values().map(|s| &s.shared), buf)
    }
}
