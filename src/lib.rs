//! exportd: the direct-export agent of a call-recording appliance.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the module map.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod layout;
pub mod model;
pub mod record;
pub mod time;
pub mod xml;
pub mod audit;
pub mod journal;
pub mod target;
pub mod config;
pub mod matcher;
pub mod snapshot;
pub mod export;
pub mod notify;
pub mod spool;
pub mod status;
pub mod agent;
pub mod simulate;
