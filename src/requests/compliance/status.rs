//! Request status files and their expiry; never deletes anything through a
//! symlink.
//!
//! Request status files: `<state_dir>/requests/<request_id>.json`
//! (export-layout.md): `Accepted` → `InProgress` → `Completed` | `Failed`,
//! and `Expired` 30 days after completion, when the zip is removed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::request::id_is_safe;
use crate::time::Timestamp;

/// How long a completed zip stays on the target (milliseconds: 30 days).
pub const RETENTION_MS: i64 = 30 * 86_400_000;

/// Where a request is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Submitted and checked, not started.
    Accepted,
    /// Running; `percent` tells how far.
    InProgress,
    /// The zip is on the target.
    Completed,
    /// Stopped; `reason` tells why.
    Failed,
    /// 30 days after completion; the zip was removed.
    Expired,
}

/// The content of a status file.
///
/// ```json
/// {"request_id": "r-1", "status": "Completed", "percent": 100, "reason": null,
///  "submitted_at": "2026-11-21T10:00:00.000Z", "updated_at": "...",
///  "completed_at": "2026-11-21T10:02:00.000Z",
///  "zip": "/mnt/archive/compliance-exports/r-1.zip"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestStatus {
    /// The request id.
    pub request_id: String,
    /// Lifecycle state.
    pub status: State,
    /// 0-100.
    pub percent: u8,
    /// Why it failed (or a note for `Expired`).
    pub reason: Option<String>,
    /// When it was accepted (RFC 3339 UTC).
    pub submitted_at: String,
    /// Last change (RFC 3339 UTC).
    pub updated_at: String,
    /// When it completed (RFC 3339 UTC).
    pub completed_at: Option<String>,
    /// The zip's path on the target, once completed.
    pub zip: Option<PathBuf>,
}

/// A status store problem.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The request id is unsafe as a file name.
    #[error("request_id {0:?} is not a safe file name")]
    BadId(String),
    /// A request with this id already exists.
    #[error("request {0:?} already exists")]
    Exists(String),
    /// No such request.
    #[error("no request {0:?}")]
    NotFound(String),
    /// A status file does not parse.
    #[error("status file {path}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        why: String,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StatusError + '_ {
    move |source| StatusError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The status files of one agent.
#[derive(Debug, Clone)]
pub struct StatusStore {
    dir: PathBuf,
}

impl StatusStore {
    /// The store under `<state_dir>/requests/` (created on first write).
    pub fn new(state_dir: &Path) -> StatusStore {
        StatusStore {
            dir: state_dir.join("requests"),
        }
    }

    /// The status file of a request.
    pub fn path(&self, request_id: &str) -> Result<PathBuf, StatusError> {
        if !id_is_safe(request_id) {
            return Err(StatusError::BadId(request_id.chars().take(160).collect()));
        }
        Ok(self.dir.join(format!("{request_id}.json")))
    }

    /// Records a new request as `Accepted`; an existing id is refused.
    pub fn accept(&self, request_id: &str, now: Timestamp) -> Result<RequestStatus, StatusError> {
        self.create(request_id, State::Accepted, None, now)
    }

    /// Records a request refused before it was accepted as `Failed` with
    /// the reason; a status that exists (another request of that id) is
    /// never touched.
    pub fn refuse(
        &self,
        request_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), StatusError> {
        let reason = Some(reason.replace(['\n', '\r'], " "));
        self.create(request_id, State::Failed, reason, now)
            .map(drop)
    }

    /// Writes the first status of a request id; an existing one is refused.
    fn create(
        &self,
        request_id: &str,
        status: State,
        reason: Option<String>,
        now: Timestamp,
    ) -> Result<RequestStatus, StatusError> {
        let path = self.path(request_id)?;
        if path.exists() {
            return Err(StatusError::Exists(request_id.to_string()));
        }
        let t = now.rfc3339().to_string();
        let st = RequestStatus {
            request_id: request_id.to_string(),
            status,
            percent: 0,
            reason,
            submitted_at: t.clone(),
            updated_at: t,
            completed_at: None,
            zip: None,
        };
        self.put(&st)?;
        Ok(st)
    }

    /// Reads a request's status.
    pub fn get(&self, request_id: &str) -> Result<Option<RequestStatus>, StatusError> {
        let path = self.path(request_id)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StatusError::Corrupt {
                path,
                why: e.to_string(),
            })
    }

    /// All requests, sorted by id (unreadable files are reported as errors).
    pub fn list(&self) -> Result<Vec<RequestStatus>, StatusError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut ids = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io(&self.dir))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json") {
                if id_is_safe(id) {
                    ids.push(id.to_string());
                }
            }
        }
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            if let Some(s) = self.get(&id)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Writes a status atomically (temp file, fsync, rename, fsync of the folder).
    pub fn put(&self, st: &RequestStatus) -> Result<(), StatusError> {
        let path = self.path(&st.request_id)?;
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(".{}.json.tmp", st.request_id));
        let mut bytes = serde_json::to_vec_pretty(st).map_err(|e| StatusError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        bytes.push(b'\n');
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        super::sync_dir(&self.dir).map_err(io(&self.dir))
    }

    fn update(
        &self,
        request_id: &str,
        f: impl FnOnce(&mut RequestStatus),
        now: Timestamp,
    ) -> Result<RequestStatus, StatusError> {
        let mut st = self
            .get(request_id)?
            .ok_or_else(|| StatusError::NotFound(request_id.to_string()))?;
        f(&mut st);
        st.updated_at = now.rfc3339().to_string();
        self.put(&st)?;
        Ok(st)
    }

    /// Marks a request `InProgress` at `percent` (capped at 99).
    pub fn progress(
        &self,
        request_id: &str,
        percent: u8,
        now: Timestamp,
    ) -> Result<RequestStatus, StatusError> {
        self.update(
            request_id,
            |s| {
                s.status = State::InProgress;
                s.percent = percent.min(99);
            },
            now,
        )
    }

    /// Marks a request `Completed` with its zip.
    pub fn complete(
        &self,
        request_id: &str,
        zip: &Path,
        now: Timestamp,
    ) -> Result<RequestStatus, StatusError> {
        self.update(
            request_id,
            |s| {
                s.status = State::Completed;
                s.percent = 100;
                s.reason = None;
                s.completed_at = Some(now.rfc3339().to_string());
                s.zip = Some(zip.to_path_buf());
            },
            now,
        )
    }

    /// Marks a request `Failed` with the reason.
    pub fn fail(
        &self,
        request_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<RequestStatus, StatusError> {
        self.update(
            request_id,
            |s| {
                s.status = State::Failed;
                s.reason = Some(reason.replace(['\n', '\r'], " "));
            },
            now,
        )
    }

    /// Expires every `Completed` request whose completion is 30 days or more
    /// before `now`: removes its zip (a zip already gone is fine) and marks it
    /// `Expired`. Returns the expired request ids. A zip that cannot be
    /// removed leaves the request `Completed` and is reported as an error
    /// after the others were handled.
    pub fn expire(&self, now: Timestamp) -> Result<Vec<String>, StatusError> {
        let mut done = Vec::new();
        let mut first_err = None;
        for st in self.list()? {
            if st.status != State::Completed {
                continue;
            }
            let Some(completed) = st
                .completed_at
                .as_deref()
                .and_then(|c| Timestamp::parse_rfc3339(c).ok())
            else {
                continue;
            };
            if now.0 - completed.0 < RETENTION_MS {
                continue;
            }
            if let Some(zip) = &st.zip {
                match remove_zip(zip) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        first_err.get_or_insert(io(zip)(e));
                        continue;
                    }
                }
            }
            self.update(
                &st.request_id,
                |s| {
                    s.status = State::Expired;
                    s.reason = Some("zip removed 30 days after completion".into());
                },
                now,
            )?;
            done.push(st.request_id);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

/// Removes `<root>/<folder>/<name>.zip` through a handle of `<folder>` opened
/// below `<root>` without following links (a `compliance-exports` swapped
/// for a symlink never makes expiry delete elsewhere), then fsyncs it.
fn remove_zip(zip: &Path) -> std::io::Result<()> {
    use crate::sink::handle;
    let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "not a local zip path");
    let name = zip
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(missing)?;
    let dir = zip.parent().ok_or_else(missing)?;
    let sub = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(missing)?;
    let root = handle::open_root(dir.parent().ok_or_else(missing)?)?;
    let d = handle::open_dir_beneath(&root, sub)?;
    handle::remove_in(&d, name)?;
    d.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_never_deletes_through_a_symlinked_folder() {
        let d = std::env::temp_dir().join(format!("exportd-expire-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (root, elsewhere) = (d.join("t"), d.join("elsewhere"));
        let out = root.join("compliance-exports");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let store = StatusStore::new(&d.join("state"));
        let t0 = Timestamp(1_795_000_000_000);
        let later = Timestamp(t0.0 + RETENTION_MS + 1);
        let done = |id: &str| {
            store.accept(id, t0).unwrap();
            let zip = out.join(format!("{id}.zip"));
            std::fs::write(&zip, b"zip").unwrap();
            store.complete(id, &zip, t0).unwrap();
        };
        done("r-a");
        assert_eq!(store.expire(later).unwrap(), ["r-a"]);
        assert!(!out.join("r-a.zip").exists());
        // The folder is swapped for a link to a folder holding r-b.zip.
        done("r-b");
        std::fs::write(elsewhere.join("r-b.zip"), b"precious").unwrap();
        std::fs::rename(&out, d.join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &out).unwrap();
        assert!(
            store.expire(later).is_err(),
            "a symlinked folder is an error"
        );
        assert_eq!(
            std::fs::read(elsewhere.join("r-b.zip")).unwrap(),
            b"precious"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
