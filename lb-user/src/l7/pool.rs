//! Keep-alive connections to one backend. A connect failure is reported
//! before the request is handed over, so the caller can retry or
//! redispatch it; a pooled connection the backend had closed gives the
//! request back and it goes out on a fresh one. A connection rejoins the
//! pool when its response body has been read to the end. Each serving
//! thread has idle lists of its own: a connection is used on the thread
//! whose runtime drives it.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use hyper::{
    body::{Body as _, Bytes, Frame, Incoming, SizeHint},
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

/// Idle connections, per serving thread.
type Idle = Arc<[Mutex<Vec<SendRequest<Body>>>]>;

/// This thread's idle list.
fn mine(idle: &Idle) -> &Mutex<Vec<SendRequest<Body>>> {
    idle.get(super::workers::index()).unwrap_or(&idle[0])
}

pub struct Pool {
    pub addr: SocketAddr,
    idle: Idle,
}

impl Pool {
    pub fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
            idle: (0..super::workers::count()).map(|_| Mutex::default()).collect(),
        }
    }

    /// An idle connection that is still open, ready for a request.
    async fn idle(&self) -> Option<SendRequest<Body>> {
        loop {
            let mut s = mine(&self.idle).lock().expect("pool lock").pop()?;
            // A connection comes back when its last response body ended; it
            // is ready as soon as hyper has seen that end.
            if !s.is_closed() && s.ready().await.is_ok() {
                return Some(s);
            }
        }
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<SendRequest<Body>, SendError> {
        let err = |cause| SendError::Connect { addr: self.addr, cause };
        let stream = timeout(connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(err)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(io::Error::other(e)))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// A connection to send on: an idle one or a new one. Connect errors
    /// come back before the request is given away.
    pub async fn checkout(&self, connect_timeout: Duration) -> Result<SendRequest<Body>, SendError> {
        match self.idle().await {
            Some(s) => Ok(s),
            None => self.connect(connect_timeout).await,
        }
    }

    /// Sends `req` on `sender`; if that pooled connection turned out closed
    /// before the request left, sends it on a new connection. With `keep`,
    /// the connection goes back to the pool when the response body ends.
    pub async fn send(
        &self,
        mut sender: SendRequest<Body>,
        req: Request<Body>,
        connect_timeout: Duration,
        keep: bool,
    ) -> Result<Response<PooledBody>, SendError> {
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
        let back = keep.then(|| (sender, self.idle.clone()));
        Ok(resp.map(|body| PooledBody::new(body, back)))
    }
}

/// A response body that returns its connection to the pool once it has
/// been read to the end (a body dropped early takes the connection with
/// it: hyper closes it).
pub struct PooledBody {
    body: Incoming,
    back: Option<(SendRequest<Body>, Idle)>,
}

impl PooledBody {
    fn new(body: Incoming, back: Option<(SendRequest<Body>, Idle)>) -> PooledBody {
        let mut b = PooledBody { body, back };
        if b.body.is_end_stream() {
            b.give_back();
        }
        b
    }

    fn give_back(&mut self) {
        if let Some((sender, idle)) = self.back.take() {
            let mut idle = mine(&idle).lock().expect("pool lock");
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
