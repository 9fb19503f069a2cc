//! Watching the spool: finding the recorder's finished records. Reads the
//! spool only through handles of its root; never writes to it.

pub mod lease;
pub mod map;
pub mod pending;
pub mod spool;
pub mod watcher;
