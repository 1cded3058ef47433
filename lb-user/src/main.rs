//! `xlb`: the command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hyper::{Method, StatusCode};
use lb_user::{
    admin_client as client, app, config,
    control::{status::Status, upgrade::Leave},
    l7::appsession::EntryView,
};

#[derive(Parser)]
#[command(name = "xlb", version, about = "XDP layer-4 load balancer with an L7 HTTP proxy")]
struct Cli {
    /// A file holding `user:password` for the admin API (else the
    /// XLB_ADMIN_AUTH environment variable is used, if set).
    #[arg(long, global = true)]
    auth_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load and attach the XDP program, apply the config, serve until SIGTERM/SIGINT (SIGHUP reloads).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Interface for the XDP program (overrides global.interface).
        #[arg(long)]
        iface: Option<String>,
        /// On exit, detach the XDP program, unpin its maps and remove the VIPs
        /// xlb added (default: leave them running for the next `xlb run`).
        #[arg(long)]
        cleanup: bool,
        /// Seamless upgrade (HAProxy's -sf): take the listening sockets of
        /// the xlb running with this config's admin address; it stops
        /// accepting, finishes its open connections (up to --drain-timeout)
        /// and exits.
        #[arg(long = "sf", conflicts_with = "st")]
        sf: bool,
        /// As --sf, but the running xlb exits at once (HAProxy's -st).
        #[arg(long = "st")]
        st: bool,
        /// With --sf: the longest the old process finishes its connections.
        #[arg(long, default_value = "30s", value_parser = duration)]
        drain_timeout: std::time::Duration,
    },
    /// Validate a config: a summary, or FILE:LINE: reason for each error.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Services, backends and counters of the running daemon.
    Status {
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its config file.
    Reload {
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// Refuse unless the running config is this version (`xlb status`).
        #[arg(long)]
        config_version: Option<u64>,
    },
    /// Runtime operations on backends ("servers" in HAProxy's words).
    Server {
        #[command(subcommand)]
        op: ServerOp,
    },
    /// The appsession table of an http service (learned session ids).
    Session {
        #[command(subcommand)]
        op: SessionOp,
    },
    /// Debugging switches of the running daemon.
    Debug {
        #[command(subcommand)]
        op: DebugOp,
    },
}

#[derive(Subcommand)]
enum DebugOp {
    /// The XDP program's rare events (no backend, route, neighbour or snat
    /// port; malformed headers) into xlb's log: on, off, or show the state.
    Datapath {
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
    },
}

#[derive(Subcommand)]
enum SessionOp {
    /// List the learned session ids, their server and idle time.
    Show {
        service: String,
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// Forget one session id, or every one.
    Clear {
        service: String,
        id: Option<String>,
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
    },
}

#[derive(Subcommand)]
enum ServerOp {
    /// ready: normal; drain: no new flows, existing ones stay; maint: no traffic at all.
    SetState {
        service: String,
        backend: String,
        #[arg(value_parser = ["ready", "drain", "maint"])]
        state: String,
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// Refuse unless the running config is this version (`xlb status`).
        #[arg(long)]
        config_version: Option<u64>,
    },
    /// A new weight (0-256; 0 drains) until the next reload.
    SetWeight {
        service: String,
        backend: String,
        weight: u32,
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
        /// Refuse unless the running config is this version (`xlb status`).
        #[arg(long)]
        config_version: Option<u64>,
    },
}

fn main() -> ExitCode {
    use tracing_subscriber::prelude::*;
    // Messages on standard error, and (once `xlb run` has set sinks) to
    // syslog.
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(lb_user::logging::DaemonLayer)
        .init();
    let cli = Cli::parse();
    match credentials(cli.auth_file.as_deref()).and_then(|()| run(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The admin API credentials, from `--auth-file` or `XLB_ADMIN_AUTH`: sent
/// by the admin commands, and by `xlb run` to its appsession peers.
fn credentials(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let given = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading --auth-file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("XLB_ADMIN_AUTH").ok().filter(|v| !v.is_empty()),
    };
    if let Some(c) = given {
        match c.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => client::use_credentials(c),
            _ => bail!("admin credentials must be user:password"),
        };
    }
    Ok(())
}

/// The body of a 200 answer, else the answer as an error.
fn admin_ok((code, body): (StatusCode, hyper::body::Bytes)) -> anyhow::Result<hyper::body::Bytes> {
    if code != StatusCode::OK {
        bail!("{}", String::from_utf8_lossy(&body).trim_end());
    }
    Ok(body)
}

fn version_query(v: Option<u64>) -> String {
    v.map(|v| format!("?version={v}")).unwrap_or_default()
}

/// Single-threaded: the daemon is the proxy's first serving thread, and
/// the others have runtimes of their own (see `l7::workers`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run {
            config,
            iface,
            cleanup,
            sf,
            st,
            drain_timeout,
        } => {
            let upgrade = match (sf, st) {
                (true, _) => Some(Leave::Soft(drain_timeout)),
                (_, true) => Some(Leave::Hard),
                _ => None,
            };
            Ok(runtime()?.block_on(app::run(config, iface, cleanup, upgrade))?)
        }
        Cmd::Check { config } => {
            let cfg = config::load(&config)?;
            println!("{}: OK", config.display());
            for s in &cfg.services {
                println!(
                    "service {} {}:{}/{} mode={} balance={} backends={}",
                    s.name,
                    s.vip,
                    s.port,
                    s.protocol.as_str(),
                    s.mode.as_str(),
                    s.balance,
                    s.backends.len()
                );
            }
            Ok(())
        }
        Cmd::Status { admin, json } => {
            let body = admin_ok(runtime()?.block_on(client::request(admin, Method::GET, "/api/status"))?)?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
            } else {
                let status: Status = serde_json::from_slice(&body).context("admin API sent malformed status")?;
                print!("{}", status.render());
            }
            Ok(())
        }
        Cmd::Server {
            op:
                ServerOp::SetState {
                    service,
                    backend,
                    state,
                    admin,
                    config_version,
                },
        } => {
            let path = format!(
                "/api/servers/{service}/{backend}/state{}",
                version_query(config_version)
            );
            admin_ok(runtime()?.block_on(client::request_with(admin, Method::POST, &path, state.clone().into()))?)?;
            println!("{service}/{backend}: {state}");
            Ok(())
        }
        Cmd::Server {
            op:
                ServerOp::SetWeight {
                    service,
                    backend,
                    weight,
                    admin,
                    config_version,
                },
        } => {
            let path = format!(
                "/api/servers/{service}/{backend}/weight{}",
                version_query(config_version)
            );
            admin_ok(runtime()?.block_on(client::request_with(
                admin,
                Method::POST,
                &path,
                weight.to_string().into(),
            ))?)?;
            println!("{service}/{backend}: weight {weight}");
            Ok(())
        }
        Cmd::Debug {
            op: DebugOp::Datapath { state, admin },
        } => {
            let answer = match state {
                Some(state) => runtime()?.block_on(client::request_with(
                    admin,
                    Method::POST,
                    "/api/debug/datapath",
                    state.into(),
                ))?,
                None => runtime()?.block_on(client::request(admin, Method::GET, "/api/debug/datapath"))?,
            };
            print!("data path events: {}", String::from_utf8_lossy(&admin_ok(answer)?));
            Ok(())
        }
        Cmd::Session {
            op: SessionOp::Show { service, admin, json },
        } => {
            let path = format!("/api/sessions/{service}");
            let body = admin_ok(runtime()?.block_on(client::request(admin, Method::GET, &path))?)?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let entries: Vec<EntryView> = serde_json::from_slice(&body).context("admin API sent malformed sessions")?;
            for e in &entries {
                println!("{} server={} idle={}ms", e.id, e.server, e.idle_ms);
            }
            println!("{} sessions", entries.len());
            Ok(())
        }
        Cmd::Session {
            op: SessionOp::Clear { service, id, admin },
        } => {
            let path = match &id {
                Some(id) => format!("/api/sessions/{service}/{id}"),
                None => format!("/api/sessions/{service}"),
            };
            let body = admin_ok(runtime()?.block_on(client::request(admin, Method::DELETE, &path))?)?;
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
        Cmd::Reload { admin, config_version } => {
            let path = format!("/api/reload{}", version_query(config_version));
            let (code, body) = runtime()?.block_on(client::request(admin, Method::POST, &path))?;
            let text = String::from_utf8_lossy(&body);
            if code != StatusCode::OK {
                bail!("reload refused, running config kept:\n{}", text.trim_end());
            }
            print!("{text}");
            Ok(())
        }
    }
}

/// A duration argument (`500ms`, `30s`, `2m`).
fn duration(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s)
}
