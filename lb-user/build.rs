//! Embeds the XDP object built by `cargo xtask build` into the `xlb` binary.
//!
//! The object is taken from `XLB_EBPF_OBJ`, else from where xtask writes it.
//! When neither exists (plain `cargo check`/`clippy` without the eBPF
//! toolchain) an empty stub is embedded and `xlb run` says how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=XLB_EBPF_OBJ");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/ebpf/bpfel-unknown-none/release/lb-ebpf");
    let src = env::var_os("XLB_EBPF_OBJ").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("xlb.bpf.o");
    match fs::read(&src) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => fs::write(&out, []).unwrap(),
    }
}
