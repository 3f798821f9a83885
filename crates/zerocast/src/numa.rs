//! NUMA: which memory node a CPU is on, and the memory policies the engine gives pinned
//! workers ([`Builder::numa`](crate::Builder::numa)), read back.
//!
//! ```no_run
//! // On a worker (in a handler), where did this worker's send-buffer pool put its memory?
//! let buf = zerocast::SendBuffer::copy_from_slice(b"hello");
//! let policy = zerocast::numa::policy_of(&buf)?;
//! println!("mode {} nodes {:?}", policy.mode, policy.nodes);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;

use crate::sys::numa;
use crate::SendBuffer;

pub use crate::sys::numa::MemPolicy;

/// The NUMA nodes online on this machine (one, node 0, on a kernel without NUMA).
pub fn online_nodes() -> Vec<usize> {
    numa::online_nodes()
}

/// The node CPU `cpu` belongs to, from sysfs.
pub fn node_of_cpu(cpu: usize) -> Option<usize> {
    numa::node_of_cpu(cpu)
}

/// The policy governing `buf`'s memory (`get_mempolicy` with `MPOL_F_ADDR`, on the first
/// whole page inside it): `MPOL_PREFERRED` and the worker's node for a buffer from a bound
/// worker's pool, `MPOL_DEFAULT` otherwise. A pool chunk's first and last partial pages are
/// not bound (the allocator shares them), so a buffer of under two pages may report the
/// default.
///
/// # Errors
/// What `get_mempolicy` returns (ENOSYS on a kernel without NUMA).
pub fn policy_of(buf: &SendBuffer) -> io::Result<MemPolicy> {
    numa::policy_of(buf.as_bytes())
}

/// The calling thread's memory policy: on a bound worker, `MPOL_PREFERRED` and its node.
///
/// # Errors
/// What `get_mempolicy` returns (ENOSYS on a kernel without NUMA).
pub fn thread_policy() -> io::Result<MemPolicy> {
    numa::thread_policy()
}
