//! Reading the recorder's spool (spool.md), read-only: naming rules, the
//! recursive scan, and safe opening of listed files.
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

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::journal::{PathKey, path_key};

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
    scan_from(root, root, on_dir, on_xml, &mut |_| {}, on_error)
}

/// Like [`scan`], starting at `start` (a folder below `root`), for a folder
/// that just appeared; `on_file` gets every content file found.
pub fn scan_below(
    root: &Path,
    start: &Path,
    on_dir: &mut dyn FnMut(&Path),
    on_xml: &mut dyn FnMut(XmlRef),
    on_file: &mut dyn FnMut(&Path),
    on_error: &mut dyn FnMut(&Path, io::Error),
) -> ScanReport {
    scan_from(root, start, on_dir, on_xml, on_file, on_error)
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

fn scan_from(
    root: &Path,
    start: &Path,
    on_dir: &mut dyn FnMut(&Path),
    on_xml: &mut dyn FnMut(XmlRef),
    on_file: &mut dyn FnMut(&Path),
    on_error: &mut dyn FnMut(&Path, io::Error),
) -> ScanReport {
    let mut rep = ScanReport {
        complete: true,
        ..ScanReport::default()
    };
    let mut fail = |rep: &mut ScanReport, p: &Path, e: io::Error| {
        rep.complete = false;
        on_error(p, e);
    };
    let Some(rel) = start.strip_prefix(root).ok().and_then(plain_components) else {
        fail(
            &mut rep,
            start,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a folder below the spool root",
            ),
        );
        return rep;
    };
    // The start folder: the root by its configured path, then each
    // component below it without following a symlink.
    let mut fd = match open_root(root, OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(e) => {
            fail(&mut rep, root, e.into());
            return rep;
        }
    };
    for c in &rel {
        fd = match open_dir_at(fd.as_fd(), c, OFlags::RDONLY) {
            Ok(fd) => fd,
            // A folder below the root that is gone holds nothing any more.
            Err(rustix::io::Errno::NOENT) => return rep,
            Err(e) => {
                fail(&mut rep, start, e.into());
                return rep;
            }
        };
    }
    // Pending folders hold their parent's handle: at most one open handle
    // per level of the folder being listed.
    enum At {
        Open(OwnedFd),
        Below(Rc<OwnedFd>, std::ffi::OsString),
    }
    let mut stack: Vec<(At, PathBuf, usize)> = vec![(At::Open(fd), start.to_path_buf(), rel.len())];
    while let Some((at, dir, depth)) = stack.pop() {
        // Watched before it is read: nothing created in between is missed.
        on_dir(&dir);
        let fd = match at {
            At::Open(fd) => fd,
            At::Below(parent, name) => match open_dir_at(parent.as_fd(), &name, OFlags::RDONLY) {
                Ok(fd) => fd,
                // Gone since it was listed (its records with it).
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => {
                    fail(&mut rep, &dir, e.into());
                    continue;
                }
            },
        };
        let fd = Rc::new(fd);
        let mut d = match rustix::fs::Dir::read_from(fd.as_fd()) {
            Ok(d) => d,
            Err(e) => {
                fail(&mut rep, &dir, e.into());
                continue;
            }
        };
        rep.dirs += 1;
        let mut entries: Vec<(std::ffi::OsString, FileType)> = Vec::new();
        for e in d.by_ref() {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    fail(&mut rep, &dir, e.into());
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
                        fail(&mut rep, &dir.join(name), err.into());
                        continue;
                    }
                }
            }
            entries.push((name.to_os_string(), ft));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ft) in entries {
            let Some(name_s) = name.to_str() else {
                continue;
            };
            let p = dir.join(name_s);
            if ft == FileType::Directory {
                if depth + 1 < MAX_DEPTH && !name_s.starts_with('.') {
                    stack.push((At::Below(fd.clone(), name), p, depth + 1));
                }
            } else if ft == FileType::RegularFile && is_metadata_name(name_s) {
                match rustix::fs::statat(fd.as_fd(), name_s, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                        if let Some(x) =
                            XmlRef::from_parts(root, &p, st.st_size as u64, stat_mtime_ns(&st))
                        {
                            rep.xmls += 1;
                            on_xml(x);
                        }
                    }
                    Ok(_) | Err(rustix::io::Errno::NOENT) => {}
                    Err(err) => fail(&mut rep, &p, err.into()),
                }
            } else if ft == FileType::RegularFile && !is_temp_name(name_s) {
                on_file(&p);
            }
        }
    }
    rep
}

/// Why a spool file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not there (yet, or any more).
    #[error("{0} is missing")]
    Missing(PathBuf),
    /// Leads outside the spool root (a symlink out, `..`, an absolute path)
    /// or is not a regular file: refused for good, never followed or opened.
    #[error("{path} is refused: {why}")]
    Refused {
        /// The path.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// Another I/O error (EACCES, EIO, ESTALE, ENOMEM...): may go away by
    /// itself, so it is retried, never taken as a verdict on the record.
    #[error("cannot open {path}: {source}; retried with backoff")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

const OUTSIDE: &str = "it resolves outside the spool root (symlink); it is never followed";
const NOT_REGULAR: &str =
    "not a regular file (a folder, FIFO, socket or device); it is never opened";

/// How a walk to a file's folder ended without a handle.
enum Walk {
    /// A symlink is on the way, or the kernel lacks `openat2`: walk by hand.
    Slow,
    /// A verdict.
    Err(OpenError),
}

/// Opens a spool file read-only through a handle of `root`, refusing
/// anything that leads outside it or is not a regular file. `path` must be
/// `root` joined with a relative path (as configured, or canonical: both
/// forms are accepted as the target of an absolute symlink inside the root).
/// Never blocks on a FIFO or device.
pub fn open_in_root(root: &Path, path: &Path) -> Result<File, OpenError> {
    let refused = |why| OpenError::Refused {
        path: path.to_path_buf(),
        why,
    };
    let io_err = |source: io::Error| OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let Some(rel) = path.strip_prefix(root).ok().and_then(plain_components) else {
        return Err(refused("it is not a plain path below the spool root"));
    };
    let Some((name, dirs)) = rel.split_last() else {
        return Err(refused(NOT_REGULAR));
    };
    let root_fd = match open_root(root, OFlags::PATH) {
        Ok(fd) => fd,
        // The root itself is not there (unmounted?): its files are not
        // "missing" (that would let a record be forgotten), just unknown.
        Err(e) => return Err(io_err(e.into())),
    };
    match open_fast(&root_fd, dirs, name, path) {
        Ok(f) => Ok(f),
        Err(Walk::Err(e)) => Err(e),
        Err(Walk::Slow) => open_walk(root, &root_fd, &rel, path),
    }
}

/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` to the file's folder,
/// then the file itself from that handle.
fn open_fast(root_fd: &OwnedFd, dirs: &[&OsStr], name: &OsStr, path: &Path) -> Result<File, Walk> {
    let dir: Option<OwnedFd> = if dirs.is_empty() {
        None
    } else {
        let mut rel = PathBuf::new();
        for d in dirs {
            rel.push(d);
        }
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                root_fd,
                &rel,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => break Some(fd),
                // A rename or mount raced the lookup: the kernel asks to retry.
                Err(rustix::io::Errno::AGAIN) if tries < 3 => tries += 1,
                Err(rustix::io::Errno::NOENT) => {
                    return Err(Walk::Err(OpenError::Missing(path.to_path_buf())));
                }
                // ELOOP (a symlink on the way), ENOTDIR, EXDEV, and ENOSYS /
                // EPERM / EINVAL from a kernel (or seccomp, or qemu-user)
                // without openat2: the component walk decides.
                Err(_) => return Err(Walk::Slow),
            }
        }
    };
    let dir_fd = dir.as_ref().map_or(root_fd.as_fd(), |d| d.as_fd());
    open_leaf(dir_fd, name, path, false)
}

/// Opens `name` in `dir` (looked at first, never followed, never blocking).
/// A symlink there is [`Walk::Slow`] unless `in_walk` (the walk resolves it
/// itself and never gets here with one).
fn open_leaf(dir: BorrowedFd<'_>, name: &OsStr, path: &Path, in_walk: bool) -> Result<File, Walk> {
    let err = |e: OpenError| Walk::Err(e);
    let refused = |why| {
        Walk::Err(OpenError::Refused {
            path: path.to_path_buf(),
            why,
        })
    };
    let io_err = |e: rustix::io::Errno| {
        Walk::Err(OpenError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })
    };
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Symlink if !in_walk => return Err(Walk::Slow),
            _ => return Err(refused(NOT_REGULAR)),
        },
        Err(rustix::io::Errno::NOENT) => return Err(err(OpenError::Missing(path.to_path_buf()))),
        Err(e) => return Err(io_err(e)),
    }
    let base =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::openat(dir, name, base | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME is only permitted to the file's owner.
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, base, Mode::empty()),
        other => other,
    };
    let fd = match fd {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(err(OpenError::Missing(path.to_path_buf()))),
        // Swapped for a symlink since it was looked at.
        Err(rustix::io::Errno::LOOP) if !in_walk => return Err(Walk::Slow),
        Err(rustix::io::Errno::LOOP) => return Err(refused(OUTSIDE)),
        // A socket (or a device without a driver).
        Err(rustix::io::Errno::NXIO) => return Err(refused(NOT_REGULAR)),
        Err(e) => return Err(io_err(e)),
    };
    // Checked again on the handle: it may have been swapped in between.
    match rustix::fs::fstat(&fd) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
        Ok(_) => return Err(refused(NOT_REGULAR)),
        Err(e) => return Err(io_err(e)),
    }
    // Reads block as usual on a regular file; clear the flag all the same.
    if let Err(e) = rustix::fs::fcntl_getfl(&fd)
        .and_then(|fl| rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK))
    {
        return Err(io_err(e));
    }
    Ok(File::from(fd))
}

/// The root's own names (as configured and canonical), for absolute
/// symlinks that point back inside it.
fn root_prefixes(root: &Path) -> Vec<PathBuf> {
    let mut v = vec![root.to_path_buf()];
    if let Ok(c) = std::fs::canonicalize(root) {
        if c != root {
            v.push(c);
        }
    }
    v
}

/// The component walk: from the root handle, one name at a time with
/// `O_NOFOLLOW`; a symlink is read (`readlinkat`) and resolved here, a `..`
/// pops a handle this walk holds, and nothing ever goes above the root.
fn open_walk(
    root: &Path,
    root_fd: &OwnedFd,
    rel: &[&OsStr],
    path: &Path,
) -> Result<File, OpenError> {
    let refused = |why| OpenError::Refused {
        path: path.to_path_buf(),
        why,
    };
    let io_err = |e: rustix::io::Errno| OpenError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let mut todo: VecDeque<Vec<u8>> = rel.iter().map(|c| c.as_bytes().to_vec()).collect();
    // Handles of the folders below the root on the current path.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    let mut prefixes: Option<Vec<PathBuf>> = None;
    while let Some(c) = todo.pop_front() {
        if c.is_empty() || c == b"." {
            continue;
        }
        if c == b".." {
            if stack.pop().is_none() {
                return Err(refused(OUTSIDE));
            }
            continue;
        }
        let name = OsStr::from_bytes(&c);
        let cur = stack.last().map_or(root_fd.as_fd(), |f| f.as_fd());
        let st = match rustix::fs::statat(cur, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) if links > 0 => {
                return Err(refused("a symlink on its path points nowhere"));
            }
            Err(rustix::io::Errno::NOENT) => return Err(OpenError::Missing(path.to_path_buf())),
            Err(e) => return Err(io_err(e)),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(refused("too many symlinks on its path"));
                }
                let target = match rustix::fs::readlinkat(cur, name, Vec::new()) {
                    Ok(t) => t.into_bytes(),
                    // No longer a symlink: look at the name again.
                    Err(rustix::io::Errno::INVAL) => {
                        todo.push_front(c);
                        continue;
                    }
                    Err(rustix::io::Errno::NOENT) => {
                        return Err(OpenError::Missing(path.to_path_buf()));
                    }
                    Err(e) => return Err(io_err(e)),
                };
                let target = Path::new(OsStr::from_bytes(&target));
                let rest: &Path = if target.is_absolute() {
                    let pre = prefixes.get_or_insert_with(|| root_prefixes(root));
                    let Some(r) = pre.iter().find_map(|p| target.strip_prefix(p).ok()) else {
                        return Err(refused(OUTSIDE));
                    };
                    stack.clear();
                    r
                } else {
                    target
                };
                for comp in rest.components().rev() {
                    match comp {
                        Component::Normal(n) => todo.push_front(n.as_bytes().to_vec()),
                        Component::ParentDir => todo.push_front(b"..".to_vec()),
                        Component::CurDir => {}
                        Component::RootDir | Component::Prefix(_) => {
                            return Err(refused(OUTSIDE));
                        }
                    }
                }
            }
            FileType::Directory if !todo.is_empty() => {
                match open_dir_at(cur, name, OFlags::PATH) {
                    Ok(fd) => stack.push(fd),
                    // Swapped since it was looked at: look again.
                    Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(refused("its path keeps changing"));
                        }
                        todo.push_front(c);
                    }
                    Err(rustix::io::Errno::NOENT) => {
                        return Err(OpenError::Missing(path.to_path_buf()));
                    }
                    Err(e) => return Err(io_err(e)),
                }
            }
            _ if !todo.is_empty() => {
                return Err(refused("a component of its path is not a folder"));
            }
            _ => {
                return match open_leaf(cur, name, path, true) {
                    Ok(f) => Ok(f),
                    Err(Walk::Err(e)) => Err(e),
                    Err(Walk::Slow) => Err(refused(OUTSIDE)),
                };
            }
        }
    }
    Err(refused(NOT_REGULAR))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;

    #[test]
    fn names() {
        assert!(is_metadata_name("a.xml"));
        assert!(is_metadata_name("a.xml.age"));
        assert!(!is_metadata_name(".a.xml"));
        assert!(!is_metadata_name("a.xml.tmp"));
        assert!(!is_metadata_name("a.wav"));
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().to_path_buf();
        fs::create_dir_all(d.join("root/sub")).unwrap();
        fs::write(d.join("outside"), b"secret").unwrap();
        fs::write(d.join("root/sub/in.wav"), b"ok").unwrap();
        (t, d)
    }

    fn read(f: File) -> Vec<u8> {
        let mut v = Vec::new();
        SpoolFile::new(f, PathBuf::new())
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let (_t, d) = tree();
        std::os::unix::fs::symlink(d.join("outside"), d.join("root/sub/evil.wav")).unwrap();
        std::os::unix::fs::symlink(d.join("root/sub/in.wav"), d.join("root/sub/alias.wav"))
            .unwrap();
        let root = fs::canonicalize(d.join("root")).unwrap();
        assert!(matches!(
            open_in_root(&root, &root.join("sub/evil.wav")),
            Err(OpenError::Refused { .. })
        ));
        assert_eq!(
            read(open_in_root(&root, &root.join("sub/alias.wav")).unwrap()),
            b"ok"
        );
        assert!(matches!(
            open_in_root(&root, &root.join("sub/none.wav")),
            Err(OpenError::Missing(_))
        ));
        // Through a symlinked folder leading out, even to a file that does not exist.
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("root/sub/out")).unwrap();
        fs::create_dir_all(d.join("elsewhere")).unwrap();
        assert!(matches!(
            open_in_root(&root, &root.join("sub/out/nothing.wav")),
            Err(OpenError::Refused { .. })
        ));
        std::os::unix::fs::symlink(d.join("gone"), d.join("root/sub/dangling")).unwrap();
        assert!(matches!(
            open_in_root(&root, &root.join("sub/dangling/x.wav")),
            Err(OpenError::Refused { .. })
        ));
        assert!(matches!(
            open_in_root(&root, &root.join("sub")),
            Err(OpenError::Refused { .. })
        ));
        let mut found = Vec::new();
        fs::write(d.join("root/sub/r.xml"), b"<recording/>").unwrap();
        let rep = scan(
            &root,
            &mut |_| {},
            &mut |x| found.push(x.rel),
            &mut |_, _| {},
        );
        assert_eq!(found, vec!["sub/r.xml".to_string()]);
        assert!(rep.complete);
        assert_eq!((rep.xmls, rep.dirs), (1, 2));
    }

    /// Relative symlinks: inside the root they are followed (by this code,
    /// from handles), out of it (`..` past the root) they are refused.
    #[test]
    fn relative_symlinks_stay_inside_the_root() {
        let (_t, d) = tree();
        let root = d.join("root");
        fs::create_dir_all(root.join("other")).unwrap();
        std::os::unix::fs::symlink("../sub/in.wav", root.join("other/rel.wav")).unwrap();
        std::os::unix::fs::symlink("../sub", root.join("other/dir")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("other/up.wav")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("other/top")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("other/loop")).unwrap();
        assert_eq!(
            read(open_in_root(&root, &root.join("other/rel.wav")).unwrap()),
            b"ok"
        );
        assert_eq!(
            read(open_in_root(&root, &root.join("other/dir/in.wav")).unwrap()),
            b"ok"
        );
        for bad in ["other/up.wav", "other/top/outside", "other/loop"] {
            assert!(
                matches!(
                    open_in_root(&root, &root.join(bad)),
                    Err(OpenError::Refused { .. })
                ),
                "{bad}"
            );
        }
        // The walk alone (a kernel without openat2) decides the same.
        let rfd = open_root(&root, OFlags::PATH).unwrap();
        let walk = |rel: &str| {
            let p = Path::new(rel);
            let comps = plain_components(p).unwrap();
            open_walk(&root, &rfd, &comps, &root.join(p))
        };
        assert_eq!(read(walk("sub/in.wav").unwrap()), b"ok");
        assert_eq!(read(walk("other/dir/in.wav").unwrap()), b"ok");
        assert!(matches!(walk("sub/none.wav"), Err(OpenError::Missing(_))));
        assert!(matches!(
            walk("other/up.wav"),
            Err(OpenError::Refused { .. })
        ));
        assert!(matches!(
            walk("other/top/outside"),
            Err(OpenError::Refused { .. })
        ));
        assert!(matches!(walk("sub"), Err(OpenError::Refused { .. })));
        // Paths that are not plain names below the root.
        assert!(matches!(
            open_in_root(&root, &root.join("sub/../sub/in.wav")),
            Err(OpenError::Refused { .. })
        ));
        assert!(matches!(
            open_in_root(&root, &d.join("outside")),
            Err(OpenError::Refused { .. })
        ));
    }

    /// A FIFO (with no writer: a blocking open would hang) and a socket are
    /// refused at once, through both ways of opening.
    #[test]
    fn fifos_and_sockets_are_refused_without_blocking() {
        let (_t, d) = tree();
        let root = d.join("root");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("sub/pipe.wav"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sub/sock.wav")).unwrap();
        std::os::unix::fs::symlink("pipe.wav", root.join("sub/to-pipe.wav")).unwrap();
        let t0 = std::time::Instant::now();
        for name in ["sub/pipe.wav", "sub/sock.wav", "sub/to-pipe.wav"] {
            let r = open_in_root(&root, &root.join(name));
            assert!(matches!(r, Err(OpenError::Refused { .. })), "{name}: {r:?}");
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        // The leaf opener itself, past its look: O_NONBLOCK and the check on
        // the handle refuse a FIFO too.
        let dir = open_root(&root.join("sub"), OFlags::PATH).unwrap();
        let r = open_leaf(
            dir.as_fd(),
            OsStr::new("pipe.wav"),
            Path::new("pipe.wav"),
            true,
        );
        assert!(matches!(r, Err(Walk::Err(OpenError::Refused { .. }))));
    }

    #[test]
    fn transient_errors_are_told_from_refusals() {
        let p = PathBuf::from("/spool/a.wav");
        let io = |errno: i32| OpenError::Io {
            path: p.clone(),
            source: io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::EACCES, libc::EIO, libc::ESTALE, libc::ENOMEM] {
            assert!(is_transient(&open_error_to_io(io(errno))));
            let r = ReadError {
                path: p.clone(),
                source: io::Error::from_raw_os_error(errno),
            };
            assert!(is_transient(&io::Error::other(r)));
        }
        let refused = open_error_to_io(OpenError::Refused {
            path: p.clone(),
            why: OUTSIDE,
        });
        assert!(!is_transient(&refused) && is_refusal(&refused));
        assert!(!is_refusal(&open_error_to_io(io(libc::EIO))));
        assert!(!is_transient(&io::Error::new(
            io::ErrorKind::PermissionDenied,
            "no identity opens it"
        )));
        assert!(!is_transient(&io::Error::new(
            io::ErrorKind::InvalidData,
            "tag mismatch"
        )));
    }

    /// A folder that cannot be opened when its turn comes (here: swapped
    /// for a symlink after its parent was listed) makes the scan incomplete,
    /// and the symlink is not followed.
    #[test]
    fn a_folder_that_cannot_be_listed_makes_the_scan_incomplete() {
        let (_t, d) = tree();
        let root = d.join("root");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::create_dir_all(d.join("elsewhere")).unwrap();
        fs::write(d.join("elsewhere/out.xml"), b"<recording/>").unwrap();
        fs::write(root.join("sub/in.xml"), b"<recording/>").unwrap();
        let mut found = Vec::new();
        let mut failed = Vec::new();
        let rep = scan(
            &root,
            &mut |dir| {
                if dir == root.join("a") {
                    fs::remove_dir(dir).unwrap();
                    std::os::unix::fs::symlink(d.join("elsewhere"), dir).unwrap();
                }
            },
            &mut |x| found.push(x.rel),
            &mut |p, _| failed.push(p.to_path_buf()),
        );
        assert!(!rep.complete);
        assert_eq!(failed, vec![root.join("a")]);
        assert_eq!(found, vec!["sub/in.xml".to_string()]);
    }

    /// A root that cannot be opened is an incomplete scan, not an empty one.
    #[test]
    fn a_missing_root_is_an_incomplete_scan() {
        let (_t, d) = tree();
        let mut errors = 0;
        let rep = scan(&d.join("nothing"), &mut |_| {}, &mut |_| {}, &mut |_, _| {
            errors += 1
        });
        assert!(!rep.complete);
        assert_eq!(errors, 1);
        // A missing root is not a missing file: opening below it is an I/O
        // error (retried), never "missing" (which would forget the record).
        assert!(matches!(
            open_in_root(&d.join("nothing"), &d.join("nothing/a.xml")),
            Err(OpenError::Io { .. })
        ));
    }
}
