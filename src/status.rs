//! The agent's status file (`<state_dir>/status.json`): written atomically by
//! the daemon when something changed (at most once a second), read by
//! `exportd status`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Counters kept by the daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Records processed (each version once).
    pub seen: u64,
    /// Records with every due copy written.
    pub exported: u64,
    /// Records not due.
    pub skipped: u64,
    /// Records that failed (rejected, refused, missing key).
    pub failed: u64,
    /// Records waiting for listed files.
    pub incomplete: u64,
    /// Bytes written to targets.
    pub bytes: u64,
}

/// One recent error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// The record's XML path.
    pub path: String,
    /// Error code.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// The status file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Agent id.
    pub agent_id: String,
    /// Process id of the daemon.
    pub pid: u32,
    /// `running` or `stopped`.
    pub state: String,
    /// When the daemon started (RFC 3339).
    pub started_at: String,
    /// Last update (RFC 3339).
    pub updated_at: String,
    /// Policy model version in force.
    pub model_version: u64,
    /// Records queued, in flight, waiting for files or for a retry.
    pub backlog: u64,
    /// Records waiting to be retried after a target failure.
    pub retrying: u64,
    /// Records waiting for a configuration change or a key.
    pub blocked: u64,
    /// Outcome counters since start.
    pub counts: Counts,
    /// Exported records by `policy/target`.
    pub exported_by_policy_target: BTreeMap<String, u64>,
    /// Bytes by `policy/target`.
    pub bytes_by_policy_target: BTreeMap<String, u64>,
    /// Skipped records by reason code.
    pub skipped_by_reason: BTreeMap<String, u64>,
    /// Errors by code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// The most recent errors, newest last.
    pub last_errors: Vec<LastError>,
    /// The last configuration bundle rejection, if any.
    #[serde(default)]
    pub last_rejection: Option<String>,
}

impl Status {
    /// Writes the file atomically.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::snapshot::write_atomic(&state_dir.join("status.json"), &bytes)
    }

    /// Reads the file, if any.
    pub fn read(state_dir: &Path) -> std::io::Result<Option<Status>> {
        match std::fs::read(state_dir.join("status.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
