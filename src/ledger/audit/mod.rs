//! The tamper-evident audit log's appender: chains each row to the last and
//! makes it durable; never appends to an older day file than the newest and
//! never leaves a failed row in a file.
//!
//! On disk (export-layout.md): one `;`-separated CSV file per UTC day under
//! `<state_dir>/audit/`, append-only, every row chained to the previous one
//! by SHA-256.
//!
//! Where each rule lives:
//! - `row`: the row codec and chain hash (pure);
//! - `file`: a day file at the disk: listing, tail check, cut of a torn tail;
//! - `verify`: the read-only check of the whole chain;
//! - this file: [`AuditLog`], which file a row goes to, the lock between
//!   processes, and the repair after a failed write or sync.
//!
//! [`AuditLog`] is the appending edge (one `write` per row, `fdatasync`
//! shared by concurrent rows through [`GroupSync`]). Its doc says which file
//! a row goes to (never an older one than the newest, whatever the clock
//! says), and what happens on a failed write, a failed sync and a torn tail.
//!
//! Fields a spreadsheet would evaluate (starting with `=`, `+`, `-`, `@`, a
//! tab or a carriage return) are written with a leading `'` ([`clean_field`]),
//! before the row is hashed: `audit verify` checks the text as written.

mod file;
mod row;
mod verify;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ledger::group_sync::{GroupSync, Pending};
use crate::time::Timestamp;

pub use file::audit_files;
use file::{
    OPEN_SCAN, Tail, cut_damaged_tail, file_name_of, open_append, scan, tail_before, tail_of,
};
pub use row::{
    Action, GENESIS, HEADER, Row, check_row, clean_field, file_name, folder_digest, row_body,
    sha256_hex,
};
pub use verify::{VerifyReport, verify};

/// Audit log failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O on an audit file.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The chain is broken.
    #[error("{path}:{line}: {why}")]
    Tampered {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What does not match.
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The appending side of the audit log.
///
/// # Which file a row goes to, and where the chain continues
///
/// Rows are appended to the newest audit file (in name order) or to a new
/// one, never to an older one: a row goes to the file of its UTC day, unless
/// the clock stepped back behind the newest file's day, in which case it goes
/// to the newest file (its `ts` stays the clock's reading). So files are
/// always appended to in name order, the chain runs through the files in
/// name order (what `audit verify` walks), and the chain's tail is the last
/// row of the newest file that has rows: it does not depend on the clock.
/// Before the first row of a new file is written, every row of the previous
/// file is made durable, so the rows of two days never reach the disk out of
/// order.
///
/// # Failures
///
/// - A failed or short write (ENOSPC) is cut off again before the error is
///   returned (see [`GroupSync::append`]); the caller retries later and the
///   chain continues from the last row actually in the file.
/// - A failed `fdatasync` fails every append it covered; before the next
///   append the file is cut back to its last durable length and opened again
///   (a new file description), and the chain continues from the last durable
///   row. A failed row is never left in the file to be written again.
/// - At open, the last 4 MiB of the newest file are checked row by row (row
///   hash, chain, trailing newline). A torn or NUL-filled tail (a crash
///   mid-append) is cut back to the last row that checks out and synced;
///   the bytes cut off are kept beside it as `audit-YYYYMMDD.csv.damaged-<offset>`.
///   Rows that verify after a bad line without NUL bytes are not a crash's
///   doing (a row was changed or removed): the log is left as it is and
///   opening fails, naming the file and what to do.
/// - Before each append, the newest file's last line must end with a newline
///   and verify; otherwise the same repair runs (under the lock).
///
/// Other processes (`exportd request submit`) append under the same lock and
/// continue the chain from the file. Known limit: when a sync of this
/// process fails, the cut back to its durable length also removes rows
/// another process appended after its lost rows (they were chained to them).
pub struct AuditLog {
    dir: PathBuf,
    /// `audit/.lock`: appends from several processes (the daemon and
    /// `exportd request submit`) are serialised, and each re-reads the tail
    /// of the chain under the lock.
    lock: File,
    cur: Option<Cur>,
}

/// The file rows are appended to.
struct Cur {
    name: String,
    path: PathBuf,
    file: Arc<File>,
    group: Arc<GroupSync>,
    /// The file's length after this process's last append or check.
    end: u64,
    /// The chain's tail when the file was `end` bytes long.
    last_hash: String,
}

impl AuditLog {
    /// Opens `<state_dir>/audit`, checks and repairs the newest file's tail
    /// (see the type's doc) and picks up the chain where it ends.
    pub fn open(state_dir: &Path) -> Result<AuditLog, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = state_dir.join("audit");
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            // The folder's own entry, so its files cannot vanish with it.
            crate::sink::fs::sync_dir(state_dir).map_err(io_err(state_dir))?;
        }
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let mut log = AuditLog {
            dir,
            lock,
            cur: None,
        };
        log.locked(|log| {
            let files = audit_files(&log.dir)?;
            if let Some(newest) = files.last() {
                let name = file_name_of(newest);
                log.check_file(&files, &name, true)?;
            }
            Ok(())
        })?;
        Ok(log)
    }

    /// The folder holding the audit files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn locked<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        rustix::fs::flock(&self.lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            AuditError::Io {
                path: self.dir.join(".lock"),
                source: e.into(),
            }
        })?;
        let r = f(self);
        let _ = rustix::fs::flock(&self.lock, rustix::fs::FlockOperation::Unlock);
        r
    }

    /// Appends one row stamped now and makes it durable.
    pub fn append(&mut self, row: &Row) -> Result<String, AuditError> {
        self.append_at(Timestamp::now(), row)
    }

    /// Appends one row with the given timestamp and makes it durable.
    pub fn append_at(&mut self, ts: Timestamp, row: &Row) -> Result<String, AuditError> {
        let (hash, pending) = self.append_deferred(ts, row)?;
        let path = self.cur.as_ref().map(|c| c.path.clone());
        pending.wait().map_err(|source| AuditError::Io {
            path: path.unwrap_or_else(|| self.dir.clone()),
            source,
        })?;
        Ok(hash)
    }

    /// Appends one row (written, chained) and returns its hash and the
    /// fdatasync to wait on before relying on it; the wait can be done
    /// outside any lock, so concurrent appends share one sync. A failed wait
    /// means the row is not in the log (it is cut off before the next
    /// append): write it again.
    pub fn append_deferred(
        &mut self,
        ts: Timestamp,
        row: &Row,
    ) -> Result<(String, Pending), AuditError> {
        self.locked(|log| log.append_locked(ts, row))
    }

    /// Makes `name` (the newest file) the current file, checking its tail
    /// again unless it is as this process's last append or check left it
    /// (another process, or a failed sync, may have changed it).
    fn ensure_current(&mut self, files: &[PathBuf], name: &str) -> Result<(), AuditError> {
        let fresh = self
            .cur
            .as_ref()
            .is_some_and(|c| c.name == name && c.file.metadata().is_ok_and(|m| m.len() == c.end));
        if !fresh {
            self.check_file(files, name, false)?;
        }
        Ok(())
    }

    /// Makes `name` (the newest file) the current file: opens it if needed,
    /// checks its tail (row by row over the last [`OPEN_SCAN`] bytes when
    /// `deep`), repairs a torn one, and learns the chain's tail.
    fn check_file(&mut self, files: &[PathBuf], name: &str, deep: bool) -> Result<(), AuditError> {
        let path = self.dir.join(name);
        let reuse = self.cur.as_ref().is_some_and(|c| c.name == name);
        let (mut file, mut group) = match self.cur.take() {
            Some(c) if reuse => (c.file, c.group),
            _ => {
                let f = open_append(&path, false).map_err(io_err(&path))?;
                // What is in it now is made durable before it is counted so:
                // the repair after a failed sync cuts back to this length.
                f.sync_data().map_err(io_err(&path))?;
                let len = f.metadata().map_err(io_err(&path))?.len();
                (Arc::new(f), GroupSync::with_len(len))
            }
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        let mut tail = tail_of(&file, len).map_err(io_err(&path))?;
        if deep || tail == Tail::Damaged || tail == Tail::Empty {
            let s = scan(&file, len.saturating_sub(OPEN_SCAN)).map_err(io_err(&path))?;
            if s.good_end < len || tail == Tail::Empty {
                cut_damaged_tail(&self.dir, &path, &file, len, &s)?;
                // A new description and tracker for the cut file.
                file = Arc::new(open_append(&path, false).map_err(io_err(&path))?);
                let len = file.metadata().map_err(io_err(&path))?.len();
                group = GroupSync::with_len(len);
                tail = tail_of(&file, len).map_err(io_err(&path))?;
            }
        }
        let idx = files
            .iter()
            .position(|p| file_name_of(p) == name)
            .unwrap_or(files.len());
        let last_hash = match tail {
            Tail::Row(h) => h,
            Tail::HeaderOnly => tail_before(files, idx)?,
            Tail::Empty | Tail::Damaged => {
                return Err(AuditError::Tampered {
                    path,
                    line: 0,
                    why: "the file's end could not be repaired".into(),
                });
            }
        };
        let end = file.metadata().map_err(io_err(&path))?.len();
        self.cur = Some(Cur {
            name: name.to_string(),
            path,
            file,
            group,
            end,
            last_hash,
        });
        Ok(())
    }

    fn append_locked(&mut self, ts: Timestamp, row: &Row) -> Result<(String, Pending), AuditError> {
        // A failed sync: cut back to the durable length and open the file
        // again before anything else is written.
        if let Some(c) = &self.cur {
            if let Some(why) = c.group.poisoned() {
                c.group.repair(&c.file).map_err(io_err(&c.path))?;
                tracing::warn!(
                    "audit log {}: cut back to its last durable length after a failed fdatasync ({why})",
                    c.path.display()
                );
                self.cur = None;
            }
        }
        let files = audit_files(&self.dir)?;
        let want = file_name(ts);
        let newest = files.last().map(|p| file_name_of(p));
        match newest {
            Some(n) if n >= want => self.ensure_current(&files, &n)?,
            _ => self.start_file(&files, &want)?,
        }
        let Some(cur) = self.cur.as_mut() else {
            return Err(AuditError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no audit file open"),
            });
        };
        let body = row_body(ts, row, &cur.last_hash);
        let hash = sha256_hex(body.as_bytes());
        let line = format!("{body};{hash}\n");
        // Written only if the file is still what the row was chained to (a
        // sync that failed since the check above makes this fail: the next
        // append repairs first).
        let pending = cur
            .group
            .append_exact(&cur.file, line.as_bytes(), cur.end)
            .map_err(io_err(&cur.path))?;
        // The row is written: an error from here on would have it written
        // twice. An unknown length only makes the next append check the tail.
        cur.end = cur.file.metadata().map_or(u64::MAX, |m| m.len());
        cur.last_hash = hash.clone();
        Ok((hash, pending))
    }

    /// Starts the file `name` (newer than every existing one): the previous
    /// newest file's rows are made durable first, then the new file gets
    /// its header and its folder entry is synced.
    fn start_file(&mut self, files: &[PathBuf], name: &str) -> Result<(), AuditError> {
        let prev = match files.last() {
            Some(p) => {
                self.ensure_current(files, &file_name_of(p))?;
                let Some(c) = self.cur.as_ref() else {
                    return Err(AuditError::Io {
                        path: p.clone(),
                        source: io::Error::other("no audit file open"),
                    });
                };
                // Rows of the old day (also those other processes
                // appended) are durable before any row of the new one.
                c.group.flush(&c.file).map_err(io_err(&c.path))?;
                c.last_hash.clone()
            }
            None => GENESIS.to_string(),
        };
        let path = self.dir.join(name);
        let file = open_append(&path, true).map_err(io_err(&path))?;
        let header = format!("{HEADER}\n");
        if let Err(e) = (&file)
            .write_all(header.as_bytes())
            .and_then(|()| file.sync_all())
        {
            let _ = fs::remove_file(&path);
            return Err(io_err(&path)(e));
        }
        crate::sink::fs::sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.cur = Some(Cur {
            name: name.to_string(),
            path,
            file: Arc::new(file),
            group: GroupSync::with_len(header.len() as u64),
            end: header.len() as u64,
            last_hash: prev,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
