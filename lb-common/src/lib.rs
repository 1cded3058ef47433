//! Types shared by the XDP program (`lb-ebpf`) and user space (`lb-user`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding and its size
//! asserted at compile time, so both sides agree on the layout byte for byte.
//! Fields in network byte order carry a `_be` suffix; `[u8; N]` addresses are
//! network order by nature.
#![no_std]

/// Map names, shared so user space never spells them differently.
pub mod maps {
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const OUTCOMES: &str = "OUTCOMES";
}

/// Name of the XDP entry point in the object file.
pub const XDP_PROGRAM: &str = "xlb";

/// Capacity of the service map and of the per-service counter array.
pub const MAX_SERVICES: u32 = 1024;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of the service map: (VIP, port, protocol).
///
/// An IPv4 VIP occupies the first four bytes of `addr`; the rest stay zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

impl ServiceKey {
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            addr: a,
            port_be: port.to_be(),
            proto,
            family: FAMILY_V4,
        }
    }

    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port_be: port.to_be(),
            proto,
            family: FAMILY_V6,
        }
    }
}

/// Value of the service map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service arrays (counters, later Maglev tables).
    pub id: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);

/// Per-CPU counters of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 16);

/// What the XDP program did with a packet: indexes of the `OUTCOMES` per-CPU
/// array. Every packet is counted under exactly one outcome.
pub mod outcome {
    /// Not IPv4/IPv6, or not TCP/UDP, or not addressed to a service: passed untouched.
    pub const PASS_NOT_SERVICE: u32 = 0;
    /// Addressed to a service and handed to the kernel stack.
    pub const PASS_SERVICE: u32 = 1;
    /// Headers shorter than they claim: passed untouched for the kernel to judge.
    pub const PASS_PARSE_ERROR: u32 = 2;
    /// IPv4 fragment (first or later): passed untouched, no L4 header to trust.
    pub const PASS_FRAGMENT: u32 = 3;
    pub const COUNT: u32 = 4;

    /// Names in index order, for status output.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_service",
        "pass_service",
        "pass_parse_error",
        "pass_fragment",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data without padding holes or invalid bit patterns.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::ServiceStats {}
}
