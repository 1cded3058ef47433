//! What operators reach: the admin API (`admin`), Prometheus metrics
//! (`metrics`) and the HTML stats page (`stats_page`).

pub mod admin;
pub mod metrics;
pub mod stats_page;
