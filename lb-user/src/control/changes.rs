//! Runtime changes to backends (state, weight), one at a time or grouped
//! in transactions, each bumping the config version; a write made against
//! a stale version is refused.

use super::{
    daemon::{Daemon, RunError},
    transaction::{Change, Transaction},
};
use crate::{config, model::AdminState};

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
        self.transactions.get_mut(id)?.changes.push(change);
        Ok(())
    }

    /// Commits a transaction; one opened on an older version is dropped
    /// unapplied (someone else changed the config since).
    pub fn commit_transaction(&mut self, id: &str) -> Result<u64, RunError> {
        let t = self.transactions.take(id)?;
        self.check_version(Some(t.version))?;
        self.commit(&t.changes)
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
