//! A pinned worker's memory stays on its CPU's NUMA node: asked over a real socket, the
//! worker reads back the memory policy of its own thread and of a buffer from its send pool.
//! This machine has one node: `Numa::Bind` binds there anyway (the default, `Auto`, would say
//! there is nothing to gain), and `Numa::Off` shows what an unbound worker reports.

// Linux only: the memory policies are Linux's (set_mempolicy, mbind).
#![cfg(target_os = "linux")]

mod util;

/// The kernel's policy mode "preferred node" (linux/mempolicy.h; 0 is the default policy).
const MPOL_PREFERRED: u32 = 1;

use std::io::Write;

use util::*;
use zerocast::{Context, Engine, Frame, Handler, Numa, SendBuffer};

/// Answers any frame with what the worker's memory policies are: `[thread mode, thread node
/// mask, pool buffer mode, pool buffer node mask]`, 4 bytes each.
struct Policies;

impl Handler for Policies {
    type Worker = ();
    type Session = ();

    fn on_frame(&self, cx: Context<'_, Self>, frame: Frame<'_>) {
        // A buffer from this worker's pool (two pages: one is whole inside it), carved from
        // a chunk the worker allocated after it was bound.
        let pooled = SendBuffer::copy_from_slice(&vec![0u8; zerocast::buffer::POOLED_MAX]);
        let mask = |nodes: &[usize]| nodes.iter().fold(0u32, |m, &n| m | 1 << n);
        let mut out = Vec::new();
        for p in [
            zerocast::numa::thread_policy(),
            zerocast::numa::policy_of(&pooled),
        ] {
            let p = p.expect("get_mempolicy works on this kernel");
            out.extend_from_slice(&(p.mode as u32).to_le_bytes());
            out.extend_from_slice(&mask(&p.nodes).to_le_bytes());
        }
        let _ = cx.session.send(SendBuffer::frame(frame.id(), &out));
    }
}

fn ask(numa: Numa) -> [u32; 4] {
    let builder = Engine::builder().workers(1).pin_cpus(vec![0]).numa(numa);
    let (engine, addr) = server_with(builder, Policies);
    let mut s = connect(addr);
    s.write_all(&frame(1, b"where?")).unwrap();
    let (_, got) = read_frame(&mut s).expect("an answer");
    drop(s);
    engine.shutdown();
    let word = |i: usize| u32::from_le_bytes(got[i * 4..i * 4 + 4].try_into().unwrap());
    [word(0), word(1), word(2), word(3)]
}

#[test]
fn a_bound_worker_s_thread_and_pool_prefer_its_cpu_s_node() {
    let node = zerocast::numa::node_of_cpu(0).expect("cpu0 has a node");
    assert!(zerocast::numa::online_nodes().contains(&node));
    // Unbound, the default policy. First: a range keeps its policy after it is freed, and
    // the allocator may hand a bound worker's old chunk to the next engine's.
    let [thread_mode, _, pool_mode, _] = ask(Numa::Off);
    assert_eq!((thread_mode, pool_mode), (0, 0), "MPOL_DEFAULT");
    let [thread_mode, thread_nodes, pool_mode, pool_nodes] = ask(Numa::Bind);
    assert_eq!((thread_mode, thread_nodes), (MPOL_PREFERRED, 1 << node));
    assert_eq!((pool_mode, pool_nodes), (MPOL_PREFERRED, 1 << node));
}
