//! Network namespaces made with iproute2, and running code inside them.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    process::{Command, Output},
    thread,
};

/// A named network namespace (`ip netns add`), deleted on drop; or the
/// namespace this process runs in ([`Netns::current`]).
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// The process's own namespace: nothing to enter, create or delete.
    current: bool,
}

fn check(what: &str, out: io::Result<Output>) -> io::Result<String> {
    let out = out?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{what}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS` in the root namespace.
pub fn ip(args: &[&str]) -> io::Result<String> {
    check(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args).output(),
    )
}

impl Netns {
    pub fn create(name: &str) -> io::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
            current: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace this process runs in, for tests that need nothing but
    /// loopback when they cannot make namespaces (not root): commands run
    /// as they are and sockets are this process's own.
    pub fn current() -> Self {
        Self {
            name: format!("self{}", std::process::id()),
            current: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        if self.current {
            return ip(args);
        }
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if self.current {
            return Command::new(program);
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a command inside the namespace and returns its stdout, or an
    /// error with its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> io::Result<String> {
        check(
            &format!("{program} {} (in {})", args.join(" "), self.name),
            self.cmd(program).args(args).output(),
        )
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
    }

    fn enter_current_thread(&self) -> io::Result<()> {
        if self.current {
            return Ok(());
        }
        let f = File::open(format!("/run/netns/{}", self.name))?;
        // SAFETY: setns on a valid namespace fd affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    /// Sockets `f` creates stay in the namespace and can be used anywhere.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        thread::scope(|s| {
            s.spawn(|| {
                self.enter_current_thread()?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("thread in namespace panicked"))?
        })
    }

    /// Spawns a long-lived thread inside the namespace; threads it spawns
    /// inherit the namespace.
    pub fn spawn<F>(&self, f: F) -> io::Result<thread::JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        if self.current {
            return Ok(thread::spawn(f));
        }
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(path)?;
        Ok(thread::spawn(move || {
            // SAFETY: as in enter_current_thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns: {}", io::Error::last_os_error());
            }
            drop(file);
            f()
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.current {
            return;
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}
