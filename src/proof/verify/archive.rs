//! Read access to one target for `archive verify`: list a folder, open a
//! file, read a small file. Read-only: never writes, renames or deletes
//! anything on the target, and never follows a symlink.
//!
//! Folders are walked in one canonical order ([`key_cmp`]: the byte order
//! of `path + "/"`), the order S3's ListObjectsV2 gives common prefixes in
//! and the order the audit side sorts its rows in, so both sides can be
//! merged as two sorted streams.

use std::cmp::Ordering;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::PathBuf;

/// What a folder holds directly.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Regular files: (name, size), sorted by name.
    pub files: Vec<(String, u64)>,
    /// Sub-folders, sorted by [`key_cmp`].
    pub dirs: Vec<String>,
}

/// Read access to a target.
pub trait Archive {
    /// What `rel` (`/`-separated, `""` = the root) holds; an absent folder
    /// is empty.
    fn list(&self, rel: &str) -> io::Result<Listing>;
    /// Opens the file `rel` for a streamed read.
    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + '_>>;
    /// The file `rel` when it exists (at most `max` bytes, else an error).
    fn read_small(&self, rel: &str, max: u64) -> io::Result<Option<Vec<u8>>>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// Whether it can be read at all (a folder target's root exists: an
    /// unmounted volume is not an archive whose every folder is missing).
    fn check(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The canonical order of folder paths: byte order of `path + "/"`.
pub fn key_cmp(a: &str, b: &str) -> Ordering {
    a.bytes()
        .chain(std::iter::once(b'/'))
        .cmp(b.bytes().chain(std::iter::once(b'/')))
}

/// A folder target.
pub struct FsArchive {
    root: PathBuf,
}

impl FsArchive {
    /// The archive under `root`.
    pub fn new(root: impl Into<PathBuf>) -> FsArchive {
        FsArchive { root: root.into() }
    }

    fn path(&self, rel: &str) -> io::Result<PathBuf> {
        if rel.split('/').any(|c| c == ".." || c == ".") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{rel:?}: not a plain relative path"),
            ));
        }
        Ok(if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        })
    }

    fn open_file(&self, rel: &str) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(self.path(rel)?)
    }
}

impl Archive for FsArchive {
    fn list(&self, rel: &str) -> io::Result<Listing> {
        let dir = self.path(rel)?;
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listing::default()),
            Err(e) => return Err(e),
        };
        let mut l = Listing::default();
        for e in rd {
            let e = e?;
            let name = match e.file_name().into_string() {
                Ok(n) => n,
                Err(raw) => {
                    // Never written by exportd (its names are UTF-8).
                    eprintln!(
                        "exportd: archive verify: {}: {:?} is not a UTF-8 name: not checked",
                        dir.display(),
                        raw
                    );
                    continue;
                }
            };
            // file_type() does not follow a symlink: links are neither.
            let ft = e.file_type()?;
            if ft.is_dir() {
                l.dirs.push(name);
            } else if ft.is_file() {
                let len = e.metadata()?.len();
                l.files.push((name, len));
            }
        }
        l.files.sort();
        l.dirs.sort_by(|a, b| key_cmp(a, b));
        Ok(l)
    }

    fn open(&self, rel: &str) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.open_file(rel)?))
    }

    fn read_small(&self, rel: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let f = match self.open_file(rel) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        read_bounded(f, rel, max).map(Some)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn check(&self) -> io::Result<()> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(io::Error::other(format!(
                "{} is not a folder",
                self.root.display()
            ))),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (is the archive volume mounted?)",
                    self.root.display()
                ),
            )),
        }
    }
}

/// One record folder candidate: a folder that directly holds files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// Relative to the target root.
    pub path: String,
    /// Its files (name, size), sorted by name.
    pub files: Vec<(String, u64)>,
}

/// Names at the root that are not record folders.
pub const NOT_RECORDS: [&str; 4] = [
    super::super::AUDIT_ROOT,
    "compliance-exports",
    ".exportd-tmp",
    crate::sink::s3::PROBE_FOLDER,
];

/// Walks the record folders of an archive in [`key_cmp`] order: every
/// folder that directly holds a file, except the root and the reserved
/// trees. Holds one listing per level of depth, not the whole tree.
pub struct Walk<'a> {
    archive: &'a dyn Archive,
    /// Per depth: the folder's path and its sub-folders not visited yet
    /// (reversed: the next is last).
    stack: Vec<(String, Vec<String>)>,
    started: bool,
}

impl<'a> Walk<'a> {
    /// A walk from the root.
    pub fn new(archive: &'a dyn Archive) -> Walk<'a> {
        Walk {
            archive,
            stack: Vec::new(),
            started: false,
        }
    }

    fn enter(&mut self, path: String) -> io::Result<Option<Folder>> {
        let l = self.archive.list(&path)?;
        let mut dirs = l.dirs;
        if path.is_empty() {
            dirs.retain(|d| !NOT_RECORDS.contains(&d.as_str()));
        }
        dirs.reverse();
        let files = l.files;
        self.stack.push((path.clone(), dirs));
        Ok((!path.is_empty() && !files.is_empty()).then_some(Folder { path, files }))
    }
}

impl Iterator for Walk<'_> {
    type Item = io::Result<Folder>;

    fn next(&mut self) -> Option<io::Result<Folder>> {
        if !self.started {
            self.started = true;
            match self.enter(String::new()) {
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        loop {
            let (parent, dirs) = self.stack.last_mut()?;
            let Some(d) = dirs.pop() else {
                self.stack.pop();
                continue;
            };
            let path = if parent.is_empty() {
                d
            } else {
                format!("{parent}/{d}")
            };
            match self.enter(path) {
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Reads all of `r` (the file `rel`), refusing more than `max` bytes.
pub(super) fn read_bounded(r: impl Read, rel: &str, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{rel}: larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_is_key_order() {
        let d = tempfile::tempdir().unwrap();
        for p in ["a/x", "a.b/y", "a/x/z", "b", "exportd-audit/it", "a-c"] {
            fs::create_dir_all(d.path().join(p)).unwrap();
            fs::write(d.path().join(p).join("f"), p).unwrap();
        }
        fs::write(d.path().join(".exportd-target"), "m").unwrap();
        let a = FsArchive::new(d.path());
        let got: Vec<String> = Walk::new(&a).map(|f| f.unwrap().path).collect();
        let mut want = got.clone();
        want.sort_by(|a, b| key_cmp(a, b));
        assert_eq!(got, want);
        assert_eq!(got, ["a-c", "a.b/y", "a/x", "a/x/z", "b"]);
    }
}
