//! Temp files of a folder target: the temp folder, temp names
//! (`<agent>.<nonce>.<seq>`), the flock a writer holds on its temp, and the
//! removal of temps whose writer is gone. Never removes a name exportd did
//! not make, nor a temp whose lock is held.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::{FsTarget, TMP_DIR};
use crate::sink::TargetError;
use crate::sink::handle;

/// The agent id as it appears in temp names (and S3 probe keys):
/// `[A-Za-z0-9_-]`, at most 64.
pub(crate) fn agent_tag(agent_id: &str) -> String {
    let t: String = agent_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "agent".into() } else { t }
}

/// A random nonce (16 hex digits): unique per process start for temp names,
/// per file for compliance zips.
pub(crate) fn start_nonce() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No random source: time and pid are still unique enough per start.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = ((t as u64) ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    hex::encode(b)
}

/// Splits a name of the temp folder into (`<agent>.<nonce>`, `<seq>`) when
/// it is one exportd makes: `<agent>.<nonce>.<seq>`.
pub(super) fn temp_owner(name: &str) -> Option<(&str, &str)> {
    let (owner, last) = name.rsplit_once('.')?;
    let (agent, nonce) = owner.rsplit_once('.')?;
    let ok_agent = !agent.is_empty()
        && agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let ok_nonce = nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    let ok_last = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit());
    (ok_agent && ok_nonce && ok_last).then_some((owner, last))
}

/// Whether a lock error means "this file system cannot lock" (then a
/// temp's owner is unknown and its temps are kept).
fn is_nolock(e: rustix::io::Errno) -> bool {
    matches!(
        e,
        rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS
    )
}

impl FsTarget {
    /// The temp folder, created when missing; refused when it is a symlink,
    /// not a folder, or on another file system than the root.
    pub(super) fn tmp_dir(&self, root: &File) -> Result<File, TargetError> {
        let at = self.root.join(TMP_DIR);
        let (d, created) = handle::ensure_dir(root, TMP_DIR).map_err(|e| {
            self.unavailable(format!(
                "{} cannot be used as the temp folder: {e}{}",
                at.display(),
                if matches!(e.raw_os_error(), Some(40) | Some(20)) {
                    " (it is a symlink or not a folder: exportd never follows it; remove it)"
                } else {
                    ""
                }
            ))
        })?;
        if created {
            root.sync_all()
                .map_err(|e| self.io_err("fsync folder", &self.root, e))?;
        }
        let same_fs = match (handle::identity(root), handle::identity(&d)) {
            (Ok(a), Ok(b)) => a.0 == b.0,
            _ => false,
        };
        if !same_fs {
            return Err(self.unavailable(format!(
                "{} is on another file system than the root (a mount?); remove it",
                at.display()
            )));
        }
        Ok(d)
    }

    /// Removes temp files left by processes that are gone (a crash mid-copy),
    /// of this agent or of another one sharing the archive. A temp is named
    /// `<agent>.<nonce>.<seq>` (the nonce random per process start) and is
    /// flocked by its writer from its creation until it is renamed to its
    /// final name: only temps whose lock can be taken (the writer is gone)
    /// are removed; a temp whose lock is held, or on a file system that
    /// cannot lock, is kept. Nothing is done unless the root proves to be
    /// this target's archive and `.exportd-tmp` is a real folder on it (never
    /// a symlink); only names exportd makes are removed, through the folder's
    /// handle.
    pub fn remove_stale_temps(&self) -> usize {
        let root = match self.open_root() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target = %self.spec.id, "stale temps not cleaned: {e}");
                return 0;
            }
        };
        let at = self.root.join(TMP_DIR);
        let tmp = match handle::open_dir_beneath(&root, TMP_DIR) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(target = %self.spec.id, "stale temps not cleaned: {}: {e} (exportd never follows a link there)", at.display());
                return 0;
            }
        };
        match (handle::identity(&root), handle::identity(&tmp)) {
            (Ok(a), Ok(b)) if a.0 == b.0 => {}
            _ => {
                tracing::warn!(target = %self.spec.id, "stale temps not cleaned: {} is on another file system", at.display());
                return 0;
            }
        }
        let names = match handle::list(&tmp) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(target = %self.spec.id, "stale temps not cleaned: listing {} failed: {e}", at.display());
                return 0;
            }
        };
        let mut removed = 0;
        for n in names.iter().filter(|n| temp_owner(n).is_some()) {
            let f = match handle::open_existing(&tmp, n) {
                Ok(handle::Existing::File(f)) => f,
                _ => continue, // gone, not a regular file, unreadable: keep
            };
            // Taken: its writer is gone. Held while the name is removed.
            if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
            {
                continue;
            }
            if handle::remove_in(&tmp, n).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// A temp file being written: its name in the temp folder, its path (for
/// messages) and its handle, which holds the temp's lock until dropped.
pub(super) struct Temp {
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) file: File,
}

impl FsTarget {
    /// Creates this process's next temp name in `tmp` (`O_CREAT | O_EXCL |
    /// O_NOFOLLOW`) and locks it; a temp whose lock fails is removed.
    pub(super) fn create_temp(&self, tmp: &File) -> Result<Temp, TargetError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp_name = format!("{}.{n}", self.tag);
        let tmp_path = self.root.join(TMP_DIR).join(&tmp_name);

        let out = handle::create_new(tmp, &tmp_name, 0o640)
            .map_err(|e| self.io_err("create", &tmp_path, e))?;
        // Held until the temp is renamed (or removed): cleanup by any
        // process sharing the archive leaves it alone meanwhile.
        match rustix::fs::flock(&out, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if is_nolock(e) => {}
            Err(e) => {
                let _ = handle::remove_in(tmp, &tmp_name);
                return Err(self.io_err("lock", &tmp_path, e.into()));
            }
        }
        Ok(Temp {
            name: tmp_name,
            path: tmp_path,
            file: out,
        })
    }
}
