//! The journal's storage edge: appends, cuts and replaces bytes; never
//! decodes a frame, and never appends behind a partial one.
//!
//! A file ([`FileStore`]) or memory ([`MemStore`], for tests).
//!
//! Invariant: after an append returns an error, the store holds exactly
//! what it held before that append (a failed or short write is cut back to
//! the length before it), or it is poisoned; a poisoned store refuses every
//! append until [`JournalStore::replace`] succeeds (new file, fsync, rename,
//! folder fsync). A failed fdatasync poisons it the same way. So no frame is
//! ever appended behind a partial one.
//!
//! [`FileStore`] cuts a failed append back itself (to its own record of
//! the length, without a sync) instead of through `GroupSync::append`, and
//! counts appends with `GroupSync::note_written`: its recovery from a
//! failed sync is a rewrite from the index (poison, then `replace`), not a
//! cut back to the durable length, so its `GroupSync` needs no lengths.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::ledger::group_sync::{GroupSync, Pending};

/// The journal's storage edge.
pub trait JournalStore {
    /// A reader over everything stored (empty when nothing is), from the start.
    fn reader(&mut self) -> io::Result<Box<dyn Read + '_>>;
    /// Cuts the store to `len` bytes (drops a torn tail) and makes it durable.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Appends and makes durable. A failed or short append leaves the store
    /// as it was before, or poisoned.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Atomically replaces everything with what `fill` writes; a success
    /// clears the poison.
    fn replace(&mut self, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>)
    -> io::Result<()>;
    /// Writes without waiting for durability; the returned [`Pending`]
    /// makes it durable (group commit). Stores that cannot defer append
    /// durably and return `None`.
    fn append_deferred(&mut self, bytes: &[u8]) -> io::Result<Option<Pending>> {
        self.append(bytes).map(|()| None)
    }
    /// Why appends are refused until the store is rewritten, if they are.
    fn poisoned(&self) -> Option<&str>;
    /// Refuses appends until the store is rewritten (after a failed sync).
    fn poison(&mut self, why: String);
    /// Keeps damaged bytes found at `offset` for inspection; returns where.
    fn save_damaged(&mut self, _offset: u64, _bytes: &[u8]) -> io::Result<Option<PathBuf>> {
        Ok(None)
    }
    /// A name for messages.
    fn describe(&self) -> String;
}

/// A [`JournalStore`] in a file.
pub struct FileStore {
    path: PathBuf,
    file: Option<(Arc<File>, Arc<GroupSync>)>,
    /// Length of the file as far as this store wrote it (appends are cut
    /// back to it after a failure).
    len: Option<u64>,
    poisoned: Option<String>,
}

impl FileStore {
    /// A store at `path` (created on first append).
    pub fn new(path: PathBuf) -> FileStore {
        FileStore {
            path,
            file: None,
            len: None,
            poisoned: None,
        }
    }

    fn tmp_path(&self) -> PathBuf {
        self.path.with_extension("log.tmp")
    }

    fn file(&mut self) -> io::Result<(Arc<File>, Arc<GroupSync>, u64)> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let len = f.metadata()?.len();
            self.len = Some(len);
            self.file = Some((Arc::new(f), GroupSync::new()));
        }
        match (&self.file, self.len) {
            (Some((f, g)), Some(len)) => Ok((f.clone(), g.clone(), len)),
            _ => Err(io::Error::other("journal not open")),
        }
    }
}

impl JournalStore for FileStore {
    fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        match File::open(&self.path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(io::empty())),
            Err(e) => Err(e),
        }
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(&self.path)?;
        f.set_len(len)?;
        f.sync_all()?;
        self.file = None;
        self.len = None;
        Ok(())
    }
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.append_deferred(bytes)? {
            Some(p) => p.wait().inspect_err(|e| {
                self.poison(format!("fdatasync failed: {e}"));
            }),
            None => Ok(()),
        }
    }
    fn append_deferred(&mut self, bytes: &[u8]) -> io::Result<Option<Pending>> {
        if let Some(why) = &self.poisoned {
            return Err(io::Error::other(format!(
                "journal {} refuses appends until rewritten: {why}",
                self.path.display()
            )));
        }
        let (f, g, len) = self.file()?;
        if let Err(e) = (&*f).write_all(bytes) {
            // A short write leaves part of a frame: later frames would land
            // behind it. Cut back to where this append started.
            return Err(match f.set_len(len) {
                Ok(()) => io::Error::new(
                    e.kind(),
                    format!(
                        "appending to journal {} failed ({e}); cut back to {len} bytes",
                        self.path.display()
                    ),
                ),
                Err(t) => {
                    let why = format!(
                        "an append failed ({e}) and cutting it back to {len} bytes failed ({t})"
                    );
                    self.poisoned = Some(why.clone());
                    io::Error::new(e.kind(), format!("journal {}: {why}", self.path.display()))
                }
            });
        }
        self.len = Some(len + bytes.len() as u64);
        let seq = g.note_written();
        Ok(Some(Pending::new(f, g, seq)))
    }
    fn replace(
        &mut self,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let tmp = self.tmp_path();
        let r = (|| {
            let f = File::create(&tmp)?;
            let mut w = io::BufWriter::with_capacity(64 << 10, f);
            fill(&mut w)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(io::Error::new(
                e.kind(),
                format!("writing {} failed: {e}", tmp.display()),
            ));
        }
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(io::Error::new(
                e.kind(),
                format!("renaming {} failed: {e}", tmp.display()),
            ));
        }
        // From here the name holds the new file: never append to the old one.
        self.file = None;
        self.len = None;
        if let Some(dir) = self.path.parent() {
            if let Err(e) = crate::sink::fs::sync_dir(dir) {
                // The rename may not survive a power cut: rewrite again
                // before the next append.
                self.poisoned = Some(format!("fsync of {} failed: {e}", dir.display()));
                return Err(e);
            }
        }
        self.poisoned = None;
        Ok(())
    }
    fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }
    fn poison(&mut self, why: String) {
        self.poisoned = Some(why);
    }
    fn save_damaged(&mut self, offset: u64, bytes: &[u8]) -> io::Result<Option<PathBuf>> {
        let p = self.path.with_extension(format!("log.damaged-{offset}"));
        let mut f = File::create(&p)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(Some(p))
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A [`JournalStore`] in memory, for tests.
#[derive(Default, Clone)]
pub struct MemStore {
    /// The bytes "on disk".
    pub bytes: Vec<u8>,
    /// Appends fail after this many more bytes (a full disk), when set.
    pub space: Option<usize>,
    /// A failed append cannot be cut back.
    pub fail_truncate: bool,
    /// Poison, as [`FileStore`].
    pub poisoned: Option<String>,
    /// Damaged regions saved.
    pub damaged: Vec<(u64, Vec<u8>)>,
}

impl JournalStore for MemStore {
    fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(&self.bytes[..]))
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.bytes.truncate(len as usize);
        Ok(())
    }
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(io::Error::other(why.clone()));
        }
        let before = self.bytes.len();
        match self.space {
            Some(n) if n < bytes.len() => {
                self.bytes.extend_from_slice(&bytes[..n]);
                self.space = Some(0);
                if self.fail_truncate {
                    self.poisoned = Some("cut-back failed".into());
                } else {
                    self.bytes.truncate(before);
                }
                Err(io::Error::from_raw_os_error(28))
            }
            _ => {
                self.bytes.extend_from_slice(bytes);
                self.space = self.space.map(|n| n - bytes.len());
                Ok(())
            }
        }
    }
    fn replace(
        &mut self,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut v = Vec::new();
        fill(&mut v)?;
        self.bytes = v;
        self.poisoned = None;
        Ok(())
    }
    fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }
    fn poison(&mut self, why: String) {
        self.poisoned = Some(why);
    }
    fn save_damaged(&mut self, offset: u64, bytes: &[u8]) -> io::Result<Option<PathBuf>> {
        self.damaged.push((offset, bytes.to_vec()));
        Ok(None)
    }
    fn describe(&self) -> String {
        "memory journal".into()
    }
}
