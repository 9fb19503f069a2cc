//! age encryption for `simulate --encrypt-to`; only for simulated records,
//! never for the agent's own data.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use anyhow::{Context, Result};

use exportd::age::{Encryptor, Recipient};
use exportd::simulate::{EncryptFn, FinishWrite};

struct AgeWriter(Option<Encryptor<File>>);

impl Write for AgeWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self.0.as_mut() {
            Some(e) => e.write(b),
            None => Err(io::Error::other("writer finished")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.0.as_mut() {
            Some(e) => e.flush(),
            None => Ok(()),
        }
    }
}

impl FinishWrite for AgeWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        if let Some(e) = self.0.take() {
            let f = e.finish().map_err(io::Error::other)?;
            f.sync_all()?;
        }
        Ok(())
    }
}

/// An encryptor for `simulate --encrypt-to`.
pub fn encryptor(recipient: &str) -> Result<Arc<EncryptFn>> {
    let r = Recipient::from_bech32(recipient.trim()).with_context(|| {
        format!("--encrypt-to {recipient:?} is not an age X25519 recipient (age1...)")
    })?;
    Ok(Arc::new(
        move |f: File| -> io::Result<Box<dyn FinishWrite>> {
            let e = Encryptor::new(f, &[r]).map_err(io::Error::other)?;
            Ok(Box::new(AgeWriter(Some(e))))
        },
    ))
}
