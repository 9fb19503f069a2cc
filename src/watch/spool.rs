//! Reading the recorder's spool (spool.md): naming rules, the recursive scan
//! ([`scan`]) and safe opening of listed files ([`open_in_root`]).
//! Read-only: never writes to the spool, never follows a way out of its root.
//!
//! Every spool path is opened relative to a directory handle of its spool
//! root, never by a name checked earlier: `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` opens the file's folder where the kernel has it; a
//! path holding a symlink (or a kernel without `openat2`) is walked one
//! component at a time with `O_NOFOLLOW`, each symlink read with
//! `readlinkat` and resolved by this code, so that nothing ever leads out of
//! the root (spool.md: a symlink leaving the root is refused; one staying
//! inside it is followed). The file itself is looked at (`fstatat`, no
//! follow) before it is opened, then opened `O_NONBLOCK | O_NOFOLLOW`
//! (`O_NOATIME` where permitted) and checked again on the handle: a FIFO,
//! socket or device is refused without ever blocking a worker.
//!
//! The scan walks folders through handles too (`openat` with `O_DIRECTORY |
//! O_NOFOLLOW`) and says whether every listing completed: a folder that
//! could not be listed is "unknown", never "empty".

mod open;
mod scan;
#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};

use crate::ledger::journal::{PathKey, path_key};

pub use open::{OpenError, open_in_root};
pub use scan::{scan, scan_below};

/// Deepest folder nesting scanned below a root.
pub const MAX_DEPTH: usize = 32;

/// Symlinks followed (inside the root) while opening one path, as the kernel's
/// own limit.
const MAX_LINKS: usize = 40;

/// Temp names the recorder uses before renaming into place.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp")
}

/// A metadata XML name (`*.xml`, or `*.xml.age` when encrypted).
pub fn is_metadata_name(name: &str) -> bool {
    !is_temp_name(name) && (name.ends_with(".xml") || name.ends_with(".xml.age"))
}

/// A metadata XML found in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlRef {
    /// The spool root as configured.
    pub root: PathBuf,
    /// The XML's path relative to the root (`/`-separated).
    pub rel: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Size at discovery.
    pub size: u64,
    /// mtime at discovery, ns.
    pub mtime_ns: i64,
    /// Journal key of the path.
    pub key: PathKey,
}

impl XmlRef {
    /// Stats `path` below `root` (not following a symlink); `None` if it is
    /// not a regular file (or is gone). A hint only: the file is opened
    /// through a handle of the root when it is processed.
    pub fn stat(root: &Path, path: &Path) -> Option<XmlRef> {
        let m = std::fs::symlink_metadata(path).ok()?;
        if !m.file_type().is_file() {
            return None;
        }
        use std::os::unix::fs::MetadataExt;
        XmlRef::from_parts(
            root,
            path,
            m.len(),
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        )
    }

    fn from_parts(root: &Path, path: &Path, size: u64, mtime_ns: i64) -> Option<XmlRef> {
        let rel = path.strip_prefix(root).ok()?.to_str()?.to_string();
        Some(XmlRef {
            key: path_key(root, &rel),
            root: root.to_path_buf(),
            rel,
            path: path.to_path_buf(),
            size,
            mtime_ns,
        })
    }

    /// The folder holding the XML.
    pub fn folder(&self) -> &Path {
        self.path.parent().unwrap_or(&self.root)
    }

    /// Whether the metadata itself is age-encrypted.
    pub fn encrypted(&self) -> bool {
        self.rel.ends_with(".age")
    }
}

/// What a scan saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Every folder below the start was listed to its end (no open, listing
    /// or entry error). When false, what the scan did not find is unknown,
    /// not gone.
    pub complete: bool,
    /// Metadata XMLs found.
    pub xmls: usize,
    /// Folders listed.
    pub dirs: usize,
}

/// Opens a spool root folder (the configured path is trusted: it may lead
/// through symlinks the administrator made).
fn open_root(root: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        root,
        flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The components of `rel` (a path below a root) as names; `None` when it
/// holds anything but plain names (`..`, a root, a prefix).
fn plain_components(rel: &Path) -> Option<Vec<&OsStr>> {
    let mut v = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => v.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(v)
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Whether an error reading or opening a spool file may go away by itself
/// (EACCES, EIO, ESTALE, ENOMEM, a root not there...): then the record is
/// retried with backoff. `false` for a refusal (containment, not a regular
/// file), a failed decryption or a missing key, which retrying cannot mend.
pub fn is_transient(e: &io::Error) -> bool {
    if e.raw_os_error().is_some() {
        return true;
    }
    match e.get_ref() {
        Some(inner) => {
            if let Some(o) = inner.downcast_ref::<OpenError>() {
                return matches!(o, OpenError::Io { .. });
            }
            if let Some(r) = inner.downcast_ref::<ReadError>() {
                return is_transient(&r.source);
            }
            false
        }
        None => false,
    }
}

/// Whether an error opening a spool file is a refusal (a way out of the
/// root, not a regular file): the record is refused, never retried.
pub fn is_refusal(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<OpenError>())
        .is_some_and(|o| matches!(o, OpenError::Refused { .. }))
}

/// A read error on a spool file, with the file's path.
#[derive(Debug, thiserror::Error)]
#[error("reading {path} failed: {source}")]
pub struct ReadError {
    /// The file.
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

/// An open spool file whose read errors name it (and stay classifiable by
/// [`is_transient`]).
pub struct SpoolFile {
    file: File,
    path: PathBuf,
}

impl SpoolFile {
    /// Wraps an opened spool file.
    pub fn new(file: File, path: PathBuf) -> SpoolFile {
        SpoolFile { file, path }
    }

    /// The handle.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl io::Read for SpoolFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                return e;
            }
            io::Error::new(
                e.kind(),
                ReadError {
                    path: self.path.clone(),
                    source: e,
                },
            )
        })
    }
}

/// An [`OpenError`] as an `io::Error` (kind `NotFound` when missing),
/// classifiable by [`is_transient`].
pub fn open_error_to_io(e: OpenError) -> io::Error {
    let kind = match &e {
        OpenError::Missing(_) => io::ErrorKind::NotFound,
        OpenError::Refused { .. } => io::ErrorKind::InvalidInput,
        OpenError::Io { source, .. } => source.kind(),
    };
    io::Error::new(kind, e)
}

/// Each spool root with its canonical form (the root itself when it cannot
/// be resolved now: a missing root is still a root).
pub fn canonical_roots(spool: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    spool
        .iter()
        .map(|r| {
            (
                r.clone(),
                std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()),
            )
        })
        .collect()
}
