//! Idle keep-alive client connections, parked off the runtime. After
//! [`PARK_AFTER`] without a request, an HTTP/1 connection's task ends and
//! its socket (with its TLS session, if it has one) waits in its serving
//! thread's lot: an epoll set of the
//! lot's own, watched by one task per thread. A parked connection costs
//! about a hundred bytes instead of a task and a reactor registration
//! (about 1.6 KiB); HAProxy, too, keeps little more than the socket of an
//! idle connection. Its next bytes (or its closing) start a new task for
//! it; `timeout_client` still closes it when it stays silent.

use std::{
    cell::RefCell,
    collections::HashMap,
    io,
    os::fd::RawFd,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use mio::{unix::SourceFd, Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;

use super::{
    admission::Accepted,
    counters::ServiceCounters,
    transport::{Asleep, Transport},
};

/// How long a connection waits for its next request on its own task before
/// it is parked. Parking and waking cost a few microseconds (four epoll
/// calls and a new task), so connections busier than this never park.
pub const PARK_AFTER: Duration = Duration::from_millis(200);

/// Parked connections between two returns of freed memory to the system.
const TRIM_AFTER: usize = 32;
/// How often the lot closes the connections whose client timeout passed.
const SWEEP: Duration = Duration::from_millis(250);

/// What serves a connection again when it wakes: the HTTP/1 server,
/// passed in so that the lot does not depend on it.
pub type Resume = fn(Asleep, Accepted);

/// A parked connection: what it needs to be served again.
struct Parked {
    asleep: Asleep,
    resume: Resume,
    conn: Accepted,
    /// Closed if still silent then.
    until: Instant,
    _counted: Counted,
}

/// Counts a connection in its service's gauge of parked ones while it lives.
struct Counted(Arc<ServiceCounters>);

impl Counted {
    fn new(counters: Arc<ServiceCounters>) -> Counted {
        counters.parked.fetch_add(1, Relaxed);
        Counted(counters)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Relaxed);
    }
}

/// This thread's lot: the registry of its epoll set and what is in it.
struct Lot {
    registry: Registry,
    parked: HashMap<RawFd, Parked>,
    /// Parked since the last sweep.
    new: usize,
}

thread_local! {
    static LOT: RefCell<Option<Lot>> = const { RefCell::new(None) };
}

/// Parks `stream` until it has something to read, or until `until`. Gives
/// the stream back if it cannot be parked.
pub fn park<S: Transport>(stream: S, conn: Accepted, until: Instant, resume: Resume) -> Result<(), (S, Accepted)> {
    LOT.with(|lot| {
        let mut lot = lot.borrow_mut();
        if lot.is_none() {
            match open() {
                Ok(l) => *lot = Some(l),
                Err(e) => {
                    tracing::debug!("cannot open the parking lot: {e}");
                    return Err((stream, conn));
                }
            }
        }
        let lot = lot.as_mut().expect("opened above");
        let fd = stream.fd();
        // Registered before it leaves the runtime: bytes that arrive in
        // between are reported too (epoll reports a ready file when it
        // is added).
        if lot
            .registry
            .register(&mut SourceFd(&fd), Token(fd as usize), Interest::READABLE)
            .is_err()
        {
            return Err((stream, conn));
        }
        // Leaving tokio's reactor can only fail if the registration is
        // already gone; the connection is then closed, as on any error.
        if let Some(asleep) = stream.sleep() {
            lot.new += 1;
            let counters = conn.current.read().expect("service lock").counters.clone();
            let p = Parked {
                asleep,
                resume,
                conn,
                until,
                _counted: Counted::new(counters),
            };
            lot.parked.insert(fd, p);
        }
        Ok(())
    })
}

/// Opens this thread's epoll set and starts the task that watches it.
fn open() -> io::Result<Lot> {
    let poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    // SAFETY: the epoll fd is the Poll's own, open for as long as it lives
    // inside the AsyncFd.
    let watched = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    tokio::spawn(watch(watched));
    Ok(Lot {
        registry,
        parked: HashMap::new(),
        new: 0,
    })
}

/// Serves the parked connections that became readable, closes those whose
/// time is up.
async fn watch(mut poll: AsyncFd<Poll>) {
    let mut events = Events::with_capacity(256);
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            guard = poll.readable_mut() => {
                let Ok(mut guard) = guard else { return };
                if guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)).is_err() {
                    continue;
                }
                // A full batch may leave more: stay ready to ask again.
                if events.iter().count() < events.capacity() {
                    guard.clear_ready();
                }
                for e in events.iter() {
                    unpark(e.token().0 as RawFd);
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                // Dropped: closed, and so gone from the epoll set.
                let parked = LOT.with(|lot| {
                    let mut lot = lot.borrow_mut();
                    let lot = lot.as_mut()?;
                    let draining = super::admission::draining();
                    lot.parked.retain(|_, p| p.until > now && !draining);
                    Some(std::mem::take(&mut lot.new))
                });
                // The memory of the tasks that ended goes back to the
                // system (glibc keeps freed heap otherwise).
                if parked.unwrap_or(0) >= TRIM_AFTER {
                    // SAFETY: plain libc call, no pointers.
                    unsafe { libc::malloc_trim(0) };
                }
            }
        }
    }
}

/// A new task serves the parked connection `fd`.
fn unpark(fd: RawFd) {
    let parked = LOT.with(|lot| {
        let mut lot = lot.borrow_mut();
        let lot = lot.as_mut()?;
        let p = lot.parked.remove(&fd)?;
        let _ = lot.registry.deregister(&mut SourceFd(&fd));
        Some(p)
    });
    let Some(p) = parked else { return };
    (p.resume)(p.asleep, p.conn);
}
