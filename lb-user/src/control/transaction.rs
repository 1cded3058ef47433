//! Data-plane-API style writes: runtime changes grouped into a transaction
//! that is committed at once, against the config version it was opened on
//! (HAProxy Data Plane API: a stale version is refused with 409).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::AdminState;

/// One runtime change to a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "set", rename_all = "lowercase")]
pub enum Change {
    State {
        service: String,
        backend: String,
        state: AdminState,
    },
    Weight {
        service: String,
        backend: String,
        weight: u32,
    },
}

impl Change {
    pub fn target(&self) -> (&str, &str) {
        match self {
            Change::State { service, backend, .. } | Change::Weight { service, backend, .. } => (service, backend),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no open transaction {0:?} (committed, deleted, or from an earlier run)")]
pub struct NoSuchTransaction(pub String);

/// Writes one transaction holds at most, and the size its staged config
/// and writes may reach together: a client that stages without end must
/// not grow the daemon without bound (each staged write is also checked
/// on the whole text).
pub const MAX_WRITES: usize = 10_000;
pub const MAX_STAGED_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
#[error("transaction {0:?} is full ({MAX_WRITES} writes, or {mib} MiB staged): commit it and open another", mib = MAX_STAGED_BYTES >> 20)]
pub struct TransactionFull(pub String);

/// Changes staged on top of config version `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub version: u64,
    pub changes: Vec<Change>,
    /// Writes of the config API (`/api/v1/services/...`), in order.
    #[serde(default)]
    pub edits: Vec<super::resources::Edit>,
    /// The config file's text with `edits` applied (each was checked on
    /// it), so that staging the next one does not replay them all.
    #[serde(skip)]
    pub staged: Option<String>,
    /// The size of the writes' bodies.
    #[serde(skip)]
    pub edit_bytes: usize,
}

/// The open transactions of a daemon, by sequence number (oldest first).
/// Ids carry the daemon's start time, so an id from an earlier run never
/// names a transaction of this one.
pub struct Transactions {
    epoch: u64,
    next: u64,
    open: BTreeMap<u64, Transaction>,
}

/// Open transactions kept at most; the oldest goes first (clients that open
/// and never commit or delete must not grow the daemon without bound).
const MAX_OPEN: usize = 64;

impl Default for Transactions {
    fn default() -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Transactions {
            epoch,
            next: 1,
            open: BTreeMap::new(),
        }
    }
}

impl Transaction {
    /// Refuses one more write when the transaction is full; `bytes`: what
    /// it would then hold (staged text and bodies).
    pub fn room(&self, bytes: usize) -> Result<(), TransactionFull> {
        if self.changes.len() + self.edits.len() >= MAX_WRITES || bytes > MAX_STAGED_BYTES {
            return Err(TransactionFull(self.id.clone()));
        }
        Ok(())
    }
}

impl Transactions {
    pub fn open(&mut self, version: u64) -> Transaction {
        if self.open.len() >= MAX_OPEN {
            self.open.pop_first();
        }
        let t = Transaction {
            id: format!("{:x}-{}", self.epoch, self.next),
            version,
            changes: Vec::new(),
            edits: Vec::new(),
            staged: None,
            edit_bytes: 0,
        };
        self.open.insert(self.next, t.clone());
        self.next += 1;
        t
    }

    /// The sequence number `id` names in this run.
    fn seq(&self, id: &str) -> Result<u64, NoSuchTransaction> {
        id.strip_prefix(&format!("{:x}-", self.epoch))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| NoSuchTransaction(id.into()))
    }

    pub fn get(&self, id: &str) -> Result<&Transaction, NoSuchTransaction> {
        self.open
            .get(&self.seq(id)?)
            .ok_or_else(|| NoSuchTransaction(id.into()))
    }

    pub fn get_mut(&mut self, id: &str) -> Result<&mut Transaction, NoSuchTransaction> {
        let n = self.seq(id)?;
        self.open.get_mut(&n).ok_or_else(|| NoSuchTransaction(id.into()))
    }

    pub fn take(&mut self, id: &str) -> Result<Transaction, NoSuchTransaction> {
        let n = self.seq(id)?;
        self.open.remove(&n).ok_or_else(|| NoSuchTransaction(id.into()))
    }

    pub fn list(&self) -> Vec<Transaction> {
        self.open.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_the_oldest_goes_when_full() {
        let mut t = Transactions::default();
        let first = t.open(1).id;
        let ids: Vec<String> = (0..MAX_OPEN).map(|_| t.open(1).id).collect();
        assert!(
            t.get(&first).is_err(),
            "oldest dropped once {MAX_OPEN} more were opened"
        );
        assert_eq!(t.list().len(), MAX_OPEN);
        assert_eq!(t.list().iter().map(|x| x.id.clone()).collect::<Vec<_>>(), ids);
        assert!(t.take(&ids[3]).is_ok() && t.get(&ids[3]).is_err());
        let other_run = format!("0-{}", ids[4].rsplit('-').next().unwrap());
        assert!(t.get(&other_run).is_err() && t.get(&ids[4]).is_ok());
    }

    #[test]
    fn a_transaction_takes_writes_up_to_its_limits() {
        let mut t = Transactions::default().open(1);
        let c = Change::Weight {
            service: "web".into(),
            backend: "a".into(),
            weight: 1,
        };
        assert!(t.room(1).is_ok());
        t.changes = vec![c; MAX_WRITES - 1];
        assert!(t.room(MAX_STAGED_BYTES).is_ok());
        assert!(t.room(MAX_STAGED_BYTES + 1).is_err(), "too large");
        t.changes.push(t.changes[0].clone());
        assert!(t.room(0).is_err(), "full at {MAX_WRITES} writes");
    }

    #[test]
    fn changes_serialize_as_tagged_objects() {
        let c = Change::Weight {
            service: "web".into(),
            backend: "a".into(),
            weight: 7,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, r#"{"set":"weight","service":"web","backend":"a","weight":7}"#);
        assert_eq!(serde_json::from_str::<Change>(&j).unwrap(), c);
    }
}
