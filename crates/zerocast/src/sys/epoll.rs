//! epoll, edge-triggered.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::owned;

/// Readable, writable, peer half-close; edge-triggered. Errors and hang-ups are always reported.
pub(crate) const CONN: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// Readable, edge-triggered (listeners, the waker).
pub(crate) const READ: u32 = (libc::EPOLLIN | libc::EPOLLET) as u32;

/// An epoll instance.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// One readiness event: the token it was registered with and the event bits.
pub(crate) type Event = libc::epoll_event;

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        syscall!(epoll_create1(libc::EPOLL_CLOEXEC)).map(|fd| Self { fd: owned(fd) })
    }

    /// Registers `fd` with `interest`; events carry `token`.
    pub(crate) fn add(&self, fd: RawFd, interest: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event; the kernel copies it.
        syscall!(epoll_ctl(
            self.fd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd,
            &mut ev
        ))
        .map(drop)
    }

    /// Waits up to `timeout_ms` (-1: forever) and fills `events` (cleared first, up to its
    /// capacity). EINTR counts as a wake-up with no events.
    pub(crate) fn wait(&self, events: &mut Vec<Event>, timeout_ms: i32) -> io::Result<()> {
        events.clear();
        let cap = events.capacity().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `cap` events into the vector's spare capacity.
        match syscall!(epoll_wait(
            self.fd.as_raw_fd(),
            events.as_mut_ptr(),
            cap,
            timeout_ms
        )) {
            Ok(n) => {
                // SAFETY: the kernel initialised the first `n <= cap` events.
                unsafe { events.set_len(n as usize) };
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}
