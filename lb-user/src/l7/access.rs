//! The access line of a request, HAProxy's `httplog`: what it needs is
//! gathered as the request goes (timers, retries, queue), and the line is
//! queued when the response has been sent (or the client went away), so
//! that it carries the total time and the bytes sent.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::atomic::Ordering::Relaxed,
    task::{Context, Poll},
    time::Instant,
};

use hyper::{
    body::{Body as _, Bytes, Frame, SizeHint},
    header, Request, Response, StatusCode,
};

use super::{
    admission,
    body::{Body, BoxError},
    service::Service,
};
use crate::logging::{self, ConnRecord, Entry, HttpRecord, RequestLine, Severity};

pub use super::admission::Arrival;

impl Arrival {
    /// Now, if `svc` logs (the clocks are not read for nothing).
    pub fn if_logged(svc: &Service) -> Option<Arrival> {
        on(svc).then(Arrival::now)
    }
}

/// Milliseconds between two instants, as the timers show them.
pub(super) fn ms(from: Instant, to: Instant) -> i64 {
    to.saturating_duration_since(from).as_millis() as i64
}

/// Whether the service's requests are logged at all.
fn on(svc: &Service) -> bool {
    svc.cfg.log.enabled && logging::enabled(Severity::Info, false)
}

/// A request's access line in the making.
pub(super) struct Access<'a> {
    svc: &'a Service,
    peer: SocketAddr,
    /// The client's connection is TLS.
    tls: bool,
    /// None: not logged.
    request: Option<(RequestLine, Arrival)>,
    /// TR, Tw, Tc, Tr (-1 until reached).
    pub timers: [i64; 4],
    /// The pool (0, or a group) the request went to.
    pub pool: usize,
    pub retries: u32,
    pub redispatched: bool,
    /// Its place in the server's or the service's queue (0: did not wait).
    queue: [u64; 2],
    /// The server it holds a place at (counted in the server's and the
    /// service's connections, which its own line leaves out, as HAProxy
    /// logs after the server's connection is released).
    pub placed: Option<usize>,
    /// The client went away before its response (in its request body):
    /// logged with status -1 and nothing sent, as HAProxy logs it.
    pub client_gone: bool,
    /// The captured cookie of the request, and of the server's response.
    cookies: [Option<Box<str>>; 2],
}

impl<'a> Access<'a> {
    pub(super) fn new<B>(
        svc: &'a Service,
        (peer, tls): (SocketAddr, bool),
        arrival: Option<Arrival>,
        req: &Request<B>,
    ) -> Access<'a> {
        let request = on(svc).then(|| {
            let line = RequestLine::new(req.method(), req.uri(), req.version());
            (line, arrival.unwrap_or_else(Arrival::now))
        });
        let tr = request.as_ref().map_or(-1, |(_, a)| ms(a.at, Instant::now()));
        let cookie = match (&request, &svc.cfg.log.capture_cookie) {
            (Some(_), Some(name)) => {
                let values = req
                    .headers()
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                crate::l7::cookie::find(values, name).map(|v| captured(name, v))
            }
            _ => None,
        };
        Access {
            svc,
            peer,
            tls,
            request,
            timers: [tr, -1, -1, -1],
            pool: 0,
            retries: 0,
            redispatched: false,
            queue: [0, 0],
            placed: None,
            client_gone: false,
            cookies: [cookie, None],
        }
    }

    /// The request waited in a queue, at `place`: its server's
    /// (`tied`, HAProxy's srv_queue) or the service's (backend_queue).
    pub(super) fn queued(&mut self, tied: bool, place: u64) {
        self.queue = if tied { [place, 0] } else { [0, place] };
    }

    /// Captures the cookie the server set, as it set it: before the
    /// persistence cookie is inserted or rewritten (HAProxy's `%CS`).
    pub(super) fn server_cookie<B>(&mut self, resp: &Response<B>) {
        let (Some(_), Some(name)) = (&self.request, &self.svc.cfg.log.capture_cookie) else {
            return;
        };
        self.cookies[1] = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let (k, rest) = v.split_once('=')?;
                (k.trim() == name).then(|| captured(name, rest.split(';').next().unwrap_or("")))
            });
    }

    /// Now, if the request is logged (its timers need it).
    pub(super) fn clock(&self) -> Option<Instant> {
        self.request.as_ref().map(|_| Instant::now())
    }

    /// Sets timer `i` (Tw 1, Tc 2, Tr 3) to the time between two clock
    /// readings.
    pub(super) fn time(&mut self, i: usize, from: Option<Instant>, to: Option<Instant>) {
        if let (Some(f), Some(t)) = (from, to) {
            self.timers[i] = ms(f, t);
        }
    }

    /// Queues the line once `resp` has been sent (wrapping its body).
    /// `server`: the backend chosen, if any; `term`: the first two
    /// letters of the termination state; `cookie`: the persistence
    /// cookie flags (request, response), when cookie persistence applies.
    pub(super) fn finish(
        mut self,
        server: Option<usize>,
        term: [u8; 2],
        cookie: Option<(char, char)>,
        resp: Response<Body>,
    ) -> Response<Body> {
        let (c, s) = cookie.unwrap_or(('-', '-'));
        let gone = self.client_gone;
        let status = (!gone).then(|| resp.status().as_u16());
        let bytes = if gone { 0 } else { head_bytes(&resp) };
        let Some((rec, start)) = self.record(server, [term[0], term[1], c as u8, s as u8], status, bytes) else {
            return resp;
        };
        if gone {
            // Now: nothing of the answer reaches the client.
            push_now(rec, start);
            return resp;
        }
        let sent = Sent::default();
        let mut resp = resp.map(|body| {
            http_body_util::BodyExt::boxed(Logged {
                body,
                rec: Some(rec),
                start,
                ended: false,
                failed: false,
                sent: sent.clone(),
            })
        });
        resp.extensions_mut().insert(sent);
        resp
    }

    /// The line (taken once), and when its request came.
    fn record(
        &mut self,
        server: Option<usize>,
        term: [u8; 4],
        status: Option<u16>,
        bytes: u64,
    ) -> Option<(Box<HttpRecord>, Instant)> {
        let (request, arrival) = self.request.take()?;
        let svc = self.svc;
        let counters = &svc.counters;
        let me = u64::from(self.placed.is_some());
        let srv_conn = server.map_or(0, |t| {
            (svc.slots[t].counters.busy.load(Relaxed) as u64).saturating_sub(me)
        });
        let [tr, tw, tc, tres] = self.timers;
        let rec = HttpRecord {
            format: svc.cfg.log.format,
            client: self.peer,
            date: arrival.date,
            frontend: svc.log_name.clone(),
            tls: self.tls,
            backend: svc.pool_names[self.pool].clone(),
            server: server.map(|t| svc.slots[t].name.clone()),
            timers: [tr, tw, tc, tres, -1],
            status,
            bytes,
            cookies: std::mem::take(&mut self.cookies),
            term,
            conns: [
                admission::open_now(),
                counters.conns.load(Relaxed),
                beconn(svc).saturating_sub(me),
                srv_conn,
            ],
            retries: self.retries,
            redispatched: self.redispatched,
            queue: self.queue,
            request: Some(request),
        };
        Some((Box::new(rec), arrival.at))
    }
}

impl Drop for Access<'_> {
    /// A request its client gave up before its answer (an HTTP/2 stream
    /// reset drops the handler): logged as HAProxy does, by where it was:
    /// `CQ` in the queue, `CC` connecting, `CH` waiting for the answer.
    fn drop(&mut self) {
        let phase = match self.timers {
            [_, -1, _, _] => b"CQ",
            [_, _, -1, _] => b"CC",
            _ => b"CH",
        };
        // The handler's permit (declared after this) is gone already: the
        // server's count no longer has this request to leave out.
        let server = self.placed.take();
        if let Some((rec, start)) = self.record(server, [phase[0], phase[1], b'-', b'-'], None, 0) {
            push_now(rec, start);
        }
    }
}

/// Queues a line whose request has ended.
fn push_now(mut rec: Box<HttpRecord>, start: Instant) {
    rec.timers[4] = ms(start, Instant::now());
    logging::push(Entry::Http(rec));
}

/// The bytes the HTTP/1 writer put on the wire for a response (head,
/// chunk framing and body), for its access line; the writer takes it from
/// the response's extensions. Without it (HTTP/2) the line counts the head
/// as HTTP/1.1 would send it, and the body.
#[derive(Clone, Default)]
pub struct Sent(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Sent {
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Relaxed);
    }
}

/// Requests at the service's servers and in its queue (HAProxy's beconn).
fn beconn(svc: &Service) -> u64 {
    let busy: usize = svc.slots.iter().map(|s| s.counters.busy.load(Relaxed)).sum();
    busy as u64 + svc.counters.queued.load(Relaxed)
}

/// `name=value` as a captured cookie shows (HAProxy cuts at `len`; 63
/// here).
fn captured(name: &str, value: &str) -> Box<str> {
    let mut s = format!("{name}={}", value.trim());
    if s.len() > 63 {
        let mut end = 63;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s.into()
}

/// The size of a response head as HTTP/1.1 sends it.
fn head_bytes<B>(resp: &Response<B>) -> u64 {
    let reason = resp.status().canonical_reason().map_or(0, str::len);
    let line = "HTTP/1.1 200 ".len() + reason + 2;
    let headers: usize = resp.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (line + headers + 2) as u64
}

/// A response body that logs its request when it ends or is dropped.
struct Logged {
    body: Body,
    rec: Option<Box<HttpRecord>>,
    start: Instant,
    ended: bool,
    /// The backend's side of the body broke.
    failed: bool,
    sent: Sent,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(r) = self.rec.as_mut() {
                    r.bytes += n;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
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

impl Drop for Logged {
    fn drop(&mut self) {
        let Some(mut rec) = self.rec.take() else { return };
        rec.timers[4] = ms(self.start, Instant::now());
        let written = self.sent.0.load(Relaxed);
        if written > 0 {
            rec.bytes = written;
        }
        let complete = self.ended || self.body.is_end_stream();
        if !complete && rec.term[0] == b'-' {
            // Cut in the data: by the backend, or the client left.
            rec.term[..2].copy_from_slice(if self.failed { b"SD" } else { b"CD" });
        }
        logging::push(Entry::Http(rec));
    }
}

/// A connection closed or timed out before its first request: a null
/// connection (not logged with `dontlognull`).
pub(super) fn null_connection(conn: &admission::Accepted, status: StatusCode, term: &[u8; 2]) {
    if !conn.served {
        let svc = conn.current.read().expect("service lock").clone();
        no_request(&svc, conn.peer, conn.opened, status, *term, true);
    }
}

/// A connection refused before HTTP: a failed TLS handshake, a missing
/// or malformed PROXY header (not logged with `dontlognull`, as
/// HAProxy's log of empty handshakes is not).
pub(super) fn refused(svc: &Service, peer: SocketAddr, opened: Option<Arrival>, what: &'static str) {
    if !on(svc) || svc.cfg.log.dontlognull {
        return;
    }
    let opened = opened.unwrap_or_else(Arrival::now);
    logging::push(Entry::Refused(Box::new(ConnRecord {
        format: svc.cfg.log.format,
        client: peer,
        date: opened.date,
        frontend: svc.log_name.clone(),
        tls: svc.tls.is_some(),
        what,
    })));
}

/// A connection that never got as far as a request: a bad or incomplete
/// head (`PR`, `CR`), a timeout (`cR`), or nothing at all (a null
/// connection, not logged with `dontlognull`).
pub(super) fn no_request(
    svc: &Service,
    peer: SocketAddr,
    arrival: Option<Arrival>,
    status: StatusCode,
    term: [u8; 2],
    null: bool,
) {
    if !on(svc) || (null && svc.cfg.log.dontlognull) {
        return;
    }
    let arrival = arrival.unwrap_or_else(Arrival::now);
    let counters = &svc.counters;
    logging::push(Entry::Http(Box::new(HttpRecord {
        format: svc.cfg.log.format,
        client: peer,
        date: arrival.date,
        frontend: svc.log_name.clone(),
        tls: svc.tls.is_some(),
        backend: svc.log_name.clone(),
        server: None,
        timers: [-1, -1, -1, -1, ms(arrival.at, Instant::now())],
        status: Some(status.as_u16()),
        bytes: 0,
        cookies: [None, None],
        term: [term[0], term[1], b'-', b'-'],
        conns: [admission::open_now(), counters.conns.load(Relaxed), beconn(svc), 0],
        retries: 0,
        redispatched: false,
        queue: [0, 0],
        request: None,
    })));
}
