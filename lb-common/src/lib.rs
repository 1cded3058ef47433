//! Types shared by the XDP program (`lb-ebpf`) and user space (`lb-user`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding and its size
//! asserted at compile time, so both sides agree on the layout byte for byte.
//! Fields in network byte order carry a `_be` suffix; `[u8; N]` addresses are
//! network order by nature. Structs holding addresses are 4-byte aligned so
//! that the XDP program copies and compares them a word at a time.
#![cfg_attr(not(any(feature = "std", test)), no_std)]

pub mod csum;
pub mod hash;
#[cfg(any(feature = "std", test))]
pub mod maglev;

/// Map names, shared so user space never spells them differently.
pub mod maps {
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const OUTCOMES: &str = "OUTCOMES";
    pub const RINGS: &str = "RINGS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOWS6: &str = "FLOWS6";
    pub const HOPS: &str = "HOPS";
    pub const SERVICE_HEAD: &str = "SERVICE_HEAD";
    pub const NAT_FLOWS: &str = "NAT_FLOWS";
    /// Switch of the rare-event log (`xlb debug datapath`), not pinned.
    pub const DEBUG: &str = "DEBUG";
    /// snat region → its address, written by every apply, not pinned.
    pub const SNAT_ADDRS: &str = "SNAT_ADDRS";
    /// Switch of the flow-sync events (`[sync]`), not pinned.
    pub const SYNC: &str = "SYNC";
    /// Ring buffer of `SyncEvent`s, not pinned.
    pub const SYNC_EVENTS: &str = "SYNC_EVENTS";
    /// Per-CPU count of events lost to a full ring buffer, not pinned.
    pub const SYNC_LOST: &str = "SYNC_LOST";
    /// Per service counter slot: which new flows to log, not pinned.
    pub const LOG_SAMPLE: &str = "LOG_SAMPLE";
    /// Ring buffer of `FlowLogEvent`s, not pinned.
    pub const FLOW_LOG: &str = "FLOW_LOG";
    /// Per-CPU count of flow log events lost to a full ring, not pinned.
    pub const FLOW_LOG_LOST: &str = "FLOW_LOG_LOST";
}

/// Name of the XDP entry point in the object file.
pub const XDP_PROGRAM: &str = "xlb";

/// Capacity of the service map and of the per-service counter array.
pub const MAX_SERVICES: u32 = 1024;
/// Slots of one Maglev ring (a prime).
pub const RING_SIZE: u32 = 65537;
/// Ring slots per `RINGS` element. An array map stores every element in 8
/// bytes, so one u32 slot per element made a ring 512 KiB; four 16-bit
/// slots make it 128 KiB, which a new flow's random read hits in cache far
/// more often.
pub const RING_PACK: u32 = 4;
/// `RINGS` elements of one ring.
pub const RING_ELEMS: u32 = RING_SIZE.div_ceil(RING_PACK);
/// One `RINGS` element: `RING_PACK` slots, each a backend id.
pub type RingElem = [u16; RING_PACK as usize];
/// A ring slot that names no backend (service without a usable backend).
pub const RING_EMPTY: u32 = u32::MAX;
/// `RING_EMPTY` as stored in a 16-bit slot.
pub const RING_EMPTY16: u16 = RING_EMPTY as u16;
/// Rings in the `RINGS` array: two per L4 service (the live one and the one
/// being written), so at most `MAX_RINGS / 2` nat/dsr services.
pub const MAX_RINGS: u32 = 128;
/// Capacity of the backend array (ids are indexes).
pub const MAX_BACKENDS: u32 = 4096;
// Backend ids fit a 16-bit ring slot, with room for RING_EMPTY16.
const _: () = assert!(MAX_BACKENDS < RING_EMPTY16 as u32);
/// Capacity of the IPv4 flow table (dsr flows; full-NAT flows live in
/// `NAT_FLOWS`): a million flows with room to spare, as the LRU's per-CPU
/// free lists start evicting a little before it is full.
pub const MAX_FLOWS: u32 = 1 << 20;
/// Capacity of the IPv6 flow table.
pub const MAX_FLOWS6: u32 = 65_536;
/// Source ports the full-NAT allocates from, below Linux's default
/// ephemeral range (32768-60999) so xlb's own connections never collide.
pub const SNAT_PORT_MIN: u16 = 1024;
pub const SNAT_PORT_MAX: u16 = 32767;
/// Full-NAT flows one snat address can hold: one per source port.
pub const NAT_PORTS: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
/// Distinct snat addresses (each owns `NAT_PORTS` slots of `NAT_FLOWS`,
/// 2 MiB): a million full-NAT flows at half occupancy, where port
/// allocation still practically never fails.
pub const MAX_SNATS: u32 = 64;
/// Addresses in one nat service's snat pool.
pub const MAX_POOL: usize = 16;
// A region index fits the pool's u8 slots.
const _: () = assert!(MAX_SNATS <= 256);
/// Slots a flow may sit in: its hash's port and the next ones.
pub const NAT_PROBES: u32 = 16;
/// A new flow may replace an unanswered one among its first slots only.
pub const NAT_EVICT_WITHIN: u32 = 2;

/// Name of the XDP object's global holding the kernel's HZ (jiffies per
/// second), set at load time: the program's clock is `bpf_jiffies64`, which
/// the verifier inlines into one load (`bpf_ktime_get_coarse_ns` costs a
/// helper call, 25 ns a packet here).
pub const HZ_GLOBAL: &str = "HZ";

/// Name of the XDP object's global holding the MAC address of the interface
/// the program is attached to (first six bytes of a u64, in wire order),
/// set at load time; 0 (tests, BPF_PROG_TEST_RUN) checks nothing. Frames to
/// another unicast MAC are not this host's: a bridge floods them to every
/// port while it has not learnt where a MAC is (a VRRP or ECMP peer's
/// during a failover), and forwarding them would duplicate the peer's work.
pub const LOCAL_MAC_GLOBAL: &str = "LOCAL_MAC";

/// How long a full-NAT flow keeps its port without packets, by state, in
/// seconds. A backend answers a new flow within a round trip inside the
/// site, so an unanswered one is given up after 2 s.
pub const NAT_IDLE_NEW: u64 = 2;
pub const NAT_IDLE_TCP: u64 = 900;
pub const NAT_IDLE_UDP: u64 = 300;
pub const NAT_IDLE_CLOSING: u64 = 10;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// An address as the maps hold it (16 bytes, an IPv4 address in the first
/// four) and its family.
pub fn addr16(ip: core::net::IpAddr) -> ([u8; 16], u8) {
    match ip {
        core::net::IpAddr::V4(a) => (pad_v4(a.octets()), FAMILY_V4),
        core::net::IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

/// Key of the service map: (VIP, port, protocol).
///
/// An IPv4 VIP occupies the first four bytes of `addr`; the rest stay zero.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

const fn pad_v4(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

impl ServiceKey {
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            addr: pad_v4(addr),
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

/// Service forwards with full-NAT.
pub const SVC_F_NAT: u32 = 1 << 0;
/// Service forwards with L2 direct routing (destination MAC rewrite only).
pub const SVC_F_DSR: u32 = 1 << 1;
/// New flows hash the 5-tuple instead of the source address.
pub const SVC_F_HASH_5TUPLE: u32 = 1 << 2;
// Neither SVC_F_NAT nor SVC_F_DSR: passed to the kernel (L7 proxy services).
/// Not a service: a snat address (key with port and protocol 0), whose
/// full-NAT flows sit in `NAT_FLOWS` region `snat_region`.
pub const SVC_F_SNAT: u32 = 1 << 3;

/// Slots of each half of the `SERVICES` table (a power of two, about eight
/// times what `MAX_SERVICES` services and `MAX_SNATS` snat addresses need).
pub const SVC_SLOTS: u32 = 8192;
/// Slots a lookup reads, from its key's home slot on: user space places
/// every key within them (choosing another seed when one would not fit).
pub const SVC_PROBES: u32 = 8;

/// Value of the service map.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service counter array.
    pub id: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// The live Maglev ring: elements `ring * RING_ELEMS ..` of `RINGS`.
    pub ring: u32,
    /// nat: addresses in the service's snat pool (1..=`MAX_POOL`); a snat
    /// address's own entry (`SVC_F_SNAT`): 1.
    pub snat_count: u32,
    /// nat: the `NAT_FLOWS` region (`NAT_PORTS` slots, one per port) of each
    /// pool address, in pool order; a flow's hash picks one. A snat
    /// address's own entry: its region first. Addresses are in `SNAT_ADDRS`.
    pub snat_regions: [u8; MAX_POOL],
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 32);

/// One slot of the `SERVICES` table; empty while `key.family` is 0.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlot {
    pub key: ServiceKey,
    pub _pad: u32,
    pub value: ServiceValue,
}
const _: () = assert!(core::mem::size_of::<ServiceSlot>() == 56);

/// The one element of `SERVICE_HEAD`: which half of `SERVICES` is live and
/// the seed of its home slots (`hash::service_home`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceHead {
    pub half: u32,
    pub seed: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceHead>() == 8);

/// Backend is out (failed or removed): its flows are re-balanced.
pub const BE_F_DOWN: u8 = 1 << 0;

/// One entry of the backend array.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub family: u8,
    /// `BE_F_*` bits.
    pub flags: u8,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

/// Per-CPU cache of a backend's next hop (index: backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopCache {
    /// Jiffies from which the entry must be refreshed (after a second:
    /// the route lookup costs about as much as the rest of the forwarding
    /// path; user space clears the cache when a backend changes); 0 = empty.
    pub expires: u64,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<HopCache>() == 32);

/// Per-CPU counters of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 24);

/// Per-CPU counters of one backend (packets forwarded to it).
pub type BackendStats = ServiceStats;

/// An IPv4 5-tuple as seen on the wire: key of the IPv4 flow table. IPv4
/// and IPv6 flows have tables of their own so that the common case hashes
/// and compares 16 bytes, not 40.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    // Two fields, not [u8; 3]: LLVM turns an array's zeroing into a memset
    // call, which BPF runs as a loop.
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);

/// An IPv6 5-tuple as seen on the wire: key of the IPv6 flow table.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    // Two fields: see FlowKey4.
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);

/// Value of the (dsr) flow tables, keyed by the 5-tuple as it arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// The backend (index of the backend array).
    pub backend: u32,
    /// The service's counter slot.
    pub service: u32,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 8);

/// `NatFlow::state`: slot never used.
pub const NAT_EMPTY: u8 = 0;
/// The client spoke, the backend has not answered yet.
pub const NAT_NEW: u8 = 1;
/// The backend answered.
pub const NAT_OPEN: u8 = 2;
/// A FIN or RST went by.
pub const NAT_CLOSING: u8 = 3;

/// One full-NAT flow: slot `snat_region * NAT_PORTS + port - SNAT_PORT_MIN`
/// of `NAT_FLOWS`, so the port towards the backend is the slot and a reply
/// finds its flow by its destination port alone. One cache line.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatFlow {
    pub client: [u8; 16],
    pub vip: [u8; 16],
    pub client_port_be: u16,
    pub vip_port_be: u16,
    /// Index of the backend array.
    pub backend: u16,
    pub proto: u8,
    /// `NAT_*` state.
    pub state: u8,
    /// Jiffies at the last packet; a new flow claims the slot by
    /// compare-and-swap on it (BPF has that for 64-bit words only).
    pub seen: u64,
    /// The interface the client's packets come in on; 0 for a flow another
    /// node synced here, until this node routes a packet of it (the MACs
    /// are then learnt from the client's packet or the FIB).
    pub ifindex: u32,
    /// Ethernet addresses of the client's packets (its or its router's, and
    /// ours), so replies need no route lookup.
    pub client_mac: [u8; 6],
    pub local_mac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<NatFlow>() == 64);

impl NatFlow {
    /// Whether `other` is the same connection (5-tuple as the client sent it).
    pub fn same_flow(&self, other: &NatFlow) -> bool {
        self.client == other.client
            && self.vip == other.vip
            && self.client_port_be == other.client_port_be
            && self.vip_port_be == other.vip_port_be
            && self.proto == other.proto
    }

    /// Seconds without a packet after which the flow gives up its port.
    #[inline(always)]
    pub const fn idle_secs(&self) -> u64 {
        match self.state {
            NAT_NEW => NAT_IDLE_NEW,
            NAT_CLOSING => NAT_IDLE_CLOSING,
            _ if self.proto == PROTO_TCP => NAT_IDLE_TCP,
            _ => NAT_IDLE_UDP,
        }
    }
}

/// Bytes of the `SYNC_EVENTS` ring buffer: about 58,000 events, a quarter
/// second of new flows at 200,000 a second before user space must have read.
pub const SYNC_RING_BYTES: u32 = 1 << 22;

/// Bytes of the `FLOW_LOG` ring buffer: 32,768 events.
pub const FLOW_LOG_BYTES: u32 = 1 << 20;

/// `FlowLogEvent::outcome`: the new flow went to `backend`.
pub const FLOW_FORWARDED: u8 = 0;
/// `FlowLogEvent::outcome`: dropped, no backend was up.
pub const FLOW_NO_BACKEND: u8 = 1;
/// `FlowLogEvent::outcome`: dropped, no full-NAT source port was free.
pub const FLOW_NO_PORT: u8 = 2;

/// A new flow of an L4 service whose `[service.log]` is on, written into
/// `FLOW_LOG` for the access log (one in `LOG_SAMPLE`'s rate).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowLogEvent {
    /// The client's address (IPv4: the first 4 bytes).
    pub src: [u8; 16],
    /// The service's counter slot.
    pub service: u32,
    /// Its backend id (`FLOW_FORWARDED` only).
    pub backend: u32,
    pub sport_be: u16,
    pub family: u8,
    /// `FLOW_*`.
    pub outcome: u8,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FlowLogEvent>() == 32);

/// `SyncEvent::kind`: a full-NAT flow was created or changed state.
pub const SYNC_NAT: u8 = 1;
/// `SyncEvent::kind`: a dsr flow was created.
pub const SYNC_DSR: u8 = 2;

/// A flow to tell the other nodes about (`[sync]`), written by the XDP
/// program into `SYNC_EVENTS` when a flow is created or changes state.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncEvent {
    /// `SYNC_*`.
    pub kind: u8,
    pub family: u8,
    pub _pad: u16,
    /// nat: the flow's index in `NAT_FLOWS` (snat region and port); dsr:
    /// the service's counter slot.
    pub slot: u32,
    /// nat: the slot as written. dsr: client, VIP, ports, protocol and
    /// backend; the rest zero.
    pub flow: NatFlow,
}
const _: () = assert!(core::mem::size_of::<SyncEvent>() == 72);

/// What the XDP program did with a packet: indexes of the `OUTCOMES` per-CPU
/// array. Every packet is counted under exactly one outcome.
pub mod outcome {
    /// Not IPv4/IPv6, or not TCP/UDP, or not addressed to a service: passed untouched.
    pub const PASS_NOT_SERVICE: u32 = 0;
    /// Addressed to an `http` service: handed to the kernel (the L7 proxy).
    pub const PASS_SERVICE: u32 = 1;
    /// Headers shorter than they claim: passed untouched for the kernel to judge.
    pub const PASS_PARSE_ERROR: u32 = 2;
    /// IPv4 fragment (first or later): passed untouched, no L4 header to trust.
    pub const PASS_FRAGMENT: u32 = 3;
    /// Forwarded out of the interface it came in on.
    pub const TX: u32 = 4;
    /// Forwarded out of another interface.
    pub const REDIRECT: u32 = 5;
    /// Service has no usable backend: new flows are dropped.
    pub const DROP_NO_BACKEND: u32 = 6;
    /// No route to the backend (or forwarding disabled).
    pub const DROP_NO_ROUTE: u32 = 7;
    /// Route found but the next hop's MAC is not resolved yet.
    pub const DROP_NO_NEIGH: u32 = 8;
    /// nat: no free source port found for a new flow.
    pub const DROP_NO_PORT: u32 = 9;
    /// Addressed to another host's MAC (flooded by a switch): passed
    /// untouched for the kernel to drop.
    pub const PASS_OTHER_HOST: u32 = 10;
    pub const COUNT: u32 = 11;

    /// Names in index order, for status output.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_service",
        "pass_service",
        "pass_parse_error",
        "pass_fragment",
        "tx",
        "redirect",
        "drop_no_backend",
        "drop_no_route",
        "drop_no_neigh",
        "drop_no_port",
        "pass_other_host",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data without padding holes or invalid bit patterns.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::ServiceSlot {}
    unsafe impl aya::Pod for super::ServiceHead {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::FlowKey6 {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::NatFlow {}
    unsafe impl aya::Pod for super::HopCache {}
    unsafe impl aya::Pod for super::SyncEvent {}
    unsafe impl aya::Pod for super::FlowLogEvent {}
}
