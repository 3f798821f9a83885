//! Starting a worker: its thread, its backend, its core.

use std::io;
use std::sync::Arc;

use super::core::{Core, EngineShared};
use super::inbox::WorkerShared;
use super::metrics::WorkerMetrics;
use super::Backend;
use crate::config::Backend as BackendKind;
use crate::handler::HostFactory;

/// Starts worker `index` on its own thread, pinned to `cpu` if given, on `backend`; returns
/// once it is ready to take commands, or with the error that stopped it.
pub(crate) fn spawn(
    backend: BackendKind,
    shared: Arc<WorkerShared>,
    ctx: Arc<EngineShared>,
    app: HostFactory,
    m: Arc<WorkerMetrics>,
    cpu: Option<usize>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let i = shared.index;
    let (ready, built) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
    let thread = std::thread::Builder::new()
        .name(format!("zerocast-worker-{i}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                match crate::sys::pin_to_cpu(cpu) {
                    Ok(()) => bind_memory(i, cpu, ctx.config.numa),
                    Err(e) => tracing::warn!(worker = i, cpu, error = %e, "cannot pin worker"),
                }
            }
            // Everything the worker owns is built on its own thread (an io_uring instance
            // lives and dies with the one thread that submits to it).
            fn go<B: Backend>(
                b: io::Result<B>,
                shared: Arc<WorkerShared>,
                ctx: Arc<EngineShared>,
                app: HostFactory,
                m: Arc<WorkerMetrics>,
                ready: std::sync::mpsc::SyncSender<io::Result<()>>,
            ) {
                match b {
                    Ok(b) => {
                        shared.set_waker(b.waker());
                        let core = Core::new(b, shared, ctx, app(), m);
                        let _ = ready.send(Ok(()));
                        core.run();
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            }
            match backend {
                #[cfg(target_os = "linux")]
                BackendKind::Uring => go(super::uring::Uring::new(), shared, ctx, app, m, ready),
                #[cfg(target_os = "linux")]
                BackendKind::Epoll => go(super::epoll::Epoll::new(), shared, ctx, app, m, ready),
                #[cfg(windows)]
                BackendKind::Iocp => go(super::iocp::Iocp::new(), shared, ctx, app, m, ready),
                other => {
                    // `Backend::resolve` refuses these before any worker starts.
                    let why = format!("the {} backend does not run on this OS", other.name());
                    let _ = ready.send(Err(io::Error::new(io::ErrorKind::Unsupported, why)));
                }
            }
        })?;
    built
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("worker thread died while starting")))?;
    Ok(thread)
}

/// Keeps the memory of worker `i`, just pinned to `cpu`, on that CPU's NUMA node (see
/// [`Builder::numa`](crate::Builder::numa)): its thread's policy, and its send-buffer pool's
/// chunks. Runs before the worker builds anything.
fn bind_memory(i: usize, cpu: usize, numa: crate::config::Numa) {
    use crate::config::Numa;
    use crate::sys::numa;
    let bind = match numa {
        Numa::Off => false,
        Numa::Bind => true,
        Numa::Auto => numa::online_nodes().len() > 1,
    };
    if !bind {
        return;
    }
    let Some(node) = numa::node_of_cpu(cpu) else {
        tracing::warn!(
            worker = i,
            cpu,
            "cpu names no NUMA node in sysfs: memory not bound"
        );
        return;
    };
    match numa::prefer_node_for_thread(node) {
        Ok(()) => {
            crate::buffer::bind_thread_pool(node);
            tracing::info!(
                worker = i,
                cpu,
                node,
                "worker memory bound to its CPU's NUMA node"
            );
        }
        Err(e) => {
            tracing::warn!(worker = i, cpu, node, error = %e, "cannot bind worker memory to its NUMA node");
        }
    }
}
