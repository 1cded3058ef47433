//! Keep-alive connections to one backend. A connect failure is reported
//! before the request is handed over, so the caller can retry or
//! redispatch it; a pooled connection the backend had closed gives the
//! request back and it goes out on a fresh one.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
    Request, Response,
};
use hyper_util::rt::TokioIo;

use super::Body;
use tokio::{net::TcpStream, time::timeout};

/// Idle connections kept per backend.
const MAX_IDLE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: safe to retry elsewhere.
    #[error("connect to {addr}: {cause}")]
    Connect { addr: SocketAddr, cause: io::Error },
    /// The request went out but no valid response came back.
    #[error("backend {addr}: {cause}")]
    Exchange { addr: SocketAddr, cause: String },
}

type Idle = Arc<Mutex<Vec<SendRequest<Body>>>>;

pub struct Pool {
    pub addr: SocketAddr,
    idle: Idle,
}

impl Pool {
    pub fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn idle(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(s) = idle.pop() {
            if s.is_ready() && !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<SendRequest<Body>, SendError> {
        let err = |cause| SendError::Connect { addr: self.addr, cause };
        let stream = timeout(connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(err)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(io::Error::other(e)))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// A connection to send on: an idle one or a new one. Connect errors
    /// come back before the request is given away.
    pub async fn checkout(&self, connect_timeout: Duration) -> Result<SendRequest<Body>, SendError> {
        match self.idle() {
            Some(s) => Ok(s),
            None => self.connect(connect_timeout).await,
        }
    }

    /// Sends `req` on `sender`; if that pooled connection turned out closed
    /// before the request left, sends it on a new connection.
    pub async fn send(
        &self,
        mut sender: SendRequest<Body>,
        req: Request<Body>,
        connect_timeout: Duration,
        keep: bool,
    ) -> Result<Response<Incoming>, SendError> {
        let exchange = |e: hyper::Error| SendError::Exchange {
            addr: self.addr,
            cause: e.to_string(),
        };
        let resp = match sender.try_send_request(req).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    sender = self.connect(connect_timeout).await?;
                    sender.send_request(req).await.map_err(exchange)?
                }
                None => return Err(exchange(e.into_error())),
            },
        };
        if keep {
            self.give_back(sender);
        }
        Ok(resp)
    }

    /// Returns a connection to the pool once its response is read.
    fn give_back(&self, mut sender: SendRequest<Body>) {
        let idle = self.idle.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = idle.lock().expect("pool lock");
                if idle.len() < MAX_IDLE {
                    idle.push(sender);
                }
            }
        });
    }
}
