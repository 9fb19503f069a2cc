//! Runs one compliance request end to end; never runs a request another
//! process holds, nor leaves a started request unaudited.
//!
//! Check it, accept it (status file, audit row), run the engine with the
//! agent's keys, deliver the zip to the request's target, and audit every
//! step. Used by `exportd request submit` and by the daemon for signed
//! requests that arrive by central push (one engine, two entry points).

pub mod compliance;
pub mod room;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::export::Keys;
use crate::ledger::audit::{Action, AuditLog, Row, folder_digest};
use crate::policy::model::{TargetKind, TargetSpec};
use crate::policy::snapshot::Snapshot;
use crate::requests::compliance::{
    Directory, ExportRequest, Progress, RequestContext, SpoolOpener, StatusStore, Summary,
};
use crate::sink::{PutRequest, Source, Target};
use crate::time::Timestamp;
use crate::watch::spool::{OpenError, open_in_root};

/// Why a request could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RequestRunError {
    /// The request JSON is invalid.
    #[error("invalid export request: {0}")]
    Invalid(String),
    /// A request with this id exists already.
    #[error("export request {0:?} was already submitted; use a new request_id")]
    Duplicate(String),
    /// The target is unknown.
    #[error("export request names unknown target {0:?} (configured: {1})")]
    UnknownTarget(String, String),
    /// The export failed (status file says Failed, audit row written).
    #[error("export request {id} failed: {reason}")]
    Failed {
        /// Request id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Status or audit I/O.
    #[error("{0}")]
    State(String),
}

/// Opens spool files for the compliance engine: never outside a spool root,
/// never through a symlink out of it, decrypting `.age` files.
pub struct KeysOpener {
    /// Configured root and its canonical form.
    pub roots: Vec<(PathBuf, PathBuf)>,
    /// The key store.
    pub keys: Arc<dyn Keys>,
}

impl SpoolOpener for KeysOpener {
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        let root = self
            .roots
            .iter()
            .find(|(r, c)| path.starts_with(r) || path.starts_with(c))
            .map(|(r, c)| {
                if path.starts_with(r) {
                    r.clone()
                } else {
                    c.clone()
                }
            })
            .ok_or_else(|| {
                io::Error::other(format!("{} is not inside a spool root", path.display()))
            })?;
        let f = open_in_root(&root, path).map_err(|e| match e {
            OpenError::Missing(p) => io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is missing", p.display()),
            ),
            other => io::Error::other(other.to_string()),
        })?;
        if path.extension().is_some_and(|e| e == "age") {
            self.keys.decrypt(Box::new(io::BufReader::new(f)))
        } else {
            Ok(Box::new(f))
        }
    }
}

/// A file on disk as a [`Source`].
struct FileSource<'a>(&'a Path);

impl Source for FileSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(std::fs::File::open(self.0)?))
    }
    fn len_hint(&self) -> Option<u64> {
        std::fs::metadata(self.0).ok().map(|m| m.len())
    }
}

/// SHA-256 and size of the delivered zip `<output_dir>/compliance-exports/<name>`,
/// read through directory handles (never through a link planted since).
fn zip_digest(output_dir: &Path, name: &str) -> io::Result<([u8; 32], u64)> {
    use crate::sink::handle::{self, Existing};
    let root = handle::open_root(output_dir)?;
    let dir = handle::open_dir_beneath(&root, "compliance-exports")?;
    match handle::open_existing(&dir, name)? {
        Existing::File(mut f) => {
            let len = f.metadata()?.len();
            Ok((crate::sink::fs::sha256_of(&mut f)?, len))
        }
        Existing::Missing => Err(io::Error::new(io::ErrorKind::NotFound, "zip missing")),
        Existing::NotRegular(what) => Err(io::Error::other(format!("the zip is {what}"))),
    }
}

/// What a request run needs.
pub struct RequestEnv<'a> {
    /// `state_dir`.
    pub state_dir: &'a Path,
    /// Spool roots (configured, canonical).
    pub roots: Vec<(PathBuf, PathBuf)>,
    /// The model in force (users, targets): its snapshot, whose indexes
    /// answer the engine's questions about users without a parse of the
    /// directory.
    pub snap: &'a Snapshot,
    /// Targets aligned with `snap.targets()` (for S3 delivery).
    pub targets: &'a [Arc<dyn Target>],
    /// Keys.
    pub keys: Arc<dyn Keys>,
    /// Audit log.
    pub audit: &'a Mutex<AuditLog>,
}

#[allow(clippy::too_many_arguments)]
fn audit_row(
    env: &RequestEnv<'_>,
    id: &str,
    code: &str,
    desc: String,
    dst_type: &str,
    dst: &str,
    files: u64,
    bytes: u64,
    sha: String,
) {
    let row = Row {
        ccdr_id: id.to_string(),
        n_files: files,
        bytes,
        dst_folder_type: dst_type.to_string(),
        dst_folder_path: dst.to_string(),
        action: Action::Request.as_str(),
        error_code: code.to_string(),
        error_desc: desc,
        sha256: sha,
        ..Row::default()
    };
    let mut a = env.audit.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = a.append(&row) {
        tracing::error!("audit row for request {id} could not be written: {e}");
    }
}

/// Checks a parsed request against the model in force: its fields, its
/// target, its users.
fn check(env: &RequestEnv<'_>, req: &ExportRequest) -> Result<(), RequestRunError> {
    req.validate()
        .map_err(|e| RequestRunError::Invalid(e.to_string()))?;
    if !env.snap.targets().iter().any(|t| t.id == req.target) {
        let ids: Vec<&str> = env.snap.targets().iter().map(|t| t.id.as_str()).collect();
        return Err(RequestRunError::UnknownTarget(
            req.target.clone(),
            ids.join(", "),
        ));
    }
    if let Some(users) = &req.users {
        for u in users {
            if !env.snap.has_id(u) {
                return Err(RequestRunError::Invalid(format!(
                    "user {u:?} is not a configured user"
                )));
            }
        }
    }
    Ok(())
}

/// Checks and accepts a request (status `Accepted`, audit row). A request refused
/// after it parsed gets a `Failed` status with the reason. Returns the
/// parsed request.
pub fn accept(env: &RequestEnv<'_>, json: &[u8]) -> Result<ExportRequest, RequestRunError> {
    let req =
        ExportRequest::from_json(json).map_err(|e| RequestRunError::Invalid(e.to_string()))?;
    let store = StatusStore::new(env.state_dir);
    check(env, &req).inspect_err(|e| {
        // Whoever submitted it reads why in its status file (`Failed`),
        // when its id can name one and no request of that id exists.
        let _ = store.refuse(&req.request_id, &e.to_string(), Timestamp::now());
    })?;
    // Kept (once accepted) so that a daemon restarted mid-export can resume it.
    let saved = env
        .state_dir
        .join("requests")
        .join(format!("{}.request", req.request_id));
    match store.get(&req.request_id) {
        // Refused before it was ever accepted (no saved request): this
        // submission replaces that status.
        Ok(Some(st)) if st.status == compliance::State::Failed && !saved.exists() => {
            if let Ok(p) = store.path(&req.request_id) {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(Some(_)) => return Err(RequestRunError::Duplicate(req.request_id.clone())),
        Ok(None) => {}
        Err(e) => return Err(RequestRunError::State(e.to_string())),
    }
    store
        .accept(&req.request_id, Timestamp::now())
        .map_err(|e| RequestRunError::State(e.to_string()))?;
    let _ = crate::policy::snapshot::write_atomic(&saved, json);
    audit_row(
        env,
        &req.request_id,
        "Accepted",
        format!(
            "export request accepted: target {}, format {:?}",
            req.target, req.format
        ),
        "",
        "",
        0,
        0,
        String::new(),
    );
    Ok(req)
}

/// Runs an accepted request to completion (status `InProgress` with percent,
/// then `Completed` or `Failed`), delivering the zip to its target.
pub fn execute(
    env: &RequestEnv<'_>,
    req: &ExportRequest,
    progress: &mut dyn FnMut(u8),
) -> Result<Summary, RequestRunError> {
    let id = req.request_id.clone();
    let store = StatusStore::new(env.state_dir);
    // One runner per request across processes (the CLI and the daemon).
    let _lock = lock_request(env.state_dir, &id)?;
    still_to_run(&store, &id)?;
    let dest = destination(env, &store, req)?;
    let (mut sum, skipped) = run_engine(env, &store, req, &dest, progress)?;
    let name = format!("{id}.zip");
    let (sha, bytes) = zip_digest(&dest.output_dir, &name).unwrap_or(([0; 32], 0));
    if dest.s3 {
        upload(env, &store, &dest, &name, &mut sum)?;
    }
    let (_, digest) = folder_digest(&mut [(name, sha)]);
    audit_row(
        env,
        &id,
        "Completed",
        completed_desc(&sum, skipped),
        dest.spec.kind.as_str(),
        "compliance-exports",
        1,
        bytes,
        digest,
    );
    Ok(sum)
}

/// Where a request's zip is written: the folder target's root, or the
/// outbox of an S3 target (uploaded from there).
struct Destination<'m> {
    /// Index of the target in `model.targets` and `targets`.
    index: usize,
    spec: &'m TargetSpec,
    /// The engine's `output_dir`.
    output_dir: PathBuf,
    /// Uploaded to S3 after the engine ran.
    s3: bool,
}

/// Fails unless the request is still `Accepted` or `InProgress`.
fn still_to_run(store: &StatusStore, id: &str) -> Result<(), RequestRunError> {
    if let Ok(Some(st)) = store.get(id) {
        if !matches!(
            st.status,
            compliance::State::Accepted | compliance::State::InProgress
        ) {
            return Err(RequestRunError::State(format!(
                "request {id} is already {:?}",
                st.status
            )));
        }
    }
    Ok(())
}

/// Audits a failed request (a `Failed` row) and gives its error.
fn failed(env: &RequestEnv<'_>, id: &str, reason: String, dst_type: &str) -> RequestRunError {
    audit_row(
        env,
        id,
        "Failed",
        reason.clone(),
        dst_type,
        "compliance-exports",
        0,
        0,
        String::new(),
    );
    RequestRunError::Failed {
        id: id.to_string(),
        reason,
    }
}

/// The request's target and output folder, ready for the engine: an S3
/// target's outbox is made, a folder target must prove it is the archive.
fn destination<'m>(
    env: &RequestEnv<'m>,
    store: &StatusStore,
    req: &ExportRequest,
) -> Result<Destination<'m>, RequestRunError> {
    let id = req.request_id.as_str();
    let ti = env.snap.targets().iter().position(|t| t.id == req.target);
    let Some(ti) = ti else {
        let reason = format!("unknown target {:?}", req.target);
        let _ = store.fail(id, &reason, Timestamp::now());
        return Err(RequestRunError::Failed {
            id: id.to_string(),
            reason,
        });
    };
    let spec = &env.snap.targets()[ti];
    let (output_dir, s3) = match spec.kind {
        TargetKind::Fs => (spec.path.clone().unwrap_or_default(), false),
        TargetKind::S3 => (env.state_dir.join("outbox").join(&spec.id), true),
    };
    if s3 {
        std::fs::create_dir_all(&output_dir)
            .map_err(|e| RequestRunError::State(format!("{}: {e}", output_dir.display())))?;
    } else if let Some(t) = env.targets.get(ti) {
        // A folder target must prove it is the archive (its marker) before
        // the zip is written there: never onto a bare mount point.
        if let Err(e) = t.check_available() {
            let reason = e.to_string();
            let _ = store.fail(id, &reason, Timestamp::now());
            return Err(failed(env, id, reason, spec.kind.as_str()));
        }
    }
    Ok(Destination {
        index: ti,
        spec,
        output_dir,
        s3,
    })
}

/// Runs the engine with the agent's keys (`InProgress` row first); gives
/// the summary and how many items were left out.
fn run_engine(
    env: &RequestEnv<'_>,
    store: &StatusStore,
    req: &ExportRequest,
    dest: &Destination<'_>,
    progress: &mut dyn FnMut(u8),
) -> Result<(Summary, u64), RequestRunError> {
    let id = req.request_id.as_str();
    let opener = KeysOpener {
        roots: env.roots.clone(),
        keys: env.keys.clone(),
    };
    let ctx = RequestContext {
        spool_roots: env.roots.iter().map(|r| r.0.clone()).collect(),
        users: env.snap,
        opener: &opener,
        output_dir: dest.output_dir.clone(),
        now: Timestamp::now(),
    };
    audit_row(
        env,
        id,
        "InProgress",
        "export request started".into(),
        dest.spec.kind.as_str(),
        "compliance-exports",
        0,
        0,
        String::new(),
    );
    let mut skipped = 0u64;
    let res = compliance::run_tracked(req, &ctx, store, &Timestamp::now, &mut |p| {
        if let Some(pc) = p.percent() {
            progress(pc);
        }
        if let Progress::Skipped { path, reason } = &p {
            skipped += 1;
            tracing::warn!(request = %id, "left out {}: {reason}", path.display());
        }
    });
    match res {
        Ok(s) => Ok((s, skipped)),
        Err(e) => Err(failed(env, id, e.to_string(), dest.spec.kind.as_str())),
    }
}

/// Uploads the zip from the outbox to its S3 target; on success the local
/// copy is removed and the summary and status name the uploaded object.
fn upload(
    env: &RequestEnv<'_>,
    store: &StatusStore,
    dest: &Destination<'_>,
    name: &str,
    sum: &mut Summary,
) -> Result<(), RequestRunError> {
    let id = sum.request_id.as_str();
    let target = &env.targets[dest.index];
    let put = PutRequest {
        folder: "compliance-exports",
        name,
        want_sha512: false,
    };
    let local = sum.zip.clone();
    match target.put(&put, &FileSource(&local)) {
        Ok(_) => {
            let _ = std::fs::remove_file(&local);
            sum.zip = PathBuf::from(target.describe("compliance-exports")).join(name);
            let _ = store.complete(id, &sum.zip, Timestamp::now());
            Ok(())
        }
        Err(e) => {
            let reason = format!("uploading {name}: {e}");
            let _ = store.fail(id, &reason, Timestamp::now());
            Err(failed(env, id, reason, "s3"))
        }
    }
}

/// The `Completed` row's description: what the zip holds.
fn completed_desc(sum: &Summary, skipped: u64) -> String {
    let c = &sum.counts;
    format!(
        "{} conversations, {} messages ({} deleted, {} edits), {} files, {} records; {} left out{}",
        c.conversations,
        c.messages,
        c.deleted,
        c.edits,
        c.files,
        c.records,
        skipped,
        if sum.beyond_retention {
            "; the requested range reaches beyond what the appliance still holds (see request.json)"
        } else {
            ""
        }
    )
}

/// Expires completed requests older than 30 days (zip removed, status
/// `Expired`, audit row). Returns the ids expired.
pub fn expire(env: &RequestEnv<'_>, now: Timestamp) -> Vec<String> {
    let store = StatusStore::new(env.state_dir);
    match store.expire(now) {
        Ok(ids) => {
            for id in &ids {
                audit_row(
                    env,
                    id,
                    "Expired",
                    "30 days after completion: the zip was removed from the target".into(),
                    "",
                    "compliance-exports",
                    0,
                    0,
                    String::new(),
                );
            }
            ids
        }
        Err(e) => {
            tracing::error!("expiring compliance exports failed: {e}");
            Vec::new()
        }
    }
}

/// When the next completed request expires, if any.
pub fn next_expiry(state_dir: &Path) -> Option<Timestamp> {
    let store = StatusStore::new(state_dir);
    store
        .list()
        .ok()?
        .into_iter()
        .filter(|s| s.status == compliance::State::Completed)
        .filter_map(|s| {
            s.completed_at
                .as_deref()
                .and_then(|c| Timestamp::parse_rfc3339(c).ok())
        })
        .map(|t| Timestamp(t.0 + compliance::RETENTION_MS))
        .min()
}

/// How many times an unfinished request is resumed after the agent stopped
/// while it ran; then it fails. A request that kills the agent (out of
/// memory under the unit's `MemoryMax`, a crash) must not keep it in a
/// restart loop, which would stop every export.
pub const MAX_RESUMES: u32 = 2;

/// Before an unfinished request is resumed: counts the resume
/// (`requests/<id>.resumes`, durable before the run) and says whether to
/// run it. Past [`MAX_RESUMES`] the request is marked `Failed` (status and
/// audit row) instead.
pub fn count_resume(env: &RequestEnv<'_>, id: &str) -> bool {
    if !compliance::id_is_safe(id) {
        return false;
    }
    let path = env.state_dir.join("requests").join(format!("{id}.resumes"));
    let n: u32 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if n >= MAX_RESUMES {
        let reason = format!(
            "the agent stopped while running this request {} times (out of memory or a crash? see its log); not resumed again: resubmit it under a new request_id once the cause is fixed",
            n + 1
        );
        let _ = StatusStore::new(env.state_dir).fail(id, &reason, Timestamp::now());
        let _ = failed(env, id, reason, "");
        return false;
    }
    if let Err(e) = crate::policy::snapshot::write_atomic(&path, format!("{}\n", n + 1).as_bytes())
    {
        tracing::warn!(
            "cannot count the resume of request {id} in {}: {e}; resumed anyway",
            path.display()
        );
    }
    true
}

/// The saved payload of an accepted request, if any.
pub fn load_saved(state_dir: &Path, id: &str) -> Option<ExportRequest> {
    if !compliance::id_is_safe(id) {
        return None;
    }
    let b = std::fs::read(state_dir.join("requests").join(format!("{id}.request"))).ok()?;
    ExportRequest::from_json(&b).ok()
}

/// Takes the per-request lock (`requests/<id>.lock`), or fails if another
/// process runs the request.
fn lock_request(state_dir: &Path, id: &str) -> Result<std::fs::File, RequestRunError> {
    let dir = state_dir.join("requests");
    std::fs::create_dir_all(&dir)
        .map_err(|e| RequestRunError::State(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("{id}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RequestRunError::State(format!("{}: {e}", path.display())))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        RequestRunError::State(format!(
            "request {id} is being run by another exportd process"
        ))
    })?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::compliance::Counts;

    #[test]
    fn the_completed_row_says_what_the_zip_holds() {
        let mut sum = Summary {
            request_id: "r-1".into(),
            zip: PathBuf::from("/a/r-1.zip"),
            counts: Counts {
                conversations: 2,
                messages: 9,
                deleted: 1,
                edits: 3,
                files: 4,
                records: 5,
            },
            covered: None,
            beyond_retention: false,
            skipped: 6,
        };
        assert_eq!(
            completed_desc(&sum, 6),
            "2 conversations, 9 messages (1 deleted, 3 edits), 4 files, 5 records; 6 left out"
        );
        sum.beyond_retention = true;
        assert!(completed_desc(&sum, 0).ends_with(
            "0 left out; the requested range reaches beyond what the appliance still holds (see request.json)"
        ));
    }
}
