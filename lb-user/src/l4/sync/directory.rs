//! Translation between a node's own map indexes (backend ids, snat regions,
//! service counter slots) and the addresses the sync protocol names flows
//! by. Rebuilt by the map manager after every change of the maps.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    addr16, Flow, FlowKey4, FlowKey6, NatFlow, ServiceKey, SyncEvent, FAMILY_V4, NAT_PORTS, SNAT_PORT_MIN, SYNC_DSR,
    SYNC_NAT,
};

use super::{
    table::DsrFlow,
    wire::{ip_of, Record},
};

/// One L4 service as the sync needs it.
#[derive(Debug, Clone, Default)]
pub struct SyncService {
    /// Counter slot (`Flow::service`).
    pub slot: u32,
    /// nat: the snat pool's addresses and their `NAT_FLOWS` regions (pools
    /// must list the same addresses in the same order on every node: a
    /// flow's hash picks its address by position).
    pub snat: Vec<(IpAddr, u32)>,
    /// (address, port) → backend id.
    pub backends: HashMap<(IpAddr, u16), u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub services: HashMap<ServiceKey, SyncService>,
    /// backend id → (address, port).
    pub backends: HashMap<u32, (IpAddr, u16)>,
    /// snat region → address.
    pub regions: HashMap<u32, IpAddr>,
}

/// Where a record goes on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Nat { slot: u32, flow: NatFlow },
    Dsr4(FlowKey4, Flow),
    Dsr6(FlowKey6, Flow),
}

/// Why a record has no place on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    #[error("no such L4 service here")]
    Service,
    #[error("the service forwards in another mode here")]
    Mode,
    #[error("the service uses another snat address here")]
    Snat,
    #[error("snat port out of range")]
    Port,
    #[error("no such backend in the service here")]
    Backend,
}

fn key_of(r: &Record) -> ServiceKey {
    let (addr, family) = addr16(r.vip);
    ServiceKey {
        addr,
        port_be: r.vip_port.to_be(),
        proto: r.proto,
        family,
    }
}

impl Directory {
    /// The record of an event of this node's XDP program; `None` when the
    /// event names a backend or region the maps no longer have.
    pub fn record(&self, ev: &SyncEvent, age_ms: u32) -> Option<Record> {
        let f = &ev.flow;
        let (backend, backend_port) = *self.backends.get(&u32::from(f.backend))?;
        let (snat, snat_port) = if ev.kind == SYNC_NAT {
            let region = ev.slot / NAT_PORTS;
            let port = SNAT_PORT_MIN + (ev.slot % NAT_PORTS) as u16;
            (*self.regions.get(&region)?, port)
        } else {
            (unspecified(backend), 0)
        };
        Some(Record {
            kind: ev.kind,
            proto: f.proto,
            state: if ev.kind == SYNC_NAT { f.state } else { 0 },
            client: ip_of(ev.family, &f.client),
            vip: ip_of(ev.family, &f.vip),
            client_port: u16::from_be(f.client_port_be),
            vip_port: u16::from_be(f.vip_port_be),
            backend,
            backend_port,
            snat,
            snat_port,
            age_ms,
        })
    }

    /// Where a peer's record goes here; `seen` is its clock value here.
    pub fn place(&self, r: &Record, seen: u64) -> Result<Target, Unplaced> {
        let svc = self.services.get(&key_of(r)).ok_or(Unplaced::Service)?;
        let id = *svc
            .backends
            .get(&(r.backend, r.backend_port))
            .ok_or(Unplaced::Backend)?;
        let (client, family) = addr16(r.client);
        let (vip, _) = addr16(r.vip);
        let pool = svc.snat.iter().find(|(a, _)| *a == r.snat);
        match (r.kind, svc.snat.is_empty()) {
            (SYNC_NAT, false) => {
                let (_, region) = pool.ok_or(Unplaced::Snat)?;
                let port = r.snat_port.checked_sub(SNAT_PORT_MIN).ok_or(Unplaced::Port)?;
                if u32::from(port) >= NAT_PORTS {
                    return Err(Unplaced::Port);
                }
                let flow = NatFlow {
                    client,
                    vip,
                    client_port_be: r.client_port.to_be(),
                    vip_port_be: r.vip_port.to_be(),
                    backend: id as u16,
                    proto: r.proto,
                    state: r.state,
                    seen,
                    // Learnt from this node's first packet of the flow.
                    ifindex: 0,
                    client_mac: [0; 6],
                    local_mac: [0; 6],
                };
                Ok(Target::Nat {
                    slot: region * NAT_PORTS + u32::from(port),
                    flow,
                })
            }
            (SYNC_DSR, true) => {
                let flow = Flow {
                    backend: id,
                    service: svc.slot,
                };
                if family == FAMILY_V4 {
                    let k = FlowKey4 {
                        src: client[..4].try_into().expect("4 bytes"),
                        dst: vip[..4].try_into().expect("4 bytes"),
                        sport_be: r.client_port.to_be(),
                        dport_be: r.vip_port.to_be(),
                        proto: r.proto,
                        ..Default::default()
                    };
                    Ok(Target::Dsr4(k, flow))
                } else {
                    let k = FlowKey6 {
                        src: client,
                        dst: vip,
                        sport_be: r.client_port.to_be(),
                        dport_be: r.vip_port.to_be(),
                        proto: r.proto,
                        ..Default::default()
                    };
                    Ok(Target::Dsr6(k, flow))
                }
            }
            _ => Err(Unplaced::Mode),
        }
    }

    /// The record of a dsr flow read from this node's table (as the event
    /// the XDP program wrote when the flow was new).
    pub fn dsr_record(&self, d: &DsrFlow) -> Option<Record> {
        let ev = SyncEvent {
            kind: SYNC_DSR,
            family: d.family,
            _pad: 0,
            slot: d.flow.service,
            flow: NatFlow {
                client: d.client,
                vip: d.vip,
                client_port_be: d.sport_be,
                vip_port_be: d.dport_be,
                backend: d.flow.backend as u16,
                proto: d.proto,
                ..Default::default()
            },
        };
        self.record(&ev, 0)
    }
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn dir() -> Directory {
        let snat = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
        let be = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
        let mut d = Directory::default();
        d.services.insert(
            ServiceKey::v4([198, 19, 0, 1], 80, 6),
            SyncService {
                slot: 3,
                snat: vec![(snat, 2)],
                backends: [((be, 8080), 7)].into_iter().collect(),
            },
        );
        d.backends.insert(7, (be, 8080));
        d.regions.insert(2, snat);
        d
    }

    #[test]
    fn an_event_becomes_a_record_that_lands_in_the_same_slot() {
        let d = dir();
        let slot = 2 * NAT_PORTS + 500;
        let ev = SyncEvent {
            kind: SYNC_NAT,
            family: FAMILY_V4,
            _pad: 0,
            slot,
            flow: NatFlow {
                client: [198, 18, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                vip: [198, 19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                client_port_be: 40000u16.to_be(),
                vip_port_be: 80u16.to_be(),
                backend: 7,
                proto: 6,
                state: lb_common::NAT_OPEN,
                seen: 1,
                ifindex: 4,
                client_mac: [1; 6],
                local_mac: [2; 6],
            },
        };
        let r = d.record(&ev, 5).expect("known backend and region");
        assert_eq!(r.snat_port, SNAT_PORT_MIN + 500);
        match d.place(&r, 99) {
            Ok(Target::Nat { slot: s, flow }) => {
                assert_eq!(s, slot);
                assert_eq!(flow.backend, 7);
                assert_eq!(flow.seen, 99);
                assert_eq!(flow.ifindex, 0, "the way back is learnt here");
                assert_eq!(
                    (flow.client, flow.vip, flow.state),
                    (ev.flow.client, ev.flow.vip, ev.flow.state)
                );
            }
            other => panic!("{other:?}"),
        }
        let mut wrong = r;
        wrong.snat = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(d.place(&wrong, 0), Err(Unplaced::Snat));
        wrong = r;
        wrong.backend_port = 1;
        assert_eq!(d.place(&wrong, 0), Err(Unplaced::Backend));
        wrong = r;
        wrong.kind = SYNC_DSR;
        assert_eq!(d.place(&wrong, 0), Err(Unplaced::Mode));
        wrong = r;
        wrong.vip_port = 81;
        assert_eq!(d.place(&wrong, 0), Err(Unplaced::Service));
    }
}
