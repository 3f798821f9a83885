//! Every system call and unsafe OS interaction of the engine, per operating system.
//!
//! Each wrapper owns its `unsafe` and argues it in a `// SAFETY:` comment. What cannot be made
//! safe here (a submission whose memory the kernel reads later) is an `unsafe fn` with a
//! `# Safety` section, and its callers argue each call. Above this module no code hands a raw
//! pointer to the kernel, and no code names an OS type but [`Sock`].
//!
//! Linux:
//! - [`socket`]: receive, gathered send, accept, socket options (through `socket2` where it
//!   has them);
//! - `epoll`: the readiness backend's epoll instance, waiting until a deadline with
//!   nanosecond precision;
//! - `uring`: the completion backend's ring, its submissions and its provided-buffer ring;
//! - [`numa`]: memory nodes from sysfs, and the memory policies of pinned workers;
//! - `udp`: `recvmmsg`/`sendmmsg` batches;
//! - `linux`: the worker wake-up eventfd and CPU pinning.
//!
//! Windows:
//! - [`socket`]: `WSABUF` slices and the socket options;
//! - `iocp`: the completion port, `AcceptEx`, overlapped `WSARecv`/`WSASend`, cancellation;
//! - [`numa`]: no binding (the engine's NUMA policies are Linux's);
//! - `windows`: CPU pinning and error classification.
//!
//! Both: `opts`, the socket options `socket2` sets the same way everywhere.

use std::io;

/// Calls a libc function returning `-1` on error and converts that to `io::Error`.
#[cfg(target_os = "linux")]
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

mod opts;

#[cfg(target_os = "linux")]
pub(crate) mod epoll;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) mod numa;
#[cfg(target_os = "linux")]
pub(crate) mod socket;
#[cfg(target_os = "linux")]
pub(crate) mod udp;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(windows)]
#[path = "win/iocp.rs"]
pub(crate) mod iocp;
#[cfg(windows)]
#[path = "win/numa.rs"]
pub(crate) mod numa;
#[cfg(windows)]
#[path = "win/socket.rs"]
pub(crate) mod socket;
#[cfg(windows)]
#[path = "win/mod.rs"]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// Number of CPUs this process may run on.
pub(crate) fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether `e` says the process ran out of descriptors or memory (accepting then backs off
/// rather than spinning, and logs it at most once a second).
pub(crate) fn out_of_resources(e: &io::Error) -> bool {
    OUT_OF_RESOURCES.contains(&e.raw_os_error().unwrap_or(0))
}
