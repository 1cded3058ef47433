//! `cargo xtask`: toolchain bootstrap, eBPF build, running, tests.

mod bench_api;
mod bench_keepalive;
mod bench_l7;
mod bench_log;
mod bench_tls;
mod build;
mod fuzz;
mod ha;
mod lab_run;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (only what is missing).
    Setup,
    /// Build the XDP object and the `xlb` binary (release) with the object embedded.
    Build,
    /// Run xlb: with ARGS, `xlb run ARGS` on a real NIC; with none, the lab
    /// demo; `run ha`: the keepalived pair demo (a failover and a failback).
    Run {
        /// `ha`: the keepalived pair demo instead of the single-node lab.
        what: Option<String>,
        /// Lab demo only: stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Arguments for `xlb run`, e.g. `-- --config xlb.toml --iface eth0`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Formatting, clippy (user space and the eBPF crate), then every test.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check` and clippy -D warnings.
    Lint,
    /// Fuzzing: the HTTP/1 and config parsers (libFuzzer, corpora in
    /// fuzz/corpus), or `xdp`: random and mutated frames through the XDP
    /// program, each result checked by an independent oracle.
    Fuzz {
        /// http_request, http_response, chunked, config or xdp; none: every
        /// libFuzzer target in turn.
        target: Option<String>,
        /// Seconds per libFuzzer target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// xdp: frames to send.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Fold what earlier runs found into fuzz/corpus (minimized) instead
        /// of fuzzing.
        #[arg(long)]
        merge: bool,
    },
    /// Benchmarks, side by side with baselines; results in bench-results/.
    Bench {
        /// Which: l4 (the XDP data path), l7 (the HTTP proxy vs HAProxy and
        /// nginx, HTTPS vs HAProxy), tls (only the HTTPS part of l7) or ha
        /// (failover and failback of a keepalived pair).
        #[arg(default_value = "l4")]
        which: String,
        /// l7: seconds per load run.
        #[arg(long, default_value_t = 6)]
        duration: u64,
        /// l7: keep-alive connections of the load generator.
        #[arg(long, default_value_t = 50)]
        connections: u32,
        /// l7: idle connections opened to measure memory per connection.
        #[arg(long, default_value_t = 1000)]
        idle: usize,
        /// l7: rounds through the proxies, ha: failover drills per mode
        /// (medians are reported: more rounds of shorter runs make them
        /// robust to a noisy machine).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs a command, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// `cargo` for host builds, from the same toolchain that runs xtask.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Includes lb-ebpf compiled for the host: its code is linted on its own
    // target-independent terms; the bpf build itself runs with -D warnings too.
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The fuzz targets are a workspace of their own.
    run(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
    run(cargo()
        .args(["clippy", "--manifest-path", "fuzz/Cargo.toml", "--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", root().join("target/fuzz-lint")))
}

/// The XDP frame fuzzer: the `xdp_fuzz` test with `frames` frames.
fn fuzz_xdp(frames: u64) -> Result<()> {
    let obj = build::ebpf()?;
    let xlb = build::xlb(&obj, false)?;
    run(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "xlb-tests",
            "--test",
            "xdp_fuzz",
            "--",
            "--nocapture",
        ])
        .env("XLB_EBPF_OBJ", &obj)
        .env("XLB_BIN", &xlb)
        .env("XLB_FUZZ_FRAMES", frames.to_string()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build => {
            let obj = build::ebpf()?;
            build::xlb(&obj, true).map(drop)
        }
        Cmd::Lint => lint(),
        Cmd::Fuzz {
            target,
            seconds,
            frames,
            merge,
        } => {
            let targets: Vec<&str> = match target.as_deref() {
                Some("xdp") => return fuzz_xdp(frames),
                Some(t) if fuzz::TARGETS.contains(&t) => vec![t],
                Some(t) => bail!("no fuzz target {t:?} (xdp, {})", fuzz::TARGETS.join(", ")),
                None => fuzz::TARGETS.to_vec(),
            };
            if merge {
                fuzz::merge(&targets)
            } else {
                fuzz::libfuzzer(&targets, seconds)
            }
        }
        Cmd::Bench {
            which,
            duration,
            connections,
            idle,
            rounds,
        } => {
            let obj = build::ebpf()?;
            if which == "l7" || which == "tls" || which == "log" {
                let opts = bench_l7::Opts {
                    duration,
                    connections,
                    idle,
                    rounds: rounds.max(1),
                    tls_only: which == "tls",
                    log_only: which == "log",
                };
                return bench_l7::run(&build::xlb(&obj, true)?, &opts);
            }
            if which == "api" {
                return bench_api::run(&build::xlb(&obj, true)?);
            }
            if which == "ha" {
                return ha::bench(&build::xlb(&obj, true)?, rounds.max(1));
            }
            if which != "l4" {
                bail!("unknown benchmark {which:?} (available: l4, l7, tls, log, api, ha)");
            }
            let floor = obj.with_file_name("bench-floor");
            run(cargo()
                .args(["bench", "-p", "xlb-tests", "--bench", "l4"])
                .env("XLB_EBPF_OBJ", &obj)
                .env("XLB_BENCH_FLOOR_OBJ", &floor)
                .env("XLB_BIN", build::xlb(&obj, true)?))
        }
        Cmd::Run { what, duration, args } => {
            let obj = build::ebpf()?;
            let xlb = build::xlb(&obj, true)?;
            match what.as_deref() {
                Some("ha") => return ha::demo(&xlb),
                Some(w) => bail!("unknown demo {w:?} (ha, or none for the single-node lab)"),
                None => {}
            }
            if args.is_empty() {
                lab_run::demo(&xlb, duration)
            } else {
                let err = std::os::unix::process::CommandExt::exec(Command::new(&xlb).arg("run").args(&args));
                Err(err).with_context(|| format!("executing {}", xlb.display()))
            }
        }
        Cmd::Test { no_lint, args } => {
            let obj = build::ebpf()?;
            let xlb = build::xlb(&obj, false)?;
            if !no_lint {
                lint()?;
            }
            // Lab tests share the machine's CPUs and timing: one at a time.
            let mut cmd = cargo();
            cmd.args(["test", "--workspace"])
                .env("XLB_EBPF_OBJ", &obj)
                .env("XLB_BIN", &xlb)
                .arg("--")
                .arg("--test-threads=1")
                .args(&args);
            run(&mut cmd)
        }
    }
}
