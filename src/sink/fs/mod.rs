//! Folder target (`kind = "fs"`): a mounted archive folder; puts a file
//! under its final name atomically and durably, and never overwrites a
//! final name, creates the root or follows a symlink below it.
//!
//! The root must prove it is the archive before anything is written: it is
//! never created, and it must hold this target's `.exportd-target` marker
//! (see [`super::marker`]), else the target is unavailable (an unmounted
//! volume is a bare mount point on the root disk).
//!
//! Everything below the root is reached through directory handles
//! ([`super::handle`]): no symlink below the root is ever followed, no FIFO
//! ever blocks. Every file is written under a temp name in
//! `<root>/.exportd-tmp/` (`<agent>.<nonce>.<seq>`, created `O_EXCL |
//! O_NOFOLLOW`, the nonce unique per process start, flocked by its writer
//! until it is renamed), fsynced, renamed to its final name with
//! `RENAME_NOREPLACE` (so a final name is never overwritten), then the folder
//! is fsynced. Newly created folders are fsynced into their parents. A final
//! name already holding the same bytes is fsynced (file and folder) before it
//! counts.
//!
//! Large files are copied by two threads: this one reads (and decrypts) the
//! source while a helper hashes and writes the previous buffer, through
//! three fixed buffers.

mod copy;
mod place;
mod probe;
mod root;
mod temp;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use super::handle;
use super::marker::Marker;
use super::{PutReceipt, PutRequest, Source, Target, TargetError};
use crate::policy::model::TargetSpec;
use copy::{CopyError, Hashed, Hashes, PIPE_MIN, copy_inline, copy_pipelined};
use temp::Temp;

pub use copy::{sha256_file, sha256_of, start_writeback};
pub use probe::RootState;
pub(crate) use temp::{agent_tag, start_nonce};

/// The hidden folder below the target root where files are written before
/// they are renamed into their record folder (same file system, so the rename
/// is atomic). Nothing in it is ever a final name.
pub const TMP_DIR: &str = ".exportd-tmp";

/// Where a folder target keeps its bookkeeping (the marker copy) and who
/// writes to it.
#[derive(Debug, Clone)]
pub struct TargetEnv {
    /// The agent's `state_dir` (`targets/<id>.marker` lives there).
    pub state_dir: PathBuf,
    /// The agent id (in the marker and in temp names).
    pub agent_id: String,
}

/// A folder target.
pub struct FsTarget {
    spec: TargetSpec,
    root: PathBuf,
    env: TargetEnv,
    seq: AtomicU64,
    /// `<agent>.<nonce>`: the prefix of this process's temp names, unique per
    /// agent and process start.
    tag: String,
    /// The marker this agent knows for the target (its state copy).
    known: Mutex<Option<Marker>>,
}

impl FsTarget {
    /// A target for `spec` (which must be `kind = "fs"` with a `path`).
    pub fn new(spec: &TargetSpec, env: &TargetEnv) -> FsTarget {
        FsTarget {
            root: spec.path.clone().unwrap_or_default(),
            spec: spec.clone(),
            env: env.clone(),
            seq: AtomicU64::new(0),
            tag: format!("{}.{}", agent_tag(&env.agent_id), start_nonce()),
            known: Mutex::new(None),
        }
    }

    /// The target root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<state_dir>/targets/<target id>.marker`: this agent's copy of the
    /// marker it adopted or initialised.
    pub fn marker_copy_path(&self) -> PathBuf {
        self.env
            .state_dir
            .join("targets")
            .join(format!("{}.marker", self.spec.id))
    }

    fn unavailable(&self, why: String) -> TargetError {
        TargetError::Transient(format!("target {}: {why}", self.spec.id))
    }

    fn io_err(&self, what: &str, path: &Path, e: io::Error) -> TargetError {
        let hint = match e.raw_os_error() {
            Some(28) => {
                " (target is full: free space or grow the volume; the backlog drains by itself)"
            }
            Some(30) => {
                " (target is read-only: remount it read-write; the backlog drains by itself)"
            }
            Some(13) | Some(1) => " (permission denied: give the exportd user write access)",
            Some(40) => " (a symlink: exportd never follows links below a target root)",
            _ => "",
        };
        TargetError::Transient(format!("{what} {}: {e}{hint}", path.display()))
    }
}

impl FsTarget {
    /// Copies `src` into the temp (pipelined when large or of unknown size)
    /// and fsyncs it: SHA-256, SHA-512 when asked, and the size.
    fn write_temp(
        &self,
        temp: &Temp,
        req: &PutRequest<'_>,
        src: &dyn Source,
    ) -> Result<Hashed, TargetError> {
        let mut input = src.open().map_err(TargetError::Source)?;
        let mut h = Hashes::new(req.want_sha512);
        let copied = if src.len_hint().is_none_or(|n| n >= PIPE_MIN) {
            copy_pipelined(&mut *input, &temp.file, &mut h)
        } else {
            copy_inline(&mut *input, &temp.file, &mut h)
        };
        match copied {
            Ok(()) => {}
            Err(CopyError::Read(e)) => return Err(TargetError::Source(e)),
            Err(CopyError::Write(e)) => return Err(self.io_err("write", &temp.path, e)),
        }
        temp.file
            .sync_all()
            .map_err(|e| self.io_err("fsync", &temp.path, e))?;
        Ok(h.finish())
    }
}

/// fsyncs a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` in the same folder without ever replacing `to`.
/// Returns `Ok(false)` when `to` already exists.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            // File systems without RENAME_NOREPLACE: link(2) never replaces.
            match fs::hard_link(from, to) {
                Ok(()) => {
                    fs::remove_file(from)?;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e.into()),
    }
}

impl Target for FsTarget {
    fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    fn put(&self, req: &PutRequest<'_>, src: &dyn Source) -> Result<PutReceipt, TargetError> {
        let root = self.open_root()?;
        let dir_path = self.root.join(req.folder);
        let final_path = dir_path.join(req.name);
        if !handle::is_component(req.name) {
            return Err(TargetError::Permanent(format!(
                "{}: {:?} is not a plain file name",
                dir_path.display(),
                req.name
            )));
        }
        let tmp = self.tmp_dir(&root)?;
        let temp = self.create_temp(&tmp)?;
        let staged = (|| {
            let hashes = self.write_temp(&temp, req, src)?;
            // The record folder is created only once a complete file is ready
            // to be renamed into it: a copy that fails or is killed while its
            // first file is written leaves no empty record folder.
            let dir = self.ensure_folder(&root, req.folder)?;
            let placed = handle::rename_noreplace_at(&tmp, &temp.name, &dir, req.name)
                .map_err(|e| self.io_err("rename into", &final_path, e))?;
            Ok((hashes, dir, placed))
        })();
        let ((sha256, sha512, bytes), dir, placed) = match staged {
            Ok(v) => v,
            Err(e) => {
                let _ = handle::remove_in(&tmp, &temp.name);
                return Err(e);
            }
        };
        drop(temp.file); // releases the temp's lock
        if !placed {
            let _ = handle::remove_in(&tmp, &temp.name);
            self.check_existing(&dir, req.name, &final_path, &sha256)?;
        }
        dir.sync_all()
            .map_err(|e| self.io_err("fsync folder", &dir_path, e))?;
        Ok(PutReceipt {
            sha256,
            sha512,
            bytes,
            already_present: !placed,
            detail: None,
        })
    }

    fn exists(&self, folder: &str, name: &str) -> Result<bool, TargetError> {
        let root = self.open_root()?;
        let p = self.root.join(folder).join(name);
        let dir = match handle::open_dir_beneath(&root, folder) {
            Ok(d) => d,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || matches!(e.raw_os_error(), Some(20) | Some(40) | Some(18)) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(self.io_err("inspect", &p, e)),
        };
        handle::exists_in(&dir, name).map_err(|e| self.io_err("inspect", &p, e))
    }

    fn recover(&self) -> usize {
        self.remove_stale_temps()
    }

    fn check_available(&self) -> Result<(), TargetError> {
        self.open_root().map(|_| ())
    }

    fn describe(&self, folder: &str) -> String {
        self.root.join(folder).display().to_string()
    }
}
