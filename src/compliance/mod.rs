//! On-demand compliance exports (export-layout.md, config.md): every chat
//! conversation of the requested users and range, in the RingCentral Glip
//! compliance-export layout (default) or Slack's workspace-export layout,
//! delivered as `<target>/compliance-exports/<request_id>.zip`.
//!
//! # How [`run`] works
//! 1. Walks the spool roots (no symlinks, temp names skipped) and parses every
//!    metadata XML (`*.xml`, `*.xml.age` through the caller's [`SpoolOpener`]).
//!    The oldest/newest records seen give the range still on the appliance.
//! 2. Keeps records of the requested modalities whose `[start_time,
//!    end_time]` overlaps `[time_from, time_to)` (a chat record that started
//!    before the range can hold messages inside it; messages are filtered by
//!    time afterwards, so the content is exactly the range) and that belong to
//!    a requested user (recorded extension, or a participant's id/address).
//! 3. Reads each kept record's `.im` transcript header, groups records by
//!    `conversation_id`, and applies ownership against all configured users
//!    (the company): team and group conversations only when their owner is a
//!    configured user; direct conversations whenever one side is.
//! 4. One conversation at a time: streams its transcripts, keeps the
//!    messages inside the range (deduplicated by message id; of two copies
//!    the one with the later change wins), writes one JSON per UTC day, then
//!    streams its attachments when asked. Only one conversation's in-range
//!    messages are in memory at once.
//! 5. Writes the index files and `request.json`, finishes the zip in
//!    `.<request_id>.<random>.zip.tmp` (created `O_EXCL | O_NOFOLLOW`, mode
//!    0640, through a handle of `compliance-exports/`, itself never a
//!    followed symlink), fsyncs, renames it to `<request_id>.zip` (never
//!    replacing an existing one) and fsyncs the folder.
//!
//! Records that cannot be read (bad XML, zip bombs, missing attachments) do
//! not stop the export: they are listed in `request.json` (`skipped`) and
//! reported through [`Progress::Skipped`].

mod out;
mod request;
mod scan;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub use request::{ExportRequest, Format, RequestError, Validated, id_is_safe};
pub use scan::{PlainOpener, SpoolOpener};
pub use status::{RETENTION_MS, RequestStatus, State, StatusError, StatusStore};

use crate::im::{self, Header, Item, Kind, Message};
use crate::model::User;
use crate::record::{FileRole, Record};
use crate::target::handle;
use crate::time::Timestamp;
use out::{ConvMeta, Out, Post};
use scan::UserIndex;

/// The most skipped items listed in `request.json` (all are counted).
pub const MAX_SKIPPED_LISTED: usize = 10_000;

/// What a compliance export needs from the agent.
pub struct RequestContext<'a> {
    /// The spool roots to walk.
    pub spool_roots: Vec<PathBuf>,
    /// The configured users (the company).
    pub users: Vec<User>,
    /// Opens spool files, decrypting `.age` ones.
    pub opener: &'a dyn SpoolOpener,
    /// The fs target's root; the zip goes to `<output_dir>/compliance-exports/`.
    pub output_dir: PathBuf,
    /// The time the export is generated at (`request.json`).
    pub now: Timestamp,
}

/// Why an export failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    /// The request is invalid.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The request names a user that is not configured.
    #[error("request names user {0:?}, which is not a configured user")]
    UnknownUser(String),
    /// The final zip already exists; it is never overwritten.
    #[error("{0} already exists; a compliance export is never overwritten")]
    Exists(PathBuf),
    /// File system error on the output side.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Writing the zip failed.
    #[error("writing the zip: {0}")]
    Zip(String),
}

/// Progress events for the caller's status file and audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The spool was walked and its metadata parsed.
    Scanned {
        /// Metadata XML files found.
        metadata_files: u64,
        /// Of those, parsed.
        records: u64,
    },
    /// Records and conversations selected.
    Selected {
        /// Records in scope (modality, range, users).
        records: u64,
        /// Conversations after ownership rules.
        conversations: u64,
    },
    /// One conversation was written.
    Conversation {
        /// Conversations done.
        done: u64,
        /// Conversations in total.
        total: u64,
        /// Its id.
        conversation_id: String,
    },
    /// Something was left out (listed in `request.json` too).
    Skipped {
        /// The file concerned.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The zip is in place.
    Finished {
        /// Where.
        zip: PathBuf,
    },
}

impl Progress {
    /// A percentage for the status file, when the event moves it.
    pub fn percent(&self) -> Option<u8> {
        match self {
            Progress::Scanned { .. } => Some(5),
            Progress::Selected { .. } => Some(10),
            Progress::Conversation { done, total, .. } => {
                Some((10 + done.saturating_mul(85) / (*total).max(1)).min(95) as u8)
            }
            Progress::Skipped { .. } => None,
            Progress::Finished { .. } => Some(100),
        }
    }
}

/// What an export contains (also in `request.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Conversations with at least one message in range.
    pub conversations: u64,
    /// Messages (posts) in range, deleted ones included.
    pub messages: u64,
    /// Of those, deleted.
    pub deleted: u64,
    /// Edit-log entries.
    pub edits: u64,
    /// Attachment files written under `Files/`.
    pub files: u64,
    /// Records whose data is in the export.
    pub records: u64,
}

/// The outcome of a finished export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The request id.
    pub request_id: String,
    /// The zip written.
    pub zip: PathBuf,
    /// What it contains.
    pub counts: Counts,
    /// The range covered by data still on the appliance, if any.
    pub covered: Option<(Timestamp, Timestamp)>,
    /// The requested range starts before the oldest record still on the appliance.
    pub beyond_retention: bool,
    /// Items left out (unreadable records, missing attachments).
    pub skipped: u64,
}

/// fsyncs a folder.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

struct Source {
    record_id: String,
    transcript: PathBuf,
    dir: PathBuf,
    attachments: Vec<(String, String)>,
}

struct ConvBuild {
    header: Header,
    records: Vec<String>,
    sources: Vec<Source>,
    recorded_by_company: bool,
}

struct Run<'a, 'b> {
    skipped: Vec<(PathBuf, String)>,
    skipped_n: u64,
    on_progress: &'b mut dyn FnMut(Progress),
    opener: &'a dyn SpoolOpener,
}

impl Run<'_, '_> {
    fn skip(&mut self, path: PathBuf, reason: String) {
        self.skipped_n += 1;
        (self.on_progress)(Progress::Skipped {
            path: path.clone(),
            reason: reason.clone(),
        });
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push((path, reason));
        }
    }
}

/// The transcript XML of a `.im` (or decrypted `.im.age`), streamed with
/// every cap checked as it is read: never held whole in memory.
fn transcript_xml<'o>(
    opener: &'o dyn SpoolOpener,
    path: &Path,
) -> Result<im::stream::XmlStream<'o>, String> {
    let r = opener
        .open(path)
        .map_err(|e| format!("cannot open transcript: {e}"))?;
    im::stream::xml_reader(im::stream::ImSource::Stream(r))
        .map_err(|e| format!("cannot read transcript: {e}"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ComplianceError + '_ {
    move |source| ComplianceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn transcript_of(r: &Record) -> Option<&crate::record::FileRef> {
    r.files.iter().find(|f| {
        let n = f.base_name();
        f.role == FileRole::Transcript && (n.ends_with(".im") || n.ends_with(".im.age"))
    })
}

/// The name an attachment gets in the zip: its base name without `.age`
/// (the opener returns plaintext).
fn plain_name(rel: &str) -> String {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    base.strip_suffix(".age").unwrap_or(base).to_string()
}

/// Runs a compliance export. See the module documentation.
pub fn run(
    req: &ExportRequest,
    ctx: &RequestContext<'_>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, ComplianceError> {
    let v = req.validate()?;
    let company = UserIndex::new(ctx.users.iter().enumerate());
    let selected_users: Vec<(usize, &User)> = match &req.users {
        None => ctx.users.iter().enumerate().collect(),
        Some(ids) => {
            let mut out = Vec::new();
            for id in ids {
                match ctx.users.iter().position(|u| &u.id == id) {
                    Some(i) => out.push((i, &ctx.users[i])),
                    None => {
                        return Err(ComplianceError::UnknownUser(id.chars().take(128).collect()));
                    }
                }
            }
            out
        }
    };
    let wanted = UserIndex::new(selected_users);

    // Handles, not names (issue 21): the output folder is opened once and
    // everything in it is reached through its handle, never following a
    // link below the configured root.
    let out_path = ctx.output_dir.join("compliance-exports");
    let final_name = format!("{}.zip", req.request_id);
    let final_path = out_path.join(&final_name);
    // The caller proved a folder target's root is the archive (its marker)
    // before; the engine alone (tests, outbox) makes its output folder.
    if !ctx.output_dir.exists() {
        std::fs::create_dir_all(&ctx.output_dir).map_err(io_err(&ctx.output_dir))?;
    }
    let out_root = handle::open_root(&ctx.output_dir).map_err(io_err(&ctx.output_dir))?;
    let (out_dir, created) = handle::ensure_dir(&out_root, "compliance-exports").map_err(|e| {
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

    let mut run = Run {
        skipped: Vec::new(),
        skipped_n: 0,
        on_progress,
        opener: ctx.opener,
    };

    // 1. Walk and parse every metadata XML.
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for root in &ctx.spool_roots {
        files.extend(scan::metadata_files(root, &mut problems));
    }
    for (p, why) in problems {
        run.skip(p, why);
    }
    let mut oldest: Option<Timestamp> = None;
    let mut newest: Option<Timestamp> = None;
    let mut parsed = 0u64;
    let mut seen_ids = HashSet::new();
    let mut kept: Vec<(PathBuf, Record)> = Vec::new();
    for path in &files {
        let rec = match scan::load_record(ctx.opener, path) {
            Ok(r) => r,
            Err(why) => {
                run.skip(path.clone(), format!("metadata: {why}"));
                continue;
            }
        };
        parsed += 1;
        oldest = Some(oldest.map_or(rec.start_time, |o| o.min(rec.start_time)));
        newest = Some(newest.map_or(rec.end_time, |n| n.max(rec.end_time.max(rec.start_time))));
        if !v.modalities.contains(&rec.modality)
            || !v.overlaps(rec.start_time, rec.end_time)
            || !wanted.record(&rec)
            || !seen_ids.insert(rec.id.clone())
        {
            continue;
        }
        kept.push((path.clone(), rec));
    }
    (run.on_progress)(Progress::Scanned {
        metadata_files: files.len() as u64,
        records: parsed,
    });

    // 2. Transcript headers, grouped by conversation.
    let mut convs: BTreeMap<String, ConvBuild> = BTreeMap::new();
    let mut others: Vec<(PathBuf, Record)> = Vec::new();
    let selected_records = kept.len() as u64;
    for (path, rec) in kept {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let Some(tf) = transcript_of(&rec) else {
            others.push((path, rec));
            continue;
        };
        let tpath = match scan::content_path(&dir, &tf.path) {
            Ok(p) => p,
            Err(e) => {
                run.skip(
                    dir.join(&tf.path),
                    format!("record {}: transcript: {e}", rec.id),
                );
                continue;
            }
        };
        let header = match transcript_xml(run.opener, &tpath)
            .and_then(|x| im::Parser::new(x).finish().map_err(|e| e.to_string()))
        {
            Ok(h) => h,
            Err(why) => {
                run.skip(tpath, format!("record {}: {why}", rec.id));
                continue;
            }
        };
        let by_company = company.by_key(&rec.recorded_extension).is_some();
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
        for p in header.participants {
            if !c.header.participants.iter().any(|q| q.id == p.id) {
                c.header.participants.push(p);
            }
        }
        if c.header.title.is_empty() {
            c.header.title = header.title;
        }
        if c.header.owner.is_empty() {
            c.header.owner = header.owner;
        }
        c.recorded_by_company |= by_company;
        c.records.push(rec.id.clone());
        c.sources.push(source);
    }
    convs.retain(|_, c| owned(c, &company));
    let total = convs.len() as u64;
    (run.on_progress)(Progress::Selected {
        records: selected_records,
        conversations: total,
    });

    // 3. Write the zip.
    // A fresh, unpredictable temp name, created O_EXCL|O_NOFOLLOW: a link
    // planted under any name is never written through.
    let tmp_name = format!(
        ".{}.{}.zip.tmp",
        req.request_id,
        crate::target::fs::start_nonce()
    );
    let tmp = out_path.join(&tmp_name);
    let file = handle::create_new(&out_dir, &tmp_name, 0o640).map_err(io_err(&tmp))?;
    let result = write_zip(
        req,
        &v,
        ctx,
        &mut run,
        Out::new(file, req.format),
        convs,
        others,
        (oldest, newest),
    );
    let (counts, covered, beyond) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = handle::remove_in(&out_dir, &tmp_name);
            return Err(e);
        }
    };
    publish(&out_dir, &tmp_name, &final_name, &final_path)?;
    (run.on_progress)(Progress::Finished {
        zip: final_path.clone(),
    });
    Ok(Summary {
        request_id: req.request_id.clone(),
        zip: final_path,
        counts,
        covered,
        beyond_retention: beyond,
        skipped: run.skipped_n,
    })
}

/// Runs an export and keeps its status file current: `InProgress` with the
/// percentage as it moves, then `Completed` or `Failed` with the reason. The
/// request must have been [`StatusStore::accept`]ed. Every event is passed on
/// to `on_progress` (for the audit log).
pub fn run_tracked(
    req: &ExportRequest,
    ctx: &RequestContext<'_>,
    store: &StatusStore,
    clock: &dyn Fn() -> Timestamp,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, ComplianceError> {
    let id = req.request_id.as_str();
    let mut last = None;
    let mut status_err: Option<StatusError> = None;
    let _ = store.progress(id, 0, clock());
    let res = run(req, ctx, &mut |p| {
        if let Some(pc) = p.percent() {
            if last != Some(pc) && pc < 100 {
                last = Some(pc);
                if let Err(e) = store.progress(id, pc, clock()) {
                    status_err.get_or_insert(e);
                }
            }
        }
        on_progress(p);
    });
    match &res {
        Ok(s) => {
            store.complete(id, &s.zip, clock()).map_err(|e| {
                ComplianceError::Zip(format!(
                    "zip written but the status file could not be updated: {e}"
                ))
            })?;
        }
        Err(e) => {
            let _ = store.fail(id, &e.to_string(), clock());
        }
    }
    res
}

fn owned(c: &ConvBuild, company: &UserIndex) -> bool {
    let h = &c.header;
    match h.kind {
        Kind::Team | Kind::Group => {
            !h.owner.is_empty()
                && (company.by_key(&h.owner).is_some()
                    || h.participants
                        .iter()
                        .any(|p| p.id == h.owner && company.participant(p).is_some()))
        }
        Kind::Direct => {
            c.recorded_by_company
                || h.participants
                    .iter()
                    .any(|p| company.participant(p).is_some())
        }
    }
}

type Range = (Option<Timestamp>, Option<Timestamp>);
type Written = (Counts, Option<(Timestamp, Timestamp)>, bool);

#[allow(clippy::too_many_arguments)]
fn write_zip(
    req: &ExportRequest,
    v: &Validated,
    ctx: &RequestContext<'_>,
    run: &mut Run<'_, '_>,
    mut out: Out,
    convs: BTreeMap<String, ConvBuild>,
    others: Vec<(PathBuf, Record)>,
    (oldest, newest): Range,
) -> Result<Written, ComplianceError> {
    let mut counts = Counts::default();
    let mut metas = Vec::new();
    let total = convs.len() as u64;
    for (done, (cid, c)) in convs.into_iter().enumerate() {
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
    for (path, rec) in &others {
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
                    if copy_file(run, &mut out, &dir, &f.path, &zp)? {
                        counts.files += 1;
                        names.push(zp);
                    }
                }
            }
        }
        counts.records += 1;
        other_list.push(json!({
            "id": rec.id,
            "modality": rec.modality.as_str(),
            "start_time": rec.start_time.rfc3339().to_string(),
            "end_time": rec.end_time.rfc3339().to_string(),
            "recorded_extension": rec.recorded_extension,
            "files": names,
        }));
    }
    out.index(&metas, &ctx.users)?;

    let covered = match (oldest, newest) {
        (Some(o), Some(n)) => {
            let from = v.from.map_or(o, |f| f.max(o));
            let to = v.to.map_or(n, |t| t.min(n));
            Some((from, to.max(from)))
        }
        _ => None,
    };
    let (beyond, note) = match (v.from, oldest) {
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
    let rfc = |t: Option<Timestamp>| t.map(|t| t.rfc3339().to_string());
    let request_json = json!({
        "request": req,
        "format": match req.format { Format::Glip => "glip", Format::Slack => "slack" },
        "generated_at": ctx.now.rfc3339().to_string(),
        "requested": {"from": req.time_from, "to": req.time_to},
        "covered": covered.map(|(f, t)| json!({"from": f.rfc3339().to_string(), "to": t.rfc3339().to_string()})),
        "oldest_record": rfc(oldest),
        "newest_record": rfc(newest),
        "beyond_retention": beyond,
        "note": note,
        "ownership": "team and group conversations only when owned by a configured user; direct conversations whenever one side is a configured user",
        "counts": counts,
        "skipped_count": run.skipped_n,
        "skipped": run.skipped.iter().map(|(p, r)| json!({"path": p.display().to_string(), "reason": r})).collect::<Vec<Value>>(),
        "other_records": other_list,
    });
    out.request_json(&request_json)?;
    let file = out.finish()?;
    file.sync_all()
        .map_err(|e| ComplianceError::Zip(format!("fsync: {e}")))?;
    Ok((counts, covered, beyond))
}

/// Writes one conversation; `None` when it has no message in range.
fn write_conversation(
    req: &ExportRequest,
    v: &Validated,
    run: &mut Run<'_, '_>,
    out: &mut Out,
    c: ConvBuild,
    counts: &mut Counts,
) -> Result<Option<ConvMeta>, ComplianceError> {
    // day -> message id -> message; only this conversation's in-range messages.
    let mut days: BTreeMap<i64, HashMap<String, Message>> = BTreeMap::new();
    let mut day_of: HashMap<String, i64> = HashMap::new();
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    let mut contributing = Vec::new();
    for src in &c.sources {
        let xml = match transcript_xml(run.opener, &src.transcript) {
            Ok(x) => x,
            Err(why) => {
                run.skip(
                    src.transcript.clone(),
                    format!("record {}: {why}", src.record_id),
                );
                continue;
            }
        };
        let mut any = false;
        let mut on_item = |item: Item| match item {
            Item::Message(m) => {
                if !v.contains(m.timestamp) {
                    return;
                }
                any = true;
                let day = m.timestamp.day_number();
                match day_of.get(&m.id).copied() {
                    Some(d) => {
                        let Some(slot) = days.get_mut(&d) else { return };
                        let newer = slot.get(&m.id).is_none_or(|old| {
                            (m.last_modified(), m.edits.len(), m.deleted)
                                > (old.last_modified(), old.edits.len(), old.deleted)
                        });
                        if newer {
                            if d == day {
                                slot.insert(m.id.clone(), m);
                            } else {
                                slot.remove(&m.id);
                                day_of.insert(m.id.clone(), day);
                                days.entry(day).or_default().insert(m.id.clone(), m);
                            }
                        }
                    }
                    None => {
                        day_of.insert(m.id.clone(), day);
                        days.entry(day).or_default().insert(m.id.clone(), m);
                    }
                }
            }
            Item::Attachment(a) => {
                let list = names.entry(a.message_id).or_default();
                if !list.contains(&a.file) {
                    list.push(a.file);
                }
            }
        };
        let mut parser = im::Parser::new(xml);
        let res = loop {
            match parser.next_item() {
                Ok(Some(item)) => on_item(item),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(parser);
        if let Err(e) = res {
            run.skip(
                src.transcript.clone(),
                format!("record {}: {e}", src.record_id),
            );
            continue;
        }
        if any {
            contributing.push(src.record_id.clone());
        }
    }
    if day_of.is_empty() {
        return Ok(None);
    }
    let dir = out.conv_dir(&c.header.conversation_id);
    let mut meta = ConvMeta {
        id: c.header.conversation_id.clone(),
        kind: c.header.kind,
        title: c.header.title.clone(),
        owner: c.header.owner.clone(),
        participants: c.header.participants.clone(),
        records: contributing,
        dir,
        first: None,
    };
    for (_, msgs) in std::mem::take(&mut days) {
        let mut posts: Vec<Post> = msgs
            .into_values()
            .map(|m| {
                let attachments = names.get(&m.id).cloned().unwrap_or_default();
                Post {
                    msg: m,
                    attachments,
                }
            })
            .collect();
        posts.sort_by(|a, b| (a.msg.timestamp, &a.msg.id).cmp(&(b.msg.timestamp, &b.msg.id)));
        let Some(first) = posts.first() else { continue };
        meta.first.get_or_insert(first.msg.timestamp);
        let date = first.msg.timestamp.date().to_string();
        for p in &posts {
            counts.messages += 1;
            counts.deleted += u64::from(p.msg.deleted);
            counts.edits += p.msg.edits.len() as u64;
        }
        out.day(&meta, &date, &posts)?;
    }
    if req.attachments {
        for src in &c.sources {
            for (mid, rel) in &src.attachments {
                if !day_of.contains_key(mid) {
                    continue;
                }
                let Some(zp) = out.file_path(&meta, mid, &plain_name(rel)) else {
                    continue;
                };
                if copy_file(run, out, &src.dir, rel, &zp)? {
                    counts.files += 1;
                }
            }
        }
    }
    counts.conversations += 1;
    counts.records += meta.records.len() as u64;
    Ok(Some(meta))
}

/// Streams one spool file into the zip; a file that cannot be opened is
/// skipped (reported), an error while writing the zip fails the export.
fn copy_file(
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
    dir: &std::fs::File,
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
