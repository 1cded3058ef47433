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
    /// Services through the runtime config API (written back to the file).
    Service {
        #[command(subcommand)]
        op: ServiceOp,
    },
    /// Backends of a service (or of one of its groups) through the config API.
    Backend {
        #[command(subcommand)]
        op: BackendOp,
    },
    /// Routing rules of an http service through the config API.
    Route {
        #[command(subcommand)]
        op: RouteOp,
    },
}

/// Where a config API write goes.
#[derive(clap::Args)]
struct WriteTo {
    #[arg(long, default_value = config::DEFAULT_ADMIN)]
    admin: SocketAddr,
    /// Refuse unless the running config is this version (`xlb status`).
    #[arg(long)]
    config_version: Option<u64>,
    /// Stage the write in this transaction instead of applying it.
    #[arg(long)]
    transaction: Option<String>,
}

impl WriteTo {
    fn query(&self, index: Option<usize>) -> String {
        let mut q = Vec::new();
        if let Some(v) = self.config_version {
            q.push(format!("version={v}"));
        }
        if let Some(t) = &self.transaction {
            q.push(format!("transaction_id={t}"));
        }
        if let Some(i) = index {
            q.push(format!("index={i}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

/// `KEY=VALUE` settings: VALUE as JSON when it is (numbers, true, lists),
/// else as a string.
fn settings(set: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut m = serde_json::Map::new();
    for s in set {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set {s:?}: KEY=VALUE");
        };
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        m.insert(k.to_string(), v);
    }
    Ok(m)
}

#[derive(Subcommand)]
enum ServiceOp {
    /// One service (or all) as JSON, as the config file has it.
    Show {
        name: Option<String>,
        #[arg(long, default_value = config::DEFAULT_ADMIN)]
        admin: SocketAddr,
    },
    /// A new service; other keys with --set KEY=VALUE (e.g. balance=source).
    Add {
        name: String,
        #[arg(long)]
        vip: String,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        mode: String,
        #[arg(long = "set")]
        set: Vec<String>,
        #[command(flatten)]
        to: WriteTo,
    },
    Remove {
        name: String,
        #[command(flatten)]
        to: WriteTo,
    },
}

#[derive(Subcommand)]
enum BackendOp {
    /// A new backend; other keys with --set KEY=VALUE (e.g. cookie=s1).
    Add {
        service: String,
        name: String,
        address: String,
        #[arg(long)]
        weight: Option<u32>,
        /// In this backend group of the service.
        #[arg(long)]
        group: Option<String>,
        #[arg(long = "set")]
        set: Vec<String>,
        #[command(flatten)]
        to: WriteTo,
    },
    Remove {
        service: String,
        name: String,
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        to: WriteTo,
    },
    /// Changes keys of a backend in the file (address, weight, ...).
    Set {
        service: String,
        name: String,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long = "set")]
        set: Vec<String>,
        #[command(flatten)]
        to: WriteTo,
    },
}

#[derive(Subcommand)]
enum RouteOp {
    /// A routing rule to a backend group, at --index (default: last).
    Add {
        service: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        path_beg: Vec<String>,
        #[arg(long)]
        path_end: Vec<String>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        index: Option<usize>,
        #[command(flatten)]
        to: WriteTo,
    },
    /// The rule at INDEX (0: the first).
    Remove {
        service: String,
        index: usize,
        #[command(flatten)]
        to: WriteTo,
    },
}

/// Sends a config API request; prints and returns what came back.
fn config_api(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (code, out) = runtime()?.block_on(client::request_with(admin, method, path, body.into()))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    if !code.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("{} {}", code.as_u16(), msg.trim_end());
    }
    Ok(text)
}

fn backends_path(service: &str, group: &Option<String>) -> String {
    match group {
        Some(g) => format!("/api/v1/services/{service}/groups/{g}/backends"),
        None => format!("/api/v1/services/{service}/backends"),
    }
}

fn config_cmd(cmd: Cmd) -> anyhow::Result<()> {
    use serde_json::{json, Value};
    let (admin, method, path, body) = match cmd {
        Cmd::Service {
            op: ServiceOp::Show { name, admin },
        } => {
            let path = format!("/api/v1/services{}", name.map(|n| format!("/{n}")).unwrap_or_default());
            (admin, Method::GET, path, None)
        }
        Cmd::Service {
            op:
                ServiceOp::Add {
                    name,
                    vip,
                    port,
                    mode,
                    set,
                    to,
                },
        } => {
            let mut b = settings(&set)?;
            for (k, v) in [
                ("name", json!(name)),
                ("vip", json!(vip)),
                ("port", json!(port)),
                ("mode", json!(mode)),
            ] {
                b.insert(k.into(), v);
            }
            let path = format!("/api/v1/services{}", to.query(None));
            (to.admin, Method::POST, path, Some(Value::Object(b)))
        }
        Cmd::Service {
            op: ServiceOp::Remove { name, to },
        } => (
            to.admin,
            Method::DELETE,
            format!("/api/v1/services/{name}{}", to.query(None)),
            None,
        ),
        Cmd::Backend {
            op:
                BackendOp::Add {
                    service,
                    name,
                    address,
                    weight,
                    group,
                    set,
                    to,
                },
        } => {
            let mut b = settings(&set)?;
            b.insert("name".into(), json!(name));
            b.insert("address".into(), json!(address));
            if let Some(w) = weight {
                b.insert("weight".into(), json!(w));
            }
            let path = format!("{}{}", backends_path(&service, &group), to.query(None));
            (to.admin, Method::POST, path, Some(Value::Object(b)))
        }
        Cmd::Backend {
            op:
                BackendOp::Remove {
                    service,
                    name,
                    group,
                    to,
                },
        } => (
            to.admin,
            Method::DELETE,
            format!("{}/{name}{}", backends_path(&service, &group), to.query(None)),
            None,
        ),
        Cmd::Backend {
            op:
                BackendOp::Set {
                    service,
                    name,
                    address,
                    weight,
                    group,
                    set,
                    to,
                },
        } => {
            // What the file has, with the given keys changed.
            let at = format!("{}/{name}", backends_path(&service, &group));
            let now: Value = serde_json::from_str(&config_api(to.admin, Method::GET, &at, None)?)?;
            let mut b = now.as_object().cloned().unwrap_or_default();
            b.extend(settings(&set)?);
            if let Some(a) = address {
                b.insert("address".into(), json!(a));
            }
            if let Some(w) = weight {
                b.insert("weight".into(), json!(w));
            }
            (
                to.admin,
                Method::PUT,
                format!("{at}{}", to.query(None)),
                Some(Value::Object(b)),
            )
        }
        Cmd::Route {
            op:
                RouteOp::Add {
                    service,
                    group,
                    path_beg,
                    path_end,
                    host,
                    index,
                    to,
                },
        } => {
            let mut b = serde_json::Map::new();
            b.insert("backend_group".into(), json!(group));
            if !path_beg.is_empty() {
                b.insert("path_beg".into(), json!(path_beg));
            }
            if !path_end.is_empty() {
                b.insert("path_end".into(), json!(path_end));
            }
            if let Some(h) = host {
                b.insert("host".into(), json!(h));
            }
            let path = format!("/api/v1/services/{service}/routes{}", to.query(index));
            (to.admin, Method::POST, path, Some(Value::Object(b)))
        }
        Cmd::Route {
            op: RouteOp::Remove { service, index, to },
        } => (
            to.admin,
            Method::DELETE,
            format!("/api/v1/services/{service}/routes/{index}{}", to.query(None)),
            None,
        ),
        _ => unreachable!("config_cmd takes the config API's commands"),
    };
    let out = config_api(admin, method.clone(), &path, body)?;
    if method == Method::DELETE {
        println!("removed");
    } else {
        println!("{}", out.trim_end());
    }
    Ok(())
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
        Cmd::Service { .. } | Cmd::Backend { .. } | Cmd::Route { .. } => config_cmd(cmd),
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
