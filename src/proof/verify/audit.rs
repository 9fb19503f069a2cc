//! The audit side of `archive verify`, for one target: the checkpoints on
//! the target (signature, chain, and, with the appliance, that each one the
//! agent put there is still there), then one streamed pass over the audit
//! rows (row hashes, chain, agreement with every checkpoint and with the
//! archived day files) that feeds the target's `export` rows to the
//! [`Sorter`]. Reads only; holds the checkpoint list, never all rows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;

use super::archive::Archive;
use super::report::{Kind, Report};
use super::sorter::{RowRef, Sorter};
use crate::ledger::audit::{GENESIS, HEADER, check_row};
use crate::proof::checkpoint::{self, NO_PREVIOUS};
use crate::proof::publish::{Mark, local_checkpoints};
use crate::proof::{agent_folder, checkpoints_folder};

/// The largest checkpoint file read.
const MAX_CHECKPOINT: u64 = 64 * 1024;

/// The appliance's side, when verifying with `--config`.
pub struct Local {
    /// `<state_dir>/audit`.
    pub audit_dir: PathBuf,
    /// `<state_dir>/checkpoints`.
    pub checkpoints_dir: PathBuf,
    /// What the agent put on this target.
    pub mark: Mark,
}

/// What the audit side works from.
pub struct AuditInput<'a> {
    /// The target.
    pub archive: &'a dyn Archive,
    /// Whose `exportd-audit/<agent_id>/`.
    pub agent_id: &'a str,
    /// The agent's public key.
    pub key: &'a VerifyingKey,
    /// The appliance (None: `--archive`, the archive's own day files).
    pub local: Option<&'a Local>,
    /// Whether an `export` row (policy_id, dst_folder_type) is this target's.
    pub belongs: &'a dyn Fn(&str, &str) -> bool,
    /// Only rows of days in this range (YYYYMMDD, inclusive) are checked
    /// against folders.
    pub days: (Option<String>, Option<String>),
}

/// A checkpoint that verified: what it states.
#[derive(Debug, Clone)]
struct Stated {
    name: String,
    rows: u64,
    hash: String,
}

/// Checks the checkpoints on the target; returns what the valid ones
/// state, per audit file (sorted by rows).
fn checkpoints(
    inp: &AuditInput<'_>,
    rep: &mut Report,
) -> io::Result<BTreeMap<String, Vec<Stated>>> {
    let folder = checkpoints_folder(inp.agent_id);
    let listing = inp.archive.list(&folder)?;
    let mut out: BTreeMap<String, Vec<Stated>> = BTreeMap::new();
    let mut prev: Option<(String, String)> = None;
    let mut on_target = Vec::new();
    for (name, _) in &listing.files {
        let what = format!("checkpoints/{name}");
        if checkpoint::parse_file_name(name).is_none() {
            rep.problem(Kind::Audit, &what, "not a checkpoint file name");
            continue;
        }
        rep.counts.checkpoints += 1;
        let Some(bytes) = inp
            .archive
            .read_small(&format!("{folder}/{name}"), MAX_CHECKPOINT)?
        else {
            continue;
        };
        match checkpoint::open(&bytes, name, inp.agent_id, inp.key) {
            Ok(p) => {
                let want = prev.as_ref().map_or(NO_PREVIOUS, |(_, h)| h.as_str());
                if p.prev_checkpoint != want {
                    let detail = match &prev {
                        Some((n, _)) => format!(
                            "prev_checkpoint does not match the checkpoint before it ({n}): a checkpoint was removed, added or changed"
                        ),
                        None => "prev_checkpoint is not 64 zeros but no checkpoint is before it: earlier checkpoints were removed".into(),
                    };
                    rep.problem(Kind::Audit, &what, &detail);
                }
                out.entry(p.file).or_default().push(Stated {
                    name: name.clone(),
                    rows: p.rows,
                    hash: p.last_row_hash,
                });
            }
            Err(e) => rep.problem(Kind::Audit, &what, &e.to_string()),
        }
        let h = checkpoint::file_hash(&bytes);
        if inp.local.is_some() {
            on_target.push((name.clone(), h.clone()));
        }
        prev = Some((name.clone(), h));
    }
    if let Some(local) = inp.local {
        against_local(inp, local, &on_target, rep)?;
    }
    for v in out.values_mut() {
        v.sort_by_key(|s| s.rows);
    }
    Ok(out)
}

/// Every checkpoint the agent put on the target must still be there, as made.
fn against_local(
    inp: &AuditInput<'_>,
    local: &Local,
    on_target: &[(String, String)],
    rep: &mut Report,
) -> io::Result<()> {
    let names =
        local_checkpoints(&local.checkpoints_dir).map_err(|e| io::Error::other(e.to_string()))?;
    let mut t = on_target.iter().peekable();
    for name in names.iter().filter(|n| **n <= local.mark.checkpoint) {
        while t.peek().is_some_and(|(n, _)| n < name) {
            t.next();
        }
        let what = format!("checkpoints/{name}");
        match t.peek() {
            Some((n, h)) if n == name => {
                let mine = std::fs::read(local.checkpoints_dir.join(name))?;
                if checkpoint::file_hash(&mine) != *h {
                    rep.problem(Kind::Audit, &what, "differs from the agent's own copy");
                }
            }
            _ => rep.problem(
                Kind::Audit,
                &what,
                "missing on the target (the agent put it there)",
            ),
        }
    }
    let _ = inp;
    Ok(())
}

/// One audit file to read, and its archived copy to compare with.
struct DayFile<'a> {
    rows: Box<dyn BufRead + 'a>,
    copy: Option<Box<dyn BufRead + 'a>>,
}

/// The audit files the rows come from, oldest first.
fn day_files(inp: &AuditInput<'_>, rep: &mut Report) -> io::Result<(Vec<String>, Vec<String>)> {
    let archived: Vec<String> = inp
        .archive
        .list(&agent_folder(inp.agent_id))?
        .files
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| checkpoint::is_audit_file_name(n))
        .collect();
    let source = match inp.local {
        Some(l) => crate::ledger::audit::audit_files(&l.audit_dir)
            .map_err(|e| io::Error::other(e.to_string()))?
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        None => archived.clone(),
    };
    if let Some(l) = inp.local {
        for n in source.iter().filter(|n| **n <= l.mark.day) {
            if archived.binary_search(n).is_err() {
                rep.problem(
                    Kind::Audit,
                    &format!("{}/{n}", agent_folder(inp.agent_id)),
                    "missing on the target (the agent put this closed day there)",
                );
            }
        }
    }
    Ok((source, archived))
}

fn open_day<'a>(inp: &AuditInput<'a>, name: &str, archived: &[String]) -> io::Result<DayFile<'a>> {
    let rel = format!("{}/{name}", agent_folder(inp.agent_id));
    let archive: &'a dyn Archive = inp.archive;
    let from_archive = || -> io::Result<Box<dyn BufRead + 'a>> {
        Ok(Box::new(BufReader::with_capacity(
            256 * 1024,
            archive.open(&rel)?,
        )))
    };
    Ok(match inp.local {
        Some(l) => DayFile {
            rows: Box::new(BufReader::with_capacity(
                256 * 1024,
                File::open(l.audit_dir.join(name))?,
            )),
            copy: if archived.iter().any(|n| n == name) {
                Some(from_archive()?)
            } else {
                None
            },
        },
        None => DayFile {
            rows: from_archive()?,
            copy: None,
        },
    })
}

/// A field as the row holds it, without the `'` that neutralises a
/// formula-like start ([`crate::ledger::audit::clean_field`]).
fn unclean(s: &str) -> &str {
    match s.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => s,
    }
}

/// The state of the row pass through one file.
struct FilePass<'s> {
    name: String,
    stated: &'s [Stated],
    next_stated: usize,
    chain_reported: bool,
    stated_reported: bool,
    copy_reported: bool,
}

/// Checks the checkpoints, then reads every audit row once: the chain, the
/// checkpoints' statements, the archived copies; the target's `export`
/// rows go to `sorter`.
pub fn run(inp: &AuditInput<'_>, sorter: &mut Sorter, rep: &mut Report) -> io::Result<()> {
    let stated = checkpoints(inp, rep)?;
    let (source, archived) = day_files(inp, rep)?;
    let newest_stated = stated.keys().next_back().cloned();
    let mut last_hash = GENESIS.to_string();
    for name in &source {
        let mut day = open_day(inp, name, &archived)?;
        let empty = Vec::new();
        let mut pass = FilePass {
            name: name.clone(),
            stated: stated.get(name).unwrap_or(&empty),
            next_stated: 0,
            chain_reported: false,
            stated_reported: false,
            copy_reported: false,
        };
        let in_range = in_days(name, &inp.days);
        read_file(
            inp,
            &mut day,
            &mut pass,
            &mut last_hash,
            in_range,
            sorter,
            rep,
        )?;
    }
    for (file, st) in &stated {
        if source.iter().any(|n| n == file) {
            continue;
        }
        let Some(last) = st.last() else { continue };
        let closed = newest_stated.as_ref().is_some_and(|n| file < n);
        if inp.local.is_some() {
            rep.problem(
                Kind::Audit,
                file,
                &format!(
                    "missing from the agent's audit log; checkpoint {} states {} rows",
                    last.name, last.rows
                ),
            );
        } else if closed {
            rep.problem(
                Kind::Audit,
                &format!("{}/{file}", agent_folder(inp.agent_id)),
                &format!(
                    "missing: a closed day; checkpoint {} states {} rows",
                    last.name, last.rows
                ),
            );
        } else {
            rep.note(&format!(
                "{file} (the open day, {} rows by checkpoint {}) is not on the archive yet: its rows cannot be checked, and its record folders show as extra",
                last.rows, last.name
            ));
        }
    }
    Ok(())
}

fn in_days(file: &str, days: &(Option<String>, Option<String>)) -> bool {
    let d = file.get(6..14).unwrap_or("");
    days.0.as_deref().is_none_or(|f| d >= f) && days.1.as_deref().is_none_or(|t| d <= t)
}

#[allow(clippy::too_many_arguments)]
fn read_file(
    inp: &AuditInput<'_>,
    day: &mut DayFile<'_>,
    pass: &mut FilePass<'_>,
    last_hash: &mut String,
    in_range: bool,
    sorter: &mut Sorter,
    rep: &mut Report,
) -> io::Result<()> {
    let mut line = Vec::new();
    let mut copy_line = Vec::new();
    let mut n = 0usize;
    let mut rows = 0u64;
    loop {
        line.clear();
        if day.rows.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            // The end, or a row the running agent is appending right now.
            break;
        }
        n += 1;
        compare_copy(day, pass, n, &line, &mut copy_line, rep)?;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if n == 1 {
            if text != HEADER.as_bytes() && !pass.chain_reported {
                pass.chain_reported = true;
                rep.problem(
                    Kind::Audit,
                    &format!("{}:1", pass.name),
                    "not the audit header",
                );
            }
            continue;
        }
        rows += 1;
        rep.counts.audit_rows += 1;
        let Some((prev, hash)) = check_row(text) else {
            if !pass.chain_reported {
                pass.chain_reported = true;
                rep.problem(
                    Kind::Audit,
                    &format!("{}:{n}", pass.name),
                    "not a valid row: its row_hash does not match its text (changed)",
                );
            }
            continue;
        };
        if prev != last_hash.as_str() && !pass.chain_reported {
            pass.chain_reported = true;
            rep.problem(
                Kind::Audit,
                &format!("{}:{n}", pass.name),
                "prev_hash does not match the row before it (a row was removed or reordered)",
            );
        }
        *last_hash = hash.to_string();
        check_stated(pass, rows, n, hash, rep);
        if in_range {
            export_row(inp, text, &pass.name, n, sorter, rep)?;
        }
        rep.tick();
    }
    if day.copy.is_some() && !pass.copy_reported {
        copy_line.clear();
        if let Some(c) = day.copy.as_mut() {
            if c.read_until(b'\n', &mut copy_line)? > 0 {
                rep.problem(
                    Kind::Audit,
                    &format!("{}:{}", pass.name, n + 1),
                    "the archived copy has more lines: rows were removed from the agent's log",
                );
            }
        }
    }
    while let Some(s) = pass.stated.get(pass.next_stated) {
        pass.next_stated += 1;
        if s.rows > rows && !pass.stated_reported {
            pass.stated_reported = true;
            rep.problem(
                Kind::Audit,
                &format!("{}:{}", pass.name, n + 1),
                &format!(
                    "the file ends after {rows} rows; checkpoint {} states {} (rows were removed)",
                    s.name, s.rows
                ),
            );
        }
    }
    Ok(())
}

/// Compares line `n` with the archived copy's line `n`.
fn compare_copy(
    day: &mut DayFile<'_>,
    pass: &mut FilePass<'_>,
    n: usize,
    line: &[u8],
    copy_line: &mut Vec<u8>,
    rep: &mut Report,
) -> io::Result<()> {
    let Some(c) = day.copy.as_mut() else {
        return Ok(());
    };
    if pass.copy_reported {
        return Ok(());
    }
    copy_line.clear();
    let got = c.read_until(b'\n', copy_line)?;
    if got == 0 {
        pass.copy_reported = true;
        rep.problem(
            Kind::Audit,
            &format!("{}:{n}", pass.name),
            "the archived copy ends before this line (rows were added to the agent's log after the day closed)",
        );
    } else if copy_line.as_slice() != line {
        pass.copy_reported = true;
        rep.problem(
            Kind::Audit,
            &format!("{}:{n}", pass.name),
            "differs from the archived copy of this day (changed, removed or reordered)",
        );
    }
    Ok(())
}

/// Row `rows` (line `n`) against the checkpoints that state this many rows.
fn check_stated(pass: &mut FilePass<'_>, rows: u64, n: usize, hash: &str, rep: &mut Report) {
    while let Some(s) = pass.stated.get(pass.next_stated) {
        if s.rows > rows {
            break;
        }
        pass.next_stated += 1;
        if s.rows == rows && s.hash != hash && !pass.stated_reported {
            pass.stated_reported = true;
            rep.problem(
                Kind::Audit,
                &format!("{}:{n}", pass.name),
                &format!(
                    "row hash differs from checkpoint {}: this row or one before it was changed, removed or reordered",
                    s.name
                ),
            );
        }
    }
}

/// Feeds an `export` row that is this target's to the sorter.
fn export_row(
    inp: &AuditInput<'_>,
    text: &[u8],
    file: &str,
    n: usize,
    sorter: &mut Sorter,
    rep: &mut Report,
) -> io::Result<()> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Ok(());
    };
    let f: Vec<&str> = text.split(';').collect();
    if f.len() != 16 || f[10] != "export" || !(inp.belongs)(f[6], f[8]) {
        return Ok(());
    }
    rep.counts.export_rows += 1;
    sorter.push(RowRef {
        folder: unclean(f[9]).to_string(),
        sha256: f[13].to_string(),
        n_files: f[3].parse().unwrap_or(u64::MAX),
        bytes: f[4].parse().unwrap_or(u64::MAX),
        id: unclean(f[1]).to_string(),
        at: format!("{file}:{n}"),
    })
}
