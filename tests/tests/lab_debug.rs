//! `xlb debug datapath on|off`: the XDP program's rare events (aya-log)
//! reach xlb's log while the switch is on, and only then.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use lab::{
    l4::{config, dst, hello, start_servers, status},
    servers::connect_from,
    xlb::{temp_file, xlb_once},
    Lab, LabSpec, XlbProcess,
};

const LINE: &str = "xlb datapath: no backend";

fn xlb(lab: &Lab, args: &[&str]) -> String {
    let out = xlb_once(&lab.xlb.ns, args).unwrap();
    assert!(
        out.status.success(),
        "xlb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn no_backend_drops(lab: &Lab) -> u64 {
    status(lab)["outcomes"]["drop_no_backend"].as_u64().unwrap()
}

/// One connection attempt from `port` that xlb drops (no backend), and a
/// wait until the drop is counted.
fn dropped_syn(lab: &Lab, port: u16) {
    let before = no_backend_drops(lab);
    let src = SocketAddr::new(lab.client.addrs[0].into(), port);
    assert!(connect_from(&lab.client.ns, src, dst(), Duration::from_millis(300)).is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while no_backend_drops(lab) <= before {
        assert!(
            Instant::now() < deadline,
            "the SYN was not dropped for want of a backend"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rare_events_reach_the_log_while_switched_on() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 1,
        client_addrs: 1,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let cfg = temp_file("debug.toml", &config("nat", 8080, &[("be0", 0, 1)])).unwrap();
    let xlb_run = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    hello(&lab, lab.client.addrs[0].into());
    assert_eq!(xlb(&lab, &["debug", "datapath"]).trim(), "data path events: off");
    xlb(&lab, &["server", "set-state", "web", "be0", "maint"]);

    // Off: the drop is counted, nothing is logged.
    dropped_syn(&lab, 40001);
    assert!(!xlb_run.log().contains(LINE));

    // On: the event names the outcome and the flow.
    assert_eq!(xlb(&lab, &["debug", "datapath", "on"]).trim(), "data path events: on");
    dropped_syn(&lab, 40002);
    let want = format!("{LINE}: proto 6 {}:40002 -> {}", lab.client.addrs[0], dst());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !xlb_run.log().contains(&want) {
        assert!(Instant::now() < deadline, "no {want:?} in the log:\n{}", xlb_run.log());
        thread::sleep(Duration::from_millis(20));
    }

    // Off again: later drops leave no line.
    xlb(&lab, &["debug", "datapath", "off"]);
    dropped_syn(&lab, 40003);
    thread::sleep(Duration::from_millis(200));
    assert!(!xlb_run.log().contains(":40003 ->"), "{}", xlb_run.log());
    xlb_run.stop().unwrap();
}

/// Without a data path (an http-only config) the switch says so.
#[test]
fn the_switch_needs_a_data_path() {
    lab::require_root!();
    let ns = lab::Netns::create(&format!("xlbt{}dbg", std::process::id())).unwrap();
    let cfg = temp_file(
        "debug-http.toml",
        "[[service]]\nname = \"w\"\nvip = \"127.0.0.1\"\nport = 8081\nmode = \"http\"\n\
         [service.health]\nkind = \"none\"\n[[service.backend]]\nname = \"b\"\naddress = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let xlb_run = XlbProcess::start(&ns, &cfg, &[]).unwrap();
    let out = xlb_once(&ns, &["debug", "datapath", "on"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no XDP data path"));
    xlb_run.stop().unwrap();
}
