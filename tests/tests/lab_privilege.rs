//! Least privilege: the real xlb as an unprivileged user (nobody) with only
//! the capabilities `examples/xlb.service` grants, under `setpriv`. It must
//! load and attach XDP, pin its maps, set its sysctls, bind an L7 listener
//! on port 80 of a VIP that is not local, and forward L4 traffic.

use std::{ffi::CString, path::Path};

use lab::{
    bpffs::Bpffs,
    l4::{config, hello, predict, start_servers, status, VIP_N},
    topology::{backend_ip, vip},
    xlb::{temp_file, xlb_binary},
    Lab, LabSpec, XlbProcess,
};

/// The capabilities of `examples/xlb.service`, by setpriv's names and
/// numbers (linux/capability.h).
const CAPS: [(&str, u32); 4] = [
    ("net_bind_service", 10),
    ("net_admin", 12),
    ("perfmon", 38),
    ("bpf", 39),
];
const NOBODY: u32 = 65534;

fn chown(path: &Path, uid: u32) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::chown(c.as_ptr(), uid, uid) },
        0,
        "chown {}",
        path.display()
    );
}

/// A field of /proc/PID/status.
fn proc_status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// A `setpriv` command line that runs xlb as nobody with only `caps`. The
/// binary is copied where nobody can read it (the checkout may be under a
/// home directory nobody cannot enter).
fn setpriv(caps: &[(&str, u32)]) -> Vec<String> {
    let bin = temp_file("xlb-unprivileged", "").unwrap();
    std::fs::copy(xlb_binary(), &bin).unwrap();
    for p in [&bin, bin.parent().unwrap()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let caps: Vec<String> = caps.iter().map(|(n, _)| format!("+{n}")).collect();
    let caps = format!("-all,{}", caps.join(","));
    vec![
        "setpriv".into(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set={caps}"),
        "--".into(),
        bin.display().to_string(),
    ]
}

/// A config with one nat service, pinning under `pins`.
fn nat_config(pins: &Path, backends: &[(&str, usize, u32)]) -> String {
    config("nat", 8080, backends).replacen(
        "[global]\n",
        &format!("[global]\npin_dir = \"{}\"\nnonlocal_bind = true\n", pins.display()),
        1,
    )
}

/// The systemd unit grants exactly the capabilities this test gives.
#[test]
fn the_unit_grants_these_capabilities() {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/xlb.service")).unwrap();
    for key in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
        let line = unit
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key}"));
        let mut got: Vec<String> = line[key.len()..].split_whitespace().map(str::to_lowercase).collect();
        got.sort();
        let mut want: Vec<String> = CAPS.iter().map(|(n, _)| format!("cap_{n}")).collect();
        want.sort();
        assert_eq!(got, want, "{key}");
    }
}

#[test]
fn runs_as_nobody_with_only_its_capabilities() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 2,
        client_addrs: 6,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let pins = Bpffs::mount("priv").unwrap();
    chown(&pins.path, NOBODY);
    let backends = [("be0", 0, 1), ("be1", 1, 1)];
    let mut cfg = nat_config(&pins.path, &backends);
    // An L7 listener on a privileged port of a VIP this node does not hold.
    cfg += &format!(
        "\n[[service]]\nname = \"front\"\nvip = \"{}\"\nport = 80\nmode = \"http\"\n\
         [service.health]\nkind = \"none\"\n[[service.backend]]\nname = \"h0\"\naddress = \"{}:8080\"\n",
        vip(VIP_N + 1),
        backend_ip(0)
    );
    let cfg = temp_file("privilege.toml", &cfg).unwrap();

    let wrapper = setpriv(&CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let xlb = XlbProcess::start_launched(&lab.xlb.ns, &wrapper, &cfg, &[], "127.0.0.1:9900").unwrap();

    // It runs as nobody with exactly these capabilities.
    let pid = xlb.pid();
    assert!(proc_status(pid, "Uid:")
        .split_whitespace()
        .all(|u| u == NOBODY.to_string()));
    let want: u64 = CAPS.iter().map(|(_, n)| 1u64 << n).sum();
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let got = u64::from_str_radix(&proc_status(pid, field), 16).unwrap();
        assert_eq!(got, want, "{field} {got:x}, expected {want:x}");
    }

    // L4 forwarding works, and the L7 listener is up.
    for c in &lab.client.addrs {
        assert_eq!(hello(&lab, (*c).into()), predict(&backends, (*c).into()), "client {c}");
    }
    let st = status(&lab);
    assert_eq!(st["services"][1]["mode"], "http");
    assert_eq!(st["xdp_mode"], "native");
    // The maps are pinned (a restart can take over), owned by nobody.
    let dir = pins.path.join("eth0");
    let pinned: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(pinned.len() > 5, "pins in {}: {pinned:?}", dir.display());
    // Nothing it needed was refused.
    let log = xlb.log();
    for refused in ["cannot", "Permission denied", "permission"] {
        assert!(!log.contains(refused), "xlb log says {refused:?}:\n{log}");
    }
    assert!(xlb.stop().unwrap().success());
}

/// Without CAP_PERFMON the verifier refuses the program: xlb stops at
/// start and names the capabilities it needs.
#[test]
fn a_missing_capability_is_named() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 1,
        client_addrs: 1,
    })
    .unwrap();
    let pins = Bpffs::mount("noperf").unwrap();
    chown(&pins.path, NOBODY);
    let cfg = temp_file("noperf.toml", &nat_config(&pins.path, &[("be0", 0, 1)])).unwrap();
    let without: Vec<(&str, u32)> = CAPS.iter().copied().filter(|(n, _)| *n != "perfmon").collect();
    let wrapper = setpriv(&without);
    let mut cmd = lab.xlb.ns.cmd(&wrapper[0]);
    cmd.args(&wrapper[1..]).arg("run").arg("--config").arg(&cfg);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xlb ran without CAP_PERFMON:\n{err}");
    assert!(
        err.contains("no permission to load BPF programs") && err.contains("CAP_PERFMON"),
        "{err}"
    );
}
