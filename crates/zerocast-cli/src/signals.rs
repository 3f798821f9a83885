//! The signals that stop a server gracefully: SIGINT and SIGTERM.
//!
//! On Linux they are read from signal-hook's iterator, which blocks until one arrives.
//!
//! Windows has no signals from outside the process: its C runtime raises SIGINT for Ctrl-C and
//! SIGBREAK for Ctrl-Break (console control events, which is also what Wine turns a SIGINT sent
//! to the Wine process into) and SIGTERM only when the process raises it itself. Those three
//! stop the server the same way: the C runtime's `signal()` runs a handler that records which
//! one came (a handler may not do more), and [`Signals::wait`] looks every 50 ms, so a stop
//! takes at most that long to begin. Not signal-hook's flags: signal-hook-registry asks the
//! runtime for the current handler with `SIG_GET`, which Wine's msvcrt takes for a handler at
//! address 2 and calls on the first Ctrl-C (a page fault).

use std::io;

/// The stop signals, caught from [`Signals::new`] on.
pub struct Signals {
    #[cfg(unix)]
    inner: signal_hook::iterator::Signals,
    #[cfg(windows)]
    closer: Closer,
}

/// Ends [`Signals::wait`] without a signal and tells other threads the server is stopping.
#[cfg(unix)]
pub type Closer = signal_hook::iterator::Handle;

/// Ends [`Signals::wait`] without a signal and tells other threads the server is stopping.
#[cfg(windows)]
#[derive(Clone, Default)]
pub struct Closer(std::sync::Arc<std::sync::atomic::AtomicBool>);

#[cfg(windows)]
impl Closer {
    pub fn close(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Signals {
    /// Catches SIGINT and SIGTERM (and SIGBREAK on Windows) from now on.
    #[cfg(unix)]
    pub fn new() -> io::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        Ok(Self {
            inner: signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?,
        })
    }

    /// Catches SIGINT and SIGTERM (and SIGBREAK on Windows) from now on.
    #[cfg(windows)]
    pub fn new() -> io::Result<Self> {
        crt::catch()?;
        Ok(Self {
            closer: Closer::default(),
        })
    }

    /// What stops the wait early, for other threads.
    #[cfg(unix)]
    pub fn closer(&self) -> Closer {
        self.inner.handle()
    }

    /// What stops the wait early, for other threads.
    #[cfg(windows)]
    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    /// Blocks until a stop signal arrives (returns its number) or the closer is closed (`None`).
    #[cfg(unix)]
    pub fn wait(&mut self) -> Option<i32> {
        self.inner.forever().next()
    }

    /// Blocks until a stop signal arrives (returns its number) or the closer is closed (`None`).
    #[cfg(windows)]
    pub fn wait(&mut self) -> Option<i32> {
        loop {
            match crt::caught() {
                0 if self.closer.is_closed() => return None,
                0 => std::thread::sleep(std::time::Duration::from_millis(50)),
                signal => return Some(signal),
            }
        }
    }
}

/// The C runtime's signals (msvcrt's `signal()`).
#[cfg(windows)]
mod crt {
    use std::io;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// Ctrl-Break, in the C runtime's numbering (its signal.h; the libc crate lacks it).
    const SIGBREAK: libc::c_int = 21;

    /// The last stop signal caught; 0 for none yet (signal numbers are positive).
    static CAUGHT: AtomicI32 = AtomicI32::new(0);

    fn handler() -> libc::sighandler_t {
        on_signal as *const () as libc::sighandler_t
    }

    extern "C" fn on_signal(signal: libc::c_int) {
        // The C runtime resets a handler to the default before calling it: set it again, so a
        // second Ctrl-C while the server drains is caught too, as on Linux.
        // SAFETY: signal() with a valid handler for a signal the runtime knows; the runtime
        // allows a handler to call it (that is how a handler stays installed).
        unsafe { libc::signal(signal, handler()) };
        CAUGHT.store(signal, Ordering::Release);
    }

    /// Installs the handler for SIGINT, SIGTERM and SIGBREAK.
    pub fn catch() -> io::Result<()> {
        for signal in [libc::SIGINT, libc::SIGTERM, SIGBREAK] {
            // SAFETY: signal() with a valid `extern "C" fn(c_int)` handler, which only
            // re-installs itself and stores to an atomic.
            let previous = unsafe { libc::signal(signal, handler()) };
            if previous == libc::SIG_ERR as libc::sighandler_t {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The last stop signal caught, or 0.
    pub fn caught() -> i32 {
        CAUGHT.load(Ordering::Acquire)
    }
}
