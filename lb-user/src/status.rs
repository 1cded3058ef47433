//! The status report: built by the daemon, served by the admin API as JSON,
//! printed by `xlb status`.

use std::{collections::BTreeMap, fmt::Write};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub config: String,
    pub interface: Option<String>,
    /// "native" or "generic"; None when no XDP program is attached.
    pub xdp_mode: Option<String>,
    pub services: Vec<ServiceStatus>,
    /// Packets per XDP outcome (pass_service, pass_parse_error, ...).
    pub outcomes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub backup: bool,
    /// "up", "down" (health checks), "drain" (operator or weight 0) or
    /// "maint" (operator).
    pub state: String,
    /// Packets forwarded to this backend by XDP, and flows pinned to it.
    pub packets: u64,
    pub new_flows: u64,
}

impl Status {
    /// Human-readable table.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let xdp = match (&self.interface, &self.xdp_mode) {
            (Some(i), Some(m)) => format!("{i} ({m} XDP)"),
            _ => "none (no XDP program attached)".into(),
        };
        let _ = writeln!(o, "config: {}\ninterface: {xdp}", self.config);
        for s in &self.services {
            let _ = writeln!(
                o,
                "service {} {}:{}/{} mode={} packets={} bytes={} flows={}",
                s.name, s.vip, s.port, s.protocol, s.mode, s.packets, s.bytes, s.new_flows
            );
            for b in &s.backends {
                let backup = if b.backup { " backup" } else { "" };
                let _ = writeln!(
                    o,
                    "  backend {} {} weight={} state={} packets={} flows={}{backup}",
                    b.name, b.address, b.weight, b.state, b.packets, b.new_flows
                );
            }
        }
        let outs: Vec<String> = self.outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "xdp outcomes: {}", outs.join(" "));
        o
    }
}
