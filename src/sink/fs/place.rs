//! Placing a finished temp file: the record folder (created one level at a
//! time, each new folder fsynced into its parent), and the comparison with
//! a final name that already exists. Never replaces or follows a final name.

use std::fs::File;
use std::path::Path;

use super::FsTarget;
use super::copy::sha256_of;
use crate::sink::TargetError;
use crate::sink::handle;

impl FsTarget {
    /// Opens (creating as needed) `folder` below the root, fsyncing each new
    /// folder into its parent. A symlink or non-folder on the way is refused.
    pub(super) fn ensure_folder(&self, root: &File, folder: &str) -> Result<File, TargetError> {
        let mut dir: Option<File> = None;
        let mut at = self.root.clone();
        for comp in folder.split('/').filter(|c| !c.is_empty()) {
            at.push(comp);
            let parent = dir.as_ref().unwrap_or(root);
            let (d, created) = match handle::ensure_dir(parent, comp) {
                Ok(x) => x,
                Err(e) if matches!(e.raw_os_error(), Some(20) | Some(40)) => {
                    return Err(TargetError::Permanent(format!(
                        "{} exists and is not a folder (symlinks below a target root are never followed)",
                        at.display()
                    )));
                }
                Err(e) => return Err(self.io_err("create folder", &at, e)),
            };
            if created {
                parent.sync_all().map_err(|e| {
                    self.io_err("fsync folder", at.parent().unwrap_or(&self.root), e)
                })?;
            }
            dir = Some(d);
        }
        match dir {
            Some(d) => Ok(d),
            None => root
                .try_clone()
                .map_err(|e| self.io_err("open", &self.root, e)),
        }
    }

    /// The final name was already there: it must be a regular file holding
    /// the same bytes (else a conflict), and is fsynced before it counts
    /// (its folder is fsynced by the caller).
    pub(super) fn check_existing(
        &self,
        dir: &File,
        name: &str,
        final_path: &Path,
        sha256: &[u8; 32],
    ) -> Result<(), TargetError> {
        let mut existing = match handle::open_existing(dir, name)
            .map_err(|e| self.io_err("open", final_path, e))?
        {
            handle::Existing::File(f) => f,
            handle::Existing::Missing => {
                return Err(TargetError::Transient(format!(
                    "{} vanished while it was being compared; retried",
                    final_path.display()
                )));
            }
            handle::Existing::NotRegular(what) => {
                return Err(TargetError::Conflict {
                    location: final_path.display().to_string(),
                    existing: format!(
                        "none: it is {what}, not a regular file; exportd never reads, follows or replaces it"
                    ),
                });
            }
        };
        let got = sha256_of(&mut existing).map_err(|e| self.io_err("read", final_path, e))?;
        if got != *sha256 {
            return Err(TargetError::Conflict {
                location: final_path.display().to_string(),
                existing: hex::encode(got),
            });
        }
        // The same bytes may be only in the page cache (a run that
        // crashed before its fsync): make them durable before they count.
        existing
            .sync_all()
            .map_err(|e| self.io_err("fsync", final_path, e))
    }
}
