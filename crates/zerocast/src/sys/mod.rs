//! Every system call and unsafe OS interaction of the engine (Linux only).
//!
//! Each wrapper owns its `unsafe` and argues it in a `// SAFETY:` comment; callers above this
//! module never see a raw pointer handed to the kernel.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use bytes::{BufMut, BytesMut};

/// Calls a libc function returning `-1` on error and converts that to `io::Error`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of the macro argues the arguments' validity at the call site.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

pub(crate) mod epoll;

/// Most iovecs one `sendmsg` takes (Linux `UIO_MAXIOV`).
pub(crate) const IOV_MAX: usize = 1024;

/// Scratch space for the iovecs of one gathered write, reused across writes.
///
/// Invariant: empty except during one [`IoVecs::start`] borrow, so the raw pointers it holds
/// never outlive the buffers they point into nor leave the thread that built them.
pub(crate) struct IoVecs(Vec<libc::iovec>);

// SAFETY: between uses the vector is empty (see the invariant), so moving it to another thread
// moves no pointer; only its allocation travels.
unsafe impl Send for IoVecs {}

impl IoVecs {
    pub(crate) fn new() -> Self {
        Self(Vec::with_capacity(IOV_MAX))
    }

    /// The cleared vector, for one write.
    pub(crate) fn start(&mut self) -> &mut Vec<libc::iovec> {
        self.0.clear();
        &mut self.0
    }
}

/// Wraps a descriptor the kernel just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful syscall that creates a descriptor; nobody
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A non-blocking, close-on-exec eventfd used to wake a worker.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)).map(owned)
}

/// Adds one to an eventfd counter.
pub(crate) fn eventfd_signal(fd: &OwnedFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64, as eventfd requires.
    syscall!(write(
        fd.as_raw_fd(),
        (&one as *const u64).cast(),
        std::mem::size_of::<u64>()
    ))
    .map(drop)
}

/// Resets an eventfd or timerfd counter (EAGAIN when it was already zero is fine).
pub(crate) fn eventfd_drain(fd: &OwnedFd) {
    let mut value: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local u64.
    let _ = syscall!(read(
        fd.as_raw_fd(),
        (&mut value as *mut u64).cast(),
        std::mem::size_of::<u64>()
    ));
}

/// A non-blocking, close-on-exec timer that expires every `period` (CLOCK_MONOTONIC).
pub(crate) fn timerfd(period: std::time::Duration) -> io::Result<OwnedFd> {
    let fd = syscall!(timerfd_create(
        libc::CLOCK_MONOTONIC,
        libc::TFD_NONBLOCK | libc::TFD_CLOEXEC
    ))
    .map(owned)?;
    let period = libc::timespec {
        tv_sec: period.as_secs() as libc::time_t,
        // A zero `it_value` would disarm the timer: at least 1 ns.
        tv_nsec: libc::c_long::from(period.subsec_nanos().max(u32::from(period.as_secs() == 0))),
    };
    let spec = libc::itimerspec {
        it_interval: period,
        it_value: period,
    };
    // SAFETY: passes a live itimerspec; the old value is not wanted (null is allowed).
    syscall!(timerfd_settime(
        fd.as_raw_fd(),
        0,
        &spec,
        std::ptr::null_mut()
    ))?;
    Ok(fd)
}

/// Receives into the spare capacity of `buf`, at most `max` bytes, and extends `buf` by what
/// arrived. `Ok(0)` is end of stream.
pub(crate) fn recv(fd: RawFd, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    // SAFETY: `spare` is writable memory owned by `buf` of at least `len` bytes; the kernel
    // writes at most `len` bytes into it and reports how many.
    let n = syscall!(recv(fd, spare.as_mut_ptr().cast(), len, 0))?;
    let n = n as usize;
    // SAFETY: the kernel initialised the first `n <= len` bytes of the spare capacity.
    unsafe { buf.advance_mut(n) };
    Ok(n)
}

/// Gathers `iov` into one `sendmsg`. Never raises SIGPIPE (MSG_NOSIGNAL).
///
/// # Safety
/// Every iovec must point to memory valid for reads of its length for the duration of the call.
pub(crate) unsafe fn sendmsg(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is its valid empty value.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len().min(IOV_MAX) as _;
    // SAFETY: `msg` points to `iov`, whose entries the caller guarantees readable; the kernel
    // only reads through them.
    let n = syscall!(sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT))?;
    Ok(n as usize)
}

/// Accepts one connection, non-blocking and close-on-exec from birth.
pub(crate) fn accept(listener: RawFd) -> io::Result<(OwnedFd, std::net::SocketAddr)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are live locals sized as the kernel expects.
    let fd = syscall!(accept4(
        listener,
        (&mut storage as *mut libc::sockaddr_storage).cast(),
        &mut len,
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
    ))?;
    let fd = owned(fd);
    // SAFETY: the kernel filled `len` bytes of `storage` with the peer's address.
    let addr = unsafe { socket2::SockAddr::new(storage, len) };
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP socket"))?;
    Ok((fd, addr))
}

/// Sets an integer socket option.
fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a live c_int and its size.
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&value as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t
    ))
    .map(drop)
}

/// The address of a connected socket's peer.
pub(crate) fn peer_addr(fd: &OwnedFd) -> io::Result<std::net::SocketAddr> {
    socket2::SockRef::from(fd)
        .peer_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP socket"))
}

/// Puts a socket in blocking mode: io_uring then waits for readiness inside the kernel instead
/// of completing an operation with `EAGAIN`.
pub(crate) fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    socket2::SockRef::from(fd).set_nonblocking(false)
}

/// Turns Nagle's algorithm off: game traffic is small and latency-bound.
pub(crate) fn set_nodelay(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Defers choosing the local port of a socket bound to an address with port 0 until
/// `connect`, so the port only has to be unique for the whole 4-tuple: without it `bind`
/// reserves a port per source address for any destination, and ports left in TIME_WAIT by
/// earlier runs are not reused.
pub(crate) fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// Sets the kernel send buffer size (`SO_SNDBUF`; the kernel doubles it for bookkeeping and
/// stops autotuning it).
pub(crate) fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes)
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { MaybeUninit::zeroed().assume_init() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu index too large",
        ));
    }
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

/// Number of CPUs this process may run on.
pub(crate) fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
