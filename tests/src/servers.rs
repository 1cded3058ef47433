//! Tiny backend servers that answer with their own name, and a client
//! helper that connects from a chosen source address inside a namespace.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use socket2::{Domain, Socket, Type};

use crate::Netns;

/// Session ids handed out by [`Kind::Http`] servers.
static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// How a server talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Sends `NAME\n` on connect, then answers each line `L` with `NAME L\n`
    /// (long-lived streams).
    Tcp,
    /// HTTP/1.1 with keep-alive, acting like an application: the body is
    /// `NAME\n` then the request's headers as received (one per line), with
    /// an `X-Backend: NAME` header. The query string asks for more:
    /// `cookie=NAME:VALUE` (a `Set-Cookie`), `cc=VALUE` (`Cache-Control`),
    /// `etag` (an `ETag`), `status=N`, `session=NAME` (acts like Tomcat
    /// with `jvmRoute` = the server's name: a request whose session id,
    /// in cookie NAME or in a `;name=` path parameter, does not end in
    /// `.SERVER` gets a new id `N.SERVER` in a `Set-Cookie`), `chunked`,
    /// `eof` and `drop` (response framing), `sleep=MS` (answers that much
    /// later). A request body, plain or chunked, comes back in
    /// `X-Request-Body`.
    #[default]
    Http,
    /// WebSocket (tungstenite): the `101` carries `X-Backend: NAME` (and
    /// `Set-Cookie: SRV=NAME` when asked with `?cookie`); each text
    /// message `M` is answered `NAME: M`. Requests that do not ask for a
    /// WebSocket are answered as by [`Kind::Http`].
    WebSocket,
}

/// A server thread; stopped (listener closed, connections shut) on drop.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub name: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    load: Arc<Load>,
}

/// HTTP requests a server is handling: now, and the most at once.
#[derive(Debug, Default)]
pub struct Load {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts a request in [`Load`] while it is handled.
struct Handling<'a>(&'a Load);

impl<'a> Handling<'a> {
    fn new(load: &'a Load) -> Handling<'a> {
        let n = load.now.fetch_add(1, Ordering::SeqCst) + 1;
        load.peak.fetch_max(n, Ordering::SeqCst);
        Handling(load)
    }
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    /// Starts a server on `addr` inside `ns`; returns once it listens.
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str, kind: Kind) -> io::Result<Server> {
        Server::launch(ns, addr, name, kind, None)
    }

    /// A [`Kind::Http`] server behind TLS with `tls`; the name the client
    /// asked for (SNI) is echoed as a `tls-sni` request header line.
    pub fn start_tls(ns: &Netns, addr: SocketAddr, name: &str, tls: Arc<rustls::ServerConfig>) -> io::Result<Server> {
        Server::launch(ns, addr, name, Kind::Http, Some(tls))
    }

    fn launch(
        ns: &Netns,
        addr: SocketAddr,
        name: &str,
        kind: Kind,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Server> {
        let listener = ns.enter(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, n) = (stop.clone(), name.to_string());
        let load = Arc::new(Load::default());
        let l = load.clone();
        let thread = ns.spawn(move || accept_loop(listener, &n, kind, tls, &s, &l))?;
        Ok(Server {
            addr,
            name: name.to_string(),
            stop,
            thread: Some(thread),
            load,
        })
    }

    /// The most HTTP requests it handled at once (from the end of the
    /// request head until its answer is sent).
    pub fn peak(&self) -> usize {
        self.load.peak.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    name: &str,
    kind: Kind,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: &Arc<AtomicBool>,
    load: &Arc<Load>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (name, stop, tls, load) = (name.to_string(), stop.clone(), tls.clone(), load.clone());
                let _ = stream.set_nonblocking(false);
                // Short read timeouts let connection threads notice a stop.
                let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                thread::spawn(move || {
                    let _ = match (kind, tls) {
                        (Kind::Tcp, _) => serve_tcp(stream, &name, &stop),
                        (Kind::WebSocket, _) => serve_ws(stream, &name, &stop),
                        (Kind::Http, None) => serve_http(stream, &name, &stop, None, &load, false),
                        (Kind::Http, Some(tls)) => serve_https(stream, &name, &stop, tls, &load),
                    };
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

// tungstenite's handshake callback returns its (large) error response.
#[allow(clippy::result_large_err)]
fn serve_ws(stream: TcpStream, name: &str, stop: &AtomicBool) -> io::Result<()> {
    use tungstenite::{handshake::HandshakeError, http::HeaderValue, Error, Message};
    let add_name = |req: &tungstenite::handshake::server::Request,
                    mut resp: tungstenite::handshake::server::Response| {
        resp.headers_mut()
            .insert("x-backend", HeaderValue::from_str(name).unwrap());
        if req.uri().query().is_some_and(|q| q.contains("cookie")) {
            resp.headers_mut()
                .insert("set-cookie", HeaderValue::from_str(&format!("SRV={name}")).unwrap());
        }
        Ok(resp)
    };
    // Plain requests (no upgrade) are served as by a Kind::Http server,
    // one by one, until one asks for a WebSocket.
    let mut head = [0u8; 4096];
    loop {
        let n = match stream.peek(&mut head) {
            Ok(0) => return Ok(()),
            Ok(n) if head[..n].windows(4).any(|w| w == b"\r\n\r\n") => n,
            Ok(_) => {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) if timed_out(&e) && !stop.load(Ordering::Relaxed) => continue,
            Err(e) => return Err(e),
        };
        if String::from_utf8_lossy(&head[..n])
            .to_ascii_lowercase()
            .contains("upgrade: websocket")
        {
            break;
        }
        serve_http(&stream, name, stop, None, &Load::default(), true)?;
    }
    let mut handshake = tungstenite::accept_hdr(stream, add_name);
    let mut ws = loop {
        match handshake {
            Ok(ws) => break ws,
            Err(HandshakeError::Interrupted(mid)) if !stop.load(Ordering::Relaxed) => handshake = mid.handshake(),
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    };
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => ws
                .send(Message::text(format!("{name}: {t}")))
                .map_err(io::Error::other)?,
            Ok(Message::Close(_)) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => return Ok(()),
            Ok(_) => {}
            Err(Error::Io(e)) if timed_out(&e) && !stop.load(Ordering::Relaxed) => {}
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads one line, retrying read timeouts until a stop is requested.
fn read_line(r: &mut impl BufRead, buf: &mut String, stop: &AtomicBool) -> io::Result<usize> {
    loop {
        match r.read_line(buf) {
            Err(e) if timed_out(&e) && !stop.load(Ordering::Relaxed) => continue,
            other => return other,
        }
    }
}

fn serve_tcp(mut stream: TcpStream, name: &str, stop: &AtomicBool) -> io::Result<()> {
    stream.write_all(format!("{name}\n").as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    loop {
        line.clear();
        if read_line(&mut reader, &mut line, stop)? == 0 {
            return Ok(());
        }
        stream.write_all(format!("{name} {}", line).as_bytes())?;
    }
}

/// The TLS handshake (within the read timeouts' retries), then HTTP.
fn serve_https(
    stream: TcpStream,
    name: &str,
    stop: &AtomicBool,
    tls: Arc<rustls::ServerConfig>,
    load: &Load,
) -> io::Result<()> {
    let conn = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, stream);
    let started = std::time::Instant::now();
    while s.conn.is_handshaking() {
        match s.conn.complete_io(&mut s.sock) {
            Err(e) if timed_out(&e) && started.elapsed() < Duration::from_secs(5) => continue,
            other => drop(other?),
        }
    }
    let sni = s.conn.server_name().unwrap_or("-").to_string();
    serve_http(s, name, stop, Some(sni), load, false)
}

/// HTTP/1.1 on `stream`: until it closes, or (`one`) one exchange.
fn serve_http<S: Read + Write>(
    stream: S,
    name: &str,
    stop: &AtomicBool,
    sni: Option<String>,
    load: &Load,
    one: bool,
) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if read_line(&mut reader, &mut request_line, stop)? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut close = false;
        let mut seen = Vec::new();
        loop {
            let mut h = String::new();
            if read_line(&mut reader, &mut h, stop)? == 0 {
                return Ok(());
            }
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            seen.push(h);
        }
        if let Some(sni) = &sni {
            seen.push(format!("tls-sni: {sni}"));
        }
        let handling = Handling::new(load);
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        if chunked {
            body = read_chunked(&mut reader, stop)?;
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("/");
        let head_only = request_line.starts_with("HEAD ");
        // Framing asked for: `chunked` (two chunks), `eof` (no length, the
        // body ends with the connection), `drop` (keep-alive announced,
        // then closed anyway).
        let framing = ["chunked", "eof", "drop"]
            .into_iter()
            .find(|f| query_has(target, f))
            .unwrap_or("");
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let (mut status, mut extra) = (200u16, String::new());
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            match k {
                "cookie" => {
                    let (n, val) = v.split_once(':').unwrap_or((v, ""));
                    extra += &format!("Set-Cookie: {n}={val}; Path=/\r\n");
                }
                "cc" => extra += &format!("Cache-Control: {v}\r\n"),
                "etag" => extra += "ETag: \"x\"\r\n",
                "status" => status = v.parse().unwrap_or(200),
                "sleep" => thread::sleep(Duration::from_millis(v.parse().unwrap_or(0))),
                "session" => {
                    let path_param = target
                        .split('?')
                        .next()
                        .unwrap_or("")
                        .split(';')
                        .skip(1)
                        .find_map(|p| p.split_once('=').filter(|(k, _)| k.eq_ignore_ascii_case(v)))
                        .map(|(_, id)| id.to_string());
                    let cookie = seen
                        .iter()
                        .filter_map(|h| h.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("cookie")))
                        .flat_map(|(_, c)| c.split(';'))
                        .find_map(|c| c.trim().split_once('=').filter(|(k, _)| *k == v))
                        .map(|(_, id)| id.to_string());
                    let route = format!(".{name}");
                    if !cookie.or(path_param).is_some_and(|id| id.ends_with(&route)) {
                        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
                        extra += &format!(
                            "Set-Cookie: {v}={:X}{n:04X}{route}; Path=/; HttpOnly\r\n",
                            std::process::id()
                        );
                    }
                }
                _ => {}
            }
        }
        if !body.is_empty() {
            extra += &format!("X-Request-Body: {}\r\n", String::from_utf8_lossy(&body).escape_debug());
        }
        let reply = format!("{name}\n{}\n", seen.join("\n"));
        let close = close || framing == "eof";
        let conn = if close { "close" } else { "keep-alive" };
        let head = format!(
            "HTTP/1.1 {status} X\r\nX-Backend: {name}\r\n{extra}Content-Type: text/plain\r\nConnection: {conn}\r\n"
        );
        let (mid, tail) = reply.split_at(reply.len() / 2);
        let out = match framing {
            "chunked" => format!(
                "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{mid}\r\n{:x};x=y\r\n{tail}\r\n0\r\n\r\n",
                mid.len(),
                tail.len()
            ),
            "eof" => format!("{head}\r\n{reply}"),
            _ if head_only => format!("{head}Content-Length: {}\r\n\r\n", reply.len()),
            _ => format!("{head}Content-Length: {}\r\n\r\n{reply}", reply.len()),
        };
        // Done before the answer leaves: a proxy that frees the place on
        // the answer's last byte may send the next request before this
        // thread runs again.
        drop(handling);
        reader.get_mut().write_all(out.as_bytes())?;
        reader.get_mut().flush()?;
        if close || framing == "drop" || one {
            return Ok(());
        }
    }
}

fn query_has(target: &str, name: &str) -> bool {
    target
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p == name))
}

/// A chunked request body (extensions and trailers skipped).
fn read_chunked(r: &mut impl BufRead, stop: &AtomicBool) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        read_line(r, &mut line, stop)?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(hex, 16).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if n == 0 {
            loop {
                line.clear();
                if read_line(r, &mut line, stop)? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let at = body.len();
        body.resize(at + n + 2, 0);
        r.read_exact(&mut body[at..])?;
        body.truncate(at + n);
    }
}

/// Connects to `dst` from `src` (an address of a host in `ns`).
pub fn connect_from(ns: &Netns, src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    ns.enter(|| {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
        s.bind(&src.into())?;
        s.connect_timeout(&dst.into(), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        Ok(TcpStream::from(s))
    })?
}

/// Connects from `src`, reads the greeting line of a [`Kind::Tcp`] server and
/// returns the name in it.
pub fn tcp_hello(ns: &Netns, src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let stream = connect_from(ns, src, dst, timeout)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// A backend that records every byte it receives and answers with bytes
/// given to it: for checking what a proxy lets through, byte for byte.
/// It answers once its connection has been quiet for a moment after a
/// request, so it needs no HTTP parser of its own.
pub struct RawBackend {
    pub addr: SocketAddr,
    /// Everything received, on all connections, since the last `take`.
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
    /// The answer, and whether to close after sending it.
    answer: Arc<std::sync::Mutex<(Vec<u8>, bool)>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RawBackend {
    pub fn start(ns: &Netns, addr: SocketAddr) -> io::Result<RawBackend> {
        let listener = ns.enter(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = Arc::new(std::sync::Mutex::new((
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            false,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, a, st) = (seen.clone(), answer.clone(), stop.clone());
        let thread = ns.spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, a, st) = (s.clone(), a.clone(), st.clone());
                        thread::spawn(move || raw_connection(stream, &s, &a, &st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
        Ok(RawBackend {
            addr,
            seen,
            answer,
            stop,
            thread: Some(thread),
        })
    }

    /// What it answers from now on; `close`: close the connection after.
    pub fn answer(&self, bytes: &[u8], close: bool) {
        *self.answer.lock().unwrap() = (bytes.to_vec(), close);
    }

    /// What it received since the last call.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn raw_connection(
    mut stream: TcpStream,
    seen: &std::sync::Mutex<Vec<u8>>,
    answer: &std::sync::Mutex<(Vec<u8>, bool)>,
    stop: &AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(60)));
    let mut fresh = false;
    let mut buf = [0u8; 16384];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                fresh = true;
            }
            Err(e) if timed_out(&e) && fresh => {
                fresh = false;
                let (bytes, close) = answer.lock().unwrap().clone();
                if stream.write_all(&bytes).is_err() || close {
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    // Read on until the proxy closes, recording it.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    return;
                }
            }
            Err(e) if timed_out(&e) => {}
            Err(_) => return,
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
