//! The admin API: a small HTTP server on `global.admin` (loopback by
//! default) that `xlb status` and `xlb reload` talk to.

use std::{net::SocketAddr, sync::Arc};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::daemon::{AdminState, RunError, Shared};

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
    // POST /api/servers/SERVICE/BACKEND/state, body ready|drain|maint
    if let (&Method::POST, Some(rest)) = (req.method(), path.strip_prefix("/api/servers/")) {
        let parts: Vec<&str> = rest.split('/').collect();
        let [service, backend, "state"] = parts.as_slice() else {
            return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
        };
        let (service, backend) = (service.to_string(), backend.to_string());
        let body = match req.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        };
        let state = match body.parse::<AdminState>() {
            Ok(s) => s,
            Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        };
        return match shared.lock().await.set_state(&service, &backend, state) {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n"),
            Err(e @ RunError::NoSuchBackend { .. }) => reply(StatusCode::NOT_FOUND, "text/plain", format!("{e}\n")),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
        };
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/api/status") => {
            let status = shared.lock().await.status();
            let body = serde_json::to_vec_pretty(&status).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        (&Method::POST, "/api/reload") => match shared.lock().await.reload() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "reloaded\n"),
            Err(e) => reply(StatusCode::UNPROCESSABLE_ENTITY, "text/plain", format!("{e}\n")),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Binds the admin address; the returned future serves until dropped.
pub async fn serve(addr: SocketAddr, shared: Shared) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, hyper::Error>(route(shared, req).await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the xlb admin API at {addr} ({cause}): is `xlb run` running, with this admin address?")]
    Connect { addr: SocketAddr, cause: std::io::Error },
    #[error("admin API at {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
}

/// One request to the admin API; returns the status code and body.
pub async fn request(addr: SocketAddr, method: Method, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
    request_with(addr, method, path, Bytes::new()).await
}

/// One request with a body.
pub async fn request_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), ClientError> {
    let http = |reason: String| ClientError::Http { addr, reason };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|cause| ClientError::Connect { addr, cause })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body))
        .map_err(|e| http(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| http(e.to_string()))?;
    Ok((status, body.to_bytes()))
}

pub fn shared(daemon: crate::daemon::Daemon) -> Shared {
    Arc::new(tokio::sync::Mutex::new(daemon))
}
