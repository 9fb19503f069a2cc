//! The commit of an export's outcome: each audit row made durable before
//! what depends on it, an `export` row before its journal entry. Never
//! copies a file and never decides what a record means.

use std::io;

use crate::export::{Ctx, Outcome, Tally};
use crate::ledger::audit::{Action, Row};
use crate::ledger::journal::{self, FileStore, Journal, PathKey, RowHash};
use crate::record::Record;
use crate::watch::spool::XmlRef;

/// The `reported` slot of a spool read outage (the XML or a listed file):
/// one error row per outage, cleared when the record is finished.
pub(super) const SPOOL_OUTAGE: u64 = 2;

/// Writes one record's audit rows and journal entries, and counts the rows.
pub(super) struct Writer<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) xml: &'a XmlRef,
    pub(super) tallies: Vec<Tally>,
}

impl Writer<'_> {
    pub(super) fn row(&mut self, row: Row, target_id: &str) -> io::Result<()> {
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
            desc: row.error_desc.clone(),
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
    pub(super) fn commit_copy(
        &mut self,
        row: Row,
        target_id: &str,
        xml: &XmlRef,
        cid: u64,
    ) -> io::Result<()> {
        let text = crate::ledger::audit::row_body(crate::time::Timestamp(0), &row, "");
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

    pub(super) fn base(&self, r: Option<&Record>) -> Row {
        Row {
            ccdr_id: r.map(|r| r.id.clone()).unwrap_or_default(),
            native_id: r.map(|r| r.native_id.clone()).unwrap_or_default(),
            src_folder_path: self.xml.folder().display().to_string(),
            ..Row::default()
        }
    }

    pub(super) fn journal<T>(
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

    /// Writes an `error` row about the record (no policy, no target).
    pub(super) fn err_row(
        &mut self,
        r: Option<&Record>,
        code: &str,
        desc: String,
    ) -> io::Result<()> {
        let mut row = self.base(r);
        row.action = Action::Error.as_str();
        row.error_code = code.to_string();
        row.error_desc = desc;
        self.row(row, "")
    }

    /// A spool file that cannot be read now (EACCES, EIO, ESTALE, a root
    /// not mounted...): one error row per outage, retried with backoff,
    /// never journaled as a verdict on the record.
    pub(super) fn outage(
        &mut self,
        r: Option<&Record>,
        code: &str,
        e: &dyn std::fmt::Display,
    ) -> io::Result<Outcome> {
        let desc = format!("{e}");
        if first_report(self.ctx, self.xml.key, SPOOL_OUTAGE) {
            self.err_row(r, code, desc.clone())?;
        }
        Ok(Outcome::Retry(desc))
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

/// Journals this version of the record as rejected (its error row is
/// written), so it is not taken up again until its XML changes.
pub(super) fn rejected(w: &Writer<'_>, xml: &XmlRef) -> io::Result<Outcome> {
    w.journal(|j| j.record_done(xml.key, xml.size, xml.mtime_ns, journal::Outcome::Rejected))?;
    Ok(Outcome::Finished(journal::Outcome::Rejected))
}

/// Whether this is the first report of a failure (slot `cid` of the
/// record): one error row per failure until it is over.
pub(super) fn first_report(ctx: &Ctx, key: PathKey, cid: u64) -> bool {
    ctx.reported
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((key, cid))
}

/// The failure in slot `cid` of the record is over.
pub(super) fn forget_report(ctx: &Ctx, key: PathKey, cid: u64) {
    ctx.reported
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(key, cid));
}
