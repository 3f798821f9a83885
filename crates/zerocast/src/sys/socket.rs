//! Socket calls (Linux): receiving into spare capacity, gathered sends, accepting, and the
//! options the engine sets. Options go through `socket2` ([`super::opts`]) except the one it
//! lacks.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};

use bytes::{BufMut, BytesMut};

pub(crate) use super::opts::*;
use super::owned;

/// Most pieces one gathered send takes (Linux `UIO_MAXIOV`).
pub(crate) const IOV_MAX: usize = 1024;

/// One piece of a gathered send: the kernel's `iovec`. Built from a pointer and a length; only
/// [`sendmsg`] (unsafe) and the io_uring submission (unsafe) hand it to the kernel.
pub(crate) type RawSlice = libc::iovec;

/// A piece for `len` bytes at `ptr`.
#[inline]
pub(crate) fn raw_slice(ptr: *const u8, len: usize) -> RawSlice {
    libc::iovec {
        iov_base: ptr.cast_mut().cast(),
        iov_len: len,
    }
}

/// A piece's address and length.
#[cfg(test)]
pub(crate) fn slice_parts(s: &RawSlice) -> (*const u8, usize) {
    (s.iov_base.cast_const().cast(), s.iov_len)
}

/// The `msghdr` of an io_uring `sendmsg`, kept with its write so that its address is stable
/// while the kernel reads it.
pub(crate) struct MsgHdr(pub(crate) libc::msghdr);

impl Default for MsgHdr {
    fn default() -> Self {
        // SAFETY: msghdr is plain data; all-zero is its valid empty value (no name, no
        // control data, no iovecs).
        Self(unsafe { MaybeUninit::zeroed().assume_init() })
    }
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

/// Gathers `iov` into one `sendmsg`, without blocking and without raising SIGPIPE.
///
/// # Safety
/// Every piece must point to memory valid for reads of its length for the duration of the
/// call.
pub(crate) unsafe fn sendmsg(fd: RawFd, iov: &[RawSlice]) -> io::Result<usize> {
    if let [one] = iov {
        // One piece (small output corked whole): a plain `send` spares the kernel copying
        // and checking a `msghdr` and an iovec array.
        // SAFETY: the caller guarantees the piece readable for its length; the kernel only
        // reads it.
        let n = syscall!(send(
            fd,
            one.iov_base.cast_const(),
            one.iov_len,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
        ))?;
        return Ok(n as usize);
    }
    // SAFETY: msghdr is plain data; all-zero is its valid empty value.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len().min(IOV_MAX) as _;
    // SAFETY: `msg` points to `iov`, whose pieces the caller guarantees readable; the kernel
    // only reads through them.
    let n = syscall!(sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT))?;
    Ok(n as usize)
}

/// Accepts one connection, non-blocking and close-on-exec from birth.
pub(crate) fn accept(listener: RawFd) -> io::Result<(OwnedFd, SocketAddr)> {
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

/// Defers choosing the local port of a socket bound to an address with port 0 until
/// `connect`, so the port only has to be unique for the whole 4-tuple: without it `bind`
/// reserves a port per source address for any destination, and ports left in TIME_WAIT by
/// earlier runs are not reused. Hand-written because `socket2` has no setter for
/// `IP_BIND_ADDRESS_NO_PORT`.
pub(crate) fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: passes a live c_int and its size.
    syscall!(setsockopt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        (&one as *const libc::c_int).cast(),
        std::mem::size_of::<libc::c_int>() as libc::socklen_t
    ))
    .map(drop)
}
