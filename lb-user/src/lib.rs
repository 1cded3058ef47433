//! xlb user space: config, XDP loader and map manager, admin API.
pub mod admin;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod l7;
pub mod map_manager;
pub mod metrics;
pub mod netlink;
pub mod pins;
pub mod service_table;
pub mod stats_page;
pub mod status;
pub mod transaction;
pub mod vip;
