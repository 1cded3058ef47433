//! The data path's rare events (`xlb debug datapath on|off`): the XDP
//! program writes an aya-log record for a packet it drops for want of a
//! backend, route, neighbour or snat port, or passes as malformed, while
//! its `DEBUG` switch is on. The records go to xlb's log as warnings. The
//! reader starts the first time the switch goes on.

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use aya_log::EbpfLogger;
use lb_common::maps;
use tokio::{
    io::{unix::AsyncFd, Interest},
    task::JoinHandle,
};

use super::bpf::{map_err, map_of, DataPlaneError};

/// Reads the records into the log until dropped.
pub struct Reader(JoinHandle<()>);

impl Reader {
    fn start(ebpf: &mut Ebpf) -> Result<Reader, DataPlaneError> {
        let logger = EbpfLogger::init(ebpf).map_err(DataPlaneError::Events)?;
        // SAFETY: the ring buffer's fd is the logger's own, open for as long
        // as the logger lives inside the AsyncFd.
        let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(|e| DataPlaneError::EventsFd(std::io::Error::other(e.to_string())))?;
        Ok(Reader(tokio::spawn(async move {
            while let Ok(mut ready) = fd.readable_mut().await {
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
        })))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns the program's records on or off; on, makes sure they are read.
pub fn switch(ebpf: &mut Ebpf, reader: &mut Option<Reader>, on: bool) -> Result<(), DataPlaneError> {
    if on && reader.is_none() {
        *reader = Some(Reader::start(ebpf)?);
    }
    let mut flag: Array<&mut MapData, u32> = map_of(ebpf, maps::DEBUG)?;
    flag.set(0, u32::from(on), 0).map_err(|e| map_err(maps::DEBUG, &e))
}
