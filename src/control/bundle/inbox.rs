//! Bundle files dropped into the inbox; never overwrites a file in
//! `accepted/` or `rejected/`.
//!
//! Bundles dropped as files into `<state_dir>/inbox/` (scp, the fleet's
//! updater, ...).
//!
//! [`process_inbox`] takes every file in name order (byte order), skipping
//! names that start with `.` or end with `.tmp` (so a transport can write
//! `x.tmp` or `.x` and rename it when complete), runs it through
//! [`apply_spooled_with`] (the same step as the central fetch), then moves it to
//! `inbox/accepted/` or `inbox/rejected/`; a rejected file gets a
//! `<name>.reason` beside it with the one-line reason. An existing name in
//! those folders is never overwritten: `.1`, `.2`, ... is appended.
//!
//! Watching the folder (inotify) is the daemon's job: call
//! [`process_inbox`] at start and whenever a file is closed or moved in.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::apply::{Accepted, Prepare};
use super::spool::spool_envelope;
use super::state::{BundleState, Store, create_private_dir, write_atomic};
use super::streamed::apply_spooled_with;
use super::{BundleError, DEFAULT_MAX_BUNDLE_BYTES};
use crate::policy::model::Admin;

/// Sub-folder of the inbox for accepted bundles.
pub const ACCEPTED_DIR: &str = "accepted";
/// Sub-folder of the inbox for rejected bundles and their `.reason` files.
pub const REJECTED_DIR: &str = "rejected";

/// What happened to one inbox file (`T`: what the preparation step of
/// [`process_inbox_with`] built for an accepted bundle).
#[derive(Debug)]
pub struct InboxOutcome<T = ()> {
    /// The file name as dropped.
    pub name: String,
    /// Where the file is now (`inbox/accepted/...` or `inbox/rejected/...`),
    /// or its inbox path when moving it failed.
    pub file: PathBuf,
    /// The accepted (and already committed) bundle, or why it was rejected.
    /// For `Ok`, the daemon must act: put the model in force / launch the
    /// export, write the audit row (`action=config`, `ccdr_id` =
    /// [`Accepted::audit_id`]) and update its status.
    pub result: Result<Accepted, BundleError>,
    /// Set when the file could not be moved out of the inbox (it will be
    /// taken again next time and then rejected as a replay); log it.
    pub move_error: Option<BundleError>,
    /// What the preparation step built (`Some` exactly when `result` is `Ok`).
    pub prepared: Option<T>,
}

/// The inbox folder of a state directory.
pub fn inbox_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("inbox")
}

/// Processes every pending file of `<state_dir>/inbox/` in name order
/// against the trust `anchors` and `state` (see the module documentation).
/// Creates the inbox and its sub-folders when missing. Returns one outcome
/// per file taken; configurations accepted in one call were committed in
/// order, so the last accepted configuration is the one in force.
///
/// Fails as a whole only when the inbox cannot be listed or its sub-folders
/// cannot be created.
pub fn process_inbox<S: Store>(
    state_dir: &Path,
    anchors: &[Admin],
    state: &mut BundleState<S>,
) -> Result<Vec<InboxOutcome>, BundleError> {
    process_inbox_with(state_dir, anchors, state, &mut |_| Ok(()))
}

/// [`process_inbox`] with a preparation step run on every accepted bundle
/// before it is committed (see [`super::apply::apply_envelope_with`]): a
/// configuration that cannot be put in force is rejected (moved to
/// `rejected/` with its reason) and not committed.
pub fn process_inbox_with<S: Store, T>(
    state_dir: &Path,
    anchors: &[Admin],
    state: &mut BundleState<S>,
    prepare: &mut Prepare<'_, T>,
) -> Result<Vec<InboxOutcome<T>>, BundleError> {
    process_inbox_max(state_dir, anchors, state, DEFAULT_MAX_BUNDLE_BYTES, prepare)
}

/// [`process_inbox_with`] with a size limit per file (`max_bundle_bytes`).
/// Each file is read as a stream ([`spool_envelope`]): its payload is
/// decoded into `<state_dir>/bundle/`, verified from there and, for a
/// configuration, compiled under `state_dir` while it is validated.
pub fn process_inbox_max<S: Store, T>(
    state_dir: &Path,
    anchors: &[Admin],
    state: &mut BundleState<S>,
    max_bytes: u64,
    prepare: &mut Prepare<'_, T>,
) -> Result<Vec<InboxOutcome<T>>, BundleError> {
    let inbox = inbox_dir(state_dir);
    let accepted_dir = inbox.join(ACCEPTED_DIR);
    let rejected_dir = inbox.join(REJECTED_DIR);
    create_private_dir(&accepted_dir)?;
    create_private_dir(&rejected_dir)?;

    let mut names: Vec<OsString> = Vec::new();
    for entry in fs::read_dir(&inbox).map_err(|e| BundleError::io("listing", &inbox, e))? {
        let entry = entry.map_err(|e| BundleError::io("listing", &inbox, e))?;
        let name = entry.file_name();
        let b = name.as_bytes();
        if b.starts_with(b".") || b.ends_with(b".tmp") {
            continue;
        }
        // The sub-folders (and any other folder) are not bundles.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        names.push(name);
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = inbox.join(&name);
        let shown = name.to_string_lossy().into_owned();
        let shown_path = path.display().to_string();
        let spool_dir = state_dir.join("bundle");
        let (result, prepared) = match open_regular(&path, max_bytes)
            .and_then(|f| spool_envelope(f, max_bytes, &shown_path, &spool_dir))
            .and_then(|sp| apply_spooled_with(sp, anchors, state, state_dir, prepare))
        {
            Ok((a, p)) => (Ok(a), Some(p)),
            Err(e) => (Err(e), None),
        };
        let dest_dir = if result.is_ok() {
            &accepted_dir
        } else {
            &rejected_dir
        };
        let (file, move_error) = match move_unique(&path, dest_dir, &name) {
            Ok(dest) => {
                let mut err = None;
                if let Err(e) = &result {
                    let mut reason_name = dest.file_name().unwrap_or_default().to_os_string();
                    reason_name.push(".reason");
                    let line = format!("{}\n", e.one_line());
                    err = write_atomic(dest_dir, &reason_name.to_string_lossy(), line.as_bytes())
                        .err();
                }
                (dest, err)
            }
            Err(e) => (path.clone(), Some(e)),
        };
        match &result {
            Ok(a) => tracing::info!(file = %shown, id = %a.audit_id(), "inbox bundle accepted"),
            Err(e) => tracing::warn!(file = %shown, reason = %e, "inbox bundle rejected"),
        }
        out.push(InboxOutcome {
            name: shown,
            file,
            result,
            move_error,
            prepared,
        });
    }
    Ok(out)
}

/// Opens a regular file of at most `max` bytes (symbolic links and special
/// files are refused).
fn open_regular(path: &Path, max: u64) -> Result<fs::File, BundleError> {
    let meta = fs::symlink_metadata(path).map_err(|e| BundleError::io("reading", path, e))?;
    if !meta.file_type().is_file() {
        return Err(BundleError::Malformed {
            reason: format!(
                "{} is not a regular file (symlink or special file); drop the bundle itself",
                path.display()
            ),
        });
    }
    if meta.len() > max {
        return Err(BundleError::TooLarge {
            path: path.display().to_string(),
            max,
        });
    }
    fs::File::open(path).map_err(|e| BundleError::io("reading", path, e))
}

/// Moves `src` into `dir` as `name`, or `name.1`, `name.2`, ... when taken
/// (also avoiding a name whose `.reason` exists). Returns the destination.
fn move_unique(src: &Path, dir: &Path, name: &OsString) -> Result<PathBuf, BundleError> {
    for n in 0u32..10_000 {
        let mut candidate = name.clone();
        if n > 0 {
            candidate.push(format!(".{n}"));
        }
        let dest = dir.join(&candidate);
        let mut reason = candidate.clone();
        reason.push(".reason");
        if fs::symlink_metadata(&dest).is_ok() || fs::symlink_metadata(dir.join(reason)).is_ok() {
            continue;
        }
        fs::rename(src, &dest).map_err(|e| BundleError::io("moving inbox file to", &dest, e))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        return Ok(dest);
    }
    Err(BundleError::io(
        "moving inbox file to",
        dir,
        std::io::Error::other("10000 files of that name already there; clean the folder"),
    ))
}
