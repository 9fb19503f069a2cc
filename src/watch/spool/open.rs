//! Opening one spool file safely through a handle of its root: `openat2`
//! beneath the root where the kernel has it, else a component walk that
//! resolves symlinks itself. Never follows a way out of the root, never
//! blocks on a FIFO or device, never writes.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use super::{MAX_LINKS, open_dir_at, open_root, plain_components};

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

pub(super) const OUTSIDE: &str =
    "it resolves outside the spool root (symlink); it is never followed";
const NOT_REGULAR: &str =
    "not a regular file (a folder, FIFO, socket or device); it is never opened";

/// How a walk to a file's folder ended without a handle.
pub(super) enum Walk {
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
pub(super) fn open_leaf(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    in_walk: bool,
) -> Result<File, Walk> {
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
pub(super) fn root_prefixes(root: &Path) -> Vec<PathBuf> {
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
pub(super) fn open_walk(
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
                let (from_root, comps) =
                    link_steps(root, target, &mut prefixes).map_err(refused)?;
                if from_root {
                    stack.clear();
                }
                for comp in comps.into_iter().rev() {
                    todo.push_front(comp);
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

/// Pure but for the root's canonical name (looked up once, into
/// `prefixes`): the components a symlink's `target` puts in front of the
/// rest of the walk, and whether the walk restarts at the root (an absolute
/// target naming the root). `Err` when it leads outside the root.
pub(super) fn link_steps(
    root: &Path,
    target: &Path,
    prefixes: &mut Option<Vec<PathBuf>>,
) -> Result<(bool, Vec<Vec<u8>>), &'static str> {
    let from_root = target.is_absolute();
    let rest: &Path = if from_root {
        let pre = prefixes.get_or_insert_with(|| root_prefixes(root));
        let Some(r) = pre.iter().find_map(|p| target.strip_prefix(p).ok()) else {
            return Err(OUTSIDE);
        };
        r
    } else {
        target
    };
    let mut comps = Vec::new();
    for comp in rest.components() {
        match comp {
            Component::Normal(n) => comps.push(n.as_bytes().to_vec()),
            Component::ParentDir => comps.push(b"..".to_vec()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(OUTSIDE),
        }
    }
    Ok((from_root, comps))
}
