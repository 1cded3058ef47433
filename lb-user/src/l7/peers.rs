//! Sharing appsession tables with peer xlb nodes (HAProxy's `peers`):
//! what a node learns is pushed, in batches, to every peer's admin API
//! (`POST /api/sessions/SERVICE`), with the admin API's credentials; a
//! starting node fills its tables from its peers. Servers travel by name;
//! the most recently used entry wins.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::{Method, StatusCode};
use tokio::sync::mpsc;

use super::appsession::{EntryView, Table};
use crate::admin_client as admin;

/// Entries waiting to be pushed to one peer at most; beyond, new ones are
/// dropped for that peer (it is behind or gone) and the next learn of the
/// id carries it.
const QUEUE: usize = 65536;
/// Entries per push.
const BATCH: usize = 1000;
/// A push that takes longer is given up (the entries are lost for that
/// peer, as when its queue is full).
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the proxy drops what it learned: one queue per peer, each
/// emptied by a task of its own, so that a dead or slow peer holds up
/// nobody else.
#[derive(Clone)]
pub struct Outbox(Arc<[mpsc::Sender<(String, EntryView)>]>);

impl Outbox {
    pub fn push(&self, service: &str, id: &str, server: &str) {
        let entry = EntryView {
            id: id.to_string(),
            server: server.to_string(),
            idle_ms: 0,
        };
        for q in self.0.iter() {
            let _ = q.try_send((service.to_string(), entry.clone()));
        }
    }
}

/// Starts a pusher per peer; None without peers.
pub fn spawn(peers: Vec<SocketAddr>) -> Option<Outbox> {
    if peers.is_empty() {
        return None;
    }
    let queues = peers
        .into_iter()
        .map(|peer| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(pusher(peer, rx));
            tx
        })
        .collect();
    Some(Outbox(queues))
}

/// Pushes what arrives for `peer`, in batches.
async fn pusher(peer: SocketAddr, mut rx: mpsc::Receiver<(String, EntryView)>) {
    while let Some((service, entry)) = rx.recv().await {
        let mut batch: HashMap<String, Vec<EntryView>> = HashMap::new();
        batch.entry(service).or_default().push(entry);
        let mut n = 1;
        while n < BATCH {
            let Ok((service, entry)) = rx.try_recv() else { break };
            batch.entry(service).or_default().push(entry);
            n += 1;
        }
        for (service, entries) in &batch {
            let body = serde_json::to_vec(entries).unwrap_or_default();
            let path = format!("/api/sessions/{service}");
            let sent = tokio::time::timeout(
                PUSH_TIMEOUT,
                admin::request_with(peer, Method::POST, &path, body.into()),
            );
            match sent.await {
                Ok(Ok((StatusCode::OK, _))) => {}
                Ok(Ok((code, body))) => tracing::warn!(
                    %peer, %service, "peer refused sessions: {code} {}",
                    String::from_utf8_lossy(&body).trim()
                ),
                Ok(Err(e)) => tracing::warn!(%peer, "pushing sessions: {e}"),
                Err(_) => tracing::warn!(%peer, "pushing sessions: no answer within {PUSH_TIMEOUT:?}"),
            }
        }
    }
}

/// Fills `table` (service `service`) from the first peer that has it.
pub async fn pull(peers: Vec<SocketAddr>, service: String, table: Arc<Table>) {
    for peer in peers {
        let path = format!("/api/sessions/{service}");
        let asked = tokio::time::timeout(PUSH_TIMEOUT, admin::request(peer, Method::GET, &path));
        match asked.await.unwrap_or(Err(admin::ClientError::Timeout { addr: peer })) {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<Vec<EntryView>>(&body) {
                Ok(entries) => {
                    let now = Instant::now();
                    for e in &entries {
                        table.learn_aged(&e.id, &e.server, now, std::time::Duration::from_millis(e.idle_ms));
                    }
                    tracing::info!(%peer, %service, entries = entries.len(), "sessions taken from peer");
                    return;
                }
                Err(e) => tracing::warn!(%peer, %service, "peer sent malformed sessions: {e}"),
            },
            Ok((code, _)) => tracing::warn!(%peer, %service, "peer answered {code} for sessions"),
            Err(e) => tracing::info!(%peer, "no sessions from peer: {e}"),
        }
    }
}
