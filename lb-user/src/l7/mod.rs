//! The L7 proxy for `mode = "http"` services: HTTP/1.1 (keep-alive both
//! sides) and HTTP/2 from clients (h2 over TLS, h2c), TLS termination,
//! HAProxy's cookie persistence and
//! balancing, retries and redispatch, X-Forwarded-For, monitor URI.
//! Runs with or without the XDP tier: an http-only config needs no BPF,
//! and nothing here imports the L4 code.
//!
//! - listeners and reloads: `proxy`; a service as it runs: `service`
//! - one request: `exchange`, its access log line: `access`; persistence: `persistence`, `cookie`,
//!   `appsession`, `peers`; choosing a server: `balance`
//! - HTTP/1 both ways: `http1`; TLS, h2 and h2c and the connection
//!   entry: `serve`; plain or TLS under HTTP/1: `transport`
//! - the PROXY protocol both ways: `proxy_protocol`; maxconn: `queue`
//! - upgraded (WebSocket) connections joined to their backend: `tunnel`
//! - threads and idle connections: `workers`, `parking`, `timers`; backend
//!   connections: `pool`; counters: `counters`

mod access;
pub mod admission;
pub mod appsession;
pub mod balance;
pub mod body;
pub mod cookie;
pub mod counters;
mod exchange;
pub mod http1;
mod parking;
pub mod peers;
mod persistence;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
mod queue;
mod serve;
pub mod service;
mod timers;
mod transport;
mod tunnel;
pub mod workers;

pub use proxy::{Proxy, ProxyError};
pub use service::{Service, States};
