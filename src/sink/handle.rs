//! File operations below a folder target's root through directory handles;
//! never follows a symlink, never replaces a name, never blocks on a FIFO.
//!
//! Handles, not names: every file and folder below a folder target's root is
//! reached relative to a directory handle, never through a path that was
//! checked earlier (issue 21).
//!
//! - A path below a handle is opened with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` where the kernel has it (Linux 5.6+), else by
//!   walking its components with `O_NOFOLLOW | O_DIRECTORY`, so a symlink
//!   anywhere below the root is never followed (as rsync's
//!   `secure_relative_open` does after its symlink CVEs).
//! - New files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`.
//! - An existing name is opened with `O_NOFOLLOW | O_NONBLOCK` and `fstat`ed
//!   before it is read, so a FIFO, socket or device never blocks and a
//!   symlink is never followed.
//! - Renames are `renameat2(RENAME_NOREPLACE)` between handles (or
//!   `linkat` + `unlinkat` where the file system lacks it), never replacing.
//! - Folders are fsynced through their own handle.
//!
//! The handles are `std::fs::File`s so that `fsync` goes through libc (and
//! the fault-injection shim of the tests sees it).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};

/// Flags of every directory handle.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens a configured root folder (the configured path itself may go
/// through a symlink: the administrator wrote it; nothing below it may).
pub fn open_root(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Whether `name` is one plain path component (not empty, `.`, `..`, no
/// `/` nor NUL).
pub fn is_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn bad_name(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name:?} is not a single path component"),
    )
}

/// Opens the folder `rel` (`/`-separated components) below `dir` without
/// following any symlink and without leaving `dir`.
pub fn open_dir_beneath(dir: &File, rel: &str) -> io::Result<File> {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for c in &comps {
        if !is_component(c) {
            return Err(bad_name(c));
        }
    }
    if comps.is_empty() {
        return dir.try_clone();
    }
    let joined = comps.join("/");
    match rustix::fs::openat2(
        dir.as_fd(),
        joined.as_str(),
        DIR_FLAGS,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => return Ok(File::from(fd)),
        // No openat2 (kernel < 5.6, seccomp, qemu-user): walk instead.
        Err(rustix::io::Errno::NOSYS)
        | Err(rustix::io::Errno::PERM)
        | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(e.into()),
    }
    walk(dir, &comps)
}

/// The fallback of [`open_dir_beneath`]: one `openat(O_NOFOLLOW |
/// O_DIRECTORY)` per (checked) component.
fn walk(dir: &File, comps: &[&str]) -> io::Result<File> {
    let mut cur: Option<File> = None;
    for c in comps {
        let base = cur.as_ref().unwrap_or(dir);
        let next = rustix::fs::openat(base.as_fd(), *c, DIR_FLAGS, Mode::empty())?;
        cur = Some(File::from(next));
    }
    match cur {
        Some(f) => Ok(f),
        None => dir.try_clone(),
    }
}

/// Opens the folder `name` in `dir`, creating it when missing (mode 0777
/// less the umask). Returns the handle and whether it was created (then
/// `dir` must be fsynced by the caller). A symlink or a non-folder under
/// that name is an error (`ELOOP` / `ENOTDIR`), never followed.
pub fn ensure_dir(dir: &File, name: &str) -> io::Result<(File, bool)> {
    if !is_component(name) {
        return Err(bad_name(name));
    }
    let created = match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o777)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let fd = rustix::fs::openat(dir.as_fd(), name, DIR_FLAGS, Mode::empty())?;
    Ok((File::from(fd), created))
}

/// Creates the new file `name` in `dir` for writing (`O_CREAT | O_EXCL |
/// O_NOFOLLOW`): an existing name, a symlink included, is `EEXIST`.
pub fn create_new(dir: &File, name: &str, mode: u32) -> io::Result<File> {
    if !is_component(name) {
        return Err(bad_name(name));
    }
    let fd = rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// What is found under an existing name.
#[derive(Debug)]
pub enum Existing {
    /// A regular file, opened read-only.
    File(File),
    /// Nothing.
    Missing,
    /// Something that is not a regular file (symlink, FIFO, socket, device,
    /// folder): never read, never followed.
    NotRegular(&'static str),
}

/// Opens the existing name `name` in `dir` for reading, without following
/// a symlink and without blocking on a FIFO (`O_NOFOLLOW | O_NONBLOCK`,
/// then `fstat`).
pub fn open_existing(dir: &File, name: &str) -> io::Result<Existing> {
    if !is_component(name) {
        return Err(bad_name(name));
    }
    let fd: OwnedFd = match rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(Existing::Missing),
        Err(rustix::io::Errno::LOOP) => return Ok(Existing::NotRegular("a symlink")),
        Err(rustix::io::Errno::NXIO) => return Ok(Existing::NotRegular("a socket or FIFO")),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Existing::File(File::from(fd)),
        FileType::Fifo => Existing::NotRegular("a FIFO"),
        FileType::Socket => Existing::NotRegular("a socket"),
        FileType::CharacterDevice | FileType::BlockDevice => Existing::NotRegular("a device"),
        FileType::Directory => Existing::NotRegular("a folder"),
        FileType::Symlink => Existing::NotRegular("a symlink"),
        FileType::Unknown => Existing::NotRegular("not a regular file"),
    })
}

/// Whether `name` exists in `dir` (any kind; a symlink is not followed).
pub fn exists_in(dir: &File, name: &str) -> io::Result<bool> {
    if !is_component(name) {
        return Err(bad_name(name));
    }
    match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Renames `from_dir/from` to `to_dir/to` without ever replacing `to`.
/// Returns `Ok(false)` when `to` already exists (`from` is left in place).
pub fn rename_noreplace_at(
    from_dir: &File,
    from: &str,
    to_dir: &File,
    to: &str,
) -> io::Result<bool> {
    if !is_component(from) {
        return Err(bad_name(from));
    }
    if !is_component(to) {
        return Err(bad_name(to));
    }
    match rustix::fs::renameat_with(
        from_dir.as_fd(),
        from,
        to_dir.as_fd(),
        to,
        RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            // File systems without RENAME_NOREPLACE: link(2) never replaces
            // (and, without AT_SYMLINK_FOLLOW, never follows).
            match rustix::fs::linkat(from_dir.as_fd(), from, to_dir.as_fd(), to, AtFlags::empty()) {
                Ok(()) => {
                    rustix::fs::unlinkat(from_dir.as_fd(), from, AtFlags::empty())?;
                    Ok(true)
                }
                Err(rustix::io::Errno::EXIST) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the file `name` from `dir` (never a folder, never through a link).
pub fn remove_in(dir: &File, name: &str) -> io::Result<()> {
    if !is_component(name) {
        return Err(bad_name(name));
    }
    rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty())?;
    Ok(())
}

/// The device and inode of a handle.
pub fn identity(f: &File) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(f)?;
    Ok((st.st_dev, st.st_ino))
}

/// The device and inode of `name` in `dir` (not following a symlink), or
/// None when it does not exist.
pub fn identity_at(dir: &File, name: &str) -> io::Result<Option<(u64, u64)>> {
    match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((st.st_dev, st.st_ino))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The names in a folder (not `.`/`..`), read through its handle. A listing
/// error is an error, never an empty folder.
pub fn list(dir: &File) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let d = rustix::fs::Dir::read_from(dir)?;
    for e in d {
        let e = e?;
        let Ok(n) = e.file_name().to_str() else {
            continue;
        };
        if n != "." && n != ".." {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Reads at most `max` bytes of a regular file `name` in `dir` (not
/// following links, not blocking). None when missing.
pub fn read_small(dir: &File, name: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    match open_existing(dir, name)? {
        Existing::Missing => Ok(None),
        Existing::NotRegular(what) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is {what}, not a regular file"),
        )),
        Existing::File(f) => {
            let mut buf = Vec::new();
            f.take(max as u64 + 1).read_to_end(&mut buf)?;
            if buf.len() > max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{name} is larger than {max} bytes"),
                ));
            }
            Ok(Some(buf))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openat2_and_the_walk_never_follow_a_link() {
        let d = std::env::temp_dir().join(format!("exportd-handle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("root/a/b")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        std::os::unix::fs::symlink(d.join("outside"), d.join("root/a/link")).unwrap();
        let root = open_root(&d.join("root")).unwrap();
        assert!(open_dir_beneath(&root, "a/b").is_ok());
        assert!(walk(&root, &["a", "b"]).is_ok());
        assert!(open_dir_beneath(&root, "a/link").is_err());
        assert!(walk(&root, &["a", "link"]).is_err());
        assert!(open_dir_beneath(&root, "a/../..").is_err());
        assert!(matches!(
            open_existing(&root, "a").unwrap(),
            Existing::NotRegular("a folder")
        ));
        let a = open_dir_beneath(&root, "a").unwrap();
        assert!(matches!(
            open_existing(&a, "link").unwrap(),
            Existing::NotRegular("a symlink")
        ));
        assert!(create_new(&a, "link", 0o600).is_err(), "O_EXCL on a link");
        assert!(ensure_dir(&a, "link").is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
