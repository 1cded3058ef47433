//! Request counters of the L7 proxy, per service and per backend. They
//! live in the proxy, not in a service's configuration, so a reload keeps
//! them (and leastconn keeps its in-flight counts).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Requests in flight (leastconn reads it).
    pub active: AtomicUsize,
    /// Requests holding a place under `maxconn` (from the connect to the
    /// end of the response).
    pub busy: AtomicUsize,
    pub requests: AtomicU64,
    /// Responses by class: 1xx .. 5xx (what the backend answered, or the
    /// proxy's 502/504 for it).
    pub responses: [AtomicU64; 5],
    pub connect_errors: AtomicU64,
    pub retries: AtomicU64,
    pub redispatches: AtomicU64,
}

#[derive(Debug, Default)]
pub struct ServiceCounters {
    pub requests: AtomicU64,
    /// Client connections open now (HAProxy's feconn).
    pub conns: AtomicU64,
    /// Answered by the proxy itself because no server could take them.
    pub no_server: AtomicU64,
    /// Refused before balancing (413 and the like).
    pub refused: AtomicU64,
    /// Requests that went to a route's backend group.
    pub routed: AtomicU64,
    /// Idle keep-alive client connections parked now.
    pub parked: AtomicU64,
    /// TLS handshakes done, and failed (or timed out).
    pub tls_handshakes: AtomicU64,
    pub tls_failed: AtomicU64,
    /// Of the handshakes done, those that resumed a session.
    pub tls_resumed: AtomicU64,
    /// Upgraded (WebSocket) connections open now, and ever.
    pub tunnels: AtomicU64,
    pub tunnels_total: AtomicU64,
    /// Connections closed for a missing or malformed PROXY header.
    pub proxy_refused: AtomicU64,
    /// Requests waiting for a backend under maxconn now, the most at once,
    /// ever, their total wait, and those that waited too long (503).
    pub queued: AtomicU64,
    pub queued_max: AtomicU64,
    pub queued_total: AtomicU64,
    pub queue_wait_ms_total: AtomicU64,
    pub queue_timeouts: AtomicU64,
}

/// A copy of the counters of one backend, for reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendSnapshot {
    pub active: u64,
    /// Places taken under maxconn.
    #[serde(default)]
    pub busy: u64,
    pub requests: u64,
    /// 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
    pub connect_errors: u64,
    pub retries: u64,
    pub redispatches: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    pub requests: u64,
    pub no_server: u64,
    pub refused: u64,
    pub routed: u64,
    /// Entries in the appsession table.
    pub sessions: u64,
    /// Idle keep-alive client connections parked now.
    #[serde(default)]
    pub parked: u64,
    #[serde(default)]
    pub tls_handshakes: u64,
    #[serde(default)]
    pub tls_failed: u64,
    #[serde(default)]
    pub tls_resumed: u64,
    #[serde(default)]
    pub tunnels: u64,
    #[serde(default)]
    pub tunnels_total: u64,
    #[serde(default)]
    pub proxy_refused: u64,
    #[serde(default)]
    pub queued: u64,
    #[serde(default)]
    pub queued_max: u64,
    #[serde(default)]
    pub queued_total: u64,
    /// Mean wait of the requests that waited in the queue.
    #[serde(default)]
    pub queue_wait_ms_avg: u64,
    #[serde(default)]
    pub queue_timeouts: u64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl BackendCounters {
    pub fn response(&self, status: u16) {
        if let Some(c) = self.responses.get(usize::from(status / 100).wrapping_sub(1)) {
            bump(c);
        }
    }

    pub fn snapshot(&self) -> BackendSnapshot {
        BackendSnapshot {
            active: self.active.load(Ordering::Relaxed) as u64,
            busy: self.busy.load(Ordering::Relaxed) as u64,
            requests: get(&self.requests),
            responses: std::array::from_fn(|i| get(&self.responses[i])),
            connect_errors: get(&self.connect_errors),
            retries: get(&self.retries),
            redispatches: get(&self.redispatches),
        }
    }
}

impl ServiceCounters {
    pub fn snapshot(&self, sessions: usize) -> ServiceSnapshot {
        ServiceSnapshot {
            requests: get(&self.requests),
            no_server: get(&self.no_server),
            refused: get(&self.refused),
            routed: get(&self.routed),
            sessions: sessions as u64,
            parked: get(&self.parked),
            tls_handshakes: get(&self.tls_handshakes),
            tls_failed: get(&self.tls_failed),
            tls_resumed: get(&self.tls_resumed),
            tunnels: get(&self.tunnels),
            tunnels_total: get(&self.tunnels_total),
            proxy_refused: get(&self.proxy_refused),
            queued: get(&self.queued),
            queued_max: get(&self.queued_max),
            queued_total: get(&self.queued_total),
            queue_wait_ms_avg: get(&self.queue_wait_ms_total)
                .checked_div(get(&self.queued_total))
                .unwrap_or(0),
            queue_timeouts: get(&self.queue_timeouts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_by_class() {
        let c = BackendCounters::default();
        for s in [100, 200, 204, 302, 404, 503, 599, 0, 600, 99] {
            c.response(s);
        }
        assert_eq!(c.snapshot().responses, [1, 2, 1, 1, 2]);
    }
}
