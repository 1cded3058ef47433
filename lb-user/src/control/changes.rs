//! Runtime changes: to backends (state, weight), and to the config itself
//! through the config API (edits of the file, applied like a reload and
//! written back), one at a time or grouped in transactions, each bumping
//! the config version; a write made against a stale version is refused.

use std::{os::unix::fs::PermissionsExt, path::Path};

use serde_json::Value as Json;
use toml_edit::DocumentMut;

use super::{
    daemon::{Daemon, RunError},
    resources::{self, Edit},
    transaction::{Change, Transaction},
};
use crate::{
    config::{self, Config},
    model::{AdminState, BackendRef},
};

/// Writes `new` over the config file atomically (a temporary file renamed
/// over it, with the file's permissions), the text it had kept as
/// `FILE.bak`.
fn write_config(path: &Path, old: &str, new: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Both copies get the file's permissions first: it may hold
    // credentials (admin_auth, [stats] auth).
    let perms = std::fs::metadata(path)?.permissions();
    let write = |p: &Path, text: &str| -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(perms.mode() & 0o777)
            .open(p)?;
        std::fs::set_permissions(p, perms.clone())?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()
    };
    write(&path.with_file_name(format!("{name}.bak")), old)?;
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write(&tmp, new)?;
    std::fs::rename(&tmp, path)
}

impl Daemon {
    /// `xlb server set-state`: ready, drain (no new flows, existing ones
    /// stay) or maint (out: no traffic at all).
    pub fn set_state(&mut self, service: &str, backend: &str, state: AdminState) -> Result<(), RunError> {
        self.commit(&[Change::State {
            service: service.into(),
            backend: backend.into(),
            state,
        }])
        .map(drop)
    }

    /// `xlb server set-weight`: a new weight until the next reload (0
    /// drains, as in the file).
    pub fn set_weight(&mut self, service: &str, backend: &str, weight: u32) -> Result<(), RunError> {
        self.commit(&[Change::Weight {
            service: service.into(),
            backend: backend.into(),
            weight,
        }])
        .map(drop)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The config file's text to edit: the one running. A file edited by
    /// hand and not reloaded is refused rather than taken up unseen (or
    /// overwritten).
    fn running_text(&self) -> Result<String, RunError> {
        let text = std::fs::read_to_string(&self.path).map_err(|cause| RunError::File {
            path: self.path.clone(),
            cause,
        })?;
        if text != self.loaded {
            return Err(RunError::FileChanged(self.path.clone()));
        }
        Ok(text)
    }

    fn document(&self, text: &str) -> Result<DocumentMut, RunError> {
        text.parse::<DocumentMut>().map_err(|e| RunError::File {
            path: self.path.clone(),
            cause: std::io::Error::other(e.to_string()),
        })
    }

    /// The config API's view of a resource (of the running config's file).
    pub fn resource(&self, path: &[String]) -> Result<Json, RunError> {
        let mut doc = self.document(&self.loaded)?;
        Ok(resources::get(&mut doc, path)?)
    }

    /// `edits` applied to `text`, and the config that makes (what `xlb
    /// check` would say of it).
    fn edited(&self, text: &str, edits: &[Edit]) -> Result<(String, Config), RunError> {
        let mut doc = self.document(text)?;
        for e in edits {
            resources::apply(&mut doc, e)?;
        }
        let new = doc.to_string();
        let cfg = config::parse(&self.path, &new).map_err(|errs| {
            // The line numbers are of a text the client never saw: the
            // line itself names the key.
            let lines: Vec<&str> = new.lines().collect();
            RunError::Invalid(
                errs.into_iter()
                    .map(|mut e| {
                        if let Some(l) = e.line.checked_sub(1).and_then(|i| lines.get(i)) {
                            e.reason = format!("{} (at `{}`)", e.reason, l.trim());
                        }
                        e
                    })
                    .collect(),
            )
        })?;
        Ok((new, cfg))
    }

    /// Config API writes: applied together like a reload (other services
    /// undisturbed), then written back to the file. Nothing changes if
    /// any is refused. Returns the new version.
    pub fn edit_config(&mut self, edits: &[Edit]) -> Result<u64, RunError> {
        let old = self.running_text()?;
        let (new, cfg) = self.edited(&old, edits)?;
        self.apply_text(&old, &new, cfg, edits.len())
    }

    /// Runs `cfg` (made from `new`) and writes `new` over the file.
    fn apply_text(&mut self, old: &str, new: &str, cfg: Config, edits: usize) -> Result<u64, RunError> {
        // Unlike a reload, an API write keeps the weights set at runtime,
        // of the backends it leaves as they were (same address, same
        // weight in the file).
        let find = |cfg: &Config, (s, b): &BackendRef| {
            cfg.services
                .iter()
                .find(|x| &x.name == s)
                .and_then(|x| x.backends.iter().find(|y| &y.name == b))
                .map(|y| (y.address, y.weight))
        };
        let before = self.weights.clone();
        let kept = before
            .iter()
            .filter(|(r, _)| find(&cfg, r).is_some_and(|now| Some(now) == find(&self.cfg, r)))
            .map(|(r, w)| (r.clone(), *w))
            .collect();
        self.switch_to(cfg, kept)?;
        if let Err(cause) = write_config(&self.path, old, new) {
            // The running config must stay what the file says.
            let restored = config::parse(&self.path, old)
                .map_err(RunError::Invalid)
                .and_then(|was| self.switch_to(was, before));
            if let Err(e) = restored {
                tracing::error!("restoring the running config after a failed write: {e}");
                // What runs is `new`: writes wait for a reload.
                self.loaded = new.to_string();
            }
            return Err(RunError::File {
                path: self.path.clone(),
                cause,
            });
        }
        self.loaded = new.to_string();
        tracing::info!(version = self.version, edits, "config changed through the API");
        Ok(self.version)
    }

    /// Stages a config API write in transaction `id`, if it makes a valid
    /// config with the writes staged before it.
    pub fn stage_edit(&mut self, id: &str, edit: Edit) -> Result<(), RunError> {
        self.transactions.get(id)?.room(0)?;
        let base = match &self.transactions.get(id)?.staged {
            Some(t) => t.clone(),
            None => self.running_text()?,
        };
        let (new, _) = self.edited(&base, std::slice::from_ref(&edit))?;
        let bytes = edit.body.as_ref().map_or(0, |b| b.to_string().len());
        let t = self.transactions.get_mut(id)?;
        t.room(new.len() + t.edit_bytes + bytes)?;
        t.edit_bytes += bytes;
        t.edits.push(edit);
        t.staged = Some(new);
        Ok(())
    }

    /// Refuses a write made against another version than the running one.
    pub fn check_version(&self, given: Option<u64>) -> Result<(), RunError> {
        match given {
            Some(given) if given != self.version => Err(RunError::StaleVersion {
                given,
                current: self.version,
            }),
            _ => Ok(()),
        }
    }

    /// A change that names a backend that exists, with a valid value.
    fn validate(&self, c: &Change) -> Result<(), RunError> {
        let (service, backend) = c.target();
        self.check_backend(service, backend)?;
        match c {
            Change::Weight { weight, .. } if i64::from(*weight) > config::MAX_WEIGHT => Err(RunError::Weight(*weight)),
            _ => Ok(()),
        }
    }

    /// Applies `changes` together (all valid, or none applied) and returns
    /// the new config version.
    pub fn commit(&mut self, changes: &[Change]) -> Result<u64, RunError> {
        for c in changes {
            self.validate(c)?;
        }
        let (admin, weights) = (self.admin.clone(), self.weights.clone());
        for c in changes {
            let (service, backend) = c.target();
            let r = (service.to_string(), backend.to_string());
            match *c {
                Change::State { state, .. } => {
                    let before = self.admin.get(&r).copied().unwrap_or(AdminState::Ready);
                    match state {
                        AdminState::Ready => self.admin.remove(&r),
                        other => self.admin.insert(r, other),
                    };
                    tracing::warn!(
                        "backend {backend} of service {service}: {before:?} -> {state:?} (set by the operator)"
                    );
                }
                Change::Weight { weight, .. } => {
                    let before = self.effective_weight(&r);
                    self.weights.insert(r, weight);
                    tracing::warn!(
                        "backend {backend} of service {service}: weight {before} -> {weight} (set by the operator)"
                    );
                }
            }
        }
        // Weights shape the proxy's balancers: it is rebuilt only for them
        // (states it reads from `l7_states` as they change).
        let reweigh = changes.iter().any(|c| matches!(c, Change::Weight { .. }));
        let applied = self.apply_changes(reweigh);
        if let Err(e) = applied {
            // Back to what ran before.
            (self.admin, self.weights) = (admin, weights);
            let _ = self.apply_changes(reweigh);
            return Err(e);
        }
        self.version += 1;
        Ok(self.version)
    }

    fn apply_changes(&mut self, reweigh: bool) -> Result<(), RunError> {
        self.apply()?;
        if reweigh {
            self.proxy.apply(&self.effective())?;
        }
        Ok(())
    }

    /// Opens a transaction on `version` (default: the running one).
    pub fn open_transaction(&mut self, version: Option<u64>) -> Result<Transaction, RunError> {
        self.check_version(version)?;
        Ok(self.transactions.open(self.version))
    }

    pub fn transaction(&self, id: &str) -> Result<&Transaction, RunError> {
        Ok(self.transactions.get(id)?)
    }

    pub fn transactions(&self) -> Vec<Transaction> {
        self.transactions.list()
    }

    /// Adds a valid change to an open transaction.
    pub fn stage(&mut self, id: &str, change: Change) -> Result<(), RunError> {
        self.validate(&change)?;
        let t = self.transactions.get_mut(id)?;
        t.room(0)?;
        t.changes.push(change);
        Ok(())
    }

    /// Commits a transaction; one opened on an older version is dropped
    /// unapplied (someone else changed the config since).
    pub fn commit_transaction(&mut self, id: &str) -> Result<u64, RunError> {
        // A file edited by hand: refused, the transaction left as it is.
        if !self.transaction(id)?.edits.is_empty() {
            self.running_text()?;
        }
        let t = self.transactions.take(id)?;
        self.check_version(Some(t.version))?;
        if t.edits.is_empty() {
            return self.commit(&t.changes);
        }
        // Staged on the file as it was at this version: what it is now.
        let old = self.running_text()?;
        let new = t.staged.clone().unwrap_or_else(|| old.clone());
        let cfg = config::parse(&self.path, &new).map_err(RunError::Invalid)?;
        // The state and weight changes must name backends of the new
        // config, or nothing is applied.
        for c in &t.changes {
            self.validate(c)?;
            let (service, backend) = c.target();
            let known = cfg
                .services
                .iter()
                .any(|s| s.name == service && s.backends.iter().any(|b| b.name == backend));
            if !known {
                return Err(RunError::NoSuchBackend {
                    service: service.into(),
                    backend: backend.into(),
                });
            }
        }
        let version = self.apply_text(&old, &new, cfg, t.edits.len())?;
        if t.changes.is_empty() {
            return Ok(version);
        }
        // One version for the whole: the changes go with the edits'.
        self.commit(&t.changes)?;
        self.version = version;
        Ok(version)
    }

    pub fn delete_transaction(&mut self, id: &str) -> Result<(), RunError> {
        self.transactions.take(id)?;
        Ok(())
    }

    fn check_backend(&self, service: &str, backend: &str) -> Result<(), RunError> {
        let known = self
            .cfg
            .services
            .iter()
            .any(|s| s.name == service && s.backends.iter().any(|b| b.name == backend));
        if known {
            Ok(())
        } else {
            Err(RunError::NoSuchBackend {
                service: service.into(),
                backend: backend.into(),
            })
        }
    }
}
