//! One request through the proxy: routing, persistence or balancing,
//! retries and redispatch, rewriting both ways.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use http_body_util::{BodyExt, Full};
use hyper::{
    body::Bytes,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Request, Response, StatusCode, Uri, Version,
};

use super::{
    access::{Access, Arrival},
    balance::Key,
    body::Body,
    counters::bump,
    http1::{
        client::ExchangeError,
        framing::{self, Decode, MalformedBody},
    },
    persistence::{finish_cookie, learn_session, persistence},
    pool::{Origin, SendError},
    queue::Held,
    service::{Service, States, Via},
    timers,
    tunnel::Tunnel,
};
use crate::config::{ConnectionMode, HttpCfg};

pub(super) fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Named, not spelled: removing by `&str` parses the name every time.
/// (HTTP2-Settings goes with `Upgrade: h2c`, which is never forwarded.)
pub(super) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("http2-settings"),
];

/// Removes the hop-by-hop headers a message has: the fixed ones and those
/// its Connection header names (RFC 9110 7.6.1), but Host. Most messages
/// have one or none: one scan instead of a lookup for each name.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut found = [false; 8];
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            found[i] = true;
        }
    }
    if found[0] {
        // Removed by their text: a name looked up as `&str` is not copied
        // into a HeaderName of its own (most messages say `keep-alive`).
        // Nor is a list made for the usual one Connection line.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let rest: Vec<HeaderValue> = values.cloned().collect();
        for t in first
            .iter()
            .chain(&rest)
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        {
            match std::str::from_utf8(t.trim_ascii()) {
                Ok(name) if !name.is_empty() && !name.eq_ignore_ascii_case("host") => {
                    headers.remove(name);
                }
                _ => {}
            }
        }
    }
    for (h, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, f)| *f) {
        headers.remove(h);
    }
}

/// A request body as the backend gets it. With a body limit, a body of
/// unknown length (chunked, or HTTP/2 without content-length) is read
/// first, so an oversized one is refused with 413 before anything is sent.
pub(super) async fn limit_body(http: &HttpCfg, req: Request<Body>) -> Result<Request<Body>, Response<Body>> {
    let Some(max) = http.max_body_bytes else {
        return Ok(req);
    };
    match framing::declared(req.headers()) {
        Ok(Decode::Length(n)) if n > max => Err(local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")),
        Ok(Decode::Length(_) | Decode::Done) => Ok(req),
        Err(_) => Err(local(StatusCode::BAD_REQUEST, "bad content-length\n")),
        // Chunked (HTTP/1) or no length at all (HTTP/2).
        _ => {
            let (parts, mut body) = req.into_parts();
            let mut whole = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Err(local(StatusCode::BAD_REQUEST, "bad request body\n"));
                };
                if let Ok(data) = frame.into_data() {
                    if (whole.len() + data.len()) as u64 > max {
                        return Err(local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"));
                    }
                    whole.extend_from_slice(&data);
                }
            }
            let whole = Full::new(Bytes::from(whole)).map_err(|n| match n {}).boxed();
            Ok(Request::from_parts(parts, whole))
        }
    }
}

/// The request's host without its port (Host header, else the HTTP/2
/// authority).
pub(super) fn host_of<B>(req: &Request<B>) -> Option<String> {
    let h = match req.headers().get(header::HOST).and_then(|v| v.to_str().ok()) {
        Some(h) => h.to_string(),
        None => req.uri().authority()?.as_str().to_string(),
    };
    let host = match h.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => h.split(':').next().unwrap_or(""),
    };
    Some(host.to_ascii_lowercase())
}

/// One request: routing, persistence or balancing, retries, rewriting
/// both ways.
pub(super) async fn handle(
    svc: Arc<Service>,
    states: States,
    peer: SocketAddr,
    tls: bool,
    req: Request<Body>,
    arrival: Option<Arrival>,
) -> Response<Body> {
    bump(&svc.counters.requests);
    let http = &svc.cfg.http;
    let st = svc.flags(&states.read().expect("states lock").clone());
    let uri = req.uri().clone();
    let path = uri.path();
    if let Some(uri) = &http.monitor_uri {
        // Not logged, as HAProxy's monitor requests are not.
        if path == uri {
            return if svc.eligible(&st, 0, &[]).is_empty() {
                local_503()
            } else {
                local(StatusCode::OK, "OK\n")
            };
        }
    }
    let mut log = Access::new(&svc, (peer, tls), arrival, &req);
    // (HTTP/1 heads are held to the limit as they are read; this is for
    // HTTP/2's.)
    let head_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let target_bytes = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if head_bytes + target_bytes > http.max_header_bytes {
        bump(&svc.counters.refused);
        let resp = local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        );
        return log.finish(None, *b"PR", None, resp);
    }
    let method = req.method().clone();
    // (Without a limit the request is not moved through a future.)
    let mut req = match http.max_body_bytes {
        None => req,
        Some(_) => match limit_body(http, req).await {
            Ok(r) => r,
            Err(resp) => {
                bump(&svc.counters.refused);
                return log.finish(None, *b"PR", None, resp);
            }
        },
    };
    let now = now_secs();
    let now_i = Instant::now();
    let pool = if svc.cfg.routes.is_empty() {
        0
    } else {
        svc.route(&st, path, host_of(&req).as_deref())
    };
    if pool != 0 {
        bump(&svc.counters.routed);
    }
    log.pool = pool;
    let p = persistence(&svc, &st, pool, &mut req, now, now_i);
    // The log's cookie flags: the request's, then what the response set.
    let flags = |set: char| (svc.cfg.cookie.is_some() && svc.cookie_pools[pool]).then(|| (p.judgement.flag(), set));
    let header_value = svc.balancers[pool].header().and_then(|name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let key = Key {
        client: peer.ip(),
        path,
        header: header_value.as_deref(),
    };
    let balancer = &svc.balancers[pool];
    let mut via = p.via;
    let target = match p
        .target
        .or_else(|| balancer.pick(&svc.slots, &svc.eligible(&st, pool, &[]), &key))
    {
        Some(t) => t,
        None => {
            bump(&svc.counters.no_server);
            return log.finish(None, *b"SC", flags('N'), local_503());
        }
    };
    // A place at the server (maxconn), waiting in the queue if need be.
    let queued_at = log.clock();
    let tied = p.target.is_some();
    let placed = svc.place(&st, pool, target, tied, &key).await;
    log.time(1, queued_at, log.clock());
    let mut permit = match placed {
        Ok(permit) => permit,
        Err(place) => {
            // As HAProxy: a request that waited for its own server names
            // it; one that waited for any names none.
            log.queued(tied, place);
            bump(&svc.counters.no_server);
            let r = local(StatusCode::SERVICE_UNAVAILABLE, "no server available: queue timeout\n");
            return log.finish(tied.then_some(target), *b"sQ", flags('N'), r);
        }
    };
    let mut target = permit.backend;
    log.placed = Some(target);
    if let Some(place) = permit.place {
        log.queued(tied, place);
    }

    let upgrade = prepare_request(&svc, peer, tls, &mut req);
    let origin = Origin {
        client: peer,
        dst: SocketAddr::new(svc.cfg.vip, svc.cfg.port),
    };
    // Connect, with retries; the last one goes elsewhere with redispatch.
    let attempts = 1 + http.retries;
    let mut failed = Vec::new();
    let connecting = log.clock();
    let conn = loop {
        let name = svc.pools[target].name_for(req.headers());
        match svc.pools[target].checkout(http.timeout_connect, name, &origin).await {
            Ok(s) => break s,
            Err(e) => {
                // Counted (and shown by the stats); HAProxy does not log
                // each attempt either.
                tracing::debug!(service = %svc.cfg.name, backend = %svc.cfg.backends[target].name, "{e}");
                bump(&svc.slots[target].counters.connect_errors);
                failed.push(target);
                if failed.len() as u32 >= attempts {
                    bump(&svc.counters.no_server);
                    return log.finish(Some(target), *b"SC", flags('N'), local_503());
                }
                log.retries += 1;
                bump(&svc.slots[target].counters.retries);
                if http.redispatch && failed.len() as u32 == attempts - 1 {
                    if let Some(t) = balancer.pick(&svc.slots, &svc.eligible(&st, pool, &failed), &key) {
                        // The place moves with the request.
                        log.placed = None;
                        drop(permit);
                        let moved = match svc.place(&st, pool, t, true, &key).await {
                            Ok(moved) => moved,
                            Err(place) => {
                                log.queued(true, place);
                                bump(&svc.counters.no_server);
                                return log.finish(Some(t), *b"sQ", flags('N'), local_503());
                            }
                        };
                        permit = moved;
                        target = t;
                        log.placed = Some(t);
                        via = Via::Redispatch;
                        log.redispatched = true;
                        bump(&svc.slots[target].counters.redispatches);
                    }
                }
            }
        }
    };
    let sending = log.clock();
    log.time(2, connecting, sending);
    let counters = &svc.slots[target].counters;
    bump(&counters.requests);
    counters.active.fetch_add(1, Ordering::Relaxed);
    // An upgrade must not ask the backend to close.
    let keep = http.connection == ConnectionMode::KeepAlive || upgrade;
    let sent = tokio::time::timeout_at(
        timers::coarse(http.timeout_server),
        svc.pools[target].send(conn, req, http.timeout_connect, keep, &origin),
    )
    .await;
    counters.active.fetch_sub(1, Ordering::Relaxed);
    let resp = match sent {
        Ok(Ok(r)) => r,
        // The client's body broke its framing (HAProxy: PD), or the
        // client went away in it (CD).
        Ok(Err(SendError::Exchange {
            cause: ExchangeError::RequestBody(e),
            ..
        })) => {
            tracing::debug!(service = %svc.cfg.name, "request body: {e}");
            bump(&svc.counters.refused);
            let r = local(StatusCode::BAD_REQUEST, "bad request body\n");
            if e.is::<MalformedBody>() {
                return log.finish(Some(target), *b"PD", flags('N'), r);
            }
            log.client_gone = true;
            return log.finish(Some(target), *b"CD", flags('N'), r);
        }
        Ok(Err(e @ SendError::Exchange { .. })) | Ok(Err(e @ SendError::Connect { .. })) => {
            tracing::debug!(service = %svc.cfg.name, "{e}");
            counters.response(502);
            let r = local(StatusCode::BAD_GATEWAY, "bad gateway\n");
            return log.finish(Some(target), *b"SH", flags('N'), r);
        }
        Err(_) => {
            counters.response(504);
            let r = local(StatusCode::GATEWAY_TIMEOUT, "backend timeout\n");
            return log.finish(Some(target), *b"sH", flags('N'), r);
        }
    };
    log.time(3, sending, log.clock());
    counters.response(resp.status().as_u16());
    let mut resp = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The backend switched: its connection goes to the client's side,
        // which joins the two once the 101 is out.
        let (mut parts, body) = resp.into_parts();
        let Some(conn) = body.into_upgraded() else {
            let r = local(StatusCode::BAD_GATEWAY, "bad gateway\n");
            return log.finish(Some(target), *b"SH", flags('N'), r);
        };
        parts.extensions.insert(Tunnel::new(conn, permit));
        Response::from_parts(parts, Body::default())
    } else {
        resp.map(|b| Held::new(b, permit).boxed())
    };
    learn_session(&svc, p.session.as_deref(), target, &resp, now_i);
    log.server_cookie(&resp);
    let via_cookie = via == Via::Cookie;
    let set = if svc.cookie_pools[pool] {
        finish_cookie(&svc, &method, target, via_cookie, p.parsed.as_ref(), now, &mut resp)
    } else {
        '-'
    };
    finish_response(&svc, &mut resp);
    log.finish(Some(target), *b"--", flags(set), resp)
}

pub(super) fn local_503() -> Response<Body> {
    local(StatusCode::SERVICE_UNAVAILABLE, "no server available\n")
}

/// Origin-form URI and Host (from HTTP/2's authority), HTTP/1.1 towards the
/// backend, hop-by-hop headers dropped (but an HTTP/1.1 client's upgrade
/// request: true), X-Forwarded-Proto set, X-Forwarded-For added.
pub(super) fn prepare_request(svc: &Service, peer: SocketAddr, tls: bool, req: &mut Request<Body>) -> bool {
    let upgrade = upgrade_asked(req);
    if req.headers().get(header::HOST).is_none() {
        if let Some(a) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    // HTTP/1 requests come in origin form already; HTTP/2 ones in absolute form.
    if req.uri().authority().is_some() || req.uri().scheme().is_some() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        *req.uri_mut() = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    }
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut());
    if let Some(protocols) = &upgrade {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, protocols.clone());
    }
    // Always xlb's own: a client's value is replaced, never passed on.
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    req.headers_mut().insert(X_FORWARDED_PROTO, proto);
    let http = &svc.cfg.http;
    let except = http.forwardfor_except.is_some_and(|c| c.contains(peer.ip()));
    if http.forwardfor && !except {
        if let Ok(v) = HeaderValue::try_from(peer.ip().to_string()) {
            req.headers_mut().append(X_FORWARDED_FOR, v);
        }
    }
    upgrade.is_some()
}

/// The protocols an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` and `Upgrade`), but h2c: xlb speaks HTTP/2 to clients itself
/// and HTTP/1.1 to backends.
fn upgrade_asked<B>(req: &Request<B>) -> Option<HeaderValue> {
    let headers = req.headers();
    let protocols = headers.get(header::UPGRADE)?;
    let h2c = protocols
        .as_bytes()
        .split(|b| *b == b',')
        .any(|p| p.trim_ascii().to_ascii_lowercase().starts_with(b"h2c"));
    (req.version() == Version::HTTP_11 && framing::lists(headers, &header::CONNECTION, "upgrade") && !h2c)
        .then(|| protocols.clone())
}

/// Connection mode and hop-by-hop headers on the way back (a `101` keeps
/// its `Upgrade`).
pub(super) fn finish_response(svc: &Service, resp: &mut Response<Body>) {
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    let upgrade = headers.get(header::UPGRADE).filter(|_| switched).cloned();
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
        return;
    }
    if svc.cfg.http.connection == ConnectionMode::Close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_lines_name_headers_to_drop_but_host() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-A"),
            ("connection", " x-b ,close"),
            ("connection", "Host"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
            ("host", "example.com"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-c"]);
    }
}
