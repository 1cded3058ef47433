//! A bpffs mounted for one test, outside /sys: `ip netns exec` remounts
//! /sys, so pins under /sys/fs/bpf would not outlive the process that made
//! them; a bpffs under /run is shared by every `ip netns exec` started
//! after it. Unmounted (with everything pinned in it) on drop.

use std::{ffi::CString, io, path::PathBuf};

#[derive(Debug)]
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    pub fn mount(name: &str) -> io::Result<Bpffs> {
        let path = PathBuf::from(format!("/run/xlbt{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        let target = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        let kind = CString::new("bpf").expect("static");
        // SAFETY: valid NUL-terminated strings, no mount data.
        if unsafe { libc::mount(kind.as_ptr(), target.as_ptr(), kind.as_ptr(), 0, std::ptr::null()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Bpffs { path })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid path; lazy unmount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
