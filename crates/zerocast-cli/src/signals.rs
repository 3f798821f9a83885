//! The signals that stop a server gracefully: SIGINT and SIGTERM.
//!
//! On Linux they are read from signal-hook's iterator, which blocks until one arrives.
//!
//! Windows has no signals from outside the process: its C runtime raises SIGINT for Ctrl-C and
//! SIGBREAK for Ctrl-Break (console control events, which is also what Wine turns a SIGINT sent
//! to the Wine process into) and SIGTERM only when the process raises it itself. Those three
//! stop the server the same way; signal-hook's flags record which one came (a handler may not
//! do more) and [`Signals::wait`] looks at them every 50 ms, so a stop takes at most that long
//! to begin.

use std::io;

/// The stop signals, caught from [`Signals::new`] on.
pub struct Signals {
    #[cfg(unix)]
    inner: signal_hook::iterator::Signals,
    #[cfg(windows)]
    got: std::sync::Arc<std::sync::atomic::AtomicUsize>,
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
        use signal_hook::consts::signal::{SIGBREAK, SIGINT, SIGTERM};
        let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for signal in [SIGINT, SIGTERM, SIGBREAK] {
            // Signal numbers are small and positive: the flag's 0 means none yet.
            signal_hook::flag::register_usize(signal, got.clone(), signal as usize)?;
        }
        Ok(Self {
            got,
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
        use std::sync::atomic::Ordering;
        loop {
            match self.got.load(Ordering::Acquire) {
                0 if self.closer.is_closed() => return None,
                0 => std::thread::sleep(std::time::Duration::from_millis(50)),
                signal => return i32::try_from(signal).ok(),
            }
        }
    }
}
