//! The agent's status file (`<state_dir>/status.json`) and its list of
//! pending records (`<state_dir>/pending.json`): written atomically by the
//! daemon when something changed (at most once a second), read by
//! `exportd status [--pending]` and `exportd top`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Counters kept by the daemon. They say what is true now: a record that
/// failed and was exported later counts as exported, not failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Records processed (each version once).
    pub seen: u64,
    /// Records with every due copy written.
    pub exported: u64,
    /// Records not due.
    pub skipped: u64,
    /// Records failed now (rejected, refused, missing key, given up, reported
    /// incomplete) and not exported since.
    pub failed: u64,
    /// Records waiting for listed files.
    pub incomplete: u64,
    /// Bytes written to targets.
    pub bytes: u64,
}

/// One recent error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// The record's XML path (or the spool root, the target root).
    pub path: String,
    /// Error code.
    pub code: String,
    /// What happened.
    pub message: String,
    /// The record id, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub record: String,
    /// The target concerned, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
}

/// One target's health.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// `ok`, `failing` (transient errors, retried with backoff) or `blocked`
    /// (refused: its copies wait for a configuration change).
    pub state: String,
    /// Since when it is in this state (RFC 3339; the agent's start for a
    /// target that never failed).
    pub since: String,
    /// Records waiting for a copy to this target.
    pub pending: u64,
    /// Records that failed on it since the outage began (0 when ok).
    #[serde(default)]
    pub failures: u64,
    /// The last error on it (kept once it is ok again, as history).
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// The last copy written to it (RFC 3339).
    #[serde(default)]
    pub last_export_at: Option<String>,
}

/// A part of the agent that does not work as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degraded {
    /// `central`, `spool`, `watch` (the inotify watch limit) or `target`.
    pub component: String,
    /// The spool root or target id ('' for central).
    pub subject: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// Why, and what to do.
    pub reason: String,
}

/// Close-to-exported latency of the last records exported (first seen by
/// the agent to every copy written), milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// How many records the figures are over (at most 512, the latest).
    pub records: u64,
    /// Median.
    pub p50_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Largest.
    pub max_ms: u64,
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
    /// When the oldest unfinished record was first seen (RFC 3339).
    #[serde(default)]
    pub oldest_pending_since: Option<String>,
    /// When the last copy was written (RFC 3339).
    #[serde(default)]
    pub last_export_at: Option<String>,
    /// Outcome counters since start.
    pub counts: Counts,
    /// Latency of the latest exports.
    #[serde(default)]
    pub latency: Latency,
    /// Each target of the model in force, by id.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetStatus>,
    /// What does not work as configured (empty when all is well).
    #[serde(default)]
    pub degraded: Vec<Degraded>,
    /// Exported records by `policy/target`.
    pub exported_by_policy_target: BTreeMap<String, u64>,
    /// Bytes by `policy/target`.
    pub bytes_by_policy_target: BTreeMap<String, u64>,
    /// Skipped records by reason code.
    pub skipped_by_reason: BTreeMap<String, u64>,
    /// Error rows by code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Error rows by target (`""`: none, the record itself) and code.
    #[serde(default)]
    pub errors_by_target: BTreeMap<String, BTreeMap<String, u64>>,
    /// The most recent errors of records not exported since, newest last.
    pub last_errors: Vec<LastError>,
    /// The last configuration bundle rejection, if any.
    #[serde(default)]
    pub last_rejection: Option<String>,
}

impl Status {
    /// Writes the file atomically.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::policy::snapshot::write_atomic(&state_dir.join("status.json"), &bytes)
    }

    /// Reads the file, if any.
    pub fn read(state_dir: &Path) -> std::io::Result<Option<Status>> {
        read_json(&state_dir.join("status.json"))
    }
}

/// What a pending record waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wait {
    /// A free worker.
    Queued,
    /// Nothing: a worker is on it.
    Running,
    /// Listed files still being written by the recorder (open for writing).
    FileBeingWritten,
    /// Listed files not in the spool yet (until `deadline`, then reported).
    MissingFile,
    /// A target that failed (retried with backoff).
    Target,
    /// The spool or the state folder, which failed transiently (retried).
    Retry,
    /// An age identity in `keys_dir` that opens it.
    Key,
    /// A configuration change (a target refused it).
    Config,
}

impl Wait {
    /// The name used in `status --pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::Queued => "queued",
            Wait::Running => "running",
            Wait::FileBeingWritten => "file_being_written",
            Wait::MissingFile => "missing_file",
            Wait::Target => "target",
            Wait::Retry => "retry",
            Wait::Key => "key",
            Wait::Config => "config",
        }
    }
}

/// One pending record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// The metadata XML.
    pub path: String,
    /// The record id, once read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// When the agent first saw it (RFC 3339).
    pub since: String,
    /// What it waits on.
    pub waits_on: Wait,
    /// Files it waits for (being written, or missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Targets it waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Missing files: when the grace ends and it is reported (RFC 3339);
    /// a retry: the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The pending list file: the oldest records, capped, with the total.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingList {
    /// When written (RFC 3339).
    pub updated_at: String,
    /// Records pending in all.
    pub total: u64,
    /// The oldest of them (at most [`PENDING_SHOWN`]), oldest first.
    pub records: Vec<PendingRecord>,
}

/// How many pending records `pending.json` lists at most.
pub const PENDING_SHOWN: usize = 1000;

impl PendingList {
    /// Writes `pending.json` atomically.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::policy::snapshot::write_atomic(&state_dir.join("pending.json"), &bytes)
    }

    /// Reads `pending.json`, if any.
    pub fn read(state_dir: &Path) -> std::io::Result<Option<PendingList>> {
        read_json(&state_dir.join("pending.json"))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
