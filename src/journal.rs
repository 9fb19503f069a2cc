//! The export journal: which record versions are finished, and which copies
//! of unfinished ones are already durable at their target.
//!
//! On disk: `<state_dir>/journal.log`, a sequence of frames
//! `[len: u32 LE][postcard entry][crc32 LE]`, appended and fdatasynced. A torn
//! last frame (crash mid-append) fails its CRC and is cut off on open.
//! Compaction rewrites the live entries into a new file and renames it over
//! the old one. Frame encoding/decoding ([`encode_frame`], [`decode_frames`])
//! is pure; the file edge is behind [`JournalStore`] so model tests can use
//! memory.
//!
//! A record version is keyed by its spool root, relative XML path, size and
//! mtime: a rewritten XML is a new version and is processed again (a target
//! then refuses different bytes under the same final name).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::group_sync::{GroupSync, Pending};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A record's identity in the journal: hash of spool root and relative path.
pub type PathKey = [u8; 16];

/// The largest frame accepted when decoding.
const MAX_FRAME: usize = 4096;

/// How a finished record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every due copy is at its targets.
    Exported,
    /// Not due (imported, `bt_its`, no user, filtered).
    Skipped,
    /// Refused for good (malformed metadata); redone only if the XML changes.
    Rejected,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A record version is finished.
    Done {
        /// Path key.
        key: PathKey,
        /// XML size.
        size: u64,
        /// XML mtime, ns since the epoch.
        mtime_ns: i64,
        /// How it ended.
        outcome: Outcome,
    },
    /// One copy (policy x target) of a record version is durable.
    Copy {
        /// Path key.
        key: PathKey,
        /// XML size.
        size: u64,
        /// XML mtime.
        mtime_ns: i64,
        /// Hash of `policy_id \0 target_id`.
        copy: u64,
    },
    /// The record's XML is gone from the spool; forget it.
    Forget {
        /// Path key.
        key: PathKey,
    },
}

/// Computes the path key of a spool file.
pub fn path_key(root: &Path, rel: &str) -> PathKey {
    let mut h = Sha256::new();
    h.update(root.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(rel.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// Computes the copy id of a (policy, target) pair.
pub fn copy_id(policy_id: &str, target_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(policy_id.as_bytes());
    h.update([0]);
    h.update(target_id.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Encodes one entry as a frame.
pub fn encode_frame(e: &Entry) -> Vec<u8> {
    let body = postcard::to_allocvec(e).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out
}

/// Decodes frames from `buf`. Returns the entries and the length of the valid
/// prefix (anything after it is a torn or corrupt tail).
pub fn decode_frames(buf: &[u8]) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= 8 {
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        if len > MAX_FRAME || buf.len() - pos - 8 < len {
            break;
        }
        let body = &buf[pos + 4..pos + 4 + len];
        let crc_at = pos + 4 + len;
        let crc = u32::from_le_bytes([
            buf[crc_at],
            buf[crc_at + 1],
            buf[crc_at + 2],
            buf[crc_at + 3],
        ]);
        if crc != crc32fast::hash(body) {
            break;
        }
        match postcard::from_bytes::<Entry>(body) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        pos += len + 8;
    }
    (out, pos)
}

/// The journal's storage edge.
pub trait JournalStore {
    /// Everything stored (may end in a torn frame).
    fn load(&mut self) -> io::Result<Vec<u8>>;
    /// Cuts the store to `len` bytes (drops a torn tail).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Appends and makes durable.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Atomically replaces everything with `bytes`.
    fn replace(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Writes without waiting for durability; the returned [`Pending`]
    /// makes it durable (group commit). Stores that cannot defer append
    /// durably and return `None`.
    fn append_deferred(&mut self, bytes: &[u8]) -> io::Result<Option<Pending>> {
        self.append(bytes).map(|()| None)
    }
}

/// A [`JournalStore`] in a file.
pub struct FileStore {
    path: PathBuf,
    file: Option<(Arc<File>, Arc<GroupSync>)>,
}

impl FileStore {
    /// A store at `path` (created on first append).
    pub fn new(path: PathBuf) -> FileStore {
        FileStore { path, file: None }
    }

    fn file(&mut self) -> io::Result<&(Arc<File>, Arc<GroupSync>)> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some((Arc::new(f), GroupSync::new()));
        }
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("journal not open"))
    }
}

impl JournalStore for FileStore {
    fn load(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut buf)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(buf)
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(&self.path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.append_deferred(bytes)? {
            Some(p) => p.wait(),
            None => Ok(()),
        }
    }
    fn append_deferred(&mut self, bytes: &[u8]) -> io::Result<Option<Pending>> {
        let (f, g) = self.file()?;
        // Cuts a failed/short write off, repairs after a failed sync.
        Ok(Some(g.append(f, bytes)?))
    }
    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            crate::target::fs::sync_dir(dir)?;
        }
        self.file = None;
        Ok(())
    }
}

/// A [`JournalStore`] in memory, for tests.
#[derive(Default, Clone)]
pub struct MemStore {
    /// The bytes "on disk".
    pub bytes: Vec<u8>,
}

impl JournalStore for MemStore {
    fn load(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.bytes.clone())
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.bytes.truncate(len as usize);
        Ok(())
    }
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes = bytes.to_vec();
        Ok(())
    }
}

/// What the journal knows of one record path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// XML size of the version this state is about.
    pub size: u64,
    /// XML mtime of that version.
    pub mtime_ns: i64,
    /// Finished, and how; `None` while copies are pending.
    pub done: Option<Outcome>,
    /// Copies already durable (only while unfinished).
    pub copies: Vec<u64>,
}

/// The journal: in-memory state plus its store.
pub struct Journal<S: JournalStore> {
    store: S,
    map: HashMap<PathKey, State>,
    frames: usize,
    /// Appends are written but not synced (see [`Journal::with_deferred`]).
    deferred: bool,
    /// The last deferred append, to wait on.
    pending: Option<Pending>,
}

impl<S: JournalStore> Journal<S> {
    /// Loads the journal, cutting off a torn tail.
    pub fn open(mut store: S) -> io::Result<Journal<S>> {
        let buf = store.load()?;
        let (entries, valid) = decode_frames(&buf);
        if valid < buf.len() {
            store.truncate(valid as u64)?;
        }
        let mut j = Journal {
            store,
            map: HashMap::new(),
            frames: entries.len(),
            deferred: false,
            pending: None,
        };
        for e in entries {
            j.apply(&e);
        }
        Ok(j)
    }

    fn apply(&mut self, e: &Entry) {
        match *e {
            Entry::Done {
                key,
                size,
                mtime_ns,
                outcome,
            } => {
                self.map.insert(
                    key,
                    State {
                        size,
                        mtime_ns,
                        done: Some(outcome),
                        copies: Vec::new(),
                    },
                );
            }
            Entry::Copy {
                key,
                size,
                mtime_ns,
                copy,
            } => {
                let st = self.map.entry(key).or_insert(State {
                    size,
                    mtime_ns,
                    done: None,
                    copies: Vec::new(),
                });
                if st.size != size || st.mtime_ns != mtime_ns {
                    *st = State {
                        size,
                        mtime_ns,
                        done: None,
                        copies: Vec::new(),
                    };
                }
                if st.done.is_none() && !st.copies.contains(&copy) {
                    st.copies.push(copy);
                }
            }
            Entry::Forget { key } => {
                self.map.remove(&key);
            }
        }
    }

    fn write(&mut self, e: Entry) -> io::Result<()> {
        if self.deferred {
            if let Some(p) = self.store.append_deferred(&encode_frame(&e))? {
                self.pending = Some(p);
            }
        } else {
            self.store.append(&encode_frame(&e))?;
        }
        self.frames += 1;
        self.apply(&e);
        Ok(())
    }

    /// Loads the journal without repairing it (for readers such as `exportd
    /// status` while the daemon may be appending).
    pub fn open_read_only(mut store: S) -> io::Result<Journal<S>> {
        let buf = store.load()?;
        let (entries, _) = decode_frames(&buf);
        let mut j = Journal {
            store,
            map: HashMap::new(),
            frames: entries.len(),
            deferred: false,
            pending: None,
        };
        for e in entries {
            j.apply(&e);
        }
        Ok(j)
    }

    /// Runs `f` with appends written but not yet synced, and returns with
    /// the result the append to wait on (outside the journal's lock) before
    /// anything may rely on them: concurrent workers share one sync.
    pub fn with_deferred<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> (T, Option<Pending>) {
        self.deferred = true;
        let r = f(self);
        self.deferred = false;
        (r, self.pending.take())
    }

    /// The state of a record version, if it is this version.
    pub fn get(&self, key: &PathKey, size: u64, mtime_ns: i64) -> Option<&State> {
        self.map
            .get(key)
            .filter(|s| s.size == size && s.mtime_ns == mtime_ns)
    }

    /// Whether this record version is finished.
    pub fn is_done(&self, key: &PathKey, size: u64, mtime_ns: i64) -> bool {
        self.get(key, size, mtime_ns)
            .is_some_and(|s| s.done.is_some())
    }

    /// Whether a copy of this record version is durable.
    pub fn has_copy(&self, key: &PathKey, size: u64, mtime_ns: i64, copy: u64) -> bool {
        self.get(key, size, mtime_ns)
            .is_some_and(|s| s.done == Some(Outcome::Exported) || s.copies.contains(&copy))
    }

    /// Records a durable copy.
    pub fn record_copy(
        &mut self,
        key: PathKey,
        size: u64,
        mtime_ns: i64,
        copy: u64,
    ) -> io::Result<()> {
        self.write(Entry::Copy {
            key,
            size,
            mtime_ns,
            copy,
        })
    }

    /// Records a finished record version.
    pub fn record_done(
        &mut self,
        key: PathKey,
        size: u64,
        mtime_ns: i64,
        outcome: Outcome,
    ) -> io::Result<()> {
        self.write(Entry::Done {
            key,
            size,
            mtime_ns,
            outcome,
        })?;
        self.maybe_compact()
    }

    /// Forgets a record whose XML left the spool.
    pub fn forget(&mut self, key: PathKey) -> io::Result<()> {
        if self.map.contains_key(&key) {
            self.write(Entry::Forget { key })?;
        }
        Ok(())
    }

    /// Drops every record for which `keep` says no (after a full rescan) and compacts.
    pub fn retain_and_compact(&mut self, mut keep: impl FnMut(&PathKey) -> bool) -> io::Result<()> {
        self.map.retain(|k, _| keep(k));
        self.compact()
    }

    /// Rewrites the store with only the live state.
    pub fn compact(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut n = 0;
        for (key, st) in &self.map {
            match st.done {
                Some(outcome) => {
                    buf.extend(encode_frame(&Entry::Done {
                        key: *key,
                        size: st.size,
                        mtime_ns: st.mtime_ns,
                        outcome,
                    }));
                    n += 1;
                }
                None => {
                    for c in &st.copies {
                        buf.extend(encode_frame(&Entry::Copy {
                            key: *key,
                            size: st.size,
                            mtime_ns: st.mtime_ns,
                            copy: *c,
                        }));
                        n += 1;
                    }
                }
            }
        }
        self.store.replace(&buf)?;
        self.frames = n;
        Ok(())
    }

    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.frames > 2 * self.map.len() + 4096 {
            self.compact()?;
        }
        Ok(())
    }

    /// Number of records known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Frames in the store (for compaction tests and status).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Counts of finished records by outcome.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for s in self.map.values() {
            match s.done {
                Some(Outcome::Exported) => c.0 += 1,
                Some(Outcome::Skipped) => c.1 += 1,
                Some(Outcome::Rejected) => c.2 += 1,
                None => {}
            }
        }
        c
    }

    /// The store (tests).
    pub fn store(&self) -> &S {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> PathKey {
        [i; 16]
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let mut j = Journal::open(MemStore::default()).unwrap();
        j.record_copy(k(1), 10, 5, 7).unwrap();
        j.record_done(k(2), 11, 6, Outcome::Skipped).unwrap();
        let mut store = j.store().clone();
        let full = store.bytes.len();
        store
            .bytes
            .extend_from_slice(&encode_frame(&Entry::Forget { key: k(2) })[..5]);
        let j2 = Journal::open(store).unwrap();
        assert_eq!(j2.store().bytes.len(), full);
        assert!(j2.has_copy(&k(1), 10, 5, 7));
        assert!(!j2.has_copy(&k(1), 10, 6, 7), "a new version has no copies");
        assert!(j2.is_done(&k(2), 11, 6));
        assert!(!j2.is_done(&k(1), 10, 5));
    }

    #[test]
    fn every_prefix_decodes_to_a_prefix_of_entries() {
        let es = vec![
            Entry::Copy {
                key: k(1),
                size: 1,
                mtime_ns: -1,
                copy: 9,
            },
            Entry::Done {
                key: k(1),
                size: 1,
                mtime_ns: -1,
                outcome: Outcome::Exported,
            },
            Entry::Forget { key: k(1) },
        ];
        let mut buf = Vec::new();
        for e in &es {
            buf.extend(encode_frame(e));
        }
        for cut in 0..=buf.len() {
            let (got, valid) = decode_frames(&buf[..cut]);
            assert_eq!(&es[..got.len()], &got[..]);
            assert!(valid <= cut);
        }
        let mut flipped = buf.clone();
        flipped[6] ^= 1;
        assert!(decode_frames(&flipped).0.is_empty());
    }

    #[test]
    fn compaction_keeps_it_small() {
        let mut j = Journal::open(MemStore::default()).unwrap();
        for round in 0..50u64 {
            for i in 0..100u8 {
                j.record_copy(k(i), round, 0, 1).unwrap();
                j.record_done(k(i), round, 0, Outcome::Exported).unwrap();
            }
        }
        assert_eq!(j.len(), 100);
        assert!(j.frames() <= 2 * 100 + 4096 + 1, "{}", j.frames());
        j.compact().unwrap();
        assert_eq!(j.frames(), 100);
        let j2 = Journal::open(j.store().clone()).unwrap();
        assert!(j2.is_done(&k(5), 49, 0));
        let mut j3 = j2;
        j3.retain_and_compact(|key| key[0] < 10).unwrap();
        assert_eq!(j3.len(), 10);
    }
}
