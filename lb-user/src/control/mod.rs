//! The control plane: the daemon's state and reloads (`daemon`), runtime
//! changes and transactions (`changes`, `transaction`), health checks (`health`), VIP
//! aliases over netlink (`vip`, `netlink`) and the status it reports
//! (`status`).

pub mod changes;
pub mod daemon;
pub mod health;
pub mod netlink;
pub mod status;
pub mod transaction;
pub mod vip;
