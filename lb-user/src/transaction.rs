//! Data-plane-API style writes: runtime changes grouped into a transaction
//! that is committed at once, against the config version it was opened on
//! (HAProxy Data Plane API: a stale version is refused with 409).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::daemon::AdminState;

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

/// Changes staged on top of config version `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub version: u64,
    pub changes: Vec<Change>,
}

/// The open transactions of a daemon. Ids carry the daemon's start time, so
/// an id from an earlier run never names a transaction of this one.
pub struct Transactions {
    epoch: u64,
    next: u64,
    open: BTreeMap<String, Transaction>,
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

impl Transactions {
    pub fn open(&mut self, version: u64) -> Transaction {
        if self.open.len() >= MAX_OPEN {
            // Ids sort by creation within a run: the first is the oldest.
            let oldest = self.open.iter().min_by_key(|(_, t)| seq(&t.id)).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.open.remove(&k);
            }
        }
        let t = Transaction {
            id: format!("{:x}-{}", self.epoch, self.next),
            version,
            changes: Vec::new(),
        };
        self.next += 1;
        self.open.insert(t.id.clone(), t.clone());
        t
    }

    pub fn get(&self, id: &str) -> Option<&Transaction> {
        self.open.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Transaction> {
        self.open.get_mut(id)
    }

    pub fn take(&mut self, id: &str) -> Option<Transaction> {
        self.open.remove(id)
    }

    pub fn list(&self) -> Vec<Transaction> {
        let mut v: Vec<Transaction> = self.open.values().cloned().collect();
        v.sort_by_key(|t| seq(&t.id));
        v
    }
}

fn seq(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
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
            t.get(&first).is_none(),
            "oldest dropped once {MAX_OPEN} more were opened"
        );
        assert_eq!(t.list().len(), MAX_OPEN);
        assert_eq!(t.list().iter().map(|x| x.id.clone()).collect::<Vec<_>>(), ids);
        assert!(t.take(&ids[3]).is_some() && t.get(&ids[3]).is_none());
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
