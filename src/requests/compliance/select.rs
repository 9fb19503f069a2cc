//! What a compliance export holds (steps 1 to 3 of [`super::run`]): the
//! requested users, the records in scope and their conversations after the
//! ownership rules. Reads the spool through the opener; never writes anything.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::scan::{self, Directory, Users};
use super::{ComplianceError, ExportRequest, RequestContext, Run, Validated, transcript_xml};
use crate::record::im::{self, Header, Kind};
use crate::record::{FileRef, FileRole, Record};
use crate::time::Timestamp;

/// One record's transcript and attachments, as a conversation reads them.
pub(super) struct Source {
    pub(super) record_id: String,
    pub(super) transcript: PathBuf,
    pub(super) dir: PathBuf,
    /// `(message id, path relative to the record's folder)`.
    pub(super) attachments: Vec<(String, String)>,
}

/// A conversation being assembled from the transcript headers of its records.
pub(super) struct ConvBuild {
    pub(super) header: Header,
    pub(super) records: Vec<String>,
    pub(super) sources: Vec<Source>,
    pub(super) recorded_by_company: bool,
}

/// The users a request names (all configured users when it names none); an
/// unknown one fails the export.
pub(super) fn requested_users<'a>(
    req: &'a ExportRequest,
    dir: &'a dyn Directory,
) -> Result<Users<'a>, ComplianceError> {
    match &req.users {
        None => Ok(Users::all(dir)),
        Some(ids) => {
            if let Some(id) = ids.iter().find(|id| !dir.has_id(id)) {
                return Err(ComplianceError::UnknownUser(id.chars().take(128).collect()));
            }
            Ok(Users::only(dir, ids))
        }
    }
}

/// The outcome of walking the spool (step 1).
pub(super) struct Scanned {
    /// Metadata XML files found.
    pub(super) metadata_files: u64,
    /// Of those, parsed.
    pub(super) records: u64,
    /// The earliest start of any parsed record.
    pub(super) oldest: Option<Timestamp>,
    /// The latest end of any parsed record.
    pub(super) newest: Option<Timestamp>,
    /// The records in scope (modality, range, users), each id once.
    pub(super) kept: Vec<(PathBuf, Record)>,
}

/// Step 1: walks the spool roots and parses every metadata XML, keeping the
/// records of the requested modalities, range and users.
pub(super) fn scan(
    ctx: &RequestContext<'_>,
    v: &Validated,
    wanted: &Users<'_>,
    run: &mut Run<'_, '_>,
) -> Scanned {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for root in &ctx.spool_roots {
        files.extend(scan::metadata_files(root, &mut problems));
    }
    for (p, why) in problems {
        run.skip(p, why);
    }
    let mut out = Scanned {
        metadata_files: files.len() as u64,
        records: 0,
        oldest: None,
        newest: None,
        kept: Vec::new(),
    };
    let mut seen_ids = HashSet::new();
    for path in &files {
        let rec = match scan::load_record(ctx.opener, path) {
            Ok(r) => r,
            Err(why) => {
                run.skip(path.clone(), format!("metadata: {why}"));
                continue;
            }
        };
        out.records += 1;
        out.oldest = Some(out.oldest.map_or(rec.start_time, |o| o.min(rec.start_time)));
        out.newest = Some(
            out.newest
                .map_or(rec.end_time, |n| n.max(rec.end_time.max(rec.start_time))),
        );
        if !v.modalities.contains(&rec.modality)
            || !v.overlaps(rec.start_time, rec.end_time)
            || !wanted.record(&rec)
            || !seen_ids.insert(rec.id.clone())
        {
            continue;
        }
        out.kept.push((path.clone(), rec));
    }
    out
}

/// The records in scope, sorted into conversations (step 2 and 3).
pub(super) struct Grouped {
    /// Records in scope.
    pub(super) records: u64,
    /// The conversations the company owns, by id.
    pub(super) convs: BTreeMap<String, ConvBuild>,
    /// Records without a chat transcript (listed in `request.json`).
    pub(super) others: Vec<(PathBuf, Record)>,
}

/// Steps 2 and 3: reads each kept record's transcript header, groups the
/// records by conversation and keeps the conversations the company owns.
pub(super) fn group(
    kept: Vec<(PathBuf, Record)>,
    company: &Users<'_>,
    run: &mut Run<'_, '_>,
) -> Grouped {
    let mut convs: BTreeMap<String, ConvBuild> = BTreeMap::new();
    let mut others: Vec<(PathBuf, Record)> = Vec::new();
    let records = kept.len() as u64;
    for (path, rec) in kept {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let Some(tf) = transcript_of(&rec) else {
            others.push((path, rec));
            continue;
        };
        let Some((tpath, header)) = read_header(run, &rec, &dir, tf) else {
            continue;
        };
        let by_company = company.by_key(&rec.recorded_extension);
        let source = Source {
            record_id: rec.id.clone(),
            transcript: tpath,
            dir: dir.clone(),
            attachments: rec
                .files
                .iter()
                .filter(|f| f.role == FileRole::Attachment)
                .filter_map(|f| f.message_id.clone().map(|m| (m, f.path.clone())))
                .collect(),
        };
        let c = convs
            .entry(header.conversation_id.clone())
            .or_insert_with(|| ConvBuild {
                header: Header {
                    participants: Vec::new(),
                    ..header.clone()
                },
                records: Vec::new(),
                sources: Vec::new(),
                recorded_by_company: false,
            });
        merge_header(&mut c.header, header);
        c.recorded_by_company |= by_company;
        c.records.push(rec.id.clone());
        c.sources.push(source);
    }
    convs.retain(|_, c| owned(c, company));
    Grouped {
        records,
        convs,
        others,
    }
}

fn transcript_of(r: &Record) -> Option<&FileRef> {
    r.files.iter().find(|f| {
        let n = f.base_name();
        f.role == FileRole::Transcript && (n.ends_with(".im") || n.ends_with(".im.age"))
    })
}

/// The transcript's path and header; `None` (skipped, reported) when it
/// cannot be reached or read.
fn read_header(
    run: &mut Run<'_, '_>,
    rec: &Record,
    dir: &Path,
    tf: &FileRef,
) -> Option<(PathBuf, Header)> {
    let tpath = match scan::content_path(dir, &tf.path) {
        Ok(p) => p,
        Err(e) => {
            run.skip(
                dir.join(&tf.path),
                format!("record {}: transcript: {e}", rec.id),
            );
            return None;
        }
    };
    match transcript_xml(run.opener, &tpath)
        .and_then(|x| im::Parser::new(x).finish().map_err(|e| e.to_string()))
    {
        Ok(h) => Some((tpath, h)),
        Err(why) => {
            run.skip(tpath, format!("record {}: {why}", rec.id));
            None
        }
    }
}

/// Adds one record's header to its conversation's: participants not seen
/// yet, and the title and owner when still empty.
fn merge_header(into: &mut Header, header: Header) {
    for p in header.participants {
        if !into.participants.iter().any(|q| q.id == p.id) {
            into.participants.push(p);
        }
    }
    if into.title.is_empty() {
        into.title = header.title;
    }
    if into.owner.is_empty() {
        into.owner = header.owner;
    }
}

/// The ownership rule: team and group conversations only when their owner
/// is a configured user; direct conversations whenever one side is.
fn owned(c: &ConvBuild, company: &Users<'_>) -> bool {
    let h = &c.header;
    match h.kind {
        Kind::Team | Kind::Group => {
            !h.owner.is_empty()
                && (company.by_key(&h.owner)
                    || h.participants
                        .iter()
                        .any(|p| p.id == h.owner && company.participant(p)))
        }
        Kind::Direct => {
            c.recorded_by_company || h.participants.iter().any(|p| company.participant(p))
        }
    }
}
