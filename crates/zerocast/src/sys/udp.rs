//! Datagram sockets: `recvmmsg` into pooled memory and `sendmmsg` of queued datagrams, both
//! batched and non-blocking.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use bytes::BytesMut;

/// Datagrams one `recvmmsg` takes at most.
pub(crate) const RECV_BATCH: usize = 32;
/// Room for one received datagram (anything longer is truncated, and refused as malformed).
pub(crate) const RECV_SLOT: usize = 2048;
/// Datagrams one `sendmmsg` hands the kernel at most (the kernel's own cap is 1024).
pub(crate) const SEND_BATCH: usize = 256;

/// A non-blocking UDP socket bound to `addr`.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Room for bursts while the worker is busy elsewhere in its turn.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(OwnedFd::from(s))
}

/// The address a socket is bound to.
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let s = socket2::SockRef::from(fd);
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// A worker's datagram socket and the kernel-facing batches it reuses.
pub(crate) struct Udp {
    pub(crate) fd: OwnedFd,
    pub(crate) recv: RecvBatch,
    pub(crate) send: SendBatch,
    /// The last batch received: each datagram's offset, length and source.
    pub(crate) got: Vec<(usize, usize, SocketAddr)>,
}

/// The kernel's side of a `recvmmsg` batch, reused from call to call.
pub(crate) struct RecvBatch {
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` are rebuilt before every call from memory the
// call borrows; between calls they are never read.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            addrs: (0..RECV_BATCH).map(|_| zeroed()).collect(),
            iovs: (0..RECV_BATCH).map(|_| zeroed()).collect(),
            hdrs: (0..RECV_BATCH).map(|_| zeroed()).collect(),
        }
    }
}

/// An all-zero value of a C struct.
fn zeroed<T: Copy>() -> T {
    // SAFETY: used only for sockaddr_storage, iovec and mmsghdr, for which all-zero is valid
    // (null pointers, zero lengths).
    unsafe { MaybeUninit::zeroed().assume_init() }
}

/// Receives up to [`RECV_BATCH`] datagrams into `mem`'s spare capacity, one [`RECV_SLOT`]
/// each (`mem` must have `RECV_BATCH * RECV_SLOT` bytes spare). Returns, per datagram, its
/// slot's offset in `mem` after the call, its length and its source; `mem`'s length covers
/// the slots used.
pub(crate) fn recv_batch(
    fd: &OwnedFd,
    mem: &mut BytesMut,
    b: &mut RecvBatch,
    out: &mut Vec<(usize, usize, SocketAddr)>,
) -> io::Result<usize> {
    out.clear();
    let need = RECV_BATCH * RECV_SLOT;
    assert!(mem.capacity() - mem.len() >= need, "room for a whole batch");
    let base = mem.len();
    let spare = mem.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    for i in 0..RECV_BATCH {
        b.iovs[i] = libc::iovec {
            iov_base: spare.wrapping_add(i * RECV_SLOT).cast(),
            iov_len: RECV_SLOT,
        };
        let h = &mut b.hdrs[i];
        h.msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        h.msg_hdr.msg_iov = &mut b.iovs[i];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = std::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
        h.msg_len = 0;
    }
    // SAFETY: every header points at its own address slot and iovec, every iovec at its own
    // RECV_SLOT bytes of `mem`'s spare capacity (checked above); all outlive the call, which
    // writes at most that much into each.
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            b.hdrs.as_mut_ptr(),
            RECV_BATCH as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        let h = &b.hdrs[i];
        // A truncated datagram is reported at the slot's length; the flag marks it.
        let len = (h.msg_len as usize).min(RECV_SLOT);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        // SAFETY: the kernel wrote `msg_namelen` bytes of the source address into the slot.
        let from = unsafe { socket2::SockAddr::new(b.addrs[i], h.msg_hdr.msg_namelen) };
        let Some(from) = from.as_socket() else {
            continue;
        };
        out.push((base + i * RECV_SLOT, if truncated { 0 } else { len }, from));
    }
    if n > 0 {
        // SAFETY: the kernel initialised the first `msg_len` bytes of each used slot; the
        // bytes between are never read (each datagram is cut at its own length).
        unsafe { mem.set_len(base + n * RECV_SLOT) };
    }
    Ok(n)
}

/// The kernel's side of a `sendmmsg` batch, reused from call to call.
#[derive(Default)]
pub(crate) struct SendBatch {
    addrs: Vec<socket2::SockAddr>,
    iovs: Vec<[libc::iovec; 2]>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: as `RecvBatch`: the pointers are rebuilt before every call.
unsafe impl Send for SendBatch {}

/// Sends the datagrams of `msgs` (destination, 4-byte header, payload; the first
/// [`SEND_BATCH`]) with one `sendmmsg`: returns how many the kernel took (fewer when one
/// failed: the next call reports why).
pub(crate) fn send_batch<'a>(
    fd: &OwnedFd,
    msgs: impl Iterator<Item = (SocketAddr, &'a [u8; 4], &'a [u8])>,
    b: &mut SendBatch,
) -> io::Result<usize> {
    b.addrs.clear();
    b.iovs.clear();
    b.hdrs.clear();
    for (to, header, payload) in msgs.take(SEND_BATCH) {
        b.addrs.push(socket2::SockAddr::from(to));
        b.iovs.push([
            libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: 4,
            },
            libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            },
        ]);
    }
    let n = b.addrs.len();
    for i in 0..n {
        let mut h: libc::mmsghdr = zeroed();
        h.msg_hdr.msg_name = b.addrs[i].as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = b.addrs[i].len();
        h.msg_hdr.msg_iov = b.iovs[i].as_mut_ptr();
        h.msg_hdr.msg_iovlen = 2;
        b.hdrs.push(h);
    }
    // SAFETY: each header points at its own address and its two iovecs, which point at the
    // header and payload bytes `msgs` borrows for `'a`; nothing moves until the call returns
    // (the vectors are not touched), and the kernel only reads them.
    let sent = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            b.hdrs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
