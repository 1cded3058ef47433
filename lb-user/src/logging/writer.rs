//! The bounded queue between the threads that make log lines and the one
//! thread that writes them.

use std::{
    mem,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed},
        Condvar, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use super::{sink::Sinks, Entry, Setup, Severity};

/// Lines waiting at most; past this they are dropped (and counted).
const CAPACITY: usize = 8192;
/// The writer is woken at once when this many lines wait; below it, a
/// busy writer looks again after [`LINGER`], so that lines go out in
/// batches and a request does not pay a wake-up.
const BATCH: usize = 256;
const LINGER: Duration = Duration::from_millis(5);

struct Queue {
    lines: Vec<Entry>,
    /// The writer waits for a first line (and must be woken for it).
    idle: bool,
    /// A new setup for the writer to switch to.
    setup: Option<Setup>,
}

struct Logger {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The setup's level, and whether any sink takes daemon messages, for
    /// a check without the lock.
    level: AtomicU8,
    syslog: AtomicBool,
    dropped: AtomicU64,
    sent: AtomicU64,
    /// Lines the writer has finished with (sent or dropped), for [`flush`].
    done: AtomicU64,
    pushed: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Sets the sinks (at start and on each reload); the first call starts the
/// writer thread.
pub fn configure(setup: Setup) {
    let logger = LOGGER.get_or_init(|| {
        let logger = Logger {
            queue: Mutex::new(Queue {
                lines: Vec::with_capacity(BATCH),
                idle: true,
                setup: None,
            }),
            wake: Condvar::new(),
            level: AtomicU8::new(Severity::Info as u8),
            syslog: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
        };
        std::thread::Builder::new()
            .name("xlb-log".into())
            .spawn(run)
            .expect("spawning the log writer");
        logger
    });
    logger.level.store(setup.level as u8, Relaxed);
    logger.syslog.store(setup.sinks.iter().any(|s| s.syslog()), Relaxed);
    let mut q = logger.queue.lock().expect("log queue");
    q.setup = Some(setup);
    logger.wake.notify_one();
}

/// A line of this severity would go somewhere (daemon messages: to a
/// syslog sink).
pub fn enabled(severity: Severity, daemon: bool) -> bool {
    LOGGER
        .get()
        .is_some_and(|l| severity as u8 <= l.level.load(Relaxed) && (!daemon || l.syslog.load(Relaxed)))
}

/// Queues a line, or drops (and counts) it when the queue is full.
pub fn push(entry: Entry) {
    let Some(l) = LOGGER.get() else { return };
    if entry.severity() as u8 > l.level.load(Relaxed) {
        return;
    }
    let mut q = l.queue.lock().expect("log queue");
    if q.lines.len() >= CAPACITY {
        drop(q);
        l.dropped.fetch_add(1, Relaxed);
        return;
    }
    q.lines.push(entry);
    l.pushed.fetch_add(1, Relaxed);
    if q.idle || q.lines.len() == BATCH {
        q.idle = false;
        l.wake.notify_one();
    }
}

/// Lines dropped: the queue was full, or a sink did not take them.
pub fn dropped() -> u64 {
    LOGGER.get().map_or(0, |l| l.dropped.load(Relaxed))
}

/// Counts lines lost before they reached the queue (the data path's
/// flow records, for one).
pub fn count_dropped(n: u64) {
    if let Some(l) = LOGGER.get() {
        l.dropped.fetch_add(n, Relaxed);
    }
}

/// Lines sent to a sink (counted once per sink).
pub fn sent() -> u64 {
    LOGGER.get().map_or(0, |l| l.sent.load(Relaxed))
}

/// Waits (up to `within`) until what is queued now has been written: for
/// a clean exit.
pub fn flush(within: Duration) {
    let Some(l) = LOGGER.get() else { return };
    let target = l.pushed.load(Relaxed);
    {
        let mut q = l.queue.lock().expect("log queue");
        q.idle = false;
        l.wake.notify_one();
    }
    let until = Instant::now() + within;
    while l.done.load(Relaxed) < target && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The writer thread: takes what is queued in one go and writes it.
fn run() {
    let l = loop {
        // `configure` spawns this before it stores the logger.
        if let Some(l) = LOGGER.get() {
            break l;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut sinks = Sinks::default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let setup = {
            let mut q = l.queue.lock().expect("log queue");
            while q.lines.is_empty() && q.setup.is_none() {
                q.idle = true;
                q = l.wake.wait(q).expect("log queue");
            }
            if q.lines.len() < BATCH && q.setup.is_none() {
                // More lines may come; they go out with these.
                q = l.wake.wait_timeout(q, LINGER).expect("log queue").0;
            }
            mem::swap(&mut q.lines, &mut batch);
            q.setup.take()
        };
        if let Some(s) = setup {
            sinks = Sinks::open(s);
        }
        let n = batch.len() as u64;
        let (sent, dropped) = sinks.write(&batch);
        batch.clear();
        l.sent.fetch_add(sent, Relaxed);
        l.dropped.fetch_add(dropped, Relaxed);
        l.done.fetch_add(n, Relaxed);
    }
}
