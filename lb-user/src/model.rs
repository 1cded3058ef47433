//! Small types every part of xlb shares (a leaf: it imports nothing of
//! xlb's): how a backend is named across reloads and the states that
//! health checks and the operator give it.

use std::collections::HashSet;

/// (service name, backend name): how a backend is known across reloads.
pub type BackendRef = (String, String);

/// Backend state beyond the config: what health checks and the operator
/// said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStates {
    /// Out (failed checks, or `maint`): no traffic; their flows move.
    pub out: HashSet<BackendRef>,
    /// `drain`: no new flows; existing flows stay (like weight 0).
    pub drained: HashSet<BackendRef>,
}

impl BackendStates {
    pub fn takes_new_flows(&self, r: &BackendRef) -> bool {
        !self.out.contains(r) && !self.drained.contains(r)
    }
}

/// What the operator set with `xlb server set-state` (HAProxy's
/// ready/drain/maint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl std::str::FromStr for AdminState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maint" => Ok(AdminState::Maint),
            _ => Err(format!("state {s:?} is not ready, drain or maint")),
        }
    }
}
