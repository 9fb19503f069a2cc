//! The target root and its marker: opening the root (never creating it),
//! reading, adopting and initialising `.exportd-target`, and this agent's
//! state copy of it. Never writes below the root except the marker.

use std::fs::File;
use std::io::{self, Write};

use super::FsTarget;
use crate::sink::TargetError;
use crate::sink::handle;
use crate::sink::marker::{MARKER_MAX, MARKER_NAME, Marker};

impl FsTarget {
    /// The state copy of the marker, read once.
    pub(super) fn load_known(&self) -> Result<Option<Marker>, TargetError> {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if k.is_none() {
            let p = self.marker_copy_path();
            match std::fs::read(&p) {
                Ok(b) => {
                    let m = Marker::parse(&b).map_err(|e| {
                        self.unavailable(format!(
                            "{}: {e}; remove it and run `exportd target init`",
                            p.display()
                        ))
                    })?;
                    *k = Some(m);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_err("read", &p, e)),
            }
        }
        Ok(k.clone())
    }

    fn save_known(&self, m: &Marker) -> Result<(), TargetError> {
        let p = self.marker_copy_path();
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| self.io_err("create folder", d, e))?;
        }
        crate::policy::snapshot::write_atomic(&p, &m.to_bytes())
            .map_err(|e| self.io_err("write", &p, e))?;
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        Ok(())
    }

    /// Opens the root handle; a missing root is unavailable (never created).
    pub(super) fn open_root_handle(&self) -> Result<File, TargetError> {
        handle::open_root(&self.root).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.unavailable(format!(
                "{} does not exist (volume not mounted?); exportd never creates a target root: mount the volume, or create the folder and run `exportd target init`",
                self.root.display()
            )),
            _ if e.raw_os_error() == Some(20) => self.unavailable(format!(
                "{} is not a folder",
                self.root.display()
            )),
            _ => self.unavailable(format!(
                "{} is not reachable: {e} (is the archive share mounted?)",
                self.root.display()
            )),
        })
    }

    pub(super) fn read_marker(&self, root: &File) -> Result<Option<Marker>, TargetError> {
        let b = handle::read_small(root, MARKER_NAME, MARKER_MAX).map_err(|e| {
            self.unavailable(format!(
                "{}/{MARKER_NAME} cannot be read: {e}",
                self.root.display()
            ))
        })?;
        match b {
            None => Ok(None),
            Some(b) => Marker::parse(&b).map(Some).map_err(|e| {
                self.unavailable(format!(
                    "{}/{MARKER_NAME}: {e}; if this is the archive, remove it and run `exportd target init`",
                    self.root.display()
                ))
            }),
        }
    }

    /// Removes marker temps this agent left in an earlier life (killed
    /// between writing one and renaming it into place):
    /// `.exportd-target.<agent>.<16 hex digits>.tmp`, never another agent's.
    /// Best effort: a listing or removal error leaves them for next time.
    fn remove_old_marker_temps(&self, root: &File) {
        let prefix = format!(
            "{MARKER_NAME}.{}.",
            super::temp::agent_tag(&self.env.agent_id)
        );
        let Ok(names) = handle::list(root) else {
            return;
        };
        for n in names {
            let nonce = n
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_suffix(".tmp"));
            if nonce.is_some_and(|x| x.len() == 16 && x.bytes().all(|b| b.is_ascii_hexdigit())) {
                let _ = handle::remove_in(root, &n);
            }
        }
    }

    /// Writes a new marker into the root (temp, fsync, no-replace rename,
    /// folder fsync). Returns the marker now in the root: a marker written
    /// meanwhile by someone else wins.
    fn write_marker(&self, root: &File, m: &Marker) -> Result<Marker, TargetError> {
        let tmp = format!("{MARKER_NAME}.{}.tmp", self.tag);
        let at = self.root.join(&tmp);
        self.remove_old_marker_temps(root);
        let f = handle::create_new(root, &tmp, 0o644).map_err(|e| self.io_err("create", &at, e))?;
        let res = (|| {
            (&f).write_all(&m.to_bytes())?;
            f.sync_all()?;
            handle::rename_noreplace_at(root, &tmp, root, MARKER_NAME)
        })();
        let placed = match res {
            Ok(p) => p,
            Err(e) => {
                let _ = handle::remove_in(root, &tmp);
                return Err(self.io_err("write", &at, e));
            }
        };
        if !placed {
            let _ = handle::remove_in(root, &tmp);
            return self.read_marker(root)?.ok_or_else(|| {
                self.unavailable(format!("{}/{MARKER_NAME} vanished", self.root.display()))
            });
        }
        root.sync_all()
            .map_err(|e| self.io_err("fsync folder", &self.root, e))?;
        Ok(m.clone())
    }

    /// Opens the target root and proves it is this target's archive (see
    /// [`crate::sink::marker`]): a root with this agent's marker, or a plain
    /// folder this agent never used (adopted: the marker is written). A
    /// missing root, a missing marker where the agent used the target before
    /// (volume not mounted) or another target's marker is unavailable.
    pub fn open_root(&self) -> Result<File, TargetError> {
        let root = self.open_root_handle()?;
        let on_disk = self.read_marker(&root)?;
        let known = self.load_known()?;
        let shown = self.root.display();
        match (on_disk, known) {
            (Some(d), Some(k)) => {
                if d.target_id == k.target_id && d.instance == k.instance {
                    Ok(root)
                } else {
                    Err(self.unavailable(format!(
                        "{shown} holds the marker of {d}, not of {k} that this agent uses (wrong volume mounted?); mount the right volume, or run `exportd target init` if this archive replaces it"
                    )))
                }
            }
            (Some(d), None) => {
                if d.target_id != self.spec.id {
                    return Err(self.unavailable(format!(
                        "{shown} holds the marker of {d} (another target's archive); mount the right volume or fix the target's path"
                    )));
                }
                self.save_known(&d)?;
                Ok(root)
            }
            (None, Some(_)) => Err(self.unavailable(format!(
                "{shown} has no {MARKER_NAME} marker (volume not mounted?); mount it or run `exportd target init`"
            ))),
            (None, None) => {
                // First use of a plain folder: adopt it.
                let m = Marker::new(&self.spec.id, &self.env.agent_id)
                    .map_err(|e| self.unavailable(e.to_string()))?;
                let placed = self.write_marker(&root, &m)?;
                if placed.target_id != self.spec.id {
                    return Err(self.unavailable(format!(
                        "{shown} holds the marker of {placed} (another target's archive)"
                    )));
                }
                self.save_known(&placed)?;
                tracing::info!(target = %self.spec.id, "adopted {shown} as the archive of target {} (wrote {MARKER_NAME}, instance {})", self.spec.id, placed.instance);
                Ok(root)
            }
        }
    }

    /// `exportd target init`: writes the marker into an existing root (or
    /// keeps the one there when it is this target's) and makes this agent's
    /// state copy match. Returns the marker and whether it was written now.
    pub fn init(&self) -> Result<(Marker, bool), TargetError> {
        let root = self.open_root_handle()?;
        if let Some(d) = self.read_marker(&root)? {
            if d.target_id != self.spec.id {
                return Err(TargetError::Permanent(format!(
                    "target {}: {}/{MARKER_NAME} belongs to {d}; exportd does not take over another target's archive (remove the marker by hand if you mean to)",
                    self.spec.id,
                    self.root.display()
                )));
            }
            self.save_known(&d)?;
            return Ok((d, false));
        }
        let m = Marker::new(&self.spec.id, &self.env.agent_id)
            .map_err(|e| self.unavailable(e.to_string()))?;
        let placed = self.write_marker(&root, &m)?;
        self.save_known(&placed)?;
        Ok((placed.clone(), placed == m))
    }
}
