//! The IOCP backend's system calls: a completion port per worker, and the overlapped socket
//! operations it completes (`AcceptEx`, `WSARecv`, `WSASend`), their cancellation, and the
//! wake-up posted from other threads.
//!
//! # Operation lifetime
//! An overlapped operation writes into memory (a receive's buffer, an accept's address
//! buffer) or reads from it (a send's bytes), and the OS writes the operation's `OVERLAPPED`,
//! until the operation has *finished*: its start returned [`Started::Done`] (sockets are
//! associated with `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`, so an operation that succeeds at
//! once queues no completion), or its start returned [`Started::Pending`] and its completion
//! has been dequeued from the port ([`Port::wait`]). Until then the operation's record
//! ([`RecvOp`], [`AcceptOp`], a send's [`Overlapped`]) must neither move nor be freed, and
//! the socket must stay open: the starts are `unsafe fn`s whose callers promise it (the
//! backend keeps every record boxed, and its socket open, until the last completion).
//! Cancelling ([`cancel`]) does not end an operation: its completion still arrives, with
//! `ERROR_OPERATION_ABORTED`.

use std::cell::UnsafeCell;
use std::io;
use std::os::windows::io::AsRawSocket;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_NOT_FOUND, HANDLE, INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, AcceptEx, WSAGetLastError, WSAGetOverlappedResult, WSARecv, WSASend,
    SOCKADDR_STORAGE, SOCKET, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, WSABUF, WSA_IO_PENDING,
};
use windows_sys::Win32::Storage::FileSystem::SetFileCompletionNotificationModes;
use windows_sys::Win32::System::Threading::INFINITE;
use windows_sys::Win32::System::WindowsProgramming::{
    FILE_SKIP_COMPLETION_PORT_ON_SUCCESS, FILE_SKIP_SET_EVENT_ON_HANDLE,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus,
    OVERLAPPED, OVERLAPPED_ENTRY,
};

use super::socket::RawSlice;
use super::Sock;

/// How an operation started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Started {
    /// Finished at once, with this many bytes: no completion will be queued.
    Done(usize),
    /// In flight: its completion will be dequeued from the port.
    Pending,
}

/// A socket's handle as the backend keeps it between calls: the core owns the socket and
/// keeps it open until the backend releases its token, so an operation started on it, or a
/// cancellation, names an open socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawSock(SOCKET);

impl RawSock {
    pub(crate) fn of(sock: &Sock) -> Self {
        Self(sock.as_raw_socket() as SOCKET)
    }

    fn handle(self) -> HANDLE {
        self.0 as HANDLE
    }
}

fn handle(sock: &Sock) -> HANDLE {
    RawSock::of(sock).handle()
}

fn raw(sock: &Sock) -> SOCKET {
    RawSock::of(sock).0
}

fn wsa_error() -> io::Error {
    // SAFETY: reads the calling thread's last Winsock error; no arguments.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// A Winsock call's result: 0 is done at once, `WSA_IO_PENDING` is in flight, any other error
/// failed (no completion is queued).
fn started(result: i32, bytes: u32) -> io::Result<Started> {
    if result == 0 {
        return Ok(Started::Done(bytes as usize));
    }
    let e = wsa_error();
    if e.raw_os_error() == Some(WSA_IO_PENDING) {
        Ok(Started::Pending)
    } else {
        Err(e)
    }
}

/// A worker's completion port: the sockets it serves complete here, and other threads wake
/// the worker by posting to it.
pub(crate) struct Port(HANDLE);

// SAFETY: a completion port handle may be used from any thread: posting (the waker) and
// dequeuing are thread-safe operations on the kernel object.
unsafe impl Send for Port {}
// SAFETY: as above; `&Port` only posts or dequeues.
unsafe impl Sync for Port {}

/// One completion dequeued from the port.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    /// The key of the socket's association (or of a post).
    pub(crate) key: usize,
    /// Which operation finished: [`Overlapped::id`] of its record (0 for a post).
    pub(crate) op: usize,
    /// Bytes transferred.
    pub(crate) bytes: usize,
    /// Whether it succeeded (an `NTSTATUS` that is not an error).
    pub(crate) ok: bool,
}

impl Port {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: with INVALID_HANDLE_VALUE and no existing port, creates a new port (one
        // thread may run completions concurrently: the worker).
        let h = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, std::ptr::null_mut(), 0, 1) };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(h))
    }

    /// Completes `sock`'s operations on this port under `key`. An operation that succeeds at
    /// once then queues no completion (its start reports it): a socket is served with no
    /// detour through the port when data is already there.
    pub(crate) fn associate(&self, sock: &Sock, key: usize) -> io::Result<()> {
        // SAFETY: `sock` is a live socket (borrowed for the call) and `self.0` a live port; a
        // socket is associated once (the backend associates each socket it is handed once).
        let r = unsafe { CreateIoCompletionPort(handle(sock), self.0, key, 0) };
        if r.is_null() {
            return Err(io::Error::last_os_error());
        }
        let modes = (FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE) as u8;
        // SAFETY: as above; only sets the socket's notification modes.
        if unsafe { SetFileCompletionNotificationModes(handle(sock), modes) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Queues a completion with `key` and no operation (a wake-up).
    pub(crate) fn post(&self, key: usize) -> io::Result<()> {
        // SAFETY: a null OVERLAPPED is allowed: the packet carries only the key.
        if unsafe { PostQueuedCompletionStatus(self.0, 0, key, std::ptr::null()) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Dequeues up to `raw.capacity()` completions into `out`, waiting until one arrives or
    /// `timeout` passes (`None`: no deadline; rounded up to the millisecond).
    pub(crate) fn wait(
        &self,
        raw: &mut Vec<OVERLAPPED_ENTRY>,
        out: &mut Vec<Completion>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let ms = match timeout {
            None => INFINITE,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                ms.min(u128::from(INFINITE - 1)) as u32
            }
        };
        raw.clear();
        let cap = raw.capacity().clamp(1, u32::MAX as usize);
        let mut removed = 0u32;
        // SAFETY: the port is live; `raw` has room for `cap` entries, which the call fills
        // (`removed` of them) before it returns; `removed` is a live local.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(self.0, raw.as_mut_ptr(), cap as u32, &mut removed, ms, 0)
        };
        if ok == 0 {
            // SAFETY: reads the calling thread's last error; no arguments.
            let e = unsafe { GetLastError() };
            return if e == WAIT_TIMEOUT {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(e as i32))
            };
        }
        // SAFETY: the call initialised the first `removed <= cap` entries.
        unsafe { raw.set_len((removed as usize).min(cap)) };
        out.extend(raw.iter().map(|e| {
            let op = e.lpOverlapped as usize;
            // The operation's status is in its OVERLAPPED's `Internal` (an NTSTATUS, negative
            // as i32 on error); a post has no OVERLAPPED.
            let ok = op == 0 || {
                // SAFETY: a dequeued packet's OVERLAPPED is the record of an operation this
                // worker started (posts carry none), alive until the backend handles this
                // completion (the operation-lifetime rule); the OS wrote it before queueing.
                let status = unsafe { (*e.lpOverlapped).Internal };
                (status as u32 as i32) >= 0
            };
            Completion {
                key: e.lpCompletionKey,
                op,
                bytes: e.dwNumberOfBytesTransferred as usize,
                ok,
            }
        }));
        Ok(())
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the port handle is ours and closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// An operation's `OVERLAPPED`, at a fixed address while the operation runs (see the module
/// docs: the record that holds it is boxed and kept until the operation finishes).
#[derive(Default)]
pub(crate) struct Overlapped(UnsafeCell<OVERLAPPED>);

impl Overlapped {
    /// The operation's identity in a [`Completion`].
    pub(crate) fn id(&self) -> usize {
        self.0.get() as usize
    }

    /// A fresh `OVERLAPPED` for the next operation, and its address.
    ///
    /// # Safety
    /// No operation may be in flight on it.
    unsafe fn arm(&self) -> *mut OVERLAPPED {
        let p = self.0.get();
        // SAFETY: no operation is in flight (the caller's promise), so nothing else writes it.
        unsafe { p.write(OVERLAPPED::default()) };
        p
    }

    /// Why the finished operation failed, as Winsock tells it.
    pub(crate) fn error(&self, sock: RawSock) -> io::Error {
        let (mut n, mut flags) = (0u32, 0u32);
        // SAFETY: the operation has finished (its completion was dequeued), so the OVERLAPPED
        // is only read; `n` and `flags` are live locals; no wait is asked.
        let ok = unsafe { WSAGetOverlappedResult(sock.0, self.0.get(), &mut n, 0, &mut flags) };
        if ok != 0 {
            return io::Error::other("an operation failed without an error code");
        }
        wsa_error()
    }
}

/// Cancels the operations in flight on `sock`: `op` alone, or all of them. Their completions
/// still arrive (with `ERROR_OPERATION_ABORTED`, or their result if they had finished).
pub(crate) fn cancel(sock: RawSock, op: Option<&Overlapped>) {
    let p = op.map_or(std::ptr::null(), |o| o.0.get().cast_const());
    // SAFETY: cancelling touches no memory of ours beyond reading which operation `p` names;
    // `sock` is open (see `RawSock`).
    if unsafe { CancelIoEx(sock.handle(), p) } == 0 {
        // SAFETY: reads the calling thread's last error; no arguments.
        let e = unsafe { GetLastError() };
        if e != ERROR_NOT_FOUND {
            tracing::debug!(error = %io::Error::from_raw_os_error(e as i32), "CancelIoEx failed");
        }
    }
}

/// A socket's receive: its `OVERLAPPED` and the memory it receives into.
///
/// Two buffers take turns: a receive lands in what is left of `buf`; when too little is left,
/// `spare` (the buffer before, whose views have dropped by then in steady state) comes back
/// whole, so a session that keeps receiving allocates nothing.
///
/// Invariant: `offered` is the spare capacity of `buf` the receive in flight (or just
/// finished) was given, 0 when none was started since the last [`take`](Self::take).
#[derive(Default)]
pub(crate) struct RecvOp {
    ov: Overlapped,
    buf: BytesMut,
    spare: BytesMut,
    offered: usize,
}

impl RecvOp {
    pub(crate) fn ov(&self) -> &Overlapped {
        &self.ov
    }

    /// Starts a receive of at most `size` bytes into the record's memory: what is left of its
    /// buffer if at least `min` bytes, or a whole buffer again (this one or the spare) once
    /// every view of what it received earlier has dropped, or a new buffer of `size` bytes.
    ///
    /// # Safety
    /// No operation may be in flight on this record, and (when it returns
    /// [`Started::Pending`]) the record must neither move nor be freed, and `sock` must stay
    /// open, until its completion is dequeued.
    pub(crate) unsafe fn start(
        &mut self,
        sock: RawSock,
        size: usize,
        min: usize,
    ) -> io::Result<Started> {
        if self.buf.capacity() - self.buf.len() < min && !self.buf.try_reclaim(size) {
            let old = if self.spare.try_reclaim(size) {
                std::mem::take(&mut self.spare)
            } else {
                BytesMut::with_capacity(size)
            };
            // What the old buffer's views still hold is freed when the last one drops.
            self.spare = std::mem::replace(&mut self.buf, old);
        }
        let spare = self.buf.spare_capacity_mut();
        let len = spare.len().min(size).min(u32::MAX as usize);
        self.offered = len;
        let wsabuf = WSABUF {
            len: len as u32,
            buf: spare.as_mut_ptr().cast(),
        };
        let (mut bytes, mut flags) = (0u32, 0u32);
        // SAFETY: no operation is in flight on this record (the caller's promise).
        let ov = unsafe { self.ov.arm() };
        // SAFETY: `wsabuf` names `len` bytes of `buf`'s spare capacity, which the record owns
        // and keeps in place until the receive finishes (the caller's promise), as it does
        // `ov`; the WSABUF array itself is read during the call only.
        let r = unsafe { WSARecv(sock.0, &wsabuf, 1, &mut bytes, &mut flags, ov, None) };
        started(r, bytes)
    }

    /// The bytes the finished receive wrote: the first `n` of what it was offered, as a view
    /// that shares the record's memory.
    ///
    /// # Safety
    /// The receive has finished (its start returned [`Started::Done`] with `n`, or its
    /// completion was dequeued with `n`).
    pub(crate) unsafe fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(std::mem::take(&mut self.offered));
        // SAFETY: the finished receive initialised the first `n` bytes of the spare capacity
        // (the OS reports at most what it was offered).
        unsafe { self.buf.advance_mut(n) };
        self.buf.split_to(n).freeze()
    }
}

/// Room for one address in an accept's output buffer (`AcceptEx` wants 16 bytes more than
/// the largest address).
const ADDR_LEN: usize = std::mem::size_of::<SOCKADDR_STORAGE>() + 16;

/// One outstanding `AcceptEx`: its `OVERLAPPED`, the socket it accepts into, and the buffer
/// the OS writes the two addresses into.
pub(crate) struct AcceptOp {
    ov: Overlapped,
    sock: Option<Sock>,
    addrs: [u8; 2 * ADDR_LEN],
}

impl AcceptOp {
    pub(crate) fn new() -> Box<Self> {
        Box::new(Self {
            ov: Overlapped::default(),
            sock: None,
            addrs: [0; 2 * ADDR_LEN],
        })
    }

    pub(crate) fn ov(&self) -> &Overlapped {
        &self.ov
    }

    /// Starts accepting a connection on `listener` (of `domain`) into a new socket.
    ///
    /// # Safety
    /// No accept may be in flight on this record, and (when it returns
    /// [`Started::Pending`]) the record must neither move nor be freed, and `listener` must
    /// stay open, until its completion is dequeued.
    pub(crate) unsafe fn start(
        &mut self,
        listener: &Sock,
        domain: socket2::Domain,
    ) -> io::Result<Started> {
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        let accept = s.as_raw_socket() as SOCKET;
        self.sock = Some(Sock::from(s));
        let mut bytes = 0u32;
        // SAFETY: no accept is in flight on this record (the caller's promise).
        let ov = unsafe { self.ov.arm() };
        // SAFETY: `addrs` has room for both addresses (ADDR_LEN each, no initial data); it, the
        // OVERLAPPED and the accept socket (held in `self.sock`) stay in place until the
        // accept finishes (the caller's promise).
        let ok = unsafe {
            AcceptEx(
                raw(listener),
                accept,
                self.addrs.as_mut_ptr().cast(),
                0,
                ADDR_LEN as u32,
                ADDR_LEN as u32,
                &mut bytes,
                ov,
            )
        };
        if ok != 0 {
            return Ok(Started::Done(0));
        }
        match started(-1, 0) {
            Err(e) => {
                self.sock = None;
                Err(e)
            }
            other => other,
        }
    }

    /// The socket of the accept that finished successfully, its context inherited from the
    /// listener (so that `getpeername`, `shutdown` and the options work on it).
    pub(crate) fn finish(&mut self, listener: &Sock) -> io::Result<Sock> {
        let sock = self
            .sock
            .take()
            .ok_or_else(|| io::Error::other("no accept was started"))?;
        let l = raw(listener);
        // SAFETY: passes the listener's handle by pointer with its size, as
        // SO_UPDATE_ACCEPT_CONTEXT requires; `sock` is the accepted socket.
        let r = unsafe {
            setsockopt(
                raw(&sock),
                SOL_SOCKET,
                SO_UPDATE_ACCEPT_CONTEXT,
                (&l as *const SOCKET).cast(),
                std::mem::size_of::<SOCKET>() as i32,
            )
        };
        if r != 0 {
            return Err(wsa_error());
        }
        Ok(sock)
    }

    /// Drops the socket of an accept that failed or was cancelled.
    pub(crate) fn abandon(&mut self) {
        self.sock = None;
    }
}

/// Starts a gathered send of `slices` on `sock`.
///
/// # Safety
/// No send may be in flight on `ov`; every slice must point to memory valid for reads of its
/// length; and (when it returns [`Started::Pending`]) that memory and `ov` must neither move
/// nor be freed, and `sock` must stay open, until its completion is dequeued. (The slice
/// array itself is read during the call only: Winsock captures it.)
pub(crate) unsafe fn send(
    sock: RawSock,
    ov: &Overlapped,
    slices: &[RawSlice],
) -> io::Result<Started> {
    let count = slices.len().min(super::socket::IOV_MAX) as u32;
    let mut bytes = 0u32;
    // SAFETY: no send is in flight on `ov` (the caller's promise).
    let p = unsafe { ov.arm() };
    // SAFETY: the slices name readable memory kept in place until the send finishes, as is
    // `ov` (the caller's promise).
    let r = unsafe { WSASend(sock.0, slices.as_ptr(), count, &mut bytes, 0, p, None) };
    started(r, bytes)
}
