//! Control of the agent from outside: signed bundles from the central
//! manager (inbox and mutual-TLS long poll), verified before anything of
//! them is applied.

pub mod bundle;
pub mod poller;
pub mod room;
