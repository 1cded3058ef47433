//! `xlb run`: starts the daemon and the admin API, then turns signals and
//! health changes into daemon calls until SIGTERM or SIGINT.

use std::path::PathBuf;

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    config,
    control::daemon::{self, Daemon, RunError},
    ops::admin,
};

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
    let addr = daemon.config().global.admin;
    let cleanup = cleanup || daemon.config().global.on_exit == config::OnExit::Cleanup;
    let shared = daemon::shared(daemon);
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
