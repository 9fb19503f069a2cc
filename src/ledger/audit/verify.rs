//! `audit verify`: walks every audit file in name order and checks headers,
//! field counts, each `row_hash` and the `prev_hash` chain across rows and
//! days. Read-only: never repairs or writes a file.
//!
//! Invariant: the first line that does not check out is reported with its
//! file and 1-based line number; nothing after it is trusted.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::file::{audit_files, read_line};
use super::row::{GENESIS, HEADER, sha256_hex};
use super::{AuditError, io_err};
use crate::time::Timestamp;

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
            let n = read_line(&mut rd, &mut raw).map_err(io_err(path))?;
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
