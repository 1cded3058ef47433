//! The stats page in a real browser (Debian's headless Chromium, driven
//! over the DevTools protocol): it renders with the config version and the
//! routes (a screenshot is taken), and its admin form really changes a
//! server's state.

use std::{
    net::TcpStream,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use lab::{
    http::Client,
    l7::{Be, Spec, L7},
};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Chromium, killed with its profile on drop.
struct Browser(Child, std::path::PathBuf);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// One DevTools session on a page: commands by id, events by name.
struct Page {
    ws: WebSocket<TcpStream>,
    next: u64,
}

impl Page {
    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("DevTools message") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                _ => continue,
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap();
        loop {
            let m = self.read();
            if m["id"].as_u64() == Some(id) {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
        }
    }

    fn wait_event(&mut self, name: &str) {
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if self.read()["method"] == name {
                return;
            }
        }
        panic!("no {name}");
    }

    fn eval(&mut self, js: &str) -> Value {
        self.call("Runtime.evaluate", json!({"expression": js, "returnByValue": true}))["result"]["value"].clone()
    }
}

#[test]
fn the_stats_page_renders_in_chromium_and_its_form_sets_a_state() {
    lab::require_root!();
    let l = L7::run(&Spec {
        service: "[[service.route]]\npath_beg = [\"/api/\"]\nbackend_group = \"api\"\n",
        backends: &[Be("s1", ""), Be("s2", "")],
        groups: &[("api", &[Be("a1", "")])],
        tail: "[stats]\nuri = \"/stats\"\nauth = \"admin:secret\"\n",
        ..Spec::default()
    });
    let profile = std::env::temp_dir().join(format!("xlb-chromium-{}", std::process::id()));
    let child =
        l.ns.cmd("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=9222",
                "--remote-allow-origins=*",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (Debian's, installed by cargo xtask setup)");
    let _browser = Browser(child, profile);
    // The page target's DevTools socket.
    let until = Instant::now() + Duration::from_secs(30);
    let ws_url = loop {
        let targets =
            l.ns.cmd("curl")
                .args(["-s", "http://127.0.0.1:9222/json/list"])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok());
        let url = targets.as_ref().and_then(|t| {
            t.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_string)
        });
        if let Some(u) = url {
            break u;
        }
        assert!(Instant::now() < until, "chromium's DevTools did not come up");
        std::thread::sleep(Duration::from_millis(200));
    };
    let stream = l.ns.enter(|| TcpStream::connect("127.0.0.1:9222")).unwrap().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools websocket");
    let mut page = Page { ws, next: 0 };
    page.call("Page.enable", json!({}));
    page.call("Network.enable", json!({}));
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:secret")
    );
    page.call(
        "Network.setExtraHTTPHeaders",
        json!({"headers": {"Authorization": auth}}),
    );
    page.call("Page.navigate", json!({"url": "http://127.0.0.1:9900/stats"}));
    page.wait_event("Page.loadEventFired");

    let version: u64 = {
        let r = Client::connect(&l.ns, "127.0.0.1:9900".parse().unwrap())
            .unwrap()
            .get("/api/v1/version", &[])
            .unwrap();
        serde_json::from_str::<Value>(&r.body).unwrap()["version"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(page.eval("document.title"), "xlb stats");
    assert_eq!(
        page.eval("document.getElementById('version').textContent"),
        version.to_string(),
        "the page shows the config version"
    );
    assert_eq!(
        page.eval("document.querySelector('ol.routes li').textContent"),
        "path_beg /api/ -> api"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('tr.up').length"),
        3,
        "three servers up"
    );
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5000,
        "{} bytes",
        png.len()
    );
    let file = std::env::temp_dir().join(format!("xlb-stats-{}.png", std::process::id()));
    std::fs::write(&file, &png).unwrap();
    println!("screenshot: {}", file.display());

    // The admin form, as an operator uses it: tick s1, choose MAINT, Apply.
    let done = page.eval(
        "const f = document.forms[0]; f.querySelector('input[name=s][value=s1]').checked = true; \
         f.querySelector('select[name=action]').value = 'maint'; \
         f.querySelector('input[type=submit]').click(); 'sent'",
    );
    assert_eq!(done, "sent");
    page.wait_event("Page.loadEventFired");
    let notice = page.eval("document.querySelector('.notice').textContent");
    assert_eq!(notice, "Action processed successfully.");
    assert_eq!(
        page.eval("document.querySelector('tr.maint td:nth-child(2)').textContent"),
        "s1"
    );
    let st: Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    let s1 = st["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "s1")
        .unwrap()
        .clone();
    assert_eq!(s1["state"], "maint", "the daemon took the form's action");
    for _ in 0..4 {
        assert_ne!(l.get("/", &[]).backend(), "s1", "no traffic to a server in maintenance");
    }
}
