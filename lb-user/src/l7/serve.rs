//! Serving one client connection. HTTP/1.1 connections give their hyper
//! state back when they idle: hyper keeps about 16 KiB of buffers per
//! connection for as long as it serves it, so an idle keep-alive
//! connection is left with only its socket and this task (HAProxy, too,
//! holds no buffers for an idle connection). A connection whose hyper
//! waits for the next request with nothing in flight is listed; a sweep
//! every `RELEASE_AFTER` shuts down the hyper state of those still idle,
//! without closing the socket, and the next bytes start a new one with
//! anything the old one had read but not used. Releasing at once instead
//! cost about 0.7 us of CPU a request under load (measured), as every
//! request then built a new hyper connection. h2c goes to hyper-util's auto
//! server as it is.

use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
        Arc, Mutex, Once, RwLock,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use hyper::{
    body::{Bytes, Frame, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::timeout,
};

use super::{handle, Body, BoxError, Service, States};
use crate::config::{ConnectionMode, HttpCfg};

/// How long a connection idles before its hyper state goes (at most twice
/// this).
const RELEASE_AFTER: Duration = Duration::from_millis(200);

/// Connections listed as idle since the last sweep: their state, its
/// `reads` then, and their task's waker.
static LISTED: Mutex<Vec<(Arc<Idle>, u32, Waker)>> = Mutex::new(Vec::new());
static SWEEPER: Once = Once::new();

/// Every `RELEASE_AFTER`: the listed connections that read nothing since
/// are woken to release their hyper state; then the freed buffers are
/// handed back to the system (glibc keeps freed heap otherwise).
async fn sweep() {
    loop {
        tokio::time::sleep(RELEASE_AFTER).await;
        let listed = std::mem::take(&mut *LISTED.lock().expect("idle list"));
        let mut released = 0;
        for (idle, reads, waker) in listed {
            idle.listed.store(false, Relaxed);
            if idle.reads.load(Relaxed) == reads && idle.is_idle() {
                idle.go_idle.store(true, Relaxed);
                waker.wake();
                released += 1;
            }
        }
        if released > 0 {
            // Let the woken connections drop their buffers first.
            tokio::time::sleep(Duration::from_millis(10)).await;
            // SAFETY: plain libc call, no pointers.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// Serves one client connection, HTTP/1.1 or h2c.
pub async fn serve(stream: TcpStream, peer: SocketAddr, current: Arc<RwLock<Arc<Service>>>, states: States) {
    let http = current.read().expect("service lock").cfg.http.clone();
    // h2c with prior knowledge opens with "PRI * HTTP/2.0", a method no
    // HTTP/1 request uses.
    let mut first = [0u8; 4];
    let http1 = match timeout(http.timeout_client, stream.peek(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
        Ok(Ok(n)) => !b"PRI ".starts_with(&first[..n]),
    };
    if http1 {
        serve_http1(stream, peer, current, states, &http).await;
    } else {
        // Boxed: its state is larger than HTTP/1's and would otherwise be
        // part of every connection's task.
        Box::pin(serve_auto(stream, peer, current, states, &http)).await;
    }
}

fn http1_builder(http: &HttpCfg) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(http.timeout_client)
        .keep_alive(http.connection != ConnectionMode::Close)
        .max_buf_size(http.max_header_bytes.max(8192));
    b
}

async fn serve_auto(
    stream: TcpStream,
    peer: SocketAddr,
    current: Arc<RwLock<Arc<Service>>>,
    states: States,
    http: &HttpCfg,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(http.timeout_client)
        .keep_alive(http.connection != ConnectionMode::Close)
        .max_buf_size(http.max_header_bytes.max(8192));
    builder.http2().timer(TokioTimer::new());
    let svc = service_fn(move |req| {
        let svc = current.read().expect("service lock").clone();
        let states = states.clone();
        async move { Ok::<_, Infallible>(handle(svc, states, peer, req).await) }
    });
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}

async fn serve_http1(
    stream: TcpStream,
    peer: SocketAddr,
    current: Arc<RwLock<Arc<Service>>>,
    states: States,
    http: &HttpCfg,
) {
    let builder = http1_builder(http);
    let idle = Arc::new(Idle::default());
    let mut io = ClientIo {
        stream,
        unread: Bytes::new(),
        idle: idle.clone(),
    };
    loop {
        // Between requests: no hyper state, only the socket.
        if io.unread.is_empty() && !matches!(timeout(http.timeout_client, io.stream.readable()).await, Ok(Ok(()))) {
            return;
        }
        idle.quiet.store(false, Relaxed);
        idle.released.store(false, Relaxed);
        let (current, states, tracker) = (current.clone(), states.clone(), idle.clone());
        let svc = service_fn(move |req| {
            let svc = current.read().expect("service lock").clone();
            let states = states.clone();
            let guard = InFlight::new(tracker.clone());
            async move {
                let resp = handle(svc, states, peer, req).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked { body, _guard: guard }))
            }
        });
        let mut conn = builder.serve_connection(TokioIo::new(io), svc);
        let done = poll_fn(|cx| {
            // Checked again here, where hyper is not running: idle means it
            // read nothing since its last response.
            if idle.go_idle.swap(false, Relaxed) && idle.is_idle() {
                idle.released.store(true, Relaxed);
                Pin::new(&mut conn).graceful_shutdown();
            }
            Pin::new(&mut conn).poll(cx)
        })
        .await;
        // Ended on its own (client gone, `Connection: close`, an error):
        // hyper has shut the socket down.
        if done.is_err() || !idle.released.load(Relaxed) {
            return;
        }
        let parts = conn.into_parts();
        io = parts.io.into_inner();
        io.unread = parts.read_buf;
    }
}

/// What the hyper connection of a client is doing, as its socket and
/// responses see it.
#[derive(Default)]
struct Idle {
    /// Responses not yet handed whole to hyper.
    in_flight: AtomicU32,
    /// Nothing read since the last response was handed over.
    quiet: AtomicBool,
    /// Reads that returned data (a sweep compares it with its listing).
    reads: AtomicU32,
    /// On the idle list.
    listed: AtomicBool,
    /// The sweep found it idle: release hyper's state.
    go_idle: AtomicBool,
    /// Released: its shutdown must leave the socket open.
    released: AtomicBool,
}

impl Idle {
    fn is_idle(&self) -> bool {
        self.quiet.load(Relaxed) && self.in_flight.load(Relaxed) == 0
    }

    /// Puts the connection on the idle list (once per sweep).
    fn list(self: &Arc<Idle>, waker: &Waker) {
        if self.listed.swap(true, Relaxed) {
            return;
        }
        SWEEPER.call_once(|| drop(tokio::spawn(sweep())));
        let entry = (self.clone(), self.reads.load(Relaxed), waker.clone());
        LISTED.lock().expect("idle list").push(entry);
    }
}

/// Counts a request from the moment hyper hands it over until hyper has
/// its whole response (the response body is dropped).
struct InFlight(Arc<Idle>);

impl InFlight {
    fn new(idle: Arc<Idle>) -> InFlight {
        idle.in_flight.fetch_add(1, Relaxed);
        InFlight(idle)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.0.quiet.store(true, Relaxed);
        }
    }
}

/// A response body that ends its request's [`InFlight`] when hyper drops it.
struct Tracked {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
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

/// The client socket as hyper sees it: `unread` first, a read that would
/// block while idle lists the connection, and no shutdown once released.
struct ClientIo {
    stream: TcpStream,
    unread: Bytes,
    idle: Arc<Idle>,
}

impl AsyncRead for ClientIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let idle = &self.idle;
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                idle.quiet.store(false, Relaxed);
                idle.reads.fetch_add(1, Relaxed);
            }
            Poll::Pending if idle.is_idle() => idle.list(cx.waker()),
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.idle.released.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
