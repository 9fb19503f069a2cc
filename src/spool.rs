//! Reading the recorder's spool (spool.md), read-only: naming rules, the
//! recursive scan, and safe opening of listed files (never following a
//! symlink out of the root, `O_NOATIME` where permitted).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::journal::{PathKey, path_key};

/// Deepest folder nesting scanned below a root.
pub const MAX_DEPTH: usize = 32;

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
    /// Stats `path` below `root`; `None` if it is not a regular file (or is gone).
    pub fn stat(root: &Path, path: &Path) -> Option<XmlRef> {
        let m = fs::symlink_metadata(path).ok()?;
        if !m.file_type().is_file() {
            return None;
        }
        let rel = path.strip_prefix(root).ok()?.to_str()?.to_string();
        Some(XmlRef {
            key: path_key(root, &rel),
            root: root.to_path_buf(),
            rel,
            path: path.to_path_buf(),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
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

/// Walks `root` without following symlinks; calls `on_dir` for every folder
/// (root included) and `on_xml` for every metadata XML. Unreadable folders
/// are reported through `on_error` and skipped.
pub fn scan(
    root: &Path,
    on_dir: &mut dyn FnMut(&Path),
    on_xml: &mut dyn FnMut(XmlRef),
    on_error: &mut dyn FnMut(&Path, io::Error),
) {
    scan_from(root, root, on_dir, on_xml, &mut |_| {}, on_error)
}

/// Like [`scan`], starting at `start` (a folder below `root`), for a folder
/// that just appeared.
pub fn scan_below(
    root: &Path,
    start: &Path,
    on_dir: &mut dyn FnMut(&Path),
    on_xml: &mut dyn FnMut(XmlRef),
    on_file: &mut dyn FnMut(&Path),
) {
    scan_from(root, start, on_dir, on_xml, on_file, &mut |_, _| {})
}

fn scan_from(
    root: &Path,
    start: &Path,
    on_dir: &mut dyn FnMut(&Path),
    on_xml: &mut dyn FnMut(XmlRef),
    on_file: &mut dyn FnMut(&Path),
    on_error: &mut dyn FnMut(&Path, io::Error),
) {
    let depth0 = start
        .strip_prefix(root)
        .map(|r| r.components().count())
        .unwrap_or(0);
    let mut stack: Vec<(PathBuf, usize)> = vec![(start.to_path_buf(), depth0)];
    while let Some((dir, depth)) = stack.pop() {
        on_dir(&dir);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                on_error(&dir, e);
                continue;
            }
        };
        let mut entries: Vec<(String, fs::FileType)> = Vec::new();
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if let Ok(name) = e.file_name().into_string() {
                entries.push((name, ft));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ft) in entries {
            let p = dir.join(&name);
            if ft.is_dir() {
                if depth + 1 < MAX_DEPTH && !name.starts_with('.') {
                    stack.push((p, depth + 1));
                }
            } else if ft.is_file() && !is_metadata_name(&name) && !is_temp_name(&name) {
                on_file(&p);
            } else if ft.is_file() && is_metadata_name(&name) {
                if let Some(x) = XmlRef::stat(root, &p) {
                    on_xml(x);
                }
            }
        }
    }
}

/// Why a spool file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not there (yet, or any more).
    #[error("{0} is missing")]
    Missing(PathBuf),
    /// Resolves outside the spool root (a symlink out) or is not a regular file.
    #[error("{path} is refused: {why}")]
    Refused {
        /// The path.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// Another I/O error.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Opens a spool file read-only, refusing anything that resolves outside
/// `root` (canonical) or is not a regular file.
pub fn open_in_root(root_canonical: &Path, path: &Path) -> Result<File, OpenError> {
    let canon = match fs::canonicalize(path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling symlink is refused rather than waited for.
            if fs::symlink_metadata(path).is_ok() {
                return Err(OpenError::Refused {
                    path: path.to_path_buf(),
                    why: "a symlink that points nowhere",
                });
            }
            // Not there yet, unless the path already leads out of the root
            // (through a symlinked folder): then it is refused, not waited for.
            let mut dir = path.parent();
            while let Some(d) = dir {
                if let Ok(c) = fs::canonicalize(d) {
                    if !c.starts_with(root_canonical) {
                        return Err(OpenError::Refused {
                            path: path.to_path_buf(),
                            why: "it resolves outside the spool root (symlink); it is never followed",
                        });
                    }
                    break;
                }
                if fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(OpenError::Refused {
                        path: path.to_path_buf(),
                        why: "a symlinked folder in its path points nowhere",
                    });
                }
                dir = d.parent();
            }
            return Err(OpenError::Missing(path.to_path_buf()));
        }
        Err(source) => {
            return Err(OpenError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !canon.starts_with(root_canonical) {
        return Err(OpenError::Refused {
            path: path.to_path_buf(),
            why: "it resolves outside the spool root (symlink); it is never followed",
        });
    }
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let noatime = rustix::fs::OFlags::NOATIME.bits() as i32;
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&canon)
    };
    let f = match open(nofollow | noatime) {
        // O_NOATIME is only permitted to the file's owner.
        Err(e) if e.raw_os_error() == Some(1) => open(nofollow),
        other => other,
    };
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OpenError::Missing(path.to_path_buf()));
        }
        Err(source) => {
            return Err(OpenError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let m = f.metadata().map_err(|source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !m.is_file() {
        return Err(OpenError::Refused {
            path: path.to_path_buf(),
            why: "not a regular file",
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_metadata_name("a.xml"));
        assert!(is_metadata_name("a.xml.age"));
        assert!(!is_metadata_name(".a.xml"));
        assert!(!is_metadata_name("a.xml.tmp"));
        assert!(!is_metadata_name("a.wav"));
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let d = std::env::temp_dir().join(format!("exportd-spool-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("root/sub")).unwrap();
        fs::write(d.join("outside"), b"secret").unwrap();
        fs::write(d.join("root/sub/in.wav"), b"ok").unwrap();
        std::os::unix::fs::symlink(d.join("outside"), d.join("root/sub/evil.wav")).unwrap();
        std::os::unix::fs::symlink(d.join("root/sub/in.wav"), d.join("root/sub/alias.wav"))
            .unwrap();
        let root = fs::canonicalize(d.join("root")).unwrap();
        assert!(matches!(
            open_in_root(&root, &d.join("root/sub/evil.wav")),
            Err(OpenError::Refused { .. })
        ));
        assert!(open_in_root(&root, &d.join("root/sub/alias.wav")).is_ok());
        assert!(matches!(
            open_in_root(&root, &d.join("root/sub/none.wav")),
            Err(OpenError::Missing(_))
        ));
        // Through a symlinked folder leading out, even to a file that does not exist.
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("root/sub/out")).unwrap();
        fs::create_dir_all(d.join("elsewhere")).unwrap();
        assert!(matches!(
            open_in_root(&root, &d.join("root/sub/out/nothing.wav")),
            Err(OpenError::Refused { .. })
        ));
        std::os::unix::fs::symlink(d.join("gone"), d.join("root/sub/dangling")).unwrap();
        assert!(matches!(
            open_in_root(&root, &d.join("root/sub/dangling/x.wav")),
            Err(OpenError::Refused { .. })
        ));
        assert!(matches!(
            open_in_root(&root, &d.join("root/sub")),
            Err(OpenError::Refused { .. })
        ));
        let mut found = Vec::new();
        fs::write(d.join("root/sub/r.xml"), b"<recording/>").unwrap();
        scan(
            &root,
            &mut |_| {},
            &mut |x| found.push(x.rel),
            &mut |_, _| {},
        );
        assert_eq!(found, vec!["sub/r.xml".to_string()]);
        let _ = fs::remove_dir_all(&d);
    }
}
