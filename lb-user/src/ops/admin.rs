//! The admin API: a small HTTP server on `global.admin` (loopback by
//! default) that `xlb status`, `xlb reload`, `xlb server` and `xlb session`
//! talk to; it also serves `/metrics` and the stats page.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{
    body::Bytes,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{config_api, metrics, stats_page};
use crate::{
    config::StatsCfg,
    control::{
        daemon::{RunError, Shared},
        transaction::Change,
    },
    l7::appsession::EntryView,
    model::AdminState,
};

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

async fn route(shared: Shared, req: Request<hyper::body::Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let (stats_cfg, auth) = {
        let d = shared.lock().await;
        (d.stats_cfg(), d.admin_auth())
    };
    if let Some(sc) = stats_cfg {
        // The stats page has its own credentials ([stats] auth).
        if path == sc.uri || path.strip_prefix(sc.uri.as_str()).is_some_and(|r| r.starts_with(';')) {
            return stats(shared, &sc, req).await;
        }
    }
    // For keepalived track scripts and BGP health checks: open, as
    // HAProxy's monitor-uri, and it tells nothing but ready or why not.
    if path == "/healthz" {
        return healthz(&shared, req.method()).await;
    }
    if let Some(auth) = auth {
        // Hashes take a while to check: off the runtime's threads.
        let given = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
        let ok = tokio::task::spawn_blocking(move || auth.check(given.as_deref()))
            .await
            .unwrap_or(false);
        if !ok {
            return unauthorized("xlb admin");
        }
    }
    let mut resp = if path.starts_with("/api/v1/") {
        config_api::handle(shared.clone(), req).await
    } else {
        api(shared.clone(), &path, req).await
    };
    if path.starts_with("/api/") {
        // Every answer tells the config version it saw (or made).
        let v = shared.lock().await.version();
        resp.headers_mut().insert(VERSION_HEADER, HeaderValue::from(v));
    }
    resp
}

/// The header with the config version, as HAProxy's Data Plane API names it.
const VERSION_HEADER: &str = "configuration-version";

fn json(status: StatusCode, value: &impl serde::Serialize) -> Resp {
    reply(
        status,
        "application/json",
        serde_json::to_vec_pretty(value).unwrap_or_default(),
    )
}

fn error(e: RunError) -> Resp {
    let status = match e {
        RunError::NoSuchBackend { .. }
        | RunError::NoSessions(_)
        | RunError::NoSuchTransaction(_)
        | RunError::NoDataPlane => StatusCode::NOT_FOUND,
        // A stale version, a port another process holds, a config file
        // edited by hand, a full transaction: nothing changed.
        RunError::StaleVersion { .. }
        | RunError::Proxy(_)
        | RunError::FileChanged(_)
        | RunError::TransactionFull(_) => StatusCode::CONFLICT,
        RunError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
        RunError::Weight(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    reply(status, "text/plain", format!("{e}\n"))
}

async fn healthz(shared: &Shared, method: &Method) -> Resp {
    if method != Method::GET && method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET or HEAD\n");
    }
    match shared.lock().await.health() {
        Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n"),
        Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
    }
}

fn unauthorized(realm: &str) -> Resp {
    let mut r = reply(StatusCode::UNAUTHORIZED, "text/plain", "authentication required\n");
    if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn bad_request(e: impl std::fmt::Display) -> Resp {
    reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))
}

/// The query parameters of a write: `version=N` (refused with 409 unless
/// it is the running config's) and `transaction=ID` (stage, do not apply).
#[derive(Default)]
struct WriteParams {
    version: Option<u64>,
    transaction: Option<String>,
}

fn write_params(query: Option<&str>) -> Result<WriteParams, String> {
    let mut p = WriteParams::default();
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("version", v) => p.version = Some(v.parse().map_err(|_| format!("version {v:?} is not a number"))?),
            ("transaction", id) if !id.is_empty() => p.transaction = Some(id.to_string()),
            (k, _) => return Err(format!("unknown parameter {k:?} (version, transaction)")),
        }
    }
    Ok(p)
}

async fn api(shared: Shared, path: &str, req: Request<hyper::body::Incoming>) -> Resp {
    let method = req.method().clone();
    let params = match write_params(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    match (&method, parts.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let status = shared.lock().await.status();
            reply(StatusCode::OK, "text/plain; version=0.0.4", metrics::render(&status))
        }
        (&Method::GET, ["api", "status"]) => json(StatusCode::OK, &shared.lock().await.status()),
        (&Method::GET, ["api", "version"]) => json(
            StatusCode::OK,
            &serde_json::json!({ "version": shared.lock().await.version() }),
        ),
        (&Method::POST, ["api", "reload"]) => {
            let mut d = shared.lock().await;
            match d.check_version(params.version).and_then(|()| d.reload()) {
                Ok(()) => reply(StatusCode::OK, "text/plain", "reloaded\n"),
                Err(e) => error(e),
            }
        }
        (&Method::GET, ["api", "debug", "datapath"]) => match shared.lock().await.datapath_debug() {
            Some(on) => reply(StatusCode::OK, "text/plain", if on { "on\n" } else { "off\n" }),
            None => error(RunError::NoDataPlane),
        },
        // Body: on | off.
        (&Method::POST, ["api", "debug", "datapath"]) => {
            let body = match body_text(req).await {
                Ok(b) => b,
                Err(e) => return body_error(e),
            };
            let on = match body.as_str() {
                "on" => true,
                "off" => false,
                other => return bad_request(format!("{other:?} is not on or off")),
            };
            match shared.lock().await.set_datapath_debug(on) {
                Ok(()) => reply(StatusCode::OK, "text/plain", if on { "on\n" } else { "off\n" }),
                Err(e) => error(e),
            }
        }
        // Body: ready | drain | maint, or a weight 0-256.
        (&Method::POST, ["api", "servers", service, backend, what @ ("state" | "weight")]) => {
            let (service, backend) = (service.to_string(), backend.to_string());
            let body = match body_text(req).await {
                Ok(b) => b,
                Err(e) => return body_error(e),
            };
            let change = if *what == "state" {
                body.parse::<AdminState>().map(|state| Change::State {
                    service,
                    backend,
                    state,
                })
            } else {
                body.parse::<u32>()
                    .map(|weight| Change::Weight {
                        service,
                        backend,
                        weight,
                    })
                    .map_err(|e| format!("weight: {e}"))
            };
            let change = match change {
                Ok(c) => c,
                Err(e) => return bad_request(e),
            };
            let mut d = shared.lock().await;
            let done = match &params.transaction {
                Some(id) => d.stage(id, change).map(|()| (StatusCode::ACCEPTED, "staged\n")),
                None => d
                    .check_version(params.version)
                    .and_then(|()| d.commit(&[change]))
                    .map(|_| (StatusCode::OK, "ok\n")),
            };
            match done {
                Ok((code, text)) => reply(code, "text/plain", text),
                Err(e) => error(e),
            }
        }
        (_, ["api", "transactions", rest @ ..]) => {
            let mut d = shared.lock().await;
            match (&method, rest) {
                (&Method::GET, []) => json(StatusCode::OK, &d.transactions()),
                (&Method::POST, []) => match d.open_transaction(params.version) {
                    Ok(t) => json(StatusCode::CREATED, &t),
                    Err(e) => error(e),
                },
                (&Method::GET, [id]) => match d.transaction(id) {
                    Ok(t) => json(StatusCode::OK, t),
                    Err(e) => error(e),
                },
                (&Method::PUT, [id]) => match d.commit_transaction(id) {
                    Ok(v) => json(StatusCode::OK, &serde_json::json!({ "id": id, "version": v })),
                    Err(e) => error(e),
                },
                (&Method::DELETE, [id]) => match d.delete_transaction(id) {
                    Ok(()) => reply(StatusCode::OK, "text/plain", "deleted\n"),
                    Err(e) => error(e),
                },
                _ => not_found(),
            }
        }
        (_, ["api", "sessions", service, rest @ ..]) => {
            let table = match shared.lock().await.sessions(service) {
                Ok(t) => t,
                Err(e) => return error(e),
            };
            let now = Instant::now();
            match (&method, rest) {
                (&Method::GET, []) => json(StatusCode::OK, &table.entries(now)),
                (&Method::DELETE, []) => reply(StatusCode::OK, "text/plain", format!("cleared {}\n", table.clear())),
                (&Method::DELETE, [id]) if table.forget(id) => reply(StatusCode::OK, "text/plain", "forgotten\n"),
                (&Method::DELETE, [_]) => not_found(),
                // Entries pushed by a peer (or restored by an operator): a
                // JSON list as GET returns it.
                (&Method::POST, []) => {
                    let body = match body_text(req).await {
                        Ok(b) => b,
                        Err(e) => return body_error(e),
                    };
                    let entries = match serde_json::from_str::<Vec<EntryView>>(&body) {
                        Ok(v) => v,
                        Err(e) => return bad_request(e),
                    };
                    for e in &entries {
                        table.learn_aged(&e.id, &e.server, now, Duration::from_millis(e.idle_ms));
                    }
                    reply(StatusCode::OK, "text/plain", format!("learned {}\n", entries.len()))
                }
                _ => not_found(),
            }
        }
        _ => not_found(),
    }
}

/// The request body as text, at most [`MAX_BODY`] bytes.
async fn body_text(req: Request<hyper::body::Incoming>) -> Result<String, BodyError> {
    let b = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => BodyError::TooLarge,
            Err(e) => BodyError::Read(e.to_string()),
        })?;
    Ok(String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body over {MAX_BODY} bytes")]
    TooLarge,
    #[error("reading the request body: {0}")]
    Read(String),
}

/// A refused body: 413 when too large, else 400.
fn body_error(e: BodyError) -> Resp {
    match e {
        BodyError::TooLarge => reply(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("{e}\n")),
        BodyError::Read(_) => bad_request(e),
    }
}

/// The stats page: GET shows it (HTML, or CSV for `URI;csv` / `URI?csv`),
/// POST applies an admin action and redirects back (HAProxy's `;st=`).
async fn stats(shared: Shared, sc: &StatsCfg, req: Request<hyper::body::Incoming>) -> Resp {
    if let Some(auth) = &sc.auth {
        if !auth.check(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
            return unauthorized("xlb statistics");
        }
    }
    let path = req.uri().path().to_string();
    if req.method() == Method::POST {
        if sc.auth.is_none() {
            return reply(
                StatusCode::FORBIDDEN,
                "text/plain",
                "admin actions need [stats] auth in the config\n",
            );
        }
        let form = match body_text(req).await {
            Ok(b) => stats_page::form(&b),
            Err(e) => return body_error(e),
        };
        let values = |k: &str| -> Vec<String> { form.iter().filter(|(n, _)| n == k).map(|(_, v)| v.clone()).collect() };
        let one = |k: &str| values(k).into_iter().next().unwrap_or_default();
        let (service, servers) = (one("b"), values("s"));
        let outcome = match one("action").parse::<AdminState>() {
            Err(_) => "ERRP",
            Ok(_) if servers.is_empty() => "NONE",
            Ok(state) => {
                let mut d = shared.lock().await;
                let failed = servers
                    .iter()
                    .filter(|b| d.set_state(&service, b, state).is_err())
                    .count();
                if failed == 0 {
                    "DONE"
                } else {
                    "PART"
                }
            }
        };
        let mut r = reply(StatusCode::SEE_OTHER, "text/plain", "");
        if let Ok(v) = HeaderValue::from_str(&format!("{};st={outcome}", sc.uri)) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    let status = shared.lock().await.status();
    let opts: Vec<&str> = path.split(';').skip(1).collect();
    if opts.contains(&"csv") || req.uri().query() == Some("csv") {
        return reply(StatusCode::OK, "text/csv", stats_page::csv(&status));
    }
    let notice = opts.iter().find_map(|o| o.strip_prefix("st=")).map(|st| match st {
        "DONE" => "Action processed successfully.",
        "PART" => "Action not applied to every server (unknown names?).",
        "NONE" => "Nothing to do: no server selected.",
        _ => "Unknown action.",
    });
    let mut r = reply(
        StatusCode::OK,
        "text/html; charset=utf-8",
        stats_page::html(&status, &sc.uri, sc.auth.is_some(), notice),
    );
    if let Some(refresh) = sc.refresh {
        r.headers_mut()
            .insert(header::REFRESH, HeaderValue::from(refresh.as_secs().max(1)));
    }
    r
}

/// Request bodies at most (appsession pushes are about 100 KiB).
const MAX_BODY: usize = 4 << 20;
/// Admin connections open at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// No admin connection lives longer (a body trickled in, a client that
/// does not read).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin API on `listener` until the future is dropped.
pub fn serve(
    listener: std::net::TcpListener,
    shared: Shared,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, hyper::Error>(route(shared, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            });
        }
    })
}
