//! What operators reach: the admin API (`admin`), the runtime config API
//! (`config_api`, `openapi`), Prometheus metrics (`metrics`) and the HTML
//! stats page (`stats_page`).

pub mod admin;
pub mod config_api;
pub mod metrics;
pub mod openapi;
pub mod stats_page;
