//! HTTP/1.1 towards clients, on the connection's own task: the request
//! head is parsed in place, the handler runs, and the response goes out
//! with its head and whatever body is ready in one write. Pipelined
//! requests are answered in order. A connection that waits long for its
//! next request is parked ([`super::parking`]): no task, no buffer
//! (hyper's server kept about 16 KiB per connection for as long as it was
//! open).

use std::{
    future::poll_fn,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    body::{Body as _, Frame, SizeHint},
    header::{self, HeaderValue},
    Method, Request, Response, StatusCode, Uri, Version,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    time::timeout,
};

use super::{
    framing::{self, Decode, FramingError},
    strict,
};
use crate::config::ConnectionMode;
use crate::l7::{
    access::{self, Arrival},
    admission::{self, Accepted},
    body::{Body, BoxError},
    counters::bump,
    exchange::handle,
    parking::{self, PARK_AFTER},
    service::{Service, States},
    timers,
    transport::{Asleep, Transport},
    tunnel::{self, Tunnel},
};

/// What a request head is first read into.
const HEAD_BUF: usize = 4096;
/// Response body pieces at least this large are written as they are,
/// not copied behind the head.
const WRITE_DIRECT: usize = 16 * 1024;
/// After refusing a request, how long and how much of what the client
/// still sends is read and dropped before closing, so that closing with
/// unread data (a reset) does not destroy the answer on its way.
const LINGER: (Duration, usize) = (Duration::from_secs(1), 256 * 1024);

/// The reading side of a client connection.
struct Rx<R> {
    read: R,
    /// Read but not yet used.
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Rx<R> {
    fn new(read: R) -> Rx<R> {
        Rx {
            read,
            buf: BytesMut::new(),
        }
    }

    /// Reads more into `buf`; Ok(0) at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(HEAD_BUF);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.read), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }
}

const CLOSED_IN_HEAD: &str = "closed in the request head";

/// Why no request came: the client gets this answer, then the connection
/// closes.
struct Refusal(StatusCode, &'static str);

/// A request head, and what the connection must know of it.
struct Incoming {
    req: Request<()>,
    body: Decode,
    /// The client keeps the connection open after this exchange.
    keep_alive: bool,
    /// Answers "100 Continue" before reading the body.
    expect_continue: bool,
    /// Both Transfer-Encoding and Content-Length: served, then closed.
    ambiguous: bool,
}

/// What follows an exchange.
enum After {
    KeepAlive,
    /// The backend switched protocols: the connections are joined.
    Tunnel(Tunnel),
    /// Close: nothing more is expected from the client.
    Close,
    /// Close, reading what the client may still send first.
    Linger,
}

/// Serves a parked connection that woke up, on a task of its own.
fn resume<S: Transport>(asleep: Asleep, conn: Accepted) {
    if let Some(stream) = S::wake(asleep) {
        tokio::spawn(serve(stream, conn));
    }
}

/// Serves one HTTP/1 client connection until it closes, times out, errs
/// or is parked.
pub async fn serve<S: Transport>(stream: S, mut conn: Accepted) {
    let peer = conn.peer;
    let (read, mut write) = stream.split();
    let mut rx = Rx::new(read);
    let null = |conn: &Accepted, status, term| access::null_connection(conn, status, term);
    loop {
        let svc = conn.current.read().expect("service lock").clone();
        let http = &svc.cfg.http;
        let (t_client, t_idle) = (http.timeout_client, http.timeout_http_keep_alive);
        if rx.buf.is_empty() {
            // Between requests; parked (no task, no buffer) when it lasts.
            // A draining process closes them instead (a request that comes
            // first is answered, with `Connection: close`).
            let first = t_idle.min(PARK_AFTER);
            match tokio::time::timeout_at(timers::coarse(first), idle::<S>(&mut rx)).await {
                Ok(Ok(0) | Err(_)) => return null(&conn, StatusCode::BAD_REQUEST, b"CR"),
                Ok(Ok(_)) => {}
                Err(_) if t_idle <= first || admission::draining() => {
                    return null(&conn, StatusCode::REQUEST_TIMEOUT, b"cR");
                }
                Err(_) => {
                    let stream = S::unsplit(rx.read, write);
                    let until = Instant::now() + (t_idle - first);
                    let Err((stream, back)) = parking::park(stream, conn, until, resume::<S>) else {
                        return;
                    };
                    conn = back;
                    let read;
                    (read, write) = stream.split();
                    rx = Rx::new(read);
                    match tokio::time::timeout_at(timers::coarse(t_idle - first), idle::<S>(&mut rx)).await {
                        Ok(Ok(1..)) => {}
                        Ok(_) => return null(&conn, StatusCode::BAD_REQUEST, b"CR"),
                        Err(_) => return null(&conn, StatusCode::REQUEST_TIMEOUT, b"cR"),
                    }
                }
            }
        }
        let arrival = Arrival::if_logged(&svc);
        let next = match next_request(&mut rx, http.timeout_http_request, http.max_header_bytes).await {
            Ok(Some(n)) => n,
            Ok(None) => return null(&conn, StatusCode::BAD_REQUEST, b"CR"),
            Err(Refusal(status, why)) => {
                bump(&svc.counters.refused);
                // As HAProxy logs them: a timeout, a client that left
                // mid-head, a head refused.
                let term = match (status, why) {
                    (StatusCode::REQUEST_TIMEOUT, _) => b"cR",
                    (_, CLOSED_IN_HEAD) => b"CR",
                    _ => b"PR",
                };
                access::no_request(&svc, peer, arrival, status, *term, false);
                return refuse(rx, write, status, why, t_client).await;
            }
        };
        conn.served = true;
        let after;
        (rx, after) = exchange(rx, &mut write, next, svc, &conn.states, (peer, S::TLS), arrival).await;
        match after {
            After::KeepAlive => {}
            After::Close => return,
            After::Linger => return linger(rx, write).await,
            After::Tunnel(t) => {
                let svc = conn.current.read().expect("service lock").clone();
                let stream = S::unsplit(rx.read, write);
                let idle = svc.cfg.http.timeout_tunnel;
                return tunnel::run(stream, rx.buf, t, idle, svc.counters.clone()).await;
            }
        }
    }
}

/// Between requests: returns once the client sent something (Ok(0): it
/// closed, as far as a read tells).
async fn idle<S: Transport>(rx: &mut Rx<S::Read>) -> io::Result<usize> {
    if let Some(ready) = S::readable(&rx.read) {
        // Bytes or the end of the stream: the next read tells which.
        return ready.await.map(|()| 1);
    }
    rx.fill().await
}

/// One request: the handler's answer, written to the client.
async fn exchange<R: AsyncRead + Unpin + Send + 'static, W: AsyncWrite + Unpin>(
    mut rx: Rx<R>,
    write: &mut W,
    next: Incoming,
    svc: Arc<Service>,
    states: &States,
    (peer, tls): (SocketAddr, bool),
    arrival: Option<Arrival>,
) -> (Rx<R>, After) {
    let (t_client, mode) = (svc.cfg.http.timeout_client, svc.cfg.http.connection);
    if next.expect_continue
        && next.body != Decode::Done
        && !write_all(write, b"HTTP/1.1 100 Continue\r\n\r\n", t_client).await
    {
        return (rx, After::Close);
    }
    let head_method = next.req.method() == Method::HEAD;
    let http10 = next.req.version() == Version::HTTP_10;
    let mut keep_alive = next.keep_alive && !next.ambiguous && mode != ConnectionMode::Close;
    let mut body_read = true;
    let resp = if next.body == Decode::Done {
        handle(
            svc,
            states.clone(),
            peer,
            tls,
            next.req.map(|()| Body::default()),
            arrival,
        )
        .await
    } else {
        // The body reads the socket while the handler runs; the reading
        // side comes back when the handler is done with it.
        let slot = Arc::new(Mutex::new(Some((rx, next.body))));
        let body = ClientBody(slot.clone()).boxed();
        let resp = handle(svc, states.clone(), peer, tls, next.req.map(|()| body), arrival).await;
        let (back, left) = slot.lock().expect("body lock").take().expect("taken only here");
        rx = back;
        // A body the handler did not read whole (it refused the request):
        // the connection cannot carry on.
        body_read = left == Decode::Done;
        keep_alive &= body_read;
        resp
    };
    // A process that began to drain while the handler ran: this answer
    // is the connection's last.
    keep_alive &= !admission::draining();
    let mut resp = resp;
    let tunnel = match resp.status() {
        StatusCode::SWITCHING_PROTOCOLS => resp.extensions_mut().remove::<Tunnel>(),
        _ => None,
    };
    let written = respond(write, resp, head_method, http10, &mut keep_alive, t_client).await;
    let after = match (written, tunnel) {
        (Ok(()), Some(t)) => After::Tunnel(t),
        (Ok(()), None) if keep_alive => After::KeepAlive,
        (Ok(()), None) if body_read && rx.buf.is_empty() => After::Close,
        _ => After::Linger,
    };
    (rx, after)
}

/// Reads the next request head, once the client has sent something.
/// Ok(None): the client closed.
async fn next_request<R: AsyncRead + Unpin>(
    rx: &mut Rx<R>,
    t_head: Duration,
    max_head: usize,
) -> Result<Option<Incoming>, Refusal> {
    // From its first byte, a head has `timeout_http_request` to arrive
    // whole (else 408). The clock starts only if a read has to wait: most
    // heads arrive in one.
    let mut deadline = None;
    loop {
        if !rx.buf.is_empty() {
            if let Some(n) = parse(&mut rx.buf, max_head)? {
                return Ok(Some(n));
            }
        }
        let filled = match poll_fn(|cx| Poll::Ready(rx.poll_fill(cx))).await {
            Poll::Ready(r) => r,
            Poll::Pending => {
                let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + t_head);
                let Ok(r) = tokio::time::timeout_at(until, rx.fill()).await else {
                    return Err(Refusal(StatusCode::REQUEST_TIMEOUT, "request head timed out"));
                };
                r
            }
        };
        match filled {
            Ok(0) if rx.buf.is_empty() => return Ok(None),
            Ok(0) => return Err(Refusal(StatusCode::BAD_REQUEST, CLOSED_IN_HEAD)),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// A complete request head at the front of `buf`, taken out of it.
fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<Incoming>, Refusal> {
    let too_large = Refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large");
    let bad = |why| Refusal(StatusCode::BAD_REQUEST, why);
    let mut slots = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
    let mut r = httparse::Request::new(&mut slots);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_head => return Err(too_large),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large),
        Err(httparse::Error::Version) => return Err(Refusal(strict::version_status(buf), "unsupported HTTP version")),
        Err(_) => return Err(bad("malformed request head")),
    };
    strict::line_ends(&buf[..len]).map_err(bad)?;
    let method = Method::from_bytes(r.method.unwrap_or("").as_bytes()).map_err(|_| bad("bad method"))?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // The target and header values share the head's bytes.
    let target = framing::span(buf, r.path.unwrap_or("").as_bytes());
    let spans = framing::header_spans(buf, r.headers);
    let head = if buf.len() == len {
        // Nothing follows (no body bytes, no pipelined request): the head
        // moves to an allocation of its own size and the read buffer is
        // given back, so that a request waiting for a backend (a queue of
        // thousands) holds its head, not a whole buffer.
        let head = Bytes::copy_from_slice(&buf[..len]);
        *buf = BytesMut::new();
        head
    } else {
        buf.split_to(len).freeze()
    };
    let uri = Uri::from_maybe_shared(head.slice(target.clone())).map_err(|_| bad("bad request target"))?;
    let form = strict::target(&method, &head[target], &uri).map_err(|(s, why)| Refusal(s, why))?;
    // Room for what the proxy adds (X-Forwarded-For and -Proto).
    let (mut headers, seen) = framing::header_map(&head, &spans, 4).map_err(bad)?;
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(bad("more than one Host")),
        (None, _) if version == Version::HTTP_11 => return Err(bad("HTTP/1.1 without Host")),
        (Some(h), _) if !strict::host(h.as_bytes()) => return Err(bad("a malformed Host")),
        _ => {}
    }
    if let strict::Target::Absolute(authority) = form {
        // RFC 9112 3.2.2: the target's authority is the host; the
        // backend gets it as Host and an origin-form target.
        let host = HeaderValue::from_str(&authority).map_err(|_| bad("a malformed authority"))?;
        headers.insert(header::HOST, host);
    }
    let has_cl = seen.may_have(&header::CONTENT_LENGTH);
    // TE beside CL, or on HTTP/1.0 (RFC 9112 6.1): TE frames the body and
    // the connection closes after the answer.
    let ambiguous = seen.may_have(&header::TRANSFER_ENCODING) && (has_cl || version == Version::HTTP_10);
    let body = match framing::declared_seen(&headers, seen) {
        Ok(Decode::UntilClose) => Decode::Done,
        Ok(d) => d,
        Err(FramingError::Unsupported) => {
            return Err(Refusal(StatusCode::NOT_IMPLEMENTED, "transfer coding not implemented"))
        }
        Err(e) => return Err(bad(e.as_str())),
    };
    match body {
        // The backend must not see both.
        Decode::Chunked(_) => drop(headers.remove(header::CONTENT_LENGTH)),
        // One value, whatever list of equal ones came (`0, 0` included).
        Decode::Length(n) => drop(headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n))),
        Decode::Done if has_cl => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        }
        _ => {}
    }
    let connection = |token| seen.may_have(&header::CONNECTION) && framing::lists(&headers, &header::CONNECTION, token);
    let keep_alive = match version {
        Version::HTTP_10 => connection("keep-alive"),
        _ => !connection("close"),
    };
    let expect = seen
        .may_have(&header::EXPECT)
        .then(|| headers.get(header::EXPECT))
        .flatten();
    let expect_continue = match expect {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err(Refusal(StatusCode::EXPECTATION_FAILED, "unsupported expectation")),
    };
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(Incoming {
        req,
        body,
        keep_alive,
        expect_continue,
        ambiguous,
    }))
}

/// [`parse`] for the fuzz targets: the request it takes, or its status.
pub fn parse_for_fuzz(buf: &mut BytesMut, max_head: usize) -> Result<Option<Request<()>>, StatusCode> {
    parse(buf, max_head)
        .map(|n| n.map(|n| n.req))
        .map_err(|Refusal(s, _)| s)
}

/// A request body read from the client's socket as the backend side asks
/// for it.
struct ClientBody<R>(Arc<Mutex<Reading<R>>>);

/// The reading side while a request body is read from it; taken back when
/// the handler is done.
type Reading<R> = Option<(Rx<R>, Decode)>;

impl<R: AsyncRead + Unpin> hyper::body::Body for ClientBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut slot = self.0.lock().expect("body lock");
        let Some((rx, decode)) = slot.as_mut() else {
            return Poll::Ready(Some(Err("the request is over".into())));
        };
        loop {
            match decode.next(&mut rx.buf) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if *decode == Decode::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(framing::MalformedBody(e).into()))),
            }
            match std::task::ready!(rx.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Some(Err("the client closed in the request body".into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .expect("body lock")
            .as_ref()
            .is_none_or(|(_, d)| *d == Decode::Done)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .expect("body lock")
            .as_ref()
            .map_or_else(SizeHint::default, |(_, d)| d.size_hint())
    }
}

/// How a response body goes to the client.
#[derive(PartialEq)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// As it comes: its length is in the head.
    Raw,
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, length unknown).
    UntilClose,
}

/// Writes `resp` to the client. `keep_alive` comes back false when the
/// response can only end by closing the connection.
async fn respond<W: AsyncWrite + Unpin>(
    write: &mut W,
    resp: Response<Body>,
    head_method: bool,
    http10: bool,
    keep_alive: &mut bool,
    t: Duration,
) -> Result<(), ()> {
    let (mut parts, mut body) = resp.into_parts();
    // Declared after the body, so dropped (and counted) before it: the
    // body's access line reads the count.
    let mut counted = Counted(parts.extensions.remove::<access::Sent>(), 0);
    let status = parts.status;
    let headers = &parts.headers;
    let exact = body.size_hint().exact();
    let mut out = Vec::with_capacity(512);
    let add = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // What the head has, seen as it is written (no lookups).
    let (mut has_date, mut has_length, mut has_connection) = (false, false, false);
    for (k, v) in headers {
        has_date |= k == header::DATE;
        has_length |= k == header::CONTENT_LENGTH;
        has_connection |= k == header::CONNECTION;
        add(&mut out, k.as_str(), v.as_bytes());
    }
    if !has_date {
        add(&mut out, "date", &date());
    }
    let how = if head_method || status.is_informational() || status == 204 || status == 304 {
        Out::None
    } else if has_length {
        Out::Raw
    } else if let Some(n) = exact {
        // Formatted on the stack: no string, no formatter, per response.
        add(&mut out, "content-length", itoa::Buffer::new().format(n).as_bytes());
        Out::Raw
    } else if http10 {
        Out::UntilClose
    } else {
        add(&mut out, "transfer-encoding", b"chunked");
        Out::Chunked
    };
    *keep_alive &= how != Out::UntilClose && !(has_connection && framing::lists(headers, &header::CONNECTION, "close"));
    if !has_connection {
        match (*keep_alive, http10) {
            (false, _) => add(&mut out, "connection", b"close"),
            (true, true) => add(&mut out, "connection", b"keep-alive"),
            (true, false) => {}
        }
    }
    out.extend_from_slice(b"\r\n");
    if how == Out::None {
        return counted.write(write, &out, t).await.then_some(()).ok_or(());
    }
    let mut sent = false;
    loop {
        // Gather what the body has ready; write when it has to wait.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !counted.write(write, &out, t).await {
                    return Err(());
                }
                out.clear();
                sent = true;
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            // The backend failed in the body (malformed chunking, closed
            // early). Nothing sent yet: the client gets a 502 instead of
            // the head. Else it can only tell by the connection closing
            // before the body's end.
            Some(Err(_)) => {
                if !sent {
                    out = bad_gateway();
                }
                let _ = counted.write(write, &out, t).await;
                return Err(());
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers
            },
        };
        match how {
            Out::Chunked => framing::put_chunk(&mut out, &data),
            _ if data.len() >= WRITE_DIRECT => {
                if !counted.write(write, &out, t).await || !counted.write(write, &data, t).await {
                    return Err(());
                }
                out.clear();
                sent = true;
            }
            _ => out.extend_from_slice(&data),
        }
        if out.len() >= WRITE_DIRECT {
            if !counted.write(write, &out, t).await {
                return Err(());
            }
            out.clear();
            sent = true;
        }
    }
    if how == Out::Chunked {
        out.extend_from_slice(framing::LAST_CHUNK);
    }
    counted.write(write, &out, t).await.then_some(()).ok_or(())
}

/// What a response's writes sent, handed to its access line on drop.
struct Counted(Option<access::Sent>, usize);

impl Counted {
    async fn write<W: AsyncWrite + Unpin>(&mut self, write: &mut W, bytes: &[u8], t: Duration) -> bool {
        let ok = write_all(write, bytes, t).await;
        if ok {
            self.1 += bytes.len();
        }
        ok
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.add(self.1);
        }
    }
}

/// Writes and flushes all of `bytes` within the client timeout (most
/// writes go out at once: no timer for those).
async fn write_all<W: AsyncWrite + Unpin>(write: &mut W, bytes: &[u8], t: Duration) -> bool {
    let sent = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *write).poll_write(cx, bytes))).await {
        Poll::Ready(Ok(n)) => n,
        Poll::Pending => 0,
        Poll::Ready(Err(_)) => return false,
    };
    if sent == bytes.len() {
        // A TLS stream may hold records back until flushed.
        match poll_fn(|cx| Poll::Ready(Pin::new(&mut *write).poll_flush(cx))).await {
            Poll::Ready(Ok(())) => return true,
            Poll::Ready(Err(_)) => return false,
            Poll::Pending => {}
        }
    }
    let rest = async {
        write.write_all(&bytes[sent..]).await?;
        write.flush().await
    };
    matches!(timeout(t, rest).await, Ok(Ok(())))
}

/// A whole answer of xlb's own that closes the connection.
fn closing_answer(status: StatusCode, why: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncache-control: no-cache\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        why.len() + 1
    )
    .into_bytes()
}

fn bad_gateway() -> Vec<u8> {
    closing_answer(StatusCode::BAD_GATEWAY, "bad gateway")
}

/// Answers a request that cannot be served, and closes.
async fn refuse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rx: Rx<R>,
    mut write: W,
    status: StatusCode,
    why: &str,
    t: Duration,
) {
    if write_all(&mut write, &closing_answer(status, why), t).await {
        linger(rx, write).await;
    }
}

/// Closes after our last answer: the sending side first, then what the
/// client still sends is read (within [`LINGER`]) so that it arrives.
async fn linger<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut rx: Rx<R>, mut write: W) {
    let _ = write.shutdown().await;
    let (t, max) = LINGER;
    let _ = timeout(t, async {
        let mut seen = 0;
        while seen < max {
            rx.buf.clear();
            match rx.fill().await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
}

/// The Date header value, made once a second per thread.
fn date() -> Bytes {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, Bytes)> = const { std::cell::RefCell::new((0, Bytes::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, Bytes::from(httpdate::fmt_http_date(now)));
        }
        d.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(wire: &str) -> Result<Option<Incoming>, StatusCode> {
        parse(&mut BytesMut::from(wire), 1024).map_err(|Refusal(s, _)| s)
    }

    #[test]
    fn request_heads() {
        let n = parsed("GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((n.req.uri().path(), n.req.uri().query()), ("/a", Some("b")));
        assert_eq!(n.req.headers()["x-a"], "1");
        assert!(n.keep_alive && n.body == Decode::Done);
        assert!(parsed("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "partial");
        let n = parsed("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!n.keep_alive, "HTTP/1.0 closes unless asked");
        let n = parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(n.keep_alive);
        let n = parsed("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!n.keep_alive && n.body == Decode::Length(5));
        assert_eq!(n.req.headers()[header::CONTENT_LENGTH], "5", "one value goes on");
        let n = parsed("POST / HTTP/1.0\r\nContent-Length: 0 ,  0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(n.req.headers()[header::CONTENT_LENGTH], "0", "found by the fuzzer");
        let n = parsed("GET http://a.example:81/p?q HTTP/1.1\r\nHost: b.example\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            n.req.headers()[header::HOST],
            "a.example:81",
            "the target's authority is the host"
        );
        assert!(parsed("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
    }

    #[test]
    fn request_framing_and_refusals() {
        for te_cl in [
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let n = parsed(te_cl).unwrap().unwrap();
            assert!(n.ambiguous && matches!(n.body, Decode::Chunked(_)), "{te_cl:?}");
            assert!(!n.req.headers().contains_key(header::CONTENT_LENGTH));
        }
        let refused = |wire: &str, status: StatusCode| {
            assert_eq!(parsed(wire).err(), Some(status), "{wire:?}");
        };
        use StatusCode as S;
        refused(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            S::NOT_IMPLEMENTED,
        );
        refused(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            S::BAD_REQUEST,
        );
        refused(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
            S::BAD_REQUEST,
        );
        refused(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            S::BAD_REQUEST,
        );
        refused("GARBAGE\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\nHost: x\n\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\nHost : x\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\n Host: x\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", S::BAD_REQUEST);
        refused("GET / HTTP/2.0\r\nHost: x\r\n\r\n", S::HTTP_VERSION_NOT_SUPPORTED);
        refused("GET / HTTP/1.1 \r\nHost: x\r\n\r\n", S::BAD_REQUEST);
        refused("GET /\r\n\r\n", S::BAD_REQUEST);
        refused("GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", S::BAD_REQUEST);
        refused("GET /\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n", S::BAD_REQUEST);
        refused("GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n", S::BAD_REQUEST);
        refused("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", S::BAD_REQUEST);
        refused("G(T / HTTP/1.1\r\nHost: x\r\n\r\n", S::BAD_REQUEST);
        refused("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", S::NOT_IMPLEMENTED);
        refused(
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n",
            S::EXPECTATION_FAILED,
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1100));
        refused(&big, S::REQUEST_HEADER_FIELDS_TOO_LARGE);
        refused(&big[..1050], S::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
