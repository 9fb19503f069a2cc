//! The recursive spool scan: walks folders through handles (`O_DIRECTORY
//! | O_NOFOLLOW`), reports every folder, metadata XML and content file, and
//! says whether every listing completed. Never follows a symlink, never
//! opens a file's content, never writes.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, OFlags};

use super::{
    MAX_DEPTH, ScanReport, XmlRef, is_metadata_name, is_temp_name, open_dir_at, open_root,
    plain_components,
};

// The field types differ between architectures.
#[allow(clippy::unnecessary_cast)]
fn stat_mtime_ns(st: &rustix::fs::Stat) -> i64 {
    st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64
}

/// Walks `root` without following symlinks; calls `on_dir` for every folder
/// (root included) before it is listed and `on_xml` for every metadata XML.
/// Folders that cannot be opened or listed are reported through `on_error`
/// and make the report incomplete.
pub fn scan(
    root: &Path,
    on_dir: &mut dyn FnMut(&Path),
    on_xml: &mut dyn FnMut(XmlRef),
    on_error: &mut dyn FnMut(&Path, io::Error),
) -> ScanReport {
    scan_below(root, root, on_dir, on_xml, &mut |_| {}, on_error)
}

/// What the scan does with a listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// A folder to list in turn (not hidden, not too deep).
    Descend,
    /// A metadata XML: reported with its size and mtime.
    Metadata,
    /// Any other regular file that is not a temp: a content file.
    Content,
    /// Nothing to do (a hidden or too deep folder, a temp, a symlink, a
    /// FIFO...).
    Skip,
}

/// Pure: what to do with an entry of type `ft` named `name` listed in a
/// folder at `depth` below the root.
pub(super) fn classify_entry(ft: FileType, name: &str, depth: usize) -> Entry {
    if ft == FileType::Directory {
        if depth + 1 < MAX_DEPTH && !name.starts_with('.') {
            Entry::Descend
        } else {
            Entry::Skip
        }
    } else if ft == FileType::RegularFile && is_metadata_name(name) {
        Entry::Metadata
    } else if ft == FileType::RegularFile && !is_temp_name(name) {
        Entry::Content
    } else {
        Entry::Skip
    }
}

/// A folder waiting to be listed. Pending folders hold their parent's
/// handle: at most one open handle per level of the folder being listed.
enum At {
    Open(OwnedFd),
    Below(Rc<OwnedFd>, OsString),
}

/// One folder still to list: how to reach it, its path, its depth.
type Pending = (At, PathBuf, usize);

/// A scan in progress: the callbacks and what was seen so far.
struct Scan<'a> {
    root: &'a Path,
    rep: ScanReport,
    on_dir: &'a mut dyn FnMut(&Path),
    on_xml: &'a mut dyn FnMut(XmlRef),
    on_file: &'a mut dyn FnMut(&Path),
    on_error: &'a mut dyn FnMut(&Path, io::Error),
}

/// Like [`scan`], starting at `start` (a folder below `root`), for a folder
/// that just appeared; `on_file` gets every content file found.
///
/// Told as its steps: open the start folder, then list folders depth first
/// (each reported before it is listed), visiting their entries.
pub fn scan_below(
    root: &Path,
    start: &Path,
    on_dir: &mut dyn FnMut(&Path),
    on_xml: &mut dyn FnMut(XmlRef),
    on_file: &mut dyn FnMut(&Path),
    on_error: &mut dyn FnMut(&Path, io::Error),
) -> ScanReport {
    let mut s = Scan {
        root,
        rep: ScanReport {
            complete: true,
            ..ScanReport::default()
        },
        on_dir,
        on_xml,
        on_file,
        on_error,
    };
    if let Some((fd, depth)) = s.open_start(start) {
        s.walk(fd, start, depth);
    }
    s.rep
}

impl Scan<'_> {
    /// A folder or entry could not be read: the report is incomplete.
    fn fail(&mut self, p: &Path, e: io::Error) {
        self.rep.complete = false;
        (self.on_error)(p, e);
    }

    /// The start folder: the root by its configured path, then each
    /// component below it without following a symlink. `None` when there
    /// is nothing to list (an error, or the folder is gone).
    fn open_start(&mut self, start: &Path) -> Option<(OwnedFd, usize)> {
        let Some(rel) = start
            .strip_prefix(self.root)
            .ok()
            .and_then(plain_components)
        else {
            self.fail(
                start,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a folder below the spool root",
                ),
            );
            return None;
        };
        let mut fd = match open_root(self.root, OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(e) => {
                self.fail(self.root, e.into());
                return None;
            }
        };
        for c in &rel {
            fd = match open_dir_at(fd.as_fd(), c, OFlags::RDONLY) {
                Ok(fd) => fd,
                // A folder below the root that is gone holds nothing any more.
                Err(rustix::io::Errno::NOENT) => return None,
                Err(e) => {
                    self.fail(start, e.into());
                    return None;
                }
            };
        }
        Some((fd, rel.len()))
    }

    /// Lists `start` and every folder below it, depth first.
    fn walk(&mut self, fd: OwnedFd, start: &Path, depth: usize) {
        let mut stack: Vec<Pending> = vec![(At::Open(fd), start.to_path_buf(), depth)];
        while let Some((at, dir, depth)) = stack.pop() {
            // Watched before it is read: nothing created in between is missed.
            (self.on_dir)(&dir);
            let Some(fd) = self.open_pending(at, &dir) else {
                continue;
            };
            let fd = Rc::new(fd);
            let Some(entries) = self.list(&fd, &dir) else {
                continue;
            };
            for (name, ft) in entries {
                if let Some(next) = self.visit(&fd, &dir, depth, name, ft) {
                    stack.push(next);
                }
            }
        }
    }

    /// Opens a pending folder from its parent's handle; `None` when it is
    /// gone since it was listed (its records with it) or cannot be opened.
    fn open_pending(&mut self, at: At, dir: &Path) -> Option<OwnedFd> {
        match at {
            At::Open(fd) => Some(fd),
            At::Below(parent, name) => match open_dir_at(parent.as_fd(), &name, OFlags::RDONLY) {
                Ok(fd) => Some(fd),
                // Gone since it was listed (its records with it).
                Err(rustix::io::Errno::NOENT) => None,
                Err(e) => {
                    self.fail(dir, e.into());
                    None
                }
            },
        }
    }

    /// The entries of a folder with their types, sorted by name. A listing
    /// error keeps what was read before it; `None` when the folder cannot
    /// be read at all.
    fn list(&mut self, fd: &OwnedFd, dir: &Path) -> Option<Vec<(OsString, FileType)>> {
        let mut d = match rustix::fs::Dir::read_from(fd.as_fd()) {
            Ok(d) => d,
            Err(e) => {
                self.fail(dir, e.into());
                return None;
            }
        };
        self.rep.dirs += 1;
        let mut entries: Vec<(OsString, FileType)> = Vec::new();
        for e in d.by_ref() {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    self.fail(dir, e.into());
                    break;
                }
            };
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let mut ft = e.file_type();
            if ft == FileType::Unknown {
                match rustix::fs::statat(fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => ft = FileType::from_raw_mode(st.st_mode),
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(err) => {
                        self.fail(&dir.join(name), err.into());
                        continue;
                    }
                }
            }
            entries.push((name.to_os_string(), ft));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Some(entries)
    }

    /// Acts on one entry of `dir`; a folder to list in turn is returned.
    fn visit(
        &mut self,
        fd: &Rc<OwnedFd>,
        dir: &Path,
        depth: usize,
        name: OsString,
        ft: FileType,
    ) -> Option<Pending> {
        let name_s = name.to_str()?;
        let p = dir.join(name_s);
        match classify_entry(ft, name_s, depth) {
            Entry::Descend => return Some((At::Below(fd.clone(), name), p, depth + 1)),
            Entry::Metadata => self.metadata(fd, &p, name_s),
            Entry::Content => (self.on_file)(&p),
            Entry::Skip => {}
        }
        None
    }

    /// A metadata XML: looked at again (no follow) for its size and mtime.
    fn metadata(&mut self, fd: &OwnedFd, p: &Path, name: &str) {
        match rustix::fs::statat(fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                if let Some(x) =
                    XmlRef::from_parts(self.root, p, st.st_size as u64, stat_mtime_ns(&st))
                {
                    self.rep.xmls += 1;
                    (self.on_xml)(x);
                }
            }
            Ok(_) | Err(rustix::io::Errno::NOENT) => {}
            Err(err) => self.fail(p, err.into()),
        }
    }
}
