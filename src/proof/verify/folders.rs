//! The folder side of `archive verify`, for one target: merges the sorted
//! `export` rows with the sorted walk of the target's record folders and
//! re-hashes every file (fixed-size buffer) into the folder's `sha256sum`
//! listing hash. Reads only; holds one folder and its rows at a time.

use std::cmp::Ordering;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::archive::{Archive, Folder, Walk, key_cmp};
use super::report::{Kind, Report};
use super::sorter::{RowRef, Sorted};
use crate::ledger::audit::folder_digest;

/// The read buffer of the re-hash.
const BUF: usize = 1 << 20;

/// What the hash of a folder found.
struct Found {
    sha256: String,
    n_files: u64,
    bytes: u64,
}

/// Rows grouped by folder, in order.
struct Groups {
    rows: std::iter::Peekable<Sorted>,
}

impl Groups {
    fn next(&mut self) -> io::Result<Option<Vec<RowRef>>> {
        let Some(first) = self.rows.next() else {
            return Ok(None);
        };
        let first = first?;
        let mut g = vec![first];
        while let Some(Ok(r)) = self.rows.peek() {
            if r.folder != g[0].folder {
                break;
            }
            if let Some(r) = self.rows.next() {
                g.push(r?);
            }
        }
        Ok(Some(g))
    }
}

/// Runs the merge. `extras`: report folders without a row (off when only
/// some days are checked).
pub fn run(archive: &dyn Archive, rows: Sorted, extras: bool, rep: &mut Report) -> io::Result<()> {
    let mut groups = Groups {
        rows: rows.peekable(),
    };
    let mut walk = Walk::new(archive);
    let mut g = groups.next()?;
    let mut f = walk.next().transpose()?;
    let mut buf = vec![0u8; BUF];
    loop {
        let ord = match (&g, &f) {
            (None, None) => return Ok(()),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(g), Some(f)) => key_cmp(&g[0].folder, &f.path),
        };
        match ord {
            Ordering::Less => {
                if let Some(g) = &g {
                    let at = g.last().map(|r| r.at.as_str()).unwrap_or("");
                    rep.problem(
                        Kind::Missing,
                        &g[0].folder,
                        &format!("no record folder for the export row at {at}"),
                    );
                }
                g = groups.next()?;
            }
            Ordering::Greater => {
                if let Some(f) = &f {
                    rep.counts.folders += 1;
                    if extras {
                        rep.problem(
                            Kind::Extra,
                            &f.path,
                            &format!(
                                "{} files, and no export row names this folder",
                                f.files.len()
                            ),
                        );
                    }
                }
                f = walk.next().transpose()?;
            }
            Ordering::Equal => {
                if let (Some(g), Some(f)) = (&g, &f) {
                    rep.counts.folders += 1;
                    check(archive, f, g, &mut buf, rep)?;
                }
                g = groups.next()?;
                f = walk.next().transpose()?;
            }
        }
        rep.tick();
    }
}

/// One folder against its rows.
fn check(
    archive: &dyn Archive,
    f: &Folder,
    rows: &[RowRef],
    buf: &mut [u8],
    rep: &mut Report,
) -> io::Result<()> {
    let found = hash_folder(archive, f, buf, rep)?;
    let matched = rows
        .iter()
        .any(|r| r.sha256 == found.sha256 && r.n_files == found.n_files && r.bytes == found.bytes);
    if !matched {
        let r = rows.last().unwrap_or(&rows[0]);
        let mut why = Vec::new();
        if r.n_files != found.n_files {
            why.push(format!("{} files (row: {})", found.n_files, r.n_files));
        }
        if r.bytes != found.bytes {
            why.push(format!("{} bytes (row: {})", found.bytes, r.bytes));
        }
        if r.sha256 != found.sha256 {
            why.push("the files' sha256 listing differs".to_string());
        }
        rep.problem(
            Kind::Altered,
            &f.path,
            &format!("{}; export row at {}", why.join(", "), r.at),
        );
    }
    let has_xml = rows.iter().any(|r| {
        let x = format!("{}.xml", r.id);
        let xa = format!("{}.xml.age", r.id);
        f.files.iter().any(|(n, _)| *n == x || *n == xa)
    });
    if !has_xml {
        let id = rows.last().map(|r| r.id.as_str()).unwrap_or("");
        rep.problem(
            Kind::Incomplete,
            &f.path,
            &format!("no metadata XML ({id}.xml or {id}.xml.age)"),
        );
    }
    Ok(())
}

/// Re-hashes a folder's files into its listing hash.
fn hash_folder(
    archive: &dyn Archive,
    f: &Folder,
    buf: &mut [u8],
    rep: &mut Report,
) -> io::Result<Found> {
    let mut files = Vec::with_capacity(f.files.len());
    let mut bytes = 0u64;
    for (name, _) in &f.files {
        let mut rd = archive.open(&format!("{}/{name}", f.path))?;
        let mut h = Sha256::new();
        loop {
            let n = match rd.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            bytes += n as u64;
            rep.counts.bytes += n as u64;
        }
        rep.counts.files += 1;
        files.push((name.clone(), h.finalize().into()));
        rep.tick();
    }
    let (_, sha256) = folder_digest(&mut files);
    Ok(Found {
        sha256,
        n_files: files.len() as u64,
        bytes,
    })
}
