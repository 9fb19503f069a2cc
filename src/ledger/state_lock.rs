//! The state directory lock: one state-writing exportd per `state_dir`;
//! never leaves a stale lock behind (the kernel drops it with the process).
//!
//! `run` (the daemon and `--until-idle`) owns the journal, the snapshot, the
//! bundle state and the status file; two of them on one `state_dir` corrupt
//! each other (one compacts the journal by rename while the other keeps
//! appending to the deleted inode). So a state-writing process takes an
//! exclusive `flock(2)` on `<state_dir>/lock` before it touches anything and
//! holds it for its whole life: the kernel drops it when the process ends,
//! however it ends (SIGKILL included), so there is never a stale lock to
//! clean up. The file is opened `O_CLOEXEC` (a child does not inherit it)
//! and `O_NOFOLLOW`, and holds the owner's pid as text, only for the message
//! shown to a second process.
//!
//! Read-only commands (`status`, `audit verify`, `request status`,
//! `bundle verify`) take no lock. `request submit` takes none either: it
//! writes only its own request's files (under the per-request lock) and audit
//! rows (under the audit log's own lock), which is safe beside the daemon.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("another exportd ({}) is using {}; stop it first (the state directory has one owner at a time)", holder_text(*.pid), .state_dir.display())]
    Busy {
        /// The state directory.
        state_dir: PathBuf,
        /// The holder's pid, when it could be read.
        pid: Option<u32>,
    },
    /// The lock file could not be created, opened or locked.
    #[error("cannot lock the state directory: {what} {}: {source}; check that the state_dir exists, is writable and supports flock", .path.display())]
    Io {
        /// What failed.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".into(),
    }
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the exclusive lock on `state_dir` (created 0700 when missing),
/// without waiting: fails with [`LockError::Busy`] naming the holder's pid
/// when another process holds it.
pub fn lock_exclusive(state_dir: &Path) -> Result<StateLock, LockError> {
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| LockError::Io { what, path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io_err("creating", state_dir))?;
    let path = state_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut s = String::new();
            let _ = (&file).take(32).read_to_string(&mut s);
            return Err(LockError::Busy {
                state_dir: state_dir.to_path_buf(),
                pid: s.trim().parse().ok(),
            });
        }
        Err(e) => return Err(io_err("locking", &path)(e.into())),
    }
    // Ours now: record the pid for the message a second process shows.
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(io_err("writing", &path))?;
    Ok(StateLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_holders_pid() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let held = lock_exclusive(&state).unwrap();
        // flock locks belong to the open file description: a second open in
        // the same process conflicts just as another process would.
        match lock_exclusive(&state) {
            Err(LockError::Busy { pid, state_dir }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(state_dir, state);
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        let msg = lock_exclusive(&state).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("another exportd (pid {})", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("stop it first"), "{msg}");
        drop(held);
        let again = lock_exclusive(&state).unwrap();
        assert_eq!(again.path(), state.join(LOCK_FILE));
    }

    #[test]
    fn a_symlinked_lock_file_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, state.join(LOCK_FILE)).unwrap();
        assert!(matches!(
            lock_exclusive(&state),
            Err(LockError::Io {
                what: "opening",
                ..
            })
        ));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
