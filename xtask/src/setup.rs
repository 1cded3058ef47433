//! Installs what the build and the tests need, idempotently, and only what
//! is missing. On a machine it cannot install on, it says exactly what to do.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Result};

use crate::run;

/// Debian packages of the verified eBPF toolchain (docs/building.md):
/// rustc 1.96 on LLVM 22 with its library source, and LLVM 22 for bpf-linker.
const TOOLCHAIN_PKGS: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
];
/// What the lab and the tests run: iproute2 (ip netns), ethtool (offloads),
/// util-linux (setpriv, for the no-capability test), procps (sysctl),
/// iputils-ping (neighbour warm-up in the benchmark), keepalived (the HA
/// pair), curl (keepalived's track script asks /healthz with it; the
/// config API tests script it), bird2 (the BGP example is parse-checked),
/// haproxy (the PROXY protocol tests talk to the real one on both sides;
/// halog reads the access logs), chromium (the stats page in a browser).
const LAB_PKGS: &[&str] = &[
    "iproute2",
    "ethtool",
    "util-linux",
    "procps",
    "iputils-ping",
    "keepalived",
    "curl",
    "bird2",
    "haproxy",
    "chromium",
];

pub const DEBIAN_TOOLCHAIN: &str = "debian-web";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// How the eBPF crate gets built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// The usual aya route: rustup nightly with rust-src.
    Nightly,
    /// Debian's rustc-web + rust-web-src, linked into rustup as `debian-web`.
    DebianWeb,
}

impl Toolchain {
    pub fn rustup_name(&self) -> &'static str {
        match self {
            Toolchain::Nightly => "nightly",
            Toolchain::DebianWeb => DEBIAN_TOOLCHAIN,
        }
    }
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin")
}

/// bpf-linker on PATH or in cargo's bin directory.
pub fn bpf_linker() -> Option<PathBuf> {
    if ok(Command::new("bpf-linker").arg("--version")) {
        return Some(PathBuf::from("bpf-linker"));
    }
    let p = cargo_bin().join("bpf-linker");
    p.exists().then_some(p)
}

/// A toolchain whose compiler has its library source next to it.
fn has_rust_src(toolchain: &str) -> bool {
    output(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .args(["--print", "sysroot"]),
    )
    .is_some_and(|sysroot| Path::new(&sysroot).join("lib/rustlib/src/rust/library/core").exists())
}

/// The eBPF toolchain present on this machine, if a complete one is.
pub fn detect() -> Option<Toolchain> {
    bpf_linker()?;
    if has_rust_src("nightly") {
        Some(Toolchain::Nightly)
    } else if has_rust_src(DEBIAN_TOOLCHAIN) {
        Some(Toolchain::DebianWeb)
    } else {
        None
    }
}

fn missing_debs(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.ends_with("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn manual_instructions(why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{why}\n\nInstall by hand, then run the command again:\n\
         - on Debian 12 (as root):\n    apt-get update\n    apt-get install -y {} {}\n    \
         rustup toolchain link {DEBIAN_TOOLCHAIN} /usr\n    \
         LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22\n\
         - elsewhere (the usual aya route):\n    rustup toolchain install nightly --component rust-src\n    \
         cargo install bpf-linker\n    and install iproute2 and ethtool with your package manager",
        TOOLCHAIN_PKGS.join(" "),
        LAB_PKGS.join(" ")
    )
}

/// Installs those of `pkgs` that are missing (Debian, as root).
pub fn install_debs(pkgs: &[&str]) -> Result<()> {
    let missing = missing_debs(pkgs);
    if missing.is_empty() {
        return Ok(());
    }
    let debian = Path::new("/etc/debian_version").exists() && ok(Command::new("apt-get").arg("--version"));
    if !debian {
        return Err(manual_instructions("This is not a Debian machine with apt-get."));
    }
    if !is_root() {
        return Err(manual_instructions(&format!(
            "Missing packages {missing:?} and not root."
        )));
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs everything that is missing.
pub fn setup() -> Result<()> {
    let have_toolchain = detect();
    let mut want: Vec<&str> = LAB_PKGS.to_vec();
    if have_toolchain.is_none() {
        want.extend_from_slice(TOOLCHAIN_PKGS);
    }
    install_debs(&want)?;
    if have_toolchain.is_none() {
        if !has_rust_src(DEBIAN_TOOLCHAIN) && Path::new("/usr/lib/rustlib/src/rust/library/core").exists() {
            eprintln!("xtask setup: registering Debian's rustc-web with rustup as `{DEBIAN_TOOLCHAIN}`");
            run(Command::new("rustup").args(["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"]))?;
        }
        if bpf_linker().is_none() {
            eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
            run(Command::new("cargo")
                .args(["install", "--locked", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .env_remove("RUSTUP_TOOLCHAIN"))?;
        }
    }
    match detect() {
        Some(t) => {
            eprintln!(
                "xtask setup: eBPF toolchain ready ({}); lab tools present",
                t.rustup_name()
            );
            Ok(())
        }
        None => bail!(manual_instructions(
            "Setup finished but no complete eBPF toolchain was found."
        )),
    }
}

/// The toolchain to build with, running setup first when one is missing.
pub fn ensure() -> Result<Toolchain> {
    if let Some(t) = detect() {
        if missing_debs(LAB_PKGS).is_empty() || !Path::new("/etc/debian_version").exists() {
            return Ok(t);
        }
    }
    setup()?;
    detect().ok_or_else(|| manual_instructions("No eBPF toolchain."))
}
