//! L4 flow-state sync between xlb nodes (`[sync]`), so that a node taking
//! over a VIP (keepalived) or a share of it (ECMP) carries on the
//! connections another node started, full-NAT ones included.
//!
//! - The XDP program reports new flows and full-NAT state changes through a
//!   ring buffer (`SYNC_EVENTS`); this module names them by address
//!   (`directory`), batches them into signed messages (`wire`) and sends
//!   them by UDP to every peer, at most `RATE` messages a second (each to
//!   every peer).
//! - Messages are taken from configured peers only and checked (HMAC under
//!   the shared key, clock within `CLOCK_SKEW`, each sequence number once
//!   per sender, within a window for datagrams that overtook each other);
//!   their flows are installed in the pinned maps (`table`): full-NAT
//!   flows in the slot of the same snat port, dsr flows in the flow tables.
//! - Every `REFRESH` the full-NAT flows this node forwarded packets of are
//!   sent again, so a peer's copies do not go idle.
//! - At start the node pulls every peer's whole table over TCP (same
//!   address as the UDP listener) before it calls itself ready
//!   (`/healthz`), so it does not take traffic without the state.

pub mod directory;
pub mod table;
pub mod wire;

use std::{
    collections::HashMap,
    io,
    mem::size_of,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use lb_common::{maps, SyncEvent, FAMILY_V4, FAMILY_V6, NAT_PORTS, SYNC_NAT};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    task::JoinHandle,
};

use self::{
    directory::{Directory, Target},
    table::{Clock, Install, Tables, REFRESH},
    wire::{Header, Kind, Record},
};
use super::{
    bpf::{map_err, map_of, DataPlaneError},
    pins::PinDir,
};
use crate::config::SyncCfg;

/// Messages a second this node sends (to all its peers together: 16 flows
/// each, 320,000 flows a second); more are dropped and counted.
pub const RATE: u64 = 20_000;
/// How far a message's clock may be from ours (the nodes run NTP).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How long one pull may take (a large table streams for a while).
const PULL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a starting node keeps asking its peers for their table when
/// none can be reached before it concludes that none is alive.
pub const PULL_DEADLINE: Duration = Duration::from_secs(10);
/// Sequence numbers a datagram may lag the highest seen from its sender
/// (datagrams sent by different tasks can overtake each other).
const SEQ_WINDOW: u64 = 64;
/// Receive buffer of the UDP socket: a refresh or a burst of new flows
/// arrives faster than one task installs it.
const RCVBUF: libc::c_int = 4 << 20;
/// Pulls served at once.
const MAX_PULLS: usize = 4;
/// How often the event ring is read: the most an event waits.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("BPF map {name}: {reason}")]
    Map { name: &'static str, reason: String },
    #[error("cannot listen for sync on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        cause: io::Error,
    },
    #[error(transparent)]
    DataPlane(#[from] Box<DataPlaneError>),
}

#[derive(Default)]
struct Counters {
    messages_sent: AtomicU64,
    flows_sent: AtomicU64,
    rate_dropped: AtomicU64,
    messages_received: AtomicU64,
    flows_received: AtomicU64,
    flows_installed: AtomicU64,
    conflicts: AtomicU64,
    unplaced: AtomicU64,
    rejected: AtomicU64,
    install_errors: AtomicU64,
    lag_ms: AtomicU64,
}

struct Peer {
    addr: SocketAddr,
    messages_sent: AtomicU64,
    send_errors: AtomicU64,
    heard: Mutex<Option<Instant>>,
}

/// A token bucket of `RATE` messages a second.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let rate = RATE as f64;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Inner {
    key: Vec<u8>,
    listen: SocketAddr,
    /// This run's sender id (random), for the peers' sequence checks.
    sender: u64,
    seq: AtomicU64,
    dir: Arc<RwLock<Directory>>,
    /// Map handles for installs; scans open their own (`scanner`), so a
    /// long scan never holds up an install.
    tables: Mutex<Tables>,
    pins: PinDir,
    hz: u64,
    clock: Clock,
    socket: UdpSocket,
    peers: Vec<Peer>,
    counters: Counters,
    /// Per sender: the highest sequence number seen and a bitmap of the
    /// `SEQ_WINDOW` below it.
    seqs: Mutex<HashMap<u64, (u64, u64)>>,
    bucket: Mutex<Bucket>,
    ready: AtomicBool,
    pull: Mutex<String>,
    lost: PerCpuArray<MapData, u64>,
}

/// The running sync; dropping it stops it.
pub struct FlowSync {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FlowSync {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `[sync]` as `xlb status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncStatus {
    pub listen: SocketAddr,
    /// The initial pull is done (or no peer answered it).
    pub ready: bool,
    /// How the initial pull went.
    pub pull: String,
    pub peers: Vec<PeerStatus>,
    pub messages_sent: u64,
    pub flows_sent: u64,
    pub messages_received: u64,
    pub flows_received: u64,
    pub flows_installed: u64,
    /// Received flows whose slot holds another live flow here (ours kept).
    pub conflicts: u64,
    /// Received flows of services or backends this node does not have.
    pub unplaced: u64,
    /// Messages refused: bad signature, stale clock, replayed, malformed.
    pub rejected: u64,
    /// Flow events lost: the ring buffer was full, or over `RATE`.
    pub events_lost: u64,
    pub install_errors: u64,
    /// How long the oldest event of the last batch sent had waited since
    /// the packet that made it.
    pub lag_ms: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub addr: SocketAddr,
    pub messages_sent: u64,
    pub send_errors: u64,
    /// Since the last message from it, if any came.
    pub last_heard_ms: Option<u64>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A clock-derived id is still unique enough if the kernel says no.
    if getrandom::fill(&mut b).is_err() {
        return unix_ms() ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(b)
}

fn listen_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(64)
}

impl FlowSync {
    /// Switches the program's events on and starts sending, receiving,
    /// refreshing and the initial pull (needs a tokio runtime).
    pub fn start(
        cfg: &SyncCfg,
        ebpf: &mut Ebpf,
        pins: &PinDir,
        dir: Arc<RwLock<Directory>>,
        hz: u64,
    ) -> Result<FlowSync, SyncError> {
        let dp = |e: DataPlaneError| SyncError::DataPlane(Box::new(e));
        let listen_err = |cause| SyncError::Listen {
            addr: cfg.listen,
            cause,
        };
        let socket = std::net::UdpSocket::bind(cfg.listen).map_err(listen_err)?;
        socket.set_nonblocking(true).map_err(listen_err)?;
        set_rcvbuf(&socket);
        let socket = UdpSocket::from_std(socket).map_err(listen_err)?;
        let listener = listen_tcp(cfg.listen).map_err(listen_err)?;
        let events = ebpf.take_map(maps::SYNC_EVENTS).ok_or(SyncError::Map {
            name: maps::SYNC_EVENTS,
            reason: "not in the object".into(),
        })?;
        let events = RingBuf::try_from(events).map_err(|e| dp(map_err(maps::SYNC_EVENTS, &e)))?;
        let lost = ebpf.take_map(maps::SYNC_LOST).ok_or(SyncError::Map {
            name: maps::SYNC_LOST,
            reason: "not in the object".into(),
        })?;
        let lost = PerCpuArray::try_from(lost).map_err(|e| dp(map_err(maps::SYNC_LOST, &e)))?;
        let inner = Arc::new(Inner {
            key: cfg.key.0.clone(),
            listen: cfg.listen,
            sender: random_u64(),
            seq: AtomicU64::new(0),
            dir,
            tables: Mutex::new(Tables::open(pins, hz)?),
            pins: pins.clone(),
            hz,
            clock: Clock::new(hz),
            socket,
            peers: cfg
                .peers
                .iter()
                .map(|a| Peer {
                    addr: *a,
                    messages_sent: AtomicU64::new(0),
                    send_errors: AtomicU64::new(0),
                    heard: Mutex::new(None),
                })
                .collect(),
            counters: Counters::default(),
            seqs: Mutex::new(HashMap::new()),
            bucket: Mutex::new(Bucket {
                tokens: RATE as f64,
                at: Instant::now(),
            }),
            ready: AtomicBool::new(false),
            pull: Mutex::new("pending".into()),
            lost,
        });
        let mut flag: aya::maps::Array<&mut MapData, u32> = map_of(ebpf, maps::SYNC).map_err(dp)?;
        flag.set(0, 1, 0).map_err(|e| dp(map_err(maps::SYNC, &e)))?;
        let tasks = vec![
            tokio::spawn(Arc::clone(&inner).events(events)),
            tokio::spawn(Arc::clone(&inner).receive()),
            tokio::spawn(Arc::clone(&inner).serve_pulls(listener)),
            tokio::spawn(Arc::clone(&inner).refresh()),
            tokio::spawn(Arc::clone(&inner).initial_pull()),
        ];
        tracing::info!(listen = %cfg.listen, peers = cfg.peers.len(), "flow sync started");
        Ok(FlowSync { inner, tasks })
    }

    /// Whether the initial pull is done (or no peer answered it).
    pub fn ready(&self) -> bool {
        self.inner.ready.load(Relaxed)
    }

    pub fn status(&self) -> SyncStatus {
        let i = &self.inner;
        let c = &i.counters;
        let lost: u64 = i.lost.get(&0, 0).map_or(0, |v| v.iter().sum());
        SyncStatus {
            listen: i.listen,
            ready: self.ready(),
            pull: i.pull.lock().expect("pull lock").clone(),
            peers: i
                .peers
                .iter()
                .map(|p| PeerStatus {
                    addr: p.addr,
                    messages_sent: p.messages_sent.load(Relaxed),
                    send_errors: p.send_errors.load(Relaxed),
                    last_heard_ms: p
                        .heard
                        .lock()
                        .expect("peer lock")
                        .map(|t| t.elapsed().as_millis() as u64),
                })
                .collect(),
            messages_sent: c.messages_sent.load(Relaxed),
            flows_sent: c.flows_sent.load(Relaxed),
            messages_received: c.messages_received.load(Relaxed),
            flows_received: c.flows_received.load(Relaxed),
            flows_installed: c.flows_installed.load(Relaxed),
            conflicts: c.conflicts.load(Relaxed),
            unplaced: c.unplaced.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            events_lost: lost + c.rate_dropped.load(Relaxed),
            install_errors: c.install_errors.load(Relaxed),
            lag_ms: c.lag_ms.load(Relaxed),
        }
    }
}

impl Inner {
    fn header(&self, kind: Kind, count: usize) -> Header {
        Header {
            kind,
            count,
            sender: self.sender,
            seq: self.seq.fetch_add(1, Relaxed) + 1,
            time_ms: unix_ms(),
        }
    }

    fn fresh(h: &Header) -> bool {
        unix_ms().abs_diff(h.time_ms) <= CLOCK_SKEW.as_millis() as u64
    }

    /// Sends records to every peer, `MAX_DATAGRAM` a message.
    async fn send(&self, records: &[Record]) {
        for chunk in records.chunks(wire::MAX_DATAGRAM) {
            if !self.bucket.lock().expect("bucket lock").take() {
                self.counters.rate_dropped.fetch_add(chunk.len() as u64, Relaxed);
                continue;
            }
            let msg = wire::encode(&self.key, &self.header(Kind::Flows, chunk.len()), chunk);
            for p in &self.peers {
                match self.socket.send_to(&msg, p.addr).await {
                    Ok(_) => p.messages_sent.fetch_add(1, Relaxed),
                    Err(_) => p.send_errors.fetch_add(1, Relaxed),
                };
            }
            self.counters.messages_sent.fetch_add(1, Relaxed);
            self.counters.flows_sent.fetch_add(chunk.len() as u64, Relaxed);
        }
    }

    /// The records of a batch of events from the ring buffer.
    fn records(&self, events: &[SyncEvent]) -> Vec<Record> {
        let dir = self.dir.read().expect("directory lock");
        events
            .iter()
            .filter_map(|ev| {
                let age = if ev.kind == SYNC_NAT {
                    self.clock.age_ms(ev.flow.seen)
                } else {
                    0
                };
                dir.record(ev, age)
            })
            .collect()
    }

    /// Reads the program's events every `POLL` (the program does not wake
    /// the reader: see lb-ebpf's sync.rs) and sends them on.
    async fn events(self: Arc<Self>, mut ring: RingBuf<MapData>) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut events = Vec::new();
            while let Some(item) = ring.next() {
                if item.len() >= size_of::<SyncEvent>() {
                    // SAFETY: the program writes whole SyncEvents; read
                    // unaligned as the ring promises only 8 bytes.
                    events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SyncEvent>()) });
                }
            }
            if events.is_empty() {
                continue;
            }
            let records = self.records(&events);
            if let Some(lag) = records.iter().map(|r| r.age_ms).max() {
                self.counters.lag_ms.store(u64::from(lag), Relaxed);
            }
            self.send(&records).await;
        }
    }

    /// Installs a peer's records; returns how many were written.
    fn install(&self, records: &[Record]) -> usize {
        let dir = self.dir.read().expect("directory lock");
        let mut t = self.tables.lock().expect("tables lock");
        let c = &self.counters;
        let mut n = 0;
        for r in records {
            let seen = self.clock.seen_at(r.age_ms);
            let done = match dir.place(r, seen) {
                Ok(Target::Nat { slot, flow }) => t.install_nat(slot, flow),
                Ok(Target::Dsr4(k, f)) => t.install_dsr4(k, f),
                Ok(Target::Dsr6(k, f)) => t.install_dsr6(k, f),
                Err(_) => {
                    c.unplaced.fetch_add(1, Relaxed);
                    continue;
                }
            };
            match done {
                Ok(Install::Written) => n += 1,
                Ok(Install::Conflict) => {
                    c.conflicts.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    if c.install_errors.fetch_add(1, Relaxed) == 0 {
                        tracing::warn!("flow sync: installing a flow failed: {e}");
                    }
                }
            }
        }
        c.flows_installed.fetch_add(n as u64, Relaxed);
        n
    }

    fn reject(&self, from: SocketAddr, why: &dyn std::fmt::Display) {
        if self.counters.rejected.fetch_add(1, Relaxed) < 10 {
            tracing::warn!(%from, "flow sync: message refused: {why}");
        }
    }

    fn is_peer(&self, from: SocketAddr) -> bool {
        self.peers.iter().any(|p| p.addr.ip() == from.ip())
    }

    /// Whether sequence number `seq` of `sender` is new (and now seen).
    fn first_time(&self, sender: u64, seq: u64) -> bool {
        let mut seqs = self.seqs.lock().expect("seqs lock");
        // A restarted peer has a new id: its old ones go after a while.
        if seqs.len() > 4 * self.peers.len() + 16 {
            seqs.clear();
        }
        let (top, seen) = seqs.entry(sender).or_insert((0, 0));
        if seq > *top {
            let shift = seq - *top;
            *seen = if shift >= SEQ_WINDOW { 0 } else { *seen << shift };
            *seen |= 1;
            *top = seq;
            return true;
        }
        let back = *top - seq;
        if back >= SEQ_WINDOW || *seen & (1 << back) != 0 {
            return false;
        }
        *seen |= 1 << back;
        true
    }

    fn datagram(&self, buf: &[u8], from: SocketAddr) {
        if !self.is_peer(from) {
            return self.reject(from, &"not from a configured peer");
        }
        let (h, records) = match wire::decode(&self.key, buf) {
            Ok((h, r)) if h.kind == Kind::Flows => (h, r),
            Ok(_) => return self.reject(from, &"not a flow update"),
            Err(e) => return self.reject(from, &e),
        };
        if !Self::fresh(&h) {
            return self.reject(
                from,
                &"its clock is more than a minute from ours (run NTP), or it is replayed",
            );
        }
        if h.sender == self.sender {
            return self.reject(from, &"this node's own message, sent back");
        }
        if !self.first_time(h.sender, h.seq) {
            return self.reject(from, &"replayed (sequence number seen before)");
        }
        if let Some(p) = self.peers.iter().find(|p| p.addr.ip() == from.ip()) {
            *p.heard.lock().expect("peer lock") = Some(Instant::now());
        }
        self.counters.messages_received.fetch_add(1, Relaxed);
        self.counters.flows_received.fetch_add(records.len() as u64, Relaxed);
        self.install(&records);
    }

    async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 2048];
        loop {
            match self.socket.recv_from(&mut buf).await {
                Ok((n, from)) => self.datagram(&buf[..n], from),
                Err(e) => {
                    tracing::warn!("flow sync: receive failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// This node's whole table (or, with `since`, the full-NAT flows that
    /// saw packets since then), as records.
    fn table(&self, since: Option<u64>) -> Result<Vec<Record>, SyncError> {
        let dir = self.dir.read().expect("directory lock").clone();
        let t = Tables::open(&self.pins, self.hz)?;
        let mut regions: Vec<u32> = dir.regions.keys().copied().collect();
        regions.sort_unstable();
        let mut out = Vec::new();
        for (slot, f) in t.nat_flows(&regions, since) {
            let family = match dir.regions.get(&(slot / NAT_PORTS)) {
                Some(a) if a.is_ipv4() => FAMILY_V4,
                _ => FAMILY_V6,
            };
            let ev = SyncEvent {
                kind: SYNC_NAT,
                family,
                _pad: 0,
                slot,
                flow: f,
            };
            out.extend(dir.record(&ev, self.clock.age_ms(f.seen)));
        }
        if since.is_none() {
            out.extend(t.dsr_flows().iter().filter_map(|d| dir.dsr_record(d)));
        }
        Ok(out)
    }

    /// Re-sends the full-NAT flows this node forwarded since the last
    /// round, paced (64 flows a millisecond) so that a large table neither
    /// floods the peers' sockets nor eats the new flows' rate.
    async fn refresh(self: Arc<Self>) {
        let mut since = self.clock.now();
        loop {
            tokio::time::sleep(REFRESH).await;
            let now = self.clock.now();
            let me = Arc::clone(&self);
            let records = match tokio::task::spawn_blocking(move || me.table(Some(since))).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!("flow sync: refresh: {e}");
                    continue;
                }
                Err(_) => continue,
            };
            since = now;
            for chunk in records.chunks(4 * wire::MAX_DATAGRAM) {
                self.send(chunk).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    async fn serve_pulls(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PULLS));
        loop {
            let Ok((stream, from)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if !self.is_peer(from) {
                self.reject(from, &"pull not from a configured peer");
                continue;
            }
            let (me, slots) = (Arc::clone(&self), Arc::clone(&slots));
            tokio::spawn(async move {
                let served = tokio::time::timeout(PULL_TIMEOUT, me.serve_pull(stream, from, slots)).await;
                if let Ok(Err(e)) | Err(e) = served.map_err(|_| "timed out".to_string()) {
                    tracing::warn!(%from, "flow sync: serving a pull failed: {e}");
                }
            });
        }
    }

    async fn serve_pull(
        self: Arc<Self>,
        mut stream: TcpStream,
        from: SocketAddr,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> Result<(), String> {
        let req = tokio::time::timeout(Duration::from_secs(5), read_message(&mut stream))
            .await
            .map_err(|_| "no request within 5 s".to_string())??;
        match wire::decode(&self.key, &req) {
            Ok((h, _)) if h.kind == Kind::Pull && Self::fresh(&h) && self.first_time(h.sender, h.seq) => {}
            Ok(_) => {
                self.reject(from, &"not a fresh pull request");
                return Ok(());
            }
            Err(e) => {
                self.reject(from, &e);
                return Ok(());
            }
        }
        // Only an authenticated request takes one of the few slots.
        let Ok(_permit) = slots.try_acquire_owned() else {
            return Err(format!("{MAX_PULLS} pulls are being served already"));
        };
        let me = Arc::clone(&self);
        let records = tokio::task::spawn_blocking(move || me.table(None))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for chunk in records.chunks(wire::MAX_RECORDS) {
            let msg = wire::encode(&self.key, &self.header(Kind::Flows, chunk.len()), chunk);
            stream.write_all(&msg).await.map_err(|e| e.to_string())?;
        }
        let end = wire::encode(&self.key, &self.header(Kind::End, 0), &[]);
        stream.write_all(&end).await.map_err(|e| e.to_string())?;
        tracing::info!(%from, flows = records.len(), "flow sync: served a full pull");
        Ok(())
    }

    /// The whole table of `peer`, installed; `Err((reached, why))`.
    async fn pull_from(&self, peer: SocketAddr) -> Result<usize, (bool, String)> {
        let mut stream = match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(peer)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err((false, e.to_string())),
            Err(_) => return Err((false, "no answer within 1 s".into())),
        };
        let pulled = tokio::time::timeout(PULL_TIMEOUT, self.pull_over(&mut stream)).await;
        pulled
            .map_err(|_| (true, "timed out".to_string()))?
            .map_err(|e| (true, e))
    }

    async fn pull_over(&self, stream: &mut TcpStream) -> Result<usize, String> {
        let req = wire::encode(&self.key, &self.header(Kind::Pull, 0), &[]);
        stream.write_all(&req).await.map_err(|e| e.to_string())?;
        let mut n = 0;
        loop {
            let msg = read_message(stream).await?;
            let (h, records) = wire::decode(&self.key, &msg).map_err(|e| e.to_string())?;
            if !Self::fresh(&h) {
                return Err("its clock is more than a minute from ours".into());
            }
            match h.kind {
                Kind::Flows => n += self.install(&records),
                Kind::End => return Ok(n),
                Kind::Pull => return Err("a pull request in answer".into()),
            }
        }
    }

    /// Pulls the whole table from the first peer that answers, then says
    /// this node is ready. A node that just booted may not reach its peers
    /// at once (links coming up, neighbours resolving): the peers are asked
    /// in turn. Only when none could even be reached for `PULL_DEADLINE`
    /// does the node conclude that it is the first one up and start with
    /// its own table; a peer that answers but fails is asked again.
    async fn initial_pull(self: Arc<Self>) {
        let start = Instant::now();
        let mut reached = false;
        let mut outcome = "no peers".to_string();
        'rounds: while !self.peers.is_empty() {
            for p in &self.peers {
                let t0 = Instant::now();
                match self.pull_from(p.addr).await {
                    Ok(n) => {
                        outcome = format!("{n} flows from {} in {} ms", p.addr, t0.elapsed().as_millis());
                        break 'rounds;
                    }
                    Err((r, e)) => {
                        reached |= r;
                        if r {
                            tracing::warn!(peer = %p.addr, "flow sync: pull failed: {e}");
                        } else {
                            tracing::debug!(peer = %p.addr, "flow sync: pull failed: {e}");
                        }
                    }
                }
            }
            if !reached && start.elapsed() >= PULL_DEADLINE {
                outcome = format!(
                    "no peer answered in {} s; started with this node's own table",
                    PULL_DEADLINE.as_secs()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!("flow sync: initial pull: {outcome}");
        *self.pull.lock().expect("pull lock") = outcome;
        self.ready.store(true, Relaxed);
    }
}

/// Asks for a larger receive buffer (the kernel caps it at
/// net.core.rmem_max); the default holds about a hundred datagrams.
fn set_rcvbuf(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on an open socket with an int option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&RCVBUF as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(
            "flow sync: cannot enlarge the receive buffer: {}",
            io::Error::last_os_error()
        );
    }
}

/// One whole message from a stream (header first, for its length).
async fn read_message(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; wire::HEADER];
    stream.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let h = wire::peek(&buf).map_err(|e| e.to_string())?;
    buf.resize(wire::message_len(h.count), 0);
    stream
        .read_exact(&mut buf[wire::HEADER..])
        .await
        .map_err(|e| e.to_string())?;
    Ok(buf)
}
