//! `cargo xtask bench api`: how long the runtime config API takes to apply
//! a change (validated, applied like a reload, written back to the file),
//! on a small service and on one of 1,000 backends, and a transaction that
//! adds 1,000 backends (staging, then the commit). An http-only xlb on
//! loopback, driven with curl; results to bench-results/api.md.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench_l7::{median_of, Proc},
    root, setup,
};

const ADMIN: &str = "127.0.0.1:19911";
const SINGLE: usize = 20;

/// One curl request; its time in ms.
fn timed(method: &str, path: &str, body: Option<String>) -> Result<f64> {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_total}",
        "-X",
        method,
    ]);
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary", &b]);
    }
    c.arg(format!("http://{ADMIN}/api/v1{path}"));
    let out = String::from_utf8(c.output().context("curl")?.stdout)?;
    let (code, secs) = out.split_once(' ').context("curl's output")?;
    if !code.starts_with('2') {
        bail!("{method} {path}: {code}");
    }
    Ok(secs.parse::<f64>()? * 1000.0)
}

fn json(path: &str) -> Result<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{ADMIN}/api/v1{path}")])
        .output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `SINGLE` backends added one at a time to `service`: the median ms.
fn singles(service: &str, tag: &str) -> Result<f64> {
    let mut ms = Vec::new();
    for i in 0..SINGLE {
        let body = format!(r#"{{"name": "{tag}{i}", "address": "127.0.9.{}:80"}}"#, i + 1);
        ms.push(timed("POST", &format!("/services/{service}/backends"), Some(body))?);
    }
    Ok(median_of(ms))
}

pub fn run(xlb: &Path) -> Result<()> {
    setup::install_debs(&["curl"])?;
    let dir = std::env::temp_dir().join(format!("xlb-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("xlb.toml");
    std::fs::write(
        &cfg,
        format!(
            "# benchmark\n[global]\nadmin = \"{ADMIN}\"\nlog = []\n\n[[service]]\nname = \"small\"\nvip = \"127.0.0.1\"\n\
             port = 18180\nmode = \"http\"\n[service.health]\nkind = \"none\"\n[[service.backend]]\nname = \"s1\"\n\
             address = \"127.0.0.1:18181\"\n\n[[service]]\nname = \"big\"\nvip = \"127.0.0.1\"\nport = 18182\n\
             mode = \"http\"\n[service.health]\nkind = \"none\"\n"
        ),
    )?;
    let log = dir.join("xlb.log");
    let _xlb = Proc::spawn(
        "xlb",
        None,
        &[
            &xlb.display().to_string(),
            "run",
            "--config",
            &cfg.display().to_string(),
        ],
        &[("RUST_LOG", "warn")],
        &log,
    )?;
    let until = Instant::now() + Duration::from_secs(10);
    while json("/version").is_err() {
        if Instant::now() > until {
            bail!(
                "xlb did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let small = singles("small", "a")?;

    // 1,000 backends in one transaction, staged over one keep-alive curl.
    let v = json("/version")?["version"].as_u64().context("version")?;
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            &format!("http://{ADMIN}/api/v1/transactions?version={v}"),
        ])
        .output()?;
    let t: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = t["id"].as_str().context("transaction id")?.to_string();
    let mut c = Command::new("curl");
    for i in 0..1000 {
        if i > 0 {
            c.arg("--next");
        }
        let body = format!(
            r#"{{"name": "m{i}", "address": "127.1.{}.{}:80"}}"#,
            i / 250,
            1 + i % 250
        );
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            "-H",
            "content-type: application/json",
        ]);
        c.args(["--data-binary", &body]);
        c.arg(format!(
            "http://{ADMIN}/api/v1/services/big/backends?transaction_id={id}"
        ));
    }
    let started = Instant::now();
    let out = c.output()?;
    let staged = started.elapsed();
    let accepted = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l == "202")
        .count();
    if accepted != 1000 {
        bail!("{accepted} of 1000 backends staged");
    }
    let commit = timed("PUT", &format!("/transactions/{id}"), None)?;
    let n = json("/services/big/backends")?.as_array().map_or(0, Vec::len);
    if n != 1000 {
        bail!("the big service has {n} backends after the commit");
    }
    let big = singles("big", "b")?;
    drop(_xlb);

    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Runtime config API benchmark (`cargo xtask bench api`)\n\n\
         An http-only xlb (release build) on loopback, driven with curl. Each write is validated like \
         `xlb check` (the whole file), applied like a reload and written back to the file (toml_edit, \
         a temporary file renamed over it).\n\n| what | time |\n|---|---:|"
    );
    let _ = writeln!(
        o,
        "| one backend added to a service of 1-20 backends (median of {SINGLE}) | {small:.1} ms |"
    );
    let _ = writeln!(
        o,
        "| 1,000 backends staged in one transaction (1,000 requests, each checked with those before it) | {:.2} s ({:.1} ms each) |",
        staged.as_secs_f64(),
        staged.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "| that transaction committed (one reload, one file write) | {commit:.1} ms |"
    );
    let _ = writeln!(
        o,
        "| one backend added to the service of 1,000 backends (median of {SINGLE}) | {big:.1} ms |"
    );
    let out = root().join("bench-results").join("api.md");
    std::fs::write(&out, &o)?;
    print!("{o}");
    eprintln!("written to {}", out.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
