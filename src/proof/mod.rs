//! Provable completeness (issue #14): the agent's own signing key, signed
//! checkpoints of the audit log and the closed audit days on every target,
//! and `exportd archive verify`, which checks an archive against them.
//! Never writes a record folder, never appends an audit row (a row about a
//! checkpoint would need a checkpoint of its own, forever).
//!
//! Layout on a target (export-layout.md, "The audit log on the targets"):
//! `exportd-audit/<agent_id>/checkpoints/<YYYYMMDDTHHMMSS.mmmZ>.json` and
//! `exportd-audit/<agent_id>/audit-YYYYMMDD.csv`.
//!
//! - [`key`]: the agent key (`<state_dir>/agent.key`).
//! - [`checkpoint`]: the payload, its DSSE envelope and the chain (pure).
//! - [`scan`]: how many durable rows an audit file holds, and its last hash.
//! - [`publish`]: makes checkpoints under `<state_dir>/checkpoints/` and puts
//!   them (and closed days) to the targets; [`service`] runs it on a thread.
//! - [`verify`]: the archive verify engine.

pub mod checkpoint;
pub mod key;
pub mod publish;
pub mod scan;
pub mod service;
pub mod verify;

/// The reserved folder at a target's root.
pub const AUDIT_ROOT: &str = "exportd-audit";

/// The DSSE payloadType of a checkpoint.
pub const PAYLOAD_TYPE: &str = "application/vnd.exportd.audit-checkpoint+json";

/// `exportd-audit/<agent_id>` (relative to the target root).
pub fn agent_folder(agent_id: &str) -> String {
    format!("{AUDIT_ROOT}/{agent_id}")
}

/// `exportd-audit/<agent_id>/checkpoints`.
pub fn checkpoints_folder(agent_id: &str) -> String {
    format!("{AUDIT_ROOT}/{agent_id}/checkpoints")
}

/// Why a proof step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// I/O on a local file.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A key file that cannot be used.
    #[error("agent key {path}: {reason}")]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A checkpoint that does not parse or verify.
    #[error("{0}")]
    Checkpoint(String),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ProofError + '_ {
    move |source| ProofError::Io {
        path: path.to_path_buf(),
        source,
    }
}
