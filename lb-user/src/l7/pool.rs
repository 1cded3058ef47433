//! Keep-alive connections to one backend. A connect failure is reported
//! before the request is handed over, so the caller can retry or
//! redispatch it; a request without a body that meets a pooled connection
//! the backend had just closed goes again on a fresh one. A connection rejoins the
//! pool when its response body has been read to the end. Each serving
//! thread has idle lists of its own: a connection is used on the thread
//! whose runtime drives it.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use hyper::{
    body::{Body as _, Bytes, Frame, SizeHint},
    header::{self, HeaderMap},
    Request, Response,
};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::timeout};
use tokio_rustls::TlsConnector;

use super::{
    body::{Body, BoxError},
    http1::client::{self as upstream, BackendBody, Conn, ExchangeError},
    proxy_protocol,
    transport::Upstream,
};
use crate::config::ProxyVersion;

/// Idle connections kept per backend.
const MAX_IDLE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: safe to retry elsewhere.
    #[error("connect to {addr}: {cause}")]
    Connect { addr: SocketAddr, cause: io::Error },
    /// The request went out but no valid response came back.
    #[error("backend {addr}: {cause}")]
    Exchange { addr: SocketAddr, cause: ExchangeError },
}

/// Idle connections, per serving thread.
type Idle = Arc<[Mutex<Vec<Conn>>]>;

/// This thread's idle list.
fn mine(idle: &Idle) -> &Mutex<Vec<Conn>> {
    idle.get(super::workers::index()).unwrap_or(&idle[0])
}

pub struct Pool {
    pub addr: SocketAddr,
    idle: Idle,
    tls: Option<Secure>,
    send_proxy: Option<ProxyVersion>,
}

/// Where the request being sent came from: the client, and the address it
/// reached xlb on (for the PROXY protocol).
#[derive(Clone, Copy)]
pub struct Origin {
    pub client: SocketAddr,
    pub dst: SocketAddr,
}

/// TLS towards the backend.
pub struct Secure {
    pub connector: TlsConnector,
    /// The configured name (`tls_sni`); without one, each connection asks
    /// for the Host of the request that opened it.
    pub sni: Option<Arc<str>>,
}

/// A connection to send on, and whether it came from the pool.
pub struct Checkout {
    conn: Conn,
    reused: bool,
}

impl Pool {
    pub fn new(addr: SocketAddr, tls: Option<Secure>, send_proxy: Option<ProxyVersion>) -> Pool {
        Pool {
            addr,
            idle: (0..super::workers::count()).map(|_| Mutex::default()).collect(),
            tls,
            send_proxy,
        }
    }

    /// The name a request with `headers` needs its connection opened for:
    /// over TLS, the configured SNI or else the request's host (when it is
    /// a name, not an address).
    pub fn name_for(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let tls = self.tls.as_ref()?;
        if let Some(n) = &tls.sni {
            return Some(n.clone());
        }
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let name = host.to_ascii_lowercase();
        let is_name =
            rustls::pki_types::DnsName::try_from(name.as_str()).is_ok() && name.parse::<std::net::IpAddr>().is_err();
        is_name.then(|| Arc::from(name))
    }

    /// The client a connection is for: with the PROXY protocol, each
    /// client has connections of its own (they carry its address).
    fn owner(&self, origin: &Origin) -> Option<SocketAddr> {
        self.send_proxy.map(|_| origin.client)
    }

    /// An idle connection for `name` and `owner` that is still open.
    fn idle(&self, name: &Option<Arc<str>>, owner: Option<SocketAddr>) -> Option<Conn> {
        let mut idle = mine(&self.idle).lock().expect("pool lock");
        while let Some(i) = idle.iter().rposition(|c| c.name == *name && c.owner == owner) {
            let mut c = idle.swap_remove(i);
            if c.reusable() {
                return Some(c);
            }
        }
        None
    }

    /// A new connection (TCP, then the TLS handshake), all within
    /// `connect_timeout`.
    async fn connect(
        &self,
        connect_timeout: Duration,
        name: Option<Arc<str>>,
        origin: &Origin,
    ) -> Result<Conn, SendError> {
        let err = |cause| SendError::Connect { addr: self.addr, cause };
        let open = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            let _ = stream.set_nodelay(true);
            if let Some(v) = self.send_proxy {
                stream
                    .write_all(&proxy_protocol::encode(v, origin.client, origin.dst))
                    .await?;
            }
            let Some(tls) = &self.tls else {
                return Ok(Upstream::Plain(stream));
            };
            let server = crate::tls::server_name(name.as_deref(), self.addr.ip());
            let s = tls.connector.connect(server, stream).await?;
            Ok(Upstream::Tls(Box::new(s)))
        };
        let stream = timeout(connect_timeout, open)
            .await
            .map_err(|_| err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(err)?;
        Ok(Conn::new(stream, name, self.owner(origin)))
    }

    /// A connection to send on: an idle one or a new one, for `name` (see
    /// [`Pool::name_for`]). Connect errors come back before the request is
    /// given away.
    pub async fn checkout(
        &self,
        connect_timeout: Duration,
        name: Option<Arc<str>>,
        origin: &Origin,
    ) -> Result<Checkout, SendError> {
        match self.idle(&name, self.owner(origin)) {
            Some(conn) => Ok(Checkout { conn, reused: true }),
            None => Ok(Checkout {
                conn: self.connect(connect_timeout, name, origin).await?,
                reused: false,
            }),
        }
    }

    /// Sends `req` on the checked-out connection; if a pooled connection
    /// turns out closed before any answer, a request without a body goes
    /// again on a new connection. With `keep`, the connection goes back to
    /// the pool when the response body ends; without, the backend is asked
    /// to close it.
    pub async fn send(
        &self,
        out: Checkout,
        req: Request<Body>,
        connect_timeout: Duration,
        keep: bool,
        origin: &Origin,
    ) -> Result<Response<PooledBody>, SendError> {
        let exchange = |cause| SendError::Exchange { addr: self.addr, cause };
        let head = upstream::head(&req, !keep);
        let name = out.conn.name.clone();
        let resp = match upstream::exchange(out.conn, &head, req.into_body()).await {
            Err(ExchangeError::Closed | ExchangeError::Io(_)) if out.reused && head.replayable => {
                let conn = self.connect(connect_timeout, name, origin).await?;
                upstream::exchange(conn, &head, Body::default())
                    .await
                    .map_err(exchange)?
            }
            other => other.map_err(exchange)?,
        };
        let back = keep.then(|| self.idle.clone());
        Ok(resp.map(|body| PooledBody::new(body, back)))
    }
}

/// A response body that returns its connection to the pool once it has
/// been read to the end (a body dropped early closes the connection).
pub struct PooledBody {
    body: BackendBody,
    back: Option<Idle>,
}

impl PooledBody {
    /// The backend connection of a `101` answer.
    pub fn into_upgraded(self) -> Option<Conn> {
        self.body.into_conn()
    }

    fn new(body: BackendBody, back: Option<Idle>) -> PooledBody {
        let mut b = PooledBody { body, back };
        b.give_back();
        b
    }

    fn give_back(&mut self) {
        if !self.body.is_end_stream() {
            return;
        }
        if let (Some(mut conn), Some(idle)) = (self.body.reusable_conn(), self.back.take()) {
            conn.trim();
            let mut idle = mine(&idle).lock().expect("pool lock");
            // Full: the oldest goes (connections kept for one client or
            // one host name may never be asked for again).
            if idle.len() >= MAX_IDLE {
                idle.remove(0);
            }
            idle.push(conn);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if polled.is_ready() {
            self.give_back();
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
