//! The control plane: the daemon's state and reloads (`daemon`), runtime
//! changes and transactions (`changes`, `transaction`), the config API's
//! resources as edits of the file (`resources`), health checks (`health`), VIP
//! aliases over netlink (`vip`, `netlink`), the status it reports
//! (`status`) and seamless upgrades (`upgrade`).

pub mod changes;
pub mod daemon;
pub mod health;
pub mod netlink;
pub mod resources;
pub mod status;
pub mod transaction;
pub mod upgrade;
pub mod vip;
