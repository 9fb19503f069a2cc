//! The tamper-evident audit log (export-layout.md): one `;`-separated CSV
//! file per UTC day under `<state_dir>/audit/`, append-only, every row
//! chained to the previous one by SHA-256.
//!
//! Row formatting, hashing and verification are pure; [`AuditLog`] is the
//! appending edge (one `write` per row, `fdatasync` shared by concurrent
//! rows through [`GroupSync`]). Its doc says which file a row goes to (never
//! an older one than the newest, whatever the clock says), and what happens
//! on a failed write, a failed sync and a torn tail.
//!
//! Fields a spreadsheet would evaluate (starting with `=`, `+`, `-`, `@`, a
//! tab or a carriage return) are written with a leading `'` ([`clean_field`]),
//! before the row is hashed: `audit verify` checks the text as written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::group_sync::{GroupSync, Pending};
use crate::time::Timestamp;

/// The header line of every audit file.
pub const HEADER: &str = "ts;ccdr_id;native_id;n_files;bytes;src_folder_path;policy_id;policy_name;dst_folder_type;dst_folder_path;action;error_code;error_desc;sha256;prev_hash;row_hash";

/// The `prev_hash` of the very first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A copy was written (or was already there).
    Export,
    /// Not due: imported, `bt_its`, no user, filtered.
    Skip,
    /// Failed; `error_code`/`error_desc` say why.
    Error,
    /// A configuration bundle was applied or rejected.
    Config,
    /// A compliance export request changed state.
    Request,
}

impl Action {
    /// The log's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Export => "export",
            Action::Skip => "skip",
            Action::Error => "error",
            Action::Config => "config",
            Action::Request => "request",
        }
    }
}

/// One row's content (without the chain fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Record id, or config version, or request id.
    pub ccdr_id: String,
    /// The record's native id.
    pub native_id: String,
    /// Files written to the folder.
    pub n_files: u64,
    /// Bytes written to the folder.
    pub bytes: u64,
    /// Absolute folder of the record's XML.
    pub src_folder_path: String,
    /// Policy id.
    pub policy_id: String,
    /// Policy name.
    pub policy_name: String,
    /// Target kind (`fs`, `s3`).
    pub dst_folder_type: String,
    /// Record folder relative to the target root.
    pub dst_folder_path: String,
    /// Action (`export`, `skip`, ...); use [`Action::as_str`].
    pub action: &'static str,
    /// Short machine-readable code.
    pub error_code: String,
    /// What happened, for a person.
    pub error_desc: String,
    /// SHA-256 of the folder's `sha256sum` listing.
    pub sha256: String,
}

/// Replaces `;`, CR and LF by a space so a field never breaks the row, and
/// neutralises a field a spreadsheet would evaluate as a formula (OWASP's
/// CSV injection advice): one starting with `=`, `+`, `-`, `@`, a tab or a
/// carriage return gets a leading `'`.
pub fn clean_field(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        out.push('\'');
    }
    out.extend(s.chars().map(|c| {
        if c == ';' || c == '\n' || c == '\r' {
            ' '
        } else {
            c
        }
    }));
    out
}

/// Formats the row text up to and including `prev_hash` (what `row_hash` covers).
pub fn row_body(ts: Timestamp, r: &Row, prev_hash: &str) -> String {
    let f = [
        ts.recorder().to_string(),
        clean_field(&r.ccdr_id),
        clean_field(&r.native_id),
        r.n_files.to_string(),
        r.bytes.to_string(),
        clean_field(&r.src_folder_path),
        clean_field(&r.policy_id),
        clean_field(&r.policy_name),
        clean_field(&r.dst_folder_type),
        clean_field(&r.dst_folder_path),
        r.action.to_string(),
        clean_field(&r.error_code),
        clean_field(&r.error_desc),
        clean_field(&r.sha256),
        prev_hash.to_string(),
    ];
    f.join(";")
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &[u8]) -> String {
    hex::encode(Sha256::digest(text))
}

/// The `sha256sum`-style listing of a folder's files (sorted by name) and its hash.
pub fn folder_digest(files: &mut [(String, [u8; 32])]) -> (String, String) {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut listing = String::new();
    for (name, h) in files.iter() {
        listing.push_str(&hex::encode(h));
        listing.push_str("  ");
        listing.push_str(name);
        listing.push('\n');
    }
    let h = sha256_hex(listing.as_bytes());
    (listing, h)
}

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

/// The audit files in `dir`, oldest first.
pub fn audit_files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut v = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("audit-") && name.ends_with(".csv") && name.len() == 18 {
            // Not followed, not opened: a link, FIFO or folder under an
            // audit file's name would make the log unreadable (or hang it).
            let ft = e.file_type().map_err(io_err(&e.path()))?;
            if !ft.is_file() {
                return Err(AuditError::Io {
                    path: e.path(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not a regular file (a symlink, FIFO or folder under an audit file's name); move it away",
                    ),
                });
            }
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// The longest line the tail check and the repair read as one row; a longer
/// "line" is damage.
const MAX_LINE: usize = 1 << 20;

/// How much of the newest file's end is checked row by row at open (the
/// appends a crash can have left unsynced are far fewer).
const OPEN_SCAN: u64 = 4 << 20;

/// Checks one line (without its `\n`) as a data row: 16 fields, a valid
/// timestamp and a `row_hash` that is the SHA-256 of the rest. Returns its
/// `prev_hash` and `row_hash`.
pub fn check_row(line: &[u8]) -> Option<(&str, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    let (body, hash) = line.rsplit_once(';')?;
    let (_, prev) = body.rsplit_once(';')?;
    if body.split(';').count() != 15 || hash.len() != 64 || prev.len() != 64 {
        return None;
    }
    let ts = body.split(';').next()?;
    if Timestamp::parse_recorder(ts).is_err() || sha256_hex(body.as_bytes()) != hash {
        return None;
    }
    Some((prev, hash))
}

/// The audit file name of the UTC day of `ts`.
pub fn file_name(ts: Timestamp) -> String {
    let c = ts.civil();
    format!("audit-{:04}{:02}{:02}.csv", c.year, c.month, c.day)
}

/// `Read` at an explicit offset of a shared descriptor (its position is
/// the appender's).
struct At<'a> {
    f: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The end of an audit file, as the quick check before an append sees it.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// Nothing, not even the header (a crash right after creating it).
    Empty,
    /// The header and no row.
    HeaderOnly,
    /// The last row, complete and verifying; its `row_hash`.
    Row(String),
    /// No trailing newline, or a last line that is not a row that verifies.
    Damaged,
}

/// Reads the last line of `f` (`len` bytes long) without reading the rest.
fn tail_of(f: &File, len: u64) -> io::Result<Tail> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Ok(Tail::Empty);
    }
    let back = len.min(MAX_LINE as u64 + 1);
    let mut buf = vec![0u8; back as usize];
    f.read_exact_at(&mut buf, len - back)?;
    let Some(body) = buf.strip_suffix(b"\n") else {
        return Ok(Tail::Damaged);
    };
    let (start, line) = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => (len - back + i as u64 + 1, &body[i + 1..]),
        None if back == len => (0, body),
        None => return Ok(Tail::Damaged),
    };
    if start == 0 {
        return Ok(if line == HEADER.as_bytes() {
            Tail::HeaderOnly
        } else {
            Tail::Damaged
        });
    }
    Ok(match check_row(line) {
        Some((_, h)) => Tail::Row(h.to_string()),
        None => Tail::Damaged,
    })
}

/// What a row-by-row check of a file's end found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    /// Length of the prefix that checks out (header, rows that verify and
    /// chain to each other), ending on a newline.
    good_end: u64,
    /// The last good row's hash (None: no row in the checked part).
    last_hash: Option<String>,
    /// Complete lines after the first bad one that verify on their own.
    rows_after_bad: usize,
    /// The bad part holds NUL bytes (blocks a crash left unwritten).
    nul_in_bad: bool,
}

/// Checks `f` row by row from `from` (0: from the header; otherwise from
/// the first line that starts after `from`, whose `prev_hash` is taken as
/// it is).
fn scan(f: &File, from: u64) -> io::Result<Scan> {
    let mut rd = io::BufReader::with_capacity(64 * 1024, At { f, pos: from });
    let mut raw = Vec::new();
    let mut off = from;
    if from > 0 {
        let n = (&mut rd)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut raw)?;
        off += n as u64;
    }
    let mut s = Scan {
        good_end: off,
        ..Scan::default()
    };
    let mut first = from == 0;
    let mut bad = false;
    loop {
        raw.clear();
        let n = (&mut rd)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut raw)?;
        if n == 0 {
            break;
        }
        let complete = raw.last() == Some(&b'\n');
        let line = if complete { &raw[..n - 1] } else { &raw[..] };
        if !bad {
            let ok = complete
                && if first {
                    line == HEADER.as_bytes()
                } else {
                    match check_row(line) {
                        Some((prev, h)) if s.last_hash.as_deref().is_none_or(|l| l == prev) => {
                            s.last_hash = Some(h.to_string());
                            true
                        }
                        _ => false,
                    }
                };
            if ok {
                s.good_end = off + n as u64;
            } else {
                bad = true;
            }
        }
        if bad {
            s.nul_in_bad |= raw.contains(&0);
            // Counts the first bad line too when it verifies on its own but
            // does not chain (a row before it was removed).
            if complete && check_row(line).is_some() {
                s.rows_after_bad += 1;
            }
        }
        first = false;
        off += n as u64;
    }
    Ok(s)
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

fn open_append(path: &Path, create_new: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if create_new {
        o.create_new(true).mode(0o640);
    }
    o.open(path)
}

/// Creates the file keeping a cut-off tail: never through a link, never
/// over an earlier one (`-1`, `-2`, ... when the name is taken).
fn create_aside(want: &Path) -> Result<(PathBuf, File), AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut p = want.to_path_buf();
    for n in 1..=100 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
        {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                p = want.with_file_name(format!("{}-{n}", file_name_of(want)));
            }
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    Err(io_err(want)(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "100 earlier copies of cut-off tails are in the way; move them away",
    )))
}

fn file_name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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
            crate::target::fs::sync_dir(state_dir).map_err(io_err(state_dir))?;
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

    /// The chain's tail before file `files[idx]`: the last row of the newest
    /// earlier file that has rows (GENESIS when none).
    fn tail_before(files: &[PathBuf], idx: usize) -> Result<String, AuditError> {
        for p in files[..idx].iter().rev() {
            let f = File::open(p).map_err(io_err(p))?;
            let len = f.metadata().map_err(io_err(p))?.len();
            match tail_of(&f, len).map_err(io_err(p))? {
                Tail::Row(h) => return Ok(h),
                Tail::HeaderOnly => continue,
                Tail::Empty | Tail::Damaged => {
                    return Err(AuditError::Tampered {
                        path: p.clone(),
                        line: 0,
                        why: "an earlier audit file does not end in a complete row that verifies; it is not repaired automatically: run `exportd audit verify` and restore the file".into(),
                    });
                }
            }
        }
        Ok(GENESIS.to_string())
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
                self.repair(&path, &file, len, &s)?;
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
            Tail::HeaderOnly => Self::tail_before(files, idx)?,
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

    /// Cuts a damaged tail (see the type's doc), keeping the cut bytes
    /// beside the file, then syncs.
    fn repair(&self, path: &Path, file: &File, len: u64, s: &Scan) -> Result<(), AuditError> {
        if s.rows_after_bad > 0 && !s.nul_in_bad {
            return Err(AuditError::Tampered {
                path: path.to_path_buf(),
                line: 0,
                why: format!(
                    "byte {}: a line that does not verify is followed by {} row(s) that do: not a torn tail but a changed or removed row; the log was left as it is. Run `exportd audit verify` for the line, keep the file as evidence, and restore it from a copy before starting again",
                    s.good_end, s.rows_after_bad
                ),
            });
        }
        if len > s.good_end {
            let aside =
                path.with_file_name(format!("{}.damaged-{}", file_name_of(path), s.good_end));
            let (aside, mut out) = create_aside(&aside)?;
            io::copy(
                &mut At {
                    f: file,
                    pos: s.good_end,
                }
                .take(len - s.good_end),
                &mut out,
            )
            .and_then(|_| out.sync_all())
            .map_err(io_err(&aside))?;
            tracing::warn!(
                "audit log {}: cut a damaged tail of {} bytes after byte {} (a crash or a full disk mid-append{}); the bytes are kept in {}",
                path.display(),
                len - s.good_end,
                s.good_end,
                if s.rows_after_bad > 0 {
                    format!(
                        ", with {} unsynced row(s) behind a block the crash left unwritten",
                        s.rows_after_bad
                    )
                } else {
                    String::new()
                },
                aside.display()
            );
        }
        // The kept bytes' folder entry before the cut.
        crate::target::fs::sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        let fix = || -> io::Result<()> {
            file.set_len(s.good_end)?;
            if s.good_end == 0 {
                (&*file).write_all(format!("{HEADER}\n").as_bytes())?;
            }
            file.sync_all()
        };
        fix().map_err(io_err(path))
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
            Some(n) if n >= want => {
                let fresh = self.cur.as_ref().is_some_and(|c| {
                    c.name == n && c.file.metadata().is_ok_and(|m| m.len() == c.end)
                });
                if !fresh {
                    self.check_file(&files, &n, false)?;
                }
            }
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
                let pname = file_name_of(p);
                let fresh = self.cur.as_ref().is_some_and(|c| {
                    c.name == pname && c.file.metadata().is_ok_and(|m| m.len() == c.end)
                });
                if !fresh {
                    self.check_file(files, &pname, false)?;
                }
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
        crate::target::fs::sync_dir(&self.dir).map_err(io_err(&self.dir))?;
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

/// Summary of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files checked.
    pub files: usize,
    /// Rows checked.
    pub rows: usize,
    /// Last row hash.
    pub last_hash: String,
}

/// Verifies every audit file in `<state_dir>/audit`: headers, field counts,
/// each `row_hash`, and the `prev_hash` chain across rows and days. Returns
/// the first bad line.
pub fn verify(state_dir: &Path) -> Result<VerifyReport, AuditError> {
    let dir = state_dir.join("audit");
    let files = audit_files(&dir)?;
    let mut prev = GENESIS.to_string();
    let mut rows = 0;
    for path in &files {
        let f = File::open(path).map_err(io_err(path))?;
        let mut rd = BufReader::new(f);
        let mut raw = Vec::new();
        let mut lineno = 0;
        loop {
            raw.clear();
            let n = (&mut rd)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut raw)
                .map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            lineno += 1;
            let bad = |why: String| AuditError::Tampered {
                path: path.clone(),
                line: lineno,
                why,
            };
            if raw.last() != Some(&b'\n') {
                return Err(bad("the line is not terminated (truncated file?)".into()));
            }
            let line = std::str::from_utf8(&raw[..raw.len() - 1])
                .map_err(|_| bad("the line is not UTF-8".into()))?;
            if lineno == 1 {
                if line != HEADER {
                    return Err(bad("the header line is missing or changed".into()));
                }
                continue;
            }
            let fields: Vec<&str> = line.split(';').collect();
            if fields.len() != 16 {
                return Err(bad(format!("expected 16 fields, found {}", fields.len())));
            }
            if fields[14] != prev {
                return Err(bad(format!(
                    "prev_hash {} does not match the previous row's hash {prev} (a row was removed, reordered or changed)",
                    fields[14]
                )));
            }
            let (body, hash) = line.rsplit_once(';').unwrap_or((line, ""));
            let want = sha256_hex(body.as_bytes());
            if hash != want {
                return Err(bad(
                    "row_hash does not match the row's content (row changed)".into(),
                ));
            }
            if Timestamp::parse_recorder(fields[0]).is_err() {
                return Err(bad("bad timestamp".into()));
            }
            prev = want;
            rows += 1;
        }
        if lineno == 0 {
            return Err(AuditError::Tampered {
                path: path.clone(),
                line: 1,
                why: "empty audit file (header missing)".into(),
            });
        }
    }
    Ok(VerifyReport {
        files: files.len(),
        rows,
        last_hash: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> Row {
        Row {
            ccdr_id: id.into(),
            native_id: "n;1\nx".into(),
            n_files: 2,
            bytes: 10,
            action: Action::Export.as_str(),
            ..Row::default()
        }
    }

    #[test]
    fn chain_across_days_and_tamper_detection() {
        let d = std::env::temp_dir().join(format!("exportd-audit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let mut log = AuditLog::open(&d).unwrap();
        let t1 = Timestamp::parse_recorder("2026.11.21 23:59:59.000").unwrap();
        let t2 = Timestamp::parse_recorder("2026.11.22 00:00:01.000").unwrap();
        let h1 = log.append_at(t1, &row("a")).unwrap();
        log.append_at(t1, &row("b")).unwrap();
        drop(log);
        let mut log = AuditLog::open(&d).unwrap();
        log.append_at(t2, &row("c")).unwrap();
        let rep = verify(&d).unwrap();
        assert_eq!((rep.files, rep.rows), (2, 3));
        let f1 = d.join("audit/audit-20261121.csv");
        let text = fs::read_to_string(&f1).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains(&format!("{GENESIS};{h1}"))
        );
        assert!(text.contains(";n 1 x;"), "{text}");
        // one-byte tamper
        let mut b = fs::read(&f1).unwrap();
        let pos = text.find(";a;").unwrap() + 1;
        b[pos] = b'z';
        fs::write(&f1, &b).unwrap();
        match verify(&d) {
            Err(AuditError::Tampered { path, line, .. }) => {
                assert_eq!(path, f1);
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
        // removal of a row
        b[pos] = b'a';
        let t = String::from_utf8(b).unwrap();
        let mut lines: Vec<&str> = t.lines().collect();
        lines.remove(1);
        fs::write(&f1, lines.join("\n") + "\n").unwrap();
        assert!(matches!(
            verify(&d),
            Err(AuditError::Tampered { line: 2, .. })
        ));
        let _ = fs::remove_dir_all(&d);
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_recorder(s).unwrap()
    }

    fn file(d: &Path, day: &str) -> PathBuf {
        d.join(format!("audit/audit-{day}.csv"))
    }

    fn ids(d: &Path) -> Vec<String> {
        let mut v = Vec::new();
        for p in audit_files(&d.join("audit")).unwrap() {
            for l in fs::read_to_string(&p).unwrap().lines().skip(1) {
                v.push(l.split(';').nth(1).unwrap().to_string());
            }
        }
        v
    }

    fn append_bytes(p: &Path, b: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(b).unwrap();
    }

    #[test]
    fn a_torn_row_is_cut_at_open_and_kept_aside() {
        let d = tempfile::tempdir().unwrap();
        let t = ts("2026.11.21 10:00:00.000");
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(t, &row("a")).unwrap();
        log.append_at(t, &row("b")).unwrap();
        drop(log);
        let f = file(d.path(), "20261121");
        let good = fs::read(&f).unwrap();
        // A crash (or ENOSPC) mid-append: half a row, no newline.
        append_bytes(&f, b"2026.11.21 10:00:01.000;c;n 1 x;2;10;;;");
        let mut log = AuditLog::open(d.path()).unwrap();
        assert_eq!(fs::read(&f).unwrap(), good, "cut back to the last good row");
        let aside = d
            .path()
            .join(format!("audit/audit-20261121.csv.damaged-{}", good.len()));
        assert_eq!(
            fs::read(&aside).unwrap(),
            b"2026.11.21 10:00:01.000;c;n 1 x;2;10;;;"
        );
        log.append_at(t, &row("c")).unwrap();
        assert_eq!(verify(d.path()).unwrap().rows, 3);
        assert_eq!(ids(d.path()), ["a", "b", "c"]);
    }

    #[test]
    fn a_zero_filled_tail_is_cut_at_open() {
        let d = tempfile::tempdir().unwrap();
        let t = ts("2026.11.21 10:00:00.000");
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(t, &row("a")).unwrap();
        drop(log);
        let f = file(d.path(), "20261121");
        let good = fs::read(&f).unwrap();
        // The size reached the disk, the data blocks did not.
        append_bytes(&f, &[0u8; 5000]);
        let mut log = AuditLog::open(d.path()).unwrap();
        assert_eq!(fs::read(&f).unwrap(), good);
        log.append_at(t, &row("b")).unwrap();
        assert_eq!(verify(d.path()).unwrap().rows, 2);
    }

    #[test]
    fn unsynced_rows_behind_a_lost_block_are_cut_at_open() {
        let d = tempfile::tempdir().unwrap();
        let t = ts("2026.11.21 10:00:00.000");
        let mut log = AuditLog::open(d.path()).unwrap();
        for id in ["a", "b", "c", "d"] {
            log.append_at(t, &row(id)).unwrap();
        }
        drop(log);
        // Power cut with c and d unsynced: c's block never written (NULs),
        // d's block was.
        let f = file(d.path(), "20261121");
        let text = fs::read_to_string(&f).unwrap();
        let c_at = text.find("\n2026.11.21 10:00:00.000;c;").unwrap() + 1;
        let c_end = c_at + text[c_at..].find('\n').unwrap() + 1;
        let mut b = text.clone().into_bytes();
        b[c_at..c_end - 1].fill(0);
        fs::write(&f, &b).unwrap();
        let mut log = AuditLog::open(d.path()).unwrap();
        assert_eq!(fs::read(&f).unwrap(), &text.as_bytes()[..c_at]);
        log.append_at(t, &row("e")).unwrap();
        verify(d.path()).unwrap();
        assert_eq!(ids(d.path()), ["a", "b", "e"]);
    }

    #[test]
    fn a_changed_row_followed_by_good_rows_is_not_cut() {
        let d = tempfile::tempdir().unwrap();
        let t = ts("2026.11.21 10:00:00.000");
        let mut log = AuditLog::open(d.path()).unwrap();
        for id in ["a", "b", "c"] {
            log.append_at(t, &row(id)).unwrap();
        }
        drop(log);
        let f = file(d.path(), "20261121");
        let text = fs::read_to_string(&f).unwrap();
        let changed = text.replace(";b;", ";B;");
        fs::write(&f, &changed).unwrap();
        match AuditLog::open(d.path()) {
            Err(AuditError::Tampered { why, .. }) => {
                assert!(why.contains("left as it is"), "{why}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a changed row must not be repaired away"),
        }
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            changed,
            "evidence untouched"
        );
        // A removed row (the chain breaks, every row verifies on its own).
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        fs::write(&f, lines.join("\n") + "\n").unwrap();
        assert!(matches!(
            AuditLog::open(d.path()),
            Err(AuditError::Tampered { .. })
        ));
    }

    #[test]
    fn a_torn_header_is_written_again() {
        let d = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(ts("2026.11.21 10:00:00.000"), &row("a"))
            .unwrap();
        drop(log);
        // The next day's file was created, its header torn.
        fs::write(file(d.path(), "20261122"), &HEADER.as_bytes()[..20]).unwrap();
        let mut log = AuditLog::open(d.path()).unwrap();
        assert_eq!(
            fs::read_to_string(file(d.path(), "20261122")).unwrap(),
            format!("{HEADER}\n")
        );
        log.append_at(ts("2026.11.22 10:00:00.000"), &row("b"))
            .unwrap();
        // An empty file (crash between create and header) the same.
        fs::write(file(d.path(), "20261123"), b"").unwrap();
        drop(log);
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(ts("2026.11.23 10:00:00.000"), &row("c"))
            .unwrap();
        let rep = verify(d.path()).unwrap();
        assert_eq!((rep.files, rep.rows), (3, 3));
    }

    #[test]
    fn a_failed_sync_is_cut_off_and_the_chain_continues_from_the_durable_row() {
        let d = tempfile::tempdir().unwrap();
        let t = ts("2026.11.21 10:00:00.000");
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(t, &row("a")).unwrap();
        let (_, pb) = log.append_deferred(t, &row("b")).unwrap();
        let (_, pc) = log.append_deferred(t, &row("c")).unwrap();
        assert!(pb.wait_with(|_| Err(io::Error::other("EIO"))).is_err());
        // c was covered by the failed sync: never durable.
        assert!(pc.wait().is_err());
        // The next append cuts b and c off and chains to a.
        log.append_at(t, &row("d")).unwrap();
        assert_eq!(ids(d.path()), ["a", "d"]);
        verify(d.path()).unwrap();
        // b and c are written again by their callers: once each.
        log.append_at(t, &row("b")).unwrap();
        log.append_at(t, &row("c")).unwrap();
        assert_eq!(ids(d.path()), ["a", "d", "b", "c"]);
        assert_eq!(verify(d.path()).unwrap().rows, 4);
    }

    #[test]
    fn a_clock_stepped_back_keeps_appending_to_the_newest_file() {
        let d = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(ts("2026.11.22 00:00:05.000"), &row("a"))
            .unwrap();
        // NTP steps the clock back across midnight; the RTC of a board
        // without battery restarts in 2020.
        log.append_at(ts("2026.11.21 23:59:58.000"), &row("b"))
            .unwrap();
        drop(log);
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(ts("2020.01.01 00:00:03.000"), &row("c"))
            .unwrap();
        assert!(!file(d.path(), "20261121").exists());
        assert!(!file(d.path(), "20200101").exists());
        // The clock comes back: a new file, chained to the newest.
        log.append_at(ts("2026.11.23 00:00:01.000"), &row("d"))
            .unwrap();
        let rep = verify(d.path()).unwrap();
        assert_eq!((rep.files, rep.rows), (2, 4));
        assert_eq!(ids(d.path()), ["a", "b", "c", "d"]);
        let t22 = fs::read_to_string(file(d.path(), "20261122")).unwrap();
        assert!(t22.contains("\n2026.11.21 23:59:58.000;b;"), "{t22}");
    }

    #[test]
    fn the_old_day_is_durable_before_the_new_day_gets_a_row() {
        let d = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(d.path()).unwrap();
        let (_, p1) = log
            .append_deferred(ts("2026.11.21 23:59:59.990"), &row("a"))
            .unwrap();
        assert!(!p1.is_durable());
        let (_, p2) = log
            .append_deferred(ts("2026.11.22 00:00:00.010"), &row("b"))
            .unwrap();
        assert!(p1.is_durable(), "the old day's row was synced first");
        p1.wait().unwrap();
        p2.wait().unwrap();
        verify(d.path()).unwrap();
    }

    #[test]
    fn another_process_rows_are_chained_to() {
        let d = tempfile::tempdir().unwrap();
        let t = ts("2026.11.21 10:00:00.000");
        let mut a = AuditLog::open(d.path()).unwrap();
        let mut b = AuditLog::open(d.path()).unwrap();
        a.append_at(t, &row("a1")).unwrap();
        b.append_at(t, &row("b1")).unwrap();
        a.append_at(t, &row("a2")).unwrap();
        b.append_at(ts("2026.11.22 10:00:00.000"), &row("b2"))
            .unwrap();
        a.append_at(t, &row("a3")).unwrap();
        assert_eq!(verify(d.path()).unwrap().rows, 5);
        assert_eq!(ids(d.path()), ["a1", "b1", "a2", "b2", "a3"]);
    }

    #[test]
    fn formula_fields_are_neutralised_and_still_verify() {
        for (raw, want) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\r=1", "' =1"),
            ("rec-1", "rec-1"),
            ("/spool/a", "/spool/a"),
            ("", ""),
        ] {
            assert_eq!(clean_field(raw), want, "{raw:?}");
        }
        let d = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(d.path()).unwrap();
        let mut r = row("=cmd|' /C calc'!A0");
        r.policy_name = "-policy".into();
        r.error_desc = "@x".into();
        log.append_at(ts("2026.11.21 10:00:00.000"), &r).unwrap();
        verify(d.path()).unwrap();
        let text = fs::read_to_string(file(d.path(), "20261121")).unwrap();
        let f: Vec<&str> = text.lines().nth(1).unwrap().split(';').collect();
        assert_eq!(f[1], "'=cmd|' /C calc'!A0");
        assert_eq!(f[7], "'-policy");
        assert_eq!(f[12], "'@x");
    }

    #[test]
    fn a_fifo_or_link_under_an_audit_name_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(ts("2026.11.21 10:00:00.000"), &row("a"))
            .unwrap();
        drop(log);
        let fifo = file(d.path(), "20261122");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = AuditLog::open(d.path()).err().expect("a FIFO is refused");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(verify(d.path()).is_err());
        fs::remove_file(&fifo).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &fifo).unwrap();
        assert!(AuditLog::open(d.path()).is_err());
        assert!(verify(d.path()).is_err());
    }

    #[test]
    fn a_second_repair_keeps_the_first_cut_off_bytes() {
        let d = tempfile::tempdir().unwrap();
        let t = ts("2026.11.21 10:00:00.000");
        let mut log = AuditLog::open(d.path()).unwrap();
        log.append_at(t, &row("a")).unwrap();
        drop(log);
        let f = file(d.path(), "20261121");
        let good = fs::read(&f).unwrap().len();
        append_bytes(&f, b"torn one");
        drop(AuditLog::open(d.path()).unwrap());
        append_bytes(&f, b"torn two");
        drop(AuditLog::open(d.path()).unwrap());
        let base = d
            .path()
            .join(format!("audit/audit-20261121.csv.damaged-{good}"));
        assert_eq!(fs::read(&base).unwrap(), b"torn one");
        let second = base.with_file_name(format!("audit-20261121.csv.damaged-{good}-1"));
        assert_eq!(fs::read(second).unwrap(), b"torn two");
        verify(d.path()).unwrap();
    }

    #[test]
    fn folder_digest_matches_sha256sum_listing() {
        let mut files = vec![
            ("b.wav".to_string(), [1u8; 32]),
            ("a.xml".to_string(), [2u8; 32]),
        ];
        let (listing, h) = folder_digest(&mut files);
        assert!(listing.starts_with(&format!("{}  a.xml\n", hex::encode([2u8; 32]))));
        assert_eq!(h, sha256_hex(listing.as_bytes()));
    }
}
