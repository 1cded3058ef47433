//! The xlb network-namespace lab: topologies of namespaces joined by veth
//! pairs on a bridge, tiny backend servers that answer with their own name,
//! helpers to run `xlb` inside them, and packet builders for fixtures.
//!
//! Everything a lab creates is removed when it is dropped, also when a test
//! panics; names carry the process id so parallel runs never collide, and a
//! new lab removes what a killed run left behind.

pub mod bpffs;
pub mod fib_ns;
pub mod ha;
pub mod http;
pub mod l4;
pub mod l7;
pub mod netns;
pub mod packet;
pub mod servers;
pub mod tls;
pub mod topology;
pub mod xdp_pass;
pub mod xlb;

pub use netns::Netns;
pub use topology::{Host, Lab, LabSpec};
pub use xlb::XlbProcess;

/// True when this process may create namespaces and load BPF (root).
pub fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (returns early from) a lab test that cannot run here, loudly. On CI
/// (`CI` set) a lab test that cannot run is a failure, not a skip.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::have_root() {
            if std::env::var_os("CI").is_some() {
                panic!("lab tests need root and network namespaces, and CI must run them");
            }
            eprintln!(
                "\n*** SKIPPED {}: lab tests need root (network namespaces, BPF) ***\n",
                module_path!()
            );
            return;
        }
    };
}
