//! The ledger, what the agent has done, durably: an acknowledged row or
//! frame is never lost; a torn tail is cut back, never trusted.
//!
//! The journal of copies (a cache of the audit log), the hash-chained audit
//! log (the commit point of a copy), the group commit both write through,
//! startup recovery between them, and the lock that keeps a second agent
//! off the state directory.

pub mod audit;
pub mod group_sync;
pub mod journal;
pub mod recovery;
pub mod state_lock;
