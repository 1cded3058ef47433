//! `xlb check` on broken configs (table-driven: each must be refused with
//! FILE:LINE: reason, the line found by a marker in the text) and on the
//! bundled examples (must pass).

use std::{path::Path, process::Command};

use lab::xlb::{temp_file, xlb_binary};

const L4: &str = "[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nmode = \"nat\"\n";
const HTTP: &str = "[[service]]\nname = \"site\"\nvip = \"198.18.0.11\"\nport = 80\nmode = \"http\"\n";

fn backend(name: &str, addr: &str, extra: &str) -> String {
    format!("  [[service.backend]]\n  name = \"{name}\"\n  address = \"{addr}\"\n{extra}")
}

/// (case name, config text, marker on the line to report, reason text)
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let be = backend("a", "198.18.1.10:80", "");
    vec![
        (
            "log sink scheme",
            format!("[global]\nlog = [\"stdout\", \"tcp://127.0.0.1:514\"]\n{HTTP}{be}"),
            "tcp://",
            "unknown scheme (udp://, unix://, stdout or stderr)",
        ),
        (
            "log facility",
            format!("[global]\nlog = \"udp://127.0.0.1\"\nlog_facility = \"local9\"\n{HTTP}{be}"),
            "local9",
            "log facility \"local9\": one of",
        ),
        (
            "log level",
            format!("[global]\nlog_level = \"verbose\"\n{HTTP}{be}"),
            "verbose",
            "log level \"verbose\": one of",
        ),
        (
            "syslog framing",
            format!("[global]\nlog_format = \"rfc1234\"\n{HTTP}{be}"),
            "rfc1234",
            "log_format \"rfc1234\": \"rfc3164\" or \"rfc5424\"",
        ),
        (
            "httplog on an L4 service",
            format!("{L4}  [service.log]\n  format = \"httplog\"\n{be}"),
            "httplog",
            "log format \"httplog\" applies to mode \"http\" only",
        ),
        (
            "log sample on an http service",
            format!("{HTTP}  [service.log]\n  sample = 10\n{be}"),
            "sample",
            "log sample applies to L4 services",
        ),
        (
            "dynamic cookie key too short",
            format!("{HTTP}  [service.cookie]\n  name = \"SRV\"\n  dynamic_key = \"short\"\n{be}"),
            "dynamic_key",
            "cookie dynamic_key needs at least 16 characters",
        ),
        (
            "send_proxy version",
            format!("{HTTP}{}", backend("a", "198.18.1.10:80", "  send_proxy = \"v3\"\n")),
            "send_proxy",
            "send_proxy \"v3\" is not \"v1\" or \"v2\"",
        ),
        (
            "maxconn 0",
            format!("{HTTP}{}", backend("a", "198.18.1.10:80", "  maxconn = 0\n")),
            "maxconn",
            "maxconn 0 is not in 1-1000000",
        ),
        (
            "maxconn on an L4 service",
            format!("{L4}{}", backend("a", "198.18.1.10:80", "  maxconn = 5\n")),
            "maxconn",
            "maxconn applies to mode \"http\" only",
        ),
        (
            "tls on an L4 service",
            format!("{L4}  [service.tls]\n  certs = []\n{be}"),
            "[service.tls]",
            "[service.tls] applies to mode \"http\" only",
        ),
        (
            "alpn",
            format!("{HTTP}  [service.tls]\n  certs = [\"/nonexistent.pem\"]\n  alpn = [\"spdy/3\"]\n{be}"),
            "spdy",
            "tls alpn \"spdy/3\" is not \"h2\" or \"http/1.1\"",
        ),
        (
            "tls min_version",
            format!("{HTTP}  [service.tls]\n  certs = [\"/nonexistent.pem\"]\n  min_version = \"1.1\"\n{be}"),
            "min_version",
            "tls min_version \"1.1\" is not \"1.2\" or \"1.3\"",
        ),
        (
            "backend tls_verify without tls",
            format!("{HTTP}{}", backend("a", "198.18.1.10:80", "  tls_verify = \"none\"\n")),
            "tls_verify",
            "tls_verify and tls_sni need tls = true",
        ),
        (
            "health method on a tcp check",
            format!("{HTTP}  [service.health]\n  kind = \"tcp\"\n  method = \"HEAD\"\n{be}"),
            "method",
            "health method needs kind = \"http\"",
        ),
        (
            "health version",
            format!("{HTTP}  [service.health]\n  kind = \"http\"\n  version = \"HTTP/2\"\n{be}"),
            "version",
            "health version \"HTTP/2\" is not \"HTTP/1.0\" or \"HTTP/1.1\"",
        ),
        (
            "timeout_queue",
            format!("{HTTP}  [service.http]\n  timeout_queue = \"0s\"\n{be}"),
            "timeout_queue",
            "timeout_queue must be more than 0",
        ),
        (
            "unknown key",
            "[global]\ninterface = \"eth0\"\nbogus = 1\n".into(),
            "bogus",
            "unknown field `bogus`",
        ),
        (
            "toml syntax",
            "[global]\ninterface = \"eth0\n".into(),
            "interface",
            "invalid",
        ),
        (
            "duplicate service name",
            format!("{L4}{}", L4.replace("198.18.0.10", "198.18.0.12")),
            "",
            "duplicate service name \"web\"",
        ),
        (
            "vip/port conflict",
            format!("{L4}{}", L4.replace("\"web\"", "\"other\"")),
            "\"other\"",
            "uses 198.18.0.10:80/tcp already taken by service \"web\"",
        ),
        (
            "bad vip",
            L4.replace("198.18.0.10", "198.18.0"),
            "198.18.0\"",
            "vip \"198.18.0\" is not an IP address",
        ),
        (
            "port 0",
            L4.replace("port = 80", "port = 0"),
            "port = 0",
            "port 0 is not in 1-65535",
        ),
        (
            "backend address",
            format!("{L4}{}", backend("a", "198.18.1.10", "")),
            "198.18.1.10",
            "backend address \"198.18.1.10\" is not ip:port",
        ),
        (
            "weight range",
            format!("{L4}{}", backend("a", "198.18.1.10:80", "  weight = 300\n")),
            "weight = 300",
            "weight 300 is not in 0-256",
        ),
        (
            "cookie on an L4 backend",
            format!("{L4}{}", backend("a", "198.18.1.10:80", "  cookie = \"a\"\n")),
            "name = \"a\"",
            "cookie applies to mode \"http\" only",
        ),
        (
            "duplicate cookie value",
            format!(
                "{HTTP}{}{}",
                backend("a", "198.18.1.10:80", "  cookie = \"s1\"\n"),
                backend("b", "198.18.1.11:80", "  cookie = \"s1\"\n")
            ),
            "cookie = \"s1\"",
            "cookie value \"s1\" already used by backend \"a\"",
        ),
        (
            "backend family",
            format!("{L4}{}", backend("a", "[2001:db8::1]:80", "")),
            "2001:db8::1",
            "is not of the VIP's address family",
        ),
        (
            "snat outside nat",
            L4.replace("mode = \"nat\"", "mode = \"dsr\"\nsnat = \"198.18.0.2\""),
            "snat",
            "snat applies to mode \"nat\" only",
        ),
        (
            "empty snat pool",
            L4.replace("mode = \"nat\"", "mode = \"nat\"\nsnat = []"),
            "snat",
            "snat: a pool holds 1 to 16 addresses, not 0",
        ),
        (
            "snat listed twice",
            L4.replace("mode = \"nat\"", "mode = \"nat\"\nsnat = [\"198.18.0.2\", \"198.18.0.2\"]"),
            "snat",
            "snat 198.18.0.2 is listed twice",
        ),
        (
            "snat pool family",
            L4.replace("mode = \"nat\"", "mode = \"nat\"\nsnat = [\"198.18.0.2\", \"2001:db8::2\"]"),
            "snat",
            "snat 2001:db8::2 is not of the VIP's address family",
        ),
        (
            "balance for the mode",
            L4.replace("mode = \"nat\"", "mode = \"nat\"\nbalance = \"roundrobin\""),
            "roundrobin",
            "balance \"roundrobin\" is not valid for mode nat (source, 5tuple)",
        ),
        (
            "http over udp",
            HTTP.replace("mode = \"http\"", "mode = \"http\"\nprotocol = \"udp\""),
            "name = \"site\"",
            "mode \"http\" needs protocol \"tcp\"",
        ),
        (
            "zero interval",
            format!("{L4}  [service.health]\n  kind = \"tcp\"\n  interval = \"0s\"\n"),
            "0s",
            "health interval must be more than 0",
        ),
        (
            "bad duration",
            format!("{L4}  [service.health]\n  kind = \"tcp\"\n  timeout = \"5 parsecs\"\n"),
            "parsecs",
            "unknown unit",
        ),
        (
            "bad expect",
            format!("{L4}  [service.health]\n  kind = \"http\"\n  expect = \"2xx\"\n"),
            "kind = \"http\"",
            "health expect \"2xx\" is not a status list or range",
        ),
        (
            "rise 0",
            format!("{L4}  [service.health]\n  kind = \"tcp\"\n  rise = 0\n"),
            "rise",
            "health rise must be at least 1",
        ),
        (
            "appsession on L4",
            format!("{L4}  [service.appsession]\n  cookie = \"JSESSIONID\"\n"),
            "[service.appsession]",
            "[service.appsession] applies to mode \"http\" only",
        ),
        (
            "appsession len",
            format!("{HTTP}  [service.appsession]\n  cookie = \"JSESSIONID\"\n  len = 0\n"),
            "len = 0",
            "appsession len 0 is not in 1-1024",
        ),
        (
            "appsession url mode",
            format!("{HTTP}  [service.appsession]\n  cookie = \"J\"\n  url_mode = \"fragment\"\n"),
            "fragment",
            "unknown variant `fragment`",
        ),
        (
            "route to an unknown group",
            format!("{HTTP}  [[service.route]]\n  path_beg = \"/s\"\n  backend_group = \"nope\"\n"),
            "nope",
            "backend_group \"nope\" is not a [[service.group]] of this service",
        ),
        (
            "route host regex",
            format!(
                "{HTTP}  [[service.route]]\n  host = \"(api\"\n  backend_group = \"g\"\n  [[service.group]]\n  name = \"g\"\n"
            ),
            "(api",
            "host regex \"(api\"",
        ),
        (
            "route without a condition",
            format!("{HTTP}  [[service.route]]\n  backend_group = \"g\"\n  [[service.group]]\n  name = \"g\"\n"),
            "[[service.route]]",
            "route needs path_beg, path_end or host",
        ),
        (
            "group backend name taken",
            format!(
                "{HTTP}{}  [[service.group]]\n  name = \"g\"\n  [[service.group.backend]]\n  name = \"a\"\n  address = \"198.18.1.11:80\"\n",
                backend("a", "198.18.1.10:80", "")
            ),
            "name = \"a\"",
            "duplicate backend name \"a\" in service \"site\"",
        ),
        (
            "threads",
            "[global]\nthreads = 0\n".into(),
            "threads",
            "threads must be 1-256, not 0",
        ),
        (
            "stats auth",
            "[stats]\nauth = \"nopassword\"\n".into(),
            "auth",
            "stats auth must be \"user:password\"",
        ),
        (
            "admin reachable without auth",
            "[global]\nadmin = \"198.18.0.2:9900\"\n".into(),
            "admin =",
            "admin 198.18.0.2:9900 is reachable from other hosts: set admin_auth",
        ),
        (
            "admin_auth malformed hash",
            "[global]\nadmin = \"198.18.0.2:9900\"\nadmin_auth = \"ops:$6$nosalt\"\n".into(),
            "admin_auth",
            "admin_auth: $6$ is not a hash xlb reads",
        ),
        (
            "admin_auth without password",
            "[global]\nadmin_auth = \"ops\"\n".into(),
            "admin_auth",
            "admin_auth: credentials must be \"user:password\"",
        ),
        (
            "maxconn 0",
            "[global]\nmaxconn = 0\n".into(),
            "maxconn",
            "maxconn must be at least 1, not 0",
        ),
        (
            "sync key file missing",
            "[sync]\nlisten = \"198.18.0.2:7946\"\nkey_file = \"/nonexistent/sync.key\"\n".into(),
            "key_file",
            "sync key_file /nonexistent/sync.key: cannot read it",
        ),
        (
            "sync key too short",
            format!(
                "[sync]\nlisten = \"198.18.0.2:7946\"\nkey_file = \"{}\"\n",
                temp_file("short.key", "0123456789\n").unwrap().display()
            ),
            "key_file",
            "the key has 10 bytes, fewer than 16",
        ),
        (
            "sync peer is itself",
            format!(
                "[sync]\nlisten = \"198.18.0.2:7946\"\npeers = [\"198.18.0.2:7946\"]\nkey_file = \"{}\"\n",
                temp_file("good.key", "0123456789abcdef0123\n").unwrap().display()
            ),
            "peers",
            "sync peer 198.18.0.2:7946 is this node's own listen address",
        ),
    ]
}

fn check(path: &Path) -> (bool, String, String) {
    let out = Command::new(xlb_binary())
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_configs_are_refused_with_file_and_line() {
    for (i, (name, text, marker, reason)) in cases().into_iter().enumerate() {
        let path = temp_file(&format!("check-{i}.toml"), &text).unwrap();
        // The reported line: the last line holding the marker (the second of
        // two duplicates), or the last `name =` line for an empty marker.
        let marker = if marker.is_empty() { "name = \"web\"" } else { marker };
        let line = text
            .lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("{name}: marker"))
            + 1;
        let (ok, _, err) = check(&path);
        assert!(!ok, "{name}: must be refused");
        let want = format!("{}:{line}: ", path.display());
        let hit = err.lines().find(|l| l.contains(&want));
        assert!(
            hit.is_some_and(|l| l.contains(reason)),
            "{name}: expected `{want}...{reason}` in:\n{err}\n--- config ---\n{text}"
        );
    }
}

#[test]
fn bundled_examples_pass_with_a_summary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let (ok, out, err) = check(&p);
            assert!(ok, "{}: {err}", p.display());
            assert!(out.contains(": OK") && out.contains("service "), "{out}");
        }
    }
}

/// The keepalived pair's example: xlb's config passes `xlb check` (with a
/// key file where it names one), keepalived's passes `keepalived -t`.
#[test]
fn keepalived_example_passes_both_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/keepalived");
    let key = temp_file("example-sync.key", "an example key of more than 16 bytes\n").unwrap();
    let text = std::fs::read_to_string(dir.join("xlb.toml"))
        .unwrap()
        .replace("/etc/xlb/sync.key", &key.display().to_string());
    let path = temp_file("keepalived-example.toml", &text).unwrap();
    let (ok, out, err) = check(&path);
    assert!(ok, "{err}");
    assert!(out.contains("service "), "{out}");
    if Command::new("keepalived").arg("--version").output().is_ok() {
        let out = Command::new("keepalived")
            .args(["--config-test", "-f"])
            .arg(dir.join("keepalived.conf"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keepalived -t: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The BGP example parses as BIRD 2 reads it.
#[test]
fn bgp_example_parses() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bgp/bird.conf");
    let Ok(out) = Command::new("bird").arg("-p").arg("-c").arg(&conf).output() else {
        eprintln!("bird not installed (cargo xtask setup installs bird2): skipped");
        return;
    };
    assert!(
        out.status.success(),
        "bird -p: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn missing_file_is_one_clear_line() {
    let (ok, _, err) = check(Path::new("/nonexistent/xlb.toml"));
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot read config /nonexistent/xlb.toml"), "{err}");
}
