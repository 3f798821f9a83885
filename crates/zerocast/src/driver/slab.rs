//! Connection slots addressed by tokens (epoll event data, io_uring user data).
//!
//! A token is `generation << 32 | index`. A slot's generation changes every time it is freed,
//! so an event or command still carrying the token of a closed session finds nothing instead
//! of a newer session in the same slot. Generations wrap below 2^24, so a token stays below
//! 2^56 and the io_uring backend keeps the operation kind in the top byte of its user data.

/// The slot index of a token.
pub(crate) fn slot_of(token: u64) -> u32 {
    (token & 0xffff_ffff) as u32
}

/// The generation of a token.
pub(crate) fn generation_of(token: u64) -> u32 {
    (token >> 32) as u32
}

/// Tokens at or above this value are reserved for the worker's own descriptors.
pub(crate) const RESERVED: u64 = u64::MAX - 1024;

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Stores `value` built from its token; returns the token.
    pub(crate) fn insert_with(&mut self, f: impl FnOnce(u64) -> T) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        let token = (u64::from(slot.generation) << 32) | u64::from(index);
        debug_assert!(token < RESERVED);
        slot.value = Some(f(token));
        self.len += 1;
        token
    }

    fn locate(&self, token: u64) -> Option<usize> {
        let index = (token & 0xffff_ffff) as usize;
        let slot = self.slots.get(index)?;
        (u64::from(slot.generation) == token >> 32 && slot.value.is_some()).then_some(index)
    }

    pub(crate) fn get(&self, token: u64) -> Option<&T> {
        let i = self.locate(token)?;
        self.slots[i].value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let i = self.locate(token)?;
        self.slots[i].value.as_mut()
    }

    pub(crate) fn remove(&mut self, token: u64) -> Option<T> {
        let i = self.locate(token)?;
        let slot = &mut self.slots[i];
        // Skip generations that would put the token in the reserved range.
        slot.generation = (slot.generation + 1) % (1 << 24);
        self.free.push(i as u32);
        self.len -= 1;
        slot.value.take()
    }

    /// The token of the value in slot `index`, if there is one.
    pub(crate) fn token_at(&self, index: u32) -> Option<u64> {
        let s = self.slots.get(index as usize)?;
        s.value
            .is_some()
            .then(|| (u64::from(s.generation) << 32) | u64::from(index))
    }

    /// Every live value with its token.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| {
            let token = (u64::from(s.generation) << 32) | i as u64;
            s.value.as_mut().map(|v| (token, v))
        })
    }

    /// Every live token.
    pub(crate) fn tokens(&self) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, s)| (u64::from(s.generation) << 32) | i as u64)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tokens_find_nothing() {
        let mut slab = Slab::new();
        let a = slab.insert_with(|_| "a");
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert_with(|_| "b");
        assert_ne!(a, b, "same slot, new generation");
        assert!(slab.get_mut(a).is_none());
        assert_eq!(slab.get_mut(b), Some(&mut "b"));
        assert_eq!(slab.tokens(), vec![b]);
    }
}
