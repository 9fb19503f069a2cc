//! The export of one record told as the sequence it is: open the record,
//! match it, plan its copies (and check every needed file is there), copy
//! each, commit. Writes rows and journal entries only through the
//! [`Writer`], and never decides a record's meaning outside these steps.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::export::commit::{Writer, first_report, forget_report, rejected};
use crate::export::copy::{CopyError, Metadata, copy_one};
use crate::export::layout::{PlannedFile, Values, extension_left_out, plan_files};
use crate::export::{Ctx, Options, Outcome};
use crate::ledger::audit::{Action, Row};
use crate::ledger::journal::{self, copy_id};
use crate::policy::matcher::{Decision, Verdict, decide};
use crate::policy::snapshot::UserView;
use crate::record::{self, Modality, Record};
use crate::sink::TargetError;
use crate::watch::lease::{self, Writers};
use crate::watch::spool::{self, OpenError, XmlRef, open_in_root};

/// How long after its last change an unparsable XML found by a scan is
/// still looked at again.
const YOUNG_NS: i64 = 10_000_000_000;
/// How long after its last change any unreadable XML is looked at again.
const FRESH_NS: i64 = 2_000_000_000;

/// What a step yields: the next step's input, or the end of the record.
enum Step<T> {
    Next(T),
    End(Outcome),
}

/// A policy's verdict on the record: an index into the snapshot's policies.
type Verdicts = Vec<(usize, Verdict)>;

/// A policy that takes the record, with the files it copies.
type Plan = (usize, Vec<PlannedFile>);

/// Runs the steps on one record version; returns how it ended and the
/// record id when the XML was parsed.
pub(super) fn run(
    ctx: &Ctx,
    w: &mut Writer<'_>,
    xml: &mut XmlRef,
    opts: Options,
) -> io::Result<(Outcome, Option<String>)> {
    // Every spool file is opened through a handle of the root, by its
    // path relative to the root as configured (`xml.path` is below it).
    let root_canon = xml.root.clone();

    // 1. open the record: its metadata XML, read and parsed
    let (rec, meta) = match open_record(ctx, w, xml, opts, &root_canon)? {
        Step::Next(v) => v,
        Step::End(o) => return Ok((o, None)),
    };
    let rid = Some(rec.id.clone());

    // 2. matching
    let snap = &ctx.snap;
    let (user, verdicts) = match match_policies(w, xml, &rec, snap)? {
        Step::Next(v) => v,
        Step::End(o) => return Ok((o, rid)),
    };

    // 3. plan, and check every needed file is there
    let plans = match plan(w, xml, &rec, &verdicts)? {
        Step::Next(v) => v,
        Step::End(o) => return Ok((o, rid)),
    };
    tracing::debug!(record = %rec.id, path = %xml.path.display(), policies = verdicts.len(), taking = plans.len(), "matched and planned");
    if let Step::End(o) = check_files(ctx, w, xml, opts, &root_canon, &rec, &plans)? {
        return Ok((o, rid));
    }

    // 4. copies
    let copied = copy_each(ctx, w, xml, &root_canon, &rec, &user, &plans, &meta)?;
    let any_taken = copied.any_taken;
    if let Some(o) = copied.stop() {
        return Ok((o, rid));
    }

    // 5. skip rows for policies that did not take the record, then done
    let outcome = commit(ctx, w, xml, &rec, &verdicts, any_taken)?;
    Ok((outcome, rid))
}

/// Step 1: opens, reads (decrypting) and parses the metadata XML; updates
/// `xml` to the version read. Ends when it is gone, finished before,
/// unreadable or refused.
fn open_record(
    ctx: &Ctx,
    w: &mut Writer<'_>,
    xml: &mut XmlRef,
    opts: Options,
    root_canon: &Path,
) -> io::Result<Step<(Record, Metadata)>> {
    let (f, size, mtime) = match open_metadata(root_canon, xml) {
        Ok(v) => v,
        Err(OpenError::Missing(_)) => return Ok(Step::End(Outcome::Vanished)),
        Err(e @ OpenError::Io { .. }) => {
            return Ok(Step::End(w.outage(None, "unreadable_metadata", &e)?));
        }
        Err(e @ OpenError::Refused { .. }) => {
            w.err_row(None, "unsafe_path", format!("{e}"))?;
            return rejected(w, xml).map(Step::End);
        }
    };
    (xml.size, xml.mtime_ns) = (size, mtime);
    // This version finished before (a scan and an event can both bring it,
    // and a restart rescans): nothing to do, and no second row.
    if w.journal(|j| Ok(j.is_done(&xml.key, size, mtime)))? {
        return Ok(Step::End(Outcome::AlreadyDone));
    }
    let (raw, plain) = match read_metadata(ctx, &f, xml, size) {
        Ok(v) => v,
        Err(e) => return unreadable_metadata(w, xml, opts, e).map(Step::End),
    };
    let rec = match record::parse(&plain) {
        Ok(r) => r,
        Err(e) => {
            if still_settling(opts, xml.mtime_ns) {
                return Ok(Step::End(Outcome::Young(e.to_string())));
            }
            w.err_row(
                None,
                e.audit_code(),
                format!(
                    "{}: {e}; the record is skipped until its XML changes",
                    xml.path.display()
                ),
            )?;
            return rejected(w, xml).map(Step::End);
        }
    };
    let meta = Metadata {
        raw,
        plain,
        encrypted: xml.encrypted(),
    };
    Ok(Step::Next((rec, meta)))
}

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

/// What an opened metadata XML that yields no text means for the record.
fn unreadable_metadata(
    w: &mut Writer<'_>,
    xml: &XmlRef,
    opts: Options,
    e: MetadataError,
) -> io::Result<Outcome> {
    match e {
        MetadataError::Unreadable(e) => w.outage(None, "unreadable_metadata", &e),
        MetadataError::TooLarge => {
            w.err_row(
                None,
                "bad_metadata",
                format!(
                    "metadata XML {} is {} bytes, over the limit; fix the recorder",
                    xml.path.display(),
                    xml.size
                ),
            )?;
            rejected(w, xml)
        }
        MetadataError::NoKey(e) => {
            let desc = format!(
                "no identity for record {}: {e}; add the recorder's age identity to keys_dir",
                xml.path.display()
            );
            if first_report(w.ctx, xml.key, 0) {
                w.err_row(None, "no_identity", desc.clone())?;
            }
            Ok(Outcome::NeedKey(desc))
        }
        MetadataError::Decrypt(e) => {
            // An encrypted XML still being written does not decrypt yet.
            if still_settling(opts, xml.mtime_ns) {
                return Ok(Outcome::Young(e));
            }
            w.err_row(
                None,
                "decrypt_failed",
                format!("cannot decrypt {}: {e}", xml.path.display()),
            )?;
            rejected(w, xml)
        }
    }
}

/// A missing age identity (the key store's `PermissionDenied`), not an
/// EACCES on a spool file (that is transient: retried).
fn is_no_key(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied && !spool::is_transient(e)
}

/// Whether an XML changed so recently that a failure to read it may only
/// mean it is still being written (a scan may meet one mid-write; any read
/// within a moment of its last change may too): then it is looked at again.
fn still_settling(opts: Options, mtime_ns: i64) -> bool {
    settling_at(opts, crate::time::Timestamp::now().0 * 1_000_000 - mtime_ns)
}

/// [`still_settling`] for an XML last changed `age` ns ago.
fn settling_at(opts: Options, age: i64) -> bool {
    (opts.from_scan && age < YOUNG_NS) || age < FRESH_NS
}

/// Step 2: matches the record against the snapshot; a record no policy
/// wants ends with its skip row.
fn match_policies<'s>(
    w: &mut Writer<'_>,
    xml: &XmlRef,
    rec: &Record,
    snap: &'s crate::policy::snapshot::Snapshot,
) -> io::Result<Step<(UserView<'s>, Verdicts)>> {
    let (user, verdicts) = match decide(rec, snap) {
        Decision::Skip(reason, _) => {
            snap.release_pages();
            let mut row = w.base(Some(rec));
            row.action = Action::Skip.as_str();
            row.error_code = reason.code().to_string();
            row.error_desc = reason.describe(rec);
            w.row(row, "")?;
            w.journal(|j| {
                j.record_done(xml.key, xml.size, xml.mtime_ns, journal::Outcome::Skipped)
            })?;
            return Ok(Step::End(Outcome::Finished(journal::Outcome::Skipped)));
        }
        Decision::Policies(u, v) => (u, v),
    };
    // Matching is done: the snapshot pages it touched need not stay mapped.
    snap.release_pages();
    Ok(Step::Next((user, verdicts)))
}

/// Step 3a: the files each taking policy copies; a layout that cannot be
/// made (a name collision) rejects the record.
fn plan(
    w: &mut Writer<'_>,
    xml: &XmlRef,
    rec: &Record,
    verdicts: &Verdicts,
) -> io::Result<Step<Vec<Plan>>> {
    let snap = &w.ctx.snap;
    let mut plans: Vec<Plan> = Vec::new();
    for &(pi, v) in verdicts {
        if v != Verdict::Take {
            continue;
        }
        let p = &snap.policies()[pi].policy;
        match plan_files(
            rec,
            p.settings.decrypt,
            p.settings.im_attachments || rec.modality == Modality::FileShare,
            p.settings.file_extensions.as_deref(),
        ) {
            Ok(plan) => plans.push((pi, plan)),
            Err(e) => {
                for &ti in &snap.policies()[pi].targets {
                    let mut row = w.base(Some(rec));
                    row.action = Action::Error.as_str();
                    row.policy_id = p.id.clone();
                    row.policy_name = p.name.clone();
                    row.dst_folder_type = snap.targets()[ti].kind.as_str().into();
                    row.error_code = "name_collision".into();
                    row.error_desc = e.to_string();
                    w.row(row, &snap.targets()[ti].id)?;
                }
                return rejected(w, xml).map(Step::End);
            }
        }
    }
    Ok(Step::Next(plans))
}

/// The indexes into `record.files` that some plan copies, sorted, once each.
fn needed_files(plans: &[Plan]) -> Vec<usize> {
    let mut needed: Vec<usize> = plans
        .iter()
        .flat_map(|(_, p)| p.iter().map(|f| f.index))
        .collect();
    needed.sort_unstable();
    needed.dedup();
    needed
}

/// Whether the file at `path` (not marked as being written) is open for
/// writing, as `ask` (the kernel) says; if so it stays marked in `writing`,
/// for its close event to clear.
///
/// Marked before it is asked, never after: the close event is handled by
/// the watch room on another thread, and one handled between an answer
/// "open" and the mark would find nothing to clear, leaving the mark (and
/// the record waiting on it) for ever. Marked first, a close before the
/// question gets the answer "closed" (and the mark is taken back); a close
/// after it clears the mark, and the record is woken when it reports.
fn mark_if_written(
    writing: &Mutex<HashSet<PathBuf>>,
    path: &Path,
    ask: impl FnOnce() -> Writers,
) -> bool {
    let set = || writing.lock().unwrap_or_else(|p| p.into_inner());
    let marked = set().insert(path.to_path_buf());
    if ask() == Writers::Some {
        return true;
    }
    if marked {
        set().remove(path);
    }
    false
}

/// Step 3b: checks every needed file is there and closed; ends when some
/// are missing, still being written, unreadable or refused.
fn check_files(
    ctx: &Ctx,
    w: &mut Writer<'_>,
    xml: &XmlRef,
    opts: Options,
    root_canon: &Path,
    rec: &Record,
    plans: &[Plan],
) -> io::Result<Step<()>> {
    let folder = xml.folder();
    let mut missing = Vec::new();
    let mut being_written = Vec::new();
    for i in needed_files(plans) {
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
        match open_in_root(root_canon, &path) {
            // Open for writing somewhere (found before its creation was
            // seen, or a recorder breaking the order of spool.md): waited
            // for until its close event, never copied short.
            Ok(file) => {
                if mark_if_written(&ctx.writing, &path, || lease::writers(&file)) {
                    being_written.push(path);
                }
            }
            Err(OpenError::Missing(p)) => missing.push(p),
            Err(e @ OpenError::Io { .. }) => {
                return Ok(Step::End(w.outage(Some(rec), "source_unavailable", &e)?));
            }
            Err(e @ OpenError::Refused { .. }) => {
                w.err_row(
                    Some(rec),
                    "unsafe_path",
                    format!("{e}; the record is refused"),
                )?;
                return rejected(w, xml).map(Step::End);
            }
        }
    }
    if missing.is_empty() && !being_written.is_empty() {
        // Present but still being written: not missing; waited for until closed.
        return Ok(Step::End(Outcome::Writing(being_written)));
    }
    missing.extend(being_written);
    if missing.is_empty() {
        return Ok(Step::Next(()));
    }
    if opts.grace_expired && first_report(ctx, xml.key, 1) {
        let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        w.err_row(
            Some(rec),
            "incomplete",
            format!(
                "record incomplete after the grace period: missing {}; it is exported when the files appear",
                names.join(", ")
            ),
        )?;
        return Ok(Step::End(Outcome::Incomplete {
            missing,
            reported: true,
        }));
    }
    Ok(Step::End(Outcome::Incomplete {
        missing,
        reported: opts.grace_expired,
    }))
}

/// What the copies of a record came to: the last failure of each kind.
#[derive(Debug, Default)]
struct Copied {
    retry: Option<String>,
    failed: Option<String>,
    need_key: Option<String>,
    /// Some policy took the record to some target.
    any_taken: bool,
}

impl Copied {
    /// The outcome when a copy did not succeed: a transient failure is
    /// retried first, then a missing key waited for, then a refusal.
    fn stop(self) -> Option<Outcome> {
        if let Some(d) = self.retry {
            return Some(Outcome::Retry(d));
        }
        if let Some(d) = self.need_key {
            return Some(Outcome::NeedKey(d));
        }
        self.failed.map(Outcome::Failed)
    }

    /// Notes a failed copy of the kind given.
    fn note(&mut self, kind: FailureKind, desc: String) {
        match kind {
            FailureKind::NeedKey => self.need_key = Some(desc),
            FailureKind::Retry => self.retry = Some(desc),
            FailureKind::Failed => self.failed = Some(desc),
        }
    }
}

/// What a failed copy waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// An age identity.
    NeedKey,
    /// Time (backoff).
    Retry,
    /// A configuration change.
    Failed,
}

/// The error code of a target's failure, and what the copy waits for.
fn classify(e: &TargetError) -> (&'static str, FailureKind) {
    // A spool read error is retried like a target outage.
    let spool_outage = matches!(e, TargetError::Source(s) if spool::is_transient(s));
    let transient = e.is_transient() || spool_outage;
    let (code, keyish) = match e {
        TargetError::Conflict { .. } => ("conflict", false),
        TargetError::Source(_) if spool_outage => ("source_unavailable", false),
        // A way out of the root met while copying (a swap race).
        TargetError::Source(s) if spool::is_refusal(s) => ("unsafe_path", false),
        TargetError::Source(s) if is_no_key(s) => ("no_identity", true),
        TargetError::Source(_) => ("source_failed", false),
        TargetError::Transient(_) => ("target_unavailable", false),
        TargetError::Permanent(_) => ("target_refused", false),
    };
    let kind = if keyish {
        FailureKind::NeedKey
    } else if transient {
        FailureKind::Retry
    } else {
        FailureKind::Failed
    };
    (code, kind)
}

/// Step 4: copies the record to every target of every taking policy (a
/// copy journaled before is not made again); each success is committed
/// (its `export` row, then its journal entry), each failure reported once.
#[allow(clippy::too_many_arguments)]
fn copy_each(
    ctx: &Ctx,
    w: &mut Writer<'_>,
    xml: &XmlRef,
    root_canon: &Path,
    rec: &Record,
    user: &UserView<'_>,
    plans: &[Plan],
    meta: &Metadata,
) -> io::Result<Copied> {
    let snap = &ctx.snap;
    let folder = xml.folder().to_path_buf();
    let mut copied = Copied::default();
    for (pi, plan) in plans {
        let cp = &snap.policies()[*pi];
        let values = Values::of(rec, user.id, &cp.policy.id);
        let dst = cp.template.expand(&values);
        let left_out = extension_left_out(
            rec,
            cp.policy.settings.im_attachments || rec.modality == Modality::FileShare,
            cp.policy.settings.file_extensions.as_deref(),
        );
        for &ti in &cp.targets {
            copied.any_taken = true;
            let spec = &snap.targets()[ti];
            let cid = copy_id(&cp.policy.id, &spec.id);
            if w.journal(|j| Ok(j.has_copy(&xml.key, xml.size, xml.mtime_ns, cid)))? {
                continue;
            }
            let target = &ctx.targets[ti];
            let res = copy_one(
                ctx,
                target.as_ref(),
                root_canon,
                &folder,
                rec,
                cp,
                plan,
                &dst,
                meta,
                user,
            );
            let mut row = w.base(Some(rec));
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
                    row.error_desc = match &left_out {
                        Some(n) if c.detail.is_empty() => n.clone(),
                        Some(n) => format!("{n}. {}", c.detail),
                        None => c.detail,
                    };
                    w.commit_copy(row, &spec.id, xml, cid)?;
                    forget_report(ctx, xml.key, cid);
                }
                Err(CopyError::Target(e)) => {
                    let (code, kind) = classify(&e);
                    let desc = format!("{}: {e}", target.describe(&dst));
                    if first_report(ctx, xml.key, cid) {
                        w.row(error_row(row, code, desc.clone()), &spec.id)?;
                    }
                    copied.note(kind, desc);
                }
                Err(CopyError::Generate(msg)) => {
                    let row = error_row(row, "bad_content", msg.clone());
                    if first_report(ctx, xml.key, cid) {
                        w.row(row, &spec.id)?;
                    }
                    copied.note(FailureKind::Failed, msg);
                }
            }
        }
    }
    Ok(copied)
}

/// `row` made an `error` row with this code and description.
fn error_row(mut row: Row, code: &str, desc: String) -> Row {
    row.action = Action::Error.as_str();
    row.error_code = code.into();
    row.error_desc = desc;
    row
}

/// Step 5: the skip rows of the policies that did not take the record,
/// then its journal entry: exported when some policy took it.
fn commit(
    ctx: &Ctx,
    w: &mut Writer<'_>,
    xml: &XmlRef,
    rec: &Record,
    verdicts: &Verdicts,
    any_taken: bool,
) -> io::Result<Outcome> {
    let snap = &ctx.snap;
    for &(pi, v) in verdicts {
        if v == Verdict::Take {
            continue;
        }
        let cp = &snap.policies()[pi];
        for &ti in &cp.targets {
            let spec = &snap.targets()[ti];
            let mut row = w.base(Some(rec));
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
    Ok(Outcome::Finished(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watch room handles a file's close event (it clears the mark)
    /// while the kernel is being asked, after it answered "open": the mark
    /// must not outlive the event, or the record would wait for ever.
    #[test]
    fn a_close_handled_while_the_kernel_is_asked_leaves_no_mark() {
        let writing = Mutex::new(HashSet::new());
        let p = Path::new("/spool/r/a.wav");
        let closed_meanwhile = || {
            writing.lock().unwrap().remove(p);
            Writers::Some
        };
        assert!(mark_if_written(&writing, p, closed_meanwhile));
        assert!(
            !writing.lock().unwrap().contains(p),
            "a mark set after the close event was handled"
        );
        // Open and not closed: marked, for the close event to clear.
        assert!(mark_if_written(&writing, p, || Writers::Some));
        assert!(writing.lock().unwrap().contains(p));
        // Closed (or unknown): not marked; a mark the watch room set stays.
        let other = Path::new("/spool/r/b.wav");
        assert!(!mark_if_written(&writing, other, || Writers::None));
        assert!(!mark_if_written(&writing, other, || Writers::Unknown));
        assert!(!writing.lock().unwrap().contains(other));
        assert!(!mark_if_written(&writing, p, || Writers::None));
        assert!(writing.lock().unwrap().contains(p));
    }

    #[test]
    fn target_failures_are_classified() {
        let conflict = TargetError::Conflict {
            location: "x".into(),
            existing: "00".into(),
        };
        assert_eq!(classify(&conflict), ("conflict", FailureKind::Failed));
        assert_eq!(
            classify(&TargetError::Transient("down".into())),
            ("target_unavailable", FailureKind::Retry)
        );
        assert_eq!(
            classify(&TargetError::Permanent("no".into())),
            ("target_refused", FailureKind::Failed)
        );
        let no_key = io::Error::new(io::ErrorKind::PermissionDenied, "no identity");
        assert_eq!(
            classify(&TargetError::Source(no_key)),
            ("no_identity", FailureKind::NeedKey)
        );
        let eio = io::Error::from_raw_os_error(5);
        assert_eq!(
            classify(&TargetError::Source(eio)),
            ("source_unavailable", FailureKind::Retry)
        );
        let bad = io::Error::new(io::ErrorKind::InvalidData, "bad age header");
        assert_eq!(
            classify(&TargetError::Source(bad)),
            ("source_failed", FailureKind::Failed)
        );
    }

    #[test]
    fn a_retry_wins_over_a_missing_key_over_a_refusal() {
        let mut c = Copied::default();
        assert_eq!(Copied::default().stop(), None);
        c.note(FailureKind::Failed, "f".into());
        c.note(FailureKind::NeedKey, "k".into());
        assert_eq!(c.stop(), Some(Outcome::NeedKey("k".into())));
        let mut c = Copied::default();
        c.note(FailureKind::Failed, "f".into());
        c.note(FailureKind::Retry, "r".into());
        c.note(FailureKind::NeedKey, "k".into());
        assert_eq!(c.stop(), Some(Outcome::Retry("r".into())));
    }

    #[test]
    fn needed_files_are_sorted_once_each() {
        let f = |index| PlannedFile {
            index,
            out_name: String::new(),
            decrypt: false,
        };
        let plans = vec![(0, vec![f(3), f(1)]), (1, vec![f(1), f(2)])];
        assert_eq!(needed_files(&plans), vec![1, 2, 3]);
    }

    #[test]
    fn a_young_xml_is_looked_at_again() {
        let scan = Options {
            grace_expired: false,
            from_scan: true,
        };
        let event = Options::default();
        assert!(settling_at(event, FRESH_NS - 1));
        assert!(!settling_at(event, FRESH_NS));
        assert!(settling_at(scan, YOUNG_NS - 1));
        assert!(!settling_at(scan, YOUNG_NS));
    }
}
