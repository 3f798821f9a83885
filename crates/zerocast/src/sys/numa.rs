//! NUMA: which memory node a CPU belongs to (from sysfs), and the memory policies that keep a
//! pinned worker's memory on its node (`set_mempolicy`, `mbind`, read back with
//! `get_mempolicy`).
//!
//! Through `libc::syscall`: glibc has no wrappers for these (libnuma does; a C library and its
//! headers for three system calls is more than they are worth).

use std::io;
use std::path::Path;

/// `get_mempolicy` flag: report the policy governing the address given (linux/mempolicy.h).
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
/// Nodes a mask here can name (a mask is one word).
const MAX_NODES: usize = libc::c_ulong::BITS as usize;

/// The NUMA nodes this machine has online (`/sys/devices/system/node/online`, e.g. `0-1`);
/// one node where the file is missing (a kernel without NUMA).
pub(crate) fn online_nodes() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/node/online")
        .ok()
        .and_then(|s| parse_list(s.trim()))
        .unwrap_or_else(|| vec![0])
}

/// The node CPU `cpu` belongs to: the `nodeN` entry of its sysfs directory.
pub(crate) fn node_of_cpu(cpu: usize) -> Option<usize> {
    node_in(&Path::new("/sys/devices/system/cpu").join(format!("cpu{cpu}")))
}

fn node_in(dir: &Path) -> Option<usize> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
}

/// Parses a sysfs CPU or node list: `0`, `0-3`, `0,2-3`.
fn parse_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

fn mask(node: usize) -> io::Result<libc::c_ulong> {
    if node >= MAX_NODES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NUMA node {node} is beyond the {MAX_NODES} nodes supported"),
        ));
    }
    Ok(1 << node)
}

fn check(res: libc::c_long) -> io::Result<()> {
    if res == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes every page the calling thread touches first come from `node` when it has room
/// (`MPOL_PREFERRED`: a full node falls back to another rather than failing the allocation).
pub(crate) fn prefer_node_for_thread(node: usize) -> io::Result<()> {
    let mask = mask(node)?;
    // SAFETY: set_mempolicy reads `MAX_NODES` bits from the live `mask` word and nothing else.
    check(unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            libc::MPOL_PREFERRED,
            &mask as *const libc::c_ulong,
            MAX_NODES as libc::c_ulong,
        )
    })
}

/// Gives the whole pages of `mem` the policy "prefer `node`" (`mbind`): pages already there
/// stay where they are (no move is asked), later faults in the range follow it. Pages `mem`
/// shares with other allocations at its ends are left alone.
pub(crate) fn prefer_node_for<T>(mem: &[T], node: usize) -> io::Result<()> {
    let mask = mask(node)?;
    let page = page_size();
    let start = (mem.as_ptr() as usize).next_multiple_of(page);
    let end = (mem.as_ptr() as usize + std::mem::size_of_val(mem)) / page * page;
    if end <= start {
        return Ok(()); // no whole page: nothing of its own to bind
    }
    // SAFETY: the range [start, end) lies inside `mem`, memory this process owns and keeps
    // mapped while borrowed; mbind changes only its placement policy (MPOL_MF flags 0: no
    // page is moved). `mask` is a live word of `MAX_NODES` bits.
    check(unsafe {
        libc::syscall(
            libc::SYS_mbind,
            start as *mut libc::c_void,
            (end - start) as libc::c_ulong,
            libc::MPOL_PREFERRED,
            &mask as *const libc::c_ulong,
            MAX_NODES as libc::c_ulong,
            0 as libc::c_uint,
        )
    })
}

/// A memory policy as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemPolicy {
    /// `MPOL_DEFAULT`, `MPOL_PREFERRED`, `MPOL_BIND`, ... (`libc::MPOL_*`).
    pub mode: i32,
    /// The nodes it names.
    pub nodes: Vec<usize>,
}

/// The policy governing `mem` (`get_mempolicy` with `MPOL_F_ADDR`): what `mbind` set on the
/// first whole page inside it (on the page of its first byte if it holds no whole page), or
/// the default.
pub(crate) fn policy_of(mem: &[u8]) -> io::Result<MemPolicy> {
    let page = page_size();
    let first = mem.as_ptr() as usize;
    let whole = first.next_multiple_of(page);
    let at = if whole + page <= first + mem.len() {
        whole
    } else {
        first
    };
    get_policy(at as *const u8, MPOL_F_ADDR)
}

/// The calling thread's policy (`get_mempolicy`).
pub(crate) fn thread_policy() -> io::Result<MemPolicy> {
    get_policy(std::ptr::null(), 0)
}

fn get_policy(at: *const u8, flags: libc::c_ulong) -> io::Result<MemPolicy> {
    let mut mode: libc::c_int = 0;
    let mut mask: libc::c_ulong = 0;
    // SAFETY: get_mempolicy writes one int to `mode` and `MAX_NODES` bits to `mask`, both
    // live locals; with MPOL_F_ADDR it only looks up `at` in this process's mappings (an
    // unmapped address is EFAULT, not a read).
    check(unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            &mut mask as *mut libc::c_ulong,
            MAX_NODES as libc::c_ulong,
            at as *const libc::c_void,
            flags,
        )
    })?;
    let nodes = (0..MAX_NODES).filter(|n| mask & (1 << n) != 0).collect();
    Ok(MemPolicy { mode, nodes })
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_lists_parse() {
        assert_eq!(parse_list("0"), Some(vec![0]));
        assert_eq!(parse_list("0-3"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_list("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("x"), None);
    }

    #[test]
    fn this_machine_s_cpu_0_has_an_online_node() {
        let node = node_of_cpu(0).expect("cpu0 names its node in sysfs");
        assert!(online_nodes().contains(&node));
    }

    #[test]
    fn a_range_bound_to_a_node_reads_back_so() {
        let node = node_of_cpu(0).unwrap();
        let mem = vec![0u8; 64 * 1024];
        assert_eq!(policy_of(&mem).unwrap().mode, libc::MPOL_DEFAULT);
        prefer_node_for(&mem[..], node).unwrap();
        let p = policy_of(&mem).unwrap();
        assert_eq!((p.mode, p.nodes), (libc::MPOL_PREFERRED, vec![node]));
    }
}
