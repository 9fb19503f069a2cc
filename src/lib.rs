//! exportd: the direct-export agent of a call-recording appliance.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the module map.
#![deny(unsafe_code)]
#![warn(missing_docs)]
pub mod age;
