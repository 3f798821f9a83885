//! Linux: the socket type, the worker wake-up eventfd, CPU pinning, and what io_uring probe
//! errors mean.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Several sockets may listen on one port, the kernel spreading connections over them.
pub(crate) const REUSE_PORT: bool = true;

/// OS errors that mean the process ran out of descriptors or memory.
pub(crate) const OUT_OF_RESOURCES: [i32; 4] =
    [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];

/// A socket as the engine holds it.
pub(crate) type Sock = OwnedFd;

/// Wraps a descriptor the kernel just returned.
pub(super) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful syscall that creates a descriptor; nobody
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A worker's wake-up: a non-blocking, close-on-exec eventfd that any thread can signal and
/// the worker's backend waits on (epoll watches it; io_uring polls it).
#[derive(Clone)]
pub(crate) struct EventFd(std::sync::Arc<OwnedFd>);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .map(|fd| Self(std::sync::Arc::new(owned(fd))))
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Adds one to the counter (wakes a waiter).
    pub(crate) fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local u64, as eventfd requires.
        syscall!(write(
            self.raw(),
            (&one as *const u64).cast(),
            std::mem::size_of::<u64>()
        ))
        .map(drop)
    }

    /// Resets the counter (EAGAIN when it was already zero is fine).
    pub(crate) fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local u64.
        let _ = syscall!(read(
            self.raw(),
            (&mut value as *mut u64).cast(),
            std::mem::size_of::<u64>()
        ));
    }

    /// A closure that signals it, for the worker's inbox.
    pub(crate) fn waker(&self) -> std::sync::Arc<dyn Fn() + Send + Sync> {
        let me = self.clone();
        std::sync::Arc::new(move || {
            if let Err(e) = me.signal() {
                tracing::error!(error = %e, "cannot wake worker");
            }
        })
    }
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu index too large",
        ));
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes a live cpu_set_t and its size; pid 0 is the calling thread.
    syscall!(sched_setaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &set
    ))
    .map(drop)
}

/// What an io_uring probe error usually means, for the operator reading the log.
pub(crate) fn why_no_uring(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "{e}: the kernel.io_uring_disabled sysctl or a seccomp profile (as in containers) \
             forbids io_uring"
        ),
        Some(libc::ENOSYS) => format!("{e}: this kernel has no io_uring"),
        Some(libc::ENOMEM) => format!("{e}: locked memory limit too low for the rings"),
        _ => e.to_string(),
    }
}
