//! `exportd check-config` on a folder target: what the root and its marker
//! say without writing anything ([`FsTarget::inspect`]), and, for
//! `--probe`, one temp file written, fsynced and removed through the
//! target's own temp folder ([`FsTarget::probe`]). Never creates the root,
//! never writes or adopts a marker, never leaves a file behind.

use std::io::{self, Write};

use super::{FsTarget, TMP_DIR};
use crate::sink::TargetError;
use crate::sink::handle;
use crate::sink::marker::{MARKER_NAME, Marker};

/// What a folder target's root looks like to the agent, before any write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootState {
    /// It holds this target's marker.
    Marked(Marker),
    /// A plain folder this agent never used: it is adopted (the marker
    /// written) at the first write.
    Adoptable,
    /// Not there now (a missing root, or a missing marker where the agent
    /// used the target before: volume not mounted?): the target waits for
    /// it. The text says what to do.
    Absent(String),
}

impl FsTarget {
    /// Looks at the root and its marker as [`FsTarget::open_root`] would,
    /// without writing anything (a plain folder is not adopted here; its
    /// write access is checked instead). `Err`: the agent refuses the root
    /// until a person acts (another target's marker, an unreadable marker,
    /// not a folder, not writable).
    pub fn inspect(&self) -> Result<RootState, TargetError> {
        let shown = self.root.display();
        if let Err(e) = std::fs::symlink_metadata(&self.root) {
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(RootState::Absent(format!(
                    "{shown} does not exist (volume not mounted?); exportd never creates a target root: mount the volume, or create the folder and run `exportd target init`"
                )));
            }
        }
        let root = self.open_root_handle()?;
        let on_disk = self.read_marker(&root)?;
        let known = self.load_known()?;
        match (on_disk, known) {
            (Some(d), Some(k)) if d.target_id == k.target_id && d.instance == k.instance => {
                Ok(RootState::Marked(d))
            }
            (Some(d), Some(k)) => Err(self.unavailable(format!(
                "{shown} holds the marker of {d}, not of {k} that this agent uses (wrong volume mounted?); mount the right volume, or run `exportd target init` if this archive replaces it"
            ))),
            (Some(d), None) if d.target_id == self.spec.id => Ok(RootState::Marked(d)),
            (Some(d), None) => Err(self.unavailable(format!(
                "{shown} holds the marker of {d} (another target's archive); mount the right volume or fix the target's path"
            ))),
            (None, Some(_)) => Ok(RootState::Absent(format!(
                "{shown} has no {MARKER_NAME} marker (volume not mounted?); mount it or run `exportd target init`"
            ))),
            (None, None) => {
                rustix::fs::access(&self.root, rustix::fs::Access::WRITE_OK)
                    .map_err(|e| self.io_err("write into", &self.root, e.into()))?;
                Ok(RootState::Adoptable)
            }
        }
    }

    /// `check-config --probe`: [`FsTarget::inspect`], then a temp file in
    /// `<root>/.exportd-tmp/` made as every copy makes one (exclusive
    /// create, flock), written, fsynced and removed, and the temp folder
    /// fsynced. A root that is absent fails. Returns what was done.
    pub fn probe(&self) -> Result<String, TargetError> {
        let how = match self.inspect()? {
            RootState::Absent(why) => return Err(self.unavailable(why)),
            RootState::Marked(m) => format!("marker instance {}", m.instance),
            RootState::Adoptable => format!(
                "no {MARKER_NAME} yet: adopted at the first write, or run `exportd target init`"
            ),
        };
        let root = self.open_root_handle()?;
        let tmp = self.tmp_dir(&root)?;
        let temp = self.create_temp(&tmp)?;
        let written = (&temp.file)
            .write_all(b"exportd probe\n")
            .and_then(|()| temp.file.sync_all());
        let removed = handle::remove_in(&tmp, &temp.name);
        written.map_err(|e| self.io_err("write", &temp.path, e))?;
        removed.map_err(|e| self.io_err("remove", &temp.path, e))?;
        let at = self.root.join(TMP_DIR);
        tmp.sync_all()
            .map_err(|e| self.io_err("fsync folder", &at, e))?;
        let free = rustix::fs::fstatvfs(&root)
            .map(|s| {
                format!(
                    "; {} free",
                    crate::human::bytes(s.f_bavail.saturating_mul(s.f_frsize))
                )
            })
            .unwrap_or_default();
        Ok(format!(
            "probe file written, fsynced and removed in {} ({how}{free})",
            at.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::TargetSpec;
    use crate::sink::fs::TargetEnv;

    fn target(dir: &std::path::Path, root: &std::path::Path) -> FsTarget {
        FsTarget::new(
            &TargetSpec::fs("nas1", root),
            &TargetEnv {
                state_dir: dir.join("state"),
                agent_id: "a1".into(),
            },
        )
    }

    #[test]
    fn inspect_never_writes_and_probe_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("archive");
        let t = target(d.path(), &root);
        assert!(
            matches!(t.inspect().unwrap(), RootState::Absent(m) if m.contains("does not exist"))
        );
        assert!(t.probe().is_err());
        assert!(!root.exists(), "never creates the root");

        std::fs::create_dir(&root).unwrap();
        assert_eq!(t.inspect().unwrap(), RootState::Adoptable);
        let said = t.probe().unwrap();
        assert!(said.contains("adopted at the first write"), "{said}");
        assert!(!root.join(MARKER_NAME).exists(), "no adoption by a probe");
        assert_eq!(std::fs::read_dir(root.join(TMP_DIR)).unwrap().count(), 0);

        let (m, _) = t.init().unwrap();
        assert_eq!(t.inspect().unwrap(), RootState::Marked(m.clone()));
        assert!(t.probe().unwrap().contains(&m.instance));

        // Used before, marker gone: the volume is not mounted.
        std::fs::remove_file(root.join(MARKER_NAME)).unwrap();
        assert!(matches!(t.inspect().unwrap(), RootState::Absent(m) if m.contains("not mounted")));
        let e = t.probe().unwrap_err().to_string();
        assert!(e.contains("no .exportd-target marker"), "{e}");

        // Another target's marker: refused.
        let other = target(&d.path().join("o"), &root);
        std::fs::write(
            root.join(MARKER_NAME),
            Marker::new("other", "x").unwrap().to_bytes(),
        )
        .unwrap();
        assert!(other.inspect().is_err());
    }
}
