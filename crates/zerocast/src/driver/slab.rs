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

/// Invariant: `values` and `generations` have the same length (kept apart so that a slot
/// costs its value plus four bytes, not a value's worth of padding); an index is in `free`
/// iff its value is `None`.
pub(crate) struct Slab<T> {
    values: Vec<Option<T>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Self {
            values: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    fn token(&self, index: usize) -> u64 {
        (u64::from(self.generations[index]) << 32) | index as u64
    }

    /// Stores `value` built from its token; returns the token.
    pub(crate) fn insert_with(&mut self, f: impl FnOnce(u64) -> T) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.values.push(None);
                self.generations.push(0);
                self.values.len() - 1
            }
        };
        let token = self.token(index);
        debug_assert!(token < RESERVED);
        self.values[index] = Some(f(token));
        self.len += 1;
        token
    }

    fn locate(&self, token: u64) -> Option<usize> {
        let index = (token & 0xffff_ffff) as usize;
        let generation = *self.generations.get(index)?;
        (u64::from(generation) == token >> 32 && self.values[index].is_some()).then_some(index)
    }

    pub(crate) fn get(&self, token: u64) -> Option<&T> {
        let i = self.locate(token)?;
        self.values[i].as_ref()
    }

    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let i = self.locate(token)?;
        self.values[i].as_mut()
    }

    pub(crate) fn remove(&mut self, token: u64) -> Option<T> {
        let i = self.locate(token)?;
        // Skip generations that would put the token in the reserved range.
        self.generations[i] = (self.generations[i] + 1) % (1 << 24);
        self.free.push(i as u32);
        self.len -= 1;
        self.values[i].take()
    }

    /// The token of the value in slot `index`, if there is one.
    pub(crate) fn token_at(&self, index: u32) -> Option<u64> {
        let i = index as usize;
        self.values.get(i)?.as_ref().map(|_| self.token(i))
    }

    /// Every live value with its token.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        let generations = &self.generations;
        self.values
            .iter_mut()
            .enumerate()
            .filter_map(move |(i, v)| {
                let token = (u64::from(generations[i]) << 32) | i as u64;
                v.as_mut().map(|v| (token, v))
            })
    }

    /// Every live token.
    pub(crate) fn tokens(&self) -> Vec<u64> {
        (0..self.values.len())
            .filter(|&i| self.values[i].is_some())
            .map(|i| self.token(i))
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
