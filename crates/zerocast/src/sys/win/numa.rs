//! NUMA on Windows: the engine binds no memory. Its policies (a pinned worker's memory kept on
//! its CPU's node) are built on Linux's `set_mempolicy` and `mbind`; here every query says
//! that it is not supported, and the engine sees one node, so `Numa::Auto` binds nothing.

use std::io;

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "NUMA memory policies are supported on Linux only",
    )
}

/// The NUMA nodes the engine knows of: one, node 0.
pub(crate) fn online_nodes() -> Vec<usize> {
    vec![0]
}

/// The node of a CPU: not known here.
pub(crate) fn node_of_cpu(_cpu: usize) -> Option<usize> {
    None
}

/// Not supported on Windows.
pub(crate) fn prefer_node_for_thread(_node: usize) -> io::Result<()> {
    Err(unsupported())
}

/// Not supported on Windows.
pub(crate) fn prefer_node_for<T>(_mem: &[T], _node: usize) -> io::Result<()> {
    Err(unsupported())
}

/// A memory policy as the kernel reports it (Linux; never returned on Windows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemPolicy {
    /// `MPOL_DEFAULT`, `MPOL_PREFERRED`, `MPOL_BIND`, ... (Linux's `MPOL_*`).
    pub mode: i32,
    /// The nodes it names.
    pub nodes: Vec<usize>,
}

/// Not supported on Windows.
pub(crate) fn policy_of(_mem: &[u8]) -> io::Result<MemPolicy> {
    Err(unsupported())
}

/// Not supported on Windows.
pub(crate) fn thread_policy() -> io::Result<MemPolicy> {
    Err(unsupported())
}
