//! exportd: the direct-export agent of a call-recording appliance.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the module map.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod age;
pub mod agent;
pub mod audit;
pub mod bundle;
pub mod compliance;
pub mod config;
pub mod export;
pub mod group_sync;
pub mod im;
pub mod journal;
pub mod layout;
pub mod matcher;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod record;
pub mod recovery;
pub mod requests;
pub mod simulate;
pub mod snapshot;
pub mod spool;
pub mod state_lock;
pub mod status;
pub mod target;
pub mod time;
pub mod vcon;
pub mod xml;
