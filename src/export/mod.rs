//! The export of one record, as the daemon sees it ([`process`], [`Ctx`],
//! [`Outcome`]); never decides when a record is processed or retried.
//!
//! An export reads the record's metadata, matches it, copies every due
//! file to every target of every matching policy (content first, generated
//! files next, the metadata XML last), then writes the audit row and only
//! then the journal entry for each copy.
//!
//! This runs on a blocking worker; the daemon ([`crate::agent`]) decides
//! when a record is processed and what to do with the [`Outcome`].
//!
//! The steps are told in `engine` (open, match, plan, copy each, commit);
//! one copy to one target is `copy`, what it reads from the spool is
//! `sources`, and the rows and journal entries are written by `commit`.
//! This module itself holds only the types the daemon sees and [`process`].

mod commit;
mod copy;
mod engine;
pub mod layout;
mod sources;
pub mod vcon;

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::export::commit::{SPOOL_OUTAGE, Writer, forget_report};
use crate::ledger::audit::AuditLog;
use crate::ledger::journal::{self, FileStore, Journal, PathKey, Window};
use crate::policy::snapshot::Snapshot;
use crate::sink::Target;
use crate::watch::spool::XmlRef;

/// Decryption of age files, behind a trait so the engine does not depend on
/// how keys are stored.
pub trait Keys: Send + Sync {
    /// Wraps an encrypted stream in a decrypting one. Fails (kind
    /// `PermissionDenied`) when no identity opens the file.
    fn decrypt<'a>(&self, src: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>>;
    /// Changes when identities are added or removed.
    fn fingerprint(&self) -> [u8; 32];
}

/// A key store with no identities.
pub struct NoKeys;

impl Keys for NoKeys {
    fn decrypt<'a>(&self, _src: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "no age identities are loaded",
        ))
    }
    fn fingerprint(&self) -> [u8; 32] {
        [0; 32]
    }
}

/// Everything an export needs, shared by the workers.
#[derive(Clone)]
pub struct Ctx {
    /// The policy model in force when the record started.
    pub snap: Arc<Snapshot>,
    /// Targets aligned with `snap.targets()`.
    pub targets: Arc<Vec<Arc<dyn Target>>>,
    /// age identities.
    pub keys: Arc<dyn Keys>,
    /// The journal.
    pub journal: Arc<Mutex<Journal<FileStore>>>,
    /// The audit log.
    pub audit: Arc<Mutex<AuditLog>>,
    /// `export` rows written and not yet journaled (the journal's floor).
    pub window: Arc<Window>,
    /// Transient failures already written as an error row (one row per outage).
    pub reported: Arc<Mutex<HashSet<(PathKey, u64)>>>,
    /// Canonical spool roots, keyed by configured root.
    pub roots: Arc<Vec<(PathBuf, PathBuf)>>,
    /// Spool files created and not yet closed by the recorder (inotify
    /// `IN_CREATE` without `IN_CLOSE_WRITE` yet): treated as missing, so a
    /// file still being written is never archived truncated.
    pub writing: Arc<Mutex<HashSet<PathBuf>>>,
}

/// How processing a record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished for this version of the XML (journaled).
    Finished(journal::Outcome),
    /// This version of the XML was finished before (journal): nothing done.
    AlreadyDone,
    /// Every listed file is there, but some are still being written (created,
    /// not yet closed): waited for until they are closed, not reported.
    Writing(Vec<PathBuf>),
    /// Listed files are missing; wait for them.
    Incomplete {
        /// Absolute paths of the missing files.
        missing: Vec<PathBuf>,
        /// The grace had expired and the error row was written.
        reported: bool,
    },
    /// A target failed transiently; retry with backoff.
    Retry(String),
    /// A target refused for good (bad credentials, conflict); retry after a config change.
    Failed(String),
    /// No identity opens the record; retry when keys change.
    NeedKey(String),
    /// The XML is gone.
    Vanished,
    /// Unparsable but freshly written, found by a scan: look again shortly.
    Young(String),
}

/// One audit row's essentials, for counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// `export`, `skip`, `error`.
    pub action: &'static str,
    /// Policy id ('' when none).
    pub policy_id: String,
    /// Target id ('' when none).
    pub target_id: String,
    /// Error or skip code.
    pub code: String,
    /// The row's `error_desc` (why it failed or was skipped).
    pub desc: String,
    /// Bytes written.
    pub bytes: u64,
}

/// The result of processing a record.
#[derive(Debug, Clone)]
pub struct Report {
    /// The XML processed (with the version actually read).
    pub xml: XmlRef,
    /// Record id when parsed.
    pub record_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Rows written.
    pub tallies: Vec<Tally>,
}

/// Options for [`process`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The missing-file grace has expired: report incompleteness.
    pub grace_expired: bool,
    /// The XML was found by a scan rather than a close event.
    pub from_scan: bool,
}

/// Files generated beside the content (messages JSON, vCon), by name.
pub type Generated = Vec<(String, Vec<u8>)>;

/// A content file written to a record folder: name, SHA-256, SHA-512 (when
/// asked for), size (one type with the vCon's).
pub use vcon::Written;

/// The age key store as [`Keys`].
pub struct AgeKeys(pub crate::age::KeyStore);

impl Keys for AgeKeys {
    fn decrypt<'a>(&self, src: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>> {
        use crate::age::AgeError;
        match crate::age::Decryptor::new(src, &self.0) {
            Ok(d) => Ok(Box::new(d)),
            Err(AgeError::NoMatch) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "none of the {} identities in keys_dir opens it",
                    self.0.len()
                ),
            )),
            Err(AgeError::Io(e)) => Err(e),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
    fn fingerprint(&self) -> [u8; 32] {
        self.0.fingerprint()
    }
}

/// Loads the identities of `keys_dir`, logging every refused key file.
pub fn load_keys(dir: &Path) -> Arc<dyn Keys> {
    let (store, errors) = crate::age::KeyStore::load_dir(dir);
    for e in errors {
        tracing::error!("{e}");
    }
    Arc::new(AgeKeys(store))
}

/// Processes one record version. Never panics on input; every failure is an
/// audit row plus an [`Outcome`].
pub fn process(ctx: &Ctx, xml: &XmlRef, opts: Options) -> Report {
    let mut w = Writer {
        ctx,
        xml,
        tallies: Vec::new(),
    };
    let mut xml = xml.clone();
    let outcome = engine::run(ctx, &mut w, &mut xml, opts);
    let (outcome, record_id) = match outcome {
        Ok(v) => v,
        Err(e) => (Outcome::Retry(format!("state I/O failed: {e}")), None),
    };
    if matches!(
        outcome,
        Outcome::Finished(_) | Outcome::AlreadyDone | Outcome::Vanished
    ) {
        // A spool read outage of this record is over.
        forget_report(ctx, xml.key, SPOOL_OUTAGE);
    }
    Report {
        xml,
        record_id,
        outcome,
        tallies: w.tallies,
    }
}
