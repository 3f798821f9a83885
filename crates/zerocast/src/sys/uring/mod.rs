//! io_uring: one ring per worker, its submissions, and the provided-buffer ring the kernel
//! receives into.
//!
//! [`Ring`] owns the `io_uring` instance and the [`BufRing`] registered with it, in that field
//! order, so the kernel is done with the buffer descriptors before their memory is freed.
//! Submissions whose memory the kernel only *writes* are safe methods: a receive writes into
//! the registered buffer ring (argued once, at registration), an accept and a poll write
//! nothing of ours. A send *reads* caller memory until its completion arrives, so
//! [`Ring::send_msg`] is `unsafe`, with the condition in its `# Safety` section.

mod bufring;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use bufring::BufRing;
pub(crate) use bufring::BGID;

/// A completion: user data, result, flags.
pub(crate) type Completion = (u64, i32, u32);

/// A worker's ring and its receive buffers.
pub(crate) struct Ring {
    // Dropped first: the kernel stops using the buffer ring before its memory is freed.
    ring: IoUring,
    bufs: BufRing,
}

impl Ring {
    /// A ring with `entries` submission slots (the completion queue four times larger) and
    /// `buffers` provided buffers of `size` bytes each.
    pub(crate) fn new(entries: u32, buffers: u16, size: usize) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_coop_taskrun()
            .build(entries)?;
        let bufs = BufRing::new(&ring, buffers, size)?;
        Ok(Self { ring, bufs })
    }

    /// Whether this kernel lets us use every io_uring feature the backend needs. The error
    /// says why not.
    pub(crate) fn probe() -> io::Result<()> {
        // On a thread of its own: tearing an io_uring instance down can interrupt a blocking
        // system call of the thread that owned it (EINTR), which is none of the caller's
        // business.
        std::thread::spawn(|| {
            let ring = IoUring::new(8)?;
            let mut p = io_uring::Probe::new();
            ring.submitter().register_probe(&mut p)?;
            for (code, name) in [
                (opcode::AcceptMulti::CODE, "accept"),
                (opcode::RecvMulti::CODE, "recv"),
                (opcode::SendMsg::CODE, "sendmsg"),
                (opcode::PollAdd::CODE, "poll"),
                (opcode::AsyncCancel2::CODE, "cancel"),
            ] {
                if !p.is_supported(code) {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("io_uring lacks {name}"),
                    ));
                }
            }
            // Buffer rings (5.19) and multishot receive (6.0): registering a small ring proves
            // the first and, on kernels that have it, the second came with it.
            BufRing::new(&ring, 8, 64).map(drop)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("io_uring probe panicked")))
    }

    /// Queues an entry; when the submission queue is full, submits it first.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid, as the entry's operation requires, until its
    /// final completion arrives.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: the caller vouches for the entry's memory.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "io_uring submit failed");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// A multishot poll for readability of `fd` (the worker's eventfd).
    pub(crate) fn poll_multi(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data);
        // SAFETY: a poll carries no pointer; the kernel holds its own reference to the file.
        unsafe { self.push(e) }
    }

    /// A multishot accept on the listener `fd`; each completion's result is a new descriptor.
    pub(crate) fn accept_multi(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        // SAFETY: no address buffer is passed; the kernel writes nothing of ours.
        unsafe { self.push(e) }
    }

    /// A multishot receive on `fd` into the provided-buffer ring.
    pub(crate) fn recv_multi(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(user_data);
        // SAFETY: the kernel writes only into buffers of the registered ring, which this
        // `Ring` keeps alive for as long as the ring instance exists.
        unsafe { self.push(e) }
    }

    /// A `sendmsg` of `msg` on `fd`.
    ///
    /// # Safety
    /// `msg`, the iovec array it points to and every byte those iovecs cover must stay valid
    /// and unmodified until this operation's completion arrives, including when it is
    /// cancelled.
    pub(crate) unsafe fn send_msg(&mut self, fd: RawFd, msg: *const libc::msghdr, user_data: u64) {
        let e = opcode::SendMsg::new(types::Fd(fd), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data);
        // SAFETY: the caller vouches for `msg` and what it points to.
        unsafe { self.push(e) }
    }

    /// Asks the kernel to cancel every operation with `target` as its user data; their
    /// completions (`ECANCELED`, or a result that beat the cancel) still arrive. The cancel's
    /// own completion carries `user_data`.
    pub(crate) fn cancel(&mut self, target: u64, user_data: u64) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(target).all())
            .build()
            .user_data(user_data);
        // SAFETY: a cancel request carries no pointer.
        unsafe { self.push(e) }
    }

    /// Submits what is queued; with `wait`, also waits up to that long for one completion.
    pub(crate) fn submit(&mut self, wait: Option<Duration>) -> io::Result<()> {
        let r = match wait {
            None => self.ring.submit(),
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves up to `max` completions to the back of `out`.
    pub(crate) fn completions(&mut self, out: &mut VecDeque<Completion>, max: usize) {
        out.extend(
            self.ring
                .completion()
                .take(max)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }

    /// The received bytes of a receive completion that carried a buffer: a view of the
    /// provided buffer (it returns to the ring once every view has dropped).
    pub(crate) fn take_buffer(&mut self, flags: u32, len: usize) -> Option<Bytes> {
        cqueue::buffer_select(flags).map(|bid| self.bufs.take(bid, len))
    }

    /// Puts provided buffers whose views have all dropped back in the ring; returns how many.
    /// `wanted`: receives waiting for a buffer (then every lent buffer is looked at).
    pub(crate) fn recycle(&mut self, wanted: usize) -> usize {
        self.bufs.recycle(wanted)
    }
}

/// Whether more completions of a multishot operation will follow this one.
pub(crate) fn more(flags: u32) -> bool {
    cqueue::more(flags)
}
