//! The XDP tier: the aya edge (`bpf`), pinning (`pins`), the service
//! table and the maps built from the config (`service_table`, `map_manager`), and
//! attaching with take-over of a running data plane (`dataplane`), and the
//! flow-state sync between nodes (`sync`), flow logs (`flow_log`).

pub mod bpf;
pub mod dataplane;
pub mod events;
pub mod flow_log;
pub mod map_manager;
pub mod pins;
pub mod service_table;
pub mod sync;
