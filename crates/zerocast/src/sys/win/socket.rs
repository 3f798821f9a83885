//! Socket slices and options (Windows).

use windows_sys::Win32::Networking::WinSock::WSABUF;

pub(crate) use super::opts::*;

/// Most pieces one gathered send takes (the same cap as on Linux).
pub(crate) const IOV_MAX: usize = 1024;

/// One piece of a gathered send: Winsock's `WSABUF`. Built from a pointer and a length; only
/// the overlapped send (unsafe, [`super::iocp`]) hands it to the kernel.
pub(crate) type RawSlice = WSABUF;

/// A piece for `len` bytes at `ptr` (a write offers at most a few hundred KiB, so the length
/// fits `u32`).
#[inline]
pub(crate) fn raw_slice(ptr: *const u8, len: usize) -> RawSlice {
    debug_assert!(u32::try_from(len).is_ok());
    WSABUF {
        len: len as u32,
        buf: ptr.cast_mut(),
    }
}

/// A piece's address and length.
#[cfg(test)]
pub(crate) fn slice_parts(s: &RawSlice) -> (*const u8, usize) {
    (s.buf.cast_const(), s.len as usize)
}

/// What a write in flight keeps for the kernel besides its slices: nothing on Windows
/// (`WSASend` captures its `WSABUF` array when it starts; only the bytes must stay put).
#[derive(Default)]
pub(crate) struct MsgHdr;
