//! Lab tests of the whole chain: the real `xlb` binary loads and attaches the
//! XDP program to a veth in a namespace, real TCP packets from a client
//! namespace move the per-service counters, and bad input fails cleanly.

use std::{net::SocketAddr, path::Path, time::Duration};

use lab::{servers, topology::vip, xlb::temp_file, xlb::xlb_once, Host, Lab, LabSpec, XlbProcess};

fn config(xdp_mode: &str) -> String {
    format!(
        r#"
[global]
interface = "eth0"
xdp_mode = "{xdp_mode}"
# The L7 proxy binds the VIP before it is local.
nonlocal_bind = true

# Passed to the kernel, where xlb's own L7 proxy accepts the connections.
[[service]]
name = "web"
vip = "{vip}"
port = 80
mode = "http"
  [[service.backend]]
  name = "be0"
  address = "198.18.1.1:8080"
  [service.health]
  kind = "none"

[[service]]
name = "dns"
vip = "{vip}"
port = 53
protocol = "udp"
mode = "nat"
"#,
        vip = vip(10)
    )
}

fn status(lab: &Lab) -> serde_json::Value {
    let out = xlb_once(&lab.xlb.ns, &["status", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "xlb status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn service<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

/// What `ip link` says is attached to the xlb node's eth0: "xdp" (native),
/// "xdpgeneric", or "" (nothing).
fn attached(lab: &Lab) -> String {
    let out = lab.xlb.ns.ip(&["-d", "link", "show", "dev", Host::IFACE]).unwrap();
    for word in ["xdpgeneric", "xdpdrv", "xdp"] {
        if out.split_whitespace().any(|w| w == word) {
            return word.to_string();
        }
    }
    String::new()
}

/// TCP connection attempts from the client to VIP:port (refused or not: each
/// sends at least a SYN through the xlb node's XDP program).
fn knock(lab: &Lab, port: u16, times: usize) {
    let src = SocketAddr::new(lab.client.ip.into(), 0);
    let dst = SocketAddr::new(vip(10).into(), port);
    for _ in 0..times {
        let _ = servers::connect_from(&lab.client.ns, src, dst, Duration::from_millis(300));
    }
}

#[test]
fn counts_vip_packets_in_native_mode_and_detaches_on_stop() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 1,
        ..Default::default()
    })
    .unwrap();
    // The xlb node owns the VIP so the kernel answers the SYNs (with RST).
    lab.xlb
        .ns
        .ip(&["addr", "add", &format!("{}/32", vip(10)), "dev", "lo"])
        .unwrap();
    let cfg = temp_file("native.toml", &config("native")).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &["--cleanup"]).unwrap();
    assert_eq!(attached(&lab), "xdp", "native XDP expected on the veth");

    let st = status(&lab);
    assert_eq!(st["xdp_mode"], "native");
    assert_eq!(service(&st, "web")["packets"], 0);

    knock(&lab, 80, 5);
    knock(&lab, 81, 3);
    let st = status(&lab);
    let web = service(&st, "web")["packets"].as_u64().unwrap();
    // Each connection is at least a SYN; all of its packets go to the kernel.
    assert!(web >= 5, "web packets {web}, log:\n{}", xlb.log());
    assert_eq!(st["outcomes"]["pass_service"].as_u64(), Some(web));
    assert!(service(&st, "web")["bytes"].as_u64().unwrap() >= web * 54);
    assert_eq!(service(&st, "dns")["packets"], 0);
    assert!(
        st["outcomes"]["pass_not_service"].as_u64().unwrap() >= 3,
        "port 81 SYNs are not a service"
    );

    let text = xlb_once(&lab.xlb.ns, &["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("eth0 (native XDP)") && text.contains("service web 198.19.0.10:80/tcp"),
        "{text}"
    );

    let log = xlb.log();
    let code = xlb.stop().unwrap();
    assert!(code.success(), "xlb exit {code}: {log}");
    assert_eq!(attached(&lab), "", "XDP must be detached after stop");
}

#[test]
fn generic_mode_on_request() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 0,
        ..Default::default()
    })
    .unwrap();
    let cfg = temp_file("generic.toml", &config("generic")).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    assert_eq!(attached(&lab), "xdpgeneric");
    assert_eq!(status(&lab)["xdp_mode"], "generic");
    knock(&lab, 80, 2);
    assert!(service(&status(&lab), "web")["packets"].as_u64().unwrap() >= 2);
    xlb.stop().unwrap();
}

/// Runs `xlb run` expecting failure; returns its stderr.
fn run_fails(lab: &Lab, wrapper: &[&str], args: &[&str]) -> String {
    let bin = lab::xlb::xlb_binary();
    let mut cmd = lab
        .xlb
        .ns
        .cmd(wrapper.first().map_or(bin.as_os_str(), |w| Path::new(w).as_os_str()));
    if !wrapper.is_empty() {
        cmd.args(&wrapper[1..]).arg(&bin);
    }
    let out = cmd.arg("run").args(args).output().unwrap();
    assert!(!out.status.success(), "xlb run {args:?} must fail");
    assert_eq!(attached(lab), "", "nothing may stay attached after a failed start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn last_line(s: &str) -> &str {
    s.trim_end().lines().last().unwrap_or("")
}

#[test]
fn bad_input_fails_with_one_line_and_leaves_nothing_attached() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 0,
        ..Default::default()
    })
    .unwrap();
    let good = temp_file("good.toml", &config("auto")).unwrap();
    let good = good.to_str().unwrap();

    let e = run_fails(&lab, &[], &["--config", good, "--iface", "nosuch0"]);
    assert!(last_line(&e).contains("interface \"nosuch0\" does not exist"), "{e}");

    let e = run_fails(&lab, &[], &["--config", "/nonexistent/xlb.toml"]);
    assert!(
        last_line(&e).starts_with("xlb: cannot read config /nonexistent/xlb.toml"),
        "{e}"
    );

    let bad = temp_file(
        "bad.toml",
        "[global]\ninterface = \"eth0\"\n\n[[service]]\nname = \"x\"\nvip = \"not-an-ip\"\nport = 80\nmode = \"nat\"\n",
    )
    .unwrap();
    let e = run_fails(&lab, &[], &["--config", bad.to_str().unwrap()]);
    assert!(
        e.contains(&format!("{}:6: vip \"not-an-ip\" is not an IP address", bad.display())),
        "{e}"
    );

    // Root without capabilities: the kernel refuses bpf().
    let e = run_fails(
        &lab,
        &["setpriv", "--bounding-set=-all", "--inh-caps=-all"],
        &["--config", good],
    );
    assert!(last_line(&e).contains("no permission to load BPF programs"), "{e}");
}

#[test]
fn auto_mode_falls_back_to_generic_where_native_is_missing() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 0,
        ..Default::default()
    })
    .unwrap();
    // Loopback has no native XDP support.
    let cfg = temp_file(
        "auto-lo.toml",
        &config("auto").replace("interface = \"eth0\"", "interface = \"lo\""),
    )
    .unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &["--cleanup"]).unwrap();
    assert_eq!(status(&lab)["xdp_mode"], "generic");
    assert!(
        xlb.log().contains("falling back to generic (skb) mode"),
        "{}",
        xlb.log()
    );
    let out = lab.xlb.ns.ip(&["link", "show", "dev", "lo"]).unwrap();
    assert!(out.contains("xdpgeneric"), "{out}");
    xlb.stop().unwrap();
}
