//! Thread per core: the proxy's connections are served by single-threaded
//! tokio runtimes, one per thread, as HAProxy's threads and nginx's workers
//! do. A connection, the backend connections it uses and their tasks stay
//! on one thread: no work stealing, no cross-thread wakeups. (The
//! work-stealing runtime cost ~20% more CPU per request here.)
//!
//! Thread 0 is the daemon's own runtime (it also runs the admin API and the
//! health checks); [`start`] adds the others. Accepted connections are
//! dealt round robin.

use std::{
    cell::Cell,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
};

use tokio::runtime::Handle;

struct Workers {
    /// Runtimes of threads 1.. (thread 0 is the caller of `start`).
    others: Vec<Handle>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Starts `threads - 1` serving threads next to the calling one (a no-op
/// after the first call: the thread count is fixed for the process).
pub fn start(threads: usize) -> std::io::Result<()> {
    if WORKERS.get().is_some() {
        return Ok(());
    }
    let mut others = Vec::new();
    for i in 1..threads.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        others.push(rt.handle().clone());
        std::thread::Builder::new().name(format!("xlb-l7-{i}")).spawn(move || {
            INDEX.with(|c| c.set(i));
            rt.block_on(super::timers::pacemaker());
        })?;
    }
    if Handle::try_current().is_ok() {
        tokio::spawn(super::timers::pacemaker());
    }
    let _ = WORKERS.set(Workers {
        others,
        next: AtomicUsize::new(0),
    });
    Ok(())
}

/// Serving threads (1 before `start`).
pub fn count() -> usize {
    WORKERS.get().map_or(1, |w| w.others.len() + 1)
}

/// The serving thread this code runs on (0 outside the serving threads).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Runs `make()`'s future on the next serving thread, round robin. `make`
/// runs on that thread, so it can register sockets with its runtime.
pub fn spawn<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(w) = WORKERS.get().filter(|w| !w.others.is_empty()) else {
        tokio::spawn(make());
        return;
    };
    match w.next.fetch_add(1, Ordering::Relaxed) % (w.others.len() + 1) {
        0 => drop(tokio::spawn(make())),
        i => drop(w.others[i - 1].spawn(async move { make().await })),
    }
}
