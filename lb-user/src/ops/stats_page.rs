//! The stats page on the admin address (HAProxy's `stats uri`): an HTML
//! table per service with a form for admin actions, a CSV variant
//! (`URI;csv` or `URI?csv`) and a refresh header (the admin API checks
//! `[stats] auth` with `auth::Credentials`).

use std::fmt::Write;

use crate::control::status::Status;

/// Decodes `application/x-www-form-urlencoded` into pairs.
pub fn form(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// HAProxy-like CSV: a row per backend, then a `BACKEND` row per service.
pub fn csv(st: &Status) -> String {
    let mut o = String::from(
        "# pxname,svname,status,weight,bck,group,addr,scur,stot,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,econ,wretr,wredis,pkts,flows,qcur,qmax,qtime,qtimeout,\n",
    );
    for s in &st.services {
        let (mut scur, mut stot) = (0, 0);
        for b in &s.backends {
            let h = b.http.clone().unwrap_or_default();
            scur += h.active;
            stot += h.requests;
            let r = h.responses;
            let _ = writeln!(
                o,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},,,,,",
                s.name,
                b.name,
                b.state.to_uppercase(),
                b.weight,
                u8::from(b.backup),
                b.group.as_deref().unwrap_or(""),
                b.address,
                h.active,
                h.requests,
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                h.connect_errors,
                h.retries,
                h.redispatches,
                b.packets,
                b.new_flows
            );
        }
        let up = s.backends.iter().any(|b| b.state == "up");
        let q = s.http.clone().unwrap_or_default();
        let _ = writeln!(
            o,
            "{},BACKEND,{},,,,{}:{},{scur},{},,,,,,,,,{},{},{},{},{},{},",
            s.name,
            if up { "UP" } else { "DOWN" },
            s.vip,
            s.port,
            s.http.as_ref().map_or(stot, |h| h.requests),
            s.packets,
            s.new_flows,
            q.queued,
            q.queued_max,
            q.queue_wait_ms_avg,
            q.queue_timeouts
        );
    }
    o
}

/// The HTML page; `admin` shows the action form, `notice` the outcome of
/// the last action.
pub fn html(st: &Status, uri: &str, admin: bool, notice: Option<&str>) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>xlb stats</title>\
         <style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse;margin-bottom:1em}\
         td,th{border:1px solid #999;padding:2px 6px}th{background:#eee}.up{background:#cfc}\
         .down{background:#fcc}.drain{background:#ffc}.maint{background:#ccf}</style></head><body>\n",
    );
    let _ = writeln!(
        o,
        "<h1>xlb statistics</h1><p>config: {} &middot; version <span id=\"version\">{}</span> &middot; \
         <a href=\"{u};csv\">CSV</a> &middot; changed through <code>/api/v1/</code> \
         (<a href=\"/api/v1/openapi.json\">OpenAPI</a>)</p>",
        html_escape(&st.config),
        st.version,
        u = html_escape(uri)
    );
    if let Some(n) = notice {
        let _ = writeln!(o, "<p class=\"notice\"><b>{}</b></p>", html_escape(n));
    }
    for s in &st.services {
        let _ = writeln!(
            o,
            "<h2>{} <small>{}:{}/{} mode={}</small></h2>",
            html_escape(&s.name),
            html_escape(&s.vip),
            s.port,
            html_escape(&s.protocol),
            html_escape(&s.mode)
        );
        if admin {
            let _ = writeln!(
                o,
                "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"b\" value=\"{}\">",
                html_escape(uri),
                html_escape(&s.name)
            );
        }
        o.push_str("<table><tr>");
        if admin {
            o.push_str("<th></th>");
        }
        o.push_str(
            "<th>backend</th><th>address</th><th>group</th><th>state</th><th>weight</th><th>active</th>\
             <th>requests</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>conn errors</th>\
             <th>retries</th><th>packets</th><th>flows</th></tr>\n",
        );
        for b in &s.backends {
            let h = b.http.clone().unwrap_or_default();
            let _ = write!(o, "<tr class=\"{}\">", html_escape(&b.state));
            if admin {
                let _ = write!(
                    o,
                    "<td><input type=\"checkbox\" name=\"s\" value=\"{}\"></td>",
                    html_escape(&b.name)
                );
            }
            let backup = if b.backup { " (backup)" } else { "" };
            let _ = writeln!(
                o,
                "<td>{}{backup}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html_escape(&b.name),
                html_escape(&b.address),
                html_escape(b.group.as_deref().unwrap_or("")),
                html_escape(&b.state),
                b.weight,
                h.active,
                h.requests,
                h.responses[1],
                h.responses[2],
                h.responses[3],
                h.responses[4],
                h.connect_errors,
                h.retries,
                b.packets,
                b.new_flows
            );
        }
        o.push_str("</table>\n");
        if !s.routes.is_empty() {
            o.push_str("<p>routes, in order:</p><ol class=\"routes\">");
            for r in &s.routes {
                let _ = write!(o, "<li>{}</li>", html_escape(r));
            }
            o.push_str("</ol>\n");
        }
        if let Some(h) = &s.http {
            let _ = writeln!(
                o,
                "<p>queue: {} waiting (most {}, avg wait {} ms, {} timed out) &middot; tunnels: {}</p>",
                h.queued, h.queued_max, h.queue_wait_ms_avg, h.queue_timeouts, h.tunnels
            );
        }
        if admin {
            o.push_str(
                "<select name=\"action\"><option value=\"ready\">set state to READY</option>\
                 <option value=\"drain\">set state to DRAIN</option>\
                 <option value=\"maint\">set state to MAINT</option></select> \
                 <input type=\"submit\" value=\"Apply\"></form>\n",
            );
        }
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(
            form("b=web&s=app+1&s=a%2Fb&action=drain&bad=%zz"),
            vec![
                ("b".to_string(), "web".to_string()),
                ("s".into(), "app 1".into()),
                ("s".into(), "a/b".into()),
                ("action".into(), "drain".into()),
                ("bad".into(), "%zz".into()),
            ]
        );
    }
}
