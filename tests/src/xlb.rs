//! Running the real `xlb` binary inside a lab namespace.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::Netns;

/// The `xlb` binary under test: `XLB_BIN`, else the workspace's debug or
/// release build (`cargo xtask test` builds it first).
pub fn xlb_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return PathBuf::from(p);
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let candidates = [target.join("debug/xlb"), target.join("release/xlb")];
    candidates
        .iter()
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .cloned()
        .unwrap_or_else(|| panic!("no xlb binary: run `cargo xtask test` (or set XLB_BIN)"))
}

/// Runs `xlb ARGS` to completion inside `ns`.
pub fn xlb_once(ns: &Netns, args: &[&str]) -> io::Result<Output> {
    ns.cmd(xlb_binary()).args(args).env("RUST_LOG", "info").output()
}

/// A running `xlb run`, killed on drop. Its log goes to a file that
/// [`XlbProcess::log`] reads (and that failures print).
#[derive(Debug)]
pub struct XlbProcess {
    child: Option<Child>,
    pub log_path: PathBuf,
    ns_name: String,
}

impl XlbProcess {
    /// Starts `xlb run --config CONFIG EXTRA..` in `ns` and waits until its
    /// admin API answers (default admin address).
    pub fn start(ns: &Netns, config: &Path, extra: &[&str]) -> io::Result<XlbProcess> {
        XlbProcess::start_with_admin(ns, config, extra, "127.0.0.1:9900")
    }

    /// As [`XlbProcess::start`], for a config whose admin address is `admin`.
    pub fn start_with_admin(ns: &Netns, config: &Path, extra: &[&str], admin: &str) -> io::Result<XlbProcess> {
        XlbProcess::start_launched(ns, &[], config, extra, admin)
    }

    /// As [`XlbProcess::start_with_admin`], started by `launcher`: a
    /// command that execs its arguments and ends with the xlb binary to run
    /// (such as `setpriv ... -- /path/xlb`); empty: the binary itself.
    pub fn start_launched(
        ns: &Netns,
        launcher: &[&str],
        config: &Path,
        extra: &[&str],
        admin: &str,
    ) -> io::Result<XlbProcess> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let log_path = std::env::temp_dir().join(format!(
            "{}-xlb-{}-{}-{}.log",
            ns.name(),
            std::process::id(),
            admin.replace([':', '.'], "_"),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = ns.cmd(program);
                c.args(args);
                c
            }
            None => ns.cmd(xlb_binary()),
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut p = XlbProcess {
            child: Some(child),
            log_path,
            ns_name: ns.name().to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = p.child.as_mut().expect("child").try_wait()? {
                return Err(io::Error::other(format!("xlb exited at start ({st}):\n{}", p.log())));
            }
            // Up: it answers, if only to say that credentials are needed.
            let answered = |o: &Output| {
                o.status.success() || String::from_utf8_lossy(&o.stderr).contains("authentication required")
            };
            if xlb_once(ns, &["status", "--json", "--admin", admin]).is_ok_and(|o| answered(&o)) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("xlb did not become ready:\n{}", p.log())));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal to the daemon (the `ip netns exec` wrapper execs it, so
    /// the child pid is xlb's own).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits up to `within` for it to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.as_mut()?.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait (at most 10 s) for it to exit.
    pub fn stop(mut self) -> io::Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(io::Error::other(format!("xlb in {} ignored SIGTERM", self.ns_name)));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for XlbProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes `contents` to a fresh file in the temp dir (unique per process
/// and name) and returns its path.
pub fn temp_file(name: &str, contents: &str) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xlb-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(name);
    std::fs::write(&p, contents)?;
    Ok(p)
}
