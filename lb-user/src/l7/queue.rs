//! HAProxy's `maxconn` and queue: a backend with `maxconn` takes at most
//! that many requests at once (from the connect to the end of the
//! response body, or for the life of a tunnel); a request that finds its
//! server full waits in the service's queue, first come first served, up
//! to `timeout_queue`, then gets 503. A request that persistence tied to a
//! server waits for that server; a balanced one takes the first server of
//! its pool that frees a place. A place that frees goes straight to the
//! first waiter that can use it.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::counters::{BackendCounters, ServiceCounters};

/// The waiting requests of one service; what it counts goes to the
/// service's counters. Both outlive reloads: a place that a request of
/// the config before frees goes to a waiter of the new one, matched by
/// backend (its counters), not by position in a config.
pub struct Queue {
    waiting: Mutex<VecDeque<Waiter>>,
    counters: Arc<ServiceCounters>,
}

/// Which servers a waiting request can use.
pub enum Wants {
    /// The server persistence chose.
    One(usize),
    /// Any of these (its pool's eligible servers).
    Any(Vec<usize>),
}

struct Waiter {
    wants: Wants,
    /// Its service's backends, as `wants` numbers them.
    counters: Arc<[Arc<BackendCounters>]>,
    tx: oneshot::Sender<Permit>,
}

impl Waiter {
    /// Its number for the backend whose place frees, if it can use it.
    fn accepts(&self, freed: &Arc<BackendCounters>) -> Option<usize> {
        let is = |i: &usize| self.counters.get(*i).is_some_and(|c| Arc::ptr_eq(c, freed));
        match &self.wants {
            Wants::One(t) => Some(*t).filter(is),
            Wants::Any(v) => v.iter().copied().find(is),
        }
    }
}

/// Counts a request in the queue while it waits (also when its wait is
/// cancelled: an HTTP/2 stream reset).
struct Waiting<'a>(&'a ServiceCounters, Instant);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Relaxed);
        let ms = self.1.elapsed().as_millis() as u64;
        self.0.queue_wait_ms_total.fetch_add(ms, Relaxed);
    }
}

/// A place at a backend: held by a request until its response ends.
pub struct Permit {
    /// None once given back.
    queue: Option<Arc<Queue>>,
    counters: Arc<[Arc<BackendCounters>]>,
    pub backend: usize,
    /// Its place in the queue when it came (1: first), if it waited:
    /// HAProxy's `srv_queue`/`backend_queue` log fields.
    pub place: Option<u64>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(q) = self.queue.take() {
            q.release(self.backend, &self.counters);
        }
    }
}

/// Per backend: its maxconn (0: none) and counters (`busy` is the count).
pub struct Limits {
    pub maxconn: Arc<[usize]>,
    pub counters: Arc<[Arc<BackendCounters>]>,
}

impl Limits {
    pub fn has_room(&self, i: usize) -> bool {
        self.maxconn[i] == 0 || self.counters[i].busy.load(Relaxed) < self.maxconn[i]
    }
}

impl Queue {
    pub fn new(counters: Arc<ServiceCounters>) -> Arc<Queue> {
        Arc::new(Queue {
            waiting: Mutex::default(),
            counters,
        })
    }

    /// A place at `i`, if it has one now.
    fn try_take(self: &Arc<Queue>, limits: &Limits, i: usize) -> Option<Permit> {
        let max = limits.maxconn[i];
        let busy = &limits.counters[i].busy;
        let took = if max == 0 {
            busy.fetch_add(1, Relaxed);
            true
        } else {
            busy.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
                .is_ok()
        };
        took.then(|| Permit {
            queue: Some(self.clone()),
            counters: limits.counters.clone(),
            backend: i,
            place: None,
        })
    }

    /// A place at the first of `order` that has one, without waiting.
    pub fn take_now(self: &Arc<Queue>, limits: &Limits, order: &[usize]) -> Option<Permit> {
        order.iter().find_map(|i| self.try_take(limits, *i))
    }

    /// Waits for a place at a server `wants` accepts, up to `within`.
    /// Err: the time is up, with the place in the queue the request had.
    pub async fn wait(self: &Arc<Queue>, limits: &Limits, wants: Wants, within: Duration) -> Result<Permit, u64> {
        let rx = {
            let mut waiting = self.waiting.lock().expect("queue lock");
            // Under the lock: a place freed since the caller looked is
            // not missed.
            let now = match &wants {
                Wants::One(i) => self.try_take(limits, *i),
                Wants::Any(v) => self.take_now(limits, v),
            };
            if let Some(p) = now {
                return Ok(p);
            }
            let (tx, rx) = oneshot::channel();
            let counters = limits.counters.clone();
            waiting.push_back(Waiter { wants, counters, tx });
            rx
        };
        let c = &self.counters;
        let n = c.queued.fetch_add(1, Relaxed) + 1;
        c.queued_max.fetch_max(n, Relaxed);
        c.queued_total.fetch_add(1, Relaxed);
        let _waiting = Waiting(c, Instant::now());
        let got = tokio::time::timeout(within, rx).await;
        match got {
            Ok(Ok(mut p)) => {
                p.place = Some(n);
                Ok(p)
            }
            _ => {
                c.queue_timeouts.fetch_add(1, Relaxed);
                Err(n)
            }
        }
    }

    /// A place at `i` frees: to the first waiter that can use it, else
    /// back to the server.
    fn release(self: &Arc<Queue>, i: usize, counters: &Arc<[Arc<BackendCounters>]>) {
        let freed = &counters[i];
        let mut waiting = self.waiting.lock().expect("queue lock");
        while let Some((at, j)) = waiting
            .iter()
            .enumerate()
            .find_map(|(at, w)| w.accepts(freed).filter(|_| !w.tx.is_closed()).map(|j| (at, j)))
        {
            let w = waiting.remove(at).expect("found above");
            let permit = Permit {
                queue: Some(self.clone()),
                counters: w.counters.clone(),
                backend: j,
                place: None,
            };
            match w.tx.send(permit) {
                Ok(()) => return,
                // It gave up just now: the place is not given back through
                // the permit's drop (that takes this lock), but below.
                Err(mut p) => p.queue = None,
            }
        }
        // Waiters that gave up are dropped on the way.
        waiting.retain(|w| !w.tx.is_closed());
        freed.busy.fetch_sub(1, Relaxed);
    }
}

/// A response body that holds its request's place at the backend until
/// it ends (or is dropped).
pub struct Held<B> {
    body: B,
    permit: Option<Permit>,
}

impl<B> Held<B> {
    pub fn new(body: B, permit: Permit) -> Held<B> {
        Held {
            body,
            permit: Some(permit),
        }
    }
}

impl<B: Body + Unpin> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: &[usize]) -> Limits {
        Limits {
            maxconn: max.to_vec().into(),
            counters: max.iter().map(|_| Arc::new(BackendCounters::default())).collect(),
        }
    }

    #[tokio::test]
    async fn a_freed_place_goes_to_the_first_waiter_that_can_use_it() {
        let q = Queue::new(Default::default());
        let l = limits(&[1, 1]);
        let a = q.take_now(&l, &[0]).expect("room at 0");
        assert!(q.take_now(&l, &[0]).is_none(), "0 is full");
        let b = q.take_now(&l, &[0, 1]).expect("room at 1");
        assert_eq!(b.backend, 1);
        // Two wait: one for server 1 only, one for any.
        let (q1, q2) = (q.clone(), q.clone());
        let l1 = Limits {
            maxconn: l.maxconn.clone(),
            counters: l.counters.clone(),
        };
        let l2 = Limits {
            maxconn: l.maxconn.clone(),
            counters: l.counters.clone(),
        };
        let for1 = tokio::spawn(async move {
            q1.wait(&l1, Wants::One(1), Duration::from_secs(5))
                .await
                .map(|p| (p.backend, p.place))
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let any = tokio::spawn(async move {
            q2.wait(&l2, Wants::Any(vec![0, 1]), Duration::from_secs(5))
                .await
                .map(|p| (p.backend, p.place))
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(q.counters.queued.load(Relaxed), 2);
        drop(a); // server 0 frees: only the second waiter can use it
                 // Each logs the place it had in the queue (HAProxy counts from 1).
        assert_eq!(any.await.unwrap(), Ok((0, Some(2))));
        drop(b);
        assert_eq!(for1.await.unwrap(), Ok((1, Some(1))));
        assert_eq!(
            l.counters[0].busy.load(Relaxed) + l.counters[1].busy.load(Relaxed),
            0,
            "all permits dropped"
        );
        let s = q.counters.snapshot(0);
        assert_eq!((s.queued, s.queued_max, s.queued_total, s.queue_timeouts), (0, 2, 2, 0));
    }

    #[tokio::test]
    async fn a_place_freed_under_the_old_config_goes_to_a_waiter_of_the_new() {
        let q = Queue::new(Default::default());
        let old = limits(&[1, 1]);
        let held = q.take_now(&old, &[1]).unwrap();
        // The reload drops backend 0: the same backend is now number 0.
        let new = Limits {
            maxconn: vec![1].into(),
            counters: vec![old.counters[1].clone()].into(),
        };
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            q2.wait(&new, Wants::One(0), Duration::from_secs(5))
                .await
                .map(|p| p.backend)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(0));
        assert_eq!(old.counters[1].busy.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_its_time_and_no_place_is_lost() {
        let q = Queue::new(Default::default());
        let l = limits(&[1]);
        let p = q.take_now(&l, &[0]).unwrap();
        assert_eq!(
            q.wait(&l, Wants::One(0), Duration::from_millis(30)).await.err(),
            Some(1)
        );
        assert_eq!(q.counters.snapshot(0).queue_timeouts, 1);
        drop(p);
        assert_eq!(l.counters[0].busy.load(Relaxed), 0);
        assert!(q.take_now(&l, &[0]).is_some(), "the place is free again");
    }
}
