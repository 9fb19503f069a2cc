//! Wires the optional parts (age keys, generated files, S3, pushed bundles)
//! into the agent.

use anyhow::{Result, bail};

use exportd::agent::Plugins;
use exportd::simulate::EncryptFn;

/// The plugins of this build.
pub fn plugins() -> Plugins {
    Plugins::default()
}

/// An encryptor for `simulate --encrypt-to`.
pub fn encryptor(_recipient: &str) -> Result<std::sync::Arc<EncryptFn>> {
    bail!("--encrypt-to is not available in this build yet")
}
