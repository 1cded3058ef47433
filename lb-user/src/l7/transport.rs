//! What a connection runs over: plain TCP, or TLS over TCP. Towards
//! clients, the HTTP/1 server and the parking lot work with either through
//! [`Transport`] (plain TCP keeps its cheaper halves and its parking off
//! the runtime); towards backends, [`Upstream`] is one or the other.

use std::{
    future::Future,
    io,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    task::{Context, Poll, Waker},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

/// A TLS connection from a client.
pub type TlsStream = tokio_rustls::server::TlsStream<TlsTcp>;

/// The TCP stream under a client's TLS session. rustls hands its records
/// to the socket as a list of buffers; a list of one (most answers are one
/// record) goes out with send(2): writev(2) takes the file-write path,
/// measurably dearer per call.
pub struct TlsTcp(pub TcpStream);

impl AsyncRead for TlsTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let tcp = Pin::new(&mut self.get_mut().0);
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        match (full.next(), full.next()) {
            (Some(one), None) => tcp.poll_write(cx, one),
            _ => tcp.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// The client's connection is TLS (X-Forwarded-Proto, the log's `~`:
    /// the connection's, whatever a reload since made of its service).
    const TLS: bool;

    /// Halves that read and write at the same time.
    fn split(self) -> (Self::Read, Self::Write);
    fn unsplit(read: Self::Read, write: Self::Write) -> Self;
    /// Waits until the client sends something (or closes) without reading
    /// it, so that an idle connection needs no buffer; None: this
    /// transport cannot tell without reading (TLS: a record may hold no
    /// data).
    fn readable(read: &Self::Read) -> Option<impl Future<Output = io::Result<()>> + Send + '_>;
    /// The socket.
    fn fd(&self) -> RawFd;
    /// Leaves the runtime to be parked (None: it cannot).
    fn sleep(self) -> Option<Asleep>;
    /// Back on the runtime of the calling thread.
    fn wake(asleep: Asleep) -> Option<Self>;
}

/// What is kept of a parked connection: the bare socket (no reactor
/// registration, no task), or the whole TLS session (its state cannot
/// leave rustls). No allocation for a plain one: a small object left
/// behind by each parked connection would keep the pages of the freed
/// tasks around it from going back to the system.
pub enum Asleep {
    Plain(std::net::TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;
    const TLS: bool = false;

    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }

    fn unsplit(read: OwnedReadHalf, write: OwnedWriteHalf) -> Self {
        read.reunite(write).expect("the halves of one stream")
    }

    fn readable(read: &OwnedReadHalf) -> Option<impl Future<Output = io::Result<()>> + Send + '_> {
        Some(read.readable())
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn sleep(self) -> Option<Asleep> {
        self.into_std().ok().map(Asleep::Plain)
    }

    fn wake(asleep: Asleep) -> Option<Self> {
        match asleep {
            Asleep::Plain(s) => TcpStream::from_std(s).ok(),
            Asleep::Tls(_) => None,
        }
    }
}

impl Transport for TlsStream {
    type Read = ReadHalf<TlsStream>;
    type Write = WriteHalf<TlsStream>;
    const TLS: bool = true;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn unsplit(read: Self::Read, write: Self::Write) -> Self {
        read.unsplit(write)
    }

    fn readable(_: &Self::Read) -> Option<impl Future<Output = io::Result<()>> + Send + '_> {
        None::<std::future::Ready<io::Result<()>>>
    }

    fn fd(&self) -> RawFd {
        self.get_ref().0 .0.as_raw_fd()
    }

    fn sleep(self) -> Option<Asleep> {
        // The reactor keeps the waker of the last task that waited on the
        // socket, and with it that task's memory (several KiB): a waker
        // that holds nothing takes its place.
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = &self.get_ref().0 .0;
        let _ = tcp.poll_read_ready(&mut cx);
        let _ = tcp.poll_write_ready(&mut cx);
        Some(Asleep::Tls(Box::new(self)))
    }

    fn wake(asleep: Asleep) -> Option<Self> {
        match asleep {
            Asleep::Tls(s) => Some(*s),
            Asleep::Plain(_) => None,
        }
    }
}

/// A connection to a backend: plain TCP, or TLS over it.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Upstream {
    /// Open, with nothing to read: an idle connection's backend sends
    /// nothing unless it closes (or, over TLS, hands out session tickets,
    /// which are taken in here).
    pub fn quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Upstream::Plain(s) => match s.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
                Poll::Ready(Err(_)) => false,
            },
            Upstream::Tls(s) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(s).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
