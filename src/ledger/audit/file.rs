//! One audit day file at the disk: lists the files, reads a file's tail,
//! checks its end row by row, and cuts a torn tail (kept aside first). Never
//! appends a row and never cuts a row that is not a crash's doing.
//!
//! Invariant: a file's end is cut only back to the longest prefix that
//! checks out (header, rows that verify and chain, each ending in a
//! newline), only when no row that verifies follows the first bad line
//! (unless the bad part holds NUL bytes: blocks a crash left unwritten), and
//! only after the bytes cut off are saved and synced beside the file (never
//! through a link, never over an earlier copy).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use super::row::{GENESIS, HEADER, check_row};
use super::{AuditError, io_err};

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
pub(super) const MAX_LINE: usize = 1 << 20;

/// How much of the newest file's end is checked row by row at open (the
/// appends a crash can have left unsynced are far fewer).
pub(super) const OPEN_SCAN: u64 = 4 << 20;

/// Reads one line (with its `\n`, if any) into `raw`, at most
/// [`MAX_LINE`] + 1 bytes of it; returns the bytes read (0 at the end).
pub(super) fn read_line(rd: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<usize> {
    rd.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', raw)
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
pub(super) enum Tail {
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
pub(super) fn tail_of(f: &File, len: u64) -> io::Result<Tail> {
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
pub(super) struct Scan {
    /// Length of the prefix that checks out (header, rows that verify and
    /// chain to each other), ending on a newline.
    pub(super) good_end: u64,
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
pub(super) fn scan(f: &File, from: u64) -> io::Result<Scan> {
    let mut rd = io::BufReader::with_capacity(64 * 1024, At { f, pos: from });
    let mut raw = Vec::new();
    let mut off = from;
    if from > 0 {
        let n = read_line(&mut rd, &mut raw)?;
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
        let n = read_line(&mut rd, &mut raw)?;
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

pub(super) fn open_append(path: &Path, create_new: bool) -> io::Result<File> {
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

pub(super) fn file_name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The chain's tail before file `files[idx]`: the last row of the newest
/// earlier file that has rows (GENESIS when none).
pub(super) fn tail_before(files: &[PathBuf], idx: usize) -> Result<String, AuditError> {
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

/// Cuts a damaged tail (see the type's doc), keeping the cut bytes
/// beside the file, then syncs.
pub(super) fn cut_damaged_tail(
    dir: &Path,
    path: &Path,
    file: &File,
    len: u64,
    s: &Scan,
) -> Result<(), AuditError> {
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
        let aside = path.with_file_name(format!("{}.damaged-{}", file_name_of(path), s.good_end));
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
    crate::sink::fs::sync_dir(dir).map_err(io_err(dir))?;
    let fix = || -> io::Result<()> {
        file.set_len(s.good_end)?;
        if s.good_end == 0 {
            (&*file).write_all(format!("{HEADER}\n").as_bytes())?;
        }
        file.sync_all()
    };
    fix().map_err(io_err(path))
}
