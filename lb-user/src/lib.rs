//! xlb user space. Dependencies point one way, top to bottom:
//!
//! - `model`, `auth`, `tls`, `logging`, then `admin_client`: small shared
//!   leaves
//! - `config`: the file, its validation and the typed model
//! - `l4` (the XDP tier), `l7` (the HTTP proxy), then `control` (the
//!   daemon, reloads, health, VIPs) over both
//! - `ops`: the admin API, metrics and stats page, over `control`
//! - `app`: `xlb run`, wiring it all together
//!
//! The `layering` test checks this order and that no module imports one
//! that imports it.
pub mod admin_client;
pub mod app;
pub mod auth;
pub mod config;
pub mod control;
pub mod l4;
pub mod l7;
pub mod logging;
pub mod model;
pub mod ops;
pub mod tls;
