//! Windows: the socket type, CPU pinning, and which errors mean the process ran out of
//! resources.

use std::io;

use windows_sys::Win32::Foundation::{ERROR_NOT_ENOUGH_MEMORY, ERROR_OUTOFMEMORY};
use windows_sys::Win32::Networking::WinSock::{WSAEMFILE, WSAENOBUFS};
use windows_sys::Win32::System::Threading::{GetCurrentThread, SetThreadAffinityMask};

/// A socket as the engine holds it.
pub(crate) type Sock = std::os::windows::io::OwnedSocket;

/// No `SO_REUSEPORT`: one listener per port, its connections handed round the workers.
pub(crate) const REUSE_PORT: bool = false;

/// OS errors that mean the process ran out of sockets or memory.
pub(crate) const OUT_OF_RESOURCES: [i32; 4] = [
    WSAEMFILE,
    WSAENOBUFS,
    ERROR_NOT_ENOUGH_MEMORY as i32,
    ERROR_OUTOFMEMORY as i32,
];

/// Pins the calling thread to one CPU (of the first 64: the thread's processor group).
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= usize::BITS as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu index beyond the processor group",
        ));
    }
    // SAFETY: GetCurrentThread returns a pseudo-handle for the calling thread, valid for this
    // call; the mask names one CPU.
    let previous = unsafe { SetThreadAffinityMask(GetCurrentThread(), 1 << cpu) };
    if previous == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
