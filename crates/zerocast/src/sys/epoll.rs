//! epoll, edge-triggered, waiting with nanosecond precision.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

/// Set once `epoll_pwait2` answered `ENOSYS` (kernels before 5.11): waits then round their
/// timeout up to whole milliseconds.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

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

    /// Waits up to `timeout` (`None`: until an event) and fills `events` (cleared first, up to
    /// its capacity). EINTR counts as a wake-up with no events.
    pub(crate) fn wait(
        &self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        events.clear();
        let cap = events.capacity().min(i32::MAX as usize) as i32;
        let n = if NO_PWAIT2.load(Ordering::Relaxed) {
            self.wait_ms(events, cap, timeout)
        } else {
            let ts = timeout.map(|d| libc::timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: libc::c_long::from(d.subsec_nanos()),
            });
            let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
            // SAFETY: the kernel writes at most `cap` events into the vector's spare capacity;
            // `tsp` is null or points to a live timespec; no signal mask is passed.
            match syscall!(epoll_pwait2(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                cap,
                tsp,
                std::ptr::null()
            )) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    NO_PWAIT2.store(true, Ordering::Relaxed);
                    self.wait_ms(events, cap, timeout)
                }
                other => other,
            }
        };
        match n {
            Ok(n) => {
                // SAFETY: the kernel initialised the first `n <= cap` events.
                unsafe { events.set_len(n as usize) };
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `epoll_wait` with the timeout rounded up to milliseconds.
    fn wait_ms(
        &self,
        events: &mut Vec<Event>,
        cap: i32,
        timeout: Option<Duration>,
    ) -> io::Result<i32> {
        let ms = timeout.map_or(-1, |d| {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as i32
        });
        // SAFETY: the kernel writes at most `cap` (the vector's capacity) events into the
        // vector's spare capacity.
        syscall!(epoll_wait(
            self.fd.as_raw_fd(),
            events.as_mut_ptr(),
            cap,
            ms
        ))
    }
}
