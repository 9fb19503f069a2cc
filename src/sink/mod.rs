//! Archive targets: where exported files land, behind [`Target`]; a final
//! name appears only complete and durable, and is never overwritten.
//!
//! The export engine talks to them only through [`Target`]: [`fs`] (a
//! mounted folder, reached through [`handle`]s and proven by its
//! [`marker`]) and [`s3`] (S3-compatible object storage, Object Lock).

use std::io::{self, Read};

use crate::policy::model::{TargetKind, TargetSpec};

pub mod fs;
pub mod handle;
pub mod marker;
pub mod s3;

/// Something a target can read (once or several times: an S3 upload first
/// hashes, then sends). Each [`Source::open`] starts from the beginning.
pub trait Source: Sync {
    /// Opens the source from its start.
    fn open(&self) -> io::Result<Box<dyn Read + '_>>;
    /// The size when known in advance (plaintext size is not known for
    /// encrypted sources).
    fn len_hint(&self) -> Option<u64>;
}

/// A [`Source`] over bytes in memory (generated files: XML, JSON).
pub struct BytesSource<'a>(pub &'a [u8]);

impl Source for BytesSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.0))
    }
    fn len_hint(&self) -> Option<u64> {
        Some(self.0.len() as u64)
    }
}

/// One file to put into a record folder.
#[derive(Debug, Clone, Copy)]
pub struct PutRequest<'a> {
    /// The record folder relative to the target root (`/`-separated, sanitised).
    pub folder: &'a str,
    /// The final file name in that folder.
    pub name: &'a str,
    /// Also compute SHA-512 of the bytes written (for vCon content hashes).
    pub want_sha512: bool,
}

/// What a successful put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    /// SHA-256 of the bytes now under the final name.
    pub sha256: [u8; 32],
    /// SHA-512 of the same bytes, when asked for.
    pub sha512: Option<[u8; 64]>,
    /// Size in bytes.
    pub bytes: u64,
    /// The same bytes were already there; nothing was written.
    pub already_present: bool,
    /// Target-specific facts for the audit row (S3 version id, lock mode, retain-until).
    pub detail: Option<String>,
}

/// Why a put failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The final name exists with different bytes; nothing was changed.
    #[error(
        "{location} already exists with different content (sha256 {existing}); it is never overwritten; check for a duplicate record id"
    )]
    Conflict {
        /// Where.
        location: String,
        /// Hex SHA-256 of what is there.
        existing: String,
    },
    /// Reading the source failed (vanished, unreadable, decryption failed);
    /// nothing was left under the final name.
    #[error("reading the source failed: {0}")]
    Source(#[source] io::Error),
    /// A failure that may go away by itself (I/O error, full disk, timeout,
    /// 5xx, throttling): retried with backoff.
    #[error("{0}")]
    Transient(String),
    /// A failure that needs a person (bad credentials, missing bucket,
    /// permission denied): retried after a configuration change.
    #[error("{0}")]
    Permanent(String),
}

impl TargetError {
    /// Whether retrying later without any change may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, TargetError::Transient(_))
    }
}

/// An archive target.
pub trait Target: Send + Sync {
    /// The configuration it was built from.
    fn spec(&self) -> &TargetSpec;

    /// The kind, for `dst_folder_type`.
    fn kind(&self) -> TargetKind {
        self.spec().kind
    }

    /// Writes `src` under `req.folder/req.name`, atomically and durably.
    /// If the name exists: the same bytes is a no-op (`already_present`),
    /// different bytes is [`TargetError::Conflict`]. On any error nothing is
    /// left under the final name.
    fn put(&self, req: &PutRequest<'_>, src: &dyn Source) -> Result<PutReceipt, TargetError>;

    /// Whether `folder/name` exists (the metadata XML's presence means the
    /// record folder is complete).
    fn exists(&self, folder: &str, name: &str) -> Result<bool, TargetError>;

    /// A human-readable location of a record folder, for logs and errors.
    fn describe(&self, folder: &str) -> String;

    /// Whether the target can be written now (a folder target: its root
    /// exists and proves to be this target's archive). Checked before
    /// writing outside [`Target::put`] (compliance zips).
    fn check_available(&self) -> Result<(), TargetError> {
        Ok(())
    }

    /// Cleans up after a crash (e.g. temp files of a dead process); called
    /// when the target is set up by the daemon. Returns what was removed.
    fn recover(&self) -> usize {
        0
    }
}
