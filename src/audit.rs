//! The tamper-evident audit log (export-layout.md): one `;`-separated CSV
//! file per UTC day under `<state_dir>/audit/`, append-only, every row
//! chained to the previous one by SHA-256.
//!
//! Row formatting, hashing and verification are pure; [`AuditLog`] is the
//! appending edge (one `write` + `fdatasync` per row).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
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

/// Replaces `;`, CR and LF by a space so a field never breaks the row.
pub fn clean_field(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ';' || c == '\n' || c == '\r' {
                ' '
            } else {
                c
            }
        })
        .collect()
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
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Reads the last line of a file without reading all of it.
fn last_line(path: &Path) -> Result<Option<String>, AuditError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let mut back = 4096u64.min(len);
    loop {
        f.seek(SeekFrom::Start(len - back)).map_err(io_err(path))?;
        let mut buf = Vec::with_capacity(back as usize);
        (&mut f)
            .take(back)
            .read_to_end(&mut buf)
            .map_err(io_err(path))?;
        let trimmed = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if let Some(i) = trimmed.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(
                String::from_utf8_lossy(&trimmed[i + 1..]).into_owned(),
            ));
        }
        if back == len {
            return Ok(if trimmed.is_empty() {
                None
            } else {
                Some(String::from_utf8_lossy(trimmed).into_owned())
            });
        }
        back = (back * 4).min(len);
    }
}

/// The appending side of the audit log.
pub struct AuditLog {
    dir: PathBuf,
    last_hash: String,
    day: Option<(i64, Arc<File>, Arc<GroupSync>)>,
    /// `audit/.lock`: appends from several processes (the daemon and
    /// `exportd request submit`) are serialised, and each re-reads the tail
    /// of the chain under the lock.
    lock: File,
}

/// The `row_hash` of the last row of the chain in `dir` (GENESIS when empty).
fn chain_tail(dir: &Path) -> Result<String, AuditError> {
    for f in audit_files(dir)?.iter().rev() {
        if let Some(line) = last_line(f)? {
            if line == HEADER {
                continue;
            }
            let h = line.rsplit(';').next().unwrap_or("");
            if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(h.to_string());
            }
            return Err(AuditError::Tampered {
                path: f.clone(),
                line: 0,
                why: "the last row has no valid row_hash (torn write?); run `exportd audit verify`"
                    .into(),
            });
        }
    }
    Ok(GENESIS.to_string())
}

impl AuditLog {
    /// Opens `<state_dir>/audit`, picking up the chain where it ends.
    pub fn open(state_dir: &Path) -> Result<AuditLog, AuditError> {
        let dir = state_dir.join("audit");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let last_hash = chain_tail(&dir)?;
        Ok(AuditLog {
            dir,
            last_hash,
            day: None,
            lock,
        })
    }

    /// The folder holding the audit files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one row stamped now and makes it durable.
    pub fn append(&mut self, row: &Row) -> Result<String, AuditError> {
        self.append_at(Timestamp::now(), row)
    }

    /// Appends one row with the given timestamp and makes it durable.
    pub fn append_at(&mut self, ts: Timestamp, row: &Row) -> Result<String, AuditError> {
        let (hash, pending) = self.append_deferred(ts, row)?;
        pending.wait().map_err(|source| AuditError::Io {
            path: self.dir.clone(),
            source,
        })?;
        Ok(hash)
    }

    /// Appends one row (written, chained) and returns its hash and the
    /// fdatasync to wait on before relying on it; the wait can be done
    /// outside any lock, so concurrent appends share one sync.
    pub fn append_deferred(
        &mut self,
        ts: Timestamp,
        row: &Row,
    ) -> Result<(String, Pending), AuditError> {
        rustix::fs::flock(&self.lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            AuditError::Io {
                path: self.dir.join(".lock"),
                source: e.into(),
            }
        })?;
        let r = self.append_locked(ts, row);
        let _ = rustix::fs::flock(&self.lock, rustix::fs::FlockOperation::Unlock);
        r
    }

    fn append_locked(&mut self, ts: Timestamp, row: &Row) -> Result<(String, Pending), AuditError> {
        self.last_hash = chain_tail(&self.dir)?;
        let day = ts.day_number();
        if self.day.as_ref().map(|d| d.0) != Some(day) {
            let c = ts.civil();
            let path = self
                .dir
                .join(format!("audit-{:04}{:02}{:02}.csv", c.year, c.month, c.day));
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            if f.metadata().map_err(io_err(&path))?.len() == 0 {
                f.write_all(format!("{HEADER}\n").as_bytes())
                    .map_err(io_err(&path))?;
                crate::target::fs::sync_dir(&self.dir).map_err(io_err(&self.dir))?;
            }
            self.day = Some((day, Arc::new(f), GroupSync::new()));
        }
        let body = row_body(ts, row, &self.last_hash);
        let hash = sha256_hex(body.as_bytes());
        let line = format!("{body};{hash}\n");
        let Some((_, f, g)) = self.day.as_ref() else {
            return Err(AuditError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no audit file open"),
            });
        };
        (&**f)
            .write_all(line.as_bytes())
            .map_err(|source| AuditError::Io {
                path: self.dir.clone(),
                source,
            })?;
        let pending = Pending::new(f.clone(), g.clone(), g.note_written());
        self.last_hash = hash.clone();
        Ok((hash, pending))
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
            let n = rd.read_until(b'\n', &mut raw).map_err(io_err(path))?;
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
