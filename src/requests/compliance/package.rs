//! The zip of a compliance export, from its output folder to its final name
//! (steps 4 and 5 of [`super::run`]): temp file, conversations, other
//! records, index files, `request.json`, fsync, publish. Never replaces an
//! existing zip and never follows a link below the output root.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::conversation::write_conversation;
use super::out::{ConvMeta, Out};
use super::scan;
use super::select::Grouped;
use super::{
    ComplianceError, Counts, ExportRequest, Format, Progress, RequestContext, Run, Validated,
    plain_name,
};
use crate::record::im::Kind;
use crate::record::{FileRole, Record};
use crate::sink::handle;
use crate::time::Timestamp;

/// The oldest and newest record seen on the appliance.
pub(super) type Range = (Option<Timestamp>, Option<Timestamp>);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ComplianceError + '_ {
    move |source| ComplianceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `compliance-exports/` of the output folder, held open: everything in it
/// is reached through this handle (issue 21).
pub(super) struct Destination {
    dir: File,
    /// `<output_dir>/compliance-exports`.
    path: PathBuf,
    /// `<request_id>.zip`.
    final_name: String,
    /// Its full path.
    pub(super) final_path: PathBuf,
}

impl Destination {
    /// Opens (makes, the first time) the output folder, and fails when the
    /// request's zip exists already.
    pub(super) fn open(
        ctx: &RequestContext<'_>,
        request_id: &str,
    ) -> Result<Destination, ComplianceError> {
        // Handles, not names (issue 21): the output folder is opened once and
        // everything in it is reached through its handle, never following a
        // link below the configured root.
        let out_path = ctx.output_dir.join("compliance-exports");
        let final_name = format!("{request_id}.zip");
        let final_path = out_path.join(&final_name);
        // The caller proved a folder target's root is the archive (its marker)
        // before; the engine alone (tests, outbox) makes its output folder.
        if !ctx.output_dir.exists() {
            std::fs::create_dir_all(&ctx.output_dir).map_err(io_err(&ctx.output_dir))?;
        }
        let out_root = handle::open_root(&ctx.output_dir).map_err(io_err(&ctx.output_dir))?;
        let (out_dir, created) =
            handle::ensure_dir(&out_root, "compliance-exports").map_err(|e| {
                let hint = if matches!(e.raw_os_error(), Some(20) | Some(40)) {
                    " (a symlink or not a folder: exportd never follows it; remove it)"
                } else {
                    ""
                };
                ComplianceError::Io {
                    path: out_path.clone(),
                    source: std::io::Error::new(e.kind(), format!("{e}{hint}")),
                }
            })?;
        if created {
            out_root.sync_all().map_err(io_err(&ctx.output_dir))?;
        }
        if handle::exists_in(&out_dir, &final_name).map_err(io_err(&final_path))? {
            return Err(ComplianceError::Exists(final_path));
        }
        Ok(Destination {
            dir: out_dir,
            path: out_path,
            final_name,
            final_path,
        })
    }

    /// Writes the zip under a fresh temp name and publishes it; on failure
    /// the temp file is removed.
    pub(super) fn write(
        &self,
        req: &ExportRequest,
        v: &Validated,
        ctx: &RequestContext<'_>,
        run: &mut Run<'_, '_>,
        grouped: Grouped,
        range: Range,
    ) -> Result<Written, ComplianceError> {
        // A fresh, unpredictable temp name, created O_EXCL|O_NOFOLLOW: a link
        // planted under any name is never written through.
        let tmp_name = format!(
            ".{}.{}.zip.tmp",
            req.request_id,
            crate::sink::fs::start_nonce()
        );
        let tmp = self.path.join(&tmp_name);
        let file = handle::create_new(&self.dir, &tmp_name, 0o640).map_err(io_err(&tmp))?;
        let out = Out::new(file, req.format);
        let written = match write_zip(req, v, ctx, run, out, grouped, range) {
            Ok(x) => x,
            Err(e) => {
                let _ = handle::remove_in(&self.dir, &tmp_name);
                return Err(e);
            }
        };
        publish(&self.dir, &tmp_name, &self.final_name, &self.final_path)?;
        Ok(written)
    }
}

/// What was written: the counts, the range covered, beyond retention.
pub(super) type Written = (Counts, Option<(Timestamp, Timestamp)>, bool);

/// The zip's content, in order: conversations, other records, index files,
/// `request.json`; then the finished file is fsynced.
fn write_zip(
    req: &ExportRequest,
    v: &Validated,
    ctx: &RequestContext<'_>,
    run: &mut Run<'_, '_>,
    mut out: Out,
    grouped: Grouped,
    range: Range,
) -> Result<Written, ComplianceError> {
    let mut counts = Counts::default();
    let total = grouped.convs.len() as u64;
    let mut metas = Vec::new();
    for (done, (cid, c)) in grouped.convs.into_iter().enumerate() {
        if let Some(meta) = write_conversation(req, v, run, &mut out, c, &mut counts)? {
            metas.push(meta);
        }
        (run.on_progress)(Progress::Conversation {
            done: done as u64 + 1,
            total,
            conversation_id: cid,
        });
    }
    let mut other_list = Vec::new();
    for (path, rec) in &grouped.others {
        other_list.push(write_other(req, run, &mut out, path, rec, &mut counts)?);
    }
    out.index(&metas, ctx.users)?;
    let cov = coverage(v.from, v.to, range);
    out.request_json(&request_json(
        req, ctx.now, range, &cov, &counts, run, other_list,
    ))?;
    let file = out.finish()?;
    file.sync_all()
        .map_err(|e| ComplianceError::Zip(format!("fsync: {e}")))?;
    Ok((counts, cov.covered, cov.beyond))
}

/// A record without a chat transcript: its files when attachments are
/// asked for, and its entry of `request.json`'s `other_records`.
fn write_other(
    req: &ExportRequest,
    run: &mut Run<'_, '_>,
    out: &mut Out,
    path: &Path,
    rec: &Record,
    counts: &mut Counts,
) -> Result<Value, ComplianceError> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut names = Vec::new();
    if req.attachments {
        let meta = ConvMeta {
            id: rec.id.clone(),
            kind: Kind::Direct,
            title: String::new(),
            owner: String::new(),
            participants: Vec::new(),
            records: Vec::new(),
            dir: out.conv_dir(&rec.id),
            first: None,
        };
        for f in rec.files.iter().filter(|f| f.role != FileRole::Transcript) {
            if let Some(zp) = out.file_path(&meta, "", &plain_name(&f.path)) {
                if copy_file(run, out, &dir, &f.path, &zp)? {
                    counts.files += 1;
                    names.push(zp);
                }
            }
        }
    }
    counts.records += 1;
    Ok(json!({
        "id": rec.id,
        "modality": rec.modality.as_str(),
        "start_time": rec.start_time.rfc3339().to_string(),
        "end_time": rec.end_time.rfc3339().to_string(),
        "recorded_extension": rec.recorded_extension,
        "files": names,
    }))
}

/// What the export covers compared with what was asked.
#[derive(Debug, PartialEq, Eq)]
struct Coverage {
    /// The range covered by data still on the appliance, if any.
    covered: Option<(Timestamp, Timestamp)>,
    /// The requested range starts before the oldest record still held.
    beyond: bool,
    /// Why, for `request.json`.
    note: Option<String>,
}

/// The requested range `[from, to)` against the records still held. Pure.
fn coverage(from: Option<Timestamp>, to: Option<Timestamp>, (oldest, newest): Range) -> Coverage {
    let covered = match (oldest, newest) {
        (Some(o), Some(n)) => {
            let f = from.map_or(o, |f| f.max(o));
            let t = to.map_or(n, |t| t.min(n));
            Some((f, t.max(f)))
        }
        _ => None,
    };
    let (beyond, note) = match (from, oldest) {
        (None, _) => (false, None),
        (Some(_), None) => (
            true,
            Some(
                "no records are on the appliance: the whole requested range is beyond retention"
                    .to_string(),
            ),
        ),
        (Some(f), Some(o)) if f < o => (
            true,
            Some(format!(
                "the requested range starts at {} but the oldest record still on the appliance starts at {}; data before that is beyond retention and not in this export",
                f.rfc3339(),
                o.rfc3339()
            )),
        ),
        _ => (false, None),
    };
    Coverage {
        covered,
        beyond,
        note,
    }
}

/// `request.json`: the request, what it covers and holds, what was left out.
fn request_json(
    req: &ExportRequest,
    now: Timestamp,
    (oldest, newest): Range,
    cov: &Coverage,
    counts: &Counts,
    run: &Run<'_, '_>,
    other_list: Vec<Value>,
) -> Value {
    let rfc = |t: Option<Timestamp>| t.map(|t| t.rfc3339().to_string());
    json!({
        "request": req,
        "format": match req.format { Format::Glip => "glip", Format::Slack => "slack" },
        "generated_at": now.rfc3339().to_string(),
        "requested": {"from": req.time_from, "to": req.time_to},
        "covered": cov.covered.map(|(f, t)| json!({"from": f.rfc3339().to_string(), "to": t.rfc3339().to_string()})),
        "oldest_record": rfc(oldest),
        "newest_record": rfc(newest),
        "beyond_retention": cov.beyond,
        "note": cov.note,
        "ownership": "team and group conversations only when owned by a configured user; direct conversations whenever one side is a configured user",
        "counts": counts,
        "skipped_count": run.skipped_n,
        "skipped": run.skipped.iter().map(|(p, r)| json!({"path": p.display().to_string(), "reason": r})).collect::<Vec<Value>>(),
        "other_records": other_list,
    })
}

/// Streams one spool file into the zip; a file that cannot be opened is
/// skipped (reported), an error while writing the zip fails the export.
pub(super) fn copy_file(
    run: &mut Run<'_, '_>,
    out: &mut Out,
    dir: &Path,
    rel: &str,
    zip_path: &str,
) -> Result<bool, ComplianceError> {
    let src = match scan::content_path(dir, rel) {
        Ok(p) => p,
        Err(e) => {
            run.skip(dir.join(rel), format!("attachment: {e}"));
            return Ok(false);
        }
    };
    let mut r = match run.opener.open(&src) {
        Ok(r) => r,
        Err(e) => {
            run.skip(src, format!("attachment: cannot open: {e}"));
            return Ok(false);
        }
    };
    let w = out.entry(zip_path, true)?;
    // A read error mid-file would leave a truncated entry: fail the export
    // rather than deliver a silently short file.
    std::io::copy(&mut r, w)
        .map_err(|e| ComplianceError::Zip(format!("{}: {e}", src.display())))?;
    Ok(true)
}

/// Moves the finished temp zip to its final name without ever replacing an
/// existing file (renameat2 NOREPLACE, or link + unlink, between handles of
/// the same folder), then fsyncs the folder.
fn publish(
    dir: &File,
    tmp_name: &str,
    final_name: &str,
    final_path: &Path,
) -> Result<(), ComplianceError> {
    match handle::rename_noreplace_at(dir, tmp_name, dir, final_name) {
        Ok(true) => {}
        Ok(false) => {
            let _ = handle::remove_in(dir, tmp_name);
            return Err(ComplianceError::Exists(final_path.to_path_buf()));
        }
        Err(e) => {
            let _ = handle::remove_in(dir, tmp_name);
            return Err(io_err(final_path)(e));
        }
    }
    let parent = final_path.parent().unwrap_or(final_path);
    dir.sync_all().map_err(io_err(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn coverage_is_the_requested_range_clipped_to_the_records_held() {
        let c = coverage(
            Some(Timestamp(2 * H)),
            Some(Timestamp(20 * H)),
            (Some(Timestamp(H)), Some(Timestamp(10 * H))),
        );
        assert_eq!(c.covered, Some((Timestamp(2 * H), Timestamp(10 * H))));
        assert!(!c.beyond);
        assert_eq!(c.note, None);
        // No bounds asked: everything held.
        let c = coverage(None, None, (Some(Timestamp(H)), Some(Timestamp(10 * H))));
        assert_eq!(c.covered, Some((Timestamp(H), Timestamp(10 * H))));
        assert!(!c.beyond);
        // A range wholly after the records: empty, never reversed.
        let c = coverage(
            Some(Timestamp(30 * H)),
            None,
            (Some(Timestamp(H)), Some(Timestamp(10 * H))),
        );
        assert_eq!(c.covered, Some((Timestamp(30 * H), Timestamp(30 * H))));
    }

    #[test]
    fn a_range_before_the_oldest_record_is_beyond_retention() {
        let c = coverage(
            Some(Timestamp(0)),
            None,
            (Some(Timestamp(H)), Some(Timestamp(10 * H))),
        );
        assert_eq!(c.covered, Some((Timestamp(H), Timestamp(10 * H))));
        assert!(c.beyond);
        assert!(c.note.unwrap().contains("beyond retention"));
        let c = coverage(Some(Timestamp(0)), None, (None, None));
        assert_eq!(c.covered, None);
        assert!(c.beyond);
        assert!(
            c.note
                .unwrap()
                .starts_with("no records are on the appliance")
        );
        let c = coverage(None, None, (None, None));
        assert_eq!(
            c,
            Coverage {
                covered: None,
                beyond: false,
                note: None
            }
        );
    }
}
