//! The export of one record: read its metadata, match it, copy every due
//! file to every target of every matching policy (content first, generated
//! files next, the metadata XML last), then write the audit row and only
//! then the journal entry for each copy.
//!
//! This runs on a blocking worker; the daemon ([`crate::agent`]) decides
//! when a record is processed and what to do with the [`Outcome`].

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::audit::{Action, AuditLog, Row, folder_digest};
use crate::journal::{self, FileStore, Journal, PathKey, RowHash, Window, copy_id};
use crate::layout::{PlannedFile, Values, metadata_name, plan_files};
use crate::matcher::{Decision, Verdict, decide};
use crate::record::{self, Modality, Record};
use crate::snapshot::{CompiledPolicy, Snapshot};
use crate::spool::{self, OpenError, SpoolFile, XmlRef, open_error_to_io, open_in_root};
use crate::target::{BytesSource, PutRequest, Source, Target, TargetError};

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

const YOUNG_NS: i64 = 10_000_000_000;
const FRESH_NS: i64 = 2_000_000_000;

struct Writer<'a> {
    ctx: &'a Ctx,
    xml: &'a XmlRef,
    tallies: Vec<Tally>,
}

impl Writer<'_> {
    fn row(&mut self, row: Row, target_id: &str) -> io::Result<()> {
        self.append_row(&row, false)?;
        self.tally(&row, target_id);
        Ok(())
    }

    fn tally(&mut self, row: &Row, target_id: &str) {
        self.tallies.push(Tally {
            action: row.action,
            policy_id: row.policy_id.clone(),
            target_id: target_id.to_string(),
            code: row.error_code.clone(),
            bytes: row.bytes,
        });
    }

    /// Appends a row and waits until it is durable. An `export` row is
    /// registered in the commit window (in chain order, under the audit
    /// log's lock) until its journal entry is durable; the ticket is
    /// returned.
    fn append_row(&mut self, row: &Row, export: bool) -> io::Result<(RowHash, Option<u64>)> {
        let (hash, ticket, pending) = {
            let mut a = self.ctx.audit.lock().unwrap_or_else(|p| p.into_inner());
            let (hash, pending) = a
                .append_deferred(crate::time::Timestamp::now(), row)
                .map_err(io::Error::other)?;
            let hash: RowHash = hex::decode(&hash)
                .ok()
                .and_then(|v| v.try_into().ok())
                .unwrap_or([0; 32]);
            let ticket = export.then(|| self.ctx.window.register(hash));
            (hash, ticket, pending)
        };
        // A failed sync leaves the ticket registered: the row may yet be on
        // disk, so recovery must look at it after a restart.
        pending
            .wait()
            .map_err(|e| io::Error::new(e.kind(), format!("audit log fdatasync failed: {e}")))?;
        Ok((hash, ticket))
    }

    /// Commits one copy: its `export` row (the commit point), then its
    /// journal entry carrying the row's hash. A row with the same signature
    /// left without its journal entry by a crash (recovery's orphans) is
    /// adopted instead of writing a second one.
    fn commit_copy(&mut self, row: Row, target_id: &str, xml: &XmlRef, cid: u64) -> io::Result<()> {
        let text = crate::audit::row_body(crate::time::Timestamp(0), &row, "");
        let fields: Vec<&str> = text.split(';').collect();
        let sig = journal::row_signature(&fields);
        let adopted = match sig {
            Some(sig) => self.journal(|j| Ok(j.orphan(&sig)))?,
            None => None,
        };
        let (hash, ticket) = match adopted {
            Some(h) => {
                tracing::info!(
                    "copy of {} to {target_id}: its export row {} was written before a crash; not written again",
                    xml.path.display(),
                    hex::encode(h)
                );
                (h, None)
            }
            None => self.append_row(&row, true)?,
        };
        #[cfg(debug_assertions)]
        crash_window_hook();
        if let Err(e) =
            self.journal(|j| j.record_copy_row(xml.key, xml.size, xml.mtime_ns, cid, hash))
        {
            // The row is durable, its journal entry is not: a retry of this
            // copy adopts the row instead of writing a second one (and after
            // a restart, recovery finds it: its ticket stays in the window).
            if let Some(sig) = sig {
                let mut j = self.ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
                j.note_orphan(hash, sig);
            }
            return Err(e);
        }
        if let Some(t) = ticket {
            self.ctx.window.acknowledge(t);
        }
        self.tally(&row, target_id);
        Ok(())
    }

    fn base(&self, r: Option<&Record>) -> Row {
        Row {
            ccdr_id: r.map(|r| r.id.clone()).unwrap_or_default(),
            native_id: r.map(|r| r.native_id.clone()).unwrap_or_default(),
            src_folder_path: self.xml.folder().display().to_string(),
            ..Row::default()
        }
    }

    fn journal<T>(
        &self,
        f: impl FnOnce(&mut Journal<FileStore>) -> io::Result<T>,
    ) -> io::Result<T> {
        // Group commit: written under the lock, synced outside it together
        // with whatever the other workers appended meanwhile.
        let (r, pending) = {
            let mut j = self.ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
            j.with_deferred(f)
        };
        if let Some(p) = pending {
            if let Err(e) = p.wait() {
                // The frame may be lost and the file's error state consumed:
                // the journal is rewritten whole before its next append.
                let mut j = self.ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
                j.sync_failed(&e);
                return Err(io::Error::new(
                    e.kind(),
                    format!("journal fdatasync failed: {e}"),
                ));
            }
        }
        r
    }
}

/// Test hook (debug builds only): with `EXPORTD_DEBUG_PAUSE_AFTER_EXPORT_ROW`
/// set to a path, a worker that has made an `export` row durable writes that
/// file and stops there, before the journal entry, so a test can SIGKILL the
/// agent inside the crash window.
#[cfg(debug_assertions)]
fn crash_window_hook() {
    if let Some(p) = std::env::var_os("EXPORTD_DEBUG_PAUSE_AFTER_EXPORT_ROW") {
        let _ = std::fs::write(&p, b"paused\n");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

/// The largest `messages.json` whose messages are also listed one by one
/// in the vCon (parsed into memory for it); a larger chat's vCon references
/// the file instead.
const VCON_INLINE_MAX: u64 = 8 << 20;

/// A missing age identity (the key store's `PermissionDenied`), not an
/// EACCES on a spool file (that is transient: retried).
fn is_no_key(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied && !spool::is_transient(e)
}

/// The `reported` slot of a spool read outage (the XML or a listed file):
/// one error row per outage, cleared when the record is finished.
const SPOOL_OUTAGE: u64 = 2;

/// Opens the metadata XML safely (through a handle of its root); returns it
/// with its size and mtime (ns).
fn open_metadata(root: &Path, xml: &XmlRef) -> Result<(File, u64, i64), OpenError> {
    use std::os::unix::fs::MetadataExt;
    let f = open_in_root(root, &xml.path)?;
    let m = f.metadata().map_err(|e| OpenError::Io {
        path: xml.path.clone(),
        source: e,
    })?;
    let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    Ok((f, m.len(), mtime))
}

/// Reads the opened metadata XML (decrypting `.xml.age`), bounded: the raw
/// bytes and the plaintext.
fn read_metadata(
    ctx: &Ctx,
    f: &File,
    xml: &XmlRef,
    size: u64,
) -> Result<(Vec<u8>, Vec<u8>), MetadataError> {
    if size > record::MAX_XML_BYTES as u64 * 4 {
        return Err(MetadataError::TooLarge);
    }
    let mut raw = Vec::with_capacity(size as usize);
    f.take(record::MAX_XML_BYTES as u64 * 4 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| {
            MetadataError::Unreadable(OpenError::Io {
                path: xml.path.clone(),
                source: e,
            })
        })?;
    if !xml.encrypted() {
        return Ok((raw.clone(), raw));
    }
    let mut plain = Vec::new();
    let rd = ctx.keys.decrypt(Box::new(io::Cursor::new(raw.clone())));
    match rd.and_then(|r| {
        r.take(record::MAX_XML_BYTES as u64 + 1)
            .read_to_end(&mut plain)
    }) {
        Ok(_) => Ok((raw, plain)),
        Err(e) if is_no_key(&e) => Err(MetadataError::NoKey(e.to_string())),
        Err(e) => Err(MetadataError::Decrypt(e.to_string())),
    }
}

/// Why an opened metadata XML yields no text.
enum MetadataError {
    Unreadable(OpenError),
    TooLarge,
    NoKey(String),
    Decrypt(String),
}

/// Journals this version of the record as rejected (its error row is
/// written), so it is not taken up again until its XML changes.
fn rejected(
    w: &Writer<'_>,
    xml: &XmlRef,
    rid: Option<String>,
) -> io::Result<(Outcome, Option<String>)> {
    w.journal(|j| j.record_done(xml.key, xml.size, xml.mtime_ns, journal::Outcome::Rejected))?;
    Ok((Outcome::Finished(journal::Outcome::Rejected), rid))
}

/// Whether an XML changed so recently that a failure to read it may only
/// mean it is still being written (a scan may meet one mid-write; any read
/// within a moment of its last change may too): then it is looked at again.
fn still_settling(opts: Options, mtime_ns: i64) -> bool {
    let age = crate::time::Timestamp::now().0 * 1_000_000 - mtime_ns;
    (opts.from_scan && age < YOUNG_NS) || age < FRESH_NS
}

/// A content file in the spool, read (and decrypted) from the start on each open.
struct SpoolSource<'a> {
    root: &'a Path,
    path: PathBuf,
    decrypt: bool,
    keys: &'a dyn Keys,
    len: Option<u64>,
}

impl Source for SpoolSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        // Errors stay classifiable (spool::is_transient) and name the file.
        let f = open_in_root(self.root, &self.path).map_err(open_error_to_io)?;
        let f = SpoolFile::new(f, self.path.clone());
        if self.decrypt {
            self.keys
                .decrypt(Box::new(io::BufReader::with_capacity(64 << 10, f)))
        } else {
            Ok(Box::new(f))
        }
    }
    fn len_hint(&self) -> Option<u64> {
        if self.decrypt { None } else { self.len }
    }
}

/// Files generated beside the content (messages JSON, vCon), by name.
pub type Generated = Vec<(String, Vec<u8>)>;

/// A content file written to a record folder: name, SHA-256, SHA-512 (when
/// asked for), size.
pub type Written = (String, [u8; 32], Option<[u8; 64]>, u64);

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

/// `<id>.messages.json` of an IM record, streamed from its transcript (only
/// from plaintext: with `decrypt` off, an encrypted transcript is exported as
/// recorded and no plaintext is derived from it).
///
/// Building it reads the whole transcript once (the first pass: every check,
/// the header and the attachments kept); each [`Source::open`] then reads it
/// again and produces the JSON message by message, so neither the transcript
/// nor the JSON is ever held in memory.
struct MessagesSource<'a> {
    /// The output name.
    name: String,
    record_id: String,
    root: &'a Path,
    path: PathBuf,
    decrypt: bool,
    keys: &'a dyn Keys,
    index: crate::im::stream::TranscriptIndex,
}

impl<'a> MessagesSource<'a> {
    /// The record's transcript as a [`MessagesSource`], when it gets one.
    fn of(
        rec: &Record,
        cp: &CompiledPolicy,
        folder: &Path,
        root: &'a Path,
        keys: &'a dyn Keys,
    ) -> Result<Option<MessagesSource<'a>>, CopyError> {
        if rec.modality != Modality::Im {
            return Ok(None);
        }
        let Some(f) = rec.files.iter().find(|f| {
            let n = f.base_name();
            f.role == crate::record::FileRole::Transcript
                && (n.ends_with(".im") || n.ends_with(".im.age"))
        }) else {
            return Ok(None);
        };
        let decrypt = f.is_encrypted();
        if decrypt && !cp.policy.settings.decrypt {
            return Ok(None);
        }
        let path = folder.join(&f.path);
        let index = open_transcript_xml(root, &path, decrypt, keys)
            .and_then(crate::im::stream::TranscriptIndex::build)
            .map_err(|e| match e {
                // A read outage of the spool is retried like any other.
                crate::im::ImError::Io(e) if spool::is_transient(&e) => {
                    CopyError::Target(TargetError::Source(e))
                }
                other => CopyError::Generate(format!("transcript {}: {other}", path.display())),
            })?;
        Ok(Some(MessagesSource {
            name: format!(
                "{}.messages.json",
                crate::layout::sanitize_component(&rec.id)
            ),
            record_id: rec.id.clone(),
            root,
            path,
            decrypt,
            keys,
            index,
        }))
    }

    fn describe(&self, e: impl std::fmt::Display) -> String {
        format!("transcript {}: {e}", self.path.display())
    }

    /// A fresh reader of the transcript XML.
    fn xml(&self) -> Result<crate::im::stream::XmlStream<'_>, crate::im::ImError> {
        open_transcript_xml(self.root, &self.path, self.decrypt, self.keys)
    }

    /// The whole transcript, for the vCon (which lists every message).
    fn transcript(&self) -> Result<crate::im::Transcript, String> {
        self.xml()
            .and_then(crate::im::Transcript::from_xml)
            .map_err(|e| self.describe(e))
    }
}

/// Opens a spool `.im` file (decrypting a `.im.age`) as a checked reader of
/// its `transcript.xml`.
fn open_transcript_xml<'k>(
    root: &Path,
    path: &Path,
    decrypt: bool,
    keys: &'k dyn Keys,
) -> Result<crate::im::stream::XmlStream<'k>, crate::im::ImError> {
    use crate::im::stream::ImSource;
    // Errors stay classifiable (spool::is_transient) and name the file.
    let f = open_in_root(root, path).map_err(open_error_to_io)?;
    let src = if decrypt {
        ImSource::Stream(keys.decrypt(Box::new(io::BufReader::with_capacity(64 << 10, f)))?)
    } else {
        ImSource::File(f)
    };
    crate::im::stream::xml_reader(src)
}

impl Source for MessagesSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let xml = self.xml().map_err(|e| match e {
            crate::im::ImError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, self.describe(other)),
        })?;
        Ok(Box::new(crate::im::stream::MessagesJson::new(
            xml,
            &self.index,
            &self.record_id,
        )))
    }
    fn len_hint(&self) -> Option<u64> {
        None
    }
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
    let outcome = run(ctx, &mut w, &mut xml, opts);
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

fn run(
    ctx: &Ctx,
    w: &mut Writer<'_>,
    xml: &mut XmlRef,
    opts: Options,
) -> io::Result<(Outcome, Option<String>)> {
    // Every spool file is opened through a handle of the root, by its
    // path relative to the root as configured (`xml.path` is below it).
    let root_canon = xml.root.clone();

    let err_row = |w: &mut Writer<'_>, r: Option<&Record>, code: &str, desc: String| {
        let mut row = w.base(r);
        row.action = Action::Error.as_str();
        row.error_code = code.to_string();
        row.error_desc = desc;
        w.row(row, "")
    };

    // A spool file that cannot be read now (EACCES, EIO, ESTALE, a root
    // not mounted...): one error row per outage, retried with backoff,
    // never journaled as a verdict on the record.
    let outage = |w: &mut Writer<'_>, r: Option<&Record>, code: &str, e: &dyn std::fmt::Display| {
        let desc = format!("{e}");
        if first_report(ctx, xml.key, SPOOL_OUTAGE) {
            err_row(w, r, code, desc.clone())?;
        }
        Ok::<_, io::Error>(Outcome::Retry(desc))
    };

    // 1. metadata
    let (f, size, mtime) = match open_metadata(&root_canon, xml) {
        Ok(v) => v,
        Err(OpenError::Missing(_)) => return Ok((Outcome::Vanished, None)),
        Err(e @ OpenError::Io { .. }) => {
            return Ok((outage(w, None, "unreadable_metadata", &e)?, None));
        }
        Err(e @ OpenError::Refused { .. }) => {
            err_row(w, None, "unsafe_path", format!("{e}"))?;
            return rejected(w, xml, None);
        }
    };
    (xml.size, xml.mtime_ns) = (size, mtime);
    // This version finished before (a scan and an event can both bring it,
    // and a restart rescans): nothing to do, and no second row.
    if w.journal(|j| Ok(j.is_done(&xml.key, size, mtime)))? {
        return Ok((Outcome::AlreadyDone, None));
    }
    let (raw_xml, plain_xml) = match read_metadata(ctx, &f, xml, size) {
        Ok(v) => v,
        Err(MetadataError::Unreadable(e)) => {
            return Ok((outage(w, None, "unreadable_metadata", &e)?, None));
        }
        Err(MetadataError::TooLarge) => {
            err_row(
                w,
                None,
                "bad_metadata",
                format!(
                    "metadata XML {} is {size} bytes, over the limit; fix the recorder",
                    xml.path.display()
                ),
            )?;
            return rejected(w, xml, None);
        }
        Err(MetadataError::NoKey(e)) => {
            let desc = format!(
                "no identity for record {}: {e}; add the recorder's age identity to keys_dir",
                xml.path.display()
            );
            if first_report(ctx, xml.key, 0) {
                err_row(w, None, "no_identity", desc.clone())?;
            }
            return Ok((Outcome::NeedKey(desc), None));
        }
        Err(MetadataError::Decrypt(e)) => {
            // An encrypted XML still being written does not decrypt yet.
            if still_settling(opts, mtime) {
                return Ok((Outcome::Young(e), None));
            }
            err_row(
                w,
                None,
                "decrypt_failed",
                format!("cannot decrypt {}: {e}", xml.path.display()),
            )?;
            return rejected(w, xml, None);
        }
    };

    let rec = match record::parse(&plain_xml) {
        Ok(r) => r,
        Err(e) => {
            if still_settling(opts, xml.mtime_ns) {
                return Ok((Outcome::Young(e.to_string()), None));
            }
            err_row(
                w,
                None,
                "bad_metadata",
                format!(
                    "{}: {e}; the record is skipped until its XML changes",
                    xml.path.display()
                ),
            )?;
            return rejected(w, xml, None);
        }
    };
    let rid = Some(rec.id.clone());

    // 2. matching
    let snap = &ctx.snap;
    let (user, verdicts) = match decide(&rec, snap) {
        Decision::Skip(reason, _) => {
            snap.release_pages();
            let mut row = w.base(Some(&rec));
            row.action = Action::Skip.as_str();
            row.error_code = reason.code().to_string();
            row.error_desc = reason.describe(&rec);
            w.row(row, "")?;
            w.journal(|j| {
                j.record_done(xml.key, xml.size, xml.mtime_ns, journal::Outcome::Skipped)
            })?;
            return Ok((Outcome::Finished(journal::Outcome::Skipped), rid));
        }
        Decision::Policies(u, v) => (u, v),
    };
    // Matching is done: the snapshot pages it touched need not stay mapped.
    snap.release_pages();

    // 3. plan, and check every needed file is there
    let folder = xml.folder().to_path_buf();
    let mut plans: Vec<(usize, Vec<PlannedFile>)> = Vec::new();
    for &(pi, v) in &verdicts {
        if v != Verdict::Take {
            continue;
        }
        let p = &snap.policies()[pi].policy;
        match plan_files(
            &rec,
            p.settings.decrypt,
            p.settings.im_attachments || rec.modality == Modality::FileShare,
            p.settings.file_extensions.as_deref(),
        ) {
            Ok(plan) => plans.push((pi, plan)),
            Err(e) => {
                for &ti in &snap.policies()[pi].targets {
                    let mut row = w.base(Some(&rec));
                    row.action = Action::Error.as_str();
                    row.policy_id = p.id.clone();
                    row.policy_name = p.name.clone();
                    row.dst_folder_type = snap.targets()[ti].kind.as_str().into();
                    row.error_code = "name_collision".into();
                    row.error_desc = e.to_string();
                    w.row(row, &snap.targets()[ti].id)?;
                }
                return rejected(w, xml, rid);
            }
        }
    }
    let mut needed: Vec<usize> = plans
        .iter()
        .flat_map(|(_, p)| p.iter().map(|f| f.index))
        .collect();
    needed.sort_unstable();
    needed.dedup();
    let mut missing = Vec::new();
    let mut being_written = Vec::new();
    for &i in &needed {
        let path = folder.join(&rec.files[i].path);
        let still_written = ctx
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&path);
        if still_written {
            being_written.push(path);
            continue;
        }
        match open_in_root(&root_canon, &path) {
            Ok(_) => {}
            Err(OpenError::Missing(p)) => missing.push(p),
            Err(e @ OpenError::Io { .. }) => {
                return Ok((outage(w, Some(&rec), "source_unavailable", &e)?, rid));
            }
            Err(e @ OpenError::Refused { .. }) => {
                err_row(
                    w,
                    Some(&rec),
                    "unsafe_path",
                    format!("{e}; the record is refused"),
                )?;
                return rejected(w, xml, rid);
            }
        }
    }
    if missing.is_empty() && !being_written.is_empty() {
        // Present but still being written: not missing; waited for until closed.
        return Ok((Outcome::Writing(being_written), rid));
    }
    missing.extend(being_written);
    if !missing.is_empty() {
        if opts.grace_expired && first_report(ctx, xml.key, 1) {
            let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            err_row(
                w,
                Some(&rec),
                "incomplete",
                format!(
                    "record incomplete after the grace period: missing {}; it is exported when the files appear",
                    names.join(", ")
                ),
            )?;
            return Ok((
                Outcome::Incomplete {
                    missing,
                    reported: true,
                },
                rid,
            ));
        }
        return Ok((
            Outcome::Incomplete {
                missing,
                reported: opts.grace_expired,
            },
            rid,
        ));
    }

    // 4. copies
    let mut retry = None;
    let mut failed = None;
    let mut need_key = None;
    let mut any_taken = false;
    for (pi, plan) in &plans {
        let cp = &snap.policies()[*pi];
        let values = Values::of(&rec, user.id, &cp.policy.id);
        let dst = cp.template.expand(&values);
        for &ti in &cp.targets {
            any_taken = true;
            let spec = &snap.targets()[ti];
            let cid = copy_id(&cp.policy.id, &spec.id);
            if w.journal(|j| Ok(j.has_copy(&xml.key, xml.size, xml.mtime_ns, cid)))? {
                continue;
            }
            let target = &ctx.targets[ti];
            let res = copy_one(
                ctx,
                target.as_ref(),
                &root_canon,
                &folder,
                &rec,
                cp,
                plan,
                &dst,
                &raw_xml,
                &plain_xml,
                xml.encrypted(),
                &user,
            );
            let mut row = w.base(Some(&rec));
            row.policy_id = cp.policy.id.clone();
            row.policy_name = cp.policy.name.clone();
            row.dst_folder_type = spec.kind.as_str().into();
            row.dst_folder_path = dst.clone();
            match res {
                Ok(c) => {
                    row.action = Action::Export.as_str();
                    row.n_files = c.n_files;
                    row.bytes = c.bytes;
                    row.sha256 = c.digest;
                    row.error_desc = c.detail;
                    w.commit_copy(row, &spec.id, xml, cid)?;
                    forget_report(ctx, xml.key, cid);
                }
                Err(CopyError::Target(e)) => {
                    // A spool read error is retried like a target outage.
                    let spool_outage =
                        matches!(&e, TargetError::Source(s) if spool::is_transient(s));
                    let transient = e.is_transient() || spool_outage;
                    let (code, keyish) = match &e {
                        TargetError::Conflict { .. } => ("conflict", false),
                        TargetError::Source(_) if spool_outage => ("source_unavailable", false),
                        // A way out of the root met while copying (a swap race).
                        TargetError::Source(s) if spool::is_refusal(s) => ("unsafe_path", false),
                        TargetError::Source(s) if is_no_key(s) => ("no_identity", true),
                        TargetError::Source(_) => ("source_failed", false),
                        TargetError::Transient(_) => ("target_unavailable", false),
                        TargetError::Permanent(_) => ("target_refused", false),
                    };
                    let desc = format!("{}: {e}", target.describe(&dst));
                    if first_report(ctx, xml.key, cid) {
                        row.action = Action::Error.as_str();
                        row.error_code = code.into();
                        row.error_desc = desc.clone();
                        w.row(row, &spec.id)?;
                    }
                    if keyish {
                        need_key = Some(desc);
                    } else if transient {
                        retry = Some(desc);
                    } else {
                        failed = Some(desc);
                    }
                }
                Err(CopyError::Generate(msg)) => {
                    row.action = Action::Error.as_str();
                    row.error_code = "bad_content".into();
                    row.error_desc = msg.clone();
                    if first_report(ctx, xml.key, cid) {
                        w.row(row, &spec.id)?;
                    }
                    failed = Some(msg);
                }
            }
        }
    }
    if let Some(d) = retry {
        return Ok((Outcome::Retry(d), rid));
    }
    if let Some(d) = need_key {
        return Ok((Outcome::NeedKey(d), rid));
    }
    if let Some(d) = failed {
        return Ok((Outcome::Failed(d), rid));
    }

    // 5. skip rows for policies that did not take the record, then done
    for &(pi, v) in &verdicts {
        if v == Verdict::Take {
            continue;
        }
        let cp = &snap.policies()[pi];
        for &ti in &cp.targets {
            let spec = &snap.targets()[ti];
            let mut row = w.base(Some(&rec));
            row.action = Action::Skip.as_str();
            row.policy_id = cp.policy.id.clone();
            row.policy_name = cp.policy.name.clone();
            row.dst_folder_type = spec.kind.as_str().into();
            row.error_code = v.code().into();
            row.error_desc = format!(
                "policy {:?} filters this record out ({})",
                cp.policy.id,
                v.code()
            );
            w.row(row, &spec.id)?;
        }
    }
    let outcome = if any_taken {
        journal::Outcome::Exported
    } else {
        journal::Outcome::Skipped
    };
    w.journal(|j| j.record_done(xml.key, xml.size, xml.mtime_ns, outcome))?;
    Ok((Outcome::Finished(outcome), rid))
}

fn first_report(ctx: &Ctx, key: PathKey, cid: u64) -> bool {
    ctx.reported
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((key, cid))
}

fn forget_report(ctx: &Ctx, key: PathKey, cid: u64) {
    ctx.reported
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(key, cid));
}

struct CopyDone {
    n_files: u64,
    bytes: u64,
    digest: String,
    detail: String,
}

enum CopyError {
    Target(TargetError),
    Generate(String),
}

#[allow(clippy::too_many_arguments)]
fn copy_one(
    ctx: &Ctx,
    target: &dyn Target,
    root_canon: &Path,
    folder: &Path,
    rec: &Record,
    cp: &CompiledPolicy,
    plan: &[PlannedFile],
    dst: &str,
    raw_xml: &[u8],
    plain_xml: &[u8],
    xml_encrypted: bool,
    user: &crate::snapshot::UserView<'_>,
) -> Result<CopyDone, CopyError> {
    let mut written: Vec<Written> = Vec::new();
    let mut details = Vec::new();
    let want512 = cp.policy.settings.vcon;
    for f in plan {
        let fr = &rec.files[f.index];
        let path = folder.join(&fr.path);
        let len = std::fs::metadata(&path).ok().map(|m| m.len());
        let src = SpoolSource {
            root: root_canon,
            path,
            decrypt: f.decrypt,
            keys: ctx.keys.as_ref(),
            len,
        };
        let req = PutRequest {
            folder: dst,
            name: &f.out_name,
            want_sha512: want512,
        };
        let r = target.put(&req, &src).map_err(CopyError::Target)?;
        if let Some(d) = r.detail {
            details.push(format!("{}: {d}", f.out_name));
        }
        written.push((f.out_name.clone(), r.sha256, r.sha512, r.bytes));
    }
    // Generated files: messages.json (streamed from the transcript), then the vCon.
    {
        let content = written.len();
        let messages = MessagesSource::of(rec, cp, folder, root_canon, ctx.keys.as_ref())?;
        if let Some(ms) = &messages {
            let req = PutRequest {
                folder: dst,
                name: &ms.name,
                want_sha512: want512,
            };
            let r = target.put(&req, ms).map_err(CopyError::Target)?;
            if let Some(d) = r.detail {
                details.push(format!("{}: {d}", ms.name));
            }
            written.push((ms.name.clone(), r.sha256, r.sha512, r.bytes));
        }
        if cp.policy.settings.vcon {
            // Memory stays bounded: a chat whose messages.json is large gets
            // a vCon that references that file (with its content hash)
            // instead of one dialog per message held in memory.
            let inline = written.get(content).is_some_and(|w| w.3 <= VCON_INLINE_MAX);
            let transcript = match &messages {
                Some(ms) if inline => Some(ms.transcript().map_err(CopyError::Generate)?),
                _ => None,
            };
            let mfile = match (&messages, written.get(content)) {
                (Some(ms), Some((_, _, sha512, bytes))) => Some(crate::vcon::ExportedFile {
                    name: &ms.name,
                    role: crate::vcon::ExportedRole::Messages,
                    sha512: sha512.ok_or_else(|| {
                        CopyError::Generate(format!(
                            "vCon: the target returned no SHA-512 for {:?}",
                            ms.name
                        ))
                    })?,
                    bytes: *bytes,
                    message_id: None,
                }),
                _ => None,
            };
            let (name, bytes) = crate::vcon::generate_with(
                rec,
                crate::vcon::VconUser {
                    id: user.id,
                    name: user.name,
                    email: user.email,
                },
                cp.policy.settings.decrypt,
                &written[..content],
                mfile,
                transcript.as_ref(),
            )
            .map_err(CopyError::Generate)?;
            drop(transcript);
            let req = PutRequest {
                folder: dst,
                name: &name,
                want_sha512: false,
            };
            let r = target
                .put(&req, &BytesSource(&bytes))
                .map_err(CopyError::Target)?;
            if let Some(d) = r.detail {
                details.push(format!("{name}: {d}"));
            }
            written.push((name, r.sha256, r.sha512, r.bytes));
        }
    }
    // The metadata XML last: its presence means the folder is complete.
    let keep_encrypted = xml_encrypted && !cp.policy.settings.decrypt;
    let name = metadata_name(&rec.id, keep_encrypted);
    let body = if keep_encrypted { raw_xml } else { plain_xml };
    let req = PutRequest {
        folder: dst,
        name: &name,
        want_sha512: false,
    };
    let r = target
        .put(&req, &BytesSource(body))
        .map_err(CopyError::Target)?;
    if let Some(d) = r.detail {
        details.push(format!("{name}: {d}"));
    }
    written.push((name, r.sha256, r.sha512, r.bytes));

    let n_files = written.len() as u64;
    let bytes = written.iter().map(|w| w.3).sum();
    let mut pairs: Vec<(String, [u8; 32])> = written.into_iter().map(|w| (w.0, w.1)).collect();
    let (_, digest) = folder_digest(&mut pairs);
    Ok(CopyDone {
        n_files,
        bytes,
        digest,
        detail: details.join(", "),
    })
}
