//! Serving one client connection: the TLS handshake for services that
//! terminate TLS, then HTTP/1 by xlb's own server ([`super::http1`]), or
//! HTTP/2 by hyper's (chosen by ALPN over TLS; by its preface, h2c with
//! prior knowledge, over plain TCP).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body_util::BodyExt;
use hyper::{
    body::{Bytes, Frame, SizeHint},
    server::conn::http2,
    service::service_fn,
    StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::timeout,
};
use tokio_rustls::TlsAcceptor;

use super::{
    access::{self, Arrival},
    admission::{self, Accepted},
    body::{Body, BoxError},
    counters::bump,
    exchange::handle,
    http1::server as downstream,
    proxy_protocol,
    transport::TlsTcp,
};

/// Serves one client connection, HTTP/1.1 or HTTP/2, with or without TLS
/// (after its PROXY protocol header, with `accept_proxy`).
pub async fn serve(mut stream: TcpStream, mut conn: Accepted) {
    let (t_first, tls, accept_proxy) = {
        let svc = conn.current.read().expect("service lock");
        (
            svc.cfg.http.timeout_http_request,
            svc.tls.clone(),
            svc.cfg.http.accept_proxy,
        )
    };
    conn.opened = Arrival::if_logged(&conn.current.read().expect("service lock"));
    if accept_proxy {
        match proxy_protocol::read(&mut stream, t_first).await {
            Ok(source) => conn.peer = source.unwrap_or(conn.peer),
            Err(e) => {
                let svc = conn.current.read().expect("service lock").clone();
                bump(&svc.counters.proxy_refused);
                // HAProxy's words for each case.
                let what = match e.kind() {
                    std::io::ErrorKind::TimedOut => "Timeout while waiting for PROXY protocol header",
                    std::io::ErrorKind::UnexpectedEof => "Connection closed while waiting for PROXY protocol header",
                    std::io::ErrorKind::InvalidData => match e.get_ref().and_then(|e| e.downcast_ref()) {
                        Some(proxy_protocol::ProxyHeaderError::Malformed(_)) => {
                            "Received an invalid PROXY protocol header"
                        }
                        _ => "Received something which does not look like a PROXY protocol header",
                    },
                    _ => "Connection error while waiting for PROXY protocol header",
                };
                access::refused(&svc, conn.peer, conn.opened, what);
                tracing::debug!(service = %svc.cfg.name, peer = %conn.peer, "PROXY protocol: {e}");
                return;
            }
        }
    }
    // Each kind of connection's state goes on the heap (`on_heap`): inline,
    // the task held room for the largest (TLS, h2) and, measured with
    // 10,000 busy clients, 16 KiB a connection against 12 boxed.
    if let Some(acceptor) = tls {
        on_heap(serve_tls(stream, conn, acceptor, t_first)).await;
        return;
    }
    // h2c with prior knowledge opens with "PRI * HTTP/2.0", a method no
    // HTTP/1 request uses.
    let mut first = [0u8; 4];
    let http1 = match timeout(t_first, stream.peek(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) => return access::null_connection(&conn, StatusCode::BAD_REQUEST, b"CR"),
        Err(_) => return access::null_connection(&conn, StatusCode::REQUEST_TIMEOUT, b"cR"),
        Ok(Ok(n)) => !b"PRI ".starts_with(&first[..n]),
    };
    if http1 {
        on_heap(downstream::serve(stream, conn)).await;
    } else {
        on_heap(serve_h2(stream, conn, false)).await;
    }
}

/// `f` on the heap. A function of its own: built inside an async fn, the
/// future would get a place in that fn's state as well.
fn on_heap(f: impl Future<Output = ()> + Send + 'static) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(f)
}

/// The TLS handshake (within the time a request head has to arrive), then
/// h2 or HTTP/1 by ALPN.
async fn serve_tls(stream: TcpStream, conn: Accepted, acceptor: TlsAcceptor, t_first: Duration) {
    let done = timeout(t_first, acceptor.accept(TlsTcp(stream))).await;
    let counters = conn.current.read().expect("service lock").counters.clone();
    let Ok(Ok(tls)) = done else {
        bump(&counters.tls_failed);
        let svc = conn.current.read().expect("service lock").clone();
        access::refused(&svc, conn.peer, conn.opened, "SSL handshake failure");
        return;
    };
    bump(&counters.tls_handshakes);
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        bump(&counters.tls_resumed);
    }
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        on_heap(serve_h2(tls, conn, true)).await;
    } else {
        downstream::serve(tls, conn).await;
    }
}

async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, conn: Accepted, tls: bool) {
    // The slot is held until the connection ends.
    let Accepted {
        peer,
        current,
        states,
        slot: _slot,
        front: _front,
        ..
    } = conn;
    let (t_first, t_idle, t_client) = {
        let http = &current.read().expect("service lock").cfg.http;
        (
            http.timeout_http_request,
            http.timeout_http_keep_alive,
            http.timeout_client,
        )
    };
    let streams = Arc::new(Streams::default());
    let counted = streams.clone();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let svc = current.read().expect("service lock").clone();
        let req = req.map(boxed);
        let states = states.clone();
        let open = Open::new(&counted);
        async move {
            let resp = handle(svc, states, peer, tls, req, None).await;
            Ok::<_, Infallible>(resp.map(|body| Answering { body, _open: open }))
        }
    });
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    // Idle as HTTP/1's connections are: closed (GOAWAY) when no request
    // came within `timeout_http_request` of the start, or within
    // `timeout_http_keep_alive` of the last answer; frames that are not
    // requests (PING, SETTINGS) do not keep a connection. A leaving
    // process sends GOAWAY too: streams in flight finish, the client
    // opens new ones elsewhere.
    let started = Instant::now();
    // When an idle connection is closed; None while requests are answered.
    let deadline = || match streams.idle_since()? {
        None => Some(started + t_first),
        Some(at) => Some(at + t_idle),
    };
    let idle = loop {
        let wake = deadline().unwrap_or_else(|| Instant::now() + t_idle);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = admission::drained() => break false,
            _ = tokio::time::sleep_until(wake.into()) => {
                if deadline().is_some_and(|d| d <= Instant::now()) {
                    break true;
                }
            }
        }
    };
    conn.as_mut().graceful_shutdown();
    if idle {
        // Nothing in flight: a client that does not read its GOAWAY is
        // not waited for long.
        let _ = timeout(t_client, conn).await;
    } else {
        let _ = conn.await;
    }
}

/// The requests of an HTTP/2 connection: how many are being answered, and
/// when the last answer was made.
#[derive(Default)]
struct Streams(Mutex<(usize, Option<Instant>)>);

impl Streams {
    /// None while requests are being answered; else since when it has
    /// been idle (None inside: no request yet).
    fn idle_since(&self) -> Option<Option<Instant>> {
        let (open, last) = *self.0.lock().expect("streams lock");
        (open == 0).then_some(last)
    }
}

/// A response body that counts its request as being answered until it
/// ends (or the client resets the stream).
struct Answering {
    body: Body,
    _open: Open,
}

impl hyper::body::Body for Answering {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request being answered; counted until dropped.
struct Open(Arc<Streams>);

impl Open {
    fn new(streams: &Arc<Streams>) -> Open {
        streams.0.lock().expect("streams lock").0 += 1;
        Open(streams.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut s = self.0 .0.lock().expect("streams lock");
        s.0 -= 1;
        s.1 = Some(Instant::now());
    }
}

fn boxed(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}
