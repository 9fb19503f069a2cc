//! Makes the audit log's checkpoints and puts them, and the closed audit
//! days, on every target. Never appends an audit row, never rewrites a
//! checkpoint, and never lets a target's failure stop the others (or the
//! record exports: it runs on its own thread, [`super::service`]).
//!
//! # Local state (`<state_dir>/checkpoints/`)
//! - `<YYYYMMDDTHHMMSS.mmmZ>.json`: every checkpoint made, written durably
//!   (temp, fsync, rename without replace, folder fsync) BEFORE it is put to
//!   any target, so a retry puts the same bytes (a no-op where it arrived)
//!   and a crash between the checkpoint and the next row changes nothing.
//!   The newest one is where the chain continues after a restart.
//! - `published.json`: per target id, the newest checkpoint and the newest
//!   day file put there (every earlier one was put before it).
//!
//! # When
//! [`Checkpointer::checkpoint`] looks at the audit files from the newest
//! checkpoint's file on: each file older than the newest one (a closed day:
//! rows never go to an older file) gets its final checkpoint if its rows
//! changed since its last one; the newest file gets one if its rows changed.
//! Timestamps are strictly increasing (a clock stepped back makes the next
//! checkpoint 1 ms after the previous one), so name order is chain order.
//! A closed day's file is put once its final checkpoint is on that target.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::checkpoint::{self, NO_PREVIOUS, Payload};
use super::key::AgentKey;
use super::scan::{self, Position};
use super::{ProofError, agent_folder, checkpoints_folder, io_err};
use crate::control::bundle::dsse::Envelope;
use crate::ledger::audit::audit_files;
use crate::sink::{PutRequest, Source, Target, TargetError};
use crate::time::Timestamp;

/// The local checkpoint folder under the state folder.
pub const LOCAL_DIR: &str = "checkpoints";
/// The per-target publication marks.
pub const PUBLISHED_FILE: &str = "published.json";

/// The newest checkpoint made.
#[derive(Debug, Clone)]
struct Last {
    name: String,
    ts: Timestamp,
    hash: String,
    file: String,
    rows: u64,
    last_row_hash: String,
}

/// What has been put on one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The newest checkpoint put (with all before it).
    #[serde(default)]
    pub checkpoint: String,
    /// The newest closed day file put (with all before it).
    #[serde(default)]
    pub day: String,
}

/// Reads `<state_dir>/checkpoints/published.json` (empty when absent).
pub fn read_marks(state_dir: &Path) -> Result<BTreeMap<String, Mark>, ProofError> {
    let p = state_dir.join(LOCAL_DIR).join(PUBLISHED_FILE);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| io_err(&p)(io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io_err(&p)(e)),
    }
}

/// The local checkpoint file names, oldest first.
pub fn local_checkpoints(dir: &Path) -> Result<Vec<String>, ProofError> {
    let mut v = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if checkpoint::parse_file_name(&name).is_some() {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

/// Reads a checkpoint's payload without checking its signature (our own
/// local file; the key may have been replaced since).
fn read_payload(bytes: &[u8]) -> Option<Payload> {
    let env = Envelope::from_json(bytes).ok()?;
    serde_json::from_slice(&env.payload_bytes().ok()?).ok()
}

/// Makes and publishes checkpoints for one agent (one state folder).
pub struct Checkpointer {
    state_dir: PathBuf,
    audit_dir: PathBuf,
    dir: PathBuf,
    agent_id: String,
    key: AgentKey,
    last: Option<Last>,
    /// How far the newest examined audit file was read.
    cursor: Option<(String, Position)>,
    /// Closed audit files (older than the newest), as of the last look.
    closed_through: Option<String>,
    marks: BTreeMap<String, Mark>,
    /// Targets whose last publication failed.
    failing: std::collections::BTreeSet<String>,
}

impl Checkpointer {
    /// Opens the local state and picks up the chain at the newest checkpoint.
    pub fn open(
        state_dir: &Path,
        agent_id: &str,
        key: AgentKey,
    ) -> Result<Checkpointer, ProofError> {
        let dir = state_dir.join(LOCAL_DIR);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            crate::sink::fs::sync_dir(state_dir).map_err(io_err(state_dir))?;
        }
        let mut last = None;
        if let Some(name) = local_checkpoints(&dir)?.pop() {
            let p = dir.join(&name);
            let bytes = fs::read(&p).map_err(io_err(&p))?;
            let Some(pl) = read_payload(&bytes) else {
                return Err(ProofError::Checkpoint(format!(
                    "{}: the newest local checkpoint does not parse; the chain cannot continue from it (move it away only if it was never published)",
                    p.display()
                )));
            };
            last = Some(Last {
                ts: checkpoint::parse_file_name(&name).unwrap_or_default(),
                name,
                hash: checkpoint::file_hash(&bytes),
                file: pl.file,
                rows: pl.rows,
                last_row_hash: pl.last_row_hash,
            });
        }
        Ok(Checkpointer {
            state_dir: state_dir.to_path_buf(),
            audit_dir: state_dir.join("audit"),
            dir,
            agent_id: agent_id.to_string(),
            key,
            last,
            cursor: None,
            closed_through: None,
            marks: read_marks(state_dir)?,
            failing: Default::default(),
        })
    }

    /// The local checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the checkpoints due now (see the module doc); returns how many.
    pub fn checkpoint(&mut self, now: Timestamp) -> Result<usize, ProofError> {
        let files =
            audit_files(&self.audit_dir).map_err(|e| ProofError::Checkpoint(e.to_string()))?;
        let names: Vec<String> = files.iter().map(|p| file_name_of(p)).collect();
        let from = self
            .last
            .as_ref()
            .map(|l| l.file.clone())
            .unwrap_or_default();
        let mut made = 0;
        let mut chain_tail: Option<String> = None;
        for (i, name) in names.iter().enumerate() {
            if *name < from {
                continue;
            }
            let start = match &self.cursor {
                Some((f, pos)) if f == name => pos.clone(),
                _ => Position::start(),
            };
            let pos = scan::advance(&files[i], &start).map_err(io_err(&files[i]))?;
            self.cursor = Some((name.clone(), pos.clone()));
            let hash = pos.last_hash.clone().or_else(|| chain_tail.clone());
            chain_tail = hash.clone();
            let Some(hash) = hash else { continue };
            let changed = match &self.last {
                Some(l) if l.file == *name => l.rows != pos.rows || l.last_row_hash != hash,
                Some(l) if l.file > *name => false,
                _ => pos.rows > 0,
            };
            if changed {
                if let Some(l) = self
                    .last
                    .as_ref()
                    .filter(|l| l.file == *name && l.rows > pos.rows)
                {
                    tracing::warn!(
                        "audit file {name} now has {} rows; checkpoint {} stated {}: rows were removed (see `exportd audit verify`)",
                        pos.rows,
                        l.name,
                        l.rows
                    );
                }
                self.make(now, name, pos.rows, &hash)?;
                made += 1;
            }
            if i + 1 < names.len() {
                self.closed_through = Some(name.clone());
            }
        }
        Ok(made)
    }

    /// Signs and durably writes one checkpoint.
    fn make(
        &mut self,
        now: Timestamp,
        file: &str,
        rows: u64,
        hash: &str,
    ) -> Result<(), ProofError> {
        let ts = match &self.last {
            Some(l) if l.ts >= now => Timestamp(l.ts.0 + 1),
            _ => now,
        };
        let p = Payload {
            agent_id: self.agent_id.clone(),
            ts: checkpoint::ts_text(ts),
            file: file.to_string(),
            rows,
            last_row_hash: hash.to_string(),
            prev_checkpoint: self
                .last
                .as_ref()
                .map_or_else(|| NO_PREVIOUS.to_string(), |l| l.hash.clone()),
        };
        let bytes = checkpoint::sign(&self.key, &p);
        let name = checkpoint::file_name(ts);
        write_new(&self.dir, &name, &bytes)?;
        tracing::info!("audit checkpoint {name}: {file}, {rows} rows");
        self.last = Some(Last {
            name,
            ts,
            hash: checkpoint::file_hash(&bytes),
            file: file.to_string(),
            rows,
            last_row_hash: hash.to_string(),
        });
        Ok(())
    }

    /// Puts what each target still lacks (checkpoints in order, then closed
    /// days). Returns whether everything is published; failures are logged
    /// and left for the next call. `skip_failing`: leaves out the targets
    /// whose last publication failed (at stop, so that an unreachable
    /// target does not hold the stop up; the next start puts it all).
    pub fn publish(&mut self, targets: &[Arc<dyn Target>], skip_failing: bool) -> bool {
        if !crate::sink::handle::is_component(&self.agent_id) {
            tracing::error!(
                "agent_id {:?} is not a plain folder name: audit checkpoints cannot be put on the targets",
                self.agent_id
            );
            return false;
        }
        let names = match local_checkpoints(&self.dir) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("audit checkpoints: {e}");
                return false;
            }
        };
        let mut all = true;
        for t in targets {
            let id = t.spec().id.clone();
            if skip_failing && self.failing.contains(&id) {
                all = false;
                continue;
            }
            let before = self.marks.get(&id).cloned().unwrap_or_default();
            let mut mark = before.clone();
            let ok = self.publish_to(&**t, &names, &mut mark);
            if ok {
                self.failing.remove(&id);
            } else {
                self.failing.insert(id.clone());
            }
            all &= ok;
            if mark != before {
                self.marks.insert(id, mark);
                if let Err(e) = self.save_marks() {
                    tracing::error!("audit checkpoints: {e}");
                    all = false;
                }
            }
        }
        all
    }

    fn publish_to(&self, t: &dyn Target, names: &[String], mark: &mut Mark) -> bool {
        let folder = checkpoints_folder(&self.agent_id);
        let from = mark.checkpoint.clone();
        for name in names.iter().filter(|n| **n > from) {
            let path = self.dir.join(name);
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("audit checkpoint {}: {e}", path.display());
                    return false;
                }
            };
            let src = crate::sink::BytesSource(&bytes);
            if !self.put(t, &folder, name, &src) {
                return false;
            }
            mark.checkpoint = name.clone();
        }
        let Some(closed) = &self.closed_through else {
            return true;
        };
        let days = match audit_files(&self.audit_dir) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("audit day files: {e}");
                return false;
            }
        };
        let folder = agent_folder(&self.agent_id);
        for p in days {
            let name = file_name_of(&p);
            if name <= mark.day || name > *closed {
                continue;
            }
            if !self.put(t, &folder, &name, &FileSource(p.clone())) {
                return false;
            }
            mark.day = name;
        }
        true
    }

    /// One put; a conflict (a different file already under that name) is
    /// logged and passed over, anything else stops this target's pass.
    fn put(&self, t: &dyn Target, folder: &str, name: &str, src: &dyn Source) -> bool {
        let req = PutRequest {
            folder,
            name,
            want_sha512: false,
        };
        match t.put(&req, src) {
            Ok(_) => true,
            Err(e @ TargetError::Conflict { .. }) => {
                tracing::error!(
                    "target {}: audit copy {folder}/{name}: {e}; passed over (archive verify will report it)",
                    t.spec().id
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    "target {}: audit copy {folder}/{name} not put yet ({e}); retried later",
                    t.spec().id
                );
                false
            }
        }
    }

    fn save_marks(&self) -> Result<(), ProofError> {
        let p = self.state_dir.join(LOCAL_DIR).join(PUBLISHED_FILE);
        let bytes = serde_json::to_vec_pretty(&self.marks).unwrap_or_default();
        crate::policy::snapshot::write_atomic(&p, &bytes).map_err(io_err(&p))
    }
}

fn file_name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes `dir/name` durably, never replacing an existing file.
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ProofError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    drop(f);
    match crate::sink::fs::rename_noreplace(&tmp, &path) {
        Ok(true) => {}
        Ok(false) => {
            let _ = fs::remove_file(&tmp);
            return Err(ProofError::Checkpoint(format!(
                "{}: already exists; a checkpoint is never replaced",
                path.display()
            )));
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path)(e));
        }
    }
    crate::sink::fs::sync_dir(dir).map_err(io_err(dir))
}

/// A local file as a put source (a closed audit day).
struct FileSource(PathBuf);

impl Source for FileSource {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(fs::File::open(&self.0)?))
    }
    fn len_hint(&self) -> Option<u64> {
        fs::metadata(&self.0).ok().map(|m| m.len())
    }
}

#[cfg(test)]
mod tests;
