//! The provided-buffer ring: receive memory the kernel picks from only when data arrives, so an
//! idle connection holds none.
//!
//! # Ownership
//! Each buffer is the memory of one `Bytes` the ring keeps for its whole life (`held[bid]`),
//! and is, at any time, either *in the ring* (the kernel may write into it; nothing else looks
//! at it) or *lent*: the kernel handed it over in a receive completion, and the frames cut from
//! it are views (clones) of the held `Bytes`, on any thread. A lent buffer goes back into the
//! ring once the held handle is unique again: every view has dropped, so nobody can read the
//! memory the kernel is about to overwrite. Handing out a view is a reference-count increment:
//! no allocation per receive.

use std::io;

use bytes::Bytes;
use io_uring::types::BufRingEntry;

/// The buffer group id of the worker's ring.
pub(crate) const BGID: u16 = 0;

/// The ring of buffer descriptors shared with the kernel, and its buffers.
///
/// Invariant: every buffer id is either in the ring (between the kernel's head and `tail`) or
/// in `lent`, never both.
pub(crate) struct BufRing {
    entries: *mut BufRingEntry,
    ring_layout: std::alloc::Layout,
    count: u16,
    tail: u16,
    held: Vec<Bytes>,
    lent: Vec<u16>,
    /// Where the next `recycle` starts looking in `lent`.
    cursor: usize,
    scratch: Vec<usize>,
}

/// Lent buffers `recycle` looks at per call.
const SCAN: usize = 256;

// SAFETY: the descriptor ring is private memory shared only with the kernel, written only by
// the thread that owns this `BufRing` (a `Ring` is built on its worker's thread and stays
// there).
unsafe impl Send for BufRing {}

impl BufRing {
    /// `count` buffers (a power of two, at most 32,768) of `size` bytes each, registered with
    /// `ring` as group [`BGID`], all in the ring.
    pub(crate) fn new(ring: &io_uring::IoUring, count: u16, size: usize) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32_768 || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let ring_layout = std::alloc::Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let held = (0..count)
            .map(|_| {
                let b = Bytes::from(vec![0u8; size]);
                // A first clone makes the handle reference-counted once and for all: later
                // views are count increments, and `is_unique` tells when they are gone.
                drop(b.clone());
                b
            })
            .collect();
        let mut me = Self {
            entries,
            ring_layout,
            count,
            tail: 0,
            held,
            lent: Vec::new(),
            cursor: 0,
            scratch: Vec::new(),
        };
        // SAFETY: `entries` is page aligned and `count` entries long, and stays allocated until
        // `Drop`, which runs after the io_uring instance is gone: the only owner of a `BufRing`
        // is a `Ring` (super), whose ring field is declared, and so dropped, before it.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, BGID, 0)?;
        }
        for bid in 0..count {
            me.push(bid);
        }
        me.publish();
        Ok(me)
    }

    /// Writes buffer `bid`'s descriptor at the local tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        let buf = &self.held[usize::from(bid)];
        // SAFETY: `slot < count`; the kernel reads descriptors only up to the published tail,
        // and this slot is past it.
        let e = unsafe { &mut *self.entries.add(slot) };
        e.set_addr(buf.as_ptr() as u64);
        e.set_len(buf.len() as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed descriptors visible to the kernel.
    fn publish(&self) {
        // SAFETY: the ring base is page aligned, as `tail` requires. The tail field overlays the
        // first descriptor's reserved field and is written only here, with release order, so
        // the kernel sees the descriptors before the tail that covers them.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(tail)
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// Puts lent buffers whose views have all dropped back in the ring. Returns how many.
    ///
    /// Looks at no more than [`SCAN`] lent buffers per call, continuing where the last call
    /// stopped: a fan-out keeps thousands of buffers lent for a while, and checking every one
    /// on every loop turn cost more than the fan-out itself. When receives wait for buffers
    /// (`wanted` of them), it looks at every lent buffer: then returning them fast is the point
    /// (10,000 sessions reset at once drained at 256 a turn took minutes in a debug build).
    pub(crate) fn recycle(&mut self, wanted: usize) -> usize {
        let n = self.lent.len();
        if n == 0 {
            return 0;
        }
        let window = if wanted > 0 { n } else { n.min(SCAN) };
        let start = self.cursor % n;
        let mut free = std::mem::take(&mut self.scratch);
        for j in 0..window {
            let i = (start + j) % n;
            // Acquire (inside `is_unique`): every read through a dropped view happened before.
            if self.held[usize::from(self.lent[i])].is_unique() {
                free.push(i);
            }
        }
        self.cursor = start + window;
        // Highest index first: `swap_remove` then never moves an index still to be removed.
        free.sort_unstable_by(|a, b| b.cmp(a));
        let back = free.len();
        for &i in &free {
            let bid = self.lent.swap_remove(i);
            self.push(bid);
        }
        free.clear();
        self.scratch = free;
        if back > 0 {
            self.publish();
        }
        back
    }

    /// Takes buffer `bid`, into which the kernel received `len` bytes: a view of it.
    pub(crate) fn take(&mut self, bid: u16, len: usize) -> Bytes {
        let held = &self.held[usize::from(bid)];
        self.lent.push(bid);
        held.slice(..len.min(held.len()))
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the io_uring instance that read it is
        // gone (`Ring` drops its ring before its buffer ring).
        unsafe { std::alloc::dealloc(self.entries.cast(), self.ring_layout) }
    }
}
