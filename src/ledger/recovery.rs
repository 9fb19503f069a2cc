//! Startup recovery of the crash window between an `export` audit row and
//! its journal entry; reads the audit log, never writes to it.
//!
//! The audit row is the commit point of a copy. A worker appends the row,
//! waits for it to be durable, then journals the copy with the row's hash.
//! A crash in between leaves a durable row the journal does not know; the
//! record is then copied again (the target finds the same bytes) and, before
//! this module, got a second `export` row.
//!
//! Every journal copy entry carries a *floor*: the oldest `export` row of
//! the process not yet journaled (see [`crate::ledger::journal::Window`]), so every
//! `export` row before the floor is journaled. At startup, before any
//! worker runs, the rows from the last floor to the chain's tail (a small
//! window: the rows written while the oldest unfinished copy was between
//! its row and its journal entry) are read; those whose hash the journal
//! does not hold are recorded as *orphans* (row hash + signature). When the
//! record's copy is made again and its row would have the same signature,
//! the orphan row is adopted instead of writing a second one. Then the
//! floor moves to the tail.
//!
//! Reading is streamed (one line buffer); the window is capped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::ledger::audit::{self, GENESIS};
use crate::ledger::journal::{FileStore, Journal, RowHash, Window, row_signature};

/// The most `export` rows after the floor considered (memory bound).
const MAX_WINDOW: usize = 1 << 16;

/// The longest audit line read (longer lines are not rows exportd wrote).
const MAX_LINE: u64 = 1 << 20;

/// What recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// `export` rows read after the floor.
    pub window: usize,
    /// Of those, rows without a journal entry (now orphans).
    pub orphans: usize,
    /// The floor was not found in the audit log (rows since could not be
    /// checked).
    pub floor_missing: bool,
}

fn unhex(s: &str) -> Option<RowHash> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// One audit line's `row_hash` and, for an `export` row, its signature.
fn parse(line: &str) -> Option<(RowHash, Option<RowHash>)> {
    let fields: Vec<&str> = line.split(';').collect();
    if fields.len() != 16 {
        return None;
    }
    let hash = unhex(fields[15])?;
    let sig = if fields[10] == "export" {
        row_signature(&fields)
    } else {
        None
    };
    Some((hash, sig))
}

/// Calls `f` with every complete line of `path` (without its newline);
/// stops when `f` returns false.
fn lines(path: &Path, f: &mut dyn FnMut(&str) -> bool) -> io::Result<()> {
    let mut rd = BufReader::with_capacity(64 << 10, File::open(path)?);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut rd).take(MAX_LINE).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') {
            if n as u64 == MAX_LINE {
                // Skip the rest of an overlong line.
                let mut sink = Vec::new();
                rd.read_until(b'\n', &mut sink)?;
                continue;
            }
            // An unterminated last line is not a durable row.
            return Ok(());
        }
        let line = String::from_utf8_lossy(&buf[..buf.len() - 1]);
        if !f(&line) {
            return Ok(());
        }
    }
}

/// The `row_hash` of the last complete row of the newest audit file that
/// has one (GENESIS when none), read from the end.
fn tail(files: &[std::path::PathBuf]) -> io::Result<RowHash> {
    for p in files.iter().rev() {
        let mut f = File::open(p)?;
        let len = f.metadata()?.len();
        let mut back = 8192u64.min(len);
        loop {
            f.seek(SeekFrom::Start(len - back))?;
            let mut buf = Vec::with_capacity(back as usize);
            (&mut f).take(back).read_to_end(&mut buf)?;
            // Only complete lines count.
            let end = buf.iter().rposition(|&b| b == b'\n');
            if let Some(end) = end {
                let body = &buf[..end];
                let start = body.iter().rposition(|&b| b == b'\n').map(|i| i + 1);
                if start.is_some() || back == len {
                    let line = String::from_utf8_lossy(&body[start.unwrap_or(0)..]);
                    if let Some((h, _)) = parse(&line) {
                        return Ok(h);
                    }
                    break; // the header only, or a line that is not a row
                }
            } else if back == len {
                break;
            }
            if back == len || back >= MAX_LINE {
                break;
            }
            back = (back * 4).min(len);
        }
    }
    unhex(GENESIS).ok_or_else(|| io::Error::other("bad genesis"))
}

/// Runs recovery on an opened journal (before any worker) and installs its
/// window. `audit_dir` is `<state_dir>/audit`.
pub fn recover(audit_dir: &Path, j: &mut Journal<FileStore>) -> io::Result<Recovered> {
    let files = audit::audit_files(audit_dir).map_err(io::Error::other)?;
    let tail_hash = tail(&files)?;
    let mut rep = Recovered::default();
    let genesis = unhex(GENESIS).ok_or_else(|| io::Error::other("bad genesis"))?;
    let Some(floor) = j.floor() else {
        // A new journal, or one written before rows were journaled: nothing
        // to compare; from now on the floor is the tail.
        j.record_recovery(&[], tail_hash)?;
        j.set_window(Window::new(Some(tail_hash)));
        return Ok(rep);
    };
    // Find the floor, newest file first; collect the export rows after it.
    let mut cand: HashMap<RowHash, RowHash> = HashMap::new();
    let mut start: Option<usize> = None;
    if floor == genesis {
        start = Some(0);
    } else {
        for (i, p) in files.iter().enumerate().rev() {
            let mut found = false;
            let mut after: HashMap<RowHash, RowHash> = HashMap::new();
            lines(p, &mut |line| {
                if let Some((h, sig)) = parse(line) {
                    if found {
                        if let Some(sig) = sig {
                            if after.len() < MAX_WINDOW {
                                after.insert(h, sig);
                            }
                        }
                    } else if h == floor {
                        found = true;
                        if let Some(sig) = sig {
                            after.insert(h, sig);
                        }
                    }
                }
                true
            })?;
            if found {
                cand = after;
                start = Some(i + 1);
                break;
            }
        }
    }
    match start {
        None => {
            rep.floor_missing = true;
            tracing::error!(
                "the audit row the journal last acknowledged ({}) is not in {}: the rows written since cannot be checked against the journal, so a copy interrupted by the last crash may get a second export row. Were audit files moved away?",
                hex::encode(floor),
                audit_dir.display()
            );
        }
        Some(first) => {
            for p in &files[first..] {
                lines(p, &mut |line| {
                    if let Some((h, Some(sig))) = parse(line) {
                        if cand.len() < MAX_WINDOW {
                            cand.insert(h, sig);
                        } else {
                            return false;
                        }
                    }
                    true
                })?;
            }
            if cand.len() >= MAX_WINDOW {
                tracing::error!(
                    "more than {MAX_WINDOW} export rows after the journal's floor in {}: only the first are checked",
                    audit_dir.display()
                );
            }
            rep.window = cand.len();
            if !cand.is_empty() {
                j.scan_rows(&mut |r| {
                    cand.remove(r);
                })?;
            }
        }
    }
    let mut orphans: Vec<(RowHash, RowHash)> = cand.into_iter().collect();
    orphans.retain(|(_, sig)| j.orphan(sig).is_none());
    orphans.sort();
    rep.orphans = orphans.len();
    if !orphans.is_empty() {
        tracing::warn!(
            "{} export row(s) were written before a crash without their journal entry; their copies will not get a second row",
            orphans.len()
        );
    }
    j.record_recovery(&orphans, tail_hash)?;
    j.set_window(Window::new(Some(tail_hash)));
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_signs_exports_only() {
        let h = "ab".repeat(32);
        let line = format!(
            "2026.01.01 00:00:00.000;id;n;2;10;/spool/a;p;P;fs;a/b;export;;;d;{};{h}",
            GENESIS
        );
        let (hash, sig) = parse(&line).unwrap();
        assert_eq!(hex::encode(hash), h);
        assert!(sig.is_some());
        let skip = line.replace(";export;", ";skip;");
        assert!(parse(&skip).unwrap().1.is_none());
        assert!(parse(audit::HEADER).is_none());
        // The description does not change the signature (a re-made copy
        // says "already present").
        let other = line.replace(";export;;;", ";export;;same bytes;");
        assert_eq!(parse(&other).unwrap().1, sig);
    }
}
