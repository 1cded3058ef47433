//! `cargo xtask fuzz`: the coverage-guided fuzz targets of `fuzz/`
//! (libFuzzer through libfuzzer-sys, on the machine's stable toolchain:
//! SanitizerCoverage is switched on with codegen flags, no nightly
//! needed), and the XDP program's frame fuzzer (`xdp`, a test in the tests
//! crate that drives BPF_PROG_TEST_RUN).

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{root, run};

pub const TARGETS: [&str; 5] = ["http_request", "http_response", "chunked", "proxy_header", "config"];

/// The flags cargo-fuzz uses for libFuzzer's coverage feedback, without a
/// sanitizer (the code under test is safe Rust: panics, overflows and
/// debug assertions are what it finds).
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
     -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
     -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host")
}

/// Builds the targets; returns the directory of the binaries.
fn build() -> Result<std::path::PathBuf> {
    let triple = host_triple()?;
    let dir = root().join("target/fuzz");
    // An explicit --target keeps the flags off build scripts and proc
    // macros, which must not be instrumented.
    run(crate::cargo()
        .args([
            "build",
            "--release",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "--bins",
            "--target",
            &triple,
        ])
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("CARGO_TARGET_DIR", &dir))?;
    Ok(dir.join(triple).join("release"))
}

/// Runs `targets` for `seconds` each; fails on the first crash, with the
/// input that made it in target/fuzz/artifacts/TARGET/.
pub fn libfuzzer(targets: &[&str], seconds: u64) -> Result<()> {
    let bin = build()?;
    let work = root().join("target/fuzz/work");
    for t in targets {
        let (corpus, seeds) = (work.join("corpus").join(t), root().join("fuzz/corpus").join(t));
        let artifacts = work.join("artifacts").join(t);
        for d in [&corpus, &seeds, &artifacts] {
            fs::create_dir_all(d)?;
        }
        let log = work.join(format!("{t}.log"));
        let st = Command::new(bin.join(t))
            // New inputs go to the first directory; the committed seeds
            // stay as they are.
            .arg(&corpus)
            .arg(&seeds)
            .arg(format!("-max_total_time={seconds}"))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-max_len=16384")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .stdout(fs::File::create(work.join(format!("{t}.out")))?)
            .stderr(fs::File::create(&log)?)
            .status()
            .with_context(|| format!("starting fuzz target {t}"))?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let stat = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| "?".into())
        };
        let line = format!(
            "{t}: {} executions in {}s, corpus {} inputs ({} seeds), {}",
            stat("number_of_executed_units"),
            seconds,
            count(&corpus) + count(&seeds),
            count(&seeds),
            if st.success() { "no crash" } else { "CRASH" }
        );
        println!("fuzz {line}");
        if !st.success() {
            // From the panic (or libFuzzer's own report) on.
            let lines: Vec<&str> = text.lines().collect();
            let from = lines
                .iter()
                .position(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
                .unwrap_or(lines.len().saturating_sub(40));
            let report = lines[from..lines.len().min(from + 40)].join("\n");
            bail!(
                "fuzz target {t} failed ({st}); input in {}:\n{report}",
                artifacts.display()
            );
        }
    }
    Ok(())
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Minimizes what the last runs found into the committed seed corpora
/// (`cargo xtask fuzz --merge`): libFuzzer keeps the inputs that add
/// coverage.
pub fn merge(targets: &[&str]) -> Result<()> {
    let bin = build()?;
    let work = root().join("target/fuzz/work");
    for t in targets {
        let (corpus, seeds) = (work.join("corpus").join(t), root().join("fuzz/corpus").join(t));
        fs::create_dir_all(&corpus)?;
        fs::create_dir_all(&seeds)?;
        run(Command::new(bin.join(t)).arg("-merge=1").arg(&seeds).arg(&corpus))?;
    }
    Ok(())
}
