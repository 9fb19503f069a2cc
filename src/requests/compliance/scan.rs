//! Reading the spool for an export: metadata files, content paths, users;
//! never follows a symlink and never writes.
//!
//! Walking the spool roots, reading metadata through the caller's opener,
//! and matching records to configured users.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::policy::model::{User, normalize_extension};
use crate::record::{self, Participant, Record};

/// Opens spool files and returns their plaintext, decrypting `.age` files
/// with the agent's key store when the implementation can.
pub trait SpoolOpener {
    /// Opens `path` (never following a symlink) and returns the plaintext.
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>>;
}

/// Opens plaintext files only; `.age` files are refused with a clear error.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainOpener;

impl SpoolOpener for PlainOpener {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn Read + '_>> {
        if path.extension().is_some_and(|e| e == "age") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "encrypted (.age) file needs the key store's opener",
            ));
        }
        use std::os::unix::fs::OpenOptionsExt;
        // O_NOFOLLOW: a symlink is refused (ELOOP); O_NONBLOCK: a FIFO never
        // blocks the open, and anything but a regular file is refused.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "symlinks are not followed in the spool",
                    )
                } else {
                    e
                }
            })?;
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file (FIFO, socket, device or folder): refused",
            ));
        }
        Ok(Box::new(f))
    }
}

/// Reads all of `r`, failing when it is longer than `cap` bytes.
pub(crate) fn read_capped(mut r: impl Read, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.by_ref().take(cap + 1).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file is over the {cap}-byte limit"),
        ));
    }
    Ok(out)
}

/// Whether a directory entry name is one the recorder is still writing.
fn ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp")
}

/// Whether a file name is a metadata XML (`*.xml`, `*.xml.age`).
fn is_metadata(name: &str) -> bool {
    name.ends_with(".xml") || name.ends_with(".xml.age")
}

const MAX_WALK_DEPTH: usize = 64;

/// Lists the metadata XML files under `root` (sorted, no symlinks followed,
/// temp names skipped). Unreadable folders are reported in `problems`.
pub(crate) fn metadata_files(root: &Path, problems: &mut Vec<(PathBuf, String)>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                problems.push((dir, format!("cannot list folder: {e}")));
                continue;
            }
        };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for ent in entries.into_iter().rev() {
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if ignored_name(name) {
                continue;
            }
            let Ok(ft) = ent.file_type() else { continue };
            if ft.is_symlink() {
                continue;
            }
            if ft.is_dir() {
                if depth + 1 < MAX_WALK_DEPTH {
                    stack.push((ent.path(), depth + 1));
                } else {
                    problems.push((ent.path(), "folder nesting too deep; skipped".into()));
                }
            } else if ft.is_file() && is_metadata(name) {
                out.push(ent.path());
            }
        }
    }
    out.sort();
    out
}

/// Joins a checked relative `<files>` path to the XML's folder, refusing any
/// component that is a symlink (nothing may lead out of the spool root).
pub(crate) fn content_path(dir: &Path, rel: &str) -> std::io::Result<PathBuf> {
    record::check_relative_path(rel)
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
    let mut p = dir.to_path_buf();
    for c in rel.split('/') {
        p.push(c);
        let m = std::fs::symlink_metadata(&p)?;
        if m.file_type().is_symlink() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is a symlink; not followed", p.display()),
            ));
        }
    }
    Ok(p)
}

/// Reads and parses one metadata XML through the opener.
pub(crate) fn load_record(opener: &dyn SpoolOpener, path: &Path) -> Result<Record, String> {
    let r = opener.open(path).map_err(|e| format!("cannot open: {e}"))?;
    let bytes =
        read_capped(r, record::MAX_XML_BYTES as u64).map_err(|e| format!("cannot read: {e}"))?;
    record::parse(&bytes).map_err(|e| e.to_string())
}

/// The configured users (the company), asked about one key at a time: the
/// snapshot in force answers from its mapped indexes (nothing per user held
/// in memory); a list answers by a walk (small models, tests).
pub trait Directory: Sync {
    /// Whether a configured user that `key` names passes `pick` (given the
    /// user's id): the user with this id (`key` trimmed), the user holding
    /// it as a recorded extension, the users with it as mail address (both
    /// after normalisation). Empty keys name nobody.
    fn any_named(&self, key: &str, pick: &mut dyn FnMut(&str) -> bool) -> bool;

    /// The configured mail address of the user a participant is: by its id,
    /// else by its address as an extension or a mail address.
    fn mail_of(&self, id: &str, address: &str) -> Option<String>;

    /// Whether a user with this id is configured.
    fn has_id(&self, id: &str) -> bool;
}

impl Directory for crate::policy::snapshot::Snapshot {
    fn any_named(&self, key: &str, pick: &mut dyn FnMut(&str) -> bool) -> bool {
        if key.trim().is_empty() {
            return false;
        }
        let by_id = self.user_by_id(key.trim()).is_some_and(|u| pick(u.id));
        let r = by_id
            || self.lookup(key).is_some_and(|u| pick(u.id))
            || self.users_by_mail(key, &mut |u| pick(u.id));
        self.release_pages();
        r
    }

    fn mail_of(&self, id: &str, address: &str) -> Option<String> {
        let mut mail = self.user_by_id(id).map(|u| u.email.to_string());
        if mail.is_none() && !address.trim().is_empty() {
            mail = self.lookup(address).map(|u| u.email.to_string());
            if mail.is_none() {
                self.users_by_mail(address, &mut |u| {
                    mail = Some(u.email.to_string());
                    true
                });
            }
        }
        self.release_pages();
        mail.filter(|m| !m.is_empty())
    }

    fn has_id(&self, id: &str) -> bool {
        let r = self.user_by_id(id).is_some();
        self.release_pages();
        r
    }
}

impl Directory for Vec<User> {
    fn any_named(&self, key: &str, pick: &mut dyn FnMut(&str) -> bool) -> bool {
        if key.trim().is_empty() {
            return false;
        }
        let n = normalize_extension(key);
        self.iter()
            .filter(|u| {
                u.id == key.trim()
                    || (!n.is_empty()
                        && (normalize_extension(&u.email) == n
                            || u.extensions.iter().any(|e| normalize_extension(e) == n)))
            })
            .any(|u| pick(&u.id))
    }

    fn mail_of(&self, id: &str, address: &str) -> Option<String> {
        let n = normalize_extension(address);
        self.iter()
            .find(|u| u.id == id)
            .or_else(|| {
                (!n.is_empty()).then(|| {
                    self.iter()
                        .find(|u| u.extensions.iter().any(|e| normalize_extension(e) == n))
                        .or_else(|| self.iter().find(|u| normalize_extension(&u.email) == n))
                })?
            })
            .map(|u| u.email.clone())
            .filter(|m| !m.is_empty())
    }

    fn has_id(&self, id: &str) -> bool {
        self.iter().any(|u| u.id == id)
    }
}

/// Some of the configured users (those a request names), or all of them.
pub(crate) struct Users<'a> {
    dir: &'a dyn Directory,
    only: Option<HashSet<&'a str>>,
}

impl<'a> Users<'a> {
    /// Every configured user (the company).
    pub(crate) fn all(dir: &'a dyn Directory) -> Users<'a> {
        Users { dir, only: None }
    }

    /// The users with these ids (all of them configured).
    pub(crate) fn only(dir: &'a dyn Directory, ids: &'a [String]) -> Users<'a> {
        Users {
            dir,
            only: Some(ids.iter().map(String::as_str).collect()),
        }
    }

    /// Whether a recorded extension, address or id is one of the users'.
    pub(crate) fn by_key(&self, raw: &str) -> bool {
        let only = &self.only;
        self.dir
            .any_named(raw, &mut |id| only.as_ref().is_none_or(|s| s.contains(id)))
    }

    /// Whether a participant is one of the users, by id, then address.
    pub(crate) fn participant(&self, p: &Participant) -> bool {
        self.by_key(&p.id) || self.by_key(&p.address)
    }

    /// Whether the record belongs to one of the users: its recorded extension,
    /// or any of its participants.
    pub(crate) fn record(&self, r: &Record) -> bool {
        self.by_key(&r.recorded_extension) || r.participants.iter().any(|p| self.participant(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_opener_refuses_fifos_and_symlinks_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("chat.im");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // A real FIFO (mkfifo).
        rustix::fs::mknodat(
            rustix::fs::CWD,
            c.as_c_str(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Would block for ever in open(2) without O_NONBLOCK.
        let e = PlainOpener.open(&fifo).err().expect("a FIFO is refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");

        let real = d.path().join("real.im");
        std::fs::write(&real, b"<transcript/>").unwrap();
        let link = d.path().join("link.im");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = PlainOpener.open(&link).err().expect("a symlink is refused");
        assert!(e.to_string().contains("symlinks"), "{e}");

        let mut s = String::new();
        PlainOpener
            .open(&real)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "<transcript/>");
    }
}
