//! The streaming snapshot compiler: users are validated and written one at
//! a time; the extension index and the user ids are sorted externally
//! ([`super::extsort`]) and merged into the snapshot file, where extensions
//! assigned twice and user ids defined twice are found; the mail addresses
//! are sorted the same way into the mail index.
//!
//! The file written is byte for byte what [`crate::policy::snapshot::compile`]
//! builds in memory for the same model (same format, `EXSNAP03`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::extsort::{Duplicates, Entry, Sorter};
use super::{IntakeError, ModelHead, Problems, WorkDir};
use crate::policy::model::{User, validate_parts};
use crate::policy::snapshot::{
    FIXED, Header, MAGIC, UserRec, checked_extension, checked_policies, fnv1a, id_entry, mail_key,
};

/// What a compiled model holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// The model version.
    pub version: u64,
    /// Users.
    pub users: u64,
    /// Extensions.
    pub extensions: u64,
}

/// Takes a model's users one by one and writes its snapshot.
pub struct Compiler {
    work: WorkDir,
    version: u64,
    policy_ix: HashMap<String, u16>,
    header: Vec<u8>,
    blob: BufWriter<File>,
    blob_len: u64,
    offsets: BufWriter<File>,
    n_users: u32,
    exts: Sorter,
    ids: Sorter,
    mails: Sorter,
    n_mail: u32,
    problems: Problems,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IntakeError + 'a {
    move |source| IntakeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Compiler {
    /// Starts a compile: checks the head (targets, policies, admins) and
    /// creates a private work directory under `work_parent`.
    pub fn new(work_parent: &Path, head: &ModelHead) -> Result<Compiler, IntakeError> {
        let work = WorkDir::create(work_parent)?;
        let mut problems = Problems::default();
        for e in validate_parts(&head.targets, &head.policies, &[], head.admins.as_deref()) {
            problems.push(e.0);
        }
        let header = serde_json::to_vec(&Header {
            version: head.version,
            targets: head.targets.clone(),
            policies: head.policies.clone(),
            source: head.source.clone(),
        })
        .map_err(|e| IntakeError::Invalid {
            problems: vec![format!("header: {e}")],
            more: 0,
        })?;
        let policy_ix = head
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i as u16))
            .collect();
        let create = |name: &str| -> Result<BufWriter<File>, IntakeError> {
            let p = work.path().join(name);
            let f = File::create(&p).map_err(io_err("creating", &p))?;
            Ok(BufWriter::with_capacity(64 << 10, f))
        };
        let (blob, offsets) = (create("users.blob")?, create("users.off")?);
        Ok(Compiler {
            exts: Sorter::new(work.path(), "ext"),
            ids: Sorter::new(work.path(), "id"),
            mails: Sorter::new(work.path(), "mail"),
            n_mail: 0,
            version: head.version,
            work,
            policy_ix,
            header,
            blob,
            blob_len: 0,
            offsets,
            n_users: 0,
            problems,
        })
    }

    /// Users taken so far.
    pub fn users(&self) -> u64 {
        u64::from(self.n_users)
    }

    /// Validates one user and adds it (problems are kept for
    /// [`Compiler::finish`]; only I/O fails here).
    pub fn add_user(&mut self, u: &User) -> Result<(), IntakeError> {
        let dir = self.work.path().to_path_buf();
        let werr = |source| IntakeError::Io {
            what: "writing",
            path: dir.clone(),
            source,
        };
        let idx = self.n_users;
        // The id's own check comes with the policies' (checked_policies).
        let mut reported = Vec::new();
        let policies = checked_policies(u, |p| self.policy_ix.get(p).copied(), &mut |m| {
            reported.push(m)
        });
        self.ids
            .push(Entry {
                hash: fnv1a(u.id.as_bytes()),
                key: u.id.clone(),
                user: idx,
                owner: String::new(),
            })
            .map_err(werr)?;
        for m in reported {
            self.problems.push(m);
        }
        if let Some(m) = mail_key(&u.email) {
            // Sorted by hash, then user: the key is left empty.
            self.mails
                .push(Entry {
                    hash: fnv1a(m.as_bytes()),
                    key: String::new(),
                    user: idx,
                    owner: String::new(),
                })
                .map_err(werr)?;
            self.n_mail += 1;
        }
        let rec = UserRec {
            id: &u.id,
            name: &u.name,
            email: &u.email,
            policies,
        };
        let bytes = postcard::to_allocvec(&rec).map_err(|e| IntakeError::Invalid {
            problems: vec![format!("user {:?}: {e}", u.id)],
            more: 0,
        })?;
        let off = u32::try_from(self.blob_len).map_err(|_| too_large())?;
        self.offsets.write_all(&off.to_le_bytes()).map_err(werr)?;
        self.blob.write_all(&bytes).map_err(werr)?;
        self.blob_len += bytes.len() as u64;
        for x in &u.extensions {
            let problems = &mut self.problems;
            let Some(n) = checked_extension(u, x, &mut |m| problems.push(m)) else {
                continue;
            };
            self.exts
                .push(Entry {
                    hash: fnv1a(n.as_bytes()),
                    key: n,
                    user: idx,
                    owner: u.id.clone(),
                })
                .map_err(werr)?;
        }
        self.n_users = self.n_users.checked_add(1).ok_or_else(too_large)?;
        Ok(())
    }

    /// Ends the input: finds duplicates and writes the snapshot to `out`
    /// (created or truncated; the caller renames it into place). On any
    /// validation problem `out` is removed and every problem (up to a
    /// bound) is returned.
    pub fn finish(mut self, out: &Path) -> Result<Stats, IntakeError> {
        let dir = self.work.path().to_path_buf();
        let werr = io_err("writing", &dir);
        self.blob.flush().map_err(werr)?;
        self.offsets.flush().map_err(io_err("writing", &dir))?;
        let mut dups = Duplicates::new();
        // The id index, in the sorted order of the ids, while duplicates
        // are looked for; then the mail index.
        let ids = std::mem::replace(&mut self.ids, Sorter::new(&dir, "none"));
        let problems = &mut self.problems;
        write_index(ids, &dir, "users.ids", |e| {
            if dups.check(e).is_some() && !e.key.is_empty() {
                problems.push(format!("user id {:?} is defined twice", e.key));
            }
        })?;
        let mails = std::mem::replace(&mut self.mails, Sorter::new(&dir, "none"));
        write_index(mails, &dir, "users.mails", |_| {})?;
        let stats = Stats {
            version: self.version,
            users: u64::from(self.n_users),
            extensions: self.exts.len(),
        };
        let res = self.write_snapshot(out);
        if res.is_err() || !self.problems.is_empty() {
            let _ = std::fs::remove_file(out);
        }
        res?;
        if !self.problems.is_empty() {
            return Err(self.problems.into_error());
        }
        Ok(stats)
    }

    fn write_snapshot(&mut self, out: &Path) -> Result<(), IntakeError> {
        let oerr = |source| IntakeError::Io {
            what: "writing",
            path: out.to_path_buf(),
            source,
        };
        let n_ext = u32::try_from(self.exts.len()).map_err(|_| too_large())?;
        let f = File::create(out).map_err(oerr)?;
        let mut w = BufWriter::with_capacity(64 << 10, f);
        let mut fixed = Vec::with_capacity(FIXED);
        fixed.extend_from_slice(MAGIC);
        fixed.extend_from_slice(&(self.header.len() as u32).to_le_bytes());
        fixed.extend_from_slice(&n_ext.to_le_bytes());
        fixed.extend_from_slice(&self.n_users.to_le_bytes());
        fixed.extend_from_slice(&[0u8; 4]);
        fixed.extend_from_slice(&self.n_mail.to_le_bytes());
        w.write_all(&fixed).map_err(oerr)?;
        let mut w = CrcWriter::new(w);
        w.write_all(&self.header).map_err(oerr)?;
        let pad = (FIXED + self.header.len()).div_ceil(4) * 4 - (FIXED + self.header.len());
        w.write_all(&[0u8; 4][..pad]).map_err(oerr)?;
        let strs_path = self.work.path().join("ext.strs");
        self.write_index(&mut w, &strs_path)?;
        for name in ["users.off", "users.ids", "users.mails", "users.blob"] {
            let p = self.work.path().join(name);
            let mut r = File::open(&p).map_err(io_err("reading", &p))?;
            io::copy(&mut r, &mut w).map_err(oerr)?;
        }
        let mut r = File::open(&strs_path).map_err(io_err("reading", &strs_path))?;
        io::copy(&mut r, &mut w).map_err(oerr)?;
        let (w, crc) = w.into_parts();
        let f = w.into_inner().map_err(|e| oerr(e.into_error()))?;
        use std::os::unix::fs::FileExt;
        f.write_all_at(&crc.to_le_bytes(), 20).map_err(oerr)?;
        f.sync_all().map_err(oerr)
    }

    /// Merges the extension runs: writes the index entries to `w` and the
    /// extension strings to `strs_path`; records extensions assigned twice.
    fn write_index(&mut self, w: &mut impl Write, strs_path: &Path) -> Result<(), IntakeError> {
        let serr = io_err("writing", strs_path);
        let mut strs = BufWriter::with_capacity(
            64 << 10,
            File::create(strs_path).map_err(io_err("creating", strs_path))?,
        );
        let exts = std::mem::replace(&mut self.exts, Sorter::new(self.work.path(), "none"));
        let dir = self.work.path().to_path_buf();
        let mut strs_len = 0u64;
        let mut dups = Duplicates::new();
        let mut entry = [0u8; 16];
        for e in exts.finish().map_err(io_err("sorting in", &dir))? {
            let e = e.map_err(io_err("sorting in", &dir))?;
            if let Some(first) = dups.check(&e) {
                self.problems.push(if first.user == e.user {
                    format!("user {:?} lists extension {:?} twice", e.owner, e.key)
                } else {
                    format!(
                        "extension {:?} (normalised) is assigned to both {:?} and {:?}",
                        e.key, first.owner, e.owner
                    )
                });
            }
            let off = u32::try_from(self.blob_len + strs_len).map_err(|_| too_large())?;
            entry[..8].copy_from_slice(&e.hash.to_le_bytes());
            entry[8..12].copy_from_slice(&e.user.to_le_bytes());
            entry[12..].copy_from_slice(&off.to_le_bytes());
            w.write_all(&entry).map_err(io_err("writing", &dir))?;
            let bytes =
                postcard::to_allocvec(e.key.as_str()).map_err(|x| IntakeError::Invalid {
                    problems: vec![format!("extension {:?}: {x}", e.key)],
                    more: 0,
                })?;
            strs.write_all(&bytes)
                .map_err(io_err("writing", strs_path))?;
            strs_len += bytes.len() as u64;
        }
        strs.flush().map_err(serr)
    }
}

/// Writes the sorted entries of `sorter` as `[u64 hash][u32 user]` index
/// entries to `dir/name`, showing each to `check` first.
fn write_index(
    sorter: Sorter,
    dir: &Path,
    name: &str,
    mut check: impl FnMut(&Entry),
) -> Result<(), IntakeError> {
    let path = dir.join(name);
    let mut index = BufWriter::with_capacity(
        64 << 10,
        File::create(&path).map_err(io_err("creating", &path))?,
    );
    for e in sorter.finish().map_err(io_err("sorting in", dir))? {
        let e = e.map_err(io_err("sorting in", dir))?;
        check(&e);
        index
            .write_all(&id_entry(e.hash, e.user))
            .map_err(io_err("writing", &path))?;
    }
    index.flush().map_err(io_err("writing", &path))
}

fn too_large() -> IntakeError {
    IntakeError::Invalid {
        problems: vec!["model too large for a snapshot (more than 4 GiB of user records)".into()],
        more: 0,
    }
}

/// A writer computing the CRC-32 of what passes through.
pub(super) struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }

    pub(super) fn into_parts(self) -> (W, u32) {
        (self.inner, self.crc.finalize())
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `path`'s snapshot through `<path>.tmp` and renames it into place
/// (fsync of the directory after).
pub fn install(tmp: &Path, path: &Path) -> Result<(), IntakeError> {
    std::fs::rename(tmp, path).map_err(io_err("renaming into", path))?;
    if let Some(d) = path.parent() {
        crate::sink::fs::sync_dir(d).map_err(io_err("syncing", d))?;
    }
    Ok(())
}

/// The temp path a snapshot is compiled to before [`install`].
pub fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}
