//! What must be exported, and where: the configuration file, the model it
//! is checked into, the compiled snapshot of user/extension assignments,
//! and the pure matcher of a record against it. No export I/O here.

pub mod config;
pub mod intake;
pub mod matcher;
pub mod model;
pub mod overlay;
pub mod snapshot;
