//! `xlb run`: the long-running daemon.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    admin,
    config::{self, Config, LoadError, Mode},
    dataplane::{DataPlane, DataPlaneError},
    health, l7,
    map_manager::{BackendRef, BackendStates},
    status::{BackendStatus, ServiceStatus, Status},
    transaction::{Change, NoSuchTransaction, Transaction, Transactions},
    vip::{self, VipAliases},
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
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the proxy's threads: {0}")]
    Threads(std::io::Error),
    #[error("no backend {backend:?} in service {service:?}")]
    NoSuchBackend { service: String, backend: String },
    #[error(transparent)]
    Vip(#[from] crate::vip::VipError),
    #[error(transparent)]
    Proxy(#[from] crate::l7::ProxyError),
    #[error("weight {0} is not in 0-{max}", max = config::MAX_WEIGHT)]
    Weight(u32),
    #[error("config version {given} is stale: the running config is version {current}")]
    StaleVersion { given: u64, current: u64 },
    #[error(transparent)]
    NoSuchTransaction(#[from] NoSuchTransaction),
    #[error("service {0:?} has no appsession table (no such http service, or no [service.appsession])")]
    NoSessions(String),
}

/// What the operator set with `xlb server set-state` (HAProxy's
/// ready/drain/maint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl std::str::FromStr for AdminState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maint" => Ok(AdminState::Maint),
            _ => Err(format!("state {s:?} is not ready, drain or maint")),
        }
    }
}

pub struct Daemon {
    path: PathBuf,
    cfg: Config,
    dp: Option<DataPlane>,
    /// Backends that failed their health checks.
    down: HashSet<BackendRef>,
    /// Operator states other than ready.
    admin: HashMap<BackendRef, AdminState>,
    /// Weights set at runtime (`xlb server set-weight`), until the next
    /// reload: the file then wins, as with HAProxy's `set weight`.
    weights: HashMap<BackendRef, u32>,
    checks: Vec<JoinHandle<()>>,
    health_tx: mpsc::Sender<health::Change>,
    vips: Option<VipAliases>,
    /// The L7 proxy and the backend states it reads.
    proxy: l7::Proxy,
    l7_states: l7::States,
    /// The config version: one more with every reload and every committed
    /// change, so a writer can tell whether it saw the latest.
    version: u64,
    transactions: Transactions,
}

impl Daemon {
    /// Loads the config, attaches XDP where the config needs it, programs
    /// the maps and starts the health checks (so it needs a tokio runtime).
    /// Nothing stays attached if this fails.
    pub fn start(
        path: PathBuf,
        iface: Option<String>,
        health_tx: mpsc::Sender<health::Change>,
    ) -> Result<Self, RunError> {
        let cfg = config::load(&path)?;
        if cfg.global.nonlocal_bind {
            vip::enable_nonlocal_bind();
        }
        let mut vips = match &cfg.global.vip_interface {
            Some(i) => Some(VipAliases::new(i)?),
            None => None,
        };
        let iface = iface.or_else(|| cfg.global.interface.clone());
        let l4: Vec<&str> = cfg
            .services
            .iter()
            .filter(|s| s.mode != Mode::Http)
            .map(|s| s.name.as_str())
            .collect();
        let dp = match iface {
            Some(iface) => {
                let mut dp = DataPlane::start(&iface, cfg.global.xdp_mode, &cfg.global.pin_dir)?;
                if let Some(v) = &mut vips {
                    v.adopt(&dp.adopted_vips);
                }
                dp.apply(&cfg, &BackendStates::default())?;
                Some(dp)
            }
            None if !l4.is_empty() => return Err(RunError::NoInterface(l4.join(", "))),
            None => None,
        };
        if let Some(v) = &mut vips {
            v.sync(&cfg)?;
        }
        let threads = cfg
            .global
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        l7::workers::start(threads).map_err(RunError::Threads)?;
        let l7_states = l7::States::default();
        let mut proxy = l7::Proxy::new(l7_states.clone(), l7::peers::spawn(cfg.global.peers.clone()));
        proxy.apply(&cfg)?;
        if !cfg.global.peers.is_empty() {
            for s in cfg.services.iter().filter(|s| s.appsession.is_some()) {
                if let Some(t) = proxy.sessions(&s.name) {
                    tokio::spawn(l7::peers::pull(cfg.global.peers.clone(), s.name.clone(), t));
                }
            }
        }
        let mut d = Self {
            path,
            cfg,
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
        };
        d.restart_checks();
        d.persist();
        Ok(d)
    }

    /// Saves what the next run needs to take over the data plane.
    fn persist(&self) {
        if let Some(dp) = &self.dp {
            let vips = self.vips.as_ref().map(VipAliases::added).unwrap_or_default();
            if let Err(e) = dp.save_state(&vips) {
                tracing::warn!("saving state for the next run failed (a restart will start afresh): {e}");
            }
        }
    }

    /// At exit: leave the data plane (and its VIPs) running for the next
    /// run, or take everything down.
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

    fn restart_checks(&mut self) {
        for t in self.checks.drain(..) {
            t.abort();
        }
        let down = &self.down;
        let is_up = |s: &str, b: &str| !down.contains(&(s.to_string(), b.to_string()));
        self.checks = health::spawn(&self.cfg, &is_up, self.health_tx.clone());
    }

    /// The backends' states as the map manager needs them.
    fn states(down: &HashSet<BackendRef>, admin: &HashMap<BackendRef, AdminState>) -> BackendStates {
        let with = |st: AdminState| admin.iter().filter(move |(_, s)| **s == st).map(|(r, _)| r.clone());
        BackendStates {
            out: down.iter().cloned().chain(with(AdminState::Maint)).collect(),
            drained: with(AdminState::Drain).collect(),
        }
    }

    /// The config with the runtime weights applied.
    fn effective(&self) -> Config {
        let mut cfg = self.cfg.clone();
        for s in &mut cfg.services {
            for b in &mut s.backends {
                if let Some(w) = self.weights.get(&(s.name.clone(), b.name.clone())) {
                    b.weight = *w;
                }
            }
        }
        cfg
    }

    fn apply(&mut self) -> Result<(), RunError> {
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
        let cfg = config::load(&self.path)?;
        if cfg.global != self.cfg.global {
            tracing::warn!("[global] settings changed: they take effect when xlb restarts, services now");
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
        if let Some(dp) = &mut self.dp {
            dp.apply(&cfg, &Self::states(&down, &admin))?;
        }
        if let Some(v) = &mut self.vips {
            v.sync(&cfg)?;
        }
        self.proxy.apply(&cfg)?;
        *self.l7_states.write().expect("states lock") = Arc::new(Self::states(&down, &admin));
        tracing::info!(services = cfg.services.len(), "config reloaded");
        self.cfg = cfg;
        self.down = down;
        self.admin = admin;
        self.weights.clear();
        self.version += 1;
        self.restart_checks();
        self.persist();
        Ok(())
    }

    /// `xlb server set-state`: ready, drain (no new flows, existing ones
    /// stay) or maint (out: no traffic at all).
    pub fn set_state(&mut self, service: &str, backend: &str, state: AdminState) -> Result<(), RunError> {
        self.commit(&[Change::State {
            service: service.into(),
            backend: backend.into(),
            state,
        }])
        .map(drop)
    }

    /// `xlb server set-weight`: a new weight until the next reload (0
    /// drains, as in the file).
    pub fn set_weight(&mut self, service: &str, backend: &str, weight: u32) -> Result<(), RunError> {
        self.commit(&[Change::Weight {
            service: service.into(),
            backend: backend.into(),
            weight,
        }])
        .map(drop)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Refuses a write made against another version than the running one.
    pub fn check_version(&self, given: Option<u64>) -> Result<(), RunError> {
        match given {
            Some(given) if given != self.version => Err(RunError::StaleVersion {
                given,
                current: self.version,
            }),
            _ => Ok(()),
        }
    }

    /// A change that names a backend that exists, with a valid value.
    fn validate(&self, c: &Change) -> Result<(), RunError> {
        let (service, backend) = c.target();
        self.check_backend(service, backend)?;
        match c {
            Change::Weight { weight, .. } if i64::from(*weight) > config::MAX_WEIGHT => Err(RunError::Weight(*weight)),
            _ => Ok(()),
        }
    }

    /// Applies `changes` together (all valid, or none applied) and returns
    /// the new config version.
    pub fn commit(&mut self, changes: &[Change]) -> Result<u64, RunError> {
        for c in changes {
            self.validate(c)?;
        }
        let (admin, weights) = (self.admin.clone(), self.weights.clone());
        for c in changes {
            let (service, backend) = c.target();
            let r = (service.to_string(), backend.to_string());
            match *c {
                Change::State { state, .. } => {
                    let before = self.admin.get(&r).copied().unwrap_or(AdminState::Ready);
                    match state {
                        AdminState::Ready => self.admin.remove(&r),
                        other => self.admin.insert(r, other),
                    };
                    tracing::warn!(
                        "backend {backend} of service {service}: {before:?} -> {state:?} (set by the operator)"
                    );
                }
                Change::Weight { weight, .. } => {
                    let before = self.effective_weight(&r);
                    self.weights.insert(r, weight);
                    tracing::warn!(
                        "backend {backend} of service {service}: weight {before} -> {weight} (set by the operator)"
                    );
                }
            }
        }
        // Weights shape the proxy's balancers: it is rebuilt only for them
        // (states it reads from `l7_states` as they change).
        let reweigh = changes.iter().any(|c| matches!(c, Change::Weight { .. }));
        let applied = self.apply_changes(reweigh);
        if let Err(e) = applied {
            // Back to what ran before.
            (self.admin, self.weights) = (admin, weights);
            let _ = self.apply_changes(reweigh);
            return Err(e);
        }
        self.version += 1;
        Ok(self.version)
    }

    fn apply_changes(&mut self, reweigh: bool) -> Result<(), RunError> {
        self.apply()?;
        if reweigh {
            self.proxy.apply(&self.effective())?;
        }
        Ok(())
    }

    /// Opens a transaction on `version` (default: the running one).
    pub fn open_transaction(&mut self, version: Option<u64>) -> Result<Transaction, RunError> {
        self.check_version(version)?;
        Ok(self.transactions.open(self.version))
    }

    pub fn transaction(&self, id: &str) -> Result<&Transaction, RunError> {
        Ok(self.transactions.get(id)?)
    }

    pub fn transactions(&self) -> Vec<Transaction> {
        self.transactions.list()
    }

    /// Adds a valid change to an open transaction.
    pub fn stage(&mut self, id: &str, change: Change) -> Result<(), RunError> {
        self.validate(&change)?;
        self.transactions.get_mut(id)?.changes.push(change);
        Ok(())
    }

    /// Commits a transaction; one opened on an older version is dropped
    /// unapplied (someone else changed the config since).
    pub fn commit_transaction(&mut self, id: &str) -> Result<u64, RunError> {
        let t = self.transactions.take(id)?;
        self.check_version(Some(t.version))?;
        self.commit(&t.changes)
    }

    pub fn delete_transaction(&mut self, id: &str) -> Result<(), RunError> {
        self.transactions.take(id)?;
        Ok(())
    }

    fn effective_weight(&self, r: &BackendRef) -> u32 {
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

    fn check_backend(&self, service: &str, backend: &str) -> Result<(), RunError> {
        let known = self
            .cfg
            .services
            .iter()
            .any(|s| s.name == service && s.backends.iter().any(|b| b.name == backend));
        if known {
            Ok(())
        } else {
            Err(RunError::NoSuchBackend {
                service: service.into(),
                backend: backend.into(),
            })
        }
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
        let state = if c.up { "UP" } else { "DOWN" };
        tracing::warn!(
            "backend {} of service {} is {state}: {}",
            c.backend,
            c.service,
            c.reason
        );
        if let Err(e) = self.apply() {
            tracing::error!("rebuilding the tables after a health change failed: {e}");
        }
    }

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
                    port: s.port,
                    protocol: s.protocol.as_str().into(),
                    mode: s.mode.as_str().into(),
                    packets: st.packets,
                    bytes: st.bytes,
                    new_flows: st.new_flows,
                    http,
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

    /// The stats page settings, if the config has a `[stats]` section.
    pub fn stats_cfg(&self) -> Option<config::StatsCfg> {
        self.cfg.stats.clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for t in &self.checks {
            t.abort();
        }
    }
}

/// A proxy holds two descriptors per client (its own and the backend's):
/// lifts the soft open-file limit to the hard one, as HAProxy does, and
/// returns it.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0
        }
    };
    if raised {
        Ok(l.rlim_cur)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads. On the way out the data
/// plane stays attached for the next run, unless `cleanup` (or
/// `on_exit = "cleanup"`) asks to take it down.
pub async fn run(path: PathBuf, iface: Option<String>, cleanup: bool) -> Result<(), RunError> {
    match raise_nofile() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let (health_tx, mut health_rx) = mpsc::channel(64);
    let daemon = Daemon::start(path, iface, health_tx)?;
    let addr = daemon.cfg.global.admin;
    let cleanup = cleanup || daemon.cfg.global.on_exit == config::OnExit::Cleanup;
    let shared = admin::shared(daemon);
    let server = admin::serve(addr, shared.clone())
        .await
        .map_err(|cause| RunError::Admin { addr, cause })?;
    let server = tokio::spawn(server);
    tracing::info!(%addr, "xlb running; admin API listening");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = shared.lock().await.reload() {
                    tracing::error!("reload refused, running config kept:\n{e}");
                }
            }
            Some(change) = health_rx.recv() => shared.lock().await.health_changed(change),
        }
    }
    server.abort();
    shared.lock().await.shutdown(cleanup);
    tracing::info!(cleanup, "stopping");
    Ok(())
}
