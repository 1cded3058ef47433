//! HTTP/1.1 towards a backend, driven by the request's own task: the
//! request goes out in one write where it can, the response head is parsed
//! in place, and the body is read from the socket as the client side asks
//! for it. (hyper's client runs each connection as a task of its own, fed
//! through channels: two task switches and several wakeups per request.)

use std::{
    future::poll_fn,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::{
    body::{Body as _, Frame, SizeHint},
    header::{self, HeaderMap},
    Method, Request, Response, StatusCode, Version,
};
use tokio::io::AsyncWriteExt;

use super::{
    framing::{self, Chunk, Decode, FramingError, Seen},
    strict,
};
use crate::l7::{
    body::{Body, BoxError},
    transport::Upstream,
};

/// A response head larger than this is refused (502).
const MAX_HEAD: usize = 64 * 1024;
/// Request body bytes gathered before a write.
const WRITE_CHUNK: usize = 64 * 1024;
/// Reads from a backend: the first buffer, and the step once an answer
/// proves larger.
const READ_SMALL: usize = 4 * 1024;
const READ_LARGE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("closed the connection before answering")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

/// A connection to a backend, between or during exchanges.
pub struct Conn {
    stream: Upstream,
    /// Read but not yet used.
    buf: BytesMut,
    /// The name it was opened for (TLS: the SNI): it serves requests
    /// for that name only.
    pub name: Option<Arc<str>>,
    /// The client it was opened for (PROXY protocol): it serves that
    /// client only.
    pub owner: Option<SocketAddr>,
}

impl Conn {
    pub fn new(stream: Upstream, name: Option<Arc<str>>, owner: Option<SocketAddr>) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
            name,
            owner,
        }
    }

    /// Still open, and the backend sent nothing unasked.
    pub fn reusable(&mut self) -> bool {
        self.buf.is_empty() && self.stream.quiet()
    }

    /// Gives back a large read buffer that holds nothing (a connection
    /// going idle in the pool).
    pub fn trim(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > READ_SMALL {
            self.buf = BytesMut::new();
        }
    }

    /// The stream and what was read from it but not used.
    pub fn into_parts(self) -> (Upstream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Writes all of `bytes` (a TLS stream: flushed too).
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads more into `buf`; Ok(0) at end of stream. (Through tokio's
    /// `poll_read`, which takes a short read as "drained": no read that
    /// would only say EAGAIN before the next answer.)
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            // Small first: most answers fit, and every connection to a
            // backend holds its buffer (3,000 of them at 16 KiB were 48
            // MiB). An answer that fills it reads on in larger steps.
            let more = if self.buf.capacity() >= READ_SMALL {
                READ_LARGE
            } else {
                READ_SMALL
            };
            self.buf.reserve(more);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// A request head on the wire, and how its body follows.
pub struct Head {
    bytes: Vec<u8>,
    chunked: bool,
    /// No body and an idempotent method: if a pooled connection turns out
    /// closed, the request can be sent again on a new one.
    pub replayable: bool,
    head_method: bool,
    /// Asks for a protocol switch (only such a request may get a 101).
    upgrade: bool,
}

/// Writes `req`'s head as HTTP/1.1; `close` asks the backend to close
/// after its answer (connection modes other than keep-alive).
pub fn head(req: &Request<Body>, close: bool) -> Head {
    let body = req.body();
    let empty = body.is_end_stream();
    let exact = body.size_hint().exact();
    let headers = req.headers();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_length = headers.contains_key(header::CONTENT_LENGTH);
    let mut chunked = false;
    match exact {
        _ if has_length => {}
        Some(0) if empty && !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) => {}
        Some(n) => out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            chunked = true;
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Head {
        bytes: out,
        chunked,
        replayable: empty && req.method().is_idempotent(),
        head_method: req.method() == Method::HEAD,
        upgrade: headers.contains_key(header::UPGRADE),
    }
}

/// Sends the head and `body` on `conn` and reads the response head. On
/// error the connection is gone; `Closed` means the backend answered
/// nothing (a pooled connection it had just closed).
pub async fn exchange(mut conn: Conn, head: &Head, mut body: Body) -> Result<Response<BackendBody>, ExchangeError> {
    if body.is_end_stream() && !head.chunked {
        conn.send(&head.bytes).await?;
        return read_response(conn, head).await;
    }
    let mut out = head.bytes.clone();
    loop {
        // Gather what the body has ready; write when it has to wait.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                conn.send(&out).await?;
                out.clear();
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => return Err(ExchangeError::RequestBody(e)),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    if head.chunked {
                        framing::put_chunk(&mut out, &data);
                    } else {
                        out.extend_from_slice(&data);
                    }
                }
            }
        }
        if out.len() >= WRITE_CHUNK {
            conn.send(&out).await?;
            out.clear();
        }
    }
    if head.chunked {
        out.extend_from_slice(framing::LAST_CHUNK);
    }
    conn.send(&out).await?;
    read_response(conn, head).await
}

async fn read_response(mut conn: Conn, head: &Head) -> Result<Response<BackendBody>, ExchangeError> {
    let mut got_any = false;
    loop {
        if !conn.buf.is_empty() {
            got_any = true;
            if let Some((parts, decode, reusable)) = parse_head(&mut conn.buf, head.head_method)? {
                if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                    if !head.upgrade {
                        return Err(ExchangeError::Malformed(
                            "101 Switching Protocols without an upgrade asked for".into(),
                        ));
                    }
                    // The connection now belongs to the tunnel.
                    let body = BackendBody {
                        conn: Some(conn),
                        decode: Decode::Done,
                        reusable: false,
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                if parts.status.is_informational() {
                    continue; // 100 Continue and friends: the answer follows
                }
                let body = BackendBody {
                    conn: Some(conn),
                    decode,
                    reusable,
                };
                return Ok(Response::from_parts(parts, body));
            }
            if conn.buf.len() > MAX_HEAD {
                return Err(ExchangeError::Malformed("response head too large".into()));
            }
        }
        if conn.fill().await? == 0 {
            return Err(if got_any {
                ExchangeError::Malformed("connection closed in the response head".into())
            } else {
                ExchangeError::Closed
            });
        }
    }
}

/// A response head, how its body is delimited, and whether the
/// connection can carry another exchange after it.
type Parsed = (hyper::http::response::Parts, Decode, bool);

/// A complete response head at the front of `buf`, taken out of it.
fn parse_head(buf: &mut BytesMut, head_method: bool) -> Result<Option<Parsed>, ExchangeError> {
    let mut slots = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
    let mut r = httparse::Response::new(&mut slots);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ExchangeError::Malformed(e.to_string())),
    };
    let malformed = |why: &str| ExchangeError::Malformed(why.into());
    strict::line_ends(&buf[..len]).map_err(malformed)?;
    let code = r.code.unwrap_or(0);
    if !(100..600).contains(&code) {
        return Err(malformed("a status code out of range"));
    }
    let status = StatusCode::from_u16(code).map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Header values share the head's bytes.
    let spans = framing::header_spans(buf, r.headers);
    let head = buf.split_to(len).freeze();
    // Room for what persistence adds (Set-Cookie, Cache-Control).
    let (mut headers, seen) = framing::header_map(&head, &spans, 2).map_err(malformed)?;
    let keep_alive = version == Version::HTTP_11
        && !(seen.may_have(&header::CONNECTION) && framing::lists(&headers, &header::CONNECTION, "close"));
    let (decode, length) = framing(&headers, seen, status, head_method)?;
    // The client gets a body framed by xlb from what was decoded, never a
    // backend's length beside it; only HEAD and 304 answers keep theirs
    // (the length of a body not sent), as one value.
    match length {
        Some(n) if head_method || status == StatusCode::NOT_MODIFIED => {
            headers.insert(header::CONTENT_LENGTH, n.into());
        }
        _ if seen.may_have(&header::CONTENT_LENGTH) => drop(headers.remove(header::CONTENT_LENGTH)),
        _ => {}
    }
    let reusable = keep_alive && decode != Decode::UntilClose;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((parts, decode, reusable)))
}

/// [`parse_head`] for the fuzz targets.
pub fn parse_for_fuzz(buf: &mut BytesMut, head_method: bool) -> Result<Option<Response<()>>, ExchangeError> {
    Ok(parse_head(buf, head_method)?.map(|(parts, _, _)| Response::from_parts(parts, ())))
}

/// How a response body is delimited (RFC 9112 section 6.3), and its
/// Content-Length. Lengths are checked even where no body follows;
/// Transfer-Encoding beside Content-Length, or a coding xlb cannot
/// re-frame, is refused.
fn framing(
    headers: &HeaderMap,
    seen: Seen,
    status: StatusCode,
    head_method: bool,
) -> Result<(Decode, Option<u64>), ExchangeError> {
    let malformed = |e: FramingError| ExchangeError::Malformed(e.to_string());
    let length = match seen.may_have(&header::CONTENT_LENGTH) {
        true => framing::content_length(headers).map_err(malformed)?,
        false => None,
    };
    let te = seen.may_have(&header::TRANSFER_ENCODING);
    if te && length.is_some() {
        return Err(ExchangeError::Malformed("transfer-encoding with content-length".into()));
    }
    if head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decode::Done, length));
    }
    let decode = match te && framing::chunked(headers).map_err(malformed)? {
        true => Decode::Chunked(Chunk::Size),
        false => framing::by_length(length),
    };
    Ok((decode, length))
}

/// A response body read from the backend's socket. Once it has been read
/// whole, [`BackendBody::reusable_conn`] hands out the connection.
pub struct BackendBody {
    conn: Option<Conn>,
    decode: Decode,
    reusable: bool,
}

impl BackendBody {
    /// The connection, whatever state it is in (a `101`: the tunnel's).
    pub fn into_conn(mut self) -> Option<Conn> {
        self.conn.take()
    }

    /// The connection, once the body is read whole and the connection can
    /// carry another exchange (keep-alive, nothing left over).
    pub fn reusable_conn(&mut self) -> Option<Conn> {
        if self.decode != Decode::Done || !self.reusable {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// The next frame from what is buffered, or None if more must be read.
    fn decode(&mut self) -> Result<Option<Bytes>, BoxError> {
        match self.conn.as_mut() {
            Some(conn) => self.decode.next(&mut conn.buf),
            None => Ok(None),
        }
    }
}

impl hyper::body::Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let frame = match self.decode() {
                Ok(f) => f,
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if let Some(data) = frame {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if self.decode == Decode::Done {
                return Poll::Ready(None);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match std::task::ready!(conn.poll_fill(cx)) {
                Ok(0) if self.decode == Decode::UntilClose => {
                    self.reusable = false;
                    self.decode = Decode::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err("backend closed the connection in the body".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decode == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        self.decode.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// The body decoded from what is buffered (as poll_frame does between
    /// reads), and whether the connection then comes back for reuse.
    fn body_of(decode: Decode, wire: &[u8]) -> Result<(Vec<u8>, bool), BoxError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (s, _peer) = tcp_pair().await;
            let mut b = BackendBody {
                conn: Some(Conn {
                    stream: Upstream::Plain(s),
                    buf: BytesMut::from(wire),
                    name: None,
                    owner: None,
                }),
                decode,
                reusable: true,
            };
            let mut out = Vec::new();
            while let Some(d) = b.decode()? {
                out.extend_from_slice(&d);
            }
            if b.decode != Decode::Done {
                return Err(format!("not done: {:?}", b.decode).into());
            }
            Ok((out, b.reusable_conn().is_some()))
        })
    }

    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[test]
    fn the_connection_comes_back_once_the_body_is_read_whole() {
        assert_eq!(body_of(Decode::Length(3), b"abc").unwrap(), (b"abc".to_vec(), true));
        assert_eq!(
            body_of(Decode::Done, b"").unwrap(),
            (Vec::new(), true),
            "HEAD, 204, 304"
        );
        assert_eq!(
            body_of(Decode::Length(3), b"abcX").unwrap(),
            (b"abc".to_vec(), false),
            "bytes past the response: not reused"
        );
    }

    #[test]
    fn response_framing() {
        let mut h = HeaderMap::new();
        assert_eq!(
            framing(&h, Seen::of(&h), StatusCode::OK, false).map(|f| f.0).unwrap(),
            Decode::UntilClose
        );
        assert_eq!(
            framing(&h, Seen::of(&h), StatusCode::NO_CONTENT, false)
                .map(|f| f.0)
                .unwrap(),
            Decode::Done
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(
            framing(&h, Seen::of(&h), StatusCode::OK, false).map(|f| f.0).unwrap(),
            Decode::Length(12)
        );
        assert_eq!(
            framing(&h, Seen::of(&h), StatusCode::OK, true).map(|f| f.0).unwrap(),
            Decode::Done,
            "HEAD"
        );
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(
            framing(&h, Seen::of(&h), StatusCode::OK, false).map(|f| f.0).is_err(),
            "TE with CL"
        );
        assert!(
            framing(&h, Seen::of(&h), StatusCode::NOT_MODIFIED, false)
                .map(|f| f.0)
                .is_err(),
            "even without a body"
        );
        h.remove(header::CONTENT_LENGTH);
        assert!(matches!(
            framing(&h, Seen::of(&h), StatusCode::OK, false).map(|f| f.0),
            Ok(Decode::Chunked(_))
        ));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert!(
            framing(&h, Seen::of(&h), StatusCode::OK, false).map(|f| f.0).is_err(),
            "a coding xlb cannot re-frame"
        );
    }

    #[test]
    fn response_heads_parse_in_place() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi"[..]);
        assert!(parse_head(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nX"[..]), false)
            .unwrap()
            .is_none());
        let (parts, decode, reusable) = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-a"], "b");
        assert_eq!((decode, reusable), (Decode::Length(2), true));
        assert_eq!(&buf[..], b"hi", "the body stays buffered");
        let mut close = BytesMut::from(&b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"[..]);
        assert!(!parse_head(&mut close, false).unwrap().unwrap().2);
        for bad in [
            &b"HTTP/1.1 abc\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 700 Odd\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
        ] {
            assert!(
                parse_head(&mut BytesMut::from(bad), false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut equal = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi"[..]);
        let (parts, decode, _) = parse_head(&mut equal, false).unwrap().unwrap();
        assert_eq!(decode, Decode::Length(2));
        assert!(
            !parts.headers.contains_key(header::CONTENT_LENGTH),
            "xlb frames the body itself"
        );
        let mut head = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n"[..]);
        let (parts, decode, _) = parse_head(&mut head, true).unwrap().unwrap();
        assert_eq!(decode, Decode::Done);
        assert_eq!(parts.headers[header::CONTENT_LENGTH], "7", "HEAD keeps it");
    }
}
