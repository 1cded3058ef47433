//! The control plane in the lab, with the real daemon and real TCP: health
//! checks taking a killed backend out and back, operator states (drain,
//! maint), reloads that apply and reloads that are refused.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use lab::{
    bpffs::Bpffs,
    l4::{backend_state, config, hello, predict, start_servers, status, wait_for, Spec, Stream},
    servers::{Kind, Server},
    xlb::{temp_file, xlb_once},
    Lab, LabSpec, XlbProcess,
};

fn clients(lab: &Lab) -> Vec<IpAddr> {
    lab.client.addrs.iter().map(|a| (*a).into()).collect()
}

#[test]
fn killed_backend_is_taken_out_and_comes_back() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 3,
        client_addrs: 24,
    })
    .unwrap();
    let mut servers = start_servers(&lab, 8080, false);
    let all: [Spec; 3] = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 1)];
    let cfg = temp_file("health.toml", &config("nat", 8080, &all)).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    let before: Vec<String> = clients(&lab).iter().map(|c| hello(&lab, *c)).collect();
    assert!(before.iter().any(|b| b == "be1"), "the test needs clients on be1");

    // Kill be1: its listener closes, checks get "connection refused".
    let addr = servers[1].addr;
    drop(servers.remove(1));
    // fall (2) x interval (300 ms) + timeout (200 ms), plus scheduling slack.
    let took = wait_for(Duration::from_secs(3), "be1 to be marked down", || {
        backend_state(&lab, "be1") == "down"
    });
    println!("be1 marked down {took:?} after it died (bound: 2 x 300 ms + 200 ms)");
    assert!(
        xlb.log().contains("backend be1 of service web is DOWN"),
        "{}",
        xlb.log()
    );

    let during: Vec<String> = clients(&lab).iter().map(|c| hello(&lab, *c)).collect();
    for (b, d) in before.iter().zip(&during) {
        if b == "be1" {
            assert_ne!(d, "be1");
        } else {
            assert_eq!(b, d, "a client of a healthy backend moved");
        }
    }

    // Back: after `rise` (2) good checks its clients return (same ring).
    servers.insert(1, Server::start(&lab.backends[1].ns, addr, "be1", Kind::Tcp).unwrap());
    let took = wait_for(Duration::from_secs(3), "be1 to be up again", || {
        backend_state(&lab, "be1") == "up"
    });
    println!("be1 up again {took:?} after it restarted");
    let after: Vec<String> = clients(&lab).iter().map(|c| hello(&lab, *c)).collect();
    assert_eq!(after, before, "clients must return to their backends");
    xlb.stop().unwrap();
}

#[test]
fn drain_keeps_streams_maint_cuts_them() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 2,
        client_addrs: 16,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let all: [Spec; 2] = [("be0", 0, 1), ("be1", 1, 1)];
    let cfg = temp_file("states.toml", &config("nat", 8080, &all)).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    let client = *clients(&lab)
        .iter()
        .find(|c| predict(&all, **c) == "be0")
        .expect("a client of be0");
    assert_eq!(hello(&lab, client), "be0");
    let mut stream = Stream::open(&lab, client);
    assert_eq!(stream.backend, "be0");

    let set = |state: &str| {
        let out = xlb_once(&lab.xlb.ns, &["server", "set-state", "web", "be0", state]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    set("drain");
    assert_eq!(backend_state(&lab, "be0"), "drain");
    for n in 0..5 {
        stream.ping(n).expect("a drained backend keeps its connections");
    }
    assert_eq!(hello(&lab, client), "be1", "no new flows to a drained backend");

    set("maint");
    assert_eq!(backend_state(&lab, "be0"), "maint");
    // The stream's packets now go to be1, which knows no such connection.
    let broke = (0..5).any(|n| stream.ping(100 + n).is_err());
    assert!(broke, "maintenance must cut the backend's connections");

    set("ready");
    assert_eq!(backend_state(&lab, "be0"), "up");
    assert_eq!(hello(&lab, client), "be0");

    let bad = xlb_once(&lab.xlb.ns, &["server", "set-state", "web", "nosuch", "drain"]).unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no backend \"nosuch\" in service \"web\""));
    xlb.stop().unwrap();
}

#[test]
fn reload_applies_weights_and_refuses_broken_files() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 3,
        client_addrs: 30,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let even: [Spec; 3] = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 1)];
    let heavy: [Spec; 3] = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 6)];
    let cfg = temp_file("reload.toml", &config("nat", 8080, &even)).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    let mut stream = Stream::open(&lab, clients(&lab)[0]);
    stream.ping(0).unwrap();

    // A weight change through `xlb reload`: new connections follow the new ring.
    std::fs::write(&cfg, config("nat", 8080, &heavy)).unwrap();
    let out = xlb_once(&lab.xlb.ns, &["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = status(&lab);
    assert_eq!(st["services"][0]["backends"][2]["weight"], 6);
    let moved = clients(&lab)
        .iter()
        .filter(|c| predict(&even, **c) != predict(&heavy, **c))
        .count();
    assert!(moved > 0);
    for c in clients(&lab) {
        assert_eq!(hello(&lab, c), predict(&heavy, c), "client {c} after the weight change");
    }
    stream.ping(1).expect("the stream survives the reload");

    // A broken file: refused with its line, the running config stays.
    let broken = config("nat", 8080, &heavy).replace("weight = 6", "weight = \"six\"");
    std::fs::write(&cfg, &broken).unwrap();
    let line = broken.lines().position(|l| l.contains("\"six\"")).unwrap() + 1;
    let out = xlb_once(&lab.xlb.ns, &["reload"]).unwrap();
    assert!(!out.status.success(), "a broken file must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:{line}:", cfg.display())), "{err}");
    assert_eq!(status(&lab)["services"][0]["backends"][2]["weight"], 6);
    for n in 2..6 {
        stream.ping(n).expect("traffic continues after a refused reload");
    }
    for c in clients(&lab).iter().take(10) {
        assert_eq!(hello(&lab, *c), predict(&heavy, *c));
    }
    // SIGHUP with the broken file: logged, refused, nothing changes.
    xlb.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(3), "the refusal in the log", || {
        xlb.log().contains("reload refused")
    });
    assert_eq!(status(&lab)["services"][0]["backends"][2]["weight"], 6);
    xlb.stop().unwrap();
}

/// The L4 config with `backends` plus http services on the xlb node's
/// loopback (port, name), each with the backend on 127.0.0.1:9001.
fn with_http(backends: &[Spec<'_>], http: &[(u16, &str)]) -> String {
    let mut c = config("nat", 8080, backends);
    for (port, name) in http {
        c += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"127.0.0.1\"\nport = {port}\nmode = \"http\"\n\
             [service.health]\nkind = \"none\"\n[[service.backend]]\nname = \"app\"\naddress = \"127.0.0.1:9001\"\n"
        );
    }
    c
}

#[test]
fn a_reload_applies_everything_or_nothing() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 3,
        client_addrs: 20,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let _app = Server::start(&lab.xlb.ns, "127.0.0.1:9001".parse().unwrap(), "app", Kind::Http).unwrap();
    let even: [Spec; 3] = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 1)];
    let heavy: [Spec; 3] = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 6)];
    let cfg = temp_file("atomic.toml", &with_http(&even, &[(8080, "site")])).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    let site = |port: u16| lab::http::get(&lab.xlb.ns, format!("127.0.0.1:{port}").parse().unwrap(), "/", &[]);
    assert_eq!(site(8080).unwrap().status, 200);
    let version = status(&lab)["version"].as_u64().unwrap();

    // Another process holds the port a new http service wants: the reload
    // is refused, naming it, and neither side moves: the L4 weights (XDP
    // maps) and the L7 services stay those of the running config.
    let squatter = lab
        .xlb
        .ns
        .enter(|| std::net::TcpListener::bind("127.0.0.1:8181"))
        .unwrap()
        .unwrap();
    std::fs::write(&cfg, with_http(&heavy, &[(8080, "site"), (8181, "shop")])).unwrap();
    let out = xlb_once(&lab.xlb.ns, &["reload"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(
        err.contains("shop") && err.contains("127.0.0.1:8181") && err.contains("in use"),
        "{err}"
    );
    let st = status(&lab);
    assert_eq!(st["version"].as_u64().unwrap(), version, "no new version");
    assert_eq!(st["services"][0]["backends"][2]["weight"], 1, "L4 weights unchanged");
    assert_eq!(st["services"].as_array().unwrap().len(), 2, "no service added");
    for c in clients(&lab) {
        assert_eq!(hello(&lab, c), predict(&even, c), "client {c} still on the old ring");
    }
    assert_eq!(site(8080).unwrap().status, 200, "the L7 side still serves");

    // Once the port is free, the same file applies, both halves at once.
    drop(squatter);
    let out = xlb_once(&lab.xlb.ns, &["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status(&lab)["services"][0]["backends"][2]["weight"], 6);
    for c in clients(&lab) {
        assert_eq!(hello(&lab, c), predict(&heavy, c), "client {c} on the new ring");
    }
    assert_eq!(site(8181).unwrap().status, 200);
    xlb.stop().unwrap();
}

fn lo_addrs(lab: &Lab) -> String {
    lab.xlb.ns.ip(&["-o", "addr", "show", "dev", "lo"]).unwrap()
}

#[test]
fn vip_aliases_come_and_go_but_foreign_ones_stay() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 1,
        client_addrs: 1,
    })
    .unwrap();
    // A VIP someone else (keepalived, an admin) put there first.
    lab.xlb.ns.ip(&["addr", "add", "198.19.0.11/32", "dev", "lo"]).unwrap();
    let svc = |name: &str, vip: &str| {
        format!("[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\nmode = \"nat\"\n[service.health]\nkind = \"none\"\n")
    };
    let global = "[global]\ninterface = \"eth0\"\nvip_interface = \"lo\"\nnonlocal_bind = true\n";
    let three = format!(
        "{global}{}{}{}",
        svc("a", "198.19.0.10"),
        svc("b", "198.19.0.11"),
        svc("c", "198.19.0.12")
    );
    let two = format!("{global}{}{}", svc("a", "198.19.0.10"), svc("b", "198.19.0.11"));
    let cfg = temp_file("vips.toml", &three).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &["--cleanup"]).unwrap();
    let addrs = lo_addrs(&lab);
    for a in ["198.19.0.10/32", "198.19.0.11/32", "198.19.0.12/32"] {
        assert!(addrs.contains(a), "{a} missing:\n{addrs}");
    }
    for key in ["net.ipv4.ip_nonlocal_bind", "net.ipv6.ip_nonlocal_bind"] {
        assert_eq!(lab.xlb.ns.run("sysctl", &["-n", key]).unwrap().trim(), "1", "{key}");
    }

    std::fs::write(&cfg, &two).unwrap();
    let out = xlb_once(&lab.xlb.ns, &["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let addrs = lo_addrs(&lab);
    assert!(
        !addrs.contains("198.19.0.12/32"),
        "a VIP no longer configured must go:\n{addrs}"
    );
    assert!(addrs.contains("198.19.0.10/32"));

    xlb.stop().unwrap();
    let addrs = lo_addrs(&lab);
    assert!(
        !addrs.contains("198.19.0.10/32"),
        "xlb's VIPs go when it stops:\n{addrs}"
    );
    assert!(
        addrs.contains("198.19.0.11/32"),
        "a VIP that was there before xlb stays:\n{addrs}"
    );
}

/// Whether the xlb node's eth0 has an XDP program attached.
fn xdp_attached(lab: &Lab) -> bool {
    let out = lab.xlb.ns.ip(&["link", "show", "dev", "eth0"]).unwrap();
    out.contains(" xdp") || out.contains("prog/xdp")
}

#[test]
fn restart_keeps_every_stream_and_the_affinity() {
    restart_keeps_streams(false);
}

#[test]
fn a_seamless_upgrade_keeps_every_stream_and_the_affinity() {
    restart_keeps_streams(true);
}

/// A stop then a start, or (`upgrade`) a new process started with `--sf`
/// while the old one runs, under 20 streams that talk all the time.
fn restart_keeps_streams(upgrade: bool) {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 3,
        client_addrs: 20,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let pins = Bpffs::mount("restart").unwrap();
    let all: [Spec; 3] = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 1)];
    let text = config("nat", 8080, &all).replace(
        "[global]\n",
        &format!("[global]\npin_dir = \"{}\"\n", pins.path.display()),
    );
    let cfg = temp_file("restart.toml", &text).unwrap();
    let mut first = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    let before: Vec<String> = clients(&lab).iter().map(|c| hello(&lab, *c)).collect();
    let streams: Vec<Stream> = clients(&lab).iter().map(|c| Stream::open(&lab, *c)).collect();
    let names: Vec<String> = streams.iter().map(|s| s.backend.clone()).collect();

    // The streams talk all the time, through the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let driver = thread::spawn(move || {
        let mut streams = streams;
        let mut rounds = 0;
        while !stop2.load(Ordering::Relaxed) {
            for (i, s) in streams.iter_mut().enumerate() {
                if let Err(e) = s.ping(rounds) {
                    return Err(format!("stream {i} ({}) failed in round {rounds}: {e}", s.backend));
                }
            }
            rounds += 1;
            thread::sleep(Duration::from_millis(20));
        }
        Ok((rounds, streams.iter().map(|s| s.backend.clone()).collect::<Vec<_>>()))
    });
    thread::sleep(Duration::from_millis(300));

    let second = if upgrade {
        let second = XlbProcess::start(&lab.xlb.ns, &cfg, &["--cleanup", "--sf"]).unwrap();
        let gone = first.wait_exit(Duration::from_secs(5));
        assert!(gone.is_some_and(|s| s.success()), "the old one leaves\n{}", first.log());
        assert!(first.log().contains("handed over to the new xlb"), "{}", first.log());
        second
    } else {
        first.stop().unwrap();
        assert!(xdp_attached(&lab), "a plain stop leaves the data plane running");
        thread::sleep(Duration::from_millis(300)); // no daemon at all for a while
        XlbProcess::start(&lab.xlb.ns, &cfg, &["--cleanup"]).unwrap()
    };
    assert!(
        second.log().contains("took over the running data plane"),
        "{}",
        second.log()
    );
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (rounds, after_names) = driver
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
    println!("20 streams, {rounds} round trips each across the restart, none failed");
    assert_eq!(after_names, names);
    let after: Vec<String> = clients(&lab).iter().map(|c| hello(&lab, *c)).collect();
    assert_eq!(after, before, "new connections keep their backends after the restart");
    let flows = status(&lab)["services"][0]["new_flows"].as_u64().unwrap();
    assert!(flows >= 20, "counters survive the restart too: {flows}");

    second.stop().unwrap();
    assert!(!xdp_attached(&lab), "--cleanup detaches");
    let ours = pins.path.join("eth0");
    assert!(
        !ours.exists(),
        "--cleanup unpins: {:?}",
        std::fs::read_dir(&ours).map(|d| d.count())
    );
}

#[test]
fn backups_serve_only_when_no_normal_backend_is_up() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 3,
        client_addrs: 8,
    })
    .unwrap();
    let mut servers = start_servers(&lab, 8080, false);
    let all: [Spec; 3] = [("be0", 0, 1), ("be1", 1, 1), ("spare", 2, 1)];
    let text = config("nat", 8080, &all).replace("name = \"spare\"\n", "name = \"spare\"\nbackup = true\n");
    let cfg = temp_file("backup.toml", &text).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    let normal = [("be0", 0, 1), ("be1", 1, 1)];
    for c in clients(&lab) {
        assert_eq!(
            hello(&lab, c),
            predict(&normal, c),
            "the backup takes nothing while normal ones are up"
        );
    }
    // Both normal backends die: the backup takes every client.
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    servers.truncate(0);
    servers.push(Server::start(&lab.backends[2].ns, addrs[2], "spare", Kind::Tcp).unwrap());
    wait_for(Duration::from_secs(3), "be0 and be1 down", || {
        backend_state(&lab, "be0") == "down" && backend_state(&lab, "be1") == "down"
    });
    for c in clients(&lab) {
        assert_eq!(hello(&lab, c), "spare");
    }
    // One normal backend back: it takes everyone again.
    servers.push(Server::start(&lab.backends[0].ns, addrs[0], "be0", Kind::Tcp).unwrap());
    wait_for(Duration::from_secs(3), "be0 up", || backend_state(&lab, "be0") == "up");
    for c in clients(&lab) {
        assert_eq!(hello(&lab, c), "be0");
    }
    xlb.stop().unwrap();
}
