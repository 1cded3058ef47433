//! VIP aliases: the service addresses on `vip_interface`, so the node
//! answers ARP/ND for them and the L7 proxy can serve them; and
//! `ip_nonlocal_bind`, so the proxy can bind a VIP keepalived has not moved
//! here yet. Only addresses xlb added are ever removed.

use std::{collections::BTreeSet, ffi::CString, net::IpAddr};

use super::netlink;
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("vip_interface {0:?} does not exist (see `ip link`)")]
    NoInterface(String),
    #[error("adding VIP {addr} to {iface}: {cause}")]
    Add {
        addr: IpAddr,
        iface: String,
        cause: std::io::Error,
    },
}

/// The VIP aliases xlb manages on one interface.
#[derive(Debug)]
pub struct VipAliases {
    iface: String,
    ifindex: u32,
    /// Addresses xlb added (and so will remove).
    added: BTreeSet<IpAddr>,
}

impl VipAliases {
    pub fn new(iface: &str) -> Result<Self, VipError> {
        let c = CString::new(iface).map_err(|_| VipError::NoInterface(iface.into()))?;
        // SAFETY: valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(VipError::NoInterface(iface.into()));
        }
        Ok(Self {
            iface: iface.into(),
            ifindex,
            added: BTreeSet::new(),
        })
    }

    /// Makes the interface hold every VIP of `cfg`; removes the ones xlb
    /// added that `cfg` no longer has.
    pub fn sync(&mut self, cfg: &Config) -> Result<(), VipError> {
        self.add_new(cfg)?;
        self.remove_stale(cfg);
        Ok(())
    }

    /// Adds the VIPs of `cfg` the interface lacks; returns the ones added,
    /// for [`VipAliases::take_back`] if the rest of a reload fails. On an
    /// error, what this call added is removed again.
    pub fn add_new(&mut self, cfg: &Config) -> Result<Vec<IpAddr>, VipError> {
        let wanted: BTreeSet<IpAddr> = cfg.services.iter().map(|s| s.vip).collect();
        let mut now = Vec::new();
        for addr in wanted {
            if self.added.contains(&addr) {
                continue;
            }
            match netlink::add_address(self.ifindex, addr) {
                Ok(true) => {
                    tracing::info!(%addr, iface = %self.iface, "VIP added");
                    self.added.insert(addr);
                    now.push(addr);
                }
                Ok(false) => tracing::info!(%addr, iface = %self.iface, "VIP already present; left to its owner"),
                Err(cause) => {
                    self.take_back(&now);
                    return Err(VipError::Add {
                        addr,
                        iface: self.iface.clone(),
                        cause,
                    });
                }
            }
        }
        Ok(now)
    }

    /// Removes the VIPs xlb added that `cfg` no longer has.
    pub fn remove_stale(&mut self, cfg: &Config) {
        let wanted: BTreeSet<IpAddr> = cfg.services.iter().map(|s| s.vip).collect();
        let stale: Vec<IpAddr> = self.added.difference(&wanted).copied().collect();
        for addr in stale {
            self.remove(addr);
        }
    }

    /// Removes `addrs` (added by [`VipAliases::add_new`] for a reload that
    /// failed).
    pub fn take_back(&mut self, addrs: &[IpAddr]) {
        for a in addrs {
            self.remove(*a);
        }
    }

    /// Takes addresses a previous run added as xlb's own.
    pub fn adopt(&mut self, addrs: &[IpAddr]) {
        self.added.extend(addrs.iter().copied());
    }

    /// The addresses xlb added.
    pub fn added(&self) -> Vec<IpAddr> {
        self.added.iter().copied().collect()
    }

    /// Leaves the addresses in place (the data plane keeps running; the
    /// next run adopts them).
    pub fn leave(&mut self) {
        self.added.clear();
    }

    fn remove(&mut self, addr: IpAddr) {
        match netlink::del_address(self.ifindex, addr) {
            Ok(()) => tracing::info!(%addr, iface = %self.iface, "VIP removed"),
            Err(e) => tracing::warn!(%addr, iface = %self.iface, "removing VIP failed: {e}"),
        }
        self.added.remove(&addr);
    }
}

impl Drop for VipAliases {
    /// Removes what xlb added, and only that.
    fn drop(&mut self) {
        let ours: Vec<IpAddr> = self.added.iter().copied().collect();
        for addr in ours {
            self.remove(addr);
        }
    }
}

/// Sets net.ipv4.ip_nonlocal_bind and net.ipv6.ip_nonlocal_bind to 1 (in
/// this network namespace). Left on at exit: other programs may rely on it.
pub fn enable_nonlocal_bind() {
    for path in [
        "/proc/sys/net/ipv4/ip_nonlocal_bind",
        "/proc/sys/net/ipv6/ip_nonlocal_bind",
    ] {
        match std::fs::write(path, "1") {
            Ok(()) => tracing::info!(path, "nonlocal bind enabled"),
            Err(e) => tracing::warn!(path, "cannot enable nonlocal bind: {e}"),
        }
    }
}
