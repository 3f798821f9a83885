//! What a completion backend (io_uring, IOCP) keeps per connection besides its operations'
//! records: which operations are in flight, whether the core paused or closed it, and the
//! generation of the token its slot serves; one word.
//!
//! The rule both backends follow with it (operation lifetime): a connection's socket and the
//! memory its operations use are released only once it is [`CLOSED`] with no operation in
//! flight ([`OpState::releasable`]).

/// A receive is posted: the OS may write into its memory.
pub(super) const RECV_ARMED: u32 = 1 << 24;
/// A send is in flight: the OS reads the core's `WriteBuf`.
pub(super) const SEND_IN_FLIGHT: u32 = 1 << 25;
/// Receiving stopped (the peer half-closed, a farewell, shutdown).
pub(super) const PAUSED: u32 = 1 << 26;
/// The core closed the token: what is in flight is being cancelled.
pub(super) const CLOSED: u32 = 1 << 27;
/// The generation of the token (below 2^24, see [`super::slab`]) in the low bits.
const GENERATION: u32 = (1 << 24) - 1;

/// Invariant: the flags above in the high bits, the token's generation in the low 24.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(super) struct OpState(u32);

impl OpState {
    pub(super) fn new(generation: u32) -> Self {
        Self(generation & GENERATION)
    }

    pub(super) fn generation(self) -> u32 {
        self.0 & GENERATION
    }

    pub(super) fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    pub(super) fn set(&mut self, flag: u32, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }

    /// A receive or a send is in flight.
    pub(super) fn busy(self) -> bool {
        self.has(RECV_ARMED) || self.has(SEND_IN_FLIGHT)
    }

    /// Closed, with nothing in flight: the token may be released.
    pub(super) fn releasable(self) -> bool {
        self.has(CLOSED) && !self.busy()
    }

    /// A receive may be posted: none is, and the connection is neither paused nor closed.
    pub(super) fn may_receive(self) -> bool {
        !self.has(RECV_ARMED) && !self.has(CLOSED) && !self.has(PAUSED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_generation_share_one_word() {
        let mut s = OpState::new(0x00ab_cdef);
        assert_eq!(s.generation(), 0x00ab_cdef);
        assert!(s.may_receive() && !s.busy() && !s.releasable());
        s.set(RECV_ARMED, true);
        s.set(CLOSED, true);
        assert!(s.busy() && !s.releasable() && !s.may_receive());
        s.set(RECV_ARMED, false);
        assert!(s.releasable());
        assert_eq!(s.generation(), 0x00ab_cdef);
    }
}
