//! The runtime config API, `/api/v1/` (HAProxy Data Plane API style):
//! services, their backends, groups, routes and settings read and written
//! as JSON mirroring the config file's keys, each write at `?version=N`
//! (409 when stale) or staged in `?transaction_id=ID`, validated like
//! `xlb check` (400, nothing changed), applied like a reload and written
//! back to the file.

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::openapi;
use crate::control::{
    daemon::{RunError, Shared},
    resources::{Edit, EditError, Verb},
};

type Resp = Response<Full<Bytes>>;

/// Request bodies at most (a transaction's 1,000 backends come one by one).
const MAX_BODY: usize = 1 << 20;

fn reply(status: StatusCode, body: &Json) -> Resp {
    let bytes = if status == StatusCode::NO_CONTENT {
        Bytes::new()
    } else {
        Bytes::from(serde_json::to_vec_pretty(body).unwrap_or_default())
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(bytes))
        .expect("static response parts are valid")
}

/// An error as the Data Plane API answers it: `{"code", "message"}`.
fn fail(status: StatusCode, message: impl std::fmt::Display) -> Resp {
    reply(
        status,
        &json!({ "code": status.as_u16(), "message": message.to_string() }),
    )
}

fn error(e: RunError) -> Resp {
    let status = match &e {
        RunError::Edit(EditError::NotFound(_)) | RunError::NoSuchTransaction(_) | RunError::NoSuchBackend { .. } => {
            StatusCode::NOT_FOUND
        }
        RunError::Edit(EditError::Exists(_))
        | RunError::StaleVersion { .. }
        | RunError::FileChanged(_)
        | RunError::TransactionFull(_)
        | RunError::Proxy(_) => StatusCode::CONFLICT,
        RunError::Edit(EditError::Method(..)) => StatusCode::METHOD_NOT_ALLOWED,
        RunError::Edit(EditError::Invalid(_)) | RunError::Invalid(_) | RunError::Config(_) | RunError::Weight(_) => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    fail(status, e)
}

/// `version`, `transaction_id` (or `transaction`) and `index` (where a
/// route is inserted).
#[derive(Default)]
struct Params {
    version: Option<u64>,
    transaction: Option<String>,
    index: Option<usize>,
}

fn params(query: Option<&str>) -> Result<Params, String> {
    let mut p = Params::default();
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{k}={v:?} is not a number"));
        match k {
            "version" => p.version = Some(num(v)?),
            "transaction_id" | "transaction" if !v.is_empty() => p.transaction = Some(v.to_string()),
            "index" => p.index = Some(num(v)? as usize),
            _ => return Err(format!("unknown parameter {k:?} (version, transaction_id, index)")),
        }
    }
    Ok(p)
}

/// Percent-decoded path segments (names may hold any character).
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let b = s.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b[i],
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (b'%', Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    (c, _, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
        .collect()
}

/// Serves `/api/v1/...` (`rest`: the segments after `v1`).
pub async fn handle(shared: Shared, req: Request<hyper::body::Incoming>) -> Resp {
    let method = req.method().clone();
    let all = segments(req.uri().path());
    let rest: Vec<String> = all.iter().skip(2).cloned().collect();
    let p = match params(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {MAX_BODY} bytes"),
            )
        }
    };
    let r: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (&method, r.as_slice()) {
        (&Method::GET, ["openapi.json"]) => reply(StatusCode::OK, &openapi::document()),
        (&Method::GET, ["version"]) => reply(StatusCode::OK, &json!({ "version": shared.lock().await.version() })),
        (_, ["transactions", tail @ ..]) => transactions(&shared, &method, tail, &p).await,
        (_, ["services", ..]) => services(&shared, &method, &rest[1..], &p, &body).await,
        _ => fail(StatusCode::NOT_FOUND, "no such resource (see /api/v1/openapi.json)"),
    }
}

async fn transactions(shared: &Shared, method: &Method, tail: &[&str], p: &Params) -> Resp {
    let mut d = shared.lock().await;
    let view = |t: &crate::control::transaction::Transaction| json!({ "id": t.id, "version": t.version, "status": "in_progress", "changes": t.changes, "edits": t.edits });
    match (method, tail) {
        (&Method::GET, []) => reply(
            StatusCode::OK,
            &Json::Array(d.transactions().iter().map(view).collect()),
        ),
        (&Method::POST, []) => match d.open_transaction(p.version) {
            Ok(t) => reply(StatusCode::CREATED, &view(&t)),
            Err(e) => error(e),
        },
        (&Method::GET, [id]) => match d.transaction(id) {
            Ok(t) => reply(StatusCode::OK, &view(t)),
            Err(e) => error(e),
        },
        (&Method::PUT, [id]) => match d.commit_transaction(id) {
            Ok(v) => reply(StatusCode::OK, &json!({ "id": id, "version": v, "status": "success" })),
            Err(e) => error(e),
        },
        (&Method::DELETE, [id]) => match d.delete_transaction(id) {
            Ok(()) => reply(StatusCode::NO_CONTENT, &Json::Null),
            Err(e) => error(e),
        },
        _ => fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "transactions: GET, POST; /{id}: GET, PUT, DELETE",
        ),
    }
}

async fn services(shared: &Shared, method: &Method, path: &[String], p: &Params, body: &Bytes) -> Resp {
    let verb = match *method {
        Method::GET => {
            let d = shared.lock().await;
            return match d.resource(path) {
                Ok(v) => reply(StatusCode::OK, &v),
                Err(e) => error(e),
            };
        }
        Method::POST => Verb::Post,
        Method::PUT => Verb::Put,
        Method::DELETE => Verb::Delete,
        _ => return fail(StatusCode::METHOD_NOT_ALLOWED, "GET, POST, PUT or DELETE"),
    };
    let mut index = p.index;
    let body = if verb == Verb::Delete {
        None
    } else {
        match serde_json::from_slice::<Json>(body) {
            Ok(Json::Object(mut m)) => {
                // A new route's place may come in its body too (as the Data
                // Plane API's switching rules have it).
                if verb == Verb::Post && path.last().is_some_and(|s| s == "routes") {
                    if let Some(i) = m.remove("index") {
                        match i.as_u64() {
                            Some(i) => index = Some(i as usize),
                            None => return fail(StatusCode::BAD_REQUEST, "index: a number"),
                        }
                    }
                }
                Some(Json::Object(m))
            }
            Ok(_) => return fail(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
            Err(e) => return fail(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")),
        }
    };
    let edit = Edit {
        verb,
        path: path.to_vec(),
        index,
        body,
    };
    let mut d = shared.lock().await;
    if let Some(id) = &p.transaction {
        return match d.stage_edit(id, edit.clone()) {
            Ok(()) => reply(StatusCode::ACCEPTED, &json!({ "transaction_id": id, "staged": edit })),
            Err(e) => error(e),
        };
    }
    if let Err(e) = d
        .check_version(p.version)
        .and_then(|()| d.edit_config(std::slice::from_ref(&edit)))
    {
        return error(e);
    }
    // What is there now: a new element is named by its body (a route by
    // its index).
    let at: Vec<String> = match (verb, &edit.body) {
        (Verb::Delete, _) => return reply(StatusCode::NO_CONTENT, &Json::Null),
        (Verb::Post, Some(b)) => {
            let mut at = path.to_vec();
            match (path.last().map(String::as_str), b.get("name").and_then(Json::as_str)) {
                (Some("routes"), _) => {
                    let n = d
                        .resource(path)
                        .ok()
                        .and_then(|v| v.as_array().map(Vec::len))
                        .unwrap_or(1);
                    at.push(index.unwrap_or(n.saturating_sub(1)).to_string());
                }
                (_, Some(name)) => at.push(name.to_string()),
                _ => {}
            }
            at
        }
        _ => path.to_vec(),
    };
    let status = if verb == Verb::Post {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    reply(status, &d.resource(&at).unwrap_or(Json::Null))
}
