//! `xlb run`: starts the daemon and the admin API (taking the sockets of
//! a running xlb for a seamless upgrade), then turns signals, health
//! changes and takeovers into daemon calls until SIGTERM or SIGINT.

use std::{os::fd::AsRawFd, path::PathBuf};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    config,
    control::{
        daemon::{self, Daemon, RunError},
        upgrade::{self, Leave},
    },
    l7,
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
/// `on_exit = "cleanup"`) asks to take it down. With `upgrade`, takes the
/// listening sockets of the xlb running with this config's admin address,
/// which then leaves as asked.
pub async fn run(path: PathBuf, iface: Option<String>, cleanup: bool, upgrade: Option<Leave>) -> Result<(), RunError> {
    match raise_nofile() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let (health_tx, mut health_rx) = mpsc::channel(64);
    let (inherited, listeners, admin_listener) = match upgrade {
        Some(leave) => {
            let admin = config::load(&path)?.global.admin;
            let mut taken = match upgrade::take_over(admin, leave) {
                Ok(t) => t,
                // Nothing runs (yet): start as usual, as HAProxy's -sf
                // with no old process does.
                Err(e @ upgrade::UpgradeError::Connect { .. }) => {
                    tracing::warn!("{e}; starting afresh");
                    return Box::pin(run(path, iface, cleanup, None)).await;
                }
                Err(e) => return Err(e.into()),
            };
            tracing::info!(
                sockets = taken.listeners.len(),
                "took the listening sockets of the running xlb"
            );
            let mut listeners = std::mem::take(&mut taken.listeners);
            let admin_listener = listeners.remove(&admin);
            (Some(taken), listeners, admin_listener)
        }
        None => (None, Default::default(), None),
    };
    let daemon = Daemon::start(path, iface, health_tx, listeners, inherited.is_some())?;
    let addr = daemon.config().global.admin;
    let cleanup = cleanup || daemon.config().global.on_exit == config::OnExit::Cleanup;
    let shared = daemon::shared(daemon);
    // This process keeps a copy of the admin socket to hand it over.
    let admin_socket = match admin_listener {
        Some(l) => l,
        None => std::net::TcpListener::bind(addr).map_err(|cause| RunError::Admin { addr, cause })?,
    };
    let server = {
        let l = admin_socket
            .try_clone()
            .map_err(|cause| RunError::Admin { addr, cause })?;
        let serve = admin::serve(l, shared.clone()).map_err(|cause| RunError::Admin { addr, cause })?;
        tokio::spawn(serve)
    };
    // Takeovers are asked on a task of their own (a request half read is
    // never dropped by the loop below); it serves one, then closes the
    // socket so that the new process can listen on its name.
    let (ask_tx, mut asked) = mpsc::channel(1);
    let listen_upgrades = |tx: mpsc::Sender<upgrade::Request>| -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = upgrade::listen(addr)?;
        Ok(tokio::spawn(async move {
            let _ = tx.send(upgrade::next(&listener).await).await;
        }))
    };
    let mut upgrades = listen_upgrades(ask_tx.clone()).map_err(|e| RunError::Upgrade(e.into()))?;
    if let Some(i) = inherited {
        // The old process stops for good once this one runs.
        if let Err(e) = i.done() {
            tracing::warn!("telling the old xlb this one runs: {e}");
        }
    }
    tracing::info!(%addr, "xlb running; admin API listening");
    let leave = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = hup.recv() => {
                if let Err(e) = shared.lock().await.reload() {
                    tracing::error!("reload refused, running config kept:\n{e}");
                }
            }
            Some(change) = health_rx.recv() => shared.lock().await.health_changed(change),
            Some(req) = asked.recv() => {
                let leave = req.leave;
                let mut sockets = shared.lock().await.hand_over();
                sockets.push((addr, admin_socket.as_raw_fd()));
                tracing::info!(?leave, "a new xlb is taking over; both accept until it runs");
                if req.hand_over(sockets).await {
                    shared.lock().await.retire();
                    server.abort();
                    break Some(leave);
                }
                tracing::warn!("the new xlb went away before it ran; carrying on");
                shared.lock().await.resume();
                match listen_upgrades(ask_tx.clone()) {
                    Ok(task) => upgrades = task,
                    Err(e) => tracing::error!("upgrade socket: {e}"),
                }
            }
        }
    };
    server.abort();
    upgrades.abort();
    let Some(leave) = leave else {
        shared.lock().await.shutdown(cleanup);
        tracing::info!(cleanup, "stopping");
        crate::logging::flush(std::time::Duration::from_millis(500));
        return Ok(());
    };
    shared.lock().await.leave_to_successor();
    drop(admin_socket);
    if let Leave::Soft(deadline) = leave {
        l7::admission::drain();
        let until = tokio::time::Instant::now() + deadline;
        tracing::info!(?deadline, "the new xlb runs; finishing open connections");
        loop {
            let open = shared.lock().await.open_connections();
            if open == 0 {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {
                    tracing::info!(open, "drain deadline: closing what is left");
                    break;
                }
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
    }
    tracing::info!("handed over to the new xlb; stopping");
    crate::logging::flush(std::time::Duration::from_millis(500));
    Ok(())
}
