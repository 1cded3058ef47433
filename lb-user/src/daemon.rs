//! `xlb run`: the long-running daemon.

use std::{path::PathBuf, sync::Arc};

use tokio::signal::unix::{signal, SignalKind};

use crate::{
    admin,
    config::{self, Config, LoadError, Mode},
    dataplane::{DataPlane, DataPlaneError},
    status::{BackendStatus, ServiceStatus, Status},
};

pub type Shared = Arc<tokio::sync::Mutex<Daemon>>;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error(
        "services {0} forward in XDP and need an interface: set global.interface or pass --iface"
    )]
    NoInterface(String),
    #[error("cannot listen on the admin address {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

pub struct Daemon {
    path: PathBuf,
    cfg: Config,
    dp: Option<DataPlane>,
}

impl Daemon {
    /// Loads the config, attaches XDP where the config needs it and programs
    /// the maps. Nothing stays attached if this fails.
    pub fn start(path: PathBuf, iface: Option<String>) -> Result<Self, RunError> {
        let cfg = config::load(&path)?;
        let iface = iface.or_else(|| cfg.global.interface.clone());
        let l4: Vec<&str> = cfg
            .services
            .iter()
            .filter(|s| s.mode != Mode::Http)
            .map(|s| s.name.as_str())
            .collect();
        let dp = match iface {
            Some(iface) => {
                let mut dp = DataPlane::start(&iface, cfg.global.xdp_mode)?;
                dp.apply(&cfg)?;
                Some(dp)
            }
            None if !l4.is_empty() => return Err(RunError::NoInterface(l4.join(", "))),
            None => None,
        };
        Ok(Self { path, cfg, dp })
    }

    /// Re-reads the config file; a bad file leaves everything as it was.
    pub fn reload(&mut self) -> Result<(), RunError> {
        let cfg = config::load(&self.path)?;
        if let Some(dp) = &mut self.dp {
            dp.apply(&cfg)?;
        }
        tracing::info!(services = cfg.services.len(), "config reloaded");
        self.cfg = cfg;
        Ok(())
    }

    pub fn status(&self) -> Status {
        let services = self
            .cfg
            .services
            .iter()
            .map(|s| {
                let st = self
                    .dp
                    .as_ref()
                    .map(|d| d.service_stats(s))
                    .unwrap_or_default();
                ServiceStatus {
                    name: s.name.clone(),
                    vip: s.vip.to_string(),
                    port: s.port,
                    protocol: s.protocol.as_str().into(),
                    mode: s.mode.as_str().into(),
                    packets: st.packets,
                    bytes: st.bytes,
                    backends: s
                        .backends
                        .iter()
                        .map(|b| BackendStatus {
                            name: b.name.clone(),
                            address: b.address.to_string(),
                            weight: b.weight,
                            backup: b.backup,
                            state: if b.weight == 0 { "drain" } else { "ready" }.into(),
                        })
                        .collect(),
                }
            })
            .collect();
        Status {
            config: self.path.display().to_string(),
            interface: self.dp.as_ref().map(|d| d.iface.clone()),
            xdp_mode: self.dp.as_ref().map(|d| d.mode.as_str().to_string()),
            services,
            outcomes: self
                .dp
                .as_ref()
                .map(|d| {
                    d.outcomes()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads. Dropping the daemon on the
/// way out detaches the XDP program.
pub async fn run(path: PathBuf, iface: Option<String>) -> Result<(), RunError> {
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let daemon = Daemon::start(path, iface)?;
    let addr = daemon.cfg.global.admin;
    let shared = admin::shared(daemon);
    let server = admin::serve(addr, shared.clone())
        .await
        .map_err(|source| RunError::Admin { addr, source })?;
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
        }
    }
    server.abort();
    tracing::info!("stopping: XDP program detached");
    Ok(())
}
