//! The status report: built by the daemon, served by the admin API as JSON,
//! printed by `xlb status`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write,
};

use serde::{Deserialize, Serialize};

use super::daemon::Daemon;
use crate::{
    l4::sync::{FlowSync, SyncStatus},
    l7::{
        admission::GateSnapshot,
        counters::{BackendSnapshot, ServiceSnapshot},
    },
    model::AdminState,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub config: String,
    /// The config version (reloads and runtime changes count it up).
    #[serde(default)]
    pub version: u64,
    pub interface: Option<String>,
    /// "native" or "generic"; None when no XDP program is attached.
    pub xdp_mode: Option<String>,
    pub services: Vec<ServiceStatus>,
    /// Packets per XDP outcome (pass_service, pass_parse_error, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Open L7 client connections against `global.maxconn`.
    #[serde(default)]
    pub connections: GateSnapshot,
    /// `[sync]`, when configured.
    #[serde(default)]
    pub sync: Option<SyncStatus>,
    /// Log lines sent (per sink), and lost (queue full, or a sink that
    /// did not take them).
    #[serde(default)]
    pub log_lines: u64,
    #[serde(default)]
    pub log_dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    /// nat: the configured snat pool (empty: the interface's address).
    #[serde(default)]
    pub snat: Vec<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// http services: the proxy's request counters.
    #[serde(default)]
    pub http: Option<ServiceSnapshot>,
    pub backends: Vec<BackendStatus>,
    /// http: the routing rules in order, as `path_beg /api/ -> group`.
    #[serde(default)]
    pub routes: Vec<String>,
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
    /// http services: the backend group it belongs to, if any.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub http: Option<BackendSnapshot>,
}

impl Status {
    /// Human-readable table.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let xdp = match (&self.interface, &self.xdp_mode) {
            (Some(i), Some(m)) => format!("{i} ({m} XDP)"),
            _ => "none (no XDP program attached)".into(),
        };
        let _ = writeln!(
            o,
            "config: {} (version {})\ninterface: {xdp}",
            self.config, self.version
        );
        for s in &self.services {
            let _ = write!(
                o,
                "service {} {}:{}/{} mode={}",
                s.name, s.vip, s.port, s.protocol, s.mode
            );
            if !s.snat.is_empty() {
                let _ = write!(o, " snat={}", s.snat.join(","));
            }
            match &s.http {
                Some(h) => {
                    let _ = write!(
                        o,
                        " requests={} routed={} no_server={} refused={} sessions={} parked={} tunnels={} queued={} queue_timeouts={}",
                        h.requests, h.routed, h.no_server, h.refused, h.sessions, h.parked, h.tunnels, h.queued, h.queue_timeouts
                    );
                    if h.tls_handshakes + h.tls_failed > 0 {
                        let _ = write!(
                            o,
                            " tls_handshakes={} tls_resumed={} tls_failed={}",
                            h.tls_handshakes, h.tls_resumed, h.tls_failed
                        );
                    }
                    let _ = writeln!(o);
                }
                None => {
                    let _ = writeln!(o, " packets={} bytes={} flows={}", s.packets, s.bytes, s.new_flows);
                }
            }
            for b in &s.backends {
                let backup = if b.backup { " backup" } else { "" };
                let group = b.group.as_ref().map(|g| format!(" group={g}")).unwrap_or_default();
                let _ = write!(
                    o,
                    "  backend {} {} weight={} state={}{group}{backup}",
                    b.name, b.address, b.weight, b.state
                );
                match &b.http {
                    Some(h) => {
                        let r = h.responses;
                        let _ = writeln!(
                            o,
                            " requests={} active={} 2xx={} 3xx={} 4xx={} 5xx={} connect_errors={} retries={}",
                            h.requests, h.active, r[1], r[2], r[3], r[4], h.connect_errors, h.retries
                        );
                    }
                    None => {
                        let _ = writeln!(o, " packets={} flows={}", b.packets, b.new_flows);
                    }
                }
            }
        }
        let outs: Vec<String> = self.outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "xdp outcomes: {}", outs.join(" "));
        let c = &self.connections;
        let _ = writeln!(
            o,
            "http connections: {} of maxconn {} (reached {} times)",
            c.open, c.max, c.reached
        );
        let _ = writeln!(o, "log lines: {} sent, {} dropped", self.log_lines, self.log_dropped);
        if let Some(s) = &self.sync {
            let _ = writeln!(
                o,
                "sync {}: {} (pull: {}) sent={} flows ({} messages) received={} installed={} conflicts={} unplaced={} rejected={} lost={} lag={}ms",
                s.listen,
                if s.ready { "ready" } else { "pulling" },
                s.pull,
                s.flows_sent,
                s.messages_sent,
                s.flows_received,
                s.flows_installed,
                s.conflicts,
                s.unplaced,
                s.rejected,
                s.events_lost,
                s.lag_ms
            );
            for p in &s.peers {
                let heard = p.last_heard_ms.map_or("never".into(), |ms| format!("{ms} ms ago"));
                let _ = writeln!(
                    o,
                    "  peer {} sent={} errors={} last heard {heard}",
                    p.addr, p.messages_sent, p.send_errors
                );
            }
        }
        o
    }
}

impl Daemon {
    pub fn status(&self) -> Status {
        let services = self
            .cfg
            .services
            .iter()
            .map(|s| {
                let st = self.dp.as_ref().map(|d| d.service_stats(s)).unwrap_or_default();
                let (http, mut per_backend) = match self.proxy.service(&s.name) {
                    Some(svc) => {
                        let (h, b) = svc.snapshot();
                        (Some(h), b.into_iter().collect::<HashMap<_, _>>())
                    }
                    None => (None, HashMap::new()),
                };
                ServiceStatus {
                    name: s.name.clone(),
                    vip: s.vip.to_string(),
                    snat: s.snat.iter().map(ToString::to_string).collect(),
                    port: s.port,
                    protocol: s.protocol.as_str().into(),
                    mode: s.mode.as_str().into(),
                    packets: st.packets,
                    bytes: st.bytes,
                    new_flows: st.new_flows,
                    http,
                    routes: s.routes.iter().map(route_text).collect(),
                    backends: s
                        .backends
                        .iter()
                        .map(|b| {
                            let bs = self
                                .dp
                                .as_ref()
                                .map(|d| d.backend_stats(&s.name, &b.name))
                                .unwrap_or_default();
                            let r = (s.name.clone(), b.name.clone());
                            let weight = self.effective_weight(&r);
                            let state = match self.admin.get(&r) {
                                Some(AdminState::Maint) => "maint",
                                _ if self.down.contains(&r) => "down",
                                Some(AdminState::Drain) => "drain",
                                _ if weight == 0 => "drain",
                                _ => "up",
                            };
                            BackendStatus {
                                name: b.name.clone(),
                                address: b.address.to_string(),
                                weight,
                                backup: b.backup,
                                state: state.into(),
                                packets: bs.packets,
                                new_flows: bs.new_flows,
                                group: b.group.clone(),
                                http: per_backend.remove(&b.name),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Status {
            config: self.path.display().to_string(),
            version: self.version,
            interface: self.dp.as_ref().map(|d| d.iface.clone()),
            xdp_mode: self.dp.as_ref().map(|d| d.mode.as_str().to_string()),
            services,
            outcomes: self
                .dp
                .as_ref()
                .map(|d| d.outcomes().into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                .unwrap_or_default(),
            connections: self.proxy.connections(),
            sync: self.sync.as_ref().map(FlowSync::status),
            log_lines: crate::logging::sent(),
            log_dropped: crate::logging::dropped(),
        }
    }
}

/// A routing rule as the status shows it.
fn route_text(r: &crate::config::Route) -> String {
    let mut parts = Vec::new();
    if !r.path_beg.is_empty() {
        parts.push(format!("path_beg {}", r.path_beg.join(" ")));
    }
    if !r.path_end.is_empty() {
        parts.push(format!("path_end {}", r.path_end.join(" ")));
    }
    if let Some(h) = &r.host {
        parts.push(format!("host {}", h.0.as_str()));
    }
    format!("{} -> {}", parts.join(", "), r.group)
}
