//! `/metrics` on the admin address: the status report in Prometheus'
//! text format (counters as `_total`, states as 0/1 gauges).

use std::{collections::HashMap, fmt::Write};

use crate::control::status::Status;

/// Label values escaped as the exposition format wants.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Every metric: name, type, help; rendered in this order.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("xlb_xdp_packets_total", "counter", "Packets per XDP outcome."),
    (
        "xlb_service_packets_total",
        "counter",
        "Packets of L4 services seen by XDP.",
    ),
    (
        "xlb_service_bytes_total",
        "counter",
        "Bytes of L4 services seen by XDP.",
    ),
    ("xlb_service_new_flows_total", "counter", "New flows of L4 services."),
    (
        "xlb_backend_packets_total",
        "counter",
        "Packets XDP forwarded to a backend.",
    ),
    (
        "xlb_backend_new_flows_total",
        "counter",
        "Flows XDP pinned to a backend.",
    ),
    ("xlb_backend_weight", "gauge", "Configured weight of a backend."),
    ("xlb_backend_state", "gauge", "1 for the backend's current state."),
    (
        "xlb_http_requests_total",
        "counter",
        "Requests received by an http service.",
    ),
    (
        "xlb_http_no_server_total",
        "counter",
        "Requests answered 503 for lack of a server.",
    ),
    (
        "xlb_http_refused_total",
        "counter",
        "Requests refused before balancing (4xx).",
    ),
    (
        "xlb_http_routed_total",
        "counter",
        "Requests sent to a route's backend group.",
    ),
    ("xlb_http_sessions", "gauge", "Entries in the appsession table."),
    (
        "xlb_http_parked_connections",
        "gauge",
        "Idle keep-alive client connections parked (no task, no buffer).",
    ),
    (
        "xlb_http_tunnels",
        "gauge",
        "Upgraded (WebSocket) connections open, joined to their backend.",
    ),
    (
        "xlb_http_tunnels_total",
        "counter",
        "Upgraded (WebSocket) connections since start.",
    ),
    (
        "xlb_http_proxy_refused_total",
        "counter",
        "Client connections closed for a missing or malformed PROXY protocol header.",
    ),
    (
        "xlb_http_queue_current",
        "gauge",
        "Requests waiting for a backend under maxconn.",
    ),
    ("xlb_http_queue_max", "gauge", "The most requests that waited at once."),
    (
        "xlb_http_queued_total",
        "counter",
        "Requests that had to wait for a backend under maxconn.",
    ),
    (
        "xlb_http_queue_wait_avg_ms",
        "gauge",
        "Mean time the requests that waited spent in the queue.",
    ),
    (
        "xlb_http_queue_timeouts_total",
        "counter",
        "Requests that waited timeout_queue and got 503.",
    ),
    (
        "xlb_http_tls_handshakes_total",
        "counter",
        "TLS handshakes completed by an http service.",
    ),
    (
        "xlb_http_tls_resumed_total",
        "counter",
        "TLS handshakes that resumed a session (ticket or session id).",
    ),
    (
        "xlb_http_tls_failed_total",
        "counter",
        "TLS handshakes that failed or timed out.",
    ),
    (
        "xlb_http_backend_requests_total",
        "counter",
        "Requests sent to a backend.",
    ),
    ("xlb_http_backend_active", "gauge", "Requests in flight to a backend."),
    (
        "xlb_http_backend_busy",
        "gauge",
        "Places taken at a backend under its maxconn (to the end of each response).",
    ),
    (
        "xlb_http_backend_responses_total",
        "counter",
        "Responses by status class.",
    ),
    (
        "xlb_http_backend_connect_errors_total",
        "counter",
        "Failed connections to a backend.",
    ),
    (
        "xlb_http_backend_retries_total",
        "counter",
        "Connection retries to a backend.",
    ),
    (
        "xlb_http_backend_redispatches_total",
        "counter",
        "Requests redispatched to a backend.",
    ),
    (
        "xlb_http_connections",
        "gauge",
        "Open client connections of the L7 proxy.",
    ),
    ("xlb_http_maxconn", "gauge", "The cap on them (global.maxconn)."),
    (
        "xlb_http_maxconn_reached_total",
        "counter",
        "Times the proxy stopped accepting at maxconn.",
    ),
    (
        "xlb_log_lines_total",
        "counter",
        "Log lines sent, counted once per sink.",
    ),
    (
        "xlb_log_dropped_total",
        "counter",
        "Log lines lost: the queue was full, or a sink did not take them.",
    ),
    (
        "xlb_sync_ready",
        "gauge",
        "1 once the initial flow-table pull from a peer is done.",
    ),
    ("xlb_sync_flows_sent_total", "counter", "Flows sent to sync peers."),
    (
        "xlb_sync_messages_sent_total",
        "counter",
        "Sync messages sent (each to every peer).",
    ),
    (
        "xlb_sync_flows_received_total",
        "counter",
        "Flows received from sync peers.",
    ),
    (
        "xlb_sync_flows_installed_total",
        "counter",
        "Received flows written into the flow tables.",
    ),
    (
        "xlb_sync_conflicts_total",
        "counter",
        "Received flows whose slot held another live flow here (this node's kept).",
    ),
    (
        "xlb_sync_unplaced_total",
        "counter",
        "Received flows of services or backends this node does not have.",
    ),
    (
        "xlb_sync_rejected_total",
        "counter",
        "Sync messages refused: bad signature, stale clock, replayed or malformed.",
    ),
    (
        "xlb_sync_events_lost_total",
        "counter",
        "Flow events not sent: ring buffer full or over the rate bound.",
    ),
    (
        "xlb_sync_lag_milliseconds",
        "gauge",
        "How long the oldest event of the last batch sent had waited.",
    ),
    (
        "xlb_sync_peer_messages_sent_total",
        "counter",
        "Sync messages sent to the peer.",
    ),
    (
        "xlb_sync_peer_send_errors_total",
        "counter",
        "Sync messages that could not be sent to the peer.",
    ),
    (
        "xlb_sync_peer_last_heard_milliseconds",
        "gauge",
        "Since the last sync message from the peer.",
    ),
];

/// The states `xlb_backend_state` has a sample for.
pub const STATES: [&str; 4] = ["up", "down", "drain", "maint"];

pub fn render(st: &Status) -> String {
    let mut samples: HashMap<&str, Vec<(String, u64)>> = HashMap::new();
    let mut add = |name: &'static str, labels: String, v: u64| samples.entry(name).or_default().push((labels, v));
    for (k, v) in &st.outcomes {
        add("xlb_xdp_packets_total", format!("outcome=\"{}\"", esc(k)), *v);
    }
    let c = &st.connections;
    add("xlb_http_connections", String::new(), c.open as u64);
    add("xlb_http_maxconn", String::new(), c.max as u64);
    add("xlb_http_maxconn_reached_total", String::new(), c.reached);
    add("xlb_log_lines_total", String::new(), st.log_lines);
    add("xlb_log_dropped_total", String::new(), st.log_dropped);
    if let Some(s) = &st.sync {
        add("xlb_sync_ready", String::new(), u64::from(s.ready));
        add("xlb_sync_flows_sent_total", String::new(), s.flows_sent);
        add("xlb_sync_messages_sent_total", String::new(), s.messages_sent);
        add("xlb_sync_flows_received_total", String::new(), s.flows_received);
        add("xlb_sync_flows_installed_total", String::new(), s.flows_installed);
        add("xlb_sync_conflicts_total", String::new(), s.conflicts);
        add("xlb_sync_unplaced_total", String::new(), s.unplaced);
        add("xlb_sync_rejected_total", String::new(), s.rejected);
        add("xlb_sync_events_lost_total", String::new(), s.events_lost);
        add("xlb_sync_lag_milliseconds", String::new(), s.lag_ms);
        for p in &s.peers {
            let pl = format!("peer=\"{}\"", p.addr);
            add("xlb_sync_peer_messages_sent_total", pl.clone(), p.messages_sent);
            add("xlb_sync_peer_send_errors_total", pl.clone(), p.send_errors);
            if let Some(ms) = p.last_heard_ms {
                add("xlb_sync_peer_last_heard_milliseconds", pl, ms);
            }
        }
    }
    for s in &st.services {
        let sl = format!("service=\"{}\"", esc(&s.name));
        match &s.http {
            Some(h) => {
                add("xlb_http_requests_total", sl.clone(), h.requests);
                add("xlb_http_no_server_total", sl.clone(), h.no_server);
                add("xlb_http_refused_total", sl.clone(), h.refused);
                add("xlb_http_routed_total", sl.clone(), h.routed);
                add("xlb_http_sessions", sl.clone(), h.sessions);
                add("xlb_http_parked_connections", sl.clone(), h.parked);
                add("xlb_http_tunnels", sl.clone(), h.tunnels);
                add("xlb_http_tunnels_total", sl.clone(), h.tunnels_total);
                add("xlb_http_proxy_refused_total", sl.clone(), h.proxy_refused);
                add("xlb_http_queue_current", sl.clone(), h.queued);
                add("xlb_http_queue_max", sl.clone(), h.queued_max);
                add("xlb_http_queued_total", sl.clone(), h.queued_total);
                add("xlb_http_queue_wait_avg_ms", sl.clone(), h.queue_wait_ms_avg);
                add("xlb_http_queue_timeouts_total", sl.clone(), h.queue_timeouts);
                add("xlb_http_tls_handshakes_total", sl.clone(), h.tls_handshakes);
                add("xlb_http_tls_resumed_total", sl.clone(), h.tls_resumed);
                add("xlb_http_tls_failed_total", sl.clone(), h.tls_failed);
            }
            None => {
                add("xlb_service_packets_total", sl.clone(), s.packets);
                add("xlb_service_bytes_total", sl.clone(), s.bytes);
                add("xlb_service_new_flows_total", sl.clone(), s.new_flows);
            }
        }
        for b in &s.backends {
            let bl = format!("{sl},backend=\"{}\"", esc(&b.name));
            add("xlb_backend_weight", bl.clone(), u64::from(b.weight));
            for state in STATES {
                add(
                    "xlb_backend_state",
                    format!("{bl},state=\"{state}\""),
                    u64::from(b.state == state),
                );
            }
            match &b.http {
                Some(h) => {
                    add("xlb_http_backend_requests_total", bl.clone(), h.requests);
                    add("xlb_http_backend_active", bl.clone(), h.active);
                    add("xlb_http_backend_busy", bl.clone(), h.busy);
                    for (i, n) in h.responses.iter().enumerate() {
                        add(
                            "xlb_http_backend_responses_total",
                            format!("{bl},code=\"{}xx\"", i + 1),
                            *n,
                        );
                    }
                    add("xlb_http_backend_connect_errors_total", bl.clone(), h.connect_errors);
                    add("xlb_http_backend_retries_total", bl.clone(), h.retries);
                    add("xlb_http_backend_redispatches_total", bl.clone(), h.redispatches);
                }
                None => {
                    add("xlb_backend_packets_total", bl.clone(), b.packets);
                    add("xlb_backend_new_flows_total", bl, b.new_flows);
                }
            }
        }
    }
    let mut o = String::new();
    for (name, kind, help) in FAMILIES {
        let Some(v) = samples.get(name) else { continue };
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, n) in v {
            match labels.is_empty() {
                true => writeln!(o, "{name} {n}"),
                false => writeln!(o, "{name}{{{labels}}} {n}"),
            }
            .expect("writing to a String");
        }
    }
    o
}
