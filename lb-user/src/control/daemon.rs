//! The daemon's state: start (config, data plane, proxy, checks), applying
//! backend states, reloads, health changes, shutdown.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    os::fd::RawFd,
    path::PathBuf,
    sync::Arc,
};

use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    health,
    transaction::{NoSuchTransaction, Transactions},
    vip::{self, VipAliases},
};
use crate::{
    config::{self, Config, LoadError, Mode},
    l4::{
        bpf::DataPlaneError,
        dataplane::DataPlane,
        sync::{FlowSync, SyncError},
    },
    l7, logging,
    model::{AdminState, BackendRef, BackendStates},
};

pub type Shared = Arc<tokio::sync::Mutex<Daemon>>;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("services {0} forward in XDP and need an interface: set global.interface or pass --iface")]
    NoInterface(String),
    #[error("cannot listen on the admin address {addr}: {cause}")]
    Admin {
        addr: std::net::SocketAddr,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Upgrade(#[from] super::upgrade::UpgradeError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the proxy's threads: {0}")]
    Threads(std::io::Error),
    #[error("no backend {backend:?} in service {service:?}")]
    NoSuchBackend { service: String, backend: String },
    #[error(transparent)]
    Vip(#[from] crate::control::vip::VipError),
    #[error(transparent)]
    Proxy(#[from] crate::l7::ProxyError),
    #[error("weight {0} is not in 0-{max}", max = config::MAX_WEIGHT)]
    Weight(u32),
    #[error("config version {given} is stale: the running config is version {current}")]
    StaleVersion { given: u64, current: u64 },
    #[error(transparent)]
    NoSuchTransaction(#[from] NoSuchTransaction),
    #[error(transparent)]
    TransactionFull(#[from] super::transaction::TransactionFull),
    #[error("no XDP data path runs here (an http-only config, or no interface)")]
    NoDataPlane,
    #[error("service {0:?} has no appsession table (no such http service, or no [service.appsession])")]
    NoSessions(String),
    #[error("[sync] shares the XDP data path's flows and needs it: set global.interface or pass --iface")]
    SyncWithoutDataPlane,
    #[error("starting the flow sync")]
    Sync(#[source] SyncError),
    #[error(transparent)]
    Edit(#[from] super::resources::EditError),
    #[error("the change makes an invalid config:\n{}", .0.iter().map(|e| e.reason.clone()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<config::ConfigError>),
    #[error(
        "the config file {0} changed since xlb loaded it: reload it (`xlb reload`) or undo the edit, then write again"
    )]
    FileChanged(PathBuf),
    #[error("the config file {path}")]
    File {
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
}

pub struct Daemon {
    pub(super) path: PathBuf,
    pub(super) cfg: Config,
    /// The file's text that `cfg` came from: the config API edits only
    /// that, never hand edits that were not reloaded.
    pub(super) loaded: String,
    pub(super) dp: Option<DataPlane>,
    /// Backends that failed their health checks.
    pub(super) down: HashSet<BackendRef>,
    /// Operator states other than ready.
    pub(super) admin: HashMap<BackendRef, AdminState>,
    /// Weights set at runtime (`xlb server set-weight`), until the next
    /// reload: the file then wins, as with HAProxy's `set weight`.
    pub(super) weights: HashMap<BackendRef, u32>,
    pub(super) checks: Vec<JoinHandle<()>>,
    pub(super) health_tx: mpsc::Sender<health::Change>,
    pub(super) vips: Option<VipAliases>,
    /// The L7 proxy and the backend states it reads.
    pub(super) proxy: l7::Proxy,
    pub(super) l7_states: l7::States,
    /// The config version: one more with every reload and every committed
    /// change, so a writer can tell whether it saw the latest.
    pub(super) version: u64,
    pub(super) transactions: Transactions,
    /// The flow-state sync with other nodes (`[sync]`).
    pub(super) sync: Option<FlowSync>,
}

impl Daemon {
    /// Loads the config, attaches XDP where the config needs it, programs
    /// the maps and starts the health checks (so it needs a tokio runtime).
    /// Nothing stays attached if this fails, but with `takeover` (a
    /// seamless upgrade): the data plane and VIPs then stay as the running
    /// process has them. `inherited`: listening sockets taken from it.
    pub fn start(
        path: PathBuf,
        iface: Option<String>,
        health_tx: mpsc::Sender<health::Change>,
        inherited: HashMap<SocketAddr, std::net::TcpListener>,
        takeover: bool,
    ) -> Result<Self, RunError> {
        let (cfg, loaded) = config::load_text(&path)?;
        logging::configure(cfg.global.log.clone());
        if cfg.global.nonlocal_bind {
            vip::enable_nonlocal_bind();
        }
        let mut vips = match &cfg.global.vip_interface {
            Some(i) => Some(VipAliases::new(i)?),
            None => None,
        };
        let mut dp = None;
        let (sync, proxy, l7_states) = match Self::bring_up(&cfg, iface, &mut vips, &mut dp, inherited) {
            Ok(up) => up,
            Err(e) => {
                if takeover {
                    if let Some(dp) = &mut dp {
                        dp.set_keep(true);
                    }
                    if let Some(v) = &mut vips {
                        v.leave();
                    }
                }
                return Err(e);
            }
        };
        let mut d = Self {
            path,
            cfg,
            loaded,
            dp,
            down: HashSet::new(),
            admin: HashMap::new(),
            weights: HashMap::new(),
            checks: Vec::new(),
            health_tx,
            vips,
            proxy,
            l7_states,
            version: 1,
            transactions: Transactions::default(),
            sync,
        };
        d.restart_checks();
        d.persist();
        Ok(d)
    }

    /// What [`Daemon::start`] can fail at, after the VIP aliases exist: the
    /// data plane (into `dp` as soon as it is attached), flow sync, VIPs,
    /// the proxy.
    fn bring_up(
        cfg: &Config,
        iface: Option<String>,
        vips: &mut Option<VipAliases>,
        dp: &mut Option<DataPlane>,
        inherited: HashMap<SocketAddr, std::net::TcpListener>,
    ) -> Result<(Option<FlowSync>, l7::Proxy, l7::States), RunError> {
        let iface = iface.or_else(|| cfg.global.interface.clone());
        let l4: Vec<&str> = cfg
            .services
            .iter()
            .filter(|s| s.mode != Mode::Http)
            .map(|s| s.name.as_str())
            .collect();
        match iface {
            Some(iface) => {
                let plane = dp.insert(DataPlane::start(&iface, cfg.global.xdp_mode, &cfg.global.pin_dir)?);
                if let Some(v) = vips.as_mut() {
                    v.adopt(&plane.adopted_vips);
                }
                plane.apply(cfg, &BackendStates::default())?;
            }
            None if !l4.is_empty() => return Err(RunError::NoInterface(l4.join(", "))),
            None => {}
        }
        let sync = match (&cfg.sync, dp.as_mut()) {
            (Some(s), Some(dp)) => Some(dp.start_sync(s).map_err(RunError::Sync)?),
            (Some(_), None) => return Err(RunError::SyncWithoutDataPlane),
            (None, _) => None,
        };
        if let Some(v) = vips.as_mut() {
            v.sync(cfg)?;
        }
        let threads = cfg
            .global
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        l7::workers::start(threads).map_err(RunError::Threads)?;
        peer_credentials(cfg);
        let l7_states = l7::States::default();
        let mut proxy = l7::Proxy::new(l7_states.clone(), l7::peers::spawn(cfg.global.peers.clone()), inherited);
        proxy.apply(cfg)?;
        if !cfg.global.peers.is_empty() {
            for s in cfg.services.iter().filter(|s| s.appsession.is_some()) {
                if let Some(t) = proxy.sessions(&s.name) {
                    tokio::spawn(l7::peers::pull(cfg.global.peers.clone(), s.name.clone(), t));
                }
            }
        }
        Ok((sync, proxy, l7_states))
    }

    /// The running config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether this node should take traffic (`GET /healthz`): the XDP
    /// program attached to an interface that still exists, its maps
    /// programmed, and (with `[sync]`) the initial pull from a peer done.
    pub fn health(&self) -> Result<(), String> {
        if let Some(dp) = &self.dp {
            if !crate::l4::dataplane::interface_exists(&dp.iface) {
                return Err(format!("interface {} is gone, and the XDP program with it", dp.iface));
            }
        }
        if self.sync.as_ref().is_some_and(|s| !s.ready()) {
            return Err("pulling the flow table from a sync peer".into());
        }
        Ok(())
    }

    /// Saves what the next run needs to take over the data plane.
    pub(super) fn persist(&self) {
        if let Some(dp) = &self.dp {
            let vips = self.vips.as_ref().map(VipAliases::added).unwrap_or_default();
            if let Err(e) = dp.save_state(&vips) {
                tracing::warn!("saving state for the next run failed (a restart will start afresh): {e}");
            }
        }
    }

    /// At exit: leave the data plane (and its VIPs) running for the next
    /// run, or take everything down.
    /// A new process is taking over: flow sync stops here (the new one
    /// binds its sockets); the listening sockets are given. This one goes
    /// on serving until [`Daemon::retire`].
    pub fn hand_over(&mut self) -> Vec<(SocketAddr, RawFd)> {
        self.sync = None;
        self.proxy.sockets()
    }

    /// The new process went away before it ran: carry on as before.
    pub fn resume(&mut self) {
        if let (Some(s), Some(dp)) = (&self.cfg.sync, &mut self.dp) {
            match dp.start_sync(s) {
                Ok(sync) => self.sync = Some(sync),
                Err(e) => tracing::error!("flow sync could not restart after the failed upgrade: {e}"),
            }
        }
    }

    /// The new process runs: this one stops accepting and checking (it
    /// only finishes what it has).
    pub fn retire(&mut self) {
        for t in self.checks.drain(..) {
            t.abort();
        }
        self.proxy.pause();
    }

    /// Leaves after a takeover: the data plane, its pins and the VIPs stay
    /// as they are for the new process (nothing saved: it saves its own).
    pub fn leave_to_successor(&mut self) {
        if let Some(dp) = &mut self.dp {
            dp.set_keep(true);
        }
        if let Some(v) = &mut self.vips {
            v.leave();
        }
    }

    /// Open client connections of the L7 proxy.
    pub fn open_connections(&self) -> usize {
        self.proxy.connections().open
    }

    pub fn shutdown(&mut self, cleanup: bool) {
        self.persist();
        if let Some(dp) = &mut self.dp {
            dp.set_keep(!cleanup);
            if !cleanup {
                if let Some(v) = &mut self.vips {
                    v.leave();
                }
            }
        }
    }

    pub(super) fn restart_checks(&mut self) {
        for t in self.checks.drain(..) {
            t.abort();
        }
        let down = &self.down;
        let is_up = |s: &str, b: &str| !down.contains(&(s.to_string(), b.to_string()));
        self.checks = health::spawn(&self.cfg, &is_up, self.health_tx.clone());
    }

    /// The backends' states as the map manager needs them.
    pub(super) fn states(down: &HashSet<BackendRef>, admin: &HashMap<BackendRef, AdminState>) -> BackendStates {
        let with = |st: AdminState| admin.iter().filter(move |(_, s)| **s == st).map(|(r, _)| r.clone());
        BackendStates {
            out: down.iter().cloned().chain(with(AdminState::Maint)).collect(),
            drained: with(AdminState::Drain).collect(),
        }
    }

    /// The config with the runtime weights applied.
    pub(super) fn effective(&self) -> Config {
        weighted(&self.cfg, &self.weights)
    }

    /// The weight in effect: set at runtime, else the file's.
    pub(super) fn effective_weight(&self, r: &BackendRef) -> u32 {
        self.weights.get(r).copied().unwrap_or_else(|| {
            self.cfg
                .services
                .iter()
                .filter(|s| s.name == r.0)
                .flat_map(|s| &s.backends)
                .find(|b| b.name == r.1)
                .map_or(0, |b| b.weight)
        })
    }

    pub(super) fn apply(&mut self) -> Result<(), RunError> {
        let states = Self::states(&self.down, &self.admin);
        let cfg = self.effective();
        if let Some(dp) = &mut self.dp {
            dp.apply(&cfg, &states)?;
        }
        *self.l7_states.write().expect("states lock") = Arc::new(states);
        self.persist();
        Ok(())
    }

    /// Re-reads the config file; a bad file leaves everything as it was.
    pub fn reload(&mut self) -> Result<(), RunError> {
        let (cfg, text) = config::load_text(&self.path)?;
        self.switch_to(cfg, HashMap::new())?;
        self.loaded = text;
        Ok(())
    }

    /// Runs `cfg` instead of the running config, with the runtime
    /// `weights` in place of its own (a reload keeps none): all of it, or
    /// (on an error) nothing of it.
    pub(super) fn switch_to(&mut self, cfg: Config, weights: HashMap<BackendRef, u32>) -> Result<(), RunError> {
        // What the tables are built from; `cfg` stays what the file says.
        let run = weighted(&cfg, &weights);
        let (mut now, mut then) = (cfg.global.clone(), self.cfg.global.clone());
        // These apply at once.
        (now.admin_auth, now.maxconn, now.log) = (None, 0, Default::default());
        (then.admin_auth, then.maxconn, then.log) = (None, 0, Default::default());
        if now != then {
            tracing::warn!("[global] settings changed: they take effect when xlb restarts (but admin_auth, maxconn and log), services now");
        }
        if cfg.sync != self.cfg.sync {
            tracing::warn!("[sync] changed: it takes effect when xlb restarts");
        }
        // Health and operator states carry over for backends still configured.
        let still: HashSet<BackendRef> = cfg
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), b.name.clone())))
            .collect();
        let down: HashSet<BackendRef> = self.down.intersection(&still).cloned().collect();
        let mut admin = self.admin.clone();
        admin.retain(|r, _| still.contains(r));
        // All or nothing: first what can fail and be undone (new VIPs, new
        // listeners), then the XDP maps (re-applied as they were if that
        // fails), and only then the switch of the L7 side.
        let added = match &mut self.vips {
            Some(v) => v.add_new(&cfg)?,
            None => Vec::new(),
        };
        let undo_vips = |d: &mut Self| {
            if let Some(v) = &mut d.vips {
                v.take_back(&added);
            }
        };
        let bound = match self.proxy.prepare(&cfg) {
            Ok(b) => b,
            Err(e) => {
                undo_vips(self);
                return Err(e.into());
            }
        };
        let applied = match &mut self.dp {
            Some(dp) => dp.apply(&run, &Self::states(&down, &admin)),
            None => Ok(()),
        };
        if let Err(e) = applied {
            if let Err(again) = self.apply() {
                tracing::error!("restoring the XDP maps of the running config failed: {again}");
            }
            undo_vips(self);
            return Err(e.into());
        }
        self.proxy.commit(bound, &run);
        if cfg.global.log != self.cfg.global.log {
            logging::configure(cfg.global.log.clone());
        }
        if let Some(v) = &mut self.vips {
            v.remove_stale(&cfg);
        }
        *self.l7_states.write().expect("states lock") = Arc::new(Self::states(&down, &admin));
        tracing::info!(services = cfg.services.len(), "config reloaded");
        self.cfg = cfg;
        self.down = down;
        self.admin = admin;
        self.weights = weights;
        self.version += 1;
        self.restart_checks();
        self.persist();
        Ok(())
    }

    /// A health-check state change: logged, and the tables rebuilt.
    pub fn health_changed(&mut self, c: health::Change) {
        let key = (c.service.clone(), c.backend.clone());
        let changed = if c.up {
            self.down.remove(&key)
        } else {
            self.down.insert(key)
        };
        if !changed {
            return;
        }
        // Syslog severities as HAProxy's: a server down is an alert, back
        // up a notice, a backend left with none an emergency.
        if c.up {
            tracing::warn!(
                syslog = "notice",
                "backend {} of service {} is UP: {}",
                c.backend,
                c.service,
                c.reason
            );
        } else {
            tracing::warn!(
                syslog = "alert",
                "backend {} of service {} is DOWN: {}",
                c.backend,
                c.service,
                c.reason
            );
            let usable = |b: &&crate::config::Backend| {
                let r = (c.service.clone(), b.name.clone());
                !self.down.contains(&r) && self.admin.get(&r) != Some(&AdminState::Maint)
            };
            let service = self.cfg.services.iter().find(|s| s.name == c.service);
            if service.is_some_and(|s| !s.backends.iter().any(|b| usable(&b))) {
                tracing::error!(syslog = "emerg", "service {} has no server available!", c.service);
            }
        }
        if let Err(e) = self.apply() {
            tracing::error!("rebuilding the tables after a health change failed: {e}");
        }
    }
}

impl Daemon {
    /// The appsession table of an http service.
    pub fn sessions(&self, service: &str) -> Result<Arc<l7::appsession::Table>, RunError> {
        self.proxy
            .sessions(service)
            .ok_or_else(|| RunError::NoSessions(service.to_string()))
    }

    /// `xlb debug datapath on|off`: the XDP program's rare events (no
    /// backend, route, neighbour or snat port; malformed headers) into the log.
    pub fn set_datapath_debug(&mut self, on: bool) -> Result<(), RunError> {
        let dp = self.dp.as_mut().ok_or(RunError::NoDataPlane)?;
        dp.set_debug(on)?;
        tracing::warn!("data path event log {}", if on { "on" } else { "off" });
        Ok(())
    }

    /// Whether the data path's event log is on (None: no data path).
    pub fn datapath_debug(&self) -> Option<bool> {
        self.dp.as_ref().map(|d| d.debug())
    }

    /// The stats page settings, if the config has a `[stats]` section.
    pub fn stats_cfg(&self) -> Option<config::StatsCfg> {
        self.cfg.stats.clone()
    }

    pub fn admin_auth(&self) -> Option<config::Credentials> {
        self.cfg.global.admin_auth.clone()
    }
}

/// What this node presents to its appsession peers: the credentials given
/// to `xlb run` (`--auth-file`, `XLB_ADMIN_AUTH`), else its own
/// `admin_auth` when that holds a password (the nodes of a cluster share
/// it).
fn peer_credentials(cfg: &Config) {
    if cfg.global.peers.is_empty() || crate::admin_client::has_credentials() {
        return;
    }
    let Some(a) = &cfg.global.admin_auth else {
        return;
    };
    match a.password() {
        Some(p) => {
            crate::admin_client::use_credentials(format!("{}:{p}", a.user));
        }
        None => tracing::warn!(
            "admin_auth holds a hash: give xlb run the peers' credentials (--auth-file or XLB_ADMIN_AUTH), or peers refuse its pushes"
        ),
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for t in &self.checks {
            t.abort();
        }
    }
}

pub fn shared(daemon: Daemon) -> Shared {
    Arc::new(tokio::sync::Mutex::new(daemon))
}

/// `cfg` with the runtime `weights` in place of the file's.
fn weighted(cfg: &Config, weights: &HashMap<BackendRef, u32>) -> Config {
    let mut cfg = cfg.clone();
    for s in &mut cfg.services {
        for b in &mut s.backends {
            if let Some(w) = weights.get(&(s.name.clone(), b.name.clone())) {
                b.weight = *w;
            }
        }
    }
    cfg
}
