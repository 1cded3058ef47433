//! A small HTTP/1 client for the admin API: the command line talks to the
//! running daemon with it, and appsession peers push to each other.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `user:password` sent with every request (basic auth), once set.
static CREDENTIALS: OnceLock<String> = OnceLock::new();

/// No request to the admin API takes longer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `user:password` with every request from now on (the first call
/// wins; false if credentials were already set).
pub fn use_credentials(user_password: String) -> bool {
    CREDENTIALS.set(user_password).is_ok()
}

pub fn has_credentials() -> bool {
    CREDENTIALS.get().is_some()
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the xlb admin API at {addr} ({cause}): is `xlb run` running, with this admin address?")]
    Connect { addr: SocketAddr, cause: std::io::Error },
    #[error("admin API at {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("admin API at {addr}: no answer within {TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
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
    tokio::time::timeout(TIMEOUT, exchange(addr, method, path, body))
        .await
        .unwrap_or(Err(ClientError::Timeout { addr }))
}

async fn exchange(
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
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(c) = CREDENTIALS.get() {
        req = req.header("authorization", crate::auth::basic_header(c));
    }
    let req = req.body(Full::new(body)).map_err(|e| http(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| http(e.to_string()))?;
    Ok((status, body.to_bytes()))
}
