//! `global.maxconn` (HAProxy's `maxconn`): the proxy stops accepting while
//! that many client connections are open, across all http services, so
//! new ones wait in the kernel's accept queue instead of exhausting file
//! descriptors and memory. [`Accepted`] is what a client connection
//! carries from accept to close, parked or not; its slot frees on drop.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, RwLock,
    },
};

use tokio::sync::Notify;

use super::{
    counters::ServiceCounters,
    service::{Service, States},
};

/// Set when this process hands its listeners to a new one: keep-alive
/// connections close after their current response, idle ones at once.
static DRAINING: AtomicBool = AtomicBool::new(false);

static DRAIN: Notify = Notify::const_new();

/// This process is leaving: connections end as soon as they are idle.
pub fn drain() {
    DRAINING.store(true, Relaxed);
    DRAIN.notify_waiters();
}

pub fn draining() -> bool {
    DRAINING.load(Relaxed)
}

/// Returns once this process is leaving.
pub async fn drained() {
    loop {
        let told = DRAIN.notified();
        if draining() {
            return;
        }
        told.await;
    }
}

/// Client connections open in this process (HAProxy's actconn).
static OPEN: AtomicUsize = AtomicUsize::new(0);

pub fn open_now() -> u64 {
    OPEN.load(Relaxed) as u64
}

/// The shared count of open client connections and its cap.
#[derive(Debug)]
pub struct Gate {
    /// Changed by reloads.
    max: AtomicUsize,
    open: AtomicUsize,
    /// Times an accept had to wait for a connection to close.
    reached: AtomicU64,
    freed: Notify,
}

impl Gate {
    pub fn new(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
            reached: AtomicU64::new(0),
            freed: Notify::new(),
        })
    }

    /// Waits until there is room for one more connection. (Listeners
    /// wait here, then accept and take a slot: several of them may pass at
    /// once and go over by a connection each, never by more.)
    pub async fn room(&self) {
        let mut counted = false;
        loop {
            let freed = self.freed.notified();
            if self.open.load(Relaxed) < self.max.load(Relaxed) {
                return;
            }
            if !counted {
                self.reached.fetch_add(1, Relaxed);
                counted = true;
            }
            freed.await;
        }
    }

    /// The slot of a connection just accepted.
    pub fn take(self: &Arc<Gate>) -> Slot {
        self.open.fetch_add(1, Relaxed);
        OPEN.fetch_add(1, Relaxed);
        Slot(self.clone())
    }

    /// A new cap; connections over a lowered one stay until they close.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Relaxed);
        self.freed.notify_waiters();
    }

    pub fn snapshot(&self) -> GateSnapshot {
        GateSnapshot {
            open: self.open.load(Relaxed),
            max: self.max.load(Relaxed),
            reached: self.reached.load(Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateSnapshot {
    pub open: usize,
    pub max: usize,
    pub reached: u64,
}

/// One open client connection's place under the cap.
#[derive(Debug)]
pub struct Slot(Arc<Gate>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        OPEN.fetch_sub(1, Relaxed);
        self.0.freed.notify_waiters();
    }
}

/// A client connection's context: who it is, the service it came in on
/// (swapped on reload), and its slot.
pub struct Accepted {
    pub peer: SocketAddr,
    pub current: Arc<RwLock<Arc<Service>>>,
    pub states: States,
    pub slot: Slot,
    pub front: FrontConn,
    /// A request came on it (else closing it is a null connection).
    pub served: bool,
    /// When it came (if its service logs): null-connection lines date
    /// from the accept, not from a TLS handshake or a parking.
    pub opened: Option<Arrival>,
}

/// When a connection or a request came (a request: its first byte).
/// Here, not in `access`, which imports this module.
#[derive(Clone, Copy)]
pub struct Arrival {
    pub at: std::time::Instant,
    pub date: std::time::SystemTime,
}

impl Arrival {
    pub fn now() -> Arrival {
        Arrival {
            at: std::time::Instant::now(),
            date: std::time::SystemTime::now(),
        }
    }
}

/// Keeps a service's count of open client connections (HAProxy's
/// `feconn`) while a connection is open.
pub struct FrontConn(Arc<ServiceCounters>);

impl FrontConn {
    pub fn new(counters: Arc<ServiceCounters>) -> FrontConn {
        counters.conns.fetch_add(1, Relaxed);
        FrontConn(counters)
    }
}

impl Drop for FrontConn {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_holds_until_a_slot_frees() {
        let gate = Gate::new(2);
        gate.room().await;
        let a = gate.take();
        gate.room().await;
        let _b = gate.take();
        let g = gate.clone();
        let third = tokio::spawn(async move {
            g.room().await;
            g.take()
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!third.is_finished(), "a third waits");
        assert_eq!(gate.snapshot().open, 2);
        drop(a);
        let _c = tokio::time::timeout(std::time::Duration::from_secs(1), third)
            .await
            .expect("admitted once one closed")
            .unwrap();
        let s = gate.snapshot();
        assert_eq!((s.open, s.max, s.reached), (2, 2, 1));
    }
}
