//! Cookie persistence and appsession lookup for a request, and appsession
//! learning from its response.

use std::time::Instant;

use hyper::{
    header::{self, HeaderValue},
    Method, Request, Response,
};

use super::{
    appsession,
    body::Body,
    cookie::{self, Judgement},
    service::{Service, Via},
};
use crate::config::{Backend, CookieMode};

/// What persistence decided for a request before balancing.
pub(super) struct Persistence {
    pub(super) judgement: Judgement,
    pub(super) target: Option<usize>,
    pub(super) via: Via,
    /// The persistence cookie, parsed, when it was sent.
    pub(super) parsed: Option<cookie::Parsed>,
    /// The appsession id the request carried.
    pub(super) session: Option<String>,
}

/// Cookie persistence and appsession lookup for a request to `pool`; the
/// request's `Cookie` header is rewritten as the server must see it.
pub(super) fn persistence(
    svc: &Service,
    st: &[u8],
    pool: usize,
    req: &mut Request<Body>,
    now: u64,
    now_i: Instant,
) -> Persistence {
    let mut p = Persistence {
        judgement: Judgement::None,
        target: None,
        via: Via::Balance,
        parsed: None,
        session: None,
    };
    let members = &svc.members[pool];
    // The Cookie header, joined if HTTP/2 split it (a header value clone
    // shares its bytes).
    let mut values = req.headers().get_all(header::COOKIE).iter();
    let cookie_header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(one), None) => Some(one.clone()),
        (Some(_), Some(_)) => {
            let all: Vec<&str> = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            HeaderValue::try_from(all.join("; ")).ok()
        }
    };
    let joined = cookie_header.as_ref().and_then(|v| v.to_str().ok());
    if let Some(a) = &svc.cfg.appsession {
        let method = req.method();
        if method == Method::GET || method == Method::POST || method == Method::HEAD {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            p.session = joined
                .and_then(|h| cookie::find([h], &a.cookie))
                .filter(|v| !v.is_empty())
                .or_else(|| appsession::from_url(pq, &a.cookie, a.url_mode))
                .map(str::to_string);
        }
    }
    if let (Some(c), Some(h), true) = (&svc.cfg.cookie, joined, svc.cookie_pools[pool]) {
        let ours = cookie::find([h], &c.name);
        if let Some(v) = ours {
            let parsed = cookie::parse(c, v);
            let candidates = members.iter().map(|i| cookie::Candidate {
                cookie: svc.cfg.backends[*i].cookie.as_deref(),
                usable: Service::usable(st, *i),
            });
            let (j, t) = cookie::judge(c, &parsed, candidates, now);
            p.judgement = j;
            p.target = t.map(|t| members[t]);
            p.parsed = Some(parsed);
        }
        // What the server sees of the cookie: unchanged unless ours is in
        // it and must go (indirect) or lose its prefix.
        let rewritten = match c.mode {
            CookieMode::Insert if c.indirect && ours.is_some() => Some(cookie::strip(h, &c.name)),
            CookieMode::Prefix if ours.is_some() => Some(Some(cookie::unprefix(h, &c.name))),
            _ => None,
        };
        let header = match rewritten {
            Some(v) => v.and_then(|v| HeaderValue::try_from(v).ok()),
            None => cookie_header.clone(),
        };
        req.headers_mut().remove(header::COOKIE);
        if let Some(v) = header {
            req.headers_mut().insert(header::COOKIE, v);
        }
    }
    if p.target.is_some() {
        p.via = Via::Cookie;
    }
    // Every hit refreshes the session, even when the cookie already placed
    // the request.
    if let (Some(t), Some(id)) = (&svc.sessions, &p.session) {
        let usable = |named: &dyn Fn(&Backend) -> bool| {
            members
                .iter()
                .copied()
                .find(|i| named(&svc.cfg.backends[*i]) && Service::usable(st, *i))
        };
        let mut found = t.lookup(id, now_i).and_then(|server| usable(&|b| b.name == server));
        if found.is_none() && svc.cfg.appsession.as_ref().is_some_and(|a| a.route_suffix) {
            found = appsession::route_of(id).and_then(|r| usable(&|b| b.cookie.as_deref().unwrap_or(&b.name) == r));
        }
        if p.target.is_none() && found.is_some() {
            p.target = found;
            p.via = Via::AppSession;
        }
    }
    p
}

/// Appsession learning from the response: the server's new session id
/// (replacing the one the request carried, which is how a changed id after
/// a failover is followed), else with `request_learn` the request's id.
pub(super) fn learn_session(svc: &Service, session: Option<&str>, target: usize, resp: &Response<Body>, now: Instant) {
    let (Some(a), Some(table)) = (&svc.cfg.appsession, &svc.sessions) else {
        return;
    };
    let server = &svc.cfg.backends[target].name;
    let set = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let learned = match (appsession::from_set_cookie(set, &a.cookie), session) {
        (Some(new), old) => {
            if let Some(old) = old.filter(|o| *o != new) {
                table.forget(old);
            }
            new
        }
        (None, Some(id)) if a.request_learn => id,
        _ => return,
    };
    table.learn(learned, server, now);
    if let Some(p) = &svc.peers {
        p.push(&svc.cfg.name, learned, server);
    }
}

/// Cookie insertion or rewriting, and nocache, on the way back; returns
/// HAProxy's set-cookie flag for the log: `I` inserted, `U` updated (its
/// dates), `R` rewritten, `D` the server's deleted, `P` the server's
/// passed on, `N` none.
pub(super) fn finish_cookie(
    svc: &Service,
    method: &Method,
    target: usize,
    via_cookie: bool,
    parsed: Option<&cookie::Parsed>,
    now: u64,
    resp: &mut Response<Body>,
) -> char {
    let Some(c) = &svc.cfg.cookie else { return '-' };
    let headers = resp.headers_mut();
    let server_cookie = svc.cfg.backends[target].cookie.as_deref();
    let set_cookies: Vec<String> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    match c.mode {
        CookieMode::Insert => {
            let refresh = via_cookie && parsed.is_some_and(|p| cookie::needs_refresh(c, p, now));
            let want = (!via_cookie || refresh) && (!c.postonly || method == Method::POST);
            // The server's own cookie of that name goes unless `preserve`.
            let others: Vec<&String> = set_cookies.iter().filter(|v| !cookie::is_named(v, &c.name)).collect();
            let servers = others.len() != set_cookies.len();
            let mut flag = match (servers, c.preserve) {
                (false, _) => 'N',
                (true, false) => 'D',
                (true, true) => 'P',
            };
            if !c.preserve && servers {
                headers.remove(header::SET_COOKIE);
                for v in others {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        headers.append(header::SET_COOKIE, v);
                    }
                }
            }
            if want {
                let first = if via_cookie { parsed.and_then(|p| p.first) } else { None };
                let value = match &svc.inserted[target] {
                    Some(v) => Ok(v.clone()),
                    None => HeaderValue::try_from(cookie::insert(c, server_cookie, now, first)),
                };
                if let Ok(v) = value {
                    headers.append(header::SET_COOKIE, v);
                    flag = if via_cookie { 'U' } else { 'I' };
                }
                if c.nocache && server_cookie.is_some() {
                    // One pass over the head for what caching depends on.
                    let (mut cc, mut pragma, mut expires, mut validator) = (Vec::new(), Vec::new(), false, false);
                    for (k, v) in resp.headers() {
                        if k == header::CACHE_CONTROL {
                            cc.extend(v.to_str().ok());
                        } else if k == header::PRAGMA {
                            pragma.extend(v.to_str().ok());
                        } else {
                            expires |= k == header::EXPIRES;
                            validator |= k == header::ETAG || k == header::LAST_MODIFIED;
                        }
                    }
                    let cacheable = cookie::cacheable(
                        method.as_str(),
                        resp.status().as_u16(),
                        &cc,
                        &pragma,
                        expires,
                        validator,
                    );
                    if cacheable {
                        resp.headers_mut()
                            .append(header::CACHE_CONTROL, HeaderValue::from_static("private"));
                    }
                }
            }
            flag
        }
        CookieMode::Rewrite | CookieMode::Prefix => {
            let servers = set_cookies.iter().any(|v| cookie::is_named(v, &c.name));
            let Some(sc) = server_cookie else {
                return if servers { 'P' } else { 'N' };
            };
            if !servers {
                return 'N';
            }
            headers.remove(header::SET_COOKIE);
            for v in &set_cookies {
                let v = cookie::rewrite_set_cookie(c, v, sc).unwrap_or_else(|| v.clone());
                if let Ok(v) = HeaderValue::from_str(&v) {
                    headers.append(header::SET_COOKIE, v);
                }
            }
            'R'
        }
    }
}
