//! Where xlb keeps its BPF objects between runs: `PIN_DIR/IFACE/` on a
//! bpffs holds the maps, the XDP link and a state map (the map manager's
//! bookkeeping as JSON), so a new `xlb run` adopts a running data plane and
//! swaps its program in atomically: flows and affinity survive an upgrade.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Name of the pinned link and of the state map inside the directory.
const LINK: &str = "link";
const STATE: &str = "XLB_STATE";
/// The state map: chunks of JSON, the first 4 bytes of chunk 0 its length.
const CHUNK: usize = 4096;
const CHUNKS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin directory {path}: {cause}")]
    Dir { path: PathBuf, cause: io::Error },
    #[error("state map: {0}")]
    State(String),
}

impl PinError {
    /// The kernel refused for lack of privilege (mounting a bpffs).
    pub fn is_permission(&self) -> bool {
        matches!(self, PinError::Dir { cause, .. } if cause.raw_os_error() == Some(libc::EPERM))
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct for a valid path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == BPF_FS_MAGIC
    }
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path)?;
    let target = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let kind = CString::new("bpf").expect("static");
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe { libc::mount(kind.as_ptr(), target.as_ptr(), kind.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(path = %path.display(), "mounted a bpffs");
    Ok(())
}

/// The pin directory of one interface.
#[derive(Debug, Clone)]
pub struct PinDir {
    pub dir: PathBuf,
}

impl PinDir {
    /// Makes sure `base` is (on) a bpffs, mounting one if needed (on
    /// /sys/fs/bpf when base is below it and nothing is mounted there, else
    /// on base itself), and creates `base/iface`.
    pub fn prepare(base: &Path, iface: &str) -> Result<PinDir, PinError> {
        let err = |cause| PinError::Dir {
            path: base.to_path_buf(),
            cause,
        };
        let sys = Path::new("/sys/fs/bpf");
        if base.starts_with(sys) && !is_bpffs(sys) {
            mount_bpffs(sys).map_err(err)?;
        }
        std::fs::create_dir_all(base).map_err(err)?;
        if !is_bpffs(base) {
            mount_bpffs(base).map_err(err)?;
        }
        let dir = base.join(iface);
        std::fs::create_dir_all(&dir).map_err(|cause| PinError::Dir {
            path: dir.clone(),
            cause,
        })?;
        Ok(PinDir { dir })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn link(&self) -> PathBuf {
        self.dir.join(LINK)
    }

    /// Removes everything pinned here (maps are freed once no program or
    /// process holds them; the link detaches when its last fd closes).
    pub fn clear(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// The saved state, if a previous run left one.
    pub fn load_state(&self) -> Option<String> {
        let map = MapData::from_pin(self.map(STATE)).ok()?;
        let arr: Array<MapData, [u8; CHUNK]> = Array::try_from(aya::maps::Map::from_map_data(map).ok()?).ok()?;
        let first = arr.get(&0, 0).ok()?;
        let len = u32::from_ne_bytes([first[0], first[1], first[2], first[3]]) as usize;
        let mut bytes = Vec::with_capacity(len + 4);
        for i in 0..(len + 4).div_ceil(CHUNK) as u32 {
            bytes.extend_from_slice(&arr.get(&i, 0).ok()?);
        }
        String::from_utf8(bytes.get(4..4 + len)?.to_vec()).ok()
    }

    /// Saves `json` to the state map (created and pinned on first use).
    pub fn save_state(&self, json: &str) -> Result<(), PinError> {
        let e = |x: &dyn std::fmt::Display| PinError::State(x.to_string());
        let mut data = (json.len() as u32).to_ne_bytes().to_vec();
        data.extend_from_slice(json.as_bytes());
        if data.len() > CHUNK * CHUNKS as usize {
            return Err(PinError::State(format!("{} bytes is more than it holds", data.len())));
        }
        let mut arr: Array<MapData, [u8; CHUNK]> = match MapData::from_pin(self.map(STATE)) {
            Ok(m) => Array::try_from(aya::maps::Map::from_map_data(m).map_err(|x| e(&x))?).map_err(|x| e(&x))?,
            Err(_) => {
                let a = Array::<MapData, [u8; CHUNK]>::create(CHUNKS, 0).map_err(|x| e(&x))?;
                a.pin(self.map(STATE)).map_err(|x| e(&x))?;
                let m = MapData::from_pin(self.map(STATE)).map_err(|x| e(&x))?;
                Array::try_from(aya::maps::Map::from_map_data(m).map_err(|x| e(&x))?).map_err(|x| e(&x))?
            }
        };
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            let mut c = [0u8; CHUNK];
            c[..chunk.len()].copy_from_slice(chunk);
            arr.set(i as u32, c, 0).map_err(|x| e(&x))?;
        }
        Ok(())
    }
}
