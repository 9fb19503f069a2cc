//! exportd: the direct-export agent of a call-recording appliance.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the module map.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod age;
pub mod agent;
pub mod control;
pub mod export;
pub mod human;
pub mod ledger;
pub mod policy;
pub mod preflight;
pub mod proof;
pub mod record;
pub mod requests;
pub mod simulate;
pub mod sink;
pub mod time;
pub mod url;
pub mod watch;
