//! Where the audit log stands, as a checkpoint may state it: the number of
//! durable data rows of a day file and the last one's `row_hash`, read
//! forward from where the previous look ended. Reads only; never repairs
//! or cuts an audit file (that is [`crate::ledger::audit::AuditLog`]'s job).
//!
//! Only rows that are durable count: the file's length is taken, then it is
//! `fdatasync`ed, and only complete lines below that length are read. So a
//! checkpoint never states a row that a crash could still take away (the
//! audit log's torn-tail repair only cuts what was never synced).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::ledger::audit::HEADER;

/// How far an audit file has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Bytes read (header included), always at a line start.
    pub offset: u64,
    /// Data rows counted.
    pub rows: u64,
    /// The last counted row's `row_hash` (`None`: no row yet).
    pub last_hash: Option<String>,
}

impl Position {
    /// The start of a file.
    pub fn start() -> Position {
        Position {
            offset: 0,
            rows: 0,
            last_hash: None,
        }
    }
}

/// The longest line read as a row.
const MAX_LINE: u64 = 1 << 20;

/// Reads `path` forward from `pos`: the durable complete rows after it.
/// Stops, with a warning, at a line that is not a row (its `row_hash`
/// field is not 64 hex digits).
pub fn advance(path: &Path, pos: &Position) -> io::Result<Position> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len < pos.offset {
        // Cut back since (a repair or a tamper): read it again.
        return advance(path, &Position::start());
    }
    if len == pos.offset {
        return Ok(pos.clone());
    }
    f.sync_data()?;
    f.seek(SeekFrom::Start(pos.offset))?;
    let mut rd = BufReader::with_capacity(64 * 1024, f.take(len - pos.offset));
    let mut out = pos.clone();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut rd).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let text = &line[..n - 1];
        if out.offset == 0 {
            if text != HEADER.as_bytes() {
                tracing::warn!("{}: the first line is not the audit header", path.display());
                break;
            }
        } else {
            match row_hash(text) {
                Some(h) => {
                    out.rows += 1;
                    out.last_hash = Some(h);
                }
                None => {
                    tracing::warn!(
                        "{}: byte {}: not an audit row; checkpoints stop before it",
                        path.display(),
                        out.offset
                    );
                    break;
                }
            }
        }
        out.offset += n as u64;
    }
    Ok(out)
}

/// The `row_hash` field of a row (its last field, 64 hex digits).
pub fn row_hash(line: &[u8]) -> Option<String> {
    let i = line.iter().rposition(|&b| b == b';')?;
    let h = &line[i + 1..];
    (h.len() == 64 && h.iter().all(u8::is_ascii_hexdigit))
        .then(|| String::from_utf8_lossy(h).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_complete_rows_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit-20261207.csv");
        let h1 = "a".repeat(64);
        let h2 = "b".repeat(64);
        std::fs::write(&p, format!("{HEADER}\nx;{h1}\ny;{h2}\nz;c")).unwrap();
        let a = advance(&p, &Position::start()).unwrap();
        assert_eq!(a.rows, 2);
        assert_eq!(a.last_hash.as_deref(), Some(h2.as_str()));
        let again = advance(&p, &a).unwrap();
        assert_eq!(again, a);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(format!("{}\n", "c".repeat(63)).as_bytes())
            .unwrap();
        let b = advance(&p, &a).unwrap();
        assert_eq!(b.rows, 3);
        assert_eq!(b.last_hash, Some(format!("c{}", "c".repeat(63))));
    }
}
