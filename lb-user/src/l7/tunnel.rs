//! Upgraded connections (WebSocket and other `101 Switching Protocols`):
//! once the backend has switched, the client's connection and the
//! backend's are joined byte for byte in both directions until either side
//! closes, or until both have been silent for `timeout_tunnel`.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    time::{timeout, Instant},
};

use super::{counters::ServiceCounters, http1::client::Conn, queue::Permit};

/// The backend connection of a `101` answer (and its place under the
/// backend's maxconn, held as long as the tunnel), handed from the
/// exchange to the client connection in the response's extensions.
#[derive(Clone)]
pub struct Tunnel(Arc<Mutex<Option<(Conn, Permit)>>>);

impl Tunnel {
    pub fn new(conn: Conn, permit: Permit) -> Tunnel {
        Tunnel(Arc::new(Mutex::new(Some((conn, permit)))))
    }

    fn take(&self) -> Option<(Conn, Permit)> {
        self.0.lock().expect("tunnel lock").take()
    }
}

/// Counts an open tunnel while it lives.
struct Open(Arc<ServiceCounters>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Relaxed);
    }
}

/// Joins `client` (with `early`, what it sent after its request head) to
/// the tunnel's backend connection until one side closes or both are
/// silent for `idle`.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    client: S,
    early: BytesMut,
    tunnel: Tunnel,
    idle: Duration,
    counters: Arc<ServiceCounters>,
) {
    let Some((conn, _permit)) = tunnel.take() else { return };
    counters.tunnels.fetch_add(1, Relaxed);
    counters.tunnels_total.fetch_add(1, Relaxed);
    let _open = Open(counters);
    let (backend, late) = conn.into_parts();
    let start = Instant::now();
    let seen = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        io: client,
        seen: seen.clone(),
        start,
    };
    let mut backend = Watched {
        io: backend,
        seen: seen.clone(),
        start,
    };
    // Bytes either side sent before the switch was done go first.
    let first = async {
        backend.write_all(&early).await?;
        backend.flush().await?;
        client.write_all(&late).await?;
        client.flush().await
    };
    if !matches!(timeout(idle, first).await, Ok(Ok(()))) {
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {}
        _ = silence(&seen, start, idle) => {}
    }
}

/// Returns once nothing has moved for `idle`.
async fn silence(seen: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let last = start + Duration::from_millis(seen.load(Relaxed));
        if last.elapsed() >= idle {
            return;
        }
        tokio::time::sleep_until(last + idle).await;
    }
}

/// A side of the tunnel that notes when bytes last moved (milliseconds
/// since the tunnel opened).
struct Watched<T> {
    io: T,
    seen: Arc<AtomicU64>,
    start: Instant,
}

impl<T> Watched<T> {
    fn moved(&self) {
        self.seen.store(self.start.elapsed().as_millis() as u64, Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
