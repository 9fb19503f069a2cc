//! On-demand compliance exports: one zip per request from the spool, which it
//! only reads; never overwrites a zip already delivered.
//!
//! Every chat conversation of the requested users and range (export-layout.md,
//! config.md), in the RingCentral Glip compliance-export layout (default) or Slack's workspace-export layout,
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
//!
//! Parts: `select` (steps 1 to 3), `conversation` (one conversation of
//! step 4), `package` (the zip, step 4 and 5), `out` (the two layouts),
//! `scan` (the spool walk and the users), `request`, `status`.

mod conversation;
mod out;
mod package;
mod request;
mod scan;
mod select;
mod status;

use std::path::{Path, PathBuf};

pub use request::{ExportRequest, Format, RequestError, Validated, id_is_safe};
pub use scan::{Directory, PlainOpener, SpoolOpener};
pub use status::{RETENTION_MS, RequestStatus, State, StatusError, StatusStore};

use crate::record::im;
use crate::time::Timestamp;
use scan::Users;

/// The most skipped items listed in `request.json` (all are counted).
pub const MAX_SKIPPED_LISTED: usize = 10_000;

/// What a compliance export needs from the agent.
pub struct RequestContext<'a> {
    /// The spool roots to walk.
    pub spool_roots: Vec<PathBuf>,
    /// The configured users (the company): the snapshot in force, whose
    /// indexes answer without the directory in memory.
    pub users: &'a dyn Directory,
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

/// One export under way: what it left out, and where progress goes.
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
    let company = Users::all(ctx.users);
    let wanted = select::requested_users(req, ctx.users)?;
    let dest = package::Destination::open(ctx, &req.request_id)?;
    let mut run = Run {
        skipped: Vec::new(),
        skipped_n: 0,
        on_progress,
        opener: ctx.opener,
    };

    // 1. Walk and parse every metadata XML.
    let scanned = select::scan(ctx, &v, &wanted, &mut run);
    (run.on_progress)(Progress::Scanned {
        metadata_files: scanned.metadata_files,
        records: scanned.records,
    });

    // 2. Transcript headers, grouped by conversation, owned by the company.
    let grouped = select::group(scanned.kept, &company, &mut run);
    (run.on_progress)(Progress::Selected {
        records: grouped.records,
        conversations: grouped.convs.len() as u64,
    });

    // 3. Write the zip and put it in place.
    let range = (scanned.oldest, scanned.newest);
    let (counts, covered, beyond) = dest.write(req, &v, ctx, &mut run, grouped, range)?;
    (run.on_progress)(Progress::Finished {
        zip: dest.final_path.clone(),
    });
    Ok(Summary {
        request_id: req.request_id.clone(),
        zip: dest.final_path,
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
